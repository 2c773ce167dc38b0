//! What the controller asks of a tunnel server, through its admin API: behind a trait, so the
//! controller's tests can answer in its place.

use std::future::Future;

use serde_json::Value;
use tunnel_core::admin::{AdminClient, AdminClientError, AdminTarget, Grant};
use tunnel_core::auth::Token;
use tunnel_core::tls::ServerTrust;

/// How to reach one server's admin API.
#[derive(Debug, Clone)]
pub struct AdminAccess {
    /// `host:port`.
    pub address: String,
    /// The admin token.
    pub token: Token,
    /// How the server's certificate is checked: as the connector checks it.
    pub trust: ServerTrust,
}

/// An admin API's refusal, by what the operator does about it.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// 404: the client does not exist.
    #[error("the server has no client {0}")]
    NotFound(String),
    /// 409: the name is taken (or listed by the server's configuration file).
    #[error("the server already has a client {0}")]
    Exists(String),
    /// Anything else: unreachable, refused, unexpected.
    #[error("the admin API at {address} failed")]
    Failed {
        /// The admin API's address.
        address: String,
        /// Why.
        #[source]
        source: AdminClientError,
    },
}

/// The client names and route ids a server has in service, for one client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InService {
    /// Sessions the client holds.
    pub sessions: usize,
    /// The ids of the routes accepted for it (any session).
    pub route_ids: std::collections::BTreeSet<String>,
}

/// The calls the controller makes on a tunnel server.
pub trait Servers: Send + Sync + 'static {
    /// Creates client `name`; its token.
    fn create(
        &self,
        access: &AdminAccess,
        name: &str,
        grant: &Grant,
    ) -> impl Future<Output = Result<Token, ServerError>> + Send;
    /// Client `name`'s grant as the server holds it.
    fn grant(
        &self,
        access: &AdminAccess,
        name: &str,
    ) -> impl Future<Output = Result<Grant, ServerError>> + Send;
    /// Gives client `name` another grant.
    fn regrant(
        &self,
        access: &AdminAccess,
        name: &str,
        grant: &Grant,
    ) -> impl Future<Output = Result<(), ServerError>> + Send;
    /// Removes client `name`.
    fn revoke(
        &self,
        access: &AdminAccess,
        name: &str,
    ) -> impl Future<Output = Result<(), ServerError>> + Send;
    /// What client `name` has in service.
    fn in_service(
        &self,
        access: &AdminAccess,
        name: &str,
    ) -> impl Future<Output = Result<InService, ServerError>> + Send;
}

/// The real servers, over their admin APIs.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdminApis;

fn client(access: &AdminAccess) -> Result<AdminClient, ServerError> {
    let target = AdminTarget::Tls {
        addr: access.address.clone(),
        trust: access.trust.clone(),
        token: access.token.clone(),
    };
    AdminClient::new(target).map_err(|source| ServerError::Failed { address: access.address.clone(), source })
}

fn classify(access: &AdminAccess, name: &str, source: AdminClientError) -> ServerError {
    match source {
        AdminClientError::Refused { status: 404, .. } => ServerError::NotFound(name.to_owned()),
        AdminClientError::Refused { status: 409, .. } => ServerError::Exists(name.to_owned()),
        source => ServerError::Failed { address: access.address.clone(), source },
    }
}

impl Servers for AdminApis {
    async fn create(&self, access: &AdminAccess, name: &str, grant: &Grant) -> Result<Token, ServerError> {
        client(access)?.create(name, grant).await.map_err(|e| classify(access, name, e))
    }

    async fn grant(&self, access: &AdminAccess, name: &str) -> Result<Grant, ServerError> {
        let path = format!("/v1/clients/{name}");
        let answer = client(access)?
            .request(http::Method::GET, &path, None)
            .await
            .map_err(|e| classify(access, name, e))?;
        grant_of(&answer).map_err(|message| ServerError::Failed {
            address: access.address.clone(),
            source: AdminClientError::Unexpected(message),
        })
    }

    async fn regrant(&self, access: &AdminAccess, name: &str, grant: &Grant) -> Result<(), ServerError> {
        client(access)?.regrant(name, grant).await.map(drop).map_err(|e| classify(access, name, e))
    }

    async fn revoke(&self, access: &AdminAccess, name: &str) -> Result<(), ServerError> {
        client(access)?.revoke(name).await.map(drop).map_err(|e| classify(access, name, e))
    }

    async fn in_service(&self, access: &AdminAccess, name: &str) -> Result<InService, ServerError> {
        let admin = client(access)?;
        let failed = |source| ServerError::Failed { address: access.address.clone(), source };
        let sessions = admin.sessions().await.map_err(failed)?;
        let routes = admin.routes().await.map_err(failed)?;
        let mine =
            |v: &&Value| v.get("name").or_else(|| v.get("client")).and_then(Value::as_str) == Some(name);
        Ok(InService {
            sessions: sessions.iter().filter(mine).count(),
            route_ids: routes
                .iter()
                .filter(|r| r.get("client").and_then(Value::as_str) == Some(name))
                .filter_map(|r| r.get("id").and_then(Value::as_str).map(str::to_owned))
                .collect(),
        })
    }
}

/// A grant from the admin API's client listing.
pub fn grant_of(answer: &Value) -> Result<Grant, String> {
    let list = |key: &str| -> Vec<String> {
        answer
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let parse = |key: &str| -> Result<Vec<_>, String> {
        list(key).iter().map(|v| v.parse().map_err(|e| format!("{key}: {e}"))).collect()
    };
    let mut grant = Grant::default();
    grant.allow_ports = match answer.get("allow_ports").and_then(Value::as_str) {
        Some(ports) => Some(ports.parse().map_err(|e| format!("allow_ports: {e}"))?),
        None => None,
    };
    grant.allow_hosts = parse("allow_hosts")?;
    grant.allow_visit = list("allow_visit")
        .iter()
        .map(|v| v.parse().map_err(|e| format!("allow_visit: {e}")))
        .collect::<Result<_, _>>()?;
    grant.allow_expose = parse("allow_expose")?;
    grant.allow_networks = list("allow_networks")
        .iter()
        .map(|v| v.parse().map_err(|e| format!("allow_networks: {e}")))
        .collect::<Result<_, _>>()?;
    grant.replicas = answer.get("replicas").and_then(Value::as_u64).map(|n| n as usize);
    Ok(grant)
}
