//! The operator's decisions as one pure function: the objects of a cluster and what the
//! controller learned from the server in, the objects to apply and the statuses to write out.
//! The controller and `render` both call [`desired`]; neither decides anything itself.

use std::collections::BTreeMap;

use crate::assign::{admit_hosts, assign, Allowed, Assigned, Held};
use crate::conditions::Conditions;
use crate::connector::{self, Settings};
use crate::crd::{State, TunnelStatus};
use crate::gateway::RouteStatus;
use crate::objects::Cluster;
use crate::routes::{Note, Source};
use crate::tunnels::{keyed, TunnelKey, TunnelObject};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::{
    IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What the controller learned about a tunnel beyond its objects.
#[derive(Debug, Clone, Default)]
pub struct Learned {
    /// The connector's token exists: created through the admin API (`newTunnel`), or the
    /// Secret `existingTunnel` names was found.
    pub credential: bool,
    /// The ConfigMap as found: its configuration's hash and version.
    pub written: Option<(String, i64)>,
    /// The configuration version the server confirmed it runs.
    pub confirmed: Option<i64>,
    /// Connector pods ready.
    pub ready_replicas: i32,
    /// Something that went wrong on the way (the admin API refused, a Secret is missing):
    /// a reason and a message.
    pub problem: Option<(String, String)>,
}

/// Everything the operator would write.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Per tunnel: its connector and status.
    pub tunnels: BTreeMap<TunnelKey, TunnelOutcome>,
    /// The status of each Ingress served (or refused: an empty load balancer).
    pub ingresses: Vec<(Source, IngressStatus)>,
    /// The status of each HTTPRoute of ours.
    pub http_routes: Vec<(Source, RouteStatus)>,
    /// Warnings, as Events on the objects they are about.
    pub notes: Vec<Note>,
}

/// One tunnel's outcome.
#[derive(Debug, Clone)]
pub struct TunnelOutcome {
    /// Its connector, unless its spec is invalid or it is being deleted.
    pub connector: Option<(ConfigMap, Deployment)>,
    /// Its status.
    pub status: TunnelStatus,
}

/// The whole decision. `learned` is per tunnel (missing: nothing learned yet); `now` stamps the
/// conditions that change.
pub fn desired(
    cluster: &Cluster,
    learned: &BTreeMap<TunnelKey, Learned>,
    settings: &Settings,
    now: &Time,
) -> Desired {
    let mut notes = Vec::new();
    let (ingress_claims, ingress_notes) = crate::ingress::claims(cluster, &settings.naming);
    notes.extend(ingress_notes);
    let served_ingresses: Vec<(Source, Option<TunnelKey>, Vec<String>)> = cluster
        .ingresses
        .iter()
        .filter_map(|i| {
            crate::ingress::tunnel_of(i, cluster).map(|t| (Source::of(i), t.ok(), crate::ingress::hosts(i)))
        })
        .collect();
    let (route_claims, route_statuses, route_notes) =
        crate::httproute::claims(cluster, &settings.naming, now);
    notes.extend(route_notes);
    let tunnels = keyed(cluster);
    let held: Held = tunnels
        .iter()
        .map(|(key, (_, _, status))| (key.clone(), status.map(|s| s.hosts.clone()).unwrap_or_default()))
        .collect();
    // A list with an entry that does not parse allows nothing; the tunnel's status says why.
    let allowed: Allowed = tunnels
        .iter()
        .map(|(key, (_, spec, _))| {
            let parsed = spec.allowed_hosts.iter().map(|h| h.parse().ok().filter(|_| !h.ends_with('.')));
            (key.clone(), parsed.collect::<Option<Vec<_>>>())
        })
        .collect();
    let claims = admit_hosts(ingress_claims.into_iter().chain(route_claims).collect(), &allowed, &mut notes);
    let mut assigned = assign(claims, &held, now, &mut notes);
    // An Ingress gets the tunnel's public host name only once a route of each of its hosts is
    // served: external-dns publishes every host an Ingress names under that name, and a host
    // refused (one `allowedHosts` does not list, another namespace's) must not be published.
    let served: Vec<(TunnelKey, Source, String)> = assigned
        .iter()
        .flat_map(|(key, assigned)| {
            assigned.served.iter().map(move |(source, host)| (key.clone(), source.clone(), host.clone()))
        })
        .collect();
    let all_served = |key: &TunnelKey, source: &Source, hosts: &[String]| {
        !hosts.is_empty()
            && hosts.iter().all(|host| {
                let host = host.trim_end_matches('.').to_ascii_lowercase();
                served.iter().any(|(k, s, h)| k == key && s == source && *h == host)
            })
    };

    let mut outcomes = BTreeMap::new();
    for (key, (meta, spec, status)) in &tunnels {
        let tunnel = TunnelObject { key, meta, spec, status: *status };
        let learned = learned.get(key).cloned().unwrap_or_default();
        let outcome =
            tunnel_outcome(&tunnel, assigned.remove(key).unwrap_or_default(), &learned, settings, now);
        outcomes.insert(key.clone(), outcome);
    }
    let ingresses = served_ingresses
        .into_iter()
        .map(|(source, tunnel, hosts)| {
            let hostname = tunnel.filter(|key| all_served(key, &source, &hosts)).and_then(|key| {
                tunnels.get(&key).and_then(|(_, spec, _)| spec.server.public_hostname.clone())
            });
            // An empty list, not none: a merge patch then clears a host name published before.
            let ingress = hostname.map_or_else(Vec::new, |h| {
                vec![IngressLoadBalancerIngress { hostname: Some(h), ..Default::default() }]
            });
            (
                source,
                IngressStatus { load_balancer: Some(IngressLoadBalancerStatus { ingress: Some(ingress) }) },
            )
        })
        .collect();
    Desired { tunnels: outcomes, ingresses, http_routes: route_statuses, notes }
}

fn tunnel_outcome(
    tunnel: &TunnelObject<'_>,
    assigned: Assigned,
    learned: &Learned,
    settings: &Settings,
    now: &Time,
) -> TunnelOutcome {
    let previous = tunnel.status.cloned().unwrap_or_default();
    let generation = tunnel.meta.generation;
    let name = connector::client_name(tunnel).map(str::to_owned);
    let mut status = TunnelStatus {
        tunnel_id: name.as_ref().map(|n| format!("{}/{n}", tunnel.spec.server.address)),
        tunnel_name: name,
        config_version: previous.config_version,
        observed_generation: generation,
        // Kept while no connector is rendered: the connector written before still serves them.
        hosts: previous.hosts.clone(),
        ..TunnelStatus::default()
    };
    let mut conditions = Conditions { previous: &previous.conditions, now, generation, out: Vec::new() };
    if tunnel.meta.deletion_timestamp.is_some() {
        status.state = Some(State::Deleting);
        conditions.set("Ready", false, "Deleting", "the credential is revoked and the connector removed");
        conditions.set("Synced", false, "Deleting", "the tunnel is being deleted");
        status.conditions = conditions.out;
        return TunnelOutcome { connector: None, status };
    }
    let rendered = connector::client_file(tunnel, assigned.routes).and_then(|file| {
        let toml = file.to_toml().map_err(|e| connector::SpecError::Patched(e.to_string()))?;
        Ok((toml, connector::deployment(tunnel, settings)?))
    });
    let (toml, deployment) = match rendered {
        Ok(ok) => ok,
        Err(err) => {
            status.state = Some(State::Error);
            conditions.set("Ready", false, "InvalidSpec", &err.to_string());
            conditions.set("Synced", false, "InvalidSpec", &err.to_string());
            status.conditions = conditions.out;
            return TunnelOutcome { connector: None, status };
        }
    };
    let hash = connector::config_hash(&toml);
    let version = match &learned.written {
        Some((written, version)) if *written == hash => *version,
        // The annotation it comes from is anyone's to edit: past the largest, start again.
        Some((_, version)) => version.checked_add(1).unwrap_or(1),
        None => 1,
    };
    let config_map = connector::config_map(tunnel, settings, toml, version);
    status.hosts = assigned.hosts;
    let replicas = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if let Some((reason, message)) = &learned.problem {
        status.state = Some(State::Error);
        conditions.set("Ready", false, reason, message);
    } else if !learned.credential {
        status.state = Some(if tunnel.spec.new_tunnel.is_some() { State::Creating } else { State::Pending });
        let message = match &tunnel.spec.existing_tunnel {
            Some(existing) => format!("waiting for the Secret {} with the key token", existing.secret),
            None => "the client credential is being created through the admin API".to_owned(),
        };
        conditions.set("Ready", false, "CredentialPending", &message);
    } else if learned.ready_replicas == 0 {
        status.state = Some(State::Creating);
        conditions.set(
            "Ready",
            false,
            "ConnectorNotReady",
            &format!("0 of {replicas} connector replicas ready"),
        );
    } else {
        status.state = Some(State::Active);
        let message = format!("{} of {replicas} connector replicas ready", learned.ready_replicas);
        conditions.set("Ready", true, "ConnectorReady", &message);
    }
    if learned.confirmed == Some(version) {
        status.config_version = Some(version);
        conditions.set("Synced", true, "Confirmed", &format!("the server runs configuration {version}"));
    } else {
        let message = format!("configuration {version} is written; the server has not confirmed it yet");
        conditions.set("Synced", false, "AwaitingServer", &message);
    }
    status.conditions = conditions.out;
    TunnelOutcome { connector: Some((config_map, deployment)), status }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assign::ROUTE_BUDGET;

    const FINGERPRINT: &str = "3f2a9c1e0b7d4a6f8e5c2b1a0d9f8e7c6b5a4d3c2b1a0f9e8d7c6b5a4f3e2d1c";

    fn ingress(namespace: &str, name: &str, created: &str, host: &str, path: &str, kind: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: {namespace}, creationTimestamp: '{created}', annotations: {{tunnel-rs.github.io/tunnel: shared}}}}\n\
             spec: {{ingressClassName: tunnel, rules: [{{host: {host}, http: {{paths: [{{path: {path}, pathType: {kind}, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}}}]}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {namespace}}}\nspec: {{ports: [{{port: 80}}]}}\n---\n"
        )
    }

    /// A ClusterTunnel `shared` with the ingress class `tunnel`, as YAML to add objects to.
    fn shared_tunnel() -> String {
        format!(
            "apiVersion: tunnel-rs.github.io/v1alpha1\nkind: ClusterTunnel\nmetadata: {{name: shared}}\n\
             spec: {{existingTunnel: {{name: c, secret: s}}, server: {{address: 'h:1', fingerprint: '{FINGERPRINT}'}}}}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {{name: tunnel}}\nspec: {{controller: tunnel-rs.github.io/ingress-controller}}\n---\n"
        )
    }

    /// The decision for the objects of `text`, and the key of its tunnel `shared`.
    fn decide(text: &str) -> (Desired, TunnelKey) {
        decide_with(text, |_| {})
    }

    /// [`decide`] for the objects of `text` changed by `change` (a status put in place).
    fn decide_with(text: &str, change: impl FnOnce(&mut Cluster)) -> (Desired, TunnelKey) {
        let mut cluster = Cluster::default();
        cluster.load_yaml(text, "t").unwrap();
        change(&mut cluster);
        let settings =
            Settings { namespace: "ops".into(), image: "i".into(), naming: crate::routes::Naming::default() };
        let now = Time("2026-06-01T00:00:00Z".parse().unwrap());
        (desired(&cluster, &BTreeMap::new(), &settings, &now), TunnelKey::Cluster { name: "shared".into() })
    }

    #[test]
    fn a_client_name_no_server_takes_is_reported_on_its_own_field_with_the_reason() {
        let many: Vec<String> = (0..64).map(|i| format!("'10.{i}.0.0/16'")).collect();
        let text = shared_tunnel().replace(
            "existingTunnel: {name: c,",
            &format!("enableWarpRouting: true, networks: [{}], existingTunnel: {{name: c,", many.join(", ")),
        );
        let (decided, key) = decide(&text);
        let ready = decided.tunnels[&key].status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.message, "spec.networks: at most 63 networks", "past the room the budgets leave");
        let text = shared_tunnel().replace("existingTunnel: {name: c,", "existingTunnel: {name: 'bad name',");
        let (decided, key) = decide(&text);
        let outcome = &decided.tunnels[&key];
        assert!(outcome.connector.is_none());
        let ready = outcome.status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.reason, "InvalidSpec");
        // Before: "spec.server: invalid `name`", the wrong field and no reason.
        assert!(ready.message.starts_with("spec.existingTunnel.name: invalid `name`: "), "{}", ready.message);
    }

    #[test]
    fn a_host_belongs_to_the_namespace_that_claimed_it_first_whatever_the_path() {
        let mut text = shared_tunnel();
        text.push_str(&ingress("team-a", "site", "2026-01-01T00:00:00Z", "app.example.com", "/", "Prefix"));
        // Another namespace, later, a more specific path on the same host: it would take
        // /login from team-a at the edge (an exact path wins over a prefix).
        text.push_str(&ingress(
            "team-b",
            "login",
            "2026-01-02T00:00:00Z",
            "app.example.com",
            "/login",
            "Exact",
        ));
        // The same namespace may add paths to its own host.
        text.push_str(&ingress("team-a", "api", "2026-01-03T00:00:00Z", "app.example.com", "/api", "Prefix"));
        let (decided, key) = decide(&text);
        let (config_map, _) = decided.tunnels[&key].connector.clone().unwrap();
        let toml = &config_map.data.unwrap()["client.toml"];
        assert!(toml.contains("path = \"/api\"") && !toml.contains("/login"), "{toml}");
        let [note] = decided.notes.as_slice() else { panic!("{:?}", decided.notes) };
        assert_eq!(note.reason, "RouteConflict");
        assert_eq!(note.source.reference.namespace.as_deref(), Some("team-b"));
        assert!(note.message.contains("belongs to namespace team-a"), "{}", note.message);
    }

    #[test]
    fn a_tunnels_status_records_who_holds_each_host_and_the_next_decision_keeps_it() {
        let mut text = shared_tunnel();
        text.push_str(&ingress("team-a", "site", "2026-01-05T00:00:00Z", "app.example.com", "/", "Prefix"));
        let (first, key) = decide(&text);
        let hosts = &first.tunnels[&key].status.hosts;
        let holders: Vec<_> =
            hosts.iter().map(|h| (h.host.as_str(), h.namespace.as_str(), h.routes.len())).collect();
        assert_eq!(holders, [("app.example.com", "team-a", 1)]);

        // team-b adds the host to an Ingress created before team-a's.
        text.push_str(&ingress("team-b", "old", "2026-01-01T00:00:00Z", "app.example.com", "/x", "Prefix"));
        let status = first.tunnels[&key].status.clone();
        let (second, _) = decide_with(&text, |cluster| cluster.cluster_tunnels[0].status = Some(status));
        let (config_map, _) = second.tunnels[&key].connector.clone().unwrap();
        let toml = &config_map.data.unwrap()["client.toml"];
        assert!(!toml.contains("/x"), "{toml}");
        assert_eq!(second.tunnels[&key].status.hosts, *hosts);
        let refused: Vec<_> = second.notes.iter().map(|n| n.source.reference.namespace.as_deref()).collect();
        assert_eq!(refused, [Some("team-b")]);
    }

    #[test]
    fn a_tunnels_allowed_hosts_keep_other_hosts_off_it_and_a_bad_entry_is_named() {
        let mut text = shared_tunnel()
            .replace("existingTunnel:", "allowedHosts: ['*.team-a.example.com'], existingTunnel:")
            .replace("fingerprint:", "publicHostname: edge.example.com, fingerprint:");
        text.push_str(&ingress(
            "team-a",
            "site",
            "2026-01-01T00:00:00Z",
            "www.team-a.example.com",
            "/",
            "Prefix",
        ));
        text.push_str(&ingress("team-b", "bank", "2026-01-02T00:00:00Z", "bank.example.com", "/", "Prefix"));
        // One allowed host, and one refused in a rule of its own (team-a's Service is there).
        let mixed =
            ingress("team-a", "mixed", "2026-01-03T00:00:00Z", "shop.team-a.example.com", "/", "Prefix");
        let mixed = mixed.split("---\n").next().unwrap().replace(
            "rules: [{host: shop.team-a.example.com,",
            "rules: [{host: pay.example.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}}, {host: shop.team-a.example.com,",
        );
        text.push_str(&format!("{mixed}---\n"));
        let (decided, key) = decide(&text);
        let (config_map, _) = decided.tunnels[&key].connector.clone().unwrap();
        let toml = &config_map.data.unwrap()["client.toml"];
        assert!(toml.contains("www.team-a.example.com") && !toml.contains("bank.example.com"), "{toml}");
        let refused: Vec<_> =
            decided.notes.iter().map(|n| (n.reason.as_str(), n.source.reference.name.as_deref())).collect();
        assert_eq!(refused, [("HostNotAllowed", Some("bank")), ("HostNotAllowed", Some("mixed"))]);
        assert!(toml.contains("shop.team-a.example.com") && !toml.contains("pay.example.com"), "{toml}");
        // Only an Ingress all of whose hosts are served gets the public host name, which
        // external-dns publishes for every host it names.
        let published = |name: &str| -> Vec<String> {
            let (_, status) =
                decided.ingresses.iter().find(|(s, _)| s.reference.name.as_deref() == Some(name)).unwrap();
            let ingress = status.load_balancer.as_ref().and_then(|lb| lb.ingress.clone()).unwrap_or_default();
            ingress.into_iter().filter_map(|i| i.hostname).collect()
        };
        assert_eq!(published("site"), ["edge.example.com"]);
        assert_eq!(published("bank"), Vec::<String>::new(), "a refused Ingress is not published");
        assert_eq!(published("mixed"), Vec::<String>::new(), "nor one with a host refused");

        for (entry, why) in [
            ("'bad host'", "spec.allowedHosts: invalid rule \"bad host\""),
            (
                "'shop.example.com.'",
                "spec.allowedHosts: \"shop.example.com.\": write the host without its final dot",
            ),
        ] {
            let (decided, key) = decide(&text.replace("'*.team-a.example.com'", entry));
            let outcome = &decided.tunnels[&key];
            assert!(outcome.connector.is_none());
            let ready = outcome.status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
            assert_eq!(ready.reason, "InvalidSpec");
            assert!(ready.message.starts_with(why), "{}", ready.message);
        }
    }

    #[test]
    fn an_object_past_the_route_budget_leaves_the_older_ones_served() {
        let mut text = shared_tunnel();
        text.push_str(&ingress("team-a", "site", "2026-01-01T00:00:00Z", "app.example.com", "/", "Prefix"));
        // A newer object with more paths than a connector's whole table holds.
        let paths: Vec<String> = (0..ROUTE_BUDGET + 10)
            .map(|n| format!("{{path: /p{n}, pathType: Exact, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}"))
            .collect();
        text.push_str(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: flood, namespace: team-b, creationTimestamp: '2026-01-02T00:00:00Z', annotations: {{tunnel-rs.github.io/tunnel: shared}}}}\n\
             spec: {{ingressClassName: tunnel, rules: [{{host: flood.example.com, http: {{paths: [{}]}}}}]}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: team-b}}\nspec: {{ports: [{{port: 80}}]}}\n---\n",
            paths.join(", ")
        ));
        let (decided, key) = decide(&text);
        let (config_map, _) = decided.tunnels[&key].connector.clone().expect("the tunnel keeps a connector");
        let toml = &config_map.data.unwrap()["client.toml"];
        assert!(toml.contains("host = \"app.example.com\""), "the older object is served");
        assert_eq!(toml.matches("[[routes]]").count(), ROUTE_BUDGET, "the budget is filled, no more");
        let over: Vec<_> = decided.notes.iter().filter(|n| n.reason == "TooManyRoutes").collect();
        assert_eq!(over.len(), 1, "one note for the object, not one per route: {over:?}");
        assert_eq!(over[0].source.reference.name.as_deref(), Some("flood"));
    }

    #[test]
    fn long_paths_past_what_a_server_takes_in_one_table_leave_the_older_routes_served() {
        // 64 paths of 1,000 bytes: far below the count of routes, but together more than the
        // 64 KiB a server takes in one message. Before, the connector sent them all, and the
        // server ended every session it opened, the other tenants' routes with it.
        let mut text = shared_tunnel();
        text.push_str(&ingress("team-a", "site", "2026-01-01T00:00:00Z", "app.example.com", "/", "Prefix"));
        let paths: Vec<String> = (0..64)
            .map(|n| {
                let path = format!("/{}{n}", "p".repeat(1000));
                format!("{{path: {path}, pathType: Exact, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}")
            })
            .collect();
        text.push_str(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: long, namespace: team-b, creationTimestamp: '2026-01-02T00:00:00Z', annotations: {{tunnel-rs.github.io/tunnel: shared}}}}\n\
             spec: {{ingressClassName: tunnel, rules: [{{host: long.example.com, http: {{paths: [{}]}}}}]}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: team-b}}\nspec: {{ports: [{{port: 80}}]}}\n---\n",
            paths.join(", ")
        ));
        let (decided, key) = decide(&text);
        let (config_map, _) = decided.tunnels[&key].connector.clone().expect("the tunnel keeps a connector");
        let toml = &config_map.data.unwrap()["client.toml"];
        let file: tunnel_core::config::ClientFile = toml::from_str(toml).unwrap();
        let set = file.route_set().expect("the connector's routes make a table a server takes");
        assert!(set.table_bytes() <= tunnel_core::client::MAX_TABLE_BYTES, "{}", set.table_bytes());
        assert!(toml.contains("host = \"app.example.com\""), "the older object is served");
        let served = toml.matches("host = \"long.example.com\"").count();
        assert!((50..64).contains(&served), "the budget is filled, no more: {served}");
        let over: Vec<_> = decided.notes.iter().filter(|n| n.reason == "TooManyRoutes").collect();
        assert_eq!(over.len(), 1, "{over:?}");
        assert_eq!(over[0].source.reference.name.as_deref(), Some("long"));
        assert!(over[0].message.contains("on the wire"), "{}", over[0].message);
    }
}
