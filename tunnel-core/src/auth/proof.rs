use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::Token;

type HmacSha256 = Hmac<Sha256>;

/// Label for TLS exporter keying material that binds the proofs to one TLS session.
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-tunnel-auth-v1";

/// What ties a handshake to its transport connection.
#[derive(Clone, PartialEq, Eq)]
pub enum ChannelBinding {
    /// 32 bytes of TLS exporter keying material ([`TLS_EXPORTER_LABEL`], no context).
    Tls([u8; 32]),
    /// No TLS: proofs are bound to the nonces only.
    Plaintext,
}

impl std::fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tls(_) => "ChannelBinding::Tls",
            Self::Plaintext => "ChannelBinding::Plaintext",
        })
    }
}

impl ChannelBinding {
    /// Derives the binding from an established rustls connection.
    pub fn from_tls<D>(conn: &rustls::ConnectionCommon<D>) -> Result<Self, rustls::Error> {
        let material = conn.export_keying_material([0u8; 32], TLS_EXPORTER_LABEL, None)?;
        Ok(Self::Tls(material))
    }
}

/// Which side a proof speaks for; the two proofs of one handshake differ by this label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The connecting side.
    Client,
    /// The accepting side.
    Server,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Client => b"tunnel client proof v1",
            Role::Server => b"tunnel server proof v1",
        }
    }
}

/// A running hash of the handshake messages plus the channel binding.
#[derive(Clone)]
pub struct Transcript(Sha256);

impl std::fmt::Debug for Transcript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transcript")
    }
}

impl Transcript {
    /// Starts a transcript for one connection.
    pub fn new(binding: &ChannelBinding) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"tunnel auth transcript v1");
        match binding {
            ChannelBinding::Tls(material) => {
                hash.update([1u8]);
                hash.update(material);
            }
            ChannelBinding::Plaintext => hash.update([0u8]),
        }
        Self(hash)
    }

    /// Adds one handshake message, length-delimited so message boundaries cannot shift.
    pub fn add(&mut self, message: &[u8]) {
        self.0.update((message.len() as u64).to_be_bytes());
        self.0.update(message);
    }

    pub(super) fn digest(&self) -> [u8; 32] {
        self.0.clone().finalize().into()
    }
}

/// An HMAC proof of token possession over a transcript. There is no `PartialEq`: a proof is
/// checked with [`Proof::verify`], in constant time.
///
/// ```compile_fail,E0369
/// use tunnel_core::auth::Proof;
/// assert!(Proof([0; 32]) == Proof([0; 32]));
/// ```
#[derive(Clone, Copy)]
pub struct Proof(pub [u8; 32]);

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Proof(***)")
    }
}

impl Proof {
    /// Computes the proof that `role` knows `token`.
    ///
    /// ```
    /// use tunnel_core::auth::{ChannelBinding, Proof, Role, Token, Transcript};
    /// let token = Token::new("correct horse battery staple").unwrap();
    /// let mut transcript = Transcript::new(&ChannelBinding::Plaintext);
    /// transcript.add(b"hello");
    /// let proof = Proof::compute(&token, Role::Client, &transcript);
    /// assert!(proof.verify(&token, Role::Client, &transcript));
    /// assert!(!proof.verify(&token, Role::Server, &transcript));
    /// ```
    pub fn compute(token: &Token, role: Role, transcript: &Transcript) -> Self {
        Self(mac(token, role, transcript).finalize().into_bytes().into())
    }

    /// Checks the proof in constant time.
    pub fn verify(&self, token: &Token, role: Role, transcript: &Transcript) -> bool {
        mac(token, role, transcript).verify_slice(&self.0).is_ok()
    }
}

fn mac(token: &Token, role: Role, transcript: &Transcript) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = HmacSha256::new_from_slice(token.as_bytes()).expect("HMAC takes any key length");
    mac.update(role.label());
    mac.update(&transcript.digest());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_depends_on_token_binding_and_transcript() {
        let token = Token::new("token-a-token-a-token-a").unwrap();
        let base = Transcript::new(&ChannelBinding::Tls([1; 32]));
        let proof = Proof::compute(&token, Role::Client, &base);
        assert!(proof.verify(&token, Role::Client, &base));
        assert!(!proof.verify(&Token::new("token-b-token-b-token-b").unwrap(), Role::Client, &base));
        assert!(!proof.verify(&token, Role::Client, &Transcript::new(&ChannelBinding::Tls([2; 32]))));
        assert!(!proof.verify(&token, Role::Client, &Transcript::new(&ChannelBinding::Plaintext)));
        let mut longer = base.clone();
        longer.add(b"x");
        assert!(!proof.verify(&token, Role::Client, &longer));
    }

    #[test]
    fn message_boundaries_are_part_of_the_transcript() {
        let mut a = Transcript::new(&ChannelBinding::Plaintext);
        a.add(b"ab");
        a.add(b"c");
        let mut b = Transcript::new(&ChannelBinding::Plaintext);
        b.add(b"a");
        b.add(b"bc");
        assert_ne!(a.digest(), b.digest());
    }
}
