//! The chart's Grafana dashboard (`charts/ddm-update-operator/files/dashboard.json`) against a
//! real Prometheus (Debian's `prometheus`) scraping the real operator binary while simulated
//! devices go through a rollout.
//!
//! * `every_dashboard_panel_has_data_from_a_simulated_rollout`: `run` on three policies (one
//!   per platform, two with an enrollment gate, deadlines two to three days out through
//!   `minimumLeadTime`) and 24 simulated devices; Prometheus on loopback scrapes the admin
//!   port's `/metrics` every second into a temporary store. Devices check in every second and
//!   start installing at staggered rounds (so compliance climbs over the run); two always fail;
//!   every round two devices post their MachineInfo to the enrollment gate. Then every target
//!   of every panel, read from the file with Grafana's variables put in (`$__rate_interval`,
//!   `$__interval`, `$source` at its "All" value), is asked of Prometheus's HTTP API
//!   (`query_range` over the run, or `query` at its end for an instant target): a target with
//!   no data fails the test naming its panel. What the panels show is checked against what the
//!   devices did (compliance rose, the failing devices are counted, the gate decided both ways).
//!   With `DASHBOARD_PNG=path` it also renders the panels from that Prometheus into a PNG
//!   (`scripts/dashboard-png.sh`): `docs/dashboard.png` is made that way.
//! * `the_dashboard_asks_for_its_data_source`: no data source uid is written in the file; every
//!   panel and target uses the `datasource` variable.
//! * `the_chart_ships_the_dashboard_file_for_the_grafana_sidecar`: off by default; on, one
//!   ConfigMap with the sidecar's label (key and value configurable) whose data is the file byte
//!   for byte.
//! * `every_metric_the_dashboard_reads_is_in_the_readme_table`: each metric a panel queries has
//!   a row in the README's metrics table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ddm_update_operator::catalog::Platform;
use ddm_update_operator::sim::enroll::machine_info_plist;
use ddm_update_operator::sim::{FailureMode, ServerConfig, SimDevice, http_client};
use serde_json::{Value, json};

use crate::support::ROOT;
use crate::support::devices::{check_in_all, fleet_of, newest_catalog_path};
use crate::support::helm::helm;
use crate::support::process::{KillOnDrop, free_ports};
use crate::support::prometheus::tool;

const BINARY: &str = env!("CARGO_BIN_EXE_ddm-update-operator");
const DASHBOARD: &str = "charts/ddm-update-operator/files/dashboard.json";
/// Prometheus's scrape interval, also the query step and `$__interval`.
const SCRAPE: &str = "1s";
/// `$__rate_interval`: Grafana makes it at least four scrape intervals; one more keeps four
/// samples in every window even when a scrape lands late.
const RATE_INTERVAL: &str = "5s";
/// Rounds of the rollout, one second apart: every device checks in once per round.
const ROUNDS: u32 = 16;
const ROUND: Duration = Duration::from_secs(1);
/// The last device starts installing at this round; an install takes four rounds.
const LAST_START: usize = 10;

/// Three FleetGroups by platform and one UpdatePolicy each on Apple's latest release. The
/// deadlines fall after the posting date's, so `minimumLeadTime` puts them days after hand-out
/// (a future "next deadline"); iPhones and Macs have an enrollment gate, iPads none (Ungated).
const MANIFESTS: &str = r#"apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: iphones, namespace: fleet}
spec: {platforms: [iOS]}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: ipads, namespace: fleet}
spec: {platforms: [iPadOS]}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: macs, namespace: fleet}
spec: {platforms: [macOS]}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: iphones, namespace: fleet}
spec:
  fleetGroups: [iphones]
  target: {strategy: latest}
  deadline: {daysAfterPosting: 7, localTime: "18:00", timeZone: Europe/Berlin, minimumLeadTime: 48h}
  enrollment: {minimumVersion: Target, failurePolicy: Open}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: ipads, namespace: fleet}
spec:
  fleetGroups: [ipads]
  target: {strategy: latest}
  deadline: {daysAfterPosting: 7, localTime: "09:00", timeZone: Asia/Tokyo, minimumLeadTime: 48h}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: macs, namespace: fleet}
spec:
  fleetGroups: [macs]
  target: {strategy: latest}
  deadline: {daysAfterPosting: 14, localTime: "19:00", timeZone: America/New_York, minimumLeadTime: 72h}
  enrollment: {minimumVersion: Target, failurePolicy: Closed}
"#;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Polls `url` until it answers 200, the child exits, or 30 s pass.
async fn wait_ok(
    client: &reqwest::Client,
    url: &str,
    child: &mut KillOnDrop,
    log: &Path,
) -> Result<(), String> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}:\n{}", log_tail(log)));
        }
        if let Ok(response) = client.get(url).send().await
            && response.status() == 200
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{url} not ready within 30 s:\n{}", log_tail(log)))
}

/// A server on free loopback ports, killed when dropped.
struct Server {
    child: KillOnDrop,
    log: PathBuf,
}

/// The operator: `run` on `manifests` and the catalog fixture, with an enrollment profile and
/// unsigned MachineInfo taken (a test has no Apple-signed device identity). Returns the server,
/// the device port's base URL and the admin port's address.
async fn start_operator(work: &Path, client: &reqwest::Client) -> (Server, String, String) {
    let manifests = work.join("gitops");
    std::fs::create_dir_all(&manifests).expect("manifests folder");
    std::fs::write(manifests.join("fleet.yaml"), MANIFESTS).expect("manifests");
    let profile = work.join("enroll.mobileconfig");
    std::fs::write(&profile, b"a stand-in enrollment profile").expect("profile");
    let log = work.join("operator.log");
    let mut last_error = String::new();
    // A port found free can be taken before the child binds it: try a few.
    for _ in 0..3 {
        let [port, admin_port] = free_ports();
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new(BINARY)
            .arg("run")
            .arg("--manifests")
            .arg(&manifests)
            .arg("--catalog")
            .arg(newest_catalog_path())
            .arg("--data-dir")
            .arg(work.join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--poll-interval", "1s", "--assume-supervised"])
            .arg("--enroll-profile")
            .arg(&profile)
            .arg("--enroll-allow-unsigned")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the operator starts");
        let mut server = Server {
            child: KillOnDrop(child),
            log: log.clone(),
        };
        let admin = format!("127.0.0.1:{admin_port}");
        match wait_ok(
            client,
            &format!("http://{admin}/readyz"),
            &mut server.child,
            &log,
        )
        .await
        {
            Ok(()) => return (server, format!("http://127.0.0.1:{port}"), admin),
            Err(why) => last_error = why,
        }
    }
    panic!("the operator never became ready: {last_error}");
}

/// Prometheus scraping `target`'s `/metrics` every [`SCRAPE`], its store under `work`, on a
/// free loopback port. Returns the server and its base URL.
async fn start_prometheus(work: &Path, target: &str, client: &reqwest::Client) -> (Server, String) {
    let config = work.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: {SCRAPE}, scrape_timeout: {SCRAPE}, evaluation_interval: {SCRAPE}}}
scrape_configs:
  - job_name: ddm-update-operator
    metrics_path: /metrics
    static_configs: [{{targets: ['{target}']}}]
"
        ),
    )
    .expect("prometheus.yml");
    let prometheus = tool("prometheus");
    let log = work.join("prometheus.log");
    let mut last_error = String::new();
    for attempt in 0..3 {
        let [port] = free_ports();
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.join(format!("tsdb-{attempt}")).display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("prometheus starts");
        let mut server = Server {
            child: KillOnDrop(child),
            log: log.clone(),
        };
        let url = format!("http://127.0.0.1:{port}");
        match wait_ok(client, &format!("{url}/-/ready"), &mut server.child, &log).await {
            Ok(()) => return (server, url),
            Err(why) => last_error = why,
        }
    }
    panic!("prometheus never became ready: {last_error}");
}

/// Waits for Prometheus's first good scrape of the operator: its discovery hands targets to the
/// scrape loop every 5 s, so the first one comes a few seconds after start.
async fn first_scrape(client: &reqwest::Client, url: &str, prometheus: &Server) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let up = api(
            client,
            url,
            "/api/v1/query",
            &[("query", "up{job=\"ddm-update-operator\"} == 1".to_string())],
        )
        .await;
        if up.as_array().is_some_and(|a| !a.is_empty()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "Prometheus did not scrape the operator within 20 s:\n{}",
        log_tail(&prometheus.log)
    );
}

/// One Prometheus API call: the `data.result` array (panics on an error answer).
async fn api(client: &reqwest::Client, url: &str, path: &str, params: &[(&str, String)]) -> Value {
    let address = reqwest::Url::parse_with_params(
        &format!("{url}{path}"),
        params.iter().map(|(k, v)| (*k, v.as_str())),
    )
    .expect("a URL");
    let response = client
        .get(address)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = response.status();
    let body: Value = response.json().await.expect("Prometheus answers JSON");
    assert!(
        status == 200 && body["status"] == "success",
        "{path} {params:?}: HTTP {status}: {body}"
    );
    body["data"]["result"].clone()
}

// ---------------------------------------------------------------------------------------------
// The dashboard file
// ---------------------------------------------------------------------------------------------

fn dashboard() -> Value {
    let text = std::fs::read_to_string(Path::new(ROOT).join(DASHBOARD)).expect("dashboard.json");
    serde_json::from_str(&text).expect("dashboard.json is JSON")
}

/// One query of a panel, as Grafana would send it.
struct PanelQuery {
    panel: String,
    ref_id: String,
    expr: String,
    instant: bool,
}

/// Every target of every panel (rows' nested panels too), with Grafana's variables put in:
/// `$__rate_interval`, `$__interval`, `$__range`, and each template variable that offers "All"
/// at its `allValue` (what Grafana sends when "All" is picked).
fn panel_queries(dashboard: &Value, range: Duration) -> Vec<PanelQuery> {
    let mut values: Vec<(String, String)> = vec![
        ("__rate_interval".into(), RATE_INTERVAL.into()),
        ("__interval".into(), SCRAPE.into()),
        ("__range".into(), format!("{}s", range.as_secs().max(1))),
    ];
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["includeAll"] == true {
            let all = variable["allValue"].as_str().unwrap_or(".*");
            values.push((text(&variable["name"]), all.to_string()));
        }
    }
    // Longest names first, so `$__interval` never eats the start of a longer name.
    values.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let substitute = |expr: &str| {
        let mut out = expr.to_string();
        for (name, value) in &values {
            out = out
                .replace(&format!("${{{name}}}"), value)
                .replace(&format!("${name}"), value);
        }
        out
    };
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        let title = text(&panel["title"]);
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
            let expr = substitute(expr);
            assert!(
                !expr.contains('$'),
                "panel {title:?}: a variable this test does not know: {expr}"
            );
            queries.push(PanelQuery {
                panel: title.clone(),
                ref_id: text(&target["refId"]),
                expr,
                instant: target["instant"] == true && target["range"] != true,
            });
        }
    }
    queries
}

/// The dashboard's panels, those inside rows included; rows themselves left out.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            out.extend(panel["panels"].as_array().into_iter().flatten());
        } else {
            out.push(panel);
        }
    }
    out
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

// ---------------------------------------------------------------------------------------------
// The rollout
// ---------------------------------------------------------------------------------------------

/// MachineInfo as Setup Assistant posts it (unsigned: the operator runs with
/// `--enroll-allow-unsigned`), for what `device` runs now.
fn machine_info(device: &SimDevice) -> Vec<u8> {
    let spec = device.spec();
    let mut keys: Vec<(&str, plist::Value)> = vec![
        ("UDID", plist::Value::String(spec.udid.clone())),
        ("SERIAL", plist::Value::String(spec.serial_number.clone())),
        (
            "PRODUCT",
            plist::Value::String(spec.model_identifier.clone()),
        ),
        (
            "VERSION",
            plist::Value::String(device.os().running_build().to_string()),
        ),
        (
            "OS_VERSION",
            plist::Value::String(device.os().running().numeric()),
        ),
        (
            "MDM_CAN_REQUEST_SOFTWARE_UPDATE",
            plist::Value::Boolean(true),
        ),
    ];
    if let Some(id) = &spec.software_update_device_id {
        keys.push((
            "SOFTWARE_UPDATE_DEVICE_ID",
            plist::Value::String(id.clone()),
        ));
    }
    machine_info_plist(&keys)
}

/// What the rollout did, to hold the panels against.
struct Rollout {
    start: f64,
    failing: usize,
    enrollments: usize,
}

/// Devices check in every round; device `i` starts installing at round `2 * (i % 6)`; an
/// iPhone and a Mac holding an enforcement after the first check-ins always fail; two
/// MachineInfo posts a round.
async fn roll_out(devices: &mut [SimDevice], root: &str, operator: &Server) -> Rollout {
    let client = http_client(Duration::from_secs(10)).expect("HTTP client");
    let server = ServerConfig::new(&format!("{root}/ddm/")).expect("DDM base URL");
    let start = unix_now();
    // One iPhone and one Mac that hold an enforcement always fail, so two policies show a
    // failure. The operator debounces reports before its pass, and a Mac reports its board id
    // only once its status subscriptions arrived: its enforcement comes a check-in or two later.
    let mut failing = 0;
    let mut platforms = vec![Platform::Ios, Platform::MacOs];
    for _ in 0..8 {
        check_in_all(devices, &client, &server).await;
        for device in devices.iter_mut() {
            let platform = device.spec().platform;
            if platforms.contains(&platform) && !device.held_enforcements().is_empty() {
                device.spec_mut().failure_mode = FailureMode::Always;
                platforms.retain(|p| *p != platform);
                failing += 1;
            }
        }
        if platforms.is_empty() {
            break;
        }
        tokio::time::sleep(ROUND).await;
    }
    assert!(
        platforms.is_empty(),
        "no {platforms:?} device got an enforcement:\n{}",
        log_tail(&operator.log)
    );
    let mut enrollments = 0;
    for round in 0..ROUNDS {
        let began = Instant::now();
        for (index, device) in devices.iter_mut().enumerate() {
            if round as usize >= 2 * (index % 6) {
                device.advance();
            }
        }
        check_in_all(devices, &client, &server).await;
        for pick in [round as usize * 5, round as usize * 5 + 2] {
            let device = &devices[pick % devices.len()];
            let response = client
                .post(format!("{root}/enroll"))
                .header("content-type", "application/xml")
                .body(machine_info(device))
                .send()
                .await
                .expect("the gate answers");
            // 200 (the profile) or 403 (an update first): a decision either way.
            let code = response.status().as_u16();
            assert!(
                code == 200 || code == 403,
                "{}: the gate answered {code}: {}",
                device.enrollment_id(),
                response.text().await.unwrap_or_default()
            );
            enrollments += 1;
        }
        if let Some(rest) = ROUND.checked_sub(began.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    Rollout {
        start,
        failing,
        enrollments,
    }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_has_data_from_a_simulated_rollout() {
    let started = Instant::now();
    let work = tempfile::tempdir().expect("tempdir");
    let client = http_client(Duration::from_secs(10)).expect("HTTP client");
    let (operator, root, admin) = start_operator(work.path(), &client).await;
    let (prometheus, url) = start_prometheus(work.path(), &admin, &client).await;
    first_scrape(&client, &url, &prometheus).await;

    let mut devices = fleet_of(&[
        (Platform::Ios, 10, 71),
        (Platform::IpadOs, 6, 72),
        (Platform::MacOs, 8, 73),
    ]);
    assert!(
        LAST_START < ROUNDS as usize - 4,
        "every device has time to install"
    );
    let rollout = roll_out(&mut devices, &root, &operator).await;
    // Two more scrapes after the last pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let end = unix_now();
    let start = rollout.start - 2.0;

    // Prometheus did scrape the operator, about once a second, all the while.
    let scrapes = api(
        &client,
        &url,
        "/api/v1/query",
        &[
            (
                "query",
                format!(
                    "count_over_time(up{{job=\"ddm-update-operator\"}}[{}s])",
                    (end - start).ceil()
                ),
            ),
            ("time", format!("{end}")),
        ],
    )
    .await;
    let scraped = scrapes[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        scraped >= (end - start) * 0.8,
        "only {scraped} scrapes in {:.0} s:\n{}",
        end - start,
        log_tail(&prometheus.log)
    );

    // Every panel's every query returns data.
    let dashboard = dashboard();
    let queries = panel_queries(&dashboard, Duration::from_secs_f64(end - start));
    assert!(queries.len() >= 7, "{} queries", queries.len());
    let mut empty = Vec::new();
    let mut answers: BTreeMap<String, Value> = BTreeMap::new();
    for query in &queries {
        let result = if query.instant {
            api(
                &client,
                &url,
                "/api/v1/query",
                &[("query", query.expr.clone()), ("time", format!("{end}"))],
            )
            .await
        } else {
            api(
                &client,
                &url,
                "/api/v1/query_range",
                &[
                    ("query", query.expr.clone()),
                    ("start", format!("{start}")),
                    ("end", format!("{end}")),
                    ("step", SCRAPE.to_string()),
                ],
            )
            .await
        };
        let series = result.as_array().map(Vec::len).unwrap_or(0);
        eprintln!(
            "panel {:?} {}: {series} series: {}",
            query.panel, query.ref_id, query.expr
        );
        if series == 0 {
            empty.push(format!(
                "panel {:?} (target {}): {}",
                query.panel, query.ref_id, query.expr
            ));
        }
        answers.insert(format!("{}/{}", query.panel, query.ref_id), result);
    }
    assert!(
        empty.is_empty(),
        "panels whose query returned no data:\n{}\noperator log:\n{}",
        empty.join("\n"),
        log_tail(&operator.log)
    );

    // What the panels show is what the devices did.
    let series_values = |key: &str| -> Vec<(BTreeMap<String, String>, Vec<f64>)> {
        answers[key]
            .as_array()
            .expect("a result")
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), text(v))).collect())
                    .unwrap_or_default();
                let points = match series.get("values") {
                    Some(values) => values.as_array().cloned().unwrap_or_default(),
                    None => vec![series["value"].clone()],
                };
                let values = points
                    .iter()
                    .filter_map(|p| p[1].as_str()?.parse::<f64>().ok())
                    .collect();
                (labels, values)
            })
            .collect()
    };
    let compliance = series_values("Compliance per policy and target/A");
    let sources: BTreeSet<String> = compliance
        .iter()
        .map(|(labels, _)| labels["source"].clone())
        .collect();
    assert_eq!(
        sources,
        ["iphones", "ipads", "macs"]
            .map(|p| format!("UpdatePolicy fleet/{p}"))
            .into(),
    );
    // A policy is 1 before it applies to any device; then it drops and climbs as devices
    // install.
    let rose = compliance.iter().any(|(_, values)| {
        values
            .iter()
            .enumerate()
            .any(|(i, low)| values[i..].iter().any(|v| v > low))
    });
    assert!(rose, "no policy's compliance rose: {compliance:?}");
    // A failed install is retried a few steps later (the device reports downloading again),
    // so each failing device shows as failed for a while, in its own policy.
    let failures = series_values("Failures/A");
    let failed: f64 = failures
        .iter()
        .map(|(_, values)| values.iter().copied().fold(0.0, f64::max))
        .sum();
    assert_eq!(
        failed, rollout.failing as f64,
        "the failing devices, one per policy: {failures:?}"
    );
    let days: Vec<f64> = series_values("Next deadline (days from now)/A")
        .iter()
        .filter_map(|(_, values)| values.last().copied())
        .collect();
    assert!(
        days.iter().all(|d| (0.0..=4.0).contains(d)),
        "deadlines are 48 to 72 hours after hand-out, at a local time: {days:?}"
    );
    let decisions: BTreeSet<String> = series_values("Enrollment gate decisions/A")
        .iter()
        .map(|(labels, _)| labels["decision"].clone())
        .collect();
    assert!(
        decisions.contains("UpdateRequired") && decisions.len() >= 2,
        "{} MachineInfo posts, decisions {decisions:?}",
        rollout.enrollments
    );

    if let Some(png) = std::env::var_os("DASHBOARD_PNG") {
        let png = Path::new(ROOT).join(png);
        if let Some(folder) = png.parent() {
            std::fs::create_dir_all(folder).expect("the PNG's folder");
        }
        let output = Command::new("bash")
            .arg("scripts/dashboard-png.sh")
            .current_dir(ROOT)
            .args(["--prometheus", &url, "--dashboard", DASHBOARD])
            .arg("--out")
            .arg(&png)
            .args(["--start", &format!("{start}"), "--end", &format!("{end}")])
            .args(["--step", SCRAPE, "--rate-interval", RATE_INTERVAL])
            .args([
                "--subtitle",
                &format!(
                    "tests/it/prometheus_scrape.rs: {} simulated devices, 3 UpdatePolicies, Prometheus {SCRAPE} scrapes",
                    devices.len()
                ),
            ])
            .output()
            .expect("bash runs scripts/dashboard-png.sh");
        assert!(
            output.status.success(),
            "scripts/dashboard-png.sh {}:\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let bytes = std::fs::read(&png).expect("the PNG");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
        eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    }
    eprintln!(
        "{} queries of {} panels answered; {} devices, {} MachineInfo posts, {scraped} scrapes; {:.1} s",
        queries.len(),
        panels(&dashboard).len(),
        devices.len(),
        rollout.enrollments,
        started.elapsed().as_secs_f64()
    );
    drop(prometheus);
    drop(operator);
}

#[test]
fn the_dashboard_asks_for_its_data_source() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    let datasource = variables
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let mut places = 0;
    let mut check = |place: String, value: &Value| {
        places += 1;
        assert_eq!(
            value,
            &json!({"type": "prometheus", "uid": "${datasource}"}),
            "{place}: the data source is the variable"
        );
    };
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        check(
            format!("variable {}", variable["name"]),
            &variable["datasource"],
        );
    }
    for panel in panels(&dashboard) {
        let title = text(&panel["title"]);
        check(format!("panel {title:?}"), &panel["datasource"]);
        for target in panel["targets"].as_array().expect("targets") {
            check(
                format!("panel {title:?} target {}", target["refId"]),
                &target["datasource"],
            );
        }
    }
    assert!(places > 8, "{places} data source references");
    // No uid written anywhere but the variable's.
    let raw = std::fs::read_to_string(Path::new(ROOT).join(DASHBOARD)).expect("dashboard.json");
    let uids = raw.matches("\"uid\":").count();
    assert_eq!(
        uids,
        raw.matches("\"uid\": \"${datasource}\"").count() + 1,
        "only the dashboard's own uid and the variable"
    );
}

#[test]
fn the_chart_ships_the_dashboard_file_for_the_grafana_sidecar() {
    let base = json!({"ddm": {"hmacSecret": {"name": "ddm-hmac"}}});
    let with = |dashboard: Value| {
        let mut values = base.clone();
        values["metrics"] = json!({"grafanaDashboard": dashboard});
        json!({"op": "render", "values": values, "release": "ddm-update-operator", "namespace": "ddm-system"})
    };
    let results = helm(vec![
        json!({"op": "render", "values": base, "release": "ddm-update-operator", "namespace": "ddm-system"}),
        with(json!({"enabled": true})),
        with(
            json!({"enabled": true, "label": "dashboards.example.com/grafana", "labelValue": "yes",
            "namespace": "monitoring", "labels": {"team": "endpoints"},
            "annotations": {"grafana_folder": "Updates"}}),
        ),
        with(json!({"enabled": true, "labelValue": "not a label value"})),
    ]);
    let config_maps = |result: &Value| -> Vec<Value> {
        assert_eq!(result["ok"], true, "renders: {result}");
        result["objects"]
            .as_array()
            .expect("objects")
            .iter()
            .map(|o| o["object"].clone())
            .filter(|o| {
                o["kind"] == "ConfigMap" && o["metadata"]["name"] == "ddm-update-operator-dashboard"
            })
            .collect()
    };
    assert!(config_maps(&results[0]).is_empty(), "off by default");
    let file = std::fs::read_to_string(Path::new(ROOT).join(DASHBOARD)).expect("dashboard.json");

    let default = config_maps(&results[1]);
    assert_eq!(default.len(), 1, "one ConfigMap");
    let metadata = &default[0]["metadata"];
    assert_eq!(metadata["namespace"], "ddm-system");
    assert_eq!(metadata["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        metadata["labels"]["app.kubernetes.io/name"],
        "ddm-update-operator"
    );
    assert_eq!(
        default[0]["data"]["ddm-update-operator.json"].as_str(),
        Some(file.as_str()),
        "the file as it is"
    );

    let custom = config_maps(&results[2]);
    let metadata = &custom[0]["metadata"];
    assert_eq!(metadata["namespace"], "monitoring");
    assert_eq!(metadata["labels"]["dashboards.example.com/grafana"], "yes");
    assert_eq!(metadata["labels"]["team"], "endpoints");
    assert!(metadata["labels"].get("grafana_dashboard").is_none());
    assert_eq!(metadata["annotations"]["grafana_folder"], "Updates");
    assert_eq!(
        custom[0]["data"]["ddm-update-operator.json"].as_str(),
        Some(file.as_str())
    );

    assert_ne!(results[3]["ok"], true, "a label value Kubernetes refuses");
    assert!(
        text(&results[3]["message"]).contains("labelValue"),
        "names the value: {}",
        results[3]
    );
}

#[test]
fn every_metric_the_dashboard_reads_is_in_the_readme_table() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("README.md");
    let table: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("| `ddm_"))
        .collect();
    let dashboard = dashboard();
    let mut metrics = BTreeSet::new();
    for query in panel_queries(&dashboard, Duration::from_secs(60)) {
        let mut rest = query.expr.as_str();
        while let Some(at) = rest.find("ddm_update_operator_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            metrics.insert(name);
        }
    }
    assert!(metrics.len() >= 7, "{metrics:?}");
    for metric in &metrics {
        assert!(
            table
                .iter()
                .any(|row| row.contains(&format!("`{metric}`"))
                    || row.contains(&format!("`{metric}{{"))),
            "README's metrics table lists {metric}"
        );
    }
}
