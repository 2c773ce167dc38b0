//! The server's HTTP edge: serves visitor connections (HTTP/1.1, and HTTP/2 where negotiated),
//! resolves each request's route, and carries it over a new data stream to the owning client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::headers::{is_upgrade, request_host, set_forwarded, strip_hop_by_hop};
use super::index::RouteIndex;
use super::origin::splice_upgraded;
use super::{text_response, Body};
use crate::mux::StreamOpener;
use crate::proto::StreamHeader;

/// Where the edge finds the routes in force: a snapshot per request.
pub trait RouteSource: Send + Sync + 'static {
    /// The current index.
    fn routes(&self) -> Arc<RouteIndex<StreamOpener>>;
}

/// Limits of the edge's listeners.
#[derive(Debug, Clone)]
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
    /// Visitor connections open at once (default 10000); more are closed at accept.
    pub max_connections: usize,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            response_timeout: Duration::from_secs(120),
            max_connections: 10_000,
        }
    }
}

/// The edge: serves visitor connections.
pub struct HttpEdge {
    routes: Arc<dyn RouteSource>,
    fallback: StatusCode,
    limits: EdgeLimits,
}

impl std::fmt::Debug for HttpEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEdge").field("fallback", &self.fallback).field("limits", &self.limits).finish()
    }
}

impl HttpEdge {
    /// An edge over these routes; `fallback` answers requests for hosts no route serves.
    pub fn new(routes: Arc<dyn RouteSource>, fallback: StatusCode, limits: EdgeLimits) -> Self {
        Self { routes, fallback, limits }
    }

    /// Its limits.
    pub fn limits(&self) -> &EdgeLimits {
        &self.limits
    }

    /// Serves one visitor connection until it closes. `scheme` (`http` or `https`) is what
    /// `X-Forwarded-Proto` says.
    pub async fn serve<I>(self: Arc<Self>, io: I, visitor: SocketAddr, scheme: &'static str)
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let edge = self.clone();
        let service = hyper::service::service_fn(move |request| {
            let edge = edge.clone();
            async move { Ok::<_, std::convert::Infallible>(edge.handle(request, visitor, scheme).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .max_buf_size(self.limits.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)));
        if let Err(err) = builder.serve_connection_with_upgrades(TokioIo::new(io), service).await {
            tracing::debug!(%visitor, "HTTP connection ended: {err}");
        }
    }

    async fn handle(
        &self,
        request: Request<Incoming>,
        visitor: SocketAddr,
        scheme: &'static str,
    ) -> Response<Body> {
        let Some(host) = request_host(&request) else {
            return text_response(StatusCode::BAD_REQUEST, "the request names no host");
        };
        let routes = self.routes.routes();
        let hit = routes.lookup(&host, request.uri().path(), request.method().as_str(), request.headers());
        let Some(hit) = hit else {
            return text_response(self.fallback, "");
        };
        let (route_id, opener, owner) = (hit.id, hit.target.clone(), hit.owner.to_owned());
        drop(routes);
        match self.forward(request, route_id, opener, visitor, scheme, &host).await {
            Ok(response) => response,
            Err((status, why)) => {
                tracing::debug!(%visitor, host = %crate::log::Escaped(&host), owner = %crate::log::Escaped(&owner), "{why}");
                text_response(status, &why)
            }
        }
    }

    async fn forward(
        &self,
        mut request: Request<Incoming>,
        route_id: crate::proto::RouteId,
        opener: StreamOpener,
        visitor: SocketAddr,
        scheme: &'static str,
        host: &str,
    ) -> Result<Response<Body>, (StatusCode, String)> {
        let offline = |_| (StatusCode::BAD_GATEWAY, format!("the client serving {host} is not reachable"));
        let upgrade = is_upgrade(request.headers());
        let visitor_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        // HTTP/1.1 to the client, whatever the visitor spoke: an origin-form target and a Host.
        if !request.headers().contains_key(header::HOST) {
            if let Some(authority) =
                request.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                request.headers_mut().insert(header::HOST, authority);
            }
        }
        let path: Uri =
            request.uri().path_and_query().map_or("/", |p| p.as_str()).parse().unwrap_or_default();
        *request.uri_mut() = path;
        *request.version_mut() = Version::HTTP_11;
        strip_hop_by_hop(request.headers_mut(), upgrade);
        set_forwarded(request.headers_mut(), visitor.ip(), scheme, host);

        let mut stream = opener.open().await.map_err(offline)?;
        let header = StreamHeader::Route { route_id, visitor }.encode();
        stream
            .write_all(&header)
            .await
            .map_err(|_| (StatusCode::BAD_GATEWAY, format!("the client serving {host} went away")))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| {
                (StatusCode::BAD_GATEWAY, format!("cannot talk to the client serving {host}: {e}"))
            })?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!("stream to the client ended: {err}");
            }
        });
        let sent = tokio::time::timeout(self.limits.response_timeout, sender.send_request(request)).await;
        let mut response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                return Err((
                    StatusCode::BAD_GATEWAY,
                    format!("the client serving {host} did not answer: {err}"),
                ))
            }
            Err(_) => {
                let why = format!(
                    "the client serving {host} did not answer within {:?}",
                    self.limits.response_timeout
                );
                return Err((StatusCode::GATEWAY_TIMEOUT, why));
            }
        };
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            if let Some(visitor_side) = visitor_side {
                let client_side = hyper::upgrade::on(&mut response);
                tokio::spawn(splice_upgraded(visitor_side, client_side));
            }
        }
        let kept = if switching { is_upgrade(response.headers()) } else { None };
        strip_hop_by_hop(response.headers_mut(), kept);
        Ok(response.map(|body| body.boxed()))
    }
}
