//! Command reports: the plist a device answers a command with, as NanoMDM's webhook passes it on
//! (`mdm.Connect`, `acknowledge_event.raw_payload`). Only reports for commands the operator minted
//! (see [`super::commands::COMMAND_UUID_PREFIX`]) are read; the facts they carry become updates
//! of an [`MdmDevice`] from the MDM, dated by the event's `created_at`.
//!
//! Response keys from Apple's schemas: SecurityInfo answers a `SecurityInfo` dictionary with
//! `BootstrapTokenAllowedForAuthentication` (a string: allowed, disallowed, not supported; Apple
//! silicon, macOS 11+) and `BootstrapTokenRequiredForSoftwareUpdate` (a boolean); DeviceInformation
//! a `QueryResponses` dictionary. Read from the plist crate's event stream within a budget, so a
//! plist bomb costs nothing; a key of the wrong type is left out and named, never a panic.

use std::io::Cursor;

use jiff::Timestamp;
use plist::stream::{Event, Reader};

use super::commands::CommandKind;
use super::facts::{Fact, MdmDevice, Source};

/// At most this many plist events: a macOS SecurityInfo answer with a long firewall app list is
/// a few thousand; a DeviceInformation answer to the operator's queries a few dozen.
const MAX_EVENTS: usize = 16_384;
/// At most this much nesting (unknown keys may hold containers).
const MAX_DEPTH: usize = 16;
/// Longest string value kept.
const MAX_STRING: usize = 256;
/// At most this many bytes of strings and data read (a binary plist can share one long string
/// many times: each use counts), the webhook's bound for a whole payload.
const MAX_BYTES: usize = super::webhook::MAX_PLIST_BYTES;

/// How the device answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportStatus {
    Acknowledged,
    /// `Error` or `CommandFormatError`.
    Error,
    /// The device cannot do it now; it stays in NanoMDM's queue and comes again.
    NotNow,
}

impl ReportStatus {
    /// For metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportStatus::Acknowledged => "acknowledged",
            ReportStatus::Error => "error",
            ReportStatus::NotNow => "not_now",
        }
    }
}

/// What a report of SecurityInfo says (the keys the operator uses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityFacts {
    /// `BootstrapTokenAllowedForAuthentication`: `allowed`, `disallowed` or `not supported`;
    /// present only on Apple silicon.
    pub bootstrap_token_allowed: Option<String>,
    pub bootstrap_token_required_for_software_update: Option<bool>,
}

/// What a report of DeviceInformation says (the queries the operator asks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFacts {
    pub serial_number: Option<String>,
    pub product_name: Option<String>,
    pub os_version: Option<String>,
    pub build_version: Option<String>,
    pub is_supervised: Option<bool>,
    pub software_update_device_id: Option<String>,
    pub is_apple_silicon: Option<bool>,
}

/// A report for one of the operator's commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandReport {
    pub command_uuid: String,
    pub kind: CommandKind,
    pub status: ReportStatus,
    pub security: Option<SecurityFacts>,
    pub device: Option<DeviceFacts>,
    /// Keys left out because their value had the wrong type or was too long (`Dict.Key`).
    pub ignored_keys: Vec<String>,
}

/// Why a report was not read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("not a plist: {0}")]
    NotPlist(String),
    #[error(
        "more than {MAX_EVENTS} plist elements, {MAX_BYTES} bytes of strings and data, or {MAX_DEPTH} levels"
    )]
    TooLarge,
    #[error("the top level is not a dictionary")]
    NotADictionary,
    #[error("{0} has the wrong type")]
    WrongType(&'static str),
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("unknown Status {0:?}")]
    UnknownStatus(String),
}

impl ReportError {
    /// Whether the bytes are not a bounded plist dictionary at all (the webhook refuses such an
    /// event as malformed), rather than a readable report with a bad or missing key.
    pub fn unreadable(&self) -> bool {
        matches!(
            self,
            ReportError::NotPlist(_) | ReportError::TooLarge | ReportError::NotADictionary
        )
    }

    /// The fixed reason, for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ReportError::NotPlist(_) => "not_plist",
            ReportError::TooLarge => "too_large",
            ReportError::NotADictionary => "not_a_dictionary",
            ReportError::WrongType(_) => "wrong_type",
            ReportError::Missing(_) => "missing_key",
            ReportError::UnknownStatus(_) => "unknown_status",
        }
    }
}

type Next<'a> = dyn FnMut() -> Result<Option<Event<'static>>, ReportError> + 'a;

/// Reads a command report (XML or binary plist). `Ok(None)`: not a report for one of the
/// operator's commands (`Idle`, another command), nothing to do.
pub fn parse_report(bytes: &[u8]) -> Result<Option<CommandReport>, ReportError> {
    let mut events = Reader::new(Cursor::new(bytes));
    let mut budget = MAX_EVENTS;
    let mut bytes_left = MAX_BYTES;
    let mut next = move || -> Result<Option<Event<'static>>, ReportError> {
        if budget == 0 {
            return Err(ReportError::TooLarge);
        }
        budget -= 1;
        let event = events
            .next()
            .transpose()
            .map_err(|e| ReportError::NotPlist(e.to_string()))?;
        let size = match &event {
            Some(Event::String(s)) => s.len(),
            Some(Event::Data(d)) => d.len(),
            _ => 0,
        };
        bytes_left = bytes_left.checked_sub(size).ok_or(ReportError::TooLarge)?;
        Ok(event)
    };
    match next()? {
        Some(Event::StartDictionary(_)) => {}
        Some(_) => return Err(ReportError::NotADictionary),
        None => return Err(ReportError::NotPlist("empty".into())),
    }
    let mut status = None;
    let mut command_uuid = None;
    let mut security = None;
    let mut device = None;
    let mut ignored_keys = Vec::new();
    while let Some(key) = dictionary_key(&mut next)? {
        let value = value_of(&mut next)?;
        match key.as_str() {
            "Status" => status = Some(short_string(value, "Status")?),
            "CommandUUID" => command_uuid = Some(short_string(value, "CommandUUID")?),
            "SecurityInfo" => match value {
                Event::StartDictionary(_) => {
                    security = Some(security_facts(&mut next, &mut ignored_keys)?);
                }
                other => {
                    skip(other, &mut next)?;
                    ignored_keys.push("SecurityInfo".into());
                }
            },
            "QueryResponses" => match value {
                Event::StartDictionary(_) => {
                    device = Some(device_facts(&mut next, &mut ignored_keys)?);
                }
                other => {
                    skip(other, &mut next)?;
                    ignored_keys.push("QueryResponses".into());
                }
            },
            _ => skip(value, &mut next)?,
        }
    }
    if next()?.is_some() {
        return Err(ReportError::NotPlist(
            "data after the top dictionary".into(),
        ));
    }
    let status = status.ok_or(ReportError::Missing("Status"))?;
    // Idle carries no CommandUUID: nothing answered.
    let Some(command_uuid) = command_uuid else {
        return if status == "Idle" {
            Ok(None)
        } else {
            Err(ReportError::Missing("CommandUUID"))
        };
    };
    let Some(kind) = CommandKind::of_command_uuid(&command_uuid) else {
        return Ok(None);
    };
    let status = match status.as_str() {
        "Acknowledged" => ReportStatus::Acknowledged,
        "Error" | "CommandFormatError" => ReportStatus::Error,
        "NotNow" => ReportStatus::NotNow,
        _ => return Err(ReportError::UnknownStatus(status)),
    };
    // Only an acknowledged answer of the right kind carries facts.
    let acknowledged = status == ReportStatus::Acknowledged;
    Ok(Some(CommandReport {
        command_uuid,
        kind,
        status,
        security: security.filter(|_| acknowledged && kind == CommandKind::SecurityInfo),
        device: device.filter(|_| acknowledged && kind == CommandKind::DeviceInformation),
        ignored_keys,
    }))
}

/// The value after a dictionary key.
fn value_of(next: &mut Next<'_>) -> Result<Event<'static>, ReportError> {
    match next()? {
        Some(Event::EndCollection) | None => {
            Err(ReportError::NotPlist("a key has no value".into()))
        }
        Some(value) => Ok(value),
    }
}

/// The next key of a dictionary, or `None` at its end.
fn dictionary_key(next: &mut Next<'_>) -> Result<Option<String>, ReportError> {
    match next()? {
        Some(Event::EndCollection) => Ok(None),
        Some(Event::String(key)) => Ok(Some(key.into_owned())),
        Some(_) => Err(ReportError::NotPlist(
            "a dictionary key is not a string".into(),
        )),
        None => Err(ReportError::NotPlist("a dictionary is not closed".into())),
    }
}

fn short_string(value: Event<'static>, key: &'static str) -> Result<String, ReportError> {
    match value {
        Event::String(s) if s.len() <= MAX_STRING => Ok(s.into_owned()),
        _ => Err(ReportError::WrongType(key)),
    }
}

/// A string or boolean value of a dictionary: `None` (and the key named in `ignored`) when it
/// has another type or is too long; containers are skipped.
fn typed<T>(
    value: Event<'static>,
    next: &mut Next<'_>,
    ignored: &mut Vec<String>,
    name: String,
    read: impl FnOnce(&Event<'static>) -> Option<T>,
) -> Result<Option<T>, ReportError> {
    match read(&value) {
        Some(v) => Ok(Some(v)),
        None => {
            skip(value, next)?;
            ignored.push(name);
            Ok(None)
        }
    }
}

fn string(event: &Event<'static>) -> Option<String> {
    match event {
        Event::String(s) if s.len() <= MAX_STRING => Some(s.to_string()),
        _ => None,
    }
}

fn boolean(event: &Event<'static>) -> Option<bool> {
    match event {
        Event::Boolean(b) => Some(*b),
        _ => None,
    }
}

fn security_facts(
    next: &mut Next<'_>,
    ignored: &mut Vec<String>,
) -> Result<SecurityFacts, ReportError> {
    let mut facts = SecurityFacts::default();
    while let Some(key) = dictionary_key(next)? {
        let value = value_of(next)?;
        let name = format!("SecurityInfo.{key}");
        match key.as_str() {
            "BootstrapTokenAllowedForAuthentication" => {
                facts.bootstrap_token_allowed = typed(value, next, ignored, name, string)?;
            }
            "BootstrapTokenRequiredForSoftwareUpdate" => {
                facts.bootstrap_token_required_for_software_update =
                    typed(value, next, ignored, name, boolean)?;
            }
            _ => skip(value, next)?,
        }
    }
    Ok(facts)
}

fn device_facts(
    next: &mut Next<'_>,
    ignored: &mut Vec<String>,
) -> Result<DeviceFacts, ReportError> {
    let mut facts = DeviceFacts::default();
    while let Some(key) = dictionary_key(next)? {
        let value = value_of(next)?;
        let name = format!("QueryResponses.{key}");
        match key.as_str() {
            "SerialNumber" => facts.serial_number = typed(value, next, ignored, name, string)?,
            "ProductName" => facts.product_name = typed(value, next, ignored, name, string)?,
            "OSVersion" => facts.os_version = typed(value, next, ignored, name, string)?,
            "BuildVersion" => facts.build_version = typed(value, next, ignored, name, string)?,
            "IsSupervised" => facts.is_supervised = typed(value, next, ignored, name, boolean)?,
            "SoftwareUpdateDeviceID" => {
                facts.software_update_device_id = typed(value, next, ignored, name, string)?;
            }
            "IsAppleSilicon" => {
                facts.is_apple_silicon = typed(value, next, ignored, name, boolean)?;
            }
            _ => skip(value, next)?,
        }
    }
    Ok(facts)
}

/// Skips one value; containers are walked to their end (bounded by depth and the budget).
fn skip(first: Event<'static>, next: &mut Next<'_>) -> Result<(), ReportError> {
    let mut depth = match first {
        Event::StartArray(_) | Event::StartDictionary(_) => 1usize,
        _ => return Ok(()),
    };
    while depth > 0 {
        match next()? {
            Some(Event::StartArray(_) | Event::StartDictionary(_)) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(ReportError::TooLarge);
                }
            }
            Some(Event::EndCollection) => depth -= 1,
            Some(_) => {}
            None => return Err(ReportError::NotPlist("a collection is not closed".into())),
        }
    }
    Ok(())
}

impl CommandReport {
    /// Applies the facts of this report to `device` as facts from the MDM true at `at` (the
    /// webhook event's `created_at`); a newer fact already held wins. Returns whether anything
    /// changed.
    pub fn apply(&self, device: &mut MdmDevice, at: Timestamp) -> bool {
        let mut changed = false;
        let mut set = |changed_one: bool| changed |= changed_one;
        if let Some(security) = &self.security {
            if let Some(required) = security.bootstrap_token_required_for_software_update {
                set(Fact::update(
                    &mut device.bootstrap_token_required,
                    Fact::new(required, Source::Mdm, at),
                ));
            }
            // The key exists only on Apple silicon (macOS 11+), whatever its value.
            if security.bootstrap_token_allowed.is_some() {
                set(Fact::update(
                    &mut device.apple_silicon,
                    Fact::new(true, Source::Mdm, at),
                ));
            }
        }
        if let Some(facts) = &self.device {
            let strings = [
                (&facts.serial_number, &mut device.serial_number),
                (&facts.product_name, &mut device.model),
                (&facts.os_version, &mut device.os_version),
                (&facts.build_version, &mut device.build_version),
                (
                    &facts.software_update_device_id,
                    &mut device.software_update_device_id,
                ),
            ];
            for (value, slot) in strings {
                if let Some(value) = value.as_ref().filter(|v| !v.is_empty()) {
                    set(Fact::update(
                        slot,
                        Fact::new(value.clone(), Source::Mdm, at),
                    ));
                }
            }
            let booleans = [
                (facts.is_supervised, &mut device.supervised),
                (facts.is_apple_silicon, &mut device.apple_silicon),
            ];
            for (value, slot) in booleans {
                if let Some(value) = value {
                    set(Fact::update(slot, Fact::new(value, Source::Mdm, at)));
                }
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mdm::commands::{CommandKind, command_uuid};
    use crate::mdm::facts::Enrollment;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn report(body: &str) -> Vec<u8> {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict>{body}</dict></plist>"#
        )
        .into_bytes()
    }

    fn uuid(kind: CommandKind) -> String {
        command_uuid(kind, "UDID-1", at("2026-12-07T10:00:00Z"))
    }

    /// A SecurityInfo answer of an Apple-silicon Mac on macOS 15, keys from
    /// information.security.yaml (firewall and secure boot dictionaries included to be skipped).
    fn security_info_answer(required: &str) -> Vec<u8> {
        report(&format!(
            "<key>CommandUUID</key><string>{}</string>\
             <key>SecurityInfo</key><dict>\
               <key>AuthenticatedRootVolumeEnabled</key><true/>\
               <key>BootstrapTokenAllowedForAuthentication</key><string>allowed</string>\
               <key>BootstrapTokenRequiredForKernelExtensionApproval</key><true/>\
               <key>BootstrapTokenRequiredForSoftwareUpdate</key>{required}\
               <key>FDE_Enabled</key><true/>\
               <key>FirewallSettings</key><dict>\
                 <key>Applications</key><array><dict><key>Allowed</key><true/>\
                   <key>BundleID</key><string>com.example.app</string></dict></array>\
                 <key>BlockAllIncoming</key><false/><key>FirewallEnabled</key><true/>\
                 <key>StealthMode</key><false/></dict>\
               <key>FirmwarePasswordStatus</key><dict><key>PasswordExists</key><false/></dict>\
               <key>IsRecoveryLockEnabled</key><false/>\
               <key>ManagementStatus</key><dict><key>EnrolledViaDEP</key><true/>\
                 <key>IsUserEnrollment</key><false/><key>UserApprovedEnrollment</key><true/></dict>\
               <key>SecureBoot</key><dict><key>ExternalBootLevel</key><string>disallowed</string>\
                 <key>SecureBootLevel</key><string>full</string></dict>\
               <key>SystemIntegrityProtectionEnabled</key><true/>\
             </dict>\
             <key>Status</key><string>Acknowledged</string>\
             <key>UDID</key><string>UDID-1</string>",
            uuid(CommandKind::SecurityInfo)
        ))
    }

    fn device_information_answer(supervised: &str) -> Vec<u8> {
        report(&format!(
            "<key>CommandUUID</key><string>{}</string>\
             <key>QueryResponses</key><dict>\
               <key>BuildVersion</key><string>24G84</string>\
               <key>IsAppleSilicon</key><true/>\
               <key>IsSupervised</key>{supervised}\
               <key>OSVersion</key><string>15.6</string>\
               <key>ProductName</key><string>Mac14,2</string>\
               <key>SerialNumber</key><string>C02XK1ABCD</string>\
               <key>SoftwareUpdateDeviceID</key><string>J413AP</string>\
               <key>UDID</key><string>UDID-1</string>\
             </dict>\
             <key>Status</key><string>Acknowledged</string>\
             <key>UDID</key><string>UDID-1</string>",
            uuid(CommandKind::DeviceInformation)
        ))
    }

    fn mac() -> MdmDevice {
        MdmDevice::new(
            "UDID-1",
            Enrollment::Enrolled {
                since: at("2026-12-01T00:00:00Z"),
            },
        )
    }

    #[test]
    fn a_security_info_answer_says_whether_a_bootstrap_token_is_required() {
        let parsed = parse_report(&security_info_answer("<true/>"))
            .expect("valid")
            .expect("ours");
        assert_eq!(parsed.kind, CommandKind::SecurityInfo);
        assert_eq!(parsed.status, ReportStatus::Acknowledged);
        assert!(parsed.ignored_keys.is_empty());
        let mut device = mac();
        let when = at("2026-12-07T11:14:52.86478793Z");
        assert!(parsed.apply(&mut device, when));
        let required = device.bootstrap_token_required.clone().expect("fact");
        assert_eq!(
            (required.value, required.source, required.at),
            (true, Source::Mdm, when)
        );
        assert_eq!(device.apple_silicon.as_ref().map(|f| f.value), Some(true));
        // The same answer again changes nothing; an older one (a late event) neither.
        assert!(!parsed.apply(&mut device, when));
        let older = parse_report(&security_info_answer("<false/>"))
            .expect("valid")
            .expect("ours");
        assert!(!older.apply(&mut device, at("2026-12-07T11:00:00Z")));
        assert_eq!(device.bootstrap_token_required.map(|f| f.value), Some(true));
    }

    #[test]
    fn an_intel_mac_answers_without_the_bootstrap_keys() {
        let body = format!(
            "<key>CommandUUID</key><string>{}</string>\
             <key>SecurityInfo</key><dict><key>FDE_Enabled</key><false/>\
             <key>SystemIntegrityProtectionEnabled</key><true/></dict>\
             <key>Status</key><string>Acknowledged</string>",
            uuid(CommandKind::SecurityInfo)
        );
        let parsed = parse_report(&report(&body)).expect("valid").expect("ours");
        let mut device = mac();
        assert!(!parsed.apply(&mut device, at("2026-12-07T11:00:00Z")));
        assert_eq!(device.apple_silicon, None);
        assert_eq!(device.bootstrap_token_required, None);
    }

    #[test]
    fn a_device_information_answer_fills_supervision_board_id_and_chip() {
        let parsed = parse_report(&device_information_answer("<true/>"))
            .expect("valid")
            .expect("ours");
        assert_eq!(parsed.kind, CommandKind::DeviceInformation);
        let mut device = mac();
        let when = at("2026-12-07T12:00:00Z");
        assert!(parsed.apply(&mut device, when));
        assert_eq!(device.supervised.as_ref().map(|f| f.value), Some(true));
        assert_eq!(
            device
                .software_update_device_id
                .as_ref()
                .map(|f| f.value.as_str()),
            Some("J413AP")
        );
        assert_eq!(device.apple_silicon.as_ref().map(|f| f.value), Some(true));
        assert_eq!(
            device.model.as_ref().map(|f| f.value.as_str()),
            Some("Mac14,2")
        );
        assert_eq!(
            device.os_version.as_ref().map(|f| f.value.as_str()),
            Some("15.6")
        );
        assert_eq!(
            device.build_version.as_ref().map(|f| f.value.as_str()),
            Some("24G84")
        );
        assert_eq!(
            device
                .serial_number
                .as_ref()
                .map(|f| (f.value.as_str(), f.source)),
            Some(("C02XK1ABCD", Source::Mdm))
        );
    }

    #[test]
    fn a_wrong_type_leaves_that_key_out_and_names_it() {
        let parsed = parse_report(&device_information_answer("<string>yes</string>"))
            .expect("read")
            .expect("ours");
        assert_eq!(parsed.ignored_keys, ["QueryResponses.IsSupervised"]);
        let mut device = mac();
        assert!(parsed.apply(&mut device, at("2026-12-07T12:00:00Z")));
        assert_eq!(device.supervised, None);
        assert!(device.software_update_device_id.is_some());
        // A container where a boolean belongs, and a whole SecurityInfo of the wrong type.
        let parsed = parse_report(&security_info_answer(
            "<dict><key>a</key><array><true/></array></dict>",
        ))
        .expect("read")
        .expect("ours");
        assert_eq!(
            parsed.ignored_keys,
            ["SecurityInfo.BootstrapTokenRequiredForSoftwareUpdate"]
        );
        let body = format!(
            "<key>CommandUUID</key><string>{}</string>\
             <key>SecurityInfo</key><string>nope</string>\
             <key>Status</key><string>Acknowledged</string>",
            uuid(CommandKind::SecurityInfo)
        );
        let parsed = parse_report(&report(&body)).expect("read").expect("ours");
        assert_eq!(parsed.ignored_keys, ["SecurityInfo"]);
        assert_eq!(parsed.security, None);
    }

    #[test]
    fn error_and_not_now_carry_no_facts() {
        for (status, expected) in [
            ("Error", ReportStatus::Error),
            ("CommandFormatError", ReportStatus::Error),
            ("NotNow", ReportStatus::NotNow),
        ] {
            let body = format!(
                "<key>CommandUUID</key><string>{}</string>\
                 <key>ErrorChain</key><array><dict><key>ErrorCode</key><integer>12021</integer>\
                 <key>ErrorDomain</key><string>MCMDMErrorDomain</string></dict></array>\
                 <key>Status</key><string>{status}</string>",
                uuid(CommandKind::SecurityInfo)
            );
            let parsed = parse_report(&report(&body)).expect("read").expect("ours");
            assert_eq!(parsed.status, expected);
            assert_eq!(parsed.security, None);
            assert!(!parsed.apply(&mut mac(), at("2026-12-07T12:00:00Z")));
        }
    }

    #[test]
    fn idle_and_other_commands_are_not_ours() {
        let idle =
            report("<key>Status</key><string>Idle</string><key>UDID</key><string>U</string>");
        assert_eq!(parse_report(&idle), Ok(None));
        let other = report(
            "<key>CommandUUID</key><string>cmd-0001</string>\
             <key>Status</key><string>Acknowledged</string>",
        );
        assert_eq!(parse_report(&other), Ok(None));
    }

    #[test]
    fn bad_input_is_an_error_never_a_panic() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{\"not\": \"a plist\"}".to_vec(), "not_plist"),
            (Vec::new(), "not_plist"),
            (report("<key>Status</key>"), "not_plist"),
            (
                report("<key>Status</key><integer>1</integer>"),
                "wrong_type",
            ),
            (
                br#"<?xml version="1.0"?><plist version="1.0"><array/></plist>"#.to_vec(),
                "not_a_dictionary",
            ),
            (
                report(&format!(
                    "<key>CommandUUID</key><string>{}</string>",
                    uuid(CommandKind::SecurityInfo)
                )),
                "missing_key",
            ),
            (
                report(&format!(
                    "<key>CommandUUID</key><string>{}</string><key>Status</key><string>Maybe</string>",
                    uuid(CommandKind::SecurityInfo)
                )),
                "unknown_status",
            ),
            (
                report(&format!(
                    "<key>Status</key><string>Acknowledged</string><key>X</key>{}{}",
                    "<array>".repeat(40),
                    "</array>".repeat(40)
                )),
                "too_large",
            ),
        ];
        for (bytes, reason) in cases {
            let error = parse_report(&bytes).expect_err(reason);
            assert_eq!(error.reason(), reason, "{error}");
        }
    }

    #[test]
    fn a_binary_plist_bomb_costs_a_bounded_read() {
        // One string shared by a million array slots: tiny bytes, a huge tree if expanded.
        let element = plist::Value::String("x".into());
        let mut top = plist::Dictionary::new();
        top.insert("Status".into(), plist::Value::String("Acknowledged".into()));
        top.insert(
            "QueryResponses".into(),
            plist::Value::Array(vec![element; 100_000]),
        );
        let mut bytes = Vec::new();
        plist::Value::Dictionary(top)
            .to_writer_binary(&mut bytes)
            .expect("binary plist");
        let started = std::time::Instant::now();
        let error = parse_report(&bytes).expect_err("too large");
        assert_eq!(error.reason(), "too_large");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
