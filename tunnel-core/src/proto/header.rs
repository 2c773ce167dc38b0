//! The header that starts every data stream and names its route.
//!
//! Layout: a `u16` length, then a kind byte and its fields. The opener writes the header and
//! then the payload bytes without waiting for an answer, so a stream costs no extra round trip.
//! Kinds: 1 remote forward (version 1), 2 local forward, 3 service visit, 4 route (version 2:
//! a visitor of a route in the client's table), 6 HTTP requests (version 2: HTTP/1.1 requests
//! of one visitor connection, each naming its route), 7 network visit (version 4: a
//! connection into a network the receiving client routes), and with version 5 the UDP flows:
//! 5 local datagrams (a client's UDP local forward) and 8 network datagrams (a UDP flow into a
//! network the receiving client routes); 9 route requests (version 8: HTTP/1.1 requests all
//! for one HTTP route, with no route header, which the client may hand to the route's origin
//! as they are); 10 control (version 9: the session's control stream, opened again by the
//! client on another connection of its session once the one that carried it is lost; no
//! fields). A UDP flow's payload is datagrams framed by
//! [`super::datagram`]; a `Route` stream of a UDP route carries them too.
//! A local-forward stream is answered with a [`StreamReply`] before any payload flows back, and
//! so are local datagrams and network visits and datagrams (by the client that dialed).

use std::net::SocketAddr;

use super::route::RouteId;
use super::target::{TargetAddr, VisitTarget};
use super::wire::{Reader, Writer};
use super::{validate_name, DecodeError, MAX_NAME_LEN, MAX_REASON_LEN};

const REMOTE_FORWARD: u8 = 1;
const LOCAL_FORWARD: u8 = 2;
const SERVICE_VISIT: u8 = 3;
const ROUTE: u8 = 4;
const HTTP: u8 = 6;
const NETWORK_VISIT: u8 = 7;
const LOCAL_DATAGRAMS: u8 = 5;
const NETWORK_DATAGRAMS: u8 = 8;
const HTTP_ROUTE: u8 = 9;
const CONTROL: u8 = 10;

/// The request header naming a request's route on an [`StreamHeader::Http`] stream (set by the
/// server, replacing any a visitor sent).
pub const ROUTE_HEADER: &str = "tunnel-route";

const TARGET_SERVICE: u8 = 1;
const TARGET_ADDRESS: u8 = 2;

/// Longest host name in a target.
const MAX_HOST_LEN: usize = 255;

/// Largest header accepted; headers are tiny, so anything larger is hostile.
pub const MAX_HEADER_LEN: usize = 1024;

/// The route of one data stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamHeader {
    /// A visitor reached a remote forward's public port; the receiver connects it to its target.
    RemoteForward {
        /// Id the client gave the forward in its request.
        forward_id: u32,
        /// The visitor's address as the server saw it.
        visitor: SocketAddr,
    },
    /// A client's local forward: carry this stream to `target` (opened by the client).
    LocalForward {
        /// Where to.
        target: VisitTarget,
        /// The visitor's address as the client saw it.
        visitor: SocketAddr,
    },
    /// A visitor reached a route of the receiving client's table (opened by the server).
    Route {
        /// The route's id, as in the client's table.
        route_id: RouteId,
        /// The visitor's address as the server saw it.
        visitor: SocketAddr,
        /// The address the visitor reached (the server's side of its connection), for a PROXY
        /// protocol header toward the target; `None` from servers that do not send it.
        local: Option<SocketAddr>,
    },
    /// HTTP/1.1 requests of one visitor connection, one after the other, each naming its route
    /// in a [`ROUTE_HEADER`] header (opened by the server).
    Http {
        /// The visitor's address as the server saw it.
        visitor: SocketAddr,
    },
    /// HTTP/1.1 requests, one after the other, all for route `route_id` of the receiving
    /// client and carrying no [`ROUTE_HEADER`] (version 8; opened by the server). The receiver
    /// answers them with the route's action; when that action is one `http://` origin with
    /// nothing to change, it may carry the stream's bytes to a connection to that origin as
    /// they are.
    HttpRoute {
        /// The route's id, as in the client's table.
        route_id: RouteId,
        /// The visitor's address as the server saw it (of the stream's first request).
        visitor: SocketAddr,
    },
    /// A visit to one of the receiving client's private services (opened by the server).
    ServiceVisit {
        /// The service name the receiving client exposed.
        service: String,
        /// Name of the client the visit comes from.
        from: String,
        /// The visitor's address as that client saw it.
        visitor: SocketAddr,
    },
    /// A connection to `target`, in the network of route `route_id` of the receiving client
    /// (opened by the server). The receiver dials and answers with a [`StreamReply`] first.
    NetworkVisit {
        /// The network route's id, as in the client's table.
        route_id: RouteId,
        /// Where to connect; inside the route's network.
        target: SocketAddr,
        /// Name of the client the visit comes from.
        from: String,
        /// The visitor's address as that client saw it.
        visitor: SocketAddr,
    },
    /// A client's UDP local forward (version 5): one visitor's datagrams, to `target` (opened by
    /// the client, answered with a [`StreamReply`]).
    LocalDatagrams {
        /// Where to.
        target: TargetAddr,
        /// The visitor's address as the client saw it.
        visitor: SocketAddr,
    },
    /// One visitor's datagrams to `target`, in the network of route `route_id` of the receiving
    /// client (version 5; opened by the server, answered like [`StreamHeader::NetworkVisit`]).
    NetworkDatagrams {
        /// The network route's id, as in the client's table.
        route_id: RouteId,
        /// Where to send them; inside the route's network.
        target: SocketAddr,
        /// Name of the client the flow comes from.
        from: String,
        /// The visitor's address as that client saw it.
        visitor: SocketAddr,
    },
    /// The session's control stream, from here on (version 9; opened by the client on one of
    /// its session's joined connections when the connection that carried the control stream
    /// is lost). Control frames follow the header.
    Control,
}

impl StreamHeader {
    /// Encodes the header with its length prefix, ready to write on a fresh stream.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Writer::new();
        match self {
            Self::RemoteForward { forward_id, visitor } => {
                body.u8(REMOTE_FORWARD).u32(*forward_id).socket_addr(*visitor);
            }
            Self::LocalForward { target, visitor } => {
                body.u8(LOCAL_FORWARD);
                match target {
                    VisitTarget::Service { client, service } => {
                        body.u8(TARGET_SERVICE).string(client, MAX_NAME_LEN).string(service, MAX_NAME_LEN);
                    }
                    VisitTarget::Address(addr) => {
                        body.u8(TARGET_ADDRESS).string(&addr.host, MAX_HOST_LEN).u16(addr.port);
                    }
                }
                body.socket_addr(*visitor);
            }
            Self::LocalDatagrams { target, visitor } => {
                body.u8(LOCAL_DATAGRAMS)
                    .string(&target.host, MAX_HOST_LEN)
                    .u16(target.port)
                    .socket_addr(*visitor);
            }
            Self::Route { route_id, visitor, local } => {
                body.u8(ROUTE).u64(route_id.0).socket_addr(*visitor);
                if let Some(local) = local {
                    body.socket_addr(*local);
                }
            }
            Self::Http { visitor } => {
                body.u8(HTTP).socket_addr(*visitor);
            }
            Self::HttpRoute { route_id, visitor } => {
                body.u8(HTTP_ROUTE).u64(route_id.0).socket_addr(*visitor);
            }
            Self::ServiceVisit { service, from, visitor } => {
                body.u8(SERVICE_VISIT)
                    .string(service, MAX_NAME_LEN)
                    .string(from, MAX_NAME_LEN)
                    .socket_addr(*visitor);
            }
            Self::NetworkVisit { route_id, target, from, visitor }
            | Self::NetworkDatagrams { route_id, target, from, visitor } => {
                let kind =
                    if matches!(self, Self::NetworkVisit { .. }) { NETWORK_VISIT } else { NETWORK_DATAGRAMS };
                body.u8(kind)
                    .u64(route_id.0)
                    .socket_addr(*target)
                    .string(from, MAX_NAME_LEN)
                    .socket_addr(*visitor);
            }
            Self::Control => {
                body.u8(CONTROL);
            }
        }
        with_length(body.finish())
    }

    /// Decodes a header body (after the length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        match r.u8("kind")? {
            REMOTE_FORWARD => Ok(Self::RemoteForward {
                forward_id: r.u32("forward_id")?,
                visitor: r.socket_addr("visitor")?,
            }),
            LOCAL_FORWARD => {
                let target = match r.u8("target")? {
                    TARGET_SERVICE => VisitTarget::Service { client: name(&mut r)?, service: name(&mut r)? },
                    TARGET_ADDRESS => VisitTarget::Address(target_addr(&mut r)?),
                    other => {
                        return Err(DecodeError::InvalidValue { field: "target", value: u64::from(other) })
                    }
                };
                Ok(Self::LocalForward { target, visitor: r.socket_addr("visitor")? })
            }
            ROUTE => {
                let (route_id, visitor) = (RouteId(r.u64("route_id")?), r.socket_addr("visitor")?);
                // Appended later: absent from older servers.
                let local = if r.remaining() > 0 { Some(r.socket_addr("local")?) } else { None };
                Ok(Self::Route { route_id, visitor, local })
            }
            HTTP => Ok(Self::Http { visitor: r.socket_addr("visitor")? }),
            HTTP_ROUTE => Ok(Self::HttpRoute {
                route_id: RouteId(r.u64("route_id")?),
                visitor: r.socket_addr("visitor")?,
            }),
            SERVICE_VISIT => Ok(Self::ServiceVisit {
                service: name(&mut r)?,
                from: name(&mut r)?,
                visitor: r.socket_addr("visitor")?,
            }),
            LOCAL_DATAGRAMS => {
                Ok(Self::LocalDatagrams { target: target_addr(&mut r)?, visitor: r.socket_addr("visitor")? })
            }
            kind @ (NETWORK_VISIT | NETWORK_DATAGRAMS) => {
                let route_id = RouteId(r.u64("route_id")?);
                let target = r.socket_addr("target")?;
                let (from, visitor) = (name(&mut r)?, r.socket_addr("visitor")?);
                Ok(match kind {
                    NETWORK_VISIT => Self::NetworkVisit { route_id, target, from, visitor },
                    _ => Self::NetworkDatagrams { route_id, target, from, visitor },
                })
            }
            CONTROL => Ok(Self::Control),
            other => Err(DecodeError::UnknownType { kind: "stream header", value: other }),
        }
    }
}

/// Prefixes a header or reply body with its `u16` length (bodies are capped far below it).
fn with_length(body: Vec<u8>) -> Vec<u8> {
    let mut out = Writer::new();
    out.u16(u16::try_from(body.len()).unwrap_or(u16::MAX)).bytes(&body);
    out.finish()
}

/// A `HOST:PORT` target: its host checked as the text form would be.
fn target_addr(r: &mut Reader<'_>) -> Result<TargetAddr, DecodeError> {
    let host = r.string(MAX_HOST_LEN, "host")?;
    let port = r.u16("port")?;
    TargetAddr::from_parts(&host, port)
        .map_err(|_| DecodeError::InvalidValue { field: "target", value: u64::from(port) })
}

fn name(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let name = r.string(MAX_NAME_LEN, "name")?;
    validate_name(&name)?;
    Ok(name)
}

/// Checks a header or reply body's `u16` length prefix against [`MAX_HEADER_LEN`], before
/// anything is allocated for it.
pub fn body_len(prefix: u16, what: &'static str) -> Result<usize, DecodeError> {
    let len = usize::from(prefix);
    if len > MAX_HEADER_LEN {
        return Err(DecodeError::TooLong { field: what, len, max: MAX_HEADER_LEN });
    }
    Ok(len)
}

/// The server's answer on a local-forward stream, sent before any payload flows back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReply {
    /// Outcome.
    pub status: ReplyStatus,
    /// Why, when refused.
    pub message: String,
}

/// Outcome of a local-forward request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyStatus {
    /// Connected; payload follows.
    Ok,
    /// This client may not visit that target.
    Denied,
    /// The service's client is not connected, or exposes no such service.
    Unavailable,
    /// The target could not be reached (no route to it, a failed lookup).
    Unreachable,
    /// The target refused the connection (added with version 4; a peer of an older version
    /// reads it as [`ReplyStatus::Other`], a refusal all the same).
    Refused,
    /// The target did not answer in time (added with version 4, as `Refused`).
    TimedOut,
    /// A status from a newer peer.
    Other(u8),
}

impl ReplyStatus {
    fn to_u8(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Denied => 1,
            Self::Unavailable => 2,
            Self::Unreachable => 3,
            Self::Refused => 4,
            Self::TimedOut => 5,
            Self::Other(v) => v,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Ok,
            1 => Self::Denied,
            2 => Self::Unavailable,
            3 => Self::Unreachable,
            4 => Self::Refused,
            5 => Self::TimedOut,
            other => Self::Other(other),
        }
    }
}

impl std::fmt::Display for ReplyStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ok => f.write_str("ok"),
            Self::Denied => f.write_str("denied"),
            Self::Unavailable => f.write_str("unavailable"),
            Self::Unreachable => f.write_str("unreachable"),
            Self::Refused => f.write_str("connection refused"),
            Self::TimedOut => f.write_str("timed out"),
            Self::Other(v) => write!(f, "status {v}"),
        }
    }
}

impl StreamReply {
    /// A success reply.
    pub fn ok() -> Self {
        Self { status: ReplyStatus::Ok, message: String::new() }
    }

    /// The refusal for a connection to `target` that failed with `err`: refused, timed out,
    /// or unreachable.
    pub fn connect_failed(target: impl std::fmt::Display, err: &std::io::Error) -> Self {
        let status = match err.kind() {
            std::io::ErrorKind::ConnectionRefused => ReplyStatus::Refused,
            std::io::ErrorKind::TimedOut => ReplyStatus::TimedOut,
            _ => ReplyStatus::Unreachable,
        };
        Self::refuse(status, format!("{target}: {err}"))
    }

    /// A refusal with a reason.
    pub fn refuse(status: ReplyStatus, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// Encodes the reply with its length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Writer::new();
        body.u8(self.status.to_u8()).string(&self.message, MAX_REASON_LEN);
        with_length(body.finish())
    }

    /// Decodes a reply body (after the length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            status: ReplyStatus::from_u8(r.u8("status")?),
            message: r.string(MAX_REASON_LEN, "message")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_replies_too() {
        let visitor: SocketAddr = "[::1]:9".parse().unwrap();
        let headers = [
            StreamHeader::LocalForward {
                target: VisitTarget::Service { client: "worker-1".into(), service: "kubelet".into() },
                visitor,
            },
            StreamHeader::LocalForward {
                target: VisitTarget::Address("10.0.0.1:6443".parse().unwrap()),
                visitor,
            },
            StreamHeader::ServiceVisit { service: "kubelet".into(), from: "cp".into(), visitor },
            StreamHeader::Route { route_id: RouteId(u64::MAX - 1), visitor, local: None },
            StreamHeader::Route { route_id: RouteId(7), visitor, local: Some("[::1]:443".parse().unwrap()) },
            StreamHeader::Http { visitor },
            StreamHeader::HttpRoute { route_id: RouteId(9), visitor },
            StreamHeader::NetworkVisit {
                route_id: RouteId(3),
                target: "10.96.0.10:443".parse().unwrap(),
                from: "laptop".into(),
                visitor,
            },
            StreamHeader::LocalDatagrams { target: "dns.internal:53".parse().unwrap(), visitor },
            StreamHeader::NetworkDatagrams {
                route_id: RouteId(4),
                target: "10.96.0.10:53".parse().unwrap(),
                from: "laptop".into(),
                visitor,
            },
        ];
        for header in headers {
            let bytes = header.encode();
            assert_eq!(usize::from(u16::from_be_bytes([bytes[0], bytes[1]])), bytes.len() - 2);
            assert_eq!(StreamHeader::decode(&bytes[2..]).unwrap(), header);
            // An older server's `Route` header ends before `local`: that much is whole.
            let older = match &header {
                StreamHeader::Route { route_id, visitor, local: Some(_) } => {
                    StreamHeader::Route { route_id: *route_id, visitor: *visitor, local: None }.encode().len()
                }
                _ => 0,
            };
            for cut in 2..bytes.len() {
                assert_eq!(
                    StreamHeader::decode(&bytes[2..cut]).is_ok(),
                    cut == older,
                    "{header:?} cut at {cut}"
                );
            }
        }
        let reply = StreamReply::refuse(ReplyStatus::Denied, "not for you");
        assert_eq!(StreamReply::decode(&reply.encode()[2..]).unwrap(), reply);
    }

    #[test]
    fn invalid_names_and_hosts_in_targets_are_rejected() {
        let bad = StreamHeader::ServiceVisit {
            service: "a b".into(),
            from: "cp".into(),
            visitor: "1.2.3.4:5".parse().unwrap(),
        };
        assert!(StreamHeader::decode(&bad.encode()[2..]).is_err());
        let mut body = vec![LOCAL_FORWARD, TARGET_ADDRESS, 0, 3];
        body.extend_from_slice(b"a[b");
        body.extend_from_slice(&[0, 80]);
        assert!(StreamHeader::decode(&body).is_err());
    }

    #[test]
    fn an_oversized_length_is_refused_before_allocation() {
        assert!(matches!(body_len(u16::MAX, "stream header"), Err(DecodeError::TooLong { .. })));
        assert_eq!(body_len(1024, "stream header").unwrap(), 1024);
    }
}
