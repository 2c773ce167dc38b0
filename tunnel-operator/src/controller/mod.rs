//! The controller: watches the objects a decision depends on, reconciles each tunnel of both
//! kinds with [`reconciler::reconcile`], and runs only while it holds the leader lease.

pub mod leader;
pub mod reconciler;
pub mod servers;
pub mod statuses;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::{stream, Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::connector::Settings;
use crate::crd::{ClusterTunnel, Tunnel, TunnelSpec, TunnelStatus};
use crate::gateway::{Gateway, GatewayClass, HttpRoute, ReferenceGrant};
use crate::objects::Cluster;
use crate::tunnels::TunnelKey;
use servers::Servers;

/// What a reconcile can fail with; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server.
    #[error("the Kubernetes API")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer, or the reconcile inside it.
    #[error("reconciling")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The tunnel left the watch between trigger and reconcile.
    #[error("{0} is gone")]
    Gone(String),
    /// A rendered configuration that does not read back (a bug).
    #[error("the rendered configuration does not parse: {0}")]
    Rendered(String),
    /// Revoking the credential at deletion.
    #[error("revoking the credential: {0}")]
    Cleanup(String),
}

/// Everything a reconcile uses.
pub struct Context<S> {
    /// The API client.
    pub client: Client,
    /// Namespace, image, naming.
    pub settings: Settings,
    /// The tunnel servers' admin APIs.
    pub servers: S,
    /// Records Events.
    pub recorder: Recorder,
    /// The objects as the watches hold them now.
    pub cluster: Box<dyn Fn() -> Cluster + Send + Sync>,
    /// The notes recorded as Events and still holding: recorded once each.
    pub published: Mutex<BTreeSet<String>>,
}

/// `Tunnel` and `ClusterTunnel`, for the code both share.
pub trait TunnelKind:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + serde::Serialize + Debug + Send + Sync + 'static
{
    /// Its key.
    fn key(&self) -> TunnelKey;
    /// Its spec.
    fn spec(&self) -> &TunnelSpec;
    /// Its status.
    fn status(&self) -> Option<&TunnelStatus>;
    /// The API it is written through.
    fn api(client: &Client, object: &Self) -> Api<Self>;
}

impl TunnelKind for Tunnel {
    fn key(&self) -> TunnelKey {
        TunnelKey::Namespaced { namespace: self.namespace().unwrap_or_default(), name: self.name_any() }
    }
    fn spec(&self) -> &TunnelSpec {
        &self.spec
    }
    fn status(&self) -> Option<&TunnelStatus> {
        self.status.as_ref()
    }
    fn api(client: &Client, object: &Self) -> Api<Self> {
        Api::namespaced(client.clone(), &object.namespace().unwrap_or_default())
    }
}

impl TunnelKind for ClusterTunnel {
    fn key(&self) -> TunnelKey {
        TunnelKey::Cluster { name: self.name_any() }
    }
    fn spec(&self) -> &TunnelSpec {
        &self.spec.0
    }
    fn status(&self) -> Option<&TunnelStatus> {
        self.status.as_ref()
    }
    fn api(client: &Client, _object: &Self) -> Api<Self> {
        Api::all(client.clone())
    }
}

/// A watched kind: its store, and a stream that yields on every change.
fn watched<K>(api: Api<K>) -> (Store<K>, impl Stream<Item = ()> + Send)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let changes = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .filter_map(|r| async move {
            if let Err(e) = &r {
                tracing::warn!("watch: {e}");
            }
            r.ok().map(|_| ())
        });
    (store, changes)
}

fn snapshot<K: Clone + Resource<DynamicType = ()> + kube::runtime::reflector::Lookup<DynamicType = ()>>(
    store: &Store<K>,
) -> Vec<K> {
    store.state().iter().map(|o| (**o).clone()).collect()
}

/// The ClusterTunnel owning an object, if one does.
fn cluster_owner<K: Resource>(child: K) -> Option<kube::runtime::reflector::ObjectRef<ClusterTunnel>> {
    let owners = child.meta().owner_references.as_ref()?;
    let owner =
        owners.iter().find(|o| o.kind == "ClusterTunnel" && o.api_version.starts_with(crate::crd::GROUP))?;
    Some(kube::runtime::reflector::ObjectRef::new(&owner.name))
}

async fn log<T, E: std::fmt::Display>(result: Result<T, E>) {
    if let Err(e) = result {
        tracing::debug!("controller: {e}");
    }
}

/// Runs the controller until it fails or loses the lease: `identity` names this replica.
pub async fn run<S: Servers>(
    client: Client,
    settings: Settings,
    servers: S,
    identity: String,
) -> anyhow::Result<()> {
    let lease = leader::Lease::acquire(client.clone(), &settings.namespace, &identity).await?;
    tracing::info!(identity, "leading: the controller starts");
    let gateway_api = leader::has_group(&client, crate::gateway::GROUP).await;
    let (ingresses, a) = watched(Api::<Ingress>::all(client.clone()));
    let (classes, b) = watched(Api::<IngressClass>::all(client.clone()));
    let (services, c) = watched(Api::<Service>::all(client.clone()));
    let mut triggers: Vec<std::pin::Pin<Box<dyn Stream<Item = ()> + Send>>> =
        vec![Box::pin(a), Box::pin(b), Box::pin(c)];
    let gateway_stores = if gateway_api {
        let (routes, d) = watched(Api::<HttpRoute>::all(client.clone()));
        let (gateways, e) = watched(Api::<Gateway>::all(client.clone()));
        let (gateway_classes, f) = watched(Api::<GatewayClass>::all(client.clone()));
        let (grants, g) = watched(Api::<ReferenceGrant>::all(client.clone()));
        triggers.extend([Box::pin(d) as _, Box::pin(e) as _, Box::pin(f) as _, Box::pin(g) as _]);
        Some((routes, gateways, gateway_classes, grants))
    } else {
        tracing::warn!("the Gateway API is not installed: HTTPRoutes are not served");
        None
    };
    // One stream of changes drives both controllers, each through its own channel.
    let (to_tunnels, for_tunnels) = tokio::sync::mpsc::channel::<()>(16);
    let (to_cluster, for_cluster) = tokio::sync::mpsc::channel::<()>(16);
    let fan_out = stream::select_all(triggers).for_each(move |()| {
        let (a, b) = (to_tunnels.clone(), to_cluster.clone());
        async move {
            let _ = a.try_send(());
            let _ = b.try_send(());
        }
    });
    let receive = |rx: tokio::sync::mpsc::Receiver<()>| {
        stream::unfold(rx, |mut rx| async { rx.recv().await.map(|()| ((), rx)) })
    };
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=tunnel-operator");
    let tunnels = Controller::new(Api::<Tunnel>::all(client.clone()), watcher::Config::default())
        .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
        .owns(Api::<Deployment>::all(client.clone()), owned.clone())
        .reconcile_all_on(receive(for_tunnels));
    // `owns` looks a child's owner up in the child's namespace, which a cluster-scoped owner
    // has none of: the children of ClusterTunnels are mapped to them by name.
    let cluster_tunnels =
        Controller::new(Api::<ClusterTunnel>::all(client.clone()), watcher::Config::default())
            .watches(Api::<ConfigMap>::all(client.clone()), owned.clone(), cluster_owner)
            .watches(Api::<Deployment>::all(client.clone()), owned, cluster_owner)
            .reconcile_all_on(receive(for_cluster));
    let (tunnel_store, cluster_store) = (tunnels.store(), cluster_tunnels.store());
    // No pass runs before every watched kind is listed once: from an empty store, a pass would
    // write a config with no routes and grant no hosts, withdrawing every route on the server
    // until the next pass (at each start, restart or change of leader).
    let mut stores: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>> = vec![
        Box::pin(listed(ingresses.clone())),
        Box::pin(listed(classes.clone())),
        Box::pin(listed(services.clone())),
    ];
    if let Some((routes, gateways, gateway_classes, grants)) = &gateway_stores {
        stores.push(Box::pin(listed(routes.clone())));
        stores.push(Box::pin(listed(gateways.clone())));
        stores.push(Box::pin(listed(gateway_classes.clone())));
        stores.push(Box::pin(listed(grants.clone())));
    }
    let cluster = move || Cluster {
        tunnels: snapshot(&tunnel_store),
        cluster_tunnels: snapshot(&cluster_store),
        ingresses: snapshot(&ingresses),
        ingress_classes: snapshot(&classes),
        services: snapshot(&services),
        http_routes: gateway_stores.as_ref().map(|s| snapshot(&s.0)).unwrap_or_default(),
        gateways: gateway_stores.as_ref().map(|s| snapshot(&s.1)).unwrap_or_default(),
        gateway_classes: gateway_stores.as_ref().map(|s| snapshot(&s.2)).unwrap_or_default(),
        reference_grants: gateway_stores.as_ref().map(|s| snapshot(&s.3)).unwrap_or_default(),
    };
    let reporter = Reporter { controller: crate::render::REPORTER.into(), instance: Some(identity) };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        settings,
        servers,
        cluster: Box::new(cluster),
        published: Mutex::default(),
    });
    let run_tunnels = tunnels.run(reconciler::reconcile, reconciler::retry, ctx.clone()).for_each(log);
    let run_cluster = cluster_tunnels.run(reconciler::reconcile, reconciler::retry, ctx).for_each(log);
    let controllers = async move {
        if !futures::future::join_all(stores).await.into_iter().all(|listed| listed) {
            return;
        }
        tracing::info!("every watched kind is listed: reconciling");
        tokio::join!(run_tunnels, run_cluster);
    };
    tokio::select! {
        () = async { tokio::join!(controllers, fan_out); } => Ok(()),
        lost = lease.held() => Err(lost),
    }
}

/// Whether `store` was listed once (its watch's first list done); `false` if its watch ended.
async fn listed<K>(store: Store<K>) -> bool
where
    K: Resource<DynamicType = ()> + Clone + kube::runtime::reflector::Lookup<DynamicType = ()> + 'static,
{
    store.wait_until_ready().await.is_ok()
}
