//! A bound on the memory a peer's unread data can pin.
//!
//! yamux lets a peer send 256 KiB on every stream before any window update, and a relay that
//! cannot pass the data on (its destination does not read) leaves it in memory. Per stream that
//! is fixed by the protocol, so the bound is on how many streams may be held back at once: a
//! copy that reads from a peer's stream takes a slot of that peer's [`UnreadBudget`] when its
//! write blocks with data in hand, and gives it back once the data is out. When no slot is
//! left the copy fails, and the caller resets that stream, releasing what it pinned.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Memory one held-back stream may pin: yamux's initial window plus a full copy buffer.
pub const PINNED_PER_STREAM: usize = 256 * 1024 + super::COPY_BUFFER;

/// How many of a peer's streams may be held back at once, shared by every copy reading from
/// that peer.
///
/// ```
/// use tunnel_core::forward::UnreadBudget;
/// let budget = UnreadBudget::with_bytes(32 << 20);
/// assert_eq!(budget.capacity(), 102);
/// ```
#[derive(Debug, Clone)]
pub struct UnreadBudget(Arc<Slots>);

#[derive(Debug)]
struct Slots {
    capacity: usize,
    used: AtomicUsize,
}

/// One held-back stream's slot; dropping it gives the slot back.
#[derive(Debug)]
pub(crate) struct Held(Arc<Slots>);

impl UnreadBudget {
    /// Room for `bytes` of unread data (at least one stream).
    pub fn with_bytes(bytes: usize) -> Self {
        Self::with_streams(bytes / PINNED_PER_STREAM)
    }

    /// Room for `streams` held-back streams (at least one).
    pub fn with_streams(streams: usize) -> Self {
        Self(Arc::new(Slots { capacity: streams.max(1), used: AtomicUsize::new(0) }))
    }

    /// Streams that may be held back at once.
    pub fn capacity(&self) -> usize {
        self.0.capacity
    }

    /// Streams held back now.
    pub fn in_use(&self) -> usize {
        self.0.used.load(Ordering::Relaxed)
    }

    /// Takes a slot, or `None` when every slot is taken.
    pub(crate) fn hold(&self) -> Option<Held> {
        let slots = &self.0;
        slots
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < slots.capacity).then_some(used + 1)
            })
            .ok()
            .map(|_| Held(self.0.clone()))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let budget = UnreadBudget::with_streams(2);
        let a = budget.hold().unwrap();
        let b = budget.hold().unwrap();
        assert!(budget.hold().is_none());
        drop(a);
        let c = budget.hold().unwrap();
        assert_eq!(budget.in_use(), 2);
        drop((b, c));
        assert_eq!(budget.in_use(), 0);
        assert_eq!(UnreadBudget::with_bytes(0).capacity(), 1);
    }
}
