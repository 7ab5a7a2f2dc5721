//! One resolver pass, shared by standalone and Kubernetes mode: read the devices the backend
//! knows, resolve every device's whole set, and write the sets that changed — the one writer.
//!
//! A pass also keeps what the resolver remembers (`backend::Memory`): the release each policy is
//! taking, or took, each device to (so a generated target keeps counting the devices it took
//! to compliance), and the devices frozen because a resource applying to them was deleted with
//! `deletionPolicy: Orphan`. Both are written only when they change.

pub mod devices;
#[cfg(test)]
mod generated_tests;
#[cfg(test)]
pub(crate) mod ledger_tests;
pub mod report;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::api::DeletionPolicy;
use crate::api::validate::{Checked, CheckedGroup, ObjectKey};
use crate::backend::{
    ApplyReport, Assignment, Backend, BackendError, DeviceRecord, Memory, MemoryChanges, Orphan,
};
use crate::catalog::Catalog;
use crate::inventory::Device;
use crate::resolve::{self, Input, Plan, Source};

/// The resources a pass works from.
#[derive(Debug, Clone, Copy)]
pub struct Resources<'a> {
    /// Those in force.
    pub live: &'a Checked,
    /// Those being deleted with `deletionPolicy: Orphan` (others being deleted are simply left
    /// out): the devices they apply to are frozen with what they have.
    pub orphaning: &'a Checked,
}

/// Devices a pass left as they were, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frozen {
    /// Governed by a suspended group, policy or target.
    pub suspended: usize,
    /// Per resource deleted with `deletionPolicy: Orphan` (`Kind namespace/name`), the devices
    /// still frozen because of it.
    pub orphaned: BTreeMap<String, usize>,
}

impl Frozen {
    pub fn orphaned_total(&self) -> usize {
        self.orphaned.values().sum()
    }
}

/// What a pass computed and what writing it did.
pub struct PassResult {
    pub plan: Plan,
    pub devices: Vec<Device>,
    pub records: Vec<DeviceRecord>,
    /// Devices left as they were.
    pub frozen: Frozen,
    pub applied: Result<ApplyReport, BackendError>,
    /// Ledger rows the backend could not read (those devices were handed out anew).
    pub corrupt_ledger_rows: u64,
    /// Devices the MDM says checked out: not resolved, their sets withdrawn.
    pub checked_out: Vec<devices::CheckedOut>,
    /// Per policy (`namespace/name`), the devices it was taking somewhere whose check-out this
    /// pass was the first to see (their ledger entries are forgotten now): what an event says.
    pub checked_out_by_policy: BTreeMap<String, usize>,
}

pub async fn pass(
    backend: &dyn Backend,
    resources: Resources<'_>,
    seed: &[Device],
    seed_at: jiff::Timestamp,
    catalog: &Catalog,
    assume_supervised: bool,
    now: jiff::Timestamp,
) -> Result<PassResult, BackendError> {
    let checked = resources.live;
    let mut records = backend.devices().await?;
    let mdm_devices = backend.mdm_devices().await?;
    let devices::Merged {
        devices,
        checked_out,
    } = devices::merge(seed, seed_at, &mdm_devices, &records, assume_supervised);
    drop(mdm_devices);
    // Room for the records the apply below adds (devices that had no row), made now, before the
    // plan exists: growing the listing then would hold two copies of it beside the plan.
    let without_row = devices
        .iter()
        .filter(|d| {
            records
                .binary_search_by(|r| r.enrollment_id.as_str().cmp(&d.enrollment_id))
                .is_err()
        })
        .count();
    records.reserve_exact(without_row);
    let memory = backend.memory().await?;
    let plan = resolve::resolve_with(
        Input {
            groups: &checked.groups,
            policies: &checked.policies,
            targets: &checked.targets,
            devices: &devices,
            catalog,
            now,
        },
        &memory.ledger,
    );
    let suspended = suspended_devices(checked, &plan);
    let assigned: HashSet<&str> = records
        .iter()
        .filter(|r| !r.assigned.is_empty())
        .map(|r| r.enrollment_id.as_str())
        .collect();
    let orphans = orphans(resources, &devices, &assigned, &plan, &memory, now);
    let mut changes = MemoryChanges {
        orphans: orphans.changes,
        ..MemoryChanges::default()
    };
    // The release each policy is taking, or took, each device to; a frozen device's stays.
    for (index, (device, outcome)) in devices.iter().zip(&plan.devices).enumerate() {
        if suspended.contains(&index) || orphans.frozen.contains(&index) {
            continue;
        }
        let mut now = outcome.rollouts(&checked.policies);
        let before = memory.ledger.devices.get(&device.enrollment_id);
        // A policy that still applies but gives nothing this pass (a refusal, a catalog
        // refresh, a superseding target) keeps what it was taking the device to.
        if let Some(before) = before {
            for p in &outcome.policies {
                let key = checked.policies[*p].key.to_string();
                if !now.contains_key(&key)
                    && let Some(rollout) = before.get(&key)
                {
                    now.insert(key, rollout.clone());
                }
            }
        }
        if before.map_or(!now.is_empty(), |before| *before != now) {
            changes.rollouts.insert(device.enrollment_id.clone(), now);
        }
    }
    // Forget devices no longer known at all (removed from the inventory before they ever
    // reported): their memory would otherwise stay forever, and freeze them if they came back.
    let present: HashSet<&str> = devices.iter().map(|d| d.enrollment_id.as_str()).collect();
    let left: HashSet<&str> = checked_out
        .iter()
        .map(|c| c.enrollment_id.as_str())
        .collect();
    let mut checked_out_by_policy: BTreeMap<String, usize> = BTreeMap::new();
    for (gone, rollouts) in memory
        .ledger
        .devices
        .iter()
        .filter(|(k, _)| !present.contains(k.as_str()))
    {
        if left.contains(gone.as_str()) {
            for policy in rollouts.keys() {
                *checked_out_by_policy.entry(policy.clone()).or_default() += 1;
            }
        }
        changes
            .rollouts
            .insert(gone.clone(), resolve::DeviceRollouts::new());
    }
    for gone in memory
        .orphans
        .keys()
        .filter(|k| !present.contains(k.as_str()))
    {
        changes.orphans.insert(gone.clone(), None);
    }
    changes.rings = ring_changes(checked, &plan, &memory, &changes);
    let frozen = Frozen {
        suspended: suspended.len(),
        orphaned: orphans.by_resource,
    };
    // Remembered first: a device is frozen durably before any pass leaves it out. (The
    // memory snapshot goes first, so the store updates its copy in place.)
    let corrupt_ledger_rows = memory.corrupt_rows;
    drop(memory);
    // Handed over: the backend keeps them (on a first pass, every device's rollouts).
    if let Err(error) = backend.remember(changes).await {
        return Ok(PassResult {
            frozen,
            plan,
            devices,
            records,
            applied: Err(error),
            corrupt_ledger_rows,
            checked_out,
            checked_out_by_policy,
        });
    }
    let with_row: HashSet<&str> = records.iter().map(|r| r.enrollment_id.as_str()).collect();
    let mut assignments: Vec<Assignment> = devices
        .iter()
        .zip(&plan.devices)
        .enumerate()
        // A device that had a set and now gets none is written too: that withdraws it. A known
        // device that never had a set gets its empty one, so it is not handed the bootstrap set
        // for unknown enrollments when it first checks in (an unsupervised Mac would reject its
        // status subscriptions: Apple allows them there only on supervised or user enrollments).
        .filter(|(_, (device, outcome))| {
            let id = device.enrollment_id.as_str();
            !outcome.declarations.is_empty() || assigned.contains(id) || !with_row.contains(id)
        })
        .filter(|(index, _)| !suspended.contains(index) && !orphans.frozen.contains(index))
        .map(|(_, (device, outcome))| Assignment {
            enrollment_id: device.enrollment_id.clone(),
            identifiers: outcome
                .declarations
                .iter()
                .map(|i| plan.declarations[*i as usize].identifier.clone())
                .collect(),
        })
        .collect();
    assignments.extend(bootstrap_rejected(&devices, &records));
    assignments.extend(withdrawn_checked_out(&checked_out, &records));
    let applied = backend.apply(&plan.declarations, &assignments).await;
    let mut records = match &applied {
        Ok(report) => with_assignments(records, assignments, &report.changed, now),
        Err(_) => backend.devices().await.unwrap_or(records),
    };
    // Enrollments no longer known that never reported (removed from the inventory before their
    // first report; rows an old version created on a GET) are forgotten after a grace period:
    // they would otherwise stay forever. One that checks in again gets the bootstrap set.
    if applied.is_ok() {
        let grace = crate::status::FORGET_UNREPORTED_AFTER;
        let unreported: Vec<String> = records
            .iter()
            .filter(|r| r.last_report.is_none() && !present.contains(r.enrollment_id.as_str()))
            .filter(|r| {
                r.assigned_at
                    .is_some_and(|at| now.duration_since(at) > grace)
            })
            .map(|r| r.enrollment_id.clone())
            .collect();
        match backend.forget_unreported(&unreported).await {
            Ok(forgotten) if !forgotten.is_empty() => {
                tracing::info!(
                    enrollments = forgotten.len(),
                    "forgot enrollments that never reported"
                );
                let forgotten: HashSet<String> = forgotten.into_iter().collect();
                records.retain(|r| !forgotten.contains(&r.enrollment_id));
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot forget enrollments that never reported"),
        }
    }
    Ok(PassResult {
        frozen,
        plan,
        devices,
        records,
        applied,
        corrupt_ledger_rows,
        checked_out,
        checked_out_by_policy,
    })
}

/// Checked-out devices that still hold declarations, or were never given a set (they would be
/// served the bootstrap set): an empty set each. Once written, a later pass has nothing to do.
fn withdrawn_checked_out(
    checked_out: &[devices::CheckedOut],
    records: &[DeviceRecord],
) -> Vec<Assignment> {
    if checked_out.is_empty() {
        return Vec::new();
    }
    let by_id: HashMap<&str, &DeviceRecord> = records
        .iter()
        .map(|r| (r.enrollment_id.as_str(), r))
        .collect();
    checked_out
        .iter()
        .filter(|gone| {
            by_id
                .get(gone.enrollment_id.as_str())
                .is_some_and(|r| !r.assigned.is_empty() || r.assigned_at.is_none())
        })
        .map(|gone| {
            tracing::info!(enrollment_id = %gone.enrollment_id, checked_out_at = %gone.at, "the device checked out of the MDM: its set is withdrawn");
            Assignment {
                enrollment_id: gone.enrollment_id.clone(),
                identifiers: Vec::new(),
            }
        })
        .collect()
}

/// The ring deadlines to write: those this pass handed out or re-handed, and those no device
/// entry of a policy still in force refers to any more (forgotten, never applied again).
fn ring_changes(
    checked: &Checked,
    plan: &Plan,
    memory: &Memory,
    changes: &MemoryChanges,
) -> BTreeMap<resolve::RingKey, Option<resolve::RingDeadline>> {
    let mut rings = BTreeMap::new();
    for (key, ring) in &plan.rings {
        if memory.ledger.rings.get(key) != Some(ring) {
            rings.insert(key.clone(), Some(ring.clone()));
        }
    }
    // Only ring entries this pass did not use can be forgotten; most passes have none, and
    // then the scan over every device's entries below is skipped.
    let unused: Vec<&resolve::RingKey> = memory
        .ledger
        .rings
        .keys()
        .filter(|key| !plan.rings.contains_key(*key))
        .collect();
    if unused.is_empty() {
        return rings;
    }
    let policies: HashSet<String> = checked.policies.iter().map(|p| p.key.to_string()).collect();
    let mut referenced: HashSet<(&str, &str)> = HashSet::new();
    let entries = memory
        .ledger
        .devices
        .iter()
        .filter(|(enrollment, _)| !changes.rollouts.contains_key(*enrollment))
        .chain(changes.rollouts.iter());
    for (_, rollouts) in entries {
        for (policy, rollout) in rollouts {
            referenced.insert((policy.as_str(), rollout.version.as_str()));
        }
    }
    for key in unused {
        let kept = policies.contains(&key.policy)
            && referenced.contains(&(key.policy.as_str(), key.version.as_str()));
        if !kept {
            rings.insert(key.clone(), None);
        }
    }
    rings
}

/// The records as the backend has them after an apply that changed `changed`: their sets are
/// the assignments just written (reading every device back would parse every stored status
/// again, the most expensive part of a pass).
fn with_assignments(
    mut records: Vec<DeviceRecord>,
    assignments: Vec<Assignment>,
    changed: &[String],
    now: jiff::Timestamp,
) -> Vec<DeviceRecord> {
    if changed.is_empty() {
        return records;
    }
    let changed: HashSet<&str> = changed.iter().map(String::as_str).collect();
    // Positions first, written after: no copy of every enrollment id, and no sort (a buffer of
    // half the records) unless a record was added.
    let mut updated = Vec::new();
    let mut added = Vec::new();
    {
        let index: HashMap<&str, usize> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.enrollment_id.as_str(), i))
            .collect();
        // Moved, not copied: the pass has no other use for them.
        for assignment in assignments
            .into_iter()
            .filter(|a| changed.contains(a.enrollment_id.as_str()))
        {
            let mut identifiers = assignment.identifiers;
            identifiers.sort_unstable();
            match index.get(assignment.enrollment_id.as_str()) {
                Some(i) => updated.push((*i, identifiers)),
                None => added.push(DeviceRecord {
                    enrollment_id: assignment.enrollment_id,
                    status: Default::default(),
                    assigned: identifiers,
                    last_report: None,
                    assigned_at: Some(now),
                }),
            }
        }
    }
    for (i, identifiers) in updated {
        records[i].assigned = identifiers;
        records[i].assigned_at = Some(now);
    }
    let sorted = records.is_sorted_by(|a, b| a.enrollment_id <= b.enrollment_id);
    if !added.is_empty() || !sorted {
        // Exactly (the pass reserved it before resolving): doubling the listing would hold
        // three listings' worth at once.
        records.reserve_exact(added.len());
        records.extend(added);
        // In place (ids are unique, so unstable is the same order): a stable sort would take a
        // buffer of half the records.
        records.sort_unstable_by(|a, b| a.enrollment_id.cmp(&b.enrollment_id));
    }
    records
}

/// Enrollments known only by their reports that rejected a declaration of the set they hold
/// (the bootstrap set, since the pass gives them nothing else): they get an empty set instead of
/// keeping declarations their OS or enrollment refuses — an unsupervised Mac, which cannot
/// subscribe to status items, never says what it is over DDM.
fn bootstrap_rejected(devices: &[Device], records: &[DeviceRecord]) -> Vec<Assignment> {
    let known: HashSet<&str> = devices.iter().map(|d| d.enrollment_id.as_str()).collect();
    // An enrollment with no set of its own is served the bootstrap set from memory.
    let bootstrap: Vec<String> = crate::operator::bootstrap_declarations()
        .into_iter()
        .map(|d| d.identifier)
        .collect();
    records
        .iter()
        .filter(|r| !known.contains(r.enrollment_id.as_str()))
        .filter(|r| {
            let served = if r.assigned.is_empty() && r.assigned_at.is_none() {
                &bootstrap
            } else {
                &r.assigned
            };
            !served.is_empty()
                && r.status
                    .declarations
                    .iter()
                    .any(|d| d.valid == "invalid" && served.contains(&d.identifier))
        })
        .map(|r| {
            tracing::info!(enrollment_id = %r.enrollment_id, "an unknown enrollment rejected its bootstrap set; it gets nothing until it is known");
            Assignment {
                enrollment_id: r.enrollment_id.clone(),
                identifiers: Vec::new(),
            }
        })
        .collect()
}

/// Devices governed by a suspended group, policy or target keep what they have.
fn suspended_devices(checked: &Checked, plan: &Plan) -> HashSet<usize> {
    let mut frozen = HashSet::new();
    for (group, members) in checked.groups.iter().zip(&plan.members) {
        if group.suspend {
            frozen.extend(members.iter().map(|m| *m as usize));
        }
    }
    for (index, outcome) in plan.devices.iter().enumerate() {
        let suspended = |source: &Source| match source {
            Source::Policy(p) => checked.policies[*p].suspend,
            Source::Target(t) => checked.targets[*t].suspend,
        };
        if outcome
            .policies
            .iter()
            .any(|p| checked.policies[*p].suspend)
            || outcome.enforcements.iter().any(|e| suspended(&e.source))
            || outcome.notes.iter().any(|n| suspended(&n.source))
        {
            frozen.insert(index);
        }
    }
    frozen
}

/// The resources applying to a device in this pass, as `Kind namespace/name`.
fn sources_of(checked: &Checked, plan: &Plan, index: usize) -> BTreeSet<String> {
    let outcome = &plan.devices[index];
    let policies = outcome
        .policies
        .iter()
        .map(|p| format!("UpdatePolicy {}", checked.policies[*p].key));
    let targets = outcome
        .enforcements
        .iter()
        .map(|e| e.source)
        .chain(outcome.notes.iter().map(|n| n.source))
        .filter_map(|source| match source {
            Source::Target(t) => Some(format!("EnforcementTarget {}", checked.targets[t].key)),
            Source::Policy(_) => None,
        });
    policies.chain(targets).collect()
}

/// The frozen devices of this pass and the memory changes that keep them so.
struct Orphans {
    /// Device indexes.
    frozen: HashSet<usize>,
    changes: BTreeMap<String, Option<Orphan>>,
    by_resource: BTreeMap<String, usize>,
}

/// Devices stay frozen until a resource that did not apply to them when they were frozen
/// applies (then they are resolved normally again); devices a resource being deleted with
/// `deletionPolicy: Orphan` applies to are frozen now, with what they have.
fn orphans(
    resources: Resources<'_>,
    devices: &[Device],
    assigned: &HashSet<&str>,
    plan: &Plan,
    memory: &Memory,
    now: jiff::Timestamp,
) -> Orphans {
    let checked = resources.live;
    let mut out = Orphans {
        frozen: HashSet::new(),
        changes: BTreeMap::new(),
        by_resource: BTreeMap::new(),
    };
    let mut known: HashSet<usize> = HashSet::new();
    for (index, device) in devices.iter().enumerate() {
        let Some(orphan) = memory.orphans.get(&device.enrollment_id) else {
            continue;
        };
        let sources = sources_of(checked, plan, index);
        if let Some(gone) = orphan.sources.iter().find(|s| !sources.contains(*s)) {
            // A resource it kept is gone: a Withdraw must withdraw. It is resolved normally,
            // unless a resource being deleted with Orphan freezes it again just below.
            tracing::info!(
                enrollment_id = %device.enrollment_id,
                orphaned_by = %orphan.by,
                source = %gone,
                "a resource an orphaned device kept is gone: it is resolved normally"
            );
            out.changes.insert(device.enrollment_id.clone(), None);
            continue;
        }
        known.insert(index);
        if let Some(new) = sources.iter().find(|s| !orphan.sources.contains(*s)) {
            tracing::info!(
                enrollment_id = %device.enrollment_id,
                orphaned_by = %orphan.by,
                source = %new,
                "a resource applies to an orphaned device again: it is resolved normally"
            );
            out.changes.insert(device.enrollment_id.clone(), None);
            continue;
        }
        out.frozen.insert(index);
        *out.by_resource.entry(orphan.by.clone()).or_default() += 1;
    }
    for (by, members) in orphaned_members(resources, devices) {
        let mut frozen_now = 0usize;
        for index in members {
            // Frozen already (or just let go: a resource took it over); a device that never
            // had a set has nothing to keep.
            if known.contains(&index)
                || out.frozen.contains(&index)
                || !assigned.contains(devices[index].enrollment_id.as_str())
            {
                continue;
            }
            out.frozen.insert(index);
            out.changes.insert(
                devices[index].enrollment_id.clone(),
                Some(Orphan {
                    by: by.clone(),
                    sources: sources_of(checked, plan, index),
                    since: now,
                }),
            );
            frozen_now += 1;
        }
        if frozen_now > 0 {
            tracing::info!(
                resource = %by,
                devices = frozen_now,
                "deleted with deletionPolicy Orphan: its devices keep the declarations they have until a resource that does not apply to them now does"
            );
            *out.by_resource.entry(by).or_default() += frozen_now;
        }
    }
    out
}

/// Each resource being deleted with `deletionPolicy: Orphan`, with the devices it applies to.
fn orphaned_members(resources: Resources<'_>, devices: &[Device]) -> Vec<(String, Vec<usize>)> {
    let orphaning = resources.orphaning;
    let groups: HashMap<&ObjectKey, &CheckedGroup> = resources
        .live
        .groups
        .iter()
        .chain(&orphaning.groups)
        .map(|g| (&g.key, g))
        .collect();
    let members = |keys: &mut dyn Iterator<Item = &ObjectKey>,
                   platform: Option<crate::catalog::Platform>|
     -> Vec<usize> {
        let selected: Vec<&CheckedGroup> = keys.filter_map(|k| groups.get(k).copied()).collect();
        devices
            .iter()
            .enumerate()
            .filter(|(_, d)| platform.is_none_or(|p| d.platform == p))
            .filter(|(_, d)| selected.iter().any(|g| resolve::selects(g, d)))
            .map(|(i, _)| i)
            .collect()
    };
    let mut out = Vec::new();
    for group in orphaning
        .groups
        .iter()
        .filter(|g| g.deletion_policy == DeletionPolicy::Orphan)
    {
        out.push((
            format!("FleetGroup {}", group.key),
            members(&mut std::iter::once(&group.key), None),
        ));
    }
    for policy in orphaning
        .policies
        .iter()
        .filter(|p| p.deletion_policy == DeletionPolicy::Orphan)
    {
        out.push((
            format!("UpdatePolicy {}", policy.key),
            members(&mut policy.rings.iter().flat_map(|r| &r.groups), None),
        ));
    }
    for target in orphaning
        .targets
        .iter()
        .filter(|t| !t.generated && t.deletion_policy == DeletionPolicy::Orphan)
    {
        out.push((
            format!("EnforcementTarget {}", target.key),
            members(&mut target.groups.iter(), Some(target.platform)),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::embedded::Embedded;
    use crate::backend::store::Store;

    fn policy(name: &str, deletion: &str) -> String {
        format!(
            "---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {{name: {name}, namespace: it}}
spec:
  fleetGroups: [phones]
  target: {{strategy: 'pinned:26.5'}}
  deadline: {{daysAfterPosting: 21, localTime: '{time}', timeZone: UTC}}
  deletionPolicy: {deletion}
",
            time = if name == "hold" { "19:00" } else { "17:30" }
        )
    }

    fn check(text: &str) -> Checked {
        let text = format!(
            "apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {{name: phones, namespace: it}}
spec: {{platforms: [iOS]}}
{text}"
        );
        crate::test_support::checked(&text)
    }

    struct Fixture {
        seed: Vec<Device>,
        catalog: Catalog,
    }

    impl Fixture {
        fn new() -> Self {
            let seed = crate::inventory::parse(
                "- {enrollmentId: A, platform: iOS, model: 'iPhone15,2', osVersion: '26.0', supervised: true, enrollmentType: ade}
- {enrollmentId: B, platform: iOS, model: 'iPhone15,2', osVersion: '26.0', supervised: true, enrollmentType: ade}
",
            )
            .unwrap_or_else(|p| panic!("{p:?}"));
            let catalog = crate::test_support::catalog_2026_08_22();
            Fixture { seed, catalog }
        }

        async fn pass(
            &self,
            backend: &Embedded,
            live: &Checked,
            orphaning: &Checked,
        ) -> PassResult {
            let result = pass(
                backend,
                Resources { live, orphaning },
                &self.seed,
                jiff::Timestamp::UNIX_EPOCH,
                &self.catalog,
                true,
                "2026-08-22T12:00:00Z".parse().expect("a timestamp"),
            )
            .await
            .expect("a pass");
            assert!(result.applied.is_ok(), "{:?}", result.applied);
            result
        }
    }

    fn sets(store: &Store) -> Vec<Option<String>> {
        ["A", "B"]
            .iter()
            .map(|id| store.served_set(id).map(|s| s.token.clone()))
            .collect()
    }

    #[tokio::test]
    async fn orphaned_devices_keep_their_sets_across_passes_and_reopens_until_a_new_policy_applies()
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ddm.sqlite");
        let fixture = Fixture::new();
        let none = Checked::default();
        let with_hold = check(&policy("hold", "Orphan"));
        let without = check("");

        let store = Arc::new(Store::open(&path).expect("store"));
        let backend = Embedded::new(store.clone(), None);
        let first = fixture.pass(&backend, &with_hold, &none).await;
        assert_eq!(first.frozen, Frozen::default());
        let held = sets(&store);
        assert!(held.iter().all(Option::is_some));
        // Both are being taken to 26.5 by it: remembered.
        assert_eq!(store.memory().ledger.devices.len(), 2);

        // Deleted with Orphan: frozen, nothing written to their sets.
        let deleting = fixture.pass(&backend, &without, &with_hold).await;
        let orphaned = BTreeMap::from([("UpdatePolicy it/hold".to_string(), 2)]);
        assert_eq!(deleting.frozen.orphaned, orphaned);
        assert_eq!(
            deleting.applied.as_ref().map(|r| r.changed.len()).ok(),
            Some(0)
        );
        assert_eq!(sets(&store), held);
        let memory = store.memory();
        assert_eq!(memory.orphans.len(), 2);
        assert!(
            memory
                .orphans
                .values()
                .all(|o| o.by == "UpdatePolicy it/hold" && o.sources.is_empty())
        );
        // A frozen device's rollouts stay as they were.
        assert_eq!(memory.ledger.devices.len(), 2);

        // Gone: still frozen, and after a reopen of the store too.
        let gone = fixture.pass(&backend, &without, &none).await;
        assert_eq!(gone.frozen.orphaned, orphaned);
        assert_eq!(sets(&store), held);
        drop(backend);
        drop(store);
        let store = Arc::new(Store::open(&path).expect("reopen"));
        let backend = Embedded::new(store.clone(), None);
        let reopened = fixture.pass(&backend, &without, &none).await;
        assert_eq!(reopened.frozen.orphaned, orphaned);
        assert_eq!(
            reopened.applied.as_ref().map(|r| r.changed.len()).ok(),
            Some(0)
        );
        assert_eq!(sets(&store), held);

        // A policy that did not apply to them then: resolved normally again.
        let again = check(&policy("again", "Withdraw"));
        let taken_over = fixture.pass(&backend, &again, &none).await;
        assert_eq!(taken_over.frozen, Frozen::default());
        assert!(store.memory().orphans.is_empty());
        let now = sets(&store);
        assert!(
            now.iter().zip(&held).all(|(n, h)| n.is_some() && n != h),
            "{now:?}"
        );
        assert_eq!(
            fixture
                .pass(&backend, &again, &none)
                .await
                .applied
                .map(|r| r.changed.len())
                .ok(),
            Some(0),
            "a pass with nothing changed writes nothing"
        );
    }

    #[tokio::test]
    async fn deleting_with_withdraw_withdraws_and_a_group_orphans_its_members() {
        let fixture = Fixture::new();
        let none = Checked::default();
        let store = Arc::new(Store::in_memory().expect("store"));
        let backend = Embedded::new(store.clone(), None);
        let withdraw = check(&policy("hold", "Withdraw"));
        fixture.pass(&backend, &withdraw, &none).await;
        let held = sets(&store);
        // Withdraw: a pass without it changes both sets (the deleting object is simply left
        // out, so it is not `orphaning` even when passed there).
        let after = fixture.pass(&backend, &check(""), &withdraw).await;
        assert_eq!(after.frozen, Frozen::default());
        assert!(sets(&store).iter().zip(&held).all(|(n, h)| n != h));

        // A FleetGroup deleted with Orphan freezes its members.
        let store = Arc::new(Store::in_memory().expect("store"));
        let backend = Embedded::new(store.clone(), None);
        let mut live = check(&policy("hold", "Withdraw"));
        fixture.pass(&backend, &live, &none).await;
        let held = sets(&store);
        let mut group = live.groups.remove(0);
        group.deletion_policy = DeletionPolicy::Orphan;
        let orphaning = Checked {
            groups: vec![group],
            ..Checked::default()
        };
        let result = fixture.pass(&backend, &live, &orphaning).await;
        assert_eq!(
            result.frozen.orphaned,
            BTreeMap::from([("FleetGroup it/phones".to_string(), 2)])
        );
        assert_eq!(sets(&store), held);
    }

    #[tokio::test]
    async fn withdrawing_a_resource_an_orphaned_device_kept_withdraws_it() {
        let fixture = Fixture::new();
        let none = Checked::default();
        let store = Arc::new(Store::in_memory().expect("store"));
        let backend = Embedded::new(store.clone(), None);
        let both = check(&format!(
            "{}{}",
            policy("hold", "Orphan"),
            policy("keep", "Withdraw")
        ));
        fixture.pass(&backend, &both, &none).await;
        let held = sets(&store);
        // `hold` goes with Orphan: frozen, keeping `keep` as a source.
        let keep_only = check(&policy("keep", "Withdraw"));
        let hold_only = check(&policy("hold", "Orphan"));
        let orphaning = Checked {
            policies: hold_only.policies.clone(),
            ..Checked::default()
        };
        let frozen = fixture.pass(&backend, &keep_only, &orphaning).await;
        assert_eq!(
            frozen.frozen.orphaned,
            BTreeMap::from([("UpdatePolicy it/hold".to_string(), 2)])
        );
        assert_eq!(sets(&store), held);
        // `keep` goes with Withdraw: its declarations must go, so the devices are resolved
        // normally (nothing applies now) and the freeze is over.
        let gone = fixture.pass(&backend, &check(""), &none).await;
        assert_eq!(gone.frozen, Frozen::default());
        assert!(store.memory().orphans.is_empty());
        assert!(sets(&store).iter().zip(&held).all(|(now, was)| now != was));
    }

    #[tokio::test]
    async fn no_device_keeps_a_bootstrap_set_it_cannot_take() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(&dir.path().join("ddm.sqlite")).expect("store"));
        let backend = Embedded::new(store.clone(), None);
        let live = check(&policy("hold", "Withdraw"));
        let catalog = Fixture::new().catalog;
        // A Mac of the inventory that no group selects, and an unknown enrollment that was
        // handed the bootstrap set and rejected its subscriptions (an unsupervised Mac would).
        let seed = crate::inventory::parse(
            "- {enrollmentId: M, platform: macOS, model: 'Mac14,2', osVersion: '15.6', supervised: false, enrollmentType: ade}\n",
        )
        .unwrap_or_else(|p| panic!("{p:?}"));
        let bootstrap = crate::operator::bootstrap_declarations();
        let identifiers: Vec<String> = bootstrap.iter().map(|d| d.identifier.clone()).collect();
        store
            .apply(
                &bootstrap,
                &[Assignment {
                    enrollment_id: "U".into(),
                    identifiers: identifiers.clone(),
                }],
            )
            .expect("bootstrap");
        let subscriptions = &bootstrap[0];
        assert_eq!(
            subscriptions.declaration_type,
            crate::declarations::SUBSCRIPTIONS_TYPE
        );
        let raw = serde_json::json!({"StatusItems": {"management": {"declarations": {
            "configurations": [{"identifier": subscriptions.identifier, "active": false,
                "valid": "invalid", "server-token": subscriptions.server_token,
                "reasons": [{"code": "Error.ConfigurationNotSupported"}]}],
            "activations": [], "assets": [], "management": []}}}})
        .to_string();
        let report = crate::status::StatusReport::from_slice(raw.as_bytes()).expect("a report");
        store
            .record_reports(&[("U".to_string(), report, raw.into_bytes())])
            .expect("record");

        let result = pass(
            &backend,
            Resources {
                live: &live,
                orphaning: &Checked::default(),
            },
            &seed,
            jiff::Timestamp::UNIX_EPOCH,
            &catalog,
            true,
            "2026-08-22T12:00:00Z".parse().expect("a timestamp"),
        )
        .await
        .expect("a pass");
        assert!(result.applied.is_ok(), "{:?}", result.applied);
        for id in ["M", "U"] {
            let set = store
                .served_set(id)
                .unwrap_or_else(|| panic!("{id} has a set"));
            assert!(set.members.is_empty(), "{id}: {:?}", set.members);
        }
    }

    #[tokio::test]
    async fn enrollments_that_never_reported_are_forgotten_after_the_grace_period() {
        let mut fixture = Fixture::new();
        let none = Checked::default();
        let store = Arc::new(Store::in_memory().expect("store").with_clock(
            crate::clock::Clock::manual("2026-08-22T12:00:00Z".parse().expect("a timestamp")),
        ));
        let backend = Embedded::new(store.clone(), None);
        let hold = check(&policy("hold", "Withdraw"));
        fixture.pass(&backend, &hold, &none).await;
        assert!(store.served_set("A").is_some() && store.served_set("B").is_some());
        // A reports once; B never does. Then both leave the inventory.
        let raw = br#"{"StatusItems":{"softwareupdate":{"install-state":"none"}}}"#;
        let report = crate::status::StatusReport::from_slice(raw).expect("a report");
        store
            .record_reports(&[("A".to_string(), report, raw.to_vec())])
            .expect("record");
        fixture.seed.clear();
        let at = |days: i64| {
            let now: jiff::Timestamp = "2026-08-22T12:00:00Z".parse().expect("a timestamp");
            now.checked_add(jiff::SignedDuration::from_hours(days * 24))
                .expect("a timestamp")
        };
        for (days, b_kept) in [(6, true), (8, false)] {
            let result = pass(
                &backend,
                Resources {
                    live: &hold,
                    orphaning: &none,
                },
                &fixture.seed,
                jiff::Timestamp::UNIX_EPOCH,
                &fixture.catalog,
                true,
                at(days),
            )
            .await
            .expect("a pass");
            assert!(result.applied.is_ok());
            assert_eq!(store.served_set("B").is_some(), b_kept, "day {days}");
            assert!(store.served_set("A").is_some(), "A reported: it stays");
            assert_eq!(
                result.records.iter().any(|r| r.enrollment_id == "B"),
                b_kept
            );
        }
    }

    #[tokio::test]
    async fn devices_gone_from_the_inventory_are_forgotten() {
        let mut fixture = Fixture::new();
        let none = Checked::default();
        let store = Arc::new(Store::in_memory().expect("store"));
        let backend = Embedded::new(store.clone(), None);
        let hold = check(&policy("hold", "Withdraw"));
        fixture.pass(&backend, &hold, &none).await;
        assert_eq!(store.memory().ledger.devices.len(), 2);
        // B leaves the inventory (it never reported): its memory goes with it.
        fixture.seed.retain(|d| d.enrollment_id == "A");
        fixture.pass(&backend, &hold, &none).await;
        let memory = store.memory();
        assert_eq!(
            memory.ledger.devices.keys().collect::<Vec<_>>(),
            vec![&"A".to_string()]
        );
    }
}
