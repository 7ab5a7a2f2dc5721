//! End-to-end tests of `ddm-update-operator plan` on the shipped examples (`examples/gitops`,
//! `examples/inventory.yaml`, `examples/catalog`) and on hostile manifests.
//!
//! The binary is driven as a platform engineer would run it. Expected values are computed here
//! from the raw catalog JSON, the inventory YAML and the rules the design page states (a small
//! reference reading below: `expected_plan`), never from the program's own output. The few
//! literal dates are worked out by hand in comments.

use crate::support::copy_dir;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::apple_schema::{self, Target};

// ---------------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------------

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
/// The shipped catalog is Apple's answer of 2026-08-22; resolve on that day.
const AT: &str = "2026-08-22";
const NAMESPACE: &str = "it-fleet";

fn examples() -> PathBuf {
    Path::new(MANIFEST_DIR).join("examples")
}

fn gitops() -> PathBuf {
    examples().join("gitops")
}

fn inventory_file() -> PathBuf {
    examples().join("inventory.yaml")
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        assert_eq!(self.code, Some(0), "plan failed:\n{}", self.stderr);
        serde_json::from_str(&self.stdout).expect("plan --output json prints JSON")
    }
}

fn run(args: &[String]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_ddm-update-operator"))
        .args(args)
        .output()
        .expect("run ddm-update-operator");
    let run = Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked") && run.code.is_some(),
        "the binary crashed ({:?}):\n{}",
        run.code,
        head(&run.stderr)
    );
    run
}

fn plan_args(files: &[PathBuf], inventory: &Path, output: &str) -> Vec<String> {
    let mut args = vec!["plan".to_string()];
    for file in files {
        args.push("-f".into());
        args.push(file.display().to_string());
    }
    args.extend([
        "--inventory".into(),
        inventory.display().to_string(),
        "--catalog".into(),
        examples().join("catalog").display().to_string(),
        "--at".into(),
        AT.into(),
        "--output".into(),
        output.into(),
    ]);
    args
}

fn plan(files: &[PathBuf], output: &str) -> Run {
    run(&plan_args(files, &inventory_file(), output))
}

fn head(text: &str) -> String {
    text.chars().take(2000).collect()
}

/// The examples' plan as JSON, computed once.
static EXAMPLE_PLAN: LazyLock<(String, Value)> = LazyLock::new(|| {
    let run = plan(&[gitops()], "json");
    let value = run.json();
    (run.stdout, value)
});

fn example_plan() -> &'static Value {
    &EXAMPLE_PLAN.1
}

/// A copy of `examples/gitops` in a temporary folder, to add or change files in.
fn gitops_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&gitops(), dir.path());
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

// ---------------------------------------------------------------------------------------------
// Versions and builds, as Apple numbers them
// ---------------------------------------------------------------------------------------------

/// `26.3.1 (a)` → ([26, 3, 1, 0], Some("(a)")); missing components are zero and a
/// supplemental extra sorts after its base.
fn vkey(version: &str) -> ([u32; 4], Option<String>) {
    let (numeric, extra) = match version.split_once(' ') {
        Some((n, e)) => (n, Some(e.trim().to_string())),
        None => (version, None),
    };
    let mut parts = [0u32; 4];
    for (i, part) in numeric.split('.').enumerate() {
        parts[i] = part.parse().expect("numeric version");
    }
    (parts, extra)
}

fn major(version: &str) -> u32 {
    vkey(version).0[0]
}

/// `23G6083` → (23, "G", 6083, ""): twins order by number, the lower is the mainline build.
fn bkey(build: &str) -> (u32, String, u64, String) {
    let digits = build.bytes().take_while(u8::is_ascii_digit).count();
    let letters = build[digits..]
        .bytes()
        .take_while(u8::is_ascii_uppercase)
        .count();
    let rest = &build[digits + letters..];
    let number = rest.bytes().take_while(u8::is_ascii_digit).count();
    (
        build[..digits].parse().expect("build major"),
        build[digits..digits + letters].to_string(),
        rest[..number].parse().expect("build number"),
        rest[number..].to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// The catalog, read raw
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Entry {
    set: String,
    /// `iOS`, `macOS` or `visionOS` (the pmv platform key).
    key: String,
    /// With the extra, `26.3.1 (a)`.
    version: String,
    build: String,
    posted: Date,
    expires: Option<Date>,
    devices: Vec<String>,
}

static CATALOG: LazyLock<Vec<Entry>> = LazyLock::new(|| {
    let text = std::fs::read_to_string(examples().join("catalog/pmv.json")).expect("catalog");
    let doc: Value = serde_json::from_str(&text).expect("catalog JSON");
    let mut entries = Vec::new();
    for (set, platforms) in doc.as_object().expect("object") {
        for (key, list) in platforms.as_object().expect("platforms") {
            for e in list.as_array().expect("entries") {
                let mut version = e["ProductVersion"].as_str().expect("version").to_string();
                if let Some(extra) = e.get("ProductVersionExtra").and_then(Value::as_str) {
                    version = format!("{version} {extra}");
                }
                let date = |k: &str| {
                    e.get(k)
                        .and_then(Value::as_str)
                        .map(|d| d.parse().expect(k))
                };
                entries.push(Entry {
                    set: set.clone(),
                    key: if key == "xrOS" {
                        "visionOS".into()
                    } else {
                        key.clone()
                    },
                    version,
                    build: e["Build"]
                        .as_str()
                        .expect("every 2026 entry has a build")
                        .into(),
                    posted: date("PostingDate").expect("posting date"),
                    expires: date("ExpirationDate"),
                    devices: e["SupportedDevices"]
                        .as_array()
                        .expect("devices")
                        .iter()
                        .map(|d| d.as_str().expect("device").trim().to_string())
                        .collect(),
                });
            }
        }
    }
    entries
});

fn today() -> Date {
    AT.parse().expect("date")
}

fn now() -> Timestamp {
    format!("{AT}T00:00:00Z").parse().expect("timestamp")
}

/// Entries of one set listing the device, installable on the plan date.
fn offers(set: &str, device_id: &str) -> Vec<&'static Entry> {
    CATALOG
        .iter()
        .filter(|e| e.set == set && e.devices.iter().any(|d| d == device_id))
        .filter(|e| e.expires.is_none_or(|x| x >= today()))
        .collect()
}

/// Deadlines count from the earliest posting of the build across AssetSets and
/// PublicAssetSets (the public set re-stamps dates).
fn posted(key: &str, build: &str) -> Date {
    CATALOG
        .iter()
        .filter(|e| e.key == key && e.build == build)
        .filter(|e| e.set == "AssetSets" || e.set == "PublicAssetSets")
        .map(|e| e.posted)
        .min()
        .expect("posting date")
}

// ---------------------------------------------------------------------------------------------
// The inventory, read raw
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Device {
    id: String,
    serial: Option<String>,
    platform: String,
    model: String,
    su_id: Option<String>,
    /// With the extra, `26.3.1 (a)`.
    version: String,
    build: Option<String>,
    supervised: bool,
    enrollment: String,
    labels: BTreeMap<String, String>,
}

impl Device {
    fn catalog_id(&self) -> Option<&str> {
        match (&self.su_id, self.platform.as_str()) {
            (Some(id), _) => Some(id),
            (None, "macOS") => None,
            (None, _) => Some(&self.model),
        }
    }

    fn numeric(&self) -> &str {
        self.version.split(' ').next().unwrap_or_default()
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// The OS name Apple's schemas use.
    fn schema_os(&self) -> &'static str {
        match self.platform.as_str() {
            "iOS" | "iPadOS" => "iOS",
            "macOS" => "macOS",
            "tvOS" => "tvOS",
            "watchOS" => "watchOS",
            "visionOS" => "visionOS",
            other => panic!("platform {other}"),
        }
    }

    fn schema_enrollment(&self) -> &'static str {
        if self.enrollment == "user" {
            "user"
        } else if self.supervised {
            "supervised"
        } else {
            "device"
        }
    }
}

fn read_inventory(path: &Path) -> Vec<Device> {
    let text = std::fs::read_to_string(path).expect("inventory");
    let doc: Value = serde_saphyr::from_str(&text).expect("inventory YAML");
    let s = |d: &Value, k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
    doc["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| {
            let version = s(d, "osVersion").expect("osVersion");
            Device {
                id: s(d, "enrollmentId").expect("enrollmentId"),
                serial: s(d, "serialNumber"),
                platform: s(d, "platform").expect("platform"),
                model: s(d, "model").expect("model"),
                su_id: s(d, "softwareUpdateDeviceId"),
                version: match s(d, "supplementalExtra") {
                    Some(extra) => format!("{version} {extra}"),
                    None => version,
                },
                build: s(d, "buildVersion"),
                supervised: d["supervised"].as_bool().unwrap_or(false),
                enrollment: s(d, "enrollmentType").unwrap_or_else(|| "device".into()),
                labels: d["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().expect("label").to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect()
}

static INVENTORY: LazyLock<Vec<Device>> = LazyLock::new(|| read_inventory(&inventory_file()));

fn edge(case: &str) -> Vec<&'static Device> {
    let found: Vec<&Device> = INVENTORY
        .iter()
        .filter(|d| d.label("case") == Some(case))
        .collect();
    assert!(
        !found.is_empty(),
        "the inventory has no device labelled case={case}"
    );
    found
}

// ---------------------------------------------------------------------------------------------
// What the example manifests say, restated (checked against the files by `mirror_matches_...`)
// ---------------------------------------------------------------------------------------------

struct Group {
    name: &'static str,
    platforms: &'static [&'static str],
    labels: &'static [(&'static str, &'static str)],
    shard: Option<(u32, &'static str)>,
}

static GROUPS: [Group; 6] = [
    Group {
        name: "ipads",
        platforms: &["iPadOS"],
        labels: &[],
        shard: None,
    },
    Group {
        name: "iphones",
        platforms: &["iOS"],
        labels: &[],
        shard: None,
    },
    Group {
        name: "macs-broad",
        platforms: &["macOS"],
        labels: &[("fleet", "corporate")],
        shard: None,
    },
    Group {
        name: "macs-canary",
        platforms: &["macOS"],
        labels: &[("fleet", "corporate")],
        shard: Some((10, "macs-canary")),
    },
    Group {
        name: "meeting-rooms",
        platforms: &["tvOS", "visionOS"],
        labels: &[("fleet", "corporate")],
        shard: None,
    },
    Group {
        name: "vip-iphones",
        platforms: &["iOS"],
        labels: &[("role", "vip")],
        shard: None,
    },
];

/// A stable bucket 0..100: SHA-256 of seed, a zero byte and the enrollment id; the first 8
/// bytes big-endian, modulo 100 (the FleetGroup shard contract).
fn bucket(seed: &str, id: &str) -> u32 {
    let digest = Sha256::new()
        .chain_update(seed.as_bytes())
        .chain_update([0u8])
        .chain_update(id.as_bytes())
        .finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(head) % 100) as u32
}

fn in_group(group: &Group, device: &Device) -> bool {
    group.platforms.contains(&device.platform.as_str())
        && group
            .labels
            .iter()
            .all(|(k, v)| device.label(k) == Some(*v))
        && group
            .shard
            .is_none_or(|(percent, seed)| bucket(seed, &device.id) < percent)
}

#[derive(Clone, Copy, PartialEq)]
enum Strategy {
    Latest,
    LatestMinor,
}

struct DeadlineRule {
    days: i64,
    local_time: Time,
    zone: &'static str,
    lead_hours: i64,
}

struct Policy {
    name: &'static str,
    /// (ring name, groups, delay days); ring 0 is the policy's own `fleetGroups`.
    rings: &'static [(&'static str, &'static [&'static str], i64)],
    strategy: Strategy,
    security_improvements: bool,
    deadline: DeadlineRule,
    details_url: Option<&'static str>,
}

/// In the resolver's order (namespace/name).
static POLICIES: [Policy; 3] = [
    Policy {
        name: "macs",
        rings: &[("", &["macs-canary"], 0), ("broad", &["macs-broad"], 5)],
        strategy: Strategy::Latest,
        security_improvements: true,
        deadline: DeadlineRule {
            days: 14,
            local_time: Time::constant(19, 0, 0, 0),
            zone: "Europe/Berlin",
            lead_hours: 72,
        },
        details_url: Some("https://it.example.com/updates/macos"),
    },
    Policy {
        name: "meeting-rooms",
        rings: &[("", &["meeting-rooms"], 0)],
        strategy: Strategy::Latest,
        security_improvements: false,
        deadline: DeadlineRule {
            days: 7,
            local_time: Time::constant(7, 0, 0, 0),
            zone: "Europe/London",
            lead_hours: 24,
        },
        details_url: None,
    },
    Policy {
        name: "mobile",
        rings: &[("", &["iphones", "ipads"], 0)],
        strategy: Strategy::LatestMinor,
        security_improvements: false,
        deadline: DeadlineRule {
            days: 21,
            local_time: Time::constant(18, 0, 0, 0),
            zone: "America/New_York",
            lead_hours: 48,
        },
        details_url: Some("https://it.example.com/updates/ios"),
    },
];

struct HandTarget {
    name: &'static str,
    groups: &'static [&'static str],
    platform: &'static str,
    version: &'static str,
    deadline: &'static str,
    details_url: &'static str,
}

static TARGETS: [HandTarget; 1] = [HandTarget {
    name: "vip-ios-26-6-1",
    groups: &["vip-iphones"],
    platform: "iOS",
    version: "26.6.1",
    deadline: "2026-08-26T12:00:00",
    details_url: "https://it.example.com/security/2026-08-ios-26-6-1",
}];

/// Saturday and Sunday move to Monday (every example policy skips weekends).
fn skip_weekend(d: Date) -> Date {
    match d.weekday() {
        Weekday::Saturday => d.checked_add(2.days()).expect("date"),
        Weekday::Sunday => d.checked_add(1.days()).expect("date"),
        _ => d,
    }
}

/// A ring's deadline as handed out now (`plan` has no ledger): its own, and never earlier than
/// the previous ring's plus the difference of their delays — rings keep their spacing even when
/// the lead time pushed the first.
fn ring_deadline(policy: &Policy, ring: usize, posted: Date) -> DateTime {
    let own = deadline(&policy.deadline, posted, policy.rings[ring].2);
    if ring == 0 {
        return own;
    }
    let previous = ring_deadline(policy, ring - 1, posted);
    let gap = policy.rings[ring].2 - policy.rings[ring - 1].2;
    let spaced = skip_weekend(previous.date().checked_add(gap.days()).expect("date"))
        .to_datetime(policy.deadline.local_time);
    own.max(spaced)
}

/// Days after posting plus the ring delay at the local time; Saturday and Sunday move to
/// Monday; never closer than the lead time to "now", counted in the policy's zone.
fn deadline(rule: &DeadlineRule, posted: Date, delay: i64) -> DateTime {
    let skip = skip_weekend;
    let due = posted
        .checked_add((rule.days + delay).days())
        .expect("date");
    let mut at = skip(due).to_datetime(rule.local_time);
    let earliest = now()
        .checked_add(SignedDuration::from_hours(rule.lead_hours))
        .expect("time")
        .to_zoned(TimeZone::get(rule.zone).expect("zone"))
        .datetime();
    if at < earliest {
        let mut day = earliest.date();
        if day.to_datetime(rule.local_time) < earliest {
            day = day.tomorrow().expect("date");
        }
        at = skip(day).to_datetime(rule.local_time);
    }
    at
}

fn local(at: DateTime) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S").to_string()
}

// ---------------------------------------------------------------------------------------------
// The reference reading: what the examples should resolve to
// ---------------------------------------------------------------------------------------------

/// One enforcement: (TargetOSVersion, TargetBuildVersion, TargetLocalDateTime, DetailsURL).
type Enforcement = (String, Option<String>, String, Option<String>);

#[derive(Debug, Clone)]
struct Candidate {
    source: String,
    /// Policy index and ring, for generated targets.
    policy: Option<(usize, usize)>,
    version: String,
    build: Option<String>,
    deadline: String,
    details_url: Option<String>,
}

#[derive(Debug, Default)]
struct DeviceExpectation {
    enforcements: BTreeSet<Enforcement>,
    /// (reason, source) → count.
    reasons: BTreeMap<(String, String), usize>,
    kept: Vec<Candidate>,
}

#[derive(Debug, Default, PartialEq)]
struct Generated {
    platform: String,
    version: String,
    deadline: String,
    groups: Vec<String>,
    builds: BTreeMap<String, String>,
    details_url: Option<String>,
    policy: String,
}

struct Expected {
    devices: Vec<DeviceExpectation>,
    generated: BTreeMap<String, Generated>,
    members: BTreeMap<String, usize>,
}

/// Why a device takes no software-update declaration at all (Apple's schemas: iOS 17,
/// macOS 14 supervised, tvOS 18.4, visionOS 26, never watchOS, never a user enrollment).
fn blocked(device: &Device) -> Option<&'static str> {
    let (introduced, supervision) = match device.platform.as_str() {
        "iOS" | "iPadOS" => ("17.0", false),
        "macOS" => ("14.0", true),
        "tvOS" => ("18.4", false),
        "visionOS" => ("26.0", false),
        _ => return Some("DeclarationNotSupported"),
    };
    if device.enrollment == "user" || (supervision && !device.supervised) {
        Some("NotSupervised")
    } else if vkey(device.numeric()) < vkey(introduced) {
        Some("DeclarationNotSupported")
    } else if device.catalog_id().is_none() {
        Some("DeviceIdUnknown")
    } else {
        None
    }
}

/// The list releases come from: PublicAssetSets for an unsupervised device (Apple: AssetSets are
/// for supervised devices) and for a Mac before macOS 15 (Apple's enrollment note, followed by
/// declarations too), where the policy asked for AssetSets.
fn release_set(device: &Device) -> &'static str {
    if !device.supervised || (device.platform == "macOS" && major(&device.version) < 15) {
        "PublicAssetSets"
    } else {
        "AssetSets"
    }
}

/// The build an enforcement names: a security improvement's, where it is the device's only
/// build of that version; never a full release's (the examples hold no beta builds, and twins
/// such as 23G83 / 23G6083 are left to the device).
fn build_for(device_id: &str, chosen: &Entry) -> Option<String> {
    let improvement = chosen.set == "PublicBackgroundSecurityImprovements";
    let builds = CATALOG
        .iter()
        .filter(|e| e.set == chosen.set && e.version == chosen.version)
        .filter(|e| e.devices.iter().any(|d| d == device_id))
        .count();
    (improvement && builds == 1).then(|| chosen.build.clone())
}

fn policy_candidate(p: usize, ring: usize, device: &Device) -> Result<Candidate, &'static str> {
    let policy = &POLICIES[p];
    let id = device.catalog_id().expect("not blocked");
    let mut offered = offers(release_set(device), id);
    if policy.security_improvements {
        offered.extend(offers("PublicBackgroundSecurityImprovements", id));
    }
    assert!(!offered.is_empty(), "{id} is not in the catalog");
    let in_scope: Vec<&Entry> = offered
        .into_iter()
        .filter(|e| {
            policy.strategy == Strategy::Latest || major(&e.version) == major(&device.version)
        })
        .collect();
    let Some(best) = in_scope.iter().map(|e| vkey(&e.version)).max() else {
        return Err("NoMatchingRelease");
    };
    if best <= vkey(&device.version) {
        return Err("UpToDate");
    }
    let chosen = in_scope
        .iter()
        .filter(|e| vkey(&e.version) == best)
        .min_by_key(|e| bkey(&e.build))
        .expect("chosen");
    assert!(
        chosen.set != "PublicBackgroundSecurityImprovements",
        "{id}: a security improvement is the newest release; this reading does not model it"
    );
    let at = ring_deadline(policy, ring, posted(&chosen.key, &chosen.build));
    assert!(
        chosen.expires.is_none_or(|e| e >= at.date()),
        "{id}: {} expires before its deadline; the examples assume it does not",
        chosen.version
    );
    Ok(Candidate {
        source: format!("UpdatePolicy {NAMESPACE}/{}", policy.name),
        policy: Some((p, ring)),
        version: chosen.version.clone(),
        build: build_for(id, chosen),
        deadline: local(at),
        details_url: policy.details_url.map(str::to_string),
    })
}

fn target_candidate(target: &HandTarget, device: &Device) -> Result<Candidate, &'static str> {
    if vkey(&device.version) >= vkey(target.version) {
        return Err("UpToDate");
    }
    let id = device.catalog_id().expect("not blocked");
    let chosen = offers(release_set(device), id)
        .into_iter()
        .filter(|e| e.version == target.version)
        .min_by_key(|e| bkey(&e.build))
        .ok_or("NoMatchingRelease")?;
    Ok(Candidate {
        source: format!("EnforcementTarget {NAMESPACE}/{}", target.name),
        policy: None,
        version: target.version.into(),
        build: build_for(id, chosen),
        deadline: target.deadline.into(),
        details_url: Some(target.details_url.into()),
    })
}

fn generated_name(policy: &str, ring: &str, platform: &str, version: &str) -> String {
    let version = version.replace(['.', ' '], "-").replace(['(', ')'], "");
    let mut name = format!("{policy}-{}-{version}", platform.to_lowercase());
    if !ring.is_empty() {
        name = format!("{name}-{ring}");
    }
    name
}

fn expected_plan(devices: &[Device]) -> Expected {
    let mut members: BTreeMap<String, usize> = GROUPS
        .iter()
        .map(|g| (format!("{NAMESPACE}/{}", g.name), 0))
        .collect();
    let mut generated: BTreeMap<String, Generated> = BTreeMap::new();
    let mut out = Vec::new();
    for device in devices {
        let groups: Vec<&str> = GROUPS
            .iter()
            .filter(|g| in_group(g, device))
            .map(|g| g.name)
            .collect();
        for g in &groups {
            *members.get_mut(&format!("{NAMESPACE}/{g}")).expect("group") += 1;
        }
        let mut expectation = DeviceExpectation::default();
        // Policies in the resolver's order, then hand-written targets.
        let mut sources: Vec<(String, Result<Candidate, &'static str>, bool)> = Vec::new();
        let blocked = blocked(device);
        for (p, policy) in POLICIES.iter().enumerate() {
            // A device in several rings takes the first that names it.
            if let Some(ring) = policy
                .rings
                .iter()
                .position(|(_, gs, _)| gs.iter().any(|g| groups.contains(g)))
            {
                let source = format!("UpdatePolicy {NAMESPACE}/{}", policy.name);
                let decision = match blocked {
                    Some(reason) => Err(reason),
                    None => policy_candidate(p, ring, device),
                };
                sources.push((source, decision, blocked.is_none()));
            }
        }
        for target in &TARGETS {
            if target.platform == device.platform
                && target.groups.iter().any(|g| groups.contains(g))
            {
                let source = format!("EnforcementTarget {NAMESPACE}/{}", target.name);
                let decision = match blocked {
                    Some(reason) => Err(reason),
                    None => target_candidate(target, device),
                };
                sources.push((source, decision, blocked.is_none()));
            }
        }
        let mut note = |reason: &str, source: &str| {
            *expectation
                .reasons
                .entry((reason.to_string(), source.to_string()))
                .or_default() += 1;
        };
        let mut candidates = Vec::new();
        for (source, decision, resolved) in sources {
            match decision {
                Ok(candidate) => candidates.push(candidate),
                Err(reason) => note(reason, &source),
            }
            // Chosen from the public list where AssetSets was asked for: said for every source.
            if resolved && release_set(device) == "PublicAssetSets" {
                note("PublicAssetSetsOnly", &source);
            }
        }
        // Earliest deadline first; an enforcement an earlier-or-equal deadline already covers
        // (same or newer version) is dropped as Superseded.
        candidates.sort_by(|a, b| {
            a.deadline
                .cmp(&b.deadline)
                .then_with(|| vkey(&b.version).cmp(&vkey(&a.version)))
        });
        for candidate in candidates {
            let covered = expectation.kept.iter().any(|k| {
                k.deadline <= candidate.deadline && vkey(&k.version) >= vkey(&candidate.version)
            });
            if covered {
                note("Superseded", &candidate.source);
                continue;
            }
            if let Some((p, ring)) = candidate.policy {
                let policy = &POLICIES[p];
                let name = generated_name(
                    policy.name,
                    policy.rings[ring].0,
                    &device.platform,
                    &candidate.version,
                );
                let entry = generated.entry(name.clone()).or_insert_with(|| Generated {
                    platform: device.platform.clone(),
                    version: candidate.version.clone(),
                    deadline: candidate.deadline.clone(),
                    groups: policy.rings[ring].1.iter().map(|g| g.to_string()).collect(),
                    builds: BTreeMap::new(),
                    details_url: policy.details_url.map(str::to_string),
                    policy: policy.name.into(),
                });
                assert_eq!(
                    entry.deadline, candidate.deadline,
                    "{name}: two deadlines for one generated target name"
                );
                if let Some(build) = &candidate.build {
                    entry
                        .builds
                        .insert(device.catalog_id().expect("id").to_string(), build.clone());
                }
            }
            expectation.enforcements.insert((
                candidate
                    .version
                    .split(' ')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                candidate.build.clone(),
                candidate.deadline.clone(),
                candidate.details_url.clone(),
            ));
            expectation.kept.push(candidate);
        }
        out.push(expectation);
    }
    Expected {
        devices: out,
        generated,
        members,
    }
}

static EXPECTED: LazyLock<Expected> = LazyLock::new(|| expected_plan(&INVENTORY));

// ---------------------------------------------------------------------------------------------
// Reading the plan output
// ---------------------------------------------------------------------------------------------

const ENFORCEMENT: &str = "com.apple.configuration.softwareupdate.enforcement.specific";
const SETTINGS: &str = "com.apple.configuration.softwareupdate.settings";
const SUBSCRIPTIONS: &str = "com.apple.configuration.management.status-subscriptions";
const ACTIVATION: &str = "com.apple.activation.simple";

fn devices_of(plan: &Value) -> &Vec<Value> {
    plan["devices"].as_array().expect("devices")
}

fn device_json<'a>(plan: &'a Value, enrollment_id: &str) -> &'a Value {
    devices_of(plan)
        .iter()
        .find(|d| d["enrollmentId"] == enrollment_id)
        .unwrap_or_else(|| panic!("{enrollment_id} is not in the plan"))
}

fn declarations<'a>(device: &'a Value, kind: &str) -> Vec<&'a Value> {
    device["declarations"]
        .as_array()
        .expect("declarations")
        .iter()
        .filter(|d| d["Type"] == kind)
        .collect()
}

fn enforcements_of(device: &Value) -> BTreeSet<Enforcement> {
    declarations(device, ENFORCEMENT)
        .into_iter()
        .map(|d| {
            let p = &d["Payload"];
            let s = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
            (
                s("TargetOSVersion").expect("TargetOSVersion"),
                s("TargetBuildVersion"),
                s("TargetLocalDateTime").expect("TargetLocalDateTime"),
                s("DetailsURL"),
            )
        })
        .collect()
}

fn reasons_of(device: &Value) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for r in device["reasons"].as_array().expect("reasons") {
        let key = (
            r["reason"].as_str().expect("reason").to_string(),
            r["source"].as_str().expect("source").to_string(),
        );
        *out.entry(key).or_default() += 1;
    }
    out
}

fn reason_list(device: &Value) -> Vec<(String, String)> {
    reasons_of(device).into_keys().collect()
}

fn pair(reason: &str, source: &str) -> (String, String) {
    (reason.to_string(), source.to_string())
}

// ---------------------------------------------------------------------------------------------
// The examples
// ---------------------------------------------------------------------------------------------

#[test]
fn plan_on_the_examples_exits_0_with_the_documented_json_shape() {
    let plan = example_plan();
    let top: BTreeSet<&str> = plan
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        top,
        BTreeSet::from(["enforcementTargets", "devices", "summary"])
    );
    let devices = devices_of(plan);
    assert_eq!(
        devices.len(),
        INVENTORY.len(),
        "one entry per inventory device"
    );
    assert!(INVENTORY.len() >= 250, "a few hundred devices");
    let mut identifiers = BTreeSet::new();
    for (device, inventory) in devices.iter().zip(INVENTORY.iter()) {
        let keys: BTreeSet<&str> = device
            .as_object()
            .expect("device")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["enrollmentId", "enforcements", "declarations", "reasons"])
        );
        assert_eq!(
            device["enrollmentId"],
            inventory.id.as_str(),
            "inventory order"
        );
        for d in device["declarations"].as_array().expect("declarations") {
            let keys: BTreeSet<&str> = d
                .as_object()
                .expect("declaration")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                keys,
                BTreeSet::from(["Type", "Identifier", "ServerToken", "Payload"])
            );
            assert!(d["Payload"].is_object());
            identifiers.insert(d["Identifier"].as_str().expect("identifier").to_string());
        }
        for r in device["reasons"].as_array().expect("reasons") {
            let keys: BTreeSet<&str> = r
                .as_object()
                .expect("reason")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, BTreeSet::from(["reason", "source", "message"]));
            assert!(!r["message"].as_str().expect("message").is_empty());
        }
    }
    let summary = &plan["summary"];
    assert_eq!(summary["devices"], INVENTORY.len());
    let with_enforcement = devices
        .iter()
        .filter(|d| !declarations(d, ENFORCEMENT).is_empty())
        .count();
    assert_eq!(summary["devicesWithEnforcement"], with_enforcement);
    assert_eq!(
        summary["distinctDeclarations"],
        identifiers.len(),
        "every declaration stored once and used by some device"
    );
    assert_eq!(summary["warnings"], json!([]), "the examples plan cleanly");

    // The other two formats work on the same input.
    let table = plan_table();
    assert!(table.contains(&format!(
        "{} devices, {} with an enforcement; {} distinct declarations",
        INVENTORY.len(),
        with_enforcement,
        identifiers.len()
    )));
}

fn plan_table() -> String {
    let run = plan(&[gitops()], "table");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    run.stdout
}

#[test]
fn the_mirror_in_this_file_matches_the_example_manifests() {
    // The expectations below restate the manifests; make sure they restate them faithfully.
    let manifests = ddm_update_operator::manifests::load(&[gitops()]).expect("examples load");
    assert!(manifests.notices.is_empty(), "{:?}", manifests.notices);
    let groups: BTreeSet<String> = manifests
        .fleet_groups
        .iter()
        .map(|g| g.metadata.name.clone().expect("name"))
        .collect();
    let mirrored: BTreeSet<String> = GROUPS.iter().map(|g| g.name.to_string()).collect();
    assert_eq!(groups, mirrored);
    for group in &manifests.fleet_groups {
        let name = group.metadata.name.as_deref().expect("name");
        let mirror = GROUPS.iter().find(|g| g.name == name).expect("mirrored");
        let platforms: Vec<String> = group
            .spec
            .platforms
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(platforms, mirror.platforms, "{name} platforms");
        let labels: Vec<(String, String)> = group
            .spec
            .selector
            .match_labels
            .clone()
            .into_iter()
            .collect();
        let mirror_labels: Vec<(String, String)> = mirror
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(labels, mirror_labels, "{name} labels");
        assert_eq!(
            group
                .spec
                .shard
                .as_ref()
                .map(|s| (u32::from(s.percent), s.seed.clone().unwrap_or_default())),
            mirror.shard.map(|(p, s)| (p, s.to_string())),
            "{name} shard"
        );
    }
    assert_eq!(manifests.policies.len(), POLICIES.len());
    for policy in &manifests.policies {
        let name = policy.metadata.name.as_deref().expect("name");
        let mirror = POLICIES.iter().find(|p| p.name == name).expect("mirrored");
        let spec = &policy.spec;
        let mut rings = vec![(String::new(), spec.fleet_groups.clone(), 0i64)];
        rings.extend(spec.rings.iter().map(|r| {
            (
                r.name.clone(),
                r.fleet_groups.clone(),
                i64::from(r.delay_days),
            )
        }));
        let mirror_rings: Vec<(String, Vec<String>, i64)> = mirror
            .rings
            .iter()
            .map(|(n, g, d)| (n.to_string(), g.iter().map(|g| g.to_string()).collect(), *d))
            .collect();
        assert_eq!(rings, mirror_rings, "{name} rings");
        let strategy = match mirror.strategy {
            Strategy::Latest => "latest",
            Strategy::LatestMinor => "latest-minor",
        };
        assert_eq!(spec.target.strategy, strategy, "{name} strategy");
        assert_eq!(
            spec.target.security_improvements,
            mirror.security_improvements
        );
        let d = &spec.deadline;
        assert_eq!(i64::from(d.days_after_posting), mirror.deadline.days);
        assert_eq!(
            d.local_time,
            mirror.deadline.local_time.strftime("%H:%M").to_string()
        );
        assert_eq!(d.time_zone, mirror.deadline.zone);
        assert!(d.skip_weekends, "{name} skips weekends");
        assert_eq!(
            d.minimum_lead_time,
            Some(format!("{}h", mirror.deadline.lead_hours))
        );
        assert_eq!(spec.details_url.as_deref(), mirror.details_url);
    }
    assert_eq!(manifests.targets.len(), TARGETS.len());
    let target = &manifests.targets[0];
    let mirror = &TARGETS[0];
    assert_eq!(target.metadata.name.as_deref(), Some(mirror.name));
    assert_eq!(target.spec.fleet_groups, mirror.groups);
    assert_eq!(target.spec.platform.to_string(), mirror.platform);
    assert_eq!(target.spec.target_os_version, mirror.version);
    assert_eq!(target.spec.target_local_date_time, mirror.deadline);
    assert_eq!(target.spec.details_url.as_deref(), Some(mirror.details_url));
    for namespace in manifests
        .fleet_groups
        .iter()
        .map(|o| &o.metadata.namespace)
        .chain(manifests.policies.iter().map(|o| &o.metadata.namespace))
        .chain(manifests.targets.iter().map(|o| &o.metadata.namespace))
    {
        assert_eq!(namespace.as_deref(), Some(NAMESPACE));
    }
}

#[test]
fn generated_enforcement_targets_are_what_the_policies_say() {
    let plan = example_plan();
    let actual: BTreeMap<String, &Value> = plan["enforcementTargets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| (t["metadata"]["name"].as_str().expect("name").to_string(), t))
        .collect();
    assert_eq!(
        actual.len(),
        plan["enforcementTargets"]
            .as_array()
            .expect("targets")
            .len(),
        "generated names are unique"
    );
    let expected = &EXPECTED.generated;
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "generated EnforcementTarget names"
    );
    for (name, want) in expected {
        let got = actual[name];
        assert!(name.len() <= 63, "{name}");
        assert_eq!(got["apiVersion"], "updates.ddm.dev/v1alpha1");
        assert_eq!(got["kind"], "EnforcementTarget");
        assert_eq!(got["metadata"]["namespace"], NAMESPACE, "{name}");
        assert_eq!(
            got["metadata"]["labels"]["updates.ddm.dev/policy"], want.policy,
            "{name} is labelled with its policy"
        );
        let spec = &got["spec"];
        assert_eq!(spec["platform"], want.platform.as_str(), "{name}");
        assert_eq!(spec["targetOSVersion"], want.version.as_str(), "{name}");
        assert_eq!(
            spec["targetLocalDateTime"],
            want.deadline.as_str(),
            "{name}"
        );
        assert_eq!(spec["fleetGroups"], json!(want.groups), "{name}");
        assert_eq!(
            spec.get("detailsURL").and_then(Value::as_str),
            want.details_url.as_deref(),
            "{name}"
        );
        let builds: BTreeMap<String, String> = spec
            .get("targetBuildVersions")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .map(|b| {
                        (
                            b["model"].as_str().expect("model").to_string(),
                            b["build"].as_str().expect("build").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(builds, want.builds, "{name} builds per device id");
    }

    // The same dates worked out by hand from the catalog:
    // macOS 26.6.2 (25G83) was posted 2026-08-17 (a Monday) in both sets; +14 days is Monday
    // 2026-08-31; the broad ring adds 5 days: Saturday 2026-09-05, which moves to Monday.
    let deadline_of = |name: &str| actual[name]["spec"]["targetLocalDateTime"].clone();
    assert_eq!(posted("macOS", "25G83"), jiff::civil::date(2026, 8, 17));
    assert_eq!(deadline_of("macs-macos-26-6-2"), "2026-08-31T19:00:00");
    assert_eq!(
        deadline_of("macs-macos-26-6-2-broad"),
        "2026-09-07T19:00:00"
    );
    // macOS 15.7.9 (24G830): AssetSets 2026-08-06, PublicAssetSets re-stamped 2026-08-17; the
    // earlier counts. +14 days is already past on 2026-08-22; 72 hours after 2026-08-22 00:00
    // UTC is 02:00 Berlin on Tuesday 08-25, so 19:00 that day for the canary ring. The broad
    // ring's own +19 (Tuesday 08-25) would collapse onto the canary's; rings keep their spacing:
    // 08-25 + 5 days is Sunday 08-30, which moves to Monday 08-31.
    assert_eq!(posted("macOS", "24G830"), jiff::civil::date(2026, 8, 6));
    assert_eq!(deadline_of("macs-macos-15-7-9"), "2026-08-25T19:00:00");
    assert_eq!(
        deadline_of("macs-macos-15-7-9-broad"),
        "2026-08-31T19:00:00"
    );
    // iOS 26.6.1 (23G83), posted Monday 2026-08-17, +21 days: Monday 2026-09-07 at 18:00.
    assert_eq!(deadline_of("mobile-ios-26-6-1"), "2026-09-07T18:00:00");
    // iOS 18.7.8 (22H352) was posted 2026-04-22: long past. 48 hours after 2026-08-21 20:00 New
    // York is Sunday 08-23 20:00, after 18:00, so Monday 08-24 at 18:00.
    assert_eq!(deadline_of("mobile-ios-18-7-8"), "2026-08-24T18:00:00");
    // Twin builds (23G83 and 23G6083 for every device): nothing says which one a device can
    // take, so the target names neither and each device picks its own.
    let ios = &actual["mobile-ios-26-6-1"]["spec"];
    assert!(
        ios.get("targetBuildVersions")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty),
        "{ios}"
    );
}

#[test]
fn every_device_gets_the_enforcements_and_reasons_the_rules_give() {
    let plan = example_plan();
    let expected = &*EXPECTED;
    let mut mismatches = Vec::new();
    let mut reason_totals: BTreeMap<String, usize> = BTreeMap::new();
    for ((device, json), want) in INVENTORY
        .iter()
        .zip(devices_of(plan))
        .zip(&expected.devices)
    {
        let got = enforcements_of(json);
        if got != want.enforcements {
            mismatches.push(format!(
                "{} ({} {} {}): enforcements {got:?}, expected {:?}",
                device.id, device.platform, device.model, device.version, want.enforcements
            ));
        }
        let reasons = reasons_of(json);
        if reasons != want.reasons {
            mismatches.push(format!(
                "{} ({} {} {}): reasons {reasons:?}, expected {:?}",
                device.id, device.platform, device.model, device.version, want.reasons
            ));
        }
        for ((reason, _), n) in &want.reasons {
            *reason_totals.entry(reason.clone()).or_default() += n;
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));

    let summary = &plan["summary"];
    assert_eq!(summary["reasons"], json!(reason_totals));
    assert_eq!(summary["groupMembers"], json!(expected.members));
    for (group, n) in &expected.members {
        assert!(*n > 0, "{group} selects no device");
    }
    let canary = expected.members["it-fleet/macs-canary"] as f64;
    let broad = expected.members["it-fleet/macs-broad"] as f64;
    assert!(
        (0.05..0.16).contains(&(canary / broad)),
        "the canary is about a tenth of the corporate Macs: {canary}/{broad}"
    );
    let with_enforcement = expected
        .devices
        .iter()
        .filter(|d| !d.enforcements.is_empty())
        .count();
    assert_eq!(summary["devicesWithEnforcement"], with_enforcement);
}

/// Apple-schema problems of every declaration each device gets, for the devices `pick` takes.
fn schema_problems(
    devices: &[Device],
    plan: &Value,
    pick: impl Fn(&Device) -> bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (device, json) in devices.iter().zip(devices_of(plan)) {
        if !pick(device) {
            continue;
        }
        assert_eq!(json["enrollmentId"], device.id.as_str());
        let target = Target {
            os: device.schema_os(),
            os_version: device.numeric(),
            enrollment: device.schema_enrollment(),
        };
        for declaration in json["declarations"].as_array().expect("declarations") {
            for problem in apple_schema::validate(declaration, &target) {
                problems.push(format!(
                    "{} ({} {} {}, {}): {} {}: {problem}",
                    device.id,
                    target.os,
                    target.os_version,
                    target.enrollment,
                    device.model,
                    declaration["Type"],
                    declaration["Identifier"]
                ));
            }
        }
    }
    problems
}

#[test]
fn every_declaration_is_valid_for_its_device_and_shared_by_identifier() {
    let plan = example_plan();
    let problems = schema_problems(&INVENTORY, plan, |_| true);
    assert!(
        problems.is_empty(),
        "{} problems against Apple's schemas:\n{}",
        problems.len(),
        problems.join("\n")
    );
    let mut by_identifier: BTreeMap<String, String> = BTreeMap::new();
    for (device, json) in INVENTORY.iter().zip(devices_of(plan)) {
        let list = json["declarations"].as_array().expect("declarations");
        let mut configurations = BTreeSet::new();
        let mut activations = Vec::new();
        for declaration in list {
            let identifier = declaration["Identifier"].as_str().expect("identifier");
            let token = declaration["ServerToken"].as_str().expect("token");
            assert!(identifier.len() <= 64, "{identifier}");
            assert!(token.len() <= 64 && !token.is_empty(), "{token}");
            let bytes = serde_json::to_string(declaration).expect("encode");
            let first = by_identifier
                .entry(identifier.to_string())
                .or_insert_with(|| bytes.clone());
            assert_eq!(
                *first, bytes,
                "two declarations share the identifier {identifier} but differ"
            );
            if declaration["Type"] == ACTIVATION {
                activations.push(declaration);
            } else {
                assert!(
                    declaration["Type"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("com.apple.configuration.")),
                    "{declaration}"
                );
                configurations.insert(identifier.to_string());
            }
        }
        // One activation naming exactly the device's configurations, or nothing at all.
        if configurations.is_empty() {
            assert!(
                list.is_empty(),
                "{}: an activation with nothing to activate",
                device.id
            );
            continue;
        }
        assert_eq!(activations.len(), 1, "{}: one activation", device.id);
        let named: BTreeSet<String> = activations[0]["Payload"]["StandardConfigurations"]
            .as_array()
            .expect("StandardConfigurations")
            .iter()
            .map(|v| v.as_str().expect("identifier").to_string())
            .collect();
        assert_eq!(
            named, configurations,
            "{}: the activation names its configurations",
            device.id
        );
        // At most one settings and one subscriptions declaration per device.
        assert!(declarations(json, SETTINGS).len() <= 1, "{}", device.id);
        assert!(
            declarations(json, SUBSCRIPTIONS).len() <= 1,
            "{}",
            device.id
        );
    }
    // Hundreds of devices, a few dozen declarations: content-addressed sharing works.
    assert!(
        by_identifier.len() < INVENTORY.len() / 4,
        "{}",
        by_identifier.len()
    );
}

/// Apple's status item schemas list the enrollments each item allows: `softwareupdate.*` and
/// `device.identifier.serial-number` are not offered to User Enrollments (iOS: supervised,
/// device; macOS: supervised). The resolver subscribes every device of a platform to the
/// same items whatever its enrollment, so the BYOD devices in the examples get a
/// subscriptions declaration Apple's schema does not allow them.
#[test]

fn user_enrollments_subscribe_only_to_items_apple_allows() {
    let problems = schema_problems(&INVENTORY, example_plan(), |d| d.enrollment == "user");
    assert!(
        problems.is_empty(),
        "{} problems against Apple's schemas:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Declarative Device Management starts at iOS 15, macOS 13, tvOS 16, watchOS 10: a device
/// on an older OS can take no declaration at all (Apple's `declarationbase.yaml`). The
/// resolver sends such devices a status-subscriptions declaration with an empty `StatusItems`
/// list and an activation naming it.
#[test]

fn devices_older_than_ddm_get_no_declarations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inventory = write(
        dir.path(),
        "old.yaml",
        r#"devices:
  - {enrollmentId: OLD-IPHONE, serialNumber: F17OLD00001, platform: iOS, model: "iPhone7,2", osVersion: "12.5.8", buildVersion: "16H88", supervised: true, enrollmentType: ade, labels: {fleet: corporate}}
  - {enrollmentId: OLD-MAC, serialNumber: C02OLD00002, platform: macOS, model: "Macmini9,1", softwareUpdateDeviceId: J274AP, osVersion: "12.7.6", buildVersion: "21H1320", supervised: true, enrollmentType: ade, labels: {fleet: corporate}}
  - {enrollmentId: OLD-WATCH, platform: watchOS, model: "Watch4,1", osVersion: "9.6.4", buildVersion: "20U512", supervised: true, enrollmentType: ade}
  - {enrollmentId: NEW-IPHONE, serialNumber: F17NEW00003, platform: iOS, model: "iPhone15,2", osVersion: "15.8.8", buildVersion: "19H422", supervised: true, enrollmentType: ade}
"#,
    );
    let devices = read_inventory(&inventory);
    let plan = run_inventory(&inventory).json();
    let problems = schema_problems(&devices, &plan, |_| true);
    let mut sets = Vec::new();
    for device in &devices {
        let json = device_json(&plan, &device.id);
        sets.push(format!("{}: {:?}", device.id, types(json)));
    }
    assert!(
        problems.is_empty(),
        "{}\n{}",
        sets.join("\n"),
        problems.join("\n")
    );
    // iPhone on iOS 15: DDM, but no software-update declarations; status subscriptions only.
    let json = device_json(&plan, "NEW-IPHONE");
    assert_eq!(
        types(json),
        BTreeSet::from([SUBSCRIPTIONS.into(), ACTIVATION.into()])
    );
}

#[test]
fn two_runs_give_the_same_bytes() {
    let first = &EXAMPLE_PLAN.0;
    let second = plan(&[gitops()], "json");
    assert_eq!(second.code, Some(0));
    assert!(
        *first == second.stdout,
        "plan --output json is not deterministic"
    );
    let markdown = [plan(&[gitops()], "markdown"), plan(&[gitops()], "markdown")];
    assert_eq!(markdown[0].stdout, markdown[1].stdout);
}

/// (Identifier, ServerToken) of each declaration, per device.
fn tokens(plan: &Value) -> Vec<Vec<(String, String)>> {
    devices_of(plan)
        .iter()
        .map(|d| {
            d["declarations"]
                .as_array()
                .expect("declarations")
                .iter()
                .map(|x| {
                    (
                        x["Identifier"].as_str().expect("id").to_string(),
                        x["ServerToken"].as_str().expect("token").to_string(),
                    )
                })
                .collect()
        })
        .collect()
}

#[test]
fn changing_one_policy_leaves_every_other_declaration_alone() {
    let dir = gitops_copy();
    let path = dir.path().join("policies/mobile.yaml");
    let text = std::fs::read_to_string(&path).expect("mobile policy");
    let changed = text
        .replace("daysAfterPosting: 21", "daysAfterPosting: 28")
        .replace("combinedPeriodInDays: 14", "combinedPeriodInDays: 21");
    assert_ne!(text, changed);
    std::fs::write(&path, changed).expect("write");
    let after = plan(&[dir.path().to_path_buf()], "json").json();
    let before = example_plan();
    let (old, new) = (tokens(before), tokens(&after));
    let mut changed_devices = 0;
    for ((device, old), new) in INVENTORY.iter().zip(&old).zip(&new) {
        if matches!(device.platform.as_str(), "iOS" | "iPadOS") {
            changed_devices += usize::from(old != new);
        } else {
            assert_eq!(
                old, new,
                "{} ({}) is not in the changed policy",
                device.id, device.platform
            );
        }
    }
    assert!(
        changed_devices > 50,
        "the change reached the iPhones and iPads"
    );
    // Content addressing: an identifier that survives keeps its token and payload.
    let by_id = |plan: &Value| -> BTreeMap<String, Value> {
        devices_of(plan)
            .iter()
            .flat_map(|d| d["declarations"].as_array().expect("declarations").clone())
            .map(|d| (d["Identifier"].as_str().expect("id").to_string(), d))
            .collect()
    };
    let (old, new) = (by_id(before), by_id(&after));
    let mut shared = 0;
    for (identifier, declaration) in &old {
        if let Some(other) = new.get(identifier) {
            assert_eq!(declaration, other, "{identifier}");
            shared += 1;
        }
    }
    assert!(shared > 10, "{shared}");
    // The VIP emergency enforcement is not the policy's: it did not move.
    let vip = edge("vip-on-26")[0];
    let vip_old = enforcements_of(device_json(before, &vip.id));
    let vip_new = enforcements_of(device_json(&after, &vip.id));
    assert_eq!(vip_old, vip_new);
}

// ---------------------------------------------------------------------------------------------
// Edge cases in the inventory, by their `case` label
// ---------------------------------------------------------------------------------------------

const MACS: &str = "UpdatePolicy it-fleet/macs";
const MOBILE: &str = "UpdatePolicy it-fleet/mobile";
const ROOMS: &str = "UpdatePolicy it-fleet/meeting-rooms";
const VIP: &str = "EnforcementTarget it-fleet/vip-ios-26-6-1";

fn types(device: &Value) -> BTreeSet<String> {
    device["declarations"]
        .as_array()
        .expect("declarations")
        .iter()
        .map(|d| d["Type"].as_str().expect("type").to_string())
        .collect()
}

#[test]
fn edge_cases_carry_their_reasons() {
    let plan = example_plan();
    let only = |case: &str| {
        let devices = edge(case);
        assert_eq!(devices.len(), 1, "{case}");
        (devices[0], device_json(plan, &devices[0].id))
    };

    let (mac, json) = only("no-board-id");
    assert!(mac.platform == "macOS" && mac.su_id.is_none());
    assert_eq!(reason_list(json), [pair("DeviceIdUnknown", MACS)]);
    assert!(declarations(json, ENFORCEMENT).is_empty());
    // Settings and status subscriptions need no board id (and the subscriptions ask for it).
    assert_eq!(declarations(json, SETTINGS).len(), 1);
    let items = &declarations(json, SUBSCRIPTIONS)[0]["Payload"]["StatusItems"];
    assert!(
        items
            .as_array()
            .expect("items")
            .contains(&json!({"Name": "softwareupdate.device-id"}))
    );

    let (mac, json) = only("unsupervised-mac");
    assert!(!mac.supervised && mac.enrollment == "device");
    assert_eq!(reason_list(json), [pair("NotSupervised", MACS)]);
    assert_eq!(
        json["declarations"],
        json!([]),
        "nothing an unsupervised Mac can take"
    );

    let (_, json) = only("macos-13");
    assert_eq!(reason_list(json), [pair("DeclarationNotSupported", MACS)]);
    assert_eq!(
        types(json),
        BTreeSet::from([SUBSCRIPTIONS.into(), ACTIVATION.into()])
    );

    let (iphone, json) = only("ios-16");
    assert_eq!(
        (iphone.model.as_str(), major(&iphone.version)),
        ("iPhone10,3", 16)
    );
    assert_eq!(reason_list(json), [pair("DeclarationNotSupported", MOBILE)]);
    assert_eq!(
        types(json),
        BTreeSet::from([SUBSCRIPTIONS.into(), ACTIVATION.into()])
    );

    for device in edge("up-to-date") {
        let json = device_json(plan, &device.id);
        let source = if device.platform == "macOS" {
            MACS
        } else {
            MOBILE
        };
        assert_eq!(
            reason_list(json),
            [pair("UpToDate", source)],
            "{}",
            device.id
        );
        assert!(declarations(json, ENFORCEMENT).is_empty());
        assert_eq!(
            declarations(json, SETTINGS).len(),
            1,
            "settings still apply"
        );
    }

    // A Background Security Improvement is newer than its base and older than the next release.
    for device in edge("security-improvement") {
        assert!(device.version.ends_with(" (a)"), "{}", device.version);
        let json = device_json(plan, &device.id);
        let got = enforcements_of(json);
        assert_eq!(got.len(), 1, "{got:?}");
        let (version, build, _, _) = got.into_iter().next().expect("one");
        match device.platform.as_str() {
            // Twins (23G83, 23G6083): no build named.
            "iOS" => assert_eq!((version.as_str(), build.as_deref()), ("26.6.1", None)),
            _ => assert_eq!((version.as_str(), build), ("26.6.2", None)),
        }
        assert_eq!(reason_list(json), []);
    }

    // VIP on iOS 26: the emergency target (2026-08-26 12:00) already takes it to 26.6.1, so the
    // policy's own 26.6.1 on 2026-09-07 is dropped.
    let (_, json) = only("vip-on-26");
    assert_eq!(reason_list(json), [pair("Superseded", MOBILE)]);
    assert!(!reason_list(json).contains(&pair("Superseded", VIP)));
    assert_eq!(
        enforcements_of(json),
        BTreeSet::from([(
            "26.6.1".to_string(),
            None,
            "2026-08-26T12:00:00".to_string(),
            Some(TARGETS[0].details_url.to_string())
        )])
    );
    // VIP on iOS 18: the policy's 18.7.8 comes first (Monday 18:00), the emergency's 26.6.1 on
    // Wednesday is newer; neither covers the other, so both stay.
    let (_, json) = only("vip-on-18");
    assert_eq!(reason_list(json), []);
    let got: Vec<(String, String)> = enforcements_of(json)
        .into_iter()
        .map(|(v, _, at, _)| (v, at))
        .collect();
    assert_eq!(
        got,
        [
            ("18.7.8".to_string(), "2026-08-24T18:00:00".to_string()),
            ("26.6.1".to_string(), "2026-08-26T12:00:00".to_string())
        ]
    );

    // 17.7.11 has twins (21H461, 21H6461): the device picks its own build.
    let (_, json) = only("ipados-17");
    assert_eq!(
        enforcements_of(json)
            .into_iter()
            .map(|(v, b, at, _)| (v, b, at))
            .collect::<Vec<_>>(),
        [(
            "17.7.11".to_string(),
            None,
            "2026-08-24T18:00:00".to_string()
        )]
    );

    let (_, json) = only("tvos-18-3");
    assert_eq!(reason_list(json), [pair("DeclarationNotSupported", ROOMS)]);

    // User enrollments: personal iPhones are in `iphones`, but take no software-update
    // declarations.
    let byod: Vec<&Device> = INVENTORY
        .iter()
        .filter(|d| d.enrollment == "user" && d.platform == "iOS")
        .collect();
    assert!(byod.len() >= 2);
    for device in byod {
        let json = device_json(plan, &device.id);
        assert_eq!(reason_list(json), [pair("NotSupervised", MOBILE)]);
        assert!(
            declarations(json, ENFORCEMENT).is_empty() && declarations(json, SETTINGS).is_empty()
        );
    }
}

#[test]
fn settings_follow_each_device_s_os_and_supervision() {
    let plan = example_plan();
    let settings_of = |device: &Device| -> Option<Value> {
        let json = device_json(plan, &device.id);
        let list = declarations(json, SETTINGS);
        assert!(list.len() <= 1);
        list.first().map(|d| d["Payload"].clone())
    };
    let first = |pred: &dyn Fn(&Device) -> bool| -> &Device {
        INVENTORY
            .iter()
            .find(|d| pred(d))
            .expect("such a device in the inventory")
    };
    let corporate_mac = first(&|d| {
        d.platform == "macOS" && d.supervised && major(&d.version) >= 15 && d.su_id.is_some()
    });
    assert_eq!(
        settings_of(corporate_mac),
        Some(json!({
            "Notifications": true,
            "Deferrals": {"MajorPeriodInDays": 30, "MinorPeriodInDays": 7, "SystemPeriodInDays": 7},
            "AutomaticActions": {"Download": "AlwaysOn", "InstallOSUpdates": "Allowed", "InstallSecurityUpdate": "AlwaysOn"},
            "RapidSecurityResponse": {"Enable": true, "EnableRollback": false},
            "AllowStandardUserOSUpdates": true
        }))
    );
    let sonoma = first(&|d| d.platform == "macOS" && d.supervised && major(&d.version) == 14);
    assert_eq!(settings_of(sonoma), None, "settings need macOS 15");
    let supervised_iphone =
        first(&|d| d.platform == "iOS" && d.supervised && major(&d.version) >= 18);
    assert_eq!(
        settings_of(supervised_iphone),
        Some(json!({
            "Notifications": true,
            "Deferrals": {"CombinedPeriodInDays": 14},
            "RecommendedCadence": "Newest",
            "AutomaticActions": {"Download": "AlwaysOn", "InstallOSUpdates": "AlwaysOn"},
            "RapidSecurityResponse": {"Enable": true, "EnableRollback": false},
            "Beta": {"ProgramEnrollment": "AlwaysOff"}
        }))
    );
    let device_enrolled = first(&|d| {
        d.platform == "iOS" && !d.supervised && d.enrollment == "device" && major(&d.version) >= 18
    });
    assert_eq!(
        settings_of(device_enrolled),
        Some(json!({"Notifications": true, "RecommendedCadence": "Newest"})),
        "without supervision only the keys Apple allows a device enrollment"
    );
    let ipad_17 = edge("ipados-17")[0];
    assert_eq!(settings_of(ipad_17), None, "settings need iPadOS 18");
    for device in INVENTORY
        .iter()
        .filter(|d| matches!(d.platform.as_str(), "tvOS" | "visionOS" | "watchOS"))
    {
        assert_eq!(
            settings_of(device),
            None,
            "{} has no settings declaration",
            device.platform
        );
    }
}

#[test]
fn markdown_shows_each_model_s_current_and_target_version() {
    let run = plan(&[gitops()], "markdown");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let markdown = run.stdout;
    let summary = &example_plan()["summary"];
    assert!(markdown.contains(&format!(
        "**{}** devices, **{}** get an enforcement, **{}** distinct declarations.",
        summary["devices"], summary["devicesWithEnforcement"], summary["distinctDeclarations"]
    )));
    // Rows: source, platform, model, current → target (build), deadline, device count.
    let mut rows: BTreeMap<String, usize> = BTreeMap::new();
    for (device, want) in INVENTORY.iter().zip(&EXPECTED.devices) {
        for c in &want.kept {
            let target = match &c.build {
                Some(build) => format!("{} ({build})", c.version),
                None => c.version.clone(),
            };
            let deadline = c.deadline.replacen('T', " ", 1);
            let key = format!(
                "| {} | {} | `{}` | {} → {target} | {} |",
                c.source,
                device.platform,
                device.model,
                device.version,
                &deadline[..16]
            );
            *rows.entry(key).or_default() += 1;
        }
    }
    let expected: BTreeSet<String> = rows
        .into_iter()
        .map(|(row, n)| format!("{row} {n} |"))
        .collect();
    let actual: BTreeSet<String> = markdown
        .lines()
        .filter(|l| {
            l.starts_with(&format!("| UpdatePolicy {NAMESPACE}/"))
                || l.starts_with(&format!("| EnforcementTarget {NAMESPACE}/"))
        })
        .map(str::to_string)
        .collect();
    let missing: Vec<&String> = expected.difference(&actual).collect();
    let extra: Vec<&String> = actual.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:#?}\nextra {extra:#?}"
    );
    // A row a reviewer would look for: a Mac on a security improvement going to 26.6.2.
    assert!(
        markdown
            .contains("| UpdatePolicy it-fleet/macs | macOS | `Mac14,2` | 26.3.1 (a) → 26.6.2 |"),
        "{markdown}"
    );
    for name in EXPECTED.generated.keys() {
        assert!(markdown.contains(&format!("| `{name}` |")), "{name}");
    }
    assert!(markdown.contains("| `Superseded` |"));
}

// ---------------------------------------------------------------------------------------------
// Two policies on one device
// ---------------------------------------------------------------------------------------------

const SECOND_MAC_POLICY: &str = r#"
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata:
  name: macs-security
  namespace: it-fleet
spec:
  fleetGroups: [macs-canary]
  target:
    strategy: latest
  deadline:
    daysAfterPosting: 7
    localTime: "09:00"
    timeZone: Europe/Berlin
    minimumLeadTime: 24h
  settings:
    notifications: false
    deferrals:
      majorPeriodInDays: 60
      minorPeriodInDays: 3
    automaticActions:
      installOSUpdates: AlwaysOn
      installSecurityUpdate: AlwaysOff
    rapidSecurityResponse:
      enable: false
    allowStandardUserOSUpdates: true
"#;

#[test]
fn two_policies_on_one_device_both_apply_earliest_deadline_wins_and_settings_merge() {
    let dir = gitops_copy();
    write(dir.path(), "policies/macs-security.yaml", SECOND_MAC_POLICY);
    let run = plan(&[dir.path().to_path_buf()], "json");
    let after = run.json();
    let canary: Vec<&Device> = INVENTORY
        .iter()
        .filter(|d| in_group(&GROUPS[3], d))
        .collect();
    assert_eq!(GROUPS[3].name, "macs-canary");
    let warnings = after["summary"]["warnings"].as_array().expect("warnings");
    let expected_warning = format!(
        "{} device(s) are in both UpdatePolicy it-fleet/macs and it-fleet/macs-security",
        canary.len()
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.starts_with(&expected_warning))),
        "{warnings:?}"
    );

    // 26.6.2 posted Monday 2026-08-17 + 7 days = Monday 2026-08-24 09:00: earlier than macs'
    // 2026-08-31 19:00 for the same version, so macs' enforcement is the superseded one.
    let mut checked = 0;
    for device in &canary {
        let json = device_json(&after, &device.id);
        let before = device_json(example_plan(), &device.id);
        if blocked(device).is_some() {
            continue;
        }
        let old = enforcements_of(before);
        if old.is_empty() {
            assert_eq!(
                reason_list(json),
                [
                    pair("UpToDate", MACS),
                    pair("UpToDate", "UpdatePolicy it-fleet/macs-security")
                ]
            );
            continue;
        }
        let (version, ..) = old.iter().next().expect("one").clone();
        if version == "26.6.2" {
            assert_eq!(
                enforcements_of(json),
                BTreeSet::from([(version, None, "2026-08-24T09:00:00".to_string(), None)]),
                "{}",
                device.id
            );
            assert_eq!(
                reason_list(json),
                [pair("Superseded", MACS)],
                "{}",
                device.id
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "a canary Mac goes to 26.6.2");

    // Settings of both merge into one declaration: number-max, boolean-and, enum-last (the value
    // last in Apple's range list: AlwaysOff over AlwaysOn over Allowed).
    let merged = json!({
        "Notifications": false,
        "Deferrals": {"MajorPeriodInDays": 60, "MinorPeriodInDays": 7, "SystemPeriodInDays": 7},
        "AutomaticActions": {"Download": "AlwaysOn", "InstallOSUpdates": "AlwaysOn", "InstallSecurityUpdate": "AlwaysOff"},
        "RapidSecurityResponse": {"Enable": false, "EnableRollback": false},
        "AllowStandardUserOSUpdates": true
    });
    let mut merged_seen = 0;
    for device in INVENTORY.iter().filter(|d| d.platform == "macOS") {
        let json = device_json(&after, &device.id);
        let before = device_json(example_plan(), &device.id);
        let settings = declarations(json, SETTINGS);
        if canary.iter().any(|c| c.id == device.id) {
            if let Some(s) = settings.first() {
                assert_eq!(s["Payload"], merged, "{}", device.id);
                merged_seen += 1;
            }
        } else {
            assert_eq!(
                settings,
                declarations(before, SETTINGS),
                "{}: not in the second policy, settings unchanged",
                device.id
            );
        }
    }
    assert!(merged_seen > 0);
}

/// One build can expire on different dates for different devices: on 2026-08-22 iOS 26.5
/// (23F77) expires 2026-08-30 for iPhone18,x and 2026-09-27 for older iPhones. A policy whose
/// deadline falls between the two moves the iPhone18 deadline to its expiry date, so the policy
/// resolves to two (version, deadline) pairs on one platform and ring, and `plan` generates two
/// EnforcementTargets with the same name (`hold-ios-26-5`): applied to a cluster, one would
/// overwrite the other.
#[test]

fn generated_target_names_stay_unique_when_expiry_splits_a_deadline() {
    assert!(CATALOG.iter().any(|e| e.build == "23F77"
        && e.expires == Some(jiff::civil::date(2026, 8, 30))
        && e.devices.iter().any(|d| d == "iPhone18,1")));
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = write(
        dir.path(),
        "hold.yaml",
        "apiVersion: updates.ddm.dev/v1alpha1\nkind: FleetGroup\nmetadata: {name: phones, namespace: it-fleet}\nspec: {platforms: [iOS]}\n---\napiVersion: updates.ddm.dev/v1alpha1\nkind: UpdatePolicy\nmetadata: {name: hold, namespace: it-fleet}\nspec:\n  fleetGroups: [phones]\n  target: {strategy: 'pinned:26.5'}\n  deadline: {daysAfterPosting: 120, localTime: '19:00'}\n",
    );
    let inventory = write(
        dir.path(),
        "inventory.yaml",
        "- {enrollmentId: A, platform: iOS, model: 'iPhone18,1', osVersion: '26.0', supervised: true, enrollmentType: ade}\n- {enrollmentId: B, platform: iOS, model: 'iPhone15,2', osVersion: '26.0', supervised: true, enrollmentType: ade}\n",
    );
    let plan = run(&plan_args(&[manifests], &inventory, "json")).json();
    // 2026-05-18 + 120 days = 2026-09-15; iPhone18,1 can only install 23F77 until 2026-08-30.
    let deadlines: BTreeSet<String> = ["A", "B"]
        .iter()
        .flat_map(|id| enforcements_of(device_json(&plan, id)))
        .map(|(_, _, at, _)| at)
        .collect();
    assert_eq!(
        deadlines,
        BTreeSet::from(["2026-08-30T19:00:00".into(), "2026-09-15T19:00:00".into()])
    );
    let names: Vec<&str> = plan["enforcementTargets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| t["metadata"]["name"].as_str().expect("name"))
        .collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "duplicate names: {names:?}");
}

// ---------------------------------------------------------------------------------------------
// Hostile and broken manifests
// ---------------------------------------------------------------------------------------------

/// Runs plan on the examples plus one extra file; returns the run.
fn plan_with_extra(name: &str, text: &str) -> (tempfile::TempDir, Run) {
    let dir = gitops_copy();
    write(dir.path(), name, text);
    let run = plan(&[dir.path().to_path_buf()], "json");
    (dir, run)
}

fn warnings_of(run: &Run) -> Vec<String> {
    run.json()["summary"]["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w.as_str().expect("warning").to_string())
        .collect()
}

#[test]
fn wrong_types_exit_1_naming_file_object_and_field() {
    let (_, run) = plan_with_extra(
        "bad-types.yaml",
        "apiVersion: updates.ddm.dev/v1alpha1\nkind: FleetGroup\nmetadata: {name: halves, namespace: it-fleet}\nspec:\n  platforms: [macOS]\n  shard: {percent: half}\n---\napiVersion: updates.ddm.dev/v1alpha1\nkind: UpdatePolicy\nmetadata: {name: typed, namespace: it-fleet}\nspec:\n  fleetGroups: macs-broad\n  target: {strategy: latest}\n  deadline: {daysAfterPosting: fourteen}\n",
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stdout.is_empty());
    assert!(run.stderr.contains("bad-types.yaml"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("FleetGroup it-fleet/halves: spec.shard.percent"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("UpdatePolicy it-fleet/typed: spec."),
        "{}",
        run.stderr
    );
}

#[test]
fn unknown_fields_exit_1_naming_them() {
    let (_, run) = plan_with_extra(
        "typo.yaml",
        "apiVersion: updates.ddm.dev/v1alpha1\nkind: UpdatePolicy\nmetadata: {name: typo, namespace: it-fleet}\nspec:\n  fleetGroups: [macs-broad]\n  target: {strategy: latest}\n  deadline: {daysAfterPosting: 14, skipWeekend: true}\n",
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("typo.yaml"), "{}", run.stderr);
    assert!(
        run.stderr.contains("spec.deadline.skipWeekend"),
        "{}",
        run.stderr
    );
}

#[test]
fn invalid_values_exit_1_with_every_problem_listed() {
    let (_, run) = plan_with_extra(
        "invalid.yaml",
        "apiVersion: updates.ddm.dev/v1alpha1\nkind: UpdatePolicy\nmetadata: {name: invalid, namespace: it-fleet}\nspec:\n  fleetGroups: [macs-broad]\n  target: {strategy: newest}\n  deadline: {daysAfterPosting: 14, localTime: '25:00', timeZone: Mars/Olympus_Mons, minimumLeadTime: soon}\n  detailsURL: ftp://example.com\n",
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    for field in [
        "spec.target.strategy",
        "spec.deadline.localTime",
        "spec.deadline.timeZone",
        "spec.deadline.minimumLeadTime",
    ] {
        assert!(
            run.stderr
                .contains(&format!("UpdatePolicy it-fleet/invalid: {field}")),
            "{field}:\n{}",
            run.stderr
        );
    }
}

#[test]
fn a_ten_megabyte_string_is_refused_without_echoing_it() {
    let huge = "a".repeat(10 * 1024 * 1024);
    for (name, text) in [
        (
            "huge-url.yaml",
            format!(
                "apiVersion: updates.ddm.dev/v1alpha1\nkind: EnforcementTarget\nmetadata: {{name: huge, namespace: it-fleet}}\nspec:\n  fleetGroups: [vip-iphones]\n  platform: iOS\n  targetOSVersion: '26.6.1'\n  targetLocalDateTime: '2026-08-26T12:00:00'\n  detailsURL: https://example.com/{huge}\n"
            ),
        ),
        (
            "huge-label.yaml",
            format!(
                "apiVersion: updates.ddm.dev/v1alpha1\nkind: FleetGroup\nmetadata: {{name: huge, namespace: it-fleet}}\nspec:\n  selector:\n    matchLabels: {{site: {huge}}}\n"
            ),
        ),
    ] {
        let (_, run) = plan_with_extra(name, &text);
        assert_eq!(run.code, Some(1), "{name}: {}", head(&run.stderr));
        assert!(run.stderr.contains("huge"), "{name}: {}", head(&run.stderr));
        assert!(
            run.stderr.len() < 100_000,
            "{name}: the error echoes the 10 MB value ({} bytes)",
            run.stderr.len()
        );
    }
}

/// Object names are Kubernetes names: at most 253 characters, lowercase DNS subdomains (the
/// API server refuses others). `plan` accepts any `metadata.name` and `metadata.namespace`, and
/// then repeats a 10 MB name in every message and group count (21 MB of JSON).
#[test]

fn invalid_object_names_exit_1_without_echoing_them() {
    let huge = "h".repeat(10 * 1024 * 1024);
    for (case, metadata) in [
        (
            "10 MB name",
            format!("{{name: h{huge}, namespace: it-fleet}}"),
        ),
        (
            "not a DNS name",
            "{name: Bad_Name, namespace: it-fleet}".to_string(),
        ),
        (
            "not a namespace",
            "{name: fine, namespace: It_Fleet}".to_string(),
        ),
    ] {
        let (_, run) = plan_with_extra(
            "names.yaml",
            &format!(
                "apiVersion: updates.ddm.dev/v1alpha1\nkind: FleetGroup\nmetadata: {metadata}\nspec: {{platforms: [watchOS]}}\n"
            ),
        );
        assert_eq!(run.code, Some(1), "{case}: {}", head(&run.stderr));
        assert!(
            run.stderr.contains("metadata."),
            "{case}: {}",
            head(&run.stderr)
        );
        assert!(
            run.stderr.len() + run.stdout.len() < 100_000,
            "{case}: the output repeats the name"
        );
    }
}

#[test]
fn a_past_deadline_on_a_hand_written_target_is_a_warning() {
    let (_, run) = plan_with_extra(
        "late.yaml",
        "apiVersion: updates.ddm.dev/v1alpha1\nkind: EnforcementTarget\nmetadata: {name: late, namespace: it-fleet}\nspec:\n  fleetGroups: [ipads]\n  platform: iPadOS\n  targetOSVersion: '26.6.1'\n  targetLocalDateTime: '2026-08-01T12:00:00'\n",
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let warnings = warnings_of(&run);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("EnforcementTarget it-fleet/late")
                && w.contains("2026-08-01T12:00:00")),
        "{warnings:?}"
    );
    // The order still goes out, with its (past) deadline: devices install at once.
    let plan = run.json();
    let ipad = INVENTORY
        .iter()
        .find(|d| {
            d.platform == "iPadOS" && major(&d.version) == 26 && vkey(&d.version) < vkey("26.6.1")
        })
        .expect("an iPad below 26.6.1");
    assert!(
        enforcements_of(device_json(&plan, &ipad.id))
            .iter()
            .any(|(v, _, at, _)| v == "26.6.1" && at == "2026-08-01T12:00:00")
    );
}

#[test]
fn a_group_that_selects_nothing_is_a_warning() {
    let (_, run) = plan_with_extra(
        "empty-group.yaml",
        "apiVersion: updates.ddm.dev/v1alpha1\nkind: FleetGroup\nmetadata: {name: atlantis, namespace: it-fleet}\nspec:\n  platforms: [macOS]\n  selector:\n    matchLabels: {site: atlantis}\n",
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        warnings_of(&run)
            .iter()
            .any(|w| w == "FleetGroup it-fleet/atlantis selects no device"),
        "{:?}",
        warnings_of(&run)
    );
}

#[test]
fn a_policy_naming_a_missing_group_exits_1_naming_it() {
    let (_, run) = plan_with_extra(
        "orphan.yaml",
        "apiVersion: updates.ddm.dev/v1alpha1\nkind: UpdatePolicy\nmetadata: {name: orphan, namespace: it-fleet}\nspec:\n  fleetGroups: [ghosts]\n  target: {strategy: latest}\n  deadline: {daysAfterPosting: 14}\n",
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("UpdatePolicy it-fleet/orphan: FleetGroup it-fleet/ghosts does not exist"),
        "{}",
        run.stderr
    );
    // A group of the same name in another namespace does not count.
    let (_, run) = plan_with_extra(
        "elsewhere.yaml",
        "apiVersion: updates.ddm.dev/v1alpha1\nkind: UpdatePolicy\nmetadata: {name: elsewhere, namespace: other-team}\nspec:\n  fleetGroups: [iphones]\n  target: {strategy: latest}\n  deadline: {daysAfterPosting: 14}\n",
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("FleetGroup other-team/iphones does not exist"),
        "{}",
        run.stderr
    );
}

#[test]
fn other_kinds_are_skipped_with_a_notice() {
    let (_, run) = plan_with_extra(
        "namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: it-fleet}\n---\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nmetadata: {name: fleet}\nresources: [fleetgroups, policies, targets]\n",
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("notice:") && run.stderr.contains("skipped Namespace it-fleet"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("skipped Kustomization fleet"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.json()["summary"],
        example_plan()["summary"],
        "nothing else changed"
    );
}

#[test]
fn malformed_yaml_exits_1_naming_the_file() {
    for (i, text) in [
        "spec: [unclosed\n",
        "key: \"unterminated\n",
        "a: b: c\n",
        "&x [*x, *y]\n",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("broken-{i}.yaml");
        let (_, run) = plan_with_extra(&name, text);
        assert_eq!(run.code, Some(1), "{text:?}: {}", run.stderr);
        assert!(run.stderr.contains(&name), "{text:?}: {}", run.stderr);
        assert!(run.stdout.is_empty());
    }
}

#[test]
fn unreadable_inputs_exit_2_in_one_line() {
    let missing = Path::new(MANIFEST_DIR).join("examples/no-such-folder");
    let run = plan(&[missing], "json");
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    let run = run_inventory(Path::new("/nonexistent/inventory.yaml"));
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    let run = self::run(&[
        "plan".into(),
        "-f".into(),
        gitops().display().to_string(),
        "--inventory".into(),
        inventory_file().display().to_string(),
        "--catalog".into(),
        examples().join("catalog").display().to_string(),
        "--at".into(),
        "next tuesday".into(),
    ]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
}

fn run_inventory(inventory: &Path) -> Run {
    run(&plan_args(&[gitops()], inventory, "json"))
}

#[test]
fn a_broken_inventory_exits_1_naming_the_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "inventory.yaml",
        "- {enrollmentId: A, platform: iOS, model: 'iPhone15,2', osVersion: 'twenty'}\n- {enrollmentId: B, platform: toaster, model: x, osVersion: '1'}\n",
    );
    let run = run_inventory(&path);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("devices[0] (A): osVersion"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("devices[1] (B)"), "{}", run.stderr);
}

// ---------------------------------------------------------------------------------------------
// The examples as Kubernetes objects
// ---------------------------------------------------------------------------------------------

/// A small reading of a CRD's structural schema: known properties, types, enums, required keys
/// and length/number bounds (patterns are left to the API server).
fn check_schema(value: &Value, schema: &Value, path: &str, problems: &mut Vec<String>) {
    if path.is_empty() {
        // The API server validates these itself; the CRD schema leaves them out.
        let mut object = value.clone();
        if let Some(map) = object.as_object_mut() {
            for key in ["apiVersion", "kind", "metadata"] {
                map.remove(key);
            }
        }
        return check_schema(&object, schema, ".", problems);
    }
    let path = path.trim_start_matches('.');
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            problems.push(format!("{path}: null"));
        }
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        problems.push(format!("{path}: {value} not in {allowed:?}"));
    }
    let kind = schema.get("type").and_then(Value::as_str);
    let ok = match kind {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("boolean") => value.is_boolean(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        _ => true,
    };
    if !ok {
        problems.push(format!("{path}: {value} is not {kind:?}"));
        return;
    }
    if let (Some(max), Some(s)) = (
        schema.get("maxLength").and_then(Value::as_u64),
        value.as_str(),
    ) && s.len() as u64 > max
    {
        problems.push(format!("{path}: longer than {max}"));
    }
    if let (Some(min), Some(s)) = (
        schema.get("minLength").and_then(Value::as_u64),
        value.as_str(),
    ) && (s.len() as u64) < min
    {
        problems.push(format!("{path}: shorter than {min}"));
    }
    if let Some(n) = value.as_f64() {
        if schema
            .get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n > m)
        {
            problems.push(format!("{path}: above maximum"));
        }
        if schema
            .get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n < m)
        {
            problems.push(format!("{path}: below minimum"));
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for (i, item) in list.iter().enumerate() {
            check_schema(item, items, &format!("{path}[{i}]"), problems);
        }
    }
    if let Some(map) = value.as_object() {
        for key in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !map.contains_key(key.as_str().unwrap_or_default()) {
                problems.push(format!("{path}.{key}: required"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        for (key, child) in map {
            let child_path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match (properties.and_then(|p| p.get(key)), additional) {
                (Some(s), _) => check_schema(child, s, &child_path, problems),
                (None, Some(s)) if s.is_object() => check_schema(child, s, &child_path, problems),
                (None, _) if properties.is_some() => {
                    problems.push(format!("{child_path}: unknown field"));
                }
                _ => {}
            }
        }
    }
}

fn crd_schema(kind: &str) -> Value {
    let file = match kind {
        "FleetGroup" => "fleetgroups",
        "UpdatePolicy" => "updatepolicies",
        "EnforcementTarget" => "enforcementtargets",
        other => panic!("{other}"),
    };
    let text = std::fs::read_to_string(
        Path::new(MANIFEST_DIR).join(format!("crds/{file}.updates.ddm.dev.yaml")),
    )
    .expect("crd");
    let crd: Value = serde_saphyr::from_str(&text).expect("crd yaml");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn the_examples_are_valid_kubernetes_objects_of_the_crds() {
    let mut files = Vec::new();
    yaml_files(&gitops(), &mut files);
    assert!(files.len() >= 10, "{files:?}");
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for file in &files {
        assert_eq!(
            file.extension().and_then(|e| e.to_str()),
            Some("yaml"),
            "{}: only manifests in examples/gitops",
            file.display()
        );
        let text = std::fs::read_to_string(file).expect("read");
        let documents: Vec<Value> = serde_saphyr::from_multiple(&text).expect("YAML");
        for doc in documents.into_iter().filter(|d| !d.is_null()) {
            let kind = doc["kind"].as_str().expect("kind").to_string();
            assert_eq!(
                doc["apiVersion"],
                "updates.ddm.dev/v1alpha1",
                "{}",
                file.display()
            );
            let name = doc["metadata"]["name"].as_str().expect("name");
            assert!(dns_label(name), "{name}");
            assert_eq!(
                doc["metadata"]["namespace"],
                NAMESPACE,
                "{}",
                file.display()
            );
            assert!(
                names.insert((kind.clone(), name.to_string())),
                "{kind} {name} twice"
            );
            let mut found = Vec::new();
            check_schema(&doc, &crd_schema(&kind), "", &mut found);
            problems.extend(
                found
                    .into_iter()
                    .map(|p| format!("{}: {p}", file.display())),
            );
        }
    }
    // What plan generates must fit the EnforcementTarget CRD too.
    let schema = crd_schema("EnforcementTarget");
    for target in example_plan()["enforcementTargets"]
        .as_array()
        .expect("targets")
    {
        let mut found = Vec::new();
        check_schema(target, &schema, "", &mut found);
        problems.extend(
            found
                .into_iter()
                .map(|p| format!("generated {}: {p}", target["metadata"]["name"])),
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// The inventory is real
// ---------------------------------------------------------------------------------------------

#[test]
fn the_inventory_holds_real_devices_on_releases_they_were_offered() {
    // Every (device id, version, build) some snapshot listed.
    let mut listed: BTreeSet<(String, String, String)> = BTreeSet::new();
    for entry in
        std::fs::read_dir(Path::new(MANIFEST_DIR).join("tests/fixtures/gdmf")).expect("gdmf")
    {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if !name.ends_with(".json") || name.contains("sofa-cache") || name.contains("empty") {
            continue;
        }
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        for platforms in doc.as_object().expect("object").values() {
            for list in platforms.as_object().into_iter().flat_map(|m| m.values()) {
                for e in list.as_array().into_iter().flatten() {
                    let Some(build) = e.get("Build").and_then(Value::as_str) else {
                        continue;
                    };
                    for device in e["SupportedDevices"].as_array().into_iter().flatten() {
                        listed.insert((
                            device.as_str().unwrap_or_default().trim().to_string(),
                            e["ProductVersion"].as_str().unwrap_or_default().to_string(),
                            build.to_string(),
                        ));
                    }
                }
            }
        }
    }
    let current: BTreeSet<&str> = CATALOG
        .iter()
        .flat_map(|e| e.devices.iter().map(String::as_str))
        .collect();
    let mut platforms = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for device in INVENTORY.iter() {
        assert!(ids.insert(device.id.clone()), "{} twice", device.id);
        *platforms.entry(device.platform.clone()).or_insert(0) += 1;
        let build = device
            .build
            .clone()
            .expect("every example device reports its build");
        // A Mac that has not reported its board id yet: check its release against the board id
        // other Macs of the same model report.
        let id = match device.catalog_id() {
            Some(id) => id,
            None => {
                assert_eq!(device.label("case"), Some("no-board-id"));
                INVENTORY
                    .iter()
                    .filter(|d| d.model == device.model)
                    .find_map(|d| d.su_id.as_deref())
                    .expect("another Mac of the same model")
            }
        };
        if device.enrollment != "user" {
            assert!(
                device.serial.is_some() || device.platform == "macOS",
                "{}",
                device.id
            );
        }
        assert!(current.contains(id), "{id} is not in the shipped catalog");
        assert!(
            listed.contains(&(id.to_string(), device.numeric().to_string(), build.clone())),
            "{id} was never offered {} ({build})",
            device.numeric()
        );
        if device.platform == "macOS" {
            assert!(
                !device.model.starts_with('J') && device.model.contains(','),
                "{}",
                device.model
            );
            assert!(id.starts_with('J') || id.starts_with("VM"), "{id}");
        } else {
            assert_eq!(device.su_id, None, "product types need no separate id");
        }
    }
    for platform in ["iOS", "iPadOS", "macOS", "tvOS", "visionOS", "watchOS"] {
        assert!(platforms.contains_key(platform), "no {platform} device");
    }
    let enrollments: BTreeSet<&str> = INVENTORY.iter().map(|d| d.enrollment.as_str()).collect();
    assert_eq!(enrollments, BTreeSet::from(["ade", "device", "user"]));
    // The generator reproduces the committed file byte for byte (when Python is around).
    let script = examples().join("tools/gen_inventory.py");
    match Command::new("python3").arg(&script).output() {
        Ok(out) if out.status.success() => {
            let committed = std::fs::read(inventory_file()).expect("inventory");
            assert!(
                out.stdout == committed,
                "examples/inventory.yaml differs from what {} writes",
                script.display()
            );
        }
        Ok(out) => panic!(
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("python3 not available ({e}); generator reproducibility not checked"),
    }
}
