//! Live route changes for `connect`: on SIGHUP, or when the configuration file changes (an
//! edit, or the symlink swap Kubernetes does when a ConfigMap changes: the path then leads to
//! another file), the file is read again with the flags applied over it. Valid routes go to the running client; an invalid
//! file is reported and the running routes stay.

use std::path::Path;
use std::time::Duration;

use tunnel_core::client::RouteHandle;
use tunnel_core::config::ClientFile;
use tunnel_core::log::Chain;

use crate::args::ConnectArgs;

/// How often the file's identity, size and modification time are compared with the last seen.
const POLL: Duration = Duration::from_secs(1);

/// SIGHUP, registered as soon as this is made: from then on the signal means "read the
/// configuration again", never the default of dying.
pub struct Hangup(#[cfg(unix)] tokio::signal::unix::Signal);

impl Hangup {
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        return Ok(Self(tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?));
        #[cfg(not(unix))]
        Ok(Self())
    }
}

/// Applies route changes until dropped.
pub async fn follow(
    args: ConnectArgs,
    mut running: ClientFile,
    routes: RouteHandle,
    hangup: Hangup,
    notifier: crate::notify::Notifier,
) {
    let path = args.config.clone();
    let mut seen = path.as_deref().and_then(stamp);
    #[cfg(unix)]
    let mut hangup = hangup.0;
    #[cfg(not(unix))]
    let _ = hangup;
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let signalled = async {
            hangup.recv().await;
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<()>();
        tokio::select! {
            () = signalled => {
                tracing::info!("SIGHUP: reading the configuration again");
                seen = path.as_deref().and_then(stamp);
            }
            _ = poll.tick() => {
                let now = path.as_deref().and_then(stamp);
                if now.is_none() || now == seen {
                    continue;
                }
                seen = now;
                tracing::info!("the configuration file changed: reading it again");
            }
        }
        // systemd hears of the change, and that the client serves again (with the new routes,
        // or the old ones if the file was refused).
        notifier.reloading();
        apply(&args, &mut running, &routes);
        notifier.ready("configuration read again");
    }
}

/// What tells one version of the file from the next without reading it: the file the path
/// leads to (device and inode, through symlinks), its size and modification time. `None`
/// while it cannot be read (mid-swap, or removed).
fn stamp(path: &Path) -> Option<(u64, u64, u64, std::time::SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let (dev, ino) = {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    };
    #[cfg(not(unix))]
    let (dev, ino) = (0, 0);
    Some((dev, ino, meta.len(), meta.modified().ok()?))
}

fn apply(args: &ConnectArgs, running: &mut ClientFile, routes: &RouteHandle) {
    let file = match args.clone().into_file().and_then(|file| file.validate().map(|()| file)) {
        Ok(file) => file,
        Err(err) => {
            return tracing::error!("configuration not applied, the running routes stay: {}", Chain(&err))
        }
    };
    let set = match file.route_set() {
        Ok(set) => set,
        Err(err) => {
            return tracing::error!("configuration not applied, the running routes stay: {}", Chain(&err))
        }
    };
    if beyond_routes(running) != beyond_routes(&file) {
        tracing::warn!("only routes (`remote`, `expose`, `http`, `tls`, `http_fallback`, `[[routes]]`) change while running; restart to apply the other changes");
    }
    if let Err(err) = routes.set(set) {
        return tracing::error!("configuration not applied, the running routes stay: {err}");
    }
    *running = file;
}

/// The file without its routes, to tell whether anything else changed.
fn beyond_routes(file: &ClientFile) -> Option<String> {
    let mut rest = file.clone();
    rest.remote.clear();
    rest.expose.clear();
    rest.http.clear();
    rest.tls.clear();
    rest.http_fallback = None;
    rest.routes.clear();
    rest.to_toml().ok()
}
