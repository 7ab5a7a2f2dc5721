//! The sanity guard: decides whether a freshly fetched catalog may replace the last good one.
//! Apple has answered HTTP 200 with every set empty (2024-11-14, 2025-05-21); such an answer
//! must never withdraw anything.

use std::collections::BTreeMap;

use super::model::PmvDocument;

/// A platform's entry count in a set may not fall by more than this share at once.
pub const MAX_DROP_PERCENT: usize = 90;

/// Why a fetched catalog was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Suspicious {
    #[error("every set is empty (Apple has answered like this during outages)")]
    Empty,
    #[error(
        "{set}.{platform} fell from {before} to {after} entries (more than {MAX_DROP_PERCENT}% at once)"
    )]
    Collapsed {
        set: &'static str,
        platform: &'static str,
        before: usize,
        after: usize,
    },
}

/// Refuses a document with no entries at all.
pub fn check_not_empty(document: &PmvDocument) -> Result<(), Suspicious> {
    if document.entry_counts().iter().all(|(_, _, n)| *n == 0) {
        return Err(Suspicious::Empty);
    }
    Ok(())
}

/// Refuses `next` when it is empty, or when a platform's entry count in `AssetSets` or
/// `PublicAssetSets` falls by more than [`MAX_DROP_PERCENT`] against `previous`. Security
/// response sets are small and come and go, so they are not compared.
pub fn check_replacement(previous: &PmvDocument, next: &PmvDocument) -> Result<(), Suspicious> {
    check_not_empty(next)?;
    let counts = |d: &PmvDocument| -> BTreeMap<(&'static str, &'static str), usize> {
        let mut counts = BTreeMap::new();
        for (set, platform, n) in d.entry_counts() {
            if matches!(set, "AssetSets" | "PublicAssetSets") {
                // xrOS was renamed visionOS: count them as one platform.
                let platform = if platform == "xrOS" {
                    "visionOS"
                } else {
                    platform
                };
                *counts.entry((set, platform)).or_insert(0) += n;
            }
        }
        counts
    };
    let after = counts(next);
    for ((set, platform), before) in counts(previous) {
        let now = after.get(&(set, platform)).copied().unwrap_or(0);
        // Integer form of `now < before × (1 − 90%)`.
        if now * 100 < before * (100 - MAX_DROP_PERCENT) {
            return Err(Suspicious::Collapsed {
                set,
                platform,
                before,
                after: now,
            });
        }
    }
    Ok(())
}
