//! Which releases one device can install at a given date, and which of them a strategy picks.
//! Pure and allocation-free on the hot path: the resolver calls it once per device.

use std::fmt;
use std::str::FromStr;

use jiff::civil::Date;
use serde::Serialize;

use super::index::{AssetSet, Catalog, Offer, Release, ReleaseKind, ReleaseSet};
use super::version::{Build, OsVersion, runs_at_least};

/// How a target version is chosen for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// The newest release the device can install.
    Latest,
    /// The newest release within the major the device runs now.
    LatestMinor,
    /// `pinned:X.Y[.Z]`: exactly that version; `pinned:X`: the newest X.*.
    Pinned(OsVersion),
    /// `major-behind:N`: the newest release of the Nth major below the newest major the
    /// catalog offers the device, counting majors as they appear (after 18 comes 26).
    MajorBehind(u32),
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s {
            "latest" => return Ok(Self::Latest),
            "latest-minor" => return Ok(Self::LatestMinor),
            _ => {}
        }
        if let Some(version) = s.strip_prefix("pinned:") {
            let version: OsVersion = version.parse().map_err(|e| format!("{e}"))?;
            if version.extra().is_some() {
                return Err(format!(
                    "pin {version:?} without the extra; security improvements are chosen with the security-improvements switch"
                ));
            }
            return Ok(Self::Pinned(version));
        }
        if let Some(n) = s.strip_prefix("major-behind:") {
            return n
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= 10)
                .map(Self::MajorBehind)
                .ok_or_else(|| format!("major-behind takes a number from 0 to 10, not {n:?}"));
        }
        Err(format!(
            "unknown strategy {s:?} (latest, latest-minor, pinned:X[.Y[.Z]], major-behind:N)"
        ))
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latest => f.write_str("latest"),
            Self::LatestMinor => f.write_str("latest-minor"),
            Self::Pinned(v) => write!(f, "pinned:{v}"),
            Self::MajorBehind(n) => write!(f, "major-behind:{n}"),
        }
    }
}

/// What the device runs now.
#[derive(Debug, Clone, Copy)]
pub struct DeviceOs<'a> {
    /// Software-update device id: a board id such as `J314sAP` for Macs, a product type such
    /// as `iPhone15,2` otherwise.
    pub device_id: &'a str,
    /// The running version, including a supplemental extra such as `(a)`.
    pub version: &'a OsVersion,
    /// The running (base) build, when known.
    pub build: Option<&'a Build>,
}

impl DeviceOs<'_> {
    /// Whether `release` would take the device further: newer than what it runs, or the release
    /// of the version whose beta it runs.
    pub fn would_move(&self, release: &OsVersion) -> bool {
        !runs_at_least(self.version, self.build, release)
    }
}

/// The choices that do not depend on the device.
#[derive(Debug, Clone)]
pub struct Query {
    pub strategy: Strategy,
    pub asset_set: AssetSet,
    /// Offer Rapid Security Responses / Background Security Improvements.
    pub security_improvements: bool,
    /// Entries whose expiration date is before this date cannot be installed.
    pub on: Date,
}

/// Why a device gets no target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum NoTarget {
    /// Runs the strategy's answer or newer.
    UpToDate,
    /// The catalog does not list the device id in any set.
    DeviceNotInCatalog,
    /// Newer releases exist for the device, but all have expired.
    NoSignedRelease,
    /// The catalog lists the device, but nothing it offers matches the strategy (a pin to a
    /// version the device cannot get, or fewer majors than `major-behind` asks for).
    NoMatchingRelease,
}

impl NoTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpToDate => "UpToDate",
            Self::DeviceNotInCatalog => "DeviceNotInCatalog",
            Self::NoSignedRelease => "NoSignedRelease",
            Self::NoMatchingRelease => "NoMatchingRelease",
        }
    }
}

impl fmt::Display for NoTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A release chosen for a device.
#[derive(Debug, Clone, Copy)]
pub struct Choice<'c> {
    pub release: &'c Release,
    /// This device's expiration date for the release.
    pub expires: Option<Date>,
    /// The device must install this base release before the security improvement it was
    /// chosen for (in a candidate list: the release needs its base first).
    pub two_step: bool,
    /// With `two_step` from `resolve`: the security improvement that follows the base, with this
    /// device's expiration date for it.
    pub then: Option<(&'c Release, Option<Date>)>,
}

impl PartialEq for Choice<'_> {
    fn eq(&self, other: &Self) -> bool {
        let then = |c: &Self| c.then.map(|(r, e)| (std::ptr::from_ref(r), e));
        std::ptr::eq(self.release, other.release)
            && self.expires == other.expires
            && self.two_step == other.two_step
            && then(self) == then(other)
    }
}

/// The target for one device, or why there is none.
pub type Answer<'c> = Result<Choice<'c>, NoTarget>;

/// Which releases a strategy allows, before comparing with what the device runs.
#[derive(Debug, Clone, Copy)]
enum Scope<'q> {
    Any,
    Major(u32),
    Exactly(&'q OsVersion),
}

impl Scope<'_> {
    fn allows(self, version: &OsVersion) -> bool {
        match self {
            Scope::Any => true,
            Scope::Major(major) => version.major() == major,
            Scope::Exactly(pin) => version.base() == *pin,
        }
    }
}

/// The first usable offer in scope (offers are newest first), and whether an expired offer in
/// scope newer than the device was passed over on the way.
struct Scan<'c> {
    best: Option<(Offer, &'c Release)>,
    newest_expired: Option<&'c Release>,
    /// Some offer, expired or not, was in scope.
    any_in_scope: bool,
}

fn scan<'c>(set: &'c ReleaseSet, offers: &'c [Offer], scope: Scope<'_>, on: Date) -> Scan<'c> {
    let mut newest_expired = None;
    for offer in offers {
        let release = set.release(*offer);
        if !scope.allows(&release.version) {
            continue;
        }
        if is_expired(offer.expires, on) {
            newest_expired.get_or_insert(release);
            continue;
        }
        return Scan {
            best: Some((*offer, release)),
            newest_expired,
            any_in_scope: true,
        };
    }
    Scan {
        best: None,
        any_in_scope: newest_expired.is_some(),
        newest_expired,
    }
}

/// An entry can be installed up to and including its expiration date.
fn is_expired(expires: Option<Date>, on: Date) -> bool {
    expires.is_some_and(|e| e < on)
}

impl Catalog {
    /// The release the strategy chooses for this device at `query.on`, or why there is none.
    pub fn resolve<'c>(&'c self, device: DeviceOs<'_>, query: &Query) -> Answer<'c> {
        self.resolve_met(device, query).map_err(|(why, _)| why)
    }

    /// `resolve`, and for a device that is `UpToDate` because it runs the strategy's answer (or
    /// something newer), that answer: the release the device meets. `None` beside other
    /// reasons, and where the device is up to date only because nothing in scope is installable.
    pub fn resolve_met<'c>(
        &'c self,
        device: DeviceOs<'_>,
        query: &Query,
    ) -> Result<Choice<'c>, (NoTarget, Option<Choice<'c>>)> {
        let set = self.set(query.asset_set);
        let offers = set.offers(device.device_id);
        let security = if query.security_improvements {
            self.security.offers(device.device_id)
        } else {
            &[]
        };
        if offers.is_empty() && security.is_empty() {
            return Err((
                if self.knows_device(device.device_id) {
                    NoTarget::NoMatchingRelease
                } else {
                    NoTarget::DeviceNotInCatalog
                },
                None,
            ));
        }

        let scope = match &query.strategy {
            Strategy::Latest => Scope::Any,
            Strategy::LatestMinor => Scope::Major(device.version.major()),
            Strategy::Pinned(pin) if pin_is_major(pin) => Scope::Major(pin.major()),
            Strategy::Pinned(pin) => Scope::Exactly(pin),
            Strategy::MajorBehind(n) => match nth_major(set, offers, *n, query.on) {
                Some(major) => Scope::Major(major),
                None => return Err((NoTarget::NoMatchingRelease, None)),
            },
        };

        let full = scan(set, offers, scope, query.on);
        let mut choice = full.best.map(|(offer, release)| Choice {
            release,
            expires: offer.expires,
            two_step: false,
            then: None,
        });
        let mut newest_expired = full.newest_expired;
        let mut any_in_scope = full.any_in_scope;
        // A newer security improvement the device cannot reach (its base is not offered).
        let mut unreachable_patch = false;

        if !security.is_empty() {
            let patch = scan(&self.security, security, scope, query.on);
            if let Some((offer, release)) = patch.best
                && choice.is_none_or(|c| release.version > c.release.version)
            {
                match security_route(set, offers, device, release, offer, query.on) {
                    Some(via) => choice = Some(via),
                    None => unreachable_patch = device.would_move(&release.version),
                }
            }
            newest_expired = newer_of(newest_expired, patch.newest_expired);
            any_in_scope |= patch.any_in_scope;
        }

        match choice {
            Some(choice) if device.would_move(&choice.release.version) => Ok(choice),
            _ if newest_expired.is_some_and(|r| device.would_move(&r.version)) => {
                Err((NoTarget::NoSignedRelease, None))
            }
            Some(met) => Err((NoTarget::UpToDate, Some(met))),
            // Everything in scope has expired and none of it is newer than the device.
            None if any_in_scope && !unreachable_patch => Err((NoTarget::UpToDate, None)),
            None => match scope {
                Scope::Exactly(pin) if !device.would_move(pin) => Err((NoTarget::UpToDate, None)),
                Scope::Major(major) if major < device.version.major() => {
                    Err((NoTarget::UpToDate, None))
                }
                _ => Err((NoTarget::NoMatchingRelease, None)),
            },
        }
    }

    /// Every release the device could install now within the strategy's scope and newer than
    /// what it runs, newest first. Security improvements are listed when asked for, with
    /// `two_step` set where the device must first reach the prerequisite build.
    pub fn candidates<'c>(&'c self, device: DeviceOs<'_>, query: &Query) -> Vec<Choice<'c>> {
        let set = self.set(query.asset_set);
        let scope = match &query.strategy {
            Strategy::Latest => Scope::Any,
            Strategy::LatestMinor => Scope::Major(device.version.major()),
            Strategy::Pinned(pin) if pin_is_major(pin) => Scope::Major(pin.major()),
            Strategy::Pinned(pin) => Scope::Exactly(pin),
            Strategy::MajorBehind(n) => {
                match nth_major(set, set.offers(device.device_id), *n, query.on) {
                    Some(major) => Scope::Major(major),
                    None => return Vec::new(),
                }
            }
        };
        let mut sets = vec![set];
        if query.security_improvements {
            sets.push(&self.security);
        }
        let mut out: Vec<Choice<'c>> = Vec::new();
        for source in sets {
            for offer in source.offers(device.device_id) {
                let release = source.release(*offer);
                if !scope.allows(&release.version)
                    || is_expired(offer.expires, query.on)
                    || !device.would_move(&release.version)
                {
                    continue;
                }
                let two_step = release.kind == ReleaseKind::SecurityImprovement
                    && !installs_directly(device, release);
                // A patch whose base cannot be installed is out of reach.
                if two_step
                    && security_route(
                        set,
                        set.offers(device.device_id),
                        device,
                        release,
                        *offer,
                        query.on,
                    )
                    .is_none()
                {
                    continue;
                }
                out.push(Choice {
                    release,
                    expires: offer.expires,
                    two_step,
                    then: None,
                });
            }
        }
        out.sort_by(|a, b| {
            b.release
                .version
                .cmp(&a.release.version)
                .then_with(|| a.release.build.cmp(&b.release.build))
        });
        out
    }
}

fn pin_is_major(pin: &OsVersion) -> bool {
    pin.numeric().split('.').count() == 1
}

/// The Nth distinct major below the newest among the device's installable full releases.
fn nth_major(set: &ReleaseSet, offers: &[Offer], n: u32, on: Date) -> Option<u32> {
    let mut seen = 0u32;
    let mut last = None;
    for offer in offers {
        if is_expired(offer.expires, on) {
            continue;
        }
        let major = set.release(*offer).version.major();
        if last != Some(major) {
            if last.is_some() {
                seen += 1;
            }
            last = Some(major);
            if seen == n {
                return Some(major);
            }
        }
    }
    None
}

fn newer_of<'c>(a: Option<&'c Release>, b: Option<&'c Release>) -> Option<&'c Release> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.version > a.version { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// A device on iOS/iPadOS 18, macOS 15 or later installs a security improvement directly (its
/// base comes with it); so does a device already on the prerequisite build.
fn installs_directly(device: DeviceOs<'_>, patch: &Release) -> bool {
    if device.version.major() >= patch.key.direct_security_improvement_major() {
        return true;
    }
    match (&patch.prerequisite_build, device.build) {
        (Some(prerequisite), Some(running)) => prerequisite == running,
        (None, _) => device.version.base() == patch.version.base(),
        _ => false,
    }
}

/// How the device reaches a security improvement: directly, or through its base release
/// (`two_step`). `None` when the base cannot be installed, so the patch is out of reach.
fn security_route<'c>(
    set: &'c ReleaseSet,
    offers: &[Offer],
    device: DeviceOs<'_>,
    patch: &'c Release,
    patch_offer: Offer,
    on: Date,
) -> Option<Choice<'c>> {
    if installs_directly(device, patch) {
        return Some(Choice {
            release: patch,
            expires: patch_offer.expires,
            two_step: false,
            then: None,
        });
    }
    let prerequisite = patch.prerequisite_build.as_ref()?;
    offers
        .iter()
        .map(|offer| (offer, set.release(*offer)))
        .find(|(offer, base)| {
            base.build.as_ref() == Some(prerequisite) && !is_expired(offer.expires, on)
        })
        .filter(|(_, base)| device.would_move(&base.version))
        .map(|(offer, base)| Choice {
            release: base,
            expires: offer.expires,
            two_step: true,
            then: Some((patch, patch_offer.expires)),
        })
}

impl Catalog {
    /// How many builds of exactly `version` the set offers this device (twin builds count
    /// separately): a build can only be named where there is one.
    pub fn builds_of(&self, asset_set: AssetSet, device_id: &str, version: &OsVersion) -> usize {
        count_builds(self.set(asset_set), device_id, version)
    }

    /// `builds_of` for security improvements.
    pub fn security_builds_of(&self, device_id: &str, version: &OsVersion) -> usize {
        count_builds(&self.security, device_id, version)
    }

    /// The newest version any set lists for this device, expired or not: a version above it is
    /// one Apple has not released (yet).
    pub fn newest_listed(&self, device_id: &str) -> Option<&OsVersion> {
        [&self.mdm, &self.public, &self.security]
            .into_iter()
            .filter_map(|set| {
                // Offers are sorted newest first.
                set.offers(device_id)
                    .first()
                    .map(|offer| &set.release(*offer).version)
            })
            .max()
    }
}

fn count_builds(set: &ReleaseSet, device_id: &str, version: &OsVersion) -> usize {
    set.offers(device_id)
        .iter()
        .filter(|offer| set.release(**offer).version == *version)
        .count()
}
