//! What the server logs about its peers: their text escaped, their failures rate limited.
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
