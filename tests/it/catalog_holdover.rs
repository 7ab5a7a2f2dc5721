//! The finer catalog guard at the edge (issue 12: a model vanishing from Apple's answer withdrew
//! its devices' enforcements at once): what is held and since when lives in `held.json` next to
//! the cached catalog, so a restart keeps the hold's start; the grace period ends on the
//! operator's clock; a damaged file is a warning, not a crash. Apple's answer of 2026-08-22 with
//! every iPhone15,2 listing removed stands for the new answer.

use std::path::PathBuf;

use ddm_update_operator::catalog::PmvDocument;
use ddm_update_operator::catalog::fetch::{CacheMeta, LastGood};
use ddm_update_operator::catalog::holdover::{DEFAULT_GRACE, Holds, carry_over};
use ddm_update_operator::clock::Clock;
use ddm_update_operator::metrics::Metrics;
use ddm_update_operator::operator::{CatalogSource, RunConfig, load_catalog};
use jiff::{SignedDuration, Timestamp};

const MODEL: &str = "iPhone15,2";

fn snapshot() -> Vec<u8> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gdmf/pmv-2026-08-22.json");
    std::fs::read(path).expect("the snapshot")
}

/// The snapshot with `MODEL` taken out of every entry (entries left with no device go).
fn vanished() -> Vec<u8> {
    let mut document: serde_json::Value = serde_json::from_slice(&snapshot()).expect("JSON");
    for set in document.as_object_mut().expect("object").values_mut() {
        let Some(platforms) = set.as_object_mut() else {
            continue;
        };
        for entries in platforms.values_mut().filter_map(|v| v.as_array_mut()) {
            for entry in entries.iter_mut() {
                if let Some(devices) = entry["SupportedDevices"].as_array_mut() {
                    devices.retain(|d| d != MODEL);
                }
            }
            entries.retain(|e| {
                e["SupportedDevices"]
                    .as_array()
                    .is_some_and(|d| !d.is_empty())
            });
        }
    }
    serde_json::to_vec(&document).expect("JSON")
}

fn day(n: i64) -> Timestamp {
    let start: Timestamp = "2026-08-22T19:00:00Z".parse().expect("time");
    start
        .checked_add(SignedDuration::from_hours(24 * n))
        .expect("in range")
}

fn held_metric(metrics: &Metrics) -> Option<f64> {
    let key = format!("ddm_update_operator_catalog_held_releases{{device=\"{MODEL}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&key)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_survives_a_restart_and_ends_after_the_grace_period() {
    let work = tempfile::tempdir().expect("temp dir");
    let manifests = work.path().join("gitops");
    std::fs::create_dir_all(&manifests).expect("manifests");
    let clock = Clock::manual(day(13));
    // Apple unreachable: the cached answer (the one without the model) stays in use.
    let config = RunConfig {
        clock: clock.clone(),
        ..RunConfig::local(
            manifests,
            CatalogSource::Url("https://127.0.0.1:1/v2/pmv".into()),
            work.path(),
        )
    };
    // What an earlier run left: the new answer cached, and the hold it began on day 0 when that
    // answer replaced the full one.
    let store = LastGood::new(config.data_dir.join("catalog"));
    let full = PmvDocument::from_slice(&snapshot()).expect("snapshot");
    let new_answer = vanished();
    let cut = PmvDocument::from_slice(&new_answer).expect("parses");
    let began = carry_over(&full, &Holds::default(), &cut, day(0), DEFAULT_GRACE);
    assert!(!began.holds.held.is_empty());
    store.save_body(&new_answer).expect("cache");
    store
        .save_meta(&CacheMeta {
            url: "https://127.0.0.1:1/v2/pmv".into(),
            fetched_at: Some(day(0)),
            ..CacheMeta::default()
        })
        .expect("meta");
    store.save_holds(&began.holds).expect("holds");

    // Day 13, after a restart: still held, from day 0.
    let metrics = Metrics::new();
    let state = load_catalog(&config, &metrics).await;
    assert!(state.catalog.knows_device(MODEL), "held on day 13");
    assert!(
        state
            .holds
            .held
            .iter()
            .all(|r| r.devices.get(MODEL) == Some(&day(0)))
    );
    assert!(held_metric(&metrics).is_some_and(|n| n > 0.0));

    // Day 15: the grace period has ended; dropped, said so, and persisted.
    clock.set(day(15));
    let state = load_catalog(&config, &metrics).await;
    assert!(!state.catalog.knows_device(MODEL), "dropped on day 15");
    assert!(state.holds.held.is_empty());
    assert!(
        state
            .holds
            .dropped
            .iter()
            .any(|d| d.devices == [MODEL] && d.since == day(0))
    );
    assert_eq!(held_metric(&metrics), None);
    assert_eq!(store.load_holds(), state.holds, "persisted");

    // A damaged file: a warning and nothing held, never a crash.
    std::fs::write(config.data_dir.join("catalog/held.json"), b"{not json").expect("write");
    let state = load_catalog(&config, &metrics).await;
    assert_eq!(state.holds, Holds::default());
    assert!(state.catalog.knows_device("iPhone16,1"));
}
