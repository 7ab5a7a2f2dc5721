//! The command sender: once a minute, asks the scheduler ([`crate::mdm::commands::due`]) which
//! enrolled devices need `SecurityInfo` or `DeviceInformation`, enqueues those through NanoMDM's
//! API and remembers each as outstanding in the store; the answers come back through NanoMDM's
//! webhook (`mdm.Connect`), where [`answered`] ends them. Runs only when NanoMDM's API is
//! configured and its webhook is wired: without the webhook no answer would ever arrive.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::BackendError;
use super::nanomdm::{Enqueued, NanoMdmConfig, enqueue_command};
use super::store::Store;
use crate::clock::Clock;
use crate::mdm::commands::{
    CommandKind, CommandRecord, CommandState, Schedule, command_plist, command_uuid, due,
};
use crate::mdm::webhook::{Message, WebhookEvent};
use crate::metrics::Metrics;

/// How often the scheduler runs (its `per_minute` budget is per run).
pub const ROUND: Duration = Duration::from_secs(60);

/// Where commands are queued: NanoMDM's `/v1/enqueue` (a stand-in in tests).
pub trait CommandQueue: Send + Sync {
    /// Queues `command` for one enrollment.
    fn enqueue<'a>(&'a self, enrollment_id: &'a str, command: &'a [u8]) -> BoxFuture<'a, Enqueued>;
}

/// NanoMDM's API.
pub struct NanoMdmQueue {
    pub client: reqwest::Client,
    pub config: NanoMdmConfig,
}

impl CommandQueue for NanoMdmQueue {
    fn enqueue<'a>(&'a self, enrollment_id: &'a str, command: &'a [u8]) -> BoxFuture<'a, Enqueued> {
        Box::pin(async move {
            let ids = [enrollment_id.to_string()];
            match enqueue_command(&self.client, &self.config, &ids, command).await {
                Ok(mut answers) => answers
                    .remove(enrollment_id)
                    .unwrap_or(Enqueued::NotQueued {
                        command_error: "NanoMDM's reply did not name the enrollment".into(),
                    }),
                Err(error) => Enqueued::NotQueued {
                    command_error: error.to_string(),
                },
            }
        })
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Commands NanoMDM queued (pushed or not).
    pub queued: usize,
    /// Commands NanoMDM refused to queue (tried again after `ENQUEUE_RETRY`).
    pub not_queued: usize,
}

/// Sends the commands the scheduler says are due.
pub struct CommandSender {
    pub store: Arc<Store>,
    pub queue: Arc<dyn CommandQueue>,
    pub schedule: Schedule,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
}

impl CommandSender {
    /// One round: due commands out, each recorded as soon as NanoMDM answered for it (a restart
    /// mid-round resends none of those).
    pub async fn round(&self) -> Result<Round, BackendError> {
        let now = self.clock.now();
        let devices = self.store.mdm_devices()?;
        let records = self.store.mdm_commands()?;
        let mut round = Round::default();
        for wanted in due(&devices, &records, &self.schedule, now) {
            let uuid = command_uuid(wanted.kind, &wanted.enrollment_id, now);
            let plist = command_plist(wanted.kind, &uuid);
            let outcome = self.queue.enqueue(&wanted.enrollment_id, &plist).await;
            let (state, label) = match &outcome {
                Enqueued::Queued => (CommandState::Outstanding, "queued"),
                // In the queue: the device fetches it at its next poll (the DDM sync trigger's
                // push, or its own). Enqueuing again would queue it twice.
                Enqueued::QueuedNotPushed { push_error } => {
                    tracing::debug!(enrollment_id = %wanted.enrollment_id, %push_error, "command queued, not pushed");
                    (CommandState::Outstanding, "queued_not_pushed")
                }
                Enqueued::NotQueued { command_error } => {
                    tracing::warn!(enrollment_id = %wanted.enrollment_id, kind = wanted.kind.as_str(), %command_error, "NanoMDM did not queue the command");
                    (CommandState::NotQueued, "not_queued")
                }
            };
            self.metrics.mdm_command_sent(wanted.kind.as_str(), label);
            if state == CommandState::NotQueued {
                round.not_queued += 1;
            } else {
                round.queued += 1;
            }
            self.store.record_mdm_commands(&[CommandRecord {
                enrollment_id: wanted.enrollment_id,
                kind: wanted.kind,
                command_uuid: uuid,
                sent_at: now,
                state,
                answered_at: None,
            }])?;
        }
        Ok(round)
    }

    /// Runs a round every [`ROUND`] on the current Tokio runtime, the first at once.
    pub fn start(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(ROUND);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                match self.round().await {
                    Ok(round) if round.queued + round.not_queued > 0 => {
                        tracing::info!(
                            queued = round.queued,
                            not_queued = round.not_queued,
                            "MDM commands sent"
                        );
                    }
                    Ok(_) => {}
                    Err(error) => tracing::error!(%error, "MDM command round failed"),
                }
            }
        })
    }
}

/// The webhook's hook for an `mdm.Connect` event (its report read once by the webhook's parser,
/// which `MdmDevice::apply` also takes its facts from): ends the answered command in the store
/// (NotNow leaves it outstanding) and counts the answer, once: an answer the store already has
/// (NanoMDM's webhook event delivered again, a device sending its report again) changes
/// nothing and is not counted again. A report that cannot be read is counted and otherwise
/// ignored; reports for other commands and `Idle` are not the operator's.
pub fn answered(store: &Store, metrics: &Metrics, event: &WebhookEvent) {
    let Message::Acknowledge {
        command_uuid: Some(uuid),
        report,
        ..
    } = &event.message
    else {
        return;
    };
    if CommandKind::of_command_uuid(uuid).is_none() {
        return;
    }
    match report {
        Ok(None) => {}
        Ok(Some(report)) => {
            match store.record_mdm_command_answer(event.enrollment(), report, event.created_at) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(enrollment_id = event.enrollment(), command_uuid = %report.command_uuid, "an answer the store already has, or to a command no longer outstanding: not counted");
                    return;
                }
                Err(error) => {
                    tracing::error!(%error, enrollment_id = event.enrollment(), "cannot record a command answer");
                    return;
                }
            }
            metrics.mdm_command_result(report.kind.as_str(), report.status.as_str());
            for key in &report.ignored_keys {
                tracing::warn!(enrollment_id = event.enrollment(), %key, "a command report key of the wrong type is ignored");
                metrics.mdm_command_report_ignored("wrong_type");
            }
        }
        Err(error) => {
            tracing::warn!(enrollment_id = event.enrollment(), %error, "a command report is ignored");
            metrics.mdm_command_report_ignored(error.reason());
        }
    }
}

/// Starts the sender when NanoMDM's API is configured and its webhook can bring answers back:
/// not with `--nanomdm-enqueue-unknown` (the sign of a NanoMDM without `-webhook-url`), nor when
/// the webhook refuses every event for want of its key.
pub fn start_if_wired(
    config: &crate::operator::RunConfig,
    webhook: &crate::http::webhook::WebhookAuth,
    store: &Arc<Store>,
    client: reqwest::Client,
    metrics: &Arc<Metrics>,
) -> Option<tokio::task::JoinHandle<()>> {
    let nanomdm = config.nanomdm.as_ref()?;
    if !nanomdm.enqueue_unknown && *webhook == crate::http::webhook::WebhookAuth::NoKey {
        // The sync trigger sends only to enrollments the webhook reported, and it reports none.
        tracing::warn!(
            "no device will get a DeclarativeManagement sync command: NanoMDM's webhook refuses every event without --webhook-hmac-key-file, and without --nanomdm-enqueue-unknown only enrollments it reported get one"
        );
    }
    if nanomdm.enqueue_unknown || *webhook == crate::http::webhook::WebhookAuth::NoKey {
        tracing::info!(
            "SecurityInfo/DeviceInformation commands are off: their answers come only through NanoMDM's webhook"
        );
        return None;
    }
    let sender = CommandSender {
        store: store.clone(),
        queue: Arc::new(NanoMdmQueue {
            client,
            config: nanomdm.clone(),
        }),
        schedule: config.mdm_commands,
        clock: config.clock.clone(),
        metrics: metrics.clone(),
    };
    Some(sender.start())
}
