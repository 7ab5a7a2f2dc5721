//! What the MDM told about devices (table `mdm_devices`, migration 6): one row per device-channel
//! enrollment holding its [`MdmDevice`] as JSON (at most [`MAX_DEVICE_BYTES`]), the newest
//! webhook event applied to it (a redelivered event is recognised), and the
//! `SOFTWARE_UPDATE_DEVICE_ID` the enrollment gate's MachineInfo carried, kept apart until the MDM
//! names the enrollment. These are facts devices and NanoMDM report, like status reports: they
//! are recorded whoever leads; only the withdrawal a CheckOut causes is a (fenced) set write.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, relock};
use crate::backend::BackendError;
use crate::mdm::webhook::WebhookEvent;
use crate::mdm::{Fact, MdmDevice};

/// The largest row's device JSON: every string of an event is bounded, so a real one is well
/// below; a row over it is refused, never stored.
pub const MAX_DEVICE_BYTES: usize = 2048;

/// What one webhook event did to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MdmOutcome {
    /// The event changed what is known. `left`: the enrollment is checked out now and was not
    /// before (its set is to be withdrawn); `enrollment_changed`: it enrolled or left.
    Applied {
        left: bool,
        enrollment_changed: bool,
    },
    /// Nothing new: the same event again, or one older than every fact it carries.
    Unchanged,
    /// Not stored (the row would exceed [`MAX_DEVICE_BYTES`]).
    Refused(String),
}

impl Store {
    /// Applies webhook events in one transaction, each in a savepoint of its own (one that
    /// fails is undone alone), in order. One outcome per event; `Err` only when the batch could
    /// not be committed.
    pub fn record_mdm_events(
        &self,
        events: &[WebhookEvent],
    ) -> Result<Vec<MdmOutcome>, BackendError> {
        let now = self.clock.now().as_second();
        let mut outcomes = Vec::with_capacity(events.len());
        let mut connection = relock(self.connection.lock());
        let mut transaction = connection.transaction()?;
        for event in events {
            let savepoint = transaction.savepoint()?;
            match apply_one(&savepoint, event, now) {
                Ok(outcome) => {
                    if matches!(outcome, MdmOutcome::Applied { .. }) {
                        savepoint.commit()?;
                    }
                    outcomes.push(outcome);
                }
                Err(error) => {
                    tracing::error!(%error, enrollment_id = event.enrollment(), "cannot store a webhook event");
                    outcomes.push(MdmOutcome::Refused(error.to_string()));
                }
            }
        }
        transaction.commit()?;
        Ok(outcomes)
    }

    /// Keeps the `SOFTWARE_UPDATE_DEVICE_ID` a device's MachineInfo carried (keyed by its UDID,
    /// NanoMDM's enrollment id of the device channel) if newer than the one kept.
    pub fn record_machine_info_device_id(
        &self,
        udid: &str,
        fact: Fact<String>,
    ) -> Result<bool, BackendError> {
        let now = self.clock.now().as_second();
        let connection = relock(self.connection.lock());
        let stored: Option<Option<Vec<u8>>> = connection
            .prepare_cached("SELECT machine_info FROM mdm_devices WHERE enrollment_id = ?1")?
            .query_row(params![udid], |row| row.get(0))
            .optional()?;
        let mut slot: Option<Fact<String>> = stored
            .flatten()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        if !Fact::update(&mut slot, fact) {
            return Ok(false);
        }
        let bytes = serde_json::to_vec(&slot).map_err(|e| BackendError::Other(e.to_string()))?;
        connection
            .prepare_cached(
                "INSERT INTO mdm_devices (enrollment_id, machine_info, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(enrollment_id) DO UPDATE SET machine_info = ?2, updated_at = ?3",
            )?
            .execute(params![udid, bytes, now])?;
        Ok(true)
    }

    /// Every enrollment the MDM named, checked-out ones included, with the gate's
    /// `SOFTWARE_UPDATE_DEVICE_ID` where it is the newest. A row that no longer parses is
    /// skipped with a warning (the next event for it writes it anew).
    pub fn mdm_devices(&self) -> Result<Vec<MdmDevice>, BackendError> {
        let connection = relock(self.connection.lock());
        let mut statement = connection.prepare_cached(
            "SELECT enrollment_id, device, machine_info FROM mdm_devices
              WHERE device IS NOT NULL ORDER BY enrollment_id",
        )?;
        let mut rows = statement.query([])?;
        let mut devices = Vec::new();
        while let Some(row) = rows.next()? {
            let enrollment: String = row.get(0)?;
            let device: Vec<u8> = row.get(1)?;
            let machine_info: Option<Vec<u8>> = row.get(2)?;
            let Ok(mut device) = serde_json::from_slice::<MdmDevice>(&device) else {
                tracing::warn!(enrollment_id = %enrollment, "an unreadable MDM device row is skipped");
                continue;
            };
            if let Some(Some(fact)) = machine_info
                .and_then(|bytes| serde_json::from_slice::<Option<Fact<String>>>(&bytes).ok())
            {
                device.machine_info_device_id(fact);
            }
            devices.push(device);
        }
        Ok(devices)
    }

    /// One enrollment as the MDM named it.
    pub fn mdm_device(&self, enrollment_id: &str) -> Result<Option<MdmDevice>, BackendError> {
        let connection = relock(self.connection.lock());
        let device: Option<Option<Vec<u8>>> = connection
            .prepare_cached("SELECT device FROM mdm_devices WHERE enrollment_id = ?1")?
            .query_row(params![enrollment_id], |row| row.get(0))
            .optional()?;
        Ok(device
            .flatten()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// Bytes the MDM rows take (JSON and ids), for the webhook burst's measurement.
    pub fn mdm_bytes(&self) -> Result<i64, BackendError> {
        let connection = relock(self.connection.lock());
        Ok(connection.query_row(
            "SELECT COALESCE(SUM(length(enrollment_id) + COALESCE(length(device), 0)
                   + COALESCE(length(machine_info), 0) + COALESCE(length(last_event_id), 0)), 0)
               FROM mdm_devices",
            [],
            |row| row.get(0),
        )?)
    }
}

fn apply_one(
    connection: &Connection,
    event: &WebhookEvent,
    now: i64,
) -> Result<MdmOutcome, BackendError> {
    let stored: Option<(Option<Vec<u8>>, Option<String>)> = connection
        .prepare_cached("SELECT device, last_event_id FROM mdm_devices WHERE enrollment_id = ?1")?
        .query_row(params![event.enrollment()], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    let (device, last_event) = stored.unwrap_or_default();
    if !event.event_id.is_empty() && last_event.as_deref() == Some(event.event_id.as_str()) {
        return Ok(MdmOutcome::Unchanged);
    }
    let known = device.and_then(|bytes| match serde_json::from_slice::<MdmDevice>(&bytes) {
        Ok(device) => Some(device),
        Err(error) => {
            tracing::warn!(enrollment_id = event.enrollment(), %error, "an unreadable MDM device row is written anew");
            None
        }
    });
    let (device, changed, was_enrolled) = match known {
        Some(mut device) => {
            let was = device.enrollment.is_enrolled();
            let changed = device.apply(event);
            (device, changed, Some(was))
        }
        None => (MdmDevice::from_event(event), true, None),
    };
    if !changed {
        return Ok(MdmOutcome::Unchanged);
    }
    let bytes = serde_json::to_vec(&device).map_err(|e| BackendError::Other(e.to_string()))?;
    if bytes.len() > MAX_DEVICE_BYTES {
        return Ok(MdmOutcome::Refused(format!(
            "the device would take {} bytes; at most {MAX_DEVICE_BYTES} are kept",
            bytes.len()
        )));
    }
    connection
        .prepare_cached(
            "INSERT INTO mdm_devices (enrollment_id, device, last_event_id, last_event_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(enrollment_id) DO UPDATE SET device = ?2, last_event_id = ?3,
                 last_event_at = ?4, updated_at = ?5",
        )?
        .execute(params![
            event.enrollment(),
            bytes,
            event.event_id,
            event.created_at.to_string(),
            now
        ])?;
    let enrolled = device.enrollment.is_enrolled();
    Ok(MdmOutcome::Applied {
        left: !enrolled && was_enrolled != Some(false),
        enrollment_changed: was_enrolled != Some(enrolled),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mdm::Source;
    use crate::mdm::webhook::{Ids, Message, Topic};

    fn event(id: &str, event_id: &str, message: Message, at: &str) -> WebhookEvent {
        WebhookEvent {
            topic: Topic::CheckOut,
            created_at: at.parse().expect("timestamp"),
            event_id: event_id.into(),
            ids: Ids {
                id: id.into(),
                kind: "Device".into(),
                parent_id: None,
            },
            udid: Some(id.into()),
            enrollment_id: None,
            payload: Vec::new(),
            message,
        }
    }

    #[test]
    fn events_apply_once_and_a_checkout_is_reported_as_leaving() {
        let store = Store::in_memory().expect("store");
        let enrolled = event(
            "A",
            "e1",
            Message::TokenUpdate { tally: Some(1) },
            "2026-12-07T11:00:01Z",
        );
        let left = event("A", "e2", Message::CheckOut, "2026-12-07T11:00:02Z");
        let outcomes = store
            .record_mdm_events(&[enrolled.clone(), enrolled.clone(), left.clone()])
            .expect("stored");
        assert_eq!(
            outcomes,
            vec![
                MdmOutcome::Applied {
                    left: false,
                    enrollment_changed: true
                },
                MdmOutcome::Unchanged,
                MdmOutcome::Applied {
                    left: true,
                    enrollment_changed: true
                },
            ]
        );
        // The Authenticate that preceded the check-out, delivered late, does not resurrect.
        let late = store
            .record_mdm_events(&[event(
                "A",
                "e0",
                Message::TokenUpdate { tally: Some(1) },
                "2026-12-07T11:00:00Z",
            )])
            .expect("stored");
        assert_eq!(late, vec![MdmOutcome::Unchanged]);
        let devices = store.mdm_devices().expect("read");
        assert_eq!(devices.len(), 1);
        assert!(!devices[0].enrollment.is_enrolled());
        // A CheckOut for an enrollment never seen is recorded as left, not as leaving again.
        let first = store
            .record_mdm_events(&[event("B", "e3", Message::CheckOut, "2026-12-07T11:00:00Z")])
            .expect("stored");
        assert_eq!(
            first,
            vec![MdmOutcome::Applied {
                left: true,
                enrollment_changed: true
            }]
        );
    }

    #[test]
    fn the_gates_device_id_joins_the_mdm_row_when_newest() {
        let store = Store::in_memory().expect("store");
        let at = |s: &str| s.parse::<jiff::Timestamp>().expect("timestamp");
        let fact = Fact::new(
            "J414sAP".to_string(),
            Source::MachineInfo,
            at("2026-12-07T10:00:00Z"),
        );
        assert!(
            store
                .record_machine_info_device_id("A", fact.clone())
                .expect("kept")
        );
        assert!(
            !store
                .record_machine_info_device_id("A", fact)
                .expect("same")
        );
        assert!(
            store.mdm_devices().expect("read").is_empty(),
            "not an MDM enrollment yet"
        );
        store
            .record_mdm_events(&[event(
                "A",
                "e1",
                Message::TokenUpdate { tally: Some(1) },
                "2026-12-07T11:00:01Z",
            )])
            .expect("stored");
        let devices = store.mdm_devices().expect("read");
        assert_eq!(
            devices[0]
                .software_update_device_id
                .as_ref()
                .map(|f| (f.value.as_str(), f.source)),
            Some(("J414sAP", Source::MachineInfo))
        );
    }
}
