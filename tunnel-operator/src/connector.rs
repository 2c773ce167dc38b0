//! The connector of a tunnel: the client configuration (`tunnel-core`'s [`ClientFile`], as
//! TOML in a ConfigMap) and the Deployment that runs `tunnel-cli connect` on it, hardened, with
//! `deployPatch` applied last.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction, KeyToPath,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;
use tunnel_core::config::{ClientFile, RouteFile};
use tunnel_core::forward::Glob;

use crate::crd::{Protocol, DEFAULT_FALLBACK};
use crate::patch::{self, PatchError};
use crate::tunnels::{TunnelKey, TunnelObject};

/// Where the connector finds its configuration: a directory mount, so the kubelet's update of
/// the ConfigMap (a symlink swap) reaches the running connector, which reloads it.
pub const CONFIG_DIR: &str = "/etc/tunnel/config";
/// The key of the configuration in the ConfigMap.
pub const CONFIG_KEY: &str = "client.toml";
/// Where the token is mounted, from the Secret's key `token`.
pub const TOKEN_PATH: &str = "/etc/tunnel/token/token";
/// Where the server's CA is mounted, from the Secret's key `ca.crt`.
pub const CA_PATH: &str = "/etc/tunnel/ca/ca.crt";
/// The port of the connector's `/metrics`, `/ready` and `/healthz`.
pub const METRICS_PORT: i32 = 9091;
/// The annotation on the ConfigMap holding the SHA-256 of the configuration.
pub const CONFIG_HASH: &str = "tunnel-rs.github.io/config-hash";
/// The annotation on the ConfigMap numbering the configurations written, from 1.
pub const CONFIG_VERSION: &str = "tunnel-rs.github.io/config-version";

/// What the operator itself is told: where connectors go, what they run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The operator's namespace: a ClusterTunnel's connector and secrets live here.
    pub namespace: String,
    /// The connector image, unless a tunnel names its own.
    pub image: String,
    /// How Services are reached.
    pub naming: crate::routes::Naming,
}

impl Settings {
    /// The namespace a tunnel's connector runs in.
    pub fn namespace_of(&self, key: &TunnelKey) -> String {
        match key {
            TunnelKey::Namespaced { namespace, .. } => namespace.clone(),
            TunnelKey::Cluster { .. } => self.namespace.clone(),
        }
    }
}

/// A spec field the connector cannot be made from.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A field with a value that does not parse.
    #[error("spec.{field}: {message}")]
    Field {
        /// The field, as the spec spells it.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The patch.
    #[error(transparent)]
    Patch(#[from] PatchError),
    /// The patched Deployment.
    #[error("deployPatch: {0}")]
    Patched(String),
}

/// The name of a tunnel's ConfigMap and Deployment: `tunnel-NAME` or `clustertunnel-NAME`, or,
/// past the 253 characters an object name may have, a prefix of it and a hash of the whole, in
/// 242 characters: the Deployment's ReplicaSets take its name and 11 more, and clusters before
/// Kubernetes 1.34 refuse a ReplicaSet name past 253. (Names up to 253 are kept as they are,
/// as earlier versions wrote them.)
pub fn object_name(key: &TunnelKey) -> String {
    let name = match key {
        TunnelKey::Namespaced { name, .. } => format!("tunnel-{name}"),
        TunnelKey::Cluster { name } => format!("clustertunnel-{name}"),
    };
    shortened(name, MAX_OBJECT_NAME, MAX_OBJECT_NAME - 11)
}

/// The longest name a ConfigMap, Deployment or Secret may have.
const MAX_OBJECT_NAME: usize = 253;

/// `name` if it has at most `keep` characters, else a prefix of it, a dash and 16 hex digits of
/// its hash, `to` characters at most. The prefix ends in no dash or dot, so the result is a
/// valid DNS label or subdomain wherever `name` would be one.
fn shortened(name: String, keep: usize, to: usize) -> String {
    if name.len() <= keep {
        return name;
    }
    let prefix: String = name.chars().take(to - 17).collect();
    format!("{}-{}", prefix.trim_end_matches(['-', '.']), &config_hash(&name)[..16])
}

/// The client name the connector authenticates as.
pub fn client_name<'a>(tunnel: &TunnelObject<'a>) -> Option<&'a str> {
    let spec = tunnel.spec;
    spec.new_tunnel
        .as_ref()
        .map(|n| n.name.as_str())
        .or(spec.existing_tunnel.as_ref().map(|e| e.name.as_str()))
}

/// The Secret holding the connector's token: the one `existingTunnel` names, or the one the
/// operator writes for `newTunnel`.
pub fn token_secret(tunnel: &TunnelObject<'_>) -> String {
    match &tunnel.spec.existing_tunnel {
        Some(existing) => existing.secret.clone(),
        None => shortened(format!("{}-token", object_name(tunnel.key)), MAX_OBJECT_NAME, MAX_OBJECT_NAME),
    }
}

/// Networks one tunnel offers at most.
pub const MAX_NETWORKS: usize = 63;

/// Entries of `allowedHosts` at most.
pub const MAX_ALLOWED_HOSTS: usize = 64;

fn field(field: &'static str, message: impl ToString) -> SpecError {
    SpecError::Field { field, message: message.to_string() }
}

/// The connector's configuration: the tunnel's server and identity, and `routes`.
pub fn client_file(tunnel: &TunnelObject<'_>, routes: Vec<RouteFile>) -> Result<ClientFile, SpecError> {
    let spec = tunnel.spec;
    if spec.new_tunnel.is_some() == spec.existing_tunnel.is_some() {
        return Err(field("newTunnel", "give exactly one of newTunnel and existingTunnel"));
    }
    if spec.new_tunnel.is_some() && spec.server.admin_secret.is_none() {
        return Err(field("server.adminSecret", "newTunnel needs it to create the client credential"));
    }
    let name = client_name(tunnel).ok_or_else(|| field("newTunnel", "give newTunnel or existingTunnel"))?;
    let fallback = spec.fallback_target.as_deref().unwrap_or(DEFAULT_FALLBACK);
    let mut file = ClientFile {
        server: vec![spec.server.address.clone()],
        token_file: Some(TOKEN_PATH.into()),
        name: Some(name.to_owned()),
        metrics: Some(format!("0.0.0.0:{METRICS_PORT}")),
        http_fallback: Some(fallback.parse().map_err(|e| field("fallbackTarget", e))?),
        transport: Some(match spec.protocol {
            Protocol::Auto => tunnel_core::transport::Wire::Auto,
            Protocol::Tcp => tunnel_core::transport::Wire::Tcp,
            Protocol::Websocket => tunnel_core::transport::Wire::WebSocket,
        }),
        routes,
        ..ClientFile::default()
    };
    match (&spec.server.fingerprint, &spec.server.ca_secret) {
        (Some(fingerprint), None) => {
            file.fingerprint = vec![fingerprint.parse().map_err(|e| field("server.fingerprint", e))?];
        }
        (None, Some(_)) => file.ca = vec![CA_PATH.into()],
        _ => return Err(field("server", "give exactly one of fingerprint and caSecret")),
    }
    if spec.allowed_hosts.len() > MAX_ALLOWED_HOSTS {
        return Err(field("allowedHosts", format!("at most {MAX_ALLOWED_HOSTS} entries")));
    }
    for host in &spec.allowed_hosts {
        host.parse::<Glob>().map_err(|e| field("allowedHosts", e))?;
        if host.ends_with('.') {
            // Routes' hosts are kept without it: the entry would allow nothing.
            return Err(field("allowedHosts", format!("{host:?}: write the host without its final dot")));
        }
    }
    if spec.enable_warp_routing {
        if spec.networks.is_empty() {
            return Err(field("networks", "enableWarpRouting needs at least one network"));
        }
        // The room the route budgets leave (`assign::ROUTE_BUDGET`, `ROUTE_WIRE_BYTES`).
        if spec.networks.len() > MAX_NETWORKS {
            return Err(field("networks", format!("at most {MAX_NETWORKS} networks")));
        }
        for network in &spec.networks {
            file.networks.push(network.parse().map_err(|e| field("networks", format!("{network:?}: {e}")))?);
        }
    }
    file.validate().map_err(|e| {
        use tunnel_core::config::ConfigError;
        // The spec's field that gave the key at fault; the rest comes from `server`.
        let at = match &e {
            ConfigError::Invalid { key: "name", .. } if spec.new_tunnel.is_some() => "newTunnel.name",
            ConfigError::Invalid { key: "name", .. } => "existingTunnel.name",
            ConfigError::Invalid { key: "networks", .. } => "networks",
            _ => "server",
        };
        field(at, tunnel_core::log::Chain(&e))
    })?;
    Ok(file)
}

/// The connector's instance label: its object name, or, past the 63 characters a label value
/// may have, a prefix of it and a hash of the whole.
pub fn instance_label(key: &TunnelKey) -> String {
    shortened(object_name(key), 63, 63)
}

fn labels(key: &TunnelKey) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "tunnel-connector".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), instance_label(key)),
    ])
}

fn metadata(tunnel: &TunnelObject<'_>, settings: &Settings) -> ObjectMeta {
    let mut labels = labels(tunnel.key);
    labels.insert("app.kubernetes.io/managed-by".into(), "tunnel-operator".into());
    ObjectMeta {
        name: Some(object_name(tunnel.key)),
        namespace: Some(settings.namespace_of(tunnel.key)),
        labels: Some(labels),
        owner_references: owner_reference(tunnel).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The reference that makes an object the tunnel's (collected with it); none for a tunnel
/// read from a file without its `uid`.
pub fn owner_reference(tunnel: &TunnelObject<'_>) -> Option<OwnerReference> {
    tunnel.meta.uid.as_ref().map(|uid| OwnerReference {
        api_version: format!("{}/v1alpha1", crate::crd::GROUP),
        kind: tunnel.key.kind().into(),
        name: tunnel.key.name().into(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// The ConfigMap holding `toml`, numbered `version`.
pub fn config_map(tunnel: &TunnelObject<'_>, settings: &Settings, toml: String, version: i64) -> ConfigMap {
    let mut meta = metadata(tunnel, settings);
    meta.annotations = Some(BTreeMap::from([
        (CONFIG_HASH.to_owned(), config_hash(&toml)),
        (CONFIG_VERSION.to_owned(), version.to_string()),
    ]));
    ConfigMap {
        metadata: meta,
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), toml)])),
        ..ConfigMap::default()
    }
}

/// The SHA-256 of a configuration, hex.
pub fn config_hash(toml: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(toml.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The connector Deployment, with `deployPatch` applied.
pub fn deployment(tunnel: &TunnelObject<'_>, settings: &Settings) -> Result<Deployment, SpecError> {
    let spec = tunnel.spec;
    let name = object_name(tunnel.key);
    let probe = |initial: i32, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/ready".into()),
            port: IntOrString::String("metrics".into()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let secret = |volume: &str, secret: String, key: &str| Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            items: Some(vec![KeyToPath { key: key.into(), path: key.into(), mode: None }]),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mut mounts = vec![mount("config", CONFIG_DIR), mount("token", "/etc/tunnel/token")];
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: name.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        secret("token", token_secret(tunnel), "token"),
    ];
    if let Some(ca) = &spec.server.ca_secret {
        mounts.push(mount("ca", "/etc/tunnel/ca"));
        volumes.push(secret("ca", ca.clone(), "ca.crt"));
    }
    let container = Container {
        name: "connector".into(),
        image: Some(spec.image.clone().unwrap_or_else(|| settings.image.clone())),
        args: Some(vec!["connect".into(), "--config".into(), format!("{CONFIG_DIR}/{CONFIG_KEY}")]),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: METRICS_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe(0, 5, 2)),
        liveness_probe: Some(probe(30, 10, 6)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("50m".into())),
                ("memory".into(), Quantity("32Mi".into())),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), Quantity("256Mi".into()))])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let deployment = Deployment {
        metadata: metadata(tunnel, settings),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas.unwrap_or(1)),
            selector: LabelSelector { match_labels: Some(labels(tunnel.key)), match_expressions: None },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(tunnel.key)), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    // The connector drains for up to 30 s on SIGTERM; the kubelet waits longer.
                    termination_grace_period_seconds: Some(45),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    match &spec.deploy_patch {
        None => Ok(deployment),
        Some(text) => patched(deployment, text),
    }
}

/// Applies `deployPatch`; the result must still be a Deployment of the same name whose
/// selector selects its pods.
fn patched(deployment: Deployment, text: &str) -> Result<Deployment, SpecError> {
    let mut value = serde_json::to_value(&deployment).map_err(|e| SpecError::Patched(e.to_string()))?;
    patch::apply(&mut value, text)?;
    let out: Deployment = serde_json::from_value(value)
        .map_err(|e| SpecError::Patched(format!("the patched object is not a Deployment: {e}")))?;
    if (&out.metadata.name, &out.metadata.namespace)
        != (&deployment.metadata.name, &deployment.metadata.namespace)
    {
        return Err(SpecError::Patched("it may not change the Deployment's name or namespace".into()));
    }
    let selector = out.spec.as_ref().and_then(|s| s.selector.match_labels.clone()).unwrap_or_default();
    let pods = out
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let wanted = deployment.spec.as_ref().and_then(|s| s.selector.match_labels.clone()).unwrap_or_default();
    if selector != wanted || wanted.iter().any(|(k, v)| pods.get(k) != Some(v)) {
        return Err(SpecError::Patched(
            "it may not change the selector or the pod labels it selects by".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINGERPRINT: &str = "3f2a9c1e0b7d4a6f8e5c2b1a0d9f8e7c6b5a4d3c2b1a0f9e8d7c6b5a4f3e2d1c";

    #[test]
    fn a_long_tunnel_name_still_gives_a_valid_label() {
        let long = TunnelKey::Cluster { name: "x".repeat(200) };
        let label = instance_label(&long);
        assert!(label.len() <= 63 && label.starts_with("clustertunnel-xxx"), "{label}");
        let other = TunnelKey::Cluster { name: format!("{}y", "x".repeat(199)) };
        assert_ne!(label, instance_label(&other), "names that share a prefix differ");
        let short = TunnelKey::Namespaced { namespace: "a".into(), name: "web".into() };
        assert_eq!(instance_label(&short), "tunnel-web");
    }

    #[test]
    fn the_longest_tunnel_names_still_give_valid_object_names() {
        // Object names have at most 253 characters; "clustertunnel-" + 253 had 267, and the
        // token Secret's 6 more, which the API server refused: such a tunnel never got a
        // connector. A Deployment's ReplicaSets add 11.
        let spec: crate::crd::TunnelSpec = serde_json::from_value(serde_json::json!({
            "server": { "address": "h:1", "fingerprint": FINGERPRINT }, "newTunnel": { "name": "a" }
        }))
        .unwrap();
        let meta = Default::default();
        let secret_of =
            |key: &TunnelKey| token_secret(&TunnelObject { key, meta: &meta, spec: &spec, status: None });
        // A DNS-1123 subdomain, as the API server checks object names.
        let valid = |name: &str| {
            let labels_ok = name.split('.').all(|label| {
                !label.is_empty()
                    && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
            labels_ok && name.len() <= 253
        };
        // The cut (at 225 characters) falls right after a dot.
        let longest = TunnelKey::Cluster { name: format!("{}.{}", "a".repeat(210), "b".repeat(42)) };
        let name = object_name(&longest);
        assert!(name.len() <= 242 && name.starts_with("clustertunnel-aaa") && valid(&name), "{name}");
        let secret = secret_of(&longest);
        assert!(secret.starts_with("clustertunnel-aaa") && valid(&secret), "{secret}");
        let near = TunnelKey::Cluster { name: format!("{}.{}", "a".repeat(210), "c".repeat(42)) };
        assert_ne!(name, object_name(&near), "names that share a prefix differ");
        assert_ne!(secret, secret_of(&near), "names that share a prefix differ");
        // Names that fit are kept as they are: objects written before keep theirs.
        let fits = TunnelKey::Namespaced { namespace: "a".into(), name: "w".repeat(246) };
        assert_eq!(object_name(&fits), format!("tunnel-{}", "w".repeat(246)));
        let secret_fits = TunnelKey::Namespaced { namespace: "a".into(), name: "w".repeat(240) };
        assert_eq!(secret_of(&secret_fits), format!("tunnel-{}-token", "w".repeat(240)));
    }
}
