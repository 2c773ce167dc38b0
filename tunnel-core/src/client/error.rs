use crate::forward::RemoteForwardSpec;
use crate::log::Escaped;
use crate::proto::handshake::{HandshakeError, RefuseCode};
use crate::proto::{GoodbyeCode, RefusalCode};
use crate::session::{FrameError, SessionEnd, SessionError};
use crate::tls::FingerprintMismatch;
use crate::transport::websocket::{UpgradeError, TLS_REQUIRED_REASON};
use crate::transport::{ConnectError, ProxyReplyError};

/// Why a client stopped for good. Transient failures are retried and never surface here
/// (unless the retry budget runs out).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server rejected our token, or our proof of it: a proof is bound to the TLS
    /// connection it is made over, so a proxy on the way that ends TLS and starts its own
    /// makes a right token fail too.
    #[error(
        "authentication failed: the server rejected the token ({}); if the token is right, something on the way may end TLS and start its own (a proof holds only over the TLS connection it was made on)",
        Escaped(.message)
    )]
    TokenRejected {
        /// Server's explanation.
        message: String,
    },
    /// The server could not prove it holds our token: different tokens, or not our server.
    #[error("authentication failed: the server could not prove it knows the token (different tokens, or not our server)")]
    ServerProofInvalid,
    /// The server revoked this client's token (its configuration no longer lists it).
    #[error("authentication failed: the server revoked this client's token ({})", Escaped(.message))]
    Revoked {
        /// Server's explanation.
        message: String,
    },
    /// The server's certificate is not the one we trust.
    #[error("server certificate rejected ({hint})")]
    ServerCertificate {
        /// What to check.
        hint: &'static str,
        /// What was wrong with it: a [`FingerprintMismatch`] against a pin, else the TLS
        /// error (a [`rustls::Error`]).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
    /// A local listener (a local forward, a SOCKS proxy) could not listen.
    #[non_exhaustive]
    #[error("cannot listen for {what} {spec}")]
    Bind {
        /// What the listener is for.
        what: LocalListener,
        /// The forward or proxy as configured.
        spec: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Another client connected with our name and took over.
    #[error("replaced: {}", Escaped(.0))]
    Replaced(String),
    /// The HTTP proxy refused for good: it wants other credentials (407) or forbids the server
    /// (403).
    #[error("the HTTP proxy refused for good")]
    Proxy(#[source] ConnectError),
    /// The server does not speak TLS on this port.
    #[error("the server does not speak TLS on this port (is it running in plaintext mode?)")]
    NotTls,
    /// The TLS handshake failed for a reason other than the certificate.
    #[error("TLS handshake failed")]
    Tls(#[source] rustls::Error),
    /// The peer does not speak this protocol (or a compatible version of it).
    #[error("protocol error (is this a tunnel server, and TLS on on both sides?)")]
    Handshake(#[source] SessionError),
    /// The server speaks an older protocol than this client needs.
    #[error("the server speaks protocol version {version}; this client needs {needed} (upgrade the server)")]
    ServerTooOld {
        /// The server's version.
        version: u16,
        /// The oldest this client works with.
        needed: u16,
    },
    /// The server broke the protocol after the handshake (what it did is described).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// `max_attempts` consecutive connection attempts failed.
    #[error("gave up after {attempts} attempts")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        last: Interruption,
    },
}

/// Why a connection attempt or a session ended in a way the client retries: the link, not
/// the client's credentials or configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Interruption {
    /// No connection to the server, or one that broke before the tunnel handshake.
    #[error(transparent)]
    Connect(ConnectError),
    /// The server turned the connection away for now (it is full, or draining).
    #[non_exhaustive]
    #[error("server refused the connection ({code}): {}", Escaped(.message))]
    Refused {
        /// Why.
        code: RefuseCode,
        /// The server's explanation.
        message: String,
    },
    /// The server closed the connection during the handshake.
    #[error("the server closed the connection during the handshake")]
    ClosedInHandshake,
    /// The tunnel handshake failed on the way (a connection cut, a stalled multiplexer).
    #[error("handshake failed")]
    Handshake(#[source] SessionError),
    /// No authenticated session within the handshake timeout.
    #[non_exhaustive]
    #[error("no authenticated session with {server}{} within {timeout:?}", through(.proxy))]
    TimedOut {
        /// The server dialed.
        server: String,
        /// The HTTP proxy on the way (`HOST:PORT`), if any: it may be what never answered.
        proxy: Option<String>,
        /// The handshake timeout.
        timeout: std::time::Duration,
    },
    /// The session closed before the route table was sent.
    #[error("session closed while sending the route table")]
    TableNotSent,
    /// The server did not answer the route table within the handshake timeout.
    #[error("the server did not answer the route table in time")]
    TableNotAnswered,
    /// An established session ended.
    #[error("session ended: {0}")]
    Ended(SessionEnd),
    /// Both wires failed ([`crate::transport::Wire::Auto`]): each one's whole reason, in the
    /// message. It has no [`std::error::Error::source`] (there are two): a program looks into
    /// `first_failure` and `second_failure`.
    #[non_exhaustive]
    #[error("over {first}: {}; over {second}: {}", crate::log::Chain(.first_failure.as_ref()), crate::log::Chain(.second_failure.as_ref()))]
    BothWires {
        /// The wire tried first.
        first: crate::transport::Wire,
        /// Why it failed.
        first_failure: Box<Interruption>,
        /// The wire tried second.
        second: crate::transport::Wire,
        /// Why it failed.
        second_failure: Box<Interruption>,
    },
    /// What ends the client at its first connection (a certificate it does not trust, expired
    /// ones included, a TLS alert), met after a session with this server had worked: the
    /// settings were right, so it is taken for something on the way (a middlebox answering in
    /// the server's place, a renewal late) and retried.
    #[error("refused after sessions that worked")]
    AfterSessions(#[source] Box<ClientError>),
}

impl ClientError {
    /// Whether the server turned this client away for its credentials (a rejected or revoked
    /// token, a server that cannot prove it holds it), as opposed to its routes, its name or
    /// the connection.
    pub fn is_authentication(&self) -> bool {
        matches!(self, Self::TokenRejected { .. } | Self::ServerProofInvalid | Self::Revoked { .. })
    }

    /// Whether this could be the answer of something between the client and its server rather
    /// than the server's own: a certificate (an intercepting middlebox's, or the server's own
    /// expired), a TLS alert. The server's word on the client (its token, its name, its routes)
    /// is not, nor a proxy's refusal of the credentials, which retried could lock the account.
    pub(super) fn may_be_the_way(&self) -> bool {
        matches!(self, Self::ServerCertificate { .. } | Self::NotTls | Self::Tls(_))
    }
}

/// The outcome of one connection attempt or session.
#[derive(Debug)]
pub(super) enum Failure {
    /// Stop and report.
    Permanent(ClientError),
    /// Wait and reconnect.
    Transient(Interruption),
}

/// What a local listener of the client is for (see [`ClientError::Bind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LocalListener {
    /// A local forward (`-L`).
    Forward,
    /// A SOCKS proxy (`-D`).
    Socks,
}

impl std::fmt::Display for LocalListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Forward => "local forward",
            Self::Socks => "SOCKS proxy",
        })
    }
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Self {
        Self::Permanent(err)
    }
}

/// ` through the proxy HOST:PORT`, or nothing.
fn through(proxy: &Option<String>) -> String {
    proxy.as_ref().map(|proxy| format!(" through the proxy {proxy}")).unwrap_or_default()
}

/// Classifies a failed connection: certificate and protocol problems are permanent, a
/// connection that dropped mid-handshake is not. `proxied`: it went through an HTTP proxy,
/// which may be what presented a certificate of its own.
pub(super) fn classify_connect(err: ConnectError, proxied: bool) -> Failure {
    match err {
        ConnectError::Tls { ref source, .. } => match classify_tls(source, proxied) {
            Some(failure) => failure.into(),
            None => Failure::Transient(Interruption::Connect(err)),
        },
        ConnectError::Proxy { ref source, .. }
            if source
                .get_ref()
                .and_then(|e| e.downcast_ref::<ProxyReplyError>())
                .is_some_and(ProxyReplyError::is_final) =>
        {
            ClientError::Proxy(err).into()
        }
        // A plaintext upgrade request to a server that requires TLS: its answer says so, as a
        // plaintext hello's refusal does.
        ConnectError::Upgrade { ref source, .. }
            if source.get_ref().and_then(|e| e.downcast_ref::<UpgradeError>()).is_some_and(|e| {
                matches!(e, UpgradeError::Refused { status: 400, reason } if reason == TLS_REQUIRED_REASON)
            }) =>
        {
            let message = "this server requires TLS; the client connected in plaintext".to_owned();
            ClientError::Refused { code: RefuseCode::TlsRequired, message }.into()
        }
        other => Failure::Transient(Interruption::Connect(other)),
    }
}

/// The permanent failure a TLS error is, if it is one: a certificate we do not trust, or an
/// alert from the server (a plaintext server's, no version, cipher or protocol in common, a
/// name it has no certificate for), which a retry would only meet again; an internal error is
/// the one alert that may pass. Anything else (`None`) is the link's: a handshake cut, or bytes
/// that are not TLS at all, which is what a load balancer's error page or a captive portal
/// sends while the server is away.
fn classify_tls(err: &std::io::Error, proxied: bool) -> Option<ClientError> {
    let tls = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())?;
    Some(match tls {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))
            if other.0.downcast_ref::<FingerprintMismatch>().is_some() =>
        {
            // The mismatch itself: rustls shows what it wraps only in its debug form.
            let mismatch = other.0.downcast_ref::<FingerprintMismatch>().cloned();
            let hint = match proxied {
                false => "check the pinned fingerprint; the server prints its own at start",
                true => "check the pinned fingerprint; the server prints its own at start. Or the HTTP proxy on the way intercepts TLS",
            };
            let source: Box<dyn std::error::Error + Send + Sync> = match mismatch {
                Some(mismatch) => Box::new(mismatch),
                None => Box::new(tls.clone()),
            };
            ClientError::ServerCertificate { hint, source }
        }
        rustls::Error::InvalidCertificate(_) => {
            let hint = match proxied {
                false => "check the CA, or pin the server's fingerprint",
                true => "check the CA, or pin the server's fingerprint. Or the HTTP proxy on the way intercepts TLS",
            };
            ClientError::ServerCertificate { hint, source: Box::new(tls.clone()) }
        }
        rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion) => ClientError::NotTls,
        rustls::Error::AlertReceived(rustls::AlertDescription::InternalError) => return None,
        rustls::Error::AlertReceived(_) | rustls::Error::PeerIncompatible(_) => ClientError::Tls(tls.clone()),
        _ => return None,
    })
}

/// Classifies a failed tunnel handshake.
pub(super) fn classify_session(err: SessionError) -> Failure {
    match err {
        SessionError::Handshake(HandshakeError::Refused { code: RefuseCode::AuthFailed, message }) => {
            ClientError::TokenRejected { message }.into()
        }
        SessionError::Handshake(HandshakeError::Refused { code, message }) if code.is_permanent() => {
            ClientError::Refused { code, message }.into()
        }
        SessionError::Handshake(HandshakeError::Refused { code, message }) => {
            Failure::Transient(Interruption::Refused { code, message })
        }
        SessionError::Handshake(HandshakeError::ServerProofInvalid) => ClientError::ServerProofInvalid.into(),
        err @ (SessionError::Handshake(_) | SessionError::Frame(FrameError::TooLarge(_))) => {
            ClientError::Handshake(err).into()
        }
        SessionError::Frame(FrameError::Closed) => Failure::Transient(Interruption::ClosedInHandshake),
        other => Failure::Transient(Interruption::Handshake(other)),
    }
}

/// Classifies the end of an established session.
pub(super) fn classify_end(end: SessionEnd) -> Failure {
    match end {
        SessionEnd::Goodbye { code: GoodbyeCode::Replaced, message } => ClientError::Replaced(message).into(),
        SessionEnd::Goodbye { code: GoodbyeCode::Revoked, message } => {
            ClientError::Revoked { message }.into()
        }
        other => Failure::Transient(Interruption::Ended(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(tls: rustls::Error) -> Failure {
        let source = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        classify_connect(ConnectError::Tls { peer: "server.test:443".into(), source }, false)
    }

    /// A certificate refused behind an HTTP proxy: the hint says the proxy may be the one
    /// presenting it (a proxy that intercepts TLS), not only the CA or the pin.
    #[test]
    fn a_certificate_refused_through_a_proxy_names_the_proxy_as_a_cause() {
        for proxied in [false, true] {
            let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
            let source = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
            let err = ConnectError::Tls { peer: "server.test".into(), source };
            let Failure::Permanent(err) = classify_connect(err, proxied) else { panic!("retried") };
            assert_eq!(err.to_string().contains("proxy on the way intercepts TLS"), proxied, "{err}");
        }
    }

    #[test]
    fn tls_failures_of_trust_or_setup_are_permanent_and_bytes_that_are_not_tls_are_retried() {
        let untrusted = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert!(matches!(classify(untrusted), Failure::Permanent(ClientError::ServerCertificate { .. })));
        let plaintext = rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion);
        assert!(matches!(classify(plaintext), Failure::Permanent(ClientError::NotTls)));
        let nothing_in_common =
            rustls::Error::PeerIncompatible(rustls::PeerIncompatible::NoCipherSuitesInCommon);
        assert!(matches!(classify(nothing_in_common), Failure::Permanent(ClientError::Tls(_))));
        // An HTTP error page where the server was, a cut or garbled handshake: the link's.
        let garbage = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        assert!(matches!(classify(garbage), Failure::Transient(Interruption::Connect(_))));
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::InternalError);
        assert!(matches!(classify(alert), Failure::Transient(_)));
        // Out of date: at the first connection as final as any certificate not trusted, as
        // the dates are checked before the issuer (an impostor's expired certificate says
        // `Expired`, not `UnknownIssuer`). After sessions that worked, retried (`links.rs`).
        for dated in [rustls::CertificateError::Expired, rustls::CertificateError::NotValidYet] {
            let dated = rustls::Error::InvalidCertificate(dated);
            assert!(matches!(classify(dated), Failure::Permanent(ClientError::ServerCertificate { .. })));
        }
        // What a server says of our settings: no cipher or group, no protocol, no such name.
        for alert in [
            rustls::AlertDescription::HandshakeFailure,
            rustls::AlertDescription::NoApplicationProtocol,
            rustls::AlertDescription::UnrecognisedName,
        ] {
            let alert = rustls::Error::AlertReceived(alert);
            assert!(matches!(classify(alert), Failure::Permanent(ClientError::Tls(_))));
        }
    }
}
