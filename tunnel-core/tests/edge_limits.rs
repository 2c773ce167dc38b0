//! The HTTP edge holds at most so many streams toward one client session (and a TLS
//! passthrough source at most so many of those): visitors that start requests and never let
//! them end cannot take every stream the client's forwards and routes need.

mod common;
#[path = "common/web.rs"]
mod web;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use web::*;

/// An origin that answers `/hold` only once `release` turns true, counting in `held` the
/// requests it holds, and anything else at once.
async fn holding_origin(held: Arc<AtomicUsize>, release: watch::Receiver<bool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (held, release) = (held.clone(), release.clone());
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (held, mut release) = (held.clone(), release.clone());
                async move {
                    if request.uri().path() == "/hold" {
                        held.fetch_add(1, Ordering::SeqCst);
                        let _ = release.wait_for(|go| *go).await;
                    }
                    Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(b"answered"))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    addr
}

/// A connection to the edge from loopback address `127.0.0.N`.
async fn connection_from(edge: SocketAddr, n: u8) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)), 0)).unwrap();
    let tcp = socket.connect(edge).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// Starts a request for `/hold` from `127.0.0.N`; its status once answered.
fn hold_from(edge: SocketAddr, n: u8) -> tokio::task::JoinHandle<StatusCode> {
    tokio::spawn(async move {
        let mut sender = connection_from(edge, n).await;
        send(&mut sender, "hold.test", "/hold", "").await.0
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_held_in_flight_are_capped_per_session() {
    let edge = edge(|config| {
        config.max_visitors_per_forward = 3;
        config.max_visitors_per_source = 2;
    })
    .await;
    let (held, (release, released)) = (Arc::new(AtomicUsize::new(0)), watch::channel(false));
    let origin = holding_origin(held.clone(), released).await;
    let mut client =
        start_client(with_http(edge.server.client_config("a", &[]), &[format!("hold.test=http://{origin}")]));
    client.connected().await;
    let in_flight = |n: usize| {
        let held = held.clone();
        async move {
            eventually(&format!("{n} requests held"), || std::future::ready(held.load(Ordering::SeqCst) == n))
                .await
        }
    };
    let ask_from = |n: u8| async move {
        let mut sender = connection_from(edge.http, n).await;
        send(&mut sender, "hold.test", "/", "").await
    };

    // Requests from one address are not capped apart (a NAT, a proxy, a CDN): three held from
    // one source fill the session, and a fourth from anywhere is refused.
    let mut holding = vec![hold_from(edge.http, 1), hold_from(edge.http, 1)];
    in_flight(2).await;
    assert_eq!(ask_from(2).await, (StatusCode::OK, "answered".to_owned()), "a place is left");
    holding.push(hold_from(edge.http, 1));
    in_flight(3).await;
    for n in [1, 2] {
        let (status, body) = ask_from(n).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "from 127.0.0.{n}: {body}");
        assert!(body.contains("too many requests in flight"), "{body}");
    }

    // Answered, they give their places back.
    release.send(true).unwrap();
    for request in holding {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    for n in 1..=3 {
        assert_eq!(ask_from(n).await, (StatusCode::OK, "answered".to_owned()), "from 127.0.0.{n}");
    }
    client.stop().await;
    edge.server.stop().await;
}

/// A TLS ClientHello for `name` from loopback address `127.0.0.N`, to an origin that never
/// answers: the connection is held open until the edge or the test drops it. `Err` when the
/// edge refused it.
async fn hello_from(https: SocketAddr, n: u8, name: &str) -> std::io::Result<()> {
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)), 0))?;
    let tcp = socket.connect(https).await?;
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_visitors_share_the_caps() {
    let dir = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["edge.test".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("edge.pem"), dir.path().join("edge.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let identity = tunnel_core::tls::ServerIdentity::from_pem_files(&cert, &key).unwrap();
    let tls = tunnel_core::tls::edge_config(vec![identity.clone()], identity).unwrap();
    let server = start_server(|config| {
        config.policy.allow_hosts = vec!["*.test".parse().unwrap()];
        config.http.tls = Some(tls);
        config.max_visitors_per_forward = 3;
        config.max_visitors_per_source = 2;
    })
    .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = listener.local_addr().unwrap();
    let runner = server.server.clone();
    tokio::spawn(async move { runner.run_https(listener, std::future::pending()).await });

    // An origin that takes connections and says nothing, so each visitor stays in flight.
    let origin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = origin.local_addr().unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let counted = reached.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = origin.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(tcp);
        }
    });
    let mut config = server.client_config("p", &[]);
    config.tls = vec![format!("p.test={origin_addr}").parse().unwrap()];
    let mut client = start_client(config);
    client.connected().await;
    let reached_origin = |n: usize| {
        let reached = reached.clone();
        async move {
            eventually(&format!("{n} visitors at the origin"), || {
                std::future::ready(reached.load(Ordering::SeqCst) == n)
            })
            .await
        }
    };

    let mut held =
        vec![tokio::spawn(hello_from(https, 1, "p.test")), tokio::spawn(hello_from(https, 1, "p.test"))];
    reached_origin(2).await;
    // A third from the same source is reset; one from another source is carried.
    let refused = tokio::time::timeout(PATIENCE, hello_from(https, 1, "p.test")).await.expect("not refused");
    assert!(refused.is_err(), "a third passthrough visitor from one source was carried");
    held.push(tokio::spawn(hello_from(https, 2, "p.test")));
    reached_origin(3).await;
    // The session's places are all taken: a new source is refused too.
    let refused = tokio::time::timeout(PATIENCE, hello_from(https, 3, "p.test")).await.expect("not refused");
    assert!(refused.is_err(), "a passthrough visitor past the session's cap was carried");
    assert_eq!(reached.load(Ordering::SeqCst), 3);

    for visitor in held {
        visitor.abort();
    }
    client.stop().await;
    server.stop().await;
}
