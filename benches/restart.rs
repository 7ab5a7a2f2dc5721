//! A restart on a full store (issue 12, item 3): 100,000 devices whose reports filled the store
//! to its caps, then the real operator binary started on it — time to ready and peak RSS (the
//! chart's memory limit is 512 Mi). Baseline in the same run: the same binary on an empty store.
//! Also measured in-process: what listing devices cost the way the store did before summaries
//! (every merged state read and parsed), on the same database.
//!
//! Run with `cargo bench --bench restart`. `RESTART_DEVICES` (default 100000) and
//! `RESTART_STATE_KIB` (merged state per device, default 8; the cap is 256) change the fill;
//! `RESTART_STORE=<folder>` keeps the filled store there and reuses it on later runs (a copy
//! per run, so each run restarts on the same fill).
//!
//! "Full" here: every device's summary — what a restart reads — at its 2 KiB cap (long texts,
//! 16 rejected declarations), history at its 256 MiB total cap (each device's newest report,
//! oldest dropped first), merged states of `RESTART_STATE_KIB` each. States at their 256 KiB
//! cap for 100,000 devices would be 25 GiB, more than this machine's disk holds; a restart
//! never reads them (they are read one at a time, when that device reports), which the
//! in-process figure of the old listing shows is what mattered.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ddm_update_operator::backend::store::Store;
use ddm_update_operator::status::StatusReport;
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_ddm-update-operator");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A full report for device `i`: a real model and OS, the summary's texts long, 16 rejected
/// declarations, padded to `state_bytes`.
fn report(i: usize, state_bytes: usize) -> Vec<u8> {
    let mut rng = support::Rng(i as u64);
    let model = rng.weighted(support::IPHONES, |m| m.2).1;
    let declarations: Vec<Value> = (0..16)
        .map(|d| {
            json!({"identifier": format!("ddm.enforce.26.{d}-23A{i:06}-20260901T1900"),
                   "server-token": format!("{i:032x}"), "active": false, "valid": "invalid",
                   "reasons": [{"code": "Error.ConfigurationCannotBeApplied"}]})
        })
        .collect();
    let mut items = json!({
        "device": {
            "operating-system": {"family": "iOS", "version": "18.5", "build-version": "22F76"},
            "model": {"identifier": model, "family": "iPhone", "marketing-name": "iPhone ".repeat(30)},
            "identifier": {"serial-number": format!("F{i:011}")},
        },
        "softwareupdate": {
            "install-state": "failed",
            "failure-reason": {"count": 3, "reason": "reason ".repeat(40)},
            "device-id": model,
        },
        "management": {"declarations": {"configurations": declarations}},
    });
    let size = serde_json::to_vec(&items).map_or(0, |b| b.len());
    if state_bytes > size + 32 {
        items["pad"] = json!("x".repeat(state_bytes - size - 32));
    }
    serde_json::to_vec(&json!({"StatusItems": items, "FullReport": true})).unwrap_or_default()
}

fn fill(path: &Path, devices: usize, state_bytes: usize) -> Duration {
    let started = Instant::now();
    let store = Store::open(path).expect("store");
    let mut batch = Vec::with_capacity(1024);
    for i in 0..devices {
        let raw = report(i, state_bytes);
        let parsed = StatusReport::from_slice(&raw).expect("a report");
        batch.push((format!("DEVICE-{i:06}"), parsed, raw));
        if batch.len() == 1024 || i + 1 == devices {
            let outcomes = store.record_reports(&batch).expect("record");
            assert!(outcomes.iter().all(Result::is_ok), "every report is stored");
            batch.clear();
        }
    }
    started.elapsed()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn kib_of(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Starts the operator on `data_dir` and returns (time to ready, peak RSS in KiB).
fn restart(data_dir: &Path) -> (Duration, u64) {
    let (port, admin) = (free_port(), free_port());
    let started = Instant::now();
    let mut child = Command::new(BINARY)
        .args(["run", "--manifests", &format!("{ROOT}/examples/gitops")])
        .args([
            "--catalog",
            &format!("{ROOT}/tests/fixtures/gdmf/pmv-2026-08-22.json"),
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the operator starts");
    let pid = child.id();
    let ready = loop {
        if started.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            panic!("not ready within 10 minutes");
        }
        let answer = std::net::TcpStream::connect(("127.0.0.1", admin))
            .ok()
            .and_then(|mut s| {
                use std::io::{Read, Write};
                s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .ok()?;
                let mut text = String::new();
                s.read_to_string(&mut text).ok()?;
                Some(text)
            });
        if answer.is_some_and(|t| t.starts_with("HTTP/1.1 200")) {
            break started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let peak = kib_of(pid, "VmHWM:");
    let _ = child.kill();
    let _ = child.wait();
    (ready, peak)
}

/// The old listing: every merged state read and parsed, all held at once.
fn old_listing(path: &Path) -> (Duration, u64) {
    let me = std::process::id();
    let before = kib_of(me, "VmRSS:");
    let started = Instant::now();
    let connection = rusqlite::Connection::open(path).expect("open");
    let mut statement = connection
        .prepare("SELECT enrollment_id, items FROM device_state ORDER BY enrollment_id")
        .expect("prepare");
    let states: Vec<(String, serde_json::Map<String, Value>)> = statement
        .query_map([], |row| {
            let bytes: Vec<u8> = row.get(1)?;
            Ok((
                row.get(0)?,
                serde_json::from_slice(&bytes).unwrap_or_default(),
            ))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let took = started.elapsed();
    let grown = kib_of(me, "VmRSS:").saturating_sub(before);
    assert!(!states.is_empty());
    (took, grown)
}

fn main() {
    let devices = env_number("RESTART_DEVICES", 100_000);
    let state_bytes = env_number("RESTART_STATE_KIB", 8) * 1024;
    let base = tempfile::tempdir().expect("tempdir");
    let empty = base.path().join("empty");
    let full = base.path().join("full");
    std::fs::create_dir_all(&empty).expect("mkdir");
    std::fs::create_dir_all(&full).expect("mkdir");
    let database = full.join("ddm.sqlite");
    // RESTART_STORE names a folder to keep the filled store in: filled once (minutes for
    // 100,000 devices), then copied for each run so every run restarts on the same fill.
    let kept =
        std::env::var_os("RESTART_STORE").map(|d| std::path::PathBuf::from(d).join("ddm.sqlite"));
    let reuse = kept.as_ref().is_some_and(|k| k.exists());
    let filled = match &kept {
        Some(kept) => {
            let filled = if reuse {
                Duration::ZERO
            } else {
                if let Some(parent) = kept.parent() {
                    std::fs::create_dir_all(parent).expect("mkdir");
                }
                fill(kept, devices, state_bytes)
            };
            std::fs::copy(kept, &database).expect("a copy of the kept store");
            filled
        }
        None => fill(&database, devices, state_bytes),
    };
    let store = Store::open(&database).expect("store");
    let history = store.history_bytes().expect("history");
    drop(store);
    let size: u64 = ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", database.display())).ok())
        .map(|m| m.len())
        .sum();
    if reuse && let Some(kept) = &kept {
        println!("reusing the store filled in {}", kept.display());
    }
    println!(
        "filled {devices} devices ({} KiB states, {:.0} MiB history) in {:.1} s: {:.0} MiB on disk",
        state_bytes / 1024,
        history as f64 / 1048576.0,
        filled.as_secs_f64(),
        size as f64 / 1048576.0
    );
    let (empty_ready, empty_peak) = restart(&empty);
    let (full_ready, full_peak) = restart(&full);
    let (second_ready, second_peak) = restart(&full);
    println!(
        "restart on the full store: ready in {:.2} s (again: {:.2} s), peak RSS {} MiB (again: {} MiB)",
        full_ready.as_secs_f64(),
        second_ready.as_secs_f64(),
        full_peak / 1024,
        second_peak / 1024
    );
    println!(
        "baseline, same binary on an empty store: ready in {:.2} s, peak RSS {} MiB; ratio ×{:.1} time, ×{:.1} memory",
        empty_ready.as_secs_f64(),
        empty_peak / 1024,
        full_ready.as_secs_f64() / empty_ready.as_secs_f64().max(1e-3),
        full_peak as f64 / empty_peak.max(1) as f64
    );
    let (old_took, old_grown) = old_listing(&database);
    println!(
        "the listing before summaries (every merged state read and parsed, held): {:.2} s, +{} MiB RSS",
        old_took.as_secs_f64(),
        old_grown / 1024
    );
}
