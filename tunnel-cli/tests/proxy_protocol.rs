//! PROXY protocol toward targets (`remote = [{ spec = ..., proxy_protocol = "v1" | "v2" }]`),
//! as a user runs it: nginx behind the tunnel with `listen ... proxy_protocol` logs each
//! visitor's own address and port, and the public address it reached, not the tunnel client's.

#[path = "../../tunnel-core/tests/common/mod.rs"]
mod common;
#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use process::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const TOKEN: &str = "proxy-protocol-test-token-2f81";

/// An nginx that takes the PROXY protocol on two ports and logs, per request, what the header
/// said and the address it then trusts as the client's.
struct Nginx {
    ports: [u16; 2],
    log: PathBuf,
    _process: tokio::process::Child,
}

/// Starts nginx and returns once it accepts connections on both ports. Ports chosen free may
/// be taken by another test before nginx binds them: nginx then exits, and is started again on
/// other ports.
async fn start_nginx(dir: &Path) -> Nginx {
    let root = dir.join("nginx");
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    let log = root.join("access.log");
    for _ in 0..3 {
        let [a, b] = free_ports();
        let mut process = spawn_nginx(&root, &log, [a, b]);
        if until_listening(&mut process, [a, b]).await {
            return Nginx { ports: [a, b], log, _process: process };
        }
    }
    let errors = std::fs::read_to_string(root.join("error.log")).unwrap_or_default();
    panic!("nginx did not start on three pairs of free ports: {errors}");
}

fn spawn_nginx(root: &Path, log: &Path, [a, b]: [u16; 2]) -> tokio::process::Child {
    let conf = format!(
        "daemon off;\nmaster_process off;\nerror_log {dir}/error.log warn;\npid {dir}/nginx.pid;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  client_body_temp_path {dir}/tmp;\n  proxy_temp_path {dir}/tmp;\n  \
         fastcgi_temp_path {dir}/tmp;\n  uwsgi_temp_path {dir}/tmp;\n  scgi_temp_path {dir}/tmp;\n  \
         log_format seen '$proxy_protocol_addr:$proxy_protocol_port \
         $proxy_protocol_server_addr:$proxy_protocol_server_port $remote_addr';\n  \
         access_log {log} seen;\n  set_real_ip_from 127.0.0.1;\n  real_ip_header proxy_protocol;\n  \
         server {{ listen 127.0.0.1:{a} proxy_protocol; listen 127.0.0.1:{b} proxy_protocol; \
         location / {{ return 200 \"ok\\n\"; }} }}\n}}\n",
        dir = root.display(),
        log = log.display(),
    );
    let conf_path = root.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    tokio::process::Command::new("nginx")
        .args(["-p", root.to_str().unwrap(), "-c", conf_path.to_str().unwrap()])
        .kill_on_drop(true)
        .spawn()
        .expect("nginx is installed")
}

/// Waits until `nginx` accepts connections on both `ports` (true), or has exited (false).
async fn until_listening(nginx: &mut tokio::process::Child, ports: [u16; 2]) -> bool {
    // A visitor arriving before nginx listens would be refused by the target: not what is tested.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for port in ports {
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if nginx.try_wait().unwrap().is_some() {
                return false;
            }
            assert!(tokio::time::Instant::now() < deadline, "nginx never listened on {port}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    true
}

/// `GET /` from 127.0.0.2 (so the visitor's address differs from the tunnel client's
/// 127.0.0.1) to `public`; the visitor's own address.
async fn visit_from_another_address(public: SocketAddr) -> SocketAddr {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut tcp = socket.connect(public).await.unwrap();
    let visitor = tcp.local_addr().unwrap();
    tcp.write_all(b"GET / HTTP/1.0\r\nHost: app\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"), "{answer}");
    visitor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_behind_the_tunnel_logs_each_visitors_own_address_in_v1_and_v2() {
    let dir = tempfile::tempdir().unwrap();
    let nginx = start_nginx(dir.path()).await;
    let server = serve(dir.path(), &["--token", TOKEN], &[]).await;
    let config = dir.path().join("client.toml");
    let [v1, v2] = nginx.ports;
    std::fs::write(
        &config,
        format!(
            "remote = [\n  {{ spec = \"0:127.0.0.1:{v1}\", proxy_protocol = \"v1\" }},\n  \
             {{ spec = \"0:127.0.0.1:{v2}\", proxy_protocol = \"v2\" }},\n]\n"
        ),
    )
    .unwrap();
    let client = connect(
        &server,
        &["--token", TOKEN, "--name", "behind-nginx", "--config", config.to_str().unwrap()],
        &[],
    );
    let ready = client.lines_after("remote forward ready: ", 2).await;
    let public_of = |target: u16| -> SocketAddr {
        let wanted = format!("127.0.0.1:{target}");
        let to =
            |l: &&String| l.split(" -> ").nth(1).and_then(|t| t.split_whitespace().next()) == Some(&wanted);
        let line = ready.iter().find(to).expect("each forward is ready");
        line.split(" -> ").next().unwrap().parse().unwrap()
    };

    let mut expected = Vec::new();
    for target in [v1, v2] {
        let public = public_of(target);
        let visitor = visit_from_another_address(public).await;
        // What the header said (visitor, the public address it reached), and the address nginx
        // then takes as the client's: the visitor's, not the tunnel client's 127.0.0.1.
        expected.push(format!("{visitor} {public} {}", visitor.ip()));
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let logged = loop {
        let text = std::fs::read_to_string(&nginx.log).unwrap_or_default();
        if text.lines().count() >= 2 || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(logged.lines().collect::<Vec<_>>(), expected, "{}", client.output());
}

#[tokio::test]
async fn an_unknown_proxy_protocol_version_is_a_config_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("client.toml");
    std::fs::write(
        &config,
        "server = \"127.0.0.1:1\"\ntoken = \"x\"\nremote = [{ spec = \"0:127.0.0.1:80\", proxy_protocol = \"v3\" }]\n",
    )
    .unwrap();
    let out = command(&["connect", "--config", config.to_str().unwrap()]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown variant `v3`, expected `v1` or `v2`"), "{stderr}");
}

/// Connects from 127.0.0.2 to `to` and sends `bytes`; the connection and its own address.
async fn send_from_another_address(to: SocketAddr, bytes: &[u8]) -> (tokio::net::TcpStream, SocketAddr) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut tcp = socket.connect(to).await.unwrap();
    let from = tcp.local_addr().unwrap();
    tcp.write_all(bytes).await.unwrap();
    (tcp, from)
}

/// A TLS ClientHello asking for `name`, as a visitor's first bytes.
fn client_hello(name: &str) -> Vec<u8> {
    use tokio_rustls::rustls;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    hello
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_comes_first_byte_for_byte_on_forwards_and_tls_routes_and_a_visitors_own_is_data() {
    use tunnel_core::forward::ProxyProtocol;
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["edge.test".to_owned()]).unwrap().self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("edge.pem"), dir.path().join("edge.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let server_config = dir.path().join("server.toml");
    std::fs::write(
        &server_config,
        format!(
            "https_listen = \"127.0.0.1:0\"\nallow_hosts = [\"*.test\"]\n[[certificates]]\ncert = {cert_path:?}\nkey = {key_path:?}\n"
        ),
    )
    .unwrap();
    let server =
        serve(dir.path(), &["--token", TOKEN, "--config", server_config.to_str().unwrap()], &[]).await;
    let edge: SocketAddr = server.cli.line_after("HTTPS and TLS routes served on ").await.parse().unwrap();

    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw = target.local_addr().unwrap();
    let client_config = dir.path().join("client.toml");
    std::fs::write(
        &client_config,
        format!(
            "remote = [{{ spec = \"0:{raw}\", proxy_protocol = \"v2\" }}]\n\
             tls = [{{ spec = \"p.test={raw}\", proxy_protocol = \"v1\" }}]\n"
        ),
    )
    .unwrap();
    let args = ["--token", TOKEN, "--name", "raw", "--config", client_config.to_str().unwrap()];
    let client = connect(&server, &args, &[]);
    let public: SocketAddr =
        client.line_after("remote forward ready: ").await.split(" -> ").next().unwrap().parse().unwrap();
    client.line_after("route ready: v1 tls ").await;

    // A forward, v2: the header, exactly, then the visitor's bytes, its own PROXY line among them.
    let forged = b"PROXY TCP4 6.6.6.6 6.6.6.6 1 2\r\nhello";
    let (_visitor, from) = send_from_another_address(public, forged).await;
    let (mut at_target, _) = target.accept().await.unwrap();
    let header = ProxyProtocol::V2.header(from, Some(public)).unwrap();
    let mut got = vec![0u8; header.len() + forged.len()];
    at_target.read_exact(&mut got).await.unwrap();
    assert_eq!(got[..header.len()], header[..], "the v2 header for {from} -> {public}");
    assert_eq!(&got[header.len()..], forged, "the visitor's own bytes follow, untouched");

    // A TLS route, v1: the line, then the ClientHello as the visitor sent it.
    let hello = client_hello("p.test");
    let (_visitor, from) = send_from_another_address(edge, &hello).await;
    let (mut at_target, _) = target.accept().await.unwrap();
    let line = format!("PROXY TCP4 {} {} {} {}\r\n", from.ip(), edge.ip(), from.port(), edge.port());
    let mut got = vec![0u8; line.len() + hello.len()];
    at_target.read_exact(&mut got).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&got[..line.len()]), line);
    assert!(got[line.len()..] == hello[..], "the ClientHello follows the line");
}
