//! The status items the operator subscribes to, with the OS version that introduced each (from
//! Apple's status schemas; the schema test checks this table against them).

use crate::catalog::{OsVersion, Platform};

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
