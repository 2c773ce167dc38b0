//! The client's side of HTTP routes: one data stream carries one or more HTTP/1.1 requests
//! from the server's edge; each is answered by the route's action, from an origin reached
//! through a shared connection pool: `http://` origins through [`Upstream`]s (driven by the
//! stream's own task), `https://` ones and upgrades through hyper's pool.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::action::{Answer, HttpAction, Redirect, Service};
use super::headers::{is_upgrade, strip_hop_by_hop, upgrade_asked};
use super::pool::Pool;
use super::upstream::{Upstream, UpstreamBody};
use super::{text_response, Body, HttpHandler};
use crate::mux::MuxStream;
use crate::proto::{RouteId, TargetAddr, ROUTE_HEADER};

/// Longest wait for a TCP connection to an origin.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections kept per origin.
const IDLE_PER_ORIGIN: usize = 32;

/// Connections to origins, reused across requests and streams; clone freely.
#[derive(Clone)]
pub struct Origins {
    /// Idle connections to `http://` origins, by address.
    upstreams: Arc<Pool<TcpStream>>,
    /// `http://` requests that may switch protocols.
    http: Client<HttpConnector, Incoming>,
    /// Built at the first `https://` request: loading the system's roots is not free.
    https: Arc<OnceLock<Client<HttpsConnector<HttpConnector>, Incoming>>>,
    /// Trust toward `https://` origins; `None`: the system's roots.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Origins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origins").finish_non_exhaustive()
    }
}

impl Default for Origins {
    fn default() -> Self {
        Self::new(None)
    }
}

fn pooled<C>(connector: C) -> Client<C, Incoming>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
{
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(IDLE_PER_ORIGIN)
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// TCP toward origins; `enforce_http` refuses any URI but `http://` (the plain pool's).
fn tcp_connector(enforce_http: bool) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.enforce_http(enforce_http);
    connector
}

impl Origins {
    /// Pools toward origins; `https://` origins are verified with `tls` (see
    /// [`crate::tls::origin_config`]), or against the system's roots when `None`.
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        Self {
            upstreams: Arc::new(Pool::new(IDLE_PER_ORIGIN)),
            http: pooled(tcp_connector(true)),
            https: Arc::default(),
            tls,
        }
    }

    fn https(&self) -> Result<&Client<HttpsConnector<HttpConnector>, Incoming>, crate::tls::TlsError> {
        if let Some(client) = self.https.get() {
            return Ok(client);
        }
        let tls = match &self.tls {
            Some(tls) => tls.clone(),
            None => crate::tls::origin_config(None)?,
        };
        let mut tls = (*tls).clone();
        // The connector offers `http/1.1` itself, and refuses a configuration that has any.
        tls.alpn_protocols.clear();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(tcp_connector(false));
        Ok(self.https.get_or_init(|| pooled(connector)))
    }

    /// Answers the requests of one route arriving on `stream` (a data stream of them, opened
    /// with [`crate::proto::StreamHeader::HttpRoute`]) with the route's action as `route` finds
    /// it. When that action is one `http://` origin with nothing to change, the stream is
    /// carried to a connection to that origin as it is, its timeout kept (`direct.rs`), until
    /// either side ends it; `draining` does not end it then: the server stops sending on the
    /// streams of a draining client. Otherwise as [`Self::serve_requests`].
    pub async fn serve_route_stream<F>(&self, stream: MuxStream, route: F, draining: CancellationToken)
    where
        F: Fn() -> Option<Arc<HttpAction>> + Clone + Send + Sync + 'static,
    {
        let action = route();
        let direct = action.as_deref().and_then(|a| Some((a.direct_origin()?.clone(), a.timeout)));
        if let Some((origin, timeout)) = direct {
            return match connect(&origin).await {
                Ok(tcp) => super::direct::carry(stream, tcp, &origin, timeout).await,
                Err(why) => answer_once(stream, failed("http", &origin, &why)).await,
            };
        }
        self.serve_requests(stream, move |_| route(), draining).await;
    }

    /// Answers the requests arriving on `stream` (a data stream of HTTP requests, or the one
    /// request of an upgrade), each with the action of the route `routes` finds for it, given
    /// the route the request names in its [`ROUTE_HEADER`] (if any) when it arrives.
    ///
    /// Once `draining` is cancelled, the request in flight (if any) is answered and the stream
    /// closes; a stream that arrives while draining carries one request and closes.
    pub async fn serve_requests<F>(&self, stream: MuxStream, routes: F, draining: CancellationToken)
    where
        F: Fn(Option<RouteId>) -> Option<Arc<HttpAction>> + Clone + Send + Sync + 'static,
    {
        let origins = self.clone();
        let splices = Splices::default();
        let upgraded = splices.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let (origins, routes, splices) = (origins.clone(), routes.clone(), upgraded.clone());
            async move {
                let route = request
                    .headers_mut()
                    .remove(ROUTE_HEADER)
                    .and_then(|v| v.to_str().ok().and_then(|v| v.parse::<RouteId>().ok()));
                let response = match routes(route) {
                    Some(action) => origins.answer(request, &action, &splices).await,
                    None => text_response(StatusCode::BAD_GATEWAY, "this client no longer serves that route"),
                };
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let mut connection = hyper::server::conn::http1::Builder::new()
            .keep_alive(!draining.is_cancelled())
            // What the edge let through plus what it added: never a 431 from this side.
            .max_headers(crate::http::headers::MAX_FORWARDED_FIELDS)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        // The connection first: a request it has begun to read is answered before the
        // shutdown.
        let served = tokio::select! {
            biased;
            served = &mut connection => served,
            () = draining.cancelled() => {
                std::pin::Pin::new(&mut connection).graceful_shutdown();
                connection.await
            }
        };
        if let Err(err) = served {
            tracing::debug!("HTTP stream ended: {}", crate::log::Chain(&err));
        }
        // An upgraded connection outlives the exchange that switched it: the stream is served
        // until it ends too (and, dropped, aborts it).
        let mut upgraded = std::mem::take(&mut *splices.lock().unwrap_or_else(|e| e.into_inner()));
        while upgraded.join_next().await.is_some() {}
    }

    async fn answer(
        &self,
        request: Request<Incoming>,
        action: &HttpAction,
        splices: &Splices,
    ) -> Response<Body> {
        match &action.answer {
            Answer::Redirect(redirect) => redirect_response(&request, redirect),
            Answer::Proxy(_) => {
                let draw = rand::random_range(0..action.total_weight().max(1));
                match action.pick(draw) {
                    Some(Service::Http(origin)) => self.proxy(request, action, "http", origin, splices).await,
                    Some(Service::Https(origin)) => {
                        self.proxy(request, action, "https", origin, splices).await
                    }
                    Some(Service::Status(code)) => text_response(*code, ""),
                    Some(Service::Handler(handler)) => handle(request, action, handler).await,
                    None => text_response(StatusCode::BAD_GATEWAY, "the route has no backend"),
                }
            }
        }
    }

    async fn proxy(
        &self,
        mut request: Request<Incoming>,
        action: &HttpAction,
        scheme: &str,
        origin: &TargetAddr,
        splices: &Splices,
    ) -> Response<Body> {
        // Origin form, whatever target came; the Host header says which site. Anything else
        // (`OPTIONS *`) is refused: written after the origin's address it would change the
        // port dialed, `127.0.0.1:8080*` reading as the scheme's default port.
        let Some(path) = request.uri().path_and_query().filter(|p| p.as_str().starts_with('/')).cloned()
        else {
            return text_response(StatusCode::BAD_REQUEST, "the request target must begin with /");
        };
        let upgrade = upgrade_asked(&request);
        let visitor_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        if scheme == "http" && upgrade.is_none() {
            if request.uri().scheme().is_some() || request.uri().authority().is_some() {
                *request.uri_mut() = Uri::from(path);
            }
            prepare(&mut request, action);
            return match tokio::time::timeout(action.timeout, self.send_http(request, origin)).await {
                Ok(Ok(response)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    text_response(StatusCode::BAD_GATEWAY, &failed("http", origin, UNASKED_SWITCH))
                }
                Ok(Ok(mut response)) => {
                    strip_hop_by_hop(response.headers_mut(), None);
                    response.map(|body| body.map_err(Into::into).boxed_unsync())
                }
                Ok(Err(why)) => text_response(StatusCode::BAD_GATEWAY, &failed("http", origin, &why)),
                Err(_) => text_response(StatusCode::GATEWAY_TIMEOUT, &too_slow(origin, action.timeout)),
            };
        }
        // From parts: the authority is the origin's address and nothing the visitor wrote.
        let uri = Uri::builder().scheme(scheme).authority(origin.to_string()).path_and_query(path).build();
        match uri {
            Ok(uri) => *request.uri_mut() = uri,
            Err(err) => {
                return text_response(StatusCode::BAD_GATEWAY, &failed(scheme, origin, &err.to_string()))
            }
        }
        prepare(&mut request, action);
        let sent = match scheme {
            "https" => match self.https() {
                Ok(client) => client.request(request),
                Err(err) => {
                    let why = format!("no TLS toward the origin: {}", crate::log::Chain(&err));
                    return text_response(StatusCode::BAD_GATEWAY, &failed(scheme, origin, &why));
                }
            },
            _ => self.http.request(request),
        };
        let mut response = match tokio::time::timeout(action.timeout, sent).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                let why = crate::log::Chain(&err).to_string();
                return text_response(StatusCode::BAD_GATEWAY, &failed(scheme, origin, &why));
            }
            Err(_) => {
                return text_response(StatusCode::GATEWAY_TIMEOUT, &too_slow(origin, action.timeout));
            }
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(visitor_side) = visitor_side else {
                return text_response(StatusCode::BAD_GATEWAY, &failed(scheme, origin, UNASKED_SWITCH));
            };
            let origin_side = hyper::upgrade::on(&mut response);
            let mut running = splices.lock().unwrap_or_else(|e| e.into_inner());
            running.spawn(splice_upgraded(visitor_side, origin_side, None));
        }
        let kept = (response.status() == StatusCode::SWITCHING_PROTOCOLS)
            .then(|| is_upgrade(response.headers()))
            .flatten();
        strip_hop_by_hop(response.headers_mut(), kept);
        response.map(|body| body.map_err(Into::into).boxed_unsync())
    }

    /// Sends `request` to an `http://` origin on an idle connection, or a new one if there is
    /// none or the idle one was closed before the request went out.
    async fn send_http(
        &self,
        mut request: Request<Incoming>,
        origin: &TargetAddr,
    ) -> Result<Response<UpstreamBody<TcpStream>>, String> {
        let (idle, home) = self.upstreams.take(pool_key(origin), ());
        if let Some((upstream, _)) = idle {
            match upstream.send(request, home.clone()).await {
                Ok(response) => return Ok(response),
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(crate::log::Chain(failed.error()).to_string()),
                },
            }
        }
        let tcp = connect(origin).await?;
        let upstream = Upstream::handshake(tcp).await.map_err(|e| crate::log::Chain(&e).to_string())?;
        upstream.send(request, home).await.map_err(|failed| crate::log::Chain(failed.error()).to_string())
    }
}

/// A TCP connection to an `http://` origin, or why not.
async fn connect(origin: &TargetAddr) -> Result<TcpStream, String> {
    let connect = TcpStream::connect((origin.host.as_str(), origin.port));
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(err)) => return Err(format!("cannot connect: {err}")),
        Err(_) => return Err(format!("cannot connect within {CONNECT_TIMEOUT:?}")),
    };
    // Requests are small writes each answered before the next: no Nagle delay.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Why a `101` to a request that asked for no switch is answered 502: passed on, a proxy in
/// front of the edge could take the visitor's connection for switched (RFC 9110 15.2.2: only a
/// request asking for it is answered so).
const UNASKED_SWITCH: &str = "it switched protocols though the request asked for no switch";

/// Why a request got a 502, for the visitor: what went wrong, not where the origin is (an
/// address on the client's network). The client's log has both.
fn failed(scheme: &str, origin: &TargetAddr, why: &str) -> String {
    crate::log::warn_limited!(
        crate::log::VISIT_FAILURES,
        "origin {scheme}://{origin}: {}",
        crate::log::Escaped(why)
    );
    // TLS errors name the names a certificate holds and was checked for: only their kind.
    let why = match scheme {
        "https" if why.contains("certificate") => "its TLS certificate was not accepted",
        "https" => "no TLS connection to it, or no answer",
        _ => why,
    };
    format!("the origin failed: {}", crate::log::Escaped(why))
}

/// Why a request got a 504, for the visitor (logged with the origin, as [`failed`]).
pub(super) fn too_slow(origin: &TargetAddr, timeout: Duration) -> String {
    crate::log::warn_limited!(
        crate::log::VISIT_FAILURES,
        "origin {origin} did not answer within {timeout:?}"
    );
    format!("the origin did not answer within {timeout:?}")
}

/// Answers the request on `stream` 502 with the reason `why`, and closes it.
async fn answer_once(stream: MuxStream, why: String) {
    let service = hyper::service::service_fn(move |_: Request<Incoming>| {
        std::future::ready(Ok::<_, std::convert::Infallible>(text_response(StatusCode::BAD_GATEWAY, &why)))
    });
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(err) = served.await {
        tracing::debug!("route stream ended: {}", crate::log::Chain(&err));
    }
}

/// Answers from a handler in the program.
async fn handle(
    mut request: Request<Incoming>,
    action: &HttpAction,
    handler: &HttpHandler,
) -> Response<Body> {
    prepare(&mut request, action);
    match tokio::time::timeout(action.timeout, handler.call(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => {
            crate::log::warn_limited!(
                crate::log::HANDLER_FAILURES,
                "{handler} failed: {}",
                crate::log::Chain(&*err)
            );
            text_response(StatusCode::INTERNAL_SERVER_ERROR, "the handler failed")
        }
        Err(_) => {
            let why = format!("{handler} did not answer within {:?}", action.timeout);
            text_response(StatusCode::GATEWAY_TIMEOUT, &why)
        }
    }
}

/// Readies a request for its service: the hop-by-hop headers of the tunnel's hop dropped (an
/// upgrade's kept), the route's header changes and Host rewrite applied.
fn prepare(request: &mut Request<Incoming>, action: &HttpAction) {
    let upgrade = upgrade_asked(request);
    let headers = request.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    let changes = &action.request_headers;
    for name in &changes.remove {
        headers.remove(name);
    }
    for (name, value) in &changes.set {
        headers.insert(name, value.clone());
    }
    for (name, value) in &changes.add {
        headers.append(name, value.clone());
    }
    if let Some(host) = &action.host_header {
        headers.insert(header::HOST, host.clone());
    }
}

/// An origin's key in the connection pool: its address, written in one allocation.
fn pool_key(origin: &TargetAddr) -> String {
    use std::fmt::Write as _;
    let mut key = String::with_capacity(origin.host.len() + 8);
    let _ = write!(key, "{origin}");
    key
}

/// Once both sides switched protocols, carries bytes between them; with `idle_timeout`, ends
/// after that long without a byte either way.
/// The upgraded connections of one stream of requests, spliced by tasks of their own (the
/// exchange that switched them ends first), aborted if the stream is dropped.
type Splices = Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>;

pub(super) async fn splice_upgraded(
    a: hyper::upgrade::OnUpgrade,
    b: hyper::upgrade::OnUpgrade,
    idle_timeout: Option<Duration>,
) {
    let (a, b) = match tokio::try_join!(a, b) {
        Ok(both) => both,
        Err(err) => return tracing::debug!("upgrade failed: {}", crate::log::Chain(&err)),
    };
    let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
    let limits = crate::forward::SpliceLimits { idle_timeout };
    if let Err(err) = crate::forward::splice_with(&mut a, &mut b, limits).await {
        tracing::debug!("upgraded connection ended: {err}");
    }
}

/// The answer of a redirect route. What it leaves unset keeps the request's: the scheme the
/// visitor used (the edge's `X-Forwarded-Proto`: a redirect of an HTTPS request to another
/// host stays HTTPS), the host, and, when it sets neither scheme nor port, the port the
/// visitor asked for; a redirect that sets a scheme goes to that scheme's well-known port
/// (Gateway API's `RequestRedirect` rules). A port well known for the scheme is left out.
fn redirect_response<B>(request: &Request<B>, redirect: &Redirect) -> Response<Body> {
    let host = super::request_host(request).unwrap_or_default();
    let forwarded = request.headers().get("x-forwarded-proto").and_then(|v| v.to_str().ok());
    let asked = match forwarded {
        Some(proto) if proto.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    let scheme = redirect.scheme.as_deref().unwrap_or(asked);
    let host = redirect.host.as_deref().unwrap_or(&host);
    let port = match (redirect.port, &redirect.scheme) {
        (Some(port), _) => Some(port),
        (None, Some(_)) => None,
        (None, None) => request_port(request),
    };
    let well_known = |port| matches!((scheme, port), ("http", 80) | ("https", 443));
    let port = port.filter(|port| !well_known(*port)).map(|p| format!(":{p}")).unwrap_or_default();
    // `OPTIONS *` goes to the root: pasted after the port, its `*` would make another one.
    let path =
        request.uri().path_and_query().map(|p| p.as_str()).filter(|p| p.starts_with('/')).unwrap_or("/");
    let location = format!("{scheme}://{host}{port}{path}");
    let status = redirect.status.unwrap_or(StatusCode::FOUND);
    let mut response = text_response(status, &location);
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
            response
        }
        Err(_) => text_response(StatusCode::BAD_REQUEST, "cannot redirect this request"),
    }
}

/// The port a request's authority (or `Host` header) names, if any.
fn request_port<B>(request: &Request<B>) -> Option<u16> {
    match request.uri().authority() {
        Some(authority) => authority.port_u16(),
        None => {
            let host = request.headers().get(header::HOST)?.to_str().ok()?;
            host.parse::<http::uri::Authority>().ok()?.port_u16()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `Location` a redirect answers `host` + `path` with, asked over `proto`.
    fn location(proto: &str, host: &str, path: &str, redirect: Redirect) -> String {
        let request = Request::get(path)
            .header(header::HOST, host)
            .header("x-forwarded-proto", proto)
            .body(())
            .unwrap();
        let response = redirect_response(&request, &redirect);
        response.headers()[header::LOCATION].to_str().unwrap().to_owned()
    }

    fn to(scheme: Option<&str>, host: Option<&str>, port: Option<u16>) -> Redirect {
        let (scheme, host) = (scheme.map(str::to_owned), host.map(str::to_owned));
        Redirect { scheme, host, port, status: None }
    }

    /// Before, an unset scheme was `http` and the request's port was dropped: the common
    /// "a.test to www.a.test" rule moved HTTPS visitors to plain HTTP, and a visitor on port
    /// 8443 to port 80.
    #[test]
    fn a_redirect_keeps_the_scheme_and_port_the_visitor_used_unless_it_sets_them() {
        let www = || to(None, Some("www.a.test"), None);
        assert_eq!(location("https", "a.test", "/login?next=1", www()), "https://www.a.test/login?next=1");
        assert_eq!(location("http", "a.test", "/", www()), "http://www.a.test/");
        assert_eq!(location("https", "a.test:8443", "/x", www()), "https://www.a.test:8443/x");
        assert_eq!(
            location("HTTPS", "a.test:443", "/x", www()),
            "https://www.a.test/x",
            "a well-known port is left out"
        );
        assert_eq!(location("http", "a.test:8080", "/x", to(None, None, None)), "http://a.test:8080/x");
        // A new scheme goes to its own well-known port, unless the redirect names one.
        let upgrade = || to(Some("https"), None, None);
        assert_eq!(location("http", "a.test:8080", "/x", upgrade()), "https://a.test/x");
        assert_eq!(
            location("http", "a.test:8080", "/x", to(Some("https"), None, Some(8443))),
            "https://a.test:8443/x"
        );
        assert_eq!(location("https", "a.test:8443", "/x", to(None, None, Some(443))), "https://a.test/x");
        // Anything but `https` from the edge is plain HTTP.
        assert_eq!(location("gopher", "a.test", "/", www()), "http://www.a.test/");
        // `OPTIONS *` goes to the root: after the port, the `*` made another (`:8443*`).
        assert_eq!(location("https", "a.test:8443", "*", www()), "https://www.a.test:8443/");
    }

    /// Before, a stream of requests was done with as soon as the exchange that switched
    /// protocols was, while the upgraded connection went on in a task of its own: the client's
    /// place for the stream (what holds its descriptors) came back at once, and cutting the
    /// stream's session did not stop it.
    #[tokio::test]
    async fn a_stream_is_served_until_the_connection_it_upgraded_ends() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = listener.local_addr().unwrap();
        // An origin that switches protocols, then echoes.
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(|mut request: Request<Incoming>| async move {
                let upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    if let Ok(upgraded) = upgrade.await {
                        let (mut from, mut to) = tokio::io::split(TokioIo::new(upgraded));
                        let _ = tokio::io::copy(&mut from, &mut to).await;
                    }
                });
                Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header(header::CONNECTION, "upgrade")
                    .header(header::UPGRADE, "websocket")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
            });
            let connection =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
            let _ = connection.with_upgrades().await;
        });
        let (a, b) = tokio::io::duplex(1 << 16);
        let config = crate::mux::MuxConfig::default();
        let (edge, _, edge_driver) = crate::mux::start(a, &config, crate::mux::Mode::Server);
        let (_, mut incoming, client_driver) = crate::mux::start(b, &config, crate::mux::Mode::Client);
        tokio::spawn(edge_driver);
        tokio::spawn(client_driver);
        let route: super::super::HttpRoute = format!("a.test=http://{origin}").parse().unwrap();
        let action = Arc::new(route.action);

        let mut visitor = edge.open().await.unwrap();
        let upgrade = "GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        visitor.write_all(upgrade.as_bytes()).await.unwrap();
        let stream = incoming.next().await.unwrap();
        let draining = CancellationToken::new();
        let served = tokio::spawn(async move {
            Origins::new(None).serve_requests(stream, move |_| Some(action.clone()), draining).await
        });
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(visitor.read_u8().await.unwrap());
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        visitor.write_all(b"ping").await.unwrap();
        let mut echoed = [0; 4];
        visitor.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"ping");
        assert!(!served.is_finished(), "the stream was done with while its connection went on");
        visitor.shutdown().await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), served).await;
        ended.expect("the stream outlived its upgraded connection").unwrap();
    }
}
