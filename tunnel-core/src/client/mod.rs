//! The client: dials the server, authenticates, asks for its forwards, and carries visitors to
//! their targets; on a transient failure it reconnects with backoff, on a permanent one it stops.
//!
//! Progress is published as a [`ClientStatus`] on a watch channel, so a CLI or an embedding
//! program can show the public addresses or wait for readiness without parsing logs.

mod backoff;
mod error;
mod locals;
mod streams;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use backoff::{Backoff, BackoffState};
pub use error::ClientError;

use self::error::{classify_end, classify_session, classify_tls, Failure};
use crate::auth::Token;
use crate::forward::{LocalForwardSpec, RemoteForwardSpec, ServiceSpec};
use crate::mux::StreamOpener;
use crate::proto::{ControlMessage, GoodbyeCode};
use crate::session::{Session, SessionConfig, SessionEnd};
use crate::task::OwnedTask;
use crate::transport::{self, ClientTransport};

/// Client settings. Start from [`ClientConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Server address, `host:port`.
    pub server: String,
    /// Name this client authenticates as; the server keys ports and permissions by it.
    pub name: String,
    /// Secret proven during the handshake.
    pub token: Token,
    /// TLS (with server trust) or plaintext.
    pub transport: ClientTransport,
    /// Remote forwards to request.
    pub remotes: Vec<RemoteForwardSpec>,
    /// Local forwards to listen for.
    pub locals: Vec<LocalForwardSpec>,
    /// Private services to expose.
    pub services: Vec<ServiceSpec>,
    /// Session settings (the server's heartbeat interval overrides ours).
    pub session: SessionConfig,
    /// Time allowed for TCP connect, TLS and the handshake together (default 10 s).
    pub handshake_timeout: Duration,
    /// Reconnect policy.
    pub reconnect: Backoff,
}

impl ClientConfig {
    /// Defaults around the essentials.
    pub fn new(
        server: impl Into<String>,
        name: impl Into<String>,
        token: Token,
        transport: ClientTransport,
    ) -> Self {
        Self {
            server: server.into(),
            name: name.into(),
            token,
            transport,
            remotes: Vec::new(),
            locals: Vec::new(),
            services: Vec::new(),
            session: SessionConfig {
                // The server caps streams per session (`limits.max_streams_per_session`, at most
                // 65536); the client, having pinned that server, follows its cap, not a lower one.
                mux: crate::mux::MuxConfig { max_streams: 65536, ..Default::default() },
                ..SessionConfig::default()
            },
            handshake_timeout: Duration::from_secs(10),
            reconnect: Backoff::default(),
        }
    }
}

/// A remote forward the server is listening for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveForward {
    /// The forward as configured.
    pub spec: RemoteForwardSpec,
    /// Where the server listens for visitors.
    pub public_addr: SocketAddr,
}

/// A local forward's listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveLocal {
    /// The forward as configured.
    pub spec: LocalForwardSpec,
    /// Where it listens.
    pub bound_addr: SocketAddr,
}

/// What the client is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientStatus {
    /// Dialing and authenticating.
    Connecting,
    /// Session up, every forward listening and every service exposed.
    Connected {
        /// The forwards, in configuration order.
        forwards: Vec<ActiveForward>,
        /// The exposed services, in configuration order.
        services: Vec<ServiceSpec>,
    },
    /// Waiting before the next attempt.
    Reconnecting {
        /// Consecutive failed attempts.
        attempt: u32,
        /// Wait before the next one.
        delay: Duration,
        /// Why the last attempt or session failed.
        error: String,
    },
}

/// A tunnel client.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use tunnel_core::auth::Token;
/// use tunnel_core::client::{Client, ClientConfig};
/// use tunnel_core::tls::{client_config, ServerTrust};
/// use tunnel_core::transport::ClientTransport;
///
/// let trust = ServerTrust::Pinned("sha256:…64 hex digits…".parse()?);
/// let transport = ClientTransport::tls(client_config(&trust)?, "tunnel.example.com:7700")?;
/// let mut config = ClientConfig::new("tunnel.example.com:7700", "laptop", Token::new("s3cret")?, transport);
/// config.remotes.push("8080:127.0.0.1:3000".parse()?);
/// let client = Client::new(config);
/// let mut status = client.status();
/// tokio::spawn(async move {
///     while status.changed().await.is_ok() {
///         println!("{:?}", *status.borrow());
///     }
/// });
/// client.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Client {
    config: Arc<ClientConfig>,
    status: watch::Sender<ClientStatus>,
    locals: Option<Vec<locals::BoundLocal>>,
}

impl Client {
    /// A client with this configuration; nothing happens until [`Client::run`].
    pub fn new(config: ClientConfig) -> Self {
        Self { config: Arc::new(config), status: watch::Sender::new(ClientStatus::Connecting), locals: None }
    }

    /// Binds the local forwards' listeners now (otherwise [`Client::run`] does), and returns
    /// their addresses: with port 0 the OS picks one.
    pub async fn listen_locals(&mut self) -> Result<Vec<ActiveLocal>, ClientError> {
        if self.locals.is_none() {
            let bound = locals::bind(&self.config.locals)
                .await
                .map_err(|(spec, source)| ClientError::Bind { spec: spec.to_string(), source })?;
            self.locals = Some(bound);
        }
        let bound = self.locals.as_deref().unwrap_or_default();
        bound
            .iter()
            .map(|b| {
                let bound_addr = b
                    .listener
                    .local_addr()
                    .map_err(|source| ClientError::Bind { spec: b.spec.to_string(), source })?;
                Ok(ActiveLocal { spec: b.spec.clone(), bound_addr })
            })
            .collect()
    }

    /// Follows the client's progress.
    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status.subscribe()
    }

    /// Connects and serves, reconnecting after transient failures, until `shutdown` resolves
    /// (`Ok`, after a goodbye to the server) or a permanent failure occurs (`Err`).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), ClientError> {
        self.listen_locals().await?;
        let stop = CancellationToken::new();
        let (session_tx, session_rx) = watch::channel(None);
        let _locals: Vec<OwnedTask<()>> = self
            .locals
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|local| OwnedTask::spawn(locals::serve(local, session_rx.clone(), stop.clone())))
            .collect();
        let work = self.run_until(stop.clone(), &session_tx);
        tokio::pin!(work, shutdown);
        tokio::select! {
            result = &mut work => return result,
            () = &mut shutdown => stop.cancel(),
        }
        work.await
    }

    async fn run_until(
        &self,
        stop: CancellationToken,
        session: &watch::Sender<Option<StreamOpener>>,
    ) -> Result<(), ClientError> {
        let mut backoff = self.config.reconnect.start();
        // Ports the server assigned to `REMOTE_PORT 0` forwards, asked for again on reconnect.
        let mut assigned: HashMap<u32, u16> = HashMap::new();
        loop {
            self.status.send_replace(ClientStatus::Connecting);
            let outcome = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                outcome = self.connect() => outcome,
            };
            let failure = match outcome {
                Ok(established) => {
                    let served = self.serve(established, &mut assigned, &mut backoff, &stop, session).await;
                    session.send_replace(None);
                    match served {
                        Ok(()) => return Ok(()),
                        Err(failure) => failure,
                    }
                }
                Err(failure) => failure,
            };
            let error = match failure {
                Failure::Permanent(err) => return Err(err),
                Failure::Transient(error) => error,
            };
            let Some(delay) = backoff.next_delay() else {
                return Err(ClientError::GaveUp { attempts: backoff.attempts(), last: error });
            };
            tracing::warn!("{}; reconnecting in {delay:.1?}", crate::log::Escaped(&error));
            self.status.send_replace(ClientStatus::Reconnecting {
                attempt: backoff.attempts(),
                delay,
                error,
            });
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One attempt: TCP, TLS, handshake, control stream; all under the handshake timeout.
    async fn connect(&self) -> Result<Session, Failure> {
        let config = &self.config;
        let attempt = async {
            let tcp = transport::connect_tcp(&config.server)
                .await
                .map_err(|e| Failure::Transient(format!("cannot connect to {}: {e}", config.server)))?;
            let (io, binding) = config.transport.wrap(tcp).await.map_err(classify_tls)?;
            let (session, _) =
                Session::connect(io, &binding, &config.name, config.token.clone(), &config.session)
                    .await
                    .map_err(classify_session)?;
            Ok(session)
        };
        tokio::time::timeout(config.handshake_timeout, attempt).await.unwrap_or_else(|_| {
            Err(Failure::Transient(format!(
                "no authenticated session with {} within {:?}",
                config.server, config.handshake_timeout
            )))
        })
    }

    /// Requests the forwards, then carries visitors until the session ends or we stop.
    async fn serve(
        &self,
        session: Session,
        assigned: &mut HashMap<u32, u16>,
        backoff: &mut BackoffState,
        stop: &CancellationToken,
        current: &watch::Sender<Option<StreamOpener>>,
    ) -> Result<(), Failure> {
        let Session { control, mut messages, opener, mut incoming, driver } = session;
        let mut driver = OwnedTask::spawn(driver);
        let ended = |end: Result<SessionEnd, tokio::task::JoinError>| {
            classify_end(end.unwrap_or_else(|e| SessionEnd::ProtocolError(e.to_string())))
        };
        let forwards = tokio::select! {
            forwards = self.request_setup(&control, &mut messages, assigned) => forwards,
            end = &mut driver => return Err(ended(end)),
        };
        let forwards = match forwards {
            Ok(forwards) => forwards,
            Err(failure) => {
                close(&control, driver).await;
                return Err(failure);
            }
        };
        backoff.reset();
        for forward in &forwards {
            tracing::info!(public = %forward.public_addr, target = %forward.spec.local, "remote forward ready");
        }
        for service in &self.config.services {
            tracing::info!(service = %service.name, target = %service.target, "service exposed");
        }
        let routes = Arc::new(streams::Routes {
            forwards: self
                .config
                .remotes
                .iter()
                .enumerate()
                .map(|(i, s)| (forward_id(i), (s.local.clone(), s.idle_timeout)))
                .collect(),
            services: self.config.services.iter().map(|s| (s.name.clone(), s.target.clone())).collect(),
        });
        current.send_replace(Some(opener));
        self.status
            .send_replace(ClientStatus::Connected { forwards, services: self.config.services.clone() });

        let owned = CancellationToken::new();
        let _cut_streams_on_exit = owned.clone().drop_guard();
        loop {
            tokio::select! {
                end = &mut driver => return Err(ended(end)),
                Some(stream) = incoming.next() => {
                    tokio::spawn(streams::handle(stream, routes.clone(), owned.clone()));
                }
                Some(message) = messages.recv() => {
                    tracing::debug!("ignoring unexpected control message: {message:?}");
                }
                () = stop.cancelled() => {
                    close(&control, driver).await;
                    return Ok(());
                }
            }
        }
    }

    /// Requests every remote forward and exposes every service; waits for all the answers.
    async fn request_setup(
        &self,
        control: &crate::session::ControlSender,
        messages: &mut tokio::sync::mpsc::Receiver<ControlMessage>,
        assigned: &mut HashMap<u32, u16>,
    ) -> Result<Vec<ActiveForward>, Failure> {
        let remotes = &self.config.remotes;
        let closed = || Failure::Transient("session closed while setting up forwards".into());
        for (i, spec) in remotes.iter().enumerate() {
            let id = forward_id(i);
            let preferred_port =
                if spec.remote_port == 0 { assigned.get(&id).copied().unwrap_or(0) } else { 0 };
            let request = ControlMessage::RemoteForwardRequest {
                id,
                bind: spec.bind,
                port: spec.remote_port,
                preferred_port,
            };
            control.send(request).await.map_err(|_| closed())?;
        }
        for service in &self.config.services {
            control
                .send(ControlMessage::ExposeRequest { name: service.name.clone() })
                .await
                .map_err(|_| closed())?;
        }
        let mut ready: Vec<Option<SocketAddr>> = vec![None; remotes.len()];
        let mut unexposed: std::collections::HashSet<&str> =
            self.config.services.iter().map(|s| s.name.as_str()).collect();
        while ready.iter().any(Option::is_none) || !unexposed.is_empty() {
            let message = tokio::time::timeout(self.config.handshake_timeout, messages.recv())
                .await
                .map_err(|_| {
                    Failure::Transient("the server did not answer the forward requests in time".into())
                })?
                .ok_or_else(closed)?;
            match message {
                ControlMessage::RemoteForwardReady { id, public_addr } => {
                    let slot = ready.get_mut(id as usize).ok_or_else(|| unknown_forward(id))?;
                    *slot = Some(public_addr);
                    assigned.insert(id, public_addr.port());
                }
                ControlMessage::RemoteForwardRefused { id, code, message } => {
                    let spec = remotes.get(id as usize).ok_or_else(|| unknown_forward(id))?.clone();
                    return Err(ClientError::ForwardRefused { spec, code, message }.into());
                }
                ControlMessage::ExposeReady { name } => {
                    unexposed.remove(name.as_str());
                }
                ControlMessage::ExposeRefused { name, code, message } => {
                    return Err(ClientError::ServiceRefused { name, code, message }.into());
                }
                other => tracing::debug!("ignoring unexpected control message: {other:?}"),
            }
        }
        Ok(remotes
            .iter()
            .zip(ready)
            .filter_map(|(spec, addr)| {
                addr.map(|public_addr| ActiveForward { spec: spec.clone(), public_addr })
            })
            .collect())
    }
}

/// Says goodbye and gives the driver a moment to deliver it before the connection is dropped.
async fn close(control: &crate::session::ControlSender, driver: OwnedTask<SessionEnd>) {
    control.close(GoodbyeCode::Shutdown, "client shutting down").await;
    let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
}

fn forward_id(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

fn unknown_forward(id: u32) -> Failure {
    ClientError::Protocol(format!("the server answered for forward {id}, which was never requested")).into()
}
