//! A SOCKS5 proxy on the server (`serve --socks-listen`), for people who reach private networks
//! without running a client. A connection authenticates with a client's name and that client's
//! own token (username and password; the shared token is not accepted, since any name can
//! present it) and is then a visit of that client: the rules and routes its `-D` would get.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::visits::{self, Visitor};
use super::{Server, Shared};
use crate::auth::{CredentialKind, Token};
use crate::forward::{splice, VisitTarget};
use crate::log::Escaped;
use crate::proto::{ReplyStatus, StreamReply};
use crate::socks::{self, Auth, Command, Reply};

/// Buffer between the visit and the SOCKS connection: the visit's answer and the data after it.
const PIPE: usize = 64 * 1024;

impl Server {
    /// Serves SOCKS5 on `listener` until `shutdown` resolves or the server drains: each
    /// connection logs in as a client with its own token (username: the name, password: the
    /// token) and CONNECTs where that client's rules allow, as its `-D` would. At most
    /// [`super::ServerConfig::max_visitors_per_forward`] connections at once (more are reset);
    /// each has [`super::ServerConfig::handshake_timeout`] to log in and ask. On the drain, open
    /// connections go on for the drain time.
    pub async fn run_socks(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let max = self.shared.config().max_visitors_per_forward;
        let slots = Arc::new(tokio::sync::Semaphore::new(max));
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                () = self.shared.draining.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        if crate::log::ACCEPT_FAILURES.allow() {
                            tracing::warn!("SOCKS accept failed: {err}");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                if crate::log::REFUSALS.allow() {
                    tracing::warn!(%peer, "SOCKS connection refused: {max} open");
                }
                crate::transport::reset_on_close(&tcp);
                continue;
            };
            let _ = crate::transport::configure_tcp(&tcp);
            let (shared, stop) = (self.shared.clone(), stop.clone());
            tasks.spawn(async move {
                let _slot = slot;
                tokio::select! {
                    () = serve(shared, tcp, peer) => {}
                    () = stop.cancelled() => {}
                }
            });
        }
        drop(listener);
        tasks.close();
        let limit = self.shared.config().drain_timeout;
        let drained = tokio::select! {
            drained = tokio::time::timeout(limit, tasks.wait()) => drained.is_ok(),
            () = self.shared.cut.cancelled() => false,
        };
        if !drained {
            stop.cancel();
            tasks.wait().await;
        }
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

async fn serve(shared: Arc<Shared>, mut tcp: TcpStream, peer: SocketAddr) {
    let deadline = shared.config().handshake_timeout;
    let check = |user: &[u8], password: &[u8]| logs_in(&shared, user, password);
    let accepted = match tokio::time::timeout(deadline, socks::accept(&mut tcp, Auth::Password(&check))).await
    {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(err)) => {
            if crate::log::REFUSALS.allow() {
                tracing::info!(%peer, "SOCKS client refused: {}", crate::log::Chain(&err));
            }
            return;
        }
        Err(_) => return tracing::debug!(%peer, "SOCKS client sent no request within {deadline:?}"),
    };
    let Some(name) = accepted.user.clone() else { return };
    let destination = &accepted.request.destination;
    let refuse = |reply: Reply, why: &str| {
        if crate::log::REFUSALS.allow() {
            tracing::info!(client = %Escaped(&name), %peer, %destination, "SOCKS connection refused ({reply:?}): {}", Escaped(why));
        }
    };
    if accepted.request.command != Command::Connect {
        refuse(Reply::CommandNotSupported, "only CONNECT is supported");
        let _ = socks::reply(&mut tcp, Reply::CommandNotSupported, None).await;
        return;
    }
    let target = match destination.to_target() {
        Ok(target) => target,
        Err(err) => {
            refuse(Reply::HostUnreachable, &err.to_string());
            let _ = socks::reply(&mut tcp, Reply::HostUnreachable, None).await;
            return;
        }
    };
    // The visit runs as for a client's stream, on one end of a pipe; its answer comes first.
    let from = Visitor { name: name.clone(), credential: CredentialKind::PerClient };
    let (ours, mut theirs) = tokio::io::duplex(PIPE);
    let target = VisitTarget::Address(target);
    let visit = visits::visit(&shared, &from, &mut theirs, &target, peer);
    // The answer side owns its end: when it gives up (the SOCKS client left), the visit's
    // splice sees the pipe close and ends too.
    let answered = answer(tcp, ours, accepted.early, |reply, why| refuse(reply, why));
    tokio::join!(visit, answered);
}

/// Reads the visit's answer from `pipe`, tells the SOCKS client, and on success splices the
/// two.
async fn answer(
    mut tcp: TcpStream,
    mut pipe: tokio::io::DuplexStream,
    early: Vec<u8>,
    refuse: impl Fn(Reply, &str),
) {
    let reply = crate::session::framed::read_reply(&mut pipe).await;
    let reply = reply.unwrap_or_else(|e| StreamReply::refuse(ReplyStatus::Other(u8::MAX), e.to_string()));
    if reply.status != ReplyStatus::Ok {
        let code = socks::reply_for(reply.status);
        refuse(code, &reply.message);
        let _ = socks::reply(&mut tcp, code, None).await;
        return;
    }
    if socks::reply(&mut tcp, Reply::Succeeded, None).await.is_err() {
        return;
    }
    if !early.is_empty() && pipe.write_all(&early).await.is_err() {
        return;
    }
    if let Err(err) = splice(&mut tcp, &mut pipe).await {
        tracing::debug!("SOCKS connection failed: {err}");
        crate::transport::reset_on_close(&tcp);
    }
}
