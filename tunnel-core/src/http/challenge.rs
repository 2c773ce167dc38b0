//! What the edge answers itself, ahead of every route: the ACME HTTP-01 challenges of orders in
//! progress (RFC 8555, section 8.3). A request for another token, or for a host with no order
//! waiting, goes to the routes as any other (a client may answer its own challenges).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::Body;

/// Where HTTP-01 challenges are asked.
pub const HTTP01_PATH: &str = "/.well-known/acme-challenge/";

/// The answers an ACME client has posted.
pub trait ChallengeAnswers: Send + Sync + 'static {
    /// The key authorization for `token`, if an order for `host` waits for it.
    fn http01(&self, host: &str, token: &str) -> Option<String>;
}

/// The answer to a challenge request for `host` and `path`, if one was posted.
pub(super) fn answer(answers: &dyn ChallengeAnswers, host: &str, path: &str) -> Option<Response<Body>> {
    let token = path.strip_prefix(HTTP01_PATH)?;
    let key_authorization = answers.http01(host, token)?;
    let body = Full::new(Bytes::from(key_authorization)).map_err(|never| match never {}).boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    Some(response)
}
