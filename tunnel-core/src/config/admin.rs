//! The admin API's settings (`admin_listen`, `admin_token`, `admin_token_file`): where it
//! listens, and the token it asks for over TCP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::server::{ServerFile, TokenSource};
use super::tokens::{secret, stored_token};
use super::{check_listen, ConfigError};
use crate::auth::Token;

/// Name of the generated admin token inside the state directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Name of the file in the state directory that keeps the clients created through the admin
/// API.
pub const CLIENTS_FILE: &str = "clients.toml";

/// Name of the admin socket inside the state directory (`admin_listen = "unix"`).
pub const ADMIN_SOCKET: &str = "admin.sock";

/// Where the admin API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddress {
    /// A TCP address (`HOST:PORT`), served with TLS.
    Tcp(String),
    /// A UNIX socket path.
    Unix(PathBuf),
}

impl AdminAddress {
    /// `unix` is `STATE_DIR/admin.sock`, a value holding a `/` a socket path, anything else a
    /// TCP address.
    pub fn parse(value: &str, state_dir: &Path) -> Result<Self, ConfigError> {
        if value == "unix" {
            Ok(Self::Unix(state_dir.join(ADMIN_SOCKET)))
        } else if value.contains('/') {
            Ok(Self::Unix(value.into()))
        } else {
            check_listen("admin_listen", value)?;
            Ok(Self::Tcp(value.to_owned()))
        }
    }
}

/// The admin API as configured.
#[derive(Debug)]
#[non_exhaustive]
pub struct AdminSetup {
    /// Where it listens.
    pub listen: AdminAddress,
    /// The token every request over TCP carries (`None` on a socket).
    pub token: Option<Token>,
    /// Where that token came from.
    pub token_source: TokenSource,
    /// TLS for TCP: the server's own certificate.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Checks the admin settings without touching the disk.
pub(super) fn check(file: &ServerFile, state_dir: &Path) -> Result<(), ConfigError> {
    super::tokens::check_secret("admin_token", file.admin_token.as_ref(), file.admin_token_file.as_deref())?;
    let Some(listen) = &file.admin_listen else {
        if file.admin_token.is_some() || file.admin_token_file.is_some() {
            return Err(ConfigError::Conflict("`admin_token` is set but `admin_listen` is not".into()));
        }
        return Ok(());
    };
    if let AdminAddress::Tcp(_) = AdminAddress::parse(listen, state_dir)? {
        if file.insecure_plaintext {
            return Err(ConfigError::Conflict(
                "the admin API over TCP needs TLS: with `insecure_plaintext`, use `admin_listen = \"unix\"`"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// The admin API's setup, reading or generating its token; `None` when it is off.
pub(super) fn setup(
    file: &ServerFile,
    state_dir: &Path,
    tls: Option<&Arc<rustls::ServerConfig>>,
) -> Result<Option<AdminSetup>, ConfigError> {
    check(file, state_dir)?;
    let Some(listen) = &file.admin_listen else { return Ok(None) };
    let listen = AdminAddress::parse(listen, state_dir)?;
    // `unix`: the state directory's socket, in a directory made for it if need be; a path
    // given must name a directory that exists.
    if matches!(&listen, AdminAddress::Unix(path) if path.parent() == Some(state_dir)) {
        crate::fs::create_private_dir(state_dir)
            .map_err(|source| ConfigError::StateDir { path: state_dir.to_owned(), source })?;
    }
    let (token, token_source) = match &listen {
        AdminAddress::Unix(_) => (None, TokenSource::None),
        AdminAddress::Tcp(_) => {
            match secret("admin_token", file.admin_token.as_ref(), file.admin_token_file.as_deref())? {
                Some(token) => (Some(token), TokenSource::Supplied),
                None => {
                    let (token, source) = stored_token(state_dir, ADMIN_TOKEN_FILE)?;
                    (Some(token), source)
                }
            }
        }
    };
    Ok(Some(AdminSetup { listen, token, token_source, tls: tls.cloned() }))
}
