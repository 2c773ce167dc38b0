//! SOCKS5 UDP associations (RFC 1928 section 7), the part both proxies share (the client's
//! `-D` and the server's `--socks-listen`): a relay socket for one SOCKS client, alive while
//! its TCP connection is. Each destination its datagrams name is a flow; answers come back
//! with that destination in their SOCKS header.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::{carry_flow, FlowInbox, Flows, DEFAULT_FLOW_IDLE};
use crate::proto::datagram::MAX_DATAGRAM;
use crate::proto::TargetAddr;
use crate::socks::codec::{encode_udp, parse_udp};
use crate::socks::{self, Destination, Reply};

/// How an association ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The SOCKS client closed its TCP connection (or it broke).
    Closed,
    /// `stop` resolved.
    Stopped,
}

/// Binds the relay socket where the SOCKS client reached the proxy (reachable the same way)
/// and tells the client its address; `Err` once the failure was answered, or when the client
/// is gone.
pub(crate) async fn open_relay(tcp: &mut TcpStream) -> io::Result<UdpSocket> {
    let relay = match tcp.local_addr() {
        Ok(local) => UdpSocket::bind((local.ip(), 0)).await.and_then(|s| Ok((canonical(s.local_addr()?), s))),
        Err(err) => Err(err),
    };
    match relay {
        Ok((relay_addr, socket)) => {
            socks::reply(tcp, Reply::Succeeded, Some(relay_addr)).await?;
            Ok(socket)
        }
        Err(err) => {
            let _ = socks::reply(tcp, Reply::GeneralFailure, None).await;
            Err(err)
        }
    }
}

/// Relays an association on `socket` until `tcp` closes or `stop` resolves. Datagrams are
/// taken only from the SOCKS client's address: the one its request named (`requested`), else
/// the first port of its host (`peer`) that sends; malformed and fragmented ones are dropped.
/// Each destination is a flow of `flows` (whose cap and way of making room are the caller's)
/// on the stream `open` gives for it; the flows end with the association.
pub(crate) async fn relay_association<O, OF, S>(
    tcp: &mut TcpStream,
    socket: UdpSocket,
    (peer, requested): (IpAddr, &Destination),
    mut flows: Flows<Destination>,
    stop: impl Future<Output = ()>,
    mut open: O,
) -> Ended
where
    O: FnMut(TargetAddr) -> OF,
    OF: Future<Output = io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let socket = Arc::new(socket);
    let peer = peer.to_canonical();
    let mut client = match requested {
        Destination::Ip(addr) if addr.port() != 0 && addr.ip().to_canonical() == peer => Some(*addr),
        _ => None,
    };
    // Cancelled when the association ends: its flows end with it.
    let ended = CancellationToken::new();
    let _ended = ended.clone().drop_guard();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut control = [0u8; 256];
    tokio::pin!(stop);
    loop {
        let received = tokio::select! {
            // The association lives as long as the TCP connection (whatever it sends).
            read = tcp.read(&mut control) => match read {
                Ok(0) | Err(_) => return Ended::Closed,
                Ok(_) => continue,
            },
            () = &mut stop => return Ended::Stopped,
            () = flows.reap() => continue,
            received = socket.recv_from(&mut buf) => received,
        };
        let Ok((len, sender)) = received else { continue };
        // Compared in canonical form (a dual-stack relay sees IPv4 clients mapped); answers
        // go to the address as received.
        let seen = canonical(sender);
        if seen.ip() != peer || canonical(*client.get_or_insert(sender)) != seen {
            continue; // Not this association's client.
        }
        let Ok((destination, payload)) = parse_udp(&buf[..len]) else { continue };
        let Ok(target) = destination.to_target() else { continue };
        let payload = Bytes::copy_from_slice(payload);
        flows.offer(destination.clone(), payload, |inbox| {
            let socket = socket.clone();
            let deliver = move |datagram: Bytes| {
                let (socket, wrapped) = (socket.clone(), encode_udp(&destination, &datagram));
                async move { socket.send_to(&wrapped, sender).await.is_ok() }
            };
            let opening = Box::pin(open(target.clone()));
            tokio::spawn(flow(inbox, opening, deliver, target, ended.clone()));
            true
        });
    }
}

/// One flow of an association to `target`, until it ends or the association does (`ended`):
/// the task itself. Its carry is made inside the `select!` that runs it, and its opening comes
/// boxed, so that the task holds each once (the carry made beforehand and captured was kept
/// twice: 5.6 KB per flow, against 2.1).
pub(super) async fn flow<S, D, DF>(
    inbox: FlowInbox<Destination>,
    opening: Pin<Box<impl Future<Output = io::Result<S>>>>,
    deliver: D,
    target: TargetAddr,
    ended: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    D: FnMut(Bytes) -> DF,
    DF: Future<Output = bool>,
{
    tokio::select! {
        () = ended.cancelled() => {}
        carried = carry_flow(inbox, opening, |_| (), deliver, DEFAULT_FLOW_IDLE) => match carried {
            Ok(stats) => tracing::trace!(to = %target, ?stats, "SOCKS UDP flow done"),
            Err(err) => tracing::debug!(to = %target, "SOCKS UDP flow ended: {err}"),
        },
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
