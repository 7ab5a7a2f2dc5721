//! The `updates.ddm.dev/v1alpha1` API: `FleetGroup` (which devices), `UpdatePolicy` (how they
//! are kept current) and `EnforcementTarget` (a concrete version by a local deadline), with the
//! status shape they share. Types only; validation beyond OpenAPI lives in [`validate`].

pub mod cel;
mod common;
// kube's `printcolumn(...)` repeats the same keys for every column by design.
#[allow(clippy::duplicated_attributes)]
mod enforcement_target;
#[allow(clippy::duplicated_attributes)]
mod fleet_group;
pub mod schema;
#[allow(clippy::duplicated_attributes)]
mod update_policy;
pub mod validate;

pub use common::{DeletionPolicy, condition_types};
pub use enforcement_target::{
    DeviceProblem, EnforcementTarget, EnforcementTargetSpec, EnforcementTargetStatus, ModelBuild,
    StateCounts,
};
pub use fleet_group::{
    DeviceSelector, FleetGroup, FleetGroupSpec, FleetGroupStatus, Shard, VersionRange,
};
pub use update_policy::{
    AssetSetName, AutomaticActions, Beta, BetaProgram, Cadence, DeadlineRule, Deferrals,
    EnrollmentGate, EnrollmentGateStatus, FailurePolicy, RapidSecurityResponseSettings,
    ResolvedModel, Ring, SettingsSpec, SwitchSetting, TargetRule, UpdatePolicy, UpdatePolicySpec,
    UpdatePolicyStatus,
};

/// API group of every kind here.
pub const GROUP: &str = "updates.ddm.dev";
/// API version of every kind here.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "updates.ddm.dev/v1alpha1";
/// Field manager for objects the operator writes.
pub const FIELD_MANAGER: &str = "ddm-update-operator";
/// Field manager for status, kept apart so spec and status ownership never mix.
pub const STATUS_FIELD_MANAGER: &str = "ddm-update-operator-status";
/// Finalizer that withdraws a resource's declarations before it goes.
pub const FINALIZER: &str = "updates.ddm.dev/withdraw";
/// Label on generated EnforcementTargets naming the policy they come from.
pub const POLICY_LABEL: &str = "updates.ddm.dev/policy";

/// Every CRD of the API, in a fixed order.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        FleetGroup::crd(),
        UpdatePolicy::crd(),
        EnforcementTarget::crd(),
    ]
}

/// Each CRD as `(file name, YAML)`, optionally without CEL rules (for Kubernetes before 1.25,
/// which refuses `x-kubernetes-validations` on server-side apply).
pub fn crd_files(with_cel: bool) -> Result<Vec<(String, String)>, serde_saphyr::ser_error::Error> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("crd"));
            let mut value = serde_json::to_value(&crd).unwrap_or_default();
            drop_null_enum_values(&mut value);
            if !with_cel {
                strip_cel(&mut value);
            }
            Ok((name, serde_saphyr::to_string(&value)?))
        })
        .collect()
}

/// The CRDs as one multi-document YAML text.
pub fn crds_yaml(with_cel: bool) -> Result<String, serde_saphyr::ser_error::Error> {
    let mut out = String::new();
    for (_, text) in crd_files(with_cel)? {
        out.push_str("---\n");
        out.push_str(&text);
    }
    Ok(out)
}

/// Optional enums come out of schemars as `enum: [..., null]` next to `nullable: true`; kubectl's
/// validation refuses the `null` member, and `nullable` already says it.
fn drop_null_enum_values(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Array(members)) = map.get_mut("enum") {
                members.retain(|m| !m.is_null());
            }
            map.values_mut().for_each(drop_null_enum_values);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_null_enum_values),
        _ => {}
    }
}

/// Removes every `x-kubernetes-validations` key, at any depth.
pub fn strip_cel(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove("x-kubernetes-validations");
            map.values_mut().for_each(strip_cel);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_cel),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `crds/` is generated from the types; regenerate with `UPDATE_CRDS=1 cargo test crds_`.
    #[test]
    fn crds_folder_matches_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        let files = crd_files(true).expect("CRDs render");
        if std::env::var_os("UPDATE_CRDS").is_some() {
            std::fs::create_dir_all(&dir).expect("crds/ is writable");
            for (name, text) in &files {
                std::fs::write(dir.join(name), text).expect("crds/ is writable");
            }
        }
        for (name, text) in &files {
            let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            assert!(
                committed == *text,
                "crds/{name} differs from the types: run `UPDATE_CRDS=1 cargo test crds_` and commit"
            );
        }
        let on_disk = std::fs::read_dir(&dir).expect("crds/ exists").count();
        assert_eq!(on_disk, files.len(), "crds/ holds a file no type generates");
    }

    #[test]
    fn crds_keep_cel_rules_and_the_stripped_copy_has_none() {
        let with = crds_yaml(true).expect("CRDs render");
        let without = crds_yaml(false).expect("CRDs render");
        assert!(with.contains("x-kubernetes-validations"));
        assert!(!without.contains("x-kubernetes-validations"));
        assert!(with.contains("shortNames:\n    - upol"));
        assert!(with.contains("x-kubernetes-list-type: map"));
    }
}
