//! Authentication and transport security, end to end over real sockets.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tunnel_core::auth::{Credentials, Token};
use tunnel_core::client::ClientError;
use tunnel_core::tls::{server_config, Fingerprint, ServerIdentity};
use tunnel_core::transport::ClientTransport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_fails_permanently_while_other_clients_keep_working() {
    let server = start_server(|_| {}).await;
    let echo = echo_target().await;
    let mut good = start_client(server.client_config("good", &[&format!("0:{echo}")]));
    let public = good.connected().await[0].public_addr;

    let bad =
        start_client(client_config_for(server.addr, server.fingerprint, "bad", "not-the-token-0123456", &[]));
    let err = bad.failure().await;
    assert!(matches!(err, ClientError::TokenRejected { .. }), "{err}");
    assert!(err.is_authentication());
    assert!(err.to_string().starts_with("authentication failed: the server rejected the token"), "{err}");

    assert_eq!(round_trip(public, b"unaffected").await.unwrap(), b"unaffected");
    good.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_fingerprint_is_refused_before_any_proof_is_sent() {
    // A TLS server with our certificate that counts the application bytes it ever receives.
    let dir = tempfile::tempdir().unwrap();
    let identity = ServerIdentity::load_or_generate(dir.path(), &[]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(identity).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let (r, h) = (received.clone(), handshakes.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let mut buf = vec![0u8; 4096];
                while let Ok(n @ 1..) = tls.read(&mut buf).await {
                    r.fetch_add(n, Ordering::SeqCst);
                }
            }
        }
    });

    let wrong = Fingerprint::of_der(b"some other certificate");
    let client = start_client(client_config_for(addr, wrong, "victim", TOKEN, &[]));
    let err = client.failure().await;
    assert!(matches!(err, ClientError::ServerCertificate { .. }), "{err}");
    // The hint, then what TLS found, kept as the source.
    assert!(err.to_string().contains("check the pinned fingerprint"), "{err}");
    let source = std::error::Error::source(&err).expect("the mismatch is kept").to_string();
    assert!(source.starts_with("server certificate fingerprint is "), "{source}");
    assert!(source.contains(&format!("expected {wrong}")), "{source}");
    assert!(handshakes.load(Ordering::SeqCst) >= 1, "the client never even connected");
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "the client sent application data to an unverified server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_client_against_a_tls_server_gets_a_clear_refusal() {
    let server = start_server(|_| {}).await;
    let mut config = server.client_config("plain", &[]);
    config.transport = ClientTransport::Plaintext;
    let err = start_client(config.clone()).failure().await;
    assert!(err.to_string().contains("TLS required"), "{err}");
    // The same over WebSocket: the upgrade request is answered in HTTP, and the client stops
    // with the same refusal. Before, it read a hello's refusal as a broken HTTP answer, and
    // retried forever.
    config.wire = tunnel_core::transport::Wire::WebSocket;
    let err = start_client(config).failure().await;
    assert!(err.to_string().contains("TLS required"), "{err}");
    // The server is unharmed.
    let mut ok = start_client(server.client_config("ok", &[]));
    ok.connected().await;
    ok.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_against_a_plaintext_server_gets_a_clear_error() {
    let server = start_server(|config| config.tls = None).await;
    let err = start_client(server.client_config("tls", &[])).failure().await;
    assert!(err.to_string().contains("does not speak TLS"), "{err}");
    let mut config = server.client_config("plain", &[]);
    config.transport = ClientTransport::Plaintext;
    let mut ok = start_client(config);
    ok.connected().await;
    ok.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_token_is_the_only_way_to_claim_that_name() {
    let server = start_server(|config| {
        config.credentials = Credentials::default()
            .with_shared(Token::new(TOKEN).unwrap())
            .with_client("worker-1", Token::new("worker-1-secret-token").unwrap());
    })
    .await;
    let impostor = start_client(server.client_config("worker-1", &[]));
    assert!(matches!(
        impostor.failure().await,
        ClientError::TokenRejected { .. } | ClientError::ServerProofInvalid
    ));
    let mut real = start_client(client_config_for(
        server.addr,
        server.fingerprint,
        "worker-1",
        "worker-1-secret-token",
        &[],
    ));
    real.connected().await;
    real.stop().await;
    server.stop().await;
}
