//! Tokens in configuration files: given inline or in a file (not both), or generated once into
//! the state directory.

use std::path::Path;

use super::server::TokenSource;
use super::{invalid, ConfigError, SecretString};
use crate::auth::Token;

/// Name of the generated token inside the state directory.
pub(super) const TOKEN_FILE: &str = "token";

/// A token may be given inline or in a file, not both; an inline one must be a valid token.
pub(super) fn check_secret(
    key: &'static str,
    inline: Option<&SecretString>,
    file: Option<&Path>,
) -> Result<(), ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::Conflict(format!("give `{key}` or `{key}_file`, not both"))),
        (Some(text), None) => Token::new(text.expose_secret()).map(drop).map_err(|e| invalid(key, e)),
        _ => Ok(()),
    }
}

/// The token given inline or read from its file.
pub(super) fn secret(
    key: &'static str,
    inline: Option<&SecretString>,
    file: Option<&Path>,
) -> Result<Option<Token>, ConfigError> {
    check_secret(key, inline, file)?;
    match (inline, file) {
        (Some(text), _) => Token::new(text.expose_secret()).map(Some).map_err(|e| invalid(key, e)),
        (None, Some(path)) => Token::from_file(path).map(Some).map_err(|e| invalid(key, e)),
        (None, None) => Ok(None),
    }
}

/// Reads the token kept in the state directory, or generates and keeps one (mode 0600, in a
/// directory created with mode 0700).
pub(super) fn stored_token(state_dir: &Path, name: &str) -> Result<(Token, TokenSource), ConfigError> {
    let path = state_dir.join(name);
    let state_err = |source| ConfigError::StateDir { path: path.clone(), source };
    if path.exists() {
        let text = crate::fs::read_private_text(&path).map_err(state_err)?;
        let token = Token::new(text.trim())
            .map_err(|e| state_err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        return Ok((token, TokenSource::Generated(path)));
    }
    crate::fs::create_private_dir(state_dir)
        .map_err(|source| ConfigError::StateDir { path: state_dir.to_owned(), source })?;
    let token = Token::generate();
    crate::fs::write_private(&path, token.expose_secret().as_bytes()).map_err(state_err)?;
    Ok((token, TokenSource::GeneratedNow(path)))
}
