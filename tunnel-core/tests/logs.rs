//! What the server logs about its peers: their text escaped, their failures rate limited; and
//! no event field that JSON logs would write twice.
//! Each test captures the log lines of its own thread (the runtime is single-threaded, so the
//! server's tasks log there too).

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunnel_core::auth::Token;
use tunnel_core::proto::GoodbyeCode;
use tunnel_core::session::{Session, SessionConfig, SessionEnd};
use tunnel_core::tls::{client_config, ServerTrust};
use tunnel_core::transport::{ClientTransport, Connection};

/// Log output of the current thread, as the operator's terminal would receive it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn a_goodbye_reason_cannot_forge_log_lines_or_drive_the_terminal() {
    let log = Captured::default();
    let _guard = log.install();
    let server = start_server(|_| {}).await;

    let tls = client_config(&ServerTrust::Pinned(server.fingerprint)).unwrap();
    let server_addr = server.addr.to_string();
    let Connection { io, binding } =
        ClientTransport::tls(tls, &server_addr).unwrap().connect(&server_addr).await.unwrap();
    let token = Token::new(TOKEN).unwrap();
    let (session, _) =
        Session::connect(io, &binding, "painter", token, &SessionConfig::default()).await.unwrap();
    let driver = tokio::spawn(session.driver);
    let reason = "bye\n2099-01-01T00:00:00Z  INFO tunnel_core::server: forged\u{1b}[2J\u{202e}";
    session.control.close(GoodbyeCode::Shutdown, reason).await;
    assert_eq!(driver.await.unwrap(), SessionEnd::Closed);

    eventually("the server logs the end of the session", || {
        let text = log.text();
        async move { text.contains("session ended") }
    })
    .await;
    let text = log.text();
    assert!(
        text.contains("bye\\n2099-01-01T00:00:00Z  INFO tunnel_core::server: forged\\x1b[2J\\u{202e}"),
        "{text}"
    );
    assert!(!text.contains('\u{1b}') && !text.contains('\u{202e}'), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("2099")), "a forged line: {text}");
    server.stop().await;
}

#[tokio::test]
async fn failed_handshakes_are_logged_once_per_window() {
    let log = Captured::default();
    let _guard = log.install();
    let server = start_server(|_| {}).await;

    for _ in 0..5 {
        // Not TLS: the server answers with a refusal and closes.
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut rest)).await.expect("never closed");
    }
    eventually("the server logs a failed handshake", || {
        let text = log.text();
        async move { text.contains("handshake failed") }
    })
    .await;
    // A successful session afterwards: once its start is logged, every failure was handled.
    let mut client = start_client(server.client_config("after", &[]));
    client.connected().await;
    eventually("the server logs the new session", || {
        let text = log.text();
        async move { text.contains("session established") }
    })
    .await;
    let text = log.text();
    assert_eq!(text.matches("handshake failed").count(), 1, "{text}");
    assert!(!text.contains("more handshake failures"), "a summary before the window ended: {text}");
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_clients_failed_visits_are_logged_once_per_window() {
    let log = Captured::default();
    let _guard = log.install();
    let server = start_server(|_| {}).await;
    let (_held, closed) = refusing_address();
    let mut client = start_client(server.client_config("owner", &[&format!("0:{closed}")]));
    let public = client.connected().await[0].public_addr;

    // Each visitor is closed once the client failed to reach the target, after its log line.
    for _ in 0..5 {
        let mut tcp = TcpStream::connect(public).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut rest)).await.expect("never closed");
    }
    let text = log.text();
    assert_eq!(text.matches("cannot reach the target").count(), 1, "{text}");
    client.stop().await;
    server.stop().await;
}

/// A server sending its answer to the route table, or its offer of more connections, over and
/// over, gets the client's log lines about them once. Before, each repeat of the answer logged
/// a line per route ("remote forward ready"), and each repeat of an offer the client could not
/// use logged it again: a server (or, in plaintext mode, whoever sits on the path) could fill
/// the client's disk with ten-byte messages.
#[tokio::test]
async fn a_server_repeating_its_answer_or_its_offer_is_logged_once() {
    use tunnel_core::proto::{ControlMessage, RouteOutcome, RouteResult};

    let log = Captured::default();
    let _guard = log.install();
    let (mut config, server) = one_session_server(|mut session| async move {
        let driver = tokio::spawn(session.driver);
        while let Some(message) = session.messages.recv().await {
            let ControlMessage::RouteTable { version, entries } = message else { continue };
            let public_addr = Some("127.0.0.1:40000".parse().unwrap());
            let ready = |entry: &tunnel_core::proto::RouteEntry| RouteResult {
                id: entry.id,
                outcome: RouteOutcome::Ready { public_addr },
            };
            let results: Vec<_> = entries.iter().map(ready).collect();
            for _ in 0..50 {
                let answer = ControlMessage::RouteTableResult { version, results: results.clone() };
                session.control.send(answer).await.unwrap();
                session.control.send(ControlMessage::Lanes { session: 7, connections: 1 }).await.unwrap();
            }
            // Messages are taken in order: once this is logged, every repeat above was taken.
            let fence = ControlMessage::Draining { deadline_ms: 60_000, message: "fence 5d1c".to_owned() };
            session.control.send(fence).await.unwrap();
            break;
        }
        (session.control, driver)
    })
    .await;
    config.remotes = vec!["40000:127.0.0.1:1".parse().unwrap()];
    config.connections = 2;
    // The fence leaves the client believing the server drains: it stops without waiting.
    config.drain_timeout = std::time::Duration::from_millis(100);
    let client = start_client(config);
    eventually("the fence logged", || std::future::ready(log.text().contains("fence 5d1c"))).await;

    let text = log.text();
    assert_eq!(text.matches("remote forward ready").count(), 1, "{text}");
    assert_eq!(text.matches("connections per session").count(), 1, "{text}");
    client.stop().await;
    drop(server);
}

/// `--log-format json` writes the logger's module as `target` beside the event's fields: an
/// event field of that name (a visit's target, a forward's) made a second `target` key, and a
/// collector kept one of the two. Every event in the library's source names its address
/// another way (`to = %target`, `local = ...`).
#[test]
fn no_event_has_a_field_named_target() {
    fn sources(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    let mut files = Vec::new();
    sources(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    assert!(files.len() > 50, "the library's sources were not found: {files:?}");
    let field = regex::Regex::new(r"[(,]\s*(?:[%?]target\b|target\s*=\s*[%?])").unwrap();
    let mut offending = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if field.is_match(line) {
                offending.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(offending.is_empty(), "event fields named target:\n{}", offending.join("\n"));
}
