//! SOCKS5 proxies (`-D`): listeners near the client whose connections each name where they
//! go. Every connection travels through the server as a local forward to that address, and the
//! server's answer becomes the SOCKS reply: an IP address inside a network some client routes
//! reaches that client; any other address, and every host name, is a target the server dials
//! if its rules allow; else the matching reply code says why not. UDP ASSOCIATE:
//! `associate.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::locals::accept_loop;
use crate::forward::{splice, SocksSpec, TargetAddr, VisitTarget};
use crate::log::Escaped;
use crate::mux::StreamOpener;
use crate::proto::{ReplyStatus, StreamHeader};
use crate::socks::{self, Auth, Command, Login, Reply};
use crate::transport;

/// Time a SOCKS client has for its greeting and request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the server's answer (it may dial through another client first).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections one proxy serves at once (each a socket, and an association a relay socket
/// more); more are closed at once. Only those carrying a CONNECT or an association's flows
/// hold streams, of which a server takes 64 per session by default.
const MAX_CONNECTIONS: usize = 256;

/// A SOCKS proxy's listener, bound.
#[derive(Debug)]
pub(super) struct BoundSocks {
    pub(super) spec: SocksSpec,
    pub(super) listener: TcpListener,
}

/// Binds every proxy (127.0.0.1 unless the spec names an address); `open`: without a
/// password.
pub(super) async fn bind(
    specs: &[SocksSpec],
    open: bool,
) -> Result<Vec<BoundSocks>, (SocksSpec, std::io::Error)> {
    let mut bound = Vec::with_capacity(specs.len());
    for spec in specs {
        let ip = spec.bind.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
        if open && !ip.is_loopback() {
            tracing::warn!(%spec, "the SOCKS proxy takes no password (socks_user/socks_password): whoever reaches {ip} uses this client's rules through the tunnel");
        }
        // Not `reset_accepted_on_close`, unlike a local forward's listener: the refusal replies
        // of the handshake must leave with a FIN, not be thrown away by a reset.
        let listener = TcpListener::bind((ip, spec.port)).await.map_err(|e| (spec.clone(), e))?;
        bound.push(BoundSocks { spec: spec.clone(), listener });
    }
    Ok(bound)
}

/// Serves SOCKS clients until `stop`, each through a session up when it connected; open
/// connections go on (through a drain) until they end or `cut`.
pub(super) async fn serve(
    bound: BoundSocks,
    login: Option<Login>,
    sessions: Vec<watch::Receiver<Option<StreamOpener>>>,
    stop: CancellationToken,
    cut: CancellationToken,
) {
    let what = format!("SOCKS {}", bound.spec);
    let login = login.map(std::sync::Arc::new);
    let places = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    accept_loop(&bound.listener, &what, &sessions, stop, |tcp, visitor, opener| {
        let (cut, login) = (cut.clone(), login.clone());
        let place = places.clone().try_acquire_owned();
        async move {
            let Ok(_place) = place else {
                if crate::log::SOCKS_REFUSALS.allow() {
                    tracing::warn!(%visitor, "SOCKS connection closed: the proxy serves {MAX_CONNECTIONS} at once");
                }
                return;
            };
            tokio::select! {
                () = cut.cancelled() => {}
                () = visit(tcp, visitor, opener, login.as_deref()) => {}
            }
        }
    })
    .await;
}

async fn visit(mut tcp: TcpStream, visitor: SocketAddr, opener: Option<StreamOpener>, login: Option<&Login>) {
    let _ = transport::configure_tcp(&tcp);
    let check = |user: &[u8], password: &[u8]| login.is_some_and(|login| login.matches(user, password));
    let auth = if login.is_some() { Auth::Password(&check) } else { Auth::None };
    let accepted = match tokio::time::timeout(HANDSHAKE_TIMEOUT, socks::accept(&mut tcp, auth)).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(err)) => {
            return crate::log::info_limited!(crate::log::SOCKS_REFUSALS, %visitor, "SOCKS client refused: {}", crate::log::Chain(&err))
        }
        Err(_) => {
            return crate::log::info_limited!(crate::log::SOCKS_REFUSALS, %visitor, "SOCKS client sent no request within {HANDSHAKE_TIMEOUT:?}")
        }
    };
    let destination = &accepted.request.destination;
    let refuse = |reply, why: &str| {
        crate::log::info_limited!(crate::log::SOCKS_REFUSALS, %visitor, %destination, "SOCKS connection refused ({reply:?}): {}", Escaped(why));
    };
    if accepted.request.command == Command::UdpAssociate {
        let Some(opener) = opener.filter(|o| !o.is_closed()) else {
            refuse(Reply::NetworkUnreachable, "not connected to the server");
            let _ = socks::reply(&mut tcp, Reply::NetworkUnreachable, None).await;
            return;
        };
        let requested = accepted.request.destination.clone();
        return super::associate::associate(tcp, visitor, opener, &requested).await;
    }
    if accepted.request.command != Command::Connect {
        refuse(Reply::CommandNotSupported, &format!("{:?} is not supported", accepted.request.command));
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
    let Some(opener) = opener.filter(|o| !o.is_closed()) else {
        refuse(Reply::NetworkUnreachable, "not connected to the server");
        let _ = socks::reply(&mut tcp, Reply::NetworkUnreachable, None).await;
        return;
    };
    let early = accepted.early;
    match through_server(&mut tcp, visitor, &target, early, opener).await {
        Ok(()) => {}
        Err(Refused { reply, why }) => {
            refuse(reply, &why);
            let _ = socks::reply(&mut tcp, reply, None).await;
        }
    }
}

/// Why a connection was refused: the SOCKS reply and the reason behind it.
struct Refused {
    reply: Reply,
    why: String,
}

/// Opens a stream to `target` through the server; once the server answers, the SOCKS client
/// is told and the two are spliced. `Err` before anything was told to the SOCKS client.
async fn through_server(
    tcp: &mut TcpStream,
    visitor: SocketAddr,
    target: &TargetAddr,
    early: Vec<u8>,
    opener: StreamOpener,
) -> Result<(), Refused> {
    let failure = |why: String| Refused { reply: Reply::GeneralFailure, why };
    let mut stream =
        super::locals::open_in_time(&opener, REPLY_TIMEOUT).await.map_err(|e| failure(e.to_string()))?;
    let mut header =
        StreamHeader::LocalForward { target: VisitTarget::Address(target.clone()), visitor }.encode();
    header.extend_from_slice(&early);
    stream.write_all(&header).await.map_err(|e| failure(e.to_string()))?;
    let answer = tokio::time::timeout(REPLY_TIMEOUT, crate::session::framed::read_reply(&mut stream)).await;
    let answer = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(err)) if err.is_reset() => return Err(failure(super::locals::RESET_BEFORE_ANSWER.to_owned())),
        Ok(Err(err)) => {
            return Err(failure(format!("no answer from the server: {}", crate::log::Chain(&err))))
        }
        Err(_) => {
            let why = format!("the server did not answer within {REPLY_TIMEOUT:?}");
            return Err(Refused { reply: Reply::TtlExpired, why });
        }
    };
    if answer.status != ReplyStatus::Ok {
        return Err(Refused { reply: socks::reply_for(answer.status), why: answer.message });
    }
    // From the success reply until the connection ends in order, a close resets it, even this
    // process's death: the SOCKS client then never takes part of an answer (or none) for all
    // of it. Refusals before it close in order, so their reply is never thrown away.
    transport::reset_on_close(tcp);
    if socks::reply(tcp, Reply::Succeeded, None).await.is_err() {
        return Ok(()); // The SOCKS client left; dropping the stream resets it.
    }
    match splice(tcp, &mut stream).await {
        Ok(_) => transport::close_in_order(tcp),
        Err(err) => {
            tracing::debug!(%visitor, to = %target, "SOCKS connection failed: {err}");
            stream.reset();
        }
    }
    Ok(())
}
