//! Tests of [`super::JoinWrites`]: batching, the waits and their credit, and the driver.

use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;

use super::super::link::WatchedIo;
use super::super::Mode;
use super::*;

/// Records each write call it receives, accepting at most `limit` bytes per call.
#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<Mutex<Vec<Vec<u8>>>>,
    limit: usize,
}

impl AsyncWrite for Recorder {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let n = buf.len().min(self.limit);
        self.calls.lock().unwrap().push(buf[..n].to_vec());
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).take(self.limit).collect();
        let n = joined.len();
        self.calls.lock().unwrap().push(joined);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Recorder {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

/// A yamux data frame on stream 1 with `body`.
fn data_frame(body: &[u8]) -> Vec<u8> {
    let mut frame = vec![0, 0, 0, 0, 0, 0, 0, 1];
    frame.extend((body.len() as u32).to_be_bytes());
    frame.extend(body);
    frame
}

/// What the driver does with a flush: yamux writes a frame, then flushes.
async fn write_and_flush(io: &mut WatchedIo, frame: &[u8]) {
    io.write_all(frame).await.unwrap();
    io.flush().await.unwrap();
}

/// A batching writer under a watched link, as `mux::start` stacks them.
fn batching() -> (WatchedIo, Link, Recorder) {
    let recorder = Recorder { limit: usize::MAX, ..Recorder::default() };
    let link = Link::new(Mode::Client);
    let io = WatchedIo::new(Box::new(JoinWrites::batching(recorder.clone(), link.clone())), link.clone());
    (io, link, recorder)
}

#[tokio::test]
async fn a_header_leaves_with_its_body_in_one_call() {
    let recorder = Recorder { limit: usize::MAX, ..Recorder::default() };
    let mut join = JoinWrites::new(recorder.clone());
    join.write_all(b"header").await.unwrap();
    join.write_all(&[7; 1000]).await.unwrap();
    join.flush().await.unwrap();
    let calls = recorder.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(&calls[0][..6], b"header");
    assert_eq!(calls[0].len(), 1006);
}

#[tokio::test]
async fn a_lone_header_is_sent_by_the_flush_and_short_writes_lose_nothing() {
    let recorder = Recorder { limit: usize::MAX, ..Recorder::default() };
    let mut join = JoinWrites::new(recorder.clone());
    join.write_all(b"window-update").await.unwrap();
    assert!(recorder.calls.lock().unwrap().is_empty(), "held until the flush");
    join.flush().await.unwrap();
    assert_eq!(recorder.calls.lock().unwrap().concat(), b"window-update");

    // A sink that takes 5 bytes per call: order and content survive every split.
    let slow = Recorder { limit: 5, ..Recorder::default() };
    let mut join = JoinWrites::new(slow.clone());
    join.write_all(b"hdr-1").await.unwrap();
    join.write_all(b"hdr-2").await.unwrap();
    join.write_all(&(0u8..200).collect::<Vec<_>>()).await.unwrap();
    join.shutdown().await.unwrap();
    let mut expected = b"hdr-1hdr-2".to_vec();
    expected.extend(0u8..200);
    assert_eq!(slow.calls.lock().unwrap().concat(), expected);
}

#[tokio::test]
async fn frames_queued_while_a_flush_waits_leave_in_one_write_and_the_driver_forces_it() {
    let (mut io, link, recorder) = batching();
    let request = data_frame(b"GET key");
    write_and_flush(&mut io, &request).await;
    assert!(recorder.calls.lock().unwrap().is_empty(), "the first flush of a batch waits");
    // More visitors' frames, queued before the driver came back.
    write_and_flush(&mut io, &request).await;
    write_and_flush(&mut io, &request).await;
    assert!(recorder.calls.lock().unwrap().is_empty());
    // The driver found nothing more: it takes the wait, and polls again.
    assert!(link.take_put_off(), "the driver learns that a flush waits");
    io.flush().await.unwrap();
    let calls = recorder.calls.lock().unwrap().clone();
    assert_eq!(calls, vec![request.repeat(3)], "three frames, one write");
    assert!(!link.take_put_off(), "nothing waits any more");
}

#[tokio::test]
async fn window_updates_and_large_bodies_are_not_held_back() {
    let (mut io, link, recorder) = batching();
    // A window update (type 1) for stream 1: no data frame in the batch.
    let update = [0, 1, 0, 0, 0, 0, 0, 1, 0, 4, 0, 0];
    write_and_flush(&mut io, &update).await;
    assert_eq!(recorder.calls.lock().unwrap().clone(), vec![update.to_vec()]);
    assert!(!link.take_put_off());
    // A body over `COPIED` leaves at once, in one call with its header, as yamux writes
    // them (header, then body), and nothing waits after it.
    let bulk = data_frame(&vec![7; COPIED + 1]);
    io.write_all(&bulk[..12]).await.unwrap();
    io.write_all(&bulk[12..]).await.unwrap();
    io.flush().await.unwrap();
    assert_eq!(recorder.calls.lock().unwrap()[1..], [bulk]);
    assert!(!link.take_put_off());
}

#[tokio::test]
async fn a_wait_ends_after_sixteen_flushes_or_a_full_batch_without_the_driver() {
    let (mut io, link, recorder) = batching();
    let small = data_frame(b"x");
    for _ in 0..MOST_PUT_OFFS {
        write_and_flush(&mut io, &small).await;
    }
    assert!(recorder.calls.lock().unwrap().is_empty());
    write_and_flush(&mut io, &small).await;
    assert_eq!(recorder.calls.lock().unwrap().clone(), vec![small.repeat(MOST_PUT_OFFS as usize + 1)]);
    assert!(!link.take_put_off(), "written: the driver has nothing to force");

    let medium = data_frame(&vec![1; COPIED / 2]);
    write_and_flush(&mut io, &medium).await;
    write_and_flush(&mut io, &medium).await;
    assert_eq!(recorder.calls.lock().unwrap().len(), 2, "a batch of `COPIED` bytes leaves at once");
}

#[tokio::test]
async fn a_large_body_after_a_batch_survives_short_writes_in_order() {
    let slow = Recorder { limit: 5, ..Recorder::default() };
    let link = Link::new(Mode::Client);
    let mut io = WatchedIo::new(Box::new(JoinWrites::batching(slow.clone(), link.clone())), link);
    let (small, bulk) =
        (data_frame(b"hello"), data_frame(&(0..COPIED + 100).map(|i| i as u8).collect::<Vec<_>>()));
    io.write_all(&small).await.unwrap();
    io.write_all(&bulk[..12]).await.unwrap();
    io.write_all(&bulk[12..]).await.unwrap();
    io.flush().await.unwrap();
    assert_eq!(slow.calls.lock().unwrap().concat(), [small, bulk].concat());
}

/// Takes nothing: a peer that stopped reading.
struct Full;

impl AsyncWrite for Full {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Pending
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Pending
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

#[test]
fn a_peer_that_stops_reading_holds_one_batch_not_more() {
    let mut join = JoinWrites::new(Full);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let pong = [0, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1];
    assert!(matches!(Pin::new(&mut join).poll_write(&mut cx, &pong), Poll::Ready(Ok(12))));
    assert!(Pin::new(&mut join).poll_flush(&mut cx).is_pending());
    // yamux answers the next ping: the batch is not out, so nothing more is taken.
    assert!(Pin::new(&mut join).poll_write(&mut cx, &pong).is_pending());
    assert_eq!(join.held(), 12);
}

#[tokio::test]
async fn waits_that_gather_nothing_stop_until_one_in_sixteen_and_a_burst_brings_them_back() {
    let (mut io, link, recorder) = batching();
    let message = data_frame(b"ping");
    // One message at a time: each wait gathers nothing. Count the batches that waited.
    let mut waited = 0;
    for _ in 0..(MOST_CREDIT + 4 * PROBE) {
        write_and_flush(&mut io, &message).await;
        if link.take_put_off() {
            waited += 1;
            io.flush().await.unwrap();
        }
    }
    // The credit at the start, then one probe per `PROBE` batches.
    assert_eq!(waited, MOST_CREDIT + 4);
    assert_eq!(recorder.calls.lock().unwrap().len() as u32, MOST_CREDIT + 4 * PROBE);
    // A burst: a probe waits, and another visitor's frame joins its batch before the
    // driver's forced flush; that earns credit back.
    let mut batches = 0;
    loop {
        write_and_flush(&mut io, &message).await;
        batches += 1;
        if link.take_put_off() {
            break;
        }
        assert!(batches < PROBE, "a probe comes within {PROBE} batches");
    }
    write_and_flush(&mut io, &message).await;
    assert_eq!(recorder.calls.lock().unwrap().last(), Some(&message.repeat(2)));
    assert!(!link.take_put_off());
    write_and_flush(&mut io, &message).await;
    assert!(link.take_put_off(), "with credit again, the next batch waits at once");
}

/// A byte stream that counts the write calls made on it.
struct CountWrites {
    inner: tokio::io::DuplexStream,
    writes: Arc<std::sync::atomic::AtomicUsize>,
}

impl AsyncRead for CountWrites {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountWrites {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(start_paused = true)]
async fn through_the_driver_a_burst_leaves_in_one_write_and_a_lone_message_is_not_stranded() {
    use tokio::io::AsyncReadExt;

    use crate::mux::{start, Mode, MuxConfig};

    // The clock is paused: anything stranded in a batch ends the test here, not in a hang.
    let test = async {
        let (a, b) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a = CountWrites { inner: a, writes: writes.clone() };
        let (opener, _incoming, driver) = start(a, &MuxConfig::default(), Mode::Client);
        let (_peer_opener, mut peer_incoming, peer_driver) = start(b, &MuxConfig::default(), Mode::Server);
        tokio::spawn(driver);
        tokio::spawn(peer_driver);
        let mut streams = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..16 {
            let mut stream = opener.open().await.unwrap();
            stream.write_all(b"open").await.unwrap();
            let mut peer = peer_incoming.next().await.unwrap();
            peer.read_exact(&mut [0; 4]).await.unwrap();
            streams.push(stream);
            peers.push(peer);
        }

        // Sixteen visitors' requests arrive together: their tasks queue a frame each before
        // the driver runs.
        let before = writes.load(std::sync::atomic::Ordering::Relaxed);
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|mut stream| {
                tokio::spawn(async move {
                    stream.write_all(b"GET").await.unwrap();
                    stream
                })
            })
            .collect();
        for peer in &mut peers {
            let mut request = [0; 3];
            tokio::time::timeout(std::time::Duration::from_secs(5), peer.read_exact(&mut request))
                .await
                .expect("a request is not stranded in a batch")
                .unwrap();
            assert_eq!(&request, b"GET");
        }
        let burst = writes.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert!(burst <= 2, "16 frames took {burst} writes");

        // One message alone (the clock is paused: a stranded batch would time out).
        let mut stream = tasks.into_iter().next().unwrap().await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut ping = [0; 4];
        tokio::time::timeout(std::time::Duration::from_secs(5), peers[0].read_exact(&mut ping))
            .await
            .expect("a lone message is not stranded")
            .unwrap();
        assert_eq!(&ping, b"ping");
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), test).await.expect("nothing stranded");
}

#[tokio::test]
async fn a_busy_connection_keeps_its_buffer_and_an_idle_one_gives_it_back() {
    let mut join = JoinWrites::new(Recorder { limit: usize::MAX, ..Recorder::default() });
    join.write_all(&[1; 10_000]).await.unwrap();
    join.flush().await.unwrap();
    assert_eq!(join.held.capacity(), 16 * 1024, "grown by powers of two, kept while busy");
    join.write_all(&[2; 12]).await.unwrap();
    join.flush().await.unwrap();
    assert!(join.held.capacity() <= KEPT, "a heartbeat's batch gives the large buffer back");
}
