//! The upkeep behind [`Acme::run`]: which name to order next (renewals first, soonest expiry
//! first, then new names), one order at a time, and the waits after failures: per name, or for
//! every order when the authority itself fails.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use instant_acme::Account;

use super::store::{self, Held};
use super::{account, order, Acme, AcmeError, Failure, FIRST_RETRY, LAST_RETRY, ORDER_TIMEOUT};
use crate::log::{Chain, Escaped};

pub(super) struct Keeper<'a> {
    acme: &'a Acme,
    /// This authority's account and certificates.
    store: PathBuf,
    held: HashMap<String, Held>,
    account: Option<Account>,
    /// Names whose last orders failed.
    retries: HashMap<String, Retry>,
    /// Failures of the authority itself, holding back every order.
    authority: Retry,
}

impl<'a> Keeper<'a> {
    /// Starts with the certificates stored for this authority.
    pub(super) async fn new(acme: &'a Acme) -> Self {
        let store = acme.store();
        let dir = store.clone();
        let held = tokio::task::spawn_blocking(move || store::load_all(&dir)).await.unwrap_or_default();
        Self { acme, store, held, account: None, retries: HashMap::new(), authority: Retry::default() }
    }

    pub(super) fn held(&self) -> &HashMap<String, Held> {
        &self.held
    }

    /// Drops what names no longer routed need no more: expired certificates (files too), and
    /// failures whose wait is over (a name dropped and routed again still waits out its own).
    pub(super) async fn forget_unwanted(&mut self, wanted: &BTreeSet<String>) {
        let now = (SystemTime::now(), Instant::now());
        self.retries.retain(|name, retry| wanted.contains(name) || retry.at > now.1);
        let expired: Vec<String> = self
            .held
            .iter()
            .filter(|(name, held)| !wanted.contains(*name) && held.not_after <= now.0)
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            self.held.remove(&name);
            let dir = self.store.clone();
            let _ = tokio::task::spawn_blocking(move || store::remove(&dir, &name)).await;
        }
    }

    /// The next name to order: the wanted certificate due for renewal soonest, else the first
    /// wanted name without one; none while the authority or the name is waiting after failures.
    pub(super) fn due(&self, wanted: &BTreeSet<String>) -> Option<String> {
        let now = (SystemTime::now(), Instant::now());
        if self.authority.at > now.1 {
            return None;
        }
        let ready = |name: &&String| self.retries.get(*name).is_none_or(|retry| retry.at <= now.1);
        let renewal = wanted
            .iter()
            .filter(ready)
            .filter_map(|name| {
                self.held.get(name).filter(|h| h.renew_at <= now.0).map(|h| (h.not_after, name))
            })
            .min()
            .map(|(_, name)| name);
        renewal.or_else(|| wanted.iter().filter(ready).find(|name| !self.held.contains_key(*name))).cloned()
    }

    /// How long nothing is due: until the next renewal or the end of a wait, an hour at most
    /// (wall-clock time may jump).
    pub(super) fn idle(&self, wanted: &BTreeSet<String>) -> Duration {
        let now = Instant::now();
        let waits = wanted.iter().filter_map(|name| {
            let renew = self.held.get(name).map(|held| until(held.renew_at));
            let retry = self.retries.get(name).map(|retry| retry.at.saturating_duration_since(now));
            renew.max(retry)
        });
        let authority = (self.authority.at > now).then(|| self.authority.at - now);
        waits.chain(authority).min().unwrap_or(LAST_RETRY).min(LAST_RETRY)
    }

    /// Orders `name`, stores what comes, and records a failure's wait. Returns what came when
    /// it is good for a while, for the caller to say once it serves it.
    pub(super) async fn order(&mut self, name: &str) -> Option<Obtained> {
        let now = Instant::now();
        match self.obtain(name).await {
            Ok(fresh) if fresh.renew_at <= SystemTime::now() => {
                // Served while valid, but not ordered again at once: a clock ahead of the
                // authority's, or certificates shorter-lived than an order takes.
                let wait = self.retries.entry(name.to_owned()).or_default().failed(now);
                tracing::warn!(name = %name, "certificate obtained already due for renewal (valid until {}); next order in {wait:?}", store::utc(fresh.not_after));
                self.held.insert(name.to_owned(), fresh);
            }
            Ok(fresh) => {
                let obtained = Obtained { renewed: self.held.contains_key(name), not_after: fresh.not_after };
                self.held.insert(name.to_owned(), fresh);
                self.retries.remove(name);
                self.authority = Retry::default();
                return Some(obtained);
            }
            Err(Failure::Authority(err)) => {
                let wait = self.authority.failed(now);
                tracing::warn!("no certificates for now, next order in {wait:?}: {}", Chain(&err));
            }
            Err(Failure::Name(err)) => {
                let wait = self.retries.entry(name.to_owned()).or_default().failed(now);
                tracing::warn!(name = %Escaped(name), "no certificate, next order in {wait:?}: {}", Chain(&err));
            }
        }
        None
    }

    /// A certificate for `name`: the account (opened once), an order, then the files.
    async fn obtain(&mut self, name: &str) -> Result<Held, Failure> {
        let config = &self.acme.config;
        let account = match self.account.clone() {
            Some(account) => account,
            None => {
                let opened = tokio::time::timeout(ORDER_TIMEOUT, account::open(config, &self.store)).await;
                let timed_out = || AcmeError::Authority {
                    directory: config.directory.clone(),
                    source: format!("no account within {ORDER_TIMEOUT:?}").into(),
                };
                let account = opened.map_err(|_| timed_out()).and_then(|a| a).map_err(Failure::Authority)?;
                self.account.insert(account).clone()
            }
        };
        let ordered = order::issue(&account, name, config.challenge, &self.acme.answers);
        let (chain, key) = tokio::time::timeout(ORDER_TIMEOUT, ordered)
            .await
            .map_err(|_| Failure::Name(AcmeError::Timeout(name.to_owned())))??;
        let (dir, name) = (self.store.clone(), name.to_owned());
        let saved = tokio::task::spawn_blocking(move || store::save(&dir, &name, &chain, &key)).await;
        let lost =
            |e: tokio::task::JoinError| AcmeError::Store { path: self.store.clone(), source: e.into() };
        saved.map_err(lost).and_then(|saved| saved).map_err(Failure::Name)
    }
}

/// A certificate an order brought.
pub(super) struct Obtained {
    /// It replaces one held for the name.
    renewed: bool,
    not_after: SystemTime,
}

impl std::fmt::Display for Obtained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let renewed = if self.renewed { "renewed" } else { "issued" };
        write!(f, "certificate {renewed}, valid until {}", store::utc(self.not_after))
    }
}

/// Time from now until `at` (zero once past).
fn until(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::now()).unwrap_or_default()
}

/// Failures in a row and when the next attempt may be made.
struct Retry {
    failures: u32,
    at: Instant,
}

impl Default for Retry {
    fn default() -> Self {
        Self { failures: 0, at: Instant::now() }
    }
}

impl Retry {
    /// One more failure at `now`: the wait before the next attempt (1 minute, doubling to an
    /// hour).
    fn failed(&mut self, now: Instant) -> Duration {
        let wait = FIRST_RETRY.saturating_mul(1 << self.failures.min(6)).min(LAST_RETRY);
        self.failures = self.failures.saturating_add(1);
        self.at = now + wait;
        wait
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::acme::{AcmeConfig, Challenge};

    /// A certificate held: due for renewal `renew_in` seconds from now (negative: past),
    /// expiring `expires_in` seconds from now.
    fn held(renew_in: i64, expires_in: u64) -> Held {
        let key = rcgen::KeyPair::generate().unwrap();
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signing = crate::tls::provider().key_provider.load_private_key(der).unwrap();
        let now = SystemTime::now();
        let offset = Duration::from_secs(renew_in.unsigned_abs());
        let renew_at = if renew_in < 0 { now - offset } else { now + offset };
        let not_after = now + Duration::from_secs(expires_in);
        let key = Arc::new(rustls::sign::CertifiedKey::new(Vec::new(), signing));
        Held { key, renew_at, not_before: now - Duration::from_secs(3600), not_after }
    }

    #[tokio::test]
    async fn renewals_go_first_soonest_expiry_first_then_new_names_and_waits_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let acme = Acme::new(AcmeConfig::new(dir.path().to_owned(), Challenge::Http01));
        let mut keeper = Keeper::new(&acme).await;
        let wanted: BTreeSet<String> =
            ["a.example", "b.example", "c.example", "d.example"].map(str::to_owned).into();
        keeper.held.insert("a.example".into(), held(600, 9000));
        keeper.held.insert("b.example".into(), held(-10, 10 * 86_400));
        keeper.held.insert("c.example".into(), held(-10, 5 * 86_400));
        assert_eq!(keeper.due(&wanted).as_deref(), Some("c.example"), "the renewal expiring first");
        let now = Instant::now();
        keeper.retries.entry("c.example".into()).or_default().failed(now);
        assert_eq!(keeper.due(&wanted).as_deref(), Some("b.example"), "c waits after its failure");
        keeper.retries.entry("b.example".into()).or_default().failed(now);
        assert_eq!(keeper.due(&wanted).as_deref(), Some("d.example"), "then the name without one");
        assert!(keeper.idle(&wanted) <= Duration::from_secs(600), "a's renewal bounds the wait");
        keeper.authority.failed(now);
        assert_eq!(keeper.due(&wanted), None, "the authority's failures hold back every order");
        // A name dropped from the routes keeps its wait; a name no route wants is not ordered.
        keeper.forget_unwanted(&BTreeSet::new()).await;
        assert!(keeper.retries.contains_key("c.example"));
        assert_eq!(keeper.held.len(), 3, "certificates still valid are kept for a route's return");
        keeper.authority = Retry::default();
        assert_eq!(keeper.due(&BTreeSet::new()), None);
    }

    #[test]
    fn retries_double_to_an_hour() {
        let (mut retry, now) = (Retry::default(), Instant::now());
        let waits: Vec<u64> = (0..9).map(|_| retry.failed(now).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(retry.at, now + LAST_RETRY);
    }
}
