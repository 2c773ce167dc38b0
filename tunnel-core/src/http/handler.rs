//! HTTP routes served inside the program: a hyper service answers the requests, with no origin
//! and no listening port.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{Body, BoxError};

type Call = dyn Fn(Request<Incoming>) -> BoxFuture<'static, Result<Response<Body>, BoxError>> + Send + Sync;

/// A hyper service serving an HTTP route's requests in the program (a [`super::Service`] of
/// its own kind). Each request arrives as the edge sent it: `X-Forwarded-*` set, the route's
/// header changes applied. An upgrade (WebSocket) is the service's to accept with
/// `hyper::upgrade::on`. An error from the service answers 500 and is logged.
///
/// Two handlers are equal when they are clones of one another; the name only appears in
/// messages and in the service's text form (`handler:NAME`).
///
/// ```
/// use tunnel_core::http::HttpHandler;
///
/// let hello = HttpHandler::new("hello", hyper::service::service_fn(|_request| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("hello\n"))))
/// }));
/// assert_eq!(hello.to_string(), "handler:hello");
/// ```
#[derive(Clone)]
pub struct HttpHandler {
    name: Arc<str>,
    call: Arc<Call>,
}

impl HttpHandler {
    /// A handler named `name` (shown in messages) answering with `service`.
    pub fn new<S, B>(name: impl Into<Arc<str>>, service: S) -> Self
    where
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let call = move |request| {
            let response = service.call(request);
            Box::pin(async move {
                let response = response.await.map_err(Into::into)?;
                Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()))
            }) as BoxFuture<'static, _>
        };
        Self { name: name.into(), call: Arc::new(call) }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Answers one request.
    pub fn call(&self, request: Request<Incoming>) -> BoxFuture<'static, Result<Response<Body>, BoxError>> {
        (self.call)(request)
    }
}

impl PartialEq for HttpHandler {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.call, &other.call)
    }
}

impl Eq for HttpHandler {}

impl fmt::Debug for HttpHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpHandler({:?})", self.name)
    }
}

impl fmt::Display for HttpHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handler:{}", self.name)
    }
}
