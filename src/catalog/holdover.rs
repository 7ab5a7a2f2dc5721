//! The finer catalog guard: a release that Apple's last accepted answer listed for a device and
//! a new answer no longer lists is kept for that device for a grace period, alerted on, and only
//! dropped after it. The coarse guard (`super::guard`) refuses empty answers and >90% drops; this
//! covers what it lets through — a model vanishing from an answer, an 89% drop — which would
//! otherwise withdraw those devices' enforcements at once.
//!
//! Pure: the previous answer, what is held (with the time each hold began), the new answer and
//! the clock go in; the effective document (the new answer plus what is held) and the new holds
//! come out. `operator::load_catalog` persists the holds next to the cached catalog.

use std::collections::{BTreeMap, HashSet};

use jiff::civil::Date;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::model::{PlatformSets, PmvDocument, PmvEntry};

/// How long a vanished release is kept for its devices (`--catalog-grace`).
pub const DEFAULT_GRACE: SignedDuration = SignedDuration::from_hours(14 * 24);

/// A release Apple's answer no longer lists for some devices, and since when for each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldRelease {
    /// `AssetSets`, `PublicAssetSets`, `PublicRapidSecurityResponses` or
    /// `PublicBackgroundSecurityImprovements`.
    pub set: String,
    /// The pmv platform key (`iOS`, `macOS`, `visionOS`).
    pub platform: String,
    pub product_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_version_extra: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prerequisite_build: Option<String>,
    pub posting_date: Date,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_date: Option<Date>,
    /// Device id → when Apple's answer stopped listing this release for it.
    pub devices: BTreeMap<String, Timestamp>,
}

/// A hold whose grace period ended: the release is gone for these devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DroppedRelease {
    pub set: String,
    pub platform: String,
    pub product_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    pub devices: Vec<String>,
    /// When the first of them vanished, and when the grace period ended.
    pub since: Timestamp,
    pub dropped_at: Timestamp,
}

/// What is held, persisted as `held.json` next to the cached catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holds {
    #[serde(default)]
    pub held: Vec<HeldRelease>,
    /// Drops of the last grace period, for the status (forgotten one grace period later).
    #[serde(default)]
    pub dropped: Vec<DroppedRelease>,
}

impl Holds {
    /// Held releases per device id, for the metric.
    pub fn per_device(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for release in &self.held {
            for device in release.devices.keys() {
                *counts.entry(device.clone()).or_insert(0) += 1;
            }
        }
        counts
    }
}

/// The effective catalog document and the new holds.
#[derive(Debug)]
pub struct CarriedOver {
    pub document: PmvDocument,
    pub holds: Holds,
    /// (release, device) pairs newly held by this call, for the warning log.
    pub newly_held: Vec<(String, String)>,
}

/// What identifies a release for one device across answers.
type Key = (String, String, String, String);

fn release_id(entry: &PmvEntry) -> String {
    match &entry.build {
        Some(build) => build.clone(),
        None => format!(
            "{} {}",
            entry.product_version,
            entry.product_version_extra.as_deref().unwrap_or_default()
        ),
    }
}

fn held_id(release: &HeldRelease) -> String {
    match &release.build {
        Some(build) => build.clone(),
        None => format!(
            "{} {}",
            release.product_version,
            release.product_version_extra.as_deref().unwrap_or_default()
        ),
    }
}

/// `xrOS` is visionOS' former key: one platform for holding.
fn platform_key(key: &str) -> &str {
    if key == "xrOS" { "visionOS" } else { key }
}

fn entries(
    document: &PmvDocument,
) -> impl Iterator<Item = (&'static str, &'static str, &PmvEntry)> {
    document.sets().into_iter().flat_map(|(set, sets)| {
        sets.into_iter().flat_map(move |sets| {
            sets.platforms()
                .flat_map(move |(platform, list)| list.iter().map(move |e| (set, platform, e)))
        })
    })
}

/// Carries over what `previous` (the last accepted answer) and `holds` list and `next` (the new
/// answer, or the same one again) does not, for `grace` from when each vanished, as of `now`.
pub fn carry_over(
    previous: &PmvDocument,
    holds: &Holds,
    next: &PmvDocument,
    now: Timestamp,
    grace: SignedDuration,
) -> CarriedOver {
    let mut listed: HashSet<Key> = HashSet::new();
    for (set, platform, entry) in entries(next) {
        for device in &entry.supported_devices {
            listed.insert((
                set.to_string(),
                platform_key(platform).to_string(),
                release_id(entry),
                device.trim().to_string(),
            ));
        }
    }
    let key = |set: &str, platform: &str, id: String, device: &str| {
        (
            set.to_string(),
            platform_key(platform).to_string(),
            id,
            device.to_string(),
        )
    };
    // Candidates: what was held, then what the previous answer listed (a hold keeps its start).
    let mut candidates: BTreeMap<(String, String, String), HeldRelease> = BTreeMap::new();
    for release in &holds.held {
        let slot = (
            release.set.clone(),
            platform_key(&release.platform).to_string(),
            held_id(release),
        );
        let entry = candidates.entry(slot).or_insert_with(|| HeldRelease {
            devices: BTreeMap::new(),
            ..release.clone()
        });
        for (device, since) in &release.devices {
            entry.devices.entry(device.clone()).or_insert(*since);
        }
    }
    let mut newly_held = Vec::new();
    for (set, platform, entry) in entries(previous) {
        let id = release_id(entry);
        for device in &entry.supported_devices {
            let device = device.trim();
            if device.is_empty() || listed.contains(&key(set, platform, id.clone(), device)) {
                continue;
            }
            let slot = (
                set.to_string(),
                platform_key(platform).to_string(),
                id.clone(),
            );
            let release = candidates.entry(slot).or_insert_with(|| HeldRelease {
                set: set.to_string(),
                platform: platform_key(platform).to_string(),
                product_version: entry.product_version.clone(),
                product_version_extra: entry.product_version_extra.clone(),
                build: entry.build.clone(),
                prerequisite_build: entry.prerequisite_build.clone(),
                posting_date: entry.posting_date,
                expiration_date: entry.expiration_date,
                devices: BTreeMap::new(),
            });
            if !release.devices.contains_key(device) {
                release.devices.insert(device.to_string(), now);
                newly_held.push((
                    format!("{set}.{platform} {} ({id})", entry.product_version),
                    device.to_string(),
                ));
            }
        }
    }

    let mut held = Vec::new();
    // Earlier drops stay shown for one more grace period.
    let mut dropped: Vec<DroppedRelease> = holds
        .dropped
        .iter()
        .filter(|d| now.duration_since(d.dropped_at) <= grace)
        .cloned()
        .collect();
    for ((set, platform, id), mut release) in candidates {
        // Listed again: no longer held.
        release
            .devices
            .retain(|device, _| !listed.contains(&key(&set, &platform, id.clone(), device)));
        let (keep, expired): (BTreeMap<_, _>, BTreeMap<_, _>) = release
            .devices
            .iter()
            .map(|(d, s)| (d.clone(), *s))
            .partition(|(_, since)| now.duration_since(*since) <= grace);
        if let Some(since) = expired.values().min() {
            dropped.push(DroppedRelease {
                set: set.clone(),
                platform: platform.clone(),
                product_version: release.product_version.clone(),
                build: release.build.clone(),
                devices: expired.keys().cloned().collect(),
                since: *since,
                dropped_at: now,
            });
        }
        if !keep.is_empty() {
            release.devices = keep;
            held.push(release);
        }
    }

    let mut document = next.clone();
    for release in &held {
        append(&mut document, release);
    }
    CarriedOver {
        document,
        holds: Holds { held, dropped },
        newly_held,
    }
}

/// Adds a held release to the document as an entry of its own, listing only its held devices
/// (the index merges it with any entry of the same build).
fn append(document: &mut PmvDocument, release: &HeldRelease) {
    let sets = match release.set.as_str() {
        "AssetSets" => &mut document.asset_sets,
        "PublicAssetSets" => &mut document.public_asset_sets,
        "PublicRapidSecurityResponses" => &mut document.public_rapid_security_responses,
        "PublicBackgroundSecurityImprovements" => {
            &mut document.public_background_security_improvements
        }
        _ => return,
    };
    let sets = sets.get_or_insert_with(PlatformSets::default);
    let list = match release.platform.as_str() {
        "iOS" => &mut sets.ios,
        "macOS" => &mut sets.macos,
        "visionOS" => &mut sets.visionos,
        _ => return,
    };
    list.get_or_insert_with(Vec::new).push(PmvEntry {
        product_version: release.product_version.clone(),
        product_version_extra: release.product_version_extra.clone(),
        build: release.build.clone(),
        prerequisite_build: release.prerequisite_build.clone(),
        posting_date: release.posting_date,
        expiration_date: release.expiration_date,
        supported_devices: release.devices.keys().cloned().collect(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::catalog::guard::check_replacement;
    use crate::resolve::{Input, resolve};
    use crate::test_support::{checked, inventory};

    const SNAPSHOT: &[u8] = include_bytes!("../../tests/fixtures/gdmf/pmv-2026-08-22.json");

    const POLICY: &str = include_str!("../../tests/fixtures/manifests/phones-latest.yaml");

    /// Apple's answer with `device` taken out of every entry (entries left with no device go).
    fn without(document: &PmvDocument, device: &str) -> PmvDocument {
        let mut next = document.clone();
        for sets in [
            &mut next.asset_sets,
            &mut next.public_asset_sets,
            &mut next.public_rapid_security_responses,
            &mut next.public_background_security_improvements,
        ]
        .into_iter()
        .flatten()
        {
            for list in [
                &mut sets.ios,
                &mut sets.macos,
                &mut sets.visionos,
                &mut sets.xros,
            ]
            .into_iter()
            .flatten()
            {
                for entry in list.iter_mut() {
                    entry.supported_devices.retain(|d| d != device);
                }
                list.retain(|e| !e.supported_devices.is_empty());
            }
        }
        next
    }

    /// The enforcements the `latest` policy gives an iPhone 14 Pro on 26.5 under `document`.
    fn enforced(document: &PmvDocument, now: Timestamp) -> Vec<String> {
        let resources = checked(POLICY);
        let devices = inventory(
            r#"
devices:
  - enrollmentId: phone
    platform: iOS
    model: iPhone15,2
    osVersion: "26.5"
    buildVersion: 23F77
    supervised: true
"#,
        );
        let catalog = Catalog::from_document(document).with_as_of(crate::catalog::utc_date(now));
        let plan = resolve(Input {
            groups: &resources.groups,
            policies: &resources.policies,
            targets: &resources.targets,
            devices: &devices,
            catalog: &catalog,
            now,
        });
        plan.devices[0]
            .enforcements
            .iter()
            .map(|e| e.version.to_string())
            .collect()
    }

    fn day(n: i64) -> Timestamp {
        let start: Timestamp = "2026-08-22T19:00:00Z".parse().expect("time");
        start
            .checked_add(SignedDuration::from_hours(24 * n))
            .expect("in range")
    }

    #[test]
    fn a_model_vanishing_keeps_its_enforcement_through_the_grace_period_only() {
        let full = PmvDocument::from_slice(SNAPSHOT).expect("snapshot");
        let vanished = without(&full, "iPhone15,2");
        // The coarse guard lets this answer through: one model of hundreds.
        assert_eq!(check_replacement(&full, &vanished), Ok(()));
        let before = enforced(&full, day(0));
        assert_eq!(before, ["26.6.1"], "enforced on the full answer");
        assert!(
            enforced(&vanished, day(0)).is_empty(),
            "the raw answer withdraws it"
        );

        let first = carry_over(&full, &Holds::default(), &vanished, day(0), DEFAULT_GRACE);
        assert_eq!(enforced(&first.document, day(0)), before);
        assert!(first.newly_held.iter().all(|(_, d)| d == "iPhone15,2"));
        assert!(!first.newly_held.is_empty());
        assert_eq!(first.holds.per_device().len(), 1);
        // Persisted and read back (a restart), then the same answer fetched again, 13 days on.
        let json = serde_json::to_vec(&first.holds).expect("JSON");
        let restored: Holds = serde_json::from_slice(&json).expect("reads back");
        assert_eq!(restored, first.holds);
        let later = carry_over(&vanished, &restored, &vanished, day(13), DEFAULT_GRACE);
        assert_eq!(enforced(&later.document, day(13)), before, "day 13");
        assert!(later.newly_held.is_empty(), "the hold keeps its start");
        assert!(later.holds.dropped.is_empty());
        // Past 14 days: dropped, and the status says so.
        let after = carry_over(&vanished, &later.holds, &vanished, day(15), DEFAULT_GRACE);
        assert!(enforced(&after.document, day(15)).is_empty(), "day 15");
        assert!(after.holds.held.is_empty());
        assert!(
            after
                .holds
                .dropped
                .iter()
                .any(|d| d.devices == ["iPhone15,2"] && d.since == day(0))
        );
        // Shown for one more grace period, then forgotten.
        let much_later = carry_over(&vanished, &after.holds, &vanished, day(30), DEFAULT_GRACE);
        assert!(much_later.holds.dropped.is_empty());
    }

    #[test]
    fn an_89_percent_drop_is_held_and_a_release_listed_again_is_no_longer_held() {
        let full = PmvDocument::from_slice(SNAPSHOT).expect("snapshot");
        // Keep about one entry in nine of every iOS list.
        let mut dropped = full.clone();
        for sets in [&mut dropped.asset_sets, &mut dropped.public_asset_sets]
            .into_iter()
            .flatten()
        {
            if let Some(list) = &mut sets.ios {
                let keep = list.len().div_ceil(9);
                list.truncate(keep);
            }
        }
        assert_eq!(
            check_replacement(&full, &dropped),
            Ok(()),
            "under 90%: let through"
        );
        let before = enforced(&full, day(0));
        assert_ne!(
            enforced(&dropped, day(0)),
            before,
            "the raw answer withdraws it"
        );
        let held = carry_over(&full, &Holds::default(), &dropped, day(0), DEFAULT_GRACE);
        assert_eq!(enforced(&held.document, day(0)), before);
        let full_catalog = Catalog::from_document(&full);
        let held_catalog = Catalog::from_document(&held.document);
        for (device, _) in full_catalog.device_ids() {
            assert!(held_catalog.knows_device(device), "{device}");
        }
        // Apple lists everything again: nothing held, the document is Apple's.
        let back = carry_over(&dropped, &held.holds, &full, day(1), DEFAULT_GRACE);
        assert!(back.holds.held.is_empty());
        assert!(back.holds.dropped.is_empty());
        assert_eq!(back.document.entry_counts(), full.entry_counts());
    }
}
