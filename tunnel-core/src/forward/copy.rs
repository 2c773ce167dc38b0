//! Copying between a visitor's socket and a mux stream, with buffers sized by the traffic.
//!
//! A forwarded connection often idles for minutes (watches, keep-alive pools) and, on a busy
//! tunnel, there are thousands of them. Each direction therefore starts with reads of 1 KiB and
//! asks four times as much after each read that filled what it asked for, up to 64 KiB for bulk
//! transfers. Reads of up to 4 KiB are made into a buffer on the stack of the poll and written
//! from there, so such a direction holds no buffer while it waits, only what a writer did not
//! take yet; a direction whose reads grew past 4 KiB keeps its buffer (16 or 64 KiB) for the
//! rest of the connection. An idle stream that never carried more than 4 KiB at a time thus
//! costs no copy buffer at all, not the 128 KiB that two full-size buffers would pin.

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest buffer per direction: large enough that one read fills several mux frames.
pub const COPY_BUFFER: usize = 64 * 1024;

/// First read size per direction.
const INITIAL_BUFFER: usize = 1024;

/// Reads of up to this size are made on the stack of the poll.
const STACK_READ: usize = 4 * 1024;

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
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<SpliceStats>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    splice_with(a, b, SpliceLimits::default()).await
}

/// Limits on one [`splice_with`].
#[derive(Debug, Clone, Default)]
pub struct SpliceLimits {
    /// End the splice with [`io::ErrorKind::TimedOut`] after this long without a byte copied
    /// either way.
    pub idle_timeout: Option<Duration>,
}

/// [`splice`] within `limits`: an idle one fails with [`io::ErrorKind::TimedOut`], and the
/// caller then resets both sides.
pub async fn splice_with<A, B>(a: &mut A, b: &mut B, limits: SpliceLimits) -> io::Result<SpliceStats>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    splice_metered(a, b, limits, None).await
}

/// [`splice_with`] between a visitor (`a`) and its stream (`b`), counting the bytes in `meter`
/// as they are written, so that a long connection shows in the metrics while it lasts.
pub(crate) async fn splice_metered<A, B>(
    a: &mut A,
    b: &mut B,
    limits: SpliceLimits,
    meter: Option<&crate::metrics::Meter>,
) -> io::Result<SpliceStats>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_to_b, mut b_to_a) = (Pipe::default(), Pipe::default());
    if let Some(meter) = meter {
        a_to_b.tally = Some(meter.from_visitor.clone());
        b_to_a.tally = Some(meter.to_visitor.clone());
    }
    let mut idle = limits.idle_timeout.map(|after| (after, Box::pin(tokio::time::sleep(after))));
    let mut seen = 0;
    poll_fn(|cx| {
        let forward = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let backward = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        if let (Poll::Ready(a_to_b), Poll::Ready(b_to_a)) = (forward, backward) {
            return Poll::Ready(Ok(SpliceStats { a_to_b, b_to_a }));
        }
        if let Some((after, timer)) = &mut idle {
            let copied = a_to_b.copied + b_to_a.copied;
            if copied != seen {
                seen = copied;
                timer.as_mut().reset(crate::time::deadline(tokio::time::Instant::now(), *after));
            }
            if timer.as_mut().poll(cx).is_ready() {
                let message = format!("no data either way for {after:?}");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, message)));
            }
        }
        Poll::Pending
    })
    .await
}

/// Copies `reader` into `writer` until end of file, then shuts `writer` down; returns the
/// bytes copied. Buffers grow with the traffic as in [`splice`].
pub async fn copy_until_eof<R, W>(reader: &mut R, writer: &mut W) -> io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut pipe = Pipe::default();
    poll_fn(|cx| pipe.poll_copy(cx, Pin::new(&mut *reader), Pin::new(&mut *writer))).await
}

/// One direction of a copy.
#[derive(Debug)]
struct Pipe {
    /// Bytes asked of each read: `INITIAL_BUFFER`, growing fourfold up to `COPY_BUFFER` after
    /// each read that filled it.
    size: usize,
    /// Up to `STACK_READ`, reads are made on the stack and this holds only what the writer did
    /// not take of the last one; above it, this is the buffer each read fills (`size` bytes).
    buf: Vec<u8>,
    /// Bytes `buf[pos..end]` were read and not yet written.
    pos: usize,
    end: usize,
    /// Bytes were written since the last flush.
    unflushed: bool,
    read_done: bool,
    done: bool,
    copied: u64,
    /// Counts the bytes written, as they are.
    tally: Option<prometheus_client::metrics::counter::Counter>,
}

impl Default for Pipe {
    fn default() -> Self {
        Self {
            size: INITIAL_BUFFER,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            unflushed: false,
            read_done: false,
            done: false,
            copied: 0,
            tally: None,
        }
    }
}

impl Pipe {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(self.copied));
            }
            if self.pos == self.end && !self.read_done {
                if self.size <= STACK_READ {
                    // Read and written: what the writer did not take is in `buf[pos..end]`.
                    ready!(self.poll_small_read_and_write(cx, reader.as_mut(), writer.as_mut()))?;
                    continue;
                }
                if self.buf.len() != self.size {
                    self.buf = vec![0; self.size];
                }
                let mut read = ReadBuf::new(&mut self.buf);
                ready!(poll_read_or_flush(
                    &mut self.unflushed,
                    cx,
                    reader.as_mut(),
                    writer.as_mut(),
                    &mut read
                ))?;
                let n = read.filled().len();
                (self.pos, self.end) = (0, n);
                self.read_done = n == 0;
                self.grow_if_filled(n);
            }
            while self.pos < self.end {
                let n = ready!(writer.as_mut().poll_write(cx, &self.buf[self.pos..self.end]))?;
                self.wrote(n, self.end - self.pos)?;
                self.pos += n;
            }
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
            }
        }
    }

    /// One read of `size` (at most `STACK_READ`) bytes into the stack, written from there;
    /// only what the writer does not take now is kept, in `buf`.
    fn poll_small_read_and_write<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        // Whatever `buf` held was written: an idle direction holds nothing.
        self.buf = Vec::new();
        (self.pos, self.end) = (0, 0);
        let mut stack = [MaybeUninit::<u8>::uninit(); STACK_READ];
        let mut read = ReadBuf::uninit(&mut stack[..self.size]);
        ready!(poll_read_or_flush(&mut self.unflushed, cx, reader.as_mut(), writer.as_mut(), &mut read))?;
        let data = read.filled();
        self.read_done = data.is_empty();
        self.grow_if_filled(data.len());
        let mut written = 0;
        while written < data.len() {
            match writer.as_mut().poll_write(cx, &data[written..]) {
                Poll::Ready(n) => {
                    let n = n?;
                    self.wrote(n, data.len() - written)?;
                    written += n;
                }
                Poll::Pending => {
                    self.buf = data[written..].to_vec();
                    self.end = self.buf.len();
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// A read that filled what it asked for asks four times as much next time, up to the cap.
    fn grow_if_filled(&mut self, n: usize) {
        if n == self.size && self.size < COPY_BUFFER {
            self.size = (self.size * 4).min(COPY_BUFFER);
        }
    }

    /// Accounts for `n` bytes the writer took of the `offered`.
    fn wrote(&mut self, n: usize, offered: usize) -> io::Result<()> {
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n > offered {
            let message = format!("the writer took {n} bytes of {offered}");
            return Err(io::Error::new(io::ErrorKind::InvalidData, message));
        }
        self.copied += n as u64;
        if let Some(tally) = &self.tally {
            tally.inc_by(n as u64);
        }
        self.unflushed = true;
        Ok(())
    }
}

/// Reads into `read`; while the reader has nothing, pushes out what was written (`unflushed`).
/// A free function, so that it can take `Pipe::unflushed` while `read` borrows `Pipe::buf`.
fn poll_read_or_flush<R, W>(
    unflushed: &mut bool,
    cx: &mut Context<'_>,
    reader: Pin<&mut R>,
    writer: Pin<&mut W>,
    read: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>>
where
    R: AsyncRead + ?Sized,
    W: AsyncWrite + ?Sized,
{
    match reader.poll_read(cx, read) {
        Poll::Ready(result) => Poll::Ready(result),
        Poll::Pending => {
            if *unflushed {
                ready!(writer.poll_flush(cx))?;
                *unflushed = false;
            }
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn small_exchanges_read_on_the_stack_and_bulk_grows_a_buffer_to_the_cap() {
        let small = pipe_after(b"ping".repeat(64), 4, 1 << 20).await;
        assert!(small.size <= STACK_READ, "4-byte pieces asked for {} bytes", small.size);
        assert_eq!(small.buf.capacity(), 0);
        let bulk = pipe_after(vec![1; 4 << 20], 1 << 20, 1 << 20).await;
        assert_eq!((bulk.size, bulk.buf.len()), (COPY_BUFFER, COPY_BUFFER));
    }

    #[tokio::test(start_paused = true)]
    async fn what_a_slow_writer_leaves_of_a_stack_read_is_kept_and_written_in_order() {
        // The sink takes 7 bytes at a time, so the reads on the stack (the first ones at
        // least) are written only in part and their rest kept.
        let input: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        pipe_after(input, 600, 7).await;
    }

    #[tokio::test]
    async fn an_idle_direction_holds_no_buffer_while_it_waits_after_reads_of_up_to_4_kib() {
        let (mut source, mut source_far) = tokio::io::duplex(1 << 16);
        let (mut sink, mut sink_far) = tokio::io::duplex(1 << 16);
        let mut pipe = Pipe::default();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for (len, asks_next) in [(5, INITIAL_BUFFER), (INITIAL_BUFFER, STACK_READ), (3000, STACK_READ)] {
            source_far.write_all(&vec![b'x'; len]).await.unwrap();
            let poll = pipe.poll_copy(&mut cx, Pin::new(&mut source), Pin::new(&mut sink));
            assert!(poll.is_pending(), "the source is still open");
            assert_eq!(pipe.size, asks_next, "after a read of {len} bytes");
            assert_eq!(pipe.buf.capacity(), 0, "a buffer held after a read of {len} bytes");
            let mut got = vec![0u8; len];
            sink_far.read_exact(&mut got).await.unwrap();
            assert!(got.iter().all(|&b| b == b'x'));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn what_was_written_is_flushed_when_the_reader_has_nothing_more() {
        let (mut source, mut source_far) = tokio::io::duplex(1 << 16);
        let (sink, mut sink_far) = tokio::io::duplex(1 << 16);
        // A writer that holds what it takes until flushed, as the mux's batching does.
        let mut sink = tokio::io::BufWriter::new(sink);
        let copy = tokio::spawn(async move { copy_until_eof(&mut source, &mut sink).await });
        source_far.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        let read = tokio::time::timeout(Duration::from_secs(10), sink_far.read_exact(&mut got)).await;
        assert!(read.is_ok(), "the bytes stayed in the writer while the source was open and silent");
        assert_eq!(&got, b"hello");
        drop(source_far);
        assert_eq!(copy.await.unwrap().unwrap(), 5);
    }

    #[tokio::test]
    async fn a_writer_taking_nothing_or_more_than_it_was_given_fails_the_copy() {
        for (takes, kind) in
            [(Takes::Nothing, io::ErrorKind::WriteZero), (Takes::More, io::ErrorKind::InvalidData)]
        {
            for len in [10, 20_000] {
                let (mut source, mut source_far) = tokio::io::duplex(1 << 16);
                source_far.write_all(&vec![1; len]).await.unwrap();
                drop(source_far);
                let mut pipe = Pipe { size: len.next_power_of_two(), ..Pipe::default() };
                let mut sink = BadWriter(takes);
                let result =
                    poll_fn(|cx| pipe.poll_copy(cx, Pin::new(&mut source), Pin::new(&mut sink))).await;
                let err = result.expect_err("a copy into a broken writer succeeded");
                assert_eq!(err.kind(), kind, "{takes:?}, a read of {len} bytes: {err}");
            }
        }
    }

    #[tokio::test]
    async fn a_read_error_after_data_ends_the_copy_with_that_error_after_the_data() {
        let mut reader = FailsAfter(Some(b"partial".to_vec()));
        let (mut sink, mut sink_far) = tokio::io::duplex(1 << 16);
        let err = copy_until_eof(&mut reader, &mut sink).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        let mut got = [0u8; 7];
        sink_far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"partial");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_splice_times_out_and_traffic_keeps_it_alive() {
        let (mut a, mut a_far) = tokio::io::duplex(1024);
        let (mut b, mut b_far) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        let limits = SpliceLimits { idle_timeout: Some(Duration::from_secs(60)) };
        let splice = tokio::spawn(async move { splice_with(&mut a, &mut b, limits).await });
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            a_far.write_all(b"x").await.unwrap();
            let mut byte = [0u8; 1];
            b_far.read_exact(&mut byte).await.unwrap();
        }
        let err = splice.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(150 + 60), "cut 60 s after the last byte");
    }

    /// Copies `input` through a pipe in `chunk`-byte writes into a sink that takes at most
    /// `sink_capacity` bytes at a time, checks that every byte arrived in order and the sink
    /// saw end of file; returns the pipe as it ended. A lost wake-up fails it (paused clock).
    async fn pipe_after(input: Vec<u8>, chunk: usize, sink_capacity: usize) -> Pipe {
        let (mut source, mut source_far) = tokio::io::duplex(1 << 20);
        let (mut sink, mut sink_far) = tokio::io::duplex(sink_capacity);
        let expected = input.clone();
        let writer = tokio::spawn(async move {
            for piece in input.chunks(chunk) {
                source_far.write_all(piece).await.unwrap();
                source_far.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            sink_far.read_to_end(&mut out).await.unwrap();
            out
        });
        let mut pipe = Pipe::default();
        let copy = poll_fn(|cx| pipe.poll_copy(cx, Pin::new(&mut source), Pin::new(&mut sink)));
        let copied = tokio::time::timeout(Duration::from_secs(60), copy).await.expect("the copy stalled");
        writer.await.unwrap();
        assert_eq!(copied.unwrap(), expected.len() as u64);
        assert!(reader.await.unwrap() == expected, "the bytes arrived changed or out of order");
        pipe
    }

    #[derive(Debug, Clone, Copy)]
    enum Takes {
        Nothing,
        More,
    }

    /// A writer that breaks the `AsyncWrite` contract as `Takes` says.
    struct BadWriter(Takes);

    impl AsyncWrite for BadWriter {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(match self.0 {
                Takes::Nothing => 0,
                Takes::More => buf.len() + 1,
            }))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A reader that gives its bytes, then fails with a reset.
    struct FailsAfter(Option<Vec<u8>>);

    impl AsyncRead for FailsAfter {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(match self.0.take() {
                Some(data) => {
                    buf.put_slice(&data);
                    Ok(())
                }
                None => Err(io::ErrorKind::ConnectionReset.into()),
            })
        }
    }
}
