//! Certificates from an ACME authority, end to end: Pebble (the ACME test server) issues them
//! on loopback, its DNS test server resolving every name to 127.0.0.1; `serve` orders one for
//! the host of an accepted HTTP route, serves it on the HTTPS listener (curl verifies it
//! against Pebble's root), keeps it in the state directory, renews it before it expires, and
//! serves the stored one after a restart without a new order.

#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use std::os::unix::fs::PermissionsExt;

use rustls::pki_types::pem::PemObject;

use process::*;
use tokio::io::AsyncWriteExt;
use tokio_rustls::rustls;

const TOKEN: &str = "acme-test-token-5c2e9a";
const NAME: &str = "app.example.com";
/// Pebble's certificates live this long (seconds), so that a renewal (at two thirds) comes
/// within the test's patience.
const LIFETIME: u64 = 24;

/// A port free for both TCP and UDP on 127.0.0.1 right now (for the DNS server).
fn free_dns_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Pebble and its DNS server, with the CA that Pebble's own HTTPS certificate chains to.
struct Pebble {
    _dns: Cli,
    _pebble: Cli,
    directory: String,
    management: SocketAddr,
    /// The CA of Pebble's own HTTPS certificate (for `--acme-ca`).
    ca: PathBuf,
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`.
    async fn start(dir: &Path, http_port: u16, tls_port: u16) -> Self {
        let dns_port = free_dns_port();
        let dns_addr = format!("127.0.0.1:{dns_port}");
        let mut dns = tokio::process::Command::new("pebble-challtestsrv");
        dns.args(["-dns01", &dns_addr, "-http01", "", "-https01", "", "-tlsalpn01", ""]).args([
            "-management",
            &format!("127.0.0.1:{}", free_port()),
            "-defaultIPv6",
            "",
        ]);
        isolated(&mut dns);
        let dns = spawn(dns);
        dns.output_contains("Starting management server").await;

        // Pebble's HTTPS certificate, from a CA of the test's own.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (ca, cert_file, key_file) =
            (dir.join("pebble-ca.pem"), dir.join("pebble.pem"), dir.join("pebble.key"));
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();

        let [listen, management] = free_ports();
        let config = format!(
            r#"{{"pebble": {{"listenAddress": "127.0.0.1:{listen}", "managementListenAddress": "127.0.0.1:{management}",
                "certificate": "{}", "privateKey": "{}", "httpPort": {http_port}, "tlsPort": {tls_port},
                "ocspResponderURL": "", "externalAccountBindingRequired": false,
                "certificateValidityPeriod": {LIFETIME}}}}}"#,
            cert_file.display(),
            key_file.display()
        );
        let config_file = dir.join("pebble.json");
        std::fs::write(&config_file, config).unwrap();
        let mut pebble = tokio::process::Command::new("pebble");
        pebble.args(["-config", config_file.to_str().unwrap(), "-dnsserver", &dns_addr]);
        // No random pauses before validation, no nonces refused on purpose.
        pebble.env("PEBBLE_VA_NOSLEEP", "1").env("PEBBLE_WFE_NONCEREJECT", "0");
        isolated(&mut pebble);
        let pebble = spawn(pebble);
        pebble.output_contains(&format!("Listening on: 127.0.0.1:{listen}")).await;
        let directory = format!("https://127.0.0.1:{listen}/dir");
        Self { _dns: dns, _pebble: pebble, directory, management: ([127, 0, 0, 1], management).into(), ca }
    }

    /// The root Pebble issues under (it makes a new one at each start), saved to `path`.
    /// (Its management listener has a self-signed certificate of its own: loopback, not
    /// verified.)
    async fn root(&self, path: &Path) -> PathBuf {
        let url = format!("https://{}/roots/0", self.management);
        let root = tokio::process::Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "20", "--insecure", &url])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(root.status.success(), "Pebble's root: {}", String::from_utf8_lossy(&root.stderr));
        std::fs::write(path, &root.stdout).unwrap();
        path.to_owned()
    }
}

/// An origin answering every request with `hello from the origin`.
async fn origin() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await;
                let body = "hello from the origin";
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// `curl https://NAME:PORT/` through the HTTPS listener, verifying with `root` only: exit code
/// and body.
async fn curl_verified(https_port: u16, root: &Path) -> (i32, String) {
    let resolve = format!("{NAME}:{https_port}:127.0.0.1");
    let url = format!("https://{NAME}:{https_port}/");
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert", root.to_str().unwrap(), "--resolve", &resolve, &url])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

/// A TLS handshake with the HTTPS listener for `name`, offering `alpn`: the leaf certificate
/// presented (not verified: compared).
async fn handshake(https_port: u16, name: &str, alpn: &[&[u8]]) -> std::io::Result<Vec<u8>> {
    #[derive(Debug)]
    struct Anything;
    impl rustls::client::danger::ServerCertVerifier for Anything {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
        }
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Anything))
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", https_port)).await?;
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

/// The leaf certificate served for NAME to a browser-like handshake.
async fn served_leaf(https_port: u16) -> Vec<u8> {
    handshake(https_port, NAME, &[b"h2", b"http/1.1"]).await.expect("a handshake for NAME")
}

/// The one authority store under `STATE_DIR/acme` (named after Pebble's address).
fn store(state: &Path) -> PathBuf {
    let mut stores = std::fs::read_dir(state.join("acme")).unwrap().map(|e| e.unwrap().path());
    let store = stores.next().expect("an authority store");
    assert!(stores.next().is_none(), "one authority, one store");
    store
}

fn serve_args<'a>(pebble: &'a Pebble, ca: &'a str, http: Option<&'a str>, https: &'a str) -> Vec<&'a str> {
    let mut args = vec!["--token", TOKEN, "--allow-hosts", "*.example.com", "--https-listen", https];
    if let Some(http) = http {
        args.extend(["--http-listen", http]);
    }
    args.extend(["--acme-email", "ops@example.com", "--acme-directory", &pebble.directory, "--acme-ca", ca]);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issues_for_an_accepted_route_serves_renews_and_reloads_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let [http_port, https_port] = free_ports();
    let pebble = Pebble::start(dir.path(), http_port, https_port).await;
    let (http, https) = (format!("127.0.0.1:{http_port}"), format!("127.0.0.1:{https_port}"));
    let ca = pebble.ca.to_str().unwrap().to_owned();
    // A configured certificate for static.example.com: ACME leaves that name to it.
    let key = rcgen::KeyPair::generate().unwrap();
    let own = rcgen::CertificateParams::new(vec!["static.example.com".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (own_cert, own_key) = (dir.path().join("static.pem"), dir.path().join("static.key"));
    std::fs::write(&own_cert, own.pem()).unwrap();
    std::fs::write(&own_key, key.serialize_pem()).unwrap();
    let config = dir.path().join("server.toml");
    let entry = format!(
        "[[certificates]]\ncert = {:?}\nkey = {:?}\n",
        own_cert.to_str().unwrap(),
        own_key.to_str().unwrap()
    );
    std::fs::write(&config, entry).unwrap();
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend(serve_args(&pebble, &ca, Some(&http), &https));
    let mut server = serve(&state, &args, &[]).await;
    server.cli.output_contains("certificates for HTTP route hosts from https://127.0.0.1").await;
    let origin = origin().await;
    // Routes for NAME and static.example.com accepted; aaa.other.org refused (its host is not
    // allowed).
    let routes = [NAME, "static.example.com", "aaa.other.org"].map(|host| format!("{host}=http://{origin}"));
    let route_args = ["--name", "web", "--http", &routes[0], "--http", &routes[1], "--http", &routes[2]];
    let _client = connect(&server, &route_args, &[("TUNNEL_TOKEN", TOKEN)]);

    server.cli.output_contains("certificate issued").await;
    let root = pebble.root(&dir.path().join("root.pem")).await;
    let (code, body) = curl_verified(https_port, &root).await;
    assert_eq!((code, body.as_str()), (0, "hello from the origin"), "curl verifying with Pebble's root");
    let first = served_leaf(https_port).await;
    let store = store(&state);
    let key_mode = std::fs::metadata(store.join(format!("{NAME}.key"))).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600);
    // Challenge paths with no order waiting go to the routes like any other.
    let url = format!("http://{NAME}:{http_port}/.well-known/acme-challenge/not-a-token");
    let resolve = format!("{NAME}:{http_port}:127.0.0.1");
    let fetched = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--resolve", &resolve, &url])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&fetched.stdout), "hello from the origin");

    // Two thirds into its lifetime (within PATIENCE) the certificate is replaced, without a
    // restart.
    server.cli.output_contains("certificate renewed").await;
    let second = served_leaf(https_port).await;
    assert_ne!(first, second, "the renewed certificate is served");
    assert_eq!(curl_verified(https_port, &root).await.0, 0);
    // By now any name ACME wanted has been ordered: not the refused route's, nor the one a
    // configured certificate covers (still served).
    let output = server.cli.output();
    assert!(!output.contains("aaa.other.org") && !output.contains("name=static"), "{output}");
    let names: Vec<String> =
        std::fs::read_dir(&store).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), 3, "account.json and NAME's two files: {names:?}");
    assert_eq!(
        handshake(https_port, "static.example.com", &[b"http/1.1"]).await.unwrap(),
        own.der().to_vec()
    );

    // A restart serves the stored certificate: no new order.
    assert_eq!(server.cli.terminate().await, 0);
    let stored = std::fs::read(store.join(format!("{NAME}.crt"))).unwrap();
    let stored = rustls::pki_types::CertificateDer::pem_slice_iter(&stored).next().unwrap().unwrap().to_vec();
    let restarted = serve(&state, &args, &[]).await;
    restarted.cli.output_contains("certificate loaded").await;
    let client = connect(&restarted, &["--name", "web", "--http", &routes[0]], &[("TUNNEL_TOKEN", TOKEN)]);
    client.line_after("route ready: v1 http ").await;
    // The edge takes the stored certificate up as soon as ACME sees the route's name again
    // (unless, on a very slow machine, its renewal came first).
    let served = async {
        loop {
            if served_leaf(https_port).await == stored
                || restarted.cli.output().contains("certificate renewed")
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(PATIENCE, served)
        .await
        .expect("the stored certificate is served once the route is back");
    assert!(!restarted.cli.output().contains("certificate issued"), "{}", restarted.cli.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_is_answered_on_the_https_listener() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let https_port = free_port();
    let pebble = Pebble::start(dir.path(), free_port(), https_port).await;
    let https = format!("127.0.0.1:{https_port}");
    let ca = pebble.ca.to_str().unwrap().to_owned();
    // No HTTP listener: the challenge is tls-alpn-01.
    let server = serve(&state, &serve_args(&pebble, &ca, None, &https), &[]).await;
    server.cli.output_contains("(tls-alpn-01)").await;
    let origin = origin().await;
    let route = format!("{NAME}=http://{origin}");
    let _client = connect(&server, &["--name", "web", "--http", &route], &[("TUNNEL_TOKEN", TOKEN)]);
    server.cli.output_contains("certificate issued").await;
    let root = pebble.root(&dir.path().join("root.pem")).await;
    let (code, body) = curl_verified(https_port, &root).await;
    assert_eq!((code, body.as_str()), (0, "hello from the origin"), "curl verifying with Pebble's root");
    // A handshake asking for `acme-tls/1` with no order waiting gets no certificate at all.
    let probe = handshake(https_port, NAME, &[b"acme-tls/1"]).await;
    assert!(probe.is_err(), "a validation handshake with nothing to validate: {probe:?}");
}
