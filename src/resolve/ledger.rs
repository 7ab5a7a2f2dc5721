//! The rollout ledger's rules, pure: a deadline handed to a device is fixed. Time passing never
//! moves it later; only a change of intent does (the policy's deadline fields or the ring's
//! delay edited, the resource replaced) or a new rollout (another target version).
//!
//! Two kinds of entries, both kept by the backend between passes and restarts:
//! - per device and policy ([`Rollout`]): the version it is being (or was) taken to and the
//!   `TargetLocalDateTime` it was handed, under which intent, when;
//! - per ring of a rollout ([`RingKey`] → [`RingDeadline`]): the deadline the ring got when its
//!   first device was handed out. Generated EnforcementTargets show it; a device joining later
//!   gets it too, or its own (join time plus the minimum lead time) when that is later.
//!
//! `minimumLeadTime` counts once, at hand-out. Rings keep their spacing: a ring's deadline is
//! never earlier than the previous ring's handed-out deadline plus the difference of their
//! `delayDays` (both count from the policy's own deadline).

use std::collections::{BTreeMap, HashMap};

use jiff::civil::{Date, DateTime};
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::deadline;
use crate::api::validate::{CheckedDeadline, CheckedPolicy};
use crate::catalog::Platform;

/// The release a policy is taking, or took, one device to, and the deadline it was handed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// The version, as `OsVersion` prints it (`26.3.1 (a)`).
    pub version: String,
    /// The `TargetLocalDateTime` the device was handed (fixed from then on).
    pub deadline: DateTime,
    /// The intent it was handed under ([`intent`]); empty for entries written before the ledger
    /// existed, which are adopted by whatever intent is current.
    pub intent: String,
    /// When it was handed out.
    pub handed_at: Timestamp,
}

/// Enrollment id → policy (`namespace/name`) → its rollout.
pub type Rollouts = HashMap<String, DeviceRollouts>;

/// One device's rollouts, policy (`namespace/name`) → rollout, sorted by policy. A device has
/// one entry per policy applying to it, so a few at most: a sorted vector of exactly that many,
/// where a `BTreeMap` would allocate a node for eleven (about 1 KiB per device, 100 MiB for
/// 100,000 devices).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceRollouts(Vec<(String, Rollout)>);

impl DeviceRollouts {
    pub fn new() -> Self {
        Self::default()
    }

    fn position(&self, policy: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(p, _)| p.as_str().cmp(policy))
    }

    pub fn get(&self, policy: &str) -> Option<&Rollout> {
        self.position(policy).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, policy: &str) -> bool {
        self.position(policy).is_ok()
    }

    /// Sets the policy's rollout; returns the one it replaced.
    pub fn insert(&mut self, policy: String, rollout: Rollout) -> Option<Rollout> {
        match self.position(&policy) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, rollout)),
            Err(i) => {
                // Exactly as many as held: most devices keep one or two for good.
                self.0.reserve_exact(1);
                self.0.insert(i, (policy, rollout));
                None
            }
        }
    }

    pub fn remove(&mut self, policy: &str) -> Option<Rollout> {
        self.position(policy).ok().map(|i| self.0.remove(i).1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Policy and rollout, sorted by policy.
    pub fn iter(&self) -> std::iter::Map<std::slice::Iter<'_, (String, Rollout)>, PairRef> {
        self.0.iter().map(pair_ref as PairRef)
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(p, _)| p)
    }

    pub fn values(&self) -> impl Iterator<Item = &Rollout> {
        self.0.iter().map(|(_, r)| r)
    }
}

/// How [`DeviceRollouts::iter`] lends an entry.
pub type PairRef = for<'a> fn(&'a (String, Rollout)) -> (&'a String, &'a Rollout);

fn pair_ref((policy, rollout): &(String, Rollout)) -> (&String, &Rollout) {
    (policy, rollout)
}

impl FromIterator<(String, Rollout)> for DeviceRollouts {
    /// The last entry of a policy wins, as with a map.
    fn from_iter<I: IntoIterator<Item = (String, Rollout)>>(entries: I) -> Self {
        let mut entries: Vec<(String, Rollout)> = entries.into_iter().collect();
        // Stable: equal policies keep their order, so the last one is the one kept below.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(String, Rollout)> = Vec::with_capacity(entries.len());
        for entry in entries {
            match kept.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => kept.push(entry),
            }
        }
        kept.shrink_to_fit();
        DeviceRollouts(kept)
    }
}

impl<const N: usize> From<[(String, Rollout); N]> for DeviceRollouts {
    fn from(entries: [(String, Rollout); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl std::ops::Index<&str> for DeviceRollouts {
    type Output = Rollout;

    /// Panics when the policy has no entry, as a map's index does.
    fn index(&self, policy: &str) -> &Rollout {
        match self.get(policy) {
            Some(rollout) => rollout,
            None => panic!("no rollout for policy {policy}"),
        }
    }
}

impl<'a> IntoIterator for &'a DeviceRollouts {
    type Item = (&'a String, &'a Rollout);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (String, Rollout)>, PairRef>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl IntoIterator for DeviceRollouts {
    type Item = (String, Rollout);
    type IntoIter = std::vec::IntoIter<(String, Rollout)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// One ring of one rollout: a policy's ring taking one platform to one version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RingKey {
    /// The policy, `namespace/name`.
    pub policy: String,
    pub ring: String,
    pub platform: Platform,
    pub version: String,
}

/// The deadline a ring was given when its first device was handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingDeadline {
    pub deadline: DateTime,
    pub intent: String,
    pub handed_at: Timestamp,
}

pub type RingDeadlines = BTreeMap<RingKey, RingDeadline>;

/// Everything handed out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    pub devices: Rollouts,
    pub rings: RingDeadlines,
}

/// The intent a ring's deadlines are computed under: the resource's identity (a replaced
/// resource has a new uid), its deadline fields and the ring's delay. Editing anything else
/// (settings, groups, labels) keeps every handed-out deadline.
pub fn intent(policy: &CheckedPolicy, ring: usize) -> String {
    let rule = &policy.deadline;
    let text = format!(
        "uid={}|days={}|time={}|zone={}|skipWeekends={}|lead={}|delay={}",
        policy.uid.as_deref().unwrap_or(""),
        rule.days_after_posting,
        rule.local_time,
        rule.time_zone.iana_name().unwrap_or("?"),
        rule.skip_weekends,
        rule.minimum_lead_time
            .map(|l| l.as_secs().to_string())
            .unwrap_or_default(),
        policy.rings.get(ring).map_or(0, |r| r.delay_days),
    );
    let digest = Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether an entry handed under `handed` still holds under `current`.
pub fn same_intent(handed: &str, current: &str) -> bool {
    handed.is_empty() || handed == current
}

/// The deadline a ring gets when it is handed out at `now`: days after posting plus its delay
/// (weekends skipped), no sooner than the minimum lead time from now, and no sooner than the
/// previous ring's handed-out deadline plus the difference of their delays.
pub fn ring_deadline(
    rule: &CheckedDeadline,
    posted: Date,
    delay_days: u32,
    previous: Option<(DateTime, u32)>,
    now: Timestamp,
) -> DateTime {
    let at = deadline::deadline(rule, posted, delay_days, now);
    let Some((previous_at, previous_delay)) = previous else {
        return at;
    };
    let gap = i64::from(delay_days.saturating_sub(previous_delay));
    let date = previous_at
        .date()
        .checked_add(gap.days())
        .unwrap_or(previous_at.date());
    let spaced = deadline::skip_weekend(rule, date).to_datetime(rule.local_time);
    at.max(spaced)
}

/// The deadline a device gets when it joins a ring whose deadline is `ring_at` at `now`: the
/// ring's, or the first allowed moment after the minimum lead time when that is later. A
/// deadline in the past stays in the past (Apple installs at once) when no lead time is set.
pub fn join(rule: &CheckedDeadline, ring_at: DateTime, now: Timestamp) -> DateTime {
    match deadline::earliest(rule, now) {
        Some(earliest) => ring_at.max(earliest),
        None => ring_at,
    }
}

/// The ledger as the operator exports it (`GET /api/v1/rollouts`) and `plan --ledger` reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerDocument {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported_at: Option<String>,
    #[serde(default)]
    pub rings: Vec<RingRow>,
    #[serde(default)]
    pub devices: Vec<DeviceRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RingRow {
    #[serde(flatten)]
    pub key: RingKey,
    /// `TargetLocalDateTime`, device-local time without an offset.
    pub deadline: String,
    pub intent: String,
    pub handed_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRow {
    pub enrollment_id: String,
    pub policy: String,
    pub version: String,
    pub deadline: String,
    pub intent: String,
    pub handed_at: String,
}

pub const LEDGER_KIND: &str = "RolloutLedger";

/// `TargetLocalDateTime`'s form.
pub fn format_local(at: DateTime) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S").to_string()
}

impl Ledger {
    /// The exported form, sorted (same ledger, same bytes).
    pub fn document(&self, exported_at: Option<Timestamp>) -> LedgerDocument {
        let rings = self
            .rings
            .iter()
            .map(|(key, ring)| RingRow {
                key: key.clone(),
                deadline: format_local(ring.deadline),
                intent: ring.intent.clone(),
                handed_at: ring.handed_at.to_string(),
            })
            .collect();
        let mut devices: Vec<DeviceRow> = self
            .devices
            .iter()
            .flat_map(|(enrollment, rollouts)| {
                rollouts.iter().map(move |(policy, rollout)| DeviceRow {
                    enrollment_id: enrollment.clone(),
                    policy: policy.clone(),
                    version: rollout.version.clone(),
                    deadline: format_local(rollout.deadline),
                    intent: rollout.intent.clone(),
                    handed_at: rollout.handed_at.to_string(),
                })
            })
            .collect();
        devices.sort_by(|a, b| (&a.enrollment_id, &a.policy).cmp(&(&b.enrollment_id, &b.policy)));
        LedgerDocument {
            api_version: crate::api::API_VERSION.to_string(),
            kind: LEDGER_KIND.to_string(),
            exported_at: exported_at.map(|t| t.to_string()),
            rings,
            devices,
        }
    }

    /// Reads an exported ledger. A row that cannot be read is left out and named in the
    /// problems: that device (or ring) is handed out as if for the first time, nothing else.
    pub fn from_document(document: &LedgerDocument) -> (Ledger, Vec<String>) {
        let mut ledger = Ledger::default();
        let mut problems = Vec::new();
        if document.kind != LEDGER_KIND {
            problems.push(format!(
                "kind is {:?}, expected {LEDGER_KIND:?}",
                document.kind
            ));
            return (ledger, problems);
        }
        for (i, row) in document.rings.iter().enumerate() {
            match (row.deadline.parse::<DateTime>(), row.handed_at.parse()) {
                (Ok(deadline), Ok(handed_at)) => {
                    ledger.rings.insert(
                        row.key.clone(),
                        RingDeadline {
                            deadline,
                            intent: row.intent.clone(),
                            handed_at,
                        },
                    );
                }
                _ => problems.push(format!(
                    "rings[{i}] ({} {}): unreadable deadline {:?} or handedAt {:?}; left out",
                    row.key.policy, row.key.ring, row.deadline, row.handed_at
                )),
            }
        }
        for (i, row) in document.devices.iter().enumerate() {
            match (row.deadline.parse::<DateTime>(), row.handed_at.parse()) {
                (Ok(deadline), Ok(handed_at)) => {
                    ledger
                        .devices
                        .entry(row.enrollment_id.clone())
                        .or_default()
                        .insert(
                            row.policy.clone(),
                            Rollout {
                                version: row.version.clone(),
                                deadline,
                                intent: row.intent.clone(),
                                handed_at,
                            },
                        );
                }
                _ => problems.push(format!(
                    "devices[{i}] ({} {}): unreadable deadline {:?} or handedAt {:?}; left out",
                    row.enrollment_id, row.policy, row.deadline, row.handed_at
                )),
            }
        }
        (ledger, problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::{date, time};

    fn rule(lead: Option<&str>) -> CheckedDeadline {
        CheckedDeadline {
            days_after_posting: 21,
            local_time: time(19, 0, 0, 0),
            time_zone: jiff::tz::TimeZone::get("UTC").expect("tz"),
            skip_weekends: false,
            minimum_lead_time: lead.map(|l| l.parse().expect("duration")),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn a_later_ring_keeps_its_spacing_when_the_lead_time_pushes_the_first() {
        // Posted long ago: both rings' days-after-posting deadlines have passed; 48 h of lead
        // time put the first ring on 12-10, the second (5 days later by spec) on 12-15.
        let rule = rule(Some("48h"));
        let now = at("2026-12-08T10:00:00Z");
        let first = ring_deadline(&rule, date(2026, 3, 1), 0, None, now);
        assert_eq!(first, date(2026, 12, 10).at(19, 0, 0, 0));
        let second = ring_deadline(&rule, date(2026, 3, 1), 5, Some((first, 0)), now);
        assert_eq!(second, date(2026, 12, 15).at(19, 0, 0, 0));
        // A ring whose own deadline is later than the spacing keeps its own.
        let posted = date(2026, 12, 1);
        let own = ring_deadline(&rule, posted, 5, Some((first, 0)), now);
        assert_eq!(own, date(2026, 12, 27).at(19, 0, 0, 0));
    }

    #[test]
    fn a_late_joiner_gets_the_rings_deadline_or_its_own_lead_time() {
        let ring_at = date(2026, 8, 24).at(19, 0, 0, 0);
        let lead = rule(Some("48h"));
        assert_eq!(join(&lead, ring_at, at("2026-08-20T00:00:00Z")), ring_at);
        assert_eq!(
            join(&lead, ring_at, at("2026-08-30T12:00:00Z")),
            date(2026, 9, 1).at(19, 0, 0, 0)
        );
        // Without a lead time a passed deadline stays passed: Apple installs at once.
        assert_eq!(
            join(&rule(None), ring_at, at("2026-08-30T12:00:00Z")),
            ring_at
        );
    }

    #[test]
    fn a_devices_rollouts_behave_as_a_map_sorted_by_policy() {
        let rollout = |version: &str| Rollout {
            version: version.into(),
            deadline: date(2026, 8, 24).at(19, 0, 0, 0),
            intent: "abc".into(),
            handed_at: at("2026-08-22T12:00:00Z"),
        };
        let mut rollouts: DeviceRollouts = [
            ("it/b".to_string(), rollout("26.4")),
            ("it/a".to_string(), rollout("26.5")),
            ("it/b".to_string(), rollout("26.6")),
        ]
        .into();
        // The last entry of a policy wins; iteration is by policy.
        assert_eq!(rollouts.len(), 2);
        assert_eq!(rollouts.keys().collect::<Vec<_>>(), ["it/a", "it/b"]);
        assert_eq!(rollouts["it/b"].version, "26.6");
        assert_eq!(
            rollouts
                .insert("it/c".into(), rollout("26.1"))
                .map(|r| r.version),
            None
        );
        assert_eq!(
            rollouts.insert("it/0".into(), rollout("26.2")),
            None,
            "a new first entry"
        );
        assert_eq!(
            rollouts
                .insert("it/a".into(), rollout("26.7"))
                .map(|r| r.version),
            Some("26.5".to_string())
        );
        let listed: Vec<(&str, &str)> = rollouts
            .iter()
            .map(|(p, r)| (p.as_str(), r.version.as_str()))
            .collect();
        assert_eq!(
            listed,
            [
                ("it/0", "26.2"),
                ("it/a", "26.7"),
                ("it/b", "26.6"),
                ("it/c", "26.1")
            ]
        );
        assert!(rollouts.contains_key("it/c") && !rollouts.contains_key("it/d"));
        assert_eq!(
            rollouts.remove("it/0").map(|r| r.version),
            Some("26.2".into())
        );
        assert_eq!(rollouts.get("it/0"), None);
        assert_eq!(rollouts.values().count(), 3);
    }

    #[test]
    fn the_exported_ledger_reads_back_and_bad_rows_are_left_out_alone() {
        let mut ledger = Ledger::default();
        ledger.devices.entry("D1".into()).or_default().insert(
            "it/hold".into(),
            Rollout {
                version: "26.5".into(),
                deadline: date(2026, 8, 24).at(19, 0, 0, 0),
                intent: "abc".into(),
                handed_at: at("2026-08-22T12:00:00Z"),
            },
        );
        ledger.rings.insert(
            RingKey {
                policy: "it/hold".into(),
                ring: "default".into(),
                platform: Platform::Ios,
                version: "26.5".into(),
            },
            RingDeadline {
                deadline: date(2026, 8, 24).at(19, 0, 0, 0),
                intent: "abc".into(),
                handed_at: at("2026-08-22T12:00:00Z"),
            },
        );
        let mut document = ledger.document(None);
        let json = serde_json::to_string(&document).expect("json");
        let read: LedgerDocument = serde_json::from_str(&json).expect("reads");
        assert_eq!(Ledger::from_document(&read), (ledger.clone(), Vec::new()));
        document.devices.push(DeviceRow {
            enrollment_id: "D2".into(),
            policy: "it/hold".into(),
            version: "26.5".into(),
            deadline: "next tuesday".into(),
            intent: String::new(),
            handed_at: "2026-08-22T12:00:00Z".into(),
        });
        let (read, problems) = Ledger::from_document(&document);
        assert_eq!(read, ledger, "D1 and the ring are kept");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("D2"), "{problems:?}");
    }
}
