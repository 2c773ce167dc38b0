//! A SOCKS5 proxy on the server (`serve --socks-listen`), for people who reach private networks
//! without running a client. A connection authenticates with a client's name and that client's
//! own token (username and password; the shared token is not accepted, since any name can
//! present it) and is then a visit of that client: the rules and routes its `-D` would get.
//! UDP ASSOCIATE: `socks_udp.rs`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::visits::{self, Upstream, Visitor};
use super::{Server, Shared};
use crate::auth::{CredentialKind, Credentials, Token};
use crate::forward::Protocol;
use crate::forward::{splice, VisitTarget};
use crate::log::Escaped;
use crate::proto::ReplyStatus;
use crate::socks::{self, Auth, Command, Reply};
use crate::source::Pending;

impl Server {
    /// Serves SOCKS5 on `listener` until `shutdown` resolves or the server drains: each
    /// connection logs in as a client with its own token (username: the name, password: the
    /// token) and CONNECTs where that client's rules allow, as its `-D` would. At most
    /// [`super::ServerConfig::max_unauthenticated`] connections not yet logged in at once, of
    /// which [`super::ServerConfig::max_unauthenticated_per_source`] from one source (more are
    /// reset); when full, a newcomer takes the place of the oldest connection of the site
    /// holding the most, so that silent connections from a few sources lock no one out. Each
    /// has [`super::ServerConfig::handshake_timeout`] to log in and ask; once logged in, it is
    /// one of its login's visits (`LoginVisits`). On the drain, open connections go on for
    /// the drain time.
    pub async fn run_socks(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let config = self.shared.config();
        let places = Pending::new(config.max_unauthenticated, config.max_unauthenticated_per_source);
        let shared = self.shared.clone();
        let serving = move |tcp, peer, settled| {
            let shared = shared.clone();
            async move { serve(&shared, tcp, peer, settled).await }
        };
        self.shared.accept_until("SOCKS", listener, shutdown, places, || {}, serving).await;
        Ok(())
    }
}

/// True if `user` is a client with a token of its own and `password` is that token. Unknown
/// names are checked against a decoy, so they take as long as a wrong token.
fn logs_in(shared: &Shared, user: &[u8], password: &[u8]) -> bool {
    let config = shared.config();
    let name = String::from_utf8_lossy(user);
    let (token, kind) = config.credentials.lookup_or_decoy(&name);
    let given = std::str::from_utf8(password).ok().and_then(|p| Token::new(p).ok());
    let matches = given.is_some_and(|given| token.same_secret(&given));
    matches && kind == Some(CredentialKind::PerClient)
}

/// Serves one connection; cancels `settled` once it is logged in and counted among its login's
/// visits, giving back its place among the listener's connections.
async fn serve(shared: &Arc<Shared>, mut tcp: TcpStream, peer: SocketAddr, settled: CancellationToken) {
    let config = shared.config();
    let check = |user: &[u8], password: &[u8]| logs_in(shared, user, password);
    let login =
        tokio::time::timeout(config.handshake_timeout, socks::accept(&mut tcp, Auth::Password(&check)));
    let accepted = match login.await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(err)) => {
            let reason = match err {
                socks::AcceptError::BadCredentials { .. } => "socks: login",
                _ => "socks: protocol",
            };
            shared.metrics.refused(reason);
            if crate::log::REFUSALS.allow() {
                tracing::info!(%peer, "SOCKS client refused: {}", crate::log::Chain(&err));
            }
            return;
        }
        Err(_) => {
            return tracing::debug!(%peer, "SOCKS client sent no request within {:?}", config.handshake_timeout)
        }
    };
    let Some(name) = accepted.user.clone() else { return };
    let refuse = |reply: Reply, why: &str| {
        if crate::log::REFUSALS.allow() {
            let destination = &accepted.request.destination;
            tracing::info!(client = %Escaped(&name), %peer, %destination, "SOCKS connection refused ({reply:?}): {}", Escaped(why));
        }
        reply
    };
    let refused = if !matches!(accepted.request.command, Command::Connect | Command::UdpAssociate) {
        Some(refuse(Reply::CommandNotSupported, "only CONNECT and UDP ASSOCIATE are supported"))
    } else if shared.draining.is_cancelled() {
        Some(refuse(Reply::GeneralFailure, "the server is draining"))
    } else {
        None
    };
    if let Some(reply) = refused {
        let _ = socks::reply(&mut tcp, reply, None).await;
        return;
    }
    // A CONNECT, or a UDP association (whose destinations are visits each too, `socks_udp.rs`).
    let Some(_visit) = shared.socks_visits.take(&name, max_visits(&config)) else {
        let reply = refuse(Reply::GeneralFailure, LoginVisits::FULL);
        let _ = socks::reply(&mut tcp, reply, None).await;
        return;
    };
    settled.cancel();
    let from = Visitor { name: name.clone(), credential: CredentialKind::PerClient, control: None };
    if accepted.request.command == Command::UdpAssociate {
        let requested = &accepted.request.destination;
        return super::socks_udp::associate(shared, tcp, peer, from, &config.credentials, requested).await;
    }
    let target = match accepted.request.destination.to_target() {
        Ok(target) => VisitTarget::Address(target),
        Err(err) => {
            let reply = refuse(Reply::HostUnreachable, &err.to_string());
            let _ = socks::reply(&mut tcp, reply, None).await;
            return;
        }
    };
    let upstream = match visits::connect(shared, &from, &target, peer, Protocol::Tcp).await {
        Ok(upstream) => upstream,
        Err(refusal) => {
            visits::log_refusal(shared, &from, &target, peer, &refusal);
            let _ = socks::reply(&mut tcp, socks::reply_for(refusal.status), None).await;
            return;
        }
    };
    // The client serving a routed network dials, then answers; within the time a dial may take.
    let wait = config.timeouts.connect.saturating_add(config.timeouts.lookup);
    let mut upstream: Box<dyn Stream> = match upstream {
        Upstream::Tcp(tcp) => Box::new(tcp),
        // Asked for TCP above.
        Upstream::Udp(_) => return,
        Upstream::Client { stream, answers: false } => Box::new(stream),
        Upstream::Client { mut stream, answers: true } => {
            let answer = tokio::time::timeout(wait, crate::session::framed::read_reply(&mut stream)).await;
            let status = match answer {
                Ok(Ok(answer)) => answer.status,
                Ok(Err(_)) => ReplyStatus::Other(u8::MAX),
                Err(_) => ReplyStatus::TimedOut,
            };
            if status != ReplyStatus::Ok {
                let _ = socks::reply(&mut tcp, socks::reply_for(status), None).await;
                return;
            }
            Box::new(stream)
        }
    };
    // From the success reply until the connection ends in order, a close resets it, even this
    // process's death: the SOCKS client then never takes part of an answer (or none) for all
    // of it. Refusals before it close in order, so their reply is never thrown away.
    crate::transport::reset_on_close(&tcp);
    if socks::reply(&mut tcp, Reply::Succeeded, None).await.is_err() {
        return; // Dropping the upstream resets it.
    }
    let early = accepted.early;
    let carried = async {
        upstream.write_all(&early).await?;
        splice(&mut tcp, &mut upstream).await
    };
    let failed = tokio::select! {
        carried = carried => carried.err().map(|err| err.to_string()),
        () = revoked(shared, &config.credentials, &name) => Some("its token was revoked".to_owned()),
    };
    match failed {
        Some(why) => tracing::debug!(client = %Escaped(&name), %peer, "SOCKS connection ended: {why}"),
        None => {
            crate::transport::close_in_order(&tcp);
            upstream.ended_in_order();
        }
    }
}

/// The visits one login may hold through the listener at once: as many as a client's session
/// may open toward the server (`max_visits_per_client`), the control stream left out.
pub(super) fn max_visits(config: &super::ServerConfig) -> usize {
    config.session.mux.inbound_limit().saturating_sub(1)
}

/// The visits each login holds through the SOCKS listener: CONNECTs, UDP associations and
/// their destinations together. Each is a stream to the client routing a network, or a socket
/// of the server's: without a cap, one login's UDP associations (32 destinations each) took
/// every stream of the client routing a network, and every descriptor of the server. A
/// client's own `-D` and `-L` visits are held to the same number by its session.
#[derive(Debug, Default)]
pub(super) struct LoginVisits(Arc<Mutex<HashMap<String, usize>>>);

/// One visit of a login, given back when dropped.
#[derive(Debug)]
pub(super) struct LoginVisit {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    name: String,
}

impl LoginVisits {
    /// Why a visit past the cap is refused.
    pub(super) const FULL: &'static str =
        "this login holds its maximum of visits (limits.max_visits_per_client)";

    /// A visit for `name`, unless it holds `most` already.
    pub(super) fn take(&self, name: &str, most: usize) -> Option<LoginVisit> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let held = counts.entry(name.to_owned()).or_default();
        if *held >= most {
            return None;
        }
        *held += 1;
        Some(LoginVisit { counts: self.0.clone(), name: name.to_owned() })
    }
}

impl Drop for LoginVisit {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = counts.get_mut(&self.name) {
            *held -= 1;
            if *held == 0 {
                counts.remove(&self.name);
            }
        }
    }
}

/// Returns when a reload no longer accepts the token `name` logged in with (as a session of
/// that client would be ended).
pub(super) async fn revoked(shared: &Shared, at_login: &Credentials, name: &str) {
    let mut reloads = shared.reloads.subscribe();
    // A reload between the login and now counts too.
    if !shared.config().credentials.still_accepts(at_login, name, CredentialKind::PerClient) {
        return;
    }
    while reloads.changed().await.is_ok() {
        if !shared.config().credentials.still_accepts(at_login, name, CredentialKind::PerClient) {
            return;
        }
    }
    std::future::pending().await
}

/// What a SOCKS connection is spliced to.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Both ways ended in order: a socket set to reset on close may end with a FIN again.
    /// No default: a type holding such a socket that forgot it would reset every orderly end.
    fn ended_in_order(&self);
}

impl Stream for TcpStream {
    fn ended_in_order(&self) {
        crate::transport::close_in_order(self);
    }
}

/// Ends in order on its own (its FIN was sent); a cut one resets.
impl Stream for crate::mux::MuxStream {
    fn ended_in_order(&self) {}
}

/// In-process: nothing to reset.
impl Stream for tokio::io::DuplexStream {
    fn ended_in_order(&self) {}
}

#[cfg(test)]
mod tests {
    use super::LoginVisits;

    #[test]
    fn a_login_holds_at_most_its_visits_and_gets_back_what_it_gives_back() {
        let visits = LoginVisits::default();
        let first = visits.take("laptop", 2).unwrap();
        let _second = visits.take("laptop", 2).unwrap();
        assert!(visits.take("laptop", 2).is_none());
        // Another login counts on its own.
        assert!(visits.take("phone", 2).is_some());
        drop(first);
        assert!(visits.take("laptop", 2).is_some());
    }
}
