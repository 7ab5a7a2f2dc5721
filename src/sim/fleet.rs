//! A fleet drawn from Apple's catalog: models the catalog lists, each running a release the
//! catalog offers for it, so a server under test sees real device ids, versions and builds.

use std::collections::HashMap;
use std::sync::Arc;

use super::device::{DeviceSpec, FailureMode, OfferedUpdate, OsState, SimDevice};
use super::{SimError, items};
use crate::catalog::{AssetSet, Catalog, Platform, Release};

/// How a fleet is drawn.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Platforms to draw from (default: the ones software-update enforcement exists for).
    pub platforms: Vec<Platform>,
    /// Devices, per thousand, whose installs always fail.
    pub failing_per_mille: u32,
    /// Devices, per thousand, that are not supervised.
    pub unsupervised_per_mille: u32,
    /// Send the unsubscribed `device.*` items in the first report.
    pub report_unsubscribed_device_items: bool,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            platforms: vec![
                Platform::Ios,
                Platform::IpadOs,
                Platform::MacOs,
                Platform::TvOs,
                Platform::VisionOs,
            ],
            failing_per_mille: 0,
            unsupervised_per_mille: 0,
            report_unsubscribed_device_items: false,
        }
    }
}

/// A set of simulated devices.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub devices: Vec<SimDevice>,
}

/// SplitMix64: small, fast, and the same sequence everywhere for a seed.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    fn per_mille(&mut self, threshold: u32) -> bool {
        (self.next_u64() % 1000) < u64::from(threshold)
    }

    fn hex(&mut self, digits: usize) -> String {
        (0..digits)
            .map(|_| {
                let nibble = (self.next_u64() & 0xf) as u32;
                char::from_digit(nibble, 16)
                    .unwrap_or('0')
                    .to_ascii_uppercase()
            })
            .collect()
    }
}

impl Fleet {
    pub fn new(devices: Vec<SimDevice>) -> Self {
        Fleet { devices }
    }

    /// `n` devices drawn from the catalog with the default options; the same seed gives the
    /// same fleet.
    pub fn from_catalog(catalog: &Catalog, n: usize, seed: u64) -> Result<Fleet, SimError> {
        Self::from_catalog_with(catalog, n, seed, &FleetOptions::default())
    }

    /// `n` devices: a device id the catalog lists (uniformly), running a release of
    /// `AssetSets` that lists it (uniformly, so some already run the newest), offered every
    /// `AssetSets` release and security improvement that lists it. Only releases that speak
    /// DDM (iOS 15, macOS 13, tvOS 16, visionOS 1.1) are drawn: older devices never check in.
    pub fn from_catalog_with(
        catalog: &Catalog,
        n: usize,
        seed: u64,
        options: &FleetOptions,
    ) -> Result<Fleet, SimError> {
        let mut installable: HashMap<&str, Vec<&Release>> = HashMap::new();
        for release in catalog.releases(AssetSet::Mdm) {
            if release.build.is_none() {
                continue;
            }
            for device in &release.supported_devices {
                let speaks_ddm = Platform::of_device(release.key, device)
                    .is_some_and(|p| items::ddm_available(p, &release.version));
                if speaks_ddm {
                    installable.entry(device).or_default().push(release);
                }
            }
        }
        let candidates: Vec<(&str, Platform)> = catalog
            .device_ids()
            .into_iter()
            .filter(|(id, platform)| {
                options.platforms.contains(platform) && installable.contains_key(id)
            })
            .collect();
        if candidates.is_empty() {
            return Err(SimError::Config(
                "the catalog lists no device of the requested platforms in AssetSets".into(),
            ));
        }

        let mut offers: HashMap<&str, Arc<[OfferedUpdate]>> = HashMap::new();
        let mut rng = Rng::new(seed);
        let mut devices = Vec::with_capacity(n);
        for index in 0..n {
            let (device_id, platform) = candidates[rng.below(candidates.len())];
            let releases = installable.get(device_id).map_or(&[][..], Vec::as_slice);
            let Some(release) = releases.get(rng.below(releases.len())) else {
                continue;
            };
            let build = release
                .build
                .as_ref()
                .map(|b| b.as_str().to_string())
                .unwrap_or_default();
            let offered = offers
                .entry(device_id)
                .or_insert_with(|| offered_updates(catalog, device_id))
                .clone();
            let udid = format!("0000{}-{}", rng.hex(4), rng.hex(16));
            let model = if platform == Platform::MacOs {
                // The catalog lists Macs by board id; the model identifier is made up.
                let h = rng.next_u64();
                format!("Mac{},{}", 13 + h % 4, 1 + (h >> 8) % 20)
            } else {
                device_id.to_string()
            };
            let mut spec =
                DeviceSpec::new(&udid, platform, &model, &release.version.numeric(), &build)?;
            spec.os = OsState {
                version: release.version.base(),
                build,
                supplemental: None,
            };
            spec.software_update_device_id = Some(device_id.to_string());
            spec.offered_updates = offered;
            spec.supervised = !rng.per_mille(options.unsupervised_per_mille);
            if rng.per_mille(options.failing_per_mille) {
                spec.failure_mode = FailureMode::Always;
            }
            spec.report_unsubscribed_device_items = options.report_unsubscribed_device_items;
            // Four characters of the derived serial and the index keep serials unique.
            let prefix: String = spec.serial_number.chars().take(4).collect();
            spec.serial_number = format!("{prefix}{index:06}");
            devices.push(SimDevice::new(spec));
        }
        Ok(Fleet { devices })
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

/// What Apple's servers offer one device: `AssetSets` releases and security improvements.
fn offered_updates(catalog: &Catalog, device_id: &str) -> Arc<[OfferedUpdate]> {
    offered_from(catalog, device_id, &[AssetSet::Mdm])
}

/// What Apple's servers offer one device from these asset sets, plus security improvements
/// (which are public); a build listed in several sets is offered once.
pub(crate) fn offered_from(
    catalog: &Catalog,
    device_id: &str,
    asset_sets: &[AssetSet],
) -> Arc<[OfferedUpdate]> {
    let mut seen = std::collections::HashSet::new();
    asset_sets
        .iter()
        .flat_map(|set| catalog.releases(*set))
        .chain(catalog.security_improvements())
        .filter(|r| r.supported_devices.iter().any(|d| &**d == device_id))
        .filter_map(|r| {
            Some(OfferedUpdate {
                version: r.version.clone(),
                build: r.build.as_ref()?.as_str().to_string(),
                prerequisite_build: r
                    .prerequisite_build
                    .as_ref()
                    .map(|b| b.as_str().to_string()),
            })
        })
        .filter(|offer| seen.insert(offer.build.clone()))
        .collect::<Vec<_>>()
        .into()
}
