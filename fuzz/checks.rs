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

#[path = "checks/http.rs"]
mod http_checks;
pub use http_checks::{http_route, visitor_headers};

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
/// reply is granted only for an `HTTP/1.x 2xx` status line; a reply head read whole (interim
/// replies passed over) is granted only when one of its lines is such a status line, and
/// within [`tunnel_core::transport::MAX_REPLY_HEAD`], leaving what follows it unread.
pub fn proxy_reply(data: &[u8]) {
    use tunnel_core::transport::{check_reply, no_proxy_matches, read_reply, HttpProxy, MAX_REPLY_HEAD};
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
            let rest = url.get(7..).filter(|_| url[..7].eq_ignore_ascii_case("http://"));
            let userinfo = rest.and_then(|rest| rest.rsplit_once('@')).map(|(u, _)| u);
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
    let mut rest = reply;
    if futures::executor::block_on(read_reply(&mut rest)).is_ok() {
        let head = &reply[..reply.len() - rest.len()];
        assert!(head.len() <= MAX_REPLY_HEAD && (head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n")));
        assert!(head.split_inclusive(|b| *b == b'\n').any(|line| check_reply(line).is_ok()), "{head:?}");
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
