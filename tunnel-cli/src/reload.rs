//! Reading the configuration again while running: on SIGHUP, or when the configuration file
//! changes (an edit, or the symlink swap Kubernetes does when a ConfigMap changes: the path
//! then leads to another file), the file is read again with the flags applied over it. For
//! `connect`, valid routes go to the running client (here); for `serve`, the whole
//! configuration goes to the running server (`serve.rs`). An invalid file is reported and
//! what runs stays.

use std::path::{Path, PathBuf};
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

/// What asks for the configuration to be read again: SIGHUP, or a change of the file the
/// path leads to, seen by polling.
pub struct Watch {
    path: Option<PathBuf>,
    seen: Option<Stamp>,
    /// A change seen at the last poll, read if the next poll sees it unchanged.
    settling: Option<Stamp>,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
    poll: tokio::time::Interval,
    /// What asked for a look at the file, and that look, under way off the runtime's threads:
    /// kept here, so that a [`Watch::changed`] dropped meanwhile loses neither.
    looking: Option<(Asked, Option<tokio::task::JoinHandle<Option<Stamp>>>)>,
}

/// What asked for a look at the file.
#[derive(Debug, Clone, Copy)]
enum Asked {
    Hangup,
    Poll,
}

impl Watch {
    /// Watches `path` (when there is one) from its state now, and `hangup`.
    pub fn new(path: Option<PathBuf>, hangup: Hangup) -> Self {
        #[cfg(not(unix))]
        let _ = hangup;
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let seen = path.as_deref().and_then(stamp);
        Self {
            path,
            seen,
            settling: None,
            #[cfg(unix)]
            hangup: hangup.0,
            poll,
            looking: None,
        }
    }

    /// Returns at the next SIGHUP, or change of the file that has held for a whole poll (a
    /// file rewritten in place is not read half written). An empty file is never read: it is
    /// one being written, or a mistake, and would take every default (no clients); nor is a
    /// FIFO or a device, which reading may never end.
    pub async fn changed(&mut self) {
        loop {
            if self.looking.is_none() {
                #[cfg(unix)]
                let signalled = self.hangup.recv();
                #[cfg(not(unix))]
                let signalled = std::future::pending::<Option<()>>();
                let asked = tokio::select! {
                    _ = signalled => Asked::Hangup,
                    _ = self.poll.tick() => Asked::Poll,
                };
                // `stat` on a mount that hangs blocks: not on the runtime's threads.
                let path = self.path.clone();
                let look = path.map(|path| tokio::task::spawn_blocking(move || stamp(&path)));
                self.looking = Some((asked, look));
            }
            let now = match self.looking.as_mut().and_then(|(_, look)| look.as_mut()) {
                Some(look) => look.await.ok().flatten(),
                None => None,
            };
            let Some((asked, _)) = self.looking.take() else { continue };
            let why = match asked {
                Asked::Hangup => {
                    self.seen = now;
                    "SIGHUP: reading the configuration again"
                }
                Asked::Poll => {
                    if now.is_none() || now == self.seen {
                        self.settling = None;
                        continue;
                    }
                    if now != self.settling {
                        self.settling = now;
                        continue;
                    }
                    self.seen = now;
                    "the configuration file changed: reading it again"
                }
            };
            self.settling = None;
            // A FIFO or a device reads as empty too, and reading it may never end.
            let unread = self.seen.and_then(|seen| match (seen.regular, seen.len) {
                (false, _) => Some("not a regular file"),
                (true, 0) => Some("empty"),
                (true, _) => None,
            });
            if let Some(what) = unread {
                let cause = match asked {
                    Asked::Hangup => "SIGHUP, but the configuration file is",
                    Asked::Poll => "the configuration file changed, and is now",
                };
                tracing::error!("{cause} {what}: not read, the running configuration stays");
                continue;
            }
            tracing::info!("{why}");
            return;
        }
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
    let mut watch = Watch::new(args.config.clone(), hangup);
    loop {
        watch.changed().await;
        // systemd hears of the change, and that the client serves again (with the new routes,
        // or the old ones if the file was refused).
        notifier.reloading();
        // Read off the runtime's threads: a mount that hangs stalls this reload alone.
        let reading = args.clone();
        let read = tokio::task::spawn_blocking(move || {
            reading
                .into_file()
                .and_then(|file| file.validate().map(|()| file))
                .map_err(|e| Chain(&e).to_string())
        })
        .await
        .unwrap_or_else(|join| Err(join.to_string()));
        apply(read, &mut running, &routes);
        notifier.ready("configuration read again");
    }
}

/// What tells one version of the file from the next without reading it: the file the path
/// leads to (device and inode, through symlinks), its size and modification time, and whether
/// it is a regular file at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: std::time::SystemTime,
    regular: bool,
}

/// The file's [`Stamp`]; `None` while it cannot be looked at (mid-swap, or removed).
fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let (dev, ino) = {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    };
    #[cfg(not(unix))]
    let (dev, ino) = (0, 0);
    Some(Stamp { dev, ino, len: meta.len(), modified: meta.modified().ok()?, regular: meta.is_file() })
}

/// Puts the routes of a configuration read (and validated) in force.
fn apply(read: Result<ClientFile, String>, running: &mut ClientFile, routes: &RouteHandle) {
    let file = match read {
        Ok(file) => file,
        Err(err) => return tracing::error!("configuration not applied, the running routes stay: {err}"),
    };
    let set = match file.route_set() {
        Ok(set) => set,
        Err(err) => {
            return tracing::error!("configuration not applied, the running routes stay: {}", Chain(&err))
        }
    };
    if beyond_routes(running) != beyond_routes(&file) {
        tracing::warn!("only routes (`remote`, `expose`, `http`, `tls`, `http_fallback`, `[[routes]]`, `networks`) change while running; restart to apply the other changes");
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
    rest.networks.clear();
    rest.to_toml().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_change_is_read_once_it_has_held_for_a_poll_and_an_empty_file_never() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(&path, "name = \"a\"\n").unwrap();
        let mut watch = Watch::new(Some(path.clone()), Hangup::install().unwrap());
        // Whether the watch returns within `within`; what it saw meanwhile it keeps.
        async fn settled(watch: &mut Watch, within: Duration) -> bool {
            tokio::time::timeout(within, watch.changed()).await.is_ok()
        }

        // Seen at one poll, read at the next: not before.
        std::fs::write(&path, "name = \"ab\"\n").unwrap();
        assert!(!settled(&mut watch, POLL / 2).await, "read at the first sight of the change");
        assert!(settled(&mut watch, POLL * 2).await, "a settled change was not read");
        assert!(!settled(&mut watch, POLL * 3).await, "an unchanged file was read again");

        // A file still changing at each poll is read once it stops.
        for len in 1..4 {
            std::fs::write(&path, "#".repeat(len)).unwrap();
            assert!(!settled(&mut watch, POLL).await, "read while still changing");
        }
        assert!(settled(&mut watch, POLL * 2).await);

        // Emptied (truncated before being written again): never read.
        std::fs::write(&path, "").unwrap();
        assert!(!settled(&mut watch, POLL * 5).await, "an empty file was read");
        std::fs::write(&path, "name = \"c\"\n").unwrap();
        assert!(settled(&mut watch, POLL * 3).await, "the file written after being emptied was not read");
    }
}
