//! Kubernetes mode end to end, against a real kube-apiserver (1.20, with kube-controller-manager
//! for garbage collection and namespace deletion; see `tests/k8s/apiserver.sh`).
//!
//! # Where the API server comes from
//!
//! `KUBECONFIG`, when set (`.ci/run` starts a server and sets it). Otherwise the first test that
//! needs one starts `tests/k8s/apiserver.sh` once for the whole test binary on ports 36443/32379
//! (kubeconfig `target/kubeconfig-tests`) and leaves it running for the next run; stop it with
//! `K8S_APISERVER_PORT=36443 K8S_ETCD_PORT=32379 bash tests/k8s/apiserver.sh stop`. A missing
//! server is never a skip: the tests fail and say why.
//!
//! # Isolation
//!
//! Every test has its own namespace, its own operator (started in-process with
//! `controller::start`, its Lease in that namespace), its own SQLite database and its own
//! simulated devices. The operator watches `updates.ddm.dev` objects in *all* namespaces and
//! has no setting to narrow that, so two operators on one cluster would reconcile each other's
//! objects (and the examples a person applied to `it-fleet` by hand). The operator is therefore
//! handed a client that goes through [`scoped_client`]: an in-process HTTP hop that rewrites the
//! cluster-wide list/watch of the three kinds to the test's namespace (what a namespace-scoped
//! deployment would see) and logs every request, which gives the tests an independent count of
//! the operator's API traffic next to `Metrics::kube_writes_total()`.
//!
//! # What the tests pin
//!
//! * `examples_become_ready_with_generated_targets_kubectl_lists`: `examples/gitops` applied by
//!   server-side apply; every object Ready=True at its generation with reasons and transition
//!   times, generated EnforcementTargets owned by their policy and labelled with it, listed by
//!   the real `kubectl get et` with the printer columns; FleetGroup member counts.
//! * `devices_get_declarations_and_statuses_follow_them_to_compliance`: simulated devices get
//!   exactly the set the backend assigned them, enforcement only below target; round by round
//!   the UpdatePolicy counts equal what the devices report (pending → downloading → prepared →
//!   installing → compliant), Compliant turns True, the enforcement is withdrawn at target;
//!   every generated target stays, counting as compliant the devices it started with.
//! * `deleting_a_policy_withdraws_its_declarations_before_it_goes`: the finalizer holds the
//!   object until a pass without it is written to the backend (checked while a second finalizer
//!   of the test still holds the object), other devices untouched, a `Withdrawn` event, the
//!   generated targets garbage-collected.
//! * `nothing_changed_writes_nothing_and_a_restart_changes_nothing`: a changed policy reaches
//!   every affected target (timed); then touches that change nothing (annotations, full device
//!   reports) make passes and reconciles but no API write and no backend write; a restart on
//!   the same database writes nothing either.
//! * `invalid_specs_are_reported_without_touching_the_rest`: a policy naming a missing
//!   FleetGroup (`FleetGroupNotFound`) and one with an unknown time zone (`InvalidSpec`) get
//!   Ready=False with a message; nothing else is rewritten, no device set changes.
//! * `generated_targets_count_the_devices_they_take_to_compliance`: a generated target with two
//!   devices shows `1/2` once one of them runs its version and `2/2` (Compliant) once both do.
//!   A restart on the same database shows the same counts (the operator remembers which
//!   devices each policy took where) and writes nothing.
//! * `deleting_a_policy_with_orphan_leaves_its_devices_their_declarations`: a policy with
//!   `deletionPolicy: Orphan` goes at once with an `Orphaned` event; its devices keep every
//!   declaration they held (as served over the DDM endpoints) while they report, across a
//!   restart, and the status JSON counts them; a policy selecting them again resolves them
//!   normally.
//! * `events_say_what_each_change_did`: a `Resolved` event per generated target, and one that
//!   names a changed deadline.
//! * `a_restart_with_a_slow_target_watch_changes_nothing`: the restart of the no-op test again,
//!   with the operator's later EnforcementTarget lists answered 2 s late (the scoped client
//!   delays them), as a big namespace or a busy server would.
//!
//! The examples' policies have a `minimumLeadTime`, so their deadlines follow the clock: a test
//! running across the moment `now + lead time` passes a policy's local time (three such
//! moments a day) sees its targets move. The tests take seconds, so that is rare but possible.
//!
//! Figures (timings, requests per reconcile) are printed to stderr; see them with
//! `cargo test --test it kubernetes -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::IntoResponse;
use ddm_update_operator::api::condition_types::{COMPLIANT, READY, RESOLVED, SYNCED};
use ddm_update_operator::api::{
    self, EnforcementTarget, EnrollmentGateStatus, FINALIZER, FleetGroup, POLICY_LABEL,
    UpdatePolicy,
};
use ddm_update_operator::catalog::{OsVersion, Platform};
use ddm_update_operator::controller::resolver::Snapshot;
use ddm_update_operator::controller::{self, KubeSettings, Running};
use ddm_update_operator::metrics::Metrics;
use ddm_update_operator::operator::{CatalogSource, RunConfig};
use ddm_update_operator::sim::{
    DeclarationState, InstallState, ServerConfig, SimDevice, SyncOutcome, http_client,
};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::support::devices::{check_in_all, fleet_of, held, newest_catalog_path};
use crate::support::process::metric_sum;
use crate::support::{ROOT, examples, yaml_files};

const ENFORCEMENT_TYPE: &str = "com.apple.configuration.softwareupdate.enforcement.specific";
const SETTINGS_TYPE: &str = "com.apple.configuration.softwareupdate.settings";
/// The field manager the tests apply manifests with (Flux would be `kustomize-controller`).
const GITOPS_MANAGER: &str = "it-gitops";
const LEASE_NAME: &str = "ddm-update-operator";
/// Ports of the API server the tests start when `KUBECONFIG` is not set.
const OWN_APISERVER_PORT: &str = "36443";
const OWN_ETCD_PORT: &str = "32379";
const PLURALS: [&str; 3] = ["fleetgroups", "updatepolicies", "enforcementtargets"];
const POLL: Duration = Duration::from_millis(200);
/// Cap on one wait for the operator to converge.
const CONVERGE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The API server
// ---------------------------------------------------------------------------------------------

/// How to reach the API server: the caller's `KUBECONFIG`, or the file of the server started
/// here.
pub(crate) struct Access {
    /// `None`: `KUBECONFIG` from the environment.
    pub(crate) kubeconfig: Option<PathBuf>,
    origin: String,
}

pub(crate) fn access() -> &'static Access {
    static ACCESS: OnceLock<Result<Access, String>> = OnceLock::new();
    match ACCESS.get_or_init(find_or_start_apiserver) {
        Ok(access) => access,
        Err(why) => panic!("no Kubernetes API server for the Kubernetes-mode tests: {why}"),
    }
}

fn find_or_start_apiserver() -> Result<Access, String> {
    if let Some(value) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        return Ok(Access {
            kubeconfig: None,
            origin: format!("KUBECONFIG={}", value.to_string_lossy()),
        });
    }
    let kubeconfig = Path::new(ROOT).join("target/kubeconfig-tests");
    let started = Instant::now();
    let output = Command::new("bash")
        .arg("tests/k8s/apiserver.sh")
        .arg("start")
        .arg(&kubeconfig)
        .current_dir(ROOT)
        .env("K8S_APISERVER_PORT", OWN_APISERVER_PORT)
        .env("K8S_ETCD_PORT", OWN_ETCD_PORT)
        .output()
        .map_err(|e| {
            format!("KUBECONFIG is not set and bash tests/k8s/apiserver.sh cannot run: {e}")
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        return Err(format!(
            "KUBECONFIG is not set and `K8S_APISERVER_PORT={OWN_APISERVER_PORT} \
             K8S_ETCD_PORT={OWN_ETCD_PORT} bash tests/k8s/apiserver.sh start {}` failed ({}):\n{}",
            kubeconfig.display(),
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    eprintln!(
        "[kubernetes] started an API server on port {OWN_APISERVER_PORT} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(Access {
        origin: format!("{} (started by the tests)", kubeconfig.display()),
        kubeconfig: Some(kubeconfig),
    })
}

/// A client straight to the API server (made per test: a client belongs to its runtime).
pub(crate) async fn plain_client() -> Client {
    let access = access();
    let kubeconfig = match &access.kubeconfig {
        Some(path) => Kubeconfig::read_from(path),
        None => Kubeconfig::read(),
    }
    .unwrap_or_else(|e| panic!("reading the kubeconfig ({}): {e}", access.origin));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("the kubeconfig ({}) is unusable: {e}", access.origin));
    let client =
        Client::try_from(config).unwrap_or_else(|e| panic!("a client for {}: {e}", access.origin));
    if let Err(error) = client.apiserver_version().await {
        panic!(
            "the API server of {} does not answer: {error}",
            access.origin
        );
    }
    client
}

/// The bearer token of the kubeconfig's current user (the tests' admin, in `system:masters`):
/// what a person presents to the operator's `/api/v1` in Kubernetes mode.
fn kubeconfig_token() -> String {
    let path = match &access().kubeconfig {
        Some(path) => path.clone(),
        None => std::env::var_os("KUBECONFIG")
            .and_then(|v| std::env::split_paths(&v).next())
            .expect("KUBECONFIG names a file"),
    };
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let config: Value = serde_saphyr::from_str(&text).expect("the kubeconfig is YAML");
    let named = |list: &str, name: &Value| -> Value {
        config[list]
            .as_array()
            .and_then(|items| items.iter().find(|item| &item["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    let context = named("contexts", &config["current-context"]);
    let user = named("users", &context["context"]["user"]);
    user["user"]["token"]
        .as_str()
        .unwrap_or_else(|| {
            panic!(
                "the kubeconfig's current user has no token: {}",
                path.display()
            )
        })
        .to_string()
}

/// `kubectl` against the same server; its standard output.
fn kubectl(args: &[&str]) -> String {
    let output = kubectl_command()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("kubectl {args:?} cannot run: {e}"));
    assert!(
        output.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kubectl prints UTF-8")
}

/// The CRDs without CEL rules (1.20 refuses them on apply), created when absent, Established.
pub(crate) async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let files = api::crd_files(false).expect("the CRDs render");
    for (file, text) in files {
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let name = crd.name_any();
        match api.create(&PostParams::default(), &crd).await {
            Ok(_) => eprintln!("[kubernetes] created CRD {name}"),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => panic!("creating CRD {name}: {error}"),
        }
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .unwrap_or_else(|_| panic!("CRD {name} not Established within 30 s"))
            .unwrap_or_else(|e| panic!("waiting for CRD {name}: {e}"));
    }
}

// ---------------------------------------------------------------------------------------------
// The namespace-scoped client the operator gets
// ---------------------------------------------------------------------------------------------

/// One request the operator sent.
#[derive(Debug, Clone)]
struct Logged {
    at: Instant,
    method: String,
    path: String,
    watch: bool,
    code: u16,
    /// The body of a write (truncated), for failure messages.
    body: String,
}

impl Logged {
    /// A write other than leader election (which renews on a timer) and the admin API's token
    /// checks (TokenReview and SubjectAccessReview are POSTs that change nothing).
    fn is_write(&self) -> bool {
        self.method != "GET"
            && !self.path.contains("/leases")
            && !self.path.ends_with("/tokenreviews")
            && !self.path.ends_with("/subjectaccessreviews")
    }

    /// A request other than a watch or a Lease request.
    fn counts(&self) -> bool {
        !self.watch && !self.path.contains("/leases")
    }
}

#[derive(Default)]
struct RequestLog {
    entries: Mutex<Vec<Logged>>,
    /// A fault a test turns on: every Lease request is answered 503, as when the API server is
    /// unreachable for renewals while the rest still works.
    leases_unreachable: std::sync::atomic::AtomicBool,
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

    fn writes_since(&self, at: Instant) -> Vec<String> {
        self.since(at)
            .into_iter()
            .filter(Logged::is_write)
            .map(|e| {
                let body: String = e.body.chars().take(300).collect();
                format!("{} {} -> {}: {body}", e.method, e.path, e.code)
            })
            .collect()
    }

    /// How many writes (other than the Lease's) were sent so far.
    fn write_count(&self) -> usize {
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
    namespace: String,
    log: Arc<RequestLog>,
    slow: Option<Arc<SlowLists>>,
}

/// Full lists of one resource, after the first, answered late: a watch that takes longer to
/// start than another one of the same resource (as with many objects and a busy server).
struct SlowLists {
    path_suffix: &'static str,
    delay: Duration,
    seen: std::sync::atomic::AtomicUsize,
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
        let scoped = format!(
            "/apis/updates.ddm.dev/v1alpha1/namespaces/{}/{plural}",
            scope.namespace
        );
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
    let method = parts.method.to_string();
    let path = parts.uri.path().to_string();
    if path.contains("/leases")
        && scope
            .log
            .leases_unreachable
            .load(std::sync::atomic::Ordering::SeqCst)
    {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "cut by the test",
        )
            .into_response();
    }
    let bytes = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(bytes) => bytes,
        Err(error) => {
            return (axum::http::StatusCode::BAD_REQUEST, error.to_string()).into_response();
        }
    };
    let logged_body = if method == "GET" {
        String::new()
    } else {
        String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).to_string()
    };
    if let Some(slow) = &scope.slow
        && method == "GET"
        && !watch
        && path.ends_with(slow.path_suffix)
        && !parts.uri.query().is_some_and(|q| q.contains("limit=1"))
        && slow.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0
    {
        tokio::time::sleep(slow.delay).await;
    }
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
        watch,
        code,
        body: logged_body,
    });
    response
}

/// A client whose cluster-wide list/watch of the three kinds sees only `namespace`, logging
/// every request into `log`.
fn scoped_client(
    inner: Client,
    namespace: &str,
    log: Arc<RequestLog>,
    slow: Option<Arc<SlowLists>>,
) -> Client {
    let router = axum::Router::new().fallback(forward).with_state(Scope {
        inner,
        namespace: namespace.to_string(),
        log,
        slow,
    });
    Client::new(router, namespace)
}

// ---------------------------------------------------------------------------------------------
// One test's world: namespace, devices, operator
// ---------------------------------------------------------------------------------------------

/// `kubectl` set up for the same server, not yet run.
fn kubectl_command() -> Command {
    let mut command = Command::new("kubectl");
    if let Some(path) = &access().kubeconfig {
        command.env("KUBECONFIG", path);
    }
    command
}

/// Deletes the namespace when a test fails half-way (after its [`Operator`] was dropped, which
/// stops it): the namespace without waiting, then the finalizers no operator will remove now.
/// Disarmed by [`Env::finish`], which cleans up through the operator.
struct NamespaceGuard {
    namespace: String,
    armed: bool,
}

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let ns = self.namespace.as_str();
        let _ = kubectl_command()
            .args([
                "delete",
                "namespace",
                ns,
                "--wait=false",
                "--ignore-not-found",
            ])
            .output();
        let kinds = "fleetgroups.updates.ddm.dev,updatepolicies.updates.ddm.dev,enforcementtargets.updates.ddm.dev";
        let names = kubectl_command()
            .args(["get", kinds, "-n", ns, "-o", "name"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        for name in names.lines().filter(|l| !l.trim().is_empty()) {
            let unfinalize = r#"{"metadata":{"finalizers":null}}"#;
            let _ = kubectl_command()
                .args(["patch", name, "-n", ns, "--type=merge", "-p", unfinalize])
                .output();
        }
    }
}

/// Creates a namespace with the label the tests' namespaces carry; the guard deletes it again
/// unless disarmed.
async fn create_namespace(client: &Client, namespace: &str) -> NamespaceGuard {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let object: Namespace = serde_json::from_value(json!({
        "metadata": {"name": namespace, "labels": {"app.kubernetes.io/part-of": "ddm-update-operator-tests"}}
    }))
    .expect("a namespace");
    namespaces
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {namespace}: {e}"));
    NamespaceGuard {
        namespace: namespace.to_string(),
        armed: true,
    }
}

/// A running operator, stopped when dropped: a failing test stops it before its namespace is
/// cleaned up (a live operator would put its finalizers back).
struct Operator(Option<Running>);

impl std::ops::Deref for Operator {
    type Target = Running;

    fn deref(&self) -> &Running {
        self.0.as_ref().expect("a running operator")
    }
}

impl Operator {
    fn stop(mut self) {
        if let Some(running) = self.0.take() {
            running.stop();
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(running) = self.0.take() {
            running.stop();
        }
    }
}

struct Env {
    namespace: String,
    /// Straight to the API server, for the test's own reads and writes.
    client: Client,
    /// What the operator uses.
    scoped: Client,
    log: Arc<RequestLog>,
    config: RunConfig,
    _work: tempfile::TempDir,
    guard: NamespaceGuard,
    /// For the test's duration, printed by [`Env::finish`].
    started: Instant,
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{:06x}",
        (nanos as u64 ^ u64::from(std::process::id())) & 0xff_ffff
    )
}

impl Env {
    /// A fresh namespace, the CRDs, and an operator configuration whose inventory lists
    /// `devices` (labelled `fleet: corporate`; those in `vips` also `role: vip`).
    async fn new(tag: &str, devices: &[SimDevice], vips: &[&str]) -> Env {
        let started = Instant::now();
        let client = plain_client().await;
        install_crds(&client).await;
        let namespace = format!("ddm-it-{tag}-{}", unique_suffix());
        let guard = create_namespace(&client, &namespace).await;
        let work = tempfile::tempdir().expect("tempdir");
        let inventory = work.path().join("inventory.json");
        std::fs::write(
            &inventory,
            serde_json::to_vec_pretty(&inventory_of(devices, vips)).expect("JSON"),
        )
        .expect("write the inventory");
        let manifests = work.path().join("unused-manifests");
        std::fs::create_dir_all(&manifests).expect("a folder");
        let config = RunConfig {
            inventory: Some(inventory),
            ..RunConfig::local(
                manifests,
                CatalogSource::File(newest_catalog_path()),
                work.path(),
            )
        };
        let log = Arc::new(RequestLog::default());
        let scoped = scoped_client(client.clone(), &namespace, log.clone(), None);
        Env {
            namespace,
            client,
            scoped,
            log,
            config,
            _work: work,
            guard,
            started,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// `controller::start` with the Lease in the test namespace.
    async fn start(&self, identity: &str) -> Operator {
        self.start_with(self.scoped.clone(), identity).await
    }

    /// The same, with EnforcementTarget lists after the first one answered `delay` late.
    async fn start_with_slow_target_lists(&self, identity: &str, delay: Duration) -> Operator {
        let slow = SlowLists {
            path_suffix: "/enforcementtargets",
            delay,
            seen: Default::default(),
        };
        let client = scoped_client(
            self.client.clone(),
            &self.namespace,
            self.log.clone(),
            Some(Arc::new(slow)),
        );
        self.start_with(client, identity).await
    }

    async fn start_with(&self, client: Client, identity: &str) -> Operator {
        let settings = KubeSettings {
            lease_namespace: self.namespace.clone(),
            lease_name: LEASE_NAME.into(),
            identity: format!("{identity}-{}", self.namespace),
            concurrency: 4,
            watch_namespace: None,
            lease_timing: None,
        };
        let started = Instant::now();
        let running = tokio::time::timeout(
            Duration::from_secs(40),
            controller::start(client, self.config.clone(), settings),
        )
        .await
        .expect("the operator starts (and leads) within 40 s")
        .unwrap_or_else(|e| panic!("the operator does not start: {e}"));
        eprintln!(
            "[{}] operator {identity} leading and running in {:.2} s",
            self.namespace,
            started.elapsed().as_secs_f64()
        );
        Operator(Some(running))
    }

    /// `examples/gitops` applied by server-side apply into this namespace; (kind, name) of each.
    async fn apply_examples(&self) -> Vec<(String, String)> {
        let mut applied = Vec::new();
        for (path, mut object) in example_objects() {
            object["metadata"]["namespace"] = self.namespace.clone().into();
            let kind = object["kind"].as_str().unwrap_or_default().to_string();
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match kind.as_str() {
                "FleetGroup" => self.apply::<FleetGroup>(&object).await,
                "UpdatePolicy" => self.apply::<UpdatePolicy>(&object).await,
                "EnforcementTarget" => self.apply::<EnforcementTarget>(&object).await,
                other => panic!("{}: unexpected kind {other}", path.display()),
            }
            applied.push((kind, name));
        }
        applied
    }

    async fn apply<K>(&self, object: &Value)
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let name = object["metadata"]["name"].as_str().expect("a name");
        self.api::<K>()
            .patch(
                name,
                &PatchParams::apply(GITOPS_MANAGER),
                &Patch::Apply(object),
            )
            .await
            .unwrap_or_else(|e| panic!("applying {} {name}: {e}", K::kind(&())));
    }

    async fn list<K>(&self) -> Vec<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        self.api::<K>()
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("list {}s: {e}", K::kind(&())))
            .items
    }

    async fn policies(&self) -> Vec<UpdatePolicy> {
        self.list().await
    }

    async fn groups(&self) -> Vec<FleetGroup> {
        self.list().await
    }

    async fn targets(&self) -> Vec<EnforcementTarget> {
        self.list().await
    }

    /// The names of the EnforcementTargets `policy` generated.
    async fn generated_target_names(&self, policy: &str) -> BTreeSet<String> {
        self.targets()
            .await
            .iter()
            .filter(|t| generated_by(t, policy))
            .map(ResourceExt::name_any)
            .collect()
    }

    /// Merge-patches every object of kind `K` with `patch`.
    async fn patch_all<K>(&self, patch: &Value)
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        for object in self.list::<K>().await {
            self.api::<K>()
                .patch(
                    &object.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
                .expect("annotate");
        }
    }

    /// The example UpdatePolicy `name` as `examples/gitops` has it, in this namespace: for a
    /// test to change and apply.
    fn example_policy(&self, name: &str) -> Value {
        let mut policy = example_objects()
            .into_iter()
            .map(|(_, v)| v)
            .find(|v| v["kind"] == "UpdatePolicy" && v["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the {name} policy"));
        policy["metadata"]["namespace"] = self.namespace.clone().into();
        policy
    }

    /// The first event with `reason` about the object `regarding`, waiting for it.
    async fn event(&self, reason: &str, regarding: &str) -> k8s_openapi::api::events::v1::Event {
        let events: Api<k8s_openapi::api::events::v1::Event> = self.api();
        eventually(&format!("a {reason} event"), CONVERGE, || async {
            let list = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding)
                })
                .ok_or_else(|| "none yet".to_string())
        })
        .await
    }

    /// Waits until the UpdatePolicy `name` no longer exists.
    async fn policy_gone(&self, name: &str) {
        let policies = self.api::<UpdatePolicy>();
        eventually("the policy gone", CONVERGE, || async {
            match policies.get_opt(name).await {
                Ok(None) => Ok(()),
                Ok(Some(p)) => Err(format!("still there: {:?}", p.finalizers())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    }

    async fn policy(&self, name: &str) -> UpdatePolicy {
        self.api::<UpdatePolicy>()
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get UpdatePolicy {name}: {e}"))
    }

    /// Deletes every object while the operator still runs (it removes its finalizers), waits
    /// until they are gone, stops the operator and deletes the namespace.
    async fn finish(mut self, running: Operator) {
        let started = Instant::now();
        let dp = DeleteParams::default();
        let lp = ListParams::default();
        let _ = self.api::<UpdatePolicy>().delete_collection(&dp, &lp).await;
        let _ = self
            .api::<EnforcementTarget>()
            .delete_collection(&dp, &lp)
            .await;
        let _ = self.api::<FleetGroup>().delete_collection(&dp, &lp).await;
        eventually("every object deleted", CONVERGE, || async {
            let left = self.policies().await.len()
                + self.targets().await.len()
                + self.groups().await.len();
            if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} objects left"))
            }
        })
        .await;
        running.stop();
        self.guard.armed = false;
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .delete(&self.namespace, &DeleteParams::default())
            .await;
        eprintln!(
            "[{}] cleaned up in {:.2} s; the test took {:.1} s",
            self.namespace,
            started.elapsed().as_secs_f64(),
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// Every object under `examples/gitops`, sorted by path.
fn example_objects() -> Vec<(PathBuf, Value)> {
    yaml_files(&examples().join("gitops"))
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("an example");
            let value: Value =
                serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, value)
        })
        .collect()
}

/// Polls `probe` every [`POLL`] until it answers `Ok`, failing with its last `Err` after `cap`.
async fn eventually<T, F, Fut>(what: &str, cap: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(why) => why,
        };
        assert!(
            started.elapsed() < cap,
            "{what}: not within {cap:?}; last seen: {last}"
        );
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Status helpers
// ---------------------------------------------------------------------------------------------

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// `type_` has `status` at this generation.
fn has(conditions: &[Condition], type_: &str, status: &str, generation: Option<i64>) -> bool {
    condition(conditions, type_)
        .is_some_and(|c| c.status == status && c.observed_generation == generation)
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

fn policy_conditions(p: &UpdatePolicy) -> &[Condition] {
    p.status.as_ref().map_or(&[], |s| s.conditions.as_slice())
}

fn group_conditions(g: &FleetGroup) -> &[Condition] {
    g.status.as_ref().map_or(&[], |s| s.conditions.as_slice())
}

fn target_conditions(t: &EnforcementTarget) -> &[Condition] {
    t.status.as_ref().map_or(&[], |s| s.conditions.as_slice())
}

/// Every condition carries a reason, a message and a transition time no later than now.
fn assert_well_formed(what: &str, conditions: &[Condition]) {
    assert!(!conditions.is_empty(), "{what}: no conditions");
    let now = jiff::Timestamp::now();
    for c in conditions {
        assert!(!c.reason.is_empty(), "{what}: {} has no reason", c.type_);
        assert!(
            c.reason.chars().all(|ch| ch.is_ascii_alphanumeric())
                && c.reason
                    .chars()
                    .next()
                    .is_some_and(|ch| ch.is_ascii_uppercase()),
            "{what}: {} reason {:?} is not CamelCase",
            c.type_,
            c.reason
        );
        assert!(!c.message.is_empty(), "{what}: {} has no message", c.type_);
        let t = c.last_transition_time.0;
        assert!(
            t > jiff::Timestamp::UNIX_EPOCH && t <= now,
            "{what}: {} lastTransitionTime {t} is not a past time",
            c.type_
        );
    }
}

/// Everything in the namespace is Ready=True at its generation; every policy's generated
/// targets exist. Returns the policies, groups and targets seen.
async fn all_ready(
    env: &Env,
) -> Result<(Vec<UpdatePolicy>, Vec<FleetGroup>, Vec<EnforcementTarget>), String> {
    let policies = env.policies().await;
    let groups = env.groups().await;
    let targets = env.targets().await;
    for p in &policies {
        let status = p
            .status
            .as_ref()
            .ok_or(format!("{}: no status", p.name_any()))?;
        if status.observed_generation != p.metadata.generation
            || !has(&status.conditions, READY, "True", p.metadata.generation)
        {
            return Err(format!(
                "UpdatePolicy {} gen {:?}: {}",
                p.name_any(),
                p.metadata.generation,
                describe(&status.conditions)
            ));
        }
        let generated = targets
            .iter()
            .filter(|t| t.labels().get(POLICY_LABEL) == Some(&p.name_any()))
            .count();
        if generated != status.targets as usize {
            return Err(format!(
                "UpdatePolicy {} says {} targets, {generated} exist",
                p.name_any(),
                status.targets
            ));
        }
    }
    for g in &groups {
        if !has(group_conditions(g), READY, "True", g.metadata.generation) {
            return Err(format!(
                "FleetGroup {}: {}",
                g.name_any(),
                describe(group_conditions(g))
            ));
        }
    }
    for t in &targets {
        let observed = t.status.as_ref().and_then(|s| s.observed_generation);
        if observed != t.metadata.generation
            || !has(target_conditions(t), READY, "True", t.metadata.generation)
        {
            return Err(format!(
                "EnforcementTarget {} gen {:?}: {}",
                t.name_any(),
                t.metadata.generation,
                describe(target_conditions(t))
            ));
        }
    }
    Ok((policies, groups, targets))
}

fn metric(metrics: &Metrics, name: &str) -> f64 {
    metric_sum(&metrics.encode(), name)
}

const BACKEND_CHANGES: &str = "ddm_update_operator_backend_assignment_changes_total";
const RECONCILES: &str = "ddm_update_operator_reconciles_total";
const PASSES: &str = "ddm_update_operator_resolve_passes_total";

/// Waits until nothing happens for `quiet`: no resolver pass, no reconcile, no API write.
async fn quiesce(env: &Env, running: &Running, quiet: Duration, cap: Duration) -> Duration {
    let started = Instant::now();
    let activity = || {
        (
            metric(&running.metrics, PASSES),
            metric(&running.metrics, RECONCILES),
            env.log.write_count(),
        )
    };
    let mut marks = activity();
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(POLL).await;
        let now = activity();
        if now != marks {
            marks = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= quiet {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < cap,
            "the operator never went quiet for {quiet:?} within {cap:?}; recent writes: {:?}",
            env.log
                .writes_since(Instant::now() - Duration::from_secs(3))
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------------------------

/// Ten devices: four iPhones, two iPads, three Macs, an Apple TV; the same every run.
fn fleet() -> Vec<SimDevice> {
    fleet_of(&[
        (Platform::Ios, 4, 21),
        (Platform::IpadOs, 2, 22),
        (Platform::MacOs, 3, 23),
        (Platform::TvOs, 1, 24),
    ])
}

/// The inventory the operator is seeded with: what each device is, plus the labels the
/// example FleetGroups select on.
fn inventory_of(devices: &[SimDevice], vips: &[&str]) -> Value {
    let list: Vec<Value> = devices
        .iter()
        .map(|device| {
            let spec = device.spec();
            let mut labels = json!({"fleet": "corporate"});
            if vips.contains(&spec.enrollment_id.as_str()) {
                labels["role"] = "vip".into();
            }
            json!({
                "enrollmentId": spec.enrollment_id,
                "serialNumber": spec.serial_number,
                "platform": spec.platform,
                "model": spec.model_identifier,
                "softwareUpdateDeviceId": spec.software_update_device_id,
                "osVersion": spec.os.version.numeric(),
                "buildVersion": spec.os.build,
                "supervised": true,
                "enrollmentType": "ade",
                "labels": labels,
            })
        })
        .collect();
    json!({ "devices": list })
}

/// The example policy a device falls under, by platform.
fn policy_of(platform: Platform) -> &'static str {
    match platform {
        Platform::MacOs => "macs",
        Platform::Ios | Platform::IpadOs => "mobile",
        _ => "meeting-rooms",
    }
}

struct Devices {
    list: Vec<SimDevice>,
    client: reqwest::Client,
    server: ServerConfig,
    root: String,
    /// Enforcement Identifier → its TargetOSVersion, as served.
    targets: HashMap<String, OsVersion>,
}

impl Devices {
    fn new(list: Vec<SimDevice>, running: &Running) -> Devices {
        let root = format!("http://{}", running.address);
        Devices {
            list,
            client: http_client(Duration::from_secs(10)).expect("HTTP client"),
            server: ServerConfig::new(&format!("{root}/ddm/")).expect("DDM base URL"),
            root,
            targets: HashMap::new(),
        }
    }

    /// One check-in of every device, concurrently; then learns the targets of new enforcements.
    async fn sync_all(&mut self, running: &Running) -> Vec<SyncOutcome> {
        let outcomes = check_in_all(&mut self.list, &self.client, &self.server).await;
        self.learn_targets(running).await;
        outcomes
    }

    async fn learn_targets(&mut self, running: &Running) {
        let snapshot = running.snapshots.borrow().clone();
        for declaration in &snapshot.plan.declarations {
            if declaration.declaration_type == ENFORCEMENT_TYPE
                && let Some(version) = declaration.payload["TargetOSVersion"].as_str()
            {
                self.targets.insert(
                    declaration.identifier.clone(),
                    version.parse().expect("a TargetOSVersion"),
                );
            }
        }
        let unknown: Vec<(String, String)> = self
            .list
            .iter()
            .flat_map(|d| {
                enforcements(d)
                    .into_iter()
                    .map(move |e| (d.enrollment_id().to_string(), e.identifier))
            })
            .filter(|(_, id)| !self.targets.contains_key(id))
            .collect();
        for (enrollment, identifier) in unknown {
            let served: Value = self
                .client
                .get(format!(
                    "{}/ddm/declaration/configuration/{identifier}",
                    self.root
                ))
                .header("X-Enrollment-ID", &enrollment)
                .send()
                .await
                .expect("GET a declaration")
                .json()
                .await
                .unwrap_or_else(|e| panic!("{identifier} for {enrollment}: {e}"));
            let version = served["Payload"]["TargetOSVersion"]
                .as_str()
                .expect("an enforcement names a version");
            self.targets
                .insert(identifier, version.parse().expect("a TargetOSVersion"));
        }
    }

    /// Checks in every 250 ms until, for 1.2 s, no device saw a new set or reported and the
    /// operator ran no pass.
    async fn settle(&mut self, running: &Running) -> Duration {
        let started = Instant::now();
        let mut quiet_since = Instant::now();
        let mut pass = running.snapshots.borrow().pass;
        loop {
            assert!(
                started.elapsed() < CONVERGE,
                "the devices and the operator did not settle within {CONVERGE:?}"
            );
            let outcomes = self.sync_all(running).await;
            let now = running.snapshots.borrow().pass;
            let active = now != pass
                || outcomes
                    .iter()
                    .any(|o| o.declarations_changed || o.report.is_some());
            pass = now;
            if active {
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= Duration::from_millis(1200) {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Identifier → (Type, ServerToken) of what device `i` holds.
    fn held(&self, i: usize) -> BTreeMap<String, (String, String)> {
        held(&self.list[i])
    }

    /// The state bucket a device should be in for the policy enforcing on it: compliant once it
    /// runs every target it holds, else by its install state.
    fn expected_bucket(&self, i: usize) -> &'static str {
        let device = &self.list[i];
        let running = device.os().running();
        let held = enforcements(device);
        if held.iter().all(|e| {
            self.targets
                .get(&e.identifier)
                .is_some_and(|t| running >= *t)
        }) {
            return "compliant";
        }
        match device.install_state() {
            InstallState::None => "pending",
            InstallState::Downloading => "downloading",
            InstallState::Prepared => "prepared",
            InstallState::Installing => "installing",
            InstallState::Failed => "failed",
        }
    }

    /// What every device holds, by index: see [`Devices::held`].
    fn held_all(&self) -> Vec<BTreeMap<String, (String, String)>> {
        (0..self.list.len()).map(|i| self.held(i)).collect()
    }

    /// The indices of the devices the example policy `policy` falls on.
    fn under_policy(&self, policy: &str) -> Vec<usize> {
        (0..self.list.len())
            .filter(|i| policy_of(self.list[*i].spec().platform) == policy)
            .collect()
    }

    /// The same devices, holding what they hold, checking in with another (restarted)
    /// operator; the targets they learnt are forgotten.
    fn with_operator(self, running: &Running) -> Devices {
        Devices {
            list: self.list,
            ..Devices::new(Vec::new(), running)
        }
    }
}

fn enforcements(device: &SimDevice) -> Vec<DeclarationState> {
    device
        .declarations()
        .into_iter()
        .filter(|d| d.declaration_type == ENFORCEMENT_TYPE)
        .collect()
}

/// Non-zero counts of a policy's `status.devices`.
fn policy_counts(policy: &UpdatePolicy) -> BTreeMap<String, u64> {
    policy
        .status
        .as_ref()
        .map(|s| {
            s.devices
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        })
        .unwrap_or_default()
}

/// Made by the example policy `policy` (its label).
fn generated_by(target: &EnforcementTarget, policy: &str) -> bool {
    target.labels().get(POLICY_LABEL).map(String::as_str) == Some(policy)
}

/// Every enforcement `device` holds is in the operator's plan, due at 17:30 (the local time
/// the tests change the mobile policy to).
fn assert_enforced_at_1730(snapshot: &Snapshot, device: &SimDevice) {
    let id = device.enrollment_id();
    for e in enforcements(device) {
        let payload = snapshot
            .plan
            .declarations
            .iter()
            .find(|d| d.identifier == e.identifier)
            .map(|d| d.payload.clone())
            .unwrap_or_else(|| panic!("{id}: {} is in the plan", e.identifier));
        assert!(
            payload["TargetLocalDateTime"]
                .as_str()
                .is_some_and(|t| t.ends_with("T17:30:00")),
            "{id}: due at 17:30: {payload}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Where the tests start, and what a restart must leave alone
// ---------------------------------------------------------------------------------------------

/// Where most tests start: a fresh namespace with the examples applied and Ready, its operator,
/// and the devices of [`fleet`] checked in until they and the operator are quiet.
async fn examples_with_settled_devices(tag: &str, identity: &str) -> (Env, Operator, Devices) {
    let fleet = fleet();
    let env = Env::new(tag, &fleet, &[]).await;
    let running = env.start(identity).await;
    env.apply_examples().await;
    eventually("the examples Ready", CONVERGE, || all_ready(&env)).await;
    let mut devices = Devices::new(fleet, &running);
    let settled = devices.settle(&running).await;
    eprintln!(
        "[{}] devices settled in {:.2} s",
        env.namespace,
        settled.as_secs_f64()
    );
    (env, running, devices)
}

/// Every object Ready again after the devices' first reports, then nothing happening for
/// `quiet`: the baseline a test measures changes from.
async fn ready_and_quiet(env: &Env, running: &Running, quiet: Duration) {
    eventually("Ready after the first reports", CONVERGE, || all_ready(env)).await;
    quiesce(env, running, quiet, CONVERGE).await;
}

/// Waits for a resolver pass numbered above `after` (0: the first pass of a restarted
/// operator).
async fn pass_after(running: &Running, after: u64, what: &str) {
    eventually(what, CONVERGE, || async {
        let now = running.snapshots.borrow().pass;
        if now > after {
            Ok(())
        } else {
            Err(format!("pass {now}, was {after}"))
        }
    })
    .await;
}

/// Waits until the (restarted) operator made at least `objects` reconciles.
async fn reconciled_at_least(running: &Running, objects: usize) {
    eventually(
        "every object reconciled after the restart",
        CONVERGE,
        || async {
            let r = metric(&running.metrics, RECONCILES);
            if r >= objects as f64 {
                Ok(())
            } else {
                Err(format!("{r} reconciles"))
            }
        },
    )
    .await;
}

/// A restart at `mark` changed nothing: no write request, no backend write, every object at
/// the resourceVersion of `versions` (from [`status_versions`]).
async fn assert_restart_changed_nothing(
    env: &Env,
    running: &Running,
    mark: Instant,
    versions: &BTreeMap<String, String>,
) {
    assert_eq!(
        env.log.writes_since(mark),
        Vec::<String>::new(),
        "no write request after a restart"
    );
    assert_eq!(
        metric(&running.metrics, BACKEND_CHANGES),
        0.0,
        "no backend write after a restart"
    );
    assert_eq!(&status_versions(env).await, versions, "no object changed");
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_become_ready_with_generated_targets_kubectl_lists() {
    let devices = fleet();
    let vip = devices
        .iter()
        .find(|d| d.spec().platform == Platform::Ios)
        .map(|d| d.enrollment_id().to_string())
        .expect("an iPhone");
    let env = Env::new("examples", &devices, &[vip.as_str()]).await;
    let running = env.start("examples").await;

    let applied_at = Instant::now();
    let applied = env.apply_examples().await;
    assert_eq!(
        applied.len(),
        10,
        "examples/gitops holds 6 groups, 3 policies, 1 target"
    );
    let (policies, groups, targets) =
        eventually("the examples Ready", CONVERGE, || all_ready(&env)).await;
    let ready_after = applied_at.elapsed();
    eprintln!(
        "[{}] examples applied → every object Ready=True at its generation: {:.2} s",
        env.namespace,
        ready_after.as_secs_f64()
    );

    // Policies: Ready/Resolved/Synced True, Compliant present, generated targets counted.
    assert_eq!(policies.len(), 3);
    for p in &policies {
        let name = p.name_any();
        let status = p.status.as_ref().expect("status");
        assert_well_formed(&format!("UpdatePolicy {name}"), &status.conditions);
        for type_ in [READY, RESOLVED, SYNCED] {
            assert!(
                has(&status.conditions, type_, "True", p.metadata.generation),
                "UpdatePolicy {name}: {type_}: {}",
                describe(&status.conditions)
            );
        }
        assert!(
            condition(&status.conditions, COMPLIANT).is_some(),
            "UpdatePolicy {name} reports Compliant"
        );
        assert_eq!(
            condition(&status.conditions, READY).map(|c| c.reason.as_str()),
            Some("Ready")
        );
        assert!(
            p.finalizers().iter().any(|f| f == FINALIZER),
            "UpdatePolicy {name} carries {FINALIZER}"
        );
        assert!(
            status.targets > 0,
            "UpdatePolicy {name} generated targets for the fleet: {status:?}"
        );
    }

    // Generated targets: owned by their policy (controller reference), labelled with it.
    let uids: BTreeMap<String, String> = policies
        .iter()
        .map(|p| (p.name_any(), p.uid().expect("a uid")))
        .collect();
    let generated: Vec<&EnforcementTarget> = targets
        .iter()
        .filter(|t| t.labels().contains_key(POLICY_LABEL))
        .collect();
    assert_eq!(
        generated.len() as u32,
        policies
            .iter()
            .map(|p| p.status.as_ref().map_or(0, |s| s.targets))
            .sum::<u32>()
    );
    for t in &generated {
        let policy = &t.labels()[POLICY_LABEL];
        let owners = t.owner_references();
        assert_eq!(owners.len(), 1, "{}: one owner: {owners:?}", t.name_any());
        let owner = &owners[0];
        assert_eq!(owner.kind, "UpdatePolicy");
        assert_eq!(owner.api_version, api::API_VERSION);
        assert_eq!(&owner.name, policy);
        assert_eq!(
            Some(&owner.uid),
            uids.get(policy),
            "{}: owner uid",
            t.name_any()
        );
        assert_eq!(owner.controller, Some(true));
        assert!(
            t.name_any().starts_with(&format!("{policy}-")),
            "{} is named after {policy}",
            t.name_any()
        );
        assert_well_formed(
            &format!("EnforcementTarget {}", t.name_any()),
            target_conditions(t),
        );
        let status = t.status.as_ref().expect("status");
        assert!(status.compliance.is_some(), "{}: compliance", t.name_any());
        assert!(
            t.managed_fields()
                .iter()
                .any(|m| m.manager.as_deref() == Some(api::FIELD_MANAGER)),
            "{} is applied by {}",
            t.name_any(),
            api::FIELD_MANAGER
        );
        assert!(
            t.managed_fields()
                .iter()
                .any(|m| m.manager.as_deref() == Some(api::STATUS_FIELD_MANAGER)),
            "{}: status by {}",
            t.name_any(),
            api::STATUS_FIELD_MANAGER
        );
    }
    // The hand-written target is not touched by any policy and takes the VIP iPhone.
    let vip_target = targets
        .iter()
        .find(|t| t.name_any() == "vip-ios-26-6-1")
        .expect("the hand-written target");
    assert!(vip_target.owner_references().is_empty());
    assert!(!vip_target.labels().contains_key(POLICY_LABEL));
    assert_well_formed(
        "EnforcementTarget vip-ios-26-6-1",
        target_conditions(vip_target),
    );

    // FleetGroups: members counted from the inventory.
    let members: BTreeMap<String, u64> = groups
        .iter()
        .map(|g| (g.name_any(), g.status.as_ref().map_or(0, |s| s.members)))
        .collect();
    eprintln!("[{}] FleetGroup members: {members:?}", env.namespace);
    for g in &groups {
        assert_well_formed(&format!("FleetGroup {}", g.name_any()), group_conditions(g));
    }
    let count = |p: Platform| devices.iter().filter(|d| d.spec().platform == p).count() as u64;
    assert_eq!(members["iphones"], count(Platform::Ios));
    assert_eq!(members["ipads"], count(Platform::IpadOs));
    assert_eq!(members["macs-broad"], count(Platform::MacOs));
    assert_eq!(members["meeting-rooms"], count(Platform::TvOs));
    assert_eq!(members["vip-iphones"], 1);
    let by_platform = groups
        .iter()
        .find(|g| g.name_any() == "ipads")
        .and_then(|g| g.status.clone())
        .map(|s| s.members_by_platform)
        .unwrap_or_default();
    assert_eq!(
        by_platform.get("iPadOS").copied(),
        Some(count(Platform::IpadOs))
    );

    // `kubectl get et` lists them with the printer columns.
    let namespace = env.namespace.clone();
    let table = tokio::task::spawn_blocking(move || kubectl(&["get", "et", "-n", &namespace]))
        .await
        .expect("kubectl");
    eprintln!("[{}] kubectl get et:\n{table}", env.namespace);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "PLATFORM",
            "VERSION",
            "COMPLIANT",
            "DEADLINE",
            "AGE"
        ]
    );
    let rows: BTreeMap<String, Vec<String>> = lines
        .map(|l| {
            let cells: Vec<String> = l.split_whitespace().map(str::to_string).collect();
            (cells[0].clone(), cells)
        })
        .collect();
    assert_eq!(rows.len(), targets.len(), "one row per EnforcementTarget");
    for t in &targets {
        let row = &rows[&t.name_any()];
        assert_eq!(row[1], "True", "{row:?}");
        assert_eq!(row[2], t.spec.platform.to_string(), "{row:?}");
        assert_eq!(row[3], t.spec.target_os_version, "{row:?}");
        assert_eq!(
            Some(row[4].as_str()),
            t.status.as_ref().and_then(|s| s.compliance.as_deref()),
            "{row:?}"
        );
        assert_eq!(row[5], t.spec.target_local_date_time, "{row:?}");
    }
    // The `ddm` category names all three kinds.
    let namespace = env.namespace.clone();
    let everything = tokio::task::spawn_blocking(move || {
        kubectl(&["get", "ddm", "-n", &namespace, "-o", "name"])
    })
    .await
    .expect("kubectl");
    assert_eq!(
        everything.lines().count(),
        policies.len() + groups.len() + targets.len(),
        "kubectl get ddm:\n{everything}"
    );

    env.finish(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_get_declarations_and_statuses_follow_them_to_compliance() {
    // First check-ins: every device gets exactly the set the backend holds for it.
    let (env, running, mut devices) = examples_with_settled_devices("devices", "devices").await;
    let snapshot = running.snapshots.borrow().clone();
    let assigned: HashMap<&str, BTreeSet<&str>> = snapshot
        .records
        .iter()
        .map(|r| {
            (
                r.enrollment_id.as_str(),
                r.assigned.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let n = devices.list.len();
    for i in 0..n {
        let id = devices.list[i].enrollment_id();
        let held: BTreeSet<String> = devices.held(i).into_keys().collect();
        let expected: BTreeSet<String> = assigned
            .get(id)
            .unwrap_or_else(|| panic!("{id}: the backend knows the device"))
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(held, expected, "{id}: holds what the backend assigned");
    }

    // Enforcement only where the device runs below the target; each one active and valid.
    let enforced: Vec<usize> = (0..n)
        .filter(|i| !enforcements(&devices.list[*i]).is_empty())
        .collect();
    for i in &enforced {
        let device = &devices.list[*i];
        for e in enforcements(device) {
            let target = &devices.targets[&e.identifier];
            assert!(
                device.os().running() < *target,
                "{}: runs {}, enforced to {target}",
                device.enrollment_id(),
                device.os().running()
            );
            assert!(
                e.active,
                "{}: {} active",
                device.enrollment_id(),
                e.identifier
            );
            assert_eq!(
                e.valid,
                "valid",
                "{}: {:?}",
                device.enrollment_id(),
                e.reasons
            );
        }
    }
    let platforms: BTreeSet<String> = enforced
        .iter()
        .map(|i| devices.list[*i].spec().platform.to_string())
        .collect();
    eprintln!(
        "[{}] {} of {n} devices enforced ({platforms:?})",
        env.namespace,
        enforced.len()
    );
    for p in ["iOS", "macOS"] {
        assert!(
            platforms.contains(p),
            "the fleet has an enforced {p} device: pick another seed"
        );
    }
    // The policies' settings declaration reaches devices too.
    assert!(
        (0..n).any(|i| devices.held(i).values().any(|(t, _)| t == SETTINGS_TYPE)),
        "some device holds a settings declaration"
    );

    // Baseline per policy: the counts of the devices that get no enforcement stay put.
    let policy_names = ["mobile", "macs", "meeting-rooms"];
    let enforced_bucket = |devices: &Devices, policy: &str| -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for i in &enforced {
            if policy_of(devices.list[*i].spec().platform) == policy {
                *counts
                    .entry(devices.expected_bucket(*i).to_string())
                    .or_default() += 1;
            }
        }
        counts
    };
    let mut baseline: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
    for policy in policy_names {
        let expected = enforced_bucket(&devices, policy);
        let observed = eventually(
            &format!("{policy}: enforced devices pending"),
            CONVERGE,
            || async {
                let counts = policy_counts(&env.policy(policy).await);
                let pending = counts.get("pending").copied().unwrap_or(0);
                if pending == expected.get("pending").copied().unwrap_or(0) {
                    Ok(counts)
                } else {
                    Err(format!(
                        "{counts:?}, expected {expected:?} for the enforced ones"
                    ))
                }
            },
        )
        .await;
        let mut rest = observed.clone();
        for (bucket, n) in &expected {
            *rest.entry(bucket.clone()).or_default() -= n;
        }
        rest.retain(|_, n| *n > 0);
        assert!(
            rest.keys()
                .all(|k| k == "compliant" || k == "notApplicable"),
            "{policy}: devices without an enforcement are compliant or not applicable: {observed:?}"
        );
        eprintln!("[{}] {policy}: {observed:?}", env.namespace);
        baseline.insert(policy, rest);
    }

    // The generated targets count the same devices: each enforced device once, pending.
    let enforced_n = enforced.len() as u64;
    let target_baseline: BTreeMap<String, u64> = eventually(
        "generated targets count the enforced devices",
        CONVERGE,
        || async {
            let targets = env.targets().await;
            let generated: Vec<&EnforcementTarget> = targets
                .iter()
                .filter(|t| t.labels().contains_key(POLICY_LABEL))
                .collect();
            let pending: u64 = generated
                .iter()
                .map(|t| t.status.as_ref().map_or(0, |s| s.devices.pending))
                .sum();
            if pending != enforced_n {
                return Err(format!(
                    "{pending} pending on generated targets, {enforced_n} enforced"
                ));
            }
            Ok(generated
                .iter()
                .map(|t| {
                    let d = t
                        .status
                        .as_ref()
                        .map(|s| s.devices.clone())
                        .unwrap_or_default();
                    (
                        t.name_any(),
                        d.compliant
                            + d.pending
                            + d.downloading
                            + d.prepared
                            + d.installing
                            + d.failed
                            + d.stale,
                    )
                })
                .collect())
        },
    )
    .await;
    eprintln!(
        "[{}] generated targets' devices: {target_baseline:?}",
        env.namespace
    );

    // Install round by round; after each, the policies' counts follow the devices exactly.
    let mut seen_states: BTreeSet<String> = BTreeSet::new();
    for policy in policy_names {
        seen_states.extend(enforced_bucket(&devices, policy).into_keys());
    }
    let mut round_times = Vec::new();
    for round in 1..=12 {
        for device in &mut devices.list {
            device.advance();
        }
        devices.sync_all(&running).await;
        let round_started = Instant::now();
        for policy in policy_names {
            let mut expected = baseline[policy].clone();
            for (bucket, n) in enforced_bucket(&devices, policy) {
                *expected.entry(bucket).or_default() += n;
            }
            seen_states.extend(expected.keys().cloned());
            eventually(
                &format!("round {round}: {policy} counts"),
                CONVERGE,
                || async {
                    let counts = policy_counts(&env.policy(policy).await);
                    if counts == expected {
                        Ok(())
                    } else {
                        Err(format!("{counts:?}, expected {expected:?}"))
                    }
                },
            )
            .await;
        }
        round_times.push(round_started.elapsed());
        let still = enforced
            .iter()
            .filter(|i| !enforcements(&devices.list[**i]).is_empty())
            .count();
        if still == 0 {
            break;
        }
    }
    eprintln!(
        "[{}] rounds: status caught up in {:?} ms; states seen {seen_states:?}",
        env.namespace,
        round_times
            .iter()
            .map(|d| d.as_millis())
            .collect::<Vec<_>>()
    );
    for state in [
        "pending",
        "downloading",
        "prepared",
        "installing",
        "compliant",
    ] {
        assert!(
            seen_states.contains(state),
            "the counts went through {state}"
        );
    }

    // At target: enforcement withdrawn from every device, policies and targets Compliant.
    for i in &enforced {
        let device = &devices.list[*i];
        assert!(
            enforcements(device).is_empty(),
            "{}: enforcement withdrawn at {}",
            device.enrollment_id(),
            device.os().running()
        );
        assert!(device.installs_completed() >= 1);
    }
    let (policies, _, targets) =
        eventually("Ready after installs", CONVERGE, || all_ready(&env)).await;
    for p in &policies {
        let status = p.status.as_ref().expect("status");
        assert!(
            has(&status.conditions, COMPLIANT, "True", p.metadata.generation),
            "UpdatePolicy {}: {}",
            p.name_any(),
            describe(&status.conditions)
        );
    }
    for t in &targets {
        let status = t.status.as_ref().expect("status");
        let compliant = condition(&status.conditions, COMPLIANT).expect("Compliant");
        assert_eq!(
            compliant.status,
            "True",
            "{}: {}",
            t.name_any(),
            describe(&status.conditions)
        );
        let d = &status.devices;
        assert_eq!(
            d.pending + d.downloading + d.prepared + d.installing + d.failed + d.stale,
            0,
            "{}: {d:?}",
            t.name_any()
        );
    }
    let left: Vec<String> = targets
        .iter()
        .filter(|t| t.labels().contains_key(POLICY_LABEL))
        .map(|t| {
            format!(
                "{} {:?}",
                t.name_any(),
                t.status.as_ref().and_then(|s| s.compliance.clone())
            )
        })
        .collect();
    eprintln!(
        "[{}] generated targets after every device complied: {left:?} (at the start: {target_baseline:?})",
        env.namespace
    );
    // Each generated target is still there and counts, as compliant, the devices it took.
    let compliant_now: BTreeMap<String, u64> = targets
        .iter()
        .filter(|t| t.labels().contains_key(POLICY_LABEL))
        .map(|t| {
            (
                t.name_any(),
                t.status.as_ref().map_or(0, |s| s.devices.compliant),
            )
        })
        .collect();
    assert_eq!(
        compliant_now, target_baseline,
        "generated targets after every device complied"
    );

    env.finish(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_policy_withdraws_its_declarations_before_it_goes() {
    let (env, running, mut devices) = examples_with_settled_devices("delete", "delete").await;
    let before = devices.held_all();
    let mobile = devices.under_policy("mobile");
    assert!(
        mobile
            .iter()
            .any(|i| before[*i].values().any(|(t, _)| t == ENFORCEMENT_TYPE)),
        "a mobile device holds an enforcement before the deletion"
    );
    let mobile_targets = env.generated_target_names("mobile").await;
    assert!(!mobile_targets.is_empty());

    // A finalizer of the test's own keeps the object visible after the operator's is gone.
    const HOLD: &str = "it.example.com/hold";
    let policies = env.api::<UpdatePolicy>();
    let policy = env.policy("mobile").await;
    let mut finalizers = policy.finalizers().to_vec();
    finalizers.push(HOLD.into());
    policies
        .patch(
            "mobile",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": finalizers, "resourceVersion": policy.resource_version()}})),
        )
        .await
        .expect("add the test's finalizer");
    let deleted_at = Instant::now();
    policies
        .delete("mobile", &DeleteParams::default())
        .await
        .expect("delete the policy");
    let held = eventually("the operator's finalizer removed", CONVERGE, || async {
        let p = env.policy("mobile").await;
        if p.metadata.deletion_timestamp.is_some() && p.finalizers() == [HOLD.to_string()] {
            Ok(p)
        } else {
            Err(format!("finalizers {:?}", p.finalizers()))
        }
    })
    .await;
    let withdrawn_after = deleted_at.elapsed();
    assert!(held.metadata.deletion_timestamp.is_some());

    // The object still exists; the backend already holds no mobile declaration.
    let snapshot = running.snapshots.borrow().clone();
    assert!(snapshot.applied.is_ok(), "{:?}", snapshot.applied);
    for i in &mobile {
        let id = devices.list[*i].enrollment_id();
        let record = snapshot
            .records
            .iter()
            .find(|r| r.enrollment_id == id)
            .expect("a record");
        let types: BTreeSet<&str> = snapshot
            .plan
            .declarations
            .iter()
            .filter(|d| record.assigned.contains(&d.identifier))
            .map(|d| d.declaration_type)
            .collect();
        assert!(
            !types.contains(ENFORCEMENT_TYPE) && !types.contains(SETTINGS_TYPE),
            "{id}: still assigned {types:?} while the policy is only being deleted"
        );
    }
    // The devices see it at their next check-in; nobody else's set moved.
    devices.settle(&running).await;
    for (i, was) in before.iter().enumerate() {
        let id = devices.list[i].enrollment_id();
        let now = devices.held(i);
        if mobile.contains(&i) {
            assert!(
                !now.values()
                    .any(|(t, _)| t == ENFORCEMENT_TYPE || t == SETTINGS_TYPE),
                "{id}: the mobile policy's declarations are withdrawn: {now:?}"
            );
        } else {
            assert_eq!(&now, was, "{id}: untouched by deleting another policy");
        }
    }
    let withdrawn_event = env.event("Withdrawn", "mobile").await;
    assert_eq!(withdrawn_event.type_.as_deref(), Some("Normal"));

    // Let it go: the object disappears and its generated targets are garbage-collected.
    policies
        .patch(
            "mobile",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("remove the test's finalizer");
    env.policy_gone("mobile").await;
    let collected_after = eventually(
        "its generated targets collected",
        Duration::from_secs(60),
        || async {
            let left: Vec<String> = env
                .targets()
                .await
                .iter()
                .map(ResourceExt::name_any)
                .filter(|name| mobile_targets.contains(name))
                .collect();
            if left.is_empty() {
                Ok(deleted_at.elapsed())
            } else {
                Err(format!("left: {left:?}"))
            }
        },
    )
    .await;
    eprintln!(
        "[{}] delete → withdrawn from the backend (operator's finalizer off): {:.2} s; generated targets collected: {:.2} s",
        env.namespace,
        withdrawn_after.as_secs_f64(),
        collected_after.as_secs_f64()
    );
    // The rest is still Ready.
    let (policies_left, _, _) = eventually("the rest Ready", CONVERGE, || all_ready(&env)).await;
    assert_eq!(policies_left.len(), 2);

    env.finish(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_changed_writes_nothing_and_a_restart_changes_nothing() {
    let (env, running, mut devices) = examples_with_settled_devices("noop", "first").await;
    ready_and_quiet(&env, &running, Duration::from_secs(2)).await;

    // A changed policy: every target it generated is re-applied and Synced at its new
    // generation; the devices get the new deadline.
    let reconciles_before = metric(&running.metrics, RECONCILES);
    let writes_before = running.metrics.kube_writes_total();
    let mut mobile = env.example_policy("mobile");
    mobile["spec"]["deadline"]["localTime"] = "17:30".into();
    let changed_at = Instant::now();
    env.apply::<UpdatePolicy>(&mobile).await;
    let mobile_generation = env.policy("mobile").await.metadata.generation;
    let synced = eventually("every mobile target Synced at 17:30", CONVERGE, || async {
        let p = env.policy("mobile").await;
        let status = p.status.clone().unwrap_or_default();
        if !has(&status.conditions, SYNCED, "True", mobile_generation) {
            return Err(format!("policy: {}", describe(&status.conditions)));
        }
        let targets: Vec<EnforcementTarget> = env
            .targets()
            .await
            .into_iter()
            .filter(|t| generated_by(t, "mobile"))
            .collect();
        if targets.len() != status.targets as usize || targets.is_empty() {
            return Err(format!(
                "{} targets, status says {}",
                targets.len(),
                status.targets
            ));
        }
        for t in &targets {
            if !t.spec.target_local_date_time.ends_with("T17:30:00") {
                return Err(format!(
                    "{} due {}",
                    t.name_any(),
                    t.spec.target_local_date_time
                ));
            }
            if !has(target_conditions(t), SYNCED, "True", t.metadata.generation)
                || t.status.as_ref().and_then(|s| s.observed_generation) != t.metadata.generation
            {
                return Err(format!(
                    "{}: {}",
                    t.name_any(),
                    describe(target_conditions(t))
                ));
            }
        }
        Ok(changed_at.elapsed())
    })
    .await;
    let change_settled = quiesce(&env, &running, Duration::from_secs(2), CONVERGE).await;
    let change_requests: Vec<Logged> = env
        .log
        .since(changed_at)
        .into_iter()
        .filter(Logged::counts)
        .collect();
    let change_reconciles = metric(&running.metrics, RECONCILES) - reconciles_before;
    let change_writes = running.metrics.kube_writes_total() - writes_before;
    eprintln!(
        "[{}] policy changed → every affected target Synced at its new generation: {:.2} s \
         (quiet {:.2} s later); {} API requests ({} writes counted by the operator) for {} reconciles: \
         {:.2} requests per reconcile",
        env.namespace,
        synced.as_secs_f64(),
        change_settled.as_secs_f64(),
        change_requests.len(),
        change_writes,
        change_reconciles,
        change_requests.len() as f64 / change_reconciles.max(1.0)
    );
    let mut by_verb: BTreeMap<String, usize> = BTreeMap::new();
    for r in &change_requests {
        let kind = r.path.split('/').nth(6).unwrap_or("?").to_string();
        let sub = if r.path.ends_with("/status") {
            "/status"
        } else {
            ""
        };
        *by_verb
            .entry(format!("{} {kind}{sub}", r.method))
            .or_default() += 1;
    }
    eprintln!(
        "[{}] requests by verb and resource: {by_verb:?}",
        env.namespace
    );
    // The operator's own count of its writes is the API server's: status patches, applies,
    // deletes, events and finalizer patches alike.
    let logged_writes = change_requests.iter().filter(|r| r.is_write()).count() as f64;
    assert_eq!(
        change_writes as f64, logged_writes,
        "kube_writes_total against the write requests sent: {by_verb:?}"
    );
    // Identical bodies sent twice to the same status (a reconcile that compared against a
    // cache that had not seen its own previous write yet).
    let mut bodies: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in change_requests
        .iter()
        .filter(|r| r.path.ends_with("/status"))
    {
        *bodies.entry((r.path.clone(), r.body.clone())).or_default() += 1;
    }
    let repeated: Vec<String> = bodies
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|((path, _), n)| format!("{n}x {path}"))
        .collect();
    eprintln!(
        "[{}] status patches repeated with an identical body: {repeated:?}",
        env.namespace
    );
    devices.settle(&running).await;
    let snapshot = running.snapshots.borrow().clone();
    for i in devices.under_policy("mobile") {
        assert_enforced_at_1730(&snapshot, &devices.list[i]);
    }
    quiesce(&env, &running, Duration::from_secs(2), CONVERGE).await;

    // Nothing changed: annotations on every object (a watch event for every controller and the
    // resolver), then a full report from every device (a pass per report batch).
    let mark = Instant::now();
    let writes = running.metrics.kube_writes_total();
    let backend = metric(&running.metrics, BACKEND_CHANGES);
    let passes = running.snapshots.borrow().pass;
    let reconciles = metric(&running.metrics, RECONCILES);
    let touch = json!({"metadata": {"annotations": {"it.example.com/touched": "yes"}}});
    env.patch_all::<UpdatePolicy>(&touch).await;
    env.patch_all::<FleetGroup>(&touch).await;
    env.patch_all::<EnforcementTarget>(&touch).await;
    pass_after(&running, passes, "a pass after the touches").await;
    let touched_pass = running.snapshots.borrow().pass;
    for device in &mut devices.list {
        device.request_full_report();
    }
    let outcomes = devices.sync_all(&running).await;
    assert!(
        outcomes.iter().all(|o| o.report.is_some()),
        "every device reported"
    );
    assert!(outcomes.iter().all(|o| !o.declarations_changed));
    pass_after(&running, touched_pass, "a pass after the reports").await;
    quiesce(&env, &running, Duration::from_secs(3), CONVERGE).await;
    let objects = env.policies().await.len() + env.groups().await.len() + env.targets().await.len();
    let noop_reconciles = metric(&running.metrics, RECONCILES) - reconciles;
    let noop_requests: Vec<Logged> = env
        .log
        .since(mark)
        .into_iter()
        .filter(Logged::counts)
        .collect();
    eprintln!(
        "[{}] no-op: {} passes, {noop_reconciles} reconciles of {objects} objects, {} API requests",
        env.namespace,
        running.snapshots.borrow().pass - passes,
        noop_requests.len()
    );
    assert!(
        noop_reconciles >= objects as f64,
        "every object was reconciled again ({noop_reconciles} reconciles, {objects} objects)"
    );
    assert_eq!(
        running.metrics.kube_writes_total(),
        writes,
        "no write counted by the operator"
    );
    assert_eq!(
        env.log.writes_since(mark),
        Vec::<String>::new(),
        "no write request at all"
    );
    assert_eq!(
        metric(&running.metrics, BACKEND_CHANGES),
        backend,
        "no backend write"
    );
    assert_eq!(running.snapshots.borrow().applied, Ok(0));
    let devices_before = devices.held_all();
    let statuses_before: BTreeMap<String, String> = status_versions(&env).await;

    // Restart on the same database: nothing written, nothing changed.
    running.stop();
    let restart_mark = Instant::now();
    let running = env.start("second").await;
    let mut devices = devices.with_operator(&running);
    pass_after(&running, 0, "a first pass after the restart").await;
    reconciled_at_least(&running, objects).await;
    devices.sync_all(&running).await;
    let restart_quiet = quiesce(&env, &running, Duration::from_secs(3), CONVERGE).await;
    eprintln!(
        "[{}] restart: quiet after {:.2} s; {} passes, {} reconciles, {} API requests (besides watches and the Lease)",
        env.namespace,
        restart_quiet.as_secs_f64(),
        running.snapshots.borrow().pass,
        metric(&running.metrics, RECONCILES),
        env.log
            .since(restart_mark)
            .into_iter()
            .filter(Logged::counts)
            .count()
    );
    assert_restart_changed_nothing(&env, &running, restart_mark, &statuses_before).await;
    assert_eq!(
        running.metrics.kube_writes_total(),
        0,
        "no write counted after a restart"
    );
    for (i, before) in devices_before.iter().enumerate() {
        assert_eq!(
            &devices.held(i),
            before,
            "{}: same set",
            devices.list[i].enrollment_id()
        );
    }

    env.finish(running).await;
}

/// `Kind/name` → resourceVersion of every object.
async fn status_versions(env: &Env) -> BTreeMap<String, String> {
    fn versions<K: Resource<DynamicType = ()>>(objects: Vec<K>) -> Vec<(String, String)> {
        objects
            .iter()
            .map(|o| {
                (
                    format!("{}/{}", K::kind(&()), o.name_any()),
                    o.resource_version().unwrap_or_default(),
                )
            })
            .collect()
    }
    let mut out = BTreeMap::new();
    out.extend(versions(env.policies().await));
    out.extend(versions(env.groups().await));
    out.extend(versions(env.targets().await));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_reported_without_touching_the_rest() {
    let (env, running, _devices) = examples_with_settled_devices("invalid", "invalid").await;
    ready_and_quiet(&env, &running, Duration::from_secs(2)).await;
    let versions = status_versions(&env).await;
    let backend = metric(&running.metrics, BACKEND_CHANGES);
    let mark = Instant::now();

    let policy = |name: &str, group: &str, zone: &str| {
        json!({
            "apiVersion": api::API_VERSION,
            "kind": "UpdatePolicy",
            "metadata": {"name": name, "namespace": env.namespace},
            "spec": {
                "fleetGroups": [group],
                "target": {"strategy": "latest"},
                "deadline": {"daysAfterPosting": 7, "localTime": "09:00", "timeZone": zone},
            }
        })
    };
    env.apply::<UpdatePolicy>(&policy("missing-group", "no-such-group", "Europe/Paris"))
        .await;
    env.apply::<UpdatePolicy>(&policy("bad-zone", "iphones", "Mars/Olympus_Mons"))
        .await;
    let expectations = [
        ("missing-group", "FleetGroupNotFound", "no-such-group"),
        ("bad-zone", "InvalidSpec", "Mars/Olympus_Mons"),
    ];
    for (name, reason, mentioned) in expectations {
        let p = eventually(&format!("{name} Ready=False"), CONVERGE, || async {
            let p = env.policy(name).await;
            if has(policy_conditions(&p), READY, "False", p.metadata.generation) {
                Ok(p)
            } else {
                Err(describe(policy_conditions(&p)))
            }
        })
        .await;
        let conditions = policy_conditions(&p);
        assert_well_formed(&format!("UpdatePolicy {name}"), conditions);
        let ready = condition(conditions, READY).expect("Ready");
        assert_eq!(ready.reason, reason, "{name}: {}", describe(conditions));
        assert!(
            ready.message.contains(mentioned),
            "{name}: the message names {mentioned}: {}",
            ready.message
        );
        let resolved = condition(conditions, RESOLVED).expect("Resolved");
        assert_eq!(
            (resolved.status.as_str(), resolved.reason.as_str()),
            ("False", reason)
        );
        assert_eq!(
            p.status.as_ref().map(|s| s.targets),
            Some(0),
            "{name} generates nothing"
        );
    }
    let quiet = quiesce(&env, &running, Duration::from_secs(2), CONVERGE).await;
    eprintln!(
        "[{}] invalid specs reported; quiet after {:.2} s",
        env.namespace,
        quiet.as_secs_f64()
    );

    // Nothing else was rewritten and no device set moved.
    let writes = env.log.writes_since(mark);
    for w in &writes {
        assert!(
            w.contains("/updatepolicies/missing-group")
                || w.contains("/updatepolicies/bad-zone")
                || w.contains("/events"),
            "only the invalid policies (and events about them) are written: {w}"
        );
    }
    let mut after = status_versions(&env).await;
    after.retain(|k, _| k != "UpdatePolicy/missing-group" && k != "UpdatePolicy/bad-zone");
    assert_eq!(after, versions, "the other objects are untouched");
    assert_eq!(
        metric(&running.metrics, BACKEND_CHANGES),
        backend,
        "no device set changed"
    );
    let targets = env.targets().await;
    assert!(
        !targets.iter().any(|t| matches!(
            t.labels().get(POLICY_LABEL).map(String::as_str),
            Some("missing-group" | "bad-zone")
        )),
        "invalid policies generate no EnforcementTarget"
    );

    // Fixing one makes it Ready; the other stays reported.
    env.apply::<UpdatePolicy>(&policy("bad-zone", "iphones", "Europe/Paris"))
        .await;
    eventually("bad-zone fixed", CONVERGE, || async {
        let p = env.policy("bad-zone").await;
        if has(policy_conditions(&p), READY, "True", p.metadata.generation) {
            Ok(())
        } else {
            Err(describe(policy_conditions(&p)))
        }
    })
    .await;
    let missing = env.policy("missing-group").await;
    assert!(has(
        policy_conditions(&missing),
        READY,
        "False",
        missing.metadata.generation
    ));

    env.finish(running).await;
}

/// The last valid versions the operator stored, as `Kind namespace/name` → generation.
fn stored_versions(env: &Env) -> BTreeMap<String, Option<i64>> {
    ddm_update_operator::backend::store::Store::open(&env.config.database)
        .expect("the operator's store opens beside it")
        .last_valid_objects()
        .expect("last valid versions")
        .into_values()
        .map(|row| (format!("{} {}", row.kind, row.key), row.generation))
        .collect()
}

/// Issue 12, item 6: the API server accepts `timeZone: Mars/Base`; the operator does not, and
/// before this change it dropped the policy from the pass and withdrew its enforcements within
/// seconds. Now the last valid spec stays in force, says so, survives a restart, gives way to a
/// fixed spec, and a deletion still withdraws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_keeps_the_last_valid_spec_across_a_restart() {
    let (env, running, mut devices) = examples_with_settled_devices("lastvalid", "lastvalid").await;
    ready_and_quiet(&env, &running, Duration::from_secs(1)).await;
    let mobile = devices.under_policy("mobile");
    let before = devices.held_all();
    let enforced: Vec<usize> = mobile
        .iter()
        .copied()
        .filter(|i| !enforcements(&devices.list[*i]).is_empty())
        .collect();
    assert!(!enforced.is_empty(), "a mobile device holds an enforcement");
    let valid = env.policy("mobile").await;
    let valid_generation = valid.metadata.generation.expect("a generation");
    let key = format!("UpdatePolicy {}/mobile", env.namespace);
    assert_eq!(
        stored_versions(&env).get(&key),
        Some(&Some(valid_generation)),
        "the valid version is stored"
    );
    let generated = env.generated_target_names("mobile").await;
    assert!(!generated.is_empty());

    // What the backend assigns each mobile device (the store's view) and what it holds.
    let check_kept = |snapshot: &Snapshot, devices: &Devices, when: &str| {
        for i in &mobile {
            let id = devices.list[*i].enrollment_id();
            let assigned: BTreeSet<&str> = snapshot
                .records
                .iter()
                .find(|r| r.enrollment_id == id)
                .map(|r| r.assigned.iter().map(String::as_str).collect())
                .unwrap_or_default();
            let held: BTreeSet<&str> = before[*i].keys().map(String::as_str).collect();
            assert_eq!(assigned, held, "{when}: {id} is assigned what it held");
            assert_eq!(devices.held(*i), before[*i], "{when}: {id} holds it still");
        }
    };

    let mut invalid = env.example_policy("mobile");
    invalid["spec"]["deadline"]["timeZone"] = "Mars/Base".into();
    let edited = Instant::now();
    env.apply::<UpdatePolicy>(&invalid).await;
    let check_condition = |p: &UpdatePolicy, when: &str| {
        let conditions = policy_conditions(p);
        assert_well_formed(&format!("{when}: UpdatePolicy mobile"), conditions);
        let resolved = condition(conditions, RESOLVED).expect("Resolved");
        assert_eq!(
            (resolved.status.as_str(), resolved.reason.as_str()),
            ("False", "InvalidSpec"),
            "{when}: {}",
            describe(conditions)
        );
        for part in [
            "spec.deadline.timeZone".to_string(),
            "Mars/Base".to_string(),
            format!("the last valid generation {valid_generation} "),
            "stays in force".to_string(),
        ] {
            assert!(
                resolved.message.contains(&part),
                "{when}: the message says {part:?}: {}",
                resolved.message
            );
        }
        assert_eq!(resolved.observed_generation, p.metadata.generation);
        let ready = condition(conditions, READY).expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert_eq!(
            p.status.as_ref().map(|s| s.targets as usize),
            Some(generated.len()),
            "{when}: its generated targets stay"
        );
    };
    let p = eventually("mobile Resolved=False", CONVERGE, || async {
        let p = env.policy("mobile").await;
        if has(
            policy_conditions(&p),
            RESOLVED,
            "False",
            p.metadata.generation,
        ) {
            Ok(p)
        } else {
            Err(describe(policy_conditions(&p)))
        }
    })
    .await;
    check_condition(&p, "after the invalid edit");
    eprintln!(
        "[{}] invalid edit reported after {:.2} s",
        env.namespace,
        edited.elapsed().as_secs_f64()
    );
    // Over several passes (each FleetGroup touched asks for one; the devices check in), for
    // longer than the 10 s the old code took to withdraw: nothing moves. (The devices do not
    // advance: one that installed its target would lose its enforcement for that reason.)
    let passes = running.snapshots.borrow().pass;
    let watch = Instant::now();
    let mut round = 0;
    while watch.elapsed() < Duration::from_secs(12) {
        round += 1;
        let before_touch = running.snapshots.borrow().pass;
        env.patch_all::<FleetGroup>(
            &json!({"metadata": {"annotations": {"it.example.com/touch": round.to_string()}}}),
        )
        .await;
        pass_after(&running, before_touch, "a pass after a touch").await;
        devices.settle(&running).await;
        check_kept(
            &running.snapshots.borrow().clone(),
            &devices,
            "while invalid",
        );
    }
    assert!(
        running.snapshots.borrow().pass >= passes + 3,
        "several passes ran while the policy was invalid"
    );
    let still: BTreeSet<String> = env
        .targets()
        .await
        .iter()
        .filter(|t| generated_by(t, "mobile"))
        .map(ResourceExt::name_any)
        .collect();
    assert_eq!(still, generated, "the generated targets are kept");
    assert_eq!(
        stored_versions(&env).get(&key),
        Some(&Some(valid_generation)),
        "the invalid version is not stored"
    );

    // A restart on the same store, the object still invalid: still enforced, nothing written.
    running.stop();
    let running = env.start("lastvalid-again").await;
    let mut devices = devices.with_operator(&running);
    pass_after(&running, 0, "a first pass after the restart").await;
    devices.settle(&running).await;
    check_kept(
        &running.snapshots.borrow().clone(),
        &devices,
        "after a restart",
    );
    assert_eq!(
        metric(&running.metrics, BACKEND_CHANGES),
        0.0,
        "no device set changed across the restart"
    );
    let p = eventually("mobile reconciled after the restart", CONVERGE, || async {
        let p = env.policy("mobile").await;
        let snapshot = running.snapshots.borrow().clone();
        if snapshot.partial.invalid.contains_key(&key) && metric(&running.metrics, RECONCILES) > 0.0
        {
            Ok(p)
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    check_condition(&p, "after a restart");

    // Fixed, with a new local time: the condition clears and the new spec takes effect.
    let mut fixed = env.example_policy("mobile");
    fixed["spec"]["deadline"]["localTime"] = "17:30".into();
    env.apply::<UpdatePolicy>(&fixed).await;
    let p = eventually("mobile Ready again", CONVERGE, || async {
        let p = env.policy("mobile").await;
        if has(policy_conditions(&p), READY, "True", p.metadata.generation) {
            Ok(p)
        } else {
            Err(describe(policy_conditions(&p)))
        }
    })
    .await;
    let resolved = condition(policy_conditions(&p), RESOLVED).expect("Resolved");
    assert_eq!(
        resolved.status,
        "True",
        "{}",
        describe(policy_conditions(&p))
    );
    devices.settle(&running).await;
    let snapshot = running.snapshots.borrow().clone();
    assert!(!snapshot.partial.invalid.contains_key(&key));
    for i in &mobile {
        assert_enforced_at_1730(&snapshot, &devices.list[*i]);
    }
    assert!(
        mobile
            .iter()
            .any(|i| !enforcements(&devices.list[*i]).is_empty()),
        "the fixed spec enforces"
    );
    assert_eq!(
        stored_versions(&env).get(&key),
        Some(&p.metadata.generation),
        "the fixed version is stored"
    );

    // Deleted: withdrawn as before, and its stored version forgotten.
    env.api::<UpdatePolicy>()
        .delete("mobile", &DeleteParams::default())
        .await
        .expect("delete the policy");
    env.policy_gone("mobile").await;
    devices.settle(&running).await;
    for i in &mobile {
        let now = devices.held(*i);
        assert!(
            !now.values()
                .any(|(t, _)| t == ENFORCEMENT_TYPE || t == SETTINGS_TYPE),
            "{}: withdrawn once deleted: {now:?}",
            devices.list[*i].enrollment_id()
        );
    }
    eventually("its stored version forgotten", CONVERGE, || async {
        match stored_versions(&env).get(&key) {
            None => Ok(()),
            Some(generation) => Err(format!("still stored at {generation:?}")),
        }
    })
    .await;

    env.finish(running).await;
}
/// What one generated target shows: `(exists, compliance, counts, Compliant reason)`.
async fn target_view(env: &Env, name: &str) -> (bool, Option<String>, String, Option<String>) {
    match env.api::<EnforcementTarget>().get_opt(name).await {
        Ok(Some(t)) => {
            let status = t.status.clone().unwrap_or_default();
            (
                true,
                status.compliance.clone(),
                format!("{:?}", status.devices),
                condition(&status.conditions, COMPLIANT).map(|c| c.reason.clone()),
            )
        }
        Ok(None) => (false, None, String::new(), None),
        Err(e) => panic!("get EnforcementTarget {name}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_targets_count_the_devices_they_take_to_compliance() {
    let (env, running, mut devices) = examples_with_settled_devices("etcount", "etcount").await;

    // The generated target with two devices (the broad ring of the macOS policy).
    let (name, version) = eventually(
        "a generated target with two pending devices",
        CONVERGE,
        || async {
            env.targets()
                .await
                .into_iter()
                .find(|t| {
                    t.labels().contains_key(POLICY_LABEL)
                        && t.status.as_ref().is_some_and(|s| s.devices.pending == 2)
                })
                .map(|t| (t.name_any(), t.spec.target_os_version.clone()))
                .ok_or_else(|| "none yet".to_string())
        },
    )
    .await;
    let version: OsVersion = version.parse().expect("a version");
    let on_it: Vec<usize> = (0..devices.list.len())
        .filter(|i| {
            enforcements(&devices.list[*i])
                .iter()
                .any(|e| devices.targets.get(&e.identifier) == Some(&version))
        })
        .collect();
    assert_eq!(on_it.len(), 2, "{name}: two devices hold its enforcement");

    // Take one device to the target, then the other; after each, what does the target say?
    let mut views = Vec::new();
    for (step, device) in on_it.iter().enumerate() {
        for _ in 0..6 {
            devices.list[*device].advance();
            devices.sync_all(&running).await;
            if devices.list[*device].os().running() >= version {
                break;
            }
        }
        assert!(
            devices.list[*device].os().running() >= version,
            "the device installed"
        );
        devices.settle(&running).await;
        let policy = eventually("the policy counts the device", CONVERGE, || async {
            let counts = policy_counts(&env.policy("macs").await);
            if counts.get("compliant").copied().unwrap_or(0) >= 2 + step as u64 {
                Ok(counts)
            } else {
                Err(format!("{counts:?}"))
            }
        })
        .await;
        quiesce(&env, &running, Duration::from_secs(1), CONVERGE).await;
        let view = target_view(&env, &name).await;
        eprintln!(
            "[{}] {} of 2 devices at {version}: policy macs {policy:?}; {name}: {view:?}",
            env.namespace,
            step + 1
        );
        views.push(view);
    }
    let expected = [
        (true, Some("1/2".to_string()), None::<&str>),
        (true, Some("2/2".to_string()), Some("Compliant")),
    ];
    let mut wrong = Vec::new();
    for (
        step,
        ((exists, compliance, counts, reason), (want_exists, want_compliance, want_reason)),
    ) in views.iter().zip(&expected).enumerate()
    {
        if exists != want_exists
            || compliance != want_compliance
            || want_reason.is_some_and(|r| reason.as_deref() != Some(r))
        {
            wrong.push(format!(
                "after {} of 2 devices reached {version}: {name} exists={exists} compliance={compliance:?} \
                 reason={reason:?} {counts}; expected exists={want_exists} compliance={want_compliance:?} reason={want_reason:?}",
                step + 1
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "a generated EnforcementTarget does not count the devices it took to compliance:\n{}",
        wrong.join("\n")
    );

    // The operator remembers which devices the target took there: a restart on the same
    // database shows the same counts and writes nothing.
    let versions = status_versions(&env).await;
    running.stop();
    let mark = Instant::now();
    let running = env.start("etcount-again").await;
    let mut devices = devices.with_operator(&running);
    reconciled_at_least(&running, versions.len()).await;
    devices.sync_all(&running).await;
    quiesce(&env, &running, Duration::from_secs(2), CONVERGE).await;
    assert_eq!(
        target_view(&env, &name).await,
        views[1],
        "{name} after a restart"
    );
    assert_restart_changed_nothing(&env, &running, mark, &versions).await;

    env.finish(running).await;
}

/// The operator's `/api/v1/status` document (admin port, the kubeconfig's admin token).
async fn operator_status(running: &Running) -> Value {
    http_client(Duration::from_secs(10))
        .expect("HTTP client")
        .get(format!("http://{}/api/v1/status", running.admin_address))
        .bearer_auth(kubeconfig_token())
        .send()
        .await
        .expect("GET /api/v1/status")
        .json()
        .await
        .expect("status is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_policy_with_orphan_leaves_its_devices_their_declarations() {
    let fleet = fleet();
    let env = Env::new("orphan", &fleet, &[]).await;
    let running = env.start("orphan").await;
    env.apply_examples().await;
    // The mobile policy, declared to orphan its devices when deleted.
    let mut mobile = env.example_policy("mobile");
    mobile["spec"]["deletionPolicy"] = "Orphan".into();
    env.apply::<UpdatePolicy>(&mobile).await;
    eventually("the examples Ready", CONVERGE, || all_ready(&env)).await;
    let mut devices = Devices::new(fleet, &running);
    devices.settle(&running).await;
    eventually("Ready after the first reports", CONVERGE, || {
        all_ready(&env)
    })
    .await;
    let before = devices.held_all();
    let mobile_devices = devices.under_policy("mobile");
    let holds = |i: &usize, kind: &str| before[*i].values().any(|(t, _)| t == kind);
    assert!(
        mobile_devices.iter().any(|i| holds(i, ENFORCEMENT_TYPE)),
        "a mobile device holds an enforcement before the deletion"
    );
    assert!(mobile_devices.iter().all(|i| holds(i, SETTINGS_TYPE)));

    // Delete it: the finalizer lets it go once its devices are frozen, with an event saying so.
    let deleted_at = Instant::now();
    env.api::<UpdatePolicy>()
        .delete("mobile", &DeleteParams::default())
        .await
        .expect("delete the policy");
    env.policy_gone("mobile").await;
    eprintln!(
        "[{}] delete with Orphan → gone: {:.2} s",
        env.namespace,
        deleted_at.elapsed().as_secs_f64()
    );
    let orphaned_event = env.event("Orphaned", "mobile").await;
    let note = orphaned_event.note.unwrap_or_default();
    assert!(
        note.contains(&format!("{} device(s)", mobile_devices.len())),
        "{note}"
    );

    // Every device keeps exactly what it held, as served over the DDM endpoints, while the
    // devices report and the operator re-resolves.
    let by = format!("UpdatePolicy {}/mobile", env.namespace);
    let check_kept = |devices: &Devices, when: &str| {
        for (i, was) in before.iter().enumerate() {
            assert_eq!(
                &devices.held(i),
                was,
                "{}: keeps its declarations {when}",
                devices.list[i].enrollment_id()
            );
        }
    };
    let check_status = |status: &Value, when: &str| {
        assert_eq!(
            status["devices"]["frozen"]["orphaned"],
            mobile_devices.len(),
            "{when}: {status:#}"
        );
        assert_eq!(
            status["orphaned"],
            json!([{"by": by, "devices": mobile_devices.len()}]),
            "{when}"
        );
    };
    let passes = running.snapshots.borrow().pass;
    let settled = devices.settle(&running).await;
    for device in &mut devices.list {
        device.advance();
    }
    let reported = devices.settle(&running).await;
    eprintln!(
        "[{}] settled after the deletion in {:.2} s, after the devices reported in {:.2} s",
        env.namespace,
        settled.as_secs_f64(),
        reported.as_secs_f64()
    );
    assert!(
        running.snapshots.borrow().pass > passes,
        "the operator re-resolved"
    );
    check_kept(&devices, "after its policy was deleted");
    check_status(&operator_status(&running).await, "after the deletion");

    // A restart on the same database: still kept.
    running.stop();
    let running = env.start("orphan-again").await;
    let mut devices = devices.with_operator(&running);
    pass_after(&running, 0, "a first pass after the restart").await;
    devices.settle(&running).await;
    check_kept(&devices, "after a restart");
    check_status(&operator_status(&running).await, "after a restart");
    assert_eq!(metric(&running.metrics, BACKEND_CHANGES), 0.0);

    // A policy selecting them again: they are resolved normally (a new deadline shows it).
    let mut again = mobile.clone();
    again["metadata"]["name"] = "mobile-again".into();
    again["spec"]["deletionPolicy"] = "Withdraw".into();
    again["spec"]["deadline"]["localTime"] = "17:30".into();
    env.apply::<UpdatePolicy>(&again).await;
    eventually("mobile-again Ready", CONVERGE, || all_ready(&env)).await;
    devices.settle(&running).await;
    let snapshot = running.snapshots.borrow().clone();
    for i in &mobile_devices {
        let id = devices.list[*i].enrollment_id();
        let assigned: BTreeSet<String> = snapshot
            .records
            .iter()
            .find(|r| r.enrollment_id == id)
            .map(|r| r.assigned.iter().cloned().collect())
            .unwrap_or_default();
        let held: BTreeSet<String> = devices.held(*i).into_keys().collect();
        assert_eq!(held, assigned, "{id}: holds what the backend assigned");
        // Enforced by mobile-again, the only policy due at 17:30.
        assert_enforced_at_1730(&snapshot, &devices.list[*i]);
    }
    assert!(
        mobile_devices
            .iter()
            .any(|i| !enforcements(&devices.list[*i]).is_empty()),
        "some mobile device is enforced by mobile-again"
    );
    let status = operator_status(&running).await;
    assert_eq!(status["devices"]["frozen"]["orphaned"], 0, "{status:#}");
    assert_eq!(status["orphaned"], json!([]));

    env.finish(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_say_what_each_change_did() {
    let (env, running, _devices) = examples_with_settled_devices("events", "events").await;
    ready_and_quiet(&env, &running, Duration::from_secs(1)).await;

    let events: Api<k8s_openapi::api::events::v1::Event> = env.api();
    let notes = || async {
        let mut notes: Vec<String> = events
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some("Resolved")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("mobile")
            })
            .map(|e| {
                format!(
                    "{} (x{})",
                    e.note.unwrap_or_default(),
                    e.series.map_or(1, |s| s.count)
                )
            })
            .collect();
        notes.sort();
        notes
    };
    let first = notes().await;
    eprintln!("[{}] Resolved events for mobile: {first:?}", env.namespace);
    let mobile_targets: Vec<EnforcementTarget> = env
        .targets()
        .await
        .into_iter()
        .filter(|t| generated_by(t, "mobile"))
        .collect();
    assert!(
        mobile_targets.len() >= 2,
        "mobile generates an iOS and an iPadOS target"
    );

    // Each generated target was announced: an event names each platform it resolved.
    let mut missing = Vec::new();
    for t in &mobile_targets {
        let wanted = format!("{} ", t.spec.platform);
        if !first.iter().any(|n| n.starts_with(&wanted)) {
            missing.push(format!(
                "no Resolved event names {} ({} → {})",
                t.name_any(),
                t.spec.platform,
                t.spec.target_os_version
            ));
        }
    }

    // A new deadline: the events say so.
    let mut mobile = env.example_policy("mobile");
    mobile["spec"]["deadline"]["localTime"] = "17:30".into();
    env.apply::<UpdatePolicy>(&mobile).await;
    eventually("the mobile targets moved to 17:30", CONVERGE, || async {
        let moved = env
            .targets()
            .await
            .iter()
            .filter(|t| generated_by(t, "mobile"))
            .all(|t| t.spec.target_local_date_time.ends_with("T17:30:00"));
        if moved {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    quiesce(&env, &running, Duration::from_secs(1), CONVERGE).await;
    let after = notes().await;
    eprintln!("[{}] after the change: {after:?}", env.namespace);
    if !after.iter().any(|n| n.contains("T17:30")) {
        missing.push(format!(
            "no Resolved event mentions the new deadline 17:30: {after:?}"
        ));
    }
    assert!(
        missing.is_empty(),
        "the events do not say what happened:\n{}",
        missing.join("\n")
    );

    env.finish(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_slow_target_watch_changes_nothing() {
    let (env, running, _devices) = examples_with_settled_devices("slowet", "first").await;
    ready_and_quiet(&env, &running, Duration::from_secs(2)).await;
    let versions = status_versions(&env).await;
    running.stop();

    // The resolver's EnforcementTarget cache fills at once, the controllers' 2 s later.
    let mark = Instant::now();
    let running = env
        .start_with_slow_target_lists("second", Duration::from_secs(2))
        .await;
    reconciled_at_least(&running, versions.len()).await;
    let quiet = quiesce(&env, &running, Duration::from_secs(3), CONVERGE).await;
    eprintln!(
        "[{}] restart with slow EnforcementTarget lists: quiet after {:.2} s",
        env.namespace,
        quiet.as_secs_f64()
    );
    assert_restart_changed_nothing(&env, &running, mark, &versions).await;

    env.finish(running).await;
}

// ---------------------------------------------------------------------------------------------
// The enrollment gate in Kubernetes mode
// ---------------------------------------------------------------------------------------------

/// A Mac of the inventory re-enrolls (wiped) while the resolver still takes it to a newer
/// release: the gate holds it at exactly the version its declarations name, with the labels the
/// inventory gives its serial (the example groups select by label), and the policy's status and
/// the metrics count the decision.
/// The macs policy's `status.enrollment`, once it counts `n` UpdateRequired decisions.
async fn update_required_counted(policies: &Api<UpdatePolicy>, n: u64) -> EnrollmentGateStatus {
    eventually(
        &format!("macs status.enrollment counting {n}"),
        CONVERGE,
        || async {
            let policy = policies.get("macs").await.map_err(|e| e.to_string())?;
            let enrollment = policy
                .status
                .and_then(|s| s.enrollment)
                .ok_or("no status.enrollment yet")?;
            if enrollment.decisions.get("UpdateRequired") == Some(&n) {
                Ok(enrollment)
            } else {
                Err(format!("{enrollment:?}"))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enrollment_gate_holds_a_mac_at_its_declared_target_and_counts_it() {
    let devices = fleet();
    let mut env = Env::new("enroll", &devices, &[]).await;
    // The decision is what this test is about: plain MachineInfo, as from a proxy that verified
    // the device's signature already (tests/it/enroll_gate.rs covers the signatures).
    env.config.enroll.allow_unsigned = true;
    let running = env.start("enroll").await;
    env.apply_examples().await;
    eventually("the examples Ready", CONVERGE, || all_ready(&env)).await;

    // A Mac the macs policy takes somewhere, and where.
    let snapshot = running.snapshots.borrow().clone();
    let macs = snapshot
        .partial
        .checked
        .policies
        .iter()
        .position(|p| p.key.name == "macs")
        .expect("the macs policy");
    let (mac, enforcement) = snapshot
        .devices
        .iter()
        .zip(&snapshot.plan.devices)
        .find_map(|(device, plan)| {
            let e = plan.enforcements.iter().find(|e| {
                e.source == ddm_update_operator::resolve::Source::Policy(macs)
                    && e.version.extra().is_none()
            })?;
            Some((device.clone(), e.clone()))
        })
        .expect("a Mac below the macs policy's target");
    let info = ddm_update_operator::sim::enroll::machine_info_plist(&[
        ("UDID", plist::Value::String(mac.enrollment_id.clone())),
        (
            "SERIAL",
            plist::Value::String(mac.serial_number.clone().expect("a serial")),
        ),
        ("PRODUCT", plist::Value::String(mac.model.clone())),
        (
            "VERSION",
            plist::Value::String(
                mac.build_version
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "24A335".into()),
            ),
        ),
        (
            "OS_VERSION",
            plist::Value::String(mac.os_version.to_string()),
        ),
        (
            "SOFTWARE_UPDATE_DEVICE_ID",
            plist::Value::String(mac.software_update_device_id.clone().expect("a board id")),
        ),
        (
            "MDM_CAN_REQUEST_SOFTWARE_UPDATE",
            plist::Value::Boolean(true),
        ),
    ]);
    let post = |address: std::net::SocketAddr| {
        reqwest::Client::new()
            .post(format!("http://{address}/enroll"))
            .header("content-type", "application/xml")
            .body(info.clone())
            .send()
    };
    let response = post(running.address).await.expect("the gate answers");
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(
        body["details"]["OSVersion"],
        enforcement.version.to_string(),
        "the gate and the declarations agree for {} ({})",
        mac.model,
        mac.os_version
    );
    assert_eq!(
        body["details"]["BuildVersion"].as_str(),
        enforcement
            .build
            .as_ref()
            .map(ToString::to_string)
            .as_deref()
    );

    // The policy's status follows (debounced), and only the gated policy gets the block.
    let policies: Api<UpdatePolicy> = env.api();
    let status = update_required_counted(&policies, 1).await;
    assert!(status.last_decision_time.is_some());
    assert_eq!(status.last_problem, None);
    let mobile = policies.get("mobile").await.expect("mobile");
    assert_eq!(mobile.status.and_then(|s| s.enrollment), None);
    let text = running.metrics.encode();
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            "ddm_update_operator_enrollment_decisions_total{{policy=\"{}/macs\",decision=\"UpdateRequired\"}} 1",
            env.namespace
        ))),
        "{text}"
    );
    running.stop();

    // A restart carries the counts on: the next decision makes it 2, since the first start.
    let restarted = env.start("enroll-again").await;
    eventually("the restarted operator resolves", CONVERGE, || async {
        let response = post(restarted.address).await.map_err(|e| e.to_string())?;
        match response.status().as_u16() {
            403 => Ok(()),
            other => Err(format!("HTTP {other}")),
        }
    })
    .await;
    let again = update_required_counted(&policies, 2).await;
    assert_eq!(
        again.since, status.since,
        "counting started at the first start"
    );
    restarted.stop();
}

// ---------------------------------------------------------------------------------------------
// Watching one namespace
// ---------------------------------------------------------------------------------------------

/// With `--watch-namespace` the operator (on a client that could reach every namespace) makes
/// its own namespace Ready and never touches a FleetGroup in another one: no status, no
/// finalizer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_operator_leaves_other_namespaces_alone() {
    let devices = fleet();
    let env = Env::new("nsonly", &devices, &[]).await;
    let other = format!("{}-other", env.namespace);
    let _other_guard = create_namespace(&env.client, &other).await;
    let foreign: Api<FleetGroup> = Api::namespaced(env.client.clone(), &other);
    foreign
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "updates.ddm.dev/v1alpha1",
                "kind": "FleetGroup",
                "metadata": {"name": "not-mine"},
                "spec": {"platforms": ["iOS"]}
            }))
            .expect("a FleetGroup"),
        )
        .await
        .expect("a FleetGroup elsewhere");

    let running = controller::start(
        env.client.clone(),
        env.config.clone(),
        KubeSettings {
            lease_namespace: env.namespace.clone(),
            lease_name: LEASE_NAME.into(),
            identity: format!("nsonly-{}", env.namespace),
            concurrency: 4,
            watch_namespace: Some(env.namespace.clone()),
            lease_timing: None,
        },
    )
    .await
    .expect("the operator starts");
    env.apply_examples().await;
    eventually("the examples Ready", CONVERGE, || all_ready(&env)).await;
    let groups = running.snapshots.borrow().partial.checked.groups.len();
    assert_eq!(
        groups, 6,
        "the resolver saw only this namespace's six FleetGroups"
    );
    let untouched = foreign.get("not-mine").await.expect("still there");
    assert!(untouched.status.is_none(), "{:?}", untouched.status);
    assert!(
        untouched.finalizers().is_empty(),
        "{:?}",
        untouched.finalizers()
    );
    running.stop();
}

/// A replica with a short Lease (4 s, renew deadline 3 s, retry 0.5 s) on the test's store.
async fn start_leasing(env: &Env, identity: &str) -> Running {
    controller::start(
        env.scoped.clone(),
        env.config.clone(),
        KubeSettings {
            lease_namespace: env.namespace.clone(),
            lease_name: LEASE_NAME.into(),
            identity: format!("{identity}-{}", env.namespace),
            concurrency: 4,
            watch_namespace: None,
            lease_timing: Some((
                Duration::from_secs(4),
                Duration::from_secs(3),
                Duration::from_millis(500),
            )),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{identity} does not start: {e}"))
}

/// A leader that cannot renew its Lease steps down before the Lease can expire for anyone
/// else: it stops its passes and controllers and its writes are fenced. The next leader takes
/// over only once the Lease expired, under a newer epoch in the store they share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_steps_down_before_its_lease_expires() {
    let env = Env::new("lease", &fleet(), &[]).await;
    let first = start_leasing(&env, "first").await;
    assert_eq!(
        metric(&first.metrics, "ddm_update_operator_leader_epoch"),
        1.0
    );
    env.apply_examples().await;
    eventually("the examples Ready", CONVERGE, || all_ready(&env)).await;

    let cut = Instant::now();
    env.log
        .leases_unreachable
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut stepped_down = first.stepped_down.clone();
    tokio::time::timeout(Duration::from_secs(10), stepped_down.wait_for(|down| *down))
        .await
        .expect("the leader steps down when it cannot renew")
        .expect("the operator is running");
    let after = cut.elapsed();
    // The last renewal was sent before the cut: stepping down within the 4 s Lease means it
    // stopped before any other replica may have taken over.
    assert!(
        after < Duration::from_secs(4),
        "stepped down {:.2} s after renewals stopped",
        after.as_secs_f64()
    );
    assert_eq!(metric(&first.metrics, "ddm_update_operator_leader"), 0.0);
    assert_eq!(
        metric(&first.metrics, "ddm_update_operator_leader_epoch"),
        0.0
    );

    // Nothing of the deposed leader runs any more: a change makes it no pass.
    let passes = metric(&first.metrics, PASSES);
    let mut mobile = env.example_policy("mobile");
    mobile["spec"]["deadline"]["localTime"] = "17:30".into();
    env.apply::<UpdatePolicy>(&mobile).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        metric(&first.metrics, PASSES),
        passes,
        "a deposed leader makes no pass"
    );

    // The API server is back: a second replica takes the Lease once it expired and fences the
    // first one's epoch in the store they share.
    env.log
        .leases_unreachable
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let waited = Instant::now();
    let second = start_leasing(&env, "second").await;
    assert!(
        waited.elapsed() >= Duration::from_secs(3),
        "the second replica waited for the Lease to expire ({:.2} s)",
        waited.elapsed().as_secs_f64()
    );
    assert_eq!(
        metric(&second.metrics, "ddm_update_operator_leader_epoch"),
        2.0
    );
    eventually("the new leader resolves the change", CONVERGE, || async {
        let snapshot = second.snapshots.borrow().clone();
        match snapshot.applied {
            Ok(_) if snapshot.pass > 0 => Ok(()),
            _ => Err(format!("pass {}: {:?}", snapshot.pass, snapshot.applied)),
        }
    })
    .await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(env.client.clone(), &env.namespace);
    let lease = leases.get(LEASE_NAME).await.expect("the Lease");
    let spec = lease.spec.expect("a spec");
    assert_eq!(
        spec.holder_identity.as_deref(),
        Some(format!("second-{}", env.namespace).as_str())
    );
    assert_eq!(spec.lease_transitions, Some(1), "one hand-over");
    first.stop();
    env.finish(Operator(Some(second))).await;
}

/// The tenancy model (README "Tenancy"): devices are one global pool, so the three kinds are
/// fleet-wide control and for fleet administrators only. On the real API server (RBAC) with two
/// namespaces: a tenant who administers namespace B (the roles the built-in `admin` aggregates)
/// cannot write the kinds in B; the fleet administrators of examples/rbac can, in A and in B;
/// and no aggregated role on the server grants the kinds to namespace admins or editors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_write_fleet_kinds_and_fleet_admins_control_every_namespace() {
    let client = plain_client().await;
    install_crds(&client).await;
    let suffix = unique_suffix();
    let (a, b) = (
        format!("ddm-it-tenant-a-{suffix}"),
        format!("ddm-it-tenant-b-{suffix}"),
    );
    let _guard_a = create_namespace(&client, &a).await;
    let _guard_b = create_namespace(&client, &b).await;
    let rbac = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rbac/fleet-admins.yaml");
    kubectl(&["apply", "-f", &rbac.to_string_lossy()]);
    // Namespace B's administrator, as a real cluster's aggregated `admin` role would make them
    // (this server runs no aggregation controller, so bind the parts it aggregates).
    for role in [
        "system:aggregate-to-admin",
        "system:aggregate-to-edit",
        "system:aggregate-to-view",
    ] {
        let name = format!("tenant-{}", role.trim_start_matches("system:"));
        kubectl(&[
            "-n",
            &b,
            "create",
            "rolebinding",
            &name,
            "--clusterrole",
            role,
            "--user",
            "tenant-b",
        ]);
    }
    let policy = |namespace: &str| {
        json!({
            "apiVersion": "updates.ddm.dev/v1alpha1",
            "kind": "FleetGroup",
            "metadata": {"name": "everyone", "namespace": namespace},
            "spec": {"platforms": ["iOS"]}
        })
        .to_string()
    };
    let apply_as = |who: &[&str], namespace: &str| {
        let mut command = kubectl_command();
        command.args(who).args(["apply", "-f", "-"]);
        command.stdin(std::process::Stdio::piped());
        command.stdout(std::process::Stdio::piped());
        command.stderr(std::process::Stdio::piped());
        let mut child = command.spawn().expect("kubectl runs");
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(policy(namespace).as_bytes())
                .expect("kubectl reads");
        }
        child.wait_with_output().expect("kubectl ends")
    };
    let tenant = ["--as", "tenant-b"];
    let fleet_admin = ["--as", "alice", "--as-group", "ddm-fleet-admins"];

    // The tenant administers B ...
    kubectl(&["--as", "tenant-b", "-n", &b, "create", "configmap", "mine"]);
    // ... but cannot write the fleet kinds there, nor anywhere else.
    for namespace in [&b, &a] {
        let refused = apply_as(&tenant, namespace);
        assert!(
            !refused.status.success(),
            "tenant-b wrote a FleetGroup in {namespace}"
        );
        let why = String::from_utf8_lossy(&refused.stderr);
        assert!(why.contains("forbidden"), "{why}");
    }
    // The fleet administrators can, in both namespaces.
    for namespace in [&a, &b] {
        let applied = apply_as(&fleet_admin, namespace);
        assert!(
            applied.status.success(),
            "fleet admins write in {namespace}: {}",
            String::from_utf8_lossy(&applied.stderr)
        );
    }
    // No role a namespace admin, editor or viewer aggregates grants the fleet kinds.
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client.clone());
    for role in roles.list(&ListParams::default()).await.expect("roles") {
        let labels = role.labels();
        let aggregated = ["admin", "edit", "view"].iter().any(|to| {
            labels.get(&format!("rbac.authorization.k8s.io/aggregate-to-{to}"))
                == Some(&"true".to_string())
        });
        let grants = role.rules.iter().flatten().any(|rule| {
            rule.api_groups
                .iter()
                .flatten()
                .any(|g| g == "updates.ddm.dev" || g == "*")
        });
        assert!(
            !(aggregated && grants),
            "ClusterRole {} gives namespace admins the fleet kinds",
            role.name_any()
        );
    }
}

/// The admin API in Kubernetes mode, against the real API server (RBAC authorization): the
/// operator watching one namespace asks TokenReview who a token is and SubjectAccessReview
/// whether they may `get updatepolicies/status` there. A ServiceAccount with a Role allowing
/// that gets 200, one without gets 403, a made-up token 401; `/metrics` and `/readyz` need no
/// token, and the DDM endpoints are not on the admin port. Cluster-wide (no watched namespace),
/// the namespaced Role is not enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_asks_the_api_server_who_may_read_it() {
    use ddm_update_operator::http::admin::{AdminAuth, Verdict};
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

    let env = Env::new("adminapi", &fleet(), &[]).await;
    let ns = env.namespace.clone();
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &ns);
    for name in ["status-reader", "outsider"] {
        let account: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("an account");
        accounts
            .create(&PostParams::default(), &account)
            .await
            .unwrap_or_else(|e| panic!("creating ServiceAccount {name}: {e}"));
    }
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "ddm-status-reader"},
        "rules": [{
            "apiGroups": ["updates.ddm.dev"],
            "resources": ["updatepolicies/status"],
            "verbs": ["get"]
        }]
    }))
    .expect("a Role");
    Api::<Role>::namespaced(env.client.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .expect("the Role");
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "ddm-status-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ddm-status-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "status-reader", "namespace": ns}]
    }))
    .expect("a RoleBinding");
    Api::<RoleBinding>::namespaced(env.client.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("the RoleBinding");
    // Tokens from the TokenRequest API, as a pod's projected token or `kubectl create token`.
    let token_of = |name: &'static str| {
        let accounts = accounts.clone();
        async move {
            let request = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: Vec::new(),
                    expiration_seconds: Some(600),
                    ..Default::default()
                },
                ..Default::default()
            };
            accounts
                .create_token_request(name, &PostParams::default(), &request)
                .await
                .unwrap_or_else(|e| panic!("a token for {name}: {e}"))
                .status
                .expect("a token")
                .token
        }
    };
    let reader = token_of("status-reader").await;
    let outsider = token_of("outsider").await;

    let running = controller::start(
        env.scoped.clone(),
        env.config.clone(),
        KubeSettings {
            lease_namespace: ns.clone(),
            lease_name: LEASE_NAME.into(),
            identity: format!("adminapi-{ns}"),
            concurrency: 4,
            watch_namespace: Some(ns.clone()),
            lease_timing: None,
        },
    )
    .await
    .expect("the operator starts");
    let client = http_client(Duration::from_secs(10)).expect("HTTP client");
    let admin = running.admin_address;
    let get = |path: &str, token: Option<String>| {
        let client = client.clone();
        let url = format!("http://{admin}{path}");
        async move {
            let mut request = client.get(url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.expect("an answer");
            let code = response.status().as_u16();
            (code, response.text().await.unwrap_or_default())
        }
    };
    let reviews_before = env
        .log
        .since(env.started)
        .iter()
        .filter(|e| e.path.ends_with("/tokenreviews"))
        .count();
    let (code, body) = get("/api/v1/status", Some(reader.clone())).await;
    assert_eq!(code, 200, "the status reader: {body}");
    assert!(
        body.contains("\"devices\"") || body.contains("\"ready\""),
        "{body}"
    );
    let (code, body) = get("/api/v1/rollouts", Some(reader.clone())).await;
    assert_eq!(code, 200, "the status reader, the ledger: {body}");
    let (code, body) = get("/api/v1/status", Some(outsider.clone())).await;
    assert_eq!(code, 403, "a ServiceAccount without the right: {body}");
    assert!(
        body.contains(&format!("system:serviceaccount:{ns}:outsider")),
        "{body}"
    );
    let (code, body) = get("/api/v1/status", Some("made-up-token".into())).await;
    assert_eq!(code, 401, "a made-up token: {body}");
    let (code, body) = get("/api/v1/status", None).await;
    assert_eq!(code, 401, "no token: {body}");
    for path in ["/metrics", "/healthz"] {
        assert_eq!(get(path, None).await.0, 200, "{path} is open");
    }
    assert_eq!(
        get("/ddm/tokens", None).await.0,
        404,
        "no DDM on the admin port"
    );
    // Decisions are cached: the reader again, several times, asks the API server no more.
    for _ in 0..5 {
        assert_eq!(get("/api/v1/status", Some(reader.clone())).await.0, 200);
    }
    let reviews = env
        .log
        .since(env.started)
        .iter()
        .filter(|e| e.path.ends_with("/tokenreviews"))
        .count()
        - reviews_before;
    assert_eq!(
        reviews, 3,
        "one TokenReview per distinct token (reader, outsider, made-up) within 30 s"
    );

    // Cluster-wide, a namespaced Role does not reach: the same reader is refused.
    let cluster_wide = AdminAuth::kubernetes(env.client.clone(), None);
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        axum::http::header::AUTHORIZATION,
        format!("Bearer {reader}").parse().expect("a header"),
    );
    match cluster_wide.check(&headers).await {
        Verdict::Forbidden(why) => assert!(why.contains("cluster-wide"), "{why}"),
        other => panic!("cluster-wide with a namespaced Role: {other:?}"),
    }
    // ...but for the device view it is scoped to the namespaces where the Role reaches: of two
    // namespaces holding resources, the reader sees the one it may read; the outsider none.
    let namespaces: BTreeSet<String> = [ns.clone(), format!("{ns}-elsewhere")].into();
    assert_eq!(
        cluster_wide.scope(&headers, &namespaces).await,
        Ok(ddm_update_operator::view::Scope::Namespaces(
            [ns.clone()].into()
        ))
    );
    let mut outsider_headers = axum::http::HeaderMap::new();
    outsider_headers.insert(
        axum::http::header::AUTHORIZATION,
        format!("Bearer {outsider}").parse().expect("a header"),
    );
    assert!(matches!(
        cluster_wide.scope(&outsider_headers, &namespaces).await,
        Err(Verdict::Forbidden(_))
    ));

    // The device view on the running operator, by the same rules: the reader lists and
    // explains devices; the outsider gets 403 with nothing counted; no token, 401.
    let body: String = eventually("a device list", Duration::from_secs(30), || {
        let get = &get;
        let reader = reader.clone();
        async move {
            let (code, body) = get("/api/v1/devices?limit=500", Some(reader)).await;
            if code == 200 && body.contains("enrollmentId") {
                Ok(body)
            } else {
                Err(format!("{code} {body}"))
            }
        }
    })
    .await;
    let page: Value = serde_json::from_str(&body).expect("a device list");
    let first = page["items"][0]["enrollmentId"]
        .as_str()
        .expect("an enrollment id")
        .to_string();
    let show = format!("/api/v1/devices/{first}");
    let (code, body) = get(&show, Some(reader.clone())).await;
    assert_eq!(code, 200, "{body}");
    let view: Value = serde_json::from_str(&body).expect("a device view");
    assert_eq!(view["enrollmentId"], first.as_str());
    assert!(
        view["explanation"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "{view}"
    );
    let (code, body) = get("/api/v1/devices", Some(outsider.clone())).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        !body.contains("enrollmentId") && !body.contains(&first),
        "{body}"
    );
    let (code, body) = get(&show, Some(outsider.clone())).await;
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("enrollmentId"), "{body}");
    assert_eq!(get("/api/v1/devices", None).await.0, 401);
    let (code, body) = get("/api/v1/devices/no-such-device", Some(reader.clone())).await;
    assert_eq!(code, 404, "{body}");
    assert!(
        body.contains("no-such-device"),
        "says what was searched: {body}"
    );
    let (code, body) = get("/api/v1/devices?state=sideways", Some(reader.clone())).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("state"), "names the parameter: {body}");
    env.finish(Operator(Some(running))).await;
}
