//! A NanoMDM fake on loopback: its `/v1` API (Basic auth, `/v1/enqueue`, `/v1/push`, `/version`)
//! and the per-enrollment command queue a device drains. Every answer follows the protocol facts
//! read from NanoMDM's source (`../shared/nanomdm/README.md`, "facts:LINE" below); nothing is
//! invented beyond them.
//!
//! ```ignore
//! let mdm = NanoMdmFake::start(Options { push: Push::NoPushCert, ..Options::default() }).await;
//! let config = NanoMdmConfig::new(mdm.url(), mdm.api_key());
//! // ... the operator enqueues ...
//! assert_eq!(mdm.count(&id, "DeclarativeManagement"), 1);
//! let command = mdm.idle(&id);                 // the device polls: Idle
//! mdm.acknowledge(&id, &command.unwrap().command_uuid);
//! ```
//!
//! Tests configure push outcomes ([`Push`]), storage failures ([`NanoMdmFake::fail_next_enqueues`],
//! [`NanoMdmFake::refuse`]) and read back every request ([`NanoMdmFake::requests`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine as _;
use serde_json::{Map, Value, json};

/// What APNs pushes do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Push {
    /// Every push succeeds (`push_result` = an apns-id).
    #[default]
    Ok,
    /// No push certificate uploaded: a top-level `push_error`, HTTP 500, the command still
    /// queued (facts:101-103, transcript facts:189-191).
    NoPushCert,
    /// The push fails for these ids only (an expired device token, say): a per-id `push_error`.
    FailFor(BTreeSet<String>),
}

#[derive(Debug, Clone)]
pub struct Options {
    /// `-api KEY` (facts:87).
    pub api_key: String,
    pub push: Push,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            api_key: "nanomdm-api-key".into(),
            push: Push::Ok,
        }
    }
}

/// A command in an enrollment's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedCommand {
    pub command_uuid: String,
    pub request_type: String,
    /// The plist as enqueued: a device gets these bytes (facts:111).
    pub raw: Vec<u8>,
}

/// One API request the fake answered.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// `enqueue`, `push` or `version`.
    pub endpoint: String,
    /// The ids as the path listed them (split on `,`).
    pub ids: Vec<String>,
    pub query: Option<String>,
    pub authorized: bool,
    pub body: Vec<u8>,
    /// The HTTP status the fake answered.
    pub status: u16,
    /// The JSON it answered (`Value::Null` for none).
    pub reply: Value,
}

#[derive(Default)]
struct Inner {
    options: Option<Options>,
    queues: BTreeMap<String, VecDeque<QueuedCommand>>,
    not_now: BTreeMap<String, BTreeSet<String>>,
    requests: Vec<Request>,
    /// Top-level enqueue failures for the next requests (a storage error).
    enqueue_failures: VecDeque<String>,
    /// Per-id enqueue refusals: (message, times left).
    refused: BTreeMap<String, (String, usize)>,
    pushes: BTreeMap<String, usize>,
    apns_ids: u64,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Inner> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The running fake; the server stops when this is dropped.
pub struct NanoMdmFake {
    url: String,
    api_key: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NanoMdmFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NanoMdmFake {
    /// Starts on 127.0.0.1 on a free port.
    pub async fn start(options: Options) -> Self {
        let api_key = options.api_key.clone();
        let shared: Shared = Arc::new(Mutex::new(Inner {
            options: Some(options),
            ..Inner::default()
        }));
        let app = Router::new()
            // The handlers do not check the method (facts:93-94).
            .route("/v1/enqueue/{*ids}", any(enqueue))
            .route("/v1/push/{*ids}", any(push))
            .route("/version", any(version))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        NanoMdmFake {
            url: format!("http://{address}"),
            api_key,
            shared,
            task,
        }
    }

    /// The API base, such as `http://127.0.0.1:41234` (what `--nanomdm-url` takes).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    pub fn set_push(&self, push: Push) {
        if let Some(options) = lock(&self.shared).options.as_mut() {
            options.push = push;
        }
    }

    /// The next `times` enqueues fail as a whole with a top-level `command_error` (a storage
    /// failure): nothing queued, no push tried, 500 (facts:100).
    pub fn fail_next_enqueues(&self, times: usize, message: &str) {
        let mut inner = lock(&self.shared);
        for _ in 0..times {
            inner.enqueue_failures.push_back(message.to_string());
        }
    }

    /// The storage refuses to queue for `id` the next `times` enqueues: a per-id `command_error`
    /// (what SQL storages say for an enrollment they do not have; facts:97-98, 100).
    pub fn refuse(&self, id: &str, times: usize, message: &str) {
        lock(&self.shared)
            .refused
            .insert(id.to_string(), (message.to_string(), times));
    }

    /// The enrollment's queue, oldest first.
    pub fn queue(&self, id: &str) -> Vec<QueuedCommand> {
        lock(&self.shared)
            .queues
            .get(id)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Commands of `request_type` in the enrollment's queue.
    pub fn count(&self, id: &str, request_type: &str) -> usize {
        self.queue(id)
            .iter()
            .filter(|c| c.request_type == request_type)
            .count()
    }

    /// Successful pushes to the enrollment.
    pub fn pushes(&self, id: &str) -> usize {
        lock(&self.shared).pushes.get(id).copied().unwrap_or(0)
    }

    /// Every API request so far.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared).requests.clone()
    }

    /// The requests to one endpoint (`enqueue`, `push`).
    pub fn requests_to(&self, endpoint: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.endpoint == endpoint)
            .collect()
    }

    /// Waits (up to 10 s) until `done` holds for the fake; returns whether it did.
    pub async fn wait_until(&self, done: impl Fn(&Self) -> bool) -> bool {
        for _ in 0..200 {
            if done(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done(self)
    }

    /// The device polls with `Idle`: it gets the first queued command; a command it answered
    /// NotNow comes again (facts:111, 113-114).
    pub fn idle(&self, id: &str) -> Option<QueuedCommand> {
        let mut inner = lock(&self.shared);
        inner.not_now.remove(id);
        inner.queues.get(id).and_then(|q| q.front().cloned())
    }

    /// The device answers `Acknowledged` (or `Error`) for `command_uuid`: it leaves the queue;
    /// the device gets the next command (facts:112).
    pub fn acknowledge(&self, id: &str, command_uuid: &str) -> Option<QueuedCommand> {
        let mut inner = lock(&self.shared);
        if let Some(queue) = inner.queues.get_mut(id) {
            queue.retain(|c| c.command_uuid != command_uuid);
        }
        next_not_now(&inner, id)
    }

    /// The device answers `NotNow`: the command stays; the device gets another one or nothing
    /// (facts:112-113).
    pub fn not_now(&self, id: &str, command_uuid: &str) -> Option<QueuedCommand> {
        let mut inner = lock(&self.shared);
        inner
            .not_now
            .entry(id.to_string())
            .or_default()
            .insert(command_uuid.to_string());
        next_not_now(&inner, id)
    }
}

fn next_not_now(inner: &Inner, id: &str) -> Option<QueuedCommand> {
    let skipped = inner.not_now.get(id);
    inner.queues.get(id).and_then(|q| {
        q.iter()
            .find(|c| skipped.is_none_or(|s| !s.contains(&c.command_uuid)))
            .cloned()
    })
}

/// HTTP Basic, user `nanomdm`, password the API key (facts:87).
fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("nanomdm:{key}"))
    );
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected)
}

/// Wrong or missing auth: 401 with `Www-Authenticate: Basic realm="nanomdm"` (facts:88-89).
fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"nanomdm\"")],
    )
        .into_response()
}

/// The reply: JSON, `Content-type: application/json`, tab-indented (facts:97-99).
fn json_reply(status: u16, body: &Value) -> Response {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(
        &mut out,
        serde_json::ser::PrettyFormatter::with_indent(b"\t"),
    );
    serde::Serialize::serialize(body, &mut serializer).expect("json");
    (
        StatusCode::from_u16(status).expect("status"),
        [(header::CONTENT_TYPE, "application/json")],
        out,
    )
        .into_response()
}

/// The ids: the path after the prefix, split on `,` (facts:93).
fn split_ids(path: &str) -> Vec<String> {
    path.split(',').map(str::to_string).collect()
}

/// `CommandUUID` and `Command.RequestType` are required (facts:91-92); a body that is not such
/// a plist is a decoding error (facts:104).
fn decode_command(body: &[u8]) -> Result<(String, String), String> {
    let value = plist::Value::from_reader(std::io::Cursor::new(body))
        .map_err(|e| format!("decoding command: {e}"))?;
    let dict = value
        .as_dictionary()
        .ok_or("decoding command: not a dictionary")?;
    let uuid = dict
        .get("CommandUUID")
        .and_then(plist::Value::as_string)
        .filter(|s| !s.is_empty());
    let request_type = dict
        .get("Command")
        .and_then(plist::Value::as_dictionary)
        .and_then(|c| c.get("RequestType"))
        .and_then(plist::Value::as_string)
        .filter(|s| !s.is_empty());
    match (uuid, request_type) {
        (Some(uuid), Some(request_type)) => Ok((uuid.to_string(), request_type.to_string())),
        _ => Err("decoding command: command UUID or request type missing".into()),
    }
}

/// The APNs push for `ids`, as the [`Push`] option says: a top-level error, or per-id results
/// in `status` (`push_result` or `push_error`; facts:97).
fn push_ids(inner: &mut Inner, ids: &[String], status: &mut Map<String, Value>) -> Option<String> {
    let push = inner
        .options
        .as_ref()
        .map(|o| o.push.clone())
        .unwrap_or_default();
    if push == Push::NoPushCert {
        // The message NanoMDM gave without a push certificate (facts:190).
        return Some(
            "retrieving push cert for topic \"com.apple.mgmt.External.fake\": key not found".into(),
        );
    }
    for id in ids {
        let entry = status
            .entry(id.clone())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("object");
        if matches!(&push, Push::FailFor(failing) if failing.contains(id)) {
            entry.insert("push_error".into(), json!("BadDeviceToken"));
        } else {
            inner.apns_ids += 1;
            *inner.pushes.entry(id.clone()).or_default() += 1;
            entry.insert(
                "push_result".into(),
                json!(format!("apns-{:08}", inner.apns_ids)),
            );
        }
    }
    None
}

/// 200 all ok, 207 some ids failed, 500 a top-level error or every id failed (facts:100).
fn status_code(reply: &Map<String, Value>, ids: usize) -> u16 {
    if reply.contains_key("push_error") || reply.contains_key("command_error") {
        return 500;
    }
    let failed = reply
        .get("status")
        .and_then(Value::as_object)
        .map(|s| {
            s.values()
                .filter(|r| r.get("push_error").is_some() || r.get("command_error").is_some())
                .count()
        })
        .unwrap_or(0);
    match failed {
        0 => 200,
        n if n >= ids => 500,
        _ => 207,
    }
}

struct Seen {
    method: Method,
    endpoint: &'static str,
    ids: Vec<String>,
    query: Option<String>,
    authorized: bool,
    body: Bytes,
}

/// What the API endpoints read of a request: method, the ids in the path, the raw query, the
/// headers and the body.
type Call = (Method, Path<String>, RawQuery, HeaderMap, Bytes);

impl Seen {
    /// The request as seen by `endpoint`, checked against the API key the fake was started
    /// with, and the fake's state, locked; `None` for an unauthorized request, recorded here
    /// with its 401, so each handler goes on only with an authorized one.
    fn checked<'a>(
        shared: &'a Shared,
        endpoint: &'static str,
        (method, Path(ids), RawQuery(query), headers, body): Call,
    ) -> Option<(std::sync::MutexGuard<'a, Inner>, Self)> {
        let mut inner = lock(shared);
        let key = inner
            .options
            .as_ref()
            .map(|o| o.api_key.clone())
            .unwrap_or_default();
        let seen = Self {
            method,
            endpoint,
            ids: split_ids(&ids),
            query,
            authorized: authorized(&headers, &key),
            body,
        };
        if !seen.authorized {
            record(&mut inner, seen, 401, Value::Null);
            return None;
        }
        Some((inner, seen))
    }
}

fn record(inner: &mut Inner, seen: Seen, status: u16, reply: Value) {
    inner.requests.push(Request {
        method: seen.method.to_string(),
        endpoint: seen.endpoint.into(),
        ids: seen.ids,
        query: seen.query,
        authorized: seen.authorized,
        body: seen.body.to_vec(),
        status,
        reply,
    });
}

/// The reply with the per-id `status` when there is any, recorded and sent with the code it
/// earns.
fn answer(
    inner: &mut Inner,
    seen: Seen,
    mut reply: Map<String, Value>,
    status: Map<String, Value>,
) -> Response {
    if !status.is_empty() {
        reply.insert("status".into(), Value::Object(status));
    }
    let code = status_code(&reply, seen.ids.len());
    let reply = Value::Object(reply);
    record(inner, seen, code, reply.clone());
    json_reply(code, &reply)
}

/// `/v1/enqueue/{ids}[?nopush=1]` (facts:90-104).
async fn enqueue(State(shared): State<Shared>, call: Call) -> Response {
    let Some((mut inner, seen)) = Seen::checked(&shared, "enqueue", call) else {
        return unauthorized();
    };
    let (uuid, request_type) = match decode_command(&seen.body) {
        Ok(decoded) => decoded,
        Err(error) => {
            // Bad plist → 500 {"command_error":"decoding command: …"} (facts:104).
            let reply = json!({ "command_error": error });
            record(&mut inner, seen, 500, reply.clone());
            return json_reply(500, &reply);
        }
    };
    let mut reply = Map::new();
    reply.insert("command_uuid".into(), json!(uuid));
    reply.insert("request_type".into(), json!(request_type));
    // `nopush` = any non-empty value (facts:94-95).
    let no_push = seen.query.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.strip_prefix("nopush=").is_some_and(|v| !v.is_empty()))
    });
    if no_push {
        reply.insert("no_push".into(), json!(true));
    }
    if let Some(error) = inner.enqueue_failures.pop_front() {
        // A top-level enqueue error: nothing queued, and the push (which follows the enqueue,
        // facts:95-96) is not tried; 500 (facts:100).
        reply.insert("command_error".into(), json!(error));
        let reply = Value::Object(reply);
        record(&mut inner, seen, 500, reply.clone());
        return json_reply(500, &reply);
    }
    let mut status = Map::new();
    for id in &seen.ids {
        if let Some((message, left)) = inner.refused.get_mut(id).filter(|(_, left)| *left > 0) {
            *left -= 1;
            status.insert(id.clone(), json!({ "command_error": message.clone() }));
            continue;
        }
        // Unknown ids are accepted and keep the command (facts:103).
        inner
            .queues
            .entry(id.clone())
            .or_default()
            .push_back(QueuedCommand {
                command_uuid: uuid.clone(),
                request_type: request_type.clone(),
                raw: seen.body.to_vec(),
            });
    }
    // Enqueued first, then pushed unless nopush (facts:95-96): a failed push leaves the
    // command queued (facts:101-103).
    if !no_push && let Some(error) = push_ids(&mut inner, &seen.ids, &mut status) {
        reply.insert("push_error".into(), json!(error));
    }
    answer(&mut inner, seen, reply, status)
}

/// `/v1/push/{ids}`: a push only; without a push cert 500 `push_error` (facts:105-107).
async fn push(State(shared): State<Shared>, call: Call) -> Response {
    let Some((mut inner, seen)) = Seen::checked(&shared, "push", call) else {
        return unauthorized();
    };
    let mut reply = Map::new();
    let mut status = Map::new();
    if let Some(error) = push_ids(&mut inner, &seen.ids, &mut status) {
        // The reply seen without a push cert: only `push_error` (facts:192-193).
        reply.insert("push_error".into(), json!(error));
    }
    answer(&mut inner, seen, reply, status)
}

/// `/version`, no auth (facts:109).
async fn version() -> Response {
    json_reply(200, &json!({ "version": "v0.9.0-14-g1d5fcf4" }))
}
