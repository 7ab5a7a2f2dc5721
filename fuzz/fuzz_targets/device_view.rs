//! Fuzzes the device view's outside input: a list request's query parameters (any names and
//! values, a made-up `continue` token) and what a device reported, as the view reads it back
//! (its merged status items and its raw reports). A bad parameter is an error naming it; a page
//! never exceeds its limit; a view is always produced; nothing panics.
#![no_main]

use std::sync::{Arc, OnceLock};

use ddm_update_operator::catalog::Catalog;
use ddm_update_operator::resolve::{self, Input};
use ddm_update_operator::view::explain::{Live, explain};
use ddm_update_operator::view::{DeviceIndex, ListQuery, PassOutput, Scope};
use libfuzzer_sys::fuzz_target;

const RESOURCES: &str = "apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: phones, namespace: it}
spec: {platforms: [iOS]}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: latest, namespace: it}
spec:
  fleetGroups: [phones]
  target: {strategy: latest}
  deadline: {daysAfterPosting: 7, localTime: '19:00', timeZone: UTC}
";

const INVENTORY: &str = "- {enrollmentId: A, serialNumber: SA, platform: iOS, model: 'iPhone15,2', osVersion: '18.6', supervised: true, enrollmentType: ade}
- {enrollmentId: B, platform: iOS, model: 'iPhone15,2', osVersion: '26.0', supervised: true, enrollmentType: ade}
";

fn index() -> &'static DeviceIndex {
    static INDEX: OnceLock<DeviceIndex> = OnceLock::new();
    INDEX.get_or_init(|| {
        let checked = ddm_update_operator::manifests::check_str("fuzz.yaml", RESOURCES)
            .expect("valid resources");
        let devices = ddm_update_operator::inventory::parse(INVENTORY).expect("inventory");
        let catalog = Catalog::from_slice(include_bytes!(
            "../../tests/fixtures/gdmf/pmv-2026-08-22.json"
        ))
        .expect("catalog");
        let now = "2026-08-22T12:00:00Z".parse().expect("time");
        let plan = resolve::resolve(Input {
            groups: &checked.groups,
            policies: &checked.policies,
            targets: &checked.targets,
            devices: &devices,
            catalog: &catalog,
            now,
        });
        DeviceIndex::new(
            PassOutput {
                at: now,
                checked: Arc::new(checked),
                devices: Arc::new(devices.clone()),
                catalog: Arc::new(catalog),
                seed: Arc::new(devices),
                seed_at: now,
                assume_supervised: true,
            },
            &plan,
            &[],
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let index = index();
    let text = String::from_utf8_lossy(data);
    let (query, report) = text.split_once('\n').unwrap_or((&text, ""));
    let pairs: Vec<(String, String)> = query
        .split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let it = Scope::Namespaces(["it".to_string()].into());
    for scope in [&Scope::All, &it] {
        match ListQuery::parse(&pairs, &index.pass.checked, scope) {
            Ok(query) => assert!(index.list(&query, scope).items.len() <= query.limit),
            Err(error) => assert!(!error.parameter.is_empty() || pairs.iter().any(|(k, _)| k.is_empty())),
        }
    }
    let live = Live {
        items: serde_json::from_str(report).ok(),
        recent: vec![(jiff::Timestamp::UNIX_EPOCH, report.as_bytes().to_vec())],
        ..Live::default()
    };
    for position in 0..index.len() {
        let view = explain(index, position, &live, &Scope::All, index.pass.at);
        assert!(view.is_some_and(|v| !v.explanation.is_empty()));
    }
});
