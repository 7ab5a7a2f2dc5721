//! `ddm-device-sim`: runs a fleet of simulated DDM devices, drawn from Apple's catalog, against
//! a DDM server (the operator's endpoints behind NanoMDM's `-dm` hand-off) and prints what
//! happened. Exit status: 0 every check-in succeeded, 1 some failed, 2 usage or unreadable
//! inputs.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ddm_update_operator::catalog::Catalog;
use ddm_update_operator::sim::{Fleet, FleetOptions, RunOptions, ServerConfig, http_client};

#[derive(Debug, Parser)]
#[command(
    name = "ddm-device-sim",
    version,
    about = "Simulates Apple devices checking in to a Declarative Device Management server"
)]
struct Args {
    /// The DDM base URL (NanoMDM's `-dm` value); endpoints are resolved against it.
    #[arg(long, default_value = "http://127.0.0.1:8080/ddm/")]
    base_url: String,
    /// Number of devices.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Apple's catalog (a pmv JSON file, or SOFA's `{etag, data}` wrapper) to draw models,
    /// versions and builds from.
    #[arg(long)]
    catalog: std::path::PathBuf,
    /// Seed for drawing the fleet (same seed, same fleet).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Key to sign requests with (`X-Hmac-Signature`, NanoMDM's `-dm-send-hmac-key`);
    /// `DDM_SIM_HMAC_KEY` in the environment when not given.
    #[arg(long)]
    hmac_key: Option<String>,
    /// Key responses must be signed with (NanoMDM's `-dm-recv-hmac-key`);
    /// `DDM_SIM_RESPONSE_HMAC_KEY` in the environment when not given.
    #[arg(long)]
    response_hmac_key: Option<String>,
    /// Rounds; each round every device advances its install one step and checks in once.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Check-ins in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Devices per thousand whose installs always fail.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    failing_per_mille: u32,
    /// Devices per thousand that are not supervised.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    unsupervised_per_mille: u32,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Allow a base URL that is not on a loopback address.
    #[arg(long)]
    allow_remote: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

fn is_loopback(server: &ServerConfig) -> bool {
    let Some(host) = server.base_url().host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn usage(message: String) -> ExitCode {
    eprintln!("ddm-device-sim: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut server = match ServerConfig::new(&args.base_url) {
        Ok(server) => server,
        Err(e) => return usage(e.to_string()),
    };
    if !args.allow_remote && !is_loopback(&server) {
        return usage(format!(
            "{} is not a loopback address; pass --allow-remote to load a remote server",
            server.base_url()
        ));
    }
    let from_env = |name: &str| std::env::var(name).ok().filter(|k| !k.is_empty());
    if let Some(key) = args
        .hmac_key
        .clone()
        .or_else(|| from_env("DDM_SIM_HMAC_KEY"))
    {
        server = server.with_request_key(key.into_bytes());
    }
    if let Some(key) = args
        .response_hmac_key
        .clone()
        .or_else(|| from_env("DDM_SIM_RESPONSE_HMAC_KEY"))
    {
        server = server.with_response_key(key.into_bytes());
    }
    let bytes = match std::fs::read(&args.catalog) {
        Ok(bytes) => bytes,
        Err(e) => return usage(format!("{}: {e}", args.catalog.display())),
    };
    let catalog = match Catalog::from_slice(&bytes) {
        Ok(catalog) => catalog,
        Err(e) => return usage(format!("{}: {e}", args.catalog.display())),
    };
    let options = FleetOptions {
        failing_per_mille: args.failing_per_mille,
        unsupervised_per_mille: args.unsupervised_per_mille,
        ..FleetOptions::default()
    };
    let mut fleet = match Fleet::from_catalog_with(&catalog, args.devices, args.seed, &options) {
        Ok(fleet) => fleet,
        Err(e) => return usage(format!("{}: {e}", args.catalog.display())),
    };
    let client = match http_client(Duration::from_secs(args.timeout.max(1))) {
        Ok(client) => client,
        Err(e) => return usage(e.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return usage(format!("cannot start the runtime: {e}")),
    };
    let run = RunOptions {
        rounds: args.rounds,
        concurrency: args.concurrency.max(1),
    };
    let summary = runtime.block_on(fleet.run(&client, &server, &run));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary.to_json()).unwrap_or_default()
        );
    } else {
        print!("{summary}");
    }
    if summary.failed_syncs > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
