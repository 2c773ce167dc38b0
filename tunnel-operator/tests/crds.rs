//! The CRDs: generated from the Rust types, committed in `deploy/crds.yaml`, and their CEL
//! rules, evaluated here as the API server evaluates them.

use kube::core::cel::validate_cel;
use kube::CustomResourceExt;
use serde_json::{json, Value};
use tunnel_operator::crd::{ClusterTunnel, Tunnel};

const FINGERPRINT: &str = "3f2a9c1e0b7d4a6f8e5c2b1a0d9f8e7c6b5a4d3c2b1a0f9e8d7c6b5a4f3e2d1c";

#[test]
fn the_committed_crds_are_the_ones_the_types_generate() {
    let generated = serde_saphyr::to_string_multiple(&[Tunnel::crd(), ClusterTunnel::crd()]).unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds.yaml");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap();
    assert!(
        committed == generated,
        "deploy/crds.yaml drifted from the types: run `cargo run -p tunnel-operator -- crds > deploy/crds.yaml`"
    );
    for (kind, scope) in [("Tunnel", "Namespaced"), ("ClusterTunnel", "Cluster")] {
        assert!(committed.contains(&format!("kind: {kind}\n")), "{kind}");
        assert!(committed.contains(&format!("scope: {scope}")), "{scope}");
    }
    assert!(committed.contains("group: tunnel-rs.github.io") && committed.contains("name: v1alpha1"));
}

fn tunnel(spec: Value) -> Value {
    json!({"apiVersion": "tunnel-rs.github.io/v1alpha1", "kind": "Tunnel",
           "metadata": {"name": "t", "namespace": "a"}, "spec": spec})
}

fn base() -> Value {
    json!({"newTunnel": {"name": "t"},
           "server": {"address": "tunnel.example.com:7700", "fingerprint": FINGERPRINT, "adminSecret": "admin"}})
}

/// The messages of the rules `spec` breaks, for both kinds (which must agree).
fn broken(spec: Value) -> Vec<String> {
    let messages = |result: Result<(), kube::core::cel::ValidationErrors>| match result {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec().into_iter().map(|e| e.to_string()).collect::<Vec<_>>(),
    };
    let namespaced: Tunnel = serde_json::from_value(tunnel(spec.clone())).unwrap();
    let mut cluster = tunnel(spec);
    cluster["kind"] = json!("ClusterTunnel");
    let cluster: ClusterTunnel = serde_json::from_value(cluster).unwrap();
    let (a, b) = (messages(validate_cel(&namespaced)), messages(validate_cel(&cluster)));
    assert_eq!(a, b, "both kinds check the same rules");
    a
}

fn with(mut spec: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = if parent.is_empty() { &mut spec } else { spec.pointer_mut(parent).unwrap() };
    if value.is_null() {
        target.as_object_mut().unwrap().remove(key);
    } else {
        target[key] = value;
    }
    spec
}

#[test]
fn the_schema_refuses_what_the_reconciler_could_not_serve_naming_the_rule() {
    assert_eq!(broken(base()), Vec::<String>::new());
    let cases = [
        (
            with(base(), "/existingTunnel", json!({"name": "t", "secret": "s"})),
            "exactly one of newTunnel and existingTunnel",
        ),
        (with(base(), "/newTunnel", Value::Null), "exactly one of newTunnel and existingTunnel"),
        (with(base(), "/server/caSecret", json!("ca")), "exactly one of fingerprint and caSecret"),
        (with(base(), "/server/fingerprint", Value::Null), "exactly one of fingerprint and caSecret"),
        (with(base(), "/server/adminSecret", Value::Null), "newTunnel needs server.adminSecret"),
        (with(base(), "/enableWarpRouting", json!(true)), "enableWarpRouting needs at least one network"),
        (with(base(), "/networks", json!(["10.0.0.0/8", "10.0.0.300/8"])), "networks are CIDRs"),
        (with(base(), "/fallbackTarget", json!("404")), "fallbackTarget is http_status:NNN"),
    ];
    for (spec, message) in cases {
        let errors = broken(spec.clone());
        assert!(errors.len() == 1 && errors[0].contains(message), "{spec}: {errors:?}");
    }
    let fine = with(
        with(base(), "/enableWarpRouting", json!(true)),
        "/networks",
        json!(["10.96.0.0/12", "fd00::/8"]),
    );
    assert_eq!(broken(fine), Vec::<String>::new());
}
