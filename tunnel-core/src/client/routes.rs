//! The client's route table: what it asks the server to publish, built into the table message
//! with stable ids, and the server's answer turned back into what is in service.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::watch;

use super::error::Failure;
use super::streams::{Forward, Routes};
use super::{ActiveForward, ClientError};
use crate::forward::{Protocol, RemoteForwardSpec, ServiceSpec, Target};
use crate::http::{HttpAction, HttpRoute, TlsRoute};
use crate::proto::route::{MAX_ROUTES, TABLE_OVERHEAD};
use crate::proto::{
    ControlMessage, IpNet, RefusalCode, RouteEntry, RouteId, RouteKind, RouteOutcome, RouteResult,
    NETWORK_VERSION, ROUTE_STREAMS_VERSION, UDP_VERSION,
};

/// What a client publishes: remote forwards, private services, HTTP and TLS routes, networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSet {
    /// Remote forwards.
    pub remotes: Vec<RemoteForwardSpec>,
    /// Private services.
    pub services: Vec<ServiceSpec>,
    /// HTTP routes.
    pub http: Vec<HttpRoute>,
    /// The answer for requests to this client's hosts that no HTTP route matches.
    pub http_fallback: Option<HttpAction>,
    /// TLS passthrough routes.
    pub tls: Vec<TlsRoute>,
    /// Networks this client offers egress into (connections to their addresses, dialed here).
    pub networks: Vec<IpNet>,
}

/// Why a route set cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteSetError {
    /// Two remote forwards publish the same port.
    #[error("remote forwards {first} and {second} publish the same port")]
    DuplicateForward {
        /// The first of them.
        first: String,
        /// The second.
        second: String,
    },
    /// A service is listed twice.
    #[error("service {0:?} is listed twice")]
    DuplicateService(String),
    /// Two HTTP routes match exactly the same requests, or two TLS routes the same host.
    #[error("{0} is listed twice")]
    DuplicateRoute(String),
    /// An HTTP route's match or action is invalid.
    #[error("HTTP route {route}: {reason}")]
    InvalidRoute {
        /// The route.
        route: String,
        /// What is wrong.
        reason: String,
    },
    /// More routes than one table carries.
    #[error("{0} routes; a table holds at most {MAX_ROUTES_PER_SET}")]
    TooMany(usize),
    /// The table is larger than a server takes in one message.
    #[error(
        "the route table takes {0} bytes on the wire, over the {MAX_TABLE_BYTES} a server takes \
         (long hosts, paths, methods and header matches count)"
    )]
    TooLarge(usize),
}

/// Most routes one set may hold.
pub const MAX_ROUTES_PER_SET: usize = 512;

/// The largest route table a client sends, in bytes on the wire: a server's default
/// `max_message_size`. A larger one would end the session as soon as it was sent, and every
/// session after it, so it is refused before it leaves.
pub const MAX_TABLE_BYTES: usize = 64 * 1024;

/// What one entry of the table is on this side.
#[derive(Debug, Clone)]
enum Local {
    Forward(RemoteForwardSpec),
    Service(ServiceSpec),
    Http(HttpRoute),
    HttpFallback(HttpAction),
    Tls(TlsRoute),
    Network(IpNet),
}

impl RouteSet {
    /// Checks that every entry is a valid route of its own.
    pub fn check(&self) -> Result<(), RouteSetError> {
        let total =
            self.remotes.len() + self.services.len() + self.http.len() + self.tls.len() + self.networks.len();
        if total + usize::from(self.http_fallback.is_some()) > MAX_ROUTES_PER_SET.min(MAX_ROUTES) {
            return Err(RouteSetError::TooMany(total));
        }
        let bytes = self.table_bytes();
        if bytes > MAX_TABLE_BYTES {
            return Err(RouteSetError::TooLarge(bytes));
        }
        let mut ports: HashMap<(Protocol, u16), &RemoteForwardSpec> = HashMap::new();
        for spec in &self.remotes {
            spec.check()
                .map_err(|e| RouteSetError::InvalidRoute { route: spec.to_string(), reason: e.reason })?;
        }
        for spec in self.remotes.iter().filter(|s| s.remote_port != 0) {
            // The server leases ports, not addresses: one port, one forward (of each protocol).
            if let Some(first) = ports.insert((spec.protocol, spec.remote_port), spec) {
                return Err(RouteSetError::DuplicateForward {
                    first: first.to_string(),
                    second: spec.to_string(),
                });
            }
        }
        let mut names = HashSet::new();
        if let Some(dup) = self.services.iter().find(|s| !names.insert(&s.name)) {
            return Err(RouteSetError::DuplicateService(dup.name.clone()));
        }
        let mut ids = HashSet::new();
        for route in &self.http {
            let invalid = |reason| RouteSetError::InvalidRoute { route: route.to_string(), reason };
            route.matcher.check().map_err(invalid)?;
            route.action.check().map_err(invalid)?;
            if !ids.insert(RouteId::of_http(&route.matcher)) {
                return Err(RouteSetError::DuplicateRoute(format!("HTTP route {route}")));
            }
        }
        if let Some(fallback) = &self.http_fallback {
            fallback
                .check()
                .map_err(|reason| RouteSetError::InvalidRoute { route: "fallback".into(), reason })?;
        }
        let mut hosts = HashSet::new();
        if let Some(dup) = self.tls.iter().find(|t| !hosts.insert(&t.host)) {
            return Err(RouteSetError::DuplicateRoute(format!("TLS route for {}", dup.host)));
        }
        let mut nets = HashSet::new();
        if let Some(dup) = self.networks.iter().find(|n| !nets.insert(*n)) {
            return Err(RouteSetError::DuplicateRoute(format!("network {dup}")));
        }
        Ok(())
    }

    /// Bytes of the route table message this set makes (at most [`MAX_TABLE_BYTES`] once
    /// checked).
    pub fn table_bytes(&self) -> usize {
        self.items(&HashMap::new()).iter().map(|(entry, _)| entry.encoded_len()).sum::<usize>()
            + TABLE_OVERHEAD
    }

    /// The route id of each remote forward, in order. Forwards on port 0 to the same target
    /// (say, with different idle timeouts) are told apart by their rank among those: the first
    /// keeps the plain id, so adding a second one leaves the first alone.
    pub fn remote_ids(&self) -> Vec<RouteId> {
        let mut seen: HashMap<RouteId, u32> = HashMap::new();
        self.remotes
            .iter()
            .map(|spec| {
                let id = spec.route_id();
                if spec.remote_port != 0 {
                    return id;
                }
                let rank = seen.entry(id).or_insert(0);
                *rank += 1;
                RouteId::ranked(id, *rank)
            })
            .collect()
    }

    /// Every entry with its id and wire form, in table order.
    fn items(&self, assigned: &HashMap<RouteId, u16>) -> Vec<(RouteEntry, Local)> {
        let mut items = Vec::new();
        for (spec, id) in self.remotes.iter().zip(self.remote_ids()) {
            let preferred_port =
                if spec.remote_port == 0 { assigned.get(&id).copied().unwrap_or(0) } else { 0 };
            let (bind, port) = (spec.bind, spec.remote_port);
            let kind = match spec.protocol {
                Protocol::Tcp => RouteKind::Tcp { bind, port, preferred_port },
                Protocol::Udp => {
                    let idle_secs = crate::udp::flow_idle_secs(spec.idle_timeout);
                    RouteKind::Udp { bind, port, preferred_port, idle_secs }
                }
            };
            items.push((RouteEntry { id, kind }, Local::Forward(spec.clone())));
        }
        for service in &self.services {
            let kind = RouteKind::Service { name: service.name.clone() };
            items.push((
                RouteEntry { id: RouteId::of_service(&service.name), kind },
                Local::Service(service.clone()),
            ));
        }
        for route in &self.http {
            items.push((route.entry(), Local::Http(route.clone())));
        }
        if let Some(fallback) = &self.http_fallback {
            let entry = RouteEntry { id: RouteId::of_http_fallback(), kind: RouteKind::HttpFallback };
            items.push((entry, Local::HttpFallback(fallback.clone())));
        }
        for route in &self.tls {
            let kind = RouteKind::Tls { host: route.host.clone() };
            items.push((RouteEntry { id: RouteId::of_tls(&route.host), kind }, Local::Tls(route.clone())));
        }
        for net in &self.networks {
            let kind = RouteKind::Network { net: *net };
            items.push((RouteEntry { id: RouteId::of_network(net), kind }, Local::Network(*net)));
        }
        items
    }
}

/// Changes a running client's routes; clone freely.
///
/// ```no_run
/// # async fn example(client: &tunnel_core::client::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let handle = client.routes();
/// let mut set = handle.get();
/// set.remotes.push("8443:127.0.0.1:443".parse()?);
/// set.http.push("app.example.com=http://127.0.0.1:3000".parse()?);
/// handle.set(set)?; // sent to the server now; the other routes are untouched
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RouteHandle {
    wanted: Arc<watch::Sender<Arc<RouteSet>>>,
}

impl RouteHandle {
    pub(super) fn new(initial: RouteSet) -> Self {
        Self { wanted: Arc::new(watch::Sender::new(Arc::new(initial))) }
    }

    /// The current set.
    pub fn get(&self) -> RouteSet {
        RouteSet::clone(&self.wanted.borrow())
    }

    /// Replaces the set; a set equal to the current one changes nothing.
    pub fn set(&self, set: RouteSet) -> Result<(), RouteSetError> {
        set.check()?;
        self.wanted.send_if_modified(|current| {
            let changed = **current != set;
            if changed {
                *current = Arc::new(set);
            }
            changed
        });
        Ok(())
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<Arc<RouteSet>> {
        self.wanted.subscribe()
    }
}

/// An entry the server refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedRoute {
    /// The entry as configured (`8080:127.0.0.1:80`, `service kubelet`, `http a.test/api=...`).
    pub route: String,
    /// Why.
    pub code: RefusalCode,
    /// The server's explanation.
    pub message: String,
}

/// One version of the table as sent.
pub(super) struct Table {
    version: u64,
    items: Vec<(RouteEntry, Local)>,
    /// Entries the server's protocol version cannot carry: not sent, answered as refused here.
    too_new: Vec<Local>,
    /// The protocol version the server speaks.
    protocol: u16,
}

/// The server's answer to a table: what is in service, and what was refused.
#[derive(Debug, Default)]
pub(super) struct Answered {
    pub(super) forwards: Vec<ActiveForward>,
    pub(super) services: Vec<ServiceSpec>,
    pub(super) http: Vec<HttpRoute>,
    pub(super) http_fallback: bool,
    pub(super) tls: Vec<TlsRoute>,
    pub(super) networks: Vec<IpNet>,
    pub(super) refused: Vec<RefusedRoute>,
    pub(super) version: u64,
    /// The first refused entry, as the error that stops a client with nothing accepted.
    first_refusal: Option<ClientError>,
}

impl Answered {
    fn published(&self) -> bool {
        !(self.forwards.is_empty()
            && self.services.is_empty()
            && self.http.is_empty()
            && self.tls.is_empty()
            && self.networks.is_empty())
            || self.http_fallback
    }
}

impl Table {
    /// The next version of the table for `set`, for a server speaking `protocol`; forwards on
    /// port 0 ask for the port they were given before.
    pub(super) fn new(
        set: &RouteSet,
        assigned: &HashMap<RouteId, u16>,
        version: &mut u64,
        protocol: u16,
    ) -> Self {
        *version += 1;
        let (items, too_new): (Vec<_>, Vec<_>) = set.items(assigned).into_iter().partition(|(entry, _)| {
            let needs = match entry.kind {
                RouteKind::Network { .. } => NETWORK_VERSION,
                RouteKind::Udp { .. } => UDP_VERSION,
                _ => 0,
            };
            protocol >= needs
        });
        let too_new = too_new.into_iter().map(|(_, local)| local).collect();
        Self { version: *version, items, too_new, protocol }
    }

    pub(super) fn version(&self) -> u64 {
        self.version
    }

    pub(super) fn message(&self) -> ControlMessage {
        let entries = self.items.iter().map(|(entry, _)| entry.clone()).collect();
        ControlMessage::RouteTable { version: self.version, entries }
    }

    /// Where visitors of this table's routes go.
    pub(super) fn stream_routes(&self) -> Routes {
        let mut routes =
            Routes { streams_per_route: self.protocol >= ROUTE_STREAMS_VERSION, ..Routes::default() };
        for (entry, local) in &self.items {
            match local {
                Local::Forward(spec) => {
                    let forward = Forward {
                        target: spec.local.clone(),
                        protocol: spec.protocol,
                        idle_timeout: spec.idle_timeout,
                        proxy_protocol: spec.proxy_protocol,
                    };
                    routes.forwards.insert(entry.id, forward);
                }
                Local::Service(service) => {
                    routes.services.insert(service.name.clone(), service.target.clone());
                }
                Local::Http(route) => {
                    routes.http.insert(entry.id, Arc::new(route.action.clone()));
                }
                Local::HttpFallback(action) => {
                    routes.http.insert(entry.id, Arc::new(action.clone()));
                }
                Local::Tls(route) => {
                    let forward = Forward {
                        target: Target::Addr(route.target.clone()),
                        protocol: Protocol::Tcp,
                        idle_timeout: None,
                        proxy_protocol: route.proxy_protocol,
                    };
                    routes.forwards.insert(entry.id, forward);
                }
                Local::Network(net) => {
                    routes.networks.insert(entry.id, *net);
                }
            }
        }
        routes
    }

    /// Reads the server's answer: every entry must be answered once.
    pub(super) fn answer(
        &self,
        results: Vec<RouteResult>,
        assigned: &mut HashMap<RouteId, u16>,
    ) -> Result<Answered, Failure> {
        let mut outcomes: HashMap<RouteId, RouteOutcome> = HashMap::with_capacity(results.len());
        for RouteResult { id, outcome } in results {
            if outcomes.insert(id, outcome).is_some() {
                return Err(protocol(format!("the server answered route {id} twice")));
            }
        }
        let mut answered = Answered { version: self.version, ..Answered::default() };
        for (entry, local) in &self.items {
            let Some(outcome) = outcomes.remove(&entry.id) else {
                return Err(protocol(format!("the server did not answer for {}", describe(local))));
            };
            let (code, message) = match outcome {
                RouteOutcome::Refused { code, message } => (code, message),
                RouteOutcome::Ready { public_addr } => {
                    match (local, public_addr) {
                        (Local::Forward(spec), Some(public_addr)) => {
                            if spec.remote_port == 0 {
                                assigned.insert(entry.id, public_addr.port());
                            }
                            answered.forwards.push(ActiveForward { spec: spec.clone(), public_addr });
                        }
                        (Local::Forward(spec), None) => {
                            return Err(protocol(format!(
                                "the server gave no public address for forward {spec}"
                            )))
                        }
                        (Local::Service(service), _) => answered.services.push(service.clone()),
                        (Local::Http(route), _) => answered.http.push(route.clone()),
                        (Local::HttpFallback(_), _) => answered.http_fallback = true,
                        (Local::Tls(route), _) => answered.tls.push(route.clone()),
                        (Local::Network(net), _) => answered.networks.push(*net),
                    }
                    continue;
                }
            };
            if answered.first_refusal.is_none() {
                answered.first_refusal = Some(match local {
                    Local::Forward(spec) => {
                        ClientError::ForwardRefused { spec: spec.clone(), code, message: message.clone() }
                    }
                    Local::Service(service) => ClientError::ServiceRefused {
                        name: service.name.clone(),
                        code,
                        message: message.clone(),
                    },
                    other => {
                        ClientError::RouteRefused { route: describe(other), code, message: message.clone() }
                    }
                });
            }
            answered.refused.push(RefusedRoute { route: describe(local), code, message });
        }
        if let Some(id) = outcomes.keys().next() {
            return Err(protocol(format!("the server answered for route {id}, which was never sent")));
        }
        for local in &self.too_new {
            let needs = match local {
                Local::Network(_) => format!("network routes need protocol {NETWORK_VERSION}"),
                _ => format!("UDP forwards need protocol {UDP_VERSION}"),
            };
            let message = format!("the server is too old ({needs})");
            answered.refused.push(RefusedRoute {
                route: describe(local),
                code: RefusalCode::Invalid,
                message,
            });
        }
        Ok(answered)
    }

    /// When nothing at all could be published, the first refusal, as the error that stops the
    /// client: it would run doing nothing.
    pub(super) fn nothing_published(&self, answered: &mut Answered) -> Option<ClientError> {
        if answered.published() {
            return None;
        }
        answered.first_refusal.take()
    }
}

/// An entry as the user wrote it.
fn describe(local: &Local) -> String {
    match local {
        Local::Forward(spec) => spec.to_string(),
        Local::Service(service) => format!("service {}", service.name),
        Local::Http(route) => format!("http {route}"),
        Local::HttpFallback(_) => "http fallback".to_owned(),
        Local::Tls(route) => format!("tls {route}"),
        Local::Network(net) => format!("network {net}"),
    }
}

fn protocol(message: String) -> Failure {
    ClientError::Protocol(message).into()
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
