//! The DDM endpoints behind NanoMDM's `-dm` hand-off: `GET tokens`, `GET declaration-items`,
//! `GET declaration/{kind}/{identifier}`, `PUT status`. The enrollment comes in
//! `X-Enrollment-ID`. With a receive key, requests must carry a valid `X-Hmac-Signature`
//! (base64 HMAC-SHA256 of the body); with a send key, responses carry one.
//!
//! NanoMDM's signature covers the body only, not the enrollment id: every GET carries the same
//! one (the HMAC of ""), and a signed report can be replayed under another id. So a GET never
//! creates state — an enrollment the operator does not know is served the bootstrap set from
//! memory — and only a status report (or the inventory) makes an enrollment known. Reports are
//! bounded per device: a merged state over `status::MAX_STATE_BYTES` is refused (413), and each
//! enrollment has a report rate limit (429).

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::backend::embedded::StatusWriter;
use crate::backend::store::{Refusal, ServedSet, Store};
use crate::declarations::Declaration;
use crate::metrics::Metrics;
use crate::status::{MAX_REPORT_BYTES, StatusReport};

pub const ENROLLMENT_HEADER: &str = "x-enrollment-id";
pub const SIGNATURE_HEADER: &str = "x-hmac-signature";

/// What the DDM endpoints need.
pub struct DdmState {
    pub store: Arc<Store>,
    pub reports: StatusWriter,
    /// Verifies requests (NanoMDM's `-dm` send key).
    pub receive_key: Option<Vec<u8>>,
    /// Signs responses (NanoMDM's `-dm` receive key).
    pub send_key: Option<Vec<u8>>,
    /// Declarations every new enrollment gets before the resolver knows its model and OS: a
    /// status subscription and an activation naming it.
    pub bootstrap: Vec<Declaration>,
    /// Tells the resolver loop which enrollment reported.
    pub reported: mpsc::UnboundedSender<String>,
    pub metrics: Arc<Metrics>,
    /// Judges what reports claim (OS version and build, model) against Apple's catalog.
    pub claims: crate::catalog::SharedClaims,
}

/// The DDM routes, to be nested under the base path.
pub fn router(state: Arc<DdmState>) -> Router {
    // Said where it is watched: requests are not authenticated.
    state
        .metrics
        .insecure_setting("no_hmac", state.receive_key.is_none());
    Router::new()
        .route("/tokens", get(tokens))
        .route("/declaration-items", get(declaration_items))
        .route("/declaration/{kind}/{*identifier}", get(declaration))
        .route("/status", put(status))
        .with_state(state)
}

fn problem(state: &DdmState, status: StatusCode, endpoint: &'static str, why: &str) -> Response {
    state.metrics.ddm_request(endpoint, status.as_u16());
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{why}\n"),
    )
        .into_response()
}

/// Checks the signature (when configured) and returns the enrollment id.
fn authenticate(
    state: &DdmState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, (StatusCode, &'static str)> {
    if let Some(key) = &state.receive_key {
        let signature = headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or((StatusCode::UNAUTHORIZED, "missing X-Hmac-Signature"))?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .map_err(|_| (StatusCode::UNAUTHORIZED, "X-Hmac-Signature is not base64"))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key)
            .map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "bad key"))?;
        mac.update(body);
        mac.verify_slice(&signature).map_err(|_| {
            (
                StatusCode::UNAUTHORIZED,
                "X-Hmac-Signature does not match the body",
            )
        })?;
    }
    let enrollment = headers
        .get(ENROLLMENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .ok_or((
            StatusCode::BAD_REQUEST,
            "missing or invalid X-Enrollment-ID",
        ))?;
    Ok(enrollment.to_string())
}

/// A 200 with a JSON body, signed when a send key is configured.
fn ok_json(state: &DdmState, endpoint: &'static str, body: Vec<u8>) -> Response {
    state.metrics.ddm_request(endpoint, 200);
    let mut response = Response::new(Body::empty());
    if let Some(key) = &state.send_key
        && let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key)
    {
        mac.update(&body);
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        if let Ok(value) = HeaderValue::from_str(&signature) {
            response.headers_mut().insert(SIGNATURE_HEADER, value);
        }
    }
    if !body.is_empty() {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    *response.body_mut() = Body::from(body);
    response
}

/// The enrollment's set, or — for an enrollment with none — the bootstrap set, from memory:
/// nothing is written for a GET.
fn served_set(state: &DdmState, enrollment: &str) -> Option<Arc<ServedSet>> {
    state
        .store
        .served_set(enrollment)
        .or_else(|| Some(state.store.bootstrap(&state.bootstrap)?.set.clone()))
}

async fn tokens(State(state): State<Arc<DdmState>>, headers: HeaderMap) -> Response {
    let enrollment = match authenticate(&state, &headers, b"") {
        Ok(e) => e,
        Err((code, why)) => return problem(&state, code, "tokens", why),
    };
    state.reports.checked_in(&enrollment);
    let Some(set) = served_set(&state, &enrollment) else {
        return problem(
            &state,
            StatusCode::NOT_FOUND,
            "tokens",
            "unknown enrollment",
        );
    };
    let body = serde_json::json!({
        "SyncTokens": {
            "DeclarationsToken": set.token,
            "Timestamp": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        }
    });
    ok_json(
        &state,
        "tokens",
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

async fn declaration_items(State(state): State<Arc<DdmState>>, headers: HeaderMap) -> Response {
    let enrollment = match authenticate(&state, &headers, b"") {
        Ok(e) => e,
        Err((code, why)) => return problem(&state, code, "declaration-items", why),
    };
    match served_set(&state, &enrollment) {
        Some(set) => ok_json(&state, "declaration-items", set.items.clone()),
        None => problem(
            &state,
            StatusCode::NOT_FOUND,
            "declaration-items",
            "unknown enrollment",
        ),
    }
}

async fn declaration(
    State(state): State<Arc<DdmState>>,
    Path((kind, identifier)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let enrollment = match authenticate(&state, &headers, b"") {
        Ok(e) => e,
        Err((code, why)) => return problem(&state, code, "declaration", why),
    };
    let served = match state.store.served_set(&enrollment) {
        Some(_) => state
            .store
            .served_declaration(&enrollment, &kind, &identifier),
        None => state
            .store
            .bootstrap(&state.bootstrap)
            .and_then(|b| b.declarations.get(&identifier).cloned())
            .filter(|d| d.kind == kind),
    };
    match served {
        Some(declaration) => ok_json(&state, "declaration", declaration.body.clone()),
        None => problem(
            &state,
            StatusCode::NOT_FOUND,
            "declaration",
            "no such declaration for this enrollment",
        ),
    }
}

async fn status(State(state): State<Arc<DdmState>>, headers: HeaderMap, body: Bytes) -> Response {
    let enrollment = match authenticate(&state, &headers, &body) {
        Ok(e) => e,
        Err((code, why)) => return problem(&state, code, "status", why),
    };
    if body.len() > MAX_REPORT_BYTES {
        state.metrics.status_report_refused("report_too_large");
        return problem(
            &state,
            StatusCode::PAYLOAD_TOO_LARGE,
            "status",
            "status report too large",
        );
    }
    if let Err(refusal) = state.reports.admit(&enrollment) {
        return refused(&state, &refusal);
    }
    let report = match StatusReport::from_slice(&body) {
        Ok(report) => report,
        Err(error) => {
            return problem(
                &state,
                StatusCode::BAD_REQUEST,
                "status",
                &error.to_string(),
            );
        }
    };
    // Reported facts override the inventory, so a claim Apple's catalog contradicts is refused
    // (422, counted); the stored state supplies the model an incremental report leaves out.
    if let Some(check) = state.claims.get()
        && crate::catalog::ClaimCheck::judges(&report.status_items)
    {
        let (store, id) = (state.store.clone(), enrollment.clone());
        let stored = tokio::task::spawn_blocking(move || store.device_items(&id)).await;
        let stored = stored.ok().and_then(Result::ok).flatten();
        let stored = stored.map(|items| crate::status::DeviceStatus::from_items(&items));
        let reported = crate::status::DeviceStatus::from_items(&report.status_items);
        if let Err(implausible) = check.check(&enrollment, &reported, stored.as_ref()) {
            tracing::warn!(enrollment_id = enrollment, %implausible, "status report refused");
            state.metrics.status_claim_refused(implausible.reason());
            let code = StatusCode::UNPROCESSABLE_ENTITY;
            return problem(&state, code, "status", &implausible.to_string());
        }
    }
    // Answer only once the report is durable: NanoMDM turns anything but 200 into a
    // check-in error, and the device sends the report again.
    match state
        .reports
        .record(enrollment.clone(), report, body.to_vec())
        .await
    {
        Ok(()) => {
            state.metrics.status_report();
            let _ = state.reported.send(enrollment);
            ok_json(&state, "status", Vec::new())
        }
        Err(refusal) => refused(&state, &refusal),
    }
}

/// A report refused for what it would cost (counted by reason), or because the store cannot
/// take it now.
fn refused(state: &DdmState, refusal: &Refusal) -> Response {
    let code = match refusal {
        Refusal::StateTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Refusal::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    if let Refusal::Unavailable(error) = refusal {
        tracing::error!(%error, "cannot store a status report");
    } else {
        state.metrics.status_report_refused(refusal.reason());
    }
    let mut response = problem(state, code, "status", &refusal.to_string());
    if let Refusal::RateLimited(seconds) = refusal
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The body cap for the DDM routes: a status report, with room for headers' worth of slack.
pub const MAX_BODY_BYTES: usize = MAX_REPORT_BYTES + 1024;
