//! Ingresses into routes. An Ingress is served when its class names our controller and a
//! tunnel is named (by annotation, or by the class's parameters); each rule's paths become
//! routes one to one, and `defaultBackend` answers the rest of its hosts.

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use kube::ResourceExt;
use tunnel_core::config::PathType;

use crate::gateway::TunnelParameters;
use crate::objects::Cluster;
use crate::routes::{route_to, service_origin, Claim, Naming, Note, PortRef, Source};
use crate::tunnels::{by_annotation, by_parameters, TunnelKey};

/// The controller name an IngressClass gives to be served by this operator.
pub const INGRESS_CONTROLLER: &str = "tunnel-rs.github.io/ingress-controller";
const DEFAULT_CLASS: &str = "ingressclass.kubernetes.io/is-default-class";

/// The class of `ingress` when it is ours: named by `ingressClassName`, or our default class
/// when it names none.
fn our_class<'a>(ingress: &Ingress, cluster: &'a Cluster) -> Option<&'a IngressClass> {
    let ours = |class: &&IngressClass| {
        class.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(INGRESS_CONTROLLER)
    };
    match ingress.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()) {
        Some(name) => cluster.ingress_classes.iter().filter(ours).find(|c| c.name_any() == name),
        None => cluster
            .ingress_classes
            .iter()
            .filter(ours)
            .find(|c| c.annotations().get(DEFAULT_CLASS).map(String::as_str) == Some("true")),
    }
}

/// The tunnel an Ingress of ours is for; `None` when it is not ours.
pub fn tunnel_of(ingress: &Ingress, cluster: &Cluster) -> Option<Result<TunnelKey, Note>> {
    let class = our_class(ingress, cluster)?;
    let source = Source::of(ingress);
    let namespace = ingress.namespace().unwrap_or_default();
    let refused = |r: crate::tunnels::Refused| Note::new(&source, r.reason, r.message);
    if let Some(named) = by_annotation(&ingress.metadata, &namespace, cluster) {
        return Some(named.map_err(refused));
    }
    let Some(parameters) = class.spec.as_ref().and_then(|s| s.parameters.as_ref()) else {
        let message = format!(
            "IngressClass {} names no tunnel: annotate the Ingress with {} or give the class parameters",
            class.name_any(),
            crate::tunnels::TUNNEL_ANNOTATION
        );
        return Some(Err(Note::new(&source, "TunnelNotNamed", message)));
    };
    let parameters = TunnelParameters {
        group: parameters.api_group.clone(),
        kind: parameters.kind.clone(),
        name: parameters.name.clone(),
        namespace: parameters.namespace.clone(),
    };
    Some(by_parameters(&parameters, &namespace, cluster).map_err(refused))
}

/// Every host an Ingress names, in its rules and its TLS section: what external-dns publishes
/// under the name in its status.
pub fn hosts(ingress: &Ingress) -> Vec<String> {
    let Some(spec) = &ingress.spec else { return Vec::new() };
    let rules = spec.rules.iter().flatten().filter_map(|rule| rule.host.clone());
    let tls = spec.tls.iter().flatten().flat_map(|tls| tls.hosts.iter().flatten().cloned());
    let mut hosts: Vec<String> = rules.chain(tls).collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// The routes every Ingress of ours asks for, and notes on what it asks that cannot be served.
pub fn claims(cluster: &Cluster, naming: &Naming) -> (Vec<Claim>, Vec<Note>) {
    let (mut claims, mut notes) = (Vec::new(), Vec::new());
    for ingress in &cluster.ingresses {
        match tunnel_of(ingress, cluster) {
            None => {}
            Some(Err(note)) => notes.push(note),
            Some(Ok(tunnel)) => translate(ingress, &tunnel, cluster, naming, &mut claims, &mut notes),
        }
    }
    (claims, notes)
}

fn translate(
    ingress: &Ingress,
    tunnel: &TunnelKey,
    cluster: &Cluster,
    naming: &Naming,
    claims: &mut Vec<Claim>,
    notes: &mut Vec<Note>,
) {
    let source = Source::of(ingress);
    let namespace = ingress.namespace().unwrap_or_default();
    let Some(spec) = &ingress.spec else { return };
    if spec.tls.as_ref().is_some_and(|tls| !tls.is_empty()) {
        notes.push(Note::new(
            &source,
            "TlsNotUsed",
            "spec.tls is not used: the tunnel server terminates TLS with its own certificates (or ACME)",
        ));
    }
    let origin = |backend: &IngressBackend, notes: &mut Vec<Note>| {
        let answer = |reason: &str, message: String, notes: &mut Vec<Note>| {
            notes.push(Note::new(&source, reason, format!("{message}; its requests are answered 503")));
            "http_status:503".parse().ok()
        };
        let Some(service) = &backend.service else {
            return answer("UnsupportedValue", "a resource backend cannot be served".into(), notes);
        };
        let port = match service.port.as_ref().map(|p| (p.number, p.name.as_deref())) {
            Some((Some(n), _)) => PortRef::Number(n),
            Some((None, Some(name))) => PortRef::Name(name),
            _ => return answer("PortNotFound", format!("backend {} names no port", service.name), notes),
        };
        match service_origin(cluster, naming, &namespace, &service.name, port) {
            Ok(origin) => Some(origin),
            Err((reason, message)) => answer(reason, message, notes),
        }
    };
    let mut hosts = Vec::new();
    for rule in spec.rules.iter().flatten() {
        let Some(host) = rule.host.as_deref() else {
            notes.push(Note::new(
                &source,
                "HostRequired",
                "a rule without a host is not served: the tunnel routes by host",
            ));
            continue;
        };
        hosts.push(host.to_owned());
        for path in rule.http.iter().flat_map(|h| &h.paths) {
            let kind = match path.path_type.as_str() {
                "Exact" => PathType::Exact,
                "Prefix" | "ImplementationSpecific" => PathType::Prefix,
                other => {
                    notes.push(Note::new(
                        &source,
                        "UnsupportedValue",
                        format!("pathType {other:?} is not served"),
                    ));
                    continue;
                }
            };
            let Some(origin) = origin(&path.backend, notes) else { continue };
            let value = path.path.as_deref().unwrap_or("/");
            let matched = (value != "/" || kind == PathType::Exact).then_some((value, kind));
            push(claims, notes, tunnel, &source, host, matched, origin);
        }
    }
    if let Some(default) = &spec.default_backend {
        if hosts.is_empty() {
            notes.push(Note::new(
                &source,
                "HostRequired",
                "defaultBackend without a rule naming a host is not served: the tunnel routes by host",
            ));
        } else if let Some(origin) = origin(default, notes) {
            hosts.sort();
            hosts.dedup();
            for host in &hosts {
                push(claims, notes, tunnel, &source, host, None, origin.clone());
            }
        }
    }
}

fn push(
    claims: &mut Vec<Claim>,
    notes: &mut Vec<Note>,
    tunnel: &TunnelKey,
    source: &Source,
    host: &str,
    path: Option<(&str, PathType)>,
    origin: tunnel_core::http::Service,
) {
    match route_to(host, path, origin) {
        Ok(route) => claims.push(Claim { tunnel: tunnel.clone(), source: source.clone(), route }),
        Err(message) => notes.push(Note::new(source, "InvalidRoute", message)),
    }
}
