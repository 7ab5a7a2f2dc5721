//! `ddm-update-operator plan`: what the resources in Git would do to the fleet, before anything
//! is applied — as JSON for machines, a table for people, Markdown for pull-request comments.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use jiff::Timestamp;
use serde::Serialize;

use super::{CliError, load_catalog, parse_at};
use crate::api::EnforcementTarget;
use crate::api::validate::{Checked, check_all};
use crate::declarations::Declaration;
use crate::inventory::Device;
use crate::manifests::{self, LoadError};
use crate::resolve::ledger::LedgerDocument;
use crate::resolve::{self, Input, Ledger, Plan, Reason, Source, target_object};

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum PlanOutput {
    #[default]
    Table,
    Json,
    Markdown,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Manifest files or folders (updates.ddm.dev resources; other kinds are skipped).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// The device inventory (YAML or JSON list of devices).
    #[arg(long)]
    inventory: PathBuf,
    /// A pmv catalog file, a folder holding one (the last `*.json` by name), or an http(s) URL.
    #[arg(long)]
    catalog: String,
    /// A date (2026-08-23, meaning 00:00 UTC) or an RFC 3339 time; default now.
    #[arg(long, value_parser = parse_at)]
    at: Option<Timestamp>,
    /// The rollout ledger the operator exports (`GET /api/v1/rollouts`), a file or an http(s)
    /// URL: deadlines already handed out are shown as devices have them. Without it every
    /// deadline is shown as if handed out now.
    #[arg(long)]
    ledger: Option<String>,
    /// File with the bearer token an http(s) `--ledger` is fetched with: the operator's admin
    /// API wants one (standalone: its `--admin-token-file`; Kubernetes mode: a token of an
    /// account allowed `get` on `updatepolicies/status`, such as `kubectl create token`).
    #[arg(long, value_name = "FILE", requires = "ledger")]
    ledger_token_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    output: PlanOutput,
}

/// The largest ledger `--ledger` reads (about a million devices).
const MAX_LEDGER_BYTES: usize = 512 << 20;

/// `--ledger`: the exported ledger, with the rows it could not read named as warnings.
fn load_ledger(
    source: &str,
    token_file: Option<&std::path::Path>,
) -> Result<(Ledger, Vec<String>), CliError> {
    let token = token_file
        .map(|path| {
            std::fs::read_to_string(path)
                .map(|t| t.trim().to_string())
                .map_err(|e| CliError::Unreadable(format!("{}: {e}", path.display())))
        })
        .transpose()?;
    let bytes = if source.starts_with("https://") || source.starts_with("http://") {
        let fetch = async {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .map_err(|e| e.to_string())?;
            let mut request = client.get(source);
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let mut response = request
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| e.to_string())?;
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
                if body.len() + chunk.len() > MAX_LEDGER_BYTES {
                    return Err(format!("larger than {} MiB", MAX_LEDGER_BYTES >> 20));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        };
        super::runtime()?
            .block_on(fetch)
            .map_err(|e| CliError::Unreadable(format!("{source}: {e}")))?
    } else {
        std::fs::read(source).map_err(|e| CliError::Unreadable(format!("{source}: {e}")))?
    };
    let document: LedgerDocument = serde_json::from_slice(&bytes)
        .map_err(|e| CliError::Invalid(vec![format!("{source}: not a rollout ledger: {e}")]))?;
    let (ledger, problems) = Ledger::from_document(&document);
    if document.kind != crate::resolve::ledger::LEDGER_KIND {
        return Err(CliError::Invalid(
            problems
                .into_iter()
                .map(|p| format!("{source}: {p}"))
                .collect(),
        ));
    }
    Ok((
        ledger,
        problems
            .into_iter()
            .map(|p| format!("--ledger {source}: {p}"))
            .collect(),
    ))
}

pub fn run(args: PlanArgs) -> Result<String, CliError> {
    let manifests = manifests::load(&args.files).map_err(|e| match e {
        LoadError::Unreadable(why) => CliError::Unreadable(why),
        LoadError::Invalid(problems) => CliError::Invalid(problems),
    })?;
    for notice in &manifests.notices {
        eprintln!("notice: {notice}");
    }
    let checked = check_all(
        &manifests.fleet_groups,
        &manifests.policies,
        &manifests.targets,
    )
    .map_err(CliError::Invalid)?;
    let inventory_text = std::fs::read_to_string(&args.inventory)
        .map_err(|e| CliError::Unreadable(format!("{}: {e}", args.inventory.display())))?;
    let devices = crate::inventory::parse(&inventory_text).map_err(|problems| {
        CliError::Invalid(
            problems
                .into_iter()
                .map(|p| format!("{}: {p}", args.inventory.display()))
                .collect(),
        )
    })?;
    let catalog = load_catalog(&catalog_file(&args.catalog)?, None)?;
    let now = args.at.unwrap_or_else(Timestamp::now);
    let (ledger, ledger_problems) = match &args.ledger {
        Some(source) => load_ledger(source, args.ledger_token_file.as_deref())?,
        None => (Ledger::default(), Vec::new()),
    };
    let mut plan = resolve::resolve_with(
        Input {
            groups: &checked.groups,
            policies: &checked.policies,
            targets: &checked.targets,
            devices: &devices,
            catalog: &catalog,
            now,
        },
        &ledger,
    );
    plan.warnings.extend(ledger_problems);
    let deadlines = match &args.ledger {
        Some(source) => format!(
            "deadlines handed out before are as the ledger {source} has them ({} device entries); the rest as if handed out at {now}",
            ledger.devices.values().map(|r| r.len()).sum::<usize>()
        ),
        None => format!(
            "every deadline as if handed out at {now} (no --ledger); the operator fixes each deadline once it hands it out"
        ),
    };
    let report = Report::new(&checked, &devices, &plan, deadlines);
    match args.output {
        // Streamed: at 100,000 devices the document is hundreds of megabytes.
        PlanOutput::Json => {
            use std::io::Write;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let written = serde_json::to_writer_pretty(&mut out, &report)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"))
                .and_then(|()| out.flush());
            match written {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(CliError::Unreadable(format!("standard output: {e}")))
                }
                _ => Ok(String::new()),
            }
        }
        PlanOutput::Table => Ok(report.table()),
        PlanOutput::Markdown => Ok(report.markdown(&checked, &devices, &plan)),
    }
}

/// A folder stands for the last `*.json` in it by name (snapshots are named by date).
fn catalog_file(source: &str) -> Result<String, CliError> {
    let path = std::path::Path::new(source);
    if !path.is_dir() {
        return Ok(source.to_string());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| CliError::Unreadable(format!("{source}: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("json"))
        .collect();
    files.sort();
    files
        .pop()
        .map(|p| p.display().to_string())
        .ok_or_else(|| CliError::Unreadable(format!("{source}: no .json catalog in this folder")))
}

fn source_name(checked: &Checked, source: Source) -> String {
    match source {
        Source::Policy(p) => format!("UpdatePolicy {}", checked.policies[p].key),
        Source::Target(t) => format!("EnforcementTarget {}", checked.targets[t].key),
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceReason {
    reason: Reason,
    source: String,
    message: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceReport<'a> {
    enrollment_id: &'a str,
    enforcements: Vec<DeviceEnforcement>,
    declarations: Vec<&'a Declaration>,
    reasons: Vec<DeviceReason>,
}

/// One enforcement a device gets and where its deadline comes from.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceEnforcement {
    source: String,
    version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    build: Option<String>,
    /// `TargetLocalDateTime`.
    deadline: String,
    /// For a policy: the ring's deadline (the device's own is later when it joined late).
    #[serde(skip_serializing_if = "Option::is_none")]
    ring_deadline: Option<String>,
    /// For a policy: when the device was handed this deadline (the plan's time: not yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    handed_at: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    /// Where deadlines come from: the ledger, or as if handed out now.
    deadlines: String,
    devices: usize,
    devices_with_enforcement: usize,
    distinct_declarations: usize,
    declarations_by_type: BTreeMap<&'static str, usize>,
    reasons: BTreeMap<Reason, usize>,
    group_members: BTreeMap<String, usize>,
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report<'a> {
    enforcement_targets: Vec<EnforcementTarget>,
    devices: Vec<DeviceReport<'a>>,
    summary: Summary,
}

impl<'a> Report<'a> {
    fn new(checked: &Checked, devices: &'a [Device], plan: &'a Plan, deadlines: String) -> Self {
        let enforcement_targets = plan
            .generated
            .iter()
            .map(|t| target_object(&checked.policies[t.policy], t))
            .collect();
        let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
        let device_reports = devices
            .iter()
            .zip(&plan.devices)
            .map(|(device, outcome)| DeviceReport {
                enrollment_id: &device.enrollment_id,
                enforcements: outcome
                    .enforcements
                    .iter()
                    .map(|e| DeviceEnforcement {
                        source: source_name(checked, e.source),
                        version: e.version.to_string(),
                        build: e.build.as_ref().map(ToString::to_string),
                        deadline: resolve::ledger::format_local(e.deadline),
                        ring_deadline: e
                            .handed
                            .as_ref()
                            .map(|h| resolve::ledger::format_local(h.ring_deadline)),
                        handed_at: e.handed.as_ref().map(|h| h.handed_at.to_string()),
                    })
                    .collect(),
                declarations: outcome
                    .declarations
                    .iter()
                    .map(|i| &plan.declarations[*i as usize])
                    .collect(),
                reasons: outcome
                    .notes
                    .iter()
                    .map(|note| {
                        *reasons.entry(note.reason).or_default() += 1;
                        DeviceReason {
                            reason: note.reason,
                            source: source_name(checked, note.source),
                            message: note.detail.clone(),
                        }
                    })
                    .collect(),
            })
            .collect();
        let mut declarations_by_type = BTreeMap::new();
        for declaration in &plan.declarations {
            *declarations_by_type
                .entry(declaration.declaration_type)
                .or_default() += 1;
        }
        Report {
            enforcement_targets,
            devices: device_reports,
            summary: Summary {
                deadlines,
                devices: devices.len(),
                devices_with_enforcement: plan
                    .devices
                    .iter()
                    .filter(|d| !d.enforcements.is_empty())
                    .count(),
                distinct_declarations: plan.declarations.len(),
                declarations_by_type,
                reasons,
                group_members: checked
                    .groups
                    .iter()
                    .zip(&plan.members)
                    .map(|(g, m)| (g.key.to_string(), m.len()))
                    .collect(),
                warnings: plan.warnings.clone(),
            },
        }
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let rows: Vec<Vec<String>> = self
            .enforcement_targets
            .iter()
            .map(|et| {
                let generated_by = et
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(crate::api::POLICY_LABEL))
                    .cloned()
                    .unwrap_or_default();
                vec![
                    et.metadata.name.clone().unwrap_or_default(),
                    generated_by,
                    et.spec.platform.to_string(),
                    et.spec.target_os_version.clone(),
                    et.spec.target_local_date_time.clone(),
                    et.spec.fleet_groups.join(","),
                ]
            })
            .collect();
        out.push_str(&super::catalog_cmd::table(
            &[
                "ENFORCEMENT TARGET",
                "POLICY",
                "PLATFORM",
                "VERSION",
                "DEADLINE",
                "GROUPS",
            ],
            &rows,
        ));
        let s = &self.summary;
        let _ = writeln!(
            out,
            "\n{} devices, {} with an enforcement; {} distinct declarations",
            s.devices, s.devices_with_enforcement, s.distinct_declarations
        );
        for (reason, count) in &s.reasons {
            let _ = writeln!(out, "  {reason}: {count}");
        }
        let _ = writeln!(out, "{}", s.deadlines);
        for warning in &s.warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
        out
    }

    /// A pull-request comment: per source, platform and model, current → target, deadline,
    /// device count; then the reasons.
    fn markdown(&self, checked: &Checked, devices: &[Device], plan: &Plan) -> String {
        type Row = (String, String, String, String, String, String);
        let mut rows: BTreeMap<Row, usize> = BTreeMap::new();
        for (device, outcome) in devices.iter().zip(&plan.devices) {
            for e in &outcome.enforcements {
                let target = match &e.build {
                    Some(build) => format!("{} ({build})", e.version),
                    None => e.version.to_string(),
                };
                let key = (
                    source_name(checked, e.source),
                    device.platform.to_string(),
                    device.model.clone(),
                    device.os_version.to_string(),
                    target,
                    e.deadline.strftime("%Y-%m-%d %H:%M").to_string(),
                );
                *rows.entry(key).or_default() += 1;
            }
        }
        let s = &self.summary;
        let mut out = String::from("### ddm-update-operator plan\n\n");
        let _ = writeln!(
            out,
            "**{}** devices, **{}** get an enforcement, **{}** distinct declarations.\n",
            s.devices, s.devices_with_enforcement, s.distinct_declarations
        );
        if !self.enforcement_targets.is_empty() {
            out.push_str("| EnforcementTarget | Platform | Version | Deadline (device local) |\n|---|---|---|---|\n");
            for et in &self.enforcement_targets {
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {} | {} |",
                    et.metadata.name.as_deref().unwrap_or_default(),
                    et.spec.platform,
                    et.spec.target_os_version,
                    et.spec.target_local_date_time
                );
            }
            out.push('\n');
        }
        if !rows.is_empty() {
            out.push_str("| Source | Platform | Model | Current → Target | Deadline | Devices |\n|---|---|---|---|---|---|\n");
            for ((source, platform, model, current, target, deadline), count) in &rows {
                let _ = writeln!(
                    out,
                    "| {source} | {platform} | `{model}` | {current} → {target} | {deadline} | {count} |"
                );
            }
            out.push('\n');
        }
        if !s.reasons.is_empty() {
            out.push_str("| Reason | Devices |\n|---|---|\n");
            for (reason, count) in &s.reasons {
                let _ = writeln!(out, "| `{reason}` | {count} |");
            }
            out.push('\n');
        }
        for warning in &s.warnings {
            let _ = writeln!(out, "> ⚠️ {warning}");
        }
        out
    }
}
