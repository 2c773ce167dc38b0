//! UDP routes on the server: each visitor address is a flow, carried on a stream of its own to
//! the owning client, which sends the datagrams on to the target and its answers back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::forwards::{Carrier, Member, StreamKind};
use crate::proto::datagram::MAX_DATAGRAM;
use crate::proto::StreamHeader;
use crate::source::Source;
use crate::udp::{carry_flow, FlowInbox, Flows, Offer};

/// How long after its answer a flow may be ended for a new visitor's, when the route's flows
/// or its visitor's source's are all taken. Visitors that ask once and go (a resolver asking
/// from a new port each time) then never lock a route for its idle time, while a flow that
/// awaits an answer, or was answered within this, keeps its place. At 256 flows per source,
/// one source may start about 1,000 a second. (A client's own UDP tables, of 32 flows, wait
/// 100 ms: `client::locals::MAKE_ROOM_AFTER`.)
const MAKE_ROOM_AFTER: Duration = Duration::from_millis(250);

/// Receives datagrams until `stop` (the route is removed, or its sessions drain). A visitor's
/// first datagram starts its flow, within the forward's caps on visitors (flows) per route
/// and per source address, on the least busy member session; the flow ends with that session
/// or its drain (UDP has no connection to finish). When a cap is reached, a new flow takes the
/// place of one done with (`Flows::evicting`), one of its own source's when that is the cap
/// reached. Returns once every flow has let go of the socket, so its port can be bound again.
pub(super) async fn serve(socket: UdpSocket, carrier: Carrier, idle: Duration, stop: CancellationToken) {
    let flows = TaskTracker::new();
    let socket = Arc::new(socket);
    tokio::select! {
        () = stop.cancelled() => {}
        () = receive(socket.clone(), &carrier, idle, &flows) => {}
    }
    // The socket stops when no member takes visitors: every flow is ending with its member's
    // drain or departure.
    flows.close();
    flows.wait().await;
}

async fn receive(socket: Arc<UdpSocket>, carrier: &Carrier, idle: Duration, tasks: &TaskTracker) {
    let local = socket.local_addr().ok();
    let mut flows = Flows::evicting(carrier.max_visitors, MAKE_ROOM_AFTER)
        .per_source(carrier.max_per_source, |visitor: &SocketAddr| Source::from(visitor.ip()));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            () = flows.reap() => continue,
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, visitor) = match received {
            Ok(received) => received,
            // The ICMP error of an earlier answer to a visitor that went away.
            Err(_) => continue,
        };
        let datagram = Bytes::copy_from_slice(&buf[..len]);
        let mut unserved = false;
        let offer = flows.offer(visitor, datagram, |inbox| {
            let started = carrier.members.pick(|member| {
                let (socket, carrier, member_of_flow) = (socket.clone(), carrier.clone(), member.clone());
                let flow = Flow { visitor, local, socket, carrier, member: member_of_flow };
                member.visitors.spawn(tasks.track_future(flow.carry(inbox, idle)));
            });
            unserved = started.is_none();
            !unserved
        });
        match offer {
            Offer::Queued | Offer::Started => {}
            Offer::QueueFull => carrier.metrics.datagram_dropped("queue full"),
            Offer::Refused if unserved => carrier.metrics.datagram_dropped("no session"),
            Offer::Refused => {
                carrier.metrics.datagram_dropped("over a cap");
                if crate::log::REFUSALS.allow() {
                    let (route, per_route, per_source) =
                        (carrier.kind, carrier.max_visitors, carrier.max_per_source);
                    tracing::info!(
                        %visitor,
                        %route,
                        "UDP flow refused: over a cap ({per_route} flows per route, {per_source} per source \
                         address; none done with to make room)"
                    );
                }
            }
        }
    }
}

/// One visitor's flow.
struct Flow {
    visitor: SocketAddr,
    local: Option<SocketAddr>,
    socket: Arc<UdpSocket>,
    carrier: Carrier,
    member: Member,
}

impl Flow {
    async fn carry(self, inbox: FlowInbox<SocketAddr>, idle: Duration) {
        let Self { visitor, local, socket, carrier, member } = self;
        let route = carrier.kind;
        let header = match route {
            StreamKind::Route(route_id) => StreamHeader::Route { route_id, visitor, local },
            // Version 1 forwards are TCP only.
            StreamKind::Forward(_) => return,
        };
        let (_open, meter) = carrier.metrics.visitor(&carrier.client, &route.label());
        let open = async {
            let mut stream = member.opener.open().await.map_err(std::io::Error::other)?;
            stream.write_all(&header.encode()).await?;
            Ok(stream)
        };
        let counted = |len: usize| {
            meter.from_visitor.inc_by(len as u64);
        };
        let deliver = |datagram: Bytes| {
            let socket = socket.clone();
            meter.to_visitor.inc_by(datagram.len() as u64);
            async move { socket.send_to(&datagram, visitor).await.is_ok() }
        };
        let carried = tokio::select! {
            () = member.owned.cancelled() => return,
            // UDP has no connection to finish: a draining session's flows end at once.
            () = member.accepting.cancelled() => return,
            carried = carry_flow(inbox, open, counted, deliver, idle) => carried,
        };
        match carried {
            Ok(stats) => tracing::trace!(%visitor, %route, ?stats, "UDP flow done"),
            Err(err) => tracing::debug!(%visitor, %route, "UDP flow failed: {}", crate::log::Chain(&err)),
        }
    }
}
