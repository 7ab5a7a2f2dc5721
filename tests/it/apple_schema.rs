//! Validates a DDM declaration against Apple's own schema files: the YAML under
//! `tests/fixtures/apple-schemas/` (see `SOURCE.md` there for which Apple commit each file
//! came from). Nothing below restates Apple's rules; the key names, types, required keys,
//! `rangelist`s, `range`s and per-OS availability all come from reading the YAML at run time.
//!
//! What is checked, for one declaration and one [`Target`]:
//! * the declaration base (`declarationbase.yaml`): `Type`, `Identifier`, `ServerToken`,
//!   `Payload` present with the right types, no other top-level keys, and the size limit its
//!   prose gives ("should not exceed 64 octets", read from each key's `content`; enforced as a
//!   hard limit on the UTF-8 length of `Identifier` and `ServerToken`), and that DDM itself is
//!   available on the target (`payload.supportedOS` of the base);
//! * the `Type` has a schema, and that schema's `payload.supportedOS` allows the target: the
//!   OS entry exists, `introduced` is not `n/a` and is ≤ the target version, `removed` (if any)
//!   is > the target version, and `allowed-enrollments` (if any) contains the enrollment;
//! * every payload key, recursively: it is in the schema (unknown keys are errors), its type
//!   matches, `presence: required` keys are there, the value is in `rangelist`, within
//!   `range` (and an array's length within `repetition`), and the key is available on the
//!   target once its own `supportedOS` is laid over its parent's (field by field, as
//!   `docs/schema.md` describes). Array items are checked against the array's single subkey;
//! * `management.status-subscriptions`: every `StatusItems[].Name` is the `statusitemtype` of
//!   a file in `declarative/status/` and that file's `supportedOS` allows the target;
//! * `activation.simple`: `StandardConfigurations` is not empty (the schema only types it).
//!
//! Not checked: `allowed-scopes`, `sharedipad`/`userenrollment` modes (a [`Target`] has no
//! scope), the formats only given in prose (e.g. `TargetLocalDateTime`), `<date>`/`<data>`
//! beyond "is a string". A schema field the validator does not know makes loading panic, so a
//! newer schema cannot silently add a rule that goes unchecked.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::{Map, Value};

/// The device a declaration is meant for.
pub struct Target<'a> {
    /// `"iOS"`, `"macOS"`, `"tvOS"`, `"watchOS"` or `"visionOS"`, as the schemas spell them.
    pub os: &'a str,
    /// Dotted version, e.g. `"26.3"`.
    pub os_version: &'a str,
    /// `"supervised"`, `"device"`, `"user"` or `"local"`.
    pub enrollment: &'a str,
}

/// Validates one declaration as the device would receive it: `declaration` is the whole JSON
/// object `{"Type", "Identifier", "ServerToken", "Payload"}`. Returns every problem found
/// (empty = valid).
pub fn validate(declaration: &Value, target: &Target) -> Vec<String> {
    let mut walk = Walk {
        target,
        check_availability: true,
        problems: Vec::new(),
    };
    walk.declaration(declaration, &SCHEMAS);
    walk.problems
}

const STATUS_SUBSCRIPTIONS: &str = "com.apple.configuration.management.status-subscriptions";
const SIMPLE_ACTIVATION: &str = "com.apple.activation.simple";

/// Schema fields that only document a key or say how the device merges configurations; they
/// constrain nothing the validator could check in a single declaration.
const IGNORED_KEY_FIELDS: [&str; 4] = ["title", "default", "combinetype", "subkeytype"];

const KNOWN_TYPES: [&str; 9] = [
    "<string>",
    "<integer>",
    "<real>",
    "<boolean>",
    "<date>",
    "<data>",
    "<array>",
    "<dictionary>",
    "<any>",
];

// ---------------------------------------------------------------------------------------------
// The schema files

/// `supportedOS`: OS name → what that OS supports.
type SupportedOs = BTreeMap<String, OsSupport>;

#[derive(Deserialize, Clone, Default)]
struct OsSupport {
    introduced: Option<String>,
    removed: Option<String>,
    #[serde(rename = "allowed-enrollments")]
    allowed_enrollments: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct PayloadInfo {
    declarationtype: Option<String>,
    statusitemtype: Option<String>,
    #[serde(rename = "supportedOS", default)]
    supported_os: SupportedOs,
}

/// A declaration schema (`declarative/declarations/**.yaml`).
#[derive(Deserialize)]
struct SchemaFile {
    payload: PayloadInfo,
    #[serde(default)]
    payloadkeys: Vec<KeySpec>,
}

/// A status item schema: only its name and availability matter here.
#[derive(Deserialize)]
struct StatusFile {
    payload: PayloadInfo,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Presence {
    Required,
    Optional,
}

#[derive(Deserialize)]
struct Bounds {
    min: Option<serde_json::Number>,
    max: Option<serde_json::Number>,
}

/// One entry of `payloadkeys` or `subkeys`.
#[derive(Deserialize)]
struct KeySpec {
    key: String,
    #[serde(rename = "type")]
    value_type: String,
    presence: Option<Presence>,
    #[serde(rename = "supportedOS", default)]
    supported_os: SupportedOs,
    #[serde(default)]
    rangelist: Vec<Value>,
    range: Option<Bounds>,
    repetition: Option<Bounds>,
    content: Option<String>,
    #[serde(default)]
    subkeys: Vec<KeySpec>,
    /// Everything else; must be one of [`IGNORED_KEY_FIELDS`] (checked at load).
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

struct Schemas {
    base: SchemaFile,
    /// `declarationtype` → schema.
    declarations: HashMap<String, SchemaFile>,
    /// `statusitemtype` → that status item's `supportedOS`.
    status_items: HashMap<String, SupportedOs>,
}

static SCHEMAS: LazyLock<Schemas> = LazyLock::new(Schemas::load);

fn schema_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apple-schemas")
}

impl Schemas {
    fn load() -> Self {
        let root = schema_root();
        let base_path = root.join("declarative/declarations/declarationbase.yaml");
        let declarations = yaml_files(&root.join("declarative/declarations"))
            .into_iter()
            .filter(|path| *path != base_path)
            .map(|path| declaration_entry(&path))
            .collect();
        let status_items = yaml_files(&root.join("declarative/status"))
            .into_iter()
            .filter_map(|path| status_entry(&path))
            .collect();
        Schemas {
            base: read_schema(&base_path),
            declarations,
            status_items,
        }
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let pattern = format!("{}/**/*.yaml", dir.display());
    let files: Vec<PathBuf> = glob::glob(&pattern)
        .expect("the schema glob pattern is valid")
        .map(|entry| entry.expect("schema directory is readable"))
        .collect();
    assert!(!files.is_empty(), "no schema files under {}", dir.display());
    files
}

fn read_yaml<T: for<'de> Deserialize<'de>>(path: &Path) -> T {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()))
}

fn read_schema(path: &Path) -> SchemaFile {
    let schema: SchemaFile = read_yaml(path);
    for spec in &schema.payloadkeys {
        check_spec_shape(spec, path);
    }
    schema
}

fn declaration_entry(path: &Path) -> (String, SchemaFile) {
    let schema = read_schema(path);
    let name = (schema.payload.declarationtype.clone())
        .unwrap_or_else(|| panic!("{} has no payload.declarationtype", path.display()));
    (name, schema)
}

/// `None` for files in `declarative/status/` that are not status items (`statusreason.yaml`
/// describes the error object of a status report and has no `statusitemtype`).
fn status_entry(path: &Path) -> Option<(String, SupportedOs)> {
    let file: StatusFile = read_yaml(path);
    let name = file.payload.statusitemtype?;
    let stem = path.file_stem().and_then(|s| s.to_str());
    assert_eq!(stem, Some(name.as_str()), "status item name vs file name");
    Some((name, file.payload.supported_os))
}

/// Panics on schema content this validator would not enforce correctly.
fn check_spec_shape(spec: &KeySpec, path: &Path) {
    let here = format!("{} key {}", path.display(), spec.key);
    assert!(
        KNOWN_TYPES.contains(&spec.value_type.as_str()),
        "{here}: unknown type {}",
        spec.value_type
    );
    for field in spec.other.keys() {
        assert!(
            IGNORED_KEY_FIELDS.contains(&field.as_str()),
            "{here}: schema field `{field}` is not understood by this validator"
        );
    }
    if spec.value_type == "<array>" {
        assert!(
            spec.subkeys.len() <= 1,
            "{here}: array with several subkeys"
        );
    }
    for sub in &spec.subkeys {
        check_spec_shape(sub, path);
    }
}

// ---------------------------------------------------------------------------------------------
// Availability

/// Lays a key's own `supportedOS` over the one it inherits, field by field.
fn overlay(inherited: &SupportedOs, own: &SupportedOs) -> SupportedOs {
    let mut merged = inherited.clone();
    for (os, support) in own {
        let entry = merged.entry(os.clone()).or_default();
        if support.introduced.is_some() {
            entry.introduced.clone_from(&support.introduced);
        }
        if support.removed.is_some() {
            entry.removed.clone_from(&support.removed);
        }
        if support.allowed_enrollments.is_some() {
            entry
                .allowed_enrollments
                .clone_from(&support.allowed_enrollments);
        }
    }
    merged
}

/// Why `support` excludes `target`, or `None` if it allows it.
fn unavailability(support: &SupportedOs, target: &Target) -> Option<String> {
    let os = target.os;
    let Some(entry) = support.get(os) else {
        return Some(format!("no supportedOS entry for {os}"));
    };
    match entry.introduced.as_deref() {
        None => return Some(format!("supportedOS.{os} has no `introduced`")),
        Some("n/a") => return Some(format!("not available on {os} (introduced: n/a)")),
        Some(introduced) if older(target.os_version, introduced) => {
            let version = target.os_version;
            return Some(format!(
                "needs {os} {introduced} or later (target is {version})"
            ));
        }
        Some(_) => {}
    }
    if let Some(removed) = entry.removed.as_deref()
        && !older(target.os_version, removed)
    {
        return Some(format!("removed in {os} {removed}"));
    }
    let allowed = entry.allowed_enrollments.as_ref()?;
    if allowed.iter().any(|e| e == target.enrollment) {
        return None;
    }
    Some(format!(
        "not allowed for enrollment \"{}\" on {os} (allowed-enrollments: {})",
        target.enrollment,
        allowed.join(", ")
    ))
}

/// `a < b` for dotted versions; missing components count as 0 ("26" == "26.0").
fn older(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (version_parts(a), version_parts(b));
    let len = a.len().max(b.len());
    a.resize(len, 0);
    b.resize(len, 0);
    a < b
}

fn version_parts(version: &str) -> Vec<u64> {
    version
        .split('.')
        .map(|part| {
            part.parse()
                .unwrap_or_else(|_| panic!("not a dotted version: {version:?}"))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The walk over one declaration

struct Walk<'t> {
    target: &'t Target<'t>,
    /// Off once the declaration as a whole is unavailable: every key would repeat that.
    check_availability: bool,
    problems: Vec<String>,
}

impl Walk<'_> {
    fn problem(&mut self, path: &str, message: impl std::fmt::Display) {
        self.problems.push(format!("{path}: {message}"));
    }

    fn declaration(&mut self, declaration: &Value, schemas: &Schemas) {
        let Some(object) = declaration.as_object() else {
            self.problem("declaration", "is not a JSON object");
            return;
        };
        self.availability(
            "Declarative Device Management",
            &schemas.base.payload.supported_os,
        );
        let base = &schemas.base;
        self.dictionary(object, &base.payloadkeys, "", &base.payload.supported_os);
        let Some(kind) = object.get("Type").and_then(Value::as_str) else {
            return; // reported by the base check
        };
        let Some(schema) = schemas.declarations.get(kind) else {
            self.problem(
                "Type",
                format!("no Apple schema for declaration type {kind:?}"),
            );
            return;
        };
        if let Some(payload) = object.get("Payload").and_then(Value::as_object) {
            self.payload(kind, payload, schema, schemas);
        }
    }

    fn payload(
        &mut self,
        kind: &str,
        payload: &Map<String, Value>,
        schema: &SchemaFile,
        schemas: &Schemas,
    ) {
        let support = &schema.payload.supported_os;
        self.availability(&format!("Type {kind}"), support);
        self.dictionary(payload, &schema.payloadkeys, "Payload", support);
        match kind {
            STATUS_SUBSCRIPTIONS => self.status_items(payload, schemas),
            SIMPLE_ACTIVATION => self.standard_configurations(payload),
            _ => {}
        }
    }

    /// Reports (once) that a whole schema is unavailable and stops per-key availability checks.
    fn availability(&mut self, what: &str, support: &SupportedOs) {
        if !self.check_availability {
            return;
        }
        if let Some(why) = unavailability(support, self.target) {
            self.problem(what, why);
            self.check_availability = false;
        }
    }

    fn dictionary(
        &mut self,
        object: &Map<String, Value>,
        specs: &[KeySpec],
        path: &str,
        support: &SupportedOs,
    ) {
        for (key, value) in object {
            let child = child_path(path, key);
            match specs.iter().find(|spec| spec.key == *key) {
                Some(spec) => self.key(spec, value, &child, support),
                None => self.problem(&child, "unknown key (not in Apple's schema)"),
            }
        }
        for spec in specs {
            if spec.presence == Some(Presence::Required)
                && !object.contains_key(&spec.key)
                && self.key_available(spec, support)
            {
                self.problem(&child_path(path, &spec.key), "required key is missing");
            }
        }
    }

    /// A required key that may not be sent to this target is not missing.
    fn key_available(&self, spec: &KeySpec, inherited: &SupportedOs) -> bool {
        !self.check_availability
            || unavailability(&overlay(inherited, &spec.supported_os), self.target).is_none()
    }

    fn key(&mut self, spec: &KeySpec, value: &Value, path: &str, inherited: &SupportedOs) {
        let support = overlay(inherited, &spec.supported_os);
        if self.check_availability
            && let Some(why) = unavailability(&support, self.target)
        {
            self.problem(path, why);
            return;
        }
        if !type_matches(&spec.value_type, value) {
            let expected = &spec.value_type;
            self.problem(
                path,
                format!("expected {expected}, got {}", json_kind(value)),
            );
            return;
        }
        self.scalar_limits(spec, value, path);
        self.container(spec, value, path, &support);
    }

    fn scalar_limits(&mut self, spec: &KeySpec, value: &Value, path: &str) {
        if !spec.rangelist.is_empty() && !spec.rangelist.contains(value) {
            let allowed: Vec<String> = spec.rangelist.iter().map(Value::to_string).collect();
            self.problem(
                path,
                format!("{value} is not one of [{}]", allowed.join(", ")),
            );
        }
        if let (Some(range), Some(number)) = (&spec.range, value.as_f64()) {
            self.bounds(range, number, "the value", path);
        }
        if let (Some(limit), Some(text)) = (octet_limit(spec), value.as_str())
            && text.len() > limit
        {
            let len = text.len();
            self.problem(
                path,
                format!("{len} octets, more than the {limit} the schema allows"),
            );
        }
    }

    fn bounds(&mut self, bounds: &Bounds, number: f64, what: &str, path: &str) {
        if let Some(min) = &bounds.min
            && number < min.as_f64().expect("schema bound is a number")
        {
            self.problem(path, format!("{what} {number} is below the minimum {min}"));
        }
        if let Some(max) = &bounds.max
            && number > max.as_f64().expect("schema bound is a number")
        {
            self.problem(path, format!("{what} {number} is above the maximum {max}"));
        }
    }

    fn container(&mut self, spec: &KeySpec, value: &Value, path: &str, support: &SupportedOs) {
        match value {
            Value::Object(object) if !spec.subkeys.is_empty() => {
                self.dictionary(object, &spec.subkeys, path, support);
            }
            Value::Array(items) if spec.value_type == "<array>" => {
                if let Some(repetition) = &spec.repetition {
                    self.bounds(repetition, items.len() as f64, "the item count", path);
                }
                let Some(item_spec) = spec.subkeys.first() else {
                    return; // untyped array
                };
                for (index, item) in items.iter().enumerate() {
                    self.key(item_spec, item, &format!("{path}[{index}]"), support);
                }
            }
            _ => {}
        }
    }

    fn status_items(&mut self, payload: &Map<String, Value>, schemas: &Schemas) {
        let items = payload.get("StatusItems").and_then(Value::as_array);
        for (index, item) in items.into_iter().flatten().enumerate() {
            let Some(name) = item.get("Name").and_then(Value::as_str) else {
                continue; // reported by the schema walk
            };
            let path = format!("Payload.StatusItems[{index}].Name");
            match schemas.status_items.get(name) {
                None => self.problem(
                    &path,
                    format!("{name:?} is not a status item in Apple's schema"),
                ),
                Some(support) => self.status_item_availability(&path, name, support),
            }
        }
    }

    fn status_item_availability(&mut self, path: &str, name: &str, support: &SupportedOs) {
        if !self.check_availability {
            return;
        }
        if let Some(why) = unavailability(support, self.target) {
            self.problem(path, format!("status item {name}: {why}"));
        }
    }

    fn standard_configurations(&mut self, payload: &Map<String, Value>) {
        let configurations = payload
            .get("StandardConfigurations")
            .and_then(Value::as_array);
        if configurations.is_some_and(Vec::is_empty) {
            self.problem(
                "Payload.StandardConfigurations",
                "must list at least one configuration",
            );
        }
    }
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn type_matches(schema_type: &str, value: &Value) -> bool {
    match schema_type {
        "<string>" | "<date>" | "<data>" => value.is_string(),
        "<integer>" => value.is_i64() || value.is_u64(),
        "<real>" => value.is_number(),
        "<boolean>" => value.is_boolean(),
        "<array>" => value.is_array(),
        "<dictionary>" => value.is_object(),
        "<any>" => true,
        other => unreachable!("type {other} was rejected when the schema was loaded"),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "real number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "dictionary",
    }
}

/// The limit a key's description states as "should not exceed N octets" (only
/// `declarationbase.yaml`'s `Identifier` and `ServerToken` say so today).
fn octet_limit(spec: &KeySpec) -> Option<usize> {
    let content = spec.content.as_deref()?.replace('\n', " ");
    let (_, rest) = content.split_once("should not exceed ")?;
    let (number, rest) = rest.split_once(' ')?;
    rest.starts_with("octets").then(|| number.parse().ok())?
}

// ---------------------------------------------------------------------------------------------
// Self-tests

mod self_tests {
    use super::*;
    use serde_json::json;

    const MACOS_26: Target = Target {
        os: "macOS",
        os_version: "26.0",
        enrollment: "supervised",
    };
    const IOS_26: Target = Target {
        os: "iOS",
        os_version: "26.3",
        enrollment: "supervised",
    };

    const ENFORCEMENT: &str = "com.apple.configuration.softwareupdate.enforcement.specific";
    const SETTINGS: &str = "com.apple.configuration.softwareupdate.settings";

    fn declaration(kind: &str, payload: Value) -> Value {
        json!({
            "Type": kind,
            "Identifier": "ddm-update-operator.test",
            "ServerToken": "5f3c1a2b",
            "Payload": payload,
        })
    }

    fn enforcement() -> Value {
        declaration(
            ENFORCEMENT,
            json!({"TargetOSVersion": "26.3", "TargetLocalDateTime": "2026-03-01T12:00:00"}),
        )
    }

    fn set(declaration: &mut Value, pointer: &str, value: Value) {
        *declaration
            .pointer_mut(pointer)
            .expect("the test declaration has this key") = value;
    }

    /// Asserts `declaration` has exactly one problem and that it mentions every needle.
    fn assert_one_problem(declaration: &Value, target: &Target, needles: &[&str]) {
        let problems = validate(declaration, target);
        assert_eq!(problems.len(), 1, "expected one problem, got {problems:#?}");
        for needle in needles {
            assert!(
                problems[0].contains(needle),
                "{:?} lacks {needle:?}",
                problems[0]
            );
        }
    }

    fn example(relative: &str) -> Value {
        let path = schema_root()
            .join("examples/declarative/declarations")
            .join(relative);
        let text = std::fs::read_to_string(&path).expect("Apple example is in the fixtures");
        serde_json::from_str(&text).expect("Apple example is JSON")
    }

    #[test]
    fn schemas_load_with_every_needed_declaration_and_status_item() {
        let schemas = &*SCHEMAS;
        for kind in [
            ENFORCEMENT,
            SETTINGS,
            STATUS_SUBSCRIPTIONS,
            SIMPLE_ACTIVATION,
        ] {
            assert!(schemas.declarations.contains_key(kind), "{kind}");
        }
        assert_eq!(schemas.base.payloadkeys.len(), 4);
        assert!(
            schemas
                .status_items
                .contains_key("softwareupdate.install-state")
        );
        assert!(!schemas.status_items.contains_key("statusreason"));
    }

    #[test]
    fn apple_examples_validate() {
        let examples = [
            "activations/simple/example1.json",
            "activations/simple/example2.json",
            "configurations/softwareupdate.enforcement.specific/example1.json",
            "configurations/management.status-subscriptions/example1.json",
        ];
        for relative in examples {
            let problems = validate(&example(relative), &IOS_26);
            assert!(problems.is_empty(), "{relative} on iOS: {problems:#?}");
        }
        for relative in &examples[..3] {
            let problems = validate(&example(relative), &MACOS_26);
            assert!(problems.is_empty(), "{relative} on macOS: {problems:#?}");
        }
    }

    /// Apple's subscription example includes `passcode.is-compliant`, which its schema marks
    /// `n/a` on macOS; that is the only problem on macOS.
    #[test]
    fn apple_subscription_example_on_macos_flags_passcode_compliance() {
        let subscriptions = example("configurations/management.status-subscriptions/example1.json");
        assert_eq!(
            validate(&subscriptions, &MACOS_26),
            [
                "Payload.StatusItems[5].Name: status item passcode.is-compliant: \
              not available on macOS (introduced: n/a)"
            ]
        );
    }

    /// Apple's settings example shows every key at once, but no single OS takes them all:
    /// exactly the keys the schema marks `n/a` for that OS are reported.
    #[test]
    fn apple_settings_example_is_valid_except_keys_apple_marks_n_a() {
        let settings = example("configurations/softwareupdate.settings/example1.json");
        let na = |os: &str, paths: &[&str]| -> Vec<String> {
            let why = format!("not available on {os} (introduced: n/a)");
            paths
                .iter()
                .map(|p| format!("Payload.{p}: {why}"))
                .collect()
        };
        assert_eq!(
            validate(&settings, &MACOS_26),
            na("macOS", &["Beta", "RecommendedCadence"])
        );
        let ios = [
            "AllowStandardUserOSUpdates",
            "AutomaticActions.InstallSecurityUpdate",
            "Deferrals.MajorPeriodInDays",
        ];
        assert_eq!(validate(&settings, &IOS_26), na("iOS", &ios));
    }

    #[test]
    fn operator_shaped_declarations_validate() {
        assert_eq!(validate(&enforcement(), &MACOS_26), Vec::<String>::new());
        let settings = json!({"Deferrals": {"MajorPeriodInDays": 30}, "Notifications": true});
        assert!(validate(&declaration(SETTINGS, settings), &MACOS_26).is_empty());
        let items = json!({"StatusItems": [{"Name": "softwareupdate.pending-version"}]});
        assert!(validate(&declaration(STATUS_SUBSCRIPTIONS, items), &MACOS_26).is_empty());
    }

    #[test]
    fn unknown_payload_key() {
        let mut bad = enforcement();
        bad["Payload"]["TargetOSVersoin"] = json!("26.3");
        assert_one_problem(&bad, &MACOS_26, &["Payload.TargetOSVersoin", "unknown key"]);
    }

    #[test]
    fn wrong_type() {
        let mut bad = enforcement();
        set(&mut bad, "/Payload/TargetOSVersion", json!(26));
        assert_one_problem(
            &bad,
            &MACOS_26,
            &["Payload.TargetOSVersion", "expected <string>, got integer"],
        );
    }

    #[test]
    fn missing_target_os_version() {
        let mut bad = enforcement();
        bad["Payload"]
            .as_object_mut()
            .expect("payload is a dictionary")
            .remove("TargetOSVersion");
        assert_one_problem(
            &bad,
            &MACOS_26,
            &["Payload.TargetOSVersion", "required key is missing"],
        );
    }

    #[test]
    fn deferral_out_of_range() {
        let within = declaration(SETTINGS, json!({"Deferrals": {"CombinedPeriodInDays": 90}}));
        assert!(validate(&within, &IOS_26).is_empty());
        let bad = declaration(SETTINGS, json!({"Deferrals": {"CombinedPeriodInDays": 91}}));
        assert_one_problem(
            &bad,
            &IOS_26,
            &[
                "Payload.Deferrals.CombinedPeriodInDays",
                "91 is above the maximum 90",
            ],
        );
    }

    #[test]
    fn recommended_cadence_is_not_for_macos() {
        let settings = declaration(SETTINGS, json!({"RecommendedCadence": "Newest"}));
        assert!(validate(&settings, &IOS_26).is_empty());
        assert_one_problem(
            &settings,
            &MACOS_26,
            &[
                "Payload.RecommendedCadence",
                "not available on macOS (introduced: n/a)",
            ],
        );
    }

    #[test]
    fn enforcement_needs_tvos_18_4() {
        let tvos_17 = Target {
            os: "tvOS",
            os_version: "17.0",
            enrollment: "supervised",
        };
        assert_one_problem(
            &enforcement(),
            &tvos_17,
            &["Type", "needs tvOS 18.4 or later"],
        );
    }

    #[test]
    fn enforcement_on_macos_needs_supervision() {
        let device = Target {
            enrollment: "device",
            ..MACOS_26
        };
        assert_one_problem(
            &enforcement(),
            &device,
            &[
                "not allowed for enrollment \"device\" on macOS",
                "supervised",
            ],
        );
    }

    #[test]
    fn subscription_to_unknown_status_item() {
        let items = json!({"StatusItems": [{"Name": "softwareupdate.nonexistent"}]});
        let bad = declaration(STATUS_SUBSCRIPTIONS, items);
        assert_one_problem(
            &bad,
            &MACOS_26,
            &["Payload.StatusItems[0].Name", "not a status item"],
        );
    }

    #[test]
    fn subscription_to_status_item_newer_than_target() {
        let items = json!({"StatusItems": [{"Name": "mdm.enrollment-type"}]});
        let subscription = declaration(STATUS_SUBSCRIPTIONS, items);
        let macos_27 = Target {
            os_version: "27.0",
            ..MACOS_26
        };
        assert!(validate(&subscription, &macos_27).is_empty());
        assert_one_problem(&subscription, &MACOS_26, &["needs macOS 27.0 or later"]);
    }

    #[test]
    fn identifier_over_64_octets() {
        let mut at_limit = enforcement();
        set(&mut at_limit, "/Identifier", json!("a".repeat(64)));
        assert!(validate(&at_limit, &MACOS_26).is_empty());
        let mut bad = enforcement();
        set(&mut bad, "/Identifier", json!("a".repeat(65)));
        assert_one_problem(&bad, &MACOS_26, &["Identifier", "65 octets", "64"]);
        // 33 characters, 66 octets: the limit is on bytes, not characters.
        set(&mut bad, "/Identifier", json!("é".repeat(33)));
        assert_one_problem(&bad, &MACOS_26, &["Identifier", "66 octets"]);
    }

    #[test]
    fn download_value_outside_rangelist() {
        let bad = declaration(
            SETTINGS,
            json!({"AutomaticActions": {"Download": "Sometimes"}}),
        );
        assert_one_problem(
            &bad,
            &MACOS_26,
            &[
                "Payload.AutomaticActions.Download",
                "\"Sometimes\" is not one of",
            ],
        );
    }

    #[test]
    fn base_keys_are_checked() {
        let mut bad = enforcement();
        set(&mut bad, "/ServerToken", json!(7));
        assert_one_problem(&bad, &MACOS_26, &["ServerToken", "expected <string>"]);
        let unknown = declaration("com.apple.configuration.nonexistent", json!({}));
        assert_one_problem(&unknown, &MACOS_26, &["Type", "no Apple schema"]);
    }

    #[test]
    fn activation_needs_a_configuration() {
        let empty = declaration(SIMPLE_ACTIVATION, json!({"StandardConfigurations": []}));
        assert_one_problem(
            &empty,
            &MACOS_26,
            &["StandardConfigurations", "at least one"],
        );
        let numbers = declaration(SIMPLE_ACTIVATION, json!({"StandardConfigurations": [1]}));
        assert_one_problem(
            &numbers,
            &MACOS_26,
            &["StandardConfigurations[0]", "<string>"],
        );
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(older("18.4", "18.10"));
        assert!(!older("26", "26.0"));
        assert!(older("26.0", "26.0.1"));
        assert!(!older("27.0", "26.3"));
    }

    #[test]
    #[should_panic(expected = "schema field `format` is not understood")]
    fn schema_fields_the_validator_ignores_would_fail_loudly() {
        let yaml = "key: Name\ntype: <string>\nformat: '^[a-z]+$'\n";
        let spec: KeySpec = serde_saphyr::from_str(yaml).expect("key spec parses");
        check_spec_shape(&spec, Path::new("inline.yaml"));
    }
}
