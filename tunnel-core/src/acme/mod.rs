//! Certificates from an ACME authority (RFC 8555), Let's Encrypt or a private one, for the
//! names the HTTPS edge terminates.
//!
//! [`Acme`] holds the certificates in force and the answers to the authority's challenges
//! (HTTP-01 on the HTTP listener, TLS-ALPN-01 on the HTTPS one); [`Acme::run`] keeps one
//! certificate per name it is given: the one stored for this authority while it is good, else
//! a new order, and a renewal once two thirds of its lifetime have passed (`keeper.rs`).
//! Orders run one at a time, renewals first; a name whose order failed waits (1 minute,
//! doubling up to 1 hour) before the next, and an authority that fails itself (unreachable,
//! 5xx, rate limits) holds back every order as long, so neither a client churning names nor
//! an outage hammers the authority.

mod account;
mod answers;
mod keeper;
mod order;
mod store;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use sha2::Digest;

use answers::Answers;
use keeper::Keeper;
use store::Held;

pub use answers::ACME_TLS_ALPN;

/// Let's Encrypt's production directory: the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// How long one order may take, challenges and all.
const ORDER_TIMEOUT: Duration = Duration::from_secs(180);
/// The first wait after a failed order; it doubles with each failure in a row.
const FIRST_RETRY: Duration = Duration::from_secs(60);
/// The longest wait after failures.
const LAST_RETRY: Duration = Duration::from_secs(3600);

/// How the authority checks that this server answers for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Challenge {
    /// `http://NAME/.well-known/acme-challenge/TOKEN`, on the HTTP listener (port 80).
    #[serde(rename = "http-01")]
    Http01,
    /// A TLS handshake for NAME with ALPN `acme-tls/1`, on the HTTPS listener (port 443).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl std::fmt::Display for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
        })
    }
}

impl std::str::FromStr for Challenge {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "http-01" => Ok(Self::Http01),
            "tls-alpn-01" => Ok(Self::TlsAlpn01),
            other => Err(format!("{other:?}: the challenges are http-01 and tls-alpn-01")),
        }
    }
}

/// Where certificates come from and where they are kept: plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AcmeConfig {
    /// The authority's directory URL (default [`LETS_ENCRYPT`]).
    pub directory: String,
    /// Contact URLs for the account, e.g. `mailto:ops@example.com`.
    pub contact: Vec<String>,
    /// CA certificates trusted for the directory's own TLS certificate, beside the system's
    /// (a private authority).
    pub ca: Vec<CertificateDer<'static>>,
    /// How the authority checks each name.
    pub challenge: Challenge,
    /// Where the account and the certificates are kept (`STATE_DIR/acme`).
    pub dir: PathBuf,
}

impl AcmeConfig {
    /// Let's Encrypt, the system's CAs, no contact, certificates kept in `dir`.
    pub fn new(dir: PathBuf, challenge: Challenge) -> Self {
        Self { directory: LETS_ENCRYPT.to_owned(), contact: Vec::new(), ca: Vec::new(), challenge, dir }
    }
}

/// Why a certificate could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// The authority could not be reached, or answered with an error.
    #[error("the ACME authority {directory}")]
    Authority {
        /// Its directory URL.
        directory: String,
        /// What went wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The order failed: the authority refused the name, its challenge failed, or the
    /// authority stopped answering.
    #[error("the order for {name}")]
    Order {
        /// The name.
        name: String,
        /// What went wrong: the authority's problem document, when it sent one.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The order took longer than the time allowed.
    #[error("the order for {0} did not complete within {ORDER_TIMEOUT:?}")]
    Timeout(String),
    /// A file of the account or a certificate could not be read or written.
    #[error("{}", path.display())]
    Store {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A certificate or key is unusable: not PEM, not for the name, a key rustls refuses.
    #[error("the certificate for {name}: {why}")]
    Certificate {
        /// The name.
        name: String,
        /// What is wrong.
        why: String,
    },
}

/// The certificates issued so far and the challenge answers outstanding; [`Acme::run`] keeps
/// them. Cheap to share: everything is behind locks held only for lookups.
pub struct Acme {
    config: AcmeConfig,
    /// What the HTTPS edge serves now, by name.
    serving: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    answers: Answers,
    /// The last edge configuration wrapped by [`Acme::edge_tls`], and the wrapping.
    wrapped: Mutex<Option<(Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>)>>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme").field("config", &self.config).field("serving", &self.served_names()).finish()
    }
}

impl Acme {
    /// Nothing issued yet; [`Acme::run`] loads what the directory holds.
    pub fn new(config: AcmeConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            serving: RwLock::default(),
            answers: Answers::default(),
            wrapped: Mutex::default(),
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &AcmeConfig {
        &self.config
    }

    /// The names served now, sorted.
    pub fn served_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.read_serving().keys().cloned().collect();
        names.sort();
        names
    }

    /// The certificate served for `name` now.
    pub fn certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.read_serving().get(name).cloned()
    }

    /// Keeps a certificate for each of `names` (the exact host names of the edge's routes),
    /// except those `covered` says another certificate serves, until `names`' sender is
    /// dropped. Certificates in the directory are served at once while good; the others are
    /// ordered one at a time.
    pub async fn run(
        self: Arc<Self>,
        mut names: watch::Receiver<Arc<BTreeSet<String>>>,
        covered: impl Fn(&str) -> bool + Send,
    ) {
        let mut keeper = Keeper::new(&self).await;
        loop {
            let routed = names.borrow_and_update().clone();
            let wanted: BTreeSet<String> = routed.iter().filter(|name| !covered(name)).cloned().collect();
            keeper.forget_unwanted(&wanted).await;
            self.publish(keeper.held(), &wanted);
            if let Some(name) = keeper.due(&wanted) {
                if let Some(obtained) = keeper.order(&name).await {
                    // Served before it is said to be: whoever reads the line may ask for it.
                    self.publish(keeper.held(), &wanted);
                    tracing::info!(name = %name, "{obtained}");
                }
                continue;
            }
            tokio::select! {
                changed = names.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(keeper.idle(&wanted)) => {}
            }
        }
    }

    /// Serves the held certificates of the wanted names that are valid now, and only those.
    fn publish(&self, held: &HashMap<String, Held>, wanted: &BTreeSet<String>) {
        let now = SystemTime::now();
        let serving = wanted
            .iter()
            .filter_map(|name| {
                let valid = held.get(name).filter(|h| h.not_before <= now && now < h.not_after);
                valid.map(|h| (name.clone(), h.key.clone()))
            })
            .collect();
        *self.serving.write().unwrap_or_else(|e| e.into_inner()) = serving;
    }

    /// Where this directory's account and certificates are kept: a directory of their own per
    /// authority (`acme-v02.api.letsencrypt.org-1a2b3c4d`), so that certificates of another
    /// authority (staging, say) are never served.
    fn store(&self) -> PathBuf {
        let url = &self.config.directory;
        let host =
            url.parse::<http::Uri>().ok().and_then(|uri| uri.host().map(str::to_owned)).unwrap_or_default();
        let host: String =
            host.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')).collect();
        let digest = sha2::Sha256::digest(url.as_bytes());
        let short: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        self.config.dir.join(format!("{}-{short}", host.trim_matches('.')))
    }

    fn read_serving(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<CertifiedKey>>> {
        self.serving.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a failed attempt holds back: every order (the authority is unreachable, overloaded or
/// limiting this account), or the one name.
pub(super) enum Failure {
    Authority(AcmeError),
    Name(AcmeError),
}

/// Whether `name` is one a certificate can be ordered for: an exact DNS name of two labels or
/// more (no wildcard, no `_`, not an IP address, not `localhost`).
pub fn orderable(name: &str) -> bool {
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    let last_is_numeric = name.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    name.len() <= 253 && labels_ok && !last_is_numeric && name.contains('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_dns_names_are_orderable() {
        for good in ["app.example.com", "a-b.example", "x1.y2"] {
            assert!(orderable(good), "{good}");
        }
        for bad in [
            "localhost",
            "*.example.com",
            "a_b.example.com",
            "127.0.0.1",
            "ex..com",
            ".example",
            "-a.example",
            "A.example",
            "a/b",
            "",
        ] {
            assert!(!orderable(bad), "{bad}");
        }
        assert!(!orderable(&format!("{}.example", "a".repeat(64))));
    }

    #[test]
    fn each_authority_keeps_its_own_store() {
        let store = |directory: &str| {
            let mut config = AcmeConfig::new("/state/acme".into(), Challenge::Http01);
            config.directory = directory.to_owned();
            Acme::new(config).store()
        };
        let production = store(LETS_ENCRYPT);
        assert!(production.starts_with("/state/acme"));
        let leaf = production.file_name().unwrap().to_str().unwrap();
        assert!(leaf.starts_with("acme-v02.api.letsencrypt.org-") && leaf.len() == 37, "{leaf}");
        assert_ne!(production, store("https://acme-staging-v02.api.letsencrypt.org/directory"));
        assert_ne!(store("https://127.0.0.1:14000/dir"), store("https://127.0.0.1:14001/dir"));
        let odd = store("https://../dir");
        assert_eq!(odd.parent().unwrap(), std::path::Path::new("/state/acme"), "{odd:?}");
    }

    #[test]
    fn challenges_parse_by_their_rfc_names() {
        assert_eq!("http-01".parse::<Challenge>(), Ok(Challenge::Http01));
        assert_eq!("tls-alpn-01".parse::<Challenge>().map(|c| c.to_string()), Ok("tls-alpn-01".to_owned()));
        assert!("dns-01".parse::<Challenge>().unwrap_err().contains("http-01 and tls-alpn-01"));
    }
}
