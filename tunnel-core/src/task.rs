//! Task helpers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle};

/// A spawned task that is aborted when this handle is dropped, so a task that owns a
/// connection (a session driver) never outlives the code that is responsible for it.
#[derive(Debug)]
pub(crate) struct OwnedTask<T>(JoinHandle<T>);

impl<T: Send + 'static> OwnedTask<T> {
    pub(crate) fn spawn(future: impl Future<Output = T> + Send + 'static) -> Self {
        Self(tokio::spawn(future))
    }

    /// A connection's driver: [`OwnedTask::spawn`] at `shard` when there is one (see
    /// [`crate::shards`]), counted there as a connection while it runs.
    pub(crate) fn spawn_driver_at(
        shard: Option<&crate::shards::Shard>,
        driver: impl Future<Output = T> + Send + 'static,
    ) -> Self {
        let carrying = shard.map(crate::shards::Shard::carrying);
        // A combinator, not an `async` block awaiting `driver`: that would keep the driver's
        // room twice in the task (moved in, then awaited).
        Self(crate::shards::spawn_at(
            shard,
            futures::FutureExt::map(driver, move |end| {
                drop(carrying);
                end
            }),
        ))
    }
}

impl<T> OwnedTask<T> {
    pub(crate) fn abort(&self) {
        self.0.abort();
    }
}

impl<T> Future for OwnedTask<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for OwnedTask<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The value out of its box, the box freed now. Moving out with `*boxed` frees the box only
/// where `boxed` goes out of scope, which in an async function is its end: the allocation would
/// be held as long as the function runs.
#[allow(clippy::boxed_local)] // The box is the point: it is freed here.
pub(crate) fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}
