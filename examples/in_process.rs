//! Serving routes from inside the program: visitors of a TCP route go to a handler, requests of
//! an HTTP route to a hyper service. Neither opens a local port; the program is its own origin.
//!
//! Run with `cargo run -p tunnel-core --example in_process`. A server and its HTTP edge run in
//! the same program on 127.0.0.1 with OS-chosen ports; it visits both routes, prints what it
//! got, and exits.

use std::convert::Infallible;
use std::error::Error;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tunnel_core::auth::{Credentials, Token};
use tunnel_core::client::{Client, ClientConfig};
use tunnel_core::forward::{RemoteForwardSpec, StreamHandler, Visitor};
use tunnel_core::http::{HttpAction, HttpHandler, HttpRoute, Service};
use tunnel_core::proto::HttpMatch;
use tunnel_core::server::{Server, ServerConfig};
use tunnel_core::tls::{client_config, server_config, ServerIdentity, ServerTrust};
use tunnel_core::transport::ClientTransport;

/// The TCP route's handler: greets the visitor, then echoes what it sends, upper-cased.
async fn shout(mut visitor: Visitor) {
    let greeting = format!("hello {}\n", visitor.peer());
    let mut buf = [0u8; 1024];
    if visitor.write_all(greeting.as_bytes()).await.is_err() {
        return;
    }
    while let Ok(n @ 1..) = visitor.read(&mut buf).await {
        buf[..n].make_ascii_uppercase();
        if visitor.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = visitor.shutdown().await;
}

/// The HTTP route's service: says which path was asked for and for whom.
async fn hello(request: http::Request<Incoming>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let visitor = request.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or("?");
    let body = format!("{} {} from {visitor}\n", request.method(), request.uri().path());
    Ok(http::Response::new(Full::new(Bytes::from(body))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // The server, with an HTTP listener; a temporary state directory holds its certificate.
    let state = std::env::temp_dir().join(format!("tunnel-in-process-{}", std::process::id()));
    let identity = ServerIdentity::load_or_generate(&state, &[])?;
    let fingerprint = identity.fingerprint();
    let token = Token::generate();
    let mut server_cfg =
        ServerConfig::new(Credentials::default().with_shared(token.clone()), Some(server_config(identity)?));
    server_cfg.policy.default_bind = "127.0.0.1".parse()?;
    server_cfg.policy.allow_hosts = vec!["*.test".parse()?];
    let server = Server::new(server_cfg);
    let (control, http) = (TcpListener::bind("127.0.0.1:0").await?, TcpListener::bind("127.0.0.1:0").await?);
    let (server_addr, http_addr) = (control.local_addr()?, http.local_addr()?);
    let stop = CancellationToken::new();
    let tasks = [
        tokio::spawn({
            let (server, stop) = (server.clone(), stop.clone());
            async move { server.run(control, stop.cancelled_owned()).await }
        }),
        tokio::spawn({
            let (server, stop) = (server.clone(), stop.clone());
            async move { server.run_http(http, stop.cancelled_owned()).await }
        }),
    ];

    // The client: both routes are served by code in this program.
    let transport =
        ClientTransport::tls(client_config(&ServerTrust::Pinned(fingerprint))?, &server_addr.to_string())?;
    let mut client_cfg = ClientConfig::new(server_addr.to_string(), "in-process", token, transport);
    client_cfg.remotes.push(RemoteForwardSpec::new(0, StreamHandler::new("shout", shout)));
    let service = HttpHandler::new("hello", hyper::service::service_fn(hello));
    client_cfg.http.push(HttpRoute {
        matcher: HttpMatch::host("hello.test".parse()?),
        action: HttpAction::to(Service::Handler(service)),
    });
    let client = Client::new(client_cfg);
    let mut status = client.status();
    let stop_client = CancellationToken::new();
    let client = tokio::spawn(client.run(stop_client.clone().cancelled_owned()));
    let public =
        status.wait_for(|s| s.forwards().is_some()).await?.forwards().ok_or("not connected")?[0].public_addr;
    println!("TCP route on {public}, HTTP route hello.test on {http_addr}");

    // A TCP visitor.
    let mut visitor = TcpStream::connect(public).await?;
    visitor.write_all(b"quiet words").await?;
    visitor.shutdown().await?;
    let mut reply = String::new();
    visitor.read_to_string(&mut reply).await?;
    println!("TCP route answered: {}", reply.trim_end().replace('\n', " / "));

    // An HTTP visitor.
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(
        TcpStream::connect(http_addr).await?,
    ))
    .await?;
    tokio::spawn(connection);
    let request =
        http::Request::get("/greeting").header("host", "hello.test").body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    let status_code = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    print!("HTTP route answered {status_code}: {}", String::from_utf8_lossy(&body));

    stop_client.cancel();
    client.await??;
    stop.cancel();
    for task in tasks {
        task.await??;
    }
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}
