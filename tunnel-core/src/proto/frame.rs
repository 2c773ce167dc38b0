//! Length-prefixed frames: a 4-byte big-endian length, then that many payload bytes.
//!
//! Used for the handshake (on the raw TLS stream) and for the control stream. The length is
//! checked against a cap before anything is allocated, and readers consume exactly one frame so
//! that the bytes after the handshake are left for the multiplexer.

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// A frame's announced length exceeds the cap; nothing was allocated for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame of {len} bytes exceeds the {max}-byte limit")]
pub struct FrameTooLarge {
    /// Length announced by the peer.
    pub len: u64,
    /// Largest length accepted.
    pub max: usize,
}

/// Checks a frame's length prefix against `max` and returns the payload length.
pub fn payload_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameTooLarge> {
    let len = u32::from_be_bytes(header);
    match usize::try_from(len) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(FrameTooLarge { len: u64::from(len), max }),
    }
}

/// Splits one frame off the front of `buf`: `Ok(None)` means more bytes are needed.
/// Returns the payload and the total number of bytes the frame occupies.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameTooLarge> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = payload_len(*header, max)?;
    let total = HEADER_LEN + len;
    Ok(buf.get(HEADER_LEN..total).map(|payload| (payload, total)))
}

/// Appends `payload` as one frame to `out`.
///
/// # Panics
/// If `payload` is longer than `u32::MAX`; every encoder in this crate caps its output far below.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("frame payload exceeds u32::MAX");
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Wraps `payload` in a new frame.
pub fn encode_to_vec(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode(payload, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_waits_for_a_whole_frame() {
        let frame = encode_to_vec(b"hello");
        for cut in 0..frame.len() {
            assert!(decode(&frame[..cut], 64).unwrap().is_none(), "cut at {cut}");
        }
        let (payload, used) = decode(&frame, 64).unwrap().unwrap();
        assert_eq!((payload, used), (&b"hello"[..], frame.len()));
    }

    #[test]
    fn oversized_length_is_refused_from_the_header_alone() {
        let err = decode(&[0xff, 0xff, 0xff, 0xff], 1024).unwrap_err();
        assert_eq!(err, FrameTooLarge { len: 0xffff_ffff, max: 1024 });
    }
}
