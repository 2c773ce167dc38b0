//! The custom resources: `Tunnel` (namespaced) and `ClusterTunnel` (cluster-scoped), group
//! `tunnel-rs.github.io`, version `v1alpha1`. Both have the same spec and status; they differ in
//! who may use them (a `Tunnel` only its own namespace) and where their secrets live.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of both resources.
pub const GROUP: &str = "tunnel-rs.github.io";
/// The answer for requests no route matches, when `fallbackTarget` is not given.
pub const DEFAULT_FALLBACK: &str = "http_status:404";

/// What a `Tunnel` or `ClusterTunnel` asks for: a client identity on a tunnel server, the
/// connector Deployment that holds it, and what that connector serves.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default)]
#[kube(
    group = "tunnel-rs.github.io",
    version = "v1alpha1",
    kind = "Tunnel",
    doc = "A tunnel serving its own namespace: a client credential on a tunnel server and the connector Deployment holding it.",
    namespaced,
    status = "TunnelStatus",
    shortname = "tun",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Config","type":"integer","jsonPath":".status.configVersion"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    cel,
    validation = Rule::new("has(self.newTunnel) != has(self.existingTunnel)")
        .message("give exactly one of newTunnel and existingTunnel"),
    validation = Rule::new("!self.enableWarpRouting || (has(self.networks) && size(self.networks) > 0)")
        .message("enableWarpRouting needs at least one network"),
    validation = Rule::new("!has(self.newTunnel) || has(self.server.adminSecret)")
        .message("newTunnel needs server.adminSecret to create the client credential")
)]
#[serde(rename_all = "camelCase")]
pub struct TunnelSpec {
    /// Create a client credential of this name on the server (through its admin API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_tunnel: Option<NewTunnel>,
    /// Use a client credential that exists: its name, and the Secret holding its token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_tunnel: Option<ExistingTunnel>,
    /// The tunnel server.
    pub server: ServerRef,
    /// What carries the connector's session to the server.
    #[serde(default)]
    pub protocol: Protocol,
    /// The answer for requests to this tunnel's hosts that no route matches:
    /// `http_status:NNN`, `http://HOST:PORT` or `https://HOST:PORT` (default `http_status:404`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http_status:') || self.startsWith('http://') || self.startsWith('https://')")
        .message("fallbackTarget is http_status:NNN, http://HOST:PORT or https://HOST:PORT"))]
    pub fallback_target: Option<String>,
    /// A patch applied last to the connector Deployment: a strategic-merge patch (YAML or JSON
    /// object), or a JSON array applied as an RFC 6902 JSON Patch (at most 1024 operations, 16
    /// of them copies, leaving a Deployment of at most 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub deploy_patch: Option<String>,
    /// Offer `networks` through the tunnel (private network access). Setting it back to false
    /// withdraws them.
    #[serde(default)]
    pub enable_warp_routing: bool,
    /// Networks (CIDRs) the connector offers when `enableWarpRouting` is true.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(n, isCIDR(n))").message("networks are CIDRs such as 10.0.0.0/8"))]
    pub networks: Vec<String>,
    /// Hosts this tunnel's routes may use, as the server's `allow_hosts` spells them (globs
    /// such as `*.apps.example.com` or `shop.example.com`, at most 64): a route for another
    /// host is refused (`HostNotAllowed`). Empty: any host. A wildcard over a top-level domain
    /// (`*.com`) is refused either way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allowed_hosts: Vec<String>,
    /// Connector replicas (default 1); each holds a session under the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub replicas: Option<i32>,
    /// The connector image (default: the operator's `--connector-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// `newTunnel`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default)]
pub struct NewTunnel {
    /// The client name to create on the server; it cannot change (the credential is that
    /// name's).
    #[x_kube(validation = Rule::new("self == oldSelf").message("newTunnel.name cannot change: create another tunnel"))]
    pub name: String,
}

/// `existingTunnel`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
pub struct ExistingTunnel {
    /// The client name the credential is for.
    pub name: String,
    /// The Secret holding the client token under the key `token` (in the tunnel's namespace;
    /// a ClusterTunnel's in the operator's).
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub secret: String,
}

/// `server`: where the tunnel server is and how to trust it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default)]
#[x_kube(
    cel,
    validation = Rule::new("has(self.fingerprint) != has(self.caSecret)")
        .message("give exactly one of fingerprint and caSecret")
)]
#[serde(rename_all = "camelCase")]
pub struct ServerRef {
    /// `host:port` of the server's main listener.
    pub address: String,
    /// The SHA-256 fingerprint of the server's certificate (64 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// A Secret holding the CA that verifies the server, under the key `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub ca_secret: Option<String>,
    /// A Secret holding the server's admin API address (`address`, `host:port`) and token
    /// (`token`): needed to create credentials and to confirm which configuration a connector runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub admin_secret: Option<String>,
    /// The public host name visitors reach the server by; written into the status of the
    /// Ingresses served, so external-dns can publish it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_hostname: Option<String>,
}

/// `protocol`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP, then WebSocket when TCP fails after connecting.
    #[default]
    Auto,
    /// TLS over TCP.
    Tcp,
    /// TLS, then an HTTP/1.1 upgrade to WebSocket, for networks that let only HTTPS out.
    Websocket,
}

/// The status both resources report.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TunnelStatus {
    /// Where the credential lives: `SERVER_ADDRESS/NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_id: Option<String>,
    /// The client name on the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_name: Option<String>,
    /// `pending`, `creating`, `active`, `error` or `deleting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    /// The connector configuration the server has confirmed (counts up from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<i64>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the connector runs and holds a session) and `Synced` (the server runs the
    /// rendered configuration), each with a reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The hosts the tunnel serves, each with the namespace holding it and the routes served on
    /// it. A host stays its holder's while one of the holder's objects claims it, and the routes
    /// served keep their places before any new route: another namespace takes neither by
    /// claiming through an older object. Always written, empty too: a merge patch leaving it
    /// out would keep the last list.
    #[serde(default)]
    pub hosts: Vec<HeldHost>,
}

/// One entry of `status.hosts`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, PartialEq)]
pub struct HeldHost {
    /// The host, as routes name it (`app.example.com`, `*.example.com`).
    pub host: String,
    /// The namespace holding it.
    pub namespace: String,
    /// The routes served on it (none: it is held, but its routes did not fit the budgets, or
    /// it was released).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<HeldRoute>,
    /// When the namespace stopped claiming it: the host stays reserved to it for a while (an
    /// uninstall and install again keep it), then goes to whoever claims it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<Time>,
}

/// A route served, in `status.hosts[].routes`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, PartialEq)]
pub struct HeldRoute {
    /// Its id (16 hex digits, as the server's admin API lists it): a hash of what it matches.
    pub id: String,
    /// Bytes of configuration it took: grown past this, it is a new route, with no place kept.
    pub bytes: u64,
}

/// `status.state`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Seen, nothing done yet.
    Pending,
    /// The credential is being created, or the connector is not ready yet.
    Creating,
    /// The connector holds a session.
    Active,
    /// Something is wrong; the conditions say what.
    Error,
    /// Being deleted: the credential is revoked before the finalizer is removed.
    Deleting,
}

/// The cluster-wide shared tunnel: the same spec as [`TunnelSpec`], usable from every namespace;
/// its secrets live in the operator's namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[kube(
    group = "tunnel-rs.github.io",
    version = "v1alpha1",
    kind = "ClusterTunnel",
    doc = "A tunnel shared by every namespace; its connector and secrets live in the operator's namespace.",
    status = "TunnelStatus",
    shortname = "ctun",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Config","type":"integer","jsonPath":".status.configVersion"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
#[schemars(transparent)]
pub struct ClusterTunnelSpec(pub TunnelSpec);
