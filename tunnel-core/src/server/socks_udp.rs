//! UDP ASSOCIATE on the server's SOCKS listener: a relay socket for one logged-in SOCKS client,
//! alive while its TCP connection is (and its token accepted). Each destination its datagrams
//! name is a UDP visit of that client, with the rules its `-L udp:` would get: into a network
//! another client routes, or to a target the server may send to itself.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::socks::{revoked, Stream};
use super::visits::{self, Upstream, Visitor};
use super::Shared;
use crate::auth::Credentials;
use crate::forward::{Protocol, VisitTarget};
use crate::log::Escaped;
use crate::proto::datagram::MAX_DATAGRAM;
use crate::proto::ReplyStatus;
use crate::socks::codec::{encode_udp, parse_udp};
use crate::socks::{self, Destination, Reply};
use crate::udp::{carry_flow, FlowInbox, Flows, DEFAULT_FLOW_IDLE};

/// Most destinations one association sends to at once; datagrams to more are dropped. Each
/// is a socket of the server's, or a stream to a client: few, since a login may hold many
/// associations (up to `max_unauthenticated` connections).
const MAX_FLOWS: usize = 32;
/// Bytes buffered between a flow and the socket the server sends it from.
const PIPE: usize = 256 * 1024;

/// Serves one association of client `from` (logged in with `at_login`): tells the SOCKS client
/// where the relay socket is, then relays until its TCP connection closes or its token is
/// revoked (or the server drains). Datagrams are taken only from the SOCKS client's address:
/// the one its request named, else the first port of its host that sends.
pub(super) async fn associate(
    shared: &Arc<Shared>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    from: Visitor,
    at_login: &Credentials,
    requested: &Destination,
) {
    let name = Escaped(&from.name).to_string();
    let peer_ip = peer.ip().to_canonical();
    let relay = match tcp.local_addr() {
        Ok(local) => UdpSocket::bind((local.ip(), 0)).await.and_then(|s| Ok((canonical(s.local_addr()?), s))),
        Err(err) => Err(err),
    };
    let (relay_addr, socket) = match relay {
        Ok(relay) => relay,
        Err(err) => {
            tracing::warn!(client = %name, %peer, "SOCKS UDP ASSOCIATE: no relay socket: {err}");
            let _ = socks::reply(&mut tcp, Reply::GeneralFailure, None).await;
            return;
        }
    };
    if socks::reply(&mut tcp, Reply::Succeeded, Some(relay_addr)).await.is_err() {
        return;
    }
    let socket = Arc::new(socket);
    // The client's address as its request named it (RFC 1928: it may), else the first it
    // sends from.
    let mut client = pinned(requested, peer_ip);
    // Cancelled when the association ends: its flows end with it.
    let ended = CancellationToken::new();
    let _ended = ended.clone().drop_guard();
    let mut flows: Flows<Destination> = Flows::new(MAX_FLOWS);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut control = [0u8; 256];
    let revoked = revoked(shared, at_login, &from.name);
    tokio::pin!(revoked);
    loop {
        let received = tokio::select! {
            read = tcp.read(&mut control) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            () = &mut revoked => {
                tracing::debug!(client = %name, %peer, "SOCKS UDP association ended: its token was revoked");
                return crate::transport::reset_on_close(&tcp);
            }
            () = shared.draining.cancelled() => return,
            () = flows.reap() => continue,
            received = socket.recv_from(&mut buf) => received,
        };
        let Ok((len, sender)) = received else { continue };
        // Compared in canonical form (a dual-stack relay sees IPv4 clients mapped); answers go
        // to the address as received.
        let seen = canonical(sender);
        if seen.ip() != peer_ip || canonical(*client.get_or_insert(sender)) != seen {
            continue; // Not this association's client.
        }
        let Ok((destination, payload)) = parse_udp(&buf[..len]) else { continue };
        let Ok(target) = destination.to_target() else { continue };
        let payload = Bytes::copy_from_slice(payload);
        flows.offer(destination.clone(), payload, |inbox| {
            let flow = Flow {
                shared: shared.clone(),
                from: from.clone(),
                peer,
                destination,
                socket: socket.clone(),
            };
            let (ended, carried) = (ended.clone(), flow.carry(inbox, VisitTarget::Address(target), sender));
            tokio::spawn(async move {
                tokio::select! {
                    () = ended.cancelled() => {}
                    () = carried => {}
                }
            });
            true
        });
    }
}

/// One destination of an association.
struct Flow {
    shared: Arc<Shared>,
    from: Visitor,
    peer: SocketAddr,
    destination: Destination,
    socket: Arc<UdpSocket>,
}

impl Flow {
    async fn carry(self, inbox: FlowInbox<Destination>, target: VisitTarget, client: SocketAddr) {
        let Self { shared, from, peer, destination, socket } = self;
        let open = open(&shared, &from, &target, peer);
        let deliver = |datagram: Bytes| {
            let (socket, wrapped) = (socket.clone(), encode_udp(&destination, &datagram));
            async move { socket.send_to(&wrapped, client).await.is_ok() }
        };
        match carry_flow(inbox, open, deliver, DEFAULT_FLOW_IDLE).await {
            Ok(stats) => {
                tracing::trace!(client = %Escaped(&from.name), %target, ?stats, "SOCKS UDP flow done")
            }
            Err(err) => {
                tracing::debug!(client = %Escaped(&from.name), %target, "SOCKS UDP flow ended: {err}")
            }
        }
    }
}

/// The stream a flow's datagrams go on: to the client routing the target's network (once it
/// answered), or to a relay from a socket of the server's own.
async fn open(
    shared: &Shared,
    from: &Visitor,
    target: &VisitTarget,
    peer: SocketAddr,
) -> io::Result<Box<dyn Stream>> {
    let refused = |status: ReplyStatus, why: &str| io::Error::other(format!("refused ({status}): {why}"));
    match visits::connect(shared, from, target, peer, Protocol::Udp).await {
        Ok(Upstream::Udp(socket)) => {
            let (near, far) = tokio::io::duplex(PIPE);
            tokio::spawn(async move { crate::udp::relay(far, &socket, DEFAULT_FLOW_IDLE, None).await });
            Ok(Box::new(near))
        }
        Ok(Upstream::Client { mut stream, answers: true }) => {
            let config = shared.config();
            let wait = config.timeouts.connect + config.timeouts.lookup;
            let answer = tokio::time::timeout(wait, crate::session::framed::read_reply(&mut stream))
                .await
                .map_err(|_| refused(ReplyStatus::TimedOut, "no answer from the client routing it"))?
                .map_err(io::Error::other)?;
            if answer.status != ReplyStatus::Ok {
                return Err(refused(answer.status, &answer.message));
            }
            Ok(Box::new(stream))
        }
        // A UDP visit is never a service's, nor dialed over TCP.
        Ok(Upstream::Tcp(_) | Upstream::Client { answers: false, .. }) => {
            Err(io::Error::other("not a UDP destination"))
        }
        Err(refusal) => {
            visits::log_refusal(shared, from, target, peer, &refusal);
            Err(refused(refusal.status, &refusal.message))
        }
    }
}

/// The SOCKS client's address, as its UDP ASSOCIATE request named it: an address of the host
/// it connected from with a port (else it is not known yet).
fn pinned(requested: &Destination, peer_ip: std::net::IpAddr) -> Option<SocketAddr> {
    match requested {
        Destination::Ip(addr) if addr.port() != 0 && addr.ip().to_canonical() == peer_ip => Some(*addr),
        _ => None,
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
