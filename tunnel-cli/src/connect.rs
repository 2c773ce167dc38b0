//! `tunnel-cli connect`.

use std::net::SocketAddr;

use tunnel_core::client::{ActiveForward, Client, ClientStatus};
use tunnel_core::forward::Protocol;
use tunnel_core::transport::host_of;

use crate::args::ConnectArgs;
use crate::Failure;

pub async fn run(args: ConnectArgs) -> Result<(), Failure> {
    let signals = crate::shutdown::Signals::install()
        .map_err(|e| Failure::runtime(format!("cannot handle signals: {e}")))?;
    let hangup = crate::reload::Hangup::install()
        .map_err(|e| Failure::runtime(format!("cannot handle signals: {e}")))?;
    let file = args.clone().into_file().map_err(Failure::config)?;
    let config = file.clone().build().map_err(Failure::config)?;
    let name = config.name.clone();
    tracing::info!(server = %config.server, name = %config.name, "connecting");
    let mut client = Client::new(config).with_shards(crate::shards()?);
    for local in client.listen_locals().await.map_err(Failure::error)? {
        let udp = if local.spec.protocol == Protocol::Udp { "udp:" } else { "" };
        say!("local forward listening: {udp}{} -> {}", local.bound_addr, local.spec.target);
    }
    for socks in client.listen_socks().await.map_err(Failure::error)? {
        say!("SOCKS proxy listening: {}", socks.bound_addr);
    }
    let _metrics = match file.metrics.as_deref() {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Failure::runtime(format!("cannot listen for metrics on {addr}: {e}")))?;
            say!("metrics served on {}", listener.local_addr().map_err(Failure::runtime)?);
            let status = client.status();
            let served = tunnel_core::metrics::serve(
                listener,
                client.metrics(),
                move || status.borrow().readiness(),
                std::future::pending(),
            );
            Some(crate::task::Aborted(tokio::spawn(served)))
        }
        None => None,
    };
    let notifier = crate::notify::Notifier::from_env();
    notifier.spawn_watchdog();
    // Each server's sessions print their forwards as they come up; every answer to the route
    // table (at connect and after every change) prints a line per entry with the table's version.
    client.resolve_servers().await;
    let printers: Vec<_> = client
        .server_statuses()
        .into_iter()
        .map(|(server, status)| {
            let session_line = format!("connected to {server} as {name}");
            tokio::spawn(print_status(status, host_of(&server).to_owned(), session_line, notifier.clone()))
        })
        .collect();
    let reloads = tokio::spawn(crate::reload::follow(args, file, client.routes(), hangup, notifier.clone()));
    let cut = client.drain_cut();
    let result = client.run(signals.first_then(notifier, move || cut.cut())).await;
    // The client is gone with its statuses: the printers print what is left (the refusals of a
    // client that stops because nothing was accepted) and end.
    for printer in printers {
        let _ = printer.await;
    }
    reloads.abort();
    result.map_err(Failure::error)
}

/// Prints what one server's session does: the session and its forwards when it comes up, then
/// a line per route table entry on each answer that changed something.
async fn print_status(
    mut status: tokio::sync::watch::Receiver<ClientStatus>,
    server_host: String,
    session_line: String,
    session_ready: crate::notify::Notifier,
) {
    while status.changed().await.is_ok() {
        let current = status.borrow_and_update().clone();
        let ClientStatus::Connected {
            forwards,
            services,
            http,
            http_fallback,
            tls,
            networks,
            refused,
            version,
            new_session,
        } = current
        else {
            continue;
        };
        if new_session {
            say!("{session_line}");
            session_ready.ready(&session_line);
            for forward in &forwards {
                let public = public_address(&server_host, forward);
                let udp = if forward.spec.protocol == Protocol::Udp { "udp:" } else { "" };
                say!("remote forward ready: {udp}{public} -> {}", forward.spec.local);
            }
            for service in &services {
                say!("service exposed: {} -> {}", service.name, service.target);
            }
        }
        for forward in &forwards {
            let public = public_address(&server_host, forward);
            let protocol = if forward.spec.protocol == Protocol::Udp { "udp" } else { "tcp" };
            say!("route ready: v{version} {protocol} {public} -> {}", forward.spec.local);
        }
        for service in &services {
            say!("route ready: v{version} service {} -> {}", service.name, service.target);
        }
        for route in &http {
            say!("route ready: v{version} http {route}");
        }
        if http_fallback {
            say!("route ready: v{version} http fallback");
        }
        for route in &tls {
            say!("route ready: v{version} tls {route}");
        }
        for net in &networks {
            say!("route ready: v{version} network {net}");
        }
        for route in &refused {
            let reason = tunnel_core::log::Escaped(&route.message);
            say!("route refused: v{version} {} ({}: {reason})", route.route, route.code);
        }
    }
}

/// Where visitors reach the forward: the server's host when it bound every interface.
fn public_address(server_host: &str, forward: &ActiveForward) -> String {
    let addr: SocketAddr = forward.public_addr;
    if addr.ip().is_unspecified() {
        if server_host.contains(':') {
            format!("[{server_host}]:{}", addr.port())
        } else {
            format!("{server_host}:{}", addr.port())
        }
    } else {
        addr.to_string()
    }
}
