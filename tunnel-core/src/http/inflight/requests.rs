//! Requests' places, and how their visitors keep up: a request waits on its visitor while a
//! piece of its answer handed to the visitor's connection is not taken, or while its body is
//! asked for and does not come. A visitor that moves less than [`PROGRESS`] bytes of either in
//! the stall time keeps its request waiting; one catching up (the answer's next piece still to
//! come through the tunnel) does not, however long the origin takes.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::source::{Place, Site};

/// Bytes a visitor moves (of an answer taken, or of a body sent) that count as keeping up:
/// a slow link moves this much in a fraction of a second, a visitor taking a piece now and
/// then to look busy does not.
pub(super) const PROGRESS: u64 = 16 * 1024;

/// How long a site whose connection was cut for keeping requests waiting stays on notice.
pub(super) const NOTICE: Duration = Duration::from_secs(60);

/// Sites on notice at most: past them, the site noticed longest ago is forgotten.
pub(super) const MAX_ON_NOTICE: usize = 1024;

/// Sites (an IPv4 address, an IPv6 /48) one of whose connections was cut for keeping requests
/// waiting, for [`NOTICE`], in one client session: their requests that have never kept up
/// (moved [`PROGRESS`] bytes) may be cut as soon as their visitor is behind. A stall time
/// protects each new request, so without this a visitor opening a new connection of stalled
/// requests at each cut held a full session for most of the time (65% of probes answered 503
/// in a run with two connections of 256 requests).
#[derive(Debug, Default)]
pub(super) struct OnNotice {
    until: std::collections::HashMap<Site, Instant>,
}

impl OnNotice {
    pub(super) fn give(&mut self, site: Site, now: Instant) {
        self.until.retain(|_, until| *until > now);
        if self.until.len() >= MAX_ON_NOTICE && !self.until.contains_key(&site) {
            if let Some(oldest) = self.until.iter().min_by_key(|(_, until)| **until).map(|(site, _)| *site) {
                self.until.remove(&oldest);
            }
        }
        self.until.insert(site, now + NOTICE);
    }

    pub(super) fn on(&self, site: Site, now: Instant) -> bool {
        self.until.get(&site).is_some_and(|until| *until > now)
    }
}

/// A visitor connection as its requests know it: cut when a newcomer takes their places.
#[derive(Debug, Default)]
pub(crate) struct VisitorConnection {
    cut: CancellationToken,
}

impl VisitorConnection {
    /// Resolves once a newcomer took the places of this connection's requests: the connection
    /// is to be closed.
    pub(crate) async fn cut(&self) {
        self.cut.cancelled().await;
    }
}

/// How a visitor keeps up with one direction of a request.
#[derive(Debug, Default)]
struct Progress {
    /// Since when the visitor is behind, in milliseconds after the request's epoch plus one
    /// (0: it is not).
    behind_since: AtomicU64,
    /// Bytes it moved since.
    moved: AtomicU64,
    /// It moved [`PROGRESS`] bytes at once at least once.
    kept_up: std::sync::atomic::AtomicBool,
}

impl Progress {
    /// More waits for the visitor: behind from now, if it was not already.
    fn behind(&self, epoch: Instant) {
        let now = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let _ = self.behind_since.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The visitor moved `bytes`: once they come to [`PROGRESS`], it is no longer behind (and
    /// behind again from the next piece waiting for it).
    fn moved(&self, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let moved = self.moved.fetch_add(bytes, Ordering::Relaxed).saturating_add(bytes);
        if moved >= PROGRESS {
            self.kept_up.store(true, Ordering::Relaxed);
            self.caught_up();
        }
    }

    /// Nothing waits for the visitor.
    fn caught_up(&self) {
        self.behind_since.store(0, Ordering::Relaxed);
        self.moved.store(0, Ordering::Relaxed);
    }

    fn since(&self, epoch: Instant) -> Option<Instant> {
        let since = self.behind_since.load(Ordering::Relaxed);
        (since > 0).then(|| epoch + Duration::from_millis(since - 1))
    }
}

/// A request's place, and how its visitor keeps up with it.
#[derive(Debug)]
pub(crate) struct Request {
    /// `None` once given back, or taken by a newcomer.
    place: Mutex<Option<Place>>,
    connection: Arc<VisitorConnection>,
    site: Site,
    epoch: Instant,
    answer: Progress,
    body: Progress,
}

impl Request {
    pub(super) fn new(place: Place, connection: &Arc<VisitorConnection>, site: Site) -> Self {
        Self {
            place: Mutex::new(Some(place)),
            connection: connection.clone(),
            site,
            epoch: Instant::now(),
            answer: Progress::default(),
            body: Progress::default(),
        }
    }

    /// How long, at `now`, its visitor has been behind; `None` when it is not, or the place is
    /// gone.
    pub(super) fn kept_waiting(&self, now: Instant) -> Option<Duration> {
        let since =
            [self.answer.since(self.epoch), self.body.since(self.epoch)].into_iter().flatten().min()?;
        if self.place.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
            return None;
        }
        Some(now.saturating_duration_since(since))
    }

    /// Its visitor's site.
    pub(super) fn site(&self) -> Site {
        self.site
    }

    /// Whether its visitor ever kept up with it (moved [`PROGRESS`] bytes of either direction).
    pub(super) fn ever_kept_up(&self) -> bool {
        self.answer.kept_up.load(Ordering::Relaxed) || self.body.kept_up.load(Ordering::Relaxed)
    }

    /// Its connection, told apart from every other live one by where it lives.
    pub(super) fn connection_id(&self) -> usize {
        Arc::as_ptr(&self.connection) as usize
    }

    /// Takes its place (for a newcomer) and cuts its connection.
    pub(super) fn cut(&self) -> Option<Place> {
        let place = self.place.lock().unwrap_or_else(|e| e.into_inner()).take();
        // Not for a request over meanwhile.
        if place.is_some() {
            self.connection.cut.cancel();
        }
        place
    }

    /// The answer's head, or a piece of its body, was handed to the visitor's connection; the
    /// piece before it (`taken` bytes) is taken.
    pub(super) fn answer_handed(&self, taken: usize) {
        self.answer.moved(taken);
        self.answer.behind(self.epoch);
    }

    /// The visitor's connection asks for more of the answer, and nothing more has come
    /// through the tunnel yet, or the answer is over: the visitor is not behind.
    pub(super) fn answer_caught_up(&self) {
        self.answer.caught_up();
    }
}

/// A request's hold on its place: given back when this drops (the answer over, or the exchange
/// failed), whoever else still knows the request (its body on its way to the client).
#[derive(Debug)]
pub(crate) struct RequestTicket(pub(super) Arc<Request>);

impl Drop for RequestTicket {
    fn drop(&mut self) {
        let place = self.0.place.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(place);
    }
}

/// A request's body from its visitor: while its reader waits for more and none comes, the
/// request waits on the visitor.
pub(crate) struct VisitorBody<B = Incoming> {
    body: B,
    /// `None`: a lasting visitor's, which waits as it likes.
    request: Option<Arc<Request>>,
}

impl<B> VisitorBody<B> {
    pub(super) fn new(body: B, request: Option<Arc<Request>>) -> Self {
        Self { body, request }
    }
}

/// A body dropped (sent whole, or given up) waits for nothing more from its visitor.
impl<B> Drop for VisitorBody<B> {
    fn drop(&mut self) {
        if let Some(request) = &self.request {
            request.body.caught_up();
        }
    }
}

impl<B: hyper::body::Body<Data = Bytes> + Unpin> hyper::body::Body for VisitorBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Some(request) = &self.request {
            match &polled {
                Poll::Pending => request.body.behind(request.epoch),
                // hyper asks no more of a body that says it is over.
                Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => request.body.caught_up(),
                Poll::Ready(Some(Ok(frame))) => request.body.moved(frame.data_ref().map_or(0, Bytes::len)),
                Poll::Ready(_) => request.body.caught_up(),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
