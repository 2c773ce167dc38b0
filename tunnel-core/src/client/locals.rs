//! Local forwards: listeners near the client whose connections travel through the server to a
//! private service of another client, or to a host the server dials.
//!
//! The listeners live for the whole run of the client, across reconnects: while no session is
//! up, a visitor is refused at once (reset), never left hanging. A UDP local forward's
//! visitors are flows, each a stream of datagrams through the server (its datagrams are
//! dropped while no session is up).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ClientError;
use crate::forward::{copy_until_eof, LocalForwardSpec, Protocol, TargetAddr, VisitTarget};
use crate::log::Escaped;
use crate::mux::{MuxStream, StreamOpener};
use crate::proto::datagram::MAX_DATAGRAM;
use crate::proto::{ReplyStatus, StreamHeader};
use crate::transport;
use crate::udp::{carry_flow, FlowInbox, Flows, Offer};

/// Why a stream the server reset before its answer failed, as logged.
pub(super) const RESET_BEFORE_ANSWER: &str =
    "the server reset the stream before answering (it may hold as many of this session's streams as it allows)";

/// Time allowed for the server's answer to a local forward.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// Most UDP flows the client's UDP local forwards carry at once, shared evenly among them (at
/// least one each). Each flow is a stream, and a server takes 64 streams of a session at once
/// by default (`limits.max_visits_per_client`; past it, it resets them). Held to 32 in all, the
/// forwards make room themselves, each by ending a flow done with for now (`Flows::evicting`),
/// and the session keeps streams for its TCP visitors.
const MAX_FLOWS: usize = 32;

/// A full table ends an answered flow for a new one only once it has been idle this long: new
/// visitors get up to 320 flows a second (with one forward), and a flow whose exchange goes on
/// within it keeps its place.
pub(super) const MAKE_ROOM_AFTER: Duration = Duration::from_millis(100);

/// The flows each UDP local forward of `locals` may carry at once.
pub(super) fn flows_each(locals: &[BoundLocal]) -> usize {
    let udp = locals.iter().filter(|local| matches!(local.socket, LocalSocket::Udp(_))).count();
    (MAX_FLOWS / udp.max(1)).max(1)
}

/// A local forward's listener (TCP) or socket (UDP), bound.
#[derive(Debug)]
pub(super) struct BoundLocal {
    pub(super) spec: LocalForwardSpec,
    pub(super) socket: LocalSocket,
}

#[derive(Debug)]
pub(super) enum LocalSocket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl BoundLocal {
    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.socket {
            LocalSocket::Tcp(listener) => listener.local_addr(),
            LocalSocket::Udp(socket) => socket.local_addr(),
        }
    }
}

/// Binds every local forward (127.0.0.1 unless the spec names an address).
pub(super) async fn bind(
    specs: &[LocalForwardSpec],
) -> Result<Vec<BoundLocal>, (LocalForwardSpec, std::io::Error)> {
    let mut bound = Vec::with_capacity(specs.len());
    for spec in specs {
        let ip = spec.bind.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
        let socket = match spec.protocol {
            Protocol::Tcp => TcpListener::bind((ip, spec.port)).await.map(|listener| {
                // Each visitor starts set to reset on close (see `visit`), from the accept on.
                transport::reset_accepted_on_close(&listener);
                LocalSocket::Tcp(listener)
            }),
            Protocol::Udp => UdpSocket::bind((ip, spec.port)).await.map(LocalSocket::Udp),
        };
        let socket = socket.map_err(|e| (spec.clone(), e))?;
        bound.push(BoundLocal { spec: spec.clone(), socket });
    }
    Ok(bound)
}

/// Where each listener listens, as `active(spec, address)`; an address that cannot be read is
/// the spec's bind error.
pub(super) fn addresses<'a, S, T>(
    what: super::LocalListener,
    listening: impl Iterator<Item = (&'a S, io::Result<SocketAddr>)>,
    active: impl Fn(S, SocketAddr) -> T,
) -> Result<Vec<T>, ClientError>
where
    S: Clone + std::fmt::Display + 'a,
{
    listening
        .map(|(spec, bound_addr)| {
            let bound_addr =
                bound_addr.map_err(|source| ClientError::Bind { what, spec: spec.to_string(), source })?;
            Ok(active(spec.clone(), bound_addr))
        })
        .collect()
}

/// Accepts visitors until `stop`; each goes through a session up at that moment (the first
/// server's that is, of `sessions`, one per server), and goes on (through a drain) until it
/// ends or `cut`.
pub(super) async fn serve(
    local: BoundLocal,
    max_flows: usize,
    sessions: Vec<watch::Receiver<Option<StreamOpener>>>,
    stop: CancellationToken,
    cut: CancellationToken,
) {
    let BoundLocal { spec, socket } = local;
    let listener = match socket {
        LocalSocket::Tcp(listener) => listener,
        LocalSocket::Udp(socket) => {
            let VisitTarget::Address(target) = spec.target.clone() else {
                // Refused when parsed: a UDP forward's target is an address.
                return tracing::warn!(%spec, "a UDP forward's target must be HOST:PORT");
            };
            let socket = Arc::new(socket);
            return serve_datagrams(socket, &spec, target, max_flows, &sessions, stop, cut).await;
        }
    };
    let target = spec.target.clone();
    accept_loop(&listener, &spec, &sessions, stop, |tcp, visitor, opener| {
        visit(tcp, visitor, target.clone(), opener, cut.clone())
    })
    .await;
}

/// The session a local visitor goes through: the first server's that is up and heard from;
/// failing that, the first up (a silent one may yet answer). A server gone silent, hung or cut
/// off without a reset, is passed over within two heartbeat intervals, not at its timeout.
pub(super) fn first_up(sessions: &[watch::Receiver<Option<StreamOpener>>]) -> Option<StreamOpener> {
    let up = || sessions.iter().filter_map(|s| s.borrow().clone().filter(|o| !o.is_closed()));
    up().find(|o| !o.is_silent()).or_else(|| up().next())
}

/// Accepts connections on `listener` until `stop`, handing each to a task of its own with the
/// opener of the first session up now (`None` while none is; see [`first_up`]).
pub(super) async fn accept_loop<F, Fut>(
    listener: &TcpListener,
    what: &(dyn std::fmt::Display + Sync),
    sessions: &[watch::Receiver<Option<StreamOpener>>],
    stop: CancellationToken,
    visit: F,
) where
    F: Fn(TcpStream, SocketAddr, Option<StreamOpener>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, visitor)) => {
                let opener = first_up(sessions);
                tokio::spawn(visit(tcp, visitor, opener));
            }
            Err(err) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(listener = %what, "accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn visit(
    tcp: TcpStream,
    visitor: SocketAddr,
    target: VisitTarget,
    opener: Option<StreamOpener>,
    stop: CancellationToken,
) {
    let _ = transport::configure_tcp(&tcp);
    // Until the visit has ended in order, a close resets: if this process dies mid-answer, the
    // visitor sees a reset, not a FIN it would take for the end of the answer. The listener
    // set it already; this guards a listener made elsewhere.
    transport::reset_on_close(&tcp);
    let opened = tokio::select! {
        () = stop.cancelled() => Err("client stopping".to_owned()),
        opened = open(opener) => opened,
    };
    let stream = match opened {
        Ok(stream) => stream,
        Err(why) => return failed(visitor, &target, &why),
    };
    // Carried on the thread that drives the stream's connection, if it has one.
    let home = stream.home().cloned();
    let named = target.clone();
    let carried = crate::shards::carry_at(home, tcp, move |mut tcp| async move {
        let outcome = tokio::select! {
            () = stop.cancelled() => Err("client stopping".to_owned()),
            outcome = carry(&mut tcp, visitor, &target, stream) => outcome,
        };
        match outcome {
            Ok(()) => transport::close_in_order(&tcp),
            Err(why) => failed(visitor, &target, &why),
        }
    });
    if let Err(err) = carried.await {
        failed(visitor, &named, &format!("cannot move the visitor to its stream's thread: {err}"));
    }
}

fn failed(visitor: SocketAddr, target: &VisitTarget, why: &str) {
    crate::log::warn_limited!(crate::log::VISIT_FAILURES, %visitor, to = %target, "local forward failed: {}", Escaped(why))
}

/// A stream to the server for a visitor, over the first session up when it came.
async fn open(opener: Option<StreamOpener>) -> Result<MuxStream, String> {
    let opener = opener.filter(|o| !o.is_closed()).ok_or("not connected to the server")?;
    open_in_time(&opener, REPLY_TIMEOUT).await.map_err(|e| e.to_string())
}

/// A new stream over `opener`, or an error once `limit` has passed: past the streams a server
/// has yet to acknowledge (yamux allows 256), a new one waits for an earlier one to end, and a
/// server that answers nothing would have visitors queue for as long as it stays silent.
pub(super) async fn open_in_time(opener: &StreamOpener, limit: Duration) -> io::Result<MuxStream> {
    match tokio::time::timeout(limit, opener.open()).await {
        Ok(opened) => opened.map_err(|e| io::Error::other(crate::log::Chain(&e).to_string())),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the server took no new stream within {limit:?}"),
        )),
    }
}

/// Sends the visitor's bytes as soon as the header is written (no round trip before them);
/// waits for the server's answer before any byte flows back.
async fn carry(
    tcp: &mut TcpStream,
    visitor: SocketAddr,
    target: &VisitTarget,
    stream: MuxStream,
) -> Result<(), String> {
    let (mut from_server, mut to_server) = tokio::io::split(stream);
    let header = StreamHeader::LocalForward { target: target.clone(), visitor }.encode();
    to_server.write_all(&header).await.map_err(|e| e.to_string())?;
    let (mut from_visitor, mut to_visitor) = tcp.split();
    let up = async { copy_until_eof(&mut from_visitor, &mut to_server).await };
    let down = async {
        let reply = tokio::time::timeout(REPLY_TIMEOUT, crate::session::framed::read_reply(&mut from_server))
            .await
            .map_err(|_| std::io::Error::other("the server did not answer in time"))?
            .map_err(|err| match err.is_reset() {
                true => std::io::Error::new(std::io::ErrorKind::ConnectionReset, RESET_BEFORE_ANSWER),
                false => std::io::Error::other(err),
            })?;
        if reply.status != ReplyStatus::Ok {
            return Err(std::io::Error::other(format!(
                "refused by the server ({}): {}",
                reply.status, reply.message
            )));
        }
        // The reply was read exactly; buffering starts after it.
        copy_until_eof(&mut from_server, &mut to_visitor).await
    };
    tokio::try_join!(up, down).map(|_| ()).map_err(|e| e.to_string())
}

/// Receives datagrams until `stop`; each visitor address is a flow through the session up when
/// its first datagram came.
async fn serve_datagrams(
    socket: Arc<UdpSocket>,
    spec: &LocalForwardSpec,
    target: TargetAddr,
    max_flows: usize,
    sessions: &[watch::Receiver<Option<StreamOpener>>],
    stop: CancellationToken,
    cut: CancellationToken,
) {
    let mut flows = Flows::evicting(max_flows, MAKE_ROOM_AFTER);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => return,
            () = flows.reap() => continue,
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, visitor) = match received {
            Ok(received) => received,
            Err(_) => continue, // The ICMP error of an earlier answer.
        };
        let opener = first_up(sessions);
        let up = opener.is_some();
        let offer = flows.offer(visitor, Bytes::copy_from_slice(&buf[..len]), |inbox| {
            let Some(opener) = opener else { return false };
            tokio::spawn(local_flow(inbox, opener, target.clone(), visitor, socket.clone(), cut.clone()));
            true
        });
        if matches!(offer, Offer::Refused | Offer::QueueFull) && crate::log::REFUSALS.allow() {
            let why = match offer {
                Offer::Refused if !up => "no session is up".to_owned(),
                Offer::Refused => format!("all {max_flows} flows of this forward are in use"),
                _ => "its flow's queue is full".to_owned(),
            };
            tracing::info!(%visitor, forward = %spec, "UDP datagram dropped: {why}");
        }
    }
}

/// One local UDP flow, until it ends or `cut`: the task itself. A wrapper awaiting it (to
/// watch `cut`) kept it twice, 5.7 KB per flow against 2.9.
async fn local_flow(
    inbox: FlowInbox<SocketAddr>,
    opener: StreamOpener,
    target: TargetAddr,
    visitor: SocketAddr,
    socket: Arc<UdpSocket>,
    cut: CancellationToken,
) {
    let deliver = |datagram: Bytes| {
        let socket = socket.clone();
        async move { socket.send_to(&datagram, visitor).await.is_ok() }
    };
    let idle = crate::udp::DEFAULT_FLOW_IDLE;
    let carried = tokio::select! {
        () = cut.cancelled() => return,
        carried = carry_flow(inbox, open_datagrams(&opener, &target, visitor), |_| (), deliver, idle) => carried,
    };
    match carried {
        Ok(stats) => tracing::trace!(%visitor, to = %target, ?stats, "UDP flow done"),
        Err(err) => tracing::debug!(%visitor, to = %target, "UDP flow ended: {err}"),
    }
}

/// Opens a stream of datagrams to `target` through the server, and waits for its answer.
pub(super) async fn open_datagrams(
    opener: &StreamOpener,
    target: &TargetAddr,
    visitor: SocketAddr,
) -> io::Result<MuxStream> {
    let mut stream = open_in_time(opener, REPLY_TIMEOUT).await?;
    let header = StreamHeader::LocalDatagrams { target: target.clone(), visitor }.encode();
    stream.write_all(&header).await?;
    let reply = tokio::time::timeout(REPLY_TIMEOUT, crate::session::framed::read_reply(&mut stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the server did not answer in time"))?
        .map_err(|err| {
            let why = match err.is_reset() {
                true => RESET_BEFORE_ANSWER.to_owned(),
                false => format!(
                    "no answer from the server (one older than protocol 5 carries no UDP): {}",
                    crate::log::Chain(&err)
                ),
            };
            crate::log::warn_limited!(crate::log::VISIT_FAILURES, %visitor, to = %target, "UDP flow refused: {why}");
            io::Error::other(why)
        })?;
    if reply.status != ReplyStatus::Ok {
        let why = format!("{} ({}): {}", target, reply.status, Escaped(&reply.message));
        crate::log::warn_limited!(crate::log::VISIT_FAILURES, %visitor, "UDP flow refused: {why}");
        return Err(io::Error::new(io::ErrorKind::ConnectionRefused, why));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::idle_opener;

    #[tokio::test]
    async fn a_local_visitor_takes_the_first_server_heard_from_then_the_first_up() {
        let ((a, _ka), (b, _kb)) = (idle_opener(), idle_opener());
        let (_none, no_session) = watch::channel(None);
        let (_a, first) = watch::channel(Some(a.clone()));
        let (_b, second) = watch::channel(Some(b.clone()));
        let sessions = [no_session, first, second];
        let chosen = |sessions: &[_]| first_up(sessions).map(|o: StreamOpener| o.connection_id());
        assert_eq!(chosen(&sessions), Some(a.connection_id()));
        // The first server goes silent: the second takes the visitors, before any timeout.
        a.set_silent(true);
        assert_eq!(chosen(&sessions), Some(b.connection_id()));
        // Both silent: the first still gets them (it may yet answer).
        b.set_silent(true);
        assert_eq!(chosen(&sessions), Some(a.connection_id()));
        assert_eq!(chosen(&sessions[..1]), None);
    }

    /// Before, a visitor waited for its stream for as long as the server took none.
    #[tokio::test(start_paused = true)]
    async fn a_visitor_waits_for_its_stream_at_most_the_reply_time() {
        // A connection nobody drives: it opens no stream, ever.
        let (opener, _kept) = idle_opener();
        let started = tokio::time::Instant::now();
        let err = open(Some(opener)).await.unwrap_err();
        assert!(err.contains("took no new stream within 15s"), "{err}");
        assert_eq!(started.elapsed(), REPLY_TIMEOUT);
    }

    #[tokio::test]
    async fn a_udp_flows_task_holds_its_carry_once() {
        let (opener, _kept) = idle_opener();
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let target = TargetAddr::from_parts("127.0.0.1", 53).unwrap();
        let visitor: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut flows = Flows::evicting(4, MAKE_ROOM_AFTER);
        let mut size = 0;
        flows.offer(visitor, Bytes::from_static(b"x"), |inbox| {
            let task = local_flow(inbox, opener, target, visitor, socket, CancellationToken::new());
            size = std::mem::size_of_val(&task);
            false
        });
        // 2.9 KB in the test build today (the carry: 2.8). The task is this future as spawned;
        // a wrapper awaiting it kept it twice: 5.7 KB per flow.
        assert!(size > 0 && size <= 4096, "a task carrying one UDP flow is {size} bytes");
    }
}
