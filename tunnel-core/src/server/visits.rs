//! Visits: streams a client opens toward the server (local forwards, SOCKS connections of its
//! `-D`, UDP flows of its UDP forwards and SOCKS associations), and the server's own SOCKS
//! listener's connections. Each goes to another client's
//! private service or into a network another client routes (spliced stream to stream), or to
//! a host the server dials itself (if allowed).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::networks::NetworkHit;
use super::registry::ServiceLookup;
use super::Shared;
use crate::auth::CredentialKind;
use crate::forward::{splice, Protocol, TargetAddr, VisitTarget};
use crate::mux::MuxStream;
use crate::proto::{ReplyStatus, StreamHeader, StreamReply};
use crate::session::ControlSender;
use crate::transport;

/// The client a visit comes from.
#[derive(Debug, Clone)]
pub(super) struct Visitor {
    pub(super) name: String,
    pub(super) credential: CredentialKind,
    /// Its session's control, where the session's control stream moves to (protocol 9); `None`
    /// for a login on the server's SOCKS listener, and before protocol 9.
    pub(super) control: Option<ControlSender>,
}

pub(super) async fn handle(
    shared: Arc<Shared>,
    from: Visitor,
    mut stream: MuxStream,
    owned: CancellationToken,
) {
    let client = crate::log::Escaped(&from.name);
    // The client writes its header first thing; a stream silent this long is abandoned.
    let wait = shared.config().timeouts.stream_header;
    let header = match tokio::time::timeout(wait, crate::session::framed::read_header(&mut stream)).await {
        Ok(Ok(StreamHeader::LocalForward { target, visitor })) => Ok((target, visitor, Protocol::Tcp)),
        Ok(Ok(StreamHeader::LocalDatagrams { target, visitor })) => {
            Ok((VisitTarget::Address(target), visitor, Protocol::Udp))
        }
        Ok(Ok(StreamHeader::Control)) if from.control.is_some() => {
            let moved = from.control.as_ref().map(|control| control.take_over(stream));
            if let Some(Err(_)) = moved {
                tracing::debug!(%client, "a control stream opened again after its session ended: dropped");
            }
            return;
        }
        Ok(Ok(_)) => Err("clients may only open local forwards".to_owned()),
        Ok(Err(err)) => Err(crate::log::Escaped(&crate::log::Chain(&err).to_string()).to_string()),
        Err(_) => Err(format!("no header within {wait:?}")),
    };
    let (target, visitor, protocol) = match header {
        Ok(header) => header,
        Err(why) => {
            // A client can open thousands of these a second: logged once per window, with a count.
            if crate::log::REFUSALS.allow() {
                tracing::warn!(%client, "dropping stream: {why}");
            }
            return;
        }
    };
    let failed = tokio::select! {
        () = owned.cancelled() => true,
        failed = visit(&shared, &from, &mut stream, &target, (visitor, protocol)) => failed,
    };
    if failed {
        // The client's visitor sees the failure as a reset, even after its own end.
        stream.reset();
    }
}

/// A stream the client opened while its session drains (protocol 9): only the session's control
/// stream, moved to another connection, is taken; any other is dropped, as a visit begun now
/// would be cut by the end of the drain.
pub(super) async fn while_draining(shared: Arc<Shared>, mut stream: MuxStream, control: ControlSender) {
    let wait = shared.config().timeouts.stream_header;
    let header = tokio::time::timeout(wait, crate::session::framed::read_header(&mut stream)).await;
    if let Ok(Ok(StreamHeader::Control)) = header {
        let _ = control.take_over(stream);
    }
}

/// Carries a visit whose header was read: `stream` is answered with a stream reply (the
/// server's refusal, its own `Ok`, or the routing client's answer), then spliced to the target
/// (a UDP flow: relayed to a socket connected to it). Whether the carrying failed.
async fn visit(
    shared: &Shared,
    from: &Visitor,
    stream: &mut MuxStream,
    target: &VisitTarget,
    (visitor, protocol): (SocketAddr, Protocol),
) -> bool {
    let upstream = match connect(shared, from, target, visitor, protocol).await {
        Ok(upstream) => upstream,
        Err(refusal) => {
            log_refusal(shared, from, target, visitor, &refusal);
            // Best effort: the client closes its visitor on reading this.
            let _ = stream.write_all(&refusal.encode()).await;
            let _ = stream.shutdown().await;
            return false;
        }
    };
    let client = crate::log::Escaped(&from.name);
    match upstream {
        Upstream::Udp(socket) => {
            if stream.write_all(&StreamReply::ok().encode()).await.is_err() {
                return true;
            }
            match crate::udp::relay(stream, &socket, crate::udp::DEFAULT_FLOW_IDLE, None).await {
                Ok(stats) => tracing::trace!(%client, to = %target, ?stats, "server-side UDP flow done"),
                Err(err) => tracing::debug!(%client, to = %target, "server-side UDP flow failed: {err}"),
            }
            false
        }
        Upstream::Tcp(mut tcp) => {
            if stream.write_all(&StreamReply::ok().encode()).await.is_err() {
                transport::reset_on_close(&tcp);
                return true;
            }
            let carried = splice(stream, &mut tcp).await;
            match &carried {
                Ok(_) => transport::close_in_order(&tcp),
                Err(err) => tracing::debug!(%client, to = %target, "server-side visit failed: {err}"),
            }
            carried.is_err()
        }
        Upstream::Client { stream: mut upstream, answers } => {
            // The routing client's answer passes through with the data after it.
            if !answers && stream.write_all(&StreamReply::ok().encode()).await.is_err() {
                return true; // Dropping the upstream resets it.
            }
            let carried = splice(stream, &mut upstream).await;
            if let Err(err) = &carried {
                tracing::debug!(%client, to = %target, "visit failed: {err}");
                upstream.reset();
            }
            carried.is_err()
        }
    }
}

/// Counts a refused visit and logs it (once per window, with a count of the rest).
pub(super) fn log_refusal(
    shared: &Shared,
    from: &Visitor,
    target: &VisitTarget,
    visitor: SocketAddr,
    refusal: &StreamReply,
) {
    shared.metrics.refused(&format!("visit: {}", refusal.status));
    if crate::log::REFUSALS.allow() {
        tracing::info!(client = %crate::log::Escaped(&from.name), to = %target, %visitor, "visit refused ({}): {}", refusal.status, crate::log::Escaped(&refusal.message));
    }
}

/// Where an allowed visit goes, connected.
pub(super) enum Upstream {
    /// A target the server dialed itself.
    Tcp(TcpStream),
    /// A socket connected to a target the server sends a UDP flow to itself.
    Udp(UdpSocket),
    /// A stream to the client serving the target, its header written.
    Client {
        stream: MuxStream,
        /// Whether that client answers with a stream reply before the data (a network visit,
        /// where it dials); else the server answers for it.
        answers: bool,
    },
}

/// Checks the rules and connects toward `target`; `Err` is the refusal to send back.
pub(super) async fn connect(
    shared: &Shared,
    from: &Visitor,
    target: &VisitTarget,
    visitor: SocketAddr,
    protocol: Protocol,
) -> Result<Upstream, StreamReply> {
    match target {
        VisitTarget::Service { .. } if protocol == Protocol::Udp => {
            Err(StreamReply::refuse(ReplyStatus::Denied, "services carry TCP only, not UDP"))
        }
        VisitTarget::Service { client, service } => {
            // Rules first, from the configuration alone: a refused visitor learns nothing about
            // whether the owner is online or exposes the service.
            let config = shared.config();
            let owner_credential = config.credential_of(client);
            if !config.rules(&from.name, from.credential).may_visit(client, owner_credential, service) {
                return Err(StreamReply::refuse(
                    ReplyStatus::Denied,
                    format!("client {:?} may not visit {client}/{service}", from.name),
                ));
            }
            let opener = shared.registry.service(client, service).map_err(|lookup| {
                let why = match lookup {
                    ServiceLookup::ClientOffline => format!("client {client:?} is not connected"),
                    ServiceLookup::NoSuchService => {
                        format!("client {client:?} exposes no service {service:?}")
                    }
                };
                StreamReply::refuse(ReplyStatus::Unavailable, why)
            })?;
            let header =
                StreamHeader::ServiceVisit { service: service.clone(), from: from.name.clone(), visitor };
            let stream = open_with(&opener, &header).await.map_err(|e| {
                StreamReply::refuse(ReplyStatus::Unavailable, format!("cannot reach client {client:?}: {e}"))
            })?;
            tracing::debug!(client = %crate::log::Escaped(&from.name), to = %target, %visitor, "visiting service");
            Ok(Upstream::Client { stream, answers: false })
        }
        VisitTarget::Address(addr) => {
            let routed =
                addr.host.parse::<IpAddr>().ok().and_then(|ip| Some((ip, shared.networks.lookup(ip)?)));
            if let Some((ip, hit)) = routed {
                let target = SocketAddr::new(ip, addr.port);
                return connect_network(shared, from, hit, target, (visitor, protocol)).await;
            }
            let config = shared.config();
            let rules = config.rules(&from.name, from.credential).targets();
            let resolved = resolve_allowed(addr, rules, config.timeouts.lookup).await?;
            if protocol == Protocol::Udp {
                // One datagram to many: never, whatever the rules (as a wide network never
                // carries them either).
                let ip = resolved.ip().to_canonical();
                let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
                if ip.is_multicast() || ip.is_unspecified() || broadcast {
                    return Err(StreamReply::refuse(
                        ReplyStatus::Denied,
                        format!("{addr}: the server sends UDP to one host only, not to {ip}"),
                    ));
                }
                let socket = crate::udp::connect(resolved)
                    .await
                    .map_err(|err| StreamReply::connect_failed(addr, &err))?;
                tracing::debug!(client = %crate::log::Escaped(&from.name), %addr, %resolved, %visitor, "UDP flow to a server-side target");
                return Ok(Upstream::Udp(socket));
            }
            // Set to reset on close before it connects, until the visit ends in order: if this
            // process dies mid-upload (or before the first byte), the target sees a reset, not
            // a FIN that ends the upload early.
            let socket = if resolved.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
            let socket = socket.map_err(|err| StreamReply::connect_failed(addr, &err))?;
            let _ = socket.set_zero_linger();
            let connect = tokio::time::timeout(config.timeouts.connect, socket.connect(resolved));
            let tcp = match connect.await {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(err)) => return Err(StreamReply::connect_failed(addr, &err)),
                Err(_) => {
                    return Err(StreamReply::refuse(
                        ReplyStatus::TimedOut,
                        format!("{addr}: connect timed out"),
                    ))
                }
            };
            let _ = transport::configure_tcp(&tcp);
            tracing::debug!(client = %crate::log::Escaped(&from.name), %addr, %resolved, %visitor, "visiting server-side target");
            Ok(Upstream::Tcp(tcp))
        }
    }
}

/// Opens a stream through `opener` and writes `header` on it.
async fn open_with(opener: &crate::mux::StreamOpener, header: &StreamHeader) -> Result<MuxStream, String> {
    let mut stream = opener.open().await.map_err(|e| crate::log::Chain(&e).to_string())?;
    stream.write_all(&header.encode()).await.map_err(|e| e.to_string())?;
    Ok(stream)
}

/// A stream to the client routing the target's network, if the rules let this client visit
/// it there. That client dials, and answers first.
async fn connect_network(
    shared: &Shared,
    from: &Visitor,
    hit: NetworkHit,
    target: SocketAddr,
    (visitor, protocol): (SocketAddr, Protocol),
) -> Result<Upstream, StreamReply> {
    let config = shared.config();
    let (owner, net) = (&hit.owner.name, hit.net);
    // Rules first, from the configuration alone: a refused visitor learns nothing of whether
    // the owner is online.
    if !config.rules(&from.name, from.credential).may_visit_network(owner, hit.owner.credential, target) {
        return Err(StreamReply::refuse(
            ReplyStatus::Denied,
            format!("client {:?} may not visit {target} in network {owner}/{net}", from.name),
        ));
    }
    // As the routing client checks too (one of an older version may not): a wide network does
    // not carry that client's own loopback, link-local or cloud metadata addresses.
    if let Some(range) = crate::proto::IpNet::special_range(target.ip()).filter(|range| !range.covers(&net)) {
        return Err(StreamReply::refuse(
            ReplyStatus::Denied,
            format!("{target} is in {range}, which {owner}/{net} does not carry"),
        ));
    }
    let unavailable = |why: String| StreamReply::refuse(ReplyStatus::Unavailable, why);
    if protocol == Protocol::Udp && hit.version < crate::proto::UDP_VERSION {
        return Err(unavailable(format!(
            "client {owner:?}, which routes {net}, speaks protocol {}: UDP into its networks needs {}",
            hit.version,
            crate::proto::UDP_VERSION
        )));
    }
    let opener = hit
        .opener
        .ok_or_else(|| unavailable(format!("client {owner:?}, which routes {net}, is not connected")))?;
    let (route_id, from_name) = (hit.route, from.name.clone());
    let header = match protocol {
        Protocol::Tcp => StreamHeader::NetworkVisit { route_id, target, from: from_name, visitor },
        Protocol::Udp => StreamHeader::NetworkDatagrams { route_id, target, from: from_name, visitor },
    };
    let stream = open_with(&opener, &header)
        .await
        .map_err(|e| unavailable(format!("cannot reach client {owner:?}, which routes {net}: {e}")))?;
    tracing::debug!(client = %crate::log::Escaped(&from.name), to = %target, owner = %crate::log::Escaped(owner), "visiting a routed network");
    Ok(Upstream::Client { stream, answers: true })
}

/// Resolves `addr` and returns the first address the rules allow. An IP address is checked
/// against the network rules; a host name must be allowed by name before it is looked up (no
/// lookup is ever made for a name the rules do not list), and the lookup has a deadline. The
/// check and the connection use the same address, so a DNS answer cannot change between them.
async fn resolve_allowed(
    addr: &TargetAddr,
    rules: &crate::forward::TargetRules,
    deadline: Duration,
) -> Result<SocketAddr, StreamReply> {
    let denied =
        || StreamReply::refuse(ReplyStatus::Denied, format!("{addr} is not in the server's allow_targets"));
    if let Ok(ip) = addr.host.parse::<std::net::IpAddr>() {
        return if rules.allows_ip(ip, addr.port) {
            Ok(SocketAddr::new(ip, addr.port))
        } else {
            Err(denied())
        };
    }
    if !rules.allows_name(&addr.host, addr.port) {
        return Err(denied());
    }
    let unreachable = |why: String| StreamReply::refuse(ReplyStatus::Unreachable, why);
    let lookup = tokio::time::timeout(deadline, tokio::net::lookup_host((addr.host.as_str(), addr.port)));
    let mut candidates = lookup
        .await
        .map_err(|_| unreachable(format!("cannot resolve {}: no answer within {deadline:?}", addr.host)))?
        .map_err(|e| unreachable(format!("cannot resolve {}: {e}", addr.host)))?;
    candidates.next().ok_or_else(|| unreachable(format!("{} has no address", addr.host)))
}
