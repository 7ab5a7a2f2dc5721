//! The fleet the resolver sees: the inventory file's devices, what the MDM says about
//! enrollments (NanoMDM's webhook, the enrollment gate's MachineInfo) and what each device
//! itself reported over DDM. Every fact has a source and a time, and the newer one wins, so a
//! late or stale source never overwrites a fresher one. Devices the MDM says checked out are
//! left out: they are not resolved and get nothing.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::backend::DeviceRecord;
use crate::catalog::{Build, OsVersion, Platform};
use crate::inventory::{BootstrapToken, Device, EnrollmentType};
use crate::mdm::{Enrollment, Fact, MdmDevice, Source};
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

/// Where a merged fact came from and when it was true: what `devices show` tells of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Said {
    pub source: Source,
    pub at: Timestamp,
}

/// Where each of a merged device's facts came from (`None`: no source said it; supervision
/// then is `--assume-supervised`, the enrollment type a device enrollment).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    pub platform: Option<Said>,
    pub model: Option<Said>,
    pub software_update_device_id: Option<Said>,
    pub serial_number: Option<Said>,
    pub os_version: Option<Said>,
    pub supervised: Option<Said>,
    pub enrollment_type: Option<Said>,
    pub apple_silicon: Option<Said>,
    pub bootstrap_token_required: Option<Said>,
    pub bootstrap_token_escrowed: Option<Said>,
}

/// A candidate value and who said it when.
type Candidate<T> = Option<(T, Said)>;

/// The newest of the candidates (on a tie, the later one: inventory, then MDM, then report),
/// and who said it.
fn newest<T>(candidates: impl IntoIterator<Item = Candidate<T>>) -> Candidate<T> {
    let mut best: Candidate<T> = None;
    for (value, said) in candidates.into_iter().flatten() {
        if best.as_ref().is_none_or(|(_, best)| said.at >= best.at) {
            best = Some((value, said));
        }
    }
    best
}

fn as_of<T>(source: Source, at: Timestamp, value: Option<T>) -> Candidate<T> {
    value.map(|v| (v, Said { source, at }))
}

fn fact<T: Clone>(fact: &Option<Fact<T>>) -> Candidate<T> {
    fact.as_ref().map(|f| {
        (
            f.value.clone(),
            Said {
                source: f.source,
                at: f.at,
            },
        )
    })
}

/// Splits a candidate into its value and who said it.
fn split<T>(candidate: Candidate<T>, said: &mut Option<Said>) -> Option<T> {
    candidate.map(|(value, by)| {
        *said = Some(by);
        value
    })
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
    one_explained(id, sources, seed_at, assume_supervised).map(|(device, _)| device)
}

/// One enrollment merged from what each source says now, with where each fact came from:
/// what `devices show` explains. `None` while no source has said what it is and what it runs.
pub fn explain(
    id: &str,
    inventory: Option<&Device>,
    seed_at: Timestamp,
    mdm: Option<&MdmDevice>,
    record: Option<&DeviceRecord>,
    assume_supervised: bool,
) -> Option<(Device, Provenance)> {
    let sources = Sources {
        inventory,
        mdm,
        record,
    };
    one_explained(id, &sources, seed_at, assume_supervised)
}

fn one_explained(
    id: &str,
    sources: &Sources<'_>,
    seed_at: Timestamp,
    assume_supervised: bool,
) -> Option<(Device, Provenance)> {
    use Source::{DdmReport, Inventory, Mdm};
    let inventory = sources.inventory;
    let mdm = sources.mdm;
    let status = sources.record.map(|r| &r.status);
    let reported_at = sources
        .record
        .and_then(|r| r.last_report)
        .unwrap_or(Timestamp::MIN);
    let mut said = Provenance::default();

    // The OS version and build go together: a build belongs to the version it came with.
    let os = newest([
        as_of(
            Inventory,
            seed_at,
            inventory.map(|d| (d.os_version.clone(), d.build_version.clone())),
        ),
        mdm.and_then(|m| {
            let version = m.os_version.as_ref()?;
            let parsed: OsVersion = version.value.parse().ok()?;
            let build = m.build_version.as_ref().map(|b| Build::new(&b.value));
            Some((
                (parsed, build),
                Said {
                    source: version.source,
                    at: version.at,
                },
            ))
        }),
        as_of(
            DdmReport,
            reported_at,
            status.and_then(|s| {
                let version = reported_version(s)?;
                Some((version, s.build_version.as_deref().map(Build::new)))
            }),
        ),
    ]);
    let os = split(os, &mut said.os_version);
    let model = newest([
        as_of(Inventory, seed_at, inventory.map(|d| d.model.clone())),
        mdm.and_then(|m| fact(&m.model)),
        as_of(
            DdmReport,
            reported_at,
            status.and_then(|s| s.model_identifier.clone()),
        ),
    ]);
    let model = split(model, &mut said.model);
    let software_update_device_id = newest([
        as_of(
            Inventory,
            seed_at,
            inventory.and_then(|d| d.software_update_device_id.clone()),
        ),
        mdm.and_then(|m| fact(&m.software_update_device_id)),
        as_of(
            DdmReport,
            reported_at,
            status.and_then(|s| s.software_update_device_id.clone()),
        ),
    ]);
    let software_update_device_id = split(
        software_update_device_id,
        &mut said.software_update_device_id,
    );
    let serial_number = newest([
        as_of(
            Inventory,
            seed_at,
            inventory.and_then(|d| d.serial_number.clone()),
        ),
        mdm.and_then(|m| fact(&m.serial_number)),
        as_of(
            DdmReport,
            reported_at,
            status.and_then(|s| s.serial_number.clone()),
        ),
    ]);
    let serial_number = split(serial_number, &mut said.serial_number);
    let platform = match inventory {
        Some(device) => {
            said.platform = Some(Said {
                source: Inventory,
                at: seed_at,
            });
            device.platform
        }
        None => match status.and_then(reported_platform) {
            Some(platform) => {
                said.platform = Some(Said {
                    source: DdmReport,
                    at: reported_at,
                });
                platform
            }
            None => {
                said.platform = said.model;
                model.as_deref().and_then(model_platform)?
            }
        },
    };
    let (os_version, build_version) = os?;
    let supervised = match (mdm.and_then(|m| m.supervised.as_ref()), inventory) {
        (Some(fact), _) => {
            said.supervised = Some(Said {
                source: fact.source,
                at: fact.at,
            });
            fact.value
        }
        (None, Some(device)) => {
            said.supervised = Some(Said {
                source: Inventory,
                at: seed_at,
            });
            device.supervised
        }
        (None, None) => assume_supervised,
    };
    // NanoMDM tells a User Enrollment from a device enrollment, not ADE: the inventory's
    // `ade` stands unless the MDM says it is a User Enrollment.
    let from_mdm = mdm.map(|m| Said {
        source: Mdm,
        at: m.enrollment.at(),
    });
    let from_inventory = Some(Said {
        source: Inventory,
        at: seed_at,
    });
    let enrollment_type = match (mdm.and_then(|m| m.enrollment_type), inventory) {
        (Some(EnrollmentType::User), _) => {
            said.enrollment_type = from_mdm;
            EnrollmentType::User
        }
        (_, Some(device)) => {
            said.enrollment_type = from_inventory;
            device.enrollment_type
        }
        (Some(type_said), None) => {
            said.enrollment_type = from_mdm;
            type_said
        }
        (None, None) => EnrollmentType::Device,
    };
    let known = inventory.map(|d| d.bootstrap_token).unwrap_or_default();
    let bootstrap_token = BootstrapToken {
        apple_silicon: split(
            newest([
                as_of(Inventory, seed_at, known.apple_silicon),
                mdm.and_then(|m| fact(&m.apple_silicon)),
            ]),
            &mut said.apple_silicon,
        ),
        required: split(
            newest([
                as_of(Inventory, seed_at, known.required),
                mdm.and_then(|m| fact(&m.bootstrap_token_required)),
            ]),
            &mut said.bootstrap_token_required,
        ),
        escrowed: split(
            newest([
                as_of(Inventory, seed_at, known.escrowed),
                mdm.and_then(|m| fact(&m.bootstrap_token_escrowed)),
            ]),
            &mut said.bootstrap_token_escrowed,
        ),
    };
    let device = Device {
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
    };
    Some((device, said))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn inventory(text: &str) -> Vec<Device> {
        crate::inventory::parse(text).unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn enrolled(id: &str, since: &str) -> MdmDevice {
        MdmDevice::new(id, Enrollment::Enrolled { since: at(since) })
    }

    fn mdm_fact<T>(value: T, when: &str) -> Option<Fact<T>> {
        Some(Fact::new(value, Source::Mdm, at(when)))
    }

    fn reported(id: &str, when: &str, version: &str, board: Option<&str>) -> DeviceRecord {
        DeviceRecord {
            enrollment_id: id.into(),
            status: DeviceStatus {
                os_version: Some(version.into()),
                software_update_device_id: board.map(Into::into),
                ..DeviceStatus::default()
            },
            assigned: Vec::new(),
            last_report: Some(at(when)),
            assigned_at: None,
        }
    }

    const MAC: &str = "- {enrollmentId: M, platform: macOS, model: 'Mac14,2', osVersion: '14.5', supervised: true, enrollmentType: ade}\n";

    #[test]
    fn the_newer_fact_wins_whichever_source_said_it() {
        let seed = inventory(MAC);
        // The MDM (Authenticate, then MachineInfo's board id) after the file; a report before.
        let mut mdm = enrolled("M", "2026-03-02T00:00:00Z");
        mdm.os_version = mdm_fact("14.6".into(), "2026-03-02T00:00:00Z");
        mdm.software_update_device_id = Some(Fact::new(
            "J413AP".into(),
            Source::MachineInfo,
            at("2026-03-02T00:00:00Z"),
        ));
        let old_report = reported("M", "2026-02-01T00:00:00Z", "14.4", None);
        let file_at = at("2026-03-01T00:00:00Z");
        let merged = merge(
            &seed,
            file_at,
            std::slice::from_ref(&mdm),
            &[old_report],
            false,
        );
        let mac = &merged.devices[0];
        assert_eq!(mac.os_version.to_string(), "14.6");
        // macOS 14.4–14.x reports no board id over DDM: MachineInfo's stands.
        assert_eq!(mac.catalog_device_id(), Some("J413AP"));

        // A newer report wins over both; its missing board id takes nothing away.
        let new_report = reported("M", "2026-03-03T00:00:00Z", "15.0", None);
        let merged = merge(
            &seed,
            file_at,
            std::slice::from_ref(&mdm),
            &[new_report],
            false,
        );
        assert_eq!(merged.devices[0].os_version.to_string(), "15.0");
        assert_eq!(merged.devices[0].catalog_device_id(), Some("J413AP"));

        // The file edited after all of them: its facts win.
        let merged = merge(
            &seed,
            at("2026-03-04T00:00:00Z"),
            std::slice::from_ref(&mdm),
            &[reported("M", "2026-03-03T00:00:00Z", "15.0", None)],
            false,
        );
        assert_eq!(merged.devices[0].os_version.to_string(), "14.5");
        assert_eq!(merged.devices[0].catalog_device_id(), Some("J413AP"));
    }

    #[test]
    fn a_checked_out_device_is_left_out_and_one_the_mdm_alone_knows_is_resolved() {
        let seed = inventory(MAC);
        let gone = MdmDevice::new(
            "M",
            Enrollment::CheckedOut {
                at: at("2026-03-05T00:00:00Z"),
            },
        );
        // Known only from Authenticate: model (ProductName) and OS.
        let mut phone = enrolled("P", "2026-03-01T00:00:00Z");
        phone.model = mdm_fact("iPhone15,2".into(), "2026-03-01T00:00:00Z");
        phone.os_version = mdm_fact("18.6".into(), "2026-03-01T00:00:00Z");
        phone.build_version = mdm_fact("22G86".into(), "2026-03-01T00:00:00Z");
        // Nothing said about what it runs yet: not resolved.
        let silent = enrolled("S", "2026-03-01T00:00:00Z");
        let records = [reported("M", "2026-03-06T00:00:00Z", "15.0", None)];
        let merged = merge(
            &seed,
            at("2026-03-01T00:00:00Z"),
            &[gone, phone, silent],
            &records,
            true,
        );
        let ids: Vec<&str> = merged
            .devices
            .iter()
            .map(|d| d.enrollment_id.as_str())
            .collect();
        assert_eq!(ids, ["P"]);
        assert_eq!(
            merged.checked_out,
            [CheckedOut {
                enrollment_id: "M".into(),
                at: at("2026-03-05T00:00:00Z"),
            }]
        );
        let phone = &merged.devices[0];
        assert_eq!(phone.platform, Platform::Ios);
        assert_eq!(phone.model, "iPhone15,2");
        assert_eq!(phone.os_version.to_string(), "18.6");
        assert_eq!(phone.build_version, Some(Build::new("22G86")));
        assert_eq!(phone.catalog_device_id(), Some("iPhone15,2"));
    }

    #[test]
    fn the_mdm_says_whether_a_device_is_supervised_and_assume_supervised_only_fills_silence() {
        let phone = |id: &str, supervised: Option<bool>| {
            let mut device = enrolled(id, "2026-03-01T00:00:00Z");
            device.model = mdm_fact("iPhone15,2".into(), "2026-03-01T00:00:00Z");
            device.os_version = mdm_fact("18.6".into(), "2026-03-01T00:00:00Z");
            device.supervised = supervised.and_then(|s| mdm_fact(s, "2026-03-02T00:00:00Z"));
            device
        };
        // The inventory says supervised; the MDM (IsSupervised, older than the file) says not.
        let seed = inventory(
            "- {enrollmentId: I, platform: iOS, model: 'iPhone15,2', osVersion: '18.6', supervised: true, enrollmentType: ade}\n- {enrollmentId: J, platform: iOS, model: 'iPhone15,2', osVersion: '18.6', supervised: true}\n",
        );
        let mdm = [
            phone("I", Some(false)),
            phone("N", Some(false)),
            phone("Y", Some(true)),
            phone("U", None),
        ];
        let merged = merge(&seed, at("2026-03-09T00:00:00Z"), &mdm, &[], true);
        let supervised: Vec<(&str, bool)> = merged
            .devices
            .iter()
            .map(|d| (d.enrollment_id.as_str(), d.supervised))
            .collect();
        assert_eq!(
            supervised,
            [
                ("I", false),
                ("J", true),
                ("N", false),
                ("U", true),
                ("Y", true)
            ]
        );
        let without = merge(&seed, at("2026-03-09T00:00:00Z"), &mdm, &[], false);
        assert!(
            !without
                .devices
                .iter()
                .any(|d| d.enrollment_id == "U" && d.supervised)
        );
    }

    #[test]
    fn bootstrap_token_facts_merge_newest_first() {
        let seed = inventory(
            "- {enrollmentId: M, platform: macOS, model: 'Mac14,2', softwareUpdateDeviceId: J413AP, osVersion: '15.5', supervised: true, appleSilicon: true, bootstrapTokenEscrowed: false}\n",
        );
        let file_at = at("2026-03-01T00:00:00Z");
        let merged = merge(&seed, file_at, &[], &[], false);
        assert!(merged.devices[0].bootstrap_token.missing());
        // mdm.SetBootstrapToken after the file was written.
        let mut escrowed = enrolled("M", "2026-02-01T00:00:00Z");
        escrowed.bootstrap_token_escrowed = mdm_fact(true, "2026-03-02T00:00:00Z");
        let merged = merge(&seed, file_at, &[escrowed], &[], false);
        let token = merged.devices[0].bootstrap_token;
        assert_eq!(token.escrowed, Some(true));
        assert_eq!(token.apple_silicon, Some(true));
        assert!(!token.missing());
        // SecurityInfo alone (BootstrapTokenRequiredForSoftwareUpdate) says it needs one.
        let mut required = enrolled("R", "2026-03-01T00:00:00Z");
        required.model = mdm_fact("Mac15,3".into(), "2026-03-01T00:00:00Z");
        required.os_version = mdm_fact("15.5".into(), "2026-03-01T00:00:00Z");
        required.bootstrap_token_required = mdm_fact(true, "2026-03-01T00:00:00Z");
        let merged = merge(&[], file_at, &[required], &[], false);
        assert_eq!(merged.devices[0].platform, Platform::MacOs);
        assert!(merged.devices[0].bootstrap_token.missing());
    }
}
