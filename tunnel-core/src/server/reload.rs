//! Replacing a running server's configuration ([`Server::reload`]): only what changed is
//! touched. Sessions whose token is no longer accepted end; every other session re-checks its
//! routes against the new rules and withdraws only those they no longer allow.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::directory::Recheck;
use super::registry::{Caps, Owner};
use super::{Server, ServerConfig};

/// How long a reload waits for each session in each round (one busy applying a table
/// finishes that first); one that has not answered by then re-checks all the same.
const RECHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reload {
    /// The settings that changed and are now in force (`credentials`, `policy`,
    /// `max_sessions`...). Limits apply to what comes next; routes and visitors in service
    /// keep the limits they started under.
    pub changed: Vec<&'static str>,
    /// Settings that changed but cannot while the server runs, kept as they were, each with
    /// why: `lease_file`, switching TLS on or off, taking the HTTPS certificate away, the
    /// HTTP edge's `fallback` and `limits`.
    pub refused: Vec<String>,
    /// Clients whose sessions end because their token was removed or changed.
    pub ended: Vec<String>,
    /// Clients with more sessions than their replicas (`replicas`, `max_replicas`) now
    /// allow: the excess close (`Goodbye(Replaced)`), silent ones first, then the oldest.
    pub trimmed: Vec<String>,
    /// Routes taken out of service because the new rules no longer allow them, as
    /// `client: route`.
    pub withdrawn: Vec<String>,
}

impl Server {
    /// Puts `config` in force: new handshakes, sessions, routes and visitors follow it at
    /// once. A session whose token `config` no longer accepts ends (`Goodbye(Revoked)`); every
    /// other session withdraws the routes the new rules no longer allow (ports narrowed or
    /// now owned by another client, bind addresses, services, hosts) and keeps the rest, open
    /// streams included, then applies its last table again (what was refused may now be
    /// allowed). Reloads run one at a time; this returns once the sessions have re-checked
    /// (each gets a few seconds; one that has not answered by then re-checks all the same).
    pub async fn reload(&self, mut config: ServerConfig) -> Reload {
        let shared = &self.shared;
        let _one_at_a_time = shared.reloading.lock().await;
        let before = shared.config();
        config.session.metrics = Some(shared.metrics.clone());
        let mut report = Reload::default();
        keep_restart_only(&before, &mut config, &mut report.refused);
        report.changed = changed(&before, &config);
        shared.pending.set_limits(config.max_unauthenticated, config.max_unauthenticated_per_source);
        shared.registry.set_limits(config.port_grace, Caps::of(&config));
        let config = Arc::new(config);
        *shared.config.write().unwrap_or_else(|e| e.into_inner()) = config.clone();
        shared.reloads.send_modify(|n| *n += 1);
        if before.http.certified != config.http.certified {
            // ACME looks again at which names other certificates now cover.
            shared.http_routes.nudge();
        }
        report.ended = shared
            .sessions
            .revoke_unless(|name, kind| config.credentials.still_accepts(&before.credentials, name, kind));
        let trimmed = shared.registry.trim(|name, kind| config.rules(name, kind).replicas());
        let leaving: Vec<_> = trimmed.iter().map(|(_, id)| *id).collect();
        report.trimmed = trimmed.into_iter().map(|(name, _)| name).collect();
        report.trimmed.dedup();
        let sessions = shared.sessions.rechecks(&leaving);
        let withdrawn = futures::future::join_all(sessions.iter().map(|(name, session)| async move {
            let (done, answer) = oneshot::channel();
            let asked = async {
                futures::SinkExt::send(&mut *session.lock().await, Recheck::Withdraw(done)).await.ok()?;
                answer.await.ok()
            };
            match tokio::time::timeout(RECHECK_TIMEOUT, asked).await {
                Ok(Some(withdrawn)) => withdrawn,
                // The session ended meanwhile.
                Ok(_) => Vec::new(),
                Err(_) => vec![format!("{name}: (did not answer in time; re-checks when it can)")],
            }
        }));
        let mut withdrawn: Vec<String> = withdrawn.await.into_iter().flatten().collect();
        withdrawn.sort();
        // Replicas of a name serve one route: each withdraws its share, the report names it once.
        withdrawn.dedup();
        report.withdrawn = withdrawn;
        // A port the new configuration gives to one client is no longer held for another's
        // reconnect (as at a restart), nor for a client whose kind of credential changed: a
        // name removed from `[[clients]]` is, on the shared token, someone else.
        let admitted = |owner: &Owner| config.credentials.admits(&owner.name, owner.credential);
        shared.registry.drop_reservations(|port, owner| {
            admitted(owner) && config.policy.port_owner(port).is_none_or(|o| o == owner.name)
        });
        shared.networks.drop_reservations(admitted);
        futures::future::join_all(sessions.iter().map(|(_, session)| async move {
            let (done, answer) = oneshot::channel();
            let asked = async {
                futures::SinkExt::send(&mut *session.lock().await, Recheck::Reapply(done))
                    .await
                    .ok()
                    .map(|()| answer)
            };
            if let Ok(Some(answer)) = tokio::time::timeout(RECHECK_TIMEOUT, asked).await {
                let _ = tokio::time::timeout(RECHECK_TIMEOUT, answer).await;
            }
        }))
        .await;
        tracing::info!(
            changed = ?report.changed,
            refused = ?report.refused,
            ended = ?report.ended,
            withdrawn = ?report.withdrawn,
            trimmed = ?report.trimmed,
            "configuration reloaded"
        );
        report
    }
}

/// Keeps the settings that cannot change while the server runs as they are, saying why.
fn keep_restart_only(before: &ServerConfig, config: &mut ServerConfig, refused: &mut Vec<String>) {
    if config.lease_file != before.lease_file {
        refused.push("lease_file: where leases are kept changes only at a restart".to_owned());
        config.lease_file = before.lease_file.clone();
    }
    if config.tls.is_some() != before.tls.is_some() {
        refused.push("tls: switching between TLS and plaintext changes only at a restart".to_owned());
        config.tls = before.tls.clone();
    }
    if config.http.tls.is_none() && before.http.tls.is_some() {
        refused.push("http.tls: the HTTPS listener keeps a certificate until a restart".to_owned());
        config.http.tls = before.http.tls.clone();
        config.http.certified = before.http.certified.clone();
    }
    if config.http.acme != before.http.acme {
        refused.push("http.acme: ACME settings change only at a restart".to_owned());
        config.http.acme = before.http.acme.clone();
    }
    if config.http.fallback != before.http.fallback || config.http.limits != before.http.limits {
        let why = "http: the HTTP edge's fallback answer and limits change only at a restart";
        refused.push(why.to_owned());
        config.http.fallback = before.http.fallback;
        config.http.limits = before.http.limits.clone();
    }
}

/// The settings that differ. Credentials are compared token by token, without printing them;
/// TLS configurations by identity (a reload that reads the certificates again gives new ones);
/// the session settings, which hold no secrets and no maps, by their `Debug` text.
fn changed(before: &ServerConfig, after: &ServerConfig) -> Vec<&'static str> {
    let differs = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let same_tls = |a: &Option<Arc<rustls::ServerConfig>>, b: &Option<Arc<rustls::ServerConfig>>| match (a, b)
    {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    };
    let mut changed = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("credentials", !after.credentials.same_as(&before.credentials));
    check("policy", before.policy != after.policy);
    check("tls", !same_tls(&before.tls, &after.tls));
    check("session", differs(&before.session, &after.session));
    check("handshake_timeout", before.handshake_timeout != after.handshake_timeout);
    check("max_unauthenticated", before.max_unauthenticated != after.max_unauthenticated);
    check(
        "max_unauthenticated_per_source",
        before.max_unauthenticated_per_source != after.max_unauthenticated_per_source,
    );
    check("max_forwards_per_client", before.max_forwards_per_client != after.max_forwards_per_client);
    check("max_visitors_per_forward", before.max_visitors_per_forward != after.max_visitors_per_forward);
    check("max_visitors_per_source", before.max_visitors_per_source != after.max_visitors_per_source);
    check("max_services_per_client", before.max_services_per_client != after.max_services_per_client);
    check("max_sessions", before.max_sessions != after.max_sessions);
    check(
        "max_sessions_per_shared_token",
        before.max_sessions_per_shared_token != after.max_sessions_per_shared_token,
    );
    check("port_grace", before.port_grace != after.port_grace);
    check("drain_timeout", before.drain_timeout != after.drain_timeout);
    check("timeouts", before.timeouts != after.timeouts);
    check("http.tls", !same_tls(&before.http.tls, &after.http.tls));
    check("http.certified", before.http.certified != after.http.certified);
    changed
}
