use std::collections::HashMap;

use super::Token;

/// The decoy when no client token is configured (then no name can authenticate at all).
static DECOY: std::sync::LazyLock<Token> = std::sync::LazyLock::new(Token::generate);

/// The tokens a server accepts: one shared token for any client name, and per-client tokens that
/// are the only way to authenticate as their name.
///
/// ```
/// use tunnel_core::auth::{CredentialKind, Credentials, Token};
/// let creds = Credentials::default()
///     .with_shared(Token::new("team-token-6f3a9c1e").unwrap())
///     .with_client("worker-1", Token::new("worker-1-token-b87d20").unwrap());
/// assert_eq!(creds.lookup("worker-1").unwrap().1, CredentialKind::PerClient);
/// assert_eq!(creds.lookup("laptop").unwrap().1, CredentialKind::Shared);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    shared: Option<Token>,
    clients: HashMap<String, Token>,
    /// Checked in place of a token for a name that has none, so that an unknown name and a
    /// wrong token take the same path and the same time; as long as the longest client token.
    decoy: Option<Token>,
}

/// Which kind of credential authenticated a client (stored in the lease file as `shared` or
/// `per_client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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
        let longest = self.decoy.as_ref().map_or(0, |d| d.as_bytes().len());
        if token.as_bytes().len() > longest {
            self.decoy = Some(Token::random_of_len(token.as_bytes().len()));
        }
        self.clients.insert(name.into(), token);
        self
    }

    /// The token `name` must prove and its kind; for a name no token accepts, a decoy of the
    /// same length as a real one and `None`, to be checked (and failed) like a wrong token.
    pub(crate) fn lookup_or_decoy(&self, name: &str) -> (&Token, Option<CredentialKind>) {
        match (self.lookup(name), &self.decoy) {
            (Some((token, kind)), _) => (token, Some(kind)),
            (None, Some(decoy)) => (decoy, None),
            (None, None) => (&DECOY, None),
        }
    }

    /// The token that `name` must prove, and its kind.
    pub fn lookup(&self, name: &str) -> Option<(&Token, CredentialKind)> {
        match self.clients.get(name) {
            Some(token) => Some((token, CredentialKind::PerClient)),
            None => self.shared.as_ref().map(|t| (t, CredentialKind::Shared)),
        }
    }

    /// The names that have a token of their own.
    pub fn client_names(&self) -> impl Iterator<Item = &str> {
        self.clients.keys().map(String::as_str)
    }

    /// True if `name` has a token of its own.
    pub fn has_client(&self, name: &str) -> bool {
        self.clients.contains_key(name)
    }

    /// Whether a client of `name` on a `kind` credential still has a way in, whatever its
    /// token: what was held for such a client is still its own. A name removed from the
    /// clients, now on the shared token, is someone else.
    pub(crate) fn admits(&self, name: &str, kind: CredentialKind) -> bool {
        self.lookup(name).is_some_and(|(_, now)| now == kind)
    }

    /// Whether `name`, authenticated as `kind` under `before`, is still accepted by these
    /// credentials with the same token: false once its token is removed or changed, or once a
    /// name that used the shared token has a token of its own.
    pub fn still_accepts(&self, before: &Credentials, name: &str, kind: CredentialKind) -> bool {
        match (self.lookup(name), before.lookup(name)) {
            (Some((now, now_kind)), Some((then, then_kind))) => {
                now_kind == kind && then_kind == kind && now.same_secret(then)
            }
            _ => false,
        }
    }

    /// Whether both accept exactly the same names with the same tokens.
    pub(crate) fn same_as(&self, other: &Credentials) -> bool {
        let same = |a: Option<&Token>, b: Option<&Token>| match (a, b) {
            (Some(a), Some(b)) => a.same_secret(b),
            (None, None) => true,
            _ => false,
        };
        same(self.shared.as_ref(), other.shared.as_ref())
            && self.clients.len() == other.clients.len()
            && self.clients.iter().all(|(name, token)| same(Some(token), other.clients.get(name)))
    }

    /// True when no token at all is configured (no client could ever authenticate).
    pub fn is_empty(&self) -> bool {
        self.shared.is_none() && self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_stays_accepted_only_with_the_same_token_of_the_same_kind() {
        let token = |s: &str| Token::new(s).unwrap();
        let before = Credentials::default()
            .with_shared(token("shared-token-0123456789"))
            .with_client("a", token("a-token-0123456789"))
            .with_client("b", token("b-token-0123456789"));
        let after = Credentials::default()
            .with_shared(token("shared-token-0123456789"))
            .with_client("a", token("a-token-0123456789"))
            .with_client("b", token("b-token-rotated-0123"))
            .with_client("laptop", token("laptop-token-0123456"));
        assert!(after.still_accepts(&before, "a", CredentialKind::PerClient));
        assert!(!after.still_accepts(&before, "b", CredentialKind::PerClient), "rotated");
        assert!(after.still_accepts(&before, "phone", CredentialKind::Shared));
        assert!(!after.still_accepts(&before, "laptop", CredentialKind::Shared), "now has its own token");
        let no_shared = Credentials::default().with_client("a", token("a-token-0123456789"));
        assert!(!no_shared.still_accepts(&before, "phone", CredentialKind::Shared), "shared token removed");
        assert!(!Credentials::default().still_accepts(&before, "a", CredentialKind::PerClient), "revoked");
    }

    #[test]
    fn an_unknown_name_is_checked_against_one_decoy_as_long_as_a_real_token() {
        let creds = Credentials::default()
            .with_client("short", Token::new("sixteen-chars-ok").unwrap())
            .with_client("long", Token::new("a-much-longer-per-client-token-0123456789").unwrap())
            .with_client("mid", Token::new("a-middling-token-length").unwrap());
        let (decoy, kind) = creds.lookup_or_decoy("stranger");
        assert_eq!(kind, None);
        assert_eq!(decoy.as_bytes().len(), "a-much-longer-per-client-token-0123456789".len());
        // The same decoy every time: nothing is generated per attempt.
        assert!(std::ptr::eq(decoy, creds.lookup_or_decoy("another").0));
        let (token, kind) = creds.lookup_or_decoy("mid");
        assert_eq!(
            (token.expose_secret(), kind),
            ("a-middling-token-length", Some(CredentialKind::PerClient))
        );
    }
}
