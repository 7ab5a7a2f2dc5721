//! Fuzzes the reading of NanoMDM's API replies (`/v1/enqueue`, `/v1/push`): whatever the
//! status and body, every asked id gets an outcome or the reply is an error; nothing panics.
#![no_main]

use ddm_update_operator::backend::nanomdm::{parse_enqueue, parse_push};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let status = [200, 207, 500, 401, 404, 502][usize::from(first) % 6];
    let ids = ["A".to_string(), "B".to_string(), "UDID:user".to_string()];
    if let Ok(outcomes) = parse_enqueue(status, body, &ids) {
        assert_eq!(outcomes.len(), ids.len());
    }
    if let Ok(outcomes) = parse_push(status, body, &ids) {
        assert_eq!(outcomes.len(), ids.len());
    }
});
