//! UDP ASSOCIATE on the client's SOCKS proxies: each destination of the association is a flow
//! through the server, as a UDP local forward to that address would be (`udp::associate`
//! relays).

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::locals::open_datagrams;
use crate::mux::StreamOpener;
use crate::socks::Destination;
use crate::udp::associate::{open_relay, relay_association};

/// Most destinations one association sends to at once; datagrams to more are dropped.
const MAX_FLOWS: usize = 256;

/// Serves one association until its TCP connection closes.
pub(super) async fn associate(
    mut tcp: TcpStream,
    visitor: SocketAddr,
    opener: StreamOpener,
    requested: &Destination,
) {
    let socket = match open_relay(&mut tcp).await {
        Ok(socket) => socket,
        Err(err) => {
            return crate::log::warn_limited!(crate::log::VISIT_FAILURES, %visitor, "SOCKS UDP ASSOCIATE: no relay: {err}")
        }
    };
    let stream_to = |target| {
        let opener = opener.clone();
        async move { open_datagrams(&opener, &target, visitor).await }
    };
    let peer = (visitor.ip(), requested);
    relay_association(&mut tcp, socket, peer, MAX_FLOWS, std::future::pending(), stream_to).await;
}
