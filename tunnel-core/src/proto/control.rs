//! Messages on the control stream, one per frame: a type byte, then fields.
//!
//! Type ranges are reserved by capability so later versions can add messages without
//! renumbering: `0x0_` session, `0x1_` remote forwards, `0x2_` local forwards and private
//! services, `0x3_` route tables, `0x4_` UDP. A peer sends only types of the negotiated version;
//! anything else is a protocol error that ends that session. Decoders ignore trailing bytes so a
//! later version may append fields to an existing message.

use std::net::{IpAddr, SocketAddr};

use super::route::{self, RouteEntry, RouteResult};
use super::wire::{Reader, Writer};
use super::{validate_name, DecodeError, MAX_NAME_LEN, MAX_REASON_LEN};

const PING: u8 = 0x01;
const PONG: u8 = 0x02;
const GOODBYE: u8 = 0x03;
const DRAINING: u8 = 0x04;
const NO_NEW_VISITORS: u8 = 0x05;
const LANES: u8 = 0x06;
const REMOTE_FORWARD_REQUEST: u8 = 0x10;
const REMOTE_FORWARD_READY: u8 = 0x11;
const REMOTE_FORWARD_REFUSED: u8 = 0x12;
const EXPOSE_REQUEST: u8 = 0x20;
const EXPOSE_READY: u8 = 0x21;
const EXPOSE_REFUSED: u8 = 0x22;
const ROUTE_TABLE: u8 = 0x30;
const ROUTE_TABLE_RESULT: u8 = 0x31;

/// A message on the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlMessage {
    /// Heartbeat probe; the peer answers with [`ControlMessage::Pong`] carrying the same nonce.
    Ping {
        /// Echoed back, to match the answer and measure the round trip.
        nonce: u64,
    },
    /// Answer to a [`ControlMessage::Ping`].
    Pong {
        /// The nonce of the ping answered.
        nonce: u64,
    },
    /// The sender is closing the session on purpose; the reason tells the peer whether to retry.
    Goodbye {
        /// Machine-readable reason.
        code: GoodbyeCode,
        /// Human-readable detail.
        message: String,
    },
    /// (Version 3.) The sender is draining: it takes no new visitors or sessions, lets the
    /// streams open now finish, then says [`ControlMessage::Goodbye`]. A client moves new work
    /// to another server; a server stops sending this client new visitors.
    Draining {
        /// Milliseconds the sender gives open streams at most, from when it sent this.
        deadline_ms: u32,
        /// Human-readable detail.
        message: String,
    },
    /// (Version 6.) Server answer to a client's [`ControlMessage::Draining`]: from now on the
    /// server opens no new stream to this session (its visitors go to the client's other
    /// replicas, or are refused); once the streams open now are done, the server ends the
    /// session with [`ControlMessage::Goodbye`]. The client may now close its idle streams.
    NoNewVisitors,
    /// (Version 7.) Server to client, once a session is up: more connections may join this
    /// session, each with a hello naming `session` and a proof under the session's lane key
    /// (see [`crate::auth::LaneKey`]); the session may have `connections` in all.
    Lanes {
        /// The session's id, for joining hellos.
        session: u64,
        /// Most connections the session may have, its first included.
        connections: u8,
    },
    /// Client asks the server to listen on a public port and send visitors back as streams.
    RemoteForwardRequest {
        /// Client-chosen id, unique within the session; echoed in the answer and stream headers.
        id: u32,
        /// Address to bind on the server; `None` means the server's default.
        bind: Option<IpAddr>,
        /// Port to bind; 0 lets the server choose.
        port: u16,
        /// With `port` 0: a port to try first (the one held before a reconnect); 0 for none.
        preferred_port: u16,
    },
    /// Server answer: the forward is listening.
    RemoteForwardReady {
        /// Id from the request.
        id: u32,
        /// Address the server bound.
        public_addr: SocketAddr,
    },
    /// Server answer: the forward was refused.
    RemoteForwardRefused {
        /// Id from the request.
        id: u32,
        /// Why.
        code: RefusalCode,
        /// Human-readable detail.
        message: String,
    },
    /// Client offers a private service, reachable only through the tunnel as `CLIENT/NAME`.
    ExposeRequest {
        /// Service name (same rules as client names).
        name: String,
    },
    /// Server answer: the service is registered.
    ExposeReady {
        /// Service name from the request.
        name: String,
    },
    /// Server answer: the service was refused.
    ExposeRefused {
        /// Service name from the request.
        name: String,
        /// Why.
        code: RefusalCode,
        /// Human-readable detail.
        message: String,
    },
    /// Client's whole route table (since version 2), sent at connect and after every change;
    /// it replaces the previous one entry by entry.
    RouteTable {
        /// Increases with every table the client sends in a session.
        version: u64,
        /// Every route, each once.
        entries: Vec<RouteEntry>,
    },
    /// Server answer to a [`ControlMessage::RouteTable`], one result per entry.
    RouteTableResult {
        /// Version of the table answered.
        version: u64,
        /// Accepted or refused, per entry.
        results: Vec<RouteResult>,
    },
}

/// Why a forward was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalCode {
    /// The port is outside what this client's credential may bind.
    PortNotAllowed,
    /// The port is held (or reserved) by another client, or in use on the server host.
    PortTaken,
    /// The client already holds as many forwards as its limit allows.
    TooManyForwards,
    /// The request was malformed (duplicate id, bad address).
    Invalid,
    /// This client may not expose a service under that name.
    NameNotAllowed,
    /// The client asked for a bind address its credential may not use.
    AddressNotAllowed,
    /// The client already exposes as many services as its limit allows.
    TooManyServices,
    /// This client may not serve that host (`allow_hosts`).
    HostNotAllowed,
    /// Another client serves that host.
    HostTaken,
    /// This client may not route that network (`allow_networks`).
    NetworkNotAllowed,
    /// Another client routes an overlapping network.
    NetworkTaken,
    /// A code from a newer peer.
    Other(u8),
}

/// Why a session is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GoodbyeCode {
    /// Normal close (the process is stopping); a client may reconnect later.
    Shutdown,
    /// A newer session with the same client name replaced this one; do not reconnect.
    Replaced,
    /// The peer broke the protocol.
    ProtocolError,
    /// The server holds as many sessions as its limits allow; try again later.
    ServerFull,
    /// The server no longer accepts the token this session authenticated with (a reload
    /// removed or changed it); reconnecting with it fails.
    Revoked,
    /// A code from a newer peer.
    Other(u8),
}

macro_rules! wire_enum {
    ($ty:ident { $($variant:ident = $value:literal),* $(,)? }) => {
        impl $ty {
            pub(super) fn to_u8(self) -> u8 {
                match self { $($ty::$variant => $value,)* $ty::Other(v) => v }
            }
            pub(super) fn from_u8(v: u8) -> Self {
                match v { $($value => $ty::$variant,)* other => $ty::Other(other) }
            }
        }
    };
}

wire_enum!(RefusalCode { PortNotAllowed = 1, PortTaken = 2, TooManyForwards = 3, Invalid = 4, NameNotAllowed = 5, AddressNotAllowed = 6, TooManyServices = 7, HostNotAllowed = 8, HostTaken = 9, NetworkNotAllowed = 10, NetworkTaken = 11 });
wire_enum!(GoodbyeCode { Shutdown = 1, Replaced = 2, ProtocolError = 3, ServerFull = 4, Revoked = 5 });

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PortNotAllowed => f.write_str("port not allowed"),
            Self::PortTaken => f.write_str("port taken"),
            Self::TooManyForwards => f.write_str("too many forwards"),
            Self::Invalid => f.write_str("invalid request"),
            Self::NameNotAllowed => f.write_str("name not allowed"),
            Self::AddressNotAllowed => f.write_str("address not allowed"),
            Self::TooManyServices => f.write_str("too many services"),
            Self::HostNotAllowed => f.write_str("host not allowed"),
            Self::HostTaken => f.write_str("host taken"),
            Self::NetworkNotAllowed => f.write_str("network not allowed"),
            Self::NetworkTaken => f.write_str("network taken"),
            Self::Other(v) => write!(f, "refusal code {v}"),
        }
    }
}

impl std::fmt::Display for GoodbyeCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Shutdown => f.write_str("shutdown"),
            Self::Replaced => f.write_str("replaced by a newer session"),
            Self::ProtocolError => f.write_str("protocol error"),
            Self::ServerFull => f.write_str("server full"),
            Self::Revoked => f.write_str("credential revoked"),
            Self::Other(v) => write!(f, "goodbye code {v}"),
        }
    }
}

impl ControlMessage {
    /// Encodes the message body (without the frame length prefix).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Self::Ping { nonce } => w.u8(PING).u64(*nonce),
            Self::Pong { nonce } => w.u8(PONG).u64(*nonce),
            Self::Goodbye { code, message } => w.u8(GOODBYE).u8(code.to_u8()).string(message, MAX_REASON_LEN),
            Self::Draining { deadline_ms, message } => {
                w.u8(DRAINING).u32(*deadline_ms).string(message, MAX_REASON_LEN)
            }
            Self::NoNewVisitors => w.u8(NO_NEW_VISITORS),
            Self::Lanes { session, connections } => w.u8(LANES).u64(*session).u8(*connections),
            Self::RemoteForwardRequest { id, bind, port, preferred_port } => {
                w.u8(REMOTE_FORWARD_REQUEST).u32(*id).opt_ip(*bind).u16(*port).u16(*preferred_port)
            }
            Self::RemoteForwardReady { id, public_addr } => {
                w.u8(REMOTE_FORWARD_READY).u32(*id).socket_addr(*public_addr)
            }
            Self::RemoteForwardRefused { id, code, message } => {
                w.u8(REMOTE_FORWARD_REFUSED).u32(*id).u8(code.to_u8()).string(message, MAX_REASON_LEN)
            }
            Self::ExposeRequest { name } => w.u8(EXPOSE_REQUEST).string(name, MAX_NAME_LEN),
            Self::ExposeReady { name } => w.u8(EXPOSE_READY).string(name, MAX_NAME_LEN),
            Self::ExposeRefused { name, code, message } => w
                .u8(EXPOSE_REFUSED)
                .string(name, MAX_NAME_LEN)
                .u8(code.to_u8())
                .string(message, MAX_REASON_LEN),
            Self::RouteTable { version, entries } => {
                w.u8(ROUTE_TABLE).u64(*version);
                route::encode_entries(&mut w, entries);
                &mut w
            }
            Self::RouteTableResult { version, results } => {
                w.u8(ROUTE_TABLE_RESULT).u64(*version);
                route::encode_results(&mut w, results);
                &mut w
            }
        };
        w.finish()
    }

    /// Decodes a message body received from a peer.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let msg = match r.u8("type")? {
            PING => Self::Ping { nonce: r.u64("nonce")? },
            PONG => Self::Pong { nonce: r.u64("nonce")? },
            GOODBYE => Self::Goodbye {
                code: GoodbyeCode::from_u8(r.u8("code")?),
                message: r.string(MAX_REASON_LEN, "message")?,
            },
            DRAINING => Self::Draining {
                deadline_ms: r.u32("deadline_ms")?,
                message: r.string(MAX_REASON_LEN, "message")?,
            },
            NO_NEW_VISITORS => Self::NoNewVisitors,
            LANES => Self::Lanes { session: r.u64("session")?, connections: r.u8("connections")? },
            REMOTE_FORWARD_REQUEST => Self::RemoteForwardRequest {
                id: r.u32("id")?,
                bind: r.opt_ip("bind")?,
                port: r.u16("port")?,
                preferred_port: r.u16("preferred_port")?,
            },
            REMOTE_FORWARD_READY => {
                Self::RemoteForwardReady { id: r.u32("id")?, public_addr: r.socket_addr("public_addr")? }
            }
            REMOTE_FORWARD_REFUSED => Self::RemoteForwardRefused {
                id: r.u32("id")?,
                code: RefusalCode::from_u8(r.u8("code")?),
                message: r.string(MAX_REASON_LEN, "message")?,
            },
            EXPOSE_REQUEST => Self::ExposeRequest { name: service_name(&mut r)? },
            EXPOSE_READY => Self::ExposeReady { name: service_name(&mut r)? },
            EXPOSE_REFUSED => Self::ExposeRefused {
                name: service_name(&mut r)?,
                code: RefusalCode::from_u8(r.u8("code")?),
                message: r.string(MAX_REASON_LEN, "message")?,
            },
            ROUTE_TABLE => {
                Self::RouteTable { version: r.u64("version")?, entries: route::decode_entries(&mut r)? }
            }
            ROUTE_TABLE_RESULT => {
                Self::RouteTableResult { version: r.u64("version")?, results: route::decode_results(&mut r)? }
            }
            other => return Err(DecodeError::UnknownType { kind: "control message", value: other }),
        };
        Ok(msg)
    }
}

fn service_name(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let name = r.string(MAX_NAME_LEN, "name")?;
    validate_name(&name)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{RouteId, RouteKind, RouteOutcome};

    fn samples() -> Vec<ControlMessage> {
        vec![
            ControlMessage::Ping { nonce: 7 },
            ControlMessage::Pong { nonce: u64::MAX },
            ControlMessage::Goodbye { code: GoodbyeCode::Replaced, message: "bye".into() },
            ControlMessage::NoNewVisitors,
            ControlMessage::Lanes { session: u64::MAX - 7, connections: 4 },
            ControlMessage::RemoteForwardRequest {
                id: 3,
                bind: Some("::1".parse().unwrap()),
                port: 0,
                preferred_port: 41000,
            },
            ControlMessage::RemoteForwardRequest { id: 4, bind: None, port: 6443, preferred_port: 0 },
            ControlMessage::RemoteForwardReady { id: 3, public_addr: "0.0.0.0:41000".parse().unwrap() },
            ControlMessage::RemoteForwardRefused {
                id: 4,
                code: RefusalCode::Other(200),
                message: "no".into(),
            },
            ControlMessage::ExposeRequest { name: "kubelet".into() },
            ControlMessage::ExposeReady { name: "kubelet".into() },
            ControlMessage::ExposeRefused {
                name: "kubelet".into(),
                code: RefusalCode::NameNotAllowed,
                message: "no".into(),
            },
            ControlMessage::RouteTable { version: 0, entries: vec![] },
            ControlMessage::RouteTable {
                version: 9,
                entries: vec![
                    RouteEntry {
                        id: RouteId(1),
                        kind: RouteKind::Tcp {
                            bind: Some("::1".parse().unwrap()),
                            port: 0,
                            preferred_port: 40000,
                        },
                    },
                    RouteEntry { id: RouteId(u64::MAX), kind: RouteKind::Service { name: "kubelet".into() } },
                    RouteEntry {
                        id: RouteId(2),
                        kind: RouteKind::Network { net: "10.96.0.0/12".parse().unwrap() },
                    },
                    RouteEntry {
                        id: RouteId(3),
                        kind: RouteKind::Network { net: "fd00::/8".parse().unwrap() },
                    },
                    RouteEntry {
                        id: RouteId(4),
                        kind: RouteKind::Udp { bind: None, port: 53, preferred_port: 0, idle_secs: 60 },
                    },
                ],
            },
            ControlMessage::RouteTableResult {
                version: 9,
                results: vec![
                    RouteResult {
                        id: RouteId(1),
                        outcome: RouteOutcome::Ready { public_addr: Some("0.0.0.0:40000".parse().unwrap()) },
                    },
                    RouteResult { id: RouteId(2), outcome: RouteOutcome::Ready { public_addr: None } },
                    RouteResult {
                        id: RouteId(3),
                        outcome: RouteOutcome::Refused {
                            code: RefusalCode::PortTaken,
                            message: "taken".into(),
                        },
                    },
                ],
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for msg in samples() {
            assert_eq!(ControlMessage::decode(&msg.encode()).unwrap(), msg);
        }
    }

    #[test]
    fn every_strict_prefix_is_rejected() {
        for msg in samples() {
            let bytes = msg.encode();
            for cut in 0..bytes.len() {
                assert!(ControlMessage::decode(&bytes[..cut]).is_err(), "{msg:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn appended_fields_from_a_newer_peer_are_ignored() {
        let msg = ControlMessage::Ping { nonce: 1 };
        let mut bytes = msg.encode();
        bytes.extend_from_slice(b"future field");
        assert_eq!(ControlMessage::decode(&bytes).unwrap(), msg);
    }

    #[test]
    fn a_table_announcing_more_entries_than_it_holds_is_refused_before_allocating() {
        let mut bytes = vec![ROUTE_TABLE];
        bytes.extend_from_slice(&7u64.to_be_bytes());
        bytes.extend_from_slice(&1000u16.to_be_bytes());
        assert_eq!(ControlMessage::decode(&bytes).unwrap_err(), DecodeError::Truncated { field: "routes" });
        bytes.truncate(9);
        bytes.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(ControlMessage::decode(&bytes).unwrap_err(), DecodeError::TooLong { .. }));
    }

    #[test]
    fn unknown_type_is_an_error_naming_it() {
        let err = ControlMessage::decode(&[0x7f]).unwrap_err();
        assert_eq!(err, DecodeError::UnknownType { kind: "control message", value: 0x7f });
    }
}
