//! One tunnel's reconcile: learn what the decision needs (secrets, the ConfigMap and Deployment
//! as they are, what the server holds), decide with [`crate::reconcile::desired`], then apply
//! the connector, write the statuses and record the Events. Deletion revokes a created
//! credential before the finalizer goes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as Recorded, EventType};
use kube::runtime::finalizer::{finalizer, Event};
use kube::{Api, ResourceExt};
use serde_json::json;
use tunnel_core::admin::Grant;
use tunnel_core::config::ClientFile;
use tunnel_core::tls::ServerTrust;

use super::servers::{AdminAccess, ServerError, Servers};
use super::{Context, Error, TunnelKind};
use crate::connector::{self, CONFIG_HASH, CONFIG_KEY, CONFIG_VERSION};
use crate::crd::{State, TunnelSpec, TunnelStatus};
use crate::reconcile::{desired, Learned};
use crate::tunnels::TunnelObject;

/// The finalizer on tunnels whose credential the operator created.
pub const FINALIZER: &str = "tunnel-rs.github.io/credential";
/// The field manager of everything the operator applies.
pub const MANAGER: &str = "tunnel-operator";

/// Reconciles one tunnel of either kind.
pub async fn reconcile<K: TunnelKind, S: Servers>(
    object: Arc<K>,
    ctx: Arc<Context<S>>,
) -> Result<Action, Error> {
    let api = K::api(&ctx.client, &object);
    // Only a credential the operator created needs revoking: other tunnels carry no finalizer
    // (one left from an earlier newTunnel is still honoured, and removed).
    let has_finalizer = object.meta().finalizers.iter().flatten().any(|f| f == FINALIZER);
    if object.spec().new_tunnel.is_none() && !has_finalizer {
        if object.meta().deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        return apply(&*object, &ctx).await;
    }
    finalizer(&api, FINALIZER, object, |event| async {
        match event {
            Event::Apply(object) => apply(&*object, &ctx).await,
            Event::Cleanup(object) => cleanup(&*object, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// After a failed reconcile: again in a while.
pub fn retry<K: TunnelKind, S: Servers>(_object: Arc<K>, error: &Error, _ctx: Arc<Context<S>>) -> Action {
    tracing::warn!("reconcile failed: {}", tunnel_core::log::Chain(error));
    Action::requeue(Duration::from_secs(15))
}

/// A problem to report in the status: a reason and a message.
type Problem = (String, String);

fn problem(reason: &str, message: impl std::fmt::Display) -> Problem {
    (reason.to_owned(), message.to_string())
}

async fn apply<K: TunnelKind, S: Servers>(object: &K, ctx: &Context<S>) -> Result<Action, Error> {
    let key = object.key();
    let spec = object.spec();
    let namespace = ctx.settings.namespace_of(&key);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let tunnel = TunnelObject { key: &key, meta: object.meta(), spec, status: object.status() };
    let mut learned = Learned::default();

    let access = match admin_access(spec, &secrets).await? {
        Ok(access) => access,
        Err(p) => {
            learned.problem = Some(p);
            None
        }
    };
    if learned.problem.is_none() {
        match credential(&tunnel, &secrets, access.as_ref(), ctx).await? {
            Ok(found) => learned.credential = found,
            Err(p) => learned.problem = Some(p),
        }
    }
    let name = connector::object_name(&key);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    learned.written = config_maps.get_opt(&name).await?.and_then(|cm| {
        let annotations = cm.metadata.annotations?;
        Some((annotations.get(CONFIG_HASH)?.clone(), annotations.get(CONFIG_VERSION)?.parse().ok()?))
    });
    learned.ready_replicas =
        deployments.get_opt(&name).await?.and_then(|d| d.status?.ready_replicas).unwrap_or_default();

    let cluster = (ctx.cluster)();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let first = desired(&cluster, &BTreeMap::from([(key.clone(), learned.clone())]), &ctx.settings, &now);
    let Some(outcome) = first.tunnels.get(&key) else {
        return Err(Error::Gone(key.to_string()));
    };
    if let (Some((config_map, deployment)), Some(access)) = (&outcome.connector, &access) {
        let file = configuration(config_map)?;
        let client = connector::client_name(&tunnel).unwrap_or_default().to_owned();
        if spec.new_tunnel.is_some() && learned.problem.is_none() {
            let replicas = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            if let Err(p) = keep_grant(ctx, access, &client, &file, replicas).await {
                learned.problem = Some(p);
            }
        }
        // Only a configuration the ConfigMap held before this pass can be running: one written
        // now is confirmed on a later pass, once the connector has had it.
        let hash = config_map.metadata.annotations.as_ref().and_then(|a| a.get(CONFIG_HASH));
        let held = learned.written.as_ref().map(|(written, _)| written);
        match ctx.servers.in_service(access, &client).await {
            Ok(mut found) => {
                found.route_ids.remove(&tunnel_core::proto::RouteId::of_http_fallback().to_string());
                let same_routes = found.sessions > 0 && found.route_ids == expected_route_ids(&file);
                if hash.is_some() && hash == held && same_routes {
                    learned.confirmed = version_of(config_map);
                }
            }
            Err(e) => learned.problem = Some(problem("ServerUnreachable", tunnel_core::log::Chain(&e))),
        }
    }
    let decided = desired(&cluster, &BTreeMap::from([(key.clone(), learned)]), &ctx.settings, &now);
    let outcome = decided.tunnels.get(&key).ok_or_else(|| Error::Gone(key.to_string()))?;
    if let Some((config_map, deployment)) = &outcome.connector {
        let params = PatchParams::apply(MANAGER).force();
        config_maps.patch(&name, &params, &Patch::Apply(typed(config_map, "v1", "ConfigMap"))).await?;
        deployments.patch(&name, &params, &Patch::Apply(typed(deployment, "apps/v1", "Deployment"))).await?;
    }
    write_status(object, ctx, &outcome.status).await?;
    super::statuses::write(ctx, &cluster, &decided).await?;
    let settled = outcome.status.conditions.iter().all(|c| c.status == "True");
    Ok(Action::requeue(Duration::from_secs(if settled { 300 } else { 15 })))
}

fn typed<T: serde::Serialize>(object: &T, api_version: &str, kind: &str) -> serde_json::Value {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    value["apiVersion"] = json!(api_version);
    value["kind"] = json!(kind);
    value
}

async fn write_status<K: TunnelKind, S: Servers>(
    object: &K,
    ctx: &Context<S>,
    status: &TunnelStatus,
) -> Result<(), Error> {
    if object.status() == Some(status) {
        return Ok(());
    }
    let api = K::api(&ctx.client, object);
    let patch = Patch::Merge(json!({ "status": status }));
    api.patch_status(&object.name_any(), &PatchParams::default(), &patch).await?;
    Ok(())
}

/// The admin API's address and token from `server.adminSecret`, trusted as the connector
/// trusts the server; `None` without an admin secret.
async fn admin_access(
    spec: &TunnelSpec,
    secrets: &Api<Secret>,
) -> Result<Result<Option<AdminAccess>, Problem>, Error> {
    let Some(name) = &spec.server.admin_secret else { return Ok(Ok(None)) };
    let Some(secret) = secrets.get_opt(name).await? else {
        return Ok(Err(problem("AdminSecretMissing", format!("the Secret {name} does not exist"))));
    };
    let field = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| problem("AdminSecretInvalid", format!("the Secret {name} has no key {key}")))
    };
    let (address, token) = match (field("address"), field("token")) {
        (Ok(a), Ok(t)) => (a, t),
        (Err(p), _) | (_, Err(p)) => return Ok(Err(p)),
    };
    let Ok(token) = tunnel_core::auth::Token::new(&token) else {
        return Ok(Err(problem(
            "AdminSecretInvalid",
            format!("the Secret {name}: token is not a valid token"),
        )));
    };
    let trust = match trust(spec, secrets).await? {
        Ok(trust) => trust,
        Err(p) => return Ok(Err(p)),
    };
    Ok(Ok(Some(AdminAccess { address, token, trust })))
}

async fn trust(spec: &TunnelSpec, secrets: &Api<Secret>) -> Result<Result<ServerTrust, Problem>, Error> {
    if let Some(fingerprint) = &spec.server.fingerprint {
        return Ok(fingerprint
            .parse()
            .map(ServerTrust::Pinned)
            .map_err(|e| problem("InvalidSpec", format!("spec.server.fingerprint: {e}"))));
    }
    let Some(name) = &spec.server.ca_secret else {
        return Ok(Err(problem("InvalidSpec", "spec.server: give exactly one of fingerprint and caSecret")));
    };
    let Some(secret) = secrets.get_opt(name).await? else {
        return Ok(Err(problem("CaSecretMissing", format!("the Secret {name} does not exist"))));
    };
    let pem = secret.data.as_ref().and_then(|d| d.get("ca.crt")).map(|v| v.0.clone()).unwrap_or_default();
    let roots: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice()).filter_map(Result::ok).collect();
    if roots.is_empty() {
        return Ok(Err(problem(
            "CaSecretInvalid",
            format!("the Secret {name} has no certificate under ca.crt"),
        )));
    }
    Ok(Ok(ServerTrust::Roots(roots)))
}

/// Whether the connector's token exists; for `newTunnel`, creates the credential (or, when
/// the server has the name already, rotates it) and keeps the token in a Secret.
async fn credential<S: Servers>(
    tunnel: &TunnelObject<'_>,
    secrets: &Api<Secret>,
    access: Option<&AdminAccess>,
    ctx: &Context<S>,
) -> Result<Result<bool, Problem>, Error> {
    let name = connector::token_secret(tunnel);
    let has_token = |s: &Secret| s.data.as_ref().is_some_and(|d| d.contains_key("token"));
    if let Some(found) = secrets.get_opt(&name).await? {
        return Ok(Ok(has_token(&found)));
    }
    let (Some(new), Some(access)) = (&tunnel.spec.new_tunnel, access) else {
        return Ok(Ok(false));
    };
    // No ports: the connector serves HTTP routes and networks. An administrator may widen it;
    // `keep_grant` leaves ports as the server holds them.
    let mut grant = Grant::default();
    grant.allow_ports = Some(tunnel_core::forward::PortSet::none());
    let token = match ctx.servers.create(access, &new.name, &grant).await {
        Ok(token) => token,
        // Someone else's client, or one whose token Secret is gone: taking it over (rotating
        // its token) would cut off whoever holds it. A person decides.
        Err(ServerError::Exists(_)) => {
            let message = format!(
                "the server already has a client {}: revoke it there, or use existingTunnel with its token",
                new.name
            );
            return Ok(Err(problem("CredentialExists", message)));
        }
        Err(e) => return Ok(Err(problem("CredentialFailed", tunnel_core::log::Chain(&e)))),
    };
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name),
            owner_references: connector::owner_reference(tunnel).map(|o| vec![o]),
            labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".into(), MANAGER.into())])),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("token".into(), token.expose_secret().to_owned())])),
        ..Default::default()
    };
    if let Err(err) = secrets.create(&PostParams::default(), &secret).await {
        // The token is nowhere else: kept by nobody, the client would be the server's for good,
        // and the next try would find the name taken. Revoked, the next try creates it again.
        if let Err(e) = ctx.servers.revoke(access, &new.name).await {
            tracing::warn!(
                client = %new.name,
                "the token Secret could not be created and the new client not revoked: {}; revoke it on the server",
                tunnel_core::log::Chain(&e)
            );
        }
        return Err(err.into());
    }
    Ok(Ok(true))
}

/// Keeps a created credential's grant to what the connector serves: its exact hosts, its
/// networks, and its replicas with room for a rollout's surge (one more in four, at least one).
/// The rest of the grant (ports, visits, exposes) stays as the server holds it.
async fn keep_grant<S: Servers>(
    ctx: &Context<S>,
    access: &AdminAccess,
    client: &str,
    file: &ClientFile,
    replicas: i32,
) -> Result<(), Problem> {
    let mut hosts: Vec<String> = file.routes.iter().map(|r| r.host.to_string()).collect();
    hosts.sort();
    hosts.dedup();
    let replicas = usize::try_from(replicas.max(1)).unwrap_or(1);
    let held = ctx
        .servers
        .grant(access, client)
        .await
        .map_err(|e| problem("ServerUnreachable", tunnel_core::log::Chain(&e)))?;
    let mut wanted = held.clone();
    wanted.allow_hosts = hosts.iter().filter_map(|h| h.parse().ok()).collect();
    wanted.allow_networks = file.networks.clone();
    wanted.replicas = Some((replicas + replicas.div_ceil(4)).min(tunnel_core::config::MAX_REPLICAS));
    if held != wanted {
        ctx.servers
            .regrant(access, client, &wanted)
            .await
            .map_err(|e| problem("CredentialFailed", tunnel_core::log::Chain(&e)))?;
    }
    Ok(())
}

fn configuration(config_map: &ConfigMap) -> Result<ClientFile, Error> {
    let text = config_map.data.as_ref().and_then(|d| d.get(CONFIG_KEY)).map_or("", String::as_str);
    ClientFile::parse(text, CONFIG_KEY.as_ref()).map_err(|e| Error::Rendered(e.to_string()))
}

fn version_of(config_map: &ConfigMap) -> Option<i64> {
    config_map.metadata.annotations.as_ref()?.get(CONFIG_VERSION)?.parse().ok()
}

/// The ids the server gives the HTTP and network routes of `file`: what it holds when it runs
/// this table (the fallback, which every table has, is left out on both sides).
pub fn expected_route_ids(file: &ClientFile) -> BTreeSet<String> {
    use tunnel_core::proto::RouteId;
    let mut ids: BTreeSet<String> = file
        .routes
        .iter()
        .filter_map(|r| r.build().ok())
        .map(|r| RouteId::of_http(&r.matcher).to_string())
        .collect();
    ids.extend(file.networks.iter().map(|n| RouteId::of_network(n).to_string()));
    ids
}

async fn cleanup<K: TunnelKind, S: Servers>(object: &K, ctx: &Context<S>) -> Result<Action, Error> {
    let key = object.key();
    let mut status = object.status().cloned().unwrap_or_default();
    status.state = Some(State::Deleting);
    write_status(object, ctx, &status).await?;
    let spec = object.spec();
    let mut outcome = (EventType::Normal, "Deleted", format!("{key}: the connector goes with its owner"));
    if let Some(new) = &spec.new_tunnel {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace_of(&key));
        match admin_access(spec, &secrets).await? {
            Ok(Some(access)) => match ctx.servers.revoke(&access, &new.name).await {
                Ok(()) | Err(ServerError::NotFound(_)) => {
                    outcome.2 =
                        format!("{key}: client {} revoked; the connector goes with its owner", new.name);
                }
                // The server may come back: tried again, and the finalizer stays meanwhile.
                Err(e) => return Err(Error::Cleanup(tunnel_core::log::Chain(&e).to_string())),
            },
            // Without a usable admin Secret nothing can ever revoke it (a namespace being
            // deleted takes the Secret with it): the finalizer goes, and the Event says so.
            Ok(None) | Err(_) => {
                let message = format!(
                    "{key}: client {} could not be revoked (no usable admin Secret); revoke it on the server",
                    new.name
                );
                outcome = (EventType::Warning, "RevokeSkipped", message);
            }
        }
    }
    let reference = object.object_ref(&());
    let recorded = Recorded {
        type_: outcome.0,
        reason: outcome.1.into(),
        note: Some(crate::render::event_note(&outcome.2)),
        action: "Cleanup".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&recorded, &reference).await {
        tracing::warn!("recording an event failed: {e}");
    }
    Ok(Action::await_change())
}
