//! Operating a running server from outside: an API over HTTP (JSON) that lists sessions,
//! forwards and routes, and creates, rotates and revokes client credentials; and the client
//! for it ([`AdminClient`], used by `tunnel-cli admin` and the Kubernetes operator).
//!
//! [`Admin`] is the handle behind the API: it keeps the configuration the server was given
//! (the file's) apart from the clients created through it ([`ClientStore`], kept in the state
//! directory), and puts the two together at every change. The file's `[[clients]]` stay
//! authoritative: a name listed there cannot be created, rotated or revoked here.
//!
//! The document describing the API is `docs/admin-api.yaml` (OpenAPI 3).

mod api;
mod client;
mod serve;
mod store;

use std::path::PathBuf;
use std::sync::Arc;

pub use api::{AdminRequest, Undecodable};
pub use client::{AdminClient, AdminClientError, AdminTarget};
#[cfg(unix)]
pub use serve::bind_socket;
pub use serve::{serve, AdminListener, MAX_BODY};
pub use store::{ClientStore, Grant, CLIENTS_FILE};

use crate::auth::Token;
use crate::server::{Reload, Server, ServerConfig};

/// Why an admin operation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The name is not a valid client name.
    #[error("invalid client name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A client was already created under that name.
    #[error("client {0:?} already exists")]
    Exists(String),
    /// The configuration file lists that name; it stays authoritative for it.
    #[error("client {0:?} is listed in the configuration file, which stays authoritative for it")]
    FromConfig(String),
    /// No client was created under that name.
    #[error("no client {0:?} was created through the admin API")]
    NotFound(String),
    /// The store in the state directory could not be read or written.
    #[error("cannot keep the created clients in {path}")]
    Store {
        /// The store's file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Where a client's credential comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientSource {
    /// A `[[clients]]` entry of the configuration.
    Config,
    /// Created through the admin API.
    Admin,
}

/// A client with its own token, as the API lists it (never its token).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientInfo {
    /// Its name.
    pub name: String,
    /// Where its credential comes from.
    pub source: ClientSource,
    /// Whether it has a session up now.
    pub online: bool,
    /// What it may do.
    pub grant: Grant,
}

/// The handle behind the admin API: a running server, the configuration it was given, and
/// the clients created since.
#[derive(Debug)]
pub struct Admin {
    server: Server,
    /// Held by each change, through the reload that puts it in force: changes run one at a
    /// time. Listings do not take it.
    state: tokio::sync::Mutex<State>,
    /// The names created here, as of the last change (for listings).
    created: std::sync::RwLock<std::collections::BTreeSet<String>>,
    /// The admin token and TLS configuration the API over TCP checks, once served.
    access: std::sync::RwLock<Option<Arc<serve::TcpAccess>>>,
}

#[derive(Debug)]
struct State {
    /// The configuration as given (the file's), without the created clients.
    base: ServerConfig,
    store: ClientStore,
}

impl Admin {
    /// The handle for `server`, started with `base` merged with `store`
    /// ([`ClientStore::apply`]).
    ///
    /// A created client whose name the configuration now lists is removed from the store
    /// (the file is authoritative for it), with a warning, so that taking the name out of the
    /// file later does not bring the old token back.
    pub fn new(server: Server, base: ServerConfig, mut store: ClientStore) -> Self {
        drop_listed(&mut store, &base);
        let created = std::sync::RwLock::new(store.grants().map(|(name, _)| name.to_owned()).collect());
        let access = std::sync::RwLock::new(None);
        Self { server, state: tokio::sync::Mutex::new(State { base, store }), created, access }
    }

    /// Puts `token` and `tls` (the certificate) in force for the admin API over TCP
    /// ([`serve`] with an [`AdminListener::Tls`]): from now on, every TLS handshake is made
    /// with `tls` and every request must carry `token`, on connections already open too. A
    /// reload with a new `admin_token` or certificate calls this; the old token is refused
    /// from then on.
    pub fn renew_access(&self, token: Token, tls: &rustls::ServerConfig) {
        let access = Arc::new(serve::TcpAccess::new(token, tls));
        *self.access.write().unwrap_or_else(|e| e.into_inner()) = Some(access);
    }

    /// What the admin API over TCP checks now (`None` before it is served).
    fn tcp_access(&self) -> Option<Arc<serve::TcpAccess>> {
        self.access.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the names created here now, for listings.
    fn note_created(&self, state: &State) {
        let names = state.store.grants().map(|(name, _)| name.to_owned()).collect();
        *self.created.write().unwrap_or_else(|e| e.into_inner()) = names;
    }

    /// The server.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Puts a new configuration (the file's, read again) in force with the created clients
    /// added, as [`Server::reload`] does.
    pub async fn reload(&self, base: ServerConfig) -> Reload {
        let mut state = self.state.lock().await;
        state.base = base;
        let State { base, store } = &mut *state;
        drop_listed(store, base);
        self.note_created(&state);
        self.put_in_force(&state).await
    }

    async fn put_in_force(&self, state: &State) -> Reload {
        let mut config = state.base.clone();
        state.store.apply(&mut config);
        self.server.reload(config).await
    }

    /// Creates client `name` with what `grant` allows; returns its token, generated now (it is
    /// kept in the state directory, and shown only this once).
    pub async fn create(&self, name: &str, grant: Grant) -> Result<Token, AdminError> {
        crate::proto::validate_name(name)
            .map_err(|e| AdminError::InvalidName { name: name.to_owned(), reason: e.to_string() })?;
        let mut state = self.state.lock().await;
        if state.base.credentials.has_client(name) {
            return Err(AdminError::FromConfig(name.to_owned()));
        }
        let token = state.store.insert(name, grant)?;
        self.note_created(&state);
        let report = self.put_in_force(&state).await;
        tracing::info!(client = name, ended = ?report.ended, "client created through the admin API");
        Ok(token)
    }

    /// Gives client `name` a new token, generated now; its sessions on the old one end.
    pub async fn rotate(&self, name: &str) -> Result<Token, AdminError> {
        let mut state = self.state.lock().await;
        if state.base.credentials.has_client(name) {
            return Err(AdminError::FromConfig(name.to_owned()));
        }
        let token = state.store.rotate(name)?;
        let report = self.put_in_force(&state).await;
        tracing::info!(client = name, ended = ?report.ended, "client token rotated through the admin API");
        Ok(token)
    }

    /// Gives client `name` what `grant` allows instead; its token stays. As with a reload, only
    /// what the new grant no longer allows is closed (with fewer `replicas`, the name's excess
    /// sessions). Returns the clients whose sessions ended.
    pub async fn regrant(&self, name: &str, grant: Grant) -> Result<Vec<String>, AdminError> {
        let mut state = self.state.lock().await;
        if state.base.credentials.has_client(name) {
            return Err(AdminError::FromConfig(name.to_owned()));
        }
        state.store.regrant(name, grant)?;
        let report = self.put_in_force(&state).await;
        tracing::info!(client = name, ended = ?report.ended, trimmed = ?report.trimmed, "client grant changed through the admin API");
        let mut ended = report.ended;
        ended.extend(report.trimmed);
        ended.sort();
        ended.dedup();
        Ok(ended)
    }

    /// Removes client `name`: its sessions end, its token no longer works. Returns the
    /// clients whose sessions ended.
    pub async fn revoke(&self, name: &str) -> Result<Vec<String>, AdminError> {
        let mut state = self.state.lock().await;
        if state.base.credentials.has_client(name) {
            return Err(AdminError::FromConfig(name.to_owned()));
        }
        state.store.remove(name)?;
        self.note_created(&state);
        let report = self.put_in_force(&state).await;
        tracing::info!(client = name, ended = ?report.ended, "client revoked through the admin API");
        Ok(report.ended)
    }

    /// Every client with its own token, by name, as the configuration in force has them.
    pub fn clients(&self) -> Vec<ClientInfo> {
        let config = self.server.config();
        let created = self.created.read().unwrap_or_else(|e| e.into_inner()).clone();
        let online: std::collections::HashSet<String> = self.server.session_names().into_iter().collect();
        let mut clients: Vec<ClientInfo> = config
            .credentials
            .client_names()
            .map(|name| ClientInfo {
                name: name.to_owned(),
                source: if created.contains(name) { ClientSource::Admin } else { ClientSource::Config },
                online: online.contains(name),
                grant: config.policy.clients.get(name).map(Grant::of).unwrap_or_default(),
            })
            .collect();
        clients.sort_by(|a, b| a.name.cmp(&b.name));
        clients
    }
}

/// Removes from `store` the names `base` lists, saying so.
fn drop_listed(store: &mut ClientStore, base: &ServerConfig) {
    for name in store.remove_listed(&base.credentials) {
        tracing::warn!(client = %crate::log::Escaped(&name), "the configuration now lists this client: its credential created through the admin API is removed");
    }
}

#[cfg(test)]
mod tests;
