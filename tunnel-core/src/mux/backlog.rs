//! Unread frames per stream, kept within what their bytes would cost.
//!
//! yamux keeps each data frame's body as an allocation of its own, queued on its stream until
//! the reader takes it, and counts only body bytes against the stream's window. A peer that
//! sends one-byte frames to a stream whose reader has stopped (a target or visitor that reads
//! nothing) would so pin about 64 bytes of heap and queue per byte of window: 16 MiB or more
//! per stream instead of its 256 KiB.
//!
//! So [`Backlogs`] follows, for each stream of a connection while it lives, the small frames
//! (under [`SMALL_FRAME`] bytes) handed to yamux and not yet taken by the stream's reader, which
//! counts what it takes ([`ReadTally`]). Once their cost, at [`FRAME_COST`] each, would pass
//! both [`OVERHEAD_ALLOWED`] and [`OVERHEAD_PER_BYTE`] times the stream's unread bytes, the
//! stream is cut off: the header of the frame that would pass it, and of every later data frame
//! for the stream, is rewritten into a reset before yamux reads it (yamux drops a reset's body
//! unread), and the peer gets a reset of its own. The reader still takes what was queued
//! before, then fails with `ConnectionReset`, never a clean end.
//!
//! Two things yamux does not do are done here too. Data the peer sends after its own reset of
//! a stream, which yamux would still queue, is rewritten into resets, and a reset's body, which
//! yamux drops, is not counted. And a stream whose reader is gone stays followed until yamux
//! has surely let go of it ([`Backlogs::forget_orphans`]): until then yamux would queue what
//! the peer sends for it, so that reaches yamux as a frame for no stream ([`Arrival::Swallow`]).
//!
//! So frames of 16 bytes or more are never cut off, however many wait, and a stream's unread
//! frames cost at most four times their bytes, or 512 KiB: 1.25 MiB with its 256 KiB window,
//! not 16 MiB. A sender of ours sends frames that small only while the data trickles (our copies
//! write what they read at once), and such a stream is cut off only if its reader falls 8,192
//! frames behind.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::frames::{Header, FLAG_RST, FLAG_SYN};
use super::link::Link;

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

/// What became of a data frame arriving for yamux.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrival {
    /// Handed to yamux as it came.
    Pass,
    /// Its stream is cut off now: this frame and every later one for it are rewritten into
    /// resets, and the peer must be told.
    CutOff,
    /// For a stream cut off before, or reset by the peer: rewritten into a reset.
    Discard,
    /// For a stream whose reader is gone: yamux, which may not have let go of it yet, must not
    /// queue it, nor change the stream's state (its last frame for it is still to go): handed
    /// over as a frame for no stream, which yamux drops.
    Swallow,
}

/// The unread small frames of each stream of one connection.
#[derive(Debug, Default)]
pub(super) struct Backlogs {
    followed: Mutex<Followed>,
    /// Streams cut off so far, for a log that a flood cannot flood.
    cut_off: AtomicU64,
}

#[derive(Debug, Default)]
struct Followed {
    streams: HashMap<u32, Backlog>,
    /// Streams whose reader is gone, oldest first, by the count of such streams before them:
    /// yamux lets go of a dropped stream only once it has nothing else to write, and until
    /// then would queue what the peer sends for it.
    orphans: VecDeque<(u64, u32)>,
    /// Streams orphaned so far.
    orphaned: u64,
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
    /// peer (yamux would still queue what follows a reset), or its reader is gone.
    ended: Option<Arrival>,
}

impl Backlogs {
    /// Starts following `stream` (kept if its first frame came already), and returns the
    /// counter its reader adds what it takes to.
    pub(super) fn track(&self, stream: u32) -> Arc<AtomicU64> {
        lock(&self.followed).streams.entry(stream).or_default().taken.clone()
    }

    /// `stream`'s reader is gone: what the peer still sends for it is swallowed until yamux
    /// has surely let go of it too ([`Backlogs::forget_orphans`]).
    pub(super) fn untrack(&self, stream: u32) {
        let mut followed = lock(&self.followed);
        let followed = &mut *followed;
        if let Some(backlog) = followed.streams.get_mut(&stream) {
            *backlog = Backlog { ended: Some(Arrival::Swallow), ..Backlog::default() };
            followed.orphaned += 1;
            followed.orphans.push_back((followed.orphaned, stream));
        }
    }

    /// Streams orphaned so far: the driver reads it before it polls yamux.
    pub(super) fn orphaned(&self) -> u64 {
        lock(&self.followed).orphaned
    }

    /// Stops following the streams among the first `orphaned` whose reader is gone. The driver
    /// calls it once yamux, polled after they were, had nothing left to do with its writes not
    /// blocked: it then took every stream drop queued before that poll, and ignores what comes
    /// for those streams.
    pub(super) fn forget_orphans(&self, orphaned: u64) {
        let mut followed = lock(&self.followed);
        while let Some(&(count, stream)) = followed.orphans.front() {
            if count > orphaned {
                break;
            }
            followed.orphans.pop_front();
            followed.streams.remove(&stream);
        }
    }

    /// A frame header arriving from the peer, before yamux reads it.
    pub(super) fn arriving(&self, header: Header) -> Arrival {
        let reset = header.flags & FLAG_RST != 0;
        if !header.carries_data() && !reset {
            return Arrival::Pass;
        }
        let mut followed = lock(&self.followed);
        // A stream the peer opens comes with its first frame, before yamux hands it over; a
        // SYN that also resets opens nothing (yamux ignores it). A SYN yamux refuses ends the
        // connection (see `link::WatchedIo`).
        let backlog = match followed.streams.entry(header.stream) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) if header.flags & (FLAG_SYN | FLAG_RST) == FLAG_SYN => {
                entry.insert(Backlog::default())
            }
            Entry::Vacant(_) => return Arrival::Pass,
        };
        match backlog.ended {
            // A frame with no body changes nothing yamux holds.
            Some(_) if !header.carries_data() => return Arrival::Pass,
            Some(ended) => return ended,
            None if reset => {
                // yamux drops the reset's body and closes the stream, but would still queue
                // the data the peer sends after it.
                backlog.ended = Some(Arrival::Discard);
                backlog.small = VecDeque::new();
                return Arrival::Pass;
            }
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
        backlog.small.push_back(backlog.received);
        let unread = usize::try_from(backlog.received.saturating_sub(taken)).unwrap_or(usize::MAX);
        let allowed = OVERHEAD_ALLOWED.max(unread.saturating_mul(OVERHEAD_PER_BYTE));
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

    /// Streams followed now.
    #[cfg(test)]
    pub(super) fn followed(&self) -> usize {
        lock(&self.followed).streams.len()
    }
}

/// A stream's place in its connection's [`Backlogs`] while it lives: counts what its reader
/// takes, and ends the following when dropped.
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
        self.link.backlogs().untrack(self.stream);
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
    use super::super::frames::TYPE_DATA;
    use super::*;

    fn data(flags: u16, stream: u32, length: u32) -> Header {
        Header { kind: TYPE_DATA, flags, stream, length }
    }

    /// How many `length`-byte frames pass before `stream` is cut off (`None`: all of `most`).
    fn frames_until_cut(backlogs: &Backlogs, stream: u32, length: u32, most: usize) -> Option<usize> {
        (0..most).find(|_| backlogs.arriving(data(0, stream, length)) != Arrival::Pass)
    }

    #[test]
    fn one_byte_frames_nobody_reads_are_cut_off_at_the_allowance_and_everything_after() {
        let backlogs = Backlogs::default();
        backlogs.track(1);
        let allowed = OVERHEAD_ALLOWED / FRAME_COST;
        assert_eq!(frames_until_cut(&backlogs, 1, 1, 1 << 20), Some(allowed));
        // Every data frame after, small or not, and one that would end it: all rewritten.
        for length in [1, 64 * 1024] {
            assert_eq!(backlogs.arriving(data(0, 1, length)), Arrival::Discard);
        }
        assert_eq!(backlogs.arriving(data(0x4, 1, 5)), Arrival::Discard);
        // Frames with no body (a FIN, a reset) are yamux's to act on.
        assert_eq!(backlogs.arriving(data(0x4, 1, 0)), Arrival::Pass);
        // Another stream of the connection is not touched.
        backlogs.track(3);
        assert_eq!(backlogs.arriving(data(0, 3, 1)), Arrival::Pass);
    }

    #[test]
    fn data_after_the_peers_reset_is_discarded_and_its_body_not_counted() {
        for reset in [data(FLAG_RST, 1, 1 << 20), Header { kind: 1, ..data(FLAG_RST, 1, 0) }] {
            let backlogs = Backlogs::default();
            backlogs.track(1);
            assert_eq!(backlogs.arriving(reset), Arrival::Pass, "yamux acts on the reset itself");
            assert_eq!(lock(&backlogs.followed).streams[&1].received, 0);
            assert_eq!(backlogs.arriving(data(0, 1, 1)), Arrival::Discard);
            assert_eq!(backlogs.arriving(data(0, 1, 64 * 1024)), Arrival::Discard);
        }
    }

    #[test]
    fn small_frames_the_reader_takes_are_forgotten_whatever_their_number() {
        let backlogs = Backlogs::default();
        let taken = backlogs.track(1);
        for _ in 0..100_000 {
            assert_eq!(backlogs.arriving(data(0, 1, 1)), Arrival::Pass);
            taken.fetch_add(1, Ordering::Relaxed);
        }
        // Taken up to the middle of a frame: that frame is still unread.
        let backlogs = Backlogs::default();
        let taken = backlogs.track(1);
        backlogs.arriving(data(0, 1, 10));
        taken.store(9, Ordering::Relaxed);
        backlogs.arriving(data(0, 1, 10));
        assert_eq!(lock(&backlogs.followed).streams[&1].small.len(), 2);
        taken.store(10, Ordering::Relaxed);
        backlogs.arriving(data(0, 1, 10));
        assert_eq!(lock(&backlogs.followed).streams[&1].small.len(), 2);
    }

    #[test]
    fn frames_of_16_bytes_or_more_fill_any_window_unread_and_are_never_cut_off() {
        for length in [16, 64, 500, SMALL_FRAME - 1, SMALL_FRAME, 16 * 1024] {
            let backlogs = Backlogs::default();
            backlogs.track(1);
            // 16 MiB unread, the most a stream's window grows to by default.
            let frames = (16 << 20) / length as usize;
            assert_eq!(frames_until_cut(&backlogs, 1, length, frames), None, "{length}-byte frames");
        }
        // Frames of 15 bytes are, past the allowance.
        let backlogs = Backlogs::default();
        backlogs.track(1);
        assert_eq!(frames_until_cut(&backlogs, 1, 15, 1 << 20), Some(OVERHEAD_ALLOWED / FRAME_COST));
        // Large frames unread let small ones cost four times their bytes.
        let backlogs = Backlogs::default();
        backlogs.track(1);
        for _ in 0..16 {
            backlogs.arriving(data(0, 1, 64 * 1024));
        }
        // 64 * f > 4 * (1 MiB + f), for one-byte frames: f > 4 MiB / 60.
        let until = frames_until_cut(&backlogs, 1, 1, 1 << 20).unwrap();
        assert_eq!(until, (4 << 20) / 60);
    }

    #[test]
    fn a_stream_is_followed_from_its_peers_first_frame_or_its_making_until_its_reader_is_gone() {
        let backlogs = Backlogs::default();
        // Frames for streams nobody follows (gone, or never made) are yamux's to ignore.
        assert_eq!(frames_until_cut(&backlogs, 7, 1, 10_000), None);
        assert_eq!(backlogs.followed(), 0);
        // The peer's SYN with a body: followed before the stream is taken, and kept then.
        backlogs.arriving(data(FLAG_SYN, 2, 3));
        let taken = backlogs.track(2);
        assert_eq!(lock(&backlogs.followed).streams[&2].received, 3);
        taken.fetch_add(3, Ordering::Relaxed);
        // A SYN that also resets opens nothing.
        backlogs.arriving(data(FLAG_SYN | FLAG_RST, 4, 3));
        assert_eq!(backlogs.followed(), 1);
        // Its reader gone, what comes for it is swallowed until yamux surely let go of it.
        backlogs.untrack(2);
        backlogs.track(6);
        backlogs.untrack(6);
        assert_eq!(backlogs.arriving(data(0, 2, 1)), Arrival::Swallow);
        assert_eq!(backlogs.arriving(data(FLAG_RST, 2, 0)), Arrival::Pass);
        backlogs.forget_orphans(1);
        assert_eq!(backlogs.followed(), 1);
        assert_eq!(backlogs.arriving(data(0, 2, 1)), Arrival::Pass, "yamux ignores it now");
        backlogs.forget_orphans(backlogs.orphaned());
        assert_eq!(backlogs.followed(), 0);
    }
}

#[cfg(test)]
#[path = "backlog_tests.rs"]
mod connection_tests;
