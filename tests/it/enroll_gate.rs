//! The enrollment gate on real catalog snapshots, with MachineInfo built from Apple's schema
//! (`tests/fixtures/apple-schemas/other/machineinfo.yaml`) and signed like a device signs it.
//!
//! * Envelopes made by OpenSSL (`tests/fixtures/enroll/`) open and chain; tampered and truncated
//!   ones are refused.
//! * Every iPhone, iPad, Apple TV, Vision Pro and Mac board id of three snapshots (2025-09-16,
//!   2026-03-17, 2026-08-22) is decided against a `latest` policy: the version (never a build:
//!   twin builds are left to the device) is checked against an oracle written here from the raw
//!   pmv JSON — newest unexpired version listing the model, `PublicAssetSets` for Macs before
//!   macOS 15.
//! * Over HTTP, in-process: 403 bodies valid against Apple's `softwareupdate.required` schema
//!   (JSON and XML), the web flow's header, pass-through to a profile or an upstream, fail open
//!   and closed, garbage bodies answered 400, decisions in metrics and status.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::IntoResponse;
use base64::Engine as _;
use ddm_update_operator::catalog::{Catalog, PmvDocument};
use ddm_update_operator::enroll::{
    Anchors, EnrollError, GateView, MachineInfo, Verdict, chain, decide, machine_info, signed,
};
use ddm_update_operator::http::enroll::EnrollConfig;
use ddm_update_operator::operator::{CatalogSource, RunConfig};
use ddm_update_operator::run::Engine;
use ddm_update_operator::sim::enroll::{DeviceIdentity, machine_info_plist};
use serde_json::Value;

use crate::support::manifests;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures").join(path))
        .unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn yaml(path: &str) -> Value {
    let text = String::from_utf8(fixture(path)).expect("UTF-8 schema");
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Envelopes made by OpenSSL

#[test]
fn openssl_signed_machine_info_opens_and_chains_to_its_ca() {
    let anchors = Anchors::from_pem(&fixture("enroll/ca.pem")).expect("the test CA");
    let plist = fixture("enroll/machineinfo.plist");
    let now = rustls_pki_types::UnixTime::now();
    // DER, DER without signed attributes, and BER with indefinite lengths (`-stream`, the way
    // Apple's signers write CMS).
    for envelope in [
        "enroll/machineinfo.sha256.p7s",
        "enroll/machineinfo.sha1-noattr.p7s",
        "enroll/machineinfo.sha256.ber.p7s",
    ] {
        let verified = signed::open(&fixture(envelope), Some(&anchors), now)
            .unwrap_or_else(|e| panic!("{envelope}: {e}"));
        assert_eq!(verified.content, plist, "{envelope}");
        let info = machine_info::parse(&verified.content).expect("MachineInfo");
        assert_eq!(info.product, "iPhone15,2");
        assert_eq!(info.os_version.as_deref(), Some("18.6"));
        assert!(info.can_request_update);
    }
    // Trusting only the device certificate is not trusting its issuer: the chain does not reach
    // an anchor.
    let wrong = Anchors::from_pem(&fixture("enroll/device.pem")).expect("parses");
    let refused = signed::open(&fixture("enroll/machineinfo.sha256.p7s"), Some(&wrong), now);
    assert!(
        matches!(refused, Err(EnrollError::Untrusted(_))),
        "{refused:?}"
    );
}

#[test]
fn tampered_truncated_and_foreign_envelopes_are_refused() {
    let now = rustls_pki_types::UnixTime::now();
    let envelope = fixture("enroll/machineinfo.sha256.p7s");
    let at = envelope
        .windows(b"iPhone15,2".len())
        .position(|w| w == b"iPhone15,2")
        .expect("the plist is inside");
    let mut tampered = envelope.clone();
    tampered[at + 6] = b'6'; // iPhone16,2
    assert!(matches!(
        signed::open(&tampered, None, now),
        Err(EnrollError::Signature(_))
    ));
    let noattr = fixture("enroll/machineinfo.sha1-noattr.p7s");
    let at = noattr
        .windows(b"18.6".len())
        .position(|w| w == b"18.6")
        .expect("the plist is inside");
    let mut tampered = noattr.clone();
    tampered[at + 3] = b'9';
    assert!(matches!(
        signed::open(&tampered, None, now),
        Err(EnrollError::Signature(_))
    ));
    for cut in [0, 1, 10, envelope.len() / 2, envelope.len() - 1] {
        assert!(
            matches!(
                signed::open(&envelope[..cut], None, now),
                Err(EnrollError::Cms(_))
            ),
            "cut at {cut}"
        );
    }
    // A plist is not a CMS message.
    assert!(signed::open(&fixture("enroll/machineinfo.plist"), None, now).is_err());
}

// ---------------------------------------------------------------------------------------------
// MachineInfo from Apple's schema

/// What a device says about itself.
#[derive(Clone)]
struct Device {
    product: String,
    /// `SOFTWARE_UPDATE_DEVICE_ID` (the board id for Macs).
    board: Option<String>,
    os_version: String,
    build: String,
    can_update: bool,
    serial: String,
}

/// MachineInfo keys as the schema lists them, each filled with this device's value; keys the
/// device has no value for are left out unless required (then the test fails: the schema grew).
fn machine_info_keys(device: &Device) -> Vec<(String, plist::Value)> {
    let schema = yaml("apple-schemas/other/machineinfo.yaml");
    let keys = schema["payloadkeys"].as_array().expect("payloadkeys");
    let mut out = Vec::new();
    for key in keys {
        let name = key["key"].as_str().expect("key name");
        let kind = key["type"].as_str().expect("key type");
        let value = match (name, kind) {
            ("UDID", "<string>") => Some(format!("0000{}-{}", &device.serial, device.serial)),
            ("SERIAL", "<string>") => Some(device.serial.clone()),
            ("PRODUCT", "<string>") => Some(device.product.clone()),
            ("VERSION", "<string>") => Some(device.build.clone()),
            ("OS_VERSION", "<string>") => Some(device.os_version.clone()),
            ("LANGUAGE", "<string>") => Some("en".into()),
            ("SOFTWARE_UPDATE_DEVICE_ID", "<string>") => device.board.clone(),
            ("MDM_CAN_REQUEST_SOFTWARE_UPDATE", "<boolean>") => {
                out.push((name.to_string(), plist::Value::Boolean(device.can_update)));
                None
            }
            (
                "SUPPLEMENTAL_BUILD_VERSION"
                | "SUPPLEMENTAL_OS_VERSION_EXTRA"
                | "IMEI"
                | "MEID"
                | "PAIRING_TOKEN",
                _,
            ) => None,
            _ => {
                assert_ne!(
                    key["presence"].as_str(),
                    Some("required"),
                    "the schema requires {name} ({kind}), which this test does not fill"
                );
                None
            }
        };
        if let Some(value) = value {
            out.push((name.to_string(), plist::Value::String(value)));
        }
    }
    out
}

fn machine_info_bytes(device: &Device) -> Vec<u8> {
    let keys = machine_info_keys(device);
    let borrowed: Vec<(&str, plist::Value)> =
        keys.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    machine_info_plist(&borrowed)
}

fn machine_info(device: &Device) -> MachineInfo {
    machine_info::parse(&machine_info_bytes(device)).expect("schema-built MachineInfo parses")
}

// ---------------------------------------------------------------------------------------------
// The oracle: straight from the raw pmv JSON

fn numeric(version: &str) -> Vec<u64> {
    version
        .split('.')
        .map(|p| p.parse::<u64>().unwrap_or(0))
        .collect()
}

fn newer(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (numeric(a), numeric(b));
    let n = a.len().max(b.len());
    a.resize(n, 0);
    b.resize(n, 0);
    a > b
}

/// What the oracle expects for a `latest` policy.
#[derive(Debug, PartialEq)]
enum Expect {
    /// Update to this version; twin builds of it for the model, if any.
    Update(String, BTreeSet<String>),
    UpToDate,
    /// The set does not list the model, or nothing newer is still signed.
    CannotDecide,
}

fn oracle(
    raw: &Value,
    set: &str,
    platform: &str,
    model: &str,
    running: &str,
    as_of: &str,
) -> Expect {
    let entries: Vec<&Value> = raw[set][platform]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| {
                    e["SupportedDevices"]
                        .as_array()
                        .is_some_and(|d| d.iter().any(|m| m == model))
                })
                .collect()
        })
        .unwrap_or_default();
    if entries.is_empty() {
        return Expect::CannotDecide;
    }
    let newer_entries: Vec<&&Value> = entries
        .iter()
        .filter(|e| newer(e["ProductVersion"].as_str().unwrap_or("0"), running))
        .collect();
    if newer_entries.is_empty() {
        return Expect::UpToDate;
    }
    let signed: Vec<&&&Value> = newer_entries
        .iter()
        .filter(|e| e["ExpirationDate"].as_str().is_none_or(|d| d >= as_of))
        .collect();
    let Some(best) = signed
        .iter()
        .map(|e| e["ProductVersion"].as_str().unwrap_or("0"))
        .reduce(|a, b| if newer(b, a) { b } else { a })
    else {
        return Expect::CannotDecide;
    };
    let twins: BTreeSet<String> = entries
        .iter()
        .filter(|e| e["ProductVersion"].as_str() == Some(best))
        .filter_map(|e| e["Build"].as_str().map(str::to_string))
        .collect();
    Expect::Update(
        best.to_string(),
        if twins.len() > 1 {
            twins
        } else {
            BTreeSet::new()
        },
    )
}

fn manifests_view(yaml_text: &str, catalog: Result<Arc<Catalog>, String>) -> GateView {
    let checked =
        ddm_update_operator::manifests::check_str("test.yaml", yaml_text).expect("valid manifests");
    GateView::new(&checked.groups, &checked.policies, Arc::default(), catalog)
}

const LATEST_GATE: &str = r#"
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: everything, namespace: fleet}
spec: {}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: latest, namespace: fleet}
spec:
  fleetGroups: [everything]
  target: {strategy: latest}
  deadline: {daysAfterPosting: 7}
  enrollment: {minimumVersion: Target, failurePolicy: Closed}
"#;

fn snapshot(date: &str) -> (Value, Arc<Catalog>, String) {
    let bytes = fixture(&format!("gdmf/pmv-{date}.json"));
    let raw: Value = serde_json::from_slice(&bytes).expect("snapshot JSON");
    let document = PmvDocument::from_slice(&bytes).expect("snapshot parses");
    let as_of = document.newest_posting_date().expect("a posting date");
    let catalog = Catalog::from_document(&document).with_as_of(as_of);
    (raw, Arc::new(catalog), as_of.to_string())
}

#[test]
fn every_model_of_three_snapshots_is_required_to_reach_its_latest_release() {
    for date in ["2025-09-16", "2026-03-17", "2026-08-22"] {
        let (raw, catalog, as_of) = snapshot(date);
        let now: jiff::Timestamp = format!("{date}T12:00:00Z").parse().expect("time");
        let view = manifests_view(LATEST_GATE, Ok(catalog));
        let mut models: Vec<(String, Option<String>, String)> = Vec::new();
        for (key, families) in [
            ("iOS", &["iPhone", "iPad", "AppleTV"][..]),
            ("visionOS", &["RealityDevice"][..]),
            ("macOS", &["J", "Mac-", "VMA2MACOSAP", "VMM-x86_64"][..]),
        ] {
            let mut seen = BTreeSet::new();
            for entry in raw["AssetSets"][key].as_array().into_iter().flatten() {
                for id in entry["SupportedDevices"].as_array().into_iter().flatten() {
                    let Some(id) = id.as_str() else { continue };
                    if families.iter().any(|f| id.starts_with(f)) && seen.insert(id.to_string()) {
                        models.push(if key == "macOS" {
                            // Macs say a model id; the catalog knows their board id.
                            ("Mac15,3".into(), Some(id.to_string()), key.to_string())
                        } else {
                            (id.to_string(), None, key.to_string())
                        });
                    }
                }
            }
        }
        assert!(models.len() > 150, "{date}: only {} models", models.len());
        let mut checked = 0;
        for (product, board, key) in &models {
            let runs: &[&str] = if key == "macOS" {
                &["14.6", "15.0"]
            } else {
                &["17.0"]
            };
            for running in runs {
                let device = Device {
                    product: product.clone(),
                    board: board.clone(),
                    os_version: running.to_string(),
                    build: "21A100".into(),
                    can_update: true,
                    serial: format!("S{checked:09}"),
                };
                let model = board.as_deref().unwrap_or(product);
                // Before macOS 15 a Mac may only be asked for public releases.
                let set = if key == "macOS" && running.starts_with("14") {
                    "PublicAssetSets"
                } else {
                    "AssetSets"
                };
                let expect = oracle(&raw, set, key, model, running, &as_of);
                let decision = decide(&view, &machine_info(&device), now);
                let context = format!("{date} {model} on {running} ({set})");
                match (&expect, &decision.verdict) {
                    (Expect::Update(version, twins), Verdict::UpdateRequired { required, .. }) => {
                        assert_eq!(&required.version.to_string(), version, "{context}");
                        // A release's build is never named: one build needs no naming, and of
                        // twins nothing says which one every device of the model can take.
                        assert_eq!(required.build, None, "{context}: twins {twins:?}");
                    }
                    (Expect::UpToDate, Verdict::Allowed)
                    | (Expect::CannotDecide, Verdict::FailedClosed(_)) => {}
                    _ => panic!(
                        "{context}: expected {expect:?}, decided {:?}",
                        decision.verdict
                    ),
                }
                assert_eq!(
                    decision.policy.as_ref().map(ToString::to_string).as_deref(),
                    Some("fleet/latest"),
                    "{context}"
                );
                checked += 1;
            }
        }
        assert!(checked > 200, "{date}: {checked} decisions");
    }
}

#[test]
fn literal_minimums_strictest_policy_flag_and_failure_policies() {
    let (raw, catalog, as_of) = snapshot("2026-03-17");
    let now: jiff::Timestamp = "2026-03-17T12:00:00Z".parse().expect("time");
    let two_policies = r#"
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: phones, namespace: fleet}
spec: {platforms: [iOS]}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: vip, namespace: fleet}
spec: {platforms: [iOS], selector: {serialNumbers: [VIP0001]}}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: stay-on-18, namespace: fleet}
spec:
  fleetGroups: [phones]
  target: {strategy: "pinned:18"}
  deadline: {daysAfterPosting: 7}
  enrollment: {minimumVersion: "26.0", failurePolicy: Open}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: vip-latest, namespace: fleet}
spec:
  fleetGroups: [vip]
  target: {strategy: latest}
  deadline: {daysAfterPosting: 3}
  enrollment: {minimumVersion: Target, failurePolicy: Closed}
"#;
    let view = manifests_view(two_policies, Ok(catalog.clone()));
    let phone = |serial: &str, running: &str, can_update: bool| Device {
        product: "iPhone15,2".into(),
        board: Some("iPhone15,2".into()),
        os_version: running.into(),
        build: "22G86".into(),
        can_update,
        serial: serial.into(),
    };

    // The pinned policy's own target (18.x) is below its literal minimum: the smallest
    // release of at least 26.0 is required.
    let lowest_26 = lowest_at_least(&raw, "AssetSets", "iOS", "iPhone15,2", "26.0", &as_of)
        .expect("a 26 release for iPhone15,2");
    let decision = decide(&view, &machine_info(&phone("P1", "18.6", true)), now);
    match &decision.verdict {
        Verdict::UpdateRequired { required, .. } => {
            assert_eq!(required.version.to_string(), lowest_26);
        }
        other => panic!("expected an update to {lowest_26}, got {other:?}"),
    }
    assert_eq!(
        decision.policy.map(|p| p.to_string()).as_deref(),
        Some("fleet/stay-on-18")
    );

    // At or above the literal minimum: allowed, without needing the catalog.
    let offline = manifests_view(two_policies, Err("catalog down".into()));
    let at_minimum = decide(&offline, &machine_info(&phone("P2", "26.0", true)), now);
    assert_eq!(at_minimum.verdict, Verdict::Allowed);
    // Below it with the catalog down: the policy fails open.
    let below = decide(&offline, &machine_info(&phone("P3", "18.6", true)), now);
    assert_eq!(below.verdict, Verdict::FailedOpen("catalog down".into()));

    // In both policies: the strictest (highest) requirement wins — the VIP's latest.
    let Expect::Update(latest, _) = oracle(&raw, "AssetSets", "iOS", "iPhone15,2", "18.6", &as_of)
    else {
        panic!("the snapshot offers iPhone15,2 something newer than 18.6");
    };
    let vip = decide(&view, &machine_info(&phone("VIP0001", "18.6", true)), now);
    match &vip.verdict {
        Verdict::UpdateRequired { required, .. } => {
            assert_eq!(required.version.to_string(), latest)
        }
        other => panic!("expected {latest}, got {other:?}"),
    }
    assert_eq!(
        vip.policy.map(|p| p.to_string()).as_deref(),
        Some("fleet/vip-latest")
    );
    // The VIP policy fails closed when the catalog is down, and that outranks failing open.
    let vip_offline = decide(
        &offline,
        &machine_info(&phone("VIP0001", "18.6", true)),
        now,
    );
    assert_eq!(
        vip_offline.verdict,
        Verdict::FailedClosed("catalog down".into())
    );

    // A device that cannot be told to update during setup is never held.
    for view in [&view, &offline] {
        let decision = decide(view, &machine_info(&phone("VIP0001", "18.6", false)), now);
        assert_eq!(decision.verdict, Verdict::CannotUpdate);
    }
    // An unknown model: the failure policy decides (Open for the phones policy).
    let mut unknown = phone("P4", "18.6", true);
    unknown.product = "iPhone99,1".into();
    unknown.board = Some("iPhone99,1".into());
    let decision = decide(&view, &machine_info(&unknown), now);
    assert!(
        matches!(&decision.verdict, Verdict::FailedOpen(why) if why.contains("iPhone99,1")),
        "{decision:?}"
    );
    // A Mac is in no gated group here.
    let mac = Device {
        product: "Mac15,3".into(),
        board: Some("J514sAP".into()),
        ..phone("M1", "14.6", true)
    };
    assert_eq!(
        decide(&view, &machine_info(&mac), now).verdict,
        Verdict::Ungated
    );
}

/// The lowest unexpired version of at least `minimum` that `set` lists for `model`.
fn lowest_at_least(
    raw: &Value,
    set: &str,
    platform: &str,
    model: &str,
    minimum: &str,
    as_of: &str,
) -> Option<String> {
    raw[set][platform]
        .as_array()?
        .iter()
        .filter(|e| {
            e["SupportedDevices"]
                .as_array()
                .is_some_and(|d| d.iter().any(|m| m == model))
                && e["ExpirationDate"].as_str().is_none_or(|d| d >= as_of)
        })
        .filter_map(|e| e["ProductVersion"].as_str())
        .filter(|v| !newer(minimum, v))
        .reduce(|a, b| if newer(a, b) { b } else { a })
        .map(str::to_string)
}

#[test]
fn macs_before_macos_15_are_only_asked_for_public_releases() {
    let (raw, catalog, as_of) = snapshot("2025-09-16");
    let now: jiff::Timestamp = "2025-09-16T12:00:00Z".parse().expect("time");
    let view = manifests_view(
        r#"
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: macs, namespace: fleet}
spec: {platforms: [macOS]}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: stay-on-14, namespace: fleet}
spec:
  fleetGroups: [macs]
  target: {strategy: "pinned:14"}
  deadline: {daysAfterPosting: 7}
  enrollment: {minimumVersion: "15.0", failurePolicy: Closed}
"#,
        Ok(catalog),
    );
    let mut compared = 0;
    for board in ["J514sAP", "J414cAP", "J613AP", "VMA2MACOSAP"] {
        let public = lowest_at_least(&raw, "PublicAssetSets", "macOS", board, "15.0", &as_of);
        let mdm = lowest_at_least(&raw, "AssetSets", "macOS", board, "15.0", &as_of);
        let mac = |running: &str| Device {
            product: "Mac15,3".into(),
            board: Some(board.into()),
            os_version: running.into(),
            build: "23G80".into(),
            can_update: true,
            serial: format!("M-{board}"),
        };
        let expect =
            |decision: Verdict, wanted: &Option<String>, running: &str| match (decision, wanted) {
                (Verdict::UpdateRequired { required, .. }, Some(version)) => {
                    assert_eq!(
                        &required.version.to_string(),
                        version,
                        "{board} on {running}"
                    );
                }
                (Verdict::FailedClosed(_), None) => {}
                (other, _) => panic!("{board} on {running}: expected {wanted:?}, got {other:?}"),
            };
        // The pinned target (14.x) is below the minimum: the smallest step to 15, and on
        // macOS 14 only from the public set.
        expect(
            decide(&view, &machine_info(&mac("14.6")), now).verdict,
            &public,
            "14.6",
        );
        if public != mdm {
            compared += 1;
        }
    }
    assert!(
        compared > 0,
        "no board shows a difference between the sets on this date"
    );
}

// ---------------------------------------------------------------------------------------------
// Over HTTP

/// Checks a 403 body against Apple's `softwareupdate.required` schema: required keys, types,
/// `rangelist`, and no keys the schema does not define.
fn check_against_error_schema(body: &Value) -> Vec<String> {
    fn walk(value: &Value, keys: &[Value], path: &str, problems: &mut Vec<String>) {
        let Some(object) = value.as_object() else {
            problems.push(format!("{path}: not a dictionary"));
            return;
        };
        for key in keys {
            let name = key["key"].as_str().unwrap_or_default();
            let here = format!("{path}{name}");
            match object.get(name) {
                None if key["presence"] == "required" => problems.push(format!("{here}: missing")),
                None => {}
                Some(v) => {
                    let ok = match key["type"].as_str().unwrap_or_default() {
                        "<string>" => v.is_string(),
                        "<dictionary>" => v.is_object(),
                        "<boolean>" => v.is_boolean(),
                        "<integer>" => v.is_i64(),
                        other => {
                            problems.push(format!("{here}: schema type {other} not handled"));
                            true
                        }
                    };
                    if !ok {
                        problems.push(format!("{here}: wrong type"));
                    }
                    if let Some(range) = key["rangelist"].as_array()
                        && !range.contains(v)
                    {
                        problems.push(format!("{here}: {v} not in {range:?}"));
                    }
                    if let Some(sub) = key["subkeys"].as_array() {
                        walk(v, sub, &format!("{here}."), problems);
                    }
                }
            }
        }
        for name in object.keys() {
            if !keys.iter().any(|k| k["key"] == name.as_str()) {
                problems.push(format!("{path}{name}: not in the schema"));
            }
        }
    }
    let schema = yaml("apple-schemas/mdm/errors/softwareupdate.required.yaml");
    let mut problems = Vec::new();
    walk(
        body,
        schema["payloadkeys"].as_array().expect("payloadkeys"),
        "",
        &mut problems,
    );
    problems
}

struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
    der: Vec<u8>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let certificate = params.self_signed(&key).expect("CA certificate");
        TestCa {
            pem: certificate.pem(),
            der: certificate.der().to_vec(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A CA this one issues, like Apple Root CA issues Apple's device CAs.
    fn intermediate(&self, name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let certificate = params
            .signed_by(&key, &self.issuer)
            .expect("intermediate certificate");
        TestCa {
            pem: certificate.pem(),
            der: certificate.der().to_vec(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A device identity this CA issues, valid from `not_before` to `not_after` (years), with
    /// `chain` (DER) riding in the envelope as a device's intermediates do.
    fn device_between(&self, not_before: i32, not_after: i32, chain: &[&[u8]]) -> DeviceIdentity {
        let key = rcgen::KeyPair::generate().expect("EC key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "00008110-000A1C2E3E08801E");
        params.not_before = rcgen::date_time_ymd(not_before, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after, 1, 1);
        let certificate = params
            .signed_by(&key, &self.issuer)
            .expect("device certificate");
        DeviceIdentity::from_der(&key.serialize_der(), certificate.der(), chain).expect("identity")
    }

    fn device(&self, udid: &str) -> DeviceIdentity {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, udid);
        let certificate = params
            .signed_by(&key, &self.issuer)
            .expect("device certificate");
        DeviceIdentity::from_der(&key.serialize_der(), certificate.der(), &[]).expect("identity")
    }
}

/// Phones on the latest iOS (enrollment at the target, open on failure) and Macs on the latest
/// macOS (enrollment from 15.0, closed on failure, with a beta program).
fn http_manifests() -> String {
    manifests::stream(&[
        manifests::group("phones", "iOS"),
        manifests::group("macs", "macOS"),
        manifests::latest_policy(
            "phones",
            "phones",
            7,
            "  enrollment: {minimumVersion: Target, failurePolicy: Open}\n",
        ),
        manifests::latest_policy(
            "macs",
            "macs",
            7,
            "  enrollment:
    minimumVersion: \"15.0\"
    failurePolicy: Closed
    betaProgram: {description: \"IT seed program\"}
",
        ),
    ])
}

struct Gate {
    url: String,
    /// The admin side (metrics, `/api/v1/status`).
    admin: String,
    client: reqwest::Client,
    _work: tempfile::TempDir,
}

async fn start_gate(catalog: CatalogSource, enroll: EnrollConfig) -> Gate {
    let work = tempfile::tempdir().expect("temp dir");
    let manifests = work.path().join("gitops");
    std::fs::create_dir_all(&manifests).expect("manifests folder");
    std::fs::write(manifests.join("fleet.yaml"), http_manifests()).expect("manifests");
    let config = RunConfig {
        enroll,
        ..RunConfig::local(manifests, catalog, work.path())
    };
    let path = config.enroll.route();
    let engine = Engine::start(config).await.expect("the operator starts");
    let address = engine.local_addr().expect("bound");
    let admin = engine.admin_addr().expect("bound");
    tokio::spawn(engine.serve());
    Gate {
        url: format!("http://{address}{path}"),
        admin: format!("http://{admin}"),
        client: reqwest::Client::new(),
        _work: work,
    }
}

impl Gate {
    async fn post(
        &self,
        body: Vec<u8>,
        content_type: &str,
        accept: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", content_type)
            .body(body);
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        request.send().await.expect("the gate answers")
    }

    /// A GET on the admin port.
    async fn text(&self, path: &str) -> String {
        self.client
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .expect("answers")
            .text()
            .await
            .expect("text")
    }
}

/// POSTs a body of `length` bytes announced by Content-Length, writes only the first MiB, and
/// returns whatever the server answered.
async fn post_oversized(url: &str, length: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = reqwest::Url::parse(url).expect("URL");
    let address = format!(
        "{}:{}",
        url.host_str().expect("host"),
        url.port().expect("port")
    );
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: x\r\ncontent-type: application/pkcs7-signature\r\ncontent-length: {length}\r\n\r\n",
        url.path()
    );
    stream.write_all(head.as_bytes()).await.expect("headers");
    let chunk = vec![0x30u8; 64 * 1024];
    for _ in 0..16 {
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn decisions_metric(metrics: &str, policy: &str, decision: &str) -> u64 {
    let needle = format!(
        "ddm_update_operator_enrollment_decisions_total{{policy=\"{policy}\",decision=\"{decision}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_over_http_holds_passes_and_refuses() {
    let ca = TestCa::new("Test Device CA");
    let profile = b"<?xml version=\"1.0\"?><plist version=\"1.0\"><dict/></plist>".to_vec();
    let gate = start_gate(
        CatalogSource::File(root().join("tests/fixtures/gdmf/pmv-2026-08-22.json")),
        EnrollConfig {
            profile: Some(profile.clone()),
            ca_bundle: Some(ca.pem.clone().into_bytes()),
            beta_token: Some("seeding-token-123".into()),
            ..EnrollConfig::default()
        },
    )
    .await;
    let identity = ca.device("00008110-000A1C2E3E08801E");
    let sign = |device: &Device| {
        identity
            .sign_cms(&machine_info_bytes(device))
            .expect("signed")
    };
    let phone = Device {
        product: "iPhone15,2".into(),
        board: Some("iPhone15,2".into()),
        os_version: "18.6".into(),
        build: "22G86".into(),
        can_update: true,
        serial: "F2LXK1ABCD".into(),
    };
    let (raw, _, as_of) = snapshot("2026-08-22");
    let Expect::Update(latest, _) = oracle(&raw, "AssetSets", "iOS", "iPhone15,2", "18.6", &as_of)
    else {
        panic!("an update for iPhone15,2");
    };

    // Below the policy's target: 403 with Apple's body, JSON by default.
    let response = gate
        .post(sign(&phone), "application/pkcs7-signature", None)
        .await;
    assert_eq!(response.status(), 403);
    assert_eq!(
        response.headers()["content-type"].to_str().ok(),
        Some("application/json")
    );
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(
        check_against_error_schema(&body),
        Vec::<String>::new(),
        "{body}"
    );
    assert_eq!(body["code"], "com.apple.softwareupdate.required");
    assert_eq!(body["details"]["OSVersion"], latest.as_str());
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains(&latest))
    );
    assert!(body["details"].get("RequireBetaProgram").is_none());

    // The same as an XML plist when the device asks for XML.
    let response = gate
        .post(
            sign(&phone),
            "application/pkcs7-signature",
            Some("application/xml"),
        )
        .await;
    assert_eq!(response.status(), 403);
    assert_eq!(
        response.headers()["content-type"].to_str().ok(),
        Some("application/xml")
    );
    let bytes = response.bytes().await.expect("body");
    let xml = plist::Value::from_reader_xml(bytes.as_ref()).expect("an XML plist");
    let xml = xml.as_dictionary().expect("a dictionary");
    assert_eq!(
        xml.get("code").and_then(plist::Value::as_string),
        Some("com.apple.softwareupdate.required")
    );

    // The web flow: GET with the signed MachineInfo in base64.
    let response = gate
        .client
        .get(&gate.url)
        .header(
            "x-apple-aspen-deviceinfo",
            base64::engine::general_purpose::STANDARD.encode(sign(&phone)),
        )
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 403);

    // Already at the target, or unable to update during setup: the profile.
    for device in [
        Device {
            os_version: latest.clone(),
            ..phone.clone()
        },
        Device {
            can_update: false,
            ..phone.clone()
        },
    ] {
        let response = gate
            .post(sign(&device), "application/pkcs7-signature", None)
            .await;
        assert_eq!(response.status(), 200, "{}", device.os_version);
        assert_eq!(
            response.headers()["content-type"].to_str().ok(),
            Some("application/x-apple-aspen-config")
        );
        assert_eq!(
            response.bytes().await.expect("profile").as_ref(),
            profile.as_slice()
        );
    }

    // A Mac on macOS 14 below the literal minimum: a public release of at least 15.0. The
    // policy names a beta program, but a release never takes the device there (it would stay
    // in the program afterwards); only a pre-release minimum does.
    let mac = Device {
        product: "Mac15,3".into(),
        board: Some("J514sAP".into()),
        os_version: "14.6".into(),
        build: "23G80".into(),
        ..phone.clone()
    };
    let public_versions: BTreeSet<String> = raw["PublicAssetSets"]["macOS"]
        .as_array()
        .expect("public macOS")
        .iter()
        .filter(|e| {
            e["SupportedDevices"]
                .as_array()
                .is_some_and(|d| d.iter().any(|m| m == "J514sAP"))
        })
        .filter_map(|e| e["ProductVersion"].as_str().map(str::to_string))
        .collect();
    let response = gate
        .post(sign(&mac), "application/pkcs7-signature", None)
        .await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(
        check_against_error_schema(&body),
        Vec::<String>::new(),
        "{body}"
    );
    let required = body["details"]["OSVersion"].as_str().expect("OSVersion");
    assert!(
        public_versions.contains(required),
        "{required} not public: {public_versions:?}"
    );
    assert!(!newer("15.0", required), "{required} is below the minimum");
    assert!(
        body["details"].get("RequireBetaProgram").is_none(),
        "{body}"
    );

    // A board id Apple does not list: the macs policy fails closed.
    let unknown_mac = Device {
        board: Some("J999AP".into()),
        ..mac.clone()
    };
    let response = gate
        .post(sign(&unknown_mac), "application/pkcs7-signature", None)
        .await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"].to_str().ok(), Some("300"));
    assert!(response.text().await.expect("text").contains("J999AP"));
    // An unknown phone: the phones policy fails open.
    let unknown_phone = Device {
        product: "iPhone99,1".into(),
        board: None,
        ..phone.clone()
    };
    let response = gate
        .post(sign(&unknown_phone), "application/pkcs7-signature", None)
        .await;
    assert_eq!(response.status(), 200);

    // Bad input: 400 with a reason, never a panic, and the gate keeps answering.
    let envelope = sign(&phone);
    let other_ca = TestCa::new("Somebody else");
    let foreign = other_ca
        .device("x")
        .sign_cms(&machine_info_bytes(&phone))
        .expect("signed");
    let mut tampered = envelope.clone();
    let at = tampered
        .windows(b"F2LXK1ABCD".len())
        .position(|w| w == b"F2LXK1ABCD")
        .expect("serial inside");
    tampered[at] = b'X';
    let wrong_types = identity
        .sign_cms(&machine_info_plist(&[
            ("SERIAL", plist::Value::Integer(7.into())),
            ("PRODUCT", plist::Value::String("iPhone15,2".into())),
            ("VERSION", plist::Value::String("22G86".into())),
        ]))
        .expect("signed");
    // Five thousand elements in a binary plist of a few KiB.
    let mut bomb_plist = plist::Dictionary::new();
    bomb_plist.insert("SERIAL".into(), plist::Value::String("B".into()));
    bomb_plist.insert(
        "JUNK".into(),
        plist::Value::Array(vec![plist::Value::Boolean(true); 5_000]),
    );
    let mut bomb_bytes = Vec::new();
    plist::Value::Dictionary(bomb_plist)
        .to_writer_binary(&mut bomb_bytes)
        .expect("binary plist");
    assert!(bomb_bytes.len() < 28 * 1024, "{} bytes", bomb_bytes.len());
    let bomb = identity.sign_cms(&bomb_bytes).expect("signed");
    // Malformed: 400; nobody trustworthy vouches for it: 403 (never Apple's update body).
    let cases: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
        (
            "truncated CMS",
            envelope[..envelope.len() / 3].to_vec(),
            "application/pkcs7-signature",
            400,
            "CMS",
        ),
        (
            "tampered",
            tampered,
            "application/pkcs7-signature",
            400,
            "signature",
        ),
        (
            "foreign CA",
            foreign,
            "application/pkcs7-signature",
            403,
            "does not chain",
        ),
        (
            "wrong types",
            wrong_types,
            "application/pkcs7-signature",
            400,
            "SERIAL",
        ),
        (
            "many elements",
            bomb,
            "application/pkcs7-signature",
            400,
            "plist elements",
        ),
        (
            "unsigned with a CA bundle",
            machine_info_bytes(&phone),
            "application/xml",
            403,
            "unsigned",
        ),
        (
            "empty",
            Vec::new(),
            "application/pkcs7-signature",
            400,
            "CMS",
        ),
    ];
    for (what, body, content_type, code, says) in cases {
        let response = gate.post(body, content_type, None).await;
        assert_eq!(response.status(), code, "{what}");
        let text = response.text().await.expect("text");
        assert!(text.contains(says), "{what}: {text}");
    }
    // 50 MB: answered 400 after the first 64 KiB; the rest is never read (a client that keeps
    // writing sees the connection close), so this one speaks raw HTTP.
    let answer = post_oversized(&gate.url, 50 * 1024 * 1024).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("larger than"), "{answer}");
    let response = gate.client.get(&gate.url).send().await.expect("answers");
    assert_eq!(response.status(), 400);
    let response = gate
        .client
        .get(&gate.url)
        .header("x-apple-aspen-deviceinfo", "not base64 !!")
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 400);

    // Every decision is counted per policy, in metrics and in the status.
    let metrics = gate.text("/metrics").await;
    assert_eq!(
        decisions_metric(&metrics, "fleet/phones", "UpdateRequired"),
        3
    );
    assert_eq!(decisions_metric(&metrics, "fleet/phones", "Allowed"), 1);
    assert_eq!(
        decisions_metric(&metrics, "fleet/phones", "CannotUpdate"),
        1
    );
    assert_eq!(decisions_metric(&metrics, "fleet/phones", "FailedOpen"), 1);
    assert_eq!(
        decisions_metric(&metrics, "fleet/macs", "UpdateRequired"),
        1
    );
    assert_eq!(decisions_metric(&metrics, "fleet/macs", "FailedClosed"), 1);
    let status: Value = serde_json::from_str(&gate.text("/api/v1/status").await).expect("JSON");
    let macs = &status["enrollment"]["fleet/macs"];
    assert_eq!(macs["decisions"]["FailedClosed"], 1, "{status}");
    assert!(
        macs["lastProblem"]
            .as_str()
            .is_some_and(|p| p.contains("J999AP")),
        "{macs}"
    );
    assert_eq!(
        status["enrollment"]["fleet/phones"]["decisions"]["UpdateRequired"],
        3
    );
}

/// What the upstream enrollment server was sent: (content type, body).
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_usable_catalog_the_failure_policy_decides_and_upstream_gets_the_request() {
    // An upstream enrollment server that records what it is sent.
    let received: Received = Arc::default();
    let record = received.clone();
    let upstream = axum::Router::new().route(
        "/mdm/enroll",
        axum::routing::post(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let record = record.clone();
                async move {
                    let content_type = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    record
                        .lock()
                        .expect("lock")
                        .push((content_type, body.to_vec()));
                    // The MDM may redirect and set cookies: the device must see both.
                    if uri.query() == Some("moved=1") {
                        return (
                            axum::http::StatusCode::FOUND,
                            [
                                ("location", "https://mdm.example.com/elsewhere"),
                                ("set-cookie", "session=abc"),
                            ],
                            "",
                        )
                            .into_response();
                    }
                    (
                        [("content-type", "application/x-apple-aspen-config")],
                        "UPSTREAM PROFILE",
                    )
                        .into_response()
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream_address = listener.local_addr().expect("address");
    let upstream_task = tokio::spawn(async move {
        let _ = axum::serve(listener, upstream).await;
    });

    // Apple unreachable and nothing cached: the shipped catalog, which the gate does not
    // trust.
    let gate = start_gate(
        CatalogSource::Url("https://127.0.0.1:1/v2/pmv".into()),
        EnrollConfig {
            upstream: Some(format!("http://{upstream_address}/mdm/enroll")),
            // A proxy in front verified the devices and passes plain plists on.
            allow_unsigned: true,
            ..EnrollConfig::default()
        },
    )
    .await;
    let plain = |device: &Device| machine_info_bytes(device);
    let phone = Device {
        product: "iPhone15,2".into(),
        board: Some("iPhone15,2".into()),
        os_version: "18.6".into(),
        build: "22G86".into(),
        can_update: true,
        serial: "F2LXK1ABCD".into(),
    };
    // The phones policy fails open: proxied upstream, byte for byte.
    let body = plain(&phone);
    let response = gate.post(body.clone(), "application/xml", None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("text"), "UPSTREAM PROFILE");
    assert_eq!(
        received.lock().expect("lock").as_slice(),
        &[("application/xml".to_string(), body)]
    );
    // Redirects and cookies from the MDM reach the device as they were (not followed here), and
    // the query string goes along.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = no_redirects
        .post(format!("{}?moved=1", gate.url))
        .header("content-type", "application/xml")
        .body(plain(&phone))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        "https://mdm.example.com/elsewhere"
    );
    assert_eq!(response.headers()["set-cookie"], "session=abc");
    assert_eq!(received.lock().expect("lock").len(), 2);
    // HEAD carries no MachineInfo: not a decision.
    let response = gate.client.head(&gate.url).send().await.expect("answers");
    assert_eq!(response.status(), 405);
    // A product nobody knows, in no group by serial: not gated, so it goes on.
    let toaster = Device {
        product: "Toaster1,1".into(),
        board: None,
        serial: "UNKNOWN-1".into(),
        ..phone.clone()
    };
    assert_eq!(
        gate.post(plain(&toaster), "application/xml", None)
            .await
            .status(),
        200
    );
    // The macs policy fails closed.
    let mac = Device {
        product: "Mac15,3".into(),
        board: Some("J514sAP".into()),
        os_version: "14.6".into(),
        ..phone.clone()
    };
    let response = gate.post(plain(&mac), "application/xml", None).await;
    assert_eq!(response.status(), 503);
    let text = response.text().await.expect("text");
    assert!(text.contains("shipped"), "{text}");
    // A Mac already at the literal minimum needs no catalog.
    let current_mac = Device {
        os_version: "15.1".into(),
        ..mac.clone()
    };
    assert_eq!(
        gate.post(plain(&current_mac), "application/xml", None)
            .await
            .status(),
        200
    );

    // The upstream goes away: a clear 502, not a hang or a pass.
    upstream_task.abort();
    let _ = upstream_task.await;
    let response = gate.post(plain(&phone), "application/xml", None).await;
    assert_eq!(response.status(), 502);
    assert!(response.text().await.expect("text").contains("upstream"));

    let status: Value = serde_json::from_str(&gate.text("/api/v1/status").await).expect("JSON");
    assert_eq!(
        status["enrollment"]["fleet/phones"]["decisions"]["FailedOpen"], 3,
        "{status}"
    );
    assert!(
        status["enrollment"]["fleet/macs"]["lastProblem"]
            .as_str()
            .is_some_and(|p| p.contains("shipped")),
        "{status}"
    );
}

#[test]
fn the_signer_in_the_simulator_agrees_with_openssl() {
    // Our envelope, checked by OpenSSL (tests/enroll/openssl.sh installs it where it can).
    let script = root().join("tests/enroll/openssl.sh");
    let found = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .expect("bash runs");
    assert!(
        found.status.success(),
        "openssl is needed for this cross-check: {}",
        String::from_utf8_lossy(&found.stderr)
    );
    let openssl = String::from_utf8_lossy(&found.stdout).trim().to_string();
    let ca = TestCa::new("Cross-check CA");
    let work = tempfile::tempdir().expect("temp dir");
    let device = Device {
        product: "iPad13,18".into(),
        board: None,
        os_version: "18.6".into(),
        build: "22G86".into(),
        can_update: true,
        serial: "DMPXX".into(),
    };
    let content = machine_info_bytes(&device);
    let envelope = ca.device("u").sign_cms(&content).expect("signed");
    let write = |name: &str, bytes: &[u8]| {
        let path = work.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    };
    let envelope_path = write("mi.p7s", &envelope);
    let ca_path = write("ca.pem", ca.pem.as_bytes());
    let out_path = work.path().join("out.plist");
    let verified = std::process::Command::new(&openssl)
        .args([
            "cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any",
        ])
        .arg("-in")
        .arg(&envelope_path)
        .arg("-CAfile")
        .arg(&ca_path)
        .arg("-out")
        .arg(&out_path)
        .output()
        .expect("openssl runs");
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert_eq!(std::fs::read(&out_path).expect("verified content"), content);
}

// ---------------------------------------------------------------------------------------------
// Who vouches for MachineInfo (issue 12: the gate trusts only devices)

fn refusals_metric(metrics: &str, reason: &str) -> u64 {
    let needle = format!("ddm_update_operator_enrollment_refusals_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle)?.trim().parse().ok())
        .unwrap_or(0)
}

/// A phone that says it cannot be asked to update during setup: every gate lets it on to the
/// profile, so only the trust check stands between it and the profile.
fn enrolling_phone() -> Device {
    Device {
        product: "iPhone15,2".into(),
        board: Some("iPhone15,2".into()),
        os_version: "18.6".into(),
        build: "22G86".into(),
        can_update: false,
        serial: "F2LXK1ABCD".into(),
    }
}

const PROFILE: &[u8] = b"<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>Challenge</key><string>scep-secret</string></dict></plist>";

fn snapshot_catalog() -> CatalogSource {
    CatalogSource::File(root().join("tests/fixtures/gdmf/pmv-2026-08-22.json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_unsigned_self_signed_and_foreign_machine_info_get_no_profile() {
    // No --enroll-ca-bundle: the signer must chain to Apple Root CA.
    let gate = start_gate(
        snapshot_catalog(),
        EnrollConfig {
            profile: Some(PROFILE.to_vec()),
            ..EnrollConfig::default()
        },
    )
    .await;
    let content = machine_info_bytes(&enrolling_phone());
    let self_signed = {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Apple iPhone Device CA");
        let certificate = params.self_signed(&key).expect("self-signed");
        DeviceIdentity::from_der(&key.serialize_der(), certificate.der(), &[])
            .expect("identity")
            .sign_cms(&content)
            .expect("signed")
    };
    let foreign = TestCa::new("Apple Root CA")
        .device("u")
        .sign_cms(&content)
        .expect("signed");
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "unsigned XML",
            content.clone(),
            "application/xml",
            "unsigned",
        ),
        (
            "unsigned, announced as signed",
            content.clone(),
            "application/pkcs7-signature",
            "CMS",
        ),
        (
            "self-signed",
            self_signed.clone(),
            "application/pkcs7-signature",
            "does not chain",
        ),
        (
            "a CA that merely calls itself Apple Root CA",
            foreign,
            "application/pkcs7-signature",
            "does not chain",
        ),
    ];
    for (what, body, content_type, says) in cases {
        let response = gate.post(body, content_type, None).await;
        let status = response.status().as_u16();
        let text = response.text().await.expect("text");
        assert!(matches!(status, 400 | 403), "{what}: {status} {text}");
        assert!(text.contains(says), "{what}: {text}");
        assert!(!text.contains("scep-secret"), "{what}: the profile leaked");
    }
    // The web flow too.
    let response = gate
        .client
        .get(&gate.url)
        .header(
            "x-apple-aspen-deviceinfo",
            base64::engine::general_purpose::STANDARD.encode(&self_signed),
        )
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 403);
    let metrics = gate.text("/metrics").await;
    assert_eq!(refusals_metric(&metrics, "Unsigned"), 1, "{metrics}");
    assert_eq!(refusals_metric(&metrics, "UntrustedSigner"), 3, "{metrics}");
    assert_eq!(refusals_metric(&metrics, "InvalidCms"), 1, "{metrics}");
    assert!(metrics.contains("ddm_update_operator_enrollment_unsigned_allowed 0"));
    // Nothing was decided: refused before the gate.
    assert_eq!(
        decisions_metric(&metrics, "fleet/phones", "CannotUpdate"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_chain_is_trusted_only_under_the_configured_root() {
    let root = TestCa::new("Test Root CA");
    let device_ca = root.intermediate("Test iPhone Device CA");
    let content = machine_info_bytes(&enrolling_phone());
    // The device CA rides in the envelope, as Apple's do.
    let good = device_ca
        .device_between(2020, 2100, &[&device_ca.der])
        .sign_cms(&content)
        .expect("signed");
    let expired = device_ca
        .device_between(2020, 2021, &[&device_ca.der])
        .sign_cms(&content)
        .expect("signed");
    let without_intermediate = device_ca
        .device_between(2020, 2100, &[])
        .sign_cms(&content)
        .expect("signed");
    // An impostor CA with the same name, under another root.
    let impostor = TestCa::new("Test Root CA").intermediate("Test iPhone Device CA");
    let impostor_signed = impostor
        .device_between(2020, 2100, &[&impostor.der])
        .sign_cms(&content)
        .expect("signed");

    let trusting = start_gate(
        snapshot_catalog(),
        EnrollConfig {
            profile: Some(PROFILE.to_vec()),
            ca_bundle: Some(root.pem.clone().into_bytes()),
            ..EnrollConfig::default()
        },
    )
    .await;
    let response = trusting
        .post(good.clone(), "application/pkcs7-signature", None)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.expect("profile").as_ref(), PROFILE);
    for (what, body, says) in [
        ("expired", expired, "expired"),
        (
            "intermediate left out",
            without_intermediate,
            "does not chain",
        ),
        ("impostor CA", impostor_signed, "does not verify"),
    ] {
        let response = trusting
            .post(body, "application/pkcs7-signature", None)
            .await;
        assert_eq!(response.status(), 403, "{what}");
        let text = response.text().await.expect("text");
        assert!(text.contains(says), "{what}: {text}");
    }

    // The same good envelope, under the default roots (Apple's) or another bundle: refused.
    let apple_only = start_gate(
        snapshot_catalog(),
        EnrollConfig {
            profile: Some(PROFILE.to_vec()),
            ..EnrollConfig::default()
        },
    )
    .await;
    let other_bundle = start_gate(
        snapshot_catalog(),
        EnrollConfig {
            profile: Some(PROFILE.to_vec()),
            ca_bundle: Some(TestCa::new("Other Root").pem.into_bytes()),
            ..EnrollConfig::default()
        },
    )
    .await;
    for gate in [&apple_only, &other_bundle] {
        let response = gate
            .post(good.clone(), "application/pkcs7-signature", None)
            .await;
        assert_eq!(response.status(), 403);
        assert!(
            response
                .text()
                .await
                .expect("text")
                .contains("does not chain")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_unsigned_takes_plain_machine_info_and_says_so() {
    let gate = start_gate(
        snapshot_catalog(),
        EnrollConfig {
            profile: Some(PROFILE.to_vec()),
            allow_unsigned: true,
            ..EnrollConfig::default()
        },
    )
    .await;
    let response = gate
        .post(
            machine_info_bytes(&enrolling_phone()),
            "application/xml",
            None,
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.expect("profile").as_ref(), PROFILE);
    let metrics = gate.text("/metrics").await;
    assert!(
        metrics.contains("ddm_update_operator_enrollment_unsigned_allowed 1"),
        "{metrics}"
    );
    // Checking a signer and not checking one exclude each other.
    let both = EnrollConfig {
        allow_unsigned: true,
        ca_bundle: Some(TestCa::new("x").pem.into_bytes()),
        ..EnrollConfig::default()
    };
    let (_, view) = tokio::sync::watch::channel(Arc::new(GateView::unavailable("test")));
    let refused = both.state(view, Arc::default(), Arc::default());
    assert!(refused.is_err());
}

#[test]
fn apples_device_ca_chains_to_the_embedded_apple_root() {
    use cms::cert::x509::Certificate;
    use cms::cert::x509::der::Decode;
    use rustls_pki_types::pem::PemObject;
    let read = |pem: &[u8]| -> Vec<Certificate> {
        rustls_pki_types::CertificateDer::pem_slice_iter(pem)
            .map(|c| Certificate::from_der(&c.expect("PEM")).expect("certificate"))
            .collect()
    };
    // Device CA, iPhone Certification Authority, Apple Root CA (tests/fixtures/SOURCES.md).
    let chain = read(&fixture(
        "enroll/apple/Apple_iPhone_Device_CA_Fullchain.pem",
    ));
    let roots = read(ddm_update_operator::catalog::fetch::APPLE_ROOT_CA_PEM);
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[2], roots[0], "the fixture's root is the embedded one");
    let at = |year: i16| {
        let seconds = jiff::civil::date(year, 1, 1)
            .to_zoned(jiff::tz::TimeZone::UTC)
            .expect("date")
            .timestamp()
            .as_second();
        rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(seconds).expect("after 1970"),
        ))
    };
    // SHA-1 signatures and an RSA-1024 key all the way up: the chain verifies (with the device CA
    // in the signer's place, at a time it was valid).
    chain::verify(&chain[0], &[&chain[1]], &roots, at(2010)).expect("Apple's chain verifies");
    // Its validity is the signer's, checked; the middle CA's ended in 2022 and is not.
    let expired = chain::verify(&chain[0], &[&chain[1]], &roots, at(2026));
    assert!(
        matches!(&expired, Err(EnrollError::Untrusted(why)) if why.contains("expired")),
        "{expired:?}"
    );
    // Without the middle certificate, or under another root, nothing chains.
    assert!(chain::verify(&chain[0], &[], &roots, at(2010)).is_err());
    let other = read(TestCa::new("Apple Root CA").pem.as_bytes());
    assert!(chain::verify(&chain[0], &[&chain[1]], &other, at(2010)).is_err());
    // One flipped bit in the middle certificate's signature breaks the chain.
    let mut der = cms::cert::x509::der::Encode::to_der(&chain[1]).expect("DER");
    let last = der.len() - 1;
    der[last] ^= 1;
    let tampered = Certificate::from_der(&der).expect("still a certificate");
    let broken = chain::verify(&chain[0], &[&tampered], &roots, at(2010));
    assert!(
        matches!(&broken, Err(EnrollError::Untrusted(why)) if why.contains("does not verify")),
        "{broken:?}"
    );
}
