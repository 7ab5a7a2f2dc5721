//! NanoMDM's `-webhook-url` events as its source builds them (service/webhook/event.go and
//! service.go at 1d5fcf4, per ../shared/nanomdm/README.md): a JSON object `{"topic",
//! "created_at" (RFC 3339 nano), "event_id", "checkin_event" | "acknowledge_event"}` whose
//! `raw_payload` is base64 (standard, padded: Go's `[]byte`) of the device's whole plist, POSTed
//! with `Content-Type: application/json; charset=utf-8` and, under `-webhook-hmac-key`,
//! `X-Hmac-Signature` = base64 HMAC-SHA256(key, body). The plists carry the keys Apple documents
//! for each check-in message (Authenticate, TokenUpdate, CheckOut, SetBootstrapToken). Also the
//! device listener serving the webhook over a store of its own.

use std::sync::Arc;

use base64::Engine as _;
use ddm_update_operator::backend::store::Store;
use ddm_update_operator::http::webhook;
use ddm_update_operator::metrics::Metrics;
use jiff::Timestamp;
use serde_json::json;

use crate::support::ddm::serve_device;
pub use crate::support::ddm::sign;

/// The APNs topic of the sample's enrollment profile.
const TOPIC: &str = "com.apple.mgmt.External.e0bd5bfa-8c12-4b2e-9f0e-6c2f1a7d3e11";

fn xml(entries: &[(&str, plist::Value)]) -> Vec<u8> {
    let mut dictionary = plist::Dictionary::new();
    for (key, value) in entries {
        dictionary.insert((*key).to_string(), value.clone());
    }
    let mut out = Vec::new();
    plist::Value::Dictionary(dictionary)
        .to_writer_xml(&mut out)
        .expect("an XML plist");
    out
}

fn text(value: &str) -> plist::Value {
    plist::Value::String(value.to_string())
}

/// What a device's Authenticate check-in says about it.
#[derive(Debug, Clone)]
pub struct DeviceFacts {
    pub udid: String,
    pub serial: String,
    /// `ProductName`: the model identifier.
    pub product: String,
    pub os: String,
    pub build: String,
}

impl DeviceFacts {
    /// An Apple-silicon MacBook Air (M2) on macOS 15.6.
    pub fn mac(udid: &str) -> Self {
        DeviceFacts {
            udid: udid.to_string(),
            serial: "C02ZX1ABMD6T".into(),
            product: "Mac14,2".into(),
            os: "15.6".into(),
            build: "24G84".into(),
        }
    }
}

/// Apple's `Authenticate` check-in: MessageType, Topic, UDID, BuildVersion, DeviceName, Model,
/// ModelName, OSVersion, ProductName, SerialNumber.
pub fn authenticate_plist(device: &DeviceFacts) -> Vec<u8> {
    xml(&[
        ("MessageType", text("Authenticate")),
        ("Topic", text(TOPIC)),
        ("UDID", text(&device.udid)),
        ("BuildVersion", text(&device.build)),
        ("DeviceName", text("Test Mac")),
        ("Model", text("Mac14,2")),
        ("ModelName", text("MacBook Air")),
        ("OSVersion", text(&device.os)),
        ("ProductName", text(&device.product)),
        ("SerialNumber", text(&device.serial)),
    ])
}

/// Apple's `TokenUpdate` check-in: MessageType, Topic, UDID, PushMagic, Token (data),
/// AwaitingConfiguration.
pub fn token_update_plist(udid: &str) -> Vec<u8> {
    xml(&[
        ("MessageType", text("TokenUpdate")),
        ("Topic", text(TOPIC)),
        ("UDID", text(udid)),
        ("PushMagic", text("5C9E4C8A-1B2D-4E3F-8A9B-0C1D2E3F4A5B")),
        ("Token", plist::Value::Data(vec![0x5a; 32])),
        ("AwaitingConfiguration", plist::Value::Boolean(false)),
    ])
}

/// Apple's `CheckOut` check-in: MessageType, Topic, UDID.
pub fn checkout_plist(udid: &str) -> Vec<u8> {
    xml(&[
        ("MessageType", text("CheckOut")),
        ("Topic", text(TOPIC)),
        ("UDID", text(udid)),
    ])
}

/// Apple's `SetBootstrapToken` check-in: MessageType, UDID, AwaitingConfiguration, and the
/// `BootstrapToken` data (left out when the device removes its token).
pub fn set_bootstrap_token_plist(udid: &str, token: Option<&[u8]>) -> Vec<u8> {
    let mut entries = vec![
        ("MessageType", text("SetBootstrapToken")),
        ("UDID", text(udid)),
        ("AwaitingConfiguration", plist::Value::Boolean(false)),
    ];
    if let Some(token) = token {
        entries.push(("BootstrapToken", plist::Value::Data(token.to_vec())));
    }
    xml(&entries)
}

/// A device-channel check-in event like the facts file's sample (`udid` beside `ids`;
/// `token_update_tally` on TokenUpdate only).
pub fn checkin_event(
    topic: &str,
    udid: &str,
    at: Timestamp,
    event_id: &str,
    plist: &[u8],
) -> Vec<u8> {
    let mut checkin = json!({
        "ids": {"id": udid, "type": "Device"},
        "raw_payload": base64::engine::general_purpose::STANDARD.encode(plist),
        "udid": udid,
    });
    if topic == "mdm.TokenUpdate" {
        checkin["token_update_tally"] = json!(1);
    }
    event(topic, at, event_id, "checkin_event", checkin)
}

/// An event around an arbitrary `checkin_event`/`acknowledge_event` object.
pub fn event(
    topic: &str,
    at: Timestamp,
    event_id: &str,
    kind: &str,
    inner: serde_json::Value,
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        kind: inner,
        // Go's time.RFC3339Nano: trailing zeros of the fraction dropped, as jiff prints it.
        "created_at": at.to_string(),
        "event_id": event_id,
        "topic": topic,
    }))
    .expect("JSON")
}

/// The device listener with only the webhook route, over a store of its own.
pub struct WebhookServer {
    /// `http://127.0.0.1:<port>/webhook/nanomdm`.
    pub url: String,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    /// Enrollments whose MDM facts changed (what the resolver loop would hear).
    pub learned: tokio::sync::mpsc::UnboundedReceiver<String>,
    _dir: tempfile::TempDir,
    _task: tokio::task::JoinHandle<()>,
}

pub async fn webhook_server(auth: webhook::WebhookAuth) -> WebhookServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(&dir.path().join("ddm.sqlite")).expect("store"));
    let metrics = Arc::new(Metrics::new());
    let (learned_tx, learned) = tokio::sync::mpsc::unbounded_channel();
    let state = Arc::new(webhook::WebhookState::new(
        store.clone(),
        auth,
        metrics.clone(),
        Some(learned_tx),
    ));
    let (address, task) = serve_device(webhook::router(state), metrics.clone()).await;
    WebhookServer {
        url: format!("http://{address}{}", webhook::PATH),
        store,
        metrics,
        learned,
        _dir: dir,
        _task: task,
    }
}

/// POSTs one event as NanoMDM does, signed with `key` when given; the status and body.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    key: Option<&[u8]>,
) -> (u16, String) {
    let mut request = client
        .post(url)
        .header("content-type", "application/json; charset=utf-8");
    if let Some(key) = key {
        request = request.header("x-hmac-signature", sign(key, &body));
    }
    let response = request.body(body).send().await.expect("an answer");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}
