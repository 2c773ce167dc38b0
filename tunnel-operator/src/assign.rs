//! Claims decided into each tunnel's routes: which namespace holds a host, which object keeps a
//! route two ask for, and what fits a tunnel's budgets. A tunnel's `status.hosts` records the
//! outcome, and the next decision starts from it: a holder keeps what it is served.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tunnel_core::config::RouteFile;
use tunnel_core::forward::Glob;
use tunnel_core::proto::{RouteEntry, RouteId};

use crate::crd::{HeldHost, HeldRoute};
use crate::routes::{Claim, Note, Source};
use crate::tunnels::TunnelKey;

pub use crate::routes::{ROUTE_BUDGET, ROUTE_BYTES};

/// Bytes of those routes in the table the connector sends its server, at most: the most a
/// server takes, less room for the tunnel's own fallback and up to 63 networks (27 bytes each
/// at most). Past it, every session of the connector would end as it sent its table, and with
/// it every tenant's routes.
pub const ROUTE_WIRE_BYTES: usize = tunnel_core::client::MAX_TABLE_BYTES - 4 * 1024;

/// The hosts each tunnel's routes may use: its `allowedHosts` (a tunnel missing, or with an
/// empty list: any host; `None`: a list that does not parse, which allows none).
pub type Allowed = BTreeMap<TunnelKey, Option<Vec<Glob>>>;

/// The claims whose hosts their tunnels allow; each object refused gets one note per host
/// (`HostNotAllowed`). A wildcard over a top-level domain (`*.com`) is refused on every tunnel:
/// it would take every host of that domain no other client of the server serves.
pub fn admit_hosts(claims: Vec<Claim>, allowed: &Allowed, notes: &mut Vec<Note>) -> Vec<Claim> {
    let mut told: BTreeSet<(String, String)> = BTreeSet::new();
    let mut admitted = Vec::with_capacity(claims.len());
    for claim in claims {
        let host = claim.route.host.as_str();
        let why = if claim.route.host.wildcard_suffix().is_some_and(|suffix| !suffix.contains('.')) {
            Some(format!("host {host} is a wildcard over a whole top-level domain"))
        } else {
            let Some(globs) = allowed.get(&claim.tunnel).map_or(Some(&[][..]), |g| g.as_deref()) else {
                // The tunnel's status says its spec is invalid; no connector is rendered.
                continue;
            };
            let refused = !globs.is_empty() && !globs.iter().any(|glob| glob.matches_host(host));
            let listed = || globs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            refused.then(|| format!("host {host} is not among the tunnel's allowedHosts ({})", listed()))
        };
        match why {
            Some(message) => {
                if told.insert((claim.source.describe(), host.to_owned())) {
                    notes.push(Note::new(&claim.source, "HostNotAllowed", message));
                }
            }
            None => admitted.push(claim),
        }
    }
    admitted
}

/// What each tunnel served after the last decision: its `status.hosts`.
pub type Held = BTreeMap<TunnelKey, Vec<HeldHost>>;

/// One tunnel's share of a decision.
#[derive(Debug, Clone, Default)]
pub struct Assigned {
    /// The routes its connector serves.
    pub routes: Vec<RouteFile>,
    /// Who holds each host served, and the routes served on it: its next `status.hosts`.
    pub hosts: Vec<HeldHost>,
    /// Each object with a route served, and the host of that route (once each).
    pub served: Vec<(Source, String)>,
}

/// What the routes of every source ask, per tunnel, with conflicts decided.
///
/// A host belongs to one namespace on a tunnel: objects of other namespaces get none of its
/// paths (a newer `/login` would otherwise take that path from the owner's `/`). The namespace
/// `held` names keeps it while one of its objects still claims it; a host no one holds goes to
/// the namespace of the oldest object claiming it. Within the namespace, the older object keeps
/// a host and path, the newer is told (as is one whose route's id, a hash of what it matches,
/// is another route's).
///
/// Routes are taken up to [`ROUTE_BUDGET`], [`ROUTE_BYTES`] and [`ROUTE_WIRE_BYTES`] per
/// tunnel: first those `held` lists as served, then the others, older objects first. An object
/// past the budgets is told (`TooManyRoutes`), so one object with thousands of routes leaves
/// the others served rather than the whole tunnel's configuration invalid, and an old object
/// given new routes cannot push out routes already served.
pub fn assign(
    claims: Vec<Claim>,
    held: &Held,
    now: &Time,
    notes: &mut Vec<Note>,
) -> BTreeMap<TunnelKey, Assigned> {
    // A host listed twice (a hand-edited status) counts as its first entry only.
    let mut record: BTreeMap<(&TunnelKey, &str), &HeldHost> = BTreeMap::new();
    for (tunnel, entries) in held {
        for entry in entries {
            record.entry((tunnel, entry.host.as_str())).or_insert(entry);
        }
    }
    // Each claim's host and entry, built once, and its place in the record.
    let mut claims: Vec<Ranked> = claims
        .into_iter()
        .map(|claim| {
            let host = claim.route.host.to_string();
            // Routes come checked (`routes::build`): an entry that cannot be built is never
            // served, so it is counted as filling the budget.
            let entry = claim.route.build().map(|route| route.entry());
            let bytes = toml::to_string(&claim.route).map_or(usize::MAX, |text| text.len());
            let held = record.get(&(&claim.tunnel, host.as_str()));
            let namespace = claim.source.reference.namespace.as_deref().unwrap_or_default();
            let holder = held.filter(|h| h.namespace == namespace);
            // A route keeps its place only as large as it was: one grown (headers added to a
            // route matching the same) would otherwise push out others' routes served.
            let served_before = holder.zip(entry.as_ref().ok()).is_some_and(|(h, entry)| {
                let id = entry.id.to_string();
                h.routes.iter().any(|r| r.id == id && u64::try_from(bytes).is_ok_and(|b| b <= r.bytes))
            });
            Ranked { holds: holder.is_some(), served_before, host, entry, bytes, claim }
        })
        .collect();
    // Who holds each host: its holder's oldest object claiming it, else the oldest object.
    // The first claim owns the host, served or not (past the budget).
    claims
        .sort_by(|a, b| (!a.holds, a.claim.source.order_key()).cmp(&(!b.holds, b.claim.source.order_key())));
    let mut hosts: BTreeMap<(TunnelKey, String), Source> = BTreeMap::new();
    for ranked in &claims {
        let key = (ranked.claim.tunnel.clone(), ranked.host.clone());
        hosts.entry(key).or_insert_with(|| ranked.claim.source.clone());
    }
    // A host its holder no longer claims stays reserved to it for `RELEASE_GRACE`, so a
    // claimant of another namespace waiting with an older object does not take it in the
    // moment between an uninstall and an install.
    let mut reserved: BTreeMap<(TunnelKey, String), HeldHost> = BTreeMap::new();
    for (&(tunnel, host), entry) in &record {
        let key = (tunnel.clone(), host.to_owned());
        let claimed = hosts.get(&key).is_some_and(|owner| namespace(owner) == entry.namespace);
        // A time ahead of now (an edited status) counts as now; whole seconds, as a status
        // keeps it.
        let since = entry.released.as_ref().map_or(now.0, |t| t.0.min(now.0));
        let since = Timestamp::from_second(since.as_second()).unwrap_or(since);
        let until = since.checked_add(RELEASE_GRACE).unwrap_or(since);
        if !claimed && until > now.0 {
            reserved.insert(
                key,
                HeldHost { routes: Vec::new(), released: Some(Time(since)), ..(*entry).clone() },
            );
        }
    }
    claims.sort_by(|a, b| {
        (!a.served_before, a.claim.source.order_key()).cmp(&(!b.served_before, b.claim.source.order_key()))
    });
    let mut taken: BTreeMap<(TunnelKey, String), Source> = BTreeMap::new();
    let mut out: BTreeMap<TunnelKey, Assigned> = BTreeMap::new();
    let mut served: BTreeMap<(TunnelKey, String), Vec<HeldRoute>> = BTreeMap::new();
    let mut ids: BTreeMap<(TunnelKey, RouteId), String> = BTreeMap::new();
    let mut spent: BTreeMap<TunnelKey, Spent> = BTreeMap::new();
    let mut over_budget: Vec<(TunnelKey, Source)> = Vec::new();
    for Ranked { claim, host, entry, bytes, .. } in claims {
        let host = (claim.tunnel.clone(), host);
        if let Some(holder) = reserved.get(&host) {
            // No time in the message: an Event is recorded once per distinct message.
            let message = format!(
                "host {} is reserved to namespace {} on this tunnel for {} minutes after it \
                 stopped claiming it (see the tunnel's status.hosts)",
                host.1,
                holder.namespace,
                RELEASE_GRACE.as_secs() / 60
            );
            notes.push(Note::new(&claim.source, "RouteConflict", message));
            continue;
        }
        let owner = &hosts[&host];
        if owner.reference.namespace != claim.source.reference.namespace {
            let message = format!(
                "host {} belongs to namespace {} on this tunnel (claimed by {})",
                host.1,
                owner.reference.namespace.as_deref().unwrap_or(""),
                owner.describe()
            );
            notes.push(Note::new(&claim.source, "RouteConflict", message));
            continue;
        }
        let identity = route_identity(&claim.route);
        match taken.get(&(claim.tunnel.clone(), identity.clone())) {
            Some(owner) if owner != &claim.source => notes.push(Note::new(
                &claim.source,
                "RouteConflict",
                format!("{identity} is already served by {}", owner.describe()),
            )),
            Some(_) => {}
            None => {
                let wire = entry.as_ref().map_or(usize::MAX, RouteEntry::encoded_len);
                let id = entry.as_ref().ok().map(|entry| entry.id);
                if let Some((id, other)) = id.and_then(|id| Some((id, ids.get(&(claim.tunnel.clone(), id))?)))
                {
                    let message = format!("{identity} has the route id {id} of {other}; change either");
                    notes.push(Note::new(&claim.source, "RouteConflict", message));
                    continue;
                }
                let size = Spent { routes: 1, toml: bytes, wire };
                let spent = spent.entry(claim.tunnel.clone()).or_default();
                if !spent.fits(&size) {
                    let first = !over_budget.iter().any(|(t, s)| *t == claim.tunnel && *s == claim.source);
                    if first {
                        let Spent { routes, toml, wire } = spent;
                        let message = format!(
                            "the tunnel carries {routes} routes ({toml} bytes of configuration, {wire} on the \
                             wire; at most {ROUTE_BUDGET} routes, {ROUTE_BYTES} and {ROUTE_WIRE_BYTES} bytes): \
                             {identity} is left out, and any further route of this object that does not fit"
                        );
                        notes.push(Note::new(&claim.source, "TooManyRoutes", message));
                        over_budget.push((claim.tunnel.clone(), claim.source.clone()));
                    }
                    continue;
                }
                spent.add(&size);
                let served_host = (claim.source.clone(), host.1.clone());
                if let Some(id) = id {
                    ids.insert((claim.tunnel.clone(), id), identity.clone());
                    let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
                    served.entry(host).or_default().push(HeldRoute { id: id.to_string(), bytes });
                }
                taken.insert((claim.tunnel.clone(), identity), claim.source.clone());
                let assigned = out.entry(claim.tunnel).or_default();
                if !assigned.served.contains(&served_host) {
                    assigned.served.push(served_host);
                }
                assigned.routes.push(claim.route);
            }
        }
    }
    let namespace_of = |key: &(TunnelKey, String)| namespace(&hosts[key]).to_owned();
    for (key, mut routes) in served {
        routes.sort_by(|a, b| a.id.cmp(&b.id));
        let namespace = namespace_of(&key);
        let (tunnel, host) = key;
        out.entry(tunnel).or_default().hosts.push(HeldHost { host, namespace, routes, released: None });
    }
    // A host held before stays held while its holder claims it, even when none of its routes
    // fit now: pushed out of the budget for a pass, it would otherwise go to a claimant of
    // another namespace waiting with an older object. Then the reservations. Up to
    // `MAX_HELD_HOSTS` per tunnel, in that order: those served, those held and claimed, those
    // reserved.
    for (&(tunnel, host), entry) in &record {
        let assigned = out.entry(tunnel.clone()).or_default();
        let key = (tunnel.clone(), host.to_owned());
        let holds = hosts.contains_key(&key) && namespace_of(&key) == entry.namespace;
        let listed = assigned.hosts.iter().any(|h| h.host == host);
        if holds && !listed && assigned.hosts.len() < MAX_HELD_HOSTS {
            assigned.hosts.push(HeldHost { routes: Vec::new(), released: None, ..(*entry).clone() });
        }
    }
    for ((tunnel, _), entry) in reserved {
        let assigned = out.entry(tunnel).or_default();
        if assigned.hosts.len() < MAX_HELD_HOSTS {
            assigned.hosts.push(entry);
        }
    }
    for assigned in out.values_mut() {
        assigned.hosts.sort_by(|a, b| a.host.cmp(&b.host));
    }
    out.retain(|_, assigned| !assigned.routes.is_empty() || !assigned.hosts.is_empty());
    out
}

/// How long a host its holder released stays reserved to it.
pub const RELEASE_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// The namespace of `source` (none: the empty name, as the record writes it).
fn namespace(source: &Source) -> &str {
    source.reference.namespace.as_deref().unwrap_or_default()
}

/// Hosts one tunnel's record keeps at most: those served (at most [`ROUTE_BUDGET`]) and as many
/// again held with none of their routes served.
pub const MAX_HELD_HOSTS: usize = 2 * ROUTE_BUDGET;

/// A claim with what the decision looks up more than once.
struct Ranked {
    claim: Claim,
    host: String,
    entry: Result<RouteEntry, String>,
    /// Bytes of configuration it takes.
    bytes: usize,
    /// Its namespace holds the host (the tunnel's `status.hosts`).
    holds: bool,
    /// It was served: its namespace holds the host and the record lists its route.
    served_before: bool,
}

/// What a tunnel's routes take of its budgets.
#[derive(Debug, Default)]
struct Spent {
    routes: usize,
    /// Bytes of configuration (TOML).
    toml: usize,
    /// Bytes in the table sent to the server.
    wire: usize,
}

impl Spent {
    fn fits(&self, more: &Spent) -> bool {
        self.routes.saturating_add(more.routes) <= ROUTE_BUDGET
            && self.toml.saturating_add(more.toml) <= ROUTE_BYTES
            && self.wire.saturating_add(more.wire) <= ROUTE_WIRE_BYTES
    }

    fn add(&mut self, more: &Spent) {
        self.routes += more.routes;
        self.toml += more.toml;
        self.wire += more.wire;
    }
}

/// What makes two routes the same route: all they match on.
fn route_identity(route: &RouteFile) -> String {
    let mut text = route.host.to_string();
    if let Some(path) = &route.path {
        let kind = route.path_type.map_or("prefix", |t| match t {
            tunnel_core::config::PathType::Prefix => "prefix",
            tunnel_core::config::PathType::Exact => "exact",
            tunnel_core::config::PathType::Regex => "regex",
        });
        text.push_str(&format!(" path {path} ({kind})"));
    }
    if !route.methods.is_empty() {
        text.push_str(&format!(" methods {}", route.methods.join(",")));
    }
    for (name, value) in &route.headers {
        text.push_str(&format!(" header {name}={value}"));
    }
    text
}

#[cfg(test)]
#[path = "assign_tests.rs"]
mod tests;
