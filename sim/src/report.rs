//! What a simulation measured: the metrics collector and the report (a table for people, JSON
//! for machines); `compare.rs` judges reports against each other.

use std::fmt;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::breakdown::{Breakdowns, ChangeReport, ClassReport, GroupReport};
use crate::hist::{histogram, record};
use crate::series::Series;

/// The report of one run. Times in seconds; percentiles come from an HDR histogram with three
/// significant digits (within 0.1%); means, makespan and utilisation are exact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub trace: String,
    pub synthetic: bool,
    pub policy: String,
    pub latency: String,
    pub seed: u64,
    pub hosts: u64,
    pub fleet_vcpus: u64,
    /// Requests submitted to the scheduler.
    pub requests: u64,
    /// VMs those requests asked for.
    pub vms: u64,
    /// Trace records an importer left out (e.g. SWF jobs without a processor count).
    pub skipped: u64,
    pub rejected: u64,
    pub cancelled: u64,
    pub failed: u64,
    /// Requests the scheduler refused as malformed.
    pub refused: u64,
    /// Why the first rejected request could never fit (a fleet that lacks a label or a driver
    /// the trace needs shows here).
    #[serde(default)]
    pub first_rejection: Option<String>,
    /// Submit to all VMs placed, per request.
    pub mean_wait_s: f64,
    pub p50_wait_s: f64,
    pub p90_wait_s: f64,
    pub p99_wait_s: f64,
    pub max_wait_s: f64,
    /// Submit to running, per VM.
    pub mean_ttr_s: f64,
    pub p50_ttr_s: f64,
    pub p90_ttr_s: f64,
    pub p99_ttr_s: f64,
    /// First submit to last VM end.
    pub makespan_s: f64,
    /// Σ(time running × vCPUs) / (fleet vCPUs × makespan).
    pub utilisation: f64,
    pub queue_peak: u64,
    /// Waiting requests, averaged over the makespan.
    pub queue_mean: f64,
    pub vms_per_hour: f64,
    /// vCPU-hours held by VMs at breakpoints.
    pub held_vcpu_hours: f64,
    /// vCPU-hours held by warm VMs with no request (placement to handover or destroy), and
    /// how many requests' VMs took a warm VM; both 0 without warm pools.
    #[serde(default)]
    pub warm_vcpu_hours: f64,
    #[serde(default)]
    pub handovers: u64,
    /// Discrete events the engine processed (trace records, simulated completions, timers).
    pub events: u64,
    pub wall_s: f64,
    /// berth's version and commit, and digests of the trace, fleet and settings.
    #[serde(default)]
    pub provenance: crate::Provenance,
    /// Bounded slowdown per request, `max(1, (wait + run) / max(run, 10 s))`: mean and p90.
    #[serde(default)]
    pub bounded_slowdown_mean: f64,
    #[serde(default)]
    pub bounded_slowdown_p90: f64,
    /// Per host class, in the fleet's order.
    #[serde(default)]
    pub classes: Vec<ClassReport>,
    /// Per template and per requester, most requests first.
    #[serde(default)]
    pub templates: Vec<GroupReport>,
    #[serde(default)]
    pub requesters: Vec<GroupReport>,
    /// Change turnaround, for traces whose requests name their `change`.
    #[serde(default)]
    pub changes: ChangeReport,
    /// How good the estimated starts were: predicted at submit against actual (see
    /// `SimConfig::eta_samples_max`); absent when not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<crate::eta::EtaReport>,
    /// What `berth sim plot` draws: CDFs and the timeline, downsampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<Series>,
    /// Pulls and evictions of base images, when the fleet or settings describe images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImagesReport>,
}

/// What moving base images cost in a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImagesReport {
    /// How placement treated images: `ignore` or `aware`.
    pub mode: String,
    /// Pulls started, and how many of them ahead of demand (no VM placed for them yet).
    pub pulls: u64,
    pub pulls_ahead: u64,
    pub pulled_gib: f64,
    /// Σ pull durations (size over bandwidth), and Σ time pulls waited for a store turn.
    pub pull_s: f64,
    pub store_wait_s: f64,
    pub evictions: u64,
    pub evicted_gib: f64,
}

/// Collects the raw figures during a run.
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    waits: Histogram<u64>,
    wait_sum_ms: u128,
    ttr: Histogram<u64>,
    ttr_sum_ms: u128,
    pub requests: u64,
    pub vms: u64,
    pub rejected: u64,
    pub cancelled: u64,
    pub failed: u64,
    pub refused: u64,
    pub first_rejection: Option<String>,
    pub first_submit_ms: Option<u64>,
    pub last_end_ms: u64,
    /// Σ running time × vCPUs, in vCPU-milliseconds.
    pub running_area: u128,
    pub held_area: u128,
    /// Σ time warm VMs held capacity with no request (placement to handover or destroy) × vCPUs.
    pub warm_area: u128,
    /// Requests' VMs that took a warm VM.
    pub handovers: u64,
    pub queue_peak: u64,
    queue_area: u128,
    queue_len: u64,
    queue_since_ms: u64,
    pub events: u64,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            waits: histogram(),
            wait_sum_ms: 0,
            ttr: histogram(),
            ttr_sum_ms: 0,
            requests: 0,
            vms: 0,
            rejected: 0,
            cancelled: 0,
            failed: 0,
            refused: 0,
            first_rejection: None,
            first_submit_ms: None,
            last_end_ms: 0,
            running_area: 0,
            held_area: 0,
            warm_area: 0,
            handovers: 0,
            queue_peak: 0,
            queue_area: 0,
            queue_len: 0,
            queue_since_ms: 0,
            events: 0,
        }
    }

    pub fn submitted(&mut self, at_ms: u64, count: u32) {
        self.requests += 1;
        self.vms += u64::from(count);
        if self.first_submit_ms.is_none() {
            self.first_submit_ms = Some(at_ms);
            self.queue_since_ms = at_ms;
        }
    }

    pub fn waits(&self) -> &Histogram<u64> {
        &self.waits
    }

    pub fn ttr(&self) -> &Histogram<u64> {
        &self.ttr
    }

    pub fn waited(&mut self, ms: u64) {
        record(&mut self.waits, ms);
        self.wait_sum_ms += u128::from(ms);
    }

    pub fn reached_running(&mut self, ms: u64) {
        record(&mut self.ttr, ms);
        self.ttr_sum_ms += u128::from(ms);
    }

    pub fn ended(&mut self, at_ms: u64) {
        self.last_end_ms = self.last_end_ms.max(at_ms);
    }

    /// The number of waiting requests from `at_ms` on.
    pub fn queue(&mut self, at_ms: u64, len: u64) {
        if self.first_submit_ms.is_some() && at_ms > self.queue_since_ms {
            self.queue_area += u128::from(self.queue_len) * u128::from(at_ms - self.queue_since_ms);
            self.queue_since_ms = at_ms;
        }
        self.queue_len = len;
        self.queue_peak = self.queue_peak.max(len);
    }

    /// The first submit and the last end: the window the makespan spans.
    pub fn span_ms(&self) -> (u64, u64) {
        (self.first_submit_ms.unwrap_or(0), self.last_end_ms)
    }

    pub fn report(&self, run: RunInfo, breakdowns: Breakdowns) -> Report {
        let first = self.first_submit_ms.unwrap_or(0);
        let makespan_ms = self.last_end_ms.saturating_sub(first);
        let n_waits = self.waits.len();
        let n_ttr = self.ttr.len();
        let secs = |ms: u64| ms as f64 / 1000.0;
        let mean = |sum: u128, n: u64| {
            if n == 0 {
                0.0
            } else {
                sum as f64 / n as f64 / 1000.0
            }
        };
        let pct = |h: &Histogram<u64>, p: f64| {
            if h.is_empty() {
                0.0
            } else {
                secs(h.value_at_quantile(p / 100.0))
            }
        };
        let makespan_s = secs(makespan_ms);
        let fleet_ms = u128::from(run.fleet_vcpus) * u128::from(makespan_ms);
        Report {
            trace: run.trace,
            synthetic: run.synthetic,
            policy: run.policy,
            latency: run.latency,
            seed: run.seed,
            hosts: run.hosts,
            fleet_vcpus: run.fleet_vcpus,
            requests: self.requests,
            vms: self.vms,
            skipped: run.skipped,
            rejected: self.rejected,
            cancelled: self.cancelled,
            failed: self.failed,
            refused: self.refused,
            first_rejection: self.first_rejection.clone(),
            mean_wait_s: mean(self.wait_sum_ms, n_waits),
            p50_wait_s: pct(&self.waits, 50.0),
            p90_wait_s: pct(&self.waits, 90.0),
            p99_wait_s: pct(&self.waits, 99.0),
            max_wait_s: if n_waits == 0 {
                0.0
            } else {
                secs(self.waits.max())
            },
            mean_ttr_s: mean(self.ttr_sum_ms, n_ttr),
            p50_ttr_s: pct(&self.ttr, 50.0),
            p90_ttr_s: pct(&self.ttr, 90.0),
            p99_ttr_s: pct(&self.ttr, 99.0),
            makespan_s,
            utilisation: if fleet_ms == 0 {
                0.0
            } else {
                self.running_area as f64 / fleet_ms as f64
            },
            queue_peak: self.queue_peak,
            queue_mean: if makespan_ms == 0 {
                0.0
            } else {
                self.queue_area as f64 / makespan_ms as f64
            },
            vms_per_hour: if makespan_ms == 0 {
                0.0
            } else {
                self.vms as f64 / (makespan_s / 3600.0)
            },
            held_vcpu_hours: self.held_area as f64 / 3_600_000.0,
            warm_vcpu_hours: self.warm_area as f64 / 3_600_000.0,
            handovers: self.handovers,
            events: self.events,
            wall_s: run.wall_s,
            provenance: crate::Provenance::default(),
            eta: None,
            bounded_slowdown_mean: breakdowns.bounded_slowdown_mean,
            bounded_slowdown_p90: breakdowns.bounded_slowdown_p90,
            classes: breakdowns.classes,
            templates: breakdowns.templates,
            requesters: breakdowns.requesters,
            changes: breakdowns.changes,
            series: None,
            images: None,
        }
    }
}

/// What the report says about the run itself.
#[derive(Clone, Debug, Default)]
pub struct RunInfo {
    pub trace: String,
    pub synthetic: bool,
    pub policy: String,
    pub latency: String,
    pub seed: u64,
    pub hosts: u64,
    pub fleet_vcpus: u64,
    pub skipped: u64,
    pub wall_s: f64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let synthetic = if self.synthetic { " (synthetic)" } else { "" };
        writeln!(f, "trace      {}{synthetic}", self.trace)?;
        writeln!(
            f,
            "fleet      {} hosts, {} vcpus; policy {}, latency {}, seed {}",
            self.hosts, self.fleet_vcpus, self.policy, self.latency, self.seed
        )?;
        writeln!(
            f,
            "requests   {} ({} vms); rejected {}, cancelled {}, failed {}, refused {}, skipped {}",
            self.requests,
            self.vms,
            self.rejected,
            self.cancelled,
            self.failed,
            self.refused,
            self.skipped
        )?;
        if let Some(why) = &self.first_rejection {
            writeln!(f, "rejected   first: {why}")?;
        }
        writeln!(
            f,
            "                 mean        p50        p90        p99        max"
        )?;
        writeln!(
            f,
            "wait (s)   {:>10.1} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
            self.mean_wait_s, self.p50_wait_s, self.p90_wait_s, self.p99_wait_s, self.max_wait_s
        )?;
        writeln!(
            f,
            "to run (s) {:>10.1} {:>10.0} {:>10.0} {:>10.0}",
            self.mean_ttr_s, self.p50_ttr_s, self.p90_ttr_s, self.p99_ttr_s
        )?;
        writeln!(
            f,
            "makespan   {:.0} s; utilisation {:.4}; {:.1} vms/h",
            self.makespan_s, self.utilisation, self.vms_per_hour
        )?;
        writeln!(
            f,
            "queue      peak {}, mean {:.1}; breakpoints held {:.1} vcpu-hours",
            self.queue_peak, self.queue_mean, self.held_vcpu_hours
        )?;
        if self.handovers > 0 || self.warm_vcpu_hours > 0.0 {
            writeln!(
                f,
                "warm pool  {} handovers; idle warm {:.1} vcpu-hours",
                self.handovers, self.warm_vcpu_hours
            )?;
        }
        if let Some(eta) = &self.eta {
            writeln!(f, "{eta}")?;
        }
        self.write_breakdowns(f)?;
        write!(
            f,
            "engine     {} events in {:.3} s",
            self.events, self.wall_s
        )
    }
}

/// Template and requester rows the table shows at most; `--json` has them all.
const GROUP_ROWS_SHOWN: usize = 10;

impl Report {
    fn write_breakdowns(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "slowdown   bounded (tau 10 s): mean {:.2}, p90 {:.2}",
            self.bounded_slowdown_mean, self.bounded_slowdown_p90
        )?;
        if !self.classes.is_empty() {
            writeln!(
                f,
                "class                 hosts    vcpus  vcpu util  slot util      vms/h    full"
            )?;
            for c in &self.classes {
                let slots = c
                    .slot_utilisation
                    .map_or("-".to_owned(), |u| format!("{u:.3}"));
                writeln!(
                    f,
                    "  {:<18} {:>6} {:>8} {:>10.3} {:>10} {:>10.1} {:>6.1}%",
                    c.name,
                    c.hosts,
                    c.vcpus,
                    c.utilisation,
                    slots,
                    c.vms_per_hour,
                    c.full_share * 100.0
                )?;
            }
        }
        for (what, rows) in [
            ("template", &self.templates),
            ("requester", &self.requesters),
        ] {
            if rows.is_empty() {
                continue;
            }
            let shown = if rows.len() > GROUP_ROWS_SHOWN {
                format!(" ({GROUP_ROWS_SHOWN} of {})", rows.len())
            } else {
                String::new()
            };
            writeln!(
                f,
                "{:<22}{:>6}  wait p50/p90/p99/max (s)         to run p50/p90 (s)",
                format!("{what}{shown}"),
                "reqs"
            )?;
            for g in rows.iter().take(GROUP_ROWS_SHOWN) {
                writeln!(
                    f,
                    "  {:<18} {:>7} {:>7.0} {:>7.0} {:>7.0} {:>7.0}    {:>7.0} {:>7.0}",
                    g.name,
                    g.requests,
                    g.p50_wait_s,
                    g.p90_wait_s,
                    g.p99_wait_s,
                    g.max_wait_s,
                    g.p50_ttr_s,
                    g.p90_ttr_s
                )?;
            }
        }
        let c = &self.changes;
        if c.changes > 0 || c.incomplete > 0 {
            writeln!(
                f,
                "changes    {} complete, {} incomplete; turnaround (s) p50/p90/p99",
                c.changes, c.incomplete
            )?;
            writeln!(
                f,
                "  {:<18} {:>7} {:>7.0} {:>7.0} {:>7.0}",
                "all", c.changes, c.p50_turnaround_s, c.p90_turnaround_s, c.p99_turnaround_s
            )?;
            for s in &c.by_size {
                writeln!(
                    f,
                    "  {:<18} {:>7} {:>7.0} {:>7.0} {:>7.0}",
                    format!("{} vms", s.vms),
                    s.changes,
                    s.p50_turnaround_s,
                    s.p90_turnaround_s,
                    s.p99_turnaround_s
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_mean_is_time_weighted() {
        let mut m = Metrics::new();
        m.submitted(0, 1);
        m.queue(0, 4);
        m.queue(500, 0);
        m.ended(1000);
        let r = m.report(RunInfo::default(), Breakdowns::default());
        assert_eq!(r.queue_peak, 4);
        assert!((r.queue_mean - 2.0).abs() < 1e-9, "{}", r.queue_mean);
    }
}
