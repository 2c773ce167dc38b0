use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// SHA-256 of a certificate's DER encoding: what a client pins instead of trusting a CA.
///
/// Parsing accepts upper or lower case hex, with or without colons, with or without a
/// `sha256:` prefix; `Display` prints 64 lowercase hex digits.
///
/// ```
/// use tunnel_core::tls::Fingerprint;
/// let a: Fingerprint = "sha256:AB:CD:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd".parse().unwrap();
/// let b: Fingerprint = "abcd00112233445566778899aabbccddeeff00112233445566778899aabbccdd".parse().unwrap();
/// assert_eq!(a, b);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

/// Why a fingerprint string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid certificate fingerprint {input:?}: expected 64 hex digits (SHA-256), optionally with colons and a `sha256:` prefix")]
pub struct FingerprintError {
    input: String,
}

impl Fingerprint {
    /// Fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || FingerprintError { input: s.to_owned() };
        let trimmed = s.trim();
        let body = match trimmed.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => &trimmed[7..],
            _ => trimmed,
        };
        let digits: Vec<u8> = body.bytes().filter(|&b| b != b':').collect();
        // Hex digits only: `from_str_radix` alone would also take a sign (`+f`).
        if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(err());
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| err())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| err())?;
        }
        Ok(Self(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::auth::hex(&self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_round_trips() {
        let fp = Fingerprint::of_der(b"certificate");
        assert_eq!(fp.to_string().parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(fp.to_string().len(), 64);
    }

    #[test]
    fn malformed_fingerprints_are_rejected() {
        let signed = format!("+f{}", "a".repeat(62));
        for bad in ["", "sha256:", "abcd", &"g".repeat(64), &"a".repeat(66), "sha1:00", &signed] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?}");
        }
        // A non-ASCII character must not split a hex pair or panic.
        assert!(format!("{}é", "a".repeat(62)).parse::<Fingerprint>().is_err());
    }
}
