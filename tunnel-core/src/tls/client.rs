use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{provider, Fingerprint, TlsError, ALPN};

/// How the client decides to trust the server's certificate.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Accept exactly the certificate with this fingerprint (any name, any issuer).
    Pinned(Fingerprint),
    /// Accept a certificate whose fingerprint is any of these (the servers of one deployment,
    /// each with a certificate of its own).
    PinnedAny(Vec<Fingerprint>),
    /// Accept a certificate chaining to one of these roots and valid for the server's name.
    Roots(Vec<CertificateDer<'static>>),
}

impl ServerTrust {
    /// Reads CA certificates from a PEM file.
    pub fn ca_file(path: &Path) -> Result<Self, TlsError> {
        Ok(Self::Roots(super::server::read_certs(path)?))
    }
}

/// Builds the rustls client configuration (TLS 1.3, ALPN `tunnel/1`) for `trust`.
pub fn client_config(trust: &ServerTrust) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut config = match trust {
        ServerTrust::Pinned(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                expected: vec![*fp],
                provider: provider(),
            }))
            .with_no_client_auth(),
        ServerTrust::PinnedAny(fps) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                expected: fps.clone(),
                provider: provider(),
            }))
            .with_no_client_auth(),
        ServerTrust::Roots(certs) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs {
                roots.add(cert.clone())?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The TLS configuration a client uses toward `https://` origins: the system's trusted roots,
/// plus the CA certificates of `extra_ca` (a PEM file) for origins with a private CA (see
/// [`trusting`]). (The client offers ALPN `http/1.1` itself.)
pub fn origin_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let extra = match extra_ca {
        Some(path) => super::server::read_certs(path)?,
        None => Vec::new(),
    };
    trusting(extra)
}

/// A client TLS configuration trusting the system's roots and `extra` (private CAs); TLS 1.2
/// and 1.3. System roots that cannot be read are skipped (and logged): a server they would
/// have verified then fails with a certificate error naming its issuer.
pub fn trusting(extra: Vec<CertificateDer<'static>>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for error in &system.errors {
        tracing::warn!("system CA certificates: {error}");
    }
    let (added, ignored) = roots.add_parsable_certificates(system.certs);
    tracing::debug!(added, ignored, "system CA certificates");
    for cert in extra {
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The error a pinned verifier reports, recoverable from the rustls error for a clear message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("server certificate fingerprint is {actual}, expected {}", list(expected))]
pub struct FingerprintMismatch {
    /// The pinned fingerprints.
    pub expected: Vec<Fingerprint>,
    /// What the server presented.
    pub actual: Fingerprint,
}

fn list(fingerprints: &[Fingerprint]) -> String {
    fingerprints.iter().map(ToString::to_string).collect::<Vec<_>>().join(" or ")
}

/// Trusts certificates by their SHA-256, then checks the handshake signature with the key as
/// usual, so only the holder of such a certificate's private key can complete the handshake.
#[derive(Debug)]
struct PinnedVerifier {
    expected: Vec<Fingerprint>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = Fingerprint::of_der(end_entity.as_ref());
        if self.expected.contains(&actual) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(FingerprintMismatch { expected: self.expected.clone(), actual }),
            ))))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The config is TLS 1.3 only; a TLS 1.2 signature is never legitimate here.
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
