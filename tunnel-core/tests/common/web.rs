//! HTTP helpers: a server with its HTTP edge, and requests to it over real sockets.
//! Included by the tests that need it (`#[path = "common/web.rs"] mod web;`): it needs hyper,
//! which not every crate including `common` has.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{serve_target, start_server, TestServer, PATIENCE};

/// A server that lets shared-token clients serve `*.test` hosts, with its HTTP edge.
pub struct Edge {
    pub server: TestServer,
    pub http: SocketAddr,
}

pub async fn edge(configure: impl FnOnce(&mut tunnel_core::server::ServerConfig)) -> Edge {
    let server = start_server(|config| {
        config.policy.allow_hosts = vec!["*.test".parse().unwrap(), "*.*.test".parse().unwrap()];
        configure(config);
    })
    .await;
    let http = serve_http(&server).await;
    Edge { server, http }
}

/// Serves `server`'s HTTP edge on a new listener on loopback; its address.
pub async fn serve_http(server: &TestServer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let runner = server.server.clone();
    tokio::spawn(async move { runner.run_http(listener, std::future::pending()).await });
    http
}

/// Serves `server`'s HTTPS edge (its `http.tls` set) on a new listener on loopback; its address.
pub async fn serve_https(server: &TestServer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = listener.local_addr().unwrap();
    let runner = server.server.clone();
    tokio::spawn(async move { runner.run_https(listener, std::future::pending()).await });
    https
}

pub fn with_http(
    mut config: tunnel_core::client::ClientConfig,
    routes: &[String],
) -> tunnel_core::client::ClientConfig {
    config.http = routes.iter().map(|r| r.parse().unwrap()).collect();
    config
}

/// One request on a new connection: status and body.
pub async fn get(edge: SocketAddr, host: &str, path: &str) -> (StatusCode, String) {
    let mut sender = connection(edge).await;
    send(&mut sender, host, path, "").await
}

pub async fn connection(edge: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(edge).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    sender
}

pub async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: &str,
    path: &str,
    body: &str,
) -> (StatusCode, String) {
    let method = if body.is_empty() { "GET" } else { "POST" };
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    sender.ready().await.unwrap();
    let response =
        tokio::time::timeout(PATIENCE, sender.send_request(request)).await.expect("no answer").unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// An HTTP origin answering `TAG METHOD PATH host=HOST xff=XFF proto=PROTO mark=X-MARK
/// route=TUNNEL-ROUTE` then the request body; a request asking for a WebSocket upgrade is switched and echoed byte for byte; a
/// request for `/slow` waits 2 s.
pub async fn origin(tag: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = hyper::service::service_fn(move |request| answer(tag, request));
            tokio::spawn(async move {
                // Above the edge's 100 fields plus what the edge adds: what reaches the origin
                // is seen, never a 431 of its own.
                let _ = hyper::server::conn::http1::Builder::new()
                    .max_headers(200)
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

pub async fn answer(
    tag: &'static str,
    mut request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let header =
        |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
    if request.headers().contains_key(http::header::UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, "websocket")
            .body(Full::default())
            .unwrap());
    }
    if request.uri().path() == "/headers" {
        // Every field as it reached the origin, one `name: value` a line, in order.
        let mut all = String::new();
        for (name, value) in request.headers() {
            all.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
        }
        return Ok(Response::new(Full::new(Bytes::from(all))));
    }
    if request.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut line = format!(
        "{tag} {} {} host={} xff={} proto={} mark={} route={} ",
        request.method(),
        request.uri().path(),
        header("host"),
        header("x-forwarded-for"),
        header("x-forwarded-proto"),
        header("x-mark"),
        header(tunnel_core::proto::ROUTE_HEADER),
    );
    // Each `Cookie` field as it came, when there is one.
    let cookies: Vec<_> =
        request.headers().get_all("cookie").iter().map(|v| v.to_str().unwrap_or("?")).collect();
    if !cookies.is_empty() {
        line.push_str(&format!("cookie={} ", cookies.join(" | ")));
    }
    let body = request.into_body().collect().await?.to_bytes();
    let mut out = line.into_bytes();
    out.extend_from_slice(&body);
    Ok(Response::new(Full::new(Bytes::from(out))))
}

/// A WebSocket upgrade of a new connection to `host`'s route at `/ws`: the socket, once the
/// edge has answered `101 Switching Protocols` (asserted), every byte of that answer read.
pub async fn websocket(edge: SocketAddr, host: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(edge).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    // Byte by byte: nothing past the answer's head is taken from the socket.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tokio::time::timeout(PATIENCE, tcp.read(&mut byte)).await.unwrap().unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    tcp
}

/// One raw HTTP/1.1 request (`head` without its final blank line) on a new connection; the
/// whole answer as text.
pub async fn raw_request(edge: SocketAddr, head: &str) -> String {
    let mut tcp = TcpStream::connect(edge).await.unwrap();
    tcp.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer)).await.expect("no answer").unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// An origin answering as [`origin`] does, but holding each request for `/held...` until
/// `release` is notified, and telling `arrivals` when one is in.
pub async fn gated_origin(
    tag: &'static str,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>, Arc<tokio::sync::Notify>) {
    let (arrived, arrivals) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let addr = serve_target(move |tcp| {
        let (arrived, gate) = (arrived.clone(), gate.clone());
        let service = hyper::service::service_fn(move |request| {
            let (arrived, gate) = (arrived.clone(), gate.clone());
            async move {
                if request.uri().path().starts_with("/held") {
                    let _ = arrived.send(());
                    gate.notified().await;
                }
                answer(tag, request).await
            }
        });
        async move {
            let _ =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        }
    })
    .await;
    (addr, arrivals, release)
}

/// A self-signed certificate for `names`, as PEM files in `dir`; returns the identity and the
/// certificate's DER, to trust it.
pub fn certificate(
    dir: &std::path::Path,
    tag: &str,
    names: &[&str],
) -> (tunnel_core::tls::ServerIdentity, Vec<u8>) {
    let generated =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let (cert, key) = (dir.join(format!("{tag}.pem")), dir.join(format!("{tag}.key")));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (tunnel_core::tls::ServerIdentity::from_pem_files(&cert, &key).unwrap(), generated.cert.der().to_vec())
}

/// A TLS connection to `addr` asking for `name`, trusting only `trusted`, offering `alpn`.
pub async fn tls_to(
    addr: SocketAddr,
    name: &str,
    trusted: &[u8],
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(trusted.to_vec())).unwrap();
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}
