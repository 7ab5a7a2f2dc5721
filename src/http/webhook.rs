//! `POST /webhook/nanomdm` on the device listener: NanoMDM's `-webhook-url` events
//! (`mdm::webhook`), the MDM's word on which devices enrolled, left, what they are and whether
//! they escrowed a bootstrap token. With a key (`--webhook-hmac-key-file`, NanoMDM's
//! `-webhook-hmac-key`) each body must carry `X-Hmac-Signature` = base64 HMAC-SHA256(key, body),
//! compared in constant time; without one, unsigned events are taken only when the DDM endpoints
//! take unsigned requests too (else the webhook would be a way around their key).
//!
//! NanoMDM sends events asynchronously and only logs a non-200 answer (it never retries), so the
//! answer is quick: events are committed in batches by one writer thread (each event in a
//! savepoint of its own, so it is applied whole or not at all) and answered once durable. A
//! CheckOut withdraws the enrollment's set at once (a fenced set write; a replica that may not
//! write leaves it to the leader's pass, which leaves checked-out devices out).

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{mpsc, oneshot};

use crate::backend::BackendError;
use crate::backend::store::Store;
use crate::backend::store::mdm::MdmOutcome;
use crate::mdm::webhook::{self, Parsed, WebhookEvent};
use crate::metrics::Metrics;

/// Where NanoMDM's `-webhook-url` points, on the device listener.
pub const PATH: &str = "/webhook/nanomdm";
/// The largest body taken: a check-in is a few KiB, a DeviceInformation report tens of KiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most events committed in one transaction.
const MAX_BATCH: usize = 1024;

/// Who may post events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookAuth {
    /// Bodies must carry a valid `X-Hmac-Signature` under this key.
    Key(Vec<u8>),
    /// No key, and the DDM endpoints take unsigned requests too: events are taken unsigned.
    Unsigned,
    /// No key while the DDM endpoints require one: every event is refused (401) until NanoMDM's
    /// `-webhook-hmac-key` is given as `--webhook-hmac-key-file`.
    NoKey,
}

impl WebhookAuth {
    /// `key`: the webhook's; `ddm_signed`: whether the DDM endpoints require a signature.
    pub fn new(key: Option<Vec<u8>>, ddm_signed: bool) -> Self {
        match key {
            Some(key) => WebhookAuth::Key(key),
            None if ddm_signed => WebhookAuth::NoKey,
            None => WebhookAuth::Unsigned,
        }
    }
}

/// What the webhook route needs.
pub struct WebhookState {
    pub store: Arc<Store>,
    pub writer: EventWriter,
    pub auth: WebhookAuth,
    pub metrics: Arc<Metrics>,
    /// Tells the resolver loop an enrollment's MDM facts changed (the pass reads them).
    pub learned: Option<mpsc::UnboundedSender<String>>,
    /// Told of answered commands, so a device's pending `DeclarativeManagement` command ends
    /// when it answers it (not only at its next DDM check-in).
    pub sync: Option<crate::backend::nanomdm::SyncTrigger>,
}

impl WebhookState {
    /// Starts the event writer on `store`.
    pub fn new(
        store: Arc<Store>,
        auth: WebhookAuth,
        metrics: Arc<Metrics>,
        learned: Option<mpsc::UnboundedSender<String>>,
    ) -> Self {
        match &auth {
            WebhookAuth::Unsigned => tracing::warn!(
                "no --webhook-hmac-key-file: NanoMDM webhook events are taken unsigned, so anyone who reaches the device port can report devices enrolled or checked out"
            ),
            WebhookAuth::NoKey => tracing::warn!(
                "no --webhook-hmac-key-file while DDM requests are authenticated: NanoMDM webhook events are refused (401); give NanoMDM's -webhook-hmac-key in --webhook-hmac-key-file"
            ),
            WebhookAuth::Key(_) => {}
        }
        metrics.insecure_setting("webhook_no_hmac", auth == WebhookAuth::Unsigned);
        WebhookState {
            writer: EventWriter::start(store.clone()),
            store,
            auth,
            metrics,
            learned,
            sync: None,
        }
    }

    pub fn with_sync(mut self, sync: Option<crate::backend::nanomdm::SyncTrigger>) -> Self {
        self.sync = sync;
        self
    }
}

/// The webhook route, to be merged into the device router.
pub fn router(state: Arc<WebhookState>) -> Router {
    Router::new().route(PATH, post(receive)).with_state(state)
}

type Job = (WebhookEvent, oneshot::Sender<Result<MdmOutcome, String>>);

/// Commits webhook events in batches on a thread of its own: events queue up while a commit
/// is syncing, so a burst costs one fsync per batch rather than per event.
#[derive(Clone)]
pub struct EventWriter {
    jobs: std_mpsc::Sender<Job>,
}

impl EventWriter {
    pub fn start(store: Arc<Store>) -> Self {
        let (jobs, queue) = std_mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("webhook-writer".into())
            .spawn(move || {
                while let Ok(first) = queue.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let (events, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    match store.record_mdm_events(&events) {
                        Ok(outcomes) => {
                            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                                let _ = reply.send(Ok(outcome));
                            }
                        }
                        Err(error) => {
                            tracing::error!(%error, "cannot store webhook events");
                            for reply in replies {
                                let _ = reply.send(Err(error.to_string()));
                            }
                        }
                    }
                }
            });
        if let Err(error) = started {
            tracing::error!(%error, "cannot start the webhook writer");
        }
        EventWriter { jobs }
    }

    /// Returns once the event is durably applied, with what it did.
    pub async fn record(&self, event: WebhookEvent) -> Result<MdmOutcome, String> {
        let (reply, done) = oneshot::channel();
        let stopped = || "the webhook writer has stopped".to_string();
        self.jobs.send((event, reply)).map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }
}

/// The `outcome` label of `webhook_events_total`.
mod outcome {
    pub const APPLIED: &str = "applied";
    pub const UNCHANGED: &str = "unchanged";
    pub const IGNORED: &str = "ignored";
    pub const REFUSED: &str = "refused";
    pub const MALFORMED: &str = "malformed";
    pub const FAILED: &str = "failed";
}

/// The `topic` label of events refused before they were read.
const UNREAD: &str = "unread";

fn answer(
    state: &WebhookState,
    status: StatusCode,
    topic: &'static str,
    outcome: &'static str,
    why: &str,
) -> Response {
    state.metrics.webhook_event(topic, outcome);
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{why}\n"),
    )
        .into_response()
}

/// Checks the body's signature against the configured key.
fn authenticate(auth: &WebhookAuth, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
    let key = match auth {
        WebhookAuth::Unsigned => return Ok(()),
        WebhookAuth::NoKey => {
            return Err(
                "webhook events are refused: DDM requests are authenticated, so give the operator NanoMDM's -webhook-hmac-key (--webhook-hmac-key-file)",
            );
        }
        WebhookAuth::Key(key) => key,
    };
    let signature = headers
        .get(crate::http::ddm::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or("missing X-Hmac-Signature")?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| "X-Hmac-Signature is not base64")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| "bad key")?;
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| "X-Hmac-Signature does not match the body")
}

async fn receive(
    State(state): State<Arc<WebhookState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return answer(
            &state,
            StatusCode::PAYLOAD_TOO_LARGE,
            UNREAD,
            outcome::REFUSED,
            &format!("the body is larger than {} KiB", MAX_BODY_BYTES / 1024),
        );
    };
    if let Err(why) = authenticate(&state.auth, &headers, &body) {
        return answer(
            &state,
            StatusCode::UNAUTHORIZED,
            UNREAD,
            outcome::REFUSED,
            why,
        );
    }
    // Parsing walks a plist of up to a MiB: off the async workers.
    let parsed = tokio::task::spawn_blocking(move || webhook::parse(&body)).await;
    let event = match parsed {
        Ok(Ok(Parsed::Event(event))) => *event,
        Ok(Ok(Parsed::Ignored { topic, why })) => {
            tracing::debug!(topic, reason = why.reason(), "webhook event ignored");
            return answer(&state, StatusCode::OK, topic, outcome::IGNORED, "ignored");
        }
        Ok(Err(error)) => {
            tracing::info!(reason = error.reason(), %error, "webhook event refused as malformed");
            return answer(
                &state,
                StatusCode::BAD_REQUEST,
                UNREAD,
                outcome::MALFORMED,
                &error.to_string(),
            );
        }
        Err(error) => {
            tracing::error!(%error, "webhook parse task failed");
            return answer(
                &state,
                StatusCode::INTERNAL_SERVER_ERROR,
                UNREAD,
                outcome::FAILED,
                "the event could not be read",
            );
        }
    };
    let topic = event.topic.as_str();
    let enrollment = event.enrollment().to_string();
    crate::backend::nanomdm_commands::answered(&state.store, &state.metrics, &event);
    if let (
        Some(sync),
        webhook::Message::Acknowledge {
            status,
            command_uuid: Some(uuid),
            ..
        },
    ) = (&state.sync, &event.message)
    {
        sync.acknowledged(&enrollment, uuid, status);
    }
    match state.writer.record(event).await {
        Ok(MdmOutcome::Applied { left, .. }) => {
            if left {
                withdraw(&state, &enrollment).await;
            }
            if let Some(learned) = &state.learned {
                let _ = learned.send(enrollment);
            }
            answer(&state, StatusCode::OK, topic, outcome::APPLIED, "applied")
        }
        Ok(MdmOutcome::Unchanged) => answer(
            &state,
            StatusCode::OK,
            topic,
            outcome::UNCHANGED,
            "already known",
        ),
        Ok(MdmOutcome::Refused(why)) => answer(
            &state,
            StatusCode::UNPROCESSABLE_ENTITY,
            topic,
            outcome::REFUSED,
            &why,
        ),
        Err(why) => answer(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            topic,
            outcome::FAILED,
            &format!("cannot store the event now: {why}"),
        ),
    }
}

/// A checked-out device's set goes at once (if it has a non-empty one: an enrollment the
/// operator never assigned gets no row).
async fn withdraw(state: &WebhookState, enrollment: &str) {
    let holds_something = state
        .store
        .served_set(enrollment)
        .is_some_and(|set| !set.members.is_empty());
    if !holds_something {
        return;
    }
    let (store, ids) = (state.store.clone(), vec![enrollment.to_string()]);
    match tokio::task::spawn_blocking(move || store.withdraw(&ids)).await {
        Ok(Ok(_)) => tracing::info!(
            enrollment_id = enrollment,
            "checked out of the MDM: its set is withdrawn"
        ),
        Ok(Err(BackendError::Fenced(why))) => tracing::warn!(
            enrollment_id = enrollment,
            %why,
            "checked out of the MDM; this replica may not write sets, the leader's pass withdraws it"
        ),
        Ok(Err(error)) => {
            tracing::error!(enrollment_id = enrollment, %error, "checked out of the MDM, but its set could not be withdrawn; the next pass does")
        }
        Err(error) => tracing::error!(enrollment_id = enrollment, %error, "withdraw task failed"),
    }
}
