//! The rollout ledger through real passes on a SQLite store, on a moving clock: handed-out
//! deadlines never move later by time alone, change with intent, and survive reopening.

use std::sync::Arc;

use jiff::Timestamp;
use jiff::civil::DateTime;

use super::*;
use crate::backend::embedded::Embedded;
use crate::backend::store::Store;
use crate::test_support::checked as check;

/// The issue's own example: `pinned:26.5`, 21 days after posting, 48 h of lead time, for
/// iPhone15,2s on 26.0; a second ring five days later.
pub(crate) const HOLD: &str = "apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: phones, namespace: it}
spec: {platforms: [iOS], selector: {matchLabels: {ring: canary}}}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: broad, namespace: it}
spec: {platforms: [iOS], selector: {matchLabels: {ring: broad}}}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: hold, namespace: it}
spec:
  fleetGroups: [phones]
  rings: [{name: broad, fleetGroups: [broad], delayDays: 5}]
  target: {strategy: 'pinned:26.5'}
  deadline: {daysAfterPosting: 21, localTime: '19:00', timeZone: UTC, minimumLeadTime: 48h}
";

pub(crate) fn phone(id: &str, ring: &str) -> String {
    format!(
        "- {{enrollmentId: {id}, platform: iOS, model: 'iPhone15,2', osVersion: '26.0', supervised: true, enrollmentType: ade, labels: {{ring: {ring}}}}}\n"
    )
}

fn at(s: &str) -> Timestamp {
    s.parse().expect("a timestamp")
}

fn local(s: &str) -> DateTime {
    s.parse().expect("a local time")
}

pub(crate) struct Harness {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    pub(crate) store: Arc<Store>,
    catalog: Catalog,
}

impl Harness {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ddm.sqlite");
        let store = Arc::new(Store::open(&path).expect("store"));
        let catalog = crate::test_support::catalog_2026_08_22();
        Harness {
            _dir: dir,
            path,
            store,
            catalog,
        }
    }

    fn reopen(&mut self) {
        self.store = Arc::new(Store::open(&self.path).expect("reopen"));
    }

    /// One pass at `now`; each device's policy deadline, by enrollment id.
    pub(crate) async fn pass(
        &self,
        live: &Checked,
        inventory: &str,
        now: &str,
    ) -> (PassResult, Deadlines) {
        let seed = crate::test_support::inventory(inventory);
        let backend = Embedded::new(self.store.clone(), None);
        let result = pass(
            &backend,
            Resources {
                live,
                orphaning: &Checked::default(),
            },
            &seed,
            jiff::Timestamp::UNIX_EPOCH,
            &self.catalog,
            true,
            at(now),
        )
        .await
        .expect("a pass");
        assert!(result.applied.is_ok(), "{:?}", result.applied);
        let deadlines = result
            .devices
            .iter()
            .zip(&result.plan.devices)
            .filter_map(|(device, outcome)| {
                let e = outcome.enforcements.first()?;
                Some((device.enrollment_id.clone(), e.deadline))
            })
            .collect();
        (result, deadlines)
    }
}

pub(crate) type Deadlines = std::collections::BTreeMap<String, DateTime>;

fn generated_deadlines(result: &PassResult) -> Vec<(String, DateTime, u64)> {
    result
        .plan
        .generated
        .iter()
        .map(|t| (t.name.clone(), t.deadline, t.later_personal))
        .collect()
}

#[tokio::test]
async fn a_handed_out_deadline_holds_as_days_pass_and_across_a_reopen() {
    let mut harness = Harness::new();
    let live = check(HOLD);
    let fleet = phone("A", "canary");
    let (_, first) = harness.pass(&live, &fleet, "2026-08-22T12:00:00Z").await;
    assert_eq!(first["A"], local("2026-08-24T19:00:00"));
    // One hour before the deadline the lead time would push a fresh hand-out to 08-26: the
    // handed-out one stays.
    let (_, later) = harness.pass(&live, &fleet, "2026-08-24T18:00:00Z").await;
    assert_eq!(later["A"], local("2026-08-24T19:00:00"));
    harness.reopen();
    let (result, passed) = harness.pass(&live, &fleet, "2026-08-30T12:00:00Z").await;
    assert_eq!(
        passed["A"],
        local("2026-08-24T19:00:00"),
        "a deadline in the past stays in the past"
    );
    assert_eq!(
        generated_deadlines(&result),
        [("hold-ios-26-5".to_string(), local("2026-08-24T19:00:00"), 0)]
    );
    // The clock jumping back changes nothing either.
    let (_, back) = harness.pass(&live, &fleet, "2026-08-01T00:00:00Z").await;
    assert_eq!(back["A"], local("2026-08-24T19:00:00"));
    // Without the ledger (`plan`), the same pass hands out as if now.
    let fresh = Harness::new();
    let (_, now) = fresh.pass(&live, &fleet, "2026-08-30T12:00:00Z").await;
    assert_eq!(now["A"], local("2026-09-01T19:00:00"));
}

#[tokio::test]
async fn a_late_joiner_gets_its_own_deadline_and_the_target_counts_it() {
    let harness = Harness::new();
    let live = check(HOLD);
    let one = phone("A", "canary");
    harness.pass(&live, &one, "2026-08-22T12:00:00Z").await;
    let two = format!("{one}{}", phone("L", "canary"));
    let (result, deadlines) = harness.pass(&live, &two, "2026-08-30T12:00:00Z").await;
    assert_eq!(deadlines["A"], local("2026-08-24T19:00:00"));
    assert_eq!(deadlines["L"], local("2026-09-01T19:00:00"), "join + 48 h");
    assert_eq!(
        generated_deadlines(&result),
        [("hold-ios-26-5".to_string(), local("2026-08-24T19:00:00"), 1)],
        "the target shows the ring's deadline and one later, personal one"
    );
    let (_, again) = harness.pass(&live, &two, "2026-09-01T18:30:00Z").await;
    assert_eq!(again["L"], local("2026-09-01T19:00:00"));
}

#[tokio::test]
async fn rings_keep_their_spacing_when_the_lead_time_pushes_the_first() {
    let harness = Harness::new();
    let live = check(HOLD);
    let fleet = format!("{}{}", phone("C", "canary"), phone("W", "broad"));
    // 26.5 was posted on 2026-05-11: 21 (+5) days later have long passed on 2026-12-08.
    let (result, deadlines) = harness.pass(&live, &fleet, "2026-12-08T10:00:00Z").await;
    assert_eq!(deadlines["C"], local("2026-12-10T19:00:00"));
    assert_eq!(deadlines["W"], local("2026-12-15T19:00:00"));
    assert_eq!(
        generated_deadlines(&result),
        [
            ("hold-ios-26-5".to_string(), local("2026-12-10T19:00:00"), 0),
            (
                "hold-ios-26-5-broad".to_string(),
                local("2026-12-15T19:00:00"),
                0
            )
        ]
    );
}

#[tokio::test]
async fn a_change_of_intent_hands_out_anew_and_other_edits_do_not() {
    let harness = Harness::new();
    let live = check(HOLD);
    let fleet = phone("A", "canary");
    harness.pass(&live, &fleet, "2026-08-22T12:00:00Z").await;
    // A details page added: not a deadline field, the deadline stays.
    let settings = check(&format!(
        "{HOLD}  detailsURL: https://it.example.com/updates\n"
    ));
    let (_, kept) = harness
        .pass(&settings, &fleet, "2026-08-23T12:00:00Z")
        .await;
    assert_eq!(kept["A"], local("2026-08-24T19:00:00"));
    // localTime edited: handed out anew under the new intent, lead time from now.
    let edited = check(&HOLD.replace("'19:00'", "'18:00'"));
    let (_, moved) = harness.pass(&edited, &fleet, "2026-08-23T12:00:00Z").await;
    assert_eq!(moved["A"], local("2026-08-25T18:00:00"));
    let (_, held) = harness.pass(&edited, &fleet, "2026-08-25T17:00:00Z").await;
    assert_eq!(held["A"], local("2026-08-25T18:00:00"));
    // A new target version is a new rollout with its own deadline.
    let newer = check(&HOLD.replace("pinned:26.5", "pinned:26.6"));
    let (result, next) = harness.pass(&newer, &fleet, "2026-08-26T12:00:00Z").await;
    let version = &result.plan.devices[0].enforcements[0].version;
    assert!(version.to_string().starts_with("26.6"), "{version}");
    assert_ne!(next["A"], local("2026-08-25T18:00:00"));
    // The old rollout's ring entry is forgotten once no device refers to it.
    let rings: Vec<String> = harness
        .store
        .memory()
        .ledger
        .rings
        .keys()
        .map(|k| k.version.clone())
        .collect();
    assert!(rings.iter().all(|v| v.starts_with("26.6")), "{rings:?}");
}

#[tokio::test]
async fn a_corrupt_ledger_row_hands_out_that_device_anew_and_is_counted() {
    let mut harness = Harness::new();
    let live = check(HOLD);
    let fleet = format!("{}{}", phone("A", "canary"), phone("B", "canary"));
    harness.pass(&live, &fleet, "2026-08-22T12:00:00Z").await;
    {
        let connection = rusqlite::Connection::open(&harness.path).expect("open");
        connection
            .execute(
                "UPDATE rollouts SET deadline = 'soon' WHERE enrollment_id = 'B'",
                [],
            )
            .expect("corrupt a row");
    }
    harness.reopen();
    assert_eq!(harness.store.memory().corrupt_rows, 1);
    let (result, deadlines) = harness.pass(&live, &fleet, "2026-08-24T18:00:00Z").await;
    assert_eq!(result.corrupt_ledger_rows, 1, "counted for the metric");
    assert_eq!(deadlines["A"], local("2026-08-24T19:00:00"), "A untouched");
    assert_eq!(
        deadlines["B"],
        local("2026-08-26T19:00:00"),
        "B is handed out anew: the ring's deadline is too close for its lead time"
    );
}
