//! The enrollment gate over HTTP: `POST` MachineInfo (CMS-signed, or a plain plist behind a
//! proxy that unwrapped it) and the web flow's `GET` with `x-apple-aspen-deviceinfo`. Held
//! devices get 403 `com.apple.softwareupdate.required`; the rest are forwarded to the upstream
//! enrollment URL or served the configured profile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use tokio::sync::watch;

use crate::enroll::response::{self, Format};
use crate::enroll::tally::Tally;
use crate::enroll::{Anchors, EnrollError, Envelope, GateView, Trust, Verdict, decide};
use crate::metrics::Metrics;

/// MachineInfo is a few KiB signed (plist and certificate chain); anything near this is not.
pub const MAX_BODY_BYTES: usize = 32 * 1024;
/// Envelopes checked at once, off the async workers (CMS and RSA are CPU work).
const PARALLEL_CHECKS: usize = 8;
/// The web flow's header: base64 of the CMS-signed MachineInfo.
pub const DEVICE_INFO_HEADER: &str = "x-apple-aspen-deviceinfo";
/// Largest upstream answer passed back (an enrollment profile is a few KiB).
const MAX_UPSTREAM_BYTES: usize = 1024 * 1024;
/// How long a device is asked to wait when the gate cannot decide and fails closed.
const RETRY_AFTER_SECONDS: u64 = 300;

/// Where a device the gate lets through goes.
#[derive(Debug, Clone)]
pub enum Forward {
    /// Proxied to the MDM's own enrollment URL.
    Upstream {
        url: reqwest::Url,
        client: reqwest::Client,
    },
    /// Served this enrollment profile (`application/x-apple-aspen-config`).
    Profile(Bytes),
    /// Nothing configured: the decision is answered, but no profile can be given.
    Nothing,
}

/// What the gate's handlers read.
pub struct EnrollState {
    pub view: watch::Receiver<Arc<GateView>>,
    pub tally: Arc<Tally>,
    pub metrics: Arc<Metrics>,
    /// Who vouches for MachineInfo: the signer's chain to the roots, or a proxy in front.
    pub trust: Trust,
    /// The seeding service token for `RequireBetaProgram`.
    pub beta_token: Option<String>,
    pub forward: Forward,
    /// Bounds the envelope checks running on blocking threads.
    pub checks: tokio::sync::Semaphore,
    /// Where the `SOFTWARE_UPDATE_DEVICE_ID` of trusted MachineInfo is kept, by UDID (the MDM
    /// facts of the enrollment: macOS 14.4–14.x report no board id over DDM). `None`: not kept.
    pub device_ids: Option<Arc<crate::backend::store::Store>>,
}

pub fn router(path: &str, state: Arc<EnrollState>) -> Router {
    Router::new()
        .route(
            path,
            get(web_flow)
                .post(posted)
                // Not a decision: no MachineInfo travels with HEAD.
                .head(|| async { StatusCode::METHOD_NOT_ALLOWED }),
        )
        .with_state(state)
}

async fn posted(
    State(state): State<Arc<EnrollState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Read at most the limit ourselves: an oversized body is a bad request, said plainly.
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return refuse(
                &state,
                &EnrollError::Request(format!(
                    "the body is larger than {} KiB; MachineInfo is much smaller",
                    MAX_BODY_BYTES / 1024
                )),
            );
        }
    };
    let envelope = Envelope::detect(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        &body,
    );
    gate(state, Method::POST, uri.query(), &headers, body, envelope).await
}

async fn web_flow(
    State(state): State<Arc<EnrollState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let Some(value) = headers.get(DEVICE_INFO_HEADER) else {
        return refuse(
            &state,
            &EnrollError::Request(format!(
                "GET needs the {DEVICE_INFO_HEADER} header (base64 of the signed MachineInfo)"
            )),
        );
    };
    if value.len() > MAX_BODY_BYTES * 4 / 3 + 4 {
        return refuse(
            &state,
            &EnrollError::Request(format!("the {DEVICE_INFO_HEADER} header is too large")),
        );
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.as_bytes().trim_ascii())
        .map_err(|e| EnrollError::Request(format!("{DEVICE_INFO_HEADER} is not base64: {e}")));
    match decoded {
        Ok(body) => {
            gate(
                state,
                Method::GET,
                uri.query(),
                &headers,
                Bytes::from(body),
                Envelope::Signed,
            )
            .await
        }
        Err(error) => refuse(&state, &error),
    }
}

async fn gate(
    state: Arc<EnrollState>,
    method: Method,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
    envelope: Envelope,
) -> Response {
    let started = Instant::now();
    // CMS parsing and signature checks are CPU work on untrusted bytes: on blocking threads,
    // a few at a time, so they never stall the async workers serving DDM.
    let checked = {
        let Ok(_permit) = state.checks.acquire().await else {
            return refuse(&state, &EnrollError::Request("the gate is stopping".into()));
        };
        let (state, body) = (state.clone(), body.clone());
        tokio::task::spawn_blocking(move || {
            crate::enroll::read(
                &body,
                envelope,
                &state.trust,
                rustls_pki_types::UnixTime::now(),
            )
        })
        .await
    };
    let info = match checked {
        Ok(Ok(info)) => info,
        Ok(Err(error)) => return refuse(&state, &error),
        Err(error) => {
            // A bug, not bad input: say so, and do not count it as the device's fault.
            tracing::error!(%error, "MachineInfo check task failed");
            state.metrics.ddm_request("enroll", 500);
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the MachineInfo could not be checked
",
            )
                .into_response();
        }
    };
    // Trusted MachineInfo is a fact about the device whatever the gate decides (or whether it
    // can decide yet).
    keep_device_id(&state, &info, jiff::Timestamp::now());
    let view = state.view.borrow().clone();
    if !view.is_ready() {
        state.metrics.ddm_request("enroll", 503);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, HeaderValue::from_static("30"))],
            "the enrollment gate is starting: no resolver pass yet\n",
        )
            .into_response();
    }
    let now = jiff::Timestamp::now();
    let decision = decide(&view, &info, now);
    state.tally.record(&decision, now);
    let policy = decision
        .policy
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    state.metrics.enrollment_decision(
        policy.clone(),
        decision.verdict.as_str(),
        started.elapsed().as_secs_f64(),
    );
    // What the gate's lines name: the device (UDID, its enrollment id once enrolled, and
    // serial) and the UpdatePolicy that decided.
    let resource = decision
        .policy
        .as_ref()
        .map(|key| format!("UpdatePolicy {key}"));
    tracing::info!(
        serial = %info.serial,
        enrollment_id = info.udid.as_deref(),
        product = %info.product,
        running = decision.running.as_deref().unwrap_or("unknown"),
        can_update = info.can_request_update,
        decision = decision.verdict.as_str(),
        resource = resource.as_deref(),
        "enrollment"
    );
    match &decision.verdict {
        Verdict::UpdateRequired {
            required,
            beta_program,
        } => {
            let beta = match (beta_program, &state.beta_token, &decision.policy) {
                (Some(description), Some(token), _) => Some((description.as_str(), token.as_str())),
                (Some(_), None, Some(key)) => {
                    let why = "the policy asks for a beta program but the operator has no --enroll-beta-token-file; RequireBetaProgram left out".to_string();
                    tracing::error!(resource = %format!("UpdatePolicy {key}"), "{why}");
                    state.tally.problem(key, now, why);
                    None
                }
                _ => None,
            };
            let format =
                Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
            let body = response::update_required(
                required,
                beta,
                decision.platform,
                decision.running.as_deref(),
                &policy,
                format,
            );
            state.metrics.ddm_request("enroll", 403);
            (
                StatusCode::FORBIDDEN,
                [
                    (header::CONTENT_TYPE, format.content_type()),
                    (header::VARY, "Accept"),
                ],
                body,
            )
                .into_response()
        }
        Verdict::FailedClosed(why) => {
            tracing::warn!(serial = %info.serial, enrollment_id = info.udid.as_deref(), resource = resource.as_deref(), %why, "enrollment held: the gate cannot decide and fails closed");
            state.metrics.ddm_request("enroll", 503);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, RETRY_AFTER_SECONDS.to_string())],
                format!("enrollment is held until the gate can decide: {why}\n"),
            )
                .into_response()
        }
        Verdict::FailedOpen(why) => {
            tracing::warn!(serial = %info.serial, enrollment_id = info.udid.as_deref(), resource = resource.as_deref(), %why, "enrollment let through: the gate cannot decide and fails open");
            forward(&state, method, query, headers, body).await
        }
        Verdict::Ungated | Verdict::Allowed | Verdict::CannotUpdate => {
            forward(&state, method, query, headers, body).await
        }
    }
}

/// Keeps the MachineInfo's `SOFTWARE_UPDATE_DEVICE_ID` under its UDID, off the request's path
/// (a failure is logged: the gate's answer does not depend on it).
fn keep_device_id(state: &EnrollState, info: &crate::enroll::MachineInfo, now: jiff::Timestamp) {
    let (Some(store), Some(udid), Some(id)) = (
        &state.device_ids,
        info.udid.clone(),
        info.software_update_device_id.clone(),
    ) else {
        return;
    };
    let store = store.clone();
    let fact = crate::mdm::Fact::new(id, crate::mdm::Source::MachineInfo, now);
    tokio::task::spawn_blocking(move || {
        if let Err(error) = store.record_machine_info_device_id(&udid, fact) {
            tracing::warn!(enrollment_id = %udid, %error, "cannot keep the MachineInfo's SOFTWARE_UPDATE_DEVICE_ID");
        }
    });
}

/// Never the profile: 403 for MachineInfo nobody trustworthy vouches for, 400 for malformed
/// requests; counted per reason.
fn refuse(state: &EnrollState, error: &EnrollError) -> Response {
    tracing::info!(reason = error.reason(), %error, "MachineInfo refused");
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
    state.metrics.ddm_request("enroll", status.as_u16());
    state.metrics.enrollment_refused(error.reason());
    (status, format!("{error}\n")).into_response()
}

/// Lets the device on to its enrollment profile.
async fn forward(
    state: &EnrollState,
    method: Method,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    match &state.forward {
        Forward::Profile(profile) => {
            state.metrics.ddm_request("enroll", 200);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-apple-aspen-config")],
                profile.clone(),
            )
                .into_response()
        }
        Forward::Nothing => {
            state.metrics.ddm_request("enroll", 501);
            (
                StatusCode::NOT_IMPLEMENTED,
                "the gate lets this device enroll, but no --enroll-upstream or --enroll-profile is configured\n",
            )
                .into_response()
        }
        Forward::Upstream { url, client } => {
            let mut url = url.clone();
            if let Some(query) = query {
                url.set_query(Some(query));
            }
            let mut request = client.request(method, url.clone());
            for name in [
                header::CONTENT_TYPE,
                header::ACCEPT,
                header::USER_AGENT,
                header::ACCEPT_LANGUAGE,
            ] {
                if let Some(value) = headers.get(&name) {
                    request = request.header(name, value);
                }
            }
            if let Some(value) = headers.get(DEVICE_INFO_HEADER) {
                request = request.header(DEVICE_INFO_HEADER, value);
            }
            if !body.is_empty() && headers.get(DEVICE_INFO_HEADER).is_none() {
                request = request.body(body);
            }
            match upstream(request).await {
                Ok(response) => {
                    state
                        .metrics
                        .ddm_request("enroll", response.status().as_u16());
                    response
                }
                Err(why) => {
                    tracing::error!(%url, %why, "upstream enrollment server");
                    state.metrics.ddm_request("enroll", 502);
                    (
                        StatusCode::BAD_GATEWAY,
                        format!("the upstream enrollment server did not answer: {why}\n"),
                    )
                        .into_response()
                }
            }
        }
    }
}

async fn upstream(request: reqwest::RequestBuilder) -> Result<Response, String> {
    let mut answer = request.send().await.map_err(|e| e.to_string())?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let upstream_headers = answer.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_UPSTREAM_BYTES {
            return Err(format!("answer larger than {MAX_UPSTREAM_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    let mut response = (status, body).into_response();
    // End-to-end headers pass (Location, Set-Cookie, Cache-Control, ...); hop-by-hop ones and
    // the length (set for the body sent) do not.
    for (name, value) in &upstream_headers {
        let hop_by_hop = matches!(
            name.as_str(),
            "connection"
                | "keep-alive"
                | "proxy-authenticate"
                | "proxy-authorization"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "content-length"
        );
        if !hop_by_hop
            && let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::from_bytes(name.as_str().as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            )
        {
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}

/// A client for the upstream enrollment URL: rustls, a bounded wait.
pub fn upstream_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        // The device follows redirects itself (a POST must not turn into a GET here).
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())
}

/// How the gate is set up (`run --enroll-*`).
#[derive(Debug, Clone)]
pub struct EnrollConfig {
    /// Where MachineInfo is posted, such as `/enroll`.
    pub path: String,
    /// Proxy devices the gate lets through to this enrollment URL.
    pub upstream: Option<String>,
    /// Or serve them this enrollment profile.
    pub profile: Option<Vec<u8>>,
    /// PEM CAs the MachineInfo signer must chain to, instead of Apple Root CA.
    pub ca_bundle: Option<Vec<u8>>,
    /// Take MachineInfo without checking who signed it (a proxy in front verified it).
    pub allow_unsigned: bool,
    /// The seeding service token for `RequireBetaProgram`.
    pub beta_token: Option<String>,
}

impl Default for EnrollConfig {
    fn default() -> Self {
        EnrollConfig {
            path: "/enroll".into(),
            upstream: None,
            profile: None,
            ca_bundle: None,
            allow_unsigned: false,
            beta_token: None,
        }
    }
}

impl EnrollConfig {
    /// The route path: leading `/`, no trailing one.
    pub fn route(&self) -> String {
        format!("/{}", self.path.trim_matches('/'))
    }

    /// The handlers' state; a bad CA bundle or upstream URL is a setup error.
    pub fn state(
        &self,
        view: watch::Receiver<Arc<GateView>>,
        tally: Arc<Tally>,
        metrics: Arc<Metrics>,
    ) -> Result<EnrollState, String> {
        let trust = match (&self.ca_bundle, self.allow_unsigned) {
            (Some(_), true) => {
                return Err(
                    "give --enroll-ca-bundle or --enroll-allow-unsigned, not both: the first checks who signed MachineInfo, the second does not"
                        .into(),
                );
            }
            (Some(pem), false) => Trust::Signed(
                Anchors::from_pem(pem).map_err(|e| format!("--enroll-ca-bundle: {e}"))?,
            ),
            (None, false) => Trust::Signed(Anchors::apple()),
            (None, true) => {
                tracing::warn!(
                    "--enroll-allow-unsigned: MachineInfo is taken without checking that a device signed it; only safe behind a proxy that verified the signature, since the gate hands out the enrollment profile"
                );
                Trust::Unsigned
            }
        };
        metrics.enrollment_unsigned_allowed(matches!(trust, Trust::Unsigned));
        if let Trust::Signed(anchors) = &trust {
            tracing::info!(roots = ?anchors.subjects(), "MachineInfo must be signed by a device certificate chaining to these roots");
        }
        let forward = match (&self.upstream, &self.profile) {
            (Some(_), Some(_)) => {
                return Err("give --enroll-upstream or --enroll-profile, not both".into());
            }
            (Some(url), None) => {
                let url = reqwest::Url::parse(url)
                    .map_err(|e| format!("--enroll-upstream {url:?}: {e}"))?;
                if !matches!(url.scheme(), "https" | "http") {
                    return Err(format!("--enroll-upstream {url}: not an http(s) URL"));
                }
                Forward::Upstream {
                    url,
                    client: upstream_client()?,
                }
            }
            (None, Some(profile)) => Forward::Profile(Bytes::from(profile.clone())),
            (None, None) => Forward::Nothing,
        };
        Ok(EnrollState {
            view,
            tally,
            metrics,
            trust,
            checks: tokio::sync::Semaphore::new(PARALLEL_CHECKS),
            device_ids: None,
            beta_token: self
                .beta_token
                .as_ref()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
            forward,
        })
    }
}
