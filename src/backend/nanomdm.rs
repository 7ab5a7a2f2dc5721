//! Triggering device syncs through NanoMDM's API: after a device's set changes, enqueue the
//! `DeclarativeManagement` command (`PUT /v1/enqueue/{id,id,...}`, Basic auth), debounced,
//! batched, and read per enrollment id the way NanoMDM answers (see [`reply`]):
//!
//! - `command_error` (top level or per id): not queued, so the enqueue is retried with backoff;
//! - `push_error`: queued but not pushed, so only the push is retried (`/v1/push/{ids}`), never
//!   the enqueue (NanoMDM queues before it pushes; retrying the enqueue queued the same command
//!   four times on a real server);
//! - at most one pending `DeclarativeManagement` command per device: one queued and not yet
//!   fetched is enough, since fetching it makes the device sync to its newest set. Pending ends
//!   with NanoMDM's acknowledgement of that command ([`SyncTrigger::acknowledged`]), with a DDM
//!   check-in after a successful push ([`SyncTrigger::checked_in`]), or after
//!   [`NanoMdmConfig::pending_ttl`] (a lost acknowledgement must not silence a device forever);
//! - only enrollments NanoMDM knows as enrolled (learned from its webhook, [`KnownEnrollments`]),
//!   unless [`NanoMdmConfig::enqueue_unknown`] says to take every device (a NanoMDM without
//!   `-webhook-url`): NanoMDM accepts unknown ids and keeps their commands.
//!
//! Without NanoMDM configured, devices still get their changes at their next check-in.
//! [`enqueue_command`] and [`push`] are the plain API calls, for other commands too.

mod reply;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use jiff::Timestamp;
use tokio::sync::mpsc;

pub use reply::{Enqueued, Pushed, ReplyError, parse_enqueue, parse_push};

use crate::clock::Clock;
use crate::metrics::Metrics;

/// The request type this trigger enqueues.
pub const DECLARATIVE_MANAGEMENT: &str = "DeclarativeManagement";

/// Replies above this size are not NanoMDM's (a 100-id reply is a few KiB).
const MAX_REPLY_BYTES: usize = 1 << 20;

/// Where NanoMDM's API is and how to reach it.
#[derive(Debug, Clone)]
pub struct NanoMdmConfig {
    /// Such as `https://mdm.example.com` (NanoHUB: `https://hub.example.com/api/v1/nanomdm`).
    pub api_url: String,
    /// The `-api` key; sent as Basic auth `nanomdm:<key>`.
    pub api_key: String,
    /// How long changes gather before one enqueue goes out.
    pub debounce: Duration,
    /// Enrollment ids per request (they travel in the URL path).
    pub batch: usize,
    /// Tries per enqueue, and per push, before giving up until the next change.
    pub attempts: u32,
    /// The first wait between tries; it doubles up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Enqueue for every device whose set changed, known to NanoMDM or not
    /// (`--nanomdm-enqueue-unknown`): for a NanoMDM without `-webhook-url`, where nothing tells
    /// the operator which devices enrolled. Off: only enrollments NanoMDM's webhook reported
    /// enrolled (and not checked out) get the command.
    pub enqueue_unknown: bool,
    /// How long a queued command counts as pending without an acknowledgement or a check-in.
    pub pending_ttl: Duration,
}

impl NanoMdmConfig {
    pub fn new(api_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        NanoMdmConfig {
            api_url: api_url.into(),
            api_key: api_key.into(),
            debounce: Duration::from_secs(2),
            batch: 100,
            attempts: 4,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            enqueue_unknown: false,
            pending_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Why a request to NanoMDM's API got no per-id answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NanoMdmError {
    #[error("NanoMDM's API could not be reached")]
    Unreachable,
    #[error("NanoMDM refused the API key (401)")]
    Unauthorized,
    #[error("NanoMDM's reply is larger than {MAX_REPLY_BYTES} bytes")]
    ReplyTooLarge,
    #[error("NanoMDM's reply: {0}")]
    Reply(#[from] ReplyError),
}

fn api_url(config: &NanoMdmConfig, endpoint: &str, ids: &[String]) -> String {
    let path: Vec<String> = ids.iter().map(|id| percent_encode(id)).collect();
    format!(
        "{}/v1/{endpoint}/{}",
        config.api_url.trim_end_matches('/'),
        path.join(",")
    )
}

/// Sends `request` and returns the status and a bounded body.
async fn call(request: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), NanoMdmError> {
    let mut response = request.send().await.map_err(|error| {
        tracing::debug!(%error, "NanoMDM API request failed");
        NanoMdmError::Unreachable
    })?;
    let status = response.status().as_u16();
    if status == 401 {
        return Err(NanoMdmError::Unauthorized);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|_| NanoMdmError::Unreachable)?
    {
        if body.len() + chunk.len() > MAX_REPLY_BYTES {
            return Err(NanoMdmError::ReplyTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

/// One `PUT /v1/enqueue/{ids}` with `command` (a command plist carrying `CommandUUID` and
/// `Command.RequestType`), pushing after. Every id in `ids` gets an answer: queued (pushed or
/// not) or not queued. An `Err` means nothing is known per id: take it as not queued.
pub async fn enqueue_command(
    client: &reqwest::Client,
    config: &NanoMdmConfig,
    ids: &[String],
    command: &[u8],
) -> Result<BTreeMap<String, Enqueued>, NanoMdmError> {
    let request = client
        .put(api_url(config, "enqueue", ids))
        .basic_auth("nanomdm", Some(&config.api_key))
        .header(reqwest::header::CONTENT_TYPE, "application/x-apple-plist")
        .body(command.to_vec())
        .timeout(Duration::from_secs(30));
    let (status, body) = call(request).await?;
    Ok(parse_enqueue(status, &body, ids)?)
}

/// One `/v1/push/{ids}`: an APNs push only, for commands already queued.
pub async fn push(
    client: &reqwest::Client,
    config: &NanoMdmConfig,
    ids: &[String],
) -> Result<BTreeMap<String, Pushed>, NanoMdmError> {
    let request = client
        .put(api_url(config, "push", ids))
        .basic_auth("nanomdm", Some(&config.api_key))
        .timeout(Duration::from_secs(30));
    let (status, body) = call(request).await?;
    Ok(parse_push(status, &body, ids)?)
}

/// Which enrollments NanoMDM knows as enrolled now (its webhook's Authenticate/TokenUpdate, not
/// followed by a CheckOut).
pub trait KnownEnrollments: Send + Sync {
    fn enrolled(&self) -> BoxFuture<'_, Result<HashSet<String>, String>>;
}

/// The store's MDM devices (what NanoMDM's webhook reported), enrolled ones only.
pub struct StoreEnrollments(pub Arc<crate::backend::store::Store>);

impl KnownEnrollments for StoreEnrollments {
    fn enrolled(&self) -> BoxFuture<'_, Result<HashSet<String>, String>> {
        let store = self.0.clone();
        Box::pin(async move {
            let devices = tokio::task::spawn_blocking(move || store.mdm_devices())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            Ok(devices
                .into_iter()
                .filter(|device| device.enrollment.is_enrolled())
                .map(|device| device.enrollment_id)
                .collect())
        })
    }
}

/// A `DeclarativeManagement` command in a device's NanoMDM queue, not yet fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    command_uuid: String,
    queued_at: Timestamp,
    /// Whether a push for it succeeded (so a DDM check-in means the device fetched it).
    pushed: bool,
}

/// What to do for the devices whose set changed.
#[derive(Debug, Default, PartialEq, Eq)]
struct Due {
    /// No command pending: enqueue one.
    enqueue: Vec<String>,
    /// A command is queued but its push failed: push again.
    push: Vec<String>,
    /// A command is queued and was pushed: nothing to do.
    pending: usize,
}

/// The pending commands, per enrollment id. Pure: the time comes in.
#[derive(Debug, Default)]
struct PendingCommands {
    by_device: HashMap<String, Pending>,
}

impl PendingCommands {
    fn due(&mut self, ids: &[String], now: Timestamp, ttl: Duration) -> Due {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.by_device.retain(|_, p| {
            now.as_millisecond()
                .saturating_sub(p.queued_at.as_millisecond())
                < ttl_ms
        });
        let mut due = Due::default();
        for id in ids {
            match self.by_device.get(id) {
                None => due.enqueue.push(id.clone()),
                Some(p) if !p.pushed => due.push.push(id.clone()),
                Some(_) => due.pending += 1,
            }
        }
        due
    }

    fn queued(&mut self, id: &str, command_uuid: &str, pushed: bool, now: Timestamp) {
        self.by_device.insert(
            id.to_string(),
            Pending {
                command_uuid: command_uuid.to_string(),
                queued_at: now,
                pushed,
            },
        );
    }

    fn pushed(&mut self, id: &str) {
        if let Some(p) = self.by_device.get_mut(id) {
            p.pushed = true;
        }
    }

    /// NanoMDM reported the device's answer to `command_uuid`.
    fn acknowledged(&mut self, id: &str, command_uuid: &str, status: &str) -> bool {
        // NotNow leaves the command queued (NanoMDM delivers it again on a later Idle); Idle
        // answers no command.
        let done = matches!(status, "Acknowledged" | "Error" | "CommandFormatError");
        if done
            && self
                .by_device
                .get(id)
                .is_some_and(|p| p.command_uuid == command_uuid)
        {
            self.by_device.remove(id);
            return true;
        }
        false
    }

    /// The device checked in over DDM. After a successful push that means it fetched the
    /// command; without one it may have reported on its own with the command still queued.
    fn checked_in(&mut self, id: &str) -> bool {
        if self.by_device.get(id).is_some_and(|p| p.pushed) {
            self.by_device.remove(id);
            return true;
        }
        false
    }
}

struct Shared {
    config: NanoMdmConfig,
    client: reqwest::Client,
    metrics: Option<Arc<Metrics>>,
    clock: Clock,
    pending: Mutex<PendingCommands>,
    known: RwLock<Option<Arc<dyn KnownEnrollments>>>,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, PendingCommands> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish_pending(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.nanomdm_pending_commands(self.pending().by_device.len());
        }
    }
}

/// Queues enrollment ids for a sync; a background task sends them.
#[derive(Clone)]
pub struct SyncTrigger {
    queue: mpsc::UnboundedSender<Vec<String>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SyncTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncTrigger")
            .field("api_url", &self.shared.config.api_url)
            .finish_non_exhaustive()
    }
}

impl SyncTrigger {
    /// Starts the sender task on the current Tokio runtime.
    pub fn start(config: NanoMdmConfig, client: reqwest::Client) -> Self {
        Self::start_with_metrics(config, client, None)
    }

    /// The same, counting every request in `metrics`.
    pub fn start_with_metrics(
        config: NanoMdmConfig,
        client: reqwest::Client,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self::start_with_clock(config, client, metrics, Clock::system())
    }

    /// The same, on `clock` (pending commands expire by it).
    pub fn start_with_clock(
        config: NanoMdmConfig,
        client: reqwest::Client,
        metrics: Option<Arc<Metrics>>,
        clock: Clock,
    ) -> Self {
        if config.enqueue_unknown {
            tracing::info!(
                "NanoMDM sync: enqueueing for every changed device, enrolled in NanoMDM or not"
            );
        }
        let shared = Arc::new(Shared {
            config,
            client,
            metrics,
            clock,
            pending: Mutex::default(),
            known: RwLock::new(None),
        });
        let (queue, mut incoming) = mpsc::unbounded_channel::<Vec<String>>();
        let task = shared.clone();
        tokio::spawn(async move {
            let mut changed: HashSet<String> = HashSet::new();
            while let Some(ids) = incoming.recv().await {
                changed.extend(ids);
                // Gather whatever else arrives within the debounce window: one command per
                // device however many times its set changed.
                let deadline = tokio::time::sleep(task.config.debounce);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        more = incoming.recv() => match more {
                            Some(ids) => changed.extend(ids),
                            None => break,
                        },
                        () = &mut deadline => break,
                    }
                }
                let mut ids: Vec<String> = changed.drain().collect();
                ids.sort();
                flush(&task, ids).await;
            }
        });
        SyncTrigger { queue, shared }
    }

    /// Where enrolled devices are learned (NanoMDM's webhook, through the backend). Without it,
    /// and without `enqueue_unknown`, no command is sent.
    pub fn known_from(&self, known: Arc<dyn KnownEnrollments>) {
        *self
            .shared
            .known
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(known);
    }

    pub fn notify(&self, enrollment_ids: &[String]) {
        if !enrollment_ids.is_empty() {
            let _ = self.queue.send(enrollment_ids.to_vec());
        }
    }

    /// NanoMDM's webhook reported a command answer (`mdm.Connect`: `status` and `command_uuid`
    /// of the acknowledge event). When it answers this device's pending `DeclarativeManagement`
    /// command (Acknowledged, Error or CommandFormatError), the next change enqueues anew.
    pub fn acknowledged(&self, enrollment_id: &str, command_uuid: &str, status: &str) {
        if self
            .shared
            .pending()
            .acknowledged(enrollment_id, command_uuid, status)
        {
            self.shared.publish_pending();
        }
    }

    /// The device checked in over DDM (a declaration-items or tokens request): if its pending
    /// command was pushed, it has fetched it.
    pub fn checked_in(&self, enrollment_id: &str) {
        if self.shared.pending().checked_in(enrollment_id) {
            self.shared.publish_pending();
        }
    }

    /// Whether this device has a `DeclarativeManagement` command queued and not yet fetched.
    pub fn is_pending(&self, enrollment_id: &str) -> bool {
        self.shared.pending().by_device.contains_key(enrollment_id)
    }
}

/// Sends the commands (or pushes) the changed devices need.
async fn flush(shared: &Shared, changed: Vec<String>) {
    let total = changed.len();
    let ids = if shared.config.enqueue_unknown {
        changed
    } else {
        let known = shared
            .known
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let enrolled = match known {
            Some(known) => known.enrolled().await.unwrap_or_else(|error| {
                tracing::warn!(%error, "enrolled devices unknown; no sync commands this time");
                HashSet::new()
            }),
            None => HashSet::new(),
        };
        changed
            .into_iter()
            .filter(|id| enrolled.contains(id))
            .collect()
    };
    let unknown = total - ids.len();
    if unknown > 0 {
        tracing::debug!(
            devices = unknown,
            "not enrolled in NanoMDM as far as its webhook told; no sync command"
        );
    }
    let due = shared
        .pending()
        .due(&ids, shared.clock.now(), shared.config.pending_ttl);
    if let Some(metrics) = &shared.metrics {
        metrics.nanomdm_sync_skipped("unknown_enrollment", unknown as u64);
        metrics.nanomdm_sync_skipped("pending", due.pending as u64);
    }
    let mut push_again = due.push;
    for chunk in due.enqueue.chunks(shared.config.batch.max(1)) {
        push_again.extend(enqueue_until_queued(shared, chunk).await);
    }
    for chunk in push_again.chunks(shared.config.batch.max(1)) {
        push_until_pushed(shared, chunk).await;
    }
    shared.publish_pending();
}

/// Enqueues for `ids` until each is queued or the attempts run out; returns those queued but
/// not pushed.
async fn enqueue_until_queued(shared: &Shared, ids: &[String]) -> Vec<String> {
    let config = &shared.config;
    let mut remaining = ids.to_vec();
    let mut not_pushed = Vec::new();
    let mut wait = config.backoff;
    for attempt in 1..=config.attempts.max(1) {
        // A new command each time: NanoMDM refuses nothing for a reused UUID, but then two
        // queued copies would be indistinguishable in its log and acknowledgements.
        let uuid = new_command_uuid(&remaining);
        let started = Instant::now();
        let result = enqueue_command(
            &shared.client,
            config,
            &remaining,
            command_plist(&uuid).as_bytes(),
        )
        .await;
        let seconds = started.elapsed().as_secs_f64();
        let now = shared.clock.now();
        let mut retry = Vec::new();
        let (mut queued, mut pushed, mut push_failed) = (0u64, 0u64, 0u64);
        match result {
            Ok(per_id) => {
                let mut pending = shared.pending();
                for (id, outcome) in per_id {
                    match outcome {
                        Enqueued::Queued => {
                            pending.queued(&id, &uuid, true, now);
                            queued += 1;
                            pushed += 1;
                        }
                        Enqueued::QueuedNotPushed { push_error } => {
                            tracing::debug!(enrollment_id = %id, %push_error, "queued, push failed");
                            pending.queued(&id, &uuid, false, now);
                            not_pushed.push(id);
                            queued += 1;
                            push_failed += 1;
                        }
                        Enqueued::NotQueued { command_error } => {
                            tracing::debug!(enrollment_id = %id, %command_error, "not queued");
                            retry.push(id);
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, devices = remaining.len(), attempt, "enqueue failed");
                retry = remaining.clone();
            }
        }
        if let Some(metrics) = &shared.metrics {
            let outcome = if retry.is_empty() && push_failed == 0 {
                "ok"
            } else if retry.len() == remaining.len() {
                "error"
            } else {
                "partial"
            };
            metrics.backend_request("nanomdm", "enqueue", outcome, seconds);
            metrics.nanomdm_commands(DECLARATIVE_MANAGEMENT, "queued", queued);
            metrics.nanomdm_commands(DECLARATIVE_MANAGEMENT, "not_queued", retry.len() as u64);
            metrics.nanomdm_pushes("ok", pushed);
            metrics.nanomdm_pushes("error", push_failed);
        }
        remaining = retry;
        if remaining.is_empty() {
            break;
        }
        if attempt < config.attempts {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(config.max_backoff);
        }
    }
    if !remaining.is_empty() {
        tracing::error!(
            devices = remaining.len(),
            "NanoMDM did not queue the sync command; these devices sync at their next check-in"
        );
    }
    not_pushed
}

/// Pushes `ids` (their command is queued) until each push succeeds or the attempts run out.
async fn push_until_pushed(shared: &Shared, ids: &[String]) {
    let config = &shared.config;
    let mut remaining = ids.to_vec();
    let mut wait = config.backoff;
    for attempt in 1..=config.attempts.max(1) {
        if attempt > 1 {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(config.max_backoff);
        }
        let started = Instant::now();
        let result = push(&shared.client, config, &remaining).await;
        let seconds = started.elapsed().as_secs_f64();
        let mut retry = Vec::new();
        match result {
            Ok(per_id) => {
                let mut pending = shared.pending();
                for (id, outcome) in per_id {
                    match outcome {
                        Pushed::Ok => pending.pushed(&id),
                        Pushed::Failed { .. } => retry.push(id),
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, devices = remaining.len(), attempt, "push failed");
                retry = remaining.clone();
            }
        }
        if let Some(metrics) = &shared.metrics {
            let outcome = if retry.is_empty() {
                "ok"
            } else if retry.len() == remaining.len() {
                "error"
            } else {
                "partial"
            };
            metrics.backend_request("nanomdm", "push", outcome, seconds);
            metrics.nanomdm_pushes("ok", (remaining.len() - retry.len()) as u64);
            metrics.nanomdm_pushes("error", retry.len() as u64);
        }
        remaining = retry;
        if remaining.is_empty() {
            return;
        }
    }
    tracing::warn!(
        devices = remaining.len(),
        "NanoMDM could not push; the queued command waits for the device's next poll"
    );
}

/// The MDM command that makes a device check in for declarative management.
pub fn command_plist(command_uuid: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>Command</key>
	<dict>
		<key>RequestType</key>
		<string>{DECLARATIVE_MANAGEMENT}</string>
	</dict>
	<key>CommandUUID</key>
	<string>{command_uuid}</string>
</dict>
</plist>
"#
    )
}

/// A unique, UUID-shaped command id (`salt` tells apart commands made in the same instant).
pub fn new_command_uuid(salt: &[String]) -> String {
    let nanos = jiff::Timestamp::now().as_nanosecond().to_be_bytes();
    let joined = salt.join(",");
    let hash = crate::declarations::content_hash(&[&nanos, joined.as_bytes()]);
    format!(
        "{}-{}-4{}-a{}-{}",
        &hash[0..8],
        &hash[8..12],
        &hash[13..16],
        &hash[17..20],
        &hash[20..32]
    )
    .to_uppercase()
}

/// Enrollment ids are UDIDs and `UDID:UUID`s; escape anything outside the unreserved set.
fn percent_encode(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_well_formed() {
        let uuid = new_command_uuid(&["A".into()]);
        assert_eq!(uuid.len(), 36);
        assert_ne!(uuid, new_command_uuid(&["B".into()]));
        let plist = command_plist(&uuid);
        assert!(plist.contains("<string>DeclarativeManagement</string>"));
        assert_eq!(percent_encode("UDID:user 1/x"), "UDID:user%201%2Fx");
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).expect("time")
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_pending_command_holds_back_the_next_one() {
        let mut pending = PendingCommands::default();
        let due = pending.due(&ids(&["A", "B"]), at(0), DAY);
        assert_eq!(due.enqueue, ids(&["A", "B"]));
        pending.queued("A", "U1", true, at(1));
        pending.queued("B", "U1", false, at(1));
        let due = pending.due(&ids(&["A", "B", "C"]), at(2), DAY);
        // A: queued and pushed, nothing to do; B: queued, push again; C: new.
        assert_eq!(
            due,
            Due {
                enqueue: ids(&["C"]),
                push: ids(&["B"]),
                pending: 1
            }
        );
        pending.pushed("B");
        assert_eq!(pending.due(&ids(&["B"]), at(3), DAY).pending, 1);
    }

    #[test]
    fn only_the_answer_to_the_pending_command_ends_it() {
        let mut pending = PendingCommands::default();
        pending.queued("A", "U1", true, at(0));
        assert!(!pending.acknowledged("A", "OTHER", "Acknowledged"));
        assert!(!pending.acknowledged("A", "U1", "NotNow"));
        assert!(!pending.acknowledged("A", "U1", "Idle"));
        assert!(!pending.acknowledged("B", "U1", "Acknowledged"));
        assert!(pending.acknowledged("A", "U1", "Acknowledged"));
        assert_eq!(pending.due(&ids(&["A"]), at(1), DAY).enqueue, ids(&["A"]));
        pending.queued("A", "U2", true, at(2));
        assert!(pending.acknowledged("A", "U2", "Error"));
    }

    #[test]
    fn a_check_in_ends_only_a_pushed_command() {
        let mut pending = PendingCommands::default();
        pending.queued("A", "U1", false, at(0));
        // Not pushed: the device reported on its own; the command is still in its queue.
        assert!(!pending.checked_in("A"));
        pending.pushed("A");
        assert!(pending.checked_in("A"));
        assert!(pending.by_device.is_empty());
    }

    #[test]
    fn a_pending_command_expires() {
        let mut pending = PendingCommands::default();
        pending.queued("A", "U1", true, at(0));
        assert_eq!(pending.due(&ids(&["A"]), at(86_399), DAY).pending, 1);
        assert_eq!(
            pending.due(&ids(&["A"]), at(86_400), DAY).enqueue,
            ids(&["A"])
        );
        assert!(pending.by_device.is_empty());
    }
}
