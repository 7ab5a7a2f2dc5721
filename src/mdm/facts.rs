//! One enrollment as the MDM knows it. Every fact keeps where it came from and when it was true,
//! so a newer fact wins whichever source sent it, and an event that arrives late (NanoMDM sends
//! webhooks asynchronously, possibly out of order) never overwrites a newer one.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::inventory::EnrollmentType;

/// Where a fact came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// The inventory file.
    Inventory,
    /// The MDM: a check-in (`Authenticate`, `TokenUpdate`, `SetBootstrapToken`, `CheckOut`) or a
    /// command result (`SecurityInfo`, `DeviceInformation`) seen through NanoMDM's webhook.
    Mdm,
    /// The device's own DDM status report.
    DdmReport,
    /// The MachineInfo the device sent to the enrollment gate.
    MachineInfo,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Inventory => "inventory",
            Source::Mdm => "mdm",
            Source::DdmReport => "ddmReport",
            Source::MachineInfo => "machineInfo",
        }
    }
}

/// A value, where it came from and when it was true.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact<T> {
    pub value: T,
    pub source: Source,
    pub at: Timestamp,
}

impl<T> Fact<T> {
    pub fn new(value: T, source: Source, at: Timestamp) -> Self {
        Fact { value, source, at }
    }

    /// Keeps the newer of `slot` and `candidate` (on a tie, the candidate: the later-handled
    /// message of the same instant). Returns whether the slot changed.
    pub fn update(slot: &mut Option<Fact<T>>, candidate: Fact<T>) -> bool
    where
        T: PartialEq,
    {
        match slot {
            Some(current) if current.at > candidate.at => false,
            Some(current) if *current == candidate => false,
            _ => {
                *slot = Some(candidate);
                true
            }
        }
    }
}

/// Whether the enrollment is in the MDM, from its last enrollment event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum Enrollment {
    /// `mdm.Authenticate` or `mdm.TokenUpdate` at `since`.
    Enrolled { since: Timestamp },
    /// `mdm.CheckOut` at `at`: the device left. Only a later Authenticate/TokenUpdate (by event
    /// time) re-enrolls it; one that happened before the check-out never resurrects it.
    CheckedOut { at: Timestamp },
}

impl Enrollment {
    pub fn at(self) -> Timestamp {
        match self {
            Enrollment::Enrolled { since } => since,
            Enrollment::CheckedOut { at } => at,
        }
    }

    pub fn is_enrolled(self) -> bool {
        matches!(self, Enrollment::Enrolled { .. })
    }
}

/// What the MDM knows about one device-channel enrollment (user channels are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MdmDevice {
    /// NanoMDM's enrollment id (`ids.id`): the UDID, or the EnrollmentID of a User Enrollment.
    pub enrollment_id: String,
    pub enrollment: Enrollment,
    /// From `ids.type`: `Device` → Device; `User Enrollment (Device)` → User. (ADE is not told
    /// by NanoMDM; the inventory or MachineInfo says it.)
    pub enrollment_type: Option<EnrollmentType>,
    pub udid: Option<String>,
    pub serial_number: Option<Fact<String>>,
    /// The model identifier (`ProductName` in Authenticate and DeviceInformation), such as
    /// `iPhone15,2` or `Mac14,2`.
    pub model: Option<Fact<String>>,
    pub os_version: Option<Fact<String>>,
    pub build_version: Option<Fact<String>>,
    /// `IsSupervised` from DeviceInformation.
    pub supervised: Option<Fact<bool>>,
    /// `SoftwareUpdateDeviceID` from DeviceInformation, or `SOFTWARE_UPDATE_DEVICE_ID` from
    /// the MachineInfo the enrollment gate saw (macOS 14.4–14.x report no board id over DDM).
    pub software_update_device_id: Option<Fact<String>>,
    /// `IsAppleSilicon` (DeviceInformation, macOS 12+), or implied by SecurityInfo answering
    /// `BootstrapTokenAllowedForAuthentication` (Apple silicon only).
    pub apple_silicon: Option<Fact<bool>>,
    /// `BootstrapTokenRequiredForSoftwareUpdate` from SecurityInfo.
    pub bootstrap_token_required: Option<Fact<bool>>,
    /// Whether the MDM holds an escrowed bootstrap token: `mdm.SetBootstrapToken` with a token
    /// (true) or without one (false, removed).
    pub bootstrap_token_escrowed: Option<Fact<bool>>,
}

impl MdmDevice {
    /// A device first heard of through an enrollment event at `at`.
    pub fn new(enrollment_id: impl Into<String>, enrollment: Enrollment) -> Self {
        MdmDevice {
            enrollment_id: enrollment_id.into(),
            enrollment,
            enrollment_type: None,
            udid: None,
            serial_number: None,
            model: None,
            os_version: None,
            build_version: None,
            supervised: None,
            software_update_device_id: None,
            apple_silicon: None,
            bootstrap_token_required: None,
            bootstrap_token_escrowed: None,
        }
    }

    /// Applies an enrollment event: a newer one wins; an older one changes nothing (a CheckOut
    /// received before the Authenticate that preceded it must not be undone by it).
    pub fn enrollment_event(&mut self, event: Enrollment) -> bool {
        if event.at() >= self.enrollment.at() && event != self.enrollment {
            self.enrollment = event;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn a_newer_fact_wins_and_an_older_one_changes_nothing() {
        let mut slot = None;
        assert!(Fact::update(
            &mut slot,
            Fact::new("15.1", Source::Mdm, at("2026-01-02T00:00:00Z"))
        ));
        assert!(!Fact::update(
            &mut slot,
            Fact::new("14.0", Source::Inventory, at("2026-01-01T00:00:00Z"))
        ));
        assert_eq!(slot.as_ref().map(|f| f.value), Some("15.1"));
        assert!(Fact::update(
            &mut slot,
            Fact::new("15.2", Source::DdmReport, at("2026-01-03T00:00:00Z"))
        ));
        assert_eq!(
            slot.map(|f| (f.value, f.source)),
            Some(("15.2", Source::DdmReport))
        );
    }

    #[test]
    fn a_late_authenticate_does_not_resurrect_a_checked_out_device() {
        let checked_out = Enrollment::CheckedOut {
            at: at("2026-01-02T00:00:00Z"),
        };
        let mut device = MdmDevice::new("UDID-1", checked_out);
        assert!(!device.enrollment_event(Enrollment::Enrolled {
            since: at("2026-01-01T00:00:00Z")
        }));
        assert!(!device.enrollment.is_enrolled());
        assert!(device.enrollment_event(Enrollment::Enrolled {
            since: at("2026-01-03T00:00:00Z")
        }));
        assert!(device.enrollment.is_enrolled());
    }
}
