//! What the benches share: the catalog snapshots, a deterministic random source and the real
//! device models their fleets are drawn from. Each bench includes it with
//! `#[path = "support/mod.rs"] mod support;` (a bench is a crate of its own, and bench code has
//! no place in the operator's library).

// Each bench uses part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use ddm_update_operator::catalog::{AssetSet, Build, Catalog, OsVersion};

/// Median wall time of `runs` calls.
pub fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gdmf");

/// The catalog snapshots under `tests/fixtures/gdmf/`, oldest first.
pub const SNAPSHOTS: [&str; 7] = [
    "2024-06-30",
    "2024-09-16",
    "2025-05-21",
    "2025-09-16",
    "2025-10-30",
    "2026-03-17",
    "2026-08-22",
];

/// Where the snapshot of `date` (one of [`SNAPSHOTS`]) is.
pub fn snapshot_path(date: &str) -> String {
    format!("{FIXTURES}/pmv-{date}.json")
}

pub fn read_snapshot(date: &str) -> Vec<u8> {
    let path = snapshot_path(date);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// splitmix64: deterministic, so every run and every machine builds the same fleet.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn permille(&mut self, p: u64) -> bool {
        self.next() % 1000 < p
    }

    pub fn weighted<'a, T>(&mut self, items: &'a [T], weight: impl Fn(&T) -> u32) -> &'a T {
        let total: u32 = items.iter().map(&weight).sum();
        let mut at = (self.next() % u64::from(total)) as u32;
        for item in items {
            if at < weight(item) {
                return item;
            }
            at -= weight(item);
        }
        unreachable!("weights add up")
    }

    /// Where in a model's history of `len` versions (oldest first) a device runs: about a fifth
    /// up to date, most a few releases behind, a long tail anywhere (older majors included).
    pub fn position_in_history(&mut self, len: usize) -> usize {
        let newest = len - 1;
        match self.below(100) {
            0..20 => newest,
            20..85 => {
                let mut behind = 1;
                while behind < newest && self.permille(650) {
                    behind += 1;
                }
                newest.saturating_sub(behind)
            }
            _ => self.below(len),
        }
    }
}

/// splitmix64's finaliser, a bijection: distinct inputs give distinct ids.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------------
// Real models of the newest snapshot. Macs differ between the benches, so each has its own.

/// (software-update device id, model identifier, weight within its platform). For everything but
/// Macs the two are the same.
pub type Model = (&'static str, &'static str, u32);

pub const IPHONES: &[Model] = &[
    ("iPhone11,8", "iPhone11,8", 2),
    ("iPhone12,1", "iPhone12,1", 4),
    ("iPhone12,8", "iPhone12,8", 4),
    ("iPhone13,2", "iPhone13,2", 5),
    ("iPhone14,5", "iPhone14,5", 7),
    ("iPhone14,6", "iPhone14,6", 4),
    ("iPhone14,7", "iPhone14,7", 7),
    ("iPhone15,2", "iPhone15,2", 4),
    ("iPhone15,4", "iPhone15,4", 8),
    ("iPhone15,5", "iPhone15,5", 3),
    ("iPhone16,1", "iPhone16,1", 5),
    ("iPhone16,2", "iPhone16,2", 3),
    ("iPhone17,1", "iPhone17,1", 4),
    ("iPhone17,3", "iPhone17,3", 8),
    ("iPhone17,5", "iPhone17,5", 4),
    ("iPhone18,1", "iPhone18,1", 3),
    ("iPhone18,3", "iPhone18,3", 5),
];

pub const IPADS: &[Model] = &[
    ("iPad7,11", "iPad7,11", 2),
    ("iPad11,6", "iPad11,6", 3),
    ("iPad12,1", "iPad12,1", 6),
    ("iPad13,1", "iPad13,1", 2),
    ("iPad13,16", "iPad13,16", 3),
    ("iPad13,18", "iPad13,18", 6),
    ("iPad14,1", "iPad14,1", 3),
    ("iPad14,8", "iPad14,8", 2),
    ("iPad15,3", "iPad15,3", 2),
    ("iPad15,7", "iPad15,7", 4),
    ("iPad16,3", "iPad16,3", 2),
];

pub const APPLE_TVS: &[Model] = &[
    ("AppleTV6,2", "AppleTV6,2", 1),
    ("AppleTV11,1", "AppleTV11,1", 2),
    ("AppleTV14,1", "AppleTV14,1", 3),
];

pub const VISION_PROS: &[Model] = &[
    ("RealityDevice14,1", "RealityDevice14,1", 3),
    ("RealityDevice17,1", "RealityDevice17,1", 1),
];

/// Departments with their share of the fleet (weights): the labels the benches' FleetGroups
/// select on.
pub const DEPARTMENTS: &[(&str, u32)] = &[
    ("engineering", 30),
    ("sales", 25),
    ("operations", 20),
    ("retail", 15),
    ("executive", 10),
];

/// What one model ran over time: each version Apple offered it, oldest first, with its builds
/// (twins included).
pub type History = Vec<(OsVersion, Vec<Build>)>;

/// The history of each of `models` (software-update device ids) over `catalogs`; with
/// `security_improvements`, those count too, running on their prerequisite build.
pub fn histories<'a>(
    catalogs: &[Catalog],
    models: impl IntoIterator<Item = &'a Model>,
    security_improvements: bool,
) -> HashMap<&'static str, History> {
    let wanted: HashSet<&'static str> = models.into_iter().map(|m| m.0).collect();
    let mut seen: HashMap<&'static str, BTreeMap<OsVersion, Vec<Build>>> = HashMap::new();
    for catalog in catalogs {
        let full = catalog
            .releases(AssetSet::Mdm)
            .iter()
            .map(|r| (r, &r.build));
        let patches = catalog
            .security_improvements()
            .iter()
            .filter(|_| security_improvements)
            .map(|r| (r, &r.prerequisite_build));
        for (release, build) in full.chain(patches) {
            for device in &release.supported_devices {
                let Some(id) = wanted.get(&**device) else {
                    continue;
                };
                let builds = seen
                    .entry(*id)
                    .or_default()
                    .entry(release.version.clone())
                    .or_default();
                if let Some(build) = build
                    && !builds.contains(build)
                {
                    builds.push(build.clone());
                }
            }
        }
    }
    seen.into_iter()
        .map(|(id, versions)| (id, versions.into_iter().collect()))
        .collect()
}
