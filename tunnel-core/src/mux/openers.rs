//! Several connections that can carry the same streams (the sessions of one client's
//! replicas): each new stream goes to the least busy.

use std::sync::Arc;

use super::StreamOpener;

/// The connections a route reaches its client over: one session, or one per replica of the
/// client. [`Openers::pick`] chooses the connection for each new stream: the least busy, ties
/// broken at random, so that even one visitor at a time is spread over the replicas.
///
/// ```
/// # async fn demo(a: tunnel_core::mux::StreamOpener, b: tunnel_core::mux::StreamOpener) {
/// use tunnel_core::mux::Openers;
///
/// let replicas = Openers::new([a, b]);
/// if let Some(opener) = replicas.pick() {
///     let _stream = opener.open().await;
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Openers(Arc<[StreamOpener]>);

impl Openers {
    /// These connections.
    pub fn new(openers: impl IntoIterator<Item = StreamOpener>) -> Self {
        Self(openers.into_iter().collect())
    }

    /// The connection for the next stream: the one with the fewest busy streams among those
    /// whose session is neither closed nor silent; failing that, among those not closed; ties
    /// at random. `None` when every connection is closed (or there is none).
    pub fn pick(&self) -> Option<&StreamOpener> {
        least_busy(&self.0, |opener| opener)
    }

    /// The connections.
    pub fn iter(&self) -> impl Iterator<Item = &StreamOpener> {
        self.0.iter()
    }
}

impl From<StreamOpener> for Openers {
    fn from(opener: StreamOpener) -> Self {
        Self::new([opener])
    }
}

/// The item whose connection (`opener_of`) has the fewest busy streams (open, and not set aside
/// idle in a pool), among those whose session is up and heard from; failing that, among those
/// merely up. Ties at random.
pub(crate) fn least_busy<T>(items: &[T], opener_of: impl Fn(&T) -> &StreamOpener) -> Option<&T> {
    let open = |item: &T| opener_of(item).busy_streams();
    let up = |item: &T| !opener_of(item).is_closed();
    let heard = fewest(items, |item| up(item) && !opener_of(item).is_silent(), open);
    heard.or_else(|| fewest(items, up, open))
}

/// An item with the fewest `open` streams among those that are `usable`, chosen uniformly
/// among the ties.
pub(super) fn fewest<T>(items: &[T], usable: impl Fn(&T) -> bool, open: impl Fn(&T) -> usize) -> Option<&T> {
    // (item, its open streams, how many items tied with it so far)
    let mut best: Option<(&T, usize, u32)> = None;
    for item in items.iter().filter(|item| usable(item)) {
        let open = open(item);
        best = match best {
            Some((_, fewest, _)) if open < fewest => Some((item, open, 1)),
            // The k-th tie replaces the choice with probability 1/k: each is equally likely.
            Some((chosen, fewest, ties)) if open == fewest => {
                let ties = ties.saturating_add(1);
                let chosen = if rand::random_range(0..ties) == 0 { item } else { chosen };
                Some((chosen, fewest, ties))
            }
            Some(kept) => Some(kept),
            None => Some((item, open, 1)),
        };
    }
    best.map(|(item, _, _)| item)
}

/// For tests: an opener over a connection nobody drives (open as far as anyone can tell), and
/// what keeps that connection open.
#[cfg(test)]
pub(crate) fn idle_opener() -> (StreamOpener, impl Sized) {
    let (a, b) = tokio::io::duplex(64);
    let (opener, incoming, driver) = super::start(a, &super::MuxConfig::default(), super::Mode::Client);
    (opener, (b, incoming, driver))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::idle_opener as opener;

    #[tokio::test]
    async fn the_least_busy_live_connection_is_picked_and_silence_counts_against_one() {
        let ((a, _ka), (b, _kb), (c, _kc)) = (opener(), opener(), opener());
        let busy = [a.link.open_one(), a.link.open_one(), b.link.open_one()];
        let set = Openers::new([a.clone(), b.clone(), c.clone()]);
        assert_eq!(set.pick().map(StreamOpener::connection_id), Some(c.connection_id()));

        // c is silent: b (one stream) beats a (two); a silent connection is not picked
        // while another is heard from, however idle it is.
        c.set_silent(true);
        assert_eq!(set.pick().map(StreamOpener::connection_id), Some(b.connection_id()));

        // Every connection silent: the least busy of them still gets the stream.
        a.set_silent(true);
        b.set_silent(true);
        assert_eq!(set.pick().map(StreamOpener::connection_id), Some(c.connection_id()));

        // Heard from again: back in the running.
        c.set_silent(false);
        assert_eq!(set.pick().map(StreamOpener::connection_id), Some(c.connection_id()));
        drop(busy);
        let (d, _kd) = opener();
        a.set_silent(false);
        // Ties are broken at random: over many picks, each of two idle connections is chosen.
        let tie = Openers::new([d.clone(), a.clone()]);
        let picks: Vec<usize> =
            (0..200).filter_map(|_| tie.pick().map(StreamOpener::connection_id)).collect();
        let first = picks.iter().filter(|id| **id == d.connection_id()).count();
        assert!((40..=160).contains(&first), "{first} of 200 ties went to the first");
        // A closed connection is never picked, even idle.
        drop(_kd);
        assert!(d.is_closed());
        for _ in 0..20 {
            assert_eq!(tie.pick().map(StreamOpener::connection_id), Some(a.connection_id()));
        }
        assert!(Openers::new([]).pick().is_none());
    }

    /// Streams set aside idle (a pooled HTTP connection) do not count: a replica whose pool
    /// holds streams is not passed over for one serving a visitor (or hung with one).
    #[tokio::test]
    async fn streams_set_aside_idle_do_not_make_a_connection_look_busy() {
        let ((a, _ka), (b, _kb)) = (opener(), opener());
        let pooled = [a.link.open_one(), a.link.open_one()];
        let serving = b.link.open_one();
        let set = Openers::new([a.clone(), b.clone()]);
        assert_eq!(set.pick().map(StreamOpener::connection_id), Some(b.connection_id()));
        let idle = [a.link.idle_one(), a.link.idle_one()];
        for _ in 0..20 {
            assert_eq!(set.pick().map(StreamOpener::connection_id), Some(a.connection_id()));
        }
        assert_eq!((a.open_streams(), a.busy_streams()), (2, 0));
        // Taken out of the pool for an exchange: busy again.
        drop(idle);
        assert_eq!(set.pick().map(StreamOpener::connection_id), Some(b.connection_id()));
        drop((pooled, serving));
    }
}
