//! Simulated devices for the end-to-end tests: drawn from the newest catalog fixture, checked
//! in together, and what each holds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use ddm_update_operator::catalog::{Catalog, Platform};
use ddm_update_operator::sim::{Fleet, FleetOptions, ServerConfig, SimDevice, SyncOutcome};

use super::ROOT;

/// The newest catalog snapshot, the one the end-to-end tests run against.
pub fn newest_catalog_path() -> PathBuf {
    PathBuf::from(ROOT).join("tests/fixtures/gdmf/pmv-2026-08-22.json")
}

pub fn newest_catalog() -> Catalog {
    let bytes = std::fs::read(newest_catalog_path()).expect("the catalog fixture");
    Catalog::from_slice(&bytes).expect("a catalog")
}

/// Draws `n` devices of one platform from the catalog (a separate draw per platform keeps the
/// mix fixed whatever the seed).
pub fn draw(catalog: &Catalog, platform: Platform, n: usize, seed: u64) -> Vec<SimDevice> {
    let options = FleetOptions {
        platforms: vec![platform],
        ..FleetOptions::default()
    };
    Fleet::from_catalog_with(catalog, n, seed, &options)
        .expect("the catalog lists devices of this platform")
        .devices
}

/// One draw per `(platform, how many, seed)` from the newest catalog, in that order; the same
/// every run.
pub fn fleet_of(draws: &[(Platform, usize, u64)]) -> Vec<SimDevice> {
    let catalog = newest_catalog();
    let devices: Vec<SimDevice> = draws
        .iter()
        .flat_map(|&(platform, n, seed)| draw(&catalog, platform, n, seed))
        .collect();
    let ids: BTreeSet<&str> = devices.iter().map(SimDevice::enrollment_id).collect();
    assert_eq!(ids.len(), devices.len(), "enrollment ids are unique");
    devices
}

/// One check-in of every device, concurrently; a failed check-in fails the test.
pub async fn check_in_all(
    devices: &mut [SimDevice],
    client: &reqwest::Client,
    server: &ServerConfig,
) -> Vec<SyncOutcome> {
    let results = futures::future::join_all(
        devices
            .iter_mut()
            .map(|device| async move { device.sync(client, server).await }),
    )
    .await;
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|e| panic!("{}: check-in failed: {e}", devices[i].enrollment_id()))
        })
        .collect()
}

/// What a device holds: Identifier → (Type, ServerToken).
pub fn held(device: &SimDevice) -> BTreeMap<String, (String, String)> {
    device
        .declarations()
        .into_iter()
        .map(|d| (d.identifier, (d.declaration_type, d.server_token)))
        .collect()
}
