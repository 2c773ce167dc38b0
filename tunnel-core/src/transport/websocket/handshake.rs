//! The opening handshake (RFC 6455 section 4): the client's HTTP/1.1 `GET` with `Upgrade:
//! websocket`, the server's `101 Switching Protocols`. Building and checking heads is sans-IO;
//! [`read_head`] reads one off a stream.

use std::io;

use base64::Engine as _;
use sha1::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest request or response head read.
pub const MAX_HEAD: usize = 8 * 1024;

/// Most header lines in a head.
const MAX_HEADERS: usize = 64;

/// Appended to the client's key before hashing (RFC 6455 section 1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The upgrade failed: what the peer sent is not a WebSocket handshake we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// Not an HTTP head (or one too long, or with too many headers).
    #[error("not an HTTP head: {0}")]
    Malformed(String),
    /// The server answered, but not with `101 Switching Protocols`.
    #[error("the server answered {status} {reason} instead of switching to WebSocket")]
    Refused {
        /// The status code.
        status: u16,
        /// The reason phrase, escaped.
        reason: String,
    },
    /// A header the handshake needs is missing or wrong.
    #[error("{0}")]
    Header(&'static str),
}

/// A fresh random `Sec-WebSocket-Key`.
pub(super) fn new_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>())
}

/// The `Sec-WebSocket-Accept` answer to `key`.
pub(super) fn accept_key(key: &[u8]) -> String {
    let mut hash = sha1::Sha1::new();
    hash.update(key);
    hash.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(hash.finalize())
}

/// The client's request for `path` on `host` (`HOST[:PORT]` as the `Host` header shows it).
pub(super) fn request(host: &str, path: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// The server's answer to a request it accepts.
pub(super) fn switching(accept: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
}

/// The server's answer to a request it refuses (`400`, or `426` with the version it speaks).
pub(super) fn refusal(status: u16, why: &str) -> String {
    let (reason, extra) = match status {
        426 => ("Upgrade Required", "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"),
        _ => ("Bad Request", ""),
    };
    let body = format!("{why}\n");
    format!(
        "HTTP/1.1 {status} {reason}\r\n{extra}Connection: close\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The reason phrase of the answer to an upgrade request sent in plaintext to a server that
/// requires TLS: a client reads it as the server's refusal (its `400` says no more).
pub const TLS_REQUIRED_REASON: &str = "TLS Required";

/// That answer, with `why` as its body.
pub(super) fn tls_required(why: &str) -> String {
    let body = format!("{why}\n");
    format!(
        "HTTP/1.1 400 {TLS_REQUIRED_REASON}\r\nConnection: close\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Checks a client's request head: the `Sec-WebSocket-Accept` to answer with, or the status
/// and reason to refuse it with.
pub fn check_request(head: &[u8]) -> Result<String, (u16, UpgradeError)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err((400, malformed("an incomplete head"))),
        Err(err) => return Err((400, malformed(&err.to_string()))),
    }
    if request.method != Some("GET") || request.version != Some(1) {
        return Err((400, UpgradeError::Header("only an HTTP/1.1 GET can be upgraded")));
    }
    let headers = request.headers;
    if !has_token(headers, "upgrade", "websocket") || !has_token(headers, "connection", "upgrade") {
        let why = "this port carries tunnel sessions: only WebSocket upgrades are answered";
        return Err((426, UpgradeError::Header(why)));
    }
    if value(headers, "sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err((426, UpgradeError::Header("Sec-WebSocket-Version must be 13")));
    }
    let count = |name: &str| headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count();
    // RFC 9112 section 3.2: exactly one Host. An upgrade carries no body: a length or a
    // transfer coding would leave bytes that are not frames after the head.
    if count("host") != 1 {
        return Err((400, UpgradeError::Header("a request needs exactly one Host")));
    }
    let no_body = |h: &httparse::Header<'_>| {
        h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() == b"0"
    };
    if count("transfer-encoding") > 0
        || headers.iter().any(|h| h.name.eq_ignore_ascii_case("content-length") && !no_body(h))
    {
        return Err((400, UpgradeError::Header("an upgrade request carries no body")));
    }
    // RFC 6455 section 11.3.1: the key appears once.
    if count("sec-websocket-key") > 1 {
        return Err((400, UpgradeError::Header("Sec-WebSocket-Key must appear once")));
    }
    let key = value(headers, "sec-websocket-key").map(<[u8]>::trim_ascii).unwrap_or_default();
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(nonce) if nonce.len() == 16 => Ok(accept_key(key)),
        _ => Err((400, UpgradeError::Header("Sec-WebSocket-Key must be 16 bytes in base64"))),
    }
}

/// Checks the server's response head to a request sent with `key`.
pub fn check_response(head: &[u8], key: &str) -> Result<(), UpgradeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(malformed("an incomplete head")),
        Err(err) => return Err(malformed(&err.to_string())),
    }
    let status = response.code.unwrap_or_default();
    if response.version != Some(1) {
        return Err(UpgradeError::Header("a WebSocket upgrade is answered in HTTP/1.1"));
    }
    if status != 101 {
        let reason = crate::log::Escaped(response.reason.unwrap_or_default()).to_string();
        return Err(UpgradeError::Refused { status, reason });
    }
    let headers = response.headers;
    if !has_token(headers, "upgrade", "websocket") || !has_token(headers, "connection", "upgrade") {
        return Err(UpgradeError::Header("a 101 answer without Upgrade: websocket"));
    }
    let accept = value(headers, "sec-websocket-accept").map(<[u8]>::trim_ascii);
    if accept != Some(accept_key(key.as_bytes()).as_bytes()) {
        return Err(UpgradeError::Header("a 101 answer whose Sec-WebSocket-Accept does not match the key"));
    }
    Ok(())
}

fn malformed(what: &str) -> UpgradeError {
    UpgradeError::Malformed(crate::log::Escaped(what).to_string())
}

/// The value of the first header called `name`.
fn value<'h>(headers: &[httparse::Header<'h>], name: &str) -> Option<&'h [u8]> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
}

/// Whether a header called `name` lists `token` (comma-separated, any case).
fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Reads a head (up to its blank line, at most [`MAX_HEAD`] bytes) that starts with the bytes
/// already read, `head`; returns it, and what came after it.
pub(super) async fn read_head(
    io: &mut (impl AsyncRead + Unpin),
    mut head: Vec<u8>,
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut searched = 0;
    loop {
        if let Some(end) = head_end(&head, searched) {
            let rest = head.split_off(end);
            return Ok((head, rest));
        }
        searched = head.len().saturating_sub(2);
        if head.len() >= MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                UpgradeError::Malformed(format!("a head over {MAX_HEAD} bytes")),
            ));
        }
        let mut chunk = [0u8; 1024];
        let n = io.read(&mut chunk[..(MAX_HEAD - head.len()).min(1024)]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed during the WebSocket upgrade",
            ));
        }
        head.extend_from_slice(&chunk[..n]);
    }
}

/// Where a head ends (just past its blank line), looking from `from` on: lines end with CRLF
/// or, as HTTP parsers take them too (RFC 9112 2.2), a bare LF.
fn head_end(head: &[u8], from: usize) -> Option<usize> {
    let newlines = head.iter().enumerate().skip(from).filter(|(_, b)| **b == b'\n');
    newlines.map(|(at, _)| at + 1).find_map(|next| match &head[next..] {
        [b'\n', ..] => Some(next + 1),
        [b'\r', b'\n', ..] => Some(next + 2),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_its_blank_line_whatever_ends_its_lines() {
        for (head, end) in [
            (&b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest"[..], Some(27)),
            (b"GET / HTTP/1.1\nHost: a\n\nrest", Some(24)),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\nrest", Some(26)),
            (b"GET / HTTP/1.1\r\nHost: a\r\n", None),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r", None),
        ] {
            assert_eq!(head_end(head, 0), end, "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn the_rfc_key_gets_the_rfc_answer() {
        // RFC 6455 section 1.3.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn our_request_is_accepted_and_our_answer_checks_out() {
        let key = new_key();
        let accept = check_request(request("tunnel.example:443", "/", &key).as_bytes()).unwrap();
        check_response(switching(&accept).as_bytes(), &key).unwrap();
        let other = new_key();
        assert!(matches!(
            check_response(switching(&accept).as_bytes(), &other),
            Err(UpgradeError::Header(_))
        ));
    }

    #[test]
    fn requests_are_refused_with_the_status_that_says_why() {
        let status = |head: &str| check_request(head.as_bytes()).unwrap_err().0;
        assert_eq!(status("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 426, "a plain GET");
        let upgrade = "Upgrade: WebSocket\r\nConnection: keep-alive, upgrade\r\n";
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{upgrade}Sec-WebSocket-Version: 8\r\n\r\n")), 426);
        let v13 = format!("Host: x\r\n{upgrade}Sec-WebSocket-Version: 13\r\n");
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{v13}\r\n")), 400, "no key");
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{v13}Sec-WebSocket-Key: c2hvcnQ=\r\n\r\n")), 400);
        assert_eq!(status(&format!("GET / HTTP/1.0\r\n{v13}Sec-WebSocket-Key: {}\r\n\r\n", new_key())), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400);
        let fine = format!("GET /any HTTP/1.1\r\n{v13}Sec-WebSocket-Key: {}\r\n\r\n", new_key());
        assert!(check_request(fine.as_bytes()).is_ok(), "tokens in any case, among others");
        // What a server must refuse (RFC 9112 section 3.2 and 6.1, RFC 6455 section 11.3.1),
        // each for its own reason.
        let key = new_key();
        let upgrade_v13 = format!("{upgrade}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n");
        let reason = |head: String| match check_request(head.as_bytes()) {
            Err((400, UpgradeError::Header(why))) => why,
            other => panic!("{head:?}: {other:?}"),
        };
        assert_eq!(
            reason(format!("GET / HTTP/1.1\r\n{upgrade_v13}\r\n")),
            "a request needs exactly one Host"
        );
        let two_hosts = format!("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n{upgrade_v13}\r\n");
        assert_eq!(reason(two_hosts), "a request needs exactly one Host");
        for body in
            ["Content-Length: 5", "Transfer-Encoding: chunked", "Content-Length: 0\r\nContent-Length: 5"]
        {
            let head = format!("GET / HTTP/1.1\r\nHost: x\r\n{upgrade_v13}{body}\r\n\r\n");
            assert_eq!(reason(head), "an upgrade request carries no body", "{body}");
        }
        let two_keys =
            format!("GET / HTTP/1.1\r\nHost: x\r\n{upgrade_v13}Sec-WebSocket-Key: {}\r\n\r\n", new_key());
        assert_eq!(reason(two_keys), "Sec-WebSocket-Key must appear once");
        let empty_body = format!("GET / HTTP/1.1\r\nHost: x\r\n{upgrade_v13}Content-Length: 0\r\n\r\n");
        assert!(check_request(empty_body.as_bytes()).is_ok(), "a zero length is no body");
    }

    #[test]
    fn a_refusal_is_reported_with_its_status() {
        let answer = refusal(426, "no");
        assert!(answer.contains("Content-Length: 3\r\n\r\nno\n"), "{answer}");
        assert_eq!(
            check_response(b"HTTP/1.1 404 Not Found\r\n\r\n", "k"),
            Err(UpgradeError::Refused { status: 404, reason: "Not Found".into() })
        );
    }

    #[tokio::test]
    async fn a_head_is_read_to_its_blank_line_and_what_follows_is_kept() {
        let mut io: &[u8] = b"\r\nHost: x\r\n\r\nafter";
        let (head, rest) = read_head(&mut io, b"GET / HTTP/1.1".to_vec()).await.unwrap();
        assert_eq!(
            (head.as_slice(), rest.as_slice()),
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &b"after"[..])
        );
        let mut endless: &[u8] = &[b'a'; MAX_HEAD * 2];
        let err = read_head(&mut endless, Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut cut: &[u8] = b"GET / HTTP/1.1\r\n";
        assert_eq!(read_head(&mut cut, Vec::new()).await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
