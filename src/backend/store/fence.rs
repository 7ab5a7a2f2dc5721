//! Fencing the resolver's writes by leadership epoch. Each time a replica takes the Lease it
//! claims the next epoch in the store; every later write of sets or of the rollout ledger checks,
//! inside its own transaction, that the stored epoch is still its own. A deposed leader whose
//! pass was already running when it lost the Lease is refused, not raced.

use rusqlite::{OptionalExtension, Transaction, params};

use super::{Store, relock};
use crate::backend::BackendError;

/// Whose writes this store accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// Standalone mode: one process, no election.
    Unfenced,
    /// Writes under this epoch, as long as no later leader claimed a newer one.
    Leading(i64),
    /// Stepped down: no writes until leading again.
    Deposed,
}

impl Store {
    /// Called on taking the Lease: claims the epoch after the stored one (so every earlier
    /// leader's writes are refused from now on) and returns it.
    pub fn claim_leadership(&self, holder: &str) -> Result<i64, BackendError> {
        let now = self.clock.now().as_second();
        let mut connection = relock(self.connection.lock());
        let transaction = connection.transaction()?;
        let stored: Option<i64> = transaction
            .query_row("SELECT epoch FROM leadership WHERE id = 1", [], |row| {
                row.get(0)
            })
            .optional()?;
        let epoch = stored.unwrap_or(0) + 1;
        transaction.execute(
            "INSERT INTO leadership (id, epoch, holder, since) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET epoch = ?1, holder = ?2, since = ?3",
            params![epoch, holder, now],
        )?;
        transaction.commit()?;
        *relock(self.fence.write()) = Fence::Leading(epoch);
        Ok(epoch)
    }

    /// Called on losing (or failing to renew) the Lease: refuses every write from now on.
    pub fn step_down(&self) {
        *relock(self.fence.write()) = Fence::Deposed;
    }

    /// The epoch and holder the store last recorded.
    pub fn leadership(&self) -> Result<Option<(i64, String)>, BackendError> {
        let connection = relock(self.connection.lock());
        Ok(connection
            .query_row(
                "SELECT epoch, holder FROM leadership WHERE id = 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?)
    }

    /// Inside a write transaction: refuses the write unless this process may write.
    pub(super) fn check_fence(&self, transaction: &Transaction) -> Result<(), BackendError> {
        let fence = *relock(self.fence.read());
        match fence {
            Fence::Unfenced => Ok(()),
            Fence::Deposed => Err(BackendError::Fenced(
                "this replica is not the leader".into(),
            )),
            Fence::Leading(epoch) => {
                let stored: Option<i64> = transaction
                    .query_row("SELECT epoch FROM leadership WHERE id = 1", [], |row| {
                        row.get(0)
                    })
                    .optional()?;
                match stored {
                    Some(stored) if stored == epoch => Ok(()),
                    other => Err(BackendError::Fenced(format!(
                        "leadership epoch {epoch} is stale (the store is at {})",
                        other.map_or("none".to_string(), |e| e.to_string())
                    ))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Assignment;
    use crate::declarations::Declaration;

    fn declaration() -> Declaration {
        crate::declarations::activation(&["com.example.configuration"])
    }

    fn assign(identifier: &str) -> Vec<Assignment> {
        vec![Assignment {
            enrollment_id: "device-1".into(),
            identifiers: vec![identifier.to_string()],
        }]
    }

    #[test]
    fn a_deposed_leader_sharing_the_store_is_refused_after_the_next_leader_claims() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ddm.sqlite");
        let old = Store::open(&path).expect("open");
        let new = Store::open(&path).expect("open");
        let declaration = declaration();
        let assignments = assign(&declaration.identifier);

        assert_eq!(old.claim_leadership("old").expect("claim"), 1);
        old.apply(std::slice::from_ref(&declaration), &assignments)
            .expect("the leader writes");
        // The old leader's pass is still running when the new one takes over.
        assert_eq!(new.claim_leadership("new").expect("claim"), 2);
        let refused = old
            .withdraw(&["device-1".to_string()])
            .expect_err("a stale epoch is refused");
        assert_eq!(refused.reason(), "Fenced", "{refused}");
        assert!(
            refused.to_string().contains("epoch 1 is stale"),
            "{refused}"
        );
        let refused = old
            .remember(&crate::backend::MemoryChanges {
                orphans: [("device-1".to_string(), None)].into(),
                ..Default::default()
            })
            .expect_err("the ledger too");
        assert_eq!(refused.reason(), "Fenced");
        // What the new leader reads is what the old one wrote before it was fenced.
        new.withdraw(&["device-1".to_string()])
            .expect("the new leader writes");
        assert_eq!(
            new.leadership().expect("read"),
            Some((2, "new".to_string()))
        );
    }

    #[test]
    fn stepping_down_refuses_writes_until_leading_again() {
        let store = Store::in_memory().expect("store");
        let declaration = declaration();
        let assignments = assign(&declaration.identifier);
        store.claim_leadership("me").expect("claim");
        store.step_down();
        let refused = store
            .apply(std::slice::from_ref(&declaration), &assignments)
            .expect_err("deposed");
        assert_eq!(refused.reason(), "Fenced");
        assert!(store.served_set("device-1").is_none(), "nothing written");
        assert_eq!(store.claim_leadership("me").expect("claim again"), 2);
        store
            .apply(std::slice::from_ref(&declaration), &assignments)
            .expect("leading again");
        assert!(store.served_set("device-1").is_some());
    }

    #[test]
    fn standalone_stores_are_unfenced() {
        let store = Store::in_memory().expect("store");
        let declaration = declaration();
        store
            .apply(
                std::slice::from_ref(&declaration),
                &assign(&declaration.identifier),
            )
            .expect("written");
        assert_eq!(store.leadership().expect("read"), None);
    }
}
