//! Streams the peer opened, delivered acknowledged and in order.

use std::collections::VecDeque;

use tokio::sync::mpsc;

use super::MuxStream;

/// Streams the peer opened, in the order they arrived.
#[derive(Debug)]
pub struct IncomingStreams {
    pub(super) rx: mpsc::Receiver<MuxStream>,
    /// Streams taken out of order (see [`IncomingStreams::take_stream`]), delivered first.
    pub(super) held: VecDeque<MuxStream>,
}

impl IncomingStreams {
    /// The next inbound stream, acknowledged to the peer; `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<MuxStream> {
        let mut stream = match self.held.pop_front() {
            Some(stream) => stream,
            None => self.rx.recv().await?,
        };
        stream.acknowledge().await;
        Some(stream)
    }

    /// Waits for the stream with yamux id `id`, holding up to `max_held` streams that arrive
    /// before it for [`IncomingStreams::next`]. yamux announces a stream with its first frame and
    /// does not order frames across streams, so the peer's first stream may not arrive first.
    pub async fn take_stream(&mut self, id: u32, max_held: usize) -> Option<MuxStream> {
        loop {
            let mut stream = self.rx.recv().await?;
            if stream.id() == id {
                stream.acknowledge().await;
                return Some(stream);
            }
            if self.held.len() >= max_held {
                return None;
            }
            self.held.push_back(stream);
        }
    }
}
