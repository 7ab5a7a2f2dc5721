//! The read-only status document (`GET /api/v1/status`) and the per-state device gauges: for
//! every resource, how its devices stand.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::api::validate::Checked;
use crate::backend::DeviceRecord;
use crate::http::metrics::{Metrics, StateLabels};
use crate::inventory::Device;
use crate::resolve::{Plan, Source};
use crate::status::DeviceStatus;
use crate::status::bucket::{Bucket, Standing, bucket};

/// Devices listed per resource as the worst off, at most.
const WORST: usize = 10;

pub fn status(
    checked: &Checked,
    devices: &[Device],
    plan: &Plan,
    records: &HashMap<&str, &DeviceRecord>,
    now: Timestamp,
    metrics: &Metrics,
) -> Value {
    let mut counts: BTreeMap<Source, BTreeMap<Bucket, u64>> = BTreeMap::new();
    let mut worst: BTreeMap<Source, Vec<Value>> = BTreeMap::new();
    let empty = DeviceStatus::default();
    for (device, outcome) in devices.iter().zip(&plan.devices) {
        let record = records.get(device.enrollment_id.as_str());
        let status = record.map(|r| DeviceStatus::from_items(&r.status));
        let sources = outcome
            .enforcements
            .iter()
            .map(|e| e.source)
            .chain(outcome.notes.iter().map(|n| n.source));
        let mut seen = Vec::new();
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
                status: status.as_ref().unwrap_or(&empty),
                last_report: record.and_then(|r| r.last_report),
                assigned_at: record.and_then(|r| r.assigned_at),
                now,
            });
            *counts.entry(source).or_default().entry(state).or_default() += 1;
            if matches!(state, Bucket::Failed | Bucket::Stale) {
                let list = worst.entry(source).or_default();
                if list.len() < WORST {
                    list.push(json!({
                        "enrollmentId": device.enrollment_id,
                        "model": device.model,
                        "osVersion": device.os_version.to_string(),
                        "state": state.as_str(),
                        "failureReason": status.as_ref().and_then(|s| s.failure_reason.clone()),
                    }));
                }
            }
        }
    }

    metrics.devices.clear();
    let section = |source: Source, name: String| -> Value {
        let by_state = counts.get(&source).cloned().unwrap_or_default();
        let total: u64 = by_state.values().sum();
        let compliant = by_state.get(&Bucket::Compliant).copied().unwrap_or(0);
        for state in Bucket::ALL {
            metrics
                .devices
                .get_or_create(&StateLabels {
                    source: name.clone(),
                    state: state.as_str().into(),
                })
                .set(i64::try_from(by_state.get(&state).copied().unwrap_or(0)).unwrap_or(i64::MAX));
        }
        json!({
            "name": name,
            "devices": by_state.iter().map(|(b, n)| (b.as_str(), *n)).collect::<BTreeMap<_, _>>(),
            "compliance": format!("{compliant}/{total}"),
            "worst": worst.get(&source).cloned().unwrap_or_default(),
        })
    };
    let policies: Vec<Value> = checked
        .policies
        .iter()
        .enumerate()
        .map(|(p, policy)| {
            let mut value = section(Source::Policy(p), format!("UpdatePolicy {}", policy.key));
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
            let mut value = section(
                Source::Target(t),
                format!("EnforcementTarget {}", target.key),
            );
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
        },
        "distinctDeclarations": plan.declarations.len(),
        "fleetGroups": groups,
        "updatePolicies": policies,
        "enforcementTargets": targets,
        "warnings": plan.warnings,
    })
}
