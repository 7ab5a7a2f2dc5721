//! Why a device gets no enforcement from a source: the one list used by plan output, status and
//! events.

use serde::Serialize;

/// A per-device reason (see the design page's contracts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Reason {
    /// Runs the target or newer.
    UpToDate,
    /// The catalog does not list the device's software-update id.
    DeviceNotInCatalog,
    /// Newer releases exist for the device, all expired.
    NoSignedRelease,
    /// The catalog lists the device, but nothing matches the strategy (a pin it cannot get).
    NoMatchingRelease,
    /// No software-update device id yet: Macs report it through DDM from macOS 15 (MachineInfo
    /// and MDM from 14.4), so it must come from the inventory for older Macs.
    DeviceIdUnknown,
    /// The declaration needs supervision (or a device enrollment) the device lacks.
    NotSupervised,
    /// The device's OS does not support software-update declarations (watchOS, iOS before 17,
    /// macOS before 14, tvOS before 18.4, visionOS before 26).
    DeclarationNotSupported,
    /// Another enforcement with an earlier or equal deadline already takes the device to this
    /// version or newer.
    Superseded,
    /// A security improvement needs its base release first: the base and the improvement are
    /// sent as two enforcements, the improvement's deadline after the base's.
    TwoStep,
    /// The policy asked for `AssetSets`, but the device may only be sent releases Apple lists
    /// in `PublicAssetSets` (unsupervised, or a Mac before macOS 15); they were chosen from
    /// there. The device may still get an enforcement.
    PublicAssetSetsOnly,
    /// An Apple-silicon Mac that gets an enforcement but whose bootstrap token the MDM is not
    /// known to hold: at the deadline its user will be asked to authenticate. A warning: the
    /// enforcement is still sent.
    BootstrapTokenMissing,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UpToDate => "UpToDate",
            Reason::DeviceNotInCatalog => "DeviceNotInCatalog",
            Reason::NoSignedRelease => "NoSignedRelease",
            Reason::NoMatchingRelease => "NoMatchingRelease",
            Reason::DeviceIdUnknown => "DeviceIdUnknown",
            Reason::NotSupervised => "NotSupervised",
            Reason::DeclarationNotSupported => "DeclarationNotSupported",
            Reason::Superseded => "Superseded",
            Reason::TwoStep => "TwoStep",
            Reason::PublicAssetSetsOnly => "PublicAssetSetsOnly",
            Reason::BootstrapTokenMissing => "BootstrapTokenMissing",
        }
    }
}

impl From<crate::catalog::NoTarget> for Reason {
    fn from(value: crate::catalog::NoTarget) -> Self {
        use crate::catalog::NoTarget;
        match value {
            NoTarget::UpToDate => Reason::UpToDate,
            NoTarget::DeviceNotInCatalog => Reason::DeviceNotInCatalog,
            NoTarget::NoSignedRelease => Reason::NoSignedRelease,
            NoTarget::NoMatchingRelease => Reason::NoMatchingRelease,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
