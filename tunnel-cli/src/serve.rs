//! `tunnel-cli serve`.

use std::net::SocketAddr;

use std::sync::Arc;
use tokio::net::TcpListener;

use tunnel_core::admin::{Admin, AdminListener, ClientStore};
use tunnel_core::config::{AdminAddress, AdminSetup, ServerFile, ServerSetup, TokenSource};
use tunnel_core::log::Chain;
use tunnel_core::server::Server;

use crate::args::ServeArgs;
use crate::Failure;

pub async fn run(args: ServeArgs) -> Result<(), Failure> {
    let signals = crate::shutdown::Signals::install()
        .map_err(|e| Failure::runtime(format!("cannot handle signals: {e}")))?;
    let hangup = crate::reload::Hangup::install()
        .map_err(|e| Failure::runtime(format!("cannot handle SIGHUP: {e}")))?;
    let (mut setup, state_dir, certificates) = read_setup(&args, None).map_err(|unread| match unread {
        Unread::Config(err) => Failure::config(err),
        other => Failure::runtime(other),
    })?;
    let running = Running::of(&setup, state_dir, certificates);
    // Everything that can fail the start is done before the first line saying where the
    // server is: a script waiting for that line never sees a server that then exits.
    let listeners = Listeners::bind(&mut setup).await?;
    let store = ClientStore::open(&setup.clients_file).map_err(Failure::error)?;
    let shards = crate::shards()?;
    listeners.announce(&setup)?;
    let Listeners { tunnel: listener, local, http, https, socks, metrics, admin: admin_api } = listeners;
    let mut config = setup.config.clone();
    store.apply(&mut config);
    let server = Server::new(config);
    server.spread_over(shards);
    let admin_api = admin_api.map(|(listener, _)| listener);
    let admin = Arc::new(Admin::new(server.clone(), setup.config, store));
    let notifier = crate::notify::Notifier::from_env();
    let shutdown = signals.first_then(notifier.clone(), {
        let server = server.clone();
        move || server.cut()
    });
    // One signal stops every listener.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    // Probes answer until the process exits: not ready while draining.
    let _metrics = metrics.map(|listener| {
        let probed = server.clone();
        let served = tunnel_core::metrics::serve(
            listener,
            server.metrics(),
            move || probed.readiness(),
            std::future::pending(),
        );
        crate::task::Aborted(tokio::spawn(served))
    });
    let edge = http.map(|listener| {
        let (server, until) = (server.clone(), until_stopped());
        tokio::spawn(async move { server.run_http(listener, until).await })
    });
    let tls_edge = https.map(|listener| {
        let (server, until) = (server.clone(), until_stopped());
        tokio::spawn(async move { server.run_https(listener, until).await })
    });
    let socks_proxy = socks.map(|listener| {
        let (server, until) = (server.clone(), until_stopped());
        tokio::spawn(async move { server.run_socks(listener, until).await })
    });
    // The admin API answers until the process exits, the drain included.
    let _admin_api = admin_api.map(|listener| {
        let served = tunnel_core::admin::serve(admin.clone(), listener, std::future::pending());
        crate::task::Aborted(tokio::spawn(served))
    });
    let tunnel = server.run(listener, until_stopped());
    // Every listener is bound: ready.
    notifier.ready(&format!("serving clients on {local}"));
    notifier.spawn_watchdog();
    let watch = crate::reload::Watch::new(args.config.clone(), hangup);
    let _reloads =
        crate::task::Aborted(tokio::spawn(follow(args, running, admin.clone(), watch, notifier.clone())));
    tokio::pin!(tunnel);
    let result = tokio::select! {
        result = &mut tunnel => result,
        () = shutdown => {
            let _ = stop.send(true);
            tunnel.await
        }
    };
    let _ = stop.send(true);
    for edge in [edge, tls_edge, socks_proxy].into_iter().flatten() {
        let _ = edge.await;
    }
    result.map_err(|e| Failure::runtime(format!("server failed: {e}")))
}

/// What a reload compares with: the listeners (bound once), the state directory (the
/// generated certificate and token live there), and what the certificates were.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Running {
    listen: String,
    http_listen: Option<String>,
    https_listen: Option<String>,
    socks_listen: Option<String>,
    metrics: Option<String>,
    admin: Option<AdminAddress>,
    state_dir: Option<std::path::PathBuf>,
    fingerprint: Option<tunnel_core::tls::Fingerprint>,
    certificates: u64,
}

impl Running {
    fn of(setup: &ServerSetup, state_dir: Option<std::path::PathBuf>, certificates: u64) -> Self {
        Self {
            listen: setup.listen.clone(),
            http_listen: setup.http_listen.clone(),
            https_listen: setup.https_listen.clone(),
            socks_listen: setup.socks_listen.clone(),
            metrics: setup.metrics.clone(),
            admin: setup.admin.as_ref().map(|a| a.listen.clone()),
            state_dir,
            fingerprint: setup.fingerprint,
            certificates,
        }
    }
}

/// Why a reading of the configuration was not taken.
#[derive(Debug)]
enum Unread {
    Config(tunnel_core::config::ConfigError),
    /// A reload naming another state directory than the running one.
    StateDir,
    /// The `[[certificates]]` files differed before and after every build tried.
    Churning,
}

impl std::fmt::Display for Unread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(err) => Chain(err).fmt(f),
            Self::StateDir => f.write_str("`state_dir` changes only at a restart"),
            Self::Churning => {
                write!(
                    f,
                    "the `[[certificates]]` files changed while being read, at each of {READINGS} readings"
                )
            }
        }
    }
}

/// Builds at most this many times while the `[[certificates]]` files change under the build.
const READINGS: usize = 3;

/// Reads the configuration (flags over the file) and builds it, with the state directory and
/// the digest of the `[[certificates]]` files the build read. A reload (`running_state_dir`
/// given) naming another state directory is refused before the build, which would create a
/// token and certificate there. See [`stable_build`] for the digest.
fn read_setup(
    args: &ServeArgs,
    running_state_dir: Option<&Option<std::path::PathBuf>>,
) -> Result<(ServerSetup, Option<std::path::PathBuf>, u64), Unread> {
    let read = || {
        let file = args.clone().into_file().map_err(Unread::Config)?;
        match running_state_dir {
            Some(running) if *running != file.state_dir => Err(Unread::StateDir),
            _ => Ok(file),
        }
    };
    let build = |file: &ServerFile| file.clone().build().map_err(Unread::Config);
    let (setup, file, digest) = stable_build(read, certificates_read, build)?;
    Ok((setup, file.state_dir, digest))
}

/// Reads and builds until the digest taken before the build and the one taken after agree
/// ([`READINGS`] times at most): the digest is then of the files the build read. Before, one
/// digest came first, and certificates rotated between it and the build were taken for no
/// change: the listener kept the old ones until a later reload.
fn stable_build<F, S>(
    mut read: impl FnMut() -> Result<F, Unread>,
    digest: impl Fn(&F) -> u64,
    build: impl Fn(&F) -> Result<S, Unread>,
) -> Result<(S, F, u64), Unread> {
    for _ in 0..READINGS {
        let file = read()?;
        let before = digest(&file);
        let setup = build(&file)?;
        if digest(&file) == before {
            return Ok((setup, file, before));
        }
    }
    Err(Unread::Churning)
}

/// A digest of the `[[certificates]]` files as they are now, to tell whether the HTTPS
/// listener's certificates changed (a change detector, not a security check).
fn certificates_read(file: &ServerFile) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    for entry in &file.certificates {
        for path in [&entry.cert, &entry.key] {
            // As the build reads them: a FIFO is not waited on (the build refuses it).
            tunnel_core::tls::read_pem(path).ok().hash(&mut hasher);
        }
    }
    hasher.finish()
}

/// Puts the configuration, read again at every SIGHUP or change of the file, in force; an
/// invalid one is refused with one log line and the running one stays.
async fn follow(
    args: ServeArgs,
    mut running: Running,
    admin: Arc<Admin>,
    mut watch: crate::reload::Watch,
    notifier: crate::notify::Notifier,
) {
    loop {
        watch.changed().await;
        notifier.reloading();
        let refused = |why: &dyn std::fmt::Display| {
            tracing::error!("configuration not applied, the running one stays: {why}");
            notifier.ready("configuration refused; the running one stays");
        };
        // Files are read off the runtime's threads: a mount that hangs stalls this reload
        // alone, not the sessions.
        let (reading, state_dir) = (args.clone(), running.state_dir.clone());
        let read = tokio::task::spawn_blocking(move || read_setup(&reading, Some(&state_dir))).await;
        let (setup, state_dir, certificates) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(unread)) => {
                refused(&unread);
                continue;
            }
            Err(join) => {
                refused(&join);
                continue;
            }
        };
        let now = Running::of(&setup, state_dir, certificates);
        for (what, differs) in [
            ("listen", now.listen != running.listen),
            ("http_listen", now.http_listen != running.http_listen),
            ("https_listen", now.https_listen != running.https_listen),
            ("socks_listen", now.socks_listen != running.socks_listen),
            ("metrics", now.metrics != running.metrics),
            ("admin_listen", now.admin != running.admin),
        ] {
            if differs {
                tracing::warn!("`{what}` changes only at a restart; still serving as before");
            }
        }
        // The admin API's token and certificate follow the file while it listens where it did:
        // a token taken out of it is refused from now on.
        if let (true, Some(AdminSetup { token: Some(token), tls: Some(tls), .. })) =
            (now.admin == running.admin, &setup.admin)
        {
            admin.renew_access(token.clone(), tls);
        }
        let mut config = setup.config;
        if now.fingerprint == running.fingerprint {
            // The same certificate: the TLS configuration in force stays, session tickets included.
            config.tls = admin.server().config().tls.clone();
        } else {
            tracing::info!("new certificate for the tunnel listener: clients pinning the old fingerprint cannot reconnect");
        }
        if now.fingerprint == running.fingerprint && now.certificates == running.certificates {
            // The HTTPS listener's certificates too.
            config.http.tls = admin.server().config().http.tls.clone();
        }
        running.fingerprint = now.fingerprint;
        running.certificates = now.certificates;
        let report = admin.reload(config).await;
        for refused in &report.refused {
            tracing::warn!("not applied: {refused}");
        }
        notifier.ready("configuration reloaded");
    }
}

/// Binds the admin API's listener; with it, the line that says where it is.
async fn bind_admin(admin: AdminSetup) -> Result<(AdminListener, String), Failure> {
    match admin.listen {
        AdminAddress::Tcp(addr) => {
            let (Some(tls), Some(token)) = (admin.tls, admin.token) else {
                return Err(Failure::runtime("the admin API over TCP needs TLS and a token"));
            };
            let listener = TcpListener::bind(&addr)
                .await
                .map_err(|e| Failure::runtime(format!("cannot listen for the admin API on {addr}: {e}")))?;
            let bound = listener.local_addr().map_err(Failure::runtime)?;
            let token_hint = match &admin.token_source {
                TokenSource::GeneratedNow(path) | TokenSource::Generated(path) => {
                    format!("its token is in {}", path.display())
                }
                _ => "with the admin token given".to_owned(),
            };
            let line = format!("admin API on {bound} (TLS; {token_hint})");
            Ok((AdminListener::Tls { listener, tls, token }, line))
        }
        #[cfg(unix)]
        AdminAddress::Unix(path) => {
            let listener = tunnel_core::admin::bind_socket(&path).map_err(|e| {
                Failure::runtime(format!("cannot listen for the admin API on {}: {e}", path.display()))
            })?;
            Ok((listener, format!("admin API on unix socket {}", path.display())))
        }
        #[cfg(not(unix))]
        AdminAddress::Unix(path) => {
            Err(Failure::runtime(format!("UNIX sockets are not available here: {}", path.display())))
        }
    }
}

/// Every listener of the server, bound before anything is served, so that a port in use fails
/// the start (exit 1) rather than one feature later.
struct Listeners {
    tunnel: TcpListener,
    local: SocketAddr,
    http: Option<TcpListener>,
    https: Option<TcpListener>,
    socks: Option<TcpListener>,
    metrics: Option<TcpListener>,
    /// With the line that says where it is.
    admin: Option<(AdminListener, String)>,
}

impl Listeners {
    async fn bind(setup: &mut ServerSetup) -> Result<Self, Failure> {
        let tunnel = tunnel_core::transport::listen_tcp(&setup.listen)
            .await
            .map_err(|e| Failure::runtime(format!("cannot listen on {}: {e}", setup.listen)))?;
        let local = tunnel.local_addr().map_err(Failure::runtime)?;
        Ok(Self {
            tunnel,
            local,
            http: bind_optional(setup.http_listen.as_deref(), "HTTP").await?,
            https: bind_optional(setup.https_listen.as_deref(), "HTTPS").await?,
            socks: bind_optional(setup.socks_listen.as_deref(), "SOCKS5").await?,
            metrics: bind_optional(setup.metrics.as_deref(), "metrics").await?,
            admin: match setup.admin.take() {
                Some(admin) => Some(bind_admin(admin).await?),
                None => None,
            },
        })
    }

    /// Says on stdout where clients connect ([`print_banner`]) and what else is served where,
    /// and warns of what runs without TLS.
    fn announce(&self, setup: &ServerSetup) -> Result<(), Failure> {
        print_banner(setup, self.local);
        let served =
            [(&self.http, "HTTP routes"), (&self.https, "HTTPS and TLS routes"), (&self.metrics, "metrics")];
        for (listener, what) in served {
            if let Some(listener) = listener {
                say!("{what} served on {}", listener.local_addr().map_err(Failure::runtime)?);
            }
        }
        if let Some((_, line)) = &self.admin {
            say!("{line}");
        }
        if let Some(socks) = &self.socks {
            let addr = socks.local_addr().map_err(Failure::runtime)?;
            say!("SOCKS5 served on {addr}");
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    "SOCKS5 is unencrypted: the tokens its users log in with cross the network as they are"
                );
            }
        }
        if let Some(acme) = &setup.config.http.acme {
            let (directory, challenge) = (&acme.directory, acme.challenge);
            say!(
                "certificates for HTTP route hosts from {directory} ({challenge}), kept in {}",
                acme.dir.display()
            );
        }
        if setup.config.tls.is_none() {
            tracing::warn!("TLS is off (--insecure-plaintext): traffic between clients and this server is readable on the network");
        }
        Ok(())
    }
}

/// Binds an optional listener (`what` names it in the error).
async fn bind_optional(addr: Option<&str>, what: &str) -> Result<Option<TcpListener>, Failure> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::runtime(format!("cannot listen for {what} on {addr}: {e}")))?;
    Ok(Some(listener))
}

/// What the operator needs to connect a client, on stdout. A token the user supplied is never
/// printed; one generated just now is shown this once. The suggested commands pass the token in
/// `TUNNEL_TOKEN`, not as `--token`: a command line is readable by every user of the machine
/// (`ps`) and lands in shell history.
fn print_banner(setup: &ServerSetup, local: SocketAddr) {
    let mode = if setup.config.tls.is_some() { "TLS" } else { "plaintext" };
    say!("tunnel server listening on {local} ({mode})");
    let host = if local.ip().is_unspecified() { "127.0.0.1".to_owned() } else { local.ip().to_string() };
    let server = match local {
        SocketAddr::V6(_) if !local.ip().is_unspecified() => format!("[{host}]:{}", local.port()),
        _ => format!("{host}:{}", local.port()),
    };
    let trust = match &setup.fingerprint {
        Some(fp) => {
            say!("certificate fingerprint: {fp}");
            format!("--fingerprint {fp}")
        }
        None => "--insecure-plaintext".to_owned(),
    };
    let connect = format!("tunnel-cli connect --server {server} {trust}");
    let forward = "-R 0:127.0.0.1:8080";
    match &setup.token_source {
        TokenSource::GeneratedNow(path) => {
            say!("generated a token and saved it to {} (shown once below)", path.display());
            let token = setup.shared_token.as_ref().map(|t| t.expose_secret()).unwrap_or_default();
            say!("connect a client with:");
            say!("  export TUNNEL_TOKEN={token}");
            say!("  {connect} {forward}");
        }
        TokenSource::Generated(path) => {
            say!("connect a client with:");
            say!("  TUNNEL_TOKEN=\"$(cat {})\" {connect} {forward}", path.display());
        }
        TokenSource::Supplied => {
            say!("connect a client with the server's token in TUNNEL_TOKEN:");
            say!("  {connect} {forward}");
        }
        TokenSource::None => {
            say!("connect a client with its own token in TUNNEL_TOKEN:");
            say!("  {connect} --name NAME {forward}");
        }
    }
    if local.ip().is_unspecified() {
        say!("(from another machine, replace 127.0.0.1 with this server's address)");
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A build during which the files' digest moves is made again, and the digest kept is the
    /// one both sides of the build saw; files that never hold still are refused.
    #[test]
    fn a_build_is_kept_only_with_the_digest_it_read() {
        // The digest moves during the first build only: the second is kept.
        let (reads, builds, digest) = (Cell::new(0), Cell::new(0), Cell::new(1_u64));
        let read = || {
            reads.set(reads.get() + 1);
            Ok(reads.get())
        };
        let build = |reading: &usize| {
            builds.set(builds.get() + 1);
            if *reading == 1 {
                digest.set(2);
            }
            Ok(*reading * 10)
        };
        let (setup, file, kept) = stable_build(read, |_| digest.get(), build).unwrap();
        assert_eq!(
            (setup, file, kept),
            (20, 2, 2),
            "the rotated files' digest, with the build that read them"
        );
        assert_eq!((reads.get(), builds.get()), (2, 2));

        // Moving during every build: refused after three.
        let builds = Cell::new(0);
        let churn = |_: &()| {
            builds.set(builds.get() + 1);
            digest.set(digest.get() + 1);
            Ok(())
        };
        let err = stable_build(|| Ok(()), |_| digest.get(), churn).unwrap_err();
        assert!(matches!(err, Unread::Churning), "{err}");
        assert_eq!(builds.get(), READINGS);
        assert!(err.to_string().contains("changed while being read"));

        // A read or a build that fails ends it at once.
        let err = stable_build(|| Err::<(), _>(Unread::StateDir), |_| 0, |_| Ok(())).unwrap_err();
        assert_eq!(err.to_string(), "`state_dir` changes only at a restart");
    }
}
