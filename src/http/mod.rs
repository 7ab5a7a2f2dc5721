//! HTTP: two listeners. The device side (`--listen`): the DDM endpoints under the base path
//! and the enrollment gate. The admin side (`--admin-listen`): health, readiness, Prometheus
//! metrics, and a read-only JSON API of resolved status behind a bearer token (`admin`). Both
//! are served with the limits of `serve`.

pub mod admin;
pub mod ddm;
pub mod devices;
pub mod enroll;
pub mod serve;
pub mod webhook;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::RwLock;

/// What the non-DDM routes read.
pub struct AppState {
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Set once the first resolver pass has been applied.
    pub ready: AtomicBool,
    /// The last resolved status, as served by `GET /api/v1/status`.
    pub status: RwLock<serde_json::Value>,
    /// Enrollment gate decisions, added live to the status.
    pub enrollment: Arc<crate::enroll::tally::Tally>,
    /// The store whose rollout ledger `GET /api/v1/rollouts` exports (and whose devices
    /// `/api/v1/devices/{id}` reads).
    pub ledger: Option<Arc<crate::backend::store::Store>>,
    /// The last pass's devices, for `/api/v1/devices` (`None` before the first pass).
    pub devices: std::sync::RwLock<Option<Arc<crate::view::DeviceIndex>>>,
}

impl AppState {
    /// The last pass's device index.
    pub fn device_index(&self) -> Option<Arc<crate::view::DeviceIndex>> {
        match self.devices.read() {
            Ok(index) => index.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the device index with a new pass's.
    pub fn publish_devices(&self, index: Arc<crate::view::DeviceIndex>) {
        let index = Some(index);
        match self.devices.write() {
            Ok(mut slot) => *slot = index,
            Err(poisoned) => *poisoned.into_inner() = index,
        }
    }
}

/// The device side: DDM under `base_path` (such as `/ddm`). The enrollment gate
/// (`enroll::router`) is merged in by the callers that serve it.
pub fn device_router(base_path: &str, ddm_state: Arc<ddm::DdmState>) -> Router {
    let base = format!("/{}", base_path.trim_matches('/'));
    let ddm = ddm::router(ddm_state).layer(DefaultBodyLimit::max(ddm::MAX_BODY_BYTES));
    if base == "/" {
        ddm
    } else {
        Router::new().nest(&base, ddm)
    }
}

/// The admin side: health, readiness and metrics open; `/api/v1/*` behind `auth`.
pub fn admin_router(app: Arc<AppState>, auth: Arc<admin::AdminAuth>) -> Router {
    let api = Router::new()
        .route("/api/v1/status", get(status_json))
        .route("/api/v1/rollouts", get(rollouts_json))
        .route_layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            admin::require_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(api)
        .with_state(app.clone())
        .merge(devices::router(app, auth))
}

/// The rollout ledger (what `plan --ledger` reads): every handed-out deadline, per device and
/// per ring.
async fn rollouts_json(State(app): State<Arc<AppState>>) -> axum::response::Response {
    let Some(store) = &app.ledger else {
        return (
            StatusCode::NOT_FOUND,
            "this server keeps no rollout ledger\n",
        )
            .into_response();
    };
    let memory = store.memory();
    let document = memory.ledger.document(Some(store.clock().now()));
    match serde_json::to_vec(&document) {
        Ok(body) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

async fn readyz(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    if app.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no resolver pass applied yet\n",
        )
    }
}

async fn metrics_text(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
}

async fn status_json(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    let mut status = app.status.read().await.clone();
    if let serde_json::Value::Object(map) = &mut status {
        let time = |t: jiff::Timestamp| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let enrollment: serde_json::Map<String, serde_json::Value> = app
            .enrollment
            .all()
            .into_iter()
            .map(|(policy, tally)| {
                let policy = if policy.is_empty() { "(no gate)".to_string() } else { policy };
                (
                    policy,
                    serde_json::json!({
                        "decisions": tally.decisions,
                        "lastDecisionTime": tally.last_decision.map(time),
                        "lastProblem": tally.last_problem.map(|(at, why)| format!("{}: {why}", time(at))),
                    }),
                )
            })
            .collect();
        map.insert("enrollment".into(), enrollment.into());
    }
    axum::Json(status)
}
