//! A self-hosted reverse tunnel as a library.
//!
//! A client behind NAT dials a public server over one TLS connection, both sides prove a shared
//! or per-client token, and the connection is multiplexed with yamux: a control stream for
//! messages, one data stream per visitor connection.
//!
//! # Layout
//! - [`proto`]: wire format (frames, handshake, control messages, stream headers), pure and sans-IO.
//! - [`auth`]: tokens, credentials and the HMAC challenge/response proofs.
//! - [`tls`]: rustls configurations, certificate generation, fingerprint pinning.
//! - [`transport`]: TCP with socket options, optionally wrapped in TLS.
//! - [`mux`]: yamux behind a driver future, a stream opener and an inbound queue.
//! - [`session`]: handshake + mux + control stream + heartbeat = an authenticated session.
//! - [`forward`]: remote forward specs and the bidirectional copy with half-close.
//! - [`server`], [`client`]: orchestration (listeners, registry, reconnect with backoff).
//! - [`config`]: TOML file types validated into runtime configs, shared by the CLI and embedders.
//! - [`log`]: escaping of peer-controlled text before it is logged, and rate-limited log lines.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod client;
pub mod config;
pub mod forward;
pub mod log;
pub mod mux;
pub mod proto;
pub mod server;
pub mod session;
pub mod tls;
pub mod transport;

mod fs;
mod task;
