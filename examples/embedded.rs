//! Embedding tunnel-core: a server and a client in one program, publishing a local echo service.
//!
//! Run with `cargo run -p tunnel-core --example embedded`. Everything binds 127.0.0.1 with
//! OS-chosen ports; the program prints what it does and exits.

use std::error::Error;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tunnel_core::auth::{Credentials, Token};
use tunnel_core::client::{Client, ClientConfig};
use tunnel_core::server::{Server, ServerConfig};
use tunnel_core::tls::{client_config, server_config, ServerIdentity, ServerTrust};
use tunnel_core::transport::ClientTransport;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // A local service to publish: echoes what it receives.
    let service = TcpListener::bind("127.0.0.1:0").await?;
    let service_addr = service.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = service.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });

    // The server: a certificate generated into a temporary state directory, one shared token.
    let state = std::env::temp_dir().join(format!("tunnel-embedded-{}", std::process::id()));
    let identity = ServerIdentity::load_or_generate(&state, &[])?;
    let fingerprint = identity.fingerprint();
    let token = Token::generate();
    let mut server_cfg =
        ServerConfig::new(Credentials::default().with_shared(token.clone()), Some(server_config(identity)?));
    server_cfg.policy.default_bind = "127.0.0.1".parse()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let server_addr = listener.local_addr()?;
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        Server::new(server_cfg).run(listener, async { server_stopped.await.unwrap_or(()) }).await
    });
    println!("server on {server_addr}, certificate {fingerprint}");

    // The client: pins the server's fingerprint and asks for any free public port.
    let tls = client_config(&ServerTrust::Pinned(fingerprint))?;
    let transport = ClientTransport::tls(tls, &server_addr.to_string())?;
    let mut client_cfg = ClientConfig::new(server_addr.to_string(), "embedded", token, transport);
    client_cfg.remotes.push(format!("0:{service_addr}").parse()?);
    let client = Client::new(client_cfg);
    let mut status = client.status();
    let (stop_client, client_stopped) = tokio::sync::oneshot::channel::<()>();
    let client = tokio::spawn(client.run(async { client_stopped.await.unwrap_or(()) }));

    let public =
        status.wait_for(|s| s.forwards().is_some()).await?.forwards().ok_or("not connected")?[0].public_addr;
    println!("{service_addr} is published at {public}");

    // A visitor reaches the service through the tunnel.
    let mut visitor = TcpStream::connect(public).await?;
    visitor.write_all(b"hello through the tunnel").await?;
    visitor.shutdown().await?;
    let mut reply = String::new();
    visitor.read_to_string(&mut reply).await?;
    println!("echoed: {reply}");

    let _ = stop_client.send(());
    client.await??;
    let _ = stop_server.send(());
    server.await??;
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}
