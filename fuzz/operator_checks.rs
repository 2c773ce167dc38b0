#![allow(dead_code)] // Each fuzz target uses one check; the replay test uses them all.

//! The properties the operator's fuzz targets check: Kubernetes objects from YAML (any text)
//! through the whole decision and back to YAML, and `deployPatch` on a connector Deployment.
//! Shared by the fuzz targets and by the corpus replay test of `tunnel-operator`
//! (`tunnel-operator/tests/fuzz_corpus.rs`). Each check panics when a property fails.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tunnel_operator::connector::Settings;
use tunnel_operator::objects::Cluster;

/// A property check over one input.
pub type Check = fn(&[u8]);

/// Every target, by the name of its corpus directory.
pub const TARGETS: &[(&str, Check)] =
    &[("operator_objects", operator_objects), ("deploy_patch", deploy_patch)];

fn settings() -> Settings {
    Settings {
        namespace: "tunnel-operator-system".into(),
        image: "tunnel-cli:test".into(),
        naming: tunnel_operator::routes::Naming::default(),
    }
}

/// Any text read as objects either fails to load with an error, or goes through the checks,
/// the decision and the rendering without a panic; every rendered connector configuration is
/// one `tunnel-cli connect` accepts.
pub fn operator_objects(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut cluster = Cluster::default();
    if cluster.load_yaml(text, "fuzz").is_err() || cluster.check().is_err() {
        return;
    }
    let now = Time("2026-01-01T00:00:00Z".parse().unwrap());
    let desired = tunnel_operator::reconcile::desired(&cluster, &BTreeMap::new(), &settings(), &now);
    for outcome in desired.tunnels.values() {
        if let Some((config_map, _)) = &outcome.connector {
            let toml = &config_map.data.as_ref().unwrap()["client.toml"];
            let file = tunnel_core::config::ClientFile::parse(toml, "client.toml".as_ref())
                .unwrap_or_else(|e| panic!("a rendered configuration does not parse: {e}\n{toml}"));
            file.validate().unwrap_or_else(|e| panic!("a rendered configuration is not valid: {e}\n{toml}"));
        }
    }
    let documents = tunnel_operator::render::documents(&desired, &now);
    serde_saphyr::to_string_multiple(&documents).expect("the rendering serializes");

    // The decision's record read back changes nothing served: each route served stays, and
    // nothing refused before takes a place (the tunnels' `status.hosts`, as a controller
    // writes them and reads them on its next pass).
    let config = |desired: &tunnel_operator::reconcile::Desired| -> BTreeMap<String, String> {
        let tunnels = desired.tunnels.iter();
        let rendered =
            tunnels.filter_map(|(key, outcome)| Some((key.to_string(), outcome.connector.as_ref()?)));
        rendered
            .map(|(key, (config_map, _))| (key, config_map.data.as_ref().unwrap()["client.toml"].clone()))
            .collect()
    };
    let mut again = cluster.clone();
    for tunnel in &mut again.tunnels {
        let key = tunnel_operator::tunnels::TunnelKey::Namespaced {
            namespace: tunnel.metadata.namespace.clone().unwrap_or_default(),
            name: tunnel.metadata.name.clone().unwrap_or_default(),
        };
        tunnel.status = desired.tunnels.get(&key).map(|outcome| outcome.status.clone());
    }
    for tunnel in &mut again.cluster_tunnels {
        let key = tunnel_operator::tunnels::TunnelKey::Cluster {
            name: tunnel.metadata.name.clone().unwrap_or_default(),
        };
        tunnel.status = desired.tunnels.get(&key).map(|outcome| outcome.status.clone());
    }
    let next = tunnel_operator::reconcile::desired(&again, &BTreeMap::new(), &settings(), &now);
    assert_eq!(config(&next), config(&desired), "the decision's own record changed what is served");
}

/// Any patch text applies or fails with an error; never a panic.
pub fn deploy_patch(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut deployment = serde_json::json!({"metadata": {"name": "d"}, "spec": {"replicas": 1, "template": {"spec": {
        "containers": [{"name": "connector", "image": "a", "env": [{"name": "A", "value": "1"}],
                        "volumeMounts": [{"name": "config", "mountPath": "/etc/tunnel/config"}]}],
        "volumes": [{"name": "config", "configMap": {"name": "c"}}]}}}});
    let _ = tunnel_operator::patch::apply(&mut deployment, text);
}
