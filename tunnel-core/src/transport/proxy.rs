//! HTTP `CONNECT` proxies on the way to the server (RFC 9110, section 9.3.6): the client dials
//! the proxy, asks it for a tunnel to the server, and runs TLS and the session through it, so a
//! network that lets out only proxied traffic still reaches the server. The proxy learns the
//! server's address and nothing else: TLS runs end to end through it.

use std::fmt;
use std::io;
use std::net::IpAddr;

use futures::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::{buffered, connect_tcp_at, ConnectError, Connection, Connector};
use crate::auth::ChannelBinding;
use crate::proto::TargetAddr;

/// Largest reply head read.
pub const MAX_REPLY_HEAD: usize = 8 * 1024;

/// An HTTP proxy, `http://[USER:PASSWORD@]HOST[:PORT]` (port 80 when none; without a scheme,
/// `http://`).
///
/// ```
/// let proxy: tunnel_core::transport::HttpProxy = "http://alice:s3cret@proxy.internal:3128".parse().unwrap();
/// assert_eq!(proxy.addr(), "proxy.internal:3128");
/// assert_eq!("proxy.internal:3128".parse::<tunnel_core::transport::HttpProxy>().unwrap().addr(), "proxy.internal:3128");
/// assert!(!format!("{proxy:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct HttpProxy {
    addr: String,
    /// `USER:PASSWORD` in base64, for `Proxy-Authorization: Basic`: a secret.
    credentials: Option<String>,
}

impl fmt::Debug for HttpProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credentials = self.credentials.as_ref().map(|_| "<redacted>");
        f.debug_struct("HttpProxy").field("addr", &self.addr).field("credentials", &credentials).finish()
    }
}

/// A proxy URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("proxy URL {url:?}: {why}")]
pub struct ProxyUrlError {
    /// The URL, its credentials left out.
    pub url: String,
    /// What is wrong.
    pub why: &'static str,
}

impl std::str::FromStr for HttpProxy {
    type Err = ProxyUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        // Without a scheme, `http://`, as curl takes it; schemes are case-insensitive (RFC
        // 3986 3.1).
        let rest = match url.split_once("://") {
            None => url,
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some(_) => {
                let shown = url.rsplit_once('@').map_or(url, |(_, host)| host).to_owned();
                return Err(ProxyUrlError { url: shown, why: "only http:// proxies are supported" });
            }
        };
        // The authority ends at the first `/`, `?` or `#` (RFC 3986): an `@` past it is not
        // the end of user information, and what precedes it is not the proxy's host.
        let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
        let (userinfo, authority) = match authority.rsplit_once('@') {
            Some((userinfo, authority)) => (Some(userinfo).filter(|u| !u.is_empty()), authority),
            None => (None, authority),
        };
        // Shown from past the last `@` anywhere: no part of a password gets into a message.
        let shown = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
        let bad = |why| ProxyUrlError { url: format!("http://{shown}"), why };
        if !path.is_empty() && path != "/" {
            return Err(bad("expected http://[USER:PASSWORD@]HOST[:PORT]"));
        }
        // A port, unless the last colon is inside an IPv6 address in brackets.
        let with_port = match authority.rsplit_once(':') {
            Some((_, port)) if !port.contains(']') => authority.to_owned(),
            _ => format!("{authority}:80"),
        };
        let target: TargetAddr = with_port.parse().map_err(|_| {
            bad("expected HOST[:PORT], a DNS name or an IP address, and a port from 1 to 65535")
        })?;
        let credentials = userinfo.map(|userinfo| {
            use base64::Engine;
            let mut decoded = percent_decoded(userinfo);
            // A user without a password is `USER:` (RFC 7617).
            if !decoded.contains(&b':') {
                decoded.push(b':');
            }
            base64::prelude::BASE64_STANDARD.encode(decoded)
        });
        Ok(Self { addr: target.to_string(), credentials })
    }
}

impl HttpProxy {
    /// Where the proxy listens (`HOST:PORT`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The `CONNECT` request for `target` (`HOST:PORT`).
    fn request(&self, target: &str) -> String {
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(credentials) = &self.credentials {
            request.push_str(&format!("Proxy-Authorization: Basic {credentials}\r\n"));
        }
        request.push_str("\r\n");
        request
    }
}

/// `%XX` escapes of a URL's user information, decoded (a `@` or `:` in a password is written
/// `%40`, `%3A`).
fn percent_decoded(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(bytes.len()), 0);
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        let byte = hex.and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], byte) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// Whether `host` goes around the proxy by `no_proxy`, a `NO_PROXY` list as curl reads it:
/// comma-separated host names (each also matching its subdomains; a leading `.` or `*.` is
/// allowed), IP addresses (matched exactly), networks (`10.0.0.0/8`), or `*` for every host.
/// Ports in the list are ignored; case does not matter.
pub fn no_proxy_matches(no_proxy: &str, host: &str) -> bool {
    let host = unbracket(host.trim_end_matches('.')).to_ascii_lowercase();
    let host_ip = host.parse::<IpAddr>().ok();
    no_proxy.split(',').map(str::trim).filter(|entry| !entry.is_empty()).any(|entry| {
        if entry == "*" {
            return true;
        }
        let entry = without_port(entry);
        let entry = unbracket(entry.trim_start_matches("*.").trim_start_matches('.').trim_end_matches('.'));
        let entry = entry.to_ascii_lowercase();
        if let Some((network, bits)) = entry.split_once('/') {
            return match (network.parse::<IpAddr>(), bits.parse::<u8>(), host_ip) {
                (Ok(network), Ok(bits), Some(ip)) => in_network(ip, network, bits),
                _ => false,
            };
        }
        match (entry.parse::<IpAddr>(), host_ip) {
            (Ok(ip), _) => host_ip == Some(ip),
            (Err(_), Some(_)) => false,
            (Err(_), None) => {
                host == entry || host.strip_suffix(&entry).is_some_and(|head| head.ends_with('.'))
            }
        }
    })
}

/// `entry` without a `:PORT` (`[v6]:PORT` too; a bare IPv6 address keeps its colons).
fn without_port(entry: &str) -> &str {
    if let Some(end) = entry.strip_prefix('[').and_then(|rest| rest.find(']')) {
        return &entry[..end + 2];
    }
    match entry.split_once(':') {
        Some((name, port)) if !port.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => entry,
    }
}

fn unbracket(host: &str) -> &str {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// Whether `ip` is in `network/bits` (families must agree; bits beyond the address's are no
/// match).
fn in_network(ip: IpAddr, network: IpAddr, bits: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// What a proxy answered instead of a tunnel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyReplyError {
    /// Not an HTTP reply, or a head larger than [`MAX_REPLY_HEAD`].
    #[error("not an HTTP reply: {0}")]
    Malformed(String),
    /// A reply other than 2xx.
    #[error("the proxy answered {status} {reason}")]
    Refused {
        /// The status code.
        status: u16,
        /// The reason phrase, escaped.
        reason: String,
    },
}

impl ProxyReplyError {
    /// Whether trying again cannot help: the proxy wants other credentials (407) or forbids
    /// the destination (403).
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Refused { status: 403 | 407, .. })
    }
}

/// Reads a reply's status line (`HTTP/1.1 200 Connection established`): `Ok` for 2xx.
pub fn check_reply(status_line: &[u8]) -> Result<(), ProxyReplyError> {
    let line =
        status_line.strip_suffix(b"\r\n").or_else(|| status_line.strip_suffix(b"\n")).unwrap_or(status_line);
    let shown = || crate::log::Escaped(&String::from_utf8_lossy(&line[..line.len().min(120)])).to_string();
    let mut parts = line.splitn(3, |b| *b == b' ');
    let (version, status) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let status =
        std::str::from_utf8(status).ok().filter(|s| s.len() == 3).and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(status) if matches!(version, b"HTTP/1.0" | b"HTTP/1.1") && (100..600).contains(&status) => {
            if (200..300).contains(&status) {
                return Ok(());
            }
            let reason = String::from_utf8_lossy(parts.next().unwrap_or_default());
            Err(ProxyReplyError::Refused { status, reason: crate::log::Escaped(&reason).to_string() })
        }
        _ => Err(ProxyReplyError::Malformed(shown())),
    }
}

/// Connections to `target` through an HTTP proxy; the binding is
/// [`ChannelBinding::Plaintext`] (wrap it in a [`super::TlsConnector`]). It sets no deadline of
/// its own: the client's `handshake_timeout` covers the proxy's answer too.
#[derive(Debug, Clone)]
pub struct ProxyConnector {
    proxy: HttpProxy,
    target: String,
    /// Where the connections are carried (see [`crate::shards`]).
    home: Option<crate::shards::Shard>,
}

impl ProxyConnector {
    /// Tunnels to `target` (`HOST:PORT`, resolved by the proxy) through `proxy`.
    pub fn new(proxy: HttpProxy, target: impl Into<String>) -> Self {
        Self { proxy, target: target.into(), home: None }
    }

    /// Its connections registered with `home`'s event loop.
    pub(crate) fn at(self, home: Option<&crate::shards::Shard>) -> Self {
        Self { home: home.cloned(), ..self }
    }
}

impl Connector for ProxyConnector {
    fn connect(&self) -> BoxFuture<'_, Result<Connection, ConnectError>> {
        Box::pin(async move {
            let addr = self.proxy.addr();
            if self.target.is_empty() || !self.target.bytes().all(|b| b.is_ascii_graphic()) {
                let source =
                    io::Error::new(io::ErrorKind::InvalidInput, "not a HOST:PORT to ask a proxy for");
                return Err(ConnectError::Unreachable {
                    peer: crate::log::Escaped(&self.target).to_string(),
                    source,
                });
            }
            let tcp = connect_tcp_at(addr, self.home.as_ref())
                .await
                .map_err(|source| ConnectError::Unreachable { peer: format!("proxy {addr}"), source })?;
            let mut io = buffered(tcp);
            let failed = |source: io::Error| ConnectError::Proxy {
                proxy: addr.to_owned(),
                target: self.target.clone(),
                source,
            };
            io.write_all(self.proxy.request(&self.target).as_bytes()).await.map_err(failed)?;
            read_reply(&mut io).await.map_err(failed)?;
            // What the proxy sent after its head is the server's: it stays in the buffer.
            Ok(Connection { io: Box::new(io), binding: ChannelBinding::Plaintext })
        })
    }
}

/// Reads the reply head: its status line (a refusal or anything but HTTP ends it there),
/// then its header lines up to the blank line, so that what follows is the server's. Interim
/// replies (`100 Continue`, `102`, `103`; RFC 9110 15.2) before it are read and passed over,
/// within the same bound on all the heads read.
pub async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(io: &mut R) -> io::Result<()> {
    #[derive(PartialEq)]
    enum Reading {
        Status,
        Interim,
        Headers,
    }
    let (mut head, mut reading) = (0usize, Reading::Status);
    loop {
        let mut line = Vec::new();
        let left = MAX_REPLY_HEAD.saturating_sub(head) as u64 + 1;
        head += tokio::io::AsyncReadExt::take(&mut *io, left).read_until(b'\n', &mut line).await?;
        if head > MAX_REPLY_HEAD {
            let too_long = ProxyReplyError::Malformed(format!("a reply head over {MAX_REPLY_HEAD} bytes"));
            return Err(io::Error::other(too_long));
        }
        if !line.ends_with(b"\n") {
            if reading == Reading::Status && !line.is_empty() {
                // Not even a line: say what came, it may not be HTTP at all.
                check_reply(&line).map_err(io::Error::other)?;
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the proxy closed the connection"));
        }
        let blank = line == b"\r\n" || line == b"\n";
        reading = match reading {
            Reading::Status if is_interim(&line) => Reading::Interim,
            Reading::Status => {
                check_reply(&line).map_err(io::Error::other)?;
                Reading::Headers
            }
            Reading::Interim if blank => Reading::Status,
            Reading::Headers if blank => return Ok(()),
            other => other,
        };
    }
}

/// Whether a status line is an interim reply a client reads past (1xx but `101`, which
/// answers no `CONNECT`).
fn is_interim(status_line: &[u8]) -> bool {
    let line = status_line.strip_suffix(b"\n").unwrap_or(status_line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.splitn(3, |b| *b == b' ');
    let (version, status) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    matches!(version, b"HTTP/1.0" | b"HTTP/1.1")
        && status.len() == 3
        && status[0] == b'1'
        && status[1..].iter().all(u8::is_ascii_digit)
        && status != b"101"
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
