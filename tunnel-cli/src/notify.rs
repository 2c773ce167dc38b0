//! systemd's notification protocol (`Type=notify`): `READY=1` once serving, `RELOADING=1`
//! and `READY=1` around a configuration change, `STOPPING=1` when the drain begins, and
//! `WATCHDOG=1` at half the watchdog interval while the runtime runs. Each is one datagram to
//! the socket in `NOTIFY_SOCKET`; without that variable (not under systemd), nothing is sent.

use std::time::Duration;

/// Where notifications go, if anywhere.
#[derive(Debug, Clone)]
pub struct Notifier {
    #[cfg(unix)]
    socket: Option<std::sync::Arc<(std::os::unix::net::UnixDatagram, std::os::unix::net::SocketAddr)>>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). A variable that
    /// cannot be used is reported once and notifications are off.
    pub fn from_env() -> Self {
        #[cfg(unix)]
        {
            let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Self { socket: None } };
            match connect(&path) {
                Ok(socket) => Self { socket: Some(std::sync::Arc::new(socket)) },
                Err(err) => {
                    tracing::warn!("NOTIFY_SOCKET={path:?} cannot be used ({err}); no systemd notifications");
                    Self { socket: None }
                }
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Sends `state` (`READY=1`, ...); a failure is logged, never fatal.
    pub fn send(&self, state: &str) {
        #[cfg(unix)]
        if let Some(socket) = &self.socket {
            let (socket, addr) = &**socket;
            if let Err(err) = socket.send_to_addr(state.as_bytes(), addr) {
                tracing::debug!("systemd notification {state:?} not sent: {err}");
            }
        }
        #[cfg(not(unix))]
        let _ = state;
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", status.replace('\n', " ")));
    }

    /// `STOPPING=1`: the drain began.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining");
    }

    /// `RELOADING=1`, with the monotonic time systemd asks for.
    pub fn reloading(&self) {
        #[cfg(unix)]
        {
            let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
            let usec = now.tv_sec as u128 * 1_000_000 + now.tv_nsec as u128 / 1_000;
            self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
        }
    }

    /// Sends `WATCHDOG=1` at half the interval systemd asked for (`WATCHDOG_USEC`, for this
    /// process: `WATCHDOG_PID`; every 10 ms at the most), for as long as the runtime runs: a
    /// hung runtime stops it.
    pub fn spawn_watchdog(&self) {
        let Some(interval) = watchdog_interval() else { return };
        let notifier = self.clone();
        tokio::spawn(async move {
            // A nonsensical `WATCHDOG_USEC=1` would have this loop spin.
            let mut tick = tokio::time::interval((interval / 2).max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                notifier.send("WATCHDOG=1");
            }
        });
    }
}

/// The watchdog interval systemd set for this process, if any.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok()) {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(unix)]
fn connect(
    path: &std::ffi::OsStr,
) -> std::io::Result<(std::os::unix::net::UnixDatagram, std::os::unix::net::SocketAddr)> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        #[cfg(not(target_os = "linux"))]
        Some(_) => return Err(std::io::Error::other("abstract sockets need Linux")),
        None => SocketAddr::from_pathname(path)?,
    };
    Ok((UnixDatagram::unbound()?, addr))
}
