//! The server's public HTTP and HTTPS listeners: accept visitors (up to a cap), and hand each
//! connection to the HTTP edge; on HTTPS, first read the ClientHello, pass connections whose
//! name is a TLS route through to its client untouched, and terminate the others.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::Server;
use crate::acme::Acme;
use crate::http::{HttpEdge, RouteSource};
use crate::log::Escaped;
use crate::proto::StreamHeader;
use crate::source::Pending;
use crate::task::OwnedTask;
use crate::transport::Prefixed;

impl Server {
    /// Serves HTTP routes to visitors on `listener` until `shutdown` resolves or the server
    /// drains; then stops accepting, answers the requests in flight and closes each connection
    /// after its answer, within [`super::ServerConfig::drain_timeout`].
    pub async fn run_http(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let edge = self.edge();
        let serving = edge.clone();
        self.accept(listener, shutdown, &edge, move |tcp, visitor| {
            serving.clone().serve(tcp, visitor, "http", None, false)
        })
        .await
    }

    /// Serves HTTPS on `listener`: a connection whose ClientHello names a TLS passthrough
    /// route goes, bytes untouched, to the client owning it; any other is terminated here
    /// (`ServerConfig::http.tls`) and served like HTTP, over HTTP/2 where negotiated.
    pub async fn run_https(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let Some(first) = self.shared.config().http.tls.clone() else {
            return Err(std::io::Error::other("no TLS configuration for the HTTPS listener"));
        };
        let (edge, routes) = (self.edge(), self.shared.http_routes.clone());
        let deadline = edge.limits().header_timeout;
        let serving = edge.clone();
        let (metrics, shared) = (self.shared.metrics.clone(), self.shared.clone());
        if let Some(acme) = &self.shared.acme {
            self.shared.keep_certificates(acme);
        }
        self.accept(listener, shutdown, &edge, move |tcp, visitor| {
            let passthrough = Passthrough { routes: routes.clone(), metrics: metrics.clone() };
            // The certificates in force now: a reload may have replaced them.
            let tls = shared.config().http.tls.clone().unwrap_or_else(|| first.clone());
            let tls = match &shared.acme {
                Some(acme) => acme.edge_tls(&tls),
                None => tls,
            };
            https(tcp, visitor, serving.clone(), passthrough, tls, deadline)
        })
        .await
    }

    fn edge(&self) -> Arc<HttpEdge> {
        let settings = &self.shared.config().http;
        let mut edge =
            HttpEdge::new(self.shared.http_routes.clone(), settings.fallback, settings.limits.clone())
                .with_metrics(self.shared.metrics.clone())
                .with_inflight(self.shared.edge_streams.clone());
        if let Some(acme) = &self.shared.acme {
            edge = edge.with_challenges(acme.clone());
        }
        let edge = Arc::new(edge);
        let mut edges = self.shared.edges.lock().unwrap_or_else(|e| e.into_inner());
        edges.retain(|edge| edge.strong_count() > 0);
        edges.push(Arc::downgrade(&edge));
        edge
    }

    /// Accepts visitors until `shutdown` or the server's drain, at most `max_connections` at
    /// once (more are reset), each served by `serve`; then drains `edge`.
    async fn accept<F, Fut>(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        edge: &HttpEdge,
        serve: F,
    ) -> std::io::Result<()>
    where
        F: Fn(TcpStream, SocketAddr) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let max = edge.limits().max_connections;
        // No cap per source, as visitors behind one NAT or CDN share an address; but when the
        // listener is full, a newcomer takes the place of the oldest connection of the source
        // holding the most (an IPv4 address or IPv6 /48), so one host holding every place locks no one else out.
        let door = Pending::new(max, max);
        // Draining: no new visitors; requests in flight are answered, each connection then
        // closes, within the drain time.
        // Answers leave in small steps, so what a visitor takes is seen as it takes it.
        let serve = |tcp: TcpStream, peer, _keeps_its_place| {
            crate::transport::pace_writes(&tcp);
            serve(tcp, peer)
        };
        self.shared.accept_until("edge", listener, shutdown, door, || edge.drain(), serve).await;
        Ok(())
    }
}

impl super::Shared {
    /// Starts the upkeep of ACME certificates for the routes' names, unless it runs already:
    /// one per server, however many HTTPS listeners, for as long as the server lives.
    fn keep_certificates(self: &Arc<Self>, acme: &Arc<Acme>) {
        let mut upkeep = self.acme_upkeep.lock().unwrap_or_else(|e| e.into_inner());
        if upkeep.is_none() {
            *upkeep = Some(OwnedTask::spawn(upkeep_of(acme.clone(), Arc::downgrade(self))));
        }
    }
}

/// Runs [`Acme::run`] over the routes' names, the names the configured certificates cover
/// left out; a panic in it is logged and it starts again a minute later, so renewals go on.
async fn upkeep_of(acme: Arc<Acme>, shared: Weak<super::Shared>) {
    loop {
        let Some(names) = shared.upgrade().map(|shared| shared.http_routes.names()) else { return };
        let of = shared.clone();
        let covered = move |name: &str| {
            of.upgrade()
                .is_some_and(|s| s.config().http.certified.iter().any(|leaf| crate::tls::covers(leaf, name)))
        };
        match tokio::spawn(acme.clone().run(names, covered)).await {
            Ok(()) => return,
            Err(err) => {
                tracing::error!("ACME certificate upkeep failed ({err}); starting again in a minute");
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    }
}

/// What passing a TLS connection through needs: the routes, and the metrics its bytes go to.
struct Passthrough {
    routes: Arc<super::http_routes::HttpRoutes>,
    metrics: crate::metrics::Metrics,
}

/// One HTTPS visitor: passthrough by SNI, or terminated and served.
async fn https(
    mut tcp: TcpStream,
    visitor: SocketAddr,
    edge: Arc<HttpEdge>,
    passthrough: Passthrough,
    tls: Arc<rustls::ServerConfig>,
    deadline: Duration,
) {
    let Passthrough { routes, metrics } = passthrough;
    let (name, hello) = match crate::tls::read_client_hello(&mut tcp, deadline).await {
        Ok(read) => read,
        Err(err) => return tracing::debug!(%visitor, "no TLS from the visitor: {}", crate::log::Chain(&err)),
    };
    let passthrough = name.as_deref().and_then(|name| {
        let index = routes.routes();
        index.lookup_tls(name).map(|hit| (hit.id, hit.target.openers.pick().cloned(), hit.owner.to_owned()))
    });
    if let Some((route_id, opener, owner)) = passthrough {
        let name = name.unwrap_or_default();
        let unreachable = || tracing::debug!(%visitor, name = %Escaped(&name), "the client of this TLS route is not reachable");
        let Some(opener) = opener else { return unreachable() };
        // Counted with the edge's requests toward the same session.
        let place = match edge.admit_lasting(&opener, visitor.ip()) {
            Ok(place) => place,
            Err(full) => {
                crate::transport::reset_on_close(&tcp);
                return tracing::debug!(%visitor, name = %Escaped(&name), "TLS passthrough refused: too many visitors in flight to its client ({full})");
            }
        };
        let opened = async {
            let mut stream = opener.open().await.ok()?;
            let mut first = StreamHeader::Route { route_id, visitor, local: tcp.local_addr().ok() }.encode();
            first.extend_from_slice(&hello);
            stream.write_all(&first).await.ok().map(|()| stream)
        };
        // A newcomer may take the place while the stream opens: the visitor goes with it.
        let mut stream = tokio::select! {
            opened = opened => match opened {
                Some(stream) => stream,
                None => return unreachable(),
            },
            () = place.evicted() => {
                crate::transport::reset_on_close(&tcp);
                return tracing::debug!(%visitor, name = %Escaped(&name), "TLS passthrough cut before it began: a newcomer took its place");
            }
        };
        let (_open, meter) = metrics.visitor(&owner, &route_id.to_string());
        let limits = crate::forward::SpliceLimits::default();
        tokio::select! {
            spliced = crate::forward::splice_metered(&mut tcp, &mut stream, limits, Some(&meter)) => {
                if let Err(err) = spliced {
                    tracing::debug!(%visitor, name = %Escaped(&name), "TLS passthrough ended: {err}");
                    // Either side cut: the other sees a reset, never a clean end.
                    crate::transport::reset_on_close(&tcp);
                    stream.reset();
                }
            }
            () = place.evicted() => {
                tracing::debug!(%visitor, name = %Escaped(&name), "TLS passthrough cut: a newcomer took its place, its client's being full");
                crate::transport::reset_on_close(&tcp);
                stream.reset();
            }
        }
        return;
    }
    let accepted = tokio_rustls::TlsAcceptor::from(tls).accept(Prefixed::new(hello, tcp));
    match tokio::time::timeout(deadline, accepted).await {
        // A TLS-ALPN-01 validation: the handshake was the answer.
        Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN) => {}
        Ok(Ok(stream)) => {
            let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            edge.serve(stream, visitor, "https", name, http2).await
        }
        Ok(Err(err)) => tracing::debug!(%visitor, "TLS handshake failed: {err}"),
        Err(_) => tracing::debug!(%visitor, "TLS handshake not done within {deadline:?}"),
    }
}
