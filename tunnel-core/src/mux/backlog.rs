//! Unread frames per stream, kept within what their bytes would cost.
//!
//! yamux keeps each data frame's body as an allocation of its own, queued on its stream until
//! the reader takes it, and counts only body bytes against the stream's window. A peer that
//! sends one-byte frames to a stream whose reader has stopped (a target or visitor that reads
//! nothing) would so pin about 64 bytes of heap and queue per byte of window: 16 MiB or more
//! per stream instead of its 256 KiB.
//!
//! So [`Backlogs`] follows each stream of a connection from its making (ours) or the peer's
//! SYN until its reader is gone: the small frames (under [`SMALL_FRAME`] bytes) handed to
//! yamux and not yet taken by the stream's reader, which counts what it takes ([`ReadTally`]).
//! Once their cost, at [`FRAME_COST`] each, would pass both [`OVERHEAD_ALLOWED`] and
//! [`OVERHEAD_PER_BYTE`] times the stream's unread bytes (give or take one frame), the stream
//! is cut off: the header of the frame that would pass it, and of every later data frame for
//! the stream, is rewritten into a reset before yamux reads it (yamux drops a reset's body
//! unread), and the peer gets a reset of its own. The reader still takes what was queued
//! before, then fails with `ConnectionReset`, never a clean end.
//!
//! What yamux would still queue is kept from it too:
//! - data the peer sends after its own reset of a stream is rewritten into resets (and a
//!   reset's body, which yamux drops, is not counted);
//! - data for a stream nobody follows (its reader gone, though yamux may hold the stream until
//!   its writes are out; or a stream never made) reaches yamux as a frame for no stream
//!   ([`Arrival::Swallow`]), which it drops. Frames with no body (a FIN, a reset, a window
//!   update) and a reset's body reach it as they came: they change only the state of a stream
//!   yamux holds;
//! - a SYN for stream 0, for an id of our side's, or for a stream followed already ends the
//!   connection at once ([`Arrival::Refuse`]). The frames swallowed above are for stream 0,
//!   which yamux on the client side would open (the server's ids are even). An honest peer
//!   opens only streams of its own ids, and never one twice; yamux, which refuses the others,
//!   ends the connection only once it has written its go-away, reading on until then: the SYN
//!   would have made an entry here, or taken a live stream's place.
//!
//! So frames of 16 bytes or more are never cut off, however many wait, and a stream's unread
//! small frames cost at most four times their bytes, or 512 KiB: 1.25 MiB with a 256 KiB
//! window, not 16 MiB; 80 MiB with a window grown to 16 MiB, not 1 GiB. Following them costs 8
//! to 16 bytes a frame more here (a queue grown by doubling), given back when the stream is cut
//! off or reset, or once the reader has taken most of them and another small frame comes. A
//! sender of ours sends frames that small only while the data trickles (our copies write what
//! they read at once), and such a stream is cut off only if its reader falls more than 8,193
//! frames behind.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::frames::{Header, FLAG_RST, FLAG_SYN};
use super::link::Link;
use super::Mode;

/// Data frames with a body shorter than this are counted; a longer one costs yamux at most a
/// few percent more than its bytes.
pub(super) const SMALL_FRAME: u32 = 1024;

/// What yamux holds for a queued frame beyond its body: the body's own allocation (malloc's
/// smallest is 32 bytes with its header) and the frame's place in the stream's queue (32).
const FRAME_COST: usize = 64;

/// The cost of unread small frames allowed whatever the bytes they carry: 8,192 frames.
const OVERHEAD_ALLOWED: usize = 512 * 1024;

/// The cost of unread small frames allowed per unread byte of the stream: frames of 16 bytes
/// cost no more.
const OVERHEAD_PER_BYTE: usize = 4;

/// Small frames of one byte that pass, unread, before the next cuts their stream off.
#[cfg(test)]
const FRAMES_ALLOWED: usize = OVERHEAD_ALLOWED / FRAME_COST + 1;

/// What becomes of a frame arriving for yamux.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrival {
    /// Handed to yamux as it came.
    Pass,
    /// Its stream is cut off now: this frame and every later data frame for it are rewritten
    /// into resets, and the peer must be told.
    CutOff,
    /// Data for a stream cut off before, or reset by the peer: rewritten into a reset.
    Discard,
    /// Data for a stream nobody follows: handed over as a frame for no stream, which yamux
    /// drops. Its reader may be gone while yamux holds the stream, and its last frame for it
    /// (a reset or a FIN) is still to go: a reset here would change what that frame says.
    Swallow,
    /// It opens stream 0 (the one that names the connection), a stream of an id only our side
    /// gives, or a stream followed already: the connection must end.
    Refuse,
}

/// The unread small frames of each stream of one connection.
#[derive(Debug)]
pub(super) struct Backlogs {
    /// The peer opens streams of odd ids (it is yamux's client), or of even ones.
    peer_opens_odd: bool,
    /// The streams followed, by id: each from its making or the peer's SYN until its reader
    /// is gone.
    followed: Mutex<HashMap<u32, Backlog>>,
    /// Streams cut off so far, for a log that a flood cannot flood.
    cut_off: AtomicU64,
}

#[derive(Debug, Default)]
struct Backlog {
    /// Bytes the stream's reader took so far.
    taken: Arc<AtomicU64>,
    /// Body bytes handed to yamux for the stream so far.
    received: u64,
    /// Where each small frame not known to be taken ends, in `received`'s count.
    small: VecDeque<u64>,
    /// Later data is not handed to yamux as it comes: the stream was cut off, or reset by the
    /// peer (yamux would still queue what follows a reset).
    ended: Option<Arrival>,
}

impl Backlogs {
    /// The backlogs of a connection whose side `ours` is.
    pub(super) fn new(ours: Mode) -> Self {
        Self { peer_opens_odd: ours == Mode::Server, followed: Mutex::default(), cut_off: AtomicU64::new(0) }
    }

    /// Starts following `stream` (kept if the peer's SYN came already), and returns the counter
    /// its reader adds what it takes to.
    pub(super) fn track(&self, stream: u32) -> Arc<AtomicU64> {
        lock(&self.followed).entry(stream).or_default().taken.clone()
    }

    /// `stream`'s reader, which counted into `taken`, is gone: what the peer still sends for
    /// it is swallowed. Only the entry it counted into is ended: a reader never ends another's.
    pub(super) fn untrack(&self, stream: u32, taken: &Arc<AtomicU64>) {
        let mut followed = lock(&self.followed);
        if followed.get(&stream).is_some_and(|backlog| Arc::ptr_eq(&backlog.taken, taken)) {
            followed.remove(&stream);
        }
    }

    /// A frame header arriving from the peer, before yamux reads it.
    pub(super) fn arriving(&self, header: Header) -> Arrival {
        if !header.is_about_a_stream() {
            // Pings and go-aways: no flag of theirs opens, ends or resets a stream.
            return Arrival::Pass;
        }
        let reset = header.flags & FLAG_RST != 0;
        // A SYN that also resets opens nothing (yamux ignores it).
        let opens = header.flags & (FLAG_SYN | FLAG_RST) == FLAG_SYN;
        if opens && (header.stream == 0 || self.is_ours(header.stream)) {
            return Arrival::Refuse;
        }
        if !opens && !reset && !header.carries_data() {
            return Arrival::Pass;
        }
        let mut followed = lock(&self.followed);
        let backlog = if opens {
            // A stream the peer opens is followed from its first frame, before yamux hands it
            // over.
            match followed.entry(header.stream) {
                Entry::Occupied(_) => return Arrival::Refuse,
                Entry::Vacant(entry) => entry.insert(Backlog::default()),
            }
        } else {
            match followed.get_mut(&header.stream) {
                Some(backlog) => backlog,
                // yamux drops a reset's body, and takes the reset itself.
                None if reset => return Arrival::Pass,
                None => return Arrival::Swallow,
            }
        };
        match backlog.ended {
            None if reset => {
                // yamux drops the reset's body and closes the stream, but would still queue
                // the data the peer sends after it.
                backlog.ended = Some(Arrival::Discard);
                backlog.small = VecDeque::new();
                return Arrival::Pass;
            }
            // A frame with no body (a SYN, a FIN) changes nothing yamux holds.
            _ if !header.carries_data() => return Arrival::Pass,
            Some(ended) => return ended,
            None => {}
        }
        backlog.received += u64::from(header.length);
        if header.length >= SMALL_FRAME {
            return Arrival::Pass;
        }
        let taken = backlog.taken.load(Ordering::Acquire);
        while backlog.small.front().is_some_and(|&end| end <= taken) {
            backlog.small.pop_front();
        }
        if backlog.small.capacity() > 64 && backlog.small.len() < backlog.small.capacity() / 4 {
            backlog.small.shrink_to(backlog.small.len() * 2);
        }
        backlog.small.push_back(backlog.received);
        let unread = usize::try_from(backlog.received.saturating_sub(taken)).unwrap_or(usize::MAX);
        // One frame more: the reader may have taken part of the first one held, whose unread
        // rest then counts fewer bytes than the frame costs.
        let allowed =
            OVERHEAD_ALLOWED.max(unread.saturating_mul(OVERHEAD_PER_BYTE)).saturating_add(FRAME_COST);
        if backlog.small.len().saturating_mul(FRAME_COST) <= allowed {
            return Arrival::Pass;
        }
        let small = backlog.small.len();
        backlog.ended = Some(Arrival::Discard);
        backlog.small = VecDeque::new();
        drop(followed);
        let cut_off = self.cut_off.fetch_add(1, Ordering::Relaxed) + 1;
        // The 1st, 10th, 100th... of a connection.
        if 10u64.pow(cut_off.ilog10()) == cut_off {
            tracing::warn!(
                stream = header.stream,
                small_frames = small,
                unread_bytes = unread,
                streams_cut_off = cut_off,
                "peer sent more small frames than a stream's reader took than their memory allows; resetting the stream"
            );
        }
        Arrival::CutOff
    }

    /// Whether `stream` is an id only our side gives.
    fn is_ours(&self, stream: u32) -> bool {
        (stream % 2 == 1) != self.peer_opens_odd
    }

    /// Streams followed now.
    #[cfg(test)]
    pub(super) fn followed(&self) -> usize {
        lock(&self.followed).len()
    }
}

/// A stream's place in its connection's [`Backlogs`] while it lives: counts what its reader
/// takes, and ends the following when dropped. Whether before or after the yamux stream beside
/// it does not matter: either way its frames are counted until then and swallowed after.
pub(super) struct ReadTally {
    link: Link,
    stream: u32,
    taken: Arc<AtomicU64>,
}

impl ReadTally {
    pub(super) fn new(link: Link, stream: u32) -> Self {
        let taken = link.backlogs().track(stream);
        Self { link, stream, taken }
    }

    /// The reader took `n` bytes.
    pub(super) fn took(&self, n: usize) {
        self.taken.fetch_add(n as u64, Ordering::Release);
    }
}

impl Drop for ReadTally {
    fn drop(&mut self) {
        self.link.backlogs().untrack(self.stream, &self.taken);
    }
}

/// A stream yamux made, and its place in [`Backlogs`], from the moment it exists: a stream
/// waiting to be taken (a spare, an inbound one not yet queued) is followed too.
pub(super) struct Tracked {
    pub(super) stream: yamux::Stream,
    pub(super) tally: ReadTally,
}

impl Tracked {
    pub(super) fn new(stream: yamux::Stream, link: &Link) -> Self {
        let tally = ReadTally::new(link.clone(), stream.id().val());
        Self { stream, tally }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::super::frames::{FLAG_FIN, TYPE_DATA, TYPE_GO_AWAY, TYPE_PING, TYPE_WINDOW_UPDATE};
    use super::*;

    fn data(flags: u16, stream: u32, length: u32) -> Header {
        Header { kind: TYPE_DATA, flags, stream, length }
    }

    fn window_update(flags: u16, stream: u32) -> Header {
        Header { kind: TYPE_WINDOW_UPDATE, flags, stream, length: 256 * 1024 }
    }

    /// How many `length`-byte frames pass before `stream` is cut off (`None`: all of `most`).
    fn frames_until_cut(backlogs: &Backlogs, stream: u32, length: u32, most: usize) -> Option<usize> {
        (0..most).find(|_| backlogs.arriving(data(0, stream, length)) != Arrival::Pass)
    }

    fn received(backlogs: &Backlogs, stream: u32) -> Option<u64> {
        lock(&backlogs.followed).get(&stream).map(|backlog| backlog.received)
    }

    #[test]
    fn one_byte_frames_nobody_reads_are_cut_off_at_the_allowance_and_everything_after() {
        let backlogs = Backlogs::new(Mode::Client);
        backlogs.track(1);
        assert_eq!(frames_until_cut(&backlogs, 1, 1, 1 << 20), Some(FRAMES_ALLOWED));
        // Every data frame after, small or not, and one that would end it: all rewritten.
        for length in [1, 64 * 1024] {
            assert_eq!(backlogs.arriving(data(0, 1, length)), Arrival::Discard);
        }
        assert_eq!(backlogs.arriving(data(FLAG_FIN, 1, 5)), Arrival::Discard);
        // Frames with no body (a FIN, a reset) are yamux's to act on.
        assert_eq!(backlogs.arriving(data(FLAG_FIN, 1, 0)), Arrival::Pass);
        // Another stream of the connection is not touched.
        backlogs.track(3);
        assert_eq!(backlogs.arriving(data(0, 3, 1)), Arrival::Pass);
    }

    #[test]
    fn data_after_the_peers_reset_is_discarded_and_its_body_not_counted() {
        for reset in [data(FLAG_RST, 1, 1 << 20), window_update(FLAG_RST, 1)] {
            let backlogs = Backlogs::new(Mode::Client);
            backlogs.track(1);
            assert_eq!(backlogs.arriving(reset), Arrival::Pass, "yamux acts on the reset itself");
            assert_eq!(received(&backlogs, 1), Some(0));
            assert_eq!(backlogs.arriving(data(0, 1, 1)), Arrival::Discard);
            assert_eq!(backlogs.arriving(data(0, 1, 64 * 1024)), Arrival::Discard);
        }
    }

    #[test]
    fn small_frames_the_reader_takes_are_forgotten_whatever_their_number() {
        let backlogs = Backlogs::new(Mode::Client);
        let taken = backlogs.track(1);
        for _ in 0..100_000 {
            assert_eq!(backlogs.arriving(data(0, 1, 1)), Arrival::Pass);
            taken.fetch_add(1, Ordering::Relaxed);
        }
        // The count of them is given back once they are taken.
        for _ in 0..5000 {
            assert_eq!(backlogs.arriving(data(0, 1, 1)), Arrival::Pass);
        }
        taken.fetch_add(5000, Ordering::Relaxed);
        backlogs.arriving(data(0, 1, 1));
        assert!(lock(&backlogs.followed)[&1].small.capacity() < 100);
        // Taken up to the middle of a frame: that frame is still unread.
        let backlogs = Backlogs::new(Mode::Client);
        let taken = backlogs.track(1);
        backlogs.arriving(data(0, 1, 10));
        taken.store(9, Ordering::Relaxed);
        backlogs.arriving(data(0, 1, 10));
        assert_eq!(lock(&backlogs.followed)[&1].small.len(), 2);
        taken.store(10, Ordering::Relaxed);
        backlogs.arriving(data(0, 1, 10));
        assert_eq!(lock(&backlogs.followed)[&1].small.len(), 2);
    }

    #[test]
    fn frames_of_16_bytes_or_more_fill_any_window_unread_and_are_never_cut_off() {
        for length in [16, 64, 500, SMALL_FRAME - 1, SMALL_FRAME, 16 * 1024] {
            let backlogs = Backlogs::new(Mode::Client);
            backlogs.track(1);
            // 16 MiB unread, the most a stream's window grows to by default.
            let frames = (16 << 20) / length as usize;
            assert_eq!(frames_until_cut(&backlogs, 1, length, frames), None, "{length}-byte frames");
        }
        // Nor when the reader took part of the first: its rest counts fewer bytes than it costs.
        for took in [1, 5, 15] {
            let backlogs = Backlogs::new(Mode::Client);
            let taken = backlogs.track(1);
            backlogs.arriving(data(0, 1, 16));
            taken.store(took, Ordering::Relaxed);
            assert_eq!(frames_until_cut(&backlogs, 1, 16, 1 << 20), None, "{took} bytes taken");
        }
        // Frames of 15 bytes are, past the allowance.
        let backlogs = Backlogs::new(Mode::Client);
        backlogs.track(1);
        assert_eq!(frames_until_cut(&backlogs, 1, 15, 1 << 20), Some(FRAMES_ALLOWED));
        // Large frames unread let small ones cost four times their bytes.
        let backlogs = Backlogs::new(Mode::Client);
        backlogs.track(1);
        for _ in 0..16 {
            backlogs.arriving(data(0, 1, 64 * 1024));
        }
        // 64 * f > 4 * (1 MiB + f) + 64, for one-byte frames: f > (4 MiB + 64) / 60.
        let until = frames_until_cut(&backlogs, 1, 1, 1 << 20).unwrap();
        assert_eq!(until, ((4 << 20) + FRAME_COST) / 60);
    }

    #[test]
    fn a_stream_is_followed_from_its_making_or_the_peers_syn_until_its_reader_is_gone() {
        let backlogs = Backlogs::new(Mode::Client);
        // Data for a stream nobody follows (gone, or never made) is swallowed; frames with
        // no body, and a reset's body, are yamux's.
        assert_eq!(backlogs.arriving(data(0, 7, 1)), Arrival::Swallow);
        assert_eq!(backlogs.arriving(data(FLAG_FIN, 7, 64 * 1024)), Arrival::Swallow);
        for frame in [data(FLAG_FIN, 7, 0), data(FLAG_RST, 7, 5), window_update(0, 7)] {
            assert_eq!(backlogs.arriving(frame), Arrival::Pass, "{frame:?}");
        }
        assert_eq!(backlogs.followed(), 0);
        // The peer's SYN with a body: followed before the stream is taken, and kept then.
        assert_eq!(backlogs.arriving(data(FLAG_SYN, 2, 3)), Arrival::Pass);
        let taken = backlogs.track(2);
        assert_eq!(received(&backlogs, 2), Some(3));
        // A SYN that also resets opens nothing.
        backlogs.arriving(data(FLAG_SYN | FLAG_RST, 4, 3));
        backlogs.arriving(window_update(FLAG_SYN | FLAG_RST, 6));
        assert_eq!(backlogs.followed(), 1);
        // Its reader gone, what comes for it is swallowed at once, yamux's ends of it not.
        backlogs.untrack(2, &taken);
        assert_eq!(backlogs.arriving(data(0, 2, 1)), Arrival::Swallow);
        assert_eq!(backlogs.arriving(data(FLAG_FIN, 2, 0)), Arrival::Pass);
        // A SYN with no body for the id again, once yamux let go of it: a new stream,
        // followed afresh, which the old reader cannot end.
        for syn in [data(FLAG_SYN, 2, 0), window_update(FLAG_SYN, 2)] {
            assert_eq!(backlogs.arriving(syn), Arrival::Pass);
            assert_eq!(backlogs.arriving(data(0, 2, 5)), Arrival::Pass);
            assert_eq!(received(&backlogs, 2), Some(5));
            let again = backlogs.track(2);
            backlogs.untrack(2, &taken);
            assert_eq!(received(&backlogs, 2), Some(5));
            backlogs.untrack(2, &again);
            assert_eq!(backlogs.followed(), 0);
        }
    }

    #[test]
    fn only_data_and_window_updates_open_or_reset_a_stream() {
        let backlogs = Backlogs::new(Mode::Client);
        backlogs.track(1);
        for other in [TYPE_PING, TYPE_GO_AWAY] {
            let header = Header { kind: other, flags: FLAG_RST, stream: 1, length: 0 };
            assert_eq!(backlogs.arriving(header), Arrival::Pass);
            let header = Header { kind: other, flags: FLAG_SYN, stream: 3, length: 0 };
            assert_eq!(backlogs.arriving(header), Arrival::Pass);
        }
        assert_eq!(backlogs.arriving(data(0, 1, 1)), Arrival::Pass, "stream 1 not reset");
        assert_eq!(backlogs.followed(), 1, "stream 3 not opened");
    }

    #[test]
    fn a_syn_for_stream_0_an_id_of_ours_or_a_stream_followed_already_is_refused() {
        let backlogs = Backlogs::new(Mode::Client);
        backlogs.track(1);
        assert_eq!(backlogs.arriving(data(FLAG_SYN, 2, 0)), Arrival::Pass);
        for opens in [data(FLAG_SYN, 1, 0), window_update(FLAG_SYN, 2), data(FLAG_SYN, 2, 7)] {
            assert_eq!(backlogs.arriving(opens), Arrival::Refuse, "{opens:?}");
        }
        // Ids only our side gives, followed or not: odd ones for yamux's client, even ones
        // (stream 0 among them) for its server.
        for (ours, peers, refused) in [(Mode::Client, 4, [3, 5]), (Mode::Server, 3, [2, 0])] {
            let sided = Backlogs::new(ours);
            for stream in refused {
                for opens in [data(FLAG_SYN, stream, 1), window_update(FLAG_SYN, stream)] {
                    assert_eq!(sided.arriving(opens), Arrival::Refuse, "{ours:?} {opens:?}");
                }
            }
            assert_eq!(sided.arriving(data(FLAG_SYN, peers, 1)), Arrival::Pass, "{ours:?} {peers}");
            assert_eq!(sided.followed(), 1);
        }
        for opens in [data(FLAG_SYN, 0, 0), data(FLAG_SYN | FLAG_FIN, 0, 3), window_update(FLAG_SYN, 0)] {
            assert_eq!(backlogs.arriving(opens), Arrival::Refuse, "{opens:?}");
        }
        // One that also resets opens nothing, and data for it is swallowed as for any stream
        // nobody follows.
        assert_eq!(backlogs.arriving(data(FLAG_SYN | FLAG_RST, 0, 0)), Arrival::Pass);
        assert_eq!(backlogs.arriving(data(0, 0, 3)), Arrival::Swallow);
        assert_eq!(backlogs.followed(), 2);
    }
}

#[cfg(test)]
#[path = "backlog_tests.rs"]
mod connection_tests;
