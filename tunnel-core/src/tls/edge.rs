//! TLS for the HTTP edge: certificates chosen by the name a visitor asks for (SNI), HTTP/2 and
//! HTTP/1.1 by ALPN; and reading a ClientHello without answering it, so a connection whose
//! name is routed to a client's own TLS origin can be passed through untouched.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{ServerIdentity, TlsError};

/// Largest ClientHello read before giving up (a real one is well under 2 KiB; post-quantum key
/// shares make it about 1.8 KiB, several records at most).
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// Picks the certificate whose names cover the SNI; the default otherwise (no SNI, an unknown
/// name).
#[derive(Debug)]
struct ByName {
    certificates: Vec<(CertificateDer<'static>, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for ByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name().and_then(|n| ServerName::try_from(n.to_owned()).ok()) else {
            return Some(self.default.clone());
        };
        let chosen = self.certificates.iter().find(|(leaf, _)| valid_for(leaf, &name));
        Some(chosen.map_or_else(|| self.default.clone(), |(_, key)| key.clone()))
    }
}

/// Whether the certificate `leaf` is valid for `name` (a DNS name or an IP address).
pub fn covers(leaf: &CertificateDer<'_>, name: &str) -> bool {
    ServerName::try_from(name.to_owned()).is_ok_and(|name| valid_for(leaf, &name))
}

fn valid_for(leaf: &CertificateDer<'_>, name: &ServerName<'_>) -> bool {
    webpki::EndEntityCert::try_from(leaf)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok())
}

/// The edge's TLS configuration: `certificates` by the names in them, `default` for anything
/// else; TLS 1.2 and 1.3 (browsers), ALPN `h2` then `http/1.1`.
pub fn edge_config(
    certificates: Vec<ServerIdentity>,
    default: ServerIdentity,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    let load = |identity: ServerIdentity| -> Result<(CertificateDer<'static>, Arc<CertifiedKey>), TlsError> {
        let (chain, key) = identity.into_parts();
        let leaf = chain.first().cloned().unwrap_or_else(|| CertificateDer::from(Vec::new()));
        let signing = provider.key_provider.load_private_key(key)?;
        let certified = CertifiedKey::new(chain, signing);
        // A key whose public half it cannot tell is taken on trust, as rustls takes it.
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(mismatch) => return Err(mismatch.into()),
        }
        Ok((leaf, Arc::new(certified)))
    };
    let resolver = ByName {
        certificates: certificates.into_iter().map(load).collect::<Result<_, _>>()?,
        default: load(default)?.1,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Why a ClientHello could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// The connection failed or closed first.
    #[error("reading the ClientHello")]
    Io(#[from] std::io::Error),
    /// Not a TLS ClientHello.
    #[error("not a TLS ClientHello")]
    Tls(#[source] rustls::Error),
    /// Larger than [`MAX_CLIENT_HELLO`].
    #[error("ClientHello larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    /// Not complete within the deadline.
    #[error("no complete ClientHello within {0:?}")]
    Timeout(Duration),
}

/// Reads a ClientHello (across as many records as it takes) without answering it: returns the
/// name it asks for, if any, and every byte read, to be replayed to whoever handles the
/// connection.
pub async fn read_client_hello<R: AsyncRead + Unpin>(
    io: &mut R,
    deadline: Duration,
) -> Result<(Option<String>, Vec<u8>), HelloError> {
    let read = async {
        let mut acceptor = rustls::server::Acceptor::default();
        let mut seen = Vec::new();
        let mut chunk = [0u8; 2048];
        loop {
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            if seen.len() + n > MAX_CLIENT_HELLO {
                return Err(HelloError::TooLarge);
            }
            seen.extend_from_slice(&chunk[..n]);
            let mut fresh = &chunk[..n];
            while !fresh.is_empty() {
                acceptor.read_tls(&mut fresh)?;
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let name = accepted.client_hello().server_name().map(str::to_ascii_lowercase);
                    return Ok((name, seen));
                }
                Ok(None) => {}
                Err((err, _alert)) => return Err(HelloError::Tls(err)),
            }
        }
    };
    tokio::time::timeout(deadline, read).await.map_err(|_| HelloError::Timeout(deadline))?
}
