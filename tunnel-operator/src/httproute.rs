//! HTTPRoutes into routes. A route is ours through a Gateway of our GatewayClass or through
//! the tunnel annotation. Each match of each rule becomes one route per host name; filters,
//! weights and timeouts carry over; anything the edge cannot do refuses the route by name
//! (`UnsupportedValue`) instead of being served without it. Every parent gets `Accepted` and
//! `ResolvedRefs`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde_json::Value;
use tunnel_core::config::{BackendFile, HeaderChangesFile, HumanDuration, PathType, RedirectFile, RouteFile};

use crate::conditions::Conditions;
use crate::gateway::{
    BackendRef, Gateway, HttpRoute, ParentRef, RouteMatch, RouteParentStatus, RouteRule, RouteStatus,
};
use crate::objects::Cluster;
use crate::routes::{
    service_origin, Claim, Naming, Note, PortRef, Source, CLAIM_SLACK, ROUTE_BUDGET, ROUTE_BYTES,
};
use crate::tunnels::{by_annotation, by_parameters, Refused, TunnelKey};

/// The controller name a GatewayClass gives to be served by this operator.
pub const GATEWAY_CONTROLLER: &str = "tunnel-rs.github.io/gateway-controller";

/// Why a route is not served: a Gateway API reason and a message.
type Refusal = (&'static str, String);

/// The routes every HTTPRoute of ours asks for, the status of each, and notes.
pub fn claims(
    cluster: &Cluster,
    naming: &Naming,
    now: &Time,
) -> (Vec<Claim>, Vec<(Source, RouteStatus)>, Vec<Note>) {
    let (mut claims, mut statuses, mut notes) = (Vec::new(), Vec::new(), Vec::new());
    // Older objects claim first, so newer ones cannot crowd them out of the slack.
    let mut order: Vec<(usize, Source)> = cluster.http_routes.iter().map(Source::of).enumerate().collect();
    order.sort_by(|(_, a), (_, b)| a.order_key().cmp(&b.order_key()));
    // Routes (count, TOML bytes) claimed of each tunnel so far.
    let mut spent: BTreeMap<TunnelKey, (usize, usize)> = BTreeMap::new();
    for (index, source) in order {
        let route = &cluster.http_routes[index];
        let namespace = route.namespace().unwrap_or_default();
        let annotated = by_annotation(&route.metadata, &namespace, cluster);
        let mut parents = Vec::new();
        for parent in &route.spec.parent_refs {
            let Some(decision) = parent_tunnel(route, parent, annotated.as_ref(), cluster) else { continue };
            parents.push((parent.clone(), decision));
        }
        if parents.is_empty() {
            match annotated {
                None => continue,
                // Named by annotation alone: served, with no parent to report on.
                Some(named) => parents.push((ParentRef::default(), named.map_err(|r| (r.reason, r.message)))),
            }
        }
        let translated = translate(route, cluster, naming);
        let mut cut = translated.as_ref().ok().and_then(|t| t.cut.clone());
        // Parents of one tunnel (two listeners of a Gateway, say) claim its routes once.
        let mut claimed: Vec<TunnelKey> = Vec::new();
        let mut status = RouteStatus::default();
        for (parent, decision) in parents {
            let mut conditions = Conditions {
                previous: previous_conditions(route, &parent),
                now,
                generation: route.metadata.generation,
                out: Vec::new(),
            };
            let accepted = decision.and_then(|tunnel| match &translated {
                Ok(t) => Ok((tunnel, t)),
                Err(refusal) => Err(refusal.clone()),
            });
            match accepted {
                Ok((tunnel, translated)) => {
                    conditions.set("Accepted", true, "Accepted", &format!("served by {tunnel}"));
                    match &translated.unresolved {
                        None => {
                            conditions.set("ResolvedRefs", true, "ResolvedRefs", "every backend resolved")
                        }
                        Some((reason, message)) => conditions.set("ResolvedRefs", false, reason, message),
                    }
                    if !claimed.contains(&tunnel) {
                        let (count, bytes) = spent.entry(tunnel.clone()).or_default();
                        for (route, size) in &translated.routes {
                            if *count >= CLAIM_SLACK * ROUTE_BUDGET
                                || bytes.saturating_add(*size) > CLAIM_SLACK * ROUTE_BYTES
                            {
                                cut.get_or_insert_with(|| {
                                    format!(
                                        "{tunnel} is asked for more routes than {CLAIM_SLACK} times what it carries \
                                         (at most {ROUTE_BUDGET} routes and {ROUTE_BYTES} bytes of configuration): \
                                         routes of this and newer objects are left out"
                                    )
                                });
                                break;
                            }
                            (*count, *bytes) = (*count + 1, *bytes + size);
                            claims.push(Claim {
                                tunnel: tunnel.clone(),
                                source: source.clone(),
                                route: route.clone(),
                            });
                        }
                        claimed.push(tunnel);
                    }
                }
                Err((reason, message)) => {
                    notes.push(Note::new(&source, reason, message.clone()));
                    conditions.set("Accepted", false, reason, &message);
                    let resolved = translated.as_ref().ok().and_then(|t| t.unresolved.clone());
                    match resolved {
                        None => {
                            conditions.set("ResolvedRefs", true, "ResolvedRefs", "every backend resolved")
                        }
                        Some((reason, message)) => conditions.set("ResolvedRefs", false, reason, &message),
                    }
                }
            }
            if parent != ParentRef::default() {
                status.parents.push(RouteParentStatus {
                    parent_ref: parent,
                    controller_name: GATEWAY_CONTROLLER.into(),
                    conditions: conditions.out,
                });
            }
        }
        if let Some(why) = cut.filter(|_| !claimed.is_empty()) {
            notes.push(Note::new(&source, "TooManyRoutes", why));
        }
        statuses.push((index, source, status));
    }
    // In the order of the objects, as read.
    statuses.sort_by_key(|(index, _, _)| *index);
    (claims, statuses.into_iter().map(|(_, source, status)| (source, status)).collect(), notes)
}

fn previous_conditions<'a>(
    route: &'a HttpRoute,
    parent: &ParentRef,
) -> &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
    route
        .status
        .as_ref()
        .and_then(|s| {
            s.parents.iter().find(|p| &p.parent_ref == parent && p.controller_name == GATEWAY_CONTROLLER)
        })
        .map_or(&[], |p| p.conditions.as_slice())
}

/// The tunnel a parent reference leads to: `None` when the parent is not a Gateway of ours.
fn parent_tunnel(
    route: &HttpRoute,
    parent: &ParentRef,
    annotated: Option<&Result<TunnelKey, Refused>>,
    cluster: &Cluster,
) -> Option<Result<TunnelKey, Refusal>> {
    let namespace = route.namespace().unwrap_or_default();
    let gateway_kind = parent.kind.as_deref().unwrap_or("Gateway") == "Gateway"
        && parent.group.as_deref().unwrap_or(crate::gateway::GROUP) == crate::gateway::GROUP;
    let gateway_namespace = parent.namespace.clone().unwrap_or_else(|| namespace.clone());
    let gateway = cluster
        .gateways
        .iter()
        .filter(|_| gateway_kind)
        .find(|g| g.name_any() == parent.name && g.namespace().as_deref() == Some(&gateway_namespace));
    let class = gateway.and_then(|g| {
        cluster.gateway_classes.iter().find(|c| {
            c.name_any() == g.spec.gateway_class_name && c.spec.controller_name == GATEWAY_CONTROLLER
        })
    });
    let refused = |r: &Refused| (r.reason, r.message.clone());
    let (Some(gateway), Some(class)) = (gateway, class) else {
        // Not a Gateway of ours: the route is ours for this parent only by annotation.
        return annotated.map(|named| named.clone().map_err(|r| refused(&r)));
    };
    if let Err(refusal) = allowed(gateway, &namespace) {
        return Some(Err(refusal));
    }
    if let Some(named) = annotated {
        return Some(named.clone().map_err(|r| refused(&r)));
    }
    if let Some(named) = by_annotation(&gateway.metadata, &gateway_namespace, cluster) {
        return Some(named.and_then(|key| usable_from(key, &namespace)).map_err(|r| (r.reason, r.message)));
    }
    let Some(parameters) = &class.spec.parameters_ref else {
        let message = format!(
            "GatewayClass {} names no tunnel: give it parametersRef, or annotate the Gateway or route with {}",
            class.name_any(),
            crate::tunnels::TUNNEL_ANNOTATION
        );
        return Some(Err(("NoMatchingParent", message)));
    };
    Some(by_parameters(parameters, &namespace, cluster).map_err(|r| (r.reason, r.message)))
}

fn usable_from(key: TunnelKey, namespace: &str) -> Result<TunnelKey, Refused> {
    if key.serves(namespace) {
        Ok(key)
    } else {
        let message = format!("{key} serves only its own namespace, not {namespace}; use a ClusterTunnel");
        Err(Refused { reason: "NotAllowed", message })
    }
}

/// Whether the Gateway's listeners let routes of `namespace` attach (`Same` unless a listener
/// says `All`).
fn allowed(gateway: &Gateway, namespace: &str) -> Result<(), Refusal> {
    let same = gateway.namespace().as_deref() == Some(namespace);
    let from = |listener: &Value| {
        listener
            .pointer("/allowedRoutes/namespaces/from")
            .and_then(Value::as_str)
            .unwrap_or("Same")
            .to_owned()
    };
    let listeners = &gateway.spec.listeners;
    if same && listeners.is_empty()
        || listeners.iter().any(|l| from(l) == "All" || (from(l) == "Same" && same))
    {
        return Ok(());
    }
    let message = format!(
        "no listener of Gateway {}/{} allows routes from namespace {namespace} (Selector is not evaluated)",
        gateway.namespace().unwrap_or_default(),
        gateway.name_any()
    );
    Err(("NotAllowedByListeners", message))
}

/// A route's rules in the connector's terms.
#[derive(Debug, Clone)]
struct Translated {
    /// Each route, and its size as TOML.
    routes: Vec<(RouteFile, usize)>,
    /// The first backend that did not resolve: it answers 500.
    unresolved: Option<(&'static str, String)>,
    /// Why the routes stop short of all the route asks for (see [`translate`]).
    cut: Option<String>,
}

fn unsupported(message: impl Into<String>) -> Refusal {
    ("UnsupportedValue", message.into())
}

/// Routes made of one HTTPRoute stop at [`CLAIM_SLACK`] times what one tunnel carries: its
/// hostnames times its matches, each with its rule's header changes, made 282 MB of 135 KB of
/// YAML within the Gateway API's own limits. Every rule and match is still checked, on the
/// first hostname.
fn translate(route: &HttpRoute, cluster: &Cluster, naming: &Naming) -> Result<Translated, Refusal> {
    if route.spec.hostnames.is_empty() {
        return Err(unsupported("a route without hostnames is not served: the tunnel routes by host"));
    }
    let hosts = route
        .spec
        .hostnames
        .iter()
        .map(|host| host.parse().map_err(|e| unsupported(format!("hostname {host:?}: {e}"))))
        .collect::<Result<Vec<tunnel_core::proto::HostPattern>, _>>()?;
    let mut out = Translated { routes: Vec::new(), unresolved: None, cut: None };
    let mut rules = Vec::with_capacity(route.spec.rules.len());
    for (index, rule) in route.spec.rules.iter().enumerate() {
        let at = format!("rules[{index}]");
        if let Some(field) = rule.other.keys().next() {
            return Err(unsupported(format!("{at}.{field} is not supported")));
        }
        let action = action(route, rule, &at, cluster, naming, &mut out.unresolved)?;
        let matches =
            if rule.matches.is_empty() { vec![RouteMatch::default()] } else { rule.matches.clone() };
        for (m, matched) in matches.iter().enumerate() {
            routed(&action, &hosts[0], matched, &format!("{at}.matches[{m}]"))?;
        }
        rules.push((at, action, matches));
    }
    let (mut count, mut bytes) = (0usize, 0usize);
    for (at, action, matches) in &rules {
        for (m, matched) in matches.iter().enumerate() {
            for host in &hosts {
                let file = routed(action, host, matched, &format!("{at}.matches[{m}]"))?;
                let size = toml::to_string(&file).map_or(usize::MAX, |text| text.len());
                count += 1;
                bytes = bytes.saturating_add(size);
                if count > CLAIM_SLACK * ROUTE_BUDGET || bytes > CLAIM_SLACK * ROUTE_BYTES {
                    let made = out.routes.len();
                    out.cut = Some(format!(
                        "its hostnames times its matches make more than {CLAIM_SLACK} times the routes a \
                         tunnel carries (at most {ROUTE_BUDGET} routes and {ROUTE_BYTES} bytes of \
                         configuration): the first {made} are offered, the rest left out from \
                         {at}.matches[{m}] for host {host}"
                    ));
                    return Ok(out);
                }
                out.routes.push((file, size));
            }
        }
    }
    Ok(out)
}

/// The route of `action` for `host` and `matched`, checked.
fn routed(
    action: &Action,
    host: &tunnel_core::proto::HostPattern,
    matched: &RouteMatch,
    at: &str,
) -> Result<RouteFile, Refusal> {
    let mut file = action.route(host.clone());
    apply_match(&mut file, matched, at)?;
    file.build().map_err(|e| unsupported(format!("{at}: {e}")))?;
    Ok(file)
}

fn apply_match(file: &mut RouteFile, matched: &RouteMatch, at: &str) -> Result<(), Refusal> {
    if let Some(path) = &matched.path {
        let value = path.value.clone().unwrap_or_else(|| "/".into());
        let kind = match path.kind.as_deref().unwrap_or("PathPrefix") {
            "PathPrefix" => PathType::Prefix,
            "Exact" => PathType::Exact,
            "RegularExpression" => PathType::Regex,
            other => return Err(unsupported(format!("{at}.path.type {other:?} is not supported"))),
        };
        if value != "/" || kind != PathType::Prefix {
            (file.path, file.path_type) = (Some(value), Some(kind));
        }
    }
    for header in &matched.headers {
        if header.kind.as_deref().unwrap_or("Exact") != "Exact" {
            return Err(unsupported(format!("{at}.headers: only Exact header matches are supported")));
        }
        file.headers.insert(header.name.to_ascii_lowercase(), header.value.clone());
    }
    if !matched.query_params.is_empty() {
        return Err(unsupported(format!("{at}.queryParams matches are not supported")));
    }
    if let Some(method) = &matched.method {
        file.methods = vec![method.clone()];
    }
    Ok(())
}

/// What a rule does, whatever it matches: filters, backends, timeout.
#[derive(Debug, Clone, Default)]
struct Action {
    service: Option<tunnel_core::http::Service>,
    backends: Vec<BackendFile>,
    redirect: Option<RedirectFile>,
    request_headers: HeaderChangesFile,
    timeout: Option<HumanDuration>,
}

impl Action {
    /// The route doing it for `host`, matching any request there.
    fn route(&self, host: tunnel_core::proto::HostPattern) -> RouteFile {
        RouteFile {
            host,
            path: None,
            path_type: None,
            methods: Vec::new(),
            headers: BTreeMap::new(),
            service: self.service.clone(),
            backends: self.backends.clone(),
            redirect: self.redirect.clone(),
            request_headers: self.request_headers.clone(),
            host_header: None,
            timeout: self.timeout,
        }
    }
}

fn action(
    route: &HttpRoute,
    rule: &RouteRule,
    at: &str,
    cluster: &Cluster,
    naming: &Naming,
    unresolved: &mut Option<(&'static str, String)>,
) -> Result<Action, Refusal> {
    let mut file = Action::default();
    for (f, filter) in rule.filters.iter().enumerate() {
        let here = format!("{at}.filters[{f}]");
        match (filter.kind.as_str(), &filter.request_header_modifier, &filter.request_redirect) {
            ("RequestHeaderModifier", Some(m), _) => {
                let changes = &mut file.request_headers;
                changes.set.extend(m.set.iter().map(|h| (h.name.clone(), h.value.clone())));
                changes.add.extend(m.add.iter().map(|h| (h.name.clone(), h.value.clone())));
                changes.remove.extend(m.remove.iter().cloned());
            }
            ("RequestRedirect", _, Some(r)) => {
                if r.path.is_some() {
                    return Err(unsupported(format!("{here}.requestRedirect.path is not supported")));
                }
                let port =
                    r.port.map(|p| u16::try_from(p).map_err(|_| unsupported(format!("{here}: port {p}"))));
                file.redirect = Some(RedirectFile {
                    scheme: r.scheme.clone(),
                    host: r.hostname.clone(),
                    port: port.transpose()?,
                    status: r.status_code.map(|s| u16::try_from(s).unwrap_or(0)),
                });
            }
            (kind @ ("RequestHeaderModifier" | "RequestRedirect"), _, _) => {
                return Err(unsupported(format!("{here}: a {kind} filter without its settings")));
            }
            (other, _, _) => return Err(unsupported(format!("{here}: the {other} filter is not supported"))),
        }
    }
    if let Some(timeouts) = &rule.timeouts {
        let chosen = timeouts.backend_request.as_deref().or(timeouts.request.as_deref());
        if let Some(text) = chosen {
            file.timeout = Some(HumanDuration(
                gateway_duration(text).map_err(|e| unsupported(format!("{at}.timeouts: {e}")))?,
            ));
        }
    }
    if file.redirect.is_some() {
        return Ok(file);
    }
    let mut backends = Vec::new();
    for (b, backend) in rule.backend_refs.iter().enumerate() {
        let here = format!("{at}.backendRefs[{b}]");
        if !backend.filters.is_empty() {
            return Err(unsupported(format!("{here}.filters are not supported")));
        }
        let weight = backend.weight.unwrap_or(1);
        let weight =
            u32::try_from(weight).map_err(|_| unsupported(format!("{here}.weight {weight} is negative")))?;
        if weight == 0 {
            continue;
        }
        let service = match backend_origin(route, backend, cluster, naming) {
            Ok(origin) => origin,
            Err(problem) => {
                unresolved.get_or_insert((problem.0, format!("{here}: {}", problem.1)));
                "http_status:500".parse().expect("a valid status")
            }
        };
        backends.push(BackendFile { service, weight });
    }
    match backends.len() {
        // No backend (or all weighted 0): the Gateway API answers 500.
        0 => file.service = Some("http_status:500".parse().expect("a valid status")),
        1 => file.service = Some(backends.remove(0).service),
        _ => file.backends = backends,
    }
    Ok(file)
}

fn backend_origin(
    route: &HttpRoute,
    backend: &BackendRef,
    cluster: &Cluster,
    naming: &Naming,
) -> Result<tunnel_core::http::Service, (&'static str, String)> {
    let kind = backend.kind.as_deref().unwrap_or("Service");
    if !matches!(backend.group.as_deref(), None | Some("") | Some("core")) || kind != "Service" {
        return Err(("InvalidKind", format!("{kind} is not a backend kind served; use a Service")));
    }
    let own = route.namespace().unwrap_or_default();
    let namespace = backend.namespace.clone().unwrap_or_else(|| own.clone());
    if namespace != own && !granted(cluster, &own, &namespace, &backend.name) {
        let message =
            format!("no ReferenceGrant in {namespace} lets HTTPRoutes of {own} use Service {}", backend.name);
        return Err(("RefNotPermitted", message));
    }
    let Some(port) = backend.port else {
        return Err(("UnsupportedValue", format!("Service {namespace}/{} needs a port", backend.name)));
    };
    service_origin(cluster, naming, &namespace, &backend.name, PortRef::Number(port)).map_err(
        |(reason, message)| (if reason == "ServiceNotFound" { "BackendNotFound" } else { reason }, message),
    )
}

fn granted(cluster: &Cluster, from: &str, to: &str, service: &str) -> bool {
    cluster.reference_grants.iter().filter(|g| g.namespace().as_deref() == Some(to)).any(|grant| {
        let from_ok = grant
            .spec
            .from
            .iter()
            .any(|f| f.group == crate::gateway::GROUP && f.kind == "HTTPRoute" && f.namespace == from);
        let to_ok = grant.spec.to.iter().any(|t| {
            t.group.is_empty() && t.kind == "Service" && t.name.as_deref().is_none_or(|n| n == service)
        });
        from_ok && to_ok
    })
}

/// A Gateway API duration (`1h30m`, `500ms`): one to four parts of one to five digits and a
/// unit (GEP-2257), so under 46 years (`99999h` four times), which a client's configuration
/// takes; zero, meaning no limit, is not supported.
fn gateway_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 30s or 1m30s (up to 4 parts of up to 5 digits)");
    let (mut total, mut rest, mut parts) = (Duration::ZERO, text, 0);
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        parts += 1;
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if parts > 4 || !(1..=5).contains(&digits) {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = match rest.as_bytes() {
            [b'm', b's', ..] => (Duration::from_millis(1), 2),
            [b'h', ..] => (Duration::from_secs(3600), 1),
            [b'm', ..] => (Duration::from_secs(60), 1),
            [b's', ..] => (Duration::from_secs(1), 1),
            _ => return Err(bad()),
        };
        total = total.saturating_add(unit.saturating_mul(u32::try_from(n).map_err(|_| bad())?));
        rest = &rest[len..];
    }
    if total.is_zero() {
        return Err(format!("{text:?}: a timeout of zero (no limit) is not supported"));
    }
    Ok(total)
}

#[cfg(test)]
#[path = "httproute_tests.rs"]
mod tests;
