//! What the store says of one device for the per-device view (`devices show`): its record with
//! the whole summary and its newest reports, read at the request by primary key.

use jiff::Timestamp;
use rusqlite::{OptionalExtension, params};

use super::{Store, relock, timestamp};
use crate::backend::{BackendError, DeviceRecord};
use crate::status::DeviceStatus;

impl Store {
    /// One enrollment's record: its summary (rejected declarations with their reasons), when it
    /// last reported, when its set last changed and what it is assigned. `None` when the store
    /// has neither a report nor a set for it.
    pub fn device_record(&self, enrollment_id: &str) -> Result<Option<DeviceRecord>, BackendError> {
        let connection = relock(self.connection.lock());
        let summary: Option<(Vec<u8>, i64)> = connection
            .prepare_cached(
                "SELECT summary, last_report FROM device_summary WHERE enrollment_id = ?1",
            )?
            .query_row(params![enrollment_id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        let assigned_at: Option<Option<i64>> = connection
            .prepare_cached("SELECT assigned_at FROM enrollments WHERE enrollment_id = ?1")?
            .query_row(params![enrollment_id], |row| row.get(0))
            .optional()?;
        drop(connection);
        if summary.is_none() && assigned_at.is_none() {
            return Ok(None);
        }
        let assigned = self
            .served_set(enrollment_id)
            .map(|set| set.members.iter().cloned().collect())
            .unwrap_or_default();
        Ok(Some(DeviceRecord {
            enrollment_id: enrollment_id.to_string(),
            // An unreadable summary reads as "reported nothing", as in a listing.
            status: summary
                .as_ref()
                .and_then(|(bytes, _)| serde_json::from_slice::<DeviceStatus>(bytes).ok())
                .unwrap_or_default(),
            assigned,
            last_report: summary.map(|(_, at)| timestamp(at)),
            assigned_at: assigned_at.flatten().map(timestamp),
        }))
    }

    /// The enrollment's newest kept reports, at most `limit`, newest first: when each arrived
    /// and its body as sent.
    pub fn recent_reports(
        &self,
        enrollment_id: &str,
        limit: usize,
    ) -> Result<Vec<(Timestamp, Vec<u8>)>, BackendError> {
        let connection = relock(self.connection.lock());
        let mut statement = connection.prepare_cached(
            "SELECT received_at, body FROM status_reports WHERE enrollment_id = ?1
             ORDER BY received_at DESC, slot DESC LIMIT ?2",
        )?;
        let rows = statement.query_map(
            params![enrollment_id, i64::try_from(limit).unwrap_or(i64::MAX)],
            |row| Ok((timestamp(row.get(0)?), row.get::<_, Vec<u8>>(1)?)),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
