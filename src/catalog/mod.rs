//! Apple's software catalog (the Software Lookup Service, `gdmf.apple.com/v2/pmv`): parsing,
//! per-device indexing, applicability, the sanity guard against bad answers, and fetching.

mod applicable;
pub mod claims;
pub mod fetch;
pub mod guard;
pub mod holdover;
mod index;
mod lists;
mod model;
mod version;

pub use applicable::{Answer, Choice, DeviceOs, NoTarget, Query, Strategy};
pub use claims::{Claim, ClaimCheck, Implausible, SharedClaims, plausible_claim};
pub use index::{AssetSet, Catalog, CatalogKey, Platform, Release, ReleaseKind};
pub use lists::usable_set;
pub use model::{ParseError, PlatformSets, PmvDocument, PmvEntry};
pub use version::{Build, OsVersion, VersionError, runs_at_least, runs_prerelease};

/// The UTC calendar date of a moment: catalog expiration dates are compared with it.
pub fn utc_date(at: jiff::Timestamp) -> jiff::civil::Date {
    at.to_zoned(jiff::tz::TimeZone::UTC).date()
}
