//! `ddm-update-operator catalog fetch | show | resolve`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use jiff::Timestamp;
use jiff::civil::Date;
use serde::Serialize;

use super::{CliError, Output, fetch_config, load_catalog, parse_at, runtime, to_json, utc_date};
use crate::catalog::fetch::{DEFAULT_URL, Fetched, Fetcher};
use crate::catalog::{
    AssetSet, Build, Catalog, Choice, DeviceOs, OsVersion, Platform, PmvDocument, Query, Release,
    Strategy, guard,
};

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Download the catalog, check it, and write it to a file (or standard output).
    Fetch(FetchArgs),
    /// List the releases in a catalog.
    Show(ShowArgs),
    /// Which release a device gets under a strategy, and what else it could install.
    Resolve(ResolveArgs),
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
    /// Where to write the catalog. An existing file there is kept when the new answer looks
    /// wrong (empty, or a platform's entry count collapsing).
    #[arg(long)]
    out: Option<PathBuf>,
    /// PEM bundle of the only roots to trust (default: the embedded Apple Root CA).
    #[arg(long, value_name = "PEM")]
    trusted_roots: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A pmv JSON file (or SOFA's cache file), or an http(s) URL.
    #[arg(long)]
    catalog: String,
    /// Only releases for this platform (iOS, iPadOS, macOS, tvOS, watchOS, visionOS, audioOS).
    #[arg(long)]
    platform: Option<Platform>,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    #[arg(long, value_name = "PEM", hide = true)]
    trusted_roots: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// A pmv JSON file (or SOFA's cache file), or an http(s) URL.
    #[arg(long)]
    catalog: String,
    /// Software-update device id: a board id such as J314sAP for Macs, a product type such as
    /// iPhone15,2 otherwise.
    #[arg(long)]
    device_id: String,
    /// The version the device runs, such as 17.5.1.
    #[arg(long)]
    os_version: OsVersion,
    /// The build the device runs, such as 21F90.
    #[arg(long)]
    build: Option<String>,
    /// The supplemental extra the device runs, such as "(a)".
    #[arg(long)]
    supplemental_extra: Option<String>,
    /// latest, latest-minor, pinned:X[.Y[.Z]] or major-behind:N.
    #[arg(long, default_value = "latest")]
    strategy: Strategy,
    #[arg(long, value_enum, default_value_t)]
    asset_set: AssetSet,
    /// Also offer Rapid Security Responses and Background Security Improvements.
    #[arg(long)]
    security_improvements: bool,
    /// A date (2026-08-23, meaning 00:00 UTC) or an RFC 3339 time; default now.
    #[arg(long, value_parser = parse_at)]
    at: Option<Timestamp>,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    #[arg(long, value_name = "PEM", hide = true)]
    trusted_roots: Option<PathBuf>,
}

pub fn run(command: CatalogCommand) -> Result<String, CliError> {
    match command {
        CatalogCommand::Fetch(args) => fetch(args),
        CatalogCommand::Show(args) => show(args),
        CatalogCommand::Resolve(args) => resolve(args),
    }
}

fn fetch(args: FetchArgs) -> Result<String, CliError> {
    let fetcher = Fetcher::new(fetch_config(&args.url, args.trusted_roots.as_ref())?)
        .map_err(|e| CliError::Unreadable(e.to_string()))?;
    let bytes = match runtime()?.block_on(fetcher.get(None)) {
        Ok(Fetched::Body { bytes, .. }) => bytes,
        Ok(Fetched::NotModified) => {
            return Err(CliError::Unreadable(format!(
                "{}: unexpected 304",
                args.url
            )));
        }
        Err(e) => return Err(CliError::Unreadable(e.to_string())),
    };
    let invalid = |why: String| CliError::Invalid(vec![format!("{}: {why}", args.url)]);
    let document = PmvDocument::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    let previous = args
        .out
        .as_ref()
        .and_then(|path| std::fs::read(path).ok())
        .and_then(|bytes| PmvDocument::from_slice(&bytes).ok());
    match &previous {
        Some(previous) => guard::check_replacement(previous, &document),
        None => guard::check_not_empty(&document),
    }
    .map_err(|e| invalid(format!("refused: {e}; nothing was written")))?;

    let summary = document
        .entry_counts()
        .iter()
        .map(|(set, platform, n)| format!("{set}.{platform}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    match &args.out {
        Some(path) => {
            write_atomically(path, &bytes)?;
            eprintln!(
                "wrote {} ({} bytes): {summary}",
                path.display(),
                bytes.len()
            );
            Ok(String::new())
        }
        None => {
            eprintln!("{summary}");
            String::from_utf8(bytes)
                .map_err(|_| CliError::Invalid(vec![format!("{}: not UTF-8", args.url)]))
        }
    }
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<(), CliError> {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, bytes)
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(|e| CliError::Unreadable(format!("{}: {e}", path.display())))
}

/// A release as the CLI prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ReleaseView {
    version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_extra: Option<String>,
    build: Option<String>,
    posting_date: Date,
    expiration_date: Option<Date>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    two_step: bool,
}

impl ReleaseView {
    fn new(choice: &Choice<'_>) -> Self {
        let release = choice.release;
        ReleaseView {
            version: release.version.numeric(),
            version_extra: release.version.extra().map(str::to_string),
            build: release.build.as_ref().map(ToString::to_string),
            posting_date: release.posting_date,
            expiration_date: choice.expires,
            two_step: choice.two_step,
        }
    }

    fn label(&self) -> String {
        let mut label = self.version.clone();
        if let Some(extra) = &self.version_extra {
            label.push(' ');
            label.push_str(extra);
        }
        if let Some(build) = &self.build {
            label.push_str(&format!(" ({build})"));
        }
        label
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Resolution {
    target: Option<ReleaseView>,
    candidates: Vec<ReleaseView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

fn resolve(args: ResolveArgs) -> Result<String, CliError> {
    let catalog = load_catalog(&args.catalog, args.trusted_roots.as_ref())?;
    let version = OsVersion::with_extra(
        &args.os_version.to_string(),
        args.supplemental_extra.as_deref(),
    )
    .map_err(|e| CliError::Unreadable(e.to_string()))?;
    let build = args.build.as_deref().map(Build::new);
    let device = DeviceOs {
        device_id: args.device_id.trim(),
        version: &version,
        build: build.as_ref(),
    };
    let query = Query {
        strategy: args.strategy,
        asset_set: args.asset_set,
        security_improvements: args.security_improvements,
        on: utc_date(args.at.unwrap_or_else(Timestamp::now)),
    };
    let resolution = resolution(&catalog, device, &query);
    match args.output {
        Output::Json => to_json(&resolution),
        Output::Table => {
            let mut out = match (&resolution.target, resolution.reason) {
                (Some(target), _) => {
                    format!(
                        "target: {}{} posted {} expires {}\n",
                        target.label(),
                        if target.two_step {
                            " [two-step: base release first]"
                        } else {
                            ""
                        },
                        target.posting_date,
                        target
                            .expiration_date
                            .map_or("never".to_string(), |d| d.to_string())
                    )
                }
                (None, reason) => format!("target: none ({})\n", reason.unwrap_or("unknown")),
            };
            let rows: Vec<Vec<String>> = resolution
                .candidates
                .iter()
                .map(|c| {
                    vec![
                        c.label(),
                        c.posting_date.to_string(),
                        c.expiration_date
                            .map_or("never".to_string(), |d| d.to_string()),
                        if c.two_step { "two-step" } else { "" }.to_string(),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                out.push('\n');
                out.push_str(&table(&["CANDIDATE", "POSTED", "EXPIRES", ""], &rows));
            }
            Ok(out)
        }
    }
}

fn resolution(catalog: &Catalog, device: DeviceOs<'_>, query: &Query) -> Resolution {
    let answer = catalog.resolve(device, query);
    Resolution {
        target: answer.as_ref().ok().map(ReleaseView::new),
        candidates: catalog
            .candidates(device, query)
            .iter()
            .map(ReleaseView::new)
            .collect(),
        reason: answer.err().map(|r| r.as_str()),
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ShownRelease<'a> {
    set: &'static str,
    platforms: Vec<Platform>,
    version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_extra: Option<&'a str>,
    build: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prerequisite_build: Option<&'a str>,
    posting_date: Date,
    expiration_date: Option<Date>,
    supported_devices: Vec<&'a str>,
}

fn show(args: ShowArgs) -> Result<String, CliError> {
    let catalog = load_catalog(&args.catalog, args.trusted_roots.as_ref())?;
    let sets: [(&'static str, &[Release]); 3] = [
        ("AssetSets", catalog.releases(AssetSet::Mdm)),
        ("PublicAssetSets", catalog.releases(AssetSet::Public)),
        ("SecurityImprovements", catalog.security_improvements()),
    ];
    let mut shown = Vec::new();
    for (set, releases) in sets {
        for release in releases {
            let devices: Vec<&str> = release
                .supported_devices
                .iter()
                .map(|d| &**d)
                .filter(|d| {
                    args.platform
                        .is_none_or(|p| Platform::of_device(release.key, d) == Some(p))
                })
                .collect();
            if devices.is_empty() {
                continue;
            }
            shown.push(ShownRelease {
                set,
                platforms: release.platforms(),
                version: release.version.numeric(),
                version_extra: release.version.extra(),
                build: release.build.as_ref().map(Build::as_str),
                prerequisite_build: release.prerequisite_build.as_ref().map(Build::as_str),
                posting_date: release.posting_date,
                expiration_date: release.expiration_date,
                supported_devices: devices,
            });
        }
    }
    match args.output {
        Output::Json => to_json(&shown),
        Output::Table => {
            let rows: Vec<Vec<String>> = shown
                .iter()
                .map(|r| {
                    let platforms: Vec<&str> = r.platforms.iter().map(|p| p.as_str()).collect();
                    vec![
                        r.set.to_string(),
                        platforms.join("+"),
                        match r.version_extra {
                            Some(extra) => format!("{} {extra}", r.version),
                            None => r.version.clone(),
                        },
                        r.build.unwrap_or("-").to_string(),
                        r.posting_date.to_string(),
                        r.expiration_date
                            .map_or("never".to_string(), |d| d.to_string()),
                        r.supported_devices.len().to_string(),
                    ]
                })
                .collect();
            Ok(table(
                &[
                    "SET",
                    "PLATFORMS",
                    "VERSION",
                    "BUILD",
                    "POSTED",
                    "EXPIRES",
                    "DEVICES",
                ],
                &rows,
            ))
        }
    }
}

pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}
