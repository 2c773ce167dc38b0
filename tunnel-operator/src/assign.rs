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

/// Routes from Ingresses and HTTPRoutes one tunnel's connector takes at most: its route table's
/// limit, less room for the tunnel's own fallback and up to 63 networks.
pub const ROUTE_BUDGET: usize = tunnel_core::client::MAX_ROUTES_PER_SET - 64;

/// Bytes of those routes (as TOML) one tunnel's configuration takes at most, well under the
/// 1 MiB a ConfigMap may hold.
pub const ROUTE_BYTES: usize = 768 * 1024;

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
                if let Some(id) = id {
                    ids.insert((claim.tunnel.clone(), id), identity.clone());
                    let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
                    served.entry(host).or_default().push(HeldRoute { id: id.to_string(), bytes });
                }
                taken.insert((claim.tunnel.clone(), identity), claim.source.clone());
                out.entry(claim.tunnel).or_default().routes.push(claim.route);
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
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn a_route_whose_id_another_route_has_is_told_and_the_first_stays() {
        // A route's id is a hash of what it matches, header names in lowercase: two HTTPRoutes
        // matching `X-Env` and `x-env` are one route to the connector (and a tenant could
        // search for two of its own routes with one 64-bit id). Before, the connector's whole
        // table was refused as holding a route twice, and every tenant's routes froze.
        let mut first = claim("team-a", "one", 1, "x.example.com", "/a");
        let mut second = claim("team-a", "two", 2, "x.example.com", "/a");
        first.route.headers.insert("X-Env".into(), "canary".into());
        second.route.headers.insert("x-env".into(), "canary".into());
        let mut notes = Vec::new();
        let id = |route: &RouteFile| route.build().unwrap().entry().id;
        assert_eq!(id(&first.route), id(&second.route));
        assert_ne!(route_identity(&first.route), route_identity(&second.route));
        let assigned = assign(vec![first, second], &Held::new(), &now(), &mut notes);
        assert_eq!(assigned.values().flat_map(|a| &a.routes).count(), 1);
        let [note] = notes.as_slice() else { panic!("{notes:?}") };
        assert_eq!(
            (note.reason.as_str(), note.source.reference.name.as_deref()),
            ("RouteConflict", Some("two"))
        );
        assert!(note.message.contains("route id"), "{}", note.message);
    }

    /// A claim of `namespace/name`, created on day `day`, for `host` and `path`.
    fn claim(namespace: &str, name: &str, day: u32, host: &str, path: &str) -> Claim {
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            kind: Some("Ingress".into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..Default::default()
        };
        let created = Time(format!("2026-01-{day:02}T00:00:00Z").parse().unwrap());
        let route: RouteFile =
            toml::from_str(&format!("host = {host:?}\npath = {path:?}\nservice = \"http://web.a.svc:80\"\n"))
                .unwrap();
        Claim {
            tunnel: TunnelKey::Cluster { name: "shared".into() },
            source: crate::routes::Source { reference, created: Some(created) },
            route,
        }
    }

    #[test]
    fn past_the_byte_budget_a_host_stays_its_first_claimants_and_smaller_routes_still_fit() {
        let mut notes = Vec::new();
        let huge = format!("/{}", "a".repeat(ROUTE_BYTES));
        let claims = vec![
            claim("team-a", "big", 1, "x.example.com", &huge),
            claim("team-b", "small", 2, "x.example.com", "/"),
            claim("team-b", "other", 3, "y.example.com", "/"),
        ];
        let assigned = assign(claims, &Held::new(), &now(), &mut notes);
        let served: Vec<String> =
            assigned.values().flat_map(|a| &a.routes).map(|r| r.host.to_string()).collect();
        assert_eq!(served, ["y.example.com"], "a route that fits is still taken");
        let refused: Vec<_> =
            notes.iter().map(|n| (n.reason.as_str(), n.source.reference.name.clone())).collect();
        assert_eq!(
            refused,
            [("TooManyRoutes", Some("big".to_owned())), ("RouteConflict", Some("small".to_owned()))],
            "x.example.com stays team-a's, served or not"
        );
    }
    #[test]
    fn the_room_kept_for_a_tunnels_own_routes_holds_its_fallback_and_63_networks() {
        use tunnel_core::proto::{IpNet, RouteKind};
        let network = RouteEntry {
            id: RouteId(u64::MAX),
            kind: RouteKind::Network { net: "2001:db8::/32".parse::<IpNet>().unwrap() },
        };
        let fallback = RouteEntry { id: RouteId(u64::MAX), kind: RouteKind::HttpFallback };
        let own = crate::connector::MAX_NETWORKS * network.encoded_len()
            + fallback.encoded_len()
            + tunnel_core::proto::TABLE_OVERHEAD;
        assert!(own <= tunnel_core::client::MAX_TABLE_BYTES - ROUTE_WIRE_BYTES, "{own}");
    }

    fn now() -> Time {
        Time("2026-06-01T00:00:00Z".parse().unwrap())
    }

    /// A decision's record, as the next decision reads it back from the tunnels' statuses.
    fn record(assigned: &BTreeMap<TunnelKey, Assigned>) -> Held {
        assigned.iter().map(|(tunnel, a)| (tunnel.clone(), a.hosts.clone())).collect()
    }

    fn served(assigned: &BTreeMap<TunnelKey, Assigned>) -> Vec<String> {
        let routes = assigned.values().flat_map(|a| &a.routes);
        routes.map(|r| format!("{}{}", r.host, r.path.as_deref().unwrap_or(""))).collect()
    }

    #[test]
    fn a_host_stays_with_its_holder_whatever_the_age_of_another_namespaces_object() {
        // team-a is served x.example.com; team-b then adds the host to an Ingress of its own
        // created long before. Before the record, the oldest object's namespace took the host,
        // and every path of team-a's with it.
        let site = claim("team-a", "site", 5, "x.example.com", "/");
        let old = claim("team-b", "old", 1, "x.example.com", "/login");
        let alone = assign(vec![site.clone()], &Held::new(), &now(), &mut Vec::new());
        let id = site.route.build().unwrap().entry().id.to_string();
        let bytes = toml::to_string(&site.route).unwrap().len() as u64;
        let hosts = &alone[&site.tunnel].hosts;
        let routes = vec![HeldRoute { id, bytes }];
        let expected =
            HeldHost { host: "x.example.com".into(), namespace: "team-a".into(), routes, released: None };
        assert_eq!(hosts, &[expected]);

        let mut notes = Vec::new();
        let kept = assign(vec![site.clone(), old.clone()], &record(&alone), &now(), &mut notes);
        assert_eq!(served(&kept), ["x.example.com/"]);
        assert_eq!(kept[&site.tunnel].hosts, *hosts, "the record stays as it was");
        let [note] = notes.as_slice() else { panic!("{notes:?}") };
        assert_eq!(
            (note.reason.as_str(), note.source.reference.name.as_deref()),
            ("RouteConflict", Some("old"))
        );
        assert!(note.message.contains("belongs to namespace team-a"), "{}", note.message);

        // Without the record (a status lost), age decides, as it did for every decision before.
        let mut notes = Vec::new();
        let by_age = assign(vec![site, old], &Held::new(), &now(), &mut notes);
        assert_eq!(served(&by_age), ["x.example.com/login"]);
    }

    #[test]
    fn a_host_its_holder_released_stays_reserved_for_a_while_then_goes_to_the_oldest_claimant() {
        let site = claim("team-a", "site", 5, "x.example.com", "/");
        let held = record(&assign(vec![site.clone()], &Held::new(), &now(), &mut Vec::new()));
        let later = claim("team-b", "later", 2, "x.example.com", "/b");
        let earlier = claim("team-c", "earlier", 1, "x.example.com", "/c");
        let claims = || vec![later.clone(), earlier.clone()];
        let at = |minutes: i64| Time(now().0 + k8s_openapi::jiff::SignedDuration::from_mins(minutes));

        // Released (an uninstall): reserved to team-a; before, team-c's older object took it
        // in the moment before the install that follows.
        let mut notes = Vec::new();
        let released = assign(claims(), &held, &now(), &mut notes);
        assert!(served(&released).is_empty());
        let record_of = |assigned: &BTreeMap<TunnelKey, Assigned>| {
            let hosts = assigned.values().flat_map(|a| &a.hosts);
            hosts.map(|h| (h.namespace.clone(), h.released.clone())).collect::<Vec<_>>()
        };
        assert_eq!(record_of(&released), [("team-a".to_owned(), Some(now()))]);
        assert_eq!(notes.len(), 2);
        assert!(notes[0].message.contains("reserved to namespace team-a"), "{}", notes[0].message);
        // Still reserved 9 minutes on, from the same release; claimed again, it is held again.
        let still = assign(claims(), &record(&released), &at(9), &mut Vec::new());
        assert_eq!(record_of(&still), [("team-a".to_owned(), Some(now()))]);
        let back = assign(vec![site, later.clone()], &record(&still), &at(9), &mut Vec::new());
        assert_eq!(
            (served(&back), record_of(&back)),
            (vec!["x.example.com/".to_owned()], vec![("team-a".to_owned(), None)])
        );

        // 10 minutes after its release, the oldest claimant's.
        let mut notes = Vec::new();
        let free = assign(claims(), &record(&still), &at(10), &mut notes);
        assert_eq!(served(&free), ["x.example.com/c"]);
        assert_eq!(record_of(&free), [("team-c".to_owned(), None)]);
        let refused: Vec<_> = notes.iter().map(|n| n.source.reference.name.as_deref()).collect();
        assert_eq!(refused, [Some("later")]);
    }

    #[test]
    fn routes_served_keep_their_places_before_new_routes_of_older_objects() {
        // team-a's routes fill the budget; team-b gives an Ingress created long before a route
        // on a host of its own. Before the record it took a place, and one of team-a's routes
        // served until then was left out.
        let site: Vec<Claim> = (0..ROUTE_BUDGET)
            .map(|n| claim("team-a", "site", 5, "a.example.com", &format!("/p{n}")))
            .collect();
        let held = record(&assign(site.clone(), &Held::new(), &now(), &mut Vec::new()));
        assert_eq!(held.values().flatten().map(|h| h.routes.len()).sum::<usize>(), ROUTE_BUDGET);
        let mut claims = site.clone();
        claims.push(claim("team-b", "old", 1, "b.example.com", "/"));

        let mut notes = Vec::new();
        let assigned = assign(claims.clone(), &held, &now(), &mut notes);
        let served = served(&assigned);
        assert_eq!(served.len(), ROUTE_BUDGET);
        assert!(served.iter().all(|r| r.starts_with("a.example.com/")), "every route served before stays");
        let refused: Vec<_> =
            notes.iter().map(|n| (n.reason.as_str(), n.source.reference.name.as_deref())).collect();
        assert_eq!(refused, [("TooManyRoutes", Some("old"))]);

        let by_age = assign(claims, &Held::new(), &now(), &mut Vec::new());
        assert!(
            super::tests::served(&by_age).contains(&"b.example.com/".to_owned()),
            "without the record, age decides"
        );
    }

    #[test]
    fn only_the_hosts_a_tunnel_allows_are_admitted_and_never_a_top_level_wildcard() {
        let shared = TunnelKey::Cluster { name: "shared".into() };
        let claims = || {
            vec![
                claim("team-a", "site", 1, "a.apps.example.com", "/"),
                claim("team-a", "wild", 1, "*.apps.example.com", "/"),
                claim("team-a", "shop", 1, "shop.example.com", "/"),
                claim("team-b", "steal", 2, "login.example.com", "/"),
                claim("team-b", "steal", 2, "login.example.com", "/api"),
                claim("team-b", "all", 3, "*.com", "/"),
            ]
        };
        let names = |claims: &[Claim]| claims.iter().map(|c| c.route.host.to_string()).collect::<Vec<_>>();
        let told = |notes: &[Note]| {
            notes
                .iter()
                .map(|n| (n.reason.clone(), n.source.reference.name.clone().unwrap()))
                .collect::<Vec<_>>()
        };

        // No list: any host, but not a wildcard over all of `.com`.
        let mut notes = Vec::new();
        let admitted = admit_hosts(claims(), &Allowed::new(), &mut notes);
        assert_eq!(names(&admitted).len(), 5);
        assert_eq!(told(&notes), [("HostNotAllowed".to_owned(), "all".to_owned())]);
        assert!(notes[0].message.contains("top-level domain"), "{}", notes[0].message);

        // A list: its globs, as the server's allow_hosts reads them.
        let globs = ["*.apps.example.com", "shop.example.com"].map(|g| g.parse().unwrap()).to_vec();
        let mut notes = Vec::new();
        let admitted = admit_hosts(claims(), &Allowed::from([(shared.clone(), Some(globs))]), &mut notes);
        assert_eq!(names(&admitted), ["a.apps.example.com", "*.apps.example.com", "shop.example.com"]);
        let refused = told(&notes);
        assert_eq!(
            refused,
            [("HostNotAllowed".into(), "steal".into()), ("HostNotAllowed".into(), "all".into())]
        );
        assert!(notes[0].message.contains("not among the tunnel's allowedHosts"), "{}", notes[0].message);

        // A list that does not parse admits nothing (the tunnel is told, not each object).
        let mut notes = Vec::new();
        assert!(admit_hosts(claims(), &Allowed::from([(shared, None)]), &mut notes).is_empty());
        assert_eq!(told(&notes), [("HostNotAllowed".to_owned(), "all".to_owned())]);
    }

    #[test]
    fn a_route_grown_since_it_was_served_keeps_no_place_and_a_host_pushed_out_stays_held() {
        // team-b's old object is served on its own host, team-a's newer one on x.example.com.
        let small = claim("team-b", "old", 1, "b.example.com", "/");
        let site = claim("team-a", "site", 5, "x.example.com", "/");
        let waiting = claim("team-b", "old", 1, "x.example.com", "/login");
        let held = record(&assign(
            vec![small.clone(), site.clone(), waiting.clone()],
            &Held::new(),
            &now(),
            &mut Vec::new(),
        ));
        // Before this record, the oldest object took x.example.com.
        assert_eq!(
            held.values().flatten().map(|h| h.namespace.as_str()).collect::<Vec<_>>(),
            ["team-b", "team-b"]
        );
        let held = record(&assign(vec![small.clone(), site.clone()], &Held::new(), &now(), &mut Vec::new()));

        // team-b grows its route (same match, headers added up to the whole byte budget):
        // it would keep its place ahead of team-a's and push it out, and then x.example.com
        // would go to team-b's older object waiting for it.
        let mut grown = small.clone();
        let size = |claim: &Claim| toml::to_string(&claim.route).unwrap().len();
        let room = ROUTE_BYTES - size(&site);
        for (n, value) in (0..).map(|n| (n, if n < 190 { 4000 } else { 40 })) {
            if size(&grown) > room {
                break;
            }
            grown.route.request_headers.add.insert(format!("x-pad-{n}"), "p".repeat(value));
        }
        assert!(size(&grown) <= ROUTE_BYTES && grown.route.build().is_ok());
        assert_eq!(grown.route.build().unwrap().entry().id, small.route.build().unwrap().entry().id);
        let mut notes = Vec::new();
        let assigned = assign(vec![grown.clone(), site.clone(), waiting.clone()], &held, &now(), &mut notes);
        assert_eq!(served(&assigned), ["x.example.com/"], "the grown route is new and does not fit");
        let refused: Vec<_> =
            notes.iter().map(|n| (n.reason.as_str(), n.source.reference.name.as_deref())).collect();
        assert_eq!(refused, [("TooManyRoutes", Some("old")), ("RouteConflict", Some("old"))]);

        // Pushed out of the budget for a pass, a host stays its holder's.
        let mut huge = site.clone();
        huge.route.path = Some(format!("/{}", "a".repeat(ROUTE_BYTES)));
        let pushed = assign(vec![huge, waiting.clone()], &held, &now(), &mut Vec::new());
        assert!(served(&pushed).is_empty(), "{:?}", served(&pushed));
        let kept = record(&pushed);
        let x: Vec<_> = kept
            .values()
            .flatten()
            .map(|h| (h.host.as_str(), h.namespace.as_str(), h.routes.len()))
            .collect();
        // b.example.com, which team-b's object no longer claims, is reserved to team-b.
        assert_eq!(x, [("b.example.com", "team-b", 0), ("x.example.com", "team-a", 0)]);
        let back = assign(vec![site, waiting], &kept, &now(), &mut Vec::new());
        assert_eq!(served(&back), ["x.example.com/"]);
    }

    #[test]
    fn a_host_listed_twice_in_the_record_counts_as_its_first_entry() {
        let a = claim("team-a", "site", 5, "x.example.com", "/a");
        let b = claim("team-b", "site", 1, "x.example.com", "/b");
        let entry = |namespace: &str| HeldHost {
            host: "x.example.com".into(),
            namespace: namespace.into(),
            ..HeldHost::default()
        };
        let held = Held::from([(a.tunnel.clone(), vec![entry("team-a"), entry("team-b")])]);
        let mut notes = Vec::new();
        let assigned = assign(vec![a, b], &held, &now(), &mut notes);
        assert_eq!(served(&assigned), ["x.example.com/a"]);
        let record: Vec<_> = assigned
            .values()
            .flat_map(|a| &a.hosts)
            .map(|h| (h.namespace.as_str(), h.released.is_some()))
            .collect();
        assert_eq!(record, [("team-a", false)], "one entry, held, not reserved to the second");
        let told: Vec<_> = notes.iter().map(|n| n.reason.as_str()).collect();
        assert_eq!(told, ["RouteConflict"]);
    }
}
