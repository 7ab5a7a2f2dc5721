//! The status items the operator subscribes to, with the OS version that introduced each (from
//! Apple's status schemas; the schema test checks this table against them).

use crate::catalog::{OsVersion, Platform};
use crate::inventory::{Device, EnrollmentType};

/// (item, [iOS, macOS, tvOS, visionOS, watchOS] introduced; `None` where unavailable).
type Availability = [Option<&'static str>; 5];

/// Every item the status pipeline reads.
pub const STATUS_ITEMS: &[(&str, Availability)] = &[
    (
        "device.identifier.serial-number",
        [
            Some("16.0"),
            Some("13.0"),
            Some("16.0"),
            Some("1.1"),
            Some("10.0"),
        ],
    ),
    (
        "device.model.family",
        [
            Some("15.0"),
            Some("13.0"),
            Some("16.0"),
            Some("1.1"),
            Some("10.0"),
        ],
    ),
    (
        "device.model.identifier",
        [
            Some("15.0"),
            Some("13.0"),
            Some("16.0"),
            Some("1.1"),
            Some("10.0"),
        ],
    ),
    (
        "device.model.marketing-name",
        [
            Some("15.0"),
            Some("13.0"),
            Some("16.0"),
            Some("1.1"),
            Some("10.0"),
        ],
    ),
    (
        "device.model.number",
        [
            Some("17.0"),
            Some("14.0"),
            Some("17.0"),
            Some("1.1"),
            Some("10.0"),
        ],
    ),
    (
        "device.operating-system.build-version",
        [
            Some("15.0"),
            Some("13.0"),
            Some("16.0"),
            Some("1.1"),
            Some("10.0"),
        ],
    ),
    (
        "device.operating-system.family",
        [
            Some("15.0"),
            Some("13.0"),
            Some("16.0"),
            Some("1.1"),
            Some("10.0"),
        ],
    ),
    (
        "device.operating-system.marketing-name",
        [
            Some("15.0"),
            Some("13.0"),
            Some("16.0"),
            Some("1.1"),
            Some("10.0"),
        ],
    ),
    (
        "device.operating-system.supplemental.build-version",
        [
            Some("16.1"),
            Some("13.0"),
            Some("16.1"),
            Some("1.1"),
            Some("10.0"),
        ],
    ),
    (
        "device.operating-system.supplemental.extra-version",
        [
            Some("16.1"),
            Some("13.0"),
            Some("16.1"),
            Some("1.1"),
            Some("10.0"),
        ],
    ),
    (
        "device.operating-system.version",
        [
            Some("15.0"),
            Some("13.0"),
            Some("16.0"),
            Some("1.1"),
            Some("10.0"),
        ],
    ),
    (
        "management.client-capabilities",
        [
            Some("15.0"),
            Some("13.0"),
            Some("16.0"),
            Some("1.1"),
            Some("10.0"),
        ],
    ),
    (
        "management.declarations",
        [
            Some("15.0"),
            Some("13.0"),
            Some("16.0"),
            Some("1.1"),
            Some("10.0"),
        ],
    ),
    (
        "softwareupdate.beta-enrollment",
        [Some("18.0"), Some("15.0"), None, None, None],
    ),
    (
        "softwareupdate.device-id",
        [Some("18.0"), Some("15.0"), Some("18.4"), Some("26.0"), None],
    ),
    (
        "softwareupdate.failure-reason",
        [Some("17.0"), Some("14.0"), Some("18.4"), Some("26.0"), None],
    ),
    (
        "softwareupdate.install-reason",
        [Some("17.0"), Some("14.0"), Some("18.4"), Some("26.0"), None],
    ),
    (
        "softwareupdate.install-state",
        [Some("17.0"), Some("14.0"), Some("18.4"), Some("26.0"), None],
    ),
    (
        "softwareupdate.pending-version",
        [Some("17.0"), Some("14.0"), None, None, None],
    ),
];

fn column(platform: Platform) -> usize {
    match platform {
        Platform::Ios | Platform::IpadOs => 0,
        Platform::MacOs => 1,
        Platform::TvOs | Platform::AudioOs => 2,
        Platform::VisionOs => 3,
        Platform::WatchOs => 4,
    }
}

/// The items a device on `platform` at `version` can report, in table order.
pub fn status_items_for(
    platform: Platform,
    version: &OsVersion,
) -> impl Iterator<Item = &'static str> {
    let base = version.base();
    STATUS_ITEMS.iter().filter_map(move |(name, availability)| {
        let introduced: OsVersion = availability[column(platform)]?.parse().ok()?;
        (base >= introduced).then_some(*name)
    })
}

/// The items this device may subscribe to: available on its OS and allowed for its enrollment.
/// Apple allows `softwareupdate.*` only on supervised or device enrollments (supervised on
/// macOS), and the serial number not on user enrollments.
pub fn status_items_for_device(device: &Device) -> impl Iterator<Item = &'static str> + '_ {
    let user = device.enrollment_type == EnrollmentType::User;
    let unsupervised_mac = device.platform == Platform::MacOs && !device.supervised;
    status_items_for(device.platform, &device.os_version).filter(move |name| {
        if name.starts_with("softwareupdate.") {
            !user && !unsupervised_mac
        } else if *name == "device.identifier.serial-number" {
            !user
        } else {
            true
        }
    })
}

/// Declarative Device Management itself: iOS/iPadOS 15, macOS 13, tvOS 16, visionOS 1.1,
/// watchOS 10. Older devices get no declarations at all.
pub fn ddm_supported(device: &Device) -> bool {
    let introduced = match device.platform {
        Platform::Ios | Platform::IpadOs => "15.0",
        Platform::MacOs => "13.0",
        Platform::TvOs | Platform::AudioOs => "16.0",
        Platform::VisionOs => "1.1",
        Platform::WatchOs => "10.0",
    };
    introduced
        .parse::<OsVersion>()
        .is_ok_and(|introduced| device.os_version.base() >= introduced)
}
