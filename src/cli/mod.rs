//! The command line: argument parsing, input loading shared by the subcommands, and the exit
//! status contract (0 success; 1 input read but invalid; 2 usage errors and unreadable input).

mod catalog_cmd;
mod crds_cmd;
mod devices_cmd;
mod plan_cmd;
mod run_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use jiff::Timestamp;

use crate::catalog::fetch::{FetchConfig, Fetched, Fetcher};
use crate::catalog::{Catalog, PmvDocument, guard};

#[derive(Debug, Parser)]
#[command(name = "ddm-update-operator", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apple's software catalog: fetch it, show it, resolve a device against it.
    #[command(subcommand)]
    Catalog(catalog_cmd::CatalogCommand),
    /// Show which devices get which version by when, from manifests, an inventory and a
    /// catalog, before anything is applied.
    Plan(plan_cmd::PlanArgs),
    /// Print the CustomResourceDefinitions.
    Crds(crds_cmd::CrdsArgs),
    /// Run the operator: serve devices and keep their declarations current.
    Run(Box<run_cmd::RunArgs>),
    /// Ask a running operator about devices: why is this one not updated? Which are failing?
    #[command(subcommand)]
    Devices(devices_cmd::DevicesCommand),
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// A failure, sorted by the exit status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Exit 2: bad arguments, or an input that could not be read at all.
    #[error("{0}")]
    Unreadable(String),
    /// Exit 1: the input was read but is invalid; every problem is listed.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

impl CliError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Invalid(_) => ExitCode::from(1),
            CliError::Unreadable(_) => ExitCode::from(2),
        }
    }
}

pub fn main(cli: Cli) -> ExitCode {
    let (log_format, default_filter) = match &cli.command {
        Command::Run(args) => (args.log_format, "info"),
        _ => (crate::logging::LogFormat::Text, "warn"),
    };
    crate::logging::init(log_format, default_filter);
    let result = match cli.command {
        Command::Catalog(command) => catalog_cmd::run(command),
        Command::Plan(args) => plan_cmd::run(args),
        Command::Crds(args) => crds_cmd::run(args),
        Command::Run(args) => run_cmd::run(*args),
        Command::Devices(command) => devices_cmd::run(command),
    };
    match result {
        Ok(output) => {
            use std::io::Write;
            // A closed pipe (`| head`) is not an error worth reporting.
            let _ = std::io::stdout().lock().write_all(output.as_bytes());
            ExitCode::SUCCESS
        }
        Err(error) => {
            for line in error.to_string().lines() {
                eprintln!("error: {line}");
            }
            error.exit_code()
        }
    }
}

/// `--at`: a date (`2026-08-23`, meaning 00:00 UTC) or an RFC 3339 time.
pub fn parse_at(value: &str) -> Result<Timestamp, String> {
    if let Ok(timestamp) = value.parse::<Timestamp>() {
        return Ok(timestamp);
    }
    value
        .parse::<jiff::civil::Date>()
        .ok()
        .and_then(|date| date.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|zoned| zoned.timestamp())
        .ok_or_else(|| {
            format!("{value:?} is neither a date (2026-08-23) nor an RFC 3339 time (2026-08-23T19:00:00Z)")
        })
}

pub use crate::catalog::utc_date;

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Unreadable(format!("cannot start the async runtime: {e}")))
}

/// Reads a PEM bundle of trusted roots, or the embedded Apple Root CA.
fn fetch_config(url: &str, trusted_roots: Option<&PathBuf>) -> Result<FetchConfig, CliError> {
    let mut config = FetchConfig {
        url: url.to_string(),
        ..FetchConfig::default()
    };
    if let Some(path) = trusted_roots {
        config.trusted_roots_pem = std::fs::read(path)
            .map_err(|e| CliError::Unreadable(format!("{}: {e}", path.display())))?;
    }
    Ok(config)
}

/// `--catalog`: a pmv JSON file (or SOFA's `{etag, data}` wrapper), or an `http(s)` URL.
/// An empty catalog is refused: Apple has served one during outages.
pub fn load_catalog(source: &str, trusted_roots: Option<&PathBuf>) -> Result<Catalog, CliError> {
    let bytes = if source.starts_with("https://") || source.starts_with("http://") {
        let fetcher = Fetcher::new(fetch_config(source, trusted_roots)?)
            .map_err(|e| CliError::Unreadable(e.to_string()))?;
        match runtime()?.block_on(fetcher.get(None)) {
            Ok(Fetched::Body { bytes, .. }) => bytes,
            Ok(Fetched::NotModified) => {
                return Err(CliError::Unreadable(format!("{source}: unexpected 304")));
            }
            Err(e) => return Err(CliError::Unreadable(e.to_string())),
        }
    } else {
        std::fs::read(source).map_err(|e| CliError::Unreadable(format!("{source}: {e}")))?
    };
    let document = PmvDocument::from_slice(&bytes)
        .map_err(|e| CliError::Invalid(vec![format!("{source}: {e}")]))?;
    guard::check_not_empty(&document)
        .map_err(|e| CliError::Invalid(vec![format!("{source}: {e}")]))?;
    let catalog = Catalog::from_document(&document);
    // A file's expiration dates are those of the day it was fetched (Apple rolls them forward
    // daily): judge them as of its newest posting date, as `run` does.
    Ok(match document.newest_posting_date() {
        Some(day) if !source.starts_with("http") => catalog.with_as_of(day),
        _ => catalog,
    })
}

fn to_json(value: &impl serde::Serialize) -> Result<String, CliError> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Unreadable(format!("cannot encode the output: {e}")))?;
    text.push('\n');
    Ok(text)
}
