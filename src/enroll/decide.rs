//! The gate's decision, pure: MachineInfo + the resources + the catalog → let the device enroll,
//! require an update first, or fall back to the policy's `failurePolicy`.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;

use super::machine_info::MachineInfo;
use super::response::require_beta_program_supported;
use crate::api::FailurePolicy;
use crate::api::validate::{CheckedGate, CheckedGroup, CheckedPolicy, MinimumVersion, ObjectKey};
use crate::catalog::{
    Build, Catalog, OsVersion, Platform, runs_at_least, runs_prerelease, usable_set,
};
use crate::inventory::{Device, EnrollmentType};
use crate::resolve::{Reason, Required, lowest_at_least, policy_target, selects};

/// What the gate decides from: published by every resolver pass.
#[derive(Debug, Clone)]
pub struct GateView {
    groups: Vec<CheckedGroup>,
    /// Policies with an enrollment gate, and their gates.
    policies: Vec<CheckedPolicy>,
    gates: Vec<CheckedGate>,
    /// Known devices (inventory and reports), for labels and enrollment ids.
    devices: Arc<Vec<Device>>,
    by_serial: HashMap<String, u32>,
    /// The catalog, or why the gate cannot trust one now.
    catalog: Result<Arc<Catalog>, String>,
    /// Built from a resolver pass (not the placeholder before the first one).
    ready: bool,
}

impl GateView {
    /// Before the first pass: nothing is known, so nothing can be decided.
    pub fn unavailable(why: &str) -> Self {
        GateView {
            groups: Vec::new(),
            policies: Vec::new(),
            gates: Vec::new(),
            devices: Arc::default(),
            by_serial: HashMap::new(),
            catalog: Err(why.to_string()),
            ready: false,
        }
    }

    pub fn new(
        groups: &[CheckedGroup],
        policies: &[CheckedPolicy],
        devices: Arc<Vec<Device>>,
        catalog: Result<Arc<Catalog>, String>,
    ) -> Self {
        let (policies, gates): (Vec<CheckedPolicy>, Vec<CheckedGate>) = policies
            .iter()
            .filter(|p| !p.suspend)
            .filter_map(|p| Some((p.clone(), p.enrollment.clone()?)))
            .unzip();
        // Devices are only looked up when a gate exists.
        let by_serial = if policies.is_empty() {
            HashMap::new()
        } else {
            devices
                .iter()
                .enumerate()
                .filter_map(|(i, d)| Some((d.serial_number.clone()?, u32::try_from(i).ok()?)))
                .collect()
        };
        GateView {
            groups: groups.to_vec(),
            policies,
            gates,
            devices,
            by_serial,
            catalog,
            ready: true,
        }
    }

    /// Whether any policy gates enrollment.
    pub fn gates(&self) -> bool {
        !self.policies.is_empty()
    }

    /// Whether the view came from a resolver pass.
    pub fn is_ready(&self) -> bool {
        self.ready
    }
}

/// What the gate answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No policy with a gate applies to the device.
    Ungated,
    /// The device runs every applicable minimum or newer.
    Allowed,
    /// Below a minimum (or undecidable) but the device cannot be told to update during setup:
    /// it enrolls and the declarations take it there afterwards.
    CannotUpdate,
    /// HTTP 403 `com.apple.softwareupdate.required`.
    UpdateRequired {
        required: Required,
        /// The beta program's description: only where the policy names one, the required
        /// release is a pre-release and the device's OS takes `RequireBetaProgram`.
        beta_program: Option<String>,
    },
    /// The gate could not decide and the policy's `failurePolicy: Open` lets the device enroll.
    FailedOpen(String),
    /// The gate could not decide and `failurePolicy: Closed` answers 503.
    FailedClosed(String),
}

impl Verdict {
    /// Every `as_str` value.
    pub const NAMES: [&'static str; 6] = [
        "Ungated",
        "Allowed",
        "CannotUpdate",
        "UpdateRequired",
        "FailedOpen",
        "FailedClosed",
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Ungated => "Ungated",
            Verdict::Allowed => "Allowed",
            Verdict::CannotUpdate => "CannotUpdate",
            Verdict::UpdateRequired { .. } => "UpdateRequired",
            Verdict::FailedOpen(_) => "FailedOpen",
            Verdict::FailedClosed(_) => "FailedClosed",
        }
    }
}

/// A decision and the policy that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The deciding policy; `None` when no gate applies.
    pub policy: Option<ObjectKey>,
    /// The device as the gate understood it (for messages).
    pub platform: Option<Platform>,
    pub running: Option<String>,
}

/// One policy's answer before they are combined.
enum PolicyAnswer {
    Allowed,
    /// Update to this release; `true` when it is a pre-release the device reaches through the
    /// policy's beta program.
    Update(Required, bool),
    Failed(String),
}

/// Decides for one MachineInfo.
pub fn decide(view: &GateView, info: &MachineInfo, now: Timestamp) -> Decision {
    let device = device_from(view, info);
    let (device, why_unknown) = match device {
        Ok(device) => (Some(device), None),
        Err(why) => (None, Some(why)),
    };
    let applicable: Vec<(usize, usize)> = match &device {
        Some(device) => applicable_policies(view, device),
        // The device cannot be placed from what it says (unknown product, no OS version): its
        // groups are those of the inventory entry under its serial, or those that list the
        // serial; their gates' failure policies decide. A device nobody knows is not gated.
        None => match known(view, &info.serial) {
            Some(entry) => applicable_policies(view, entry),
            None => applicable_by_serial(view, &info.serial),
        },
    };
    let running = info
        .os_version
        .as_ref()
        .map(|v| match &info.supplemental_extra {
            Some(extra) => format!("{v} {extra} ({})", info.build),
            None => format!("{v} ({})", info.build),
        });
    let decision = |verdict: Verdict, policy: Option<usize>| Decision {
        verdict,
        policy: policy.map(|p| view.policies[p].key.clone()),
        platform: device.as_ref().map(|d| d.platform),
        running: running.clone(),
    };
    if applicable.is_empty() {
        return decision(Verdict::Ungated, None);
    }

    let mut answers: Vec<(usize, PolicyAnswer)> = Vec::with_capacity(applicable.len());
    for (p, ring) in &applicable {
        let answer = match (&device, &why_unknown) {
            (Some(device), _) => answer(
                view,
                &view.policies[*p],
                &view.gates[*p],
                *ring,
                device,
                now,
            ),
            (None, Some(why)) => PolicyAnswer::Failed(why.clone()),
            (None, None) => PolicyAnswer::Failed("the device could not be identified".into()),
        };
        answers.push((*p, answer));
    }

    // The strictest requirement wins: the highest version any policy requires.
    let strictest = answers
        .iter()
        .filter_map(|(p, a)| match a {
            PolicyAnswer::Update(required, beta) => Some((*p, required, *beta)),
            _ => None,
        })
        .max_by(|(pa, a, _), (pb, b, _)| a.version.cmp(&b.version).then(pb.cmp(pa)));
    let failed = |closed: bool| {
        answers.iter().find_map(|(p, a)| match a {
            PolicyAnswer::Failed(why)
                if (view.gates[*p].failure_policy == FailurePolicy::Closed) == closed =>
            {
                Some((*p, why.clone()))
            }
            _ => None,
        })
    };
    let (verdict, policy) = if let Some((p, required, beta)) = strictest {
        // Apple: "The device remains in the beta program after the system completes the
        // enforced software update" (softwareupdate.required.yaml), so only a pre-release the
        // policy asks for takes the device there, never a release.
        let beta_program = beta.then(|| view.gates[p].beta_program.clone()).flatten();
        (
            Verdict::UpdateRequired {
                required: required.clone(),
                beta_program,
            },
            p,
        )
    } else if let Some((p, why)) = failed(true) {
        (Verdict::FailedClosed(why), p)
    } else if let Some((p, why)) = failed(false) {
        (Verdict::FailedOpen(why), p)
    } else {
        (Verdict::Allowed, answers[0].0)
    };
    // Only a device that says it can be told to update during setup is held.
    let verdict = match verdict {
        Verdict::UpdateRequired { .. } | Verdict::FailedClosed(_) | Verdict::FailedOpen(_)
            if !info.can_request_update =>
        {
            Verdict::CannotUpdate
        }
        other => other,
    };
    decision(verdict, Some(policy))
}

/// What one policy requires of the device.
fn answer(
    view: &GateView,
    policy: &CheckedPolicy,
    gate: &CheckedGate,
    ring: usize,
    device: &Device,
    now: Timestamp,
) -> PolicyAnswer {
    if let MinimumVersion::Version(minimum) = &gate.minimum
        && runs_at_least(&device.os_version, device.build_version.as_ref(), minimum)
    {
        return PolicyAnswer::Allowed;
    }
    let catalog = match &view.catalog {
        Ok(catalog) => catalog,
        Err(why) => return PolicyAnswer::Failed(why.clone()),
    };
    // The same lists the declarations choose from (before macOS 15, a Mac only the public one).
    let (asset_set, _) = usable_set(
        policy.asset_set,
        device.platform,
        &device.os_version,
        device.supervised,
    );
    let target = policy_target(catalog, policy, ring, device, asset_set, now);
    let model = device.catalog_device_id().unwrap_or(&device.model);
    let not_in_catalog = || format!("{model} is not in Apple's catalog");
    let update = |required: Required| {
        let beta = gate.beta_program.is_some()
            && runs_prerelease(&required.version, required.build.as_ref());
        PolicyAnswer::Update(required, beta)
    };
    match (&gate.minimum, target) {
        (MinimumVersion::Target, Ok(required)) => update(required),
        (MinimumVersion::Target, Err((Reason::UpToDate, _))) => PolicyAnswer::Allowed,
        (_, Err((Reason::DeviceNotInCatalog, _))) => PolicyAnswer::Failed(not_in_catalog()),
        (_, Err((Reason::DeviceIdUnknown, _))) => PolicyAnswer::Failed(format!(
            "{model} sent no SOFTWARE_UPDATE_DEVICE_ID (macOS before 14.4) and the inventory has no board id for it"
        )),
        (MinimumVersion::Target, Err((reason, detail))) => PolicyAnswer::Failed(format!(
            "no target for {model}: {} ({detail})",
            reason.as_str()
        )),
        (MinimumVersion::Version(minimum), target) => match target {
            Ok(required) if required.version >= *minimum => update(required),
            // The policy's own target is below the minimum (or the device already runs it):
            // the smallest release that meets the minimum.
            _ => match lowest_at_least(
                catalog,
                device,
                asset_set,
                policy.security_improvements,
                minimum,
                now,
            ) {
                Some(required) => update(required),
                None => prerelease(catalog, gate, device, model, minimum),
            },
        },
    }
}

/// A minimum above every release Apple lists for the device can only be a pre-release: with a
/// beta program named by the policy (the explicit intent), the device is required to reach it
/// through that program where its OS takes `RequireBetaProgram`.
fn prerelease(
    catalog: &Catalog,
    gate: &CheckedGate,
    device: &Device,
    model: &str,
    minimum: &OsVersion,
) -> PolicyAnswer {
    let unreleased = device
        .catalog_device_id()
        .and_then(|id| catalog.newest_listed(id))
        .is_some_and(|newest| newest < minimum);
    match (&gate.beta_program, unreleased) {
        (Some(_), true) if require_beta_program_supported(device.platform, &device.os_version) => {
            PolicyAnswer::Update(
                Required {
                    version: minimum.clone(),
                    build: None,
                },
                true,
            )
        }
        (Some(_), true) => PolicyAnswer::Failed(format!(
            "{minimum} is not released for {model}, and {} {} cannot be enrolled in a beta program during setup (RequireBetaProgram: iOS 17.5, macOS 14.5, visionOS 26)",
            device.platform, device.os_version
        )),
        _ => PolicyAnswer::Failed(format!(
            "Apple offers {model} no release of at least {minimum} now"
        )),
    }
}

/// The device as the resolver sees it: what MachineInfo says, plus what the inventory knows
/// (labels, supervision, enrollment id) under the same serial.
fn device_from(view: &GateView, info: &MachineInfo) -> Result<Device, String> {
    let platform = platform_of(&info.product)
        .ok_or_else(|| format!("product {:?} is not a known Apple device", info.product))?;
    let version = info.os_version.as_deref().ok_or_else(|| {
        "MachineInfo has no OS_VERSION (sent from iOS 17 and macOS 14)".to_string()
    })?;
    let with_extra = match &info.supplemental_extra {
        Some(extra) if !extra.is_empty() => format!("{version} {extra}"),
        _ => version.to_string(),
    };
    let os_version: OsVersion = with_extra
        .parse()
        .map_err(|e| format!("OS_VERSION {version:?}: {e}"))?;
    let known = known(view, &info.serial);
    Ok(Device {
        enrollment_id: known
            .map(|d| d.enrollment_id.clone())
            .or_else(|| info.udid.clone())
            .unwrap_or_else(|| info.serial.clone()),
        serial_number: Some(info.serial.clone()),
        platform,
        model: info.product.clone(),
        software_update_device_id: info
            .software_update_device_id
            .clone()
            .filter(|id| !id.is_empty())
            .or_else(|| known.and_then(|d| d.software_update_device_id.clone())),
        os_version,
        build_version: Some(Build::new(&info.build)),
        // Automated Device Enrollment supervises.
        supervised: true,
        enrollment_type: EnrollmentType::Device,
        labels: known.map(|d| d.labels.clone()).unwrap_or_default(),
        bootstrap_token: known.map(|d| d.bootstrap_token).unwrap_or_default(),
    })
}

/// The inventory's device with this serial number.
fn known<'v>(view: &'v GateView, serial: &str) -> Option<&'v Device> {
    view.by_serial
        .get(serial)
        .and_then(|i| view.devices.get(*i as usize))
}

/// The platform from the product type.
pub fn platform_of(product: &str) -> Option<Platform> {
    let family: String = product
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    let rest = &product[family.len()..];
    // A product type is a family followed by `major,minor`.
    let (major, minor) = rest.split_once(',')?;
    if major.is_empty()
        || minor.is_empty()
        || !major.bytes().all(|b| b.is_ascii_digit())
        || !minor.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    match family.as_str() {
        "iPhone" | "iPod" => Some(Platform::Ios),
        "iPad" => Some(Platform::IpadOs),
        "AppleTV" => Some(Platform::TvOs),
        "Watch" => Some(Platform::WatchOs),
        "RealityDevice" => Some(Platform::VisionOs),
        "Mac" | "MacBookPro" | "MacBookAir" | "MacBook" | "iMac" | "iMacPro" | "Macmini"
        | "MacPro" | "VirtualMac" => Some(Platform::MacOs),
        _ => None,
    }
}

/// Gated policies whose groups select the device, each with the first ring naming it.
fn applicable_policies(view: &GateView, device: &Device) -> Vec<(usize, usize)> {
    policies_of_groups(view, |g| selects(g, device))
}

/// Gated policies with a group that lists the serial number.
fn applicable_by_serial(view: &GateView, serial: &str) -> Vec<(usize, usize)> {
    policies_of_groups(view, |g| g.serial_numbers.iter().any(|s| s == serial))
}

/// Gated policies naming a group `chosen` accepts, each with the first ring that does.
fn policies_of_groups(
    view: &GateView,
    chosen: impl Fn(&CheckedGroup) -> bool,
) -> Vec<(usize, usize)> {
    let keys: Vec<&ObjectKey> = view
        .groups
        .iter()
        .filter(|g| chosen(g))
        .map(|g| &g.key)
        .collect();
    view.policies
        .iter()
        .enumerate()
        .filter_map(|(p, policy)| {
            policy
                .rings
                .iter()
                .position(|ring| ring.groups.iter().any(|g| keys.contains(&g)))
                .map(|ring| (p, ring))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_from_product_types() {
        for (product, platform) in [
            ("iPhone17,1", Some(Platform::Ios)),
            ("iPod9,1", Some(Platform::Ios)),
            ("iPad16,3", Some(Platform::IpadOs)),
            ("AppleTV14,1", Some(Platform::TvOs)),
            ("RealityDevice14,1", Some(Platform::VisionOs)),
            ("Mac16,1", Some(Platform::MacOs)),
            ("MacBookPro18,3", Some(Platform::MacOs)),
            ("VirtualMac2,1", Some(Platform::MacOs)),
            ("Watch7,1", Some(Platform::WatchOs)),
            ("iPhone", None),
            ("iPhone17", None),
            ("iPhone17,", None),
            ("iPhone,1", None),
            ("Toaster1,1", None),
            ("", None),
            ("J514sAP", None),
        ] {
            assert_eq!(platform_of(product), platform, "{product}");
        }
    }

    const SNAPSHOT: &[u8] = include_bytes!("../../tests/fixtures/gdmf/pmv-2026-08-22.json");

    /// One gate over everything: `latest`, with `enrollment` as given.
    fn view(enrollment: &str) -> GateView {
        let text = format!(
            "apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {{name: all, namespace: it}}
spec: {{}}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {{name: gate, namespace: it}}
spec:
  fleetGroups: [all]
  target: {{strategy: latest}}
  deadline: {{daysAfterPosting: 7}}
  enrollment: {enrollment}
"
        );
        let checked =
            crate::manifests::check_str("gate.yaml", &text).unwrap_or_else(|p| panic!("{p:?}"));
        let catalog = Catalog::from_slice(SNAPSHOT)
            .expect("the snapshot")
            .with_as_of(jiff::civil::date(2026, 8, 22));
        GateView::new(
            &checked.groups,
            &checked.policies,
            Arc::default(),
            Ok(Arc::new(catalog)),
        )
    }

    fn info(product: &str, board: &str, version: &str, build: &str) -> MachineInfo {
        MachineInfo {
            serial: "S".into(),
            product: product.into(),
            build: build.into(),
            os_version: Some(version.into()),
            can_request_update: true,
            software_update_device_id: Some(board.into()),
            ..MachineInfo::default()
        }
    }

    fn verdict(view: &GateView, info: &MachineInfo) -> Verdict {
        let now: Timestamp = "2026-08-22T12:00:00Z".parse().expect("a time");
        decide(view, info, now).verdict
    }

    fn required(version: &str, build: Option<&str>, beta: Option<&str>) -> Verdict {
        Verdict::UpdateRequired {
            required: Required {
                version: version.parse().expect("a version"),
                build: build.map(Build::new),
            },
            beta_program: beta.map(str::to_string),
        }
    }

    /// Apple: the device "remains in the beta program after the system completes the enforced
    /// software update", so a release is required without it; only a minimum Apple has not
    /// released (a pre-release the policy asks for by naming a program) takes it there.
    #[test]
    fn the_beta_program_goes_only_with_a_prerelease_the_policy_asks_for() {
        let beta = "betaProgram: {description: IT seed}";
        // A Mac on macOS 14: the policy's target, from the public list (`PublicAssetSets
        // macOS 26.6.2 25G83`, one build for J514sAP), without the program.
        let mac_14 = info("Mac15,3", "J514sAP", "14.6", "23G80");
        let gate = view(&format!("{{minimumVersion: '15.0', {beta}}}"));
        assert_eq!(verdict(&gate, &mac_14), required("26.6.2", None, None));

        // 27.0 is above everything Apple lists for J514sAP (26.6.2) and iPhone15,2 (26.6.1).
        let gate = view(&format!(
            "{{minimumVersion: '27.0', failurePolicy: Closed, {beta}}}"
        ));
        let mac_15 = info("Mac15,3", "J514sAP", "15.7.9", "24G830");
        assert_eq!(
            verdict(&gate, &mac_15),
            required("27.0", None, Some("IT seed"))
        );
        // RequireBetaProgram needs iOS 17.5 (softwareupdate.required.yaml).
        let old_phone = info("iPhone15,2", "iPhone15,2", "17.4", "21E219");
        assert!(matches!(
            verdict(&gate, &old_phone),
            Verdict::FailedClosed(why) if why.contains("RequireBetaProgram")
        ));
        let phone = info("iPhone15,2", "iPhone15,2", "17.5", "21F79");
        assert_eq!(
            verdict(&gate, &phone),
            required("27.0", None, Some("IT seed"))
        );
        // Without a program named, a minimum nobody can install is a failure, as before.
        let gate = view("{minimumVersion: '27.0', failurePolicy: Closed}");
        assert!(matches!(
            verdict(&gate, &phone),
            Verdict::FailedClosed(why) if why.contains("no release of at least 27.0")
        ));
    }

    #[test]
    fn a_beta_of_the_minimum_does_not_meet_it_and_the_bare_extra_reads() {
        let gate = view("{minimumVersion: '26.6.1'}");
        // `AssetSets iOS 26.6.1 23G83` and its twin `23G6083`: no build is named.
        let beta = info("iPhone15,2", "iPhone15,2", "26.6.1", "23G5070a");
        assert_eq!(verdict(&gate, &beta), required("26.6.1", None, None));
        let release = info("iPhone15,2", "iPhone15,2", "26.6.1", "23G83");
        assert_eq!(verdict(&gate, &release), Verdict::Allowed);
        // `SUPPLEMENTAL_OS_VERSION_EXTRA` as a bare letter (Apple: "version letter").
        let patched = MachineInfo {
            supplemental_extra: Some("a".into()),
            ..release
        };
        let target = view("{minimumVersion: Target, failurePolicy: Closed}");
        assert_eq!(verdict(&target, &patched), Verdict::Allowed);
        let decision = decide(&target, &patched, Timestamp::UNIX_EPOCH);
        assert_eq!(decision.running.as_deref(), Some("26.6.1 a (23G83)"));
    }

    #[test]
    fn before_the_first_pass_the_view_is_not_ready_after_it_is() {
        assert!(!GateView::unavailable("starting").is_ready());
        let view = GateView::new(&[], &[], Arc::default(), Err("no catalog".into()));
        assert!(view.is_ready());
        assert!(!view.gates());
        let info = MachineInfo {
            serial: "S".into(),
            product: "iPhone15,2".into(),
            build: "22G86".into(),
            os_version: Some("18.6".into()),
            can_request_update: true,
            ..MachineInfo::default()
        };
        assert_eq!(
            decide(&view, &info, Timestamp::UNIX_EPOCH).verdict,
            Verdict::Ungated
        );
    }
}
