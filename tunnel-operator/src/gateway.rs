//! The Gateway API objects the operator reads (`gateway.networking.k8s.io`), typed as far as it
//! uses them. Fields it does not implement are kept (`other`), so a route using one is refused
//! by the field's name instead of being served without it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The Gateway API group.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// Fields of an object the operator does not implement, by name.
pub type Other = BTreeMap<String, Value>;

/// `HTTPRoute` (v1).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    root = "HttpRoute",
    namespaced,
    status = "RouteStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// The Gateways it attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Host names it serves.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Its rules.
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

/// A reference to a parent (a Gateway).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// Group (default the Gateway API's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind (default `Gateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Namespace (default the route's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// A listener of the Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// A port of the Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// One rule: matches, filters, backends.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// Any of these matches (default: every request).
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
    /// Filters, applied in order.
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// Where requests go, by weight.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
    /// The rule's name (informational).
    #[serde(default)]
    pub name: Option<String>,
    /// Everything else (session persistence, retries...).
    #[serde(flatten)]
    pub other: Other,
}

/// One match: all of its parts must hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// The path.
    #[serde(default)]
    pub path: Option<PathMatch>,
    /// Headers.
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    /// Query parameters.
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
    /// The method.
    #[serde(default)]
    pub method: Option<String>,
}

/// `path: {type, value}`.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct PathMatch {
    /// `PathPrefix` (default), `Exact` or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The path (default `/`).
    #[serde(default)]
    pub value: Option<String>,
}

/// A header or query parameter match.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ValueMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The name.
    pub name: String,
    /// The value.
    pub value: String,
}

/// A filter.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// `RequestHeaderModifier`, `RequestRedirect`, or one the operator refuses.
    #[serde(rename = "type")]
    pub kind: String,
    /// For `RequestHeaderModifier`.
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    /// For `RequestRedirect`.
    #[serde(default)]
    pub request_redirect: Option<Redirect>,
}

/// `requestHeaderModifier`.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct HeaderModifier {
    /// Replace.
    #[serde(default)]
    pub set: Vec<HeaderValue>,
    /// Add.
    #[serde(default)]
    pub add: Vec<HeaderValue>,
    /// Remove, by name.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct HeaderValue {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// `requestRedirect`.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Port.
    #[serde(default)]
    pub port: Option<i32>,
    /// 301 or 302 (the Gateway API's two).
    #[serde(default)]
    pub status_code: Option<i32>,
    /// Path rewriting: refused, the edge does not rewrite paths.
    #[serde(default)]
    pub path: Option<Value>,
}

/// A backend.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// Group (default core).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (default `Service`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (default the route's; another needs a ReferenceGrant).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The Service port.
    #[serde(default)]
    pub port: Option<i32>,
    /// Share of requests (default 1).
    #[serde(default)]
    pub weight: Option<i32>,
    /// Per-backend filters: refused.
    #[serde(default)]
    pub filters: Vec<Value>,
}

/// `timeouts`.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// The whole request.
    #[serde(default)]
    pub request: Option<String>,
    /// The wait for the backend.
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// A route's status: one entry per parent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct RouteStatus {
    /// Per parent.
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}

/// The status a controller writes for one parent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parent.
    pub parent_ref: ParentRef,
    /// The controller writing it.
    pub controller_name: String,
    /// `Accepted` and `ResolvedRefs`.
    pub conditions: Vec<Condition>,
}

/// `Gateway` (v1).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Its class.
    pub gateway_class_name: String,
    /// Its listeners (informational here).
    #[serde(default)]
    pub listeners: Vec<Value>,
}

/// `GatewayClass` (v1).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default)]
#[kube(group = "gateway.networking.k8s.io", version = "v1", kind = "GatewayClass", schema = "disabled")]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassSpec {
    /// The controller serving it: ours is [`crate::httproute::GATEWAY_CONTROLLER`].
    pub controller_name: String,
    /// Parameters: the tunnel its Gateways use.
    #[serde(default)]
    pub parameters_ref: Option<TunnelParameters>,
}

/// A class's `parameters` (IngressClass) or `parametersRef` (GatewayClass) naming a tunnel.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct TunnelParameters {
    /// `tunnel-rs.github.io`.
    #[serde(default)]
    pub group: Option<String>,
    /// `Tunnel` or `ClusterTunnel`.
    pub kind: String,
    /// The tunnel's name.
    pub name: String,
    /// A `Tunnel`'s namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `ReferenceGrant` (v1beta1): lets objects of `from` use objects of `to` in its namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1beta1",
    kind = "ReferenceGrant",
    namespaced,
    schema = "disabled"
)]
pub struct ReferenceGrantSpec {
    /// Who may refer.
    pub from: Vec<GrantFrom>,
    /// To what.
    pub to: Vec<GrantTo>,
}

/// `from` of a grant.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct GrantFrom {
    /// Group.
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
}

/// `to` of a grant.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct GrantTo {
    /// Group (`""` for core).
    pub group: String,
    /// Kind.
    pub kind: String,
    /// One object by name (default: all of the kind).
    #[serde(default)]
    pub name: Option<String>,
}
