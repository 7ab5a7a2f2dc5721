//! What both modes share around the pass: the operator's configuration, loading Apple's catalog
//! (URL with cached and shipped fallbacks, or a file), the inventory file, the bootstrap set and
//! stopping on a signal. Standalone mode (`run/`) and Kubernetes mode (`controller/`) both start
//! from here; neither imports the other.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::nanomdm::NanoMdmConfig;
use crate::catalog::fetch::{FetchConfig, Fetcher, LastGood, Refresh};
use crate::catalog::{Catalog, PmvDocument, guard};
use crate::declarations::{self, Declaration};
use crate::inventory::Device;
use crate::metrics::Metrics;

/// The catalog shipped with the binary (examples/catalog/pmv.json, Apple's answer of
/// 2026-08-22): the last resort when Apple is unreachable and nothing was cached.
pub const SHIPPED_CATALOG: &[u8] = include_bytes!("../../examples/catalog/pmv.json");

/// Where the catalog comes from.
#[derive(Debug, Clone)]
pub enum CatalogSource {
    /// Fetched and refreshed, with the last good copy cached on disk.
    Url(String),
    /// A fixed file.
    File(PathBuf),
}

/// Everything `run` is configured with.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub manifests: PathBuf,
    pub catalog: CatalogSource,
    /// PEM roots trusted for the catalog host (default: Apple Root CA).
    pub catalog_roots: Option<Vec<u8>>,
    pub catalog_refresh: Duration,
    /// How long a release Apple's answer stopped listing is kept for its devices.
    pub catalog_grace: Duration,
    pub data_dir: PathBuf,
    pub database: PathBuf,
    pub inventory: Option<PathBuf>,
    pub listen: SocketAddr,
    /// Metrics, health, readiness and `/api/v1` (`--admin-listen`).
    pub admin_listen: SocketAddr,
    /// Standalone: the admin API's bearer token (`--admin-token-file`).
    pub admin_token_file: Option<PathBuf>,
    /// Timeouts, the connection cap and the shutdown drain of both listeners.
    pub http: crate::http::serve::Limits,
    pub base_path: String,
    pub receive_key: Option<Vec<u8>>,
    pub send_key: Option<Vec<u8>>,
    /// The key NanoMDM signs its webhook events with (`-webhook-hmac-key`).
    pub webhook_key: Option<Vec<u8>>,
    pub nanomdm: Option<NanoMdmConfig>,
    /// How the SecurityInfo/DeviceInformation commands go out through NanoMDM (rate, refresh).
    pub mdm_commands: crate::mdm::commands::Schedule,
    /// How often the manifest folder is checked for changes.
    pub poll_interval: Duration,
    /// Devices learned from DDM reports are taken as supervised (ADE fleets are) unless the
    /// inventory says otherwise.
    pub assume_supervised: bool,
    /// The enrollment gate.
    pub enroll: crate::http::enroll::EnrollConfig,
    /// The time passes act on (the system's, or a virtual one in simulations).
    pub clock: crate::clock::Clock,
}

impl RunConfig {
    /// An operator on loopback (any free ports, the admin API open there, a short drain) with
    /// its store and cache under `work`, reading `catalog`, no NanoMDM, no HMAC keys, no
    /// enrollment gate, the system clock: what tests, benchmarks and simulations start from,
    /// changing what they need.
    pub fn local(manifests: PathBuf, catalog: CatalogSource, work: &Path) -> Self {
        RunConfig {
            manifests,
            catalog,
            catalog_roots: None,
            catalog_refresh: Duration::from_secs(3600),
            catalog_grace: crate::catalog::holdover::DEFAULT_GRACE.unsigned_abs(),
            data_dir: work.join("data"),
            database: work.join("ddm.sqlite"),
            inventory: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_token_file: None,
            http: crate::http::serve::Limits::local(),
            base_path: "/ddm/".into(),
            receive_key: None,
            send_key: None,
            webhook_key: None,
            nanomdm: None,
            mdm_commands: Default::default(),
            poll_interval: Duration::from_secs(1),
            assume_supervised: true,
            enroll: Default::default(),
            clock: Default::default(),
        }
    }
}

/// The catalog in use and where it came from, for status.
pub struct CatalogState {
    pub catalog: Arc<Catalog>,
    pub document: PmvDocument,
    pub origin: String,
    pub problem: Option<String>,
    /// Whether the enrollment gate may hold devices against this copy: not the shipped one, and
    /// not a cached one older than `GATE_CATALOG_MAX_AGE` (Apple stops signing old builds, so a
    /// device told to install one would be stuck in Setup Assistant).
    pub gate: Result<(), String>,
    /// Releases kept after Apple's answer dropped them, and recent drops.
    pub holds: crate::catalog::holdover::Holds,
    /// When its content was true: fetched now, the cached copy's fetch, or a file's (and the
    /// shipped copy's) newest posting date. `ddm_update_operator_catalog_age_seconds` counts
    /// from it.
    pub content_at: Option<jiff::Timestamp>,
}

/// The oldest cached catalog copy the enrollment gate still trusts.
pub const GATE_CATALOG_MAX_AGE: jiff::SignedDuration = jiff::SignedDuration::from_hours(72);

impl CatalogState {
    /// Seconds from when its content was true until `now` (0 when unknown).
    pub fn age_seconds(&self, now: jiff::Timestamp) -> i64 {
        self.content_at
            .map_or(0, |at| (now.as_second() - at.as_second()).max(0))
    }

    /// The catalog as the enrollment gate may use it.
    pub fn for_gate(&self) -> Result<Arc<Catalog>, String> {
        self.gate.clone().map(|()| self.catalog.clone())
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what Kubernetes sends a pod's main process).
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            // Without a SIGTERM handler, only Ctrl-C stops the operator.
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("stopping");
}

/// A new enrollment's first set: subscriptions to what every DDM device can report, so the
/// resolver learns its model and OS, and an activation for them.
pub fn bootstrap_declarations() -> Vec<Declaration> {
    let items: Vec<serde_json::Value> = declarations::STATUS_ITEMS
        .iter()
        // Only items every DDM platform offers; the resolved set adds the rest per OS.
        .filter(|(_, availability)| availability.iter().all(Option::is_some))
        .map(|(name, _)| serde_json::json!({ "Name": name }))
        .collect();
    let subscriptions = Declaration::hashed(
        declarations::SUBSCRIPTIONS_TYPE,
        "ddm.status",
        serde_json::json!({ "StatusItems": items }),
    );
    let activation = declarations::activation(&[&subscriptions.identifier]);
    vec![subscriptions, activation]
}

/// Loads the catalog: the file, or Apple's URL with the cached and shipped fallbacks.
pub async fn load_catalog(config: &RunConfig, metrics: &Metrics) -> CatalogState {
    let shipped = || {
        let document = PmvDocument::from_slice(SHIPPED_CATALOG).unwrap_or_default();
        let content_at = newest_posting(&document);
        CatalogState {
            catalog: Arc::new(as_of_newest_posting(&document)),
            document,
            origin: "the catalog shipped with the operator (2026-08-22); expiration dates are judged as of that day".into(),
            problem: None,
            gate: Err("Apple's catalog could not be fetched and no recent copy is cached; the gate does not hold devices against the shipped copy of 2026-08-22".into()),
            holds: Default::default(),
            content_at,
        }
    };
    match &config.catalog {
        CatalogSource::File(path) => match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| PmvDocument::from_slice(&b).map_err(|e| e.to_string()))
            .and_then(|d| {
                guard::check_not_empty(&d)
                    .map(|()| d)
                    .map_err(|e| e.to_string())
            }) {
            Ok(document) => CatalogState {
                catalog: Arc::new(as_of_newest_posting(&document)),
                content_at: newest_posting(&document),
                document,
                origin: format!(
                    "{}; expiration dates are judged as of its newest posting date",
                    path.display()
                ),
                problem: None,
                gate: Ok(()),
                holds: Default::default(),
            },
            Err(why) => {
                tracing::error!(path = %path.display(), %why, "catalog file unusable; using the shipped catalog");
                CatalogState {
                    problem: Some(format!("{}: {why}", path.display())),
                    ..shipped()
                }
            }
        },
        CatalogSource::Url(url) => {
            let store = LastGood::new(config.data_dir.join("catalog"));
            // The answer in force before this fetch: what it listed and the new one does not
            // is held (the finer guard).
            let previous = store.load().ok().flatten().map(|(_, document)| document);
            let mut fetch = FetchConfig {
                url: url.clone(),
                ..FetchConfig::default()
            };
            if let Some(roots) = &config.catalog_roots {
                fetch.trusted_roots_pem = roots.clone();
            }
            let outcome = match Fetcher::new(fetch) {
                Ok(fetcher) => crate::catalog::fetch::refresh(&fetcher, &store).await,
                Err(e) => Err(e),
            };
            let problem = match &outcome {
                Ok(_) => None,
                Err(error) => {
                    metrics.catalog_fetch_failed();
                    tracing::warn!(%error, "catalog fetch failed");
                    Some(error.to_string())
                }
            };
            match (outcome, store.load()) {
                (Ok(Refresh::Updated(document)), _) => {
                    let (effective, holds) =
                        hold_vanished(config, metrics, &store, previous.as_ref(), &document);
                    CatalogState {
                        catalog: Arc::new(Catalog::from_document(&effective)),
                        document: *document,
                        origin: url.clone(),
                        problem: None,
                        gate: Ok(()),
                        holds,
                        content_at: Some(config.clock.now()),
                    }
                }
                (_, Ok(Some((_, document)))) => {
                    let (effective, holds) =
                        hold_vanished(config, metrics, &store, previous.as_ref(), &document);
                    CatalogState {
                        gate: cached_copy_for_gate(store.meta().fetched_at, problem.as_deref()),
                        content_at: store.meta().fetched_at,
                        catalog: Arc::new(match store.meta().fetched_at {
                            Some(at) => Catalog::from_document(&effective)
                                .with_as_of(crate::catalog::utc_date(at)),
                            None => Catalog::from_document(&effective),
                        }),
                        holds,
                        document,
                        origin: format!(
                            "the last good copy of {url} in {}",
                            store.body_path().display()
                        ),
                        problem,
                    }
                }
                _ => {
                    tracing::warn!(
                        "Apple's catalog is unreachable and nothing is cached: using the shipped catalog of 2026-08-22"
                    );
                    CatalogState {
                        problem,
                        ..shipped()
                    }
                }
            }
        }
    }
}

/// The finer catalog guard at the edge: what `previous` (or an earlier hold) listed for a device
/// and `document` does not is kept for `--catalog-grace`, warned about and counted; the holds are
/// persisted next to the cached catalog so their start survives a restart.
fn hold_vanished(
    config: &RunConfig,
    metrics: &Metrics,
    store: &LastGood,
    previous: Option<&PmvDocument>,
    document: &PmvDocument,
) -> (PmvDocument, crate::catalog::holdover::Holds) {
    let grace = jiff::SignedDuration::try_from(config.catalog_grace)
        .unwrap_or(crate::catalog::holdover::DEFAULT_GRACE);
    let holds = store.load_holds();
    let carried = crate::catalog::holdover::carry_over(
        previous.unwrap_or(document),
        &holds,
        document,
        config.clock.now(),
        grace,
    );
    if let Some((release, device)) = carried.newly_held.first() {
        tracing::warn!(
            count = carried.newly_held.len(),
            first = %format!("{release} for {device}"),
            grace_days = grace.as_hours() / 24,
            "Apple's catalog no longer lists releases it listed for these devices; they are kept for the grace period, not withdrawn"
        );
    }
    for dropped in carried
        .holds
        .dropped
        .iter()
        .filter(|d| !holds.dropped.contains(d))
    {
        tracing::warn!(
            release = %format!("{}.{} {} ({})", dropped.set, dropped.platform, dropped.product_version, dropped.build.as_deref().unwrap_or("no build")),
            devices = ?dropped.devices,
            since = %dropped.since,
            "the grace period of a release Apple's catalog dropped has ended; it is withdrawn from these devices"
        );
    }
    if carried.holds != holds
        && let Err(error) = store.save_holds(&carried.holds)
    {
        tracing::warn!(%error, "cannot persist the held catalog releases");
    }
    metrics.catalog_held(&carried.holds.per_device());
    (carried.document, carried.holds)
}

/// The start (UTC) of a document's newest posting date.
fn newest_posting(document: &PmvDocument) -> Option<jiff::Timestamp> {
    let day = document.newest_posting_date()?;
    day.to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|zoned| zoned.timestamp())
}

/// Whether the gate trusts a cached copy fetched at `fetched_at` (unknown: no).
fn cached_copy_for_gate(
    fetched_at: Option<jiff::Timestamp>,
    problem: Option<&str>,
) -> Result<(), String> {
    let age = fetched_at.map(|at| jiff::Timestamp::now().duration_since(at));
    match age {
        Some(age) if age <= GATE_CATALOG_MAX_AGE => Ok(()),
        _ => Err(format!(
            "Apple's catalog could not be fetched ({}) and the cached copy is {}; the gate holds devices only against a copy at most {} hours old",
            problem.unwrap_or("not yet refreshed"),
            age.map_or("of unknown age".to_string(), |a| format!(
                "{} hours old",
                a.as_secs() / 3600
            )),
            GATE_CATALOG_MAX_AGE.as_secs() / 3600
        )),
    }
}

/// Devices from an inventory file; problems are logged and the file ignored.
pub fn read_inventory(path: Option<&Path>) -> Vec<Device> {
    let Some(path) = path else { return Vec::new() };
    match std::fs::read_to_string(path)
        .map_err(|e| vec![e.to_string()])
        .and_then(|t| crate::inventory::parse(&t))
    {
        Ok(devices) => devices,
        Err(problems) => {
            for problem in problems {
                tracing::error!(path = %path.display(), %problem, "inventory");
            }
            Vec::new()
        }
    }
}

/// A catalog file of unknown age, judged as of its newest posting date (Apple rolls expiration
/// dates forward daily, so a copy's dates are only meaningful as of about then).
fn as_of_newest_posting(document: &PmvDocument) -> Catalog {
    let catalog = Catalog::from_document(document);
    match document.newest_posting_date() {
        Some(day) => catalog.with_as_of(day),
        None => catalog,
    }
}
