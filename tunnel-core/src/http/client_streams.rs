//! Data streams from the edge to a client: opened with their stream header, then spoken to as
//! HTTP/1.1, pooled between exchanges. A failure is the answer the visitor gets: 502 with a
//! one-line reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::time::error::Elapsed;

use super::inflight::VisitorBody;
use super::pool::Pool;
use super::upstream::{Upstream, UpstreamBody};
use crate::mux::{MuxStream, StreamOpener};
use crate::proto::{RouteId, StreamHeader};

/// A pooled stream idle at least this long may be closing under the request sent on it (its
/// origin's keep-alive ran out, and the close is on its way through the tunnel): a request that
/// can do nothing twice is kept to be sent again on a new stream.
const RETRY_AFTER_IDLE: Duration = Duration::from_millis(100);

/// A pooled stream idle at least this long is not used for a request that may not be sent
/// twice: origins close idle connections after as little as 2 s (gunicorn; Node, uvicorn and
/// Apache after 5 s), and such a request, met by the close on its way, would get a 502.
const STALE_FOR_ONCE_ONLY: Duration = Duration::from_secs(1);

/// A request's body toward a client: the visitor's, or one of the edge's own (a request sent
/// again has none).
pub(super) type ToClient = Either<VisitorBody, Full<Bytes>>;

/// A session's key in the edge's stream pool and in-flight count: the number of its first
/// connection, which no later connection of this process takes. A stream of a replaced or
/// revoked session never carries a request meant for its successor.
pub(super) type SessionKey = usize;

/// Idle streams to clients, by session and route (`None`: a stream for all of an older
/// client's routes).
pub(super) type Streams = Pool<MuxStream, ToClient, SessionKey, Option<RouteId>>;

/// The client's answer, or hyper's error, or the time it took running out.
pub(super) type Sent = Result<
    Result<Response<UpstreamBody<MuxStream, ToClient, SessionKey, Option<RouteId>>>, hyper::Error>,
    Elapsed,
>;

/// Where an exchange goes: a session's streams of one lane.
pub(super) struct Lane<'a> {
    pub(super) streams: &'a Arc<Streams>,
    pub(super) key: SessionKey,
    pub(super) lane: Option<RouteId>,
    pub(super) opener: &'a StreamOpener,
}

/// Sends `request` to the client on an idle stream of `to`'s lane, or a new one, and waits up
/// to `limit` in all for the answer's head. A stream the client closed meanwhile gives the
/// request back (then it goes on a new one). A stream idle a while may be closing under the
/// request: one that may be repeated (see [`RETRY_AFTER_IDLE`]) is sent again on a new stream
/// if that one ends before any answer; one that may not is not sent on a stream idle
/// [`STALE_FOR_ONCE_ONLY`] or longer. `Err` when no stream could be opened.
pub(super) async fn exchange(
    to: Lane<'_>,
    visitor: SocketAddr,
    mut request: Request<ToClient>,
    limit: Duration,
    host: &str,
) -> Result<Sent, (StatusCode, String)> {
    let deadline = crate::time::deadline(tokio::time::Instant::now(), limit);
    let (idle, home) = to.streams.take(to.key, to.lane);
    if let Some((upstream, idle_for)) = idle {
        let again = if idle_for >= RETRY_AFTER_IDLE { repeatable(&request) } else { None };
        if again.is_some() || idle_for < STALE_FOR_ONCE_ONLY {
            match tokio::time::timeout_at(deadline, upstream.send(request, home.clone())).await {
                Ok(Ok(response)) => return Ok(Ok(Ok(response))),
                Ok(Err(mut failed)) => match (failed.take_message(), again) {
                    (Some(unsent), _) => request = unsent,
                    (None, Some(again)) if closed_under(failed.error()) => request = again,
                    (None, _) => return Ok(Ok(Err(failed.into_error()))),
                },
                Err(elapsed) => return Ok(Err(elapsed)),
            }
        }
    }
    let header = match to.lane {
        Some(route_id) => StreamHeader::HttpRoute { route_id, visitor },
        None => StreamHeader::Http { visitor },
    };
    let upstream = open_stream(to.opener, header, host).await?;
    let sent = tokio::time::timeout_at(deadline, upstream.send(request, home)).await;
    Ok(sent.map(|sent| sent.map_err(TrySendError::into_error)))
}

/// Whether a stream failed by ending (closed, or reset) rather than by what came on it (an
/// answer that did not parse).
fn closed_under(err: &hyper::Error) -> bool {
    use std::io::ErrorKind;
    let reset = std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            )
        });
    err.is_incomplete_message() || reset
}

/// A copy of `request` to send again: only one with no body and a method that changes nothing
/// (RFC 9110 9.2.1), so that sending it twice does nothing twice.
fn repeatable(request: &Request<ToClient>) -> Option<Request<ToClient>> {
    let safe = [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE].contains(request.method());
    if !safe || !request.body().is_end_stream() {
        return None;
    }
    let mut again = Request::new(Either::Right(Full::default()));
    *again.method_mut() = request.method().clone();
    *again.uri_mut() = request.uri().clone();
    *again.version_mut() = request.version();
    *again.headers_mut() = request.headers().clone();
    Some(again)
}

/// Opens a data stream to the client with `header`.
async fn open_raw(
    opener: &StreamOpener,
    header: StreamHeader,
    host: &str,
) -> Result<MuxStream, (StatusCode, String)> {
    let unreachable = || (StatusCode::BAD_GATEWAY, format!("the client serving {host} is not reachable"));
    let mut stream = opener.open().await.map_err(|_| unreachable())?;
    stream.write_all(&header.encode()).await.map_err(|_| unreachable())?;
    Ok(stream)
}

fn no_talk(host: &str, err: hyper::Error) -> (StatusCode, String) {
    (StatusCode::BAD_GATEWAY, format!("cannot talk to the client serving {host}: {err}"))
}

/// Opens a data stream of HTTP requests to the client.
async fn open_stream(
    opener: &StreamOpener,
    header: StreamHeader,
    host: &str,
) -> Result<Upstream<MuxStream, ToClient>, (StatusCode, String)> {
    let stream = open_raw(opener, header, host).await?;
    let (marker, home) = (stream.idle_marker(), stream.home().cloned());
    let upstream = Upstream::handshake(stream).await.map_err(|e| no_talk(host, e))?;
    Ok(upstream.with_idle_marker(marker).with_home(home))
}

/// Opens a data stream for one request that may switch protocols; its connection has a task of
/// its own, which the upgraded bytes outlive.
///
/// The stream closes when `cut` is cancelled before the switch (a newcomer took the visitor's
/// place); once switched, the splice of the two upgraded connections owns it.
pub(super) async fn open_upgrade_stream(
    opener: &StreamOpener,
    header: StreamHeader,
    host: &str,
    cut: tokio_util::sync::CancellationToken,
) -> Result<hyper::client::conn::http1::SendRequest<Incoming>, (StatusCode, String)> {
    let stream = open_raw(opener, header, host).await?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| no_talk(host, e))?;
    tokio::spawn(async move {
        tokio::select! {
            ended = connection.with_upgrades() => if let Err(err) = ended {
                tracing::debug!("stream to the client ended: {err}");
            },
            () = cut.cancelled() => tracing::debug!("stream to the client closed: its visitor's place was taken"),
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::mux::{IncomingStreams, Mode, MuxConfig};

    /// Reads one request head; `None` at the stream's end.
    async fn request_head(stream: &mut MuxStream) -> Option<Vec<u8>> {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.ok()?);
        }
        Some(head)
    }

    /// A client's end, one stream at a time: reads each stream's header, then answers `ok` to
    /// each request, but drops the first stream (a reset) when its `close_on`th request
    /// arrives, as a stream to an origin closing its idle connection under a request ends.
    fn client(mut incoming: IncomingStreams, close_on: usize) {
        tokio::spawn(async move {
            let mut first = true;
            while let Some(mut stream) = incoming.next().await {
                let mut len = [0u8; 2];
                stream.read_exact(&mut len).await.unwrap();
                let mut header = vec![0u8; usize::from(u16::from_be_bytes(len))];
                stream.read_exact(&mut header).await.unwrap();
                let mut seen = 0;
                while request_head(&mut stream).await.is_some() {
                    seen += 1;
                    if first && seen == close_on {
                        break;
                    }
                    stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                }
                first = false;
            }
        });
    }

    /// A session to a [`client`], and the edge's pool of streams to it.
    fn session(close_on: usize) -> (StreamOpener, Arc<Streams>) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (opener, _, driver) = crate::mux::start(a, &MuxConfig::default(), Mode::Server);
        let (_, incoming, peer) = crate::mux::start(b, &MuxConfig::default(), Mode::Client);
        tokio::spawn(driver);
        tokio::spawn(peer);
        client(incoming, close_on);
        (opener, Arc::new(Streams::new(4)))
    }

    /// Sends `request` on route 1's streams: its status, or hyper's error.
    async fn ask(
        opener: &StreamOpener,
        streams: &Arc<Streams>,
        request: Request<ToClient>,
    ) -> Result<StatusCode, String> {
        let to = Lane { streams, key: 1, lane: Some(RouteId(1)), opener };
        let visitor = "127.0.0.1:9".parse().unwrap();
        let sent = exchange(to, visitor, request, Duration::from_secs(5), "a.test").await;
        let response = sent.unwrap().unwrap().map_err(|e| e.to_string())?;
        let status = response.status();
        http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
        Ok(status)
    }

    fn request(method: Method, body: &'static str) -> Request<ToClient> {
        let mut request = Request::new(Either::Right(Full::new(Bytes::from_static(body.as_bytes()))));
        *request.method_mut() = method;
        request.headers_mut().insert(http::header::HOST, http::HeaderValue::from_static("a.test"));
        request
    }

    /// Without it, the edge's pool would take every stream for one driven on the visitor's
    /// thread (see `crate::shards`), and prefer none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_to_a_client_knows_the_thread_that_drives_its_connection() {
        let (opener, _) = session(usize::MAX);
        let shards = crate::shards::Shards::start(1).unwrap();
        let there = shards.in_turn().clone();
        opener.settle_at(Some(&there));
        let header = || StreamHeader::Http { visitor: "127.0.0.1:9".parse().unwrap() };
        let here = open_stream(&opener, header(), "a.test").await.unwrap();
        assert!(
            !here.at_home(std::thread::current().id()),
            "opened on this thread, it is still driven on the shard's"
        );
        let opened_there = there.spawn(async move {
            let upstream = open_stream(&opener, header(), "a.test").await;
            upstream
                .map(|upstream| upstream.at_home(std::thread::current().id()))
                .map_err(|(status, why)| format!("{status}: {why}"))
        });
        assert_eq!(opened_there.await.unwrap(), Ok(true), "used on the shard's thread, it is at home");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_changes_nothing_goes_again_when_a_long_idle_stream_closes_under_it() {
        let (opener, streams) = session(2);
        assert_eq!(ask(&opener, &streams, request(Method::GET, "")).await, Ok(StatusCode::OK));
        tokio::time::advance(RETRY_AFTER_IDLE).await;
        // On the pooled stream, closed under it: then on a new one.
        assert_eq!(ask(&opener, &streams, request(Method::GET, "")).await, Ok(StatusCode::OK));
        assert_eq!(opener.open_streams(), 1, "the closed stream went, its successor is pooled");
        assert_eq!(opener.busy_streams(), 0, "a pooled stream waits for nobody");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_may_not_be_sent_twice_goes_on_a_new_stream_rather_than_a_stale_one() {
        let (opener, streams) = session(2);
        assert_eq!(ask(&opener, &streams, request(Method::POST, "")).await, Ok(StatusCode::OK));
        tokio::time::advance(STALE_FOR_ONCE_ONLY).await;
        // The idle stream would be dropped under it.
        assert_eq!(ask(&opener, &streams, request(Method::POST, "")).await, Ok(StatusCode::OK));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_may_change_something_or_on_a_recently_used_stream_is_not_sent_twice() {
        for (what, method, body, idle) in [
            ("a POST", Method::POST, "", RETRY_AFTER_IDLE),
            ("a GET with a body", Method::GET, "x", RETRY_AFTER_IDLE),
            ("a stream just used", Method::GET, "", RETRY_AFTER_IDLE / 2),
        ] {
            let (opener, streams) = session(2);
            let first = ask(&opener, &streams, request(method.clone(), body)).await;
            assert_eq!(first, Ok(StatusCode::OK), "{what}");
            tokio::time::advance(idle).await;
            let failed = ask(&opener, &streams, request(method, body)).await;
            assert!(failed.is_err(), "{what}: {failed:?}");
        }
    }
}
