//! The objects the operator reads, held as one value: what the controller's watches hold, or
//! what `render` read from YAML files. Everything the reconcile functions decide comes from here.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::ResourceExt;
use serde_json::Value;

use crate::crd::{ClusterTunnel, Tunnel};
use crate::gateway::{Gateway, GatewayClass, HttpRoute, ReferenceGrant};

/// The objects of a cluster the operator's decisions depend on.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// Namespaced tunnels.
    pub tunnels: Vec<Tunnel>,
    /// Cluster-wide tunnels.
    pub cluster_tunnels: Vec<ClusterTunnel>,
    /// Ingresses of every class: the reconcile functions pick ours.
    pub ingresses: Vec<Ingress>,
    /// Ingress classes, to tell which Ingresses are ours.
    pub ingress_classes: Vec<IngressClass>,
    /// Services, to resolve named ports and `appProtocol`.
    pub services: Vec<Service>,
    /// Gateway API routes.
    pub http_routes: Vec<HttpRoute>,
    /// Gateways, to tell which routes attach to ours.
    pub gateways: Vec<Gateway>,
    /// Gateway classes, to tell which Gateways are ours.
    pub gateway_classes: Vec<GatewayClass>,
    /// Grants that let a route use a Service in another namespace.
    pub reference_grants: Vec<ReferenceGrant>,
}

/// A document that could not be read as the object its `kind` says.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not YAML.
    #[error("{origin}: not YAML")]
    Yaml {
        /// The file.
        origin: String,
        /// What the parser said.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// A document without `apiVersion` and `kind`.
    #[error("{origin}: document {index} has no apiVersion and kind")]
    Untyped {
        /// The file.
        origin: String,
        /// Its position in the file, from 1.
        index: usize,
    },
    /// A known kind whose fields do not fit its type.
    #[error("{origin}: document {index} ({kind} {name:?}) is not a valid {kind}")]
    Invalid {
        /// The file.
        origin: String,
        /// Its position in the file, from 1.
        index: usize,
        /// Its kind.
        kind: String,
        /// Its `metadata.name`.
        name: String,
        /// Which field, and why.
        #[source]
        source: serde_json::Error,
    },
}

/// A tunnel the API server would refuse, and the rules it breaks.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {name} is not valid: {}", problems.join("; "))]
pub struct Invalid {
    /// `Tunnel` or `ClusterTunnel`.
    pub kind: &'static str,
    /// Its name (`namespace/name` for a Tunnel).
    pub name: String,
    /// Each rule broken: the field and the rule's message.
    pub problems: Vec<String>,
}

impl Cluster {
    /// Adds the objects of a multi-document YAML text; returns `kind/name` of the documents it
    /// skipped as kinds the operator does not read. A `List` adds its items.
    pub fn load_yaml(&mut self, text: &str, origin: &str) -> Result<Vec<String>, LoadError> {
        let documents: Vec<Value> = serde_saphyr::from_multiple(text)
            .map_err(|source| LoadError::Yaml { origin: origin.to_owned(), source: Box::new(source) })?;
        let mut skipped = Vec::new();
        for (at, document) in documents.into_iter().enumerate() {
            let index = at + 1;
            if document.is_null() {
                continue;
            }
            let items = match document.get("kind").and_then(Value::as_str) {
                Some("List") => document.get("items").and_then(Value::as_array).cloned().unwrap_or_default(),
                _ => vec![document],
            };
            for item in items {
                if let Some(name) = self.add(item, origin, index)? {
                    skipped.push(name);
                }
            }
        }
        Ok(skipped)
    }

    /// Adds one object; `Some(kind/name)` when its kind is not one the operator reads.
    pub fn add(&mut self, object: Value, origin: &str, index: usize) -> Result<Option<String>, LoadError> {
        let text = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_owned);
        let (Some(api_version), Some(kind)) = (text("apiVersion"), text("kind")) else {
            return Err(LoadError::Untyped { origin: origin.to_owned(), index });
        };
        let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_owned();
        let invalid = |source| LoadError::Invalid {
            origin: origin.to_owned(),
            index,
            kind: kind.clone(),
            name: name.clone(),
            source,
        };
        let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
        match (group, kind.as_str()) {
            (crate::crd::GROUP, "Tunnel") => self.tunnels.push(typed(object).map_err(invalid)?),
            (crate::crd::GROUP, "ClusterTunnel") => {
                self.cluster_tunnels.push(typed(object).map_err(invalid)?)
            }
            ("networking.k8s.io", "Ingress") => self.ingresses.push(typed(object).map_err(invalid)?),
            ("networking.k8s.io", "IngressClass") => {
                self.ingress_classes.push(typed(object).map_err(invalid)?)
            }
            ("", "Service") => self.services.push(typed(object).map_err(invalid)?),
            (crate::gateway::GROUP, "HTTPRoute") => self.http_routes.push(typed(object).map_err(invalid)?),
            (crate::gateway::GROUP, "Gateway") => self.gateways.push(typed(object).map_err(invalid)?),
            (crate::gateway::GROUP, "GatewayClass") => {
                self.gateway_classes.push(typed(object).map_err(invalid)?)
            }
            (crate::gateway::GROUP, "ReferenceGrant") => {
                self.reference_grants.push(typed(object).map_err(invalid)?)
            }
            _ => return Ok(Some(format!("{kind}/{name}"))),
        }
        Ok(None)
    }

    /// Checks the tunnels against the CEL rules of their CRDs, as the API server would before
    /// storing them.
    pub fn check(&self) -> Result<(), Invalid> {
        let refused = |kind: &'static str, name: String| {
            move |errors: kube::core::cel::ValidationErrors| Invalid {
                kind,
                name,
                problems: errors.into_vec().iter().map(ToString::to_string).collect(),
            }
        };
        let (schema, cluster_schema) = (crate::schema::of::<Tunnel>(), crate::schema::of::<ClusterTunnel>());
        let within = |kind: &'static str, name: String, schema: &Value, object: Value| {
            let problems = crate::schema::problems(schema, &object);
            match problems.is_empty() {
                true => Ok(()),
                false => Err(Invalid { kind, name, problems }),
            }
        };
        for tunnel in &self.tunnels {
            let name = format!("{}/{}", tunnel.namespace().unwrap_or_default(), tunnel.name_any());
            let object = serde_json::to_value(tunnel).unwrap_or(Value::Null);
            within("Tunnel", name.clone(), &schema, object)?;
            kube::core::cel::validate_cel(tunnel).map_err(refused("Tunnel", name))?;
        }
        for tunnel in &self.cluster_tunnels {
            let object = serde_json::to_value(tunnel).unwrap_or(Value::Null);
            within("ClusterTunnel", tunnel.name_any(), &cluster_schema, object)?;
            kube::core::cel::validate_cel(tunnel).map_err(refused("ClusterTunnel", tunnel.name_any()))?;
        }
        Ok(())
    }

    /// The Service `name` in `namespace`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.namespace().as_deref() == Some(namespace) && s.name_any() == name)
    }
}

fn typed<T: serde::de::DeserializeOwned>(object: Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_of_known_kinds_are_typed_and_others_are_listed_as_skipped() {
        let mut cluster = Cluster::default();
        let skipped = cluster
            .load_yaml(
                "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: a}\nspec: {ports: [{port: 80}]}\n\
                 ---\n\
                 apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: other}\n\
                 - apiVersion: networking.k8s.io/v1\n  kind: IngressClass\n  metadata: {name: tunnel}\n\
                 ---\n",
                "objects.yaml",
            )
            .unwrap();
        assert_eq!(skipped, ["ConfigMap/other"]);
        assert_eq!((cluster.services.len(), cluster.ingress_classes.len()), (1, 1));
        assert!(cluster.service("a", "web").is_some() && cluster.service("b", "web").is_none());
    }

    #[test]
    fn a_wrong_field_names_the_document_its_kind_and_the_field() {
        let mut cluster = Cluster::default();
        let err = cluster
            .load_yaml(
                "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\n---\n\
                 apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: eighty}]}\n",
                "objects.yaml",
            )
            .unwrap_err();
        let message = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            message.starts_with("objects.yaml: document 2 (Service \"web\") is not a valid Service"),
            "{message}"
        );
        assert!(message.contains("eighty") || message.contains("invalid type"), "{message}");
        let err = cluster.load_yaml("metadata: {name: x}\n", "b.yaml").unwrap_err();
        assert_eq!(err.to_string(), "b.yaml: document 1 has no apiVersion and kind");
        assert!(cluster.load_yaml("a: [", "c.yaml").unwrap_err().to_string().starts_with("c.yaml: not YAML"));
    }
}
