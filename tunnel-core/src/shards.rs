//! Single-threaded runtimes that each carry whole connections.
//!
//! On a multi-threaded runtime the task that reads a visitor's socket, the task that drives the
//! tunnel connection and the task that writes to the target often run on different worker
//! threads, and every hand-over between them is a wake-up of another thread: for small
//! requests and answers, that was a fifth of what a request cost. With [`Shards`], each tunnel
//! connection lives on one thread, its socket registered with that thread's event loop, and so
//! do the tasks of the streams it carries: a request crosses the tunnel without leaving the
//! thread. A session's several connections (`connections`) go to different threads, so bulk
//! transfers still use every core.
//!
//! Opt-in: give them to [`crate::server::Server::spread_over`] or
//! [`crate::client::Client::with_shards`]. Without, everything runs on the caller's runtime.
//! Connections over a custom transport stay there too (their sockets are the program's).
//!
//! The server's HTTP, HTTPS and SOCKS visitors are spread too, each to the next thread in turn
//! (`Shards::in_turn`), uncounted: their requests then take, where they can, the session's
//! connection on the same thread.
//!
//! The price is that a connection cannot move once placed: a thread kept busy by one session
//! (a flood of visitors to its port, a bulk transfer over its only connection) slows the
//! sessions placed beside it, as one process's busy worker would. The server places each new
//! connection on the thread carrying the fewest, so the sessions a busy thread holds are those
//! already there.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;

use tokio::net::TcpStream;
use tokio::runtime::{Handle, RuntimeFlavor};

/// Most threads [`Shards::start`] starts.
pub const MAX_SHARDS: usize = 64;

/// Threads for blocking work (name lookups, file reads) shared out among the shards: what one
/// multi-threaded tokio runtime allows by default.
const BLOCKING_THREADS: usize = 512;

/// A set of threads, each running a single-threaded tokio runtime that carries whole
/// connections; cheap to clone. The threads stop, and whatever still runs on them is dropped,
/// once every clone is gone.
#[derive(Clone)]
pub struct Shards(Arc<Inner>);

struct Inner {
    shards: Vec<Shard>,
    /// Round robin among the least loaded.
    next: AtomicUsize,
    /// Round robin among all ([`Shards::in_turn`]).
    turn: AtomicUsize,
    /// Dropped with the set: each thread's runtime then returns and is dropped.
    _stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards").field("threads", &self.0.shards.len()).finish()
    }
}

impl Shards {
    /// Starts `threads` threads (at least 1, at most [`MAX_SHARDS`]), named `shard-N`. Fails
    /// when the OS refuses a thread or a runtime (those started already are stopped).
    ///
    /// ```
    /// let shards = tunnel_core::shards::Shards::start(2)?;
    /// assert_eq!(shards.len(), 2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let threads = threads.clamp(1, MAX_SHARDS);
        let blocking = (BLOCKING_THREADS / threads).max(16);
        let (mut shards, mut stops) = (Vec::with_capacity(threads), Vec::with_capacity(threads));
        for n in 0..threads {
            let (started, handle) = std::sync::mpsc::sync_channel(1);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            // The runtime is made on its own thread and dropped there: a runtime dropped on
            // the caller's (an async context) would panic.
            let thread = std::thread::Builder::new().name(format!("shard-{n}")).spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .max_blocking_threads(blocking)
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = started.send(Ok(runtime.handle().clone()));
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                    }
                    Err(err) => {
                        let _ = started.send(Err(err));
                    }
                }
            })?;
            let handle =
                handle.recv().map_err(|_| std::io::Error::other("a shard's thread ended at start"))??;
            shards.push(Shard { handle, thread: thread.thread().id(), load: Arc::default() });
            stops.push(stop);
        }
        Ok(Self(Arc::new(Inner {
            shards,
            next: AtomicUsize::new(0),
            turn: AtomicUsize::new(0),
            _stops: stops,
        })))
    }

    /// How many threads.
    pub fn len(&self) -> usize {
        self.0.shards.len()
    }

    /// Never: [`Shards::start`] starts at least one.
    pub fn is_empty(&self) -> bool {
        self.0.shards.is_empty()
    }

    /// The thread for the next connection: of those carrying the fewest connections now, the
    /// next in turn.
    pub(crate) fn next(&self) -> &Shard {
        let shards = &self.0.shards;
        let start = self.0.next.fetch_add(1, Ordering::Relaxed);
        let turn = (0..shards.len()).map(|i| &shards[start.wrapping_add(i) % shards.len()]);
        turn.min_by_key(|shard| shard.load.load(Ordering::Relaxed)).unwrap_or(&shards[0])
    }

    /// Each thread in turn: where a visitor of the server's HTTP or SOCKS listeners lives.
    /// Which session serves it is known only from its requests, and each of its requests may
    /// go to another. A session has by default as many connections as there are threads,
    /// placed by load, so wherever the visitor is, its streams are most often opened on a
    /// connection driven there (see [`crate::mux::StreamOpener::open`]). Not counted: the
    /// threads are balanced by tunnel connections, and visitors come and go in turn.
    pub(crate) fn in_turn(&self) -> &Shard {
        let shards = &self.0.shards;
        &shards[self.0.turn.fetch_add(1, Ordering::Relaxed) % shards.len()]
    }
}

/// One single-threaded runtime and the thread that runs it: where a connection lives.
#[derive(Debug, Clone)]
pub(crate) struct Shard {
    handle: Handle,
    thread: ThreadId,
    /// Connections placed here and not yet ended.
    load: Arc<AtomicUsize>,
}

impl Shard {
    /// The runtime running the current task, if it is a single-threaded one (on a
    /// multi-threaded one a task has no thread of its own). Where to spawn, not what to count:
    /// its count of connections is its own, not that of the set the thread belongs to.
    pub(crate) fn current() -> Option<Self> {
        let handle = Handle::try_current().ok()?;
        (handle.runtime_flavor() == RuntimeFlavor::CurrentThread).then(|| Self {
            handle,
            thread: std::thread::current().id(),
            load: Arc::default(),
        })
    }

    /// Whether the current code runs on this shard's thread.
    pub(crate) fn is_here(&self) -> bool {
        self.runs_on(std::thread::current().id())
    }

    /// Whether `thread` is this shard's.
    pub(crate) fn runs_on(&self, thread: ThreadId) -> bool {
        thread == self.thread
    }

    /// Runs `future` here.
    pub(crate) fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }

    /// Counts a connection placed here until the returned guard is dropped.
    pub(crate) fn carrying(&self) -> Carrying {
        self.load.fetch_add(1, Ordering::Relaxed);
        Carrying(self.load.clone())
    }

    /// `tcp`, registered with this shard's event loop instead of the one it was made on (its
    /// readiness then wakes tasks here). Fails only when the OS refuses the registration, or
    /// the shard has stopped; `tcp` is closed then.
    pub(crate) fn adopt(&self, tcp: TcpStream) -> std::io::Result<TcpStream> {
        let std = tcp.into_std()?;
        let _inside = self.handle.enter();
        TcpStream::from_std(std)
    }
}

/// A connection counted on its shard ([`Shard::carrying`]).
#[derive(Debug)]
pub(crate) struct Carrying(Arc<AtomicUsize>);

impl Drop for Carrying {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `future` at `shard` when there is one, else on the current runtime.
pub(crate) fn spawn_at<F>(shard: Option<&Shard>, future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match shard {
        Some(shard) => shard.spawn(future),
        None => tokio::spawn(future),
    }
}

/// Runs `carry(tcp)` where the stream it carries `tcp` over is driven (`home`, the stream's
/// [`crate::mux::MuxStream::home`]): here, awaited, when that is here or nowhere in particular;
/// otherwise spawned on that thread with `tcp` moved there, returning at once. The caller's task
/// then ends: waiting, it would keep the room of a whole carry for as long as the carry runs
/// (10,000 idle visitors: about 15 MiB). A carry spawned there no longer ends with the task or
/// runtime that accepted the visitor: it ends by itself, with its shard, or by what it
/// watches (callers pass their session's or client's cancellation). Fails, `tcp` closed, only
/// when the socket cannot be moved.
pub(crate) async fn carry_at<F, Fut>(home: Option<Shard>, tcp: TcpStream, carry: F) -> std::io::Result<()>
where
    F: FnOnce(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    match home.filter(|home| !home.is_here()) {
        None => carry(tcp).await,
        Some(home) => drop(home.spawn(carry(home.adopt(tcp)?))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A connected pair of sockets on this runtime: (dialed, accepted).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dialed = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        (dialed, listener.accept().await.unwrap().0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_visit_carried_at_another_shard_runs_there_with_its_socket_moved() {
        let shards = Shards::start(2).unwrap();
        let (first, second) = (shards.next().clone(), shards.next().clone());
        assert_ne!(first.thread, second.thread, "two calls, two threads");
        assert!(!first.is_here(), "the test's own thread is no shard");
        assert!(Shard::current().is_none(), "a multi-threaded runtime is no shard");

        let (mut dialed, accepted) = pair().await;
        let (ran_there, current) = tokio::sync::oneshot::channel();
        let there = second.clone();
        let carried = carry_at(Some(second.clone()), accepted, move |mut tcp| async move {
            let mut byte = [0; 1];
            tcp.read_exact(&mut byte).await.unwrap();
            tcp.write_all(&byte).await.unwrap();
            let _ = ran_there.send((there.is_here(), Shard::current().map(|s| s.thread)));
        });
        let carried = tokio::spawn(carried);
        dialed.write_all(b"x").await.unwrap();
        let mut back = [0; 1];
        dialed.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"x");
        carried.await.unwrap().unwrap();
        assert_eq!(current.await.unwrap(), (true, Some(second.thread)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_visit_handed_to_another_shard_leaves_its_task_at_once() {
        let shards = Shards::start(1).unwrap();
        let (_dialed, accepted) = pair().await;
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (ended, carried_to_the_end) = tokio::sync::oneshot::channel();
        let handed = carry_at(Some(shards.next().clone()), accepted, move |tcp| async move {
            let _ = released.await;
            let _ = ended.send(tcp.peer_addr().is_ok());
        });
        // Done at its first poll, while the carry still waits: the visit's task holds nothing
        // of it meanwhile.
        let handed = futures::FutureExt::now_or_never(handed);
        handed.expect("carry_at returned before its carry ended").unwrap();
        release.send(()).unwrap();
        assert!(carried_to_the_end.await.unwrap(), "the carry ran on, with its socket");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_connection_goes_to_the_shard_carrying_fewest() {
        let shards = Shards::start(3).unwrap();
        let busy = shards.next().clone();
        let _two = (busy.carrying(), busy.carrying());
        let other = shards.next().clone();
        let _one = other.carrying();
        // The third carries none: it is next, wherever the turn stands.
        let third = shards.next().clone();
        assert!(third.thread != busy.thread && third.thread != other.thread);
        let _three = third.carrying();
        // Two carry one each: either of them, never the one carrying two.
        let again = shards.next().clone();
        assert!(again.thread == other.thread || again.thread == third.thread, "never the busiest");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_shards_stop_their_threads_and_what_runs_there() {
        let shards = Shards::start(1).unwrap();
        let shard = shards.next().clone();
        let (_kept, dropped) = tokio::sync::oneshot::channel::<()>();
        // A task that would run for ever; it is dropped with its runtime.
        let (alive, gone) = tokio::sync::oneshot::channel::<()>();
        shard.spawn(async move {
            let _alive = alive;
            let _ = dropped.await;
        });
        drop(shards);
        assert!(gone.await.is_err(), "the task was dropped with its shard");
    }
}
