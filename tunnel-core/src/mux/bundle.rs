//! One session over several connections: the connections that joined the session's first
//! one. A stream opened through the first connection's opener goes over whichever of the
//! session's connections is least busy; streams the peer opens on any of them come out of the
//! first one's [`IncomingStreams`]. All of them share the first one's stream limits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use futures::channel::mpsc;

use super::openers::fewest;
use super::{IncomingStreams, StreamOpener};

/// The connections that joined a session's first connection (none, for most).
#[derive(Debug)]
pub(super) struct Bundle {
    lanes: Mutex<Vec<StreamOpener>>,
    /// Where a joining connection's inbound queue goes: the first connection's queue reads it.
    /// A queue that allocates per entry: most sessions never see one, and a tokio channel
    /// takes most of a KiB up front.
    joined: mpsc::UnboundedSender<IncomingStreams>,
    /// Bytes received and sent by connections that have left the bundle.
    gone: (AtomicU64, AtomicU64),
}

impl Bundle {
    pub(super) fn new(joined: mpsc::UnboundedSender<IncomingStreams>) -> Self {
        Self { lanes: Mutex::default(), joined, gone: (AtomicU64::new(0), AtomicU64::new(0)) }
    }

    /// Adds `lane` unless the session would then have more than `most` connections (its
    /// first included while `first_up`): counted and added under one lock, so joins at once
    /// cannot pass it. Whether it was added.
    pub(super) fn add(
        &self,
        lane: StreamOpener,
        incoming: IncomingStreams,
        most: usize,
        first_up: bool,
    ) -> bool {
        let mut lanes = self.live();
        if usize::from(first_up) + lanes.len() >= most {
            return false;
        }
        lanes.push(lane);
        // The first connection's queue is gone only with its session, which ends the lane too.
        let _ = self.joined.unbounded_send(incoming);
        true
    }

    /// The connections still up; those whose driver has ended leave, their bytes kept.
    pub(super) fn live(&self) -> MutexGuard<'_, Vec<StreamOpener>> {
        let mut lanes = self.lanes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        lanes.retain(|lane| {
            let up = !lane.own_connection_closed();
            if !up {
                let (received, sent) = lane.link.bytes();
                self.gone.0.fetch_add(received, Ordering::Relaxed);
                self.gone.1.fetch_add(sent, Ordering::Relaxed);
            }
            up
        });
        lanes
    }

    /// The connection for the next stream, when it is not `first`: the least busy (see
    /// [`least_busy_lane`]). `first` is left out once its own connection has ended (the session
    /// goes on over the others).
    pub(super) fn pick(&self, first: &StreamOpener) -> Option<StreamOpener> {
        let lanes = self.live();
        if lanes.is_empty() {
            return None;
        }
        let first = (!first.own_connection_closed()).then_some(first);
        let all: Vec<&StreamOpener> = first.into_iter().chain(lanes.iter()).collect();
        let chosen = least_busy_lane(&all)?;
        (!first.is_some_and(|first| std::ptr::eq(chosen, first))).then(|| chosen.clone())
    }

    /// The least busy joined connection, `first` aside.
    pub(super) fn pick_joined(&self) -> Option<StreamOpener> {
        let lanes = self.live();
        least_busy_lane(&lanes.iter().collect::<Vec<_>>()).cloned()
    }

    /// Bytes received and sent by connections that have left.
    pub(super) fn gone_bytes(&self) -> (u64, u64) {
        (self.gone.0.load(Ordering::Relaxed), self.gone.1.load(Ordering::Relaxed))
    }
}

/// The one with the fewest busy streams (open, not set aside idle) on its own connection among
/// those heard from, failing that among all; of those tied, one driven on this thread (see
/// [`crate::shards`]: its stream is served without waking another), else any at random.
fn least_busy_lane<'a>(all: &[&'a StreamOpener]) -> Option<&'a StreamOpener> {
    let away = |o: &&StreamOpener| usize::from(!o.link.home().is_some_and(crate::shards::Shard::is_here));
    let open = |o: &&StreamOpener| o.link.busy_streams().saturating_mul(2).saturating_add(away(o));
    fewest(all, |o| !o.link.is_silent(), open).or_else(|| fewest(all, |_| true, open)).copied()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::mux::{
        start, start_beside, IncomingStreams, Mode, MuxConfig, MuxError, MuxStream, StreamOpener,
    };
    use tokio_util::task::AbortOnDropHandle;

    /// Both ends of one connection.
    struct Connection {
        dialer: StreamOpener,
        acceptor: StreamOpener,
        /// The dialer's driver; dropping it cuts the connection.
        dialer_driver: AbortOnDropHandle<Result<(), MuxError>>,
        _acceptor_driver: AbortOnDropHandle<Result<(), MuxError>>,
    }

    /// A session's first connection, and its inbound queues (dialer's, acceptor's).
    fn first(config: &MuxConfig) -> (Connection, IncomingStreams, IncomingStreams) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (dialer, dialer_in, da) = start(a, config, Mode::Client);
        let (acceptor, acceptor_in, db) = start(b, config, Mode::Server);
        let connection = Connection {
            dialer,
            acceptor,
            dialer_driver: AbortOnDropHandle::new(tokio::spawn(da)),
            _acceptor_driver: AbortOnDropHandle::new(tokio::spawn(db)),
        };
        (connection, dialer_in, acceptor_in)
    }

    /// Another connection of `session`, joined on both ends.
    fn join(session: &Connection, config: &MuxConfig) -> Connection {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (dialer, dialer_in, da) = start_beside(a, config, Mode::Client, &session.dialer);
        let (acceptor, acceptor_in, db) = start_beside(b, config, Mode::Server, &session.acceptor);
        session.dialer.join(dialer.clone(), dialer_in);
        session.acceptor.join(acceptor.clone(), acceptor_in);
        Connection {
            dialer,
            acceptor,
            dialer_driver: AbortOnDropHandle::new(tokio::spawn(da)),
            _acceptor_driver: AbortOnDropHandle::new(tokio::spawn(db)),
        }
    }

    async fn echo_one(stream: &mut MuxStream, byte: u8) -> std::io::Result<u8> {
        stream.write_all(&[byte]).await?;
        let mut back = [0u8; 1];
        stream.read_exact(&mut back).await?;
        Ok(back[0])
    }

    #[tokio::test]
    async fn streams_spread_over_joined_connections_and_a_lost_one_cuts_only_its_own() {
        let config = MuxConfig::default();
        let (session, _, mut accepted) = first(&config);
        let lane = join(&session, &config);
        assert_eq!(session.dialer.connections(), 2);
        // The acceptor echoes every stream, whichever connection it came on.
        tokio::spawn(async move {
            while let Some(mut stream) = accepted.next().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let mut streams = Vec::new();
        for i in 0..40u8 {
            let mut stream = session.dialer.open().await.unwrap();
            assert_eq!(echo_one(&mut stream, i).await.unwrap(), i);
            streams.push(stream);
        }
        // Each new stream went to the less busy connection: an even split.
        let (on_first, on_lane) = (session.dialer.link.open_streams(), lane.dialer.link.open_streams());
        assert_eq!((on_first, on_lane), (20, 20));
        assert_eq!(session.dialer.open_streams(), 40);
        assert_eq!(session.acceptor.open_streams(), 40, "the acceptor counts the joined one's streams too");
        let (received, sent) = session.dialer.bytes();
        assert!(received >= 40 && sent >= 40, "bytes of both connections: {received} / {sent}");

        // The joined connection dies: its streams fail as cut, never as a clean end; the others
        // go on, and new streams take the connection left.
        drop(lane.dialer_driver);
        let mut cut = 0;
        for (i, stream) in streams.iter_mut().enumerate() {
            match echo_one(stream, i as u8).await {
                Ok(byte) => assert_eq!(byte, i as u8),
                Err(err) => {
                    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
                    cut += 1;
                }
            }
        }
        assert_eq!(cut, 20);
        assert_eq!(session.dialer.connections(), 1);
        let mut fresh = session.dialer.open().await.unwrap();
        assert_eq!(echo_one(&mut fresh, 7).await.unwrap(), 7);

        // A drain waits for the streams of every connection.
        let drained = tokio::spawn({
            let opener = session.dialer.clone();
            async move { opener.until_open_at_most(0).await }
        });
        drop(streams);
        tokio::task::yield_now().await;
        assert!(!drained.is_finished(), "drained with a stream still open");
        drop(fresh);
        drained.await.unwrap();
        drop(session.dialer_driver);
    }

    #[tokio::test]
    async fn a_session_goes_on_over_its_joined_connections_once_its_first_is_lost() {
        let config = MuxConfig::default();
        let (session, mut dialer_in, mut accepted) = first(&config);
        // Opened before others join: on the first connection.
        let mut held = session.dialer.open().await.unwrap();
        held.write_all(b"x").await.unwrap();
        let _on_the_acceptor = accepted.next().await.unwrap();
        let lanes = [join(&session, &config), join(&session, &config)];
        assert_eq!(session.dialer.connections(), 3);

        // The first connection dies: the session is not closed, and counts the two left.
        drop(session.dialer_driver);
        let err = held.read(&mut [0u8; 1]).await.expect_err("a stream of the lost connection");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
        assert!(!session.dialer.is_closed(), "closed while two connections are up");
        assert_eq!(session.dialer.connections(), 2);

        // New streams go over the joined connections, both ways, and still arrive in the first
        // one's queues.
        for i in 0..8u8 {
            let mut stream = session.dialer.open().await.expect("a stream over a joined connection");
            stream.write_all(&[i]).await.unwrap();
            let mut arrived = accepted.next().await.unwrap();
            let mut byte = [0u8; 1];
            arrived.read_exact(&mut byte).await.unwrap();
            assert_eq!(byte[0], i);
        }
        let mut back = lanes[1].acceptor.open().await.unwrap();
        back.write_all(b"y").await.unwrap();
        dialer_in.next().await.unwrap().read_exact(&mut [0u8; 1]).await.unwrap();
        let mut moved = session.dialer.open_joined().await.unwrap();
        moved.write_all(b"z").await.unwrap();
        accepted.next().await.unwrap().read_exact(&mut [0u8; 1]).await.unwrap();

        // Once the joined connections are gone too, the session is.
        let [one, two] = lanes;
        drop((one.dialer_driver, two.dialer_driver));
        assert!(dialer_in.next().await.is_none());
        assert!(session.dialer.is_closed());
        assert_eq!(session.dialer.connections(), 0);
        assert!(matches!(session.dialer.open().await, Err(MuxError::Closed)));
        assert!(matches!(session.dialer.open_joined().await, Err(MuxError::Closed)));
    }

    #[tokio::test]
    async fn a_session_takes_at_most_its_number_of_connections() {
        let config = MuxConfig::default();
        let (session, _, _accepted) = first(&config);
        let mut kept = Vec::new();
        for _ in 0..3 {
            let (a, b) = tokio::io::duplex(1 << 10);
            let (lane, incoming, driver) = start_beside(a, &config, Mode::Client, &session.dialer);
            let joined = session.dialer.join_at_most(lane, incoming, 3);
            kept.push((b, AbortOnDropHandle::new(tokio::spawn(driver)), joined));
        }
        let joined: Vec<bool> = kept.iter().map(|(_, _, joined)| *joined).collect();
        assert_eq!(joined, [true, true, false], "the third joining connection made four");
        assert_eq!(session.dialer.connections(), 3);
        // One ends: it leaves, and there is room again.
        drop(kept.remove(0));
        tokio::task::yield_now().await;
        let (a, _b) = tokio::io::duplex(1 << 10);
        let (lane, incoming, _driver) = start_beside(a, &config, Mode::Client, &session.dialer);
        assert!(session.dialer.join_at_most(lane, incoming, 3));
    }

    #[tokio::test]
    async fn a_drain_is_woken_when_a_joined_connection_dies_under_its_streams() {
        let config = MuxConfig::default();
        let (session, _, _accepted) = first(&config);
        let lane = join(&session, &config);
        // A stream on the joined connection, held by someone who never lets go.
        let held = lane.dialer.open().await.unwrap();
        let drained = tokio::spawn({
            let opener = session.dialer.clone();
            async move { opener.until_open_at_most(0).await }
        });
        tokio::task::yield_now().await;
        assert!(!drained.is_finished());
        // The connection dies: its stream no longer counts, and the drain is told.
        drop(lane.dialer_driver);
        tokio::time::timeout(std::time::Duration::from_secs(5), drained).await.unwrap().unwrap();
        drop(held);
    }

    #[tokio::test]
    async fn joined_connections_share_the_sessions_stream_limit() {
        let config = MuxConfig { max_streams: 4, ..MuxConfig::default() };
        let (session, _, _accepted) = first(&config);
        let _lane = join(&session, &config);
        let mut open = Vec::new();
        for _ in 0..4 {
            open.push(session.dialer.open().await.unwrap());
        }
        assert!(matches!(session.dialer.open().await, Err(MuxError::StreamLimit(4))));
        open.pop();
        assert!(session.dialer.open().await.is_ok());
    }

    #[tokio::test]
    async fn streams_the_peer_opens_on_a_joined_connection_come_out_of_the_first_ones_queue() {
        let config = MuxConfig::default();
        let (session, mut dialer_in, _) = first(&config);
        let lane = join(&session, &config);
        // The acceptor's side opens on the joined connection directly, as it may pick it.
        let mut stream = lane.acceptor.open().await.unwrap();
        stream.write_all(b"via the lane").await.unwrap();
        let mut arrived = dialer_in.next().await.unwrap();
        let mut buf = [0u8; 12];
        arrived.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"via the lane");
        // When the first connection ends, and every one that joined it, the queue ends.
        drop((session.dialer_driver, lane.dialer_driver));
        assert!(dialer_in.next().await.is_none());
    }
}
