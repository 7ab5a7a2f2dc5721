//! One simulated device: its identity and OS, the declarations it holds, how it applies them,
//! what it reports, and how it installs an enforced update.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::civil::DateTime;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::client::{self, Answer, Endpoint};
use super::items::{self, Target};
use super::json::{insert_dotted, to_apple_vec};
use super::{ServerConfig, SimError};
use crate::catalog::{Build, OsVersion, Platform};

/// Steps a failed install waits in `failed` before it is retried.
pub const RETRY_AFTER_ADVANCES: u32 = 3;

/// `softwareupdate.install-state`. (The schema's description also names `waiting`, which its
/// `rangelist` lacks; the simulator never uses it.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum InstallState {
    #[default]
    None,
    Downloading,
    Prepared,
    Installing,
    Failed,
}

impl InstallState {
    pub const ALL: [InstallState; 5] = [
        InstallState::None,
        InstallState::Downloading,
        InstallState::Prepared,
        InstallState::Installing,
        InstallState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstallState::None => "none",
            InstallState::Downloading => "downloading",
            InstallState::Prepared => "prepared",
            InstallState::Installing => "installing",
            InstallState::Failed => "failed",
        }
    }
}

/// How installs end on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Every install succeeds.
    #[default]
    Never,
    /// Every install attempt fails (the failure count keeps growing).
    Always,
    /// The first N attempts of each update fail, then it installs.
    FirstAttempts(u32),
}

/// A supplemental release (Rapid Security Response, Background Security Improvement) on top of
/// the base OS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supplemental {
    /// As devices report it: `(a)`.
    pub extra: String,
    /// The build including the supplemental, such as `23D771330a`.
    pub build: String,
}

/// The OS a device runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsState {
    /// The base version, without supplemental extra.
    pub version: OsVersion,
    /// The base build.
    pub build: String,
    pub supplemental: Option<Supplemental>,
}

impl OsState {
    /// `version` may carry a supplemental extra (`26.3.1 (a)`); the supplemental build is then
    /// unknown and reported as the base build with the extra's letter appended.
    pub fn new(version: &str, build: &str) -> Result<Self, SimError> {
        let parsed: OsVersion = version
            .parse()
            .map_err(|e| SimError::Config(format!("OS version: {e}")))?;
        let build = build.trim();
        if build.is_empty() {
            return Err(SimError::Config("OS build must not be empty".into()));
        }
        let supplemental = parsed.extra().map(|extra| Supplemental {
            extra: extra.to_string(),
            build: format!("{build}{}", extra.trim_matches(|c| c == '(' || c == ')')),
        });
        Ok(OsState {
            version: parsed.base(),
            build: build.to_string(),
            supplemental,
        })
    }

    /// The running version including any supplemental extra.
    pub fn running(&self) -> OsVersion {
        match &self.supplemental {
            Some(s) => OsVersion::with_extra(&self.version.numeric(), Some(&s.extra))
                .unwrap_or_else(|_| self.version.clone()),
            None => self.version.clone(),
        }
    }

    /// The running build including any supplemental.
    pub fn running_build(&self) -> &str {
        self.supplemental
            .as_ref()
            .map_or(self.build.as_str(), |s| s.build.as_str())
    }
}

/// An update Apple's servers offer this device (from the catalog's `AssetSets` and security
/// improvements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedUpdate {
    /// With the supplemental extra for security improvements.
    pub version: OsVersion,
    pub build: String,
    /// The base build a supplemental release applies to.
    pub prerequisite_build: Option<String>,
}

/// Who the device is and how it behaves.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// Sent as `X-Enrollment-ID` (the UDID on a device channel).
    pub enrollment_id: String,
    pub udid: String,
    pub serial_number: String,
    pub platform: Platform,
    /// `device.model.identifier`, such as `iPhone15,2` or `Mac14,2`.
    pub model_identifier: String,
    /// `softwareupdate.device-id`: the board id of a Mac, the product type otherwise.
    pub software_update_device_id: Option<String>,
    /// The OS it runs now; installs change it.
    pub os: OsState,
    pub supervised: bool,
    pub failure_mode: FailureMode,
    /// What the device can download; empty means "anything asked for" (builds are then
    /// synthesised).
    pub offered_updates: Arc<[OfferedUpdate]>,
    /// Also send the `device.*` items a real first report carried without a subscription.
    pub report_unsubscribed_device_items: bool,
    /// Write reports in Apple's byte layout (indented, `" : "`); compact JSON otherwise.
    pub apple_json_layout: bool,
    /// The device's local clock. `None`: installs run through without waiting for the
    /// enforcement deadline; set, `prepared` waits until the `TargetLocalDateTime`.
    pub local_time: Option<DateTime>,
    /// The device's UTC clock, for failure timestamps; `None`: the system's.
    pub utc_time: Option<jiff::Timestamp>,
}

impl DeviceSpec {
    /// A supervised device with the given identity and OS; the serial number is derived from
    /// the enrollment id, the software-update id is the model for everything but Macs.
    pub fn new(
        enrollment_id: &str,
        platform: Platform,
        model_identifier: &str,
        os_version: &str,
        build: &str,
    ) -> Result<Self, SimError> {
        if enrollment_id.trim().is_empty() || model_identifier.trim().is_empty() {
            return Err(SimError::Config(
                "enrollment id and model identifier must not be empty".into(),
            ));
        }
        Ok(DeviceSpec {
            enrollment_id: enrollment_id.to_string(),
            udid: enrollment_id.to_string(),
            serial_number: derived_serial(enrollment_id),
            platform,
            model_identifier: model_identifier.to_string(),
            software_update_device_id: (platform != Platform::MacOs)
                .then(|| model_identifier.to_string()),
            os: OsState::new(os_version, build)?,
            supervised: true,
            failure_mode: FailureMode::Never,
            offered_updates: Arc::from(Vec::new()),
            report_unsubscribed_device_items: false,
            apple_json_layout: true,
            local_time: None,
            utc_time: None,
        })
    }

    fn target(&self) -> Target<'_> {
        Target {
            platform: self.platform,
            version: &self.os.version,
            supervised: self.supervised,
        }
    }
}

/// Ten characters from the enrollment id, like a post-2021 serial number.
fn derived_serial(enrollment_id: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789CDFGHJKLMNPQRTVWXY";
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in enrollment_id.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..10)
        .map(|i| {
            let index = (hash >> (i * 6)) as usize % ALPHABET.len();
            char::from(ALPHABET[index])
        })
        .collect()
}

/// The four kinds of declaration, as `declaration-items` groups them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Category {
    Activation,
    Configuration,
    Asset,
    Management,
}

impl Category {
    const ALL: [Category; 4] = [
        Category::Activation,
        Category::Configuration,
        Category::Asset,
        Category::Management,
    ];

    /// The `declaration/<category>/<Identifier>` path segment.
    fn path(self) -> &'static str {
        match self {
            Category::Activation => "activation",
            Category::Configuration => "configuration",
            Category::Asset => "asset",
            Category::Management => "management",
        }
    }

    /// The key in `management.declarations`.
    fn status_key(self) -> &'static str {
        match self {
            Category::Activation => "activations",
            Category::Configuration => "configurations",
            Category::Asset => "assets",
            Category::Management => "management",
        }
    }

    fn accepts(self, declaration_type: &str) -> bool {
        let prefix = match self {
            Category::Activation => "com.apple.activation.",
            Category::Configuration => "com.apple.configuration.",
            Category::Asset => "com.apple.asset.",
            Category::Management => "com.apple.management.",
        };
        declaration_type.starts_with(prefix)
    }
}

/// `valid` in `management.declarations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Validity {
    Valid,
    Invalid,
    Unknown,
}

impl Validity {
    fn as_str(self) -> &'static str {
        match self {
            Validity::Valid => "valid",
            Validity::Invalid => "invalid",
            Validity::Unknown => "unknown",
        }
    }
}

/// A status reason object (`code`, `description`, `details`).
fn reason(code: &str, description: String, details: Value) -> Value {
    json!({ "code": code, "description": description, "details": details })
}

/// An enforcement payload, checked.
#[derive(Debug, Clone, PartialEq)]
struct Enforcement {
    target_version: OsVersion,
    target_version_text: String,
    target_build: Option<String>,
    deadline: DateTime,
    deadline_text: String,
}

/// Where an update takes the device.
#[derive(Debug, Clone, PartialEq)]
struct UpdateTarget {
    os: OsState,
    /// False when the device's catalog has no such update: the download fails.
    offered: bool,
}

impl UpdateTarget {
    fn pending_version(&self) -> (String, String) {
        (
            self.os.running().to_string(),
            self.os.running_build().to_string(),
        )
    }
}

/// A declaration the device holds.
#[derive(Debug, Clone)]
struct Held {
    declaration_type: String,
    server_token: String,
    payload: Map<String, Value>,
    /// The check made when the declaration was activated; `None` while it is not.
    check: Option<Result<Option<Enforcement>, Value>>,
    active: bool,
    valid: Validity,
    reasons: Vec<Value>,
}

/// The install in progress.
#[derive(Debug, Clone)]
struct InFlight {
    declaration: String,
    target: UpdateTarget,
    deadline: DateTime,
    deadline_text: String,
}

#[derive(Debug, Clone, Default)]
struct Failure {
    count: u32,
    reason: Option<String>,
    timestamp: Option<String>,
}

/// The device's DDM state.
#[derive(Debug, Clone)]
struct DdmState {
    declarations_token: Option<String>,
    held: BTreeMap<(Category, String), Held>,
    subscriptions: BTreeSet<String>,
    /// Item values the server acknowledged (by dotted name).
    reported: BTreeMap<String, Value>,
    full_report_due: bool,
    install: InstallState,
    in_flight: Option<InFlight>,
    failure: Failure,
    failed_idle: u32,
    installs_completed: u32,
    reports_sent: u64,
    last_report: Option<Value>,
}

impl Default for DdmState {
    fn default() -> Self {
        DdmState {
            declarations_token: None,
            held: BTreeMap::new(),
            subscriptions: BTreeSet::new(),
            reported: BTreeMap::new(),
            full_report_due: true,
            install: InstallState::None,
            in_flight: None,
            failure: Failure::default(),
            failed_idle: 0,
            installs_completed: 0,
            reports_sent: 0,
            last_report: None,
        }
    }
}

/// A declaration as the device reports it in `management.declarations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclarationState {
    /// `activation`, `configuration`, `asset` or `management`.
    pub category: &'static str,
    pub identifier: String,
    pub declaration_type: String,
    pub server_token: String,
    pub active: bool,
    /// `valid`, `invalid` or `unknown`.
    pub valid: &'static str,
    /// Reason codes, such as `Error.ConfigurationCannotBeApplied`.
    pub reasons: Vec<String>,
    /// The reason objects as reported.
    pub reason_objects: Vec<Value>,
}

/// An enforcement declaration a device holds (see [`SimDevice::held_enforcements`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldEnforcement {
    pub identifier: String,
    pub target_version: String,
    pub target_build: Option<String>,
    pub deadline: DateTime,
    pub active: bool,
    /// `valid`, `invalid` or `unknown`.
    pub valid: &'static str,
}

/// What one check-in did.
#[derive(Debug, Clone, Default)]
pub struct SyncOutcome {
    /// HTTP requests sent.
    pub requests: u32,
    /// The `DeclarationsToken` differed, so `declaration-items` was read.
    pub declarations_changed: bool,
    /// Identifiers fetched (new, or with a changed ServerToken).
    pub fetched: Vec<String>,
    /// Listed declarations skipped because their ServerToken was unchanged.
    pub unchanged: usize,
    /// Identifiers dropped because the manifest no longer lists them.
    pub removed: Vec<String>,
    /// Listed declarations the server answered 404 for (retried next sync).
    pub missing: Vec<String>,
    /// The status report sent, if any.
    pub report: Option<Value>,
    /// Protocol oddities that did not stop the check-in (length limits, token mismatch).
    pub warnings: Vec<String>,
    /// Latency of each request, in order.
    pub latencies: Vec<Duration>,
}

/// A simulated device.
#[derive(Debug, Clone)]
pub struct SimDevice {
    spec: DeviceSpec,
    state: DdmState,
}

#[derive(Deserialize)]
struct TokensResponse {
    #[serde(rename = "SyncTokens")]
    sync_tokens: SyncTokens,
}

#[derive(Deserialize)]
struct SyncTokens {
    #[serde(rename = "DeclarationsToken")]
    declarations_token: String,
}

#[derive(Deserialize)]
struct DeclarationItemsResponse {
    #[serde(rename = "Declarations")]
    declarations: ManifestDeclarations,
    #[serde(rename = "DeclarationsToken")]
    declarations_token: String,
}

/// All four arrays are required by `declarationitemsresponse.yaml`.
#[derive(Deserialize)]
struct ManifestDeclarations {
    #[serde(rename = "Activations")]
    activations: Vec<ManifestItem>,
    #[serde(rename = "Configurations")]
    configurations: Vec<ManifestItem>,
    #[serde(rename = "Assets")]
    assets: Vec<ManifestItem>,
    #[serde(rename = "Management")]
    management: Vec<ManifestItem>,
}

#[derive(Deserialize)]
struct ManifestItem {
    #[serde(rename = "Identifier")]
    identifier: String,
    #[serde(rename = "ServerToken")]
    server_token: String,
}

#[derive(Deserialize)]
struct WireDeclaration {
    #[serde(rename = "Type")]
    declaration_type: String,
    #[serde(rename = "Identifier")]
    identifier: String,
    #[serde(rename = "ServerToken")]
    server_token: String,
    #[serde(rename = "Payload")]
    payload: Map<String, Value>,
}

fn parse_body<T: for<'de> Deserialize<'de>>(endpoint: &str, body: &[u8]) -> Result<T, SimError> {
    serde_json::from_slice(body).map_err(|e| SimError::Protocol {
        endpoint: endpoint.to_string(),
        why: format!("not the expected JSON: {e}"),
    })
}

/// A status report ready to send, with what it acknowledges once the server takes it.
struct PendingReport {
    body: Value,
    values: BTreeMap<String, Value>,
    full: bool,
}

impl SimDevice {
    pub fn new(spec: DeviceSpec) -> Self {
        SimDevice {
            spec,
            state: DdmState::default(),
        }
    }

    pub fn spec(&self) -> &DeviceSpec {
        &self.spec
    }

    /// Change identity, OS or behaviour between steps (the next report shows the difference).
    pub fn spec_mut(&mut self) -> &mut DeviceSpec {
        &mut self.spec
    }

    pub fn enrollment_id(&self) -> &str {
        &self.spec.enrollment_id
    }

    pub fn os(&self) -> &OsState {
        &self.spec.os
    }

    pub fn install_state(&self) -> InstallState {
        self.state.install
    }

    /// `(os-version, build-version)` of the update in progress.
    pub fn pending_version(&self) -> Option<(String, String)> {
        self.state
            .in_flight
            .as_ref()
            .map(|f| f.target.pending_version())
    }

    /// `softwareupdate.failure-reason.count`.
    pub fn failure_count(&self) -> u32 {
        self.state.failure.count
    }

    pub fn installs_completed(&self) -> u32 {
        self.state.installs_completed
    }

    pub fn declarations_token(&self) -> Option<&str> {
        self.state.declarations_token.as_deref()
    }

    /// Every declaration held, in `management.declarations` order.
    pub fn declarations(&self) -> Vec<DeclarationState> {
        self.state
            .held
            .iter()
            .map(|((category, identifier), held)| DeclarationState {
                category: category.path(),
                identifier: identifier.clone(),
                declaration_type: held.declaration_type.clone(),
                server_token: held.server_token.clone(),
                active: held.active,
                valid: held.valid.as_str(),
                reasons: held
                    .reasons
                    .iter()
                    .filter_map(|r| r.get("code").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect(),
                reason_objects: held.reasons.clone(),
            })
            .collect()
    }

    pub fn declaration(&self, identifier: &str) -> Option<DeclarationState> {
        self.declarations()
            .into_iter()
            .find(|d| d.identifier == identifier)
    }

    /// A held declaration as the server sent it (`Type`, `Identifier`, `ServerToken`,
    /// `Payload`), for checks against Apple's schemas.
    pub fn declaration_json(&self, identifier: &str) -> Option<Value> {
        let held = Category::ALL
            .iter()
            .find_map(|c| self.state.held.get(&(*c, identifier.to_string())))?;
        Some(json!({
            "Type": held.declaration_type,
            "Identifier": identifier,
            "ServerToken": held.server_token,
            "Payload": held.payload,
        }))
    }

    /// Every held enforcement whose payload names a version and a well-formed deadline, active
    /// or not: what the server handed out, as the device holds it.
    pub fn held_enforcements(&self) -> Vec<HeldEnforcement> {
        self.state
            .held
            .iter()
            .filter(|((c, _), h)| {
                *c == Category::Configuration && h.declaration_type == items::ENFORCEMENT
            })
            .filter_map(|((_, identifier), h)| {
                let text = |key: &str| h.payload.get(key).and_then(Value::as_str);
                let deadline =
                    DateTime::strptime("%Y-%m-%dT%H:%M:%S", text("TargetLocalDateTime")?).ok()?;
                Some(HeldEnforcement {
                    identifier: identifier.clone(),
                    target_version: text("TargetOSVersion")?.to_string(),
                    target_build: text("TargetBuildVersion").map(str::to_string),
                    deadline,
                    active: h.active,
                    valid: h.valid.as_str(),
                })
            })
            .collect()
    }

    /// The `TargetLocalDateTime` of the install in progress.
    pub fn in_flight_deadline(&self) -> Option<DateTime> {
        self.state.in_flight.as_ref().map(|f| f.deadline)
    }

    /// The value of a status item (dotted name) as the server last acknowledged it.
    pub fn acknowledged(&self, name: &str) -> Option<&Value> {
        self.state.reported.get(name)
    }

    /// Identifiers of the active configurations.
    pub fn active_configurations(&self) -> Vec<String> {
        self.state
            .held
            .iter()
            .filter(|((category, _), held)| *category == Category::Configuration && held.active)
            .map(|((_, identifier), _)| identifier.clone())
            .collect()
    }

    /// The status items active subscriptions name.
    pub fn subscriptions(&self) -> Vec<String> {
        self.state.subscriptions.iter().cloned().collect()
    }

    /// The last status report the server accepted.
    pub fn last_report(&self) -> Option<&Value> {
        self.state.last_report.as_ref()
    }

    pub fn reports_sent(&self) -> u64 {
        self.state.reports_sent
    }

    /// Make the next report a full one, as the daily safety sync does.
    pub fn request_full_report(&mut self) {
        self.state.full_report_due = true;
    }

    /// Every item the device would report now, nested as in a report.
    pub fn status_items(&self) -> Map<String, Value> {
        let mut tree = Map::new();
        for (name, value) in self.current_values() {
            insert_dotted(&mut tree, &name, value);
        }
        tree
    }

    /// One check-in: tokens, manifest and declarations when they changed, then a status
    /// report when there is something to report.
    pub async fn sync(
        &mut self,
        client: &reqwest::Client,
        server: &ServerConfig,
    ) -> Result<SyncOutcome, SimError> {
        let mut outcome = SyncOutcome::default();
        let tokens = self
            .request(client, server, Endpoint::Tokens, None, &mut outcome)
            .await?;
        let tokens: TokensResponse = parse_body("tokens", &tokens.body)?;
        let token = tokens.sync_tokens.declarations_token;
        if token.len() > 256 {
            outcome.warnings.push(format!(
                "DeclarationsToken is {} octets (at most 256)",
                token.len()
            ));
        }
        if self.state.declarations_token.as_deref() != Some(token.as_str()) {
            outcome.declarations_changed = true;
            self.fetch_declarations(client, server, &token, &mut outcome)
                .await?;
        }
        if let Some(pending) = self.pending_report() {
            let body = if self.spec.apple_json_layout {
                to_apple_vec(&pending.body)
            } else {
                serde_json::to_vec(&pending.body).unwrap_or_default()
            };
            self.request(client, server, Endpoint::Status, Some(body), &mut outcome)
                .await?;
            if pending.full {
                self.state.reported = pending.values;
            } else {
                self.state.reported.extend(pending.values);
            }
            self.state.full_report_due = false;
            self.state.reports_sent += 1;
            self.state.last_report = Some(pending.body.clone());
            outcome.report = Some(pending.body);
        }
        Ok(outcome)
    }

    /// Sends one request and requires HTTP 200.
    async fn request(
        &self,
        client: &reqwest::Client,
        server: &ServerConfig,
        endpoint: Endpoint<'_>,
        body: Option<Vec<u8>>,
        outcome: &mut SyncOutcome,
    ) -> Result<Answer, SimError> {
        let answer = self.send(client, server, endpoint, body, outcome).await?;
        if answer.status != 200 {
            return Err(SimError::Status {
                endpoint: endpoint.name(),
                status: answer.status,
            });
        }
        Ok(answer)
    }

    async fn send(
        &self,
        client: &reqwest::Client,
        server: &ServerConfig,
        endpoint: Endpoint<'_>,
        body: Option<Vec<u8>>,
        outcome: &mut SyncOutcome,
    ) -> Result<Answer, SimError> {
        outcome.requests += 1;
        let answer =
            client::exchange(client, server, &self.spec.enrollment_id, endpoint, body).await?;
        outcome.latencies.push(answer.latency);
        Ok(answer)
    }

    async fn fetch_declarations(
        &mut self,
        client: &reqwest::Client,
        server: &ServerConfig,
        token: &str,
        outcome: &mut SyncOutcome,
    ) -> Result<(), SimError> {
        let items = self
            .request(client, server, Endpoint::DeclarationItems, None, outcome)
            .await?;
        let items: DeclarationItemsResponse = parse_body("declaration-items", &items.body)?;
        if items.declarations_token != token {
            outcome.warnings.push(format!(
                "declaration-items DeclarationsToken {:?} differs from tokens {token:?}",
                items.declarations_token
            ));
        }
        let m = items.declarations;
        let manifest: Vec<(Category, ManifestItem)> = Category::ALL
            .into_iter()
            .zip([m.activations, m.configurations, m.assets, m.management])
            .flat_map(|(category, list)| list.into_iter().map(move |item| (category, item)))
            .collect();
        let mut seen = HashSet::new();
        for (_, item) in &manifest {
            if !seen.insert(item.identifier.as_str()) {
                return Err(SimError::Protocol {
                    endpoint: "declaration-items".into(),
                    why: format!("Identifier {:?} is listed twice", item.identifier),
                });
            }
            if item.identifier.is_empty() || item.server_token.is_empty() {
                return Err(SimError::Protocol {
                    endpoint: "declaration-items".into(),
                    why: "an Identifier or ServerToken is empty".into(),
                });
            }
            for (what, value) in [
                ("Identifier", &item.identifier),
                ("ServerToken", &item.server_token),
            ] {
                if value.len() > 64 {
                    outcome.warnings.push(format!(
                        "{what} {value:?} is {} octets (at most 64)",
                        value.len()
                    ));
                }
            }
        }

        let mut fetched = Vec::new();
        let mut complete = true;
        for (category, item) in &manifest {
            let key = (*category, item.identifier.clone());
            if self
                .state
                .held
                .get(&key)
                .is_some_and(|h| h.server_token == item.server_token)
            {
                outcome.unchanged += 1;
                continue;
            }
            let endpoint = Endpoint::Declaration {
                category: category.path(),
                identifier: &item.identifier,
            };
            let answer = self.send(client, server, endpoint, None, outcome).await?;
            let name = endpoint.name();
            if answer.status == 404 {
                outcome.missing.push(item.identifier.clone());
                complete = false;
                continue;
            }
            if answer.status != 200 {
                return Err(SimError::Status {
                    endpoint: name,
                    status: answer.status,
                });
            }
            let declaration: WireDeclaration = parse_body(&name, &answer.body)?;
            let protocol = |why: String| SimError::Protocol {
                endpoint: name.clone(),
                why,
            };
            if declaration.identifier != item.identifier {
                return Err(protocol(format!(
                    "the body's Identifier is {:?}",
                    declaration.identifier
                )));
            }
            if declaration.server_token != item.server_token {
                return Err(protocol(format!(
                    "the body's ServerToken {:?} differs from declaration-items' {:?}",
                    declaration.server_token, item.server_token
                )));
            }
            if !category.accepts(&declaration.declaration_type) {
                return Err(protocol(format!(
                    "Type {:?} is not an {} declaration",
                    declaration.declaration_type,
                    category.path()
                )));
            }
            fetched.push((key, declaration));
        }

        // Apply everything at once: a failed check-in leaves the device as it was.
        let listed: HashSet<(Category, &str)> = manifest
            .iter()
            .map(|(c, i)| (*c, i.identifier.as_str()))
            .collect();
        let gone: Vec<(Category, String)> = self
            .state
            .held
            .keys()
            .filter(|(c, id)| !listed.contains(&(*c, id.as_str())))
            .cloned()
            .collect();
        for key in gone {
            self.state.held.remove(&key);
            outcome.removed.push(key.1);
        }
        for (key, declaration) in fetched {
            outcome.fetched.push(key.1.clone());
            self.state.held.insert(
                key,
                Held {
                    declaration_type: declaration.declaration_type,
                    server_token: declaration.server_token,
                    payload: declaration.payload,
                    check: None,
                    active: false,
                    valid: Validity::Unknown,
                    reasons: Vec::new(),
                },
            );
        }
        if complete {
            self.state.declarations_token = Some(items.declarations_token);
        }
        self.evaluate();
        Ok(())
    }

    /// Applies the held set: activations activate configurations, each activated
    /// configuration is checked once, subscriptions are recomputed, and an install whose
    /// enforcement went away is cancelled.
    fn evaluate(&mut self) {
        let configurations: BTreeSet<String> = self
            .state
            .held
            .keys()
            .filter(|(c, _)| *c == Category::Configuration)
            .map(|(_, id)| id.clone())
            .collect();
        let mut referenced: BTreeSet<String> = BTreeSet::new();
        let activation_keys: Vec<(Category, String)> = self
            .state
            .held
            .keys()
            .filter(|(c, _)| *c == Category::Activation)
            .cloned()
            .collect();
        for key in activation_keys {
            let Some(held) = self.state.held.get(&key) else {
                continue;
            };
            let (active, valid, reasons, names) =
                self.check_activation(&key.1, held, &configurations);
            if active {
                referenced.extend(names);
            }
            if let Some(held) = self.state.held.get_mut(&key) {
                held.active = active;
                held.valid = valid;
                held.reasons = reasons;
            }
        }

        let spec = &self.spec;
        let mut subscriptions = BTreeSet::new();
        for ((category, identifier), held) in &mut self.state.held {
            match category {
                Category::Activation => {}
                Category::Configuration => {
                    if !referenced.contains(identifier) {
                        held.check = None;
                        held.active = false;
                        held.valid = Validity::Unknown;
                        held.reasons = vec![reason(
                            "Info.NotReferencedByActivation",
                            format!(
                                "Configuration “{identifier}:{}” is not referenced by an activation.",
                                held.server_token
                            ),
                            json!({"Identifier": identifier, "ServerToken": held.server_token}),
                        )];
                        continue;
                    }
                    if held.check.is_none() {
                        held.check = Some(spec.check_configuration(identifier, held));
                    }
                    match &held.check {
                        Some(Err(why)) => {
                            held.active = false;
                            held.valid = Validity::Invalid;
                            held.reasons = vec![why.clone()];
                        }
                        _ => {
                            held.active = true;
                            held.valid = Validity::Valid;
                            held.reasons = Vec::new();
                            if held.declaration_type == items::SUBSCRIPTIONS {
                                subscriptions.extend(subscribed_names(&held.payload));
                            }
                        }
                    }
                }
                Category::Asset | Category::Management => {
                    if !items::declaration_type_supported(&held.declaration_type, spec.target()) {
                        held.active = false;
                        held.valid = Validity::Invalid;
                        held.reasons = vec![not_supported(identifier, &held.server_token)];
                    } else {
                        held.active = true;
                        held.valid = Validity::Valid;
                        held.reasons = Vec::new();
                    }
                }
            }
        }
        // Assets count as active only while an active configuration mentions them.
        let mentioned: BTreeSet<String> = self
            .state
            .held
            .iter()
            .filter(|((c, _), h)| *c == Category::Configuration && h.active)
            .flat_map(|(_, h)| h.payload.values().flat_map(strings_in).collect::<Vec<_>>())
            .collect();
        for ((category, identifier), held) in &mut self.state.held {
            if *category == Category::Asset
                && held.valid == Validity::Valid
                && !mentioned.contains(identifier)
            {
                held.active = false;
                held.valid = Validity::Unknown;
                held.reasons = vec![reason(
                    "Info.NotReferencedByConfiguration",
                    format!(
                        "Asset “{identifier}:{}” is not referenced by a configuration.",
                        held.server_token
                    ),
                    json!({"Identifier": identifier, "ServerToken": held.server_token}),
                )];
            }
        }
        self.state.subscriptions = subscriptions;
        self.reconcile_in_flight();
    }

    /// (active, valid, reasons, configurations it names that are present).
    fn check_activation(
        &self,
        identifier: &str,
        held: &Held,
        configurations: &BTreeSet<String>,
    ) -> (bool, Validity, Vec<Value>, Vec<String>) {
        let token = &held.server_token;
        if !items::declaration_type_supported(&held.declaration_type, self.spec.target()) {
            return (
                false,
                Validity::Invalid,
                vec![not_supported(identifier, token)],
                Vec::new(),
            );
        }
        let unknown = unknown_keys(&held.payload, &["StandardConfigurations", "Predicate"]);
        if !unknown.is_empty() {
            return (
                false,
                Validity::Invalid,
                vec![unknown_keys_reason(&unknown)],
                Vec::new(),
            );
        }
        let names: Option<Vec<String>> = held
            .payload
            .get("StandardConfigurations")
            .and_then(Value::as_array)
            .and_then(|list| {
                list.iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect()
            });
        let Some(names) = names else {
            return (
                false,
                Validity::Invalid,
                vec![cannot_deserialize(
                    "StandardConfigurations must be an array of strings",
                )],
                Vec::new(),
            );
        };
        if let Some(predicate) = held.payload.get("Predicate") {
            let details =
                |p: &str| json!({"Identifier": identifier, "ServerToken": token, "Predicate": p});
            let Some(text) = predicate.as_str() else {
                return (
                    false,
                    Validity::Invalid,
                    vec![cannot_deserialize("Predicate must be a string")],
                    Vec::new(),
                );
            };
            match evaluate_predicate(text, |name| self.predicate_value(name)) {
                Ok(true) => {}
                Ok(false) => {
                    return (
                        false,
                        Validity::Valid,
                        vec![reason(
                            "Info.Predicate",
                            format!("Activation “{identifier}:{token}” predicate is false."),
                            details(text),
                        )],
                        Vec::new(),
                    );
                }
                Err(()) => {
                    return (
                        false,
                        Validity::Invalid,
                        vec![reason(
                            "Error.UnableToParsePredicate",
                            format!(
                                "Activation “{identifier}:{token}” predicate cannot be parsed."
                            ),
                            details(text),
                        )],
                        Vec::new(),
                    );
                }
            }
        }
        let (present, missing): (Vec<String>, Vec<String>) =
            names.into_iter().partition(|n| configurations.contains(n));
        if missing.is_empty() {
            (true, Validity::Valid, Vec::new(), present)
        } else {
            // "A failure to install one of the configurations doesn't prevent other
            // configurations from installing": the rest is activated.
            let why = reason(
                "Error.MissingConfigurations",
                format!("Activation “{identifier}:{token}” references missing configurations."),
                json!({"Identifier": identifier, "ServerToken": token, "ConfigurationIdentifiers": missing}),
            );
            (true, Validity::Invalid, vec![why], present)
        }
    }

    /// Values predicates may read: the `device.*` items and the software-update id.
    fn predicate_value(&self, name: &str) -> Option<Value> {
        if name.starts_with("device.") || name == "softwareupdate.device-id" {
            self.item_value(name)
        } else {
            None
        }
    }

    /// Cancels the install when its enforcement is gone, inactive or now targets elsewhere;
    /// follows a moved deadline.
    fn reconcile_in_flight(&mut self) {
        let Some(flight) = &self.state.in_flight else {
            return;
        };
        let current = self
            .state
            .held
            .get(&(Category::Configuration, flight.declaration.clone()))
            .filter(|h| h.active)
            .and_then(|h| match &h.check {
                Some(Ok(Some(enforcement))) => Some(enforcement.clone()),
                _ => None,
            });
        let keep = current.and_then(|enforcement| {
            let target = self.spec.resolve(&enforcement);
            (target == flight.target).then_some(enforcement)
        });
        match keep {
            Some(enforcement) => {
                if let Some(flight) = &mut self.state.in_flight {
                    flight.deadline = enforcement.deadline;
                    flight.deadline_text = enforcement.deadline_text;
                }
            }
            None => {
                self.state.in_flight = None;
                self.state.install = InstallState::None;
                self.state.failure = Failure::default();
                self.state.failed_idle = 0;
            }
        }
    }

    /// The enforcement to process next: active, valid, above the running OS, earliest
    /// `TargetLocalDateTime` first.
    fn next_enforcement(&self) -> Option<InFlight> {
        let running = self.spec.os.running();
        let running_build = Build::new(self.spec.os.running_build());
        let mut candidates: Vec<InFlight> = self
            .state
            .held
            .iter()
            .filter(|((c, _), h)| *c == Category::Configuration && h.active)
            .filter_map(|((_, identifier), h)| match &h.check {
                Some(Ok(Some(enforcement))) => Some((identifier, enforcement)),
                _ => None,
            })
            .filter_map(|(identifier, enforcement)| {
                let target = self.spec.resolve(enforcement);
                let version = target.os.running();
                let newer = version > running
                    || (version == running
                        && Build::new(target.os.running_build()) > running_build);
                newer.then(|| InFlight {
                    declaration: identifier.clone(),
                    target,
                    deadline: enforcement.deadline,
                    deadline_text: enforcement.deadline_text.clone(),
                })
            })
            .collect();
        candidates.sort_by(|a, b| {
            a.deadline
                .cmp(&b.deadline)
                .then_with(|| a.declaration.cmp(&b.declaration))
        });
        candidates.into_iter().next()
    }

    /// Moves the install one step; returns the new state when it changed.
    pub fn advance(&mut self) -> Option<InstallState> {
        let before = self.state.install;
        match self.state.install {
            InstallState::None => {
                let next = self.next_enforcement()?;
                self.state.in_flight = Some(next);
                self.state.failure = Failure::default();
                self.state.install = InstallState::Downloading;
            }
            InstallState::Downloading => {
                let offered = self.state.in_flight.as_ref().map(|f| f.target.offered);
                match offered {
                    None => self.state.install = InstallState::None,
                    Some(false) => {
                        let version = self.pending_version().map(|(v, _)| v).unwrap_or_default();
                        self.fail(format!(
                            "Download failed: no update to {version} is available for this device."
                        ));
                    }
                    Some(true) => self.state.install = InstallState::Prepared,
                }
            }
            InstallState::Prepared => {
                let deadline = self.state.in_flight.as_ref().map(|f| f.deadline);
                match (deadline, self.spec.local_time) {
                    (None, _) => self.state.install = InstallState::None,
                    (Some(deadline), Some(now)) if now < deadline => return None,
                    (Some(_), _) => self.state.install = InstallState::Installing,
                }
            }
            InstallState::Installing => {
                let fails = match self.spec.failure_mode {
                    FailureMode::Never => false,
                    FailureMode::Always => true,
                    FailureMode::FirstAttempts(n) => self.state.failure.count < n,
                };
                if fails {
                    self.fail("Installation failed: the update could not be applied.".into());
                } else {
                    self.complete_install();
                }
            }
            InstallState::Failed => {
                self.state.failed_idle += 1;
                if self.state.failed_idle < RETRY_AFTER_ADVANCES {
                    return None;
                }
                self.state.failed_idle = 0;
                self.state.install = if self.state.in_flight.is_some() {
                    InstallState::Downloading
                } else {
                    InstallState::None
                };
            }
        }
        (self.state.install != before).then_some(self.state.install)
    }

    fn fail(&mut self, why: String) {
        let at = self.spec.utc_time.unwrap_or_else(jiff::Timestamp::now);
        let failure = &mut self.state.failure;
        failure.count = failure.count.saturating_add(1);
        failure.reason = Some(why);
        failure.timestamp = Some(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        self.state.failed_idle = 0;
        self.state.install = InstallState::Failed;
    }

    /// The restart into the new OS.
    fn complete_install(&mut self) {
        if let Some(flight) = self.state.in_flight.take() {
            self.spec.os = flight.target.os;
            self.state.installs_completed += 1;
        }
        self.state.install = InstallState::None;
        self.state.failure = Failure::default();
    }

    /// Dotted names the device reports now.
    fn reportable(&self) -> BTreeSet<&str> {
        let mut names: BTreeSet<&str> = items::IMPLICIT_ITEMS.into_iter().collect();
        names.extend(self.state.subscriptions.iter().map(String::as_str));
        if self.spec.report_unsubscribed_device_items {
            names.extend(items::BASELINE_DEVICE_ITEMS);
        }
        let target = self.spec.target();
        names.retain(|name| items::status_item_available(name, target));
        names
    }

    fn current_values(&self) -> BTreeMap<String, Value> {
        self.reportable()
            .into_iter()
            .filter_map(|name| self.item_value(name).map(|v| (name.to_string(), v)))
            .collect()
    }

    fn pending_report(&self) -> Option<PendingReport> {
        let full = self.state.full_report_due;
        let values = self.current_values();
        let changed: BTreeMap<String, Value> = if full {
            values
        } else {
            values
                .into_iter()
                .filter(|(name, value)| self.state.reported.get(name) != Some(value))
                .collect()
        };
        if !full && changed.is_empty() {
            return None;
        }
        let mut tree = Map::new();
        for (name, value) in &changed {
            insert_dotted(&mut tree, name, value.clone());
        }
        let mut body = Map::new();
        body.insert("StatusItems".into(), Value::Object(tree));
        body.insert("Errors".into(), Value::Array(Vec::new()));
        if items::full_report_key_supported(self.spec.platform, &self.spec.os.version) {
            body.insert("FullReport".into(), Value::Bool(full));
        }
        Some(PendingReport {
            body: Value::Object(body),
            values: changed,
            full,
        })
    }

    /// The value of one status item, as the device reports it.
    fn item_value(&self, name: &str) -> Option<Value> {
        let spec = &self.spec;
        let os = &spec.os;
        let value = match name {
            "device.identifier.serial-number" => spec.serial_number.clone().into(),
            "device.identifier.udid" => spec.udid.clone().into(),
            "device.model.family" => {
                items::model_family(spec.platform, &spec.model_identifier).into()
            }
            "device.model.identifier" => spec.model_identifier.clone().into(),
            "device.model.marketing-name" => {
                items::marketing_name(spec.platform, &spec.model_identifier).into()
            }
            "device.operating-system.build-version" => os.build.clone().into(),
            "device.operating-system.family" => spec.platform.as_str().into(),
            "device.operating-system.marketing-name" => {
                format!("{} {}", spec.platform.as_str(), os.version.numeric()).into()
            }
            "device.operating-system.supplemental.build-version" => os.running_build().into(),
            "device.operating-system.supplemental.extra-version" => os
                .supplemental
                .as_ref()
                .map(|s| s.extra.clone())
                .unwrap_or_default()
                .into(),
            "device.operating-system.version" => os.version.numeric().into(),
            "management.client-capabilities" => items::client_capabilities(spec.target()),
            "management.declarations" => self.declarations_value(),
            "softwareupdate.beta-enrollment" => "".into(),
            "softwareupdate.device-id" => spec.software_update_device_id.clone()?.into(),
            "softwareupdate.install-state" => self.state.install.as_str().into(),
            "softwareupdate.pending-version" => {
                let mut value = Map::new();
                let (version, build) = self.pending_version().unwrap_or_default();
                value.insert("os-version".into(), version.into());
                value.insert("build-version".into(), build.into());
                if let Some(flight) = &self.state.in_flight {
                    value.insert(
                        "target-local-date-time".into(),
                        flight.deadline_text.clone().into(),
                    );
                }
                Value::Object(value)
            }
            "softwareupdate.failure-reason" => {
                let failure = &self.state.failure;
                let mut value = Map::new();
                value.insert("count".into(), failure.count.into());
                if let Some(reason) = &failure.reason {
                    value.insert("reason".into(), reason.clone().into());
                }
                if let Some(timestamp) = &failure.timestamp {
                    value.insert("timestamp".into(), timestamp.clone().into());
                }
                Value::Object(value)
            }
            "softwareupdate.install-reason" => match &self.state.in_flight {
                Some(flight) => {
                    json!({"reason": ["declaration"], "declaration-id": flight.declaration})
                }
                None => json!({"reason": []}),
            },
            _ => return None,
        };
        Some(value)
    }

    fn declarations_value(&self) -> Value {
        let mut lists: BTreeMap<&'static str, Vec<Value>> = Category::ALL
            .iter()
            .map(|c| (c.status_key(), Vec::new()))
            .collect();
        for ((category, identifier), held) in &self.state.held {
            let mut entry = Map::new();
            entry.insert("identifier".into(), identifier.clone().into());
            entry.insert("server-token".into(), held.server_token.clone().into());
            entry.insert("active".into(), held.active.into());
            entry.insert("valid".into(), held.valid.as_str().into());
            if !held.reasons.is_empty() {
                entry.insert("reasons".into(), Value::Array(held.reasons.clone()));
            }
            lists
                .entry(category.status_key())
                .or_default()
                .push(Value::Object(entry));
        }
        Value::Object(
            lists
                .into_iter()
                .map(|(k, v)| (k.to_string(), Value::Array(v)))
                .collect(),
        )
    }
}

impl DeviceSpec {
    /// Checks an activated configuration: `Ok(Some)` for a valid enforcement.
    fn check_configuration(
        &self,
        identifier: &str,
        held: &Held,
    ) -> Result<Option<Enforcement>, Value> {
        if !items::declaration_type_supported(&held.declaration_type, self.target()) {
            return Err(not_supported(identifier, &held.server_token));
        }
        match held.declaration_type.as_str() {
            items::ENFORCEMENT => self.check_enforcement(&held.payload).map(Some),
            items::SUBSCRIPTIONS => check_subscriptions(&held.payload).map(|()| None),
            items::SETTINGS => {
                let unknown = unknown_keys(
                    &held.payload,
                    &[
                        "Notifications",
                        "Deferrals",
                        "RecommendedCadence",
                        "AutomaticActions",
                        "RapidSecurityResponse",
                        "AllowStandardUserOSUpdates",
                        "Beta",
                    ],
                );
                if unknown.is_empty() {
                    Ok(None)
                } else {
                    Err(unknown_keys_reason(&unknown))
                }
            }
            _ => Ok(None),
        }
    }

    fn check_enforcement(&self, payload: &Map<String, Value>) -> Result<Enforcement, Value> {
        let unknown = unknown_keys(
            payload,
            &[
                "TargetOSVersion",
                "TargetBuildVersion",
                "TargetLocalDateTime",
                "DetailsURL",
            ],
        );
        if !unknown.is_empty() {
            return Err(unknown_keys_reason(&unknown));
        }
        let text = |key: &str, required: bool| -> Result<Option<String>, Value> {
            match payload.get(key) {
                None if required => Err(cannot_deserialize(&format!("{key} is required"))),
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(cannot_deserialize(&format!("{key} must be a string"))),
            }
        };
        let version_text = text("TargetOSVersion", true)?.unwrap_or_default();
        let deadline_text = text("TargetLocalDateTime", true)?.unwrap_or_default();
        let target_build = text("TargetBuildVersion", false)?.filter(|b| !b.trim().is_empty());
        text("DetailsURL", false)?;
        let target_version: OsVersion = version_text
            .parse()
            .map_err(|e| cannot_deserialize(&format!("TargetOSVersion: {e}")))?;
        let deadline = DateTime::strptime("%Y-%m-%dT%H:%M:%S", &deadline_text)
            .ok()
            .filter(|_| deadline_text.len() == 19)
            .ok_or_else(|| {
                cannot_deserialize(&format!(
                    "TargetLocalDateTime {deadline_text:?} is not yyyy-mm-ddThh:mm:ss"
                ))
            })?;
        let enforcement = Enforcement {
            target_version,
            target_version_text: version_text,
            target_build,
            deadline,
            deadline_text,
        };

        // Devices compare the declaration as written with what they run: "15.7" on a device
        // running 15.7.7 is "older than current version" even though 15.7.x has newer patches.
        let running = self.os.running();
        let running_build = Build::new(self.os.running_build());
        let literal = self.literal_target(&enforcement);
        let newer = literal > running
            || (literal == running
                && enforcement
                    .target_build
                    .as_deref()
                    .is_some_and(|b| Build::new(b) > running_build));
        if !newer {
            let relation = if literal == running {
                "is the same as"
            } else {
                "is older than"
            };
            return Err(cannot_apply(format!(
                "kSUCoreErrorDDMInvalidDeclarationFailure Invalid declaration: target OS version ({}) {relation} current version ({running})",
                enforcement.target_version_text
            )));
        }
        let target = self.resolve(&enforcement);
        if target.os.supplemental.is_some()
            && target.os.version > self.os.version
            && self.os.version.major() < items::direct_supplemental_major(self.platform)
        {
            return Err(cannot_apply(format!(
                "kSUCoreErrorDDMInvalidDeclarationFailure Invalid declaration: target OS version ({}) requires base version {} to be installed first",
                target.os.running(),
                target.os.version
            )));
        }
        Ok(enforcement)
    }

    /// The version the declaration names, with the supplemental extra its build implies.
    fn literal_target(&self, enforcement: &Enforcement) -> OsVersion {
        let offered = enforcement.target_build.as_deref().and_then(|build| {
            self.offered_updates.iter().find(|o| {
                o.build == build
                    && o.version
                        .base()
                        .starts_with(&enforcement.target_version.base())
            })
        });
        match offered {
            Some(o) => o.version.clone(),
            None => match enforcement
                .target_build
                .as_deref()
                .and_then(supplemental_letter)
            {
                Some(letter) if enforcement.target_version.extra().is_none() => {
                    OsVersion::with_extra(
                        &enforcement.target_version.numeric(),
                        Some(&format!("({letter})")),
                    )
                    .unwrap_or_else(|_| enforcement.target_version.clone())
                }
                _ => enforcement.target_version.clone(),
            },
        }
    }

    /// Where an enforcement takes this device.
    fn resolve(&self, enforcement: &Enforcement) -> UpdateTarget {
        let wanted = &enforcement.target_version;
        if let Some(build) = enforcement.target_build.as_deref() {
            match self.offered_updates.iter().find(|o| o.build == build) {
                // `TargetBuildVersion` picks the build when it belongs to the version.
                Some(o) if o.version.base().starts_with(&wanted.base()) => {
                    return self.target_from_offer(o);
                }
                // "If the build version isn't consistent with the target OS version […], the
                // target OS version takes precedence."
                Some(_) => {}
                None => return self.synthetic_target(wanted, Some(build)),
            }
        }
        let supplemental = wanted.extra();
        let best = self
            .offered_updates
            .iter()
            .filter(|o| {
                o.version.base().starts_with(&wanted.base()) && o.version.extra() == supplemental
            })
            .max_by(|a, b| {
                a.version
                    .cmp(&b.version)
                    .then_with(|| Build::new(&b.build).cmp(&Build::new(&a.build)))
            });
        match best {
            Some(o) => self.target_from_offer(o),
            None => {
                let mut target = self.synthetic_target(wanted, None);
                target.offered = self.offered_updates.is_empty();
                target
            }
        }
    }

    fn target_from_offer(&self, offer: &OfferedUpdate) -> UpdateTarget {
        let os = match offer.version.extra() {
            Some(extra) => {
                let base = offer.version.base();
                let base_build = offer
                    .prerequisite_build
                    .clone()
                    .or_else(|| (base == self.os.version).then(|| self.os.build.clone()))
                    .or_else(|| {
                        self.offered_updates
                            .iter()
                            .find(|o| o.version.extra().is_none() && o.version == base)
                            .map(|o| o.build.clone())
                    })
                    .unwrap_or_else(|| synthetic_build(&base));
                OsState {
                    version: base,
                    build: base_build,
                    supplemental: Some(Supplemental {
                        extra: extra.to_string(),
                        build: offer.build.clone(),
                    }),
                }
            }
            None => OsState {
                version: offer.version.clone(),
                build: offer.build.clone(),
                supplemental: None,
            },
        };
        UpdateTarget { os, offered: true }
    }

    /// A target the catalog does not describe: the version as asked, the build as given (a
    /// build with a long number and a letter suffix, like `23D771330a`, is a supplemental),
    /// or a made-up one.
    fn synthetic_target(&self, wanted: &OsVersion, build: Option<&str>) -> UpdateTarget {
        let base = wanted.base();
        let letter = wanted
            .extra()
            .map(|e| e.trim_matches(|c| c == '(' || c == ')').to_string())
            .or_else(|| build.and_then(supplemental_letter));
        let os = match letter {
            Some(letter) => {
                let base_build = if base == self.os.version {
                    self.os.build.clone()
                } else {
                    synthetic_build(&base)
                };
                let supplemental_build = build
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{base_build}{letter}"));
                OsState {
                    version: base,
                    build: base_build,
                    supplemental: Some(Supplemental {
                        extra: format!("({letter})"),
                        build: supplemental_build,
                    }),
                }
            }
            None => OsState {
                build: build.map_or_else(|| synthetic_build(&base), str::to_string),
                version: base,
                supplemental: None,
            },
        };
        UpdateTarget { os, offered: true }
    }
}

/// The letter of a supplemental build (`23D771330a` → `a`): a build number of six or more
/// digits followed by lowercase letters (beta builds such as `20A5303i` have four).
pub(crate) fn supplemental_letter(build: &str) -> Option<String> {
    let rest = build.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_uppercase());
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let suffix = rest.get(digits..)?;
    let well_formed = build.len() > rest.len() + 1 && rest.len() < build.len();
    (well_formed
        && digits >= 6
        && !suffix.is_empty()
        && suffix.chars().all(|c| c.is_ascii_lowercase()))
    .then(|| suffix.to_string())
}

/// A plausible build for a version the catalog does not list: `26.3.1` → `26S301`.
fn synthetic_build(version: &OsVersion) -> String {
    let numeric = version.numeric();
    let patch: u32 = numeric
        .split('.')
        .nth(2)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    format!("{}S{}{:02}", version.major(), version.minor(), patch)
}

fn unknown_keys(payload: &Map<String, Value>, known: &[&str]) -> Vec<String> {
    payload
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .cloned()
        .collect()
}

fn unknown_keys_reason(keys: &[String]) -> Value {
    reason(
        "Error.UnknownPayloadKeys",
        "The declaration contains unknown payload keys.".into(),
        json!({ "UnknownPayloadKeys": keys }),
    )
}

fn cannot_deserialize(why: &str) -> Value {
    reason(
        "Error.ConfigurationCannotBeDeserialized",
        "The configuration is not valid.".into(),
        json!({ "Error": why }),
    )
}

fn cannot_apply(why: String) -> Value {
    reason(
        "Error.ConfigurationCannotBeApplied",
        "The configuration cannot be applied to the device.".into(),
        json!({ "Error": why }),
    )
}

fn not_supported(identifier: &str, token: &str) -> Value {
    reason(
        "Error.ConfigurationNotSupported",
        format!(
            "Declaration “{identifier}:{token}” is not supported for this platform, scope, or enrollment type."
        ),
        json!({"Identifier": identifier, "ServerToken": token}),
    )
}

fn check_subscriptions(payload: &Map<String, Value>) -> Result<(), Value> {
    let unknown = unknown_keys(payload, &["StatusItems"]);
    if !unknown.is_empty() {
        return Err(unknown_keys_reason(&unknown));
    }
    let Some(list) = payload.get("StatusItems").and_then(Value::as_array) else {
        return Err(cannot_deserialize("StatusItems must be an array"));
    };
    for entry in list {
        let Some(entry) = entry.as_object() else {
            return Err(cannot_deserialize(
                "StatusItems entries must be dictionaries",
            ));
        };
        let unknown = unknown_keys(entry, &["Name"]);
        if !unknown.is_empty() {
            let paths: Vec<String> = unknown.iter().map(|k| format!("StatusItems.{k}")).collect();
            return Err(unknown_keys_reason(&paths));
        }
        if !entry.get("Name").is_some_and(Value::is_string) {
            return Err(cannot_deserialize("StatusItems[].Name must be a string"));
        }
    }
    Ok(())
}

fn subscribed_names(payload: &Map<String, Value>) -> Vec<String> {
    payload
        .get("StatusItems")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("Name").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// Every string inside a JSON value (for asset references).
fn strings_in(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(strings_in).collect(),
        Value::Object(map) => map.values().flat_map(strings_in).collect(),
        _ => Vec::new(),
    }
}

/// A small NSPredicate subset: `TRUEPREDICATE`, `FALSEPREDICATE`, and clauses
/// `@status(<item>) ==|!= '<text>'` joined by `AND`/`&&`. Anything else is a parse error.
fn evaluate_predicate(text: &str, value: impl Fn(&str) -> Option<Value>) -> Result<bool, ()> {
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("TRUEPREDICATE") {
        return Ok(true);
    }
    if trimmed.eq_ignore_ascii_case("FALSEPREDICATE") {
        return Ok(false);
    }
    let mut rest = trimmed;
    let mut result = true;
    loop {
        rest = rest.trim_start().strip_prefix("@status(").ok_or(())?;
        let close = rest.find(')').ok_or(())?;
        let name = rest[..close].trim();
        rest = rest[close + 1..].trim_start();
        let (negated, after) = if let Some(after) = rest.strip_prefix("!=") {
            (true, after)
        } else if let Some(after) = rest.strip_prefix("==") {
            (false, after)
        } else {
            return Err(());
        };
        rest = after.trim_start();
        let quote = rest
            .chars()
            .next()
            .filter(|c| *c == '\'' || *c == '"')
            .ok_or(())?;
        rest = &rest[1..];
        let end = rest.find(quote).ok_or(())?;
        let literal = &rest[..end];
        rest = rest[end + 1..].trim_start();
        let actual = value(name).map(|v| match v {
            Value::String(s) => s,
            other => other.to_string(),
        });
        let equal = actual.as_deref() == Some(literal);
        result &= equal != negated;
        if rest.is_empty() {
            return Ok(result);
        }
        rest = if let Some(after) = rest.strip_prefix("&&") {
            after
        } else if rest.get(..3).is_some_and(|w| w.eq_ignore_ascii_case("AND")) {
            rest.get(3..).unwrap_or_default()
        } else {
            return Err(());
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_cover_the_simple_forms() {
        let value = |name: &str| match name {
            "device.model.family" => Some(Value::from("Mac")),
            "device.operating-system.version" => Some(Value::from("15.5")),
            _ => None,
        };
        assert_eq!(evaluate_predicate("TRUEPREDICATE", value), Ok(true));
        assert_eq!(
            evaluate_predicate("@status(device.model.family) == 'Mac'", value),
            Ok(true)
        );
        assert_eq!(
            evaluate_predicate(
                "@status(device.model.family) == 'Mac' AND @status(device.operating-system.version) != \"15.5\"",
                value
            ),
            Ok(false)
        );
        assert_eq!(
            evaluate_predicate("@status(device.model.family) == 'iPhone'", value),
            Ok(false)
        );
        assert!(evaluate_predicate("@status(x) BEGINSWITH 'a'", value).is_err());
        assert!(evaluate_predicate("@status(x == 'a'", value).is_err());
        assert!(evaluate_predicate("@status(x) == 'a' OR", value).is_err());
    }

    #[test]
    fn supplemental_builds_are_told_from_betas() {
        assert_eq!(supplemental_letter("23D771330a").as_deref(), Some("a"));
        assert_eq!(supplemental_letter("20F770750b").as_deref(), Some("b"));
        assert_eq!(supplemental_letter("20A5303i"), None);
        assert_eq!(supplemental_letter("25G83"), None);
        assert_eq!(supplemental_letter(""), None);
        assert_eq!(
            synthetic_build(&"26.3.1".parse().expect("version")),
            "26S301"
        );
    }

    #[test]
    fn os_state_reads_supplemental_versions() {
        let os = OsState::new("26.3.1 (a)", "23D8133").expect("valid");
        assert_eq!(os.version.to_string(), "26.3.1");
        assert_eq!(os.running().to_string(), "26.3.1 (a)");
        assert_eq!(os.running_build(), "23D8133a");
        assert!(OsState::new("twenty", "1A1").is_err());
        assert!(OsState::new("26.1", " ").is_err());
    }
}
