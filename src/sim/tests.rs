//! The simulator against a small DDM server run in-process on loopback: a fixed set of
//! declarations, request recording, HMAC both ways.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::*;
use crate::catalog::{Catalog, OsVersion, Platform};

const REQUEST_KEY: &[u8] = b"request-key";
const RESPONSE_KEY: &[u8] = b"response-key";

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    enrollment_id: Option<String>,
    signature: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

#[derive(Default)]
struct ServerState {
    /// identifier → (category path segment, declaration)
    declarations: BTreeMap<String, (&'static str, Value)>,
    /// Listed in `declaration-items` but answered 404.
    hidden: Vec<String>,
    request_key: Option<Vec<u8>>,
    response_key: Option<Vec<u8>>,
    wrong_response_signature: bool,
    requests: Vec<Recorded>,
    reports: Vec<Value>,
}

struct TestServer {
    base: String,
    state: Arc<Mutex<ServerState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<ServerState>) -> MutexGuard<'_, ServerState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TestServer {
    async fn start(state: ServerState) -> TestServer {
        let state = Arc::new(Mutex::new(state));
        let shared = Arc::clone(&state);
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = Arc::clone(&shared);
                async move { handle(&state, method, uri, headers, body) }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestServer {
            base: format!("http://{address}/ddm/"),
            state,
            task,
        }
    }

    fn config(&self) -> ServerConfig {
        ServerConfig::new(&self.base).expect("valid base")
    }

    fn assign(&self, category: &'static str, declaration: Value) {
        let identifier = declaration["Identifier"]
            .as_str()
            .expect("identifier")
            .to_string();
        lock(&self.state)
            .declarations
            .insert(identifier, (category, declaration));
    }

    fn withdraw(&self, identifier: &str) {
        lock(&self.state).declarations.remove(identifier);
    }

    fn requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut lock(&self.state).requests)
    }

    fn paths(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }
}

fn declarations_token(declarations: &BTreeMap<String, (&'static str, Value)>) -> String {
    let parts: Vec<String> = declarations
        .iter()
        .map(|(id, (_, d))| format!("{id}={}", d["ServerToken"].as_str().unwrap_or_default()))
        .collect();
    crate::declarations::content_hash(&[parts.join(",").as_bytes()])
}

fn handle(
    state: &Mutex<ServerState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = lock(state);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    state.requests.push(Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        enrollment_id: header("x-enrollment-id"),
        signature: header("x-hmac-signature"),
        content_type: header("content-type"),
        body: body.to_vec(),
    });
    if let Some(key) = &state.request_key {
        let signed = header("x-hmac-signature").is_some_and(|s| verify_signature(key, &body, &s));
        if !signed {
            return StatusCode::FORBIDDEN.into_response();
        }
    }
    let path = uri.path().strip_prefix("/ddm/").unwrap_or_default();
    let (status, answer): (StatusCode, Vec<u8>) = match (method.as_str(), path) {
        ("GET", "tokens") => (
            StatusCode::OK,
            json!({"SyncTokens": {
                "DeclarationsToken": declarations_token(&state.declarations),
                "Timestamp": "2026-08-22T18:00:00Z"}})
            .to_string()
            .into_bytes(),
        ),
        ("GET", "declaration-items") => {
            let mut lists: BTreeMap<&str, Vec<Value>> =
                ["Activations", "Configurations", "Assets", "Management"]
                    .into_iter()
                    .map(|k| (k, Vec::new()))
                    .collect();
            for (id, (category, declaration)) in &state.declarations {
                let key = match *category {
                    "activation" => "Activations",
                    "configuration" => "Configurations",
                    "asset" => "Assets",
                    _ => "Management",
                };
                lists
                    .entry(key)
                    .or_default()
                    .push(json!({"Identifier": id, "ServerToken": declaration["ServerToken"]}));
            }
            (
                StatusCode::OK,
                json!({"Declarations": lists, "DeclarationsToken": declarations_token(&state.declarations)})
                    .to_string()
                    .into_bytes(),
            )
        }
        ("GET", path) if path.starts_with("declaration/") => {
            let mut parts = path.splitn(3, '/').skip(1);
            let (category, identifier) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            match state.declarations.get(identifier) {
                Some((c, declaration))
                    if *c == category && !state.hidden.iter().any(|h| h == identifier) =>
                {
                    (StatusCode::OK, declaration.to_string().into_bytes())
                }
                _ => (StatusCode::NOT_FOUND, Vec::new()),
            }
        }
        ("PUT", "status") => match serde_json::from_slice::<Value>(&body) {
            Ok(report) => {
                state.reports.push(report);
                (StatusCode::OK, Vec::new())
            }
            Err(_) => (StatusCode::BAD_REQUEST, Vec::new()),
        },
        _ => (StatusCode::NOT_FOUND, Vec::new()),
    };
    let mut response = (status, answer.clone()).into_response();
    if let Some(key) = &state.response_key {
        let signed: &[u8] = if state.wrong_response_signature {
            b"something else"
        } else {
            &answer
        };
        if let Ok(value) = sign(key, signed).parse() {
            response.headers_mut().insert("x-hmac-signature", value);
        }
    }
    response
}

fn declaration(declaration_type: &str, identifier: &str, payload: Value) -> Value {
    let token = crate::declarations::content_hash(&[payload.to_string().as_bytes()]);
    json!({"Type": declaration_type, "Identifier": identifier, "ServerToken": token, "Payload": payload})
}

fn activation(identifier: &str, configurations: &[&str]) -> Value {
    declaration(
        "com.apple.activation.simple",
        identifier,
        json!({ "StandardConfigurations": configurations }),
    )
}

const ALL_ITEMS: [&str; 17] = [
    "device.identifier.serial-number",
    "device.identifier.udid",
    "device.model.family",
    "device.model.identifier",
    "device.model.marketing-name",
    "device.operating-system.build-version",
    "device.operating-system.family",
    "device.operating-system.marketing-name",
    "device.operating-system.supplemental.build-version",
    "device.operating-system.supplemental.extra-version",
    "device.operating-system.version",
    "softwareupdate.beta-enrollment",
    "softwareupdate.device-id",
    "softwareupdate.failure-reason",
    "softwareupdate.install-reason",
    "softwareupdate.install-state",
    "softwareupdate.pending-version",
];

fn subscriptions(identifier: &str, names: &[&str]) -> Value {
    let items: Vec<Value> = names.iter().map(|n| json!({ "Name": n })).collect();
    declaration(
        "com.apple.configuration.management.status-subscriptions",
        identifier,
        json!({ "StatusItems": items }),
    )
}

fn enforcement(identifier: &str, version: &str, build: Option<&str>, deadline: &str) -> Value {
    let mut payload = json!({"TargetOSVersion": version, "TargetLocalDateTime": deadline});
    if let Some(build) = build {
        payload["TargetBuildVersion"] = build.into();
    }
    declaration(
        "com.apple.configuration.softwareupdate.enforcement.specific",
        identifier,
        payload,
    )
}

fn offered(list: &[(&str, &str, Option<&str>)]) -> Arc<[OfferedUpdate]> {
    list.iter()
        .map(|(version, build, prerequisite)| OfferedUpdate {
            version: version.parse().expect("version"),
            build: build.to_string(),
            prerequisite_build: prerequisite.map(str::to_string),
        })
        .collect::<Vec<_>>()
        .into()
}

/// A supervised Mac on `version`/`build` that Apple offers a few macOS releases.
fn mac(version: &str, build: &str) -> SimDevice {
    let mut spec = DeviceSpec::new(
        "0000FE00-5FADE97DCBBBEDA5",
        Platform::MacOs,
        "Mac14,2",
        version,
        build,
    )
    .expect("valid device");
    spec.software_update_device_id = Some("J413AP".into());
    spec.offered_updates = offered(&[
        ("15.6", "24G84", None),
        ("15.7.7", "24G720", None),
        ("26.3.1", "25D2128", None),
        ("26.3.1 (a)", "25D771280a", Some("25D2128")),
        ("26.6.1", "25G76", None),
        ("26.6.2", "25G83", None),
    ]);
    SimDevice::new(spec)
}

fn client() -> reqwest::Client {
    http_client(Duration::from_secs(5)).expect("client")
}

fn at<'a>(value: &'a Value, dotted: &str) -> &'a Value {
    dotted
        .split('.')
        .fold(value, |v, part| v.get(part).unwrap_or(&Value::Null))
}

fn item<'a>(report: &'a Value, dotted: &str) -> &'a Value {
    at(&report["StatusItems"], dotted)
}

/// Server with a status subscription to everything, an activation naming it and an
/// enforcement to 26.6.2, and a management declaration.
async fn standard_server(request_key: Option<&[u8]>) -> TestServer {
    let server = TestServer::start(ServerState {
        request_key: request_key.map(<[u8]>::to_vec),
        ..ServerState::default()
    })
    .await;
    server.assign("configuration", subscriptions("sub", &ALL_ITEMS));
    server.assign(
        "configuration",
        enforcement("enforce.26.6.2", "26.6.2", None, "2026-09-01T19:00:00"),
    );
    server.assign("activation", activation("act", &["sub", "enforce.26.6.2"]));
    server.assign(
        "management",
        declaration(
            "com.apple.management.server-capabilities",
            "caps",
            json!({"Version": "1.0.0", "SupportedFeatures": {}}),
        ),
    );
    server
}

#[tokio::test]
async fn fetches_exactly_what_is_assigned_signs_requests_and_sends_a_full_report() {
    let server = standard_server(Some(REQUEST_KEY)).await;
    let config = server.config().with_request_key(REQUEST_KEY);
    let mut device = mac("15.5", "24F74");
    let outcome = device.sync(&client(), &config).await.expect("sync");

    let requests = server.requests();
    let paths: Vec<String> = requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        paths,
        [
            "GET /ddm/tokens",
            "GET /ddm/declaration-items",
            "GET /ddm/declaration/activation/act",
            "GET /ddm/declaration/configuration/enforce.26.6.2",
            "GET /ddm/declaration/configuration/sub",
            "GET /ddm/declaration/management/caps",
            "PUT /ddm/status",
        ]
    );
    for request in &requests {
        assert_eq!(
            request.enrollment_id.as_deref(),
            Some("0000FE00-5FADE97DCBBBEDA5")
        );
        let signature = request.signature.as_deref().expect("signed");
        assert!(verify_signature(REQUEST_KEY, &request.body, signature));
        assert_eq!(
            signature,
            sign(REQUEST_KEY, &request.body),
            "{}",
            request.path
        );
    }
    let put = &requests[6];
    assert_eq!(put.content_type.as_deref(), Some("application/json"));
    assert!(requests[0].body.is_empty());
    assert_eq!(outcome.requests, 7);
    assert_eq!(outcome.fetched.len(), 4);
    assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
    assert_eq!(device.declarations_token().map(str::len), Some(32));

    // The report the server received is the one the device kept, in Apple's layout.
    let text = String::from_utf8(put.body.clone()).expect("utf-8");
    assert!(text.contains("\"FullReport\" : true"), "{text}");
    let report: Value = serde_json::from_slice(&put.body).expect("JSON");
    assert_eq!(Some(&report), device.last_report());
    assert_eq!(report["Errors"], json!([]));
    assert_eq!(item(&report, "device.model.identifier"), "Mac14,2");
    assert_eq!(item(&report, "device.model.family"), "Mac");
    assert_eq!(
        item(&report, "device.model.marketing-name"),
        "Mac (Mac14,2)"
    );
    assert_eq!(item(&report, "device.operating-system.version"), "15.5");
    assert_eq!(
        item(&report, "device.operating-system.build-version"),
        "24F74"
    );
    assert_eq!(
        item(
            &report,
            "device.operating-system.supplemental.extra-version"
        ),
        ""
    );
    assert_eq!(
        item(
            &report,
            "device.operating-system.supplemental.build-version"
        ),
        "24F74"
    );
    assert_eq!(
        item(&report, "device.identifier.serial-number")
            .as_str()
            .map(str::len),
        Some(10)
    );
    assert_eq!(item(&report, "softwareupdate.device-id"), "J413AP");
    assert_eq!(item(&report, "softwareupdate.install-state"), "none");
    assert_eq!(
        item(&report, "softwareupdate.pending-version"),
        &json!({"os-version": "", "build-version": ""})
    );
    let declarations = item(&report, "management.declarations");
    assert_eq!(declarations["activations"][0]["identifier"], "act");
    assert_eq!(declarations["management"][0]["identifier"], "caps");
    for entry in declarations["configurations"].as_array().expect("array") {
        assert_eq!(entry["active"], true, "{entry}");
        assert_eq!(entry["valid"], "valid", "{entry}");
        assert!(entry.get("reasons").is_none());
    }
    assert!(
        item(
            &report,
            "management.client-capabilities.supported-payloads.status-items"
        )
        .as_array()
        .expect("array")
        .iter()
        .any(|i| i == "softwareupdate.device-id")
    );

    // The operator's own parser reads it.
    let parsed = crate::status::StatusReport::from_slice(&put.body).expect("operator parses");
    assert!(parsed.full_report);
    let mut state = serde_json::Map::new();
    crate::status::merge(&mut state, &parsed);
    let status = crate::status::DeviceStatus::from_items(&state);
    assert_eq!(status.os_version.as_deref(), Some("15.5"));
    assert_eq!(status.software_update_device_id.as_deref(), Some("J413AP"));
    assert_eq!(status.declarations.len(), 4);
}

#[tokio::test]
async fn unchanged_tokens_are_skipped_and_withdrawn_declarations_dropped() {
    let server = standard_server(None).await;
    let config = server.config();
    let client = client();
    let mut device = mac("15.5", "24F74");
    device.sync(&client, &config).await.expect("first sync");
    server.requests();

    // Nothing changed: only the tokens are read, and nothing is reported.
    let outcome = device.sync(&client, &config).await.expect("second sync");
    assert_eq!(server.paths(), ["GET /ddm/tokens"]);
    assert!(!outcome.declarations_changed && outcome.report.is_none());

    // One declaration changes, one is withdrawn: only the changed one is fetched.
    server.assign(
        "configuration",
        enforcement("enforce.26.6.2", "26.6.2", None, "2026-09-08T19:00:00"),
    );
    server.withdraw("caps");
    let outcome = device.sync(&client, &config).await.expect("third sync");
    assert_eq!(
        server.paths(),
        [
            "GET /ddm/tokens",
            "GET /ddm/declaration-items",
            "GET /ddm/declaration/configuration/enforce.26.6.2",
            "PUT /ddm/status",
        ]
    );
    assert_eq!(outcome.fetched, ["enforce.26.6.2"]);
    assert_eq!(outcome.unchanged, 2);
    assert_eq!(outcome.removed, ["caps"]);
    assert!(device.declaration("caps").is_none());

    // The report is incremental: only management.declarations changed (sent whole).
    let report = outcome.report.expect("a report");
    assert_eq!(report["FullReport"], false);
    let items = report["StatusItems"].as_object().expect("object");
    assert_eq!(items.keys().collect::<Vec<_>>(), ["management"]);
    assert_eq!(
        item(&report, "management")
            .as_object()
            .expect("object")
            .keys()
            .collect::<Vec<_>>(),
        ["declarations"]
    );
    assert_eq!(
        item(&report, "management.declarations.management"),
        &json!([])
    );
    assert_eq!(
        item(&report, "management.declarations.configurations")
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // A withdrawn activation deactivates what it named (and the subscription with it).
    server.withdraw("act");
    let outcome = device.sync(&client, &config).await.expect("fourth sync");
    assert_eq!(outcome.removed, ["act"]);
    assert!(device.active_configurations().is_empty());
    assert!(device.subscriptions().is_empty());
    let sub = device.declaration("sub").expect("still held");
    assert_eq!((sub.active, sub.valid), (false, "unknown"));
    assert_eq!(sub.reasons, ["Info.NotReferencedByActivation"]);
}

#[tokio::test]
async fn an_enforcement_takes_the_device_to_its_target() {
    let server = standard_server(None).await;
    let config = server.config();
    let client = client();
    let mut device = mac("15.5", "24F74");
    device.sync(&client, &config).await.expect("sync");
    assert_eq!(device.active_configurations(), ["enforce.26.6.2", "sub"]);

    let mut seen = Vec::new();
    for _ in 0..4 {
        let state = device.advance().expect("a step");
        let outcome = device.sync(&client, &config).await.expect("sync");
        let report = outcome.report.expect("state changes are reported");
        assert_eq!(report["FullReport"], false);
        seen.push((state, report));
    }
    let states: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(states, ["downloading", "prepared", "installing", "none"]);
    for (state, report) in &seen {
        assert_eq!(item(report, "softwareupdate.install-state"), state.as_str());
    }
    let downloading = &seen[0].1;
    assert_eq!(
        item(downloading, "softwareupdate.pending-version"),
        &json!({"os-version": "26.6.2", "build-version": "25G83", "target-local-date-time": "2026-09-01T19:00:00"})
    );
    assert_eq!(
        item(downloading, "softwareupdate.install-reason"),
        &json!({"reason": ["declaration"], "declaration-id": "enforce.26.6.2"})
    );
    // Unchanged items are not repeated.
    assert!(item(&seen[1].1, "softwareupdate.pending-version").is_null());
    assert!(item(&seen[1].1, "device").is_null());

    let restarted = &seen[3].1;
    assert_eq!(item(restarted, "device.operating-system.version"), "26.6.2");
    assert_eq!(
        item(restarted, "device.operating-system.build-version"),
        "25G83"
    );
    assert_eq!(
        item(restarted, "device.operating-system.marketing-name"),
        "macOS 26.6.2"
    );
    assert_eq!(
        item(restarted, "softwareupdate.pending-version"),
        &json!({"os-version": "", "build-version": ""})
    );
    assert_eq!(
        item(restarted, "softwareupdate.install-reason"),
        &json!({"reason": []})
    );
    assert_eq!(device.os().running().to_string(), "26.6.2");
    assert_eq!(device.installs_completed(), 1);
    // Nothing left to do; the enforcement stays valid until the server withdraws it.
    assert_eq!(device.advance(), None);
    let enforcement = device.declaration("enforce.26.6.2").expect("held");
    assert_eq!((enforcement.active, enforcement.valid), (true, "valid"));
}

#[tokio::test]
async fn target_build_wins_and_supplemental_targets_set_the_extra() {
    let server = TestServer::start(ServerState::default()).await;
    let config = server.config();
    let client = client();
    server.assign("configuration", subscriptions("sub", &ALL_ITEMS));
    server.assign(
        "configuration",
        enforcement("bsi", "26.3.1", Some("25D771280a"), "2026-09-01T19:00:00"),
    );
    server.assign("activation", activation("act", &["sub", "bsi"]));

    let mut device = mac("26.3.1", "25D2128");
    device.sync(&client, &config).await.expect("sync");
    while device.advance().is_some() {}
    let outcome = device.sync(&client, &config).await.expect("sync");
    let report = outcome.report.expect("report");
    assert_eq!(device.os().running().to_string(), "26.3.1 (a)");
    assert_eq!(
        item(
            &report,
            "device.operating-system.supplemental.extra-version"
        ),
        "(a)"
    );
    assert_eq!(
        item(
            &report,
            "device.operating-system.supplemental.build-version"
        ),
        "25D771280a"
    );
    // The base version and build are unchanged, so they are not reported again.
    assert!(item(&report, "device.operating-system.version").is_null());
    assert_eq!(device.os().build, "25D2128");

    // From 26.1, the supplemental brings its base release along (macOS 15 and later).
    let mut device = mac("26.1", "25B78");
    device.sync(&client, &config).await.expect("sync");
    assert_eq!(device.advance(), Some(InstallState::Downloading));
    assert_eq!(
        device.pending_version(),
        Some(("26.3.1 (a)".to_string(), "25D771280a".to_string()))
    );
    while device.advance().is_some() {}
    assert_eq!(device.os().version.to_string(), "26.3.1");
    assert_eq!(device.os().build, "25D2128");

    // Before macOS 15 it needs the base release first: the declaration is invalid.
    let mut device = mac("14.6", "23G80");
    device.sync(&client, &config).await.expect("sync");
    let bsi = device.declaration("bsi").expect("held");
    assert_eq!(bsi.valid, "invalid");
    assert_eq!(bsi.reasons, ["Error.ConfigurationCannotBeApplied"]);

    // A build the catalog lists under another version: TargetOSVersion takes precedence.
    server.withdraw("bsi");
    server.assign(
        "configuration",
        enforcement("mixed", "26.6.2", Some("24G720"), "2026-09-01T19:00:00"),
    );
    // A build the catalog does not know (a seed): taken as given.
    server.assign(
        "configuration",
        enforcement("seed", "26.6.1", Some("25G5070a"), "2026-08-01T19:00:00"),
    );
    server.assign("activation", activation("act", &["sub", "mixed", "seed"]));
    let mut device = mac("15.5", "24F74");
    device.sync(&client, &config).await.expect("sync");
    // The seed's deadline is earlier, so it goes first.
    device.advance();
    assert_eq!(
        device.pending_version(),
        Some(("26.6.1".to_string(), "25G5070a".to_string()))
    );
    for _ in 0..3 {
        device.advance();
    }
    assert_eq!(device.os().build, "25G5070a");
    assert_eq!(device.advance(), Some(InstallState::Downloading));
    assert_eq!(
        device.pending_version(),
        Some(("26.6.2".to_string(), "25G83".to_string()))
    );
}

#[tokio::test]
async fn an_enforcement_at_or_below_the_running_version_is_invalid() {
    let server = TestServer::start(ServerState::default()).await;
    let config = server.config();
    let client = client();
    server.assign("configuration", subscriptions("sub", &ALL_ITEMS));
    server.assign(
        "configuration",
        enforcement("older", "15.7", None, "2026-09-01T19:00:00"),
    );
    server.assign(
        "configuration",
        enforcement("same", "15.7.7", Some("24G720"), "2026-09-01T19:00:00"),
    );
    server.assign("activation", activation("act", &["sub", "older", "same"]));

    let mut device = mac("15.7.7", "24G720");
    let outcome = device.sync(&client, &config).await.expect("sync");
    let report = outcome.report.expect("report");
    let configurations = item(&report, "management.declarations.configurations")
        .as_array()
        .expect("array")
        .clone();
    let entry = |id: &str| {
        configurations
            .iter()
            .find(|c| c["identifier"] == id)
            .cloned()
            .expect("listed")
    };
    let older = entry("older");
    assert_eq!(older["active"], false);
    assert_eq!(older["valid"], "invalid");
    assert_eq!(
        older["reasons"][0]["code"],
        "Error.ConfigurationCannotBeApplied"
    );
    assert_eq!(
        older["reasons"][0]["details"]["Error"],
        "kSUCoreErrorDDMInvalidDeclarationFailure Invalid declaration: target OS version (15.7) is older than current version (15.7.7)"
    );
    let same = entry("same");
    assert_eq!(same["valid"], "invalid");
    assert!(
        same["reasons"][0]["details"]["Error"]
            .as_str()
            .is_some_and(|e| e.contains("(15.7.7) is the same as current version (15.7.7)"))
    );
    assert_eq!(device.advance(), None);
    assert_eq!(device.install_state(), InstallState::None);

    // The operator reads these as failed declarations.
    let mut state = serde_json::Map::new();
    crate::status::merge(
        &mut state,
        &crate::status::StatusReport::from_slice(report.to_string().as_bytes()).expect("parses"),
    );
    let status = crate::status::DeviceStatus::from_items(&state);
    let older = status
        .declarations
        .iter()
        .find(|d| d.identifier == "older")
        .expect("listed");
    assert_eq!(older.reasons, ["Error.ConfigurationCannotBeApplied"]);
}

#[tokio::test]
async fn failures_are_reported_with_a_reason_and_retried() {
    let server = standard_server(None).await;
    let config = server.config();
    let client = client();
    let mut device = mac("15.5", "24F74");
    device.spec_mut().failure_mode = FailureMode::FirstAttempts(1);
    device.sync(&client, &config).await.expect("sync");
    for _ in 0..3 {
        device.advance();
    }
    assert_eq!(device.advance(), Some(InstallState::Failed));
    let report = device
        .sync(&client, &config)
        .await
        .expect("sync")
        .report
        .expect("report");
    assert_eq!(item(&report, "softwareupdate.install-state"), "failed");
    let failure = item(&report, "softwareupdate.failure-reason");
    assert_eq!(failure["count"], 1);
    assert!(failure["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(
        failure["timestamp"]
            .as_str()
            .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok())
    );
    // Still pending while failed.
    assert_eq!(
        device.pending_version(),
        Some(("26.6.2".to_string(), "25G83".to_string()))
    );
    for _ in 1..RETRY_AFTER_ADVANCES {
        assert_eq!(device.advance(), None);
    }
    assert_eq!(device.advance(), Some(InstallState::Downloading));
    while device.advance().is_some() {}
    assert_eq!(device.os().version.to_string(), "26.6.2");
    assert_eq!(device.failure_count(), 0);

    let mut always = mac("15.5", "24F74");
    always.spec_mut().failure_mode = FailureMode::Always;
    always.sync(&client, &config).await.expect("sync");
    for _ in 0..20 {
        always.advance();
    }
    assert!(always.failure_count() >= 2);
    assert_eq!(always.os().version.to_string(), "15.5");
}

#[tokio::test]
async fn several_enforcements_run_earliest_deadline_first_and_wait_for_it() {
    let server = TestServer::start(ServerState::default()).await;
    let config = server.config();
    let client = client();
    server.assign(
        "configuration",
        enforcement("later", "26.6.2", None, "2026-09-10T09:00:00"),
    );
    server.assign(
        "configuration",
        enforcement("sooner", "15.7.7", None, "2026-09-01T09:00:00"),
    );
    server.assign("activation", activation("act", &["later", "sooner"]));
    let mut device = mac("15.5", "24F74");
    device.spec_mut().local_time = Some(jiff::civil::date(2026, 8, 30).at(12, 0, 0, 0));
    device.sync(&client, &config).await.expect("sync");
    assert_eq!(device.advance(), Some(InstallState::Downloading));
    assert_eq!(
        device.pending_version().map(|p| p.0).as_deref(),
        Some("15.7.7")
    );
    assert_eq!(device.advance(), Some(InstallState::Prepared));
    // Waits for the deadline on the device's clock.
    assert_eq!(device.advance(), None);
    device.spec_mut().local_time = Some(jiff::civil::date(2026, 9, 1).at(9, 0, 0, 0));
    assert_eq!(device.advance(), Some(InstallState::Installing));
    assert_eq!(device.advance(), Some(InstallState::None));
    assert_eq!(device.os().version.to_string(), "15.7.7");
    // Then the next one, re-evaluated against the new version.
    device.spec_mut().local_time = None;
    assert_eq!(device.advance(), Some(InstallState::Downloading));
    assert_eq!(
        device.pending_version().map(|p| p.0).as_deref(),
        Some("26.6.2")
    );

    // Withdrawing the enforcement cancels the install in progress.
    server.withdraw("later");
    server.assign("activation", activation("act", &["sooner"]));
    device.sync(&client, &config).await.expect("sync");
    assert_eq!(device.install_state(), InstallState::None);
    assert_eq!(device.pending_version(), None);
}

#[tokio::test]
async fn only_subscribed_items_are_reported() {
    let server = TestServer::start(ServerState::default()).await;
    let config = server.config();
    let client = client();
    server.assign(
        "configuration",
        enforcement("orphan", "26.6.2", None, "2026-09-01T19:00:00"),
    );
    let mut device = mac("15.5", "24F74");
    let report = device
        .sync(&client, &config)
        .await
        .expect("sync")
        .report
        .expect("first report");
    assert_eq!(report["FullReport"], true);
    let management = item(&report, "management").as_object().expect("object");
    assert_eq!(report["StatusItems"].as_object().map(|o| o.len()), Some(1));
    assert_eq!(
        management.keys().collect::<Vec<_>>(),
        ["client-capabilities", "declarations"]
    );
    // A configuration no activation names is not applied.
    let orphan = device.declaration("orphan").expect("held");
    assert_eq!((orphan.active, orphan.valid), (false, "unknown"));
    assert_eq!(orphan.reasons, ["Info.NotReferencedByActivation"]);
    assert_eq!(device.advance(), None);

    // A new subscription reports the current values of what it names.
    server.assign(
        "configuration",
        subscriptions(
            "sub",
            &[
                "device.operating-system.version",
                "softwareupdate.install-state",
            ],
        ),
    );
    server.assign("activation", activation("act", &["sub"]));
    let report = device
        .sync(&client, &config)
        .await
        .expect("sync")
        .report
        .expect("report");
    assert_eq!(item(&report, "device.operating-system.version"), "15.5");
    assert_eq!(item(&report, "softwareupdate.install-state"), "none");
    assert!(item(&report, "device.model").is_null());

    // The opt-in baseline adds the device items a real first report carried unsubscribed.
    let mut baseline = mac("15.5", "24F74");
    baseline.spec_mut().report_unsubscribed_device_items = true;
    server.withdraw("act");
    let report = baseline
        .sync(&client, &config)
        .await
        .expect("sync")
        .report
        .expect("report");
    assert_eq!(
        item(&report, "device.identifier.udid"),
        "0000FE00-5FADE97DCBBBEDA5"
    );
    assert!(item(&report, "softwareupdate").is_null());

    // An unsupervised Mac rejects enforcement and has no software-update items.
    server.assign("activation", activation("act", &["sub", "orphan"]));
    let mut unsupervised = mac("15.5", "24F74");
    unsupervised.spec_mut().supervised = false;
    let report = unsupervised
        .sync(&client, &config)
        .await
        .expect("sync")
        .report
        .expect("report");
    assert!(item(&report, "softwareupdate").is_null());
    let orphan = unsupervised.declaration("orphan").expect("held");
    assert_eq!(orphan.reasons, ["Error.ConfigurationNotSupported"]);

    // The safety sync repeats everything.
    unsupervised.request_full_report();
    let report = unsupervised
        .sync(&client, &config)
        .await
        .expect("sync")
        .report
        .expect("report");
    assert_eq!(report["FullReport"], true);
    assert_eq!(item(&report, "device.operating-system.version"), "15.5");
}

#[tokio::test]
async fn a_missing_declaration_is_retried_on_the_next_sync() {
    let server = standard_server(None).await;
    lock(&server.state).hidden.push("sub".into());
    let config = server.config();
    let client = client();
    let mut device = mac("15.5", "24F74");
    let outcome = device.sync(&client, &config).await.expect("sync");
    assert_eq!(outcome.missing, ["sub"]);
    assert_eq!(device.declarations_token(), None);
    let act = device.declaration("act").expect("held");
    assert_eq!(act.reasons, ["Error.MissingConfigurations"]);
    assert!(
        act.active,
        "the configurations that are there are activated"
    );

    lock(&server.state).hidden.clear();
    server.requests();
    let outcome = device.sync(&client, &config).await.expect("sync");
    assert_eq!(outcome.fetched, ["sub"]);
    assert!(device.declarations_token().is_some());
    assert_eq!(device.declaration("act").map(|a| a.valid), Some("valid"));
}

#[tokio::test]
async fn response_signatures_are_checked() {
    let server = TestServer::start(ServerState {
        response_key: Some(RESPONSE_KEY.to_vec()),
        ..ServerState::default()
    })
    .await;
    server.assign("configuration", subscriptions("sub", &ALL_ITEMS));
    server.assign("activation", activation("act", &["sub"]));
    let client = client();
    let mut device = mac("15.5", "24F74");
    let config = server.config().with_response_key(RESPONSE_KEY);
    device.sync(&client, &config).await.expect("signed answers");

    let wrong_key = server.config().with_response_key(b"other".to_vec());
    let mut device = mac("15.5", "24F74");
    let error = device
        .sync(&client, &wrong_key)
        .await
        .expect_err("wrong key");
    assert!(matches!(error, SimError::Signature { .. }), "{error}");
    assert_eq!(device.declarations_token(), None);

    lock(&server.state).wrong_response_signature = true;
    let error = device.sync(&client, &config).await.expect_err("tampered");
    assert_eq!(error.kind(), "signature");

    // A server that requires signed requests refuses an unsigned device.
    let strict = standard_server(Some(REQUEST_KEY)).await;
    let error = device
        .sync(&client, &strict.config())
        .await
        .expect_err("unsigned");
    assert!(
        matches!(error, SimError::Status { status: 403, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn protocol_violations_are_errors() {
    let server = TestServer::start(ServerState::default()).await;
    let client = client();
    // The body served under `declaration/configuration/sub` names another identifier.
    let mut odd = subscriptions("sub", &ALL_ITEMS);
    odd["Identifier"] = "not-sub".into();
    lock(&server.state)
        .declarations
        .insert("sub".into(), ("configuration", odd));
    let mut device = mac("15.5", "24F74");
    let error = device
        .sync(&client, &server.config())
        .await
        .expect_err("mismatch");
    assert_eq!(error.kind(), "protocol");
    assert!(error.to_string().contains("Identifier"), "{error}");
    assert!(device.declarations().is_empty());

    // A configuration listed as an activation.
    {
        let mut state = lock(&server.state);
        state.declarations.clear();
        state.declarations.insert(
            "sub".into(),
            ("activation", subscriptions("sub", &ALL_ITEMS)),
        );
    }
    let error = device
        .sync(&client, &server.config())
        .await
        .expect_err("wrong category");
    assert!(error.to_string().contains("not an activation"), "{error}");
}

/// Checks a value against a key spec of Apple's status schema (type, required subkeys,
/// unknown keys, rangelist), recursively.
fn check_against_schema(spec: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    let kind = spec["type"].as_str().unwrap_or("<any>");
    let ok = match kind {
        "<string>" => value.is_string(),
        "<integer>" => value.is_i64() || value.is_u64(),
        "<boolean>" => value.is_boolean(),
        "<dictionary>" => value.is_object(),
        "<array>" => value.is_array(),
        _ => true,
    };
    if !ok {
        problems.push(format!("{path}: expected {kind}, got {value}"));
        return;
    }
    if let Some(range) = spec["rangelist"].as_array()
        && !range.contains(value)
    {
        problems.push(format!("{path}: {value} is not in {range:?}"));
    }
    let subkeys = spec["subkeys"].as_array().cloned().unwrap_or_default();
    match value {
        Value::Object(map) => {
            let any = subkeys.iter().any(|s| s["key"] == "ANY");
            for sub in &subkeys {
                let key = sub["key"].as_str().unwrap_or_default();
                if sub["presence"] == "required" && !map.contains_key(key) {
                    problems.push(format!("{path}.{key}: required"));
                }
            }
            for (key, inner) in map {
                match subkeys.iter().find(|s| s["key"] == key.as_str()) {
                    Some(sub) => {
                        check_against_schema(sub, inner, &format!("{path}.{key}"), problems)
                    }
                    None if any => {}
                    None => problems.push(format!("{path}.{key}: not in the schema")),
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = subkeys.first() {
                for (i, inner) in items.iter().enumerate() {
                    check_against_schema(sub, inner, &format!("{path}[{i}]"), problems);
                }
            }
        }
        _ => {}
    }
}

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/apple-schemas/declarative/status")
}

/// Removes `dotted` from the tree (and parents left empty).
fn take_dotted(tree: &mut serde_json::Map<String, Value>, dotted: &str) -> Option<Value> {
    match dotted.split_once('.') {
        None => tree.remove(dotted),
        Some((head, rest)) => {
            let child = tree.get_mut(head)?.as_object_mut()?;
            let taken = take_dotted(child, rest);
            if child.is_empty() {
                tree.remove(head);
            }
            taken
        }
    }
}

#[tokio::test]
async fn reports_conform_to_apple_status_schemas() {
    let mut schemas: Vec<(String, Value)> = Vec::new();
    for entry in std::fs::read_dir(schema_dir()).expect("schema dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("readable");
        let schema: Value = serde_saphyr::from_str(&text).expect("YAML");
        if let Some(name) = schema["payload"]["statusitemtype"].as_str() {
            schemas.push((name.to_string(), schema["payloadkeys"][0].clone()));
        }
    }
    assert!(schemas.len() > 30);
    // The checker itself catches what it should.
    let spec = |name: &str| {
        schemas
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .expect("schema")
    };
    let mut problems = Vec::new();
    check_against_schema(
        &spec("softwareupdate.install-state"),
        &json!("waiting"),
        "s",
        &mut problems,
    );
    check_against_schema(
        &spec("softwareupdate.failure-reason"),
        &json!({"count": "1"}),
        "f",
        &mut problems,
    );
    check_against_schema(
        &spec("softwareupdate.pending-version"),
        &json!({"os-version": ""}),
        "p",
        &mut problems,
    );
    check_against_schema(
        &spec("management.declarations"),
        &json!({"activations": [{"identifier": "a"}], "configurations": [], "assets": [], "management": [], "extra": 1}),
        "m",
        &mut problems,
    );
    assert_eq!(problems.len(), 7, "{problems:#?}");

    let server = standard_server(None).await;
    server.assign(
        "configuration",
        enforcement("older", "15.1", None, "2026-09-01T19:00:00"),
    );
    server.assign(
        "activation",
        activation("act", &["sub", "enforce.26.6.2", "older"]),
    );
    let client = client();
    let config = server.config();
    let mut reports = Vec::new();
    for device in [mac("15.5", "24F74"), mac("26.3.1 (a)", "25D2128")] {
        let mut device = device;
        device.spec_mut().failure_mode = FailureMode::FirstAttempts(1);
        reports.extend(device.sync(&client, &config).await.expect("sync").report);
        for _ in 0..5 {
            device.advance();
            reports.extend(device.sync(&client, &config).await.expect("sync").report);
        }
    }
    assert!(reports.len() >= 6);
    for report in reports {
        assert!(report["Errors"].is_array() && report["FullReport"].is_boolean());
        let mut tree = report["StatusItems"].as_object().cloned().expect("object");
        let mut problems = Vec::new();
        for (name, spec) in &schemas {
            if let Some(value) = take_dotted(&mut tree, name) {
                check_against_schema(spec, &value, name, &mut problems);
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
        assert!(tree.is_empty(), "items without a schema: {tree:?}");
    }
}

#[tokio::test]
async fn the_operators_own_declarations_are_understood() {
    let version: OsVersion = "26.6.2".parse().expect("version");
    let deadline = jiff::civil::date(2026, 9, 1).at(19, 0, 0, 0);
    let enforcement = crate::declarations::enforcement(&version, Some("25G83"), deadline, None);
    let activation = crate::declarations::activation(&[enforcement.identifier.as_str()]);
    let server = TestServer::start(ServerState::default()).await;
    server.assign(
        "configuration",
        serde_json::to_value(&enforcement).expect("JSON"),
    );
    server.assign(
        "activation",
        serde_json::to_value(&activation).expect("JSON"),
    );
    let mut device = mac("15.5", "24F74");
    let outcome = device
        .sync(&client(), &server.config())
        .await
        .expect("sync");
    assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
    let held = device.declaration(&enforcement.identifier).expect("held");
    assert_eq!((held.active, held.valid), (true, "valid"));
    while device.advance().is_some() {}
    assert_eq!(device.os().build, "25G83");
}

const CATALOG: &[u8] = include_bytes!("../../tests/fixtures/gdmf/pmv-2026-08-22.json");

#[test]
fn fleets_are_drawn_from_the_catalog_and_repeat_by_seed() {
    let catalog = Catalog::from_slice(CATALOG).expect("catalog");
    let a = Fleet::from_catalog(&catalog, 200, 7).expect("fleet");
    let b = Fleet::from_catalog(&catalog, 200, 7).expect("fleet");
    let c = Fleet::from_catalog(&catalog, 200, 8).expect("fleet");
    let describe = |fleet: &Fleet| -> Vec<String> {
        fleet
            .devices
            .iter()
            .map(|d| {
                format!(
                    "{} {} {} {}",
                    d.enrollment_id(),
                    d.spec().model_identifier,
                    d.os().version,
                    d.os().build
                )
            })
            .collect()
    };
    assert_eq!(a.len(), 200);
    assert_eq!(describe(&a), describe(&b));
    assert_ne!(describe(&a), describe(&c));
    let mut serials = std::collections::HashSet::new();
    let mut platforms = std::collections::HashSet::new();
    for device in &a.devices {
        let spec = device.spec();
        let id = spec
            .software_update_device_id
            .as_deref()
            .expect("device id");
        assert!(catalog.knows_device(id), "{id}");
        assert!(
            spec.offered_updates
                .iter()
                .any(|o| o.build == spec.os.build && o.version == spec.os.version),
            "{id} runs a release the catalog offers it"
        );
        if spec.platform != Platform::MacOs {
            assert_eq!(spec.model_identifier, id);
        }
        let ddm_minimum = match spec.platform {
            Platform::MacOs => "13.0",
            Platform::TvOs => "16.0",
            Platform::VisionOs => "1.1",
            _ => "15.0",
        };
        assert!(spec.os.version >= ddm_minimum.parse::<OsVersion>().expect("version"));
        assert!(serials.insert(spec.serial_number.clone()));
        platforms.insert(spec.platform);
    }
    assert!(platforms.contains(&Platform::MacOs) && platforms.contains(&Platform::Ios));

    let only_failing = FleetOptions {
        platforms: vec![Platform::IpadOs],
        failing_per_mille: 1000,
        ..FleetOptions::default()
    };
    let ipads = Fleet::from_catalog_with(&catalog, 10, 1, &only_failing).expect("fleet");
    assert!(
        ipads
            .devices
            .iter()
            .all(|d| d.spec().platform == Platform::IpadOs
                && d.spec().failure_mode == FailureMode::Always)
    );
    let none = FleetOptions {
        platforms: Vec::new(),
        ..FleetOptions::default()
    };
    assert!(Fleet::from_catalog_with(&catalog, 1, 1, &none).is_err());
}

#[tokio::test]
async fn a_fleet_runs_rounds_against_a_server() {
    let catalog = Catalog::from_slice(CATALOG).expect("catalog");
    let mut fleet = Fleet::from_catalog(&catalog, 6, 3).expect("fleet");
    let server = TestServer::start(ServerState {
        request_key: Some(REQUEST_KEY.to_vec()),
        ..ServerState::default()
    })
    .await;
    server.assign(
        "configuration",
        subscriptions("sub", &["softwareupdate.install-state"]),
    );
    server.assign("activation", activation("act", &["sub"]));
    let config = server.config().with_request_key(REQUEST_KEY);
    let summary = fleet
        .run(
            &client(),
            &config,
            &RunOptions {
                rounds: 2,
                concurrency: 3,
            },
        )
        .await;
    assert_eq!(summary.failed_syncs, 0, "{summary}");
    assert_eq!(summary.syncs, 12);
    // Round one: tokens, items, two declarations, status; round two: tokens only.
    assert_eq!(summary.requests, 6 * 5 + 6);
    assert_eq!(summary.reports, 6);
    assert_eq!(summary.install_states.get(&InstallState::None), Some(&6));
    assert_eq!(summary.latency.count, 36);
    assert_eq!(lock(&server.state).reports.len(), 6);
    let text = summary.to_string();
    assert!(
        text.contains("install-state: none 6, downloading 0, prepared 0, installing 0, failed 0"),
        "{text}"
    );
    assert_eq!(summary.to_json()["checkIns"], 12);
}
