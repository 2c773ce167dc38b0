//! Port routes on the server: binding their public listeners (TCP) and sockets (UDP) as the
//! policy allows, and turning each TCP visitor into a stream to a session of the owning client,
//! the least busy of its replicas (UDP flows: `datagrams.rs`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::registry::{OtherClient, Owner, SessionId};
use super::{PortVerdict, Shared};
use crate::auth::CredentialKind;
use crate::forward::{splice_metered, Protocol, SpliceLimits};
use crate::mux::{MuxStream, StreamOpener};
use crate::proto::{RefusalCode, RouteId, StreamHeader};
use crate::source::{Place, Places};
use crate::transport;

/// Random candidates tried when the client lets the server choose a port.
const PICK_ATTEMPTS: usize = 64;

pub(super) type Refusal = (RefusalCode, String);

/// A route's public socket, bound.
#[derive(Debug)]
pub(super) enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Bound {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Tcp(listener) => listener.local_addr(),
            Self::Udp(socket) => socket.local_addr(),
        }
    }
}

/// Binds the public sockets of one client's port routes, as its policy and the registry allow.
/// A port is leased whole: the same client may hold it in both protocols.
pub(super) struct Binder<'s> {
    pub(super) shared: &'s Shared,
    pub(super) name: &'s str,
    pub(super) credential: CredentialKind,
}

impl Binder<'_> {
    /// The client the ports are leased to.
    fn owner(&self) -> Owner {
        Owner { name: self.name.to_owned(), credential: self.credential }
    }

    /// A socket for route `id`: on `port`, or with port 0 on the port it held before
    /// (`preferred`, else our reservation for it) or a free allowed one.
    /// Returns the socket and the address it bound.
    pub(super) async fn bind(
        &self,
        id: RouteId,
        protocol: Protocol,
        bind: Option<IpAddr>,
        port: u16,
        preferred: u16,
    ) -> Result<(Bound, SocketAddr), Refusal> {
        let ip = self.bind_address(bind)?;
        let at = (protocol, ip);
        if port == 0 {
            self.bind_any(id, at, preferred).await
        } else {
            self.bind_fixed(id, at, port).await
        }
    }

    async fn bind_fixed(
        &self,
        id: RouteId,
        at: (Protocol, IpAddr),
        port: u16,
    ) -> Result<(Bound, SocketAddr), Refusal> {
        let config = self.shared.config();
        let rules = config.rules(self.name, self.credential);
        match rules.may_bind_port(port) {
            PortVerdict::Allowed => self.bind_claimed(id, at, port).await,
            PortVerdict::Owned => {
                Err((RefusalCode::PortTaken, format!("port {port} is owned by another client")))
            }
            PortVerdict::NotAllowed => Err((
                RefusalCode::PortNotAllowed,
                format!("port {port} is not allowed for client {:?} (allowed: {})", self.name, rules.ports()),
            )),
        }
    }

    /// Whether a listener bound on `public_addr` for a route that asked for `bind` is still
    /// what the rules in force allow (after a reload): its address, and its port not
    /// narrowed away nor now owned by another client.
    pub(super) fn still_allowed(&self, bind: Option<IpAddr>, public_addr: SocketAddr) -> Result<(), Refusal> {
        let ip = self.bind_address(bind)?;
        if ip != public_addr.ip() {
            let message = format!("this client's default address is now {ip}");
            return Err((RefusalCode::AddressNotAllowed, message));
        }
        let config = self.shared.config();
        let rules = config.rules(self.name, self.credential);
        let port = public_addr.port();
        match rules.may_bind_port(port) {
            PortVerdict::Allowed => Ok(()),
            PortVerdict::Owned => {
                Err((RefusalCode::PortTaken, format!("port {port} is now owned by another client")))
            }
            PortVerdict::NotAllowed => Err((
                RefusalCode::PortNotAllowed,
                format!(
                    "port {port} is no longer allowed for client {:?} (allowed: {})",
                    self.name,
                    rules.ports()
                ),
            )),
        }
    }

    /// Gives back the port of a listener that is closed (its route was removed).
    pub(super) fn release(&self, port: u16) {
        self.shared.registry.release(&self.owner(), port);
    }

    /// Claims `port` and binds it; the claim is given back if the bind fails.
    async fn bind_claimed(
        &self,
        id: RouteId,
        at: (Protocol, IpAddr),
        port: u16,
    ) -> Result<(Bound, SocketAddr), Refusal> {
        let (protocol, ip) = at;
        let registry = &self.shared.registry;
        let owner = self.owner();
        if let Err(OtherClient) = registry.claim(&owner, id, port) {
            let message = if registry.reserved_for_another(&owner, port) {
                format!("port {port} is reserved for the return of another client")
            } else {
                format!("port {port} is held by another client")
            };
            return Err((RefusalCode::PortTaken, message));
        }
        let bound = bind_socket(protocol, SocketAddr::new(ip, port)).await.and_then(|bound| {
            let addr = bound.local_addr()?;
            Ok((bound, addr))
        });
        bound.map_err(|err| {
            registry.release(&owner, port);
            bind_refusal(ip, port, &err)
        })
    }

    /// The address a route binds: the one the client asked for if its credential may bind
    /// it, else the server's default for this client.
    fn bind_address(&self, asked: Option<IpAddr>) -> Result<IpAddr, Refusal> {
        let config = self.shared.config();
        let rules = config.rules(self.name, self.credential);
        let allowed = rules.bind_addresses();
        match asked {
            Some(ip) if allowed.contains(&ip) => Ok(ip),
            Some(ip) => {
                let list = allowed.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                Err((
                    RefusalCode::AddressNotAllowed,
                    format!("address {ip} is not allowed for client {:?} (allowed: {list})", self.name),
                ))
            }
            None => Ok(rules.default_bind()),
        }
    }

    /// Picks a port: the one the client held before (its hint, else our reservation for this
    /// route), then random candidates from the allowed set; never a port another client owns.
    async fn bind_any(
        &self,
        id: RouteId,
        at: (Protocol, IpAddr),
        preferred: u16,
    ) -> Result<(Bound, SocketAddr), Refusal> {
        let config = self.shared.config();
        let rules = config.rules(self.name, self.credential);
        let usable = |port: u16| rules.may_bind_port(port) == PortVerdict::Allowed;
        let owner = self.owner();
        let reserved = self.shared.registry.reserved_for(&owner, id);
        for previous in [Some(preferred).filter(|p| *p != 0), reserved].into_iter().flatten() {
            if usable(previous) {
                if let Ok(listener) = self.bind_claimed(id, at, previous).await {
                    return Ok(listener);
                }
            }
        }
        let allowed = rules.ports();
        if allowed.is_empty() {
            return Err((
                RefusalCode::PortNotAllowed,
                "this client may bind no port (allow_ports = none)".into(),
            ));
        }
        for _ in 0..PICK_ATTEMPTS.min(allowed.len().max(1)) {
            let Some(port) = allowed.nth(rand::random_range(0..allowed.len().max(1))) else {
                break;
            };
            if !usable(port) || self.shared.registry.is_taken_for(&owner, port) {
                continue;
            }
            match self.bind_claimed(id, at, port).await {
                Ok(listener) => return Ok(listener),
                Err((RefusalCode::PortTaken, _)) => continue,
                Err(other) => return Err(other),
            }
        }
        Err((RefusalCode::PortTaken, format!("no free port found among the allowed ports ({allowed})")))
    }
}

/// Binds a route's socket on `addr`.
pub(super) async fn bind_socket(protocol: Protocol, addr: SocketAddr) -> io::Result<Bound> {
    match protocol {
        Protocol::Tcp => {
            let listener = TcpListener::bind(addr).await?;
            transport::reset_accepted_on_close(&listener);
            Ok(Bound::Tcp(listener))
        }
        Protocol::Udp => UdpSocket::bind(addr).await.map(Bound::Udp),
    }
}

pub(super) fn bind_refusal(ip: IpAddr, port: u16, err: &io::Error) -> Refusal {
    match err.kind() {
        io::ErrorKind::AddrInUse => {
            (RefusalCode::PortTaken, format!("port {port} is already in use on the server"))
        }
        io::ErrorKind::PermissionDenied => {
            (RefusalCode::PortNotAllowed, format!("the server may not bind port {port}: {err}"))
        }
        _ => (RefusalCode::Invalid, format!("cannot bind {ip}:{port} on the server: {err}")),
    }
}

/// How a route's visitors are announced to the client.
#[derive(Debug, Clone, Copy)]
pub(super) enum StreamKind {
    /// A version 1 forward (added by `RemoteForwardRequest`): `RemoteForward` headers.
    Forward(u32),
    /// A route of a table: `Route` headers.
    Route(RouteId),
}

impl StreamKind {
    /// The `route` label of the metrics: the route id, or `forward-N` for a version 1 forward.
    pub(super) fn label(&self) -> String {
        match self {
            Self::Forward(id) => format!("forward-{id}"),
            Self::Route(id) => id.to_string(),
        }
    }
}

impl std::fmt::Display for StreamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Forward(id) => write!(f, "forward {id}"),
            Self::Route(id) => write!(f, "route {id}"),
        }
    }
}

/// A session serving a port route: where the visitors it is picked for go.
#[derive(Debug, Clone)]
pub(super) struct Member {
    pub(super) session: SessionId,
    pub(super) opener: StreamOpener,
    /// Cancelled when the route leaves this session (removed from its table, or the session
    /// ended): its visitors are cut.
    pub(super) owned: CancellationToken,
    /// Cancelled when the session drains: no new visitors for it, those in progress go on.
    pub(super) accepting: CancellationToken,
    /// The session's visitors, for its drain to wait on.
    pub(super) visitors: TaskTracker,
}

/// The sessions serving one port route: one, or the replicas of a client name.
#[derive(Debug, Clone, Default)]
pub(super) struct Members(Arc<Mutex<Vec<Member>>>);

impl Members {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `start` with the member for the next visitor: the least busy (fewest open
    /// streams) of those accepting, a silent one only if all are. `start` runs under the
    /// members' lock, so a member that stops accepting and then looks at the members (as its
    /// drain does) sees every visitor started for it.
    pub(super) fn pick<R>(&self, start: impl FnOnce(&Member) -> R) -> Option<R> {
        let members = self.lock();
        let accepting: Vec<&Member> = members.iter().filter(|m| !m.accepting.is_cancelled()).collect();
        crate::mux::least_busy(&accepting, |m| &m.opener).map(|m| start(m))
    }

    pub(super) fn add(&self, member: Member) {
        self.lock().push(member);
    }

    /// Takes session `session` out; returns how many members are left.
    pub(super) fn remove(&self, session: SessionId) -> usize {
        let mut members = self.lock();
        members.retain(|m| m.session != session);
        members.len()
    }

    /// Whether any member takes new visitors (a member whose connection is gone does not).
    pub(super) fn any_accepting(&self) -> bool {
        self.lock().iter().any(|m| !m.accepting.is_cancelled() && !m.opener.is_closed())
    }
}

/// What a route's listener needs to carry visitors to its sessions.
#[derive(Debug, Clone)]
pub(super) struct Carrier {
    pub(super) kind: StreamKind,
    pub(super) members: Members,
    /// The client's name, for the metrics.
    pub(super) client: Arc<str>,
    pub(super) metrics: crate::metrics::Metrics,
    pub(super) max_visitors: usize,
    pub(super) max_per_source: usize,
}

/// Accepts visitors until `stop`; each becomes one new stream to a member session. A visitor
/// past the forward's caps, or arriving when no member takes visitors, is reset at once,
/// before any stream is opened.
pub(super) async fn serve(listener: TcpListener, carrier: Carrier, stop: CancellationToken) {
    let places = Places::new(carrier.max_visitors, carrier.max_per_source);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, visitor)) => match places.admit(visitor.ip()) {
                Ok(place) => {
                    let reset = transport::reset_on_close;
                    let mut tcp = Some((tcp, place));
                    let started = carrier.members.pick(|member| {
                        if let Some((tcp, place)) = tcp.take() {
                            let visit = visit(tcp, visitor, carrier.clone(), member.clone(), place);
                            member.visitors.spawn(visit);
                        }
                    });
                    if let (None, Some((tcp, _))) = (started, tcp) {
                        carrier.metrics.refused("visitor: client draining");
                        reset(&tcp);
                    }
                }
                Err(why) => {
                    carrier.metrics.refused("visitor: over a cap");
                    if crate::log::REFUSALS.allow() {
                        tracing::info!(%visitor, route = %carrier.kind, "visitor refused: {why}");
                    }
                    transport::reset_on_close(&tcp);
                }
            },
            Err(err) => {
                // Out of file descriptors and the like: pause instead of spinning.
                if crate::log::ACCEPT_FAILURES.allow() {
                    tracing::warn!(route = %carrier.kind, "accept failed: {err}");
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// Most bytes a visitor sent before its stream opened that go out with the stream header.
const EARLY_BYTES: usize = 4096;

async fn visit(tcp: TcpStream, visitor: SocketAddr, carrier: Carrier, member: Member, place: Place) {
    let route = carrier.kind;
    let _ = transport::configure_tcp(&tcp);
    // Until the visit has ended in order, a close resets: when this process dies mid-visit
    // (SIGKILL, the OOM killer), the kernel then resets the visitor's connection instead of
    // ending it with a FIN, which a visitor whose request was all sent would take for the
    // complete answer. The listener already set it (`bind_socket`); this is the second guard,
    // for a listener made elsewhere.
    transport::reset_on_close(&tcp);
    let stream = match member.opener.open().await {
        Ok(stream) => stream,
        Err(err) => {
            tracing::debug!(%visitor, %route, "cannot open a stream for the visitor: {}", crate::log::Chain(&err));
            transport::reset_on_close(&tcp);
            return;
        }
    };
    // Carried on the thread that drives the stream's connection, if it has one; there, still
    // among the session's visitors (its drain waits for it) and holding the visitor's place.
    let home = stream.home().cloned();
    let visitors = member.visitors.clone();
    let carried = crate::shards::carry_at(home, tcp, move |tcp| {
        visitors.track_future(carry(tcp, visitor, carrier, member, stream, place))
    });
    if let Err(err) = carried.await {
        // The stream went with the closure: dropped unfinished, it is reset.
        tracing::debug!(%visitor, %route, "cannot move the visitor to its stream's thread: {err}");
    }
}

/// Carries one visitor over its stream, until either side is done; the visitor's `place` under
/// the caps is kept until then.
async fn carry(
    mut tcp: TcpStream,
    visitor: SocketAddr,
    carrier: Carrier,
    member: Member,
    mut stream: MuxStream,
    place: Place,
) {
    let _place = place;
    let route = carrier.kind;
    let mut first = match route {
        StreamKind::Forward(forward_id) => StreamHeader::RemoteForward { forward_id, visitor },
        StreamKind::Route(route_id) => {
            StreamHeader::Route { route_id, visitor, local: tcp.local_addr().ok() }
        }
    }
    .encode();
    let (_open, meter) = carrier.metrics.visitor(&carrier.client, &route.label());
    let carry = async {
        // What the visitor sent already goes with the header, in one frame.
        let early = transport::take_received(&tcp, &mut first, EARLY_BYTES)?;
        stream.write_all(&first).await?;
        meter.from_visitor.inc_by(early as u64);
        // Not kept for the life of the visit: 10,000 idle visitors would hold 40 MiB.
        drop(first);
        splice_metered(&mut tcp, &mut stream, SpliceLimits::default(), Some(&meter)).await
    };
    let failed = tokio::select! {
        () = member.owned.cancelled() => true,
        result = carry => match result {
            Ok(stats) => {
                tracing::trace!(%visitor, %route, ?stats, "visitor done");
                false
            }
            Err(err) => {
                tracing::debug!(%visitor, %route, "visitor connection failed: {err}");
                true
            }
        },
    };
    if failed {
        // The client's target sees the failure as a reset too, even after its own end.
        stream.reset();
    } else {
        // Both ends were carried in order; a broken tunnel side keeps the reset.
        transport::close_in_order(&tcp);
    }
}
