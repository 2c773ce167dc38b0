//! Applying a session's last table again. After a reload, in two rounds over every session:
//! the routes the new rules no longer allow (ports narrowed or now owned by another client, a
//! bind address taken away, a service name, host or network no longer allowed) are taken out
//! of service; then each session applies its last table again and the client is told, with a
//! fresh answer to that table (or, for a version 1 client, a refusal per forward or service).
//! Everything else is untouched. And while entries of a table are refused because another
//! client holds what they ask for, those entries are tried again now and then, so they come
//! into service once it is given up.

use std::time::Duration;

use tokio::time::Instant;

use super::SessionRoutes;
use crate::log::Escaped;
use crate::proto::{ControlMessage, HostPattern, RefusalCode, RouteId, RouteOutcome, RouteResult};
use crate::server::forwards::Refusal;
use crate::session::ControlSender;

/// The first wait before an entry refused as taken is tried again, and the longest.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(16);

/// The next [`SessionRoutes::retry_taken`]: when, after what wait, and the last answer.
pub(super) struct Retry {
    at: Instant,
    wait: Duration,
    results: Vec<RouteResult>,
}

/// Refused because another client (or something else on the server host) holds it.
fn taken(outcome: &RouteOutcome) -> bool {
    matches!(
        outcome,
        RouteOutcome::Refused {
            code: RefusalCode::PortTaken | RefusalCode::HostTaken | RefusalCode::NetworkTaken,
            ..
        }
    )
}

/// A route in service that the rules in force no longer allow.
struct Disallowed {
    id: RouteId,
    /// What it is, for the log and the reload's report.
    what: String,
    refusal: Refusal,
    /// The service's name, when it is one.
    service: Option<String>,
}

impl SessionRoutes<'_> {
    /// Takes out of service what the configuration now in force no longer allows; returns
    /// what it withdrew, as `client: route`. The edge stops routing to what was withdrawn at
    /// once; the client hears of it at [`Self::reapply`] (or now, for a version 1 client). A
    /// draining session gives up what is withdrawn too (so its drain does not keep a port or
    /// host from the client a reload gave it to); its client is told nothing, as it is leaving
    /// or the server is (its next session, here or elsewhere, sends its table afresh).
    pub(in crate::server) async fn withdraw(&mut self, control: &ControlSender) -> Vec<String> {
        let disallowed = self.disallowed();
        for Disallowed { id, what, refusal: (code, message), .. } in &disallowed {
            tracing::warn!(client = %Escaped(&self.name), route = %id, "{what} withdrawn after a reload: {} ({code})", Escaped(message));
            self.remove(*id).await;
        }
        self.settle();
        let withdrawn = disallowed.iter().map(|d| format!("{}: {}", self.name, d.what)).collect();
        if self.draining {
            self.show();
            return withdrawn;
        }
        if self.table.is_none() {
            for Disallowed { id, refusal: (code, message), service, .. } in disallowed {
                // Version 1 forward ids are the client's own 32-bit numbers.
                let refused = match (service, u32::try_from(id.0)) {
                    (Some(name), _) => ControlMessage::ExposeRefused { name, code, message },
                    (None, Ok(id)) => ControlMessage::RemoteForwardRefused { id, code, message },
                    (None, Err(_)) => continue,
                };
                self.answer(control, refused).await;
            }
        } else {
            self.withdrawn = disallowed.into_iter().map(|d| (d.id, d.refusal)).collect();
        }
        self.show();
        withdrawn
    }

    /// Applies the client's last table again under the configuration in force: what stays is
    /// left alone, what was withdrawn is refused, and an entry refused before (say, a port now
    /// allowed, or one another client gave up) gets another chance. The client is answered
    /// again when anything changed for it.
    pub(in crate::server) async fn reapply(&mut self, control: &ControlSender) {
        let withdrawn = std::mem::take(&mut self.withdrawn);
        let Some((version, entries)) = self.table.clone().filter(|_| !self.draining) else { return };
        // Lowered limits leave what is in service alone (it is unchanged); an entry they refused
        // before is refused again.
        let applied = self.apply(entries).await;
        if let Ok((results, changes)) = &applied {
            self.report(results.len(), changes);
            self.schedule_retry(results.clone(), None);
        }
        let results = match applied {
            Ok((results, changes)) if changes.added + changes.removed > 0 || !withdrawn.is_empty() => results,
            Ok(_) => return self.show(),
            // A table applied before has no id twice, the one thing that fails.
            Err(reason) => {
                tracing::warn!(client = %Escaped(&self.name), "last route table not applied again: {}", Escaped(&reason));
                return self.show();
            }
        };
        self.answer(control, ControlMessage::RouteTableResult { version, results }).await;
    }

    /// Tries again the entries of the last table refused because another client held their
    /// port, host or network (or something else on the server host held the port): one it
    /// gave up or whose reservation ran out is this client's now, without a new table. Only
    /// those entries are tried, and the session's routes are published again (and the client
    /// answered again) only when one came into service. The waits between tries double from
    /// [`FIRST_RETRY`] to [`LAST_RETRY`]; each new table or reload starts them again.
    pub(in crate::server) async fn retry_taken(&mut self, control: &ControlSender) {
        let Some(Retry { wait, mut results, .. }) = self.retry.take() else { return };
        let Some((version, entries)) = self.table.clone().filter(|_| !self.draining) else { return };
        let mut added = 0;
        for result in results.iter_mut().filter(|result| taken(&result.outcome)) {
            let Some(entry) = entries.iter().find(|entry| entry.id == result.id) else { continue };
            result.outcome = match self.add(entry.id, entry.kind.clone()).await {
                Ok(public_addr) => {
                    added += 1;
                    RouteOutcome::Ready { public_addr }
                }
                Err((code, message)) => RouteOutcome::Refused { code, message },
            };
        }
        if added > 0 {
            self.settle();
            tracing::info!(client = %Escaped(&self.name), added, "routes refused as taken are in service now");
            self.answer(control, ControlMessage::RouteTableResult { version, results: results.clone() })
                .await;
        }
        self.schedule_retry(results, Some(wait));
    }

    /// When [`Self::retry_taken`] is due, if it is.
    pub(in crate::server) fn retry_at(&self) -> Option<Instant> {
        self.retry.as_ref().filter(|_| !self.draining).map(|retry| retry.at)
    }

    /// Plans the next [`Self::retry_taken`] if `results` (the last answer) hold an entry
    /// refused as taken: after [`FIRST_RETRY`] for a table just applied, else after twice the
    /// `last` wait.
    pub(super) fn schedule_retry(&mut self, results: Vec<RouteResult>, last: Option<Duration>) {
        let wait = last.map_or(FIRST_RETRY, |last| (last * 2).min(LAST_RETRY));
        let any = results.iter().any(|result| taken(&result.outcome));
        self.retry = any.then(|| Retry { at: Instant::now() + wait, wait, results });
    }

    fn disallowed(&self) -> Vec<Disallowed> {
        let config = self.shared.config();
        let rules = config.rules(&self.name, self.credential);
        let mut disallowed = Vec::new();
        for (&id, route) in &self.ports {
            if let Err(refusal) = self.binder().still_allowed(route.shape.bind, route.public_addr) {
                let what = format!("{} {}", route.protocol_name(), route.public_addr);
                disallowed.push(Disallowed { id, what, refusal, service: None });
            }
        }
        for (&id, service) in self.services.iter().filter(|(_, service)| !rules.may_expose(service)) {
            let message = format!("client {:?} may no longer expose a service named {service:?}", self.name);
            let refusal = (RefusalCode::NameNotAllowed, message);
            let what = format!("service {service}");
            disallowed.push(Disallowed { id, what, refusal, service: Some(service.clone()) });
        }
        let host_refusal = |host: &HostPattern| {
            (RefusalCode::HostNotAllowed, format!("client {:?} may no longer serve host {host}", self.name))
        };
        for (&id, matcher) in &self.http {
            let host = &matcher.spec().host;
            if !rules.may_serve_host(host) {
                let what = format!("HTTP {host}");
                disallowed.push(Disallowed { id, what, refusal: host_refusal(host), service: None });
            }
        }
        for (&id, host) in self.tls.iter().filter(|(_, host)| !rules.may_serve_host(host)) {
            let what = format!("TLS {host}");
            disallowed.push(Disallowed { id, what, refusal: host_refusal(host), service: None });
        }
        for (&id, net) in self.networks.iter().filter(|(_, net)| !rules.may_route_network(net)) {
            let message = format!("client {:?} may no longer route network {net}", self.name);
            let refusal = (RefusalCode::NetworkNotAllowed, message);
            disallowed.push(Disallowed { id, what: format!("network {net}"), refusal, service: None });
        }
        disallowed
    }
}
