//! Stream multiplexing: the `yamux` crate behind a small API.
//!
//! [`start`] splits one connection into a [`StreamOpener`] (cloneable), a queue of
//! [`IncomingStreams`], and a [`MuxDriver`] future that must be polled (spawned) for anything to
//! happen: a yamux connection makes progress only while one task polls it. Stream limits are
//! enforced here, below yamux's own (which would tear the whole connection down), so a peer
//! that opens too many streams only gets those streams reset.
//!
//! Files: `settings` (the configuration and what it means for yamux), `link` (the byte stream
//! under yamux, watched for its end), `stream` (opening streams; one stream), `incoming` (the
//! inbound queue), `driver` (the task that polls yamux), `admission` (the inbound rate limit),
//! `join` (frame headers written with their bodies), `openers` (several connections, each new
//! stream on the least busy), `bundle` (the connections of one session).

mod admission;
mod backlog;
mod bundle;
mod driver;
mod ends;
mod frames;
mod incoming;
mod join;
mod link;
mod openers;
mod settings;
mod spare;
mod stream;

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};
use tokio_util::compat::TokioAsyncReadCompatExt;

pub use driver::MuxDriver;
pub use incoming::IncomingStreams;
pub(crate) use incoming::Intake;
#[cfg(test)]
pub(crate) use openers::idle_opener;
pub(crate) use openers::least_busy;
pub use openers::Openers;
pub use settings::MuxConfig;
pub use stream::{IdleMarker, MuxStream, StreamOpener};

use crate::transport::Io;
use admission::TokenBucket;
use join::JoinWrites;
use link::{Link, WatchedIo};

/// Which end of the connection this is (yamux numbers streams by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The side that dialed.
    Client,
    /// The side that accepted.
    Server,
}

/// Why a stream could not be opened, or the multiplexer stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MuxError {
    /// The connection is closed.
    #[error("multiplexed connection closed")]
    Closed,
    /// This side already has `max_streams` streams open.
    #[error("stream limit reached ({0} open)")]
    StreamLimit(usize),
    /// The peer kept opening streams past the rate limit for a whole second; the connection
    /// was closed.
    #[error("peer opened streams past the rate limit ({0} refused within a second); closing the connection")]
    StreamFlood(u64),
    /// yamux reported a connection error (I/O failure or peer protocol violation).
    #[error("multiplexer")]
    Yamux(#[from] yamux::ConnectionError),
}

/// Starts multiplexing `io`: returns the opener, the inbound queue, and the driver to spawn
/// (it resolves when the connection ends).
///
/// ```
/// # tokio_test_block_on(async {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use tunnel_core::mux::{self, Mode, MuxConfig};
///
/// let (a, b) = tokio::io::duplex(64 * 1024);
/// let (opener, _in_a, driver_a) = mux::start(a, &MuxConfig::default(), Mode::Client);
/// let (_out_b, mut incoming, driver_b) = mux::start(b, &MuxConfig::default(), Mode::Server);
/// tokio::spawn(driver_a);
/// tokio::spawn(driver_b);
///
/// let mut stream = opener.open().await.unwrap();
/// stream.write_all(b"ping").await.unwrap();
/// let mut peer = incoming.next().await.unwrap();
/// let mut buf = [0u8; 4];
/// peer.read_exact(&mut buf).await.unwrap();
/// assert_eq!(&buf, b"ping");
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
pub fn start(io: impl Io, config: &MuxConfig, mode: Mode) -> (StreamOpener, IncomingStreams, MuxDriver) {
    let limits =
        (Arc::new(Semaphore::new(config.max_streams)), Arc::new(Semaphore::new(config.inbound_limit())));
    start_with(io, config, mode, Link::new(mode), limits)
}

/// Starts multiplexing `io` as another connection of `first`'s session, to be joined to it
/// with [`StreamOpener::join`] once ready: it shares `first`'s stream limits, and a drain
/// waiting on `first` is woken by its streams too.
pub fn start_beside(
    io: impl Io,
    config: &MuxConfig,
    mode: Mode,
    first: &StreamOpener,
) -> (StreamOpener, IncomingStreams, MuxDriver) {
    let limits = (first.permits.clone(), first.inbound_permits.clone());
    start_with(io, config, mode, Link::beside(&first.link, mode), limits)
}

fn start_with(
    io: impl Io,
    config: &MuxConfig,
    mode: Mode,
    link: Link,
    (permits, inbound_permits): (Arc<Semaphore>, Arc<Semaphore>),
) -> (StreamOpener, IncomingStreams, MuxDriver) {
    let mode = match mode {
        Mode::Client => yamux::Mode::Client,
        Mode::Server => yamux::Mode::Server,
    };
    let io = WatchedIo::new(Box::new(JoinWrites::batching(io, link.clone())), link.clone());
    let conn = yamux::Connection::new(io.compat(), config.yamux(), mode);
    let (commands_tx, commands_rx) = mpsc::channel(64);
    // 256 in all: the sender's own place and 255 more.
    let (incoming_tx, incoming_rx) = futures::channel::mpsc::channel(255);
    let (joined_tx, joined_rx) = futures::channel::mpsc::unbounded();
    let spare = Arc::new(spare::Spare::default());
    let opener = StreamOpener {
        commands: commands_tx,
        permits,
        inbound_permits: inbound_permits.clone(),
        limit: config.max_streams,
        link: link.clone(),
        bundle: Arc::new(bundle::Bundle::new(joined_tx)),
        spare: spare.clone(),
    };
    let driver = MuxDriver {
        conn,
        commands: Some(commands_rx),
        pending_opens: VecDeque::new(),
        incoming: incoming_tx,
        inbound_permits,
        closing: false,
        resets: 0,
        link: link.clone(),
        inbound_rate: config.max_inbound_rate.map(TokenBucket::new),
        spare,
    };
    (opener, IncomingStreams::new(incoming_rx, joined_rx, link), driver)
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::time::Duration;

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    use super::settings::YAMUX_DEFAULT_CREDIT;
    use super::*;

    fn pair(config: &MuxConfig) -> ((StreamOpener, IncomingStreams), (StreamOpener, IncomingStreams)) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (oa, ia, da) = start(a, config, Mode::Client);
        let (ob, ib, db) = start(b, config, Mode::Server);
        tokio::spawn(da);
        tokio::spawn(db);
        ((oa, ia), (ob, ib))
    }

    #[tokio::test]
    async fn small_reads_of_a_header_leave_the_next_read_taking_what_came() {
        let ((opener, _), (_, mut peer_incoming)) = pair(&MuxConfig::default());
        let mut stream = opener.open().await.unwrap();
        let request = b"GET / HTTP/1.1\r\nhost: a.test\r\nx-forwarded-for: 127.0.0.1\r\n\r\n";
        let mut sent = vec![0, 10];
        sent.extend_from_slice(b"0123456789");
        sent.extend_from_slice(request);
        stream.write_all(&sent).await.unwrap();
        let mut theirs = peer_incoming.next().await.unwrap();
        // A header as `session::framed` reads it: its length, then its body.
        let len = theirs.read_u16().await.unwrap();
        theirs.read_exact(&mut vec![0u8; usize::from(len)]).await.unwrap();
        // All of what followed, in one read (it came in one frame): a request copied on in
        // pieces of 8 and 16 bytes reaches an origin as that many segments.
        let mut rest = vec![0u8; 64 * 1024];
        let n = theirs.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], &request[..]);
    }

    #[tokio::test]
    async fn acknowledgements_wait_for_the_first_frame_back_up_to_a_bound() {
        let ((opener, mut incoming), (peer_opener, mut peer_incoming)) = pair(&MuxConfig::default());
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        // n streams opened, announced and taken by the peer.
        let mut open_and_take = async |n: usize, ours: &mut Vec<MuxStream>, theirs: &mut Vec<MuxStream>| {
            for _ in 0..n {
                let mut stream = opener.open().await.unwrap();
                stream.write_all(b"x").await.unwrap();
                ours.push(stream);
                theirs.push(peer_incoming.next().await.unwrap());
            }
        };
        // yamux writes what its streams queue in the order they queued it (its `SelectAll`
        // polls them in the order they woke it): once a stream the peer opened afterwards has
        // arrived, any acknowledgement it sent before has too.
        let settle = async |incoming: &mut IncomingStreams| {
            let mut probe = peer_opener.open().await.unwrap();
            probe.write_all(b"z").await.unwrap();
            incoming.next().await.unwrap().read_exact(&mut [0; 1]).await.unwrap();
        };
        let bound = stream::DEFERRED_ACKNOWLEDGEMENTS;
        open_and_take(bound + 1, &mut ours, &mut theirs).await;
        settle(&mut incoming).await;
        let pending: Vec<bool> = ours.iter().map(MuxStream::is_pending_ack).collect();
        assert!(pending[..bound].iter().all(|p| *p), "{pending:?}");
        assert!(!pending[bound], "past the bound, acknowledged at once");

        // The first frame back carries the acknowledgement and gives its place back; so does
        // a stream dropped unacknowledged.
        theirs[0].write_all(b"y").await.unwrap();
        ours[0].read_exact(&mut [0; 1]).await.unwrap();
        assert!(!ours[0].is_pending_ack());
        drop(theirs.remove(1));
        open_and_take(3, &mut ours, &mut theirs).await;
        settle(&mut incoming).await;
        let pending: Vec<bool> = ours[bound + 1..].iter().map(MuxStream::is_pending_ack).collect();
        assert_eq!(pending, [true, true, false], "two places were free again, then none");
    }

    #[tokio::test]
    async fn half_close_keeps_the_other_direction_open() {
        let ((opener, _), (_, mut incoming)) = pair(&MuxConfig::default());
        let mut client = opener.open().await.unwrap();
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut server = incoming.next().await.unwrap();
        let mut request = Vec::new();
        server.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"request");
        server.write_all(b"reply").await.unwrap();
        server.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");
    }

    /// Returns once every frame `peer_opener`'s side wrote before has reached `incoming`'s
    /// side: yamux writes frames in the order they were queued.
    async fn settle(peer_opener: &StreamOpener, incoming: &mut IncomingStreams) {
        let mut probe = peer_opener.open().await.unwrap();
        probe.write_all(b"z").await.unwrap();
        incoming.next().await.unwrap().read_exact(&mut [0; 1]).await.unwrap();
    }

    #[tokio::test]
    async fn a_reset_after_our_fin_reads_as_a_reset_after_the_data_before_it() {
        let ((opener, _), (_, mut peer_incoming)) = pair(&MuxConfig::default());
        for reset in [true, false] {
            let mut ours = opener.open().await.unwrap();
            ours.write_all(b"request").await.unwrap();
            ours.shutdown().await.unwrap();
            let mut theirs = peer_incoming.next().await.unwrap();
            theirs.read_to_end(&mut Vec::new()).await.unwrap();
            theirs.write_all(b"part of the answer").await.unwrap();
            if reset {
                theirs.reset();
            } else {
                theirs.shutdown().await.unwrap();
            }
            let mut answer = Vec::new();
            let ended = ours.read_to_end(&mut answer).await;
            assert_eq!(answer, b"part of the answer", "what came before the end, reset: {reset}");
            match ended {
                Err(err) if reset => assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}"),
                ended => assert_eq!(ended.is_ok(), !reset, "reset: {reset}, read: {ended:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_stream_reset_or_dropped_after_its_own_fin_fails_the_peers_writes() {
        let ((opener, mut incoming), (peer_opener, mut peer_incoming)) = pair(&MuxConfig::default());
        for reset in [true, false] {
            let mut ours = opener.open().await.unwrap();
            ours.write_all(b"upload").await.unwrap();
            let mut theirs = peer_incoming.next().await.unwrap();
            theirs.write_all(b"whole answer").await.unwrap();
            theirs.shutdown().await.unwrap();
            let mut answer = Vec::new();
            ours.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, b"whole answer", "the FIN before the reset is a clean end");
            // yamux alone sends nothing for a stream dropped after its FIN: the upload would
            // go on into a stream nobody reads, until its window ran out. Reset, the reset goes
            // at once; dropped, it answers the next data, as TCP does for a closed socket.
            if reset {
                theirs.reset();
            } else {
                drop(theirs);
                ours.write_all(b"more upload").await.unwrap();
                settle(&opener, &mut peer_incoming).await;
            }
            settle(&peer_opener, &mut incoming).await;
            let err = ours.write_all(b"more upload").await.expect_err("writes to a reset stream");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "reset: {reset}: {err}");
        }
    }

    #[tokio::test]
    async fn resets_of_half_closed_streams_leave_nothing_behind_and_the_connection_lives() {
        let ((opener, _), (peer_opener, mut peer_incoming)) = pair(&MuxConfig::default());
        let mut kept = Vec::new();
        for n in 0..200 {
            let mut ours = opener.open().await.unwrap();
            ours.write_all(b"x").await.unwrap();
            ours.shutdown().await.unwrap();
            let mut theirs = peer_incoming.next().await.unwrap();
            theirs.read_to_end(&mut Vec::new()).await.unwrap();
            theirs.reset();
            let ended = ours.read_to_end(&mut Vec::new()).await;
            assert_eq!(ended.map_err(|e| e.kind()), Err(io::ErrorKind::ConnectionReset), "stream {n}");
            // Half of them are kept until the peer's frames are all in.
            if n % 2 == 0 {
                kept.push(ours);
            }
        }
        let mut echo = opener.open().await.unwrap();
        echo.write_all(b"still up").await.unwrap();
        let mut theirs = peer_incoming.next().await.unwrap();
        theirs.read_exact(&mut [0; 8]).await.unwrap();
        // Only the streams still held (and the one open now) are followed, on either side;
        // every reset the peer made was written (each was read as one), none waits.
        assert_eq!(opener.link.ends().followed(), kept.len() + 1);
        drop(kept);
        assert_eq!(opener.link.ends().followed(), 1);
        let resetter = peer_opener.link.ends();
        assert_eq!(resetter.followed(), 1);
        assert!(!resetter.resets_waiting());
    }

    #[tokio::test]
    async fn open_streams_are_counted_both_ways_until_dropped() {
        let ((opener, _), (server_opener, mut incoming)) = pair(&MuxConfig::default());
        let mut first = opener.open().await.unwrap();
        let second = opener.open().await.unwrap();
        first.write_all(b"x").await.unwrap();
        let accepted = incoming.next().await.unwrap();
        assert_eq!(opener.open_streams(), 2);
        assert_eq!(server_opener.open_streams(), 1, "the peer counts the stream it took");
        let waiting = tokio::spawn({
            let opener = opener.clone();
            async move { opener.until_open_at_most(1).await }
        });
        drop(second);
        drop(first);
        waiting.await.unwrap();
        assert_eq!(opener.open_streams(), 0);
        drop(accepted);
        server_opener.until_open_at_most(0).await;
    }

    #[tokio::test]
    async fn opening_past_the_limit_fails_without_killing_the_connection() {
        let config = MuxConfig { max_streams: 2, ..MuxConfig::default() };
        let ((opener, _), (_, mut incoming)) = pair(&config);
        let first = opener.open().await.unwrap();
        let _second = opener.open().await.unwrap();
        assert!(matches!(opener.open().await, Err(MuxError::StreamLimit(2))));
        drop(first);
        let mut third = opener.open().await.unwrap();
        third.write_all(b"x").await.unwrap();
        // Streams are announced lazily: drain the inbound queue until the third arrives.
        let mut got = Vec::new();
        while got.is_empty() {
            let mut s = incoming.next().await.unwrap();
            let mut buf = [0u8; 1];
            if let Ok(1) = s.read(&mut buf).await {
                got.push(buf[0]);
            }
        }
        assert_eq!(got, b"x");
    }

    #[tokio::test]
    async fn peer_exceeding_our_inbound_limit_gets_resets_and_the_connection_lives() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let generous = MuxConfig { max_streams: 8, ..MuxConfig::default() };
        let strict = MuxConfig { max_streams: 2, ..MuxConfig::default() };
        let (opener, _ia, da) = start(a, &generous, Mode::Client);
        let (_ob, mut incoming, db) = start(b, &strict, Mode::Server);
        tokio::spawn(da);
        let server = tokio::spawn(db);
        let mut streams = Vec::new();
        for i in 0..6u8 {
            let mut s = opener.open().await.unwrap();
            s.write_all(&[i]).await.unwrap();
            streams.push(s);
        }
        let mut kept = Vec::new();
        for _ in 0..2 {
            let mut s = incoming.next().await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            kept.push((s, b[0]));
        }
        // Each excess stream was reset: its reader sees a reset, not an end.
        for (i, s) in streams.iter_mut().enumerate() {
            if kept.iter().any(|(_, b)| usize::from(*b) == i) {
                continue;
            }
            let mut buf = [0u8; 1];
            let read = s.read(&mut buf).await;
            assert!(
                matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
                "stream {i}: {read:?}"
            );
        }
        assert!(!server.is_finished(), "the connection must survive a stream flood");
        let (mut s, id) = kept.pop().unwrap();
        s.write_all(b"ok").await.unwrap();
        let mut reply = [0u8; 2];
        streams[usize::from(id)].read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"ok");
    }

    #[tokio::test]
    async fn a_stream_announced_before_the_first_one_is_held_not_mistaken_for_it() {
        let ((opener, _), (_, mut incoming)) = pair(&MuxConfig::default());
        let mut first = opener.open().await.unwrap();
        let mut second = opener.open().await.unwrap();
        // The second stream speaks first, so the peer hears of it first.
        second.write_all(b"data").await.unwrap();
        let (taken, ()) = tokio::join!(incoming.take_stream(1, 4), async {
            tokio::task::yield_now().await;
            first.write_all(b"ctrl").await.unwrap();
        });
        let mut control = taken.expect("stream 1");
        assert_eq!(control.id(), 1);
        let mut buf = [0u8; 4];
        control.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ctrl");
        let mut held = incoming.next().await.unwrap();
        held.read_exact(&mut buf).await.unwrap();
        assert_eq!((held.id(), &buf), (3, b"data"));
    }

    #[tokio::test(start_paused = true)]
    async fn streams_beyond_the_rate_limit_are_reset_and_the_bucket_refills() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let limited = MuxConfig { max_inbound_rate: Some(10), ..MuxConfig::default() };
        let (opener, _ia, da) = start(a, &MuxConfig::default(), Mode::Client);
        let (_ob, mut incoming, db) = start(b, &limited, Mode::Server);
        tokio::spawn(da);
        tokio::spawn(db);
        let mut streams = Vec::new();
        for _ in 0..15 {
            let mut s = opener.open().await.unwrap();
            s.write_all(b"x").await.unwrap();
            streams.push(s);
        }
        let mut admitted = Vec::new();
        while let Ok(Some(stream)) = tokio::time::timeout(Duration::from_millis(100), incoming.next()).await {
            admitted.push(stream);
        }
        assert_eq!(admitted.len(), 10, "the burst is the rate");
        let mut reset = 0;
        for stream in &mut streams {
            let mut byte = [0u8; 1];
            // An admitted stream stays open and silent: its read times out.
            if let Ok(read) = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut byte)).await {
                assert!(
                    matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
                    "a refused stream ends with a reset, not {read:?}"
                );
                reset += 1;
            }
        }
        assert_eq!(reset, 5, "every stream past the burst is reset");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut later = opener.open().await.unwrap();
        later.write_all(b"y").await.unwrap();
        assert!(incoming.next().await.is_some(), "the bucket refilled");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_flooding_past_the_rate_for_a_second_loses_the_connection() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let limited = MuxConfig { max_inbound_rate: Some(10), ..MuxConfig::default() };
        let (opener, _ia, da) = start(a, &MuxConfig::default(), Mode::Client);
        let (_ob, _incoming, db) = start(b, &limited, Mode::Server);
        tokio::spawn(da);
        let server = tokio::spawn(db);
        for _ in 0..25 {
            let Ok(mut s) = opener.open().await else { break };
            let _ = s.write_all(b"x").await;
        }
        let end =
            tokio::time::timeout(Duration::from_secs(5), server).await.expect("connection kept").unwrap();
        assert!(matches!(end, Err(MuxError::StreamFlood(11))), "{end:?}");
    }

    #[tokio::test]
    async fn close_ends_both_drivers_and_fails_new_opens() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (opener, _ia, da) = start(a, &MuxConfig::default(), Mode::Client);
        let (_ob, _ib, db) = start(b, &MuxConfig::default(), Mode::Server);
        let da = tokio::spawn(da);
        let db = tokio::spawn(db);
        opener.close().await;
        da.await.unwrap().unwrap();
        db.await.unwrap().unwrap();
        assert!(opener.open().await.is_err());
    }

    /// Relays `from` into `to` with a fixed delay, like a long link with unlimited bandwidth,
    /// recording the most bytes ever in flight.
    async fn delayed_relay(
        mut from: impl AsyncRead + Unpin,
        mut to: impl AsyncWrite + Unpin + Send + 'static,
        delay: Duration,
        in_flight_max: Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
        let delivered = in_flight.clone();
        let writer = tokio::spawn(async move {
            while let Some((due, chunk)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
                delivered.fetch_sub(chunk.len(), Ordering::SeqCst);
            }
        });
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            let now = in_flight.fetch_add(n, Ordering::SeqCst) + n;
            in_flight_max.fetch_max(now, Ordering::SeqCst);
            let _ = tx.send((tokio::time::Instant::now() + delay, buf[..n].to_vec()));
        }
        drop(tx);
        let _ = writer.await;
    }

    /// Sends 4 MiB over one stream across a 40 ms round trip; returns the most bytes in flight.
    /// Real time: yamux measures round trips with the system clock, not tokio's.
    async fn most_bytes_in_flight(config: &MuxConfig) -> usize {
        let (a, relay_a) = tokio::io::duplex(1 << 20);
        let (b, relay_b) = tokio::io::duplex(1 << 20);
        let (relay_a_read, relay_a_write) = tokio::io::split(relay_a);
        let (relay_b_read, relay_b_write) = tokio::io::split(relay_b);
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let one_way = Duration::from_millis(20);
        tokio::spawn(delayed_relay(relay_a_read, relay_b_write, one_way, peak.clone()));
        tokio::spawn(delayed_relay(relay_b_read, relay_a_write, one_way, Arc::default()));
        let (opener, _ia, da) = start(a, config, Mode::Client);
        let (_ob, mut incoming, db) = start(b, config, Mode::Server);
        tokio::spawn(da);
        tokio::spawn(db);
        const TOTAL: usize = 4 << 20;
        let sender = tokio::spawn(async move {
            let mut stream = opener.open().await.unwrap();
            stream.write_all(&vec![7u8; TOTAL]).await.unwrap();
            stream.shutdown().await.unwrap();
            stream
        });
        let mut received = Vec::new();
        incoming.next().await.unwrap().read_to_end(&mut received).await.unwrap();
        assert_eq!(received.len(), TOTAL);
        drop(sender.await.unwrap());
        peak.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn stream_windows_grow_on_a_long_link_within_the_configured_budget() {
        let pinned = most_bytes_in_flight(&MuxConfig { window_growth: 0, ..MuxConfig::default() }).await;
        let headers = 4096;
        assert!(pinned <= YAMUX_DEFAULT_CREDIT + headers, "no growth budget, yet {pinned} bytes in flight");
        let tuned = most_bytes_in_flight(&MuxConfig::default()).await;
        assert!(tuned >= 4 * YAMUX_DEFAULT_CREDIT, "window stayed small: {tuned} bytes in flight");
    }
}
