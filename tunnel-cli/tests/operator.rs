//! The operator end to end with no cluster: what it renders for a ClusterTunnel, its
//! HTTPRoutes and an Ingress is run for real. A `tunnel-cli serve`, and the connector command
//! of the rendered Deployment on the rendered ConfigMap, in a mount namespace whose /etc/hosts
//! gives the Services' cluster DNS names to stand-ins on loopback. Requests by Host reach the
//! stand-in named as their Service; a changed HTTPRoute, rendered again into the ConfigMap
//! file (swapped as the kubelet does), is picked up live while a download on another route
//! goes on unbroken.

#[path = "support/process.rs"]
mod process;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use process::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tunnel_operator::connector::{Settings, CONFIG_KEY};
use tunnel_operator::objects::Cluster;
use tunnel_operator::reconcile::{desired, Learned};
use tunnel_operator::tunnels::TunnelKey;

const TOKEN: &str = "operator-e2e-token-0123456789";
/// The download on the route that does not change: big enough to be in flight across the reload.
const DOWNLOAD: usize = 24 << 20;

fn download_byte(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// A stand-in for Service `name`: answers `NAME PATH`, and `/big` with the download.
async fn stand_in(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = tcp.into_split();
                let mut lines = BufReader::new(read);
                loop {
                    let Some(request) = read_request(&mut lines).await else { return };
                    let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    if path == "/big" {
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {DOWNLOAD}\r\n\r\n");
                        let body: Vec<u8> = (0..DOWNLOAD).map(download_byte).collect();
                        if write.write_all(head.as_bytes()).await.is_err()
                            || write.write_all(&body).await.is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    let body = format!("{name} {path}");
                    let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    if write.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// The objects: the ClusterTunnel on `served`, a GatewayClass and Gateway of ours, the three
/// Services on the stand-ins' ports, an Ingress, and HTTPRoutes (`canary` adds `/v2` to the
/// api route).
fn objects(served: &Served, ports: &BTreeMap<&str, u16>, canary: bool) -> String {
    let (address, fingerprint) = (&served.addr, &served.fingerprint);
    let mut text = format!(
        "apiVersion: tunnel-rs.github.io/v1alpha1\nkind: ClusterTunnel\nmetadata: {{name: shared}}\n\
         spec: {{existingTunnel: {{name: connector, secret: connector-token}}, server: {{address: '{address}', fingerprint: '{fingerprint}'}}}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: tunnel}}\n\
         spec: {{controllerName: tunnel-rs.github.io/gateway-controller, parametersRef: {{group: tunnel-rs.github.io, kind: ClusterTunnel, name: shared}}}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: infra}}\n\
         spec: {{gatewayClassName: tunnel, listeners: [{{name: http, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}]}}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {{name: tunnel}}\nspec: {{controller: tunnel-rs.github.io/ingress-controller}}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: files, namespace: web, annotations: {{tunnel-rs.github.io/tunnel: shared}}}}\n\
         spec: {{ingressClassName: tunnel, rules: [{{host: files.example.test, http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: files, port: {{name: http}}}}}}}}]}}}}]}}\n---\n"
    );
    for (name, port) in ports {
        text.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: web}}\nspec: {{ports: [{{name: http, port: {port}}}]}}\n---\n"
        ));
    }
    let api_port = ports["api"];
    let mut rules = format!("[{{backendRefs: [{{name: api, port: {api_port}}}]}}");
    if canary {
        let canary_port = ports["canary"];
        rules.push_str(&format!(
            ", {{matches: [{{path: {{type: PathPrefix, value: /v2}}}}], backendRefs: [{{name: canary, port: {canary_port}}}]}}"
        ));
    }
    text.push_str(&format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: api, namespace: web}}\n\
         spec: {{parentRefs: [{{name: edge, namespace: infra}}], hostnames: [api.example.test], rules: {rules}]}}\n"
    ));
    text
}

/// The ConfigMap's configuration and the connector's arguments, as `render` decides them;
/// `written` is the ConfigMap as found (its hash and version).
fn rendered(objects: &str, written: Option<(String, i64)>) -> (String, Vec<String>, String, i64) {
    let mut cluster = Cluster::default();
    assert!(cluster.load_yaml(objects, "objects").unwrap().is_empty());
    cluster.check().unwrap();
    let key = TunnelKey::Cluster { name: "shared".into() };
    let settings = Settings {
        namespace: "tunnel-operator-system".into(),
        image: "tunnel-cli".into(),
        naming: tunnel_operator::routes::Naming::default(),
    };
    let learned = BTreeMap::from([(key.clone(), Learned { written, ..Learned::default() })]);
    let decided = desired(&cluster, &learned, &settings, &Time("2026-06-01T00:00:00Z".parse().unwrap()));
    assert!(decided.notes.is_empty(), "{:?}", decided.notes);
    let (config_map, deployment) = decided.tunnels[&key].connector.clone().expect("a connector");
    let annotations = config_map.metadata.annotations.unwrap();
    let hash = annotations[tunnel_operator::connector::CONFIG_HASH].clone();
    let version = annotations[tunnel_operator::connector::CONFIG_VERSION].parse().unwrap();
    let args = deployment.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
    (config_map.data.unwrap()[CONFIG_KEY].clone(), args, hash, version)
}

/// The rendered configuration with the paths and port of the pod moved to the test's: the
/// token file into `dir`, the probes on an OS-chosen port.
fn rebased(toml: &str, dir: &Path) -> String {
    let mut file = tunnel_core::config::ClientFile::parse(toml, CONFIG_KEY.as_ref()).unwrap();
    assert_eq!(file.token_file.as_deref(), Some(Path::new(tunnel_operator::connector::TOKEN_PATH)));
    assert_eq!(file.metrics.as_deref(), Some("0.0.0.0:9091"));
    file.token_file = Some(dir.join("token"));
    file.metrics = Some("127.0.0.1:0".into());
    file.to_toml().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_connectors_serve_routes_by_host_and_take_a_changed_route_live() {
    if !may_use_namespaces() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let served = serve(
        &dir.path().join("server"),
        &["--token", TOKEN, "--http-listen", "127.0.0.1:0", "--allow-hosts", "*.example.test"],
        &[],
    )
    .await;
    let edge: SocketAddr = served.cli.line_after("HTTP routes served on ").await.parse().unwrap();
    let ports = BTreeMap::from([
        ("api", stand_in("api").await),
        ("files", stand_in("files").await),
        ("canary", stand_in("canary").await),
    ]);

    // What the operator renders, mounted as the kubelet mounts a ConfigMap.
    let (toml, args, hash, version) = rendered(&objects(&served, &ports, false), None);
    assert_eq!(version, 1);
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let config_dir = dir.path().join("config");
    std::fs::create_dir(&config_dir).unwrap();
    let config = config_dir.join(CONFIG_KEY);
    swap(&config_dir, &config, 1, &rebased(&toml, dir.path()));
    assert_eq!(
        args,
        ["connect", "--config", &format!("{}/{CONFIG_KEY}", tunnel_operator::connector::CONFIG_DIR)]
    );
    let args: Vec<String> = args
        .iter()
        .map(|a| if a.ends_with(CONFIG_KEY) { config.display().to_string() } else { a.clone() })
        .collect();

    // The Services' cluster DNS names, for the connector alone.
    let hosts = dir.path().join("hosts");
    let names: String =
        ports.keys().map(|name| format!("127.0.0.1 {name}.web.svc.cluster.local\n")).collect();
    std::fs::write(&hosts, format!("127.0.0.1 localhost\n{names}")).unwrap();
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args(["--mount", "sh", "-c", "mount --bind \"$0\" /etc/hosts && exec \"$@\""])
        .arg(&hosts)
        .arg(env!("CARGO_BIN_EXE_tunnel-cli"))
        .args(&args);
    isolated(&mut cmd);
    let connector = spawn(cmd);
    connector.lines_after("route ready: v1 http ", 2).await;

    assert_eq!(curl(edge, "api.example.test", "/users").await, (200, "api /users".to_owned()));
    assert_eq!(curl(edge, "files.example.test", "/readme").await, (200, "files /readme".to_owned()));
    assert_eq!(curl(edge, "api.example.test", "/v2/users").await, (200, "api /v2/users".to_owned()));
    assert_eq!(
        curl(edge, "nobody.example.test", "/").await.0,
        404,
        "no client owns it: the server's fallback"
    );

    // A download on the files route, held part-way while the api route changes.
    let mut download = TcpStream::connect(edge).await.unwrap();
    download.write_all(b"GET /big HTTP/1.1\r\nHost: files.example.test\r\n\r\n").await.unwrap();
    let mut received = vec![0u8; 1 << 20];
    download.read_exact(&mut received).await.unwrap();

    let (toml, _, _, version) = rendered(&objects(&served, &ports, true), Some((hash, 1)));
    assert_eq!(version, 2, "a changed configuration counts up");
    swap(&config_dir, &config, 2, &rebased(&toml, dir.path()));
    connector.line_after("route ready: v2 http api.example.test/v2").await;
    assert_eq!(curl(edge, "api.example.test", "/v2/users").await, (200, "canary /v2/users".to_owned()));
    assert_eq!(curl(edge, "api.example.test", "/users").await, (200, "api /users".to_owned()));

    let head = received.windows(4).position(|w| w == b"\r\n\r\n").expect("the response head") + 4;
    let mut rest = vec![0u8; DOWNLOAD - (received.len() - head)];
    tokio::time::timeout(PATIENCE, download.read_exact(&mut rest))
        .await
        .expect("the download goes on")
        .expect("the download was cut by the reload");
    received.extend(rest);
    let body = &received[head..];
    let expected: Vec<u8> = (0..DOWNLOAD).map(download_byte).collect();
    assert_eq!(Sha256::digest(body), Sha256::digest(&expected));
}
