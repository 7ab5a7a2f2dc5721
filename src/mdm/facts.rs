//! One enrollment as the MDM knows it. Every fact keeps where it came from and when it was true,
//! so a newer fact wins whichever source sent it, and an event that arrives late (NanoMDM sends
//! webhooks asynchronously, possibly out of order) never overwrites a newer one.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::webhook::{Message, WebhookEvent};
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

// What NanoMDM's webhook events teach (helper "webhook").
impl MdmDevice {
    /// A device first heard of through `event`. Any device-channel event NanoMDM sends means
    /// the enrollment was in the MDM when it happened (NanoMDM sends none for requests its
    /// certificate check refused), so a device first heard of through, say, a
    /// `mdm.SetBootstrapToken` is enrolled since then; a later-delivered CheckOut that happened
    /// earlier does not undo that.
    pub fn from_event(event: &WebhookEvent) -> Self {
        let enrollment = match event.message {
            Message::CheckOut => Enrollment::CheckedOut {
                at: event.created_at,
            },
            _ => Enrollment::Enrolled {
                since: event.created_at,
            },
        };
        let mut device = MdmDevice::new(event.enrollment(), enrollment);
        device.apply(event);
        device
    }

    /// Applies one webhook event: each fact it carries replaces the one known if it is newer
    /// (by NanoMDM's `created_at`), and enrollment events follow `enrollment_event` (a CheckOut
    /// is undone only by a later Authenticate or TokenUpdate). Returns whether anything changed.
    /// Command reports (`mdm.Connect`) change nothing here: `mdm::commands` reads their results.
    pub fn apply(&mut self, event: &WebhookEvent) -> bool {
        let at = event.created_at;
        let mdm = |value: String| Fact::new(value, Source::Mdm, at);
        let mut changed = false;
        if self.enrollment_type.is_none() {
            // NanoMDM's types of device channels (mdm/type.go:30-45); user channels never
            // reach here.
            self.enrollment_type = match event.ids.kind.as_str() {
                "Device" => Some(EnrollmentType::Device),
                "User Enrollment (Device)" => Some(EnrollmentType::User),
                _ => None,
            };
            changed |= self.enrollment_type.is_some();
        }
        let udid = match &event.message {
            Message::Authenticate(identity) => identity.udid.as_ref().or(event.udid.as_ref()),
            _ => event.udid.as_ref(),
        };
        if self.udid.is_none()
            && let Some(udid) = udid
        {
            self.udid = Some(udid.clone());
            changed = true;
        }
        match &event.message {
            Message::Authenticate(identity) => {
                changed |= self.enrollment_event(Enrollment::Enrolled { since: at });
                for (slot, value) in [
                    (&mut self.serial_number, &identity.serial_number),
                    (&mut self.model, &identity.product_name),
                    (&mut self.os_version, &identity.os_version),
                    (&mut self.build_version, &identity.build_version),
                ] {
                    if let Some(value) = value {
                        changed |= Fact::update(slot, mdm(value.clone()));
                    }
                }
            }
            Message::TokenUpdate { .. } => {
                changed |= self.enrollment_event(Enrollment::Enrolled { since: at });
            }
            Message::CheckOut => {
                changed |= self.enrollment_event(Enrollment::CheckedOut { at });
            }
            Message::SetBootstrapToken { escrowed } => {
                changed |= Fact::update(
                    &mut self.bootstrap_token_escrowed,
                    Fact::new(*escrowed, Source::Mdm, at),
                );
            }
            // Only an acknowledged answer to one of the operator's commands carries facts; the
            // report was read once, by the webhook's parser.
            Message::Acknowledge {
                report: Ok(Some(report)),
                ..
            } => {
                changed |= report.apply(self, at);
            }
            Message::Acknowledge { .. } => {}
        }
        changed
    }

    /// Takes the `SOFTWARE_UPDATE_DEVICE_ID` the enrollment gate's MachineInfo carried, if newer
    /// than the one known (macOS 14.4–14.x report no board id over DDM).
    pub fn machine_info_device_id(&mut self, fact: Fact<String>) -> bool {
        Fact::update(&mut self.software_update_device_id, fact)
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

#[cfg(test)]
mod webhook_tests {
    use super::*;
    use crate::mdm::webhook::{Identity, Ids};

    fn event(message: Message, at: &str) -> WebhookEvent {
        WebhookEvent {
            topic: crate::mdm::webhook::Topic::Authenticate,
            created_at: at.parse().expect("timestamp"),
            event_id: "e".into(),
            ids: Ids {
                id: "UDID-1".into(),
                kind: "Device".into(),
                parent_id: None,
            },
            udid: Some("UDID-1".into()),
            enrollment_id: None,
            payload: Vec::new(),
            message,
        }
    }

    fn authenticate(os: &str) -> Message {
        Message::Authenticate(Identity {
            udid: Some("UDID-1".into()),
            serial_number: Some("C02XK1ABCD12".into()),
            product_name: Some("Mac14,2".into()),
            os_version: Some(os.into()),
            build_version: None,
        })
    }

    #[test]
    fn a_checkout_delivered_first_is_not_undone_by_the_earlier_authenticate() {
        let checkout = event(Message::CheckOut, "2026-12-07T11:00:02Z");
        let mut device = MdmDevice::from_event(&checkout);
        assert!(!device.enrollment.is_enrolled());
        // The Authenticate happened before the check-out but arrives after it.
        device.apply(&event(authenticate("15.6"), "2026-12-07T11:00:01Z"));
        assert!(!device.enrollment.is_enrolled(), "{device:?}");
        // Its facts are still learned: they were true when it happened.
        assert_eq!(
            device.model.as_ref().map(|f| f.value.as_str()),
            Some("Mac14,2")
        );
        assert_eq!(device.enrollment_type, Some(EnrollmentType::Device));
        // A later enrollment does re-enroll it.
        assert!(device.apply(&event(
            Message::TokenUpdate { tally: Some(1) },
            "2026-12-07T11:00:03Z"
        )));
        assert!(device.enrollment.is_enrolled());
    }

    #[test]
    fn newer_facts_win_and_a_replay_changes_nothing() {
        let mut device =
            MdmDevice::from_event(&event(authenticate("15.6"), "2026-12-07T11:00:05Z"));
        let old = event(authenticate("15.5"), "2026-12-07T11:00:01Z");
        assert!(!device.apply(&old));
        assert_eq!(
            device.os_version.as_ref().map(|f| f.value.as_str()),
            Some("15.6")
        );
        let again = event(authenticate("15.6"), "2026-12-07T11:00:05Z");
        assert!(
            !device.apply(&again),
            "the same event twice changes nothing"
        );
        let token = |escrowed, at| event(Message::SetBootstrapToken { escrowed }, at);
        assert!(device.apply(&token(true, "2026-12-07T11:00:06Z")));
        assert!(
            !device.apply(&token(false, "2026-12-07T11:00:04Z")),
            "older"
        );
        assert!(
            device.apply(&token(false, "2026-12-07T11:00:07Z")),
            "removed"
        );
        assert_eq!(
            device.bootstrap_token_escrowed.map(|f| (f.value, f.source)),
            Some((false, Source::Mdm))
        );
    }
}
