//! Running a fleet against a server for several rounds, with a summary for load runs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::device::InstallState;
use super::{Fleet, ServerConfig};

/// How a fleet runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Each round every device advances its install one step, then checks in once.
    pub rounds: u32,
    /// Check-ins in flight at once.
    pub concurrency: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            rounds: 5,
            concurrency: 64,
        }
    }
}

/// Request latency percentiles.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencySummary {
    pub count: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl LatencySummary {
    /// From latencies in microseconds.
    pub fn from_micros(mut micros: Vec<u64>) -> Self {
        if micros.is_empty() {
            return LatencySummary::default();
        }
        micros.sort_unstable();
        let at = |q: f64| {
            let index = ((micros.len() - 1) as f64 * q).round() as usize;
            Duration::from_micros(micros[index.min(micros.len() - 1)])
        };
        LatencySummary {
            count: micros.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub devices: usize,
    pub rounds: u32,
    pub syncs: u64,
    pub failed_syncs: u64,
    pub requests: u64,
    pub reports: u64,
    pub declarations_fetched: u64,
    pub declarations_missing: u64,
    pub warnings: u64,
    /// Failed check-ins by [`super::SimError::kind`].
    pub failures_by_kind: BTreeMap<&'static str, u64>,
    /// The first few errors, as text.
    pub sample_errors: Vec<String>,
    /// Devices per `softwareupdate.install-state` at the end.
    pub install_states: BTreeMap<InstallState, usize>,
    /// Devices holding at least one invalid declaration at the end.
    pub devices_with_invalid_declarations: usize,
    /// The first few invalid declarations: device, identifier, type and reason.
    pub sample_invalid: Vec<String>,
    pub installs_completed: u64,
    /// Devices per (platform, running version) at the end.
    pub os_versions: BTreeMap<String, usize>,
    pub latency: LatencySummary,
    pub elapsed: Duration,
}

const SAMPLE_ERRORS: usize = 5;

impl Fleet {
    /// Runs every device for `options.rounds` rounds: advance one install step, then one
    /// check-in; `options.concurrency` check-ins in flight at a time.
    pub async fn run(
        &mut self,
        client: &reqwest::Client,
        server: &ServerConfig,
        options: &RunOptions,
    ) -> RunSummary {
        let started = Instant::now();
        let server = Arc::new(server.clone());
        let mut summary = RunSummary {
            devices: self.devices.len(),
            rounds: options.rounds,
            ..RunSummary::default()
        };
        let mut latencies: Vec<u64> = Vec::new();
        for _ in 0..options.rounds {
            let devices = std::mem::take(&mut self.devices);
            let mut results: Vec<_> = futures::stream::iter(devices.into_iter().enumerate())
                .map(|(index, mut device)| {
                    let client = client.clone();
                    let server = Arc::clone(&server);
                    tokio::spawn(async move {
                        device.advance();
                        let result = device.sync(&client, &server).await;
                        (index, device, result)
                    })
                })
                .buffer_unordered(options.concurrency.max(1))
                .collect()
                .await;
            let mut back = Vec::with_capacity(results.len());
            for joined in results.drain(..) {
                summary.syncs += 1;
                let (index, device, result) = match joined {
                    Ok(done) => done,
                    Err(e) => {
                        // A panicking check-in loses its device; count it and go on.
                        summary.failed_syncs += 1;
                        *summary.failures_by_kind.entry("panic").or_default() += 1;
                        if summary.sample_errors.len() < SAMPLE_ERRORS {
                            summary.sample_errors.push(format!("check-in task: {e}"));
                        }
                        continue;
                    }
                };
                match result {
                    Ok(outcome) => {
                        summary.requests += u64::from(outcome.requests);
                        summary.reports += u64::from(outcome.report.is_some());
                        summary.declarations_fetched += outcome.fetched.len() as u64;
                        summary.declarations_missing += outcome.missing.len() as u64;
                        summary.warnings += outcome.warnings.len() as u64;
                        latencies.extend(outcome.latencies.iter().map(|d| d.as_micros() as u64));
                    }
                    Err(e) => {
                        summary.failed_syncs += 1;
                        *summary.failures_by_kind.entry(e.kind()).or_default() += 1;
                        if summary.sample_errors.len() < SAMPLE_ERRORS {
                            summary
                                .sample_errors
                                .push(format!("{}: {e}", device.enrollment_id()));
                        }
                    }
                }
                back.push((index, device));
            }
            back.sort_by_key(|(index, _)| *index);
            self.devices = back.into_iter().map(|(_, d)| d).collect();
        }

        for state in InstallState::ALL {
            summary.install_states.insert(state, 0);
        }
        for device in &self.devices {
            *summary
                .install_states
                .entry(device.install_state())
                .or_default() += 1;
            let invalid: Vec<_> = device
                .declarations()
                .into_iter()
                .filter(|d| d.valid == "invalid")
                .collect();
            if !invalid.is_empty() {
                summary.devices_with_invalid_declarations += 1;
            }
            for declaration in invalid {
                if summary.sample_invalid.len() >= SAMPLE_ERRORS {
                    break;
                }
                let why = declaration
                    .reason_objects
                    .first()
                    .map(|r| {
                        let detail = r["details"]["Error"].as_str().unwrap_or_default();
                        format!("{} {detail}", r["code"].as_str().unwrap_or_default())
                    })
                    .unwrap_or_default();
                summary.sample_invalid.push(format!(
                    "{} ({} {} on {} {}): {}: {}",
                    device.enrollment_id(),
                    device.spec().platform,
                    device.spec().model_identifier,
                    device.os().running(),
                    if device.spec().supervised {
                        "supervised"
                    } else {
                        "unsupervised"
                    },
                    declaration.identifier,
                    why.trim()
                ));
            }
            summary.installs_completed += u64::from(device.installs_completed());
            *summary
                .os_versions
                .entry(format!(
                    "{} {}",
                    device.spec().platform,
                    device.os().running()
                ))
                .or_default() += 1;
        }
        summary.latency = LatencySummary::from_micros(latencies);
        summary.elapsed = started.elapsed();
        summary
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1000.0)
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.elapsed.as_secs_f64();
        let rate = if seconds > 0.0 {
            self.requests as f64 / seconds
        } else {
            0.0
        };
        writeln!(
            f,
            "devices {}  rounds {}  check-ins {} (failed {})  requests {}  elapsed {:.2}s  ({rate:.0} requests/s)",
            self.devices, self.rounds, self.syncs, self.failed_syncs, self.requests, seconds
        )?;
        writeln!(
            f,
            "status reports {}  declarations fetched {}  missing (404) {}  warnings {}  installs completed {}",
            self.reports,
            self.declarations_fetched,
            self.declarations_missing,
            self.warnings,
            self.installs_completed
        )?;
        let states: Vec<String> = self
            .install_states
            .iter()
            .map(|(state, count)| format!("{} {count}", state.as_str()))
            .collect();
        writeln!(
            f,
            "install-state: {}  (devices with an invalid declaration: {})",
            states.join(", "),
            self.devices_with_invalid_declarations
        )?;
        writeln!(
            f,
            "latency ({} requests): p50 {}  p90 {}  p99 {}  max {}",
            self.latency.count,
            ms(self.latency.p50),
            ms(self.latency.p90),
            ms(self.latency.p99),
            ms(self.latency.max)
        )?;
        for invalid in &self.sample_invalid {
            writeln!(f, "  invalid: {invalid}")?;
        }
        if !self.failures_by_kind.is_empty() {
            let kinds: Vec<String> = self
                .failures_by_kind
                .iter()
                .map(|(kind, count)| format!("{kind} {count}"))
                .collect();
            writeln!(f, "failures: {}", kinds.join(", "))?;
            for error in &self.sample_errors {
                writeln!(f, "  {error}")?;
            }
        }
        Ok(())
    }
}

impl RunSummary {
    /// The summary as JSON (durations in milliseconds).
    pub fn to_json(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        serde_json::json!({
            "devices": self.devices,
            "rounds": self.rounds,
            "checkIns": self.syncs,
            "failedCheckIns": self.failed_syncs,
            "requests": self.requests,
            "statusReports": self.reports,
            "declarationsFetched": self.declarations_fetched,
            "declarationsMissing": self.declarations_missing,
            "warnings": self.warnings,
            "failuresByKind": self.failures_by_kind,
            "sampleErrors": self.sample_errors,
            "installStates": self
                .install_states
                .iter()
                .map(|(state, count)| (state.as_str(), *count))
                .collect::<BTreeMap<_, _>>(),
            "devicesWithInvalidDeclarations": self.devices_with_invalid_declarations,
            "sampleInvalid": self.sample_invalid,
            "installsCompleted": self.installs_completed,
            "osVersions": self.os_versions,
            "latencyMs": {
                "count": self.latency.count,
                "p50": ms(self.latency.p50),
                "p90": ms(self.latency.p90),
                "p99": ms(self.latency.p99),
                "max": ms(self.latency.max),
            },
            "elapsedSeconds": self.elapsed.as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let summary = LatencySummary::from_micros((1..=100).rev().collect());
        assert_eq!(summary.count, 100);
        assert_eq!(summary.p50, Duration::from_micros(51));
        assert_eq!(summary.p99, Duration::from_micros(99));
        assert_eq!(summary.max, Duration::from_micros(100));
        assert_eq!(
            LatencySummary::from_micros(Vec::new()),
            LatencySummary::default()
        );
    }
}
