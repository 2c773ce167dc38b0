//! Opening a session with the server: one attempt over the configured wire, or, with
//! [`Wire::Auto`], a second over the other wire when the first broke on the way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::error::{classify_connect, classify_session, Failure};
use super::{Client, ClientError, Interruption, Link, MIN_SERVER_VERSION};
use crate::log::Escaped;
use crate::proto::handshake::HandshakeError;
use crate::session::{Session, SessionError};
use crate::transport::{ConnectError, Wire};

impl Client {
    /// One attempt ([`Self::dial`]: two with [`Wire::Auto`], each under the handshake
    /// timeout), and a server new enough.
    pub(super) async fn connect(&self, link: &Link) -> Result<Dialed, Failure> {
        let session = self.dial(link).await?;
        if session.version < MIN_SERVER_VERSION {
            return Err(
                ClientError::ServerTooOld { version: session.version, needed: MIN_SERVER_VERSION }.into()
            );
        }
        Ok(session)
    }

    /// One attempt over the configured wire; with [`Wire::Auto`], a second one over the other
    /// wire when the first opened a connection and then broke before our server answered
    /// (something in the path may let only HTTPS through). A server's refusal, a certificate
    /// that does not match, or no connection at all are the same over either wire.
    async fn dial(&self, link: &Link) -> Result<Dialed, Failure> {
        let first = match self.config.wire {
            Wire::Auto if link.websocket_first.load(Ordering::Relaxed) => Wire::WebSocket,
            Wire::Auto => Wire::Tcp,
            chosen => chosen,
        };
        let failed = match self.dial_over(link, first).await {
            Ok(dialed) => return Ok(dialed),
            Err(failed) => failed,
        };
        if self.config.wire != Wire::Auto || !failed.path {
            return Err(failed.failure);
        }
        let other = if first == Wire::Tcp { Wire::WebSocket } else { Wire::Tcp };
        let reason = match &failed.failure {
            Failure::Transient(reason) => crate::log::Chain(reason).to_string(),
            Failure::Permanent(err) => crate::log::Chain(err).to_string(),
        };
        tracing::info!("over {first}: {}; trying {other}", Escaped(&reason));
        match self.dial_over(link, other).await {
            Ok(dialed) => {
                link.websocket_first.store(other == Wire::WebSocket, Ordering::Relaxed);
                Ok(dialed)
            }
            // A permanent failure over either wire settles it (the other's reason is logged).
            Err(Failed { failure: Failure::Permanent(err), .. }) => Err(err.into()),
            Err(Failed { failure: Failure::Transient(second), .. }) => match failed.failure {
                Failure::Permanent(err) => {
                    tracing::info!("over {other}: {}", Escaped(&crate::log::Chain(&second).to_string()));
                    Err(err.into())
                }
                Failure::Transient(first_failure) => Err(Failure::Transient(Interruption::BothWires {
                    first,
                    first_failure: Box::new(first_failure),
                    second: other,
                    second_failure: Box::new(second),
                })),
            },
        }
    }

    /// One attempt over `wire`, all under the handshake timeout: TCP (or the proxy's
    /// tunnel), TLS, the WebSocket upgrade if asked, the handshake.
    async fn dial_over(&self, link: &Link, wire: Wire) -> Result<Dialed, Failed> {
        let config = &self.config;
        // Set once the TCP connection (or the proxy's tunnel) is open: a TLS handshake or an
        // upgrade that then hangs is the path's doing as much as one cut.
        let opened = Arc::new(AtomicBool::new(false));
        let home = shard_for(self.shards.as_ref(), &link.transport);
        let attempt = async {
            let way =
                link.transport.connect_noting(&link.server, link.proxy(config), wire, &opened, home.as_ref());
            let connection = match way.await {
                Ok(connection) => connection,
                Err(err) => {
                    let path = match &err {
                        ConnectError::Unreachable { .. } | ConnectError::Proxy { .. } => false,
                        ConnectError::Tls { source, .. } => !is_servers_answer(source),
                        _ => true,
                    };
                    let proxied = link.proxy(config).is_some();
                    return Err(Failed { failure: classify_connect(err, proxied), path });
                }
            };
            let (session, established) = Session::connect(
                connection.io,
                &connection.binding,
                &config.name,
                config.token.clone(),
                &config.session,
            )
            .await
            .map_err(|err| {
                // Our server answered (a refusal, or a proof of another token): the path works.
                let answered = matches!(
                    err,
                    SessionError::Handshake(
                        HandshakeError::Refused { .. } | HandshakeError::ServerProofInvalid
                    )
                );
                Failed { failure: classify_session(err), path: !answered }
            })?;
            if wire == Wire::WebSocket {
                self.metrics.websocket_upgrade();
            }
            let lane_key = established.lane_key;
            Ok(Dialed { session, version: established.version, wire, lane_key, home: home.clone() })
        };
        tokio::time::timeout(config.handshake_timeout, attempt).await.unwrap_or_else(|_| {
            let reason = Interruption::TimedOut {
                server: link.server.clone(),
                proxy: link.proxy(config).map(|proxy| proxy.addr().to_owned()),
                timeout: config.handshake_timeout,
            };
            Err(Failed { failure: Failure::Transient(reason), path: opened.load(Ordering::Relaxed) })
        })
    }
}

/// The thread a new connection over `transport` goes to: the next of `shards`, unless the
/// transport is the program's own (its sockets, if any, are registered where it made them).
pub(super) fn shard_for(
    shards: Option<&crate::shards::Shards>,
    transport: &crate::transport::ClientTransport,
) -> Option<crate::shards::Shard> {
    let custom = matches!(transport, crate::transport::ClientTransport::Custom(_));
    shards.filter(|_| !custom).map(|shards| shards.next().clone())
}

/// An attempt that failed, and whether the way it took may be what failed: it opened a
/// connection that then broke before our server answered.
struct Failed {
    failure: Failure,
    path: bool,
}

/// Whether a TLS failure is the server's own answer, the same over any path: its certificate,
/// or the alert a plaintext server sends.
fn is_servers_answer(err: &std::io::Error) -> bool {
    let tls = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    matches!(
        tls,
        Some(rustls::Error::InvalidCertificate(_))
            | Some(rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion))
    )
}

/// An authenticated session and the protocol version it speaks.
pub(super) struct Dialed {
    pub(super) session: Session,
    pub(super) version: u16,
    /// What carries it.
    pub(super) wire: Wire,
    /// What more connections prove to join it.
    pub(super) lane_key: crate::auth::LaneKey,
    /// The thread its socket is registered with (see [`crate::shards`]), where its driver runs.
    pub(super) home: Option<crate::shards::Shard>,
}
