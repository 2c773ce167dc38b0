//! One session's route table on the server: applies each table the client sends (or the
//! version 1 requests that add one forward or service at a time), entry by entry, touching only
//! what changed, and answers each entry. After a reload, [`SessionRoutes::withdraw`] takes out
//! what the new rules no longer allow and [`SessionRoutes::reapply`] applies the table again.

mod costs;
mod ports;
mod recheck;

pub(super) use costs::TableCosts;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::ports::PortRoute;
use super::directory::Listing;
use super::forwards::{Binder, Refusal, StreamKind};
use super::http_routes::SessionHttp;
use super::port_listeners::Shape;
use super::registry::Owner;
use super::registry::SessionId;
use super::{RouteInfo, Shared};
use crate::auth::CredentialKind;
use crate::forward::Protocol;
use crate::http::Matcher;
use crate::log::Escaped;
use crate::mux::StreamOpener;
use crate::proto::handshake::AuthenticatedClient;
use crate::proto::{
    ControlMessage, HostPattern, IpNet, RefusalCode, RouteEntry, RouteId, RouteKind, RouteOutcome,
    RouteResult,
};
use crate::session::ControlSender;

/// How one table changed the session, for its log line and the refusal counts.
#[derive(Debug, Default)]
struct Changes {
    added: usize,
    removed: usize,
    refused: Vec<RefusalCode>,
}

pub(super) struct SessionRoutes<'s> {
    shared: &'s Shared,
    name: String,
    credential: CredentialKind,
    /// The protocol version the session speaks.
    version: u16,
    session: SessionId,
    opener: StreamOpener,
    /// Cancelled when the session ends: every route's token is a child of it.
    owned: CancellationToken,
    /// Cancelled when the session drains: its listeners stop taking visitors.
    accepting: CancellationToken,
    /// The session's visitors (of its TCP routes, and its own visits), for the drain to wait on.
    visitors: TaskTracker,
    /// Set by [`Self::stop_accepting`]: no route changes from then on.
    draining: bool,
    /// Its HTTP and TLS routes are in the edge's index: not once a leaving client's drain
    /// took them out (a reload's withdrawal then publishes nothing again).
    in_edge: bool,
    /// The last table the client sent (version 2 and later), kept to apply it again after a
    /// reload.
    table: Option<(u64, Vec<RouteEntry>)>,
    /// What the last reload withdrew, until the table is applied again (for its answer).
    withdrawn: Vec<(RouteId, Refusal)>,
    /// When the entries refused because another client held their port, host or network are
    /// tried again.
    retry: Option<recheck::Retry>,
    /// TCP and UDP routes.
    ports: HashMap<RouteId, PortRoute>,
    services: HashMap<RouteId, String>,
    http: HashMap<RouteId, Matcher>,
    fallback: Option<RouteId>,
    tls: HashMap<RouteId, HostPattern>,
    networks: HashMap<RouteId, IpNet>,
    /// Ports whose listeners closed as the table being applied removed their routes: their
    /// claims are given back at its end (a new route of the same table that took a port over
    /// holds a claim of its own, so the port stays this client's in between).
    vacated: Vec<u16>,
    /// The session's entry in the server's listing, brought up to date before each answer.
    listing: Listing,
}

impl<'s> SessionRoutes<'s> {
    pub(super) fn new(
        shared: &'s Shared,
        client: &AuthenticatedClient,
        session: SessionId,
        opener: StreamOpener,
        owned: CancellationToken,
        listing: Listing,
    ) -> Self {
        Self {
            shared,
            name: client.name.clone(),
            credential: client.credential,
            version: client.version,
            session,
            opener,
            owned,
            accepting: CancellationToken::new(),
            visitors: TaskTracker::new(),
            draining: false,
            in_edge: true,
            table: None,
            withdrawn: Vec::new(),
            retry: None,
            ports: HashMap::new(),
            services: HashMap::new(),
            http: HashMap::new(),
            fallback: None,
            tls: HashMap::new(),
            networks: HashMap::new(),
            vacated: Vec::new(),
            listing,
        }
    }

    /// Handles a table or a version 1 request and answers it; `Err` is a protocol violation
    /// that ends the session. A table waiting for its turn is given up, unanswered and costing
    /// nothing, once `gone` resolves (the session was replaced or revoked, or the server stops).
    pub(super) async fn handle(
        &mut self,
        message: ControlMessage,
        control: &ControlSender,
        gone: impl std::future::Future<Output = ()>,
    ) -> Result<(), String> {
        if self.draining {
            return self.refuse_while_draining(message, control).await;
        }
        let reply = match message {
            ControlMessage::RouteTable { version, entries } => {
                let cost = costs::table_cost(entries.iter().filter(|entry| !self.has(entry)));
                let payer = (self.credential, self.name.as_str());
                let turn = self.shared.tables.take(payer, cost);
                tokio::select! {
                    () = tokio::time::sleep(turn.wait) => {}
                    () = gone => {
                        self.shared.tables.refund(payer, turn);
                        return Ok(());
                    }
                }
                let (results, changes) = self.apply(entries.clone()).await?;
                self.report(results.len(), &changes);
                self.schedule_retry(results.clone(), None);
                self.table = Some((version, entries));
                // Answered before the next table is read: a client that does not read its
                // answers holds one of them in the server, not a queue of them.
                self.answer(control, ControlMessage::RouteTableResult { version, results }).await;
                return Ok(());
            }
            ControlMessage::RemoteForwardRequest { id, bind, port, preferred_port } => {
                let route = RouteId(u64::from(id));
                let kind = StreamKind::Forward(id);
                let outcome = if self.ports.contains_key(&route) {
                    Err((RefusalCode::Invalid, format!("forward id {id} is already in use")))
                } else {
                    self.add_port(route, kind, Protocol::Tcp, (bind, port, preferred_port), None).await
                };
                match outcome {
                    Ok(public_addr) => ControlMessage::RemoteForwardReady { id, public_addr },
                    Err((code, message)) => {
                        self.count_refusal(code);
                        ControlMessage::RemoteForwardRefused { id, code, message }
                    }
                }
            }
            ControlMessage::ExposeRequest { name } => {
                let route = RouteId::of_service(&name);
                if self.services.get(&route) == Some(&name) {
                    ControlMessage::ExposeReady { name }
                } else {
                    match self.add_service(route, &name) {
                        Ok(()) => ControlMessage::ExposeReady { name },
                        Err((code, message)) => {
                            self.count_refusal(code);
                            ControlMessage::ExposeRefused { name, code, message }
                        }
                    }
                }
            }
            other => return Err(format!("unexpected control message from a client: {other:?}")),
        };
        self.answer(control, reply).await;
        Ok(())
    }

    /// Shows the routes in service in the server's listing, then sends `reply`: a client that
    /// hears an answer (and anyone it tells) finds the same in the listing.
    pub(super) async fn answer(&self, control: &ControlSender, reply: ControlMessage) {
        self.show();
        // A failed send means the session is ending; the driver reports why.
        let _ = control.send_written(reply).await;
    }

    /// Shows the routes in service in the server's listing.
    pub(super) fn show(&self) {
        self.listing.show(self.table.as_ref().map(|(version, _)| *version), self.snapshot());
    }

    /// Counts a refused route in `tunnel_refusals_total`, by its code (`route: host taken`).
    fn count_refusal(&self, code: RefusalCode) {
        self.shared.metrics.refused(&format!("route: {code}"));
    }

    /// Answers a table or request that came after the drain began: entries already in service
    /// as they are, every new or changed one refused; nothing changes.
    async fn refuse_while_draining(
        &mut self,
        message: ControlMessage,
        control: &ControlSender,
    ) -> Result<(), String> {
        let (code, why) = (RefusalCode::Invalid, "the session is draining: no route changes".to_owned());
        let reply = match message {
            ControlMessage::RouteTable { version, entries } => {
                let answer = |entry: &RouteEntry| match self.has(entry) {
                    true => {
                        RouteOutcome::Ready { public_addr: self.ports.get(&entry.id).map(|r| r.public_addr) }
                    }
                    false => RouteOutcome::Refused { code, message: why.clone() },
                };
                let results = entries
                    .iter()
                    .map(|entry| RouteResult { id: entry.id, outcome: answer(entry) })
                    .collect();
                ControlMessage::RouteTableResult { version, results }
            }
            ControlMessage::RemoteForwardRequest { id, .. } => {
                ControlMessage::RemoteForwardRefused { id, code, message: why }
            }
            ControlMessage::ExposeRequest { name } => {
                ControlMessage::ExposeRefused { name, code, message: why }
            }
            other => return Err(format!("unexpected control message from a client: {other:?}")),
        };
        self.answer(control, reply).await;
        Ok(())
    }

    /// Replaces the table: what is gone or changed is removed first (so its ports and names can
    /// go to the new entries), unchanged entries are left alone, the rest is added; one result
    /// per entry. Each kind is held to its own limit, so a table that outgrew this server's
    /// limits has the entries past them refused (the decoder bounds a table's length) and the
    /// rest in service. `Err` (an id twice, which no client sends) ends the session.
    async fn apply(&mut self, entries: Vec<RouteEntry>) -> Result<(Vec<RouteResult>, Changes), String> {
        let mut ids = HashSet::with_capacity(entries.len());
        if let Some(dup) = entries.iter().find(|e| !ids.insert(e.id)) {
            return Err(format!("route {} is listed twice in one table", dup.id));
        }
        let unchanged: HashSet<RouteId> = entries.iter().filter(|e| self.has(e)).map(|e| e.id).collect();
        let current: Vec<RouteId> = self.ids().collect();
        let mut changes = Changes::default();
        for id in current.into_iter().filter(|id| !unchanged.contains(id)) {
            self.remove(id).await;
            changes.removed += 1;
        }
        let mut results = Vec::with_capacity(entries.len());
        for RouteEntry { id, kind } in entries {
            let outcome = if unchanged.contains(&id) {
                Ok(self.ports.get(&id).map(|r| r.public_addr))
            } else {
                let added = self.add(id, kind).await;
                match &added {
                    Ok(_) => changes.added += 1,
                    Err((code, _)) => changes.refused.push(*code),
                }
                added
            };
            let outcome = match outcome {
                Ok(public_addr) => RouteOutcome::Ready { public_addr },
                Err((code, message)) => RouteOutcome::Refused { code, message },
            };
            results.push(RouteResult { id, outcome });
        }
        self.settle();
        Ok((results, changes))
    }

    /// Logs what applying a table of `routes` entries changed and counts its refusals.
    fn report(&self, routes: usize, changes: &Changes) {
        for code in &changes.refused {
            self.count_refusal(*code);
        }
        if changes.added + changes.removed + changes.refused.len() > 0 {
            tracing::info!(
                client = %Escaped(&self.name),
                routes,
                added = changes.added,
                removed = changes.removed,
                refused = changes.refused.len(),
                "route table applied"
            );
        }
    }

    /// Whether this exact entry is in service.
    fn has(&self, entry: &RouteEntry) -> bool {
        match &entry.kind {
            RouteKind::Tcp { bind, port, .. } => self.ports.get(&entry.id).is_some_and(|r| {
                r.shape == Shape { protocol: Protocol::Tcp, bind: *bind, port: *port, idle_secs: 0 }
            }),
            RouteKind::Udp { bind, port, idle_secs, .. } => self.ports.get(&entry.id).is_some_and(|r| {
                r.shape == Shape { protocol: Protocol::Udp, bind: *bind, port: *port, idle_secs: *idle_secs }
            }),
            RouteKind::Service { name } => self.services.get(&entry.id) == Some(name),
            RouteKind::Http { matcher } => self.http.get(&entry.id).is_some_and(|m| m.spec() == matcher),
            RouteKind::HttpFallback => self.fallback == Some(entry.id),
            RouteKind::Tls { host } => self.tls.get(&entry.id) == Some(host),
            RouteKind::Network { net } => self.networks.get(&entry.id) == Some(net),
        }
    }

    fn ids(&self) -> impl Iterator<Item = RouteId> + '_ {
        self.ports
            .keys()
            .chain(self.services.keys())
            .chain(self.http.keys())
            .chain(self.fallback.iter())
            .chain(self.tls.keys())
            .chain(self.networks.keys())
            .copied()
    }

    async fn add(&mut self, id: RouteId, kind: RouteKind) -> Result<Option<SocketAddr>, Refusal> {
        match kind {
            RouteKind::Tcp { bind, port, preferred_port } => {
                let at = (bind, port, preferred_port);
                self.add_port(id, StreamKind::Route(id), Protocol::Tcp, at, None).await.map(Some)
            }
            RouteKind::Udp { bind, port, preferred_port, idle_secs } => {
                let at = (bind, port, preferred_port);
                self.add_port(id, StreamKind::Route(id), Protocol::Udp, at, Some(idle_secs)).await.map(Some)
            }
            RouteKind::Service { name } => self.add_service(id, &name).map(|()| None),
            RouteKind::Http { matcher } => {
                // The limit and the host first: no expression is compiled for a route refused
                // anyway (a client may serve no host, or retry one another client holds).
                self.room_for_another(self.http.len())?;
                let host = matcher.host.clone();
                self.claim_host(&host)?;
                match self.shared.tables.matcher(matcher).await {
                    Ok(matcher) => {
                        self.http.insert(id, matcher);
                        Ok(None)
                    }
                    Err(e) => {
                        self.shared.http_routes.release_host(&host);
                        Err((RefusalCode::Invalid, e))
                    }
                }
            }
            RouteKind::HttpFallback => {
                self.fallback = Some(id);
                Ok(None)
            }
            RouteKind::Tls { host } => {
                self.room_for_another(self.tls.len())?;
                self.claim_host(&host)?;
                self.tls.insert(id, host);
                Ok(None)
            }
            RouteKind::Network { net } => self.add_network(id, net).map(|()| None),
        }
    }

    /// Routes `net` to this client: within its `allow_networks`, its limit, and overlapping
    /// no other client's network.
    fn add_network(&mut self, id: RouteId, net: IpNet) -> Result<(), Refusal> {
        let config = self.shared.config();
        let limit = config.max_forwards_per_client;
        if self.networks.len() >= limit {
            return Err((
                RefusalCode::TooManyForwards,
                format!("this client already routes {limit} networks"),
            ));
        }
        if !config.rules(&self.name, self.credential).may_route_network(&net) {
            let message = format!("client {:?} may not route network {net}", self.name);
            return Err((RefusalCode::NetworkNotAllowed, message));
        }
        let owner = self.owner();
        let claimed =
            self.shared.networks.claim(net, &owner, self.session, id, self.opener.clone(), self.version);
        claimed.map_err(|held| {
            let message =
                format!("network {net} overlaps {} routed by another client ({:?})", held.net, held.owner);
            (RefusalCode::NetworkTaken, message)
        })?;
        tracing::debug!(client = %Escaped(&self.name), %net, "network routed");
        self.networks.insert(id, net);
        Ok(())
    }

    /// Checks that this client has room for another HTTP or TLS route, holding `held` of that
    /// kind.
    fn room_for_another(&self, held: usize) -> Result<(), Refusal> {
        let limit = self.shared.config().max_forwards_per_client;
        if held >= limit {
            return Err((
                RefusalCode::TooManyForwards,
                format!("this client already holds {limit} routes of this kind"),
            ));
        }
        Ok(())
    }

    /// Checks that this client may serve `host`, and records it as the host's client.
    fn claim_host(&self, host: &HostPattern) -> Result<(), Refusal> {
        if !self.shared.config().rules(&self.name, self.credential).may_serve_host(host) {
            let message = format!("client {:?} may not serve host {host}", self.name);
            return Err((RefusalCode::HostNotAllowed, message));
        }
        self.shared.http_routes.claim_host(host, &self.name).map_err(|owner| {
            (RefusalCode::HostTaken, format!("host {host} is served by another client ({owner:?})"))
        })
    }

    fn add_service(&mut self, id: RouteId, service: &str) -> Result<(), Refusal> {
        if !self.shared.config().rules(&self.name, self.credential).may_expose(service) {
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
        tracing::debug!(client = %Escaped(&self.name), service = %Escaped(service), "service exposed");
        self.services.insert(id, service.to_owned());
        Ok(())
    }

    /// Takes a route out of service. A port route's visitors are signalled to reset; if no
    /// other replica serves it, its listener is closed before this returns (its port can be
    /// bound again at once) and its port is released when the table is applied (still this
    /// client's if a new route took it over).
    async fn remove(&mut self, id: RouteId) {
        if let Some(route) = self.ports.remove(&id) {
            let public_addr = route.public_addr;
            self.vacated.extend(self.leave_port(id, route).await);
            tracing::debug!(client = %Escaped(&self.name), route = %id, %public_addr, "port route removed");
        }
        if let Some(service) = self.services.remove(&id) {
            self.shared.registry.unexpose(&self.name, self.session, &service);
            tracing::debug!(client = %Escaped(&self.name), service = %Escaped(&service), "service withdrawn");
        }
        if let Some(matcher) = self.http.remove(&id) {
            self.shared.http_routes.release_host(&matcher.spec().host);
        }
        if let Some(host) = self.tls.remove(&id) {
            self.shared.http_routes.release_host(&host);
        }
        if self.fallback == Some(id) {
            self.fallback = None;
        }
        if let Some(net) = self.networks.remove(&id) {
            self.shared.networks.release(self.session, id);
            tracing::debug!(client = %Escaped(&self.name), %net, "network withdrawn");
        }
    }

    /// Ends a round of changes: the claims of the ports whose listeners closed go back (a
    /// route of the same table that took a port over holds its own claim), and the edge gets
    /// the session's HTTP and TLS routes as they are now.
    fn settle(&mut self) {
        for port in std::mem::take(&mut self.vacated) {
            self.binder().release(port);
        }
        self.publish_http();
    }

    fn publish_http(&self) {
        if !self.in_edge {
            return;
        }
        let routes = SessionHttp {
            owner: self.name.clone(),
            opener: self.opener.clone(),
            http: self.http.clone(),
            fallback: self.fallback,
            tls: self.tls.clone(),
            per_route: self.version >= crate::proto::ROUTE_STREAMS_VERSION,
        };
        self.shared.http_routes.publish(self.session, routes);
        // A route kept under its id may lead elsewhere now: its pooled streams go.
        self.shared.each_edge(|edge| edge.renew(&self.opener));
    }

    /// This client, as it holds ports and networks.
    fn owner(&self) -> Owner {
        Owner { name: self.name.clone(), credential: self.credential }
    }

    fn binder(&self) -> Binder<'_> {
        Binder { shared: self.shared, name: &self.name, credential: self.credential }
    }

    /// The routes in service now, for listings.
    fn snapshot(&self) -> Vec<RouteInfo> {
        let info = |id, kind, public_addr, target| RouteInfo { id, kind, public_addr, target };
        let mut routes: Vec<RouteInfo> =
            Vec::with_capacity(self.ports.len() + self.services.len() + self.http.len());
        routes.extend(self.ports.iter().map(|(id, r)| {
            let kind = if r.shape.protocol == Protocol::Udp { "udp" } else { "tcp" };
            info(*id, kind, Some(r.public_addr), None)
        }));
        routes.extend(self.services.iter().map(|(id, name)| info(*id, "service", None, Some(name.clone()))));
        for (id, matcher) in &self.http {
            let spec = matcher.spec();
            let path = match &spec.path {
                crate::proto::PathMatch::Any => String::new(),
                crate::proto::PathMatch::Prefix(p) | crate::proto::PathMatch::Exact(p) => p.clone(),
                crate::proto::PathMatch::Regex(r) => format!(" ~{r}"),
            };
            routes.push(info(*id, "http", None, Some(format!("{}{path}", spec.host))));
        }
        routes.extend(self.fallback.map(|id| info(id, "http_fallback", None, None)));
        routes.extend(self.tls.iter().map(|(id, host)| info(*id, "tls", None, Some(host.to_string()))));
        routes
            .extend(self.networks.iter().map(|(id, net)| info(*id, "network", None, Some(net.to_string()))));
        routes
    }

    /// Whether [`Self::stop_accepting`] ran.
    pub(super) fn is_draining(&self) -> bool {
        self.draining
    }

    /// The session's visitor tasks.
    pub(super) fn visitors(&self) -> &TaskTracker {
        &self.visitors
    }

    /// Drains: no new visitors for this session (its replicas take them; a port route none of
    /// them serves closes its listener, refusing new visitors while the port stays this
    /// client's), its visitors go on; waiting on [`Self::visitors`] then ends.
    ///
    /// `withdraw_http`: the HTTP and TLS routes leave the edge's index too (the client is
    /// leaving; when the whole server drains, its edge stops taking connections itself, and
    /// requests already on open connections still find their routes). From now on, tables
    /// and requests are refused. Returns once the listening sockets to close are closed.
    pub(super) async fn stop_accepting(&mut self, withdraw_http: bool) {
        self.draining = true;
        self.accepting.cancel();
        self.visitors.close();
        self.shared.registry.draining(&self.name, self.session);
        self.shared.networks.depart(self.session, || self.shared.config().port_grace);
        if withdraw_http {
            self.in_edge = false;
            self.shared.http_routes.remove(self.session);
            // Its idle pooled streams would hold the session open: they go now.
            self.shared.each_edge(|edge| edge.retire(&self.opener));
        }
        for id in self.ports.keys() {
            self.shared.ports.quiet(&self.name, *id).await;
        }
    }

    /// Leaves every route and cuts every visitor; returns once the listening sockets no other
    /// replica serves are closed, so the ports can be bound again (by a session replacing this
    /// one), and reserved for this client for the grace period.
    pub(super) async fn close(mut self) {
        self.owned.cancel();
        self.shared.http_routes.remove(self.session);
        self.shared.each_edge(|edge| edge.forget(&self.opener));
        // What is held is reserved for this client's return, unless the configuration no
        // longer has this client (a reload removed or changed its kind of credential): then
        // it is free at once. Asked as each table lets go, so that a reload at this moment
        // cannot miss it.
        let (shared, name, credential) = (self.shared, self.name.clone(), self.credential);
        let returns = || shared.config().credentials.admits(&name, credential);
        let grace = || if returns() { shared.config().port_grace } else { Duration::ZERO };
        shared.networks.depart(self.session, grace);
        for host in self.http.values().map(|m| &m.spec().host).chain(self.tls.values()) {
            self.shared.http_routes.release_host(host);
        }
        let owner = self.owner();
        for (id, route) in std::mem::take(&mut self.ports) {
            if let Some(port) = self.leave_port(id, route).await {
                shared.registry.vacate(&owner, port, returns);
            }
        }
    }
}
