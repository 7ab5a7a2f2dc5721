//! The operator's log as a log pipeline reads it, through the real binary with stderr piped (not
//! a terminal): `run --log-format json` writes one JSON object per line with `timestamp`,
//! `level` and `message`, and an event about a resource or a device names it in a field
//! (`resource`, `enrollment_id`), not only in its message; `text` (the default) writes no ANSI
//! colour codes; `LOG_FORMAT` is the flag's fallback; `--log-format xml` is refused by clap.
//!
//! The events: an UpdatePolicy naming a FleetGroup that does not exist (a problem logged at the
//! first read of the manifests, about that policy), and a device's answer to one of the
//! operator's DeviceInformation commands with a `Status` Apple does not define, posted to the
//! webhook as NanoMDM does (a warning about that device: the report is ignored).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::devices::newest_catalog_path;
use crate::support::manifests::{group, latest_policy, stream};
use crate::support::nanomdm_webhook::{event, post};
use crate::support::process::{KillOnDrop, free_ports};

const BINARY: &str = env!("CARGO_BIN_EXE_ddm-update-operator");
const MAC: &str = "0000FE00-10C5100C5100C510";
/// `Kind namespace/name` of the policy whose FleetGroup is missing.
const DANGLING: &str = "UpdatePolicy fleet/dangling";
const CAP: Duration = Duration::from_secs(30);

/// The operator on a folder with one FleetGroup and a policy naming a missing one, its stderr
/// piped and read line by line.
struct Logged {
    child: KillOnDrop,
    root: String,
    admin: String,
    lines: Arc<Mutex<Vec<String>>>,
    client: reqwest::Client,
    _work: tempfile::TempDir,
}

impl Logged {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Logged {
        let work = tempfile::tempdir().expect("tempdir");
        let manifests = work.path().join("gitops");
        std::fs::create_dir_all(&manifests).expect("manifests folder");
        std::fs::write(
            manifests.join("fleet.yaml"),
            stream(&[
                group("macs", "macOS"),
                latest_policy("dangling", "missing", 5, ""),
            ]),
        )
        .expect("manifests");
        let [port, admin_port] = free_ports();
        let mut command = Command::new(BINARY);
        command
            .arg("run")
            .arg("--manifests")
            .arg(&manifests)
            .arg("--catalog")
            .arg(newest_catalog_path())
            .arg("--data-dir")
            .arg(work.path().join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(args)
            // What the test sets is all that decides the format and the colours.
            .env_remove("LOG_FORMAT")
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the operator starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("lines").push(line);
            }
        });
        Logged {
            child: KillOnDrop(child),
            root: format!("http://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            lines,
            client: reqwest::Client::new(),
            _work: work,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("exited with {status}:\n{}", self.lines().join("\n"));
            }
            let ready = self
                .client
                .get(format!("{}/readyz", self.admin))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return;
            }
            assert!(
                started.elapsed() < CAP,
                "not ready:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a line satisfies `found`.
    async fn wait_for_line(&self, what: &str, found: impl Fn(&str) -> bool) {
        let started = Instant::now();
        while !self.lines().iter().any(|line| found(line)) {
            assert!(
                started.elapsed() < CAP,
                "no line {what}:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// NanoMDM's `mdm.Connect` for the Mac's answer to a DeviceInformation the operator sent,
    /// with a `Status` that is none of Apple's.
    async fn post_unreadable_answer(&self) {
        let mut answers = plist::Dictionary::new();
        answers.insert("ProductName".into(), "Mac14,2".into());
        let uuid = "ddm-update-operator.DeviceInformation.0123456789abcdef";
        let mut report = plist::Dictionary::new();
        report.insert("CommandUUID".into(), uuid.into());
        report.insert("QueryResponses".into(), plist::Value::Dictionary(answers));
        report.insert("Status".into(), "Perhaps".into());
        report.insert("UDID".into(), MAC.into());
        let mut raw = Vec::new();
        plist::Value::Dictionary(report)
            .to_writer_xml(&mut raw)
            .expect("a plist");
        let body = event(
            "mdm.Connect",
            jiff::Timestamp::now(),
            "connect-logs-1",
            "acknowledge_event",
            json!({
                "ids": {"id": MAC, "type": "Device"},
                "udid": MAC,
                "status": "Acknowledged",
                "command_uuid": uuid,
                "raw_payload": base64::engine::general_purpose::STANDARD.encode(&raw),
            }),
        );
        let url = format!("{}/webhook/nanomdm", self.root);
        let (status, text) = post(&self.client, &url, body, None).await;
        assert_eq!(status, 200, "{text}");
    }
}

/// Every line of a `json` log, parsed; panics on one that is not a JSON object.
fn json_lines(lines: &[String]) -> Vec<serde_json::Map<String, Value>> {
    lines
        .iter()
        .map(|line| match serde_json::from_str(line) {
            Ok(Value::Object(object)) => object,
            other => panic!("not a JSON object: {line:?} ({other:?})"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_are_objects_naming_the_resource_and_the_device_in_fields() {
    let mut operator = Logged::start(&["--log-format", "json"], &[]);
    operator.wait_ready().await;
    operator.post_unreadable_answer().await;
    operator
        .wait_for_line("about the Mac", |line| line.contains(MAC))
        .await;
    let lines = operator.lines();
    let objects = json_lines(&lines);
    for object in &objects {
        assert!(
            object.get("level").is_some_and(Value::is_string),
            "{object:?}"
        );
        let stamp = object.get("timestamp").and_then(Value::as_str);
        assert!(
            stamp.is_some_and(|s| s.parse::<jiff::Timestamp>().is_ok()),
            "{object:?}"
        );
        assert!(
            object.get("message").is_some_and(Value::is_string),
            "{object:?}"
        );
    }
    // The policy's problem names it in `resource`.
    let about_policy: Vec<_> = objects
        .iter()
        .filter(|o| serde_json::to_string(o).is_ok_and(|s| s.contains("dangling")))
        .collect();
    assert!(!about_policy.is_empty(), "{lines:#?}");
    for object in &about_policy {
        assert_eq!(object.get("resource"), Some(&json!(DANGLING)), "{object:?}");
        assert_eq!(object["level"], "ERROR");
    }
    // The device's answer names it in `enrollment_id`.
    let about_mac: Vec<_> = objects
        .iter()
        .filter(|o| serde_json::to_string(o).is_ok_and(|s| s.contains(MAC)))
        .collect();
    assert!(!about_mac.is_empty(), "{lines:#?}");
    for object in &about_mac {
        assert_eq!(object.get("enrollment_id"), Some(&json!(MAC)), "{object:?}");
    }
    assert!(
        about_mac
            .iter()
            .any(|o| o["error"] == "unknown Status \"Perhaps\"" && o["level"] == "WARN"),
        "{about_mac:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_log_on_a_pipe_has_no_colour_codes_and_log_format_falls_back_to_its_env() {
    // The default format, on a pipe.
    let mut operator = Logged::start(&[], &[]);
    operator.wait_ready().await;
    operator.post_unreadable_answer().await;
    operator
        .wait_for_line("about the Mac", |line| line.contains(MAC))
        .await;
    let text = operator.lines().join("\n");
    assert!(!text.contains("\u{1b}["), "{text}");
    assert!(text.contains(DANGLING), "{text}");
    assert!(
        serde_json::from_str::<Value>(operator.lines()[0].as_str()).is_err(),
        "{text}"
    );
    drop(operator);

    // LOG_FORMAT=json without the flag.
    let mut operator = Logged::start(&[], &[("LOG_FORMAT", "json")]);
    operator.wait_ready().await;
    let objects = json_lines(&operator.lines());
    assert!(
        objects
            .iter()
            .any(|o| o.get("resource") == Some(&json!(DANGLING))),
        "{objects:#?}"
    );
    // The flag wins over the variable.
    let mut operator = Logged::start(&["--log-format", "text"], &[("LOG_FORMAT", "json")]);
    operator.wait_ready().await;
    assert!(
        serde_json::from_str::<Value>(operator.lines()[0].as_str()).is_err(),
        "{:#?}",
        operator.lines()
    );
}

#[test]
fn an_unknown_log_format_is_refused_naming_the_choices() {
    let work = tempfile::tempdir().expect("tempdir");
    let output = Command::new(BINARY)
        .args(["run", "--log-format", "xml", "--manifests"])
        .arg(work.path())
        .arg("--data-dir")
        .arg(Path::new(work.path()).join("data"))
        .env_remove("LOG_FORMAT")
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("'xml'"), "{stderr}");
    assert!(stderr.contains("--log-format"), "{stderr}");
    assert!(stderr.contains("[possible values: text, json]"), "{stderr}");
}
