//! Live route changes for `connect`: on SIGHUP, or when the configuration file's content
//! changes (an edit, or the symlink swap Kubernetes does when a ConfigMap changes), the file is
//! read again with the flags applied over it. Valid routes go to the running client; an invalid
//! file is reported and the running routes stay.

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tunnel_core::client::RouteHandle;
use tunnel_core::config::ClientFile;
use tunnel_core::log::Chain;

use crate::args::ConnectArgs;

/// How often the file's content is compared with the last one read.
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
pub async fn follow(args: ConnectArgs, mut running: ClientFile, routes: RouteHandle, hangup: Hangup) {
    let path = args.config.clone();
    let mut seen = path.as_ref().and_then(digest);
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
            () = signalled => tracing::info!("SIGHUP: reading the configuration again"),
            _ = poll.tick() => {
                let now = path.as_ref().and_then(digest);
                if now.is_none() || now == seen {
                    continue;
                }
                seen = now;
                tracing::info!("the configuration file changed: reading it again");
            }
        }
        apply(&args, &mut running, &routes);
    }
}

/// The content's SHA-256; `None` while the file cannot be read (mid-swap, or removed).
fn digest(path: &PathBuf) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|bytes| Sha256::digest(&bytes).into())
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
