//! A decision as Kubernetes documents: the objects the controller applies (ConfigMaps,
//! Deployments), the statuses it writes (each as its object with `status` alone) and the Events
//! it records. `tunnel-operator render` prints these as YAML.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{json, Value};

use crate::reconcile::Desired;
use crate::routes::{Note, Source};
use crate::tunnels::TunnelKey;

/// The name the operator records Events as.
pub const REPORTER: &str = "tunnel-rs.github.io/operator";

/// The documents of a decision, in a stable order: per tunnel its ConfigMap, Deployment and
/// status; then the Ingress and HTTPRoute statuses; then the Events.
pub fn documents(desired: &Desired, now: &Time) -> Vec<Value> {
    let mut out = Vec::new();
    for (key, outcome) in &desired.tunnels {
        if let Some((config_map, deployment)) = &outcome.connector {
            out.push(with_kind(serde_json::to_value(config_map), "v1", "ConfigMap"));
            out.push(with_kind(serde_json::to_value(deployment), "apps/v1", "Deployment"));
        }
        let mut metadata = json!({ "name": key.name() });
        if let TunnelKey::Namespaced { namespace, .. } = key {
            metadata["namespace"] = json!(namespace);
        }
        out.push(json!({
            "apiVersion": format!("{}/v1alpha1", crate::crd::GROUP),
            "kind": key.kind(),
            "metadata": metadata,
            "status": outcome.status,
        }));
    }
    for (source, status) in &desired.ingresses {
        out.push(status_of(source, json!(status)));
    }
    for (source, status) in &desired.http_routes {
        out.push(status_of(source, json!(status)));
    }
    out.extend(desired.notes.iter().map(|note| event(note, now)));
    out
}

fn with_kind(value: Result<Value, serde_json::Error>, api_version: &str, kind: &str) -> Value {
    let mut value = value.expect("Kubernetes objects serialize to JSON");
    value["apiVersion"] = json!(api_version);
    value["kind"] = json!(kind);
    value
}

fn status_of(source: &Source, status: Value) -> Value {
    let r = &source.reference;
    json!({
        "apiVersion": r.api_version,
        "kind": r.kind,
        "metadata": { "name": r.name, "namespace": r.namespace },
        "status": status,
    })
}

/// An `events.k8s.io/v1` Event for a note; its name is stable for the same note.
pub fn event(note: &Note, now: &Time) -> Value {
    let r = &note.source.reference;
    let digest = crate::connector::config_hash(&format!("{}\n{}", note.reason, note.message));
    let name = format!("{}.{}", r.name.as_deref().unwrap_or("object"), &digest[..16]);
    json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": { "name": name, "namespace": r.namespace.as_deref().unwrap_or("default") },
        "eventTime": now.0.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        "type": "Warning",
        "reason": note.reason,
        "note": note.message,
        "action": "Reconcile",
        "regarding": r,
        "reportingController": REPORTER,
        "reportingInstance": REPORTER,
    })
}
