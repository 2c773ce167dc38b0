//! What a server or a client counts, in the Prometheus text format, and the small HTTP endpoint
//! that serves it beside the health probes (`/metrics`, `/ready`, `/healthz`).
//!
//! Every metric is listed, with its labels, in `docs/operations.md`. Counters only grow; the
//! gauges say what is open now. Label values come from peers (client names, which the shared
//! token lets anyone choose, and route ids, which clients derive from their routes), and a
//! series is never removed: so at most [`MAX_CLIENTS`] clients and [`MAX_ROUTES`] routes get
//! series of their own, the rest count under `_other`, and HTTP statuses count by class.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Clients that get series of their own; later ones count as `_other`.
pub const MAX_CLIENTS: usize = 1000;
/// Routes (of all clients) that get series of their own; later ones count as `_other`.
pub const MAX_ROUTES: usize = 10_000;

/// The label values given out so far.
#[derive(Default)]
struct Budget {
    /// Shared with the label sets, so that counting a known client allocates nothing.
    clients: HashSet<Arc<str>>,
    routes: HashSet<(String, String)>,
}

impl Budget {
    fn client(&mut self, client: &str) -> Arc<str> {
        if let Some(known) = self.clients.get(client) {
            return known.clone();
        }
        let label: Arc<str> = Arc::from(if self.clients.len() < MAX_CLIENTS { client } else { OTHER });
        if self.clients.len() < MAX_CLIENTS {
            self.clients.insert(label.clone());
        }
        label
    }

    fn route(&mut self, client: &str, route: &str) -> (String, String) {
        let client = self.client(client).to_string();
        let key = (client, route.to_owned());
        if self.routes.contains(&key) || self.routes.len() < MAX_ROUTES {
            self.routes.insert(key.clone());
            return key;
        }
        (key.0, OTHER.to_owned())
    }
}

const OTHER: &str = "_other";

/// The metrics of one server or client; clones share them.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

struct Inner {
    registry: Registry,
    budget: Mutex<Budget>,
    sessions: Gauge,
    sessions_established: Counter,
    reconnects: Counter,
    websocket_upgrades: Counter,
    visitors: Family<RouteLabels, Gauge>,
    visitors_total: Family<RouteLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    datagrams_dropped: Family<ReasonLabels, Counter>,
    rtt: Histogram,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    client: String,
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    client: String,
    route: String,
    /// `from_visitor` or `to_visitor`.
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    client: Arc<str>,
    /// `1xx` to `5xx`, or `other`.
    class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tunnel");
        let sessions = Gauge::default();
        registry.register("sessions", "Sessions up now", sessions.clone());
        let sessions_established = Counter::default();
        registry.register("sessions_established", "Sessions established", sessions_established.clone());
        let reconnects = Counter::default();
        registry.register("reconnects", "Connection attempts after the first (client)", reconnects.clone());
        let websocket_upgrades = Counter::default();
        registry.register(
            "websocket_upgrades",
            "Sessions established over WebSocket",
            websocket_upgrades.clone(),
        );
        let visitors = Family::default();
        registry.register("visitors", "Visitor connections open now, by client and route", visitors.clone());
        let visitors_total = Family::default();
        registry.register(
            "visitors_carried",
            "Visitor connections carried, by client and route",
            visitors_total.clone(),
        );
        let bytes = Family::default();
        registry.register(
            "bytes",
            "Bytes carried for visitors, by client, route and direction",
            bytes.clone(),
        );
        let http_requests = Family::default();
        registry.register(
            "http_requests",
            "HTTP requests answered by the edge, by client and status class",
            http_requests.clone(),
        );
        let handshake_failures = Family::default();
        registry.register(
            "handshake_failures",
            "Connections that failed to become a session, by reason",
            handshake_failures.clone(),
        );
        let refusals = Family::default();
        registry.register("refusals", "Refused sessions, routes and visitors, by reason", refusals.clone());
        let datagrams_dropped = Family::default();
        registry.register(
            "udp_datagrams_dropped",
            "UDP datagrams dropped by the listening end, by reason",
            datagrams_dropped.clone(),
        );
        let rtt = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register("heartbeat_rtt_seconds", "Heartbeat round trips", rtt.clone());
        Self(Arc::new(Inner {
            registry,
            budget: Mutex::default(),
            sessions,
            sessions_established,
            reconnects,
            websocket_upgrades,
            visitors,
            visitors_total,
            bytes,
            http_requests,
            handshake_failures,
            refusals,
            datagrams_dropped,
            rtt,
        }))
    }

    /// The Prometheus text format (OpenMetrics) of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.0.registry);
        text
    }

    /// A session is up until the returned guard is dropped.
    pub(crate) fn session_up(&self) -> Open {
        self.0.sessions.inc();
        self.0.sessions_established.inc();
        Open(self.0.sessions.clone())
    }

    pub(crate) fn reconnect(&self) {
        self.0.reconnects.inc();
    }

    pub(crate) fn websocket_upgrade(&self) {
        self.0.websocket_upgrades.inc();
    }

    /// A visitor of `route` of `client` is carried until the returned guard is dropped; the
    /// meter counts its bytes as they go.
    pub(crate) fn visitor(&self, client: &str, route: &str) -> (Open, Meter) {
        let (client, route) = self.budget().route(client, route);
        let (client, route) = (client.as_str(), route.as_str());
        let labels = RouteLabels { client: client.to_owned(), route: route.to_owned() };
        self.0.visitors_total.get_or_create(&labels).inc();
        let open = self.0.visitors.get_or_create(&labels).clone();
        open.inc();
        let bytes = |direction| {
            let labels = BytesLabels { client: client.to_owned(), route: route.to_owned(), direction };
            self.0.bytes.get_or_create(&labels).clone()
        };
        (Open(open), Meter { from_visitor: bytes("from_visitor"), to_visitor: bytes("to_visitor") })
    }

    pub(crate) fn http_request(&self, client: &str, code: u16) {
        let class = match code {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "other",
        };
        let client = self.budget().client(client);
        self.0.http_requests.get_or_create(&HttpLabels { client, class }).inc();
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.0.budget.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn handshake_failed(&self, reason: &str) {
        self.0.handshake_failures.get_or_create(&ReasonLabels { reason: reason.to_owned() }).inc();
    }

    pub(crate) fn refused(&self, reason: &str) {
        self.0.refusals.get_or_create(&ReasonLabels { reason: reason.to_owned() }).inc();
    }

    pub(crate) fn datagram_dropped(&self, reason: &'static str) {
        self.0.datagrams_dropped.get_or_create(&ReasonLabels { reason: reason.to_owned() }).inc();
    }

    pub(crate) fn rtt(&self, rtt: Duration) {
        self.0.rtt.observe(rtt.as_secs_f64());
    }
}

/// Something open (a session, a visitor) in a gauge; dropping it closes it there.
#[derive(Debug)]
pub(crate) struct Open(Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A visitor's bytes, counted as they are written, each way.
#[derive(Debug, Clone)]
pub(crate) struct Meter {
    pub(crate) from_visitor: Counter,
    pub(crate) to_visitor: Counter,
}

/// What `/ready` answers: ready or not, and a JSON object saying why.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// 200 if true, else 503.
    pub ready: bool,
    /// The body (`application/json`).
    pub json: String,
}

/// Serves `/metrics`, `/ready` (from `ready`, asked at every probe) and `/healthz` (200 while the
/// process serves) on `listener` until `shutdown`. Anything else is a 404.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    ready: impl Fn() -> Readiness + Send + Sync + 'static,
    shutdown: impl Future<Output = ()>,
) {
    let ready = Arc::new(ready);
    let tasks = tokio_util::task::TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(err) => {
                    tracing::warn!("metrics: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (metrics, ready) = (metrics.clone(), ready.clone());
        let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let response = answer(request.method(), request.uri().path(), &metrics, &*ready);
            async move { Ok::<_, std::convert::Infallible>(response) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
        let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
        tasks.spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!("metrics: connection ended: {err}");
            }
        });
    }
    tasks.close();
}

fn answer(
    method: &http::Method,
    path: &str,
    metrics: &Metrics,
    ready: &dyn Fn() -> Readiness,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, kind, body) = match (method, path) {
        (&http::Method::GET | &http::Method::HEAD, "/metrics") => {
            (200, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.encode())
        }
        (&http::Method::GET | &http::Method::HEAD, "/ready") => {
            let Readiness { ready, json } = ready();
            (if ready { 200 } else { 503 }, "application/json", json)
        }
        (&http::Method::GET | &http::Method::HEAD, "/healthz") => (200, "text/plain", "ok\n".to_owned()),
        (&http::Method::GET | &http::Method::HEAD, _) => {
            (404, "text/plain", "not found: try /metrics, /ready or /healthz\n".to_owned())
        }
        _ => (405, "text/plain", "only GET and HEAD\n".to_owned()),
    };
    let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(kind) = http::HeaderValue::from_str(kind) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, kind);
    }
    response
}

/// A JSON string literal of `text` (quotes and escapes included).
pub(crate) fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_named_with_the_prefix_and_counts_what_it_is_told() {
        let metrics = Metrics::new();
        let session = metrics.session_up();
        let (visitor, meter) = metrics.visitor("a", "r1");
        meter.from_visitor.inc_by(5);
        meter.to_visitor.inc_by(7);
        metrics.http_request("a", 502);
        metrics.handshake_failed("timeout");
        metrics.refused("port taken");
        metrics.reconnect();
        metrics.websocket_upgrade();
        metrics.datagram_dropped("queue full");
        metrics.rtt(Duration::from_millis(3));
        let text = metrics.encode();
        for line in [
            "tunnel_sessions 1",
            "tunnel_sessions_established_total 1",
            "tunnel_visitors{client=\"a\",route=\"r1\"} 1",
            "tunnel_visitors_carried_total{client=\"a\",route=\"r1\"} 1",
            "tunnel_bytes_total{client=\"a\",route=\"r1\",direction=\"from_visitor\"} 5",
            "tunnel_bytes_total{client=\"a\",route=\"r1\",direction=\"to_visitor\"} 7",
            "tunnel_http_requests_total{client=\"a\",class=\"5xx\"} 1",
            "tunnel_handshake_failures_total{reason=\"timeout\"} 1",
            "tunnel_refusals_total{reason=\"port taken\"} 1",
            "tunnel_reconnects_total 1",
            "tunnel_websocket_upgrades_total 1",
            "tunnel_udp_datagrams_dropped_total{reason=\"queue full\"} 1",
            "tunnel_heartbeat_rtt_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        drop((session, visitor));
        let text = metrics.encode();
        assert!(text.lines().any(|l| l == "tunnel_sessions 0"), "{text}");
        assert!(text.lines().any(|l| l == "tunnel_visitors{client=\"a\",route=\"r1\"} 0"), "{text}");
    }

    #[test]
    fn past_the_budget_clients_and_routes_count_as_other() {
        let metrics = Metrics::new();
        for n in 0..MAX_CLIENTS + 5 {
            let _ = metrics.visitor(&format!("c{n}"), "r");
        }
        let text = metrics.encode();
        let own = text.lines().filter(|l| l.starts_with("tunnel_visitors_carried_total{")).count();
        assert_eq!(own, MAX_CLIENTS + 1, "every client beyond the budget shares one series");
        assert!(text.contains("tunnel_visitors_carried_total{client=\"_other\",route=\"r\"} 5"), "{text}");
        let _ = metrics.visitor("c0", "r");
        assert!(
            metrics.encode().contains("tunnel_visitors_carried_total{client=\"c0\",route=\"r\"} 2"),
            "a client within the budget keeps its own series"
        );
        for n in 0..MAX_ROUTES {
            let _ = metrics.visitor("c1", &format!("route{n}"));
        }
        let text = metrics.encode();
        assert!(
            text.contains("tunnel_visitors_carried_total{client=\"c1\",route=\"_other\"}"),
            "routes have a budget"
        );
        metrics.http_request("c1", 999);
        assert!(metrics.encode().contains("tunnel_http_requests_total{client=\"c1\",class=\"other\"} 1"));
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
