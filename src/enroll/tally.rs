//! Enrollment decisions counted per deciding policy since the operator started, for the
//! policy's status and the standalone status JSON. Metrics count the same decisions.

use std::collections::BTreeMap;
use std::sync::Mutex;

use jiff::Timestamp;
use tokio::sync::watch;

use super::decide::{Decision, Verdict};
use crate::api::EnrollmentGateStatus;
use crate::api::validate::ObjectKey;

/// One policy's decisions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyTally {
    /// Counting started here when continuing from an earlier run's status.
    pub since: Option<Timestamp>,
    pub decisions: BTreeMap<&'static str, u64>,
    pub last_decision: Option<Timestamp>,
    /// When the gate last could not decide, and why.
    pub last_problem: Option<(Timestamp, String)>,
    /// An earlier run's counts were added in.
    pub adopted: bool,
}

/// Decisions per policy (`namespace/name`; `""` for devices no gate applies to).
#[derive(Debug)]
pub struct Tally {
    since: Timestamp,
    by_policy: Mutex<BTreeMap<String, PolicyTally>>,
    /// Bumped on every decision, so Kubernetes mode can refresh policy status (debounced).
    changes: watch::Sender<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new(Timestamp::now())
    }
}

impl Tally {
    pub fn new(since: Timestamp) -> Self {
        Tally {
            since,
            by_policy: Mutex::default(),
            changes: watch::channel(0).0,
        }
    }

    pub fn record(&self, decision: &Decision, at: Timestamp) {
        let key = decision
            .policy
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        {
            let mut by_policy = self.by_policy.lock().unwrap_or_else(|e| e.into_inner());
            let tally = by_policy.entry(key).or_default();
            *tally
                .decisions
                .entry(decision.verdict.as_str())
                .or_default() += 1;
            tally.last_decision = Some(at);
            if let Verdict::FailedOpen(why) | Verdict::FailedClosed(why) = &decision.verdict {
                tally.last_problem = Some((at, why.clone()));
            }
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Notes a problem that did not change the decision (such as a missing beta token).
    pub fn problem(&self, policy: &ObjectKey, at: Timestamp, why: String) {
        let mut by_policy = self.by_policy.lock().unwrap_or_else(|e| e.into_inner());
        by_policy
            .entry(policy.to_string())
            .or_default()
            .last_problem = Some((at, why));
    }

    /// Continues from what a policy's status shows (an earlier run's counts), once per policy:
    /// a restart neither loses the counts nor rewrites the status. Decisions this run made
    /// before it saw the status are added to the shown ones.
    pub fn adopt(&self, policy: &ObjectKey, shown: &EnrollmentGateStatus) {
        let mut by_policy = self.by_policy.lock().unwrap_or_else(|e| e.into_inner());
        let tally = by_policy.entry(policy.to_string()).or_default();
        if tally.adopted {
            return;
        }
        tally.adopted = true;
        for (name, n) in &shown.decisions {
            if let Some(name) = Verdict::NAMES.iter().find(|v| **v == name) {
                *tally.decisions.entry(name).or_default() += n;
            }
        }
        tally.since = shown.since.parse().ok();
        let shown_decision: Option<Timestamp> = shown
            .last_decision_time
            .as_deref()
            .and_then(|t| t.parse().ok());
        tally.last_decision = tally.last_decision.max(shown_decision);
        if tally.last_problem.is_none() {
            tally.last_problem = shown.last_problem.as_deref().and_then(|p| {
                let (at, why) = p.split_once(": ")?;
                Some((at.parse().ok()?, why.to_string()))
            });
        }
    }

    pub fn of(&self, policy: &ObjectKey) -> Option<PolicyTally> {
        let by_policy = self.by_policy.lock().unwrap_or_else(|e| e.into_inner());
        by_policy.get(&policy.to_string()).cloned()
    }

    pub fn all(&self) -> BTreeMap<String, PolicyTally> {
        self.by_policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The status a gated policy shows.
    pub fn status_of(&self, policy: &ObjectKey) -> EnrollmentGateStatus {
        let tally = self.of(policy).unwrap_or_default();
        let time = |t: Timestamp| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        EnrollmentGateStatus {
            since: time(tally.since.unwrap_or(self.since)),
            decisions: tally
                .decisions
                .iter()
                .map(|(k, v)| ((*k).to_string(), *v))
                .collect(),
            last_decision_time: tally.last_decision.map(time),
            last_problem: tally
                .last_problem
                .map(|(at, why)| format!("{}: {why}", time(at))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enroll::Decision;

    fn key() -> ObjectKey {
        ObjectKey {
            namespace: "it".into(),
            name: "macs".into(),
        }
    }

    fn decision(verdict: Verdict) -> Decision {
        Decision {
            verdict,
            policy: Some(key()),
            platform: None,
            running: None,
        }
    }

    #[test]
    fn a_restart_continues_from_the_shown_counts_and_shows_them_unchanged() {
        let first: Timestamp = "2026-11-01T08:00:00Z".parse().expect("time");
        let earlier = Tally::new(first);
        earlier.record(&decision(Verdict::Allowed), first);
        earlier.record(
            &decision(Verdict::FailedClosed(
                "J999AP is not in Apple's catalog".into(),
            )),
            first,
        );
        let shown = earlier.status_of(&key());

        let restarted = Tally::new("2026-11-27T08:00:00Z".parse().expect("time"));
        restarted.adopt(&key(), &shown);
        assert_eq!(restarted.status_of(&key()), shown, "nothing to rewrite");
        let now: Timestamp = "2026-11-27T09:00:00Z".parse().expect("time");
        restarted.record(&decision(Verdict::Allowed), now);
        let after = restarted.status_of(&key());
        assert_eq!(after.since, shown.since);
        assert_eq!(after.decisions.get("Allowed"), Some(&2));
        assert_eq!(after.decisions.get("FailedClosed"), Some(&1));
        assert_eq!(after.last_problem, shown.last_problem);
        // Adopted once: what a status shows is not added again.
        restarted.adopt(&key(), &after);
        assert_eq!(restarted.status_of(&key()), after);
    }

    #[test]
    fn decisions_made_before_the_status_was_seen_add_to_it() {
        let first: Timestamp = "2026-11-01T08:00:00Z".parse().expect("time");
        let earlier = Tally::new(first);
        earlier.record(&decision(Verdict::Allowed), first);
        let shown = earlier.status_of(&key());
        let restarted = Tally::new("2026-11-27T08:00:00Z".parse().expect("time"));
        let now: Timestamp = "2026-11-27T08:00:01Z".parse().expect("time");
        restarted.record(&decision(Verdict::Allowed), now);
        restarted.adopt(&key(), &shown);
        let status = restarted.status_of(&key());
        assert_eq!(status.decisions.get("Allowed"), Some(&2));
        assert_eq!(status.since, shown.since);
        assert_eq!(
            status.last_decision_time.as_deref(),
            Some("2026-11-27T08:00:01Z")
        );
    }
}
