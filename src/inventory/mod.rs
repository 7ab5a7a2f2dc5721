//! The device inventory: which devices exist, what they run and how they are enrolled. Read
//! from a YAML or JSON file for `plan` and tests; learned from device reports in the backend.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::{Build, OsVersion, Platform};

/// How the device is enrolled in MDM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EnrollmentType {
    /// Device enrollment (profile-based).
    #[default]
    Device,
    /// User enrollment (BYOD); software-update declarations do not apply.
    User,
    /// Automated Device Enrollment.
    Ade,
}

/// One device as the inventory file writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawDevice {
    enrollment_id: String,
    #[serde(default)]
    serial_number: Option<String>,
    platform: Platform,
    model: String,
    #[serde(default)]
    software_update_device_id: Option<String>,
    os_version: String,
    #[serde(default)]
    build_version: Option<String>,
    #[serde(default)]
    supplemental_extra: Option<String>,
    #[serde(default)]
    supervised: bool,
    #[serde(default)]
    enrollment_type: EnrollmentType,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Macs: whether it has Apple silicon (enforced updates then need an escrowed bootstrap
    /// token to install without asking the user).
    #[serde(default)]
    apple_silicon: Option<bool>,
    /// Macs: whether the MDM holds the Mac's escrowed bootstrap token.
    #[serde(default)]
    bootstrap_token_escrowed: Option<bool>,
}

/// A checked device.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub enrollment_id: String,
    pub serial_number: Option<String>,
    pub platform: Platform,
    /// Model identifier, such as `iPhone15,2` or `Mac14,2`.
    pub model: String,
    /// What Apple's catalog lists the device under: a board id for Macs, otherwise the product
    /// type (which is the model identifier).
    pub software_update_device_id: Option<String>,
    /// Running version, including any supplemental extra.
    pub os_version: OsVersion,
    pub build_version: Option<Build>,
    pub supervised: bool,
    pub enrollment_type: EnrollmentType,
    pub labels: BTreeMap<String, String>,
    /// What is known of a Mac's bootstrap token (nothing, for other devices).
    #[serde(skip_serializing_if = "BootstrapToken::is_unknown")]
    pub bootstrap_token: BootstrapToken,
}

/// What is known of a Mac's bootstrap token, each fact `None` until a source says it. Apple: "To
/// authorize an enforced software update on a supervised Mac computer with Apple silicon, an MDM
/// solution can request and escrow a bootstrap token"; without one the Mac asks its user for an
/// administrator's password when the update is enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapToken {
    /// Apple silicon (`IsAppleSilicon`; the inventory's `appleSilicon`).
    pub apple_silicon: Option<bool>,
    /// `BootstrapTokenRequiredForSoftwareUpdate` from SecurityInfo.
    pub required: Option<bool>,
    /// Whether the MDM holds an escrowed token (`mdm.SetBootstrapToken`; the inventory's
    /// `bootstrapTokenEscrowed`).
    pub escrowed: Option<bool>,
}

impl BootstrapToken {
    pub fn is_unknown(&self) -> bool {
        *self == BootstrapToken::default()
    }

    /// Whether an enforced update would ask the Mac's user to authenticate: it needs a token
    /// (Apple silicon, or SecurityInfo says so) and none is known to be escrowed.
    pub fn missing(&self) -> bool {
        let needed = self.apple_silicon == Some(true) || self.required == Some(true);
        needed && self.escrowed != Some(true)
    }
}

impl Device {
    /// The id to look the device up in the catalog; `None` for a Mac whose board id is not
    /// known yet (DDM reports it from macOS 15; MDM and MachineInfo from 14.4).
    pub fn catalog_device_id(&self) -> Option<&str> {
        match (&self.software_update_device_id, self.platform) {
            (Some(id), _) => Some(id),
            (None, Platform::MacOs) => None,
            (None, _) => Some(&self.model),
        }
    }
}

/// When an inventory file's facts were true, for comparing them with the MDM's and the devices'
/// own: its modification time (a restart does not make them newer). A file without one, or
/// modified after `loaded` on the operator's clock (a virtual clock, as tests and simulations
/// set back), counts as older than anything else said.
pub fn file_time(path: &std::path::Path, loaded: jiff::Timestamp) -> jiff::Timestamp {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| jiff::Timestamp::try_from(t).ok())
        .filter(|modified| *modified <= loaded)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// Reads YAML (JSON is YAML, but read by serde_json when it is JSON: much faster) with a budget
/// sized for inventories of a few hundred thousand devices; alias limits stay at their defaults.
fn read_document(text: &str) -> Result<serde_json::Value, String> {
    let trimmed = text.trim_start();
    if (trimmed.starts_with('[') || trimmed.starts_with('{'))
        && let Ok(value) = serde_json::from_str(text)
    {
        return Ok(value);
    }
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 50_000_000;
    budget.max_events = 100_000_000;
    budget.max_total_scalar_bytes = 512 * 1024 * 1024;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    serde_saphyr::from_str_with_options(text, options).map_err(|e| e.to_string())
}

/// Reads an inventory from YAML or JSON text: a list of devices, or `{devices: [...]}`. Every
/// bad device is listed as `devices[i] (enrollmentId): why`; duplicates of an enrollment id are
/// refused.
pub fn parse(text: &str) -> Result<Vec<Device>, Vec<String>> {
    let not_inventory = |why: String| vec![format!("not an inventory (a list of devices): {why}")];
    let values = match read_document(text).map_err(not_inventory)? {
        serde_json::Value::Array(values) => values,
        serde_json::Value::Object(mut map) => match map.remove("devices") {
            Some(serde_json::Value::Array(values)) if map.is_empty() => values,
            _ => {
                return Err(not_inventory(
                    "expected a list, or an object with only `devices: [...]`".into(),
                ));
            }
        },
        _ => return Err(not_inventory("expected a list of devices".into())),
    };
    let mut devices = Vec::with_capacity(values.len());
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (index, value) in values.iter().enumerate() {
        // Built only when needed: most devices are fine.
        let label = || {
            value
                .get("enrollmentId")
                .and_then(|v| v.as_str())
                .map(|id| {
                    format!(
                        "devices[{index}] ({})",
                        id.chars().take(64).collect::<String>()
                    )
                })
                .unwrap_or_else(|| format!("devices[{index}]"))
        };
        match device(value) {
            Ok(device) => {
                if seen.insert(device.enrollment_id.clone()) {
                    devices.push(device);
                } else {
                    problems.push(format!("{}: enrollmentId appears more than once", label()));
                }
            }
            Err(why) => problems.push(format!("{}: {why}", label())),
        }
    }
    if problems.is_empty() {
        Ok(devices)
    } else {
        Err(problems)
    }
}

fn device(value: &serde_json::Value) -> Result<Device, String> {
    // YAML reads `17.10` as the number 17.1 and `22E240` as a float: say so instead of guessing.
    for field in [
        "osVersion",
        "buildVersion",
        "softwareUpdateDeviceId",
        "serialNumber",
        "enrollmentId",
        "model",
    ] {
        if value.get(field).is_some_and(serde_json::Value::is_number) {
            return Err(format!(
                "{field} must be a quoted string (YAML reads unquoted 17.10 as the number 17.1)"
            ));
        }
    }
    let raw = RawDevice::deserialize(value).map_err(|e| e.to_string())?;
    let nonempty = |field: &str, s: &str| {
        if s.trim().is_empty() || s.len() > 256 {
            Err(format!("{field} must be 1 to 256 characters"))
        } else {
            Ok(())
        }
    };
    nonempty("enrollmentId", &raw.enrollment_id)?;
    nonempty("model", &raw.model)?;
    if raw.platform == Platform::AudioOs {
        return Err("platform audioOS (HomePod) is not managed through MDM".into());
    }
    if raw.platform != Platform::MacOs
        && (raw.apple_silicon.is_some() || raw.bootstrap_token_escrowed.is_some())
    {
        return Err("appleSilicon and bootstrapTokenEscrowed are for Macs (platform macOS)".into());
    }
    let os_version = OsVersion::with_extra(&raw.os_version, raw.supplemental_extra.as_deref())
        .map_err(|e| format!("osVersion: {e}"))?;
    Ok(Device {
        enrollment_id: raw.enrollment_id,
        serial_number: raw.serial_number.filter(|s| !s.trim().is_empty()),
        platform: raw.platform,
        model: raw.model,
        software_update_device_id: raw
            .software_update_device_id
            .filter(|s| !s.trim().is_empty()),
        os_version,
        build_version: raw.build_version.as_deref().map(Build::new),
        supervised: raw.supervised,
        enrollment_type: raw.enrollment_type,
        labels: raw.labels,
        bootstrap_token: BootstrapToken {
            apple_silicon: raw.apple_silicon,
            required: None,
            escrowed: raw.bootstrap_token_escrowed,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_yaml_and_reports_every_bad_device() {
        let text = r#"
- enrollmentId: A
  platform: macOS
  model: Mac14,2
  softwareUpdateDeviceId: J413AP
  osVersion: "15.5"
  buildVersion: 24F74
  supervised: true
  enrollmentType: ade
  labels: {site: berlin}
- enrollmentId: B
  platform: iOS
  model: iPhone15,2
  osVersion: "26.3.1"
  supplementalExtra: "(a)"
- enrollmentId: C
  platform: iOS
  model: iPhone15,2
  osVersion: twenty
- enrollmentId: D
  platform: iOS
  model: iPhone15,2
  osVersion: "18.1"
  colour: red
- enrollmentId: A
  platform: iOS
  model: iPhone15,2
  osVersion: "18.1"
"#;
        let problems = parse(text).expect_err("three bad devices");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("devices[2] (C): osVersion"));
        assert!(problems[1].contains("unknown field `colour`"));
        assert!(problems[2].contains("more than once"));

        let good: String = text
            .split("- enrollmentId: C")
            .next()
            .expect("prefix")
            .into();
        let devices = parse(&good).expect("valid");
        assert_eq!(devices[0].catalog_device_id(), Some("J413AP"));
        assert_eq!(devices[1].catalog_device_id(), Some("iPhone15,2"));
        assert_eq!(devices[1].os_version.to_string(), "26.3.1 (a)");
    }

    #[test]
    fn a_mac_without_board_id_has_no_catalog_id() {
        let devices =
            parse("- {enrollmentId: M, platform: macOS, model: 'Mac14,2', osVersion: '14.2'}")
                .expect("valid");
        assert_eq!(devices[0].catalog_device_id(), None);
    }

    #[test]
    fn the_file_time_is_its_modification_unless_the_clock_is_behind_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("inventory.yaml");
        std::fs::write(&path, "[]").expect("write");
        let modified = jiff::Timestamp::try_from(
            std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .expect("mtime"),
        )
        .expect("a timestamp");
        let later = modified
            .checked_add(jiff::SignedDuration::from_hours(1))
            .expect("a timestamp");
        assert_eq!(file_time(&path, later), modified);
        let behind: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().expect("a timestamp");
        if modified > behind {
            assert_eq!(file_time(&path, behind), jiff::Timestamp::UNIX_EPOCH);
        }
        assert_eq!(
            file_time(&dir.path().join("missing.yaml"), later),
            jiff::Timestamp::UNIX_EPOCH
        );
    }

    #[test]
    fn macs_alone_carry_bootstrap_token_fields() {
        let mac = parse(
            "- {enrollmentId: M, platform: macOS, model: 'Mac14,2', osVersion: '15.5', appleSilicon: true, bootstrapTokenEscrowed: false}",
        )
        .expect("valid");
        assert!(mac[0].bootstrap_token.missing());
        let problems = parse(
            "- {enrollmentId: P, platform: iOS, model: 'iPhone15,2', osVersion: '18.5', bootstrapTokenEscrowed: true}",
        )
        .expect_err("not a Mac");
        assert!(problems[0].contains("are for Macs"), "{problems:?}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for text in ["", "{", "devices: 3", "- 1\n- 2", "[{\"enrollmentId\": 5}]"] {
            assert!(parse(text).is_err(), "{text:?}");
        }
    }
}
