//! UDP flows the server opens toward this client: a UDP route's visitor, or datagrams into a
//! network this client routes. Each gets a socket of its own, connected to the target.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::streams::{allowed_in, answer_refusal};
use crate::forward::{IpNet, TargetAddr};
use crate::log::Escaped;
use crate::mux::MuxStream;
use crate::proto::StreamReply;
use crate::udp;

/// Time allowed to resolve a target's name.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Carries a UDP route's flow to `target` (resolved now: the flow keeps the address).
/// `first` goes before the first datagram (a PROXY protocol v2 header).
pub(super) async fn forward(
    stream: MuxStream,
    target: &TargetAddr,
    visitor: SocketAddr,
    idle: Duration,
    first: Option<Vec<u8>>,
    via: &str,
) {
    let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
    let addr = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
        Ok(Ok(mut addrs)) => addrs.next(),
        Ok(Err(err)) => {
            return crate::log::warn_limited!(crate::log::VISIT_FAILURES, %visitor, to = %target, "{via}: cannot resolve the target: {err}")
        }
        Err(_) => {
            return crate::log::warn_limited!(crate::log::VISIT_FAILURES, %visitor, to = %target, "{via}: no address for the target within {LOOKUP_TIMEOUT:?}")
        }
    };
    let Some(addr) = addr else {
        return crate::log::warn_limited!(crate::log::VISIT_FAILURES, %visitor, to = %target, "{via}: the target has no address");
    };
    let socket = match udp::connect(addr).await {
        Ok(socket) => socket,
        Err(err) => {
            return crate::log::warn_limited!(crate::log::VISIT_FAILURES, %visitor, to = %target, "{via}: cannot open a UDP socket to the target: {err}")
        }
    };
    match udp::relay(stream, &socket, idle, first).await {
        Ok(stats) => tracing::trace!(%visitor, to = %target, ?stats, "{via}: UDP flow done"),
        Err(err) => tracing::debug!(%visitor, to = %target, "{via}: UDP flow failed: {err}"),
    }
}

/// Datagrams into a network this client routes: sent only inside that network, answered
/// (socket ready, or why not) before any flows back.
pub(super) async fn visit_network(
    mut stream: MuxStream,
    net: Option<IpNet>,
    target: SocketAddr,
    from: &str,
    visitor: SocketAddr,
) {
    let from = Escaped(from);
    let socket = match allowed_in(net, target) {
        Ok(target) => udp::connect(target).await.map_err(|err| StreamReply::connect_failed(target, &err)),
        Err(refusal) => Err(refusal),
    };
    let socket = match socket {
        Ok(socket) => socket,
        Err(reply) => {
            crate::log::info_limited!(crate::log::VISIT_FAILURES, %visitor, to = %target, %from, "network datagrams refused ({}): {}", reply.status, Escaped(&reply.message));
            return answer_refusal(&mut stream, &reply).await;
        }
    };
    if stream.write_all(&StreamReply::ok().encode()).await.is_err() {
        return;
    }
    match udp::relay(stream, &socket, udp::DEFAULT_FLOW_IDLE, None).await {
        Ok(stats) => tracing::trace!(%visitor, to = %target, %from, ?stats, "network datagrams done"),
        Err(err) => tracing::debug!(%visitor, to = %target, %from, "network datagrams failed: {err}"),
    }
}
