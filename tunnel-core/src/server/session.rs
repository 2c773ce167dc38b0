//! One authenticated client's session on the server: registry membership, control messages,
//! and teardown of everything it owns when it ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::forwards::Forwards;
use super::{Shared, DRAIN_TIMEOUT};
use crate::proto::handshake::AuthenticatedClient;
use crate::proto::GoodbyeCode;
use crate::session::{Session, SessionEnd};
use crate::task::OwnedTask;

/// Time a closing session gets to deliver its goodbye before it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn run(
    shared: Arc<Shared>,
    session: Session,
    client: AuthenticatedClient,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    let Session { control, mut messages, opener, incoming, driver } = session;
    // Protocol v1 clients open no data streams toward the server; any they open is reset.
    drop(incoming);
    let name = client.name.clone();
    let registration = shared.registry.register(&name, DRAIN_TIMEOUT).await;
    let mut driver = OwnedTask::spawn(driver);
    let mut forwards = Forwards::new(&shared, &client, registration.id, opener);
    tracing::info!(client = %name, %peer, credential = ?client.credential, "session established");

    let end = loop {
        tokio::select! {
            end = &mut driver => break end.unwrap_or_else(|e| SessionEnd::ProtocolError(e.to_string())),
            Some(message) = messages.recv() => {
                if let Err(reason) = forwards.handle(message, &control).await {
                    control.close(GoodbyeCode::ProtocolError, reason.clone()).await;
                    finish(driver).await;
                    break SessionEnd::ProtocolError(reason);
                }
            }
            () = registration.kicked.cancelled() => {
                control.close(GoodbyeCode::Replaced, "a newer session with the same client name connected").await;
                break finish(driver).await;
            }
            () = stop.cancelled() => {
                control.close(GoodbyeCode::Shutdown, "server shutting down").await;
                break finish(driver).await;
            }
        }
    };
    // Close public listeners and cut visitors first, then hand the ports to the grace period.
    forwards.close().await;
    shared.registry.unregister(&name, &registration);
    tracing::info!(client = %name, %peer, "session ended: {end}");
}

async fn finish(mut driver: OwnedTask<SessionEnd>) -> SessionEnd {
    match tokio::time::timeout(CLOSE_TIMEOUT, &mut driver).await {
        Ok(end) => end.unwrap_or_else(|e| SessionEnd::ProtocolError(e.to_string())),
        Err(_) => {
            driver.abort();
            SessionEnd::Closed
        }
    }
}
