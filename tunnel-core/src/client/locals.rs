//! Local forwards: listeners near the client whose connections travel through the server to a
//! private service of another client, or to a host the server dials.
//!
//! The listeners live for the whole run of the client, across reconnects: while no session is
//! up, a visitor is refused at once (reset), never left hanging.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ClientError;
use crate::forward::{copy_until_eof, LocalForwardSpec, VisitTarget};
use crate::log::Escaped;
use crate::mux::StreamOpener;
use crate::proto::{ReplyStatus, StreamHeader};
use crate::transport;

/// Time allowed for the server's answer to a local forward.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// A local forward's listener, bound.
#[derive(Debug)]
pub(super) struct BoundLocal {
    pub(super) spec: LocalForwardSpec,
    pub(super) listener: TcpListener,
}

/// Binds every local forward (127.0.0.1 unless the spec names an address).
pub(super) async fn bind(
    specs: &[LocalForwardSpec],
) -> Result<Vec<BoundLocal>, (LocalForwardSpec, std::io::Error)> {
    let mut bound = Vec::with_capacity(specs.len());
    for spec in specs {
        let ip = spec.bind.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
        let listener = TcpListener::bind((ip, spec.port)).await.map_err(|e| (spec.clone(), e))?;
        bound.push(BoundLocal { spec: spec.clone(), listener });
    }
    Ok(bound)
}

/// Where each listener listens, as `active(spec, address)`; an address that cannot be read is
/// the spec's bind error.
pub(super) fn addresses<'a, S, T>(
    listening: impl Iterator<Item = (&'a S, &'a TcpListener)>,
    active: impl Fn(S, SocketAddr) -> T,
) -> Result<Vec<T>, ClientError>
where
    S: Clone + std::fmt::Display + 'a,
{
    listening
        .map(|(spec, listener)| {
            let bound_addr = listener
                .local_addr()
                .map_err(|source| ClientError::Bind { spec: spec.to_string(), source })?;
            Ok(active(spec.clone(), bound_addr))
        })
        .collect()
}

/// Accepts visitors until `stop`; each goes through a session up at that moment (the first
/// server's that is, of `sessions`, one per server), and goes on (through a drain) until it
/// ends or `cut`.
pub(super) async fn serve(
    local: BoundLocal,
    sessions: Vec<watch::Receiver<Option<StreamOpener>>>,
    stop: CancellationToken,
    cut: CancellationToken,
) {
    let BoundLocal { spec, listener } = local;
    let target = spec.target.clone();
    accept_loop(&listener, &spec, &sessions, stop, |tcp, visitor, opener| {
        visit(tcp, visitor, target.clone(), opener, cut.clone())
    })
    .await;
}

/// Accepts connections on `listener` until `stop`, handing each to a task of its own with the
/// opener of the first session up now (`None` while none is).
pub(super) async fn accept_loop<F, Fut>(
    listener: &TcpListener,
    what: &(dyn std::fmt::Display + Sync),
    sessions: &[watch::Receiver<Option<StreamOpener>>],
    stop: CancellationToken,
    visit: F,
) where
    F: Fn(TcpStream, SocketAddr, Option<StreamOpener>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, visitor)) => {
                let opener = sessions.iter().find_map(|s| s.borrow().clone().filter(|o| !o.is_closed()));
                tokio::spawn(visit(tcp, visitor, opener));
            }
            Err(err) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(listener = %what, "accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn visit(
    mut tcp: TcpStream,
    visitor: SocketAddr,
    target: VisitTarget,
    opener: Option<StreamOpener>,
    stop: CancellationToken,
) {
    let _ = transport::configure_tcp(&tcp);
    let outcome = tokio::select! {
        () = stop.cancelled() => Err("client stopping".to_owned()),
        outcome = carry(&mut tcp, visitor, &target, opener) => outcome,
    };
    if let Err(why) = outcome {
        tracing::warn!(%visitor, %target, "local forward failed: {}", Escaped(&why));
        transport::reset_on_close(&tcp);
    }
}

/// Sends the visitor's bytes as soon as the header is written (no round trip before them);
/// waits for the server's answer before any byte flows back.
async fn carry(
    tcp: &mut TcpStream,
    visitor: SocketAddr,
    target: &VisitTarget,
    opener: Option<StreamOpener>,
) -> Result<(), String> {
    let opener = opener.filter(|o| !o.is_closed()).ok_or("not connected to the server")?;
    let stream = opener.open().await.map_err(|e| crate::log::Chain(&e).to_string())?;
    let (mut from_server, mut to_server) = tokio::io::split(stream);
    let header = StreamHeader::LocalForward { target: target.clone(), visitor }.encode();
    to_server.write_all(&header).await.map_err(|e| e.to_string())?;
    let (mut from_visitor, mut to_visitor) = tcp.split();
    let up = async { copy_until_eof(&mut from_visitor, &mut to_server).await };
    let down = async {
        let reply = tokio::time::timeout(REPLY_TIMEOUT, crate::session::framed::read_reply(&mut from_server))
            .await
            .map_err(|_| std::io::Error::other("the server did not answer in time"))?
            .map_err(std::io::Error::other)?;
        if reply.status != ReplyStatus::Ok {
            return Err(std::io::Error::other(format!(
                "refused by the server ({}): {}",
                reply.status, reply.message
            )));
        }
        // The reply was read exactly; buffering starts after it.
        copy_until_eof(&mut from_server, &mut to_visitor).await
    };
    tokio::try_join!(up, down).map(|_| ()).map_err(|e| e.to_string())
}
