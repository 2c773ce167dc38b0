//! The public sockets of port routes: one per client name and route, shared by the sessions of
//! that name (its replicas), each visitor going to the least busy of them. The first session
//! asking for a route binds its socket; the last one leaving it closes it. While every member
//! drains, the socket is closed (new visitors are refused) and the port stays the client's; a
//! session joining then opens it again on the same address.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::datagrams;
use super::forwards::{self, Bound, Carrier, Member, Members, Refusal, StreamKind};
use super::registry::SessionId;
use crate::forward::Protocol;
use crate::proto::{RefusalCode, RouteId};
use crate::task::OwnedTask;

/// What a port route asked for; the same route id asking for something else is another route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shape {
    pub(super) protocol: Protocol,
    pub(super) bind: Option<IpAddr>,
    pub(super) port: u16,
    /// A UDP route's flow idle time, as asked (0 for TCP).
    pub(super) idle_secs: u32,
}

/// Every port route's socket, by owner name and route.
#[derive(Debug, Default)]
pub(super) struct PortListeners {
    /// One lock for every client, held across a bind and across closing a socket, so two
    /// replicas asking for one route at once get one socket.
    entries: tokio::sync::Mutex<HashMap<(String, RouteId), Entry>>,
}

#[derive(Debug)]
struct Entry {
    shape: Shape,
    public_addr: SocketAddr,
    carrier: Carrier,
    /// `None` while every member drains.
    listening: Option<Listening>,
}

#[derive(Debug)]
struct Listening {
    stop: CancellationToken,
    task: OwnedTask<()>,
}

impl Listening {
    fn start(bound: Bound, carrier: Carrier, shape: Shape) -> Self {
        let stop = CancellationToken::new();
        let task = match bound {
            Bound::Tcp(listener) => OwnedTask::spawn(forwards::serve(listener, carrier, stop.clone())),
            Bound::Udp(socket) => {
                let idle = Duration::from_secs(shape.idle_secs.into())
                    .clamp(Duration::from_secs(1), crate::udp::MAX_FLOW_IDLE);
                OwnedTask::spawn(datagrams::serve(socket, carrier, idle, stop.clone()))
            }
        };
        Self { stop, task }
    }

    /// Returns once the socket is closed.
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// What a new socket's visitors are carried with (the rest of a [`Carrier`]).
pub(super) struct Carriage {
    pub(super) kind: StreamKind,
    pub(super) client: std::sync::Arc<str>,
    pub(super) metrics: crate::metrics::Metrics,
    pub(super) max_visitors: usize,
    pub(super) max_per_source: usize,
}

impl PortListeners {
    /// Adds `member` to `name`'s route `id`: to its socket when one serves it (asked for in
    /// the same `shape`, and at an address the rules in force still `allow`), else to one
    /// `bind` binds (and claims), carried as `carriage` says. Returns the public address.
    pub(super) async fn join<B>(
        &self,
        (name, id): (&str, RouteId),
        shape: Shape,
        member: Member,
        (carriage, allow): (impl FnOnce() -> Carriage, impl FnOnce(SocketAddr) -> Result<(), Refusal>),
        bind: impl FnOnce() -> B,
    ) -> Result<SocketAddr, Refusal>
    where
        B: Future<Output = Result<(Bound, SocketAddr), Refusal>>,
    {
        let mut entries = self.entries.lock().await;
        if let Some(entry) = entries.get_mut(&(name.to_owned(), id)) {
            if entry.shape != shape {
                let message = format!("another session of this client serves route {id} with other settings");
                return Err((RefusalCode::Invalid, message));
            }
            allow(entry.public_addr)?;
            if entry.listening.is_none() {
                // Every other member drains: listen again where the route was.
                let addr = entry.public_addr;
                let bound = forwards::bind_socket(shape.protocol, addr).await;
                let bound = bound.map_err(|err| forwards::bind_refusal(addr.ip(), addr.port(), &err))?;
                entry.listening = Some(Listening::start(bound, entry.carrier.clone(), shape));
            }
            entry.carrier.members.add(member);
            return Ok(entry.public_addr);
        }
        let (bound, public_addr) = bind().await?;
        let Carriage { kind, client, metrics, max_visitors, max_per_source } = carriage();
        let members = Members::default();
        members.add(member);
        let carrier = Carrier { kind, members, client, metrics, max_visitors, max_per_source };
        let listening = Some(Listening::start(bound, carrier.clone(), shape));
        entries.insert((name.to_owned(), id), Entry { shape, public_addr, carrier, listening });
        Ok(public_addr)
    }

    /// Takes session `session` out of `name`'s route `id`. When it was the last member, the
    /// socket is closed before this returns and the port is returned: the caller gives back
    /// its claim. When the members left all drain, the socket is closed.
    pub(super) async fn leave(&self, name: &str, id: RouteId, session: SessionId) -> Option<u16> {
        let mut entries = self.entries.lock().await;
        let key = (name.to_owned(), id);
        let entry = entries.get_mut(&key)?;
        if entry.carrier.members.remove(session) > 0 {
            if !entry.carrier.members.any_accepting() {
                if let Some(listening) = entry.listening.take() {
                    listening.stop().await;
                }
            }
            return None;
        }
        let entry = entries.remove(&key)?;
        if let Some(listening) = entry.listening {
            listening.stop().await;
        }
        Some(entry.public_addr.port())
    }

    /// A member of `name`'s route `id` drains: once none takes visitors, the socket is closed
    /// (before this returns).
    pub(super) async fn quiet(&self, name: &str, id: RouteId) {
        let mut entries = self.entries.lock().await;
        let Some(entry) = entries.get_mut(&(name.to_owned(), id)) else { return };
        if !entry.carrier.members.any_accepting() {
            if let Some(listening) = entry.listening.take() {
                listening.stop().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::net::TcpStream;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::mux::{idle_opener as opener, StreamOpener};

    const ROUTE: RouteId = RouteId(7);
    const TCP: Shape = Shape { protocol: Protocol::Tcp, bind: None, port: 0, idle_secs: 0 };

    fn member(session: SessionId, opener: &StreamOpener) -> Member {
        Member {
            session,
            opener: opener.clone(),
            owned: CancellationToken::new(),
            accepting: CancellationToken::new(),
            visitors: TaskTracker::new(),
        }
    }

    fn carriage() -> Carriage {
        Carriage {
            kind: StreamKind::Route(ROUTE),
            client: "web".into(),
            metrics: crate::metrics::Metrics::new(),
            max_visitors: 16,
            max_per_source: 16,
        }
    }

    async fn bind_any() -> Result<(Bound, SocketAddr), Refusal> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        Ok((Bound::Tcp(listener), addr))
    }

    fn allowed(_: SocketAddr) -> Result<(), Refusal> {
        Ok(())
    }

    fn narrowed(addr: SocketAddr) -> Result<(), Refusal> {
        Err((RefusalCode::PortNotAllowed, format!("port {} is no longer allowed", addr.port())))
    }

    async fn unbound() -> Result<(Bound, SocketAddr), Refusal> {
        panic!("a replica joining a route's socket bound another");
    }

    async fn refused(addr: SocketAddr) -> bool {
        TcpStream::connect(addr).await.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    }

    #[tokio::test]
    async fn replicas_share_one_socket_which_closes_with_the_last_and_while_all_drain() {
        let ports = PortListeners::default();
        let (one, _k1) = opener();
        let (two, _k2) = opener();
        let first = member(1, &one);
        let addr =
            ports.join(("web", ROUTE), TCP, first.clone(), (carriage, allowed), bind_any).await.unwrap();
        // The second replica joins the socket; another name, or another shape, is another route.
        let second = member(2, &two);
        let joined =
            ports.join(("web", ROUTE), TCP, second.clone(), (carriage, allowed), unbound).await.unwrap();
        assert_eq!(joined, addr);
        let other_shape = Shape { port: addr.port(), ..TCP };
        let joining = ports.join(("web", ROUTE), other_shape, member(3, &two), (carriage, allowed), unbound);
        assert_eq!(joining.await.unwrap_err().0, RefusalCode::Invalid);
        // Rules that no longer allow the socket's port (a reload): no replica joins it.
        let joining = ports.join(("web", ROUTE), TCP, member(3, &two), (carriage, narrowed), unbound);
        assert_eq!(joining.await.unwrap_err().0, RefusalCode::PortNotAllowed);
        let elsewhere =
            ports.join(("api", ROUTE), TCP, member(4, &two), (carriage, allowed), bind_any).await.unwrap();
        assert_ne!(elsewhere, addr);

        // Both drain: the socket closes, the port stays the route's; a replica joining then
        // listens again on the same address.
        first.accepting.cancel();
        ports.quiet("web", ROUTE).await;
        assert!(TcpStream::connect(addr).await.is_ok(), "closed while a replica still takes visitors");
        second.accepting.cancel();
        ports.quiet("web", ROUTE).await;
        assert!(refused(addr).await, "still listening with every replica draining");
        let (three, _k3) = opener();
        let third = member(5, &three);
        let again = ports.join(("web", ROUTE), TCP, third, (carriage, allowed), unbound).await.unwrap();
        assert_eq!(again, addr);
        assert!(TcpStream::connect(addr).await.is_ok(), "not listening again");

        // The last one leaving closes it and hands the port back.
        assert_eq!(ports.leave("web", ROUTE, 1).await, None);
        assert_eq!(ports.leave("web", ROUTE, 2).await, None);
        assert_eq!(ports.leave("web", ROUTE, 5).await, Some(addr.port()));
        assert!(refused(addr).await, "still listening after the last replica left");
        assert_eq!(ports.leave("web", ROUTE, 5).await, None, "left twice");
    }
}
