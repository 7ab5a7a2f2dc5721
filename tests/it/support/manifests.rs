//! Fleet manifests as several tests write them, in namespace `fleet`: FleetGroups of every
//! device on some platforms and UpdatePolicies on Apple's latest release. One builder instead of
//! a YAML copy per test file.

/// The FleetGroup `name`: every device on `platforms` (a YAML flow list's items, `iOS, iPadOS`).
pub fn group(name: &str, platforms: &str) -> String {
    [
        "apiVersion: updates.ddm.dev/v1alpha1".to_string(),
        "kind: FleetGroup".to_string(),
        format!("metadata: {{name: {name}, namespace: fleet}}"),
        format!("spec: {{platforms: [{platforms}]}}\n"),
    ]
    .join("\n")
}

/// The UpdatePolicy `name` over `groups` (flow list items), on Apple's latest release, due `days`
/// after posting; `more_spec` is appended under `spec:` as given (each line indented two spaces,
/// ending in a newline), e.g. an `enrollment:` block.
pub fn latest_policy(name: &str, groups: &str, days: u32, more_spec: &str) -> String {
    [
        "apiVersion: updates.ddm.dev/v1alpha1".to_string(),
        "kind: UpdatePolicy".to_string(),
        format!("metadata: {{name: {name}, namespace: fleet}}"),
        "spec:".to_string(),
        format!("  fleetGroups: [{groups}]"),
        "  target: {strategy: latest}".to_string(),
        format!("  deadline: {{daysAfterPosting: {days}}}\n{more_spec}"),
    ]
    .join("\n")
}

/// The documents as one YAML stream.
pub fn stream(documents: &[String]) -> String {
    documents.join("---\n")
}
