//! The admin API's requests and answers, without any I/O: a method, a path and a body in, a
//! status and a JSON body out. `docs/admin-api.yaml` describes exactly this.

use std::time::SystemTime;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Admin, AdminError, ClientInfo, ClientSource, Grant};
use crate::auth::CredentialKind;
use crate::forward::{Glob, IpNet, PortSet, VisitRule};
use crate::server::SessionInfo;

/// An answer: its status, its JSON body, and for a 405 the methods the path allows. No
/// `Debug`: a body may hold a token.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
    pub(crate) allow: Option<&'static str>,
}

impl Answer {
    fn ok(body: Value) -> Self {
        Self { status: StatusCode::OK, body, allow: None }
    }

    pub(crate) fn error(status: StatusCode, message: impl std::fmt::Display) -> Self {
        Self { status, body: json!({ "error": message.to_string() }), allow: None }
    }
}

/// A grant as `POST /v1/clients` (beside `name`) and `PUT /v1/clients/NAME` take it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    #[serde(default)]
    allow_ports: Option<PortSet>,
    #[serde(default)]
    allow_hosts: Vec<Glob>,
    #[serde(default)]
    allow_visit: Vec<VisitRule>,
    #[serde(default)]
    allow_expose: Vec<Glob>,
    #[serde(default)]
    allow_networks: Vec<IpNet>,
    #[serde(default)]
    replicas: Option<usize>,
}

impl GrantBody {
    fn into_grant(self) -> Result<Grant, String> {
        let grant = Grant {
            allow_ports: self.allow_ports,
            allow_hosts: self.allow_hosts,
            allow_visit: self.allow_visit,
            allow_expose: self.allow_expose,
            allow_networks: self.allow_networks,
            replicas: self.replicas,
        };
        grant.check().map(|()| grant)
    }
}

/// A new client, as `POST /v1/clients` takes it: `name` and a grant.
struct NewClient {
    name: String,
    grant: GrantBody,
}

impl<'de> Deserialize<'de> for NewClient {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut fields = Object::deserialize(deserializer)?.0;
        let name = match fields.remove("name") {
            Some(Value::String(name)) => name,
            Some(_) => return Err(D::Error::custom("name: a string")),
            None => return Err(D::Error::missing_field("name")),
        };
        let grant = GrantBody::deserialize(Value::Object(fields)).map_err(D::Error::custom)?;
        Ok(Self { name, grant })
    }
}

/// A JSON object whose keys are each given once. serde_json keeps the last of a key given
/// twice, so `{"name":"a","name":"b"}` would create `b` where a proxy or an audit log in front
/// read `a`.
struct Object(serde_json::Map<String, Value>);

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Object;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
                let mut fields = serde_json::Map::new();
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    if fields.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!("{key:?} is given twice")));
                    }
                    fields.insert(key, value);
                }
                Ok(Object(fields))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// A request to the admin API, decoded from its method, path and body (no I/O): what
/// `docs/admin-api.yaml` lists, or why it is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdminRequest {
    /// `GET /v1/status`
    Status,
    /// `GET /v1/sessions`
    Sessions,
    /// `GET /v1/forwards`
    Forwards,
    /// `GET /v1/routes`
    Routes,
    /// `GET /v1/clients`
    ListClients,
    /// `GET /v1/clients/NAME`
    GetClient(String),
    /// `POST /v1/clients`
    CreateClient {
        /// The new client's name.
        name: String,
        /// What it may do.
        grant: Grant,
    },
    /// `POST /v1/clients/NAME/rotate`
    RotateClient(String),
    /// `PUT /v1/clients/NAME`: another grant, the same token.
    RegrantClient {
        /// The client's name.
        name: String,
        /// What it may do from now on.
        grant: Grant,
    },
    /// `DELETE /v1/clients/NAME`
    RevokeClient(String),
}

/// Why a request could not be decoded: its status (400, 404 or 405) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    /// The HTTP status to answer with.
    pub status: StatusCode,
    /// What is wrong.
    pub message: String,
    /// For a 405, the methods the path takes.
    pub allow: Option<&'static str>,
}

impl AdminRequest {
    /// Decodes a request from its method, its path (without the query) and its body.
    pub fn decode(method: &Method, path: &str, body: &[u8]) -> Result<Self, Undecodable> {
        let refuse = |status, message: String| Undecodable { status, message, allow: None };
        let not_allowed = |allow: &'static str| Undecodable {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("this path takes {allow}"),
            allow: Some(allow),
        };
        let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
        Ok(match (segments.as_slice(), method) {
            (["v1", "status"], &Method::GET) => Self::Status,
            (["v1", "sessions"], &Method::GET) => Self::Sessions,
            (["v1", "forwards"], &Method::GET) => Self::Forwards,
            (["v1", "routes"], &Method::GET) => Self::Routes,
            (["v1", "clients"], &Method::GET) => Self::ListClients,
            (["v1", "clients"], &Method::POST) => {
                let new: NewClient = serde_json::from_slice(body)
                    .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("not a valid new client: {e}")))?;
                let grant = new
                    .grant
                    .into_grant()
                    .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("not a valid new client: {e}")))?;
                Self::CreateClient { name: new.name, grant }
            }
            (["v1", "clients", name], &Method::PUT) => {
                // An object only: serde would take a struct from an array too.
                let body = serde_json::from_slice::<Object>(body)
                    .and_then(|fields| GrantBody::deserialize(Value::Object(fields.0)))
                    .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("not a valid grant: {e}")))?;
                let grant = body
                    .into_grant()
                    .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("not a valid grant: {e}")))?;
                Self::RegrantClient { name: (*name).to_owned(), grant }
            }
            (["v1", "clients", name], &Method::GET) => Self::GetClient((*name).to_owned()),
            (["v1", "clients", name], &Method::DELETE) => Self::RevokeClient((*name).to_owned()),
            (["v1", "clients", name, "rotate"], &Method::POST) => Self::RotateClient((*name).to_owned()),
            (["v1", "status" | "sessions" | "forwards" | "routes"], _) => return Err(not_allowed("GET")),
            (["v1", "clients"], _) => return Err(not_allowed("GET, POST")),
            (["v1", "clients", _], _) => return Err(not_allowed("GET, PUT, DELETE")),
            (["v1", "clients", _, "rotate"], _) => return Err(not_allowed("POST")),
            _ => {
                let shown = crate::log::Escaped(path);
                return Err(refuse(
                    StatusCode::NOT_FOUND,
                    format!("no such path: {shown} (see docs/admin-api.yaml)"),
                ));
            }
        })
    }
}

/// Answers one request (already authenticated).
pub(crate) async fn answer(admin: &Admin, method: &Method, path: &str, body: &[u8]) -> Answer {
    let request = match AdminRequest::decode(method, path, body) {
        Ok(request) => request,
        Err(Undecodable { status, message, allow }) => {
            return Answer { allow, ..Answer::error(status, message) }
        }
    };
    match request {
        AdminRequest::Status => Answer::ok(status(admin).await),
        AdminRequest::Sessions => Answer::ok(
            json!({ "sessions": admin.server().sessions().iter().map(session).collect::<Vec<_>>() }),
        ),
        AdminRequest::Forwards => Answer::ok(json!({ "forwards": routes(admin, Some("tcp")) })),
        AdminRequest::Routes => Answer::ok(json!({ "routes": routes(admin, None) })),
        AdminRequest::ListClients => {
            Answer::ok(json!({ "clients": admin.clients().iter().map(client).collect::<Vec<_>>() }))
        }
        AdminRequest::GetClient(name) => match admin.clients().iter().find(|c| c.name == name) {
            Some(found) => Answer::ok(client(found)),
            None => Answer::error(StatusCode::NOT_FOUND, format!("no client {}", crate::log::Escaped(&name))),
        },
        AdminRequest::CreateClient { name, grant } => match admin.create(&name, grant).await {
            Ok(token) => Answer {
                status: StatusCode::CREATED,
                body: json!({ "name": name, "token": token.expose_secret() }),
                allow: None,
            },
            Err(err) => refused(err),
        },
        AdminRequest::RevokeClient(name) => match admin.revoke(&name).await {
            Ok(ended) => Answer::ok(json!({ "name": name, "ended": ended })),
            Err(err) => refused(err),
        },
        AdminRequest::RegrantClient { name, grant } => match admin.regrant(&name, grant).await {
            Ok(ended) => Answer::ok(json!({ "name": name, "ended": ended })),
            Err(err) => refused(err),
        },
        AdminRequest::RotateClient(name) => match admin.rotate(&name).await {
            Ok(token) => Answer::ok(json!({ "name": name, "token": token.expose_secret() })),
            Err(err) => refused(err),
        },
    }
}

fn refused(err: AdminError) -> Answer {
    let status = match &err {
        AdminError::InvalidName { .. } => StatusCode::BAD_REQUEST,
        AdminError::Exists(_) | AdminError::FromConfig(_) => StatusCode::CONFLICT,
        AdminError::NotFound(_) => StatusCode::NOT_FOUND,
        // The store would grow past what a start reads back: full, not failing, and said why.
        AdminError::Store { source, .. } if source.kind() == std::io::ErrorKind::InvalidData => {
            return Answer::error(StatusCode::INSUFFICIENT_STORAGE, crate::log::Chain(&err));
        }
        AdminError::Store { .. } => {
            tracing::error!("admin API: {}", crate::log::Chain(&err));
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    Answer::error(status, err)
}

async fn status(admin: &Admin) -> Value {
    let server = admin.server();
    let clients = admin.clients();
    let created = clients.iter().filter(|c| c.source == ClientSource::Admin).count();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "draining": server.is_draining(),
        "sessions": server.session_count(),
        "clients": { "config": clients.len() - created, "admin": created },
    })
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn session(s: &SessionInfo) -> Value {
    json!({
        "name": s.name,
        "peer": s.peer.to_string(),
        "credential": match s.credential {
            CredentialKind::Shared => "shared",
            CredentialKind::PerClient => "client",
        },
        "protocol": s.protocol,
        "since": unix_seconds(s.since),
        "rtt_ms": s.rtt.map(|rtt| rtt.as_secs_f64() * 1000.0),
        "connections": s.connections,
        "open_streams": s.open_streams,
        "bytes_received": s.bytes_received,
        "bytes_sent": s.bytes_sent,
        "table_version": s.table_version,
    })
}

/// Every session's routes (of `kind` only, when given), flat, by client.
fn routes(admin: &Admin, kind: Option<&str>) -> Vec<Value> {
    let mut routes = Vec::new();
    for s in admin.server().sessions() {
        for route in s.routes.iter().filter(|r| kind.is_none_or(|k| r.kind == k)) {
            routes.push(json!({
                "client": s.name,
                "table_version": s.table_version,
                "id": route.id.to_string(),
                "kind": route.kind,
                "public_addr": route.public_addr.map(|a| a.to_string()),
                "target": route.target,
            }));
        }
    }
    routes
}

fn client(c: &ClientInfo) -> Value {
    json!({
        "name": c.name,
        "source": match c.source {
            ClientSource::Config => "config",
            ClientSource::Admin => "admin",
        },
        "online": c.online,
        "allow_ports": c.grant.allow_ports.as_ref().map(ToString::to_string),
        "allow_hosts": c.grant.allow_hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "allow_visit": c.grant.allow_visit.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "allow_expose": c.grant.allow_expose.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "allow_networks": c.grant.allow_networks.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "replicas": c.grant.replicas.unwrap_or(1),
    })
}
