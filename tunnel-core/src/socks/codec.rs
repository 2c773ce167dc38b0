//! SOCKS5 messages (RFC 1928, and RFC 1929's username/password), sans-IO: each parser takes
//! the bytes received so far and returns the message with the bytes it used, `None` while the
//! message is incomplete, or why the bytes can never become one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::proto::{SpecError, TargetAddr};

/// The protocol version byte of every SOCKS5 message but the username/password exchange.
pub const VERSION: u8 = 5;
/// The version byte of the username/password exchange (RFC 1929).
pub const USERPASS_VERSION: u8 = 1;

/// Authentication method: none.
pub const METHOD_NONE: u8 = 0x00;
/// Authentication method: username and password (RFC 1929).
pub const METHOD_USERPASS: u8 = 0x02;
/// The answer when no offered method is acceptable.
pub const METHOD_UNACCEPTABLE: u8 = 0xff;

const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_V6: u8 = 4;

/// Why bytes from a SOCKS client can never become a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SocksError {
    /// Not SOCKS version 5 (a SOCKS4 client, or something else entirely).
    #[error("not a SOCKS5 client (version byte {0:#04x})")]
    Version(u8),
    /// A greeting offering no method at all.
    #[error("the greeting offers no authentication method")]
    NoMethods,
    /// The username/password exchange has a version other than 1.
    #[error("bad username/password version {0:#04x}")]
    UserPassVersion(u8),
    /// A reserved byte that must be zero is not.
    #[error("reserved byte is {0:#04x}, not 0")]
    Reserved(u8),
    /// An address type this protocol does not define.
    #[error("unknown address type {0:#04x}")]
    AddressType(u8),
    /// A domain name that is empty or not UTF-8.
    #[error("bad domain name in request: {0}")]
    Domain(&'static str),
    /// A UDP datagram that ends inside its header.
    #[error("the UDP datagram ends inside its SOCKS header")]
    Truncated,
    /// A fragment of a UDP datagram (fragmentation is not supported: such datagrams are
    /// dropped, as RFC 1928 allows).
    #[error("UDP fragment {0} (fragments are not supported)")]
    Fragment(u8),
}

/// A parser's outcome: the message and the bytes it used, `None` while incomplete.
pub type Parsed<T> = Result<Option<(T, usize)>, SocksError>;

/// A username and password (RFC 1929); either may be empty.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// The username.
    pub user: Vec<u8>,
    /// The password.
    pub password: Vec<u8>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &String::from_utf8_lossy(&self.user))
            .field("password", &"***")
            .finish()
    }
}

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Connect to the destination (TCP).
    Connect,
    /// Accept one connection from the destination.
    Bind,
    /// Relay UDP datagrams.
    UdpAssociate,
    /// A command byte RFC 1928 does not define.
    Other(u8),
}

impl Command {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Connect,
            2 => Self::Bind,
            3 => Self::UdpAssociate,
            other => Self::Other(other),
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Connect => 1,
            Self::Bind => 2,
            Self::UdpAssociate => 3,
            Self::Other(v) => v,
        }
    }
}

/// A request: a command and its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub command: Command,
    /// Where.
    pub destination: Destination,
}

/// An address in a request or a reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// An IP address and port.
    Ip(SocketAddr),
    /// A domain name (resolved where the connection is dialed) and port.
    Domain(String, u16),
}

impl Destination {
    /// As a target to dial: a port from 1, a valid host name.
    pub fn to_target(&self) -> Result<TargetAddr, SpecError> {
        match self {
            Self::Ip(addr) => TargetAddr::from_parts(&addr.ip().to_string(), addr.port()),
            Self::Domain(name, port) => TargetAddr::from_parts(name, *port),
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(addr) => addr.fmt(f),
            Self::Domain(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

/// The status of a reply (RFC 1928 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Succeeded.
    Succeeded = 0,
    /// General SOCKS server failure.
    GeneralFailure = 1,
    /// Connection not allowed by ruleset.
    NotAllowed = 2,
    /// Network unreachable.
    NetworkUnreachable = 3,
    /// Host unreachable.
    HostUnreachable = 4,
    /// Connection refused.
    ConnectionRefused = 5,
    /// TTL expired (used for timeouts).
    TtlExpired = 6,
    /// Command not supported.
    CommandNotSupported = 7,
    /// Address type not supported.
    AddressTypeNotSupported = 8,
}

/// The greeting: the authentication methods the client offers.
pub fn parse_greeting(buf: &[u8]) -> Parsed<Vec<u8>> {
    let Some(&version) = buf.first() else { return Ok(None) };
    if version != VERSION {
        return Err(SocksError::Version(version));
    }
    let Some(&n) = buf.get(1) else { return Ok(None) };
    if n == 0 {
        return Err(SocksError::NoMethods);
    }
    let end = 2 + usize::from(n);
    Ok(buf.get(2..end).map(|methods| (methods.to_vec(), end)))
}

/// The method the server chose.
pub fn encode_method(method: u8) -> [u8; 2] {
    [VERSION, method]
}

/// A username and password (RFC 1929).
pub fn parse_userpass(buf: &[u8]) -> Parsed<Login> {
    let Some(&version) = buf.first() else { return Ok(None) };
    if version != USERPASS_VERSION {
        return Err(SocksError::UserPassVersion(version));
    }
    let Some(&ulen) = buf.get(1) else { return Ok(None) };
    let user_end = 2 + usize::from(ulen);
    let Some(&plen) = buf.get(user_end) else { return Ok(None) };
    let end = user_end + 1 + usize::from(plen);
    if buf.len() < end {
        return Ok(None);
    }
    let login = Login { user: buf[2..user_end].to_vec(), password: buf[user_end + 1..end].to_vec() };
    Ok(Some((login, end)))
}

/// The answer to a username and password: accepted or not.
pub fn encode_userpass_status(accepted: bool) -> [u8; 2] {
    [USERPASS_VERSION, if accepted { 0 } else { 1 }]
}

/// A request.
pub fn parse_request(buf: &[u8]) -> Parsed<Request> {
    let Some(&version) = buf.first() else { return Ok(None) };
    if version != VERSION {
        return Err(SocksError::Version(version));
    }
    let (Some(&command), Some(&reserved), Some(&atyp)) = (buf.get(1), buf.get(2), buf.get(3)) else {
        return Ok(None);
    };
    if reserved != 0 {
        return Err(SocksError::Reserved(reserved));
    }
    let Some((destination, used)) = parse_address(atyp, &buf[4..])? else { return Ok(None) };
    Ok(Some((Request { command: Command::from_u8(command), destination }, 4 + used)))
}

/// An address after its type byte `atyp`: the destination and the bytes it took.
fn parse_address(atyp: u8, rest: &[u8]) -> Parsed<Destination> {
    let (ip, addr_len) = match atyp {
        ATYP_V4 => match rest.get(..4) {
            Some(b) => (Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))), 4),
            None => return Ok(None),
        },
        ATYP_V6 => match rest.get(..16).and_then(|b| <[u8; 16]>::try_from(b).ok()) {
            Some(octets) => (Some(IpAddr::V6(Ipv6Addr::from(octets))), 16),
            None => return Ok(None),
        },
        ATYP_DOMAIN => match rest.first() {
            Some(&len) => (None, 1 + usize::from(len)),
            None => return Ok(None),
        },
        other => return Err(SocksError::AddressType(other)),
    };
    let Some(port) = rest.get(addr_len..addr_len + 2) else { return Ok(None) };
    let port = u16::from_be_bytes([port[0], port[1]]);
    let destination = match ip {
        Some(ip) => Destination::Ip(SocketAddr::new(ip, port)),
        None => {
            let name =
                std::str::from_utf8(&rest[1..addr_len]).map_err(|_| SocksError::Domain("not UTF-8"))?;
            if name.is_empty() {
                return Err(SocksError::Domain("empty"));
            }
            Destination::Domain(name.to_owned(), port)
        }
    };
    Ok(Some((destination, addr_len + 2)))
}

/// A datagram of a UDP association (RFC 1928 section 7) as the SOCKS client sends it: where
/// it goes, and its payload. Datagrams are whole: one cut short is an error, not "incomplete".
pub fn parse_udp(buf: &[u8]) -> Result<(Destination, &[u8]), SocksError> {
    let (Some(&reserved_hi), Some(&reserved_lo), Some(&fragment), Some(&atyp)) =
        (buf.first(), buf.get(1), buf.get(2), buf.get(3))
    else {
        return Err(SocksError::Truncated);
    };
    if reserved_hi != 0 || reserved_lo != 0 {
        return Err(SocksError::Reserved(reserved_hi | reserved_lo));
    }
    if fragment != 0 {
        return Err(SocksError::Fragment(fragment));
    }
    let (destination, used) = parse_address(atyp, &buf[4..])?.ok_or(SocksError::Truncated)?;
    Ok((destination, &buf[4 + used..]))
}

/// A datagram of a UDP association as the SOCKS client receives it: `from` (the address
/// that answered) in the header, then the payload.
pub fn encode_udp(from: &Destination, payload: &[u8]) -> Vec<u8> {
    let mut out = encode(0, from);
    // The header is the request's layout with two reserved bytes and the fragment number
    // (0) in place of the version, command and reserved byte.
    out[0] = 0;
    out.extend_from_slice(payload);
    out
}

/// A request as a client sends it (for clients and tests).
pub fn encode_request(request: &Request) -> Vec<u8> {
    encode(request.command.to_u8(), &request.destination)
}

/// A message of the request's layout: the version, `code`, a reserved byte, an address.
fn encode(code: u8, destination: &Destination) -> Vec<u8> {
    let mut out = vec![VERSION, code, 0];
    let port = match destination {
        Destination::Ip(addr) => {
            match addr.ip() {
                IpAddr::V4(v4) => {
                    out.push(ATYP_V4);
                    out.extend_from_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    out.push(ATYP_V6);
                    out.extend_from_slice(&v6.octets());
                }
            }
            addr.port()
        }
        Destination::Domain(name, port) => {
            let name = &name.as_bytes()[..name.len().min(255)];
            out.push(ATYP_DOMAIN);
            out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(name);
            *port
        }
    };
    out.extend_from_slice(&port.to_be_bytes());
    out
}

/// A reply with the address the server bound (`0.0.0.0:0` when it has none to tell).
pub fn encode_reply(reply: Reply, bound: SocketAddr) -> Vec<u8> {
    encode(reply as u8, &Destination::Ip(bound))
}

/// A reply as a client reads it: the status byte and the bound address.
pub fn parse_reply(buf: &[u8]) -> Parsed<(u8, Destination)> {
    // The reply has the request's layout, with the status in the command's place.
    Ok(parse_request(buf)?.map(|(request, used)| ((request.command.to_u8(), request.destination), used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(command: Command, target: &str) -> Request {
        let destination = match target.parse() {
            Ok(addr) => Destination::Ip(addr),
            Err(_) => {
                let (host, port) = target.rsplit_once(':').unwrap();
                Destination::Domain(host.into(), port.parse().unwrap())
            }
        };
        Request { command, destination }
    }

    #[test]
    fn requests_of_every_address_type_round_trip_and_need_every_byte() {
        for (target, len) in
            [("10.96.0.10:443", 10), ("[fd00::1]:80", 22), ("db.internal:5432", 4 + 1 + 11 + 2)]
        {
            let req = request(Command::Connect, target);
            let bytes = encode_request(&req);
            assert_eq!(bytes.len(), len, "{target}");
            assert_eq!(parse_request(&bytes).unwrap(), Some((req.clone(), len)));
            for cut in 0..len {
                assert_eq!(parse_request(&bytes[..cut]).unwrap(), None, "{target} cut at {cut}");
            }
            // Bytes after the request are the client's data, left alone.
            let mut more = bytes.clone();
            more.extend_from_slice(b"GET /");
            assert_eq!(parse_request(&more).unwrap().unwrap().1, len);
        }
        let udp = request(Command::UdpAssociate, "0.0.0.0:0");
        assert_eq!(parse_request(&encode_request(&udp)).unwrap().unwrap().0.command, Command::UdpAssociate);
    }

    #[test]
    fn broken_requests_say_what_is_wrong() {
        assert_eq!(parse_request(&[4, 1, 0, 1]), Err(SocksError::Version(4)), "SOCKS4");
        assert_eq!(parse_request(b"GET / HTTP/1.1"), Err(SocksError::Version(b'G')));
        assert_eq!(parse_request(&[5, 1, 1, 1, 0, 0, 0, 0, 0, 0]), Err(SocksError::Reserved(1)));
        assert_eq!(parse_request(&[5, 1, 0, 9]), Err(SocksError::AddressType(9)));
        assert_eq!(parse_request(&[5, 1, 0, 3, 0, 0, 80]), Err(SocksError::Domain("empty")));
        assert_eq!(parse_request(&[5, 1, 0, 3, 2, 0xff, 0xfe, 0, 80]), Err(SocksError::Domain("not UTF-8")));
        // A name that is no host name parses; it cannot be dialed.
        let (odd, _) = parse_request(&[5, 1, 0, 3, 3, b'a', b' ', b'b', 0, 80]).unwrap().unwrap();
        assert!(odd.destination.to_target().is_err());
        let (zero, _) =
            parse_request(&encode_request(&request(Command::Connect, "10.0.0.1:0"))).unwrap().unwrap();
        assert!(zero.destination.to_target().is_err(), "port 0 is no target");
        assert_eq!(
            parse_request(&[5, 9, 0, 1, 1, 2, 3, 4, 0, 1]).unwrap().unwrap().0.command,
            Command::Other(9)
        );
    }

    #[test]
    fn greetings_and_passwords_parse_in_pieces() {
        let greeting = [5, 2, METHOD_NONE, METHOD_USERPASS];
        assert_eq!(parse_greeting(&greeting).unwrap(), Some((vec![0, 2], 4)));
        for cut in 0..greeting.len() {
            assert_eq!(parse_greeting(&greeting[..cut]).unwrap(), None);
        }
        assert_eq!(parse_greeting(&[5, 0]), Err(SocksError::NoMethods));
        assert_eq!(parse_greeting(&[4, 1, 0]), Err(SocksError::Version(4)));
        let auth = [1, 2, b'm', b'e', 3, b'p', b'w', b'd'];
        let login = Login { user: b"me".to_vec(), password: b"pwd".to_vec() };
        assert_eq!(parse_userpass(&auth).unwrap(), Some((login, 8)));
        assert!(!format!("{:?}", parse_userpass(&auth)).contains("pwd"), "the password is masked");
        for cut in 0..auth.len() {
            assert_eq!(parse_userpass(&auth[..cut]).unwrap(), None);
        }
        assert_eq!(parse_userpass(&[1, 0, 0]).unwrap(), Some((Login { user: vec![], password: vec![] }, 3)));
        assert_eq!(parse_userpass(&[5, 0, 0]), Err(SocksError::UserPassVersion(5)));
    }

    #[test]
    fn replies_carry_their_status_and_address() {
        let bound: SocketAddr = "[::1]:1080".parse().unwrap();
        let bytes = encode_reply(Reply::ConnectionRefused, bound);
        assert_eq!(parse_reply(&bytes).unwrap(), Some(((5, Destination::Ip(bound)), bytes.len())));
        let ok = encode_reply(Reply::Succeeded, "0.0.0.0:0".parse().unwrap());
        assert_eq!(ok, [5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn udp_datagrams_carry_their_destination_and_refuse_fragments_and_short_headers() {
        for destination in [
            Destination::Ip("10.96.0.10:53".parse().unwrap()),
            Destination::Ip("[fd00::1]:5353".parse().unwrap()),
            Destination::Domain("dns.internal".into(), 53),
        ] {
            let datagram = encode_udp(&destination, b"query");
            assert_eq!(datagram[..3], [0, 0, 0]);
            assert_eq!(parse_udp(&datagram).unwrap(), (destination.clone(), &b"query"[..]));
            // An empty payload is a datagram too; a header cut short is not.
            let bare = encode_udp(&destination, b"");
            assert_eq!(parse_udp(&bare).unwrap().1, b"");
            for cut in 0..bare.len() {
                assert!(parse_udp(&bare[..cut]).is_err(), "{destination} cut at {cut}");
            }
        }
        let mut fragment = encode_udp(&Destination::Ip("10.0.0.1:53".parse().unwrap()), b"x");
        fragment[2] = 1;
        assert_eq!(parse_udp(&fragment), Err(SocksError::Fragment(1)));
        fragment[2] = 0;
        fragment[1] = 9;
        assert_eq!(parse_udp(&fragment), Err(SocksError::Reserved(9)));
        assert_eq!(parse_udp(&[0, 0, 0, 7, 1]), Err(SocksError::AddressType(7)));
    }
}
