//! A spawned task that ends with its owner.

/// Aborts the task when dropped (the metrics endpoint ends with the command).
pub struct Aborted(pub tokio::task::JoinHandle<()>);

impl Drop for Aborted {
    fn drop(&mut self) {
        self.0.abort();
    }
}
