//! The sessions up now, as a listing ([`super::Server::sessions`]) and a reload see them: who
//! each is, and the handles a reload uses to end one or have it re-check its routes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::channel::mpsc;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::registry::SessionId;
use crate::auth::CredentialKind;
use crate::mux::StreamOpener;
use crate::proto::handshake::AuthenticatedClient;
use crate::proto::RouteId;
use crate::session::ControlSender;

/// One session as [`super::Server::sessions`] lists it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The client name it authenticated as.
    pub name: String,
    /// Where its connection comes from.
    pub peer: SocketAddr,
    /// Which credential it proved.
    pub credential: CredentialKind,
    /// The protocol version it speaks.
    pub protocol: u16,
    /// When it was established.
    pub since: SystemTime,
    /// The last heartbeat round trip; `None` before the first answer.
    pub rtt: Option<Duration>,
    /// Streams open on it now (visitors, visits, HTTP requests), the control stream not counted.
    pub open_streams: usize,
    /// The connections carrying it now: its first (unless lost) and those that joined it.
    pub connections: usize,
    /// Bytes received from the client over the session (multiplexing framing included).
    pub bytes_received: u64,
    /// Bytes sent to the client over the session.
    pub bytes_sent: u64,
    /// The version of the last route table applied; `None` for a version 1 client, or before
    /// its first table.
    pub table_version: Option<u64>,
    /// Its routes in service.
    pub routes: Vec<RouteInfo>,
}

/// A route in service, as [`SessionInfo`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteInfo {
    /// Its id in the client's table.
    pub id: RouteId,
    /// `tcp`, `udp`, `service`, `http`, `http_fallback`, `tls` or `network`.
    pub kind: &'static str,
    /// Where a TCP or UDP route listens.
    pub public_addr: Option<SocketAddr>,
    /// A service's name, an HTTP route's host and path, a TLS route's host, a network.
    pub target: Option<String>,
}

/// What a reload asks of a session, in two rounds over every session: first each withdraws
/// what the configuration now in force no longer allows (answering with what it withdrew),
/// then each applies its table again, so a port one session gave up can go to another.
pub(super) enum Recheck {
    Withdraw(oneshot::Sender<Vec<String>>),
    Reapply(oneshot::Sender<()>),
}

#[derive(Debug, Default)]
pub(super) struct Directory {
    entries: Mutex<HashMap<SessionId, Entry>>,
}

#[derive(Debug)]
struct Entry {
    name: String,
    peer: SocketAddr,
    credential: CredentialKind,
    protocol: u16,
    since: SystemTime,
    opener: StreamOpener,
    control: ControlSender,
    table_version: Arc<AtomicU64>,
    routes: Arc<Mutex<Vec<RouteInfo>>>,
    revoke: CancellationToken,
    recheck: RecheckSender,
}

/// Where reloads ask a session to re-check its routes. One sender, taken in turn: each clone
/// of a sender would have a place of its own in the queue, and a session stuck for a while
/// would collect a request per reload.
pub(super) type RecheckSender = Arc<tokio::sync::Mutex<mpsc::Sender<Recheck>>>;

/// A session's own side of its entry; dropping it takes the entry out.
pub(super) struct Listed<'d> {
    directory: &'d Directory,
    id: SessionId,
    /// Cancelled when a reload no longer accepts the session's credential.
    pub(super) revoked: CancellationToken,
    /// Re-check requests from reloads.
    pub(super) rechecks: mpsc::Receiver<Recheck>,
    /// What the listing shows of the session's routes.
    pub(super) listing: Listing,
}

/// The part of a session's entry that follows its route table, written by the session's
/// routes before each answer, so a client that hears an answer finds it listed.
#[derive(Clone)]
pub(super) struct Listing {
    table_version: Arc<AtomicU64>,
    routes: Arc<Mutex<Vec<RouteInfo>>>,
}

impl Listing {
    /// Records that the table `version` is applied and the routes in service now.
    pub(super) fn show(&self, version: Option<u64>, routes: Vec<RouteInfo>) {
        if let Some(version) = version {
            // Stored plus one, so that 0 can mean "none yet".
            self.table_version.store(version.saturating_add(1), Ordering::Relaxed);
        }
        *self.routes.lock().unwrap_or_else(|e| e.into_inner()) = routes;
    }
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.directory.lock().remove(&self.id);
    }
}

impl Directory {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists session `id` until the returned guard is dropped.
    pub(super) fn add(
        &self,
        id: SessionId,
        client: &AuthenticatedClient,
        peer: SocketAddr,
        opener: StreamOpener,
        control: ControlSender,
    ) -> Listed<'_> {
        let (revoke, table_version) = (CancellationToken::new(), Arc::new(AtomicU64::new(0)));
        let routes = Arc::default();
        // One request at a time: a reload's request waits until the session took the one before.
        // A queue that allocates per request: a tokio channel takes a KiB up front, held by
        // every session for the rare reload.
        let (recheck, rechecks) = mpsc::channel(0);
        let recheck = Arc::new(tokio::sync::Mutex::new(recheck));
        let entry = Entry {
            name: client.name.clone(),
            peer,
            credential: client.credential,
            protocol: client.version,
            since: SystemTime::now(),
            opener,
            control,
            table_version: table_version.clone(),
            routes: Arc::clone(&routes),
            revoke: revoke.clone(),
            recheck,
        };
        self.lock().insert(id, entry);
        let listing = Listing { table_version, routes };
        Listed { directory: self, id, revoked: revoke, rechecks, listing }
    }

    /// Every session up now, by name.
    pub(super) fn list(&self) -> Vec<SessionInfo> {
        let mut sessions: Vec<SessionInfo> = self
            .lock()
            .values()
            .map(|entry| {
                let (bytes_received, bytes_sent) = entry.opener.bytes();
                let version = entry.table_version.load(Ordering::Relaxed);
                SessionInfo {
                    name: entry.name.clone(),
                    peer: entry.peer,
                    credential: entry.credential,
                    protocol: entry.protocol,
                    since: entry.since,
                    rtt: entry.control.rtt(),
                    open_streams: entry.opener.open_streams().saturating_sub(1),
                    connections: entry.opener.connections(),
                    bytes_received,
                    bytes_sent,
                    table_version: version.checked_sub(1),
                    routes: entry.routes.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                }
            })
            .collect();
        sessions.sort_by(|a, b| a.name.cmp(&b.name).then(a.since.cmp(&b.since)));
        sessions
    }

    /// Ends every session whose (name, credential) `keep` refuses; returns their names.
    pub(super) fn revoke_unless(&self, keep: impl Fn(&str, CredentialKind) -> bool) -> Vec<String> {
        let mut ended: Vec<String> = self
            .lock()
            .values()
            .filter(|entry| !entry.revoke.is_cancelled() && !keep(&entry.name, entry.credential))
            .map(|entry| {
                entry.revoke.cancel();
                entry.name.clone()
            })
            .collect();
        ended.sort();
        ended
    }

    /// Where to ask each session still accepted to re-check its routes, with its name; not
    /// the `leaving` ones (already told to close: none would answer).
    pub(super) fn rechecks(&self, leaving: &[SessionId]) -> Vec<(String, RecheckSender)> {
        self.lock()
            .iter()
            .filter(|(id, entry)| !entry.revoke.is_cancelled() && !leaving.contains(id))
            .map(|(_, entry)| (entry.name.clone(), entry.recheck.clone()))
            .collect()
    }
}
