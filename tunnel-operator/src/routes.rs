//! What Ingresses and HTTPRoutes ask of a tunnel, in the terms both translate into: routes of
//! the connector's configuration ([`RouteFile`]), who asked for each, and notes (Events) about
//! what could not be served.

use k8s_openapi::api::core::v1::{ObjectReference, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};
use tunnel_core::config::{PathType, RouteFile};
use tunnel_core::http::Service as Origin;

use crate::objects::Cluster;
use crate::tunnels::TunnelKey;

/// Routes from Ingresses and HTTPRoutes one tunnel's connector takes at most: its route table's
/// limit, less room for the tunnel's own fallback and up to 63 networks.
pub const ROUTE_BUDGET: usize = tunnel_core::client::MAX_ROUTES_PER_SET - 64;

/// Bytes of those routes (as TOML) one tunnel's configuration takes at most, well under the
/// 1 MiB a ConfigMap may hold.
pub const ROUTE_BYTES: usize = 768 * 1024;

/// How many times a tunnel's budgets ([`ROUTE_BUDGET`], [`ROUTE_BYTES`]) of HTTPRoutes' routes
/// are claimed for it, older objects first, before `assign` decides which to serve: room for
/// routes it then refuses (hosts not allowed or another namespace's, conflicts) and for those
/// `status.hosts` puts first, while no number of objects makes the operator hold more than
/// this many configurations' worth of routes per tunnel. An HTTPRoute makes a route per
/// hostname and match, each with its rule's header changes: 135 KB of YAML made 282 MB.
pub const CLAIM_SLACK: usize = 4;

/// How the operator reaches Services: their cluster DNS names.
#[derive(Debug, Clone)]
pub struct Naming {
    /// The cluster's DNS domain (default `cluster.local`).
    pub cluster_domain: String,
}

impl Default for Naming {
    fn default() -> Self {
        Self { cluster_domain: "cluster.local".into() }
    }
}

/// A route an object asks a tunnel for.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The tunnel.
    pub tunnel: TunnelKey,
    /// The object asking.
    pub source: Source,
    /// The route.
    pub route: RouteFile,
}

/// The object a claim or note is about; claims of older objects win a conflict.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// The object.
    pub reference: ObjectReference,
    /// Its creation time, when known.
    pub created: Option<Time>,
}

impl Source {
    /// The source for a typed object.
    pub fn of<K: Resource<DynamicType = ()>>(object: &K) -> Self {
        let meta = object.meta();
        Self {
            reference: ObjectReference {
                api_version: Some(K::api_version(&()).into_owned()),
                kind: Some(K::kind(&()).into_owned()),
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                uid: meta.uid.clone(),
                ..ObjectReference::default()
            },
            created: meta.creation_timestamp.clone(),
        }
    }

    /// Older first, then by namespace and name: the order conflicts are decided in.
    pub fn order_key(&self) -> (Option<&Time>, Option<&str>, Option<&str>) {
        (self.created.as_ref(), self.reference.namespace.as_deref(), self.reference.name.as_deref())
    }

    /// `Kind namespace/name`, for messages.
    pub fn describe(&self) -> String {
        let r = &self.reference;
        let kind = r.kind.as_deref().unwrap_or("object");
        match &r.namespace {
            Some(ns) => format!("{kind} {ns}/{}", r.name.as_deref().unwrap_or("")),
            None => format!("{kind} {}", r.name.as_deref().unwrap_or("")),
        }
    }
}

/// Something about an object the operator could not do as asked: a Warning Event on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// The object.
    pub source: Source,
    /// A CamelCase reason.
    pub reason: String,
    /// What is wrong and what was done instead.
    pub message: String,
}

impl Note {
    /// A note on `source`.
    pub fn new(source: &Source, reason: &str, message: impl Into<String>) -> Self {
        Self { source: source.clone(), reason: reason.to_owned(), message: message.into() }
    }
}

/// A route of `host` and an optional path to one origin.
pub fn route_to(host: &str, path: Option<(&str, PathType)>, origin: Origin) -> Result<RouteFile, String> {
    let host = host.parse().map_err(|e| format!("host {host:?}: {e}"))?;
    let route = RouteFile {
        host,
        path: path.map(|(p, _)| p.to_owned()),
        path_type: path.map(|(_, t)| t),
        methods: Vec::new(),
        headers: Default::default(),
        service: Some(origin),
        backends: Vec::new(),
        redirect: None,
        request_headers: Default::default(),
        host_header: None,
        timeout: None,
    };
    route.build()?;
    Ok(route)
}

/// How a Service port is spoken to, from its `appProtocol`: `None` when the edge cannot.
fn scheme(port: &ServicePort) -> Result<&'static str, String> {
    let protocol = port.app_protocol.as_deref().unwrap_or("http");
    match protocol.to_ascii_lowercase().as_str() {
        "http" | "kubernetes.io/ws" | "ws" => Ok("http"),
        "https" | "kubernetes.io/wss" | "wss" => Ok("https"),
        other => Err(format!(
            "appProtocol {other:?} is not served: the connector speaks HTTP/1.1 or HTTPS to origins"
        )),
    }
}

/// A Service port, by number or name.
#[derive(Debug, Clone, Copy)]
pub enum PortRef<'a> {
    /// `port.number`.
    Number(i32),
    /// `port.name`.
    Name(&'a str),
}

/// The origin of Service `name` in `namespace` on `port`: its cluster DNS name, the port
/// number (a named port resolved through the Service) and the scheme its `appProtocol` asks
/// for. The error says what is missing, for a note.
pub fn service_origin(
    cluster: &Cluster,
    naming: &Naming,
    namespace: &str,
    name: &str,
    port: PortRef<'_>,
) -> Result<Origin, (&'static str, String)> {
    let service = cluster
        .service(namespace, name)
        .ok_or_else(|| ("ServiceNotFound", format!("Service {namespace}/{name} does not exist")))?;
    let spec = service.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        // It would publish whatever name it points at (another namespace's Service, the API
        // server, a metadata address) with no grant from its owner.
        let message = format!("Service {namespace}/{name} is of type ExternalName, which is not served");
        return Err(("UnsupportedValue", message));
    }
    let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
    // Only a port the Service lists: through a headless Service another would reach whatever
    // its pods (or a hand-made EndpointSlice) listen on.
    let found = match port {
        PortRef::Number(n) => ports
            .iter()
            .find(|p| p.port == n)
            .ok_or_else(|| ("PortNotFound", format!("Service {namespace}/{name} has no port {n}")))?,
        PortRef::Name(wanted) => {
            ports.iter().find(|p| p.name.as_deref() == Some(wanted)).ok_or_else(|| {
                ("PortNotFound", format!("Service {namespace}/{name} has no port named {wanted:?}"))
            })?
        }
    };
    let number = found.port;
    if !(1..=65535).contains(&number) {
        return Err(("PortNotFound", format!("Service {namespace}/{name}: port {number} is not a port")));
    }
    let scheme =
        scheme(found).map_err(|e| ("UnsupportedValue", format!("Service {namespace}/{name}: {e}")))?;
    let url = format!("{scheme}://{}.{namespace}.svc.{}:{number}", service.name_any(), naming.cluster_domain);
    url.parse().map_err(|e| ("InvalidBackend", format!("Service {namespace}/{name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        let mut cluster = Cluster::default();
        cluster
            .load_yaml(
                "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: a}\n\
                 spec: {ports: [{name: http, port: 8080}, {name: tls, port: 8443, appProtocol: https}, {name: grpc, port: 9000, appProtocol: kubernetes.io/h2c}]}\n---\n\
                 apiVersion: v1\nkind: Service\nmetadata: {name: outside, namespace: a}\nspec: {type: ExternalName, externalName: db.b.svc.cluster.local, ports: [{port: 5432}]}\n",
                "t",
            )
            .unwrap();
        cluster
    }

    #[test]
    fn a_service_port_becomes_its_dns_name_with_the_scheme_its_app_protocol_asks_for() {
        let (c, n) = (cluster(), Naming::default());
        let origin = |port| service_origin(&c, &n, "a", "web", port).map(|o| o.to_string());
        assert_eq!(origin(PortRef::Name("http")).unwrap(), "http://web.a.svc.cluster.local:8080");
        assert_eq!(origin(PortRef::Number(8443)).unwrap(), "https://web.a.svc.cluster.local:8443");
        assert_eq!(
            origin(PortRef::Number(81)).unwrap_err().0,
            "PortNotFound",
            "a port the Service does not list"
        );
        assert_eq!(origin(PortRef::Name("grpc")).unwrap_err().0, "UnsupportedValue");
        assert_eq!(origin(PortRef::Name("nope")).unwrap_err().0, "PortNotFound");
        assert_eq!(origin(PortRef::Number(0)).unwrap_err().0, "PortNotFound");
        assert_eq!(service_origin(&c, &n, "b", "web", PortRef::Number(80)).unwrap_err().0, "ServiceNotFound");
        let external = service_origin(&c, &n, "a", "outside", PortRef::Number(5432)).unwrap_err();
        assert_eq!(external.0, "UnsupportedValue", "an ExternalName Service would publish what it names");
    }
}
