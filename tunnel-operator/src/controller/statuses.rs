//! The statuses of the objects a decision serves (Ingresses, HTTPRoutes), written when they
//! change, and its notes, recorded as Events once each while they hold.

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as Recorded, EventType};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::servers::Servers;
use super::{Context, Error};
use crate::gateway::{HttpRoute, RouteStatus};
use crate::httproute::GATEWAY_CONTROLLER;
use crate::objects::Cluster;
use crate::reconcile::Desired;
use crate::routes::Source;

fn named(source: &Source) -> (String, String) {
    let r = &source.reference;
    (r.namespace.clone().unwrap_or_default(), r.name.clone().unwrap_or_default())
}

/// Writes what changed and records what is new.
pub async fn write<S: Servers>(ctx: &Context<S>, cluster: &Cluster, decided: &Desired) -> Result<(), Error> {
    let params = PatchParams::default();
    // One failed write (an object deleted meanwhile) does not keep the others from theirs.
    let mut failed = None;
    for (source, status) in &decided.ingresses {
        let (namespace, name) = named(source);
        let current = cluster
            .ingresses
            .iter()
            .find(|i| i.namespace().as_deref() == Some(&namespace) && i.name_any() == name);
        if hostnames(current.and_then(|i| i.status.as_ref())) == hostnames(Some(status)) {
            continue;
        }
        let api: Api<Ingress> = Api::namespaced(ctx.client.clone(), &namespace);
        if let Err(e) = api.patch_status(&name, &params, &Patch::Merge(json!({ "status": status }))).await {
            tracing::warn!("writing the status of {}: {e}", source.describe());
            failed.get_or_insert(e);
        }
    }
    for (source, status) in &decided.http_routes {
        let (namespace, name) = named(source);
        let current = cluster
            .http_routes
            .iter()
            .find(|r| r.namespace().as_deref() == Some(&namespace) && r.name_any() == name);
        let merged = merged(current.and_then(|r| r.status.as_ref()), status);
        if current.and_then(|r| r.status.as_ref()) == Some(&merged) {
            continue;
        }
        let api: Api<HttpRoute> = Api::namespaced(ctx.client.clone(), &namespace);
        if let Err(e) = api.patch_status(&name, &params, &Patch::Merge(json!({ "status": merged }))).await {
            tracing::warn!("writing the status of {}: {e}", source.describe());
            failed.get_or_insert(e);
        }
    }
    record(ctx, decided).await;
    failed.map_or(Ok(()), |e| Err(e.into()))
}

/// The host names an Ingress status publishes (none and an empty list are the same).
fn hostnames(status: Option<&k8s_openapi::api::networking::v1::IngressStatus>) -> Vec<String> {
    let entries = status.and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
    entries.into_iter().flatten().filter_map(|e| e.hostname.clone()).collect()
}

/// The route's status with our parents' entries put in place (another controller's entries,
/// and the order, kept), so two controllers doing the same never undo each other.
fn merged(current: Option<&RouteStatus>, ours: &RouteStatus) -> RouteStatus {
    let mut parents: Vec<_> = current.map(|s| s.parents.clone()).unwrap_or_default();
    parents.retain(|p| {
        p.controller_name != GATEWAY_CONTROLLER || ours.parents.iter().any(|o| o.parent_ref == p.parent_ref)
    });
    for entry in &ours.parents {
        let at = parents
            .iter()
            .position(|p| p.controller_name == GATEWAY_CONTROLLER && p.parent_ref == entry.parent_ref);
        match at {
            Some(at) => parents[at] = entry.clone(),
            None => parents.push(entry.clone()),
        }
    }
    RouteStatus { parents }
}

async fn record<S: Servers>(ctx: &Context<S>, decided: &Desired) {
    let identity = |n: &crate::routes::Note| {
        let r = &n.source.reference;
        format!("{:?}/{:?}/{:?}\n{}\n{}", r.kind, r.namespace, r.name, n.reason, n.message)
    };
    let mut recorded = BTreeSet::new();
    let fresh: Vec<_> = {
        let published = ctx.published.lock().unwrap_or_else(|e| e.into_inner());
        decided.notes.iter().filter(|n| !published.contains(&identity(n))).cloned().collect()
    };
    for note in &decided.notes {
        let id = identity(note);
        if !fresh.iter().any(|f| identity(f) == id) {
            recorded.insert(id);
        }
    }
    for note in fresh {
        let event = Recorded {
            type_: EventType::Warning,
            reason: note.reason.clone(),
            note: Some(crate::render::event_note(&note.message)),
            action: "Reconcile".into(),
            secondary: None,
        };
        match ctx.recorder.publish(&event, &note.source.reference).await {
            Ok(()) => {
                recorded.insert(identity(&note));
            }
            // Not marked: tried again on the next pass.
            Err(e) => tracing::warn!("recording an event on {} failed: {e}", note.source.describe()),
        }
    }
    // Notes that no longer hold are forgotten, so they are recorded again if they come back.
    *ctx.published.lock().unwrap_or_else(|e| e.into_inner()) = recorded;
}
