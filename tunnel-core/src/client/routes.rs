//! The client's route table: what it asks the server to publish, built into the table message
//! with stable ids, and the server's answer turned back into what is in service.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::watch;

use super::error::Failure;
use super::streams::Routes;
use super::{ActiveForward, ClientError};
use crate::forward::{RemoteForwardSpec, ServiceSpec};
use crate::proto::{ControlMessage, RefusalCode, RouteEntry, RouteId, RouteKind, RouteOutcome, RouteResult};

/// What a client publishes: its remote forwards and its private services.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSet {
    /// Remote forwards.
    pub remotes: Vec<RemoteForwardSpec>,
    /// Private services.
    pub services: Vec<ServiceSpec>,
}

/// Why a route set cannot be sent: two entries would be the same route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteSetError {
    /// Two remote forwards publish the same port.
    #[error("remote forwards {first} and {second} publish the same route")]
    DuplicateForward {
        /// The first of them.
        first: String,
        /// The second.
        second: String,
    },
    /// A service is listed twice.
    #[error("service {0:?} is listed twice")]
    DuplicateService(String),
    /// More routes than one table carries.
    #[error("{0} routes; a table holds at most {MAX_ROUTES_PER_SET}")]
    TooMany(usize),
}

/// Most routes one set may hold: its table then fits in a server's default 64 KiB message
/// (a TCP entry takes about 30 bytes, a service up to 75).
pub const MAX_ROUTES_PER_SET: usize = 512;

impl RouteSet {
    /// Checks that every entry is a route of its own.
    pub fn check(&self) -> Result<(), RouteSetError> {
        let total = self.remotes.len() + self.services.len();
        if total > MAX_ROUTES_PER_SET {
            return Err(RouteSetError::TooMany(total));
        }
        let mut ids: HashMap<RouteId, &RemoteForwardSpec> = HashMap::new();
        for (spec, id) in self.remotes.iter().zip(self.remote_ids()) {
            if let Some(first) = ids.insert(id, spec) {
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
        Ok(())
    }
}

impl RouteSet {
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
                match *rank {
                    1 => id,
                    n => RouteId::derive(&format!("{id} #{n}")),
                }
            })
            .collect()
    }
}

/// Changes a running client's routes; clone freely.
///
/// ```no_run
/// # async fn example(client: &tunnel_core::client::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use tunnel_core::client::RouteSet;
/// let handle = client.routes();
/// let mut set = handle.get();
/// set.remotes.push("8443:127.0.0.1:443".parse()?);
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
    /// The entry as configured (`8080:127.0.0.1:80`, `service kubelet`).
    pub route: String,
    /// Why.
    pub code: RefusalCode,
    /// The server's explanation.
    pub message: String,
}

/// One version of the table as sent.
pub(super) struct Table {
    version: u64,
    set: Arc<RouteSet>,
    entries: Vec<RouteEntry>,
}

/// The server's answer to a table.
pub(super) struct Answered {
    pub(super) forwards: Vec<ActiveForward>,
    pub(super) services: Vec<ServiceSpec>,
    pub(super) refused: Vec<RefusedRoute>,
    pub(super) version: u64,
}

impl Table {
    /// The next version of the table for `set`; forwards on port 0 ask for the port they were
    /// given before.
    pub(super) fn new(set: Arc<RouteSet>, assigned: &HashMap<RouteId, u16>, version: &mut u64) -> Self {
        *version += 1;
        let mut entries = Vec::with_capacity(set.remotes.len() + set.services.len());
        for (spec, id) in set.remotes.iter().zip(set.remote_ids()) {
            let preferred_port =
                if spec.remote_port == 0 { assigned.get(&id).copied().unwrap_or(0) } else { 0 };
            entries.push(RouteEntry {
                id,
                kind: RouteKind::Tcp { bind: spec.bind, port: spec.remote_port, preferred_port },
            });
        }
        for service in &set.services {
            entries.push(RouteEntry {
                id: RouteId::of_service(&service.name),
                kind: RouteKind::Service { name: service.name.clone() },
            });
        }
        Self { version: *version, set, entries }
    }

    pub(super) fn version(&self) -> u64 {
        self.version
    }

    pub(super) fn message(&self) -> ControlMessage {
        ControlMessage::RouteTable { version: self.version, entries: self.entries.clone() }
    }

    /// Where visitors of this table's routes go.
    pub(super) fn stream_routes(&self) -> Routes {
        Routes {
            forwards: self
                .set
                .remotes
                .iter()
                .zip(self.set.remote_ids())
                .map(|(s, id)| (id, (s.local.clone(), s.idle_timeout)))
                .collect(),
            services: self.set.services.iter().map(|s| (s.name.clone(), s.target.clone())).collect(),
        }
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
        let mut answered = Answered {
            forwards: Vec::new(),
            services: Vec::new(),
            refused: Vec::new(),
            version: self.version,
        };
        for (spec, id) in self.set.remotes.iter().zip(self.set.remote_ids()) {
            match outcomes.remove(&id) {
                Some(RouteOutcome::Ready { public_addr: Some(public_addr) }) => {
                    if spec.remote_port == 0 {
                        assigned.insert(id, public_addr.port());
                    }
                    answered.forwards.push(ActiveForward { spec: spec.clone(), public_addr });
                }
                Some(RouteOutcome::Refused { code, message }) => {
                    answered.refused.push(RefusedRoute { route: spec.to_string(), code, message });
                }
                _ => return Err(protocol(format!("the server gave no public address for forward {spec}"))),
            }
        }
        for service in &self.set.services {
            match outcomes.remove(&RouteId::of_service(&service.name)) {
                Some(RouteOutcome::Ready { .. }) => answered.services.push(service.clone()),
                Some(RouteOutcome::Refused { code, message }) => answered.refused.push(RefusedRoute {
                    route: format!("service {}", service.name),
                    code,
                    message,
                }),
                _ => return Err(protocol(format!("the server did not answer for service {}", service.name))),
            }
        }
        if let Some(id) = outcomes.keys().next() {
            return Err(protocol(format!("the server answered for route {id}, which was never sent")));
        }
        Ok(answered)
    }

    /// When nothing at all could be published, the first refusal, as the error that stops the
    /// client: it would run doing nothing.
    pub(super) fn nothing_published(&self, answered: &Answered) -> Option<ClientError> {
        if !answered.forwards.is_empty() || !answered.services.is_empty() {
            return None;
        }
        let first = answered.refused.first()?;
        let (code, message) = (first.code, first.message.clone());
        match self.set.remotes.iter().find(|s| s.to_string() == first.route) {
            Some(spec) => Some(ClientError::ForwardRefused { spec: spec.clone(), code, message }),
            None => {
                let name = first.route.strip_prefix("service ").unwrap_or(&first.route).to_owned();
                Some(ClientError::ServiceRefused { name, code, message })
            }
        }
    }
}

fn protocol(message: String) -> Failure {
    ClientError::Protocol(message).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(remotes: &[&str], services: &[&str]) -> RouteSet {
        RouteSet {
            remotes: remotes.iter().map(|r| r.parse().unwrap()).collect(),
            services: services.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn ids_stay_when_the_order_or_the_target_of_a_fixed_port_changes() {
        let (mut assigned, mut version) = (HashMap::new(), 0);
        let before = Table::new(
            Arc::new(set(&["8080:127.0.0.1:80", "0:127.0.0.1:22"], &["k=h:1"])),
            &assigned,
            &mut version,
        );
        let after = Table::new(
            Arc::new(set(&["0:127.0.0.1:22", "8080:127.0.0.1:81"], &["k=h:2"])),
            &assigned,
            &mut version,
        );
        let ids = |t: &Table| t.entries.iter().map(|e| e.id).collect::<HashSet<_>>();
        assert_eq!(ids(&before), ids(&after));
        assert_eq!((before.version(), after.version()), (1, 2));
        // A port-0 forward is its target: another target is another route.
        let other = Table::new(Arc::new(set(&["0:127.0.0.1:23"], &[])), &assigned, &mut version);
        assert!(ids(&other).is_disjoint(&ids(&before)));
        // The port the server picked is asked for again.
        let id = "0:127.0.0.1:22".parse::<RemoteForwardSpec>().unwrap().route_id();
        assigned.insert(id, 41000);
        let again = Table::new(Arc::new(set(&["0:127.0.0.1:22"], &[])), &assigned, &mut version);
        assert_eq!(again.entries[0].kind, RouteKind::Tcp { bind: None, port: 0, preferred_port: 41000 });
    }

    #[test]
    fn a_set_with_the_same_route_twice_is_refused_naming_both() {
        let err = set(&["8080:127.0.0.1:80", "8080:127.0.0.1:81"], &[]).check().unwrap_err();
        assert!(
            err.to_string().contains("8080:127.0.0.1:80") && err.to_string().contains("8080:127.0.0.1:81"),
            "{err}"
        );
        // Two forwards on port 0 to one target are two routes (they may differ in options).
        let twice = set(&["0:h:1", "0:h:1"], &[]);
        assert!(twice.check().is_ok());
        let ids = twice.remote_ids();
        assert_ne!(ids[0], ids[1]);
        assert_eq!(ids[0], set(&["0:h:1"], &[]).remote_ids()[0], "the first keeps the plain id");
        assert!(set(&["127.0.0.1:8080:h:1", "127.0.0.2:8080:h:1"], &[]).check().is_ok());
        assert_eq!(set(&[], &["k=h:1", "k=h:2"]).check(), Err(RouteSetError::DuplicateService("k".into())));
    }

    #[test]
    fn answers_must_cover_every_entry_once_and_nothing_else() {
        let mut version = 0;
        let table = Table::new(Arc::new(set(&["8080:h:1"], &["k=h:2"])), &HashMap::new(), &mut version);
        let ready = |id| RouteResult {
            id,
            outcome: RouteOutcome::Ready { public_addr: Some("0.0.0.0:8080".parse().unwrap()) },
        };
        let service =
            RouteResult { id: RouteId::of_service("k"), outcome: RouteOutcome::Ready { public_addr: None } };
        let forward = table.entries[0].id;
        let mut assigned = HashMap::new();
        let ok = table.answer(vec![service.clone(), ready(forward)], &mut assigned).ok().unwrap();
        assert_eq!((ok.forwards.len(), ok.services.len(), ok.refused.len()), (1, 1, 0));
        assert!(table.answer(vec![ready(forward)], &mut assigned).is_err(), "a missing answer");
        assert!(table.answer(vec![ready(forward), ready(forward), service.clone()], &mut assigned).is_err());
        assert!(table.answer(vec![ready(forward), service, ready(RouteId(9))], &mut assigned).is_err());
        let refused = RouteResult {
            id: forward,
            outcome: RouteOutcome::Refused { code: RefusalCode::PortTaken, message: "taken".into() },
        };
        let service_refused = RouteResult {
            id: RouteId::of_service("k"),
            outcome: RouteOutcome::Refused { code: RefusalCode::NameNotAllowed, message: "no".into() },
        };
        let none = table.answer(vec![refused, service_refused], &mut assigned).ok().unwrap();
        assert!(matches!(table.nothing_published(&none), Some(ClientError::ForwardRefused { .. })));
    }
}
