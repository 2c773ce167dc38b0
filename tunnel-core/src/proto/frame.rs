//! Length-prefixed frames: a 4-byte big-endian length, then that many payload bytes.
//!
//! Used for the handshake (on the raw TLS stream) and for the control stream. The length is
//! checked against a cap before anything is allocated, and readers consume exactly one frame so
//! that the bytes after the handshake are left for the multiplexer.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The announced length exceeds the cap; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Length announced by the peer.
        len: u64,
        /// Largest length accepted.
        max: usize,
    },
    /// The stream ended cleanly before a frame started.
    #[error("connection closed")]
    Closed,
    /// The stream ended or failed inside a frame.
    #[error("i/o error reading frame: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks a frame's length prefix against `max` and returns the payload length.
pub fn payload_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header);
    match usize::try_from(len) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(FrameError::TooLarge { len: u64::from(len), max }),
    }
}

/// Splits one frame off the front of `buf`: `Ok(None)` means more bytes are needed.
/// Returns the payload and the total number of bytes the frame occupies.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
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

/// Reads exactly one frame (no read-ahead past its end). The payload buffer is allocated only
/// after the length passed the cap.
pub async fn read<R: AsyncRead + Unpin>(io: &mut R, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let first = io.read(&mut header).await?;
    if first == 0 {
        return Err(FrameError::Closed);
    }
    io.read_exact(&mut header[first..]).await?;
    let len = payload_len(header, max)?;
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await?;
    Ok(payload)
}

/// Writes already-encoded frame bytes and flushes them.
pub async fn write<W: AsyncWrite + Unpin>(io: &mut W, frame: &[u8]) -> std::io::Result<()> {
    io.write_all(frame).await?;
    io.flush().await
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
        assert!(matches!(err, FrameError::TooLarge { len: 0xffff_ffff, max: 1024 }));
    }

    #[tokio::test]
    async fn read_consumes_exactly_one_frame() {
        let mut bytes = encode_to_vec(b"one");
        bytes.extend_from_slice(b"rest");
        let mut cursor = &bytes[..];
        assert_eq!(read(&mut cursor, 16).await.unwrap(), b"one");
        assert_eq!(cursor, b"rest");
    }

    #[tokio::test]
    async fn read_reports_a_clean_close_and_a_truncation_apart() {
        let mut empty: &[u8] = &[];
        assert!(matches!(read(&mut empty, 16).await, Err(FrameError::Closed)));
        let mut cut: &[u8] = &[0, 0, 0, 9, 1];
        assert!(matches!(read(&mut cut, 16).await, Err(FrameError::Io(_))));
    }
}
