//! The ACME account, kept in `account.json` (mode 0600) beside the authority's certificates: a
//! new one is made when there is none (or it is for another directory). Requests go over the
//! crate's own HTTPS client, trusting the system's roots and the configured CA, each answered
//! whole within a deadline and a size limit.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use instant_acme::{Account, AccountCredentials, BodyWrapper, BytesResponse, HttpClient, NewAccount};

use super::{AcmeConfig, AcmeError};

/// The account file, in the authority's store.
const ACCOUNT_FILE: &str = "account.json";
/// Longest wait for one answer of the authority, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read (a certificate chain is a few KiB).
const MAX_ANSWER: usize = 1024 * 1024;
/// Longest `Retry-After` believed, in seconds.
const MAX_RETRY_AFTER: u64 = 3600;

/// The account on `config.directory`: the one kept in `store`, else a new one (then kept).
pub(super) async fn open(config: &AcmeConfig, store: &Path) -> Result<Account, AcmeError> {
    let authority = |source: Box<dyn std::error::Error + Send + Sync>| AcmeError::Authority {
        directory: config.directory.clone(),
        source,
    };
    let path = store.join(ACCOUNT_FILE);
    let (ca, directory, file) = (config.ca.clone(), config.directory.clone(), path.clone());
    let (client, credentials) = tokio::task::spawn_blocking(move || {
        // Reading the system's roots and the account file: the disk.
        let client = AuthorityClient::new(ca);
        (client, stored(&file, &directory))
    })
    .await
    .map_err(|e| authority(e.into()))?;
    let client: Box<dyn HttpClient> = Box::new(client.map_err(|e| authority(e.into()))?);
    if let Some(credentials) = credentials? {
        return Account::builder_with_http(client)
            .from_credentials(credentials)
            .await
            .map_err(|e| authority(e.into()));
    }
    let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
    let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
    let (account, credentials) = Account::builder_with_http(client)
        .create(&new, config.directory.clone(), None)
        .await
        .map_err(|e| authority(e.into()))?;
    tracing::info!(directory = %config.directory, "ACME account created");
    // Kept for the next start; this run goes on with the account in memory either way.
    let dir = store.to_owned();
    let kept = tokio::task::spawn_blocking(move || keep(&dir, path, &credentials)).await;
    if let Ok(Err(err)) = kept {
        tracing::warn!("the ACME account is not kept for the next start: {}", crate::log::Chain(&err));
    }
    Ok(account)
}

/// Writes the credentials to `path` (mode 0600) in `dir`.
fn keep(dir: &Path, path: PathBuf, credentials: &AccountCredentials) -> Result<(), AcmeError> {
    let json = serde_json::to_vec_pretty(credentials)
        .map_err(|e| AcmeError::Store { path: path.clone(), source: e.into() })?;
    let written = crate::fs::create_private_dir(dir).and_then(|()| crate::fs::write_private(&path, &json));
    written.map_err(|source| AcmeError::Store { path, source })
}

/// Where an account file that cannot be used is moved: beside it, named by the time.
fn unusable_path(path: &Path) -> PathBuf {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    path.with_file_name(format!("{ACCOUNT_FILE}.unusable-{nanos}"))
}

/// The stored credentials, if they are for `directory`.
fn stored(path: &Path, directory: &str) -> Result<Option<AccountCredentials>, AcmeError> {
    let text = match crate::fs::read_private(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // A file refused as it is (another user's, writable by others, a hard link, not a
        // regular file, longer than any account): moved aside, never overwritten (it may be
        // an account a CAA record names), and a new account made, rather than no certificate
        // ordered at all. Other errors (EIO, out of descriptors) are passing: told, and tried
        // again.
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::InvalidData
            ) =>
        {
            let aside = unusable_path(path);
            std::fs::rename(path, &aside)
                .map_err(|source| AcmeError::Store { path: path.to_owned(), source })?;
            tracing::warn!(
                "{} cannot be used ({err}); moved to {} and making a new ACME account",
                path.display(),
                aside.display()
            );
            return Ok(None);
        }
        Err(source) => return Err(AcmeError::Store { path: path.to_owned(), source }),
    };
    let value: serde_json::Value = match serde_json::from_slice(&text) {
        Ok(value) => value,
        Err(err) => {
            tracing::warn!("{} is not an ACME account ({err}); making a new one", path.display());
            return Ok(None);
        }
    };
    if value.get("directory").and_then(|d| d.as_str()) != Some(directory) {
        tracing::info!("{} is an account on another directory; making one on {directory}", path.display());
        return Ok(None);
    }
    match serde_json::from_value(value) {
        Ok(credentials) => Ok(Some(credentials)),
        Err(err) => {
            tracing::warn!("{} is not an ACME account ({err}); making a new one", path.display());
            Ok(None)
        }
    }
}

/// HTTPS to the authority: HTTP/1.1, the system's roots and the configured CA.
struct AuthorityClient(Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>);

impl AuthorityClient {
    fn new(ca: Vec<rustls::pki_types::CertificateDer<'static>>) -> Result<Self, crate::tls::TlsError> {
        let mut tls = (*crate::tls::trusting(ca)?).clone();
        // The connector offers `http/1.1` itself.
        tls.alpn_protocols.clear();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(Self(Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)))
    }
}

impl HttpClient for AuthorityClient {
    fn request(
        &self,
        request: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let answered = self.0.request(request);
        let whole = async move {
            let (mut parts, body) =
                answered.await.map_err(|e| instant_acme::Error::Other(Box::new(e)))?.into_parts();
            let body = Limited::new(body, MAX_ANSWER).collect().await.map_err(unread)?.to_bytes();
            // The ACME client adds a `Retry-After` in seconds to the clock unchecked.
            let delay =
                parts.headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
            if delay.is_some_and(|secs| secs > MAX_RETRY_AFTER) {
                parts.headers.insert(RETRY_AFTER, MAX_RETRY_AFTER.into());
            }
            Ok(BytesResponse::from(http::Response::from_parts(parts, Full::new(body))))
        };
        Box::pin(async move {
            tokio::time::timeout(REQUEST_TIMEOUT, whole).await.unwrap_or_else(|_| {
                Err(instant_acme::Error::Other(format!("no whole answer within {REQUEST_TIMEOUT:?}").into()))
            })
        })
    }
}

/// Why an answer's body could not be read: too large, or the connection failed.
fn unread(err: Box<dyn std::error::Error + Send + Sync>) -> instant_acme::Error {
    match err.is::<LengthLimitError>() {
        true => instant_acme::Error::Other(format!("an answer over {} KiB", MAX_ANSWER / 1024).into()),
        false => instant_acme::Error::Other(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_is_reused_only_on_its_own_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ACCOUNT_FILE);
        assert!(stored(&path, "https://a.example/dir").unwrap().is_none(), "no file");
        // The shape instant-acme writes (a P-256 PKCS#8 key, base64url).
        let key = rcgen::KeyPair::generate().unwrap();
        use base64::Engine;
        let json = serde_json::json!({
            "id": "https://a.example/acct/1",
            "key_pkcs8": base64::prelude::BASE64_URL_SAFE_NO_PAD.encode(key.serialize_der()),
            "directory": "https://a.example/dir",
        });
        std::fs::write(&path, json.to_string()).unwrap();
        assert!(stored(&path, "https://a.example/dir").unwrap().is_some());
        assert!(
            stored(&path, "https://b.example/dir").unwrap().is_none(),
            "another directory: a new account"
        );
        std::fs::write(&path, "{not json").unwrap();
        assert!(stored(&path, "https://a.example/dir").unwrap().is_none(), "unreadable: a new account");
        // A file anyone could have written (or a FIFO): a new account, not an error that
        // stopped every order (before).
        std::fs::write(&path, json.to_string()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(stored(&path, "https://a.example/dir").unwrap().is_none(), "planted: a new account");
        // Moved aside, not lost: it may be the account a CAA record names.
        let aside = |dir: &Path| {
            let names =
                std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap());
            names.filter(|n| n.starts_with("account.json.unusable-")).count()
        };
        assert!(!path.exists() && aside(dir.path()) == 1);
        assert!(std::process::Command::new("mkfifo").arg(&path).status().unwrap().success());
        assert!(stored(&path, "https://a.example/dir").unwrap().is_none(), "a FIFO: a new account");
        assert!(!path.exists() && aside(dir.path()) == 2);
        // Longer than any account (grown by mistake): moved aside too, not read again and
        // refused on every attempt (before, no certificate was ever ordered).
        let long = std::fs::File::create(&path).unwrap();
        long.set_len(crate::fs::PRIVATE_FILE_MAX + 1).unwrap();
        drop(long);
        assert!(stored(&path, "https://a.example/dir").unwrap().is_none(), "too long: a new account");
        assert!(!path.exists() && aside(dir.path()) == 3);
        // The new account is kept in its place.
        let credentials: AccountCredentials = serde_json::from_value(json).unwrap();
        keep(dir.path(), path.clone(), &credentials).unwrap();
        assert!(stored(&path, "https://a.example/dir").unwrap().is_some());
    }
}
