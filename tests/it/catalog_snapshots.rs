//! Facts a careful Apple admin can check by hand in the eight real pmv snapshots under
//! `tests/fixtures/gdmf/` (SOFA's copies of `gdmf.apple.com/v2/pmv`, see
//! `tests/fixtures/SOURCES.md` and `shared/research/real-data.md`).
//!
//! Every expected value here was read out of the JSON, not out of the library. Where a test
//! sweeps a whole snapshot, the expected answer comes from a small reference reading of the raw
//! JSON (`raw_index` and friends below) that shares nothing with the library's index except
//! `OsVersion`'s ordering.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};

use ddm_update_operator::catalog::guard::{self, Suspicious};
use ddm_update_operator::catalog::{
    AssetSet, Build, Catalog, CatalogKey, Choice, DeviceOs, NoTarget, OsVersion, Platform,
    PmvDocument, Query, Release, ReleaseKind,
};
use jiff::civil::Date;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const GDMF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gdmf");
const BSI_TRIMMED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/gdmf/trimmed/zentral-2026-03-23-bsi.trimmed.json"
);
const RSR_TRIMMED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/gdmf/trimmed/zentral-2023-05-02-rsr.trimmed.json"
);

/// The HTTP-200-with-empty-sets answer Apple gave during an outage.
const EMPTY: &str = "2024-11-14-empty";

/// The non-empty snapshots, in date order.
const REAL: [&str; 7] = [
    "2024-06-30",
    "2024-09-16",
    "2025-05-21",
    "2025-09-16",
    "2025-10-30",
    "2026-03-17",
    "2026-08-22",
];

/// Every snapshot, in date order.
const ALL: [&str; 8] = [
    "2024-06-30",
    "2024-09-16",
    EMPTY,
    "2025-05-21",
    "2025-09-16",
    "2025-10-30",
    "2026-03-17",
    "2026-08-22",
];

/// The two stored forms of one snapshot.
#[derive(Debug, Clone, Copy)]
enum Form {
    /// `pmv-DATE.json`: Apple's document, cut out of SOFA's file.
    Apple,
    /// `pmv-DATE.sofa-cache.json`: SOFA's `{etag, data}` wrapper.
    Sofa,
}

impl Form {
    const BOTH: [Form; 2] = [Form::Apple, Form::Sofa];

    fn suffix(self) -> &'static str {
        match self {
            Form::Apple => ".json",
            Form::Sofa => ".sofa-cache.json",
        }
    }
}

fn path(snapshot: &str, form: Form) -> String {
    format!("{GDMF}/pmv-{snapshot}{}", form.suffix())
}

fn bytes(snapshot: &str, form: Form) -> Vec<u8> {
    let path = path(snapshot, form);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path} is readable: {e}"))
}

fn document(snapshot: &str) -> PmvDocument {
    PmvDocument::from_slice(&bytes(snapshot, Form::Apple))
        .unwrap_or_else(|e| panic!("pmv-{snapshot}.json parses: {e}"))
}

fn catalog(snapshot: &str) -> Catalog {
    Catalog::from_slice(&bytes(snapshot, Form::Apple))
        .unwrap_or_else(|e| panic!("pmv-{snapshot}.json indexes: {e}"))
}

fn catalog_from_file(path: &str) -> Catalog {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path} is readable: {e}"));
    Catalog::from_slice(&bytes).unwrap_or_else(|e| panic!("{path} indexes: {e}"))
}

/// The snapshot as plain JSON, for reading facts independently of the library.
fn raw(snapshot: &str) -> Value {
    serde_json::from_slice(&bytes(snapshot, Form::Apple)).expect("fixture is JSON")
}

fn day(s: &str) -> Date {
    s.parse().unwrap_or_else(|e| panic!("{s:?} is a date: {e}"))
}

fn version(s: &str) -> OsVersion {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is a version: {e}"))
}

/// A snapshot's name as a date (`2024-11-14-empty` → 2024-11-14).
fn snapshot_day(snapshot: &str) -> Date {
    day(&snapshot[..10])
}

// ---------------------------------------------------------------------------------------------
// Asking the library
// ---------------------------------------------------------------------------------------------

/// One device asking one question. Defaults: `latest`, `AssetSets`, no security improvements.
struct Ask<'a> {
    device_id: &'a str,
    running: OsVersion,
    build: Option<Build>,
    query: Query,
}

impl<'a> Ask<'a> {
    fn new(device_id: &'a str, running: &str, on: &str) -> Self {
        Ask {
            device_id,
            running: version(running),
            build: None,
            query: Query {
                strategy: "latest".parse().expect("latest is a strategy"),
                asset_set: AssetSet::Mdm,
                security_improvements: false,
                on: day(on),
            },
        }
    }

    fn strategy(mut self, strategy: &str) -> Self {
        self.query.strategy = strategy
            .parse()
            .unwrap_or_else(|e| panic!("{strategy:?} is a strategy: {e}"));
        self
    }

    fn public(mut self) -> Self {
        self.query.asset_set = AssetSet::Public;
        self
    }

    fn set(mut self, asset_set: AssetSet) -> Self {
        self.query.asset_set = asset_set;
        self
    }

    fn security(mut self) -> Self {
        self.query.security_improvements = true;
        self
    }

    fn build(mut self, build: &str) -> Self {
        self.build = Some(Build::new(build));
        self
    }

    fn device(&self) -> DeviceOs<'_> {
        DeviceOs {
            device_id: self.device_id,
            version: &self.running,
            build: self.build.as_ref(),
        }
    }

    fn resolve(&self, catalog: &Catalog) -> Result<Target, NoTarget> {
        catalog
            .resolve(self.device(), &self.query)
            .map(|c| Target::of(&c))
    }

    fn candidates(&self, catalog: &Catalog) -> Vec<Target> {
        catalog
            .candidates(self.device(), &self.query)
            .iter()
            .map(Target::of)
            .collect()
    }
}

/// A chosen release, reduced to what an admin compares.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// With the extra, such as `26.3.1 (a)`.
    version: String,
    build: String,
    /// This device's expiration date.
    expires: Option<Date>,
    two_step: bool,
}

impl Target {
    fn of(choice: &Choice<'_>) -> Self {
        Target {
            version: choice.release.version.to_string(),
            build: choice
                .release
                .build
                .as_ref()
                .map_or_else(String::new, |b| b.as_str().to_string()),
            expires: choice.expires,
            two_step: choice.two_step,
        }
    }
}

fn target(version: &str, build: &str, expires: &str) -> Target {
    Target {
        version: version.to_string(),
        build: build.to_string(),
        expires: Some(day(expires)),
        two_step: false,
    }
}

fn builds(targets: &[Target]) -> Vec<&str> {
    targets.iter().map(|t| t.build.as_str()).collect()
}

/// The merged release with this build in one set of the library's index.
fn release<'c>(releases: &'c [Release], build: &str) -> &'c Release {
    let found: Vec<&Release> = releases
        .iter()
        .filter(|r| r.build.as_ref().map(Build::as_str) == Some(build))
        .collect();
    assert_eq!(found.len(), 1, "exactly one release has build {build}");
    found[0]
}

fn devices(release: &Release) -> BTreeSet<&str> {
    release.supported_devices.iter().map(|d| &**d).collect()
}

// ---------------------------------------------------------------------------------------------
// An independent reading of the raw JSON
// ---------------------------------------------------------------------------------------------

/// Every entry of one set with its platform key.
fn raw_entries<'v>(raw: &'v Value, set: &str) -> Vec<(&'v str, &'v Value)> {
    let Some(platforms) = raw.get(set).and_then(Value::as_object) else {
        return Vec::new();
    };
    platforms
        .iter()
        .flat_map(|(key, entries)| {
            entries
                .as_array()
                .expect("a platform key holds a list")
                .iter()
                .map(move |e| (key.as_str(), e))
        })
        .collect()
}

fn field<'v>(entry: &'v Value, name: &str) -> &'v str {
    entry[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} is a string in {entry}"))
}

fn entry_devices(entry: &Value) -> Vec<&str> {
    entry["SupportedDevices"]
        .as_array()
        .expect("SupportedDevices is a list")
        .iter()
        .map(|d| d.as_str().expect("a device id is a string"))
        .collect()
}

fn entry_version(entry: &Value) -> OsVersion {
    OsVersion::with_extra(
        field(entry, "ProductVersion"),
        entry["ProductVersionExtra"].as_str(),
    )
    .expect("ProductVersion parses")
}

/// One build as one set offers it to one device.
#[derive(Debug, Clone)]
struct RawOffer {
    version: OsVersion,
    /// The latest expiration among the entries that list this device (none: never expires).
    expires: Option<Date>,
}

/// device id → build → offer, for the given sets of one snapshot.
type RawIndex = BTreeMap<String, BTreeMap<String, RawOffer>>;

fn raw_index(raw: &Value, sets: &[&str]) -> RawIndex {
    let mut index = RawIndex::new();
    for set in sets {
        for (_, entry) in raw_entries(raw, set) {
            let build = field(entry, "Build").to_string();
            let expires = entry["ExpirationDate"].as_str().map(day);
            for device in entry_devices(entry) {
                index
                    .entry(device.to_string())
                    .or_default()
                    .entry(build.clone())
                    .and_modify(|o| {
                        o.expires = match (o.expires, expires) {
                            (Some(a), Some(b)) => Some(a.max(b)),
                            _ => None,
                        }
                    })
                    .or_insert(RawOffer {
                        version: entry_version(entry),
                        expires,
                    });
            }
        }
    }
    index
}

/// The newest version a device can still install on `on`, and the builds of it still open.
fn raw_newest(
    offers: &BTreeMap<String, RawOffer>,
    on: Date,
) -> Option<(OsVersion, BTreeMap<&str, Option<Date>>)> {
    let open = || {
        offers
            .iter()
            .filter(|(_, o)| o.expires.is_none_or(|e| e >= on))
    };
    let newest = open().map(|(_, o)| o.version.clone()).max()?;
    let builds = open()
        .filter(|(_, o)| o.version == newest)
        .map(|(b, o)| (b.as_str(), o.expires))
        .collect();
    Some((newest, builds))
}

/// Every distinct `ExpirationDate` in the snapshot's asset sets.
fn raw_expiration_dates(raw: &Value) -> BTreeSet<Date> {
    ["AssetSets", "PublicAssetSets"]
        .iter()
        .flat_map(|set| raw_entries(raw, set))
        .filter_map(|(_, e)| e["ExpirationDate"].as_str().map(day))
        .collect()
}

/// The OS family a device id belongs to. `iOS` in the pmv carries iPhone/iPad/iPod, watchOS,
/// tvOS + HomePod (which share builds) and, in 2024, visionOS.
fn family(device: &str) -> &'static str {
    const FAMILIES: [(&str, &str); 7] = [
        ("iPhone", "iOS/iPadOS"),
        ("iPad", "iOS/iPadOS"),
        ("iPod", "iOS/iPadOS"),
        ("Watch", "watchOS"),
        ("AppleTV", "tvOS/HomePod"),
        ("AudioAccessory", "tvOS/HomePod"),
        ("RealityDevice", "visionOS"),
    ];
    FAMILIES
        .iter()
        .find(|(prefix, _)| device.starts_with(prefix))
        .map_or("macOS", |(_, family)| family)
}

/// Build → the one family its raw entries list (panics if an entry mixes families).
fn raw_build_families(raw: &Value) -> BTreeMap<String, &'static str> {
    let mut families = BTreeMap::new();
    for set in ["AssetSets", "PublicAssetSets"] {
        for (_, entry) in raw_entries(raw, set) {
            let build = field(entry, "Build");
            let mixed: BTreeSet<&str> = entry_devices(entry).into_iter().map(family).collect();
            assert_eq!(mixed.len(), 1, "{set} entry {build} mixes {mixed:?}");
            let this = *mixed.first().expect("one family");
            let seen = families.entry(build.to_string()).or_insert(this);
            assert_eq!(*seen, this, "build {build} is listed for two families");
        }
    }
    families
}

// ---------------------------------------------------------------------------------------------
// Parsing: every snapshot, both forms
// ---------------------------------------------------------------------------------------------

#[test]
fn every_snapshot_parses_in_both_forms() {
    for snapshot in ALL {
        for form in Form::BOTH {
            let parsed = PmvDocument::from_slice(&bytes(snapshot, form));
            assert!(
                parsed.is_ok(),
                "{}: {:?}",
                path(snapshot, form),
                parsed.err()
            );
        }
    }
}

/// (set, platform key, entries).
type Counts = &'static [(&'static str, &'static str, usize)];

/// Entries per (set, platform key) of each real snapshot, counted in the JSON with python; they
/// agree with the table in `shared/research/real-data.md`.
#[rustfmt::skip]
const ENTRY_COUNTS: [(&str, Counts); 7] = [
    ("2024-06-30", &[("AssetSets", "iOS", 37), ("AssetSets", "macOS", 7), ("AssetSets", "visionOS", 4),
                     ("AssetSets", "xrOS", 1), ("PublicAssetSets", "iOS", 25), ("PublicAssetSets", "macOS", 4),
                     ("PublicAssetSets", "visionOS", 2), ("PublicAssetSets", "xrOS", 1)]),
    ("2024-09-16", &[("AssetSets", "iOS", 54), ("AssetSets", "macOS", 12), ("AssetSets", "visionOS", 2),
                     ("AssetSets", "xrOS", 1), ("PublicAssetSets", "iOS", 23), ("PublicAssetSets", "macOS", 5),
                     ("PublicAssetSets", "visionOS", 2), ("PublicAssetSets", "xrOS", 1)]),
    ("2025-05-21", &[("AssetSets", "iOS", 60), ("AssetSets", "macOS", 14), ("AssetSets", "visionOS", 10),
                     ("PublicAssetSets", "iOS", 25), ("PublicAssetSets", "macOS", 5), ("PublicAssetSets", "visionOS", 2)]),
    ("2025-09-16", &[("AssetSets", "iOS", 61), ("AssetSets", "macOS", 14), ("AssetSets", "visionOS", 6),
                     ("PublicAssetSets", "iOS", 31), ("PublicAssetSets", "macOS", 6), ("PublicAssetSets", "visionOS", 2)]),
    ("2025-10-30", &[("AssetSets", "iOS", 68), ("AssetSets", "macOS", 15), ("AssetSets", "visionOS", 8),
                     ("PublicAssetSets", "iOS", 34), ("PublicAssetSets", "macOS", 7), ("PublicAssetSets", "visionOS", 4)]),
    ("2026-03-17", &[("AssetSets", "iOS", 71), ("AssetSets", "macOS", 13), ("AssetSets", "visionOS", 6),
                     ("PublicAssetSets", "iOS", 31), ("PublicAssetSets", "macOS", 7), ("PublicAssetSets", "visionOS", 2),
                     ("PublicBackgroundSecurityImprovements", "iOS", 1),
                     ("PublicBackgroundSecurityImprovements", "macOS", 2)]),
    ("2026-08-22", &[("AssetSets", "iOS", 46), ("AssetSets", "macOS", 15), ("AssetSets", "visionOS", 6),
                     ("PublicAssetSets", "iOS", 29), ("PublicAssetSets", "macOS", 6), ("PublicAssetSets", "visionOS", 2),
                     ("PublicBackgroundSecurityImprovements", "iOS", 1),
                     ("PublicBackgroundSecurityImprovements", "macOS", 2)]),
];

#[test]
fn entry_counts_match_the_snapshots() {
    for (snapshot, counts) in ENTRY_COUNTS {
        let mut got: Vec<(&str, &str, usize)> = document(snapshot).entry_counts();
        // Empty security sets (`{}`) list no platform; an empty platform list would show as 0.
        got.retain(|(_, _, n)| *n > 0);
        got.sort();
        let mut want = counts.to_vec();
        want.sort();
        assert_eq!(got, want, "entry counts of {snapshot}");
    }
}

#[test]
fn both_forms_index_to_the_same_releases() {
    let as_json = |releases: &[Release]| serde_json::to_value(releases).expect("serializable");
    for snapshot in ALL {
        let [apple, sofa] = Form::BOTH.map(|form| {
            Catalog::from_slice(&bytes(snapshot, form))
                .unwrap_or_else(|e| panic!("{}: {e}", path(snapshot, form)))
        });
        for set in [AssetSet::Mdm, AssetSet::Public] {
            assert_eq!(
                as_json(apple.releases(set)),
                as_json(sofa.releases(set)),
                "{snapshot} {set:?}"
            );
        }
        assert_eq!(
            as_json(apple.security_improvements()),
            as_json(sofa.security_improvements()),
            "{snapshot} security improvements"
        );
        assert_eq!(
            apple.device_ids(),
            sofa.device_ids(),
            "{snapshot} device ids"
        );
    }
}

#[test]
fn releases_are_the_distinct_builds_of_each_set() {
    // A release is one (platform key, build) of one set; its devices are the union of the
    // entries that list that build. Checked against the raw JSON for every snapshot.
    for snapshot in REAL {
        let raw = raw(snapshot);
        let catalog = catalog(snapshot);
        for (set, name) in [
            (AssetSet::Mdm, "AssetSets"),
            (AssetSet::Public, "PublicAssetSets"),
        ] {
            let mut want: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
            for (_, entry) in raw_entries(&raw, name) {
                want.entry(field(entry, "Build"))
                    .or_default()
                    .extend(entry_devices(entry));
            }
            let got: BTreeMap<&str, BTreeSet<&str>> = catalog
                .releases(set)
                .iter()
                .map(|r| (r.build.as_ref().expect("real builds").as_str(), devices(r)))
                .collect();
            assert_eq!(catalog.releases(set).len(), want.len(), "{snapshot} {name}");
            assert_eq!(got, want, "{snapshot} {name}");
        }
    }
    // Spot checks counted by hand: 90 AssetSets entries on 2026-03-17 hold 85 distinct builds
    // (25D2128, 22H217, 22H6217, 22H311, 22H6311 are each listed twice).
    let c = catalog("2026-03-17");
    assert_eq!(c.releases(AssetSet::Mdm).len(), 85);
    assert_eq!(c.releases(AssetSet::Public).len(), 40);
    assert_eq!(c.security_improvements().len(), 3);
    assert!(catalog("2025-10-30").security_improvements().is_empty());
}

// ---------------------------------------------------------------------------------------------
// The sanity guard
// ---------------------------------------------------------------------------------------------

#[test]
fn the_empty_answer_parses_but_is_refused() {
    for form in Form::BOTH {
        let empty = PmvDocument::from_slice(&bytes(EMPTY, form)).expect("the empty answer parses");
        assert!(Catalog::from_document(&empty).is_empty());
        assert_eq!(guard::check_not_empty(&empty), Err(Suspicious::Empty));
        for previous in REAL {
            assert_eq!(
                guard::check_replacement(&document(previous), &empty),
                Err(Suspicious::Empty),
                "{previous} replaced by the empty answer"
            );
        }
    }
}

#[test]
fn every_step_between_consecutive_real_snapshots_is_accepted() {
    for pair in REAL.windows(2) {
        let (previous, next) = (document(pair[0]), document(pair[1]));
        assert_eq!(guard::check_not_empty(&next), Ok(()), "{}", pair[1]);
        assert_eq!(
            guard::check_replacement(&previous, &next),
            Ok(()),
            "{} → {}",
            pair[0],
            pair[1]
        );
    }
    // The same through SOFA's wrapper.
    for pair in REAL.windows(2) {
        let [previous, next] = [pair[0], pair[1]]
            .map(|s| PmvDocument::from_slice(&bytes(s, Form::Sofa)).expect("SOFA form parses"));
        assert_eq!(guard::check_replacement(&previous, &next), Ok(()));
    }
}

// ---------------------------------------------------------------------------------------------
// "The latest macOS" is per device (2026-03-17)
// ---------------------------------------------------------------------------------------------

#[test]
fn newest_macos_differs_between_j700ap_and_other_macs() {
    let c = catalog("2026-03-17");
    for set in [AssetSet::Public, AssetSet::Mdm] {
        let ask = |id| Ask::new(id, "26.1", "2026-03-17").set(set).resolve(&c);
        assert_eq!(
            ask("J700AP"),
            Ok(target("26.3.2", "25D2140", "2026-06-15")),
            "{set:?}"
        );
        for other in ["J314sAP", "J314cAP", "J180dAP", "VMA2MACOSAP"] {
            assert_eq!(
                ask(other),
                Ok(target("26.3.1", "25D2128", "2026-06-15")),
                "{other} {set:?}"
            );
        }
    }
    // 26.3.2 lists J700AP alone, in both sets.
    for set in [AssetSet::Public, AssetSet::Mdm] {
        assert_eq!(
            devices(release(c.releases(set), "25D2140")),
            BTreeSet::from(["J700AP"])
        );
    }
}

#[test]
fn asset_sets_also_offer_j700ap_26_3_1_with_its_own_earlier_expiration() {
    // AssetSets lists 25D2128 twice: 62 Macs until 2026-06-15, and J700AP alone until 06-08.
    // PublicAssetSets offers J700AP only 26.3.2.
    let c = catalog("2026-03-17");
    let j700 = |on| Ask::new("J700AP", "26.1", on);
    assert_eq!(
        builds(&j700("2026-03-17").candidates(&c)),
        ["25D2140", "25D2128"]
    );
    assert_eq!(
        builds(&j700("2026-03-17").public().candidates(&c)),
        ["25D2140"]
    );
    let merged = release(c.releases(AssetSet::Mdm), "25D2128");
    assert_eq!(merged.supported_devices.len(), 63);
    assert_eq!(merged.expiration_date, Some(day("2026-06-15")));

    let pin = |id, on| {
        Ask::new(id, "26.1", on)
            .strategy("pinned:26.3.1")
            .resolve(&c)
    };
    assert_eq!(
        pin("J700AP", "2026-06-08"),
        Ok(target("26.3.1", "25D2128", "2026-06-08"))
    );
    assert_eq!(pin("J700AP", "2026-06-09"), Err(NoTarget::NoSignedRelease));
    assert_eq!(
        pin("J314sAP", "2026-06-09"),
        Ok(target("26.3.1", "25D2128", "2026-06-15"))
    );
    assert_eq!(
        j700("2026-03-17")
            .public()
            .strategy("pinned:26.3.1")
            .resolve(&c),
        Err(NoTarget::NoMatchingRelease)
    );
}

// ---------------------------------------------------------------------------------------------
// watchOS, tvOS, HomePod, iOS and visionOS share the `iOS` key without leaking
// ---------------------------------------------------------------------------------------------

#[test]
fn no_build_crosses_os_families_in_any_snapshot() {
    let long_ago = "2000-01-01";
    for snapshot in REAL {
        let raw = raw(snapshot);
        let families = raw_build_families(&raw);
        let catalog = catalog(snapshot);
        for (set, names) in [
            (AssetSet::Mdm, ["AssetSets"]),
            (AssetSet::Public, ["PublicAssetSets"]),
        ] {
            for release in catalog.releases(set) {
                let mixed: BTreeSet<&str> = release
                    .supported_devices
                    .iter()
                    .map(|d| family(d))
                    .collect();
                assert_eq!(mixed.len(), 1, "{snapshot} {release:?}");
            }
            // Everything a device is offered is exactly what the JSON lists for it.
            for (device, offers) in raw_index(&raw, &names) {
                let got = Ask::new(&device, "0", long_ago)
                    .set(set)
                    .candidates(&catalog);
                let got: BTreeSet<&str> = got.iter().map(|t| t.build.as_str()).collect();
                let want: BTreeSet<&str> = offers.keys().map(String::as_str).collect();
                assert_eq!(got, want, "{snapshot} {set:?} {device}");
                for build in got {
                    assert_eq!(
                        families[build],
                        family(&device),
                        "{snapshot} {device} {build}"
                    );
                }
            }
        }
    }
}

#[test]
fn seven_releases_numbered_26_0_reach_only_their_own_devices() {
    // 2025-09-16, the day after the version-26 unification: PublicAssetSets.iOS has seven
    // "26.0" entries, 23A341/23A6341 (iPhone+iPad), 23J353/23J6353 (Apple TV+HomePod),
    // 23R350 (newest watches), 23R352/23R6352 (other watches).
    let c = catalog("2025-09-16");
    let want = [
        ("iPhone15,2", "23A341"),
        ("iPad11,1", "23A341"),
        ("AppleTV14,1", "23J353"),
        ("AudioAccessory5,1", "23J353"),
        ("Watch6,1", "23R352"),
        ("Watch7,13", "23R350"),
    ];
    for set in [AssetSet::Public, AssetSet::Mdm] {
        for (device, build) in want {
            let ask = Ask::new(device, "18.0", "2025-09-16").set(set);
            assert_eq!(
                ask.resolve(&c),
                Ok(target("26.0", build, "2025-12-15")),
                "{device} {set:?}"
            );
            let twenty_six: Vec<String> = ask
                .candidates(&c)
                .into_iter()
                .filter(|t| t.version == "26.0")
                .map(|t| t.build)
                .collect();
            let expected: &[&str] = match build {
                "23A341" => &["23A341", "23A6341"],
                "23J353" => &["23J353", "23J6353"],
                "23R352" => &["23R352", "23R6352"],
                _ => &["23R350"],
            };
            assert_eq!(twenty_six, expected, "{device} {set:?}");
        }
    }
    // iPod touch stops at 15.8.x: it never sees any of the 26.0 builds.
    assert_eq!(
        Ask::new("iPod9,1", "15.0", "2025-09-16").resolve(&c),
        Ok(target("15.8.5", "19H394", "2025-12-15"))
    );
}

#[test]
fn each_family_gets_its_own_26_3_on_2026_03_17() {
    let c = catalog("2026-03-17");
    let want = [
        ("Watch6,1", target("26.3", "23S620", "2026-06-15")),
        ("AppleTV14,1", target("26.3", "23K620", "2026-06-15")),
        ("AudioAccessory5,1", target("26.3", "23K620", "2026-06-15")),
        ("iPhone15,2", target("26.3.1", "23D8133", "2026-06-15")),
        ("iPod9,1", target("15.8.7", "19H411", "2026-06-15")),
        (
            "RealityDevice14,1",
            target("26.3.1", "23N630", "2026-06-15"),
        ),
    ];
    for (device, expected) in want {
        assert_eq!(
            Ask::new(device, "15.0", "2026-03-17").resolve(&c),
            Ok(expected),
            "{device}"
        );
    }
    // Pinned to 26.3, an iPhone gets the iPhone 26.3, not the watch or TV build of that number.
    assert_eq!(
        Ask::new("iPhone15,2", "26.2", "2026-03-17")
            .strategy("pinned:26.3")
            .resolve(&c),
        Ok(target("26.3", "23D127", "2026-06-02"))
    );
    // The iOS security improvement lists the 95 iPhone/iPad ids of 23D8133; a watch on 26.3
    // never gets it.
    assert_eq!(
        Ask::new("Watch6,1", "26.3", "2026-03-17")
            .security()
            .resolve(&c),
        Err(NoTarget::UpToDate)
    );
    // The platform names follow the device id, not the pmv key.
    assert_eq!(
        Platform::of_device(CatalogKey::Ios, "Watch6,1"),
        Some(Platform::WatchOs)
    );
    assert_eq!(
        Platform::of_device(CatalogKey::Ios, "AppleTV14,1"),
        Some(Platform::TvOs)
    );
    assert_eq!(
        Platform::of_device(CatalogKey::Ios, "RealityDevice14,1"),
        Some(Platform::VisionOs)
    );
    assert_eq!(
        release(c.releases(AssetSet::Public), "23S620").platforms(),
        [Platform::WatchOs]
    );
    assert_eq!(
        release(c.releases(AssetSet::Public), "23K620").platforms(),
        [Platform::TvOs, Platform::AudioOs]
    );
}

#[test]
fn posting_dates_come_from_the_release_itself() {
    // Hand-checked: on 2026-08-22 every entry of iPhone/iPad 26.5 23F77 (AssetSets ×2,
    // PublicAssetSets) says 2026-05-18; only watchOS 26.5 23T570/23T6570 say 2026-05-11.
    let c = catalog("2026-08-22");
    assert_eq!(
        release(c.releases(AssetSet::Mdm), "23F77").posting_date,
        day("2026-05-18")
    );
    // 2025-10-30: iPhone/iPad 26.0.1 23A355 was posted 2025-09-29 (AssetSets) and re-stamped
    // 2025-10-21 (PublicAssetSets); 2025-09-15 belongs to watchOS 26.0.1 23R8352 (Watch7,12).
    let c = catalog("2025-10-30");
    assert_eq!(
        release(c.releases(AssetSet::Mdm), "23A355").posting_date,
        day("2025-09-29")
    );
    // Data-wide: each release's date is the earliest PostingDate of its own build across both
    // asset sets (that already undoes PublicAssetSets' re-stamping).
    for snapshot in REAL {
        let raw = raw(snapshot);
        let mut earliest: BTreeMap<&str, Date> = BTreeMap::new();
        for set in ["AssetSets", "PublicAssetSets"] {
            for (_, entry) in raw_entries(&raw, set) {
                let posted = day(field(entry, "PostingDate"));
                earliest
                    .entry(field(entry, "Build"))
                    .and_modify(|d| *d = (*d).min(posted))
                    .or_insert(posted);
            }
        }
        let catalog = catalog(snapshot);
        let wrong: Vec<String> = [AssetSet::Mdm, AssetSet::Public]
            .iter()
            .flat_map(|set| catalog.releases(*set))
            .filter_map(|r| {
                let build = r.build.as_ref()?.as_str();
                (r.posting_date != earliest[build])
                    .then(|| format!("{build}: {} not {}", r.posting_date, earliest[build]))
            })
            .collect();
        assert!(wrong.is_empty(), "{snapshot}: {wrong:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Expiration
// ---------------------------------------------------------------------------------------------

#[test]
fn no_device_is_ever_sent_to_an_expired_build() {
    // For every device id and both asset sets, on the snapshot date and on the day after every
    // expiration date in it: the target is the newest version the JSON still lets the device
    // install, its expiration is not before the date, and without one it is NoSignedRelease.
    // (The expiration day itself, still installable, is checked case by case further down.)
    let mut checked = 0usize;
    for snapshot in REAL {
        let raw = raw(snapshot);
        let catalog = catalog(snapshot);
        let mut dates = BTreeSet::from([snapshot_day(snapshot)]);
        for expiry in raw_expiration_dates(&raw) {
            dates.insert(expiry.tomorrow().expect("a later day exists"));
        }
        for (set, names) in [
            (AssetSet::Mdm, ["AssetSets"]),
            (AssetSet::Public, ["PublicAssetSets"]),
        ] {
            for (device, offers) in raw_index(&raw, &names) {
                let mut ask = Ask::new(&device, "0", "2000-01-01").set(set);
                for on in &dates {
                    ask.query.on = *on;
                    let context = || format!("{snapshot} {set:?} {device} on {on}");
                    let got = ask.resolve(&catalog);
                    let candidates = ask.candidates(&catalog);
                    for c in &candidates {
                        assert!(c.expires.is_none_or(|e| e >= *on), "{}: {c:?}", context());
                    }
                    match raw_newest(&offers, *on) {
                        Some((newest, open)) => {
                            let got = got.unwrap_or_else(|e| panic!("{}: {e}", context()));
                            assert_eq!(version(&got.version), newest, "{}", context());
                            assert_eq!(
                                open.get(got.build.as_str()),
                                Some(&got.expires),
                                "{}: {got:?} is not an open build of {newest}",
                                context()
                            );
                            assert!(got.expires.is_none_or(|e| e >= *on), "{}", context());
                            assert_eq!(candidates.first(), Some(&got), "{}", context());
                        }
                        None => {
                            assert_eq!(got, Err(NoTarget::NoSignedRelease), "{}", context());
                            assert!(candidates.is_empty(), "{}", context());
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 10_000, "only {checked} questions asked");
}

#[test]
fn an_expired_first_choice_twin_gives_way_to_the_open_twin() {
    // 2025-10-30, AssetSets: the iPad Pro (M5) ids iPad17,1-4 get 26.0.1 as 23A8464/23A9464
    // (expiring 2026-01-19) and 23A8466/23A9466 (expiring 2026-01-28).
    let c = catalog("2025-10-30");
    let ipad = |on| Ask::new("iPad17,1", "26.0", on).resolve(&c);
    assert_eq!(
        ipad("2026-01-19"),
        Ok(target("26.0.1", "23A8464", "2026-01-19"))
    );
    assert_eq!(
        ipad("2026-01-20"),
        Ok(target("26.0.1", "23A8466", "2026-01-28"))
    );
    assert_eq!(ipad("2026-01-29"), Err(NoTarget::NoSignedRelease));
}

#[test]
fn expired_entries_that_apple_still_serves_are_never_targets() {
    // xrOS 1.0.3 (21N333) expired 2024-06-05 but is still listed on 2024-06-30 and 2024-09-16.
    for snapshot in ["2024-06-30", "2024-09-16"] {
        let c = catalog(snapshot);
        for set in [AssetSet::Mdm, AssetSet::Public] {
            let pin = |on| {
                Ask::new("RealityDevice14,1", "1.0.2", on)
                    .set(set)
                    .strategy("pinned:1.0.3")
                    .resolve(&c)
            };
            assert_eq!(pin(snapshot), Err(NoTarget::NoSignedRelease));
            assert_eq!(
                pin("2024-06-05"),
                Ok(target("1.0.3", "21N333", "2024-06-05"))
            );
        }
    }
    // 2026-03-17: J700AP's two builds expire 2026-06-15 and 06-08; after that nothing is signed.
    let c = catalog("2026-03-17");
    assert_eq!(
        Ask::new("J700AP", "26.1", "2026-06-16").resolve(&c),
        Err(NoTarget::NoSignedRelease)
    );
    assert_eq!(
        Ask::new("J700AP", "26.1", "2026-06-15").resolve(&c),
        Ok(target("26.3.2", "25D2140", "2026-06-15"))
    );
}

// ---------------------------------------------------------------------------------------------
// Twin builds and builds listed twice
// ---------------------------------------------------------------------------------------------

#[test]
fn twin_builds_are_distinct_releases_of_one_version() {
    let c = catalog("2026-03-17");
    let raw = raw("2026-03-17");
    for set in [AssetSet::Mdm, AssetSet::Public] {
        let (a, b) = (
            release(c.releases(set), "23D8133"),
            release(c.releases(set), "23D9133"),
        );
        assert_eq!(a.version, version("26.3.1"));
        assert_eq!(b.version, version("26.3.1"));
        assert_eq!(devices(a), devices(b));
        assert_eq!(a.supported_devices.len(), 95);
    }
    // The security improvement names 23D8133 as its base; that twin is the one chosen.
    let bsi = raw_entries(&raw, "PublicBackgroundSecurityImprovements");
    let (_, ios_bsi) = bsi
        .iter()
        .find(|(key, _)| *key == "iOS")
        .expect("an iOS BSI");
    assert_eq!(field(ios_bsi, "PrerequisiteBuild"), "23D8133");
    let iphone = Ask::new("iPhone15,2", "26.2", "2026-03-17");
    assert_eq!(
        iphone.resolve(&c),
        Ok(target("26.3.1", "23D8133", "2026-06-15"))
    );
    assert_eq!(
        builds(&iphone.candidates(&c))[..4],
        ["23D8133", "23D9133", "23D127", "23D6127"]
    );

    // A 6xxx twin, and a rarer 3xxx one (iOS 18.0 22A3354 / 22A6354 on 2024-09-16).
    let c = catalog("2026-08-22");
    assert_eq!(
        builds(&Ask::new("iPhone15,2", "26.6", "2026-08-22").candidates(&c)),
        ["23G83", "23G6083"]
    );
    let c = catalog("2024-09-16");
    for build in ["22A3354", "22A6354"] {
        let r = release(c.releases(AssetSet::Public), build);
        assert_eq!(r.version, version("18.0"));
        assert_eq!(r.supported_devices.len(), 79);
    }
}

#[test]
fn twin_counts_match_the_data() {
    // Releases of one key and version with identical device lists, counted per snapshot in
    // PublicAssetSets. real-data.md says "12–16 pairs"; the JSON has 11 on 2024-09-16.
    let want = [
        ("2024-06-30", 13),
        ("2024-09-16", 11),
        ("2025-05-21", 13),
        ("2025-09-16", 15),
        ("2025-10-30", 16),
        ("2026-03-17", 16),
        ("2026-08-22", 15),
    ];
    for (snapshot, pairs) in want {
        let c = catalog(snapshot);
        let mut groups: BTreeMap<(CatalogKey, String, BTreeSet<&str>), usize> = BTreeMap::new();
        for r in c.releases(AssetSet::Public) {
            *groups
                .entry((r.key, r.version.to_string(), devices(r)))
                .or_default() += 1;
        }
        let twins: Vec<usize> = groups.into_values().filter(|n| *n > 1).collect();
        assert!(twins.iter().all(|n| *n == 2), "{snapshot}: {twins:?}");
        assert_eq!(twins.len(), pairs, "{snapshot}");
    }
}

#[test]
fn a_build_listed_twice_merges_by_device_with_per_device_expiration() {
    // 2025-09-16 AssetSets: watchOS 11.6 22U84 for Watch6,10-13 until 2025-12-15, and for 22
    // other watches until 2025-11-12. PublicAssetSets lists only the four.
    let c = catalog("2025-09-16");
    let merged = release(c.releases(AssetSet::Mdm), "22U84");
    assert_eq!(merged.supported_devices.len(), 26);
    assert_eq!(merged.expiration_date, Some(day("2025-12-15")));
    assert_eq!(
        devices(release(c.releases(AssetSet::Public), "22U84")),
        BTreeSet::from(["Watch6,10", "Watch6,11", "Watch6,12", "Watch6,13"])
    );
    let pin = |device, on| {
        Ask::new(device, "11.5", on)
            .strategy("pinned:11.6")
            .resolve(&c)
    };
    assert_eq!(
        pin("Watch6,10", "2025-11-13"),
        Ok(target("11.6", "22U84", "2025-12-15"))
    );
    assert_eq!(
        pin("Watch6,1", "2025-11-12"),
        Ok(target("11.6", "22U84", "2025-11-12"))
    );
    assert_eq!(
        pin("Watch6,1", "2025-11-13"),
        Err(NoTarget::NoSignedRelease)
    );
    // Latest-minor: Watch6,1 also has 11.6.1, which Watch6,10-13 are never offered.
    let minor = |device| {
        Ask::new(device, "11.5", "2025-11-13")
            .strategy("latest-minor")
            .resolve(&c)
    };
    assert_eq!(
        minor("Watch6,1"),
        Ok(target("11.6.1", "22U90", "2025-12-15"))
    );
    assert_eq!(
        minor("Watch6,10"),
        Ok(target("11.6", "22U84", "2025-12-15"))
    );

    // 2026-08-22 AssetSets: iOS 26.5.2 23F84 for 73 devices until 2026-11-04 and for 22
    // (iPad15-17, iPhone17,5, iPhone18,x) until 2026-10-25; its twin 23F6084 until 10-25 for all.
    let c = catalog("2026-08-22");
    assert_eq!(
        release(c.releases(AssetSet::Mdm), "23F84")
            .supported_devices
            .len(),
        95
    );
    let pin = |device| {
        Ask::new(device, "26.5", "2026-10-30")
            .strategy("pinned:26.5.2")
            .resolve(&c)
    };
    assert_eq!(
        pin("iPhone15,2"),
        Ok(target("26.5.2", "23F84", "2026-11-04"))
    );
    assert_eq!(pin("iPhone18,1"), Err(NoTarget::NoSignedRelease));
}

// ---------------------------------------------------------------------------------------------
// xrOS is visionOS
// ---------------------------------------------------------------------------------------------

#[test]
fn xros_is_folded_into_visionos() {
    for snapshot in ["2024-06-30", "2024-09-16"] {
        let c = catalog(snapshot);
        for set in [AssetSet::Mdm, AssetSet::Public] {
            let xros = release(c.releases(set), "21N333");
            assert_eq!(xros.key, CatalogKey::VisionOs, "{snapshot} {set:?}");
            assert_eq!(xros.version, version("1.0.3"));
            assert_eq!(xros.platforms(), [Platform::VisionOs]);
        }
    }
    // On 2024-06-30 visionOS 1.2 sits under the iOS key while the visionOS key has 1.1.2: the
    // headset still gets the newest one.
    let c = catalog("2024-06-30");
    assert_eq!(
        release(c.releases(AssetSet::Mdm), "21O589").key,
        CatalogKey::Ios
    );
    assert_eq!(
        Ask::new("RealityDevice14,1", "1.0.3", "2024-06-30").resolve(&c),
        Ok(target("1.2", "21O589", "2024-09-28"))
    );
    assert_eq!(
        builds(&Ask::new("RealityDevice14,1", "1.0.2", "2024-06-01").candidates(&c)),
        [
            "21O589", "21O6589", "21O231", "21O6231", "21O224", "21O6224", "21N333"
        ]
    );
    // On 2024-09-16 visionOS 2.0 (visionOS key) beats 1.3 (still under iOS).
    let c = catalog("2024-09-16");
    let headset = Ask::new("RealityDevice14,1", "1.2", "2024-09-16");
    assert_eq!(
        headset.resolve(&c),
        Ok(target("2.0", "22N320", "2024-12-15"))
    );
    assert_eq!(
        headset.strategy("latest-minor").resolve(&c),
        Ok(target("1.3", "21O771", "2024-12-15"))
    );
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

#[test]
fn latest_minor_keeps_the_major_a_device_runs() {
    let c = catalog("2026-03-17");
    for set in [AssetSet::Mdm, AssetSet::Public] {
        let mac = |running| {
            Ask::new("J314sAP", running, "2026-03-17")
                .set(set)
                .strategy("latest-minor")
                .resolve(&c)
        };
        assert_eq!(mac("15.6"), Ok(target("15.7.4", "24G517", "2026-06-15")));
        assert_eq!(mac("14.5"), Ok(target("14.8.4", "23J319", "2026-06-15")));
        assert_eq!(mac("26.0"), Ok(target("26.3.1", "25D2128", "2026-06-15")));
        assert_eq!(mac("15.7.4"), Err(NoTarget::UpToDate));
    }
    // An Intel board id gets no 26 at all: its newest is 15.7.4.
    assert_eq!(
        Ask::new("Mac-1E7E29AD0135F9BC", "15.6", "2026-03-17").resolve(&c),
        Ok(target("15.7.4", "24G517", "2026-06-15"))
    );
    // iPhone on 18.x on 2025-09-16, the day 26.0 appeared.
    let c = catalog("2025-09-16");
    assert_eq!(
        Ask::new("iPhone15,2", "18.6", "2025-09-16")
            .strategy("latest-minor")
            .resolve(&c),
        Ok(target("18.7", "22H20", "2025-12-15"))
    );
}

#[test]
fn pinned_versions_are_exact_and_a_pinned_major_takes_its_newest() {
    let c = catalog("2026-03-17");
    let pin = |pin: &str, running, set| {
        Ask::new("J314sAP", running, "2026-03-17")
            .set(set)
            .strategy(pin)
            .resolve(&c)
    };
    let mdm = AssetSet::Mdm;
    assert_eq!(
        pin("pinned:26.2", "15.6", mdm),
        Ok(target("26.2", "25C56", "2026-05-12"))
    );
    assert_eq!(
        pin("pinned:26.3", "15.6", mdm),
        Ok(target("26.3", "25D125", "2026-06-02"))
    );
    assert_eq!(
        pin("pinned:26", "15.6", mdm),
        Ok(target("26.3.1", "25D2128", "2026-06-15"))
    );
    assert_eq!(
        pin("pinned:15", "14.5", mdm),
        Ok(target("15.7.4", "24G517", "2026-06-15"))
    );
    assert_eq!(
        pin("pinned:15.7.3", "14.5", mdm),
        Ok(target("15.7.3", "24G419", "2026-05-12"))
    );
    // 26.3.2 is a J700AP-only build; PublicAssetSets has no 26.2.
    assert_eq!(
        pin("pinned:26.3.2", "15.6", mdm),
        Err(NoTarget::NoMatchingRelease)
    );
    assert_eq!(
        pin("pinned:26.2", "15.6", AssetSet::Public),
        Err(NoTarget::NoMatchingRelease)
    );
    assert_eq!(pin("pinned:26.2", "26.3.1", mdm), Err(NoTarget::UpToDate));
    assert_eq!(pin("pinned:26.2", "26.2", mdm), Err(NoTarget::UpToDate));
}

#[test]
fn major_behind_counts_majors_as_they_appear() {
    // After 18 came 26: one major behind 26 is 18, not 25.
    let iphone = |snapshot: &str, n: u32| {
        Ask::new("iPhone15,2", "17.6", snapshot)
            .strategy(&format!("major-behind:{n}"))
            .resolve(&catalog(snapshot))
    };
    assert_eq!(
        iphone("2025-09-16", 1),
        Ok(target("18.7", "22H20", "2025-12-15"))
    );
    assert_eq!(
        iphone("2025-09-16", 2),
        Ok(target("17.7.2", "21H221", "2025-12-14"))
    );
    assert_eq!(
        iphone("2025-09-16", 0),
        Ok(target("26.0", "23A341", "2025-12-15"))
    );
    assert_eq!(
        iphone("2025-10-30", 1),
        Ok(target("18.7.1", "22H31", "2026-01-28"))
    );
    assert_eq!(
        iphone("2026-08-22", 1),
        Ok(target("18.7.8", "22H352", "2026-11-20"))
    );
    // On 2026-03-17 no 18.x is listed for iPhone15,2 (only for iPhone11,x and some iPads).
    assert_eq!(iphone("2026-03-17", 1), Err(NoTarget::NoMatchingRelease));
    // Before 26: 2025-05-21 offers 18.5 and 17.7.2.
    assert_eq!(
        iphone("2025-05-21", 1),
        Ok(target("17.7.2", "21H221", "2025-08-19"))
    );

    // A device already on a newer major than the answer is up to date.
    let c = catalog("2025-09-16");
    assert_eq!(
        Ask::new("iPhone15,2", "26.0", "2025-09-16")
            .strategy("major-behind:1")
            .resolve(&c),
        Err(NoTarget::UpToDate)
    );
    // PublicAssetSets has only 26.0 and 18.7 for it.
    assert_eq!(
        Ask::new("iPhone15,2", "17.6", "2025-09-16")
            .public()
            .strategy("major-behind:2")
            .resolve(&c),
        Err(NoTarget::NoMatchingRelease)
    );
    // iPhone X tops out at 16.x: there is no major behind its newest.
    assert_eq!(
        Ask::new("iPhone10,3", "15.0", "2026-08-22")
            .strategy("major-behind:1")
            .resolve(&catalog("2026-08-22")),
        Err(NoTarget::NoMatchingRelease)
    );
    // iPhone XS tops out at 18: major-behind counts from the device's own newest major.
    assert_eq!(
        Ask::new("iPhone11,2", "17.0", "2026-03-17")
            .strategy("major-behind:0")
            .resolve(&catalog("2026-03-17")),
        Ok(target("18.7.6", "22H320", "2026-06-15"))
    );
}

// ---------------------------------------------------------------------------------------------
// Security improvements
// ---------------------------------------------------------------------------------------------

fn with_extra(version: &str, build: &str, expires: &str) -> Target {
    Target {
        version: format!("{version} (a)"),
        ..target(version, build, expires)
    }
}

#[test]
fn background_security_improvements_on_2026_03_17() {
    let c = catalog("2026-03-17");
    for r in c.security_improvements() {
        assert_eq!(r.kind, ReleaseKind::SecurityImprovement);
        assert_eq!(r.version.extra(), Some("(a)"));
    }
    let iphone = Ask::new("iPhone15,2", "26.3.1", "2026-03-17").build("23D8133");
    assert_eq!(
        iphone.resolve(&c),
        Err(NoTarget::UpToDate),
        "without the switch"
    );
    let iphone = iphone.security();
    assert_eq!(
        iphone.resolve(&c),
        Ok(with_extra("26.3.1", "23D771330a", "2026-06-15"))
    );
    assert_eq!(builds(&iphone.candidates(&c)), ["23D771330a"]);

    // Each Mac gets the improvement for its own base: J700AP 26.3.2 (a), the others 26.3.1 (a).
    let mac = |id, running| Ask::new(id, running, "2026-03-17").security().resolve(&c);
    assert_eq!(
        mac("J700AP", "26.3.2"),
        Ok(with_extra("26.3.2", "25D771400a", "2026-06-15"))
    );
    assert_eq!(
        mac("J314sAP", "26.3.1"),
        Ok(with_extra("26.3.1", "25D771280a", "2026-06-15"))
    );
    assert_eq!(
        mac("VMA2MACOSAP", "26.3.1"),
        Ok(with_extra("26.3.1", "25D771280a", "2026-06-15"))
    );
    let j314 = Ask::new("J314sAP", "26.3.1", "2026-03-17").security();
    assert!(!builds(&j314.candidates(&c)).contains(&"25D771400a"));
    // A Mac on 15.x with latest-minor stays on 15 and gets no 26.x improvement.
    assert_eq!(
        Ask::new("J314sAP", "15.7.3", "2026-03-17")
            .security()
            .strategy("latest-minor")
            .resolve(&c),
        Ok(target("15.7.4", "24G517", "2026-06-15"))
    );
}

#[test]
fn security_improvements_outlive_their_base_builds() {
    // 2026-08-22: the three BSI entries are still listed (expiring 2026-11-20), yet none of
    // their prerequisites 23D8133, 25D2128, 25D2140 is in either asset set any more.
    let raw = raw("2026-08-22");
    let listed: BTreeSet<&str> = ["AssetSets", "PublicAssetSets"]
        .iter()
        .flat_map(|set| raw_entries(&raw, set))
        .map(|(_, e)| field(e, "Build"))
        .collect();
    for base in ["23D8133", "25D2128", "25D2140"] {
        assert!(!listed.contains(base), "{base}");
    }
    let c = catalog("2026-08-22");
    assert_eq!(c.security_improvements().len(), 3);
    let iphone = Ask::new("iPhone15,2", "26.3.1", "2026-08-22")
        .build("23D8133")
        .security();
    // The newer full release wins over the old improvement.
    assert_eq!(
        iphone.resolve(&c),
        Ok(target("26.6.1", "23G83", "2026-11-20"))
    );
    assert_eq!(
        iphone.strategy("pinned:26.3.1").resolve(&c),
        Ok(with_extra("26.3.1", "23D771330a", "2026-11-20"))
    );
}

#[test]
fn zentral_trimmed_bsi_file_without_the_base_build() {
    // Zentral's hand-trimmed file: macOS 13.3.1 (a) 22E772610a for J413AP, base 22E261. The
    // base build itself is NOT in the file (AssetSets.macOS has 13.1, 13.0.1, 12.6.2 only).
    let raw: Value =
        serde_json::from_slice(&std::fs::read(BSI_TRIMMED).expect("readable")).expect("JSON");
    let builds_listed: Vec<&str> = ["AssetSets", "PublicAssetSets"]
        .iter()
        .flat_map(|set| raw_entries(&raw, set))
        .map(|(_, e)| field(e, "Build"))
        .collect();
    assert!(!builds_listed.contains(&"22E261"));

    let c = catalog_from_file(BSI_TRIMMED);
    let mac = |running, build| {
        Ask::new("J413AP", running, "2023-05-02")
            .build(build)
            .security()
    };
    // Already on the base build: the (a) installs directly.
    assert_eq!(
        mac("13.3.1", "22E261").resolve(&c),
        Ok(with_extra("13.3.1", "22E772610a", "2023-07-31"))
    );
    // Below the base, and the base is not offered: no target at all.
    assert_eq!(
        mac("13.3", "22E252").resolve(&c),
        Err(NoTarget::NoMatchingRelease)
    );
    // The 2023 RSR shape has no Build: the improvement is still resolved, by version.
    let rsr = catalog_from_file(RSR_TRIMMED);
    let r = &rsr.security_improvements()[0];
    assert_eq!(
        (r.build.as_ref(), r.version.to_string()),
        (None, "13.3.1 (a)".into())
    );
    assert_eq!(
        r.prerequisite_build.as_ref().map(Build::as_str),
        Some("22E261")
    );
}

/// Synthetic: the trimmed Zentral file lacks the base build, so this adds it (macOS 13.3.1
/// 22E261) next to the real 13.3.1 (a) entry, to show the two-step route.
const SYNTHETIC_TWO_STEP: &str = r#"{
  "AssetSets": {
    "macOS": [
      {"ProductVersion": "13.3.1", "Build": "22E261", "PostingDate": "2023-04-07",
       "ExpirationDate": "2023-07-31", "SupportedDevices": ["J413AP"]},
      {"ProductVersion": "13.3", "Build": "22E252", "PostingDate": "2023-03-27",
       "ExpirationDate": "2023-06-30", "SupportedDevices": ["J413AP"]}
    ]
  },
  "PublicBackgroundSecurityImprovements": {
    "macOS": [
      {"ProductVersion": "13.3.1", "Build": "22E772610a", "ProductVersionExtra": "(a)",
       "PrerequisiteBuild": "22E261", "PostingDate": "2023-05-01",
       "ExpirationDate": "2023-07-31", "SupportedDevices": ["J413AP"]}
    ]
  }
}"#;

#[test]
fn synthetic_a_mac_below_the_base_build_goes_two_step() {
    let c = Catalog::from_slice(SYNTHETIC_TWO_STEP.as_bytes()).expect("synthetic parses");
    let mac = |running, build| Ask::new("J413AP", running, "2023-05-02").build(build);
    let base = target("13.3.1", "22E261", "2023-07-31");
    assert_eq!(mac("13.2.1", "22D68").resolve(&c), Ok(base.clone()));
    assert_eq!(
        mac("13.2.1", "22D68").security().resolve(&c),
        Ok(Target {
            two_step: true,
            ..base.clone()
        })
    );
    assert_eq!(
        mac("13.3", "22E252").security().resolve(&c),
        Ok(Target {
            two_step: true,
            ..base
        })
    );
    assert_eq!(
        mac("13.3.1", "22E261").security().resolve(&c),
        Ok(with_extra("13.3.1", "22E772610a", "2023-07-31"))
    );
}

// ---------------------------------------------------------------------------------------------
// UpToDate and DeviceNotInCatalog
// ---------------------------------------------------------------------------------------------

#[test]
fn a_device_at_or_above_the_answer_is_up_to_date() {
    let c = catalog("2026-03-17");
    for set in [AssetSet::Mdm, AssetSet::Public] {
        for (id, running) in [
            ("J314sAP", "26.3.1"),
            ("J314sAP", "27.0"),
            ("J700AP", "26.3.2"),
            ("iPhone15,2", "26.3.1"),
            ("Watch6,1", "26.3"),
            ("iPhone10,3", "16.7.15"),
        ] {
            assert_eq!(
                Ask::new(id, running, "2026-03-17").set(set).resolve(&c),
                Err(NoTarget::UpToDate),
                "{id} on {running} {set:?}"
            );
        }
    }
}

#[test]
fn a_device_on_the_newest_listed_release_stays_up_to_date_after_expiry() {
    // Nothing newer than 26.3.2 is listed for J700AP, expired or not, so neither
    // NoSignedRelease ("newer releases exist but expired") nor NoMatchingRelease applies.
    let c = catalog("2026-03-17");
    assert_eq!(
        Ask::new("J700AP", "26.3.2", "2026-06-15").resolve(&c),
        Err(NoTarget::UpToDate)
    );
    assert_eq!(
        Ask::new("J700AP", "26.3.2", "2026-06-16").resolve(&c),
        Err(NoTarget::UpToDate)
    );
}

#[test]
fn macs_are_matched_by_board_id_not_model_id() {
    // No snapshot contains a Mac model identifier; board ids are case-significant.
    let everything: String = ALL
        .iter()
        .map(|s| String::from_utf8(bytes(s, Form::Apple)).expect("UTF-8"))
        .collect();
    for absent in [
        "Mac14,2",
        "MacBookPro18,2",
        "VirtualMac2,1",
        "j314sap",
        "J314SAP",
    ] {
        assert!(!everything.contains(absent), "{absent} is in the data");
    }
    for snapshot in REAL {
        let c = catalog(snapshot);
        for id in [
            "Mac14,2",
            "MacBookPro18,2",
            "VirtualMac2,1",
            "j314sap",
            "J314SAP",
        ] {
            assert_eq!(
                Ask::new(id, "13.0", snapshot).resolve(&c),
                Err(NoTarget::DeviceNotInCatalog),
                "{id} on {snapshot}"
            );
        }
    }
    let c = catalog("2026-03-17");
    assert!(c.knows_device("J314sAP") && c.knows_device("J314cAP"));
    assert_eq!(
        Ask::new("Mac14,2", "13.0", "2026-03-17")
            .security()
            .resolve(&c),
        Err(NoTarget::DeviceNotInCatalog)
    );
}

// ---------------------------------------------------------------------------------------------
// The CLI JSON contract
// ---------------------------------------------------------------------------------------------

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddm-update-operator"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("the binary runs")
}

/// `catalog resolve --output json` for one device; asserts exit 0 and parses stdout.
fn cli_resolve(catalog: &str, device: &str, running: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "catalog",
        "resolve",
        "--catalog",
        catalog,
        "--device-id",
        device,
        "--os-version",
        running,
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = cli(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

#[test]
fn cli_resolve_prints_target_and_candidates_newest_first() {
    let file = path("2026-03-17", Form::Apple);
    let out = cli_resolve(&file, "J700AP", "26.1", &["--at", "2026-03-17"]);
    assert_eq!(keys(&out), BTreeSet::from(["target", "candidates"]));
    // 26.3.2 posted 2026-03-10 in AssetSets (re-stamped 03-11 in PublicAssetSets).
    let newest = json!({"version": "26.3.2", "build": "25D2140",
                        "postingDate": "2026-03-10", "expirationDate": "2026-06-15"});
    let older = json!({"version": "26.3.1", "build": "25D2128",
                       "postingDate": "2026-03-04", "expirationDate": "2026-06-08"});
    assert_eq!(out["target"], newest);
    assert_eq!(out["candidates"], json!([newest, older]));

    // The SOFA wrapper and PublicAssetSets.
    let sofa = path("2026-03-17", Form::Sofa);
    let out = cli_resolve(
        &sofa,
        "J700AP",
        "26.1",
        &["--at", "2026-03-17", "--asset-set", "public"],
    );
    assert_eq!(out["candidates"], json!([newest]));

    // A Mac with a longer list: candidates strictly newest first.
    let out = cli_resolve(&file, "J314sAP", "13.0", &["--at", "2026-03-17"]);
    let versions: Vec<OsVersion> = out["candidates"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| version(c["version"].as_str().expect("a string")))
        .collect();
    assert_eq!(versions.len(), 8);
    assert!(versions.windows(2).all(|w| w[0] > w[1]), "{versions:?}");
    assert_eq!(out["target"]["build"], "25D2128");
}

#[test]
fn cli_resolve_shows_extras_two_step_and_reasons_only_when_they_apply() {
    let file = path("2026-03-17", Form::Apple);
    let at = ["--at", "2026-03-17"];
    // A security improvement carries versionExtra.
    let out = cli_resolve(
        &file,
        "iPhone15,2",
        "26.3.1",
        &[
            "--at",
            "2026-03-17",
            "--build",
            "23D8133",
            "--security-improvements",
        ],
    );
    assert_eq!(
        out["target"],
        json!({"version": "26.3.1", "versionExtra": "(a)", "build": "23D771330a",
               "postingDate": "2026-03-17", "expirationDate": "2026-06-15"})
    );
    assert!(out.get("reason").is_none());

    // No target: target is null and reason says why.
    for (device, running, reason) in [
        ("J700AP", "26.3.2", "UpToDate"),
        ("Mac14,2", "26.1", "DeviceNotInCatalog"),
    ] {
        let out = cli_resolve(&file, device, running, &at);
        assert_eq!(
            keys(&out),
            BTreeSet::from(["target", "candidates", "reason"])
        );
        assert_eq!(out["target"], Value::Null);
        assert_eq!(out["candidates"], json!([]));
        assert_eq!(out["reason"], reason);
    }

    // twoStep appears only when true (synthetic catalog: the real files lack the base build).
    let dir = tempfile::tempdir().expect("a temp dir");
    let synthetic = dir.path().join("two-step.json");
    std::fs::write(&synthetic, SYNTHETIC_TWO_STEP).expect("writable");
    let synthetic = synthetic.to_str().expect("UTF-8 path");
    let out = cli_resolve(
        synthetic,
        "J413AP",
        "13.3",
        &[
            "--at",
            "2023-05-02",
            "--build",
            "22E252",
            "--security-improvements",
        ],
    );
    assert_eq!(
        out["target"],
        json!({"version": "13.3.1", "build": "22E261", "postingDate": "2023-04-07",
               "expirationDate": "2023-07-31", "twoStep": true})
    );
}

#[test]
fn cli_exit_codes() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let malformed = dir.path().join("malformed.json");
    std::fs::write(&malformed, br#"{"AssetSets": {"iOS": [{"ProductVersion": "#).expect("writable");
    let missing = dir.path().join("missing.json");
    let good = path("2026-03-17", Form::Apple);
    let run = |catalog: &str, at: &str| {
        cli(&[
            "catalog",
            "resolve",
            "--catalog",
            catalog,
            "--device-id",
            "J700AP",
            "--os-version",
            "26.1",
            "--at",
            at,
            "--output",
            "json",
        ])
    };
    let cases = [
        (good.clone(), "2026-03-17", 0),
        (path(EMPTY, Form::Apple), "2026-03-17", 1),
        (path(EMPTY, Form::Sofa), "2026-03-17", 1),
        (malformed.to_string_lossy().into_owned(), "2026-03-17", 1),
        (missing.to_string_lossy().into_owned(), "2026-03-17", 2),
        (good.clone(), "yesterday", 2),
        (good, "2026-02-30", 2),
    ];
    for (catalog, at, code) in cases {
        let out = run(&catalog, at);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{catalog} --at {at}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if code != 0 {
            assert!(out.stdout.is_empty(), "{catalog}: nothing on stdout");
            assert!(!out.stderr.is_empty(), "{catalog}: an error on stderr");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed input
// ---------------------------------------------------------------------------------------------

fn refused(bytes: &[u8], what: &str) {
    assert!(
        PmvDocument::from_slice(bytes).is_err(),
        "{what} should be refused"
    );
}

/// A real snapshot with one change applied to its JSON.
fn mutated(snapshot: &str, change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut value = raw(snapshot);
    change(&mut value);
    serde_json::to_vec(&value).expect("serializable")
}

#[test]
fn truncated_snapshots_are_refused() {
    for snapshot in ["2024-06-30", "2026-03-17"] {
        for form in Form::BOTH {
            let full = bytes(snapshot, form);
            // Any cut before the closing brace leaves the top-level object open.
            let end = full
                .iter()
                .rposition(|b| *b == b'}')
                .expect("a closing brace");
            let mut cuts: BTreeSet<usize> = (0..end).step_by(997).collect();
            cuts.extend(0..end.min(200));
            cuts.extend(end.saturating_sub(48)..end);
            for cut in cuts {
                refused(
                    &full[..cut],
                    &format!("{} cut at {cut}", path(snapshot, form)),
                );
            }
            assert!(PmvDocument::from_slice(&full[..=end]).is_ok());
        }
    }
}

#[test]
fn wrongly_typed_fields_are_refused() {
    let first = |set: &str, key: &str| format!("/{set}/{key}/0");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "ProductVersion as a number",
            mutated("2026-03-17", |v| {
                v.pointer_mut(&first("AssetSets", "iOS")).expect("entry")["ProductVersion"] =
                    json!(26.3);
            }),
        ),
        (
            "SupportedDevices as a string",
            mutated("2026-03-17", |v| {
                v.pointer_mut(&first("PublicAssetSets", "macOS"))
                    .expect("entry")["SupportedDevices"] = json!("J700AP");
            }),
        ),
        (
            "SupportedDevices as an object",
            mutated("2025-09-16", |v| {
                v.pointer_mut(&first("AssetSets", "macOS")).expect("entry")["SupportedDevices"] =
                    json!({"J314sAP": true});
            }),
        ),
        (
            "SupportedDevices empty",
            mutated("2025-09-16", |v| {
                v.pointer_mut(&first("AssetSets", "iOS")).expect("entry")["SupportedDevices"] =
                    json!([]);
            }),
        ),
        (
            "Build as a number",
            mutated("2024-09-16", |v| {
                v.pointer_mut(&first("AssetSets", "iOS")).expect("entry")["Build"] = json!(21);
            }),
        ),
        (
            "PostingDate not a date",
            mutated("2024-09-16", |v| {
                v.pointer_mut(&first("PublicAssetSets", "iOS"))
                    .expect("entry")["PostingDate"] = json!("2024-13-45");
            }),
        ),
        (
            "ProductVersion not a version",
            mutated("2026-08-22", |v| {
                v.pointer_mut(&first("AssetSets", "visionOS"))
                    .expect("entry")["ProductVersion"] = json!("26.x");
            }),
        ),
        (
            "a platform key holding an object",
            mutated("2026-08-22", |v| v["AssetSets"]["iOS"] = json!({})),
        ),
        (
            "SOFA data holding a string",
            br#"{"etag": "x", "data": "PublicAssetSets"}"#.to_vec(),
        ),
    ];
    for (what, bytes) in cases {
        refused(&bytes, what);
    }
}

#[test]
fn lists_where_objects_belong_are_refused() {
    let entry = json!({"ProductVersion": "26.3.1", "Build": "23D8133",
                       "PostingDate": "2026-03-04", "ExpirationDate": "2026-06-15",
                       "SupportedDevices": ["iPhone15,2"]});
    let positional = json!([
        "26.3.1",
        null,
        "23D8133",
        null,
        "2026-03-04",
        "2026-06-15",
        ["iPhone15,2"]
    ]);
    let cases = [
        (
            "a set holding a list",
            mutated("2026-08-22", |v| v["PublicAssetSets"] = json!([])),
        ),
        (
            "a set holding a list of entry lists",
            json!({"AssetSets": [[entry]]}).to_string().into_bytes(),
        ),
        (
            "an entry written as a list",
            json!({"AssetSets": {"iOS": [positional]}})
                .to_string()
                .into_bytes(),
        ),
        ("a document that is a list", b"[]".to_vec()),
    ];
    for (what, bytes) in cases {
        refused(&bytes, what);
    }
}

#[test]
fn huge_junk_is_refused_without_panicking() {
    const TEN_MB: usize = 10 << 20;
    let mut string = Vec::with_capacity(TEN_MB + 2);
    string.push(b'"');
    string.resize(TEN_MB + 1, b'a');
    string.push(b'"');
    refused(&string, "a 10 MB JSON string");
    refused(&vec![b'x'; TEN_MB], "10 MB of letters");
    refused(&vec![b'['; TEN_MB], "10 MB of nested lists");
    let mut nested = br#"{"Unknown": "#.to_vec();
    nested.resize(nested.len() + TEN_MB, b'{');
    refused(&nested, "10 MB of nesting under an unknown key");
    // Pseudo-random bytes from a fixed-seed xorshift.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let noise: Vec<u8> = (0..TEN_MB)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    refused(&noise, "10 MB of noise");
}
