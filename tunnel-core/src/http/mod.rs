//! HTTP routing: host/path/method/header matching in Gateway API order, the server's edge that
//! takes requests from visitors and sends each to the client owning its route, and the
//! client's side that answers them from origins (pooled), with fixed answers or redirects.
//!
//! Each request is routed on its own and sent to its client as HTTP/1.1 on a pooled data
//! stream of its route (an `HttpRoute` stream header, then one exchange after another,
//! whichever visitor connection each comes from), so requests of one keep-alive connection may
//! go to different clients. A client whose route has one `http://` origin and nothing to change
//! hands such a stream to a connection to that origin as it is (`direct.rs`); otherwise it
//! answers each request itself. One stream for all of a client's routes (an `Http` stream
//! header), each request naming its route in a header, serves clients older than protocol 8,
//! routes with such a replica, and clients of many routes (`server/http_routes.rs`). A
//! WebSocket upgrade gets a stream of its own (a `Route` stream header) and becomes a byte
//! stream spliced end to end.

mod action;
mod challenge;
mod client_streams;
mod direct;
mod edge;
mod forwarded;
mod handler;
mod headers;
mod index;
pub(crate) mod inflight;
mod matcher;
mod origin;
mod park;
mod path;
mod pool;
mod upstream;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

pub use action::{
    Answer, Backend, HeaderChanges, HttpAction, HttpRoute, Redirect, Service, TlsRoute,
    DEFAULT_ORIGIN_TIMEOUT,
};
pub use challenge::{ChallengeAnswers, HTTP01_PATH};
pub use edge::{EdgeLimits, HttpEdge, RouteSource};
pub use forwarded::set_forwarded;
pub use handler::HttpHandler;
pub use headers::{is_upgrade, request_host, strip_hop_by_hop};
pub use index::{Hit, IndexedRoute, RouteIndex, RouteTarget};
pub use matcher::{prefix_matches, Matcher};
pub use origin::Origins;
pub use path::{normalize_path, routing_key, PathError};

/// The body of a [`text_response`]: the status and its reason, then `detail`, on one line.
fn text_body(status: http::StatusCode, detail: &str) -> String {
    let reason = status.canonical_reason().unwrap_or("");
    if detail.is_empty() {
        format!("{} {reason}\n", status.as_u16())
    } else {
        format!("{} {reason}: {detail}\n", status.as_u16())
    }
}

/// The body of the responses the edge and the client produce: streamed from the other side, or
/// generated.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The error of a [`Body`]: hyper's, or an in-program handler's own.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A short plain-text answer: the status line's reason, then `detail`. Statuses that carry no
/// content (204, 205, 304) get none (hyper leaves a 205's body in, against RFC 9110 15.3.6).
pub fn text_response(status: http::StatusCode, detail: &str) -> http::Response<Body> {
    let contentless = matches!(status.as_u16(), 204 | 205 | 304);
    let body = if contentless { String::new() } else { text_body(status, detail) };
    let mut response =
        http::Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    if !contentless {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    }
    response
}

#[cfg(test)]
mod tests {
    use hyper::body::Body as _;

    use super::*;

    #[test]
    fn a_status_that_carries_no_content_is_answered_without_any() {
        for status in [204, 205, 304] {
            let response = text_response(http::StatusCode::from_u16(status).unwrap(), "detail");
            assert_eq!(response.body().size_hint().exact(), Some(0), "{status}");
            assert!(response.headers().get(http::header::CONTENT_TYPE).is_none(), "{status}");
        }
        let response = text_response(http::StatusCode::NOT_FOUND, "");
        assert_eq!(response.body().size_hint().exact(), Some(14), "404 Not Found\n");
    }
}
