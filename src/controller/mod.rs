//! Kubernetes mode: one kube-runtime controller per kind behind leader election, the resolver
//! as the one writer of device sets, the embedded backend, and the same HTTP server as
//! standalone mode (DDM endpoints, health, metrics, status).

pub mod conditions;
pub mod leader;
mod reconcile;
pub mod resolver;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::Controller;
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};

use crate::api::{EnforcementTarget, FleetGroup, UpdatePolicy};
use crate::backend::embedded::Embedded;
use crate::backend::nanomdm::SyncTrigger;
use crate::backend::store::Store as DeviceStore;
use crate::enroll::GateView;
use crate::enroll::tally::Tally;
use crate::http::{AppState, ddm};
use crate::metrics::Metrics;
use crate::operator::RunConfig;
use resolver::{Resolver, Snapshot};

/// A reconcile failure, with a fixed reason for logs and metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("the resolver has not processed this version of the object yet")]
    ResolverBehind,
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeError",
            Error::Finalizer(_) => "FinalizerError",
            Error::ResolverBehind => "ResolverBehind",
        }
    }
}

/// What every reconcile reads.
pub struct Context {
    pub client: Client,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub resolve_now: mpsc::UnboundedSender<()>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub targets: Store<EnforcementTarget>,
    /// Enrollment gate decisions, shown in gated policies' status.
    pub enrollment: Arc<Tally>,
    /// DDM requests are taken unsigned (no receive key): every UpdatePolicy says so.
    pub insecure_no_hmac: bool,
}

/// Kubernetes-mode settings beyond the shared ones.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// Namespace of the leader-election Lease.
    pub lease_namespace: String,
    pub lease_name: String,
    /// Lease duration, renew deadline and retry period (`None`: client-go's 15 s, 10 s, 2 s).
    pub lease_timing: Option<(Duration, Duration, Duration)>,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// Reconciles running at once per kind.
    pub concurrency: u16,
    /// Watch only this namespace (a namespaced Role suffices); `None`: every namespace.
    pub watch_namespace: Option<String>,
}

/// The API of one kind in the watched namespace, or in all of them.
fn watched<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// A running operator in Kubernetes mode (for tests: in-process, with handles to observe it).
pub struct Running {
    pub metrics: Arc<Metrics>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The device side (DDM endpoints, the enrollment gate).
    pub address: std::net::SocketAddr,
    /// The admin side (metrics, health, readiness, `/api/v1`).
    pub admin_address: std::net::SocketAddr,
    /// Both listeners.
    http: crate::http::serve::Spawned,
    /// Turns `true` once this replica stepped down (lost or could not renew the Lease).
    pub stepped_down: watch::Receiver<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Ends (handing the Lease back) once the tasks holding its receiver are stopped.
    elector: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }

    /// Drains the HTTP listeners (within the drain bound), stops every task and waits briefly
    /// for the Lease to be handed back, so the next replica need not wait for it to expire.
    pub async fn shutdown(self) {
        self.http.drain().await;
        let elector = self.elector;
        for task in self.tasks {
            task.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), elector).await;
    }
}

/// Checks the CRDs are installed before anything starts.
async fn check_crds(client: &Client, namespace: Option<&str>) -> Result<(), String> {
    fn probe<T>(result: Result<T, kube::Error>, plural: &str) -> Result<(), String> {
        match result {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Err(format!(
                "the {plural}.updates.ddm.dev CRD is not installed: kubectl apply -f crds/"
            )),
            Err(error) => Err(format!("cannot list {plural}: {error}")),
        }
    }
    let one = ListParams::default().limit(1);
    probe(
        watched::<FleetGroup>(client, namespace).list(&one).await,
        "fleetgroups",
    )?;
    probe(
        watched::<UpdatePolicy>(client, namespace).list(&one).await,
        "updatepolicies",
    )?;
    probe(
        watched::<EnforcementTarget>(client, namespace)
            .list(&one)
            .await,
        "enforcementtargets",
    )
}

/// Starts everything and returns once it runs; leadership is awaited before any write.
pub async fn start(
    client: Client,
    config: RunConfig,
    settings: KubeSettings,
) -> Result<Running, String> {
    let namespace = settings.watch_namespace.clone();
    let namespace = namespace.as_deref();
    check_crds(&client, namespace).await?;
    let store = Arc::new(DeviceStore::open(&config.database).map_err(|e| e.to_string())?);
    let http_client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let metrics = Arc::new(Metrics::new());
    let sync = config
        .nanomdm
        .clone()
        .map(|c| SyncTrigger::start_with_metrics(c, http_client.clone(), Some(metrics.clone())));
    let backend = Embedded::new(store.clone(), sync);

    // Device reports feed the resolver's trigger channel.
    let (trigger_tx, trigger_rx) = mpsc::unbounded_channel::<()>();
    let (reported_tx, mut reported_rx) = mpsc::unbounded_channel::<String>();
    let forward = trigger_tx.clone();
    let mut tasks = vec![tokio::spawn(async move {
        while reported_rx.recv().await.is_some() {
            let _ = forward.send(());
        }
    })];

    let tally = Arc::new(Tally::default());
    let app = Arc::new(AppState {
        metrics: metrics.clone(),
        ready: Default::default(),
        status: tokio::sync::RwLock::new(serde_json::json!({"ready": false})),
        enrollment: tally.clone(),
        ledger: Some(store.clone()),
        devices: std::sync::RwLock::new(None),
    });
    let (gate, gate_view) = watch::channel(Arc::new(GateView::unavailable(
        "this replica is not the leader or has not resolved yet",
    )));
    let enroll_state = config
        .enroll
        .state(gate_view, tally.clone(), metrics.clone())?;
    // Filled once the leader has a catalog: until then reports are not judged.
    let claims = crate::catalog::SharedClaims::default();
    let ddm_state = Arc::new(ddm::DdmState {
        store: store.clone(),
        reports: backend.reports.clone(),
        receive_key: config.receive_key.clone(),
        send_key: config.send_key.clone(),
        bootstrap: crate::operator::bootstrap_declarations(),
        reported: reported_tx.clone(),
        metrics: metrics.clone(),
        claims: claims.clone(),
    });
    // Two listeners: devices (DDM, the gate) and admin (metrics, health, /api/v1 behind
    // TokenReview and SubjectAccessReview), each with the HTTP limits.
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
    let webhook_auth = webhook.auth.clone();
    let device_router = crate::http::device_router(&config.base_path, ddm_state)
        .merge(crate::http::enroll::router(
            &config.enroll.route(),
            Arc::new(enroll_state),
        ))
        .merge(crate::http::webhook::router(webhook));
    let admin_auth = Arc::new(crate::http::admin::AdminAuth::kubernetes(
        client.clone(),
        settings.watch_namespace.clone(),
    ));
    let admin_router = crate::http::admin_router(app.clone(), admin_auth);
    let bind = |flag: &'static str, address: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| format!("{flag} {address}: {e}"))
    };
    let device_listener = bind("--listen", config.listen).await?;
    let admin_listener = bind("--admin-listen", config.admin_listen).await?;
    let address = device_listener.local_addr().map_err(|e| e.to_string())?;
    let admin_address = admin_listener.local_addr().map_err(|e| e.to_string())?;
    let http = crate::http::serve::Spawned::start(
        crate::http::serve::Listener {
            listener: device_listener,
            router: device_router,
        },
        crate::http::serve::Listener {
            listener: admin_listener,
            router: admin_router,
        },
        config.http,
        metrics.clone(),
    );

    // Leader election: only the leader resolves, writes device sets and reconciles.
    let mut lease_settings = leader::LeaseSettings::new(
        &settings.lease_namespace,
        &settings.lease_name,
        &settings.identity,
    );
    if let Some((duration, renew_deadline, retry_period)) = settings.lease_timing {
        lease_settings.duration = duration;
        lease_settings.renew_deadline = renew_deadline;
        lease_settings.retry_period = retry_period;
    }
    let (mut leader, elector) = leader::elect(
        Api::namespaced(client.clone(), &settings.lease_namespace),
        lease_settings,
    );
    while !*leader.borrow_and_update() {
        tracing::info!(identity = %settings.identity, "waiting to become the leader");
        if leader.changed().await.is_err() {
            return Err("leader election stopped".into());
        }
    }
    // Every write from here on carries this epoch; a replica that led before is fenced.
    let epoch = store
        .claim_leadership(&settings.identity)
        .map_err(|e| format!("cannot record the leadership epoch in the store: {e}"))?;
    metrics.leadership(Some(epoch));
    tracing::info!(identity = %settings.identity, epoch, "leading");
    // SecurityInfo/DeviceInformation go out from the leader alone (stopped with the other
    // tasks when it steps down), so two replicas never ask a device twice.
    tasks.extend(crate::backend::nanomdm_commands::start_if_wired(
        &config,
        &webhook_auth,
        &store,
        http_client,
        &metrics,
    ));

    let catalog = Arc::new(tokio::sync::RwLock::new(
        crate::operator::load_catalog(&config, &metrics).await,
    ));
    let seed = crate::operator::read_inventory(config.inventory.as_deref());
    let judge_with = |state: &crate::operator::CatalogState, seed: &[crate::inventory::Device]| {
        state
            .for_gate()
            .ok()
            .map(|c| crate::catalog::ClaimCheck::new(c, seed))
    };
    claims.set(judge_with(&*catalog.read().await, &seed));
    // The catalog is fetched again on its interval; a new one triggers a pass.
    if matches!(config.catalog, crate::operator::CatalogSource::Url(_)) {
        let (refresh_config, refresh_metrics, handle, trigger) = (
            config.clone(),
            metrics.clone(),
            catalog.clone(),
            trigger_tx.clone(),
        );
        let (refresh_claims, refresh_seed) = (claims.clone(), seed.clone());
        tasks.push(tokio::spawn(async move {
            let mut interval = tokio::time::interval(refresh_config.catalog_refresh);
            interval.tick().await;
            loop {
                interval.tick().await;
                let loaded = crate::operator::load_catalog(&refresh_config, &refresh_metrics).await;
                refresh_claims.set(judge_with(&loaded, &refresh_seed));
                *handle.write().await = loaded;
                let _ = trigger.send(());
            }
        }));
    }

    let wc = watcher::Config::default();
    let groups = Controller::new(watched::<FleetGroup>(&client, namespace), wc.clone());
    let policies = Controller::new(watched::<UpdatePolicy>(&client, namespace), wc.clone());
    let targets = Controller::new(watched::<EnforcementTarget>(&client, namespace), wc.clone());
    let (publish, snapshots) = watch::channel(Arc::new(Snapshot::default()));
    // The resolver keeps caches of its own; every change to them asks for a pass.
    // Generated targets are compared against the resolver's (waited-for) target cache.
    let target_cache = cache(
        watched::<EnforcementTarget>(&client, namespace),
        &trigger_tx,
        &mut tasks,
    );
    let resolver = Resolver {
        groups: cache(
            watched::<FleetGroup>(&client, namespace),
            &trigger_tx,
            &mut tasks,
        ),
        policies: cache(
            watched::<UpdatePolicy>(&client, namespace),
            &trigger_tx,
            &mut tasks,
        ),
        targets: target_cache.clone(),
        backend,
        catalog: catalog.clone(),
        seed_at: config
            .inventory
            .as_deref()
            .map_or(jiff::Timestamp::UNIX_EPOCH, |path| {
                crate::inventory::file_time(path, config.clock.now())
            }),
        seed: Arc::new(seed),
        assume_supervised: config.assume_supervised,
        metrics: metrics.clone(),
        publish,
        gate,
        triggers: trigger_rx,
        resync: Duration::from_secs(600),
    };
    let reporter = Reporter {
        controller: "ddm-update-operator".into(),
        instance: Some(settings.identity.clone()),
    };
    let context = Arc::new(Context {
        client: client.clone(),
        snapshots: snapshots.clone(),
        resolve_now: trigger_tx.clone(),
        metrics: metrics.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        targets: target_cache,
        enrollment: tally.clone(),
        insecure_no_hmac: config.receive_key.is_none(),
    });
    tasks.push(tokio::spawn(resolver.run()));

    // Publish status JSON and readiness from each snapshot.
    let mut watch_status = snapshots.clone();
    let status_app = app.clone();
    let status_metrics = metrics.clone();
    tasks.push(tokio::spawn(async move {
        while watch_status.changed().await.is_ok() {
            let snapshot = watch_status.borrow_and_update().clone();
            if snapshot.applied.is_ok() {
                status_app
                    .ready
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            let by_id: std::collections::HashMap<&str, &crate::backend::DeviceRecord> = snapshot
                .records
                .iter()
                .map(|r| (r.enrollment_id.as_str(), r))
                .collect();
            let mut status = crate::pass::report::status(
                &snapshot.partial.checked,
                &snapshot.devices,
                &snapshot.plan,
                &by_id,
                &snapshot.frozen,
                snapshot.now,
                &status_metrics,
            );
            crate::pass::report::add_checked_out(
                &mut status,
                &snapshot.checked_out,
                &status_metrics,
            );
            *status_app.status.write().await = status;
            if let Some(index) = &snapshot.device_index {
                status_app.publish_devices(index.clone());
            }
        }
    }));

    let config_for = || ControllerConfig::default().concurrency(settings.concurrency);
    let every_pass = on_every_pass;
    let ctx = context.clone();
    tasks.push(tokio::spawn(
        groups
            .with_config(config_for())
            .reconcile_all_on(every_pass(snapshots.clone()))
            .run(reconcile::fleet_group, reconcile::error_policy, ctx)
            .for_each(|_| async {}),
    ));
    let ctx = context.clone();
    tasks.push(tokio::spawn(
        policies
            .with_config(config_for())
            .owns(watched::<EnforcementTarget>(&client, namespace), wc.clone())
            .reconcile_all_on(futures::stream::select(
                every_pass(snapshots.clone()),
                every_decisions(tally.subscribe()),
            ))
            .run(reconcile::update_policy, reconcile::error_policy, ctx)
            .for_each(|_| async {}),
    ));
    let ctx = context;
    tasks.push(tokio::spawn(
        targets
            .with_config(config_for())
            .reconcile_all_on(every_pass(snapshots.clone()))
            .run(reconcile::enforcement_target, reconcile::error_policy, ctx)
            .for_each(|_| async {}),
    ));
    // Losing the Lease, or failing to renew it in time, fences the store at once (a pass
    // already running is refused its writes) and stops every task; `run` then exits so the pod
    // restarts as a follower.
    let (stepped_down_tx, stepped_down) = watch::channel(false);
    let everything: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    let (fenced_store, step_metrics, step_app) = (store.clone(), metrics.clone(), app.clone());
    tasks.push(tokio::spawn(async move {
        while leader.changed().await.is_ok() {
            if !*leader.borrow_and_update() {
                fenced_store.step_down();
                step_metrics.leadership(None);
                step_app
                    .ready
                    .store(false, std::sync::atomic::Ordering::Release);
                tracing::error!(
                    "no longer the leader: writes fenced, passes and controllers stopped"
                );
                for task in &everything {
                    task.abort();
                }
                stepped_down_tx.send_replace(true);
                return;
            }
        }
    }));
    Ok(Running {
        metrics,
        snapshots,
        address,
        admin_address,
        http,
        stepped_down,
        tasks,
        elector,
    })
}

/// A watch cache that pings `trigger` on every change.
fn cache<K>(
    api: Api<K>,
    trigger: &mpsc::UnboundedSender<()>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    use kube::runtime::WatchStreamExt;
    let (reader, writer) = kube::runtime::reflector::store();
    let trigger = trigger.clone();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .for_each(move |event| {
            if let Err(error) = &event {
                tracing::warn!(%error, "watch error; retrying");
            }
            let _ = trigger.send(());
            futures::future::ready(())
        });
    tasks.push(tokio::spawn(stream));
    reader
}

/// A stream that yields at most every 10 seconds while enrollment decisions are made, so gated
/// policies' status follows without a write per decision.
fn every_decisions(
    receiver: watch::Receiver<u64>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.changed().await.ok()?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        receiver.borrow_and_update();
        Some(((), receiver))
    })
}

/// A stream that yields once per published snapshot.
fn on_every_pass(
    receiver: watch::Receiver<Arc<Snapshot>>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.changed().await.ok()?;
        Some(((), receiver))
    })
}
