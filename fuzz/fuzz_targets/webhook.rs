//! Fuzzes NanoMDM's webhook event parser and what an accepted event feeds: the JSON envelope,
//! base64 `raw_payload`, the plist read within its budgets, and applying the event to a device
//! (twice, and onto a device it created). The raw bytes are also read as a plist payload alone,
//! so the plist reader gets fuzzed without the JSON around it. Nothing may panic.
#![no_main]

use ddm_update_operator::mdm::MdmDevice;
use ddm_update_operator::mdm::webhook::{Parsed, parse, read_dictionary};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = read_dictionary(data);
    let Ok(Parsed::Event(event)) = parse(data) else {
        return;
    };
    let mut device = MdmDevice::from_event(&event);
    device.apply(&event);
    assert!(!device.apply(&event), "an event applied twice changes nothing the second time");
    let _ = serde_json::to_vec(&device);
});
