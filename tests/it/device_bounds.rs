//! Issue 12, items 2 and 3 over real HTTP on loopback: a GET never creates state (NanoMDM's
//! HMAC does not bind the enrollment id), and one device cannot exhaust the operator — its
//! merged state is capped (413), its reports are rate limited (429), and another device's
//! report is not held up meanwhile.

use std::time::{Duration, Instant};

use ddm_update_operator::backend::store::Store;
use ddm_update_operator::clock::Clock;
use ddm_update_operator::status::{MAX_STATE_BYTES, limit::REPORT_BURST};
use serde_json::Value;

use crate::support::ddm::{DdmServer, ddm_server, sign};
use crate::support::process::metric_sum;

/// The device side as the operator serves it, on a store whose clock (which the rate limit
/// reads) the test moves.
async fn server(receive_key: Option<&[u8]>) -> DdmServer {
    let clock = Clock::manual("2026-09-01T00:00:00Z".parse().expect("a timestamp"));
    ddm_server(receive_key, None, clock).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

async fn put(
    client: &reqwest::Client,
    base: &str,
    enrollment: &str,
    body: Vec<u8>,
    signature: Option<String>,
) -> reqwest::Response {
    let mut request = client
        .put(format!("{base}status"))
        .header("X-Enrollment-ID", enrollment)
        .body(body);
    if let Some(signature) = signature {
        request = request.header("X-Hmac-Signature", signature);
    }
    request.send().await.expect("loopback request")
}

fn counts(store: &Store) -> Vec<(&'static str, i64)> {
    store.counts().expect("counts").to_vec()
}

/// An incremental report adding `bytes` of padding under its own key.
fn padded(key: &str, bytes: usize) -> Vec<u8> {
    format!(
        r#"{{"StatusItems":{{"pad":{{"{key}":"{}"}}}}}}"#,
        "x".repeat(bytes)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_for_unknown_enrollments_store_nothing_and_still_serve_the_bootstrap_set() {
    let key = b"nanomdm-dm-key";
    let s = server(Some(key)).await;
    let client = client();
    let before = counts(&s.store);
    // NanoMDM signs the body only: one captured GET signature works for every enrollment id.
    let signature = sign(key, b"");
    use futures::StreamExt as _;
    // 32 at a time: the device listener caps its connections.
    let gets: Vec<reqwest::StatusCode> = futures::stream::iter((0..2_000u32).map(|i| {
        let (client, base, signature) = (client.clone(), s.base.clone(), signature.clone());
        async move {
            let id = format!(
                "RANDOM-{}",
                ddm_update_operator::declarations::content_hash(&[&i.to_be_bytes()])
            );
            let path = if i % 2 == 0 {
                "tokens"
            } else {
                "declaration-items"
            };
            client
                .get(format!("{base}{path}"))
                .header("X-Enrollment-ID", id)
                .header("X-Hmac-Signature", signature)
                .send()
                .await
                .expect("loopback request")
                .status()
        }
    }))
    .buffer_unordered(32)
    .collect()
    .await;
    assert!(
        gets.iter().all(|status| *status == 200),
        "every GET is answered"
    );
    assert_eq!(
        counts(&s.store),
        before,
        "2,000 GETs of random ids wrote no row"
    );

    // An unknown enrollment still gets the bootstrap set, and can fetch each declaration.
    let get = |path: String| {
        let (client, signature) = (client.clone(), signature.clone());
        async move {
            let response = client
                .get(path)
                .header("X-Enrollment-ID", "NEW-DEVICE")
                .header("X-Hmac-Signature", signature)
                .send()
                .await
                .expect("loopback request");
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.expect("json")
        }
    };
    let tokens = get(format!("{}tokens", s.base)).await;
    let items = get(format!("{}declaration-items", s.base)).await;
    assert_eq!(
        tokens["SyncTokens"]["DeclarationsToken"], items["DeclarationsToken"],
        "tokens and items agree"
    );
    let bootstrap = ddm_update_operator::operator::bootstrap_declarations();
    for declaration in &bootstrap {
        let kind = ddm_update_operator::backend::store::kind_of(declaration.declaration_type);
        let body = get(format!(
            "{}declaration/{kind}/{}",
            s.base, declaration.identifier
        ))
        .await;
        assert_eq!(body["Identifier"], declaration.identifier.as_str());
        assert_eq!(body["ServerToken"], declaration.server_token.as_str());
    }
    let listed: usize = ["Activations", "Configurations", "Assets", "Management"]
        .iter()
        .map(|k| items["Declarations"][k].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(listed, bootstrap.len());
    assert_eq!(
        counts(&s.store),
        before,
        "serving the bootstrap set wrote nothing"
    );

    // Only a report makes an enrollment known.
    let body = br#"{"StatusItems":{"device":{"operating-system":{"version":"26.3"}}}}"#.to_vec();
    let response = put(
        &client,
        &s.base,
        "NEW-DEVICE",
        body.clone(),
        Some(sign(key, &body)),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(s.store.device_items("NEW-DEVICE").expect("read").is_some());

    // The residual risk the README documents: the signature covers the body, not the
    // enrollment id, so a body signed for one device is accepted under another id by anyone who
    // can reach the DDM port (network isolation to NanoMDM alone closes it).
    let replayed = put(
        &client,
        &s.base,
        "OTHER-DEVICE",
        body.clone(),
        Some(sign(key, &body)),
    )
    .await;
    assert_eq!(
        replayed.status(),
        200,
        "replay under another id is accepted (documented)"
    );
    // A body nobody signed still is not.
    let forged = br#"{"StatusItems":{"device":{"operating-system":{"version":"26.99"}}}}"#.to_vec();
    let refused = put(
        &client,
        &s.base,
        "OTHER-DEVICE",
        forged,
        Some(sign(key, &body)),
    )
    .await;
    assert_eq!(refused.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_sending_megabytes_is_refused_past_the_cap_and_holds_no_one_up() {
    let s = server(None).await;
    let client = client();
    // Another device reporting all along: its reports are timed.
    let other = {
        let (client, base) = (client.clone(), s.base.clone());
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for i in 0..20 {
                let body = format!(
                    r#"{{"StatusItems":{{"softwareupdate":{{"failure-reason":{{"count":{i}}}}}}}}}"#
                )
                .into_bytes();
                let started = Instant::now();
                let response = put(&client, &base, "OTHER", body, None).await;
                slowest = slowest.max(started.elapsed());
                assert_eq!(response.status(), 200);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            slowest
        })
    };
    // 60 incremental reports of 1 MiB (just under the body cap) to one enrollment, spaced out
    // on the store's clock so the rate limit is not what refuses them.
    let big = ddm_update_operator::status::MAX_REPORT_BYTES - 100;
    let started = Instant::now();
    let mut codes = Vec::new();
    for i in 0..60 {
        s.clock.advance(jiff::SignedDuration::from_secs(60));
        let response = put(&client, &s.base, "HOG", padded(&format!("k{i}"), big), None).await;
        codes.push(response.status().as_u16());
    }
    let hog_time = started.elapsed();
    // Then 60 incremental reports of 20 KB: accepted until the merged state reaches the cap.
    let mut small_codes = Vec::new();
    for i in 0..60 {
        s.clock.advance(jiff::SignedDuration::from_secs(60));
        let response = put(
            &client,
            &s.base,
            "GROWER",
            padded(&format!("k{i}"), 20_000),
            None,
        )
        .await;
        small_codes.push(response.status().as_u16());
    }
    let slowest = other.await.expect("the other device's task");
    eprintln!(
        "60 × 1 MiB reports: {:.2} s in all; another device's slowest report meanwhile: {} ms",
        hog_time.as_secs_f64(),
        slowest.as_millis()
    );
    assert!(
        codes.iter().all(|c| *c == 413),
        "each 1 MiB report alone exceeds the cap: {codes:?}"
    );
    let accepted = small_codes.iter().take_while(|c| **c == 200).count();
    assert_eq!(
        accepted,
        MAX_STATE_BYTES / 20_000,
        "accepted up to the cap: {small_codes:?}"
    );
    assert!(
        small_codes[accepted..].iter().all(|c| *c == 413),
        "{small_codes:?}"
    );
    let grown = s
        .store
        .device_items("GROWER")
        .expect("read")
        .expect("state");
    assert!(serde_json::to_vec(&grown).expect("json").len() <= MAX_STATE_BYTES);
    assert!(
        slowest < Duration::from_secs(2),
        "another device's report waited {slowest:?}"
    );
    let refused = metric_sum(
        &s.metrics.encode(),
        "ddm_update_operator_status_reports_refused_total",
    );
    assert_eq!(refused as usize, 60 + (60 - accepted));
    // The store holds the capped state and a bounded history, nothing of the refused megabytes.
    drop(s.store.counts());
    let size: u64 = ["", "-wal"]
        .iter()
        .filter_map(|suffix| {
            std::fs::metadata(format!("{}{suffix}", s.path.display()))
                .ok()
                .map(|m| m.len())
        })
        .sum();
    assert!(size < 4 * 1024 * 1024, "the store is {size} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_beyond_the_rate_limit_get_429_with_retry_after() {
    let s = server(None).await;
    let client = client();
    let body = br#"{"StatusItems":{"softwareupdate":{"install-state":"downloading"}}}"#.to_vec();
    for _ in 0..REPORT_BURST {
        assert_eq!(
            put(&client, &s.base, "CHATTY", body.clone(), None)
                .await
                .status(),
            200
        );
    }
    let limited = put(&client, &s.base, "CHATTY", body.clone(), None).await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().get("retry-after").is_some());
    assert_eq!(
        put(&client, &s.base, "QUIET", body.clone(), None)
            .await
            .status(),
        200,
        "another enrollment is not limited"
    );
    s.clock.advance(jiff::SignedDuration::from_secs(6));
    assert_eq!(
        put(&client, &s.base, "CHATTY", body, None).await.status(),
        200,
        "refilled"
    );
    let text = s.metrics.encode();
    assert!(
        text.contains(
            r#"ddm_update_operator_status_reports_refused_total{reason="rate_limited"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"ddm_update_operator_insecure{setting="no_hmac"} 1"#));
}

const BINARY: &str = env!("CARGO_BIN_EXE_ddm-update-operator");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `run` in Kubernetes mode (no `--manifests`) on a data dir of its own, with `extra` flags.
fn kubernetes_mode(
    data_dir: &std::path::Path,
    ports: [u16; 2],
    extra: &[&str],
) -> std::process::Command {
    let mut command = std::process::Command::new(BINARY);
    command
        .args([
            "run",
            "--catalog",
            &format!("{ROOT}/tests/fixtures/gdmf/pmv-2026-08-22.json"),
        ])
        .args(["--listen", &format!("127.0.0.1:{}", ports[0])])
        .args(["--admin-listen", &format!("127.0.0.1:{}", ports[1])])
        // A namespace every cluster has and no test uses: the Lease and the watch stay apart.
        .args([
            "--lease-namespace",
            "kube-public",
            "--watch-namespace",
            "kube-public",
        ])
        .args(["--identity", "device-bounds-test"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(path) = &crate::kubernetes::access().kubeconfig {
        command.env("KUBECONFIG", path);
    }
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_refuses_to_start_without_hmac_unless_told_and_then_says_so() {
    let client = crate::kubernetes::plain_client().await;
    crate::kubernetes::install_crds(&client).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = crate::support::process::free_ports();
    let refused = kubernetes_mode(dir.path(), ports, &[])
        .output()
        .expect("the operator runs");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--dm-receive-key-file"), "{stderr}");
    assert!(stderr.contains("--insecure-no-hmac"), "{stderr}");

    let operator = kubernetes_mode(dir.path(), ports, &["--insecure-no-hmac"])
        .spawn()
        .expect("the operator starts");
    let _operator = crate::support::process::KillOnDrop(operator);
    let http = reqwest::Client::new();
    let started = Instant::now();
    let text = loop {
        let answer = http
            .get(format!("http://127.0.0.1:{}/metrics", ports[1]))
            .send()
            .await;
        if let Ok(answer) = answer
            && answer.status() == 200
        {
            break answer.text().await.expect("metrics");
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no /metrics within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        text.contains(r#"ddm_update_operator_insecure{setting="no_hmac"} 1"#),
        "{text}"
    );
}
