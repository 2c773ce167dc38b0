//! Answers to the authority's challenges while an order waits, and the HTTPS edge's choice of
//! certificate with ACME on: a TLS-ALPN-01 answer for a handshake asking `acme-tls/1`, else the
//! certificate issued for the name, else the edge's own choice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{Acme, AcmeError};
use crate::http::ChallengeAnswers;

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The answers posted for orders in progress.
#[derive(Default)]
pub(super) struct Answers {
    /// By token: the name and the key authorization.
    http01: Mutex<HashMap<String, (String, String)>>,
    /// By name: the validation certificate.
    tls_alpn01: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

/// An answer posted; withdrawn when dropped (the order is over, whatever its outcome).
pub(super) struct Posted<'a> {
    answers: &'a Answers,
    key: Key,
}

enum Key {
    Http01(String),
    TlsAlpn01(String),
}

impl Drop for Posted<'_> {
    fn drop(&mut self) {
        match &self.key {
            Key::Http01(token) => drop(lock(&self.answers.http01).remove(token)),
            Key::TlsAlpn01(name) => drop(lock(&self.answers.tls_alpn01).remove(name)),
        }
    }
}

impl Answers {
    /// Answers `token` for `name` with `key_authorization` until the guard drops.
    pub(super) fn post_http01(&self, name: &str, token: &str, key_authorization: &str) -> Posted<'_> {
        let answer = (name.to_owned(), key_authorization.to_owned());
        lock(&self.http01).insert(token.to_owned(), answer);
        Posted { answers: self, key: Key::Http01(token.to_owned()) }
    }

    /// Answers `acme-tls/1` handshakes for `name` with a certificate carrying `digest` (the
    /// SHA-256 of the key authorization) until the guard drops.
    pub(super) fn post_tls_alpn01(&self, name: &str, digest: &[u8]) -> Result<Posted<'_>, AcmeError> {
        let bad = |e: rcgen::Error| AcmeError::Certificate { name: name.to_owned(), why: e.to_string() };
        let key = rcgen::KeyPair::generate().map_err(bad)?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(bad)?;
        params.custom_extensions.push(rcgen::CustomExtension::new_acme_identifier(digest));
        let cert = params.self_signed(&key).map_err(bad)?;
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signing = crate::tls::provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| AcmeError::Certificate { name: name.to_owned(), why: e.to_string() })?;
        let certified = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing));
        lock(&self.tls_alpn01).insert(name.to_owned(), certified);
        Ok(Posted { answers: self, key: Key::TlsAlpn01(name.to_owned()) })
    }
}

impl ChallengeAnswers for Acme {
    fn http01(&self, host: &str, token: &str) -> Option<String> {
        let posted = lock(&self.answers.http01);
        posted.get(token).filter(|(name, _)| name == host).map(|(_, answer)| answer.clone())
    }
}

impl Acme {
    /// The HTTPS edge's TLS configuration `base` with the issued certificates ahead of its
    /// own, and TLS-ALPN-01 answered. The last wrapping is kept: a configuration is wrapped
    /// once, not per connection.
    pub fn edge_tls(self: &Arc<Self>, base: &Arc<rustls::ServerConfig>) -> Arc<rustls::ServerConfig> {
        let mut wrapped = lock(&self.wrapped);
        if let Some((from, to)) = wrapped.as_ref() {
            if Arc::ptr_eq(from, base) {
                return to.clone();
            }
        }
        let mut config = rustls::ServerConfig::clone(base);
        config.cert_resolver = Arc::new(WithIssued { acme: self.clone(), base: base.cert_resolver.clone() });
        if self.config.challenge == super::Challenge::TlsAlpn01 {
            config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        let config = Arc::new(config);
        *wrapped = Some((base.clone(), config.clone()));
        config
    }
}

/// The certificate choice with ACME on.
#[derive(Debug)]
struct WithIssued {
    acme: Arc<Acme>,
    base: Arc<dyn ResolvesServerCert>,
}

impl ResolvesServerCert for WithIssued {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        // A validation offers `acme-tls/1` alone (RFC 8737, section 3).
        let validation = hello.alpn().is_some_and(|offered| offered.eq([ACME_TLS_ALPN]));
        if validation {
            // Only the validation certificate: no handshake for `acme-tls/1` gets any other.
            return name.and_then(|name| lock(&self.acme.answers.tls_alpn01).get(&name).cloned());
        }
        match name.and_then(|name| self.acme.certificate(&name)) {
            Some(issued) => Some(issued),
            None => self.base.resolve(hello),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::{AcmeConfig, Challenge};

    #[test]
    fn an_http01_answer_is_for_its_name_and_token_only_and_withdrawn_with_its_guard() {
        let acme = Acme::new(AcmeConfig::new("/nonexistent".into(), Challenge::Http01));
        let posted = acme.answers.post_http01("app.example.com", "tok3n", "tok3n.thumb");
        assert_eq!(acme.http01("app.example.com", "tok3n").as_deref(), Some("tok3n.thumb"));
        assert_eq!(acme.http01("other.example.com", "tok3n"), None, "another host's request");
        assert_eq!(acme.http01("app.example.com", "other"), None);
        drop(posted);
        assert_eq!(acme.http01("app.example.com", "tok3n"), None);
    }

    #[test]
    fn a_tls_alpn01_certificate_carries_the_digest_and_is_withdrawn_with_its_guard() {
        let acme = Acme::new(AcmeConfig::new("/nonexistent".into(), Challenge::TlsAlpn01));
        let digest = [7u8; 32];
        let posted = acme.answers.post_tls_alpn01("app.example.com", &digest).unwrap();
        let cert = lock(&acme.answers.tls_alpn01).get("app.example.com").cloned().unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert.cert[0]).unwrap();
        // id-pe-acmeIdentifier (1.3.6.1.5.5.7.1.31), critical, an OCTET STRING of the digest.
        let extension =
            parsed.extensions().iter().find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31").unwrap();
        assert!(extension.critical);
        assert_eq!(extension.value, [&[0x04, 32][..], &digest].concat());
        drop(posted);
        assert!(lock(&acme.answers.tls_alpn01).is_empty());
    }
}
