//! Against a real cluster (ignored: no API server can run where the suite runs). With a
//! kubeconfig for a disposable cluster and a reachable tunnel server:
//!
//! ```text
//! TUNNEL_TEST_SERVER=tunnel.example.com:7700 TUNNEL_TEST_FINGERPRINT=<64 hex> \
//!   TUNNEL_TEST_TOKEN=<a client token> cargo test -p tunnel-operator --test cluster -- --ignored
//! ```
//!
//! It installs the CRDs, runs the controller in this process, creates a namespace with a
//! token Secret, a Tunnel and a Service and Ingress, and waits for the connector's ConfigMap
//! and Deployment and for the Tunnel's status; then deletes the namespace.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt};
use tunnel_operator::connector::Settings;
use tunnel_operator::crd::{ClusterTunnel, Tunnel};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("set {name} (see the top of tests/cluster.rs)"))
}

async fn until<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} did not happen within 120 s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster and a tunnel server"]
async fn a_tunnel_gets_its_connector_and_status_in_a_real_cluster() {
    let (server, fingerprint, token) =
        (env("TUNNEL_TEST_SERVER"), env("TUNNEL_TEST_FINGERPRINT"), env("TUNNEL_TEST_TOKEN"));
    let client = Client::try_default().await.expect("a kubeconfig");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [Tunnel::crd(), ClusterTunnel::crd()] {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(&name, &PatchParams::apply("tunnel-operator-test").force(), &Patch::Apply(&crd))
            .await
            .unwrap();
    }
    let namespace = format!("tunnel-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}})).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    let settings = Settings {
        namespace: namespace.clone(),
        image: "ghcr.io/tunnel-rs/tunnel-cli:0.1.0".into(),
        naming: tunnel_operator::routes::Naming::default(),
    };
    let controller = tokio::spawn(tunnel_operator::controller::run(
        client.clone(),
        settings,
        tunnel_operator::controller::servers::AdminApis,
        "cluster-test".into(),
    ));
    let objects = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: web-token, namespace: {namespace}}}\nstringData: {{token: '{token}'}}\n---\n\
         apiVersion: tunnel-rs.github.io/v1alpha1\nkind: Tunnel\nmetadata: {{name: web, namespace: {namespace}}}\n\
         spec: {{existingTunnel: {{name: web, secret: web-token}}, server: {{address: '{server}', fingerprint: '{fingerprint}'}}}}\n"
    );
    for object in serde_saphyr::from_multiple::<serde_json::Value>(&objects).unwrap() {
        let kind = object["kind"].as_str().unwrap().to_owned();
        let api: Api<kube::core::DynamicObject> = match kind.as_str() {
            "Secret" => Api::namespaced_with(
                client.clone(),
                &namespace,
                &kube::core::ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&()),
            ),
            _ => Api::namespaced_with(
                client.clone(),
                &namespace,
                &kube::core::ApiResource::erase::<Tunnel>(&()),
            ),
        };
        api.create(&PostParams::default(), &serde_json::from_value(object).unwrap()).await.unwrap();
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let tunnels: Api<Tunnel> = Api::namespaced(client.clone(), &namespace);
    until("the ConfigMap", async || config_maps.get_opt("tunnel-web").await.unwrap()).await;
    until("the Deployment", async || deployments.get_opt("tunnel-web").await.unwrap()).await;
    until("the status", async || tunnels.get("web").await.unwrap().status.and_then(|s| s.state)).await;
    namespaces.delete(&namespace, &DeleteParams::default()).await.unwrap();
    controller.abort();
}
