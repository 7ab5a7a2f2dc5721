//! Fields and status parts every kind shares.

use serde::{Deserialize, Serialize};

/// What happens to devices' declarations when the resource is deleted.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// Withdraw the declarations this resource caused (the default).
    #[default]
    Withdraw,
    /// Leave what devices already have in place.
    Orphan,
}

/// The condition types the operator sets.
pub mod condition_types {
    /// Summary: everything below is true.
    pub const READY: &str = "Ready";
    /// The spec resolved against the catalog and inventory.
    pub const RESOLVED: &str = "Resolved";
    /// The backend holds what was resolved.
    pub const SYNCED: &str = "Synced";
    /// Every applicable device runs the target.
    pub const COMPLIANT: &str = "Compliant";
}
