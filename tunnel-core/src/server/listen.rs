//! The accept loop of the server's public listeners other than the tunnel's own (HTTP, HTTPS,
//! SOCKS): admit each connection or reset it, serve it as a task, and on shutdown or the
//! server's drain stop accepting and give the connections open the drain time.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Shared;
use crate::source::Pending;

impl Shared {
    /// Accepts on `listener` until `shutdown` or the drain; a connection `door` has no room
    /// for is reset at accept, the others are each served by `serve`, until they end or a
    /// newcomer takes their place (when the door is full, that of the oldest connection of the
    /// site (IPv4 address or IPv6 /48) holding the most, so that no one source can lock the others out). `serve` may
    /// cancel the token it is given to give the place back (a SOCKS connection once logged in:
    /// from then on it is one of its login's visits, and no newcomer can cut it). Then the listener
    /// closes (logged as `NAME listener ADDR closed`), `closed` runs, and the connections
    /// still open get up to the drain time (or until [`super::Server::cut`]) before they are
    /// cut.
    pub(super) async fn accept_until<F, Fut>(
        &self,
        name: &str,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        door: Pending,
        closed: impl FnOnce(),
        serve: F,
    ) where
        F: Fn(TcpStream, SocketAddr, CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                () = self.draining.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        if crate::log::ACCEPT_FAILURES.allow() {
                            tracing::warn!("{name} accept failed: {err}");
                        }
                        // Out of file descriptors and the like: pause instead of spinning.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let admission = match door.admit(peer.ip()) {
                Ok(admission) => admission,
                Err(full) => {
                    if crate::log::REFUSALS.allow() {
                        tracing::warn!(%peer, "{name} connection refused: {full}");
                    }
                    crate::transport::reset_on_close(&tcp);
                    continue;
                }
            };
            let _ = crate::transport::configure_tcp(&tcp);
            let settled = CancellationToken::new();
            // Boxed: moved into the task and pinned there, it would be kept twice for the life
            // of the connection (an idle keep-alive visitor's, a SOCKS client's).
            let (mut served, stop) = (Box::pin(serve(tcp, peer, settled.clone())), stop.clone());
            tasks.spawn(async move {
                let mut admission = Some(admission);
                loop {
                    tokio::select! {
                        () = &mut served => return,
                        () = stop.cancelled() => return,
                        () = settled.cancelled(), if admission.is_some() => admission = None,
                        () = evicted(admission.as_ref()) => {
                            if crate::log::REFUSALS.allow() {
                                tracing::warn!(%peer, "connection closed: the listener is full, and a newcomer from a source holding fewer took the place of this source's oldest");
                            }
                            return;
                        }
                    }
                }
            });
        }
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        drop(listener);
        tracing::info!("{name} listener {addr} closed: no new visitors");
        closed();
        tasks.close();
        let limit = self.config().drain_timeout;
        let drained = tokio::select! {
            drained = tokio::time::timeout(limit, tasks.wait()) => drained.is_ok(),
            () = self.cut.cancelled() => false,
        };
        if !drained {
            stop.cancel();
            tasks.wait().await;
        }
    }
}

/// Resolves when a newcomer took `admission`'s place; never once the place was given back.
async fn evicted(admission: Option<&crate::source::Admission>) {
    match admission {
        Some(admission) => admission.evicted().await,
        None => std::future::pending().await,
    }
}
