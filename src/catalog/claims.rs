//! Whether what a DDM status report claims could be true, judged against Apple's catalog. Reported
//! facts override the inventory (they are newer), so without this a forged report saying "26.99"
//! takes a device's enforcement away. Pure: the HTTP handler asks, and answers 422 when refused.
//!
//! What is refused, and what is not:
//! * a version newer than every release Apple lists for the device's model (any set: MDM,
//!   public, security) — unless its build has the beta form (`23A5276f`) and it is at most the
//!   next minor (`26.7` over `26.6.x`) or the next major's `.0`, which is what beta programs run;
//! * a version Apple lists for the model with a build Apple never gave the model (a beta-form
//!   build is a pre-release of that version, not refused; devices on a security improvement
//!   (`(a)`) report the base build, which the improvement names as its prerequisite);
//! * a report naming another model than the one this enrollment already reported or the
//!   inventory names (a device's hardware does not change).
//!
//! Not refused: versions older than the newest (Apple drops old releases from its answer), models
//! the catalog does not list, unparseable versions (they override nothing). A release Apple posted
//! after the last catalog fetch is refused until the next refresh: NanoMDM turns the 422 into a
//! check-in error and the device sends its report again later.

use std::collections::HashMap;
use std::sync::Arc;

use super::index::{Catalog, ReleaseKind};
use super::version::{Build, OsVersion, runs_prerelease};
use crate::inventory::Device;
use crate::status::DeviceStatus;

/// Why a claim was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Implausible {
    #[error(
        "{device} is reported on {claimed}, newer than every release Apple's catalog lists for it (newest {newest}); refused until a catalog refresh lists it"
    )]
    NewerThanCatalog {
        device: String,
        claimed: String,
        newest: String,
    },
    #[error(
        "{device} is reported on {version} build {build}, a build Apple never gave it (Apple lists {known})"
    )]
    UnknownBuild {
        device: String,
        version: String,
        build: String,
        known: String,
    },
    #[error("the report says {what} {reported}, but this enrollment is {known} ({origin})")]
    ModelChanged {
        what: &'static str,
        reported: String,
        known: String,
        origin: &'static str,
    },
}

impl Implausible {
    /// Every `reason` value.
    pub const REASONS: [&'static str; 3] = ["NewerThanCatalog", "UnknownBuild", "ModelChanged"];

    /// A fixed reason, for the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Implausible::NewerThanCatalog { .. } => "NewerThanCatalog",
            Implausible::UnknownBuild { .. } => "UnknownBuild",
            Implausible::ModelChanged { .. } => "ModelChanged",
        }
    }
}

/// An OS claim: the version, its supplemental extra (`(a)`), and the base build.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub version: &'a str,
    pub extra: Option<&'a str>,
    pub build: Option<&'a str>,
}

/// Whether `device_id` (a software-update device id: the product type, or a Mac's board id) can
/// run what `claim` says, per `catalog`.
pub fn plausible_claim(
    catalog: &Catalog,
    device_id: &str,
    claim: Claim<'_>,
) -> Result<(), Implausible> {
    let Ok(claimed) = OsVersion::with_extra(claim.version, claim.extra) else {
        return Ok(()); // unreadable: the pass ignores it as well
    };
    let build = claim.build.map(Build::new);
    let releases: Vec<_> = [&catalog.mdm, &catalog.public, &catalog.security]
        .into_iter()
        .flat_map(|set| {
            set.offers(device_id)
                .iter()
                .map(|offer| set.release(*offer))
        })
        .collect();
    let Some(newest) = releases.iter().map(|r| r.version.base()).max() else {
        return Ok(()); // a model Apple does not list: nothing to judge by
    };
    let base = claimed.base();
    let beta = runs_prerelease(&claimed, build.as_ref());
    if base > newest {
        let next_minor = base.major() == newest.major() && base.minor() <= newest.minor() + 1;
        let next_major = base.major() == newest.major() + 1 && base.minor() == 0;
        if beta && (next_minor || next_major) {
            return Ok(());
        }
        return Err(Implausible::NewerThanCatalog {
            device: device_id.to_string(),
            claimed: claimed.to_string(),
            newest: newest.to_string(),
        });
    }
    let Some(build) = build.filter(|_| !beta) else {
        return Ok(());
    };
    // Base builds Apple gave this model for this version: the updates' own builds, and what its
    // security improvements name as their prerequisite.
    let mut known: Vec<&Build> = releases
        .iter()
        .filter(|r| r.version.base() == base)
        .filter_map(|r| match r.kind {
            ReleaseKind::Update => r.build.as_ref(),
            ReleaseKind::SecurityImprovement => r.prerequisite_build.as_ref(),
        })
        .collect();
    if known.is_empty() || known.contains(&&build) {
        return Ok(());
    }
    known.sort();
    known.dedup();
    Err(Implausible::UnknownBuild {
        device: device_id.to_string(),
        version: claimed.to_string(),
        build: build.to_string(),
        known: known
            .iter()
            .map(|b| b.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The current [`ClaimCheck`], shared between whoever loads the catalog and the DDM status
/// handler. Empty until a catalog the operator trusts is loaded: reports are then not judged.
#[derive(Debug, Clone, Default)]
pub struct SharedClaims(Arc<std::sync::RwLock<Option<Arc<ClaimCheck>>>>);

impl SharedClaims {
    pub fn set(&self, check: Option<ClaimCheck>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = check.map(Arc::new);
    }

    pub fn get(&self) -> Option<Arc<ClaimCheck>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the DDM status handler checks reports with: the catalog in use and the inventory's
/// models. Rebuilt when either changes.
#[derive(Debug, Default)]
pub struct ClaimCheck {
    catalog: Arc<Catalog>,
    /// Enrollment id → (model identifier, software-update device id) from the inventory.
    inventory: HashMap<String, (String, Option<String>)>,
}

impl ClaimCheck {
    pub fn new(catalog: Arc<Catalog>, inventory: &[Device]) -> Self {
        ClaimCheck {
            catalog,
            inventory: inventory
                .iter()
                .map(|d| {
                    (
                        d.enrollment_id.clone(),
                        (d.model.clone(), d.software_update_device_id.clone()),
                    )
                })
                .collect(),
        }
    }

    /// Whether a report with these items claims anything this check judges (an OS version, a
    /// model): only then is the enrollment's stored state worth reading.
    pub fn judges(items: &serde_json::Map<String, serde_json::Value>) -> bool {
        items.contains_key("device")
            || items
                .get("softwareupdate")
                .and_then(serde_json::Value::as_object)
                .is_some_and(|s| s.contains_key("device-id"))
    }

    /// Checks one report of `enrollment`: `reported` is what this report says, `stored` what the
    /// enrollment reported before (merged), if anything.
    pub fn check(
        &self,
        enrollment: &str,
        reported: &DeviceStatus,
        stored: Option<&DeviceStatus>,
    ) -> Result<(), Implausible> {
        let inventory = self.inventory.get(enrollment);
        let known_model = [
            (
                stored.and_then(|s| s.model_identifier.as_deref()),
                "reported before",
            ),
            (inventory.map(|(model, _)| model.as_str()), "inventory"),
        ];
        let known_id = [
            (
                stored.and_then(|s| s.software_update_device_id.as_deref()),
                "reported before",
            ),
            (inventory.and_then(|(_, id)| id.as_deref()), "inventory"),
        ];
        for (what, claimed, known) in [
            ("model", reported.model_identifier.as_deref(), known_model),
            (
                "software-update device id",
                reported.software_update_device_id.as_deref(),
                known_id,
            ),
        ] {
            let Some(claimed) = claimed else { continue };
            for (value, source) in known {
                if let Some(value) = value
                    && value != claimed
                {
                    return Err(Implausible::ModelChanged {
                        what,
                        reported: claimed.to_string(),
                        known: value.to_string(),
                        origin: source,
                    });
                }
            }
        }
        let Some(version) = reported.os_version.as_deref() else {
            return Ok(());
        };
        // The catalog's id: the device id wherever known, else a model the catalog lists (Macs
        // are listed by board id only, so their model identifiers find nothing).
        let ids = [
            reported.software_update_device_id.as_deref(),
            known_id[0].0,
            known_id[1].0,
            reported.model_identifier.as_deref(),
            known_model[0].0,
            known_model[1].0,
        ];
        let Some(device_id) = ids
            .into_iter()
            .flatten()
            .find(|id| self.catalog.knows_device(id))
        else {
            return Ok(());
        };
        plausible_claim(
            &self.catalog,
            device_id,
            Claim {
                version,
                extra: reported.supplemental_extra.as_deref(),
                build: reported.build_version.as_deref(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{catalog_2026_03_17, catalog_2026_08_22, inventory};

    fn claim<'a>(version: &'a str, build: &'a str) -> Claim<'a> {
        Claim {
            version,
            extra: None,
            build: Some(build),
        }
    }

    fn reason(result: Result<(), Implausible>) -> &'static str {
        result.err().map_or("ok", |e| e.reason())
    }

    #[test]
    fn claims_are_judged_against_what_apple_lists_for_the_model() {
        // Apple's answer of 2026-08-22 lists iPhone15,2 up to 26.6.1 (23G83 and its twin 23G6083)
        // and the security improvement 26.3.1 (a) on top of 23D8133.
        let catalog = catalog_2026_08_22();
        let phone = |c: Claim<'_>| reason(plausible_claim(&catalog, "iPhone15,2", c));
        assert_eq!(phone(claim("26.99", "23Z99")), "NewerThanCatalog");
        assert_eq!(phone(claim("26.7", "23H20")), "NewerThanCatalog");
        assert_eq!(phone(claim("27.0", "24A300")), "NewerThanCatalog");
        assert_eq!(phone(claim("26.6.1", "23G83")), "ok");
        assert_eq!(phone(claim("26.6.1", "23G6083")), "ok");
        assert_eq!(phone(claim("26.6.1", "23G99")), "UnknownBuild");
        assert_eq!(phone(claim("26.3.1", "23D8133")), "ok");
        assert_eq!(phone(claim("26.3.1", "23D9999")), "UnknownBuild");
        let improved = Claim {
            version: "26.3.1",
            extra: Some("(a)"),
            build: Some("23D8133"),
        };
        assert_eq!(phone(improved), "ok");
        // Betas: a pre-release of a listed version, of the next minor or of the next major.
        assert_eq!(phone(claim("26.6.1", "23G5070a")), "ok");
        assert_eq!(phone(claim("26.7", "23H5010a")), "ok");
        assert_eq!(phone(claim("27.0", "24A5260a")), "ok");
        assert_eq!(phone(claim("26.99", "23Z5001a")), "NewerThanCatalog");
        assert_eq!(phone(claim("27.1", "24B5001a")), "NewerThanCatalog");
        // Old versions Apple no longer lists, models it does not list, unreadable versions.
        assert_eq!(phone(claim("17.0", "21A329")), "ok");
        assert_eq!(
            reason(plausible_claim(
                &catalog,
                "iPhone99,1",
                claim("99.0", "1A1")
            )),
            "ok"
        );
        assert_eq!(phone(claim("twenty-six", "23G83")), "ok");
        // No build: only the version is judged.
        let no_build = Claim {
            version: "26.99",
            extra: None,
            build: None,
        };
        assert_eq!(phone(no_build), "NewerThanCatalog");
    }

    #[test]
    fn a_release_apple_posted_after_the_last_fetch_is_refused_until_the_next_one() {
        // 26.6.1 (23G83) came out after Apple's answer of 2026-03-17.
        let refused = plausible_claim(
            &catalog_2026_03_17(),
            "iPhone15,2",
            claim("26.6.1", "23G83"),
        );
        assert!(
            matches!(&refused, Err(Implausible::NewerThanCatalog { newest, .. }) if newest.starts_with("26.")),
            "{refused:?}"
        );
        assert_eq!(
            plausible_claim(
                &catalog_2026_08_22(),
                "iPhone15,2",
                claim("26.6.1", "23G83")
            ),
            Ok(())
        );
    }

    #[test]
    fn the_model_comes_from_the_report_the_stored_state_or_the_inventory() {
        let devices = inventory(
            r#"
devices:
  - enrollmentId: phone
    platform: iOS
    model: iPhone15,2
    osVersion: "26.5"
  - enrollmentId: mac
    platform: macOS
    model: Mac15,3
    softwareUpdateDeviceId: J504AP
    osVersion: "26.5"
"#,
        );
        let check = ClaimCheck::new(Arc::new(catalog_2026_08_22()), &devices);
        let report = |version: &str, model: Option<&str>, device_id: Option<&str>| DeviceStatus {
            os_version: Some(version.into()),
            model_identifier: model.map(str::to_string),
            software_update_device_id: device_id.map(str::to_string),
            ..DeviceStatus::default()
        };
        // The forged report of the issue: a version alone, for an inventory device.
        let forged = check.check("phone", &report("26.99", None, None), None);
        assert_eq!(reason(forged), "NewerThanCatalog");
        assert_eq!(
            reason(check.check("mac", &report("26.99", None, None), None)),
            "NewerThanCatalog"
        );
        // Another model than the inventory's, or than the enrollment reported before.
        let swapped = check.check("phone", &report("16.7.12", Some("iPhone10,1"), None), None);
        assert_eq!(reason(swapped), "ModelChanged");
        let stored = report("26.5", Some("iPhone14,7"), Some("iPhone14,7"));
        let learned = check.check(
            "learned",
            &report("26.6.1", Some("iPhone15,2"), None),
            Some(&stored),
        );
        assert_eq!(reason(learned), "ModelChanged");
        // A device known only from its earlier reports is judged by that model.
        let stored = report("26.5", Some("iPhone15,2"), Some("iPhone15,2"));
        assert_eq!(
            reason(check.check("learned", &report("26.99", None, None), Some(&stored))),
            "NewerThanCatalog"
        );
        assert_eq!(
            reason(check.check("learned", &report("26.6.1", None, None), Some(&stored))),
            "ok"
        );
        // Nothing known about the enrollment and no model in the report: nothing to judge by.
        assert_eq!(
            reason(check.check("stranger", &report("26.99", None, None), None)),
            "ok"
        );
    }
}
