//! Plan benchmark: 100,000 devices through the path `plan` takes — manifests parsed and checked,
//! an inventory parsed, one resolver pass, the declarations rendered as JSON.
//! Run with `cargo bench --bench plan`. Each figure is printed next to a baseline measured in the
//! same run (the machines are shared and noisy), as a ratio.
//!
//! The fleet is drawn from real catalog data: every model is listed in the newest snapshot
//! (`pmv-2026-08-22`), and each device runs a version (and build) Apple really offered that
//! model in one of the snapshots under `tests/fixtures/gdmf/`. The issue's target: under 2 s and
//! under 500 MB peak on one core (the resolver is single-threaded).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ddm_update_operator::api::validate::check_all;
use ddm_update_operator::catalog::{Build, Catalog, OsVersion, Platform};
use ddm_update_operator::declarations::{self, Declaration};
use ddm_update_operator::inventory::{self, Device};
use ddm_update_operator::manifests::{self, Manifests};
use ddm_update_operator::resolve::{self, Input, Plan, Source};

#[path = "support/mod.rs"]
mod support;

use support::{
    APPLE_TVS, DEPARTMENTS, History, IPADS, IPHONES, Model, Rng, SNAPSHOTS, VISION_PROS, histories,
    mix, read_snapshot,
};

/// Counts live heap bytes, their peak and the number of allocations, for the memory figures.
/// `realloc` is forwarded as such (not as alloc + copy + free), so a growing buffer counts at
/// its new size only, as with the system allocator.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let out = unsafe { System.realloc(ptr, layout, new_size) };
        if !out.is_null() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        out
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One figure: the median wall time of several runs, the largest heap growth during one, the
/// allocations one run makes, and the last run's result (earlier results are dropped after their
/// clock stops, so dropping is not timed).
struct Measured<T> {
    time: Duration,
    peak: usize,
    allocations: usize,
    out: T,
}

fn measure<T>(runs: usize, mut f: impl FnMut() -> T) -> Measured<T> {
    let mut times = Vec::with_capacity(runs);
    let (mut peak, mut allocations, mut last) = (0, 0, None);
    for _ in 0..runs.max(1) {
        drop(last.take());
        let live = LIVE.load(Ordering::Relaxed);
        PEAK.store(live, Ordering::Relaxed);
        let allocs = ALLOCS.load(Ordering::Relaxed);
        let start = Instant::now();
        let out = black_box(f());
        times.push(start.elapsed());
        peak = peak.max(PEAK.load(Ordering::Relaxed) - live);
        allocations = ALLOCS.load(Ordering::Relaxed) - allocs;
        last = Some(out);
    }
    times.sort();
    Measured {
        time: times[times.len() / 2],
        peak,
        allocations,
        out: last.expect("at least one run"),
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

const DEVICES: usize = 100_000;
/// `plan --at 2026-08-23`: the day after the newest snapshot.
const NOW: &str = "2026-08-23T00:00:00Z";
// ---------------------------------------------------------------------------------------------
// The fleet.

/// Board ids with the model identifiers Apple pairs them with (only FleetGroup model globs and
/// hand-written build lists read the model; the catalog knows Macs by board id).
const MACS: &[Model] = &[
    ("J274AP", "Macmini9,1", 3),
    ("J293AP", "MacBookPro17,1", 3),
    ("J313AP", "MacBookAir10,1", 6),
    ("J456AP", "iMac21,1", 2),
    ("J457AP", "iMac21,2", 1),
    ("J314sAP", "MacBookPro18,3", 5),
    ("J316sAP", "MacBookPro18,1", 3),
    ("J375cAP", "Mac13,1", 1),
    ("J413AP", "Mac14,2", 7),
    ("J493AP", "Mac14,7", 2),
    ("J414sAP", "Mac14,9", 4),
    ("J416sAP", "Mac14,10", 2),
    ("J473AP", "Mac14,3", 2),
    ("J415AP", "Mac14,15", 3),
    ("J504AP", "Mac15,3", 3),
    ("J514sAP", "Mac15,6", 4),
    ("J613AP", "Mac15,12", 6),
    ("J615AP", "Mac15,13", 3),
    ("J433AP", "Mac15,4", 2),
    ("J604AP", "Mac16,1", 3),
    ("J614sAP", "Mac16,8", 4),
    ("J713AP", "Mac16,12", 6),
    ("J773gAP", "Mac16,10", 3),
    ("J623AP", "Mac16,2", 1),
    // Intel Macs with a T2 chip.
    ("J152FAP", "MacBookPro16,1", 2),
    ("J680AP", "MacBookPro15,1", 1),
    ("J230KAP", "MacBookAir9,1", 1),
    ("J185FAP", "iMac20,2", 1),
];

/// Platforms with their share of the fleet, per mille.
const FLEET: [(Platform, &[Model], u64); 5] = [
    (Platform::Ios, IPHONES, 440),
    (Platform::IpadOs, IPADS, 140),
    (Platform::MacOs, MACS, 385),
    (Platform::TvOs, APPLE_TVS, 20),
    (Platform::VisionOs, VISION_PROS, 15),
];

const SITES: &[(&str, u32)] = &[
    ("berlin", 25),
    ("london", 20),
    ("new-york", 25),
    ("tokyo", 15),
    ("remote", 15),
];

/// One inventory entry before it is written out.
struct Spec {
    enrollment_id: String,
    serial_number: String,
    platform: Platform,
    model: &'static str,
    board_id: Option<&'static str>,
    version: OsVersion,
    build: Option<Build>,
    supervised: bool,
    enrollment_type: &'static str,
    labels: Vec<(&'static str, &'static str)>,
}

fn fleet(histories: &HashMap<&'static str, History>, size: usize) -> Vec<Spec> {
    let mut rng = Rng(0x0dd3_2026_0822);
    (0..size)
        .map(|i| {
            let (platform, models, _) = *rng.weighted(&FLEET, |f| f.2 as u32);
            let &(id, model, _) = rng.weighted(models, |m| m.2);
            let history = &histories[id];
            let (version, builds) = &history[rng.position_in_history(history.len())];
            let build = (!builds.is_empty() && !rng.permille(30))
                .then(|| builds[rng.below(builds.len())].clone());
            let (enrollment_type, supervised) = match (platform, rng.below(100)) {
                (Platform::Ios, 0..78) | (Platform::IpadOs, 0..92) | (Platform::MacOs, 0..90) => {
                    ("ade", true)
                }
                (Platform::Ios, 78..90) | (Platform::IpadOs, _) | (Platform::MacOs, 90..96) => {
                    ("device", false)
                }
                (Platform::Ios | Platform::MacOs, _) => ("user", false),
                _ => ("ade", true),
            };
            // Macs report their board id from macOS 14.4; a few have not reported yet.
            let board_id = (platform == Platform::MacOs
                && *version >= "14.4".parse::<OsVersion>().expect("version")
                && !rng.permille(20))
            .then_some(id);
            let labels = if rng.permille(50) {
                Vec::new()
            } else {
                vec![
                    ("department", rng.weighted(DEPARTMENTS, |d| d.1).0),
                    ("site", rng.weighted(SITES, |s| s.1).0),
                ]
            };
            let unique = mix(i as u64);
            let enrollment_id = if platform == Platform::MacOs {
                format!(
                    "{:08X}-{:04X}-{:04X}-{:04X}-{:012X}",
                    unique >> 32,
                    (unique >> 16) & 0xFFFF,
                    unique & 0xFFFF,
                    rng.next() & 0xFFFF,
                    rng.next() & 0xFFFF_FFFF_FFFF
                )
            } else {
                format!("00008{:03X}-{unique:016X}", rng.next() & 0xFFF)
            };
            let serial_number: String = (0..10)
                .map(|_| b"0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"[rng.below(34)] as char)
                .collect();
            Spec {
                enrollment_id,
                serial_number,
                platform,
                model,
                board_id,
                version: version.clone(),
                build,
                supervised,
                enrollment_type,
                labels,
            }
        })
        .collect()
}

/// The inventory as a user would commit it: a YAML list, every string quoted (`22E240` would
/// otherwise read as a float).
fn inventory_yaml(specs: &[Spec]) -> String {
    let mut out = String::with_capacity(specs.len() * 320);
    for s in specs {
        let _ = writeln!(out, "- enrollmentId: {:?}", s.enrollment_id);
        let _ = writeln!(out, "  serialNumber: {:?}", s.serial_number);
        let _ = writeln!(out, "  platform: {}", s.platform);
        let _ = writeln!(out, "  model: {:?}", s.model);
        if let Some(board) = s.board_id {
            let _ = writeln!(out, "  softwareUpdateDeviceId: {board:?}");
        }
        let _ = writeln!(out, "  osVersion: {:?}", s.version.numeric());
        if let Some(extra) = s.version.extra() {
            let _ = writeln!(out, "  supplementalExtra: {extra:?}");
        }
        if let Some(build) = &s.build {
            let _ = writeln!(out, "  buildVersion: {:?}", build.as_str());
        }
        let _ = writeln!(out, "  supervised: {}", s.supervised);
        let _ = writeln!(out, "  enrollmentType: {}", s.enrollment_type);
        if !s.labels.is_empty() {
            out.push_str("  labels:\n");
            for (k, v) in &s.labels {
                let _ = writeln!(out, "    {k}: {v}");
            }
        }
    }
    out
}

/// The same inventory as JSON (what an MDM export would hand over).
fn inventory_json(specs: &[Spec]) -> String {
    let devices: Vec<serde_json::Value> = specs
        .iter()
        .map(|s| {
            let mut d = serde_json::json!({
                "enrollmentId": s.enrollment_id,
                "serialNumber": s.serial_number,
                "platform": s.platform.as_str(),
                "model": s.model,
                "osVersion": s.version.numeric(),
                "supervised": s.supervised,
                "enrollmentType": s.enrollment_type,
            });
            if let Some(board) = s.board_id {
                d["softwareUpdateDeviceId"] = board.into();
            }
            if let Some(extra) = s.version.extra() {
                d["supplementalExtra"] = extra.into();
            }
            if let Some(build) = &s.build {
                d["buildVersion"] = build.as_str().into();
            }
            if !s.labels.is_empty() {
                d["labels"] = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
            }
            d
        })
        .collect();
    serde_json::to_string(&devices).expect("json")
}

// ---------------------------------------------------------------------------------------------
// The resources, as they would sit in a GitOps checkout.

const MANIFESTS: &str = r#"
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: iphones, namespace: fleet}
spec:
  platforms: [iOS]
---
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: iphones-canary, namespace: fleet}
spec:
  platforms: [iOS]
  shard: {percent: 5, seed: ios-canary}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: ipads, namespace: fleet}
spec:
  platforms: [iPadOS]
---
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: retail-ipads, namespace: fleet}
spec:
  platforms: [iPadOS]
  selector:
    matchLabels: {department: retail}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: macs, namespace: fleet}
spec:
  platforms: [macOS]
---
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: macs-canary, namespace: fleet}
spec:
  platforms: [macOS]
  shard: {percent: 5, seed: macos-canary}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: macs-engineering, namespace: fleet}
spec:
  platforms: [macOS]
  selector:
    matchLabels: {department: engineering}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: macs-berlin, namespace: fleet}
spec:
  platforms: [macOS]
  selector:
    matchLabels: {site: berlin}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: apple-tvs, namespace: fleet}
spec:
  platforms: [tvOS]
---
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: vision-pros, namespace: fleet}
spec:
  platforms: [visionOS]
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: macos-latest, namespace: fleet}
spec:
  fleetGroups: [macs-canary]
  rings:
    - {name: engineering, fleetGroups: [macs-engineering], delayDays: 7}
    - {name: berlin, fleetGroups: [macs-berlin], delayDays: 10}
    - {name: broad, fleetGroups: [macs], delayDays: 21}
  target:
    strategy: latest
    securityImprovements: true
  deadline:
    daysAfterPosting: 14
    localTime: "19:00"
    timeZone: Europe/Berlin
    skipWeekends: true
    minimumLeadTime: 72h
  settings:
    notifications: true
    deferrals: {majorPeriodInDays: 30, minorPeriodInDays: 7, systemPeriodInDays: 3}
    automaticActions: {download: AlwaysOn, installOSUpdates: AlwaysOn, installSecurityUpdate: AlwaysOn}
    rapidSecurityResponse: {enable: true, enableRollback: false}
    allowStandardUserOSUpdates: true
  detailsURL: https://it.example.com/updates/macos
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: ios-latest-minor, namespace: fleet}
spec:
  fleetGroups: [iphones-canary]
  rings:
    - {name: broad, fleetGroups: [iphones], delayDays: 14}
  target:
    strategy: latest-minor
  deadline:
    daysAfterPosting: 21
    localTime: "18:00"
    timeZone: America/New_York
    skipWeekends: true
    minimumLeadTime: 48h
  settings:
    notifications: true
    deferrals: {combinedPeriodInDays: 14}
    recommendedCadence: Oldest
    automaticActions: {download: AlwaysOn, installOSUpdates: Allowed}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: ipados-latest, namespace: fleet}
spec:
  fleetGroups: [retail-ipads]
  rings:
    - {name: office, fleetGroups: [ipads], delayDays: 7}
  target:
    strategy: latest
    securityImprovements: true
  deadline:
    daysAfterPosting: 10
    localTime: "02:00"
    timeZone: Europe/London
    minimumLeadTime: 24h
  settings:
    recommendedCadence: Newest
    automaticActions: {download: AlwaysOn, installOSUpdates: AlwaysOn}
    rapidSecurityResponse: {enable: true}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: tvos-latest, namespace: fleet}
spec:
  fleetGroups: [apple-tvs]
  target:
    strategy: latest
  deadline:
    daysAfterPosting: 7
    localTime: "04:00"
    minimumLeadTime: 24h
---
apiVersion: updates.ddm.dev/v1alpha1
kind: EnforcementTarget
metadata: {name: macos-26-6-2-engineering, namespace: fleet}
spec:
  fleetGroups: [macs-engineering]
  platform: macOS
  targetOSVersion: "26.6.2"
  targetLocalDateTime: "2026-08-27T18:00:00"
  detailsURL: https://it.example.com/advisories/2026-08-macos
---
apiVersion: updates.ddm.dev/v1alpha1
kind: EnforcementTarget
metadata: {name: visionos-26-6-1, namespace: fleet}
spec:
  fleetGroups: [vision-pros]
  platform: visionOS
  targetOSVersion: "26.6.1"
  targetBuildVersions:
    - {model: "RealityDevice14,1", build: "23O780"}
    - {model: "RealityDevice17,1", build: "23O780"}
  targetLocalDateTime: "2026-09-01T20:00:00"
"#;

fn parse_manifests() -> Manifests {
    let mut manifests = Manifests::default();
    let mut problems = Vec::new();
    manifests::parse_into("bench.yaml", MANIFESTS, &mut manifests, &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
    manifests
}

// ---------------------------------------------------------------------------------------------

fn main() {
    // Criterion-style flags (`--bench`) are passed by cargo; nothing to configure.
    let started = Instant::now();
    let now: jiff::Timestamp = NOW.parse().expect("timestamp");

    // -- manifests ------------------------------------------------------------------------
    // Baseline: the same YAML read generically, without types or checks.
    let baseline = measure(201, || {
        serde_saphyr::from_multiple::<serde_json::Value>(black_box(MANIFESTS)).expect("yaml")
    });
    let manifests = measure(201, || {
        let m = parse_manifests();
        check_all(&m.fleet_groups, &m.policies, &m.targets).expect("valid manifests")
    });
    let checked = manifests.out;
    println!(
        "== manifests: {} FleetGroups, {} UpdatePolicies, {} EnforcementTargets ({} bytes of YAML)",
        checked.groups.len(),
        checked.policies.len(),
        checked.targets.len(),
        MANIFESTS.len()
    );
    println!("baseline YAML → serde_json::Value:  {:?}", baseline.time);
    println!(
        "parse_into + check_all:             {:?}  (×{:.2} of baseline)",
        manifests.time,
        ratio(manifests.time, baseline.time)
    );

    // -- the fleet -------------------------------------------------------------------------
    let catalogs: Vec<Catalog> = SNAPSHOTS
        .iter()
        .map(|d| Catalog::from_slice(&read_snapshot(d)).expect("catalog"))
        .collect();
    let catalog = catalogs.last().expect("snapshots");
    let known: HashSet<&str> = catalog.device_ids().into_iter().map(|(id, _)| id).collect();
    for (_, models, _) in &FLEET {
        for (id, _, _) in *models {
            assert!(known.contains(id), "{id} is not in the newest snapshot");
        }
    }
    let models = FLEET.iter().flat_map(|(_, models, _)| models.iter());
    let histories = histories(&catalogs, models, true);
    let specs = fleet(&histories, DEVICES);
    let yaml = inventory_yaml(&specs);
    let json = inventory_json(&specs);

    // -- inventory parse -------------------------------------------------------------------
    println!(
        "\n== inventory parse: {DEVICES} devices ({:.1} MiB YAML, {:.1} MiB JSON)",
        mib(yaml.len()),
        mib(json.len())
    );
    // The whole file in one call, as `plan --inventory` reads it. Should that be refused, the
    // same devices are measured in files of CHUNK devices each, still through
    // `inventory::parse` (the duplicate-id check then only spans one file).
    const CHUNK: usize = 5_000;
    let whole = inventory::parse(&yaml).map(drop);
    let (yaml_files, json_files) = match whole {
        Ok(()) => (vec![yaml], vec![json.clone()]),
        Err(problems) => {
            let first = problems.first().map(String::as_str).unwrap_or_default();
            println!(
                "!! inventory::parse refuses the whole {DEVICES}-device file: {}",
                first.lines().next().unwrap_or_default()
            );
            let saphyr = serde_saphyr::options! {
                budget: serde_saphyr::budget! {
                    max_nodes: usize::MAX,
                    max_events: usize::MAX,
                },
            };
            let raised = measure(3, || {
                serde_saphyr::from_str_with_options::<Vec<serde_json::Value>>(
                    black_box(&yaml),
                    saphyr.clone(),
                )
                .expect("yaml")
            });
            println!(
                "   its first step alone with a raised serde-saphyr budget (YAML → Vec<Value>): {:?}, peak heap {:.1} MiB",
                raised.time,
                mib(raised.peak)
            );
            println!(
                "   measuring {} files of {CHUNK} devices instead",
                DEVICES / CHUNK
            );
            drop(yaml);
            specs
                .chunks(CHUNK)
                .map(|c| (inventory_yaml(c), inventory_json(c)))
                .unzip()
        }
    };
    let chunked = yaml_files.len() > 1;
    drop(specs);
    let parse_files = |files: &[String]| -> Vec<Device> {
        let mut devices = Vec::with_capacity(DEVICES);
        for file in files {
            devices.extend(inventory::parse(black_box(file)).expect("inventory"));
        }
        devices
    };
    // Baseline: the cheapest generic parse of the same inventory — JSON into serde_json::Value,
    // no checks, in one piece. `inventory::parse` does that much (through serde-saphyr, which
    // reads YAML and JSON alike) and then types and checks each device.
    let baseline = measure(3, || {
        serde_json::from_str::<serde_json::Value>(black_box(&json)).expect("json")
    });
    drop(json);
    let from_yaml = measure(3, || parse_files(&yaml_files));
    let from_json = measure(3, || parse_files(&json_files));
    drop(yaml_files);
    drop(json_files);
    let devices = from_yaml.out;
    assert_eq!(devices, from_json.out, "YAML and JSON inventories agree");
    assert_eq!(devices.len(), DEVICES);
    // Keep only the figures: the parsed copies would count as live heap below.
    let from_json = {
        let m = from_json;
        (m.time, m.peak)
    };
    let baseline = {
        let m = baseline;
        (m.time, m.peak)
    };
    let inventory_live = measure(1, || devices.clone()).peak;
    println!(
        "baseline JSON → serde_json::Value:  {:?}, peak heap {:.1} MiB",
        baseline.0,
        mib(baseline.1)
    );
    for (name, time, peak) in [
        ("YAML", from_yaml.time, from_yaml.peak),
        ("JSON", from_json.0, from_json.1),
    ] {
        println!(
            "inventory::parse ({name}):            {time:?}, peak heap {:.1} MiB  (time ×{:.2} of baseline, memory ×{:.2})",
            mib(peak),
            ratio(time, baseline.0),
            peak as f64 / baseline.1 as f64
        );
    }
    println!(
        "the parsed Vec<Device> holds {:.1} MiB",
        mib(inventory_live)
    );
    let mut by_platform: BTreeMap<Platform, usize> = BTreeMap::new();
    for device in &devices {
        *by_platform.entry(device.platform).or_default() += 1;
    }
    let fleet_line: Vec<String> = by_platform
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect();
    println!("fleet: {}", fleet_line.join(", "));

    // -- resolve ---------------------------------------------------------------------------
    let input = Input {
        groups: &checked.groups,
        policies: &checked.policies,
        targets: &checked.targets,
        devices: &devices,
        catalog,
        now,
    };
    println!("\n== resolve {DEVICES} devices on one core (2026-08-22 catalog, at {NOW})");
    let live_before = LIVE.load(Ordering::Relaxed);
    let resolved = measure(7, || resolve::resolve(input));
    let plan = &resolved.out;

    // Baseline: the irreducible per-device work of any plan — one hash lookup keyed by the
    // device's software-update id (the catalog's per-device index is such a map, and so is any
    // per-model cache of decisions) and one owned per-device list of declaration indexes, the
    // shape `Plan::devices[i].declarations` has. Each id maps to the list the plan really gave
    // the first device with that id, so the clone is the same size. Everything the resolver
    // spends above this is group selection, decisions, notes and interning.
    let mut per_id: HashMap<&str, Vec<u32>> = HashMap::new();
    for (device, outcome) in devices.iter().zip(&plan.devices) {
        let key = device.catalog_device_id().unwrap_or(&device.model);
        per_id
            .entry(key)
            .or_insert_with(|| outcome.declarations.clone());
    }
    let baseline = measure(11, || {
        let mut out: Vec<Vec<u32>> = Vec::with_capacity(devices.len());
        for device in &devices {
            let key = black_box(device.catalog_device_id().unwrap_or(&device.model));
            out.push(per_id.get(key).cloned().unwrap_or_default());
        }
        out
    });

    println!(
        "baseline (HashMap lookup + Vec clone per device): {:?}, peak heap {:.1} MiB",
        baseline.time,
        mib(baseline.peak)
    );
    println!(
        "resolve (median of 7):                            {:?} = {:.2} µs/device (×{:.1} of baseline; target < 2 s)",
        resolved.time,
        resolved.time.as_secs_f64() * 1e6 / DEVICES as f64,
        ratio(resolved.time, baseline.time)
    );
    println!(
        "resolve peak heap growth:                         {:.1} MiB (×{:.1} of baseline; {:.1} MiB live with inventory, catalogs and manifests; target < 500 MB)",
        mib(resolved.peak),
        resolved.peak as f64 / baseline.peak as f64,
        mib(live_before + resolved.peak)
    );
    println!(
        "resolve allocations:                              {} = {:.1} per device (×{:.1} of baseline's {})",
        resolved.allocations,
        resolved.allocations as f64 / DEVICES as f64,
        resolved.allocations as f64 / baseline.allocations as f64,
        baseline.allocations
    );

    report(&checked, &devices, plan);

    // -- rendering -------------------------------------------------------------------------
    println!("\n== rendering (ratios to the resolve baseline)");
    let rendered = measure(51, || serde_json::to_vec(&plan.declarations).expect("json"));
    println!(
        "serde_json::to_vec(&plan.declarations): {:?} for {} bytes ({} declarations)  (×{:.3})",
        rendered.time,
        rendered.out.len(),
        plan.declarations.len(),
        ratio(rendered.time, baseline.time)
    );

    // What `plan --output json` writes per device: each device's declarations inlined (and
    // pretty-printed), so the shared declarations are repeated once per device. Emulated here
    // with the same shape, without the reasons (the report type is private to the CLI).
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct DeviceJson<'a> {
        enrollment_id: &'a str,
        declarations: Vec<&'a Declaration>,
    }
    let per_device = measure(3, || {
        let rows: Vec<DeviceJson<'_>> = devices
            .iter()
            .zip(&plan.devices)
            .map(|(device, outcome)| DeviceJson {
                enrollment_id: &device.enrollment_id,
                declarations: outcome
                    .declarations
                    .iter()
                    .map(|i| &plan.declarations[*i as usize])
                    .collect(),
            })
            .collect();
        serde_json::to_vec_pretty(&rows).expect("json")
    });
    println!(
        "per-device declarations, pretty (as `plan --output json` inlines them): {:?} for {:.1} MiB, peak heap {:.1} MiB  (×{:.1}; {:.0}× the bytes of the deduplicated list)",
        per_device.time,
        mib(per_device.out.len()),
        mib(per_device.peak),
        ratio(per_device.time, baseline.time),
        per_device.out.len() as f64 / rendered.out.len() as f64
    );

    let total = manifests.time + from_yaml.time + resolved.time + rendered.time;
    println!(
        "\n== `plan` end to end at {DEVICES} devices, without the per-device output: manifests + inventory (YAML{}) + resolve + declarations JSON = {total:?}  (×{:.1} of the resolve baseline; target < 2 s)",
        if chunked { ", in files of 5000" } else { "" },
        ratio(total, baseline.time)
    );
    println!("(bench ran {:.0?})", started.elapsed());
}

/// What the plan holds: distinct declarations by type, how often devices reference them,
/// enforcements, reasons, groups, generated targets, and a consistency check.
fn report(checked: &ddm_update_operator::api::validate::Checked, devices: &[Device], plan: &Plan) {
    let mut by_type: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for declaration in &plan.declarations {
        by_type.entry(declaration.declaration_type).or_default().0 += 1;
    }
    let mut references = 0usize;
    for outcome in &plan.devices {
        references += outcome.declarations.len();
        for i in &outcome.declarations {
            by_type
                .entry(plan.declarations[*i as usize].declaration_type)
                .or_default()
                .1 += 1;
        }
    }
    println!(
        "\n{} distinct declarations for {DEVICES} devices ({references} per-device references, each declaration shared by {:.0} devices on average):",
        plan.declarations.len(),
        references as f64 / plan.declarations.len().max(1) as f64
    );
    for (kind, (distinct, refs)) in &by_type {
        println!("  {distinct:>5} distinct, {refs:>7} references  {kind}");
    }
    let mut enforcements: Vec<&str> = plan
        .declarations
        .iter()
        .filter(|d| d.declaration_type == declarations::ENFORCEMENT_TYPE)
        .map(|d| d.identifier.as_str())
        .collect();
    enforcements.sort_unstable();
    println!("  enforcement identifiers: {}", enforcements.join(" "));

    let with_enforcement = plan
        .devices
        .iter()
        .filter(|d| !d.enforcements.is_empty())
        .count();
    let without_any = plan
        .devices
        .iter()
        .filter(|d| d.declarations.is_empty())
        .count();
    println!(
        "{with_enforcement} devices with at least one enforcement; {without_any} with no declaration at all"
    );
    let mut by_source: BTreeMap<String, usize> = BTreeMap::new();
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for outcome in &plan.devices {
        for e in &outcome.enforcements {
            *by_source.entry(source_name(checked, e.source)).or_default() += 1;
        }
        for note in &outcome.notes {
            *reasons.entry(note.reason.as_str()).or_default() += 1;
        }
    }
    for (source, n) in &by_source {
        println!("  {n:>7} enforcements from {source}");
    }
    let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
    println!("reasons: {}", reasons.join(", "));
    let members: Vec<String> = checked
        .groups
        .iter()
        .zip(&plan.members)
        .map(|(g, m)| format!("{} {}", g.key.name, m.len()))
        .collect();
    println!("group members: {}", members.join(", "));
    println!(
        "{} generated EnforcementTargets; {} warnings",
        plan.generated.len(),
        plan.warnings.len()
    );
    for warning in &plan.warnings {
        println!("  warning: {warning}");
    }

    // A generated target keeps one build per device id: devices of one id under one (policy,
    // version, deadline) must all have been given the same build.
    let mut builds: HashMap<(usize, String, String, &str), HashSet<Option<String>>> =
        HashMap::new();
    for (device, outcome) in devices.iter().zip(&plan.devices) {
        for e in &outcome.enforcements {
            if let (Source::Policy(p), Some(id)) = (e.source, device.catalog_device_id()) {
                builds
                    .entry((p, e.version.to_string(), e.deadline.to_string(), id))
                    .or_default()
                    .insert(e.build.as_ref().map(ToString::to_string));
            }
        }
    }
    let split = builds.values().filter(|b| b.len() > 1).count();
    println!(
        "generated-target builds: {split} of {} (policy, version, deadline, device id) keys give devices different builds",
        builds.len()
    );
}

fn source_name(checked: &ddm_update_operator::api::validate::Checked, source: Source) -> String {
    match source {
        Source::Policy(p) => format!("UpdatePolicy {}", checked.policies[p].key.name),
        Source::Target(t) => format!("EnforcementTarget {}", checked.targets[t].key.name),
    }
}
