//! The handshake that runs on the raw (TLS) stream before the multiplexer starts, as sans-IO
//! state machines: they take frame payloads and return frames to send, and never touch a socket.
//!
//! ```text
//! client                                   server
//!   ClientHello {magic, versions, nonce_c, name}  ->
//!                <-  ServerChallenge {version, nonce_s}
//!   ClientProof {HMAC(token, "client" || T)}      ->      (verified in constant time)
//!                <-  ServerAccept {HMAC(token, "server" || T), heartbeat}  | Refuse {code, reason}
//! ```
//! `T` hashes the TLS exporter binding, the hello and the challenge. The client proves first so
//! that an anonymous prober never obtains a proof to attack offline; the server proves second, so
//! a client learns whether the server really holds the token before it trusts the session.
//!
//! From version 7 a session may have several connections. Each runs this whole handshake; a
//! connection that joins a session names it in its hello (`join`, the id the server announced
//! on the session's control stream) and sends its proof wrapped under the session's lane key,
//! which both ends derive from the token and the session's first transcript
//! ([`crate::auth::LaneKey`]).

mod client;
mod messages;
mod server;

pub use client::{ClientHandshake, ClientStep, Established, MAX_HEARTBEAT_INTERVAL, MIN_HEARTBEAT_INTERVAL};
pub use messages::{HandshakeMessage, RefuseCode, MAGIC, MAX_HANDSHAKE_FRAME};
pub use server::{AuthenticatedClient, LaneKeys, ServerHandshake, ServerStep};

use super::DecodeError;

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer sent bytes that do not decode.
    #[error("malformed handshake message: {0}")]
    Malformed(#[from] DecodeError),
    /// The peer sent a valid message at the wrong point.
    #[error("unexpected handshake message: expected {expected}, got {got}")]
    Unexpected {
        /// What this state waits for.
        expected: &'static str,
        /// What arrived.
        got: &'static str,
    },
    /// The server refused us.
    #[error("server refused the connection: {code}: {}", crate::log::Escaped(.message))]
    Refused {
        /// Machine-readable reason.
        code: RefuseCode,
        /// Server's explanation.
        message: String,
    },
    /// The client's proof did not verify (wrong token, or wrong name for a per-client token).
    #[error("authentication failed: client proof did not verify")]
    ClientProofInvalid,
    /// A connection asked to join a session this server does not have for its name (ended,
    /// full, or on another server).
    #[error("no session to join: {0}")]
    UnknownSession(&'static str),
    /// The server's proof did not verify: it does not hold our token.
    #[error("authentication failed: the server could not prove it knows the token")]
    ServerProofInvalid,
    /// No protocol version in common.
    #[error(
        "no common protocol version: peer speaks {peer_min}..={peer_max}, we speak {ours_min}..={ours_max}"
    )]
    UnsupportedVersion {
        /// Peer's oldest version.
        peer_min: u16,
        /// Peer's newest version.
        peer_max: u16,
        /// Our oldest version.
        ours_min: u16,
        /// Our newest version.
        ours_max: u16,
    },
    /// A message arrived after the handshake completed or failed.
    #[error("handshake already finished")]
    Finished,
}
