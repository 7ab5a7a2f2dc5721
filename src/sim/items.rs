//! What a simulated device supports, per Apple's schemas: status items and declaration types
//! with the OS version that introduced them (`payload.supportedOS` of each YAML file under
//! `declarative/status/` and `declarative/declarations/`), and the names devices report.

use crate::catalog::{OsVersion, Platform};

/// Apple's schemas name five operating systems; iPadOS is `iOS` there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SchemaOs {
    Ios,
    MacOs,
    TvOs,
    VisionOs,
    WatchOs,
}

impl SchemaOs {
    pub(crate) fn of(platform: Platform) -> Self {
        match platform {
            Platform::Ios | Platform::IpadOs => SchemaOs::Ios,
            Platform::MacOs => SchemaOs::MacOs,
            Platform::TvOs | Platform::AudioOs => SchemaOs::TvOs,
            Platform::VisionOs => SchemaOs::VisionOs,
            Platform::WatchOs => SchemaOs::WatchOs,
        }
    }

    fn column(self) -> usize {
        match self {
            SchemaOs::Ios => 0,
            SchemaOs::MacOs => 1,
            SchemaOs::TvOs => 2,
            SchemaOs::VisionOs => 3,
            SchemaOs::WatchOs => 4,
        }
    }
}

/// Introduced per [iOS, macOS, tvOS, visionOS, watchOS]; `None` is `n/a`.
type Introduced = [Option<&'static str>; 5];

/// One status item or declaration type the simulator knows.
struct Support {
    name: &'static str,
    introduced: Introduced,
    /// macOS lists only `supervised` in `allowed-enrollments` (device-channel items that list
    /// `supervised, local` count as available on a device channel).
    mac_needs_supervision: bool,
}

const fn item(name: &'static str, introduced: Introduced, mac_needs_supervision: bool) -> Support {
    Support {
        name,
        introduced,
        mac_needs_supervision,
    }
}

const SOFTWARE_UPDATE: Introduced = [Some("17.0"), Some("14.0"), Some("18.4"), Some("26.0"), None];
const DEVICE_15: Introduced = [
    Some("15.0"),
    Some("13.0"),
    Some("16.0"),
    Some("1.1"),
    Some("10.0"),
];
const DEVICE_16: Introduced = [
    Some("16.0"),
    Some("13.0"),
    Some("16.0"),
    Some("1.1"),
    Some("10.0"),
];
const SUPPLEMENTAL: Introduced = [
    Some("16.1"),
    Some("13.0"),
    Some("16.1"),
    Some("1.1"),
    Some("10.0"),
];

/// The status items the simulator can report, from `declarative/status/*.yaml`.
const STATUS_ITEMS: &[Support] = &[
    item("device.identifier.serial-number", DEVICE_16, false),
    item("device.identifier.udid", DEVICE_16, false),
    item("device.model.family", DEVICE_15, false),
    item("device.model.identifier", DEVICE_15, false),
    item("device.model.marketing-name", DEVICE_15, false),
    item("device.operating-system.build-version", DEVICE_15, false),
    item("device.operating-system.family", DEVICE_15, false),
    item("device.operating-system.marketing-name", DEVICE_15, false),
    item(
        "device.operating-system.supplemental.build-version",
        SUPPLEMENTAL,
        false,
    ),
    item(
        "device.operating-system.supplemental.extra-version",
        SUPPLEMENTAL,
        false,
    ),
    item("device.operating-system.version", DEVICE_15, false),
    item("management.client-capabilities", DEVICE_15, false),
    item("management.declarations", DEVICE_15, false),
    item(
        "softwareupdate.beta-enrollment",
        [Some("18.0"), Some("15.0"), None, None, None],
        true,
    ),
    item(
        "softwareupdate.device-id",
        [Some("18.0"), Some("15.0"), Some("18.4"), Some("26.0"), None],
        true,
    ),
    item("softwareupdate.failure-reason", SOFTWARE_UPDATE, true),
    item("softwareupdate.install-reason", SOFTWARE_UPDATE, true),
    item("softwareupdate.install-state", SOFTWARE_UPDATE, true),
    item("softwareupdate.pending-version", SOFTWARE_UPDATE, true),
];

/// Reported with no subscription: `management.client-capabilities` (its schema says so) and
/// `management.declarations` (captured reports carry it without any subscription).
pub(crate) const IMPLICIT_ITEMS: [&str; 2] =
    ["management.client-capabilities", "management.declarations"];

/// The `device.*` items a real macOS 13 device sent in its first report with no subscription
/// (kmfddm's `status.1st.json`); sent only with `report_unsubscribed_device_items`.
pub(crate) const BASELINE_DEVICE_ITEMS: [&str; 7] = [
    "device.identifier.serial-number",
    "device.identifier.udid",
    "device.model.family",
    "device.operating-system.build-version",
    "device.operating-system.family",
    "device.operating-system.supplemental.extra-version",
    "device.operating-system.version",
];

pub(crate) const ACTIVATION_SIMPLE: &str = "com.apple.activation.simple";
pub(crate) const ENFORCEMENT: &str = "com.apple.configuration.softwareupdate.enforcement.specific";
pub(crate) const SETTINGS: &str = "com.apple.configuration.softwareupdate.settings";
pub(crate) const SUBSCRIPTIONS: &str = "com.apple.configuration.management.status-subscriptions";

/// Configuration types, from `declarative/declarations/configurations/*.yaml` (the others a
/// real device lists in its capabilities are carried without effect).
const CONFIGURATIONS: &[Support] = &[
    item(SUBSCRIPTIONS, DEVICE_15, false),
    item(ENFORCEMENT, SOFTWARE_UPDATE, true),
    item(
        SETTINGS,
        [Some("18.0"), Some("15.0"), None, None, None],
        true,
    ),
    item("com.apple.configuration.management.test", DEVICE_15, false),
    item(
        "com.apple.configuration.legacy",
        [Some("15.0"), Some("13.0"), Some("16.0"), Some("1.1"), None],
        false,
    ),
    item(
        "com.apple.configuration.legacy.interactive",
        [None, Some("13.0"), None, None, None],
        false,
    ),
    item(
        "com.apple.configuration.passcode.settings",
        [Some("15.0"), Some("13.0"), None, Some("1.1"), Some("10.0")],
        false,
    ),
];

const ACTIVATIONS: &[Support] = &[item(ACTIVATION_SIMPLE, DEVICE_15, false)];

const MANAGEMENT: &[Support] = &[
    item("com.apple.management.organization-info", DEVICE_15, false),
    item(
        "com.apple.management.properties",
        [
            Some("16.0"),
            Some("13.0"),
            Some("16.0"),
            Some("1.1"),
            Some("10.0"),
        ],
        false,
    ),
    item("com.apple.management.server-capabilities", DEVICE_15, false),
];

const ASSETS: &[Support] = &[item(
    "com.apple.asset.data",
    [
        Some("17.0"),
        Some("14.0"),
        Some("17.0"),
        Some("1.1"),
        Some("10.0"),
    ],
    false,
)];

/// What decides availability: platform, running OS (without supplemental) and supervision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub platform: Platform,
    pub version: &'a OsVersion,
    pub supervised: bool,
}

impl Support {
    fn available(&self, target: Target<'_>) -> bool {
        let os = SchemaOs::of(target.platform);
        if target.platform == Platform::AudioOs {
            return false;
        }
        if os == SchemaOs::MacOs && self.mac_needs_supervision && !target.supervised {
            return false;
        }
        let Some(introduced) = self.introduced[os.column()] else {
            return false;
        };
        introduced
            .parse::<OsVersion>()
            .is_ok_and(|introduced| target.version.base() >= introduced)
    }
}

fn names(table: &'static [Support], target: Target<'_>) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = table
        .iter()
        .filter(|s| s.available(target))
        .map(|s| s.name)
        .collect();
    names.sort_unstable();
    names
}

/// The status items this device can report.
pub(crate) fn status_item_available(name: &str, target: Target<'_>) -> bool {
    STATUS_ITEMS
        .iter()
        .any(|s| s.name == name && s.available(target))
}

/// Whether the device supports a declaration type (of any category).
pub(crate) fn declaration_type_supported(declaration_type: &str, target: Target<'_>) -> bool {
    [CONFIGURATIONS, ACTIVATIONS, MANAGEMENT, ASSETS]
        .iter()
        .flat_map(|table| table.iter())
        .any(|s| s.name == declaration_type && s.available(target))
}

/// `management.client-capabilities` as the device reports it.
pub(crate) fn client_capabilities(target: Target<'_>) -> serde_json::Value {
    serde_json::json!({
        "supported-versions": ["1.0.0"],
        "supported-features": {},
        "supported-payloads": {
            "declarations": {
                "activations": names(ACTIVATIONS, target),
                "assets": names(ASSETS, target),
                "configurations": names(CONFIGURATIONS, target),
                "management": names(MANAGEMENT, target),
            },
            "status-items": names(STATUS_ITEMS, target),
        },
    })
}

/// Whether the OS speaks DDM at all (`declarationbase.yaml` and the protocol schemas: iOS 15,
/// macOS 13, tvOS 16, visionOS 1.1, watchOS 10). Older devices never check in through DDM.
pub(crate) fn ddm_available(platform: Platform, version: &OsVersion) -> bool {
    platform != Platform::AudioOs
        && Support {
            name: "",
            introduced: DEVICE_15,
            mac_needs_supervision: false,
        }
        .available(Target {
            platform,
            version,
            supervised: true,
        })
}

/// Whether the status report may carry `FullReport` (the key's own `supportedOS`: iOS 17,
/// macOS 14, tvOS 17; visionOS and watchOS inherit the report's).
pub(crate) fn full_report_key_supported(platform: Platform, version: &OsVersion) -> bool {
    let introduced = match SchemaOs::of(platform) {
        SchemaOs::Ios | SchemaOs::TvOs => "17.0",
        SchemaOs::MacOs => "14.0",
        SchemaOs::VisionOs | SchemaOs::WatchOs => return true,
    };
    introduced
        .parse::<OsVersion>()
        .is_ok_and(|introduced| version.base() >= introduced)
}

/// The first major that installs a supplemental release without its base release first
/// (iOS/iPadOS 18, macOS 15; the others follow the iOS rule).
pub(crate) fn direct_supplemental_major(platform: Platform) -> u32 {
    match SchemaOs::of(platform) {
        SchemaOs::MacOs => 15,
        SchemaOs::VisionOs => 2,
        _ => 18,
    }
}

/// `device.model.family`: `Mac` for Macs, else the model identifier's prefix (`iPhone`,
/// `iPad`, `AppleTV`, `Watch`, `RealityDevice`).
pub(crate) fn model_family(platform: Platform, model: &str) -> String {
    if platform == Platform::MacOs {
        return "Mac".into();
    }
    let prefix: String = model
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    if prefix.is_empty() {
        model.to_string()
    } else {
        prefix
    }
}

/// `device.model.marketing-name`. The catalog does not carry marketing names; the simulator
/// reports the family's name with the model identifier.
pub(crate) fn marketing_name(platform: Platform, model: &str) -> String {
    let family = match platform {
        Platform::Ios => "iPhone",
        Platform::IpadOs => "iPad",
        Platform::MacOs => "Mac",
        Platform::TvOs => "Apple TV",
        Platform::WatchOs => "Apple Watch",
        Platform::VisionOs => "Apple Vision Pro",
        Platform::AudioOs => "HomePod",
    };
    format!("{family} ({model})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(platform: Platform, version: &str, supervised: bool) -> (Platform, OsVersion, bool) {
        (platform, version.parse().expect("version"), supervised)
    }

    #[test]
    fn availability_follows_the_schemas() {
        let (p, v, s) = target(Platform::MacOs, "14.6", false);
        let t = Target {
            platform: p,
            version: &v,
            supervised: s,
        };
        assert!(!status_item_available("softwareupdate.install-state", t));
        assert!(status_item_available("device.operating-system.version", t));
        assert!(!declaration_type_supported(ENFORCEMENT, t));
        let t = Target {
            supervised: true,
            ..t
        };
        assert!(status_item_available("softwareupdate.install-state", t));
        assert!(!status_item_available("softwareupdate.device-id", t));
        assert!(declaration_type_supported(ENFORCEMENT, t));
        assert!(!declaration_type_supported(SETTINGS, t));

        let (p, v, s) = target(Platform::WatchOs, "11.0", true);
        let t = Target {
            platform: p,
            version: &v,
            supervised: s,
        };
        assert!(!declaration_type_supported(ENFORCEMENT, t));
        assert!(status_item_available("management.declarations", t));

        let caps = client_capabilities(Target {
            platform: Platform::Ios,
            version: &"26.1".parse().expect("version"),
            supervised: false,
        });
        let configurations = &caps["supported-payloads"]["declarations"]["configurations"];
        assert!(
            configurations
                .as_array()
                .expect("array")
                .iter()
                .any(|c| c == ENFORCEMENT)
        );
    }

    #[test]
    fn full_report_key_and_families() {
        assert!(!full_report_key_supported(
            Platform::MacOs,
            &"13.3.1".parse().expect("version")
        ));
        assert!(full_report_key_supported(
            Platform::IpadOs,
            &"17.0".parse().expect("version")
        ));
        assert_eq!(model_family(Platform::Ios, "iPhone15,2"), "iPhone");
        assert_eq!(model_family(Platform::MacOs, "Mac14,2"), "Mac");
        assert_eq!(model_family(Platform::TvOs, "AppleTV14,1"), "AppleTV");
    }
}
