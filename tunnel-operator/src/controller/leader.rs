//! Leader election on a `coordination.k8s.io/v1` Lease: one replica of the operator reconciles,
//! the others wait. The leader renews every few seconds; a replica takes the lease only once
//! its holder has let it lapse. Losing it ends the controller (the pod restarts and waits).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease as LeaseObject, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// The Lease's name, in the operator's namespace.
pub const LEASE_NAME: &str = "tunnel-operator";
/// How long a lease lasts without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How long the leader goes on without a renewal: well short of the lease, so it has stopped
/// before another replica may take over.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// The longest one call to the API server may take here.
const CALL_TIMEOUT: Duration = Duration::from_secs(4);

/// The lease, held.
pub struct Lease {
    api: Api<LeaseObject>,
    identity: String,
}

/// What a lease says about who may lead now.
#[derive(Debug, PartialEq, Eq)]
pub enum Holder {
    /// Nobody holds it, or its holder let it lapse.
    Free,
    /// This identity holds it.
    Us,
    /// Another holds it, until the lease lapses.
    Other(String),
}

/// Who may lead, from a lease at `now`.
pub fn holder(lease: &LeaseObject, identity: &str, now: Timestamp) -> Holder {
    let Some(spec) = &lease.spec else { return Holder::Free };
    let Some(who) = spec.holder_identity.clone().filter(|h| !h.is_empty()) else { return Holder::Free };
    if who == identity {
        return Holder::Us;
    }
    let lasts = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    match &spec.renew_time {
        Some(MicroTime(renewed)) if renewed.checked_add(lasts).is_ok_and(|until| until > now) => {
            Holder::Other(who)
        }
        _ => Holder::Free,
    }
}

impl Lease {
    /// Waits until this identity holds the lease in `namespace`.
    pub async fn acquire(client: Client, namespace: &str, identity: &str) -> anyhow::Result<Self> {
        let lease = Self { api: Api::namespaced(client, namespace), identity: identity.to_owned() };
        let mut waiting = false;
        loop {
            match tokio::time::timeout(CALL_TIMEOUT, lease.try_take()).await.unwrap_or(Ok(false)) {
                Ok(true) => return Ok(lease),
                Ok(false) if !waiting => {
                    tracing::info!("another replica leads; waiting for the lease {namespace}/{LEASE_NAME}");
                    waiting = true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("the lease {namespace}/{LEASE_NAME}: {e}"),
            }
            tokio::time::sleep(RENEW_EVERY).await;
        }
    }

    /// One attempt to take or renew the lease; a concurrent writer makes it fail (409).
    async fn try_take(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        };
        let Some(mut current) = self.api.get_opt(LEASE_NAME).await? else {
            let fresh = LeaseObject {
                metadata: ObjectMeta { name: Some(LEASE_NAME.into()), ..ObjectMeta::default() },
                spec: Some(spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &fresh).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let old = current.spec.clone().unwrap_or_default();
        let next = match holder(&current, &self.identity, now) {
            Holder::Other(_) => return Ok(false),
            Holder::Us => spec(old.lease_transitions.unwrap_or(0), old.acquire_time),
            Holder::Free => spec(old.lease_transitions.unwrap_or(0).saturating_add(1), None),
        };
        current.spec = Some(next);
        // The resource version in `current` makes this fail if another replica wrote first.
        match self.api.replace(LEASE_NAME, &PostParams::default(), &current).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Renews the lease for as long as it can; returns when it is lost (another replica took
    /// it, or no renewal succeeded for [`RENEW_DEADLINE`], short of the lease's 15 s).
    pub async fn held(self) -> anyhow::Error {
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match tokio::time::timeout(CALL_TIMEOUT, self.try_take()).await {
                Ok(Ok(true)) => renewed = tokio::time::Instant::now(),
                Ok(Ok(false)) => return anyhow::anyhow!("another replica took the lease {LEASE_NAME}"),
                Ok(Err(e)) => tracing::warn!("renewing the lease {LEASE_NAME}: {e}"),
                Err(_) => tracing::warn!("renewing the lease {LEASE_NAME}: no answer in {CALL_TIMEOUT:?}"),
            }
            if renewed.elapsed() >= RENEW_DEADLINE {
                return anyhow::anyhow!("the lease {LEASE_NAME} could not be renewed for {RENEW_DEADLINE:?}");
            }
        }
    }
}

/// Whether the API server serves `group` (the Gateway API may not be installed).
pub async fn has_group(client: &Client, group: &str) -> bool {
    match client.list_api_groups().await {
        Ok(groups) => groups.groups.iter().any(|g| g.name == group),
        Err(e) => {
            tracing::warn!("listing API groups: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_secs_ago: i64) -> LeaseObject {
        LeaseObject {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(Timestamp::from_second(1_000_000 - renewed_secs_ago).unwrap())),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn a_lease_is_taken_only_once_its_holder_let_it_lapse() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        assert_eq!(holder(&lease(Some("b"), 5), "a", now), Holder::Other("b".into()));
        assert_eq!(holder(&lease(Some("b"), 14), "a", now), Holder::Other("b".into()));
        assert_eq!(holder(&lease(Some("b"), 15), "a", now), Holder::Free);
        assert_eq!(holder(&lease(Some("a"), 100), "a", now), Holder::Us);
        assert_eq!(holder(&lease(None, 0), "a", now), Holder::Free);
        assert_eq!(holder(&lease(Some(""), 0), "a", now), Holder::Free);
        assert_eq!(holder(&LeaseObject::default(), "a", now), Holder::Free);
    }
}
