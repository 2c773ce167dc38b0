use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// Longest token accepted.
const MAX_TOKEN_LEN: usize = 1024;

/// A shared secret. `Debug` masks it and it has no `Display`, so it cannot end up in a log line
/// by accident; [`Token::expose_secret`] is the one explicit way to read it.
///
/// ```
/// use tunnel_core::auth::Token;
/// let token = Token::new("correct horse battery staple").unwrap();
/// assert_eq!(format!("{token:?}"), "Token(***)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

/// Why a token was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The token is empty (or only whitespace, when read from a file).
    #[error("token is empty")]
    Empty,
    /// The token is longer than 1024 bytes.
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    /// The token file could not be read.
    #[error("cannot read token file {path}: {source}")]
    File {
        /// Path of the file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
}

impl Token {
    /// Wraps a secret, checking it is non-empty and at most 1024 bytes.
    pub fn new(secret: impl Into<String>) -> Result<Self, TokenError> {
        let secret = secret.into();
        if secret.is_empty() {
            return Err(TokenError::Empty);
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

    /// Reads a token from a file, ignoring surrounding whitespace (such as a final newline).
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TokenError::File { path: path.display().to_string(), source })?;
        Self::new(text.trim())
    }

    /// The secret itself. Call only to hand it to a user who asked for it, never to log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
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
        assert_ne!(a, b);
        assert_eq!(a.expose_secret().len(), 64);
    }

    #[test]
    fn empty_and_oversized_tokens_are_refused() {
        assert!(matches!(Token::new(""), Err(TokenError::Empty)));
        assert!(matches!(Token::new("x".repeat(1025)), Err(TokenError::TooLong)));
    }

    #[test]
    fn file_token_is_trimmed_and_blank_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(Token::from_file(&path).unwrap().expose_secret(), "s3cret");
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(Token::from_file(&path), Err(TokenError::Empty)));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let token = Token::new("hunter2").unwrap();
        assert!(!format!("{token:?} {:?}", Some(&token)).contains("hunter2"));
    }
}
