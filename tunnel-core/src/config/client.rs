use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::server::secret;
use super::{default_client_name, invalid, window_growth, ConfigError, HumanDuration};
use crate::client::{Backoff, ClientConfig};
use crate::forward::{RemoteForwardSpec, ServiceSpec};
use crate::proto::validate_name;
use crate::tls::{client_config, Fingerprint, ServerTrust};
use crate::transport::ClientTransport;

/// The client's configuration file (`tunnel-cli connect --config FILE`). Flags given on the
/// command line override it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// Server address, `host:port` (required).
    pub server: Option<String>,
    /// Token (or `token_file`, or the `TUNNEL_TOKEN` environment variable).
    pub token: Option<String>,
    /// File holding the token.
    pub token_file: Option<PathBuf>,
    /// Name to authenticate as (default: derived from the host name).
    pub name: Option<String>,
    /// Remote forwards, `[BIND_ADDR:]REMOTE_PORT:LOCAL_HOST:LOCAL_PORT`.
    #[serde(default)]
    pub remote: Vec<String>,
    /// Local forwards, `[BIND_ADDR:]PORT:CLIENT/SERVICE` or `[BIND_ADDR:]PORT:HOST:PORT`.
    #[serde(default)]
    pub local: Vec<String>,
    /// Private services, `SERVICE=HOST:PORT`.
    #[serde(default)]
    pub expose: Vec<String>,
    /// Pinned SHA-256 fingerprint of the server certificate.
    pub fingerprint: Option<String>,
    /// PEM file of CA certificates to verify the server with.
    pub ca: Option<PathBuf>,
    /// Connect without TLS; the server must opt in too (default false).
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// TCP connect + TLS + handshake time limit (default `10s`).
    pub handshake_timeout: Option<HumanDuration>,
    /// Silence after which the server is declared dead (default `30s`, at least 3 heartbeats).
    pub heartbeat_timeout: Option<HumanDuration>,
    /// MiB of receive window the session's streams may grow into together beyond 256 KiB
    /// each, as yamux tunes them toward the link's bandwidth-delay product (default 16).
    pub max_receive_window_mib: Option<usize>,
    /// Reconnect policy.
    #[serde(default)]
    pub reconnect: ReconnectFile,
}

/// `[reconnect]`: exponential backoff with jitter between attempts.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectFile {
    /// First delay (default `500ms`).
    pub initial: Option<HumanDuration>,
    /// Largest delay (default `30s`).
    pub max: Option<HumanDuration>,
    /// Consecutive failures before giving up; 0 retries forever (default 0).
    pub max_attempts: Option<u32>,
}

impl ClientFile {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        super::load(path)
    }

    /// Parses configuration text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        super::parse(text, origin)
    }

    /// Validates everything into a runtime configuration.
    pub fn build(self) -> Result<ClientConfig, ConfigError> {
        let server = self
            .server
            .ok_or_else(|| ConfigError::Missing("no server address: pass --server HOST:PORT".into()))?;
        if !server.contains(':') || server.ends_with(':') {
            return Err(invalid("server", format!("{server:?} is not HOST:PORT")));
        }
        let token = secret("token", self.token.as_deref(), self.token_file.as_deref())?.ok_or_else(|| {
            ConfigError::Missing(
                "no token: pass --token, set TUNNEL_TOKEN, or set `token`/`token_file`".into(),
            )
        })?;
        let name = self.name.unwrap_or_else(default_client_name);
        validate_name(&name).map_err(|e| invalid("name", e))?;
        let remotes = self
            .remote
            .iter()
            .map(|r| r.parse::<RemoteForwardSpec>().map_err(|e| invalid("remote", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let locals = parse_all("local", &self.local)?;
        let services: Vec<ServiceSpec> = parse_all("expose", &self.expose)?;
        let mut names = std::collections::HashSet::new();
        if let Some(dup) = services.iter().find(|s| !names.insert(&s.name)) {
            return Err(invalid("expose", format!("service {:?} is listed twice", dup.name)));
        }

        let transport = match (self.insecure_plaintext, self.fingerprint, self.ca) {
            (true, None, None) => ClientTransport::Plaintext,
            (true, _, _) => {
                return Err(ConfigError::Conflict("`insecure_plaintext` cannot be combined with `fingerprint`/`ca`".into()))
            }
            (false, Some(_), Some(_)) => return Err(ConfigError::Conflict("give `fingerprint` or `ca`, not both".into())),
            (false, Some(fp), None) => {
                let fp: Fingerprint = fp.parse().map_err(|e| invalid("fingerprint", e))?;
                tls_transport(&ServerTrust::Pinned(fp), &server)?
            }
            (false, None, Some(ca)) => tls_transport(&ServerTrust::ca_file(&ca)?, &server)?,
            (false, None, None) => {
                return Err(ConfigError::Missing(
                    "the server's certificate must be verified: pass --fingerprint (printed by `tunnel-cli serve`) \
                     or --ca PEM (or --insecure-plaintext on both sides)"
                        .into(),
                ))
            }
        };

        let mut config = ClientConfig::new(server, name, token, transport);
        config.remotes = remotes;
        config.locals = locals;
        config.services = services;
        if let Some(d) = self.handshake_timeout {
            config.handshake_timeout = d.0;
        }
        if let Some(d) = self.heartbeat_timeout {
            config.session.heartbeat_timeout = d.0;
        }
        if let Some(mib) = self.max_receive_window_mib {
            config.session.mux.window_growth = window_growth("max_receive_window_mib", mib)?;
        }
        let defaults = Backoff::default();
        config.reconnect = Backoff {
            initial: self.reconnect.initial.map_or(defaults.initial, |d| d.0),
            max: self.reconnect.max.map_or(defaults.max, |d| d.0),
            max_attempts: self.reconnect.max_attempts.filter(|n| *n > 0),
        };
        if config.reconnect.initial.is_zero() || config.reconnect.initial > config.reconnect.max {
            return Err(invalid("reconnect.initial", "must be more than 0 and at most `reconnect.max`"));
        }
        Ok(config)
    }
}

fn parse_all<T: std::str::FromStr>(key: &'static str, items: &[String]) -> Result<Vec<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    items.iter().map(|i| i.parse::<T>().map_err(|e| invalid(key, e))).collect()
}

fn tls_transport(trust: &ServerTrust, server: &str) -> Result<ClientTransport, ConfigError> {
    ClientTransport::tls(client_config(trust)?, server).map_err(|e| invalid("server", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn build(text: &str) -> Result<ClientConfig, ConfigError> {
        ClientFile::parse(text, Path::new("client.toml"))?.build()
    }

    #[test]
    fn a_full_file_builds() {
        let config = build(&format!(
            "server = \"example.com:7700\"\ntoken = \"t\"\nname = \"laptop\"\nfingerprint = \"{FP}\"\n\
             remote = [\"6443:127.0.0.1:6443\", \"0:localhost:80\"]\n[reconnect]\ninitial = \"1s\"\nmax = \"1m\"\n"
        ))
        .unwrap();
        assert_eq!(config.remotes.len(), 2);
        assert_eq!(config.reconnect.max.as_secs(), 60);
        assert_eq!(config.reconnect.max_attempts, None);
    }

    #[test]
    fn missing_and_conflicting_settings_are_explained() {
        let cases = [
            (format!("token = \"t\"\nfingerprint = \"{FP}\""), "--server"),
            (format!("server = \"h:1\"\nfingerprint = \"{FP}\""), "no token"),
            ("server = \"h:1\"\ntoken = \"t\"".to_owned(), "--fingerprint"),
            (format!("server = \"h:1\"\ntoken = \"t\"\nfingerprint = \"{FP}\"\nca = \"x.pem\""), "not both"),
            (
                format!("server = \"h:1\"\ntoken = \"t\"\nfingerprint = \"{FP}\"\ninsecure_plaintext = true"),
                "insecure",
            ),
            ("server = \"h:1\"\ntoken = \"t\"\nfingerprint = \"zz\"".to_owned(), "fingerprint"),
            (
                format!("server = \"h:1\"\ntoken = \"t\"\nfingerprint = \"{FP}\"\nremote = [\"1:2\"]"),
                "remote",
            ),
            (format!("server = \"h:1\"\ntoken = \"t\"\nfingerprint = \"{FP}\"\nname = \"a/b\""), "name"),
            (format!("server = \"h:1\"\ntoken = \"t\"\nfingerprint = \"{FP}\"\nremotes = []"), "remotes"),
            (
                format!("server = \"h:1\"\ntoken = \"t\"\nfingerprint = \"{FP}\"\nmax_receive_window_mib = 4097"),
                "max_receive_window_mib",
            ),
            (format!("server = \"h:1\"\ntoken = \"t\"\nfingerprint = \"{FP}\"\nlocal = [\"1:a b/c\"]"), "local"),
            (format!("server = \"h:1\"\ntoken = \"t\"\nfingerprint = \"{FP}\"\nexpose = [\"k=h:1\", \"k=h:2\"]"), "twice"),
        ];
        for (text, needle) in cases {
            let err = build(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
