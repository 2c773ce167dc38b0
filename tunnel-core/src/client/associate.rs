//! UDP ASSOCIATE on the client's SOCKS proxies (RFC 1928 section 7): a relay socket for one
//! SOCKS client, alive while its TCP connection is. Each destination its datagrams name is a
//! flow through the server, as a UDP local forward to that address would be; answers come
//! back with the destination in their SOCKS header.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::locals::open_datagrams;
use crate::mux::StreamOpener;
use crate::proto::datagram::MAX_DATAGRAM;
use crate::socks::{self, Destination, Reply};
use crate::udp::{carry_flow, FlowInbox, Flows};

/// Most destinations one association sends to at once; datagrams to more are dropped.
const MAX_FLOWS: usize = 256;

/// Serves one association: tells the SOCKS client where the relay socket is, then relays
/// until its TCP connection closes. Datagrams are taken only from the SOCKS client's address:
/// the one its request named, else the first port of its host that sends.
pub(super) async fn associate(
    mut tcp: TcpStream,
    visitor: SocketAddr,
    opener: StreamOpener,
    requested: &Destination,
) {
    let peer_ip = visitor.ip().to_canonical();
    // The relay listens where the SOCKS client reached the proxy: reachable the same way.
    let relay = match tcp.local_addr() {
        Ok(local) => UdpSocket::bind((local.ip(), 0)).await.and_then(|s| Ok((canonical(s.local_addr()?), s))),
        Err(err) => Err(err),
    };
    let (relay_addr, socket) = match relay {
        Ok(relay) => relay,
        Err(err) => {
            tracing::warn!(%visitor, "SOCKS UDP ASSOCIATE: no relay socket: {err}");
            let _ = socks::reply(&mut tcp, Reply::GeneralFailure, None).await;
            return;
        }
    };
    if socks::reply(&mut tcp, Reply::Succeeded, Some(relay_addr)).await.is_err() {
        return;
    }
    tracing::debug!(%visitor, %relay_addr, "SOCKS UDP association open");
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
    loop {
        let received = tokio::select! {
            // The association lives as long as the TCP connection (whatever it sends).
            read = tcp.read(&mut control) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            () = flows.reap() => continue,
            received = socket.recv_from(&mut buf) => received,
        };
        let Ok((len, from)) = received else { continue };
        // Compared in canonical form (a dual-stack relay sees IPv4 clients mapped); answers go
        // to the address as received.
        let seen = canonical(from);
        if seen.ip() != peer_ip || canonical(*client.get_or_insert(from)) != seen {
            continue; // Not this association's client.
        }
        let (destination, payload) = match socks::codec::parse_udp(&buf[..len]) {
            Ok(parsed) => parsed,
            Err(err) => {
                tracing::debug!(%visitor, "SOCKS UDP datagram dropped: {err}");
                continue;
            }
        };
        let Ok(target) = destination.to_target() else {
            tracing::debug!(%visitor, %destination, "SOCKS UDP datagram dropped: not a valid destination");
            continue;
        };
        let payload = Bytes::copy_from_slice(payload);
        flows.offer(destination.clone(), payload, |inbox| {
            let flow = Flow { destination, socket: socket.clone(), client: from };
            let (ended, carried) = (ended.clone(), flow.carry(inbox, opener.clone(), target, visitor));
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
    destination: Destination,
    socket: Arc<UdpSocket>,
    /// Where the SOCKS client receives.
    client: SocketAddr,
}

impl Flow {
    async fn carry(
        self,
        inbox: FlowInbox<Destination>,
        opener: StreamOpener,
        target: crate::forward::TargetAddr,
        visitor: SocketAddr,
    ) {
        let Self { destination, socket, client } = self;
        let open = open_datagrams(&opener, &target, visitor);
        let deliver = |datagram: Bytes| {
            let (socket, wrapped) = (socket.clone(), socks::codec::encode_udp(&destination, &datagram));
            async move { socket.send_to(&wrapped, client).await.is_ok() }
        };
        match carry_flow(inbox, open, deliver, crate::udp::DEFAULT_FLOW_IDLE).await {
            Ok(stats) => tracing::trace!(%visitor, %target, ?stats, "SOCKS UDP flow done"),
            Err(err) => tracing::debug!(%visitor, %target, "SOCKS UDP flow ended: {err}"),
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
