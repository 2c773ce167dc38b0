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

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};

use super::{Body, BoxError};
use crate::source::{Full, Place, Places};

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
    places: HashMap<usize, Places>,
    /// Past this many sessions, the idle ones are forgotten.
    prune_at: usize,
}

impl InFlight {
    /// At most `total` streams per session, and `per_source` of them for one source where that
    /// cap applies (TLS passthrough visitors).
    pub(crate) fn new(total: usize, per_source: usize) -> Self {
        let sessions = Sessions { places: HashMap::new(), prune_at: FIRST_PRUNE };
        Self { total, per_source, sessions: Mutex::new(sessions) }
    }

    /// A place for a stream to session `key` for a visitor from `ip`, or which cap it hit;
    /// `per_source`: whether the per-source cap applies too.
    pub(crate) fn admit(&self, key: usize, ip: IpAddr, per_source: bool) -> Result<Place, Full> {
        let admit = |places: &Places| if per_source { places.admit(ip) } else { places.admit_any_source() };
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(places) = sessions.places.get(&key) {
            return admit(places);
        }
        if sessions.places.len() >= sessions.prune_at {
            sessions.places.retain(|_, places| places.in_use() > 0);
            sessions.prune_at = (sessions.places.len() * 2).max(FIRST_PRUNE);
        }
        let places = Places::new(self.total, self.per_source);
        let place = admit(&places);
        sessions.places.insert(key, places);
        place
    }

    #[cfg(test)]
    fn sessions(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).places.len()
    }
}

/// A response body that holds its request's place until it is over (or dropped).
pub(crate) fn hold<B>(body: B, place: Place) -> Body
where
    B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static,
{
    Held { body, _place: place }.boxed_unsync()
}

struct Held<B> {
    body: B,
    _place: Place,
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
        assert_eq!(inflight.admit(1, A, true).unwrap_err(), Full::Total, "the body holds the place");
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
