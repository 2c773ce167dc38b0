//! The ACME settings (`acme_email`, `acme_directory`, `acme_ca`, `acme_challenge`):
//! certificates from an authority for the names the HTTPS listener terminates.

use std::path::Path;

use super::server::ServerFile;
use super::{invalid, ConfigError};
use crate::acme::{AcmeConfig, Challenge, LETS_ENCRYPT};

/// Name of the directory inside the state directory that keeps the ACME account and
/// certificates.
pub const ACME_DIR: &str = "acme";

/// Checks the ACME settings without touching the disk.
pub(super) fn check(file: &ServerFile) -> Result<(), ConfigError> {
    let Some(email) = &file.acme_email else {
        if file.acme_directory.is_some() || file.acme_ca.is_some() || file.acme_challenge.is_some() {
            return Err(ConfigError::Missing {
                key: "acme_email",
                why: "ACME (acme_directory, acme_ca, acme_challenge) is turned on by acme_email",
            });
        }
        return Ok(());
    };
    check_email(email).map_err(|why| invalid("acme_email", why))?;
    if let Some(directory) = &file.acme_directory {
        check_directory(directory).map_err(|why| invalid("acme_directory", why))?;
    }
    if file.https_listen.is_none() {
        return Err(ConfigError::Missing {
            key: "https_listen",
            why: "ACME certificates are served on the HTTPS listener",
        });
    }
    if challenge(file) == Challenge::Http01 && file.http_listen.is_none() {
        return Err(ConfigError::Missing {
            key: "http_listen",
            why: "the http-01 challenge is answered on the HTTP listener (or set acme_challenge = \"tls-alpn-01\")",
        });
    }
    Ok(())
}

/// The ACME settings in force, with the CA file read; `None` when ACME is off.
pub(super) fn setup(file: &ServerFile, state_dir: &Path) -> Result<Option<AcmeConfig>, ConfigError> {
    let Some(email) = &file.acme_email else { return Ok(None) };
    let mut config = AcmeConfig::new(state_dir.join(ACME_DIR), challenge(file));
    config.directory = file.acme_directory.clone().unwrap_or_else(|| LETS_ENCRYPT.to_owned());
    config.contact = vec![format!("mailto:{email}")];
    if let Some(ca) = &file.acme_ca {
        config.ca = crate::tls::read_certs(ca)?;
    }
    Ok(Some(config))
}

/// The challenge configured, else http-01 where there is an HTTP listener, else tls-alpn-01.
fn challenge(file: &ServerFile) -> Challenge {
    file.acme_challenge.unwrap_or(match file.http_listen {
        Some(_) => Challenge::Http01,
        None => Challenge::TlsAlpn01,
    })
}

/// A plausible mail address: `LOCAL@DOMAIN`, printable ASCII, nothing that would change the
/// `mailto:` URL it becomes.
fn check_email(email: &str) -> Result<(), String> {
    let plain = email.len() <= 254
        && email.bytes().all(|b| b.is_ascii_graphic() && !b"<>,;:?&=%\"\\()[]".contains(&b));
    match email.split_once('@') {
        Some((local, domain))
            if plain && !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
        {
            Ok(())
        }
        _ => Err(format!("{email:?} is not a mail address (name@example.com)")),
    }
}

/// An `https://` URL with a host.
fn check_directory(directory: &str) -> Result<(), String> {
    let uri: http::Uri = directory.parse().map_err(|e| format!("{directory:?}: {e}"))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none_or(str::is_empty) {
        return Err(format!("{directory:?} is not an https:// URL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ServerFile {
        ServerFile::parse(text, Path::new("test.toml")).unwrap()
    }

    const ON: &str = "acme_email = \"ops@example.com\"\nhttps_listen = \"127.0.0.1:0\"\n";

    #[test]
    fn each_wrong_setting_is_named() {
        let key_of = |text: &str| match file(text).validate().unwrap_err() {
            ConfigError::Invalid { key, .. } | ConfigError::Missing { key, .. } => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(key_of("acme_directory = \"https://acme.example/dir\"\n"), "acme_email");
        assert_eq!(key_of("acme_challenge = \"tls-alpn-01\"\n"), "acme_email");
        assert_eq!(key_of("acme_email = \"ops@example.com\"\n"), "https_listen");
        for email in ["ops", "@example.com", "ops@", "a@b@c", "ops@example.com>, x@y", "o ps@example.com"] {
            let text = format!("acme_email = {email:?}\nhttps_listen = \"127.0.0.1:0\"\n");
            assert_eq!(key_of(&text), "acme_email", "{email}");
        }
        for url in ["http://acme.example/dir", "acme.example/dir", "https:///dir", "not a url"] {
            assert_eq!(key_of(&format!("{ON}acme_directory = {url:?}\n")), "acme_directory", "{url}");
        }
        assert_eq!(key_of(&format!("{ON}acme_challenge = \"http-01\"\n")), "http_listen");
        let err = ServerFile::parse(&format!("{ON}acme_challenge = \"dns-01\"\n"), Path::new("t.toml"))
            .unwrap_err();
        assert!(err.to_string().contains("acme_challenge"), "{err}");
    }

    #[test]
    fn the_challenge_follows_the_listeners_and_the_settings_build() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let setup_of = |text: &str| setup(&file(text), state).unwrap().unwrap();
        let alpn = setup_of(ON);
        assert_eq!(alpn.challenge, Challenge::TlsAlpn01);
        assert_eq!(
            (alpn.directory.as_str(), alpn.contact.as_slice()),
            (LETS_ENCRYPT, &["mailto:ops@example.com".to_owned()][..])
        );
        assert_eq!(alpn.dir, state.join(ACME_DIR));
        let http = setup_of(&format!("{ON}http_listen = \"127.0.0.1:0\"\n"));
        assert_eq!(http.challenge, Challenge::Http01);
        let chosen =
            setup_of(&format!("{ON}http_listen = \"127.0.0.1:0\"\nacme_challenge = \"tls-alpn-01\"\n"));
        assert_eq!(chosen.challenge, Challenge::TlsAlpn01);
        assert!(setup(&ServerFile::default(), state).unwrap().is_none(), "off without acme_email");
    }

    #[test]
    fn the_ca_file_is_read_at_build() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-ca.pem");
        let text = format!("{ON}acme_ca = {:?}\n", missing.to_str().unwrap());
        file(&text).validate().unwrap();
        let err = setup(&file(&text), dir.path()).unwrap_err();
        assert!(
            matches!(err, ConfigError::Tls(_)) && err.chain().contains("no-such-ca.pem"),
            "{}",
            err.chain()
        );
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example".to_owned()]).unwrap();
        std::fs::write(&missing, ca.cert.pem()).unwrap();
        assert_eq!(setup(&file(&text), dir.path()).unwrap().unwrap().ca.len(), 1);
    }
}
