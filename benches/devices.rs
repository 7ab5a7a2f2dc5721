//! Device view benchmark: `GET /api/v1/devices` pages and one device explained, over 100,000
//! devices of a real catalog's models and versions. Run with `cargo bench --bench devices`.
//! The target: a page in at most 20 ms. Each figure is printed next to a baseline
//! measured in the same run (the machines are shared and noisy): one pass over every device
//! comparing its platform, the least any filtered scan does.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ddm_update_operator::catalog::{AssetSet, Catalog, Platform};
use ddm_update_operator::inventory::{Device, EnrollmentType};
use ddm_update_operator::resolve::{self, Input};
use ddm_update_operator::view::explain::{Live, explain};
use ddm_update_operator::view::{DeviceIndex, ListQuery, PassOutput, Scope};

#[path = "support/mod.rs"]
mod support;

use support::{IPADS, IPHONES, Model, median, mix, read_snapshot};

const DEVICES: usize = 100_000;
const TEAMS: [&str; 4] = ["north", "south", "east", "west"];

/// One FleetGroup and one UpdatePolicy per team, each in its own namespace.
fn resources() -> String {
    let mut text = String::new();
    for team in TEAMS {
        text.push_str(&format!(
            "apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {{name: devices, namespace: {team}}}
spec: {{platforms: [iOS, iPadOS], selector: {{matchLabels: {{team: {team}}}}}}}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {{name: latest, namespace: {team}}}
spec:
  fleetGroups: [devices]
  target: {{strategy: latest}}
  deadline: {{daysAfterPosting: 14, localTime: '19:00', timeZone: UTC}}
---
"
        ));
    }
    text
}

/// 100,000 iPhones and iPads, each running a version Apple offered its model in the snapshot.
fn fleet(catalog: &Catalog) -> Vec<Device> {
    let models: Vec<(&Model, Platform, Vec<String>)> = IPHONES
        .iter()
        .map(|m| (m, Platform::Ios))
        .chain(IPADS.iter().map(|m| (m, Platform::IpadOs)))
        .map(|(model, platform)| {
            let versions: Vec<String> = catalog
                .releases(AssetSet::Mdm)
                .iter()
                .filter(|r| r.supported_devices.iter().any(|d| &**d == model.0))
                .map(|r| r.version.to_string())
                .collect();
            (model, platform, versions)
        })
        .filter(|(_, _, versions)| !versions.is_empty())
        .collect();
    let mut devices: Vec<Device> = (0..DEVICES)
        .map(|i| {
            let pick = mix(i as u64);
            let (model, platform, versions) = &models[(pick % models.len() as u64) as usize];
            let version = &versions[((pick >> 20) % versions.len() as u64) as usize];
            Device {
                enrollment_id: format!("{:016X}-{i:08}", pick),
                serial_number: Some(format!("S{i:09}")),
                platform: *platform,
                model: model.1.to_string(),
                software_update_device_id: Some(model.0.to_string()),
                os_version: version.parse().expect("a catalog version"),
                build_version: None,
                supervised: !pick.is_multiple_of(10),
                enrollment_type: EnrollmentType::Ade,
                labels: [("team".to_string(), TEAMS[i % TEAMS.len()].to_string())].into(),
                bootstrap_token: Default::default(),
            }
        })
        .collect();
    devices.sort_by(|a, b| a.enrollment_id.cmp(&b.enrollment_id));
    devices
}

/// A list request measured: what it is, its query parameters and the caller's scope.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a Scope);

fn main() {
    let catalog = Catalog::from_slice(&read_snapshot("2026-08-22"))
        .expect("catalog")
        .with_as_of("2026-08-22".parse().expect("date"));
    let checked = ddm_update_operator::manifests::check_str("bench.yaml", &resources())
        .expect("valid resources");
    let devices = fleet(&catalog);
    let now: jiff::Timestamp = "2026-08-22T12:00:00Z".parse().expect("time");
    let plan = resolve::resolve(Input {
        groups: &checked.groups,
        policies: &checked.policies,
        targets: &checked.targets,
        devices: &devices,
        catalog: &catalog,
        now,
    });
    let started = Instant::now();
    let index = DeviceIndex::new(
        PassOutput {
            at: now,
            checked: Arc::new(checked.clone()),
            devices: Arc::new(devices),
            catalog: Arc::new(catalog),
            seed: Arc::default(),
            seed_at: now,
            assume_supervised: true,
        },
        &plan,
        &[],
    );
    let built = started.elapsed();
    println!("== device view over {DEVICES} devices, 4 namespaces (2026-08-22 catalog)");
    println!("index built after the pass: {built:?}");

    let devices = &index.pass.devices;
    let baseline = median(21, || {
        let found = devices
            .iter()
            .filter(|d| black_box(d.platform) == Platform::VisionOs)
            .count();
        black_box(found);
    });
    println!("baseline, one pass over every device comparing its platform: {baseline:?}");

    let query = |pairs: &[(&str, &str)], scope: &Scope| {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ListQuery::parse(&pairs, &index.pass.checked, scope).expect("a query")
    };
    let middle = {
        let first = query(&[("limit", "1000")], &Scope::All);
        let mut page = index.list(&first, &Scope::All);
        for _ in 0..49 {
            let next = page.next.clone().expect("more pages");
            page = index.list(
                &query(&[("limit", "1000"), ("continue", &next)], &Scope::All),
                &Scope::All,
            );
        }
        page.next.expect("a token half way")
    };
    let north = Scope::Namespaces(["north".to_string()].into());
    let cases: [Case; 6] = [
        ("first page, 100 devices", vec![], &Scope::All),
        (
            "a page half way (continue)",
            vec![("continue", middle.as_str())],
            &Scope::All,
        ),
        ("1,000 per page", vec![("limit", "1000")], &Scope::All),
        (
            "filter: pending iPads of one policy",
            vec![
                ("state", "pending"),
                ("platform", "iPadOS"),
                ("source", "UpdatePolicy north/latest"),
            ],
            &Scope::All,
        ),
        (
            "filter matching nothing (a full scan)",
            vec![("state", "failed")],
            &Scope::All,
        ),
        ("a token allowed in one namespace", vec![], &north),
    ];
    let mut worst = Duration::ZERO;
    for (what, pairs, scope) in cases {
        let q = query(&pairs, scope);
        let mut items = 0;
        let time = median(21, || {
            let page = index.list(&q, scope);
            items = page.items.len();
            black_box(serde_json::to_vec(&page).expect("json"));
        });
        worst = worst.max(time);
        println!(
            "{what:<40} {items:>5} devices: {time:>10.2?} (×{:.1} of baseline) {}",
            time.as_secs_f64() / baseline.as_secs_f64(),
            if time <= Duration::from_millis(20) {
                "≤ 20 ms"
            } else {
                "OVER 20 ms"
            }
        );
    }
    let position = index.len() / 2;
    let show = median(21, || {
        let view = explain(&index, position, &Live::default(), &Scope::All, now).expect("a view");
        black_box(serde_json::to_vec(&view).expect("json"));
    });
    println!(
        "{:<40} {:>5}        : {show:>10.2?} (×{:.1} of baseline)",
        "one device resolved again and explained (without store reads)",
        1,
        show.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "slowest page: {worst:?} — target ≤ 20 ms: {}",
        if worst <= Duration::from_millis(20) {
            "met"
        } else {
            "NOT met"
        }
    );
}
