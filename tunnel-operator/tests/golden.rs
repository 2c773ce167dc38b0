//! Golden files: each directory under `tests/golden/` holds `input.yaml` (Kubernetes objects)
//! and `expected.yaml` (what the controller would apply and write, as `render` prints it).
//! `UPDATE_GOLDEN=1 cargo test -p tunnel-operator --test golden` rewrites the expected files;
//! review their diff like code.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tunnel_operator::connector::Settings;
use tunnel_operator::objects::Cluster;
use tunnel_operator::routes::Naming;

fn settings() -> Settings {
    Settings {
        namespace: "tunnel-operator-system".into(),
        image: "ghcr.io/tunnel-rs/tunnel-cli:0.1.0".into(),
        naming: Naming::default(),
    }
}

fn rendered(input: &str) -> String {
    let mut cluster = Cluster::default();
    let skipped = cluster.load_yaml(input, "input.yaml").unwrap();
    assert!(skipped.is_empty(), "every object of a golden input is read: {skipped:?}");
    cluster.check().unwrap();
    let now = Time("2026-06-01T12:00:00Z".parse().unwrap());
    let desired = tunnel_operator::reconcile::desired(&cluster, &BTreeMap::new(), &settings(), &now);
    serde_saphyr::to_string_multiple(&tunnel_operator::render::documents(&desired, &now)).unwrap()
}

fn golden(case: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(case);
    let out = rendered(&std::fs::read_to_string(dir.join("input.yaml")).unwrap());
    let expected = dir.join("expected.yaml");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected, &out).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&expected)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", expected.display()));
    assert!(out == want, "{case}: the rendering changed (UPDATE_GOLDEN=1 rewrites it):\n{out}");
}

#[test]
fn basic_cluster_tunnel() {
    golden("basic");
}

#[test]
fn three_replicas_with_anti_affinity() {
    golden("replicas");
}

#[test]
fn warp_routing() {
    golden("warp");
}

#[test]
fn ingresses_from_two_namespaces() {
    golden("ingresses");
}

#[test]
fn http_routes() {
    golden("httproute");
}
