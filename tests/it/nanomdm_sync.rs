//! The sync trigger against a NanoMDM stand-in on loopback: debounced per device, batched in the
//! URL, Basic-authenticated, retried after a failure, carrying a DeclarativeManagement command.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::put;
use base64::Engine as _;
use ddm_update_operator::backend::nanomdm::{NanoMdmConfig, SyncTrigger};

#[derive(Default)]
struct Seen {
    requests: Vec<(String, String, String)>,
    fail_first: bool,
}

async fn enqueue(
    State(seen): State<Arc<Mutex<Seen>>>,
    Path(ids): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut seen = seen.lock().expect("lock");
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    seen.requests
        .push((ids, auth, String::from_utf8_lossy(&body).into_owned()));
    if seen.fail_first {
        seen.fail_first = false;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::OK
}

async fn nanomdm(fail_first: bool) -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen {
        fail_first,
        ..Seen::default()
    }));
    let app = Router::new()
        .route("/v1/enqueue/{ids}", put(enqueue))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{address}"), seen)
}

async fn wait_for(seen: &Arc<Mutex<Seen>>, count: usize) -> Vec<(String, String, String)> {
    for _ in 0..100 {
        let requests = seen.lock().expect("lock").requests.clone();
        if requests.len() >= count {
            return requests;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen.lock().expect("lock").requests.clone()
}

#[tokio::test]
async fn changes_are_debounced_batched_and_authenticated() {
    let (url, seen) = nanomdm(false).await;
    let mut config = NanoMdmConfig::new(url, "s3cret");
    config.debounce = Duration::from_millis(200);
    config.batch = 2;
    let trigger = SyncTrigger::start(config, reqwest::Client::new());
    trigger.notify(&["C".into(), "A".into()]);
    trigger.notify(&["B".into(), "A".into()]);
    let requests = wait_for(&seen, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests_after = seen.lock().expect("lock").requests.clone();
    assert_eq!(
        requests_after.len(),
        2,
        "one command per device: {requests:?}"
    );
    let ids: Vec<&str> = requests.iter().map(|(ids, _, _)| ids.as_str()).collect();
    assert_eq!(ids, ["A,B", "C"]);
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("nanomdm:s3cret")
    );
    for (_, auth, body) in &requests {
        assert_eq!(auth, &expected);
        assert!(
            body.contains("<string>DeclarativeManagement</string>"),
            "{body}"
        );
        assert!(body.contains("<key>CommandUUID</key>"));
    }
}

#[tokio::test]
async fn a_failed_enqueue_is_retried() {
    let (url, seen) = nanomdm(true).await;
    let mut config = NanoMdmConfig::new(url, "k");
    config.debounce = Duration::from_millis(50);
    let metrics = std::sync::Arc::new(ddm_update_operator::metrics::Metrics::new());
    let trigger =
        SyncTrigger::start_with_metrics(config, reqwest::Client::new(), Some(metrics.clone()));
    trigger.notify(&["DEV".into()]);
    let requests = wait_for(&seen, 2).await;
    assert_eq!(requests.len(), 2, "{requests:?}");
    // Both attempts are counted, by outcome, with their latency.
    let mut text = String::new();
    for _ in 0..50 {
        text = metrics.encode();
        if text.contains("outcome=\"ok\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let prefix =
        "ddm_update_operator_backend_requests_total{backend=\"nanomdm\",operation=\"enqueue\"";
    assert!(
        text.contains(&format!("{prefix},outcome=\"error\"}} 1")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{prefix},outcome=\"ok\"}} 1")),
        "{text}"
    );
    assert!(
        text.contains(
            "ddm_update_operator_backend_request_duration_seconds_count{backend=\"nanomdm\",operation=\"enqueue\"} 2"
        ),
        "{text}"
    );
    assert_eq!(requests[0].0, requests[1].0);
    assert_ne!(
        requests[0].2, requests[1].2,
        "a retry is a new command (new CommandUUID)"
    );
}
