//! The embedded store: SQLite in WAL mode with versioned migrations. Declarations are stored
//! once by identifier; sets of them are content-addressed (a set's id is the hash of its members
//! and their server tokens, and doubles as the DDM `DeclarationsToken`); each enrollment points
//! at one set. Retargeting every device therefore writes the few new declarations and sets plus
//! one row per changed enrollment. Reads for device check-ins are served from an in-memory copy
//! that every write updates after its transaction commits.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value, json};

use super::{ApplyReport, Assignment, BackendError, DeviceRecord, Memory, MemoryChanges, Orphan};
use crate::declarations::{Declaration, content_hash};
use crate::status::{
    DeviceStatus, HISTORY_BYTES_PER_ENROLLMENT, HISTORY_BYTES_TOTAL, HISTORY_REPORTS,
    MAX_STATE_BYTES, StatusReport, merge,
};

mod commands;
mod device_view;
mod fence;
mod last_valid;
pub mod mdm;

/// Raw reports kept per enrollment (the newest ones).
pub const REPORT_HISTORY: i64 = HISTORY_REPORTS as i64;

/// Why one status report was not stored. Each report of a batch stands alone: a refused one
/// leaves the others of its batch stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the device's merged status would be {0} bytes; at most {MAX_STATE_BYTES} are kept per device (send a FullReport)"
    )]
    StateTooLarge(usize),
    #[error("too many status reports from this enrollment; retry in {0} s")]
    RateLimited(u64),
    #[error("cannot store the report now: {0}")]
    Unavailable(String),
}

impl Refusal {
    /// The fixed reason, for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::StateTooLarge(_) => "state_too_large",
            Refusal::RateLimited(_) => "rate_limited",
            Refusal::Unavailable(_) => "unavailable",
        }
    }
}

const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE declarations (
        identifier TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        server_token TEXT NOT NULL,
        body BLOB NOT NULL
    );
    CREATE TABLE sets (
        set_id TEXT PRIMARY KEY,
        items BLOB NOT NULL
    );
    CREATE TABLE set_members (
        set_id TEXT NOT NULL REFERENCES sets(set_id),
        identifier TEXT NOT NULL REFERENCES declarations(identifier),
        PRIMARY KEY (set_id, identifier)
    ) WITHOUT ROWID;
    CREATE TABLE enrollments (
        enrollment_id TEXT PRIMARY KEY,
        set_id TEXT REFERENCES sets(set_id),
        assigned_at INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE device_state (
        enrollment_id TEXT PRIMARY KEY,
        items BLOB NOT NULL,
        errors BLOB NOT NULL,
        reports INTEGER NOT NULL,
        last_report INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE status_reports (
        enrollment_id TEXT NOT NULL,
        slot INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (enrollment_id, slot)
    ) WITHOUT ROWID;",
    // 2: what the resolver remembers between passes: the release each policy is taking, or
    // took, a device to; devices frozen by a resource deleted with deletionPolicy Orphan.
    "CREATE TABLE rollouts (
        enrollment_id TEXT NOT NULL,
        policy TEXT NOT NULL,
        version TEXT NOT NULL,
        deadline TEXT NOT NULL,
        PRIMARY KEY (enrollment_id, policy)
    ) WITHOUT ROWID;
    CREATE TABLE orphans (
        enrollment_id TEXT PRIMARY KEY,
        orphaned_by TEXT NOT NULL,
        sources TEXT NOT NULL,
        since INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 3: the rollout ledger: under which intent and when each device's deadline was handed
    // out (rows from before count as handed under the current intent), and each ring's.
    "ALTER TABLE rollouts ADD COLUMN intent TEXT NOT NULL DEFAULT '';
    ALTER TABLE rollouts ADD COLUMN handed_at INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE ring_deadlines (
        policy TEXT NOT NULL,
        ring TEXT NOT NULL,
        platform TEXT NOT NULL,
        version TEXT NOT NULL,
        deadline TEXT NOT NULL,
        intent TEXT NOT NULL,
        handed_at INTEGER NOT NULL,
        PRIMARY KEY (policy, ring, platform, version)
    ) WITHOUT ROWID;",
    // 4: the last valid version of each resource (an edit into an invalid spec keeps it in
    // force, across restarts), and the leadership epoch that fences a deposed leader's writes.
    "CREATE TABLE last_valid_objects (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        uid TEXT NOT NULL,
        generation INTEGER,
        object TEXT NOT NULL,
        stored_at INTEGER NOT NULL,
        PRIMARY KEY (kind, key)
    ) WITHOUT ROWID;
    CREATE TABLE leadership (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        epoch INTEGER NOT NULL,
        holder TEXT NOT NULL,
        since INTEGER NOT NULL
    );",
    // 5: bounded per device (issue 12). Each device's summary — what the resolver reads — in a
    // table of its own, so a restart never reads merged states (filled in from them after this
    // migration); history sizes, with an index to drop the oldest reports first, and their
    // total. The enrollments that GETs of unknown ids created (a bootstrap-shaped set — status
    // subscriptions and activations only —, no report, nothing remembered) are removed; a
    // device of the inventory among them is written its set again by the next pass.
    "CREATE TABLE device_summary (
        enrollment_id TEXT PRIMARY KEY,
        summary BLOB NOT NULL,
        last_report INTEGER NOT NULL
    ) WITHOUT ROWID;
    ALTER TABLE status_reports ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
    UPDATE status_reports SET bytes = length(body);
    CREATE INDEX status_reports_by_age ON status_reports (received_at, enrollment_id, slot, bytes);
    CREATE TABLE store_totals (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        history_bytes INTEGER NOT NULL
    );
    INSERT INTO store_totals (id, history_bytes) SELECT 1, COALESCE(SUM(bytes), 0) FROM status_reports;
    DELETE FROM enrollments
     WHERE NOT EXISTS (SELECT 1 FROM device_state d WHERE d.enrollment_id = enrollments.enrollment_id)
       AND NOT EXISTS (SELECT 1 FROM rollouts r WHERE r.enrollment_id = enrollments.enrollment_id)
       AND NOT EXISTS (SELECT 1 FROM orphans o WHERE o.enrollment_id = enrollments.enrollment_id)
       AND set_id IN (
           SELECT s.set_id FROM sets s
            WHERE EXISTS (SELECT 1 FROM set_members m WHERE m.set_id = s.set_id)
              AND NOT EXISTS (
                  SELECT 1 FROM set_members m JOIN declarations d ON d.identifier = m.identifier
                   WHERE m.set_id = s.set_id
                     AND d.type NOT IN ('com.apple.configuration.management.status-subscriptions',
                                        'com.apple.activation.simple')));",
    // 6: what the MDM (NanoMDM's webhook) told about each device-channel enrollment, the newest
    // event applied to it, and the SOFTWARE_UPDATE_DEVICE_ID the enrollment gate saw (store/mdm.rs).
    "CREATE TABLE mdm_devices (
        enrollment_id TEXT PRIMARY KEY,
        device BLOB,
        machine_info BLOB,
        last_event_id TEXT,
        last_event_at TEXT,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 7: the MDM commands last sent to each enrollment, per kind (store/commands.rs).
    commands::MIGRATION,
];

/// What a check-in reads: one set, shared by every enrollment assigned to it.
#[derive(Debug)]
pub struct ServedSet {
    /// The `DeclarationsToken`.
    pub token: String,
    /// The `declaration-items` body, ready to send.
    pub items: Vec<u8>,
    pub members: BTreeSet<String>,
}

/// A stored declaration, ready to send.
#[derive(Debug)]
pub struct ServedDeclaration {
    /// `activation`, `configuration`, `asset` or `management`.
    pub kind: &'static str,
    pub server_token: String,
    pub body: Vec<u8>,
}

/// The bootstrap set as served to enrollments the operator does not know: from memory, never
/// stored.
#[derive(Debug)]
pub struct Bootstrap {
    pub set: Arc<ServedSet>,
    pub declarations: HashMap<String, Arc<ServedDeclaration>>,
}

#[derive(Default)]
struct Cache {
    declarations: HashMap<String, Arc<ServedDeclaration>>,
    sets: HashMap<String, Arc<ServedSet>>,
    enrollments: HashMap<String, (Arc<ServedSet>, Timestamp)>,
}

/// The SQLite store with its read cache.
pub struct Store {
    connection: Mutex<Connection>,
    cache: RwLock<Cache>,
    /// What the resolver remembers, as stored.
    memory: RwLock<Arc<Memory>>,
    /// Stamps assignments and reports (a virtual one in simulations).
    clock: crate::clock::Clock,
    /// Whose writes of sets and of what the resolver remembers are accepted (Kubernetes mode:
    /// the leader's epoch only).
    fence: RwLock<fence::Fence>,
    /// The bootstrap set last built, to serve unknown enrollments without building it per request.
    bootstrap: RwLock<Option<Arc<Bootstrap>>>,
    /// Bytes of raw reports kept in all ([`HISTORY_BYTES_TOTAL`] unless a test sets less).
    history_budget: i64,
}

/// The manifest kind of a declaration type, as the `declaration/{kind}/{id}` path names it.
pub fn kind_of(declaration_type: &str) -> &'static str {
    if declaration_type.starts_with("com.apple.activation.") {
        "activation"
    } else if declaration_type.starts_with("com.apple.asset.") {
        "asset"
    } else if declaration_type.starts_with("com.apple.management.") {
        "management"
    } else {
        "configuration"
    }
}

fn timestamp(seconds: i64) -> Timestamp {
    Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The lock was poisoned by a panic elsewhere; the data under it is still consistent because
/// every write is one transaction.
fn relock<T>(result: Result<T, std::sync::PoisonError<T>>) -> T {
    result.unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Store {
    /// Opens (or creates) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, BackendError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| BackendError::Other(format!("{}: {e}", parent.display())))?;
        }
        Self::with_connection(Connection::open(path)?)
    }

    /// A store that lives only in memory (tests, `plan`-like dry runs).
    pub fn in_memory() -> Result<Self, BackendError> {
        Self::with_connection(Connection::open_in_memory()?)
    }

    fn with_connection(connection: Connection) -> Result<Self, BackendError> {
        // WAL keeps readers off the writer's back; FULL makes each commit durable before it
        // returns, which is what "answered 200 only once stored" needs.
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&connection)?;
        let store = Store {
            connection: Mutex::new(connection),
            cache: RwLock::new(Cache::default()),
            memory: RwLock::default(),
            clock: crate::clock::Clock::system(),
            fence: RwLock::new(fence::Fence::Unfenced),
            bootstrap: RwLock::default(),
            history_budget: HISTORY_BYTES_TOTAL,
        };
        store.summarise_unsummarised()?;
        store.load_cache()?;
        store.load_memory()?;
        Ok(store)
    }

    /// The clock that stamps assignments and reports from now on.
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Keeps at most `bytes` of raw reports in all (tests and benchmarks fill a smaller budget).
    pub fn with_history_budget(mut self, bytes: i64) -> Self {
        self.history_budget = bytes.max(0);
        self
    }

    /// The clock stamping assignments and reports (the report rate limit reads it too).
    pub fn clock(&self) -> &crate::clock::Clock {
        &self.clock
    }

    /// Writes the summary of every merged state that has none (the states of a store from before
    /// summaries), one row at a time so memory stays bounded by one state.
    fn summarise_unsummarised(&self) -> Result<(), BackendError> {
        let mut connection = relock(self.connection.lock());
        let transaction = connection.transaction()?;
        let mut written = 0usize;
        {
            let mut select = transaction.prepare(
                "SELECT d.enrollment_id, d.items, d.last_report FROM device_state d
                  WHERE NOT EXISTS (SELECT 1 FROM device_summary s WHERE s.enrollment_id = d.enrollment_id)",
            )?;
            let mut insert = transaction.prepare(
                "INSERT INTO device_summary (enrollment_id, summary, last_report) VALUES (?1, ?2, ?3)",
            )?;
            let mut rows = select.query([])?;
            while let Some(row) = rows.next()? {
                let enrollment: String = row.get(0)?;
                // Text or blob alike; unreadable JSON summarises as "reported nothing".
                let items: Map<String, Value> = row
                    .get_ref(1)?
                    .as_bytes()
                    .ok()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or_default();
                let last_report: i64 = row.get(2)?;
                insert.execute(params![enrollment, summary_bytes(&items), last_report])?;
                written += 1;
            }
        }
        transaction.commit()?;
        if written > 0 {
            tracing::info!(devices = written, "summarised stored device states");
        }
        Ok(())
    }

    fn load_cache(&self) -> Result<(), BackendError> {
        let connection = relock(self.connection.lock());
        let mut cache = Cache::default();
        let mut statement =
            connection.prepare("SELECT identifier, type, server_token, body FROM declarations")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Vec<u8>>(3)?,
            ))
        })?;
        for row in rows {
            let (identifier, declaration_type, server_token, body) = row?;
            cache.declarations.insert(
                identifier,
                Arc::new(ServedDeclaration {
                    kind: kind_of(&declaration_type),
                    server_token,
                    body,
                }),
            );
        }
        let mut statement = connection.prepare("SELECT set_id, items FROM sets")?;
        let sets: Vec<(String, Vec<u8>)> = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut members: HashMap<String, BTreeSet<String>> = HashMap::new();
        let mut statement = connection.prepare("SELECT set_id, identifier FROM set_members")?;
        for row in statement.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })? {
            let (set_id, identifier) = row?;
            members.entry(set_id).or_default().insert(identifier);
        }
        for (set_id, items) in sets {
            let set = ServedSet {
                token: set_id.clone(),
                items,
                members: members.remove(&set_id).unwrap_or_default(),
            };
            cache.sets.insert(set_id, Arc::new(set));
        }
        let mut statement = connection.prepare(
            "SELECT enrollment_id, set_id, assigned_at FROM enrollments WHERE set_id IS NOT NULL",
        )?;
        for row in statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })? {
            let (enrollment, set_id, at) = row?;
            if let Some(set) = cache.sets.get(&set_id) {
                cache
                    .enrollments
                    .insert(enrollment, (set.clone(), timestamp(at)));
            }
        }
        drop(statement);
        *relock(self.cache.write()) = cache;
        Ok(())
    }

    fn load_memory(&self) -> Result<(), BackendError> {
        let connection = relock(self.connection.lock());
        let mut memory = Memory::default();
        let mut statement = connection.prepare(
            "SELECT enrollment_id, policy, version, deadline, intent, handed_at FROM rollouts",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, i64>(5)?,
            ))
        })?;
        for row in rows {
            let (enrollment, policy, version, deadline, intent, handed_at) = row?;
            // A row this version cannot read is not fatal: that device is handed out anew.
            let Ok(deadline) = deadline.parse::<jiff::civil::DateTime>() else {
                tracing::error!(enrollment_id = %enrollment, %policy, %deadline, "unreadable ledger row (deadline); the device is handed out anew");
                memory.corrupt_rows += 1;
                continue;
            };
            memory.ledger.devices.entry(enrollment).or_default().insert(
                policy,
                crate::resolve::Rollout {
                    version,
                    deadline,
                    intent,
                    handed_at: timestamp(handed_at),
                },
            );
        }
        let mut statement = connection.prepare(
            "SELECT policy, ring, platform, version, deadline, intent, handed_at FROM ring_deadlines",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                (
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                ),
                row.get::<_, String>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, i64>(6)?,
            ))
        })?;
        for row in rows {
            let ((policy, ring, platform, version), deadline, intent, handed_at) = row?;
            let platform = platform.parse::<crate::catalog::Platform>();
            let (Ok(platform), Ok(deadline)) =
                (platform, deadline.parse::<jiff::civil::DateTime>())
            else {
                tracing::error!(%policy, %ring, %version, %deadline, "unreadable ledger row (ring); the ring is handed out anew");
                memory.corrupt_rows += 1;
                continue;
            };
            memory.ledger.rings.insert(
                crate::resolve::RingKey {
                    policy,
                    ring,
                    platform,
                    version,
                },
                crate::resolve::RingDeadline {
                    deadline,
                    intent,
                    handed_at: timestamp(handed_at),
                },
            );
        }
        let mut statement =
            connection.prepare("SELECT enrollment_id, orphaned_by, sources, since FROM orphans")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (enrollment, by, sources, since) = row?;
            // Unreadable sources: an empty list keeps the device frozen until anything applies.
            let sources = serde_json::from_str(&sources).unwrap_or_default();
            memory.orphans.insert(
                enrollment,
                Orphan {
                    by,
                    sources,
                    since: timestamp(since),
                },
            );
        }
        drop(statement);
        *relock(self.memory.write()) = Arc::new(memory);
        Ok(())
    }

    /// What the resolver remembered (see `Memory`).
    pub fn memory(&self) -> Arc<Memory> {
        relock(self.memory.read()).clone()
    }

    /// Stores changes to what the resolver remembers, in one transaction.
    pub fn remember(&self, changes: &MemoryChanges) -> Result<(), BackendError> {
        self.remember_owned(changes.clone())
    }

    /// `remember`, moving the changes into the in-memory copy rather than copying them (a first
    /// pass on a full store changes every device's entry: the copy would double them).
    pub fn remember_owned(&self, changes: MemoryChanges) -> Result<(), BackendError> {
        if changes.is_empty() {
            return Ok(());
        }
        {
            let mut connection = relock(self.connection.lock());
            let transaction = connection.transaction()?;
            self.check_fence(&transaction)?;
            {
                let mut forget =
                    transaction.prepare_cached("DELETE FROM rollouts WHERE enrollment_id = ?1")?;
                let mut insert = transaction.prepare_cached(
                    "INSERT INTO rollouts (enrollment_id, policy, version, deadline, intent, handed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for (enrollment, rollouts) in &changes.rollouts {
                    forget.execute(params![enrollment])?;
                    for (policy, rollout) in rollouts {
                        insert.execute(params![
                            enrollment,
                            policy,
                            rollout.version,
                            crate::resolve::ledger::format_local(rollout.deadline),
                            rollout.intent,
                            rollout.handed_at.as_second()
                        ])?;
                    }
                }
                let mut forget_ring = transaction.prepare_cached(
                    "DELETE FROM ring_deadlines WHERE policy = ?1 AND ring = ?2 AND platform = ?3 AND version = ?4",
                )?;
                let mut insert_ring = transaction.prepare_cached(
                    "INSERT OR REPLACE INTO ring_deadlines (policy, ring, platform, version, deadline, intent, handed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for (key, ring) in &changes.rings {
                    let platform = key.platform.to_string();
                    match ring {
                        Some(ring) => {
                            insert_ring.execute(params![
                                key.policy,
                                key.ring,
                                platform,
                                key.version,
                                crate::resolve::ledger::format_local(ring.deadline),
                                ring.intent,
                                ring.handed_at.as_second()
                            ])?;
                        }
                        None => {
                            forget_ring.execute(params![
                                key.policy,
                                key.ring,
                                platform,
                                key.version
                            ])?;
                        }
                    }
                }
                let mut unfreeze =
                    transaction.prepare_cached("DELETE FROM orphans WHERE enrollment_id = ?1")?;
                let mut freeze = transaction.prepare_cached(
                    "INSERT OR REPLACE INTO orphans (enrollment_id, orphaned_by, sources, since) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (enrollment, orphan) in &changes.orphans {
                    match orphan {
                        Some(orphan) => {
                            let sources = serde_json::to_string(&orphan.sources)
                                .map_err(|e| BackendError::Other(e.to_string()))?;
                            freeze.execute(params![
                                enrollment,
                                orphan.by,
                                sources,
                                orphan.since.as_second()
                            ])?;
                        }
                        None => {
                            unfreeze.execute(params![enrollment])?;
                        }
                    }
                }
            }
            transaction.commit()?;
        }
        let mut memory = relock(self.memory.write());
        let memory = Arc::make_mut(&mut memory);
        for (enrollment, rollouts) in changes.rollouts {
            if rollouts.is_empty() {
                memory.ledger.devices.remove(&enrollment);
            } else {
                memory.ledger.devices.insert(enrollment, rollouts);
            }
        }
        for (key, ring) in changes.rings {
            match ring {
                Some(ring) => {
                    memory.ledger.rings.insert(key, ring);
                }
                None => {
                    memory.ledger.rings.remove(&key);
                }
            }
        }
        for (enrollment, orphan) in changes.orphans {
            match orphan {
                Some(orphan) => {
                    memory.orphans.insert(enrollment, orphan);
                }
                None => {
                    memory.orphans.remove(&enrollment);
                }
            }
        }
        Ok(())
    }

    /// Stores declarations and replaces the listed enrollments' sets, in one transaction.
    pub fn apply(
        &self,
        declarations: &[Declaration],
        assignments: &[Assignment],
    ) -> Result<ApplyReport, BackendError> {
        let mut report = ApplyReport::default();
        let mut new_declarations: Vec<(String, Arc<ServedDeclaration>)> = Vec::new();
        let mut new_sets: HashMap<String, Arc<ServedSet>> = HashMap::new();
        let mut changed: Vec<(String, Arc<ServedSet>)> = Vec::new();
        {
            let cache = relock(self.cache.read());
            let mut known: HashMap<&str, &str> = cache
                .declarations
                .iter()
                .map(|(id, d)| (id.as_str(), d.server_token.as_str()))
                .collect();
            let passed: HashMap<&str, &Declaration> = declarations
                .iter()
                .map(|d| (d.identifier.as_str(), d))
                .collect();
            for declaration in declarations {
                if known.get(declaration.identifier.as_str())
                    != Some(&declaration.server_token.as_str())
                {
                    let body = serde_json::to_vec(declaration)
                        .map_err(|e| BackendError::Other(e.to_string()))?;
                    new_declarations.push((
                        declaration.identifier.clone(),
                        Arc::new(ServedDeclaration {
                            kind: kind_of(declaration.declaration_type),
                            server_token: declaration.server_token.clone(),
                            body,
                        }),
                    ));
                    known.insert(&declaration.identifier, &declaration.server_token);
                }
            }
            for assignment in assignments {
                let mut members: Vec<(&str, &str, &'static str)> = Vec::new();
                for identifier in &assignment.identifiers {
                    let (token, kind) = match passed.get(identifier.as_str()) {
                        Some(d) => (d.server_token.as_str(), kind_of(d.declaration_type)),
                        None => match cache.declarations.get(identifier) {
                            Some(d) => (d.server_token.as_str(), d.kind),
                            None => {
                                return Err(BackendError::UnknownDeclaration(identifier.clone()));
                            }
                        },
                    };
                    members.push((identifier, token, kind));
                }
                members.sort_unstable();
                members.dedup();
                let set = served_set(&members);
                let set = match cache
                    .sets
                    .get(&set.token)
                    .or_else(|| new_sets.get(&set.token))
                {
                    Some(existing) => existing.clone(),
                    None => {
                        let set = Arc::new(set);
                        new_sets.insert(set.token.clone(), set.clone());
                        set
                    }
                };
                let current = cache
                    .enrollments
                    .get(&assignment.enrollment_id)
                    .map(|(s, _)| &s.token);
                if current != Some(&set.token) {
                    changed.push((assignment.enrollment_id.clone(), set));
                }
            }
        }
        let now = self.clock.now().as_second();
        {
            let mut connection = relock(self.connection.lock());
            let transaction = connection.transaction()?;
            self.check_fence(&transaction)?;
            {
                let mut insert = transaction.prepare_cached(
                    "INSERT INTO declarations (identifier, type, server_token, body) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(identifier) DO UPDATE SET type = ?2, server_token = ?3, body = ?4",
                )?;
                let types: HashMap<&str, &str> = declarations
                    .iter()
                    .map(|d| (d.identifier.as_str(), d.declaration_type))
                    .collect();
                for (identifier, served) in &new_declarations {
                    let declaration_type =
                        types.get(identifier.as_str()).copied().unwrap_or_default();
                    insert.execute(params![
                        identifier,
                        declaration_type,
                        served.server_token,
                        served.body
                    ])?;
                }
                let mut insert_set = transaction
                    .prepare_cached("INSERT OR IGNORE INTO sets (set_id, items) VALUES (?1, ?2)")?;
                let mut insert_member = transaction.prepare_cached(
                    "INSERT OR IGNORE INTO set_members (set_id, identifier) VALUES (?1, ?2)",
                )?;
                for set in new_sets.values() {
                    insert_set.execute(params![set.token, set.items])?;
                    for member in &set.members {
                        insert_member.execute(params![set.token, member])?;
                    }
                }
                let mut assign = transaction.prepare_cached(
                    "INSERT INTO enrollments (enrollment_id, set_id, assigned_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(enrollment_id) DO UPDATE SET set_id = ?2, assigned_at = ?3",
                )?;
                for (enrollment, set) in &changed {
                    assign.execute(params![enrollment, set.token, now])?;
                }
            }
            transaction.commit()?;
        }
        let mut cache = relock(self.cache.write());
        report.declarations_written = new_declarations.len();
        report.sets_written = new_sets.len();
        for (identifier, served) in new_declarations {
            cache.declarations.insert(identifier, served);
        }
        cache.sets.extend(new_sets);
        for (enrollment, set) in changed {
            report.changed.push(enrollment.clone());
            cache.enrollments.insert(enrollment, (set, timestamp(now)));
        }
        Ok(report)
    }

    /// Gives these enrollments an empty set (the device then removes what it had).
    pub fn withdraw(&self, enrollment_ids: &[String]) -> Result<ApplyReport, BackendError> {
        let assignments: Vec<Assignment> = enrollment_ids
            .iter()
            .map(|id| Assignment {
                enrollment_id: id.clone(),
                identifiers: Vec::new(),
            })
            .collect();
        self.apply(&[], &assignments)
    }

    /// The set an enrollment is assigned, if any.
    pub fn served_set(&self, enrollment_id: &str) -> Option<Arc<ServedSet>> {
        relock(self.cache.read())
            .enrollments
            .get(enrollment_id)
            .map(|(s, _)| s.clone())
    }

    /// A declaration, only if it is in the enrollment's set and of that kind.
    pub fn served_declaration(
        &self,
        enrollment_id: &str,
        kind: &str,
        identifier: &str,
    ) -> Option<Arc<ServedDeclaration>> {
        let cache = relock(self.cache.read());
        let (set, _) = cache.enrollments.get(enrollment_id)?;
        if !set.members.contains(identifier) {
            return None;
        }
        cache
            .declarations
            .get(identifier)
            .filter(|d| d.kind == kind)
            .cloned()
    }

    /// The bootstrap set built from `declarations`, for enrollments that have no set of their
    /// own (built once, and again only if the declarations change).
    pub fn bootstrap(&self, declarations: &[Declaration]) -> Option<Arc<Bootstrap>> {
        if declarations.is_empty() {
            return None;
        }
        let same = |b: &Bootstrap| {
            b.declarations.len() == declarations.len()
                && declarations.iter().all(|d| {
                    b.declarations
                        .get(&d.identifier)
                        .is_some_and(|s| s.server_token == d.server_token)
                })
        };
        if let Some(built) = relock(self.bootstrap.read()).as_ref()
            && same(built)
        {
            return Some(built.clone());
        }
        let mut members: Vec<(&str, &str, &'static str)> = declarations
            .iter()
            .map(|d| {
                (
                    d.identifier.as_str(),
                    d.server_token.as_str(),
                    kind_of(d.declaration_type),
                )
            })
            .collect();
        members.sort_unstable();
        members.dedup();
        let built = Arc::new(Bootstrap {
            set: Arc::new(served_set(&members)),
            declarations: declarations
                .iter()
                .map(|d| {
                    (
                        d.identifier.clone(),
                        Arc::new(ServedDeclaration {
                            kind: kind_of(d.declaration_type),
                            server_token: d.server_token.clone(),
                            body: serde_json::to_vec(d).unwrap_or_default(),
                        }),
                    )
                })
                .collect(),
        });
        *relock(self.bootstrap.write()) = Some(built.clone());
        Some(built)
    }

    /// Stores a batch of reports durably in one transaction: each merged into its enrollment's
    /// state (refused, alone, if that state would exceed [`MAX_STATE_BYTES`]) and its raw body
    /// kept among the enrollment's recent reports (bounded in count and bytes per enrollment,
    /// and in bytes in all, the oldest going first). Reports for one enrollment are applied in
    /// order. One outcome per report; `Err` only when the batch could not be committed.
    pub fn record_reports(
        &self,
        reports: &[(String, StatusReport, Vec<u8>)],
    ) -> Result<Vec<Result<(), Refusal>>, BackendError> {
        let now = self.clock.now().as_second();
        let mut outcomes = Vec::with_capacity(reports.len());
        let mut connection = relock(self.connection.lock());
        let mut transaction = connection.transaction()?;
        let mut history_bytes: i64 = transaction
            .query_row(
                "SELECT history_bytes FROM store_totals WHERE id = 1",
                [],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0);
        for (enrollment, report, raw) in reports {
            // A savepoint per report: whatever goes wrong with one is undone alone.
            let savepoint = transaction.savepoint()?;
            match record_one(&savepoint, enrollment, report, raw, now) {
                Ok(Ok(added)) => {
                    savepoint.commit()?;
                    history_bytes += added;
                    outcomes.push(Ok(()));
                }
                Ok(Err(refusal)) => outcomes.push(Err(refusal)),
                Err(error) => {
                    tracing::error!(%error, enrollment_id = enrollment, "cannot store a status report");
                    outcomes.push(Err(Refusal::Unavailable(error.to_string())));
                }
            }
        }
        if history_bytes > self.history_budget {
            history_bytes -=
                drop_oldest_reports(&transaction, history_bytes - self.history_budget)?;
        }
        transaction.execute(
            "INSERT INTO store_totals (id, history_bytes) VALUES (1, ?1)
             ON CONFLICT(id) DO UPDATE SET history_bytes = ?1",
            params![history_bytes],
        )?;
        transaction.commit()?;
        Ok(outcomes)
    }

    /// Bytes of raw reports kept now.
    pub fn history_bytes(&self) -> Result<i64, BackendError> {
        let connection = relock(self.connection.lock());
        Ok(connection
            .query_row(
                "SELECT history_bytes FROM store_totals WHERE id = 1",
                [],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// Removes the enrollments among `enrollment_ids` that never reported (their set and their
    /// row): they are served the bootstrap set again if they ever check in. Returns those
    /// removed; one that reported meanwhile is kept.
    pub fn forget_unreported(
        &self,
        enrollment_ids: &[String],
    ) -> Result<Vec<String>, BackendError> {
        if enrollment_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut forgotten = Vec::new();
        {
            let mut connection = relock(self.connection.lock());
            let transaction = connection.transaction()?;
            {
                let mut delete = transaction.prepare_cached(
                    "DELETE FROM enrollments WHERE enrollment_id = ?1
                       AND NOT EXISTS (SELECT 1 FROM device_summary WHERE enrollment_id = ?1)",
                )?;
                for id in enrollment_ids {
                    if delete.execute(params![id])? > 0 {
                        forgotten.push(id.clone());
                    }
                }
            }
            transaction.commit()?;
        }
        let mut cache = relock(self.cache.write());
        for id in &forgotten {
            cache.enrollments.remove(id);
        }
        Ok(forgotten)
    }

    /// Every known enrollment (assigned or reporting) with its state. Reads the summaries only
    /// (bounded per device), never the merged states.
    pub fn devices(&self) -> Result<Vec<DeviceRecord>, BackendError> {
        let connection = relock(self.connection.lock());
        // Both tables are keyed by enrollment id, so each is read in key order and the two are
        // merged here: no union to sort and no lookup per device (at 100,000 devices the
        // union's sorter and the lookups were most of a restart's time). SQLite compares text
        // bytewise, as `str` does.
        let mut summaries = connection.prepare(
            "SELECT enrollment_id, summary, last_report FROM device_summary ORDER BY enrollment_id",
        )?;
        let mut enrollments = connection
            .prepare("SELECT enrollment_id, assigned_at FROM enrollments ORDER BY enrollment_id")?;
        let cache = relock(self.cache.read());
        let mut records = Vec::new();
        let mut summary_rows = summaries.query([])?;
        let mut enrollment_rows = enrollments.query([])?;
        let mut next_summary = summary_rows.next()?;
        let mut next_enrollment = enrollment_rows.next()?;
        loop {
            let summary_id = next_summary
                .map(|row| row.get_ref(0).map(|v| v.as_str().unwrap_or_default()))
                .transpose()?;
            let enrollment_id = next_enrollment
                .map(|row| row.get_ref(0).map(|v| v.as_str().unwrap_or_default()))
                .transpose()?;
            let (take_summary, take_enrollment) = match (summary_id, enrollment_id) {
                (None, None) => break,
                (Some(_), None) => (true, false),
                (None, Some(_)) => (false, true),
                (Some(s), Some(e)) => (s <= e, e <= s),
            };
            let mut record = DeviceRecord {
                enrollment_id: String::new(),
                status: DeviceStatus::default(),
                assigned: Vec::new(),
                last_report: None,
                assigned_at: None,
            };
            if take_summary && let Some(row) = next_summary {
                record.enrollment_id = row.get(0)?;
                // An unreadable summary reads as "reported nothing"; the next report rewrites it.
                record.status = row
                    .get_ref(1)?
                    .as_bytes()
                    .ok()
                    .and_then(|b| serde_json::from_slice::<DeviceStatus>(b).ok())
                    .map(DeviceStatus::resident)
                    .unwrap_or_default();
                record.last_report = Some(timestamp(row.get(2)?));
                next_summary = summary_rows.next()?;
            }
            if take_enrollment && let Some(row) = next_enrollment {
                if !take_summary {
                    record.enrollment_id = row.get(0)?;
                }
                record.assigned_at = row.get::<_, Option<i64>>(1)?.map(timestamp);
                next_enrollment = enrollment_rows.next()?;
            }
            record.assigned = cache
                .enrollments
                .get(&record.enrollment_id)
                .map(|(s, _)| s.members.iter().cloned().collect())
                .unwrap_or_default();
            records.push(record);
        }
        // Held through the whole pass: without the slack of the last doubling.
        records.shrink_to_fit();
        Ok(records)
    }

    /// One enrollment's merged status items.
    pub fn device_items(
        &self,
        enrollment_id: &str,
    ) -> Result<Option<Map<String, Value>>, BackendError> {
        let connection = relock(self.connection.lock());
        let bytes: Option<Vec<u8>> = connection
            .query_row(
                "SELECT items FROM device_state WHERE enrollment_id = ?1",
                params![enrollment_id],
                |row| row.get(0),
            )
            .optional()?;
        Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Row counts, for metrics and the store-size benchmark.
    pub fn counts(&self) -> Result<[(&'static str, i64); 5], BackendError> {
        let connection = relock(self.connection.lock());
        let count = |table: &str| -> Result<i64, rusqlite::Error> {
            connection.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                row.get(0)
            })
        };
        Ok([
            ("declarations", count("declarations")?),
            ("sets", count("sets")?),
            ("enrollments", count("enrollments")?),
            ("device_state", count("device_state")?),
            ("status_reports", count("status_reports")?),
        ])
    }
}

/// A merged state's summary, serialised for `device_summary`.
fn summary_bytes(items: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(&DeviceStatus::from_items(items).summary()).unwrap_or_default()
}

/// Merges one report and keeps its raw body; `Ok(Ok(bytes))`: stored, the history grew by
/// `bytes` (negative when older reports made room).
fn record_one(
    connection: &Connection,
    enrollment: &str,
    report: &StatusReport,
    raw: &[u8],
    now: i64,
) -> Result<Result<i64, Refusal>, BackendError> {
    let stored: Option<(Vec<u8>, i64)> = connection
        .prepare_cached("SELECT items, reports FROM device_state WHERE enrollment_id = ?1")?
        .query_row(params![enrollment], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let (mut items, count) = match stored {
        // A state over the cap (stored before there was one) starts again from this report.
        Some((bytes, count)) if bytes.len() > MAX_STATE_BYTES => {
            tracing::warn!(
                enrollment_id = enrollment,
                bytes = bytes.len(),
                "a stored state over the cap is dropped; the device's next reports rebuild it"
            );
            (Map::new(), count)
        }
        Some((bytes, count)) => (
            serde_json::from_slice::<Map<String, Value>>(&bytes).unwrap_or_default(),
            count,
        ),
        None => (Map::new(), 0),
    };
    merge(&mut items, report);
    let merged = serde_json::to_vec(&items).map_err(|e| BackendError::Other(e.to_string()))?;
    if merged.len() > MAX_STATE_BYTES {
        return Ok(Err(Refusal::StateTooLarge(merged.len())));
    }
    let errors =
        serde_json::to_vec(&report.errors).map_err(|e| BackendError::Other(e.to_string()))?;
    connection
        .prepare_cached(
            "INSERT INTO device_state (enrollment_id, items, errors, reports, last_report) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(enrollment_id) DO UPDATE SET items = ?2, errors = ?3, reports = ?4, last_report = ?5",
        )?
        .execute(params![enrollment, merged, errors, count + 1, now])?;
    connection
        .prepare_cached(
            "INSERT INTO device_summary (enrollment_id, summary, last_report) VALUES (?1, ?2, ?3)
             ON CONFLICT(enrollment_id) DO UPDATE SET summary = ?2, last_report = ?3",
        )?
        .execute(params![enrollment, summary_bytes(&items), now])?;
    if raw.len() > HISTORY_BYTES_PER_ENROLLMENT {
        return Ok(Ok(0));
    }
    // The newest reports that fit beside this one stay; the rest go, oldest first.
    let kept: Vec<(i64, i64)> = connection
        .prepare_cached(
            "SELECT slot, bytes FROM status_reports WHERE enrollment_id = ?1 ORDER BY slot DESC",
        )?
        .query_map(params![enrollment], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let next_slot = kept.first().map_or(0, |(slot, _)| slot + 1);
    let mut budget = (HISTORY_BYTES_PER_ENROLLMENT - raw.len()) as i64;
    let mut freed = 0i64;
    let mut delete = connection
        .prepare_cached("DELETE FROM status_reports WHERE enrollment_id = ?1 AND slot = ?2")?;
    for (index, (slot, bytes)) in kept.iter().enumerate() {
        if index + 1 < HISTORY_REPORTS && *bytes <= budget {
            budget -= bytes;
        } else {
            delete.execute(params![enrollment, slot])?;
            freed += bytes;
        }
    }
    let bytes = raw.len() as i64;
    connection
        .prepare_cached(
            "INSERT INTO status_reports (enrollment_id, slot, received_at, body, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![enrollment, next_slot, now, raw, bytes])?;
    Ok(Ok(bytes - freed))
}

/// Deletes the oldest raw reports, whichever enrollment sent them, until at least `excess` bytes
/// are gone; returns the bytes deleted.
fn drop_oldest_reports(connection: &Connection, excess: i64) -> Result<i64, BackendError> {
    let mut dropped = 0i64;
    let mut select = connection.prepare_cached(
        "SELECT enrollment_id, slot, bytes FROM status_reports ORDER BY received_at, enrollment_id, slot LIMIT 256",
    )?;
    let mut delete = connection
        .prepare_cached("DELETE FROM status_reports WHERE enrollment_id = ?1 AND slot = ?2")?;
    while dropped < excess {
        let oldest: Vec<(String, i64, i64)> = select
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<Result<_, _>>()?;
        if oldest.is_empty() {
            break;
        }
        for (enrollment, slot, bytes) in oldest {
            if dropped >= excess {
                break;
            }
            delete.execute(params![enrollment, slot])?;
            dropped += bytes;
        }
    }
    Ok(dropped)
}

fn migrate(connection: &Connection) -> Result<(), BackendError> {
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(BackendError::Other(format!(
            "the database schema is version {version}, newer than this operator knows ({known}); refusing to touch it"
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        connection.execute_batch(&format!(
            "BEGIN; {migration}; PRAGMA user_version = {}; COMMIT;",
            index + 1
        ))?;
    }
    Ok(())
}

/// A set from its members `(identifier, server token, kind)`, sorted: its token hashes them.
fn served_set(members: &[(&str, &str, &'static str)]) -> ServedSet {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(members.len() * 2);
    for (identifier, token, _) in members {
        parts.push(identifier.as_bytes());
        parts.push(token.as_bytes());
    }
    let token = content_hash(&parts);
    let list = |kind: &str| -> Vec<Value> {
        members
            .iter()
            .filter(|(_, _, k)| *k == kind)
            .map(|(identifier, token, _)| json!({"Identifier": identifier, "ServerToken": token}))
            .collect()
    };
    let items = json!({
        "Declarations": {
            "Activations": list("activation"),
            "Configurations": list("configuration"),
            "Assets": list("asset"),
            "Management": list("management"),
        },
        "DeclarationsToken": token,
    });
    ServedSet {
        items: serde_json::to_vec(&items).unwrap_or_default(),
        members: members.iter().map(|(id, _, _)| id.to_string()).collect(),
        token,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::declarations::{Declaration, ENFORCEMENT_TYPE, activation};

    fn enforcement(version: &str) -> Declaration {
        Declaration::new(
            ENFORCEMENT_TYPE,
            format!("ddm.enforce.{version}"),
            json!({"TargetOSVersion": version, "TargetLocalDateTime": "2026-09-01T19:00:00"}),
        )
    }

    fn assign(enrollment: &str, declarations: &[&Declaration]) -> Assignment {
        Assignment {
            enrollment_id: enrollment.into(),
            identifiers: declarations.iter().map(|d| d.identifier.clone()).collect(),
        }
    }

    #[test]
    fn sets_are_shared_and_unchanged_content_writes_nothing() {
        let store = Store::in_memory().expect("store");
        let e = enforcement("26.3.1");
        let a = activation(&[&e.identifier]);
        let assignments: Vec<Assignment> = (0..100)
            .map(|i| assign(&format!("D{i}"), &[&e, &a]))
            .collect();
        let first = store
            .apply(&[e.clone(), a.clone()], &assignments)
            .expect("apply");
        assert_eq!(
            (
                first.declarations_written,
                first.sets_written,
                first.changed.len()
            ),
            (2, 1, 100)
        );
        let again = store
            .apply(&[e.clone(), a.clone()], &assignments)
            .expect("apply");
        assert_eq!(
            again,
            ApplyReport::default(),
            "a resync with nothing changed writes nothing"
        );

        let set = store.served_set("D7").expect("assigned");
        let items: Value = serde_json::from_slice(&set.items).expect("json");
        assert_eq!(items["DeclarationsToken"], set.token.as_str());
        assert_eq!(
            items["Declarations"]["Configurations"][0]["Identifier"],
            e.identifier.as_str()
        );
        assert_eq!(
            items["Declarations"]["Activations"][0]["ServerToken"],
            a.server_token.as_str()
        );
        assert_eq!(items["Declarations"]["Assets"], json!([]));

        // Only assigned declarations are served, and only under their own kind.
        assert!(
            store
                .served_declaration("D7", "configuration", &e.identifier)
                .is_some()
        );
        assert!(
            store
                .served_declaration("D7", "activation", &e.identifier)
                .is_none()
        );
        assert!(
            store
                .served_declaration("nobody", "configuration", &e.identifier)
                .is_none()
        );
    }

    #[test]
    fn retargeting_everyone_writes_the_new_declarations_and_one_row_per_device() {
        let store = Store::in_memory().expect("store");
        let old = enforcement("26.3");
        let new = enforcement("26.4");
        let devices = 1_000;
        let to = |d: &Declaration| -> Vec<Assignment> {
            (0..devices)
                .map(|i| assign(&format!("D{i}"), &[d]))
                .collect()
        };
        store
            .apply(std::slice::from_ref(&old), &to(&old))
            .expect("apply");
        let report = store
            .apply(std::slice::from_ref(&new), &to(&new))
            .expect("apply");
        assert_eq!(report.declarations_written, 1);
        assert_eq!(report.sets_written, 1);
        assert_eq!(report.changed.len(), devices);
        let counts = store.counts().expect("counts");
        assert_eq!(counts[0], ("declarations", 2));
        assert_eq!(counts[1], ("sets", 2));
    }

    #[test]
    fn an_assignment_naming_an_unknown_declaration_changes_nothing() {
        let store = Store::in_memory().expect("store");
        let e = enforcement("26.3");
        let bad = Assignment {
            enrollment_id: "D1".into(),
            identifiers: vec!["nowhere".into()],
        };
        let result = store.apply(std::slice::from_ref(&e), &[assign("D0", &[&e]), bad]);
        assert!(matches!(result, Err(BackendError::UnknownDeclaration(id)) if id == "nowhere"));
        assert!(
            store.served_set("D0").is_none(),
            "no half-applied assignment"
        );
        assert_eq!(store.counts().expect("counts")[0], ("declarations", 0));
    }

    #[test]
    fn reports_merge_survive_a_reopen_and_history_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ddm.sqlite");
        let e = enforcement("26.4");
        {
            let store = Store::open(&path).expect("store");
            store
                .apply(std::slice::from_ref(&e), &[assign("D0", &[&e])])
                .expect("apply");
            let reports: Vec<(String, StatusReport, Vec<u8>)> = (0..40)
                .map(|i| {
                    let raw = format!(r#"{{"StatusItems":{{"softwareupdate":{{"failure-reason":{{"count":{i}}}}}}}}}"#);
                    let report = StatusReport::from_slice(raw.as_bytes()).expect("report");
                    ("D0".to_string(), report, raw.into_bytes())
                })
                .collect();
            store.record_reports(&reports).expect("record");
        }
        let store = Store::open(&path).expect("reopen");
        assert!(store.served_set("D0").is_some(), "assignments are reloaded");
        let items = store.device_items("D0").expect("read").expect("state");
        assert_eq!(items["softwareupdate"]["failure-reason"]["count"], 39);
        let counts = store.counts().expect("counts");
        assert_eq!(counts[4], ("status_reports", REPORT_HISTORY));
        let devices = store.devices().expect("devices");
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].assigned, vec![e.identifier.clone()]);
    }

    #[test]
    fn what_the_resolver_remembers_survives_a_reopen_and_is_replaced_per_enrollment() {
        use crate::resolve::Rollout;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ddm.sqlite");
        let rollout = |version: &str| Rollout {
            version: version.into(),
            deadline: jiff::civil::date(2026, 9, 1).at(19, 0, 0, 0),
            intent: "0123456789abcdef".into(),
            handed_at: Timestamp::from_second(1_788_000_000).expect("a timestamp"),
        };
        let ring_key = crate::resolve::RingKey {
            policy: "it/macs".into(),
            ring: "canary".into(),
            platform: crate::catalog::Platform::MacOs,
            version: "26.6.2".into(),
        };
        let ring = crate::resolve::RingDeadline {
            deadline: jiff::civil::date(2026, 8, 30).at(19, 0, 0, 0),
            intent: "0123456789abcdef".into(),
            handed_at: Timestamp::from_second(1_787_000_000).expect("a timestamp"),
        };
        let orphan = Orphan {
            by: "UpdatePolicy it/mobile".into(),
            sources: ["EnforcementTarget it/vip".to_string()].into(),
            since: Timestamp::from_second(1_790_000_000).expect("a timestamp"),
        };
        {
            let store = Store::open(&path).expect("store");
            assert_eq!(*store.memory(), Memory::default());
            let mut changes = MemoryChanges::default();
            changes.rollouts.insert(
                "D0".into(),
                [
                    ("it/macs".to_string(), rollout("26.6.2")),
                    ("it/security".to_string(), rollout("26.3.1 (a)")),
                ]
                .into(),
            );
            changes.rollouts.insert(
                "D1".into(),
                [("it/macs".to_string(), rollout("26.6.2"))].into(),
            );
            changes.orphans.insert("D2".into(), Some(orphan.clone()));
            changes.rings.insert(ring_key.clone(), Some(ring.clone()));
            let mut gone = ring_key.clone();
            gone.version = "26.5".into();
            changes.rings.insert(gone.clone(), Some(ring.clone()));
            store.remember(&changes).expect("remember");
            let mut changes = MemoryChanges::default();
            changes.rings.insert(gone, None);
            store.remember(&changes).expect("forget a ring");
            // D1's policy moved on, D0 lost one policy: each enrollment's map is replaced.
            let mut changes = MemoryChanges::default();
            changes.rollouts.insert("D1".into(), Default::default());
            changes.rollouts.insert(
                "D0".into(),
                [("it/macs".to_string(), rollout("26.6.2"))].into(),
            );
            store.remember(&changes).expect("remember");
        }
        let store = Store::open(&path).expect("reopen");
        let memory = store.memory();
        assert_eq!(
            memory.ledger.devices,
            [(
                "D0".to_string(),
                [("it/macs".to_string(), rollout("26.6.2"))].into()
            )]
            .into()
        );
        assert_eq!(memory.ledger.rings, [(ring_key, ring)].into());
        assert_eq!(memory.corrupt_rows, 0);
        assert_eq!(memory.orphans, [("D2".to_string(), orphan)].into());
        let mut changes = MemoryChanges::default();
        changes.orphans.insert("D2".into(), None);
        store.remember(&changes).expect("unfreeze");
        assert!(store.memory().orphans.is_empty());
        drop(store);
        assert!(
            Store::open(&path)
                .expect("reopen")
                .memory()
                .orphans
                .is_empty()
        );
    }

    /// An incremental report adding `bytes` of padding under its own key.
    fn padded(key: &str, bytes: usize) -> (StatusReport, Vec<u8>) {
        let raw = format!(
            r#"{{"StatusItems":{{"pad":{{"{key}":"{}"}}}}}}"#,
            "x".repeat(bytes)
        );
        (
            StatusReport::from_slice(raw.as_bytes()).expect("a report"),
            raw.into_bytes(),
        )
    }

    #[test]
    fn a_report_over_the_state_cap_is_refused_alone_and_the_state_stays() {
        let store = Store::in_memory().expect("store");
        let (small, small_raw) = padded("a", 1000);
        let (big, big_raw) = padded("b", MAX_STATE_BYTES);
        let outcomes = store
            .record_reports(&[
                ("A".into(), small.clone(), small_raw.clone()),
                ("A".into(), big, big_raw),
                ("B".into(), small, small_raw),
            ])
            .expect("the batch commits");
        assert_eq!(outcomes[0], Ok(()));
        assert!(matches!(outcomes[1], Err(Refusal::StateTooLarge(n)) if n > MAX_STATE_BYTES));
        assert_eq!(outcomes[2], Ok(()), "the rest of the batch is stored");
        let a = store.device_items("A").expect("read").expect("state");
        assert!(
            a["pad"].get("b").is_none(),
            "the refused report left no trace"
        );
        assert!(store.device_items("B").expect("read").is_some());
    }

    #[test]
    fn history_is_bounded_per_enrollment_in_bytes_and_in_all_oldest_first() {
        let store = Store::in_memory()
            .expect("store")
            .with_history_budget(200_000);
        // 20 reports of 10 KB to one enrollment: at most 64 KiB of them stay, the newest.
        for i in 0..20 {
            let (report, raw) = padded(&format!("k{i}"), 10_000);
            store
                .record_reports(&[("A".into(), report, raw)])
                .expect("record");
        }
        let kept = |id: &str| -> (i64, i64, i64) {
            relock(store.connection.lock())
                .query_row(
                    "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(MIN(slot), -1) FROM status_reports WHERE enrollment_id = ?1",
                    params![id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .expect("count")
        };
        let (count, bytes, oldest) = kept("A");
        assert_eq!(count, 6, "six 10 KB reports fit in 64 KiB");
        assert!(bytes <= HISTORY_BYTES_PER_ENROLLMENT as i64);
        assert_eq!(oldest, 14, "the newest are kept");
        // Many enrollments: the total stays within the budget, the oldest going first.
        for i in 0..40 {
            let (report, raw) = padded("k", 10_000);
            store
                .record_reports(&[(format!("D{i}"), report, raw)])
                .expect("record");
        }
        let total = store.history_bytes().expect("total");
        let actual: i64 = relock(store.connection.lock())
            .query_row("SELECT SUM(bytes) FROM status_reports", [], |row| {
                row.get(0)
            })
            .expect("sum");
        assert_eq!(total, actual, "the running total is exact");
        assert!(total <= 200_000, "{total}");
        assert_eq!(kept("D39").0, 1, "the newest report stays");
        assert_eq!(kept("A").0, 0, "the oldest went first");
        // A single report larger than an enrollment's budget is merged but not kept.
        let (report, raw) = padded("huge", HISTORY_BYTES_PER_ENROLLMENT + 1);
        store
            .record_reports(&[("H".into(), report, raw)])
            .expect("record");
        assert_eq!(kept("H").0, 0);
        assert!(store.device_items("H").expect("read").is_some());
    }

    #[test]
    fn devices_read_bounded_summaries_only() {
        let store = Store::in_memory().expect("store");
        let declarations: Vec<Value> = (0..200)
            .map(|i| json!({"identifier": format!("ddm.enforce.{i}{}", "y".repeat(200)), "valid": "invalid",
                "server-token": "t", "active": false, "reasons": [{"code": "Error.X"}]}))
            .collect();
        let raw = json!({"StatusItems": {
            "device": {"operating-system": {"version": "26.3", "build-version": "23D127", "family": "iOS"},
                       "model": {"identifier": "iPhone17,3", "family": "iPhone", "marketing-name": "z".repeat(5000)}},
            "softwareupdate": {"install-state": "downloading", "failure-reason": {"count": 2, "reason": "r".repeat(5000)}},
            "management": {"declarations": {"configurations": declarations}}}})
        .to_string();
        let report = StatusReport::from_slice(raw.as_bytes()).expect("a report");
        store
            .record_reports(&[("A".into(), report, raw.into_bytes())])
            .expect("record");
        let devices = store.devices().expect("devices");
        let status = &devices[0].status;
        assert_eq!(status.os_version.as_deref(), Some("26.3"));
        assert_eq!(status.model_identifier.as_deref(), Some("iPhone17,3"));
        assert_eq!(
            status.install_state,
            Some(crate::status::InstallState::Downloading)
        );
        assert_eq!(status.failure_count, Some(2));
        assert!(
            !status.declarations.is_empty(),
            "rejected declarations are kept"
        );
        assert!(
            serde_json::to_vec(status).expect("json").len() <= crate::status::SUMMARY_MAX_BYTES
        );
    }

    #[test]
    fn unknown_enrollments_get_the_bootstrap_set_from_memory_and_unreported_ones_can_be_forgotten()
    {
        let store = Store::in_memory().expect("store");
        let bootstrap = crate::operator::bootstrap_declarations();
        let served = store.bootstrap(&bootstrap).expect("a bootstrap set");
        // The same token as the set stored for an enrollment.
        let identifiers: Vec<String> = bootstrap.iter().map(|d| d.identifier.clone()).collect();
        store
            .apply(
                &bootstrap,
                &[Assignment {
                    enrollment_id: "OLD".into(),
                    identifiers,
                }],
            )
            .expect("apply");
        assert_eq!(
            store.served_set("OLD").expect("stored").token,
            served.set.token
        );
        assert_eq!(store.counts().expect("counts")[2], ("enrollments", 1));
        let (report, raw) = padded("a", 10);
        store
            .record_reports(&[("REPORTED".into(), report, raw)])
            .expect("record");
        store.withdraw(&["REPORTED".to_string()]).expect("withdraw");
        let forgotten = store
            .forget_unreported(&["OLD".to_string(), "REPORTED".to_string()])
            .expect("forget");
        assert_eq!(
            forgotten,
            vec!["OLD".to_string()],
            "one that reported stays"
        );
        assert!(store.served_set("OLD").is_none());
        assert!(store.served_set("REPORTED").is_some());
    }

    #[test]
    fn upgrading_removes_the_rows_old_gets_created_and_summarises_states() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ddm.sqlite");
        {
            // A store of schema 4 as the old version left it: bootstrap sets written by GETs of
            // 50 random ids, one of which then reported, and an inventory device's own set.
            let connection = Connection::open(&path).expect("open");
            for (index, migration) in MIGRATIONS[..4].iter().enumerate() {
                connection
                    .execute_batch(&format!(
                        "BEGIN; {migration}; PRAGMA user_version = {}; COMMIT;",
                        index + 1
                    ))
                    .expect("old schema");
            }
            let mut rows = String::from(
                "INSERT INTO declarations VALUES
                   ('ddm.status.x', 'com.apple.configuration.management.status-subscriptions', 't1', X'7B7D'),
                   ('ddm.activation.x', 'com.apple.activation.simple', 't2', X'7B7D'),
                   ('ddm.enforce.26.4', 'com.apple.configuration.softwareupdate.enforcement.specific', 't3', X'7B7D');
                 INSERT INTO sets VALUES ('BOOT', X'7B7D'), ('OWN', X'7B7D');
                 INSERT INTO set_members VALUES ('BOOT', 'ddm.status.x'), ('BOOT', 'ddm.activation.x'),
                   ('OWN', 'ddm.enforce.26.4'), ('OWN', 'ddm.activation.x');
                 INSERT INTO enrollments VALUES ('INVENTORY', 'OWN', 0);
                 INSERT INTO device_state VALUES ('RANDOM-7', CAST('{\"device\":{\"operating-system\":{\"version\":\"26.3\"}}}' AS BLOB), '[]', 1, 0);
                 INSERT INTO status_reports VALUES ('RANDOM-7', 0, 0, X'00112233');",
            );
            for i in 0..50 {
                rows.push_str(&format!(
                    "INSERT INTO enrollments VALUES ('RANDOM-{i}', 'BOOT', 0);"
                ));
            }
            connection.execute_batch(&rows).expect("old rows");
        }
        let store = Store::open(&path).expect("upgraded");
        let mut ids: Vec<String> = store
            .devices()
            .expect("devices")
            .into_iter()
            .map(|d| d.enrollment_id)
            .collect();
        ids.sort();
        assert_eq!(ids, ["INVENTORY", "RANDOM-7"]);
        let reported = store
            .devices()
            .expect("devices")
            .into_iter()
            .find(|d| d.enrollment_id == "RANDOM-7")
            .expect("kept");
        assert_eq!(
            reported.status.os_version.as_deref(),
            Some("26.3"),
            "summarised"
        );
        assert_eq!(
            store.history_bytes().expect("total"),
            4,
            "history sizes are counted"
        );
    }

    #[test]
    fn a_database_of_the_first_schema_is_brought_up_to_date() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ddm.sqlite");
        {
            let connection = Connection::open(&path).expect("open");
            connection
                .execute_batch(&format!(
                    "BEGIN; {}; PRAGMA user_version = 1; COMMIT;",
                    MIGRATIONS[0]
                ))
                .expect("schema 1");
        }
        let store = Store::open(&path).expect("migrated");
        assert_eq!(*store.memory(), Memory::default());
        let version: i64 = relock(store.connection.lock())
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("version");
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ddm.sqlite");
        drop(Store::open(&path).expect("store"));
        Connection::open(&path)
            .and_then(|c| c.pragma_update(None, "user_version", 99))
            .expect("bump");
        assert!(Store::open(&path).is_err());
    }
}
