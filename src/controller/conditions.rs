//! Status conditions as the Kubernetes API conventions want them: one per type, each with a
//! reason from a fixed list and `observedGeneration`, and a `lastTransitionTime` that moves only
//! when the status flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition to set, before transition-time bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        ok: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Desired {
            type_,
            ok,
            reason,
            message: message.into(),
        }
    }
}

/// The conditions to write: `lastTransitionTime` is kept from `current` where the status did not
/// change, and set to `now` where it did (or the condition is new).
pub fn conditions(
    current: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = if d.ok { "True" } else { "False" };
            let previous = current.iter().find(|c| c.type_ == d.type_);
            let last_transition_time = match previous {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: d.type_.to_string(),
                status: status.to_string(),
                reason: d.reason.to_string(),
                // The API server caps messages at 32768 characters.
                message: d.message.chars().take(1024).collect(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let t0: jiff::Timestamp = "2026-09-01T00:00:00Z".parse().expect("time");
        let t1: jiff::Timestamp = "2026-09-02T00:00:00Z".parse().expect("time");
        let first = conditions(
            &[],
            &[Desired::new("Ready", false, "Resolving", "")],
            Some(1),
            t0,
        );
        assert_eq!(first[0].last_transition_time, Time(t0));
        let same = conditions(
            &first,
            &[Desired::new("Ready", false, "BackendError", "x")],
            Some(2),
            t1,
        );
        assert_eq!(
            same[0].last_transition_time,
            Time(t0),
            "reason changed, status did not"
        );
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = conditions(
            &same,
            &[Desired::new("Ready", true, "Ready", "")],
            Some(2),
            t1,
        );
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[0].status, "True");
    }
}
