//! EnforcementTarget objects for what policies resolved to: what `kubectl get et` shows.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::GeneratedTarget;
use crate::api::validate::CheckedPolicy;
use crate::api::{
    DeletionPolicy, EnforcementTarget, EnforcementTargetSpec, ModelBuild, POLICY_LABEL,
};

/// Says on every generated target how its deadline behaves (`kubectl describe et`).
pub const DEADLINE_ANNOTATION: &str = "updates.ddm.dev/deadline";
pub const DEADLINE_NOTE: &str = "fixed once handed out: time passing never moves it; only a change of the policy's deadline fields or ring delay, or a newer target version, does. Devices that joined the rollout later have their own, later deadline (join time + minimumLeadTime): see status.laterPersonalDeadlines.";

/// Kubernetes label values and most tooling cap names at 63 characters.
const MAX_NAME: usize = 63;

/// `{policy}-{platform}-{version}[-{ring}][-{deadline}]`, lowercase, dots as dashes: stable as
/// long as the resolution is, so a resync rewrites the same object.
pub fn target_name(
    policy: &str,
    ring: &str,
    target: &GeneratedTarget,
    deadline: Option<jiff::civil::DateTime>,
) -> String {
    let version = target
        .version
        .to_string()
        .replace(['.', ' '], "-")
        .replace(['(', ')'], "");
    let mut name = format!(
        "{policy}-{}-{version}",
        target.platform.as_str().to_lowercase()
    );
    if !ring.is_empty() {
        name.push('-');
        name.push_str(ring);
    }
    if let Some(deadline) = deadline {
        name.push('-');
        name.push_str(&deadline.strftime("%Y%m%d%H%M").to_string());
    }
    if name.len() > MAX_NAME {
        let hash = crate::declarations::content_hash(&[name.as_bytes()]);
        name.truncate(MAX_NAME - 9);
        name = format!("{}-{}", name.trim_end_matches('-'), &hash[..8]);
    }
    name
}

/// The object for one generated target, owned by its policy (when the policy has a uid, as in
/// a cluster) and labelled with the policy's name either way.
pub fn target_object(policy: &CheckedPolicy, target: &GeneratedTarget) -> EnforcementTarget {
    let ring = &policy.rings[target.ring];
    let name = target.name.clone();
    let owner_references = policy.uid.as_ref().map(|uid| {
        vec![OwnerReference {
            api_version: crate::api::API_VERSION.into(),
            kind: "UpdatePolicy".into(),
            name: policy.key.name.clone(),
            uid: uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]
    });
    let mut object = EnforcementTarget::new(
        &name,
        EnforcementTargetSpec {
            fleet_groups: ring.groups.iter().map(|g| g.name.clone()).collect(),
            platform: target.platform,
            target_os_version: target.version.to_string(),
            target_build_versions: target
                .builds
                .iter()
                .map(|(model, build)| ModelBuild {
                    model: model.clone(),
                    build: build.to_string(),
                })
                .collect(),
            target_local_date_time: target.deadline.strftime("%Y-%m-%dT%H:%M:%S").to_string(),
            details_url: policy.details_url.clone(),
            suspend: policy.suspend,
            deletion_policy: DeletionPolicy::Withdraw,
        },
    );
    object.metadata = ObjectMeta {
        name: Some(name),
        namespace: Some(policy.key.namespace.clone()),
        labels: Some([(POLICY_LABEL.to_string(), policy.key.name.clone())].into()),
        annotations: Some([(DEADLINE_ANNOTATION.to_string(), DEADLINE_NOTE.to_string())].into()),
        owner_references,
        ..ObjectMeta::default()
    };
    object
}
