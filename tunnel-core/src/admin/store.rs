//! Client credentials created through the admin API, kept in the state directory
//! (`clients.toml`, mode 0600) so they survive restarts. The configuration file's `[[clients]]`
//! stay authoritative: a name listed there is never taken from here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::AdminError;
use crate::auth::Token;
use crate::config::SecretString;
use crate::forward::PortSet;
use crate::forward::{Glob, IpNet, VisitRule};
use crate::server::{ClientPolicy, ServerConfig};

pub use crate::config::CLIENTS_FILE;

/// What a created client may do. Unset fields take the server-wide defaults, as in a
/// `[[clients]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Grant {
    /// Ports it may bind (default: the server-wide `allow_ports`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_ports: Option<PortSet>,
    /// Hosts it may serve over HTTP and TLS, as globs (default: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_hosts: Vec<Glob>,
    /// Services it may visit, as `CLIENT/SERVICE` rules (default: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_visit: Vec<VisitRule>,
    /// Service names it may expose, as globs (default: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_expose: Vec<Glob>,
    /// Networks it may route (default: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_networks: Vec<IpNet>,
    /// Sessions it may hold at once, replicas serving the same routes (1 to 64; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<usize>,
}

impl Grant {
    /// Checks the bounds the API holds a grant to (the rest is checked as it is read).
    pub(super) fn check(&self) -> Result<(), String> {
        let max = crate::config::MAX_REPLICAS;
        match self.replicas.filter(|n| !(1..=max).contains(n)) {
            Some(n) => Err(format!("replicas {n}: from 1 to {max}")),
            None => Ok(()),
        }
    }

    /// What a configured client's policy grants, in the same terms.
    pub(crate) fn of(policy: &ClientPolicy) -> Self {
        Self {
            allow_ports: policy.allow_ports.clone(),
            allow_hosts: policy.allow_hosts.clone(),
            allow_visit: policy.allow_visit.clone(),
            allow_expose: policy.allow_expose.clone(),
            allow_networks: policy.allow_networks.clone(),
            replicas: policy.replicas,
        }
    }

    fn policy(&self) -> ClientPolicy {
        ClientPolicy {
            allow_ports: self.allow_ports.clone(),
            allow_hosts: self.allow_hosts.clone(),
            allow_visit: self.allow_visit.clone(),
            allow_expose: self.allow_expose.clone(),
            allow_networks: self.allow_networks.clone(),
            replicas: self.replicas,
            ..ClientPolicy::default()
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Stored {
    name: String,
    token: SecretString,
    #[serde(flatten)]
    grant: Grant,
}

#[derive(Default, Serialize, Deserialize)]
struct File {
    #[serde(default)]
    clients: Vec<Stored>,
}

/// The created clients, by name.
pub struct ClientStore {
    path: Option<PathBuf>,
    clients: BTreeMap<String, Stored>,
    /// Largest file written: what a start reads back (`fs::PRIVATE_FILE_MAX`).
    max_bytes: u64,
}

impl Default for ClientStore {
    fn default() -> Self {
        Self { path: None, clients: BTreeMap::new(), max_bytes: crate::fs::PRIVATE_FILE_MAX }
    }
}

impl std::fmt::Debug for ClientStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStore")
            .field("path", &self.path)
            .field("clients", &self.clients.keys())
            .finish()
    }
}

impl ClientStore {
    /// The store, writing files of at most `max_bytes`.
    #[cfg(test)]
    pub(super) fn with_max_bytes(self, max_bytes: u64) -> Self {
        Self { max_bytes, ..self }
    }

    /// A store kept in memory only (lost at exit).
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// The store in `path` (`STATE_DIR/clients.toml`); none there yet is an empty store.
    pub fn open(path: &Path) -> Result<Self, AdminError> {
        let store_err = |source| AdminError::Store { path: path.to_owned(), source };
        let text = match crate::fs::read_private_text(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(err) => return Err(store_err(err)),
        };
        // The parser's message only: its full text quotes the line, which may hold a token.
        let file: File = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|span| text[..span.start].matches('\n').count() + 1);
            let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
            store_err(std::io::Error::other(format!("{}{at}", e.message())))
        })?;
        let mut clients = BTreeMap::new();
        for client in file.clients {
            crate::proto::validate_name(&client.name)
                .map_err(|e| e.to_string())
                .and_then(|()| Token::new(client.token.expose_secret()).map(drop).map_err(|e| e.to_string()))
                // A file edited by hand is held to what the API would have taken.
                .and_then(|()| client.grant.check())
                .map_err(|e| store_err(std::io::Error::other(format!("client {:?}: {e}", client.name))))?;
            clients.insert(client.name.clone(), client);
        }
        Ok(Self { path: Some(path.to_owned()), clients, ..Self::default() })
    }

    /// Adds the created clients to `config`: each its token and what it may do. A name the
    /// configuration lists keeps the configuration's entry.
    pub fn apply(&self, config: &mut ServerConfig) {
        let mut credentials = std::mem::take(&mut config.credentials);
        for client in self.clients.values() {
            if credentials.has_client(&client.name) {
                continue;
            }
            // Checked when stored or loaded: a token that is no longer valid is left out.
            if let Ok(token) = Token::new(client.token.expose_secret()) {
                credentials = credentials.with_client(&client.name, token);
                config.policy.clients.insert(client.name.clone(), client.grant.policy());
            }
        }
        config.credentials = credentials;
    }

    /// Removes the created clients that `credentials` list (the configuration is
    /// authoritative for them); returns their names. Kept on disk when possible; if not, they
    /// are removed again at the next start.
    pub(super) fn remove_listed(&mut self, credentials: &crate::auth::Credentials) -> Vec<String> {
        let listed: Vec<String> =
            self.clients.keys().filter(|n| credentials.has_client(n)).cloned().collect();
        for name in &listed {
            self.clients.remove(name);
        }
        if !listed.is_empty() {
            if let Err(err) = self.save() {
                tracing::warn!("{}", crate::log::Chain(&err));
            }
        }
        listed
    }

    /// Each created client's name and grant.
    pub fn grants(&self) -> impl Iterator<Item = (&str, &Grant)> {
        self.clients.values().map(|c| (c.name.as_str(), &c.grant))
    }

    /// Stores a new client with a generated token; refused if the name is taken.
    pub(super) fn insert(&mut self, name: &str, grant: Grant) -> Result<Token, AdminError> {
        if self.clients.contains_key(name) {
            return Err(AdminError::Exists(name.to_owned()));
        }
        let token = Token::generate();
        let stored = Stored { name: name.to_owned(), token: token.expose_secret().to_owned().into(), grant };
        self.clients.insert(name.to_owned(), stored);
        self.save().inspect_err(|_| {
            self.clients.remove(name);
        })?;
        Ok(token)
    }

    /// Gives a stored client a new generated token.
    pub(super) fn rotate(&mut self, name: &str) -> Result<Token, AdminError> {
        let token = Token::generate();
        let client = self.clients.get_mut(name).ok_or_else(|| AdminError::NotFound(name.to_owned()))?;
        let old = std::mem::replace(&mut client.token, token.expose_secret().to_owned().into());
        if let Err(err) = self.save() {
            if let Some(client) = self.clients.get_mut(name) {
                client.token = old;
            }
            return Err(err);
        }
        Ok(token)
    }

    /// Gives a stored client another grant; its token stays.
    pub(super) fn regrant(&mut self, name: &str, grant: Grant) -> Result<(), AdminError> {
        let client = self.clients.get_mut(name).ok_or_else(|| AdminError::NotFound(name.to_owned()))?;
        let old = std::mem::replace(&mut client.grant, grant);
        if let Err(err) = self.save() {
            if let Some(client) = self.clients.get_mut(name) {
                client.grant = old;
            }
            return Err(err);
        }
        Ok(())
    }

    /// Removes a stored client.
    pub(super) fn remove(&mut self, name: &str) -> Result<(), AdminError> {
        let removed = self.clients.remove(name).ok_or_else(|| AdminError::NotFound(name.to_owned()))?;
        self.save().inspect_err(|_| {
            self.clients.insert(name.to_owned(), removed.clone());
        })
    }

    fn save(&self) -> Result<(), AdminError> {
        let Some(path) = &self.path else { return Ok(()) };
        let store_err = |source| AdminError::Store { path: path.clone(), source };
        let file = File { clients: self.clients.values().cloned().collect() };
        let text = toml::to_string(&file).map_err(|e| store_err(std::io::Error::other(e)))?;
        let text = format!("# Clients created through the admin API; change them through it.\n{text}");
        // A change that would make the file too long to read back at the next start is
        // refused (and undone by the caller), not written.
        if text.len() as u64 > self.max_bytes {
            let why =
                format!("the file would be longer than {} bytes, the most a start reads", self.max_bytes);
            return Err(store_err(std::io::Error::new(std::io::ErrorKind::InvalidData, why)));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::fs::create_private_dir(dir).map_err(store_err)?;
        }
        crate::fs::write_private(path, text.as_bytes()).map_err(store_err)
    }
}
