//! Route tables on the wire: a client's whole set of routes with a version, and the server's
//! answer entry by entry.
//!
//! A route's id is derived from what the route is (for a TCP forward, its public address; for a
//! service, its name), never from its position in a list, so a table sent again after a change
//! names the unchanged routes exactly as before and the server leaves them alone.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use sha2::{Digest, Sha256};

use super::control::RefusalCode;
use super::http::{self, HostPattern, HttpMatch};
use super::net::IpNet;
use super::wire::{Reader, Writer};
use super::{validate_name, DecodeError, MAX_NAME_LEN, MAX_REASON_LEN};

/// Most entries one table (or answer) may hold on the wire.
pub const MAX_ROUTES: usize = 1024;

/// Bytes of a route table message besides its entries: the message type, the version and the
/// count of entries.
pub const TABLE_OVERHEAD: usize = 1 + 8 + 2;

const KIND_TCP: u8 = 1;
const KIND_SERVICE: u8 = 2;
const KIND_HTTP: u8 = 3;
const KIND_HTTP_FALLBACK: u8 = 4;
const KIND_TLS: u8 = 5;
const KIND_NETWORK: u8 = 6;
const KIND_UDP: u8 = 7;
const OUTCOME_READY: u8 = 0;
const OUTCOME_REFUSED: u8 = 1;

/// The stable id of a route.
///
/// ```
/// use tunnel_core::proto::RouteId;
/// let a = RouteId::derive("tcp 0.0.0.0:8080");
/// assert_eq!(a, RouteId::derive("tcp 0.0.0.0:8080"));
/// assert_ne!(a, RouteId::derive("tcp 0.0.0.0:8081"));
/// assert_eq!(a.to_string().len(), 16);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(pub u64);

impl RouteId {
    /// The id of the route whose identity is written as `key` (the first 8 bytes of its
    /// SHA-256 under a domain tag).
    pub fn derive(key: &str) -> Self {
        let digest = Sha256::new().chain_update(b"tunnel route id\0").chain_update(key.as_bytes()).finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Self(u64::from_be_bytes(first))
    }
}

impl RouteId {
    /// The id of the private service `name`.
    pub fn of_service(name: &str) -> Self {
        Self::derive(&format!("service {name}"))
    }

    /// The id of the HTTP route matching `m` (from its wire form: any difference in what it
    /// matches is another route).
    pub fn of_http(m: &HttpMatch) -> Self {
        let mut w = Writer::new();
        http::encode_match(&mut w, m);
        let hex: String = w.finish().iter().map(|b| format!("{b:02x}")).collect();
        Self::derive(&format!("http {hex}"))
    }

    /// The id of a client's HTTP fallback.
    pub fn of_http_fallback() -> Self {
        Self::derive("http fallback")
    }

    /// The id of the TLS passthrough route for `host`.
    pub fn of_tls(host: &HostPattern) -> Self {
        Self::derive(&format!("tls {host}"))
    }

    /// The id of the network route for `net`.
    pub fn of_network(net: &IpNet) -> Self {
        Self::derive(&format!("network {net}"))
    }

    /// The id of the `rank`-th route (from 2) with the same `base` id, for routes a client
    /// lists several times with different options.
    pub fn ranked(base: Self, rank: u32) -> Self {
        if rank <= 1 {
            base
        } else {
            Self::derive(&format!("{base} #{rank}"))
        }
    }
}

/// Sixteen hex digits.
impl fmt::Display for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for RouteId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(Self)
    }
}

/// One entry of a client's route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// Its stable id; unique within the table.
    pub id: RouteId,
    /// What the server publishes.
    pub kind: RouteKind,
}

impl RouteEntry {
    /// Bytes this entry takes in a route table message (see [`TABLE_OVERHEAD`] for the rest).
    pub fn encoded_len(&self) -> usize {
        let mut w = Writer::new();
        encode_entries(&mut w, std::slice::from_ref(self));
        w.finish().len() - 2 // The count of entries.
    }
}

/// What a route publishes on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteKind {
    /// A TCP port whose visitors become streams to the client.
    Tcp {
        /// Address to bind; `None` for the server's default for this client.
        bind: Option<IpAddr>,
        /// Port to bind; 0 lets the server choose.
        port: u16,
        /// With `port` 0: a port to try first (the one held before); 0 for none.
        preferred_port: u16,
    },
    /// A private service, reachable only through the tunnel as `CLIENT/NAME`.
    Service {
        /// Service name (same rules as client names).
        name: String,
    },
    /// HTTP requests matching this, on the server's HTTP and HTTPS listeners (version 2).
    Http {
        /// What the requests match.
        matcher: HttpMatch,
    },
    /// The client's answer for requests to its hosts that none of its HTTP routes match.
    HttpFallback,
    /// TLS connections whose SNI names this host, passed through undecrypted (version 2).
    Tls {
        /// The host.
        host: HostPattern,
    },
    /// A UDP port whose visitors (each source address a flow) become streams of datagrams to
    /// the client (version 5).
    Udp {
        /// Address to bind; `None` for the server's default for this client.
        bind: Option<IpAddr>,
        /// Port to bind; 0 lets the server choose.
        port: u16,
        /// With `port` 0: a port to try first (the one held before); 0 for none.
        preferred_port: u16,
        /// A flow ends after this many seconds without a datagram either way.
        idle_secs: u32,
    },
    /// Connections to addresses in this network, dialed by the client (version 4): the
    /// client offers egress into a network it reaches.
    Network {
        /// The network.
        net: IpNet,
    },
}

/// The server's answer for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteResult {
    /// The entry's id.
    pub id: RouteId,
    /// Accepted or refused.
    pub outcome: RouteOutcome,
}

/// Whether an entry was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteOutcome {
    /// In service; for a TCP route, the address the server bound.
    Ready {
        /// Where visitors connect (TCP routes).
        public_addr: Option<SocketAddr>,
    },
    /// Refused; the other entries are unaffected.
    Refused {
        /// Why.
        code: RefusalCode,
        /// Human-readable detail.
        message: String,
    },
}

/// A count of entries, checked against [`MAX_ROUTES`] and against the bytes left (each entry
/// takes at least `min_size`) before anything is allocated for them.
fn count(r: &mut Reader<'_>, min_size: usize, field: &'static str) -> Result<usize, DecodeError> {
    let n = usize::from(r.u16(field)?);
    if n > MAX_ROUTES {
        return Err(DecodeError::TooLong { field, len: n, max: MAX_ROUTES });
    }
    if n.saturating_mul(min_size) > r.remaining() {
        return Err(DecodeError::Truncated { field });
    }
    Ok(n)
}

fn length(n: usize) -> u16 {
    u16::try_from(n.min(MAX_ROUTES)).unwrap_or(u16::MAX)
}

pub(super) fn encode_entries(w: &mut Writer, entries: &[RouteEntry]) {
    w.u16(length(entries.len()));
    for entry in entries.iter().take(MAX_ROUTES) {
        w.u64(entry.id.0);
        match &entry.kind {
            RouteKind::Tcp { bind, port, preferred_port } => {
                w.u8(KIND_TCP).opt_ip(*bind).u16(*port).u16(*preferred_port);
            }
            RouteKind::Service { name } => {
                w.u8(KIND_SERVICE).string(name, MAX_NAME_LEN);
            }
            RouteKind::Http { matcher } => {
                w.u8(KIND_HTTP);
                http::encode_match(w, matcher);
            }
            RouteKind::HttpFallback => {
                w.u8(KIND_HTTP_FALLBACK);
            }
            RouteKind::Tls { host } => {
                w.u8(KIND_TLS).string(host.as_str(), http::MAX_HOST_LEN);
            }
            RouteKind::Network { net } => {
                w.u8(KIND_NETWORK).opt_ip(Some(net.addr())).u8(net.prefix_len());
            }
            RouteKind::Udp { bind, port, preferred_port, idle_secs } => {
                w.u8(KIND_UDP).opt_ip(*bind).u16(*port).u16(*preferred_port).u32(*idle_secs);
            }
        }
    }
}

pub(super) fn decode_entries(r: &mut Reader<'_>) -> Result<Vec<RouteEntry>, DecodeError> {
    // An id and a kind byte at least.
    let n = count(r, 9, "routes")?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let id = RouteId(r.u64("route id")?);
        let kind = match r.u8("route kind")? {
            KIND_TCP => RouteKind::Tcp {
                bind: r.opt_ip("bind")?,
                port: r.u16("port")?,
                preferred_port: r.u16("preferred_port")?,
            },
            KIND_SERVICE => {
                let name = r.string(MAX_NAME_LEN, "service")?;
                validate_name(&name)?;
                RouteKind::Service { name }
            }
            KIND_HTTP => RouteKind::Http { matcher: http::decode_match(r)? },
            KIND_HTTP_FALLBACK => RouteKind::HttpFallback,
            KIND_TLS => RouteKind::Tls { host: http::decode_host(r)? },
            KIND_NETWORK => {
                let addr =
                    r.opt_ip("network")?.ok_or(DecodeError::InvalidValue { field: "network", value: 0 })?;
                let prefix = r.u8("prefix")?;
                let net = IpNet::new(addr, prefix)
                    .filter(|net| net.addr() == addr)
                    .ok_or(DecodeError::InvalidValue { field: "prefix", value: u64::from(prefix) })?;
                RouteKind::Network { net }
            }
            KIND_UDP => RouteKind::Udp {
                bind: r.opt_ip("bind")?,
                port: r.u16("port")?,
                preferred_port: r.u16("preferred_port")?,
                idle_secs: r.u32("idle_secs")?,
            },
            other => return Err(DecodeError::InvalidValue { field: "route kind", value: u64::from(other) }),
        };
        entries.push(RouteEntry { id, kind });
    }
    Ok(entries)
}

pub(super) fn encode_results(w: &mut Writer, results: &[RouteResult]) {
    w.u16(length(results.len()));
    for result in results.iter().take(MAX_ROUTES) {
        w.u64(result.id.0);
        match &result.outcome {
            RouteOutcome::Ready { public_addr: None } => w.u8(OUTCOME_READY).opt_ip(None),
            RouteOutcome::Ready { public_addr: Some(addr) } => w.u8(OUTCOME_READY).socket_addr(*addr),
            RouteOutcome::Refused { code, message } => {
                w.u8(OUTCOME_REFUSED).u8(code.to_u8()).string(message, MAX_REASON_LEN)
            }
        };
    }
}

pub(super) fn decode_results(r: &mut Reader<'_>) -> Result<Vec<RouteResult>, DecodeError> {
    // An id, an outcome byte and one more byte at least.
    let n = count(r, 10, "results")?;
    let mut results = Vec::with_capacity(n);
    for _ in 0..n {
        let id = RouteId(r.u64("route id")?);
        let outcome = match r.u8("outcome")? {
            OUTCOME_READY => RouteOutcome::Ready { public_addr: r.opt_socket_addr("public_addr")? },
            OUTCOME_REFUSED => RouteOutcome::Refused {
                code: RefusalCode::from_u8(r.u8("code")?),
                message: r.string(MAX_REASON_LEN, "message")?,
            },
            other => return Err(DecodeError::InvalidValue { field: "outcome", value: u64::from(other) }),
        };
        results.push(RouteResult { id, outcome });
    }
    Ok(results)
}
