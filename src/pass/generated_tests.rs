//! Generated EnforcementTargets and the ledger on small fleets, resolved and reported, against
//! the catalog fixture of 2026-08-22.

use std::collections::HashMap;

use jiff::civil::{DateTime, date};

use super::report::standings;
use crate::api::validate::Checked;
use crate::inventory::Device;
use crate::resolve::*;
use crate::status::bucket::Bucket;
use crate::test_support::checked as check;

const PIN: &str = "apiVersion: updates.ddm.dev/v1alpha1
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
  deadline: {daysAfterPosting: 21, localTime: '19:00', timeZone: UTC, minimumLeadTime: 48h}
";

/// iPhone15,2s on these versions, enrolled as `A`, `B`, ...
fn phones(versions: &[&str]) -> Vec<Device> {
    let text: String = versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "- {{enrollmentId: {}, platform: iOS, model: 'iPhone15,2', osVersion: '{v}', supervised: true, enrollmentType: ade}}\n",
                char::from(b'A' + i as u8)
            )
        })
        .collect();
    crate::test_support::inventory(&text)
}

fn plan_for(checked: &Checked, devices: &[Device], rollouts: &Rollouts) -> Plan {
    let ledger = Ledger {
        devices: rollouts.clone(),
        ..Ledger::default()
    };
    let catalog = crate::test_support::catalog_2026_08_22();
    resolve_with(
        Input {
            groups: &checked.groups,
            policies: &checked.policies,
            targets: &checked.targets,
            devices,
            catalog: &catalog,
            now: now(),
        },
        &ledger,
    )
}

fn now() -> jiff::Timestamp {
    "2026-08-22T12:00:00Z".parse().expect("a timestamp")
}

/// `hold` took these enrollments to `version` by these deadlines.
fn taken(list: &[(&str, &str, DateTime)]) -> Rollouts {
    list.iter()
        .map(|(enrollment, version, deadline)| {
            (
                enrollment.to_string(),
                [(
                    "it/hold".to_string(),
                    Rollout {
                        version: version.to_string(),
                        deadline: *deadline,
                        intent: String::new(),
                        handed_at: jiff::Timestamp::UNIX_EPOCH,
                    },
                )]
                .into(),
            )
        })
        .collect()
}

/// The deadline a device below 26.5 gets on 2026-08-22 at noon: 48 hours on, at 19:00.
fn due() -> DateTime {
    date(2026, 8, 24).at(19, 0, 0, 0)
}

#[test]
fn a_target_counts_the_devices_it_took_there_and_only_those() {
    let checked = check(PIN);
    // A goes to 26.5; B runs it, taken there by this policy; C runs 26.5 but was never taken
    // there by it (it was there first).
    let devices = phones(&["26.0", "26.5", "26.5"]);
    let earlier = date(2026, 8, 20).at(19, 0, 0, 0);
    let plan = plan_for(&checked, &devices, &taken(&[("B", "26.5", earlier)]));
    assert_eq!(plan.generated.len(), 1, "{:?}", plan.generated);
    let target = &plan.generated[0];
    assert_eq!(target.name, "hold-ios-26-5");
    assert_eq!(target.version.to_string(), "26.5");
    assert_eq!(target.deadline, due());
    assert_eq!((target.devices, target.up_to_date), (1, 1));
    assert!(plan.devices[0].met.is_empty());
    assert_eq!(
        plan.devices[1].met,
        vec![Met {
            policy: 0,
            ring: 0,
            version: "26.5".parse().expect("a version"),
            taken: taken(&[("B", "26.5", earlier)])["B"]["it/hold"].clone(),
            deadline: due(),
        }]
    );
    assert!(plan.devices[2].met.is_empty(), "C was not taken there");
    for up_to_date in &plan.devices[1..] {
        assert!(up_to_date.enforcements.is_empty());
        assert_eq!(up_to_date.notes[0].reason, Reason::UpToDate);
    }
    let tally = &standings(&devices, &plan, &HashMap::new(), now()).by_generated[0];
    assert_eq!(tally.count(Bucket::Compliant), 1);
    assert_eq!(tally.count(Bucket::Pending), 1);
    assert_eq!(tally.compliance(), "1/2");

    // What the pass remembers: A is being taken to 26.5 (handed out now), B was (its entry
    // kept as it was), C nothing.
    let remembered: Vec<DeviceRollouts> = plan
        .devices
        .iter()
        .map(|d| d.rollouts(&checked.policies))
        .collect();
    let handed_now = Rollout {
        version: "26.5".into(),
        deadline: due(),
        intent: ledger::intent(&checked.policies[0], 0),
        handed_at: now(),
    };
    assert_eq!(
        remembered,
        [
            [("it/hold".to_string(), handed_now)].into(),
            taken(&[("B", "26.5", earlier)])["B"].clone(),
            DeviceRollouts::new()
        ]
    );
}

#[test]
fn once_every_device_it_took_runs_it_the_target_stays_and_enforces_nothing() {
    let checked = check(PIN);
    let devices = phones(&["26.5", "26.6"]);
    let (first, last) = (date(2026, 8, 20).at(19, 0, 0, 0), due());
    // B went on past the pin after it was taken there: the policy's answer is still 26.5.
    let rollouts = taken(&[("A", "26.5", first), ("B", "26.5", last)]);
    let plan = plan_for(&checked, &devices, &rollouts);
    assert_eq!(plan.generated.len(), 1, "{:?}", plan.generated);
    let target = &plan.generated[0];
    assert_eq!(target.name, "hold-ios-26-5");
    assert!(target.compliant_only());
    assert_eq!((target.devices, target.up_to_date), (0, 2));
    // The latest deadline they were given: what the target showed while the last one went.
    assert_eq!(target.deadline, last);
    assert!(target.builds.is_empty());
    for device in &plan.devices {
        assert!(device.enforcements.is_empty());
        assert!(device.declarations.iter().all(|d| {
            plan.declarations[*d as usize].declaration_type != crate::declarations::ENFORCEMENT_TYPE
        }));
    }
    let tally = &standings(&devices, &plan, &HashMap::new(), now()).by_generated[0];
    assert_eq!(tally.compliance(), "2/2");
    // The same input gives the same targets and the same memory (a resync rewrites nothing).
    let again = plan_for(&checked, &devices, &rollouts);
    assert_eq!(again.generated, plan.generated);
    let remembered: Rollouts = devices
        .iter()
        .zip(&plan.devices)
        .map(|(d, p)| (d.enrollment_id.clone(), p.rollouts(&checked.policies)))
        .collect();
    assert_eq!(remembered, rollouts);

    // Nothing remembered (`plan`): no device was taken anywhere, no target.
    assert!(
        plan_for(&checked, &devices, &Rollouts::new())
            .generated
            .is_empty()
    );
}

#[test]
fn a_release_the_policy_no_longer_answers_is_forgotten() {
    // Taken to 26.5 under a pin since moved to 26.6: the device runs 26.6.1, the policy's
    // answer is 26.6, not the release it was taken to.
    let checked = check(&PIN.replace("pinned:26.5", "pinned:26.6"));
    let devices = phones(&["26.6.1"]);
    let plan = plan_for(&checked, &devices, &taken(&[("A", "26.5", due())]));
    assert!(plan.generated.is_empty(), "{:?}", plan.generated);
    assert!(plan.devices[0].met.is_empty());
    assert_eq!(plan.devices[0].notes[0].reason, Reason::UpToDate);
    assert!(plan.devices[0].rollouts(&checked.policies).is_empty());

    // The catalog offers it nothing of the pinned major: no answer to meet.
    let pinned_17 = check(&PIN.replace("pinned:26.5", "pinned:17"));
    let plan = plan_for(&pinned_17, &devices, &taken(&[("A", "17.7", due())]));
    assert!(plan.generated.is_empty(), "{:?}", plan.generated);
    assert!(plan.devices[0].met.is_empty());
}
