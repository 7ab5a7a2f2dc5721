//! One policy, one device, outside a pass: what the enrollment gate asks of a device that is
//! not enrolled yet. Same rules as the pass, so the gate and the declarations never disagree.

use jiff::Timestamp;

use super::{Hand, Input, Reason, RingBook, RingDeadlines, candidate, policy_candidate};
use crate::api::validate::CheckedPolicy;
use crate::catalog::{AssetSet, Build, Catalog, DeviceOs, OsVersion, Query, Strategy};
use crate::inventory::Device;

/// A release a device is required to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Required {
    pub version: OsVersion,
    /// The exact build, where the version alone is ambiguous (several builds for the model, or
    /// a security improvement).
    pub build: Option<Build>,
}

/// What `policy` (in `ring`) takes `device` to, choosing from `asset_set`; or why nothing
/// (`Reason::UpToDate` when the device already runs it).
pub fn policy_target(
    catalog: &Catalog,
    policy: &CheckedPolicy,
    ring: usize,
    device: &Device,
    asset_set: AssetSet,
    now: Timestamp,
) -> Result<Required, (Reason, String)> {
    let device_id = device.catalog_device_id().ok_or_else(|| {
        (
            Reason::DeviceIdUnknown,
            "no software-update device id (board id) for this Mac".to_string(),
        )
    })?;
    let os = DeviceOs {
        device_id,
        version: &device.os_version,
        build: device.build_version.as_ref(),
    };
    let input = Input {
        groups: &[],
        policies: &[],
        targets: &[],
        devices: &[],
        catalog,
        now,
    };
    let today = catalog.expiry_day(now.to_zoned(jiff::tz::TimeZone::UTC).date());
    let ring = ring.min(policy.rings.len().saturating_sub(1));
    // As if handed out now: the gate answers before any deadline is handed to the device.
    let rings = RingDeadlines::new();
    let hand = Hand {
        policy_key: "",
        platform: device.platform,
        handed: None,
    };
    // Below the base of a security improvement the base comes first; the device asks again
    // after installing it.
    let chosen = policy_candidate(
        input,
        policy,
        asset_set,
        ring,
        os,
        today,
        &mut RingBook::new(&rings, now),
        hand,
    )?
    .first;
    Ok(Required {
        version: chosen.version,
        build: chosen.build,
    })
}

/// The lowest release of at least `minimum` the device can install directly now, from
/// `asset_set` (security improvements included when asked): the smallest step that meets a
/// literal minimum when the policy's own target does not.
pub fn lowest_at_least(
    catalog: &Catalog,
    device: &Device,
    asset_set: AssetSet,
    security_improvements: bool,
    minimum: &OsVersion,
    now: Timestamp,
) -> Option<Required> {
    let device_id = device.catalog_device_id()?;
    let os = DeviceOs {
        device_id,
        version: &device.os_version,
        build: device.build_version.as_ref(),
    };
    let query = Query {
        strategy: Strategy::Latest,
        asset_set,
        security_improvements,
        on: catalog.expiry_day(now.to_zoned(jiff::tz::TimeZone::UTC).date()),
    };
    // Newest first: the last one that still meets the minimum is the smallest step.
    let choice = catalog
        .candidates(os, &query)
        .into_iter()
        .rev()
        .find(|c| !c.two_step && c.release.version >= *minimum)?;
    let chosen = candidate(
        catalog,
        asset_set,
        os,
        choice,
        0,
        jiff::civil::DateTime::default(),
        None,
    );
    Some(Required {
        version: chosen.version,
        build: chosen.build,
    })
}
