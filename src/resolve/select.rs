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

/// One criterion of a group, and whether and how a device meets it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Term {
    /// The field of `spec`, such as `platforms` or `matchLabels`.
    pub field: &'static str,
    pub matched: bool,
    /// What of the device was compared with what, such as `model Mac14,2 matches Mac14,*`.
    pub detail: String,
}

/// Every criterion `group` has, each with whether `device` meets it: why the group selects the
/// device or not. The device is selected exactly when every term matched (`selects`).
pub fn explain(group: &CheckedGroup, device: &Device) -> Vec<Term> {
    let mut terms = Vec::new();
    let mut term = |field: &'static str, matched: bool, detail: String| {
        terms.push(Term {
            field,
            matched,
            detail,
        });
    };
    if !group.platforms.is_empty() {
        let names: Vec<&str> = group.platforms.iter().map(|p| p.as_str()).collect();
        term(
            "platforms",
            group.platforms.contains(&device.platform),
            format!("platform {} in [{}]", device.platform, names.join(", ")),
        );
    }
    if !group.serial_numbers.is_empty() {
        let matched = device
            .serial_number
            .as_ref()
            .is_some_and(|s| group.serial_numbers.iter().any(|g| g == s));
        term(
            "serialNumbers",
            matched,
            match &device.serial_number {
                Some(serial) if matched => format!("serial number {serial} is listed"),
                Some(serial) => format!("serial number {serial} is not listed"),
                None => "no serial number known".to_string(),
            },
        );
    }
    if !group.enrollment_ids.is_empty() {
        let matched = group.enrollment_ids.contains(&device.enrollment_id);
        term(
            "enrollmentIds",
            matched,
            format!(
                "enrollment id {} is {}listed",
                device.enrollment_id,
                if matched { "" } else { "not " }
            ),
        );
    }
    if !group.models.is_empty() {
        let ids = [
            Some(device.model.as_str()),
            device.software_update_device_id.as_deref(),
        ];
        let hit = group.models.iter().find_map(|pattern| {
            ids.iter()
                .flatten()
                .find(|id| pattern.matches(id))
                .map(|id| format!("{id} matches {}", pattern.as_str()))
        });
        let patterns: Vec<&str> = group.models.iter().map(|p| p.as_str()).collect();
        term(
            "models",
            hit.is_some(),
            hit.unwrap_or_else(|| {
                format!(
                    "model {} matches none of [{}]",
                    device.model,
                    patterns.join(", ")
                )
            }),
        );
    }
    if let Some(min) = &group.min_version {
        term(
            "minVersion",
            device.os_version >= *min,
            format!("OS {} against minimum {min}", device.os_version),
        );
    }
    if let Some(max) = &group.max_version {
        term(
            "maxVersion",
            device.os_version.base() <= *max,
            format!("OS {} against maximum {max}", device.os_version),
        );
    }
    for (key, value) in &group.match_labels {
        let has = device.labels.get(key);
        term(
            "matchLabels",
            has == Some(value),
            match has {
                Some(has) => format!("label {key}={has}, wanted {value}"),
                None => format!("no label {key} (wanted {value})"),
            },
        );
    }
    if let Some((percent, seed)) = &group.shard {
        let bucket = shard_bucket(seed, &device.enrollment_id);
        term(
            "shard",
            bucket < u32::from(*percent),
            format!("bucket {bucket} of 100, the shard takes 0..{percent}"),
        );
    }
    terms
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
    fn explained_terms_agree_with_selection() {
        let checked = crate::test_support::checked(
            "apiVersion: updates.ddm.dev/v1alpha1\nkind: FleetGroup\nmetadata: {name: a, namespace: it}\nspec:\n  platforms: [macOS, iOS]\n  selector:\n    models: ['Mac14,*']\n    osVersion: {min: '14.0'}\n    matchLabels: {team: eng}\n  shard: {percent: 60, seed: s}\n",
        );
        let group = &checked.groups[0];
        let devices = crate::test_support::inventory(
            "- {enrollmentId: A, platform: macOS, model: 'Mac14,2', osVersion: '15.1', labels: {team: eng}}\n- {enrollmentId: B, platform: macOS, model: 'Mac13,1', osVersion: '15.1', labels: {team: eng}}\n- {enrollmentId: C, platform: iOS, model: 'iPhone15,2', osVersion: '18.1'}\n- {enrollmentId: D, platform: macOS, model: 'Mac14,3', osVersion: '13.6', labels: {team: ops}}\n- {enrollmentId: E, platform: macOS, model: 'Mac14,7', osVersion: '15.0', labels: {team: eng}}\n- {enrollmentId: F, platform: macOS, model: 'Mac14,9', osVersion: '15.0', labels: {team: eng}}\n",
        );
        let mut selected = 0;
        for device in &devices {
            let terms = explain(group, device);
            assert_eq!(terms.len(), 5, "{terms:?}");
            assert_eq!(
                terms.iter().all(|t| t.matched),
                selects(group, device),
                "{}: {terms:?}",
                device.enrollment_id
            );
            selected += usize::from(selects(group, device));
        }
        assert!(selected >= 1, "the test selects someone");
        let b = explain(group, &devices[1]);
        assert!(
            b.iter()
                .any(|t| t.field == "models" && !t.matched && t.detail.contains("Mac13,1"))
        );
    }

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
