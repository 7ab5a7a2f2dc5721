//! What the MDM says reaches the resolver (issue 13 items 1, 3 and 5), through real passes on
//! a real store: a device that checked out loses its set and stays without one across passes;
//! an Apple-silicon Mac with no escrowed bootstrap token is still enforced and shows
//! `BootstrapTokenMissing` in the pass's plan, in `/api/v1/status` per policy and in the metric,
//! and `plan` says so from the inventory. The MDM's facts are handed to the pass as the backend
//! returns them (`Backend::mdm_devices`), the way the store holds what NanoMDM's webhook said.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use jiff::Timestamp;
use serde_json::Value;

use ddm_update_operator::api::validate::Checked;
use ddm_update_operator::backend::embedded::Embedded;
use ddm_update_operator::backend::store::Store;
use ddm_update_operator::backend::{
    ApplyReport, Assignment, Backend, BackendError, DeviceRecord, Memory, MemoryChanges,
};
use ddm_update_operator::catalog::Catalog;
use ddm_update_operator::declarations::Declaration;
use ddm_update_operator::inventory::Device;
use ddm_update_operator::mdm::{Enrollment, Fact, MdmDevice, Source};
use ddm_update_operator::metrics::Metrics;
use ddm_update_operator::pass::{self, PassResult, report};

use crate::support::process::plan_json;
use crate::support::{ROOT, manifests};

/// The embedded backend, with what the MDM told handed over as given.
struct WithMdm {
    inner: Embedded,
    mdm: Mutex<Vec<MdmDevice>>,
}

impl Backend for WithMdm {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn apply<'a>(
        &'a self,
        declarations: &'a [Declaration],
        assignments: &'a [Assignment],
    ) -> BoxFuture<'a, Result<ApplyReport, BackendError>> {
        self.inner.apply(declarations, assignments)
    }
    fn withdraw<'a>(
        &'a self,
        enrollment_ids: &'a [String],
    ) -> BoxFuture<'a, Result<ApplyReport, BackendError>> {
        self.inner.withdraw(enrollment_ids)
    }
    fn devices(&self) -> BoxFuture<'_, Result<Vec<DeviceRecord>, BackendError>> {
        self.inner.devices()
    }
    fn memory(&self) -> BoxFuture<'_, Result<Arc<Memory>, BackendError>> {
        self.inner.memory()
    }
    fn remember(&self, changes: MemoryChanges) -> BoxFuture<'_, Result<(), BackendError>> {
        self.inner.remember(changes)
    }
    fn mdm_devices(&self) -> BoxFuture<'_, Result<Vec<MdmDevice>, BackendError>> {
        let devices = self.mdm.lock().expect("mdm devices").clone();
        Box::pin(async move { Ok(devices) })
    }
    fn forget_unreported<'a>(
        &'a self,
        enrollment_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<String>, BackendError>> {
        self.inner.forget_unreported(enrollment_ids)
    }
}

/// Every Mac on Apple's latest macOS, 14 days after posting.
fn macs() -> String {
    manifests::stream(&[
        manifests::group("macs", "macOS"),
        manifests::latest_policy("macs", "macs", 14, ""),
    ])
}

fn at(s: &str) -> Timestamp {
    s.parse().expect("a timestamp")
}

fn catalog() -> Catalog {
    let path = std::path::Path::new(ROOT).join("tests/fixtures/gdmf/pmv-2026-08-22.json");
    Catalog::from_slice(&std::fs::read(path).expect("the catalog fixture"))
        .expect("a catalog")
        .with_as_of(jiff::civil::date(2026, 8, 22))
}

fn checked() -> Checked {
    ddm_update_operator::manifests::check_str("macs.yaml", &macs())
        .unwrap_or_else(|p| panic!("{p:?}"))
}

/// An Apple-silicon Mac (`Mac14,2`, board `J413AP`) on macOS 15.5 as `mdm.Authenticate` and
/// the enrollment gate's MachineInfo describe it, supervised (`IsSupervised`).
fn enrolled_mac(id: &str) -> MdmDevice {
    let when = at("2026-08-20T09:00:00Z");
    let mut mac = MdmDevice::new(id, Enrollment::Enrolled { since: when });
    mac.model = Some(Fact::new("Mac14,2".into(), Source::Mdm, when));
    mac.os_version = Some(Fact::new("15.5".into(), Source::Mdm, when));
    mac.build_version = Some(Fact::new("24F74".into(), Source::Mdm, when));
    mac.software_update_device_id = Some(Fact::new("J413AP".into(), Source::MachineInfo, when));
    mac.supervised = Some(Fact::new(true, Source::Mdm, when));
    mac.apple_silicon = Some(Fact::new(true, Source::Mdm, when));
    mac
}

struct Fixture {
    store: Arc<Store>,
    backend: WithMdm,
    checked: Checked,
    catalog: Catalog,
}

impl Fixture {
    fn new(mdm: Vec<MdmDevice>) -> Self {
        let store = Arc::new(Store::in_memory().expect("store"));
        Fixture {
            backend: WithMdm {
                inner: Embedded::new(store.clone(), None),
                mdm: Mutex::new(mdm),
            },
            store,
            checked: checked(),
            catalog: catalog(),
        }
    }

    async fn pass(&self, seed: &[Device], now: &str) -> PassResult {
        let result = pass::pass(
            &self.backend,
            pass::Resources {
                live: &self.checked,
                orphaning: &Checked::default(),
            },
            seed,
            at("2026-08-01T00:00:00Z"),
            &self.catalog,
            false,
            at(now),
        )
        .await
        .expect("a pass");
        assert!(result.applied.is_ok(), "{:?}", result.applied);
        result
    }

    /// `/api/v1/status` as standalone mode publishes it after this pass, and the metrics.
    fn status(&self, result: &PassResult, now: &str) -> (Value, String) {
        let metrics = Metrics::new();
        let by_id: HashMap<&str, &DeviceRecord> = result
            .records
            .iter()
            .map(|r| (r.enrollment_id.as_str(), r))
            .collect();
        let mut status = report::status(
            &self.checked,
            &result.devices,
            &result.plan,
            &by_id,
            &result.frozen,
            at(now),
            &metrics,
        );
        report::add_checked_out(&mut status, &result.checked_out, &metrics);
        (status, metrics.encode())
    }

    fn set(&self, id: &str) -> Option<Vec<String>> {
        self.store
            .served_set(id)
            .map(|s| s.members.iter().cloned().collect())
    }
}

fn reasons(result: &PassResult, id: &str) -> Vec<String> {
    let index = result
        .devices
        .iter()
        .position(|d| d.enrollment_id == id)
        .unwrap_or_else(|| panic!("{id} resolved"));
    result.plan.devices[index]
        .notes
        .iter()
        .map(|n| n.reason.to_string())
        .collect()
}

#[tokio::test]
async fn a_checked_out_device_loses_its_set_and_stays_without_one_across_passes() {
    let fixture = Fixture::new(vec![enrolled_mac("MAC-A"), enrolled_mac("MAC-B")]);
    let first = fixture.pass(&[], "2026-08-22T12:00:00Z").await;
    // Known only to the MDM, both are resolved and enforced.
    assert_eq!(first.devices.len(), 2);
    for id in ["MAC-A", "MAC-B"] {
        let set = fixture.set(id).unwrap_or_else(|| panic!("{id} has a set"));
        assert!(
            set.iter().any(|m| m.starts_with("ddm.enforce.")),
            "{id}: {set:?}"
        );
    }

    // mdm.CheckOut for MAC-A.
    fixture.backend.mdm.lock().expect("mdm")[0].enrollment_event(Enrollment::CheckedOut {
        at: at("2026-08-22T13:00:00Z"),
    });
    let second = fixture.pass(&[], "2026-08-22T14:00:00Z").await;
    assert_eq!(
        second
            .devices
            .iter()
            .map(|d| d.enrollment_id.as_str())
            .collect::<Vec<_>>(),
        ["MAC-B"]
    );
    assert_eq!(fixture.set("MAC-A"), Some(Vec::new()), "withdrawn");
    assert!(fixture.set("MAC-B").is_some_and(|s| !s.is_empty()));
    // The policy that was taking it there hears of it once (its Kubernetes event).
    assert_eq!(
        second.checked_out_by_policy.values().sum::<usize>(),
        1,
        "{:?}",
        second.checked_out_by_policy
    );
    assert!(first.checked_out_by_policy.is_empty());
    let (status, metrics) = fixture.status(&second, "2026-08-22T14:00:00Z");
    assert_eq!(status["devices"]["checkedOut"], 1);
    assert_eq!(status["devices"]["total"], 1);
    assert_eq!(status["checkedOut"][0]["enrollmentId"], "MAC-A");
    assert_eq!(status["checkedOut"][0]["state"], "checkedOut");
    // Not counted against the policy.
    let policy = &status["updatePolicies"][0];
    let counted: u64 = policy["devices"]
        .as_object()
        .expect("counts")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(counted, 1, "{policy}");
    assert!(
        metrics.contains("ddm_update_operator_devices_checked_out 1"),
        "{metrics}"
    );

    // Later passes leave it withdrawn, and write nothing for it; a late Authenticate from
    // before the check-out does not bring it back.
    fixture.backend.mdm.lock().expect("mdm")[0].enrollment_event(Enrollment::Enrolled {
        since: at("2026-08-22T12:30:00Z"),
    });
    for now in ["2026-08-23T12:00:00Z", "2026-08-24T12:00:00Z"] {
        let later = fixture.pass(&[], now).await;
        assert_eq!(fixture.set("MAC-A"), Some(Vec::new()), "{now}");
        let changed = later.applied.as_ref().map(|r| r.changed.clone()).ok();
        assert_eq!(changed, Some(Vec::new()), "{now}");
        assert_eq!(later.checked_out.len(), 1);
        assert!(later.checked_out_by_policy.is_empty(), "told once: {now}");
    }
}

#[tokio::test]
async fn a_mac_without_an_escrowed_bootstrap_token_is_enforced_and_shown_as_missing_one() {
    let mut escrowed = enrolled_mac("MAC-ESCROWED");
    escrowed.bootstrap_token_escrowed =
        Some(Fact::new(true, Source::Mdm, at("2026-08-20T10:00:00Z")));
    let fixture = Fixture::new(vec![enrolled_mac("MAC-NO-TOKEN"), escrowed]);
    let result = fixture.pass(&[], "2026-08-22T12:00:00Z").await;
    assert_eq!(reasons(&result, "MAC-NO-TOKEN"), ["BootstrapTokenMissing"]);
    assert!(reasons(&result, "MAC-ESCROWED").is_empty());
    // Still enforced: a warning, not a refusal.
    for id in ["MAC-NO-TOKEN", "MAC-ESCROWED"] {
        assert!(
            fixture
                .set(id)
                .is_some_and(|s| s.iter().any(|m| m.starts_with("ddm.enforce."))),
            "{id}"
        );
    }
    assert!(
        result
            .plan
            .warnings
            .iter()
            .any(|w| w.starts_with("UpdatePolicy fleet/macs enforces 1 Apple-silicon Mac(s) without an escrowed bootstrap token")),
        "{:?}",
        result.plan.warnings
    );
    let (status, metrics) = fixture.status(&result, "2026-08-22T12:00:00Z");
    let policy = &status["updatePolicies"][0];
    assert_eq!(policy["bootstrapTokenMissing"], 1, "{policy}");
    assert_eq!(policy["devices"]["notApplicable"], Value::Null, "{policy}");
    assert!(
        metrics.contains(
            "ddm_update_operator_bootstrap_token_missing{source=\"UpdatePolicy fleet/macs\"} 1"
        ),
        "{metrics}"
    );

    // mdm.SetBootstrapToken: the reason goes with the next pass.
    for mac in fixture.backend.mdm.lock().expect("mdm").iter_mut() {
        if mac.enrollment_id == "MAC-NO-TOKEN" {
            mac.bootstrap_token_escrowed =
                Some(Fact::new(true, Source::Mdm, at("2026-08-22T12:30:00Z")));
        }
    }
    let after = fixture.pass(&[], "2026-08-22T13:00:00Z").await;
    assert!(reasons(&after, "MAC-NO-TOKEN").is_empty());
    let (status, _) = fixture.status(&after, "2026-08-22T13:00:00Z");
    assert_eq!(status["updatePolicies"][0]["bootstrapTokenMissing"], 0);
}

#[test]
fn plan_shows_bootstrap_token_missing_from_the_inventory_and_warns() {
    let work = tempfile::tempdir().expect("tempdir");
    let manifests = work.path().join("macs.yaml");
    std::fs::write(&manifests, macs()).expect("manifests");
    let inventory = work.path().join("inventory.yaml");
    std::fs::write(
        &inventory,
        "- {enrollmentId: SILICON, platform: macOS, model: 'Mac14,2', softwareUpdateDeviceId: J413AP, osVersion: '15.5', supervised: true, enrollmentType: ade, appleSilicon: true}
- {enrollmentId: ESCROWED, platform: macOS, model: 'Mac14,2', softwareUpdateDeviceId: J413AP, osVersion: '15.5', supervised: true, enrollmentType: ade, appleSilicon: true, bootstrapTokenEscrowed: true}
- {enrollmentId: UNSAID, platform: macOS, model: 'Mac14,2', softwareUpdateDeviceId: J413AP, osVersion: '15.5', supervised: true, enrollmentType: ade}
",
    )
    .expect("inventory");
    let plan = plan_json(
        &manifests,
        &inventory,
        &std::path::Path::new(ROOT).join("tests/fixtures/gdmf/pmv-2026-08-22.json"),
        "2026-08-22T12:00:00Z",
    );
    let by_id = |id: &str| -> Vec<String> {
        let device = plan["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .find(|d| d["enrollmentId"] == id)
            .unwrap_or_else(|| panic!("{id}"));
        assert!(
            !device["enforcements"]
                .as_array()
                .expect("enforcements")
                .is_empty(),
            "{id} is enforced"
        );
        device["reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .map(|r| r["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(by_id("SILICON"), ["BootstrapTokenMissing"]);
    assert!(by_id("ESCROWED").is_empty());
    assert!(
        by_id("UNSAID").is_empty(),
        "nothing said it is Apple silicon"
    );
    let warnings: Vec<&str> = plan["summary"]["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        warnings.iter().any(|w| w.contains("UpdatePolicy fleet/macs enforces 1 Apple-silicon Mac(s) without an escrowed bootstrap token")),
        "{warnings:?}"
    );
    assert_eq!(plan["summary"]["reasons"]["BootstrapTokenMissing"], 1);
}
