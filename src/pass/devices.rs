//! The fleet the resolver sees in standalone mode: the inventory file's devices, updated by what
//! each device itself reported (model, OS, board id), plus devices known only from reports.

use std::collections::BTreeMap;

use crate::backend::DeviceRecord;
use crate::catalog::{Build, OsVersion, Platform};
use crate::inventory::{Device, EnrollmentType};
use crate::status::DeviceStatus;

/// Reported facts win over the inventory file (they are newer); the file supplies what DDM does
/// not report (supervision, enrollment type, labels).
pub fn merge(seed: &[Device], records: &[DeviceRecord], assume_supervised: bool) -> Vec<Device> {
    let mut devices: BTreeMap<String, Device> = seed
        .iter()
        .map(|d| (d.enrollment_id.clone(), d.clone()))
        .collect();
    for record in records {
        let status = &record.status;
        match devices.get_mut(&record.enrollment_id) {
            Some(device) => update(device, status),
            None => {
                if let Some(device) = learned(&record.enrollment_id, status, assume_supervised) {
                    devices.insert(record.enrollment_id.clone(), device);
                }
            }
        }
    }
    devices.into_values().collect()
}

fn version(status: &DeviceStatus) -> Option<OsVersion> {
    let version = status.os_version.as_deref()?;
    OsVersion::with_extra(version, status.supplemental_extra.as_deref())
        .or_else(|_| version.parse())
        .ok()
}

fn update(device: &mut Device, status: &DeviceStatus) {
    if let Some(version) = version(status) {
        device.os_version = version;
        device.build_version = status.build_version.as_deref().map(Build::new);
    }
    if let Some(model) = &status.model_identifier {
        device.model = model.clone();
    }
    if let Some(id) = &status.software_update_device_id {
        device.software_update_device_id = Some(id.clone());
    }
    if device.serial_number.is_none() {
        device.serial_number = status.serial_number.clone();
    }
}

/// The platform from the model family (`iPad` runs iPadOS) or the OS family.
fn platform(status: &DeviceStatus) -> Option<Platform> {
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

/// A device known only from its reports; `None` until it has said what it is and runs.
fn learned(enrollment_id: &str, status: &DeviceStatus, assume_supervised: bool) -> Option<Device> {
    Some(Device {
        enrollment_id: enrollment_id.to_string(),
        serial_number: status.serial_number.clone(),
        platform: platform(status)?,
        model: status.model_identifier.clone()?,
        software_update_device_id: status.software_update_device_id.clone(),
        os_version: version(status)?,
        build_version: status.build_version.as_deref().map(Build::new),
        supervised: assume_supervised,
        enrollment_type: EnrollmentType::Device,
        labels: BTreeMap::new(),
    })
}
