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
use crate::status::{StatusReport, merge};

mod last_valid;

/// Raw reports kept per enrollment (a ring buffer).
pub const REPORT_HISTORY: i64 = 16;

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
        };
        store.load_cache()?;
        store.load_memory()?;
        Ok(store)
    }

    /// The clock that stamps assignments and reports from now on.
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> Self {
        self.clock = clock;
        self
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
                tracing::error!(%enrollment, %policy, %deadline, "unreadable ledger row (deadline); the device is handed out anew");
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
        if changes.is_empty() {
            return Ok(());
        }
        {
            let mut connection = relock(self.connection.lock());
            let transaction = connection.transaction()?;
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
        for (enrollment, rollouts) in &changes.rollouts {
            if rollouts.is_empty() {
                memory.ledger.devices.remove(enrollment);
            } else {
                memory
                    .ledger
                    .devices
                    .insert(enrollment.clone(), rollouts.clone());
            }
        }
        for (key, ring) in &changes.rings {
            match ring {
                Some(ring) => {
                    memory.ledger.rings.insert(key.clone(), ring.clone());
                }
                None => {
                    memory.ledger.rings.remove(key);
                }
            }
        }
        for (enrollment, orphan) in &changes.orphans {
            match orphan {
                Some(orphan) => {
                    memory.orphans.insert(enrollment.clone(), orphan.clone());
                }
                None => {
                    memory.orphans.remove(enrollment);
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

    /// Stores a batch of reports durably in one transaction: each raw body into the
    /// enrollment's ring of recent reports, and merged into its state. Reports for one
    /// enrollment are applied in order.
    pub fn record_reports(
        &self,
        reports: &[(String, StatusReport, Vec<u8>)],
    ) -> Result<(), BackendError> {
        let now = self.clock.now().as_second();
        let mut connection = relock(self.connection.lock());
        let transaction = connection.transaction()?;
        {
            let mut select = transaction.prepare_cached(
                "SELECT items, reports FROM device_state WHERE enrollment_id = ?1",
            )?;
            let mut upsert = transaction.prepare_cached(
                "INSERT INTO device_state (enrollment_id, items, errors, reports, last_report) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(enrollment_id) DO UPDATE SET items = ?2, errors = ?3, reports = ?4, last_report = ?5",
            )?;
            let mut keep = transaction.prepare_cached(
                "INSERT OR REPLACE INTO status_reports (enrollment_id, slot, received_at, body) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (enrollment, report, raw) in reports {
                let stored: Option<(Vec<u8>, i64)> = select
                    .query_row(params![enrollment], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
                let (mut items, count) = match stored {
                    Some((bytes, count)) => (
                        serde_json::from_slice::<Map<String, Value>>(&bytes).unwrap_or_default(),
                        count,
                    ),
                    None => (Map::new(), 0),
                };
                merge(&mut items, report);
                let items =
                    serde_json::to_vec(&items).map_err(|e| BackendError::Other(e.to_string()))?;
                let errors = serde_json::to_vec(&report.errors)
                    .map_err(|e| BackendError::Other(e.to_string()))?;
                upsert.execute(params![enrollment, items, errors, count + 1, now])?;
                keep.execute(params![enrollment, count % REPORT_HISTORY, now, raw])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// Every known enrollment (assigned or reporting) with its state.
    pub fn devices(&self) -> Result<Vec<DeviceRecord>, BackendError> {
        type Row = (String, Option<Vec<u8>>, Option<i64>, Option<i64>);
        let rows: Vec<Row> = {
            let connection = relock(self.connection.lock());
            let mut statement = connection.prepare(
                "SELECT ids.enrollment_id, s.items, s.last_report, e.assigned_at
                   FROM (SELECT enrollment_id FROM enrollments
                         UNION SELECT enrollment_id FROM device_state) AS ids
                   LEFT JOIN enrollments e ON e.enrollment_id = ids.enrollment_id
                   LEFT JOIN device_state s ON s.enrollment_id = ids.enrollment_id
                  ORDER BY ids.enrollment_id",
            )?;
            statement
                .query_map([], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })?
                .collect::<Result<_, _>>()?
        };
        let cache = relock(self.cache.read());
        Ok(rows
            .into_iter()
            .map(
                |(enrollment_id, items, last_report, assigned_at)| DeviceRecord {
                    assigned: cache
                        .enrollments
                        .get(&enrollment_id)
                        .map(|(s, _)| s.members.iter().cloned().collect())
                        .unwrap_or_default(),
                    status: items
                        .and_then(|b| serde_json::from_slice(&b).ok())
                        .unwrap_or_default(),
                    last_report: last_report.map(timestamp),
                    assigned_at: assigned_at.map(timestamp),
                    enrollment_id,
                },
            )
            .collect())
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
    use std::collections::BTreeMap;

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
            changes.rollouts.insert("D1".into(), BTreeMap::new());
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
