//! End to end in standalone mode: the real `ddm-update-operator run` binary on a folder of
//! manifests and a catalog file, simulated devices (`ddm_update_operator::sim`) checking in over
//! loopback. Devices enroll and get the bootstrap set, report what they are, receive exactly the
//! declarations `plan` predicts for them, install, reach the target and get their enforcement
//! withdrawn; `GET /api/v1/status` and `/metrics` show it. A second test edits and suspends a
//! policy in the watched folder.
//!
//! # Why `plan` and `run` can be compared declaration for declaration
//!
//! `run` resolves with the real clock; `plan` is run `--at` the catalog's as-of day (its newest
//! posting date, 2026-08-17 for this fixture), the day `run` judges the file's expiration dates
//! on. The policies here have no `minimumLeadTime`, so deadlines are "posting date + N days"
//! whatever the clock says, and their deadlines fall well before every chosen build expires, so
//! the stale-copy expiry comparison (which does depend on the clock) picks the same release in
//! both. The whole declaration — Identifier, ServerToken, payload — must then be equal.
//!
//! # What `plan` is told about each device
//!
//! Exactly what the device reports through DDM, which is all `run` learns: model, OS version and
//! build, serial number, and `softwareupdate.device-id` only where the device's OS offers that
//! item (macOS 15, iOS 18); `supervised: true` because the operator runs with
//! `--assume-supervised`. A Mac on macOS 14 is thus `DeviceIdUnknown` for both.
//!
//! Deadlines and targets are also checked against the raw catalog JSON, not only against `plan`.
//! "Settled" means: devices check in every 200 ms, and for 1.5 s none sent a report, none saw a
//! new DeclarationsToken, and the operator's resolve-pass counter did not move.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ddm_update_operator::catalog::{OsVersion, Platform, PmvDocument};
use ddm_update_operator::sim::{
    DeviceSpec, FailureMode, InstallState, ServerConfig, SimDevice, SyncOutcome, http_client,
};
use serde_json::{Value, json};

use crate::support::devices::{check_in_all, fleet_of, held, newest_catalog_path};
use crate::support::process::{KillOnDrop, free_ports, metric_sum};

const BINARY: &str = env!("CARGO_BIN_EXE_ddm-update-operator");
const NAMESPACE: &str = "e2e";
const ENFORCEMENT_TYPE: &str = "com.apple.configuration.softwareupdate.enforcement.specific";
/// With no report and no declaration change for this long, the operator has run every pass the
/// last reports asked for (it debounces reports for 0.5 s, and a pass over a few dozen devices
/// takes milliseconds).
const QUIET: Duration = Duration::from_millis(1500);
/// Hard cap on one wait for the operator.
const SETTLE_CAP: Duration = Duration::from_secs(20);

/// The catalog's as-of moment: 00:00 UTC on its newest posting date (what `run` judges a
/// catalog file on).
fn catalog_as_of() -> String {
    let bytes = std::fs::read(newest_catalog_path()).expect("the catalog fixture");
    let document = PmvDocument::from_slice(&bytes).expect("a pmv document");
    let day = document
        .newest_posting_date()
        .expect("the fixture has posting dates");
    format!("{day}T00:00:00Z")
}

// ---------------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------------

/// The mobile policy's knobs the second test turns.
#[derive(Debug, Clone, Copy)]
struct Mobile {
    days_after_posting: u32,
    suspend: bool,
    /// `deletionPolicy: Orphan`.
    orphan: bool,
    /// `spec.deadline.timeZone` (the API server accepts any string; the operator checks it).
    time_zone: &'static str,
}

/// The mobile policy as the tests first write it.
const MOBILE: Mobile = Mobile {
    days_after_posting: 3,
    suspend: false,
    orphan: false,
    time_zone: "America/New_York",
};

/// A scratch folder whose `gitops/` holds the tests' manifests with `mobile`: (folder, gitops).
fn work_with_manifests(mobile: Mobile) -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().expect("tempdir");
    let manifests = work.path().join("gitops");
    write_manifests(&manifests, mobile);
    (work, manifests)
}

fn write_atomically(path: &Path, text: &str) {
    // Written beside the folder and renamed in, so a poll never reads half a file.
    let parent = path
        .parent()
        .and_then(Path::parent)
        .expect("the manifests folder has a parent");
    let staging = parent.join(format!(
        ".staging-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    std::fs::write(&staging, text).expect("write a manifest");
    std::fs::rename(&staging, path).expect("move a manifest into place");
}

fn write_mobile_policy(folder: &Path, mobile: Mobile) {
    let mut suspend = if mobile.suspend {
        "  suspend: true\n".to_string()
    } else {
        String::new()
    };
    if mobile.orphan {
        suspend.push_str("  deletionPolicy: Orphan\n");
    }
    write_atomically(
        &folder.join("policy-mobile.yaml"),
        &format!(
            "apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata:
  name: mobile
  namespace: {NAMESPACE}
spec:
  fleetGroups: [mobile]
  target:
    strategy: latest-minor
  deadline:
    daysAfterPosting: {days}
    localTime: \"18:00\"
    timeZone: {zone}
  detailsURL: https://it.example.com/updates/mobile
  settings:
    notifications: true
    recommendedCadence: Newest
{suspend}",
            days = mobile.days_after_posting,
            zone = mobile.time_zone,
        ),
    );
}

/// Two groups by platform, a `latest-minor` policy for iPhones and iPads and a `latest` policy
/// with Software Update settings for Macs. No `minimumLeadTime` (see the module comment).
fn write_manifests(folder: &Path, mobile: Mobile) {
    std::fs::create_dir_all(folder).expect("manifests folder");
    let group = |name: &str, platforms: &str| {
        format!(
            "apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  platforms: [{platforms}]
"
        )
    };
    write_atomically(
        &folder.join("group-mobile.yaml"),
        &group("mobile", "iOS, iPadOS"),
    );
    write_atomically(&folder.join("group-macs.yaml"), &group("macs", "macOS"));
    write_mobile_policy(folder, mobile);
    write_macs_policy(folder, 5);
}

/// The Macs' policy, due `days` after posting at 19:00 Berlin time.
fn write_macs_policy(folder: &Path, days: u32) {
    write_atomically(
        &folder.join("policy-macs.yaml"),
        &format!(
            "apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata:
  name: macs
  namespace: {NAMESPACE}
spec:
  fleetGroups: [macs]
  target:
    strategy: latest
  deadline:
    daysAfterPosting: {days}
    localTime: \"19:00\"
    timeZone: Europe/Berlin
  settings:
    notifications: true
    automaticActions:
      download: AlwaysOn
      installOSUpdates: Allowed
"
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// The operator process
// ---------------------------------------------------------------------------------------------

struct Operator {
    child: KillOnDrop,
    /// The device side (DDM endpoints).
    root: String,
    /// The admin side (readiness, metrics, `/api/v1`; open on loopback without a token file).
    admin: String,
    log: PathBuf,
    client: reqwest::Client,
}

impl Operator {
    /// `run --manifests … --catalog <fixture>` on free loopback ports, `--assume-supervised`,
    /// a fast manifest poll; waits for `/readyz`.
    async fn start(work: &Path, manifests: &Path, poll: &str) -> Operator {
        Self::start_with(work, manifests, poll, &[]).await
    }

    /// The same with more flags.
    async fn start_with(work: &Path, manifests: &Path, poll: &str, extra: &[&str]) -> Operator {
        let data = work.join("data");
        let log = work.join("operator.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut last_error = String::new();
        // A port found free can be taken before the child binds it: try a few.
        for _ in 0..3 {
            let [port, admin_port] = free_ports();
            let child = Command::new(BINARY)
                .arg("run")
                .arg("--manifests")
                .arg(manifests)
                .arg("--catalog")
                .arg(newest_catalog_path())
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
                .args(["--poll-interval", poll])
                .arg("--assume-supervised")
                .args(extra)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(stderr.try_clone().expect("log file handle"))
                .spawn()
                .expect("the operator starts");
            let mut operator = Operator {
                child: KillOnDrop(child),
                root: format!("http://127.0.0.1:{port}"),
                admin: format!("http://127.0.0.1:{admin_port}"),
                log: log.clone(),
                client: http_client(Duration::from_secs(10)).expect("HTTP client"),
            };
            match operator.wait_ready().await {
                Ok(()) => return operator,
                Err(why) => last_error = why,
            }
        }
        panic!("the operator never became ready: {last_error}");
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}:\n{}", self.log_tail()));
            }
            if let Ok(response) = self
                .client
                .get(format!("{}/readyz", self.admin))
                .send()
                .await
                && response.status() == 200
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("not ready within 30 s:\n{}", self.log_tail()))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn server(&self) -> ServerConfig {
        ServerConfig::new(&format!("{}/ddm/", self.root)).expect("DDM base URL")
    }

    /// A GET on the admin port.
    async fn get_text(&self, path: &str) -> String {
        let response = self
            .client
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log_tail()));
        assert_eq!(response.status(), 200, "GET {path}");
        response.text().await.expect("a body")
    }

    async fn status(&self) -> Value {
        serde_json::from_str(&self.get_text("/api/v1/status").await).expect("status is JSON")
    }

    /// A counter or gauge from `/metrics` (the sum over its label sets).
    async fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.get_text("/metrics").await, name)
    }
}

// ---------------------------------------------------------------------------------------------
// The devices
// ---------------------------------------------------------------------------------------------

/// Simulated devices plus what each last reported as `management.declarations`.
struct Devices {
    list: Vec<SimDevice>,
    reported_declarations: Vec<Option<Value>>,
    client: reqwest::Client,
    server: ServerConfig,
}

impl Devices {
    fn new(list: Vec<SimDevice>, server: ServerConfig) -> Devices {
        let n = list.len();
        Devices {
            list,
            reported_declarations: vec![None; n],
            client: http_client(Duration::from_secs(10)).expect("HTTP client"),
            server,
        }
    }

    /// One check-in of every device, concurrently.
    async fn sync_all(&mut self) -> Vec<SyncOutcome> {
        let outcomes = check_in_all(&mut self.list, &self.client, &self.server).await;
        for (index, outcome) in outcomes.iter().enumerate() {
            if let Some(declarations) = outcome
                .report
                .as_ref()
                .and_then(|r| r.pointer("/StatusItems/management/declarations"))
            {
                self.reported_declarations[index] = Some(declarations.clone());
            }
        }
        outcomes
    }

    /// Checks in every 200 ms until nothing happens for [`QUIET`]: no device sent a report
    /// and none saw a new DeclarationsToken, and the operator ran no pass in that window.
    async fn settle(&mut self, operator: &Operator) -> Duration {
        let started = Instant::now();
        let mut quiet_since = Instant::now();
        let mut passes = operator
            .metric("ddm_update_operator_resolve_passes_total")
            .await;
        loop {
            assert!(
                started.elapsed() < SETTLE_CAP,
                "the devices and the operator did not settle within {SETTLE_CAP:?}\n{}",
                operator.log_tail()
            );
            let outcomes = self.sync_all().await;
            let now_passes = operator
                .metric("ddm_update_operator_resolve_passes_total")
                .await;
            let active = outcomes
                .iter()
                .any(|o| o.declarations_changed || o.report.is_some())
                || now_passes != passes;
            passes = now_passes;
            if active {
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= QUIET {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Each device's held set: Identifier → (Type, ServerToken).
    fn held(&self, index: usize) -> BTreeMap<String, (String, String)> {
        held(&self.list[index])
    }

    /// The inventory `plan` is given: what each device reports about itself.
    fn inventory(&self) -> Value {
        let devices: Vec<Value> = self
            .list
            .iter()
            .map(|device| {
                let spec = device.spec();
                let items = device.status_items();
                let reports_device_id = items
                    .get("softwareupdate")
                    .and_then(|s| s.get("device-id"))
                    .is_some();
                let mut entry = json!({
                    "enrollmentId": spec.enrollment_id,
                    "serialNumber": spec.serial_number,
                    "platform": spec.platform,
                    "model": spec.model_identifier,
                    "osVersion": spec.os.version.numeric(),
                    "buildVersion": spec.os.build,
                    "supervised": true,
                    "enrollmentType": "device",
                });
                if reports_device_id && let Some(id) = &spec.software_update_device_id {
                    entry["softwareUpdateDeviceId"] = id.clone().into();
                }
                entry
            })
            .collect();
        Value::Array(devices)
    }
}

fn fleet(iphones: usize, ipads: usize, macs: usize, seed: u64) -> Vec<SimDevice> {
    fleet_of(&[
        (Platform::Ios, iphones, seed),
        (Platform::IpadOs, ipads, seed + 1),
        (Platform::MacOs, macs, seed + 2),
    ])
}

/// A supervised Mac on macOS 14.8.7: it speaks DDM and could take an enforcement, but its OS
/// does not offer `softwareupdate.device-id` (macOS 15), so the operator never learns its board
/// id.
fn mac_on_macos_14() -> SimDevice {
    let bytes = std::fs::read(newest_catalog_path()).expect("the catalog fixture");
    let raw: Value = serde_json::from_slice(&bytes).expect("JSON");
    let entry = raw["AssetSets"]["macOS"]
        .as_array()
        .and_then(|list| list.iter().find(|e| e["ProductVersion"] == "14.8.7"))
        .expect("macOS 14.8.7 in AssetSets");
    let board = entry["SupportedDevices"][0].as_str().expect("a board id");
    let build = entry["Build"].as_str().expect("a build");
    let mut spec = DeviceSpec::new("E2E-MAC-ON-14", Platform::MacOs, "Mac14,2", "14.8.7", build)
        .expect("a device");
    spec.software_update_device_id = Some(board.to_string());
    SimDevice::new(spec)
}

// ---------------------------------------------------------------------------------------------
// `plan`
// ---------------------------------------------------------------------------------------------

/// What `plan` predicts per enrollment: Identifier → (Type, ServerToken), plus the payloads
/// and the plan's reasons.
struct Predicted {
    sets: BTreeMap<String, BTreeMap<String, (String, String)>>,
    payloads: BTreeMap<String, Value>,
    reasons: BTreeMap<String, Vec<String>>,
    json: Value,
}

impl Predicted {
    fn enforcement(&self, enrollment_id: &str) -> Option<(&str, &Value)> {
        self.sets[enrollment_id]
            .iter()
            .find(|(_, (t, _))| t == ENFORCEMENT_TYPE)
            .map(|(id, _)| (id.as_str(), &self.payloads[id]))
    }

    /// The indices of the devices the plan gives an enforcement.
    fn enforced(&self, devices: &Devices) -> Vec<usize> {
        (0..devices.list.len())
            .filter(|i| self.enforcement(devices.list[*i].enrollment_id()).is_some())
            .collect()
    }
}

/// The operator on `manifests` (polled every 250 ms) and `fleet` enrolled and settled, their
/// sets checked against `plan`'s: where the later tests start.
async fn enrolled(
    work: &Path,
    manifests: &Path,
    fleet: Vec<SimDevice>,
) -> (Operator, Devices, Predicted) {
    let operator = Operator::start(work, manifests, "250ms").await;
    let mut devices = Devices::new(fleet, operator.server());
    devices.sync_all().await;
    devices.settle(&operator).await;
    let predicted = plan(work, manifests, &devices);
    assert_sets_match_plan(&devices, &predicted, "after enrollment");
    (operator, devices, predicted)
}

fn plan(work: &Path, manifests: &Path, devices: &Devices) -> Predicted {
    let inventory = work.join("plan-inventory.json");
    std::fs::write(
        &inventory,
        serde_json::to_vec_pretty(&devices.inventory()).expect("JSON"),
    )
    .expect("write the plan inventory");
    let output = Command::new(BINARY)
        .arg("plan")
        .arg("-f")
        .arg(manifests)
        .arg("--inventory")
        .arg(&inventory)
        .arg("--catalog")
        .arg(newest_catalog_path())
        .args(["--at", &catalog_as_of(), "--output", "json"])
        .output()
        .expect("plan runs");
    assert!(
        output.status.success(),
        "plan failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&output.stdout).expect("plan prints JSON");
    let mut sets = BTreeMap::new();
    let mut payloads = BTreeMap::new();
    let mut reasons = BTreeMap::new();
    for device in json["devices"].as_array().expect("plan lists devices") {
        let id = device["enrollmentId"].as_str().expect("enrollmentId");
        let mut set = BTreeMap::new();
        for declaration in device["declarations"].as_array().expect("declarations") {
            let identifier = declaration["Identifier"].as_str().expect("Identifier");
            set.insert(
                identifier.to_string(),
                (
                    declaration["Type"].as_str().expect("Type").to_string(),
                    declaration["ServerToken"]
                        .as_str()
                        .expect("ServerToken")
                        .to_string(),
                ),
            );
            payloads.insert(identifier.to_string(), declaration["Payload"].clone());
        }
        sets.insert(id.to_string(), set);
        reasons.insert(
            id.to_string(),
            device["reasons"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["reason"].as_str().map(str::to_string))
                .collect(),
        );
    }
    Predicted {
        sets,
        payloads,
        reasons,
        json,
    }
}

/// Every device holds exactly the set `plan` predicts for it.
fn assert_sets_match_plan(devices: &Devices, predicted: &Predicted, when: &str) {
    let mut mismatches = Vec::new();
    for (index, device) in devices.list.iter().enumerate() {
        let id = device.enrollment_id();
        let expected = predicted
            .sets
            .get(id)
            .unwrap_or_else(|| panic!("plan does not list {id}"));
        let held = devices.held(index);
        if &held != expected {
            mismatches.push(format!(
                "{id} ({} {} {}):\n  holds   {held:?}\n  planned {expected:?}",
                device.spec().platform,
                device.spec().model_identifier,
                device.os().version
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{when}: {} of {} devices differ from plan:\n{}",
        mismatches.len(),
        devices.list.len(),
        mismatches.join("\n")
    );
}

/// The deadline the manifests ask for, read from the raw catalog: the posting date of the
/// `AssetSets` entry the enforcement names (version, build when given, listing the device) plus
/// the policy's days, at its local time.
fn expected_deadline(device: &SimDevice, payload: &Value) -> String {
    let spec = device.spec();
    let (key, days, time) = match spec.platform {
        Platform::MacOs => ("macOS", 5, "19:00:00"),
        _ => ("iOS", 3, "18:00:00"),
    };
    let device_id = spec
        .software_update_device_id
        .as_deref()
        .expect("a catalog device id");
    let bytes = std::fs::read(newest_catalog_path()).expect("the catalog fixture");
    let raw: Value = serde_json::from_slice(&bytes).expect("JSON");
    let version = payload["TargetOSVersion"]
        .as_str()
        .expect("TargetOSVersion");
    let build = payload["TargetBuildVersion"].as_str();
    let posted: BTreeSet<&str> = raw["AssetSets"][key]
        .as_array()
        .expect("AssetSets entries")
        .iter()
        .filter(|e| e["ProductVersion"] == version)
        .filter(|e| build.is_none_or(|b| e["Build"] == b))
        .filter(|e| {
            e["SupportedDevices"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d == device_id))
        })
        .filter_map(|e| e["PostingDate"].as_str())
        .collect();
    assert_eq!(
        posted.len(),
        1,
        "{device_id}: one posting date for {version} {build:?}: {posted:?}"
    );
    let day: jiff::civil::Date = posted
        .first()
        .and_then(|d| d.parse().ok())
        .expect("a posting date");
    let deadline = day
        .checked_add(jiff::Span::new().days(days))
        .expect("a date");
    format!("{deadline}T{time}")
}

// ---------------------------------------------------------------------------------------------
// Status JSON
// ---------------------------------------------------------------------------------------------

fn policy<'a>(status: &'a Value, name: &str) -> &'a Value {
    let wanted = format!("UpdatePolicy {NAMESPACE}/{name}");
    status["updatePolicies"]
        .as_array()
        .and_then(|list| list.iter().find(|p| p["name"] == wanted.as_str()))
        .unwrap_or_else(|| panic!("status has no {wanted}: {status:#}"))
}

fn bucket_counts(section: &Value) -> BTreeMap<String, u64> {
    section["devices"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect()
        })
        .unwrap_or_default()
}

fn policy_of(platform: Platform) -> &'static str {
    if platform == Platform::MacOs {
        "macs"
    } else {
        "mobile"
    }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_enroll_get_the_planned_set_install_and_get_enforcement_withdrawn() {
    let started = Instant::now();
    let (work, manifests) = work_with_manifests(MOBILE);
    let operator = Operator::start(work.path(), &manifests, "2s").await;
    let mut fleet = fleet(12, 8, 10, 7);
    fleet.push(mac_on_macos_14());
    let mut devices = Devices::new(fleet, operator.server());
    let n = devices.list.len();

    // Enrollment: every first check-in gets the bootstrap set (status subscriptions to what
    // every DDM device reports, and an activation for them), and reports.
    let bootstrap: BTreeMap<String, (String, String)> =
        ddm_update_operator::operator::bootstrap_declarations()
            .into_iter()
            .map(|d| {
                (
                    d.identifier,
                    (d.declaration_type.to_string(), d.server_token),
                )
            })
            .collect();
    let first = devices.sync_all().await;
    for (index, outcome) in first.iter().enumerate() {
        let id = devices.list[index].enrollment_id().to_string();
        assert!(outcome.declarations_changed, "{id}: first check-in");
        assert_eq!(
            devices.held(index),
            bootstrap,
            "{id}: a new enrollment gets the bootstrap set"
        );
        let report = outcome
            .report
            .as_ref()
            .unwrap_or_else(|| panic!("{id}: the first check-in reports"));
        let model = report.pointer("/StatusItems/device/model/identifier");
        assert_eq!(
            model.and_then(Value::as_str),
            Some(devices.list[index].spec().model_identifier.as_str()),
            "{id}: the first report says what the device is"
        );
        assert!(
            report
                .pointer("/StatusItems/device/operating-system/version")
                .is_some(),
            "{id}: the first report says what the device runs"
        );
    }

    // The operator learns the devices (a pass 0.5 s after the reports) and re-resolves; the
    // devices' sets change from the bootstrap set to the resolved one.
    let enrolled = devices.settle(&operator).await;
    let changed = (0..n).filter(|i| devices.held(*i) != bootstrap).count();
    assert_eq!(
        changed, n,
        "every device's set moved on from the bootstrap set"
    );

    let predicted = plan(work.path(), &manifests, &devices);
    assert_sets_match_plan(&devices, &predicted, "after enrollment");

    // The fleet must exercise the interesting paths: enforcements on every platform, devices
    // already up to date, devices the operator cannot enforce on (an OS too old for the
    // declaration, a Mac that reports no board id).
    let with_enforcement = predicted.enforced(&devices);
    for platform in [Platform::Ios, Platform::IpadOs, Platform::MacOs] {
        assert!(
            with_enforcement
                .iter()
                .any(|i| devices.list[*i].spec().platform == platform),
            "the fleet (seed 7) has a {platform} device with an enforcement; pick another seed"
        );
    }
    let up_to_date = predicted
        .reasons
        .values()
        .filter(|r| r.iter().any(|r| r == "UpToDate"))
        .count();
    assert!(up_to_date > 0, "some devices already run their target");

    let out_of_reach = predicted
        .reasons
        .iter()
        .filter(|(id, r)| predicted.enforcement(id).is_none() && !r.iter().any(|r| r == "UpToDate"))
        .count();
    assert!(out_of_reach > 1, "some devices cannot take an enforcement");
    assert_eq!(
        predicted.reasons["E2E-MAC-ON-14"],
        ["DeviceIdUnknown"],
        "a Mac that reports no board id gets no enforcement"
    );

    // The enforcement the operator serves is the one plan printed, payload and all; the device
    // took it as valid.
    for index in &with_enforcement {
        let device = &devices.list[*index];
        let (identifier, payload) = predicted
            .enforcement(device.enrollment_id())
            .expect("enforced");
        let served: Value = serde_json::from_str(
            &operator
                .client
                .get(format!(
                    "{}/ddm/declaration/configuration/{identifier}",
                    operator.root
                ))
                .header("X-Enrollment-ID", device.enrollment_id())
                .send()
                .await
                .expect("GET the declaration")
                .text()
                .await
                .expect("a body"),
        )
        .expect("a declaration");
        assert_eq!(&served["Payload"], payload, "{identifier}");
        assert_eq!(served["Type"], ENFORCEMENT_TYPE);
        let held = device.declaration(identifier).expect("held");
        assert!(held.active, "{identifier} is active on the device");
        assert_eq!(held.valid, "valid", "{identifier}: {:?}", held.reasons);
        assert_eq!(
            payload["TargetLocalDateTime"].as_str(),
            Some(expected_deadline(device, payload).as_str()),
            "{}: the deadline is the release's posting date + the policy's days, whatever the clock says",
            device.enrollment_id()
        );
        assert!(
            payload["TargetOSVersion"]
                .as_str()
                .and_then(|v| v.parse::<OsVersion>().ok())
                .is_some_and(|v| v > device.os().version),
            "{}: the target is newer than what it runs: {payload}",
            device.enrollment_id()
        );
    }

    // Each device's policy, and where it stands when that does not depend on an install:
    // already on its target (compliant) or out of the policy's reach (not applicable).
    let standing: Vec<(&str, Option<&str>)> = devices
        .list
        .iter()
        .map(|device| {
            let id = device.enrollment_id();
            let fixed = if predicted.enforcement(id).is_some() {
                None
            } else if predicted.reasons[id].iter().any(|r| r == "UpToDate") {
                Some("compliant")
            } else {
                Some("notApplicable")
            };
            (policy_of(device.spec().platform), fixed)
        })
        .collect();
    // The expected buckets per policy, with the enforced devices in `state(index)`.
    let expected_counts = |state: &dyn Fn(usize) -> &'static str| {
        let mut expected: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
        for (index, (policy, fixed)) in standing.iter().enumerate() {
            let bucket = fixed.unwrap_or_else(|| state(index));
            *expected
                .entry(policy)
                .or_default()
                .entry(bucket.to_string())
                .or_default() += 1;
        }
        expected
    };

    // Status after enrollment: the device counts per policy are exact, the generated targets are
    // the ones plan prints.
    let status = operator.status().await;
    assert_eq!(status["ready"], true);
    assert_eq!(status["devices"]["total"], n);
    assert_eq!(status["devices"]["reported"], n);
    assert_eq!(status["devices"]["withEnforcement"], with_enforcement.len());
    let planned_targets: BTreeSet<(String, String, String)> = predicted.json["enforcementTargets"]
        .as_array()
        .expect("enforcementTargets")
        .iter()
        .map(|t| {
            (
                t["metadata"]["name"].as_str().unwrap_or("").to_string(),
                t["spec"]["targetOSVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                t["spec"]["targetLocalDateTime"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    let served_targets: BTreeSet<(String, String, String)> = ["mobile", "macs"]
        .iter()
        .flat_map(|p| policy(&status, p)["targets"].as_array().cloned())
        .flatten()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or("").to_string(),
                t["version"].as_str().unwrap_or("").to_string(),
                t["deadline"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        served_targets, planned_targets,
        "status lists the EnforcementTargets plan generates"
    );
    // Devices holding an enforcement they have not started on are pending.
    let expected = expected_counts(&|_| "pending");
    for name in ["mobile", "macs"] {
        assert_eq!(
            bucket_counts(policy(&status, name)),
            expected[name],
            "UpdatePolicy {name} after enrollment"
        );
    }

    // Some of the enforced devices fail every install: one per platform.
    let mut failing: BTreeSet<usize> = BTreeSet::new();
    for platform in [Platform::Ios, Platform::IpadOs, Platform::MacOs] {
        if let Some(index) = with_enforcement
            .iter()
            .find(|i| devices.list[**i].spec().platform == platform)
        {
            failing.insert(*index);
            devices.list[*index].spec_mut().failure_mode = FailureMode::Always;
        }
    }
    let succeeding: Vec<usize> = with_enforcement
        .iter()
        .copied()
        .filter(|i| !failing.contains(i))
        .collect();
    assert!(
        !succeeding.is_empty(),
        "some enforced devices install successfully"
    );

    // Installs: every device advances one step per round and checks in, and the operator
    // catches up. Steps are none → downloading → prepared → installing → restart (or failed), so
    // after round k every enforced device is in state k and the status document says so.
    let rounds: [(&str, InstallState); 3] = [
        ("downloading", InstallState::Downloading),
        ("prepared", InstallState::Prepared),
        ("installing", InstallState::Installing),
    ];
    let mut round_times = Vec::new();
    for (bucket, install_state) in rounds {
        for device in &mut devices.list {
            device.advance();
        }
        round_times.push(devices.settle(&operator).await);
        for index in &with_enforcement {
            assert_eq!(
                devices.list[*index].install_state(),
                install_state,
                "{}",
                devices.list[*index].enrollment_id()
            );
        }
        let status = operator.status().await;
        let expected = expected_counts(&|_| bucket);
        for name in ["mobile", "macs"] {
            assert_eq!(
                bucket_counts(policy(&status, name)),
                expected[name],
                "UpdatePolicy {name} while the enforced devices are {bucket}"
            );
        }
    }
    for device in &mut devices.list {
        device.advance();
    }
    round_times.push(devices.settle(&operator).await);
    for index in &failing {
        assert_eq!(
            devices.list[*index].install_state(),
            InstallState::Failed,
            "{}",
            devices.list[*index].enrollment_id()
        );
    }
    for index in &succeeding {
        let device = &devices.list[*index];
        assert_eq!(device.install_state(), InstallState::None);
        assert_eq!(device.installs_completed(), 1, "{}", device.enrollment_id());
    }

    // Every successful device runs its target, and its enforcement is withdrawn: gone from the
    // device, and from what it reports.
    for index in &succeeding {
        let device = &devices.list[*index];
        let id = device.enrollment_id();
        let (identifier, payload) = predicted.enforcement(id).expect("enforced");
        assert_eq!(
            device.os().version.numeric(),
            payload["TargetOSVersion"].as_str().unwrap_or_default(),
            "{id} runs the target"
        );
        if let Some(build) = payload["TargetBuildVersion"].as_str() {
            assert_eq!(device.os().running_build(), build, "{id} runs the build");
        }
        assert!(
            device.declaration(identifier).is_none(),
            "{id}: {identifier} is withdrawn"
        );
        assert!(
            devices
                .held(*index)
                .values()
                .all(|(t, _)| t != ENFORCEMENT_TYPE),
            "{id} holds no enforcement"
        );
        assert!(
            device
                .active_configurations()
                .iter()
                .all(|c| c != identifier),
            "{id}: {identifier} is not active"
        );
        let reported = devices.reported_declarations[*index]
            .as_ref()
            .expect("reported management.declarations");
        assert!(
            !reported.to_string().contains(identifier),
            "{id}: its last management.declarations no longer lists {identifier}: {reported}"
        );
    }
    for index in &failing {
        let device = &devices.list[*index];
        let (identifier, _) = predicted
            .enforcement(device.enrollment_id())
            .expect("enforced");
        assert!(
            device.declaration(identifier).is_some(),
            "{}: a device that has not installed keeps its enforcement",
            device.enrollment_id()
        );
    }

    // The end state is still what plan predicts for the devices as they are now.
    let final_plan = plan(work.path(), &manifests, &devices);
    assert_sets_match_plan(&devices, &final_plan, "after the installs");

    // Status: the successful and up-to-date devices are compliant, the failing ones failed with
    // their reason among the worst, the rest not applicable.
    let status = operator.status().await;
    let expected = expected_counts(&|index| {
        if failing.contains(&index) {
            "failed"
        } else {
            "compliant"
        }
    });
    for name in ["mobile", "macs"] {
        let section = policy(&status, name);
        let counts = bucket_counts(section);
        assert_eq!(counts, expected[name], "UpdatePolicy {name}: {section:#}");
        // `compliant/total` over the devices the policy applies to.
        let applicable: u64 = counts
            .iter()
            .filter(|(state, _)| *state != "notApplicable")
            .map(|(_, n)| n)
            .sum();
        let compliant = counts.get("compliant").copied().unwrap_or(0);
        assert_eq!(section["compliance"], format!("{compliant}/{applicable}"));
        assert_eq!(section["suspended"], false);
        let worst = section["worst"].as_array().expect("worst");
        let failing_here: Vec<&SimDevice> = failing
            .iter()
            .map(|i| &devices.list[*i])
            .filter(|d| policy_of(d.spec().platform) == name)
            .collect();
        assert_eq!(worst.len(), failing_here.len(), "{name} worst: {worst:#?}");
        for device in failing_here {
            let entry = worst
                .iter()
                .find(|w| w["enrollmentId"] == device.enrollment_id())
                .unwrap_or_else(|| panic!("{} is among the worst", device.enrollment_id()));
            assert_eq!(entry["state"], "failed");
            assert_eq!(entry["model"], device.spec().model_identifier.as_str());
            assert_eq!(
                entry["failureReason"], "Installation failed: the update could not be applied.",
                "{entry}"
            );
            assert_eq!(entry["osVersion"], device.os().version.to_string());
        }
    }
    assert_eq!(
        status["devices"]["withEnforcement"],
        failing.len(),
        "only the failing devices still have an enforcement"
    );

    // Metrics: every report the devices sent was counted, and the state gauges agree.
    let metrics = operator.get_text("/metrics").await;
    let sent: u64 = devices.list.iter().map(SimDevice::reports_sent).sum();
    assert_eq!(
        metric_sum(&metrics, "ddm_update_operator_status_reports_total"),
        sent as f64,
        "the status report counter counts every report"
    );
    assert_eq!(
        metric_sum(&metrics, "ddm_update_operator_devices"),
        n as f64,
        "the state gauges add up to the fleet"
    );
    let failed_gauge: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("ddm_update_operator_devices{") && l.contains("state=\"failed\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(failed_gauge, failing.len() as f64);
    // The compliance ratio per policy is the status's compliant/applicable.
    let status = operator.status().await;
    for section in status["updatePolicies"].as_array().expect("policies") {
        let name = section["name"].as_str().expect("name");
        let (compliant, applicable) = section["compliance"]
            .as_str()
            .and_then(|c| c.split_once('/'))
            .and_then(|(a, b)| Some((a.parse::<f64>().ok()?, b.parse::<f64>().ok()?)))
            .expect("compliant/applicable");
        let ratio = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "ddm_update_operator_compliance_ratio{{source=\"{name}\"}} "
                ))
            })
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no compliance ratio for {name}"));
        let expected = if applicable == 0.0 {
            1.0
        } else {
            compliant / applicable
        };
        assert!(
            (ratio - expected).abs() < 1e-9,
            "{name}: {ratio} vs {expected}"
        );
    }

    eprintln!(
        "{n} devices ({} enforced, {} failing; plan reasons {}); enrolled and settled in {enrolled:?}; install rounds settled in {round_times:?}; {sent} reports; {:?} in all",
        with_enforcement.len(),
        failing.len(),
        predicted.json["summary"]["reasons"],
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_and_suspending_a_policy_in_the_watched_folder() {
    const POLL: Duration = Duration::from_millis(250);
    let started = Instant::now();
    let mut mobile = MOBILE;
    let (work, manifests) = work_with_manifests(mobile);
    let (operator, mut devices, before) =
        enrolled(work.path(), &manifests, fleet(6, 4, 0, 11)).await;
    let n = devices.list.len();
    let enforced = before.enforced(&devices);
    assert!(
        !enforced.is_empty(),
        "the fleet (seed 11) has devices with an enforcement"
    );
    let deadlines = |status: &Value| -> BTreeSet<String> {
        policy(status, "mobile")["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["deadline"].as_str().map(str::to_string))
            .collect()
    };
    let old_deadlines = deadlines(&operator.status().await);

    // Edit: the deadline moves from 3 to 9 days after posting. The operator sees it within a few
    // poll intervals and the devices get new enforcements.
    mobile.days_after_posting = 9;
    let edited = Instant::now();
    write_mobile_policy(&manifests, mobile);
    loop {
        let now = deadlines(&operator.status().await);
        if !now.is_empty() && now.is_disjoint(&old_deadlines) {
            break;
        }
        assert!(
            edited.elapsed() < POLL * 20,
            "the edit was not picked up within 20 poll intervals: {now:?}\n{}",
            operator.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let noticed = edited.elapsed();
    assert!(
        noticed < POLL * 12,
        "re-resolved {noticed:?} after the edit; the poll interval is {POLL:?}"
    );
    let tokens: Vec<Option<String>> = devices
        .list
        .iter()
        .map(|d| d.declarations_token().map(str::to_string))
        .collect();
    devices.settle(&operator).await;
    let after_edit = plan(work.path(), &manifests, &devices);
    assert_sets_match_plan(&devices, &after_edit, "after the edit");
    for index in &enforced {
        let id = devices.list[*index].enrollment_id();
        assert_ne!(
            devices.list[*index].declarations_token(),
            tokens[*index].as_deref(),
            "{id}: its set changed"
        );
        let (identifier, payload) = after_edit.enforcement(id).expect("still enforced");
        assert_ne!(
            Some(identifier),
            before.enforcement(id).map(|(i, _)| i),
            "{id}: a new enforcement"
        );
        let (_, old) = before.enforcement(id).expect("enforced before");
        assert_eq!(payload["TargetOSVersion"], old["TargetOSVersion"]);
        assert_ne!(payload["TargetLocalDateTime"], old["TargetLocalDateTime"]);
    }

    // Suspend, and move the deadline again in the same edit: nothing changes for the devices
    // while the policy is suspended, even as they report and the operator re-resolves.
    mobile.suspend = true;
    mobile.days_after_posting = 12;
    let suspended_at = Instant::now();
    write_mobile_policy(&manifests, mobile);
    loop {
        if policy(&operator.status().await, "mobile")["suspended"] == true {
            break;
        }
        assert!(
            suspended_at.elapsed() < POLL * 20,
            "the suspension was not picked up within 20 poll intervals\n{}",
            operator.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let frozen_tokens: Vec<Option<String>> = devices
        .list
        .iter()
        .map(|d| d.declarations_token().map(str::to_string))
        .collect();
    let frozen_sets: Vec<_> = (0..n).map(|i| devices.held(i)).collect();
    let passes_before = operator
        .metric("ddm_update_operator_resolve_passes_total")
        .await;
    // Reports while suspended: each device starts downloading (a changed install state).
    for device in &mut devices.list {
        device.advance();
    }
    devices.settle(&operator).await;
    tokio::time::sleep(POLL * 4).await;
    devices.sync_all().await;
    let passes_after = operator
        .metric("ddm_update_operator_resolve_passes_total")
        .await;
    assert!(
        passes_after > passes_before,
        "the operator re-resolved while suspended ({passes_before} → {passes_after})"
    );
    for (index, device) in devices.list.iter().enumerate() {
        assert_eq!(
            device.declarations_token().map(str::to_string),
            frozen_tokens[index],
            "{}: its DeclarationsToken does not change while the policy is suspended",
            device.enrollment_id()
        );
        assert_eq!(devices.held(index), frozen_sets[index]);
    }

    // Resume: the pending change (12 days) is applied.
    mobile.suspend = false;
    let resumed = Instant::now();
    write_mobile_policy(&manifests, mobile);
    loop {
        devices.sync_all().await;
        if enforced
            .iter()
            .any(|i| devices.list[*i].declarations_token().map(str::to_string) != frozen_tokens[*i])
        {
            break;
        }
        assert!(
            resumed.elapsed() < POLL * 20,
            "resuming was not picked up within 20 poll intervals\n{}",
            operator.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    devices.settle(&operator).await;
    let after_resume = plan(work.path(), &manifests, &devices);
    assert_sets_match_plan(&devices, &after_resume, "after resuming");
    for index in &enforced {
        let id = devices.list[*index].enrollment_id();
        let (_, payload) = after_resume.enforcement(id).expect("still enforced");
        let (_, edited) = after_edit.enforcement(id).expect("enforced");
        assert_ne!(
            payload["TargetLocalDateTime"],
            edited["TargetLocalDateTime"]
        );
    }
    assert_eq!(
        policy(&operator.status().await, "mobile")["suspended"],
        false
    );
    eprintln!(
        "{n} devices, {} enforced; edit noticed after {noticed:?}; {:?} in all",
        enforced.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_policy_declared_orphan_leaves_its_devices_as_they_are() {
    const POLL: Duration = Duration::from_millis(250);
    let started = Instant::now();
    let (work, manifests) = work_with_manifests(Mobile {
        orphan: true,
        ..MOBILE
    });
    let (operator, mut devices, enrolled) =
        enrolled(work.path(), &manifests, fleet(4, 2, 2, 11)).await;
    let n = devices.list.len();
    let mobile: Vec<usize> = (0..n)
        .filter(|i| policy_of(devices.list[*i].spec().platform) == "mobile")
        .collect();
    assert!(
        mobile.iter().any(|i| enrolled
            .enforcement(devices.list[*i].enrollment_id())
            .is_some()),
        "the fleet (seed 11) has an enforced mobile device"
    );
    let before: Vec<_> = (0..n).map(|i| devices.held(i)).collect();
    let orphaned =
        json!([{"by": format!("UpdatePolicy {NAMESPACE}/mobile"), "devices": mobile.len()}]);

    // The policy's file goes: the operator notices within a few polls and freezes its devices.
    let removed = Instant::now();
    std::fs::remove_file(manifests.join("policy-mobile.yaml")).expect("remove the policy");
    loop {
        let status = operator.status().await;
        if status["orphaned"] == orphaned {
            assert_eq!(status["devices"]["frozen"]["orphaned"], mobile.len());
            break;
        }
        assert!(
            removed.elapsed() < POLL * 20,
            "the removal was not picked up within 20 poll intervals: {status:#}\n{}",
            operator.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        operator.log_tail().contains("deletionPolicy Orphan"),
        "the log says so:\n{}",
        operator.log_tail()
    );
    // Every device keeps what it had while reporting, though without the policy `plan` would
    // take the mobile policy's declarations away.
    for device in &mut devices.list {
        device.advance();
    }
    devices.settle(&operator).await;
    let without = plan(work.path(), &manifests, &devices);
    let check_kept = |devices: &Devices, when: &str| {
        for (index, was) in before.iter().enumerate() {
            assert_eq!(
                &devices.held(index),
                was,
                "{}: keeps its declarations {when}",
                devices.list[index].enrollment_id()
            );
        }
    };
    check_kept(&devices, "after its policy's file was removed");
    assert!(
        mobile
            .iter()
            .all(|i| without.sets[devices.list[*i].enrollment_id()] != before[*i]),
        "without the freeze every mobile device would lose something"
    );

    // A restart on the same data: still kept.
    drop(operator);
    let operator = Operator::start(work.path(), &manifests, "250ms").await;
    devices.server = operator.server();
    devices.settle(&operator).await;
    check_kept(&devices, "after a restart");
    let status = operator.status().await;
    assert_eq!(status["orphaned"], orphaned, "{status:#}");

    // The policy comes back (with another deadline): its devices are resolved normally.
    write_mobile_policy(
        &manifests,
        Mobile {
            days_after_posting: 9,
            ..MOBILE
        },
    );
    let back = Instant::now();
    loop {
        let status = operator.status().await;
        if status["orphaned"] == json!([]) {
            assert_eq!(status["devices"]["frozen"]["orphaned"], 0);
            break;
        }
        assert!(
            back.elapsed() < POLL * 20,
            "the policy's return was not picked up within 20 poll intervals: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    devices.settle(&operator).await;
    let after = plan(work.path(), &manifests, &devices);
    assert_sets_match_plan(&devices, &after, "after the policy came back");
    eprintln!(
        "{n} devices, {} orphaned and taken back; {:?} in all",
        mobile.len(),
        started.elapsed()
    );
}

/// Issue 12, item 6: an object edited into an invalid spec keeps its last valid one, object by
/// object (another object's valid edit in the same poll takes effect), across a restart, until
/// it is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_keeps_the_last_valid_spec_and_holds_back_nothing_else() {
    const POLL: Duration = Duration::from_millis(250);
    let started = Instant::now();
    let (work, manifests) = work_with_manifests(MOBILE);
    let (operator, mut devices, enrolled) =
        enrolled(work.path(), &manifests, fleet(4, 2, 4, 11)).await;
    let n = devices.list.len();
    let mobile: Vec<usize> = (0..n)
        .filter(|i| policy_of(devices.list[*i].spec().platform) == "mobile")
        .collect();
    let macs: Vec<usize> = (0..n).filter(|i| !mobile.contains(i)).collect();
    let ids: Vec<String> = devices
        .list
        .iter()
        .map(|d| d.enrollment_id().to_string())
        .collect();
    let enforced = |indices: &[usize], predicted: &Predicted| -> Vec<usize> {
        indices
            .iter()
            .copied()
            .filter(|i| predicted.enforcement(&ids[*i]).is_some())
            .collect()
    };
    let enforced_mobile = enforced(&mobile, &enrolled);
    assert!(
        !enforced_mobile.is_empty() && !enforced(&macs, &enrolled).is_empty(),
        "the fleet (seed 11) has enforced devices under both policies"
    );
    let before: Vec<_> = (0..n).map(|i| devices.held(i)).collect();
    let mac_deadlines = |status: &Value| -> BTreeSet<String> {
        policy(status, "macs")["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["deadline"].as_str().map(str::to_string))
            .collect()
    };
    let old_mac_deadlines = mac_deadlines(&operator.status().await);

    // What the devices should hold from now on: the mobile policy as it was (its last valid
    // spec), the Macs' due 8 days after posting instead of 5.
    let expected = work.path().join("expected");
    write_manifests(&expected, MOBILE);
    write_macs_policy(&expected, 8);

    // The mobile policy gets a time zone that does not exist (and a new deadline with it); the
    // Macs' policy a valid edit.
    let invalid = Mobile {
        days_after_posting: 9,
        time_zone: "Mars/Base",
        ..MOBILE
    };
    write_mobile_policy(&manifests, invalid);
    write_macs_policy(&manifests, 8);
    let edited = Instant::now();
    loop {
        let status = operator.status().await;
        let reported = status["invalidObjects"]
            .as_array()
            .is_some_and(|list| !list.is_empty());
        let macs_now = mac_deadlines(&status);
        if reported && !macs_now.is_empty() && macs_now.is_disjoint(&old_mac_deadlines) {
            break;
        }
        assert!(
            edited.elapsed() < POLL * 20,
            "the edits were not picked up within 20 poll intervals: {status:#}\n{}",
            operator.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let noticed = edited.elapsed();
    let check_status = |status: &Value, when: &str| {
        let list = status["invalidObjects"].as_array().expect("a list");
        assert_eq!(list.len(), 1, "{when}: {status:#}");
        let held = &list[0];
        assert_eq!(held["object"], format!("UpdatePolicy {NAMESPACE}/mobile"));
        assert_eq!(
            held["inForce"]["generation"], 1,
            "{when}: the first version is in force: {held:#}"
        );
        let message = held["message"].as_str().unwrap_or_default();
        for part in [
            "spec.deadline.timeZone",
            "Mars/Base",
            "generation 1",
            "stays in force",
        ] {
            assert!(message.contains(part), "{when}: names {part:?}: {message}");
        }
        assert!(
            status["manifestProblems"].as_array().is_some_and(|p| p
                .iter()
                .any(|p| p.as_str().is_some_and(|p| p.contains("Mars/Base")))),
            "{when}: {status:#}"
        );
        // The policy still resolves, from its last valid spec.
        assert!(
            !policy(status, "mobile")["targets"]
                .as_array()
                .is_none_or(Vec::is_empty),
            "{when}: the mobile policy still has targets: {status:#}"
        );
    };
    let want = |devices: &Devices, when: &str| {
        let predicted = plan(work.path(), &expected, devices);
        assert_sets_match_plan(devices, &predicted, when);
        for i in &mobile {
            assert_eq!(
                devices.held(*i),
                before[*i],
                "{when}: {} keeps exactly what it held",
                devices.list[*i].enrollment_id()
            );
        }
    };
    devices.settle(&operator).await;
    want(&devices, "after the edits");
    assert!(
        macs.iter().any(|i| devices.held(*i) != before[*i]),
        "the Macs' edit changed some Mac's set"
    );
    check_status(&operator.status().await, "after the edits");

    // A restart on the same data, the policy still invalid: the same resources in force.
    drop(operator);
    let operator = Operator::start(work.path(), &manifests, "250ms").await;
    devices.server = operator.server();
    for device in &mut devices.list {
        device.advance();
    }
    devices.settle(&operator).await;
    want(&devices, "after a restart");
    check_status(&operator.status().await, "after a restart");

    // Fixed (the time zone back, the new deadline kept): the new spec takes effect.
    let fixed = Mobile {
        days_after_posting: 9,
        ..MOBILE
    };
    write_mobile_policy(&manifests, fixed);
    let fixed_at = Instant::now();
    loop {
        let status = operator.status().await;
        if status["invalidObjects"] == json!([]) {
            break;
        }
        assert!(
            fixed_at.elapsed() < POLL * 20,
            "the fix was not picked up within 20 poll intervals: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    devices.settle(&operator).await;
    let after = plan(work.path(), &manifests, &devices);
    assert_sets_match_plan(&devices, &after, "after the fix");
    assert!(
        enforced(&mobile, &after)
            .iter()
            .any(|i| devices.held(*i) != before[*i]),
        "the fixed spec moved a mobile device's deadline"
    );
    eprintln!(
        "{n} devices; an invalid and a valid edit noticed after {noticed:?}; {:?} in all",
        started.elapsed()
    );
}

/// Kubernetes stops a pod with SIGTERM: the operator finishes its requests and exits 0, and its
/// store opens again cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_operator_cleanly() {
    let (work, manifests) = work_with_manifests(MOBILE);
    let mut operator = Operator::start(work.path(), &manifests, "1s").await;
    let pid = operator.child.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = operator.child.try_wait().expect("child status") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM:\n{}",
            operator.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}:\n{}", operator.log_tail());
    assert!(operator.log_tail().contains("stopping"));
    // The next start finds the same store.
    let again = Operator::start(work.path(), &manifests, "1s").await;
    assert_eq!(again.status().await["ready"], true);
}

/// The MDM around the operator, end to end through the binary: NanoMDM's webhook makes a Mac
/// known (Authenticate, TokenUpdate) and its DeviceInformation answer gives its board id, chip
/// and supervision; the Mac is then resolved and served an enforcement, NanoMDM is asked once to
/// sync it, the status counts it as lacking a bootstrap token; its answer to that command ends
/// the pending one; its CheckOut withdraws the set, is counted, and brings no new command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mac_learned_from_nanomdm_is_served_flagged_and_withdrawn_at_checkout() {
    use crate::support::nanomdm::{NanoMdmFake, Options};
    use crate::support::nanomdm_webhook::{
        DeviceFacts, authenticate_plist, checkin_event, checkout_plist, event, post,
        token_update_plist,
    };

    const MAC: &str = "0000FE00-5A5A5A5A5A5A5A5A";
    let mdm = NanoMdmFake::start(Options::default()).await;
    let (work, manifests) = work_with_manifests(MOBILE);
    let key_file = work.path().join("nanomdm-api-key");
    std::fs::write(&key_file, mdm.api_key()).expect("key file");
    let key_path = key_file.to_str().expect("a UTF-8 path");
    let operator = Operator::start_with(
        work.path(),
        &manifests,
        "1s",
        &[
            "--nanomdm-url",
            mdm.url(),
            "--nanomdm-api-key-file",
            key_path,
        ],
    )
    .await;
    let webhook = format!("{}/webhook/nanomdm", operator.root);
    let webhook = webhook.as_str();
    let client = &operator.client;
    let send = |body: Vec<u8>| async move {
        let (status, text) = post(client, webhook, body, None).await;
        assert_eq!(status, 200, "{text}");
    };
    let now = jiff::Timestamp::now();
    let second = jiff::SignedDuration::from_secs(1);
    let checkin = |topic: &str, plist: &[u8], at: jiff::Timestamp| {
        checkin_event(topic, MAC, at, &format!("{topic}-{at}"), plist)
    };
    send(checkin(
        "mdm.Authenticate",
        &authenticate_plist(&DeviceFacts::mac(MAC)),
        now,
    ))
    .await;
    send(checkin(
        "mdm.TokenUpdate",
        &token_update_plist(MAC),
        now + second,
    ))
    .await;
    // The operator's DeviceInformation, answered (Apple's QueryResponses keys).
    let mut answers = plist::Dictionary::new();
    answers.insert("IsSupervised".into(), plist::Value::Boolean(true));
    answers.insert("IsAppleSilicon".into(), plist::Value::Boolean(true));
    answers.insert("SoftwareUpdateDeviceID".into(), "J413AP".into());
    answers.insert("ProductName".into(), "Mac14,2".into());
    let mut report = plist::Dictionary::new();
    let uuid = "ddm-update-operator.DeviceInformation.0123456789abcdef";
    report.insert("CommandUUID".into(), uuid.into());
    report.insert("QueryResponses".into(), plist::Value::Dictionary(answers));
    report.insert("Status".into(), "Acknowledged".into());
    report.insert("UDID".into(), MAC.into());
    let connect = |uuid: &str, raw: &[u8], at: jiff::Timestamp| {
        use base64::Engine as _;
        let inner = json!({
            "ids": {"id": MAC, "type": "Device"},
            "udid": MAC,
            "status": "Acknowledged",
            "command_uuid": uuid,
            "raw_payload": base64::engine::general_purpose::STANDARD.encode(raw),
        });
        event(
            "mdm.Connect",
            at,
            &format!("connect-{uuid}"),
            "acknowledge_event",
            inner,
        )
    };
    let mut raw = Vec::new();
    plist::Value::Dictionary(report)
        .to_writer_xml(&mut raw)
        .expect("a plist");
    send(connect(uuid, &raw, now + second * 2)).await;

    // Served: the set names an enforcement.
    let items = |operator: &Operator| {
        let request = operator
            .client
            .get(format!("{}/ddm/declaration-items", operator.root))
            .header("x-enrollment-id", MAC);
        async move {
            let response = request.send().await.expect("declaration-items answers");
            let text = response.text().await.unwrap_or_default();
            text.contains("\"ddm.enforce.")
        }
    };
    let started = Instant::now();
    while !items(&operator).await {
        assert!(
            started.elapsed() < SETTLE_CAP,
            "the Mac learned from NanoMDM got no enforcement:\n{}",
            operator.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // NanoMDM is asked once to sync it.
    let started = Instant::now();
    while mdm.count(MAC, "DeclarativeManagement") == 0 {
        assert!(
            started.elapsed() < SETTLE_CAP,
            "no sync command:\n{}",
            operator.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let macs_missing = |status: &Value| {
        status["updatePolicies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"].as_str().is_some_and(|n| n.ends_with("/macs")))
            .filter_map(|p| p["bootstrapTokenMissing"].as_u64())
            .sum::<u64>()
    };
    let started = Instant::now();
    while macs_missing(&operator.status().await) != 1 {
        assert!(
            started.elapsed() < SETTLE_CAP,
            "an Apple-silicon Mac without an escrowed token is not counted: {}",
            operator.status().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its answer to the sync command ends the pending one (NanoMDM's mdm.Connect).
    let queued = mdm.queue(MAC);
    let sync = queued
        .iter()
        .find(|c| c.request_type == "DeclarativeManagement")
        .expect("the sync command is queued");
    let mut ack = plist::Dictionary::new();
    ack.insert("CommandUUID".into(), sync.command_uuid.clone().into());
    ack.insert("Status".into(), "Acknowledged".into());
    ack.insert("UDID".into(), MAC.into());
    let mut raw = Vec::new();
    plist::Value::Dictionary(ack)
        .to_writer_xml(&mut raw)
        .expect("a plist");
    send(connect(&sync.command_uuid, &raw, now + second * 3)).await;
    let started = Instant::now();
    while operator
        .metric("ddm_update_operator_nanomdm_pending_commands")
        .await
        != 0.0
    {
        assert!(
            started.elapsed() < SETTLE_CAP,
            "the answered command is still pending"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let commands_before = mdm.count(MAC, "DeclarativeManagement");

    // CheckOut: withdrawn, counted, and no command for a device that left.
    send(checkin(
        "mdm.CheckOut",
        &checkout_plist(MAC),
        now + second * 4,
    ))
    .await;
    assert!(
        !items(&operator).await,
        "a checked-out Mac keeps its enforcement"
    );
    let started = Instant::now();
    loop {
        let status = operator.status().await;
        if status["devices"]["checkedOut"] == 1 && macs_missing(&status) == 0 {
            break;
        }
        assert!(
            started.elapsed() < SETTLE_CAP,
            "checkout not in the status: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(QUIET + Duration::from_secs(2)).await;
    assert!(
        !items(&operator).await,
        "a later pass served the checked-out Mac again"
    );
    assert_eq!(
        mdm.count(MAC, "DeclarativeManagement"),
        commands_before,
        "NanoMDM was asked to sync a device that left"
    );
}

/// `devices show` and `devices list` through the binary against a running operator, after a
/// small fleet checked in and reported: each device is explained with what it really holds
/// (the deadline in its enforcement is the one the view shows, and whose it is), found by serial
/// number too; lists page and filter; an unknown device is an error naming what was searched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_show_explains_what_a_device_holds_and_reported() {
    let (work, manifests) = work_with_manifests(MOBILE);
    let (operator, devices, _) = enrolled(work.path(), &manifests, fleet(4, 3, 0, 71)).await;
    let cli = |args: &[&str]| {
        let output = Command::new(BINARY)
            .arg("devices")
            .args(args)
            .args(["--server", &operator.admin])
            .output()
            .expect("the CLI runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    // Each device's view agrees with what it holds.
    let mut explained_with_enforcement = 0;
    for device in &devices.list {
        let id = device.enrollment_id();
        let (code, out, err) = cli(&["show", id, "-o", "json"]);
        assert_eq!(code, Some(0), "{id}: {err}");
        let view: Value = serde_json::from_str(&out).expect("a device view");
        assert_eq!(view["enrollmentId"], id);
        assert_eq!(view["declarations"]["inSync"], true, "{id}: {view}");
        assert!(view["lastReport"].is_string(), "{id} reported: {view}");
        assert_eq!(
            view["identity"]["facts"]["osVersion"]["source"], "ddmReport",
            "{id}: what it runs came from its own report: {view}"
        );
        let held = device.held_enforcements();
        if !held.is_empty() {
            assert!(
                view["report"]["installState"].is_string(),
                "{id}: an enforced device reports its install state: {view}"
            );
        }
        let served = view["declarations"]["enforcements"]
            .as_array()
            .expect("enforcements");
        assert_eq!(served.len(), held.len(), "{id}: {view}");
        for (held, served) in held.iter().zip(served) {
            assert_eq!(served["identifier"], held.identifier.as_str());
            assert_eq!(
                served["deadline"],
                held.deadline.strftime("%Y-%m-%dT%H:%M:%S").to_string()
            );
            assert_eq!(served["version"], held.target_version.as_str());
            assert_eq!(served["deadlineOf"], "rollout", "{id}: one pass, one ring");
            let resource = view["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["declaration"] == held.identifier.as_str())
                .unwrap_or_else(|| panic!("{id}: the resource behind {}", held.identifier));
            assert_eq!(resource["deadline"], served["deadline"]);
            assert_eq!(resource["decision"], "enforce");
            explained_with_enforcement += 1;
        }
        assert!(
            view["explanation"]
                .as_array()
                .is_some_and(|e| !e.is_empty()),
            "{id}: {view}"
        );
    }
    assert!(explained_with_enforcement > 0, "some device is enforced");

    // The table for people, by serial number.
    let first = &devices.list[0];
    let serial = first.spec().serial_number.clone();
    let (code, out, err) = cli(&["show", &serial]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with(&format!("Device {}", first.enrollment_id())),
        "{out}"
    );
    for part in ["Selected by", "FleetGroup", "Resources", "Why"] {
        assert!(out.contains(part), "{part} in:\n{out}");
    }
    assert!(!out.contains('\u{1b}'), "no terminal codes when piped");

    // Lists: every device once across pages of two; a filter keeps to its platform.
    let (code, out, err) = cli(&["list", "--limit", "2", "--all", "-o", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let listed: Value = serde_json::from_str(&out).expect("a list");
    let ids: BTreeSet<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["enrollmentId"].as_str())
        .collect();
    let fleet_ids: BTreeSet<&str> = devices.list.iter().map(|d| d.enrollment_id()).collect();
    assert!(fleet_ids.is_subset(&ids), "{fleet_ids:?} ⊄ {ids:?}");
    let (code, out, err) = cli(&["list", "--platform", "iPadOS", "-o", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let ipads: Value = serde_json::from_str(&out).expect("a list");
    let ipads = ipads["items"].as_array().expect("items");
    assert!(!ipads.is_empty());
    assert!(ipads.iter().all(|i| i["platform"] == "iPadOS"), "{ipads:?}");

    // The catalog file's age (the operator runs on a snapshot file): counted from its newest
    // posting date, so the dashboard and the old-catalog alert see it (it was never set).
    let age = operator
        .metric("ddm_update_operator_catalog_age_seconds")
        .await;
    let snapshot = std::fs::read(newest_catalog_path()).expect("the snapshot");
    let posted = PmvDocument::from_slice(&snapshot)
        .expect("a catalog")
        .newest_posting_date()
        .expect("a posting date")
        .to_zoned(jiff::tz::TimeZone::UTC)
        .expect("a day")
        .timestamp();
    let expected = (jiff::Timestamp::now().as_second() - posted.as_second()) as f64;
    assert!(
        (age - expected).abs() < 3600.0,
        "catalog age {age} s, expected about {expected} s"
    );

    // Bad input: named.
    let (code, _, err) = cli(&["show", "NO-SUCH-DEVICE"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("404") && err.contains("NO-SUCH-DEVICE"),
        "{err}"
    );
    let (code, _, err) = cli(&["list", "--state", "sideways"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("400") && err.contains("state"), "{err}");
    drop(operator);
}
