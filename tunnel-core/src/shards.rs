//! Single-threaded runtimes that each carry whole connections.
//!
//! On a multi-threaded runtime the task that reads a visitor's socket, the task that drives the
//! tunnel connection and the task that writes to the target often run on different worker
//! threads, and every hand-over between them is a wake-up of another thread (a futex call,
//! and often a sleeping thread to start): for small requests and answers, that is most of what
//! a tunnel costs. With [`Shards`], each tunnel connection lives on one thread, its socket
//! registered with that thread's event loop, and so do the tasks of the streams it carries: a
//! request crosses the tunnel without leaving the thread. A session's several connections
//! (`connections`) go to different threads, so bulk transfers still use every core.
//!
//! Opt-in: give them to [`crate::server::Server::spread_over`] or
//! [`crate::client::Client::with_shards`]. Without, everything runs on the caller's runtime.
//! Connections over a custom transport stay there too (their sockets are the program's).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;

use tokio::net::TcpStream;
use tokio::runtime::{Handle, RuntimeFlavor};

/// Most threads [`Shards::start`] starts.
pub const MAX_SHARDS: usize = 64;

/// A set of threads, each running a single-threaded tokio runtime that carries whole
/// connections; cheap to clone. The threads run until the process ends.
#[derive(Clone)]
pub struct Shards(Arc<Inner>);

struct Inner {
    homes: Vec<Home>,
    /// Round robin over `homes`.
    next: AtomicUsize,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards").field("threads", &self.0.homes.len()).finish()
    }
}

impl Shards {
    /// Starts `threads` threads (at least 1, at most [`MAX_SHARDS`]), named `shard-N`.
    ///
    /// ```
    /// let shards = tunnel_core::shards::Shards::start(2)?;
    /// assert_eq!(shards.len(), 2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let threads = threads.clamp(1, MAX_SHARDS);
        let mut homes = Vec::with_capacity(threads);
        for n in 0..threads {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let thread = std::thread::Builder::new()
                .name(format!("shard-{n}"))
                .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
            homes.push(Home { handle, thread: thread.thread().id() });
        }
        Ok(Self(Arc::new(Inner { homes, next: AtomicUsize::new(0) })))
    }

    /// How many threads.
    pub fn len(&self) -> usize {
        self.0.homes.len()
    }

    /// Never: [`Shards::start`] starts at least one.
    pub fn is_empty(&self) -> bool {
        self.0.homes.is_empty()
    }

    /// The thread for the next connection, in turn.
    pub(crate) fn next(&self) -> &Home {
        let n = self.0.next.fetch_add(1, Ordering::Relaxed);
        &self.0.homes[n % self.0.homes.len()]
    }
}

/// One single-threaded runtime and the thread that runs it: where a connection lives.
#[derive(Debug, Clone)]
pub(crate) struct Home {
    handle: Handle,
    thread: ThreadId,
}

impl Home {
    /// The runtime running the current task, if it is a single-threaded one (on a
    /// multi-threaded runtime a task has no thread of its own).
    pub(crate) fn current() -> Option<Self> {
        let handle = Handle::try_current().ok()?;
        (handle.runtime_flavor() == RuntimeFlavor::CurrentThread)
            .then(|| Self { handle, thread: std::thread::current().id() })
    }

    /// Whether the current code runs on this home's thread.
    pub(crate) fn is_here(&self) -> bool {
        std::thread::current().id() == self.thread
    }

    /// Runs `future` here.
    pub(crate) fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }

    /// `tcp`, registered with this home's event loop instead of the one it was made on (its
    /// readiness then wakes tasks here). Fails only when the OS refuses the registration.
    pub(crate) fn adopt(&self, tcp: TcpStream) -> std::io::Result<TcpStream> {
        let std = tcp.into_std()?;
        let _inside = self.handle.enter();
        TcpStream::from_std(std)
    }
}

/// Runs `future` at `home` when there is one, else on the current runtime.
pub(crate) fn spawn_at<F>(home: Option<&Home>, future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match home {
        Some(home) => home.spawn(future),
        None => tokio::spawn(future),
    }
}

/// Runs `carry(tcp)` where the stream it carries `tcp` over is driven (`home`, the stream's
/// [`crate::mux::MuxStream::home`]): here when that is here or nowhere in particular, otherwise
/// on that thread, `tcp` moved there; then waits for it to end. Fails, `tcp` dropped, only
/// when the OS would not move the socket.
pub(crate) async fn carry_at<F, Fut>(home: Option<Home>, tcp: TcpStream, carry: F) -> std::io::Result<()>
where
    F: FnOnce(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    match home.filter(|home| !home.is_here()) {
        None => carry(tcp).await,
        Some(home) => {
            let carried = home.spawn(carry(home.adopt(tcp)?));
            // Dropped (the visit aborted), the carrying task is aborted with it.
            let _ = tokio_util::task::AbortOnDropHandle::new(carried).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_adopted_socket_is_served_on_its_home_thread() {
        let shards = Shards::start(2).unwrap();
        let (first, second) = (shards.next().clone(), shards.next().clone());
        assert_ne!(first.thread, second.thread, "round robin: two calls, two threads");
        assert!(!first.is_here(), "the test's own thread is no shard");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dialed = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut adopted = second.adopt(accepted).unwrap();
        let home = second.clone();
        let echoed = second.spawn(async move {
            let here = Home::current().map(|h| h.thread);
            let mut byte = [0; 1];
            adopted.read_exact(&mut byte).await.unwrap();
            adopted.write_all(&byte).await.unwrap();
            (here, home.is_here())
        });
        let mut dialed = dialed;
        dialed.write_all(b"x").await.unwrap();
        let mut back = [0; 1];
        dialed.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"x");
        let (here, is_here) = echoed.await.unwrap();
        assert_eq!(here, Some(second.thread), "Home::current on a shard names that shard");
        assert!(is_here);
        assert!(Home::current().is_none(), "a multi-threaded runtime is no home");
    }
}
