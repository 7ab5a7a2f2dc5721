//! Fuzzes the DDM status report parser and everything downstream of a report it accepts:
//! merging into a device's state and reading the items the operator uses. Nothing may panic.
#![no_main]

use ddm_update_operator::status::{DeviceStatus, StatusReport, merge};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(report) = StatusReport::from_slice(data) else {
        return;
    };
    let mut state = serde_json::Map::new();
    merge(&mut state, &report);
    merge(&mut state, &report);
    let _ = DeviceStatus::from_items(&state);
});
