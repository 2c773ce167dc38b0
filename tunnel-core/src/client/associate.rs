//! UDP ASSOCIATE on the client's SOCKS proxies: each destination of the association is a flow
//! through the server, as a UDP local forward to that address would be (`udp::associate`
//! relays).

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::locals::open_datagrams;
use crate::mux::StreamOpener;
use crate::socks::Destination;
use crate::udp::associate::{open_relay, relay_association};
use crate::udp::Flows;

/// Most destinations one association sends to at once, each a stream: when all are taken, a
/// new one takes the place of one done with for now, as on a UDP local forward.
const MAX_FLOWS: usize = 32;

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
    let flows = Flows::evicting(MAX_FLOWS, super::locals::MAKE_ROOM_AFTER);
    relay_association(&mut tcp, socket, peer, flows, std::future::pending(), stream_to).await;
}
