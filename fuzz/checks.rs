#![allow(dead_code)] // Each fuzz target uses one check; the replay test uses them all.

//! The properties every fuzz target checks. Shared by the fuzz targets (`fuzz_targets/*.rs`)
//! and by the corpus replay test of the normal suite (`tunnel-core/tests/fuzz_corpus.rs`), so
//! both exercise exactly the same code. Each check panics when a property fails.

use std::path::Path;
use std::time::Duration;

use tunnel_core::auth::{ChannelBinding, Credentials, Token};
use tunnel_core::config::{ClientFile, HumanDuration, ServerFile};
use tunnel_core::forward::{
    Glob, IpNet, LocalForwardSpec, PortSet, RemoteForwardSpec, ServiceSpec, SocksSpec, TargetAddr,
    TargetRules, VisitRule,
};
use tunnel_core::proto::handshake::{
    ClientHandshake, ClientStep, HandshakeMessage, ServerHandshake, ServerStep, MAX_HANDSHAKE_FRAME,
};
use tunnel_core::proto::{frame, ControlMessage, FrameTooLarge, StreamHeader, StreamReply};
use tunnel_core::tls::Fingerprint;

/// A property check over one input.
pub type Check = fn(&[u8]);

/// Every target, by the name of its corpus directory.
pub const TARGETS: &[(&str, Check)] = &[
    ("frame", frame),
    ("control_message", control_message),
    ("stream_header", stream_header),
    ("handshake_message", handshake_message),
    ("server_handshake", server_handshake),
    ("client_handshake", client_handshake),
    ("config", config),
    ("text_parsers", text_parsers),
    ("lease_file", lease_file),
    ("http_route", http_route),
    ("admin_request", admin_request),
    ("proxy_reply", proxy_reply),
    ("websocket", websocket),
    ("socks", socks),
    ("udp_framing", udp_framing),
    ("mux_frames", mux_frames),
    ("client_hello", client_hello),
    ("socks_accept", socks_accept),
    ("visitor_headers", visitor_headers),
];

/// The multiplexer, as the server and as the client, under a peer that sends anything: nothing
/// panics, the streams the peer opened (read to their end, then reset or answered and closed)
/// and one of ours all end, the driver ends once the bytes do, and what our side sent (read off
/// by the peer as it goes, so that no write waits) is whole frames, our own resets of
/// half-closed streams included.
pub fn mux_frames(data: &[u8]) {
    use tunnel_core::mux::Mode;
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    // Our side as either end: the stream ids each may open differ.
    for mode in [Mode::Server, Mode::Client] {
        runtime.block_on(mux_frames_as(mode, data));
    }
}

async fn mux_frames_as(mode: tunnel_core::mux::Mode, data: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tunnel_core::mux::{self, MuxConfig};
    let (ours, peer) = tokio::io::duplex(16 * 1024);
    let (mut from_us, mut to_us) = tokio::io::split(peer);
    let (opener, mut incoming, driver) = mux::start(ours, &MuxConfig::default(), mode);
    let send = async move {
        let _ = to_us.write_all(data).await;
        let _ = to_us.shutdown().await;
    };
    let drain = async move {
        let mut sent = Vec::new();
        let _ = from_us.read_to_end(&mut sent).await;
        sent
    };
    let serve = async move {
        let mut n = 0;
        while let Some(mut stream) = incoming.next().await {
            let _ = stream.read_to_end(&mut Vec::new()).await;
            n += 1;
            if n % 2 == 0 {
                stream.reset();
            } else {
                let _ = stream.write_all(b"answer").await;
                let _ = stream.shutdown().await;
            }
        }
    };
    let ours = async move {
        let Ok(mut stream) = opener.open().await else { return };
        let _ = stream.write_all(b"ours").await;
        let _ = stream.shutdown().await;
        let _ = stream.read_to_end(&mut Vec::new()).await;
        stream.reset();
    };
    let (ended, (), sent, (), ()) = futures::join!(driver, send, drain, serve, ours);
    drop(ended);
    // What we sent, our own reset frames among yamux's, is whole yamux frames.
    let mut at = 0;
    while let Some(header) = sent.get(at..at + 12) {
        assert_eq!(header[0], 0, "a frame of version 0 at byte {at}");
        assert!(header[1] <= 3, "a known frame type at byte {at}");
        let body = if header[1] == 0 { u32::from_be_bytes(header[8..12].try_into().unwrap()) } else { 0 };
        at += 12 + body as usize;
    }
    assert_eq!(at, sent.len(), "the last frame we sent is whole");
}

/// UDP on a stream: the frames split off a stream are whole (each exactly its length after the
/// prefix) and encode back to the bytes they were read from; what is left is one frame cut
/// short. A SOCKS UDP datagram that parses encodes back to itself (its destination kept as
/// sent), and its destination's check never panics.
pub fn udp_framing(data: &[u8]) {
    use tunnel_core::proto::datagram;
    use tunnel_core::socks::codec;
    let mut at = 0;
    let mut again = Vec::new();
    while let Some((payload, used)) = datagram::decode(&data[at..]) {
        assert_eq!(used, datagram::PREFIX_LEN + payload.len());
        datagram::encode(payload, &mut again).expect("a decoded datagram fits a frame");
        at += used;
    }
    assert_eq!(again, data[..at]);
    if let Some(prefix) = data[at..].first_chunk::<2>() {
        assert!(data.len() - at - 2 < usize::from(u16::from_be_bytes(*prefix)), "a whole frame was left");
    }
    if let Ok((destination, payload)) = codec::parse_udp(data) {
        assert_eq!(codec::encode_udp(&destination, payload), data, "{destination:?}");
        if let Ok(target) = destination.to_target() {
            assert!(target.port > 0);
        }
    }
}

/// What a SOCKS5 client sends, through every parser: none panics or claims more bytes than it
/// was given; a parsed request encodes back to the bytes it was read from (address types and
/// names are kept as sent); a username/password split is exactly its lengths; an incomplete
/// message stays incomplete when cut shorter.
pub fn socks(data: &[u8]) {
    use tunnel_core::socks::codec;
    if let Ok(Some((methods, used))) = codec::parse_greeting(data) {
        assert!(used <= data.len() && used == 2 + methods.len() && !methods.is_empty());
    }
    if let Ok(Some((login, used))) = codec::parse_userpass(data) {
        assert!(used <= data.len() && used == 3 + login.user.len() + login.password.len());
    }
    match codec::parse_request(data) {
        Ok(Some((request, used))) => {
            assert!(used <= data.len());
            assert_eq!(codec::encode_request(&request), data[..used], "{request:?}");
            // A target is checked again before it is dialed; that check never panics either.
            if let Ok(target) = request.destination.to_target() {
                assert!(target.port > 0);
            }
            for cut in 0..used {
                assert!(
                    !matches!(codec::parse_request(&data[..cut]), Ok(Some(_))),
                    "whole at {cut} of {used}"
                );
            }
        }
        Ok(None) => {
            for cut in 0..data.len() {
                assert!(!matches!(codec::parse_request(&data[..cut]), Ok(Some(_))));
            }
        }
        Err(_) => {}
    }
    let _ = codec::parse_reply(data);
}

/// A visitor's header fields, one `name: value` a line (fields that are not valid are left
/// out), as the edge passes them on: what `Connection` names and the hop-by-hop fields stay on
/// their hop (`Connection: upgrade` and `Upgrade` put back for an upgrade), `Host` stays, the
/// visitor is the last `X-Forwarded-For` entry, `Forwarded`, `X-Forwarded-Proto` and
/// `X-Real-IP` are the edge's alone, and no forwarded
/// field the edge does not set (`-Ssl`, `-Port`, any `X_Forwarded_*`, `True-Client-IP`) gets
/// through.
pub fn visitor_headers(data: &[u8]) {
    use http::header::{HeaderMap, HeaderName, HeaderValue};
    use tunnel_core::http::{is_upgrade, set_forwarded, strip_hop_by_hop};
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(line[colon + 1..].trim_ascii()))
        else {
            continue;
        };
        headers.append(name, value);
    }
    let named: Vec<String> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let host = headers.get("host").cloned();
    let upgrade = is_upgrade(&headers);
    strip_hop_by_hop(&mut headers, upgrade.clone());
    let hop = [
        "connection",
        "upgrade",
        "te",
        "trailer",
        "transfer-encoding",
        "keep-alive",
        "proxy-connection",
        "http2-settings",
    ];
    for name in hop
        .iter()
        .copied()
        .chain(["proxy-authorization", "proxy-authenticate"])
        .chain(named.iter().map(String::as_str))
    {
        let allowed = upgrade.is_some() && (name == "connection" || name == "upgrade") || name == "host";
        assert!(allowed || !headers.contains_key(name), "{name} went past its hop");
    }
    if let Some(protocol) = &upgrade {
        // Never an HTTP/2 upgrade, which would take the spliced stream past the edge's rules.
        let tokens = protocol.to_str().unwrap_or("h2c").split([',', '/']).map(str::trim);
        assert!(!tokens.clone().any(|t| t.eq_ignore_ascii_case("h2c")), "{protocol:?} passed");
        assert_eq!(
            headers.get_all("connection").iter().collect::<Vec<_>>(),
            [&HeaderValue::from_static("upgrade")]
        );
        assert_eq!(headers.get_all("upgrade").iter().collect::<Vec<_>>(), [protocol]);
    }
    assert_eq!(headers.get("host"), host.as_ref(), "Host was touched");
    let visitor = std::net::IpAddr::from([192, 0, 2, 7]);
    set_forwarded(&mut headers, visitor, "https", "a.test");
    let forwarded_for =
        headers.get("x-forwarded-for").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    assert!(forwarded_for.ends_with("192.0.2.7"), "{forwarded_for:?}");
    assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(
        headers.get_all("x-forwarded-proto").iter().collect::<Vec<_>>(),
        [&HeaderValue::from_static("https")]
    );
    assert_eq!(
        headers.get_all("x-forwarded-host").iter().collect::<Vec<_>>(),
        [&HeaderValue::from_static("a.test")]
    );
    // Only the edge's three, spelled as the edge spells them: no `_` spelling of any.
    for name in headers.keys().map(HeaderName::as_str) {
        let family = name.len() >= 12 && name[..12].replace('_', "-") == "x-forwarded-";
        let ours = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"].contains(&name);
        assert!(!family || ours, "{name} got through");
        let address =
            ["x-real-ip", "true-client-ip", "x-client-ip", "x-cluster-client-ip", "cf-connecting-ip"]
                .contains(&name.replace('_', "-").as_str());
        assert!(!address || name == "x-real-ip", "{name} got through");
    }
    assert_eq!(
        headers.get_all("x-real-ip").iter().collect::<Vec<_>>(),
        [&HeaderValue::from_static("192.0.2.7")]
    );
    // One `Forwarded` field, the edge's element alone.
    assert_eq!(
        headers.get_all("forwarded").iter().collect::<Vec<_>>(),
        [&HeaderValue::from_static("for=192.0.2.7;host=a.test;proto=https")]
    );
}

/// A peer's bytes, handed out at most `.1` at a time.
struct Chunks<'a>(&'a [u8], usize);

impl tokio::io::AsyncRead for Chunks<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = self.1.min(self.0.len()).min(buf.remaining());
        buf.put_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        std::task::Poll::Ready(Ok(()))
    }
}

/// A SOCKS5 client's whole exchange with the proxy (`socks::accept`): the first byte chooses
/// no authentication (even) or a password, the only right one being `user:pass` (odd), and the
/// size of each read (its upper bits, 1 to 128 bytes); the rest is what the client sends.
/// Nothing panics; a request is taken only with the right password when one is asked for, the
/// bytes read end with the request and then exactly the early bytes kept, and the proxy's
/// first answer is the method it chose, or "none acceptable".
pub fn socks_accept(data: &[u8]) {
    use tunnel_core::socks::{accept, codec, AcceptError, Auth};
    let Some((&selector, sent)) = data.split_first() else { return };
    let granted = std::sync::atomic::AtomicBool::new(false);
    let check = |user: &[u8], password: &[u8]| {
        let right = user == b"user" && password == b"pass";
        granted.fetch_or(right, std::sync::atomic::Ordering::Relaxed);
        right
    };
    let auth = if selector & 1 == 0 { Auth::None } else { Auth::Password(&check) };
    let mut reader = Chunks(sent, usize::from(selector >> 1) + 1);
    let mut answers = Vec::new();
    let accepted = futures::executor::block_on(accept(&mut tokio::io::join(&mut reader, &mut answers), auth));
    let read = &sent[..sent.len() - reader.0.len()];
    match accepted {
        Ok(accepted) => {
            let method = if selector & 1 == 0 { codec::METHOD_NONE } else { codec::METHOD_USERPASS };
            assert_eq!(answers[..2], [5, method], "{answers:?}");
            assert_eq!(accepted.user.is_some(), selector & 1 == 1);
            assert_eq!(
                granted.load(std::sync::atomic::Ordering::Relaxed),
                selector & 1 == 1,
                "taken unchecked"
            );
            if let Some(user) = &accepted.user {
                assert_eq!(user, "user");
            }
            let mut tail = codec::encode_request(&accepted.request);
            tail.extend_from_slice(&accepted.early);
            assert!(read.ends_with(&tail), "the bytes read do not end with the request and its early bytes");
        }
        Err(AcceptError::NoAcceptableMethod { .. }) => assert_eq!(answers, [5, codec::METHOD_UNACCEPTABLE]),
        Err(AcceptError::BadCredentials { .. }) => assert_eq!(answers[2..], [1, 1], "{answers:?}"),
        Err(_) => assert!(answers.is_empty() || answers[0] == 5, "{answers:?}"),
    }
}

/// The HTTPS edge reading a visitor's ClientHello to route it by name, before any TLS: the
/// first byte sets how many bytes each read gets (1 to 256), the rest is what the visitor
/// sends. Nothing panics (or hangs, which libFuzzer's timeout catches); a name is found only
/// within the bytes read, which are a prefix of the input of at most `MAX_CLIENT_HELLO` bytes,
/// and it is in lowercase; "too large" only past `MAX_CLIENT_HELLO`.
pub fn client_hello(data: &[u8]) {
    use tunnel_core::tls::{read_client_hello, HelloError, MAX_CLIENT_HELLO};
    let Some((&size, sent)) = data.split_first() else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let mut reader = Chunks(sent, usize::from(size) + 1);
    match runtime.block_on(read_client_hello(&mut reader, Duration::from_secs(10))) {
        Ok((name, seen)) => {
            assert!(seen.len() <= MAX_CLIENT_HELLO && sent.starts_with(&seen), "not a prefix of the input");
            if let Some(name) = name {
                assert!(!name.is_empty() && !name.bytes().any(|b| b.is_ascii_uppercase()), "{name:?}");
                let seen = seen.to_ascii_lowercase();
                assert!(
                    seen.windows(name.len()).any(|w| w == name.as_bytes()),
                    "{name:?} is not in the bytes read"
                );
            }
        }
        Err(HelloError::TooLarge) => assert!(sent.len() > MAX_CLIENT_HELLO),
        Err(_) => {}
    }
}

/// An HTTP proxy's side: the first line is a proxy URL (and a host to check against it as a
/// `NO_PROXY` list), the rest what a proxy answers to `CONNECT`. Nothing panics; a URL that
/// parses names `HOST:PORT` with a valid port and never shows its credentials in `Debug`; a
/// reply is granted only for an `HTTP/1.x 2xx` status line.
pub fn proxy_reply(data: &[u8]) {
    use tunnel_core::transport::{check_reply, no_proxy_matches, HttpProxy};
    let (first, reply) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(url) = std::str::from_utf8(first) {
        if let Ok(proxy) = url.parse::<HttpProxy>() {
            let port = proxy.addr().rsplit_once(':').map(|(_, port)| port).unwrap_or_default();
            assert!(port.parse::<u16>().is_ok_and(|p| p > 0), "{}", proxy.addr());
            // `Debug` shows the address alone, the credentials redacted.
            let shown = format!("{proxy:?}");
            let userinfo = url.strip_prefix("http://").and_then(|rest| rest.rsplit_once('@')).map(|(u, _)| u);
            let credentials = if userinfo.is_some_and(|userinfo| !userinfo.is_empty()) {
                "Some(\"<redacted>\")"
            } else {
                "None"
            };
            assert_eq!(
                shown,
                format!("HttpProxy {{ addr: {:?}, credentials: {credentials} }}", proxy.addr())
            );
        }
        let _ = no_proxy_matches(url, url.split(',').next().unwrap_or_default());
    }
    if check_reply(reply).is_ok() {
        let status =
            reply.get(9..12).and_then(|s| std::str::from_utf8(s).ok()).and_then(|s| s.parse::<u16>().ok());
        let version = reply.starts_with(b"HTTP/1.0 ") || reply.starts_with(b"HTTP/1.1 ");
        assert!(version && status.is_some_and(|s| (200..300).contains(&s)), "{reply:?}");
    }
}

/// WebSocket, by the first byte: (0) an upgrade request and frames sent to a server, which
/// answers `101` exactly when it accepts and `4xx` when it refuses a whole head; (1) frames
/// read by either end, which yield no more payload than the bytes they came in; (2) the rest,
/// split at each `0xFF` into writes of a client, read back whole by a server; (3) a head
/// checked as a request and as a response, accepted only when it is one.
pub fn websocket(data: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tunnel_core::transport::websocket::{self, check_request, check_response, Role, WebSocketStream};
    let Some((&selector, rest)) = data.split_first() else { return };
    futures::executor::block_on(async {
        match selector % 4 {
            0 => {
                let mut answer = Vec::new();
                let accepted = websocket::accept(tokio::io::join(rest, &mut answer), Vec::new()).await;
                match accepted {
                    Ok(mut stream) => {
                        let mut payload = Vec::new();
                        let _ = stream.read_to_end(&mut payload).await;
                        assert!(payload.len() <= rest.len());
                        drop(stream);
                        assert!(answer.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
                    }
                    Err(_) => assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 4"), "{answer:?}"),
                }
            }
            1 => {
                for role in [Role::Server, Role::Client] {
                    let mut answers = Vec::new();
                    let mut stream = WebSocketStream::new(tokio::io::join(rest, &mut answers), role, &[]);
                    let mut payload = Vec::new();
                    let _ = stream.read_to_end(&mut payload).await;
                    assert!(payload.len() <= rest.len());
                }
            }
            2 => {
                let mut wire = Vec::new();
                let mut client = WebSocketStream::new(tokio::io::join(&[][..], &mut wire), Role::Client, &[]);
                for chunk in rest.split(|b| *b == 0xFF) {
                    client.write_all(chunk).await.unwrap();
                }
                client.shutdown().await.unwrap();
                drop(client);
                let mut server =
                    WebSocketStream::new(tokio::io::join(&wire[..], tokio::io::sink()), Role::Server, &[]);
                let mut back = Vec::new();
                server.read_to_end(&mut back).await.unwrap();
                let sent: Vec<u8> = rest.iter().copied().filter(|b| *b != 0xFF).collect();
                assert!(back == sent);
            }
            _ => {
                // Empty lines before a head are allowed (RFC 9112 section 2.2).
                let head = &rest[rest.iter().position(|b| !b"\r\n".contains(b)).unwrap_or(rest.len())..];
                if let Ok(accept) = check_request(rest) {
                    assert!(head.starts_with(b"GET ") && accept.len() == 28, "{accept}");
                }
                if check_response(rest, "dGhlIHNhbXBsZSBub25jZQ==").is_ok() {
                    assert!(head.starts_with(b"HTTP/1.1 101"));
                }
            }
        }
    });
}

/// Admin API requests: the first line is `METHOD PATH`, the rest the body. Decoding never
/// panics, and a new client decoded from a body prints back as JSON that decodes to the same.
pub fn admin_request(data: &[u8]) {
    use tunnel_core::admin::AdminRequest;
    let (first, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(first) = std::str::from_utf8(first) else { return };
    let (method, path) = first.split_once(' ').unwrap_or((first, "/"));
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else { return };
    if let Ok(AdminRequest::CreateClient { name, grant }) = AdminRequest::decode(&method, path, body) {
        let mut json = serde_json::to_value(&grant).expect("a grant prints as JSON");
        json["name"] = serde_json::Value::String(name.clone());
        let again = AdminRequest::decode(&method, path, json.to_string().as_bytes())
            .expect("a printed grant decodes");
        assert_eq!(again, AdminRequest::CreateClient { name, grant });
    } else if let Ok(AdminRequest::RegrantClient { name, grant }) = AdminRequest::decode(&method, path, body)
    {
        let json = serde_json::to_value(&grant).expect("a grant prints as JSON");
        let again = AdminRequest::decode(&method, path, json.to_string().as_bytes())
            .expect("a printed grant decodes");
        assert_eq!(again, AdminRequest::RegrantClient { name, grant });
    }
}

/// HTTP routing input: the first line is a request's Host header and path, the rest a route
/// (the `--http` form, or a `[[routes]]` table). Host patterns and routes print back to what
/// parses to the same; a request's host is its Host header but for case, port and one final
/// dot; its path loses every dot segment, and keeps none after, and its routing key is made
/// of plain segments, whether read from the path as sent or as asked; it is matched without
/// panicking, only by routes of the host's owner, and an exact-host, any-path route matches
/// every path of its host.
pub fn http_route(data: &[u8]) {
    use tunnel_core::http::{normalize_path, request_host, routing_key, HttpRoute, Matcher, RouteIndex};
    use tunnel_core::proto::{HostPattern, RouteId};
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    let (host, path) = first.split_once(' ').unwrap_or((first, "/"));
    if let Ok(pattern) = host.parse::<HostPattern>() {
        let again: HostPattern = pattern.to_string().parse().expect("a printed host pattern parses");
        assert_eq!(again, pattern);
    }
    let mut routes = Vec::new();
    if let Ok(route) = rest.trim().parse::<HttpRoute>() {
        if route.matcher.path == tunnel_core::proto::PathMatch::Any
            || matches!(route.matcher.path, tunnel_core::proto::PathMatch::Prefix(_))
        {
            let again: HttpRoute = route.to_string().parse().expect("a printed route parses");
            assert_eq!(again, route);
        }
        routes.push(route);
    }
    if let Ok(file) = toml::from_str::<tunnel_core::config::RouteFile>(rest) {
        if let Ok(route) = file.build() {
            routes.push(route);
        }
    }
    let request =
        http::Request::get(path.parse::<http::Uri>().unwrap_or_default()).header("host", host).body(());
    let Ok(mut request) = request else { return };
    let Some(name) = request_host(&request) else { return };
    // The target's authority, when it has one, wins over the Host header.
    let raw = request.uri().authority().map_or(host, |authority| authority.as_str()).to_ascii_lowercase();
    let rest = raw.strip_prefix(name.as_str()).expect("the host is the Host header's start");
    let port = rest.strip_prefix('.').unwrap_or(rest);
    assert!(
        port.is_empty() || port.starts_with(':') && port[1..].bytes().all(|b| b.is_ascii_digit()),
        "{host}"
    );
    let valid = normalize_path(request.uri_mut()).is_ok();
    let normal = request.uri().clone();
    if valid && normal.path().starts_with('/') {
        for segment in normal.path().split('/') {
            let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
            assert!(decoded != "." && decoded != "..", "{path} -> {normal}");
        }
        assert!(normalize_path(request.uri_mut()).is_ok(), "{path}");
        assert_eq!(request.uri(), &normal, "normalising twice changes nothing");
    }
    // The routing key of any path that starts with `/`: plain segments of unreserved
    // characters and escapes with uppercase digits, and its own key.
    let asked = request.uri().path();
    let key = routing_key(asked);
    if asked.starts_with('/') {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~/%ABCDEF".contains(&b);
        assert!(key.starts_with('/') && !key.contains("//") && key.bytes().all(allowed), "{path} -> {key}");
        assert!(key.split('/').all(|s| s != "." && s != ".."), "{path} -> {key}");
        assert_eq!(routing_key(&key), key, "{path}");
    }
    // No dot segment is left for an origin to resolve, whether it reads escaped slashes and
    // backslashes as `/` or not, and drops parameters or not.
    if valid && normal.path().starts_with('/') {
        let mut slashes = normal.path().replace('\\', "/");
        for escaped in ["%2f", "%2F", "%5c", "%5C"] {
            slashes = slashes.replace(escaped, "/");
        }
        let bare = |s: &str| s.split(';').next().unwrap_or("").to_owned();
        assert!(slashes.split('/').map(bare).all(|s| s != "." && s != ".."), "{path} -> {normal}");
    }
    // One owner per pattern, as the server's claims make it; a TLS passthrough of another
    // client on the name's parent wildcard; a fallback for every owner.
    let owner_of_pattern = |pattern: &HostPattern| format!("owner of {pattern}");
    let indexed: Vec<_> = routes
        .iter()
        .enumerate()
        .filter_map(|(i, route)| {
            Some(tunnel_core::http::IndexedRoute {
                id: RouteId(i as u64),
                owner: owner_of_pattern(&route.matcher.host),
                matcher: Matcher::new(route.matcher.clone()).ok()?,
                target: i,
            })
        })
        .collect();
    let parent =
        name.split_once('.').and_then(|(_, parent)| format!("*.{parent}").parse::<HostPattern>().ok());
    let tls: Vec<_> = parent
        .iter()
        .filter(|p| !indexed.iter().any(|r| r.matcher.spec().host == **p))
        .map(|p| (p.clone(), RouteId(100), owner_of_pattern(p), 100))
        .collect();
    let fallbacks: Vec<_> = indexed
        .iter()
        .map(|r| r.owner.clone())
        .chain(tls.iter().map(|t| t.2.clone()))
        .map(|owner| (owner, RouteId(200), 200))
        .collect();
    // The host's owner, worked out here on its own: the most specific pattern naming it.
    let patterns: Vec<HostPattern> = indexed
        .iter()
        .map(|r| r.matcher.spec().host.clone())
        .chain(tls.iter().map(|t| t.0.clone()))
        .collect();
    let named_by = std::iter::once(name.clone())
        .chain(name.match_indices('.').map(|(at, _)| format!("*.{}", &name[at + 1..])));
    let owner = named_by
        .filter_map(|candidate| candidate.parse::<HostPattern>().ok())
        .find(|candidate| patterns.contains(candidate))
        .map(|pattern| owner_of_pattern(&pattern));
    let index = RouteIndex::new(indexed, fallbacks, tls);
    assert_eq!(index.owner_of(&name), owner.as_deref(), "{name}");
    let hit = index.lookup(&name, request.uri().path(), "GET", request.headers());
    assert_eq!(hit.map(|h| h.owner), owner.as_deref(), "only the host's owner answers for it, and always");
    if let Some(passed) = index.lookup_tls(&name) {
        assert_eq!(Some(passed.owner), owner.as_deref(), "a passthrough of another client took {name}");
    }
    if let Ok(exact) = name.parse::<HostPattern>() {
        let any = Matcher::new(tunnel_core::proto::HttpMatch::host(exact)).unwrap();
        let single = RouteIndex::new(
            [tunnel_core::http::IndexedRoute {
                id: RouteId(0),
                owner: "o".into(),
                matcher: any,
                target: 0usize,
            }],
            [],
            [],
        );
        assert!(
            single.lookup(&name, request.uri().path(), "GET", request.headers()).is_some(),
            "{name} {path}"
        );
    }
}

/// The port lease file a server reads at start: what decodes encodes back to the same leases.
pub fn lease_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(leases) = tunnel_core::server::leases::decode(text) {
        let text = tunnel_core::server::leases::encode(&leases).unwrap();
        assert_eq!(tunnel_core::server::leases::decode(&text).unwrap(), leases);
    }
}

/// Frame codec: what decodes re-encodes to the same bytes; a refusal is for a real reason.
pub fn frame(data: &[u8]) {
    let max = 1024;
    match frame::decode(data, max) {
        Ok(Some((payload, used))) => assert_eq!(frame::encode_to_vec(payload), &data[..used]),
        Ok(None) => {
            let announced = data.first_chunk::<4>().map(|h| u32::from_be_bytes(*h) as usize);
            assert!(
                announced.is_none_or(|n| n <= max && data.len() < 4 + n),
                "complete frame reported as partial"
            );
        }
        Err(FrameTooLarge { len, .. }) => assert!(len > max as u64),
    }
}

/// Control messages: decode then re-encode gives the bytes that were decoded.
pub fn control_message(data: &[u8]) {
    if let Ok(message) = ControlMessage::decode(data) {
        let encoded = message.encode();
        assert!(data.starts_with(&encoded), "re-encoding differs: {message:?}");
        assert_eq!(ControlMessage::decode(&encoded).unwrap(), message);
    }
}

/// Stream headers and the reply to a local forward: likewise (both encodings carry a 2-byte
/// length prefix).
pub fn stream_header(data: &[u8]) {
    if let Ok(header) = StreamHeader::decode(data) {
        let encoded = header.encode();
        assert!(data.starts_with(&encoded[2..]), "re-encoding differs: {header:?}");
        assert_eq!(StreamHeader::decode(&encoded[2..]).unwrap(), header);
    }
    if let Ok(reply) = StreamReply::decode(data) {
        let encoded = reply.encode();
        assert!(data.starts_with(&encoded[2..]), "re-encoding differs: {reply:?}");
        assert_eq!(StreamReply::decode(&encoded[2..]).unwrap(), reply);
    }
}

/// Handshake messages: likewise.
pub fn handshake_message(data: &[u8]) {
    if let Ok(message) = HandshakeMessage::decode(data) {
        let encoded = message.encode();
        assert!(data.starts_with(&encoded), "re-encoding differs: {message:?}");
        assert_eq!(HandshakeMessage::decode(&encoded).unwrap(), message);
    }
}

/// Splits arbitrary bytes into handshake frame payloads, as a peer would send them.
fn frames(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Ok(Some((payload, used))) = frame::decode(data, MAX_HANDSHAKE_FRAME) {
        out.push(payload);
        data = &data[used..];
    }
    out
}

/// The server's handshake fed arbitrary client frames: no panic, and never an accepted client
/// (no input can carry a valid proof without the token).
pub fn server_handshake(data: &[u8]) {
    let credentials = Credentials::default()
        .with_shared(Token::new("fuzz-shared-token").unwrap())
        .with_client("worker-1", Token::new("fuzz-client-token").unwrap());
    let binding = ChannelBinding::Tls([7; 32]);
    let mut machine = ServerHandshake::new(&credentials, &binding, [9; 32], Duration::from_secs(10));
    for payload in frames(data) {
        match machine.handle(payload) {
            Ok(ServerStep::Reply(_)) => {}
            Ok(ServerStep::Accept { client, .. }) => panic!("accepted {client:?} without the token"),
            Ok(ServerStep::Refuse { .. }) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The client's handshake fed arbitrary server frames: no panic, and never an established
/// session (no input can prove the token).
pub fn client_handshake(data: &[u8]) {
    let binding = ChannelBinding::Tls([7; 32]);
    let (mut machine, _hello) =
        ClientHandshake::new("fuzz-client", Token::new("fuzz-shared-token").unwrap(), &binding, [3; 32]);
    for payload in frames(data) {
        match machine.handle(payload) {
            Ok(ClientStep::Send(_)) => {}
            Ok(ClientStep::Done(_)) => panic!("session established with a server that cannot know the token"),
            Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Config files: parsing and validating (which touches no file) never panic, and what parses
/// renders back to TOML that parses to the same rendering, as an operator renders them.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let origin = Path::new("fuzz.toml");
    if let Ok(server) = ServerFile::parse(text, origin) {
        let _ = server.validate();
        let rendered = server.to_toml().expect("a parsed server file renders");
        let again = ServerFile::parse(&rendered, origin).expect("a rendered server file parses");
        assert_eq!(again.to_toml().unwrap(), rendered, "rendering is not stable");
    }
    if let Ok(client) = ClientFile::parse(text, origin) {
        let _ = client.validate();
        let rendered = client.to_toml().expect("a parsed client file renders");
        let again = ClientFile::parse(&rendered, origin).expect("a rendered client file parses");
        assert_eq!(again.to_toml().unwrap(), rendered, "rendering is not stable");
    }
}

/// Flag and key value parsers: no panic, and what parses prints back to something that parses
/// to the same value.
pub fn text_parsers(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(ports) = text.parse::<PortSet>() {
        assert_eq!(ports.to_string().parse::<PortSet>().unwrap(), ports);
        assert!(ports.len() <= 65_535);
    }
    if let Ok(spec) = text.parse::<RemoteForwardSpec>() {
        assert_eq!(spec.to_string().parse::<RemoteForwardSpec>().unwrap(), spec);
    }
    if let Ok(spec) = text.parse::<LocalForwardSpec>() {
        assert_eq!(spec.to_string().parse::<LocalForwardSpec>().unwrap(), spec);
    }
    if let Ok(spec) = text.parse::<ServiceSpec>() {
        assert_eq!(spec.to_string().parse::<ServiceSpec>().unwrap(), spec);
    }
    if let Ok(rules) = text.parse::<TargetRules>() {
        assert_eq!(rules.to_string().parse::<TargetRules>().unwrap(), rules);
    }
    if let Ok(rule) = text.parse::<VisitRule>() {
        assert_eq!(rule.to_string().parse::<VisitRule>().unwrap(), rule);
    }
    if let Ok(glob) = text.parse::<Glob>() {
        assert!(
            glob.matches(text) || text.contains(['*', '?']),
            "a glob without wildcards must match itself"
        );
    }
    if let Ok(target) = text.parse::<TargetAddr>() {
        assert_eq!(target.to_string().parse::<TargetAddr>().unwrap(), target);
    }
    if let Ok(spec) = text.parse::<SocksSpec>() {
        assert_eq!(spec.to_string().parse::<SocksSpec>().unwrap(), spec);
    }
    if let Ok(net) = text.parse::<IpNet>() {
        assert_eq!(net.to_string().parse::<IpNet>().unwrap(), net);
        assert!(net.contains(net.addr()) && net.covers(&net));
    }
    if let Ok(fp) = text.parse::<Fingerprint>() {
        assert_eq!(fp.to_string().parse::<Fingerprint>().unwrap(), fp);
    }
    let _ = text.parse::<HumanDuration>();
}
