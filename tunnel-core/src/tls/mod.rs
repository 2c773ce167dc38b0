//! rustls configuration: the server's certificate (from PEM files, or generated with rcgen and
//! kept in a state directory), and the client's trust in it (a CA file or a pinned SHA-256
//! fingerprint). TLS 1.3 only; there is no way to build a client that trusts an unknown server.

mod client;
mod edge;
mod fingerprint;
mod server;

pub use client::{client_config, origin_config, trusting, FingerprintMismatch, ServerTrust};
pub use edge::{covers, edge_config, read_client_hello, HelloError, MAX_CLIENT_HELLO};
pub use fingerprint::{Fingerprint, FingerprintError};
pub use server::{fingerprint_of_pem_file, read_certs, read_pem, server_config, ServerIdentity};

use std::path::PathBuf;

/// ALPN protocol id spoken inside TLS.
pub const ALPN: &[u8] = b"tunnel/1";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        what: String,
    },
    /// Certificate generation failed.
    #[error("generating a certificate")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected the certificate, key or settings.
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider: ring, with AES-128-GCM preferred over the default order's AES-256-GCM
/// (both ends are ours; it does fewer AES rounds per block at a security level that is ample).
/// Its effect on CPU per GB is for the whole-binary benchmark to show; iperf3 throughput alone
/// did not move beyond noise.
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
    ];
    std::sync::Arc::new(provider)
}
