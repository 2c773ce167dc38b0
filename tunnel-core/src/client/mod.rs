//! The client: dials the server, authenticates, asks for its forwards, and carries visitors to
//! their targets; on a transient failure it reconnects with backoff, on a permanent one it stops.
//!
//! Progress is published as a [`ClientStatus`] on a watch channel, so a CLI or an embedding
//! program can show the public addresses or wait for readiness without parsing logs.

mod backoff;
mod error;
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
use crate::forward::{RemoteForwardSpec, TargetAddr};
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
            session: SessionConfig::default(),
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

/// What the client is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientStatus {
    /// Dialing and authenticating.
    Connecting,
    /// Session up and every forward listening.
    Connected {
        /// The forwards, in configuration order.
        forwards: Vec<ActiveForward>,
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
}

impl Client {
    /// A client with this configuration; nothing happens until [`Client::run`].
    pub fn new(config: ClientConfig) -> Self {
        Self { config: Arc::new(config), status: watch::Sender::new(ClientStatus::Connecting) }
    }

    /// Follows the client's progress.
    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status.subscribe()
    }

    /// Connects and serves, reconnecting after transient failures, until `shutdown` resolves
    /// (`Ok`, after a goodbye to the server) or a permanent failure occurs (`Err`).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ClientError> {
        let stop = CancellationToken::new();
        let work = self.run_until(stop.clone());
        tokio::pin!(work, shutdown);
        tokio::select! {
            result = &mut work => return result,
            () = &mut shutdown => stop.cancel(),
        }
        work.await
    }

    async fn run_until(&self, stop: CancellationToken) -> Result<(), ClientError> {
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
                Ok(session) => match self.serve(session, &mut assigned, &mut backoff, &stop).await {
                    Ok(()) => return Ok(()),
                    Err(failure) => failure,
                },
                Err(failure) => failure,
            };
            let error = match failure {
                Failure::Permanent(err) => return Err(err),
                Failure::Transient(error) => error,
            };
            let Some(delay) = backoff.next_delay() else {
                return Err(ClientError::GaveUp { attempts: backoff.attempts(), last: error });
            };
            tracing::warn!("{error}; reconnecting in {delay:.1?}");
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
    ) -> Result<(), Failure> {
        let Session { control, mut messages, opener: _, mut incoming, driver } = session;
        let mut driver = OwnedTask::spawn(driver);
        let ended = |end: Result<SessionEnd, tokio::task::JoinError>| {
            classify_end(end.unwrap_or_else(|e| SessionEnd::ProtocolError(e.to_string())))
        };
        let forwards = tokio::select! {
            forwards = self.request_forwards(&control, &mut messages, assigned) => forwards,
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
        let targets: Arc<HashMap<u32, TargetAddr>> = Arc::new(
            self.config.remotes.iter().enumerate().map(|(i, s)| (forward_id(i), s.local.clone())).collect(),
        );
        self.status.send_replace(ClientStatus::Connected { forwards });

        let owned = CancellationToken::new();
        let _cut_streams_on_exit = owned.clone().drop_guard();
        loop {
            tokio::select! {
                end = &mut driver => return Err(ended(end)),
                Some(stream) = incoming.next() => {
                    tokio::spawn(streams::handle(stream, targets.clone(), owned.clone()));
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

    async fn request_forwards(
        &self,
        control: &crate::session::ControlSender,
        messages: &mut tokio::sync::mpsc::Receiver<ControlMessage>,
        assigned: &mut HashMap<u32, u16>,
    ) -> Result<Vec<ActiveForward>, Failure> {
        let remotes = &self.config.remotes;
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
            if control.send(request).await.is_err() {
                return Err(Failure::Transient("session closed while requesting forwards".into()));
            }
        }
        let mut ready: Vec<Option<SocketAddr>> = vec![None; remotes.len()];
        while ready.iter().any(Option::is_none) {
            let message = tokio::time::timeout(self.config.handshake_timeout, messages.recv())
                .await
                .map_err(|_| {
                    Failure::Transient("the server did not answer the forward requests in time".into())
                })?
                .ok_or_else(|| Failure::Transient("session closed while requesting forwards".into()))?;
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
