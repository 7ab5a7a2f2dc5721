//! Fuzzes the pmv parser and everything downstream of a document it accepts: indexing,
//! resolving every device it lists, and the sanity guard. Nothing may panic.
#![no_main]

use ddm_update_operator::catalog::{
    AssetSet, Catalog, DeviceOs, OsVersion, PmvDocument, Query, Strategy, guard,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(document) = PmvDocument::from_slice(data) else {
        return;
    };
    let _ = guard::check_replacement(&document, &document);
    let catalog = Catalog::from_document(&document);
    let version: OsVersion = "1.0".parse().expect("literal version");
    for strategy in [Strategy::Latest, Strategy::LatestMinor, Strategy::MajorBehind(1)] {
        let query = Query {
            strategy,
            asset_set: AssetSet::Mdm,
            security_improvements: true,
            on: jiff::civil::date(2026, 1, 1),
        };
        for (id, _) in catalog.device_ids() {
            let device = DeviceOs { device_id: id, version: &version, build: None };
            let _ = catalog.resolve(device, &query);
            let _ = catalog.candidates(device, &query);
        }
    }
});
