//! Prometheus metrics (prometheus-client): what platform teams alert on. Its own folder: the
//! backend, the pass and the HTTP layer all count into it, and `http/` serves it at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    kind: &'static str,
    verb: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: &'static str,
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendOperationLabels {
    backend: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    /// `namespace/name` of the deciding UpdatePolicy; empty when no gate applies.
    policy: String,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SettingLabels {
    setting: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandOutcomeLabels {
    request_type: &'static str,
    /// `queued` or `not_queued`.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeldLabels {
    /// The software-update device id (model or board id) Apple's answer no longer lists.
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub source: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    /// `device` (`--listen`) or `admin` (`--admin-listen`).
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimeoutLabels {
    listener: &'static str,
    /// `header`, `body` or `idle`.
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    /// The MDM command: `SecurityInfo` or `DeviceInformation`.
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    /// NanoMDM's topic (`mdm.Authenticate`, ...), `unknown`, or `unread` (refused unread).
    topic: &'static str,
    /// `applied`, `unchanged`, `ignored`, `refused`, `malformed`, `failed`.
    outcome: &'static str,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    ddm_requests: Family<EndpointLabels, Counter>,
    status_reports: Counter,
    resolve_passes: Counter,
    resolve_failures: Counter,
    resolve_seconds: Histogram,
    backend_writes: Counter,
    catalog_fetch_failures: Counter,
    catalog_posted_age_seconds: Gauge,
    pub devices: Family<StateLabels, Gauge>,
    /// Compliant devices over applicable ones, per resource.
    pub compliance: Family<SourceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Apple-silicon Macs a resource enforces that have no escrowed bootstrap token.
    pub bootstrap_token_missing: Family<SourceLabels, Gauge>,
    /// The earliest deadline a resource still enforces, as Unix seconds.
    pub next_deadline: Family<SourceLabels, Gauge>,
    /// Devices the MDM says checked out (left out of every pass).
    pub devices_checked_out: Gauge,
    backend_requests: Family<BackendLabels, Counter>,
    backend_request_seconds: Family<BackendOperationLabels, Histogram>,
    nanomdm_commands: Family<CommandOutcomeLabels, Counter>,
    nanomdm_pushes: Family<OutcomeLabels, Counter>,
    nanomdm_sync_skipped: Family<ReasonLabels, Counter>,
    nanomdm_pending_commands: Gauge,
    distinct_declarations: Gauge,
    ledger_corrupt_rows: Gauge,
    reconciles: Family<KindLabels, Counter>,
    reconcile_failures: Family<KindLabels, Counter>,
    reconcile_seconds: Family<KindLabels, Histogram>,
    kube_writes: Family<WriteLabels, Counter>,
    backend_apply_seconds: Histogram,
    enrollment_decisions: Family<DecisionLabels, Counter>,
    enrollment_seconds: Histogram,
    /// 1 while this replica leads (Kubernetes mode), with the epoch its writes carry.
    leader: Gauge,
    leader_epoch: Gauge,
    status_reports_refused: Family<ReasonLabels, Counter>,
    insecure: Family<SettingLabels, Gauge>,
    http_connections: Family<ListenerLabels, Gauge>,
    http_connections_refused: Family<ListenerLabels, Counter>,
    http_timeouts: Family<TimeoutLabels, Counter>,
    enrollment_refusals: Family<ReasonLabels, Counter>,
    enrollment_unsigned_allowed: Gauge,
    status_refusals: Family<ReasonLabels, Counter>,
    catalog_held: Family<HeldLabels, Gauge>,
    webhook_events: Family<WebhookLabels, Counter>,
    mdm_commands_sent: Family<CommandLabels, Counter>,
    mdm_command_results: Family<CommandLabels, Counter>,
    mdm_command_reports_ignored: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ddm_update_operator");
        let ddm_requests = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "ddm_requests",
            "DDM check-in requests by endpoint and HTTP status",
            ddm_requests.clone(),
        );
        let status_reports = Counter::default();
        registry.register(
            "status_reports",
            "Status reports durably stored",
            status_reports.clone(),
        );
        let resolve_passes = Counter::default();
        registry.register(
            "resolve_passes",
            "Resolver passes run",
            resolve_passes.clone(),
        );
        let resolve_failures = Counter::default();
        registry.register(
            "resolve_failures",
            "Resolver passes that could not be applied",
            resolve_failures.clone(),
        );
        let resolve_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "resolve_duration_seconds",
            "Time to resolve and apply one pass",
            resolve_seconds.clone(),
        );
        let backend_writes = Counter::default();
        registry.register(
            "backend_assignment_changes",
            "Enrollments whose declaration set changed",
            backend_writes.clone(),
        );
        let catalog_fetch_failures = Counter::default();
        registry.register(
            "catalog_fetch_failures",
            "Catalog fetches refused or failed",
            catalog_fetch_failures.clone(),
        );
        let catalog_posted_age_seconds = Gauge::default();
        registry.register(
            "catalog_age_seconds",
            "Seconds since the catalog in use was fetched (or since its newest posting date when loaded from a file)",
            catalog_posted_age_seconds.clone(),
        );
        let devices = Family::<StateLabels, Gauge>::default();
        registry.register(
            "devices",
            "Devices per resource and state bucket",
            devices.clone(),
        );
        let compliance =
            Family::<SourceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "compliance_ratio",
            "Compliant devices over the devices a resource applies to (1 when it applies to none)",
            compliance.clone(),
        );
        let bootstrap_token_missing = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "bootstrap_token_missing",
            "Apple-silicon Macs a resource enforces without an escrowed bootstrap token (their users will be asked to authenticate)",
            bootstrap_token_missing.clone(),
        );
        let next_deadline = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "next_deadline_timestamp_seconds",
            "The earliest deadline a resource still enforces on some device, as Unix seconds (an UpdatePolicy's read in its deadline.timeZone, an EnforcementTarget's as UTC); absent when it enforces nothing",
            next_deadline.clone(),
        );
        let devices_checked_out = Gauge::default();
        registry.register(
            "devices_checked_out",
            "Devices the MDM says checked out: not resolved, their sets withdrawn",
            devices_checked_out.clone(),
        );
        let backend_requests = Family::<BackendLabels, Counter>::default();
        registry.register(
            "backend_requests",
            "Requests to the MDM backend by operation and outcome (ok, partial, error)",
            backend_requests.clone(),
        );
        let backend_request_seconds =
            Family::<BackendOperationLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            });
        registry.register(
            "backend_request_duration_seconds",
            "Latency of requests to the MDM backend",
            backend_request_seconds.clone(),
        );
        let nanomdm_commands = Family::<CommandOutcomeLabels, Counter>::default();
        registry.register(
            "nanomdm_commands",
            "Commands handed to NanoMDM's /v1/enqueue, per enrollment id: queued (a push_error still queues) or not_queued (command_error, or no usable answer)",
            nanomdm_commands.clone(),
        );
        let nanomdm_pushes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "nanomdm_pushes",
            "APNs pushes through NanoMDM (with an enqueue or /v1/push), per enrollment id: ok or error",
            nanomdm_pushes.clone(),
        );
        let nanomdm_sync_skipped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "nanomdm_sync_skipped",
            "Devices whose set changed but got no DeclarativeManagement command: unknown_enrollment (NanoMDM does not know it as enrolled) or pending (one is queued and not yet fetched)",
            nanomdm_sync_skipped.clone(),
        );
        let nanomdm_pending_commands = Gauge::default();
        registry.register(
            "nanomdm_pending_commands",
            "Devices with a DeclarativeManagement command queued in NanoMDM and not yet fetched",
            nanomdm_pending_commands.clone(),
        );
        let distinct_declarations = Gauge::default();
        registry.register(
            "distinct_declarations",
            "Distinct declarations in the last pass",
            distinct_declarations.clone(),
        );
        let ledger_corrupt_rows = Gauge::default();
        registry.register(
            "ledger_corrupt_rows",
            "Rollout ledger rows the store could not read when it opened (those devices were handed out anew)",
            ledger_corrupt_rows.clone(),
        );
        let reconciles = Family::<KindLabels, Counter>::default();
        registry.register("reconciles", "Reconcile runs per kind", reconciles.clone());
        let reconcile_failures = Family::<KindLabels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Reconcile runs that failed, per kind",
            reconcile_failures.clone(),
        );
        let reconcile_seconds = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration per kind",
            reconcile_seconds.clone(),
        );
        let kube_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "kube_writes",
            "Writes to the Kubernetes API per kind and verb",
            kube_writes.clone(),
        );
        let backend_apply_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "backend_apply_duration_seconds",
            "Time to write one pass to the backend",
            backend_apply_seconds.clone(),
        );
        let enrollment_decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "enrollment_decisions",
            "Enrollment gate decisions per deciding UpdatePolicy: Allowed, UpdateRequired, CannotUpdate, FailedOpen, FailedClosed, Ungated",
            enrollment_decisions.clone(),
        );
        let enrollment_seconds = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
        registry.register(
            "enrollment_decision_duration_seconds",
            "Time to verify MachineInfo and decide, without forwarding",
            enrollment_seconds.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and may write, else 0",
            leader.clone(),
        );
        let leader_epoch = Gauge::default();
        registry.register(
            "leader_epoch",
            "The leadership epoch this replica's writes carry (0 when not leading)",
            leader_epoch.clone(),
        );
        let status_reports_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "status_reports_refused",
            "DDM status reports refused for what they would cost, per reason",
            status_reports_refused.clone(),
        );
        let insecure = Family::<SettingLabels, Gauge>::default();
        registry.register(
            "insecure",
            "1 for each protection that is switched off, such as no_hmac (DDM requests nobody signed are taken)",
            insecure.clone(),
        );
        let enrollment_refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "enrollment_refusals",
            "MachineInfo refused before any decision (never given the profile), per reason: Unsigned, UntrustedSigner, BadSignature, InvalidCms, ...",
            enrollment_refusals.clone(),
        );
        let enrollment_unsigned_allowed = Gauge::default();
        registry.register(
            "enrollment_unsigned_allowed",
            "1 when --enroll-allow-unsigned takes MachineInfo without checking its signer",
            enrollment_unsigned_allowed.clone(),
        );
        let status_refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "status_claims_refused",
            "DDM status reports refused with 422 because Apple's catalog contradicts their OS or model claim, per reason: NewerThanCatalog, UnknownBuild, ModelChanged",
            status_refusals.clone(),
        );
        let catalog_held = Family::<HeldLabels, Gauge>::default();
        registry.register(
            "catalog_held_releases",
            "Releases kept per device id after Apple's answer dropped them, until the grace period ends",
            catalog_held.clone(),
        );
        let http_connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "http_connections",
            "Open HTTP connections per listener (device, admin)",
            http_connections.clone(),
        );
        let http_connections_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "http_connections_refused",
            "HTTP connections closed on arrival because the listener had --http-max-connections open",
            http_connections_refused.clone(),
        );
        let http_timeouts = Family::<TimeoutLabels, Counter>::default();
        registry.register(
            "http_timeouts",
            "HTTP connections closed by a timeout, per listener and phase: header (headers not complete in time), body (408), idle",
            http_timeouts.clone(),
        );
        let mdm_commands_sent = Family::<CommandLabels, Counter>::default();
        registry.register(
            "mdm_commands_sent",
            "MDM commands handed to NanoMDM per kind and outcome: queued, queued_not_pushed (push_error: queued, the device gets it at its next poll), not_queued",
            mdm_commands_sent.clone(),
        );
        let mdm_command_results = Family::<CommandLabels, Counter>::default();
        registry.register(
            "mdm_command_results",
            "Answers to the operator's MDM commands (mdm.Connect webhook events) per kind and status: acknowledged, error, not_now",
            mdm_command_results.clone(),
        );
        let mdm_command_reports_ignored = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "mdm_command_reports_ignored",
            "Command reports (or keys of them) left unread, per reason: not_plist, too_large, wrong_type, missing_key, unknown_status, not_a_dictionary",
            mdm_command_reports_ignored.clone(),
        );
        let webhook_events = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_events",
            "NanoMDM webhook events by topic and outcome: applied, unchanged (known already), ignored (user channels, unknown topics, topics without device facts), refused (401, 413, 422), malformed (400), failed (503)",
            webhook_events.clone(),
        );
        Metrics {
            webhook_events,
            mdm_commands_sent,
            mdm_command_results,
            mdm_command_reports_ignored,
            leader,
            leader_epoch,
            status_reports_refused,
            insecure,
            http_connections,
            http_connections_refused,
            http_timeouts,
            enrollment_refusals,
            enrollment_unsigned_allowed,
            status_refusals,
            catalog_held,
            compliance,
            bootstrap_token_missing,
            next_deadline,
            devices_checked_out,
            backend_requests,
            backend_request_seconds,
            nanomdm_commands,
            nanomdm_pushes,
            nanomdm_sync_skipped,
            nanomdm_pending_commands,
            enrollment_decisions,
            enrollment_seconds,
            reconciles,
            reconcile_failures,
            reconcile_seconds,
            kube_writes,
            backend_apply_seconds,
            registry,
            ddm_requests,
            status_reports,
            resolve_passes,
            resolve_failures,
            resolve_seconds,
            backend_writes,
            catalog_fetch_failures,
            catalog_posted_age_seconds,
            devices,
            distinct_declarations,
            ledger_corrupt_rows,
        }
    }

    pub fn ddm_request(&self, endpoint: &'static str, code: u16) {
        self.ddm_requests
            .get_or_create(&EndpointLabels { endpoint, code })
            .inc();
    }

    pub fn enrollment_decision(&self, policy: String, decision: &'static str, seconds: f64) {
        self.enrollment_decisions
            .get_or_create(&DecisionLabels { policy, decision })
            .inc();
        self.enrollment_seconds.observe(seconds);
    }

    /// One request to the MDM backend (`outcome`: ok, partial or error).
    pub fn backend_request(
        &self,
        backend: &'static str,
        operation: &'static str,
        outcome: &'static str,
        seconds: f64,
    ) {
        self.backend_requests
            .get_or_create(&BackendLabels {
                backend,
                operation,
                outcome,
            })
            .inc();
        self.backend_request_seconds
            .get_or_create(&BackendOperationLabels { backend, operation })
            .observe(seconds);
    }

    /// Commands handed to NanoMDM's enqueue for `count` enrollment ids (`outcome`: queued,
    /// not_queued).
    pub fn nanomdm_commands(&self, request_type: &'static str, outcome: &'static str, count: u64) {
        self.nanomdm_commands
            .get_or_create(&CommandOutcomeLabels {
                request_type,
                outcome,
            })
            .inc_by(count);
    }

    /// APNs pushes through NanoMDM for `count` enrollment ids (`outcome`: ok, error).
    pub fn nanomdm_pushes(&self, outcome: &'static str, count: u64) {
        self.nanomdm_pushes
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(count);
    }

    /// Devices given no sync command (`reason`: unknown_enrollment, pending).
    pub fn nanomdm_sync_skipped(&self, reason: &'static str, count: u64) {
        self.nanomdm_sync_skipped
            .get_or_create(&ReasonLabels { reason })
            .inc_by(count);
    }

    pub fn nanomdm_pending_commands(&self, devices: usize) {
        self.nanomdm_pending_commands
            .set(i64::try_from(devices).unwrap_or(i64::MAX));
    }

    pub fn status_report(&self) {
        self.status_reports.inc();
    }

    pub fn resolve_pass(&self, seconds: f64, ok: bool, changed: usize, declarations: usize) {
        self.resolve_passes.inc();
        if !ok {
            self.resolve_failures.inc();
        }
        self.resolve_seconds.observe(seconds);
        self.backend_writes.inc_by(changed as u64);
        self.distinct_declarations
            .set(i64::try_from(declarations).unwrap_or(i64::MAX));
    }

    pub fn reconciled(&self, kind: &'static str, seconds: f64, ok: bool) {
        let labels = KindLabels { kind };
        self.reconciles.get_or_create(&labels).inc();
        if !ok {
            self.reconcile_failures.get_or_create(&labels).inc();
        }
        self.reconcile_seconds
            .get_or_create(&labels)
            .observe(seconds);
    }

    pub fn kube_write(&self, kind: &'static str, verb: &'static str) {
        self.kube_writes
            .get_or_create(&WriteLabels { kind, verb })
            .inc();
    }

    /// Writes to the Kubernetes API so far, all kinds and verbs.
    pub fn kube_writes_total(&self) -> u64 {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out.lines()
            .filter(|l| l.starts_with("ddm_update_operator_kube_writes_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    pub fn backend_applied(&self, seconds: f64) {
        self.backend_apply_seconds.observe(seconds);
    }

    /// Leading under `epoch`, or (`None`) not leading.
    pub fn leadership(&self, epoch: Option<i64>) {
        self.leader.set(i64::from(epoch.is_some()));
        self.leader_epoch.set(epoch.unwrap_or(0));
    }

    pub fn status_report_refused(&self, reason: &'static str) {
        self.status_reports_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// `off`: the protection named `setting` is switched off.
    pub fn insecure_setting(&self, setting: &'static str, off: bool) {
        self.insecure
            .get_or_create(&SettingLabels { setting })
            .set(i64::from(off));
    }

    pub fn enrollment_refused(&self, reason: &'static str) {
        self.enrollment_refusals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn enrollment_unsigned_allowed(&self, allowed: bool) {
        self.enrollment_unsigned_allowed.set(i64::from(allowed));
    }

    pub fn status_claim_refused(&self, reason: &'static str) {
        self.status_refusals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Held releases per device id; ids no longer held are removed.
    pub fn catalog_held(&self, per_device: &std::collections::BTreeMap<String, usize>) {
        self.catalog_held.clear();
        for (device, count) in per_device {
            self.catalog_held
                .get_or_create(&HeldLabels {
                    device: device.clone(),
                })
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
    }

    pub fn catalog_fetch_failed(&self) {
        self.catalog_fetch_failures.inc();
    }

    pub fn ledger_corrupt_rows(&self, rows: u64) {
        self.ledger_corrupt_rows
            .set(i64::try_from(rows).unwrap_or(i64::MAX));
    }

    pub fn catalog_age(&self, seconds: i64) {
        self.catalog_posted_age_seconds.set(seconds);
    }

    /// Open connections on one listener now.
    pub fn http_connections_open(&self, listener: &'static str, open: usize) {
        self.http_connections
            .get_or_create(&ListenerLabels { listener })
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// A connection closed on arrival: the listener was at its cap.
    pub fn http_connection_refused(&self, listener: &'static str) {
        self.http_connections_refused
            .get_or_create(&ListenerLabels { listener })
            .inc();
    }

    /// A connection closed by a timeout (`phase`: header, body or idle).
    pub fn http_timeout(&self, listener: &'static str, phase: &'static str) {
        self.http_timeouts
            .get_or_create(&TimeoutLabels { listener, phase })
            .inc();
    }

    /// An MDM command handed to NanoMDM (`outcome`: queued, queued_not_pushed, not_queued).
    pub fn mdm_command_sent(&self, kind: &'static str, outcome: &'static str) {
        self.mdm_commands_sent
            .get_or_create(&CommandLabels { kind, outcome })
            .inc();
    }

    /// A device's answer to one of the operator's commands.
    pub fn mdm_command_result(&self, kind: &'static str, outcome: &'static str) {
        self.mdm_command_results
            .get_or_create(&CommandLabels { kind, outcome })
            .inc();
    }

    /// A command report, or one key of it, left unread.
    pub fn mdm_command_report_ignored(&self, reason: &'static str) {
        self.mdm_command_reports_ignored
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// One NanoMDM webhook event and what became of it.
    pub fn webhook_event(&self, topic: &'static str, outcome: &'static str) {
        self.webhook_events
            .get_or_create(&WebhookLabels { topic, outcome })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
