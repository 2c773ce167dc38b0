//! UDP ASSOCIATE on the server's SOCKS listener: each destination of a logged-in client's
//! association is a UDP visit of that client, with the rules its `-L udp:` would get: into a
//! network another client routes, or to a target the server may send to itself
//! (`udp::associate` relays). It ends when its token is revoked or the server drains too.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::socks::{max_visits, revoked, LoginVisit, LoginVisits, Stream};
use super::visits::{self, Upstream, Visitor};
use super::Shared;
use crate::auth::Credentials;
use crate::forward::{Protocol, VisitTarget};
use crate::log::Escaped;
use crate::proto::ReplyStatus;
use crate::socks::Destination;
use crate::udp::associate::{open_relay, relay_association, Ended};
use crate::udp::DEFAULT_FLOW_IDLE;

/// Most destinations one association sends to at once; datagrams to more are dropped. Each
/// is a socket of the server's, or a stream to a client, and one of its login's visits
/// (`max_visits_per_client` for all its connections and associations together).
const MAX_FLOWS: usize = 32;
/// Bytes buffered between a flow and the socket the server sends it from.
const PIPE: usize = 256 * 1024;

/// Serves one association of client `from` (logged in with `at_login`) until its TCP
/// connection closes, its token is revoked or the server drains.
pub(super) async fn associate(
    shared: &Arc<Shared>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    from: Visitor,
    at_login: &Credentials,
    requested: &Destination,
) {
    let name = Escaped(&from.name).to_string();
    let socket = match open_relay(&mut tcp).await {
        Ok(socket) => socket,
        Err(err) => return tracing::warn!(client = %name, %peer, "SOCKS UDP ASSOCIATE: no relay: {err}"),
    };
    let stop = async {
        tokio::select! {
            () = revoked(shared, at_login, &from.name) => {}
            () = shared.draining.cancelled() => {}
        }
    };
    let stream_to = |target| {
        let (shared, from) = (shared.clone(), from.clone());
        async move { open(&shared, &from, &VisitTarget::Address(target), peer).await }
    };
    let flows = crate::udp::Flows::new(MAX_FLOWS);
    let ended = relay_association(&mut tcp, socket, (peer.ip(), requested), flows, stop, stream_to).await;
    if ended == Ended::Stopped {
        tracing::debug!(client = %name, %peer, "SOCKS UDP association ended: its token was revoked, or the server drains");
        crate::transport::reset_on_close(&tcp);
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
    let visit = shared
        .socks_visits
        .take(&from.name, max_visits(&shared.config()))
        .ok_or_else(|| io::Error::other(LoginVisits::FULL))?;
    let stream = carrier(shared, from, target, peer).await?;
    Ok(Box::new(Counted { stream, _visit: visit }))
}

/// The stream itself, as [`open`] says.
async fn carrier(
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
            let wait = config.timeouts.connect.saturating_add(config.timeouts.lookup);
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

/// A flow's stream holding its place among its login's visits until it is dropped.
struct Counted {
    stream: Box<dyn Stream>,
    _visit: LoginVisit,
}

impl AsyncRead for Counted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Stream for Counted {
    fn ended_in_order(&self) {
        self.stream.ended_in_order();
    }
}
