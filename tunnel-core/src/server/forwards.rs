//! Remote forwards of one session: port policy, binding, and visitors turned into streams.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::registry::{PortConflict, SessionId};
use super::source::Source;
use super::{PortVerdict, Shared};
use crate::auth::CredentialKind;
use crate::forward::splice;
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
                        tracing::info!(client = %crate::log::Escaped(&self.name), id, %public_addr, "remote forward listening");
                        ControlMessage::RemoteForwardReady { id, public_addr }
                    }
                    Err((code, message)) => {
                        if crate::log::REFUSALS.allow() {
                            tracing::info!(client = %crate::log::Escaped(&self.name), id, port, "remote forward refused: {}", crate::log::Escaped(&message));
                        }
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
        let ip = self.bind_address(bind)?;
        let listener = if port == 0 {
            self.bind_any(id, ip, preferred).await?
        } else {
            match self.shared.config.rules(&self.name, self.credential).may_bind_port(port) {
                PortVerdict::Allowed => self.bind_claimed(id, ip, port).await?,
                PortVerdict::Owned => {
                    return Err((RefusalCode::PortTaken, format!("port {port} is owned by another client")))
                }
                PortVerdict::NotAllowed => {
                    let allowed = self.shared.config.rules(&self.name, self.credential).ports();
                    return Err((
                        RefusalCode::PortNotAllowed,
                        format!("port {port} is not allowed for client {:?} (allowed: {allowed})", self.name),
                    ));
                }
            }
        };
        let public_addr = listener.local_addr().map_err(|e| (RefusalCode::Invalid, e.to_string()))?;
        let config = &self.shared.config;
        let carrier = Carrier {
            forward_id: id,
            opener: self.opener.clone(),
            owned: self.owned.clone(),
            max_visitors: config.max_visitors_per_forward,
            max_per_source: config.max_visitors_per_source,
        };
        let task = OwnedTask::spawn(serve(listener, carrier));
        self.active.insert(id, task);
        Ok(public_addr)
    }

    async fn bind_claimed(&self, id: u32, ip: IpAddr, port: u16) -> Result<TcpListener, Refusal> {
        let registry = &self.shared.registry;
        match registry.claim(&self.name, self.session, id, port) {
            Ok(()) => {}
            Err(PortConflict::OtherClient) => {
                return Err((RefusalCode::PortTaken, format!("port {port} is held by another client")))
            }
            Err(PortConflict::Held) => {
                return Err((RefusalCode::PortTaken, format!("port {port} is already held by this client")))
            }
        }
        TcpListener::bind((ip, port)).await.map_err(|err| {
            registry.release(self.session, port);
            bind_refusal(ip, port, &err)
        })
    }

    /// The address a forward binds: the one the client asked for if its credential may bind
    /// it, else the server's default for this client.
    fn bind_address(&self, asked: Option<IpAddr>) -> Result<IpAddr, Refusal> {
        let rules = self.shared.config.rules(&self.name, self.credential);
        let allowed = rules.bind_addresses();
        match asked {
            Some(ip) if allowed.contains(&ip) => Ok(ip),
            Some(ip) => {
                let list = allowed.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                Err((
                    RefusalCode::AddressNotAllowed,
                    format!("address {ip} is not allowed for client {:?} (allowed: {list})", self.name),
                ))
            }
            None => Ok(rules.default_bind()),
        }
    }

    /// Picks a port: the one the client held before (its hint, else our reservation for this
    /// forward), then random candidates from the allowed set; never a port another client owns.
    async fn bind_any(&self, id: u32, ip: IpAddr, preferred: u16) -> Result<TcpListener, Refusal> {
        let rules = self.shared.config.rules(&self.name, self.credential);
        let usable = |port: u16| rules.may_bind_port(port) == PortVerdict::Allowed;
        let reserved = self.shared.registry.reserved_for(&self.name, id);
        for previous in [Some(preferred).filter(|p| *p != 0), reserved].into_iter().flatten() {
            if usable(previous) {
                if let Ok(listener) = self.bind_claimed(id, ip, previous).await {
                    return Ok(listener);
                }
            }
        }
        let allowed = rules.ports();
        for _ in 0..PICK_ATTEMPTS.min(allowed.len().max(1)) {
            let Some(port) = allowed.nth(rand::random_range(0..allowed.len().max(1))) else {
                break;
            };
            if !usable(port) || self.shared.registry.is_taken_for(&self.name, port) {
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

/// What a forward's listener needs to carry visitors to its session.
#[derive(Debug, Clone)]
struct Carrier {
    forward_id: u32,
    opener: StreamOpener,
    /// Cancelled when the session ends.
    owned: CancellationToken,
    max_visitors: usize,
    max_per_source: usize,
}

/// Visitors of one forward in progress, in total and per source.
#[derive(Debug, Default)]
struct Visitors {
    total: usize,
    per_source: HashMap<Source, usize>,
}

/// One admitted visitor; dropping it frees its place.
struct VisitorPlace {
    source: Source,
    visitors: Arc<Mutex<Visitors>>,
}

impl Drop for VisitorPlace {
    fn drop(&mut self) {
        let mut visitors = self.visitors.lock().unwrap_or_else(|e| e.into_inner());
        visitors.total -= 1;
        if let Some(count) = visitors.per_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                visitors.per_source.remove(&self.source);
            }
        }
    }
}

impl Carrier {
    /// A place for a visitor from `ip`, or why there is none.
    fn admit(&self, visitors: &Arc<Mutex<Visitors>>, ip: IpAddr) -> Result<VisitorPlace, &'static str> {
        let source = Source::from(ip);
        let mut state = visitors.lock().unwrap_or_else(|e| e.into_inner());
        if state.total >= self.max_visitors {
            return Err("the forward carries its maximum of visitors");
        }
        let from_source = state.per_source.entry(source).or_default();
        if *from_source >= self.max_per_source {
            return Err("this source has its maximum of visitors on the forward");
        }
        *from_source += 1;
        state.total += 1;
        Ok(VisitorPlace { source, visitors: visitors.clone() })
    }
}

/// Accepts visitors until the session ends; each becomes one new stream to the client. A
/// visitor past the forward's caps is reset at once, before any stream is opened.
async fn serve(listener: TcpListener, carrier: Carrier) {
    let visitors = Arc::new(Mutex::new(Visitors::default()));
    loop {
        let accepted = tokio::select! {
            () = carrier.owned.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, visitor)) => match carrier.admit(&visitors, visitor.ip()) {
                Ok(place) => {
                    tokio::spawn(visit(tcp, visitor, carrier.clone(), place));
                }
                Err(why) => {
                    if crate::log::REFUSALS.allow() {
                        tracing::info!(%visitor, forward_id = carrier.forward_id, "visitor refused: {why}");
                    }
                    transport::reset_on_close(&tcp);
                }
            },
            Err(err) => {
                // Out of file descriptors and the like: pause instead of spinning.
                if crate::log::ACCEPT_FAILURES.allow() {
                    tracing::warn!(forward_id = carrier.forward_id, "accept failed: {err}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn visit(mut tcp: TcpStream, visitor: SocketAddr, carrier: Carrier, _place: VisitorPlace) {
    let forward_id = carrier.forward_id;
    let _ = transport::configure_tcp(&tcp);
    let mut stream = match carrier.opener.open().await {
        Ok(stream) => stream,
        Err(err) => {
            tracing::debug!(%visitor, forward_id, "cannot open a stream for the visitor: {}", crate::log::Chain(&err));
            transport::reset_on_close(&tcp);
            return;
        }
    };
    let header = StreamHeader::RemoteForward { forward_id, visitor }.encode();
    let carry = async {
        stream.write_all(&header).await?;
        splice(&mut tcp, &mut stream).await
    };
    let failed = tokio::select! {
        () = carrier.owned.cancelled() => true,
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
