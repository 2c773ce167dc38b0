//! A session's port routes: TCP listeners and UDP sockets on public ports.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::SessionRoutes;
use crate::forward::Protocol;
use crate::log::Escaped;
use crate::proto::{RefusalCode, RouteId};
use crate::server::datagrams;
use crate::server::forwards::{self, Bound, Carrier, Refusal, StreamKind};
use crate::task::OwnedTask;

/// A TCP or UDP route in service.
pub(super) struct PortRoute {
    pub(super) protocol: Protocol,
    /// What the client asked for; the same id asking for something else is a new route.
    pub(super) bind: Option<IpAddr>,
    pub(super) port: u16,
    /// A UDP route's flow idle time, as asked.
    pub(super) idle_secs: u32,
    pub(super) public_addr: SocketAddr,
    /// Stops the listener and cuts this route's visitors.
    pub(super) cut: CancellationToken,
    /// `None` once awaited (closed).
    pub(super) listener: Option<OwnedTask<()>>,
}

impl PortRoute {
    /// Returns once the listener has stopped and its socket is closed.
    pub(super) async fn listener_closed(&mut self) {
        if let Some(listener) = self.listener.take() {
            let _ = listener.await;
        }
    }

    pub(super) fn protocol_name(&self) -> &'static str {
        match self.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

impl SessionRoutes<'_> {
    /// Binds a port route, `at` (bind address, port, preferred port), and starts serving it;
    /// `idle_secs` is a UDP route's flow idle time.
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
        if port != 0 && self.ports.values().any(|r| r.protocol == protocol && r.public_addr.port() == port) {
            return Err((
                RefusalCode::PortTaken,
                format!("port {port} is already used by another route of this client"),
            ));
        }
        let (bound, public_addr) = self.binder().bind(id, protocol, bind, port, preferred).await?;
        let cut = self.owned.child_token();
        let config = self.shared.config();
        let carrier = Carrier {
            kind,
            opener: self.opener.clone(),
            owned: cut.clone(),
            accepting: self.accepting.clone(),
            visitors: self.visitors.clone(),
            client: self.name.as_str().into(),
            metrics: self.shared.metrics.clone(),
            max_visitors: config.max_visitors_per_forward,
            max_per_source: config.max_visitors_per_source,
        };
        let idle_secs = idle_secs.unwrap_or(0);
        let listener = Some(match bound {
            Bound::Tcp(listener) => OwnedTask::spawn(forwards::serve(listener, carrier)),
            Bound::Udp(socket) => {
                let idle = Duration::from_secs(idle_secs.into())
                    .clamp(Duration::from_secs(1), crate::udp::MAX_FLOW_IDLE);
                OwnedTask::spawn(datagrams::serve(socket, carrier, idle))
            }
        });
        let route = PortRoute { protocol, bind, port, idle_secs, public_addr, cut, listener };
        tracing::debug!(client = %Escaped(&self.name), route = %id, %public_addr, "{} route listening", route.protocol_name());
        self.ports.insert(id, route);
        Ok(public_addr)
    }
}
