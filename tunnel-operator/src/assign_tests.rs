//! The tests of `assign`: hosts between namespaces, the record read back, the budgets.

use super::*;

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
    assert_eq!((note.reason.as_str(), note.source.reference.name.as_deref()), ("RouteConflict", Some("two")));
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
    let served: Vec<String> = assigned.values().flat_map(|a| &a.routes).map(|r| r.host.to_string()).collect();
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
    assert_eq!((note.reason.as_str(), note.source.reference.name.as_deref()), ("RouteConflict", Some("old")));
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
    let site: Vec<Claim> =
        (0..ROUTE_BUDGET).map(|n| claim("team-a", "site", 5, "a.example.com", &format!("/p{n}"))).collect();
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
    assert!(self::served(&by_age).contains(&"b.example.com/".to_owned()), "without the record, age decides");
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
        notes.iter().map(|n| (n.reason.clone(), n.source.reference.name.clone().unwrap())).collect::<Vec<_>>()
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
    assert_eq!(refused, [("HostNotAllowed".into(), "steal".into()), ("HostNotAllowed".into(), "all".into())]);
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
    let x: Vec<_> =
        kept.values().flatten().map(|h| (h.host.as_str(), h.namespace.as_str(), h.routes.len())).collect();
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
