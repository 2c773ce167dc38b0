//! Authorization: which ports, addresses, services and targets each credential may use.
//!
//! Authentication ([`crate::auth::Credentials`]) says who a client is; the [`Policy`] says what
//! that client may do. Every decision is a pure function of the configuration and the question,
//! never of who is online, so an answer reveals nothing about other clients.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use crate::auth::CredentialKind;
use crate::forward::{Glob, IpNet, PortSet, TargetRules, VisitRule};

/// What clients may do: server-wide rules for shared-token clients and defaults, and the rules
/// of each client with its own token.
///
/// ```
/// use tunnel_core::auth::CredentialKind;
/// use tunnel_core::server::{ClientPolicy, Policy, PortVerdict};
///
/// let mut policy = Policy::default();
/// let mut cp = ClientPolicy::default();
/// cp.ports = Some("6443".parse().unwrap());
/// policy.clients.insert("control-plane".into(), cp);
/// let worker = policy.for_client("worker-1", CredentialKind::Shared);
/// assert_eq!(worker.may_bind_port(6443), PortVerdict::Owned);
/// assert_eq!(worker.may_bind_port(8080), PortVerdict::Allowed);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Policy {
    /// Ports a client may bind unless it has its own list (default 1024-65535).
    pub allow_ports: PortSet,
    /// Targets the server may dial for local forwards, unless a client has its own list
    /// (default: none).
    pub allow_targets: TargetRules,
    /// Address forwards bind when the client names none (default 0.0.0.0).
    pub default_bind: IpAddr,
    /// Addresses a client may ask its forwards to bind, unless it has its own list; empty (the
    /// default) allows only `default_bind`.
    pub allow_bind: Vec<IpAddr>,
    /// Hosts (globs over host patterns, `*.example.com`) shared-token clients may serve over
    /// HTTP and TLS (default: none).
    pub allow_hosts: Vec<Glob>,
    /// Networks shared-token clients may route (offer egress into) (default: none).
    pub allow_networks: Vec<IpNet>,
    /// Sessions a name on the shared token may hold at once, replicas of one client serving
    /// the same routes (default 1: a new session replaces the one before).
    pub max_replicas: usize,
    /// What each client with its own token may do, by name.
    pub clients: HashMap<String, ClientPolicy>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_ports: PortSet::unprivileged(),
            allow_targets: TargetRules::default(),
            default_bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            allow_bind: Vec::new(),
            allow_hosts: Vec::new(),
            allow_networks: Vec::new(),
            max_replicas: 1,
            clients: HashMap::new(),
        }
    }
}

/// What one client with its own token may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientPolicy {
    /// Ports it may bind; `None` for the server-wide `allow_ports`.
    pub allow_ports: Option<PortSet>,
    /// Services it may visit, as `CLIENT/SERVICE` rules, and networks, as
    /// `CLIENT/NETWORK[:PORTS]` rules (default: none).
    pub allow_visit: Vec<VisitRule>,
    /// Service names it may expose, as globs (default: none).
    pub allow_expose: Vec<Glob>,
    /// Targets the server may dial for it; `None` for the server-wide `allow_targets`.
    pub allow_targets: Option<TargetRules>,
    /// Ports it owns: no other client can ever bind them, online or not (default: none).
    pub ports: Option<PortSet>,
    /// Addresses its forwards may bind; `None` for the server-wide list.
    pub allow_bind: Option<Vec<IpAddr>>,
    /// Hosts it may serve over HTTP and TLS, as globs (default: none).
    pub allow_hosts: Vec<Glob>,
    /// Networks it may route (default: none).
    pub allow_networks: Vec<IpNet>,
    /// Sessions it may hold at once, replicas serving the same routes; `None` for one (a new
    /// session replaces the one before).
    pub replicas: Option<usize>,
}

/// Whether a client may bind a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PortVerdict {
    /// It may.
    Allowed,
    /// Another client owns it (its `ports` list).
    Owned,
    /// Outside the client's `allow_ports`.
    NotAllowed,
}

impl Policy {
    /// The rules that apply to the client `name` authenticated with `credential`.
    pub fn for_client<'a>(&'a self, name: &'a str, credential: CredentialKind) -> ClientRules<'a> {
        let own = match credential {
            CredentialKind::PerClient => self.clients.get(name),
            CredentialKind::Shared => None,
        };
        ClientRules { policy: self, name, credential, own }
    }

    /// The client that owns `port` through its `ports` list, if any.
    pub fn port_owner(&self, port: u16) -> Option<&str> {
        self.clients
            .iter()
            .find(|(_, p)| p.ports.as_ref().is_some_and(|ports| ports.contains(port)))
            .map(|(name, _)| name.as_str())
    }
}

/// The policy as it applies to one client.
#[derive(Debug, Clone, Copy)]
pub struct ClientRules<'a> {
    policy: &'a Policy,
    name: &'a str,
    credential: CredentialKind,
    /// Its own entry, if it has its own token and one.
    own: Option<&'a ClientPolicy>,
}

impl<'a> ClientRules<'a> {
    /// May it bind `port`? Owned ports belong to their owner alone (whatever either side's
    /// `allow_ports` says); other ports follow the client's `allow_ports`.
    pub fn may_bind_port(&self, port: u16) -> PortVerdict {
        match self.policy.port_owner(port) {
            Some(owner) if owner == self.name && self.credential == CredentialKind::PerClient => {
                PortVerdict::Allowed
            }
            Some(_) => PortVerdict::Owned,
            None if self.ports().contains(port) => PortVerdict::Allowed,
            None => PortVerdict::NotAllowed,
        }
    }

    /// Sessions it may hold at once (its replicas); at least 1.
    pub fn replicas(&self) -> usize {
        let replicas = match (self.own, self.credential) {
            (Some(own), _) => own.replicas.unwrap_or(1),
            (None, CredentialKind::Shared) => self.policy.max_replicas,
            (None, CredentialKind::PerClient) => 1,
        };
        replicas.max(1)
    }

    /// Its `allow_ports` (its own list, or the server-wide one).
    pub fn ports(&self) -> &'a PortSet {
        self.own.and_then(|p| p.allow_ports.as_ref()).unwrap_or(&self.policy.allow_ports)
    }

    /// Addresses its forwards may bind; never empty.
    pub fn bind_addresses(&self) -> &'a [IpAddr] {
        match self.own.and_then(|p| p.allow_bind.as_deref()) {
            Some(list) if !list.is_empty() => list,
            _ if !self.policy.allow_bind.is_empty() => &self.policy.allow_bind,
            _ => std::slice::from_ref(&self.policy.default_bind),
        }
    }

    /// The address a forward of its binds when it names none: the server's default if allowed
    /// to it, else the first address it may bind.
    pub fn default_bind(&self) -> IpAddr {
        let allowed = self.bind_addresses();
        if allowed.contains(&self.policy.default_bind) {
            self.policy.default_bind
        } else {
            allowed.first().copied().unwrap_or(self.policy.default_bind)
        }
    }

    /// Targets the server may dial for its local forwards.
    pub fn targets(&self) -> &'a TargetRules {
        self.own.and_then(|p| p.allow_targets.as_ref()).unwrap_or(&self.policy.allow_targets)
    }

    /// May it serve `host` (an HTTP or TLS route)? Shared-token clients by `allow_hosts`, a
    /// client with its own token by its entry's `allow_hosts`.
    pub fn may_serve_host(&self, host: &crate::proto::HostPattern) -> bool {
        let globs = match (self.own, self.credential) {
            (Some(own), _) => &own.allow_hosts,
            (None, CredentialKind::Shared) => &self.policy.allow_hosts,
            (None, CredentialKind::PerClient) => return false,
        };
        globs.iter().any(|g| g.matches_host(host.as_str()))
    }

    /// May it route `net` (offer egress into it)? Only inside a network its `allow_networks`
    /// lists: shared-token clients by the server-wide list, a client with its own token by
    /// its entry's.
    pub fn may_route_network(&self, net: &IpNet) -> bool {
        let allowed = match (self.own, self.credential) {
            (Some(own), _) => &own.allow_networks,
            (None, CredentialKind::Shared) => &self.policy.allow_networks,
            (None, CredentialKind::PerClient) => return false,
        };
        allowed.iter().any(|a| a.covers(net))
    }

    /// Shared-token clients expose any name; a client with its own token only what it is allowed.
    pub fn may_expose(&self, service: &str) -> bool {
        match self.own {
            None => self.credential == CredentialKind::Shared,
            Some(own) => own.allow_expose.iter().any(|g| g.matches(service)),
        }
    }

    /// Shared-token clients form one trust domain and visit each other's services; a client
    /// with its own token visits `OWNER/SERVICE` only where one of its `allow_visit` rules
    /// matches, and a plain rule matches only owners with their own token (`shared:` rules name
    /// shared-token owners). `owner` holds `owner_credential` by configuration, online or not,
    /// so the answer does not reveal whether it is connected.
    pub fn may_visit(&self, owner: &str, owner_credential: CredentialKind, service: &str) -> bool {
        let owner_shared = owner_credential == CredentialKind::Shared;
        match self.own {
            None => self.credential == CredentialKind::Shared && owner_shared,
            Some(own) => own.allow_visit.iter().any(|rule| rule.matches(owner, owner_shared, service)),
        }
    }

    /// May it reach `target` through `owner`, which routes a network holding it? As
    /// [`Self::may_visit`], with `allow_visit` rules naming networks (`OWNER/10.96.0.0/12`,
    /// matched against the address and port, never as text).
    pub fn may_visit_network(
        &self,
        owner: &str,
        owner_credential: CredentialKind,
        target: std::net::SocketAddr,
    ) -> bool {
        let owner_shared = owner_credential == CredentialKind::Shared;
        match self.own {
            None => self.credential == CredentialKind::Shared && owner_shared,
            Some(own) => own.allow_visit.iter().any(|rule| rule.matches_network(owner, owner_shared, target)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARED: CredentialKind = CredentialKind::Shared;
    const OWN: CredentialKind = CredentialKind::PerClient;

    fn hybrid() -> Policy {
        let mut policy = Policy { allow_ports: "10000-10100".parse().unwrap(), ..Policy::default() };
        let cp = ClientPolicy {
            ports: Some("6443".parse().unwrap()),
            allow_visit: vec!["worker-*/kubelet".parse().unwrap()],
            ..ClientPolicy::default()
        };
        let worker =
            ClientPolicy { allow_expose: vec!["kubelet".parse().unwrap()], ..ClientPolicy::default() };
        policy.clients.insert("cp".into(), cp);
        policy.clients.insert("worker-1".into(), worker);
        policy
    }

    #[test]
    fn an_owned_port_belongs_to_its_owner_with_its_own_token_only() {
        let policy = hybrid();
        assert_eq!(policy.for_client("cp", OWN).may_bind_port(6443), PortVerdict::Allowed);
        // The same name presenting the shared token is somebody else.
        assert_eq!(policy.for_client("cp", SHARED).may_bind_port(6443), PortVerdict::Owned);
        assert_eq!(policy.for_client("worker-1", OWN).may_bind_port(6443), PortVerdict::Owned);
        assert_eq!(policy.for_client("worker-1", OWN).may_bind_port(10050), PortVerdict::Allowed);
        assert_eq!(policy.for_client("worker-1", OWN).may_bind_port(22), PortVerdict::NotAllowed);
    }

    #[test]
    fn visits_and_exposes_follow_the_credential_kinds() {
        let policy = hybrid();
        let cp = policy.for_client("cp", OWN);
        assert!(cp.may_visit("worker-1", OWN, "kubelet"));
        assert!(!cp.may_visit("worker-1", SHARED, "kubelet"), "a plain rule names own-token owners only");
        assert!(!cp.may_visit("worker-1", OWN, "ssh"));
        let stranger = policy.for_client("anyone", SHARED);
        assert!(stranger.may_visit("other", SHARED, "x"));
        assert!(!stranger.may_visit("worker-1", OWN, "kubelet"));
        assert!(policy.for_client("worker-1", OWN).may_expose("kubelet"));
        assert!(!policy.for_client("worker-1", OWN).may_expose("ssh"));
        assert!(
            !policy.for_client("unlisted", OWN).may_expose("x"),
            "an own token without an entry exposes nothing"
        );
        assert!(stranger.may_expose("anything"));
    }

    #[test]
    fn networks_are_routed_only_inside_the_allowed_ones_and_visited_by_rule() {
        let mut policy = hybrid();
        policy.allow_networks = vec!["10.0.0.0/8".parse().unwrap()];
        let site = ClientPolicy {
            allow_networks: vec!["10.96.0.0/12".parse().unwrap(), "fd00::/8".parse().unwrap()],
            ..ClientPolicy::default()
        };
        policy.clients.insert("site".into(), site);
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let site = policy.for_client("site", OWN);
        assert!(
            site.may_route_network(&net("10.96.0.0/12")) && site.may_route_network(&net("10.100.0.0/16"))
        );
        assert!(!site.may_route_network(&net("10.0.0.0/8")), "wider than allowed");
        assert!(site.may_route_network(&net("fd00:1::/32")) && !site.may_route_network(&net("fe80::/10")));
        // The shared token has the server-wide list; an own token without a list has nothing.
        assert!(policy.for_client("anyone", SHARED).may_route_network(&net("10.1.0.0/16")));
        assert!(!policy.for_client("site", SHARED).may_route_network(&net("fd00::/8")), "not its own list");
        assert!(!policy.for_client("cp", OWN).may_route_network(&net("10.1.0.0/16")));
        // A network is visited by rules naming one, matched against the address.
        policy.clients.get_mut("cp").unwrap().allow_visit.push("site/10.96.0.0/16:443".parse().unwrap());
        let cp = policy.for_client("cp", OWN);
        let to = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert!(cp.may_visit_network("site", OWN, to("10.96.3.4:443")));
        assert!(
            !cp.may_visit_network("site", OWN, to("10.97.3.4:443"))
                && !cp.may_visit_network("site", OWN, to("10.96.3.4:22"))
        );
        assert!(
            !cp.may_visit_network("site", SHARED, to("10.96.3.4:443")),
            "an impostor on the shared token"
        );
    }

    #[test]
    fn the_default_bind_is_used_only_where_it_is_allowed() {
        let mut policy = Policy { default_bind: "127.0.0.1".parse().unwrap(), ..Policy::default() };
        assert_eq!(policy.for_client("a", SHARED).bind_addresses(), ["127.0.0.1".parse::<IpAddr>().unwrap()]);
        policy.allow_bind = vec!["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()];
        assert_eq!(policy.for_client("a", SHARED).default_bind(), "192.0.2.1".parse::<IpAddr>().unwrap());
        policy.allow_bind.push("127.0.0.1".parse().unwrap());
        assert_eq!(policy.for_client("a", SHARED).default_bind(), "127.0.0.1".parse::<IpAddr>().unwrap());
    }
}
