//! The read-only status document (`GET /api/v1/status`) and the per-state device gauges: for
//! every resource, how its devices stand.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::api::validate::Checked;
use crate::backend::DeviceRecord;
use crate::inventory::Device;
use crate::metrics::{Metrics, SourceLabels, StateLabels};
use crate::pass::Frozen;
use crate::resolve::{DevicePlan, Enforcement, Plan, Reason, Source};
use crate::status::DeviceStatus;
use crate::status::bucket::{Bucket, Standing, bucket};

/// Devices listed per resource as the worst off, at most.
const WORST: usize = 10;

/// A device among the worst off for a resource.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorstDevice {
    pub enrollment_id: String,
    pub model: String,
    pub os_version: String,
    pub state: &'static str,
    pub failure_reason: Option<String>,
}

/// How one resource's devices stand.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub counts: BTreeMap<Bucket, u64>,
    pub worst: Vec<WorstDevice>,
    /// Apple-silicon Macs it enforces that have no escrowed bootstrap token.
    pub bootstrap_token_missing: u64,
}

impl Tally {
    fn add(&mut self, state: Bucket, device: &Device, status: Option<&DeviceStatus>) {
        *self.counts.entry(state).or_default() += 1;
        if matches!(state, Bucket::Failed | Bucket::Stale) && self.worst.len() < WORST {
            self.worst.push(WorstDevice {
                enrollment_id: device.enrollment_id.clone(),
                model: device.model.clone(),
                os_version: device.os_version.to_string(),
                state: state.as_str(),
                failure_reason: status.and_then(|s| s.failure_reason.clone()),
            });
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn count(&self, state: Bucket) -> u64 {
        self.counts.get(&state).copied().unwrap_or(0)
    }

    /// Compliant over applicable devices; 1 when the resource applies to none.
    pub fn compliance_ratio(&self) -> f64 {
        let applicable = self.total() - self.count(Bucket::NotApplicable);
        if applicable == 0 {
            1.0
        } else {
            self.count(Bucket::Compliant) as f64 / applicable as f64
        }
    }

    /// `compliant/total` over the devices the resource applies to.
    pub fn compliance(&self) -> String {
        let applicable = self.total() - self.count(Bucket::NotApplicable);
        format!("{}/{applicable}", self.count(Bucket::Compliant))
    }
}

/// Tallies per source, and per generated target (parallel to `Plan::generated`).
#[derive(Debug, Clone, Default)]
pub struct Standings {
    pub by_source: BTreeMap<Source, Tally>,
    pub by_generated: Vec<Tally>,
}

/// Where every device stands against every resource that selects it.
pub fn standings(
    devices: &[Device],
    plan: &Plan,
    records: &HashMap<&str, &DeviceRecord>,
    now: Timestamp,
) -> Standings {
    let mut standings = Standings {
        by_source: BTreeMap::new(),
        by_generated: vec![Tally::default(); plan.generated.len()],
    };
    type GeneratedKey = (
        usize,
        usize,
        crate::catalog::Platform,
        String,
        jiff::civil::DateTime,
    );
    let generated: HashMap<GeneratedKey, usize> = plan
        .generated
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                (
                    t.policy,
                    t.ring,
                    t.platform,
                    t.version.to_string(),
                    t.deadline,
                ),
                i,
            )
        })
        .collect();
    for (device, outcome) in devices.iter().zip(&plan.devices) {
        let record = records.get(device.enrollment_id.as_str()).copied();
        let status = record.map(|r| &r.status);
        each_source(plan, outcome, record, now, |source, state, enforcement| {
            let tally = standings.by_source.entry(source).or_default();
            tally.add(state, device, status);
            let token_missing = enforcement.is_some()
                && outcome
                    .notes
                    .iter()
                    .any(|n| n.source == source && n.reason == Reason::BootstrapTokenMissing);
            if token_missing {
                tally.bootstrap_token_missing += 1;
            }
            // A generated target counts the devices it takes to its version and those already
            // running it (the policy's answer they meet).
            let counted_in = match (source, enforcement) {
                (Source::Policy(p), Some(e)) => Some((p, e.ring, &e.version, e.deadline)),
                (Source::Policy(p), None) => outcome
                    .met
                    .iter()
                    .find(|m| m.policy == p)
                    .map(|m| (p, m.ring, &m.version, m.deadline)),
                (Source::Target(_), _) => None,
            };
            if let Some((p, ring, version, deadline)) = counted_in
                && let Some(g) =
                    generated.get(&(p, ring, device.platform, version.to_string(), deadline))
            {
                standings.by_generated[*g].add(state, device, status);
            }
        });
    }
    standings
}

/// Where one device stands against each source that applies to it (each once, enforcements'
/// sources first): its state bucket and the enforcement the source gives it, if any.
pub fn each_source<'p>(
    plan: &'p Plan,
    outcome: &'p DevicePlan,
    record: Option<&DeviceRecord>,
    now: Timestamp,
    mut each: impl FnMut(Source, Bucket, Option<&'p Enforcement>),
) {
    let empty = DeviceStatus::default();
    let status = record.map(|r| &r.status);
    let sources = outcome
        .enforcements
        .iter()
        .map(|e| e.source)
        .chain(outcome.notes.iter().map(|n| n.source));
    let mut seen: Vec<Source> = Vec::new();
    for source in sources {
        if seen.contains(&source) {
            continue;
        }
        seen.push(source);
        let enforcement = outcome.enforcements.iter().find(|e| e.source == source);
        let note = outcome
            .notes
            .iter()
            .find(|n| n.source == source && enforcement.is_none());
        let state = bucket(Standing {
            enforcement: enforcement.map(|e| {
                plan.declarations[e.declaration as usize]
                    .identifier
                    .as_str()
            }),
            reason: note.map(|n| n.reason),
            status: status.unwrap_or(&empty),
            last_report: record.and_then(|r| r.last_report),
            assigned_at: record.and_then(|r| r.assigned_at),
            now,
        });
        each(source, state, enforcement);
    }
}

pub fn status(
    checked: &Checked,
    devices: &[Device],
    plan: &Plan,
    records: &HashMap<&str, &DeviceRecord>,
    frozen: &Frozen,
    now: Timestamp,
    metrics: &Metrics,
) -> Value {
    let standings = standings(devices, plan, records, now);
    metrics.devices.clear();
    metrics.compliance.clear();
    metrics.bootstrap_token_missing.clear();
    metrics.next_deadline.clear();
    let section = |source: Source, name: String| -> Value {
        let tally = standings
            .by_source
            .get(&source)
            .cloned()
            .unwrap_or_default();
        let by_state = &tally.counts;
        for state in Bucket::ALL {
            metrics
                .devices
                .get_or_create(&StateLabels {
                    source: name.clone(),
                    state: state.as_str().into(),
                })
                .set(i64::try_from(by_state.get(&state).copied().unwrap_or(0)).unwrap_or(i64::MAX));
        }
        metrics
            .compliance
            .get_or_create(&SourceLabels {
                source: name.clone(),
            })
            .set(tally.compliance_ratio());
        metrics
            .bootstrap_token_missing
            .get_or_create(&SourceLabels {
                source: name.clone(),
            })
            .set(i64::try_from(tally.bootstrap_token_missing).unwrap_or(i64::MAX));
        json!({
            "name": name,
            "devices": by_state.iter().map(|(b, n)| (b.as_str(), *n)).collect::<BTreeMap<_, _>>(),
            "compliance": tally.compliance(),
            "worst": tally.worst,
            // Enforced all the same: their users will be asked to authenticate.
            "bootstrapTokenMissing": tally.bootstrap_token_missing,
        })
    };
    let policies: Vec<Value> = checked
        .policies
        .iter()
        .enumerate()
        .map(|(p, policy)| {
            let name = format!("UpdatePolicy {}", policy.key);
            let mut value = section(Source::Policy(p), name.clone());
            // As `status.nextDeadline`: a target only counting devices already there enforces
            // nothing.
            let next = plan
                .generated
                .iter()
                .filter(|t| t.policy == p && !t.compliant_only())
                .map(|t| t.deadline)
                .min();
            set_next_deadline(metrics, name, next, &policy.deadline.time_zone);
            let targets: Vec<Value> = plan
                .generated
                .iter()
                .filter(|t| t.policy == p)
                .map(|t| {
                    json!({
                        "name": t.name,
                        "platform": t.platform,
                        "version": t.version.to_string(),
                        "deadline": t.deadline.strftime("%Y-%m-%dT%H:%M:%S").to_string(),
                        "devices": t.devices,
                        "upToDate": t.up_to_date,
                        "laterPersonalDeadlines": t.later_personal,
                        // A suspended policy's devices keep what they had: this is not in force.
                        "applied": !policy.suspend,
                        "builds": t.builds.iter().map(|(m, b)| (m.clone(), b.to_string())).collect::<BTreeMap<_, _>>(),
                    })
                })
                .collect();
            value["suspended"] = policy.suspend.into();
            value["targets"] = targets.into();
            value
        })
        .collect();
    let targets: Vec<Value> = checked
        .targets
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.generated)
        .map(|(t, target)| {
            let name = format!("EnforcementTarget {}", target.key);
            let mut value = section(Source::Target(t), name.clone());
            let tally = standings.by_source.get(&Source::Target(t));
            let unmet = tally.is_some_and(|tally| {
                tally.total() > tally.count(Bucket::NotApplicable) + tally.count(Bucket::Compliant)
            });
            // Device-local, with no zone of its own: read as UTC.
            let next = unmet.then_some(target.deadline);
            set_next_deadline(metrics, name, next, &jiff::tz::TimeZone::UTC);
            value["version"] = target.version.to_string().into();
            value["deadline"] = target
                .deadline
                .strftime("%Y-%m-%dT%H:%M:%S")
                .to_string()
                .into();
            value
        })
        .collect();
    let groups: Vec<Value> = checked
        .groups
        .iter()
        .zip(&plan.members)
        .map(|(group, members)| {
            let mut by_platform: BTreeMap<String, u64> = BTreeMap::new();
            for m in members {
                *by_platform.entry(devices[*m as usize].platform.to_string()).or_default() += 1;
            }
            json!({"name": format!("FleetGroup {}", group.key), "members": members.len(), "byPlatform": by_platform})
        })
        .collect();
    json!({
        "devices": {
            "total": devices.len(),
            "reported": records.values().filter(|r| r.last_report.is_some()).count(),
            "withEnforcement": plan.devices.iter().filter(|d| !d.enforcements.is_empty()).count(),
            // Left with the set they have: under a suspended resource, or orphaned by a
            // resource deleted with deletionPolicy Orphan.
            "frozen": {"suspended": frozen.suspended, "orphaned": frozen.orphaned_total()},
        },
        "orphaned": frozen.orphaned.iter()
            .map(|(by, n)| json!({"by": by, "devices": n}))
            .collect::<Vec<_>>(),
        "distinctDeclarations": plan.declarations.len(),
        "fleetGroups": groups,
        "updatePolicies": policies,
        "enforcementTargets": targets,
        "warnings": plan.warnings,
    })
}

/// One resource's `next_deadline_timestamp_seconds`: the deadline read in `zone`, or no series
/// when it enforces nothing (or the time does not exist there).
fn set_next_deadline(
    metrics: &Metrics,
    source: String,
    deadline: Option<jiff::civil::DateTime>,
    zone: &jiff::tz::TimeZone,
) {
    if let Some(at) = deadline.and_then(|d| d.to_zoned(zone.clone()).ok()) {
        metrics
            .next_deadline
            .get_or_create(&SourceLabels { source })
            .set(at.timestamp().as_second());
    }
}

/// Checked-out devices listed in the status document, at most.
const CHECKED_OUT_LISTED: usize = 100;

/// Adds the devices the MDM says checked out to a status document (`devices.checkedOut`, and
/// the most recent of them under `checkedOut`) and to the metrics.
pub fn add_checked_out(
    status: &mut Value,
    checked_out: &[super::devices::CheckedOut],
    metrics: &Metrics,
) {
    metrics
        .devices_checked_out
        .set(i64::try_from(checked_out.len()).unwrap_or(i64::MAX));
    let Value::Object(map) = status else {
        return;
    };
    if let Some(Value::Object(devices)) = map.get_mut("devices") {
        devices.insert("checkedOut".into(), checked_out.len().into());
    }
    let mut recent: Vec<&super::devices::CheckedOut> = checked_out.iter().collect();
    recent.sort_by_key(|d| std::cmp::Reverse(d.at));
    recent.truncate(CHECKED_OUT_LISTED);
    let listed: Vec<Value> = recent
        .into_iter()
        .map(|d| json!({"enrollmentId": d.enrollment_id, "state": "checkedOut", "at": d.at.to_string()}))
        .collect();
    map.insert("checkedOut".into(), listed.into());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::{Input, Ledger, resolve_with};
    use crate::test_support::{catalog_2026_08_22, checked, inventory};

    /// A policy due two days after hand-out at 19:00 Berlin time, and a hand-written target.
    const MANIFESTS: &str = "apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: phones, namespace: it}
spec: {platforms: [iOS]}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: hold, namespace: it}
spec:
  fleetGroups: [phones]
  target: {strategy: 'pinned:26.5'}
  deadline: {daysAfterPosting: 21, localTime: '19:00', timeZone: Europe/Berlin, minimumLeadTime: 48h}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: EnforcementTarget
metadata: {name: urgent, namespace: it}
spec:
  fleetGroups: [phones]
  platform: iOS
  targetOSVersion: '26.5'
  targetLocalDateTime: '2026-08-26T12:00:00'
";

    fn next_deadlines(versions: &[&str]) -> Vec<String> {
        let checked = checked(MANIFESTS);
        let text: String = versions
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    "- {{enrollmentId: D{i}, platform: iOS, model: 'iPhone15,2', osVersion: '{v}', supervised: true, enrollmentType: ade}}\n"
                )
            })
            .collect();
        let devices = inventory(&text);
        let now: Timestamp = "2026-08-22T12:00:00Z".parse().expect("a timestamp");
        let catalog = catalog_2026_08_22();
        let plan = resolve_with(
            Input {
                groups: &checked.groups,
                policies: &checked.policies,
                targets: &checked.targets,
                devices: &devices,
                catalog: &catalog,
                now,
            },
            &Ledger::default(),
        );
        let metrics = Metrics::new();
        status(
            &checked,
            &devices,
            &plan,
            &HashMap::new(),
            &Frozen::default(),
            now,
            &metrics,
        );
        metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("ddm_update_operator_next_deadline_timestamp_seconds{"))
            .map(str::to_string)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    #[test]
    fn next_deadline_is_the_earliest_one_still_enforced_in_its_zone() {
        // Handed out 2026-08-22 12:00 UTC, 48 hours' lead: 2026-08-24 19:00 Berlin (CEST) is
        // 17:00 UTC, 1787590800. The target's 2026-08-26 12:00 is read as UTC: 1787745600.
        assert_eq!(
            next_deadlines(&["26.0", "26.5"]),
            [
                "ddm_update_operator_next_deadline_timestamp_seconds{source=\"EnforcementTarget it/urgent\"} 1787745600",
                "ddm_update_operator_next_deadline_timestamp_seconds{source=\"UpdatePolicy it/hold\"} 1787590800",
            ]
        );
        // Every device there already: nothing is due, no series.
        assert_eq!(next_deadlines(&["26.5", "26.5"]), Vec::<String>::new());
    }
}
