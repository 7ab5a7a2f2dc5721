//! Which of Apple's release lists a device may be sent releases from. One rule for declarations
//! and for the enrollment gate, so neither offers a device a release the other would not.

use super::index::{AssetSet, Platform};
use super::version::OsVersion;

/// The list releases are chosen from for a device (`platform`, running `running`, supervised or
/// not) when a policy asks for `asked`, and why it is `PublicAssetSets` where `AssetSets` was
/// asked for.
pub fn usable_set(
    asked: AssetSet,
    platform: Platform,
    running: &OsVersion,
    supervised: bool,
) -> (AssetSet, Option<&'static str>) {
    if asked == AssetSet::Public {
        return (AssetSet::Public, None);
    }
    // Apple, MDM Protocol Reference, "Managing OS Software Updates" (Apple Software Lookup
    // Service): "The AssetSets list contains all the releases available for MDMs to push to their
    // supervised devices. The other list, PublicAssetSets contains the latest releases available
    // to the general public (non-supervised devices)".
    if !supervised {
        return (
            AssetSet::Public,
            Some("chosen from PublicAssetSets: AssetSets are for supervised devices"),
        );
    }
    // Apple, "Deploying software updates using declarative management", Request a specific
    // minimum software version during enrollment: "Before macOS 15, only releases from the
    // PublicAssetSets and PublicBackgroundSecurityImprovements lists can be specified. In
    // macOS 15, assets from AssetSets can also be used." Apple says it for enrollment and names
    // no other list for the enforcement declaration, so declarations follow it too.
    if platform == Platform::MacOs && running.major() < 15 {
        return (
            AssetSet::Public,
            Some("chosen from PublicAssetSets: before macOS 15 a Mac may only be sent those"),
        );
    }
    (asked, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(platform: Platform, running: &str, supervised: bool) -> bool {
        let running: OsVersion = running.parse().expect("a version");
        usable_set(AssetSet::Mdm, platform, &running, supervised).0 == AssetSet::Public
    }

    #[test]
    fn unsupervised_devices_and_macs_before_15_only_get_public_releases() {
        assert!(!public(Platform::Ios, "18.6", true));
        assert!(public(Platform::Ios, "18.6", false));
        assert!(public(Platform::IpadOs, "26.0", false));
        assert!(public(Platform::TvOs, "26.0", false));
        assert!(public(Platform::VisionOs, "26.0", false));
        assert!(public(Platform::MacOs, "14.8.1", true));
        assert!(!public(Platform::MacOs, "15.0", true));
        assert!(!public(Platform::MacOs, "26.6", true));
        // Asked for the public list: nothing to say.
        let running: OsVersion = "18.6".parse().expect("a version");
        assert_eq!(
            usable_set(AssetSet::Public, Platform::Ios, &running, false),
            (AssetSet::Public, None)
        );
        assert!(
            usable_set(AssetSet::Mdm, Platform::Ios, &running, false)
                .1
                .is_some()
        );
    }
}
