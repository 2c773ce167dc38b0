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

/// The most an Event's `note` may hold: the API server refuses a longer one (in bytes).
pub const MAX_EVENT_NOTE: usize = 1024;

/// `message` as an Event's note: whole if it fits in [`MAX_EVENT_NOTE`] bytes, else cut at a
/// character boundary and ended with an ellipsis (the object's status condition keeps all of it).
pub fn event_note(message: &str) -> String {
    if message.len() <= MAX_EVENT_NOTE {
        return message.to_owned();
    }
    const ELLIPSIS: &str = "…";
    let mut end = MAX_EVENT_NOTE - ELLIPSIS.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &message[..end])
}

/// `object.suffix`, the object's name cut short (at no dash or dot) so that the whole has at
/// most the 253 characters an object name may have: an Event about an object with a long name
/// would be refused otherwise.
fn event_name(object: &str, suffix: &str) -> String {
    let mut keep = 253 - 1 - suffix.len();
    if object.len() <= keep {
        return format!("{object}.{suffix}");
    }
    while !object.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}.{suffix}", object[..keep].trim_end_matches(['-', '.']))
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
    let name = event_name(r.name.as_deref().unwrap_or("object"), &digest[..16]);
    json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": { "name": name, "namespace": r.namespace.as_deref().unwrap_or("default") },
        "eventTime": now.0.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        "type": "Warning",
        "reason": note.reason,
        "note": event_note(&note.message),
        "action": "Reconcile",
        "regarding": r,
        "reportingController": REPORTER,
        "reportingInstance": REPORTER,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ObjectReference;

    use super::*;

    fn note_on(name: &str, message: &str) -> Note {
        let reference = ObjectReference {
            kind: Some("Ingress".into()),
            name: Some(name.into()),
            namespace: Some("web".into()),
            ..ObjectReference::default()
        };
        Note::new(&Source { reference, created: None }, "NotAllowed", message)
    }

    #[test]
    fn an_events_note_fits_the_api_servers_limit_cut_at_a_character() {
        assert_eq!(event_note("short"), "short");
        let exact = "x".repeat(MAX_EVENT_NOTE);
        assert_eq!(event_note(&exact), exact);
        // Three-byte characters: the limit falls inside one of them.
        let long = "ü€".repeat(400);
        let note = event_note(&long);
        assert!(note.len() <= MAX_EVENT_NOTE, "{} bytes", note.len());
        assert!(note.len() > MAX_EVENT_NOTE - 8, "cut far short: {} bytes", note.len());
        let kept = note.strip_suffix('…').expect("a cut note ends with an ellipsis");
        assert!(long.starts_with(kept));
    }

    #[test]
    fn an_event_about_an_object_with_the_longest_name_has_a_valid_name_and_note() {
        let now = Time("2026-06-01T00:00:00Z".parse().unwrap());
        // The cut falls just after the dash, which goes too: "a...a-.x" is no valid name.
        let longest = format!("{}-{}", "a".repeat(235), "b".repeat(17));
        assert_eq!(longest.len(), 253);
        let one = event(&note_on(&longest, &"why ".repeat(600)), &now);
        let name = one["metadata"]["name"].as_str().unwrap();
        assert!(name.len() <= 253, "{} characters: {name}", name.len());
        let (prefix, suffix) = name.split_once('.').unwrap();
        assert_eq!(prefix, "a".repeat(235));
        assert!(suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
        assert!(one["note"].as_str().unwrap().len() <= MAX_EVENT_NOTE);
        // Another note about the same object is another Event.
        let other = event(&note_on(&longest, "another"), &now);
        assert_ne!(other["metadata"]["name"], one["metadata"]["name"]);
        // A short name is kept whole.
        let short = event(&note_on("web", "why"), &now);
        assert!(short["metadata"]["name"].as_str().unwrap().starts_with("web."));
    }
}
