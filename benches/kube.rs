//! Kubernetes-mode scale benchmark: 1,000 hand-written EnforcementTargets, three UpdatePolicies
//! and 100,000 simulated devices (an inventory file), against a real kube-apiserver 1.20, with
//! the operator started in-process (`controller::start`).
//!
//! Run with `KUBECONFIG=/tmp/k8s-kubeconfig cargo bench --bench kube`. Without `KUBECONFIG` the
//! bench starts its own API server with `tests/k8s/apiserver.sh` on ports 46443/42379
//! (kubeconfig `target/kubeconfig-bench`) and leaves it running for the next run; stop it with
//! `K8S_APISERVER_PORT=46443 K8S_ETCD_PORT=42379 bash tests/k8s/apiserver.sh stop`.
//!
//! Everything happens in the namespace `bench-scale`, which is deleted at the end (and first,
//! should an earlier run have left it). The operator watches its kinds in all namespaces and has
//! no setting to narrow that, so, as in `tests/it/kubernetes.rs`, it is handed a client that
//! goes through an in-process HTTP hop rewriting the cluster-wide list/watch of the three kinds
//! to `bench-scale` (what a namespace-scoped deployment would see) and logging every request:
//! an independent count of the operator's API traffic next to `Metrics::kube_writes_total()`.
//!
//! The figures: the time from applying a changed UpdatePolicy to the policy and every
//! EnforcementTarget it generates reporting `Synced` at their new generation, and the API
//! requests per reconcile in that window (no reconcile may make O(devices) API calls); plus
//! the steady state: a further resolver pass with nothing changed writes nothing. The policy
//! `mobile` is changed twice: its deadline's local time (every generated target is re-applied
//! with a new deadline), then its strategy (`latest-minor` → `latest`: the targets for 18.x
//! retire, withdrawn by a pass before their finalizer lets them go). Each change is timed
//! twice: until the policy and the targets it now generates are Synced, and until the retired
//! ones are gone too. Nothing in the scenario depends on the clock (deadlines count 200 days
//! from Apple's posting dates, without a minimum lead time).
//!
//! Baselines, measured in the same run against the same server with the same client before
//! the operator starts (the machines are shared and noisy, so each figure is printed as a
//! ratio to one of them):
//! * the status write floor: the 1,000 hand-written targets' statuses written directly by
//!   server-side apply, as the operator writes them (same field manager, same patch, the same
//!   fields, the operator's concurrency of 4). Reaching `Ready` needs at least one status
//!   write per object, so this is the API cost no operator can go below; the ratio says how
//!   much resolving, reconciling and waiting add on top.
//! * one plain `list` of the 1,000 targets: the cheapest look at them all, for scale.
//!
//! `DDM_BENCH_DUMP=DIR cargo bench --bench kube` writes the same inventory and manifests to
//! `DIR` (for `ddm-update-operator plan -f DIR/manifests --inventory DIR/inventory.json`) and
//! touches no cluster.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::IntoResponse;
use ddm_update_operator::api::condition_types::{READY, SYNCED};
use ddm_update_operator::api::{
    self, EnforcementTarget, FleetGroup, POLICY_LABEL, STATUS_FIELD_MANAGER, UpdatePolicy,
};
use ddm_update_operator::catalog::{AssetSet, Catalog, OsVersion, Platform};
use ddm_update_operator::controller::{self, KubeSettings, Running};
use ddm_update_operator::inventory;
use ddm_update_operator::metrics::Metrics;
use ddm_update_operator::operator::{CatalogSource, RunConfig};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config, Resource, ResourceExt};
use serde_json::{Value, json};

#[path = "support/mod.rs"]
mod support;

use support::{
    APPLE_TVS, DEPARTMENTS, History, IPADS, IPHONES, Model, Rng, SNAPSHOTS, VISION_PROS, histories,
    mix, snapshot_path,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CATALOG: &str = "tests/fixtures/gdmf/pmv-2026-08-22.json";
const NAMESPACE: &str = "bench-scale";
const DEVICES: usize = 100_000;
const TARGETS: usize = 1_000;
/// Team FleetGroups the hand-written targets name (one each); every device is in one team.
const TEAMS: usize = 40;
/// Requests the bench itself keeps in flight when creating and cleaning up.
const OUR_CONCURRENCY: usize = 8;
/// `run --concurrency` default: reconciles at once per kind.
const OPERATOR_CONCURRENCY: u16 = 4;
const OWN_APISERVER_PORT: &str = "46443";
const OWN_ETCD_PORT: &str = "42379";
const PLURALS: [&str; 3] = ["fleetgroups", "updatepolicies", "enforcementtargets"];
const POLL: Duration = Duration::from_millis(100);
const PROGRESS: Duration = Duration::from_secs(20);
/// Caps: the whole bench should stay under about ten minutes.
const CONVERGE_CAP: Duration = Duration::from_secs(420);
const CHANGE_CAP: Duration = Duration::from_secs(180);
const QUIET: Duration = Duration::from_secs(3);
const QUIET_CAP: Duration = Duration::from_secs(120);

/// The policy the bench changes, and its device-local deadline time before and after.
const CHANGED_POLICY: &str = "mobile";
const LOCAL_TIME_BEFORE: &str = "18:00";
const LOCAL_TIME_AFTER: &str = "17:30";

const RECONCILES: &str = "ddm_update_operator_reconciles_total";
const PASSES: &str = "ddm_update_operator_resolve_passes_total";
const BACKEND_CHANGES: &str = "ddm_update_operator_backend_assignment_changes_total";
const FAILURES: &str = "ddm_update_operator_reconcile_failures_total";

type Outcome<T> = Result<T, String>;

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

// ---------------------------------------------------------------------------------------------
// The fleet (after benches/plan.rs: real device ids of the newest snapshot, each device running
// a version and build Apple really offered its model in one of the snapshots).

const MACS: &[Model] = &[
    ("J274AP", "Macmini9,1", 3),
    ("J293AP", "MacBookPro17,1", 3),
    ("J313AP", "MacBookAir10,1", 6),
    ("J456AP", "iMac21,1", 2),
    ("J314sAP", "MacBookPro18,3", 5),
    ("J316sAP", "MacBookPro18,1", 3),
    ("J413AP", "Mac14,2", 7),
    ("J493AP", "Mac14,7", 2),
    ("J414sAP", "Mac14,9", 4),
    ("J473AP", "Mac14,3", 2),
    ("J415AP", "Mac14,15", 3),
    ("J504AP", "Mac15,3", 3),
    ("J613AP", "Mac15,12", 6),
    ("J604AP", "Mac16,1", 3),
    ("J713AP", "Mac16,12", 6),
    ("J152FAP", "MacBookPro16,1", 2),
    ("J230KAP", "MacBookAir9,1", 1),
];

/// Platforms with their share of the fleet, per mille.
const FLEET: [(Platform, &[Model], u32); 5] = [
    (Platform::Ios, IPHONES, 440),
    (Platform::IpadOs, IPADS, 140),
    (Platform::MacOs, MACS, 385),
    (Platform::TvOs, APPLE_TVS, 20),
    (Platform::VisionOs, VISION_PROS, 15),
];

/// The inventory as JSON (an MDM export), plus devices per platform for the report.
fn inventory_json(
    histories: &HashMap<&'static str, History>,
    size: usize,
) -> (String, BTreeMap<Platform, usize>) {
    let mut rng = Rng(0x0dd3_2026_1126);
    let mut per_platform: BTreeMap<Platform, usize> = BTreeMap::new();
    let mut out = String::with_capacity(size * 330);
    out.push('[');
    for i in 0..size {
        let (platform, models, _) = *rng.weighted(&FLEET, |f| f.2);
        let &(id, model, _) = rng.weighted(models, |m| m.2);
        *per_platform.entry(platform).or_default() += 1;
        let history = &histories[id];
        let (version, builds) = &history[rng.position_in_history(history.len())];
        let build = (!builds.is_empty()).then(|| builds[rng.below(builds.len())].clone());
        let (enrollment_type, supervised) = match (platform, rng.below(100)) {
            (Platform::Ios, 0..85) | (Platform::IpadOs, 0..92) | (Platform::MacOs, 0..90) => {
                ("ade", true)
            }
            (Platform::Ios | Platform::IpadOs | Platform::MacOs, _) => ("device", false),
            _ => ("ade", true),
        };
        let board_id = (platform == Platform::MacOs).then_some(id);
        let unique = mix(i as u64);
        let enrollment_id = if platform == Platform::MacOs {
            format!(
                "{:08X}-{:04X}-{:04X}-{:04X}-{:012X}",
                unique >> 32,
                (unique >> 16) & 0xFFFF,
                unique & 0xFFFF,
                rng.next() & 0xFFFF,
                rng.next() & 0xFFFF_FFFF_FFFF
            )
        } else {
            format!("00008{:03X}-{unique:016X}", rng.next() & 0xFFF)
        };
        let serial: String = (0..10)
            .map(|_| b"0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"[rng.below(34)] as char)
            .collect();
        let team = rng.below(TEAMS);
        let department = rng.weighted(DEPARTMENTS, |d| d.1).0;
        let mut device = json!({
            "enrollmentId": enrollment_id,
            "serialNumber": serial,
            "platform": platform.as_str(),
            "model": model,
            "osVersion": version.numeric(),
            "supervised": supervised,
            "enrollmentType": enrollment_type,
            "labels": {"team": format!("t{team:02}"), "department": department, "fleet": "corporate"},
        });
        if let Some(board) = board_id {
            device["softwareUpdateDeviceId"] = board.into();
        }
        if let Some(extra) = version.extra() {
            device["supplementalExtra"] = extra.into();
        }
        if let Some(build) = build {
            device["buildVersion"] = build.as_str().into();
        }
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{device}");
    }
    out.push(']');
    (out, per_platform)
}

// ---------------------------------------------------------------------------------------------
// The resources.

fn groups() -> Vec<FleetGroup> {
    let mut out: Vec<Value> = vec![
        json!({"name": "iphones", "spec": {"platforms": ["iOS"]}}),
        json!({"name": "ipads", "spec": {"platforms": ["iPadOS"]}}),
        json!({"name": "macs", "spec": {"platforms": ["macOS"], "selector": {"matchLabels": {"fleet": "corporate"}}}}),
        json!({"name": "macs-canary", "spec": {"platforms": ["macOS"], "shard": {"percent": 10, "seed": "macs-canary"}}}),
        json!({"name": "apple-tvs", "spec": {"platforms": ["tvOS"]}}),
        json!({"name": "vision-pros", "spec": {"platforms": ["visionOS"]}}),
    ];
    for team in 0..TEAMS {
        out.push(json!({
            "name": format!("team-{team:02}"),
            "spec": {"selector": {"matchLabels": {"team": format!("t{team:02}")}}},
        }));
    }
    out.into_iter()
        .map(|g| {
            serde_json::from_value(json!({
                "apiVersion": api::API_VERSION,
                "kind": "FleetGroup",
                "metadata": {"name": g["name"], "namespace": NAMESPACE},
                "spec": g["spec"],
            }))
            .expect("a FleetGroup")
        })
        .collect()
}

/// Deadlines count 200 days from Apple's posting date without a minimum lead time, so no
/// deadline depends on the clock: nothing changes by itself while the bench runs.
fn policies() -> Vec<Value> {
    let policy = |name: &str, spec: Value| {
        json!({
            "apiVersion": api::API_VERSION,
            "kind": "UpdatePolicy",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": spec,
        })
    };
    vec![
        policy(
            CHANGED_POLICY,
            json!({
                "fleetGroups": ["iphones", "ipads"],
                "target": {"strategy": "latest-minor"},
                "deadline": {"daysAfterPosting": 200, "localTime": LOCAL_TIME_BEFORE,
                             "timeZone": "America/New_York", "skipWeekends": true},
                "detailsURL": "https://it.example.com/updates/ios",
                "settings": {"notifications": true, "deferrals": {"combinedPeriodInDays": 14},
                             "automaticActions": {"download": "AlwaysOn", "installOSUpdates": "AlwaysOn"}},
            }),
        ),
        policy(
            "macs",
            json!({
                "fleetGroups": ["macs-canary"],
                "rings": [{"name": "broad", "fleetGroups": ["macs"], "delayDays": 7}],
                "target": {"strategy": "latest", "securityImprovements": true},
                "deadline": {"daysAfterPosting": 200, "localTime": "19:00",
                             "timeZone": "Europe/Berlin", "skipWeekends": true},
                "settings": {"notifications": true,
                             "deferrals": {"majorPeriodInDays": 30, "minorPeriodInDays": 7}},
            }),
        ),
        policy(
            "rooms",
            json!({
                "fleetGroups": ["apple-tvs", "vision-pros"],
                "target": {"strategy": "latest"},
                "deadline": {"daysAfterPosting": 200, "localTime": "07:00",
                             "timeZone": "Europe/London"},
            }),
        ),
    ]
}

/// 1,000 hand-written targets: each names one team group and one of iOS, iPadOS and macOS, a
/// version Apple offers on that platform (the six newest full releases of the snapshot) and a
/// deadline between January and April 2027.
fn targets(catalog: &Catalog) -> Vec<EnforcementTarget> {
    let platforms = [Platform::Ios, Platform::IpadOs, Platform::MacOs];
    let versions: Vec<Vec<OsVersion>> = platforms
        .iter()
        .map(|p| {
            let mut list: Vec<OsVersion> = catalog
                .releases(AssetSet::Mdm)
                .iter()
                .filter(|r| r.platforms().contains(p))
                .map(|r| r.version.clone())
                .collect();
            list.sort();
            list.dedup();
            list.reverse();
            list.truncate(6);
            assert!(!list.is_empty(), "the catalog offers {p}");
            list
        })
        .collect();
    let start = jiff::civil::date(2027, 1, 4);
    (0..TARGETS)
        .map(|k| {
            let team = k % TEAMS;
            let j = k / TEAMS;
            let p = j % platforms.len();
            let version = &versions[p][(j / platforms.len() + team) % versions[p].len()];
            let day = start
                .checked_add(jiff::Span::new().days(((k * 7) % 90) as i64))
                .expect("a date");
            let deadline = format!("{}T{:02}:00:00", day, 8 + k % 10);
            let name = format!(
                "et-{team:02}-{j:02}-{}-{}",
                platforms[p].as_str().to_lowercase(),
                version
                    .to_string()
                    .replace(['.', ' '], "-")
                    .replace(['(', ')'], "")
            );
            serde_json::from_value(json!({
                "apiVersion": api::API_VERSION,
                "kind": "EnforcementTarget",
                "metadata": {"name": name, "namespace": NAMESPACE,
                             "annotations": {"it.example.com/ticket": format!("SEC-{}", 4000 + k)}},
                "spec": {
                    "fleetGroups": [format!("team-{team:02}")],
                    "platform": platforms[p].as_str(),
                    "targetOSVersion": version.to_string(),
                    "targetLocalDateTime": deadline,
                    "detailsURL": format!("https://it.example.com/advisories/{k}"),
                    "deletionPolicy": "Withdraw",
                },
            }))
            .expect("an EnforcementTarget")
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The API server.

/// `KUBECONFIG`, or the kubeconfig of a server started here with `tests/k8s/apiserver.sh`.
fn kubeconfig() -> Outcome<(Option<PathBuf>, String)> {
    if let Some(value) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        return Ok((None, format!("KUBECONFIG={}", value.to_string_lossy())));
    }
    let path = Path::new(ROOT).join("target/kubeconfig-bench");
    println!(
        "KUBECONFIG is not set: starting an API server with tests/k8s/apiserver.sh on port \
         {OWN_APISERVER_PORT} (left running; stop it with `K8S_APISERVER_PORT={OWN_APISERVER_PORT} \
         K8S_ETCD_PORT={OWN_ETCD_PORT} bash tests/k8s/apiserver.sh stop`)"
    );
    let started = Instant::now();
    let output = Command::new("bash")
        .arg("tests/k8s/apiserver.sh")
        .arg("start")
        .arg(&path)
        .current_dir(ROOT)
        .env("K8S_APISERVER_PORT", OWN_APISERVER_PORT)
        .env("K8S_ETCD_PORT", OWN_ETCD_PORT)
        .output()
        .map_err(|e| format!("KUBECONFIG is not set and tests/k8s/apiserver.sh cannot run: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        return Err(format!(
            "KUBECONFIG is not set and `K8S_APISERVER_PORT={OWN_APISERVER_PORT} K8S_ETCD_PORT={OWN_ETCD_PORT} \
             bash tests/k8s/apiserver.sh start {}` failed ({}); set KUBECONFIG to a running \
             Kubernetes API server instead. Its last lines:\n{}",
            path.display(),
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    println!("API server ready in {}", secs(started.elapsed()));
    let origin = format!("{} (started by this bench)", path.display());
    Ok((Some(path), origin))
}

async fn plain_client(kubeconfig: Option<&Path>, origin: &str) -> Outcome<Client> {
    let config = match kubeconfig {
        Some(path) => Kubeconfig::read_from(path),
        None => Kubeconfig::read(),
    }
    .map_err(|e| format!("reading the kubeconfig ({origin}): {e}"))?;
    let config = Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("the kubeconfig ({origin}) is unusable: {e}"))?;
    let client = Client::try_from(config).map_err(|e| format!("a client for {origin}: {e}"))?;
    let version = client
        .apiserver_version()
        .await
        .map_err(|e| format!("the API server of {origin} does not answer: {e}"))?;
    println!(
        "API server {origin}: Kubernetes {}.{} ({})",
        version.major, version.minor, version.git_version
    );
    Ok(client)
}

/// The CRDs without CEL rules (1.20 refuses them), created when absent, then Established. A
/// CRD being deleted (by someone else sharing the server) is waited out, then created again.
async fn install_crds(client: &Client) -> Outcome<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let files = api::crd_files(false).map_err(|e| format!("rendering the CRDs: {e}"))?;
    for (file, text) in files {
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
        let name = crd.name_any();
        let waited = Instant::now();
        loop {
            let existing = api
                .get_opt(&name)
                .await
                .map_err(|e| format!("CRD {name}: {e}"))?;
            match existing {
                Some(found) if found.metadata.deletion_timestamp.is_some() => {
                    if waited.elapsed() > Duration::from_secs(60) {
                        return Err(format!(
                            "CRD {name} has been terminating since {} (deleted by someone else \
                             sharing this API server; its objects' finalizers hold it), so no \
                             object of its kind can be created. Run the bench on its own server: \
                             unset KUBECONFIG (it then starts tests/k8s/apiserver.sh on port \
                             {OWN_APISERVER_PORT})",
                            found
                                .metadata
                                .deletion_timestamp
                                .map(|t| t.0.to_string())
                                .unwrap_or_default()
                        ));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Some(_) => break,
                None => match api.create(&PostParams::default(), &crd).await {
                    Ok(_) => {
                        println!("created CRD {name}");
                        break;
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => {}
                    Err(error) => return Err(format!("creating CRD {name}: {error}")),
                },
            }
        }
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .map_err(|_| format!("CRD {name} not Established within 30 s"))?
            .map_err(|e| format!("waiting for CRD {name}: {e}"))?;
    }
    Ok(())
}

/// Strips our finalizer from every object in the namespace (the operator that would remove it
/// is gone), deletes the namespace and waits (bounded) until it is gone.
async fn remove_namespace(client: &Client) -> Outcome<Duration> {
    let started = Instant::now();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces
        .get_opt(NAMESPACE)
        .await
        .map_err(|e| e.to_string())?
        .is_none()
    {
        return Ok(started.elapsed());
    }
    let unpin = json!({"metadata": {"finalizers": null}});
    let lp = ListParams::default();
    let mut names: Vec<(&str, String)> = Vec::new();
    let list = |r: Result<Vec<String>, kube::Error>| r.unwrap_or_default();
    for (kind, found) in [
        (
            "fleetgroups",
            list(names_of::<FleetGroup>(client, &lp).await),
        ),
        (
            "updatepolicies",
            list(names_of::<UpdatePolicy>(client, &lp).await),
        ),
        (
            "enforcementtargets",
            list(names_of::<EnforcementTarget>(client, &lp).await),
        ),
    ] {
        names.extend(found.into_iter().map(|n| (kind, n)));
    }
    futures::stream::iter(names)
        .map(|(kind, name)| {
            let unpin = &unpin;
            async move {
                let pp = PatchParams::default();
                let patch = Patch::Merge(unpin);
                let _ = match kind {
                    "fleetgroups" => ns_api::<FleetGroup>(client)
                        .patch(&name, &pp, &patch)
                        .await
                        .map(drop),
                    "updatepolicies" => ns_api::<UpdatePolicy>(client)
                        .patch(&name, &pp, &patch)
                        .await
                        .map(drop),
                    _ => ns_api::<EnforcementTarget>(client)
                        .patch(&name, &pp, &patch)
                        .await
                        .map(drop),
                };
            }
        })
        .buffer_unordered(OUR_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    match namespaces.delete(NAMESPACE, &DeleteParams::default()).await {
        Ok(_) | Err(kube::Error::Api(_)) => {}
        Err(error) => return Err(format!("deleting namespace {NAMESPACE}: {error}")),
    }
    while started.elapsed() < Duration::from_secs(120) {
        if namespaces
            .get_opt(NAMESPACE)
            .await
            .map_err(|e| e.to_string())?
            .is_none()
        {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!(
        "namespace {NAMESPACE} still exists 120 s after its deletion (is kube-controller-manager running?)"
    ))
}

fn ns_api<K>(client: &Client) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(client.clone(), NAMESPACE)
}

async fn names_of<K>(client: &Client, lp: &ListParams) -> Result<Vec<String>, kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Ok(ns_api::<K>(client)
        .list_metadata(lp)
        .await?
        .items
        .into_iter()
        .map(|o| o.name_any())
        .collect())
}

// ---------------------------------------------------------------------------------------------
// The namespace-scoped, logging client the operator gets (as in tests/it/kubernetes.rs).

#[derive(Debug, Clone)]
struct Logged {
    at: Instant,
    method: String,
    path: String,
    /// `apply` (server-side apply), `merge`, `json` (JSON patch) or empty.
    patch: &'static str,
    watch: bool,
    code: u16,
}

impl Logged {
    fn lease(&self) -> bool {
        self.path.contains("/leases")
    }

    /// A write other than leader election (which renews on a timer).
    fn is_write(&self) -> bool {
        self.method != "GET" && !self.lease()
    }

    /// A request other than a watch or a Lease request.
    fn counts(&self) -> bool {
        !self.watch && !self.lease()
    }

    /// `PATCH(apply) enforcementtargets/status` and the like.
    fn label(&self) -> String {
        let parts: Vec<&str> = self.path.split('/').collect();
        let (resource, collection) = match parts.iter().position(|p| *p == "namespaces") {
            Some(i) if parts.len() > i + 2 => (parts[i + 2], parts.len() == i + 3),
            _ => (parts.last().copied().unwrap_or("?"), true),
        };
        let sub = if self.path.ends_with("/status") {
            "/status"
        } else {
            ""
        };
        let verb = match (self.method.as_str(), self.patch) {
            ("GET", _) if collection => "LIST".to_string(),
            (m, "") => m.to_string(),
            (m, p) => format!("{m}({p})"),
        };
        format!("{verb} {resource}{sub}")
    }
}

#[derive(Default)]
struct RequestLog {
    entries: Mutex<Vec<Logged>>,
}

impl RequestLog {
    fn since(&self, at: Instant) -> Vec<Logged> {
        self.entries
            .lock()
            .expect("log")
            .iter()
            .filter(|e| e.at >= at)
            .cloned()
            .collect()
    }

    fn writes(&self) -> usize {
        self.entries
            .lock()
            .expect("log")
            .iter()
            .filter(|e| e.is_write())
            .count()
    }
}

#[derive(Clone)]
struct Scope {
    inner: Client,
    log: Arc<RequestLog>,
}

async fn forward(
    State(scope): State<Scope>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    if let Some(plural) = path.strip_prefix("/apis/updates.ddm.dev/v1alpha1/")
        && PLURALS.contains(&plural)
    {
        let scoped = format!("/apis/updates.ddm.dev/v1alpha1/namespaces/{NAMESPACE}/{plural}");
        let with_query = match parts.uri.query() {
            Some(query) => format!("{scoped}?{query}"),
            None => scoped,
        };
        parts.uri = with_query.parse().expect("a request path");
    }
    let watch = parts
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let patch = match parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some(t) if t.contains("apply-patch") => "apply",
        Some(t) if t.contains("merge-patch") => "merge",
        Some(t) if t.contains("json-patch") => "json",
        _ => "",
    };
    let method = parts.method.to_string();
    let path = parts.uri.path().to_string();
    let bytes = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(bytes) => bytes,
        Err(error) => {
            return (axum::http::StatusCode::BAD_REQUEST, error.to_string()).into_response();
        }
    };
    let request = axum::http::Request::from_parts(parts, kube::client::Body::from(bytes));
    let at = Instant::now();
    let (response, code) = match scope.inner.send(request).await {
        Ok(response) => {
            let code = response.status().as_u16();
            (response.map(axum::body::Body::new), code)
        }
        Err(error) => (
            (axum::http::StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
            502,
        ),
    };
    scope.log.entries.lock().expect("log").push(Logged {
        at,
        method,
        path,
        patch,
        watch,
        code,
    });
    response
}

fn scoped_client(inner: Client, log: Arc<RequestLog>) -> Client {
    let router = axum::Router::new()
        .fallback(forward)
        .with_state(Scope { inner, log });
    Client::new(router, NAMESPACE)
}

// ---------------------------------------------------------------------------------------------
// Watching the namespace (the bench's own watch caches, so waiting costs no polling lists).

struct Caches {
    groups: Store<FleetGroup>,
    policies: Store<UpdatePolicy>,
    targets: Store<EnforcementTarget>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn cache<K>(client: &Client, tasks: &mut Vec<tokio::task::JoinHandle<()>>) -> Store<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(ns_api::<K>(client), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .for_each(|_| futures::future::ready(()));
    tasks.push(tokio::spawn(stream));
    reader
}

impl Caches {
    async fn start(client: &Client) -> Outcome<Caches> {
        let mut tasks = Vec::new();
        let caches = Caches {
            groups: cache(client, &mut tasks),
            policies: cache(client, &mut tasks),
            targets: cache(client, &mut tasks),
            tasks,
        };
        let ready = async {
            caches.groups.wait_until_ready().await.ok();
            caches.policies.wait_until_ready().await.ok();
            caches.targets.wait_until_ready().await.ok();
        };
        tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .map_err(|_| "the bench's own watch caches were not ready within 30 s".to_string())?;
        Ok(caches)
    }

    fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

fn has(conditions: &[Condition], type_: &str, generation: Option<i64>) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True" && c.observed_generation == generation)
}

fn describe(conditions: &[Condition]) -> String {
    conditions
        .iter()
        .map(|c| {
            format!(
                "{}={} ({}, gen {:?}: {})",
                c.type_, c.status, c.reason, c.observed_generation, c.message
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `object` (of `kind`) observed at its generation, Ready=True and Synced=True there.
fn ready_and_synced(
    kind: &str,
    object: &impl ResourceExt,
    observed: Option<i64>,
    conditions: &[Condition],
) -> Outcome<()> {
    let generation = object.meta().generation;
    if observed != generation
        || !has(conditions, READY, generation)
        || !has(conditions, SYNCED, generation)
    {
        return Err(format!(
            "{kind} {} gen {generation:?}: {}",
            object.name_any(),
            describe(conditions)
        ));
    }
    Ok(())
}

/// Objects by kind: (groups, policies, hand-written targets, generated targets).
type Counted = (usize, usize, usize, usize);

/// Every object Ready=True and Synced=True (groups: Ready) at its generation, with
/// `observedGeneration` at its generation; every policy's generated targets exist.
fn all_ready(caches: &Caches) -> Outcome<Counted> {
    let groups = caches.groups.state();
    let policies = caches.policies.state();
    let targets = caches.targets.state();
    for g in &groups {
        let status = g.status.clone().unwrap_or_default();
        let generation = g.metadata.generation;
        if status.observed_generation != generation || !has(&status.conditions, READY, generation) {
            return Err(format!(
                "FleetGroup {} gen {generation:?}: {}",
                g.name_any(),
                describe(&status.conditions)
            ));
        }
    }
    let mut generated = 0;
    for p in &policies {
        let status = p.status.clone().unwrap_or_default();
        ready_and_synced(
            "UpdatePolicy",
            &**p,
            status.observed_generation,
            &status.conditions,
        )?;
        let mine = targets
            .iter()
            .filter(|t| t.labels().get(POLICY_LABEL) == Some(&p.name_any()))
            .count();
        if mine != status.targets as usize || mine == 0 {
            return Err(format!(
                "UpdatePolicy {}: status says {} generated targets, {mine} exist",
                p.name_any(),
                status.targets
            ));
        }
        generated += mine;
    }
    for t in &targets {
        let status = t.status.clone().unwrap_or_default();
        ready_and_synced(
            "EnforcementTarget",
            &**t,
            status.observed_generation,
            &status.conditions,
        )?;
    }
    Ok((
        groups.len(),
        policies.len(),
        targets.len() - generated,
        generated,
    ))
}

/// The changed policy Synced at `generation`, and every target it generates carrying the new
/// deadline time and Synced at its own (new) generation; the count matches the policy's status.
/// With `retired_gone`, the targets it no longer generates must be gone too (their finalizer
/// waits for a pass that withdraws them); without, they are left out.
fn change_synced(caches: &Caches, generation: Option<i64>, retired_gone: bool) -> Outcome<usize> {
    let policy = caches
        .policies
        .state()
        .into_iter()
        .find(|p| p.name_any() == CHANGED_POLICY)
        .ok_or("the changed policy is gone")?;
    let status = policy.status.clone().unwrap_or_default();
    if policy.metadata.generation != generation
        || status.observed_generation != generation
        || !has(&status.conditions, SYNCED, generation)
    {
        return Err(format!(
            "UpdatePolicy {CHANGED_POLICY} gen {:?}: {}",
            policy.metadata.generation,
            describe(&status.conditions)
        ));
    }
    let mine: Vec<Arc<EnforcementTarget>> = caches
        .targets
        .state()
        .into_iter()
        .filter(|t| t.labels().get(POLICY_LABEL).map(String::as_str) == Some(CHANGED_POLICY))
        .filter(|t| retired_gone || t.metadata.deletion_timestamp.is_none())
        .collect();
    if mine.len() != status.targets as usize || mine.is_empty() {
        return Err(format!(
            "{} generated targets exist, the policy's status says {}",
            mine.len(),
            status.targets
        ));
    }
    let suffix = format!("T{LOCAL_TIME_AFTER}:00");
    for t in &mine {
        if !t.spec.target_local_date_time.ends_with(&suffix) {
            return Err(format!(
                "{} still due {}",
                t.name_any(),
                t.spec.target_local_date_time
            ));
        }
        let status = t.status.clone().unwrap_or_default();
        if status.observed_generation != t.metadata.generation
            || !has(&status.conditions, SYNCED, t.metadata.generation)
        {
            return Err(format!(
                "{} gen {:?}: {}",
                t.name_any(),
                t.metadata.generation,
                describe(&status.conditions)
            ));
        }
    }
    Ok(mine.len())
}

/// Names of the changed policy's generated targets (with `deleting`, also those being deleted).
fn generated_names(caches: &Caches, deleting: bool) -> HashSet<String> {
    caches
        .targets
        .state()
        .iter()
        .filter(|t| t.labels().get(POLICY_LABEL).map(String::as_str) == Some(CHANGED_POLICY))
        .filter(|t| deleting || t.metadata.deletion_timestamp.is_none())
        .map(|t| t.name_any())
        .collect()
}

/// Events in the namespace by reason: (Event objects, occurrences counting their series).
async fn events_by_reason(client: &Client) -> Outcome<BTreeMap<String, (usize, i64)>> {
    let events = ns_api::<k8s_openapi::api::events::v1::Event>(client)
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing events: {e}"))?;
    let mut out: BTreeMap<String, (usize, i64)> = BTreeMap::new();
    for event in events.items {
        let entry = out.entry(event.reason.unwrap_or_default()).or_default();
        entry.0 += 1;
        entry.1 += event.series.map_or(1, |s| i64::from(s.count));
    }
    Ok(out)
}

/// Polls `probe` every [`POLL`] until it answers `Ok`; its last `Err` after `cap`. Prints
/// `progress()` every [`PROGRESS`] meanwhile.
async fn eventually<T>(
    what: &str,
    cap: Duration,
    mut probe: impl FnMut() -> Outcome<T>,
    progress: impl Fn() -> String,
) -> Outcome<(T, Duration)> {
    let started = Instant::now();
    let mut reported = Instant::now();
    loop {
        let last = match probe() {
            Ok(value) => return Ok((value, started.elapsed())),
            Err(why) => why,
        };
        if started.elapsed() >= cap {
            return Err(format!("{what}: not within {cap:?}; last seen: {last}"));
        }
        if reported.elapsed() >= PROGRESS {
            reported = Instant::now();
            println!(
                "  … {:>5.1} s: {}",
                started.elapsed().as_secs_f64(),
                progress()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Objects Ready=True at their generation, of all; the operator's counters; writes so far.
fn progress(caches: &Caches, metrics: &Metrics, log: &RequestLog) -> String {
    fn ready<K: Resource>(objects: &[Arc<K>], conditions: impl Fn(&K) -> Vec<Condition>) -> usize {
        objects
            .iter()
            .filter(|o| has(&conditions(o), READY, o.meta().generation))
            .count()
    }
    let groups = caches.groups.state();
    let policies = caches.policies.state();
    let targets = caches.targets.state();
    let g = ready(&groups, |o| o.status.clone().unwrap_or_default().conditions);
    let p = ready(&policies, |o| {
        o.status.clone().unwrap_or_default().conditions
    });
    let t = ready(&targets, |o| {
        o.status.clone().unwrap_or_default().conditions
    });
    let finalized = targets
        .iter()
        .filter(|t| !t.finalizers().is_empty())
        .count();
    let (pass, passes) = mean(metrics, "ddm_update_operator_resolve_duration_seconds", "");
    let kinds: Vec<String> = reconciles_by_kind(metrics)
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    format!(
        "Ready: {g}/{} groups, {p}/{} policies, {t}/{} targets ({finalized} with the finalizer); {passes} passes (mean {pass:.2} s); reconciles {}; failures {}; {} writes",
        groups.len(),
        policies.len(),
        targets.len(),
        kinds.join(", "),
        metric(metrics, FAILURES, ""),
        log.writes()
    )
}

// ---------------------------------------------------------------------------------------------
// Metrics.

/// The sum of every series of `name` whose labels contain `labels` (empty: all).
fn metric(metrics: &Metrics, name: &str, labels: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let bare = key.split('{').next()?;
            (bare == name && key.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum::<f64>()
        + 0.0
}

/// Reconciles per kind, from `reconciles_total{kind=...}`.
fn reconciles_by_kind(metrics: &Metrics) -> BTreeMap<String, f64> {
    by_kind(metrics, RECONCILES)
}

/// A per-kind counter (`name{kind=...}`) by kind.
fn by_kind(metrics: &Metrics, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in metrics.encode().lines() {
        let Some(rest) = line.strip_prefix(&format!("{name}{{")) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        let kind = labels
            .split("kind=\"")
            .nth(1)
            .and_then(|k| k.split('"').next())
            .unwrap_or("?");
        *out.entry(kind.to_string()).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

/// Mean of a histogram (`_sum / _count`), in seconds, and its count.
fn mean(metrics: &Metrics, name: &str, labels: &str) -> (f64, f64) {
    let sum = metric(metrics, &format!("{name}_sum"), labels);
    let count = metric(metrics, &format!("{name}_count"), labels);
    (sum / count.max(1.0), count)
}

/// Counters at one moment, to report the deltas of a window.
#[derive(Clone)]
struct Mark {
    at: Instant,
    passes: f64,
    reconciles: f64,
    by_kind: BTreeMap<String, f64>,
    kube_writes: u64,
    backend_changes: f64,
    resolve: (f64, f64),
    failures: BTreeMap<String, f64>,
}

impl Mark {
    fn now(metrics: &Metrics) -> Mark {
        // The total from the same reading as the per-kind counts, so they add up.
        let reconciles = reconciles_by_kind(metrics);
        Mark {
            at: Instant::now(),
            passes: metric(metrics, PASSES, ""),
            reconciles: reconciles.values().sum::<f64>() + 0.0,
            by_kind: reconciles,
            kube_writes: metrics.kube_writes_total(),
            backend_changes: metric(metrics, BACKEND_CHANGES, ""),
            failures: by_kind(metrics, FAILURES),
            resolve: (
                metric(
                    metrics,
                    "ddm_update_operator_resolve_duration_seconds_sum",
                    "",
                ),
                metric(
                    metrics,
                    "ddm_update_operator_resolve_duration_seconds_count",
                    "",
                ),
            ),
        }
    }
}

/// What happened between two marks.
struct Window {
    failures: BTreeMap<String, f64>,
    passes: f64,
    reconciles: f64,
    by_kind: BTreeMap<String, f64>,
    kube_writes: u64,
    backend_changes: f64,
    mean_pass: f64,
    requests: Vec<Logged>,
}

impl Window {
    fn between(a: &Mark, b: &Mark, log: &RequestLog) -> Window {
        let requests = log
            .since(a.at)
            .into_iter()
            .filter(|r| r.at < b.at && r.counts())
            .collect();
        let by_kind = b
            .by_kind
            .iter()
            .map(|(k, v)| (k.clone(), v - a.by_kind.get(k).copied().unwrap_or(0.0)))
            .collect();
        let passes = b.resolve.1 - a.resolve.1;
        let failures = b
            .failures
            .iter()
            .map(|(k, v)| (k.clone(), v - a.failures.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, v)| *v > 0.0)
            .collect();
        Window {
            failures,
            passes: b.passes - a.passes,
            reconciles: b.reconciles - a.reconciles,
            by_kind,
            kube_writes: b.kube_writes - a.kube_writes,
            backend_changes: b.backend_changes - a.backend_changes,
            mean_pass: (b.resolve.0 - a.resolve.0) / passes.max(1.0),
            requests,
        }
    }

    fn writes(&self) -> usize {
        self.requests.iter().filter(|r| r.is_write()).count()
    }

    /// The most writes that went to one object path (status and spec apart; Events left out),
    /// and which.
    fn most_writes_on_one_object(&self) -> (usize, String) {
        let mut per: HashMap<&str, usize> = HashMap::new();
        for r in self
            .requests
            .iter()
            .filter(|r| r.is_write() && r.method != "POST" && !r.path.contains("/events"))
        {
            *per.entry(r.path.as_str()).or_default() += 1;
        }
        per.into_iter()
            .max_by_key(|(path, n)| (*n, std::cmp::Reverse(*path)))
            .map(|(path, n)| {
                (
                    n,
                    path.rsplit("namespaces/")
                        .next()
                        .unwrap_or(path)
                        .to_string(),
                )
            })
            .unwrap_or((0, "none".into()))
    }

    fn print(&self, what: &str) {
        let by_kind: Vec<String> = self
            .by_kind
            .iter()
            .filter(|(_, n)| **n > 0.0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!(
            "{what}: {} resolver passes (mean {:.2} s), {} reconciles ({}), {} API requests \
             besides watches and the Lease, {} of them writes ({} counted by the operator's \
             kube_writes_total); {} devices' declaration sets changed",
            self.passes,
            self.mean_pass,
            self.reconciles,
            by_kind.join(", "),
            self.requests.len(),
            self.writes(),
            self.kube_writes,
            self.backend_changes
        );
        let mut by_label: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for r in &self.requests {
            let entry = by_label.entry(r.label()).or_default();
            entry.0 += 1;
            if r.code >= 400 {
                entry.1 += 1;
            }
        }
        let parts: Vec<String> = by_label
            .iter()
            .map(|(l, (n, failed))| {
                if *failed > 0 {
                    format!("{l} {n} ({failed} refused)")
                } else {
                    format!("{l} {n}")
                }
            })
            .collect();
        println!("  requests: {}", parts.join(", "));
        if !self.failures.is_empty() {
            let failed: Vec<String> = self
                .failures
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            println!("  failed reconciles: {}", failed.join(", "));
        }
    }

    /// DELETE requests: how many, on how many distinct objects, how many refused.
    fn deletes(&self) -> (usize, usize, usize) {
        let deletes: Vec<&Logged> = self
            .requests
            .iter()
            .filter(|r| r.method == "DELETE")
            .collect();
        let distinct: HashSet<&str> = deletes.iter().map(|r| r.path.as_str()).collect();
        let refused = deletes.iter().filter(|r| r.code >= 400).count();
        (deletes.len(), distinct.len(), refused)
    }

    /// Writes to Events (created or their series patched).
    fn event_writes(&self) -> usize {
        self.requests
            .iter()
            .filter(|r| r.is_write() && r.path.contains("/events"))
            .count()
    }
}

/// Waits until nothing happens for [`QUIET`]: no pass, no reconcile, no API write.
async fn quiesce(running: &Running, log: &RequestLog) -> Outcome<Duration> {
    let started = Instant::now();
    let sample = || {
        (
            metric(&running.metrics, PASSES, ""),
            metric(&running.metrics, RECONCILES, ""),
            log.writes(),
        )
    };
    let mut marks = sample();
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = sample();
        // A pass shows nothing until it ends: quiet must outlast the slowest pass so far.
        let quiet = QUIET.max(slowest_pass_bound(&running.metrics));
        if now != marks {
            marks = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= quiet {
            return Ok(quiet_since - started);
        }
        if started.elapsed() >= QUIET_CAP {
            let recent: Vec<String> = log
                .since(Instant::now() - Duration::from_secs(3))
                .into_iter()
                .filter(Logged::is_write)
                .take(10)
                .map(|r| format!("{} {} -> {}", r.method, r.path, r.code))
                .collect();
            return Err(format!(
                "the operator never went quiet for {quiet:?} within {QUIET_CAP:?}; recent writes: {recent:?}"
            ));
        }
    }
}

/// An upper bound of the slowest resolver pass so far: the `le` of the lowest histogram bucket
/// that holds every pass (at most twice the slowest, the buckets doubling).
fn slowest_pass_bound(metrics: &Metrics) -> Duration {
    let name = "ddm_update_operator_resolve_duration_seconds";
    let total = metric(metrics, &format!("{name}_count"), "");
    let encoded = metrics.encode();
    let bound = encoded
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&format!("{name}_bucket{{le=\""))?;
            let (le, rest) = rest.split_once('"')?;
            let count: f64 = rest.rsplit(' ').next()?.parse().ok()?;
            let le: f64 = le.parse().ok()?;
            (count >= total && le.is_finite()).then_some(le)
        })
        .fold(f64::INFINITY, f64::min);
    Duration::from_secs_f64(if bound.is_finite() { bound } else { 30.0 })
}

/// Peak resident memory of this process (the operator and the bench), from /proc.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

// ---------------------------------------------------------------------------------------------

fn main() {
    // Criterion-style flags (`--bench`) are passed by cargo; nothing to configure.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(why) = runtime.block_on(bench()) {
        eprintln!("kube bench failed: {why}");
        std::process::exit(1);
    }
}

async fn bench() -> Outcome<()> {
    let started = Instant::now();
    let dump = std::env::var_os("DDM_BENCH_DUMP").map(PathBuf::from);
    let (kubeconfig, origin) = if dump.is_some() {
        (None, String::new())
    } else {
        kubeconfig()?
    };

    // -- the fleet ------------------------------------------------------------------------
    let generation_started = Instant::now();
    let catalogs: Vec<Catalog> = SNAPSHOTS
        .iter()
        .map(|d| {
            let path = snapshot_path(d);
            let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
            Catalog::from_slice(&bytes).map_err(|e| format!("{path}: {e}"))
        })
        .collect::<Outcome<_>>()?;
    let newest = catalogs.last().expect("snapshots");
    let known: HashSet<&str> = newest.device_ids().into_iter().map(|(id, _)| id).collect();
    for (_, models, _) in &FLEET {
        for (id, _, _) in *models {
            if !known.contains(id) {
                return Err(format!("{id} is not in the newest snapshot"));
            }
        }
    }
    // Releases only: this fleet runs no security improvement.
    let models = FLEET.iter().flat_map(|(_, models, _)| models.iter());
    let (json, per_platform) = inventory_json(&histories(&catalogs, models, false), DEVICES);
    let checked = inventory::parse(&json)
        .map_err(|p| format!("the generated inventory is refused: {}", p.join("; ")))?;
    if checked.len() != DEVICES {
        return Err(format!("{} devices parsed of {DEVICES}", checked.len()));
    }
    drop(checked);
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let inventory_path = work.path().join("inventory.json");
    std::fs::write(&inventory_path, &json).map_err(|e| e.to_string())?;
    let fleet: Vec<String> = per_platform
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect();
    println!(
        "\n== {DEVICES} devices ({}), inventory {:.1} MiB of JSON, made in {}",
        fleet.join(", "),
        json.len() as f64 / (1024.0 * 1024.0),
        secs(generation_started.elapsed())
    );
    drop(json);
    let groups = groups();
    let policies = policies();
    let targets = targets(newest);
    drop(catalogs);
    if let Some(dir) = dump {
        // `DDM_BENCH_DUMP=DIR`: the same inputs as files, for `ddm-update-operator plan -f
        // DIR/manifests --inventory DIR/inventory.json`; no cluster is touched. Files of 500
        // documents: `plan` refuses a file of more than 1,024 (serde-saphyr's default budget).
        let folder = dir.join("manifests");
        std::fs::create_dir_all(&folder).map_err(|e| e.to_string())?;
        let documents: Vec<Value> = groups
            .iter()
            .map(|g| serde_json::to_value(g).expect("JSON"))
            .chain(policies.iter().cloned())
            .chain(
                targets
                    .iter()
                    .map(|t| serde_json::to_value(t).expect("JSON")),
            )
            .collect();
        for (i, chunk) in documents.chunks(500).enumerate() {
            let mut text = String::new();
            for document in chunk {
                let _ = writeln!(text, "---\n{document}");
            }
            std::fs::write(folder.join(format!("{i:02}.yaml")), text).map_err(|e| e.to_string())?;
        }
        std::fs::copy(&inventory_path, dir.join("inventory.json")).map_err(|e| e.to_string())?;
        println!("wrote {0}/manifests/ and {0}/inventory.json", dir.display());
        return Ok(());
    }
    let client = plain_client(kubeconfig.as_deref(), &origin).await?;

    // -- the namespace ---------------------------------------------------------------------
    install_crds(&client).await?;
    let leftover = remove_namespace(&client).await?;
    if leftover > Duration::from_millis(500) {
        println!(
            "removed a namespace {NAMESPACE} left by an earlier run in {}",
            secs(leftover)
        );
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let object: Namespace = serde_json::from_value(json!({
        "metadata": {"name": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "ddm-update-operator-bench"}}
    }))
    .expect("a namespace");
    namespaces
        .create(&PostParams::default(), &object)
        .await
        .map_err(|e| format!("creating namespace {NAMESPACE}: {e}"))?;

    let result = scenario(&client, groups, policies, targets, inventory_path).await;
    let cleanup = remove_namespace(&client).await;
    match &cleanup {
        Ok(took) => println!("\nnamespace {NAMESPACE} deleted in {}", secs(*took)),
        Err(why) => println!("\n!! cleanup: {why}"),
    }
    drop(work);
    println!("(bench ran {:.0?})", started.elapsed());
    result?;
    cleanup.map(drop)
}

async fn scenario(
    client: &Client,
    groups: Vec<FleetGroup>,
    policies: Vec<Value>,
    targets: Vec<EnforcementTarget>,
    inventory_path: PathBuf,
) -> Outcome<()> {
    let pp = PostParams::default();
    for g in &groups {
        ns_api::<FleetGroup>(client)
            .create(&pp, g)
            .await
            .map_err(|e| format!("creating FleetGroup {}: {e}", g.name_any()))?;
    }
    for p in &policies {
        let typed: UpdatePolicy = serde_json::from_value(p.clone()).map_err(|e| e.to_string())?;
        ns_api::<UpdatePolicy>(client)
            .create(&pp, &typed)
            .await
            .map_err(|e| format!("creating UpdatePolicy {}: {e}", typed.name_any()))?;
    }

    // -- creating 1,000 targets ------------------------------------------------------------
    println!(
        "\n== creating {} FleetGroups, {} UpdatePolicies and {TARGETS} EnforcementTargets in {NAMESPACE}",
        groups.len(),
        policies.len()
    );
    let et_api = ns_api::<EnforcementTarget>(client);
    let create_started = Instant::now();
    futures::stream::iter(targets.iter())
        .map(|t| {
            let et_api = &et_api;
            let pp = &pp;
            async move {
                et_api
                    .create(pp, t)
                    .await
                    .map(drop)
                    .map_err(|e| format!("creating EnforcementTarget {}: {e}", t.name_any()))
            }
        })
        .buffer_unordered(OUR_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let created = create_started.elapsed();

    // -- baselines ---------------------------------------------------------------------------
    let mut lists = Vec::new();
    for _ in 0..5 {
        let at = Instant::now();
        let listed = et_api
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("listing: {e}"))?;
        lists.push(at.elapsed());
        if listed.items.len() != TARGETS {
            return Err(format!("listed {} targets", listed.items.len()));
        }
    }
    lists.sort();
    let list = lists[lists.len() / 2];
    // The status the operator writes on a hand-written target without build pins, in shape and
    // size: four conditions, compliance, counts. Same field manager and the same fields, so
    // the operator's first write replaces it whole. (No `builds`: it has none, and on 1.20 an
    // emptied status map becomes null, which CRDs older than the nullable ones refuse.)
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let status_of = |t: &EnforcementTarget| {
        let condition = |type_: &str, reason: &str| {
            json!({"type": type_, "status": "Unknown", "reason": reason,
                   "message": "written by the bench's status baseline",
                   "observedGeneration": t.metadata.generation, "lastTransitionTime": now})
        };
        json!({
            "apiVersion": api::API_VERSION,
            "kind": "EnforcementTarget",
            "status": {
                "observedGeneration": t.metadata.generation,
                "conditions": [condition("Ready", "Baseline"), condition("Resolved", "Baseline"),
                               condition("Synced", "Baseline"), condition("Compliant", "Baseline")],
                "compliance": "0/0",
                "devices": {"compliant": 0, "pending": 0, "downloading": 0, "prepared": 0,
                            "installing": 0, "failed": 0, "stale": 0, "notApplicable": 0}
            }
        })
    };
    let listed = et_api
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing: {e}"))?
        .items;
    let status_started = Instant::now();
    let apply = PatchParams::apply(STATUS_FIELD_MANAGER).force();
    futures::stream::iter(listed.iter())
        .map(|t| {
            let (et_api, apply, patch) = (&et_api, &apply, status_of(t));
            async move {
                et_api
                    .patch_status(&t.name_any(), apply, &Patch::Apply(&patch))
                    .await
                    .map(drop)
                    .map_err(|e| format!("baseline status of {}: {e}", t.name_any()))
            }
        })
        .buffer_unordered(usize::from(OPERATOR_CONCURRENCY))
        .try_collect::<Vec<()>>()
        .await?;
    let status_floor = status_started.elapsed();
    println!(
        "created {TARGETS} EnforcementTargets ({OUR_CONCURRENCY} at a time): {} = {:.1} ms each",
        secs(created),
        created.as_secs_f64() * 1e3 / TARGETS as f64
    );
    println!(
        "baseline: one list of the {TARGETS} targets (median of 5):                     {:.0} ms",
        list.as_secs_f64() * 1e3
    );
    println!(
        "baseline: the {TARGETS} targets' statuses by server-side apply ({OPERATOR_CONCURRENCY} at a time): {} = {:.1} ms each  (×{:.1} of the list)",
        secs(status_floor),
        status_floor.as_secs_f64() * 1e3 / TARGETS as f64,
        ratio(status_floor, list)
    );
    let per_write = status_floor / TARGETS as u32;

    // -- the operator ------------------------------------------------------------------------
    let caches = Caches::start(client).await?;
    let log = Arc::new(RequestLog::default());
    let scoped = scoped_client(client.clone(), log.clone());
    let work = inventory_path
        .parent()
        .expect("a temporary folder")
        .to_path_buf();
    let config = RunConfig {
        catalog_refresh: Duration::from_secs(24 * 3600),
        inventory: Some(inventory_path),
        ..RunConfig::local(
            work.join("unused-manifests"),
            CatalogSource::File(Path::new(ROOT).join(CATALOG)),
            &work,
        )
    };
    let settings = KubeSettings {
        lease_namespace: NAMESPACE.into(),
        lease_name: "ddm-update-operator".into(),
        identity: format!("bench-kube-{}", std::process::id()),
        concurrency: OPERATOR_CONCURRENCY,
        watch_namespace: None,
        lease_timing: None,
    };
    println!(
        "\n== operator start: resolve {DEVICES} devices, reconcile every object until all are Ready"
    );
    let rss_before = peak_rss_mib().unwrap_or(0.0);
    let start_mark = Instant::now();
    let running = tokio::time::timeout(
        Duration::from_secs(60),
        controller::start(scoped, config, settings),
    )
    .await
    .map_err(|_| "the operator did not start (and lead) within 60 s".to_string())?
    .map_err(|e| format!("the operator does not start: {e}"))?;
    let baselines = Baselines {
        status_floor,
        per_write,
        list,
        rss_before,
    };
    let result = measure(&running, &caches, client, &log, start_mark, baselines).await;
    running.stop();
    caches.stop();
    result
}

/// What a change is measured with.
struct ChangeContext<'a> {
    running: &'a Running,
    caches: &'a Caches,
    client: &'a Client,
    log: &'a RequestLog,
    report: &'a dyn Fn() -> String,
    status_floor: Duration,
    per_write: Duration,
    list: Duration,
}

/// One change's figures.
struct Changed {
    affected: usize,
    synced_current: Duration,
    synced: Duration,
    window: Window,
}

/// Merge-patches [`CHANGED_POLICY`] with `patch`, then times it and its generated targets to
/// `Synced` at their new generation (first the targets it now generates; then with those it
/// no longer generates gone), and counts what happened until the operator is quiet.
async fn change_policy(c: &ChangeContext<'_>, what: &str, patch: Value) -> Outcome<Changed> {
    println!("\n== UpdatePolicy {CHANGED_POLICY}: {what}");
    let names_before = generated_names(c.caches, false);
    let events_before = events_by_reason(c.client).await?;
    let before = Mark::now(&c.running.metrics);
    let changed_at = Instant::now();
    let changed = ns_api::<UpdatePolicy>(c.client)
        .patch(
            CHANGED_POLICY,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| format!("changing {CHANGED_POLICY}: {e}"))?;
    let generation = changed.metadata.generation;
    eventually(
        "the change Synced on the targets it now generates",
        CHANGE_CAP,
        || change_synced(c.caches, generation, false),
        c.report,
    )
    .await?;
    let synced_current = changed_at.elapsed();
    let names_current = generated_names(c.caches, false);
    let (affected, _) = eventually(
        "the change Synced, retired targets gone",
        CHANGE_CAP,
        || change_synced(c.caches, generation, true),
        c.report,
    )
    .await?;
    let synced = changed_at.elapsed();
    let synced_mark = Mark::now(&c.running.metrics);
    let names_after = generated_names(c.caches, true);
    let settled = quiesce(c.running, c.log).await?;
    let after = Mark::now(&c.running.metrics);
    let window = Window::between(&before, &after, c.log);
    let to_synced = Window::between(&before, &synced_mark, c.log);
    println!(
        "policy + the {affected} targets it now generates Synced at their new generation: {}  (×{:.1} of the {TARGETS}-status baseline, ×{:.0} of one list)",
        secs(synced_current),
        ratio(synced_current, c.status_floor),
        ratio(synced_current, c.list)
    );
    println!(
        "… and the targets it no longer generates gone (withdrawn by a pass, finalizer released): {}  (×{:.1}, ×{:.0})",
        secs(synced),
        ratio(synced, c.status_floor),
        ratio(synced, c.list)
    );
    println!(
        "quiet {} later; whole change {}",
        secs(settled),
        secs(synced + settled)
    );
    to_synced.print("change → Synced");
    window.print("change → quiet");
    let writes = window.writes();
    println!(
        "  change → quiet: {:.3} API requests and {:.3} writes per reconcile ({:.3} by kube_writes_total); the writes take {} at the baseline's {:.1} ms each (change ×{:.1} of that floor); {:.4} API writes per device whose set changed",
        window.requests.len() as f64 / window.reconciles.max(1.0),
        writes as f64 / window.reconciles.max(1.0),
        window.kube_writes as f64 / window.reconciles.max(1.0),
        secs(c.per_write * writes as u32),
        c.per_write.as_secs_f64() * 1e3,
        ratio(synced + settled, c.per_write * writes.max(1) as u32),
        writes as f64 / window.backend_changes.max(1.0)
    );
    let kept = names_current.intersection(&names_before).count();
    let created = names_current.difference(&names_before).count();
    let retired = names_before.difference(&names_current).count();
    let (deletes, deleted, refused) = window.deletes();
    println!(
        "  generated targets of {CHANGED_POLICY}: {} before, {} after: {kept} kept, {created} created, {retired} retired; {deletes} DELETE requests on {deleted} distinct targets ({refused} refused), {} writes to Events; {} retired still listed when quiet",
        names_before.len(),
        names_current.len(),
        window.event_writes(),
        names_after.difference(&names_current).count()
    );
    let events_after = events_by_reason(c.client).await?;
    let events: Vec<String> = events_after
        .iter()
        .filter_map(|(reason, (objects, count))| {
            let (o, n) = events_before.get(reason).copied().unwrap_or((0, 0));
            (*count > n)
                .then(|| format!("{reason} {} ({} new Event objects)", count - n, objects - o))
        })
        .collect();
    println!(
        "  events in the window by reason, occurrences: {}",
        events.join(", ")
    );
    Ok(Changed {
        affected,
        synced_current,
        synced,
        window,
    })
}

/// The same-run baselines, and the process's peak memory before the operator started.
struct Baselines {
    status_floor: Duration,
    per_write: Duration,
    list: Duration,
    rss_before: f64,
}

async fn measure(
    running: &Running,
    caches: &Caches,
    client: &Client,
    log: &RequestLog,
    start_mark: Instant,
    baselines: Baselines,
) -> Outcome<()> {
    let Baselines {
        status_floor,
        per_write,
        list,
        rss_before,
    } = baselines;
    let leading = start_mark.elapsed();
    let zero = Mark {
        at: start_mark,
        passes: 0.0,
        reconciles: 0.0,
        by_kind: BTreeMap::new(),
        kube_writes: 0,
        backend_changes: 0.0,
        resolve: (0.0, 0.0),
        failures: BTreeMap::new(),
    };
    let report = || progress(caches, &running.metrics, log);
    let snapshots = running.snapshots.clone();
    let ((), first_pass) = eventually(
        "a first resolver pass",
        CONVERGE_CAP,
        || {
            if snapshots.borrow().pass >= 1 {
                Ok(())
            } else {
                Err("no pass yet".into())
            }
        },
        &report,
    )
    .await?;
    let first = running.snapshots.borrow().clone();
    if first.devices.len() != DEVICES {
        return Err(format!(
            "the first pass saw {} devices, not {DEVICES} (was the inventory refused?)",
            first.devices.len()
        ));
    }
    if let Err(why) = &first.applied {
        return Err(format!("the first pass could not write the backend: {why}"));
    }
    println!(
        "leading in {}; first pass done {} after start: {} devices, {} distinct declarations, {} generated targets, {} warnings",
        secs(leading),
        secs(first_pass),
        first.devices.len(),
        first.plan.declarations.len(),
        first.plan.generated.len(),
        first.plan.warnings.len()
    );
    drop(first);
    let converged = eventually(
        "every object Ready at its generation",
        CONVERGE_CAP,
        || all_ready(caches),
        &report,
    )
    .await;
    let (counted, _) = match converged {
        Ok(done) => done,
        Err(why) => {
            Window::between(&zero, &Mark::now(&running.metrics), log).print("start → gave up");
            return Err(why);
        }
    };
    let ready = start_mark.elapsed();
    let ready_mark = Mark::now(&running.metrics);
    let (g, p, t, generated) = counted;
    let objects = g + p + t + generated;
    println!(
        "every object Ready/Synced at its generation {} after start: {g} FleetGroups, {p} UpdatePolicies, {t} hand-written + {generated} generated EnforcementTargets  (×{:.1} of the status baseline)",
        secs(ready),
        ratio(ready, status_floor)
    );
    let settled = quiesce(running, log).await?;
    let quiet_mark = Mark::now(&running.metrics);
    println!(
        "quiet (no pass, reconcile or write for {}) {} after that",
        secs(QUIET),
        secs(settled)
    );
    let to_ready = Window::between(&zero, &ready_mark, log);
    to_ready.print("start → all Ready");
    let after_ready = Window::between(&ready_mark, &quiet_mark, log);
    after_ready.print("all Ready → quiet");
    let startup = Window::between(&zero, &quiet_mark, log);
    println!(
        "  start → quiet: {:.2} API requests and {:.2} writes per reconcile; {:.2} writes per object",
        startup.requests.len() as f64 / startup.reconciles.max(1.0),
        startup.writes() as f64 / startup.reconciles.max(1.0),
        startup.writes() as f64 / objects as f64
    );

    // -- the changes ---------------------------------------------------------------------------
    let policies = ns_api::<UpdatePolicy>(client);
    let context = ChangeContext {
        running,
        caches,
        client,
        log,
        report: &report,
        status_floor,
        per_write,
        list,
    };
    let deadline = change_policy(
        &context,
        "deadline localTime 18:00 → 17:30 (every generated target re-applied with a new deadline)",
        json!({"spec": {"deadline": {"localTime": LOCAL_TIME_AFTER}}}),
    )
    .await?;
    let strategy = change_policy(
        &context,
        "strategy latest-minor → latest (devices on 18.x move to 26: their targets retire)",
        json!({"spec": {"target": {"strategy": "latest"}}}),
    )
    .await?;

    // -- steady state ----------------------------------------------------------------------------
    println!(
        "\n== steady state: an annotation on every UpdatePolicy (a watch event, so a pass and a reconcile of everything), nothing else changed"
    );
    let before = Mark::now(&running.metrics);
    let touched_at = jiff::Timestamp::now();
    let touch = json!({"metadata": {"annotations": {"bench.example.com/touched": "yes"}}});
    for p in policies
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?
    {
        policies
            .patch(
                &p.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&touch),
            )
            .await
            .map_err(|e| format!("annotating {}: {e}", p.name_any()))?;
    }
    // A pass that started after the touch (`Snapshot::now` is taken as a pass starts); then
    // quiet, which outlasts the slowest pass, so that pass's reconcile round has run too.
    let snapshots = running.snapshots.clone();
    eventually(
        "a pass started after the touch",
        CHANGE_CAP,
        || {
            let snapshot = snapshots.borrow().clone();
            if snapshot.now > touched_at {
                Ok(())
            } else {
                Err(format!("pass {} started {}", snapshot.pass, snapshot.now))
            }
        },
        &report,
    )
    .await?;
    let settled = quiesce(running, log).await?;
    let after = Mark::now(&running.metrics);
    let steady = Window::between(&before, &after, log);
    steady.print("touch → quiet");
    let applied = running.snapshots.borrow().applied.clone();
    println!(
        "  quiet after {}; writes: {} requests, {} by kube_writes_total (delta must be 0); backend: {} sets changed, last pass applied {applied:?}",
        secs(settled),
        steady.writes(),
        steady.kube_writes,
        steady.backend_changes
    );
    let (reconcile_mean, _) = mean(
        &running.metrics,
        "ddm_update_operator_reconcile_duration_seconds",
        "",
    );
    let (pass_mean, passes) = mean(
        &running.metrics,
        "ddm_update_operator_resolve_duration_seconds",
        "",
    );
    println!(
        "\nover the run: {passes} passes, mean {:.2} s each; mean reconcile {:.1} ms; peak RSS of the process {:.0} MiB ({rss_before:.0} MiB before the operator started)",
        pass_mean,
        reconcile_mean * 1e3,
        peak_rss_mib().unwrap_or(0.0)
    );

    // -- summary -----------------------------------------------------------------------------
    println!(
        "\n== summary ({TARGETS} hand-written EnforcementTargets, {DEVICES} devices, Kubernetes 1.20 on loopback)"
    );
    println!(
        "all {objects} objects Ready/Synced after the operator started: {}  (×{:.1} of writing {TARGETS} statuses directly, {})",
        secs(ready),
        ratio(ready, status_floor),
        secs(status_floor)
    );
    let mut ok_bound = true;
    for (what, c) in [("localTime", &deadline), ("strategy", &strategy)] {
        println!(
            "changed policy ({what}) → it and the {} targets it generates Synced: {}, targets it no longer generates gone: {}  (×{:.1} and ×{:.1} of the status baseline)",
            c.affected,
            secs(c.synced_current),
            secs(c.synced),
            ratio(c.synced_current, status_floor),
            ratio(c.synced, status_floor)
        );
        println!(
            "  API requests per reconcile until quiet: {:.3} ({} requests / {} reconciles); writes per reconcile {:.3} ({} by kube_writes_total)",
            c.window.requests.len() as f64 / c.window.reconciles.max(1.0),
            c.window.requests.len(),
            c.window.reconciles,
            c.window.writes() as f64 / c.window.reconciles.max(1.0),
            c.window.kube_writes
        );
        // Every write but an Event names one object: a status, a finalizer, a generated
        // target. A reconcile making O(devices) calls would show as writes growing with the
        // devices whose sets changed (tens of thousands here), far above the objects.
        let (most, on) = c.window.most_writes_on_one_object();
        let (deletes, deleted, refused) = c.window.deletes();
        let bounded = c.window.writes() <= 3 * objects;
        ok_bound &= bounded;
        println!(
            "  no reconcile does O(devices) API calls: {} — {} writes ({} to Events) for {} devices whose sets changed and {objects} objects; at most {most} writes to one object ({on}); {deletes} DELETEs on {deleted} retired targets ({refused} refused)",
            if bounded { "holds" } else { "VIOLATED" },
            c.window.writes(),
            c.window.event_writes(),
            c.window.backend_changes
        );
    }
    println!(
        "steady state: {} writes over {} passes and {} reconciles",
        steady.writes() as u64 + steady.kube_writes,
        steady.passes,
        steady.reconciles
    );
    let ok_steady = steady.writes() == 0
        && steady.kube_writes == 0
        && steady.passes >= 1.0
        && steady.reconciles >= objects as f64;
    if !ok_bound {
        return Err("a window's writes grew beyond the objects' count".into());
    }
    if !ok_steady {
        return Err(format!(
            "nothing changed, yet {} write requests ({} counted by the operator) over {} passes and {} reconciles of {objects} objects",
            steady.writes(),
            steady.kube_writes,
            steady.passes,
            steady.reconciles
        ));
    }
    Ok(())
}
