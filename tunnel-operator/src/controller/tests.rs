//! The reconcile against a mocked API server (`tower-test`) and fake tunnel servers: every
//! request it makes is checked in order, and answered as the API server would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use serde_json::{json, Value};
use tunnel_core::admin::Grant;
use tunnel_core::auth::Token;

use super::reconciler::{expected_route_ids, reconcile, retry, FINALIZER};
use super::servers::{AdminAccess, InService, ServerError, Servers};
use super::{Context, Error};
use crate::connector::Settings;
use crate::objects::Cluster;

const FINGERPRINT: &str = "3f2a9c1e0b7d4a6f8e5c2b1a0d9f8e7c6b5a4d3c2b1a0f9e8d7c6b5a4f3e2d1c";
const OPERATOR_NS: &str = "tunnel-operator-system";
const CLUSTER_STATUS: &str = "/apis/tunnel-rs.github.io/v1alpha1/clustertunnels/shared/status";

/// Tunnel servers that answer from a script and remember what they were asked.
#[derive(Default)]
struct FakeServers {
    calls: Mutex<Vec<String>>,
    exists: bool,
    in_service: Mutex<InService>,
    granted: Mutex<Grant>,
    fail: bool,
}

impl FakeServers {
    fn called(&self, call: String) -> Result<(), ServerError> {
        self.calls.lock().unwrap().push(call);
        if self.fail {
            let source = tunnel_core::admin::AdminClientError::Unexpected("connection refused".into());
            return Err(ServerError::Failed { address: "admin:7701".into(), source });
        }
        Ok(())
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Servers for FakeServers {
    async fn create(&self, _: &AdminAccess, name: &str, grant: &Grant) -> Result<Token, ServerError> {
        let ports = grant.allow_ports.as_ref().map_or("server-wide".to_owned(), ToString::to_string);
        self.called(format!("create {name} ports={ports}"))?;
        if self.exists {
            return Err(ServerError::Exists(name.into()));
        }
        Ok(Token::new("created-token-0123456789").unwrap())
    }
    async fn grant(&self, _: &AdminAccess, name: &str) -> Result<Grant, ServerError> {
        self.called(format!("grant {name}"))?;
        Ok(self.granted.lock().unwrap().clone())
    }
    async fn regrant(&self, _: &AdminAccess, name: &str, grant: &Grant) -> Result<(), ServerError> {
        let hosts: Vec<String> = grant.allow_hosts.iter().map(ToString::to_string).collect();
        self.called(format!("regrant {name} hosts={} replicas={:?}", hosts.join(","), grant.replicas))?;
        *self.granted.lock().unwrap() = grant.clone();
        Ok(())
    }
    async fn revoke(&self, _: &AdminAccess, name: &str) -> Result<(), ServerError> {
        self.called(format!("revoke {name}"))
    }
    async fn in_service(&self, _: &AdminAccess, name: &str) -> Result<InService, ServerError> {
        self.called(format!("in_service {name}"))?;
        Ok(self.in_service.lock().unwrap().clone())
    }
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Responder = tower_test::mock::SendResponse<Response<Body>>;

/// The mocked API server: takes the reconcile's requests one at a time.
struct ApiServer(Handle);

impl ApiServer {
    /// The next request, which must be `method` on `path`; its JSON body.
    async fn expect(&mut self, method: &str, path: &str) -> (Value, Responder) {
        let next = tokio::time::timeout(Duration::from_secs(10), self.0.next_request());
        let (request, send) =
            next.await.unwrap_or_else(|_| panic!("no {method} {path}")).expect("the client is gone");
        let seen = format!("{} {}", request.method(), request.uri());
        assert!(
            request.method().as_str() == method && request.uri().path() == path,
            "expected {method} {path}, got {seen}"
        );
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        (body, send)
    }

    /// Answers `method path` with `status` and `body`; returns the request's body.
    async fn answer(&mut self, method: &str, path: &str, status: u16, body: Value) -> Value {
        let (request, send) = self.expect(method, path).await;
        send.send_response(
            Response::builder().status(status).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap(),
        );
        request
    }

    /// Answers with the request's own body (a patch or create that succeeds).
    async fn echo(&mut self, method: &str, path: &str) -> Value {
        self.echo_onto(method, path, json!({"metadata": {}})).await
    }

    /// Answers with `object` changed by the request's fields (a patch that succeeds).
    async fn echo_onto(&mut self, method: &str, path: &str, mut object: Value) -> Value {
        let (request, send) = self.expect(method, path).await;
        if let (Value::Object(fields), Value::Object(changes)) = (&mut object, &request) {
            fields.extend(changes.clone());
        }
        send.send_response(
            Response::builder().body(Body::from(serde_json::to_vec(&object).unwrap())).unwrap(),
        );
        request
    }

    /// A connector seen for the first time: its ConfigMap and Deployment not found, then
    /// applied; what was applied.
    async fn first_connector(&mut self, namespace: &str, name: &str) -> (Value, Value) {
        let config_map = format!("/api/v1/namespaces/{namespace}/configmaps/{name}");
        let deployment = format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}");
        self.not_found("GET", &config_map).await;
        self.not_found("GET", &deployment).await;
        (self.echo("PATCH", &config_map).await, self.echo("PATCH", &deployment).await)
    }

    async fn not_found(&mut self, method: &str, path: &str) {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": "not found", "reason": "NotFound", "code": 404});
        self.answer(method, path, 404, status).await;
    }
}

/// The reconcile's result; it must end once the test has answered every request it expects.
async fn finished(running: tokio::task::JoinHandle<Result<Action, Error>>) -> Result<Action, Error> {
    let ended = tokio::time::timeout(Duration::from_secs(10), running).await;
    ended.expect("the reconcile waits for a request the test did not expect").unwrap()
}

fn context(servers: FakeServers, cluster: Cluster) -> (Arc<Context<FakeServers>>, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let settings = Settings {
        namespace: OPERATOR_NS.into(),
        image: "tunnel-cli:test".into(),
        naming: crate::routes::Naming::default(),
    };
    let reporter = Reporter { controller: crate::render::REPORTER.into(), instance: Some("test".into()) };
    let ctx = Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        settings,
        servers,
        cluster: Box::new(move || cluster.clone()),
        published: Mutex::default(),
    };
    (Arc::new(ctx), ApiServer(handle))
}

/// The tunnel of the context's cluster as JSON: its first Tunnel (`0`) or ClusterTunnel (`1`).
fn object(ctx: &Context<FakeServers>, kind: usize) -> Value {
    let cluster = (ctx.cluster)();
    if kind == 0 {
        serde_json::to_value(&cluster.tunnels[0]).unwrap()
    } else {
        serde_json::to_value(&cluster.cluster_tunnels[0]).unwrap()
    }
}

fn cluster(yaml: &str) -> Cluster {
    let mut cluster = Cluster::default();
    cluster.load_yaml(yaml, "test").unwrap();
    cluster
}

/// The written status's condition `kind`.
fn condition(status: &Value, kind: &str) -> Value {
    let conditions = status["status"]["conditions"].as_array().expect("conditions");
    conditions.iter().find(|c| c["type"] == kind).unwrap_or_else(|| panic!("no {kind} in {status}")).clone()
}

/// A usable admin Secret.
fn admin_secret() -> Value {
    secret(&[("address", "admin:7701"), ("token", "admin-token-0123456789")])
}

fn secret(data: &[(&str, &str)]) -> Value {
    use base64::Engine;
    let encoded: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(base64::engine::general_purpose::STANDARD.encode(v))))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": encoded})
}

const ROUTED: &str = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: tunnel}\nspec: {controller: tunnel-rs.github.io/ingress-controller}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: a}\nspec: {ports: [{port: 80}]}\n---\n\
apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: a, annotations: {tunnel-rs.github.io/tunnel: TUNNEL}}\n\
spec: {ingressClassName: tunnel, rules: [{host: web.example.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}}]}\n";

fn existing_tunnel() -> String {
    format!(
        "apiVersion: tunnel-rs.github.io/v1alpha1\nkind: Tunnel\nmetadata: {{name: web, namespace: a, uid: u1, generation: 2}}\n\
         spec: {{existingTunnel: {{name: web, secret: web-token}}, server: {{address: 'tunnel.example.com:7700', fingerprint: '{FINGERPRINT}', publicHostname: tunnel.example.com}}}}\n---\n{}",
        ROUTED.replace("TUNNEL", "web")
    )
}

fn new_cluster_tunnel(extra_meta: &str) -> String {
    format!(
        "apiVersion: tunnel-rs.github.io/v1alpha1\nkind: ClusterTunnel\nmetadata: {{name: shared, uid: u2, generation: 1, finalizers: [{FINALIZER}]{extra_meta}}}\n\
         spec: {{newTunnel: {{name: shared}}, replicas: 2, server: {{address: 'tunnel.example.com:7700', fingerprint: '{FINGERPRINT}', adminSecret: admin}}}}\n---\n{}",
        ROUTED.replace("TUNNEL", "shared")
    )
}

#[tokio::test]
async fn an_existing_credential_gets_its_connector_and_its_ingress_the_public_host_name() {
    let cluster = cluster(&existing_tunnel());
    let tunnel = Arc::new(cluster.tunnels[0].clone());
    let (ctx, mut api) = context(FakeServers::default(), cluster);
    let running = tokio::spawn(reconcile(tunnel, ctx.clone()));
    api.answer("GET", "/api/v1/namespaces/a/secrets/web-token", 200, secret(&[("token", "t")])).await;
    let (config_map, deployment) = api.first_connector("a", "tunnel-web").await;
    let toml = config_map["data"]["client.toml"].as_str().unwrap();
    assert!(
        toml.contains("host = \"web.example.com\"") && toml.contains("http://web.a.svc.cluster.local:80"),
        "{toml}"
    );
    assert_eq!(config_map["metadata"]["annotations"]["tunnel-rs.github.io/config-version"], "1");
    assert_eq!(deployment["spec"]["template"]["spec"]["volumes"][1]["secret"]["secretName"], "web-token");
    let status = api
        .echo_onto(
            "PATCH",
            "/apis/tunnel-rs.github.io/v1alpha1/namespaces/a/tunnels/web/status",
            object(&ctx, 0),
        )
        .await;
    assert_eq!(status["status"]["state"], "creating");
    assert_eq!(status["status"]["observedGeneration"], 2);
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("ConnectorNotReady"))
    );
    let ingress = api.echo("PATCH", "/apis/networking.k8s.io/v1/namespaces/a/ingresses/web/status").await;
    assert_eq!(ingress["status"]["loadBalancer"]["ingress"][0]["hostname"], "tunnel.example.com");
    let action = finished(running).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(15)), "not settled: looked at again soon");
    assert!(ctx.servers.calls().is_empty(), "no admin secret: the server is not asked");
}

#[tokio::test]
async fn a_new_credential_is_created_granted_its_hosts_and_confirmed_once_the_connector_has_it() {
    let cluster = cluster(&new_cluster_tunnel(""));
    let tunnel = Arc::new(cluster.cluster_tunnels[0].clone());
    let servers = FakeServers::default();
    let file = crate::connector::client_file(
        &crate::tunnels::TunnelObject {
            key: &crate::tunnels::TunnelKey::Cluster { name: "shared".into() },
            meta: &tunnel.metadata,
            spec: &tunnel.spec.0,
            status: None,
        },
        vec![crate::routes::route_to(
            "web.example.com",
            None,
            "http://web.a.svc.cluster.local:80".parse().unwrap(),
        )
        .unwrap()],
    )
    .unwrap();
    // The server already routes what this configuration asks: only the pass after the one
    // that writes it may say so.
    *servers.in_service.lock().unwrap() = InService { sessions: 2, route_ids: expected_route_ids(&file) };
    let (ctx, mut api) = context(servers, cluster);
    let ns = format!("/api/v1/namespaces/{OPERATOR_NS}");
    let admin = admin_secret();
    let deployment_path = format!("/apis/apps/v1/namespaces/{OPERATOR_NS}/deployments/clustertunnel-shared");
    let running_deployment =
        json!({"metadata": {"name": "clustertunnel-shared"}, "status": {"readyReplicas": 2}});
    let status_path = "/apis/tunnel-rs.github.io/v1alpha1/clustertunnels/shared/status";

    let running = tokio::spawn(reconcile(tunnel.clone(), ctx.clone()));
    api.answer("GET", &format!("{ns}/secrets/admin"), 200, admin.clone()).await;
    api.not_found("GET", &format!("{ns}/secrets/clustertunnel-shared-token")).await;
    let created = api.echo("POST", &format!("{ns}/secrets")).await;
    assert_eq!(created["stringData"]["token"], "created-token-0123456789");
    assert_eq!(created["metadata"]["ownerReferences"][0]["kind"], "ClusterTunnel");
    let old = json!({"metadata": {"name": "clustertunnel-shared", "annotations": {
        "tunnel-rs.github.io/config-hash": "0000", "tunnel-rs.github.io/config-version": "1"}}});
    api.answer("GET", &format!("{ns}/configmaps/clustertunnel-shared"), 200, old).await;
    api.answer("GET", &deployment_path, 200, running_deployment.clone()).await;
    let config_map = api.echo("PATCH", &format!("{ns}/configmaps/clustertunnel-shared")).await;
    let version = &config_map["metadata"]["annotations"]["tunnel-rs.github.io/config-version"];
    assert_eq!(version, "2", "a changed configuration counts up");
    api.echo("PATCH", &deployment_path).await;
    let status = api.echo_onto("PATCH", status_path, object(&ctx, 1)).await;
    assert_eq!(status["status"]["state"], "active");
    assert!(status["status"].get("configVersion").is_none(), "written just now: not confirmed yet");
    finished(running).await.unwrap();

    // The next pass: the ConfigMap holds configuration 2, the token Secret exists, the grant is
    // as wanted already.
    let running = tokio::spawn(reconcile(tunnel, ctx.clone()));
    api.answer("GET", &format!("{ns}/secrets/admin"), 200, admin).await;
    api.answer("GET", &format!("{ns}/secrets/clustertunnel-shared-token"), 200, secret(&[("token", "t")]))
        .await;
    api.answer("GET", &format!("{ns}/configmaps/clustertunnel-shared"), 200, config_map).await;
    api.answer("GET", &deployment_path, 200, running_deployment).await;
    api.echo("PATCH", &format!("{ns}/configmaps/clustertunnel-shared")).await;
    api.echo("PATCH", &deployment_path).await;
    let status = api.echo_onto("PATCH", status_path, object(&ctx, 1)).await;
    assert_eq!(status["status"]["configVersion"], 2, "the server runs configuration 2");
    let conditions = status["status"]["conditions"].as_array().unwrap();
    assert!(conditions.iter().all(|c| c["status"] == "True"), "{conditions:?}");
    assert_eq!(finished(running).await.unwrap(), Action::requeue(Duration::from_secs(300)));
    assert_eq!(
        ctx.servers.calls(),
        [
            "create shared ports=none",
            "grant shared",
            "regrant shared hosts=web.example.com replicas=Some(3)",
            "in_service shared",
            "grant shared",
            "in_service shared"
        ],
        "2 replicas and one of surge granted once; the second pass finds the grant as wanted"
    );
}

#[tokio::test]
async fn a_token_secret_that_cannot_be_created_revokes_the_new_client_so_the_next_try_creates_it_again() {
    let cluster = cluster(&new_cluster_tunnel(""));
    let tunnel = Arc::new(cluster.cluster_tunnels[0].clone());
    let (ctx, mut api) = context(FakeServers::default(), cluster);
    let running = tokio::spawn(reconcile(tunnel, ctx.clone()));
    let ns = format!("/api/v1/namespaces/{OPERATOR_NS}");
    api.answer("GET", &format!("{ns}/secrets/admin"), 200, admin_secret()).await;
    api.not_found("GET", &format!("{ns}/secrets/clustertunnel-shared-token")).await;
    // A quota on Secrets, a webhook, an API server restarting.
    let refused = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                         "message": "exceeded quota: secrets", "reason": "Forbidden", "code": 403});
    api.answer("POST", &format!("{ns}/secrets"), 403, refused).await;
    assert!(finished(running).await.is_err(), "tried again later");
    // Before, the token was dropped with the client left on the server: every later try was
    // CredentialExists until a person revoked it.
    assert_eq!(ctx.servers.calls(), ["create shared ports=none", "revoke shared"]);
}

#[tokio::test]
async fn a_name_the_server_has_already_is_not_taken_over() {
    let cluster = cluster(&new_cluster_tunnel(""));
    let tunnel = Arc::new(cluster.cluster_tunnels[0].clone());
    let (ctx, mut api) = context(FakeServers { exists: true, ..FakeServers::default() }, cluster);
    let running = tokio::spawn(reconcile(tunnel, ctx.clone()));
    let ns = format!("/api/v1/namespaces/{OPERATOR_NS}");
    let admin = admin_secret();
    api.answer("GET", &format!("{ns}/secrets/admin"), 200, admin).await;
    api.not_found("GET", &format!("{ns}/secrets/clustertunnel-shared-token")).await;
    api.first_connector(OPERATOR_NS, "clustertunnel-shared").await;
    let status = api.echo_onto("PATCH", CLUSTER_STATUS, object(&ctx, 1)).await;
    assert_eq!(status["status"]["state"], "error");
    let ready = condition(&status, "Ready");
    assert_eq!(ready["reason"], "CredentialExists");
    assert!(ready["message"].as_str().unwrap().contains("existingTunnel"), "{ready}");
    finished(running).await.unwrap();
    assert_eq!(
        ctx.servers.calls(),
        ["create shared ports=none", "in_service shared"],
        "no rotate: its holder keeps it"
    );
}

#[tokio::test]
async fn an_unreadable_admin_secret_is_an_error_state_with_its_reason_and_the_server_is_not_asked() {
    let cluster = cluster(&new_cluster_tunnel(""));
    let tunnel = Arc::new(cluster.cluster_tunnels[0].clone());
    let (ctx, mut api) = context(FakeServers::default(), cluster);
    let running = tokio::spawn(reconcile(tunnel, ctx.clone()));
    let ns = format!("/api/v1/namespaces/{OPERATOR_NS}");
    api.answer("GET", &format!("{ns}/secrets/admin"), 200, secret(&[("token", "admin-token-0123456789")]))
        .await;
    api.first_connector(OPERATOR_NS, "clustertunnel-shared").await;
    let status = api.echo_onto("PATCH", CLUSTER_STATUS, object(&ctx, 1)).await;
    assert_eq!(status["status"]["state"], "error");
    let ready = condition(&status, "Ready");
    assert_eq!(ready["reason"], "AdminSecretInvalid");
    assert_eq!(ready["message"], "the Secret admin has no key address");
    finished(running).await.unwrap();
    assert!(ctx.servers.calls().is_empty());
}

#[tokio::test]
async fn deletion_revokes_the_created_credential_then_lets_the_finalizer_go() {
    let cluster = cluster(&new_cluster_tunnel(", deletionTimestamp: '2026-06-01T00:00:00Z'"));
    let tunnel = Arc::new(cluster.cluster_tunnels[0].clone());
    let (ctx, mut api) = context(FakeServers::default(), cluster);
    let running = tokio::spawn(reconcile(tunnel, ctx.clone()));
    let status = api
        .echo_onto(
            "PATCH",
            "/apis/tunnel-rs.github.io/v1alpha1/clustertunnels/shared/status",
            object(&ctx, 1),
        )
        .await;
    assert_eq!(status["status"]["state"], "deleting");
    let ns = format!("/api/v1/namespaces/{OPERATOR_NS}");
    api.answer("GET", &format!("{ns}/secrets/admin"), 200, admin_secret()).await;
    let event = api.echo("POST", "/apis/events.k8s.io/v1/namespaces/default/events").await;
    assert_eq!(event["reason"], "Deleted");
    let removal = api
        .echo_onto("PATCH", "/apis/tunnel-rs.github.io/v1alpha1/clustertunnels/shared", object(&ctx, 1))
        .await;
    assert!(
        removal.to_string().contains("remove") && removal.to_string().contains("/metadata/finalizers"),
        "{removal}"
    );
    assert_eq!(finished(running).await.unwrap(), Action::await_change());
    assert_eq!(ctx.servers.calls(), ["revoke shared"]);
}

#[tokio::test]
async fn a_failed_revoke_keeps_the_finalizer_and_a_conflicting_finalizer_write_is_retried() {
    let cluster = cluster(&new_cluster_tunnel(", deletionTimestamp: '2026-06-01T00:00:00Z'"));
    let tunnel = Arc::new(cluster.cluster_tunnels[0].clone());
    let (ctx, mut api) = context(FakeServers { fail: true, ..FakeServers::default() }, cluster);
    let running = tokio::spawn(reconcile(tunnel.clone(), ctx.clone()));
    api.echo_onto(
        "PATCH",
        "/apis/tunnel-rs.github.io/v1alpha1/clustertunnels/shared/status",
        object(&ctx, 1),
    )
    .await;
    let ns = format!("/api/v1/namespaces/{OPERATOR_NS}");
    api.answer("GET", &format!("{ns}/secrets/admin"), 200, admin_secret()).await;
    let error = finished(running).await.unwrap_err();
    assert!(tunnel_core::log::Chain(&error).to_string().contains("connection refused"), "{error}");
    assert_eq!(retry(tunnel, &error, ctx.clone()), Action::requeue(Duration::from_secs(15)));

    // A new credential's tunnel without the finalizer yet: the write adding it conflicts, and
    // is tried again.
    let fresh = self::cluster(&new_cluster_tunnel("").replace(&format!(", finalizers: [{FINALIZER}]"), ""));
    let tunnel = Arc::new(fresh.cluster_tunnels[0].clone());
    let (ctx, mut api) = context(FakeServers::default(), fresh);
    let running = tokio::spawn(reconcile(tunnel.clone(), ctx.clone()));
    let conflict = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": "the object has been modified", "reason": "Conflict", "code": 409});
    let path = "/apis/tunnel-rs.github.io/v1alpha1/clustertunnels/shared";
    api.answer("PATCH", path, 409, conflict).await;
    let error = finished(running).await.unwrap_err();
    assert!(matches!(&error, Error::Finalizer(_)), "{error}");
    assert!(tunnel_core::log::Chain(&error).to_string().contains("modified"), "{error}");
    assert_eq!(retry(tunnel.clone(), &error, ctx.clone()), Action::requeue(Duration::from_secs(15)));
    let running = tokio::spawn(reconcile(tunnel, ctx.clone()));
    let added = api.echo_onto("PATCH", path, object(&ctx, 1)).await;
    assert!(added.to_string().contains(FINALIZER), "{added}");
    assert_eq!(finished(running).await.unwrap(), Action::await_change(), "the next change reconciles it");
}

#[tokio::test]
async fn deletion_without_a_usable_admin_secret_lets_the_finalizer_go_and_says_what_is_left() {
    let cluster = cluster(&new_cluster_tunnel(", deletionTimestamp: '2026-06-01T00:00:00Z'"));
    let tunnel = Arc::new(cluster.cluster_tunnels[0].clone());
    let (ctx, mut api) = context(FakeServers::default(), cluster);
    let running = tokio::spawn(reconcile(tunnel, ctx.clone()));
    api.echo_onto(
        "PATCH",
        "/apis/tunnel-rs.github.io/v1alpha1/clustertunnels/shared/status",
        object(&ctx, 1),
    )
    .await;
    api.not_found("GET", &format!("/api/v1/namespaces/{OPERATOR_NS}/secrets/admin")).await;
    let event = api.echo("POST", "/apis/events.k8s.io/v1/namespaces/default/events").await;
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("RevokeSkipped")));
    assert!(event["note"].as_str().unwrap().contains("revoke it on the server"), "{event}");
    let removal = api
        .echo_onto("PATCH", "/apis/tunnel-rs.github.io/v1alpha1/clustertunnels/shared", object(&ctx, 1))
        .await;
    assert!(removal.to_string().contains("/metadata/finalizers"), "{removal}");
    assert_eq!(finished(running).await.unwrap(), Action::await_change());
    assert!(ctx.servers.calls().is_empty());
}
