//! One device explained whole (`GET /api/v1/devices/{id}`, `devices show`): who it is and where
//! each fact came from, the groups that select it and why, what every resource decides for it
//! and why, what it is served (and whose deadline that is), what it last reported, and the
//! answer to "why is this device not updated?" in sentences.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{DeviceIndex, Scope, source_name, source_namespace, urgency};
use std::sync::Arc;

use crate::backend::{DeviceRecord, Memory};
use crate::inventory::Device;
use crate::mdm::{Enrollment, MdmDevice};
use crate::pass::devices::Provenance;
use crate::pass::report::each_source;
use crate::resolve::{self, Enforcement, Source, explain_selection};
use crate::status::bucket::{Bucket, STALE_AFTER_SECONDS};
use crate::status::{at as at_path, text};

/// The declaration type whose payload carries a version and a deadline.
const ENFORCEMENT_TYPE: &str = "com.apple.configuration.softwareupdate.enforcement.specific";

/// What the store says of the device now (read at the request, not at the pass).
#[derive(Debug, Default)]
pub struct Live {
    /// Its record with the whole summary (rejected declarations with their reasons).
    pub record: Option<DeviceRecord>,
    /// Its merged status items.
    pub items: Option<Map<String, Value>>,
    pub mdm: Option<MdmDevice>,
    pub served: Option<Served>,
    /// What the passes remember: the rollout ledger (the deadlines handed out) and the frozen
    /// devices.
    pub memory: Arc<Memory>,
    /// Its newest reports first: when each arrived and its body.
    pub recent: Vec<(Timestamp, Vec<u8>)>,
}

/// The set the device is served now.
#[derive(Debug, Default)]
pub struct Served {
    pub token: String,
    pub members: Vec<String>,
    /// The bodies of its configurations, by identifier.
    pub configurations: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceView {
    pub kind: String,
    pub enrollment_id: String,
    /// When this was put together, and when the pass whose decisions it shows ran.
    pub as_of: Timestamp,
    pub pass_at: Timestamp,
    pub identity: Option<Identity>,
    /// The most urgent of its states now; absent when no resource applies.
    pub state: Option<String>,
    pub last_report: Option<Timestamp>,
    pub assigned_at: Option<Timestamp>,
    pub stale: bool,
    pub checked_out_at: Option<Timestamp>,
    pub frozen: Frozen,
    pub fleet_groups: Vec<GroupView>,
    pub resources: Vec<ResourceView>,
    pub declarations: DeclarationsView,
    pub report: Option<ReportView>,
    pub recent_reports: Vec<RecentReport>,
    /// Why it stands where it stands, in sentences.
    pub explanation: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub serial_number: Option<String>,
    pub platform: String,
    pub model: String,
    pub software_update_device_id: Option<String>,
    pub os_version: String,
    pub build_version: Option<String>,
    pub supervised: bool,
    pub enrollment_type: String,
    pub apple_silicon: Option<bool>,
    pub bootstrap_token_escrowed: Option<bool>,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Where each fact came from (inventory, mdm, machineInfo, ddmReport) and when it was true.
    pub facts: Provenance,
    pub mdm_enrolled_since: Option<Timestamp>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Frozen {
    /// Suspended resources governing it: its set is left as it is.
    pub suspended_by: Vec<String>,
    /// The resource deleted with `deletionPolicy: Orphan` that froze it, and since when.
    pub orphaned_by: Option<String>,
    pub orphaned_since: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupView {
    pub name: String,
    pub suspended: bool,
    /// Each criterion and how the device meets it.
    pub terms: Vec<TermView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TermView {
    pub field: String,
    pub matched: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceView {
    /// `UpdatePolicy namespace/name` or `EnforcementTarget namespace/name`.
    pub name: String,
    pub state: String,
    /// `enforce` or `none`.
    pub decision: String,
    pub notes: Vec<NoteView>,
    pub ring: Option<usize>,
    pub version: Option<String>,
    pub build: Option<String>,
    /// `TargetLocalDateTime`, the device's local time.
    pub deadline: Option<String>,
    /// `rollout` (the ring's), `device` (its own: it joined late and got the lead time from
    /// then) or `target` (an EnforcementTarget's).
    pub deadline_of: Option<String>,
    pub ring_deadline: Option<String>,
    pub handed_at: Option<Timestamp>,
    pub declaration: Option<String>,
    pub suspended: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoteView {
    pub reason: String,
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeclarationsView {
    /// The `DeclarationsToken` it is served, if it has a set of its own.
    pub token: Option<String>,
    pub served: Vec<String>,
    /// What the last pass decided for it.
    pub planned: Vec<String>,
    pub in_sync: bool,
    pub enforcements: Vec<ServedEnforcement>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServedEnforcement {
    pub identifier: String,
    pub version: Option<String>,
    pub build: Option<String>,
    pub deadline: Option<String>,
    pub deadline_of: Option<String>,
    /// The resource it comes from, when the last pass planned it.
    pub from: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportView {
    pub install_state: Option<String>,
    pub pending_version: Option<String>,
    pub pending_build: Option<String>,
    pub failure: Option<Failure>,
    pub install_reason: Option<InstallReason>,
    pub beta_enrollment: Option<String>,
    /// Declarations it rejected, with Apple's reason codes.
    pub rejected: Vec<NoteView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub reason: Option<String>,
    pub count: Option<u64>,
    /// `softwareupdate.failure-reason.timestamp`, as the device sent it.
    pub at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallReason {
    pub reasons: Vec<String>,
    pub declaration_id: Option<String>,
    /// `thisOperator` (a declaration it serves), `anotherDeclaration`, `mdmCommand`, `user`
    /// (Settings, a notification, Install Tonight, the command line) or `device` (automatic
    /// updates, Setup Assistant).
    pub started_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecentReport {
    pub received_at: Timestamp,
    /// The report's `softwareupdate` items, as sent.
    pub softwareupdate: Option<Value>,
    pub os_version: Option<String>,
}

fn local(deadline: jiff::civil::DateTime) -> String {
    deadline.strftime("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Whose deadline an enforcement carries.
fn deadline_of(enforcement: &Enforcement) -> &'static str {
    match (&enforcement.source, &enforcement.handed) {
        (Source::Target(_), _) => "target",
        (Source::Policy(_), Some(handed)) if enforcement.deadline > handed.ring_deadline => {
            "device"
        }
        (Source::Policy(_), _) => "rollout",
    }
}

/// Who started an install, from `softwareupdate.install-reason`.
fn started_by(reasons: &[String], declaration: Option<&str>, ours: &[&str]) -> Option<String> {
    let has = |r: &str| reasons.iter().any(|x| x == r);
    let who = if has("declaration") {
        if declaration.is_some_and(|d| ours.contains(&d)) {
            "thisOperator"
        } else {
            "anotherDeclaration"
        }
    } else if has("mdm") {
        "mdmCommand"
    } else if [
        "system-settings",
        "install-tonight",
        "notification",
        "command-line",
    ]
    .iter()
    .any(|r| has(r))
    {
        "user"
    } else if has("auto-update") || has("setup-assistant") {
        "device"
    } else {
        return None;
    };
    Some(who.to_string())
}

fn report_view(
    items: &Map<String, Value>,
    record: Option<&DeviceRecord>,
    ours: &[&str],
) -> ReportView {
    let failure = at_path(items, "softwareupdate.failure-reason").map(|_| Failure {
        reason: text(items, "softwareupdate.failure-reason.reason"),
        count: at_path(items, "softwareupdate.failure-reason.count").and_then(Value::as_u64),
        at: text(items, "softwareupdate.failure-reason.timestamp"),
    });
    let reasons: Vec<String> = at_path(items, "softwareupdate.install-reason.reason")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .take(8)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let declaration_id = text(items, "softwareupdate.install-reason.declaration-id");
    let install_reason = (!reasons.is_empty()).then(|| InstallReason {
        started_by: started_by(&reasons, declaration_id.as_deref(), ours),
        reasons,
        declaration_id,
    });
    ReportView {
        install_state: text(items, "softwareupdate.install-state"),
        pending_version: text(items, "softwareupdate.pending-version.os-version"),
        pending_build: text(items, "softwareupdate.pending-version.build-version"),
        failure,
        install_reason,
        beta_enrollment: text(items, "softwareupdate.beta-enrollment"),
        rejected: record
            .map(|r| {
                r.status
                    .declarations
                    .iter()
                    .filter(|d| d.valid == "invalid")
                    .map(|d| NoteView {
                        reason: d.reasons.join(", "),
                        detail: d.identifier.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn recent(reports: &[(Timestamp, Vec<u8>)]) -> Vec<RecentReport> {
    reports
        .iter()
        .map(|(received_at, body)| {
            let parsed: Option<Map<String, Value>> = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("StatusItems").and_then(Value::as_object).cloned());
            RecentReport {
                received_at: *received_at,
                softwareupdate: parsed
                    .as_ref()
                    .and_then(|p| p.get("softwareupdate").cloned()),
                os_version: parsed
                    .as_ref()
                    .and_then(|p| text(p, "device.operating-system.version")),
            }
        })
        .collect()
}

/// The version, build and deadline in an enforcement declaration's body.
fn served_enforcement(identifier: &str, body: &[u8]) -> Option<ServedEnforcement> {
    let value: Value = serde_json::from_slice(body).ok()?;
    if value.get("Type").and_then(Value::as_str) != Some(ENFORCEMENT_TYPE) {
        return None;
    }
    let payload = value.get("Payload")?.as_object()?;
    let field = |key: &str| payload.get(key).and_then(Value::as_str).map(str::to_string);
    Some(ServedEnforcement {
        identifier: identifier.to_string(),
        version: field("TargetOSVersion"),
        build: field("TargetBuildVersion"),
        deadline: field("TargetLocalDateTime"),
        deadline_of: None,
        from: None,
    })
}

fn identity(device: &Device, facts: Provenance, mdm: Option<&MdmDevice>) -> Identity {
    Identity {
        serial_number: device.serial_number.clone(),
        platform: device.platform.as_str().to_string(),
        model: device.model.clone(),
        software_update_device_id: device.software_update_device_id.clone(),
        os_version: device.os_version.to_string(),
        build_version: device.build_version.as_ref().map(ToString::to_string),
        supervised: device.supervised,
        enrollment_type: serde_json::to_value(device.enrollment_type)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        apple_silicon: device.bootstrap_token.apple_silicon,
        bootstrap_token_escrowed: device.bootstrap_token.escrowed,
        labels: device.labels.clone(),
        facts,
        mdm_enrolled_since: mdm.and_then(|m| match m.enrollment {
            Enrollment::Enrolled { since } => Some(since),
            Enrollment::CheckedOut { .. } => None,
        }),
    }
}

/// A device the MDM says checked out (the pass leaves it out): what is known and why it gets
/// nothing. Only for a scope that sees everything.
pub fn checked_out(
    index: &DeviceIndex,
    enrollment_id: &str,
    at: Timestamp,
    live: &Live,
    now: Timestamp,
) -> DeviceView {
    DeviceView {
        kind: "Device".into(),
        enrollment_id: enrollment_id.to_string(),
        as_of: now,
        pass_at: index.pass.at,
        identity: None,
        state: None,
        last_report: live.record.as_ref().and_then(|r| r.last_report),
        assigned_at: live.record.as_ref().and_then(|r| r.assigned_at),
        stale: false,
        checked_out_at: Some(at),
        frozen: Frozen::default(),
        fleet_groups: Vec::new(),
        resources: Vec::new(),
        declarations: DeclarationsView {
            token: live.served.as_ref().map(|s| s.token.clone()),
            served: live
                .served
                .as_ref()
                .map(|s| s.members.clone())
                .unwrap_or_default(),
            ..DeclarationsView::default()
        },
        report: None,
        recent_reports: recent(&live.recent),
        explanation: vec![format!(
            "The MDM says this device checked out at {at} (mdm.CheckOut): it is not resolved, its declarations are withdrawn and it is not counted. It comes back when it enrolls again."
        )],
    }
}

/// The device at `position` of the index, as `scope` may see it: `None` when no resource the
/// scope sees applies to it.
pub fn explain(
    index: &DeviceIndex,
    position: usize,
    live: &Live,
    scope: &Scope,
    now: Timestamp,
) -> Option<DeviceView> {
    if !index.visible(position, scope) {
        return None;
    }
    let pass = &index.pass;
    let checked = &pass.checked;
    let device = &pass.devices[position];
    // Resolved again, alone, with the ledger the passes keep: the same rules and the same
    // handed-out deadlines give the decision the pass made (as of now).
    let plan = resolve::resolve_with(
        resolve::Input {
            groups: &checked.groups,
            policies: &checked.policies,
            targets: &checked.targets,
            devices: std::slice::from_ref(device),
            catalog: &pass.catalog,
            now,
        },
        &live.memory.ledger,
    );
    let plan = &plan;
    // One outcome per device given; none would be a resolver bug, answered as not found.
    let outcome = plan.devices.first()?;
    let id = device.enrollment_id.as_str();

    // Merged again from what each source says now, to tell where each fact came from.
    let seed = pass.seed.iter().find(|d| d.enrollment_id == id);
    let (merged, facts) = crate::pass::devices::explain(
        id,
        seed,
        pass.seed_at,
        live.mdm.as_ref(),
        live.record.as_ref(),
        pass.assume_supervised,
    )
    .unwrap_or_else(|| (device.clone(), Provenance::default()));

    let record = live.record.as_ref();
    let mut standings: Vec<(Source, Bucket, Option<&Enforcement>)> = Vec::new();
    each_source(plan, outcome, record, now, |source, state, enforcement| {
        if scope.sees(source_namespace(checked, source)) {
            standings.push((source, state, enforcement));
        }
    });
    let state = standings
        .iter()
        .map(|(_, s, _)| *s)
        .min_by_key(|s| urgency(*s));

    let suspended = |source: Source| match source {
        Source::Policy(p) => checked.policies[p].suspend,
        Source::Target(t) => checked.targets[t].suspend,
    };
    let resources: Vec<ResourceView> = standings
        .iter()
        .map(|(source, state, enforcement)| {
            let notes = outcome
                .notes
                .iter()
                .filter(|n| n.source == *source)
                .map(|n| NoteView {
                    reason: n.reason.as_str().to_string(),
                    detail: n.detail.clone(),
                })
                .collect();
            ResourceView {
                name: source_name(checked, *source),
                state: state.as_str().to_string(),
                decision: if enforcement.is_some() {
                    "enforce"
                } else {
                    "none"
                }
                .to_string(),
                notes,
                ring: enforcement.map(|e| e.ring),
                version: enforcement.map(|e| e.version.to_string()),
                build: enforcement.and_then(|e| e.build.as_ref().map(ToString::to_string)),
                deadline: enforcement.map(|e| local(e.deadline)),
                deadline_of: enforcement.map(|e| deadline_of(e).to_string()),
                ring_deadline: enforcement
                    .and_then(|e| e.handed.as_ref())
                    .map(|h| local(h.ring_deadline)),
                handed_at: enforcement
                    .and_then(|e| e.handed.as_ref())
                    .map(|h| h.handed_at),
                declaration: enforcement
                    .map(|e| plan.declarations[e.declaration as usize].identifier.clone()),
                suspended: suspended(*source),
            }
        })
        .collect();

    let mut suspended_by: Vec<String> = Vec::new();
    let fleet_groups: Vec<GroupView> = checked
        .groups
        .iter()
        .zip(&plan.members)
        .filter(|(group, members)| scope.sees(&group.key.namespace) && members.contains(&0))
        .map(|(group, _)| {
            if group.suspend {
                suspended_by.push(format!("FleetGroup {}", group.key));
            }
            GroupView {
                name: format!("FleetGroup {}", group.key),
                suspended: group.suspend,
                terms: explain_selection(group, device)
                    .into_iter()
                    .map(|t| TermView {
                        field: t.field.to_string(),
                        matched: t.matched,
                        detail: t.detail,
                    })
                    .collect(),
            }
        })
        .collect();
    suspended_by.extend(
        resources
            .iter()
            .filter(|r| r.suspended)
            .map(|r| r.name.clone()),
    );
    let orphan = live.memory.orphans.get(id);
    let frozen = Frozen {
        suspended_by,
        orphaned_by: orphan.map(|o| o.by.clone()),
        orphaned_since: orphan.map(|o| o.since),
    };

    // What it is served, and which of those the last pass planned (and from where).
    let planned: Vec<String> = outcome
        .declarations
        .iter()
        .map(|d| plan.declarations[*d as usize].identifier.clone())
        .collect();
    let served_members = live
        .served
        .as_ref()
        .map(|s| s.members.clone())
        .unwrap_or_default();
    let mut in_sync_planned = planned.clone();
    in_sync_planned.sort();
    let mut in_sync_served = served_members.clone();
    in_sync_served.sort();
    let enforcements: Vec<ServedEnforcement> = live
        .served
        .iter()
        .flat_map(|s| &s.configurations)
        .filter_map(|(identifier, body)| {
            let mut served = served_enforcement(identifier, body)?;
            if let Some(e) = outcome
                .enforcements
                .iter()
                .find(|e| plan.declarations[e.declaration as usize].identifier == *identifier)
                && scope.sees(source_namespace(checked, e.source))
            {
                served.deadline_of = Some(deadline_of(e).to_string());
                served.from = Some(source_name(checked, e.source));
            }
            Some(served)
        })
        .collect();
    let declarations = DeclarationsView {
        token: live.served.as_ref().map(|s| s.token.clone()),
        in_sync: in_sync_planned == in_sync_served,
        served: served_members,
        planned,
        enforcements,
    };

    let ours: Vec<&str> = declarations
        .served
        .iter()
        .chain(&declarations.planned)
        .map(String::as_str)
        .collect();
    let report = live
        .items
        .as_ref()
        .map(|items| report_view(items, record, &ours));
    let last_report = record.and_then(|r| r.last_report);
    let assigned_at = record.and_then(|r| r.assigned_at);
    let heard = last_report.or(assigned_at);
    let stale = heard.is_some_and(|t| now.as_second() - t.as_second() > STALE_AFTER_SECONDS);

    let mut view = DeviceView {
        kind: "Device".into(),
        enrollment_id: id.to_string(),
        as_of: now,
        pass_at: pass.at,
        identity: Some(identity(&merged, facts, live.mdm.as_ref())),
        state: state.map(|s| s.as_str().to_string()),
        last_report,
        assigned_at,
        stale,
        checked_out_at: None,
        frozen,
        fleet_groups,
        resources,
        declarations,
        report,
        recent_reports: recent(&live.recent),
        explanation: Vec::new(),
    };
    view.explanation = sentences(&view, &merged, now);
    Some(view)
}

/// "Why is this device not updated?", from the view.
fn sentences(view: &DeviceView, device: &Device, now: Timestamp) -> Vec<String> {
    let mut said = Vec::new();
    if view.resources.is_empty() {
        said.push(
            "No UpdatePolicy or EnforcementTarget applies to this device: no FleetGroup they use selects it, so it is asked to install nothing."
                .to_string(),
        );
    }
    for resource in &view.resources {
        let notes: Vec<String> = resource
            .notes
            .iter()
            .map(|n| {
                if n.detail.is_empty() {
                    n.reason.clone()
                } else {
                    format!("{} ({})", n.reason, n.detail)
                }
            })
            .collect();
        match (&resource.version, &resource.deadline) {
            (Some(version), Some(deadline)) => {
                let build = resource
                    .build
                    .as_ref()
                    .map(|b| format!(" ({b})"))
                    .unwrap_or_default();
                let whose = match resource.deadline_of.as_deref() {
                    Some("device") => format!(
                        "its own deadline: it joined the rollout late{}, so it got the lead time from then; the ring's deadline is {}",
                        resource
                            .handed_at
                            .map(|t| format!(" (handed out {t})"))
                            .unwrap_or_default(),
                        resource.ring_deadline.as_deref().unwrap_or("?")
                    ),
                    Some("rollout") => "the rollout's deadline for its ring".to_string(),
                    _ => "the target's deadline".to_string(),
                };
                let extra = if notes.is_empty() {
                    String::new()
                } else {
                    format!("; note: {}", notes.join("; "))
                };
                said.push(format!(
                    "{}: enforces {} {version}{build} by {deadline} device-local time ({whose}); it stands {}{extra}.",
                    resource.name, device.platform, resource.state
                ));
            }
            _ => said.push(format!(
                "{}: nothing to enforce ({}): {}.",
                resource.name,
                resource.state,
                if notes.is_empty() {
                    "no reason recorded".to_string()
                } else {
                    notes.join("; ")
                }
            )),
        }
    }
    if let Some(report) = &view.report {
        let compliant = view.state.as_deref() == Some("compliant");
        if let Some(failure) = &report.failure {
            let what = format!(
                "{}{}{}",
                failure.reason.as_deref().unwrap_or("no reason given"),
                failure
                    .count
                    .map(|n| format!(", {n} time(s)"))
                    .unwrap_or_default(),
                failure
                    .at
                    .as_deref()
                    .map(|t| format!(", last at {t}"))
                    .unwrap_or_default()
            );
            if compliant {
                said.push(format!(
                    "The device reports an earlier install failure ({what}), but it already runs {}, which meets what applies to it: nothing is failing now.",
                    device.os_version
                ));
            } else {
                said.push(format!("Installing fails on the device: {what}."));
            }
        }
        for rejected in &report.rejected {
            said.push(format!(
                "The device rejected the declaration {} ({}).",
                rejected.detail, rejected.reason
            ));
        }
        if let Some(reason) = &report.install_reason {
            let pending = report
                .pending_version
                .as_deref()
                .map(|v| format!(" of {v}"))
                .unwrap_or_default();
            let by = match reason.started_by.as_deref() {
                Some("thisOperator") => format!(
                    "by this operator's declaration {}",
                    reason.declaration_id.as_deref().unwrap_or("?")
                ),
                Some("anotherDeclaration") => format!(
                    "by a declaration this operator does not serve ({})",
                    reason
                        .declaration_id
                        .as_deref()
                        .unwrap_or("no identifier given")
                ),
                Some("mdmCommand") => "by an MDM command, not by this operator".to_string(),
                Some("user") => format!(
                    "by the device's user ({}), not by an enforcement",
                    reason.reasons.join(", ")
                ),
                Some("device") => format!(
                    "by the device itself ({}), not by an enforcement",
                    reason.reasons.join(", ")
                ),
                _ => format!("for: {}", reason.reasons.join(", ")),
            };
            said.push(format!(
                "The update{pending} the device reports ({}) was started {by}.",
                report
                    .install_state
                    .as_deref()
                    .unwrap_or("no install state")
            ));
        }
    } else if !view.resources.is_empty() {
        said.push(
            "The device has never reported its status over DDM: what it runs comes from the inventory or the MDM."
                .to_string(),
        );
    }
    if view.stale
        && let Some(heard) = view.last_report.or(view.assigned_at)
    {
        said.push(format!(
            "No report for {} h (stale after {} h): the device may be off or unreachable; its state is as last reported.",
            (now.as_second() - heard.as_second()) / 3600,
            STALE_AFTER_SECONDS / 3600
        ));
    }
    if view.state.as_deref() == Some("pending")
        && let Some(assigned) = view.assigned_at
    {
        said.push(format!(
            "Its declarations changed at {assigned} and it has not reported since: it has not fetched them yet (a sync command or its next check-in brings them)."
        ));
    }
    for by in &view.frozen.suspended_by {
        said.push(format!(
            "{by} is suspended: the device keeps the declarations it has until it is resumed."
        ));
    }
    if let Some(by) = &view.frozen.orphaned_by {
        said.push(format!(
            "{by} was deleted with deletionPolicy Orphan: the device keeps what it had, frozen, until another resource takes it."
        ));
    }
    let frozen = !view.frozen.suspended_by.is_empty() || view.frozen.orphaned_by.is_some();
    if !view.declarations.in_sync && !frozen {
        said.push(
            "What the device is served differs from what the last pass decided: the next pass writes it (see the Synced condition if it does not)."
                .to_string(),
        );
    }
    said
}
