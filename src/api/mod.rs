//! The `updates.ddm.dev/v1alpha1` API: `FleetGroup` (which devices), `UpdatePolicy` (how they
//! are kept current) and `EnforcementTarget` (a concrete version by a local deadline), with the
//! status shape they share. Types only; validation beyond OpenAPI lives in [`validate`].

mod common;
// kube's `printcolumn(...)` repeats the same keys for every column by design.
#[allow(clippy::duplicated_attributes)]
mod enforcement_target;
#[allow(clippy::duplicated_attributes)]
mod fleet_group;
#[allow(clippy::duplicated_attributes)]
mod update_policy;
pub mod validate;

pub use common::{DeletionPolicy, condition_types};
pub use enforcement_target::{
    EnforcementTarget, EnforcementTargetSpec, EnforcementTargetStatus, ModelBuild, StateCounts,
};
pub use fleet_group::{
    DeviceSelector, FleetGroup, FleetGroupSpec, FleetGroupStatus, Shard, VersionRange,
};
pub use update_policy::{
    AssetSetName, AutomaticActions, Beta, Cadence, DeadlineRule, Deferrals, EnrollmentGate,
    FailurePolicy, RapidSecurityResponseSettings, Ring, SettingsSpec, SwitchSetting, TargetRule,
    UpdatePolicy, UpdatePolicySpec, UpdatePolicyStatus,
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
