//! Logging helpers for text that came from a peer, and for events a peer can repeat at will.
//!
//! A peer controls goodbye reasons, refusal messages and names; printed raw, a newline forges a
//! log line and an escape sequence rewrites the operator's terminal. A stranger also controls how
//! often a handshake fails, so those lines are rate limited instead of filling the disk.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Characters of peer text printed before the rest is cut off.
const MAX_ESCAPED_CHARS: usize = 512;

/// Displays peer-controlled text with control and non-printable characters escaped
/// (`"\u{1b}[2J"` prints as `\x1b[2J`) and cut after 512 characters.
///
/// Backslashes pass through unchanged: the output is for reading, not for unescaping.
///
/// ```
/// use tunnel_core::log::Escaped;
/// assert_eq!(Escaped("bye\n\u{1b}[31mfake").to_string(), "bye\\n\\x1b[31mfake");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        let mut chars = self.0.char_indices();
        for (_, c) in chars.by_ref().take(MAX_ESCAPED_CHARS) {
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if u32::from(c) < 0x100 && c.is_control() => write!(f, "\\x{:02x}", u32::from(c))?,
                // `escape_debug` knows which characters are invisible or reorder text (bidi
                // overrides, zero-width marks); quotes and backslashes it would also escape.
                c if !matches!(c, '"' | '\'' | '\\') && c.escape_debug().len() > 1 => {
                    write!(f, "\\u{{{:x}}}", u32::from(c))?
                }
                c => f.write_char(c)?,
            }
        }
        if let Some((cut, _)) = chars.next() {
            write!(f, "... ({} more bytes)", self.0.len() - cut)?;
        }
        Ok(())
    }
}

/// Displays an error with its chain of sources, `outer: inner: root`, for one log line.
///
/// Library errors keep their causes as sources instead of copying them into their messages;
/// this is how a log line shows them all.
///
/// ```
/// use tunnel_core::log::Chain;
/// #[derive(Debug, thiserror::Error)]
/// #[error("reading the token file")]
/// struct ReadToken(#[source] std::io::Error);
/// let err = ReadToken(std::io::Error::other("permission denied"));
/// assert_eq!(Chain(&err).to_string(), "reading the token file: permission denied");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

/// A source whose message already ends the one before it (errors of other crates often print
/// their source themselves) is not repeated.
impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            let text = err.to_string();
            if last != text && !last.ends_with(&format!(": {text}")) {
                write!(f, ": {text}")?;
            }
            last = text;
            source = err.source();
        }
        Ok(())
    }
}

/// Fixed-window rate limit for one kind of log line, with the clock as an input.
#[derive(Debug)]
pub(crate) struct RateLimit {
    window: Duration,
    /// Start of the current window and how many events it held back.
    current: Option<(Instant, u64)>,
}

impl RateLimit {
    pub(crate) const fn new(window: Duration) -> Self {
        Self { window, current: None }
    }

    /// `None`: hold this event back. `Some((n, since))`: log it; `n` events were held back
    /// since `since`, the start of the window that just ended.
    pub(crate) fn event(&mut self, now: Instant) -> Option<(u64, Instant)> {
        match &mut self.current {
            Some((start, held)) if now.saturating_duration_since(*start) < self.window => {
                *held += 1;
                None
            }
            Some((start, held)) => {
                let summary = (*held, *start);
                self.current = Some((now, 0));
                Some(summary)
            }
            None => {
                self.current = Some((now, 0));
                Some((0, now))
            }
        }
    }
}

/// How often a rate-limited line may appear.
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// A rate-limited log line: the first event of each 10 s window is logged, preceded by a
/// count of the events held back in the window before.
#[derive(Debug)]
pub(crate) struct LimitedLog {
    what: &'static str,
    limit: Mutex<RateLimit>,
}

impl LimitedLog {
    const fn new(what: &'static str) -> Self {
        Self { what, limit: Mutex::new(RateLimit::new(LOG_WINDOW)) }
    }

    /// Whether to log this event now; logs the summary of the held-back ones first.
    pub(crate) fn allow(&self) -> bool {
        let now = Instant::now();
        let verdict = self.limit.lock().unwrap_or_else(|e| e.into_inner()).event(now);
        match verdict {
            None => false,
            Some((0, _)) => true,
            Some((held, since)) => {
                let secs = now.saturating_duration_since(since).as_secs();
                tracing::info!("{held} more {} in the last {secs}s (not logged one by one)", self.what);
                true
            }
        }
    }
}

/// Handshakes that failed or timed out.
pub(crate) static HANDSHAKE_FAILURES: LimitedLog = LimitedLog::new("handshake failures");

/// Connections dropped because too many were in the handshake already.
pub(crate) static HANDSHAKE_OVERLOAD: LimitedLog =
    LimitedLog::new("connections dropped (too many in handshake)");

/// Requests of authenticated clients that the server refused (forwards, visits, services).
pub(crate) static REFUSALS: LimitedLog = LimitedLog::new("refused requests");

/// Failed accepts on a listener (out of file descriptors and the like).
pub(crate) static ACCEPT_FAILURES: LimitedLog = LimitedLog::new("failed accepts");

/// A client's visits that failed: a target it could not reach, a local forward, UDP flow or
/// network visit refused. Anyone who reaches a public port can cause one per connection.
pub(crate) static VISIT_FAILURES: LimitedLog = LimitedLog::new("failed visits");

/// SOCKS requests the client's proxy refused (logged at info: a window of their own, so that
/// hidden ones never hold back the failed visits' warnings).
pub(crate) static SOCKS_REFUSALS: LimitedLog = LimitedLog::new("refused SOCKS requests");

/// Streams the server opened that the client drops unserved (no header, a header it cannot
/// read, a service it does not expose): a faulty or hostile server can open them in a loop.
pub(crate) static DROPPED_STREAMS: LimitedLog = LimitedLog::new("dropped streams");

/// Lasting visitors of the edge (WebSockets, TLS passthrough) closed for a newcomer to a full
/// client session: a sign of a flood, or of a session too small for its visitors.
pub(crate) static EDGE_EVICTIONS: LimitedLog = LimitedLog::new("edge visitors closed for newcomers");

/// An in-program HTTP handler's failures, one per request at most.
pub(crate) static HANDLER_FAILURES: LimitedLog = LimitedLog::new("failed handler calls");

/// `tracing::warn!` through a [`LimitedLog`]: the first line of each window, then a count.
macro_rules! warn_limited {
    ($limit:expr, $($arg:tt)+) => {
        if $limit.allow() {
            tracing::warn!($($arg)+)
        }
    };
}
pub(crate) use warn_limited;

/// `tracing::info!` through a [`LimitedLog`], as [`warn_limited`].
macro_rules! info_limited {
    ($limit:expr, $($arg:tt)+) => {
        if $limit.allow() {
            tracing::info!($($arg)+)
        }
    };
}
pub(crate) use info_limited;

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with an optional source, which it prints itself (as yamux's and rustls's
    /// errors do) or not (as `thiserror`'s `#[source]` fields do).
    #[derive(Debug)]
    struct Layer(&'static str, bool, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match &self.2 {
                Some(inner) if self.1 => write!(f, "{}: {inner}", self.0),
                _ => f.write_str(self.0),
            }
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.2.as_deref().map(|inner| inner as _)
        }
    }

    #[test]
    fn a_chain_says_each_message_once() {
        let layer = |text, prints, inner: Option<Layer>| Layer(text, prints, inner.map(Box::new));
        let printing = layer(
            "decode error",
            true,
            Some(layer("i/o error", true, Some(layer("connection reset", false, None)))),
        );
        assert_eq!(Chain(&printing).to_string(), "decode error: i/o error: connection reset");
        let silent = layer(
            "session",
            false,
            Some(layer("handshake", false, Some(layer("connection reset", false, None)))),
        );
        assert_eq!(Chain(&silent).to_string(), "session: handshake: connection reset");
        let mixed = layer(
            "session",
            false,
            Some(layer("decode error", true, Some(layer("connection reset", false, None)))),
        );
        assert_eq!(Chain(&mixed).to_string(), "session: decode error: connection reset");
    }

    #[test]
    fn control_and_invisible_characters_are_escaped() {
        let cases = [
            ("plain text, ünïcode ✓", "plain text, ünïcode ✓"),
            ("a\nb\r\tc", "a\\nb\\r\\tc"),
            ("\u{1b}[2J\u{7}\u{0}", "\\x1b[2J\\x07\\x00"),
            ("\u{85}next line", "\\x85next line"),
            ("bidi \u{202e}txt.exe", "bidi \\u{202e}txt.exe"),
            ("zero\u{200b}width", "zero\\u{200b}width"),
            ("quotes \" ' and \\ stay", "quotes \" ' and \\ stay"),
        ];
        for (raw, shown) in cases {
            assert_eq!(Escaped(raw).to_string(), shown, "{raw:?}");
        }
    }

    #[test]
    fn long_text_is_cut() {
        let long = "é".repeat(MAX_ESCAPED_CHARS + 10);
        let shown = Escaped(&long).to_string();
        assert!(shown.starts_with(&"é".repeat(MAX_ESCAPED_CHARS)), "{shown}");
        assert!(shown.ends_with("... (20 more bytes)"), "{shown}");
        let exact = "x".repeat(MAX_ESCAPED_CHARS);
        assert_eq!(Escaped(&exact).to_string(), exact);
    }

    #[test]
    fn the_first_event_of_each_window_passes_with_a_count_of_the_rest() {
        let mut limit = RateLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert_eq!(limit.event(t0), Some((0, t0)));
        assert_eq!(limit.event(at(1)), None);
        assert_eq!(limit.event(at(9)), None);
        assert_eq!(limit.event(at(10)), Some((2, t0)));
        assert_eq!(limit.event(at(19)), None);
        // A quiet spell: the next event passes and reports the one held back long ago.
        assert_eq!(limit.event(at(100)), Some((1, at(10))));
        assert_eq!(limit.event(at(111)), Some((0, at(100))));
    }

    /// Log output, shared with the subscriber that writes it.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_limited_log_follows_the_tokio_clock_and_summarises() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber =
            tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let log = LimitedLog::new("test events");
        assert!(log.allow());
        assert!(!log.allow());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!log.allow());
        let text = || String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
        assert_eq!(text(), "", "a summary before the window ended");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(log.allow());
        assert!(text().contains("2 more test events in the last 12s"), "{}", text());
        assert!(!log.allow());
    }
}
