//! A device simulator for Declarative Device Management: the device side of the protocol as
//! Apple's schemas describe it (`declarative/protocol/*.yaml`, `declarative/status/*.yaml`),
//! spoken over NanoMDM's `-dm` hand-off contract. Integration tests drive the operator's DDM
//! endpoints with it, and `ddm-device-sim` turns a catalog into a fleet for load runs.
//!
//! # One check-in ([`SimDevice::sync`])
//!
//! `GET tokens` → when `DeclarationsToken` differs from the stored one, `GET declaration-items`
//! → `GET declaration/<activation|configuration|asset|management>/<Identifier>` for every
//! declaration whose Identifier is new or whose ServerToken changed → declarations no longer
//! listed are dropped → the set is applied (activations activate the configurations they name)
//! → `PUT status` when there is something to report. The stored token only advances when every
//! listed declaration was fetched, so a 404 in the middle of a sync is retried on the next one.
//! Every request carries `X-Enrollment-ID` (and `X-Enrollment-Type: Device`, as NanoMDM sends);
//! with a request key, `X-Hmac-Signature: base64(HMAC-SHA256(key, body))` (empty body for GETs);
//! with a response key, the same header is required and checked on every response.
//!
//! # What the device reports, and when
//!
//! * **Implicit items.** `management.client-capabilities` (its schema: "an implicit status
//!   subscription for this status item is always present") and `management.declarations`
//!   (real reports carry it with no subscription configured: see
//!   `tests/fixtures/ddm-status/kmfddm-*.json`, where no status-subscriptions declaration
//!   exists) are always reported.
//! * **Subscribed items.** Every other item is reported only while an *active*
//!   `com.apple.configuration.management.status-subscriptions` names it (`apply: combined`,
//!   `set-union`), and only where the item's schema makes it available for this platform, OS
//!   version and enrollment (`softwareupdate.*` need supervision on macOS). Items the simulator
//!   does not model, or that the OS does not offer, are left out silently: Apple documents no
//!   reason code for "not supported" in `StatusReport.Errors`.
//! * [`DeviceSpec::report_unsubscribed_device_items`] (off by default) additionally sends the
//!   `device.*` identity items seen unsubscribed in a real macOS 13 first report.
//! * **First report** (and after [`SimDevice::request_full_report`], the 24-hour "safety
//!   sync"): `FullReport: true` with the current value of every reportable item; the whole
//!   subscription set is known at that point because the report is sent after the declarations
//!   of the same check-in are applied. `FullReport` only exists from iOS/tvOS 17 and macOS 14
//!   (the key's own `supportedOS`); older devices send the same complete report without it.
//! * **Later reports** are incremental: only items whose value changed since the last
//!   acknowledged report, or that became reportable (a new subscription, an item the new OS
//!   offers). No report is sent when nothing changed. `management.declarations` is always sent
//!   whole (all four arrays), since its entries have no `_removed` marker to express a removal.
//! * Values follow the real reports: `supplemental.extra-version` is `"(a)"` (the schema's
//!   example says `a`, every captured report says `(a)`), empty when no supplemental is
//!   installed, and `supplemental.build-version` is the running build including any
//!   supplemental (the base build when there is none).
//!
//! # Applying declarations
//!
//! A configuration no activation names is `active: false, valid: "unknown"` with
//! `Info.NotReferencedByActivation` (as in the captured kmfddm report); one an activation
//! names is checked on the spot: unsupported type/OS/enrollment → `Error.ConfigurationNotSupported`,
//! malformed payload → `Error.ConfigurationCannotBeDeserialized` (or `Error.UnknownPayloadKeys`).
//! An enforcement for a version the device already runs, or an older one, is
//! `valid: "invalid"` with `Error.ConfigurationCannotBeApplied` and `details.Error` worded as
//! devices word it (`… Invalid declaration: target OS version (15.7) is older than current
//! version (15.7.7)`, Fleet's guide quoting a device). Validity is decided when a declaration is
//! activated (or its ServerToken changes), not re-checked after every install: the declaration
//! that took a device to its target stays `valid` until the server withdraws it.
//!
//! # Installing ([`SimDevice::advance`])
//!
//! Each call moves one step: `none → downloading → prepared → installing → (restart) none`,
//! with `pending-version`, `install-reason` (`declaration` + `declaration-id`) and, for
//! enforced updates, `pending-version.target-local-date-time`. Among active, valid enforcements
//! still above the running OS, the earliest `TargetLocalDateTime` is processed first (then the
//! identifier). With [`DeviceSpec::local_time`] set, `prepared` waits for the deadline.
//! `TargetBuildVersion` picks the build when the catalog agrees it belongs to
//! `TargetOSVersion` (or the catalog does not know it); when the catalog puts that build under a
//! different version, `TargetOSVersion` wins, as the enforcement schema says. A two-part target
//! (`26.3`) installs the newest offered `26.3.x`. A supplemental target (`… (a)`, named by a
//! build such as `23D771330a`) sets `supplemental.extra-version`/`build-version`; before
//! iOS 18/macOS 15 it needs the base release first (invalid otherwise). A [`FailureMode`] sends
//! the install to `failed` with `failure-reason {count, reason, timestamp}`; a failed install is
//! retried after [`RETRY_AFTER_ADVANCES`] further steps.
//!
//! # Fleets and runs
//!
//! [`Fleet::from_catalog`] draws device ids from `Catalog::device_ids()` and a running release
//! from `AssetSets` for each (only releases that speak DDM: iOS 15, macOS 13, tvOS 16,
//! visionOS 1.1); each device is offered the `AssetSets` releases and security improvements
//! that list it. Macs get their board id as `softwareupdate.device-id` and a made-up
//! `MacNN,N` model identifier (the catalog has no model identifiers for Macs).
//! [`Fleet::run`] advances and checks in every device once per round, `concurrency` at a time,
//! and summarises requests, failures, install states and latency percentiles.

mod client;
mod device;
pub mod enroll;
mod fleet;
mod items;
mod json;
mod run;
pub mod timeline;

#[cfg(test)]
mod tests;

pub use client::{ServerConfig, http_client, sign, verify_signature};
pub use device::{
    DeclarationState, DeviceSpec, FailureMode, HeldEnforcement, InstallState, OfferedUpdate,
    OsState, RETRY_AFTER_ADVANCES, SimDevice, Supplemental, SyncOutcome,
};
pub use fleet::{Fleet, FleetOptions};
pub use run::{LatencySummary, RunOptions, RunSummary};

/// Why a check-in failed, or a simulator input was refused.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A simulator input (URL, version, catalog) is unusable.
    #[error("{0}")]
    Config(String),
    /// The request could not be sent or its answer not read.
    #[error("{endpoint}: {source}")]
    Http {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a status other than 200 (or 404 for a listed declaration).
    #[error("{endpoint}: HTTP {status}")]
    Status { endpoint: String, status: u16 },
    /// The response signature is missing or wrong.
    #[error("{endpoint}: response signature {why}")]
    Signature { endpoint: String, why: &'static str },
    /// The server broke the protocol (malformed body, mismatched identifier or token).
    #[error("{endpoint}: {why}")]
    Protocol { endpoint: String, why: String },
}

impl SimError {
    /// A fixed label for summaries and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SimError::Config(_) => "config",
            SimError::Http { .. } => "http",
            SimError::Status { .. } => "status",
            SimError::Signature { .. } => "signature",
            SimError::Protocol { .. } => "protocol",
        }
    }
}
