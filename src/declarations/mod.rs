//! DDM declarations as devices receive them, built from resolved decisions: software-update
//! enforcement, the merged settings, status subscriptions and the activation naming them all.
//! Identifiers and server tokens are derived from content, so unchanged content keeps its token
//! and identical declarations are shared across devices.

mod settings;
mod subscriptions;

use serde::Serialize;
use sha2::{Digest, Sha256};

pub use settings::{MergedSettings, settings_payload, settings_supported};
pub use subscriptions::{
    STATUS_ITEMS, ddm_supported, items_of_mask, status_items_for, status_items_for_device,
    status_items_mask,
};

use crate::catalog::{OsVersion, Platform};
use crate::inventory::{Device, EnrollmentType};

pub const ENFORCEMENT_TYPE: &str = "com.apple.configuration.softwareupdate.enforcement.specific";
pub const SETTINGS_TYPE: &str = "com.apple.configuration.softwareupdate.settings";
pub const SUBSCRIPTIONS_TYPE: &str = "com.apple.configuration.management.status-subscriptions";
pub const ACTIVATION_TYPE: &str = "com.apple.activation.simple";

/// Apple limits identifiers and server tokens to 64 octets.
pub const MAX_TOKEN_OCTETS: usize = 64;

/// One declaration, serialised exactly as the device receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Declaration {
    #[serde(rename = "Type")]
    pub declaration_type: &'static str,
    #[serde(rename = "Identifier")]
    pub identifier: String,
    #[serde(rename = "ServerToken")]
    pub server_token: String,
    #[serde(rename = "Payload")]
    pub payload: serde_json::Value,
}

impl Declaration {
    /// A declaration whose server token hashes its type, identifier and payload.
    pub fn new(
        declaration_type: &'static str,
        identifier: String,
        payload: serde_json::Value,
    ) -> Self {
        let server_token = content_hash(&[
            declaration_type.as_bytes(),
            identifier.as_bytes(),
            payload.to_string().as_bytes(),
        ]);
        Declaration {
            declaration_type,
            identifier,
            server_token,
            payload,
        }
    }

    /// A declaration identified by a prefix and the hash of its payload.
    pub fn hashed(
        declaration_type: &'static str,
        prefix: &str,
        payload: serde_json::Value,
    ) -> Self {
        let hash = content_hash(&[declaration_type.as_bytes(), payload.to_string().as_bytes()]);
        Self::new(
            declaration_type,
            format!("{prefix}.{}", &hash[..16]),
            payload,
        )
    }

    pub fn is_configuration(&self) -> bool {
        self.declaration_type
            .starts_with("com.apple.configuration.")
    }
}

/// 32 hex digits of SHA-256 over the parts, each length-prefixed so boundaries count.
pub fn content_hash(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The operating system name Apple's schemas use for a platform.
pub fn schema_os(platform: Platform) -> &'static str {
    match platform {
        Platform::Ios | Platform::IpadOs => "iOS",
        Platform::MacOs => "macOS",
        Platform::TvOs | Platform::AudioOs => "tvOS",
        Platform::WatchOs => "watchOS",
        Platform::VisionOs => "visionOS",
    }
}

/// Why a device cannot take a software-update declaration at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsupported {
    /// The declaration needs supervision (or a device enrollment) this device lacks.
    NotSupervised,
    /// The device's OS does not know the declaration.
    OsTooOld,
}

/// Whether a device can take an enforcement declaration (Apple's schema:
/// iOS 17 supervised or device enrollment; macOS 14 supervised; tvOS 18.4 and visionOS 26
/// supervised or device enrollment; never watchOS).
pub fn enforcement_supported(device: &Device) -> Result<(), Unsupported> {
    let (introduced, supervision_required) = match device.platform {
        Platform::Ios | Platform::IpadOs => ((17, 0), false),
        Platform::MacOs => ((14, 0), true),
        Platform::TvOs => ((18, 4), false),
        Platform::VisionOs => ((26, 0), false),
        Platform::WatchOs | Platform::AudioOs => return Err(Unsupported::OsTooOld),
    };
    check_channel(device, introduced, supervision_required)
}

/// Apple's schemas list `supervised`/`device` enrollments; a user enrollment never qualifies.
fn check_channel(
    device: &Device,
    introduced: (u32, u32),
    supervision_required: bool,
) -> Result<(), Unsupported> {
    if device.enrollment_type == EnrollmentType::User
        || (supervision_required && !device.supervised)
    {
        return Err(Unsupported::NotSupervised);
    }
    if !at_least(&device.os_version, introduced) {
        return Err(Unsupported::OsTooOld);
    }
    Ok(())
}

/// `version` is `major.minor` or later (no parsing on the per-device path).
pub fn at_least(version: &OsVersion, (major, minor): (u32, u32)) -> bool {
    (version.major(), version.minor()) >= (major, minor)
}

/// The enforcement declaration for one (version, build, deadline, details URL).
pub fn enforcement(
    version: &OsVersion,
    build: Option<&str>,
    local_deadline: jiff::civil::DateTime,
    details_url: Option<&str>,
) -> Declaration {
    let deadline = local_deadline.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    let mut payload = serde_json::Map::new();
    // Apple's TargetOSVersion is the plain version; a supplemental release is named by its build.
    payload.insert("TargetOSVersion".into(), version.numeric().into());
    if let Some(build) = build {
        payload.insert("TargetBuildVersion".into(), build.into());
    }
    payload.insert("TargetLocalDateTime".into(), deadline.clone().into());
    if let Some(url) = details_url {
        payload.insert("DetailsURL".into(), url.into());
    }
    let payload = serde_json::Value::Object(payload);
    let mut identifier = format!(
        "ddm.enforce.{}-{}-{}",
        version.numeric(),
        build.unwrap_or("any"),
        local_deadline.strftime("%Y%m%dT%H%M")
    );
    if details_url.is_some() || identifier.len() > MAX_TOKEN_OCTETS {
        let hash = content_hash(&[payload.to_string().as_bytes()]);
        identifier = if identifier.len() + 9 <= MAX_TOKEN_OCTETS {
            format!("{identifier}-{}", &hash[..8])
        } else {
            format!("ddm.enforce.{hash}")
        };
    }
    Declaration::new(ENFORCEMENT_TYPE, identifier, payload)
}

/// The status subscriptions declaration for the items this device's OS offers.
pub fn status_subscriptions(device: &Device) -> Declaration {
    let items: Vec<serde_json::Value> = status_items_for_device(device)
        .map(|name| serde_json::json!({ "Name": name }))
        .collect();
    Declaration::hashed(
        SUBSCRIPTIONS_TYPE,
        "ddm.status",
        serde_json::json!({ "StatusItems": items }),
    )
}

/// The activation naming every configuration (sorted, so the same set gives the same bytes).
pub fn activation(configuration_identifiers: &[&str]) -> Declaration {
    let mut identifiers: Vec<&str> = configuration_identifiers.to_vec();
    identifiers.sort_unstable();
    identifiers.dedup();
    Declaration::hashed(
        ACTIVATION_TYPE,
        "ddm.activation",
        serde_json::json!({ "StandardConfigurations": identifiers }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadline() -> jiff::civil::DateTime {
        jiff::civil::date(2026, 9, 1).at(19, 0, 0, 0)
    }

    #[test]
    fn same_content_same_token_and_identifier() {
        let version: OsVersion = "26.3.1".parse().expect("valid");
        let a = enforcement(&version, Some("25D2128"), deadline(), None);
        let b = enforcement(&version, Some("25D2128"), deadline(), None);
        assert_eq!(a, b);
        assert_eq!(a.identifier, "ddm.enforce.26.3.1-25D2128-20260901T1900");
        assert_eq!(a.payload["TargetLocalDateTime"], "2026-09-01T19:00:00");
        let c = enforcement(&version, Some("25D2140"), deadline(), None);
        assert_ne!(a.server_token, c.server_token);
        assert!(a.server_token.len() <= MAX_TOKEN_OCTETS);
    }

    #[test]
    fn long_identifiers_fall_back_to_a_hash() {
        let version: OsVersion = "26.3.1".parse().expect("valid");
        let long_build = "B".repeat(40);
        let d = enforcement(
            &version,
            Some(&long_build),
            deadline(),
            Some("https://example.com"),
        );
        assert!(d.identifier.len() <= MAX_TOKEN_OCTETS, "{}", d.identifier);
        let with_url = enforcement(&version, None, deadline(), Some("https://example.com/a"));
        let other_url = enforcement(&version, None, deadline(), Some("https://example.com/b"));
        assert_ne!(with_url.identifier, other_url.identifier);
    }

    #[test]
    fn activation_ignores_order() {
        let a = activation(&["b", "a"]);
        let b = activation(&["a", "b", "a"]);
        assert_eq!(a, b);
        assert_eq!(
            a.payload["StandardConfigurations"],
            serde_json::json!(["a", "b"])
        );
    }
}
