//! The header that starts every data stream and names its route.
//!
//! Layout: a `u16` length, then a kind byte and its fields. The opener writes the header and
//! then the payload bytes without waiting for an answer, so a stream costs no extra round trip.
//! Kinds are reserved for later capabilities: 2 local forward, 3 HTTP, 4 UDP flow.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::wire::{Reader, Writer};
use super::DecodeError;

const REMOTE_FORWARD: u8 = 1;

/// Largest header accepted; headers are tiny, so anything larger is hostile.
pub const MAX_HEADER_LEN: usize = 1024;

/// The route of one data stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamHeader {
    /// A visitor reached a remote forward's public port; the receiver connects it to its target.
    RemoteForward {
        /// Id the client gave the forward in its request.
        forward_id: u32,
        /// The visitor's address as the server saw it.
        visitor: SocketAddr,
    },
}

impl StreamHeader {
    /// Encodes the header with its length prefix, ready to write on a fresh stream.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Writer::new();
        match self {
            Self::RemoteForward { forward_id, visitor } => {
                body.u8(REMOTE_FORWARD).u32(*forward_id).socket_addr(*visitor);
            }
        }
        let body = body.finish();
        let mut out = Writer::new();
        out.u16(u16::try_from(body.len()).unwrap_or(u16::MAX)).bytes(&body);
        out.finish()
    }

    /// Decodes a header body (after the length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        match r.u8("kind")? {
            REMOTE_FORWARD => Ok(Self::RemoteForward {
                forward_id: r.u32("forward_id")?,
                visitor: r.socket_addr("visitor")?,
            }),
            other => Err(DecodeError::UnknownType { kind: "stream header", value: other }),
        }
    }

    /// Reads one header from the front of a stream, consuming nothing after it.
    pub async fn read<R: AsyncRead + Unpin>(io: &mut R) -> Result<Self, HeaderError> {
        let len = usize::from(io.read_u16().await?);
        if len > MAX_HEADER_LEN {
            return Err(DecodeError::TooLong { field: "stream header", len, max: MAX_HEADER_LEN }.into());
        }
        let mut body = vec![0u8; len];
        io.read_exact(&mut body).await?;
        Ok(Self::decode(&body)?)
    }
}

/// Why a stream header could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The stream failed or ended before the header was complete.
    #[error("reading stream header: {0}")]
    Io(#[from] std::io::Error),
    /// The header bytes are malformed.
    #[error("malformed stream header: {0}")]
    Decode(#[from] DecodeError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn header_round_trips_and_leaves_payload_unread() {
        let header = StreamHeader::RemoteForward { forward_id: 9, visitor: "10.1.2.3:5555".parse().unwrap() };
        let mut bytes = header.encode();
        bytes.extend_from_slice(b"payload");
        let mut cursor = &bytes[..];
        assert_eq!(StreamHeader::read(&mut cursor).await.unwrap(), header);
        assert_eq!(cursor, b"payload");
    }

    #[tokio::test]
    async fn oversized_header_is_refused_before_allocation() {
        let mut cursor: &[u8] = &[0xff, 0xff];
        let err = StreamHeader::read(&mut cursor).await.unwrap_err();
        assert!(matches!(err, HeaderError::Decode(DecodeError::TooLong { .. })));
    }
}
