//! yamux's frames as the bytes under it carry them: headers found however the bytes are cut
//! ([`FrameCursor`]), read without yamux's help.
//!
//! A header is version, type, flags, stream id and length, big-endian; only data frames have
//! a body, of `length` bytes.

/// A frame header's length.
pub(super) const HEADER_LEN: usize = 12;
/// The one frame type with a body, of `length` bytes.
pub(super) const TYPE_DATA: u8 = 0;
pub(super) const FLAG_SYN: u16 = 0x1;
pub(super) const FLAG_FIN: u16 = 0x4;
pub(super) const FLAG_RST: u16 = 0x8;

/// The one other frame type about a stream (pings and go-aways are about the connection).
pub(super) const TYPE_WINDOW_UPDATE: u8 = 1;
#[cfg(test)]
pub(super) const TYPE_PING: u8 = 2;
/// The end of the connection; its length is an error code (0: a normal end).
pub(super) const TYPE_GO_AWAY: u8 = 3;

/// The parts of a frame header that say how a stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) kind: u8,
    pub(super) flags: u16,
    pub(super) stream: u32,
    /// A data frame's body length (a window update's credit).
    pub(super) length: u32,
}

impl Header {
    /// Whether its flags may open, end or reset a stream: a ping's or a go-away's never do.
    pub(super) fn is_about_a_stream(&self) -> bool {
        matches!(self.kind, TYPE_DATA | TYPE_WINDOW_UPDATE)
    }

    /// Whether it opens, ends or resets a stream.
    pub(super) fn ends_or_opens(&self) -> bool {
        self.is_about_a_stream() && self.flags & (FLAG_SYN | FLAG_FIN | FLAG_RST) != 0
    }

    pub(super) fn carries_data(&self) -> bool {
        self.kind == TYPE_DATA && self.length > 0
    }
}

/// Follows the frames of a byte stream handed over in pieces of any size, reporting each
/// header once it is whole. It only observes, or rewrites a header's flags
/// ([`FrameCursor::pass_whole`]): yamux validates the frames itself.
#[derive(Debug, Default)]
pub(super) struct FrameCursor {
    header: [u8; HEADER_LEN],
    /// Bytes of `header` filled so far.
    have: usize,
    /// Body bytes of the current frame not yet passed.
    body_left: u32,
}

impl FrameCursor {
    /// Between two frames: a frame of our own may be written here.
    pub(super) fn at_boundary(&self) -> bool {
        self.have == 0 && self.body_left == 0
    }

    /// Passes `bytes`, calling `on_header` for each header completed in them.
    pub(super) fn feed(&mut self, mut bytes: &[u8], mut on_header: impl FnMut(Header)) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let skip = bytes.len().min(self.body_left as usize);
                // `skip` is at most `body_left`, a u32.
                self.body_left -= skip as u32;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (HEADER_LEN - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have == HEADER_LEN {
                self.have = 0;
                let h = &self.header;
                self.body_left = body_length(h);
                on_header(decode(h));
            }
        }
    }

    /// Passes `bytes` read off the connection, calling `on_header` for each header in them,
    /// which may rewrite its flags (never its length) before yamux reads it. A header cut off
    /// at the end is held here, not handed on, so that yamux only ever sees whole headers
    /// this side has looked at: returns how many of `bytes` go on. Complete a held header with
    /// [`FrameCursor::add_to_held`] before passing more.
    pub(super) fn pass_whole(
        &mut self,
        bytes: &mut [u8],
        mut on_header: impl FnMut(&mut [u8; HEADER_LEN]),
    ) -> usize {
        debug_assert!(self.have == 0, "a held header is completed first");
        let mut at = 0;
        while at < bytes.len() {
            if self.body_left > 0 {
                let skip = (bytes.len() - at).min(self.body_left as usize);
                // `skip` is at most `body_left`, a u32.
                self.body_left -= skip as u32;
                at += skip;
                continue;
            }
            let Some(header) = bytes[at..].first_chunk_mut::<HEADER_LEN>() else {
                let part = &bytes[at..];
                self.header[..part.len()].copy_from_slice(part);
                self.have = part.len();
                return at;
            };
            on_header(header);
            self.body_left = body_length(header);
            at += HEADER_LEN;
        }
        at
    }

    /// Bytes the held header still lacks: none when none is held.
    pub(super) fn held_lacks(&self) -> usize {
        if self.have == 0 {
            0
        } else {
            HEADER_LEN - self.have
        }
    }

    /// Adds `more` (at most [`FrameCursor::held_lacks`] bytes) to the held header. Once it is
    /// whole, calls `on_header` on it (as [`FrameCursor::pass_whole`] does) and returns it, to
    /// be handed on.
    pub(super) fn add_to_held(
        &mut self,
        more: &[u8],
        on_header: impl FnOnce(&mut [u8; HEADER_LEN]),
    ) -> Option<[u8; HEADER_LEN]> {
        let take = more.len().min(self.held_lacks());
        self.header[self.have..self.have + take].copy_from_slice(&more[..take]);
        self.have += take;
        if self.have < HEADER_LEN {
            return None;
        }
        self.have = 0;
        on_header(&mut self.header);
        self.body_left = body_length(&self.header);
        Some(self.header)
    }
}

/// The body that follows a header: a data frame's length, none for the other types.
fn body_length(h: &[u8; HEADER_LEN]) -> u32 {
    if h[1] == TYPE_DATA {
        u32::from_be_bytes([h[8], h[9], h[10], h[11]])
    } else {
        0
    }
}

/// The header `bytes` begin with, if they hold a whole one.
pub(super) fn peek_header(bytes: &[u8]) -> Option<Header> {
    bytes.first_chunk::<HEADER_LEN>().map(decode)
}

pub(super) fn decode(h: &[u8; HEADER_LEN]) -> Header {
    Header {
        kind: h[1],
        flags: u16::from_be_bytes([h[2], h[3]]),
        stream: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        length: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
    }
}

/// A data frame of no body that resets `stream`.
pub(super) fn reset_frame(stream: u32) -> [u8; HEADER_LEN] {
    let mut frame = [0; HEADER_LEN];
    frame[1] = TYPE_DATA;
    frame[2..4].copy_from_slice(&FLAG_RST.to_be_bytes());
    frame[4..8].copy_from_slice(&stream.to_be_bytes());
    frame
}

/// Makes the data frame header in `h` one for no stream (stream 0, no flags): yamux drops its
/// body unread, and changes nothing else.
pub(super) fn rewrite_as_nothing(h: &mut [u8; HEADER_LEN]) {
    h[2..8].fill(0);
}

/// Makes the header in `h` one yamux cannot read (an unknown version), ending the connection.
pub(super) fn rewrite_as_unreadable(h: &mut [u8; HEADER_LEN]) {
    h[0] = u8::MAX;
}

/// Makes the header in `h` reset its stream instead: yamux drops a reset's body unread.
pub(super) fn rewrite_as_reset(h: &mut [u8; HEADER_LEN]) {
    h[2..4].copy_from_slice(&FLAG_RST.to_be_bytes());
}

/// Headers of data frames with no body, for tests.
#[cfg(test)]
pub(super) mod test_headers {
    use super::*;

    pub(in super::super) fn data(flags: u16, stream: u32) -> Header {
        Header { kind: TYPE_DATA, flags, stream, length: 0 }
    }

    pub(in super::super) fn syn(stream: u32) -> Header {
        data(FLAG_SYN, stream)
    }

    pub(in super::super) fn fin(stream: u32) -> Header {
        data(FLAG_FIN, stream)
    }

    pub(in super::super) fn rst(stream: u32) -> Header {
        data(FLAG_RST, stream)
    }
}

#[cfg(test)]
mod tests {
    use super::test_headers::{fin, rst, syn};
    use super::*;

    fn header(flags: u16, stream: u32, kind: u8, length: u32) -> Vec<u8> {
        let mut h = vec![0, kind];
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&stream.to_be_bytes());
        h.extend_from_slice(&length.to_be_bytes());
        h
    }

    #[test]
    fn headers_are_found_however_the_bytes_are_cut() {
        // A data frame with a body, a window update (its length is credit, not a body), a
        // data frame of no body, another with a body.
        let mut wire = header(FLAG_SYN, 1, TYPE_DATA, 5);
        wire.extend_from_slice(b"hello");
        wire.extend(header(0, 1, 1, 256 * 1024));
        wire.extend(header(FLAG_FIN, 3, TYPE_DATA, 0));
        wire.extend(header(FLAG_RST, 5, TYPE_DATA, 3));
        wire.extend_from_slice(b"abc");
        let expected = vec![
            Header { length: 5, ..syn(1) },
            Header { kind: 1, flags: 0, stream: 1, length: 256 * 1024 },
            fin(3),
            Header { length: 3, ..rst(5) },
        ];
        for piece in 1..=wire.len() {
            let mut cursor = FrameCursor::default();
            let mut seen = Vec::new();
            for chunk in wire.chunks(piece) {
                cursor.feed(chunk, |h| seen.push(h));
            }
            assert_eq!(seen, expected, "pieces of {piece} bytes");
            assert!(cursor.at_boundary());
        }
        let mut cursor = FrameCursor::default();
        cursor.feed(&wire[..15], |_| {});
        assert!(!cursor.at_boundary(), "inside a body");
        cursor.feed(&wire[15..20], |_| {});
        assert!(!cursor.at_boundary(), "inside a header");
        assert_eq!(peek_header(&wire[29..]), Some(fin(3)));
        assert_eq!(peek_header(&wire[29..40]), None);
    }

    #[test]
    fn a_body_as_long_as_u32_allows_does_not_wrap() {
        let mut cursor = FrameCursor::default();
        let mut seen = 0;
        cursor.feed(&header(0, 1, TYPE_DATA, u32::MAX), |_| seen += 1);
        cursor.feed(&[0; 4096], |_| seen += 1);
        assert_eq!((seen, cursor.body_left), (1, u32::MAX - 4096));
    }
}
