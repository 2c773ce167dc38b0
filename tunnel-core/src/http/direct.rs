//! A client's stream of requests for one route, carried to the route's `http://` origin byte
//! for byte. The edge has already done all the route asks for (it changes nothing on the way),
//! so the client only connects and splices, as for a TCP forward: no parsing, no second
//! connection pool. The edge sends a stream's next request only once the last answer is read
//! in full, so one origin connection per stream is all the reuse there is to have.
//!
//! What the client still owes is the route's timeout: when the origin sends nothing for that
//! long after the last byte of a request, the visitor gets a 504 written into the stream in the
//! origin's place, and the stream ends. A request is taken to begin with the first byte toward
//! the origin after an answer began (or the first byte of all): the edge sends a request only
//! once the answer before it was read in full. Every later byte toward the origin starts the
//! timeout again, so a body that flows longer than the timeout is not cut here while it flows
//! (the edge's `http_response_timeout` still bounds the whole exchange).
//!
//! The client sees no message boundaries, so bytes toward the origin after its answer began may
//! be the rest of that request's body, not a new request: an origin may answer before reading
//! the whole body (a 1xx, or an early final answer such as a 401 or a redirect). Were the
//! timeout counted from the first of them, a stream the edge then reused would give its next
//! request, a stranger's perhaps, only what was left of it: an early 504 for a request the
//! origin still runs. Counted from the last byte, the next request gets its whole timeout. An
//! origin that answers early and then goes silent for the timeout after the body has its answer
//! taken for done: after a `100 Continue` the 504 is the final answer, as it should be; after
//! the head of a final answer, the 504's bytes take the place of the rest of that answer's
//! body, which then ends short of its length or chunks: a cut the edge sees and the visitor gets
//! (unless the 504 happens to fill exactly what was left). After a whole early answer, the rest
//! of the body leaves the stream waiting on nothing: idle in the edge's pool, it gets a 504 and
//! its end a timeout after that body, which a request sent on it just then (within about a
//! tunnel round trip) takes for its answer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::forward::{splice_with, SpliceLimits};
use crate::mux::MuxStream;
use crate::proto::TargetAddr;

/// Carries `stream` to `origin` (connected as `tcp`) until either ends; a broken side resets
/// the stream, so the edge never takes a cut answer for a whole one.
pub(super) async fn carry(mut stream: MuxStream, tcp: TcpStream, origin: &TargetAddr, timeout: Duration) {
    let mut origin_side = Clocked::new(tcp, timeout, origin);
    match splice_with(&mut stream, &mut origin_side, SpliceLimits::default()).await {
        Ok(stats) => tracing::trace!(%origin, ?stats, "route stream to the origin done"),
        Err(err) => {
            tracing::debug!(%origin, "route stream to the origin failed: {err}");
            stream.reset();
        }
    }
}

/// Where a connection's exchange stands.
#[derive(Debug)]
enum State {
    /// No request waits for an answer: the last one began to be answered (or none came yet).
    Answered,
    /// A request went out and nothing came back since; `last_sent` is when the last byte
    /// toward the origin was written, which the timeout runs from.
    Waiting { last_sent: Instant },
    /// The origin ran out of time: what is left of the 504 read in its place.
    Late(Bytes),
    /// The 504 was read: the origin's side has ended.
    Over,
}

/// An origin connection that answers 504 itself when the origin lets a request wait past the
/// timeout: reads then give the 504 and the end, and writes go nowhere.
pub(super) struct Clocked<T> {
    io: T,
    timeout: Duration,
    state: State,
    deadline: Pin<Box<Sleep>>,
    /// For the 504's reason.
    origin: TargetAddr,
}

impl<T> Clocked<T> {
    pub(super) fn new(io: T, timeout: Duration, origin: &TargetAddr) -> Self {
        Self {
            io,
            timeout,
            state: State::Answered,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            origin: origin.clone(),
        }
    }
}

/// A whole HTTP/1.1 504 answer that closes its connection, as the client's own would read.
fn gateway_timeout(origin: &TargetAddr, timeout: Duration) -> Bytes {
    let body = super::text_body(StatusCode::GATEWAY_TIMEOUT, &super::origin::too_slow(origin, timeout));
    let head = format!(
        "HTTP/1.1 504 Gateway Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    Bytes::from(head + &body)
}

impl<T: AsyncRead + Unpin> AsyncRead for Clocked<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Late(rest) => {
                    let n = rest.len().min(buf.remaining());
                    buf.put_slice(&rest[..n]);
                    rest.advance(n);
                    if rest.is_empty() {
                        this.state = State::Over;
                    }
                    return Poll::Ready(Ok(()));
                }
                // The end of the origin's side.
                State::Over => return Poll::Ready(Ok(())),
                State::Answered | State::Waiting { .. } => {}
            }
            let before = buf.filled().len();
            match Pin::new(&mut this.io).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {
                    if buf.filled().len() > before {
                        this.state = State::Answered;
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {
                    let State::Waiting { last_sent } = this.state else { return Poll::Pending };
                    if this.deadline.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // The deadline is moved only when it runs out, not on every write.
                    let due = crate::time::deadline(last_sent, this.timeout);
                    if due > Instant::now() {
                        this.deadline.as_mut().reset(due);
                        if this.deadline.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                    }
                    this.state = State::Late(gateway_timeout(&this.origin, this.timeout));
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Clocked<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if matches!(this.state, State::Late(_) | State::Over) {
            // The exchange was answered in the origin's place; the rest of the request goes
            // nowhere until the edge closes the stream.
            return Poll::Ready(Ok(data.len()));
        }
        let written = Pin::new(&mut this.io).poll_write(cx, data);
        if let Poll::Ready(Ok(1..)) = written {
            let now = Instant::now();
            if matches!(this.state, State::Answered) {
                this.deadline.as_mut().reset(crate::time::deadline(now, this.timeout));
                // Registers the deadline with this task now, whether or not a read is polled
                // after this write.
                let _ = this.deadline.as_mut().poll(cx);
            }
            this.state = State::Waiting { last_sent: now };
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.state {
            State::Late(_) | State::Over => Poll::Ready(Ok(())),
            State::Answered | State::Waiting { .. } => Pin::new(&mut this.io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.state {
            State::Late(_) | State::Over => Poll::Ready(Ok(())),
            State::Answered | State::Waiting { .. } => Pin::new(&mut this.io).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn clocked() -> (Clocked<DuplexStream>, DuplexStream) {
        let (ours, origin) = tokio::io::duplex(64 * 1024);
        (Clocked::new(ours, TIMEOUT, &"127.0.0.1:8080".parse().unwrap()), origin)
    }

    /// Reads until the end, or `None` if nothing ends it within three timeouts.
    async fn read_to_end(reader: &mut (impl AsyncRead + Unpin)) -> Option<String> {
        let mut got = Vec::new();
        tokio::time::timeout(TIMEOUT * 3, reader.read_to_end(&mut got)).await.ok()?.unwrap();
        Some(String::from_utf8(got).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_the_origin_leaves_waiting_past_the_timeout_is_answered_504_in_its_place() {
        let (mut clocked, mut origin) = clocked();
        clocked.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n").await.unwrap();
        let started = Instant::now();
        let answer = read_to_end(&mut clocked).await.expect("a 504, then the end");
        assert_eq!(started.elapsed(), TIMEOUT, "answered when the timeout ran out, not before");
        assert!(answer.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"), "{answer}");
        assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        assert!(answer.contains(&format!("content-length: {}\r\n", body.len())), "{answer}");
        assert_eq!(body, "504 Gateway Timeout: the origin did not answer within 60s\n");
        // The rest of the request goes nowhere; the origin saw only what came before.
        clocked.write_all(b"more").await.unwrap();
        clocked.shutdown().await.unwrap();
        let mut seen = vec![0u8; 64];
        let n = origin.read(&mut seen).await.unwrap();
        assert_eq!(&seen[..n], b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_request_and_the_idle_time_after_it_never_get_a_504() {
        let (mut clocked, mut origin) = clocked();
        for round in 0..3 {
            clocked.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n").await.unwrap();
            // An answer late in the timeout, its body later still: the head came in time.
            tokio::time::sleep(TIMEOUT - Duration::from_secs(1)).await;
            origin.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n").await.unwrap();
            let mut head = vec![0u8; 38];
            clocked.read_exact(&mut head).await.unwrap();
            tokio::time::sleep(TIMEOUT * 2).await;
            origin.write_all(b"ok").await.unwrap();
            let mut body = [0u8; 2];
            clocked.read_exact(&mut body).await.unwrap();
            assert_eq!(&body, b"ok", "round {round}");
        }
        // Idle between requests for longer than the timeout: nothing to answer.
        let mut byte = [0u8; 1];
        let idle = tokio::time::timeout(TIMEOUT * 3, clocked.read(&mut byte)).await;
        assert!(idle.is_err(), "read {idle:?} from an idle connection");
        // The origin's own end is the end.
        drop(origin);
        assert_eq!(read_to_end(&mut clocked).await.as_deref(), Some(""));
    }

    #[tokio::test(start_paused = true)]
    async fn each_request_gets_the_whole_timeout_from_its_own_start() {
        let (mut clocked, mut origin) = clocked();
        clocked.write_all(b"GET /1 HTTP/1.1\r\n\r\n").await.unwrap();
        origin.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
        let mut head = vec![0u8; 27];
        clocked.read_exact(&mut head).await.unwrap();
        tokio::time::sleep(TIMEOUT - Duration::from_secs(1)).await;
        // A second request well after the first began: its own minute, not what the first left.
        clocked.write_all(b"GET /2 HTTP/1.1\r\n\r\n").await.unwrap();
        let started = Instant::now();
        let answer = read_to_end(&mut clocked).await.unwrap();
        assert_eq!(started.elapsed(), TIMEOUT);
        assert!(answer.starts_with("HTTP/1.1 504 "), "{answer}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_rest_of_a_body_after_its_answer_leaves_the_next_request_its_whole_timeout() {
        // An origin that answers on seeing the head, before it reads the body.
        let (mut clocked, mut origin) = clocked();
        clocked.write_all(b"POST /early HTTP/1.1\r\ncontent-length: 4\r\n\r\n").await.unwrap();
        let answer = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        origin.write_all(answer).await.unwrap();
        clocked.read_exact(&mut vec![0u8; answer.len()]).await.unwrap();
        // The body after the answer: to the client, bytes toward the origin like a request's.
        clocked.write_all(b"body").await.unwrap();
        tokio::time::sleep(TIMEOUT / 2).await;
        // The edge reuses the stream for the next request (another visitor's, perhaps).
        clocked.write_all(b"GET /slow HTTP/1.1\r\n\r\n").await.unwrap();
        let started = Instant::now();
        let answer = read_to_end(&mut clocked).await.unwrap();
        assert_eq!(started.elapsed(), TIMEOUT, "not what the body's bytes left of it");
        assert!(answer.starts_with("HTTP/1.1 504 "), "{answer}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_flowing_longer_than_the_timeout_is_not_cut_and_the_timeout_runs_from_its_end() {
        let (mut clocked, _origin) = clocked();
        clocked.write_all(b"POST /upload HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n").await.unwrap();
        let mut byte = [0u8; 1];
        for chunk in 0..4 {
            // Waiting for the answer while the body flows, a chunk every half timeout.
            let read = tokio::time::timeout(TIMEOUT / 2, clocked.read(&mut byte)).await;
            assert!(read.is_err(), "read {read:?} before chunk {chunk}");
            clocked.write_all(b"1\r\nx\r\n").await.unwrap();
        }
        clocked.write_all(b"0\r\n\r\n").await.unwrap();
        let started = Instant::now();
        let answer = read_to_end(&mut clocked).await.unwrap();
        assert_eq!(started.elapsed(), TIMEOUT);
        assert!(answer.starts_with("HTTP/1.1 504 "), "{answer}");
    }
}
