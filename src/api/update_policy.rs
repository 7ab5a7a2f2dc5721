//! `UpdatePolicy`: how a set of FleetGroups is kept current. It generates EnforcementTargets.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::DeletionPolicy;

/// How FleetGroups are kept on the right OS: which version, by when, in which rings, with which
/// Software Update settings, and the enrollment gate.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "updates.ddm.dev",
    version = "v1alpha1",
    kind = "UpdatePolicy",
    namespaced,
    status = "UpdatePolicyStatus",
    shortname = "upol",
    category = "ddm",
    doc = "How a set of FleetGroups is kept on the right Apple OS version.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Targets", type_ = "integer", json_path = ".status.targets"),
    printcolumn(name = "Compliant", type_ = "string", json_path = ".status.compliance"),
    printcolumn(
        name = "Deadline",
        type_ = "string",
        json_path = ".status.nextDeadline"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = super::cel::POLICY_NAMES_A_GROUP.to_kube())]
#[x_kube(validation = super::cel::POLICY_RING_NAMES_UNIQUE.to_kube())]
#[serde(rename_all = "camelCase")]
pub struct UpdatePolicySpec {
    /// FleetGroups (same namespace) the policy applies to, with no delay.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[schemars(inner(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9][-a-z0-9.]*$")))]
    pub fleet_groups: Vec<String>,
    /// Which version devices are taken to.
    pub target: TargetRule,
    /// By when.
    pub deadline: DeadlineRule,
    /// Later rings: each names FleetGroups whose deadline comes `delayDays` later. A device in
    /// several rings takes the first that names it.
    #[serde(default)]
    pub rings: Vec<Ring>,
    /// The Software Update settings declaration for these devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<SettingsSpec>,
    /// Hold Automated Device Enrollment until the device runs a minimum OS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<EnrollmentGate>,
    /// A page about the enforced update, shown on the device.
    #[serde(
        default,
        rename = "detailsURL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://"))]
    pub details_url: Option<String>,
    /// Stop changing what devices get, without withdrawing anything.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// What happens to declarations when the policy is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Which asset set full updates come from.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum AssetSetName {
    /// Everything an MDM may enforce, including older majors (Apple's `AssetSets`).
    #[default]
    AssetSets,
    /// What Software Update offers the public (Apple's `PublicAssetSets`).
    PublicAssetSets,
}

/// Which version devices are taken to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRule {
    /// `latest`, `latest-minor` (newest within the device's major), `pinned:X.Y[.Z]`,
    /// `pinned:X` (newest X.*) or `major-behind:N`.
    #[schemars(regex(
        pattern = r"^(latest|latest-minor|pinned:[0-9]+(\.[0-9]+){0,2}|major-behind:[0-9]+)$"
    ))]
    pub strategy: String,
    /// Apple's asset set to choose from.
    #[serde(default)]
    pub asset_set: AssetSetName,
    /// Also enforce Rapid Security Responses / Background Security Improvements.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub security_improvements: bool,
    /// Keep several majors at once: a device on a listed major stays in it; a device on an
    /// unlisted major goes to the newest listed major it supports. Empty: no restriction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub majors: Vec<u32>,
}

/// By when devices must run the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadlineRule {
    /// Days after Apple's posting date of the target.
    #[schemars(range(max = 365))]
    pub days_after_posting: u32,
    /// Local time of day, `HH:MM` (24 h), in the device's own time zone.
    #[serde(default = "default_local_time")]
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$"))]
    pub local_time: String,
    /// IANA time zone for the calendar arithmetic (weekends, lead time). Devices still get a
    /// local time without offset.
    #[serde(default = "default_time_zone")]
    #[schemars(length(max = 64))]
    pub time_zone: String,
    /// Move a deadline that falls on Saturday or Sunday to Monday.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_weekends: bool,
    /// At least this long between now and a deadline (such as `72h` or `3d`); later deadlines
    /// move out to respect it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub minimum_lead_time: Option<String>,
}

fn default_local_time() -> String {
    "19:00".into()
}

fn default_time_zone() -> String {
    "UTC".into()
}

/// A later ring of devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ring {
    /// Ring name, used in generated EnforcementTarget names (lowercase, digits, `-`).
    #[schemars(
        length(min = 1, max = 20),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// FleetGroups in this ring.
    #[schemars(
        length(min = 1),
        inner(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9][-a-z0-9.]*$"))
    )]
    pub fleet_groups: Vec<String>,
    /// Days added to the policy's deadline for this ring.
    #[schemars(range(max = 180))]
    pub delay_days: u32,
}

/// `Allowed`, `AlwaysOn` or `AlwaysOff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SwitchSetting {
    Allowed,
    AlwaysOn,
    AlwaysOff,
}

/// How updates are listed when several are available (iOS only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Cadence {
    All,
    Oldest,
    Newest,
}

/// Apple's `com.apple.configuration.softwareupdate.settings`. Keys an OS does not support are
/// left out of that OS's declaration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettingsSpec {
    /// Show every enforcement notification (`false`: only the last hour and the restart
    /// countdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<bool>,
    /// Hide updates for a number of days after release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferrals: Option<Deferrals>,
    /// iOS: which of several available updates the user sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_cadence: Option<Cadence>,
    /// Automatic downloads and installs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic_actions: Option<AutomaticActions>,
    /// Rapid Security Response user controls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rapid_security_response: Option<RapidSecurityResponseSettings>,
    /// macOS: standard (non-admin) users may install major and minor updates.
    #[serde(
        default,
        rename = "allowStandardUserOSUpdates",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_standard_user_os_updates: Option<bool>,
    /// iOS: beta program enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<Beta>,
}

/// Deferral periods, 1 to 90 days. iOS uses `combinedPeriodInDays`; macOS the other three.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deferrals {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 90))]
    pub combined_period_in_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 90))]
    pub major_period_in_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 90))]
    pub minor_period_in_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 90))]
    pub system_period_in_days: Option<u32>,
}

/// Automatic Software Update actions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutomaticActions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<SwitchSetting>,
    #[serde(
        default,
        rename = "installOSUpdates",
        skip_serializing_if = "Option::is_none"
    )]
    pub install_os_updates: Option<SwitchSetting>,
    /// macOS only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_security_update: Option<SwitchSetting>,
}

/// Rapid Security Response user controls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RapidSecurityResponseSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_rollback: Option<bool>,
}

/// Beta program enrollment. Seeding tokens are secrets and are not taken from Git.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Beta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_enrollment: Option<SwitchSetting>,
}

/// What the enrollment gate does when it cannot decide (catalog down, model unknown).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum FailurePolicy {
    /// Let the device enroll.
    #[default]
    Open,
    /// Answer 503 with Retry-After.
    Closed,
}

/// Hold Automated Device Enrollment until the device runs a minimum OS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentGate {
    /// A literal version such as `26.1`, or `Target` for the policy's own resolved target.
    #[schemars(regex(pattern = r"^(Target|[0-9]+(\.[0-9]+){0,2})$"))]
    pub minimum_version: String,
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Enroll held devices in a beta program so they can be required to update to its builds
    /// (Apple's `RequireBetaProgram`; iOS 17.5 / macOS 14.5). The seeding token is a secret: it
    /// comes from the operator's `--enroll-beta-token-file`, not from Git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_program: Option<BetaProgram>,
}

/// A beta program devices are enrolled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BetaProgram {
    /// What the program is, for people (Apple's `Description`).
    #[schemars(length(min = 1, max = 256))]
    pub description: String,
}

/// What the policy resolved to and how its devices are doing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdatePolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Resolved`, `Synced`, `Compliant`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Number of generated EnforcementTargets.
    #[serde(default)]
    pub targets: u32,
    /// `compliant/total`, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<String>,
    /// The earliest deadline among the generated targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_deadline: Option<String>,
    /// Device counts by state bucket.
    // Nullable: server-side apply on Kubernetes 1.20 turns a list or map that was emptied
    // into null.
    #[serde(default, deserialize_with = "crate::strict::null_as_default")]
    #[schemars(extend("nullable" = true))]
    pub devices: BTreeMap<String, u64>,
    /// What the policy resolved to, per platform and model.
    // Nullable: server-side apply on Kubernetes 1.20 turns a list or map that was emptied
    // into null.
    #[serde(default, deserialize_with = "crate::strict::null_as_default")]
    #[schemars(extend("nullable" = true))]
    pub resolved: Vec<ResolvedModel>,
    /// What the enrollment gate decided, when the policy has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<EnrollmentGateStatus>,
}

/// Enrollment gate decisions made by this policy since the operator started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentGateStatus {
    /// When counting started (the operator's start).
    pub since: String,
    /// Decisions by outcome: `Allowed`, `UpdateRequired`, `CannotUpdate`, `FailedOpen`,
    /// `FailedClosed`.
    // Nullable: server-side apply on Kubernetes 1.20 turns an emptied map into null.
    #[serde(default, deserialize_with = "crate::strict::null_as_default")]
    #[schemars(extend("nullable" = true))]
    pub decisions: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision_time: Option<String>,
    /// The last time the gate could not decide (catalog unavailable, model unknown), and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_problem: Option<String>,
}

/// The version, build and deadline one model of one platform is taken to.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedModel {
    pub platform: String,
    /// Software-update device id (board id for Macs, product type otherwise).
    pub model: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// Device-local deadline.
    pub deadline: String,
    /// Devices of this model being taken there.
    pub devices: u64,
}
