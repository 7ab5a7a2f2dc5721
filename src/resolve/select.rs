//! FleetGroup membership: which inventory devices each group selects.

use sha2::{Digest, Sha256};

use crate::api::validate::CheckedGroup;
use crate::inventory::Device;

/// Whether `group` selects `device`. Every criterion given must match; within a list any entry
/// may.
pub fn selects(group: &CheckedGroup, device: &Device) -> bool {
    if !group.platforms.is_empty() && !group.platforms.contains(&device.platform) {
        return false;
    }
    if !group.serial_numbers.is_empty()
        && !device
            .serial_number
            .as_ref()
            .is_some_and(|s| group.serial_numbers.iter().any(|g| g == s))
    {
        return false;
    }
    if !group.enrollment_ids.is_empty() && !group.enrollment_ids.contains(&device.enrollment_id) {
        return false;
    }
    if !group.models.is_empty() {
        let ids = [
            Some(device.model.as_str()),
            device.software_update_device_id.as_deref(),
        ];
        let matched = group
            .models
            .iter()
            .any(|pattern| ids.iter().flatten().any(|id| pattern.matches(id)));
        if !matched {
            return false;
        }
    }
    if group
        .min_version
        .as_ref()
        .is_some_and(|min| device.os_version < *min)
        || group
            .max_version
            .as_ref()
            .is_some_and(|max| device.os_version.base() > *max)
    {
        return false;
    }
    if !group
        .match_labels
        .iter()
        .all(|(k, v)| device.labels.get(k) == Some(v))
    {
        return false;
    }
    match &group.shard {
        Some((percent, seed)) => shard_bucket(seed, &device.enrollment_id) < u32::from(*percent),
        None => true,
    }
}

/// A stable bucket 0..100 for a device: a hash of the seed and the enrollment id, so a device
/// keeps its bucket as the fleet grows and shrinks.
pub fn shard_bucket(seed: &str, enrollment_id: &str) -> u32 {
    let digest = Sha256::new()
        .chain_update(seed.as_bytes())
        .chain_update([0u8])
        .chain_update(enrollment_id.as_bytes())
        .finalize();
    let head = u64::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ]);
    (head % 100) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_roughly_even() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("device-{i}")).collect();
        let in_slice = ids.iter().filter(|id| shard_bucket("", id) < 10).count();
        assert!(
            (800..1200).contains(&in_slice),
            "{in_slice} of 10000 in a 10% shard"
        );
        assert_eq!(shard_bucket("x", "a"), shard_bucket("x", "a"));
        // Different seeds take independent slices: two 50% slices overlap by about a quarter.
        let both = ids
            .iter()
            .filter(|id| shard_bucket("x", id) < 50 && shard_bucket("y", id) < 50)
            .count();
        assert!(
            (2_000..3_000).contains(&both),
            "{both} of 10000 in both halves"
        );
    }
}
