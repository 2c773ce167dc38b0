//! PROXY protocol headers (HAProxy's version 1 text and version 2 binary forms) that a client
//! writes to a target before a visitor's bytes, so the target sees the visitor's address and
//! the address it reached instead of the tunnel client's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Which PROXY protocol header a forward's target gets (`proxy_protocol = "v1" | "v2"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// `PROXY TCP4 SOURCE DESTINATION SPORT DPORT\r\n`.
    V1,
    /// The binary form (a 16-byte preamble and the addresses).
    V2,
}

impl ProxyProtocol {
    /// The header for a TCP connection from `source` to `destination` (the address the
    /// visitor reached; `None` when the server did not say, sent as the unspecified address
    /// and port 0). IPv4-mapped IPv6 addresses are written as IPv4; when the two families
    /// still differ, both are written as IPv6.
    pub fn header(self, source: SocketAddr, destination: Option<SocketAddr>) -> std::io::Result<Vec<u8>> {
        self.build(ppp::v2::Protocol::Stream, source, destination)
    }

    /// The header for a UDP flow, to put before its first datagram: version 2 only (version
    /// 1 describes TCP connections alone).
    pub fn datagram_header(
        self,
        source: SocketAddr,
        destination: Option<SocketAddr>,
    ) -> std::io::Result<Vec<u8>> {
        match self {
            Self::V1 => Err(std::io::Error::other("PROXY protocol v1 describes TCP only")),
            Self::V2 => self.build(ppp::v2::Protocol::Datagram, source, destination),
        }
    }

    fn build(
        self,
        protocol: ppp::v2::Protocol,
        source: SocketAddr,
        destination: Option<SocketAddr>,
    ) -> std::io::Result<Vec<u8>> {
        let source = canonical(source);
        let destination = destination.map_or_else(|| unspecified(source), canonical);
        let (source, destination) = match (source, destination) {
            (SocketAddr::V4(_), SocketAddr::V6(_)) => (as_v6(source), destination),
            (SocketAddr::V6(_), SocketAddr::V4(_)) => (source, as_v6(destination)),
            same => same,
        };
        match self {
            Self::V1 => Ok(ppp::v1::Addresses::from((source, destination)).to_string().into_bytes()),
            Self::V2 => {
                let command = ppp::v2::Version::Two | ppp::v2::Command::Proxy;
                // Fails only for a payload too large for the length field (never addresses).
                ppp::v2::Builder::with_addresses(command, protocol, (source, destination)).build()
            }
        }
    }
}

impl std::fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        })
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn unspecified(like: SocketAddr) -> SocketAddr {
    let ip = match like {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

fn as_v6(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), addr.port()),
        IpAddr::V6(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn version_1_is_the_text_line() {
        let header =
            ProxyProtocol::V1.header(addr("192.0.2.7:51000"), Some(addr("198.51.100.1:443"))).unwrap();
        assert_eq!(header, b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 443\r\n");
        let mapped =
            ProxyProtocol::V1.header(addr("[::ffff:192.0.2.7]:1"), Some(addr("198.51.100.1:2"))).unwrap();
        assert_eq!(mapped, b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\r\n", "a v4-mapped visitor is IPv4");
        let mixed = ProxyProtocol::V1.header(addr("192.0.2.7:1"), Some(addr("[2001:db8::1]:2"))).unwrap();
        assert_eq!(mixed, b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 1 2\r\n");
        let unknown = ProxyProtocol::V1.header(addr("[2001:db8::7]:1"), None).unwrap();
        assert_eq!(unknown, b"PROXY TCP6 2001:db8::7 :: 1 0\r\n");
    }

    #[test]
    fn version_2_is_the_binary_form() {
        let header =
            ProxyProtocol::V2.header(addr("192.0.2.7:51000"), Some(addr("198.51.100.1:443"))).unwrap();
        let mut expected = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        expected.extend([0x21, 0x11, 0, 12, 192, 0, 2, 7, 198, 51, 100, 1]);
        expected.extend([51000u16.to_be_bytes(), 443u16.to_be_bytes()].concat());
        assert_eq!(header, expected);
        let v6 = ProxyProtocol::V2.header(addr("[2001:db8::7]:1"), Some(addr("[2001:db8::1]:2"))).unwrap();
        assert_eq!((v6[13], v6[15], v6.len()), (0x21, 36, 16 + 36));
    }
}
