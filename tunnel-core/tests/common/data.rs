//! Test data both ends can check: a deterministic byte pattern, its hash, and an exchange that
//! writes one pattern while hashing what comes back.

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Deterministic pseudo-random bytes (xorshift), so both ends can hash what they expect.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }

    /// SHA-256 of the first `len` bytes of the pattern.
    pub fn digest(seed: u64, len: usize) -> [u8; 32] {
        let mut pattern = Self::new(seed);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len());
            pattern.fill(&mut buf[..n]);
            hash.update(&buf[..n]);
            left -= n;
        }
        hash.finalize().into()
    }
}

/// Writes the first `len` bytes of pattern `seed`.
pub async fn write_pattern<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    seed: u64,
    len: usize,
) -> std::io::Result<()> {
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        pattern.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n;
    }
    Ok(())
}

/// Writes `len` pattern bytes then half-closes, while reading everything the peer sends.
/// Returns the SHA-256 and length of what was read.
pub async fn exchange(tcp: TcpStream, seed: u64, len: usize) -> std::io::Result<([u8; 32], usize)> {
    let (mut r, mut w) = tcp.into_split();
    let writer = async move {
        write_pattern(&mut w, seed, len).await?;
        w.shutdown().await
    };
    let reader = async move {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>((hash.finalize().into(), total));
            }
            hash.update(&buf[..n]);
            total += n;
        }
    };
    let ((), received) = tokio::try_join!(writer, reader)?;
    Ok(received)
}
