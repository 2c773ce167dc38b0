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
        api.patch_status(&name, &params, &Patch::Merge(json!({ "status": status }))).await?;
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
        api.patch_status(&name, &params, &Patch::Merge(json!({ "status": merged }))).await?;
    }
    record(ctx, decided).await;
    Ok(())
}

/// The host names an Ingress status publishes (none and an empty list are the same).
fn hostnames(status: Option<&k8s_openapi::api::networking::v1::IngressStatus>) -> Vec<String> {
    let entries = status.and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
    entries.into_iter().flatten().filter_map(|e| e.hostname.clone()).collect()
}

/// The route's status with our parents' entries replaced and other controllers' kept.
fn merged(current: Option<&RouteStatus>, ours: &RouteStatus) -> RouteStatus {
    let mut parents: Vec<_> = current
        .map(|s| s.parents.iter().filter(|p| p.controller_name != GATEWAY_CONTROLLER).cloned().collect())
        .unwrap_or_default();
    parents.extend(ours.parents.iter().cloned());
    RouteStatus { parents }
}

async fn record<S: Servers>(ctx: &Context<S>, decided: &Desired) {
    let identity = |n: &crate::routes::Note| {
        let r = &n.source.reference;
        format!("{:?}/{:?}/{:?}\n{}\n{}", r.kind, r.namespace, r.name, n.reason, n.message)
    };
    let now: BTreeSet<String> = decided.notes.iter().map(identity).collect();
    let fresh: Vec<_> = {
        let mut published = ctx.published.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = decided.notes.iter().filter(|n| !published.contains(&identity(n))).cloned().collect();
        *published = now;
        fresh
    };
    for note in fresh {
        let recorded = Recorded {
            type_: EventType::Warning,
            reason: note.reason.clone(),
            note: Some(note.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&recorded, &note.source.reference).await {
            tracing::warn!("recording an event on {} failed: {e}", note.source.describe());
        }
    }
}
