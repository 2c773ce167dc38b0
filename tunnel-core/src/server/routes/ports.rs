//! A session's port routes: its places in the TCP listeners and UDP sockets on public ports,
//! which it shares with the other replicas of its client name
//! ([`crate::server::port_listeners`]).

use std::net::{IpAddr, SocketAddr};

use tokio_util::sync::CancellationToken;

use super::SessionRoutes;
use crate::forward::Protocol;
use crate::log::Escaped;
use crate::proto::{RefusalCode, RouteId};
use crate::server::forwards::{Member, Refusal, StreamKind};
use crate::server::port_listeners::{Carriage, Shape};

/// A TCP or UDP route this session serves.
pub(super) struct PortRoute {
    /// What the client asked for.
    pub(super) shape: Shape,
    pub(super) public_addr: SocketAddr,
    /// Cuts this session's visitors of the route.
    pub(super) owned: CancellationToken,
}

impl PortRoute {
    pub(super) fn protocol_name(&self) -> &'static str {
        match self.shape.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

impl SessionRoutes<'_> {
    /// Serves a port route, `at` (bind address, port, preferred port): joins the socket
    /// another replica of this client has bound for it, or binds one. `idle_secs` is a UDP
    /// route's flow idle time.
    pub(super) async fn add_port(
        &mut self,
        id: RouteId,
        kind: StreamKind,
        protocol: Protocol,
        at: (Option<IpAddr>, u16, u16),
        idle_secs: Option<u32>,
    ) -> Result<SocketAddr, Refusal> {
        let (bind, port, preferred) = at;
        let limit = self.shared.config().max_forwards_per_client;
        if self.ports.len() >= limit {
            return Err((
                RefusalCode::TooManyForwards,
                format!("this client already holds {limit} forwards"),
            ));
        }
        if port != 0
            && self.ports.values().any(|r| r.shape.protocol == protocol && r.public_addr.port() == port)
        {
            return Err((
                RefusalCode::PortTaken,
                format!("port {port} is already used by another route of this client"),
            ));
        }
        let shape = Shape { protocol, bind, port, idle_secs: idle_secs.unwrap_or(0) };
        let owned = self.owned.child_token();
        let member = Member {
            session: self.session,
            opener: self.opener.clone(),
            owned: owned.clone(),
            accepting: self.accepting.clone(),
            visitors: self.visitors.clone(),
        };
        let carriage = || {
            let config = self.shared.config();
            Carriage {
                kind,
                client: self.name.as_str().into(),
                metrics: self.shared.metrics.clone(),
                max_visitors: config.max_visitors_per_forward,
                max_per_source: config.max_visitors_per_source,
            }
        };
        let binder = self.binder();
        // A replica joining the socket another bound is held to the rules in force too.
        let allow = |public_addr| binder.still_allowed(bind, public_addr);
        let bound = || binder.bind(id, protocol, bind, port, preferred);
        let joined = self.shared.ports.join((&self.name, id), shape, member, (carriage, allow), bound);
        let public_addr = joined.await?;
        let route = PortRoute { shape, public_addr, owned };
        tracing::debug!(client = %Escaped(&self.name), route = %id, %public_addr, "{} route listening", route.protocol_name());
        self.ports.insert(id, route);
        Ok(public_addr)
    }

    /// Leaves port route `id` (already taken out of `self.ports`): its visitors are cut, and
    /// when this session was the socket's last member, the socket is closed and its port is
    /// returned, for the caller to give back.
    pub(super) async fn leave_port(&self, id: RouteId, route: PortRoute) -> Option<u16> {
        route.owned.cancel();
        self.shared.ports.leave(&self.name, id, self.session).await
    }
}
