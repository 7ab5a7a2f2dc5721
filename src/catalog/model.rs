//! The pmv document exactly as Apple's Software Lookup Service sends it, and SOFA's
//! `{etag, data}` cache wrapper around it. Typed and strict: a malformed entry rejects the whole
//! document, so a bad answer can never replace a good catalog.

use jiff::civil::Date;
use serde::Deserialize;

use crate::strict::{ObjectOnly, optional_object, optional_objects};

/// The four sets a pmv response may carry. Each is optional; unknown top-level keys are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PmvDocument {
    #[serde(default, deserialize_with = "optional_object")]
    pub public_asset_sets: Option<PlatformSets>,
    #[serde(default, deserialize_with = "optional_object")]
    pub asset_sets: Option<PlatformSets>,
    #[serde(default, deserialize_with = "optional_object")]
    pub public_rapid_security_responses: Option<PlatformSets>,
    #[serde(default, deserialize_with = "optional_object")]
    pub public_background_security_improvements: Option<PlatformSets>,
}

/// Entries per platform key. `iOS` also carries iPadOS, watchOS, tvOS and HomePod; `xrOS` is the
/// pre-release name of visionOS. Other keys are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PlatformSets {
    #[serde(default, rename = "iOS", deserialize_with = "optional_objects")]
    pub ios: Option<Vec<PmvEntry>>,
    #[serde(default, rename = "macOS", deserialize_with = "optional_objects")]
    pub macos: Option<Vec<PmvEntry>>,
    #[serde(default, rename = "visionOS", deserialize_with = "optional_objects")]
    pub visionos: Option<Vec<PmvEntry>>,
    #[serde(default, rename = "xrOS", deserialize_with = "optional_objects")]
    pub xros: Option<Vec<PmvEntry>>,
}

/// One release entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PmvEntry {
    pub product_version: String,
    #[serde(default)]
    pub product_version_extra: Option<String>,
    /// Absent in some 2023-era security response entries.
    #[serde(default)]
    pub build: Option<String>,
    #[serde(default)]
    pub prerequisite_build: Option<String>,
    pub posting_date: Date,
    /// A missing expiration date means the entry does not expire.
    #[serde(default)]
    pub expiration_date: Option<Date>,
    #[serde(default)]
    pub supported_devices: Vec<String>,
}

/// Either a pmv document, or SOFA's wrapper that keeps it under `data` next to its own `etag`.
/// One pass, no buffering: the wrapper's `data` and the document's own keys are all optional.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    #[serde(default, rename = "data", deserialize_with = "optional_object")]
    sofa_data: Option<PmvDocument>,
    #[serde(default, deserialize_with = "optional_object")]
    public_asset_sets: Option<PlatformSets>,
    #[serde(default, deserialize_with = "optional_object")]
    asset_sets: Option<PlatformSets>,
    #[serde(default, deserialize_with = "optional_object")]
    public_rapid_security_responses: Option<PlatformSets>,
    #[serde(default, deserialize_with = "optional_object")]
    public_background_security_improvements: Option<PlatformSets>,
}

/// Why a catalog document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not a pmv catalog: {0}")]
    Json(#[from] serde_json::Error),
    #[error("entry {set}.{platform}[{index}]: {why}")]
    Entry {
        set: &'static str,
        platform: &'static str,
        index: usize,
        why: String,
    },
}

impl PmvDocument {
    /// Parses Apple's pmv JSON, or SOFA's `{etag, data}` wrapper around it.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ParseError> {
        let ObjectOnly(envelope) = serde_json::from_slice::<ObjectOnly<Envelope>>(bytes)?;
        let document = envelope.sofa_data.unwrap_or(PmvDocument {
            public_asset_sets: envelope.public_asset_sets,
            asset_sets: envelope.asset_sets,
            public_rapid_security_responses: envelope.public_rapid_security_responses,
            public_background_security_improvements: envelope
                .public_background_security_improvements,
        });
        document.check()?;
        Ok(document)
    }

    /// Every set with its name, in a fixed order.
    pub fn sets(&self) -> [(&'static str, Option<&PlatformSets>); 4] {
        [
            ("AssetSets", self.asset_sets.as_ref()),
            ("PublicAssetSets", self.public_asset_sets.as_ref()),
            (
                "PublicRapidSecurityResponses",
                self.public_rapid_security_responses.as_ref(),
            ),
            (
                "PublicBackgroundSecurityImprovements",
                self.public_background_security_improvements.as_ref(),
            ),
        ]
    }

    /// Number of entries per (set, platform key), for the sanity guard.
    pub fn entry_counts(&self) -> Vec<(&'static str, &'static str, usize)> {
        let mut counts = Vec::new();
        for (set, sets) in self.sets() {
            if let Some(sets) = sets {
                for (platform, entries) in sets.platforms() {
                    counts.push((set, platform, entries.len()));
                }
            }
        }
        counts
    }

    /// The newest `PostingDate` in the document: close to the day it was fetched, for copies
    /// whose fetch date is not known.
    pub fn newest_posting_date(&self) -> Option<Date> {
        self.sets()
            .into_iter()
            .filter_map(|(_, sets)| sets)
            .flat_map(|sets| sets.platforms().flat_map(|(_, entries)| entries.iter()))
            .map(|entry| entry.posting_date)
            .max()
    }

    /// Checks what serde cannot: versions and builds that parse, a non-empty device list.
    fn check(&self) -> Result<(), ParseError> {
        for (set, sets) in self.sets() {
            let Some(sets) = sets else { continue };
            for (platform, entries) in sets.platforms() {
                for (index, entry) in entries.iter().enumerate() {
                    let fail = |why: String| ParseError::Entry {
                        set,
                        platform,
                        index,
                        why,
                    };
                    super::OsVersion::with_extra(
                        &entry.product_version,
                        entry.product_version_extra.as_deref(),
                    )
                    .map_err(|e| fail(e.to_string()))?;
                    if entry.supported_devices.is_empty() {
                        return Err(fail("SupportedDevices is empty".into()));
                    }
                    if let Some(build) = &entry.build
                        && (build.trim().is_empty() || build.len() > 32)
                    {
                        return Err(fail(format!("Build {build:?} is not a build number")));
                    }
                }
            }
        }
        Ok(())
    }
}

impl PlatformSets {
    /// Present platform keys with their entries, `xrOS` under its own name.
    pub fn platforms(&self) -> impl Iterator<Item = (&'static str, &[PmvEntry])> {
        [
            ("iOS", self.ios.as_deref()),
            ("macOS", self.macos.as_deref()),
            ("visionOS", self.visionos.as_deref()),
            ("xrOS", self.xros.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, entries)| entries.map(|e| (name, e)))
    }
}
