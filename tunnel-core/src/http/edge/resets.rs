//! Requests an HTTP/2 visitor resets once the edge has taken them. hyper counts the resets of
//! streams it has yet to hand over, and closes a connection past a few; a stream reset after
//! it was handed over costs the visitor one frame, and the edge a route lookup, a stream to
//! the client and the client's request to its origin. A visitor that sends requests only to
//! reset them (the "rapid reset" of 2023, timed past the hand-over) had the edge take 3,800 a
//! second from one connection, and the client's visitors time out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Reset requests a connection may have before it is cut, as long as it has had as many
/// answered by clients: a browser that leaves a page resets a few dozen at most.
pub(super) const MAX_RESET_REQUESTS: usize = 128;

/// One HTTP/2 connection's count of requests reset before their answers, and of those
/// answered by clients.
#[derive(Debug, Default)]
pub(super) struct Resets {
    reset: AtomicUsize,
    answered: AtomicUsize,
    /// Told when the count goes past what is allowed.
    exceeded: Notify,
}

impl Resets {
    /// A request taken: counted as reset unless [`Answering::answered`] is called first.
    pub(super) fn taken(self: &Arc<Self>) -> Answering {
        Answering { resets: self.clone(), answered: false }
    }

    /// Returns once the connection has had too many requests reset.
    pub(super) async fn too_many(&self) {
        self.exceeded.notified().await;
    }

    /// How many requests were reset.
    pub(super) fn reset(&self) -> usize {
        self.reset.load(Ordering::Relaxed)
    }
}

/// A request being answered; dropped before its answer is ready, it counts as reset.
#[derive(Debug)]
pub(super) struct Answering {
    resets: Arc<Resets>,
    answered: bool,
}

impl Answering {
    /// The answer's head is ready: the request was not reset. Only an answer from a client
    /// excuses a reset: one the edge made itself (a fallback 404, a 400) costs nothing to ask
    /// for, and a visitor that banked thousands of them could reset as many requests to a
    /// client's origin.
    pub(super) fn answered(mut self, by_a_client: bool) {
        self.answered = true;
        if by_a_client {
            self.resets.answered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let reset = self.resets.reset.fetch_add(1, Ordering::Relaxed) + 1;
        if reset > MAX_RESET_REQUESTS && reset > self.resets.answered.load(Ordering::Relaxed) {
            // A permit is kept if nobody waits yet: the connection's loop sees it next.
            self.resets.exceeded.notify_one();
        }
    }
}
