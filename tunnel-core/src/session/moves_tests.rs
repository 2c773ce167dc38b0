//! A session of two connections whose first one is lost: from protocol 9 its control stream
//! moves to the other, and the session goes on; before, or when the client does not open it
//! again in time, the session ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;
use tokio_util::task::AbortOnDropHandle;

use super::*;
use crate::proto::{GoodbyeCode, StreamHeader};

const TOKEN: &str = "session-moves-test-token";

/// The first connection's pipe, through a relay task: `cut` ends it for both sides; `cut_client`
/// closes the client's end only (the server's stays open and hears nothing more).
struct Relay {
    task: AbortOnDropHandle<()>,
    client_only: Option<oneshot::Sender<()>>,
}

impl Relay {
    fn pipe() -> (DuplexStream, DuplexStream, Self) {
        let (client_end, mut near) = tokio::io::duplex(64 * 1024);
        let (mut far, server_end) = tokio::io::duplex(64 * 1024);
        let (client_only, half) = oneshot::channel();
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut near, &mut far) => {}
                _ = half => {
                    drop(near);
                    std::future::pending::<()>().await;
                }
            }
        });
        (client_end, server_end, Self { task: AbortOnDropHandle::new(task), client_only: Some(client_only) })
    }

    fn cut(self) {
        self.task.abort();
    }

    fn cut_client(&mut self) {
        let _ = self.client_only.take().unwrap().send(());
    }
}

/// One side of the session, as its owner holds it; the driver runs in a task.
struct Side {
    control: ControlSender,
    messages: ControlMessages,
    opener: StreamOpener,
    /// Until taken to be served.
    incoming: Option<IncomingStreams>,
    driver: tokio::task::JoinHandle<SessionEnd>,
}

impl Side {
    fn run(session: Session) -> Self {
        let Session { control, messages, opener, incoming, driver } = session;
        Self { control, messages, opener, incoming: Some(incoming), driver: tokio::spawn(driver) }
    }
}

/// Client and server of one session, its first connection through a [`Relay`] and a second
/// joined to it; the joined connection's drivers are in the last field. The client offers
/// protocol `client_protocol` at most.
async fn two_connections(
    config: &SessionConfig,
    client_protocol: u16,
) -> (Side, Side, Relay, Vec<AbortOnDropHandle<SessionEnd>>) {
    let token = Token::new(TOKEN).unwrap();
    let credentials = Credentials::default().with_shared(token.clone());
    // The server's one session, id 42, as a joining handshake looks it up.
    let joinable: Arc<Mutex<Option<(LaneKey, StreamOpener)>>> = Arc::default();
    // The accepting side runs its driver at once: the dialing side waits for its heartbeat.
    let accept = |io: DuplexStream| {
        let (credentials, config, joinable) = (credentials.clone(), config.clone(), joinable.clone());
        tokio::spawn(async move {
            let sessions = move |name: &str, id: u64| {
                (name == "c1" && id == 42).then(|| joinable.lock().unwrap().clone()).flatten()
            };
            let binding = ChannelBinding::Plaintext;
            let timeout = Duration::from_secs(5);
            let accepted =
                Session::accept_joining(io, &binding, &credentials, &config, timeout, Some(&sessions));
            let (session, client, first) = accepted.await.unwrap();
            (Side::run(session), client, first)
        })
    };

    let (a, b, relay) = Relay::pipe();
    let accepted = accept(b);
    let client_config = SessionConfig { max_protocol: client_protocol, ..config.clone() };
    let connected = Session::connect(a, &ChannelBinding::Plaintext, "c1", token.clone(), &client_config);
    let (client, established) = connected.await.unwrap();
    let client = Side::run(client);
    let (server, who, _) = accepted.await.unwrap();
    assert_eq!(who.version, client_protocol);
    *joinable.lock().unwrap() = Some((who.lane_key.clone(), server.opener.clone()));

    let (a, b) = tokio::io::duplex(64 * 1024);
    let accepted = accept(b);
    let ticket = JoinTicket { session: 42, key: established.lane_key, first: client.opener.clone() };
    let lane = Session::join(a, &ChannelBinding::Plaintext, "c1", token, &ticket, config).await.unwrap();
    let (server_lane, _, first) = accepted.await.unwrap();
    client.opener.join(lane.opener, lane.incoming);
    first.unwrap().join(server_lane.opener, server_lane.incoming.unwrap());
    let lane_drivers =
        vec![AbortOnDropHandle::new(tokio::spawn(lane.driver)), AbortOnDropHandle::new(server_lane.driver)];
    assert_eq!(client.opener.connections(), 2);
    (client, server, relay, lane_drivers)
}

/// What the server does with its session's inbound streams: a control stream opened again is
/// handed to the session (unless `hand_over` is false: then dropped); any other is echoed.
fn serve_streams(server: &mut Side, hand_over: bool) {
    let (mut incoming, control) = (server.incoming.take().unwrap(), server.control.clone());
    tokio::spawn(async move {
        while let Some(mut stream) = incoming.next().await {
            let control = control.clone();
            tokio::spawn(async move {
                match framed::read_header(&mut stream).await {
                    Ok(StreamHeader::Control) if hand_over => control.take_over(stream).unwrap(),
                    Ok(StreamHeader::Control) => {}
                    _ => {
                        let mut buf = [0u8; 64];
                        while let Ok(n @ 1..) = stream.read(&mut buf).await {
                            let _ = stream.write_all(&buf[..n]).await;
                        }
                    }
                }
            });
        }
    });
}

/// A control message each way gets through: the control stream works.
async fn messages_pass(client: &mut Side, server: &mut Side) {
    let patience = Duration::from_secs(10);
    client.control.send(ControlMessage::NoNewVisitors).await.unwrap();
    let got = tokio::time::timeout(patience, server.messages.recv()).await.unwrap();
    assert_eq!(got, Some(ControlMessage::NoNewVisitors));
    let lanes = ControlMessage::Lanes { session: 7, connections: 2 };
    server.control.send(lanes.clone()).await.unwrap();
    let got = tokio::time::timeout(patience, client.messages.recv()).await.unwrap();
    assert_eq!(got, Some(lanes));
}

/// A stream opened by the client now goes over the joined connection and is echoed.
async fn a_stream_passes(client: &Side) {
    let mut stream = client.opener.open().await.unwrap();
    stream.write_all(&StreamHeader::Http { visitor: "127.0.0.1:1".parse().unwrap() }.encode()).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"ping");
}

#[tokio::test]
async fn the_control_stream_moves_to_a_joined_connection_when_the_first_is_lost() {
    let (mut client, mut server, relay, _lanes) = two_connections(&SessionConfig::default(), 9).await;
    serve_streams(&mut server, true);
    let (mut client_moves, mut server_moves) = (client.messages.moves(), server.messages.moves());
    messages_pass(&mut client, &mut server).await;

    relay.cut();
    let patience = Duration::from_secs(10);
    tokio::time::timeout(patience, client_moves.next()).await.expect("the client's control stream moved");
    tokio::time::timeout(patience, server_moves.next()).await.expect("the server took the moved stream");
    assert!(!client.driver.is_finished() && !server.driver.is_finished(), "the session ended");
    assert_eq!((client.opener.connections(), server.opener.connections()), (1, 1));
    messages_pass(&mut client, &mut server).await;
    a_stream_passes(&client).await;

    // Closing over the moved control stream: the goodbye arrives.
    client.control.close(GoodbyeCode::Shutdown, "done").await;
    assert_eq!(tokio::time::timeout(patience, client.driver).await.unwrap().unwrap(), SessionEnd::Closed);
    let end = tokio::time::timeout(patience, server.driver).await.unwrap().unwrap();
    assert!(matches!(&end, SessionEnd::Goodbye { code: GoodbyeCode::Shutdown, .. }), "{end:?}");
}

/// The client's end of its first connection closes while the server's stays up and silent: the
/// client moves the control stream, and the server, still hearing nothing wrong, follows it and
/// closes its end of the first connection.
#[tokio::test]
async fn the_server_follows_a_move_the_client_made_while_its_first_connection_looked_up() {
    let (mut client, mut server, mut relay, _lanes) = two_connections(&SessionConfig::default(), 9).await;
    serve_streams(&mut server, true);
    let mut server_moves = server.messages.moves();

    relay.cut_client();
    tokio::time::timeout(Duration::from_secs(10), server_moves.next()).await.expect("the server followed");
    assert_eq!(server.opener.connections(), 1, "the server kept its end of the first connection");
    messages_pass(&mut client, &mut server).await;
    a_stream_passes(&client).await;
    assert!(!client.driver.is_finished() && !server.driver.is_finished(), "the session ended");
}

/// The client never opens the control stream again (here: the server drops it): the server
/// ends the session at its heartbeat timeout, not before.
#[tokio::test(start_paused = true)]
async fn the_server_ends_a_session_whose_control_stream_does_not_come_back_in_time() {
    let config = SessionConfig {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(10),
        ..SessionConfig::default()
    };
    let (_client, mut server, relay, _lanes) = two_connections(&config, 9).await;
    serve_streams(&mut server, false);

    relay.cut();
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(!server.driver.is_finished(), "ended before the heartbeat timeout");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(server.driver.is_finished(), "still waiting past the heartbeat timeout");
    assert_eq!(server.driver.await.unwrap(), SessionEnd::PeerGone);
}

/// Before protocol 9 a session ends with its first connection, as it always did: an older peer
/// on either side never sees a control stream on another connection.
#[tokio::test]
async fn before_protocol_9_the_session_ends_with_its_first_connection() {
    let (client, server, relay, _lanes) = two_connections(&SessionConfig::default(), 8).await;
    relay.cut();
    let patience = Duration::from_secs(10);
    assert_eq!(tokio::time::timeout(patience, client.driver).await.unwrap().unwrap(), SessionEnd::PeerGone);
    assert_eq!(tokio::time::timeout(patience, server.driver).await.unwrap().unwrap(), SessionEnd::PeerGone);
}

/// The first connection is lost and the client does not open the control stream again (here:
/// the server drops it); then the joined connection is lost too: the server ends the session
/// as soon as no connection is left, without waiting out the heartbeat timeout.
#[tokio::test(start_paused = true)]
async fn the_server_ends_the_session_once_every_connection_is_gone() {
    let config = SessionConfig { heartbeat_timeout: Duration::from_secs(60), ..SessionConfig::default() };
    let (_client, mut server, relay, mut lanes) = two_connections(&config, 9).await;
    serve_streams(&mut server, false);
    relay.cut();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!server.driver.is_finished(), "ended with a joined connection still up");
    // The client's end of the joined connection goes.
    drop(lanes.remove(0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(server.driver.is_finished(), "still waiting for a control stream with no connection left");
    assert_eq!(server.driver.await.unwrap(), SessionEnd::PeerGone);
}

/// A control stream handed over while another waits to be taken is refused: a client opening
/// many at once makes the server move at most once for them.
#[tokio::test]
async fn a_second_control_stream_while_one_waits_is_refused() {
    let (_client, server, _relay, _lanes) = two_connections(&SessionConfig::default(), 9).await;
    let (first, second) = (server.opener.open().await.unwrap(), server.opener.open().await.unwrap());
    // No await in between: the driver has not taken the first yet.
    assert!(server.control.take_over(first).is_ok());
    assert!(server.control.take_over(second).is_err());
}
