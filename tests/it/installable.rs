//! Only what the device can install (issue 11, item 4), checked against Apple's own files: the
//! status schemas and the 403 schema under `tests/fixtures/apple-schemas/` (read at run time),
//! and `plan` on real catalog snapshots under `tests/fixtures/gdmf/` for devices of every
//! kind: supervised or not, Macs before and after macOS 15, a beta build, a device below the
//! base of a security improvement. Every expected release below was read out of the snapshot
//! JSON by hand (the lines are quoted where used).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ddm_update_operator::catalog::{OsVersion, Platform};
use ddm_update_operator::declarations::{STATUS_ITEMS, status_items_for_device};
use ddm_update_operator::enroll::response::require_beta_program_introduced;
use ddm_update_operator::inventory::{Device, EnrollmentType};
use serde_json::Value;

use crate::apple_schema::{self, Target};
use crate::support::process::plan_json;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn schemas() -> PathBuf {
    Path::new(MANIFEST_DIR).join("tests/fixtures/apple-schemas")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()))
}

fn version(text: &str) -> OsVersion {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} is a version: {e}"))
}

/// The schemas' OS names with a platform each runs.
const SCHEMA_OSES: [(&str, Platform); 5] = [
    ("iOS", Platform::Ios),
    ("macOS", Platform::MacOs),
    ("tvOS", Platform::TvOs),
    ("visionOS", Platform::VisionOs),
    ("watchOS", Platform::WatchOs),
];

/// `introduced` for one OS of a `supportedOS`, `None` where it is `n/a` or missing.
fn introduced(supported: &Value, os: &str) -> Option<String> {
    supported[os]["introduced"]
        .as_str()
        .filter(|v| *v != "n/a")
        .map(str::to_string)
}

fn device(platform: Platform, running: &str, supervised: bool, kind: EnrollmentType) -> Device {
    Device {
        enrollment_id: "X".into(),
        serial_number: None,
        platform,
        model: "Model1,1".into(),
        software_update_device_id: Some("X".into()),
        os_version: version(running),
        build_version: None,
        supervised,
        enrollment_type: kind,
        labels: BTreeMap::new(),
        bootstrap_token: Default::default(),
    }
}

/// Every status item the operator subscribes to, on every OS and for every enrollment, exactly
/// as Apple's status schema files allow it (`supportedOS.<OS>.introduced` and
/// `allowed-enrollments`): `softwareupdate.pending-version` on tvOS 18.4 and visionOS 26, too.
#[test]
fn status_subscriptions_follow_each_status_items_schema_on_every_platform() {
    let mut items: BTreeMap<&str, Value> = BTreeMap::new();
    for (name, availability) in STATUS_ITEMS {
        let schema = yaml(
            &schemas()
                .join("declarative/status")
                .join(format!("{name}.yaml")),
        );
        let supported = schema["payload"]["supportedOS"].clone();
        for (column, (os, _)) in SCHEMA_OSES.iter().enumerate() {
            // The code's table lists iOS, macOS, tvOS, visionOS, watchOS in that order too.
            assert_eq!(
                availability[column].map(str::to_string),
                introduced(&supported, os),
                "{name} on {os}: the table disagrees with {name}.yaml"
            );
        }
        items.insert(name, supported);
    }
    let pending = &items["softwareupdate.pending-version"];
    assert_eq!(introduced(pending, "tvOS").as_deref(), Some("18.4"));
    assert_eq!(introduced(pending, "visionOS").as_deref(), Some("26.0"));

    // Devices of every kind, on each version some item was introduced in and on a late one.
    let kinds = [
        ("supervised", true, EnrollmentType::Ade),
        ("device", false, EnrollmentType::Device),
        ("user", false, EnrollmentType::User),
    ];
    let mut checked = 0;
    for (os, platform) in SCHEMA_OSES {
        // iPadOS reads the iOS entries.
        let platforms = if platform == Platform::Ios {
            vec![Platform::Ios, Platform::IpadOs]
        } else {
            vec![platform]
        };
        let mut versions: BTreeSet<String> =
            items.values().filter_map(|s| introduced(s, os)).collect();
        versions.insert("99.0".into());
        for running in &versions {
            for (enrollment, supervised, kind) in kinds {
                let expected: BTreeSet<&str> = items
                    .iter()
                    .filter(|(_, supported)| {
                        introduced(supported, os).is_some_and(|v| version(&v) <= version(running))
                            && supported[os]["allowed-enrollments"]
                                .as_array()
                                .is_some_and(|list| list.iter().any(|e| e == enrollment))
                    })
                    .map(|(name, _)| *name)
                    .collect();
                for platform in &platforms {
                    let subscribed: BTreeSet<&str> =
                        status_items_for_device(&device(*platform, running, supervised, kind))
                            .collect();
                    assert_eq!(
                        subscribed, expected,
                        "{platform} {running}, {enrollment} enrollment"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 40, "{checked}");
}

/// `RequireBetaProgram` goes only to devices whose OS takes it: the key's own `supportedOS`
/// in `softwareupdate.required.yaml` laid over the body's, field by field (Apple's
/// `docs/schema.md`).
#[test]
fn require_beta_program_follows_the_403_schema_on_every_platform() {
    let schema = yaml(&schemas().join("mdm/errors/softwareupdate.required.yaml"));
    let body = &schema["payload"]["supportedOS"];
    let details = schema["payloadkeys"]
        .as_array()
        .expect("payloadkeys")
        .iter()
        .find(|k| k["key"] == "details")
        .expect("details");
    let key = details["subkeys"]
        .as_array()
        .expect("subkeys")
        .iter()
        .find(|k| k["key"] == "RequireBetaProgram")
        .expect("RequireBetaProgram");
    for (os, platform) in SCHEMA_OSES {
        let own = introduced(&key["supportedOS"], os);
        let inherited = introduced(body, os);
        // Only `introduced` is overridden here; an OS the body marks n/a stays n/a.
        let expected = match (&inherited, &own) {
            (None, _) => None,
            (Some(_), Some(own)) => Some(own.clone()),
            (Some(body), None) => Some(body.clone()),
        };
        let code = require_beta_program_introduced(platform).map(|(a, b)| format!("{a}.{b}"));
        assert_eq!(code, expected, "{os}");
    }
    // What the schema says, spelled out: iOS 17.5, macOS 14.5, visionOS 26.0, never tvOS.
    assert_eq!(
        require_beta_program_introduced(Platform::IpadOs),
        Some((17, 5))
    );
    assert_eq!(require_beta_program_introduced(Platform::TvOs), None);
}

// ---------------------------------------------------------------------------------------------
// plan on real snapshots
// ---------------------------------------------------------------------------------------------

const MANIFESTS: &str = r#"
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: patched, namespace: it}
spec: {selector: {matchLabels: {track: patched}}}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: plain, namespace: it}
spec: {selector: {matchLabels: {track: plain}}}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: pinned, namespace: it}
spec: {selector: {matchLabels: {track: pinned}}}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: patched, namespace: it}
spec:
  fleetGroups: [patched]
  target: {strategy: latest, securityImprovements: true}
  deadline: {daysAfterPosting: 14, localTime: '19:00'}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: plain, namespace: it}
spec:
  fleetGroups: [plain]
  target: {strategy: latest}
  deadline: {daysAfterPosting: 14, localTime: '19:00'}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: pinned, namespace: it}
spec:
  fleetGroups: [pinned]
  target: {strategy: 'pinned:26.3'}
  deadline: {daysAfterPosting: 14, localTime: '19:00'}
"#;

/// One inventory line, `id platform model board-id version build supervised|unsupervised track`;
/// a version with a supplemental extra is written `26.6.1+a`.
struct Line<'a> {
    id: &'a str,
    platform: &'a str,
    model: &'a str,
    board: &'a str,
    version: &'a str,
    extra: Option<&'a str>,
    build: &'a str,
    supervised: bool,
    track: &'a str,
}

fn line(text: &str) -> Line<'_> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [
        id,
        platform,
        model,
        board,
        version,
        build,
        supervision,
        track,
    ] = fields[..]
    else {
        panic!("{text:?} has eight fields");
    };
    let (version, extra) = match version.split_once('+') {
        Some((version, extra)) => (version, Some(extra)),
        None => (version, None),
    };
    Line {
        id,
        platform,
        model,
        board,
        version,
        extra,
        build,
        supervised: supervision == "supervised",
        track,
    }
}

fn inventory(lines: &[Line]) -> String {
    let mut text = String::from("devices:\n");
    for l in lines {
        text.push_str(&format!(
            "  - {{enrollmentId: {}, platform: {}, model: '{}', softwareUpdateDeviceId: '{}', osVersion: '{}', buildVersion: '{}', supervised: {}, enrollmentType: {}, labels: {{track: {}}}{}}}\n",
            l.id,
            l.platform,
            l.model,
            l.board,
            l.version,
            l.build,
            l.supervised,
            if l.supervised { "ade" } else { "device" },
            l.track,
            l.extra
                .map(|e| format!(", supplementalExtra: '{e}'"))
                .unwrap_or_default(),
        ));
    }
    text
}

/// `plan --output json` of [`MANIFESTS`] for `lines` on a snapshot, as of the day after it.
fn plan(snapshot: &str, at: &str, lines: &[&str]) -> Value {
    let lines: Vec<Line> = lines.iter().map(|l| line(l)).collect();
    let work = tempfile::tempdir().expect("tempdir");
    let manifests = work.path().join("fleet.yaml");
    std::fs::write(&manifests, MANIFESTS).expect("manifests");
    let inventory_path = work.path().join("inventory.yaml");
    std::fs::write(&inventory_path, inventory(&lines)).expect("inventory");
    let catalog = Path::new(MANIFEST_DIR).join(format!("tests/fixtures/gdmf/pmv-{snapshot}.json"));
    let plan = plan_json(&manifests, &inventory_path, &catalog, at);
    // Every declaration each device gets validates against Apple's schemas for that device's
    // OS, version and enrollment, and the activation names exactly its configurations.
    for (l, json) in lines
        .iter()
        .zip(plan["devices"].as_array().expect("devices"))
    {
        let id = l.id;
        assert_eq!(json["enrollmentId"], id);
        let target = Target {
            os: match l.platform {
                "iOS" | "iPadOS" => "iOS",
                other => other,
            },
            os_version: l.version,
            enrollment: if l.supervised { "supervised" } else { "device" },
        };
        let declarations = json["declarations"].as_array().expect("declarations");
        for declaration in declarations {
            let problems = apple_schema::validate(declaration, &target);
            assert!(problems.is_empty(), "{id}: {declaration}: {problems:#?}");
        }
        let configurations: BTreeSet<&str> = declarations
            .iter()
            .filter(|d| d["Type"] != "com.apple.activation.simple")
            .map(|d| d["Identifier"].as_str().expect("identifier"))
            .collect();
        let activated: BTreeSet<&str> = declarations
            .iter()
            .filter(|d| d["Type"] == "com.apple.activation.simple")
            .flat_map(|d| {
                d["Payload"]["StandardConfigurations"]
                    .as_array()
                    .expect("configurations")
                    .iter()
                    .map(|c| c.as_str().expect("identifier"))
            })
            .collect();
        assert_eq!(activated, configurations, "{id}");
    }
    plan
}

fn device_json<'p>(plan: &'p Value, id: &str) -> &'p Value {
    plan["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["enrollmentId"] == id)
        .unwrap_or_else(|| panic!("{id} is in the plan"))
}

/// (TargetOSVersion, TargetBuildVersion, TargetLocalDateTime) of each enforcement, by deadline.
fn enforcements(plan: &Value, id: &str) -> Vec<(String, Option<String>, String)> {
    let mut out: Vec<(String, Option<String>, String)> = device_json(plan, id)["declarations"]
        .as_array()
        .expect("declarations")
        .iter()
        .filter(|d| d["Type"] == "com.apple.configuration.softwareupdate.enforcement.specific")
        .map(|d| {
            let p = &d["Payload"];
            (
                p["TargetOSVersion"].as_str().expect("version").to_string(),
                p["TargetBuildVersion"].as_str().map(str::to_string),
                p["TargetLocalDateTime"]
                    .as_str()
                    .expect("deadline")
                    .to_string(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.2.cmp(&b.2));
    out
}

fn reasons(plan: &Value, id: &str) -> Vec<String> {
    device_json(plan, id)["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| r["reason"].as_str().expect("reason").to_string())
        .collect()
}

fn status_items(plan: &Value, id: &str) -> BTreeSet<String> {
    device_json(plan, id)["declarations"]
        .as_array()
        .expect("declarations")
        .iter()
        .filter(|d| d["Type"] == "com.apple.configuration.management.status-subscriptions")
        .flat_map(|d| {
            d["Payload"]["StatusItems"]
                .as_array()
                .expect("items")
                .iter()
                .map(|i| i["Name"].as_str().expect("name").to_string())
        })
        .collect()
}

fn one(version: &str, build: Option<&str>, at: &str) -> (String, Option<String>, String) {
    (version.into(), build.map(str::to_string), at.into())
}

/// 2026-03-17: the first Background Security Improvements, 26.3.1 (a) on the twin base 23D8133
/// (iOS) and 25D2128 (macOS).
#[test]
fn on_2026_03_17_each_device_gets_only_what_it_can_install() {
    let lines = [
        // Below iOS 18 the improvement needs its base first: two enforcements. Lines used:
        // `AssetSets iOS 26.3.1 23D8133 2026-03-04` (its twin 23D9133 too) and
        // `PublicBackgroundSecurityImprovements iOS 26.3.1 (a) 23D771330a 2026-03-17
        // PrerequisiteBuild 23D8133`.
        "phone-17 iOS iPhone15,2 iPhone15,2 17.6.1 21G93 supervised patched",
        // From iOS 18 on, the improvement installs directly, named by its build.
        "phone-26 iOS iPhone15,2 iPhone15,2 26.2 23C55 supervised patched",
        // A Mac on macOS 14 chooses from PublicAssetSets (`PublicAssetSets macOS 26.3.1 25D2128
        // 2026-03-11`, earliest posting `AssetSets` 2026-03-04) and goes two-step to
        // 26.3.1 (a) `25D771280a`.
        "mac-14 macOS Mac15,3 J514sAP 14.8.3 23J220 supervised patched",
        // Unsupervised: PublicAssetSets only; 26.3.1 has twins there (23D8133, 23D9133), so
        // no build is named.
        "phone-unsupervised iOS iPhone15,2 iPhone15,2 26.2 23C55 unsupervised plain",
        // Supervised, the same request: AssetSets, the same version (twins again: no build).
        "phone-supervised iOS iPhone15,2 iPhone15,2 26.2 23C55 supervised plain",
        // Pinned to 26.3, which only AssetSets lists (`AssetSets iOS 26.3 23D127` and
        // `23D6127`): nothing for an unsupervised device.
        "pin-unsupervised iOS iPhone15,2 iPhone15,2 26.2 23C55 unsupervised pinned",
        // tvOS 26.2 and visionOS 26.2 subscribe to pending-version.
        "tv tvOS AppleTV14,1 AppleTV14,1 26.2 23K54 supervised plain",
        "vision visionOS RealityDevice14,1 RealityDevice14,1 26.2 23N301 supervised plain",
    ];
    let plan = plan("2026-03-17", "2026-03-18", &lines);

    // Base 2026-03-04 + 14 days; the improvement 2026-03-17 + 14 days, after the base.
    assert_eq!(
        enforcements(&plan, "phone-17"),
        [
            one("26.3.1", Some("23D8133"), "2026-03-18T19:00:00"),
            one("26.3.1", Some("23D771330a"), "2026-03-31T19:00:00"),
        ]
    );
    assert!(reasons(&plan, "phone-17").contains(&"TwoStep".to_string()));
    assert_eq!(
        enforcements(&plan, "phone-26"),
        [one("26.3.1", Some("23D771330a"), "2026-03-31T19:00:00")]
    );
    assert_eq!(
        enforcements(&plan, "mac-14"),
        [
            one("26.3.1", Some("25D2128"), "2026-03-18T19:00:00"),
            one("26.3.1", Some("25D771280a"), "2026-03-31T19:00:00"),
        ]
    );
    assert!(reasons(&plan, "mac-14").contains(&"PublicAssetSetsOnly".to_string()));

    assert_eq!(
        enforcements(&plan, "phone-unsupervised"),
        [one("26.3.1", None, "2026-03-18T19:00:00")]
    );
    assert_eq!(
        reasons(&plan, "phone-unsupervised"),
        ["PublicAssetSetsOnly"]
    );
    assert_eq!(
        enforcements(&plan, "phone-supervised"),
        [one("26.3.1", None, "2026-03-18T19:00:00")]
    );
    assert!(reasons(&plan, "phone-supervised").is_empty());
    assert!(enforcements(&plan, "pin-unsupervised").is_empty());
    assert_eq!(
        reasons(&plan, "pin-unsupervised"),
        ["NoMatchingRelease", "PublicAssetSetsOnly"]
    );

    for id in ["tv", "vision"] {
        assert!(
            status_items(&plan, id).contains("softwareupdate.pending-version"),
            "{id}"
        );
    }
}

/// 2026-08-22: a device on a beta of the newest release is not up to date with it.
#[test]
fn on_2026_08_22_a_beta_of_the_target_is_not_the_target() {
    let lines = [
        // `AssetSets iOS 26.6.1 23G83 2026-08-17` and its twin `23G6083`.
        "beta iOS iPhone15,2 iPhone15,2 26.6.1 23G5070a supervised plain",
        "release iOS iPhone15,2 iPhone15,2 26.6.1 23G83 supervised plain",
        // A bare `a` extra (as the status item reports it) reads as (a).
        "patched iOS iPhone15,2 iPhone15,2 26.6.1+a 23G83 supervised plain",
    ];
    let plan = plan("2026-08-22", "2026-08-22T12:00:00Z", &lines);
    assert_eq!(
        enforcements(&plan, "beta"),
        [one("26.6.1", None, "2026-08-31T19:00:00")]
    );
    assert!(reasons(&plan, "beta").is_empty());
    for id in ["release", "patched"] {
        assert!(enforcements(&plan, id).is_empty(), "{id}");
        assert_eq!(reasons(&plan, id), ["UpToDate"], "{id}");
    }
}
