//! The three reconcilers. Each is fetch → validate → resolve → apply → status: the object
//! arrives from the watch cache; validation and resolution come from the resolver's latest pass
//! (asking for a new one when the pass has not seen this version of the object yet); the only
//! writes are the object's own status, and for a policy its generated EnforcementTargets — each
//! made only when something differs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::conditions::{Desired, conditions};
use super::resolver::{Snapshot, key};
use super::{Context, Error};
use crate::api::condition_types::{COMPLIANT, READY, RESOLVED, SYNCED};
use crate::api::validate::ObjectKey;
use crate::api::{
    DeletionPolicy, DeviceProblem, EnforcementTarget, EnforcementTargetStatus, FIELD_MANAGER,
    FINALIZER, FleetGroup, FleetGroupStatus, POLICY_LABEL, ResolvedModel, STATUS_FIELD_MANAGER,
    StateCounts, UpdatePolicy, UpdatePolicyStatus,
};
use crate::pass::report::Tally;
use crate::resolve::{Source, target_object};
use crate::status::bucket::Bucket;

/// Waits (bounded) for a pass that has seen this version of the object.
async fn snapshot_for(
    ctx: &Context,
    key: &str,
    generation: Option<i64>,
    deleting: bool,
) -> Option<Arc<Snapshot>> {
    let mut receiver = ctx.snapshots.clone();
    let current = receiver.borrow().clone();
    if current.has_seen(key, generation, deleting) {
        return Some(current);
    }
    let _ = ctx.resolve_now.send(());
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            changed = receiver.changed() => {
                if changed.is_err() {
                    return None;
                }
                let snapshot = receiver.borrow_and_update().clone();
                if snapshot.has_seen(key, generation, deleting) {
                    return Some(snapshot);
                }
            }
            () = &mut deadline => return None,
        }
    }
}

/// Runs the finalizer dance around `apply`; cleanup waits for the pass that withdraws.
async fn with_finalizer<K, F, Fut>(
    object: Arc<K>,
    ctx: Arc<Context>,
    kind: &'static str,
    apply: F,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: FnOnce(Arc<K>, Arc<Snapshot>) -> Fut,
    Fut: std::future::Future<Output = Result<Action, Error>>,
{
    let started = Instant::now();
    let namespace = object.namespace().unwrap_or_else(|| "default".into());
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let object_key = key(object.as_ref());
    let generation = object.meta().generation;
    // The finalizer helper's own patches: adding ours to a live object, removing it after
    // cleanup (counted where cleanup succeeds, just below).
    if object.meta().deletion_timestamp.is_none()
        && !object.finalizers().iter().any(|f| f == FINALIZER)
    {
        ctx.metrics.kube_write(kind, "add-finalizer");
    }
    let result = finalizer(&api, FINALIZER, object, |event| async {
        match event {
            Finalizer::Apply(object) => {
                let Some(snapshot) = snapshot_for(&ctx, &object_key, generation, false).await
                else {
                    return Err(Error::ResolverBehind);
                };
                apply(object, snapshot).await
            }
            Finalizer::Cleanup(object) => {
                // Withdraw: wait until a pass has run without the object. Orphan: until a pass
                // has frozen the devices it applies to, durably, with what they have.
                let Some(snapshot) = snapshot_for(&ctx, &object_key, generation, true).await
                else {
                    return Err(Error::ResolverBehind);
                };
                match deletion_policy(object.as_ref()) {
                    DeletionPolicy::Withdraw => {
                        ctx.publish_event(
                            &*object,
                            EventType::Normal,
                            "Withdrawn",
                            "Deleted: its declarations are withdrawn",
                        )
                        .await;
                    }
                    DeletionPolicy::Orphan => {
                        if snapshot.applied.is_err() {
                            // The freeze may not be stored: let a new pass try again first.
                            let _ = ctx.resolve_now.send(());
                            return Err(Error::ResolverBehind);
                        }
                        let devices = snapshot
                            .frozen
                            .orphaned
                            .get(&object_key)
                            .copied()
                            .unwrap_or(0);
                        tracing::info!(
                            resource = %format!("{kind} {object_key}"),
                            devices,
                            "deleted with deletionPolicy Orphan: its devices keep their declarations"
                        );
                        ctx.publish_event(
                            &*object,
                            EventType::Normal,
                            "Orphaned",
                            &format!(
                                "Deleted with deletionPolicy Orphan: {devices} device(s) keep the declarations they have until a resource that does not apply to them now does"
                            ),
                        )
                        .await;
                    }
                }
                ctx.metrics.kube_write(kind, "remove-finalizer");
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .reconciled(kind, started.elapsed().as_secs_f64(), result.is_ok());
    result
}

fn deletion_policy<K: Serialize>(object: &K) -> DeletionPolicy {
    serde_json::to_value(object)
        .ok()
        .and_then(|v| {
            v.get("spec")?
                .get("deletionPolicy")?
                .as_str()
                .map(str::to_string)
        })
        .map_or(DeletionPolicy::Withdraw, |p| {
            if p == "Orphan" {
                DeletionPolicy::Orphan
            } else {
                DeletionPolicy::Withdraw
            }
        })
}

/// Resolved / Synced / Compliant / Ready from the object's problems, the pass and its devices.
fn standard_conditions(
    snapshot: &Snapshot,
    object_key: &str,
    suspended: bool,
    tally: Option<&Tally>,
) -> Vec<Desired> {
    let problems = snapshot.partial.problems.get(object_key);
    let invalid = snapshot.partial.invalid.get(object_key);
    let resolved = match problems {
        // Invalid as it is now: what is in force instead (its last valid spec, or nothing)
        // comes after the problems; a reference the held version dangles follows.
        Some(problems) if invalid.is_some() => {
            let mut message = invalid.map(|held| held.message()).unwrap_or_default();
            let held = invalid.map_or(0, |held| held.problems.len());
            for dangling in problems.iter().skip(held) {
                message.push_str("; ");
                message.push_str(dangling);
            }
            Desired::new(RESOLVED, false, "InvalidSpec", message)
        }
        Some(problems)
            if problems.iter().any(|p| p.contains("does not exist")) && problems.len() == 1 =>
        {
            Desired::new(RESOLVED, false, "FleetGroupNotFound", problems.join("; "))
        }
        Some(problems) => Desired::new(RESOLVED, false, "InvalidSpec", problems.join("; ")),
        None => match &snapshot.catalog_problem {
            Some(problem) => Desired::new(
                RESOLVED,
                true,
                "CatalogFallback",
                format!("resolved against {} ({problem})", snapshot.catalog_origin),
            ),
            None => Desired::new(
                RESOLVED,
                true,
                "Resolved",
                format!("resolved against {}", snapshot.catalog_origin),
            ),
        },
    };
    let synced = if suspended {
        Desired::new(
            SYNCED,
            false,
            "Suspended",
            "spec.suspend is set: devices keep what they have",
        )
    } else {
        match &snapshot.applied {
            Ok(_) => Desired::new(
                SYNCED,
                true,
                "Synced",
                "the backend holds every device's set",
            ),
            Err(error) => Desired::new(SYNCED, false, "BackendError", error.clone()),
        }
    };
    let mut list = vec![resolved.clone(), synced.clone()];
    if let Some(tally) = tally {
        let applicable = tally.total() - tally.count(Bucket::NotApplicable);
        let compliant = tally.count(Bucket::Compliant);
        let failed = tally.count(Bucket::Failed);
        list.push(if applicable == 0 {
            Desired::new(
                COMPLIANT,
                true,
                "NoDevices",
                "no device needs an update from this resource",
            )
        } else if compliant == applicable {
            Desired::new(
                COMPLIANT,
                true,
                "Compliant",
                format!("{compliant}/{applicable} devices run the target"),
            )
        } else if failed > 0 {
            Desired::new(
                COMPLIANT,
                false,
                "UpdatesFailing",
                format!("{compliant}/{applicable} compliant, {failed} failed"),
            )
        } else {
            Desired::new(
                COMPLIANT,
                false,
                "InProgress",
                format!("{compliant}/{applicable} devices run the target"),
            )
        });
        if let (Some(compliant), Some(warning)) = (
            list.last_mut(),
            bootstrap_token_warning(tally.bootstrap_token_missing),
        ) {
            compliant.message = format!("{}; {warning}", compliant.message);
        }
    }
    let ready = if !resolved.ok {
        Desired::new(READY, false, resolved.reason, resolved.message)
    } else if !synced.ok {
        Desired::new(READY, false, synced.reason, synced.message)
    } else {
        Desired::new(READY, true, "Ready", "resolved and synced")
    };
    list.insert(0, ready);
    list
}

/// What the `Compliant` condition says about enforced Macs without an escrowed bootstrap token.
pub fn bootstrap_token_warning(macs: u64) -> Option<String> {
    match macs {
        0 => None,
        1 => Some("1 Mac lacks a bootstrap token: its user will be asked to authenticate".into()),
        n => Some(format!(
            "{n} Macs lack a bootstrap token: their users will be asked to authenticate"
        )),
    }
}

fn counts(tally: &Tally) -> StateCounts {
    StateCounts {
        compliant: tally.count(Bucket::Compliant),
        pending: tally.count(Bucket::Pending),
        downloading: tally.count(Bucket::Downloading),
        prepared: tally.count(Bucket::Prepared),
        installing: tally.count(Bucket::Installing),
        failed: tally.count(Bucket::Failed),
        stale: tally.count(Bucket::Stale),
        not_applicable: tally.count(Bucket::NotApplicable),
    }
}

/// Writes the status by server-side apply with the status field manager, only if it differs.
async fn write_status<K, S>(
    ctx: &Context,
    object: &K,
    current: Option<&S>,
    desired: S,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(&desired) {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(
        ctx.client.clone(),
        &object.namespace().unwrap_or_else(|| "default".into()),
    );
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    // Counted as attempts: a refused write is still an API request.
    ctx.metrics.kube_write(kind_name::<K>(), "patch-status");
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(STATUS_FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

fn kind_name<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "FleetGroup" => "FleetGroup",
        "UpdatePolicy" => "UpdatePolicy",
        _ => "EnforcementTarget",
    }
}

pub async fn fleet_group(object: Arc<FleetGroup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let apply_ctx = ctx.clone();
    with_finalizer(object, ctx, "FleetGroup", |object, snapshot| async move {
        let ctx = apply_ctx;
        let object_key = key(object.as_ref());
        let index = snapshot
            .partial
            .checked
            .groups
            .iter()
            .position(|g| format!("FleetGroup {}", g.key) == object_key);
        let members = index.and_then(|i| snapshot.plan.members.get(i));
        // The spec in force: the last valid one while the current one is invalid.
        let suspended = index.map_or(object.spec.suspend, |i| {
            snapshot.partial.checked.groups[i].suspend
        });
        let mut by_platform: BTreeMap<String, u64> = BTreeMap::new();
        for member in members.into_iter().flatten() {
            if let Some(device) = snapshot.devices.get(*member as usize) {
                *by_platform.entry(device.platform.to_string()).or_default() += 1;
            }
        }
        let current = object.status.as_ref();
        let mut desired_conditions = standard_conditions(&snapshot, &object_key, suspended, None);
        if members.is_some_and(Vec::is_empty) {
            desired_conditions.push(Desired::new(
                "Empty",
                true,
                "SelectsNothing",
                "the selector matches no known device",
            ));
        }
        let status = FleetGroupStatus {
            observed_generation: object.metadata.generation,
            conditions: conditions(
                current.map(|s| s.conditions.as_slice()).unwrap_or_default(),
                &desired_conditions,
                object.metadata.generation,
                snapshot.now,
            ),
            members: members.map_or(0, |m| m.len() as u64),
            members_by_platform: by_platform,
        };
        write_status(&ctx, object.as_ref(), current, status).await?;
        Ok(Action::await_change())
    })
    .await
}

pub async fn update_policy(object: Arc<UpdatePolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let apply_ctx = ctx.clone();
    with_finalizer(object, ctx, "UpdatePolicy", |object, snapshot| async move {
        let ctx = apply_ctx;
        let object_key = key(object.as_ref());
        let index = snapshot
            .partial
            .checked
            .policies
            .iter()
            .position(|p| format!("UpdatePolicy {}", p.key) == object_key);
        let tally = index
            .and_then(|p| snapshot.standings.by_source.get(&Source::Policy(p)))
            .cloned()
            .unwrap_or_default();
        // The spec in force: the last valid one while the current one is invalid.
        let suspended = index.map_or(object.spec.suspend, |p| {
            snapshot.partial.checked.policies[p].suspend
        });
        if !suspended && let Some(p) = index {
            sync_generated_targets(&ctx, &snapshot, p, object.as_ref()).await?;
        }
        if let Some(p) = index
            && let Some(left) = snapshot
                .checked_out_by_policy
                .get(&snapshot.partial.checked.policies[p].key.to_string())
        {
            ctx.publish_event(
                object.as_ref(),
                EventType::Normal,
                "DevicesCheckedOut",
                &format!(
                    "{left} device(s) checked out of the MDM (mdm.CheckOut): their declarations are withdrawn and they are no longer counted"
                ),
            )
            .await;
        }
        let generated: Vec<&crate::resolve::GeneratedTarget> = snapshot
            .plan
            .generated
            .iter()
            .filter(|t| Some(t.policy) == index)
            .collect();
        let mut resolved: BTreeMap<(String, String, String, Option<String>, String), u64> =
            BTreeMap::new();
        if let Some(p) = index {
            for (device, outcome) in snapshot.devices.iter().zip(&snapshot.plan.devices) {
                for e in outcome
                    .enforcements
                    .iter()
                    .filter(|e| e.source == Source::Policy(p))
                {
                    let model = device
                        .catalog_device_id()
                        .unwrap_or(&device.model)
                        .to_string();
                    let key = (
                        device.platform.to_string(),
                        model,
                        e.version.to_string(),
                        e.build.as_ref().map(ToString::to_string),
                        e.deadline.strftime("%Y-%m-%dT%H:%M:%S").to_string(),
                    );
                    *resolved.entry(key).or_default() += 1;
                }
            }
        }
        let current = object.status.as_ref();
        let mut desired_conditions =
            standard_conditions(&snapshot, &object_key, suspended, Some(&tally));
        if ctx.insecure_no_hmac {
            desired_conditions.push(Desired::new(
                "Authenticated",
                false,
                "InsecureNoHmac",
                "started with --insecure-no-hmac: DDM status reports are not authenticated, so anyone who reaches the DDM port can report for any enrollment and change what its devices are sent",
            ));
        }
        let status = UpdatePolicyStatus {
            observed_generation: object.metadata.generation,
            conditions: conditions(
                current.map(|s| s.conditions.as_slice()).unwrap_or_default(),
                &desired_conditions,
                object.metadata.generation,
                snapshot.now,
            ),
            targets: generated.len() as u32,
            compliance: Some(tally.compliance()),
            // A target only counting devices already there enforces nothing.
            next_deadline: generated
                .iter()
                .filter(|t| !t.compliant_only())
                .map(|t| t.deadline)
                .min()
                .map(|d| d.strftime("%Y-%m-%dT%H:%M:%S").to_string()),
            devices: tally
                .counts
                .iter()
                .map(|(b, n)| (b.as_str().to_string(), *n))
                .collect(),
            resolved: resolved
                .into_iter()
                .take(500)
                .map(
                    |((platform, model, version, build, deadline), devices)| ResolvedModel {
                        platform,
                        model,
                        version,
                        build,
                        deadline,
                        devices,
                    },
                )
                .collect(),
            enrollment: object.spec.enrollment.as_ref().map(|_| {
                let key = ObjectKey::of(object.as_ref());
                // Counts shown by an earlier run carry on instead of restarting at zero.
                if let Some(shown) = current.and_then(|s| s.enrollment.as_ref()) {
                    ctx.enrollment.adopt(&key, shown);
                }
                ctx.enrollment.status_of(&key)
            }),
        };
        write_status(&ctx, object.as_ref(), current, status).await?;
        Ok(Action::await_change())
    })
    .await
}

/// Creates or updates the policy's generated targets by server-side apply (owned by the policy,
/// so deleting it cleans up) and deletes the ones no longer resolved; untouched when equal.
async fn sync_generated_targets(
    ctx: &Context,
    snapshot: &Snapshot,
    policy_index: usize,
    policy: &UpdatePolicy,
) -> Result<(), Error> {
    let checked = &snapshot.partial.checked.policies[policy_index];
    let namespace = checked.key.namespace.clone();
    let api: Api<EnforcementTarget> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing: Vec<Arc<EnforcementTarget>> = ctx
        .targets
        .state()
        .into_iter()
        .filter(|t| {
            t.namespace().as_deref() == Some(namespace.as_str())
                && t.labels().get(POLICY_LABEL) == Some(&checked.key.name)
                // Already being deleted: deleting again only repeats the event.
                && t.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let mut wanted = Vec::new();
    for target in snapshot
        .plan
        .generated
        .iter()
        .filter(|t| t.policy == policy_index)
    {
        let desired = target_object(checked, target);
        let name = desired.name_any();
        wanted.push(name.clone());
        let same = existing.iter().any(|e| {
            e.name_any() == name
                && e.spec == desired.spec
                && e.metadata.labels == desired.metadata.labels
                && e.metadata.owner_references == desired.metadata.owner_references
        });
        if same {
            continue;
        }
        let was = existing
            .iter()
            .find(|e| e.name_any() == name)
            .map(|e| e.spec.target_os_version.clone());
        ctx.metrics.kube_write("EnforcementTarget", "apply");
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await?;
        let models: Vec<String> = target
            .builds
            .iter()
            .take(5)
            .map(|(model, build)| format!("{model}: {build}"))
            .collect();
        let note = format!(
            "{}{} → {}{}, due {} (device-local), {} device(s) to update{}",
            target.platform,
            was.map(|w| format!(" {w}")).unwrap_or_default(),
            target.version,
            if models.is_empty() {
                String::new()
            } else {
                format!(" ({})", models.join(", "))
            },
            target.deadline.strftime("%Y-%m-%dT%H:%M"),
            target.devices,
            if target.up_to_date > 0 {
                format!(", {} already run it", target.up_to_date)
            } else {
                String::new()
            },
        );
        // The target as the related object and the deadline in the action: kube's recorder
        // folds events with the same key, which must not swallow a changed resolution.
        let action = format!("Apply{}", target.deadline.strftime("%Y%m%d%H%M"));
        ctx.publish_related_event(
            policy,
            EventType::Normal,
            "Resolved",
            &action,
            &note,
            Some(desired.object_ref(&())),
        )
        .await;
    }
    for stale in existing.iter().filter(|e| !wanted.contains(&e.name_any())) {
        ctx.metrics.kube_write("EnforcementTarget", "delete");
        match api
            .delete(&stale.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            // Gone already: that is what we wanted.
            Err(kube::Error::Api(status)) if status.code == 404 => continue,
            Err(error) => return Err(error.into()),
        }
        ctx.publish_event(
            policy,
            EventType::Normal,
            "TargetRetired",
            &format!(
                "EnforcementTarget {} is no longer resolved; deleted",
                stale.name_any()
            ),
        )
        .await;
    }
    Ok(())
}

pub async fn enforcement_target(
    object: Arc<EnforcementTarget>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let apply_ctx = ctx.clone();
    with_finalizer(
        object,
        ctx,
        "EnforcementTarget",
        |object, snapshot| async move {
            let ctx = apply_ctx;
            let object_key = key(object.as_ref());
            let name = object.name_any();
            let namespace = object.namespace().unwrap_or_else(|| "default".into());
            let index = snapshot
                .partial
                .checked
                .targets
                .iter()
                .position(|t| format!("EnforcementTarget {}", t.key) == object_key);
            // The spec in force: the last valid one while the current one is invalid.
            let suspended = index.map_or(object.spec.suspend, |t| {
                snapshot.partial.checked.targets[t].suspend
            });
            // Hand-written: its own source. Generated: the policy devices it names.
            let (tally, builds, later_personal_deadlines) = match index {
                Some(t) if !snapshot.partial.checked.targets[t].generated => (
                    snapshot
                        .standings
                        .by_source
                        .get(&Source::Target(t))
                        .cloned()
                        .unwrap_or_default(),
                    snapshot.partial.checked.targets[t]
                        .builds
                        .iter()
                        .map(|(m, b)| (m.clone(), b.to_string()))
                        .collect(),
                    None,
                ),
                _ => match snapshot.plan.generated.iter().position(|g| {
                    g.name == name
                        && snapshot.partial.checked.policies[g.policy].key.namespace == namespace
                }) {
                    Some(g) => (
                        snapshot
                            .standings
                            .by_generated
                            .get(g)
                            .cloned()
                            .unwrap_or_default(),
                        snapshot.plan.generated[g]
                            .builds
                            .iter()
                            .map(|(m, b)| (m.clone(), b.to_string()))
                            .collect(),
                        Some(snapshot.plan.generated[g].later_personal),
                    ),
                    None => (Tally::default(), BTreeMap::new(), None),
                },
            };
            let current = object.status.as_ref();
            let status = EnforcementTargetStatus {
                observed_generation: object.metadata.generation,
                conditions: conditions(
                    current.map(|s| s.conditions.as_slice()).unwrap_or_default(),
                    &standard_conditions(&snapshot, &object_key, suspended, Some(&tally)),
                    object.metadata.generation,
                    snapshot.now,
                ),
                compliance: Some(tally.compliance()),
                devices: counts(&tally),
                later_personal_deadlines,
                builds,
                worst_devices: tally
                    .worst
                    .iter()
                    .map(|w| DeviceProblem {
                        enrollment_id: w.enrollment_id.clone(),
                        model: w.model.clone(),
                        os_version: w.os_version.clone(),
                        state: w.state.to_string(),
                        failure_reason: w.failure_reason.clone(),
                    })
                    .collect(),
            };
            write_status(&ctx, object.as_ref(), current, status).await?;
            Ok(Action::await_change())
        },
    )
    .await
}

/// Retries with a short back-off; an object the resolver has not caught up with yet is retried
/// sooner.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    tracing::warn!(
        resource = %format!("{} {}", K::kind(&()), ObjectKey::of(object.as_ref())),
        %error,
        reason = error.reason(),
        "reconcile failed"
    );
    let _ = &ctx;
    match error {
        Error::ResolverBehind => Action::requeue(Duration::from_secs(2)),
        _ => Action::requeue(Duration::from_secs(15)),
    }
}

impl Context {
    pub async fn publish_related_event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
        related: Option<k8s_openapi::api::core::v1::ObjectReference>,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.chars().take(128).collect(),
            secondary: related,
        };
        self.metrics.kube_write("Event", "create");
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(%error, "cannot publish an event");
        }
    }

    pub async fn publish_event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        self.metrics.kube_write("Event", "create");
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(%error, "cannot publish an event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compliant_condition_counts_macs_without_a_bootstrap_token() {
        let snapshot = Snapshot {
            applied: Ok(0),
            ..Snapshot::default()
        };
        let mut tally = Tally::default();
        tally.counts.insert(Bucket::Pending, 12);
        tally.counts.insert(Bucket::Compliant, 3);
        tally.bootstrap_token_missing = 12;
        let compliant = |tally: &Tally| {
            standard_conditions(&snapshot, "UpdatePolicy it/macs", false, Some(tally))
                .into_iter()
                .find(|c| c.type_ == COMPLIANT)
                .expect("a Compliant condition")
        };
        let condition = compliant(&tally);
        assert_eq!(condition.reason, "InProgress");
        assert_eq!(
            condition.message,
            "3/15 devices run the target; 12 Macs lack a bootstrap token: their users will be asked to authenticate"
        );
        tally.bootstrap_token_missing = 0;
        assert_eq!(compliant(&tally).message, "3/15 devices run the target");
    }
}
