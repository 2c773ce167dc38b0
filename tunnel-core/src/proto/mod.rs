//! Wire format: frames, handshake messages, control messages and data-stream headers (and the
//! PROXY protocol header a client writes to a target).
//!
//! Everything here is a pure function over bytes or a sans-IO state machine; `session::framed`
//! reads and writes these formats on a stream. Beneath it sits only [`crate::auth`] (pure
//! crypto, for the handshake proofs). Every decoder checks sizes before allocating and returns
//! a [`DecodeError`] naming the offending field; none of them panics on any input.
//! The format is specified in `docs/protocol.md`.

pub mod control;
pub mod datagram;
pub mod frame;
pub mod handshake;
pub mod header;
pub mod http;
pub mod net;
mod proxy_header;
pub mod route;
pub mod target;
pub(crate) mod wire;

pub use control::{ControlMessage, GoodbyeCode, RefusalCode};
pub use frame::FrameTooLarge;
pub use header::{ReplyStatus, StreamHeader, StreamReply, ROUTE_HEADER};
pub use http::{HostPattern, HttpMatch, PathMatch};
pub use net::{IpNet, NetError};
pub use proxy_header::ProxyProtocol;
pub use route::{RouteEntry, RouteId, RouteKind, RouteOutcome, RouteResult, TABLE_OVERHEAD};
pub use target::{SpecError, TargetAddr, VisitTarget};

/// Protocol version this build speaks (sent in the hello, negotiated down to the peer's).
/// Version 2 added route tables, version 3 the `Draining` notice, version 4 network routes,
/// version 5 UDP, version 6 the server's answer to a client's drain, version 7 sessions over
/// several connections, version 8 a stream of HTTP requests per route, version 9 a control
/// stream that moves to another connection of its session; a server still serves version 1 to
/// 8 clients.
pub const PROTOCOL_VERSION: u16 = 9;

/// First protocol version with [`ControlMessage::Draining`].
pub const DRAINING_VERSION: u16 = 3;

/// First protocol version with [`RouteKind::Network`] routes and network visits.
pub const NETWORK_VERSION: u16 = 4;

/// First protocol version with [`RouteKind::Udp`] routes and UDP flows.
pub const UDP_VERSION: u16 = 5;

/// First protocol version with [`ControlMessage::NoNewVisitors`]: a client's drain ends when
/// the server ends the session, never while the server may still send it a visitor.
pub const HANDOVER_VERSION: u16 = 6;

/// First protocol version with [`ControlMessage::Lanes`] and joining hellos: one session over
/// several connections.
pub const LANES_VERSION: u16 = 7;

/// First protocol version with [`StreamHeader::HttpRoute`] streams.
pub const ROUTE_STREAMS_VERSION: u16 = 8;

/// First protocol version with [`StreamHeader::Control`]: a session whose control stream's
/// connection is lost goes on over its other connections, the client opening its control
/// stream again on one of them.
pub const CONTROL_MOVES_VERSION: u16 = 9;

/// Most connections one session may have (its first included).
pub const MAX_CONNECTIONS: usize = 16;

/// Oldest protocol version this build accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Longest client name accepted on the wire and in config.
pub const MAX_NAME_LEN: usize = 64;

/// Longest human-readable reason carried in a refusal or goodbye.
pub const MAX_REASON_LEN: usize = 512;

/// Why bytes from a peer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended inside the named field.
    #[error("truncated message: `{field}` is incomplete")]
    Truncated {
        /// Field being read.
        field: &'static str,
    },
    /// A length field exceeds its cap.
    #[error("`{field}` is {len} bytes, more than the {max} allowed")]
    TooLong {
        /// Field being read.
        field: &'static str,
        /// Length announced by the peer.
        len: usize,
        /// Largest length accepted.
        max: usize,
    },
    /// A string field is not UTF-8.
    #[error("`{field}` is not valid UTF-8")]
    InvalidUtf8 {
        /// Field being read.
        field: &'static str,
    },
    /// A field holds a value this version does not define.
    #[error("`{field}` has an invalid value {value}")]
    InvalidValue {
        /// Field being read.
        field: &'static str,
        /// Value received.
        value: u64,
    },
    /// The message type is not one this version knows.
    #[error("unknown {kind} type {value:#04x}")]
    UnknownType {
        /// Which message family (handshake, control, stream header).
        kind: &'static str,
        /// Type byte received.
        value: u8,
    },
    /// The handshake magic bytes are wrong: the peer does not speak this protocol.
    #[error("not a tunnel peer (bad magic bytes)")]
    BadMagic,
    /// A client name is empty, too long, or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid client name: {0}")]
    InvalidName(String),
}

/// Checks a client name: 1 to [`MAX_NAME_LEN`] characters from `[A-Za-z0-9._-]`.
///
/// ```
/// assert!(tunnel_core::proto::validate_name("worker-1").is_ok());
/// assert!(tunnel_core::proto::validate_name("../etc").is_err());
/// ```
pub fn validate_name(name: &str) -> Result<(), DecodeError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(ok_char) || name.starts_with('.') {
        return Err(DecodeError::InvalidName(format!(
            "{name:?}: use 1 to {MAX_NAME_LEN} characters from A-Z a-z 0-9 . _ - (not starting with '.')"
        )));
    }
    Ok(())
}
