//! A fleet lived through months of Apple's catalog history on a virtual clock: the operator's
//! real resolver pass, SQLite store and DDM/status/metrics endpoints on loopback, and simulated
//! devices that check in, install at their deadlines (or early, or late), go offline, fail and
//! retry. Every tick it checks what a fleet owner relies on:
//!
//! * a deadline a device was handed (per device, enforcement source and target version, read
//!   from the declarations the device holds) never moves later unless the script changed that
//!   source's spec;
//! * every declaration a device fetches validates against Apple's schemas for its OS, platform
//!   and supervision (through a caller-supplied [`SchemaCheck`]: the validator lives with the
//!   tests);
//! * no enforcement names a release outside the lists the device may use (unsupervised devices
//!   and Macs before macOS 15: `PublicAssetSets` only);
//! * a device that could reach its target runs it by its first handed-out deadline plus a day
//!   (or plus a day from hand-out when that deadline was already past), unless it was offline
//!   or its install failed;
//! * after every pass, the counts per resource and bucket in `/api/v1/status` and in
//!   `/metrics` equal the buckets computed from the simulator's own state.
//!
//! # Time
//!
//! Ticks fall every six hours, plus hourly around every deadline a device holds, at due checks,
//! power-ons (and an hour after), and script edits. Each UTC day starts with a catalog refresh:
//! Apple's answer that day is the newest snapshot not after it (judged as of its own date: the
//! snapshots are the real answers of those days, and Apple rolls expiration dates forward
//! daily), or a scripted outage answer, which goes through the operator's own guard
//! (`catalog::guard::check_replacement`) exactly as a fetched answer does. The fetch transport
//! itself is covered by `tests/it/catalog_fetch.rs`.
//!
//! # Devices
//!
//! Real models of the first snapshot, each in its policy's time zone (devices get
//! `TargetLocalDateTime` without an offset and apply it in their own zone). Apple's servers
//! offer a supervised device `AssetSets` and security improvements; an unsupervised device, or a
//! Mac before macOS 15, only `PublicAssetSets` (a release outside that list fails to download).
//! Installs run at the deadline (`SimDevice::advance` waits in `prepared`); a device powered on
//! after its deadline installs an hour after power-on; some users install earlier, at a fixed
//! share of the time between receiving the enforcement and its deadline. Devices check in when
//! their install state changes, when their set changed (NanoMDM's push), after power-on, and
//! for the daily safety sync (a full report; the operator calls a device stale after 26 hours
//! without one).
//!
//! # Keeping it fast
//!
//! Only devices with something to do check in; a pass runs after the daily refresh, an edit, an
//! install, or a deadline hour, never on an idle tick; schema checks are cached per declaration
//! and OS.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use super::fleet::{Rng, offered_from};
use super::{FailureMode, Fleet, FleetOptions, InstallState, ServerConfig, SimDevice, SimError};
use crate::api::validate::Checked;
use crate::backend::embedded::Embedded;
use crate::backend::store::Store;
use crate::catalog::{AssetSet, Catalog, OsVersion, Platform, PmvDocument, guard};
use crate::clock::Clock;
use crate::http::{AppState, ddm};
use crate::inventory::{Device, EnrollmentType};
use crate::metrics::Metrics;
use crate::pass::{self, PassResult, report};
use crate::resolve::{Reason, Source};

/// Checks one declaration against Apple's schemas for a device; returns the problems.
pub type SchemaCheck = Arc<dyn Fn(&Value, &SchemaTarget) -> Vec<String> + Send + Sync>;

/// The device a declaration is checked for, named as Apple's schemas name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SchemaTarget {
    /// `iOS` (also iPadOS), `macOS`, `tvOS`, `visionOS`.
    pub os: &'static str,
    pub os_version: String,
    /// `supervised` or `device`.
    pub enrollment: &'static str,
}

/// What Apple's catalog answered from a day on.
#[derive(Debug, Clone)]
pub struct Answer {
    pub from: Date,
    pub name: String,
    pub bytes: Arc<Vec<u8>>,
}

/// A change to the manifests at a moment.
#[derive(Debug, Clone)]
pub struct Edit {
    pub at: Timestamp,
    /// What it is, for the log and the table.
    pub what: String,
    /// The manifest file it writes.
    pub file: String,
    pub change: Change,
    /// The resources (`Kind namespace/name`) whose intent this changes: deadlines they handed
    /// out may move from here on.
    pub sources: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum Change {
    /// The file's whole new text.
    Put(String),
    /// Replace exactly one occurrence of `find`.
    Replace { find: String, replace: String },
}

/// How devices behave, per thousand devices unless said otherwise.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// iPhones and iPads on device enrollment (not supervised).
    pub unsupervised_mobile_per_mille: u32,
    /// Macs brought by their users (`fleet: byod`, not supervised, outside the Mac groups).
    pub byod_mac_per_mille: u32,
    /// iPhones labelled `role: vip`.
    pub vip_per_mille: u32,
    /// Users who install before the deadline.
    pub early_per_mille: u32,
    /// Devices with one to three offline spells of two to ten days.
    pub offline_per_mille: u32,
    /// Devices whose first two install attempts of each update fail.
    pub retrying_per_mille: u32,
    /// Devices whose installs always fail.
    pub failing_per_mille: u32,
    /// The safety sync: a full report this long after the last one. `None`: devices report
    /// only when something changes (each report costs a request and a durable write, and a
    /// daily one for every device would be most of the run); the operator then counts a device
    /// idle for 26 hours as stale, and so does the simulator's truth.
    pub safety_sync: Option<SignedDuration>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            unsupervised_mobile_per_mille: 150,
            byod_mac_per_mille: 80,
            vip_per_mille: 60,
            early_per_mille: 300,
            offline_per_mille: 80,
            retrying_per_mille: 30,
            failing_per_mille: 8,
            safety_sync: None,
        }
    }
}

/// Everything a run follows.
#[derive(Debug, Clone)]
pub struct Script {
    pub start: Timestamp,
    pub end: Timestamp,
    /// Apple's answers, by the day they start (sorted); the last one not after a day is that
    /// day's answer.
    pub snapshots: Vec<Answer>,
    /// Days Apple answered something else (one day each).
    pub outages: Vec<Answer>,
    /// Manifest file name → text, at the start.
    pub manifests: BTreeMap<String, String>,
    pub edits: Vec<Edit>,
    /// Devices per platform, drawn from the first snapshot.
    pub fleet: Vec<(Platform, usize)>,
    pub seed: u64,
    pub behaviour: Behaviour,
    /// The zone devices of each platform live in (their policy's).
    pub zones: Vec<(Platform, String)>,
}

/// How a run is observed.
#[derive(Clone, Default)]
pub struct Options {
    /// Apple's schemas; `None` skips that check.
    pub schema: Option<SchemaCheck>,
    /// Log each simulated day's progress to stderr.
    pub progress: bool,
}

/// Assertion failures of one kind: how many, and the first few.
#[derive(Debug, Clone, Default)]
pub struct Failures {
    pub count: u64,
    pub samples: Vec<String>,
}

const SAMPLES: usize = 8;

/// What a run found and measured.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub devices: usize,
    pub days: i64,
    pub ticks: u64,
    pub passes: u64,
    pub check_ins: u64,
    pub requests: u64,
    pub status_reports: u64,
    pub installs: u64,
    /// (device, source, version) rollouts whose deadline plus a day fell in the run and whose
    /// intent did not change meanwhile.
    pub rollouts_due: u64,
    pub compliant_by_deadline: u64,
    /// Not compliant, but offline or failing (the operator shows them stale or failed).
    pub excused_offline: u64,
    pub excused_failed: u64,
    /// Declarations fetched again under an identifier the device held at the time (its
    /// ServerToken changed), plus new enforcement identifiers for a (source, release) the device
    /// already held one for while the source's spec was unchanged.
    pub resent: u64,
    pub catalog_refusals: u64,
    pub edits: Vec<String>,
    /// By kind of assertion.
    pub failures: BTreeMap<&'static str, Failures>,
    pub wall: Duration,
    /// Where the wall time went: check-ins, passes, and reading status back.
    pub in_check_ins: Duration,
    pub in_passes: Duration,
    pub in_status: Duration,
}

impl Outcome {
    fn fail(&mut self, kind: &'static str, what: impl FnOnce() -> String) {
        let entry = self.failures.entry(kind).or_default();
        entry.count += 1;
        if entry.samples.len() < SAMPLES {
            entry.samples.push(what());
        }
    }

    pub fn compliant_percent(&self) -> f64 {
        if self.rollouts_due == 0 {
            100.0
        } else {
            self.compliant_by_deadline as f64 * 100.0 / self.rollouts_due as f64
        }
    }

    pub fn resent_per_device(&self) -> f64 {
        self.resent as f64 / self.devices.max(1) as f64
    }

    /// The README table (Markdown).
    pub fn table(&self) -> String {
        format!(
            "| devices | days | % compliant by deadline (+1 day) | declarations re-sent per device | wall time |\n\
             | --- | --- | --- | --- | --- |\n\
             | {} | {} | {:.1}% ({} of {} rollouts; {} offline, {} failing) | {:.2} | {:.1} s |\n",
            self.devices,
            self.days,
            self.compliant_percent(),
            self.compliant_by_deadline,
            self.rollouts_due,
            self.excused_offline,
            self.excused_failed,
            self.resent_per_device(),
            self.wall.as_secs_f64()
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.table())?;
        writeln!(
            f,
            "\n{} ticks, {} passes ({:.1} s), {} check-ins ({:.1} s; {} requests, {} status reports), status read back in {:.1} s, {} installs, {} catalog answers refused",
            self.ticks,
            self.passes,
            self.in_passes.as_secs_f64(),
            self.check_ins,
            self.in_check_ins.as_secs_f64(),
            self.requests,
            self.status_reports,
            self.in_status.as_secs_f64(),
            self.installs,
            self.catalog_refusals
        )?;
        for edit in &self.edits {
            writeln!(f, "edit: {edit}")?;
        }
        if self.failures.is_empty() {
            writeln!(f, "every assertion held")?;
        }
        for (kind, failures) in &self.failures {
            writeln!(f, "FAILED {kind}: {} times, e.g.", failures.count)?;
            for sample in &failures.samples {
                writeln!(f, "  {sample}")?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The standard script

/// The script the test and the bench share: the examples' policies (without the example's
/// emergency target, dated after the run), 2,000 devices, the four snapshots of 2025-09-16 to
/// 2026-08-22 and 2024-11-14's empty answer on 2026-01-15, and four edits: an emergency target
/// pinned to iOS 26.0.1, the mobile policy's `daysAfterPosting` 21 → 14, the Mac broad ring's
/// delay 5 → 3 days, and the emergency target moved to 26.3.1. `root` is the repository.
pub fn standard_script(root: &std::path::Path) -> Result<Script, SimError> {
    let read = |relative: &str| -> Result<Vec<u8>, SimError> {
        std::fs::read(root.join(relative)).map_err(|e| SimError::Config(format!("{relative}: {e}")))
    };
    let snapshot = |day: &str| -> Result<Answer, SimError> {
        Ok(Answer {
            from: day
                .parse()
                .map_err(|e| SimError::Config(format!("{day}: {e}")))?,
            name: format!("pmv-{day}.json"),
            bytes: Arc::new(read(&format!("tests/fixtures/gdmf/pmv-{day}.json"))?),
        })
    };
    let snapshots = ["2025-09-16", "2025-10-30", "2026-03-17", "2026-08-22"]
        .into_iter()
        .map(snapshot)
        .collect::<Result<Vec<_>, _>>()?;
    let outages = vec![Answer {
        from: jiff::civil::date(2026, 1, 15),
        name: "pmv-2024-11-14-empty.json (an empty answer Apple gave)".into(),
        bytes: Arc::new(read("tests/fixtures/gdmf/pmv-2024-11-14-empty.json")?),
    }];
    let mut manifests = BTreeMap::new();
    for folder in ["fleetgroups", "policies"] {
        let dir = root.join("examples/gitops").join(folder);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| SimError::Config(format!("{}: {e}", dir.display())))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        names.sort();
        for name in names {
            let relative = format!("examples/gitops/{folder}/{name}");
            let text = String::from_utf8(read(&relative)?)
                .map_err(|e| SimError::Config(format!("{relative}: {e}")))?;
            manifests.insert(format!("{folder}/{name}"), text);
        }
    }
    let at = |s: &str| -> Result<Timestamp, SimError> {
        s.parse().map_err(|e| SimError::Config(format!("{s}: {e}")))
    };
    let pin = |version: &str, by: &str| {
        format!(
            "apiVersion: updates.ddm.dev/v1alpha1
kind: EnforcementTarget
metadata: {{name: vip-ios-pin, namespace: it-fleet}}
spec:
  fleetGroups: [vip-iphones]
  platform: iOS
  targetOSVersion: \"{version}\"
  targetLocalDateTime: \"{by}\"
"
        )
    };
    let pin_source = "EnforcementTarget it-fleet/vip-ios-pin".to_string();
    let edits = vec![
        Edit {
            at: at("2025-11-10T09:00:00Z")?,
            what: "2025-11-10: emergency target: VIP iPhones to iOS 26.0.1 by 2025-11-20T12:00"
                .into(),
            file: "targets/vip-ios-pin.yaml".into(),
            change: Change::Put(pin("26.0.1", "2025-11-20T12:00:00")),
            sources: vec![pin_source.clone()],
        },
        Edit {
            at: at("2025-12-01T09:00:00Z")?,
            what: "2025-12-01: mobile policy daysAfterPosting 21 → 14".into(),
            file: "policies/mobile.yaml".into(),
            change: Change::Replace {
                find: "daysAfterPosting: 21".into(),
                replace: "daysAfterPosting: 14".into(),
            },
            sources: vec!["UpdatePolicy it-fleet/mobile".into()],
        },
        Edit {
            at: at("2026-02-02T09:00:00Z")?,
            what: "2026-02-02: macs policy broad ring delayDays 5 → 3".into(),
            file: "policies/macs.yaml".into(),
            change: Change::Replace {
                find: "delayDays: 5".into(),
                replace: "delayDays: 3".into(),
            },
            sources: vec!["UpdatePolicy it-fleet/macs".into()],
        },
        Edit {
            at: at("2026-03-20T09:00:00Z")?,
            what: "2026-03-20: emergency target moved to iOS 26.3.1 by 2026-03-31T12:00".into(),
            file: "targets/vip-ios-pin.yaml".into(),
            change: Change::Put(pin("26.3.1", "2026-03-31T12:00:00")),
            sources: vec![pin_source],
        },
    ];
    Ok(Script {
        start: at("2025-09-16T00:00:00Z")?,
        end: at("2026-08-22T23:00:00Z")?,
        snapshots,
        outages,
        manifests,
        edits,
        fleet: vec![
            (Platform::Ios, 760),
            (Platform::IpadOs, 360),
            (Platform::MacOs, 700),
            (Platform::TvOs, 100),
            (Platform::VisionOs, 80),
        ],
        seed: 20_250_916,
        behaviour: Behaviour::default(),
        zones: vec![
            (Platform::Ios, "America/New_York".into()),
            (Platform::IpadOs, "America/New_York".into()),
            (Platform::MacOs, "Europe/Berlin".into()),
            (Platform::TvOs, "Europe/London".into()),
            (Platform::VisionOs, "Europe/London".into()),
        ],
    })
}

// ---------------------------------------------------------------------------------------------
// Devices

/// A deadline a device holds for one (source, version), since the source's last edit.
#[derive(Debug, Clone)]
struct Handed {
    first: DateTime,
    last: DateTime,
    epoch: u32,
}

/// One simulated device and what the run knows about it.
struct Member {
    device: SimDevice,
    zone: TimeZone,
    /// The id Apple's catalog lists it under.
    catalog_id: String,
    /// Offline spells, `[from, until)`.
    offline: Vec<(Timestamp, Timestamp)>,
    /// Share of the time from receiving an enforcement to its deadline after which the user
    /// installs; `None`: waits for the deadline.
    early: Option<f64>,
    online: bool,
    /// No install step before this (an hour after power-on).
    awake_at: Option<Timestamp>,
    /// The set changed: NanoMDM's push makes it check in.
    pushed: bool,
    last_report: Option<Timestamp>,
    assigned_at: Option<Timestamp>,
    /// The early install moment for the enforcement in flight (by its deadline).
    early_at: Option<(DateTime, Timestamp)>,
    /// Enforcement identifier → the sources whose enforcement it is (from the passes).
    sources_of: HashMap<String, BTreeSet<usize>>,
    /// Enforcement identifiers held per (source, release, source epoch).
    identifiers_by_target: HashMap<(usize, String, u32), HashSet<String>>,
    handed: HashMap<(usize, String), Handed>,
}

impl Member {
    fn offline_at(&self, at: Timestamp) -> bool {
        self.offline
            .iter()
            .any(|(from, until)| *from <= at && at < *until)
    }

    fn offline_during(&self, from: Timestamp, until: Timestamp) -> bool {
        self.offline.iter().any(|(a, b)| *a < until && from < *b)
    }

    fn local(&self, at: Timestamp) -> DateTime {
        at.to_zoned(self.zone.clone()).datetime()
    }

    fn instant(&self, local: DateTime) -> Timestamp {
        local
            .to_zoned(self.zone.clone())
            .map(|z| z.timestamp())
            .unwrap_or(Timestamp::MAX)
    }

    fn schema_target(&self) -> SchemaTarget {
        let spec = self.device.spec();
        SchemaTarget {
            os: match spec.platform {
                Platform::MacOs => "macOS",
                Platform::TvOs => "tvOS",
                Platform::VisionOs => "visionOS",
                Platform::WatchOs => "watchOS",
                _ => "iOS",
            },
            os_version: spec.os.version.numeric(),
            enrollment: if spec.supervised {
                "supervised"
            } else {
                "device"
            },
        }
    }

    /// The asset set Apple's servers offer it: `PublicAssetSets` to unsupervised devices and
    /// to Macs before macOS 15 (as the enrollment gate asks).
    fn public_only(&self) -> bool {
        let spec = self.device.spec();
        !spec.supervised || (spec.platform == Platform::MacOs && spec.os.version.major() < 15)
    }
}

/// Apple's catalog as of a snapshot's own day.
fn catalog_of(answer: &Answer) -> Result<(PmvDocument, Arc<Catalog>), SimError> {
    let document = PmvDocument::from_slice(&answer.bytes)
        .map_err(|e| SimError::Config(format!("{}: {e}", answer.name)))?;
    let catalog = Catalog::from_document(&document).with_as_of(answer.from);
    Ok((document, Arc::new(catalog)))
}

fn draw(script: &Script, catalog: &Catalog) -> Result<(Vec<Member>, Vec<Device>), SimError> {
    let behaviour = &script.behaviour;
    let mut rng = Rng::new(script.seed ^ 0x5eed);
    let mut members = Vec::new();
    let mut seed = Vec::new();
    for (n, (platform, count)) in script.fleet.iter().enumerate() {
        let options = FleetOptions {
            platforms: vec![*platform],
            ..FleetOptions::default()
        };
        let fleet = Fleet::from_catalog_with(catalog, *count, script.seed + n as u64, &options)?;
        let zone_name = script
            .zones
            .iter()
            .find(|(p, _)| p == platform)
            .map_or("UTC", |(_, z)| z.as_str());
        let zone = TimeZone::get(zone_name)
            .map_err(|e| SimError::Config(format!("time zone {zone_name}: {e}")))?;
        for mut device in fleet.devices {
            let per_mille = |rng: &mut Rng, n: u32| rng.below(1000) < n as usize;
            let mut labels = BTreeMap::new();
            let supervised = match platform {
                Platform::Ios | Platform::IpadOs => {
                    !per_mille(&mut rng, behaviour.unsupervised_mobile_per_mille)
                }
                Platform::MacOs => !per_mille(&mut rng, behaviour.byod_mac_per_mille),
                _ => true,
            };
            labels.insert(
                "fleet".to_string(),
                if supervised { "corporate" } else { "byod" }.to_string(),
            );
            if *platform == Platform::Ios && per_mille(&mut rng, behaviour.vip_per_mille) {
                labels.insert("role".into(), "vip".into());
            }
            let failure = if per_mille(&mut rng, behaviour.failing_per_mille) {
                FailureMode::Always
            } else if per_mille(&mut rng, behaviour.retrying_per_mille) {
                FailureMode::FirstAttempts(2)
            } else {
                FailureMode::Never
            };
            let early = per_mille(&mut rng, behaviour.early_per_mille)
                .then(|| 0.1 + rng.below(70) as f64 / 100.0);
            let mut offline = Vec::new();
            if per_mille(&mut rng, behaviour.offline_per_mille) {
                let span = script.end.as_second() - script.start.as_second();
                for _ in 0..1 + rng.below(3) {
                    let from = script.start.as_second()
                        + (rng.below((span / 3600).max(1) as usize) as i64) * 3600;
                    let days = 2 + rng.below(9) as i64;
                    let until = from + days * 86_400 + rng.below(24) as i64 * 3600;
                    if let (Ok(from), Ok(until)) =
                        (Timestamp::from_second(from), Timestamp::from_second(until))
                    {
                        offline.push((from, until));
                    }
                }
            }
            let catalog_id = device
                .spec()
                .software_update_device_id
                .clone()
                .unwrap_or_default();
            {
                let spec = device.spec_mut();
                spec.supervised = supervised;
                spec.failure_mode = failure;
                // Compact JSON: the byte layout is covered elsewhere, and this is faster.
                spec.apple_json_layout = false;
            }
            let spec = device.spec();
            seed.push(Device {
                enrollment_id: spec.enrollment_id.clone(),
                serial_number: Some(spec.serial_number.clone()),
                platform: spec.platform,
                model: spec.model_identifier.clone(),
                // The inventory knows every board id (DDM reports it only from macOS 15).
                software_update_device_id: Some(catalog_id.clone()),
                os_version: spec.os.running(),
                build_version: Some(crate::catalog::Build::new(spec.os.running_build())),
                supervised,
                enrollment_type: if supervised {
                    EnrollmentType::Ade
                } else {
                    EnrollmentType::Device
                },
                labels,
                bootstrap_token: Default::default(),
            });
            members.push(Member {
                device,
                zone: zone.clone(),
                catalog_id,
                offline,
                early,
                online: true,
                awake_at: None,
                pushed: false,
                last_report: None,
                assigned_at: None,
                early_at: None,
                sources_of: HashMap::new(),
                identifiers_by_target: HashMap::new(),
                handed: HashMap::new(),
            });
        }
    }
    Ok((members, seed))
}

// ---------------------------------------------------------------------------------------------
// The run

/// The operator side: store, backend, endpoints and what the passes work from.
struct Operator {
    clock: Clock,
    backend: Embedded,
    metrics: Arc<Metrics>,
    app: Arc<AppState>,
    reported: tokio::sync::mpsc::UnboundedReceiver<String>,
    admin: String,
    server: ServerConfig,
    checked: Checked,
    catalog: Arc<Catalog>,
    document: PmvDocument,
    catalog_name: String,
    catalog_problem: Option<String>,
    _dir: tempfile_dir::Dir,
    /// Both listeners, closed when the run ends.
    _serve: crate::http::serve::Spawned,
}

/// A temporary directory removed on drop (the library has no `tempfile` dependency).
mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new() -> std::io::Result<Self> {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let path =
                std::env::temp_dir().join(format!("ddm-fleet-sim-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&path)?;
            Ok(Dir(path))
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn manifests_text(files: &BTreeMap<String, String>) -> String {
    files
        .values()
        .map(|t| t.trim_end())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn source_name(checked: &Checked, source: Source) -> String {
    match source {
        Source::Policy(p) => format!("UpdatePolicy {}", checked.policies[p].key),
        Source::Target(t) => format!("EnforcementTarget {}", checked.targets[t].key),
    }
}

/// A due check: at `due`, device `member` should run `version` for `source`.
type Due = Reverse<(Timestamp, usize, usize, String, u32)>;

struct World {
    script: Script,
    options: Options,
    members: Vec<Member>,
    seed: Vec<Device>,
    by_id: HashMap<String, usize>,
    operator: Operator,
    client: reqwest::Client,
    manifests: BTreeMap<String, String>,
    edits_done: usize,
    /// Apple's real answer in force (what devices are offered), by index into `snapshots`.
    apple: usize,
    last_answer: Option<Arc<Vec<u8>>>,
    sources: Vec<String>,
    source_ids: HashMap<String, usize>,
    epochs: HashMap<usize, u32>,
    dues: BinaryHeap<Due>,
    /// Moments that need a tick of their own.
    moments: BTreeSet<Timestamp>,
    /// Deadlines devices hold, as instants.
    deadlines: BTreeSet<Timestamp>,
    schema_cache: HashMap<(String, String, SchemaTarget), Vec<String>>,
    last_pass: Timestamp,
    /// Apple's real catalog of the day (what devices are offered).
    apple_catalog: Arc<Catalog>,
    started: Instant,
    outcome: Outcome,
}

/// Runs the script; the outcome lists every assertion that failed.
pub async fn run(script: Script, options: Options) -> Result<Outcome, SimError> {
    let started = Instant::now();
    let mut world = World::new(script, options).await?;
    world.go().await?;
    world.outcome.wall = started.elapsed();
    Ok(world.outcome)
}

impl World {
    async fn new(script: Script, options: Options) -> Result<World, SimError> {
        let first = script
            .snapshots
            .first()
            .ok_or_else(|| SimError::Config("the script has no catalog".into()))?;
        let (document, catalog) = catalog_of(first)?;
        let (mut members, seed) = draw(&script, &catalog)?;
        let checked = crate::manifests::check_str("manifests", &manifests_text(&script.manifests))
            .map_err(|p| SimError::Config(format!("manifests: {}", p.join("; "))))?;
        let clock = Clock::manual(script.start);
        let dir = tempfile_dir::Dir::new()
            .map_err(|e| SimError::Config(format!("temporary directory: {e}")))?;
        let store = Arc::new(
            Store::open(&dir.0.join("ddm.sqlite"))
                .map_err(|e| SimError::Config(format!("store: {e}")))?
                .with_clock(clock.clone()),
        );
        let backend = Embedded::new(store.clone(), None);
        let metrics = Arc::new(Metrics::new());
        let (reported_tx, reported) = tokio::sync::mpsc::unbounded_channel();
        let ddm_state = Arc::new(ddm::DdmState {
            store: store.clone(),
            reports: backend.reports.clone(),
            receive_key: None,
            send_key: None,
            bootstrap: crate::operator::bootstrap_declarations(),
            reported: reported_tx,
            metrics: metrics.clone(),
            claims: Default::default(),
        });
        let app = Arc::new(AppState {
            metrics: metrics.clone(),
            ready: Default::default(),
            status: tokio::sync::RwLock::new(serde_json::json!({"ready": false})),
            enrollment: Default::default(),
            ledger: Some(store.clone()),
            devices: std::sync::RwLock::new(None),
        });
        // The operator's two listeners: devices check in on one, status and metrics are read
        // from the other (the admin API open, as on loopback without a token file).
        let bind = || async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| SimError::Config(format!("bind: {e}")))?;
            let address = listener
                .local_addr()
                .map_err(|e| SimError::Config(format!("bind: {e}")))?;
            Ok::<_, SimError>((listener, address))
        };
        let (device_listener, address) = bind().await?;
        let (admin_listener, admin_address) = bind().await?;
        let serve = crate::http::serve::Spawned::start(
            crate::http::serve::Listener {
                listener: device_listener,
                router: crate::http::device_router("/ddm/", ddm_state),
            },
            crate::http::serve::Listener {
                listener: admin_listener,
                router: crate::http::admin_router(
                    app.clone(),
                    Arc::new(crate::http::admin::AdminAuth::Open),
                ),
            },
            crate::http::serve::Limits::local(),
            metrics.clone(),
        );
        let server = ServerConfig::new(&format!("http://{address}/ddm/"))?;
        let client = super::http_client(Duration::from_secs(30))?;
        for member in &mut members {
            member.device.spec_mut().offered_updates = offered(member, &catalog);
        }
        let catalog_for_devices = catalog.clone();
        let by_id = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.device.enrollment_id().to_string(), i))
            .collect();
        let mut moments = BTreeSet::new();
        for member in &members {
            for (from, until) in &member.offline {
                moments.insert(*from);
                moments.insert(*until);
                moments.insert(*until + SignedDuration::from_hours(1));
            }
        }
        for edit in &script.edits {
            moments.insert(edit.at);
        }
        let outcome = Outcome {
            devices: members.len(),
            days: (script.end.as_second() - script.start.as_second()) / 86_400,
            ..Outcome::default()
        };
        Ok(World {
            manifests: script.manifests.clone(),
            last_pass: script.start,
            operator: Operator {
                clock,
                backend,
                metrics,
                app,
                reported,
                admin: format!("http://{admin_address}"),
                server,
                checked,
                catalog,
                document,
                catalog_name: first.name.clone(),
                catalog_problem: None,
                _dir: dir,
                _serve: serve,
            },
            script,
            options,
            members,
            seed,
            by_id,
            client,
            edits_done: 0,
            apple: 0,
            last_answer: None,
            sources: Vec::new(),
            source_ids: HashMap::new(),
            epochs: HashMap::new(),
            dues: BinaryHeap::new(),
            moments,
            deadlines: BTreeSet::new(),
            schema_cache: HashMap::new(),
            apple_catalog: catalog_for_devices,
            started: Instant::now(),
            outcome,
        })
    }

    fn source_id(&mut self, name: &str) -> usize {
        if let Some(id) = self.source_ids.get(name) {
            return *id;
        }
        self.sources.push(name.to_string());
        self.source_ids
            .insert(name.to_string(), self.sources.len() - 1);
        self.sources.len() - 1
    }

    fn epoch(&self, source: usize) -> u32 {
        self.epochs.get(&source).copied().unwrap_or(0)
    }

    async fn go(&mut self) -> Result<(), SimError> {
        let mut now = self.script.start;
        let mut day: Option<Date> = None;
        while now <= self.script.end {
            self.operator.clock.set(now);
            let today = crate::catalog::utc_date(now);
            let new_day = day != Some(today);
            day = Some(today);
            self.tick(now, new_day).await?;
            self.outcome.ticks += 1;
            if new_day && self.options.progress {
                eprintln!(
                    "{today}: {} passes, {} check-ins, {} installs, {:.1}s",
                    self.outcome.passes,
                    self.outcome.check_ins,
                    self.outcome.installs,
                    self.started.elapsed().as_secs_f64()
                );
            }
            now = self.next_tick(now);
        }
        Ok(())
    }

    /// The next six-hour boundary, or an earlier moment that needs a tick.
    fn next_tick(&mut self, now: Timestamp) -> Timestamp {
        let six = 6 * 3600;
        let boundary =
            Timestamp::from_second((now.as_second() / six + 1) * six).unwrap_or(Timestamp::MAX);
        while self.moments.first().is_some_and(|m| *m <= now) {
            self.moments.pop_first();
        }
        match self.moments.first() {
            Some(m) if *m < boundary => *m,
            _ => boundary,
        }
    }

    async fn tick(&mut self, now: Timestamp, new_day: bool) -> Result<(), SimError> {
        let mut pass_due = false;
        if new_day {
            self.refresh_catalog(now)?;
            // Standalone mode passes after every catalog refresh.
            pass_due = true;
        }
        while let Some(edit) = self.script.edits.get(self.edits_done).cloned() {
            if edit.at > now {
                break;
            }
            self.edits_done += 1;
            self.apply_edit(&edit);
            pass_due = true;
        }
        // A deadline a device holds passed since the last pass.
        if self
            .deadlines
            .range((
                std::ops::Bound::Excluded(self.last_pass),
                std::ops::Bound::Included(now),
            ))
            .next()
            .is_some()
        {
            pass_due = true;
        }

        // Devices act, then those with something to say check in.
        let mut due_sync = Vec::new();
        for index in 0..self.members.len() {
            if self.act(index, now) {
                due_sync.push(index);
            }
        }
        let installs_before = self.outcome.installs;
        self.sync(&due_sync, now).await;
        if self.outcome.installs != installs_before {
            pass_due = true;
        }
        if pass_due {
            self.pass(now).await?;
        }
        self.check_dues(now);
        // Reports only tell the standalone loop to pass; the run passes on its own terms.
        while self.operator.reported.try_recv().is_ok() {}
        Ok(())
    }

    /// Apple's answer of the day, through the operator's guard.
    fn refresh_catalog(&mut self, now: Timestamp) -> Result<(), SimError> {
        let today = crate::catalog::utc_date(now);
        let apple = self
            .script
            .snapshots
            .iter()
            .rposition(|a| a.from <= today)
            .unwrap_or(0);
        if apple != self.apple {
            self.apple = apple;
            // Apple's servers offer what the real catalog of the day lists.
            let (_, catalog) = catalog_of(&self.script.snapshots[apple])?;
            for member in &mut self.members {
                member.device.spec_mut().offered_updates = offered(member, &catalog);
            }
            self.apple_catalog = catalog;
        }
        let answer = self
            .script
            .outages
            .iter()
            .find(|a| a.from == today)
            .unwrap_or(&self.script.snapshots[apple])
            .clone();
        if self
            .last_answer
            .as_ref()
            .is_some_and(|last| Arc::ptr_eq(last, &answer.bytes))
        {
            return Ok(()); // 304 Not Modified
        }
        self.last_answer = Some(answer.bytes.clone());
        let document = PmvDocument::from_slice(&answer.bytes)
            .map_err(|e| SimError::Config(format!("{}: {e}", answer.name)))?;
        match guard::check_replacement(&self.operator.document, &document) {
            Ok(()) => {
                let outage = self.script.outages.iter().any(|a| a.from == today);
                if outage {
                    self.outcome.fail("catalog guard", || {
                        format!("{today}: the guard accepted {}", answer.name)
                    });
                }
                self.operator.catalog =
                    Arc::new(Catalog::from_document(&document).with_as_of(answer.from));
                self.operator.document = document;
                self.operator.catalog_name = answer.name.clone();
                self.operator.catalog_problem = None;
            }
            Err(refused) => {
                self.outcome.catalog_refusals += 1;
                self.operator.metrics.catalog_fetch_failed();
                self.operator.catalog_problem = Some(format!(
                    "{today}: {}: refused: {refused}; the last good catalog stays in use",
                    answer.name
                ));
            }
        }
        Ok(())
    }

    fn apply_edit(&mut self, edit: &Edit) {
        let mut files = self.manifests.clone();
        let applied = match &edit.change {
            Change::Put(text) => {
                files.insert(edit.file.clone(), text.clone());
                true
            }
            Change::Replace { find, replace } => match files.get_mut(&edit.file) {
                Some(text) if text.matches(find.as_str()).count() == 1 => {
                    *text = text.replacen(find.as_str(), replace, 1);
                    true
                }
                _ => false,
            },
        };
        let checked = applied
            .then(|| crate::manifests::check_str("manifests", &manifests_text(&files)))
            .map(|r| r.map_err(|p| p.join("; ")));
        match checked {
            Some(Ok(checked)) => {
                self.manifests = files;
                self.operator.checked = checked;
                for source in &edit.sources {
                    let id = self.source_id(source);
                    *self.epochs.entry(id).or_default() += 1;
                }
                self.outcome.edits.push(edit.what.clone());
            }
            Some(Err(why)) => self
                .outcome
                .fail("script", || format!("{}: invalid: {why}", edit.what)),
            None => self.outcome.fail("script", || {
                format!("{}: {:?} not found once", edit.what, edit.change)
            }),
        }
    }

    /// One device's own step at `now`; true when it has something to check in for.
    fn act(&mut self, index: usize, now: Timestamp) -> bool {
        let member = &mut self.members[index];
        let offline = member.offline_at(now);
        if offline {
            member.online = false;
            return false;
        }
        let mut check_in = member.pushed;
        if !member.online {
            // Powered on: it checks in, and installs an hour later at the earliest.
            member.online = true;
            member.awake_at = Some(now + SignedDuration::from_hours(1));
            member.device.request_full_report();
            check_in = true;
        }
        member.device.spec_mut().utc_time = Some(now);
        if member.awake_at.is_none_or(|at| at <= now) {
            // Each step of an install; the local clock only matters while `prepared` waits.
            for _ in 0..8 {
                if member.device.install_state() == InstallState::Prepared {
                    let local = member.local(now);
                    let mut told = local;
                    // A user installing early: the device acts as if the deadline were now.
                    if let (Some(share), Some(deadline)) =
                        (member.early, member.device.in_flight_deadline())
                        && deadline > local
                    {
                        let at = match member.early_at {
                            Some((d, at)) if d == deadline => at,
                            _ => {
                                let until = member.instant(deadline);
                                let lead = until.as_second() - now.as_second();
                                let at = Timestamp::from_second(
                                    now.as_second() + (lead as f64 * share) as i64,
                                )
                                .unwrap_or(until);
                                member.early_at = Some((deadline, at));
                                at
                            }
                        };
                        if at <= now {
                            told = deadline;
                        }
                    }
                    member.device.spec_mut().local_time = Some(told);
                }
                let before = member.device.installs_completed();
                let changed = member.device.advance();
                if member.device.installs_completed() != before {
                    self.outcome.installs += 1;
                    // A Mac now on macOS 15 is offered AssetSets.
                    let offers = offered(member, &self.apple_catalog);
                    member.device.spec_mut().offered_updates = offers;
                }
                match changed {
                    // A failed attempt waits for its retry.
                    Some(InstallState::Failed) => {
                        check_in = true;
                        break;
                    }
                    Some(_) => check_in = true,
                    None => break,
                }
            }
        }
        if let Some(every) = self.script.behaviour.safety_sync
            && member
                .last_report
                .is_none_or(|at| now.duration_since(at) >= every)
        {
            member.device.request_full_report();
            check_in = true;
        }
        check_in
    }

    /// Checks in these devices, concurrently, and checks what each now holds.
    async fn sync(&mut self, indexes: &[usize], now: Timestamp) {
        if indexes.is_empty() {
            return;
        }
        let started = Instant::now();
        let wanted: HashSet<usize> = indexes.iter().copied().collect();
        // What each held before: fetching one of these again is a re-send.
        let held: HashMap<usize, HashSet<String>> = indexes
            .iter()
            .map(|i| {
                let ids = self.members[*i].device.declarations();
                (*i, ids.into_iter().map(|d| d.identifier).collect())
            })
            .collect();
        let (client, server) = (&self.client, &self.operator.server);
        let results: Vec<(usize, Result<super::SyncOutcome, SimError>)> = futures::stream::iter(
            self.members
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| wanted.contains(i)),
        )
        .map(|(i, member)| async move { (i, member.device.sync(client, server).await) })
        .buffer_unordered(32)
        .collect()
        .await;
        self.outcome.in_check_ins += started.elapsed();
        for (index, result) in results {
            self.outcome.check_ins += 1;
            let member = &mut self.members[index];
            member.pushed = false;
            match result {
                Ok(outcome) => {
                    self.outcome.requests += u64::from(outcome.requests);
                    if outcome.report.is_some() {
                        self.outcome.status_reports += 1;
                        member.last_report = Some(now);
                    }
                    if !outcome.fetched.is_empty() {
                        let before = held.get(&index).cloned().unwrap_or_default();
                        self.check_fetched(index, &outcome.fetched, &before, now);
                    }
                }
                Err(error) => {
                    let id = member.device.enrollment_id().to_string();
                    self.outcome
                        .fail("check-in failed", || format!("{now}: {id}: {error}"));
                }
            }
        }
    }

    /// What a device just fetched: Apple's schemas, the lists it may use, deadlines.
    fn check_fetched(
        &mut self,
        index: usize,
        fetched: &[String],
        held_before: &HashSet<String>,
        now: Timestamp,
    ) {
        let target = self.members[index].schema_target();
        let id = self.members[index].device.enrollment_id().to_string();
        let model = self.members[index].device.spec().model_identifier.clone();
        for identifier in fetched {
            let member = &mut self.members[index];
            // Held already under this identifier: the same declaration sent again.
            if held_before.contains(identifier) {
                self.outcome.resent += 1;
            }
            let Some(json) = member.device.declaration_json(identifier) else {
                continue;
            };
            if let Some(schema) = &self.options.schema {
                let token = json["ServerToken"].as_str().unwrap_or_default().to_string();
                let key = (identifier.clone(), token, target.clone());
                let problems = self
                    .schema_cache
                    .entry(key)
                    .or_insert_with(|| schema(&json, &target));
                for problem in problems.iter() {
                    let problem = problem.clone();
                    let target = target.clone();
                    self.outcome.fail("Apple schema", || {
                        format!(
                            "{id} ({model}, {} {} {}): {identifier}: {problem}",
                            target.os, target.os_version, target.enrollment
                        )
                    });
                }
            }
        }
        let held = self.members[index].device.held_enforcements();
        for enforcement in held {
            if !fetched.contains(&enforcement.identifier) {
                continue;
            }
            self.check_lists(index, &enforcement, now);
            let sources: Vec<usize> = self.members[index]
                .sources_of
                .get(&enforcement.identifier)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default();
            if sources.is_empty() {
                self.outcome.fail("enforcement of no source", || {
                    format!(
                        "{now}: {id} holds {} that no pass gave it",
                        enforcement.identifier
                    )
                });
            }
            let release = release_of(&enforcement);
            for source in sources {
                let epoch = self.epoch(source);
                let key = (source, release.clone());
                let member = &mut self.members[index];
                // A new identifier for a release this source already enforces on the device,
                // with its intent unchanged: the same rollout sent again.
                let known = member
                    .identifiers_by_target
                    .entry((source, release.clone(), epoch))
                    .or_default();
                if !known.is_empty() && known.insert(enforcement.identifier.clone()) {
                    self.outcome.resent += 1;
                } else {
                    known.insert(enforcement.identifier.clone());
                }
                let deadline = enforcement.deadline;
                let previous = member
                    .handed
                    .get(&key)
                    .filter(|h| h.epoch == epoch)
                    .cloned();
                match previous {
                    Some(handed) => {
                        if deadline > handed.last {
                            let source_name = self.sources[source].clone();
                            self.outcome.fail("deadline moved later", || {
                                format!(
                                    "{now}: {id} ({model}): {source_name} → {}: {} became {} with no spec change",
                                    key.1, handed.last, deadline
                                )
                            });
                        }
                        if let Some(h) = member.handed.get_mut(&key) {
                            h.last = deadline;
                        }
                    }
                    None => {
                        member.handed.insert(
                            key.clone(),
                            Handed {
                                first: deadline,
                                last: deadline,
                                epoch,
                            },
                        );
                        // Due a day after the deadline, or after the hand-out when the
                        // deadline was already past (Apple installs at once).
                        let at = member.instant(deadline).max(now);
                        let due = at + SignedDuration::from_hours(24);
                        self.dues
                            .push(Reverse((due, index, source, key.1.clone(), epoch)));
                        self.moments.insert(due);
                    }
                }
                // Hourly around the deadline.
                let at = self.members[index].instant(deadline);
                self.deadlines.insert(at);
                for hours in -1..=2 {
                    let moment = at + SignedDuration::from_hours(hours);
                    if moment > now {
                        self.moments.insert(moment);
                    }
                }
            }
        }
    }

    /// The enforced release is in a list this device may use, per the catalog in use.
    fn check_lists(&mut self, index: usize, enforcement: &super::HeldEnforcement, now: Timestamp) {
        let member = &self.members[index];
        let public_only = member.public_only();
        let catalog = &self.operator.catalog;
        let sets: Vec<AssetSet> = if public_only {
            vec![AssetSet::Public]
        } else {
            vec![AssetSet::Mdm, AssetSet::Public]
        };
        let Ok(version) = enforcement.target_version.parse::<OsVersion>() else {
            return;
        };
        let lists = |release: &crate::catalog::Release| {
            release
                .supported_devices
                .iter()
                .any(|d| **d == *member.catalog_id)
                && match &enforcement.target_build {
                    Some(build) => release.build.as_ref().is_some_and(|b| b.as_str() == build),
                    None => release.version.base() == version.base(),
                }
        };
        let listed = sets
            .iter()
            .flat_map(|set| catalog.releases(*set))
            .chain(catalog.security_improvements())
            .any(lists);
        if !listed {
            let spec = member.device.spec();
            let what = format!(
                "{now}: {} ({} {} on {}, {}): {} {} is not in {}",
                spec.enrollment_id,
                spec.platform,
                member.catalog_id,
                spec.os.running(),
                if spec.supervised {
                    "supervised"
                } else {
                    "unsupervised"
                },
                enforcement.target_version,
                enforcement.target_build.as_deref().unwrap_or(""),
                if public_only {
                    "PublicAssetSets"
                } else {
                    "the catalog"
                }
            );
            self.outcome
                .fail("release outside the device's lists", || what);
        }
    }

    /// Rollouts a day past their deadline: the device runs the target, or has a reason.
    fn check_dues(&mut self, now: Timestamp) {
        while let Some(Reverse((due, index, source, version, epoch))) = self.dues.peek().cloned() {
            if due > now {
                break;
            }
            self.dues.pop();
            if self.epoch(source) != epoch {
                continue; // intent changed: a new deadline applies
            }
            let member = &self.members[index];
            let key = (source, version.clone());
            let Some(handed) = member.handed.get(&key).cloned() else {
                continue;
            };
            let Ok(target) = version.parse::<OsVersion>() else {
                continue;
            };
            let running = member.device.os().running();
            if running >= target {
                self.outcome.rollouts_due += 1;
                self.outcome.compliant_by_deadline += 1;
                continue;
            }
            // Withdrawn or retargeted since (Apple posted a newer release): not this rollout's.
            let still_held = member.device.held_enforcements().iter().any(|e| {
                release_of(e) == version
                    && member
                        .sources_of
                        .get(&e.identifier)
                        .is_some_and(|s| s.contains(&source))
            });
            if !still_held {
                continue;
            }
            self.outcome.rollouts_due += 1;
            let deadline = member.instant(handed.first);
            if member.offline_during(deadline.min(due - SignedDuration::from_hours(24)), due)
                || !member.online
            {
                self.outcome.excused_offline += 1;
                continue;
            }
            if member.device.failure_count() > 0
                || member.device.install_state() == InstallState::Failed
                || member
                    .device
                    .held_enforcements()
                    .iter()
                    .any(|e| release_of(e) == version && e.valid == "invalid")
            {
                self.outcome.excused_failed += 1;
                continue;
            }
            let spec = member.device.spec();
            let what = format!(
                "{now}: {} ({} {}, {}): {} → {version} by {} (first handed out; now holds {}): runs {running}, install state {}",
                spec.enrollment_id,
                spec.platform,
                spec.model_identifier,
                if spec.supervised {
                    "supervised"
                } else {
                    "unsupervised"
                },
                self.sources[source],
                handed.first,
                handed.last,
                member.device.install_state().as_str()
            );
            self.outcome
                .fail("not compliant by deadline + 1 day", || what);
        }
    }

    /// One resolver pass, as standalone mode runs it, then status against the simulator.
    async fn pass(&mut self, now: Timestamp) -> Result<(), SimError> {
        let started = Instant::now();
        let empty = Checked::default();
        let result = pass::pass(
            &self.operator.backend,
            pass::Resources {
                live: &self.operator.checked,
                orphaning: &empty,
            },
            &self.seed,
            self.script.start,
            &self.operator.catalog,
            false,
            now,
        )
        .await
        .map_err(|e| SimError::Config(format!("pass: {e}")))?;
        self.outcome.in_passes += started.elapsed();
        self.outcome.passes += 1;
        self.last_pass = now;
        let changed = match &result.applied {
            Ok(report) => report.changed.clone(),
            Err(error) => {
                self.outcome
                    .fail("pass not applied", || format!("{now}: {error}"));
                Vec::new()
            }
        };
        self.operator.metrics.resolve_pass(
            started.elapsed().as_secs_f64(),
            result.applied.is_ok(),
            changed.len(),
            result.plan.declarations.len(),
        );
        for id in &changed {
            if let Some(index) = self.by_id.get(id) {
                let member = &mut self.members[*index];
                member.assigned_at = Some(now);
                member.pushed = true;
            }
        }
        let reading = Instant::now();
        self.learn_sources(&result);
        self.publish(&result, now).await;
        self.compare_status(&result, now).await;
        self.outcome.in_status += reading.elapsed();
        // NanoMDM's push: online devices whose set changed check in now.
        let pushed: Vec<usize> = changed
            .iter()
            .filter_map(|id| self.by_id.get(id).copied())
            .filter(|i| !self.members[*i].offline_at(now))
            .collect();
        self.sync(&pushed, now).await;
        Ok(())
    }

    fn learn_sources(&mut self, result: &PassResult) {
        for (device, plan) in result.devices.iter().zip(&result.plan.devices) {
            let Some(index) = self.by_id.get(&device.enrollment_id).copied() else {
                continue;
            };
            for enforcement in &plan.enforcements {
                let name = source_name(&self.operator.checked, enforcement.source);
                let source = self.source_id(&name);
                let identifier =
                    &result.plan.declarations[enforcement.declaration as usize].identifier;
                let member = &mut self.members[index];
                match member.sources_of.get_mut(identifier) {
                    Some(set) => {
                        set.insert(source);
                    }
                    None => {
                        member
                            .sources_of
                            .insert(identifier.clone(), BTreeSet::from([source]));
                    }
                }
            }
        }
    }

    async fn publish(&self, result: &PassResult, now: Timestamp) {
        let by_id: HashMap<&str, &crate::backend::DeviceRecord> = result
            .records
            .iter()
            .map(|r| (r.enrollment_id.as_str(), r))
            .collect();
        let mut status = report::status(
            &self.operator.checked,
            &result.devices,
            &result.plan,
            &by_id,
            &result.frozen,
            now,
            &self.operator.metrics,
        );
        if let Value::Object(map) = &mut status {
            map.insert(
                "catalog".into(),
                serde_json::json!({
                    "origin": self.operator.catalog_name,
                    "problem": self.operator.catalog_problem,
                }),
            );
        }
        *self.operator.app.status.write().await = status;
    }

    /// The simulator's truth per (source, bucket), as the design's contract defines buckets.
    fn truth(&self, result: &PassResult, now: Timestamp) -> BTreeMap<(String, &'static str), u64> {
        let mut counts = BTreeMap::new();
        for (device, plan) in result.devices.iter().zip(&result.plan.devices) {
            let Some(member) = self
                .by_id
                .get(&device.enrollment_id)
                .map(|i| &self.members[*i])
            else {
                continue;
            };
            let mut seen = Vec::new();
            let sources = plan
                .enforcements
                .iter()
                .map(|e| e.source)
                .chain(plan.notes.iter().map(|n| n.source));
            for source in sources {
                if seen.contains(&source) {
                    continue;
                }
                seen.push(source);
                let enforcement = plan.enforcements.iter().find(|e| e.source == source);
                let reason = match enforcement {
                    Some(_) => None,
                    None => plan
                        .notes
                        .iter()
                        .find(|n| n.source == source)
                        .map(|n| n.reason),
                };
                let identifier = enforcement.map(|e| {
                    result.plan.declarations[e.declaration as usize]
                        .identifier
                        .as_str()
                });
                let bucket = truth_bucket(member, identifier, reason, now);
                *counts
                    .entry((source_name(&self.operator.checked, source), bucket))
                    .or_default() += 1;
            }
        }
        counts
    }

    async fn compare_status(&mut self, result: &PassResult, now: Timestamp) {
        let truth = self.truth(result, now);
        let status: Value = match self
            .client
            .get(format!("{}/api/v1/status", self.operator.admin))
            .send()
            .await
        {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let mut served: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
        for section in ["updatePolicies", "enforcementTargets"] {
            for entry in status[section].as_array().into_iter().flatten() {
                let name = entry["name"].as_str().unwrap_or_default().to_string();
                for (state, n) in entry["devices"].as_object().into_iter().flatten() {
                    let n = n.as_u64().unwrap_or(0);
                    if n > 0 {
                        served.insert((name.clone(), bucket_name(state)), n);
                    }
                }
            }
        }
        let metrics = match self
            .client
            .get(format!("{}/metrics", self.operator.admin))
            .send()
            .await
        {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let mut gauges: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
        for line in metrics.lines() {
            let Some(rest) = line.strip_prefix("ddm_update_operator_devices{") else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let label = |name: &str| {
                labels
                    .split("\",")
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                    .map(|v| v.trim_end_matches('"').to_string())
            };
            let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
            if let (Some(source), Some(state)) = (label("source"), label("state"))
                && n > 0
            {
                gauges.insert((source, bucket_name(&state)), n);
            }
        }
        for (what, got) in [("/api/v1/status", &served), ("/metrics", &gauges)] {
            if *got != truth {
                let diff = difference(&truth, got);
                self.outcome.fail(
                    if what == "/metrics" {
                        "/metrics ≠ simulator"
                    } else {
                        "/api/v1/status ≠ simulator"
                    },
                    || format!("{now}: {what}: {diff}"),
                );
            }
        }
    }
}

fn difference(
    truth: &BTreeMap<(String, &'static str), u64>,
    got: &BTreeMap<(String, &'static str), u64>,
) -> String {
    let keys: BTreeSet<_> = truth.keys().chain(got.keys()).collect();
    keys.into_iter()
        .filter(|k| truth.get(*k) != got.get(*k))
        .map(|k| {
            format!(
                "{} {}: simulator {} operator {}",
                k.0,
                k.1,
                truth.get(k).copied().unwrap_or(0),
                got.get(k).copied().unwrap_or(0)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

const BUCKETS: [&str; 8] = [
    "compliant",
    "pending",
    "downloading",
    "prepared",
    "installing",
    "failed",
    "stale",
    "notApplicable",
];

fn bucket_name(state: &str) -> &'static str {
    BUCKETS
        .iter()
        .find(|b| **b == state)
        .copied()
        .unwrap_or("unknown")
}

/// The design's buckets from what the device itself did: a reason decides first (`UpToDate`:
/// compliant; any other but `Superseded`/`TwoStep`: notApplicable); then no report for 26 hours
/// is stale; the enforcement reported invalid is failed; no report since the set changed is
/// pending; else the install state it last reported.
fn truth_bucket(
    member: &Member,
    enforcement: Option<&str>,
    reason: Option<Reason>,
    now: Timestamp,
) -> &'static str {
    match reason {
        Some(Reason::UpToDate) => return "compliant",
        Some(Reason::Superseded | Reason::TwoStep) | None => {}
        Some(_) => return "notApplicable",
    }
    let heard = member.last_report.or(member.assigned_at);
    if heard.is_some_and(|t| now.as_second() - t.as_second() > 26 * 3600) {
        return "stale";
    }
    if let Some(identifier) = enforcement {
        let reported_invalid = member
            .device
            .acknowledged("management.declarations")
            .and_then(|d| d.get("configurations"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| c["identifier"] == identifier && c["valid"] == "invalid");
        if reported_invalid {
            return "failed";
        }
    }
    if member
        .assigned_at
        .is_some_and(|assigned| member.last_report.is_none_or(|r| r < assigned))
    {
        return "pending";
    }
    match member
        .device
        .acknowledged("softwareupdate.install-state")
        .and_then(Value::as_str)
    {
        Some("downloading") => "downloading",
        Some("prepared") => "prepared",
        Some("installing") => "installing",
        Some("failed") => "failed",
        _ => "pending",
    }
}

/// The release an enforcement names: its version, or for a security improvement (named by its
/// build, `23D771330a`) the version with its extra (`26.3.1 (a)`).
fn release_of(enforcement: &super::HeldEnforcement) -> String {
    match enforcement
        .target_build
        .as_deref()
        .and_then(super::device::supplemental_letter)
    {
        Some(letter) => format!("{} ({letter})", enforcement.target_version),
        None => enforcement.target_version.clone(),
    }
}

/// What Apple's servers offer a device from a catalog: `PublicAssetSets`, and `AssetSets` too
/// when it may use them.
fn offered(member: &Member, catalog: &Catalog) -> Arc<[super::OfferedUpdate]> {
    let sets: &[AssetSet] = if member.public_only() {
        &[AssetSet::Public]
    } else {
        &[AssetSet::Mdm, AssetSet::Public]
    };
    offered_from(catalog, &member.catalog_id, sets)
}
