//! How each stream ended, read off the frames: a reset told from a FIN, which yamux does not.
//!
//! yamux 0.14 closes a stream the same way for the peer's FIN after ours and for the peer's
//! reset, and it cannot reset a stream once either side has sent its FIN (dropping the stream
//! then sends a FIN, or nothing). Both matter to a tunnel: a visitor that sent its request and
//! its FIN must see the target's reset as a reset, never as a complete reply.
//!
//! So the byte stream under yamux is followed frame by frame, headers only ([`super::frames::FrameCursor`]),
//! and [`StreamEnds`] keeps, for each stream while it lives, the FIN and RST flags seen either
//! way. A reset of our own, for a half-closed stream, is a frame we write between two of
//! yamux's: the peer's yamux closes the stream on it, and its [`StreamEnds`] says why.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::frames::{reset_frame, Header, FLAG_FIN, FLAG_RST, FLAG_SYN};

/// Most streams of one connection followed at once. yamux's own stream limit is far lower;
/// past this one (a peer opening streams it never closes, through some gap in the limits), a
/// new stream's reset reads as an end of stream, as it did before the frames were followed.
const MOST_FOLLOWED: usize = 16 * 1024;

/// Flags seen for one stream.
const FIN_RECEIVED: u8 = 1;
const FIN_SENT: u8 = 2;
const RESET_RECEIVED: u8 = 4;
/// We reset the stream: a reset frame goes right before the FIN yamux has yet to write.
const RESET_BEFORE_FIN: u8 = 8;
/// Dropped after our FIN with the peer still sending: its next data is answered with a reset,
/// as TCP answers data for a closed socket (yamux would ignore it, and the peer's writes would
/// hang once its window ran out).
const ABANDONED: u8 = 16;
/// An abandoned stream got data before our FIN went out: the reset goes right after that FIN,
/// so the peer still gets everything we sent, and our end.
const RESET_AFTER_FIN: u8 = 32;

/// The ends seen for the streams of one connection, and the resets of our own waiting to be
/// written. A stream is followed from its SYN (either way) until both FINs have passed, a
/// reset has, or its [`super::MuxStream`] is dropped (unless a reset of ours still depends on
/// what comes next).
#[derive(Debug, Default)]
pub(super) struct StreamEnds {
    streams: Mutex<HashMap<u32, u8>>,
    /// Streams marked [`RESET_BEFORE_FIN`], so the writer looks at headers only while some are.
    waiting: AtomicUsize,
    /// Streams marked [`ABANDONED`], so the reader looks at data frames only while some are.
    abandoned: AtomicUsize,
    /// Reset frames for the writer to put between two of yamux's frames.
    queued: Mutex<Vec<u8>>,
    has_queued: AtomicBool,
}

impl StreamEnds {
    /// A frame header the peer sent.
    pub(super) fn received(&self, header: Header) {
        let watched =
            header.ends_or_opens() || (header.carries_data() && self.abandoned.load(Ordering::Acquire) > 0);
        if !watched {
            return;
        }
        let mut streams = self.streams();
        // yamux ignores a SYN that also resets.
        let opens = header.flags & (FLAG_SYN | FLAG_RST) == FLAG_SYN;
        if opens && streams.len() < MOST_FOLLOWED {
            streams.entry(header.stream).or_insert(0);
        }
        let Some(seen) = streams.get_mut(&header.stream) else { return };
        if *seen & ABANDONED != 0 {
            let reset = header.flags & FLAG_RST != 0;
            if *seen & RESET_AFTER_FIN != 0 && !reset {
                // Data went unread: the reset still follows our FIN, whatever comes after.
            } else if header.carries_data() && !reset && *seen & FIN_SENT == 0 {
                *seen |= RESET_AFTER_FIN;
            } else if reset || header.carries_data() || header.flags & FLAG_FIN != 0 {
                let answer = header.carries_data() && !reset && *seen & RESET_AFTER_FIN == 0;
                self.end(streams, header.stream, answer);
            }
        } else if header.flags & FLAG_RST != 0 {
            if *seen & RESET_BEFORE_FIN != 0 {
                // Reset both ways: yamux writes nothing more for it, and nobody reads it.
                self.end(streams, header.stream, false);
            } else {
                *seen |= RESET_RECEIVED;
            }
        } else if header.flags & FLAG_FIN != 0 {
            *seen |= FIN_RECEIVED;
            if *seen == FIN_RECEIVED | FIN_SENT {
                streams.remove(&header.stream);
            }
        }
    }

    /// A frame header yamux wrote.
    pub(super) fn sent(&self, header: Header) {
        if !header.ends_or_opens() {
            return;
        }
        let mut streams = self.streams();
        if header.flags & (FLAG_SYN | FLAG_RST) == FLAG_SYN && streams.len() < MOST_FOLLOWED {
            streams.entry(header.stream).or_insert(0);
        }
        if header.flags & FLAG_RST != 0 {
            return self.end(streams, header.stream, false);
        }
        let Some(seen) = streams.get_mut(&header.stream) else { return };
        if header.flags & FLAG_FIN != 0 {
            *seen |= FIN_SENT;
            if *seen & (RESET_BEFORE_FIN | RESET_AFTER_FIN) != 0 {
                // Reset while this FIN was already on its way out, or an abandoned stream's
                // answer that waited for it: the reset follows it.
                self.end(streams, header.stream, true);
            } else if *seen == FIN_RECEIVED | FIN_SENT {
                streams.remove(&header.stream);
            }
        }
    }

    /// A frame header yamux is about to write: a reset waiting for this FIN is queued, to go
    /// first.
    pub(super) fn before_sending(&self, header: Header) {
        if !header.ends_or_opens() || header.flags & FLAG_FIN == 0 || !self.resets_waiting() {
            return;
        }
        let streams = self.streams();
        if streams.get(&header.stream).is_some_and(|seen| seen & RESET_BEFORE_FIN != 0) {
            self.end(streams, header.stream, true);
        }
    }

    /// Whether a reset of ours waits for a FIN yamux has yet to write.
    pub(super) fn resets_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// Whether the peer reset `stream`.
    pub(super) fn was_reset(&self, stream: u32) -> bool {
        self.streams().get(&stream).is_some_and(|seen| seen & RESET_RECEIVED != 0)
    }

    /// Resets `stream`, a live stream whose writes we shut down (our FIN is queued or out),
    /// with a frame of our own that follows everything yamux had for it: at once if our FIN
    /// is out (or the stream is not followed), else right before that FIN. Nothing when the
    /// peer reset it already or a reset of ours is on its way.
    pub(super) fn reset(&self, stream: u32) {
        let mut streams = self.streams();
        match streams.get(&stream).copied() {
            Some(seen) if seen & (RESET_RECEIVED | RESET_BEFORE_FIN | ABANDONED) != 0 => {}
            Some(seen) if seen & FIN_SENT == 0 => {
                streams.insert(stream, seen | RESET_BEFORE_FIN);
                self.waiting.fetch_add(1, Ordering::AcqRel);
            }
            Some(_) | None => self.end(streams, stream, true),
        }
    }

    /// The reader of `stream` is gone (`write_closed`: after shutting its writes down;
    /// `live`: yamux has not closed it and the connection is up). Not shut down, it waits for
    /// yamux's last frame on it: its RST, or a FIN our reset goes before; shut down with the
    /// peer still sending, it is [`ABANDONED`]; otherwise no longer followed.
    pub(super) fn dropped(&self, stream: u32, write_closed: bool, live: bool) {
        let mut streams = self.streams();
        let Some(seen) = streams.get_mut(&stream) else { return };
        if *seen & (RESET_BEFORE_FIN | ABANDONED) != 0 {
            return;
        }
        if live && !write_closed && *seen & RESET_RECEIVED == 0 {
            // yamux writes an RST for it (open both ways), which ends the wait, or a FIN (the
            // peer's FIN came, perhaps only now), which the reset goes before.
            *seen |= RESET_BEFORE_FIN;
            self.waiting.fetch_add(1, Ordering::AcqRel);
        } else if live && write_closed && *seen & (FIN_RECEIVED | RESET_RECEIVED) == 0 {
            *seen |= ABANDONED;
            self.abandoned.fetch_add(1, Ordering::AcqRel);
        } else {
            streams.remove(&stream);
        }
    }

    /// Stops following `stream`, counting off the wait its marks held, and then, if `reset`,
    /// queues our reset of it for the writer.
    fn end(&self, mut streams: MutexGuard<'_, HashMap<u32, u8>>, stream: u32, reset: bool) {
        if let Some(seen) = streams.remove(&stream) {
            if seen & RESET_BEFORE_FIN != 0 {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
            }
            if seen & ABANDONED != 0 {
                self.abandoned.fetch_sub(1, Ordering::AcqRel);
            }
        }
        drop(streams);
        if reset {
            lock(&self.queued).extend_from_slice(&reset_frame(stream));
            self.has_queued.store(true, Ordering::Release);
        }
    }

    /// Queues a reset of `stream` for the writer, now: yamux was told the peer reset it (its
    /// unread frames were past their allowance, see [`super::backlog`]), so it writes nothing
    /// more for it, and the peer must stop sending.
    pub(super) fn cut_off(&self, stream: u32) {
        lock(&self.queued).extend_from_slice(&reset_frame(stream));
        self.has_queued.store(true, Ordering::Release);
    }

    /// The queued reset frames, if any, appended to `out`.
    pub(super) fn take_queued(&self, out: &mut Vec<u8>) {
        if self.has_queued.load(Ordering::Acquire) && self.has_queued.swap(false, Ordering::AcqRel) {
            out.append(&mut lock(&self.queued));
        }
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<u32, u8>> {
        lock(&self.streams)
    }

    #[cfg(test)]
    pub(super) fn followed(&self) -> usize {
        self.streams().len()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::super::frames::test_headers::{data, fin, rst, syn};
    use super::super::frames::FrameCursor;
    use super::*;

    fn with_body(flags: u16, stream: u32) -> Header {
        Header { length: 10, ..data(flags, stream) }
    }

    /// The frames queued for the writer, taken.
    fn queued(ends: &StreamEnds) -> Vec<Header> {
        let mut out = Vec::new();
        ends.take_queued(&mut out);
        let mut seen = Vec::new();
        let mut cursor = FrameCursor::default();
        cursor.feed(&out, |h| seen.push(h));
        assert!(cursor.at_boundary(), "whole frames");
        seen
    }

    #[test]
    fn a_reset_is_told_from_a_fin_until_the_reader_is_dropped() {
        let ends = StreamEnds::default();
        ends.sent(syn(1));
        ends.sent(fin(1));
        ends.received(rst(1));
        assert!(ends.was_reset(1));
        ends.dropped(1, true, false);
        assert!(!ends.was_reset(1));

        // Both FINs: nothing left to tell, the stream is no longer followed.
        ends.received(syn(2));
        ends.received(fin(2));
        assert!(!ends.was_reset(2));
        ends.sent(fin(2));
        assert_eq!(ends.followed(), 0);

        // A ping (SYN: a request) and a go-away are about the connection, not a stream.
        ends.received(Header { kind: 2, flags: FLAG_SYN, stream: 0, length: 7 });
        ends.sent(Header { kind: 3, flags: 0, stream: 0, length: 0 });
        assert_eq!(ends.followed(), 0);

        // Our own reset ends the following; a peer's frames for unknown streams change nothing.
        ends.received(syn(4));
        ends.sent(rst(4));
        ends.received(rst(4));
        ends.received(fin(6));
        assert_eq!(ends.followed(), 0);
    }

    #[test]
    fn a_reset_after_our_fin_goes_at_once_and_before_a_fin_yet_to_go_waits_for_it() {
        let ends = StreamEnds::default();
        // Our FIN is out: the reset goes now.
        ends.sent(syn(1));
        ends.sent(fin(1));
        ends.reset(1);
        assert_eq!(queued(&ends), vec![rst(1)]);
        assert!(queued(&ends).is_empty(), "taken once");

        // The peer's FIN came, ours is still to go (yamux sends it when the stream is
        // dropped): dropped unshut, the reset waits for that FIN.
        ends.received(syn(2));
        ends.received(fin(2));
        ends.dropped(2, false, true);
        assert!(ends.resets_waiting() && queued(&ends).is_empty());
        ends.before_sending(data(0, 2));
        ends.before_sending(fin(4));
        assert!(queued(&ends).is_empty(), "only the FIN of that stream");
        ends.before_sending(fin(2));
        assert_eq!(queued(&ends), vec![rst(2)]);
        assert!(!ends.resets_waiting());
        assert_eq!(ends.followed(), 0);

        // Reset while yamux was writing our FIN (looked at before the reset, counted after):
        // the reset follows the FIN.
        ends.sent(syn(5));
        ends.before_sending(fin(5));
        ends.reset(5);
        ends.sent(fin(5));
        assert_eq!(queued(&ends), vec![rst(5)]);
        assert!(!ends.resets_waiting());

        // Not followed (both FINs passed, or past the bound) with our FIN on its way: at once.
        ends.reset(9);
        assert_eq!(queued(&ends), vec![rst(9)]);

        // Open both ways: yamux's own reset on drop does it.
        ends.sent(syn(3));
        ends.dropped(3, false, true);
        ends.sent(rst(3));
        assert!(queued(&ends).is_empty() && !ends.resets_waiting());
        assert_eq!(ends.followed(), 0);

        // Dropped unshut while the peer's FIN is still on its way: yamux, having read it by
        // the time it acts on the drop, writes a FIN, and the reset goes before it.
        ends.received(syn(6));
        ends.dropped(6, false, true);
        ends.received(fin(6));
        ends.before_sending(fin(6));
        assert_eq!(queued(&ends), vec![rst(6)]);
        assert!(!ends.resets_waiting());
        assert_eq!(ends.followed(), 0);
    }

    #[test]
    fn a_stream_already_reset_or_reset_anyway_leaves_no_reset_waiting() {
        let ends = StreamEnds::default();
        for (stream, by_peer) in [(1, true), (3, false)] {
            ends.received(syn(stream));
            ends.received(fin(stream));
            ends.dropped(stream, false, true);
            if by_peer {
                ends.received(rst(stream));
            } else {
                ends.sent(rst(stream));
            }
            assert!(!ends.resets_waiting(), "reset by the peer: {by_peer}");
        }
        // The peer's reset header is in (its frame not yet acted on by yamux): nothing waits.
        ends.received(syn(5));
        ends.received(fin(5));
        ends.received(rst(5));
        ends.dropped(5, false, true);
        assert!(!ends.resets_waiting());
        assert_eq!(ends.followed(), 0);
        assert!(queued(&ends).is_empty());
    }

    #[test]
    fn a_stream_dropped_after_our_fin_answers_the_peers_next_data_with_a_reset() {
        let ends = StreamEnds::default();
        // The peer still sends after our FIN: its data is answered with a reset.
        ends.received(syn(2));
        ends.sent(fin(2));
        ends.dropped(2, true, true);
        ends.received(data(0, 2));
        assert!(queued(&ends).is_empty(), "a window update is no data");
        ends.received(with_body(0, 2));
        assert_eq!(queued(&ends), vec![rst(2)]);
        ends.received(with_body(0, 2));
        assert!(queued(&ends).is_empty(), "once");

        // Its FIN alone, or its reset, is the end of it.
        for end in [fin(4), rst(4)] {
            ends.received(syn(4));
            ends.sent(fin(4));
            ends.dropped(4, true, true);
            ends.received(end);
            ends.received(with_body(0, 4));
            assert!(queued(&ends).is_empty());
        }
        // The peer's data came while our own data and FIN were still queued: the reset waits
        // until they are out.
        ends.received(syn(8));
        ends.dropped(8, true, true);
        ends.received(with_body(0, 8));
        ends.received(with_body(0, 8));
        ends.received(fin(8));
        assert!(queued(&ends).is_empty());
        ends.sent(fin(8));
        assert_eq!(queued(&ends), vec![rst(8)]);

        // Its FIN came before the drop: nothing to wait for.
        ends.received(syn(6));
        ends.received(fin(6));
        ends.dropped(6, true, true);
        assert_eq!(ends.followed(), 0);
        assert_eq!(ends.abandoned.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_peer_opening_streams_without_end_is_followed_up_to_a_bound() {
        let ends = StreamEnds::default();
        for stream in 0..MOST_FOLLOWED as u32 + 10 {
            ends.received(syn(stream));
        }
        assert_eq!(ends.followed(), MOST_FOLLOWED);
        // A SYN that also resets is ignored by yamux: it opens nothing here either.
        let ends = StreamEnds::default();
        for stream in 0..100 {
            ends.received(data(FLAG_SYN | FLAG_RST, stream));
        }
        assert_eq!(ends.followed(), 0);
    }
}
