//! A self-hosted reverse tunnel as a library.
//!
//! A client behind NAT dials a public server over one TLS connection, both sides prove a shared
//! or per-client token, and the connection is multiplexed with yamux: a control stream for
//! messages, one data stream per visitor connection.
//!
//! # Layout
//! - [`auth`]: tokens, credentials and the HMAC challenge/response proofs (pure crypto).
//! - [`proto`]: wire format (frames, handshake, control messages, stream headers, targets), pure
//!   and sans-IO; it uses only `auth`.
//! - [`tls`]: rustls configurations, certificate generation, fingerprint pinning.
//! - [`transport`]: TCP with socket options, optionally wrapped in TLS.
//! - [`mux`]: yamux behind a driver future, a stream opener and an inbound queue.
//! - [`session`]: handshake + mux + control stream + heartbeat = an authenticated session;
//!   `session::framed` reads and writes `proto`'s formats on a stream.
//! - [`forward`]: remote forward specs and the bidirectional copy with half-close.
//! - [`http`]: HTTP host/path routing in Gateway API order, the server's edge and the client's
//!   origin side (per request, WebSocket upgrades, pooled origin connections).
//! - [`server`], [`client`]: orchestration (listeners, registry, reconnect with backoff); the
//!   server's authorization rules are a [`server::Policy`] of their own.
//! - [`config`]: TOML file types as plain data (serialize, parse, a pure `validate()`), built into
//!   runtime configs by a separate step that reads files and provisions the state directory.
//! - [`log`]: escaping of peer-controlled text, error chains, and rate-limited log lines.
//!
//! Each layer uses only those listed before it (`tests/layers.rs` checks the imports).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod client;
pub mod config;
pub mod forward;
pub mod http;
pub mod log;
pub mod mux;
pub mod proto;
pub mod server;
pub mod session;
pub mod tls;
pub mod transport;

mod fs;
mod task;
