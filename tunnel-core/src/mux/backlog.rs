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
    /// For a stream cut off before: rewritten into a reset.
    Discard,
}

/// The unread small frames of each stream of one connection.
#[derive(Debug, Default)]
pub(super) struct Backlogs {
    streams: Mutex<HashMap<u32, Backlog>>,
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
    cut_off: bool,
}

impl Backlogs {
    /// Starts following `stream` (kept if its first frame came already), and returns the
    /// counter its reader adds what it takes to.
    pub(super) fn track(&self, stream: u32) -> Arc<AtomicU64> {
        lock(&self.streams).entry(stream).or_default().taken.clone()
    }

    /// Stops following `stream`: its reader is gone, and yamux with it.
    pub(super) fn untrack(&self, stream: u32) {
        lock(&self.streams).remove(&stream);
    }

    /// A frame header arriving from the peer, before yamux reads it.
    pub(super) fn arriving(&self, header: Header) -> Arrival {
        if !header.carries_data() {
            return Arrival::Pass;
        }
        let mut streams = lock(&self.streams);
        // A stream the peer opens comes with its first frame, before yamux hands it over; a
        // SYN that also resets opens nothing (yamux ignores it).
        let backlog = match streams.entry(header.stream) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) if header.flags & (FLAG_SYN | FLAG_RST) == FLAG_SYN => {
                entry.insert(Backlog::default())
            }
            Entry::Vacant(_) => return Arrival::Pass,
        };
        if backlog.cut_off {
            return Arrival::Discard;
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
        backlog.cut_off = true;
        backlog.small = VecDeque::new();
        drop(streams);
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
        lock(&self.streams).len()
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
        assert_eq!(lock(&backlogs.streams)[&1].small.len(), 2);
        taken.store(10, Ordering::Relaxed);
        backlogs.arriving(data(0, 1, 10));
        assert_eq!(lock(&backlogs.streams)[&1].small.len(), 2);
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
        assert_eq!(lock(&backlogs.streams)[&2].received, 3);
        taken.fetch_add(3, Ordering::Relaxed);
        // A SYN that also resets opens nothing.
        backlogs.arriving(data(FLAG_SYN | FLAG_RST, 4, 3));
        assert_eq!(backlogs.followed(), 1);
        backlogs.untrack(2);
        assert_eq!(backlogs.followed(), 0);
    }
}

#[cfg(test)]
#[path = "backlog_tests.rs"]
mod connection_tests;
