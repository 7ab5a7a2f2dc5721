//! `GET /api/v1/devices` (a filtered page of devices) and `GET /api/v1/devices/{id}` (one device
//! explained, by enrollment id or serial number) on the admin port. Each request is authorised
//! for what it may see (`AdminAuth::scope`): a token that may read UpdatePolicy status in some
//! namespaces only sees the devices resources there govern, and nothing is counted past that.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use super::admin::{AdminAuth, Verdict};
use crate::backend::store::Store;
use crate::mdm::Enrollment;
use crate::view::explain::{self, Live, Served};
use crate::view::{DeviceIndex, ListQuery, Scope};

/// Reports shown per device, newest first.
const RECENT_REPORTS: usize = 5;

#[derive(Clone)]
struct DevicesState {
    app: Arc<AppState>,
    auth: Arc<AdminAuth>,
}

pub fn router(app: Arc<AppState>, auth: Arc<AdminAuth>) -> Router {
    Router::new()
        .route("/api/v1/devices", get(list))
        .route("/api/v1/devices/{id}", get(show))
        .with_state(DevicesState { app, auth })
}

/// A Kubernetes-style `Status` answer with a message that says what was asked.
fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = serde_json::json!({
        "kind": "Status",
        "status": "Failure",
        "code": code.as_u16(),
        "reason": reason,
        "message": message,
    });
    let mut response = (code, axum::Json(body)).into_response();
    if code == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn refused(verdict: Verdict) -> Response {
    match verdict {
        Verdict::Allowed => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            String::new(),
        ),
        Verdict::Unauthenticated(why) => {
            status(StatusCode::UNAUTHORIZED, "Unauthorized", why.into())
        }
        Verdict::Forbidden(why) => status(StatusCode::FORBIDDEN, "Forbidden", why),
        Verdict::Unavailable(why) => status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            why.into(),
        ),
    }
}

/// The last pass's index and the caller's scope, or the answer to give instead.
async fn authorised(
    state: &DevicesState,
    headers: &HeaderMap,
) -> Result<(Arc<DeviceIndex>, Scope), Response> {
    // Authenticated before anything about the fleet is said, even that no pass has run.
    let current = state.app.device_index();
    let namespaces: BTreeSet<String> = current
        .as_ref()
        .map(|index| {
            let checked = &index.pass.checked;
            checked
                .policies
                .iter()
                .map(|p| p.key.namespace.clone())
                .chain(checked.targets.iter().map(|t| t.key.namespace.clone()))
                .collect()
        })
        .unwrap_or_default();
    let scope = state
        .auth
        .scope(headers, &namespaces)
        .await
        .map_err(refused)?;
    let index = current.ok_or_else(|| {
        status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "no resolver pass has run yet: devices are listed once the first pass is done".into(),
        )
    })?;
    Ok((index, scope))
}

fn json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            error.to_string(),
        ),
    }
}

async fn list(
    State(state): State<DevicesState>,
    headers: HeaderMap,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let (index, scope) = match authorised(&state, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let params = match params {
        Ok(Query(params)) => params,
        Err(rejection) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("the query string: {}", rejection.body_text()),
            );
        }
    };
    match ListQuery::parse(&params, &index.pass.checked, &scope) {
        Ok(query) => json(&index.list(&query, &scope)),
        Err(error) => status(StatusCode::BAD_REQUEST, "BadRequest", error.to_string()),
    }
}

async fn show(
    State(state): State<DevicesState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (index, scope) = match authorised(&state, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let Some(store) = state.app.ledger.clone() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "this server keeps no device store".into(),
        );
    };
    let not_found = || {
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "no device with enrollment id or serial number {id:?} among {} (the pass at {})",
                match scope {
                    Scope::All => "the devices the operator knows".to_string(),
                    Scope::Namespaces(_) =>
                        "the devices governed by resources you may read".to_string(),
                },
                index.pass.at
            ),
        )
    };
    // The store's clock: the operator's (virtual in simulations and tests).
    let now = store.clock().now();
    let found = index.find(&id);
    let enrollment_id = found
        .map(|p| index.pass.devices[p].enrollment_id.clone())
        .unwrap_or_else(|| id.clone());
    let live = {
        let store = store.clone();
        let enrollment_id = enrollment_id.clone();
        match tokio::task::spawn_blocking(move || gather(&store, &enrollment_id)).await {
            Ok(Ok(live)) => live,
            Ok(Err(error)) => {
                return status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    format!("cannot read the device from the store: {error}"),
                );
            }
            Err(error) => {
                return status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    error.to_string(),
                );
            }
        }
    };
    match found {
        Some(position) => match explain::explain(&index, position, &live, &scope, now) {
            Some(view) => json(&view),
            None => not_found(),
        },
        // Left out of the pass because it checked out: said only to those who see everything.
        None => match (&scope, live.mdm.as_ref().map(|m| m.enrollment)) {
            (Scope::All, Some(Enrollment::CheckedOut { at })) => json(&explain::checked_out(
                &index,
                &enrollment_id,
                at,
                &live,
                now,
            )),
            _ => not_found(),
        },
    }
}

/// What the store says of the device now.
fn gather(store: &Store, enrollment_id: &str) -> Result<Live, crate::backend::BackendError> {
    let served = store.served_set(enrollment_id).map(|set| Served {
        token: set.token.clone(),
        members: set.members.iter().cloned().collect(),
        configurations: set
            .members
            .iter()
            .filter_map(|identifier| {
                store
                    .served_declaration(enrollment_id, "configuration", identifier)
                    .map(|d| (identifier.clone(), d.body.clone()))
            })
            .collect(),
    });
    Ok(Live {
        record: store.device_record(enrollment_id)?,
        items: store.device_items(enrollment_id)?,
        mdm: store.mdm_device(enrollment_id)?,
        served,
        memory: store.memory(),
        recent: store.recent_reports(enrollment_id, RECENT_REPORTS)?,
    })
}
