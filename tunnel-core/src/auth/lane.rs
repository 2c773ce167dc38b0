//! Binding more connections into one session: the session's lane key, and the proof a joining
//! connection adds to its own.
//!
//! Each connection of a session runs the whole handshake with the token, over its own TLS
//! channel. A connection that joins an existing session names it (the id the server gave that
//! session) and sends, in place of the plain token proof, that proof wrapped under the
//! session's lane key: `HMAC(lane key, label || HMAC(token, "client" || T))`. The lane key is
//! `HMAC(token, label || T0)`, `T0` being the transcript of the session's *first* connection
//! (its TLS exporter binding and both nonces): it never crosses the wire, and only the two
//! ends of that first connection can compute it. So a joining connection must hold the token,
//! be the end of its own TLS channel (the binding is in `T`), and be the end of the session's
//! first channel; a stolen or relayed connection has none of the three.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Proof, Token, Transcript};

type HmacSha256 = Hmac<Sha256>;

const KEY_LABEL: &[u8] = b"tunnel lane key v1";
const PROOF_LABEL: &[u8] = b"tunnel lane proof v1";

/// The secret that lets more connections join a session. There is no `PartialEq`, and
/// `Debug` does not show it.
///
/// ```compile_fail,E0369
/// use tunnel_core::auth::LaneKey;
/// fn same(a: &LaneKey, b: &LaneKey) -> bool { a == b }
/// ```
#[derive(Clone)]
pub struct LaneKey([u8; 32]);

impl std::fmt::Debug for LaneKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LaneKey(***)")
    }
}

impl LaneKey {
    /// The key of the session whose first connection has `transcript` (hello and challenge).
    pub fn derive(token: &Token, transcript: &Transcript) -> Self {
        let mut mac = HmacSha256::new_from_slice(token.as_bytes()).expect("HMAC takes any key length");
        mac.update(KEY_LABEL);
        mac.update(&transcript.digest());
        Self(mac.finalize().into_bytes().into())
    }

    /// A joining connection's proof: its own token proof, wrapped under this key.
    ///
    /// ```
    /// use tunnel_core::auth::{ChannelBinding, LaneKey, Proof, Role, Token, Transcript};
    /// let token = Token::new("correct horse battery staple").unwrap();
    /// let first = Transcript::new(&ChannelBinding::Tls([1; 32]));
    /// let key = LaneKey::derive(&token, &first);
    /// let joining = Transcript::new(&ChannelBinding::Tls([2; 32]));
    /// let proof = key.wrap(Proof::compute(&token, Role::Client, &joining));
    /// assert!(key.verify(&proof, Proof::compute(&token, Role::Client, &joining)));
    /// let other = LaneKey::derive(&token, &Transcript::new(&ChannelBinding::Tls([3; 32])));
    /// assert!(!other.verify(&proof, Proof::compute(&token, Role::Client, &joining)));
    /// ```
    pub fn wrap(&self, token_proof: Proof) -> Proof {
        Proof(self.mac(&token_proof).finalize().into_bytes().into())
    }

    /// Checks, in constant time, that `proof` is `expected` (the token proof the server
    /// computed for this connection) wrapped under this key.
    pub fn verify(&self, proof: &Proof, expected: Proof) -> bool {
        self.mac(&expected).verify_slice(&proof.0).is_ok()
    }

    fn mac(&self, token_proof: &Proof) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(PROOF_LABEL);
        mac.update(&token_proof.0);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{ChannelBinding, Role};

    #[test]
    fn the_key_depends_on_the_token_and_the_first_connection() {
        let token = Token::new("token-a-token-a-token-a").unwrap();
        let first = Transcript::new(&ChannelBinding::Tls([1; 32]));
        let joining = Transcript::new(&ChannelBinding::Tls([2; 32]));
        let key = LaneKey::derive(&token, &first);
        let proof = key.wrap(Proof::compute(&token, Role::Client, &joining));
        assert!(key.verify(&proof, Proof::compute(&token, Role::Client, &joining)));
        // Another session of the same token, or the same first connection under another token.
        let other_session = LaneKey::derive(&token, &Transcript::new(&ChannelBinding::Tls([9; 32])));
        assert!(!other_session.verify(&proof, Proof::compute(&token, Role::Client, &joining)));
        let other_token = Token::new("token-b-token-b-token-b").unwrap();
        assert!(!LaneKey::derive(&other_token, &first)
            .verify(&proof, Proof::compute(&token, Role::Client, &joining)));
        // The same wrapped proof presented on another connection.
        let elsewhere = Transcript::new(&ChannelBinding::Tls([3; 32]));
        assert!(!key.verify(&proof, Proof::compute(&token, Role::Client, &elsewhere)));
        // The bare token proof is not a lane proof.
        let bare = Proof::compute(&token, Role::Client, &joining);
        assert!(!key.verify(&bare, Proof::compute(&token, Role::Client, &joining)));
        assert_eq!(format!("{key:?}"), "LaneKey(***)");
    }
}
