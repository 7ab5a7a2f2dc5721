//! Fuzzes the command-report reader (an `mdm.Connect` event's `raw_payload`: XML or binary plist)
//! and applying its facts to a device, twice: the second time changes nothing. Nothing may panic.
#![no_main]

use ddm_update_operator::mdm::command_results::parse_report;
use ddm_update_operator::mdm::{Enrollment, MdmDevice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let at = jiff::Timestamp::UNIX_EPOCH;
    let mut device = MdmDevice::new("fuzz", Enrollment::Enrolled { since: at });
    if let Ok(Some(report)) = parse_report(data) {
        report.apply(&mut device, at);
        assert!(
            !report.apply(&mut device, at),
            "the same answer twice changes nothing"
        );
    }
});
