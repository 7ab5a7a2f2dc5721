//! The fleet the resolver sees: the inventory file's devices, what the MDM says about
//! enrollments (NanoMDM's webhook, the enrollment gate's MachineInfo) and what each device
//! itself reported over DDM. Every fact has a source and a time, and the newer one wins, so a
//! late or stale source never overwrites a fresher one. Devices the MDM says checked out are
//! left out: they are not resolved and get nothing.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;

use crate::backend::DeviceRecord;
use crate::catalog::{Build, OsVersion, Platform};
use crate::inventory::{BootstrapToken, Device, EnrollmentType};
use crate::mdm::{Enrollment, Fact, MdmDevice};
use crate::status::DeviceStatus;

/// A device the MDM says left (`mdm.CheckOut`): not resolved, its set withdrawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckedOut {
    pub enrollment_id: String,
    pub at: Timestamp,
}

/// The devices to resolve, and those left out because they checked out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    /// Sorted by enrollment id.
    pub devices: Vec<Device>,
    /// Sorted by enrollment id.
    pub checked_out: Vec<CheckedOut>,
}

/// What each source says about one enrollment.
#[derive(Default)]
struct Sources<'a> {
    inventory: Option<&'a Device>,
    mdm: Option<&'a MdmDevice>,
    record: Option<&'a DeviceRecord>,
}

/// Merges the sources, one enrollment at a time. `seed_at` is when the inventory's facts were
/// true (the file's modification, at the latest its load); a DDM report's facts are as of its
/// `last_report`; the MDM's carry their own times. Supervision is the MDM's when it said
/// (`IsSupervised`: the device's own answer), else the inventory's, else `assume_supervised`
/// for a device only the MDM or its reports know.
pub fn merge(
    seed: &[Device],
    seed_at: Timestamp,
    mdm: &[MdmDevice],
    records: &[DeviceRecord],
    assume_supervised: bool,
) -> Merged {
    // Borrowed ids only: the merged device is the one copy made per device.
    let mut by_id: BTreeMap<&str, Sources<'_>> = BTreeMap::new();
    for device in seed {
        by_id.entry(&device.enrollment_id).or_default().inventory = Some(device);
    }
    for device in mdm {
        by_id.entry(&device.enrollment_id).or_default().mdm = Some(device);
    }
    for record in records {
        by_id.entry(&record.enrollment_id).or_default().record = Some(record);
    }
    let mut merged = Merged {
        devices: Vec::with_capacity(by_id.len()),
        checked_out: Vec::new(),
    };
    for (id, sources) in by_id {
        if let Some(MdmDevice {
            enrollment: Enrollment::CheckedOut { at },
            ..
        }) = sources.mdm
        {
            merged.checked_out.push(CheckedOut {
                enrollment_id: id.to_string(),
                at: *at,
            });
            continue;
        }
        if let Some(device) = one(id, &sources, seed_at, assume_supervised) {
            merged.devices.push(device);
        }
    }
    merged
}

/// The newest of the candidates (on a tie, the later one: inventory, then MDM, then report).
fn newest<T>(candidates: impl IntoIterator<Item = Option<(T, Timestamp)>>) -> Option<T> {
    let mut best: Option<(T, Timestamp)> = None;
    for (value, at) in candidates.into_iter().flatten() {
        if best.as_ref().is_none_or(|(_, best_at)| at >= *best_at) {
            best = Some((value, at));
        }
    }
    best.map(|(value, _)| value)
}

fn as_of<T>(at: Timestamp, value: Option<T>) -> Option<(T, Timestamp)> {
    value.map(|v| (v, at))
}

fn fact<T: Clone>(fact: &Option<Fact<T>>) -> Option<(T, Timestamp)> {
    fact.as_ref().map(|f| (f.value.clone(), f.at))
}

fn reported_version(status: &DeviceStatus) -> Option<OsVersion> {
    let version = status.os_version.as_deref()?;
    OsVersion::with_extra(version, status.supplemental_extra.as_deref())
        .or_else(|_| version.parse())
        .ok()
}

/// The platform from the model family (`iPad` runs iPadOS) or the OS family.
fn reported_platform(status: &DeviceStatus) -> Option<Platform> {
    match status.model_family.as_deref() {
        Some("iPad") => return Some(Platform::IpadOs),
        Some("iPhone" | "iPod") => return Some(Platform::Ios),
        Some("Mac") => return Some(Platform::MacOs),
        Some("AppleTV") => return Some(Platform::TvOs),
        Some("Watch") => return Some(Platform::WatchOs),
        Some("RealityDevice" | "Vision") => return Some(Platform::VisionOs),
        _ => {}
    }
    status.os_family.as_deref()?.parse().ok()
}

/// The platform from a model identifier (`ProductName`: `iPhone15,2`, `iPad14,1`, `Mac14,2`,
/// `MacBookPro18,3`, `AppleTV14,1`, `Watch7,3`, `RealityDevice14,1`).
fn model_platform(model: &str) -> Option<Platform> {
    let family = model.trim_end_matches(|c: char| c.is_ascii_digit() || c == ',');
    match family {
        "iPhone" | "iPod" => Some(Platform::Ios),
        "iPad" => Some(Platform::IpadOs),
        "Mac" | "MacBook" | "MacBookAir" | "MacBookPro" | "iMac" | "iMacPro" | "Macmini"
        | "MacPro" | "VirtualMac" => Some(Platform::MacOs),
        "AppleTV" => Some(Platform::TvOs),
        "Watch" => Some(Platform::WatchOs),
        "RealityDevice" => Some(Platform::VisionOs),
        _ => None,
    }
}

/// One enrollment's device, or `None` while no source has said what it is and what it runs.
fn one(
    id: &str,
    sources: &Sources<'_>,
    seed_at: Timestamp,
    assume_supervised: bool,
) -> Option<Device> {
    let inventory = sources.inventory;
    let mdm = sources.mdm;
    let status = sources.record.map(|r| &r.status);
    let reported_at = sources
        .record
        .and_then(|r| r.last_report)
        .unwrap_or(Timestamp::MIN);

    // The OS version and build go together: a build belongs to the version it came with.
    let os = newest([
        as_of(
            seed_at,
            inventory.map(|d| (d.os_version.clone(), d.build_version.clone())),
        ),
        mdm.and_then(|m| {
            let version = m.os_version.as_ref()?;
            let parsed: OsVersion = version.value.parse().ok()?;
            let build = m.build_version.as_ref().map(|b| Build::new(&b.value));
            Some(((parsed, build), version.at))
        }),
        as_of(
            reported_at,
            status.and_then(|s| {
                let version = reported_version(s)?;
                Some((version, s.build_version.as_deref().map(Build::new)))
            }),
        ),
    ]);
    let model = newest([
        as_of(seed_at, inventory.map(|d| d.model.clone())),
        mdm.and_then(|m| fact(&m.model)),
        as_of(reported_at, status.and_then(|s| s.model_identifier.clone())),
    ]);
    let software_update_device_id = newest([
        as_of(
            seed_at,
            inventory.and_then(|d| d.software_update_device_id.clone()),
        ),
        mdm.and_then(|m| fact(&m.software_update_device_id)),
        as_of(
            reported_at,
            status.and_then(|s| s.software_update_device_id.clone()),
        ),
    ]);
    let serial_number = newest([
        as_of(seed_at, inventory.and_then(|d| d.serial_number.clone())),
        mdm.and_then(|m| fact(&m.serial_number)),
        as_of(reported_at, status.and_then(|s| s.serial_number.clone())),
    ]);
    let platform = match inventory {
        Some(device) => device.platform,
        None => status
            .and_then(reported_platform)
            .or_else(|| model.as_deref().and_then(model_platform))?,
    };
    let (os_version, build_version) = os?;
    let supervised = match (mdm.and_then(|m| m.supervised.as_ref()), inventory) {
        (Some(said), _) => said.value,
        (None, Some(device)) => device.supervised,
        (None, None) => assume_supervised,
    };
    // NanoMDM tells a User Enrollment from a device enrollment, not ADE: the inventory's
    // `ade` stands unless the MDM says it is a User Enrollment.
    let enrollment_type = match (mdm.and_then(|m| m.enrollment_type), inventory) {
        (Some(EnrollmentType::User), _) => EnrollmentType::User,
        (_, Some(device)) => device.enrollment_type,
        (Some(said), None) => said,
        (None, None) => EnrollmentType::Device,
    };
    let known = inventory.map(|d| d.bootstrap_token).unwrap_or_default();
    let bootstrap_token = BootstrapToken {
        apple_silicon: newest([
            as_of(seed_at, known.apple_silicon),
            mdm.and_then(|m| fact(&m.apple_silicon)),
        ]),
        required: newest([
            as_of(seed_at, known.required),
            mdm.and_then(|m| fact(&m.bootstrap_token_required)),
        ]),
        escrowed: newest([
            as_of(seed_at, known.escrowed),
            mdm.and_then(|m| fact(&m.bootstrap_token_escrowed)),
        ]),
    };
    Some(Device {
        enrollment_id: id.to_string(),
        serial_number,
        platform,
        model: model?,
        software_update_device_id,
        os_version,
        build_version,
        supervised,
        enrollment_type,
        labels: inventory.map(|d| d.labels.clone()).unwrap_or_default(),
        bootstrap_token,
    })
}
