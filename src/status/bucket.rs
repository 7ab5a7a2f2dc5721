//! Device state buckets (the design page's contracts): where one device stands against one
//! resource, from its resolution, what it runs and what it last reported.

use jiff::Timestamp;
use serde::Serialize;

use super::{DeviceStatus, InstallState};
use crate::resolve::Reason;

/// No report for this long means the device is stale (Apple's safety sync is 24 hours).
pub const STALE_AFTER_SECONDS: i64 = 26 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Bucket {
    Compliant,
    Pending,
    Downloading,
    Prepared,
    Installing,
    Failed,
    Stale,
    NotApplicable,
}

impl Bucket {
    pub const ALL: [Bucket; 8] = [
        Bucket::Compliant,
        Bucket::Pending,
        Bucket::Downloading,
        Bucket::Prepared,
        Bucket::Installing,
        Bucket::Failed,
        Bucket::Stale,
        Bucket::NotApplicable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Compliant => "compliant",
            Bucket::Pending => "pending",
            Bucket::Downloading => "downloading",
            Bucket::Prepared => "prepared",
            Bucket::Installing => "installing",
            Bucket::Failed => "failed",
            Bucket::Stale => "stale",
            Bucket::NotApplicable => "notApplicable",
        }
    }
}

/// What the bucket is computed from.
#[derive(Debug, Clone, Copy)]
pub struct Standing<'a> {
    /// The enforcement this resource gives the device (its declaration identifier), if any.
    pub enforcement: Option<&'a str>,
    /// Why the resource gives it nothing, if it does not.
    pub reason: Option<Reason>,
    pub status: &'a DeviceStatus,
    pub last_report: Option<Timestamp>,
    pub assigned_at: Option<Timestamp>,
    pub now: Timestamp,
}

pub fn bucket(standing: Standing<'_>) -> Bucket {
    match standing.reason {
        Some(Reason::UpToDate) => return Bucket::Compliant,
        Some(
            Reason::Superseded
            | Reason::TwoStep
            | Reason::PublicAssetSetsOnly
            | Reason::BootstrapTokenMissing,
        )
        | None => {}
        Some(_) => return Bucket::NotApplicable,
    }
    let heard = standing.last_report.or(standing.assigned_at);
    if heard.is_some_and(|t| standing.now.as_second() - t.as_second() > STALE_AFTER_SECONDS) {
        return Bucket::Stale;
    }
    if let Some(identifier) = standing.enforcement
        && standing
            .status
            .declarations
            .iter()
            .any(|d| d.identifier == identifier && d.valid == "invalid")
    {
        return Bucket::Failed;
    }
    // No report since the assignment changed: the device has not seen it yet.
    if standing
        .assigned_at
        .is_some_and(|assigned| standing.last_report.is_none_or(|r| r < assigned))
    {
        return Bucket::Pending;
    }
    match standing.status.install_state {
        Some(InstallState::Downloading) => Bucket::Downloading,
        Some(InstallState::Prepared) => Bucket::Prepared,
        Some(InstallState::Installing) => Bucket::Installing,
        Some(InstallState::Failed) => Bucket::Failed,
        _ => Bucket::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn buckets_follow_reasons_reports_and_install_state() {
        let mut status = DeviceStatus {
            install_state: Some(InstallState::Downloading),
            ..DeviceStatus::default()
        };
        let standing = |status: &DeviceStatus, reason, last: &str| {
            bucket(Standing {
                enforcement: Some("ddm.enforce.x"),
                reason,
                status: &status.clone(),
                last_report: Some(at(last)),
                assigned_at: Some(at("2026-09-01T00:00:00Z")),
                now: at("2026-09-02T00:00:00Z"),
            })
        };
        assert_eq!(
            standing(&status, None, "2026-09-01T12:00:00Z"),
            Bucket::Downloading
        );
        assert_eq!(
            standing(&status, Some(Reason::UpToDate), "2026-09-01T12:00:00Z"),
            Bucket::Compliant
        );
        assert_eq!(
            standing(&status, Some(Reason::NotSupervised), "2026-09-01T12:00:00Z"),
            Bucket::NotApplicable
        );
        // Reported before the assignment changed: it has not seen the enforcement yet.
        assert_eq!(
            standing(&status, None, "2026-08-31T23:00:00Z"),
            Bucket::Pending
        );
        status.install_state = Some(InstallState::Failed);
        assert_eq!(
            standing(&status, None, "2026-09-01T12:00:00Z"),
            Bucket::Failed
        );
        let stale = bucket(Standing {
            enforcement: None,
            reason: None,
            status: &status,
            last_report: Some(at("2026-08-30T00:00:00Z")),
            assigned_at: Some(at("2026-08-29T00:00:00Z")),
            now: at("2026-09-02T00:00:00Z"),
        });
        assert_eq!(stale, Bucket::Stale);
    }
}
