//! The last valid version of each resource (table `last_valid_objects`, migration 4): what an
//! object edited into an invalid spec keeps in force, across restarts. Written only when an
//! object's valid version changes, and fenced like every other resolver write.

use rusqlite::params;

use super::{Store, relock, timestamp};
use crate::api::validate::{LastValid, LastValidChanges, StoredVersions};
use crate::backend::BackendError;

impl Store {
    /// Every stored version. A row whose object no longer parses is skipped with a warning: it
    /// stands in for nothing (the object, if invalid, stays out as if never valid).
    pub fn last_valid_objects(&self) -> Result<StoredVersions, BackendError> {
        let connection = relock(self.connection.lock());
        let mut statement = connection.prepare_cached(
            "SELECT kind, key, uid, generation, object, stored_at FROM last_valid_objects",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<i64>>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, i64>(5)?,
            ))
        })?;
        let mut stored = StoredVersions::new();
        for row in rows {
            let (kind, key, uid, generation, object, stored_at) = row?;
            match serde_json::from_str(&object) {
                Ok(object) => {
                    stored.insert(
                        (kind.clone(), key.clone()),
                        LastValid {
                            kind,
                            key,
                            uid,
                            generation,
                            object,
                            stored_at: timestamp(stored_at),
                        },
                    );
                }
                Err(error) => {
                    tracing::warn!(%kind, %key, %error, "a stored last valid version does not parse; ignored");
                }
            }
        }
        Ok(stored)
    }

    /// Stores new valid versions and forgets the unwanted ones, in one transaction.
    pub fn record_last_valid(&self, changes: &LastValidChanges) -> Result<(), BackendError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut connection = relock(self.connection.lock());
        let transaction = connection.transaction()?;
        self.check_fence(&transaction)?;
        {
            let mut forget = transaction
                .prepare_cached("DELETE FROM last_valid_objects WHERE kind = ?1 AND key = ?2")?;
            for (kind, key) in &changes.forget {
                forget.execute(params![kind, key])?;
            }
            let mut store = transaction.prepare_cached(
                "INSERT INTO last_valid_objects (kind, key, uid, generation, object, stored_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(kind, key) DO UPDATE SET uid = ?3, generation = ?4, object = ?5,
                     stored_at = ?6",
            )?;
            for row in &changes.store {
                store.execute(params![
                    row.kind,
                    row.key,
                    row.uid,
                    row.generation,
                    row.object.to_string(),
                    row.stored_at.as_second(),
                ])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, generation: i64) -> LastValid {
        LastValid {
            kind: "UpdatePolicy".into(),
            key: key.into(),
            uid: "u1".into(),
            generation: Some(generation),
            object: serde_json::json!({"spec": {"fleetGroups": ["a"]}}),
            stored_at: "2026-09-01T00:00:00Z".parse().expect("time"),
        }
    }

    #[test]
    fn versions_survive_reopening_and_are_replaced_and_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ddm.sqlite");
        {
            let store = Store::open(&path).expect("open");
            store
                .record_last_valid(&LastValidChanges {
                    store: vec![row("fleet/a", 1), row("fleet/b", 7)],
                    forget: Vec::new(),
                })
                .expect("stored");
            store
                .record_last_valid(&LastValidChanges {
                    store: vec![row("fleet/a", 2)],
                    forget: vec![("UpdatePolicy".into(), "fleet/b".into())],
                })
                .expect("replaced and forgotten");
        }
        let store = Store::open(&path).expect("reopen");
        let stored = store.last_valid_objects().expect("read");
        assert_eq!(stored.len(), 1);
        assert_eq!(
            stored[&("UpdatePolicy".to_string(), "fleet/a".to_string())],
            row("fleet/a", 2)
        );
    }

    #[test]
    fn a_deposed_leader_cannot_record_versions() {
        let store = Store::in_memory().expect("store");
        store.claim_leadership("me").expect("claim");
        store.step_down();
        let refused = store
            .record_last_valid(&LastValidChanges {
                store: vec![row("fleet/a", 1)],
                forget: Vec::new(),
            })
            .expect_err("fenced");
        assert_eq!(refused.reason(), "Fenced");
        assert!(store.last_valid_objects().expect("read").is_empty());
    }
}
