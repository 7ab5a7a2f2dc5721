//! Reading `updates.ddm.dev` resources from YAML or JSON files and folders, as a GitOps checkout
//! holds them. Other kinds are skipped with a notice; every problem names its file, object and
//! field path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kube::ResourceExt;
use serde::de::DeserializeOwned;

use crate::api::validate;
use crate::api::{API_VERSION, EnforcementTarget, FleetGroup, GROUP, UpdatePolicy};

/// Files larger than this are refused unread.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The resources found, in file order.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    pub fleet_groups: Vec<FleetGroup>,
    pub policies: Vec<UpdatePolicy>,
    pub targets: Vec<EnforcementTarget>,
    /// Things skipped on purpose (other kinds), for the user to see.
    pub notices: Vec<String>,
}

/// Why manifests could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A path could not be read at all.
    #[error("{0}")]
    Unreadable(String),
    /// Files were read but hold invalid resources; every problem is listed.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// Loads every `.yaml`, `.yml` and `.json` file under the given files and folders (folders are
/// walked recursively in name order; hidden entries are skipped).
pub fn load(paths: &[PathBuf]) -> Result<Manifests, LoadError> {
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files)?;
    }
    let mut manifests = Manifests::default();
    let mut problems = Vec::new();
    for file in &files {
        let text = read_capped(file)?;
        parse_into(
            &file.display().to_string(),
            &text,
            &mut manifests,
            &mut problems,
        );
    }
    check_duplicates(&manifests, &mut problems);
    if problems.is_empty() {
        Ok(manifests)
    } else {
        Err(LoadError::Invalid(problems))
    }
}

fn read_capped(file: &Path) -> Result<String, LoadError> {
    let unreadable = |why: String| LoadError::Unreadable(format!("{}: {why}", file.display()));
    let size = std::fs::metadata(file)
        .map_err(|e| unreadable(e.to_string()))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(unreadable(format!(
            "{size} bytes is more than the {MAX_FILE_BYTES} accepted"
        )));
    }
    std::fs::read_to_string(file).map_err(|e| unreadable(e.to_string()))
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let unreadable = |e: std::io::Error| LoadError::Unreadable(format!("{}: {e}", path.display()));
    let metadata = std::fs::metadata(path).map_err(unreadable)?;
    if metadata.is_file() {
        files.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(unreadable)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            collect_files(&entry, files)?;
        } else if entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            files.push(entry);
        }
    }
    Ok(())
}

/// Parses and checks the resources in one YAML text (tests, benchmarks, fuzzing): every problem
/// of parsing or checking, listed.
pub fn check_str(file: &str, text: &str) -> Result<crate::api::validate::Checked, Vec<String>> {
    let mut manifests = Manifests::default();
    let mut problems = Vec::new();
    parse_into(file, text, &mut manifests, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    crate::api::validate::check_all(
        &manifests.fleet_groups,
        &manifests.policies,
        &manifests.targets,
    )
}

/// A folder read object by object (standalone mode), so one invalid object holds back only
/// itself: the objects that could be typed (valid or not), each object's problems, and the
/// problems that name no object.
#[derive(Debug, Clone, Default)]
pub struct EachObject {
    pub manifests: Manifests,
    /// (kind, object) → the problems of its document(s), as `plan` lists them. An object
    /// defined twice is listed here and typed in neither place.
    pub problems: BTreeMap<(String, validate::ObjectKey), Vec<String>>,
    /// A file that cannot be read or is not YAML, a document with no kind or name: the objects
    /// such places hold cannot be told from deleted ones.
    pub unattributed: Vec<String>,
}

/// Reads every file as [`load`] does, without stopping at the first unreadable one.
pub fn load_each(paths: &[PathBuf]) -> EachObject {
    let mut out = EachObject::default();
    let mut files = Vec::new();
    for path in paths {
        if let Err(error) = collect_files(path, &mut files) {
            out.unattributed.push(error.to_string());
        }
    }
    for file in &files {
        let text = match read_capped(file) {
            Ok(text) => text,
            Err(error) => {
                out.unattributed.push(error.to_string());
                continue;
            }
        };
        let name = file.display().to_string();
        let documents: Vec<serde_json::Value> = match serde_saphyr::from_multiple(&text) {
            Ok(documents) => documents,
            Err(e) => {
                out.unattributed
                    .push(format!("{name}: not valid YAML: {e}"));
                continue;
            }
        };
        for (index, document) in documents.into_iter().enumerate() {
            let identity = identity(&document);
            let mut problems = Vec::new();
            parse_document(&name, index, document, &mut out.manifests, &mut problems);
            if problems.is_empty() {
                continue;
            }
            match identity {
                Some(object) => out.problems.entry(object).or_default().extend(problems),
                None => out.unattributed.extend(problems),
            }
        }
    }
    fn duplicates<T: kube::Resource<DynamicType = ()>>(
        objects: &mut Vec<T>,
        problems: &mut BTreeMap<(String, validate::ObjectKey), Vec<String>>,
    ) {
        let key = |o: &T| (T::kind(&()).to_string(), validate::ObjectKey::of(o));
        let mut count: BTreeMap<(String, validate::ObjectKey), usize> = BTreeMap::new();
        for object in objects.iter() {
            *count.entry(key(object)).or_default() += 1;
        }
        for (object, n) in count.iter().filter(|(_, n)| **n > 1) {
            problems
                .entry(object.clone())
                .or_default()
                .push(format!("{} {} is defined {n} times", object.0, object.1));
        }
        objects.retain(|o| count.get(&key(o)).is_none_or(|n| *n == 1));
    }
    duplicates(&mut out.manifests.fleet_groups, &mut out.problems);
    duplicates(&mut out.manifests.policies, &mut out.problems);
    duplicates(&mut out.manifests.targets, &mut out.problems);
    out
}

/// The kind and `namespace/name` of a document of this API group, when it names them.
fn identity(document: &serde_json::Value) -> Option<(String, validate::ObjectKey)> {
    let group = document.get("apiVersion")?.as_str()?.split('/').next()?;
    let kind = document.get("kind")?.as_str()?;
    if group != GROUP || !matches!(kind, "FleetGroup" | "UpdatePolicy" | "EnforcementTarget") {
        return None;
    }
    let metadata = document.get("metadata")?;
    let name = metadata.get("name")?.as_str().filter(|n| !n.is_empty())?;
    let namespace = match metadata.get("namespace") {
        None | Some(serde_json::Value::Null) => "default",
        Some(namespace) => namespace.as_str()?,
    };
    Some((
        kind.to_string(),
        validate::ObjectKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        },
    ))
}

/// Parses one file's documents into `manifests`, adding any problem to `problems`.
pub fn parse_into(file: &str, text: &str, manifests: &mut Manifests, problems: &mut Vec<String>) {
    let documents: Vec<serde_json::Value> = match serde_saphyr::from_multiple(text) {
        Ok(documents) => documents,
        Err(e) => {
            problems.push(format!("{file}: not valid YAML: {e}"));
            return;
        }
    };
    for (index, document) in documents.into_iter().enumerate() {
        parse_document(file, index, document, manifests, problems);
    }
}

/// Parses document `index` (from 0) of `file` into `manifests`, adding any problem to
/// `problems`.
fn parse_document(
    file: &str,
    index: usize,
    document: serde_json::Value,
    manifests: &mut Manifests,
    problems: &mut Vec<String>,
) {
    if document.is_null() {
        return;
    }
    let at = format!("{file} (document {})", index + 1);
    let Some(object) = document.as_object() else {
        problems.push(format!(
            "{at}: expected a Kubernetes object, found {}",
            kind_of(&document)
        ));
        return;
    };
    let api_version = object
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let kind = object
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let kind = kind.as_str();
    let name = object
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("<unnamed>");
    // A hostile name must not be echoed back megabytes long.
    let name: String = if name.len() > 64 {
        format!("{}…", name.chars().take(64).collect::<String>())
    } else {
        name.to_string()
    };
    if api_version.is_empty() && matches!(kind, "FleetGroup" | "UpdatePolicy" | "EnforcementTarget")
    {
        problems.push(format!(
            "{at}: {kind} {name} has no apiVersion; use {API_VERSION}"
        ));
        return;
    }
    if api_version.split('/').next() != Some(GROUP) {
        manifests.notices.push(format!(
            "{at}: skipped {kind} {name} ({api_version}): not an {GROUP} resource"
        ));
        return;
    }
    let place = at;
    let at = format!("{place}: {kind} {name}");
    if api_version != API_VERSION {
        problems.push(format!(
            "{at}: apiVersion {api_version} is not served; use {API_VERSION}"
        ));
        return;
    }
    if !matches!(kind, "FleetGroup" | "UpdatePolicy" | "EnforcementTarget") {
        problems.push(format!(
            "{at}: unknown kind {kind:?} (FleetGroup, UpdatePolicy or EnforcementTarget)"
        ));
        return;
    }
    // The CRD's schema first, on the document as written: a value of the wrong type or out
    // of range gets the message the other modes give, not a decoding error.
    let mut document = document;
    let refused = validate::check_document(kind, &mut document);
    let place = place.as_str();
    match kind {
        "FleetGroup" => {
            let found = checked(
                place,
                &at,
                document,
                refused,
                problems,
                validate::fleet_group,
            );
            manifests.fleet_groups.extend(found);
        }
        "UpdatePolicy" => {
            let found = checked(
                place,
                &at,
                document,
                refused,
                problems,
                validate::update_policy,
            );
            manifests.policies.extend(found);
        }
        _ => {
            let found = checked(
                place,
                &at,
                document,
                refused,
                problems,
                validate::enforcement_target,
            );
            manifests.targets.extend(found);
        }
    }
}

/// Types a document and checks it as every mode does. A document the schema refused as written
/// is still typed when it can be, so its other problems are listed too, exactly as Kubernetes
/// mode lists them; when it cannot be, the schema's problems are all there is to say.
fn checked<T, C>(
    place: &str,
    at: &str,
    document: serde_json::Value,
    refused: Vec<validate::Problem>,
    problems: &mut Vec<String>,
    check: impl Fn(&T) -> Result<C, Vec<validate::Problem>>,
) -> Option<T>
where
    T: DeserializeOwned + kube::Resource,
{
    if refused.is_empty() {
        let object = typed::<T>(at, document, problems)?;
        if let Err(found) = check(&object) {
            problems.extend(found.iter().map(|p| format!("{place}: {p}")));
        }
        return Some(object);
    }
    let mut report = |found: &[validate::Problem]| {
        problems.extend(found.iter().map(|p| format!("{place}: {p}")));
    };
    let Ok(mut object) = serde_json::from_value::<T>(document) else {
        report(&refused);
        return None;
    };
    if object.namespace().is_none() {
        object.meta_mut().namespace = Some("default".into());
    }
    match check(&object) {
        Err(found) if !found.is_empty() => report(&found),
        _ => report(&refused),
    }
    Some(object)
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "nothing",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Deserializes with the failing field's path, refuses unknown fields, defaults the namespace.
fn typed<T>(at: &str, document: serde_json::Value, problems: &mut Vec<String>) -> Option<T>
where
    T: DeserializeOwned + kube::Resource,
{
    let mut fail = |why: String| problems.push(format!("{at}: {why}"));
    let mut unknown = BTreeSet::new();
    let typed: Result<T, _> = serde_ignored::deserialize(&document, |path| {
        unknown.insert(path.to_string().replace(".?", ""));
    });
    let mut object = match typed {
        Ok(object) => object,
        Err(_) => {
            // Deserialize again to learn the failing field's path.
            let error = serde_path_to_error::deserialize::<_, T>(&document)
                .err()
                .map(|e| format!("{}: {}", e.path(), e.inner()))
                .unwrap_or_else(|| "cannot be read".into());
            fail(error);
            return None;
        }
    };
    // `metadata` is Kubernetes' own and may carry anything (managedFields, annotations, ...);
    // `apiVersion` and `kind` were checked above; `status` is the operator's to write.
    let unknown: Vec<String> = unknown
        .into_iter()
        .filter(|p| {
            let top = p.split('.').next().unwrap_or_default();
            !matches!(top, "metadata" | "apiVersion" | "kind" | "status")
        })
        .collect();
    if !unknown.is_empty() {
        fail(format!("unknown field {}", unknown.join(", ")));
        return None;
    }
    if object.meta().name.as_deref().is_none_or(str::is_empty) {
        fail("metadata.name is required".into());
        return None;
    }
    if object.namespace().is_none() {
        object.meta_mut().namespace = Some("default".into());
    }
    Some(object)
}

fn check_duplicates(manifests: &Manifests, problems: &mut Vec<String>) {
    fn check<T: kube::Resource<DynamicType = ()>>(objects: &[T], problems: &mut Vec<String>) {
        let mut seen = BTreeSet::new();
        for object in objects {
            let key = (object.namespace().unwrap_or_default(), object.name_any());
            if !seen.insert(key.clone()) {
                problems.push(format!(
                    "{} {}/{} is defined more than once",
                    T::kind(&()),
                    key.0,
                    key.1
                ));
            }
        }
    }
    check(&manifests.fleet_groups, problems);
    check(&manifests.policies, problems);
    check(&manifests.targets, problems);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Manifests, Vec<String>) {
        let mut manifests = Manifests::default();
        let mut problems = Vec::new();
        parse_into("test.yaml", text, &mut manifests, &mut problems);
        check_duplicates(&manifests, &mut problems);
        (manifests, problems)
    }

    #[test]
    fn other_kinds_are_skipped_with_a_notice() {
        let (manifests, problems) = parse(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: updates.ddm.dev/v1alpha1\nkind: FleetGroup\nmetadata: {name: macs}\nspec: {platforms: [macOS]}\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(manifests.fleet_groups.len(), 1);
        assert_eq!(
            manifests.fleet_groups[0].namespace().as_deref(),
            Some("default")
        );
        assert_eq!(manifests.notices.len(), 1);
        assert!(manifests.notices[0].contains("skipped ConfigMap x"));
    }

    #[test]
    fn wrong_types_and_unknown_fields_name_the_field() {
        let (_, problems) = parse(
            "apiVersion: updates.ddm.dev/v1alpha1\nkind: FleetGroup\nmetadata: {name: a}\nspec: {platforms: [macOS], shard: {percent: lots}}\n---\napiVersion: updates.ddm.dev/v1alpha1\nkind: FleetGroup\nmetadata: {name: b}\nspec: {platfroms: [macOS]}\n",
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(
            problems[0],
            "test.yaml (document 1): FleetGroup default/a: spec.shard.percent: must be a whole \
             number, not \"lots\""
        );
        assert!(
            problems[1].contains("unknown field spec.platfroms"),
            "{}",
            problems[1]
        );
    }

    #[test]
    fn duplicates_and_bad_documents_are_reported() {
        let (_, problems) = parse(
            "apiVersion: updates.ddm.dev/v1alpha1\nkind: FleetGroup\nmetadata: {name: a}\nspec: {}\n---\napiVersion: updates.ddm.dev/v1alpha1\nkind: FleetGroup\nmetadata: {name: a}\nspec: {}\n---\n- just\n- a list\n---\napiVersion: updates.ddm.dev/v1beta9\nkind: FleetGroup\nmetadata: {name: c}\n---\napiVersion: updates.ddm.dev/v1alpha1\nkind: Gadget\nmetadata: {name: d}\n",
        );
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("more than once")));
        assert!(problems.iter().any(|p| p.contains("found a list")));
        assert!(problems.iter().any(|p| p.contains("v1beta9 is not served")));
        assert!(
            problems
                .iter()
                .any(|p| p.contains("unknown kind \"Gadget\""))
        );
    }

    #[test]
    fn load_each_names_the_object_of_each_problem_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write");
        };
        let group = |name: &str| {
            format!(
                "apiVersion: updates.ddm.dev/v1alpha1\nkind: FleetGroup\nmetadata: {{name: {name}}}\nspec: {{platforms: [macOS]}}\n"
            )
        };
        write("a-valid.yaml", &group("macs"));
        // A typo in a field name: the object cannot be typed, but it is named.
        write(
            "b-typo.yaml",
            "apiVersion: updates.ddm.dev/v1alpha1\nkind: FleetGroup\nmetadata: {name: ipads, namespace: fleet}\nspec: {platfroms: [iPadOS]}\n",
        );
        write(
            "c-twice.yaml",
            &format!("{}---\n{}", group("twice"), group("twice")),
        );
        write("d-broken.yaml", "kind: [");
        let each = load_each(&[dir.path().to_path_buf()]);
        let names: Vec<String> = each
            .manifests
            .fleet_groups
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        assert_eq!(names, ["macs"], "a duplicate is typed in neither place");
        let objects: Vec<String> = each
            .problems
            .keys()
            .map(|(kind, key)| format!("{kind} {key}"))
            .collect();
        assert_eq!(
            objects,
            ["FleetGroup default/twice", "FleetGroup fleet/ipads"]
        );
        assert!(
            each.problems
                .values()
                .flatten()
                .any(|p| p.contains("unknown field spec.platfroms")),
            "{:?}",
            each.problems
        );
        assert_eq!(each.unattributed.len(), 1, "{:?}", each.unattributed);
        assert!(each.unattributed[0].contains("d-broken.yaml: not valid YAML"));
    }

    #[test]
    fn malformed_yaml_is_a_problem_not_a_panic() {
        for text in ["{", "a: [", "\t- x", "&a [*a]", "key: \"unterminated"] {
            let (_, problems) = parse(text);
            assert_eq!(problems.len(), 1, "{text:?} → {problems:?}");
        }
    }
}
