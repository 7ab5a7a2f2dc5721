//! The one `softwareupdate.settings` declaration per device: policies' settings merged key by
//! key by the `combinetype` Apple's schema gives it (boolean-and, number-max, enum-last by
//! position in the key's range list), then reduced to the keys the device's OS and enrollment
//! accept. Every merge is commutative, so the result does not depend on policy names or order;
//! `tests/it/settings_merge.rs` checks each key against Apple's YAML.

use serde_json::{Map, Value, json};

use super::{Unsupported, check_channel};
use crate::api::{
    AutomaticActions, Beta, Cadence, Deferrals, RapidSecurityResponseSettings, SettingsSpec,
    SwitchSetting,
};
use crate::catalog::Platform;
use crate::inventory::Device;

/// Settings merged across every policy that applies to a device.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergedSettings(pub SettingsSpec);

/// Apple's range list of `AutomaticActions.Download`, `.InstallOSUpdates`,
/// `.InstallSecurityUpdate` and `Beta.ProgramEnrollment`, in the schema's order.
const SWITCH_RANGE: [SwitchSetting; 3] = [
    SwitchSetting::Allowed,
    SwitchSetting::AlwaysOn,
    SwitchSetting::AlwaysOff,
];

/// Apple's range list of `RecommendedCadence`, in the schema's order.
const CADENCE_RANGE: [Cadence; 3] = [Cadence::All, Cadence::Oldest, Cadence::Newest];

/// `boolean-and`.
fn and(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a && b),
        (a, b) => a.or(b),
    }
}

/// `number-max`.
fn max(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// `enum-last`: the value whose position is last in the range list.
fn enum_last<T: Copy + PartialEq>(range: &[T], a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => {
            let position = |v: T| range.iter().position(|r| *r == v);
            Some(if position(b) > position(a) { b } else { a })
        }
        (a, b) => a.or(b),
    }
}

impl MergedSettings {
    /// Folds another policy's settings in.
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
        current.recommended_cadence = enum_last(
            &CADENCE_RANGE,
            current.recommended_cadence,
            next.recommended_cadence,
        );
        if let Some(a) = &next.automatic_actions {
            let c = current
                .automatic_actions
                .get_or_insert_with(AutomaticActions::default);
            c.download = enum_last(&SWITCH_RANGE, c.download, a.download);
            c.install_os_updates =
                enum_last(&SWITCH_RANGE, c.install_os_updates, a.install_os_updates);
            c.install_security_update = enum_last(
                &SWITCH_RANGE,
                c.install_security_update,
                a.install_security_update,
            );
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
            c.program_enrollment =
                enum_last(&SWITCH_RANGE, c.program_enrollment, b.program_enrollment);
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

    fn spec(json: serde_json::Value) -> SettingsSpec {
        serde_json::from_value(json).expect("a SettingsSpec")
    }

    #[test]
    fn merge_follows_the_schema_merge_types_in_any_order() {
        let lockdown = spec(json!({
            "notifications": true,
            "deferrals": {"combinedPeriodInDays": 7},
            "recommendedCadence": "Oldest",
            "automaticActions": {"download": "AlwaysOff", "installOSUpdates": "AlwaysOn"},
            "rapidSecurityResponse": {"enable": true},
            "beta": {"programEnrollment": "AlwaysOff"},
        }));
        let permissive = spec(json!({
            "notifications": false,
            "deferrals": {"combinedPeriodInDays": 3, "majorPeriodInDays": 30},
            "recommendedCadence": "All",
            "automaticActions": {"download": "AlwaysOn", "installOSUpdates": "Allowed"},
            "rapidSecurityResponse": {"enable": false, "enableRollback": true},
            "beta": {"programEnrollment": "Allowed"},
        }));
        let expected = spec(json!({
            "notifications": false,
            "deferrals": {"combinedPeriodInDays": 7, "majorPeriodInDays": 30},
            "recommendedCadence": "Oldest",
            "automaticActions": {"download": "AlwaysOff", "installOSUpdates": "AlwaysOn"},
            "rapidSecurityResponse": {"enable": false, "enableRollback": true},
            "beta": {"programEnrollment": "AlwaysOff"},
        }));
        for order in [[&lockdown, &permissive], [&permissive, &lockdown]] {
            let mut merged = MergedSettings::default();
            for settings in order {
                merged.merge(settings);
            }
            assert_eq!(merged.0, expected, "boolean-and, number-max, enum-last");
        }
    }
}
