//! DDM server benchmarks: check-in throughput and latency of our router on a real loopback
//! listener, durable status ingestion, and the store at 100,000 devices.
//! Run with `cargo bench --bench ddm`. Each figure is printed next to a baseline measured in the
//! same run (the machines are shared and noisy), as a ratio.
//!
//! 1. `GET declaration-items`, `tokens` and `declaration/…` for 1,000 enrolled devices against a
//!    trivial axum handler, same client (reqwest, keep-alive pool), same machine. Targets from
//!    the issue: ≥ 50% of the trivial handler's requests per second, p99 under 10 ms.
//! 2. Status reports through `PUT status` and straight into `StatusWriter::record`, against plain
//!    SQLite inserts of the raw body (one durable transaction per row, and one for all of them).
//!    Target: ≥ 5,000 reports/s.
//! 3. 100,000 enrollments over a few hundred declarations: store size, memory, and a catalog
//!    change that retargets every device, which must write O(distinct declarations + changed
//!    assignments) rows, not O(devices × declarations).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use ddm_update_operator::backend::embedded::{Embedded, StatusWriter};
use ddm_update_operator::backend::store::Store;
use ddm_update_operator::backend::{ApplyReport, Assignment};
use ddm_update_operator::catalog::{OsVersion, Platform};
use ddm_update_operator::declarations::{
    self, Declaration, SETTINGS_TYPE, SUBSCRIPTIONS_TYPE, content_hash,
};
use ddm_update_operator::http::ddm::{DdmState, ENROLLMENT_HEADER};
use ddm_update_operator::http::{self, serve};
use ddm_update_operator::metrics::Metrics;
use ddm_update_operator::operator::bootstrap_declarations;
use ddm_update_operator::status::{StatusReport, merge};
use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode, Url};
use rusqlite::{Connection, params};
use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// Counts live heap bytes and their peak while switched on (part 3 only, so the HTTP figures
/// do not pay for two contended atomics per allocation).
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() && COUNTING.load(Ordering::Relaxed) {
            let size = layout.size() as isize;
            let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live heap bytes now (counted since counting was switched on).
fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Peak heap growth while `f` runs, in bytes.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, isize) {
    let before = live();
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - before)
}

/// Median wall time of `runs` calls; each result is dropped after its clock stops.
fn median<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let out = black_box(f());
            let elapsed = start.elapsed();
            drop(out);
            elapsed
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT MET" }
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// On-CPU time of this process's threads named `name` (schedstat), summed.
fn thread_cpu(name: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let mut total = 0u64;
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        total += std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(total)
}

/// Bytes this process has passed to write(2) and friends so far (`wchar` of /proc/self/io).
fn written_bytes() -> i64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Resets `VmHWM` to the current RSS (Linux `clear_refs` 5); false when not allowed.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The database file plus its WAL and shared-memory index, in bytes.
fn store_bytes(path: &Path) -> (u64, u64, u64) {
    let size = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::fs::metadata(PathBuf::from(name)).map_or(0, |m| m.len())
    };
    (size(""), size("-wal"), size("-shm"))
}

/// A plain SQLite file, configured as the store is (WAL, synchronous=FULL).
fn plain_db(path: &Path, schema: &str) -> Connection {
    let connection = Connection::open(path).expect("open plain sqlite");
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    connection
        .pragma_update(None, "synchronous", "FULL")
        .expect("synchronous");
    connection.execute_batch(schema).expect("schema");
    connection
}

// ---------------------------------------------------------------------------------------------
// The fleet's declarations.

fn enrollment_id(i: usize) -> String {
    format!(
        "00008110-{:016X}",
        0x001A_2B3C_0000_0000u64 + i as u64 * 7919
    )
}

/// Enforcements, settings and subscriptions as the resolver builds them; every device gets one
/// of each plus the activation naming them. There are `2 × enforcements` distinct sets.
struct FleetDeclarations {
    enforcements: Vec<Declaration>,
    settings: Vec<Declaration>,
    subscriptions: Vec<Declaration>,
}

impl FleetDeclarations {
    fn new(enforcements: usize, settings: usize) -> Self {
        const VERSIONS: [&str; 5] = ["26.0.1", "26.1", "18.7.2", "15.7.2", "26.2"];
        let enforcements = (0..enforcements)
            .map(|k| {
                let version: OsVersion = VERSIONS[k % VERSIONS.len()].parse().expect("version");
                let build = format!("23B{}", 100 + k);
                let deadline = jiff::civil::date(2026, 9, 1 + (k % 28) as i8).at(19, 0, 0, 0);
                declarations::enforcement(&version, Some(&build), deadline, None)
            })
            .collect();
        let settings = (0..settings)
            .map(|k| {
                Declaration::hashed(
                    SETTINGS_TYPE,
                    "ddm.settings",
                    json!({
                        "Notifications": k % 2 == 0,
                        "Deferrals": {"CombinedPeriodInDays": 3 + k},
                        "RecommendedCadence": "All",
                        "AutomaticActions": {"Download": "AlwaysOn", "InstallOSUpdates": "AlwaysOn"},
                        "RapidSecurityResponse": {"Enable": true, "EnableRollback": k % 3 == 0},
                    }),
                )
            })
            .collect();
        // Three platforms whose status items differ, so three distinct subscriptions.
        let subscriptions = [
            (Platform::Ios, "18.6"),
            (Platform::Ios, "17.6.1"),
            (Platform::TvOs, "18.4"),
        ]
        .iter()
        .map(|(platform, version)| {
            let version: OsVersion = version.parse().expect("version");
            let items: Vec<Value> = declarations::status_items_for(*platform, &version)
                .map(|name| json!({ "Name": name }))
                .collect();
            Declaration::hashed(
                SUBSCRIPTIONS_TYPE,
                "ddm.status",
                json!({ "StatusItems": items }),
            )
        })
        .collect();
        FleetDeclarations {
            enforcements,
            settings,
            subscriptions,
        }
    }

    fn combos(&self) -> usize {
        2 * self.enforcements.len()
    }

    /// Every distinct declaration used and, per combination, its identifiers. With
    /// `enforcement`, every combination takes that one instead of its own.
    fn sets(&self, enforcement: Option<&Declaration>) -> (Vec<Declaration>, Vec<Vec<String>>) {
        let (e_count, s_count) = (self.enforcements.len(), self.settings.len());
        let mut seen: HashSet<String> = HashSet::new();
        let mut used: Vec<Declaration> = Vec::new();
        let mut sets = Vec::new();
        for c in 0..self.combos() {
            let e = enforcement.unwrap_or(&self.enforcements[c % e_count]);
            // c and c + e_count share an enforcement; their settings differ by 1 + e_count.
            let s = &self.settings[(c / e_count + c) % s_count];
            let u = &self.subscriptions[c % self.subscriptions.len()];
            let a = declarations::activation(&[&e.identifier, &s.identifier, &u.identifier]);
            let ids = vec![
                e.identifier.clone(),
                s.identifier.clone(),
                u.identifier.clone(),
                a.identifier.clone(),
            ];
            for d in [e, s, u, &a] {
                if seen.insert(d.identifier.clone()) {
                    used.push(d.clone());
                }
            }
            sets.push(ids);
        }
        (used, sets)
    }
}

fn assignments(sets: &[Vec<String>], devices: usize) -> Vec<Assignment> {
    (0..devices)
        .map(|i| Assignment {
            enrollment_id: enrollment_id(i),
            identifiers: sets[i % sets.len()].clone(),
        })
        .collect()
}

/// An incremental report as an iPhone sends it mid-update: device.* and softwareupdate.* items.
/// `seq` makes successive reports of one device differ.
fn report_body(i: usize, seq: usize) -> Vec<u8> {
    let body = json!({
        "StatusItems": {
            "device": {
                "identifier": {"serial-number": format!("F2LX{:08}", i)},
                "model": {
                    "family": "iPhone",
                    "identifier": "iPhone16,2",
                    "marketing-name": "iPhone 15 Pro Max",
                    "number": "MU2P3LL/A",
                },
                "operating-system": {
                    "build-version": "22G86",
                    "family": "iOS",
                    "marketing-name": "iOS 18.6",
                    "supplemental": {"build-version": "22G86", "extra-version": ""},
                    "version": "18.6",
                },
            },
            "softwareupdate": {
                "install-state": "downloading",
                "pending-version": {
                    "os-version": "26.0.1",
                    "build-version": "23A355",
                    "target-local-date-time": "2026-09-15T19:00:00",
                },
                "failure-reason": {
                    "count": seq,
                    "reason": "Download failed: the network connection was lost.",
                    "timestamp": format!("2026-09-10T08:{:02}:{:02}Z", seq / 60 % 60, seq % 60),
                },
                "install-reason": {
                    "reason": ["declaration"],
                    "declaration-id": "ddm.enforce.26.0.1-23A355-20260915T1900",
                },
                "device-id": "iPhone16,2",
                "beta-enrollment": "",
            },
        },
        "Errors": [],
        "FullReport": false,
    });
    serde_json::to_vec(&body).expect("report json")
}

// ---------------------------------------------------------------------------------------------
// Serving and load.

fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Serves `router` on 127.0.0.1 as `run` serves its device side (the server with its default
/// limits); drop the sender to stop it.
fn serve_on(
    runtime: &Runtime,
    router: Router,
    metrics: Arc<Metrics>,
) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind loopback");
    let address = listener.local_addr().expect("local address");
    let (stop, stopped) = oneshot::channel::<()>();
    runtime.spawn(serve::serve(
        listener,
        router,
        serve::Limits::default(),
        serve::Side::Device,
        metrics,
        async {
            let _ = stopped.await;
        },
    ));
    (address, stop)
}

/// One request a client sends; clients walk the list round-robin.
struct Request {
    url: Url,
    enrollment: HeaderValue,
    body: Option<Bytes>,
}

struct Load {
    requests: usize,
    failures: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

fn percentile(sorted: &[u64], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    Duration::from_nanos(sorted[rank])
}

/// `clients` keep-alive clients, each sending one request at a time for `duration`.
async fn drive(
    client: &reqwest::Client,
    method: &Method,
    requests: &Arc<Vec<Request>>,
    clients: usize,
    duration: Duration,
) -> Load {
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|t| {
            let (client, method, requests) = (client.clone(), method.clone(), requests.clone());
            tokio::spawn(async move {
                let mut latencies: Vec<u64> = Vec::with_capacity(1 << 15);
                let mut failures = 0usize;
                let mut k = t;
                while Instant::now() < deadline {
                    let request = &requests[k % requests.len()];
                    k += clients;
                    let mut builder = client
                        .request(method.clone(), request.url.clone())
                        .header(ENROLLMENT_HEADER, request.enrollment.clone());
                    if let Some(body) = &request.body {
                        builder = builder.body(body.clone());
                    }
                    let sent = Instant::now();
                    let ok = match builder.send().await {
                        Ok(response) => {
                            let status = response.status();
                            response.bytes().await.is_ok() && status == StatusCode::OK
                        }
                        Err(_) => false,
                    };
                    latencies.push(sent.elapsed().as_nanos() as u64);
                    failures += usize::from(!ok);
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (l, f) = task.await.expect("client task");
        latencies.extend(l);
        failures += f;
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Load {
        requests: latencies.len(),
        failures,
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
    }
}

/// Medians over rounds of one target.
#[derive(Default)]
struct Rounds {
    per_second: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    /// CPU time of the server's threads per request, in µs.
    server_cpu: Vec<f64>,
    requests: usize,
    failures: usize,
}

impl Rounds {
    fn push(&mut self, load: &Load, server_cpu: Duration) {
        self.server_cpu
            .push(server_cpu.as_secs_f64() * 1e6 / load.requests.max(1) as f64);
        self.per_second.push(load.per_second);
        self.p50.push(ms(load.p50));
        self.p99.push(ms(load.p99));
        self.requests += load.requests;
        self.failures += load.failures;
    }

    fn medians(&self) -> (f64, f64, f64) {
        (
            median_f64(self.per_second.clone()),
            median_f64(self.p50.clone()),
            median_f64(self.p99.clone()),
        )
    }
}

const CLIENTS: usize = 32;
const ROUNDS: usize = 3;
const RUN: Duration = Duration::from_secs(4);
const WARMUP: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------

fn main() {
    // Criterion-style flags (`--bench`) are passed by cargo; nothing to configure.
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let server_rt = runtime("server");
    let client_rt = runtime("client");
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(CLIENTS * 2)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client");

    // The server under test: our router over a durable store, as `run` wires it.
    const DEVICES: usize = 1_000;
    let fleet = FleetDeclarations::new(4, 2);
    let (used, sets) = fleet.sets(None);
    let store_path = dir.path().join("ddm.sqlite");
    let store = Arc::new(Store::open(&store_path).expect("store"));
    store
        .apply(&used, &assignments(&sets, DEVICES))
        .expect("assign 1,000 devices");
    let embedded = Embedded::new(store.clone(), None);
    let metrics = Arc::new(Metrics::new());
    let (reported, mut reported_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    // The resolver loop would consume these; drain them so the queue does not grow.
    server_rt.spawn(async move { while reported_rx.recv().await.is_some() {} });
    let ddm_state = Arc::new(DdmState {
        store: store.clone(),
        reports: embedded.reports.clone(),
        receive_key: None,
        send_key: None,
        bootstrap: bootstrap_declarations(),
        reported,
        metrics: metrics.clone(),
        claims: Default::default(),
    });
    let (ours, stop_ours) = serve_on(
        &server_rt,
        http::device_router("/ddm", ddm_state),
        metrics.clone(),
    );
    let trivial = Router::new().route(
        "/ping",
        get(|| async { ([(CONTENT_TYPE, "application/json")], r#"{"ok":true}"#) }),
    );
    let (base, stop_base) = serve_on(&server_rt, trivial, metrics);

    let devices: Vec<(String, HeaderValue)> = (0..DEVICES)
        .map(|i| {
            let id = enrollment_id(i);
            let header = HeaderValue::from_str(&id).expect("header value");
            (id, header)
        })
        .collect();
    let url = |address: SocketAddr, path: &str| -> Url {
        format!("http://{address}{path}").parse().expect("url")
    };
    let get_list = |path: &dyn Fn(usize) -> String, address: SocketAddr| -> Arc<Vec<Request>> {
        Arc::new(
            devices
                .iter()
                .enumerate()
                .map(|(i, (_, header))| Request {
                    url: url(address, &path(i)),
                    enrollment: header.clone(),
                    body: None,
                })
                .collect(),
        )
    };
    let targets: Vec<(&str, Arc<Vec<Request>>)> = vec![
        (
            "baseline: trivial axum GET (fixed JSON)",
            get_list(&|_| "/ping".into(), base),
        ),
        (
            "GET /ddm/declaration-items",
            get_list(&|_| "/ddm/declaration-items".into(), ours),
        ),
        ("GET /ddm/tokens", get_list(&|_| "/ddm/tokens".into(), ours)),
        (
            "GET /ddm/declaration/configuration/{id}",
            get_list(
                &|i| format!("/ddm/declaration/configuration/{}", sets[i % sets.len()][0]),
                ours,
            ),
        ),
    ];

    // Sanity: the answers are what the store holds.
    client_rt.block_on(async {
        let (id, header) = &devices[7];
        let served = store.served_set(id).expect("device 7 is assigned");
        let get = |url: Url| {
            client
                .get(url)
                .header(ENROLLMENT_HEADER, header.clone())
                .send()
        };
        let items = get(targets[1].1[7].url.clone())
            .await
            .expect("items")
            .bytes()
            .await
            .expect("items body");
        assert_eq!(items, served.items, "declaration-items body");
        let tokens: Value = get(targets[2].1[7].url.clone())
            .await
            .expect("tokens")
            .json()
            .await
            .expect("tokens json");
        assert_eq!(
            tokens["SyncTokens"]["DeclarationsToken"],
            served.token.as_str()
        );
        let declaration: Value = get(targets[3].1[7].url.clone())
            .await
            .expect("declaration")
            .json()
            .await
            .expect("declaration json");
        assert_eq!(declaration["Identifier"], sets[7 % sets.len()][0].as_str());
    });

    println!(
        "== check-ins: {DEVICES} enrolled devices over {} distinct sets ({} declarations), {CLIENTS} keep-alive clients (reqwest), {ROUNDS} interleaved rounds × {RUN:?}, server and clients each on a 2-worker tokio runtime, loopback",
        sets.len(),
        used.len()
    );
    let mut results: Vec<Rounds> = targets.iter().map(|_| Rounds::default()).collect();
    for _ in 0..ROUNDS {
        for ((_, requests), rounds) in targets.iter().zip(results.iter_mut()) {
            client_rt.block_on(drive(&client, &Method::GET, requests, CLIENTS, WARMUP));
            let cpu_before = thread_cpu("server");
            let load = client_rt.block_on(drive(&client, &Method::GET, requests, CLIENTS, RUN));
            rounds.push(&load, thread_cpu("server").saturating_sub(cpu_before));
        }
    }
    let (base_rps, base_p50, base_p99) = results[0].medians();
    let base_cpu = median_f64(results[0].server_cpu.clone());
    for (index, ((name, _), rounds)) in targets.iter().zip(&results).enumerate() {
        let (rps, p50, p99) = rounds.medians();
        let cpu = median_f64(rounds.server_cpu.clone());
        print!(
            "{name:<42} {rps:>8.0} req/s  p50 {p50:>6.3} ms  p99 {p99:>6.3} ms  server CPU {cpu:>5.1} µs/req"
        );
        if rounds.failures > 0 {
            print!(
                "  ({} of {} requests failed)",
                rounds.failures, rounds.requests
            );
        }
        if index == 0 {
            println!();
        } else {
            println!(
                "  (×{:.2} of baseline req/s, target ≥ 0.50: {}; p99 ×{:.2} of baseline, target < 10 ms: {}; p50 ×{:.2}; server CPU ×{:.2})",
                rps / base_rps,
                verdict(rps / base_rps >= 0.5),
                p99 / base_p99,
                verdict(p99 < 10.0),
                p50 / base_p50,
                cpu / base_cpu,
            );
        }
    }

    // ---- 2. Status ingestion.
    // Three reports per device that differ (as a device's successive reports do), so no write
    // is skipped for rewriting identical bytes; clients walk them device by device.
    const VARIANTS: usize = 3;
    let reports: Vec<(String, Bytes)> = (0..DEVICES * VARIANTS)
        .map(|k| {
            let (i, seq) = (k % DEVICES, k / DEVICES);
            (devices[i].0.clone(), Bytes::from(report_body(i, seq)))
        })
        .collect();
    let body_len = reports.iter().map(|(_, b)| b.len()).sum::<usize>() / reports.len();
    let puts: Arc<Vec<Request>> = Arc::new(
        reports
            .iter()
            .enumerate()
            .map(|(k, (_, body))| Request {
                url: url(ours, "/ddm/status"),
                enrollment: devices[k % DEVICES].1.clone(),
                body: Some(body.clone()),
            })
            .collect(),
    );
    println!(
        "\n== status ingestion: incremental reports of ~{body_len} bytes (device.* and softwareupdate.*), {DEVICES} enrollments, synchronous=FULL"
    );
    let mut http_rounds = Rounds::default();
    let mut writer_cpu = Vec::new();
    for _ in 0..ROUNDS {
        let (server_before, writer_before) = (thread_cpu("server"), thread_cpu("status-writer"));
        let load = client_rt.block_on(drive(&client, &Method::PUT, &puts, CLIENTS, RUN));
        http_rounds.push(&load, thread_cpu("server").saturating_sub(server_before));
        writer_cpu.push(
            thread_cpu("status-writer")
                .saturating_sub(writer_before)
                .as_secs_f64()
                * 1e6
                / load.requests.max(1) as f64,
        );
    }
    let (http_rps, http_p50, http_p99) = http_rounds.medians();
    let http_server_cpu = median_f64(http_rounds.server_cpu.clone());
    let http_writer_cpu = median_f64(writer_cpu);

    const WRITER_TASKS: usize = 256;
    let writer = embedded.reports.clone();
    let work = Arc::new(reports.clone());
    let (mut direct, mut direct_cpu) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let writer_before = thread_cpu("status-writer");
        let (count, failures, elapsed) =
            client_rt.block_on(record_directly(&writer, &work, WRITER_TASKS, RUN));
        assert_eq!(failures, 0, "StatusWriter::record failed");
        direct.push(count as f64 / elapsed.as_secs_f64());
        direct_cpu.push(
            thread_cpu("status-writer")
                .saturating_sub(writer_before)
                .as_secs_f64()
                * 1e6
                / count.max(1) as f64,
        );
    }
    let direct_rps = median_f64(direct);
    let direct_cpu = median_f64(direct_cpu);

    // Where the writer's time goes: full batches straight into `record_reports` (one
    // transaction and one fsync each), the bytes it writes, and the JSON part alone.
    const BATCH: usize = 1024;
    const BATCHES: usize = 5;
    let batches: Vec<Vec<(String, StatusReport, Vec<u8>)>> = (0..BATCHES)
        .map(|b| {
            (0..BATCH)
                .map(|n| {
                    let i = n % DEVICES;
                    let body = report_body(i, VARIANTS + b);
                    let report = StatusReport::from_slice(&body).expect("report parses");
                    (devices[i].0.clone(), report, body)
                })
                .collect()
        })
        .collect();
    let written_before = written_bytes();
    let mut batch_times: Vec<Duration> = batches
        .iter()
        .map(|batch| {
            let start = Instant::now();
            store.record_reports(batch).expect("record_reports");
            start.elapsed()
        })
        .collect();
    let batch_written = (written_bytes() - written_before) as f64 / (BATCHES * BATCH) as f64;
    batch_times.sort();
    let batch_time = batch_times[BATCHES / 2];
    let stored_state: Vec<u8> = {
        let mut items = serde_json::Map::new();
        merge(&mut items, &batches[0][0].1);
        serde_json::to_vec(&items).expect("state json")
    };
    let json_time = median(5, || {
        for (_, report, _) in &batches[1] {
            let mut items: serde_json::Map<String, Value> =
                serde_json::from_slice(black_box(&stored_state)).unwrap_or_default();
            merge(&mut items, report);
            black_box(serde_json::to_vec(&items).expect("state json"));
            black_box(serde_json::to_vec(&report.errors).expect("errors json"));
        }
    });
    let parse_floor = median(5, || {
        for (_, body) in &reports[..BATCH] {
            black_box(serde_json::from_slice::<Value>(black_box(body)).expect("json"));
        }
    });
    let parse_time = median(5, || {
        for (_, body) in &reports[..BATCH] {
            black_box(StatusReport::from_slice(black_box(body)).expect("report"));
        }
    });
    let items = store
        .device_items(&devices[3].0)
        .expect("device_items")
        .expect("device 3 reported");
    assert_eq!(items["softwareupdate"]["install-state"], "downloading");
    let counts = store.counts().expect("counts");

    // Baselines: the same raw bodies into a plain append-only table.
    let reports_measured = (http_rps * RUN.as_secs_f64()) as usize;
    let per_row_cap = Duration::from_secs(3);
    let mut plain = plain_db(
        &dir.path().join("plain-reports.sqlite"),
        "CREATE TABLE raw (id INTEGER PRIMARY KEY, enrollment_id TEXT NOT NULL, body BLOB NOT NULL);",
    );
    let insert_sql = "INSERT INTO raw (enrollment_id, body) VALUES (?1, ?2)";
    let written_before = written_bytes();
    let start = Instant::now();
    let mut per_row = 0usize;
    {
        let mut insert = plain.prepare(insert_sql).expect("prepare");
        while per_row < reports_measured.max(1) && start.elapsed() < per_row_cap {
            let (id, body) = &reports[per_row % reports.len()];
            insert.execute(params![id, &body[..]]).expect("insert");
            per_row += 1;
        }
    }
    let per_row_rps = per_row as f64 / start.elapsed().as_secs_f64();
    let per_row_written = (written_bytes() - written_before) as f64 / per_row as f64;
    let big = reports_measured.max(1);
    let written_before = written_bytes();
    let start = Instant::now();
    {
        let transaction = plain.transaction().expect("transaction");
        {
            let mut insert = transaction.prepare(insert_sql).expect("prepare");
            for n in 0..big {
                let (id, body) = &reports[n % reports.len()];
                insert.execute(params![id, &body[..]]).expect("insert");
            }
        }
        transaction.commit().expect("commit");
    }
    let big_rps = big as f64 / start.elapsed().as_secs_f64();
    let big_written = (written_bytes() - written_before) as f64 / big as f64;
    drop(plain);

    println!(
        "baseline: plain INSERT, one durable transaction per row ({per_row} rows, capped at {per_row_cap:?}): {per_row_rps:>8.0} rows/s, {per_row_written:.0} bytes written per row"
    );
    println!(
        "ceiling:  plain INSERT, one transaction for {big} rows:                    {big_rps:>8.0} rows/s, {big_written:.0} bytes written per row"
    );
    println!(
        "PUT /ddm/status, {CLIENTS} clients:           {http_rps:>8.0} reports/s  p50 {http_p50:.3} ms  p99 {http_p99:.3} ms  (×{:.1} of per-row baseline, ×{:.2} of ceiling; target ≥ 5,000/s: {})",
        http_rps / per_row_rps,
        http_rps / big_rps,
        verdict(http_rps >= 5_000.0)
    );
    println!(
        "  CPU per report: server threads {http_server_cpu:.1} µs, status-writer thread {http_writer_cpu:.1} µs (one thread: at most {:.0} reports/s if it never waited)",
        1e6 / http_writer_cpu
    );
    if http_rounds.failures > 0 {
        println!(
            "  ({} of {} PUTs failed)",
            http_rounds.failures, http_rounds.requests
        );
    }
    println!(
        "StatusWriter::record, {WRITER_TASKS} tasks:    {direct_rps:>8.0} reports/s  (×{:.1} of per-row baseline, ×{:.2} of ceiling; target ≥ 5,000/s: {})",
        direct_rps / per_row_rps,
        direct_rps / big_rps,
        verdict(direct_rps >= 5_000.0)
    );
    println!("  CPU per report: status-writer thread {direct_cpu:.1} µs");
    let per_report = |d: Duration| d.as_secs_f64() * 1e6 / BATCH as f64;
    println!(
        "Store::record_reports, {BATCH}-report batches: {:.1} µs/report (×{:.1} of the ceiling's {:.1} µs/row), {batch_written:.0} bytes written per report (×{:.1} of the ceiling's); the JSON part alone (parse state, merge, serialise) {:.1} µs/report",
        per_report(batch_time),
        per_report(batch_time) * big_rps / 1e6,
        1e6 / big_rps,
        batch_written / big_written,
        per_report(json_time),
    );
    println!(
        "StatusReport::from_slice (in the handler): {:.1} µs/report (×{:.2} of serde_json::Value's {:.1} µs)",
        per_report(parse_time),
        parse_time.as_secs_f64() / parse_floor.as_secs_f64(),
        per_report(parse_floor)
    );
    let (db, wal, _) = store_bytes(&store_path);
    println!(
        "store after ingestion: {:?}, {:.1} MiB file + {:.1} MiB WAL = {:.1} KiB per reporting enrollment (×100,000 ≈ {:.1} GiB)",
        counts,
        mib(db as f64),
        mib(wal as f64),
        db as f64 / 1024.0 / DEVICES as f64,
        db as f64 * 100_000.0 / DEVICES as f64 / (1024.0 * 1024.0 * 1024.0)
    );

    // Tear the server down before the memory figures.
    drop(stop_ours);
    drop(stop_base);
    drop((targets, puts, work, writer, embedded, store, client));
    client_rt.shutdown_timeout(Duration::from_secs(2));
    server_rt.shutdown_timeout(Duration::from_secs(2));

    // ---- 3. 100,000 devices.
    scale(dir.path());
    println!("\n(whole bench: {:.0} s)", started.elapsed().as_secs_f64());
}

/// `tasks` concurrent tasks parse and record reports for `duration`: (recorded, failed, time).
async fn record_directly(
    writer: &StatusWriter,
    work: &Arc<Vec<(String, Bytes)>>,
    tasks: usize,
    duration: Duration,
) -> (usize, usize, Duration) {
    let start = Instant::now();
    let deadline = start + duration;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (writer, work) = (writer.clone(), work.clone());
            tokio::spawn(async move {
                let (mut done, mut failed) = (0usize, 0usize);
                let mut k = t;
                while Instant::now() < deadline {
                    let (id, body) = &work[k % work.len()];
                    k += tasks;
                    let report = StatusReport::from_slice(body).expect("report parses");
                    match writer.record(id.clone(), report, body.to_vec()).await {
                        Ok(()) => done += 1,
                        Err(_) => failed += 1,
                    }
                }
                (done, failed)
            })
        })
        .collect();
    let (mut done, mut failed) = (0, 0);
    for handle in handles {
        let (d, f) = handle.await.expect("writer task");
        done += d;
        failed += f;
    }
    (done, failed, start.elapsed())
}

/// Part 3: 100,000 enrollments over a few hundred declarations, then a retarget of all.
fn scale(dir: &Path) {
    const DEVICES: usize = 100_000;
    let fleet = FleetDeclarations::new(150, 6);
    let (used, sets) = fleet.sets(None);
    assert_eq!(
        sets.iter().collect::<HashSet<_>>().len(),
        fleet.combos(),
        "distinct sets"
    );
    let per_device = sets[0].len();
    println!(
        "\n== {DEVICES} devices over {} distinct sets of {per_device} ({} distinct declarations), file store, synchronous=FULL",
        sets.len(),
        used.len()
    );

    // Baseline: the bare mapping enrollment → set id in a plain table, and in a HashMap.
    let set_ids: Vec<String> = sets
        .iter()
        .map(|s| content_hash(&[s.join(",").as_bytes()]))
        .collect();
    let plain_path = dir.join("plain-map.sqlite");
    let mut plain = plain_db(
        &plain_path,
        "CREATE TABLE map (enrollment_id TEXT PRIMARY KEY, set_id TEXT NOT NULL) WITHOUT ROWID;",
    );
    let write_map = |plain: &mut Connection, sql: &str, offset: usize| {
        let start = Instant::now();
        let transaction = plain.transaction().expect("transaction");
        {
            let mut statement = transaction.prepare(sql).expect("prepare");
            for i in 0..DEVICES {
                statement
                    .execute(params![
                        enrollment_id(i),
                        set_ids[(i + offset) % set_ids.len()]
                    ])
                    .expect("write");
            }
        }
        transaction.commit().expect("commit");
        start.elapsed()
    };
    let plain_assign = write_map(
        &mut plain,
        "INSERT INTO map (enrollment_id, set_id) VALUES (?1, ?2)",
        0,
    );
    let (plain_db_bytes, plain_wal_bytes, _) = store_bytes(&plain_path);
    let written_before = written_bytes();
    let plain_retarget = write_map(
        &mut plain,
        "UPDATE map SET set_id = ?2 WHERE enrollment_id = ?1",
        1,
    );
    let plain_retarget_written = written_bytes() - written_before;
    let start = Instant::now();
    let reloaded: HashMap<String, String> = plain
        .prepare("SELECT enrollment_id, set_id FROM map")
        .expect("prepare")
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let plain_reload = start.elapsed();
    assert_eq!(reloaded.len(), DEVICES);
    drop((reloaded, plain));

    COUNTING.store(true, Ordering::Relaxed);
    let before = live();
    let map: HashMap<String, u32> = (0..DEVICES)
        .map(|i| (enrollment_id(i), (i % set_ids.len()) as u32))
        .collect();
    let map_heap = live() - before;
    drop(map);

    // Ours.
    let path = dir.join("scale.sqlite");
    let heap_before = live();
    let (rss_before, _) = memory();
    let peak_reset = reset_peak_rss();
    let store = Store::open(&path).expect("store");
    let input = assignments(&sets, DEVICES);
    let start = Instant::now();
    let (first, apply_peak) = peak_during(|| store.apply(&used, &input).expect("apply 100k"));
    let assign_time = start.elapsed();
    drop(input);
    let heap_held = live() - heap_before;
    let (rss_after, hwm_after) = memory();
    let (db, wal, shm) = store_bytes(&path);
    let counts_before = store.counts().expect("counts");
    let members = |path: &Path| -> i64 {
        Connection::open(path)
            .and_then(|c| c.query_row("SELECT COUNT(*) FROM set_members", [], |r| r.get(0)))
            .expect("count set_members")
    };
    let members_before = members(&path);

    println!(
        "baseline: bare map (enrollment_id → set_id) in a plain table, one transaction: {:.0} ms, {:.1} MiB file + {:.1} MiB WAL; in a HashMap<String, u32>: {:.1} MiB heap",
        ms(plain_assign),
        mib(plain_db_bytes as f64),
        mib(plain_wal_bytes as f64),
        mib(map_heap as f64)
    );
    println!(
        "assign all (one Store::apply):   {:.0} ms (×{:.2} of baseline); wrote {} declarations, {} sets, {} enrollments",
        ms(assign_time),
        assign_time.as_secs_f64() / plain_assign.as_secs_f64(),
        first.declarations_written,
        first.sets_written,
        first.changed.len()
    );
    println!(
        "store on disk:                   {:.1} MiB file + {:.1} MiB WAL + {:.2} MiB shm = {:.1} MiB (file ×{:.2} of baseline; file+WAL ×{:.2})",
        mib(db as f64),
        mib(wal as f64),
        mib(shm as f64),
        mib((db + wal + shm) as f64),
        db as f64 / plain_db_bytes as f64,
        (db + wal) as f64 / (plain_db_bytes + plain_wal_bytes) as f64
    );
    println!(
        "memory:                          heap held by the store {:.1} MiB (×{:.2} of the HashMap baseline), peak heap growth during apply {:.1} MiB; VmRSS {:.1} → {:.1} MiB (+{:.1}), VmHWM {:.1} MiB{}",
        mib(heap_held as f64),
        heap_held as f64 / map_heap as f64,
        mib(apply_peak as f64),
        mib(rss_before as f64),
        mib(rss_after as f64),
        mib(rss_after as f64 - rss_before as f64),
        mib(hwm_after as f64),
        if peak_reset {
            " (peak since the store was opened)"
        } else {
            " (process-wide peak; clear_refs was refused)"
        }
    );
    println!("rows: {counts_before:?}, set_members {members_before}");

    // A catalog change: a new release every device must take → one new enforcement, new
    // activations and sets, and every enrollment repointed.
    let release = declarations::enforcement(
        &"26.3".parse().expect("version"),
        Some("23D5000"),
        jiff::civil::date(2026, 10, 6).at(19, 0, 0, 0),
        None,
    );
    let (retarget_used, retarget_sets) = fleet.sets(Some(&release));
    let retarget_input = assignments(&retarget_sets, DEVICES);
    let written_before = written_bytes();
    let start = Instant::now();
    let report = store
        .apply(&retarget_used, &retarget_input)
        .expect("retarget");
    let retarget_time = start.elapsed();
    let retarget_written = written_bytes() - written_before;
    let counts_after = store.counts().expect("counts");
    let members_after = members(&path);
    let distinct_new_sets = retarget_sets.iter().collect::<HashSet<_>>().len();
    let delta = |i: usize| counts_after[i].1 - counts_before[i].1;
    let rows_written = report.declarations_written
        + report.sets_written
        + (members_after - members_before) as usize
        + report.changed.len();
    let bound = retarget_used.len() + distinct_new_sets * (1 + per_device) + DEVICES;
    let naive = DEVICES * per_device;
    println!(
        "baseline: UPDATE of all {DEVICES} rows of the bare map, one transaction: {:.0} ms, {:.1} MiB written",
        ms(plain_retarget),
        mib(plain_retarget_written as f64)
    );
    println!(
        "retarget all (one Store::apply): {:.0} ms (×{:.2} of baseline), {:.1} MiB written (×{:.2})",
        ms(retarget_time),
        retarget_time.as_secs_f64() / plain_retarget.as_secs_f64(),
        mib(retarget_written as f64),
        retarget_written as f64 / plain_retarget_written as f64
    );
    println!(
        "  ApplyReport: {} declarations, {} sets, {} enrollments changed; row counts +{} declarations, +{} sets, +{} set_members, +{} enrollments",
        report.declarations_written,
        report.sets_written,
        report.changed.len(),
        delta(0),
        delta(1),
        members_after - members_before,
        delta(2)
    );
    println!(
        "  rows written {rows_written} ≤ distinct declarations passed ({}) + new sets × (1 + {per_device} members) ({}) + changed assignments ({DEVICES}) = {bound}: {}; a row per (device, declaration) would be {naive} (×{:.2} of that)",
        retarget_used.len(),
        distinct_new_sets * (1 + per_device),
        verdict(rows_written <= bound),
        rows_written as f64 / naive as f64
    );
    let (db2, wal2, _) = store_bytes(&path);
    println!(
        "  store after: {:.1} MiB file + {:.1} MiB WAL",
        mib(db2 as f64),
        mib(wal2 as f64)
    );

    // The resolver re-runs its pass when nothing changed: the write must be empty.
    let hash_floor = median(5, || {
        retarget_input
            .iter()
            .map(|a| {
                let parts: Vec<&[u8]> = a.identifiers.iter().map(|s| s.as_bytes()).collect();
                content_hash(&parts)
            })
            .count()
    });
    let mut resync_report = ApplyReport::default();
    let resync = median(5, || {
        resync_report = store
            .apply(&retarget_used, &retarget_input)
            .expect("resync");
    });
    assert_eq!(
        resync_report,
        ApplyReport::default(),
        "a resync writes nothing"
    );
    println!(
        "baseline: hash each device's identifiers (content_hash) once: {:.0} ms",
        ms(hash_floor)
    );
    println!(
        "unchanged resync (one Store::apply, writes nothing): {:.0} ms (×{:.2} of baseline)",
        ms(resync),
        resync.as_secs_f64() / hash_floor.as_secs_f64()
    );

    // A restart: the cache is rebuilt from the file.
    let start = Instant::now();
    let reopened = Store::open(&path).expect("reopen");
    let reopen = start.elapsed();
    assert_eq!(
        reopened
            .served_set(&enrollment_id(DEVICES - 1))
            .map(|s| s.token.clone()),
        store
            .served_set(&enrollment_id(DEVICES - 1))
            .map(|s| s.token.clone()),
        "the reopened store serves the same set"
    );
    println!(
        "baseline: SELECT the bare map into a HashMap: {:.0} ms",
        ms(plain_reload)
    );
    println!(
        "reopen (Store::open rebuilds its cache): {:.0} ms (×{:.2} of baseline)",
        ms(reopen),
        reopen.as_secs_f64() / plain_reload.as_secs_f64()
    );
    COUNTING.store(false, Ordering::Relaxed);
}
