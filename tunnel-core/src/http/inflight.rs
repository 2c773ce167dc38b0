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

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};

use super::{Body, BoxError};
use crate::source::{Admission, Full, Pending, Place, Places, Refused};

/// Sessions kept track of before the ones holding nothing are forgotten.
const FIRST_PRUNE: usize = 64;

/// The edge's places, by session.
#[derive(Debug)]
pub(crate) struct InFlight {
    total: usize,
    per_source: usize,
    sessions: Mutex<Sessions>,
}

#[derive(Debug)]
struct Sessions {
    places: HashMap<usize, Session>,
    /// Past this many sessions, the idle ones are forgotten.
    prune_at: usize,
}

/// One session's places, and among them those of its lasting visitors, ranked by source for
/// eviction; each such slot holds its visitor's place, so an eviction frees it at once.
#[derive(Debug)]
struct Session {
    places: Places,
    lasting: Pending<Place>,
}

/// What a visitor holds toward a session while its stream is in use.
#[derive(Debug)]
pub(crate) enum Ticket {
    /// A request's place, given back with its answer.
    Request(#[expect(dead_code, reason = "held for its drop, which gives the place back")] Place),
    /// A lasting visitor's (an upgraded connection, a TLS passthrough visitor): a newcomer may
    /// take it when the session is full, and the visitor is then to be closed.
    Lasting(Admission<Place>),
}

impl Ticket {
    /// Resolves once a newcomer took this place (never for a request's).
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

impl InFlight {
    /// At most `total` streams per session, and `per_source` of them for one source where that
    /// cap applies (lasting visitors).
    pub(crate) fn new(total: usize, per_source: usize) -> Self {
        let sessions = Sessions { places: HashMap::new(), prune_at: FIRST_PRUNE };
        Self { total, per_source, sessions: Mutex::new(sessions) }
    }

    /// A place for a stream to session `key` for a visitor from `ip`, or which cap it hit.
    /// `lasting`: the visitor may hold it for as long as it likes (an upgraded connection, a
    /// TLS passthrough visitor), so the per-source cap applies too.
    ///
    /// When the session's places are all taken, a newcomer takes the place of the oldest
    /// lasting visitor of the site (IPv4 address or IPv6 /48) holding the most lasting places,
    /// if that site would still hold more than the newcomer's, as a full edge listener admits
    /// connections ([`Pending`]): a lasting newcomer always may, a request only while lasting
    /// visitors hold more than half of the places. So lasting visitors from a few sources
    /// cannot keep a session's requests, or other sources' lasting visitors, out; requests in
    /// flight are never cut for a newcomer.
    pub(crate) fn admit(&self, key: usize, ip: IpAddr, lasting: bool) -> Result<Ticket, Full> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if !sessions.places.contains_key(&key) && sessions.places.len() >= sessions.prune_at {
            sessions.places.retain(|_, session| session.places.in_use() > 0);
            sessions.prune_at = (sessions.places.len() * 2).max(FIRST_PRUNE);
        }
        let session = sessions.places.entry(key).or_insert_with(|| Session {
            places: Places::new(self.total, self.per_source),
            lasting: Pending::new(self.total, self.per_source),
        });
        if lasting {
            session.admit_lasting(ip).map(Ticket::Lasting)
        } else {
            session.admit_request(ip).map(Ticket::Request)
        }
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
    fn admit_request(&self, ip: IpAddr) -> Result<Place, Full> {
        let lasting_hold_most = || self.lasting.len() * 2 > self.places.capacity();
        match self.places.admit_any_source() {
            Err(Full::Total) if lasting_hold_most() && self.evict_for(ip) => self.places.admit_any_source(),
            admitted => admitted,
        }
    }

    fn admit_lasting(&self, ip: IpAddr) -> Result<Admission<Place>, Full> {
        // A source at its own cap is refused before anyone is evicted for it.
        if self.places.source_full(ip) {
            return Err(Full::Source);
        }
        let place = match self.places.admit(ip) {
            Err(Full::Total) if self.evict_for(ip) => self.places.admit(ip),
            admitted => admitted,
        }?;
        // Both count the same lasting places, so this takes no other's.
        self.lasting.admit_with(ip, place).map_err(|refused| match refused {
            Refused::SourceFull => Full::Source,
            Refused::Full => Full::Total,
        })
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
/// then ends with an error.
pub(crate) fn hold<B>(body: B, place: Ticket) -> Body
where
    B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static,
{
    let evicted = match &place {
        Ticket::Request(_) => None,
        Ticket::Lasting(_) => Some(Box::pin(place.eviction().cancelled_owned())),
    };
    Held { body, evicted, _place: place }.boxed_unsync()
}

struct Held<B> {
    body: B,
    evicted: Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
    _place: Ticket,
}

impl<B> hyper::body::Body for Held<B>
where
    B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(evicted) = self.evicted.as_mut() {
            if evicted.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err("a newcomer took this answer's place".into())));
            }
        }
        Pin::new(&mut self.body).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn a_session_has_its_caps_and_a_body_holds_its_place_until_dropped() {
        let inflight = InFlight::new(3, 2);
        let (a1, _a2) = (inflight.admit(1, A, true).unwrap(), inflight.admit(1, A, true).unwrap());
        assert_eq!(inflight.admit(1, A, true).unwrap_err(), Full::Source);
        let _b1 = inflight.admit(1, B, true).unwrap();
        assert_eq!(inflight.admit(1, B, true).unwrap_err(), Full::Total);
        // Another session has places of its own.
        let _other = inflight.admit(2, A, true).unwrap();

        let body = hold(super::super::text_response(http::StatusCode::OK, "x").into_body(), a1);
        assert_eq!(inflight.admit(1, A, true).unwrap_err(), Full::Source, "the body holds the place");
        drop(body);
        let again = inflight.admit(1, A, true).expect("a dropped body gives its place back");
        // HTTP requests are held to the session's cap only.
        drop(again);
        let (_a3, _a4) = (inflight.admit(3, A, false).unwrap(), inflight.admit(3, A, false).unwrap());
        let _a5 = inflight.admit(3, A, false).unwrap();
        assert_eq!(inflight.admit(3, A, false).unwrap_err(), Full::Total);
        // Nor do they use up the room of a source under the per-source cap.
        let (_h1, _h2) = (inflight.admit(4, A, false).unwrap(), inflight.admit(4, A, false).unwrap());
        assert!(inflight.admit(4, A, true).is_ok());
    }

    const C: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 3));
    const D: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 4));

    /// Resolved already (a place taken by a newcomer), without waiting.
    fn was_evicted(ticket: &Ticket) -> bool {
        futures::FutureExt::now_or_never(ticket.evicted()).is_some()
    }

    #[tokio::test]
    async fn a_newcomer_to_a_full_session_takes_a_lasting_place_of_the_largest_source_never_a_request() {
        let inflight = InFlight::new(4, 2);
        let a = [inflight.admit(1, A, true).unwrap(), inflight.admit(1, A, true).unwrap()];
        let b = inflight.admit(1, B, true).unwrap();
        let request = inflight.admit(1, C, false).unwrap();

        // A request from a source holding no lasting place: A's oldest gives way.
        let from_c = inflight.admit(1, C, false).expect("a request into a full session");
        assert!(was_evicted(&a[0]) && !was_evicted(&a[1]) && !was_evicted(&b));
        // Now A and B hold one lasting place each, C none: nobody holds more than a newcomer
        // would, and requests are never cut.
        assert_eq!(inflight.admit(1, C, false).unwrap_err(), Full::Total);
        assert_eq!(inflight.admit(1, C, true).unwrap_err(), Full::Total);
        assert!(!was_evicted(&a[1]) && !was_evicted(&b) && !was_evicted(&request));
        drop((request, from_c));

        // A lasting newcomer from a source holding none takes the place of one holding two;
        // one from a source holding one, or from that source itself, never does.
        let b2 = inflight.admit(1, B, true).unwrap();
        let c = inflight.admit(1, C, true).unwrap();
        assert_eq!(inflight.admit(1, B, true).unwrap_err(), Full::Source, "B's own takes nothing of B's");
        assert_eq!(inflight.admit(1, C, true).unwrap_err(), Full::Total, "C would then hold two");
        let _d = inflight.admit(1, D, true).expect("D holds none, B two");
        assert!(was_evicted(&b) && !was_evicted(&b2) && !was_evicted(&c) && !was_evicted(&a[1]));
        // Each evicted place was given back at once, not when its holder noticed: the counts
        // stay within the caps, and the evicted tickets drop without giving back twice.
        assert_eq!(inflight.counts(1), (4, 4));
        assert_eq!(inflight.admit(1, A, false).unwrap_err(), Full::Total);
        drop((a, b));
        assert_eq!(inflight.counts(1), (3, 3), "A's other place given back, and nothing twice");
        let _request = inflight.admit(1, A, false).expect("A's other place given back");
        assert_eq!(inflight.counts(1), (4, 3));
    }

    #[test]
    fn requests_filling_a_session_cut_no_lasting_visitor_until_those_hold_most_of_it() {
        let inflight = InFlight::new(4, 4);
        let upgrades = [inflight.admit(1, A, true).unwrap(), inflight.admit(1, A, true).unwrap()];
        let _requests = [inflight.admit(1, B, false).unwrap(), inflight.admit(1, B, false).unwrap()];
        assert_eq!(inflight.admit(1, C, false).unwrap_err(), Full::Total, "A holds half, no more");
        assert!(upgrades.iter().all(|u| !was_evicted(u)));
        // A lasting newcomer still takes the place of the site holding the most.
        let _c = inflight.admit(1, C, true).expect("C holds none, A two");
        assert!(was_evicted(&upgrades[0]) && !was_evicted(&upgrades[1]));
    }

    #[test]
    fn a_newcomer_at_its_sources_cap_evicts_no_one() {
        // Two /64s of one /48, each at its cap: one site holding four, more than B's two + 1.
        let (a1, a2): (IpAddr, IpAddr) =
            ("2001:db8:0:1::1".parse().unwrap(), "2001:db8:0:2::1".parse().unwrap());
        let inflight = InFlight::new(6, 2);
        let held: Vec<_> =
            [a1, a1, a2, a2, B, B].into_iter().map(|ip| inflight.admit(1, ip, true).unwrap()).collect();
        assert_eq!(inflight.admit(1, B, true).unwrap_err(), Full::Source);
        assert!(held.iter().all(|h| !was_evicted(h)), "evicted for a newcomer then refused");
    }

    #[tokio::test]
    async fn an_answer_holding_a_lasting_place_ends_when_a_newcomer_takes_it() {
        let inflight = InFlight::new(2, 2);
        let (held, _kept) = (inflight.admit(1, A, true).unwrap(), inflight.admit(1, A, true).unwrap());
        let body =
            http_body_util::StreamBody::new(futures::stream::pending::<Result<Frame<Bytes>, BoxError>>());
        let mut body = hold(body, held);
        assert!(futures::FutureExt::now_or_never(body.frame()).is_none(), "the answer is still under way");
        let _newcomer = inflight.admit(1, B, false).expect("a request takes the place");
        let frame = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame()).await.unwrap();
        assert!(matches!(frame, Some(Err(_))), "the answer goes on without its place");
    }

    #[test]
    fn sessions_holding_nothing_are_forgotten_once_there_are_many() {
        let inflight = InFlight::new(4, 4);
        const KEPT: usize = usize::MAX;
        let held = inflight.admit(KEPT, A, true).unwrap();
        for gone in 0..1000 {
            drop(inflight.admit(gone, A, true).unwrap());
        }
        assert!(inflight.sessions() <= FIRST_PRUNE + 1, "{} sessions kept", inflight.sessions());
        drop(held);
        assert!(inflight.admit(KEPT, A, true).is_ok());
    }
}
