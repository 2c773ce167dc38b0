//! Remote forwards of one session: port policy, binding, and visitors turned into streams.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::registry::SessionId;
use super::Shared;
use crate::auth::CredentialKind;
use crate::forward::{splice, PortSet};
use crate::mux::StreamOpener;
use crate::proto::handshake::AuthenticatedClient;
use crate::proto::{ControlMessage, RefusalCode, StreamHeader};
use crate::session::ControlSender;
use crate::task::OwnedTask;
use crate::transport;

/// Random candidates tried when the client lets the server choose a port.
const PICK_ATTEMPTS: usize = 64;

type Refusal = (RefusalCode, String);

pub(super) struct Forwards<'s> {
    shared: &'s Shared,
    name: String,
    credential: CredentialKind,
    session: SessionId,
    opener: StreamOpener,
    /// Cancelled when the session ends: stops listeners and cuts visitors.
    owned: CancellationToken,
    /// Forward id -> the task serving its public listener.
    active: HashMap<u32, OwnedTask<()>>,
}

impl<'s> Forwards<'s> {
    pub(super) fn new(
        shared: &'s Shared,
        client: &AuthenticatedClient,
        session: SessionId,
        opener: StreamOpener,
        owned: CancellationToken,
    ) -> Self {
        Self {
            shared,
            name: client.name.clone(),
            credential: client.credential,
            session,
            opener,
            owned,
            active: HashMap::new(),
        }
    }

    /// Stops every listener and cuts every visitor; returns once the listening sockets are
    /// closed, so the ports can be bound again (by a session replacing this one).
    pub(super) async fn close(self) {
        self.owned.cancel();
        for (_, task) in self.active {
            let _ = task.await;
        }
    }

    /// Handles a forward request; `Err` is a protocol violation that ends the session.
    pub(super) async fn request(
        &mut self,
        message: ControlMessage,
        control: &ControlSender,
    ) -> Result<(), String> {
        match message {
            ControlMessage::RemoteForwardRequest { id, bind, port, preferred_port } => {
                let reply = match self.open(id, bind, port, preferred_port).await {
                    Ok(public_addr) => {
                        tracing::info!(client = %self.name, id, %public_addr, "remote forward listening");
                        ControlMessage::RemoteForwardReady { id, public_addr }
                    }
                    Err((code, message)) => {
                        tracing::info!(client = %self.name, id, port, "remote forward refused: {message}");
                        ControlMessage::RemoteForwardRefused { id, code, message }
                    }
                };
                // A failed send means the session is ending; the driver reports why.
                let _ = control.send(reply).await;
                Ok(())
            }
            other => Err(format!("unexpected control message from a client: {other:?}")),
        }
    }

    async fn open(
        &mut self,
        id: u32,
        bind: Option<IpAddr>,
        port: u16,
        preferred: u16,
    ) -> Result<SocketAddr, Refusal> {
        if self.active.contains_key(&id) {
            return Err((RefusalCode::Invalid, format!("forward id {id} is already in use")));
        }
        let limit = self.shared.config.max_forwards_per_client;
        if self.active.len() >= limit {
            return Err((
                RefusalCode::TooManyForwards,
                format!("this client already holds {limit} forwards"),
            ));
        }
        let allowed = self.shared.config.ports_for(&self.name, self.credential);
        let ip = bind.unwrap_or(self.shared.config.default_bind);
        let listener = if port == 0 {
            self.bind_any(id, ip, preferred, allowed).await?
        } else if allowed.contains(port) {
            self.bind_claimed(id, ip, port).await?
        } else {
            return Err((
                RefusalCode::PortNotAllowed,
                format!("port {port} is not allowed for client {:?} (allowed: {allowed})", self.name),
            ));
        };
        let public_addr = listener.local_addr().map_err(|e| (RefusalCode::Invalid, e.to_string()))?;
        let task = OwnedTask::spawn(serve(listener, id, self.opener.clone(), self.owned.clone()));
        self.active.insert(id, task);
        Ok(public_addr)
    }

    async fn bind_claimed(&self, id: u32, ip: IpAddr, port: u16) -> Result<TcpListener, Refusal> {
        let registry = &self.shared.registry;
        if registry.claim(&self.name, self.session, id, port).is_err() {
            return Err((RefusalCode::PortTaken, format!("port {port} is held by another client")));
        }
        TcpListener::bind((ip, port)).await.map_err(|err| {
            registry.release(self.session, port);
            bind_refusal(ip, port, &err)
        })
    }

    /// Picks a port: the one the client held before (its hint, else our reservation for this
    /// forward), then random candidates from the allowed set.
    async fn bind_any(
        &self,
        id: u32,
        ip: IpAddr,
        preferred: u16,
        allowed: &PortSet,
    ) -> Result<TcpListener, Refusal> {
        let reserved = self.shared.registry.reserved_for(&self.name, id);
        for previous in [Some(preferred).filter(|p| *p != 0), reserved].into_iter().flatten() {
            if allowed.contains(previous) {
                if let Ok(listener) = self.bind_claimed(id, ip, previous).await {
                    return Ok(listener);
                }
            }
        }
        for _ in 0..PICK_ATTEMPTS.min(allowed.len().max(1)) {
            let Some(port) = allowed.nth(rand::random_range(0..allowed.len().max(1))) else {
                break;
            };
            if self.shared.registry.is_taken_for(&self.name, port) {
                continue;
            }
            match self.bind_claimed(id, ip, port).await {
                Ok(listener) => return Ok(listener),
                Err((RefusalCode::PortTaken, _)) => continue,
                Err(other) => return Err(other),
            }
        }
        Err((RefusalCode::PortTaken, format!("no free port found among the allowed ports ({allowed})")))
    }
}

fn bind_refusal(ip: IpAddr, port: u16, err: &io::Error) -> Refusal {
    match err.kind() {
        io::ErrorKind::AddrInUse => {
            (RefusalCode::PortTaken, format!("port {port} is already in use on the server"))
        }
        io::ErrorKind::PermissionDenied => {
            (RefusalCode::PortNotAllowed, format!("the server may not bind port {port}: {err}"))
        }
        _ => (RefusalCode::Invalid, format!("cannot bind {ip}:{port} on the server: {err}")),
    }
}

/// Accepts visitors until the session ends; each becomes one new stream to the client.
async fn serve(listener: TcpListener, forward_id: u32, opener: StreamOpener, owned: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = owned.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, visitor)) => {
                tokio::spawn(visit(tcp, visitor, forward_id, opener.clone(), owned.clone()));
            }
            Err(err) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(forward_id, "accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn visit(
    mut tcp: TcpStream,
    visitor: SocketAddr,
    forward_id: u32,
    opener: StreamOpener,
    owned: CancellationToken,
) {
    let _ = transport::configure_tcp(&tcp);
    let mut stream = match opener.open().await {
        Ok(stream) => stream,
        Err(err) => {
            tracing::debug!(%visitor, forward_id, "cannot open a stream for the visitor: {err}");
            return;
        }
    };
    let header = StreamHeader::RemoteForward { forward_id, visitor }.encode();
    let carry = async {
        stream.write_all(&header).await?;
        splice(&mut tcp, &mut stream).await
    };
    let failed = tokio::select! {
        () = owned.cancelled() => true,
        result = carry => match result {
            Ok(stats) => {
                tracing::trace!(%visitor, forward_id, ?stats, "visitor done");
                false
            }
            Err(err) => {
                tracing::debug!(%visitor, forward_id, "visitor connection failed: {err}");
                true
            }
        },
    };
    if failed {
        // The tunnel side broke: the visitor must see an error, not an orderly end of stream.
        transport::reset_on_close(&tcp);
    }
}
