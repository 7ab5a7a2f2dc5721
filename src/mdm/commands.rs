//! The MDM commands the operator asks NanoMDM to send for what DDM does not report
//! (`SecurityInfo` for Macs, `DeviceInformation` where supervision or the board id is unknown):
//! their plists, and the scheduler deciding which enrolled device needs which command now. Pure:
//! the sender (`backend::nanomdm_commands`) does the IO and passes the clock's `now`.
//!
//! Request shapes follow Apple's schemas (`mdm/commands/information.security.yaml`,
//! `information.device.yaml`): `Command.RequestType`, and for DeviceInformation the required
//! `Queries` array of query names.

use std::collections::HashMap;

use jiff::{SignedDuration, Timestamp};

use super::facts::MdmDevice;
use crate::catalog::Platform;
use crate::inventory::EnrollmentType;

/// Every CommandUUID the operator mints starts with this, then the kind: a report for any other
/// command (NanoMDM's own, another tool's, `Idle`) is none of the operator's business.
pub const COMMAND_UUID_PREFIX: &str = "ddm-update-operator";

/// The DeviceInformation queries the operator asks (names from the schema's `QueriesItem` list).
/// A device leaves out what its OS does not answer (`SoftwareUpdateDeviceID` before iOS 15 and
/// macOS 12, `IsAppleSilicon` before macOS 12, `IsSupervised` before macOS 10.15).
pub const DEVICE_INFORMATION_QUERIES: &[&str] = &[
    "UDID",
    "SerialNumber",
    "ProductName",
    "OSVersion",
    "BuildVersion",
    "IsSupervised",
    "SoftwareUpdateDeviceID",
    "IsAppleSilicon",
];

/// A command the operator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CommandKind {
    SecurityInfo,
    DeviceInformation,
}

impl CommandKind {
    pub const ALL: [CommandKind; 2] = [CommandKind::SecurityInfo, CommandKind::DeviceInformation];

    /// The `RequestType`; also the kind's name in CommandUUIDs, the store and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::SecurityInfo => "SecurityInfo",
            CommandKind::DeviceInformation => "DeviceInformation",
        }
    }

    pub fn parse(name: &str) -> Option<CommandKind> {
        CommandKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The kind of a CommandUUID the operator minted; `None` for anyone else's.
    pub fn of_command_uuid(uuid: &str) -> Option<CommandKind> {
        let rest = uuid.strip_prefix(COMMAND_UUID_PREFIX)?.strip_prefix('.')?;
        let (kind, nonce) = rest.split_once('.')?;
        if nonce.is_empty() {
            return None;
        }
        CommandKind::parse(kind)
    }
}

/// A CommandUUID for `kind` to `enrollment_id`, minted at `now`:
/// `ddm-update-operator.<RequestType>.<16 hex digits>`, unique per device, kind and instant.
pub fn command_uuid(kind: CommandKind, enrollment_id: &str, now: Timestamp) -> String {
    let hash = crate::declarations::content_hash(&[
        kind.as_str().as_bytes(),
        enrollment_id.as_bytes(),
        &now.as_nanosecond().to_be_bytes(),
    ]);
    format!("{COMMAND_UUID_PREFIX}.{}.{}", kind.as_str(), &hash[..16])
}

/// The command plist NanoMDM's `/v1/enqueue` takes (XML; `CommandUUID` and
/// `Command.RequestType` are what NanoMDM requires, mdm/command.go:57-71).
pub fn command_plist(kind: CommandKind, command_uuid: &str) -> Vec<u8> {
    let mut command = plist::Dictionary::new();
    command.insert(
        "RequestType".into(),
        plist::Value::String(kind.as_str().into()),
    );
    if kind == CommandKind::DeviceInformation {
        command.insert(
            "Queries".into(),
            plist::Value::Array(
                DEVICE_INFORMATION_QUERIES
                    .iter()
                    .map(|q| plist::Value::String((*q).into()))
                    .collect(),
            ),
        );
    }
    let mut top = plist::Dictionary::new();
    top.insert("Command".into(), plist::Value::Dictionary(command));
    top.insert(
        "CommandUUID".into(),
        plist::Value::String(command_uuid.into()),
    );
    let mut out = Vec::new();
    // Writing a dictionary of strings into a Vec cannot fail.
    let _ = plist::Value::Dictionary(top).to_writer_xml(&mut out);
    out
}

/// Where the last command of one kind to one device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandState {
    /// Queued in NanoMDM, no final answer yet (`NotNow` keeps it here: the device will answer
    /// it later from the same queue).
    Outstanding,
    Acknowledged,
    /// The device answered `Error` (or `CommandFormatError`): retried at the next refresh.
    Error,
    /// NanoMDM did not queue it (`command_error`, unreachable): retried after [`ENQUEUE_RETRY`].
    NotQueued,
}

impl CommandState {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::Outstanding => "outstanding",
            CommandState::Acknowledged => "acknowledged",
            CommandState::Error => "error",
            CommandState::NotQueued => "notQueued",
        }
    }

    pub fn parse(name: &str) -> Option<CommandState> {
        [
            CommandState::Outstanding,
            CommandState::Acknowledged,
            CommandState::Error,
            CommandState::NotQueued,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// The last command of one kind sent to one enrollment, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRecord {
    pub enrollment_id: String,
    pub kind: CommandKind,
    pub command_uuid: String,
    pub sent_at: Timestamp,
    pub state: CommandState,
    /// When the device last answered it (any status, `NotNow` included).
    pub answered_at: Option<Timestamp>,
}

/// How often and how fast commands go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// At most this many commands per scheduler run (the sender runs it once a minute).
    pub per_minute: usize,
    /// A device is asked the same kind again at most this often (never less than a day).
    pub refresh: SignedDuration,
    /// An outstanding command the device never answered counts as lost after this long, and
    /// one more may be queued (NanoMDM keeps its queue: a device away longer finds two).
    pub lost_after: SignedDuration,
}

/// The shortest refresh: the "refreshed at most daily".
pub const MIN_REFRESH: SignedDuration = SignedDuration::from_hours(24);
/// How long after NanoMDM refused to queue a command it is tried again.
pub const ENQUEUE_RETRY: SignedDuration = SignedDuration::from_mins(15);

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            per_minute: 60,
            refresh: MIN_REFRESH,
            lost_after: SignedDuration::from_hours(24 * 14),
        }
    }
}

/// One command the scheduler wants sent now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub enrollment_id: String,
    pub kind: CommandKind,
}

/// Which commands go out now: for each device the MDM knows as enrolled, the kinds it needs
/// ([`needs`]) that have no outstanding command and were not sent within the refresh; never sent
/// first, then the longest waiting; at most `schedule.per_minute`.
pub fn due(
    devices: &[MdmDevice],
    records: &[CommandRecord],
    schedule: &Schedule,
    now: Timestamp,
) -> Vec<Due> {
    let last: HashMap<(&str, CommandKind), &CommandRecord> = records
        .iter()
        .map(|r| ((r.enrollment_id.as_str(), r.kind), r))
        .collect();
    let refresh = schedule.refresh.max(MIN_REFRESH);
    // (the last send, or None for never) orders the candidates: None sorts first.
    let mut candidates: Vec<(Option<Timestamp>, &str, CommandKind)> = Vec::new();
    for device in devices {
        if !device.enrollment.is_enrolled() {
            continue;
        }
        for kind in needs(device) {
            let record = last.get(&(device.enrollment_id.as_str(), kind));
            let ready = match record {
                None => true,
                // Enrolled again since: NanoMDM's queue may be gone with the old enrollment.
                Some(r) if device.enrollment.at() > r.sent_at => true,
                Some(r) => {
                    let wait = match r.state {
                        CommandState::Outstanding => schedule.lost_after,
                        CommandState::Acknowledged | CommandState::Error => refresh,
                        CommandState::NotQueued => ENQUEUE_RETRY,
                    };
                    r.sent_at.checked_add(wait).is_ok_and(|next| now >= next)
                }
            };
            if ready {
                candidates.push((
                    record.map(|r| r.sent_at),
                    device.enrollment_id.as_str(),
                    kind,
                ));
            }
        }
    }
    candidates.sort();
    candidates
        .into_iter()
        .take(schedule.per_minute)
        .map(|(_, enrollment_id, kind)| Due {
            enrollment_id: enrollment_id.to_string(),
            kind,
        })
        .collect()
}

/// The kinds a device needs: a Mac (device channel, not User Enrollment, where the bootstrap
/// keys are forbidden) `SecurityInfo`; any device whose supervision is unknown, and a Mac whose
/// board id or chip is unknown, `DeviceInformation`. A device of unknown model is asked
/// DeviceInformation too (it answers ProductName).
pub fn needs(device: &MdmDevice) -> Vec<CommandKind> {
    let platform = device
        .model
        .as_ref()
        .and_then(|m| crate::enroll::decide::platform_of(&m.value));
    let is_mac = platform == Some(Platform::MacOs);
    let user_enrollment = device.enrollment_type == Some(EnrollmentType::User);
    let mut kinds = Vec::new();
    if is_mac && !user_enrollment {
        kinds.push(CommandKind::SecurityInfo);
    }
    let mac_unknowns = is_mac
        && !user_enrollment
        && (device.software_update_device_id.is_none() || device.apple_silicon.is_none());
    if platform.is_none() || device.supervised.is_none() || mac_unknowns {
        kinds.push(CommandKind::DeviceInformation);
    }
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mdm::facts::{Enrollment, Fact, Source};

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn device(id: &str, model: &str) -> MdmDevice {
        let mut device = MdmDevice::new(
            id,
            Enrollment::Enrolled {
                since: at("2026-12-01T00:00:00Z"),
            },
        );
        device.enrollment_type = Some(EnrollmentType::Device);
        device.model = Some(Fact::new(
            model.into(),
            Source::Mdm,
            at("2026-12-01T00:00:00Z"),
        ));
        device
    }

    fn known(mut device: MdmDevice) -> MdmDevice {
        let t = at("2026-12-01T00:00:00Z");
        device.supervised = Some(Fact::new(true, Source::Mdm, t));
        device.software_update_device_id = Some(Fact::new("J414sAP".into(), Source::Mdm, t));
        device.apple_silicon = Some(Fact::new(true, Source::Mdm, t));
        device
    }

    fn sent(due: &[Due], state: CommandState, now: Timestamp) -> Vec<CommandRecord> {
        due.iter()
            .map(|d| CommandRecord {
                enrollment_id: d.enrollment_id.clone(),
                kind: d.kind,
                command_uuid: command_uuid(d.kind, &d.enrollment_id, now),
                sent_at: now,
                state,
                answered_at: None,
            })
            .collect()
    }

    #[test]
    fn command_uuids_are_recognisable_unique_and_carry_their_kind() {
        let now = at("2026-12-07T10:00:00Z");
        let a = command_uuid(CommandKind::SecurityInfo, "UDID-A", now);
        assert!(a.starts_with("ddm-update-operator.SecurityInfo."), "{a}");
        assert_eq!(
            CommandKind::of_command_uuid(&a),
            Some(CommandKind::SecurityInfo)
        );
        assert_ne!(a, command_uuid(CommandKind::SecurityInfo, "UDID-B", now));
        assert_ne!(
            a,
            command_uuid(
                CommandKind::SecurityInfo,
                "UDID-A",
                at("2026-12-07T10:00:01Z")
            )
        );
        let d = command_uuid(CommandKind::DeviceInformation, "UDID-A", now);
        assert_eq!(
            CommandKind::of_command_uuid(&d),
            Some(CommandKind::DeviceInformation)
        );
        for foreign in [
            "cmd-0001",
            "ddm-update-operator.",
            "ddm-update-operator.SecurityInfo.",
            "ddm-update-operator.Restart.ab",
            "0F3B5E2A-1111-4222-8333-444455556666",
        ] {
            assert_eq!(CommandKind::of_command_uuid(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn plists_carry_what_nanomdm_and_the_schemas_require() {
        let uuid = command_uuid(
            CommandKind::DeviceInformation,
            "U",
            at("2026-12-07T00:00:00Z"),
        );
        let bytes = command_plist(CommandKind::DeviceInformation, &uuid);
        let value = plist::Value::from_reader_xml(bytes.as_slice()).expect("XML plist");
        let top = value.as_dictionary().expect("dictionary");
        assert_eq!(
            top.get("CommandUUID").and_then(plist::Value::as_string),
            Some(uuid.as_str())
        );
        let command = top
            .get("Command")
            .and_then(plist::Value::as_dictionary)
            .expect("Command");
        assert_eq!(
            command.get("RequestType").and_then(plist::Value::as_string),
            Some("DeviceInformation")
        );
        let queries: Vec<&str> = command
            .get("Queries")
            .and_then(plist::Value::as_array)
            .expect("Queries")
            .iter()
            .filter_map(plist::Value::as_string)
            .collect();
        for wanted in ["IsSupervised", "SoftwareUpdateDeviceID", "IsAppleSilicon"] {
            assert!(queries.contains(&wanted), "{wanted} in {queries:?}");
        }

        let bytes = command_plist(
            CommandKind::SecurityInfo,
            "ddm-update-operator.SecurityInfo.1",
        );
        let value = plist::Value::from_reader_xml(bytes.as_slice()).expect("XML plist");
        let command = value
            .as_dictionary()
            .and_then(|d| d.get("Command"))
            .and_then(plist::Value::as_dictionary)
            .expect("Command");
        assert_eq!(
            command.get("RequestType").and_then(plist::Value::as_string),
            Some("SecurityInfo")
        );
        assert!(command.get("Queries").is_none());
    }

    #[test]
    fn macs_get_security_info_and_unknowns_get_device_information() {
        assert_eq!(
            needs(&device("mac", "Mac14,2")),
            [CommandKind::SecurityInfo, CommandKind::DeviceInformation]
        );
        assert_eq!(
            needs(&known(device("mac", "Mac14,2"))),
            [CommandKind::SecurityInfo]
        );
        assert_eq!(
            needs(&device("phone", "iPhone15,2")),
            [CommandKind::DeviceInformation]
        );
        assert!(needs(&known(device("phone", "iPhone15,2"))).is_empty());
        // A Mac whose board id is unknown (macOS 14.4-14.x report none over DDM).
        let mut mac = known(device("mac", "MacBookPro18,1"));
        mac.software_update_device_id = None;
        assert_eq!(
            needs(&mac),
            [CommandKind::SecurityInfo, CommandKind::DeviceInformation]
        );
        // Model unknown: DeviceInformation tells it.
        let mut unknown = known(device("x", "Mac14,2"));
        unknown.model = None;
        assert_eq!(needs(&unknown), [CommandKind::DeviceInformation]);
        // User Enrollment: the bootstrap keys are forbidden there, the board id too.
        let mut byod = known(device("byod", "Mac14,2"));
        byod.enrollment_type = Some(EnrollmentType::User);
        byod.software_update_device_id = None;
        assert!(needs(&byod).is_empty());
    }

    #[test]
    fn only_enrolled_devices_get_commands() {
        let now = at("2026-12-07T10:00:00Z");
        let mut gone = device("gone", "Mac14,2");
        gone.enrollment = Enrollment::CheckedOut {
            at: at("2026-12-02T00:00:00Z"),
        };
        let here = device("here", "Mac14,2");
        let due = due(&[gone, here], &[], &Schedule::default(), now);
        assert!(due.iter().all(|d| d.enrollment_id == "here"), "{due:?}");
        assert_eq!(due.len(), 2);
    }

    #[test]
    fn one_outstanding_per_device_and_kind_and_at_most_daily_over_days() {
        let schedule = Schedule::default();
        let devices = [known(device("mac", "Mac14,2"))];
        let day0 = at("2026-12-07T10:00:00Z");
        let first = due(&devices, &[], &schedule, day0);
        assert_eq!(
            first,
            [Due {
                enrollment_id: "mac".into(),
                kind: CommandKind::SecurityInfo
            }]
        );
        // Outstanding: nothing more, each minute of the next days (until it counts as lost).
        let mut records = sent(&first, CommandState::Outstanding, day0);
        for minutes in [1, 60, 60 * 24, 60 * 24 * 3] {
            let now = day0 + SignedDuration::from_mins(minutes);
            assert!(due(&devices, &records, &schedule, now).is_empty(), "{now}");
        }
        // NotNow keeps it outstanding; Acknowledged an hour later: asked again only a day after
        // it was sent.
        records[0].state = CommandState::Acknowledged;
        records[0].answered_at = Some(day0 + SignedDuration::from_hours(1));
        let almost = day0 + SignedDuration::from_hours(24) - SignedDuration::from_secs(1);
        assert!(due(&devices, &records, &schedule, almost).is_empty());
        let day1 = day0 + SignedDuration::from_hours(24);
        assert_eq!(due(&devices, &records, &schedule, day1), first);
        // A refresh configured shorter than a day still waits a day.
        let hasty = Schedule {
            refresh: SignedDuration::from_hours(1),
            ..schedule
        };
        assert!(due(&devices, &records, &hasty, almost).is_empty());
        // Error: retried at the next daily refresh, not before.
        records[0].state = CommandState::Error;
        assert!(due(&devices, &records, &schedule, almost).is_empty());
        assert_eq!(due(&devices, &records, &schedule, day1), first);
        // Not queued by NanoMDM: retried after ENQUEUE_RETRY.
        records[0].state = CommandState::NotQueued;
        assert!(
            due(
                &devices,
                &records,
                &schedule,
                day0 + ENQUEUE_RETRY - SignedDuration::from_secs(1)
            )
            .is_empty()
        );
        assert_eq!(
            due(&devices, &records, &schedule, day0 + ENQUEUE_RETRY),
            first
        );
        // Never answered: lost after lost_after, then one more.
        records[0].state = CommandState::Outstanding;
        assert_eq!(
            due(&devices, &records, &schedule, day0 + schedule.lost_after),
            first
        );
        // Enrolled again after the last send: asked at once.
        let mut again = devices.clone();
        again[0].enrollment = Enrollment::Enrolled {
            since: day0 + SignedDuration::from_mins(5),
        };
        let soon = day0 + SignedDuration::from_mins(6);
        assert!(due(&devices, &records, &schedule, soon).is_empty());
        assert_eq!(due(&again, &records, &schedule, soon), first);
    }

    #[test]
    fn the_rate_limit_sends_the_never_asked_first_then_the_longest_waiting() {
        let schedule = Schedule {
            per_minute: 3,
            ..Schedule::default()
        };
        let devices: Vec<MdmDevice> = (0..5)
            .map(|i| known(device(&format!("mac{i}"), "Mac14,2")))
            .collect();
        let day0 = at("2026-12-07T10:00:00Z");
        let first = due(&devices, &[], &schedule, day0);
        assert_eq!(first.len(), 3);
        let mut records = sent(&first, CommandState::Acknowledged, day0);
        let next_minute = day0 + SignedDuration::from_mins(1);
        let second = due(&devices, &records, &schedule, next_minute);
        let names: Vec<&str> = second.iter().map(|d| d.enrollment_id.as_str()).collect();
        assert_eq!(names, ["mac3", "mac4"]);
        records.extend(sent(&second, CommandState::Acknowledged, next_minute));
        // The next day: the three sent first go first.
        let day1 = next_minute + SignedDuration::from_hours(24);
        let third = due(&devices, &records, &schedule, day1);
        let names: Vec<&str> = third.iter().map(|d| d.enrollment_id.as_str()).collect();
        assert_eq!(names, ["mac0", "mac1", "mac2"]);
    }
}
