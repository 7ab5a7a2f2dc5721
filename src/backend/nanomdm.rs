//! Triggering device syncs through NanoMDM's API: after an assignment changes, enqueue the
//! `DeclarativeManagement` command (`PUT /v1/enqueue/{id,id,...}`, Basic auth), debounced per
//! device, batched, retried with backoff. Without NanoMDM configured, devices still get their
//! changes at their next check-in.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

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
    pub attempts: u32,
}

impl NanoMdmConfig {
    pub fn new(api_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        NanoMdmConfig {
            api_url: api_url.into(),
            api_key: api_key.into(),
            debounce: Duration::from_secs(2),
            batch: 100,
            attempts: 4,
        }
    }
}

/// Queues enrollment ids for a sync; a background task sends them.
#[derive(Clone, Debug)]
pub struct SyncTrigger {
    queue: mpsc::UnboundedSender<Vec<String>>,
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
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Self {
        let (queue, mut incoming) = mpsc::unbounded_channel::<Vec<String>>();
        tokio::spawn(async move {
            let mut pending: BTreeSet<String> = BTreeSet::new();
            while let Some(ids) = incoming.recv().await {
                pending.extend(ids);
                // Gather whatever else arrives within the debounce window: one command per
                // device however many times its set changed.
                let deadline = tokio::time::sleep(config.debounce);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        more = incoming.recv() => match more {
                            Some(ids) => pending.extend(ids),
                            None => break,
                        },
                        () = &mut deadline => break,
                    }
                }
                let ids: Vec<String> = std::mem::take(&mut pending).into_iter().collect();
                for chunk in ids.chunks(config.batch.max(1)) {
                    enqueue_with_retry(&client, &config, chunk, metrics.as_deref()).await;
                }
            }
        });
        SyncTrigger { queue }
    }

    pub fn notify(&self, enrollment_ids: &[String]) {
        if !enrollment_ids.is_empty() {
            let _ = self.queue.send(enrollment_ids.to_vec());
        }
    }
}

async fn enqueue_with_retry(
    client: &reqwest::Client,
    config: &NanoMdmConfig,
    ids: &[String],
    metrics: Option<&crate::metrics::Metrics>,
) {
    let mut wait = Duration::from_millis(500);
    for attempt in 1..=config.attempts.max(1) {
        let started = Instant::now();
        let result = enqueue(client, config, ids).await;
        if let Some(metrics) = metrics {
            let outcome = match &result {
                Ok(Enqueued::All) => "ok",
                Ok(Enqueued::Partly) => "partial",
                Err(_) => "error",
            };
            metrics.backend_request(
                "nanomdm",
                "enqueue",
                outcome,
                started.elapsed().as_secs_f64(),
            );
        }
        match result.map(|_| ()) {
            Ok(()) => return,
            Err(error) if attempt < config.attempts => {
                tracing::warn!(%error, attempt, devices = ids.len(), "enqueue failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(error) => {
                tracing::error!(%error, devices = ids.len(), "enqueue failed; devices sync at their next check-in");
            }
        }
    }
}

/// What NanoMDM did with an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    All,
    /// 207: some ids failed (unknown enrollment, push error); the rest were queued.
    Partly,
}

/// One `PUT /v1/enqueue/{ids}` with a `DeclarativeManagement` command.
pub async fn enqueue(
    client: &reqwest::Client,
    config: &NanoMdmConfig,
    ids: &[String],
) -> Result<Enqueued, String> {
    let path: Vec<String> = ids.iter().map(|id| percent_encode(id)).collect();
    let url = format!(
        "{}/v1/enqueue/{}",
        config.api_url.trim_end_matches('/'),
        path.join(",")
    );
    let response = client
        .put(&url)
        .basic_auth("nanomdm", Some(&config.api_key))
        .header(reqwest::header::CONTENT_TYPE, "application/x-apple-plist")
        .body(command_plist(&command_uuid(ids)))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match response.status().as_u16() {
        200 => Ok(Enqueued::All),
        207 => {
            let body = response.text().await.unwrap_or_default();
            tracing::warn!(%body, "enqueue partly failed");
            Ok(Enqueued::Partly)
        }
        status => Err(format!("{url} answered {status}")),
    }
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
		<string>DeclarativeManagement</string>
	</dict>
	<key>CommandUUID</key>
	<string>{command_uuid}</string>
</dict>
</plist>
"#
    )
}

/// A unique, UUID-shaped command id.
fn command_uuid(ids: &[String]) -> String {
    let nanos = jiff::Timestamp::now().as_nanosecond().to_be_bytes();
    let joined = ids.join(",");
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
        let uuid = command_uuid(&["A".into()]);
        assert_eq!(uuid.len(), 36);
        assert_ne!(uuid, command_uuid(&["B".into()]));
        let plist = command_plist(&uuid);
        assert!(plist.contains("<string>DeclarativeManagement</string>"));
        assert_eq!(percent_encode("UDID:user 1/x"), "UDID:user%201%2Fx");
    }
}
