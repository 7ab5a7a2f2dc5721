//! Standalone mode: the operator on a folder of manifests (a Git checkout), with the embedded
//! backend and no cluster. One loop owns the resolver pass — the one writer of every device's
//! set — and re-runs it when the folder changes, when the catalog is refreshed, and when devices
//! report something the resolution depends on.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::api::validate::{
    Checked, Found, FoundObjects, Held, Missing, ObjectKey, StoredVersions, check_each, substitute,
};
use crate::backend::embedded::Embedded;
use crate::backend::nanomdm::SyncTrigger;
use crate::backend::store::Store;
use crate::enroll::GateView;
use crate::enroll::tally::Tally;
use crate::http::admin::AdminAuth;
use crate::http::{AppState, ddm};
use crate::inventory::Device;
use crate::metrics::Metrics;
use crate::operator::{
    CatalogSource, CatalogState, RunConfig, bootstrap_declarations, load_catalog, shutdown_signal,
};
use crate::pass::{self, report};
use crate::resolve;

/// Why `run` stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Setup(String),
    #[error("serving HTTP: {0}")]
    Serve(#[from] std::io::Error),
}

/// Runs until the process is stopped.
pub async fn run(config: RunConfig) -> Result<(), RunError> {
    let engine = Engine::start(config).await?;
    engine.serve().await
}

/// A running operator: the device-side and admin-side listeners plus the resolver loop.
pub struct Engine {
    device: crate::http::serve::Listener,
    admin: crate::http::serve::Listener,
    limits: crate::http::serve::Limits,
    metrics: Arc<Metrics>,
    loop_task: tokio::task::JoinHandle<()>,
    /// The SecurityInfo/DeviceInformation sender, when NanoMDM and its webhook are wired.
    commands_task: Option<tokio::task::JoinHandle<()>>,
}

impl Engine {
    /// Opens the store, binds the listeners, runs the first pass and starts the loop. Refuses
    /// an admin API that would be open off loopback.
    pub async fn start(config: RunConfig) -> Result<Self, RunError> {
        let admin_auth = Arc::new(
            AdminAuth::standalone(config.admin_listen, config.admin_token_file.as_deref())
                .map_err(|e| RunError::Setup(e.to_string()))?,
        );
        let store = Arc::new(
            Store::open(&config.database)
                .map(|s| s.with_clock(config.clock.clone()))
                .map_err(|e| RunError::Setup(e.to_string()))?,
        );
        let http_client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| RunError::Setup(e.to_string()))?;
        let metrics = Arc::new(Metrics::new());
        let sync = config.nanomdm.clone().map(|c| {
            SyncTrigger::start_with_metrics(c, http_client.clone(), Some(metrics.clone()))
        });
        let backend = Embedded::new(store.clone(), sync);
        let (reported_tx, reported_rx) = mpsc::unbounded_channel();
        let claims = crate::catalog::SharedClaims::default();
        let ddm_state = Arc::new(ddm::DdmState {
            store: store.clone(),
            reports: backend.reports.clone(),
            receive_key: config.receive_key.clone(),
            send_key: config.send_key.clone(),
            bootstrap: bootstrap_declarations(),
            reported: reported_tx.clone(),
            metrics: metrics.clone(),
            claims: claims.clone(),
        });
        let tally = Arc::new(Tally::default());
        let app = Arc::new(AppState {
            metrics: metrics.clone(),
            ready: Default::default(),
            status: tokio::sync::RwLock::new(serde_json::json!({"ready": false})),
            enrollment: tally.clone(),
            ledger: Some(store.clone()),
            devices: std::sync::RwLock::new(None),
        });
        let (gate, gate_view) =
            watch::channel(Arc::new(GateView::unavailable("no resolver pass yet")));
        let enroll_state = config
            .enroll
            .state(gate_view, tally, metrics.clone())
            .map_err(RunError::Setup)?;
        let mut enroll_state = enroll_state;
        enroll_state.device_ids = Some(store.clone());
        // NanoMDM's webhook: what it learns triggers a pass like a report does.
        let webhook = Arc::new(
            crate::http::webhook::WebhookState::new(
                store.clone(),
                crate::http::webhook::WebhookAuth::new(
                    config.webhook_key.clone(),
                    config.receive_key.is_some(),
                ),
                metrics.clone(),
                Some(reported_tx),
            )
            .with_sync(backend.sync().cloned()),
        );
        let commands_task = crate::backend::nanomdm_commands::start_if_wired(
            &config,
            &webhook.auth,
            &store,
            http_client,
            &metrics,
        );
        let device_router = crate::http::device_router(&config.base_path, ddm_state)
            .merge(crate::http::enroll::router(
                &config.enroll.route(),
                Arc::new(enroll_state),
            ))
            .merge(crate::http::webhook::router(webhook));
        let admin_router = crate::http::admin_router(app.clone(), admin_auth);
        let bind = |flag: &str, address: SocketAddr| {
            let flag = flag.to_string();
            async move {
                tokio::net::TcpListener::bind(address)
                    .await
                    .map_err(|e| RunError::Setup(format!("{flag} {address}: {e}")))
            }
        };
        let device = bind("--listen", config.listen).await?;
        let admin = bind("--admin-listen", config.admin_listen).await?;
        tracing::info!(address = %device.local_addr()?, base = %config.base_path, enroll = %config.enroll.route(), "serving DDM and the enrollment gate");
        tracing::info!(address = %admin.local_addr()?, "serving metrics, health and /api/v1");
        let limits = config.http;

        let engine_metrics = metrics.clone();
        let mut engine_loop = Loop {
            claims,
            catalog: load_catalog(&config, &metrics).await,
            config,
            backend,
            metrics,
            app,
            gate,
            checked: None,
            last_valid: None,
            invalid: BTreeMap::new(),
            orphaning: Checked::default(),
            manifest_problems: Vec::new(),
            notices: Vec::new(),
            fingerprint: 0,
            seed: Arc::default(),
            seed_at: jiff::Timestamp::UNIX_EPOCH,
        };
        engine_loop.reload_inventory();
        engine_loop.publish_claims();
        engine_loop.reload_manifests();
        engine_loop.pass().await;
        let loop_task = tokio::spawn(engine_loop.run(reported_rx));
        Ok(Engine {
            device: crate::http::serve::Listener {
                listener: device,
                router: device_router,
            },
            admin: crate::http::serve::Listener {
                listener: admin,
                router: admin_router,
            },
            limits,
            metrics: engine_metrics,
            loop_task,
            commands_task,
        })
    }

    /// The device side's address (DDM, the enrollment gate).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.device.listener.local_addr()
    }

    /// The admin side's address (metrics, health, readiness, `/api/v1`).
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.listener.local_addr()
    }

    /// Serves until SIGTERM or Ctrl-C, then drains both listeners within the drain bound.
    pub async fn serve(self) -> Result<(), RunError> {
        self.serve_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves, then drains both listeners within the drain bound.
    pub async fn serve_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), RunError> {
        crate::http::serve::serve_both(
            self.device,
            self.admin,
            self.limits,
            self.metrics,
            shutdown,
        )
        .await;
        self.loop_task.abort();
        if let Some(task) = self.commands_task {
            task.abort();
        }
        Ok(())
    }
}

/// The resolver loop's state.
struct Loop {
    /// What DDM status reports are judged by: the catalog in use and the inventory.
    claims: crate::catalog::SharedClaims,
    config: RunConfig,
    backend: Embedded,
    metrics: Arc<Metrics>,
    app: Arc<AppState>,
    catalog: CatalogState,
    /// What the enrollment gate decides from, renewed by every pass.
    gate: watch::Sender<Arc<GateView>>,
    /// The resources in force: each valid object, and for each invalid one its last valid
    /// version (`None` before the folder was first read).
    checked: Option<Checked>,
    /// The store's last valid versions, as last read or written (`None`: not read yet).
    last_valid: Option<StoredVersions>,
    /// `Kind namespace/name` → the problems of each invalid object and what is in force.
    invalid: BTreeMap<String, Held>,
    /// Resources removed from the folder with `deletionPolicy: Orphan` that no pass has frozen
    /// the devices of yet.
    orphaning: Checked,
    manifest_problems: Vec<String>,
    notices: Vec<String>,
    fingerprint: u64,
    /// Devices from the inventory file.
    seed: Arc<Vec<Device>>,
    /// When the inventory's facts were true (`inventory::file_time`).
    seed_at: jiff::Timestamp,
}

impl Loop {
    async fn run(mut self, mut reported: mpsc::UnboundedReceiver<String>) {
        let mut poll = tokio::time::interval(self.config.poll_interval);
        let mut refresh = tokio::time::interval(self.config.catalog_refresh);
        refresh.tick().await; // the first tick fires at once; the catalog was just loaded
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    if self.reload_manifests() {
                        self.pass().await;
                    }
                }
                _ = refresh.tick() => {
                    if matches!(self.config.catalog, CatalogSource::Url(_)) {
                        self.catalog = load_catalog(&self.config, &self.metrics).await;
                        self.publish_claims();
                        self.pass().await;
                    }
                }
                Some(_) = reported.recv() => {
                    // Debounce: gather what else reports within half a second, then one pass.
                    let deadline = tokio::time::sleep(Duration::from_millis(500));
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            more = reported.recv() => if more.is_none() { break },
                            () = &mut deadline => break,
                        }
                    }
                    self.pass().await;
                }
            }
        }
    }

    /// Reports are judged against a catalog the operator trusts (fetched recently, or a file):
    /// against a stale or the shipped copy, newer real releases would be refused.
    fn publish_claims(&self) {
        let check = self.catalog.for_gate().ok();
        self.claims
            .set(check.map(|catalog| crate::catalog::ClaimCheck::new(catalog, &self.seed)));
    }

    fn reload_inventory(&mut self) {
        let Some(path) = &self.config.inventory else {
            return;
        };
        match std::fs::read_to_string(path)
            .map_err(|e| vec![e.to_string()])
            .and_then(|t| crate::inventory::parse(&t))
        {
            Ok(devices) => {
                self.seed = Arc::new(devices);
                self.seed_at = crate::inventory::file_time(path, self.config.clock.now());
            }
            Err(problems) => {
                for problem in problems {
                    tracing::error!(path = %path.display(), %problem, "inventory");
                }
            }
        }
    }

    /// Re-reads the folder if anything in it changed; true when the resources changed. Object
    /// by object: a valid one is in force as written; an invalid one keeps its last valid
    /// version (stored, so a restart keeps it too) or, never valid, stays out; one whose file
    /// cannot be read at all keeps its version as well, so only a removal withdraws.
    fn reload_manifests(&mut self) -> bool {
        let fingerprint = folder_fingerprint(&self.config.manifests);
        if fingerprint == self.fingerprint && self.checked.is_some() {
            return false;
        }
        self.fingerprint = fingerprint;
        let stored = match self.last_valid.take() {
            Some(stored) => stored,
            None => match self.backend.store.last_valid_objects() {
                Ok(stored) => stored,
                Err(error) => {
                    // Without them an invalid object would drop out and withdraw.
                    tracing::error!(%error, "cannot read the last valid versions; the resources in force stay");
                    self.fingerprint = 0;
                    return false;
                }
            },
        };
        let each = crate::manifests::load_each(std::slice::from_ref(&self.config.manifests));
        self.notices = each.manifests.notices.clone();
        let unreadable = each
            .unattributed
            .first()
            .map(|problem| format!("not found, and some of the folder cannot be read ({problem})"));
        let missing = match &unreadable {
            Some(why) => Missing::Keep(why),
            None => Missing::Forget,
        };
        let found = found_objects(each.manifests, &each.problems);
        let substituted = substitute(found, &stored, missing, self.config.clock.now());
        let mut stored = stored;
        if !substituted.changes.is_empty() {
            match self.backend.store.record_last_valid(&substituted.changes) {
                Ok(()) => substituted.changes.apply_to(&mut stored),
                Err(error) => {
                    tracing::error!(%error, "cannot store the last valid versions; trying again at the next poll");
                    self.fingerprint = 0;
                }
            }
        }
        self.last_valid = Some(stored);
        let nothing = substituted.groups.is_empty()
            && substituted.policies.is_empty()
            && substituted.targets.is_empty();
        if nothing && !each.unattributed.is_empty() && self.checked.is_some() {
            // Nothing readable and nothing stored: what is in force stays.
            for problem in &each.unattributed {
                tracing::error!(%problem, "manifests unreadable; the resources in force stay");
            }
            self.manifest_problems = each.unattributed;
            return false;
        }
        let partial = check_each(
            &substituted.groups,
            &substituted.policies,
            &substituted.targets,
        )
        .with_invalid(substituted.invalid);
        let mut problems = each.unattributed;
        for problem in &problems {
            tracing::error!(%problem, "manifests");
        }
        for (object, list) in &partial.problems {
            let held = partial.invalid.get(object).map_or(0, |h| h.problems.len());
            for (index, problem) in list.iter().enumerate() {
                // The loader's problems name their file and object already.
                let problem = if index < held {
                    problem.clone()
                } else {
                    format!("{object}: {problem}")
                };
                tracing::error!(resource = %object, %problem, "manifests");
                problems.push(problem);
            }
        }
        for (object, held) in &partial.invalid {
            tracing::error!(resource = %object, in_force = held.in_force.is_some(), "invalid: {}", held.message());
        }
        if let Some(before) = &self.checked {
            removed_orphans(before, &partial.checked, &mut self.orphaning);
        }
        self.checked = Some(partial.checked);
        self.invalid = partial.invalid;
        self.manifest_problems = problems;
        true
    }

    /// One resolver pass over every known device, applied to the backend.
    async fn pass(&mut self) {
        let started = Instant::now();
        let Some(checked) = &self.checked else {
            self.publish(None, &[], &[], &pass::Frozen::default()).await;
            return;
        };
        let pass_at = self.config.clock.now();
        self.metrics.catalog_age(self.catalog.age_seconds(pass_at));
        let result = pass::pass(
            &self.backend,
            pass::Resources {
                live: checked,
                orphaning: &self.orphaning,
            },
            &self.seed,
            self.seed_at,
            &self.catalog.catalog,
            self.config.assume_supervised,
            pass_at,
        )
        .await;
        let mut result = match result {
            Ok(result) => result,
            Err(error) => {
                tracing::error!(%error, "cannot read devices");
                self.metrics
                    .resolve_pass(started.elapsed().as_secs_f64(), false, 0, 0);
                // The gate still decides from the resources, the catalog and the inventory.
                publish_gate(&self.gate, checked, self.seed.clone(), &self.catalog);
                return;
            }
        };
        let changed = match &result.applied {
            Ok(report) => {
                // Their devices are frozen durably now.
                self.orphaning = Checked::default();
                report.changed.len()
            }
            Err(error) => {
                tracing::error!(%error, reason = error.reason(), "cannot apply the pass; devices keep what they had");
                0
            }
        };
        self.metrics.ledger_corrupt_rows(result.corrupt_ledger_rows);
        self.metrics.resolve_pass(
            started.elapsed().as_secs_f64(),
            result.applied.is_ok(),
            changed,
            result.plan.declarations.len(),
        );
        if result.applied.is_ok() {
            self.app.ready.store(true, Ordering::Release);
        }
        let devices = Arc::new(std::mem::take(&mut result.devices));
        publish_gate(&self.gate, checked, devices.clone(), &self.catalog);
        self.publish(
            Some(&result.plan),
            &devices,
            &result.records,
            &result.frozen,
        )
        .await;
        report::add_checked_out(
            &mut *self.app.status.write().await,
            &result.checked_out,
            &self.metrics,
        );
        let index = crate::view::DeviceIndex::new(
            crate::view::PassOutput {
                at: pass_at,
                checked: Arc::new(checked.clone()),
                devices,
                catalog: self.catalog.catalog.clone(),
                seed: self.seed.clone(),
                seed_at: self.seed_at,
                assume_supervised: self.config.assume_supervised,
            },
            &result.plan,
            &result.records,
        );
        self.app.publish_devices(Arc::new(index));
    }

    async fn publish(
        &self,
        plan: Option<&resolve::Plan>,
        devices: &[Device],
        records: &[crate::backend::DeviceRecord],
        frozen: &pass::Frozen,
    ) {
        let by_id: HashMap<&str, &crate::backend::DeviceRecord> = records
            .iter()
            .map(|r| (r.enrollment_id.as_str(), r))
            .collect();
        let mut status = match (plan, &self.checked) {
            (Some(plan), Some(checked)) => report::status(
                checked,
                devices,
                plan,
                &by_id,
                frozen,
                self.config.clock.now(),
                &self.metrics,
            ),
            _ => serde_json::json!({}),
        };
        if let serde_json::Value::Object(map) = &mut status {
            map.insert(
                "ready".into(),
                self.app.ready.load(Ordering::Acquire).into(),
            );
            map.insert(
                "manifestProblems".into(),
                serde_json::json!(self.manifest_problems),
            );
            map.insert("notices".into(), serde_json::json!(self.notices));
            map.insert("invalidObjects".into(), invalid_objects(&self.invalid));
            map.insert(
                "catalog".into(),
                serde_json::json!({
                    "origin": self.catalog.origin,
                    "problem": self.catalog.problem,
                    "entries": self.catalog.document.entry_counts().iter()
                        .map(|(set, platform, n)| (format!("{set}.{platform}"), *n))
                        .collect::<BTreeMap<_, _>>(),
                    // Releases Apple's answer dropped, kept per device since the time shown
                    // until --catalog-grace has passed; and the drops whose grace ended.
                    "held": self.catalog.holds.held,
                    "dropped": self.catalog.holds.dropped,
                    "graceHours": self.config.catalog_grace.as_secs() / 3600,
                }),
            );
        }
        *self.app.status.write().await = status;
    }
}

/// The objects as the loader found them, each with its problems; an object that could not be
/// typed is there by its name alone.
fn found_objects(
    manifests: crate::manifests::Manifests,
    problems: &BTreeMap<(String, ObjectKey), Vec<String>>,
) -> FoundObjects {
    fn of_kind<K: kube::Resource<DynamicType = ()>>(
        objects: Vec<K>,
        problems: &BTreeMap<(String, ObjectKey), Vec<String>>,
    ) -> Vec<Found<K>> {
        let kind = K::kind(&()).to_string();
        let mut found: Vec<Found<K>> = objects
            .into_iter()
            .map(|object| {
                let key = ObjectKey::of(&object);
                Found {
                    problems: problems
                        .get(&(kind.clone(), key.clone()))
                        .cloned()
                        .unwrap_or_default(),
                    key,
                    object: Some(object),
                }
            })
            .collect();
        let typed: std::collections::BTreeSet<ObjectKey> =
            found.iter().map(|f| f.key.clone()).collect();
        for ((of, key), list) in problems {
            if *of == kind && !typed.contains(key) {
                found.push(Found {
                    key: key.clone(),
                    object: None,
                    problems: list.clone(),
                });
            }
        }
        found
    }
    FoundObjects {
        groups: of_kind(manifests.fleet_groups, problems),
        policies: of_kind(manifests.policies, problems),
        targets: of_kind(manifests.targets, problems),
    }
}

/// `/api/v1/status`'s list of invalid objects: each one's problems and the version in force.
fn invalid_objects(invalid: &BTreeMap<String, Held>) -> serde_json::Value {
    invalid
        .iter()
        .map(|(object, held)| {
            serde_json::json!({
                "object": object,
                "problems": held.problems,
                "inForce": held.in_force.as_ref().map(|f| serde_json::json!({
                    "generation": f.generation,
                    "storedAt": f.stored_at.to_string(),
                })),
                "message": held.message(),
            })
        })
        .collect()
}

/// Adds to `orphaning` the resources of `before` that `after` no longer has and that were
/// declared with `deletionPolicy: Orphan` (generated targets are the policy's, never orphaned).
fn removed_orphans(before: &Checked, after: &Checked, orphaning: &mut Checked) {
    use crate::api::DeletionPolicy::Orphan;
    use std::collections::BTreeSet;
    let removed = |kind: &str, key: &crate::api::validate::ObjectKey| {
        tracing::info!(
            resource = %format!("{kind} {key}"),
            "removed with deletionPolicy Orphan: its devices keep the declarations they have"
        );
    };
    let groups: BTreeSet<_> = after.groups.iter().map(|g| &g.key).collect();
    for group in &before.groups {
        if group.deletion_policy == Orphan && !groups.contains(&group.key) {
            removed("FleetGroup", &group.key);
            orphaning.groups.push(group.clone());
        }
    }
    let policies: BTreeSet<_> = after.policies.iter().map(|p| &p.key).collect();
    for policy in &before.policies {
        if policy.deletion_policy == Orphan && !policies.contains(&policy.key) {
            removed("UpdatePolicy", &policy.key);
            orphaning.policies.push(policy.clone());
        }
    }
    let targets: BTreeSet<_> = after.targets.iter().map(|t| &t.key).collect();
    for target in &before.targets {
        if !target.generated && target.deletion_policy == Orphan && !targets.contains(&target.key) {
            removed("EnforcementTarget", &target.key);
            orphaning.targets.push(target.clone());
        }
    }
    // A file put back before a pass could freeze for it: live again, not orphaning.
    orphaning.groups.retain(|g| !groups.contains(&g.key));
    orphaning.policies.retain(|p| !policies.contains(&p.key));
    orphaning.targets.retain(|t| !targets.contains(&t.key));
}

/// What the enrollment gate decides from after a pass: the resources, the devices and the
/// catalog (if the gate may trust it).
fn publish_gate(
    gate: &watch::Sender<Arc<GateView>>,
    checked: &Checked,
    devices: Arc<Vec<Device>>,
    catalog: &CatalogState,
) {
    gate.send_replace(Arc::new(GateView::new(
        &checked.groups,
        &checked.policies,
        devices,
        catalog.for_gate(),
    )));
}

/// A cheap fingerprint of every file under the folder (path, size, modification time).
fn folder_fingerprint(root: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut stack = vec![root.to_path_buf()];
    let mut entries = Vec::new();
    while let Some(dir) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&dir) else {
            dir.hash(&mut hasher);
            continue;
        };
        for entry in read.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(meta) = entry.metadata() {
                entries.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    entries.sort();
    entries.hash(&mut hasher);
    hasher.finish()
}
