use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{provider, Fingerprint, TlsError, ALPN};

/// File names used for a generated certificate inside the state directory.
const GENERATED_CERT: &str = "server-cert.pem";
const GENERATED_KEY: &str = "server-key.pem";

/// The server's certificate chain and private key.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let first = tunnel_core::tls::ServerIdentity::load_or_generate(dir.path(), &["localhost".into()]).unwrap();
/// let again = tunnel_core::tls::ServerIdentity::load_or_generate(dir.path(), &[]).unwrap();
/// assert_eq!(first.fingerprint(), again.fingerprint());
/// ```
pub struct ServerIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for ServerIdentity {
    fn clone(&self) -> Self {
        Self { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

impl ServerIdentity {
    /// The leaf certificate (the first of the chain).
    pub fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.chain.first()
    }

    /// Loads a PEM certificate chain (leaf first) and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Self::from_chain_and_key(cert, key, read_pem(key)?)
    }

    /// The chain in `cert`, and the key in `key_pem` (read from `key`).
    fn from_chain_and_key(cert: &Path, key: &Path, key_pem: Vec<u8>) -> Result<Self, TlsError> {
        let chain = read_certs(cert)?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|source| TlsError::Io { path: key.to_owned(), source })?
            .ok_or_else(|| TlsError::Pem { path: key.to_owned(), what: "no private key found".into() })?;
        Ok(Self { chain, key })
    }

    /// Loads the certificate kept in `state_dir`, or generates a self-signed one for `names`
    /// (DNS names or IP addresses) and keeps it there (key file mode 0600, in a directory
    /// created with mode 0700).
    pub fn load_or_generate(state_dir: &Path, names: &[String]) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (state_dir.join(GENERATED_CERT), state_dir.join(GENERATED_KEY));
        if cert_path.exists() && key_path.exists() {
            // Kept by this server: refused if someone else could have written it.
            let key_pem = crate::fs::read_private(&key_path)
                .map_err(|source| TlsError::Io { path: key_path.clone(), source })?;
            return Self::from_chain_and_key(&cert_path, &key_path, key_pem);
        }
        let generated = rcgen::generate_simple_self_signed(subject_names(names))?;
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::Io { path, source }
        };
        crate::fs::create_private_dir(state_dir).map_err(io_err(state_dir))?;
        crate::fs::write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())
            .map_err(io_err(&key_path))?;
        crate::fs::write_replacing(&cert_path, generated.cert.pem().as_bytes(), 0o644)
            .map_err(io_err(&cert_path))?;
        Self::from_pem_files(&cert_path, &key_path)
    }

    /// A self-signed certificate for `names` (DNS names or IP addresses; `localhost` and the
    /// loopback addresses are always in it), held in memory only: its fingerprint changes with
    /// every call, so pinning clients must learn it from this process.
    pub fn generate(names: &[String]) -> Result<Self, TlsError> {
        let generated = rcgen::generate_simple_self_signed(subject_names(names))?;
        let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
        Ok(Self { chain: vec![generated.cert.der().clone()], key })
    }

    /// The chain and the key.
    pub(super) fn into_parts(self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (self.chain, self.key)
    }

    /// Fingerprint of the leaf certificate, for clients to pin.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_der(self.chain.first().map(|c| c.as_ref()).unwrap_or_default())
    }
}

/// Builds the rustls server configuration (TLS 1.3, ALPN `tunnel/1`, or `http/1.1` for
/// clients that come as WebSocket: see [`crate::transport::websocket`]).
pub fn server_config(identity: ServerIdentity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![ALPN.to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The names a generated certificate carries: the loopback ones, then `names`.
fn subject_names(names: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    sans.extend(names.iter().filter(|n| !n.is_empty()).cloned());
    sans.dedup();
    sans
}

/// Largest PEM file read (a certificate chain, a key, a bundle of CA certificates): far above
/// any real one (Debian's bundle of every trusted CA is about 200 KiB).
const MAX_PEM_BYTES: u64 = 4 * 1024 * 1024;

/// A PEM file's bytes: a regular file of at most 4 MiB (a FIFO would hold the reader, a
/// reload the whole server, until someone wrote to it; `/dev/zero` fill the memory).
pub fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::fs::read_regular(path, MAX_PEM_BYTES)
        .map_err(|source| TlsError::Io { path: path.to_owned(), source })
}

/// The certificates of a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Io { path: path.to_owned(), source })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: PathBuf::from(path), what: "no certificate found".into() });
    }
    Ok(certs)
}

/// Fingerprint of the first certificate in a PEM file.
pub fn fingerprint_of_pem_file(path: &Path) -> Result<Fingerprint, TlsError> {
    Ok(Fingerprint::of_der(read_certs(path)?[0].as_ref()))
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_generated_key_is_private_in_a_private_directory() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        ServerIdentity::load_or_generate(&state, &[]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join(GENERATED_KEY)), 0o600);
        assert_eq!(mode(&state.join(GENERATED_CERT)), 0o644);
    }
}
