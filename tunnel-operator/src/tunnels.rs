//! Which tunnel an object means: the tunnels of a [`Cluster`] under one key, and the rules by
//! which an Ingress or HTTPRoute names one (an annotation, or its class's parameters).

use std::collections::BTreeMap;
use std::fmt;

use kube::api::ObjectMeta;
use kube::ResourceExt;

use crate::crd::{TunnelSpec, TunnelStatus};
use crate::gateway::TunnelParameters;
use crate::objects::Cluster;

/// The annotation naming the tunnel an Ingress or HTTPRoute is served by.
pub const TUNNEL_ANNOTATION: &str = "tunnel-rs.github.io/tunnel";
/// The reference operator's annotation, accepted too, so its manifests work unchanged.
pub const REFERENCE_ANNOTATION: &str = "cf-operator.io/tunnel";

/// A tunnel, by kind and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TunnelKey {
    /// A `Tunnel`: serves its own namespace only.
    Namespaced {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A `ClusterTunnel`: serves every namespace.
    Cluster {
        /// Its name.
        name: String,
    },
}

impl TunnelKey {
    /// The tunnel's own name.
    pub fn name(&self) -> &str {
        match self {
            Self::Namespaced { name, .. } | Self::Cluster { name } => name,
        }
    }

    /// The kind: `Tunnel` or `ClusterTunnel`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Namespaced { .. } => "Tunnel",
            Self::Cluster { .. } => "ClusterTunnel",
        }
    }

    /// Whether objects of `namespace` may use it.
    pub fn serves(&self, namespace: &str) -> bool {
        match self {
            Self::Namespaced { namespace: own, .. } => own == namespace,
            Self::Cluster { .. } => true,
        }
    }
}

impl fmt::Display for TunnelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Namespaced { namespace, name } => write!(f, "Tunnel {namespace}/{name}"),
            Self::Cluster { name } => write!(f, "ClusterTunnel {name}"),
        }
    }
}

/// One tunnel of either kind, as the reconcile functions see it.
#[derive(Debug, Clone, Copy)]
pub struct TunnelObject<'a> {
    /// Kind and name.
    pub key: &'a TunnelKey,
    /// Its metadata.
    pub meta: &'a ObjectMeta,
    /// What it asks for.
    pub spec: &'a TunnelSpec,
    /// What was last written.
    pub status: Option<&'a TunnelStatus>,
}

/// The tunnels of a cluster by key.
pub fn keyed(cluster: &Cluster) -> BTreeMap<TunnelKey, (&ObjectMeta, &TunnelSpec, Option<&TunnelStatus>)> {
    let namespaced = cluster.tunnels.iter().map(|t| {
        let key = TunnelKey::Namespaced { namespace: t.namespace().unwrap_or_default(), name: t.name_any() };
        (key, (&t.metadata, &t.spec, t.status.as_ref()))
    });
    let cluster_wide = cluster
        .cluster_tunnels
        .iter()
        .map(|t| (TunnelKey::Cluster { name: t.name_any() }, (&t.metadata, &t.spec.0, t.status.as_ref())));
    namespaced.chain(cluster_wide).collect()
}

/// Why an object's choice of tunnel is refused: the reason of its Event and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// A CamelCase reason.
    pub reason: &'static str,
    /// What is wrong, naming the tunnel.
    pub message: String,
}

/// The tunnel an object of `namespace` names by annotation (`NAME`: a Tunnel of its own
/// namespace, else the ClusterTunnel `NAME`; `NAMESPACE/NAME`: that Tunnel), if it names one.
pub fn by_annotation(
    meta: &ObjectMeta,
    namespace: &str,
    cluster: &Cluster,
) -> Option<Result<TunnelKey, Refused>> {
    let annotations = meta.annotations.as_ref()?;
    let value = annotations.get(TUNNEL_ANNOTATION).or_else(|| annotations.get(REFERENCE_ANNOTATION))?;
    Some(resolve(value.trim(), namespace, cluster))
}

fn resolve(value: &str, namespace: &str, cluster: &Cluster) -> Result<TunnelKey, Refused> {
    let exists = |key: &TunnelKey| keyed(cluster).contains_key(key);
    let key = match value.split_once('/') {
        Some((ns, name)) => TunnelKey::Namespaced { namespace: ns.to_owned(), name: name.to_owned() },
        None => {
            let own = TunnelKey::Namespaced { namespace: namespace.to_owned(), name: value.to_owned() };
            if exists(&own) {
                own
            } else {
                TunnelKey::Cluster { name: value.to_owned() }
            }
        }
    };
    usable(key, namespace, cluster)
}

/// The tunnel a class's parameters name, for an object of `namespace`.
pub fn by_parameters(
    parameters: &TunnelParameters,
    namespace: &str,
    cluster: &Cluster,
) -> Result<TunnelKey, Refused> {
    if parameters.group.as_deref().is_some_and(|g| g != crate::crd::GROUP) {
        return Err(Refused {
            reason: "InvalidParameters",
            message: format!(
                "class parameters of group {:?} name no tunnel",
                parameters.group.as_deref().unwrap_or("")
            ),
        });
    }
    let key = match parameters.kind.as_str() {
        "ClusterTunnel" => TunnelKey::Cluster { name: parameters.name.clone() },
        "Tunnel" => TunnelKey::Namespaced {
            namespace: parameters.namespace.clone().unwrap_or_else(|| namespace.to_owned()),
            name: parameters.name.clone(),
        },
        other => {
            return Err(Refused {
                reason: "InvalidParameters",
                message: format!(
                    "class parameters of kind {other:?} name no tunnel: use Tunnel or ClusterTunnel"
                ),
            })
        }
    };
    usable(key, namespace, cluster)
}

fn usable(key: TunnelKey, namespace: &str, cluster: &Cluster) -> Result<TunnelKey, Refused> {
    if !keyed(cluster).contains_key(&key) {
        return Err(Refused { reason: "TunnelNotFound", message: format!("{key} does not exist") });
    }
    if !key.serves(namespace) {
        return Err(Refused {
            reason: "NotAllowed",
            message: format!("{key} serves only its own namespace, not {namespace}; use a ClusterTunnel"),
        });
    }
    Ok(key)
}
