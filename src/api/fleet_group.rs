//! `FleetGroup`: which devices. Selects devices from the inventory.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::DeletionPolicy;
use crate::catalog::Platform;

/// A set of devices, selected from the inventory. Every criterion given must match (AND);
/// within one list any entry may match (OR). An empty selector selects every device of
/// `platforms`.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "updates.ddm.dev",
    version = "v1alpha1",
    kind = "FleetGroup",
    namespaced,
    status = "FleetGroupStatus",
    shortname = "fg",
    category = "ddm",
    doc = "A group of Apple devices selected from the inventory.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Devices", type_ = "integer", json_path = ".status.members"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = super::cel::GROUP_PLATFORMS_MANAGED.to_kube())]
#[serde(rename_all = "camelCase")]
pub struct FleetGroupSpec {
    /// Platforms the group covers (iOS, iPadOS, macOS, tvOS, watchOS, visionOS); empty means
    /// all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub platforms: Vec<Platform>,
    /// Which devices of those platforms belong to the group.
    #[serde(default)]
    pub selector: DeviceSelector,
    /// Keep only a stable slice of the selected devices, chosen by a hash of their enrollment
    /// id: the same device stays in the same slice as the fleet grows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// Stop changing what this group's devices get, without withdrawing anything.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// What happens to declarations when the group is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Device criteria. Lists are capped so one manifest cannot blow up every resolver pass.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSelector {
    /// Serial numbers, exactly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000), inner(length(min = 1, max = 256)))]
    pub serial_numbers: Vec<String>,
    /// MDM enrollment ids (UDIDs or enrollment ids), exactly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000), inner(length(min = 1, max = 256)))]
    pub enrollment_ids: Vec<String>,
    /// Model or software-update device id globs, such as `iPhone15,*`, `Mac14,2` or `J314?AP`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 256)))]
    pub models: Vec<String>,
    /// Only devices whose running OS version is in this range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<VersionRange>,
    /// Inventory labels that must all match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("additionalProperties" = {"type": "string", "minLength": 1, "maxLength": 256}))]
    pub match_labels: BTreeMap<String, String>,
}

/// An OS version range; both ends inclusive, either may be left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionRange {
    /// Lowest version, such as `17.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub min: Option<String>,
    /// Highest version, such as `18.7.3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub max: Option<String>,
}

/// A stable percent slice of the selected devices.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Shard {
    /// Share of the selected devices kept, from 1 to 100.
    #[schemars(range(min = 1, max = 100))]
    pub percent: u8,
    /// Mixed into the hash so different groups can take independent slices; defaults to
    /// nothing, so every group with the same percent takes the same slice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub seed: Option<String>,
}

/// What the group currently holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetGroupStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and `Resolved`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Number of member devices.
    #[serde(default)]
    pub members: u64,
    /// Member devices per platform.
    // Nullable: server-side apply on Kubernetes 1.20 turns a list or map that was emptied
    // into null.
    #[serde(default, deserialize_with = "crate::strict::null_as_default")]
    #[schemars(extend("nullable" = true))]
    pub members_by_platform: BTreeMap<String, u64>,
}
