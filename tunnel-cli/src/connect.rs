//! `tunnel-cli connect`.

use std::net::SocketAddr;

use tunnel_core::client::{ActiveForward, Client, ClientStatus};
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
    let server_host = host_of(&config.server).to_owned();
    let session_line = format!("connected to {} as {}", config.server, config.name);
    tracing::info!(server = %config.server, name = %config.name, "connecting");
    let mut client = Client::new(config);
    for local in client.listen_locals().await.map_err(Failure::error)? {
        println!("local forward listening: {} -> {}", local.bound_addr, local.spec.target);
    }
    let _metrics = match file.metrics.as_deref() {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Failure::runtime(format!("cannot listen for metrics on {addr}: {e}")))?;
            println!("metrics served on {}", listener.local_addr().map_err(Failure::runtime)?);
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
    let mut status = client.status();
    let session_ready = notifier.clone();
    // Each session that comes up prints its forwards; every answer to the route table (at
    // connect and after every change) prints a line per entry with the table's version.
    let printer = tokio::spawn(async move {
        while status.changed().await.is_ok() {
            let current = status.borrow_and_update().clone();
            if let ClientStatus::Connected {
                forwards,
                services,
                http,
                http_fallback,
                tls,
                refused,
                version,
                new_session,
            } = current
            {
                if new_session {
                    println!("{session_line}");
                    session_ready.ready(&session_line);
                    for forward in &forwards {
                        let public = public_address(&server_host, forward);
                        println!("remote forward ready: {public} -> {}", forward.spec.local);
                    }
                    for service in &services {
                        println!("service exposed: {} -> {}", service.name, service.target);
                    }
                }
                for forward in &forwards {
                    let public = public_address(&server_host, forward);
                    println!("route ready: v{version} tcp {public} -> {}", forward.spec.local);
                }
                for service in &services {
                    println!("route ready: v{version} service {} -> {}", service.name, service.target);
                }
                for route in &http {
                    println!("route ready: v{version} http {route}");
                }
                if http_fallback {
                    println!("route ready: v{version} http fallback");
                }
                for route in &tls {
                    println!("route ready: v{version} tls {route}");
                }
                for route in &refused {
                    let reason = tunnel_core::log::Escaped(&route.message);
                    println!("route refused: v{version} {} ({}: {reason})", route.route, route.code);
                }
            }
        }
    });
    let reloads = tokio::spawn(crate::reload::follow(args, file, client.routes(), hangup, notifier.clone()));
    let cut = client.drain_cut();
    let result = client.run(signals.first_then(notifier, move || cut.cut())).await;
    // The client is gone with its status: the printer prints what is left (the refusals of a
    // client that stops because nothing was accepted) and ends.
    let _ = printer.await;
    reloads.abort();
    result.map_err(Failure::error)
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
