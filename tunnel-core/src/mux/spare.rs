//! A stream opened ahead of need, so that a new visitor costs no round trip to the driver.
//!
//! Only the task driving a yamux connection can open a stream on it. Asked for one, it answers
//! through a channel: the opener's task wakes the driver's (often on the other thread), and
//! the driver's wakes it back, before the first byte can go out. With a spare at hand, an
//! open takes it at once; the driver makes the next one on its next turn, which the new
//! stream's first write brings anyway.
//!
//! yamux sends nothing for a stream before its first write, so an unused spare costs the peer
//! nothing (dropped, it is reset: a frame the peer ignores for a stream it never saw). Each
//! spare holds one of the 256 places yamux gives streams that the peer has not acknowledged.
//! A connection gets spares only once it has opened two streams, so the many sessions that
//! only ever open their control stream, or nothing, hold none.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use super::backlog::Tracked;

/// Opens before a connection wants spares: the control stream is not a sign of more to come.
const OPENS_BEFORE_SPARES: u8 = 2;

/// The spare stream of one connection, shared by its openers and its driver.
#[derive(Default)]
pub(super) struct Spare {
    stream: Mutex<Option<Tracked>>,
    /// Opens so far, counted up to [`OPENS_BEFORE_SPARES`].
    opens: AtomicU8,
}

impl Spare {
    /// The spare stream, if there is one; counts the open either way.
    pub(super) fn take(&self) -> Option<Tracked> {
        let counted = self.opens.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |opens| {
            (opens < OPENS_BEFORE_SPARES).then_some(opens + 1)
        });
        if counted.is_ok() {
            return None;
        }
        self.lock().take()
    }

    /// Whether the driver should open a spare now.
    pub(super) fn wanted(&self) -> bool {
        self.opens.load(Ordering::Relaxed) >= OPENS_BEFORE_SPARES && self.lock().is_none()
    }

    /// Keeps `stream` for the next open.
    pub(super) fn put(&self, stream: Tracked) {
        *self.lock() = Some(stream);
    }

    /// Drops the spare (when the connection closes) and makes no more.
    pub(super) fn clear(&self) {
        self.opens.store(0, Ordering::Relaxed);
        drop(self.lock().take());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Tracked>> {
        self.stream.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Spare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spare").field("ready", &self.lock().is_some()).finish()
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::mux::{start, IncomingStreams, Mode, MuxConfig, MuxDriver, MuxError, StreamOpener};

    /// A client side whose driver the test turns by hand, and a server side driven as usual.
    fn pair() -> (StreamOpener, MuxDriver, IncomingStreams) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (opener, _incoming, driver) = start(a, &MuxConfig::default(), Mode::Client);
        let (_server, incoming, server_driver) = start(b, &MuxConfig::default(), Mode::Server);
        tokio::spawn(server_driver);
        (opener, driver, incoming)
    }

    /// Runs `driver` beside `work` until `work` is done.
    async fn driving<T>(driver: &mut MuxDriver, work: impl std::future::Future<Output = T>) -> T {
        tokio::select! {
            out = work => out,
            end = driver => panic!("the driver ended: {end:?}"),
        }
    }

    /// Echoes `stream`'s first 4 bytes back through the server side, proving it carries data.
    async fn echoed(
        driver: &mut MuxDriver,
        incoming: &mut IncomingStreams,
        mut stream: crate::mux::MuxStream,
    ) {
        driving(driver, async {
            stream.write_all(b"ping").await.unwrap();
            let mut theirs = incoming.next().await.unwrap();
            let mut got = [0; 4];
            theirs.read_exact(&mut got).await.unwrap();
            theirs.write_all(&got).await.unwrap();
            stream.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
        })
        .await;
    }

    /// Two streams opened through the driver and proven, as a busy connection has.
    async fn opened_twice(opener: &StreamOpener, driver: &mut MuxDriver, incoming: &mut IncomingStreams) {
        for _ in 0..2 {
            let stream = driving(driver, opener.open()).await.unwrap();
            echoed(driver, incoming, stream).await;
        }
    }

    #[tokio::test]
    async fn after_two_opens_the_next_takes_a_spare_without_waiting_for_the_driver() {
        let (opener, mut driver, mut incoming) = pair();
        opened_twice(&opener, &mut driver, &mut incoming).await;
        // One turn of the driver makes the spare; the open then needs no turn at all.
        assert!(futures::poll!(&mut driver).is_pending());
        let spare = opener.open().now_or_never().expect("opened from the spare, driver idle").unwrap();
        echoed(&mut driver, &mut incoming, spare).await;
        // The next spare was made on the driver's turn that the write brought.
        let again = opener.open().now_or_never().expect("a spare again").unwrap();
        echoed(&mut driver, &mut incoming, again).await;
        assert_eq!(opener.open_streams(), 0, "spares are not counted as open streams");
    }

    #[tokio::test]
    async fn a_spare_dropped_unused_leaves_the_connection_working_and_a_closed_one_hands_out_none() {
        let (opener, mut driver, mut incoming) = pair();
        opened_twice(&opener, &mut driver, &mut incoming).await;
        assert!(futures::poll!(&mut driver).is_pending());
        // Dropped, the unused spare is reset: a frame for a stream the peer never saw, which
        // it must ignore rather than fail the connection. (`clear`, meant for a closing
        // connection, also forgets the opens: the next two go through the driver.)
        opener.spare.clear();
        opened_twice(&opener, &mut driver, &mut incoming).await;
        assert!(futures::poll!(&mut driver).is_pending());
        // The driver gone, its spare goes with it: an open fails instead of taking a stream of
        // a dead connection.
        drop(driver);
        assert!(matches!(opener.open().await, Err(MuxError::Closed)));
    }
}
