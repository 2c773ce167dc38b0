//! A self-hosted reverse tunnel as a library.
//!
//! A client behind NAT dials a public server over one TLS connection, both sides prove a shared
//! or per-client token, and the connection is multiplexed with yamux: a control stream for
//! messages, one data stream per visitor connection.
//!
//! # Layout
//! Bottom up; each layer uses only those listed before it (`tests/layers.rs` checks the
//! imports).
//! - [`log`]: escaping of peer-controlled text, error chains, and rate-limited log lines.
//! - [`metrics`]: Prometheus counters and gauges, and the `/metrics`, `/ready` and `/healthz`
//!   endpoints.
//! - Internal: `fs` (the state directory's private files, opened only if no one else could
//!   have written them, and bounded reads of regular files), `task` (spawning tracked tasks), `time`
//!   (deadlines from configured durations, which never overflow), and `source` (a visitor's source, an
//!   IPv4 address or an IPv6 /64; places capped in all and per source, and admission that
//!   evicts from the largest site (an IPv4 address or IPv6 /48) when full, for handshakes, the edge's visitors and the
//!   admin API).
//! - [`shards`]: threads of single-threaded runtimes, each carrying whole connections and
//!   their streams (opt-in, for the server and the client).
//! - [`auth`]: tokens, credentials and the HMAC challenge/response proofs (pure crypto; a token
//!   file is read through `fs`).
//! - [`proto`]: wire format (frames, handshake, control messages, stream headers, targets), pure
//!   and sans-IO; it uses only `auth` and `log`.
//! - [`tls`]: rustls configurations, certificate generation, fingerprint pinning.
//! - [`transport`]: TCP with socket options, optionally wrapped in TLS or WebSocket, and the
//!   [`transport::Connector`] trait for connection types of one's own.
//! - [`mux`]: yamux behind a driver future, a stream opener and an inbound queue.
//! - [`session`]: handshake + mux + control stream + heartbeat = an authenticated session;
//!   `session::framed` reads and writes `proto`'s formats on a stream.
//! - [`forward`]: remote forward specs, the access rules for ports, targets and visits, and the
//!   bidirectional copy with half-close.
//! - [`socks`]: the SOCKS5 server side (greeting, password, request) over any byte stream.
//! - [`udp`]: UDP flows as streams of framed datagrams: the listening end's flow table and the
//!   dialing end's relay.
//! - [`http`]: HTTP host/path routing in Gateway API order, the server's edge and the client's
//!   origin side (per request, WebSocket upgrades, pooled origin connections, and streams of a
//!   route carried to its origin as they are with `forward`'s copy).
//! - [`acme`]: certificates from an ACME authority for the names the HTTPS edge terminates,
//!   renewed while running, and the answers to its challenges.
//! - [`server`], [`client`]: orchestration (listeners, registry, reconnect with backoff); the
//!   server's authorization rules are a [`server::Policy`] of their own. Neither uses the other.
//! - [`config`]: TOML file types as plain data (serialize, parse, a pure `validate()`), built into
//!   [`server`] and [`client`] configurations by a separate step that reads files and
//!   provisions the state directory.
//! - [`admin`]: the admin API over a running server (sessions, routes, client credentials
//!   created, rotated and revoked while running) and its client; it uses `server` and `config`.
//!
//! # Example
//!
//! A server and a client in one program. The client publishes a TCP route whose visitors are
//! answered by code in the program ([`forward::StreamHandler`]), so nothing listens locally;
//! an HTTP route can be served the same way by a hyper service ([`http::HttpHandler`]), and a
//! session can run over a connection type of the program's own ([`transport::Connector`]).
//! More in the repository's `examples/`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tunnel_core::auth::{Credentials, Token};
//! use tunnel_core::client::{Client, ClientConfig};
//! use tunnel_core::forward::{RemoteForwardSpec, StreamHandler, Visitor};
//! use tunnel_core::server::{Server, ServerConfig};
//! use tunnel_core::tls::{client_config, server_config, ServerIdentity, ServerTrust};
//! use tunnel_core::transport::ClientTransport;
//!
//! // The server: a certificate made in memory, one shared token, visitors on loopback.
//! let identity = ServerIdentity::generate(&[])?;
//! let fingerprint = identity.fingerprint();
//! let token = Token::generate();
//! let mut config = ServerConfig::new(Credentials::default().with_shared(token.clone()), Some(server_config(identity)?));
//! config.policy.default_bind = "127.0.0.1".parse()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?.to_string();
//! let server = Server::new(config);
//! tokio::spawn(async move { server.run(listener, std::future::pending()).await });
//!
//! // The client: pins the server's certificate; the server picks the public port.
//! let transport = ClientTransport::tls(client_config(&ServerTrust::Pinned(fingerprint))?, &addr)?;
//! let mut config = ClientConfig::new(addr, "example", token, transport);
//! let hello = StreamHandler::new("hello", |mut visitor: Visitor| async move {
//!     let _ = visitor.write_all(format!("hello {}\n", visitor.peer()).as_bytes()).await;
//! });
//! config.remotes.push(RemoteForwardSpec::new(0, hello));
//! let client = Client::new(config);
//! let mut status = client.status();
//! tokio::spawn(client.run(std::future::pending()));
//! let public = status.wait_for(|s| s.forwards().is_some()).await?.forwards().ok_or("not connected")?[0].public_addr;
//!
//! // A visitor.
//! let mut visitor = tokio::net::TcpStream::connect(public).await?;
//! let mut greeting = String::new();
//! visitor.read_to_string(&mut greeting).await?;
//! assert_eq!(greeting, format!("hello {}\n", visitor.local_addr()?));
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acme;
pub mod admin;
pub mod auth;
pub mod client;
pub mod config;
pub mod forward;
pub mod http;
pub mod log;
pub mod metrics;
pub mod mux;
pub mod proto;
pub mod server;
pub mod session;
pub mod shards;
pub mod socks;
pub mod tls;
pub mod transport;
pub mod udp;

mod fs;
mod source;
mod task;
mod time;
