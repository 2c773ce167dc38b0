//! The server's HTTP edge: serves visitor connections (HTTP/1.1, and HTTP/2 where negotiated),
//! resolves each request's route, and carries it to the owning client over a data stream: an
//! HTTP/1.1 connection to that client, taken from a pool the edge shares across visitor
//! connections, as a reverse proxy keeps upstream connections (a WebSocket upgrade gets a
//! stream of its own).
//!
//! A stream carries one request at a time, whichever visitor connection it comes from (each
//! request says who the visitor is in its `X-Forwarded-*` headers), so idle keep-alive
//! visitors hold no streams: streams count against the session's stream limit, visitor
//! connections only against the edge's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::client_streams::{SessionKey, Streams};
use super::index::{RouteIndex, RouteTarget};
use super::inflight::{InFlight, Kind, Ticket, VisitorConnection};
use super::park::{Activity, ExchangeBody, LargeHeads, Parking, PARK_AFTER};
use super::pool::Pool;
use crate::mux::StreamOpener;
use crate::proto::ROUTE_HEADER;
use crate::source::Full;
use crate::transport::Resettable;

mod answer;
mod resets;

/// Idle streams the edge keeps per client session. Requests beyond that many at once still get
/// streams; those are closed after their exchange. Kept small: idle streams are outside the
/// in-flight count, and each listener's edge has a pool of its own.
const POOLED_STREAMS_PER_SESSION: usize = 64;

/// Streams in use toward one session at once, and of those for one passthrough source, unless
/// [`HttpEdge::with_inflight`] says otherwise: a TCP forward's default caps.
const STREAMS_PER_SESSION: usize = 512;
const STREAMS_PER_SOURCE: usize = 256;

/// The header that tells the client which of its routes a request is for.
const ROUTE: HeaderName = HeaderName::from_static(ROUTE_HEADER);

/// Where the edge finds the routes in force: a snapshot per request.
pub trait RouteSource: Send + Sync + 'static {
    /// The current index.
    fn routes(&self) -> Arc<RouteIndex<RouteTarget>>;
}

/// The least time a request's head gets, however long its connection waited for it.
const MIN_HEAD_TIME: Duration = Duration::from_secs(1);

/// Streams of one HTTP/2 visitor connection at once.
const H2_STREAMS: u32 = 256;

/// The most of an answer the edge takes from the tunnel for one HTTP/2 stream ahead of what it
/// has written to the visitor. With h2's default (400 KiB), a visitor that asked for 256 large
/// answers on one connection and read none made the server hold 92 MiB; the tunnel stream
/// behind each keeps its own window of the rest.
const H2_SEND_BUFFER: usize = 64 * 1024;

/// Limits of the edge's listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EdgeLimits {
    /// Time to receive a request's headers, and an idle keep-alive connection's next request
    /// (default 30 s): a slow sender is cut.
    pub header_timeout: Duration,
    /// Largest request head in bytes (default 64 KiB).
    pub max_header_bytes: usize,
    /// Longest wait for the client's answer to a request (default 120 s; origins time out
    /// on the client side first).
    pub response_timeout: Duration,
    /// Time an upgraded connection (WebSocket) may carry no byte either way before it is
    /// closed (default 10 minutes): a visitor that goes silent gives its place back.
    pub upgrade_idle_timeout: Duration,
    /// Time a visitor may keep a request waiting (take less than 16 KiB of an answer waiting
    /// for it, or send less than that of a body asked for) before, when all of a client session's
    /// places are taken, a newcomer may take the places of its connection's requests and cut
    /// that connection (default 5 s): visitors taking their answers at a trickle cannot hold
    /// every place of a session.
    pub stall_timeout: Duration,
    /// Visitor connections open at once (default 10000); more are closed at accept.
    pub max_connections: usize,
    /// HTTP/1.1 connections that may hold a request head longer than 8 KiB at once (default
    /// 512; `limits.max_http_large_heads` in the server's file). Each holds a read buffer of up to about twice `max_header_bytes` until it is
    /// parked or closed; others wait, reading no more, for a place or the end of their header
    /// time. Heads up to 8 KiB never wait.
    pub max_large_heads: usize,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            response_timeout: Duration::from_secs(120),
            upgrade_idle_timeout: Duration::from_secs(600),
            stall_timeout: Duration::from_secs(5),
            max_connections: 10_000,
            max_large_heads: 512,
        }
    }
}

/// The edge: serves visitor connections.
pub struct HttpEdge {
    routes: Arc<dyn RouteSource>,
    fallback: StatusCode,
    limits: EdgeLimits,
    /// Idle streams to clients, by session.
    streams: Arc<Streams>,
    /// Streams in use toward each session, at most so many per session and per source; shared
    /// by the edges of one server.
    inflight: Arc<InFlight>,
    parked: AtomicUsize,
    /// Places for connections reading long heads.
    large_heads: LargeHeads,
    /// Cancelled by [`HttpEdge::drain`].
    draining: CancellationToken,
    metrics: Option<crate::metrics::Metrics>,
    /// Answered ahead of the routes (ACME HTTP-01).
    challenges: Option<Arc<dyn super::ChallengeAnswers>>,
}

impl std::fmt::Debug for HttpEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEdge").field("fallback", &self.fallback).field("limits", &self.limits).finish()
    }
}

impl HttpEdge {
    /// An edge over these routes; `fallback` answers requests for hosts no route serves.
    pub fn new(routes: Arc<dyn RouteSource>, fallback: StatusCode, limits: EdgeLimits) -> Self {
        Self {
            routes,
            fallback,
            large_heads: LargeHeads::new(limits.max_large_heads),
            streams: Arc::new(Pool::new(POOLED_STREAMS_PER_SESSION)),
            inflight: Arc::new(InFlight::new(STREAMS_PER_SESSION, STREAMS_PER_SOURCE, limits.stall_timeout)),
            limits,
            parked: AtomicUsize::new(0),
            draining: CancellationToken::new(),
            metrics: None,
            challenges: None,
        }
    }

    /// Counts the streams in use toward each client session in `inflight` (see
    /// [`InFlight::new`] for the caps), which the server's other edges share: the HTTP and
    /// HTTPS listeners together stay within one session's caps.
    pub(crate) fn with_inflight(mut self, inflight: Arc<InFlight>) -> Self {
        self.inflight = inflight;
        self
    }

    /// A place for one more lasting stream (a TLS passthrough visitor's) to the session over
    /// `opener`, for a visitor from `ip`: held to the per-source cap, and taken by a newcomer
    /// when the session is full and `ip`'s site holds the most ([`InFlight::admit`]).
    pub(crate) fn admit_lasting(&self, opener: &StreamOpener, ip: std::net::IpAddr) -> Result<Ticket, Full> {
        self.inflight.admit(session_key(opener), ip, Kind::Lasting)
    }

    /// Stops pooling streams over `opener`'s session (it drains): the idle ones close now,
    /// those in use once their exchange is over.
    pub(crate) fn retire(&self, opener: &StreamOpener) {
        self.streams.retire(session_key(opener));
    }

    /// Closes the idle streams to `opener`'s session, and those in use once their exchange is
    /// over: its route table changed, so a route's stream may lead to an origin it no longer
    /// has.
    pub(crate) fn renew(&self, opener: &StreamOpener) {
        self.streams.renew(session_key(opener));
    }

    /// Forgets a session [`Self::retire`]d, once it is gone.
    pub(crate) fn forget(&self, opener: &StreamOpener) {
        self.streams.forget(&session_key(opener));
    }

    /// Answers the ACME HTTP-01 challenges `answers` holds, ahead of the routes.
    pub fn with_challenges(mut self, answers: Arc<dyn super::ChallengeAnswers>) -> Self {
        self.challenges = Some(answers);
        self
    }

    /// Counts every answer in `metrics` (`tunnel_http_requests_total`, by client and status class).
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Its limits.
    pub fn limits(&self) -> &EdgeLimits {
        &self.limits
    }

    /// Stops serving for good: idle connections close now, connections with a request in
    /// flight close after its answer (HTTP/2: `GOAWAY`), and the idle streams to clients are
    /// let go (so that their sessions can end).
    pub fn drain(&self) {
        self.draining.cancel();
        self.streams.close();
    }

    /// Idle keep-alive connections parked now: held as bare sockets until their next request.
    pub fn parked_connections(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    /// Serves one visitor connection until it closes. `scheme` (`http` or `https`) is what
    /// `X-Forwarded-Proto` says; `http2` is whether TLS negotiated HTTP/2 (ALPN `h2`), else the
    /// connection speaks HTTP/1.1, and is parked while idle (see `park.rs`).
    ///
    /// `sni` is the name a TLS visitor asked for: an HTTP/2 request for a host of another
    /// client than that name's is answered 421 (the connection may have been coalesced by a
    /// browser onto a certificate covering both).
    ///
    /// An HTTP/1.1 connection closed while an answer is under way, or after one was cut short
    /// (the client's stream reset, a newcomer taking its place), is reset ([`Resettable`]): a
    /// clean close would pass for the end of an answer delimited by the close.
    pub async fn serve<I>(
        self: Arc<Self>,
        io: I,
        visitor: SocketAddr,
        scheme: &'static str,
        sni: Option<String>,
        http2: bool,
    ) where
        I: AsyncRead + AsyncWrite + Resettable + Send + Unpin + 'static,
    {
        let activity = Arc::new(Activity::default());
        let edge = self.clone();
        let sni: Option<Arc<str>> = sni.map(Arc::from);
        let exchanges = activity.clone();
        let upgraded = Arc::new(Upgraded::default());
        let switched = upgraded.clone();
        let resets = Arc::new(resets::Resets::default());
        let reset_requests = resets.clone();
        // Cut when a newcomer takes the places of requests its visitor keeps waiting.
        let stalled = Arc::new(VisitorConnection::default());
        let this_connection = stalled.clone();
        let service = hyper::service::service_fn(move |request| {
            let body_follows = !hyper::body::Body::is_end_stream(request.body());
            let (edge, sni, exchange) = (edge.clone(), sni.clone(), exchanges.begin(body_follows));
            let (upgraded, this_connection) = (switched.clone(), this_connection.clone());
            // HTTP/2 alone: an HTTP/1.1 visitor cannot reset a request and keep its connection.
            let answering = http2.then(|| reset_requests.taken());
            // A request that may switch protocols leaves hyper holding the connection for the
            // switch, refused or not: such a connection is never parked, so one refused is
            // closed after its answer (it would hold hyper's buffers, and a large head's place,
            // for as long as its visitor kept asking).
            let may_switch = request.extensions().get::<hyper::upgrade::OnUpgrade>().is_some();
            if may_switch {
                exchange.upgrade();
            }
            let head_only = request.method() == http::Method::HEAD;
            async move {
                let mut exchange = exchange;
                exchange.seek();
                let connection = Connection {
                    visitor,
                    scheme,
                    sni: sni.as_deref(),
                    upgraded: &upgraded,
                    places: &this_connection,
                };
                let (mut response, from_a_client) = edge.handle(request, connection).await;
                if let Some(answering) = answering {
                    // Without a server name the connection may ask any client's host: answers
                    // from one (a visitor's own tunnel, quick to answer) would excuse resets
                    // of requests to another. With one, it asks only its owner's (421 else).
                    answering.answered(from_a_client && sni.is_some());
                }
                if may_switch && !http2 && response.status() != StatusCode::SWITCHING_PROTOCOLS {
                    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                // The exchange lasts until hyper has sent the body and drops it.
                let status = response.status();
                let bodiless = head_only
                    || status.is_informational()
                    || status == StatusCode::NO_CONTENT
                    || status == StatusCode::NOT_MODIFIED;
                let length = response
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .or_else(|| hyper::body::Body::size_hint(response.body()).exact());
                let response = response.map(|body| exchange.hold(body, bodiless, length));
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        if http2 {
            // Boxed, as the HTTP/1.1 connections below, so that it does not size every task.
            return Box::pin(self.http2(io, service, visitor, (&activity, &resets, &stalled))).await;
        }
        let mut parking = Parking::new(io, activity.clone(), &self.large_heads);
        // Nothing of hyper's until the first request begins (browsers open spare connections).
        // A request whose first byte is in is served, drain or not.
        let waiting = tokio::time::Instant::now();
        let first = tokio::select! {
            biased;
            first = tokio::time::timeout(self.limits.header_timeout, parking.resume()) => first,
            () = self.draining.cancelled() => return,
        };
        if !matches!(first, Ok(Ok(true))) {
            return;
        }
        // From the wait for a request to its whole head, `header_timeout` in all (a second at
        // least for the head, if the timeout is that long): a visitor sending its first byte
        // late gets no second period. hyper gives every head of one run of requests the same
        // time, so those following the first without a pause get what it got.
        // Capped, since hyper adds it to an `Instant` itself.
        let head_time = |idle: Duration| {
            let timeout = self.limits.header_timeout.min(crate::time::MAX_DURATION);
            timeout.saturating_sub(idle).max(MIN_HEAD_TIME.min(timeout))
        };
        let mut head = head_time(waiting.elapsed());
        loop {
            // Boxed: a parked connection's task keeps only this loop's few words, not the
            // hyper connection's state.
            let http1 = self.http1(parking, service.clone(), visitor, (&activity, &stalled), head);
            let Some(parked) = Box::pin(http1).await else {
                // Upgraded: this task carries the upgraded connection, so that it still counts
                // among the edge's connections and is cut by a drain like them.
                let splice = upgraded.0.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(splice) = splice {
                    splice.await;
                }
                return;
            };
            parking = parked;
            // Parked: the bare socket waits for the next request, within the idle time left.
            let left = self.limits.header_timeout.saturating_sub(PARK_AFTER);
            self.parked.fetch_add(1, Ordering::Relaxed);
            let waiting = tokio::time::Instant::now();
            let resumed = tokio::select! {
                biased;
                resumed = tokio::time::timeout(left, parking.resume()) => Some(resumed),
                () = self.draining.cancelled() => None,
            };
            self.parked.fetch_sub(1, Ordering::Relaxed);
            if !matches!(resumed, Some(Ok(Ok(true)))) {
                return;
            }
            head = head_time(PARK_AFTER + waiting.elapsed());
        }
    }

    /// How HTTP/2 visitor connections are served.
    fn http2_builder(&self) -> hyper::server::conn::http2::Builder<TokioExecutor> {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(H2_STREAMS)
            .max_send_buf_size(H2_SEND_BUFFER)
            .keep_alive_interval(Some(Duration::from_secs(30)));
        builder
    }

    /// One HTTP/2 connection over `io`, until it ends or is cut: its visitor reset too many of
    /// its requests (`resets`), a newcomer took its requests' places (`stalled`), or it stayed
    /// idle (see `Activity::quiet_for`).
    async fn http2<I, S>(
        &self,
        io: I,
        service: S,
        visitor: SocketAddr,
        (activity, resets, stalled): (&Activity, &resets::Resets, &VisitorConnection),
    ) where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        S: hyper::service::HttpService<Incoming, ResBody = ExchangeBody> + Send + 'static,
        S::Future: Send + 'static,
    {
        let builder = self.http2_builder();
        let mut connection = std::pin::pin!(builder.serve_connection(TokioIo::new(io), service));
        // The connection first: a request it has begun to read is answered before the
        // shutdown (GOAWAY) says no more. Idle for the idle time (no request, no answer
        // waiting on the tunnel, none taken by the peer), it is shut down the same way;
        // then, idle as long again (a peer taking nothing of the answers it asked for),
        // it is cut. A connection whose requests' places were taken is cut, drain or not.
        let limit = self.limits.header_timeout;
        let served = tokio::select! {
            biased;
            () = resets.too_many() => return too_many_resets(visitor, resets),
            () = stalled.cut() => return stalled_cut(visitor),
            served = &mut connection => served,
            () = self.draining.cancelled() => {
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    biased;
                    () = stalled.cut() => return stalled_cut(visitor),
                    served = &mut connection => served,
                }
            }
            () = activity.quiet_for(limit) => {
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    biased;
                    () = resets.too_many() => return too_many_resets(visitor, resets),
                    () = stalled.cut() => return stalled_cut(visitor),
                    served = &mut connection => served,
                    () = activity.quiet_for(limit) => {
                        tracing::debug!(%visitor, "HTTP/2 connection cut: its peer takes nothing");
                        return;
                    }
                }
            }
        };
        if let Err(err) = served {
            tracing::debug!(%visitor, "HTTP/2 connection ended: {err}");
        }
    }

    /// One hyper HTTP/1.1 connection over `parking`, until the visitor closes (`None`), the
    /// connection is upgraded (`None`: the splice owns the socket) or it is parked (the socket).
    /// A visitor that takes nothing of an answer for the idle time (see `Activity::quiet_for`),
    /// and so would hold its place toward the client forever, is cut (`None`), as is one whose
    /// request's place a newcomer took (`stalled`). `head`: the
    /// time each request's head has, the header timeout less the connection's wait (fresh, or
    /// parked) for the first of them.
    async fn http1<I, S>(
        &self,
        parking: Parking<I>,
        service: S,
        visitor: SocketAddr,
        (activity, stalled): (&Activity, &VisitorConnection),
        head: Duration,
    ) -> Option<Parking<I>>
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        S: hyper::service::HttpService<Incoming, ResBody = ExchangeBody> + Send + 'static,
        S::Future: Send + 'static,
    {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(head)
            .max_buf_size(self.limits.max_header_bytes.max(8192));
        let mut connection = builder.serve_connection(TokioIo::new(parking), service).with_upgrades();
        // The connection first, so that it has read what the visitor sent (the resumed
        // request's first byte among it) before it is told to stop: the request in flight
        // is answered, then the connection closes.
        let served = tokio::select! {
            biased;
            served = &mut connection => served,
            () = self.draining.cancelled() => {
                std::pin::Pin::new(&mut connection).graceful_shutdown();
                tokio::select! {
                    biased;
                    () = stalled.cut() => return stalled_cut(visitor),
                    served = &mut connection => served,
                }
            }
            () = activity.quiet_for(self.limits.header_timeout) => {
                tracing::debug!(%visitor, "HTTP connection cut: its visitor takes nothing of its answer");
                return None;
            }
            () = stalled.cut() => return stalled_cut(visitor),
        };
        let parts = connection.into_parts()?;
        let mut parking = parts.io.into_inner();
        if !parking.parked() {
            if let Err(err) = served {
                tracing::debug!(%visitor, "HTTP connection ended: {err}");
            }
            return None;
        }
        // Parked: hyper may have stopped inside a pipelined request it had begun to read (and
        // call that an error); its bytes go to the next connection.
        parking.keep_unparsed(parts.read_buf);
        Some(parking)
    }
}

/// The visitor connection a request came on.
#[derive(Clone, Copy)]
struct Connection<'a> {
    visitor: SocketAddr,
    scheme: &'static str,
    sni: Option<&'a str>,
    upgraded: &'a Upgraded,
    /// The connection as the places its requests hold know it: cut when a newcomer takes
    /// them.
    places: &'a Arc<VisitorConnection>,
}

/// The splice of a visitor connection switched to another protocol, for that connection's
/// task to carry once hyper lets go of it.
#[derive(Default)]
struct Upgraded(std::sync::Mutex<Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>>);

fn session_key(opener: &StreamOpener) -> SessionKey {
    opener.connection_id()
}

/// Cuts a visitor connection whose requests' places a newcomer took, its visitor having kept
/// them waiting (`inflight.rs`): dropped, its requests and their streams to the client with it.
fn stalled_cut<T: Default>(visitor: SocketAddr) -> T {
    tracing::debug!(%visitor, "HTTP connection cut: a newcomer took the places of requests its visitor kept waiting");
    T::default()
}

/// Cuts an HTTP/2 connection whose visitor reset too many of the requests it sent
/// (`resets.rs`): dropped, with no GOAWAY to wait on.
fn too_many_resets(visitor: SocketAddr, resets: &resets::Resets) {
    if crate::log::REFUSALS.allow() {
        let reset = resets.reset();
        tracing::warn!(%visitor, "HTTP/2 connection cut: its visitor reset {reset} requests once taken");
    }
}

#[cfg(test)]
#[path = "edge_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "edge_h2_tests.rs"]
mod h2_tests;
