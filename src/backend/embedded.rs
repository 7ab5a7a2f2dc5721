//! The embedded backend: the operator is itself the DDM server (behind NanoMDM's `-dm`
//! hand-off), storing what it serves in SQLite. Status reports are committed in batches by one
//! writer thread, and each is acknowledged only after its batch is durable.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use super::nanomdm::SyncTrigger;
use super::store::{Refusal, Store};
use super::{ApplyReport, Assignment, Backend, BackendError, DeviceRecord, Memory, MemoryChanges};
use crate::declarations::Declaration;
use crate::status::StatusReport;
use crate::status::limit::RateLimiter;

/// Most reports committed in one transaction.
const MAX_BATCH: usize = 1024;

type Job = (
    String,
    StatusReport,
    Vec<u8>,
    oneshot::Sender<Result<(), Refusal>>,
);

/// Commits status reports in batches on a thread of its own, and holds the per-enrollment
/// report rate limit.
#[derive(Clone)]
pub struct StatusWriter {
    jobs: mpsc::Sender<Job>,
    limiter: Arc<Mutex<RateLimiter>>,
    clock: crate::clock::Clock,
    /// Told of DDM check-ins: one after a pushed sync command means the device fetched it.
    sync: Option<SyncTrigger>,
}

impl StatusWriter {
    pub fn start(store: Arc<Store>) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        let clock = store.clock().clone();
        std::thread::Builder::new()
            .name("status-writer".into())
            .spawn(move || {
                // Reports queue up while a commit is fsyncing, so batches form under load.
                while let Ok(first) = queue.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let (reports, replies): (Vec<_>, Vec<_>) = batch
                        .into_iter()
                        .map(|(enrollment, report, raw, reply)| ((enrollment, report, raw), reply))
                        .unzip();
                    match store.record_reports(&reports) {
                        Ok(outcomes) => {
                            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                                let _ = reply.send(outcome);
                            }
                        }
                        Err(error) => {
                            let refusal = Refusal::Unavailable(error.to_string());
                            for reply in replies {
                                let _ = reply.send(Err(refusal.clone()));
                            }
                        }
                    }
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(%e, "cannot start the status writer"));
        StatusWriter {
            jobs,
            limiter: Arc::new(Mutex::new(RateLimiter::default())),
            clock,
            sync: None,
        }
    }

    /// The device checked in over DDM (its `tokens` request).
    pub fn checked_in(&self, enrollment: &str) {
        if let Some(sync) = &self.sync {
            sync.checked_in(enrollment);
        }
    }

    /// Takes one report from `enrollment`'s allowance (see `status::limit`), on the store's
    /// clock.
    pub fn admit(&self, enrollment: &str) -> Result<(), Refusal> {
        let now = self.clock.now();
        let mut limiter = self
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        limiter.take(enrollment, now).map_err(Refusal::RateLimited)
    }

    /// Returns once the report is durably stored, or why it was not.
    pub async fn record(
        &self,
        enrollment_id: String,
        report: StatusReport,
        raw: Vec<u8>,
    ) -> Result<(), Refusal> {
        let stopped = || Refusal::Unavailable("the status writer has stopped".into());
        let (reply, done) = oneshot::channel();
        self.jobs
            .send((enrollment_id, report, raw, reply))
            .map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }
}

/// The embedded backend.
#[derive(Clone)]
pub struct Embedded {
    pub store: Arc<Store>,
    pub reports: StatusWriter,
    sync: Option<SyncTrigger>,
}

impl Embedded {
    pub fn new(store: Arc<Store>, sync: Option<SyncTrigger>) -> Self {
        let mut reports = StatusWriter::start(store.clone());
        if let Some(sync) = &sync {
            // Sync commands go only to enrollments NanoMDM's webhook reported (this store's).
            sync.known_from(Arc::new(super::nanomdm::StoreEnrollments(store.clone())));
            reports.sync = Some(sync.clone());
        }
        Embedded {
            reports,
            store,
            sync,
        }
    }

    /// The sync trigger, if NanoMDM's API is configured: the webhook tells it which commands
    /// devices answered.
    pub fn sync(&self) -> Option<&SyncTrigger> {
        self.sync.as_ref()
    }

    fn notify(&self, report: &ApplyReport) {
        if let Some(sync) = &self.sync {
            sync.notify(&report.changed);
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BackendError::Other(format!("store task failed: {e}")))?
}

impl Backend for Embedded {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn apply<'a>(
        &'a self,
        declarations: &'a [Declaration],
        assignments: &'a [Assignment],
    ) -> BoxFuture<'a, Result<ApplyReport, BackendError>> {
        Box::pin(async move {
            let report = if tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread
            {
                // In place, on the borrowed sets: a copy of every device's set is what a first
                // pass on a full store would otherwise add to its peak.
                tokio::task::block_in_place(|| self.store.apply(declarations, assignments))?
            } else {
                let store = self.store.clone();
                let (declarations, assignments) = (declarations.to_vec(), assignments.to_vec());
                blocking(move || store.apply(&declarations, &assignments)).await?
            };
            self.notify(&report);
            Ok(report)
        })
    }

    fn withdraw<'a>(
        &'a self,
        enrollment_ids: &'a [String],
    ) -> BoxFuture<'a, Result<ApplyReport, BackendError>> {
        Box::pin(async move {
            let store = self.store.clone();
            let ids = enrollment_ids.to_vec();
            let report = blocking(move || store.withdraw(&ids)).await?;
            self.notify(&report);
            Ok(report)
        })
    }

    fn devices(&self) -> BoxFuture<'_, Result<Vec<DeviceRecord>, BackendError>> {
        Box::pin(async move {
            let store = self.store.clone();
            blocking(move || store.devices()).await
        })
    }

    fn memory(&self) -> BoxFuture<'_, Result<Arc<Memory>, BackendError>> {
        Box::pin(async move { Ok(self.store.memory()) })
    }

    fn mdm_devices(&self) -> BoxFuture<'_, Result<Vec<crate::mdm::MdmDevice>, BackendError>> {
        Box::pin(async move {
            let store = self.store.clone();
            blocking(move || store.mdm_devices()).await
        })
    }

    fn forget_unreported<'a>(
        &'a self,
        enrollment_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<String>, BackendError>> {
        Box::pin(async move {
            let store = self.store.clone();
            let ids = enrollment_ids.to_vec();
            blocking(move || store.forget_unreported(&ids)).await
        })
    }

    fn remember(&self, changes: MemoryChanges) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            if changes.is_empty() {
                return Ok(());
            }
            let store = self.store.clone();
            blocking(move || store.remember_owned(changes)).await
        })
    }
}
