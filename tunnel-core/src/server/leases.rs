//! The port lease table on disk, so a restarted server still reserves each client's ports for
//! it: a restart must not open a window in which another client takes them.
//!
//! The file is TOML, rewritten whole (to a new file renamed into place) after every change, at
//! most once a second (`persist`), and read at start (`restore`). A lease held by a live
//! session is stored as held and becomes a grace-period reservation when read back, since no
//! session survives the restart. [`encode`] and [`decode`] are the format alone.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::registry::Registry;
use super::{ServerConfig, Shared};
use crate::auth::CredentialKind;
use crate::proto::{validate_name, RouteId};

/// One stored lease.
///
/// Fields it does not know are ignored, so that a file a newer server wrote still serves
/// (without what it added) if an older one is started in its place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLease {
    /// The leased port.
    pub port: u16,
    /// The client name it is leased to.
    pub owner: String,
    /// The kind of credential that client held (`shared` or `per_client`): the same name on
    /// the other kind is another client. Files from before this field leave it out; such a
    /// lease goes to the kind the configuration gives the name when the file is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialKind>,
    /// The owner's route that held it, so a reconnect asking "any port" for the same route
    /// gets it back: 16 hex digits (files from before route ids hold a `forward_id` number).
    #[serde(with = "route_field", alias = "forward_id")]
    pub route: RouteId,
    /// Milliseconds since the Unix epoch until which the port is reserved; 0 while held.
    pub reserved_until_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Table {
    #[serde(default)]
    lease: Vec<StoredLease>,
}

/// Why a lease file was not used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseFileError {
    /// The text is not a lease table.
    #[error("not a lease table")]
    Parse(#[source] toml::de::Error),
    /// An entry is invalid.
    #[error("lease for port {port}: {reason}")]
    Invalid {
        /// The entry's port.
        port: u16,
        /// What is wrong with it.
        reason: String,
    },
}

/// A route id as text (TOML integers stop at `i64::MAX`), or a version 1 forward id number.
mod route_field {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::proto::RouteId;

    pub(super) fn serialize<S: Serializer>(id: &RouteId, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(id)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<RouteId, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Field {
            ForwardId(u32),
            Route(String),
        }
        match Field::deserialize(deserializer)? {
            Field::ForwardId(id) => Ok(RouteId(u64::from(id))),
            Field::Route(text) if text.len() == 16 => text
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("route {text:?} is not 16 hex digits"))),
            Field::Route(text) => {
                Err(serde::de::Error::custom(format!("route {text:?} is not 16 hex digits")))
            }
        }
    }
}

/// Milliseconds since the Unix epoch of `time` (0 before it, saturating far after it).
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Encodes leases as the file's text.
pub fn encode(leases: &[StoredLease]) -> Result<String, toml::ser::Error> {
    let table = Table { lease: leases.to_vec() };
    let body = toml::to_string(&table)?;
    Ok(format!(
        "# Port leases of the tunnel server, rewritten as they change. Do not edit while it runs.\n{body}"
    ))
}

/// Decodes the file's text, checking every entry; one bad entry rejects the file.
pub fn decode(text: &str) -> Result<Vec<StoredLease>, LeaseFileError> {
    let table: Table = toml::from_str(text).map_err(LeaseFileError::Parse)?;
    let mut seen = std::collections::HashSet::new();
    for lease in &table.lease {
        let invalid = |reason: String| LeaseFileError::Invalid { port: lease.port, reason };
        if lease.port == 0 {
            return Err(invalid("port 0 cannot be leased".into()));
        }
        validate_name(&lease.owner).map_err(|e| invalid(format!("owner: {e}")))?;
        if !seen.insert(lease.port) {
            return Err(invalid("listed twice".into()));
        }
    }
    Ok(table.lease)
}

/// How long from `now` a stored lease stays reserved: the grace period for a held one, the
/// time left for a reservation (`None` once expired).
pub(crate) fn remaining(lease: &StoredLease, now_ms: u64, grace: Duration) -> Option<Duration> {
    if lease.reserved_until_ms == 0 {
        return Some(grace);
    }
    let left = lease.reserved_until_ms.checked_sub(now_ms).filter(|ms| *ms > 0)?;
    // A reservation cannot outlast a grace period, whatever the file (or a changed clock) says.
    Some(Duration::from_millis(left).min(grace))
}

// Reading the file at start and rewriting it after changes.

/// Largest lease file read: a lease of every port, each for a name of the longest kind, takes
/// about 12 MiB as the server writes it.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reserves the ports a previous run leased. A file that cannot be used (or that someone else
/// could have written, to hold ports for a name) is reported and ignored: owned ports (`ports`
/// in the configuration) stay protected either way.
pub(super) fn restore(registry: &Registry, config: &ServerConfig, path: &std::path::Path) {
    let text = match crate::fs::read_private_text_within(path, MAX_FILE_BYTES) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return,
        Err(err) => return tracing::error!("cannot read the lease file {}: {err}", path.display()),
    };
    match decode(&text) {
        Ok(mut stored) => {
            keep_for(&mut stored, config);
            registry.restore(&stored);
            tracing::info!("restored {} port leases from {}", stored.len(), path.display());
        }
        Err(err) => {
            tracing::error!("ignoring the lease file {}: {}", path.display(), crate::log::Chain(&err))
        }
    }
}

/// Keeps the leases that are still their client's under `config`, with the kind of credential
/// each client holds now. A port the configuration gives to another client is that client's
/// alone, and a name whose kind of credential changed is another client (a name removed from
/// `[[clients]]`, now on the shared token, say): neither keeps the lease.
fn keep_for(stored: &mut Vec<StoredLease>, config: &ServerConfig) {
    stored.retain_mut(|lease| {
        let same_client = match lease.credential {
            Some(then) => config.credentials.admits(&lease.owner, then),
            // Written before leases recorded it, so who held it is unknown: a name with a token
            // of its own now may have it, but on the shared token anyone could hold that name
            // (a client since removed from `[[clients]]`, say), so such a lease is dropped.
            None => matches!(config.credentials.lookup(&lease.owner), Some((_, CredentialKind::PerClient))),
        };
        lease.credential = config.credentials.lookup(&lease.owner).map(|(_, kind)| kind);
        same_client && config.policy.port_owner(lease.port).is_none_or(|owner| owner == lease.owner)
    });
}

/// Least time between two writes of the lease file. Each write is the whole table: 10,000
/// clients reconnecting after a restart changed it 10,000 times, and writing it after each
/// change took a core for the half minute they needed to come back.
const LEASE_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// Rewrites the lease file after every change, at most once per [`LEASE_WRITE_INTERVAL`]
/// (changes in between are written together), until `stop`; a write in progress always
/// finishes, and changes made during the last interval are written at `stop`.
pub(super) async fn persist(shared: Arc<Shared>, path: std::path::PathBuf, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = shared.registry.leases_changed() => {}
        }
        save(&shared, path.clone()).await;
        if tokio::time::timeout(LEASE_WRITE_INTERVAL, stop.cancelled()).await.is_ok() {
            return save(&shared, path).await;
        }
    }
}

/// Writes the lease table now (a failure is logged; the last good file stays).
pub(super) async fn save(shared: &Shared, path: std::path::PathBuf) {
    let text = match encode(&shared.registry.stored_leases()) {
        Ok(text) => text,
        // Keep the last good file rather than write an empty table over it.
        Err(err) => return tracing::warn!("cannot encode the lease table: {err}"),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Err(err) = crate::fs::create_private_dir(dir) {
            return tracing::warn!("cannot create {} for the lease file: {err}", dir.display());
        }
    }
    let written = tokio::task::spawn_blocking(move || {
        crate::fs::write_private(&path, text.as_bytes()).map_err(|e| (path, e))
    });
    match written.await {
        Ok(Ok(())) => {}
        Ok(Err((path, err))) => tracing::warn!("cannot write the lease file {}: {err}", path.display()),
        Err(err) => tracing::warn!("lease file writer failed: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(port: u16, owner: &str, until: u64) -> StoredLease {
        let credential = Some(CredentialKind::PerClient);
        StoredLease { port, owner: owner.into(), credential, route: RouteId(3), reserved_until_ms: until }
    }

    #[test]
    fn leases_round_trip_through_the_file() {
        let leases = vec![lease(6443, "control-plane", 0), lease(40000, "worker-1", 1_700_000_000_000)];
        assert_eq!(decode(&encode(&leases).unwrap()).unwrap(), leases);
        assert_eq!(decode("").unwrap(), vec![]);
    }

    #[test]
    fn bad_entries_reject_the_file_naming_the_port() {
        let cases = [
            ("[[lease]]\nport = 0\nowner = \"a\"\nforward_id = 0\nreserved_until_ms = 0\n", "port 0"),
            ("[[lease]]\nport = 80\nowner = \"a b\"\nforward_id = 0\nreserved_until_ms = 0\n", "port 80"),
            ("[[lease]]\nport = 70000\nowner = \"a\"\nforward_id = 0\nreserved_until_ms = 0\n", "lease"),
            (
                "[[lease]]\nport = 80\nowner = \"a\"\nforward_id = 0\nreserved_until_ms = 0\n\
                 [[lease]]\nport = 80\nowner = \"b\"\nforward_id = 0\nreserved_until_ms = 0\n",
                "twice",
            ),
        ];
        for (text, needle) in cases {
            let err = crate::log::Chain(&decode(text).unwrap_err()).to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    /// A newer server's fields are left aside: its file still serves an older server started
    /// in its place (a rollback), with the leases it can read.
    #[test]
    fn fields_a_newer_server_adds_are_ignored() {
        let text = "note = 1\n[[lease]]\nport = 80\nowner = \"a\"\nroute = \"0000000000000003\"\nreserved_until_ms = 0\nextra = 1\n";
        let read = decode(text).unwrap();
        assert_eq!(read, [StoredLease { credential: None, ..lease(80, "a", 0) }]);
    }

    #[test]
    fn a_lease_of_every_port_under_the_longest_names_fits_the_file_bound() {
        let name = "n".repeat(crate::proto::MAX_NAME_LEN);
        let all: Vec<_> = (1..=u16::MAX).map(|port| lease(port, &name, u64::MAX)).collect();
        let text = encode(&all).unwrap();
        assert!((text.len() as u64) < MAX_FILE_BYTES, "{} bytes", text.len());
        assert_eq!(decode(&text).unwrap().len(), all.len());
    }

    #[test]
    fn a_wrong_value_is_named_with_its_line() {
        let text =
            "[[lease]]\nport = 65536\nowner = \"a\"\nroute = \"0000000000000001\"\nreserved_until_ms = 0\n";
        let why = crate::log::Chain(&decode(text).unwrap_err()).to_string();
        assert!(why.starts_with("not a lease table: ") && why.contains("line 2"), "{why}");
    }

    #[test]
    fn route_ids_beyond_toml_integers_round_trip_and_old_forward_ids_still_read() {
        let high = StoredLease { route: RouteId(u64::MAX - 5), ..lease(7000, "a", 0) };
        let text = encode(std::slice::from_ref(&high)).unwrap();
        assert!(text.contains("route = \"fffffffffffffffa\""), "{text}");
        assert_eq!(decode(&text).unwrap(), vec![high]);
        let old = "[[lease]]\nport = 80\nowner = \"a\"\nforward_id = 2\nreserved_until_ms = 0\n";
        assert_eq!(decode(old).unwrap()[0].route, RouteId(2));
        let bad = "[[lease]]\nport = 80\nowner = \"a\"\nroute = \"xyz\"\nreserved_until_ms = 0\n";
        assert!(crate::log::Chain(&decode(bad).unwrap_err()).to_string().contains("16 hex digits"));
    }

    #[test]
    fn a_lease_is_kept_only_for_the_client_that_held_it() {
        use crate::auth::{Credentials, Token};
        let token = |t: &str| Token::new(t).unwrap();
        let credentials = Credentials::default()
            .with_shared(token("shared-token-0123456789"))
            .with_client("kube", token("kube-token-0123456789"));
        let mut config = ServerConfig::new(credentials, None);
        config.policy.clients.insert("owner".into(), crate::server::ClientPolicy::default());
        config.policy.clients.get_mut("owner").unwrap().ports = Some("7003".parse().unwrap());
        let old_file = StoredLease { credential: None, ..lease(7000, "kube", 0) };
        let old_file_shared = StoredLease { credential: None, ..lease(7004, "web", 0) };
        let gone_from_clients = lease(7001, "worker", 0);
        let on_the_shared_token =
            StoredLease { credential: Some(CredentialKind::Shared), ..lease(7002, "web", 0) };
        let now_owned = StoredLease { credential: Some(CredentialKind::Shared), ..lease(7003, "web", 0) };
        let mut stored = vec![old_file, old_file_shared, gone_from_clients, on_the_shared_token, now_owned];
        keep_for(&mut stored, &config);
        let kept: Vec<_> = stored.iter().map(|l| (l.port, l.credential)).collect();
        assert_eq!(kept, [(7000, Some(CredentialKind::PerClient)), (7002, Some(CredentialKind::Shared))]);
    }

    #[test]
    fn reservations_last_at_most_a_grace_period() {
        let grace = Duration::from_secs(60);
        assert_eq!(remaining(&lease(1, "a", 0), 5_000, grace), Some(grace), "held: a fresh grace period");
        assert_eq!(remaining(&lease(1, "a", 15_000), 5_000, grace), Some(Duration::from_secs(10)));
        assert_eq!(remaining(&lease(1, "a", 5_000), 5_000, grace), None, "expired");
        assert_eq!(remaining(&lease(1, "a", u64::MAX), 5_000, grace), Some(grace), "capped");
    }
}
