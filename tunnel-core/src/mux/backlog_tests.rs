//! Tests of [`super::Backlogs`] on the byte stream under yamux and through a whole connection,
//! against a peer writing yamux frames by hand.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;

use super::super::frames::{FrameCursor, Header, FLAG_FIN, FLAG_RST, FLAG_SYN, TYPE_DATA};
use super::super::link::{Link, WatchedIo};
use super::super::{start, Mode, MuxConfig, MuxStream};
use super::*;

/// A data frame on `stream` with `flags` and `body`.
fn frame(flags: u16, stream: u32, body: &[u8]) -> Vec<u8> {
    let mut frame = vec![0, TYPE_DATA];
    frame.extend(flags.to_be_bytes());
    frame.extend(stream.to_be_bytes());
    frame.extend((body.len() as u32).to_be_bytes());
    frame.extend(body);
    frame
}

/// `count` one-byte frames on `stream`.
fn one_byte_frames(stream: u32, count: usize) -> Vec<u8> {
    (0..count).flat_map(|i| frame(0, stream, &[i as u8])).collect()
}

/// Hands out `data` at most `piece` bytes per read.
struct Pieces {
    data: Vec<u8>,
    at: usize,
    piece: usize,
}

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.piece.min(buf.remaining()).min(self.data.len() - self.at);
        buf.put_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Pieces {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn headers_reach_yamux_whole_and_rewritten_however_the_bytes_are_cut() {
    let allowed = FRAMES_ALLOWED;
    // Stream 1 gets one-byte frames nobody reads, past the allowance; stream 3, one frame
    // after the cut, and a window update for stream 1 between.
    let mut wire = one_byte_frames(1, allowed + 3);
    wire.extend([0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9]);
    wire.extend(frame(FLAG_FIN, 3, b"hello"));
    let mut expected = wire.clone();
    for i in allowed..allowed + 3 {
        // The flags of each frame from the one past the allowance on: a reset.
        expected[i * 13 + 3] = FLAG_RST as u8;
    }
    for piece in [1, 5, 12, 13, 14, 100, 64 * 1024] {
        for read_size in [1, 12, 7, 16 * 1024] {
            let link = Link::new(Mode::Client);
            let tallies = [ReadTally::new(link.clone(), 1), ReadTally::new(link.clone(), 3)];
            let inner = Pieces { data: wire.clone(), at: 0, piece };
            let mut io = WatchedIo::new(Box::new(inner), link.clone());
            let mut seen = Vec::new();
            let mut buf = vec![0; read_size];
            loop {
                let n = io.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            assert!(seen == expected, "pieces of {piece}, reads of {read_size}");
            // The peer is told, once: a reset queued for the writer.
            let mut queued = Vec::new();
            link.ends().take_queued(&mut queued);
            assert_eq!(queued, frame(FLAG_RST, 1, b""), "pieces of {piece}, reads of {read_size}");
            // Followed while their readers live.
            assert_eq!(link.backlogs().followed(), 2);
            drop(tallies);
            assert_eq!(link.backlogs().followed(), 0);
        }
    }
}

#[tokio::test]
async fn a_connection_ending_inside_a_header_is_an_error_not_an_end() {
    let mut wire = frame(0, 1, b"ab");
    wire.extend([0, 0, 0]);
    let link = Link::new(Mode::Client);
    let mut io = WatchedIo::new(Box::new(Pieces { data: wire, at: 0, piece: 100 }), link.clone());
    let mut all = Vec::new();
    let err = io.read_to_end(&mut all).await.unwrap_err();
    assert_eq!((err.kind(), all.len()), (io::ErrorKind::UnexpectedEof, 14));
    assert!(link.is_cut());
}

/// The frame headers our side sends, read off `peer`'s end until it closes.
fn headers_sent_to(peer: tokio::io::ReadHalf<tokio::io::DuplexStream>) -> mpsc::UnboundedReceiver<Header> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut peer = peer;
        let mut cursor = FrameCursor::default();
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = peer.read(&mut buf).await {
            cursor.feed(&buf[..n], |h| {
                let _ = tx.send(h);
            });
        }
    });
    rx
}

/// Waits (up to 10 s) for our side to reset `stream`.
async fn reset_of(headers: &mut mpsc::UnboundedReceiver<Header>, stream: u32) {
    let wait = async {
        while let Some(h) = headers.recv().await {
            if h.kind == TYPE_DATA && h.stream == stream && h.flags & FLAG_RST != 0 {
                return;
            }
        }
        panic!("the connection ended with no reset of stream {stream}");
    };
    tokio::time::timeout(Duration::from_secs(10), wait).await.expect("a reset of the stream");
}

#[tokio::test]
async fn a_peer_sending_one_byte_frames_to_a_stream_nobody_reads_gets_it_reset_and_the_connection_lives() {
    let (ours, peer) = tokio::io::duplex(1 << 20);
    let (_opener, mut incoming, driver) = start(ours, &MuxConfig::default(), Mode::Server);
    tokio::spawn(driver);
    let (peer_read, mut peer_write) = tokio::io::split(peer);
    let mut headers = headers_sent_to(peer_read);

    let allowed = FRAMES_ALLOWED;
    let mut flood = frame(FLAG_SYN, 1, b"x");
    // Past the allowance, and on: four times the frames.
    flood.extend(one_byte_frames(1, 4 * allowed));
    peer_write.write_all(&flood).await.unwrap();
    let mut unread = incoming.next().await.unwrap();
    reset_of(&mut headers, 1).await;

    // Another stream of the connection opens and carries its bytes.
    peer_write.write_all(&frame(FLAG_SYN | FLAG_FIN, 3, b"hello")).await.unwrap();
    let mut other = incoming.next().await.unwrap();
    let mut hello = Vec::new();
    other.read_to_end(&mut hello).await.unwrap();
    assert_eq!(hello, b"hello");

    // The stream's reader takes what came before the cut, then a reset: never a clean end.
    let mut taken = 0;
    let mut buf = vec![0; 64 * 1024];
    let err = loop {
        match unread.read(&mut buf).await {
            Ok(0) => panic!("a clean end after {taken} bytes"),
            Ok(n) => taken += n,
            Err(err) => break err,
        }
    };
    assert_eq!((taken, err.kind()), (allowed, io::ErrorKind::ConnectionReset));
}

#[tokio::test]
async fn one_byte_frames_to_a_reader_that_keeps_up_all_arrive() {
    let (ours, peer) = tokio::io::duplex(1 << 20);
    let (_opener, mut incoming, driver) = start(ours, &MuxConfig::default(), Mode::Server);
    tokio::spawn(driver);
    let (peer_read, mut peer_write) = tokio::io::split(peer);
    let _headers = headers_sent_to(peer_read);

    // Ten times the allowance, within the stream's 256 KiB window.
    let count = 10 * OVERHEAD_ALLOWED / FRAME_COST;
    let mut frames = frame(FLAG_SYN, 1, b"x");
    frames.extend(one_byte_frames(1, count));
    frames.extend(frame(FLAG_FIN, 1, b""));
    let writer = tokio::spawn(async move {
        for piece in frames.chunks(4096) {
            peer_write.write_all(piece).await.unwrap();
        }
        peer_write
    });
    let mut stream = incoming.next().await.unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all).await.unwrap();
    assert_eq!(all.len(), count + 1);
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn a_frame_yamux_refuses_ends_the_connection() {
    // A frame past the stream's window. (The SYNs yamux refuses are refused before it reads
    // them: see below.)
    let (ours, peer) = tokio::io::duplex(1 << 20);
    let (_opener, mut incoming, driver) = start(ours, &MuxConfig::default(), Mode::Server);
    let driver = tokio::spawn(driver);
    let (peer_read, mut peer_write) = tokio::io::split(peer);
    let _headers = headers_sent_to(peer_read);
    peer_write.write_all(&frame(FLAG_SYN, 1, b"a")).await.unwrap();
    let _stream = incoming.next().await.unwrap();
    peer_write.write_all(&frame(0, 1, &vec![0; 256 * 1024 + 1])).await.unwrap();
    // More frames after it are not read: the connection is over.
    let _ = peer_write.write_all(&one_byte_frames(1, 100)).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    let err = ended.expect("the connection ends").unwrap().unwrap_err();
    assert!(format!("{err:?}").contains("broke the multiplexing protocol"), "{err:?}");
}

/// What yamux reads of `wire`, handed over in one read, with `stream` followed by a reader
/// that is gone by then.
async fn as_yamux_reads(wire: &[u8], stream: u32) -> Vec<u8> {
    let link = Link::new(Mode::Client);
    drop(ReadTally::new(link.clone(), stream));
    let inner = Pieces { data: wire.to_vec(), at: 0, piece: wire.len() };
    let mut io = WatchedIo::new(Box::new(inner), link.clone());
    let mut seen = Vec::new();
    io.read_to_end(&mut seen).await.unwrap();
    seen
}

#[tokio::test]
async fn data_for_a_stream_whose_reader_is_gone_reaches_yamux_as_frames_for_no_stream() {
    let window_update = [0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9];
    let mut wire = frame(0, 1, b"ab");
    wire.extend(frame(FLAG_FIN, 1, b"cd"));
    wire.extend(window_update);
    wire.extend(frame(FLAG_FIN, 1, b""));
    wire.extend(frame(FLAG_RST, 1, b""));
    let mut expected = frame(0, 0, b"ab");
    expected.extend(frame(0, 0, b"cd"));
    // Frames with no body are yamux's, for a stream it may still hold.
    expected.extend_from_slice(&wire[expected.len()..]);
    assert!(as_yamux_reads(&wire, 1).await == expected);
}

/// Leaves the driver blocked on writes to a peer that reads nothing (past a 4 KiB pipe): four
/// frames of 64 KiB on `stream`, the peer's whole window. The driver, woken by them, runs
/// before this task again and blocks on the first with the second ready to go: yamux takes no
/// stream's drop meanwhile.
async fn block_our_writes(stream: &mut MuxStream) {
    stream.write_all(&[7; 256 * 1024]).await.unwrap();
    tokio::task::yield_now().await;
}

/// yamux still holds a dropped stream while our writes are blocked. The clock is paused: a
/// timeout ends only once every task waits on something else.
#[tokio::test(start_paused = true)]
async fn data_for_a_dropped_stream_yamux_still_holds_never_reaches_it() {
    // Followed anyway, as a control: yamux does hold the stream, and queues what comes for it.
    for followed_anyway in [false, true] {
        let (ours, peer) = tokio::io::duplex(4096);
        let (opener, mut incoming, driver) = start(ours, &MuxConfig::default(), Mode::Server);
        let driver = tokio::spawn(driver);
        let (_peer_read, mut peer_write) = tokio::io::split(peer);
        peer_write.write_all(&frame(FLAG_SYN, 1, b"a")).await.unwrap();
        let mut writing = incoming.next().await.unwrap();
        peer_write.write_all(&frame(FLAG_SYN, 3, b"b")).await.unwrap();
        let dropped = incoming.next().await.unwrap();
        block_our_writes(&mut writing).await;
        drop(dropped);
        let _tally = followed_anyway.then(|| ReadTally::new(opener.link.clone(), 3));
        // More than the dropped stream's window: had yamux queued it, it would end the
        // connection, and read nothing more.
        let mut frames: Vec<u8> = (0..20).flat_map(|_| frame(0, 3, &[1; 16 * 1024])).collect();
        frames.extend(frame(FLAG_SYN | FLAG_FIN, 5, b"done"));
        let send = tokio::spawn(async move {
            let _ = peer_write.write_all(&frames).await;
        });
        let next = tokio::time::timeout(Duration::from_secs(10), incoming.next()).await;
        if followed_anyway {
            assert!(next.is_err(), "yamux reads nothing after a frame past the stream's window");
            continue;
        }
        let mut done = Vec::new();
        next.expect("yamux reads on").unwrap().read_to_end(&mut done).await.unwrap();
        assert_eq!(done, b"done");
        assert!(!driver.is_finished());
        send.await.unwrap();
    }
}

#[tokio::test]
async fn a_syn_for_an_open_stream_or_an_id_of_ours_ends_the_connection_while_writes_block() {
    // yamux refuses both too, but ends the connection only once its go-away is out. The peer
    // is yamux's server, so ours are the odd ids.
    for next_of_ours in [0, 2] {
        let (ours, peer) = tokio::io::duplex(4096);
        let (opener, _incoming, driver) = start(ours, &MuxConfig::default(), Mode::Client);
        let driver = tokio::spawn(driver);
        let (_peer_read, mut peer_write) = tokio::io::split(peer);
        let mut ours = opener.open().await.unwrap();
        block_our_writes(&mut ours).await;
        let refused = ours.id() + next_of_ours;
        peer_write.write_all(&frame(FLAG_SYN, refused, b"x")).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
        ended.expect("the connection ends").unwrap().unwrap_err();
    }
}

#[tokio::test]
async fn a_peer_opening_stream_0_ends_the_connection() {
    // Stream 0 names the connection; yamux on the client side would take a SYN for it (the
    // server's ids are even), and the frames swallowed for streams nobody reads are for it.
    let window_update_syn = [0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
    for opens in [frame(FLAG_SYN, 0, b"x"), window_update_syn.to_vec()] {
        let (ours, peer) = tokio::io::duplex(1 << 20);
        let (_opener, mut incoming, driver) = start(ours, &MuxConfig::default(), Mode::Client);
        let driver = tokio::spawn(driver);
        let (peer_read, mut peer_write) = tokio::io::split(peer);
        let _headers = headers_sent_to(peer_read);
        peer_write.write_all(&opens).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
        ended.expect("the connection ends").unwrap().unwrap_err();
        assert!(incoming.next().await.is_none(), "no stream 0 taken");
    }
}
