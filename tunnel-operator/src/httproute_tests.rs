//! The tests of `httproute`: routes made of HTTPRoutes, and their bounds.

use super::*;

const FINGERPRINT: &str = "3f2a9c1e0b7d4a6f8e5c2b1a0d9f8e7c6b5a4d3c2b1a0f9e8d7c6b5a4f3e2d1c";

/// A ClusterTunnel `shared`, a GatewayClass and a two-listener Gateway `g` in namespace
/// `web` naming it, a Service `app` there, and `route`, all as YAML; the claims and notes.
fn claims_of(route: &str) -> (Vec<Claim>, Vec<Note>) {
    let text = format!(
        "apiVersion: tunnel-rs.github.io/v1alpha1\nkind: ClusterTunnel\nmetadata: {{name: shared}}\n\
         spec: {{existingTunnel: {{name: c, secret: s}}, server: {{address: 'h:1', fingerprint: '{FINGERPRINT}'}}}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: tunnel}}\n\
         spec: {{controllerName: {GATEWAY_CONTROLLER}, parametersRef: {{group: tunnel-rs.github.io, kind: ClusterTunnel, name: shared}}}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: g, namespace: web}}\n\
         spec: {{gatewayClassName: tunnel, listeners: [{{name: a, port: 80, protocol: HTTP}}, {{name: b, port: 8080, protocol: HTTP}}]}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: web}}\nspec: {{ports: [{{port: 80}}]}}\n---\n{route}"
    );
    let mut cluster = Cluster::default();
    cluster.load_yaml(&text, "t").unwrap();
    let now = Time("2026-06-01T00:00:00Z".parse().unwrap());
    let (claims, _, notes) = super::claims(&cluster, &Naming::default(), &now);
    (claims, notes)
}

/// An HTTPRoute `wide` in `web` under both listeners of `g`: `hosts` hostnames, and `rules`
/// rules of `matches` path matches each setting `headers` request headers of 4,000 bytes.
fn http_route(hosts: usize, rules: usize, matches: usize, headers: usize) -> String {
    named_route("wide", "2026-01-01T00:00:00Z", hosts, rules, matches, headers)
}

/// [`http_route`] named `name`, created at `created`.
fn named_route(
    name: &str,
    created: &str,
    hosts: usize,
    rules: usize,
    matches: usize,
    headers: usize,
) -> String {
    let hostnames: Vec<String> = (0..hosts).map(|h| format!("h{h}.{name}.example.com")).collect();
    let set: Vec<String> =
        (0..headers).map(|n| format!("{{name: x-{n}, value: {}}}", "v".repeat(4000))).collect();
    let rule = |r: usize| {
        let paths: Vec<String> =
            (0..matches).map(|m| format!("{{path: {{type: Exact, value: /r{r}/m{m}}}}}")).collect();
        format!(
            "{{matches: [{}], filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{}]}}}}], \
             backendRefs: [{{name: app, port: 80}}]}}",
            paths.join(", "),
            set.join(", ")
        )
    };
    let rules: Vec<String> = (0..rules).map(rule).collect();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: web, creationTimestamp: '{created}'}}\n\
         spec: {{parentRefs: [{{name: g, sectionName: a}}, {{name: g, sectionName: b}}], hostnames: [{}], rules: [{}]}}\n",
        hostnames.join(", "),
        rules.join(", ")
    )
}

#[test]
fn a_route_is_claimed_once_per_tunnel_however_many_of_its_parents_lead_there() {
    let (claims, notes) = claims_of(&http_route(3, 2, 2, 0));
    assert_eq!(claims.len(), 3 * 2 * 2, "each host, rule and match once: {notes:?}");
    assert!(notes.is_empty(), "{notes:?}");
}

#[test]
fn hostnames_times_matches_stop_at_what_a_tunnel_carries_and_the_route_is_told() {
    // Within the Gateway API's limits (16 hostnames, 64 matches a rule, 16 headers a
    // filter): 2,048 routes of 64 KB each before, 131 MB made of one object.
    let (claims, notes) = claims_of(&http_route(16, 2, 64, 16));
    let bytes: usize = claims.iter().map(|c| toml::to_string(&c.route).unwrap().len()).sum();
    let (most, most_bytes) = (CLAIM_SLACK * ROUTE_BUDGET, CLAIM_SLACK * ROUTE_BYTES);
    assert!(bytes <= most_bytes && claims.len() <= most, "{} routes, {bytes} bytes", claims.len());
    assert!(bytes > ROUTE_BYTES, "more than one tunnel's worth is offered, for assign to choose from");
    let told: Vec<_> = notes.iter().filter(|n| n.reason == "TooManyRoutes").collect();
    assert_eq!(told.len(), 1, "{notes:?}");
    assert!(told[0].message.contains("hostnames times its matches"), "{}", told[0].message);
    // Without headers, the count is the bound: 16 x 2 x 64 = 2,048 routes asked for.
    let (claims, _) = claims_of(&http_route(16, 2, 64, 0));
    assert_eq!(claims.len(), most);
    // A match that cannot be served still refuses the route, even one past the bound.
    let bad =
        http_route(16, 2, 64, 0).replacen("{type: Exact, value: /r1/m63}", "{type: Bogus, value: /x}", 1);
    let (claims, notes) = claims_of(&bad);
    assert!(claims.is_empty(), "{} claims", claims.len());
    assert!(notes.iter().any(|n| n.message.contains("rules[1].matches[63].path.type")), "{notes:?}");
}

#[test]
fn gateway_durations_add_their_parts_and_refuse_zero_and_garbage() {
    assert_eq!(gateway_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(gateway_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(gateway_duration("1m1s1ms").unwrap(), Duration::from_millis(61_001));
    assert_eq!(gateway_duration("99999h99999m99999s99999ms").unwrap().as_secs(), 366_096_438);
    // Past the format's 5 digits a part: 1000000h (114 years) was taken, and made a
    // client.toml that no connector could read (durations stop at 100 years).
    for bad in ["", "0s", "10", "s", "1d", "99999999999s", "-1s", "1000000h", "000001h", "1h1m1s1ms1h"] {
        assert!(gateway_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn many_routes_each_within_the_bound_claim_a_tunnel_up_to_the_slack_older_objects_first() {
    // Six objects of 448 routes each (16 hostnames, 28 matches), the newest listed first:
    // together 2,688 routes, past four tunnels' worth. Before, every one was made and kept.
    let routes: String = (0..6)
        .rev()
        .map(|n| {
            named_route(&format!("r{n}"), &format!("2026-01-0{}T00:00:00Z", n + 1), 16, 1, 28, 0) + "---\n"
        })
        .collect();
    let (claims, notes) = claims_of(&routes);
    assert_eq!(claims.len(), CLAIM_SLACK * ROUTE_BUDGET);
    let mut names: Vec<&str> = claims.iter().filter_map(|c| c.source.reference.name.as_deref()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names, ["r0", "r1", "r2", "r3"], "the four oldest");
    let told: Vec<_> = notes.iter().filter(|n| n.reason == "TooManyRoutes").collect();
    let mut told_names: Vec<_> = told.iter().filter_map(|n| n.source.reference.name.as_deref()).collect();
    told_names.sort_unstable();
    assert_eq!(told_names, ["r4", "r5"], "{told:?}");
}
