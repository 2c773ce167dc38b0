use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::entries::{RemoteEntry, TlsEntry};
use super::tokens::{check_secret, secret};
use super::RouteFile;
use super::{
    default_client_name, invalid, positive_duration, window_growth, ConfigError, HumanDuration, SecretString,
};
use crate::auth::Token;
use crate::client::{Backoff, ClientConfig, RouteSet, RouteSetError, ServerEndpoint};
use crate::forward::{IpNet, LocalForwardSpec, ServiceSpec, SocksSpec};
use crate::http::{HttpAction, HttpRoute, Service};
use crate::proto::{validate_name, MAX_CONNECTIONS};
use crate::tls::{client_config, origin_config, Fingerprint, ServerTrust};
use crate::transport::ClientTransport;

/// The client's configuration file (`tunnel-cli connect --config FILE`): plain data.
/// [`ClientFile::validate`] checks it without touching the disk; [`ClientFile::build`] also
/// reads the token and CA files.
///
/// ```
/// use tunnel_core::config::ClientFile;
/// let text = "server = \"tunnel.example.com:7700\"\ntoken_file = \"/run/token\"\n\
///             fingerprint = \"0000000000000000000000000000000000000000000000000000000000000000\"\n\
///             remote = [\"6443:127.0.0.1:6443\", { spec = \"2222:127.0.0.1:22\", idle_timeout = \"1h\" }]\n";
/// let file = ClientFile::parse(text, "client.toml".as_ref()).unwrap();
/// file.validate().unwrap();
/// assert!(file.to_toml().unwrap().contains("idle_timeout = \"1h\""));
/// ```
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// Server address, `host:port` (required); or a list of the servers of one deployment,
    /// which the client keeps its whole table on at once.
    #[serde(default, with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub server: Vec<String>,
    /// Token (or `token_file`, or the `TUNNEL_TOKEN` environment variable).
    pub token: Option<SecretString>,
    /// File holding the token.
    pub token_file: Option<PathBuf>,
    /// Name to authenticate as (default: derived from the host name).
    pub name: Option<String>,
    /// Address to serve `/metrics`, `/ready` and `/healthz` on, e.g. `127.0.0.1:9091` (default:
    /// none).
    pub metrics: Option<String>,
    /// Remote forwards, `[BIND_ADDR:]REMOTE_PORT:LOCAL_HOST:LOCAL_PORT`, each a string or a
    /// table with options: `{ spec = "2222:127.0.0.1:22", idle_timeout = "1h" }`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote: Vec<RemoteEntry>,
    /// Local forwards, `[BIND_ADDR:]PORT:CLIENT/SERVICE` or `[BIND_ADDR:]PORT:HOST:PORT`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local: Vec<LocalForwardSpec>,
    /// SOCKS5 proxies, `[BIND_ADDR:]PORT` (127.0.0.1 unless named; no password): each
    /// connection goes through the server to the client routing its destination address's
    /// network, or (any other address, and host names) to a target the server may dial.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub socks: Vec<SocksSpec>,
    /// Username the SOCKS proxies require, with `socks_password` (default: none required).
    pub socks_user: Option<String>,
    /// Password the SOCKS proxies require, at least 16 characters (or the
    /// `TUNNEL_SOCKS_PASSWORD` environment variable of `tunnel-cli connect`).
    pub socks_password: Option<SecretString>,
    /// Private services, `SERVICE=HOST:PORT`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<ServiceSpec>,
    /// Networks this client offers egress into, such as `10.96.0.0/12`: the server sends
    /// connections to their addresses here, if its `allow_networks` lets this client route them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<IpNet>,
    /// HTTP routes, `HOST[/PATH]=SERVICE` (a path is a prefix; SERVICE is `http://HOST:PORT`,
    /// `https://HOST:PORT` or `http_status:NNN`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    /// TLS passthrough routes, `HOST=HOST:PORT`: the origin terminates TLS itself. An entry
    /// with options is a table: `{ spec = "HOST=HOST:PORT", proxy_protocol = "v2" }`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsEntry>,
    /// The answer for requests to this client's hosts that no route matches.
    pub http_fallback: Option<Service>,
    /// HTTP routes with the full set of matches and actions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteFile>,
    /// Pinned SHA-256 fingerprint of the server certificate; or a list, a server being trusted
    /// when its certificate matches any of them.
    #[serde(default, with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub fingerprint: Vec<Fingerprint>,
    /// PEM file of CA certificates to verify the server with; or a list of files, all trusted.
    #[serde(default, with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub ca: Vec<PathBuf>,
    /// PEM file of CA certificates trusted for `https://` origins, beside the system's.
    pub origin_ca: Option<PathBuf>,
    /// Connect without TLS; the server must opt in too (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_plaintext: bool,
    /// Reach the server through this HTTP proxy (`CONNECT`),
    /// `[http://][USER:PASSWORD@]HOST[:PORT]`, or `none` for a direct connection (default:
    /// direct; `tunnel-cli connect` reads `https_proxy` and `all_proxy` from the environment
    /// when neither this nor `--proxy` is set). A secret when it holds a password.
    pub proxy: Option<SecretString>,
    /// Servers reached directly though `proxy` is set: comma-separated host names (each with
    /// its subdomains), IP addresses and networks, or `*`, as curl reads `NO_PROXY`
    /// (`tunnel-cli connect` takes `no_proxy` from the environment with a proxy it takes from
    /// there).
    pub no_proxy: Option<String>,
    /// What carries the session to the server: `tcp`, `websocket` (an HTTP/1.1 upgrade, for
    /// networks that let only HTTPS out), or `auto` (TCP, then WebSocket when TCP fails after
    /// connecting; the default).
    pub transport: Option<crate::transport::Wire>,
    /// Connections per session, 1 to 16, each authenticated on its own; streams are spread
    /// across them (default: the number of CPU cores, at most 4).
    pub connections: Option<usize>,
    /// TCP connect + TLS + handshake time limit (default `10s`).
    pub handshake_timeout: Option<HumanDuration>,
    /// At shutdown (SIGTERM), how long open streams may go on before they are cut (default `30s`).
    pub drain_timeout: Option<HumanDuration>,
    /// Silence after which the server is declared dead (default `30s`, at least 3 heartbeats).
    pub heartbeat_timeout: Option<HumanDuration>,
    /// MiB of receive window the session's streams may grow into together beyond 256 KiB
    /// each, as yamux tunes them toward the link's bandwidth-delay product (default 16).
    pub max_receive_window_mib: Option<usize>,
    /// Reconnect policy.
    #[serde(default, skip_serializing_if = "ReconnectFile::is_unset")]
    pub reconnect: ReconnectFile,
}

/// Shortest first delay `[reconnect]` takes: a shorter one had a client whose servers were
/// down try each of them (a lookup, a TCP connect, a TLS handshake, a log line) a thousand
/// times a second.
pub const MIN_RECONNECT_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

/// `[reconnect]`: exponential backoff with jitter between attempts.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectFile {
    /// First step of the delays (default `500ms`; at least [`MIN_RECONNECT_DELAY`]); each
    /// delay is drawn from the upper half of its step.
    pub initial: Option<HumanDuration>,
    /// Largest delay (default `30s`).
    pub max: Option<HumanDuration>,
    /// Consecutive failures before giving up; 0 retries forever (default 0).
    pub max_attempts: Option<u32>,
}

impl ReconnectFile {
    /// Whether every setting is left at its default.
    pub fn is_unset(&self) -> bool {
        *self == Self::default()
    }
}

/// How the client verifies the server.
enum Trust<'a> {
    Plaintext,
    Pinned(&'a [Fingerprint]),
    Ca(&'a [PathBuf]),
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

    /// Writes the file back as TOML (the token included, as given).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Checks everything that can be checked without the disk; the token and CA files are
    /// [`ClientFile::build`]'s.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let servers = self.servers()?;
        if let Some(listen) = &self.metrics {
            super::check_listen("metrics", listen)?;
        }
        check_secret("token", self.token.as_ref(), self.token_file.as_deref())?;
        if self.token.is_none() && self.token_file.is_none() {
            return Err(ConfigError::Missing { key: "token", why: "the token to authenticate with" });
        }
        let trust = self.trust()?;
        if !matches!(trust, Trust::Plaintext) {
            for server in servers {
                crate::transport::server_name(server).map_err(|e| invalid("server", e))?;
            }
        }
        // Any token will do to check the rest.
        self.runtime(Token::generate(), ClientTransport::Plaintext).map(drop)
    }

    /// Validates everything, then reads the token and CA files into a runtime configuration.
    pub fn build(self) -> Result<ClientConfig, ConfigError> {
        self.validate()?;
        let server = self.server()?;
        let token = secret("token", self.token.as_ref(), self.token_file.as_deref())?
            .ok_or(ConfigError::Missing { key: "token", why: "the token to authenticate with" })?;
        let transport = match self.trust()? {
            Trust::Plaintext => ClientTransport::Plaintext,
            Trust::Pinned([fp]) => tls_transport(&ServerTrust::Pinned(*fp), server)?,
            Trust::Pinned(fps) => tls_transport(&ServerTrust::PinnedAny(fps.to_vec()), server)?,
            Trust::Ca(paths) => {
                let mut roots = Vec::new();
                for path in paths {
                    roots.extend(crate::tls::read_certs(path)?);
                }
                tls_transport(&ServerTrust::Roots(roots), server)?
            }
        };
        let mut config = self.runtime(token, transport)?;
        if let Some(path) = &self.origin_ca {
            config.origin_tls = Some(origin_config(Some(path)).map_err(|e| invalid("origin_ca", e))?);
        }
        Ok(config)
    }

    /// The routes the file publishes (its `remote` and `expose` entries), checked: what a
    /// running client is given when its file changes.
    pub fn route_set(&self) -> Result<RouteSet, ConfigError> {
        let remotes = self.remote.iter().map(RemoteEntry::build).collect::<Result<Vec<_>, _>>()?;
        let mut http = self.http.clone();
        for entry in &self.routes {
            http.push(entry.build().map_err(|e| invalid("routes", format!("host {}: {e}", entry.host)))?);
        }
        let routes = RouteSet {
            remotes,
            services: self.expose.clone(),
            http,
            http_fallback: self.http_fallback.clone().map(HttpAction::to),
            tls: self.tls.iter().map(TlsEntry::build).collect(),
            networks: self.networks.clone(),
        };
        routes.check().map_err(|e| match e {
            RouteSetError::DuplicateService(_) => invalid("expose", e),
            RouteSetError::DuplicateForward { .. } => invalid("remote", e),
            RouteSetError::DuplicateRoute(ref what) if what.starts_with("network ") => invalid("networks", e),
            _ => invalid("routes", e),
        })?;
        Ok(routes)
    }

    /// The first server: the one `server`, or the first of a list.
    fn server(&self) -> Result<&str, ConfigError> {
        Ok(self.servers()?[0])
    }

    /// Every server, checked, and none twice.
    fn servers(&self) -> Result<Vec<&str>, ConfigError> {
        if self.server.is_empty() {
            return Err(ConfigError::Missing { key: "server", why: "the server's address, HOST:PORT" });
        }
        let mut servers: Vec<&str> = Vec::with_capacity(self.server.len());
        let mut seen = Vec::with_capacity(self.server.len());
        for server in &self.server {
            let Some(key) = server_key(server) else {
                return Err(invalid(
                    "server",
                    format!("{server:?} is not HOST:PORT (a port from 1 to 65535)"),
                ));
            };
            // The same server twice would replace its own session there.
            if let Some(i) = seen.iter().position(|seen| *seen == key) {
                let why = if servers[i] == server.as_str() {
                    format!("{server:?} is listed twice")
                } else {
                    format!("{server:?} is listed twice (also as {:?})", servers[i])
                };
                return Err(invalid("server", why));
            }
            seen.push(key);
            servers.push(server);
        }
        Ok(servers)
    }

    fn trust(&self) -> Result<Trust<'_>, ConfigError> {
        match (self.insecure_plaintext, self.fingerprint.is_empty(), self.ca.is_empty()) {
            (true, true, true) => Ok(Trust::Plaintext),
            (true, _, _) => Err(ConfigError::Conflict(
                "`insecure_plaintext` cannot be combined with `fingerprint`/`ca`".into(),
            )),
            (false, false, false) => {
                Err(ConfigError::Conflict("give `fingerprint` or `ca`, not both".into()))
            }
            (false, false, true) => Ok(Trust::Pinned(&self.fingerprint)),
            (false, true, false) => Ok(Trust::Ca(&self.ca)),
            (false, true, true) => Err(ConfigError::Missing {
                key: "fingerprint",
                why: "the server's certificate must be verified: set `fingerprint` or `ca` \
                      (or `insecure_plaintext` on both sides)",
            }),
        }
    }

    /// The runtime configuration around an already-read token and transport: pure.
    fn runtime(&self, token: Token, transport: ClientTransport) -> Result<ClientConfig, ConfigError> {
        let server = self.server()?.to_owned();
        let name = self.name.clone().unwrap_or_else(default_client_name);
        validate_name(&name).map_err(|e| invalid("name", e))?;
        let routes = self.route_set()?;
        let mut config = ClientConfig::new(server, name, token, transport);
        config.remotes = routes.remotes;
        check_local_listeners(&self.local, &self.socks, self.metrics.as_deref())?;
        config.locals = self.local.clone();
        config.services = routes.services;
        config.http = routes.http;
        config.http_fallback = routes.http_fallback;
        config.tls = routes.tls;
        config.networks = routes.networks;
        config.socks = self.socks.clone();
        config.socks_login = match (&self.socks_user, &self.socks_password) {
            (None, None) => None,
            (Some(user), Some(password)) => {
                Some(crate::socks::Login::new(user.clone(), password.expose_secret()).map_err(|e| {
                    let field = match e {
                        crate::socks::LoginError::LongUser => "socks_user",
                        _ => "socks_password",
                    };
                    invalid(field, e)
                })?)
            }
            (Some(_), None) => return Err(invalid("socks_password", "`socks_user` needs `socks_password`")),
            (None, Some(_)) => return Err(invalid("socks_user", "`socks_password` needs `socks_user`")),
        };
        if let Some(d) = self.handshake_timeout {
            config.handshake_timeout = positive_duration("handshake_timeout", d)?;
        }
        if let Some(d) = self.drain_timeout {
            config.drain_timeout = d.0;
        }
        if let Some(n) = self.connections {
            if !(1..=MAX_CONNECTIONS).contains(&n) {
                return Err(invalid("connections", format!("{n} is not between 1 and {MAX_CONNECTIONS}")));
            }
            config.connections = n;
        }
        if let Some(d) = self.heartbeat_timeout {
            config.session.heartbeat_timeout = positive_duration("heartbeat_timeout", d)?;
        }
        if let Some(mib) = self.max_receive_window_mib {
            config.session.mux.window_growth = window_growth("max_receive_window_mib", mib)?;
        }
        let defaults = Backoff::default();
        config.reconnect = Backoff {
            initial: self.reconnect.initial.map_or(defaults.initial, |d| d.0),
            max: self.reconnect.max.map_or(Ok(defaults.max), |d| positive_duration("reconnect.max", d))?,
            max_attempts: self.reconnect.max_attempts.filter(|n| *n > 0),
        };
        if config.reconnect.initial < MIN_RECONNECT_DELAY || config.reconnect.initial > config.reconnect.max {
            return Err(invalid("reconnect.initial", "must be at least 10ms and at most `reconnect.max`"));
        }
        // `none`: direct, as `--proxy none` (and nothing taken from the environment).
        if let Some(proxy) =
            self.proxy.as_ref().filter(|proxy| !proxy.expose_secret().trim().eq_ignore_ascii_case("none"))
        {
            config.proxy = Some(proxy.expose_secret().parse().map_err(|e| invalid("proxy", e))?);
        }
        config.no_proxy = self.no_proxy.clone();
        config.wire = self.transport.unwrap_or_default();
        for server in &self.servers()?[1..] {
            let transport = config.transport.for_server(server).map_err(|e| invalid("server", e))?;
            config.other_servers.push(ServerEndpoint::new(*server, transport));
        }
        Ok(config)
    }
}

/// A key that holds one value or a list of them: read either way, written as one value when
/// there is one.
mod one_or_many {
    use std::marker::PhantomData;

    use serde::de::{self, value::SeqAccessDeserializer, value::StrDeserializer, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    struct OneOrMany<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrMany<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string or a list of strings")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<T>, E> {
            T::deserialize(StrDeserializer::<E>::new(text)).map(|one| vec![one])
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Vec<T>, A::Error> {
            Vec::<T>::deserialize(SeqAccessDeserializer::new(seq))
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Vec<T>, D::Error> {
        d.deserialize_any(OneOrMany(PhantomData))
    }

    pub(super) fn serialize<S: Serializer, T: Serialize>(values: &[T], s: S) -> Result<S::Ok, S::Error> {
        match values {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

/// A server address as the place it names, `None` when it is not `HOST:PORT` with a port from
/// 1 to 65535: names compared without case or a final dot (`A.example.:7700` is
/// `a.example:7700`), addresses by value (`[::ffff:10.0.0.1]` is `10.0.0.1`), ports by number
/// (`07700` is `7700`). A name and an address it resolves to stay two entries: telling them
/// apart would take a lookup.
fn server_key(server: &str) -> Option<(String, u16)> {
    let port = super::port_of(server).filter(|&port| port != 0)?;
    let (host, _) = server.rsplit_once(':')?;
    let host = crate::proto::target::parse_host(host).ok()?;
    let host = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_canonical().to_string(),
        Err(_) => host.strip_suffix('.').unwrap_or(&host).to_ascii_lowercase(),
    };
    Some((host, port))
}

fn tls_transport(trust: &ServerTrust, server: &str) -> Result<ClientTransport, ConfigError> {
    ClientTransport::tls(client_config(trust)?, server).map_err(|e| invalid("server", e))
}

/// Local forwards, SOCKS proxies and the metrics listener, none listening where another does
/// (the same protocol and port, on the same address, or one of them on every address:
/// `0.0.0.0` covers IPv4, `::` both families, as Linux binds it dual-stack; an IPv4-mapped
/// address is the IPv4 one): caught here, as a bad configuration, not when the second fails to
/// listen. A metrics listener named by host name (`localhost:9091`) is left to its bind: which
/// addresses it has is the resolver's to say.
fn check_local_listeners(
    locals: &[LocalForwardSpec],
    socks: &[SocksSpec],
    metrics: Option<&str>,
) -> Result<(), ConfigError> {
    use crate::forward::Protocol;
    use std::net::{IpAddr, Ipv4Addr};
    /// One local listener: its key and what one and several of its kind are called, its spec
    /// as written, protocol, address and port.
    struct Listener {
        key: &'static str,
        one: &'static str,
        many: &'static str,
        spec: String,
        protocol: Protocol,
        address: IpAddr,
        port: u16,
    }
    let address = |bind: Option<IpAddr>| bind.unwrap_or(Ipv4Addr::LOCALHOST.into()).to_canonical();
    let forwards = locals.iter().map(|l| Listener {
        key: "local",
        one: "local forward",
        many: "local forwards",
        spec: l.to_string(),
        protocol: l.protocol,
        address: address(l.bind),
        port: l.port,
    });
    let proxies = socks.iter().map(|s| Listener {
        key: "socks",
        one: "SOCKS proxy",
        many: "SOCKS proxies",
        spec: s.to_string(),
        protocol: Protocol::Tcp,
        address: address(s.bind),
        port: s.port,
    });
    let metrics = metrics.and_then(|listen| {
        let (host, port) = listen.rsplit_once(':')?;
        let ip = crate::proto::target::parse_host(host).ok()?.parse::<IpAddr>().ok()?;
        Some(Listener {
            key: "metrics",
            one: "metrics listener",
            many: "metrics listeners",
            spec: listen.to_owned(),
            protocol: Protocol::Tcp,
            address: ip.to_canonical(),
            port: port.parse().ok()?,
        })
    });
    let listeners: Vec<Listener> = forwards.chain(proxies).chain(metrics).collect();
    let covers = |any: IpAddr, other: IpAddr| any.is_unspecified() && (any.is_ipv6() || other.is_ipv4());
    for (i, first) in listeners.iter().enumerate() {
        for second in &listeners[i + 1..] {
            let (a, b) = (first.address, second.address);
            let overlap = a == b || covers(a, b) || covers(b, a);
            if first.port != 0 && first.port == second.port && first.protocol == second.protocol && overlap {
                let (one, two) = (&first.spec, &second.spec);
                let why = if first.key == second.key {
                    format!("{} {one} and {two}", first.many)
                } else {
                    format!("{} {one} and {} {two}", first.one, second.one)
                };
                return Err(invalid(second.key, format!("{why} listen on the same port")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
