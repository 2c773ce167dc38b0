//! The accept loop of the server's public listeners other than the tunnel's own (HTTP, HTTPS,
//! SOCKS): admit each connection or reset it, serve it as a task (on one of the server's
//! threads in turn, when it has them: see `crate::shards`), and on shutdown or the server's
//! drain stop accepting and give the connections open the drain time.

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
    ///
    /// Each connection's future is made here, with `serve`, and polled on the thread the
    /// connection goes to: `serve` must only build it (an `async` block or function), leaving
    /// timers and sockets to be made when it is first polled, there. Dropped before its end, it
    /// cuts the connections it served at once: they may run on the server's threads, which
    /// outlive the caller's runtime.
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
        let _stop_when_dropped = stop.clone().drop_guard();
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
            let (tcp, shard) = match self.place_visitor(tcp) {
                Ok(placed) => placed,
                Err(err) => {
                    if crate::log::ACCEPT_FAILURES.allow() {
                        tracing::warn!(%peer, "{name} connection dropped: cannot move it to its thread: {err}");
                    }
                    continue;
                }
            };
            let settled = CancellationToken::new();
            // Boxed: moved into the task and pinned there, it would be kept twice for the life
            // of the connection (an idle keep-alive visitor's, a SOCKS client's).
            let (mut served, stop) = (Box::pin(serve(tcp, peer, settled.clone())), stop.clone());
            let task = tasks.track_future(async move {
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
            crate::shards::spawn_at(shard.as_ref(), task);
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

impl Shared {
    /// `tcp` moved to the next of the server's threads in turn, when it has any (see
    /// [`crate::shards::Shards::in_turn`]), with that thread; else as it is. Fails, `tcp`
    /// closed, only when the OS refuses the move.
    fn place_visitor(&self, tcp: TcpStream) -> std::io::Result<(TcpStream, Option<crate::shards::Shard>)> {
        let Some(shards) = self.shards.get() else { return Ok((tcp, None)) };
        let shard = shards.in_turn().clone();
        Ok((shard.adopt(tcp)?, Some(shard)))
    }
}

/// Resolves when a newcomer took `admission`'s place; never once the place was given back.
async fn evicted(admission: Option<&crate::source::Admission>) {
    match admission {
        Some(admission) => admission.evicted().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::sync::CancellationToken;

    use crate::auth::Credentials;
    use crate::server::{Server, ServerConfig};
    use crate::source::Pending;

    /// A listener of `server` accepting until the token is cancelled (or the task dropped),
    /// each connection served by `serve`; its address.
    fn listen<F, Fut>(
        server: &Server,
        serve: F,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>, CancellationToken)
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let (shared, until) = (server.shared.clone(), stop.clone().cancelled_owned());
        let accepting = tokio::spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            let serve = move |tcp, _, _| serve(tcp);
            shared.accept_until("test", listener, until, Pending::new(8, 8), || {}, serve).await;
        });
        (addr, accepting, stop)
    }

    /// The name of the thread running the current task.
    fn thread_name() -> String {
        std::thread::current().name().unwrap_or_default().to_owned()
    }

    /// The names of the threads that served `visitors` connections to a listener of `server`,
    /// one after the other; each proves its socket works there by echoing a byte.
    async fn threads_serving(server: &Server, visitors: usize) -> Vec<String> {
        let (seen, mut threads) = tokio::sync::mpsc::unbounded_channel();
        let (addr, accepting, stop) = listen(server, move |mut tcp| {
            let seen = seen.clone();
            async move {
                let _ = seen.send(thread_name());
                let mut byte = [0; 1];
                if tcp.read_exact(&mut byte).await.is_ok() {
                    let _ = tcp.write_all(&byte).await;
                }
            }
        });
        let mut served = Vec::new();
        for i in 0..visitors {
            let mut visitor = TcpStream::connect(addr).await.unwrap();
            visitor.write_all(&[i as u8]).await.unwrap();
            assert_eq!(visitor.read_u8().await.unwrap(), i as u8, "visitor {i} was not echoed");
            served.push(threads.recv().await.unwrap());
        }
        stop.cancel();
        accepting.await.unwrap();
        served
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listeners_visitors_are_served_on_the_servers_threads_in_turn() {
        let server = Server::new(ServerConfig::new(Credentials::default(), None));
        server.spread_over(crate::shards::Shards::start(2).unwrap());
        // Which session serves an HTTP or SOCKS visitor is known only from what it asks, so each
        // goes to the next thread; there its requests find the session's connection driven on
        // the same thread, when the session has one there (by default a session has as many
        // connections as there are cores, placed by the threads' load).
        assert_eq!(threads_serving(&server, 4).await, ["shard-0", "shard-1", "shard-0", "shard-1"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_threads_of_its_own_a_server_serves_visitors_on_the_callers_runtime() {
        let server = Server::new(ServerConfig::new(Credentials::default(), None));
        for thread in threads_serving(&server, 2).await {
            assert!(!thread.starts_with("shard-"), "served on {thread:?}");
        }
    }

    /// Their tasks run on the server's threads, which outlive the caller's runtime and the
    /// listener's task: before, a visitor of a listener whose task was aborted was served on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_listener_cuts_the_visitors_it_served_on_the_servers_threads() {
        let server = Server::new(ServerConfig::new(Credentials::default(), None));
        server.spread_over(crate::shards::Shards::start(2).unwrap());
        let (seen, mut served) = tokio::sync::mpsc::unbounded_channel();
        let (addr, accepting, _stop) = listen(&server, move |tcp| {
            let seen = seen.clone();
            async move {
                let _ = seen.send(thread_name());
                // Holds the connection until the task is dropped.
                let _held = tcp;
                std::future::pending::<()>().await;
            }
        });
        let mut visitor = TcpStream::connect(addr).await.unwrap();
        assert_eq!(served.recv().await.unwrap(), "shard-0");
        accepting.abort();
        assert!(accepting.await.unwrap_err().is_cancelled());
        // Closed (an end, or a reset): either way no longer held.
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(30), visitor.read_to_end(&mut rest));
        let _ = ended.await.expect("the visitor is still served after its listener was dropped");
        assert!(rest.is_empty(), "nothing was sent to it");
    }
}
