//! Async reading and writing of the wire format's frames, stream headers and replies over any
//! byte stream. The formats themselves are pure functions in [`crate::proto`]; this is where
//! they meet sockets.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::frame::{self, FrameTooLarge, HEADER_LEN};
use crate::proto::header;
use crate::proto::{DecodeError, StreamHeader, StreamReply};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The announced length exceeds the cap; nothing was allocated for it.
    #[error(transparent)]
    TooLarge(#[from] FrameTooLarge),
    /// The stream ended cleanly before a frame started.
    #[error("connection closed")]
    Closed,
    /// The stream ended or failed inside a frame.
    #[error("i/o error reading frame")]
    Io(#[source] std::io::Error),
}

/// Reads exactly one frame (no read-ahead past its end). The payload buffer is allocated only
/// after the length passed the cap.
pub async fn read_frame<R: AsyncRead + Unpin>(io: &mut R, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; HEADER_LEN];
    let first = io.read(&mut prefix).await.map_err(FrameError::Io)?;
    if first == 0 {
        return Err(FrameError::Closed);
    }
    io.read_exact(&mut prefix[first..]).await.map_err(FrameError::Io)?;
    let len = frame::payload_len(prefix, max)?;
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.map_err(FrameError::Io)?;
    Ok(payload)
}

/// Writes already-encoded frame bytes and flushes them.
pub async fn write_frame<W: AsyncWrite + Unpin>(io: &mut W, frame: &[u8]) -> std::io::Result<()> {
    io.write_all(frame).await?;
    io.flush().await
}

/// Why a stream header or reply could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The stream failed or ended before the header was complete.
    #[error("reading stream header")]
    Io(#[from] std::io::Error),
    /// The header bytes are malformed.
    #[error("malformed stream header")]
    Decode(#[from] DecodeError),
}

impl HeaderError {
    /// Whether the peer reset the stream before the header or reply was whole: what a server
    /// does to a stream past its limit of a session's streams.
    pub fn is_reset(&self) -> bool {
        matches!(self, Self::Io(err) if err.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

/// Reads one stream header from the front of a stream, consuming nothing after it.
pub async fn read_header<R: AsyncRead + Unpin>(io: &mut R) -> Result<StreamHeader, HeaderError> {
    Ok(StreamHeader::decode(&read_body(io, "stream header").await?)?)
}

/// Reads one stream reply from the front of a stream, consuming nothing after it.
pub async fn read_reply<R: AsyncRead + Unpin>(io: &mut R) -> Result<StreamReply, HeaderError> {
    Ok(StreamReply::decode(&read_body(io, "stream reply").await?)?)
}

/// Reads a `u16`-length-prefixed body, capped at [`header::MAX_HEADER_LEN`] before allocating.
async fn read_body<R: AsyncRead + Unpin>(io: &mut R, what: &'static str) -> Result<Vec<u8>, HeaderError> {
    let len = header::body_len(io.read_u16().await?, what)?;
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::proto::frame::encode_to_vec;

    #[tokio::test]
    async fn a_frame_read_consumes_exactly_one_frame() {
        let mut bytes = encode_to_vec(b"one");
        bytes.extend_from_slice(b"rest");
        let mut cursor = &bytes[..];
        assert_eq!(read_frame(&mut cursor, 16).await.unwrap(), b"one");
        assert_eq!(cursor, b"rest");
    }

    #[tokio::test]
    async fn a_clean_close_and_a_truncated_frame_are_told_apart() {
        let mut empty: &[u8] = &[];
        assert!(matches!(read_frame(&mut empty, 16).await, Err(FrameError::Closed)));
        let mut cut: &[u8] = &[0, 0, 0, 9, 1];
        assert!(matches!(read_frame(&mut cut, 16).await, Err(FrameError::Io(_))));
    }

    #[tokio::test]
    async fn a_header_read_leaves_the_payload_unread() {
        let visitor: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let header = StreamHeader::RemoteForward { forward_id: 3, visitor };
        let mut bytes = header.encode();
        bytes.extend_from_slice(b"payload");
        let mut cursor = &bytes[..];
        assert_eq!(read_header(&mut cursor).await.unwrap(), header);
        assert_eq!(cursor, b"payload");
        let reply = StreamReply::refuse(crate::proto::ReplyStatus::Denied, "no");
        assert_eq!(read_reply(&mut &reply.encode()[..]).await.unwrap(), reply);
    }

    #[tokio::test]
    async fn an_oversized_header_is_refused_before_allocation() {
        let mut cursor: &[u8] = &[0xff, 0xff];
        let err = read_header(&mut cursor).await.unwrap_err();
        assert!(matches!(err, HeaderError::Decode(DecodeError::TooLong { .. })), "{err:?}");
    }
}
