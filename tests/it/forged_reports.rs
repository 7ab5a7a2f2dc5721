//! Reports that claim what Apple never released (issue 12: with no HMAC key, a `PUT status`
//! claiming OS 26.99 for an inventory device took its forced update away within 2 s). The
//! operator runs standalone on loopback with Apple's answer of 2026-08-22, an inventory iPhone
//! below the latest release and a `latest` policy: the forged report is answered 422 and counted,
//! the device keeps its enforcement; a true report still goes through and completes it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ddm_update_operator::operator::{CatalogSource, RunConfig};
use ddm_update_operator::run::Engine;

const MANIFESTS: &str = include_str!("../fixtures/manifests/phones-latest.yaml");

/// An iPhone 14 Pro on 26.5 (23F77), both of which Apple's answer lists for it.
const INVENTORY: &str = r#"
devices:
  - enrollmentId: "00008120-000A1C2E3E08801E"
    serialNumber: "F2LXK1ABCD"
    platform: "iOS"
    model: "iPhone15,2"
    osVersion: "26.5"
    buildVersion: "23F77"
    supervised: true
    enrollmentType: "ade"
"#;

const PHONE: &str = "00008120-000A1C2E3E08801E";

struct Operator {
    device: String,
    admin: String,
    client: reqwest::Client,
    _work: tempfile::TempDir,
}

impl Operator {
    async fn start() -> Self {
        let work = tempfile::tempdir().expect("temp dir");
        let manifests = work.path().join("gitops");
        std::fs::create_dir_all(&manifests).expect("manifests folder");
        std::fs::write(manifests.join("fleet.yaml"), MANIFESTS).expect("manifests");
        let inventory = work.path().join("inventory.yaml");
        std::fs::write(&inventory, INVENTORY).expect("inventory");
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let config = RunConfig {
            inventory: Some(inventory),
            ..RunConfig::local(
                manifests,
                CatalogSource::File(root.join("tests/fixtures/gdmf/pmv-2026-08-22.json")),
                work.path(),
            )
        };
        let engine = Engine::start(config).await.expect("the operator starts");
        let device = engine.local_addr().expect("device address");
        let admin = engine.admin_addr().expect("admin address");
        tokio::spawn(engine.serve());
        Operator {
            device: format!("http://{device}/ddm"),
            admin: format!("http://{admin}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            _work: work,
        }
    }

    /// The enforcement identifiers the device is served now.
    async fn enforcements(&self) -> Vec<String> {
        let items: serde_json::Value = self
            .client
            .get(format!("{}/declaration-items", self.device))
            .header("x-enrollment-id", PHONE)
            .send()
            .await
            .expect("answers")
            .json()
            .await
            .expect("JSON");
        items["Declarations"]["Configurations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["Identifier"].as_str())
            .filter(|i| i.starts_with("ddm.enforce."))
            .map(str::to_string)
            .collect()
    }

    async fn report(&self, items: serde_json::Value) -> (u16, String) {
        let body = serde_json::json!({"StatusItems": items, "Errors": [], "FullReport": false});
        let response = self
            .client
            .put(format!("{}/status", self.device))
            .header("x-enrollment-id", PHONE)
            .body(body.to_string())
            .send()
            .await
            .expect("answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("text"))
    }

    async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("answers")
            .text()
            .await
            .expect("text")
    }
}

fn os(version: &str, build: &str) -> serde_json::Value {
    serde_json::json!({"device": {"operating-system": {"version": version, "build-version": build}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_newer_os_is_refused_and_the_device_keeps_its_enforcement() {
    let operator = Operator::start().await;
    let before = operator.enforcements().await;
    assert_eq!(
        before.len(),
        1,
        "the inventory phone is enforced: {before:?}"
    );

    // The issue's forged report: OS 26.99, no signature needed.
    let (code, text) = operator.report(os("26.99", "23Z99")).await;
    assert_eq!(code, 422, "{text}");
    assert!(text.contains("newer than every release"), "{text}");
    // A beta-looking build does not make 26.99 plausible either.
    let (code, _) = operator.report(os("26.99", "23Z5001a")).await;
    assert_eq!(code, 422);
    // Nor does claiming an older model whose newest release is 16.7.x.
    let swapped = serde_json::json!({
        "device": {
            "model": {"identifier": "iPhone10,1", "family": "iPhone"},
            "operating-system": {"version": "16.7.12", "build-version": "20H364"},
        }
    });
    let (code, text) = operator.report(swapped).await;
    assert_eq!(code, 422, "{text}");
    assert!(text.contains("iPhone15,2"), "{text}");
    // A known version with a build Apple never gave this model.
    let (code, text) = operator.report(os("26.6.1", "23G99")).await;
    assert_eq!(code, 422, "{text}");

    // Well past the 2 s of the issue (and the loop's half-second debounce): still enforced.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(operator.enforcements().await, before);
    let metrics = operator.metrics().await;
    for (reason, count) in [
        ("NewerThanCatalog", 2.0),
        ("ModelChanged", 1.0),
        ("UnknownBuild", 1.0),
    ] {
        let key =
            format!("ddm_update_operator_status_claims_refused_total{{reason=\"{reason}\"}} ");
        let found = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key)?.trim().parse::<f64>().ok());
        assert_eq!(found, Some(count), "{reason}: {metrics}");
    }

    // What the device really reports is taken: the latest release (either twin build)
    // completes the enforcement, which is then withdrawn.
    let (code, text) = operator.report(os("26.6.1", "23G83")).await;
    assert_eq!(code, 200, "{text}");
    let started = Instant::now();
    while !operator.enforcements().await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the true report did not complete the enforcement"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
