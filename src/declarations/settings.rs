//! The one `softwareupdate.settings` declaration per device: policies' settings merged by the
//! schema's merge types (number-max, boolean-and, enum-last), then reduced to the keys the
//! device's OS and enrollment accept.

use serde_json::{Map, Value, json};

use super::{Unsupported, check_channel};
use crate::api::{AutomaticActions, Beta, Deferrals, RapidSecurityResponseSettings, SettingsSpec};
use crate::catalog::Platform;
use crate::inventory::Device;

/// Settings merged across every policy that applies to a device, in policy order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergedSettings(pub SettingsSpec);

fn and(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a && b),
        (a, b) => a.or(b),
    }
}

fn max(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn last<T>(a: Option<T>, b: Option<T>) -> Option<T> {
    b.or(a)
}

impl MergedSettings {
    /// Folds the next policy's settings in (later policies win enum-last keys).
    pub fn merge(&mut self, next: &SettingsSpec) {
        let current = &mut self.0;
        current.notifications = and(current.notifications, next.notifications);
        if let Some(d) = &next.deferrals {
            let c = current.deferrals.get_or_insert_with(Deferrals::default);
            c.combined_period_in_days = max(c.combined_period_in_days, d.combined_period_in_days);
            c.major_period_in_days = max(c.major_period_in_days, d.major_period_in_days);
            c.minor_period_in_days = max(c.minor_period_in_days, d.minor_period_in_days);
            c.system_period_in_days = max(c.system_period_in_days, d.system_period_in_days);
        }
        current.recommended_cadence = last(current.recommended_cadence, next.recommended_cadence);
        if let Some(a) = &next.automatic_actions {
            let c = current
                .automatic_actions
                .get_or_insert_with(AutomaticActions::default);
            c.download = last(c.download, a.download);
            c.install_os_updates = last(c.install_os_updates, a.install_os_updates);
            c.install_security_update = last(c.install_security_update, a.install_security_update);
        }
        if let Some(r) = &next.rapid_security_response {
            let c = current
                .rapid_security_response
                .get_or_insert_with(RapidSecurityResponseSettings::default);
            c.enable = and(c.enable, r.enable);
            c.enable_rollback = and(c.enable_rollback, r.enable_rollback);
        }
        current.allow_standard_user_os_updates = and(
            current.allow_standard_user_os_updates,
            next.allow_standard_user_os_updates,
        );
        if let Some(b) = &next.beta {
            let c = current.beta.get_or_insert_with(Beta::default);
            c.program_enrollment = last(c.program_enrollment, b.program_enrollment);
        }
    }
}

/// Whether the device takes a settings declaration at all (iOS/iPadOS 18 supervised or device
/// enrollment; macOS 15 supervised).
pub fn settings_supported(device: &Device) -> Result<(), Unsupported> {
    match device.platform {
        Platform::Ios | Platform::IpadOs => check_channel(device, (18, 0), false),
        Platform::MacOs => check_channel(device, (15, 0), true),
        _ => Err(Unsupported::OsTooOld),
    }
}

fn put(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        map.insert(key.into(), value);
    }
}

fn object(map: Map<String, Value>) -> Option<Value> {
    (!map.is_empty()).then_some(Value::Object(map))
}

/// The payload for this device: only keys its OS and supervision accept; `None` when nothing
/// is left.
pub fn settings_payload(settings: &MergedSettings, device: &Device) -> Option<Value> {
    let s = &settings.0;
    let ios = matches!(device.platform, Platform::Ios | Platform::IpadOs);
    // On iOS several keys need supervision; macOS takes settings only when supervised anyway.
    let supervised = device.supervised;
    let mut payload = Map::new();
    put(
        &mut payload,
        "Notifications",
        s.notifications.map(Value::from),
    );
    if let Some(d) = &s.deferrals
        && (!ios || supervised)
    {
        let mut m = Map::new();
        if ios {
            put(
                &mut m,
                "CombinedPeriodInDays",
                d.combined_period_in_days.map(Value::from),
            );
        } else {
            put(
                &mut m,
                "MajorPeriodInDays",
                d.major_period_in_days.map(Value::from),
            );
            put(
                &mut m,
                "MinorPeriodInDays",
                d.minor_period_in_days.map(Value::from),
            );
            put(
                &mut m,
                "SystemPeriodInDays",
                d.system_period_in_days.map(Value::from),
            );
        }
        put(&mut payload, "Deferrals", object(m));
    }
    if ios {
        put(
            &mut payload,
            "RecommendedCadence",
            s.recommended_cadence.map(|c| json!(c)),
        );
    }
    if let Some(a) = &s.automatic_actions
        && (!ios || supervised)
    {
        let mut m = Map::new();
        put(&mut m, "Download", a.download.map(|v| json!(v)));
        put(
            &mut m,
            "InstallOSUpdates",
            a.install_os_updates.map(|v| json!(v)),
        );
        if !ios {
            put(
                &mut m,
                "InstallSecurityUpdate",
                a.install_security_update.map(|v| json!(v)),
            );
        }
        put(&mut payload, "AutomaticActions", object(m));
    }
    if let Some(r) = &s.rapid_security_response
        && (!ios || supervised)
    {
        let mut m = Map::new();
        put(&mut m, "Enable", r.enable.map(Value::from));
        put(&mut m, "EnableRollback", r.enable_rollback.map(Value::from));
        put(&mut payload, "RapidSecurityResponse", object(m));
    }
    if !ios {
        put(
            &mut payload,
            "AllowStandardUserOSUpdates",
            s.allow_standard_user_os_updates.map(Value::from),
        );
    }
    if let Some(b) = &s.beta
        && ios
        && supervised
    {
        let mut m = Map::new();
        put(
            &mut m,
            "ProgramEnrollment",
            b.program_enrollment.map(|v| json!(v)),
        );
        put(&mut payload, "Beta", object(m));
    }
    object(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Cadence, SwitchSetting};

    #[test]
    fn merge_follows_the_schema_merge_types() {
        let mut merged = MergedSettings::default();
        merged.merge(&SettingsSpec {
            notifications: Some(true),
            deferrals: Some(Deferrals {
                combined_period_in_days: Some(7),
                ..Deferrals::default()
            }),
            recommended_cadence: Some(Cadence::Newest),
            rapid_security_response: Some(RapidSecurityResponseSettings {
                enable: Some(true),
                enable_rollback: None,
            }),
            ..SettingsSpec::default()
        });
        merged.merge(&SettingsSpec {
            notifications: Some(false),
            deferrals: Some(Deferrals {
                combined_period_in_days: Some(3),
                major_period_in_days: Some(30),
                ..Deferrals::default()
            }),
            recommended_cadence: Some(Cadence::Oldest),
            automatic_actions: Some(AutomaticActions {
                download: Some(SwitchSetting::AlwaysOn),
                ..AutomaticActions::default()
            }),
            rapid_security_response: Some(RapidSecurityResponseSettings {
                enable: Some(false),
                enable_rollback: Some(true),
            }),
            ..SettingsSpec::default()
        });
        let s = &merged.0;
        assert_eq!(s.notifications, Some(false), "boolean-and");
        let d = s.deferrals.as_ref().expect("deferrals");
        assert_eq!(d.combined_period_in_days, Some(7), "number-max");
        assert_eq!(d.major_period_in_days, Some(30));
        assert_eq!(s.recommended_cadence, Some(Cadence::Oldest), "enum-last");
        let r = s.rapid_security_response.as_ref().expect("rsr");
        assert_eq!((r.enable, r.enable_rollback), (Some(false), Some(true)));
    }
}
