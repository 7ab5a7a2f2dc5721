//! The rollout ledger end to end: the operator on the examples (standalone, a virtual clock)
//! hands out deadlines and exports them at `GET /api/v1/rollouts`; `plan --ledger` at later and
//! later `--at` times never shows a handed-out rollout's deadline later, while `plan` without
//! the ledger (as if handed out now) does.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ddm_update_operator::clock::Clock;
use ddm_update_operator::operator::{CatalogSource, RunConfig};
use ddm_update_operator::run::Engine;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use crate::support::process::metric_sum;
use crate::support::{ROOT, copy_dir, examples};

const CATALOG: &str = "tests/fixtures/gdmf/pmv-2026-08-22.json";

/// (enrollment id, source, version) → deadline, for every enforcement a plan gives.
type Deadlines = BTreeMap<(String, String, String), String>;

fn plan(ledger: Option<&Path>, at: Timestamp) -> Deadlines {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ddm-update-operator"));
    command
        .arg("plan")
        .arg("-f")
        .arg(examples().join("gitops"))
        .arg("--inventory")
        .arg(examples().join("inventory.yaml"))
        .arg("--catalog")
        .arg(Path::new(ROOT).join(CATALOG))
        .arg("--at")
        .arg(at.to_string())
        .args(["--output", "json"]);
    if let Some(ledger) = ledger {
        command.arg("--ledger").arg(ledger);
    }
    let output = command.output().expect("plan runs");
    assert!(
        output.status.success(),
        "plan failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("plan JSON");
    let mut deadlines = Deadlines::new();
    for device in report["devices"].as_array().expect("devices") {
        let id = device["enrollmentId"].as_str().expect("an id");
        for e in device["enforcements"].as_array().expect("enforcements") {
            deadlines.insert(
                (
                    id.to_string(),
                    e["source"].as_str().expect("a source").to_string(),
                    e["version"].as_str().expect("a version").to_string(),
                ),
                e["deadline"].as_str().expect("a deadline").to_string(),
            );
        }
    }
    deadlines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_with_the_exported_ledger_never_shows_a_handed_out_deadline_later() {
    let work = tempfile::tempdir().expect("a temporary folder");
    let manifests = work.path().join("gitops");
    copy_dir(&examples().join("gitops"), &manifests);
    let start: Timestamp = "2026-08-22T12:00:00Z".parse().expect("a time");
    let clock = Clock::manual(start);
    let config = RunConfig {
        inventory: Some(examples().join("inventory.yaml")),
        clock: clock.clone(),
        ..RunConfig::local(
            manifests.clone(),
            CatalogSource::File(Path::new(ROOT).join(CATALOG)),
            work.path(),
        )
    };
    let engine = Engine::start(config).await.expect("the operator starts");
    // The ledger, readiness and metrics are on the admin side.
    let address = engine.admin_addr().expect("bound");
    tokio::spawn(engine.serve());
    let client = reqwest::Client::new();
    let root = format!("http://{address}");
    let mut ready = false;
    for _ in 0..200 {
        let answer = client.get(format!("{root}/readyz")).send().await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the operator became ready");
    let exported = client
        .get(format!("{root}/api/v1/rollouts"))
        .send()
        .await
        .expect("the ledger")
        .bytes()
        .await
        .expect("its body");
    let document: Value = serde_json::from_slice(&exported).expect("ledger JSON");
    assert_eq!(document["kind"], "RolloutLedger");
    let handed = document["devices"]
        .as_array()
        .expect("device entries")
        .len();
    assert!(handed > 50, "the examples' fleet is handed out: {handed}");
    let ledger = work.path().join("rollouts.json");
    std::fs::write(&ledger, &exported).expect("write the ledger");

    let first = plan(Some(&ledger), start);
    assert_eq!(
        first,
        plan(None, start),
        "at the hand-out time the ledger changes nothing"
    );
    let mut moved_without = 0;
    for days in [1, 3, 10, 30, 90] {
        let at = start
            .checked_add(SignedDuration::from_hours(24 * days))
            .expect("a time");
        let with = plan(Some(&ledger), at);
        for (key, deadline) in &with {
            if let Some(handed) = first.get(key) {
                assert_eq!(deadline, handed, "{key:?} at +{days} days");
            }
        }
        let without = plan(None, at);
        moved_without += without
            .iter()
            .filter(|(key, deadline)| first.get(*key).is_some_and(|d| *deadline > d))
            .count();
    }
    assert!(
        moved_without > 0,
        "without the ledger some deadlines move (the lead time counts from --at), so the check above means something"
    );
    // Ten days on, an edit that is not about deadlines makes the operator pass again: what it
    // exports is what it exported.
    let passes = || async {
        let text = client
            .get(format!("{root}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        metric_sum(&text, "ddm_update_operator_resolve_passes_total")
    };
    let before = passes().await;
    clock.advance(SignedDuration::from_hours(24 * 10));
    std::fs::write(
        manifests.join("zz-added-later.yaml"),
        "# a file with no resources: the folder changed, nothing else\n",
    )
    .expect("touch the folder");
    let mut passed = false;
    for _ in 0..100 {
        if passes().await > before {
            passed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(passed, "the operator passed again after the edit");
    let again: Value = client
        .get(format!("{root}/api/v1/rollouts"))
        .send()
        .await
        .expect("the ledger")
        .json()
        .await
        .expect("JSON");
    assert_eq!(again["devices"], document["devices"]);
}
