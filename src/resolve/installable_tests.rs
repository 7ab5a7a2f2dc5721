//! Only what the device can install, through the resolver on the real snapshot of 2026-03-17
//! (the first Background Security Improvements): two enforcements below an improvement's base,
//! fixed once handed out; reasons that do not hide a device's standing; subscriptions only
//! where Apple's schemas allow them.

use std::collections::HashMap;

use jiff::Timestamp;
use jiff::civil::{DateTime, date};

use super::*;
use crate::api::validate::Checked;
use crate::pass::report::standings;
use crate::status::bucket::Bucket;
use crate::test_support::checked as check;

const PATCHED: &str = "apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: all, namespace: it}
spec: {}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: patched, namespace: it}
spec:
  fleetGroups: [all]
  target: {strategy: latest, securityImprovements: true}
  deadline: {daysAfterPosting: 0, localTime: '19:00', timeZone: UTC, minimumLeadTime: 48h}
";

fn devices(lines: &[&str]) -> Vec<Device> {
    let text: String = lines.iter().map(|l| format!("- {l}\n")).collect();
    crate::test_support::inventory(&text)
}

fn pass(checked: &Checked, devices: &[Device], ledger: &Ledger, now: &str) -> Plan {
    let catalog = crate::test_support::catalog_2026_03_17();
    resolve_with(
        Input {
            groups: &checked.groups,
            policies: &checked.policies,
            targets: &checked.targets,
            devices,
            catalog: &catalog,
            now: now.parse::<Timestamp>().expect("a time"),
        },
        ledger,
    )
}

/// What the store would keep after a pass.
fn kept(checked: &Checked, devices: &[Device], plan: &Plan) -> Ledger {
    Ledger {
        devices: devices
            .iter()
            .zip(&plan.devices)
            .map(|(d, p)| (d.enrollment_id.clone(), p.rollouts(&checked.policies)))
            .collect(),
        rings: plan.rings.clone(),
    }
}

/// (version, build, deadline) of a device's enforcements, by deadline.
fn enforced(plan: &Plan, device: usize) -> Vec<(String, Option<String>, DateTime)> {
    plan.devices[device]
        .enforcements
        .iter()
        .map(|e| {
            (
                e.version.to_string(),
                e.build.as_ref().map(ToString::to_string),
                e.deadline,
            )
        })
        .collect()
}

#[test]
fn below_its_base_an_improvement_takes_two_enforcements_that_stay_as_handed_out() {
    let checked = check(PATCHED);
    // iOS 17 is below 18, where improvements install directly. `AssetSets iOS 26.3.1 23D8133
    // 2026-03-04` (twin 23D9133); `PublicBackgroundSecurityImprovements iOS 26.3.1 (a)
    // 23D771330a 2026-03-17`, PrerequisiteBuild 23D8133.
    let fleet = devices(&[
        "{enrollmentId: A, platform: iOS, model: 'iPhone15,2', osVersion: '17.6.1', buildVersion: 21G93, supervised: true, enrollmentType: ade}",
    ]);
    let first = pass(&checked, &fleet, &Ledger::default(), "2026-03-18T12:00:00Z");
    // Both deadlines are in the past by the rule (posting + 0 days): the lead time puts the
    // base two days on, at 19:00; the improvement a day after the base.
    let base = date(2026, 3, 20).at(19, 0, 0, 0);
    let patch = date(2026, 3, 21).at(19, 0, 0, 0);
    let expected = vec![
        ("26.3.1".to_string(), Some("23D8133".to_string()), base),
        (
            "26.3.1 (a)".to_string(),
            Some("23D771330a".to_string()),
            patch,
        ),
    ];
    assert_eq!(enforced(&first, 0), expected);
    let notes: Vec<Reason> = first.devices[0].notes.iter().map(|n| n.reason).collect();
    assert_eq!(notes, [Reason::TwoStep]);
    // The activation names both.
    let activation = first.devices[0]
        .declarations
        .iter()
        .map(|d| &first.declarations[*d as usize])
        .find(|d| d.declaration_type == declarations::ACTIVATION_TYPE)
        .expect("an activation");
    for e in &first.devices[0].enforcements {
        let identifier = &first.declarations[e.declaration as usize].identifier;
        assert!(
            activation.payload["StandardConfigurations"]
                .as_array()
                .expect("configurations")
                .iter()
                .any(|c| c == identifier.as_str()),
            "{identifier}"
        );
    }

    // Days later, past the base's deadline, the device still on 17.6.1: nothing moves.
    let ledger = kept(&checked, &fleet, &first);
    let later = pass(&checked, &fleet, &ledger, "2026-03-21T12:00:00Z");
    assert_eq!(enforced(&later, 0), expected);
    let again = pass(
        &checked,
        &fleet,
        &kept(&checked, &fleet, &later),
        "2026-03-25T12:00:00Z",
    );
    assert_eq!(enforced(&again, 0), expected);

    // On the base now (26.x installs improvements directly): the improvement alone, as handed.
    let on_base = devices(&[
        "{enrollmentId: A, platform: iOS, model: 'iPhone15,2', osVersion: '26.3.1', buildVersion: 23D8133, supervised: true, enrollmentType: ade}",
    ]);
    let next = pass(&checked, &on_base, &ledger, "2026-03-22T12:00:00Z");
    assert_eq!(enforced(&next, 0), expected[1..]);
}

#[test]
fn a_public_only_note_keeps_an_up_to_date_device_compliant() {
    let checked = check(&PATCHED.replace(", securityImprovements: true", ""));
    // Unsupervised on the newest public release (`PublicAssetSets iOS 26.3.1 23D9133`).
    let fleet = devices(&[
        "{enrollmentId: U, platform: iOS, model: 'iPhone15,2', osVersion: '26.3.1', buildVersion: 23D9133, supervised: false, enrollmentType: device}",
    ]);
    let plan = pass(&checked, &fleet, &Ledger::default(), "2026-03-18T12:00:00Z");
    let notes: Vec<Reason> = plan.devices[0].notes.iter().map(|n| n.reason).collect();
    assert_eq!(notes, [Reason::UpToDate, Reason::PublicAssetSetsOnly]);
    let now = "2026-03-18T12:00:00Z".parse().expect("a time");
    let tally = &standings(&fleet, &plan, &HashMap::new(), now).by_source[&Source::Policy(0)];
    assert_eq!(tally.count(Bucket::Compliant), 1);
}

#[test]
fn no_subscriptions_where_apples_schemas_allow_none() {
    let checked = check(PATCHED);
    let fleet = devices(&[
        // macOS status items list no `device` enrollment; watchOS ones only `supervised`.
        "{enrollmentId: M, platform: macOS, model: 'Mac15,3', softwareUpdateDeviceId: J514sAP, osVersion: '26.3', supervised: false, enrollmentType: device}",
        "{enrollmentId: W, platform: watchOS, model: 'Watch7,3', osVersion: '26.3', supervised: false, enrollmentType: device}",
        "{enrollmentId: S, platform: watchOS, model: 'Watch7,3', osVersion: '26.3', supervised: true, enrollmentType: ade}",
    ]);
    let plan = pass(&checked, &fleet, &Ledger::default(), "2026-03-18T12:00:00Z");
    let types = |d: usize| -> Vec<&str> {
        plan.devices[d]
            .declarations
            .iter()
            .map(|i| plan.declarations[*i as usize].declaration_type)
            .collect()
    };
    assert!(types(0).is_empty(), "{:?}", types(0));
    assert!(types(1).is_empty(), "{:?}", types(1));
    assert_eq!(
        types(2),
        [
            declarations::SUBSCRIPTIONS_TYPE,
            declarations::ACTIVATION_TYPE
        ]
    );
}

#[test]
fn a_hand_written_target_below_its_improvements_base_takes_the_base_by_its_deadline_first() {
    let checked = check(
        "apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: all, namespace: it}
spec: {}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: EnforcementTarget
metadata: {name: patch, namespace: it}
spec:
  fleetGroups: [all]
  platform: iOS
  targetOSVersion: '26.3.1 (a)'
  targetLocalDateTime: '2026-03-25T12:00:00'
",
    );
    let fleet = devices(&[
        "{enrollmentId: A, platform: iOS, model: 'iPhone15,2', osVersion: '17.6.1', buildVersion: 21G93, supervised: true, enrollmentType: ade}",
        "{enrollmentId: B, platform: iOS, model: 'iPhone15,2', osVersion: '26.2', buildVersion: 23C55, supervised: true, enrollmentType: ade}",
    ]);
    let plan = pass(&checked, &fleet, &Ledger::default(), "2026-03-18T12:00:00Z");
    let by = date(2026, 3, 25).at(12, 0, 0, 0);
    // Below iOS 18: the base the improvement names by the target's deadline, the improvement
    // a day later.
    assert_eq!(
        enforced(&plan, 0),
        [
            ("26.3.1".to_string(), Some("23D8133".to_string()), by),
            (
                "26.3.1 (a)".to_string(),
                Some("23D771330a".to_string()),
                date(2026, 3, 26).at(12, 0, 0, 0)
            ),
        ]
    );
    // On 26: the improvement installs directly, by the target's deadline.
    assert_eq!(
        enforced(&plan, 1),
        [("26.3.1 (a)".to_string(), Some("23D771330a".to_string()), by)]
    );
}
