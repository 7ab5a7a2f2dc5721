//! The device index and the per-device view over real passes on a SQLite store.

use std::sync::Arc;

use super::explain::{Live, explain};
use super::*;
use crate::pass::PassResult;
use crate::pass::ledger_tests::{HOLD, Harness, phone};
use crate::test_support::checked as check;

/// A second policy in another namespace, for iPads: what a namespace-scoped token sees apart.
const TABLETS: &str = "---
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: ipads, namespace: school}
spec: {platforms: [iPadOS]}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: tablets, namespace: school}
spec:
  fleetGroups: [ipads]
  target: {strategy: latest}
  deadline: {daysAfterPosting: 7, localTime: '17:00', timeZone: UTC}
";

fn ipad(id: &str) -> String {
    format!(
        "- {{enrollmentId: {id}, serialNumber: S{id}, platform: iPadOS, model: 'iPad14,1', osVersion: '18.6', supervised: true, enrollmentType: ade}}\n"
    )
}

fn at(s: &str) -> jiff::Timestamp {
    s.parse().expect("a timestamp")
}

fn index(result: PassResult, live: &Checked, inventory: &str, now: &str) -> DeviceIndex {
    DeviceIndex::new(
        PassOutput {
            at: at(now),
            checked: Arc::new(live.clone()),
            devices: Arc::new(result.devices),
            catalog: Arc::new(crate::test_support::catalog_2026_08_22()),
            seed: Arc::new(crate::test_support::inventory(inventory)),
            seed_at: jiff::Timestamp::UNIX_EPOCH,
            assume_supervised: true,
        },
        &result.plan,
        &result.records,
    )
}

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// 30 phones (ten of them already on 26.5), 12 iPads in another namespace.
fn fleet() -> String {
    let mut text = String::new();
    for i in 0..30 {
        let line = phone(
            &format!("P{i:02}"),
            if i % 2 == 0 { "canary" } else { "broad" },
        );
        text.push_str(&if i < 10 {
            line.replace("osVersion: '26.0'", "osVersion: '26.5'")
        } else {
            line
        });
    }
    for i in 0..12 {
        text.push_str(&ipad(&format!("T{i:02}")));
    }
    text
}

#[tokio::test]
async fn lists_filter_page_and_keep_to_the_scope() {
    let harness = Harness::new();
    let live = check(&format!("{HOLD}{TABLETS}"));
    let inventory = fleet();
    let (result, _) = harness
        .pass(&live, &inventory, "2026-08-22T12:00:00Z")
        .await;
    let index = index(result, &live, &inventory, "2026-08-22T12:00:00Z");
    assert_eq!(index.len(), 42);

    // Every page in id order, each at most `limit`, no device twice, none left out.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut pairs = vec![("limit", "7".to_string())];
        if let Some(token) = &after {
            pairs.push(("continue", token.clone()));
        }
        let pairs: Vec<(String, String)> =
            pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let query = ListQuery::parse(&pairs, &live, &Scope::All).expect("a query");
        let page = index.list(&query, &Scope::All);
        assert!(page.items.len() <= 7);
        seen.extend(page.items.iter().map(|i| i.enrollment_id.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "in order, once each");
    assert_eq!(seen.len(), 42);

    // Filters: the ten phones on 26.5 are compliant with the policy; the rest pending.
    let all = |pairs: &[(&str, &str)], scope: &Scope| {
        let mut pairs = params(pairs);
        pairs.push(("limit".into(), "1000".into()));
        let query = ListQuery::parse(&pairs, &live, scope).expect("a query");
        index.list(&query, scope).items
    };
    let compliant = all(
        &[("state", "compliant"), ("source", "UpdatePolicy it/hold")],
        &Scope::All,
    );
    assert_eq!(compliant.len(), 10, "{compliant:?}");
    assert!(compliant.iter().all(|i| i.os_version == "26.5"));
    let ipads = all(&[("platform", "iPadOS")], &Scope::All);
    assert_eq!(ipads.len(), 12);
    let by_slash = all(&[("source", "UpdatePolicy/school/tablets")], &Scope::All);
    assert_eq!(by_slash.len(), 12);

    // A token allowed in `school` only: the iPads, and nothing of `it` — not even its names.
    let school = Scope::Namespaces(["school".to_string()].into());
    let seen = all(&[], &school);
    assert_eq!(seen.len(), 12);
    assert!(seen.iter().all(|i| {
        i.sources
            .iter()
            .all(|s| s.name.starts_with("UpdatePolicy school/"))
    }));
    let hidden = ListQuery::parse(
        &params(&[("source", "UpdatePolicy it/hold")]),
        &live,
        &school,
    )
    .expect_err("a resource outside the scope is not named");
    assert_eq!(hidden.parameter, "source");
    let phone_position = index.find("P00").expect("P00");
    assert!(!index.visible(phone_position, &school));
    let ipad_position = index.find("ST03").expect("found by serial number");
    assert_eq!(index.pass.devices[ipad_position].enrollment_id, "T03");
}

#[test]
fn bad_list_parameters_are_refused_naming_the_parameter() {
    let live = check(HOLD);
    let refused = |pairs: &[(&str, &str)]| {
        ListQuery::parse(&params(pairs), &live, &Scope::All)
            .expect_err("refused")
            .parameter
    };
    assert_eq!(refused(&[("state", "broken")]), "state");
    assert_eq!(refused(&[("platform", "Android")]), "platform");
    assert_eq!(refused(&[("limit", "0")]), "limit");
    assert_eq!(refused(&[("limit", "1001")]), "limit");
    assert_eq!(refused(&[("limit", "ten")]), "limit");
    assert_eq!(refused(&[("continue", "not base64!")]), "continue");
    assert_eq!(refused(&[("continue", "aGVsbG8")]), "continue");
    assert_eq!(refused(&[("source", "UpdatePolicy it/nope")]), "source");
    assert_eq!(refused(&[("source", "Deployment it/hold")]), "source");
    assert_eq!(refused(&[("sort", "name")]), "sort");
    assert_eq!(refused(&[("state", "failed"), ("state", "stale")]), "state");
    let fine = ListQuery::parse(
        &params(&[("state", "failed"), ("platform", "ios"), ("limit", "5")]),
        &live,
        &Scope::All,
    )
    .expect("accepted");
    assert_eq!(fine.limit, 5);
}

#[tokio::test]
async fn a_late_joiner_is_told_its_deadline_is_its_own() {
    let harness = Harness::new();
    let live = check(HOLD);
    let one = phone("A", "canary");
    harness.pass(&live, &one, "2026-08-22T12:00:00Z").await;
    let two = format!("{one}{}", phone("L", "canary"));
    let (result, _) = harness.pass(&live, &two, "2026-08-30T12:00:00Z").await;
    let index = index(result, &live, &two, "2026-08-30T12:00:00Z");
    let now = at("2026-08-30T12:05:00Z");
    let view = |id: &str| {
        let position = index.find(id).expect("indexed");
        let live = Live {
            served: harness
                .store
                .served_set(id)
                .map(|set| super::explain::Served {
                    token: set.token.clone(),
                    members: set.members.iter().cloned().collect(),
                    configurations: set
                        .members
                        .iter()
                        .filter_map(|m| {
                            harness
                                .store
                                .served_declaration(id, "configuration", m)
                                .map(|d| (m.clone(), d.body.clone()))
                        })
                        .collect(),
                }),
            memory: harness.store.memory(),
            ..Live::default()
        };
        explain(&index, position, &live, &Scope::All, now).expect("seen")
    };
    let early = view("A");
    let late = view("L");
    assert_eq!(
        early.resources[0].deadline.as_deref(),
        Some("2026-08-24T19:00:00")
    );
    assert_eq!(early.resources[0].deadline_of.as_deref(), Some("rollout"));
    assert_eq!(
        late.resources[0].deadline.as_deref(),
        Some("2026-09-01T19:00:00")
    );
    assert_eq!(late.resources[0].deadline_of.as_deref(), Some("device"));
    assert_eq!(
        late.resources[0].ring_deadline.as_deref(),
        Some("2026-08-24T19:00:00")
    );
    assert!(
        late.explanation
            .iter()
            .any(|s| s.contains("its own deadline")),
        "{:?}",
        late.explanation
    );
    // What it is served says the same, read from the stored declaration.
    assert_eq!(late.declarations.enforcements.len(), 1);
    let served = &late.declarations.enforcements[0];
    assert_eq!(served.deadline.as_deref(), Some("2026-09-01T19:00:00"));
    assert_eq!(served.deadline_of.as_deref(), Some("device"));
    assert_eq!(served.from.as_deref(), Some("UpdatePolicy it/hold"));
    assert!(late.declarations.in_sync);
    assert_eq!(late.fleet_groups.len(), 1);
    assert!(late.fleet_groups[0].terms.iter().all(|t| t.matched));
    // Facts: the inventory said them all.
    let identity = late.identity.expect("identity");
    assert_eq!(
        identity.facts.os_version.map(|s| s.source),
        Some(crate::mdm::Source::Inventory)
    );
}

fn items(json: &str) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(json).expect("items")
}

#[tokio::test]
async fn reports_are_told_apart_an_old_failure_and_a_user_started_install() {
    let harness = Harness::new();
    let live = check(HOLD);
    // C already runs the target; U is on 26.0 and downloading something its user started.
    let inventory = format!(
        "{}{}",
        phone("C", "canary").replace("osVersion: '26.0'", "osVersion: '26.5'"),
        phone("U", "canary")
    );
    let (result, _) = harness
        .pass(&live, &inventory, "2026-08-22T12:00:00Z")
        .await;
    let index = index(result, &live, &inventory, "2026-08-22T12:00:00Z");
    let now = at("2026-08-22T12:10:00Z");
    let old_failure = Live {
        items: Some(items(
            r#"{"softwareupdate": {"install-state": "none", "failure-reason": {"count": 3, "reason": "download failed", "timestamp": "2026-08-01T10:00:00Z"}}}"#,
        )),
        ..Live::default()
    };
    let compliant = explain(
        &index,
        index.find("C").expect("C"),
        &old_failure,
        &Scope::All,
        now,
    )
    .expect("seen");
    assert_eq!(compliant.state.as_deref(), Some("compliant"));
    let failure = compliant
        .report
        .as_ref()
        .and_then(|r| r.failure.clone())
        .expect("the failure is shown");
    assert_eq!(failure.count, Some(3));
    assert_eq!(failure.at.as_deref(), Some("2026-08-01T10:00:00Z"));
    assert!(
        compliant
            .explanation
            .iter()
            .any(|s| s.contains("earlier install failure") && s.contains("nothing is failing now")),
        "{:?}",
        compliant.explanation
    );

    let user_started = Live {
        items: Some(items(
            r#"{"softwareupdate": {"install-state": "downloading", "pending-version": {"os-version": "26.6"}, "install-reason": {"reason": ["system-settings"]}}}"#,
        )),
        ..Live::default()
    };
    let user = explain(
        &index,
        index.find("U").expect("U"),
        &user_started,
        &Scope::All,
        now,
    )
    .expect("seen");
    let reason = user
        .report
        .as_ref()
        .and_then(|r| r.install_reason.clone())
        .expect("install reason");
    assert_eq!(reason.started_by.as_deref(), Some("user"));
    assert!(
        user.explanation
            .iter()
            .any(|s| s.contains("by the device's user") && s.contains("not by an enforcement")),
        "{:?}",
        user.explanation
    );

    // The install our own declaration started is told as ours.
    let ours_id = user.resources[0].declaration.clone().expect("enforced");
    let by_us = Live {
        items: Some(items(&format!(
            r#"{{"softwareupdate": {{"install-state": "downloading", "install-reason": {{"reason": ["declaration"], "declaration-id": "{ours_id}"}}}}}}"#
        ))),
        ..Live::default()
    };
    let ours = explain(
        &index,
        index.find("U").expect("U"),
        &by_us,
        &Scope::All,
        now,
    )
    .expect("seen");
    assert_eq!(
        ours.report
            .and_then(|r| r.install_reason)
            .and_then(|r| r.started_by)
            .as_deref(),
        Some("thisOperator")
    );
    let other = Live {
        items: Some(items(
            r#"{"softwareupdate": {"install-reason": {"reason": ["declaration"], "declaration-id": "com.example.other"}}}"#,
        )),
        ..Live::default()
    };
    let theirs = explain(
        &index,
        index.find("U").expect("U"),
        &other,
        &Scope::All,
        now,
    )
    .expect("seen");
    assert_eq!(
        theirs
            .report
            .and_then(|r| r.install_reason)
            .and_then(|r| r.started_by)
            .as_deref(),
        Some("anotherDeclaration")
    );
}
