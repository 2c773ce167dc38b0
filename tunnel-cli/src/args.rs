//! Command-line flags, and how they override the TOML configuration files.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use std::net::IpAddr;

use tunnel_core::config::{ClientFile, RemoteEntry, SecretString, ServerFile};
use tunnel_core::forward::{
    Glob, IpNet, LocalForwardSpec, PortSet, RemoteForwardSpec, ServiceSpec, SocksSpec, TargetRules,
};
use tunnel_core::http::{HttpRoute, Service, TlsRoute};
use tunnel_core::tls::Fingerprint;

/// A self-hosted reverse tunnel: publish services behind NAT through a public server over one
/// TLS-encrypted, token-authenticated, multiplexed connection.
#[derive(Debug, Parser)]
#[command(name = "tunnel-cli", version, about)]
pub struct Cli {
    /// Log format on stderr: `text` for people, `json` (one object per line) for collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the public server that clients connect to.
    Serve(ServeArgs),
    /// Connect to a server and publish local services through it.
    Connect(ConnectArgs),
    /// Print the SHA-256 fingerprint of a PEM certificate (for `connect --fingerprint`).
    Fingerprint(FingerprintArgs),
    /// Ask a running server through its admin API: status, and client credentials.
    Admin(crate::admin::AdminArgs),
    /// Print a shell completion script, e.g. `tunnel-cli completions bash > /etc/bash_completion.d/tunnel-cli`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a manual page (roff), e.g. `tunnel-cli man serve | man -l -`.
    Man {
        /// A subcommand's page (`tunnel-cli-serve(1)`) instead of the overview.
        #[arg(value_name = "SUBCOMMAND")]
        subcommand: Option<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see examples/server.toml); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to accept clients on [default: 0.0.0.0:7700].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Shared token for clients (else TUNNEL_TOKEN, the config, or one generated in the state dir).
    #[arg(long, env = "TUNNEL_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<SecretString>,
    /// Directory for the generated certificate and token.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// PEM certificate chain to serve instead of a generated one.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Ports clients may bind, e.g. 6443,10000-10100, or none [default: 1024-65535].
    #[arg(long, value_name = "LIST")]
    pub allow_ports: Option<PortSet>,
    /// Hosts the server may dial for clients' local forwards, e.g.
    /// 127.0.0.1:6443,10.0.0.0/8:10250 [default: none].
    #[arg(long, value_name = "LIST")]
    pub allow_targets: Option<TargetRules>,
    /// Addresses clients may ask their forwards to bind, e.g. 127.0.0.1,::1 (repeatable)
    /// [default: only the configured bind_addr, 0.0.0.0].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub allow_bind: Vec<IpAddr>,
    /// Run without TLS (clients must pass --insecure-plaintext too).
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Serve clients' HTTP routes to visitors on this address (HTTP/1.1), e.g. 0.0.0.0:80.
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// Serve /metrics (Prometheus), /ready and /healthz on this address, e.g. 127.0.0.1:9090.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Serve SOCKS5 on this address for people without a client: username a client's name,
    /// password its own token; each connection follows that client's rules. Unencrypted:
    /// listen where only trusted hosts reach [default: off].
    #[arg(long, value_name = "ADDR")]
    pub socks_listen: Option<String>,
    /// Serve HTTPS (HTTP/1.1 and HTTP/2, certificates from [[certificates]] in the config, else
    /// the server's own) and clients' TLS passthrough routes on this address, e.g. 0.0.0.0:443.
    #[arg(long, value_name = "ADDR")]
    pub https_listen: Option<String>,
    /// Get certificates for the host names of clients' HTTP routes from an ACME authority
    /// (Let's Encrypt unless --acme-directory), with this contact address, and serve them on
    /// the HTTPS listener; renewed while running.
    #[arg(long, value_name = "EMAIL")]
    pub acme_email: Option<String>,
    /// The ACME directory URL [default: https://acme-v02.api.letsencrypt.org/directory].
    #[arg(long, value_name = "URL")]
    pub acme_directory: Option<String>,
    /// PEM file of CA certificates trusted for the ACME directory's TLS, beside the system's.
    #[arg(long, value_name = "PEM")]
    pub acme_ca: Option<PathBuf>,
    /// How the ACME authority checks each name: http-01 (on --http-listen) or tls-alpn-01 (on
    /// --https-listen) [default: http-01 with --http-listen, else tls-alpn-01].
    #[arg(long, value_name = "CHALLENGE")]
    pub acme_challenge: Option<tunnel_core::acme::Challenge>,
    /// Hosts clients on the shared token may serve, as globs, e.g. '*.apps.example.com'
    /// (repeatable or comma-separated) [default: none].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub allow_hosts: Vec<Glob>,
    /// Networks clients on the shared token may route, e.g. 10.96.0.0/12 (repeatable or
    /// comma-separated) [default: none].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub allow_networks: Vec<IpNet>,
    /// Serve the admin API on this address (TLS with the server's certificate, and the admin
    /// token), or on a UNIX socket: `unix` for STATE_DIR/admin.sock, or a socket path.
    #[arg(long, value_name = "ADDR|unix|SOCKET")]
    pub admin_listen: Option<String>,
    /// The admin token (else `admin_token` or `admin_token_file` in the config, or one
    /// generated into STATE_DIR/admin-token). TUNNEL_ADMIN_TOKEN is for `tunnel-cli admin`.
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<SecretString>,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// TOML configuration file (see examples/client.toml); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Server address; repeat it for each server of one deployment, and the client keeps its
    /// forwards and routes on all of them at once.
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Vec<String>,
    /// Token (else TUNNEL_TOKEN or the config).
    #[arg(long, env = "TUNNEL_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<SecretString>,
    /// Name to authenticate as [default: this host's name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Serve /metrics (Prometheus), /ready and /healthz on this address, e.g. 127.0.0.1:9091.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Remote forward: a port on the server that reaches LOCAL_HOST:LOCAL_PORT here. REMOTE_PORT 0
    /// lets the server choose. `udp:` first carries UDP datagrams (each visitor address a flow).
    /// Repeatable.
    #[arg(short = 'R', long = "remote", value_name = "[udp:][BIND_ADDR:]REMOTE_PORT:LOCAL_HOST:LOCAL_PORT")]
    pub remote: Vec<RemoteForwardSpec>,
    /// Local forward: listen on PORT here and carry each connection through the server to TARGET,
    /// a private service CLIENT/SERVICE or a HOST:PORT the server may dial. PORT 0 lets the OS
    /// choose. `udp:` first carries UDP datagrams to a HOST:PORT. Repeatable.
    #[arg(short = 'L', long = "local", value_name = "[udp:][BIND_ADDR:]PORT:TARGET")]
    pub local: Vec<LocalForwardSpec>,
    /// SOCKS5 proxy: listen on PORT here (127.0.0.1 unless BIND_ADDR is given; no password);
    /// each connection goes through the server to the client routing its destination address's
    /// network, or (other addresses, host names) to a target the server may dial; UDP ASSOCIATE
    /// carries datagrams the same way. Repeatable.
    #[arg(short = 'D', long = "socks", value_name = "[BIND_ADDR:]PORT")]
    pub socks: Vec<SocksSpec>,
    /// Username the SOCKS proxies require, with the password in TUNNEL_SOCKS_PASSWORD
    /// (at least 16 characters) [default: none required].
    #[arg(long, value_name = "USER")]
    pub socks_user: Option<String>,
    /// Password the SOCKS proxies require (else TUNNEL_SOCKS_PASSWORD or the config).
    #[arg(long, env = "TUNNEL_SOCKS_PASSWORD", hide_env_values = true, value_name = "PASSWORD")]
    pub socks_password: Option<SecretString>,
    /// Offer egress into this network (CIDR, e.g. 10.96.0.0/12): connections to its addresses
    /// through the server are dialed here, if the server's allow_networks permits. Repeatable.
    #[arg(long = "expose-network", value_name = "CIDR")]
    pub expose_network: Vec<IpNet>,
    /// Expose a private service, reachable only through the tunnel as NAME/SERVICE. Repeatable.
    #[arg(long = "expose", value_name = "SERVICE=HOST:PORT")]
    pub expose: Vec<ServiceSpec>,
    /// HTTP route: requests for HOST (and PATH, a prefix) go to SERVICE, `http://HOST:PORT`,
    /// `https://HOST:PORT` or `http_status:NNN`. Repeatable.
    #[arg(long = "http", value_name = "HOST[/PATH]=SERVICE")]
    pub http: Vec<HttpRoute>,
    /// TLS passthrough: TLS connections for HOST (by SNI) go undecrypted to an origin that
    /// terminates TLS itself. Repeatable.
    #[arg(long = "tls", value_name = "HOST=HOST:PORT")]
    pub tls: Vec<TlsRoute>,
    /// The answer for requests to this client's hosts that no --http route matches.
    #[arg(long, value_name = "SERVICE")]
    pub http_fallback: Option<Service>,
    /// Expected SHA-256 fingerprint of the server certificate (printed by `serve`); repeatable,
    /// a server being trusted when it matches any.
    #[arg(long, value_name = "FP", conflicts_with = "ca")]
    pub fingerprint: Vec<Fingerprint>,
    /// PEM file of CA certificates to verify the server with (repeatable).
    #[arg(long, value_name = "PEM")]
    pub ca: Vec<PathBuf>,
    /// Connect without TLS (the server must run with --insecure-plaintext too).
    #[arg(long, conflicts_with_all = ["fingerprint", "ca"])]
    pub insecure_plaintext: bool,
    /// PEM file of CA certificates trusted for https:// origins, beside the system's.
    #[arg(long, value_name = "PEM")]
    pub origin_ca: Option<PathBuf>,
    /// Reach the server through this HTTP proxy (CONNECT), [http://][USER:PASSWORD@]HOST[:PORT],
    /// or `none` for a direct connection [default: https_proxy or all_proxy from the
    /// environment, unless no_proxy lists the server].
    #[arg(long, value_name = "URL")]
    pub proxy: Option<SecretString>,
    /// What carries the session: tcp, websocket (an HTTP/1.1 upgrade, through networks that
    /// let only HTTPS out), or auto (TCP, then WebSocket if TCP fails after connecting)
    /// [default: auto].
    #[arg(long, value_name = "KIND")]
    pub transport: Option<tunnel_core::transport::Wire>,
    /// Connections per session (1 to 16), each authenticated on its own; streams are spread
    /// across them [default: the number of CPU cores, at most 4].
    #[arg(long, value_name = "N")]
    pub connections: Option<usize>,
}

#[derive(Debug, Args)]
pub struct FingerprintArgs {
    /// PEM certificate file.
    #[arg(long, value_name = "PEM")]
    pub cert: PathBuf,
}

impl ServeArgs {
    /// The configuration file (if any) with these flags applied over it.
    pub fn into_file(self) -> Result<ServerFile, tunnel_core::config::ConfigError> {
        let mut file = match &self.config {
            Some(path) => ServerFile::load(path)?,
            None => ServerFile::default(),
        };
        if self.token.is_some() {
            file.token_file = None;
        }
        override_with(&mut file.token, self.token);
        override_with(&mut file.listen, self.listen);
        override_with(&mut file.state_dir, self.state_dir);
        override_with(&mut file.tls_cert, self.tls_cert);
        override_with(&mut file.tls_key, self.tls_key);
        override_with(&mut file.allow_ports, self.allow_ports);
        override_with(&mut file.allow_targets, self.allow_targets);
        if !self.allow_bind.is_empty() {
            file.allow_bind = Some(self.allow_bind);
        }
        file.insecure_plaintext |= self.insecure_plaintext;
        override_with(&mut file.http_listen, self.http_listen);
        override_with(&mut file.socks_listen, self.socks_listen);
        override_with(&mut file.metrics, self.metrics);
        override_with(&mut file.https_listen, self.https_listen);
        if !self.allow_hosts.is_empty() {
            file.allow_hosts = Some(self.allow_hosts);
        }
        if !self.allow_networks.is_empty() {
            file.allow_networks = Some(self.allow_networks);
        }
        override_with(&mut file.acme_email, self.acme_email);
        override_with(&mut file.acme_directory, self.acme_directory);
        override_with(&mut file.acme_ca, self.acme_ca);
        override_with(&mut file.acme_challenge, self.acme_challenge);
        override_with(&mut file.admin_listen, self.admin_listen);
        if self.admin_token.is_some() {
            file.admin_token_file = None;
        }
        override_with(&mut file.admin_token, self.admin_token);
        Ok(file)
    }
}

impl ConnectArgs {
    /// The configuration file (if any) with these flags applied over it.
    pub fn into_file(self) -> Result<ClientFile, tunnel_core::config::ConfigError> {
        let mut file = match &self.config {
            Some(path) => ClientFile::load(path)?,
            None => ClientFile::default(),
        };
        if self.token.is_some() {
            file.token_file = None;
        }
        // Trust flags replace the file's choice of trust as a whole.
        if !self.fingerprint.is_empty() || !self.ca.is_empty() || self.insecure_plaintext {
            file.fingerprint = self.fingerprint;
            file.ca = self.ca;
            file.insecure_plaintext = self.insecure_plaintext;
        }
        override_with(&mut file.token, self.token);
        if !self.server.is_empty() {
            file.server = self.server;
        }
        override_with(&mut file.name, self.name);
        override_with(&mut file.metrics, self.metrics);
        override_with(&mut file.origin_ca, self.origin_ca);
        if !self.remote.is_empty() {
            file.remote = self.remote.into_iter().map(RemoteEntry::Spec).collect();
        }
        if !self.local.is_empty() {
            file.local = self.local;
        }
        if !self.expose.is_empty() {
            file.expose = self.expose;
        }
        if !self.socks.is_empty() {
            file.socks = self.socks;
        }
        override_with(&mut file.socks_user, self.socks_user);
        override_with(&mut file.socks_password, self.socks_password);
        if !self.expose_network.is_empty() {
            file.networks = self.expose_network;
        }
        if !self.http.is_empty() {
            file.http = self.http;
        }
        if !self.tls.is_empty() {
            file.tls = self.tls.into_iter().map(tunnel_core::config::TlsEntry::Spec).collect();
        }
        override_with(&mut file.http_fallback, self.http_fallback);
        override_with(&mut file.transport, self.transport);
        override_with(&mut file.connections, self.connections);
        match self.proxy {
            // `--proxy none`: direct, whatever the file and the environment say.
            Some(flag) if flag.expose_secret().trim().eq_ignore_ascii_case("none") => file.proxy = None,
            Some(flag) => file.proxy = Some(flag),
            None if file.proxy.is_none() => {
                if let Some((proxy, no_proxy)) = proxy_from_env(&file.server, |name| {
                    std::env::var_os(name)
                        .map(|value| value.into_string().map_err(|_| "its value is not Unicode"))
                }) {
                    file.proxy = Some(proxy);
                    file.no_proxy = file.no_proxy.or(no_proxy);
                }
            }
            None => {}
        }
        Ok(file)
    }
}

/// The proxy the environment names for reaching `servers`, as curl reads it: `https_proxy`
/// (then `HTTPS_PROXY`, `all_proxy`, `ALL_PROXY`; a value without a scheme is `http://`), and
/// the servers that go around it, `no_proxy` (or `NO_PROXY`), which the client checks for each
/// server; none when `no_proxy` lists every one of them. A proxy of another kind (`socks5://`,
/// `https://`), a malformed one or one that is not Unicode (`var` gives why) is passed over,
/// with a warning, for the next variable; with none left, the connection goes direct.
fn proxy_from_env(
    servers: &[String],
    var: impl Fn(&str) -> Option<Result<String, &'static str>>,
) -> Option<(SecretString, Option<String>)> {
    let set = |name: &&'static str| {
        let value = var(name)?.map_err(|why| tracing::warn!("not using {name}: {why}"));
        value.map_or(Some((*name, Err(()))), |value| (!value.trim().is_empty()).then_some((*name, Ok(value))))
    };
    let set_text = |name: &&'static str| set(name).and_then(|(name, value)| Some((name, value.ok()?)));
    let no_proxy = ["no_proxy", "NO_PROXY"].iter().find_map(set_text).map(|(_, list)| list);
    let bypassed = |server: &String| {
        let host = tunnel_core::transport::host_of(server);
        no_proxy.as_deref().is_some_and(|list| tunnel_core::transport::no_proxy_matches(list, host))
    };
    if servers.iter().all(bypassed) {
        return None;
    }
    // The first that names an HTTP proxy; one of another kind (`socks5://`) or malformed is
    // passed over, with a warning, for the next (`https_proxy`, then `all_proxy`).
    let mut passed_over = false;
    for (name, proxy) in ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"].iter().filter_map(set) {
        // Not Unicode: told above.
        let Ok(proxy) = proxy else {
            passed_over = true;
            continue;
        };
        let url = proxy.trim().to_owned();
        match url.parse::<tunnel_core::transport::HttpProxy>() {
            Ok(parsed) => {
                tracing::info!("reaching the server through the proxy {} (from {name})", parsed.addr());
                return Some((SecretString::from(url), no_proxy));
            }
            Err(err) => {
                tracing::warn!("not using {name}: {err}");
                passed_over = true;
            }
        }
    }
    if passed_over {
        tracing::warn!("no HTTP proxy in the environment: connecting directly");
    }
    None
}

fn override_with<T>(slot: &mut Option<T>, flag: Option<T>) {
    if flag.is_some() {
        *slot = flag;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(
        pairs: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Option<Result<String, &'static str>> {
        // `\u{FFFD}` stands for a value that is not Unicode.
        move |name| {
            let value = pairs.iter().find(|(n, _)| *n == name)?.1;
            Some(if value.contains('\u{FFFD}') {
                Err("its value is not Unicode")
            } else {
                Ok(value.to_owned())
            })
        }
    }

    #[test]
    fn the_environment_names_the_proxy_unless_no_proxy_lists_the_server() {
        let servers = ["tunnel.example.com:7700".to_owned()];
        let got = |pairs| proxy_from_env(&servers, env(pairs)).map(|(p, _)| p.expose_secret().to_owned());
        assert_eq!(got(&[("https_proxy", "http://p:3128")]).as_deref(), Some("http://p:3128"));
        let both = &[
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:1"),
            ("ALL_PROXY", "http://all:2"),
        ];
        assert_eq!(got(both).as_deref(), Some("http://lower:1"), "lowercase first, as curl");
        assert_eq!(
            got(&[("ALL_PROXY", "http://all:2"), ("HTTPS_PROXY", " ")]).as_deref(),
            Some("http://all:2")
        );
        // Without a scheme: an HTTP proxy (read so by the library, as `--proxy` and the file).
        assert_eq!(got(&[("HTTPS_PROXY", "proxy.internal:3128")]).as_deref(), Some("proxy.internal:3128"));
        assert_eq!(got(&[("HTTPS_PROXY", "http://p:3128"), ("NO_PROXY", "localhost,.example.com")]), None);
        // One that is not Unicode is passed over for the next, not used in part.
        assert_eq!(got(&[("https_proxy", "http://u\u{FFFD}:p@p:1")]), None);
        assert_eq!(
            got(&[("https_proxy", "http://u\u{FFFD}:p@p:1"), ("ALL_PROXY", "http://all:2")]).as_deref(),
            Some("http://all:2")
        );
        assert_eq!(
            got(&[("HTTPS_PROXY", "http://p:3128"), ("no_proxy", "other.org")]).as_deref(),
            Some("http://p:3128")
        );
        assert_eq!(
            got(&[("HTTP_PROXY", "http://plain-http-only:80")]),
            None,
            "HTTP_PROXY is for http:// URLs"
        );
        assert_eq!(got(&[("ALL_PROXY", "socks5h://127.0.0.1:1080")]), None, "another kind of proxy: direct");
        // One of another kind passed over for the next that is an HTTP proxy (before: direct).
        let mixed = &[("https_proxy", "socks5://127.0.0.1:1080"), ("all_proxy", "http://all:2")];
        assert_eq!(got(mixed).as_deref(), Some("http://all:2"));
        // A scheme in capitals is the same scheme (RFC 3986 3.1).
        assert_eq!(got(&[("https_proxy", "HTTP://p:3128")]).as_deref(), Some("HTTP://p:3128"));
    }

    #[test]
    fn no_proxy_goes_with_the_proxy_for_the_client_to_check_each_server() {
        // Before, only the first server was checked, and the second went through the proxy.
        let servers = ["tunnel.example.com:7700".to_owned(), "tunnel.internal:7700".to_owned()];
        let pairs = &[("https_proxy", "http://p:3128"), ("no_proxy", ".internal")];
        let (proxy, no_proxy) =
            proxy_from_env(&servers, env(pairs)).expect("the first server takes the proxy");
        assert_eq!((proxy.expose_secret(), no_proxy.as_deref()), ("http://p:3128", Some(".internal")));
        let file = tunnel_core::config::ClientFile {
            server: servers.to_vec(),
            proxy: Some(proxy),
            no_proxy,
            token: Some("client-token-0123456789".to_owned().into()),
            insecure_plaintext: true,
            ..Default::default()
        };
        let config = file.build().unwrap();
        assert!(config.proxy_for("tunnel.example.com:7700").is_some());
        assert!(config.proxy_for("tunnel.internal:7700").is_none(), "no_proxy lists it");
        // Every server listed: no proxy at all, as before.
        let internal = ["a.internal:7700".to_owned(), "b.internal:7700".to_owned()];
        assert!(proxy_from_env(&internal, env(pairs)).is_none());
    }
}
