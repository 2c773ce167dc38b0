use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// Longest token accepted.
const MAX_TOKEN_LEN: usize = 1024;
/// Largest token file read: a token of at most [`MAX_TOKEN_LEN`] bytes, with ample room for
/// whitespace around it.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;
/// Shortest token accepted, in characters: anything shorter falls to an offline guess from
/// one recorded handshake.
pub const MIN_TOKEN_CHARS: usize = 16;

/// A shared secret. `Debug` masks it and it has no `Display`, so it cannot end up in a log line
/// by accident; [`Token::expose_secret`] is the one explicit way to read it.
///
/// ```
/// use tunnel_core::auth::Token;
/// let token = Token::new("correct horse battery staple").unwrap();
/// assert_eq!(format!("{token:?}"), "Token(***)");
/// ```
///
/// There is no `PartialEq`: tokens are checked through constant-time proofs
/// ([`crate::auth::Proof::verify`]), never with `==`, so this does not compile:
///
/// ```compile_fail,E0369
/// use tunnel_core::auth::Token;
/// let token = Token::new("correct horse battery staple").unwrap();
/// assert!(token == token.clone());
/// ```
#[derive(Clone)]
pub struct Token(Arc<str>);

/// Why a token was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The token is empty, or only whitespace.
    #[error("token is empty")]
    Empty,
    /// The token holds a control character (a line break: two lines, or a file of two tokens).
    #[error("token has a line break or another control character inside it")]
    ControlCharacter,
    /// The token is shorter than 16 characters.
    #[error(
        "token is {chars} characters long; use at least {MIN_TOKEN_CHARS} \
         (e.g. 32 random bytes, hex-encoded)"
    )]
    TooShort {
        /// Characters in the token.
        chars: usize,
    },
    /// The token is longer than 1024 bytes.
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    /// The token file could not be read.
    #[error("cannot read token file {path}")]
    File {
        /// Path of the file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
}

impl Token {
    /// Wraps a secret, checking it has at least 16 characters and at most 1024 bytes and no
    /// control character. Whitespace around it is not part of it, wherever it came from: an
    /// environment variable set from a file keeps the file's final newline, which the file
    /// read as a `token_file` loses, and the two must be one secret.
    pub fn new(secret: impl Into<String>) -> Result<Self, TokenError> {
        let given = secret.into();
        let secret = given.trim();
        if secret.is_empty() {
            return Err(TokenError::Empty);
        }
        if secret.chars().any(char::is_control) {
            return Err(TokenError::ControlCharacter);
        }
        let chars = secret.chars().count();
        if chars < MIN_TOKEN_CHARS {
            return Err(TokenError::TooShort { chars });
        }
        if secret.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        Ok(Self(secret.into()))
    }

    /// A fresh random token: 32 bytes from the OS generator, hex-encoded.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self(hex(&bytes).into())
    }

    /// A random hex token of exactly `len` bytes (at least 16).
    pub(crate) fn random_of_len(len: usize) -> Self {
        let bytes: Vec<u8> = (0..len.max(MIN_TOKEN_CHARS).div_ceil(2)).map(|_| rand::random()).collect();
        let mut text = hex(&bytes);
        text.truncate(len.max(MIN_TOKEN_CHARS));
        Self(text.into())
    }

    /// Reads a token from a file (surrounding whitespace, such as a final newline, is not part
    /// of it, as for [`Token::new`]).
    /// Only a regular file of at most 64 KiB is read: a FIFO would hold the reader (a reload,
    /// the whole server) until someone wrote to it, a device such as `/dev/zero` fill the memory.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = crate::fs::read_regular_text(path, MAX_TOKEN_FILE_BYTES)
            .map_err(|source| TokenError::File { path: path.display().to_string(), source })?;
        Self::new(text)
    }

    /// The secret itself. Call only to hand it to a user who asked for it, never to log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Whether both hold the same secret; compares SHA-256 digests (whatever the secrets'
    /// lengths) in constant time.
    pub(crate) fn same_secret(&self, other: &Token) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq as _;
        Sha256::digest(self.as_bytes()).ct_eq(&Sha256::digest(other.as_bytes())).into()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_distinct_and_long() {
        let (a, b) = (Token::generate(), Token::generate());
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), 64);
    }

    #[test]
    fn empty_short_and_oversized_tokens_are_refused() {
        assert!(matches!(Token::new(""), Err(TokenError::Empty)));
        assert!(matches!(Token::new("shared"), Err(TokenError::TooShort { chars: 6 })));
        assert!(matches!(Token::new("é".repeat(15)), Err(TokenError::TooShort { chars: 15 })));
        assert!(Token::new("é".repeat(16)).is_ok());
        assert!(Token::new("x".repeat(16)).is_ok());
        assert!(matches!(Token::new("x".repeat(1025)), Err(TokenError::TooLong)));
        let message = Token::new("hunter2").unwrap_err().to_string();
        assert!(message.contains("at least 16") && !message.contains("hunter2"), "{message}");
    }

    #[test]
    fn file_token_is_trimmed_and_blank_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-s3cret-s3cret\n").unwrap();
        assert_eq!(Token::from_file(&path).unwrap().expose_secret(), "s3cret-s3cret-s3cret");
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(Token::from_file(&path), Err(TokenError::Empty)));
        std::fs::write(&path, "s3cret-s3cret-s3cret\nanother-token-0123\n").unwrap();
        assert!(matches!(Token::from_file(&path), Err(TokenError::ControlCharacter)));
    }

    #[test]
    fn a_secret_is_the_same_whatever_it_came_from() {
        // An environment variable set from a file with a final newline, and that file.
        let given = Token::new("s3cret-s3cret-s3cret\n").unwrap();
        assert_eq!(given.expose_secret(), "s3cret-s3cret-s3cret");
        assert!(matches!(Token::new(" ".repeat(17)), Err(TokenError::Empty)));
        assert!(matches!(Token::new("s3cret-s3cret\r\ns3cret"), Err(TokenError::ControlCharacter)));
        assert!(matches!(Token::new("s3cret-s3cret-s3cret\u{0}"), Err(TokenError::ControlCharacter)));
        assert!(Token::new("correct horse battery staple").is_ok(), "spaces inside are the secret's");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let token = Token::new("hunter2-hunter2-hunter2").unwrap();
        assert!(!format!("{token:?} {:?}", Some(&token)).contains("hunter2"));
    }
}
