//! `ddm-update-operator run`: the operator's main job. With `--manifests`, standalone on a
//! folder (a Git checkout) with the embedded DDM backend; no cluster, no external MDM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::CliError;
use crate::backend::nanomdm::NanoMdmConfig;
use crate::catalog::fetch::DEFAULT_URL;
use crate::http::enroll::EnrollConfig;
use crate::logging::LogFormat;
use crate::operator::{CatalogSource, RunConfig};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Folder of updates.ddm.dev manifests (a Git checkout); re-read when it changes.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// The catalog: Apple's URL (fetched daily, last good copy cached) or a pmv file.
    #[arg(long, default_value = DEFAULT_URL)]
    catalog: String,
    /// How often the catalog is fetched again (Apple asks for no more than daily).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    catalog_refresh: Duration,
    /// How long a release Apple's answer stops listing for a device is kept for it (alerted on
    /// in the log, the status and `catalog_held_releases`) before it is withdrawn (336h: 14
    /// days).
    #[arg(long, default_value = "336h", value_parser = parse_duration)]
    catalog_grace: Duration,
    /// PEM roots trusted for the catalog host (default: the embedded Apple Root CA).
    #[arg(long, value_name = "PEM")]
    catalog_roots: Option<PathBuf>,
    /// Where the catalog cache and the default database live.
    #[arg(long, default_value = ".ddm-update-operator")]
    data_dir: PathBuf,
    /// `sqlite://PATH` (default: `ddm.sqlite` in the data dir).
    #[arg(long)]
    database: Option<String>,
    /// Devices to seed from a YAML/JSON inventory (default: `inventory.yaml` next to the
    /// manifests folder, when there is one). Devices are also learned from their reports.
    #[arg(long)]
    inventory: Option<PathBuf>,
    /// The device side: DDM endpoints (for NanoMDM) and the enrollment gate.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The admin side: /metrics, /healthz, /readyz and the /api/v1 status API (bearer token).
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// Standalone mode: file with the bearer token /api/v1 requires (re-read when it changes).
    /// Without it the API is served only on a loopback --admin-listen. Kubernetes mode checks
    /// tokens with TokenReview and SubjectAccessReview instead.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Time a client has to send a request's headers, counted from when the connection waits
    /// for one (so it also closes kept-alive connections left idle).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    http_header_timeout: Duration,
    /// Time a request's body has to arrive after its headers; later: 408, connection closed.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    http_body_timeout: Duration,
    /// A connection on which no byte moves for this long while no request is being handled
    /// (a client that stops reading its answer) is closed.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    http_idle_timeout: Duration,
    /// Open connections per listener; more are closed on arrival (and counted).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    http_max_connections: u32,
    /// On SIGTERM: how long requests in flight may finish before their connections are closed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    http_drain_timeout: Duration,
    /// Path prefix of the DDM endpoints (point NanoMDM's `-dm` at `http://HOST/ddm/`).
    #[arg(long, default_value = "/ddm/")]
    base_path: String,
    /// File with the key NanoMDM signs `-dm` requests with (`-dm-send-hmac-key`); requests
    /// without a valid signature are refused.
    #[arg(long, value_name = "FILE")]
    dm_receive_key_file: Option<PathBuf>,
    /// Kubernetes mode: start without --dm-receive-key-file, taking DDM requests nobody signed
    /// (anyone who reaches the DDM port can then report for any enrollment). Exported as
    /// `ddm_update_operator_insecure{setting="no_hmac"} 1` and an `Authenticated=False`
    /// condition on every UpdatePolicy.
    #[arg(long)]
    insecure_no_hmac: bool,
    /// File with the key our responses are signed with (NanoMDM's `-dm-recv-hmac-key`).
    #[arg(long, value_name = "FILE")]
    dm_send_key_file: Option<PathBuf>,
    /// File with the key NanoMDM signs its webhook events with (`-webhook-hmac-key`); events
    /// posted to /webhook/nanomdm without a valid `X-Hmac-Signature` are refused. Without it,
    /// events are taken unsigned only when DDM requests are too (no --dm-receive-key-file).
    #[arg(long, value_name = "FILE")]
    webhook_hmac_key_file: Option<PathBuf>,
    /// NanoMDM's API base URL, to trigger syncs after a device's set changes.
    #[arg(long)]
    nanomdm_url: Option<String>,
    /// File with NanoMDM's API key.
    #[arg(long, value_name = "FILE", requires = "nanomdm_url")]
    nanomdm_api_key_file: Option<PathBuf>,
    /// Send the sync command to every device whose set changed, enrolled in NanoMDM or not: for
    /// a NanoMDM without `-webhook-url`. Without it only enrollments NanoMDM's webhook reported
    /// (Authenticate/TokenUpdate, no CheckOut since) get one; NanoMDM keeps commands for ids it
    /// does not know.
    #[arg(long, requires = "nanomdm_url")]
    nanomdm_enqueue_unknown: bool,
    /// At most this many SecurityInfo/DeviceInformation commands enqueued per minute (Macs'
    /// bootstrap-token needs, unknown supervision or board ids). They go out only with
    /// --nanomdm-url and NanoMDM's webhook (answers arrive only through it).
    #[arg(long, default_value_t = 60, value_name = "N")]
    mdm_commands_per_minute: u32,
    /// How often the manifests folder is checked for changes.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Take devices as supervised (ADE fleets are) when neither the MDM (`IsSupervised`
    /// through NanoMDM's webhook) nor the inventory has said whether they are.
    #[arg(long)]
    assume_supervised: bool,
    /// Kubernetes mode: namespace of the leader-election Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Kubernetes mode: this replica's identity in the Lease (default: the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Kubernetes mode: reconciles running at once per kind.
    #[arg(long, default_value_t = 4)]
    concurrency: u16,
    /// Kubernetes mode: watch only this namespace (default: every namespace).
    #[arg(long, env = "WATCH_NAMESPACE", value_name = "NAMESPACE")]
    watch_namespace: Option<String>,
    /// Path of the enrollment gate: Setup Assistant posts MachineInfo here (point the ADE
    /// profile's `url` at `https://HOST/enroll`).
    #[arg(long, default_value = "/enroll")]
    enroll_path: String,
    /// Devices the gate lets through are proxied to this enrollment URL (the MDM's own).
    #[arg(long, value_name = "URL", conflicts_with = "enroll_profile")]
    enroll_upstream: Option<String>,
    /// Or served this enrollment profile (`application/x-apple-aspen-config`).
    #[arg(long, value_name = "FILE")]
    enroll_profile: Option<PathBuf>,
    /// PEM CAs the MachineInfo signer must chain to instead of Apple Root CA (the default, which
    /// real devices' identity certificates chain to). Unsigned MachineInfo is refused either way.
    #[arg(long, value_name = "FILE")]
    enroll_ca_bundle: Option<PathBuf>,
    /// Take unsigned (or unchained) MachineInfo: only behind a proxy that already verified the
    /// device's signature. Logged as a warning at start and exported as a metric.
    #[arg(long, conflicts_with = "enroll_ca_bundle")]
    enroll_allow_unsigned: bool,
    /// File with the Apple Business Manager seeding service token, for policies whose gate
    /// asks for a beta program.
    #[arg(long, value_name = "FILE")]
    enroll_beta_token_file: Option<PathBuf>,
    /// The log on stderr: `text` for people (coloured only when stderr is a terminal), or
    /// `json`, one object per line with each event's fields (`enrollment_id`, `resource`, …)
    /// as top-level keys, for a log pipeline.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(super) log_format: LogFormat,
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    value
        .parse::<jiff::SignedDuration>()
        .ok()
        .and_then(|d| Duration::try_from(d).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{value:?} is not a positive duration like 2s, 10m or 24h"))
}

fn read_file(path: Option<&PathBuf>) -> Result<Option<Vec<u8>>, CliError> {
    path.map(|p| {
        std::fs::read(p).map_err(|e| CliError::Unreadable(format!("{}: {e}", p.display())))
    })
    .transpose()
}

/// A key file's content without surrounding whitespace (a trailing newline is not key).
fn read_key(path: Option<&PathBuf>) -> Result<Option<Vec<u8>>, CliError> {
    Ok(read_file(path)?.map(|bytes| String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec()))
}

pub fn run(args: RunArgs) -> Result<String, CliError> {
    if args.manifests.is_none() && args.admin_token_file.is_some() {
        return Err(CliError::Unreadable(
            "--admin-token-file is for standalone mode (--manifests); in Kubernetes mode the admin API checks tokens with TokenReview and SubjectAccessReview".into(),
        ));
    }
    // Without --manifests the resources come from the Kubernetes API.
    let manifests = args.manifests.clone().unwrap_or_default();
    if args.manifests.is_some() && !manifests.is_dir() {
        return Err(CliError::Unreadable(format!(
            "{}: not a folder",
            manifests.display()
        )));
    }
    let database = match &args.database {
        Some(url) => PathBuf::from(url.strip_prefix("sqlite://").ok_or_else(|| {
            CliError::Unreadable(format!(
                "--database {url:?}: only sqlite://PATH is supported"
            ))
        })?),
        None => args.data_dir.join("ddm.sqlite"),
    };
    let inventory = args.inventory.clone().or_else(|| {
        args.manifests.as_ref()?;
        let beside = manifests.parent()?.join("inventory.yaml");
        beside.is_file().then(|| {
            tracing::info!(path = %beside.display(), "seeding devices from the inventory beside the manifests folder");
            beside
        })
    });
    let catalog = if args.catalog.starts_with("https://") || args.catalog.starts_with("http://") {
        CatalogSource::Url(args.catalog.clone())
    } else {
        CatalogSource::File(PathBuf::from(&args.catalog))
    };
    let nanomdm = match (
        &args.nanomdm_url,
        read_key(args.nanomdm_api_key_file.as_ref())?,
    ) {
        (Some(url), key) => Some(NanoMdmConfig {
            enqueue_unknown: args.nanomdm_enqueue_unknown,
            ..NanoMdmConfig::new(
                url.clone(),
                String::from_utf8_lossy(&key.unwrap_or_default()),
            )
        }),
        (None, _) => None,
    };
    let config = RunConfig {
        manifests,
        catalog,
        catalog_roots: read_file(args.catalog_roots.as_ref())?,
        catalog_refresh: args.catalog_refresh,
        catalog_grace: args.catalog_grace,
        data_dir: args.data_dir.clone(),
        database,
        inventory,
        listen: args.listen,
        admin_listen: args.admin_listen,
        admin_token_file: args.admin_token_file.clone(),
        http: crate::http::serve::Limits {
            header_read_timeout: args.http_header_timeout,
            body_read_timeout: args.http_body_timeout,
            idle_timeout: args.http_idle_timeout,
            max_connections: usize::try_from(args.http_max_connections).unwrap_or(usize::MAX),
            drain_timeout: args.http_drain_timeout,
        },
        base_path: args.base_path.clone(),
        receive_key: read_key(args.dm_receive_key_file.as_ref())?,
        send_key: read_key(args.dm_send_key_file.as_ref())?,
        webhook_key: read_key(args.webhook_hmac_key_file.as_ref())?,
        nanomdm,
        mdm_commands: crate::mdm::commands::Schedule {
            per_minute: usize::try_from(args.mdm_commands_per_minute).unwrap_or(usize::MAX),
            ..Default::default()
        },
        poll_interval: args.poll_interval,
        assume_supervised: args.assume_supervised,
        enroll: EnrollConfig {
            path: args.enroll_path.clone(),
            upstream: args.enroll_upstream.clone(),
            profile: read_file(args.enroll_profile.as_ref())?,
            ca_bundle: read_file(args.enroll_ca_bundle.as_ref())?,
            allow_unsigned: args.enroll_allow_unsigned,
            beta_token: read_file(args.enroll_beta_token_file.as_ref())?
                .map(|t| String::from_utf8_lossy(&t).trim().to_string()),
        },
        clock: Default::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Unreadable(format!("cannot start the async runtime: {e}")))?;
    if args.manifests.is_some() {
        if config.receive_key.is_none() {
            tracing::warn!(
                "no --dm-receive-key-file: DDM requests are not authenticated, so anyone who reaches the DDM port can report for any enrollment (set NanoMDM's -dm-send-hmac-key and pass it here)"
            );
        }
        runtime
            .block_on(crate::run::run(config))
            .map_err(|e| CliError::Unreadable(e.to_string()))?;
        return Ok(String::new());
    }
    // Kubernetes mode serves a fleet: unsigned DDM requests are refused unless explicitly allowed.
    if config.receive_key.is_none() && !args.insecure_no_hmac {
        return Err(CliError::Unreadable(
            "Kubernetes mode needs NanoMDM's HMAC key: pass --dm-receive-key-file (NanoMDM's -dm-send-hmac-key), or --insecure-no-hmac to take unsigned DDM requests".into(),
        ));
    }
    if config.receive_key.is_none() {
        tracing::warn!(
            "--insecure-no-hmac: DDM requests are not authenticated; anyone who reaches the DDM port can report for any enrollment"
        );
    }
    let settings = crate::controller::KubeSettings {
        lease_namespace: args.lease_namespace.clone(),
        lease_name: "ddm-update-operator".into(),
        identity: args
            .identity
            .clone()
            .unwrap_or_else(|| format!("ddm-update-operator-{}", std::process::id())),
        concurrency: args.concurrency.max(1),
        watch_namespace: args.watch_namespace.clone().filter(|n| !n.is_empty()),
        lease_timing: None,
    };
    runtime.block_on(async move {
        let client = kube::Client::try_default().await.map_err(|e| {
            CliError::Unreadable(format!(
                "no Kubernetes configuration (in-cluster or KUBECONFIG): {e}"
            ))
        })?;
        let running = crate::controller::start(client, config, settings)
            .await
            .map_err(CliError::Unreadable)?;
        tracing::info!(address = %running.address, "operator running in Kubernetes mode");
        let mut stepped_down = running.stepped_down.clone();
        tokio::select! {
            () = crate::operator::shutdown_signal() => {
                running.shutdown().await;
                Ok(String::new())
            }
            _ = stepped_down.wait_for(|down| *down) => {
                // Restarted by Kubernetes, this replica joins the election again as a follower.
                Err(CliError::Unreadable(
                    "stepped down: the leader Lease was lost or could not be renewed in time".into(),
                ))
            }
        }
    })
}
