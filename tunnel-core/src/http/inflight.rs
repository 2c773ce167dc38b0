//! How many streams the edge holds toward one client session at once: requests in flight
//! (until their answer's body is over), upgraded connections and TLS passthrough visitors; and
//! how many passthrough visitors one source holds.
//!
//! A session can open only so many streams. Without a cap, visitors that start requests and
//! never take the answers (an HTTP/2 peer that grants no window, a passthrough connection that
//! goes silent) would hold all of them, and the client's forwards, routes and visits would
//! fail for as long as they liked. The caps are those of a TCP forward's visitors
//! (`max_visitors_per_forward`, `max_visitors_per_source`), so the edge leaves a session the
//! same room a flooded forward does. HTTP requests are not held to the per-source cap: the
//! visitors of a website share addresses by design (a NAT, a proxy, a CDN in front of the
//! edge), and the edge takes their connections without one too. Upgraded connections
//! (WebSockets) are: they hold their places for as long as they last, as passthrough visitors
//! do, until they end or idle past `upgrade_idle_timeout`.
//!
//! Within the per-source cap, a few sources could still hold every place with such lasting
//! visitors. So a newcomer to a full session takes the place of a lasting visitor, by the rule
//! a full listener admits connections by ([`Pending`]): the oldest of the site holding the
//! most, if that site would still hold more than the newcomer's.
//!
//! Requests hold their places only as long as their visitors keep up: a newcomer to a full
//! session first cuts the visitor connection holding the most requests whose visitor has been
//! behind for the stall time (taking less than 16 KiB of an answer waiting for it, or sending
//! less than that of a body asked for; see `requests.rs`), and takes their places. Otherwise
//! two HTTP/2 connections taking their answers at a trickle, enough not to be idle, held every
//! place of a session, and every other visitor of that client got 503.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use tokio::time::Instant;

use super::{Body, BoxError};
use crate::source::{Admission, Full, Pending, Place, Places, Refused, Source};
use requests::{OnNotice, Request};

mod requests;

pub(crate) use requests::{RequestTicket, VisitorBody, VisitorConnection};

/// Sessions kept track of before the ones holding nothing are forgotten.
const FIRST_PRUNE: usize = 64;

/// The edge's places, by session.
#[derive(Debug)]
pub(crate) struct InFlight {
    total: usize,
    per_source: usize,
    /// How long a visitor may keep a request waiting before a newcomer may take its place.
    stall: Duration,
    sessions: Mutex<Sessions>,
}

#[derive(Debug)]
struct Sessions {
    places: HashMap<usize, Session>,
    /// Past this many sessions, the idle ones are forgotten.
    prune_at: usize,
}

/// One session's places, and among them those of its lasting visitors, ranked by source for
/// eviction, and its requests'; each lasting slot and each request holds its place, so an
/// eviction frees it at once.
#[derive(Debug)]
struct Session {
    places: Places,
    lasting: Pending<Place>,
    /// Requests in flight (and some gone, pruned as they pile up).
    requests: Vec<Weak<Request>>,
    /// Sites whose connections were cut for keeping requests waiting, a while.
    notice: OnNotice,
}

/// What a visitor holds toward a session while its stream is in use.
#[derive(Debug)]
pub(crate) enum Ticket {
    /// A request's place, given back with its answer; a newcomer may take it, and cut its
    /// connection, when the visitor keeps it waiting.
    Request(RequestTicket),
    /// A lasting visitor's (an upgraded connection, a TLS passthrough visitor): a newcomer may
    /// take it when the session is full, and the visitor is then to be closed.
    Lasting(Admission<Place>),
}

impl Ticket {
    /// The visitor's body of this ticket's request, telling the request when it waits on the
    /// visitor.
    pub(crate) fn watch<B>(&self, body: B) -> VisitorBody<B> {
        let request = match self {
            Self::Request(RequestTicket(request)) => Some(request.clone()),
            Self::Lasting(_) => None,
        };
        VisitorBody::new(body, request)
    }

    /// Resolves once a newcomer took this place (never for a request's: its connection is cut).
    pub(crate) async fn evicted(&self) {
        match self {
            Self::Request(_) => std::future::pending().await,
            Self::Lasting(admission) => admission.evicted().await,
        }
    }

    /// Cancelled once a newcomer takes this place (never for a request's).
    pub(crate) fn eviction(&self) -> tokio_util::sync::CancellationToken {
        match self {
            Self::Request(_) => tokio_util::sync::CancellationToken::new(),
            Self::Lasting(admission) => admission.eviction(),
        }
    }
}

/// Who asks for a place.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind<'a> {
    /// A request, on this visitor connection.
    Request(&'a Arc<VisitorConnection>),
    /// A visitor that may hold its place for as long as it likes (an upgraded connection, a
    /// TLS passthrough visitor), so the per-source cap applies too.
    Lasting,
}

impl InFlight {
    /// At most `total` streams per session, and `per_source` of them for one source where that
    /// cap applies (lasting visitors); a request whose visitor keeps it waiting for `stall`
    /// may give its place to a newcomer.
    pub(crate) fn new(total: usize, per_source: usize, stall: Duration) -> Self {
        let sessions = Sessions { places: HashMap::new(), prune_at: FIRST_PRUNE };
        Self { total, per_source, stall, sessions: Mutex::new(sessions) }
    }

    /// A place for a stream to session `key` for a visitor from `ip`, or which cap it hit.
    ///
    /// When the session's places are all taken, a newcomer first takes the places of the
    /// requests of the visitor connection holding the most requests its visitor has kept
    /// waiting for the stall time or longer (the one kept waiting longest among equals), and
    /// that connection is cut: its visitor moved less than 16 KiB of an answer waiting for it,
    /// or of a body asked for, in that time (`requests.rs`). Failing that, it takes the place of the oldest lasting
    /// visitor of the site (IPv4 address or IPv6 /48) holding the most lasting places, if that
    /// site would still hold more than the newcomer's, as a full edge listener admits
    /// connections ([`Pending`]): a lasting newcomer always may, a request only while lasting
    /// visitors hold more than half of the places. So lasting visitors from a few sources
    /// cannot keep a session's requests, or other sources' lasting visitors, out, and
    /// visitors holding requests they take no part in cannot keep anyone out; a request whose
    /// visitor keeps up is never cut for a newcomer.
    pub(crate) fn admit(&self, key: usize, ip: IpAddr, kind: Kind<'_>) -> Result<Ticket, Full> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let session = self.session(&mut sessions, key);
        match kind {
            Kind::Request(connection) => {
                session.admit_request(ip, self.stall, connection).map(Ticket::Request)
            }
            Kind::Lasting => session.admit_lasting(ip, self.stall).map(Ticket::Lasting),
        }
    }

    /// The place of a request that asked to switch protocols (a lasting visitor's, held to the
    /// per-source cap and cut by no stall) and was answered without a switch, made a request's:
    /// that answer is a plain one, to be taken as it comes. Under the lock, so that no
    /// newcomer takes the place between.
    pub(crate) fn settle(
        &self,
        key: usize,
        ip: IpAddr,
        ticket: Ticket,
        connection: &Arc<VisitorConnection>,
    ) -> Result<Ticket, Full> {
        if let Ticket::Request(_) = ticket {
            return Ok(ticket);
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        drop(ticket);
        let session = self.session(&mut sessions, key);
        session.admit_request(ip, self.stall, connection).map(Ticket::Request)
    }

    /// Session `key`'s places, kept track of from now if they were not.
    fn session<'a>(&self, sessions: &'a mut Sessions, key: usize) -> &'a mut Session {
        if !sessions.places.contains_key(&key) && sessions.places.len() >= sessions.prune_at {
            sessions.places.retain(|_, session| session.places.in_use() > 0);
            sessions.prune_at = (sessions.places.len() * 2).max(FIRST_PRUNE);
        }
        sessions.places.entry(key).or_insert_with(|| Session {
            places: Places::new(self.total, self.per_source),
            lasting: Pending::new(self.total, self.per_source),
            requests: Vec::new(),
            notice: OnNotice::default(),
        })
    }

    #[cfg(test)]
    fn sessions(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).places.len()
    }

    /// Session `key`'s places in use, and its lasting visitors'.
    #[cfg(test)]
    fn counts(&self, key: usize) -> (usize, usize) {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.places.get(&key).map_or((0, 0), |s| (s.places.in_use(), s.lasting.len()))
    }

    /// A request's place, the request on a visitor connection of its own.
    #[cfg(test)]
    fn request(&self, key: usize, ip: IpAddr) -> Result<Ticket, Full> {
        self.admit(key, ip, Kind::Request(&Arc::default()))
    }
}

/// `places` counts every place and `lasting` the lasting visitors' among them, each of whose
/// slots holds its visitor's place. Admissions take both under the sessions' lock; a slot given
/// back or evicted is counted out of `lasting` first and then drops its place, so `lasting`
/// never counts more than `places`.
impl Session {
    /// A request's place: counted in the total only (a website's visitors share addresses).
    /// A request takes a lasting visitor's place only while lasting visitors hold more than
    /// half of the session's: requests (which have no per-source cap) filling a session cannot
    /// then cut its WebSockets one by one.
    fn admit_request(
        &mut self,
        ip: IpAddr,
        stall: Duration,
        connection: &Arc<VisitorConnection>,
    ) -> Result<RequestTicket, Full> {
        let place = match self.places.admit_any_source() {
            Err(Full::Total)
                if self.cut_stalled(stall)
                    || (self.lasting.len() * 2 > self.places.capacity() && self.evict_for(ip)) =>
            {
                self.places.admit_any_source()
            }
            admitted => admitted,
        }?;
        // Those gone are forgotten once they are as many as the places.
        if self.requests.len() >= self.places.capacity().saturating_mul(2) {
            self.requests.retain(|request| request.strong_count() > 0);
        }
        let request = Arc::new(Request::new(place, connection, Source::from(ip).site()));
        self.requests.push(Arc::downgrade(&request));
        Ok(RequestTicket(request))
    }

    fn admit_lasting(&mut self, ip: IpAddr, stall: Duration) -> Result<Admission<Place>, Full> {
        // A source at its own cap is refused before anyone is evicted for it.
        if self.places.source_full(ip) {
            return Err(Full::Source);
        }
        let place = match self.places.admit(ip) {
            Err(Full::Total) if self.cut_stalled(stall) || self.evict_for(ip) => self.places.admit(ip),
            admitted => admitted,
        }?;
        // Both count the same lasting places, so this takes no other's.
        self.lasting.admit_with(ip, place).map_err(|refused| match refused {
            Refused::SourceFull => Full::Source,
            Refused::Full => Full::Total,
        })
    }

    /// Cuts the visitor connection holding the most requests its visitor has kept waiting for
    /// `stall` or longer (among equals, the one kept waiting longest) and gives back the
    /// places of all its requests, for a newcomer (with a rate-limited warning); whether there
    /// was one. Its site is then on notice a while: its requests whose visitor never kept up
    /// count once it is behind at all. Only when the session is full: a scan of its requests.
    fn cut_stalled(&mut self, stall: Duration) -> bool {
        let now = Instant::now();
        self.requests.retain(|request| request.strong_count() > 0);
        let requests: Vec<Arc<Request>> = self.requests.iter().filter_map(Weak::upgrade).collect();
        let mut stalled: HashMap<usize, (usize, Duration)> = HashMap::new();
        for request in &requests {
            let counts = |waited: &Duration| {
                *waited >= stall || (!request.ever_kept_up() && self.notice.on(request.site(), now))
            };
            if let Some(waited) = request.kept_waiting(now).filter(counts) {
                let (count, longest) = stalled.entry(request.connection_id()).or_default();
                *count += 1;
                *longest = (*longest).max(waited);
            }
        }
        let Some((&cut, &(count, longest))) = stalled.iter().max_by_key(|(_, held)| **held) else {
            return false;
        };
        let mut freed = Vec::new();
        for request in requests.iter().filter(|request| request.connection_id() == cut) {
            freed.extend(request.cut());
            // One connection, one visitor address: its site.
            if freed.len() == 1 {
                self.notice.give(request.site(), now);
            }
        }
        if freed.is_empty() {
            return false;
        }
        crate::log::warn_limited!(
            crate::log::EDGE_EVICTIONS,
            requests = freed.len(),
            "a client session's places at the edge were all taken: a visitor connection whose \
             visitor kept {count} of its requests waiting ({longest:?} at most) was cut for a newcomer"
        );
        true
    }

    /// Closes the oldest lasting visitor of the site holding the most, for a newcomer from
    /// `ip`, if that site would still hold more (with a rate-limited warning); whether one was.
    fn evict_for(&self, ip: IpAddr) -> bool {
        let evicted = self.lasting.evict_for(ip);
        if evicted {
            crate::log::warn_limited!(
                crate::log::EDGE_EVICTIONS,
                newcomer = %ip,
                "a client session's places at the edge were all taken: the oldest WebSocket or TLS \
                 passthrough visitor of its busiest site was closed for a newcomer"
            );
        }
        evicted
    }
}

/// A response body that holds its request's place until it is over (or dropped). A lasting
/// visitor's place (an upgrade answered without a switch) may be taken by a newcomer: the body
/// then ends with an error. A request's answer waits on its visitor from the moment its head
/// is handed on, and again each time a piece of it is, until the visitor has taken enough of
/// it ([`requests::PROGRESS`]) or asks for more before more has come.
pub(crate) fn hold<B>(body: B, place: Ticket) -> Body
where
    B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static,
{
    let evicted = match &place {
        Ticket::Request(RequestTicket(request)) => {
            request.answer_handed(0);
            None
        }
        Ticket::Lasting(_) => Some(Box::pin(place.eviction().cancelled_owned())),
    };
    Held { body, evicted, place, handed: 0, rest: Bytes::new() }.boxed_unsync()
}

struct Held<B> {
    body: B,
    evicted: Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
    place: Ticket,
    /// Bytes of the last piece handed on: taken once the visitor's connection asks for more.
    handed: usize,
    /// What is left of a request's piece larger than [`requests::PROGRESS`], handed on in
    /// pieces of that size: hyper asks for the next piece once it has taken the one before,
    /// so a visitor taking that much in the stall time keeps up, however large the pieces
    /// that come through the tunnel.
    rest: Bytes,
}

impl<B> hyper::body::Body for Held<B>
where
    B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(evicted) = this.evicted.as_mut() {
            if evicted.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err("a newcomer took this answer's place".into())));
            }
        }
        let Ticket::Request(RequestTicket(request)) = &this.place else {
            return Pin::new(&mut this.body).poll_frame(cx).map_err(Into::into);
        };
        // Asked for more: the visitor's connection took the piece handed before.
        let taken = std::mem::take(&mut this.handed);
        if this.rest.is_empty() {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(trailers) => {
                        request.answer_handed(taken);
                        return Poll::Ready(Some(Ok(trailers)));
                    }
                },
                polled => {
                    // Nothing more through the tunnel yet, or the answer is over.
                    request.answer_caught_up();
                    return polled.map_err(Into::into);
                }
            }
        }
        this.handed = this.rest.len().min(requests::PROGRESS as usize);
        request.answer_handed(taken);
        Poll::Ready(Some(Ok(Frame::data(this.rest.split_to(this.handed)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.body.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

#[cfg(test)]
mod tests;
