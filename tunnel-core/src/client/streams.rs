//! Inbound data streams on the client: read the header, dial the local target (or an address in
//! a network this client routes), splice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::datagrams;
use crate::forward::{
    splice_with, IpNet, Protocol, ProxyProtocol, SpliceLimits, Target, TargetAddr, Visitor,
};
use crate::http::{HttpAction, Origins};
use crate::log::{warn_limited, Escaped, DROPPED_STREAMS};
use crate::mux::MuxStream;
use crate::proto::{ReplyStatus, RouteId, StreamHeader, StreamReply};
use crate::transport;

/// Descriptors the client keeps for its own work (its sessions' connections, local forwards,
/// name lookups, reconnecting) out of the open-file limit, whatever the servers ask: at least
/// this many, and at least an eighth of the limit.
const KEPT_DESCRIPTORS: u64 = 256;

/// How many inbound streams may be served at once: each may hold a descriptor (a target
/// connection, a UDP flow's socket, an origin connection), and a server that opens more
/// than the open-file limit allows would leave the client unable to reconnect or take its
/// own visitors. The soft `RLIMIT_NOFILE` now ([`budget_under`]).
pub(super) fn visit_budget() -> usize {
    #[cfg(unix)]
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    #[cfg(not(unix))]
    let limit: Option<u64> = None;
    budget_under(limit)
}

/// The streams served at once under an open-file limit (`None`: none): the limit less what
/// is kept, and at least 32.
fn budget_under(limit: Option<u64>) -> usize {
    let Some(limit) = limit else { return tokio::sync::Semaphore::MAX_PERMITS };
    let budget = limit.saturating_sub(KEPT_DESCRIPTORS.max(limit / 8)).max(32);
    usize::try_from(budget).unwrap_or(usize::MAX).min(tokio::sync::Semaphore::MAX_PERMITS)
}

/// The server writes the header first thing; a stream silent this long is abandoned.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to resolve and connect to a local target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where inbound streams go: remote forwards by route id, private services by name.
#[derive(Debug, Default)]
pub(super) struct Routes {
    /// Remote forwards and TLS routes by route id.
    pub(super) forwards: HashMap<RouteId, Forward>,
    pub(super) services: HashMap<String, TargetAddr>,
    /// HTTP routes (and the fallback) by route id: their actions.
    pub(super) http: HashMap<RouteId, Arc<HttpAction>>,
    /// Network routes by route id.
    pub(super) networks: HashMap<RouteId, IpNet>,
    /// The server may send a stream of requests per HTTP route (protocol 8).
    pub(super) streams_per_route: bool,
}

/// Where a forward's visitors go, and how.
#[derive(Debug)]
pub(super) struct Forward {
    pub(super) target: Target,
    pub(super) protocol: Protocol,
    pub(super) idle_timeout: Option<Duration>,
    /// Written to the target before the visitor's bytes.
    pub(super) proxy_protocol: Option<ProxyProtocol>,
}

/// The routes in force, replaced whole when the table changes; each stream reads them once.
#[derive(Debug, Clone, Default)]
pub(super) struct SharedRoutes(Arc<RwLock<Arc<Routes>>>);

impl SharedRoutes {
    pub(super) fn replace(&self, routes: Routes) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(routes);
    }

    fn current(&self) -> Arc<Routes> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Where a session's inbound streams go.
#[derive(Clone)]
pub(super) struct Visits {
    /// The table's targets, as the streams read them.
    pub(super) routes: SharedRoutes,
    pub(super) origins: Origins,
    /// A place for each stream served; none left, a new stream is reset.
    pub(super) budget: Arc<tokio::sync::Semaphore>,
    /// Cut when the session is over: its streams end with it.
    pub(super) owned: CancellationToken,
    /// Cancelled when this client drains: HTTP streams close after the request in flight.
    pub(super) draining: CancellationToken,
}

impl Visits {
    pub(super) fn take(&self, stream: MuxStream) {
        // The session is over (an intake's task on another thread may be mid-take).
        if self.owned.is_cancelled() {
            return stream.reset();
        }
        let Ok(place) = self.budget.clone().try_acquire_owned() else {
            warn_limited!(
                DROPPED_STREAMS,
                "resetting a stream: as many are open as the open-file limit leaves room for"
            );
            return stream.reset();
        };
        // Served on the thread that drives the stream's connection, if it has one.
        let home = stream.home().cloned();
        crate::shards::spawn_at(home.as_ref(), self.serving(stream, place));
    }

    /// The task serving `stream`: the handler itself. Wrapped in another future that awaited
    /// it, it would be kept twice (moved in, then awaited), 2.6 KB more per open stream.
    fn serving(
        &self,
        stream: MuxStream,
        place: tokio::sync::OwnedSemaphorePermit,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (routes, origins) = (self.routes.clone(), self.origins.clone());
        handle(stream, place, routes, origins, self.owned.clone(), self.draining.clone())
    }
}

/// Serves one inbound stream, holding its `place` in the budget until it ends.
async fn handle(
    mut stream: MuxStream,
    place: tokio::sync::OwnedSemaphorePermit,
    routes: SharedRoutes,
    origins: Origins,
    owned: CancellationToken,
    draining: CancellationToken,
) {
    let _place = place;
    let header =
        match tokio::time::timeout(HEADER_TIMEOUT, crate::session::framed::read_header(&mut stream)).await {
            Ok(Ok(header)) => header,
            Ok(Err(err)) => {
                return warn_limited!(
                    DROPPED_STREAMS,
                    "dropping stream: {}",
                    Escaped(&crate::log::Chain(&err).to_string())
                )
            }
            Err(_) => {
                return warn_limited!(DROPPED_STREAMS, "dropping stream: no header within {HEADER_TIMEOUT:?}")
            }
        };
    if let Some(requests) = HttpStream::of(&header, &routes.current()) {
        return until(&owned, Box::pin(serve_http(stream, requests, routes, origins, draining))).await;
    }
    let routes = routes.current();
    match header {
        StreamHeader::NetworkVisit { route_id, target, from, visitor } => {
            let net = routes.networks.get(&route_id).copied();
            until(&owned, Box::pin(visit_network(stream, net, target, &from, visitor))).await;
        }
        StreamHeader::NetworkDatagrams { route_id, target, from, visitor } => {
            let net = routes.networks.get(&route_id).copied();
            until(&owned, Box::pin(datagrams::visit_network(stream, net, target, &from, visitor))).await;
        }
        StreamHeader::Route { route_id, visitor, local } => match routes.forwards.get(&route_id) {
            Some(forward) => visit_forward(stream, route_id, forward, visitor, local, &owned).await,
            None => tracing::debug!(route = %route_id, "dropping stream for a route no longer in the table"),
        },
        StreamHeader::ServiceVisit { service, from, visitor } => match routes.services.get(&service) {
            Some(target) => {
                let via = format!("service {} visited by {}", Escaped(&service), Escaped(&from));
                let dial = Dial { target, idle_timeout: None, proxy_header: None, visitor, via };
                splice_to(stream, dial, &owned).await;
            }
            None => warn_limited!(
                DROPPED_STREAMS,
                service = %Escaped(&service),
                from = %Escaped(&from),
                "dropping visit to a service this client does not expose"
            ),
        },
        other => {
            warn_limited!(DROPPED_STREAMS, "dropping stream with a header a server does not send: {other:?}")
        }
    }
}

/// Runs `work` until it ends or the session that owns the stream is cut. The kinds of stream
/// other than a TCP forward's come boxed: a task is as large as its largest branch, and every
/// idle visitor of a forward would otherwise hold the room of an HTTP connection (8.5 KB per
/// stream where 2.4 KB do).
async fn until(owned: &CancellationToken, work: impl std::future::Future<Output = ()>) {
    tokio::select! {
        () = work => {}
        () = owned.cancelled() => {}
    }
}

/// A visitor of remote forward `route_id`: to its in-program handler, its UDP target or its TCP
/// target.
async fn visit_forward(
    stream: MuxStream,
    route_id: RouteId,
    forward: &Forward,
    visitor: SocketAddr,
    local: Option<SocketAddr>,
    owned: &CancellationToken,
) {
    let via = format!("route {route_id}");
    let Forward { target, protocol, idle_timeout, proxy_protocol } = forward;
    let target = match target {
        Target::Handler(handler) => {
            let visitor = Visitor::new(stream, visitor, route_id).cut_with(owned.clone());
            return until(owned, handler.serve(visitor)).await;
        }
        Target::Addr(target) => target,
    };
    if *protocol == Protocol::Udp {
        let first = match proxy_protocol.map(|version| version.datagram_header(visitor, local)) {
            Some(Err(err)) => {
                return crate::log::warn_limited!(crate::log::VISIT_FAILURES, %visitor, "{via}: no PROXY header: {err}")
            }
            header => header.and_then(Result::ok),
        };
        // As the server's end has it.
        let idle = Duration::from_secs(crate::udp::flow_idle_secs(*idle_timeout).into());
        return until(owned, Box::pin(datagrams::forward(stream, target, visitor, idle, first, &via))).await;
    }
    let proxy_header = match proxy_protocol.map(|version| version.header(visitor, local)) {
        Some(Err(err)) => {
            return crate::log::warn_limited!(crate::log::VISIT_FAILURES, %visitor, "{via}: no PROXY header: {err}")
        }
        header => header.and_then(Result::ok),
    };
    let dial = Dial { target, idle_timeout: *idle_timeout, proxy_header, visitor, via };
    splice_to(stream, dial, owned).await;
}

/// A TCP target to connect a visitor's stream to, and how.
struct Dial<'a> {
    target: &'a TargetAddr,
    idle_timeout: Option<Duration>,
    /// Written to the target before the visitor's bytes.
    proxy_header: Option<Vec<u8>>,
    visitor: SocketAddr,
    /// What the visitor came through, for the logs.
    via: String,
}

/// Connects to the target and splices; the stream ends as the target's connection did (in
/// order, or with a reset).
async fn splice_to(mut stream: MuxStream, dial: Dial<'_>, owned: &CancellationToken) {
    let Dial { target, idle_timeout, proxy_header, visitor, via } = dial;
    // The deadline covers the name lookup too: a target named by a host name never hangs a stream.
    let mut tcp = match tokio::time::timeout(CONNECT_TIMEOUT, transport::connect_tcp(&target.to_string()))
        .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(err)) => {
            return crate::log::warn_limited!(crate::log::VISIT_FAILURES, %visitor, to = %target, "{via}: cannot reach the target: {err}")
        }
        Err(_) => {
            return crate::log::warn_limited!(crate::log::VISIT_FAILURES, %visitor, to = %target, "{via}: target not reached within {CONNECT_TIMEOUT:?}")
        }
    };
    // Until the stream has ended in order, a close resets, also when this process dies: a
    // target must not take a cut upload for a whole one.
    transport::reset_on_close(&tcp);
    if let Some(header) = proxy_header {
        if let Err(err) = tcp.write_all(&header).await {
            return crate::log::warn_limited!(crate::log::VISIT_FAILURES, %visitor, to = %target, "{via}: cannot write the PROXY header: {err}");
        }
    }
    let limits = SpliceLimits { idle_timeout };
    let failed = tokio::select! {
        () = owned.cancelled() => true,
        result = splice_with(&mut stream, &mut tcp, limits) => match result {
            Ok(stats) => {
                tracing::trace!(%visitor, to = %target, ?stats, "{via}: done");
                false
            }
            Err(err) => {
                tracing::debug!(%visitor, to = %target, "{via}: connection failed: {err}");
                true
            }
        },
    };
    if failed {
        // The visitor sees the failure as a reset too, even after its own end was carried.
        stream.reset();
    } else {
        // Both ends were carried in order; a broken tunnel side keeps the reset.
        transport::close_in_order(&tcp);
    }
}

/// A stream of HTTP requests, by how their route is named.
#[derive(Debug, Clone, Copy)]
enum HttpStream {
    /// All for this route (protocol 8).
    PerRoute(RouteId),
    /// The one request of an upgrade, for this route.
    Upgrade(RouteId),
    /// Each request names its own in a header (a server older than protocol 8, or one serving
    /// an older replica beside this client).
    Named,
}

impl HttpStream {
    /// What `header` opens, if it is a stream of HTTP requests this session may get.
    fn of(header: &StreamHeader, routes: &Routes) -> Option<Self> {
        match header {
            StreamHeader::HttpRoute { route_id, .. } if routes.streams_per_route => {
                Some(Self::PerRoute(*route_id))
            }
            StreamHeader::Http { .. } => Some(Self::Named),
            StreamHeader::Route { route_id, .. } if routes.http.contains_key(route_id) => {
                Some(Self::Upgrade(*route_id))
            }
            _ => None,
        }
    }
}

/// Serves a stream of HTTP requests. The route is looked up as each request arrives (unless
/// the stream goes to the origin as it is), so a stream follows the table as it changes.
async fn serve_http(
    stream: MuxStream,
    requests: HttpStream,
    routes: SharedRoutes,
    origins: Origins,
    draining: CancellationToken,
) {
    let current = move |id: RouteId| routes.current().http.get(&id).cloned();
    match requests {
        HttpStream::PerRoute(id) => origins.serve_route_stream(stream, move || current(id), draining).await,
        HttpStream::Upgrade(id) => origins.serve_requests(stream, move |_| current(id), draining).await,
        HttpStream::Named => {
            origins
                .serve_requests(stream, move |named: Option<RouteId>| named.and_then(&current), draining)
                .await
        }
    }
}

/// A connection into a network this client routes: dialed only inside that network, answered
/// (connected, or why not) before any data flows.
async fn visit_network(
    mut stream: MuxStream,
    net: Option<IpNet>,
    target: SocketAddr,
    from: &str,
    visitor: SocketAddr,
) {
    let from = Escaped(from);
    let dialed = match allowed_in(net, target) {
        Ok(target) => match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
            Ok(Ok(tcp)) => Ok(tcp),
            Ok(Err(err)) => Err(StreamReply::connect_failed(target, &err)),
            Err(_) => Err(StreamReply::refuse(
                ReplyStatus::TimedOut,
                format!("{target}: not reached within {CONNECT_TIMEOUT:?}"),
            )),
        },
        Err(refusal) => Err(refusal),
    };
    let mut tcp = match dialed {
        Ok(tcp) => tcp,
        Err(reply) => {
            crate::log::warn_limited!(crate::log::VISIT_FAILURES, %visitor, to = %target, %from, "network visit refused ({}): {}", reply.status, Escaped(&reply.message));
            return answer_refusal(&mut stream, &reply).await;
        }
    };
    let _ = transport::configure_tcp(&tcp);
    // As for a forward's target: a close resets until the visit has ended in order.
    transport::reset_on_close(&tcp);
    if stream.write_all(&StreamReply::ok().encode()).await.is_err() {
        return;
    }
    match splice_with(&mut stream, &mut tcp, SpliceLimits::default()).await {
        Ok(stats) => {
            tracing::trace!(%visitor, to = %target, %from, ?stats, "network visit done");
            transport::close_in_order(&tcp);
        }
        Err(err) => {
            tracing::debug!(%visitor, to = %target, %from, "network visit failed: {err}");
            stream.reset();
        }
    }
}

/// Answers a network visit with its refusal and closes the stream (best effort: the server
/// passes the answer on, or the stream is gone anyway).
pub(super) async fn answer_refusal(stream: &mut MuxStream, reply: &StreamReply) {
    let _ = stream.write_all(&reply.encode()).await;
    let _ = stream.shutdown().await;
}

/// The address to dial for a visit to `target` in the network `net` this client routes (`None`:
/// no longer routed), or why not: only inside that network, and a wide network does not
/// carry this host's own loopback, link-local or cloud metadata addresses.
pub(super) fn allowed_in(net: Option<IpNet>, target: SocketAddr) -> Result<SocketAddr, StreamReply> {
    let refuse = |status, message: String| StreamReply::refuse(status, message);
    // The mapped form of an IPv4 address is that address, checked and dialed as such.
    let target = SocketAddr::new(target.ip().to_canonical(), target.port());
    let special =
        IpNet::special_range(target.ip()).filter(|range| net.is_some_and(|net| !range.covers(&net)));
    match net {
        None => Err(refuse(ReplyStatus::Unavailable, "this client no longer routes that network".into())),
        Some(net) if !net.contains(target.ip()) => Err(refuse(
            ReplyStatus::Denied,
            format!("{target} is outside the network {net} this client routes"),
        )),
        // Routing such a range itself does carry it.
        Some(net) if special.is_some() => Err(refuse(
            ReplyStatus::Denied,
            format!(
                "{target} is in {}, which {net} does not carry: route it explicitly",
                special.unwrap_or(net)
            ),
        )),
        Some(_) => Ok(target),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::mux::{self, IncomingStreams, Mode, MuxConfig, StreamOpener};

    /// A server's opener and the client's incoming streams of one connection.
    fn connected() -> (StreamOpener, IncomingStreams) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (server, _, server_driver) = mux::start(a, &MuxConfig::default(), Mode::Server);
        let (_, incoming, client_driver) = mux::start(b, &MuxConfig::default(), Mode::Client);
        tokio::spawn(server_driver);
        tokio::spawn(client_driver);
        (server, incoming)
    }

    /// Visits with no routes and a budget of one stream.
    fn one_place() -> Visits {
        Visits {
            routes: SharedRoutes::default(),
            origins: Origins::new(None),
            budget: Arc::new(tokio::sync::Semaphore::new(1)),
            owned: CancellationToken::new(),
            draining: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn a_streams_task_holds_the_room_of_a_tcp_visit_once() {
        let (server, mut incoming) = connected();
        let mut opened = server.open().await.unwrap();
        opened.write_all(&[0]).await.unwrap();
        let stream = incoming.next().await.unwrap();
        let visits = one_place();
        let place = visits.budget.clone().try_acquire_owned().unwrap();
        let task = visits.serving(stream, place);
        // 2.6 KB in the test build today (the TCP visit's branch: a dial, then the copy); the
        // release build's measured per stream agrees (10,000 idle streams). Kept twice (a wrapper
        // awaiting it) or beside an HTTP connection's state (a branch not boxed), each of the
        // 10,000 idle streams of the benchmark would hold 5 to 9 KB.
        let size = std::mem::size_of_val(&task);
        assert!(size <= 4096, "a task serving one stream is {size} bytes");
    }

    #[tokio::test]
    async fn a_stream_past_the_budget_is_reset_and_a_place_comes_back_when_one_ends() {
        let (server, mut incoming) = connected();
        let visits = one_place();
        // A stream reaches the client with its first bytes: half a header's length here.
        let mut arrive = async || {
            let mut stream = server.open().await.unwrap();
            stream.write_all(&[0]).await.unwrap();
            let arrived = incoming.next().await.unwrap();
            (stream, arrived)
        };

        let (mut first, arrived) = arrive().await;
        visits.take(arrived);
        assert_eq!(visits.budget.available_permits(), 0, "the first stream holds the one place");
        let (mut second, arrived) = arrive().await;
        visits.take(arrived);
        let err = second.read(&mut [0; 1]).await.expect_err("a reset, not an end");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);

        // The first one's header cannot be read: its handler ends and gives its place back.
        first.write_all(&[1, 0xff]).await.unwrap();
        let place = tokio::time::timeout(Duration::from_secs(10), visits.budget.acquire()).await;
        drop(place.expect("the place came back").unwrap());
        let (_third, arrived) = arrive().await;
        visits.take(arrived);
        assert_eq!(visits.budget.available_permits(), 0, "the third stream is served");
    }

    #[test]
    fn the_budget_keeps_descriptors_for_the_client_itself() {
        let most = tokio::sync::Semaphore::MAX_PERMITS;
        for (limit, budget) in [
            (None, most),
            (Some(64), 32),
            (Some(288), 32),
            (Some(300), 44),
            (Some(1024), 768),
            (Some(20_000), 17_500),
            (Some(1_048_576), 917_504),
            (Some(u64::MAX), most),
        ] {
            assert_eq!(budget_under(limit), budget, "{limit:?}");
        }
        // What this process runs with, as the client reads it.
        assert!(visit_budget() >= 32);
    }
}
