//! The shutdown signal: SIGINT (Ctrl-C) or SIGTERM.

use std::future::Future;

/// Registers for SIGINT and SIGTERM now, so that a signal arriving at any point after this
/// call (even before the returned future is first polled) means a clean shutdown rather than
/// the default action of dying on the spot. Call it before printing that we are ready.
pub fn install() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("signal received, shutting down");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("signal received, shutting down");
        })
    }
}
