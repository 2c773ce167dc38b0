//! Multiplexer settings, and the yamux configuration they translate into.

/// yamux's initial per-stream window; its connection window must cover this per stream.
pub(super) const YAMUX_DEFAULT_CREDIT: usize = 256 * 1024;

/// Multiplexer settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MuxConfig {
    /// Streams each side may have open at once (default 1024); more are refused or reset.
    pub max_streams: usize,
    /// Receive-window bytes that streams may take together beyond yamux's initial 256 KiB each
    /// (default 16 MiB). yamux doubles a stream's window whenever its sender used half of it
    /// within two round trips, so one stream grows toward the link's bandwidth-delay product
    /// (up to 16 MiB with the default, 1.3 Gbit/s at 100 ms) and no further; zero pins every stream at 256 KiB, which
    /// caps one stream near 20 Mbit/s at 100 ms round trip.
    pub window_growth: usize,
    /// Largest data frame yamux sends (default 64 KiB: measured near 3x the throughput of
    /// yamux's own 16 KiB, see `docs/benchmarks.md`); larger writes are split.
    pub split_send_size: usize,
    /// Streams the peer may have open at once, if lower than `max_streams` (default: `None`,
    /// the same). Each may pin yamux's initial 256 KiB window of unread data on this side, so
    /// this bounds the memory a peer's streams can hold, whatever it sends.
    pub max_inbound_streams: Option<usize>,
    /// Streams per second the peer may open (with a burst of as many); excess streams are reset
    /// before any work is done for them. `None` (the default) for no limit.
    pub max_inbound_rate: Option<u32>,
}

impl Default for MuxConfig {
    fn default() -> Self {
        Self {
            max_streams: 1024,
            max_inbound_streams: None,
            window_growth: 16 * 1024 * 1024,
            split_send_size: 64 * 1024,
            max_inbound_rate: None,
        }
    }
}

impl MuxConfig {
    /// Streams the peer may have open at once.
    pub(crate) fn inbound_limit(&self) -> usize {
        self.max_inbound_streams.map_or(self.max_streams, |n| n.min(self.max_streams))
    }

    /// yamux's stream limit: room for our streams, the peer's, and streams being reset; beyond
    /// it yamux would close the connection, which our own limits keep from happening.
    fn yamux_streams(&self) -> usize {
        self.max_streams.saturating_mul(2).saturating_add(64)
    }

    /// yamux's connection window: every stream's initial credit plus the growth budget.
    fn connection_window(&self) -> usize {
        self.yamux_streams().saturating_mul(YAMUX_DEFAULT_CREDIT).saturating_add(self.window_growth)
    }

    pub(super) fn yamux(&self) -> yamux::Config {
        let mut config = yamux::Config::default();
        // yamux asserts window >= streams * credit on every setter: lift the window first.
        config
            .set_max_connection_receive_window(None)
            .set_max_num_streams(self.yamux_streams())
            .set_max_connection_receive_window(Some(self.connection_window()))
            .set_split_send_size(self.split_send_size.max(1024));
        config
    }
}
