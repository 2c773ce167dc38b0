//! A session over a connection type of the program's own: here a Unix socket, with the shipped
//! TLS connector on top, so the handshake's proofs are bound to that TLS session as they would
//! be over TCP. The server side takes the connections the program accepts and secures itself.
//!
//! Run with `cargo run -p tunnel-core --example custom_transport`. It publishes a TCP route
//! (answered by an in-program echo) through a tunnel over the socket, visits it, and exits.

use std::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tunnel_core::auth::{ChannelBinding, Credentials, Token};
use tunnel_core::client::{Client, ClientConfig};
use tunnel_core::forward::{RemoteForwardSpec, StreamHandler, Visitor};
use tunnel_core::server::{Server, ServerConfig};
use tunnel_core::tls::{client_config, server_config, ServerIdentity, ServerTrust};
use tunnel_core::transport::{
    accept_tls, ClientTransport, ConnectError, Connection, Connector, TlsConnector,
};

/// Dials the server's Unix socket.
struct UnixConnector(PathBuf);

impl Connector for UnixConnector {
    fn connect(&self) -> BoxFuture<'_, Result<Connection, ConnectError>> {
        Box::pin(async move {
            let stream = UnixStream::connect(&self.0)
                .await
                .map_err(|source| ConnectError::Unreachable { peer: self.0.display().to_string(), source })?;
            // No channel secret of its own: the TLS connector around it supplies the binding.
            Ok(Connection { io: Box::new(stream), binding: ChannelBinding::Plaintext })
        })
    }
}

async fn echo(mut visitor: Visitor) {
    let (mut from, mut to) = tokio::io::split(&mut visitor);
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.shutdown().await;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("tunnel-custom-transport-{}", std::process::id()));
    let identity = ServerIdentity::load_or_generate(&dir, &[])?;
    let fingerprint = identity.fingerprint();
    let tls = server_config(identity)?;
    let token = Token::generate();
    let mut server_cfg =
        ServerConfig::new(Credentials::default().with_shared(token.clone()), Some(tls.clone()));
    server_cfg.policy.default_bind = "127.0.0.1".parse()?;
    let server = Server::new(server_cfg);

    // The server's side: accept on the socket, complete TLS (bounded, one task per connection
    // so a slow client holds up no one), and hand each secured connection to the server.
    let socket = dir.join("tunnel.sock");
    let listener = UnixListener::bind(&socket)?;
    let (secured, mut incoming) = tokio::sync::mpsc::channel::<(Connection, SocketAddr)>(16);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (tls, secured) = (tls.clone(), secured.clone());
            tokio::spawn(async move {
                if let Ok(Ok(connection)) =
                    tokio::time::timeout(Duration::from_secs(10), accept_tls(tls, stream)).await
                {
                    // A Unix socket has no IP peer; the server logs and limits by this one.
                    let _ = secured.send((connection, SocketAddr::from(([127, 0, 0, 1], 0)))).await;
                }
            });
        }
    });
    let connections = futures::stream::poll_fn(move |cx| incoming.poll_recv(cx));
    let stop = CancellationToken::new();
    let served = tokio::spawn({
        let (server, stop) = (server.clone(), stop.clone());
        async move { server.run_connected(connections, stop.cancelled_owned()).await }
    });

    // The client's side: TLS, pinned to the server's certificate, over the Unix socket.
    let pinned = client_config(&ServerTrust::Pinned(fingerprint))?;
    let connector = TlsConnector::new(UnixConnector(socket.clone()), pinned, "tunnel.local".try_into()?);
    let transport = ClientTransport::custom(connector);
    let mut client_cfg = ClientConfig::new(socket.display().to_string(), "over-unix", token, transport);
    client_cfg.remotes.push(RemoteForwardSpec::new(0, StreamHandler::new("echo", echo)));
    let client = Client::new(client_cfg);
    let mut status = client.status();
    let stop_client = CancellationToken::new();
    let client = tokio::spawn(client.run(stop_client.clone().cancelled_owned()));
    let public =
        status.wait_for(|s| s.forwards().is_some()).await?.forwards().ok_or("not connected")?[0].public_addr;
    println!("tunnel over {}; TCP route on {public}", socket.display());

    let mut visitor = TcpStream::connect(public).await?;
    visitor.write_all(b"through a Unix socket").await?;
    visitor.shutdown().await?;
    let mut reply = String::new();
    visitor.read_to_string(&mut reply).await?;
    println!("echoed: {reply}");

    stop_client.cancel();
    client.await??;
    stop.cancel();
    served.await??;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
