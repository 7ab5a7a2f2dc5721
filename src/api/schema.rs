//! Objects checked against their CRD's own OpenAPI v3 schema (the one `crds` prints and the API
//! server enforces), with a maintained JSON Schema validator. `plan`, standalone mode and
//! Kubernetes mode all run this, so they refuse the same objects with the same messages, and an
//! object the API server let in (stored under an older CRD) is still refused.
//!
//! The OpenAPI dialect differs from JSON Schema in a few words, translated here: `nullable`,
//! `x-kubernetes-list-type: set` (unique items) and `map` (unique keys, checked in Rust).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use serde_json::{Map, Value};

/// The words of the CRDs' OpenAPI schemas this module understands; a test fails when a CRD
/// uses another, so a new kind of constraint cannot go unchecked.
pub const KNOWN_KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "nullable",
    "default",
    "description",
    "title",
    "format",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
];

/// One problem: a field path (`spec.rings[0].name`) and why.
pub type FieldProblem = (String, String);

struct Compiled {
    /// The CRD's schema, as the API server reads it (status left out: it is the operator's).
    openapi: Value,
    validator: Result<jsonschema::Validator, String>,
}

static SCHEMAS: LazyLock<BTreeMap<String, Compiled>> = LazyLock::new(|| {
    super::crds()
        .into_iter()
        .filter_map(|crd| {
            let kind = crd.spec.names.kind.clone();
            let schema = crd.spec.versions.first()?.schema.as_ref()?;
            let mut openapi = serde_json::to_value(schema.open_api_v3_schema.as_ref()?).ok()?;
            if let Some(properties) = openapi["properties"].as_object_mut() {
                properties.remove("status");
            }
            let validator = jsonschema::draft4::options()
                .should_validate_formats(true)
                .build(&to_json_schema(&openapi))
                .map_err(|e| format!("the {kind} schema does not compile: {e}"));
            Some((kind, Compiled { openapi, validator }))
        })
        .collect()
});

/// The OpenAPI schema of a kind's objects (without `status`), as checked here.
pub fn openapi_schema(kind: &str) -> Option<&'static Value> {
    SCHEMAS.get(kind).map(|c| &c.openapi)
}

/// Every way `object` (a whole `apiVersion`/`kind`/`metadata`/`spec` document) breaks its
/// kind's schema.
pub fn check(kind: &str, object: &Value) -> Vec<FieldProblem> {
    let Some(compiled) = SCHEMAS.get(kind) else {
        return vec![(String::new(), format!("no schema for kind {kind}"))];
    };
    let validator = match &compiled.validator {
        Ok(validator) => validator,
        Err(why) => return vec![(String::new(), why.clone())],
    };
    let mut problems: Vec<FieldProblem> = validator
        .iter_errors(object)
        .map(|error| {
            let mut field = field_path(error.instance_path().segments());
            let why = match error.kind() {
                ValidationErrorKind::Required { property } => {
                    let property = property.as_str().unwrap_or_default();
                    field = join(&field, property);
                    "is required".to_string()
                }
                // Named at the second entry, as the API server does.
                ValidationErrorKind::UniqueItems => {
                    let items = error.instance().as_array().cloned().unwrap_or_default();
                    match (0..items.len()).find(|i| items[..*i].contains(&items[*i])) {
                        Some(i) => {
                            field.push_str(&format!("[{i}]"));
                            format!("{} is listed twice", show(&items[i]))
                        }
                        None => "has an entry listed twice".to_string(),
                    }
                }
                kind => why(kind, error.instance(), &error.to_string()),
            };
            (field, why)
        })
        .collect();
    list_map_duplicates(&compiled.openapi, object, "", &mut problems);
    problems.sort();
    problems.dedup();
    problems
}

/// Drops `null` fields the schema does not declare nullable, as the API server does before it
/// validates (so `suspend: null` means "not set" in every mode).
pub fn prune_nulls(kind: &str, object: &mut Value) {
    if let Some(schema) = openapi_schema(kind) {
        prune(schema, object);
    }
}

fn prune(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|name, field| {
                !field.is_null() || property(schema, name)["nullable"] == Value::Bool(true)
            });
            for (name, field) in map.iter_mut() {
                prune(property(schema, name), field);
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| prune(&schema["items"], item)),
        _ => {}
    }
}

/// The schema of an object's field: a declared property, or the map's value schema.
fn property<'a>(schema: &'a Value, name: &str) -> &'a Value {
    match schema["properties"].get(name) {
        Some(declared) => declared,
        None => &schema["additionalProperties"],
    }
}

/// OpenAPI (as Kubernetes reads it) → JSON Schema draft 4.
fn to_json_schema(openapi: &Value) -> Value {
    match openapi {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, value) in map {
                let converted = match key.as_str() {
                    // Keys whose values are names or data, not schemas.
                    "enum"
                    | "required"
                    | "default"
                    | "x-kubernetes-validations"
                    | "x-kubernetes-list-map-keys" => value.clone(),
                    "properties" => Value::Object(
                        value
                            .as_object()
                            .map(|p| {
                                p.iter()
                                    .map(|(k, v)| (k.clone(), to_json_schema(v)))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    ),
                    "nullable" => continue,
                    _ => to_json_schema(value),
                };
                out.insert(key.clone(), converted);
            }
            if map.get("nullable") == Some(&Value::Bool(true)) {
                if let Some(kind) = out.get("type").cloned() {
                    out.insert("type".into(), Value::Array(vec![kind, "null".into()]));
                }
                if let Some(Value::Array(members)) = out.get_mut("enum") {
                    members.push(Value::Null);
                }
            }
            if map.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("set") {
                out.insert("uniqueItems".into(), Value::Bool(true));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// `x-kubernetes-list-type: map`: no two entries share their key fields.
fn list_map_duplicates(schema: &Value, value: &Value, path: &str, out: &mut Vec<FieldProblem>) {
    match value {
        Value::Object(map) => {
            for (name, field) in map {
                list_map_duplicates(property(schema, name), field, &join(path, name), out);
            }
        }
        Value::Array(items) => {
            let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                .as_array()
                .map(|keys| keys.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen = BTreeSet::new();
            for (i, item) in items.iter().enumerate() {
                let at = format!("{path}[{i}]");
                if schema["x-kubernetes-list-type"] == "map" && !keys.is_empty() {
                    let key: Vec<String> = keys
                        .iter()
                        .map(|k| format!("{k} {}", show(&item[*k])))
                        .collect();
                    if !seen.insert(key.clone()) {
                        out.push((at.clone(), format!("{} is listed twice", key.join(", "))));
                    }
                }
                list_map_duplicates(&schema["items"], item, &at, out);
            }
        }
        _ => {}
    }
}

/// `spec.rings[0].name`; a map key that is not a plain word goes in brackets
/// (`spec.selector.matchLabels[app.kubernetes.io/name]`).
fn field_path<'a>(segments: impl Iterator<Item = LocationSegment<'a>>) -> String {
    let mut path = String::new();
    for segment in segments {
        match segment {
            LocationSegment::Property(name) => path = join(&path, &name),
            LocationSegment::Index(i) => path.push_str(&format!("[{i}]")),
        }
    }
    path
}

fn join(path: &str, name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => name.to_string(),
        (false, true) => format!("{path}.{name}"),
        (_, false) => format!("{path}[{name}]"),
    }
}

/// A value for a message, shortened (a hostile value is not echoed back megabytes long).
fn show(value: &Value) -> String {
    match value {
        Value::String(s) if s.chars().count() > 40 => {
            format!("{:?}…", s.chars().take(40).collect::<String>())
        }
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!("a list of {}", items.len()),
        Value::Object(_) => "an object".into(),
        other => other.to_string(),
    }
}

fn number(limit: &Value) -> String {
    match limit.as_f64() {
        Some(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", n as i64),
        _ => limit.to_string(),
    }
}

fn type_name(kind: jsonschema::JsonType) -> &'static str {
    use jsonschema::JsonType;
    match kind {
        JsonType::Array => "a list",
        JsonType::Boolean => "true or false",
        JsonType::Integer => "a whole number",
        JsonType::Number => "a number",
        JsonType::Null => "null",
        JsonType::Object => "an object",
        JsonType::String => "a string",
    }
}

fn why(kind: &ValidationErrorKind, instance: &Value, fallback: &str) -> String {
    let length = || instance.as_str().map_or(0, |s| s.chars().count());
    let entries = || instance.as_array().map_or(0, Vec::len);
    match kind {
        ValidationErrorKind::Minimum { limit } => {
            format!(
                "{} is below the minimum of {}",
                show(instance),
                number(limit)
            )
        }
        ValidationErrorKind::Maximum { limit } => {
            format!(
                "{} is above the maximum of {}",
                show(instance),
                number(limit)
            )
        }
        ValidationErrorKind::MinLength { limit: 1 } => "must not be empty".into(),
        ValidationErrorKind::MinLength { limit } => format!(
            "is {} characters long; at least {limit} are needed",
            length()
        ),
        ValidationErrorKind::MaxLength { limit } => format!(
            "is {} characters long; at most {limit} are accepted",
            length()
        ),
        ValidationErrorKind::MinItems { limit: 1 } => "must name at least one".into(),
        ValidationErrorKind::MinItems { limit } => {
            format!("has {} entries; at least {limit} are needed", entries())
        }
        ValidationErrorKind::MaxItems { limit } => {
            format!("has {} entries; at most {limit} are accepted", entries())
        }
        ValidationErrorKind::Enum { options } => {
            let options: Vec<String> = options
                .as_array()
                .map(|o| {
                    o.iter()
                        .filter(|v| !v.is_null())
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            format!("{} is not one of {}", show(instance), options.join(", "))
        }
        ValidationErrorKind::Pattern { pattern } => {
            format!("{} does not match {pattern}", show(instance))
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => Some(*t),
                TypeKind::Multiple(set) => set.iter().find(|t| *t != jsonschema::JsonType::Null),
            };
            match expected {
                Some(t) => format!("must be {}, not {}", type_name(t), show(instance)),
                None => fallback.to_string(),
            }
        }
        ValidationErrorKind::Format { format } => {
            format!("{} is not a valid {format}", show(instance))
        }
        _ => fallback.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_crd_schema_compiles_and_uses_only_known_keywords() {
        fn walk(kind: &str, schema: &Value, path: &str) {
            let Some(map) = schema.as_object() else {
                return;
            };
            for (key, value) in map {
                assert!(
                    KNOWN_KEYWORDS.contains(&key.as_str()),
                    "{kind} {path}: the schema uses {key:?}, which src/api/schema.rs does not \
                     translate or check"
                );
                match key.as_str() {
                    "properties" => {
                        for (name, child) in value.as_object().into_iter().flatten() {
                            walk(kind, child, &join(path, name));
                        }
                    }
                    "items" | "additionalProperties" => walk(kind, value, &format!("{path}[]")),
                    _ => {}
                }
            }
        }
        for kind in ["FleetGroup", "UpdatePolicy", "EnforcementTarget"] {
            let compiled = SCHEMAS.get(kind).expect("a schema per kind");
            if let Err(why) = &compiled.validator {
                panic!("{why}");
            }
            walk(kind, &compiled.openapi, "");
        }
    }

    #[test]
    fn problems_name_the_field_and_why() {
        let object = json!({
            "apiVersion": "updates.ddm.dev/v1alpha1",
            "kind": "UpdatePolicy",
            "metadata": {"name": "p"},
            "spec": {
                "fleetGroups": ["a", "a"],
                "target": {"strategy": "soonest", "assetSet": "Mine"},
                "deadline": {"daysAfterPosting": 400},
                "rings": [{"name": "", "fleetGroups": ["b"]}],
                "settings": {"deferrals": {"combinedPeriodInDays": 0}, "notifications": null},
            }
        });
        let problems = check("UpdatePolicy", &object);
        let expected = [
            (
                "spec.deadline.daysAfterPosting",
                "400 is above the maximum of 365",
            ),
            ("spec.fleetGroups[1]", "\"a\" is listed twice"),
            ("spec.rings[0].delayDays", "is required"),
            ("spec.rings[0].name", "must not be empty"),
            (
                "spec.settings.deferrals.combinedPeriodInDays",
                "0 is below the minimum of 1",
            ),
            (
                "spec.target.assetSet",
                "\"Mine\" is not one of AssetSets, PublicAssetSets",
            ),
        ];
        for (field, why) in expected {
            assert!(
                problems.contains(&(field.to_string(), why.to_string())),
                "{field}: {why} in {problems:#?}"
            );
        }
        assert!(
            problems
                .iter()
                .any(|(f, w)| f == "spec.target.strategy"
                    && w.starts_with("\"soonest\" does not match")),
            "{problems:#?}"
        );
        // `notifications` is nullable; a null there is not a problem.
        assert!(!problems.iter().any(|(f, _)| f.contains("notifications")));
    }

    #[test]
    fn list_map_keys_are_unique_and_nulls_are_pruned() {
        let mut object = json!({
            "apiVersion": "updates.ddm.dev/v1alpha1",
            "kind": "EnforcementTarget",
            "metadata": {"name": "t"},
            "spec": {
                "fleetGroups": ["a"],
                "platform": "iOS",
                "targetOSVersion": "26.1",
                "targetBuildVersions": [{"model": "x", "build": "1"}, {"model": "x", "build": "2"}],
                "targetLocalDateTime": "2026-09-01T19:00:00",
                "suspend": null,
            }
        });
        prune_nulls("EnforcementTarget", &mut object);
        assert!(object["spec"].get("suspend").is_none());
        assert_eq!(
            check("EnforcementTarget", &object),
            vec![(
                "spec.targetBuildVersions[1]".to_string(),
                "model \"x\" is listed twice".to_string()
            )]
        );
    }
}
