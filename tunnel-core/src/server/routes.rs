//! One session's route table on the server: applies each table the client sends (or the
//! version 1 requests that add one forward or service at a time), entry by entry, touching only
//! what changed, and answers each entry.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use tokio_util::sync::CancellationToken;

use super::forwards::{self, Binder, Carrier, Refusal};
use super::registry::SessionId;
use super::Shared;
use crate::auth::CredentialKind;
use crate::log::Escaped;
use crate::mux::StreamOpener;
use crate::proto::handshake::AuthenticatedClient;
use crate::proto::{ControlMessage, RefusalCode, RouteEntry, RouteId, RouteKind, RouteOutcome, RouteResult};
use crate::session::ControlSender;
use crate::task::OwnedTask;

/// A TCP route in service.
struct TcpRoute {
    /// What the client asked for; the same id asking for something else is a new route.
    bind: Option<IpAddr>,
    port: u16,
    public_addr: SocketAddr,
    /// Stops the listener and cuts this route's visitors.
    cut: CancellationToken,
    listener: OwnedTask<()>,
}

pub(super) struct SessionRoutes<'s> {
    shared: &'s Shared,
    name: String,
    credential: CredentialKind,
    session: SessionId,
    opener: StreamOpener,
    /// Cancelled when the session ends: every route's token is a child of it.
    owned: CancellationToken,
    tcp: HashMap<RouteId, TcpRoute>,
    services: HashMap<RouteId, String>,
}

impl<'s> SessionRoutes<'s> {
    pub(super) fn new(
        shared: &'s Shared,
        client: &AuthenticatedClient,
        session: SessionId,
        opener: StreamOpener,
        owned: CancellationToken,
    ) -> Self {
        Self {
            shared,
            name: client.name.clone(),
            credential: client.credential,
            session,
            opener,
            owned,
            tcp: HashMap::new(),
            services: HashMap::new(),
        }
    }

    /// Handles a table or a version 1 request and answers it; `Err` is a protocol violation
    /// that ends the session.
    pub(super) async fn handle(
        &mut self,
        message: ControlMessage,
        control: &ControlSender,
    ) -> Result<(), String> {
        let reply = match message {
            ControlMessage::RouteTable { version, entries } => {
                let results = self.apply(entries).await;
                ControlMessage::RouteTableResult { version, results }
            }
            ControlMessage::RemoteForwardRequest { id, bind, port, preferred_port } => {
                let route = RouteId(u64::from(id));
                if self.tcp.contains_key(&route) {
                    let message = format!("forward id {id} is already in use");
                    ControlMessage::RemoteForwardRefused { id, code: RefusalCode::Invalid, message }
                } else {
                    match self.add_tcp(route, bind, port, preferred_port, true).await {
                        Ok(public_addr) => ControlMessage::RemoteForwardReady { id, public_addr },
                        Err((code, message)) => ControlMessage::RemoteForwardRefused { id, code, message },
                    }
                }
            }
            ControlMessage::ExposeRequest { name } => {
                let route = RouteId::of_service(&name);
                match self.add_service(route, &name) {
                    Ok(()) => ControlMessage::ExposeReady { name },
                    Err((code, message)) => ControlMessage::ExposeRefused { name, code, message },
                }
            }
            other => return Err(format!("unexpected control message from a client: {other:?}")),
        };
        // A failed send means the session is ending; the driver reports why.
        let _ = control.send(reply).await;
        Ok(())
    }

    /// Replaces the table: removes what is gone first (so its ports and names can be taken by
    /// the new entries), keeps what is unchanged, adds the rest; one result per entry.
    async fn apply(&mut self, entries: Vec<RouteEntry>) -> Vec<RouteResult> {
        let wanted: HashSet<RouteId> = entries.iter().map(|e| e.id).collect();
        let gone: Vec<RouteId> =
            self.tcp.keys().chain(self.services.keys()).filter(|id| !wanted.contains(id)).copied().collect();
        for id in gone {
            self.remove(id).await;
        }
        let mut seen = HashSet::new();
        let mut results = Vec::with_capacity(entries.len());
        for RouteEntry { id, kind } in entries {
            let outcome = if !seen.insert(id) {
                Err((RefusalCode::Invalid, format!("route {id} is listed twice")))
            } else {
                self.put(id, kind).await
            };
            let outcome = match outcome {
                Ok(public_addr) => RouteOutcome::Ready { public_addr },
                Err((code, message)) => {
                    if crate::log::REFUSALS.allow() {
                        tracing::info!(client = %Escaped(&self.name), route = %id, "route refused: {}", Escaped(&message));
                    }
                    RouteOutcome::Refused { code, message }
                }
            };
            results.push(RouteResult { id, outcome });
        }
        results
    }

    /// Makes route `id` be `kind`: unchanged, replaced, or new.
    async fn put(&mut self, id: RouteId, kind: RouteKind) -> Result<Option<SocketAddr>, Refusal> {
        match kind {
            RouteKind::Tcp { bind, port, preferred_port } => {
                if let Some(route) = self.tcp.get(&id) {
                    if route.bind == bind && route.port == port {
                        return Ok(Some(route.public_addr));
                    }
                }
                self.remove(id).await;
                self.add_tcp(id, bind, port, preferred_port, false).await.map(Some)
            }
            RouteKind::Service { name } => {
                if self.services.get(&id) == Some(&name) {
                    return Ok(None);
                }
                self.remove(id).await;
                self.add_service(id, &name).map(|()| None)
            }
        }
    }

    async fn add_tcp(
        &mut self,
        id: RouteId,
        bind: Option<IpAddr>,
        port: u16,
        preferred: u16,
        legacy: bool,
    ) -> Result<SocketAddr, Refusal> {
        let limit = self.shared.config.max_forwards_per_client;
        if self.tcp.len() >= limit {
            return Err((
                RefusalCode::TooManyForwards,
                format!("this client already holds {limit} forwards"),
            ));
        }
        let listener = self.binder().bind(id, bind, port, preferred).await?;
        let public_addr = match listener.local_addr() {
            Ok(addr) => addr,
            Err(err) => {
                self.binder().release(port);
                return Err((RefusalCode::Invalid, format!("the bound listener has no address: {err}")));
            }
        };
        let cut = self.owned.child_token();
        let config = &self.shared.config;
        let carrier = Carrier {
            route: id,
            legacy,
            opener: self.opener.clone(),
            owned: cut.clone(),
            max_visitors: config.max_visitors_per_forward,
            max_per_source: config.max_visitors_per_source,
        };
        let listener = OwnedTask::spawn(forwards::serve(listener, carrier));
        tracing::info!(client = %Escaped(&self.name), route = %id, %public_addr, "TCP route listening");
        self.tcp.insert(id, TcpRoute { bind, port, public_addr, cut, listener });
        Ok(public_addr)
    }

    fn add_service(&mut self, id: RouteId, service: &str) -> Result<(), Refusal> {
        if !self.shared.config.rules(&self.name, self.credential).may_expose(service) {
            let message = format!("client {:?} may not expose a service named {service:?}", self.name);
            return Err((RefusalCode::NameNotAllowed, message));
        }
        if self.services.values().any(|s| s == service) {
            return Err((RefusalCode::Invalid, format!("service {service:?} is listed twice")));
        }
        if let Err(cap) = self.shared.registry.expose(&self.name, self.session, service) {
            return Err((
                RefusalCode::TooManyServices,
                format!("this client already exposes {cap} services"),
            ));
        }
        tracing::info!(client = %Escaped(&self.name), service = %Escaped(service), "service exposed");
        self.services.insert(id, service.to_owned());
        Ok(())
    }

    /// Takes a route out of service: its listener closes and its visitors are cut before this
    /// returns, so its port can be bound again at once.
    async fn remove(&mut self, id: RouteId) {
        if let Some(route) = self.tcp.remove(&id) {
            route.cut.cancel();
            let _ = route.listener.await;
            self.binder().release(route.public_addr.port());
            tracing::info!(client = %Escaped(&self.name), route = %id, public_addr = %route.public_addr, "TCP route removed");
        }
        if let Some(service) = self.services.remove(&id) {
            self.shared.registry.unexpose(&self.name, self.session, &service);
            tracing::info!(client = %Escaped(&self.name), service = %Escaped(&service), "service withdrawn");
        }
    }

    fn binder(&self) -> Binder<'_> {
        Binder { shared: self.shared, name: &self.name, credential: self.credential, session: self.session }
    }

    /// Stops every listener and cuts every visitor; returns once the listening sockets are
    /// closed, so the ports can be bound again (by a session replacing this one).
    pub(super) async fn close(self) {
        self.owned.cancel();
        for (_, route) in self.tcp {
            let _ = route.listener.await;
        }
    }
}
