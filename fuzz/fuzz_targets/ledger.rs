//! Fuzzes the rollout ledger `plan --ledger` reads (an exported `GET /api/v1/rollouts`, so
//! outside input) and its use: parse, read rows, resolve a small fleet with it. Nothing may
//! panic, whatever deadlines, versions or platforms the rows hold.
#![no_main]

use std::sync::OnceLock;

use ddm_update_operator::api::validate::Checked;
use ddm_update_operator::catalog::Catalog;
use ddm_update_operator::inventory::Device;
use ddm_update_operator::resolve::ledger::LedgerDocument;
use ddm_update_operator::resolve::{Input, Ledger, resolve_with};
use libfuzzer_sys::fuzz_target;

const CATALOG: &[u8] = include_bytes!("../../tests/fixtures/gdmf/pmv-2026-08-22.json");
const MANIFESTS: &str = "apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: phones, namespace: it}
spec: {platforms: [iOS]}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: hold, namespace: it}
spec:
  fleetGroups: [phones]
  rings: [{name: broad, fleetGroups: [phones], delayDays: 5}]
  target: {strategy: latest}
  deadline: {daysAfterPosting: 21, localTime: '19:00', timeZone: UTC, minimumLeadTime: 48h}
";
const INVENTORY: &str = "- {enrollmentId: A, platform: iOS, model: 'iPhone15,2', osVersion: '26.0', supervised: true, enrollmentType: ade}
- {enrollmentId: B, platform: iOS, model: 'iPhone15,2', osVersion: '18.6', supervised: true, enrollmentType: ade}
";

struct World {
    checked: Checked,
    devices: Vec<Device>,
    catalog: Catalog,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| World {
        checked: ddm_update_operator::manifests::check_str("fuzz.yaml", MANIFESTS)
            .expect("the fixed manifests"),
        devices: ddm_update_operator::inventory::parse(INVENTORY).expect("the fixed inventory"),
        catalog: Catalog::from_slice(CATALOG).expect("the fixture"),
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(document) = serde_json::from_slice::<LedgerDocument>(data) else {
        return;
    };
    let (ledger, _problems): (Ledger, _) = Ledger::from_document(&document);
    let world = world();
    let plan = resolve_with(
        Input {
            groups: &world.checked.groups,
            policies: &world.checked.policies,
            targets: &world.checked.targets,
            devices: &world.devices,
            catalog: &world.catalog,
            now: "2026-08-22T12:00:00Z".parse().expect("a time"),
        },
        &ledger,
    );
    let _ = ledger.document(None);
    let _ = plan.generated.len();
});
