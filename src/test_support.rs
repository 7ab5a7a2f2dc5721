//! What the library's unit tests share (resources from YAML, inventories, the catalog
//! snapshots as of their own day) instead of a copy in each test module.

use jiff::civil::date;

use crate::api::validate::Checked;
use crate::catalog::Catalog;
use crate::inventory::Device;

/// Checked resources from manifest text; panics with every problem.
pub fn checked(text: &str) -> Checked {
    crate::manifests::check_str("test.yaml", text).unwrap_or_else(|p| panic!("{p:?}"))
}

/// Devices from inventory text; panics with every problem.
pub fn inventory(text: &str) -> Vec<Device> {
    crate::inventory::parse(text).unwrap_or_else(|p| panic!("{p:?}"))
}

/// Apple's answer of 2026-08-22, its expiration dates judged as of that day.
pub fn catalog_2026_08_22() -> Catalog {
    Catalog::from_slice(include_bytes!("../tests/fixtures/gdmf/pmv-2026-08-22.json"))
        .expect("the 2026-08-22 snapshot")
        .with_as_of(date(2026, 8, 22))
}

/// Apple's answer of 2026-03-17, its expiration dates judged as of that day.
pub fn catalog_2026_03_17() -> Catalog {
    Catalog::from_slice(include_bytes!("../tests/fixtures/gdmf/pmv-2026-03-17.json"))
        .expect("the 2026-03-17 snapshot")
        .with_as_of(date(2026, 3, 17))
}
