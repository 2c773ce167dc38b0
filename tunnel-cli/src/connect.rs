//! `tunnel-cli connect`.

use std::net::SocketAddr;

use tunnel_core::client::{ActiveForward, Client, ClientStatus};
use tunnel_core::transport::host_of;

use crate::args::ConnectArgs;
use crate::Failure;

pub async fn run(args: ConnectArgs) -> Result<(), Failure> {
    let shutdown =
        crate::shutdown::install().map_err(|e| Failure::runtime(format!("cannot handle signals: {e}")))?;
    let config = args.into_file().and_then(|file| file.build()).map_err(Failure::config)?;
    let server_host = host_of(&config.server).to_owned();
    let session_line = format!("connected to {} as {}", config.server, config.name);
    tracing::info!(server = %config.server, name = %config.name, "connecting");
    let mut client = Client::new(config);
    for local in client.listen_locals().await.map_err(Failure::error)? {
        println!("local forward listening: {} -> {}", local.bound_addr, local.spec.target);
    }
    let mut status = client.status();
    // Prints every forward each time a session comes up (first connect and every reconnect).
    let printer = tokio::spawn(async move {
        while status.changed().await.is_ok() {
            let current = status.borrow_and_update().clone();
            if let ClientStatus::Connected { forwards, services } = current {
                println!("{session_line}");
                for forward in &forwards {
                    println!(
                        "remote forward ready: {} -> {}",
                        public_address(&server_host, forward),
                        forward.spec.local
                    );
                }
                for service in &services {
                    println!("service exposed: {} -> {}", service.name, service.target);
                }
            }
        }
    });
    let result = client.run(shutdown).await;
    printer.abort();
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
