use crate::forward::RemoteForwardSpec;
use crate::log::Escaped;
use crate::proto::handshake::{HandshakeError, RefuseCode};
use crate::proto::{GoodbyeCode, RefusalCode};
use crate::session::{FrameError, SessionEnd, SessionError};
use crate::tls::FingerprintMismatch;
use crate::transport::{ConnectError, ProxyReplyError};

/// Why a client stopped for good. Transient failures are retried and never surface here
/// (unless the retry budget runs out).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server rejected our token, or could not prove it holds it.
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    /// The server's certificate is not the one we trust.
    #[error("server certificate rejected: {0}")]
    ServerCertificate(String),
    /// The server refused the connection for a reason retrying cannot fix.
    #[error("server refused the connection ({code}): {}", Escaped(.message))]
    Refused {
        /// Server's reason code.
        code: RefuseCode,
        /// Server's explanation.
        message: String,
    },
    /// The server refused one of our forwards.
    #[error("forward {spec} refused by the server ({code}): {}", Escaped(.message))]
    ForwardRefused {
        /// The forward as configured.
        spec: RemoteForwardSpec,
        /// Server's reason code.
        code: RefusalCode,
        /// Server's explanation.
        message: String,
    },
    /// The server refused one of our HTTP or TLS routes.
    #[error("{route} refused by the server ({code}): {}", Escaped(.message))]
    RouteRefused {
        /// The route as configured.
        route: String,
        /// Server's reason code.
        code: RefusalCode,
        /// Server's explanation.
        message: String,
    },
    /// The route set given to the client is invalid.
    #[error("invalid routes")]
    InvalidRoutes(#[from] super::RouteSetError),
    /// The server refused one of our private services.
    #[error("service {name:?} refused by the server ({code}): {}", Escaped(.message))]
    ServiceRefused {
        /// The service name.
        name: String,
        /// Server's reason code.
        code: RefusalCode,
        /// Server's explanation.
        message: String,
    },
    /// A local forward could not listen.
    #[error("cannot listen for local forward {spec}")]
    Bind {
        /// The forward as configured.
        spec: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Another client connected with our name and took over.
    #[error("replaced: {}", Escaped(.0))]
    Replaced(String),
    /// The HTTP proxy refused for good: it wants other credentials (407) or forbids the server
    /// (403).
    #[error("{0}")]
    Proxy(String),
    /// The peer does not speak this protocol (or a compatible version of it).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// `max_attempts` consecutive connection attempts failed.
    #[error("gave up after {attempts} attempts; last error: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

/// The outcome of one connection attempt or session.
#[derive(Debug)]
pub(super) enum Failure {
    /// Stop and report.
    Permanent(ClientError),
    /// Wait and reconnect.
    Transient(String),
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Self {
        Self::Permanent(err)
    }
}

/// Classifies a failed TLS handshake: certificate and protocol problems are permanent, a
/// connection that dropped mid-handshake is not.
pub(super) fn classify_connect(err: ConnectError) -> Failure {
    match err {
        ConnectError::Tls { source, .. } => classify_tls(source),
        ConnectError::Proxy { ref source, .. }
            if source
                .get_ref()
                .and_then(|e| e.downcast_ref::<ProxyReplyError>())
                .is_some_and(ProxyReplyError::is_final) =>
        {
            ClientError::Proxy(crate::log::Chain(&err).to_string()).into()
        }
        other => Failure::Transient(crate::log::Chain(&other).to_string()),
    }
}

fn classify_tls(err: std::io::Error) -> Failure {
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return Failure::Transient(format!("TLS handshake interrupted: {err}"));
    };
    match tls {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            match other.0.downcast_ref::<FingerprintMismatch>() {
                Some(mismatch) => ClientError::ServerCertificate(format!(
                    "{mismatch} (check the pinned fingerprint; the server prints its own at start)"
                ))
                .into(),
                None => ClientError::ServerCertificate(other.to_string()).into(),
            }
        }
        rustls::Error::InvalidCertificate(cert) => ClientError::ServerCertificate(format!(
            "{cert:?} (check the CA, or pin the server's fingerprint)"
        ))
        .into(),
        rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion) => ClientError::Protocol(
            "the server does not speak TLS on this port (is it running in plaintext mode?)".into(),
        )
        .into(),
        other => ClientError::Protocol(format!("TLS handshake failed: {other}")).into(),
    }
}

/// Classifies a failed tunnel handshake.
pub(super) fn classify_session(err: SessionError) -> Failure {
    match err {
        SessionError::Handshake(HandshakeError::Refused { code: RefuseCode::AuthFailed, message }) => {
            ClientError::AuthFailed(format!("the server rejected the token ({})", Escaped(&message))).into()
        }
        SessionError::Handshake(HandshakeError::Refused { code, message }) if code.is_permanent() => {
            ClientError::Refused { code, message }.into()
        }
        SessionError::Handshake(HandshakeError::Refused { code, message }) => {
            Failure::Transient(format!("server refused the connection ({code}): {}", Escaped(&message)))
        }
        SessionError::Handshake(HandshakeError::ServerProofInvalid) => ClientError::AuthFailed(
            "the server could not prove it knows the token (different tokens, or not our server)".into(),
        )
        .into(),
        SessionError::Handshake(other) => ClientError::Protocol(format!(
            "{} (is this a tunnel server, and TLS on on both sides?)",
            crate::log::Chain(&other)
        ))
        .into(),
        SessionError::Frame(FrameError::TooLarge(_)) => ClientError::Protocol(format!(
            "{} (is this a tunnel server, and TLS on on both sides?)",
            crate::log::Chain(&err)
        ))
        .into(),
        SessionError::Frame(FrameError::Closed) => {
            Failure::Transient("the server closed the connection during the handshake".into())
        }
        other => Failure::Transient(format!("handshake failed: {}", crate::log::Chain(&other))),
    }
}

/// Classifies the end of an established session.
pub(super) fn classify_end(end: SessionEnd) -> Failure {
    match end {
        SessionEnd::Goodbye { code: GoodbyeCode::Replaced, message } => ClientError::Replaced(message).into(),
        SessionEnd::Goodbye { code: GoodbyeCode::Revoked, message } => {
            ClientError::AuthFailed(format!("the server revoked this client's token ({})", Escaped(&message)))
                .into()
        }
        other => Failure::Transient(format!("session ended: {other}")),
    }
}
