//! The certificates on disk: `NAME.crt` (the chain, leaf first) and `NAME.key` (mode 0600) in
//! the ACME directory, each written whole under a temporary name and renamed into place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::AcmeError;

/// A certificate held for one name.
pub(super) struct Held {
    pub(super) key: Arc<CertifiedKey>,
    /// When it should be renewed: two thirds into its lifetime.
    pub(super) renew_at: SystemTime,
    pub(super) not_before: SystemTime,
    pub(super) not_after: SystemTime,
}

/// The largest certificate chain or key file read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Every certificate in `dir` still usable for its name; the others are logged and left
/// for an order to replace.
pub(super) fn load_all(dir: &Path) -> HashMap<String, Held> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return HashMap::new(),
        Err(err) => {
            tracing::warn!("cannot read {}: {err}; certificates will be ordered anew", dir.display());
            return HashMap::new();
        }
    };
    let names = entries.filter_map(|entry| {
        let name = entry.ok()?.file_name().into_string().ok()?;
        name.strip_suffix(".crt").filter(|name| super::orderable(name)).map(str::to_owned)
    });
    let mut held = HashMap::new();
    for name in names {
        let read = |ext: &str| {
            let path = file(dir, &name, ext);
            // The key is a secret: one someone else could have planted is not served. Both
            // are regular files of bounded size (a FIFO would block the keeper for good).
            let text = if ext == "key" {
                crate::fs::read_private_text_within(&path, MAX_FILE_BYTES)
            } else {
                crate::fs::read_regular_text(&path, MAX_FILE_BYTES)
            };
            text.map_err(|source| AcmeError::Store { path, source })
        };
        match read("crt")
            .and_then(|chain| Ok((chain, read("key")?)))
            .and_then(|(chain, key)| parse(&name, &chain, &key))
        {
            Ok(found) => {
                let until = utc(found.not_after);
                match found.not_after > SystemTime::now() {
                    true => tracing::info!(name = %name, "certificate loaded, valid until {until}"),
                    false => tracing::info!(name = %name, "certificate loaded, expired since {until}"),
                }
                held.insert(name, found);
            }
            Err(err) => {
                tracing::warn!(name = %name, "ignoring a stored certificate: {}", crate::log::Chain(&err))
            }
        }
    }
    held
}

/// Checks a fresh chain and key for `name`, then writes them to `dir`.
pub(super) fn save(dir: &Path, name: &str, chain: &str, key: &str) -> Result<Held, AcmeError> {
    let held = parse(name, chain, key)?;
    crate::fs::create_private_dir(dir).map_err(|source| AcmeError::Store { path: dir.to_owned(), source })?;
    // A crash between the two writes leaves a chain and a key that do not match: ignored at
    // the next start (and ordered anew).
    for (ext, text) in [("key", key), ("crt", chain)] {
        let path = file(dir, name, ext);
        crate::fs::write_private(&path, text.as_bytes())
            .map_err(|source| AcmeError::Store { path, source })?;
    }
    Ok(held)
}

/// Removes the files of `name` (a certificate no route needs any more, expired).
pub(super) fn remove(dir: &Path, name: &str) {
    for ext in ["crt", "key"] {
        let path = file(dir, name, ext);
        if let Err(err) = std::fs::remove_file(&path) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {err}", path.display());
            }
        }
    }
}

fn file(dir: &Path, name: &str, ext: &str) -> PathBuf {
    dir.join(format!("{name}.{ext}"))
}

/// A PEM chain and key for `name`: the leaf must be valid for it, the key usable by rustls.
fn parse(name: &str, chain: &str, key: &str) -> Result<Held, AcmeError> {
    let bad = |why: String| AcmeError::Certificate { name: name.to_owned(), why };
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut chain.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("the chain is not PEM: {e}")))?;
    let leaf = chain.first().ok_or_else(|| bad("the chain holds no certificate".into()))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key.as_bytes())
        .map_err(|e| bad(format!("the key is not PEM: {e}")))?
        .ok_or_else(|| bad("no private key".into()))?;
    if !crate::tls::covers(leaf, name) {
        return Err(bad("the leaf certificate is for other names".into()));
    }
    let (not_before, not_after) = validity(leaf).map_err(bad)?;
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let signing =
        crate::tls::provider().key_provider.load_private_key(key).map_err(|e| bad(e.to_string()))?;
    let key = CertifiedKey::new(chain, signing);
    key.keys_match().map_err(|e| bad(format!("the key does not match the certificate: {e}")))?;
    let renew_at = not_before.checked_add(lifetime / 3 * 2).unwrap_or(not_after);
    Ok(Held { key: Arc::new(key), renew_at, not_before, not_after })
}

/// A certificate's `notBefore` and `notAfter`.
fn validity(leaf: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("the leaf certificate: {e}"))?;
    let at = |time: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(time.timestamp()).map_err(|_| "a validity date before 1970".to_owned())?;
        Ok::<_, String>(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    };
    Ok((at(cert.validity().not_before)?, at(cert.validity().not_after)?))
}

/// `at` as an HTTP date (`Wed, 18 Nov 2026 11:06:40 GMT`).
pub(super) fn utc(at: SystemTime) -> String {
    httpdate::fmt_http_date(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn a_saved_certificate_loads_back_and_is_renewed_two_thirds_in() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = self_signed(&["app.example.com"]);
        let saved = save(dir.path(), "app.example.com", &chain, &key).unwrap();
        let lifetime = saved.not_after.duration_since(saved.renew_at).unwrap();
        assert!(lifetime > Duration::ZERO);
        let loaded = load_all(dir.path());
        assert_eq!(loaded.keys().collect::<Vec<_>>(), ["app.example.com"]);
        assert_eq!(loaded["app.example.com"].not_after, saved.not_after);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("app.example.com.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_certificate_for_another_name_or_a_foreign_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = self_signed(&["other.example.com"]);
        let err = save(dir.path(), "app.example.com", &chain, &key).err().unwrap();
        assert!(err.to_string().contains("for other names"), "{err}");
        let (chain, _) = self_signed(&["app.example.com"]);
        let err = save(dir.path(), "app.example.com", &chain, &key).err().unwrap();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(std::fs::read_dir(dir.path()).map_or(true, |mut d| d.next().is_none()), "nothing written");
    }

    #[test]
    fn unusable_files_are_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = self_signed(&["good.example.com"]);
        save(dir.path(), "good.example.com", &chain, &key).unwrap();
        std::fs::write(dir.path().join("bad.example.com.crt"), "not pem").unwrap();
        std::fs::write(dir.path().join("bad.example.com.key"), "not pem").unwrap();
        std::fs::write(dir.path().join("nokey.example.com.crt"), &chain).unwrap();
        std::fs::write(dir.path().join("..crt"), &chain).unwrap();
        // A FIFO for a chain: skipped, not waited on (the keeper's thread blocked for good).
        let fifo = dir.path().join("fifo.example.com.crt");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        std::fs::write(dir.path().join("fifo.example.com.key"), &key).unwrap();
        // A chain past the bound.
        let padded = format!("{chain}{}", " ".repeat(MAX_FILE_BYTES as usize));
        std::fs::write(dir.path().join("big.example.com.crt"), padded).unwrap();
        crate::fs::write_private(&dir.path().join("big.example.com.key"), key.as_bytes()).unwrap();
        let (sender, loaded) = std::sync::mpsc::channel();
        let path = dir.path().to_owned();
        std::thread::spawn(move || sender.send(load_all(&path)));
        let loaded = loaded.recv_timeout(Duration::from_secs(20)).expect("loading blocked on a FIFO");
        assert_eq!(loaded.into_keys().collect::<Vec<_>>(), ["good.example.com"]);
    }
}
