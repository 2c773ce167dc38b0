//! Sessions over several connections, on the server: the sessions other connections may join
//! (by client name and session id), and the run of a connection that joined one.
//!
//! A joined connection carries the session's streams beside its first connection (the
//! multiplexer spreads new streams over them, `mux::StreamOpener::join`); its control stream
//! carries heartbeats only. It ends when its session ends, and the session goes on when it
//! ends: the streams on it are cut with a reset, and the client dials a new one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio_util::sync::CancellationToken;

use super::session::finish;
use super::Shared;
use crate::auth::LaneKey;
use crate::log::Escaped;
use crate::mux::StreamOpener;
use crate::proto::handshake::AuthenticatedClient;
use crate::proto::GoodbyeCode;
use crate::session::{Session, SessionEnd};
use crate::task::OwnedTask;

/// The sessions that connections may join now.
#[derive(Debug, Default)]
pub(super) struct Joinable(Mutex<HashMap<u64, Entry>>);

#[derive(Debug)]
struct Entry {
    name: String,
    key: LaneKey,
    first: StreamOpener,
    /// The most connections the session may have.
    connections: usize,
    /// Cancelled when the session ends: its joined connections end with it.
    ended: Ended,
}

/// Cancelled when a session ends, with why when the client must hear it: a replaced or
/// revoked session's joined connections say so, since its first may be silent (and a client
/// told only that its session ended would come back and replace its successor).
#[derive(Debug, Clone, Default)]
struct Ended {
    token: CancellationToken,
    why: Arc<OnceLock<(GoodbyeCode, String)>>,
}

impl Ended {
    /// The goodbye a joined connection gives: the session's own, or a plain end.
    fn goodbye(&self) -> (GoodbyeCode, String) {
        self.why.get().cloned().unwrap_or_else(|| (GoodbyeCode::Shutdown, "its session ended".to_owned()))
    }
}

impl Joinable {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lets connections join the session of `name` whose first connection is `first`, up to
    /// `connections` in all, until the returned guard is dropped (when the session ends).
    pub(super) fn open(
        &self,
        name: &str,
        key: LaneKey,
        first: StreamOpener,
        connections: usize,
    ) -> Joining<'_> {
        let ended = Ended::default();
        let mut sessions = self.lock();
        // 64 random bits: never guessed, and a repeat is drawn again.
        let id = loop {
            let id = rand::random::<u64>();
            if !sessions.contains_key(&id) {
                break id;
            }
        };
        let entry = Entry { name: name.to_owned(), key, first, connections, ended: ended.clone() };
        sessions.insert(id, entry);
        Joining { joinable: self, id, ended }
    }

    /// The key and first connection of session `id`, if it is `name`'s and has room for one
    /// more connection.
    pub(super) fn find(&self, name: &str, id: u64) -> Option<(LaneKey, StreamOpener)> {
        let sessions = self.lock();
        let entry = sessions.get(&id).filter(|e| e.name == name && !e.ended.token.is_cancelled())?;
        (entry.first.connections() < entry.connections).then(|| (entry.key.clone(), entry.first.clone()))
    }

    /// Session `id`'s most connections, and a token cancelled when it ends (`None` once it
    /// has).
    fn joined(&self, id: u64) -> Option<(usize, Ended)> {
        self.lock().get(&id).map(|entry| (entry.connections, entry.ended.clone()))
    }
}

/// A session connections may join; it may not from when this is dropped, and the
/// connections that joined it end.
#[derive(Debug)]
pub(super) struct Joining<'a> {
    joinable: &'a Joinable,
    pub(super) id: u64,
    ended: Ended,
}

impl Joining<'_> {
    /// The goodbye the session's joined connections give when it ends (by default a plain
    /// end): the first connection's own, for one the client must not take for a plain end.
    pub(super) fn end_with(&self, code: GoodbyeCode, message: &str) {
        let _ = self.ended.why.set((code, message.to_owned()));
    }
}

impl Drop for Joining<'_> {
    fn drop(&mut self) {
        self.joinable.lock().remove(&self.id);
        self.ended.token.cancel();
    }
}

/// Runs a connection that joined a session (whose first connection is `first`) until it or
/// the session ends.
pub(super) async fn run(
    shared: Arc<Shared>,
    lane: Session,
    client: AuthenticatedClient,
    first: StreamOpener,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    let Session { control, mut messages, opener, incoming, driver } = lane;
    opener.settle_at(crate::shards::Shard::current().as_ref());
    let mut driver = OwnedTask::spawn(driver);
    let goodbye = shared.config().timeouts.goodbye;
    // The count is checked at the handshake too, but several may pass that together.
    let refused = match client.joined.and_then(|id| shared.joinable.joined(id)) {
        None => Err("its session ended".to_owned()),
        Some((most, ended)) if first.join_at_most(opener, incoming, most) => Ok(ended),
        Some((most, _)) => Err(format!("this session has its most connections ({most})")),
    };
    let ended = match refused {
        Ok(ended) => ended,
        Err(reason) => {
            control.close(GoodbyeCode::ProtocolError, reason).await;
            finish(&mut driver, goodbye).await;
            return;
        }
    };
    let name = Escaped(&client.name);
    tracing::debug!(client = %name, %peer, connections = first.connections(), "connection joined its session");
    let end = tokio::select! {
        end = &mut driver => end.unwrap_or_else(|e| SessionEnd::ProtocolError(e.to_string())),
        Some(message) = messages.recv() => {
            let reason = format!("a joined connection carries no control messages (got {message:?})");
            control.close(GoodbyeCode::ProtocolError, reason.clone()).await;
            finish(&mut driver, goodbye).await;
            SessionEnd::ProtocolError(reason)
        }
        () = ended.token.cancelled() => {
            let (code, message) = ended.goodbye();
            control.close(code, message).await;
            finish(&mut driver, goodbye).await
        }
        () = stop.cancelled() => {
            control.close(GoodbyeCode::Shutdown, "server shutting down").await;
            finish(&mut driver, goodbye).await
        }
    };
    tracing::debug!(client = %name, %peer, "joined connection ended: {}", Escaped(&end.to_string()));
}
