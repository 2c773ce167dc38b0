//! The shutdown signals: SIGINT (Ctrl-C) or SIGTERM. The first starts a drain (open streams
//! finish, within `drain_timeout`); the second cuts it short.

/// SIGINT and SIGTERM, registered as soon as this is made, so that a signal arriving at any
/// point after (even before [`Signals::next`] is first awaited) means a clean shutdown rather
/// than the default action of dying on the spot. Make it before printing that we are ready.
pub struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next signal.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }

    /// Waits for the first signal (and tells systemd the drain began); a second, later,
    /// calls `cut`.
    pub async fn first_then(
        mut self,
        notifier: crate::notify::Notifier,
        cut: impl FnOnce() + Send + 'static,
    ) {
        self.next().await;
        tracing::info!("signal received, draining (a second signal cuts the open streams)");
        notifier.stopping();
        tokio::spawn(async move {
            self.next().await;
            tracing::warn!("second signal: cutting the open streams");
            cut();
        });
    }
}
