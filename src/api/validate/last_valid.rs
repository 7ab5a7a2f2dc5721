//! The last valid version wins: an object edited into an invalid spec keeps, in the pass, the
//! spec it last had while valid (Kubernetes mode and standalone alike, across restarts, since
//! the versions are stored), instead of dropping out of the pass and withdrawing what it gave.
//! Pure: given the objects as found, their problems and the stored versions, it says what the
//! pass uses, which objects are held at an older version, and what the store must write.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{ObjectKey, Problem};
use crate::api::{EnforcementTarget, FleetGroup, UpdatePolicy};

/// The last valid version of one object, as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct LastValid {
    /// `FleetGroup`, `UpdatePolicy` or `EnforcementTarget`.
    pub kind: String,
    /// `namespace/name`.
    pub key: String,
    /// The object's uid; empty for objects read from files, which have none.
    pub uid: String,
    /// Kubernetes: `metadata.generation`. Files: counted here, one more per valid change.
    pub generation: Option<i64>,
    /// `apiVersion`, `kind`, the identifying metadata and the spec.
    pub object: Value,
    pub stored_at: Timestamp,
}

/// Stored versions by (kind, `namespace/name`).
pub type StoredVersions = BTreeMap<(String, String), LastValid>;

/// Writes that bring the store in line with what a pass found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LastValidChanges {
    /// New valid versions (insert or replace).
    pub store: Vec<LastValid>,
    /// (kind, `namespace/name`) of versions no longer wanted: the object is gone, or was
    /// recreated (another uid) and must not inherit an old spec.
    pub forget: Vec<(String, String)>,
}

impl LastValidChanges {
    pub fn is_empty(&self) -> bool {
        self.store.is_empty() && self.forget.is_empty()
    }

    /// The same changes made to an in-memory copy of the store.
    pub fn apply_to(&self, stored: &mut StoredVersions) {
        for key in &self.forget {
            stored.remove(key);
        }
        for row in &self.store {
            stored.insert((row.kind.clone(), row.key.clone()), row.clone());
        }
    }
}

/// One object as found by a pass.
#[derive(Debug, Clone)]
pub struct Found<K> {
    pub key: ObjectKey,
    /// `None` when it could not be read as its kind at all (a file with an unknown field).
    pub object: Option<K>,
    /// Problems found before it was typed (in files: the schema on the document as written,
    /// a duplicate); empty from a watch cache.
    pub problems: Vec<String>,
}

impl<K: kube::Resource> Found<K> {
    /// An object from a watch cache.
    pub fn object(object: K) -> Self {
        Found {
            key: ObjectKey::of(&object),
            object: Some(object),
            problems: Vec::new(),
        }
    }
}

/// Every object a pass found, by kind.
#[derive(Debug, Clone, Default)]
pub struct FoundObjects {
    pub groups: Vec<Found<FleetGroup>>,
    pub policies: Vec<Found<UpdatePolicy>>,
    pub targets: Vec<Found<EnforcementTarget>>,
}

/// The version in force for an invalid object.
#[derive(Debug, Clone, PartialEq)]
pub struct InForce {
    pub generation: Option<i64>,
    pub stored_at: Timestamp,
}

/// An object whose current version is invalid.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// `field: why` for each problem.
    pub problems: Vec<String>,
    /// The last valid version, kept in the pass; `None`: never valid, so left out.
    pub in_force: Option<InForce>,
}

impl Held {
    /// The problems and what is in force instead, as a condition message says it.
    pub fn message(&self) -> String {
        let problems = self.problems.join("; ");
        match &self.in_force {
            Some(InForce {
                generation: Some(generation),
                stored_at,
            }) => format!(
                "{problems}; the last valid generation {generation} (seen {}) stays in force",
                stored_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            ),
            Some(InForce { stored_at, .. }) => format!(
                "{problems}; the last valid version (seen {}) stays in force",
                stored_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            ),
            None => {
                format!("{problems}; no valid version of it is known, so nothing of it is in force")
            }
        }
    }
}

/// What a pass uses instead of what it found.
#[derive(Debug, Clone, Default)]
pub struct Substituted {
    pub groups: Vec<FleetGroup>,
    pub policies: Vec<UpdatePolicy>,
    pub targets: Vec<EnforcementTarget>,
    /// `Kind namespace/name` → problems and the version in force, for each invalid object.
    pub invalid: BTreeMap<String, Held>,
    pub changes: LastValidChanges,
}

/// What becomes of stored versions of objects the pass did not find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing<'a> {
    /// The object was deleted: its version goes (and its declarations are withdrawn).
    Forget,
    /// The pass cannot tell (a file that is not YAML may hold it): the version stays in force,
    /// with this problem.
    Keep(&'a str),
}

/// Per object: a valid one is used (and stored when its valid version changed); an invalid one
/// is replaced by its stored last valid version of the same uid (the current metadata with the
/// stored spec, checked again), or left out when it has none; stored versions of objects not
/// found are forgotten or kept as `missing` says.
pub fn substitute(
    found: FoundObjects,
    stored: &StoredVersions,
    missing: Missing<'_>,
    now: Timestamp,
) -> Substituted {
    let mut out = Substituted::default();
    let mut pass = KindPass {
        stored,
        missing,
        now,
        invalid: &mut out.invalid,
        changes: &mut out.changes,
    };
    out.groups = pass.run(found.groups, super::fleet_group);
    out.policies = pass.run(found.policies, super::update_policy);
    out.targets = pass.run(found.targets, super::enforcement_target);
    out
}

struct KindPass<'a> {
    stored: &'a StoredVersions,
    missing: Missing<'a>,
    now: Timestamp,
    invalid: &'a mut BTreeMap<String, Held>,
    changes: &'a mut LastValidChanges,
}

impl KindPass<'_> {
    fn run<K, C>(
        &mut self,
        found: Vec<Found<K>>,
        check: fn(&K) -> Result<C, Vec<Problem>>,
    ) -> Vec<K>
    where
        K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let kind = K::kind(&()).to_string();
        let mut seen = BTreeSet::new();
        let mut objects = Vec::new();
        for found in found {
            let key = found.key.to_string();
            seen.insert(key.clone());
            let row = self.stored.get(&(kind.clone(), key.clone()));
            let problems = match (&found.object, found.problems.is_empty()) {
                (Some(object), true) => match check(object) {
                    Ok(_) => Vec::new(),
                    Err(list) => list
                        .iter()
                        .map(|p| format!("{}: {}", p.field, p.why))
                        .collect(),
                },
                (None, true) => vec!["cannot be read".to_string()],
                (_, false) => found.problems,
            };
            let current_uid = found.object.as_ref().map(uid_of);
            match found.object {
                Some(object) if problems.is_empty() => {
                    if let Some(version) = self.new_version(&kind, &key, &object, row) {
                        self.changes.store.push(version);
                    }
                    objects.push(object);
                }
                current => {
                    // Only this very object's version: a recreated one starts afresh.
                    let usable = row.filter(|r| current_uid.as_ref().is_none_or(|u| *u == r.uid));
                    let restored = usable.and_then(|r| restore(current.as_ref(), r, check));
                    if row.is_some() && restored.is_none() {
                        self.changes.forget.push((kind.clone(), key.clone()));
                    }
                    let in_force = restored.map(|object| {
                        objects.push(object);
                        usable.map(|r| InForce {
                            generation: r.generation,
                            stored_at: r.stored_at,
                        })
                    });
                    self.invalid.insert(
                        format!("{kind} {key}"),
                        Held {
                            problems,
                            in_force: in_force.flatten(),
                        },
                    );
                }
            }
        }
        let not_found = self
            .stored
            .values()
            .filter(|r| r.kind == kind && !seen.contains(&r.key));
        for row in not_found {
            let restored = match self.missing {
                Missing::Forget => None,
                Missing::Keep(why) => restore::<K, C>(None, row, check).map(|o| (o, why)),
            };
            match restored {
                Some((object, why)) => {
                    objects.push(object);
                    self.invalid.insert(
                        format!("{kind} {}", row.key),
                        Held {
                            problems: vec![why.to_string()],
                            in_force: Some(InForce {
                                generation: row.generation,
                                stored_at: row.stored_at,
                            }),
                        },
                    );
                }
                None => self.changes.forget.push((kind.clone(), row.key.clone())),
            }
        }
        objects
    }

    /// The version to store for a valid object, unless the stored one is the same.
    fn new_version<K: kube::Resource + Serialize>(
        &self,
        kind: &str,
        key: &str,
        object: &K,
        row: Option<&LastValid>,
    ) -> Option<LastValid> {
        let uid = uid_of(object);
        let generation = object.meta().generation;
        let form = stored_form(object);
        let same_object = row.filter(|r| r.uid == uid);
        let unchanged = same_object.is_some_and(|r| {
            r.object.get("spec") == form.get("spec")
                && (generation.is_none() || r.generation == generation)
        });
        if unchanged {
            return None;
        }
        Some(LastValid {
            kind: kind.to_string(),
            key: key.to_string(),
            uid,
            // Files carry no generation: count valid changes instead.
            generation: generation
                .or_else(|| Some(same_object.and_then(|r| r.generation).unwrap_or(0) + 1)),
            object: form,
            stored_at: self.now,
        })
    }
}

fn uid_of<K: kube::Resource>(object: &K) -> String {
    object.meta().uid.clone().unwrap_or_default()
}

/// What is stored of an object: enough to stand in for it (apiVersion, kind, name, namespace,
/// uid, generation, labels, owner references, spec), nothing that changes without its spec
/// changing (resourceVersion, managedFields, status, annotations).
pub fn stored_form<K: Serialize>(object: &K) -> Value {
    let Ok(Value::Object(full)) = serde_json::to_value(object) else {
        return Value::Null;
    };
    let mut form = Map::new();
    for field in ["apiVersion", "kind"] {
        if let Some(value) = full.get(field) {
            form.insert(field.to_string(), value.clone());
        }
    }
    if let Some(Value::Object(metadata)) = full.get("metadata") {
        let kept: Map<String, Value> = metadata
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "name" | "namespace" | "uid" | "generation" | "labels" | "ownerReferences"
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        form.insert("metadata".to_string(), Value::Object(kept));
    }
    if let Some(spec) = full.get("spec") {
        form.insert("spec".to_string(), spec.clone());
    }
    Value::Object(form)
}

/// The stored version standing in for `current` (its metadata, the stored spec), or on its own
/// when nothing could be read; `None` when it no longer reads or checks as valid (a stricter
/// operator than the one that stored it).
fn restore<K, C>(
    current: Option<&K>,
    row: &LastValid,
    check: fn(&K) -> Result<C, Vec<Problem>>,
) -> Option<K>
where
    K: Serialize + DeserializeOwned,
{
    let value = match current {
        Some(current) => {
            let mut value = serde_json::to_value(current).ok()?;
            let spec = row.object.get("spec")?.clone();
            value.as_object_mut()?.insert("spec".to_string(), spec);
            value
        }
        None => row.object.clone(),
    };
    let object: K = serde_json::from_value(value).ok()?;
    check(&object).ok()?;
    Some(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(uid: &str, generation: i64, zone: &str, days: u32) -> UpdatePolicy {
        let value = serde_json::json!({
            "apiVersion": "updates.ddm.dev/v1alpha1",
            "kind": "UpdatePolicy",
            "metadata": {"name": "mobile", "namespace": "fleet", "uid": uid,
                         "generation": generation, "resourceVersion": "42"},
            "spec": {
                "fleetGroups": ["iphones"],
                "target": {"strategy": "latest-minor"},
                "deadline": {"daysAfterPosting": days, "localTime": "18:00", "timeZone": zone},
            }
        });
        serde_json::from_value(value).expect("an UpdatePolicy")
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("a timestamp")
    }

    fn policies(list: Vec<UpdatePolicy>) -> FoundObjects {
        FoundObjects {
            policies: list.into_iter().map(Found::object).collect(),
            ..FoundObjects::default()
        }
    }

    fn stored_after(changes: &LastValidChanges, mut stored: StoredVersions) -> StoredVersions {
        changes.apply_to(&mut stored);
        stored
    }

    const KEY: (&str, &str) = ("UpdatePolicy", "fleet/mobile");

    fn key() -> (String, String) {
        (KEY.0.to_string(), KEY.1.to_string())
    }

    #[test]
    fn a_valid_object_is_used_and_stored_once_per_generation() {
        let t0 = at("2026-09-01T00:00:00Z");
        let first = substitute(
            policies(vec![policy("u1", 3, "America/New_York", 21)]),
            &StoredVersions::new(),
            Missing::Forget,
            t0,
        );
        assert_eq!(first.policies.len(), 1);
        assert!(first.invalid.is_empty());
        assert_eq!(first.changes.store.len(), 1);
        let row = &first.changes.store[0];
        assert_eq!((row.uid.as_str(), row.generation), ("u1", Some(3)));
        assert_eq!(row.object["metadata"].get("resourceVersion"), None);
        assert_eq!(
            row.object["spec"]["deadline"]["timeZone"],
            "America/New_York"
        );
        let stored = stored_after(&first.changes, StoredVersions::new());

        // The same version again (another resourceVersion does not count): nothing to write.
        let again = substitute(
            policies(vec![policy("u1", 3, "America/New_York", 21)]),
            &stored,
            Missing::Forget,
            at("2026-09-01T00:05:00Z"),
        );
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        // A new valid generation replaces it.
        let edited = substitute(
            policies(vec![policy("u1", 4, "Europe/Paris", 21)]),
            &stored,
            Missing::Forget,
            at("2026-09-02T00:00:00Z"),
        );
        assert_eq!(edited.changes.store.len(), 1);
        assert_eq!(edited.changes.store[0].generation, Some(4));
        assert!(edited.changes.forget.is_empty());
    }

    #[test]
    fn an_invalid_edit_keeps_the_last_valid_spec_with_current_metadata() {
        let t0 = at("2026-09-01T00:00:00Z");
        let stored = stored_after(
            &substitute(
                policies(vec![policy("u1", 3, "America/New_York", 21)]),
                &StoredVersions::new(),
                Missing::Forget,
                t0,
            )
            .changes,
            StoredVersions::new(),
        );
        let out = substitute(
            policies(vec![policy("u1", 4, "Mars/Base", 9)]),
            &stored,
            Missing::Forget,
            at("2026-09-03T00:00:00Z"),
        );
        assert_eq!(out.policies.len(), 1, "held in the pass");
        let used = &out.policies[0];
        assert_eq!(used.spec.deadline.time_zone, "America/New_York");
        assert_eq!(
            used.spec.deadline.days_after_posting, 21,
            "the whole old spec"
        );
        assert_eq!(used.metadata.generation, Some(4), "current metadata");
        assert!(
            out.changes.is_empty(),
            "nothing to write: {:?}",
            out.changes
        );
        let held = &out.invalid["UpdatePolicy fleet/mobile"];
        assert_eq!(
            held.in_force,
            Some(InForce {
                generation: Some(3),
                stored_at: t0
            })
        );
        assert_eq!(held.problems.len(), 1, "{:?}", held.problems);
        assert!(held.problems[0].starts_with("spec.deadline.timeZone: "));
        let message = held.message();
        assert!(message.contains("Mars/Base"), "{message}");
        assert!(
            message
                .contains("the last valid generation 3 (seen 2026-09-01T00:00:00Z) stays in force"),
            "{message}"
        );
        // And the result checks: what the pass uses is valid.
        assert!(crate::api::validate::update_policy(used).is_ok());
    }

    #[test]
    fn never_valid_stays_out_and_a_recreated_object_does_not_inherit() {
        let stored = stored_after(
            &substitute(
                policies(vec![policy("u1", 3, "America/New_York", 21)]),
                &StoredVersions::new(),
                Missing::Forget,
                at("2026-09-01T00:00:00Z"),
            )
            .changes,
            StoredVersions::new(),
        );
        // Never valid: out, with the same kind of problem list.
        let never = substitute(
            policies(vec![policy("u9", 1, "Mars/Base", 21)]),
            &StoredVersions::new(),
            Missing::Forget,
            at("2026-09-02T00:00:00Z"),
        );
        assert!(never.policies.is_empty());
        let held = &never.invalid["UpdatePolicy fleet/mobile"];
        assert_eq!(held.in_force, None);
        assert!(
            held.message().contains("no valid version"),
            "{}",
            held.message()
        );
        // Deleted and recreated invalid (another uid): out, and the old version forgotten.
        let recreated = substitute(
            policies(vec![policy("u2", 1, "Mars/Base", 21)]),
            &stored,
            Missing::Forget,
            at("2026-09-02T00:00:00Z"),
        );
        assert!(recreated.policies.is_empty());
        assert_eq!(
            recreated.invalid["UpdatePolicy fleet/mobile"].in_force,
            None
        );
        assert_eq!(recreated.changes.forget, vec![key()]);
        // Recreated valid: its own version replaces the old one.
        let valid = substitute(
            policies(vec![policy("u2", 1, "Europe/Paris", 21)]),
            &stored,
            Missing::Forget,
            at("2026-09-02T00:00:00Z"),
        );
        assert_eq!(valid.changes.store[0].uid, "u2");
        assert_eq!(valid.changes.store[0].generation, Some(1));
    }

    #[test]
    fn deleted_objects_are_forgotten_unless_the_pass_cannot_tell() {
        let t0 = at("2026-09-01T00:00:00Z");
        let stored = stored_after(
            &substitute(
                policies(vec![policy("u1", 3, "America/New_York", 21)]),
                &StoredVersions::new(),
                Missing::Forget,
                t0,
            )
            .changes,
            StoredVersions::new(),
        );
        let gone = substitute(FoundObjects::default(), &stored, Missing::Forget, t0);
        assert!(gone.policies.is_empty());
        assert!(gone.invalid.is_empty());
        assert_eq!(gone.changes.forget, vec![key()]);

        let unreadable = substitute(
            FoundObjects::default(),
            &stored,
            Missing::Keep("policies.yaml: not valid YAML"),
            t0,
        );
        assert_eq!(unreadable.policies.len(), 1, "kept from the store alone");
        assert_eq!(unreadable.policies[0].metadata.uid.as_deref(), Some("u1"));
        assert!(unreadable.changes.is_empty());
        assert_eq!(
            unreadable.invalid["UpdatePolicy fleet/mobile"].problems,
            vec!["policies.yaml: not valid YAML".to_string()]
        );
    }

    #[test]
    fn files_without_uid_or_generation_are_counted_and_untyped_ones_held() {
        let mut from_file = policy("", 0, "America/New_York", 21);
        from_file.metadata.uid = None;
        from_file.metadata.generation = None;
        let first = substitute(
            policies(vec![from_file.clone()]),
            &StoredVersions::new(),
            Missing::Forget,
            at("2026-09-01T00:00:00Z"),
        );
        assert_eq!(first.changes.store[0].generation, Some(1));
        assert_eq!(first.changes.store[0].uid, "");
        let stored = stored_after(&first.changes, StoredVersions::new());
        let same = substitute(
            policies(vec![from_file.clone()]),
            &stored,
            Missing::Forget,
            at("2026-09-01T00:01:00Z"),
        );
        assert!(same.changes.is_empty());
        let mut edited = from_file.clone();
        edited.spec.deadline.days_after_posting = 9;
        let second = substitute(
            policies(vec![edited]),
            &stored,
            Missing::Forget,
            at("2026-09-02T00:00:00Z"),
        );
        assert_eq!(second.changes.store[0].generation, Some(2));

        // A document that could not be typed (an unknown field): the stored version stands in.
        let untyped = FoundObjects {
            policies: vec![Found {
                key: ObjectKey {
                    namespace: "fleet".into(),
                    name: "mobile".into(),
                },
                object: None,
                problems: vec![
                    "p.yaml (document 1): UpdatePolicy mobile: unknown field spec.deadlin".into(),
                ],
            }],
            ..FoundObjects::default()
        };
        let out = substitute(
            untyped,
            &stored,
            Missing::Forget,
            at("2026-09-02T00:00:00Z"),
        );
        assert_eq!(out.policies.len(), 1);
        assert_eq!(out.policies[0].spec.deadline.days_after_posting, 21);
        let held = &out.invalid["UpdatePolicy fleet/mobile"];
        assert!(held.problems[0].contains("unknown field"));
        assert_eq!(held.in_force.as_ref().and_then(|f| f.generation), Some(1));
        assert!(out.changes.is_empty());
    }

    #[test]
    fn a_stored_version_that_no_longer_checks_is_forgotten() {
        let t0 = at("2026-09-01T00:00:00Z");
        let mut row = substitute(
            policies(vec![policy("u1", 3, "America/New_York", 21)]),
            &StoredVersions::new(),
            Missing::Forget,
            t0,
        )
        .changes
        .store
        .remove(0);
        // As if stored by an operator that accepted what this one refuses.
        row.object["spec"]["deadline"]["timeZone"] = "Atlantis/Capital".into();
        let stored: StoredVersions = [(key(), row)].into();
        let out = substitute(
            policies(vec![policy("u1", 4, "Mars/Base", 21)]),
            &stored,
            Missing::Forget,
            t0,
        );
        assert!(out.policies.is_empty());
        assert_eq!(out.invalid["UpdatePolicy fleet/mobile"].in_force, None);
        assert_eq!(out.changes.forget, vec![key()]);
    }
}
