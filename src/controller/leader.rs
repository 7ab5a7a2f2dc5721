//! Leader election on a `coordination.k8s.io/v1` Lease, with a renew deadline: a leader that
//! cannot renew in time steps down *before* its Lease can expire for the others, so two replicas
//! never both think they lead. Expiry of another holder's Lease is judged by this replica's own
//! monotonic clock from when it last saw the record change (as client-go does), never by
//! comparing wall clocks across machines. Each acquisition (not renewal) bumps
//! `leaseTransitions`; the store's epoch (`Store::claim_leadership`) fences the writes.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// How the Lease is held.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long others wait, after last seeing the record change, before taking over.
    pub duration: Duration,
    /// A leader that has not renewed within this long (since it sent its last successful renew)
    /// steps down. Shorter than `duration`, so it stops before anyone else may start.
    pub renew_deadline: Duration,
    /// How often the Lease is renewed, or tried.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// client-go's defaults: 15 s Lease, 10 s renew deadline, 2 s retry.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaseSettings {
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What one attempt does with the Lease as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No Lease yet: create it, holding it.
    Create,
    /// Held by this replica while leading: renew it.
    Renew,
    /// Free, expired, or held by this replica's identity from before (a restart, or after a
    /// step-down): take it as a new acquisition.
    Acquire,
    /// Another holder whose Lease has not expired.
    Wait,
}

/// The Lease record another replica's renewals change, and when this replica first saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    record: (Option<String>, Option<MicroTime>, Option<i32>),
    since: Instant,
}

impl Observed {
    fn of(spec: Option<&LeaseSpec>, now: Instant, before: Option<Observed>) -> Observed {
        let record = spec.map_or((None, None, None), |s| {
            (
                s.holder_identity.clone(),
                s.renew_time.clone(),
                s.lease_transitions,
            )
        });
        match before {
            Some(before) if before.record == record => before,
            _ => Observed { record, since: now },
        }
    }
}

/// Decides the next step (pure: the Lease as read, whether this replica leads, and when it
/// first saw the current record).
pub fn step(
    lease: Option<&LeaseSpec>,
    identity: &str,
    leading: bool,
    observed: &Observed,
    now: Instant,
    default_duration: Duration,
) -> Step {
    let Some(spec) = lease else {
        return Step::Create;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => Step::Acquire,
        Some(holder) if holder == identity => {
            if leading {
                Step::Renew
            } else {
                Step::Acquire
            }
        }
        Some(_) => {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(default_duration, Duration::from_secs);
            if now.duration_since(observed.since) >= duration {
                Step::Acquire
            } else {
                Step::Wait
            }
        }
    }
}

/// Runs the election until every receiver is dropped, then releases the Lease if held. The
/// receiver reads `true` while this replica leads.
pub fn elect(
    api: Api<Lease>,
    settings: LeaseSettings,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut elector = Elector {
            api,
            settings,
            leading: false,
            last_renew_sent: None,
            observed: None,
            held_transitions: None,
        };
        loop {
            elector.attempt(&sender).await;
            tokio::select! {
                () = tokio::time::sleep(elector.settings.retry_period) => {}
                () = sender.closed() => {
                    elector.release().await;
                    return;
                }
            }
        }
    });
    (receiver, task)
}

struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    leading: bool,
    last_renew_sent: Option<Instant>,
    observed: Option<Observed>,
    /// `leaseTransitions` of this replica's own acquisition: a release must not clear a later
    /// acquisition under the same identity (a restarted process).
    held_transitions: Option<i32>,
}

impl Elector {
    /// One try to create, renew or acquire; steps down when the renew deadline has passed.
    async fn attempt(&mut self, sender: &watch::Sender<bool>) {
        let sent = Instant::now();
        // A hanging request must not keep a leader past its renew deadline.
        let budget = match (self.leading, self.last_renew_sent) {
            (true, Some(last)) => self
                .settings
                .renew_deadline
                .saturating_sub(sent.duration_since(last)),
            _ => self.settings.renew_deadline,
        };
        let outcome = tokio::time::timeout(budget, self.try_hold(sent)).await;
        match outcome {
            Ok(Ok(true)) => {
                self.last_renew_sent = Some(sent);
                if !self.leading {
                    tracing::info!(identity = %self.settings.identity, "took the leader Lease");
                    self.leading = true;
                    sender.send_replace(true);
                }
            }
            Ok(Ok(false)) => {
                if self.leading {
                    tracing::error!(identity = %self.settings.identity, "another replica holds the leader Lease; stepping down");
                    self.step_down(sender);
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, identity = %self.settings.identity, "cannot read or write the leader Lease");
            }
            Err(_) => {
                tracing::warn!(identity = %self.settings.identity, "the leader Lease request did not answer in time");
            }
        }
        if self.leading
            && self
                .last_renew_sent
                .is_none_or(|last| last.elapsed() >= self.settings.renew_deadline)
        {
            tracing::error!(
                identity = %self.settings.identity,
                deadline_seconds = self.settings.renew_deadline.as_secs_f64(),
                "could not renew the leader Lease before the renew deadline; stepping down"
            );
            self.step_down(sender);
        }
    }

    fn step_down(&mut self, sender: &watch::Sender<bool>) {
        self.leading = false;
        self.last_renew_sent = None;
        sender.send_replace(false);
    }

    /// Reads the Lease and takes the step; `Ok(true)` when this replica holds it afterwards.
    async fn try_hold(&mut self, now: Instant) -> Result<bool, kube::Error> {
        let lease = self.api.get_opt(&self.settings.name).await?;
        let spec = lease.as_ref().and_then(|l| l.spec.as_ref());
        let observed = Observed::of(spec, now, self.observed.take());
        let step = step(
            spec,
            &self.settings.identity,
            self.leading,
            &observed,
            now,
            self.settings.duration,
        );
        self.observed = Some(observed);
        let stamp = MicroTime(jiff::Timestamp::now());
        let duration_seconds = i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX);
        let transitions: Option<i32>;
        let written = match (step, lease) {
            (Step::Wait, _) => return Ok(false),
            (Step::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.settings.identity.clone()),
                        lease_duration_seconds: Some(duration_seconds),
                        acquire_time: Some(stamp.clone()),
                        renew_time: Some(stamp),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                transitions = Some(0);
                self.api.create(&PostParams::default(), &lease).await
            }
            (step, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if step == Step::Acquire {
                    spec.holder_identity = Some(self.settings.identity.clone());
                    spec.acquire_time = Some(stamp.clone());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(duration_seconds);
                spec.renew_time = Some(stamp);
                transitions = spec.lease_transitions;
                // The resourceVersion read above makes this a compare-and-swap.
                self.api
                    .replace(&self.settings.name, &PostParams::default(), &lease)
                    .await
            }
            (_, None) => return Ok(false),
        };
        // A conflict (someone wrote the Lease since it was read) is an error like any other: the
        // next round reads again and decides; it is not proof that another replica leads, so a
        // leader does not step down for it before its renew deadline.
        written.map(|_| {
            self.held_transitions = transitions;
            true
        })
    }

    /// Hands the Lease back on shutdown so the next replica need not wait for it to expire.
    async fn release(&mut self) {
        if !self.leading {
            return;
        }
        let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(&self.settings.identity)
            || spec.lease_transitions != self.held_transitions
        {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        if let Err(error) = self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(%error, "cannot release the leader Lease");
        }
        self.leading = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(jiff::Timestamp::UNIX_EPOCH)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    #[test]
    fn another_holder_is_waited_for_until_its_record_stops_changing_for_the_duration() {
        let default = Duration::from_secs(15);
        let start = Instant::now();
        let lease = held_by("other", 3);
        let observed = Observed::of(Some(&lease), start, None);
        assert_eq!(
            step(Some(&lease), "me", false, &observed, start, default),
            Step::Wait
        );
        let now = start + Duration::from_secs(14);
        let observed = Observed::of(Some(&lease), now, Some(observed));
        assert_eq!(
            step(Some(&lease), "me", false, &observed, now, default),
            Step::Wait
        );
        // The holder renews: the wait starts over from when the change was seen.
        let mut renewed = lease.clone();
        renewed.renew_time = Some(MicroTime(jiff::Timestamp::constant(60, 0)));
        let now = start + Duration::from_secs(16);
        let observed = Observed::of(Some(&renewed), now, Some(observed));
        assert_eq!(
            step(Some(&renewed), "me", false, &observed, now, default),
            Step::Wait
        );
        let now = start + Duration::from_secs(31);
        let observed = Observed::of(Some(&renewed), now, Some(observed));
        assert_eq!(
            step(Some(&renewed), "me", false, &observed, now, default),
            Step::Acquire
        );
    }

    #[test]
    fn own_lease_is_renewed_while_leading_and_acquired_anew_otherwise() {
        let now = Instant::now();
        let default = Duration::from_secs(15);
        let lease = held_by("me", 1);
        let observed = Observed::of(Some(&lease), now, None);
        assert_eq!(
            step(Some(&lease), "me", true, &observed, now, default),
            Step::Renew
        );
        assert_eq!(
            step(Some(&lease), "me", false, &observed, now, default),
            Step::Acquire
        );
        let free = LeaseSpec::default();
        assert_eq!(
            step(Some(&free), "me", false, &observed, now, default),
            Step::Acquire
        );
        assert_eq!(
            step(None, "me", false, &observed, now, default),
            Step::Create
        );
    }
}
