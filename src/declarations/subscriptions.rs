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
        [Some("17.0"), Some("14.0"), Some("18.4"), Some("26.0"), None],
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

/// The table with versions parsed once (the resolver asks per device).
static PARSED: std::sync::LazyLock<Vec<[Option<OsVersion>; 5]>> = std::sync::LazyLock::new(|| {
    STATUS_ITEMS
        .iter()
        .map(|(_, availability)| availability.map(|v| v.and_then(|v| v.parse().ok())))
        .collect()
});

/// The items a device may subscribe to, as a bit per row of [`STATUS_ITEMS`]: a cheap key for
/// sharing one subscriptions declaration among devices. 0 when it may subscribe to none.
pub fn status_items_mask(device: &Device) -> u32 {
    let column = column(device.platform);
    let mut mask = 0u32;
    for (row, ((name, _), versions)) in STATUS_ITEMS.iter().zip(PARSED.iter()).enumerate() {
        let available = versions[column]
            .as_ref()
            .is_some_and(|v| device.os_version >= *v);
        if available && enrollment_allows(device, name) {
            mask |= 1 << row;
        }
    }
    mask
}

/// The items' `allowed-enrollments` in Apple's status schemas: a supervised device may
/// subscribe to every item; an unsupervised device enrollment only on iOS/iPadOS, tvOS and
/// visionOS (no macOS or watchOS item lists `device`); a user enrollment only on iOS/iPadOS,
/// macOS and visionOS, and never to the serial number or `softwareupdate.*`.
fn enrollment_allows(device: &Device, name: &str) -> bool {
    let platform = device.platform;
    if device.enrollment_type == EnrollmentType::User {
        return matches!(
            platform,
            Platform::Ios | Platform::IpadOs | Platform::MacOs | Platform::VisionOs
        ) && !name.starts_with("softwareupdate.")
            && name != "device.identifier.serial-number";
    }
    device.supervised
        || matches!(
            platform,
            Platform::Ios | Platform::IpadOs | Platform::TvOs | Platform::VisionOs
        )
}

/// The item names a mask stands for, in table order.
pub fn items_of_mask(mask: u32) -> impl Iterator<Item = &'static str> {
    STATUS_ITEMS
        .iter()
        .enumerate()
        .filter(move |(row, _)| mask & (1 << row) != 0)
        .map(|(_, (name, _))| *name)
}

/// The items a device on `platform` at `version` can report, in table order.
pub fn status_items_for(
    platform: Platform,
    version: &OsVersion,
) -> impl Iterator<Item = &'static str> {
    let column = column(platform);
    STATUS_ITEMS
        .iter()
        .zip(PARSED.iter())
        .filter(move |(_, versions)| versions[column].as_ref().is_some_and(|v| version >= v))
        .map(|((name, _), _)| *name)
}

/// The items this device may subscribe to: available on its OS and allowed for its enrollment.
pub fn status_items_for_device(device: &Device) -> impl Iterator<Item = &'static str> {
    items_of_mask(status_items_mask(device))
}

/// Declarative Device Management itself: iOS/iPadOS 15, macOS 13, tvOS 16, visionOS 1.1,
/// watchOS 10. Older devices get no declarations at all.
pub fn ddm_supported(device: &Device) -> bool {
    let introduced = match device.platform {
        Platform::Ios | Platform::IpadOs => (15, 0),
        Platform::MacOs => (13, 0),
        Platform::TvOs | Platform::AudioOs => (16, 0),
        Platform::VisionOs => (1, 1),
        Platform::WatchOs => (10, 0),
    };
    super::at_least(&device.os_version, introduced)
}
