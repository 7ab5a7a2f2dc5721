//! One resolver pass, shared by standalone and Kubernetes mode: read the devices the backend
//! knows, resolve every device's whole set, and write the sets that changed — the one writer.

use std::collections::HashSet;

use crate::api::validate::Checked;
use crate::backend::{ApplyReport, Assignment, Backend, BackendError, DeviceRecord};
use crate::catalog::Catalog;
use crate::inventory::Device;
use crate::resolve::{self, Input, Plan, Source};

/// What a pass computed and what writing it did.
pub struct PassResult {
    pub plan: Plan,
    pub devices: Vec<Device>,
    pub records: Vec<DeviceRecord>,
    /// Devices left as they were because a resource governing them is suspended.
    pub frozen: usize,
    pub applied: Result<ApplyReport, BackendError>,
}

pub async fn pass(
    backend: &dyn Backend,
    checked: &Checked,
    seed: &[Device],
    catalog: &Catalog,
    assume_supervised: bool,
    now: jiff::Timestamp,
) -> Result<PassResult, BackendError> {
    let records = backend.devices().await?;
    let devices = super::devices::merge(seed, &records, assume_supervised);
    let plan = resolve::resolve(Input {
        groups: &checked.groups,
        policies: &checked.policies,
        targets: &checked.targets,
        devices: &devices,
        catalog,
        now,
    });
    let frozen = frozen_devices(checked, &plan);
    let assigned: HashSet<&str> = records
        .iter()
        .filter(|r| !r.assigned.is_empty())
        .map(|r| r.enrollment_id.as_str())
        .collect();
    let assignments: Vec<Assignment> = devices
        .iter()
        .zip(&plan.devices)
        .enumerate()
        // A device that had a set and now gets none is written too: that withdraws it.
        .filter(|(_, (device, outcome))| {
            !outcome.declarations.is_empty() || assigned.contains(device.enrollment_id.as_str())
        })
        .filter(|(index, _)| !frozen.contains(index))
        .map(|(_, (device, outcome))| Assignment {
            enrollment_id: device.enrollment_id.clone(),
            identifiers: outcome
                .declarations
                .iter()
                .map(|i| plan.declarations[*i as usize].identifier.clone())
                .collect(),
        })
        .collect();
    let applied = backend.apply(&plan.declarations, &assignments).await;
    let records = match &applied {
        Ok(report) if report.changed.is_empty() => records,
        _ => backend.devices().await.unwrap_or(records),
    };
    Ok(PassResult {
        frozen: frozen.len(),
        plan,
        devices,
        records,
        applied,
    })
}

/// Devices governed by a suspended group, policy or target keep what they have.
fn frozen_devices(checked: &Checked, plan: &Plan) -> HashSet<usize> {
    let mut frozen = HashSet::new();
    for (group, members) in checked.groups.iter().zip(&plan.members) {
        if group.suspend {
            frozen.extend(members.iter().map(|m| *m as usize));
        }
    }
    for (index, outcome) in plan.devices.iter().enumerate() {
        let suspended = |source: &Source| match source {
            Source::Policy(p) => checked.policies[*p].suspend,
            Source::Target(t) => checked.targets[*t].suspend,
        };
        if outcome
            .policies
            .iter()
            .any(|p| checked.policies[*p].suspend)
            || outcome.enforcements.iter().any(|e| suspended(&e.source))
            || outcome.notes.iter().any(|n| suspended(&n.source))
        {
            frozen.insert(index);
        }
    }
    frozen
}
