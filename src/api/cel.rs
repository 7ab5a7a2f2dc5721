//! The CRDs' CEL rules (`x-kubernetes-validations`) and their twins in Rust. API servers before
//! 1.25 run no CEL (the CRDs are installed without it there), and `plan` and standalone mode
//! have no API server at all, so every rule is also checked here, reporting the rule's message
//! at the rule's place, as the API server would. Each rule is written once: the types'
//! `#[x_kube(validation = ...)]` attributes take it from here. The tests evaluate every rule of
//! the CRDs with a CEL interpreter and check its twin agrees (`tests/it/validation.rs`).

use serde_json::Value;

use super::schema::FieldProblem;

/// A CEL rule and its twin.
pub struct CelRule {
    /// The kind whose CRD holds the rule.
    pub kind: &'static str,
    /// Where the rule sits, as a field path from the object (`spec`).
    pub field: &'static str,
    /// The rule, as the CRD carries it.
    pub rule: &'static str,
    pub message: &'static str,
    /// The twin: whether the value at `field` (defaults applied) satisfies the rule.
    pub holds: fn(&Value) -> bool,
}

impl CelRule {
    /// The rule for the CRD.
    pub fn to_kube(&self) -> kube::core::Rule {
        kube::core::Rule::new(self.rule).message(self.message)
    }
}

fn list(value: &Value, field: &str) -> Vec<Value> {
    value[field].as_array().cloned().unwrap_or_default()
}

pub const POLICY_NAMES_A_GROUP: CelRule = CelRule {
    kind: "UpdatePolicy",
    field: "spec",
    rule: "size(self.fleetGroups) > 0 || size(self.rings) > 0",
    message: "name at least one FleetGroup in fleetGroups or rings",
    holds: |spec| !list(spec, "fleetGroups").is_empty() || !list(spec, "rings").is_empty(),
};

pub const POLICY_RING_NAMES_UNIQUE: CelRule = CelRule {
    kind: "UpdatePolicy",
    field: "spec",
    rule: "self.rings.all(r, self.rings.filter(s, s.name == r.name).size() == 1)",
    message: "ring names must be unique",
    holds: |spec| {
        let rings = list(spec, "rings");
        let names: Vec<&Value> = rings.iter().map(|r| &r["name"]).collect();
        names
            .iter()
            .all(|n| names.iter().filter(|m| *m == n).count() == 1)
    },
};

pub const TARGET_PLATFORM_ENFORCEABLE: CelRule = CelRule {
    kind: "EnforcementTarget",
    field: "spec",
    rule: "self.platform != 'watchOS' && self.platform != 'audioOS'",
    message: "watchOS and audioOS have no software-update enforcement",
    holds: |spec| !matches!(spec["platform"].as_str(), Some("watchOS" | "audioOS")),
};

pub const GROUP_PLATFORMS_MANAGED: CelRule = CelRule {
    kind: "FleetGroup",
    field: "spec",
    rule: "!has(self.platforms) || self.platforms.all(p, p != 'audioOS')",
    message: "audioOS (HomePod) is not managed through MDM",
    holds: |spec| {
        !list(spec, "platforms")
            .iter()
            .any(|p| p.as_str() == Some("audioOS"))
    },
};

/// Every rule of every CRD.
pub const RULES: [&CelRule; 4] = [
    &GROUP_PLATFORMS_MANAGED,
    &POLICY_NAMES_A_GROUP,
    &POLICY_RING_NAMES_UNIQUE,
    &TARGET_PLATFORM_ENFORCEABLE,
];

/// The rules of `kind` that `object` (a whole object, defaults applied) breaks. A rule on a
/// field the object does not have does not apply, as in the API server.
pub fn check(kind: &str, object: &Value) -> Vec<FieldProblem> {
    RULES
        .iter()
        .filter(|rule| rule.kind == kind)
        .filter_map(|rule| {
            let pointer = format!("/{}", rule.field.replace('.', "/"));
            let value = object.pointer(&pointer)?;
            (!(rule.holds)(value)).then(|| (rule.field.to_string(), rule.message.to_string()))
        })
        .collect()
}
