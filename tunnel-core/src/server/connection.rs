//! From an accepted TCP connection to an authenticated session: transport detection, TLS, and
//! the handshake, all under the handshake timeout and the unauthenticated-connection cap.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::auth::ChannelBinding;
use crate::proto::handshake::{AuthenticatedClient, RefuseCode};
use crate::session::{read_and_refuse, Session, SessionError};
use crate::transport::{self, BoxedIo, TLS_HANDSHAKE_RECORD, TLS_PROTOCOL_VERSION_ALERT};

/// Largest TLS record a plaintext server reads before answering with an alert.
const MAX_TLS_RECORD: usize = 16 * 1024 + 256;

#[derive(Debug, thiserror::Error)]
enum EstablishError {
    #[error("connection closed before sending anything")]
    Empty,
    #[error("plaintext client on a TLS port (refused with TLS-required)")]
    PlaintextClient,
    #[error("TLS client on a plaintext server (answered with a TLS alert)")]
    TlsClient,
    #[error("TLS handshake failed")]
    Tls(#[source] std::io::Error),
    #[error(transparent)]
    Session(#[from] SessionError),
}

pub(super) async fn handle(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, stop: CancellationToken) {
    let Ok(admission) = shared.pending.admit(peer.ip()) else {
        if crate::log::HANDSHAKE_OVERLOAD.allow() {
            tracing::info!(%peer, "too many connections in handshake from this source; dropping");
        }
        return;
    };
    if let Err(err) = transport::configure_tcp(&tcp) {
        tracing::debug!(%peer, "socket options: {err}");
    }
    let established = tokio::select! {
        result = tokio::time::timeout(shared.config.handshake_timeout, establish(&shared, tcp)) => result,
        () = admission.evicted() => {
            if crate::log::HANDSHAKE_OVERLOAD.allow() {
                tracing::info!(%peer, "handshake cut: its slot went to a newer connection (all slots taken)");
            }
            return;
        }
        () = stop.cancelled() => return,
    };
    drop(admission);
    match established {
        Ok(Ok((session, client))) => super::session::run(shared, session, client, peer, stop).await,
        Ok(Err(err)) => {
            if crate::log::HANDSHAKE_FAILURES.allow() {
                tracing::info!(%peer, "handshake failed: {}", crate::log::Escaped(&crate::log::Chain(&err).to_string()))
            }
        }
        Err(_) => {
            if crate::log::HANDSHAKE_FAILURES.allow() {
                tracing::info!(%peer, "handshake timed out after {:?}", shared.config.handshake_timeout)
            }
        }
    }
}

async fn establish(
    shared: &Shared,
    mut tcp: TcpStream,
) -> Result<(Session, AuthenticatedClient), EstablishError> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await.map_err(SessionError::from)? == 0 {
        return Err(EstablishError::Empty);
    }
    let is_tls = first[0] == TLS_HANDSHAKE_RECORD;
    let (io, binding): (BoxedIo, ChannelBinding) = match (&shared.config.tls, is_tls) {
        (Some(tls), true) => transport::accept_tls(tls.clone(), tcp).await.map_err(EstablishError::Tls)?,
        (Some(_), false) => {
            read_and_refuse(
                &mut tcp,
                RefuseCode::TlsRequired,
                "this server requires TLS; the client connected in plaintext",
            )
            .await;
            return Err(EstablishError::PlaintextClient);
        }
        (None, true) => {
            refuse_tls(&mut tcp).await;
            return Err(EstablishError::TlsClient);
        }
        (None, false) => (Box::new(transport::buffered(tcp)), ChannelBinding::Plaintext),
    };
    let config = &shared.config;
    Ok(Session::accept(io, &binding, &config.credentials, &config.session, config.handshake_timeout).await?)
}

/// Reads the client's first TLS record (so closing does not reset the connection under the
/// alert), then answers with a fatal `protocol_version` alert.
async fn refuse_tls(tcp: &mut TcpStream) {
    let mut header = [0u8; 5];
    if tcp.read_exact(&mut header).await.is_ok() {
        let len = usize::from(u16::from_be_bytes([header[3], header[4]])).min(MAX_TLS_RECORD);
        let mut record = vec![0u8; len];
        let _ = tcp.read_exact(&mut record).await;
    }
    let _ = tcp.write_all(&TLS_PROTOCOL_VERSION_ALERT).await;
    let _ = tcp.shutdown().await;
}
