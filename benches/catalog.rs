//! Catalog benchmarks: parse + index the largest real snapshot, and resolve 100,000 devices.
//! Run with `cargo bench --bench catalog`. Each figure is printed next to a baseline measured
//! in the same run (the machines are shared and noisy), as a ratio.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use ddm_update_operator::catalog::{
    AssetSet, Build, Catalog, DeviceOs, OsVersion, Query, Strategy,
};

#[path = "support/mod.rs"]
mod support;

use support::{SNAPSHOTS, median, read_snapshot};

/// Counts live heap bytes and their peak, for the memory figures.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak heap growth while `f` runs, in bytes.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - before)
}

struct Device {
    id: String,
    version: OsVersion,
    build: Build,
}

/// 100,000 devices: every device id of the newest snapshot, each running a version Apple really
/// offered that model in one of the snapshots (older and newer), spread round-robin.
fn fleet(catalogs: &[Catalog], size: usize) -> Vec<Device> {
    let newest = catalogs.last().expect("snapshots");
    let mut per_model: Vec<(String, Vec<(OsVersion, Build)>)> = Vec::new();
    for (id, _) in newest.device_ids() {
        let mut seen: Vec<(OsVersion, Build)> = Vec::new();
        for catalog in catalogs {
            for release in catalog.releases(AssetSet::Mdm) {
                if release.supported_devices.iter().any(|d| &**d == id)
                    && let Some(build) = &release.build
                {
                    seen.push((release.version.clone(), build.clone()));
                }
            }
        }
        seen.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        seen.dedup_by(|a, b| a.1 == b.1);
        if !seen.is_empty() {
            per_model.push((id.to_string(), seen));
        }
    }
    (0..size)
        .map(|i| {
            let (id, versions) = &per_model[i % per_model.len()];
            let (version, build) = &versions[(i / per_model.len()) % versions.len()];
            Device {
                id: id.clone(),
                version: version.clone(),
                build: build.clone(),
            }
        })
        .collect()
}

fn main() {
    // Criterion-style flags (`--bench`) are passed by cargo; nothing to configure.
    let largest = SNAPSHOTS
        .iter()
        .map(|d| (*d, read_snapshot(d)))
        .max_by_key(|(_, b)| b.len())
        .expect("snapshots");
    let (date, bytes) = &largest;

    println!(
        "== parse + index the largest real snapshot ({date}, {} bytes)",
        bytes.len()
    );
    let baseline = median(50, || {
        black_box(serde_json::from_slice::<serde_json::Value>(black_box(bytes)).expect("json"));
    });
    let ours = median(50, || {
        black_box(Catalog::from_slice(black_box(bytes)).expect("catalog"));
    });
    let (_, baseline_peak) =
        peak_during(|| serde_json::from_slice::<serde_json::Value>(bytes).expect("json"));
    let (catalog, peak) = peak_during(|| Catalog::from_slice(bytes).expect("catalog"));
    println!(
        "baseline serde_json::Value parse: {baseline:?}, peak heap {} KiB",
        baseline_peak / 1024
    );
    println!(
        "parse + index:                    {ours:?}, peak heap {} KiB  (time ×{:.2} of baseline, memory ×{:.2})",
        peak / 1024,
        ours.as_secs_f64() / baseline.as_secs_f64(),
        peak as f64 / baseline_peak as f64
    );
    drop(catalog);

    const DEVICES: usize = 100_000;
    let catalogs: Vec<Catalog> = SNAPSHOTS
        .iter()
        .map(|d| Catalog::from_slice(&read_snapshot(d)).expect("catalog"))
        .collect();
    let devices = fleet(&catalogs, DEVICES);
    let newest = catalogs.last().expect("snapshots");
    let query = Query {
        strategy: Strategy::Latest,
        asset_set: AssetSet::Mdm,
        security_improvements: true,
        on: "2026-08-22".parse().expect("date"),
    };
    println!(
        "\n== resolve {DEVICES} devices with `latest` on one core ({} models, 2026-08-22 catalog)",
        newest.device_ids().len()
    );

    // Baseline: the irreducible part of the work, one hash lookup of the device id per device.
    let lookup: HashMap<&str, usize> = newest
        .device_ids()
        .into_iter()
        .enumerate()
        .map(|(i, (id, _))| (id, i))
        .collect();
    let baseline = median(11, || {
        let mut found = 0usize;
        for device in &devices {
            found += lookup
                .get(black_box(device.id.as_str()))
                .copied()
                .unwrap_or(0);
        }
        black_box(found);
    });
    let mut targeted = 0usize;
    let resolve = median(11, || {
        targeted = 0;
        for device in &devices {
            let answer = newest.resolve(
                DeviceOs {
                    device_id: &device.id,
                    version: &device.version,
                    build: Some(&device.build),
                },
                black_box(&query),
            );
            targeted += usize::from(answer.is_ok());
        }
    });
    println!("baseline (one HashMap lookup per device): {baseline:?}");
    println!(
        "resolve:                                  {resolve:?} = {:.0} ns/device (×{:.2} of baseline; target ≤ 100 ms)",
        resolve.as_nanos() as f64 / DEVICES as f64,
        resolve.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "{targeted} of {DEVICES} devices get a target, the rest are up to date or not in the catalog"
    );
}
