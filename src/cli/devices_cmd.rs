//! `devices show ID` and `devices list`: the per-device view of a running operator, read from its
//! admin API (`/api/v1/devices`), as a table for people or JSON (`-o json`).

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, Output, runtime};
use crate::view::ListItem;
use crate::view::explain::DeviceView;

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// One device explained: who it is and where each fact came from, the groups that select
    /// it, what every resource decides and why, what it is served and what it last reported.
    Show(ShowArgs),
    /// Devices with their states, filtered, one page at a time (or all with --all).
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The operator's admin address (`--admin-listen`; in a cluster, the
    /// `ddm-update-operator-metrics` Service, e.g. through `kubectl port-forward`).
    #[arg(
        long,
        env = "DDM_OPERATOR_SERVER",
        default_value = "http://127.0.0.1:9090"
    )]
    server: String,
    /// File holding the bearer token: the standalone `--admin-token-file`, or a Kubernetes token
    /// (`kubectl create token ...`) allowed to get `updatepolicies/status`.
    #[arg(long, env = "DDM_OPERATOR_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Enrollment id (UDID) or serial number.
    id: String,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only devices in this state against some resource (or against --source): compliant,
    /// pending, downloading, prepared, installing, failed, stale, notApplicable.
    #[arg(long)]
    state: Option<String>,
    /// Only devices a resource governs: `UpdatePolicy namespace/name` or
    /// `EnforcementTarget namespace/name`.
    #[arg(long)]
    source: Option<String>,
    /// Only this platform (macOS, iOS, iPadOS, tvOS, visionOS, watchOS).
    #[arg(long)]
    platform: Option<String>,
    /// Devices per page (1–1000).
    #[arg(long)]
    limit: Option<usize>,
    /// Where the previous page ended (its `continue` token).
    #[arg(long = "continue")]
    after: Option<String>,
    /// Follow every page.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(command: DevicesCommand) -> Result<String, CliError> {
    match command {
        DevicesCommand::Show(args) => show(args),
        DevicesCommand::List(args) => list(args),
    }
}

struct Api {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(server: &ServerArgs) -> Result<Api, CliError> {
        let token = match &server.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| CliError::Unreadable(format!("{}: {e}", path.display())))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| CliError::Unreadable(format!("cannot build an HTTP client: {e}")))?;
        Ok(Api {
            client,
            base: server.server.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// GETs `path` with `query`; a refusal is an error carrying the server's message.
    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Vec<u8>, CliError> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.base), query)
            .map_err(|e| CliError::Unreadable(format!("--server {}: {e}", self.base)))?;
        let mut request = self.client.get(url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| CliError::Unreadable(format!("{url}: {e}")))?;
        let code = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| CliError::Unreadable(format!("{url}: {e}")))?;
        if code.is_success() {
            return Ok(body.to_vec());
        }
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        Err(CliError::Unreadable(format!(
            "{url}: {} {}",
            code.as_u16(),
            message
        )))
    }
}

fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn show(args: ShowArgs) -> Result<String, CliError> {
    let api = Api::new(&args.server)?;
    let body = runtime()?
        .block_on(api.get(&format!("/api/v1/devices/{}", path_segment(&args.id)), &[]))?;
    let view: DeviceView = serde_json::from_slice(&body)
        .map_err(|e| CliError::Unreadable(format!("the server's answer is not a device: {e}")))?;
    match args.server.output {
        Output::Json => super::to_json(&view),
        Output::Table => Ok(show_table(&view)),
    }
}

#[derive(serde::Deserialize)]
struct Page {
    items: Vec<ListItem>,
    #[serde(rename = "continue")]
    next: Option<String>,
}

fn list(args: ListArgs) -> Result<String, CliError> {
    let api = Api::new(&args.server)?;
    let mut query: Vec<(&str, String)> = Vec::new();
    for (name, value) in [
        ("state", &args.state),
        ("source", &args.source),
        ("platform", &args.platform),
    ] {
        if let Some(value) = value {
            query.push((name, value.clone()));
        }
    }
    if let Some(limit) = args.limit {
        query.push(("limit", limit.to_string()));
    }
    let runtime = runtime()?;
    let mut items = Vec::new();
    let mut after = args.after.clone();
    let next = loop {
        let mut page_query = query.clone();
        if let Some(after) = &after {
            page_query.push(("continue", after.clone()));
        }
        let body = runtime.block_on(api.get("/api/v1/devices", &page_query))?;
        let page: Page = serde_json::from_slice(&body).map_err(|e| {
            CliError::Unreadable(format!("the server's answer is not a device list: {e}"))
        })?;
        items.extend(page.items);
        match page.next {
            Some(next) if args.all => after = Some(next),
            next => break next,
        }
    };
    match args.server.output {
        Output::Json => super::to_json(&serde_json::json!({"items": items, "continue": next})),
        Output::Table => Ok(list_table(&items, next.as_deref())),
    }
}

fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn list_table(items: &[ListItem], next: Option<&str>) -> String {
    let mut rows = vec![
        [
            "ENROLLMENT ID",
            "SERIAL",
            "PLATFORM",
            "MODEL",
            "OS",
            "STATE",
            "RESOURCES",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for item in items {
        rows.push(vec![
            item.enrollment_id.clone(),
            item.serial_number.clone().unwrap_or_else(|| "-".into()),
            item.platform.clone(),
            item.model.clone(),
            item.os_version.clone(),
            item.state.clone().unwrap_or_else(|| "-".into()),
            item.sources
                .iter()
                .map(|s| format!("{}={}", s.name, s.state))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    let mut out = table(&rows);
    if let Some(next) = next {
        let _ = writeln!(out, "more: --continue {next}");
    }
    out
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_string()
}

fn show_table(view: &DeviceView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Device {}", view.enrollment_id);
    let mut facts: Vec<Vec<String>> = Vec::new();
    if let Some(identity) = &view.identity {
        let said = |s: &Option<crate::pass::devices::Said>| {
            s.map(|s| format!("from {} {}", s.source.as_str(), s.at))
                .unwrap_or_else(|| "-".into())
        };
        let f = &identity.facts;
        for (name, value, from) in [
            (
                "serial number",
                or_dash(identity.serial_number.as_deref()),
                said(&f.serial_number),
            ),
            ("platform", identity.platform.clone(), said(&f.platform)),
            ("model", identity.model.clone(), said(&f.model)),
            (
                "board id",
                or_dash(identity.software_update_device_id.as_deref()),
                said(&f.software_update_device_id),
            ),
            (
                "OS",
                format!(
                    "{}{}",
                    identity.os_version,
                    identity
                        .build_version
                        .as_ref()
                        .map(|b| format!(" ({b})"))
                        .unwrap_or_default()
                ),
                said(&f.os_version),
            ),
            (
                "supervised",
                identity.supervised.to_string(),
                f.supervised
                    .map_or("no source: --assume-supervised".into(), |s| said(&Some(s))),
            ),
            (
                "enrollment",
                identity.enrollment_type.clone(),
                f.enrollment_type
                    .map_or("no source: the default".into(), |s| said(&Some(s))),
            ),
        ] {
            facts.push(vec![format!("  {name}"), value, from]);
        }
    }
    facts.push(vec![
        "  state".into(),
        or_dash(view.state.as_deref()),
        String::new(),
    ]);
    facts.push(vec![
        "  last report".into(),
        view.last_report.map_or("never".into(), |t| t.to_string()),
        if view.stale {
            "STALE".into()
        } else {
            String::new()
        },
    ]);
    out.push_str(&table(&facts));
    if !view.fleet_groups.is_empty() {
        out.push_str("\nSelected by\n");
        for group in &view.fleet_groups {
            let _ = writeln!(
                out,
                "  {}{}",
                group.name,
                if group.suspended { " (suspended)" } else { "" }
            );
            for term in &group.terms {
                let _ = writeln!(out, "    {}: {}", term.field, term.detail);
            }
        }
    }
    if !view.resources.is_empty() {
        out.push_str("\nResources\n");
        let mut rows = vec![
            [
                "  RESOURCE",
                "STATE",
                "DECISION",
                "VERSION",
                "DEADLINE",
                "WHOSE",
                "REASONS",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for r in &view.resources {
            rows.push(vec![
                format!("  {}", r.name),
                r.state.clone(),
                r.decision.clone(),
                format!(
                    "{}{}",
                    or_dash(r.version.as_deref()),
                    r.build
                        .as_ref()
                        .map(|b| format!(" ({b})"))
                        .unwrap_or_default()
                ),
                or_dash(r.deadline.as_deref()),
                or_dash(r.deadline_of.as_deref()),
                r.notes
                    .iter()
                    .map(|n| n.reason.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
        }
        out.push_str(&table(&rows));
    }
    let declarations = &view.declarations;
    let _ = writeln!(
        out,
        "\nDeclarations served: {}{}",
        declarations.served.len(),
        if declarations.in_sync {
            ""
        } else {
            " (differs from the last pass's plan)"
        }
    );
    for e in &declarations.enforcements {
        let _ = writeln!(
            out,
            "  {}: {} {} by {} ({})",
            e.identifier,
            or_dash(e.version.as_deref()),
            or_dash(e.build.as_deref()),
            or_dash(e.deadline.as_deref()),
            or_dash(e.deadline_of.as_deref())
        );
    }
    if let Some(report) = &view.report {
        out.push_str("\nLast reported\n");
        let mut rows = vec![
            vec![
                "  install state".into(),
                or_dash(report.install_state.as_deref()),
            ],
            vec![
                "  pending".into(),
                format!(
                    "{} {}",
                    or_dash(report.pending_version.as_deref()),
                    report.pending_build.as_deref().unwrap_or("")
                ),
            ],
        ];
        if let Some(failure) = &report.failure {
            rows.push(vec![
                "  failure".into(),
                format!(
                    "{} ({} time(s), at {})",
                    or_dash(failure.reason.as_deref()),
                    failure.count.map_or("?".into(), |c| c.to_string()),
                    or_dash(failure.at.as_deref())
                ),
            ]);
        }
        if let Some(reason) = &report.install_reason {
            rows.push(vec![
                "  install reason".into(),
                format!(
                    "{} (started by {})",
                    reason.reasons.join(", "),
                    or_dash(reason.started_by.as_deref())
                ),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out.push_str("\nWhy\n");
    for sentence in &view.explanation {
        let _ = writeln!(out, "  - {sentence}");
    }
    out
}
