//! `tunnel-cli serve`.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tunnel_core::config::{ServerSetup, TokenSource};
use tunnel_core::server::Server;

use crate::args::ServeArgs;
use crate::Failure;

pub async fn run(args: ServeArgs) -> Result<(), Failure> {
    let signals = crate::shutdown::Signals::install()
        .map_err(|e| Failure::runtime(format!("cannot handle signals: {e}")))?;
    let setup = args.into_file().and_then(|file| file.build()).map_err(Failure::config)?;
    let listener = TcpListener::bind(&setup.listen)
        .await
        .map_err(|e| Failure::runtime(format!("cannot listen on {}: {e}", setup.listen)))?;
    let local = listener.local_addr().map_err(Failure::runtime)?;
    let http = bind_optional(setup.http_listen.as_deref(), "HTTP").await?;
    let https = bind_optional(setup.https_listen.as_deref(), "HTTPS").await?;
    let metrics = bind_optional(setup.metrics.as_deref(), "metrics").await?;
    print_banner(&setup, local);
    if let Some(http) = &http {
        println!("HTTP routes served on {}", http.local_addr().map_err(Failure::runtime)?);
    }
    if let Some(https) = &https {
        println!("HTTPS and TLS routes served on {}", https.local_addr().map_err(Failure::runtime)?);
    }
    if let Some(metrics) = &metrics {
        println!("metrics served on {}", metrics.local_addr().map_err(Failure::runtime)?);
    }
    if setup.config.tls.is_none() {
        tracing::warn!("TLS is off (--insecure-plaintext): traffic between clients and this server is readable on the network");
    }
    let server = Server::new(setup.config);
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
    let tunnel = server.run(listener, until_stopped());
    // Every listener is bound: ready.
    notifier.ready(&format!("serving clients on {local}"));
    notifier.spawn_watchdog();
    tokio::pin!(tunnel);
    let result = tokio::select! {
        result = &mut tunnel => result,
        () = shutdown => {
            let _ = stop.send(true);
            tunnel.await
        }
    };
    let _ = stop.send(true);
    for edge in [edge, tls_edge].into_iter().flatten() {
        let _ = edge.await;
    }
    result.map_err(|e| Failure::runtime(format!("server failed: {e}")))
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
    println!("tunnel server listening on {local} ({mode})");
    let host = if local.ip().is_unspecified() { "127.0.0.1".to_owned() } else { local.ip().to_string() };
    let server = match local {
        SocketAddr::V6(_) if !local.ip().is_unspecified() => format!("[{host}]:{}", local.port()),
        _ => format!("{host}:{}", local.port()),
    };
    let trust = match &setup.fingerprint {
        Some(fp) => {
            println!("certificate fingerprint: {fp}");
            format!("--fingerprint {fp}")
        }
        None => "--insecure-plaintext".to_owned(),
    };
    let connect = format!("tunnel-cli connect --server {server} {trust}");
    let forward = "-R 0:127.0.0.1:8080";
    match &setup.token_source {
        TokenSource::GeneratedNow(path) => {
            println!("generated a token and saved it to {} (shown once below)", path.display());
            let token = setup.shared_token.as_ref().map(|t| t.expose_secret()).unwrap_or_default();
            println!("connect a client with:");
            println!("  export TUNNEL_TOKEN={token}");
            println!("  {connect} {forward}");
        }
        TokenSource::Generated(path) => {
            println!("connect a client with:");
            println!("  TUNNEL_TOKEN=\"$(cat {})\" {connect} {forward}", path.display());
        }
        TokenSource::Supplied => {
            println!("connect a client with the server's token in TUNNEL_TOKEN:");
            println!("  {connect} {forward}");
        }
        TokenSource::None => {
            println!("connect a client with its own token in TUNNEL_TOKEN:");
            println!("  {connect} --name NAME {forward}");
        }
    }
    if local.ip().is_unspecified() {
        println!("(from another machine, replace 127.0.0.1 with this server's address)");
    }
}
