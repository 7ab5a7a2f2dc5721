//! What devices report through DDM status: parsing a report, merging incremental reports into a
//! device's state (a `FullReport` replaces it), and reading the items the operator uses. Pure:
//! the store persists what this computes.

pub mod bucket;
pub mod limit;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The largest status report body accepted (real ones are a few KB).
pub const MAX_REPORT_BYTES: usize = 1024 * 1024;

// What one device may cost the operator (issue 12). Real merged states are 2–20 KB and real
// reports 0.5–10 KB; the caps leave a wide margin over that while bounding a device that sends
// megabytes on purpose.

/// The largest merged state kept per device: a report that would grow it beyond this is
/// refused (413) and the state stays as it was.
pub const MAX_STATE_BYTES: usize = 256 * 1024;
/// Raw reports kept per enrollment (the newest ones).
pub const HISTORY_REPORTS: usize = 16;
/// Bytes of raw reports kept per enrollment; a single report larger than this is merged but not
/// kept.
pub const HISTORY_BYTES_PER_ENROLLMENT: usize = 64 * 1024;
/// Bytes of raw reports kept in all (a quarter of the chart's default 1 Gi volume); beyond it
/// the oldest reports go first, whichever device sent them.
pub const HISTORY_BYTES_TOTAL: i64 = 256 * 1024 * 1024;
/// An enrollment that never reported and is not in the inventory is forgotten this long after
/// its set was last written.
pub const FORGET_UNREPORTED_AFTER: jiff::SignedDuration = jiff::SignedDuration::from_hours(7 * 24);
/// The most a device's summary (what the resolver keeps in memory per device) may take,
/// serialised: a restart reads only these, so its time and memory do not depend on how large
/// merged states are.
pub const SUMMARY_MAX_BYTES: usize = 2 * 1024;

/// How deep status JSON may nest (Apple's items nest four or five levels).
const MAX_DEPTH: usize = 32;

/// One status report as the device sends it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct StatusReport {
    #[serde(rename = "StatusItems", default)]
    pub status_items: Map<String, Value>,
    #[serde(rename = "Errors", default)]
    pub errors: Vec<Value>,
    #[serde(rename = "FullReport", default)]
    pub full_report: bool,
}

/// Why a report was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the report is {0} bytes; at most {MAX_REPORT_BYTES} are accepted")]
    TooLarge(usize),
    #[error("not a status report: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not a status report: nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

impl StatusReport {
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ReportError> {
        if bytes.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge(bytes.len()));
        }
        let crate::strict::ObjectOnly(report) =
            serde_json::from_slice::<crate::strict::ObjectOnly<StatusReport>>(bytes)?;
        let deep = |v: &Value| depth(v) > MAX_DEPTH;
        if report.status_items.values().any(deep) || report.errors.iter().any(deep) {
            return Err(ReportError::TooDeep);
        }
        Ok(report)
    }
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Folds a report into the stored status items: a full report replaces them, an incremental one
/// merges objects key by key (arrays and values are replaced whole).
pub fn merge(state: &mut Map<String, Value>, report: &StatusReport) {
    if report.full_report {
        *state = report.status_items.clone();
        return;
    }
    merge_objects(state, &report.status_items, "");
}

/// Objects merge key by key down to a status item; an item's value is replaced whole, so a key
/// the device dropped (a failure reason after a successful retry) does not linger.
fn merge_objects(into: &mut Map<String, Value>, from: &Map<String, Value>, prefix: &str) {
    for (key, value) in from {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let is_item = crate::declarations::STATUS_ITEMS
            .iter()
            .any(|(name, _)| *name == path);
        match (into.get_mut(key), value) {
            (Some(Value::Object(existing)), Value::Object(incoming)) if !is_item => {
                merge_objects(existing, incoming, &path)
            }
            _ => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

/// `softwareupdate.install-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum InstallState {
    None,
    Waiting,
    Downloading,
    Prepared,
    Installing,
    Failed,
    /// A value this version of the operator does not know.
    Unknown,
}

impl InstallState {
    fn parse(value: &str) -> Self {
        match value {
            "none" => Self::None,
            "waiting" => Self::Waiting,
            "downloading" => Self::Downloading,
            "prepared" => Self::Prepared,
            "installing" => Self::Installing,
            "failed" => Self::Failed,
            _ => Self::Unknown,
        }
    }
}

/// One entry of `management.declarations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeclarationStatus {
    pub identifier: String,
    pub server_token: String,
    pub active: bool,
    /// `valid`, `invalid` or `unknown`.
    pub valid: String,
    /// Reason codes, such as `Error.ConfigurationCannotBeApplied`.
    pub reasons: Vec<String>,
}

/// The items the operator reads, out of a device's merged status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceStatus {
    pub install_state: Option<InstallState>,
    pub pending_version: Option<String>,
    pub pending_build: Option<String>,
    pub failure_count: Option<u64>,
    pub failure_reason: Option<String>,
    pub install_reason: Vec<String>,
    pub beta_enrollment: Option<String>,
    pub software_update_device_id: Option<String>,
    pub os_family: Option<String>,
    pub os_version: Option<String>,
    pub build_version: Option<String>,
    pub supplemental_extra: Option<String>,
    pub supplemental_build: Option<String>,
    pub model_identifier: Option<String>,
    pub model_family: Option<String>,
    pub marketing_name: Option<String>,
    pub serial_number: Option<String>,
    /// Configurations, activations, assets and management declarations together.
    pub declarations: Vec<DeclarationStatus>,
}

/// The item at a dotted path of merged status items, such as `softwareupdate.install-state`.
pub(crate) fn at<'a>(items: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut current = items.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// A non-empty text item, at most 256 characters (a device's text is bounded before it is shown).
pub(crate) fn text(items: &Map<String, Value>, path: &str) -> Option<String> {
    at(items, path)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(|s| s.chars().take(256).collect())
}

impl DeviceStatus {
    /// Reads the known items; anything malformed is treated as not reported.
    pub fn from_items(items: &Map<String, Value>) -> Self {
        let declarations = at(items, "management.declarations")
            .and_then(Value::as_object)
            .map(|kinds| {
                kinds
                    .values()
                    .filter_map(Value::as_array)
                    .flatten()
                    .filter_map(declaration_status)
                    .collect()
            })
            .unwrap_or_default();
        DeviceStatus {
            install_state: at(items, "softwareupdate.install-state")
                .and_then(Value::as_str)
                .map(InstallState::parse),
            pending_version: text(items, "softwareupdate.pending-version.os-version"),
            pending_build: text(items, "softwareupdate.pending-version.build-version"),
            failure_count: at(items, "softwareupdate.failure-reason.count").and_then(Value::as_u64),
            failure_reason: text(items, "softwareupdate.failure-reason.reason"),
            install_reason: at(items, "softwareupdate.install-reason.reason")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            beta_enrollment: text(items, "softwareupdate.beta-enrollment"),
            software_update_device_id: text(items, "softwareupdate.device-id"),
            os_family: text(items, "device.operating-system.family"),
            os_version: text(items, "device.operating-system.version"),
            build_version: text(items, "device.operating-system.build-version"),
            supplemental_extra: text(items, "device.operating-system.supplemental.extra-version"),
            supplemental_build: text(items, "device.operating-system.supplemental.build-version"),
            model_identifier: text(items, "device.model.identifier"),
            model_family: text(items, "device.model.family"),
            marketing_name: text(items, "device.model.marketing-name"),
            serial_number: text(items, "device.identifier.serial-number"),
            declarations,
        }
    }
}

impl DeviceStatus {
    /// The bounded copy the store keeps for the resolver, at most [`SUMMARY_MAX_BYTES`]
    /// serialised: of `management.declarations` only the entries a device rejected (the only
    /// ones the operator acts on: a failed enforcement, a refused bootstrap set), and shorter
    /// texts if a hostile device filled them.
    pub fn summary(&self) -> DeviceStatus {
        let mut summary = self.clone();
        summary.declarations.retain(|d| d.valid == "invalid");
        summary.declarations.truncate(16);
        summary.install_reason.truncate(8);
        for declaration in &mut summary.declarations {
            declaration.reasons.truncate(4);
        }
        let mut limit = 256;
        loop {
            let size = serde_json::to_vec(&summary).map_or(usize::MAX, |b| b.len());
            if size <= SUMMARY_MAX_BYTES {
                return summary;
            }
            if summary.declarations.pop().is_some() || summary.install_reason.pop().is_some() {
                continue;
            }
            if limit <= 8 {
                // Every text is at most 8 characters here: far below the cap.
                return summary;
            }
            limit /= 4;
            summary.shorten_texts(limit);
        }
    }

    /// What a listing of every device keeps of a summary in memory: what the resolver and the
    /// status read. Of each rejected declaration only which one it is (its server token and
    /// reason codes are read from the merged state, never from a listing), and no marketing
    /// name. A listing holds one per device for a whole pass: these are most of its bytes.
    pub fn resident(mut self) -> DeviceStatus {
        for declaration in &mut self.declarations {
            declaration.server_token = String::new();
            declaration.reasons = Vec::new();
        }
        self.declarations.shrink_to_fit();
        self.marketing_name = None;
        self
    }

    fn shorten_texts(&mut self, limit: usize) {
        let cut = |text: &mut Option<String>| {
            if let Some(text) = text {
                *text = text.chars().take(limit).collect();
            }
        };
        for text in [
            &mut self.pending_version,
            &mut self.pending_build,
            &mut self.failure_reason,
            &mut self.beta_enrollment,
            &mut self.software_update_device_id,
            &mut self.os_family,
            &mut self.os_version,
            &mut self.build_version,
            &mut self.supplemental_extra,
            &mut self.supplemental_build,
            &mut self.model_identifier,
            &mut self.model_family,
            &mut self.marketing_name,
            &mut self.serial_number,
        ] {
            cut(text);
        }
    }
}

fn declaration_status(entry: &Value) -> Option<DeclarationStatus> {
    let entry = entry.as_object()?;
    let field = |key: &str| {
        entry
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Some(DeclarationStatus {
        identifier: entry.get("identifier")?.as_str()?.to_string(),
        server_token: field("server-token"),
        active: entry
            .get("active")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        valid: field("valid"),
        reasons: entry
            .get("reasons")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(|reason| reason.get("code").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KMFDDM_IOS: &[u8] = include_bytes!(
        "../../tests/fixtures/ddm-status/kmfddm-ios16.0b-iPhone10-2-2022-06-28.status.json"
    );
    const ZENTRAL_MAC: &[u8] = include_bytes!(
        "../../tests/fixtures/ddm-status/zentral-macos13.3.1a-Macmini9-1.status_report.json"
    );
    const KMFDDM_ERROR: &[u8] =
        include_bytes!("../../tests/fixtures/ddm-status/kmfddm-status.D0.error.json");

    #[test]
    fn real_reports_parse_and_read() {
        let report = StatusReport::from_slice(KMFDDM_IOS).expect("real report");
        let mut state = Map::new();
        merge(&mut state, &report);
        let status = DeviceStatus::from_items(&state);
        assert_eq!(status.model_identifier.as_deref(), Some("iPhone10,2"));
        assert_eq!(status.os_version.as_deref(), Some("16.0"));
        assert_eq!(status.build_version.as_deref(), Some("20A5303i"));

        let mac = StatusReport::from_slice(ZENTRAL_MAC).expect("real report");
        let mut state = Map::new();
        merge(&mut state, &mac);
        let status = DeviceStatus::from_items(&state);
        assert_eq!(status.os_version.as_deref(), Some("13.3.1"));
        assert_eq!(status.supplemental_extra.as_deref(), Some("(a)"));
        assert_eq!(status.build_version.as_deref(), Some("22E261"));
        assert_eq!(status.supplemental_build.as_deref(), Some("22E772610a"));

        let error = StatusReport::from_slice(KMFDDM_ERROR).expect("real report");
        let mut state = Map::new();
        merge(&mut state, &error);
        let status = DeviceStatus::from_items(&state);
        let test = status
            .declarations
            .iter()
            .find(|d| d.identifier == "com.example.test")
            .expect("the configuration is listed");
        assert_eq!((test.active, test.valid.as_str()), (false, "unknown"));
        assert_eq!(test.reasons, ["Info.NotReferencedByActivation"]);
    }

    #[test]
    fn incremental_reports_merge_and_full_reports_replace() {
        let first = StatusReport::from_slice(
            br#"{"StatusItems":{"device":{"operating-system":{"version":"26.3","build-version":"23D127"}},
                "softwareupdate":{"install-state":"downloading","pending-version":{"os-version":"26.4","build-version":"23E246"}}}}"#,
        )
        .expect("valid");
        let second = StatusReport::from_slice(
            br#"{"StatusItems":{"softwareupdate":{"install-state":"installing"}},"Errors":[]}"#,
        )
        .expect("valid");
        let mut state = Map::new();
        merge(&mut state, &first);
        merge(&mut state, &second);
        let status = DeviceStatus::from_items(&state);
        assert_eq!(status.install_state, Some(InstallState::Installing));
        assert_eq!(status.pending_version.as_deref(), Some("26.4"));
        assert_eq!(status.os_version.as_deref(), Some("26.3"));

        // An item's value is replaced whole: the dropped `reason` does not linger.
        let failed = StatusReport::from_slice(
            br#"{"StatusItems":{"softwareupdate":{"failure-reason":{"count":1,"reason":"X"}}}}"#,
        )
        .expect("valid");
        let recovered = StatusReport::from_slice(
            br#"{"StatusItems":{"softwareupdate":{"failure-reason":{"count":0}}}}"#,
        )
        .expect("valid");
        merge(&mut state, &failed);
        merge(&mut state, &recovered);
        let status = DeviceStatus::from_items(&state);
        assert_eq!(
            (status.failure_count, status.failure_reason),
            (Some(0), None)
        );
        assert_eq!(
            status.pending_version.as_deref(),
            Some("26.4"),
            "siblings stay"
        );

        let full = StatusReport::from_slice(
            br#"{"StatusItems":{"device":{"operating-system":{"version":"26.4"}}},"FullReport":true}"#,
        )
        .expect("valid");
        merge(&mut state, &full);
        let status = DeviceStatus::from_items(&state);
        assert_eq!(status.install_state, None);
        assert_eq!(status.os_version.as_deref(), Some("26.4"));
    }

    #[test]
    fn hostile_reports_are_refused_or_ignored() {
        assert!(StatusReport::from_slice(b"[]").is_err());
        assert!(StatusReport::from_slice(b"{\"StatusItems\": 5}").is_err());
        assert!(StatusReport::from_slice(&vec![b' '; MAX_REPORT_BYTES + 1]).is_err());
        let deep = format!(
            "{{\"StatusItems\":{{\"a\":{}1{}}}}}",
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(StatusReport::from_slice(deep.as_bytes()).is_err());
        // Wrong types inside known items read as "not reported"; unknown items are kept.
        let odd = StatusReport::from_slice(
            br#"{"StatusItems":{"softwareupdate":{"install-state":7,"future-item":{"x":1}}}}"#,
        )
        .expect("valid envelope");
        let mut state = Map::new();
        merge(&mut state, &odd);
        assert_eq!(DeviceStatus::from_items(&state).install_state, None);
        assert!(at(&state, "softwareupdate.future-item.x").is_some());
    }
}
