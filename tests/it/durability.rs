//! Killing the operator mid-run loses no status report it acknowledged: the real binary in
//! standalone mode, concurrent devices reporting, SIGKILL, then the database is checked.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ddm_update_operator::backend::store::Store;

use crate::support::process::{KillOnDrop, free_ports};

const BINARY: &str = env!("CARGO_BIN_EXE_ddm-update-operator");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn start(data_dir: &std::path::Path, port: u16, admin_port: u16) -> KillOnDrop {
    let child = Command::new(BINARY)
        .args(["run", "--manifests", &format!("{ROOT}/examples/gitops")])
        .args([
            "--catalog",
            &format!("{ROOT}/tests/fixtures/gdmf/pmv-2026-08-22.json"),
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the operator starts");
    KillOnDrop(child)
}

async fn wait_ready(client: &reqwest::Client, admin: &str) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(response) = client.get(format!("{admin}/readyz")).send().await
            && response.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the operator did not become ready within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_process_loses_no_acknowledged_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [port, admin_port] = free_ports();
    let base = format!("http://127.0.0.1:{port}");
    let mut operator = start(dir.path(), port, admin_port);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    wait_ready(&client, &format!("http://127.0.0.1:{admin_port}")).await;

    const DEVICES: usize = 48;
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Vec<AtomicU64>> =
        Arc::new((0..DEVICES).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = Vec::new();
    for device in 0..DEVICES {
        let (client, base, stop, acknowledged) = (
            client.clone(),
            base.clone(),
            stop.clone(),
            acknowledged.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut count = 0u64;
            // Bounded: at most 10,000 reports per device, and only until the kill.
            while !stop.load(Ordering::Relaxed) && count < 10_000 {
                count += 1;
                let body = format!(
                    r#"{{"StatusItems":{{"softwareupdate":{{"install-state":"downloading","failure-reason":{{"count":{count}}}}}}},"Errors":[]}}"#
                );
                let sent = client
                    .put(format!("{base}/ddm/status"))
                    .header("X-Enrollment-ID", format!("KILL-{device}"))
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == 200 => acknowledged[device].store(count, Ordering::SeqCst),
                    _ => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    operator.kill().expect("SIGKILL");
    let _ = operator.wait();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }

    let total: u64 = acknowledged.iter().map(|a| a.load(Ordering::SeqCst)).sum();
    assert!(
        total > 100,
        "the test must have stored a meaningful number of reports ({total})"
    );
    eprintln!("{total} reports acknowledged before the kill");
    let store =
        Store::open(&dir.path().join("ddm.sqlite")).expect("the database opens after a kill");
    for (device, acked) in acknowledged.iter().enumerate() {
        let acked = acked.load(Ordering::SeqCst);
        let items = store
            .device_items(&format!("KILL-{device}"))
            .expect("readable")
            .unwrap_or_default();
        let stored = items
            .get("softwareupdate")
            .and_then(|s| s.get("failure-reason"))
            .and_then(|f| f.get("count"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        assert!(
            stored >= acked,
            "KILL-{device}: report {acked} was acknowledged but the store holds {stored}"
        );
    }
}

/// splitmix64, seeded from the clock (the seed is printed, to replay a failure).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// The count device `device` last had stored.
fn stored_count(store: &Store, device: usize) -> u64 {
    store
        .device_items(&format!("LOAD-{device}"))
        .expect("readable")
        .unwrap_or_default()
        .get("softwareupdate")
        .and_then(|s| s.get("failure-reason"))
        .and_then(|f| f.get("count"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_at_random_points_of_ingestion_lose_no_acknowledged_report() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    const DEVICES: usize = 24;
    // What each device sent last and what was last acknowledged: counts only grow, so a stored
    // count below an acknowledged one is a lost report.
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..DEVICES).map(|_| AtomicU64::new(0)).collect());
    let acknowledged: Arc<Vec<AtomicU64>> =
        Arc::new((0..DEVICES).map(|_| AtomicU64::new(0)).collect());
    let started = Instant::now();
    let mut total = 0u64;
    for round in 0..20 {
        let [port, admin_port] = free_ports();
        let base = format!("http://127.0.0.1:{port}");
        let mut operator = start(dir.path(), port, admin_port);
        wait_ready(&client, &format!("http://127.0.0.1:{admin_port}")).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for device in 0..DEVICES {
            let (client, base, stop, sent, acknowledged) = (
                client.clone(),
                base.clone(),
                stop.clone(),
                sent.clone(),
                acknowledged.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let count = sent[device].fetch_add(1, Ordering::SeqCst) + 1;
                    let body = format!(
                        r#"{{"StatusItems":{{"softwareupdate":{{"failure-reason":{{"count":{count}}}}}}}}}"#
                    );
                    let answer = client
                        .put(format!("{base}/ddm/status"))
                        .header("X-Enrollment-ID", format!("LOAD-{device}"))
                        .body(body)
                        .send()
                        .await;
                    match answer.map(|r| r.status().as_u16()) {
                        Ok(200) => {
                            acknowledged[device].fetch_max(count, Ordering::SeqCst);
                        }
                        // Over the rate limit: not acknowledged; wait as a device would.
                        Ok(429) => tokio::time::sleep(Duration::from_millis(200)).await,
                        _ => break,
                    }
                }
            }));
        }
        // Killed at a random point of ingestion.
        tokio::time::sleep(Duration::from_millis(50 + rng.below(700))).await;
        operator.kill().expect("SIGKILL");
        let _ = operator.wait();
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            let _ = task.await;
        }
        let store =
            Store::open(&dir.path().join("ddm.sqlite")).expect("the database opens after a kill");
        for device in 0..DEVICES {
            let acked = acknowledged[device].load(Ordering::SeqCst);
            let stored = stored_count(&store, device);
            assert!(
                stored >= acked,
                "round {round}, LOAD-{device}: report {acked} was acknowledged but the store holds {stored}"
            );
        }
        drop(store);
        total = acknowledged.iter().map(|a| a.load(Ordering::SeqCst)).sum();
    }
    eprintln!(
        "20 kills, {total} reports acknowledged, none lost, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(total > 200, "meaningful load: {total} reports acknowledged");
}
