//! Status conditions as the operator writes them: a condition keeps its transition time while
//! its status holds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Conditions being written: a condition keeps its transition time while its status holds.
pub struct Conditions<'a> {
    /// As last written.
    pub previous: &'a [Condition],
    /// The time of a transition now.
    pub now: &'a Time,
    /// The generation observed.
    pub generation: Option<i64>,
    /// As to be written.
    pub out: Vec<Condition>,
}

impl Conditions<'_> {
    /// Sets condition `kind`.
    pub fn set(&mut self, kind: &str, holds: bool, reason: &str, message: &str) {
        let status = if holds { "True" } else { "False" };
        let since = self
            .previous
            .iter()
            .find(|c| c.type_ == kind && c.status == status)
            .map_or_else(|| self.now.clone(), |c| c.last_transition_time.clone());
        self.out.retain(|c| c.type_ != kind);
        self.out.push(Condition {
            type_: kind.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: since,
            observed_generation: self.generation,
        });
    }
}
