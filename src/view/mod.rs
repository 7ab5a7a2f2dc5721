//! The per-device view (`GET /api/v1/devices`, `devices list|show`): every device of the last
//! pass with where it stands against each resource, listed with filters and pages, and one device
//! explained whole (`explain`). Pure: the pass's results and what the store says of one device go
//! in, documents come out; the HTTP side gathers and serves them.

pub mod explain;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::validate::Checked;
use crate::backend::DeviceRecord;
use crate::catalog::{Catalog, Platform};
use crate::inventory::Device;
use crate::pass::report::each_source;
use crate::resolve::{Plan, Source};
use crate::status::bucket::Bucket;

/// Devices per page when `limit` is not given, and at most.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// What a caller may see: everything, or the devices governed by resources in some namespaces
/// (a token allowed to read UpdatePolicy status there and nowhere cluster-wide).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Namespaces(BTreeSet<String>),
}

impl Scope {
    pub fn sees(&self, namespace: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespaces(allowed) => allowed.contains(namespace),
        }
    }
}

/// What the last pass knew, kept for the device API until the next pass replaces it.
pub struct PassOutput {
    /// When the pass ran.
    pub at: Timestamp,
    pub checked: Arc<Checked>,
    /// Sorted by enrollment id.
    pub devices: Arc<Vec<Device>>,
    /// The catalog the pass resolved with: `show` resolves its one device again (the pass's
    /// plan is not kept: at 100,000 devices it is tens of MiB, held twice during the next pass).
    pub catalog: Arc<Catalog>,
    /// The inventory file's devices and when they were true: `show` merges one device again
    /// from every source to tell where each fact came from.
    pub seed: Arc<Vec<Device>>,
    pub seed_at: Timestamp,
    pub assume_supervised: bool,
}

/// One device's standing against each source that applies to it (parallel to the devices).
struct Row {
    /// The most urgent of its standings; `None` when no resource applies to it.
    state: Option<Bucket>,
    standings: Box<[(Source, Bucket)]>,
}

/// Every device of a pass with its standings: what lists are filtered from.
pub struct DeviceIndex {
    pub pass: PassOutput,
    rows: Vec<Row>,
}

/// The order of urgency a device's overall state is chosen by.
fn urgency(state: Bucket) -> u8 {
    match state {
        Bucket::Failed => 0,
        Bucket::Stale => 1,
        Bucket::Pending => 2,
        Bucket::Downloading => 3,
        Bucket::Prepared => 4,
        Bucket::Installing => 5,
        Bucket::Compliant => 6,
        Bucket::NotApplicable => 7,
    }
}

/// `UpdatePolicy namespace/name` or `EnforcementTarget namespace/name`, as the status document
/// and the metrics name a source.
pub fn source_name(checked: &Checked, source: Source) -> String {
    match source {
        Source::Policy(p) => format!("UpdatePolicy {}", checked.policies[p].key),
        Source::Target(t) => format!("EnforcementTarget {}", checked.targets[t].key),
    }
}

pub fn source_namespace(checked: &Checked, source: Source) -> &str {
    match source {
        Source::Policy(p) => &checked.policies[p].key.namespace,
        Source::Target(t) => &checked.targets[t].key.namespace,
    }
}

impl DeviceIndex {
    /// Indexes a pass: each device's standings in `plan` (the pass's, parallel to the
    /// devices), from the records the pass read.
    pub fn new(pass: PassOutput, plan: &Plan, records: &[DeviceRecord]) -> DeviceIndex {
        let by_id: HashMap<&str, &DeviceRecord> = records
            .iter()
            .map(|r| (r.enrollment_id.as_str(), r))
            .collect();
        let rows = pass
            .devices
            .iter()
            .zip(&plan.devices)
            .map(|(device, outcome)| {
                let record = by_id.get(device.enrollment_id.as_str()).copied();
                let mut standings = Vec::new();
                each_source(plan, outcome, record, pass.at, |source, state, _| {
                    standings.push((source, state));
                });
                Row {
                    state: standings
                        .iter()
                        .map(|(_, s)| *s)
                        .min_by_key(|s| urgency(*s)),
                    standings: standings.into_boxed_slice(),
                }
            })
            .collect();
        DeviceIndex { pass, rows }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The position of the device with this enrollment id, or else this serial number.
    pub fn find(&self, id_or_serial: &str) -> Option<usize> {
        let devices = &self.pass.devices;
        devices
            .binary_search_by(|d| d.enrollment_id.as_str().cmp(id_or_serial))
            .ok()
            .or_else(|| {
                devices
                    .iter()
                    .position(|d| d.serial_number.as_deref() == Some(id_or_serial))
            })
    }

    /// The device's standings the scope sees.
    pub fn standings(&self, position: usize, scope: &Scope) -> Vec<(Source, Bucket)> {
        self.rows[position]
            .standings
            .iter()
            .filter(|(source, _)| scope.sees(source_namespace(&self.pass.checked, *source)))
            .copied()
            .collect()
    }

    /// Whether the scope sees the device at all: everything sees every device; a namespace
    /// scope only those a resource of its namespaces applies to.
    pub fn visible(&self, position: usize, scope: &Scope) -> bool {
        match scope {
            Scope::All => true,
            Scope::Namespaces(_) => !self.standings(position, scope).is_empty(),
        }
    }

    /// One page of the devices the query and the scope select, in enrollment id order.
    pub fn list(&self, query: &ListQuery, scope: &Scope) -> ListPage {
        let devices = &self.pass.devices;
        let start = match &query.after {
            Some(after) => devices.partition_point(|d| d.enrollment_id.as_str() <= after.as_str()),
            None => 0,
        };
        let mut items = Vec::with_capacity(query.limit.min(devices.len()));
        let mut more = false;
        for position in start..devices.len() {
            let Some(item) = self.item(position, query, scope) else {
                continue;
            };
            if items.len() == query.limit {
                more = true;
                break;
            }
            items.push(item);
        }
        let next = if more {
            items
                .last()
                .map(|i: &ListItem| continue_token(&i.enrollment_id))
        } else {
            None
        };
        ListPage {
            kind: "DeviceList",
            pass_at: self.pass.at,
            items,
            next,
        }
    }

    fn item(&self, position: usize, query: &ListQuery, scope: &Scope) -> Option<ListItem> {
        let device = &self.pass.devices[position];
        if query.platform.is_some_and(|p| p != device.platform) {
            return None;
        }
        let row = &self.rows[position];
        let seen: Vec<(Source, Bucket)> = match scope {
            Scope::All => row.standings.to_vec(),
            Scope::Namespaces(_) => {
                let seen = self.standings(position, scope);
                if seen.is_empty() {
                    return None;
                }
                seen
            }
        };
        let wanted = |(source, state): &(Source, Bucket)| {
            query.source.is_none_or(|s| s == *source) && query.state.is_none_or(|s| s == *state)
        };
        if (query.source.is_some() || query.state.is_some()) && !seen.iter().any(wanted) {
            return None;
        }
        let checked = &self.pass.checked;
        let state = match scope {
            Scope::All => row.state,
            Scope::Namespaces(_) => seen.iter().map(|(_, s)| *s).min_by_key(|s| urgency(*s)),
        };
        Some(ListItem {
            enrollment_id: device.enrollment_id.clone(),
            serial_number: device.serial_number.clone(),
            platform: device.platform.as_str().to_string(),
            model: device.model.clone(),
            os_version: device.os_version.to_string(),
            state: state.map(|s| s.as_str().to_string()),
            sources: seen
                .iter()
                .map(|(source, state)| SourceState {
                    name: source_name(checked, *source),
                    state: state.as_str().to_string(),
                })
                .collect(),
        })
    }
}

/// A device in a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListItem {
    pub enrollment_id: String,
    #[serde(default)]
    pub serial_number: Option<String>,
    pub platform: String,
    pub model: String,
    pub os_version: String,
    /// The most urgent of its states (failed, stale, pending, … compliant, notApplicable);
    /// absent when no resource applies to it.
    #[serde(default)]
    pub state: Option<String>,
    pub sources: Vec<SourceState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceState {
    /// `UpdatePolicy namespace/name` or `EnforcementTarget namespace/name`.
    pub name: String,
    pub state: String,
}

/// One page of devices.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListPage {
    pub kind: &'static str,
    /// When the pass the states come from ran.
    pub pass_at: Timestamp,
    pub items: Vec<ListItem>,
    /// Give as `continue` for the next page; absent on the last one.
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A list request's filters and position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub state: Option<Bucket>,
    pub source: Option<Source>,
    pub platform: Option<Platform>,
    pub limit: usize,
    /// The enrollment id the previous page ended with.
    pub after: Option<String>,
}

/// A query parameter that cannot be used: 400, naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query parameter {parameter}: {why}")]
pub struct QueryError {
    pub parameter: String,
    pub why: String,
}

fn query_error(parameter: &str, why: impl Into<String>) -> QueryError {
    QueryError {
        parameter: parameter.to_string(),
        why: why.into(),
    }
}

const CONTINUE_PREFIX: &str = "v1:";

fn continue_token(last: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{CONTINUE_PREFIX}{last}"))
}

fn read_continue(token: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    text.strip_prefix(CONTINUE_PREFIX).map(str::to_string)
}

impl ListQuery {
    /// Reads `state`, `source`, `platform`, `limit` and `continue`; anything else, or a value
    /// that means nothing, is refused naming the parameter. `source` names a resource of the
    /// pass (`UpdatePolicy ns/name`, or with a `/` after the kind).
    pub fn parse(
        params: &[(String, String)],
        checked: &Checked,
        scope: &Scope,
    ) -> Result<ListQuery, QueryError> {
        let mut query = ListQuery {
            state: None,
            source: None,
            platform: None,
            limit: DEFAULT_LIMIT,
            after: None,
        };
        let mut seen = BTreeSet::new();
        for (name, value) in params {
            if !seen.insert(name.as_str()) {
                return Err(query_error(name, "given more than once"));
            }
            match name.as_str() {
                "state" => {
                    query.state = Some(
                        Bucket::ALL
                            .into_iter()
                            .find(|b| b.as_str() == value)
                            .ok_or_else(|| {
                                let names: Vec<&str> =
                                    Bucket::ALL.iter().map(|b| b.as_str()).collect();
                                query_error(
                                    "state",
                                    format!(
                                        "unknown state {value:?} (one of {})",
                                        names.join(", ")
                                    ),
                                )
                            })?,
                    );
                }
                "platform" => {
                    query.platform = Some(
                        value
                            .parse()
                            .map_err(|why: String| query_error("platform", why))?,
                    );
                }
                "source" => query.source = Some(find_source(checked, scope, value)?),
                "limit" => {
                    query.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            query_error(
                                "limit",
                                format!("{value:?} is not a number from 1 to {MAX_LIMIT}"),
                            )
                        })?;
                }
                "continue" => {
                    query.after = Some(read_continue(value).ok_or_else(|| {
                        query_error("continue", "not a token this server gave out")
                    })?);
                }
                other => {
                    return Err(query_error(
                        other,
                        "unknown (known: state, source, platform, limit, continue)",
                    ));
                }
            }
        }
        Ok(query)
    }
}

/// The resource a `source` parameter names, among those the scope sees (one outside it is
/// answered as if it did not exist).
fn find_source(checked: &Checked, scope: &Scope, value: &str) -> Result<Source, QueryError> {
    let (kind, key) = value
        .split_once([' ', '/'])
        .map(|(k, rest)| (k, rest.trim()))
        .unwrap_or(("", value));
    let found = match kind {
        "UpdatePolicy" => checked
            .policies
            .iter()
            .position(|p| p.key.to_string() == key && scope.sees(&p.key.namespace))
            .map(Source::Policy),
        "EnforcementTarget" => checked
            .targets
            .iter()
            .position(|t| t.key.to_string() == key && scope.sees(&t.key.namespace))
            .map(Source::Target),
        _ => {
            return Err(query_error(
                "source",
                format!(
                    "{value:?} is not `UpdatePolicy namespace/name` or `EnforcementTarget namespace/name`"
                ),
            ));
        }
    };
    found.ok_or_else(|| query_error("source", format!("no {kind} {key} in force")))
}

#[cfg(test)]
mod tests;
