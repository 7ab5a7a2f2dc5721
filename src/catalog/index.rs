//! The catalog indexed by software-update device id: releases merged by build, each device's
//! offers sorted newest first with that device's own expiration date.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use jiff::civil::Date;
use serde::Serialize;

use super::model::{PlatformSets, PmvDocument, PmvEntry};
use super::version::{Build, OsVersion};

/// The platform key a release was listed under in the pmv (`xrOS` folds into `visionOS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum CatalogKey {
    #[serde(rename = "iOS")]
    Ios,
    #[serde(rename = "macOS")]
    MacOs,
    #[serde(rename = "visionOS")]
    VisionOs,
}

impl CatalogKey {
    fn from_pmv(key: &str) -> Option<Self> {
        match key {
            "iOS" => Some(Self::Ios),
            "macOS" => Some(Self::MacOs),
            "visionOS" | "xrOS" => Some(Self::VisionOs),
            _ => None,
        }
    }

    /// The first major that installs a security improvement directly, without first
    /// installing its prerequisite build (iOS/iPadOS 18, macOS 15).
    pub fn direct_security_improvement_major(self) -> u32 {
        match self {
            Self::Ios => 18,
            Self::MacOs => 15,
            Self::VisionOs => 2,
        }
    }
}

/// The operating system a device runs, as platform teams name it. The pmv lists iPadOS, watchOS,
/// tvOS and HomePod software under `iOS`; only the device ids tell them apart.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub enum Platform {
    #[serde(rename = "iOS")]
    Ios,
    #[serde(rename = "iPadOS")]
    IpadOs,
    #[serde(rename = "macOS")]
    MacOs,
    #[serde(rename = "tvOS")]
    TvOs,
    #[serde(rename = "watchOS")]
    WatchOs,
    #[serde(rename = "visionOS")]
    VisionOs,
    /// HomePod software: listed by Apple, not managed through MDM.
    #[serde(rename = "audioOS")]
    AudioOs,
}

impl Platform {
    pub const ALL: [Platform; 7] = [
        Self::Ios,
        Self::IpadOs,
        Self::MacOs,
        Self::TvOs,
        Self::WatchOs,
        Self::VisionOs,
        Self::AudioOs,
    ];

    /// What a device id listed under `key` runs; `None` for ids with no known prefix.
    pub fn of_device(key: CatalogKey, device_id: &str) -> Option<Self> {
        if key == CatalogKey::MacOs {
            return Some(Self::MacOs);
        }
        const PREFIXES: [(&str, Platform); 7] = [
            ("iPhone", Platform::Ios),
            ("iPod", Platform::Ios),
            ("iPad", Platform::IpadOs),
            ("Watch", Platform::WatchOs),
            ("AppleTV", Platform::TvOs),
            ("AudioAccessory", Platform::AudioOs),
            ("RealityDevice", Platform::VisionOs),
        ];
        PREFIXES
            .iter()
            .find(|(prefix, _)| device_id.starts_with(prefix))
            .map(|(_, platform)| *platform)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ios => "iOS",
            Self::IpadOs => "iPadOS",
            Self::MacOs => "macOS",
            Self::TvOs => "tvOS",
            Self::WatchOs => "watchOS",
            Self::VisionOs => "visionOS",
            Self::AudioOs => "audioOS",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|p| p.as_str()).collect();
                format!("unknown platform {s:?} (one of {})", names.join(", "))
            })
    }
}

/// Which of Apple's asset sets full updates are chosen from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum AssetSet {
    /// `AssetSets`: everything an MDM may enforce (the default).
    #[default]
    Mdm,
    /// `PublicAssetSets`: what Software Update offers the public.
    Public,
}

/// A full update, or a security improvement applied on top of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ReleaseKind {
    Update,
    /// A Rapid Security Response or its successor, a Background Security Improvement.
    SecurityImprovement,
}

/// One release: the entries of one set that share a platform key and build, merged.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    pub key: CatalogKey,
    pub kind: ReleaseKind,
    pub version: OsVersion,
    pub build: Option<Build>,
    pub prerequisite_build: Option<Build>,
    /// The earliest `PostingDate` seen for this build across `AssetSets` and `PublicAssetSets`
    /// (the public set re-stamps dates); deadlines count from here.
    pub posting_date: Date,
    /// The latest expiration among the merged entries; `None` never expires. Per-device
    /// expiration lives in the device index.
    pub expiration_date: Option<Date>,
    pub supported_devices: Vec<Box<str>>,
}

impl Release {
    pub fn platforms(&self) -> Vec<Platform> {
        let mut platforms: Vec<Platform> = self
            .supported_devices
            .iter()
            .filter_map(|d| Platform::of_device(self.key, d))
            .collect();
        platforms.sort();
        platforms.dedup();
        platforms
    }
}

/// A release as one device may install it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offer {
    pub release: u32,
    /// This device's own expiration (the same build can expire at different dates for
    /// different devices).
    pub expires: Option<Date>,
}

/// One set's releases and the per-device index over them.
#[derive(Debug, Default)]
pub(crate) struct ReleaseSet {
    pub releases: Vec<Release>,
    /// Offers per device id, newest version first; within a version the lower build first (the
    /// mainline twin, the one security improvements name as prerequisite).
    pub by_device: HashMap<Box<str>, Vec<Offer>>,
}

impl ReleaseSet {
    pub fn offers(&self, device_id: &str) -> &[Offer] {
        self.by_device.get(device_id).map_or(&[], Vec::as_slice)
    }

    pub fn release(&self, offer: Offer) -> &Release {
        &self.releases[offer.release as usize]
    }
}

/// Apple's catalog, indexed for resolution. Built once per fetched document; read-only after.
#[derive(Debug, Default)]
pub struct Catalog {
    pub(crate) mdm: ReleaseSet,
    pub(crate) public: ReleaseSet,
    /// Rapid Security Responses and Background Security Improvements together.
    pub(crate) security: ReleaseSet,
    /// The day this copy was fetched, when known. Apple rolls expiration dates forward daily,
    /// so a copy's dates are judged as of that day, not today.
    as_of: Option<Date>,
}

/// Each supported device with its own expiration date.
type DeviceExpiry = BTreeMap<Box<str>, Option<Date>>;

/// Entries of one set that share a (platform key, build) while being merged.
struct Pending {
    release: Release,
    device_expiry: DeviceExpiry,
}

impl Catalog {
    pub fn from_document(document: &PmvDocument) -> Self {
        // Keyed by build: the `iOS` key also carries watchOS and tvOS releases that share version
        // numbers with iOS, and twins are separate releases.
        let mut earliest: HashMap<(CatalogKey, String), Date> = HashMap::new();
        for sets in [&document.asset_sets, &document.public_asset_sets]
            .into_iter()
            .flatten()
        {
            for (key, entry) in keyed_entries(sets) {
                if let Ok(version) = entry_version(entry) {
                    earliest
                        .entry((key, release_identity(entry, &version)))
                        .and_modify(|d| *d = (*d).min(entry.posting_date))
                        .or_insert(entry.posting_date);
                }
            }
        }
        let security: Vec<&PlatformSets> = [
            &document.public_rapid_security_responses,
            &document.public_background_security_improvements,
        ]
        .into_iter()
        .flatten()
        .collect();
        Catalog {
            mdm: build_set(document.asset_sets.iter(), ReleaseKind::Update, &earliest),
            public: build_set(
                document.public_asset_sets.iter(),
                ReleaseKind::Update,
                &earliest,
            ),
            security: build_set(
                security.into_iter(),
                ReleaseKind::SecurityImprovement,
                &earliest,
            ),
            as_of: None,
        }
    }

    /// Parses and indexes a pmv document (or SOFA's wrapper).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, super::ParseError> {
        Ok(Self::from_document(&PmvDocument::from_slice(bytes)?))
    }

    /// Marks the day this copy was fetched (see [`Catalog::expiry_day`]).
    pub fn with_as_of(mut self, day: Date) -> Self {
        self.as_of = Some(day);
        self
    }

    /// The day expiration dates are judged on: `today`, or the day the copy was fetched if that
    /// is earlier (a stale copy's dates would otherwise expire builds Apple still signs).
    pub fn expiry_day(&self, today: Date) -> Date {
        self.as_of.map_or(today, |as_of| as_of.min(today))
    }

    pub(crate) fn set(&self, asset_set: AssetSet) -> &ReleaseSet {
        match asset_set {
            AssetSet::Mdm => &self.mdm,
            AssetSet::Public => &self.public,
        }
    }

    /// Releases of one set, in catalog order (platform key, then newest first).
    pub fn releases(&self, asset_set: AssetSet) -> &[Release] {
        &self.set(asset_set).releases
    }

    pub fn security_improvements(&self) -> &[Release] {
        &self.security.releases
    }

    pub fn is_empty(&self) -> bool {
        self.mdm.releases.is_empty()
            && self.public.releases.is_empty()
            && self.security.releases.is_empty()
    }

    /// True when some set lists this device id.
    pub fn knows_device(&self, device_id: &str) -> bool {
        [&self.mdm, &self.public, &self.security]
            .iter()
            .any(|set| set.by_device.contains_key(device_id))
    }

    /// Every device id the catalog lists, sorted, with the platform it runs.
    pub fn device_ids(&self) -> Vec<(&str, Platform)> {
        let mut ids: BTreeMap<&str, Platform> = BTreeMap::new();
        for set in [&self.mdm, &self.public] {
            for release in &set.releases {
                for device in &release.supported_devices {
                    if let Some(platform) = Platform::of_device(release.key, device) {
                        ids.insert(device, platform);
                    }
                }
            }
        }
        ids.into_iter().collect()
    }
}

/// What identifies one release within a platform key: its build, or its version where Apple
/// gave no build (some 2023 security responses).
fn release_identity(entry: &PmvEntry, version: &OsVersion) -> String {
    entry.build.clone().unwrap_or_else(|| version.to_string())
}

fn entry_version(entry: &PmvEntry) -> Result<OsVersion, super::VersionError> {
    OsVersion::with_extra(
        &entry.product_version,
        entry.product_version_extra.as_deref(),
    )
}

fn keyed_entries(sets: &PlatformSets) -> impl Iterator<Item = (CatalogKey, &PmvEntry)> {
    sets.platforms().flat_map(|(name, entries)| {
        CatalogKey::from_pmv(name)
            .into_iter()
            .flat_map(move |key| entries.iter().map(move |e| (key, e)))
    })
}

fn build_set<'a>(
    sets: impl Iterator<Item = &'a PlatformSets>,
    kind: ReleaseKind,
    earliest: &HashMap<(CatalogKey, String), Date>,
) -> ReleaseSet {
    // Merge duplicates: the same build can be listed several times with disjoint device lists
    // and different expirations, and under both `xrOS` and `visionOS`.
    let mut pending: BTreeMap<(CatalogKey, String), Pending> = BTreeMap::new();
    for sets in sets {
        for (key, entry) in keyed_entries(sets) {
            let Ok(version) = entry_version(entry) else {
                continue; // `PmvDocument::check` already refused such documents
            };
            let identity = release_identity(entry, &version);
            let posting_date = earliest
                .get(&(key, identity.clone()))
                .copied()
                .unwrap_or(entry.posting_date)
                .min(entry.posting_date);
            let merged = pending.entry((key, identity)).or_insert_with(|| Pending {
                release: Release {
                    key,
                    kind,
                    posting_date,
                    version,
                    build: entry.build.as_deref().map(Build::new),
                    prerequisite_build: entry.prerequisite_build.as_deref().map(Build::new),
                    expiration_date: entry.expiration_date,
                    supported_devices: Vec::new(),
                },
                device_expiry: BTreeMap::new(),
            });
            merged.release.posting_date = merged.release.posting_date.min(entry.posting_date);
            merged.release.expiration_date =
                later_expiry(merged.release.expiration_date, entry.expiration_date);
            for device in &entry.supported_devices {
                let device = device.trim();
                if device.is_empty() {
                    continue;
                }
                merged
                    .device_expiry
                    .entry(device.into())
                    .and_modify(|e| *e = later_expiry(*e, entry.expiration_date))
                    .or_insert(entry.expiration_date);
            }
        }
    }

    let mut releases: Vec<(Release, DeviceExpiry)> = pending
        .into_values()
        .map(|mut p| {
            p.release.supported_devices = p.device_expiry.keys().cloned().collect();
            (p.release, p.device_expiry)
        })
        .collect();
    releases.sort_by(|(a, _), (b, _)| newest_first(a, b));

    let mut by_device: HashMap<Box<str>, Vec<Offer>> = HashMap::new();
    for (index, (_, expiry)) in releases.iter().enumerate() {
        for (device, expires) in expiry {
            by_device.entry(device.clone()).or_default().push(Offer {
                release: u32::try_from(index).unwrap_or(u32::MAX),
                expires: *expires,
            });
        }
    }
    // A device can be listed under two keys (visionOS builds once sat under `iOS` too), so sort
    // each device's offers across keys.
    for offers in by_device.values_mut() {
        offers.sort_by(|a, b| {
            let (a, b) = (
                &releases[a.release as usize].0,
                &releases[b.release as usize].0,
            );
            b.version
                .cmp(&a.version)
                .then_with(|| a.build.cmp(&b.build))
        });
    }
    ReleaseSet {
        releases: releases.into_iter().map(|(r, _)| r).collect(),
        by_device,
    }
}

fn newest_first(a: &Release, b: &Release) -> std::cmp::Ordering {
    a.key
        .cmp(&b.key)
        .then_with(|| b.version.cmp(&a.version))
        .then_with(|| a.build.cmp(&b.build))
}

/// `None` means "never expires", so it wins.
fn later_expiry(a: Option<Date>, b: Option<Date>) -> Option<Date> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    }
}
