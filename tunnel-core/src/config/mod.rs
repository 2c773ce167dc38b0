//! Configuration files: serde/TOML types with unknown keys refused, validated into the runtime
//! [`crate::server::ServerConfig`] and [`crate::client::ClientConfig`]. Keys mirror the CLI
//! flags (`--allow-ports` is `allow_ports`); the commented examples under `examples/` list them all.

mod acme;
mod admin;
mod client;
mod duration;
mod entries;
mod limits;
mod routes;
mod secret;
mod server;
mod text;
mod tokens;

use std::path::{Path, PathBuf};

pub use acme::ACME_DIR;
pub use admin::{AdminAddress, AdminSetup, ADMIN_SOCKET, ADMIN_TOKEN_FILE, CLIENTS_FILE};
pub use client::ClientFile;
pub use duration::HumanDuration;
pub use entries::{RemoteEntry, RemoteOptions, TlsEntry, TlsOptions};
pub use limits::ServerLimits;
pub use routes::{BackendFile, HeaderChangesFile, PathType, RedirectFile, RouteFile};
pub use secret::SecretString;
pub use server::{CertificateEntry, ClientEntry, ServerFile, ServerSetup, TokenSource, MAX_REPLICAS};

/// A boxed error, the cause of an invalid value.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a configuration could not be loaded or validated.
///
/// Each error names the key at fault and keeps its cause as its [`source`](std::error::Error::source)
/// (print the chain, e.g. with [`crate::log::Chain`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file holds no setting at all (empty, or only comments): most likely one being
    /// written, or the wrong file, and read as every default it would serve no one.
    #[error("{} has no settings (it is empty, or only comments)", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type, bad value...).
    #[error("{}{}: {message}", path.display(), at.as_deref().unwrap_or_default())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where: ` (line N, `key`)`, when known.
        at: Option<String>,
        /// Parser message.
        message: String,
    },
    /// A value is invalid.
    #[error("invalid `{key}`")]
    Invalid {
        /// The key at fault (`clients.allow_bind`, `limits.max_sessions`).
        key: &'static str,
        /// What is wrong.
        source: BoxError,
    },
    /// Two settings contradict each other.
    #[error("{0}")]
    Conflict(String),
    /// A required setting is missing.
    #[error("missing `{key}`: {why}")]
    Missing {
        /// The key (or one of the keys) that would provide it.
        key: &'static str,
        /// What it is needed for.
        why: &'static str,
    },
    /// The state directory could not be used.
    #[error("state directory {path}")]
    StateDir {
        /// The directory or file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A certificate or key could not be loaded or generated.
    #[error("TLS")]
    Tls(#[from] crate::tls::TlsError),
}

fn invalid(key: &'static str, reason: impl Into<BoxError>) -> ConfigError {
    ConfigError::Invalid { key, source: reason.into() }
}

/// A certificate chain and key read from PEM files, a failure named as the key (`keys`: the
/// certificate's, the key's) whose file is at fault; the file is in the cause.
fn pem_files(
    cert: &std::path::Path,
    key: &std::path::Path,
    keys: (&'static str, &'static str),
) -> Result<crate::tls::ServerIdentity, ConfigError> {
    crate::tls::ServerIdentity::from_pem_files(cert, key).map_err(|e| {
        use crate::tls::TlsError;
        // One file for both: the key is read first, then the chain, then the key is parsed.
        let of_key = match &e {
            TlsError::Pem { path, what } => path == key && (path != cert || what.contains("private key")),
            TlsError::Io { path, .. } => path == key && path != cert,
            _ => false,
        };
        ConfigError::Invalid { key: if of_key { keys.1 } else { keys.0 }, source: Box::new(e) }
    })
}

/// Largest accepted `max_receive_window_mib`: a session could buffer this much for streams
/// whose readers stall.
const MAX_RECEIVE_WINDOW_MIB: usize = 4096;

/// A receive-window growth budget given in MiB, in bytes.
fn window_growth(key: &'static str, mib: usize) -> Result<usize, ConfigError> {
    if mib > MAX_RECEIVE_WINDOW_MIB {
        return Err(invalid(key, format!("must be at most {MAX_RECEIVE_WINDOW_MIB}")));
    }
    Ok(mib << 20)
}

/// An address to listen on must be `HOST:PORT` before anything binds it (`key` names it).
fn check_listen(key: &'static str, listen: &str) -> Result<(), ConfigError> {
    match port_of(listen) {
        Some(_) => Ok(()),
        None => {
            let why = format!("{listen:?} is not HOST:PORT (e.g. {}, or [::]:7700)", server::DEFAULT_LISTEN);
            Err(invalid(key, why))
        }
    }
}

/// The port of `HOST:PORT`, a number up to 65535, where the host is what a forward's may be: a
/// DNS name, an IPv4 address or an IPv6 address in brackets (`[::1]:7700`). An IPv6 address
/// without them (`::1:7700`) is refused, where it ends being a guess, as are brackets around
/// anything else (`[a.example]`, which no lookup would find).
fn port_of(address: &str) -> Option<u16> {
    let (host, port) = address.rsplit_once(':')?;
    crate::proto::target::parse_host(host).ok()?;
    let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| port.parse().ok()).flatten()
}

/// A duration that must not be zero (`port_grace` may be: it means no reservation).
fn positive_duration(key: &'static str, d: HumanDuration) -> Result<std::time::Duration, ConfigError> {
    if d.0.is_zero() {
        return Err(invalid(key, "must be more than 0"));
    }
    Ok(d.0)
}

/// Largest configuration file read: far above any real one (a thousand routes take about
/// 200 KiB), and a bound on what a wrong path (`/dev/zero`) can make us hold.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads and parses a TOML file into `T`.
fn load<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = read_text(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let body = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let no_settings = body.lines().map(str::trim).all(|line| line.is_empty() || line.starts_with('#'));
    if no_settings {
        return Err(ConfigError::Empty { path: path.to_owned() });
    }
    parse(&text, path)
}

/// A regular file's text, at most [`MAX_FILE_BYTES`] (see [`crate::fs::read_regular_text`]).
fn read_text(path: &Path) -> std::io::Result<String> {
    crate::fs::read_regular_text(path, MAX_FILE_BYTES)
}

/// Parses TOML text; `origin` names it in errors.
fn parse<T: serde::de::DeserializeOwned>(text: &str, origin: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let mut message = e.message().trim_end().to_owned();
        if let Some(key) = e.span().and_then(|s| unquoted_text(text, s.start)) {
            message.push_str(&format!(" (if this is text, quote it: {key} = \"...\")"));
        }
        ConfigError::Parse { path: origin.to_owned(), at: e.span().map(|s| location(text, s.start)), message }
    })
}

/// The line of `text` that holds byte `offset`.
fn line_at(text: &str, offset: usize) -> &str {
    let start = text[..offset.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    text[start..].lines().next().unwrap_or_default()
}

/// A line's key and value, trimmed, when it reads as `key = value`: a key of the characters
/// keys have (a byte order mark before it ignored), then `=` with a space before it or a value
/// after it that does not start with `=`. A line that is a secret (a file given as `--config`
/// by mistake, a base64 token ending in `=` or `==`) thus names no key, and `listen =` with
/// its value forgotten still does.
fn key_value(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once('=')?;
    let spaced = key.ends_with([' ', '\t']);
    let (key, value) = (key.trim_start_matches('\u{feff}').trim(), value.trim());
    let padding = value.is_empty() || value.starts_with('=');
    (is_key(key) && (spaced || !padding)).then_some((key, value))
}

/// The key of the line at `offset` when its value may be text written without quotes
/// (`listen = 127.0.0.1:7700`, which TOML reads as a malformed number): a value, its
/// trailing comment aside, that is no TOML value on its own and is one as a quoted string.
/// Digits alone are a number too large, not text. Neither the value nor the message says what
/// it was (it may be a token).
fn unquoted_text(text: &str, offset: usize) -> Option<&str> {
    let (key, value) = key_value(line_at(text, offset))?;
    let value = value.split_once(" #").map_or(value, |(value, _)| value).trim_end();
    let digits = value.trim_start_matches(['+', '-']).chars().all(|c| c.is_ascii_digit() || c == '_');
    let bare = |v: &str| !v.is_empty() && !digits && !v.contains(['"', '\'', '#', '[', '{', '\\']);
    let parses = |v: &str| toml::from_str::<toml::Table>(&format!("v = {v}")).is_ok();
    (bare(value) && !parses(value) && parses(&format!("\"{value}\""))).then_some(key)
}

/// ` (line N, `table.key`)` for a byte offset: the key is the one on that line, under the last
/// table header above it. Only the key is shown, never the value (it may be a token).
fn location(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    // A table header itself (a `[limits]` given twice).
    let here = line_at(text, offset).trim().trim_start_matches('\u{feff}');
    let header = here.strip_prefix('[').and_then(|h| h.strip_suffix(']')).map(str::trim);
    if let Some(table) = header.filter(|t| is_key(t)) {
        return format!(" (line {line}, `[{table}]`)");
    }
    let key = key_value(line_at(text, offset)).map(|(key, _)| key);
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|h| h.trim_matches(|c| c == '[' || c == ']').trim())
        .filter(|t| is_key(t));
    match (table, key) {
        (Some(table), Some(key)) => format!(" (line {line}, `{table}.{key}`)"),
        (None, Some(key)) => format!(" (line {line}, `{key}`)"),
        _ => format!(" (line {line})"),
    }
}

fn is_key(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// Where state (generated certificate, generated token) lives when `state_dir` is not set:
/// `$STATE_DIRECTORY` (systemd), `$XDG_STATE_HOME/tunnel`, `$HOME/.local/state/tunnel`, or
/// `./tunnel-state`.
pub fn default_state_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = env("STATE_DIRECTORY") {
        return dir;
    }
    if let Some(dir) = env("XDG_STATE_HOME") {
        return dir.join("tunnel");
    }
    if let Some(home) = env("HOME") {
        return home.join(".local/state/tunnel");
    }
    PathBuf::from("tunnel-state")
}

/// A client name derived from the host name (so a restarted client gets its ports back), with
/// characters outside `[A-Za-z0-9._-]` replaced; `client` if the host name is unknown.
pub fn default_client_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let cleaned: String = host
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .take(crate::proto::MAX_NAME_LEN)
        .collect();
    let cleaned = cleaned.trim_start_matches('.').to_owned();
    if cleaned.is_empty() {
        "client".into()
    } else {
        cleaned
    }
}

#[cfg(test)]
impl ConfigError {
    /// The message with its causes, as the CLI prints it.
    fn chain(&self) -> String {
        crate::log::Chain(self).to_string()
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    fn read_error(path: &Path) -> String {
        let err = load::<ClientFile>(path).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        err.chain()
    }

    /// Text written without quotes is a TOML error the parser words as a bad number; the
    /// message says to quote it, naming the key, never the value.
    #[test]
    fn unquoted_text_is_told_to_be_quoted() {
        let hint = "(if this is text, quote it: server = \"...\")";
        let err = parse::<ClientFile>("server = 127.0.0.1:7700\n", "c.toml".as_ref()).unwrap_err().chain();
        assert!(err.contains("(line 1, `server`)") && err.ends_with(hint), "{err}");
        assert!(!err.contains("127.0.0.1"), "the value is not echoed: {err}");
        // CRLF, a byte order mark, a comment after the value, a line of UTF-8 before: the same.
        for text in ["\u{feff}server = 127.0.0.1:7700\r\n", "name = \"é\"\nserver = 127.0.0.1:7700  # prod\n"]
        {
            let err = parse::<ClientFile>(text, "c.toml".as_ref()).unwrap_err().chain();
            assert!(err.contains("`server`)") && err.ends_with(hint), "{text:?}: {err}");
        }
        // A token-like word: the same hint, the word not shown.
        let err = parse::<ClientFile>("token = s3cret-word\n", "c.toml".as_ref()).unwrap_err().chain();
        assert!(err.contains("quote it: token") && !err.contains("s3cret"), "{err}");
        // A file that is a secret, not TOML (a base64 token given as `--config`): its text
        // is named neither as a key nor in a hint.
        for secret in ["QUJDREVGR0hJSktMTU5PUA==\n", "QUJDREVGR0hJSktMTU5PUUE=\n"] {
            let err = parse::<ClientFile>(secret, "c.toml".as_ref()).unwrap_err().chain();
            assert!(!err.contains("QUJD") && !err.contains("quote it"), "{err}");
        }
        // A table given twice: the table named.
        let twice = "[limits]\nmax_streams_per_session = 10\n\n[limits]\n";
        let err = parse::<ServerFile>(twice, "s.toml".as_ref()).unwrap_err().chain();
        assert!(err.contains("(line 4, `[limits]`)"), "{err}");
        // A value forgotten: the key is still named.
        let err = parse::<ClientFile>("server =\n", "c.toml".as_ref()).unwrap_err().chain();
        assert!(err.contains("(line 1, `server`)"), "{err}");
        // A value of the wrong type, or a real syntax error, gets no such hint.
        // Nor does a number too large for any integer (it would be refused quoted).
        for wrong in [
            "connections = \"4\"\n",
            "connections = [1\n",
            "server = \"a:1\" x\n",
            "connections = 99999999999999999999\n",
            "connections = -99_999_999_999_999_999_999\n",
        ] {
            let err = parse::<ClientFile>(wrong, "c.toml".as_ref()).unwrap_err().chain();
            assert!(!err.contains("quote it"), "{wrong}: {err}");
        }
    }

    #[test]
    fn only_a_regular_file_of_bounded_size_is_read() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_error(dir.path()).ends_with(": not a regular file"), "{}", read_error(dir.path()));
        // A FIFO would block the reader until someone writes to it.
        let fifo = dir.path().join("fifo.toml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        assert!(read_error(&fifo).ends_with(": not a regular file"), "{}", read_error(&fifo));
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; usize::try_from(MAX_FILE_BYTES).unwrap() + 1]).unwrap();
        assert!(read_error(&big).ends_with(": larger than 4 MiB"), "{}", read_error(&big));
        // At the cap, the file is read (and parsed).
        let mut text = b"name = \"a\"\n".to_vec();
        text.resize(usize::try_from(MAX_FILE_BYTES).unwrap(), b'#');
        std::fs::write(&big, text).unwrap();
        assert!(load::<ClientFile>(&big).is_ok());
    }

    #[test]
    fn a_file_with_no_settings_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        for text in ["", "\n \n", "# all commented out\r\n# name = \"a\"\r\n", "\u{feff}# only a comment\n"] {
            std::fs::write(&path, text).unwrap();
            let err = load::<ClientFile>(&path).unwrap_err();
            assert!(matches!(err, ConfigError::Empty { .. }), "{text:?}: {err:?}");
            assert!(err.chain().ends_with("client.toml has no settings (it is empty, or only comments)"));
        }
    }
}
