//! The settings merge against Apple's schema: every key an `UpdatePolicy` can set under
//! `spec.settings` is looked up in `softwareupdate.settings.yaml` (the copy under
//! `tests/fixtures/apple-schemas/`, see `SOURCE.md` there) and merged in both orders with
//! values the schema allows; the result must be what the key's `combinetype` says. The keys come
//! from the CRD and the merge rules from the YAML, so a new settings field or a changed Apple
//! merge type is checked without touching this file.

use std::collections::BTreeMap;
use std::path::Path;

use ddm_update_operator::api::{self, SettingsSpec};
use ddm_update_operator::declarations::MergedSettings;
use serde_json::{Map, Value, json};

const SCHEMA: &str = "tests/fixtures/apple-schemas/declarative/declarations/configurations/softwareupdate.settings.yaml";

/// Keys of Apple's schema the CRD does not offer, and why.
const NOT_OFFERED: [(&str, &str); 2] = [
    (
        "Beta.OfferPrograms",
        "carries seeding tokens, which are not taken from Git",
    ),
    (
        "Beta.RequireProgram",
        "carries a seeding token, which is not taken from Git",
    ),
];

/// What Apple's schema says about one mergeable key.
#[derive(Debug)]
struct AppleKey {
    combine: String,
    kind: String,
    rangelist: Vec<Value>,
    range: Option<(i64, i64)>,
}

/// Every key with a `combinetype`, by dotted Apple path (`Deferrals.CombinedPeriodInDays`).
fn apple_keys() -> BTreeMap<String, AppleKey> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(SCHEMA);
    let text = std::fs::read_to_string(&path).expect("the settings schema copy");
    let schema: Value = serde_saphyr::from_str(&text).expect("the schema is YAML");
    assert_eq!(
        schema["payload"]["declarationtype"],
        "com.apple.configuration.softwareupdate.settings"
    );
    let mut keys = BTreeMap::new();
    collect(&schema["payloadkeys"], "", &mut keys);
    keys
}

fn collect(list: &Value, prefix: &str, into: &mut BTreeMap<String, AppleKey>) {
    for key in list.as_array().expect("payloadkeys is a list") {
        let name = key["key"].as_str().expect("every key has a name");
        let path = format!("{prefix}{name}");
        if let Some(combine) = key["combinetype"].as_str() {
            let bound = |b: &str| key["range"][b].as_i64();
            into.insert(
                path.clone(),
                AppleKey {
                    combine: combine.to_string(),
                    kind: key["type"].as_str().unwrap_or_default().to_string(),
                    rangelist: key["rangelist"].as_array().cloned().unwrap_or_default(),
                    range: bound("min").zip(bound("max")),
                },
            );
        } else if key["type"] == "<dictionary>" {
            collect(&key["subkeys"], &format!("{path}."), into);
        }
    }
}

/// The leaf fields of `spec.settings` in the UpdatePolicy CRD, as JSON paths.
fn crd_settings_leaves() -> Vec<Vec<String>> {
    let crd = api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "UpdatePolicy")
        .expect("the UpdatePolicy CRD");
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("JSON");
    let settings = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["settings"];
    let mut leaves = Vec::new();
    walk_crd(settings, &mut Vec::new(), &mut leaves);
    leaves
}

fn walk_crd(schema: &Value, path: &mut Vec<String>, leaves: &mut Vec<Vec<String>>) {
    match schema["properties"].as_object() {
        Some(properties) => {
            for (name, child) in properties {
                path.push(name.clone());
                walk_crd(child, path, leaves);
                path.pop();
            }
        }
        None => leaves.push(path.clone()),
    }
}

/// `allowStandardUserOSUpdates` → `AllowStandardUserOSUpdates`: the CRD spells Apple's keys
/// with a lowercase first letter.
fn apple_name(field: &str) -> String {
    let mut chars = field.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// A SettingsSpec with one field set (`None`: nothing set).
fn settings_with(path: &[String], value: Option<&Value>) -> SettingsSpec {
    let mut root = Value::Object(Map::new());
    if let Some(value) = value {
        let mut at = &mut root;
        for (i, field) in path.iter().enumerate() {
            let next = if i + 1 == path.len() {
                value.clone()
            } else {
                json!({})
            };
            at = at
                .as_object_mut()
                .expect("an object")
                .entry(field.clone())
                .or_insert(next);
        }
    }
    serde_json::from_value(root.clone()).unwrap_or_else(|e| panic!("{root}: {e}"))
}

/// The merged value of the field, after merging `values` in order.
fn merged(path: &[String], values: &[Option<&Value>]) -> Option<Value> {
    let mut merged = MergedSettings::default();
    for value in values {
        merged.merge(&settings_with(path, *value));
    }
    let out = serde_json::to_value(&merged.0).expect("JSON");
    let pointer = format!("/{}", path.join("/"));
    out.pointer(&pointer).filter(|v| !v.is_null()).cloned()
}

/// Pairs of values the schema allows for a key, with the value its combinetype picks.
fn cases(key: &str, apple: &AppleKey) -> Vec<(Value, Value, Value)> {
    let pairs = |values: &[Value], pick: &dyn Fn(&Value, &Value) -> Value| {
        let mut cases = Vec::new();
        for a in values {
            for b in values {
                cases.push((a.clone(), b.clone(), pick(a, b)));
            }
        }
        cases
    };
    let position = |v: &Value| apple.rangelist.iter().position(|r| r == v);
    match apple.combine.as_str() {
        "boolean-and" => pairs(&[json!(true), json!(false)], &|a, b| {
            json!(a.as_bool() == Some(true) && b.as_bool() == Some(true))
        }),
        "boolean-or" => pairs(&[json!(true), json!(false)], &|a, b| {
            json!(a.as_bool() == Some(true) || b.as_bool() == Some(true))
        }),
        "number-max" | "number-min" => {
            let (low, high) = apple
                .range
                .unwrap_or_else(|| panic!("{key}: a number without a range"));
            let values = [json!(low), json!((low + high) / 2), json!(high)];
            let max = apple.combine == "number-max";
            pairs(&values, &|a, b| {
                let (a, b) = (a.as_i64(), b.as_i64());
                json!(if max { a.max(b) } else { a.min(b) })
            })
        }
        "enum-last" | "enum-first" => {
            assert!(!apple.rangelist.is_empty(), "{key}: enum without rangelist");
            let last = apple.combine == "enum-last";
            pairs(&apple.rangelist, &|a, b| {
                let b_wins = if last {
                    position(b) > position(a)
                } else {
                    position(b) < position(a)
                };
                if b_wins { b.clone() } else { a.clone() }
            })
        }
        other => panic!(
            "{key} ({}): no expectation written for combinetype {other}; add one here and a \
             merge for it in src/declarations/settings.rs",
            apple.kind
        ),
    }
}

#[test]
fn every_settings_key_merges_by_apples_combinetype() {
    let apple = apple_keys();
    let leaves = crd_settings_leaves();
    assert!(leaves.len() >= 10, "the CRD's settings fields: {leaves:?}");
    let mut checked = Vec::new();
    for path in &leaves {
        let key = path
            .iter()
            .map(|f| apple_name(f))
            .collect::<Vec<_>>()
            .join(".");
        let rule = apple.get(&key).unwrap_or_else(|| {
            panic!(
                "spec.settings.{} has no combinetype in Apple's schema ({key})",
                path.join(".")
            )
        });
        for (a, b, expected) in cases(&key, rule) {
            assert_eq!(
                merged(path, &[Some(&a), Some(&b)]),
                Some(expected.clone()),
                "{key} ({}): {a} then {b}",
                rule.combine
            );
            assert_eq!(
                merged(path, &[Some(&b), Some(&a)]),
                Some(expected),
                "{key} ({}): {b} then {a}",
                rule.combine
            );
            // A policy that leaves the key unset does not change it.
            assert_eq!(merged(path, &[Some(&a), None]), Some(a.clone()), "{key}");
            assert_eq!(merged(path, &[None, Some(&a)]), Some(a.clone()), "{key}");
        }
        checked.push(key);
    }
    let offered: Vec<&String> = apple.keys().filter(|k| !checked.contains(k)).collect();
    let expected: Vec<&str> = NOT_OFFERED.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        offered, expected,
        "Apple's mergeable keys the CRD does not offer (a new one needs a field or a reason)"
    );
    eprintln!("settings keys checked against Apple's combinetype: {checked:?}");
}

/// The example: a lockdown policy's `AlwaysOff` is not overridden by a permissive
/// policy, whichever is named last.
#[test]
fn a_lockdown_policy_wins_over_a_permissive_one_whatever_their_order() {
    let lockdown: SettingsSpec = serde_json::from_value(
        json!({"automaticActions": {"download": "AlwaysOff"}, "recommendedCadence": "Newest"}),
    )
    .expect("settings");
    let permissive: SettingsSpec = serde_json::from_value(
        json!({"automaticActions": {"download": "Allowed"}, "recommendedCadence": "All"}),
    )
    .expect("settings");
    for order in [[&lockdown, &permissive], [&permissive, &lockdown]] {
        let mut merged = MergedSettings::default();
        order.into_iter().for_each(|s| merged.merge(s));
        assert_eq!(merged.0, lockdown);
    }
}
