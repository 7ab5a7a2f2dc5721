//! The MDM commands the operator last sent to each enrollment, one row per enrollment and kind
//! (table `mdm_commands`): what keeps a command outstanding across restarts, so a restarted
//! operator neither sends a second one nor forgets to refresh.

use jiff::Timestamp;
use rusqlite::params;

use super::{Store, relock, timestamp};
use crate::backend::BackendError;
use crate::mdm::command_results::{CommandReport, ReportStatus};
use crate::mdm::commands::{CommandKind, CommandRecord, CommandState};

/// The table, created by its migration in `store.rs`.
pub(super) const MIGRATION: &str = "CREATE TABLE mdm_commands (
        enrollment_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        command_uuid TEXT NOT NULL,
        sent_at INTEGER NOT NULL,
        state TEXT NOT NULL,
        answered_at INTEGER,
        PRIMARY KEY (enrollment_id, kind)
    ) WITHOUT ROWID";

impl Store {
    /// Every enrollment's last command of each kind. A row of an unknown kind or state (a newer
    /// operator's) is skipped.
    pub fn mdm_commands(&self) -> Result<Vec<CommandRecord>, BackendError> {
        let connection = relock(self.connection.lock());
        let mut statement = connection.prepare_cached(
            "SELECT enrollment_id, kind, command_uuid, sent_at, state, answered_at
               FROM mdm_commands",
        )?;
        // rusqlite reads a row into a tuple, column by column in the SELECT's order.
        let rows = statement.query_map([], |row| {
            <(String, String, String, i64, String, Option<i64>)>::try_from(row)
        })?;
        let mut records = Vec::new();
        for row in rows {
            let (enrollment_id, kind, command_uuid, sent_at, state, answered_at) = row?;
            let (Some(kind), Some(state)) =
                (CommandKind::parse(&kind), CommandState::parse(&state))
            else {
                continue;
            };
            records.push(CommandRecord {
                enrollment_id,
                kind,
                command_uuid,
                sent_at: timestamp(sent_at),
                state,
                answered_at: answered_at.map(timestamp),
            });
        }
        Ok(records)
    }

    /// Stores commands just handed to NanoMDM (each replaces the enrollment's last of its kind).
    pub fn record_mdm_commands(&self, records: &[CommandRecord]) -> Result<(), BackendError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut connection = relock(self.connection.lock());
        let transaction = connection.transaction()?;
        {
            let mut upsert = transaction.prepare_cached(
                "INSERT INTO mdm_commands
                     (enrollment_id, kind, command_uuid, sent_at, state, answered_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(enrollment_id, kind) DO UPDATE SET command_uuid = ?3,
                     sent_at = ?4, state = ?5, answered_at = ?6",
            )?;
            for record in records {
                upsert.execute(params![
                    record.enrollment_id,
                    record.kind.as_str(),
                    record.command_uuid,
                    record.sent_at.as_second(),
                    record.state.as_str(),
                    record.answered_at.map(Timestamp::as_second),
                ])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// Records a device's answer to the command it names: Acknowledged and Error end it,
    /// NotNow leaves it outstanding. An answer to a command the store no longer holds as the
    /// enrollment's last (an older one, a lost one answered late), to one already ended, or a
    /// NotNow not newer than the last answer recorded (the same answer delivered again)
    /// changes nothing. Returns whether it was recorded.
    pub fn record_mdm_command_answer(
        &self,
        enrollment_id: &str,
        report: &CommandReport,
        at: Timestamp,
    ) -> Result<bool, BackendError> {
        let state = match report.status {
            ReportStatus::Acknowledged => CommandState::Acknowledged,
            ReportStatus::Error => CommandState::Error,
            ReportStatus::NotNow => CommandState::Outstanding,
        };
        let connection = relock(self.connection.lock());
        let changed = connection.execute(
            "UPDATE mdm_commands SET state = ?4, answered_at = ?5
              WHERE enrollment_id = ?1 AND kind = ?2 AND command_uuid = ?3
                AND state = ?6
                AND (?4 <> ?6 OR answered_at IS NULL OR answered_at < ?5)",
            params![
                enrollment_id,
                report.kind.as_str(),
                report.command_uuid,
                state.as_str(),
                at.as_second(),
                CommandState::Outstanding.as_str(),
            ],
        )?;
        Ok(changed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mdm::commands::command_uuid;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn report(record: &CommandRecord, status: ReportStatus) -> CommandReport {
        CommandReport {
            command_uuid: record.command_uuid.clone(),
            kind: record.kind,
            status,
            security: None,
            device: None,
            ignored_keys: Vec::new(),
        }
    }

    #[test]
    fn outstanding_commands_survive_reopening_and_answers_end_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ddm.sqlite");
        let sent_at = at("2026-12-07T10:00:00Z");
        let record = CommandRecord {
            enrollment_id: "UDID-1".into(),
            kind: CommandKind::SecurityInfo,
            command_uuid: command_uuid(CommandKind::SecurityInfo, "UDID-1", sent_at),
            sent_at,
            state: CommandState::Outstanding,
            answered_at: None,
        };
        {
            let store = Store::open(&path).expect("open");
            store
                .record_mdm_commands(std::slice::from_ref(&record))
                .expect("stored");
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(
            store.mdm_commands().expect("read"),
            std::slice::from_ref(&record)
        );

        // NotNow: still outstanding; an answer to another command of ours: nothing.
        let later = at("2026-12-07T10:05:00Z");
        assert!(
            store
                .record_mdm_command_answer("UDID-1", &report(&record, ReportStatus::NotNow), later)
                .expect("answer")
        );
        let mut stale = report(&record, ReportStatus::Acknowledged);
        stale.command_uuid = command_uuid(
            CommandKind::SecurityInfo,
            "UDID-1",
            at("2026-12-01T00:00:00Z"),
        );
        assert!(
            !store
                .record_mdm_command_answer("UDID-1", &stale, later)
                .expect("answer")
        );
        assert_eq!(
            store.mdm_commands().expect("read")[0].state,
            CommandState::Outstanding
        );
        let acknowledged = report(&record, ReportStatus::Acknowledged);
        assert!(
            store
                .record_mdm_command_answer("UDID-1", &acknowledged, later)
                .expect("answer")
        );
        let stored = &store.mdm_commands().expect("read")[0];
        assert_eq!(
            (stored.state, stored.answered_at),
            (CommandState::Acknowledged, Some(later))
        );
        // The same answer again (a webhook event delivered twice), or a late NotNow: nothing.
        let again = at("2026-12-07T10:06:00Z");
        for status in [ReportStatus::Acknowledged, ReportStatus::NotNow] {
            assert!(
                !store
                    .record_mdm_command_answer("UDID-1", &report(&record, status), again)
                    .expect("answer")
            );
        }
        assert_eq!(
            store.mdm_commands().expect("read")[0].answered_at,
            Some(later)
        );
    }

    #[test]
    fn a_not_now_delivered_twice_is_recorded_once() {
        let store = Store::in_memory().expect("store");
        let sent_at = at("2026-12-07T10:00:00Z");
        let record = CommandRecord {
            enrollment_id: "UDID-1".into(),
            kind: CommandKind::DeviceInformation,
            command_uuid: command_uuid(CommandKind::DeviceInformation, "UDID-1", sent_at),
            sent_at,
            state: CommandState::Outstanding,
            answered_at: None,
        };
        store
            .record_mdm_commands(std::slice::from_ref(&record))
            .expect("stored");
        let not_now = report(&record, ReportStatus::NotNow);
        let first = at("2026-12-07T10:01:00Z");
        assert!(
            store
                .record_mdm_command_answer("UDID-1", &not_now, first)
                .expect("answer")
        );
        assert!(
            !store
                .record_mdm_command_answer("UDID-1", &not_now, first)
                .expect("answer")
        );
        // A later NotNow is a new answer; then the final one.
        let second = at("2026-12-07T10:02:00Z");
        assert!(
            store
                .record_mdm_command_answer("UDID-1", &not_now, second)
                .expect("answer")
        );
        let done = report(&record, ReportStatus::Acknowledged);
        assert!(
            store
                .record_mdm_command_answer("UDID-1", &done, second)
                .expect("answer")
        );
    }
}
