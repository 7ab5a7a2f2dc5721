//! The one writer in Kubernetes mode: whenever a resource, the catalog or a device changes, one
//! pass over every object in the watch caches computes every device's whole set and writes the
//! sets that changed; the result is published as a snapshot the controllers report from.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use tokio::sync::{mpsc, watch};

use crate::api::validate::{Found, FoundObjects, Missing, Partial, check_each, substitute};
use crate::api::{DeletionPolicy, EnforcementTarget, FleetGroup, UpdatePolicy};
use crate::backend::DeviceRecord;
use crate::backend::embedded::Embedded;
use crate::enroll::GateView;
use crate::inventory::Device;
use crate::metrics::Metrics;
use crate::pass;
use crate::pass::report::{Standings, standings};
use crate::resolve::Plan;

/// What the controllers read: the result of the latest pass.
pub struct Snapshot {
    /// Counts passes; 0 before the first.
    pub pass: u64,
    pub partial: Partial,
    pub plan: Plan,
    pub devices: Arc<Vec<Device>>,
    /// The pass's devices for `/api/v1/devices` (`None` when the pass could not run).
    pub device_index: Option<Arc<crate::view::DeviceIndex>>,
    pub records: Vec<DeviceRecord>,
    pub standings: Standings,
    /// Devices the pass left as they were.
    pub frozen: pass::Frozen,
    /// Devices the MDM says checked out: left out, their sets withdrawn.
    pub checked_out: Vec<pass::devices::CheckedOut>,
    /// Per policy (`namespace/name`), devices whose check-out this pass first saw.
    pub checked_out_by_policy: std::collections::BTreeMap<String, usize>,
    /// `Ok(changed enrollments)` or why the backend write failed.
    pub applied: Result<usize, String>,
    /// The catalog's origin and any problem fetching it.
    pub catalog_origin: String,
    pub catalog_problem: Option<String>,
    /// `Kind namespace/name` → (generation, being deleted) of every object this pass saw.
    pub seen: HashMap<String, (Option<i64>, bool)>,
    pub now: jiff::Timestamp,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            pass: 0,
            partial: Partial::default(),
            plan: Plan::default(),
            devices: Arc::default(),
            device_index: None,
            records: Vec::new(),
            standings: Standings::default(),
            frozen: pass::Frozen::default(),
            checked_out: Vec::new(),
            checked_out_by_policy: Default::default(),
            applied: Err("no pass has run yet".into()),
            catalog_origin: String::new(),
            catalog_problem: None,
            seen: HashMap::new(),
            now: jiff::Timestamp::UNIX_EPOCH,
        }
    }
}

impl Snapshot {
    /// Whether this pass reflects this exact version of the object.
    pub fn has_seen(&self, key: &str, generation: Option<i64>, deleting: bool) -> bool {
        self.seen.get(key) == Some(&(generation, deleting))
    }
}

/// The caches and channels the resolver works from.
pub struct Resolver {
    pub groups: Store<FleetGroup>,
    pub policies: Store<UpdatePolicy>,
    pub targets: Store<EnforcementTarget>,
    pub backend: Embedded,
    pub catalog: Arc<tokio::sync::RwLock<crate::operator::CatalogState>>,
    pub seed: Arc<Vec<Device>>,
    /// When the inventory's facts were true (`inventory::file_time`).
    pub seed_at: jiff::Timestamp,
    pub assume_supervised: bool,
    pub metrics: Arc<Metrics>,
    pub publish: watch::Sender<Arc<Snapshot>>,
    /// What the enrollment gate decides from.
    pub gate: watch::Sender<Arc<GateView>>,
    /// Pings from controllers (an object changed) and from device reports.
    pub triggers: mpsc::UnboundedReceiver<()>,
    /// A pass at least this often, so silent devices turn stale on time.
    pub resync: Duration,
}

pub fn key<K: kube::Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        object.namespace().unwrap_or_else(|| "default".into()),
        object.name_any()
    )
}

/// Every cached object, each one's (generation, being deleted) noted in `seen`: what the
/// controllers wait for, whether or not the object is valid.
fn cached<K>(store: &Store<K>, seen: &mut HashMap<String, (Option<i64>, bool)>) -> Vec<Found<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone,
{
    store
        .state()
        .into_iter()
        .map(|object| {
            let deleting = object.meta().deletion_timestamp.is_some();
            seen.insert(key(object.as_ref()), (object.meta().generation, deleting));
            Found::object((*object).clone())
        })
        .collect()
}

/// The objects not being deleted, and those being deleted with `deletionPolicy: Orphan`.
fn live_and_orphaning<K>(objects: Vec<K>, orphan: impl Fn(&K) -> bool) -> (Vec<K>, Vec<K>)
where
    K: kube::Resource<DynamicType = ()>,
{
    let (mut live, mut orphaning) = (Vec::new(), Vec::new());
    for object in objects {
        if object.meta().deletion_timestamp.is_none() {
            live.push(object);
        } else if orphan(&object) {
            orphaning.push(object);
        }
    }
    (live, orphaning)
}

impl Resolver {
    pub async fn run(mut self) {
        tracing::info!("resolver waiting for the watch caches");
        for (name, ready) in [
            ("FleetGroup", self.groups.wait_until_ready().await),
            ("UpdatePolicy", self.policies.wait_until_ready().await),
            ("EnforcementTarget", self.targets.wait_until_ready().await),
        ] {
            if ready.is_err() {
                tracing::error!(kind = name, "watch cache never became ready");
                return;
            }
        }
        tracing::info!("watch caches ready; resolving");
        let mut pass_number = 0u64;
        loop {
            pass_number += 1;
            self.pass(pass_number).await;
            // Wait for a trigger (or the resync), then gather what else arrives briefly.
            tokio::select! {
                trigger = self.triggers.recv() => if trigger.is_none() { return },
                () = tokio::time::sleep(self.resync) => {}
            }
            let settle = tokio::time::sleep(Duration::from_millis(200));
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    more = self.triggers.recv() => if more.is_none() { return },
                    () = &mut settle => break,
                }
            }
        }
    }

    async fn pass(&mut self, number: u64) {
        let started = Instant::now();
        let now = jiff::Timestamp::now();
        let mut seen = HashMap::new();
        let found = FoundObjects {
            groups: cached(&self.groups, &mut seen),
            policies: cached(&self.policies, &mut seen),
            targets: cached(&self.targets, &mut seen),
        };
        // An object edited into an invalid spec keeps its last valid one in the pass: a typo
        // must not withdraw what the object gives its devices.
        let store = self.backend.store.clone();
        let read = tokio::task::spawn_blocking(move || store.last_valid_objects())
            .await
            .map_err(|e| e.to_string())
            .and_then(|read| read.map_err(|e| e.to_string()));
        let stored = match read {
            Ok(stored) => stored,
            Err(error) => {
                // Without them an invalid object would drop out and withdraw: no pass.
                tracing::error!(%error, "cannot read the last valid versions; no pass");
                self.metrics
                    .resolve_pass(started.elapsed().as_secs_f64(), false, 0, 0);
                let _ = self.publish.send(Arc::new(Snapshot {
                    pass: number,
                    applied: Err(format!("cannot read the last valid versions: {error}")),
                    seen,
                    now,
                    ..Snapshot::default()
                }));
                return;
            }
        };
        let substituted = substitute(found, &stored, Missing::Forget, now);
        if !substituted.changes.is_empty() {
            let store = self.backend.store.clone();
            let changes = substituted.changes.clone();
            match tokio::task::spawn_blocking(move || store.record_last_valid(&changes)).await {
                Ok(Ok(())) => {}
                // The next pass finds the same difference and writes it again.
                Ok(Err(error)) => {
                    tracing::warn!(%error, reason = error.reason(), "cannot store the last valid versions")
                }
                Err(error) => tracing::warn!(%error, "cannot store the last valid versions"),
            }
        }
        for (object, held) in &substituted.invalid {
            tracing::debug!(resource = %object, problem = %held.message(), "invalid spec");
        }
        // Objects being deleted are left out: that is what withdraws their declarations; the
        // devices of those deleted with deletionPolicy Orphan are frozen instead.
        let orphan = DeletionPolicy::Orphan;
        let (groups, orphan_groups) =
            live_and_orphaning(substituted.groups, |g| g.spec.deletion_policy == orphan);
        let (policies, orphan_policies) =
            live_and_orphaning(substituted.policies, |p| p.spec.deletion_policy == orphan);
        let (targets, orphan_targets) =
            live_and_orphaning(substituted.targets, |t| t.spec.deletion_policy == orphan);
        let partial = check_each(&groups, &policies, &targets).with_invalid(substituted.invalid);
        let orphaning = check_each(&orphan_groups, &orphan_policies, &orphan_targets).checked;
        let (catalog, catalog_origin, catalog_problem, gate_catalog) = {
            let handle = self.catalog.read().await;
            self.metrics.catalog_age(handle.age_seconds(now));
            (
                handle.catalog.clone(),
                handle.origin.clone(),
                handle.problem.clone(),
                handle.for_gate(),
            )
        };
        let applied_at = Instant::now();
        let result = pass::pass(
            &self.backend,
            pass::Resources {
                live: &partial.checked,
                orphaning: &orphaning,
            },
            &self.seed,
            self.seed_at,
            &catalog,
            self.assume_supervised,
            now,
        )
        .await;
        self.metrics
            .backend_applied(applied_at.elapsed().as_secs_f64());
        let snapshot = match result {
            Ok(result) => {
                let applied = match &result.applied {
                    Ok(report) => Ok(report.changed.len()),
                    Err(error) => Err(error.to_string()),
                };
                self.metrics.ledger_corrupt_rows(result.corrupt_ledger_rows);
                self.metrics.resolve_pass(
                    started.elapsed().as_secs_f64(),
                    applied.is_ok(),
                    *applied.as_ref().unwrap_or(&0),
                    result.plan.declarations.len(),
                );
                let by_id: HashMap<&str, &DeviceRecord> = result
                    .records
                    .iter()
                    .map(|r| (r.enrollment_id.as_str(), r))
                    .collect();
                let standings = standings(&result.devices, &result.plan, &by_id, now);
                let devices = Arc::new(result.devices);
                self.gate.send_replace(Arc::new(GateView::new(
                    &partial.checked.groups,
                    &partial.checked.policies,
                    devices.clone(),
                    gate_catalog,
                )));
                let plan = result.plan;
                let device_index = crate::view::DeviceIndex::new(
                    crate::view::PassOutput {
                        at: now,
                        checked: Arc::new(partial.checked.clone()),
                        devices: devices.clone(),
                        catalog: catalog.clone(),
                        seed: self.seed.clone(),
                        seed_at: self.seed_at,
                        assume_supervised: self.assume_supervised,
                    },
                    &plan,
                    &result.records,
                );
                Snapshot {
                    pass: number,
                    partial,
                    standings,
                    plan,
                    device_index: Some(Arc::new(device_index)),
                    devices,
                    records: result.records,
                    frozen: result.frozen,
                    checked_out: result.checked_out,
                    checked_out_by_policy: result.checked_out_by_policy,
                    applied,
                    catalog_origin,
                    catalog_problem,
                    seen,
                    now,
                }
            }
            Err(error) => {
                tracing::error!(%error, "cannot read devices from the backend");
                self.metrics
                    .resolve_pass(started.elapsed().as_secs_f64(), false, 0, 0);
                // The gate still decides from the resources, the catalog and the inventory.
                self.gate.send_replace(Arc::new(GateView::new(
                    &partial.checked.groups,
                    &partial.checked.policies,
                    self.seed.clone(),
                    gate_catalog,
                )));
                Snapshot {
                    pass: number,
                    partial,
                    applied: Err(error.to_string()),
                    catalog_origin,
                    catalog_problem,
                    seen,
                    now,
                    ..Snapshot::default()
                }
            }
        };
        let _ = self.publish.send(Arc::new(snapshot));
    }
}
