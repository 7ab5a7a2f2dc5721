//! One validation for every mode. Every constraint of the CRDs' OpenAPI schemas (`required`,
//! `minimum`, `maximum`, `minLength`, `maxLength`, `pattern`, `enum`, `minItems`, `maxItems`,
//! `type`, `x-kubernetes-list-type` set and map) and every CEL rule is broken, one per manifest,
//! in a copy of a valid object that has every field. The cases are made by walking the schema
//! the `crds` subcommand prints, so a new constraint is tested without touching this file (a
//! keyword the walk does not know, a field the valid objects lack or a CEL rule without a
//! violating example fails it). Each manifest goes through:
//!
//! * `plan` (the binary), which must exit 1 naming the file, object, field and why;
//! * the standalone loader (`manifests::load`, what `run --manifests` reads);
//! * Kubernetes mode: the real API server (CRDs installed without CEL, as on 1.20) must refuse
//!   what the schema forbids, its message naming the same field; what it lets in (the CEL
//!   cases) is read back typed, as the watch does, and checked by `check_each`, as the
//!   resolver does. An object the server refused is also checked that way when it can be
//!   typed, as one stored under an older CRD would be.
//!
//! All three must report exactly the same problems. The CEL twins are also checked against a
//! CEL interpreter (`kube-cel`) evaluating the CRDs' own rules, on every case.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ddm_update_operator::api::{self, EnforcementTarget, FleetGroup, UpdatePolicy, cel, schema};
use ddm_update_operator::manifests::{self, LoadError};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const KINDS: [&str; 3] = ["FleetGroup", "UpdatePolicy", "EnforcementTarget"];

/// Valid objects with every field of their kind's schema, so every constraint has a value to
/// break.
fn base(kind: &str) -> Value {
    let spec = match kind {
        "FleetGroup" => json!({
            "platforms": ["iOS", "macOS"],
            "selector": {
                "serialNumbers": ["C02XL0AAJGH5"],
                "enrollmentIds": ["00008110-000A1B2C3D4E5F60"],
                "models": ["iPhone15,*"],
                "osVersion": {"min": "17.0", "max": "26.9"},
                "matchLabels": {"fleet": "corporate"},
            },
            "shard": {"percent": 10, "seed": "canary"},
            "suspend": false,
            "deletionPolicy": "Withdraw",
        }),
        "UpdatePolicy" => json!({
            "fleetGroups": ["g1"],
            "target": {
                "strategy": "latest",
                "assetSet": "AssetSets",
                "securityImprovements": false,
                "majors": [26],
            },
            "deadline": {
                "daysAfterPosting": 7,
                "localTime": "19:00",
                "timeZone": "Europe/Paris",
                "skipWeekends": true,
                "minimumLeadTime": "72h",
            },
            "rings": [{"name": "broad", "fleetGroups": ["g2"], "delayDays": 5}],
            "settings": {
                "notifications": true,
                "deferrals": {
                    "combinedPeriodInDays": 7,
                    "majorPeriodInDays": 30,
                    "minorPeriodInDays": 7,
                    "systemPeriodInDays": 7,
                },
                "recommendedCadence": "Newest",
                "automaticActions": {
                    "download": "AlwaysOn",
                    "installOSUpdates": "Allowed",
                    "installSecurityUpdate": "AlwaysOn",
                },
                "rapidSecurityResponse": {"enable": true, "enableRollback": false},
                "allowStandardUserOSUpdates": true,
                "beta": {"programEnrollment": "AlwaysOff"},
            },
            "enrollment": {
                "minimumVersion": "26.0",
                "failurePolicy": "Open",
                "betaProgram": {"description": "IT seed"},
            },
            "detailsURL": "https://it.example.com/updates",
            "suspend": false,
            "deletionPolicy": "Withdraw",
        }),
        _ => json!({
            "fleetGroups": ["g1"],
            "platform": "iOS",
            "targetOSVersion": "26.1",
            "targetBuildVersions": [{"model": "iPhone15,2", "build": "23B85"}],
            "targetLocalDateTime": "2026-09-01T19:00:00",
            "detailsURL": "https://it.example.com/updates",
            "suspend": false,
            "deletionPolicy": "Withdraw",
        }),
    };
    json!({
        "apiVersion": api::API_VERSION,
        "kind": kind,
        "metadata": {"name": "base"},
        "spec": spec,
    })
}

/// A change that breaks one CEL rule, by the rule's text. A rule missing here fails the test.
fn cel_violation(rule: &str) -> Option<fn(&mut Value)> {
    let mutation: fn(&mut Value) = match rule {
        r if r == cel::POLICY_NAMES_A_GROUP.rule => |o| {
            o["spec"]["fleetGroups"] = json!([]);
            o["spec"]["rings"] = json!([]);
        },
        r if r == cel::POLICY_RING_NAMES_UNIQUE.rule => |o| {
            o["spec"]["rings"] = json!([
                {"name": "broad", "fleetGroups": ["g2"], "delayDays": 5},
                {"name": "broad", "fleetGroups": ["g3"], "delayDays": 9},
            ]);
        },
        r if r == cel::TARGET_PLATFORM_ENFORCEABLE.rule => {
            |o| o["spec"]["platform"] = json!("watchOS")
        }
        r if r == cel::GROUP_PLATFORMS_MANAGED.rule => |o| {
            o["spec"]["platforms"] = json!(["macOS", "audioOS"]);
        },
        _ => return None,
    };
    Some(mutation)
}

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn field(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => out.push_str(&format!(".{k}")),
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn at<'a>(value: &'a mut Value, path: &[Seg]) -> &'a mut Value {
    path.iter().fold(value, |v, seg| match seg {
        Seg::Key(k) => &mut v[k.as_str()],
        Seg::Index(i) => &mut v[*i],
    })
}

fn get<'a>(value: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, seg| match seg {
        Seg::Key(k) => v.get(k.as_str()),
        Seg::Index(i) => v.get(*i),
    })
}

/// One broken manifest.
#[derive(Debug, Clone)]
struct Case {
    kind: &'static str,
    /// What is broken: `spec.deadline.daysAfterPosting maximum`.
    what: String,
    /// The field the problem must name.
    field: String,
    object: Value,
    /// A CEL rule's case: the API server without CEL lets it in.
    cel: bool,
}

struct Walk<'a> {
    kind: &'static str,
    base: &'a Value,
    cases: Vec<Case>,
}

impl Walk<'_> {
    fn case(&mut self, what: String, field: String, change: impl FnOnce(&mut Value)) {
        let mut object = self.base.clone();
        change(&mut object);
        self.cases.push(Case {
            kind: self.kind,
            what,
            field,
            object,
            cel: false,
        });
    }

    fn set(&mut self, path: &[Seg], keyword: &str, value: Value) {
        let f = field(path);
        self.case(format!("{f} {keyword}"), f, |o| *at(o, path) = value);
    }

    fn node(&mut self, schema: &Value, path: &mut Vec<Seg>) {
        let f = field(path);
        let here = get(self.base, path).cloned().unwrap_or_else(|| {
            panic!(
                "the valid {} in tests/it/validation.rs has no {f}: add it so the constraints \
                 on it are tested",
                self.kind
            )
        });
        let schema_map = schema.as_object().expect("a schema is an object");
        for (keyword, value) in schema_map {
            assert!(
                schema::KNOWN_KEYWORDS.contains(&keyword.as_str()),
                "{} {f}: keyword {keyword:?} has no case here",
                self.kind
            );
            let n = value.as_u64().unwrap_or(0) as usize;
            match keyword.as_str() {
                "required" => {
                    for name in value.as_array().into_iter().flatten() {
                        let name = name.as_str().expect("a property name").to_string();
                        let mut child = path.clone();
                        child.push(Seg::Key(name.clone()));
                        let cf = field(&child);
                        self.case(format!("{cf} required"), cf, |o| {
                            if let Some(map) = at(o, path).as_object_mut() {
                                map.remove(&name);
                            }
                        });
                    }
                }
                "minimum" => {
                    let below = value.as_f64().expect("a number") as i64 - 1;
                    self.set(path, keyword, json!(below));
                }
                "maximum" => {
                    let above = value.as_f64().expect("a number") as i64 + 1;
                    self.set(path, keyword, json!(above));
                }
                "minLength" if n > 0 => self.set(path, keyword, json!("a".repeat(n - 1))),
                "maxLength" => self.set(path, keyword, json!("a".repeat(n + 1))),
                // No pattern of these CRDs accepts a leading `~`.
                "pattern" => self.set(path, keyword, json!("~not-valid")),
                "enum" => self.set(path, keyword, json!("NotAMember")),
                "minItems" if n > 0 => {
                    let items = here.as_array().expect("a list").clone();
                    self.set(path, keyword, json!(items[..n - 1]));
                }
                "maxItems" => {
                    let first = here.get(0).cloned().expect("a list with an entry");
                    let items: Vec<Value> = (0..=n)
                        .map(|i| match &first {
                            Value::String(s) => json!(format!("{s}{i}")),
                            Value::Number(x) => json!(x.as_u64().unwrap_or(0) + i as u64),
                            other => panic!("{f}: maxItems of {other}"),
                        })
                        .collect();
                    self.set(path, keyword, json!(items));
                }
                "type" => {
                    let wrong = match value.as_str() {
                        Some("string") => json!(12),
                        _ => json!("wrong"),
                    };
                    self.set(path, keyword, wrong);
                }
                "x-kubernetes-list-type" => {
                    let first = here.get(0).cloned().expect("a list with an entry");
                    let mut second = first.clone();
                    // A map entry: same key, other values (the key field's first sibling).
                    let keys = schema["x-kubernetes-list-map-keys"].as_array();
                    if let (Some(keys), Some(entry)) = (keys, second.as_object_mut()) {
                        for (name, v) in entry.iter_mut() {
                            if !keys.contains(&json!(name)) && v.is_string() {
                                *v = json!(format!("{}-other", v.as_str().unwrap_or_default()));
                            }
                        }
                    }
                    // `atomic` lists have no constraint.
                    if matches!(value.as_str(), Some("set" | "map")) {
                        let mut dup = path.clone();
                        dup.push(Seg::Index(1));
                        let what = format!("{f} x-kubernetes-list-type {value}");
                        self.case(what, field(&dup), |o| {
                            *at(o, path) = json!([first, second]);
                        });
                    }
                }
                "x-kubernetes-validations" => {
                    for rule in value.as_array().into_iter().flatten() {
                        let text = rule["rule"].as_str().expect("a rule");
                        let change = cel_violation(text).unwrap_or_else(|| {
                            panic!("CEL rule {text:?} ({f}): write a violating example in cel_violation")
                        });
                        self.case(format!("{f} CEL {text}"), f.clone(), change);
                        if let Some(last) = self.cases.last_mut() {
                            last.cel = true;
                        }
                    }
                }
                "properties" => {
                    for (name, child) in value.as_object().expect("properties") {
                        path.push(Seg::Key(name.clone()));
                        self.node(child, path);
                        path.pop();
                    }
                }
                "items" => {
                    path.push(Seg::Index(0));
                    self.node(value, path);
                    path.pop();
                }
                "additionalProperties" => {
                    let keys: Vec<String> = here
                        .as_object()
                        .map(|m| m.keys().cloned().collect())
                        .unwrap_or_default();
                    assert!(!keys.is_empty(), "{f}: give the valid object an entry");
                    for key in keys {
                        path.push(Seg::Key(key));
                        self.node(value, path);
                        path.pop();
                    }
                }
                _ => {}
            }
        }
    }
}

/// Every case of every kind, named `case-NNN`, in namespace `namespace`.
fn cases(namespace: &str) -> Vec<Case> {
    let mut all = Vec::new();
    for kind in KINDS {
        let schema = schema::openapi_schema(kind).expect("a schema per kind");
        let base = base(kind);
        let mut walk = Walk {
            kind,
            base: &base,
            cases: Vec::new(),
        };
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().expect("a name").to_string();
            walk.case(format!("{name} required"), name.clone(), |o| {
                o.as_object_mut().map(|m| m.remove(&name));
            });
        }
        walk.node(
            &schema["properties"]["spec"],
            &mut vec![Seg::Key("spec".into())],
        );
        all.extend(walk.cases);
    }
    // Problems of all three sorts in one object: every path lists them all.
    let mut several = base("UpdatePolicy");
    several["spec"]["settings"]["deferrals"]["combinedPeriodInDays"] = json!(0);
    several["spec"]["deadline"]["timeZone"] = json!("Mars/Olympus_Mons");
    if let Some(change) = cel_violation(cel::POLICY_RING_NAMES_UNIQUE.rule) {
        change(&mut several);
    }
    all.push(Case {
        kind: "UpdatePolicy",
        what: "a schema, a CEL and a time zone problem".into(),
        field: "spec.settings.deferrals.combinedPeriodInDays".into(),
        object: several,
        cel: false,
    });
    for (i, case) in all.iter_mut().enumerate() {
        case.object["metadata"] = json!({"name": format!("case-{i:03}"), "namespace": namespace});
    }
    all
}

fn label(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind} {namespace}/{name}")
}

/// The problems `plan` printed, by file name: `error: FILE (document 1): PROBLEM`.
fn by_file(lines: &[String]) -> BTreeMap<String, BTreeSet<String>> {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in lines {
        let line = line.strip_prefix("error: ").unwrap_or(line);
        match line.split_once(" (document 1): ") {
            Some((file, problem)) => {
                let name = Path::new(file)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                found.entry(name).or_default().insert(problem.to_string());
            }
            None => {
                found
                    .entry("(no file)".into())
                    .or_default()
                    .insert(line.to_string());
            }
        }
    }
    found
}

/// `spec.rings[0].name` → `spec.rings.name`.
fn without_indices(field: &str) -> String {
    let mut out = String::new();
    let mut in_index = false;
    for c in field.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            c if !in_index => out.push(c),
            _ => {}
        }
    }
    out
}

fn plan(dir: &Path) -> (Option<i32>, Vec<String>) {
    let output = Command::new(env!("CARGO_BIN_EXE_ddm-update-operator"))
        .args(["plan", "-f"])
        .arg(dir)
        .args(["--inventory", "examples/inventory.yaml", "--catalog"])
        .arg("tests/fixtures/gdmf/pmv-2026-08-22.json")
        .args(["--at", "2026-08-22"])
        .current_dir(ROOT)
        .output()
        .expect("run ddm-update-operator plan");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "plan crashed:\n{stderr}");
    let lines = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .map(str::to_string)
        .collect();
    (output.status.code(), lines)
}

fn load(dir: &Path) -> Vec<String> {
    match manifests::load(&[dir.to_path_buf()]) {
        Ok(_) => Vec::new(),
        Err(LoadError::Invalid(problems)) => problems,
        Err(LoadError::Unreadable(why)) => panic!("{why}"),
    }
}

/// What Kubernetes mode makes of typed objects: `check_each`, as `Kind ns/name: field: why`.
fn kubernetes_mode(
    groups: &[FleetGroup],
    policies: &[UpdatePolicy],
    targets: &[EnforcementTarget],
) -> BTreeMap<String, BTreeSet<String>> {
    let partial = api::validate::check_each(groups, policies, targets);
    partial
        .problems
        .into_iter()
        .map(|(object, list)| {
            let set = list.iter().map(|p| format!("{object}: {p}")).collect();
            (object, set)
        })
        .collect()
}

/// `check_each` of one object given as JSON; `None` when it cannot be typed.
fn kubernetes_mode_of(object: &Value) -> Option<BTreeSet<String>> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let found = match kind {
        "FleetGroup" => kubernetes_mode(&[serde_json::from_value(object.clone()).ok()?], &[], &[]),
        "UpdatePolicy" => {
            kubernetes_mode(&[], &[serde_json::from_value(object.clone()).ok()?], &[])
        }
        _ => kubernetes_mode(&[], &[], &[serde_json::from_value(object.clone()).ok()?]),
    };
    Some(
        found
            .get(&label(kind, namespace, name))
            .cloned()
            .unwrap_or_default(),
    )
}

/// The CRDs' own CEL rules, evaluated by a CEL interpreter: `(field, message)`.
fn cel_interpreter(kind: &str, object: &Value) -> Option<BTreeSet<(String, String)>> {
    let crd = api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .expect("a CRD");
    let schema = serde_json::to_value(&crd.spec.versions[0].schema.as_ref()?.open_api_v3_schema)
        .expect("JSON");
    let errors = match kube_cel::validate(&schema, object, None) {
        Ok(()) => return Some(BTreeSet::new()),
        Err(errors) => errors.into_vec(),
    };
    // A rule that could not run on a value of the wrong type is not a verdict.
    if errors
        .iter()
        .any(|e| e.kind != kube_cel::ErrorKind::ValidationFailure)
    {
        return None;
    }
    Some(
        errors
            .into_iter()
            .map(|e| (e.field_path, e.message))
            .collect(),
    )
}

/// The twins on the object as Kubernetes mode reads it (typed, defaults applied).
fn cel_twins(kind: &str, object: &Value) -> Option<BTreeSet<(String, String)>> {
    let typed = match kind {
        "FleetGroup" => {
            serde_json::to_value(serde_json::from_value::<FleetGroup>(object.clone()).ok()?)
        }
        "UpdatePolicy" => {
            serde_json::to_value(serde_json::from_value::<UpdatePolicy>(object.clone()).ok()?)
        }
        _ => {
            serde_json::to_value(serde_json::from_value::<EnforcementTarget>(object.clone()).ok()?)
        }
    }
    .ok()?;
    Some(cel::check(kind, &typed).into_iter().collect())
}

#[test]
fn every_cel_rule_has_a_twin_that_agrees_with_cel() {
    let mut rules_in_crds = BTreeSet::new();
    for kind in KINDS {
        let crd = api::crds()
            .into_iter()
            .find(|c| c.spec.names.kind == kind)
            .expect("a CRD");
        let text = serde_json::to_string(&crd).expect("JSON");
        let value: Value = serde_json::from_str(&text).expect("JSON");
        collect_rules(kind, &value, &mut rules_in_crds);
    }
    let twins: BTreeSet<(String, String, String)> = cel::RULES
        .iter()
        .map(|r| {
            (
                r.kind.to_string(),
                r.rule.to_string(),
                r.message.to_string(),
            )
        })
        .collect();
    assert_eq!(
        rules_in_crds, twins,
        "every CEL rule of the CRDs has exactly one twin"
    );

    // On the valid objects and every case that can be typed (a value of the wrong type cannot,
    // and leaves some rules unevaluable).
    let cases = cases("default");
    let mut compared = 0;
    for object in KINDS
        .iter()
        .map(|k| base(k))
        .chain(cases.iter().map(|c| c.object.clone()))
    {
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let (Some(twin), Some(interpreted)) =
            (cel_twins(&kind, &object), cel_interpreter(&kind, &object))
        else {
            continue;
        };
        assert_eq!(twin, interpreted, "{kind} {}", object["spec"]);
        compared += 1;
    }
    for case in cases.iter().filter(|c| c.cel) {
        let interpreted = cel_interpreter(case.kind, &case.object);
        assert!(
            interpreted.as_ref().is_some_and(|e| !e.is_empty()),
            "{}: the example breaks the rule ({interpreted:?})",
            case.what
        );
        assert_eq!(
            cel_twins(case.kind, &case.object),
            interpreted,
            "{}",
            case.what
        );
    }
    eprintln!(
        "CEL twins agree with the interpreter on {compared} of {} objects",
        cases.len() + KINDS.len()
    );
}

fn collect_rules(kind: &str, value: &Value, into: &mut BTreeSet<(String, String, String)>) {
    match value {
        Value::Object(map) => {
            for rule in map
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                into.insert((
                    kind.to_string(),
                    rule["rule"].as_str().unwrap_or_default().to_string(),
                    rule["message"].as_str().unwrap_or_default().to_string(),
                ));
            }
            map.values().for_each(|v| collect_rules(kind, v, into));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_rules(kind, v, into)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// The API server
// ---------------------------------------------------------------------------------------------

/// The CRDs as this build generates them, without CEL (as on 1.20), applied over whatever the
/// server held, then a probe until the server enforces the new schema.
async fn apply_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (file, text) in api::crd_files(false).expect("the CRDs render") {
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let name = crd.name_any();
        let params = PatchParams::apply("ddm-it-validation").force();
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .unwrap_or_else(|_| panic!("CRD {name} not Established within 30 s"))
            .unwrap_or_else(|e| panic!("waiting for CRD {name}: {e}"));
    }
}

fn dynamic(client: &Client, namespace: &str, kind: &str) -> Api<DynamicObject> {
    let resource = match kind {
        "FleetGroup" => ApiResource::erase::<FleetGroup>(&()),
        "UpdatePolicy" => ApiResource::erase::<UpdatePolicy>(&()),
        _ => ApiResource::erase::<EnforcementTarget>(&()),
    };
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// Creates the object; `Err(message)` when the server refuses it as invalid.
async fn create(client: &Client, namespace: &str, object: &Value) -> Result<(), String> {
    let kind = object["kind"].as_str().unwrap_or_default();
    let dynamic_object: DynamicObject =
        serde_json::from_value(object.clone()).expect("any object is a DynamicObject");
    match dynamic(client, namespace, kind)
        .create(&PostParams::default(), &dynamic_object)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 422 || status.code == 400 => {
            Err(status.message)
        }
        Err(error) => panic!("creating {kind}: {error}"),
    }
}

/// The whole comparison. Returns the number of cases.
async fn three_paths() -> usize {
    let client = crate::kubernetes::plain_client().await;
    apply_crds(&client).await;
    let suffix = format!("{:06x}", std::process::id() ^ 0x5a5a5a);
    let namespace = format!("ddm-it-validation-{suffix}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": namespace}})).expect("a namespace");
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => panic!("creating namespace {namespace}: {e}"),
    }

    // The valid objects pass everywhere (with the FleetGroups they name).
    let valid_dir = tempfile::tempdir().expect("tempdir");
    let mut valid = vec![base("UpdatePolicy"), base("EnforcementTarget")];
    for name in ["g1", "g2"] {
        let mut group = base("FleetGroup");
        group["metadata"]["name"] = json!(name);
        valid.push(group);
    }
    for (i, object) in valid.iter_mut().enumerate() {
        object["metadata"]["namespace"] = json!(namespace);
        let text = serde_json::to_string_pretty(object).expect("JSON");
        std::fs::write(valid_dir.path().join(format!("valid-{i}.json")), text).expect("write");
    }
    let (code, lines) = plan(valid_dir.path());
    assert_eq!(
        (code, lines),
        (Some(0), vec![]),
        "plan takes the valid objects"
    );
    assert_eq!(load(valid_dir.path()), Vec::<String>::new());
    let mut typed = (Vec::new(), Vec::new(), Vec::new());
    for object in &valid {
        if let Err(why) = create(&client, &namespace, object).await {
            panic!("the API server refuses a valid {}: {why}", object["kind"]);
        }
        match object["kind"].as_str() {
            Some("FleetGroup") => typed
                .0
                .push(serde_json::from_value(object.clone()).expect("typed")),
            Some("UpdatePolicy") => typed
                .1
                .push(serde_json::from_value(object.clone()).expect("typed")),
            _ => typed
                .2
                .push(serde_json::from_value(object.clone()).expect("typed")),
        }
    }
    assert!(kubernetes_mode(&typed.0, &typed.1, &typed.2).is_empty());

    // Every broken manifest, one per file.
    let cases = cases(&namespace);
    let dir = tempfile::tempdir().expect("tempdir");
    for case in &cases {
        let name = case.object["metadata"]["name"].as_str().expect("a name");
        let text = serde_json::to_string_pretty(&case.object).expect("JSON");
        std::fs::write(dir.path().join(format!("{name}.json")), text).expect("write");
    }
    let (code, lines) = plan(dir.path());
    assert_eq!(code, Some(1), "plan exits 1 on invalid manifests");
    let planned = by_file(&lines);
    let loaded = by_file(&load(dir.path()));
    assert!(
        !planned.contains_key("(no file)"),
        "{:?}",
        planned.get("(no file)")
    );

    let mut refused_by_server = 0;
    let mut checked_typed = 0;
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.object["metadata"]["name"].as_str().expect("a name");
        let file = format!("{name}.json");
        let object = label(case.kind, &namespace, name);
        let from_plan = planned.get(&file).cloned().unwrap_or_default();
        let from_loader = loaded.get(&file).cloned().unwrap_or_default();
        let mut fail = |why: String| failures.push(format!("{} ({name}): {why}", case.what));
        if from_plan.is_empty() {
            fail("plan accepts it".into());
            continue;
        }
        if !from_plan
            .iter()
            .any(|p| p.starts_with(&format!("{object}: {}: ", case.field)))
        {
            fail(format!("no problem names {}: {from_plan:?}", case.field));
        }
        if case.what.starts_with("a schema, a CEL") && from_plan.len() != 3 {
            fail(format!("three problems expected: {from_plan:?}"));
        }
        if from_loader != from_plan {
            fail(format!("loader {from_loader:?} ≠ plan {from_plan:?}"));
        }
        match create(&client, &namespace, &case.object).await {
            Err(message) => {
                refused_by_server += 1;
                if case.cel {
                    fail(format!("the server without CEL refused it: {message}"));
                }
                // Its field path is the API server's, which (1.20) leaves out list indices
                // but for duplicates: `spec.rings.name` for `spec.rings[0].name`.
                let unindexed = without_indices(&case.field);
                if !message.contains(&unindexed) {
                    fail(format!(
                        "the server's message does not name {unindexed}: {message}"
                    ));
                }
                // As if it had been stored under an older CRD.
                if let Some(found) = kubernetes_mode_of(&case.object) {
                    checked_typed += 1;
                    if found != from_plan {
                        fail(format!("Kubernetes mode {found:?} ≠ plan {from_plan:?}"));
                    }
                }
            }
            Ok(()) => {
                if !case.cel {
                    fail("the API server accepts what the schema forbids".into());
                }
                // Read back as the watch does, checked as the resolver does.
                let stored = match case.kind {
                    "FleetGroup" => {
                        let o = Api::<FleetGroup>::namespaced(client.clone(), &namespace)
                            .get(name)
                            .await
                            .expect("read back");
                        kubernetes_mode(&[o], &[], &[])
                    }
                    "UpdatePolicy" => {
                        let o = Api::<UpdatePolicy>::namespaced(client.clone(), &namespace)
                            .get(name)
                            .await
                            .expect("read back");
                        kubernetes_mode(&[], &[o], &[])
                    }
                    _ => {
                        let o = Api::<EnforcementTarget>::namespaced(client.clone(), &namespace)
                            .get(name)
                            .await
                            .expect("read back");
                        kubernetes_mode(&[], &[], &[o])
                    }
                };
                checked_typed += 1;
                let found = stored.get(&object).cloned().unwrap_or_default();
                if found != from_plan {
                    fail(format!("Kubernetes mode {found:?} ≠ plan {from_plan:?}"));
                }
            }
        }
    }
    let _ = namespaces
        .delete(&namespace, &DeleteParams::default())
        .await;
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!(
        "{} broken manifests: plan, loader and Kubernetes mode agree; the API server refused \
         {refused_by_server}; Kubernetes mode checked {checked_typed} typed",
        cases.len()
    );
    cases.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_standalone_and_kubernetes_mode_refuse_every_crd_constraint_alike() {
    let count = three_paths().await;
    // Sanity: the walk found the constraints there are (about 130 today).
    assert!(count > 80, "only {count} cases");
}
