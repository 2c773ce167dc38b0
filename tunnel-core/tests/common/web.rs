//! HTTP helpers: a server with its HTTP edge, and requests to it over real sockets.
//! Included by the tests that need it (`#[path = "common/web.rs"] mod web;`): it needs hyper,
//! which not every crate including `common` has.

#![allow(dead_code)]

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::common::{start_server, TestServer, PATIENCE};

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
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let runner = server.server.clone();
    tokio::spawn(async move { runner.run_http(listener, std::future::pending()).await });
    Edge { server, http }
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
