//! MDM backends: where resolved declarations go and where device state comes from. One trait;
//! the embedded backend (the operator as the DDM server, SQLite store) is the first
//! implementation, NanoHUB/KMFDDM, Fleet and Jamf can follow the same shape.

pub mod embedded;
pub mod nanomdm;
pub mod nanomdm_commands;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::declarations::Declaration;
use crate::resolve::{Ledger, RingDeadline, RingKey};

/// What one device should hold: its whole declaration set, by identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub enrollment_id: String,
    /// Identifiers of declarations passed in the same call (or already stored).
    pub identifiers: Vec<String>,
}

/// What a write changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Declarations newly stored (an identifier whose server token is unchanged is skipped).
    pub declarations_written: usize,
    /// Distinct sets newly stored.
    pub sets_written: usize,
    /// Enrollments whose set changed: they need a sync.
    pub changed: Vec<String>,
}

/// A backend failure, with a fixed reason for status conditions and metrics.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("store: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("an assignment names declaration {0:?}, which was neither passed nor stored")]
    UnknownDeclaration(String),
    #[error("the backend did not answer in time")]
    Timeout,
    /// A write from a replica that no longer leads (or whose epoch a newer leader replaced).
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("{0}")]
    Other(String),
}

impl BackendError {
    pub fn reason(&self) -> &'static str {
        match self {
            BackendError::Store(_) => "StoreError",
            BackendError::UnknownDeclaration(_) => "UnknownDeclaration",
            BackendError::Timeout => "BackendTimeout",
            BackendError::Fenced(_) => "Fenced",
            BackendError::Other(_) => "BackendError",
        }
    }
}

/// What the backend knows about one enrollment.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRecord {
    pub enrollment_id: String,
    /// What the operator reads of the device's merged status (its bounded summary: the store
    /// never loads whole merged states to list devices).
    pub status: crate::status::DeviceStatus,
    /// Identifiers assigned to it now.
    pub assigned: Vec<String>,
    /// When it last reported, if ever.
    pub last_report: Option<jiff::Timestamp>,
    /// When its set last changed.
    pub assigned_at: Option<jiff::Timestamp>,
}

/// A device whose set is frozen because a resource that applied to it was deleted with
/// `deletionPolicy: Orphan`: it keeps the declarations it has until a resource that did not
/// apply to it then applies to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// `Kind namespace/name` of the deleted resource.
    pub by: String,
    /// The resources (`Kind namespace/name`) still applying to the device since; one outside
    /// this list unfreezes it.
    pub sources: BTreeSet<String>,
    pub since: jiff::Timestamp,
}

/// What the resolver pass remembers between passes and restarts, kept as durably as the sets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memory {
    /// The rollout ledger: per enrollment, the release each policy is taking, or took, it to
    /// and the deadline it was handed; per ring of a rollout, the deadline it was handed.
    pub ledger: Ledger,
    /// Ledger rows that could not be read when the store was opened (each such device is
    /// handed out anew; counted in metrics).
    pub corrupt_rows: u64,
    /// Frozen enrollments.
    pub orphans: HashMap<String, Orphan>,
}

/// Changes to `Memory`, per enrollment: its whole new value (an empty map, `None`: forget).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryChanges {
    pub rollouts: BTreeMap<String, crate::resolve::DeviceRollouts>,
    /// Ring deadlines: the new value, or `None` to forget.
    pub rings: BTreeMap<RingKey, Option<RingDeadline>>,
    pub orphans: BTreeMap<String, Option<Orphan>>,
}

impl MemoryChanges {
    pub fn is_empty(&self) -> bool {
        self.rollouts.is_empty() && self.rings.is_empty() && self.orphans.is_empty()
    }
}

/// Where declarations are written and device state is read.
pub trait Backend: Send + Sync {
    /// A short name for metrics and logs.
    fn name(&self) -> &'static str;

    /// Stores the declarations (content-addressed) and replaces each listed enrollment's set
    /// with exactly its identifiers, all at once: a failure changes nothing.
    fn apply<'a>(
        &'a self,
        declarations: &'a [Declaration],
        assignments: &'a [Assignment],
    ) -> BoxFuture<'a, Result<ApplyReport, BackendError>>;

    /// Removes every declaration from these enrollments' sets.
    fn withdraw<'a>(
        &'a self,
        enrollment_ids: &'a [String],
    ) -> BoxFuture<'a, Result<ApplyReport, BackendError>>;

    /// Every enrollment the backend knows, with its reported state.
    fn devices(&self) -> BoxFuture<'_, Result<Vec<DeviceRecord>, BackendError>>;

    /// What the resolver remembered.
    fn memory(&self) -> BoxFuture<'_, Result<Arc<Memory>, BackendError>>;

    /// Stores changes to what the resolver remembers, all at once: a failure changes nothing.
    /// Owned: a backend keeping a copy in memory takes them over rather than copying them.
    fn remember(&self, changes: MemoryChanges) -> BoxFuture<'_, Result<(), BackendError>>;

    /// What the MDM (NanoMDM's webhook) told about devices, checked-out ones included.
    fn mdm_devices(&self) -> BoxFuture<'_, Result<Vec<crate::mdm::MdmDevice>, BackendError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Forgets these enrollments if they never reported (their set goes; one that reported
    /// meanwhile stays). Returns those forgotten.
    fn forget_unreported<'a>(
        &'a self,
        enrollment_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<String>, BackendError>> {
        let _ = enrollment_ids;
        Box::pin(async { Ok(Vec::new()) })
    }
}
