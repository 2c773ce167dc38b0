use std::collections::HashMap;

use super::Token;

/// The tokens a server accepts: one shared token for any client name, and per-client tokens that
/// are the only way to authenticate as their name.
///
/// ```
/// use tunnel_core::auth::{CredentialKind, Credentials, Token};
/// let creds = Credentials::default()
///     .with_shared(Token::new("team").unwrap())
///     .with_client("worker-1", Token::new("w1").unwrap());
/// assert_eq!(creds.lookup("worker-1").unwrap().1, CredentialKind::PerClient);
/// assert_eq!(creds.lookup("laptop").unwrap().1, CredentialKind::Shared);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    shared: Option<Token>,
    clients: HashMap<String, Token>,
}

/// Which kind of credential authenticated a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// The server-wide shared token: any name, one trust domain.
    Shared,
    /// A token issued to this client name alone.
    PerClient,
}

impl Credentials {
    /// Accepts `token` for every name that has no token of its own.
    pub fn with_shared(mut self, token: Token) -> Self {
        self.shared = Some(token);
        self
    }

    /// Issues `token` to `name`; the shared token no longer authenticates that name.
    pub fn with_client(mut self, name: impl Into<String>, token: Token) -> Self {
        self.clients.insert(name.into(), token);
        self
    }

    /// The token that `name` must prove, and its kind.
    pub fn lookup(&self, name: &str) -> Option<(&Token, CredentialKind)> {
        match self.clients.get(name) {
            Some(token) => Some((token, CredentialKind::PerClient)),
            None => self.shared.as_ref().map(|t| (t, CredentialKind::Shared)),
        }
    }

    /// True when no token at all is configured (no client could ever authenticate).
    pub fn is_empty(&self) -> bool {
        self.shared.is_none() && self.clients.is_empty()
    }
}
