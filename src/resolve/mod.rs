//! The resolver, pure and deterministic: (groups, policies, targets, inventory, catalog, now) →
//! every device's whole declaration set, the reasons where a source gives it nothing, and the
//! EnforcementTargets policies generate. One pass computes everything, so one component can
//! write each device's set (the one-writer rule).

mod deadline;
mod generate;
#[cfg(test)]
mod installable_tests;
pub mod ledger;
mod reason;
mod select;
mod single;

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use jiff::civil::DateTime;

pub use deadline::deadline;
pub use generate::{target_name, target_object};
pub use ledger::{DeviceRollouts, Ledger, RingDeadline, RingDeadlines, RingKey, Rollout, Rollouts};
pub use reason::Reason;
pub use select::{Term, explain as explain_selection, selects, shard_bucket};
pub use single::{Required, lowest_at_least, policy_target};

use crate::api::validate::{CheckedGroup, CheckedPolicy, CheckedTarget, ObjectKey};
use crate::catalog::{
    AssetSet, Build, Catalog, Choice, DeviceOs, OsVersion, Platform, Query, ReleaseKind, Strategy,
    runs_prerelease, usable_set,
};
use crate::declarations::{
    self, Declaration, MergedSettings, Unsupported, enforcement_supported, settings_supported,
};
use crate::inventory::{Device, EnrollmentType};

/// Everything one resolver pass reads.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub groups: &'a [CheckedGroup],
    pub policies: &'a [CheckedPolicy],
    pub targets: &'a [CheckedTarget],
    pub devices: &'a [Device],
    pub catalog: &'a Catalog,
    pub now: Timestamp,
}

/// Where a decision comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// Index into `Input::policies`.
    Policy(usize),
    /// Index into `Input::targets`.
    Target(usize),
}

/// An enforcement a device keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Enforcement {
    pub source: Source,
    /// The policy ring it comes from (0 for the policy's own groups and for targets).
    pub ring: usize,
    pub version: OsVersion,
    pub build: Option<Build>,
    pub deadline: DateTime,
    /// Index into `Plan::declarations`.
    pub declaration: u32,
    /// For a policy's enforcement, how the ledger has it.
    pub handed: Option<Handed>,
}

/// How a policy's enforcement stands in the rollout ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handed {
    /// The intent its deadline was computed under (`ledger::intent`).
    pub intent: String,
    /// When the device was handed this deadline (now, for a first hand-out).
    pub handed_at: jiff::Timestamp,
    /// The ring's deadline for this rollout; the device's own is later when it joined late.
    pub ring_deadline: DateTime,
}

/// Why one source gives one device nothing (or something other than asked).
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub source: Source,
    pub reason: Reason,
    pub detail: String,
}

/// A release a policy took the device to and the device now runs (the policy's answer is still
/// that release): the generated target for it counts the device as compliant.
#[derive(Debug, Clone, PartialEq)]
pub struct Met {
    /// Index into `Input::policies`.
    pub policy: usize,
    pub ring: usize,
    pub version: OsVersion,
    /// The ledger entry that took the device there (kept as it is).
    pub taken: Rollout,
    /// The deadline of the generated target that counts the device (with `policy`, `ring`,
    /// the device's platform and `version`, it names one entry of `Plan::generated`).
    pub deadline: DateTime,
}

/// One device's outcome.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DevicePlan {
    /// Indexes into `Plan::declarations`, sorted: the device's whole set.
    pub declarations: Vec<u32>,
    pub enforcements: Vec<Enforcement>,
    pub notes: Vec<Note>,
    /// Policies that apply to the device, in order.
    pub policies: Vec<usize>,
    /// Releases policies took the device to that it runs now, with the target counting it.
    pub met: Vec<Met>,
}

impl DevicePlan {
    /// Drops the spare room of its lists: a vector's first push makes room for four, and a plan
    /// holds one outcome per device (100,000 on a large fleet) for the whole pass.
    fn shrink_to_fit(&mut self) {
        self.declarations.shrink_to_fit();
        self.enforcements.shrink_to_fit();
        self.notes.shrink_to_fit();
        self.policies.shrink_to_fit();
        self.met.shrink_to_fit();
    }

    /// What to remember for the device: the release each policy is taking it to, or took it to
    /// and it still runs (keyed by the policy's `namespace/name`).
    pub fn rollouts(&self, policies: &[CheckedPolicy]) -> DeviceRollouts {
        let key = |p: usize| policies[p].key.to_string();
        self.enforcements
            .iter()
            .filter_map(|e| match e.source {
                Source::Policy(p) => Some((
                    key(p),
                    Rollout {
                        version: e.version.to_string(),
                        deadline: e.deadline,
                        intent: e
                            .handed
                            .as_ref()
                            .map(|h| h.intent.clone())
                            .unwrap_or_default(),
                        handed_at: e
                            .handed
                            .as_ref()
                            .map_or(jiff::Timestamp::UNIX_EPOCH, |h| h.handed_at),
                    },
                )),
                Source::Target(_) => None,
            })
            .chain(self.met.iter().map(|m| (key(m.policy), m.taken.clone())))
            .collect()
    }
}

/// An EnforcementTarget a policy generates: one per (ring, platform, version, deadline) it
/// takes devices to; it also counts the devices it took there that run it now. Once every one
/// of them does, it stays, counting them (`devices == 0`: nothing is enforced from it), at the
/// latest deadline they were given, until the policy moves them on.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedTarget {
    /// The object name, unique within the policy's namespace.
    pub name: String,
    pub policy: usize,
    pub ring: usize,
    pub platform: Platform,
    pub version: OsVersion,
    pub deadline: DateTime,
    /// Exact build per software-update device id, where one is needed.
    pub builds: BTreeMap<String, Build>,
    /// Devices it takes to its version (they hold its enforcement).
    pub devices: u64,
    /// Devices the policy took to its version that run it now.
    pub up_to_date: u64,
    /// Devices it takes to its version by a later deadline of their own (they joined the
    /// rollout after it was handed out, and the minimum lead time counts from their joining).
    pub later_personal: u64,
}

impl GeneratedTarget {
    /// Every device it has left nothing to do for: no enforcement comes from it.
    pub fn compliant_only(&self) -> bool {
        self.devices == 0
    }
}

/// The result of a pass.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Every distinct declaration, each stored once.
    pub declarations: Vec<Declaration>,
    /// Parallel to `Input::devices`.
    pub devices: Vec<DevicePlan>,
    pub generated: Vec<GeneratedTarget>,
    /// Member device indexes per group, parallel to `Input::groups`.
    pub members: Vec<Vec<u32>>,
    /// The ring deadlines this pass's enforcements count from: those already in the ledger
    /// and those handed out now.
    pub rings: RingDeadlines,
    pub warnings: Vec<String>,
}

#[derive(Default)]
struct Declarations {
    list: Vec<Declaration>,
    by_identifier: HashMap<String, u32>,
    enforcement: HashMap<(String, Option<String>, DateTime, Option<String>), u32>,
    subscriptions: HashMap<u32, u32>,
    settings: HashMap<(Vec<usize>, Platform, bool), Option<u32>>,
    activation: HashMap<Vec<u32>, u32>,
}

impl Declarations {
    fn intern(&mut self, declaration: Declaration) -> u32 {
        if let Some(index) = self.by_identifier.get(&declaration.identifier) {
            return *index;
        }
        let index = u32::try_from(self.list.len()).unwrap_or(u32::MAX);
        self.by_identifier
            .insert(declaration.identifier.clone(), index);
        self.list.push(declaration);
        index
    }
}

/// Why a source gives a device nothing: the reason, its detail and, for a policy whose answer
/// the device already runs, that answer.
struct Refused {
    reason: Reason,
    detail: String,
    met: Option<OsVersion>,
}

impl Refused {
    fn new(reason: Reason, detail: String) -> Self {
        Refused {
            reason,
            detail,
            met: None,
        }
    }
}

impl From<Refused> for (Reason, String) {
    fn from(refused: Refused) -> Self {
        (refused.reason, refused.detail)
    }
}

type GeneratedKey = (usize, usize, Platform, String, DateTime);

/// A candidate enforcement before superseded ones are dropped.
struct Candidate {
    source: Source,
    ring: usize,
    version: OsVersion,
    build: Option<Build>,
    deadline: DateTime,
    details_url: Option<String>,
    handed: Option<Handed>,
}

/// The detail of a `BootstrapTokenMissing` note.
pub const BOOTSTRAP_TOKEN_DETAIL: &str = "no escrowed bootstrap token is known for this Apple-silicon Mac: its user will be asked to authenticate when the update is enforced";

/// Runs one pass with an empty ledger: every deadline as if handed out now.
pub fn resolve(input: Input<'_>) -> Plan {
    resolve_with(input, &Ledger::default())
}

/// Runs one pass; `ledger` holds what was handed out before (deadlines stay as handed).
pub fn resolve_with(input: Input<'_>, ledger: &Ledger) -> Plan {
    let rollouts = &ledger.devices;
    let mut plan = Plan {
        members: vec![Vec::new(); input.groups.len()],
        devices: Vec::with_capacity(input.devices.len()),
        ..Plan::default()
    };
    let group_index: HashMap<&ObjectKey, usize> = input
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| (&g.key, i))
        .collect();
    // For each policy, the ring each group is in (first ring naming it wins).
    let policy_rings: Vec<HashMap<usize, usize>> = input
        .policies
        .iter()
        .map(|policy| {
            let mut rings = HashMap::new();
            for (r, ring) in policy.rings.iter().enumerate() {
                for group in &ring.groups {
                    if let Some(g) = group_index.get(group) {
                        rings.entry(*g).or_insert(r);
                    }
                }
            }
            rings
        })
        .collect();
    let policy_keys: Vec<String> = input.policies.iter().map(|p| p.key.to_string()).collect();
    let target_groups: Vec<Vec<usize>> = input
        .targets
        .iter()
        .map(|t| {
            t.groups
                .iter()
                .filter_map(|g| group_index.get(g).copied())
                .collect()
        })
        .collect();

    let today = input
        .catalog
        .expiry_day(input.now.to_zoned(jiff::tz::TimeZone::UTC).date());
    let mut table = Declarations::default();
    let mut book = RingBook::new(&ledger.rings, input.now);
    let mut generated: BTreeMap<GeneratedKey, GeneratedTarget> = BTreeMap::new();
    let mut contested: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    // Enforced Macs without an escrowed bootstrap token, per source.
    let mut token_missing: BTreeMap<Source, u64> = BTreeMap::new();

    for (d, device) in input.devices.iter().enumerate() {
        let device_index = u32::try_from(d).unwrap_or(u32::MAX);
        let groups: Vec<usize> = input
            .groups
            .iter()
            .enumerate()
            .filter(|(_, g)| selects(g, device))
            .map(|(i, _)| i)
            .collect();
        for g in &groups {
            plan.members[*g].push(device_index);
        }
        let mut out = DevicePlan::default();
        let mut candidates: Vec<Candidate> = Vec::new();

        // Which policies apply, and in which ring.
        let applying: Vec<(usize, usize)> = policy_rings
            .iter()
            .enumerate()
            .filter_map(|(p, rings)| {
                groups
                    .iter()
                    .filter_map(|g| rings.get(g))
                    .min()
                    .map(|r| (p, *r))
            })
            .collect();
        out.policies = applying.iter().map(|(p, _)| *p).collect();
        if let [first, second, ..] = applying.as_slice() {
            *contested.entry((first.0, second.0)).or_default() += 1;
        }
        let targets: Vec<usize> = target_groups
            .iter()
            .enumerate()
            .filter(|(t, tg)| {
                let target = &input.targets[*t];
                !target.generated
                    && target.platform == device.platform
                    && tg.iter().any(|g| groups.contains(g))
            })
            .map(|(t, _)| t)
            .collect();

        let sources: Vec<Source> = applying
            .iter()
            .map(|(p, _)| Source::Policy(*p))
            .chain(targets.iter().map(|t| Source::Target(*t)))
            .collect();
        let blocked = match (enforcement_supported(device), device.catalog_device_id()) {
            (Err(Unsupported::NotSupervised), _) => Some((
                Reason::NotSupervised,
                if device.enrollment_type == EnrollmentType::User {
                    "user enrollments take no software-update declarations"
                } else {
                    "enforcement on this platform needs a supervised device"
                },
            )),
            (Err(Unsupported::OsTooOld), _) => Some((
                Reason::DeclarationNotSupported,
                "this OS version does not support software-update enforcement",
            )),
            (Ok(()), None) => Some((
                Reason::DeviceIdUnknown,
                "no software-update device id (board id) reported yet",
            )),
            (Ok(()), Some(_)) => None,
        };

        match (blocked, device.catalog_device_id()) {
            (Some((reason, detail)), _) => {
                for source in &sources {
                    out.notes.push(Note {
                        source: *source,
                        reason,
                        detail: detail.to_string(),
                    });
                }
            }
            (None, Some(device_id)) => {
                let os = DeviceOs {
                    device_id,
                    version: &device.os_version,
                    build: device.build_version.as_ref(),
                };
                for (p, ring) in &applying {
                    let policy = &input.policies[*p];
                    let (asset_set, narrowed) = usable_set(
                        policy.asset_set,
                        device.platform,
                        &device.os_version,
                        device.supervised,
                    );
                    let handed = rollouts
                        .get(&device.enrollment_id)
                        .and_then(|r| r.get(&policy_keys[*p]));
                    let at = Hand {
                        policy_key: &policy_keys[*p],
                        platform: device.platform,
                        handed,
                    };
                    match policy_candidate(
                        input, policy, asset_set, *ring, os, today, &mut book, at,
                    ) {
                        Ok(asked) => {
                            take(&mut out, &mut candidates, Source::Policy(*p), asked);
                        }
                        Err(refused) => {
                            // Up to date at the release this policy took it to.
                            let taken = rollouts
                                .get(&device.enrollment_id)
                                .and_then(|r| r.get(&policy_keys[*p]));
                            if let (Some(version), Some(taken)) = (refused.met, taken)
                                && version.to_string() == taken.version
                            {
                                out.met.push(Met {
                                    policy: *p,
                                    ring: *ring,
                                    version,
                                    taken: taken.clone(),
                                    deadline: taken.deadline,
                                });
                            }
                            out.notes.push(Note {
                                source: Source::Policy(*p),
                                reason: refused.reason,
                                detail: refused.detail,
                            });
                        }
                    }
                    // After the policy's own reason: a device's standing reads the first note.
                    if let Some(why) = narrowed {
                        out.notes.push(Note {
                            source: Source::Policy(*p),
                            reason: Reason::PublicAssetSetsOnly,
                            detail: why.to_string(),
                        });
                    }
                }
                // Hand-written targets ask for AssetSets.
                let (target_set, narrowed) = usable_set(
                    AssetSet::Mdm,
                    device.platform,
                    &device.os_version,
                    device.supervised,
                );
                for t in &targets {
                    let target = &input.targets[*t];
                    match target_candidate(input, target, device, os, target_set, today) {
                        Ok(asked) => take(&mut out, &mut candidates, Source::Target(*t), asked),
                        Err(refused) => out.notes.push(Note {
                            source: Source::Target(*t),
                            reason: refused.reason,
                            detail: refused.detail,
                        }),
                    }
                    if let Some(why) = narrowed {
                        out.notes.push(Note {
                            source: Source::Target(*t),
                            reason: Reason::PublicAssetSetsOnly,
                            detail: why.to_string(),
                        });
                    }
                }
            }
            (None, None) => {}
        }

        // Of several enforcements, keep those no earlier-or-equal deadline already covers.
        candidates.sort_by(|a, b| {
            a.deadline
                .cmp(&b.deadline)
                .then_with(|| b.version.cmp(&a.version))
                .then_with(|| a.source.cmp(&b.source))
        });
        let mut configurations: Vec<u32> = Vec::new();
        for candidate in candidates {
            if let Some(by) = out
                .enforcements
                .iter()
                .find(|k| k.deadline <= candidate.deadline && k.version >= candidate.version)
            {
                out.notes.push(Note {
                    source: candidate.source,
                    reason: Reason::Superseded,
                    detail: format!("{} by {} already takes it further", by.version, by.deadline),
                });
                continue;
            }
            let index = enforcement_declaration(&mut table, &candidate);
            configurations.push(index);
            if let Source::Policy(p) = candidate.source {
                let ring_deadline = candidate
                    .handed
                    .as_ref()
                    .map_or(candidate.deadline, |h| h.ring_deadline);
                let entry = generated
                    .entry((
                        p,
                        candidate.ring,
                        device.platform,
                        candidate.version.to_string(),
                        ring_deadline,
                    ))
                    .or_insert_with(|| GeneratedTarget {
                        name: String::new(),
                        policy: p,
                        ring: candidate.ring,
                        platform: device.platform,
                        version: candidate.version.clone(),
                        deadline: ring_deadline,
                        builds: BTreeMap::new(),
                        devices: 0,
                        up_to_date: 0,
                        later_personal: 0,
                    });
                entry.devices += 1;
                if candidate.deadline > ring_deadline {
                    entry.later_personal += 1;
                }
                if let (Some(build), Some(id)) = (&candidate.build, device.catalog_device_id()) {
                    entry.builds.insert(id.to_string(), build.clone());
                }
            }
            out.enforcements.push(Enforcement {
                source: candidate.source,
                ring: candidate.ring,
                version: candidate.version,
                build: candidate.build,
                deadline: candidate.deadline,
                declaration: index,
                handed: candidate.handed,
            });
        }

        // Sent all the same; the Mac's user will be asked to authenticate at the deadline.
        if device.platform == Platform::MacOs && device.bootstrap_token.missing() {
            let mut sources: Vec<Source> = out.enforcements.iter().map(|e| e.source).collect();
            sources.sort_unstable();
            sources.dedup();
            for source in sources {
                *token_missing.entry(source).or_default() += 1;
                out.notes.push(Note {
                    source,
                    reason: Reason::BootstrapTokenMissing,
                    detail: BOOTSTRAP_TOKEN_DETAIL.to_string(),
                });
            }
        }
        if let Some(index) = settings_declaration(&mut table, input, &out.policies, device) {
            configurations.push(index);
        }
        // No item at all where Apple's status schemas allow none for this enrollment (an
        // unsupervised Mac or watch).
        let items = declarations::status_items_mask(device);
        if items != 0 && declarations::ddm_supported(device) {
            let index = match table.subscriptions.get(&items) {
                Some(index) => *index,
                None => {
                    let index = table.intern(declarations::status_subscriptions(device));
                    table.subscriptions.insert(items, index);
                    index
                }
            };
            configurations.push(index);
        }
        if !configurations.is_empty() {
            configurations.sort_unstable();
            configurations.dedup();
            let index = match table.activation.get(&configurations) {
                Some(index) => *index,
                None => {
                    let identifiers: Vec<&str> = configurations
                        .iter()
                        .map(|i| table.list[*i as usize].identifier.as_str())
                        .collect();
                    let index = table.intern(declarations::activation(&identifiers));
                    table.activation.insert(configurations.clone(), index);
                    index
                }
            };
            configurations.push(index);
            configurations.sort_unstable();
        }
        out.declarations = configurations;
        out.shrink_to_fit();
        plan.devices.push(out);
    }

    for (g, members) in plan.members.iter().enumerate() {
        if members.is_empty() {
            plan.warnings.push(format!(
                "FleetGroup {} selects no device",
                input.groups[g].key
            ));
        }
    }
    for ((first, second), devices) in contested {
        plan.warnings.push(format!(
            "{devices} device(s) are in both UpdatePolicy {} and {}: both apply; of their enforcements the earliest deadline wins and settings merge",
            input.policies[first].key, input.policies[second].key
        ));
    }
    for (source, macs) in token_missing {
        let name = match source {
            Source::Policy(p) => format!("UpdatePolicy {}", input.policies[p].key),
            Source::Target(t) => format!("EnforcementTarget {}", input.targets[t].key),
        };
        plan.warnings.push(format!(
            "{name} enforces {macs} Apple-silicon Mac(s) without an escrowed bootstrap token: their users will be asked to authenticate at the deadline (the MDM must advertise com.apple.mdm.bootstraptoken in ServerCapabilities so Macs escrow one)"
        ));
    }
    for target in input.targets.iter().filter(|t| !t.generated) {
        let zone = jiff::tz::TimeZone::UTC;
        if deadline::instant(&zone, target.deadline).is_some_and(|at| at < input.now) {
            plan.warnings.push(format!(
                "EnforcementTarget {}: targetLocalDateTime {} has passed; devices below the target install it at once",
                target.key, target.deadline
            ));
        }
    }
    for policy in input.policies {
        if policy
            .enrollment
            .as_ref()
            .is_some_and(|gate| gate.beta_program.is_some())
        {
            plan.warnings.push(format!(
                "UpdatePolicy {}: enrollment.betaProgram enrolls a held device in the beta program only for a pre-release minimum (RequireBetaProgram); the device stays in the program after the update (Apple, softwareupdate.required.yaml)",
                policy.key
            ));
        }
    }
    count_up_to_date(input, &mut plan.devices, &mut generated);
    plan.generated = generated.into_values().collect();
    plan.rings = book.used;
    name_targets(input.policies, &mut plan.generated);
    plan.declarations = table.list;
    plan
}

/// Counts each device a policy took to the release it runs in the generated target for that
/// (policy, ring, platform, version): the one still taking other devices there (of several, the
/// one whose deadline is nearest the device's), else one kept for the devices already there, at
/// the latest deadline they were given. Each `Met` is pointed at its target.
fn count_up_to_date(
    input: Input<'_>,
    devices: &mut [DevicePlan],
    generated: &mut BTreeMap<GeneratedKey, GeneratedTarget>,
) {
    let range = |policy: usize, ring: usize, platform: Platform, version: &str| {
        (policy, ring, platform, version.to_string(), DateTime::MIN)
            ..=(policy, ring, platform, version.to_string(), DateTime::MAX)
    };
    // Versions no enforcement takes anyone to: one target for the devices already there.
    let mut only_up_to_date: BTreeMap<(usize, usize, Platform, String), (DateTime, &OsVersion)> =
        BTreeMap::new();
    for (device, outcome) in input.devices.iter().zip(devices.iter()) {
        for met in &outcome.met {
            let version = met.version.to_string();
            if generated
                .range(range(met.policy, met.ring, device.platform, &version))
                .next()
                .is_none()
            {
                only_up_to_date
                    .entry((met.policy, met.ring, device.platform, version))
                    .and_modify(|(at, _)| *at = (*at).max(met.taken.deadline))
                    .or_insert((met.taken.deadline, &met.version));
            }
        }
    }
    let made: Vec<GeneratedTarget> = only_up_to_date
        .into_iter()
        .map(
            |((policy, ring, platform, _), (deadline, version))| GeneratedTarget {
                name: String::new(),
                policy,
                ring,
                platform,
                version: version.clone(),
                deadline,
                builds: BTreeMap::new(),
                devices: 0,
                up_to_date: 0,
                later_personal: 0,
            },
        )
        .collect();
    for target in made {
        generated.insert(
            (
                target.policy,
                target.ring,
                target.platform,
                target.version.to_string(),
                target.deadline,
            ),
            target,
        );
    }
    for (device, outcome) in input.devices.iter().zip(devices.iter_mut()) {
        for met in &mut outcome.met {
            let wanted = met.taken.deadline;
            let nearest = generated
                .range_mut(range(
                    met.policy,
                    met.ring,
                    device.platform,
                    &met.version.to_string(),
                ))
                .min_by_key(|(key, _)| (key.4.duration_since(wanted).abs(), key.4));
            if let Some((key, target)) = nearest {
                target.up_to_date += 1;
                met.deadline = key.4;
            }
        }
    }
}

/// Names generated targets `{policy}-{platform}-{version}[-{ring}]`; where two would share a
/// name (one version, two deadlines: expiry dates differ per model), each gets its deadline too.
fn name_targets(policies: &[CheckedPolicy], targets: &mut [GeneratedTarget]) {
    let base: Vec<String> = targets
        .iter()
        .map(|t| {
            let policy = &policies[t.policy];
            target_name(&policy.key.name, &policy.rings[t.ring].name, t, None)
        })
        .collect();
    for (i, target) in targets.iter_mut().enumerate() {
        let shared = base.iter().filter(|b| **b == base[i]).count() > 1;
        let policy = &policies[target.policy];
        target.name = if shared {
            target_name(
                &policy.key.name,
                &policy.rings[target.ring].name,
                target,
                Some(target.deadline),
            )
        } else {
            base[i].clone()
        };
    }
}

/// What one source asks of one device: an enforcement and, where a security improvement needs
/// its base first, the improvement's own enforcement after it.
struct Asked {
    first: Candidate,
    then: Option<Candidate>,
}

type Decided = Result<Asked, Refused>;

/// Keeps what a source asks of the device, saying so where it takes two steps.
fn take(out: &mut DevicePlan, candidates: &mut Vec<Candidate>, source: Source, asked: Asked) {
    let Asked { first, then } = asked;
    if let Some(then) = &then {
        let named = |c: &Candidate| match &c.build {
            Some(build) => format!("{} ({build}) by {}", c.version, c.deadline),
            None => format!("{} by {}", c.version, c.deadline),
        };
        out.notes.push(Note {
            source,
            reason: Reason::TwoStep,
            detail: format!(
                "{} first, then {}: a security improvement below its base takes two enforcements",
                named(&first),
                named(then)
            ),
        });
    }
    candidates.extend(
        std::iter::once(first)
            .chain(then)
            .map(|c| Candidate { source, ..c }),
    );
}

/// The ring deadlines one pass counts from, and the ledger entries it reads.
struct RingBook<'a> {
    ledger: &'a RingDeadlines,
    now: jiff::Timestamp,
    /// Kept from the ledger or handed out now, for enforcements this pass gives.
    used: RingDeadlines,
    /// Each policy's intent per ring (by `namespace/name`), hashed once per pass rather than
    /// once per device.
    intents: HashMap<String, Vec<String>>,
}

/// Who a policy's deadline is for: the policy, the device's platform and what the device was
/// handed before under this policy.
#[derive(Clone, Copy)]
struct Hand<'a> {
    policy_key: &'a str,
    platform: Platform,
    handed: Option<&'a Rollout>,
}

impl<'a> RingBook<'a> {
    fn new(ledger: &'a RingDeadlines, now: jiff::Timestamp) -> Self {
        RingBook {
            ledger,
            now,
            used: RingDeadlines::new(),
            intents: HashMap::new(),
        }
    }

    fn intent(&mut self, policy: &CheckedPolicy, policy_key: &str, ring: usize) -> String {
        if !self.intents.contains_key(policy_key) {
            let all = (0..policy.rings.len())
                .map(|r| ledger::intent(policy, r))
                .collect();
            self.intents.insert(policy_key.to_string(), all);
        }
        self.intents
            .get(policy_key)
            .and_then(|all| all.get(ring))
            .cloned()
            .unwrap_or_else(|| ledger::intent(policy, ring))
    }

    /// A ring's deadline for one rollout: as the ledger has it (same intent), else handed out
    /// now, spaced after the previous ring's. `record` keeps it for the ledger.
    fn ring(
        &mut self,
        policy: &CheckedPolicy,
        ring: usize,
        key: RingKey,
        posted: jiff::civil::Date,
        record: bool,
    ) -> RingDeadline {
        if let Some(entry) = self.used.get(&key) {
            return entry.clone();
        }
        let intent = self.intent(policy, &key.policy, ring);
        let entry = match self
            .ledger
            .get(&key)
            .filter(|e| ledger::same_intent(&e.intent, &intent))
        {
            Some(kept) => RingDeadline {
                intent,
                ..kept.clone()
            },
            None => {
                let previous = match ring.checked_sub(1) {
                    Some(r) => {
                        let key = RingKey {
                            ring: policy.rings[r].name.clone(),
                            ..key.clone()
                        };
                        let before = self.ring(policy, r, key, posted, record);
                        Some((before.deadline, policy.rings[r].delay_days))
                    }
                    None => None,
                };
                RingDeadline {
                    deadline: ledger::ring_deadline(
                        &policy.deadline,
                        posted,
                        policy.rings[ring].delay_days,
                        previous,
                        self.now,
                    ),
                    intent,
                    handed_at: self.now,
                }
            }
        };
        if record {
            self.used.insert(key, entry.clone());
        }
        entry
    }

    /// The deadline one device has for a release: the one it was handed (same version, same
    /// intent), else the ring's as it joins now.
    fn device(
        &mut self,
        policy: &CheckedPolicy,
        ring: usize,
        hand: Hand<'_>,
        version: &OsVersion,
        posted: jiff::civil::Date,
        record: bool,
    ) -> (DateTime, Handed) {
        let version_text = version.to_string();
        let key = RingKey {
            policy: hand.policy_key.to_string(),
            ring: policy.rings[ring].name.clone(),
            platform: hand.platform,
            version: version_text.clone(),
        };
        let ring_entry = self.ring(policy, ring, key, posted, record);
        let intent = ring_entry.intent.clone();
        match hand
            .handed
            .filter(|h| h.version == version_text && ledger::same_intent(&h.intent, &intent))
        {
            Some(handed) => (
                handed.deadline,
                Handed {
                    intent,
                    handed_at: handed.handed_at,
                    ring_deadline: ring_entry.deadline,
                },
            ),
            None => (
                ledger::join(&policy.deadline, ring_entry.deadline, self.now),
                Handed {
                    intent,
                    handed_at: self.now,
                    ring_deadline: ring_entry.deadline,
                },
            ),
        }
    }
}

/// What one policy asks of one device.
#[allow(clippy::too_many_arguments)]
fn policy_candidate(
    input: Input<'_>,
    policy: &CheckedPolicy,
    asset_set: AssetSet,
    ring: usize,
    os: DeviceOs<'_>,
    today: jiff::civil::Date,
    book: &mut RingBook<'_>,
    hand: Hand<'_>,
) -> Decided {
    let strategy = scoped_strategy(policy, os.version);
    let query = Query {
        strategy,
        asset_set,
        security_improvements: policy.security_improvements,
        on: today,
    };
    let choice = input
        .catalog
        .resolve_met(os, &query)
        .map_err(|(r, met)| Refused {
            reason: Reason::from(r),
            detail: format!("{} from {:?}", query.strategy, asset_set),
            met: met.map(|m| m.release.version.clone()),
        })?;
    let mut chosen = choice;
    let (mut at, _) = book.device(
        policy,
        ring,
        hand,
        &chosen.release.version,
        chosen.release.posting_date,
        false,
    );
    // A stale copy's expiration dates lag by its age (Apple rolls them forward daily): compare
    // deadlines moved back by the same amount.
    let real_today = input.now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let lag = real_today.since(today).map(|s| s.get_days()).unwrap_or(0);
    let signed_on = |day: jiff::civil::Date, expires: Option<jiff::civil::Date>| {
        let day = day.checked_sub(jiff::Span::new().days(lag)).unwrap_or(day);
        expires.is_none_or(|e| e >= day)
    };
    let mut clamp = None;
    if !signed_on(at.date(), chosen.expires) {
        // The deadline falls after the build stops being signed: take a newer release that is
        // still signed then, or move the deadline to the last day it is.
        let later = input.catalog.candidates(os, &query).into_iter().find(|c| {
            !c.two_step && {
                let (at, _) = book.device(
                    policy,
                    ring,
                    hand,
                    &c.release.version,
                    c.release.posting_date,
                    false,
                );
                signed_on(at.date(), c.expires)
            }
        });
        match later {
            Some(later) => chosen = later,
            None => {
                clamp = chosen
                    .expires
                    .map(|e| e.to_datetime(policy.deadline.local_time))
            }
        }
    }
    let handed;
    (at, handed) = book.device(
        policy,
        ring,
        hand,
        &chosen.release.version,
        chosen.release.posting_date,
        true,
    );
    if let Some(clamp) = clamp {
        at = at.min(clamp);
    }
    let mut first = candidate(
        input.catalog,
        asset_set,
        os,
        chosen,
        ring,
        at,
        policy.details_url.clone(),
    );
    let then = chosen.then.map(|(patch, _)| {
        // The ledger keeps the device's last enforcement from this policy: the improvement.
        // The base's deadline counts from when that was handed out, so neither moves later.
        let (patch_at, patch_handed) =
            book.device(policy, ring, hand, &patch.version, patch.posting_date, true);
        if hand
            .handed
            .is_some_and(|h| h.version == patch.version.to_string())
        {
            let base_at = ledger::join(
                &policy.deadline,
                handed.ring_deadline,
                patch_handed.handed_at,
            );
            at = clamp.map_or(base_at, |clamp| base_at.min(clamp));
            first.deadline = at;
        }
        let mut then = candidate(
            input.catalog,
            asset_set,
            os,
            Choice {
                release: patch,
                expires: None,
                two_step: false,
                then: None,
            },
            ring,
            patch_at.max(after(at)),
            policy.details_url.clone(),
        );
        then.handed = Some(patch_handed);
        then
    });
    first.handed = Some(handed);
    Ok(Asked { first, then })
}

/// The earliest deadline for a security improvement whose base is due at `base`: a day later,
/// so the device has installed and restarted into the base (Apple: use two configurations,
/// "the first configuration to update to the new base version, and the second configuration to
/// update the new base version to its supplemental version", softwareupdate.enforcement.specific
/// notes; of several, the earliest deadline is processed first).
fn after(base: DateTime) -> DateTime {
    base.checked_add(jiff::Span::new().days(1)).unwrap_or(base)
}

/// `majors` narrows the strategy: stay in a listed major, or move to the newest listed one.
fn scoped_strategy(policy: &CheckedPolicy, running: &OsVersion) -> Strategy {
    if policy.majors.is_empty() {
        return policy.strategy.clone();
    }
    let pin = |major: u32| {
        Strategy::Pinned(
            OsVersion::with_extra(&major.to_string(), None).unwrap_or_else(|_| running.base()),
        )
    };
    match &policy.strategy {
        Strategy::Latest | Strategy::LatestMinor if policy.majors.contains(&running.major()) => {
            pin(running.major())
        }
        Strategy::Latest | Strategy::LatestMinor => {
            let newest = policy
                .majors
                .iter()
                .copied()
                .max()
                .unwrap_or(running.major());
            pin(newest)
        }
        other => other.clone(),
    }
}

fn candidate(
    catalog: &Catalog,
    asset_set: AssetSet,
    os: DeviceOs<'_>,
    choice: Choice<'_>,
    ring: usize,
    deadline: DateTime,
    details_url: Option<String>,
) -> Candidate {
    Candidate {
        source: Source::Policy(usize::MAX),
        ring,
        version: choice.release.version.clone(),
        build: pinned_build(catalog, asset_set, os, &choice),
        deadline,
        details_url,
        handed: None,
    }
}

/// `TargetBuildVersion`, only where the catalog says which build this device takes. Several
/// builds of one version for one device id ("twins", such as 23G83 and 23G6083) are left to the
/// device: nothing says every device of the id can take either.
fn pinned_build(
    catalog: &Catalog,
    asset_set: AssetSet,
    os: DeviceOs<'_>,
    choice: &Choice<'_>,
) -> Option<Build> {
    let release = choice.release;
    let build = release.build.as_ref()?;
    // The base a security improvement names as its `PrerequisiteBuild`: exactly that one.
    if choice.two_step {
        return Some(build.clone());
    }
    let only_one = match release.kind {
        // Apple: "To target a specific release or Background Security Improvement, a device
        // management service can use the TargetBuildVersion key".
        ReleaseKind::SecurityImprovement => {
            catalog.security_builds_of(os.device_id, &release.version) == 1
        }
        // A device on a beta of this version: the release build tells the two apart.
        ReleaseKind::Update => {
            release.version == *os.version
                && runs_prerelease(os.version, os.build)
                && catalog.builds_of(asset_set, os.device_id, &release.version) == 1
        }
    };
    only_one.then(|| build.clone())
}

/// What a hand-written EnforcementTarget asks of one device.
fn target_candidate(
    input: Input<'_>,
    target: &CheckedTarget,
    device: &Device,
    os: DeviceOs<'_>,
    asset_set: AssetSet,
    today: jiff::civil::Date,
) -> Decided {
    if !os.would_move(&target.version) {
        return Err(Refused::new(
            Reason::UpToDate,
            format!("runs {} (target {})", os.version, target.version),
        ));
    }
    let query = Query {
        strategy: Strategy::Pinned(target.version.base()),
        asset_set,
        security_improvements: target.version.extra().is_some(),
        on: today,
    };
    let choice = input.catalog.resolve(os, &query).map_err(|r| {
        Refused::new(
            Reason::from(r),
            format!("{} is not offered to {}", target.version, os.device_id),
        )
    })?;
    if choice.release.version != target.version && !choice.two_step {
        return Err(Refused::new(
            Reason::NoMatchingRelease,
            format!("{} is not offered to {}", target.version, os.device_id),
        ));
    }
    let mut first = candidate(
        input.catalog,
        asset_set,
        os,
        choice,
        0,
        target.deadline,
        target.details_url.clone(),
    );
    // A build the author named for this model wins over the catalog's choice.
    if !choice.two_step
        && let Some(build) = target
            .builds
            .get(os.device_id)
            .or_else(|| target.builds.get(&device.model))
    {
        first.build = Some(build.clone());
    }
    // Below the base of the improvement it names: the base by the target's deadline, the
    // improvement a day later.
    let then = choice.then.map(|(patch, _)| {
        let mut then = candidate(
            input.catalog,
            asset_set,
            os,
            Choice {
                release: patch,
                expires: None,
                two_step: false,
                then: None,
            },
            0,
            after(target.deadline),
            target.details_url.clone(),
        );
        if let Some(build) = target
            .builds
            .get(os.device_id)
            .or_else(|| target.builds.get(&device.model))
        {
            then.build = Some(build.clone());
        }
        then
    });
    Ok(Asked { first, then })
}

fn enforcement_declaration(table: &mut Declarations, candidate: &Candidate) -> u32 {
    let key = (
        candidate.version.to_string(),
        candidate.build.as_ref().map(ToString::to_string),
        candidate.deadline,
        candidate.details_url.clone(),
    );
    if let Some(index) = table.enforcement.get(&key) {
        return *index;
    }
    let declaration = declarations::enforcement(
        &candidate.version,
        candidate.build.as_ref().map(Build::as_str),
        candidate.deadline,
        candidate.details_url.as_deref(),
    );
    let index = table.intern(declaration);
    table.enforcement.insert(key, index);
    index
}

fn settings_declaration(
    table: &mut Declarations,
    input: Input<'_>,
    policies: &[usize],
    device: &Device,
) -> Option<u32> {
    if settings_supported(device).is_err() {
        return None;
    }
    let with_settings: Vec<usize> = policies
        .iter()
        .copied()
        .filter(|p| input.policies[*p].settings.is_some())
        .collect();
    if with_settings.is_empty() {
        return None;
    }
    let key = (with_settings, device.platform, device.supervised);
    if let Some(index) = table.settings.get(&key) {
        return *index;
    }
    let mut merged = MergedSettings::default();
    for p in &key.0 {
        if let Some(settings) = &input.policies[*p].settings {
            merged.merge(settings);
        }
    }
    let index = declarations::settings_payload(&merged, device).map(|payload| {
        table.intern(Declaration::hashed(
            declarations::SETTINGS_TYPE,
            "ddm.settings",
            payload,
        ))
    });
    table.settings.insert(key, index);
    index
}
