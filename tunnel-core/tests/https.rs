//! HTTPS at the edge, end to end in one process: the edge terminating TLS (HTTP/2 and HTTP/1.1
//! by ALPN), passing TLS through by name, and clients dialing HTTPS origins.

mod common;
#[path = "common/web.rs"]
mod web;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use web::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_terminates_http2_and_http1_passes_tls_through_by_name_and_answers_421_across_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (edge_identity, edge_cert) = certificate(dir.path(), "edge", &["a.test", "b.test"]);
    let (origin_identity, origin_cert) = certificate(dir.path(), "origin", &["p.test"]);
    let tls = tunnel_core::tls::edge_config(vec![edge_identity.clone()], edge_identity).unwrap();
    let server = start_server(|config| {
        config.policy.allow_hosts = vec!["*.test".parse().unwrap()];
        config.http.tls = Some(tls);
    })
    .await;
    let https = serve_https(&server).await;

    // An origin that terminates TLS itself, for the passthrough route.
    let origin_tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = origin_tls.local_addr().unwrap();
    let origin_config = tunnel_core::tls::edge_config(vec![], origin_identity).unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = origin_tls.accept().await {
            let acceptor = tokio_rustls::TlsAcceptor::from(origin_config.clone());
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"hello from the origin itself").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });

    let (a, b) = (origin("A").await, origin("B").await);
    // `/status` is answered by the client itself, which reads each request again.
    let routes_a = [format!("a.test=http://{a}"), "a.test/status=http_status:204".to_owned()];
    let mut config_a = with_http(server.client_config("a", &[]), &routes_a);
    config_a.tls = vec![format!("p.test={origin_addr}").parse().unwrap()];
    let mut client_a = start_client(config_a);
    let mut client_b =
        start_client(with_http(server.client_config("b", &[]), &[format!("b.test=http://{b}")]));
    client_a.connected().await;
    client_b.connected().await;

    // HTTP/2 by ALPN, with the edge's certificate.
    let tls = tls_to(https, "a.test", &edge_cert, &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request =
        |host: &str| Request::get(format!("https://{host}/h2")).body(Full::<Bytes>::default()).unwrap();
    let response = h2.send_request(request("a.test")).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.starts_with(b"A GET /h2 host=a.test xff=127.0.0.1 proto=https"), "{body:?}");
    // A field per cookie, as browsers send them over HTTP/2, reaches the origin as one field
    // and counts as one. Past 100 header fields an HTTP/2 request is answered 431 by the edge,
    // as an HTTP/1.1 one is; at 100 it reaches the origin, with the fields the edge adds.
    let mut cookies = request("a.test");
    for i in 0..120 {
        cookies.headers_mut().append("cookie", format!("c{i}={i}").parse().unwrap());
    }
    let response = h2.send_request(cookies).await.unwrap();
    let body =
        String::from_utf8_lossy(&response.into_body().collect().await.unwrap().to_bytes()).into_owned();
    assert!(body.contains(" cookie=c0=0; c1=1; c2=2;") && body.contains("; c119=119 "), "{body}");
    assert!(!body.contains(" | "), "{body}");
    let with_fields = |path: &str, n: usize| {
        let mut many = Request::get(format!("https://a.test{path}")).body(Full::<Bytes>::default()).unwrap();
        for i in 0..n {
            let name = format!("x-many-{i}").parse::<http::HeaderName>().unwrap();
            many.headers_mut().insert(name, "1".parse().unwrap());
        }
        many
    };
    let response = h2.send_request(with_fields("/h2", 100)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The client reading it again takes what the edge let through, with what the edge added.
    let response = h2.send_request(with_fields("/status", 100)).await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = h2.send_request(with_fields("/h2", 101)).await.unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("more than 100 header fields"), "{body:?}");
    // The same HTTP/2 connection for a host of another client: 421.
    let response = h2.send_request(request("b.test")).await.unwrap();
    assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);

    // HTTP/1.1 by ALPN.
    let tls = tls_to(https, "b.test", &edge_cert, &[b"http/1.1"]).await.unwrap();
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let (status, body) = send(&mut h1, "b.test", "/one", "").await;
    assert_eq!((status, body.starts_with("B GET /one")), (StatusCode::OK, true), "{body}");

    // Passthrough: the visitor's TLS ends at the origin, with the origin's certificate (the
    // edge's is not even trusted here).
    let mut tls = tls_to(https, "p.test", &origin_cert, &[]).await.expect("the origin's own certificate");
    let mut greeting = Vec::new();
    tokio::time::timeout(PATIENCE, tls.read_to_end(&mut greeting)).await.unwrap().unwrap();
    assert_eq!(greeting, b"hello from the origin itself");

    client_a.stop().await;
    client_b.stop().await;
    server.stop().await;
}

/// An HTTPS origin (answering like [`origin`]) with a fresh self-signed certificate for
/// 127.0.0.1, written as PEM into `dir`; returns its address and the certificate's path.
async fn https_origin(tag: &'static str, dir: &std::path::Path) -> (SocketAddr, std::path::PathBuf) {
    let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert_path = dir.join(format!("{tag}-origin.pem"));
    std::fs::write(&cert_path, generated.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![generated.cert.der().clone()], key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |request| answer(tag, request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, cert_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_origins_are_verified_against_the_origin_trust_and_refused_without_it() {
    let edge = edge(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let (secure, cert) = https_origin("S", dir.path()).await;

    // Trusting the origin's CA: the request arrives, over TLS, with the visitor's Host.
    let mut trusting = edge.server.client_config("trusting", &[]);
    trusting.http = vec![format!("good.test=https://{secure}").parse().unwrap()];
    trusting.origin_tls = Some(tunnel_core::tls::origin_config(Some(&cert)).unwrap());
    let mut trusting = start_client(trusting);
    trusting.connected().await;
    let (status, body) = get(edge.http, "good.test", "/over-tls").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("S GET /over-tls host=good.test xff=127.0.0.1 proto=http"), "{body}");
    // Nor does `OPTIONS *` turn the dial to port 443 of the origin's host.
    let answer = raw_request(edge.http, "OPTIONS * HTTP/1.1\r\nHost: good.test").await;
    let refused = "the request target must begin with /";
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains(refused), "{answer}");

    // Without it (the system's roots only), the self-signed origin is refused: 502, saying why.
    let mut wary = edge.server.client_config("wary", &[]);
    wary.http = vec![format!("bad.test=https://{secure}").parse().unwrap()];
    let mut wary = start_client(wary);
    wary.connected().await;
    let (status, body) = get(edge.http, "bad.test", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("its TLS certificate was not accepted"), "{body}");
    assert!(!body.contains(&secure.ip().to_string()), "{body}");
    trusting.stop().await;
    wary.stop().await;
    edge.server.stop().await;
}
