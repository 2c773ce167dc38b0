use tokio::io::{AsyncRead, AsyncWrite};

/// Buffer per direction: large enough that one read fills several mux frames.
pub const COPY_BUFFER: usize = 64 * 1024;

/// Bytes carried by a finished [`splice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpliceStats {
    /// From `a` to `b`.
    pub a_to_b: u64,
    /// From `b` to `a`.
    pub b_to_a: u64,
}

/// Copies both ways until both directions finished. When one side ends its writes (FIN), the
/// other side's write half is shut down and the opposite direction keeps flowing, so a visitor
/// that half-closes still receives the whole reply.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> std::io::Result<SpliceStats>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (a_to_b, b_to_a) = tokio::io::copy_bidirectional_with_sizes(a, b, COPY_BUFFER, COPY_BUFFER).await?;
    Ok(SpliceStats { a_to_b, b_to_a })
}
