//! One authenticated client's session on the server: registry membership, control messages,
//! and teardown of everything it owns when it ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::forwards::Forwards;
use super::{Shared, DRAIN_TIMEOUT};
use crate::proto::handshake::AuthenticatedClient;
use crate::proto::{ControlMessage, GoodbyeCode, RefusalCode};
use crate::session::{Session, SessionEnd};
use crate::task::OwnedTask;

/// Time a closing session gets to deliver its goodbye before it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn run(
    shared: Arc<Shared>,
    session: Session,
    client: AuthenticatedClient,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    let Session { control, mut messages, opener, mut incoming, driver } = session;
    let name = client.name.clone();
    let mut driver = OwnedTask::spawn(driver);
    let registration = shared.registry.register(&name, client.credential, opener.clone(), DRAIN_TIMEOUT);
    let registration = match registration.await {
        Ok(registration) => registration,
        Err(full) => {
            if crate::log::REFUSALS.allow() {
                tracing::warn!(client = %crate::log::Escaped(&name), %peer, "session refused: {full}");
            }
            control.close(GoodbyeCode::ServerFull, full.to_string()).await;
            finish(driver).await;
            return;
        }
    };
    // Cancelled when the session ends: stops its listeners and cuts its visitors and visits.
    let owned = CancellationToken::new();
    let mut forwards = Forwards::new(&shared, &client, registration.id, opener, owned.clone());
    tracing::info!(client = %crate::log::Escaped(&name), %peer, credential = ?client.credential, "session established");

    let end = loop {
        tokio::select! {
            end = &mut driver => break end.unwrap_or_else(|e| SessionEnd::ProtocolError(e.to_string())),
            Some(message) = messages.recv() => {
                let handled = match message {
                    ControlMessage::RemoteForwardRequest { .. } => forwards.request(message, &control).await,
                    ControlMessage::ExposeRequest { name: service } => {
                        expose(&shared, &client, registration.id, service, &control).await;
                        Ok(())
                    }
                    other => Err(format!("unexpected control message from a client: {other:?}")),
                };
                if let Err(reason) = handled {
                    control.close(GoodbyeCode::ProtocolError, reason.clone()).await;
                    finish(driver).await;
                    break SessionEnd::ProtocolError(reason);
                }
            }
            Some(stream) = incoming.next() => {
                let visitor = super::visits::Visitor {
                    name: name.clone(),
                    credential: client.credential,
                };
                tokio::spawn(super::visits::handle(shared.clone(), visitor, stream, owned.clone()));
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
    tracing::info!(client = %crate::log::Escaped(&name), %peer, "session ended: {}", crate::log::Escaped(&end.to_string()));
}

/// Registers a private service if this client may expose that name, and answers.
async fn expose(
    shared: &Shared,
    client: &AuthenticatedClient,
    session: super::registry::SessionId,
    service: String,
    control: &crate::session::ControlSender,
) {
    let refused = if !shared.config.rules(&client.name, client.credential).may_expose(&service) {
        let message = format!("client {:?} may not expose a service named {service:?}", client.name);
        Some((RefusalCode::NameNotAllowed, message))
    } else if let Err(cap) = shared.registry.expose(&client.name, session, &service) {
        Some((RefusalCode::TooManyServices, format!("this client already exposes {cap} services")))
    } else {
        None
    };
    let escaped = (crate::log::Escaped(&client.name), crate::log::Escaped(&service));
    let reply = match refused {
        None => {
            tracing::info!(client = %escaped.0, service = %escaped.1, "service exposed");
            ControlMessage::ExposeReady { name: service }
        }
        Some((code, message)) => {
            if crate::log::REFUSALS.allow() {
                tracing::info!(client = %escaped.0, service = %escaped.1, "service refused: {message}");
            }
            ControlMessage::ExposeRefused { name: service, code, message }
        }
    };
    // A failed send means the session is ending; the driver reports why.
    let _ = control.send(reply).await;
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
