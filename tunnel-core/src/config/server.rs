use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::tokens::{check_secret, secret, stored_token};
use super::{
    check_listen, default_state_dir, invalid, pem_files, positive_duration, ConfigError, HumanDuration,
    SecretString, ServerLimits,
};
use crate::auth::{Credentials, Token};
use crate::forward::{Glob, IpNet, PortSet, TargetRules, VisitRule};
use crate::http::Service;
use crate::proto::validate_name;
use crate::server::{ClientPolicy, Policy, ServerConfig};
use crate::tls::{server_config, Fingerprint, ServerIdentity};

/// Name of the port lease table inside the state directory.
const LEASE_FILE: &str = "leases.toml";
/// Where clients connect when `listen` is not set.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7700";

/// The server's configuration file (`tunnel-cli serve --config FILE`): plain data, every field
/// optional. [`ServerFile::validate`] checks it without touching the disk;
/// [`ServerFile::build`] also reads token files and provisions the state directory.
///
/// ```
/// use tunnel_core::config::ServerFile;
/// let text = "allow_ports = \"6443,10000-10100\"\n[[clients]]\nname = \"cp\"\ntoken_file = \"/run/cp\"\nports = \"6443\"\n";
/// let file = ServerFile::parse(text, "server.toml".as_ref()).unwrap();
/// file.validate().unwrap();
/// assert_eq!(ServerFile::parse(&file.to_toml().unwrap(), "again".as_ref()).unwrap().to_toml().unwrap(), file.to_toml().unwrap());
/// ```
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Address to accept clients on (default `0.0.0.0:7700`).
    pub listen: Option<String>,
    /// Shared token for every client without its own.
    pub token: Option<SecretString>,
    /// File holding the shared token.
    pub token_file: Option<PathBuf>,
    /// Where a generated certificate and token are kept (default: see [`default_state_dir`]).
    pub state_dir: Option<PathBuf>,
    /// PEM certificate chain; with `tls_key`, replaces the generated certificate.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Extra DNS names or IPs for the generated certificate (only used when it is first made).
    pub tls_names: Option<Vec<String>>,
    /// Ports clients may bind, e.g. `6443,10000-10100` (default `1024-65535`).
    pub allow_ports: Option<PortSet>,
    /// Targets the server may dial for local forwards, e.g. `127.0.0.1:6443,10.0.0.0/8:10250`
    /// (default: none).
    pub allow_targets: Option<TargetRules>,
    /// Run without TLS; clients must opt in too (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_plaintext: bool,
    /// Address to serve HTTP routes on, e.g. `0.0.0.0:80` (default: none).
    pub http_listen: Option<String>,
    /// Address to serve `/metrics`, `/ready` and `/healthz` on, e.g. `127.0.0.1:9090` (default:
    /// none).
    pub metrics: Option<String>,
    /// Address to serve HTTPS (terminated with `[[certificates]]`) and TLS passthrough routes
    /// on, e.g. `0.0.0.0:443` (default: none).
    pub https_listen: Option<String>,
    /// Address to serve SOCKS5 on, for people without a client: the username is a client's
    /// name and the password its own token (`[[clients]]`; not the shared token), and each
    /// connection follows that client's rules (default: none). SOCKS5 is not encrypted: the
    /// token crosses the network as it is, so listen where only trusted hosts reach.
    pub socks_listen: Option<String>,
    /// Serve the admin API on this address (TCP, with TLS and the admin token), or on a UNIX
    /// socket: `unix` for `STATE_DIR/admin.sock`, or a socket path (default: off).
    pub admin_listen: Option<String>,
    /// The token the admin API asks for over TCP (default: one generated into the state
    /// directory, `admin-token`).
    pub admin_token: Option<SecretString>,
    /// File holding the admin token.
    pub admin_token_file: Option<PathBuf>,
    /// Turns on certificates from an ACME authority for the exact host names of HTTP routes,
    /// served on the HTTPS listener; the account's contact address (default: off).
    pub acme_email: Option<String>,
    /// The ACME directory URL (default Let's Encrypt's,
    /// `https://acme-v02.api.letsencrypt.org/directory`).
    pub acme_directory: Option<String>,
    /// PEM file of CA certificates trusted for the ACME directory's TLS, beside the system's.
    pub acme_ca: Option<PathBuf>,
    /// How the authority checks a name: `http-01` (on the HTTP listener) or `tls-alpn-01` (on
    /// the HTTPS listener) (default: `http-01` when `http_listen` is set, else `tls-alpn-01`).
    pub acme_challenge: Option<crate::acme::Challenge>,
    /// Hosts (globs) shared-token clients may serve over HTTP and TLS (default: none).
    pub allow_hosts: Option<Vec<Glob>>,
    /// Networks shared-token clients may route, such as `10.96.0.0/12`: a client's
    /// `networks` must each lie inside one of them (default: none).
    pub allow_networks: Option<Vec<IpNet>>,
    /// The answer for requests to hosts no client serves (default `http_status:404`).
    pub fallback: Option<Service>,
    /// Sessions one name on the shared token may hold at once, replicas serving the same
    /// routes (1 to 64; default 1: a new session replaces the one before).
    pub max_replicas: Option<usize>,
    /// Address forwards bind when the client names none (default `0.0.0.0`).
    pub bind_addr: Option<IpAddr>,
    /// Addresses clients may ask their forwards to bind, e.g. `["127.0.0.1", "::1"]`
    /// (default: just `bind_addr`). A client naming any other address is refused.
    pub allow_bind: Option<Vec<IpAddr>>,
    /// How long a departed client's ports stay reserved for it (default `60s`).
    pub port_grace: Option<HumanDuration>,
    /// At shutdown (SIGTERM), how long open streams may go on before they are cut (default `30s`).
    pub drain_timeout: Option<HumanDuration>,
    /// Heartbeat interval sent to clients (default `10s`).
    pub heartbeat_interval: Option<HumanDuration>,
    /// Silence after which a client is declared dead (default `30s`).
    pub heartbeat_timeout: Option<HumanDuration>,
    /// Abuse limits.
    #[serde(default, skip_serializing_if = "ServerLimits::is_unset")]
    pub limits: ServerLimits,
    /// Clients with their own tokens and port lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<ClientEntry>,
    /// Certificates the HTTPS listener serves, each for the names in it; the first is also
    /// the default (else the server's own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateEntry>,
}

/// `[[certificates]]`: a PEM certificate chain and its key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateEntry {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[[clients]]`: one client with its own token; only it can authenticate under its name.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    /// The client's name (`--name` on its side).
    pub name: String,
    /// Its token.
    pub token: Option<SecretString>,
    /// File holding its token.
    pub token_file: Option<PathBuf>,
    /// Ports it may bind (default: the server-wide `allow_ports`).
    pub allow_ports: Option<PortSet>,
    /// Services it may visit, as `CLIENT/SERVICE` globs such as `worker-*/kubelet`, matching only
    /// clients with their own token; `shared:CLIENT/SERVICE` matches clients on the shared token;
    /// and networks other clients route, as `CLIENT/NETWORK[:PORTS]` such as
    /// `site-*/10.96.0.0/12:443` (default: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_visit: Vec<VisitRule>,
    /// Service names it may expose, as globs (default: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_expose: Vec<Glob>,
    /// Targets the server may dial for it (default: the server-wide `allow_targets`).
    pub allow_targets: Option<TargetRules>,
    /// Ports it owns, e.g. `6443`: no other client can ever bind them, whether this one is
    /// online, offline or the server restarted; they are also allowed to it (default: none).
    pub ports: Option<PortSet>,
    /// Addresses its forwards may bind (default: the server-wide `allow_bind`).
    pub allow_bind: Option<Vec<IpAddr>>,
    /// Hosts it may serve over HTTP and TLS, as globs such as `*.team-a.example.com`
    /// (default: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_hosts: Vec<Glob>,
    /// Networks it may route, such as `10.96.0.0/12` (default: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_networks: Vec<IpNet>,
    /// Sessions it may hold at once, replicas serving the same routes: visitors go to the
    /// least busy (1 to 64; default 1: a new session replaces the one before).
    pub replicas: Option<usize>,
}

/// Where the shared token came from, which decides whether it may be shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Given by the user (flag, environment, config): never printed.
    Supplied,
    /// Generated just now into the state directory: may be shown once.
    GeneratedNow(PathBuf),
    /// Generated on an earlier start and read back from this file.
    Generated(PathBuf),
    /// No shared token (only per-client tokens).
    None,
}

/// A validated server configuration plus what the operator should be told at start.
#[derive(Debug)]
pub struct ServerSetup {
    /// The runtime configuration.
    pub config: ServerConfig,
    /// Address to listen on.
    pub listen: String,
    /// Address to serve HTTP routes on, if any.
    pub http_listen: Option<String>,
    /// Address to serve metrics and probes on, if any.
    pub metrics: Option<String>,
    /// Address to serve HTTPS and TLS passthrough on, if any.
    pub https_listen: Option<String>,
    /// Address to serve SOCKS5 on, if any.
    pub socks_listen: Option<String>,
    /// Fingerprint of the certificate in use (`None` in plaintext mode).
    pub fingerprint: Option<Fingerprint>,
    /// The shared token, if any.
    pub shared_token: Option<Token>,
    /// Where that token came from.
    pub token_source: TokenSource,
    /// The admin API, when it is on.
    pub admin: Option<super::admin::AdminSetup>,
    /// Where the clients created through the admin API are kept.
    pub clients_file: PathBuf,
}

impl ServerFile {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        super::load(path)
    }

    /// Parses configuration text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        super::parse(text, origin)
    }

    /// Writes the file back as TOML (tokens included, as given).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Checks everything that can be checked without the disk: keys, values, and how they fit
    /// together. Token files, certificates and the state directory are [`ServerFile::build`]'s.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_tokens()?;
        self.tls_choice()?;
        for name in self.tls_names.iter().flatten() {
            check_certificate_name(name)?;
        }
        // An empty path would put the generated key and token in the working directory.
        if self.state_dir.as_ref().is_some_and(|dir| dir.as_os_str().is_empty()) {
            return Err(invalid("state_dir", "must not be empty"));
        }
        let state_dir = self.state_dir.clone().unwrap_or_else(default_state_dir);
        super::admin::check(self, &state_dir)?;
        super::acme::check(self)?;
        self.runtime(Credentials::default(), None).map(drop)
    }

    /// Validates everything, then reads token files, loads or generates the certificate and,
    /// when no token is configured at all, loads or generates the shared token in the state
    /// directory.
    pub fn build(self) -> Result<ServerSetup, ConfigError> {
        self.validate()?;
        let state_dir = self.state_dir.clone().unwrap_or_else(default_state_dir);
        let mut credentials = Credentials::default();
        let mut client_tokens = Vec::with_capacity(self.clients.len());
        for entry in &self.clients {
            let token = secret("clients.token", entry.token.as_ref(), entry.token_file.as_deref())?.ok_or(
                ConfigError::Missing { key: "clients.token", why: "a client entry needs its token" },
            )?;
            credentials = credentials.with_client(&entry.name, token.clone());
            client_tokens.push((entry.name.as_str(), token));
        }
        let (shared_token, token_source) =
            match secret("token", self.token.as_ref(), self.token_file.as_deref())? {
                Some(token) => (Some(token), TokenSource::Supplied),
                None if !self.clients.is_empty() => (None, TokenSource::None),
                None => {
                    let (token, source) = stored_token(&state_dir, super::tokens::TOKEN_FILE)?;
                    (Some(token), source)
                }
            };
        if let Some(token) = &shared_token {
            credentials = credentials.with_shared(token.clone());
        }
        // A client's own token names it: one that is also the shared token or another client's
        // would let those holders connect under that name, with its grants.
        let mut holders = std::collections::HashMap::with_capacity(client_tokens.len());
        for (name, token) in &client_tokens {
            if shared_token.as_ref().is_some_and(|shared| shared.same_secret(token)) {
                return Err(invalid(
                    "clients.token",
                    format!("client {name:?} has the shared token; give it one of its own"),
                ));
            }
            if let Some(other) = holders.insert(token.as_bytes(), *name) {
                return Err(invalid(
                    "clients.token",
                    format!("clients {other:?} and {name:?} have the same token"),
                ));
            }
        }
        // With the key that a certificate rustls refuses (a key not its own) is told as.
        let own = match self.tls_choice()? {
            TlsChoice::Plaintext => None,
            TlsChoice::Files(cert, key) => Some((pem_files(cert, key, ("tls_cert", "tls_key"))?, "tls_key")),
            // Kept in the state directory: a failure there names it (the path is in the cause).
            TlsChoice::Generated => Some((
                ServerIdentity::load_or_generate(&state_dir, self.tls_names.as_deref().unwrap_or_default())
                    .map_err(|e| ConfigError::Invalid { key: "state_dir", source: Box::new(e) })?,
                "state_dir",
            )),
        };
        let (edge_tls, certified) = match &self.https_listen {
            // Read all the same: a file that cannot serve fails now, not once a listener is added.
            None => {
                for c in &self.certificates {
                    let identity = pem_files(&c.cert, &c.key, ("certificates", "certificates"))?;
                    crate::tls::edge_config(Vec::new(), identity)
                        .map_err(|e| ConfigError::Invalid { key: "certificates", source: Box::new(e) })?;
                }
                (None, Vec::new())
            }
            Some(_) => {
                let (tls, certified) = self.edge_tls(own.as_ref().map(|(own, _)| own.clone()))?;
                (Some(tls), certified)
            }
        };
        let (tls, fingerprint) = match own {
            None => (None, None),
            Some((own, key)) => identity(own).map_err(|e| match e {
                ConfigError::Tls(e) => ConfigError::Invalid { key, source: Box::new(e) },
                other => other,
            })?,
        };
        let admin = super::admin::setup(&self, &state_dir, tls.as_ref())?;
        // Whoever holds a client's token must not be an administrator by it.
        if let Some(admin_token) = admin.as_ref().and_then(|admin| admin.token.as_ref()) {
            if shared_token.as_ref().is_some_and(|shared| shared.same_secret(admin_token)) {
                return Err(invalid("admin_token", "is the shared token clients connect with"));
            }
            if let Some((name, _)) = client_tokens.iter().find(|(_, token)| token.same_secret(admin_token)) {
                return Err(invalid("admin_token", format!("is the token of client {name:?}")));
            }
        }
        let mut config = self.runtime(credentials, tls)?;
        config.lease_file = Some(state_dir.join(LEASE_FILE));
        config.http.tls = edge_tls;
        config.http.certified = certified;
        config.http.acme = super::acme::setup(&self, &state_dir)?;
        Ok(ServerSetup {
            config,
            listen: self.listen.unwrap_or_else(|| DEFAULT_LISTEN.into()),
            http_listen: self.http_listen,
            metrics: self.metrics,
            https_listen: self.https_listen,
            socks_listen: self.socks_listen,
            fingerprint,
            shared_token,
            token_source,
            admin,
            clients_file: state_dir.join(super::admin::CLIENTS_FILE),
        })
    }

    /// The HTTPS listener's TLS: the `[[certificates]]` by their names, the first of them (or
    /// the server's own certificate) for other names; and the leaf certificates of those.
    fn edge_tls(
        &self,
        own: Option<ServerIdentity>,
    ) -> Result<(Arc<rustls::ServerConfig>, Vec<CertificateDer<'static>>), ConfigError> {
        let certificates = self
            .certificates
            .iter()
            .map(|c| pem_files(&c.cert, &c.key, ("certificates", "certificates")))
            .collect::<Result<Vec<_>, _>>()?;
        let default = certificates.first().cloned().or(own).ok_or(ConfigError::Missing {
            key: "certificates",
            why: "the HTTPS listener needs a certificate, and the server runs without TLS",
        })?;
        let certified = certificates.iter().filter_map(|c| c.leaf().cloned()).collect();
        let tls = crate::tls::edge_config(certificates, default)
            .map_err(|e| ConfigError::Invalid { key: "certificates", source: Box::new(e) })?;
        Ok((tls, certified))
    }

    /// The runtime configuration around already-provisioned credentials and TLS: pure.
    fn runtime(
        &self,
        credentials: Credentials,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<ServerConfig, ConfigError> {
        check_listen("listen", self.listen.as_deref().unwrap_or(DEFAULT_LISTEN))?;
        if let Some(listen) = &self.http_listen {
            check_listen("http_listen", listen)?;
        }
        if let Some(listen) = &self.metrics {
            check_listen("metrics", listen)?;
        }
        if let Some(listen) = &self.https_listen {
            check_listen("https_listen", listen)?;
        }
        if let Some(listen) = &self.socks_listen {
            check_listen("socks_listen", listen)?;
        }
        let mut config = ServerConfig::new(credentials, tls);
        config.policy = self.policy()?;
        if let Some(d) = self.port_grace {
            config.port_grace = d.0;
        }
        if let Some(d) = self.drain_timeout {
            config.drain_timeout = d.0;
        }
        if let Some(d) = self.heartbeat_interval {
            config.session.heartbeat_interval = positive_duration("heartbeat_interval", d)?;
            if d.0 > crate::proto::handshake::MAX_HEARTBEAT_INTERVAL {
                return Err(invalid("heartbeat_interval", "must be at most 10m, the longest a client takes"));
            }
            // A session raises a shorter one; the file says what runs, or is refused.
            if d.0 < crate::proto::handshake::MIN_HEARTBEAT_INTERVAL {
                return Err(invalid(
                    "heartbeat_interval",
                    "must be at least 100ms, the shortest a session uses",
                ));
            }
        }
        if let Some(d) = self.heartbeat_timeout {
            config.session.heartbeat_timeout = positive_duration("heartbeat_timeout", d)?;
        }
        if config.session.heartbeat_timeout <= config.session.heartbeat_interval {
            return Err(ConfigError::Conflict(
                "`heartbeat_timeout` must be longer than `heartbeat_interval`".into(),
            ));
        }
        self.limits.apply(&mut config)?;
        match &self.fallback {
            None => {}
            Some(Service::Status(code)) => config.http.fallback = *code,
            Some(other) => {
                return Err(invalid(
                    "fallback",
                    format!("{other}: the server's fallback is an http_status:NNN"),
                ))
            }
        }
        Ok(config)
    }

    fn policy(&self) -> Result<Policy, ConfigError> {
        let mut policy = Policy::default();
        if let Some(ports) = &self.allow_ports {
            policy.allow_ports = ports.clone();
        }
        policy.allow_targets = self.allow_targets.clone().unwrap_or_default();
        policy.allow_hosts = self.allow_hosts.clone().unwrap_or_default();
        policy.allow_networks = self.allow_networks.clone().unwrap_or_default();
        policy.max_replicas = check_replicas("max_replicas", self.max_replicas)?.unwrap_or(1);
        if let Some(bind) = self.bind_addr {
            policy.default_bind = crate::forward::check_bind(bind).map_err(|e| invalid("bind_addr", e))?;
        }
        if let Some(list) = &self.allow_bind {
            check_binds("allow_bind", list)?;
            if self.bind_addr.is_some() && !list.contains(&policy.default_bind) {
                return Err(ConfigError::Conflict(format!(
                    "`bind_addr` {} is not in `allow_bind`",
                    policy.default_bind
                )));
            }
            policy.allow_bind = list.clone();
        }
        let mut seen = HashSet::new();
        for entry in &self.clients {
            validate_name(&entry.name).map_err(|e| invalid("clients.name", e))?;
            if !seen.insert(entry.name.as_str()) {
                return Err(invalid("clients.name", format!("client {:?} is listed twice", entry.name)));
            }
            policy.clients.insert(entry.name.clone(), entry.policy()?);
        }
        check_owned_ports(&self.clients)?;
        Ok(policy)
    }

    /// Inline tokens are long enough, and no token is given two ways.
    fn check_tokens(&self) -> Result<(), ConfigError> {
        check_secret("token", self.token.as_ref(), self.token_file.as_deref())?;
        for entry in &self.clients {
            check_secret("clients.token", entry.token.as_ref(), entry.token_file.as_deref())?;
            if entry.token.is_none() && entry.token_file.is_none() {
                return Err(ConfigError::Missing {
                    key: "clients.token",
                    why: "each client entry needs `token` or `token_file`",
                });
            }
        }
        Ok(())
    }

    fn tls_choice(&self) -> Result<TlsChoice<'_>, ConfigError> {
        match (self.insecure_plaintext, &self.tls_cert, &self.tls_key) {
            (true, None, None) => Ok(TlsChoice::Plaintext),
            (true, _, _) => Err(ConfigError::Conflict(
                "`insecure_plaintext` cannot be combined with `tls_cert`/`tls_key`".into(),
            )),
            (false, Some(cert), Some(key)) => Ok(TlsChoice::Files(cert, key)),
            (false, None, None) => Ok(TlsChoice::Generated),
            (false, _, _) => Err(ConfigError::Conflict("`tls_cert` and `tls_key` go together".into())),
        }
    }
}

/// A `tls_names` entry: what a client may verify the generated certificate for, a DNS name
/// (`*.` before it for a wildcard) or an IP address. A name ending in a number (`999.1.1.1`)
/// would be neither, and never verify.
fn check_certificate_name(name: &str) -> Result<(), ConfigError> {
    let dns = name.strip_prefix("*.").unwrap_or(name);
    let valid = name.parse::<IpAddr>().is_ok()
        || matches!(
            rustls::pki_types::ServerName::try_from(dns),
            Ok(rustls::pki_types::ServerName::DnsName(_))
        ) && !dns
            .trim_end_matches('.')
            .rsplit('.')
            .next()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()));
    if valid {
        Ok(())
    } else {
        Err(invalid("tls_names", format!("{name:?} is not a DNS name or an IP address")))
    }
}

/// Where the server's certificate comes from.
enum TlsChoice<'a> {
    Plaintext,
    Files(&'a Path, &'a Path),
    Generated,
}

fn identity(
    identity: ServerIdentity,
) -> Result<(Option<Arc<rustls::ServerConfig>>, Option<Fingerprint>), ConfigError> {
    let fingerprint = identity.fingerprint();
    Ok((Some(server_config(identity)?), Some(fingerprint)))
}

impl ClientEntry {
    fn policy(&self) -> Result<ClientPolicy, ConfigError> {
        if let Some(list) = &self.allow_bind {
            check_binds("clients.allow_bind", list)?;
        }
        Ok(ClientPolicy {
            allow_ports: self.allow_ports.clone(),
            allow_visit: self.allow_visit.clone(),
            allow_expose: self.allow_expose.clone(),
            allow_targets: self.allow_targets.clone(),
            ports: self.ports.clone(),
            allow_bind: self.allow_bind.clone(),
            allow_hosts: self.allow_hosts.clone(),
            allow_networks: self.allow_networks.clone(),
            replicas: check_replicas("clients.replicas", self.replicas)?,
        })
    }
}

/// Most sessions one client name may hold at once.
pub const MAX_REPLICAS: usize = 64;

fn check_replicas(key: &'static str, replicas: Option<usize>) -> Result<Option<usize>, ConfigError> {
    match replicas {
        Some(n) if !(1..=MAX_REPLICAS).contains(&n) => {
            Err(invalid(key, format!("{n} sessions: from 1 to {MAX_REPLICAS}")))
        }
        other => Ok(other),
    }
}

fn check_binds(key: &'static str, list: &[IpAddr]) -> Result<(), ConfigError> {
    if list.is_empty() {
        return Err(invalid(key, "must name at least one IP address"));
    }
    for &ip in list {
        crate::forward::check_bind(ip).map_err(|e| invalid(key, format!("{ip} {e}")))?;
    }
    Ok(())
}

/// A port owned by two clients would be owned by neither.
fn check_owned_ports(clients: &[ClientEntry]) -> Result<(), ConfigError> {
    let owners: Vec<(&String, &PortSet)> =
        clients.iter().filter_map(|c| c.ports.as_ref().map(|ports| (&c.name, ports))).collect();
    for (i, (a, a_ports)) in owners.iter().enumerate() {
        for (b, b_ports) in &owners[i + 1..] {
            if let Some(port) = a_ports.first_shared(b_ports) {
                return Err(invalid(
                    "clients.ports",
                    format!("port {port} is owned by both {a:?} and {b:?}"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
