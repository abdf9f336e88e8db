//! Comparing runs so that the comparison cannot mislead: unlike runs (another trace, fleet or
//! horizon) are refused, requests that were not served count against a run, and with several
//! reports a side (one per seed) a difference counts only when Welch's t-test finds it
//! significant.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::Report;
use crate::stats::{Summary, summarize, welch_p};

/// A report and what to call it in messages (its file name).
#[derive(Clone, Debug)]
pub struct Labeled {
    pub name: String,
    pub report: Report,
}

/// Which way a metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
    /// Shown, never judged.
    Neither,
}

/// What a metric's difference means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Same,
    /// Different, but Welch's test does not find the difference significant.
    NotSignificant,
    Better,
    /// Worse, but not past the threshold.
    WorseWithin,
    Regressed,
    /// Waits or times to running that look better only because the new side served fewer
    /// requests (the rest were rejected, failed or cancelled).
    FewerServed,
    /// A metric that is shown, not judged.
    Info,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Same => "same",
            Verdict::NotSignificant => "not significant",
            Verdict::Better => "better",
            Verdict::WorseWithin => "worse, within threshold",
            Verdict::Regressed => "REGRESSED",
            Verdict::FewerServed => "not comparable: fewer served",
            Verdict::Info => "",
        }
    }
}

/// Below this a wait or time-to-running is rounding, not a regression, when the base was zero.
const ZERO_BASE_TOLERANCE_S: f64 = 1.0;

/// A judged metric: its name, how to read it, which way is better, and how much it may grow
/// from a zero base before that counts.
struct Metric {
    name: &'static str,
    get: fn(&Report) -> f64,
    better: Better,
    zero_base_tolerance: f64,
    /// Covers only the requests that were placed (waits, times to running).
    of_served: bool,
}

const fn metric(name: &'static str, get: fn(&Report) -> f64, better: Better) -> Metric {
    Metric {
        name,
        get,
        better,
        zero_base_tolerance: 0.0,
        of_served: false,
    }
}

/// A wait or time to running: over the requests served, with the rounding tolerance.
const fn time(name: &'static str, get: fn(&Report) -> f64) -> Metric {
    Metric {
        name,
        get,
        better: Better::Lower,
        zero_base_tolerance: ZERO_BASE_TOLERANCE_S,
        of_served: true,
    }
}

const METRICS: [Metric; 19] = [
    time("mean_wait_s", |r| r.mean_wait_s),
    time("p50_wait_s", |r| r.p50_wait_s),
    time("p90_wait_s", |r| r.p90_wait_s),
    time("p99_wait_s", |r| r.p99_wait_s),
    time("max_wait_s", |r| r.max_wait_s),
    time("mean_ttr_s", |r| r.mean_ttr_s),
    time("p50_ttr_s", |r| r.p50_ttr_s),
    time("p90_ttr_s", |r| r.p90_ttr_s),
    time("p99_ttr_s", |r| r.p99_ttr_s),
    metric("utilisation", |r| r.utilisation, Better::Higher),
    // A request that was not served is worse than any wait: from zero, any one counts.
    metric("rejected", |r| r.rejected as f64, Better::Lower),
    metric("failed", |r| r.failed as f64, Better::Lower),
    metric("cancelled", |r| r.cancelled as f64, Better::Lower),
    metric("refused", |r| r.refused as f64, Better::Lower),
    metric("makespan_s", |r| r.makespan_s, Better::Neither),
    metric("queue_mean", |r| r.queue_mean, Better::Neither),
    metric("requests", |r| r.requests as f64, Better::Neither),
    metric("vms", |r| r.vms as f64, Better::Neither),
    metric("wall_s", |r| r.wall_s, Better::Neither),
];

/// Requests that were not served: rejected, failed, cancelled or refused.
fn unserved(r: &Report) -> f64 {
    (r.rejected + r.failed + r.cancelled + r.refused) as f64
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    /// Largest tolerated regression, in percent of the base.
    pub max_regression_pct: f64,
    /// A difference is significant when Welch's two-sided p-value is below this.
    pub alpha: f64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_regression_pct: 5.0,
            alpha: 0.05,
        }
    }
}

/// One metric of both sides.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub metric: &'static str,
    pub better: Better,
    pub base: Summary,
    pub new: Summary,
    /// Relative change of the means in percent (`None` when the base mean is zero).
    pub change_pct: Option<f64>,
    /// Welch's two-sided p-value; `None` with fewer than two reports on a side.
    pub p_value: Option<f64>,
    pub verdict: Verdict,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub options: Options,
    pub rows: Vec<Row>,
    /// Whether both sides had at least two reports, so that significance was tested.
    pub tested: bool,
    /// Sentences the reader needs besides the table.
    pub notes: Vec<String>,
}

impl Comparison {
    /// The metrics that regressed.
    pub fn regressed(&self) -> Vec<&'static str> {
        self.rows
            .iter()
            .filter(|r| r.verdict == Verdict::Regressed)
            .map(|r| r.metric)
            .collect()
    }

    /// The table for people: means of each side, change, p-value and verdict.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let test = if self.tested {
            format!(
                "Welch's t-test, two-sided; significant below p = {}",
                self.options.alpha
            )
        } else {
            "none (needs two or more reports a side); every change past the threshold counts"
                .to_owned()
        };
        let _ = writeln!(out, "significance: {test}");
        let _ = writeln!(
            out,
            "threshold:    {}% (regressions past it fail)",
            self.options.max_regression_pct
        );
        let _ = writeln!(
            out,
            "{:<12} {:>16} {:>16} {:>9} {:>8}  verdict",
            "metric", "base", "new", "change", "p"
        );
        for r in &self.rows {
            let change = r.change_pct.map_or("-".to_owned(), |c| format!("{c:+.1}%"));
            let p = r.p_value.map_or("-".to_owned(), |p| format!("{p:.4}"));
            let _ = writeln!(
                out,
                "{:<12} {:>16} {:>16} {:>9} {:>8}  {}",
                r.metric,
                side(&r.base),
                side(&r.new),
                change,
                p,
                r.verdict.label()
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

/// A side's mean, with its 95% interval's half-width when there are several reports, both to
/// the same decimals.
fn side(s: &Summary) -> String {
    let whole = |v: f64| v == v.trunc();
    let d = if whole(s.mean) && s.ci95_half_width.is_none_or(whole) {
        0
    } else {
        decimals(s.mean)
    };
    match s.ci95_half_width {
        Some(hw) => format!("{:.d$}±{:.d$}", s.mean, hw),
        None => format!("{:.d$}", s.mean),
    }
}

/// Decimals enough for about four significant digits, none past a thousand.
fn decimals(v: f64) -> usize {
    let a = v.abs();
    if a >= 1000.0 {
        0
    } else if a >= 1.0 {
        3
    } else {
        4
    }
}

fn fmt_value(v: f64) -> String {
    let d = if v == v.trunc() { 0 } else { decimals(v) };
    format!("{v:.d$}")
}

/// What makes the two sides unlike, each named with the files that show it: another trace,
/// fleet or horizon; a report without digests; a side that mixes policies or settings, or
/// repeats a seed. Empty when the comparison is valid.
pub fn differences(base: &[Labeled], new: &[Labeled]) -> Vec<String> {
    let mut out = Vec::new();
    for (side, reports) in [("base", base), ("new", new)] {
        let unknown: Vec<&str> = reports
            .iter()
            .filter(|l| l.report.provenance.trace_sha256.is_empty())
            .map(|l| l.name.as_str())
            .collect();
        if !unknown.is_empty() {
            out.push(format!(
                "{side}: {} carry no trace, fleet or settings digests (written before berth recorded them); run them again",
                unknown.join(", ")
            ));
        }
        let settings = group(reports, |r| {
            format!(
                "policy {}, latency {}, settings {}",
                r.policy,
                r.latency,
                short(&r.provenance.settings_sha256)
            )
        });
        if settings.len() > 1 {
            out.push(format!(
                "{side} mixes settings: {}; a side is one configuration over several seeds",
                listing(&settings)
            ));
        }
        let runs = group(reports, |r| {
            format!(
                "seed {} of trace {}",
                r.seed,
                short(&r.provenance.trace_sha256)
            )
        });
        for (run, names) in runs.iter().filter(|(_, names)| names.len() > 1) {
            out.push(format!(
                "{side} has {run} more than once: {}",
                names.join(", ")
            ));
        }
    }
    // Compared by digest; the names only help a person find the runs.
    let axes: [Axis; 3] = [
        (
            "trace",
            |r| r.provenance.trace_sha256.clone(),
            |r| format!("{} (sha256 {})", r.trace, short(&r.provenance.trace_sha256)),
        ),
        (
            "fleet",
            |r| r.provenance.fleet_sha256.clone(),
            |r| {
                format!(
                    "{} hosts, {} vcpus (sha256 {})",
                    r.hosts,
                    r.fleet_vcpus,
                    short(&r.provenance.fleet_sha256)
                )
            },
        ),
        (
            "horizon",
            |r| r.provenance.horizon_ms.to_string(),
            |r| format!("{} ms", r.provenance.horizon_ms),
        ),
    ];
    for (what, id, show) in axes {
        let (b, n) = (group(base, id), group(new, id));
        if b.keys().ne(n.keys()) {
            let only = |side: &[Labeled],
                        mine: &BTreeMap<String, Vec<String>>,
                        theirs: &BTreeMap<String, Vec<String>>| {
                let parts: Vec<String> = mine
                    .iter()
                    .filter(|(k, _)| !theirs.contains_key(*k))
                    .map(|(k, names)| {
                        let shown = side
                            .iter()
                            .find(|l| id(&l.report) == *k)
                            .map(|l| show(&l.report))
                            .unwrap_or_default();
                        format!("{shown} in {}", names.join(", "))
                    })
                    .collect();
                if parts.is_empty() {
                    "nothing else".to_owned()
                } else {
                    parts.join("; ")
                }
            };
            out.push(format!(
                "{what} differs: base has {}; new has {}",
                only(base, &b, &n),
                only(new, &n, &b)
            ));
        }
    }
    out
}

/// A property both sides must share: its name, its identity, and how to show it.
type Axis = (&'static str, fn(&Report) -> String, fn(&Report) -> String);

/// File names grouped by a key of their report, in key order.
fn group(reports: &[Labeled], key: fn(&Report) -> String) -> BTreeMap<String, Vec<String>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in reports {
        groups
            .entry(key(&l.report))
            .or_default()
            .push(l.name.clone());
    }
    groups
}

fn listing(groups: &BTreeMap<String, Vec<String>>) -> String {
    groups
        .iter()
        .map(|(k, names)| format!("{k} in {}", names.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The first 12 hex digits of a digest, enough to tell runs apart in a message.
fn short(digest: &str) -> &str {
    if digest.is_empty() {
        "unknown"
    } else {
        digest.get(..12).unwrap_or(digest)
    }
}

/// Compares the sides metric by metric. Check [`differences`] first: this does not.
pub fn compare(base: &[Labeled], new: &[Labeled], options: Options) -> Comparison {
    let values = |side: &[Labeled], get: fn(&Report) -> f64| -> Vec<f64> {
        side.iter().map(|l| get(&l.report)).collect()
    };
    let tested = base.len() >= 2 && new.len() >= 2;
    let served_fewer =
        summarize(&values(new, unserved)).mean > summarize(&values(base, unserved)).mean;
    let rows = METRICS
        .iter()
        .map(|m| {
            let (b, n) = (values(base, m.get), values(new, m.get));
            let (bs, ns) = (summarize(&b), summarize(&n));
            let change_pct = (bs.mean != 0.0).then(|| (ns.mean - bs.mean) / bs.mean.abs() * 100.0);
            let p_value = welch_p(&b, &n);
            let verdict = judge(m, &bs, &ns, change_pct, p_value, served_fewer, options);
            Row {
                metric: m.name,
                better: m.better,
                base: bs,
                new: ns,
                change_pct,
                p_value,
                verdict,
            }
        })
        .collect();
    let mut notes = Vec::new();
    let (b_unserved, n_unserved) = (
        summarize(&values(base, unserved)).mean,
        summarize(&values(new, unserved)).mean,
    );
    if b_unserved != n_unserved {
        let requests = summarize(&values(base, |r| r.requests as f64)).mean;
        notes.push(format!(
            "of {} requests, base left {} unserved and new {} (rejected, failed, cancelled or refused); waits and times to running cover only the requests served",
            fmt_value(requests),
            fmt_value(b_unserved),
            fmt_value(n_unserved)
        ));
    }
    Comparison {
        options,
        rows,
        tested,
        notes,
    }
}

fn judge(
    m: &Metric,
    base: &Summary,
    new: &Summary,
    change_pct: Option<f64>,
    p_value: Option<f64>,
    served_fewer: bool,
    options: Options,
) -> Verdict {
    if m.better == Better::Neither {
        return Verdict::Info;
    }
    if base.mean == new.mean {
        return Verdict::Same;
    }
    if p_value.is_some_and(|p| p >= options.alpha) {
        return Verdict::NotSignificant;
    }
    let worse = match m.better {
        Better::Lower => new.mean > base.mean,
        Better::Higher | Better::Neither => new.mean < base.mean,
    };
    if !worse {
        return if m.of_served && served_fewer {
            Verdict::FewerServed
        } else {
            Verdict::Better
        };
    }
    let past = match change_pct {
        Some(c) => c.abs() > options.max_regression_pct,
        None => (new.mean - base.mean).abs() > m.zero_base_tolerance,
    };
    if past {
        Verdict::Regressed
    } else {
        Verdict::WorseWithin
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Metrics, RunInfo};

    fn report(seed: u64, mean_wait_s: f64, utilisation: f64) -> Labeled {
        let mut m = Metrics::new();
        m.submitted(0, 1);
        m.ended(1000);
        let mut r = m.report(
            RunInfo {
                seed,
                ..RunInfo::default()
            },
            crate::breakdown::Breakdowns::default(),
        );
        r.mean_wait_s = mean_wait_s;
        r.utilisation = utilisation;
        r.provenance.trace_sha256 = "t".repeat(64);
        r.provenance.fleet_sha256 = "f".repeat(64);
        r.provenance.settings_sha256 = "s".repeat(64);
        Labeled {
            name: format!("seed{seed}.json"),
            report: r,
        }
    }

    fn verdict(c: &Comparison, metric: &str) -> Verdict {
        c.rows
            .iter()
            .find(|r| r.metric == metric)
            .map(|r| r.verdict)
            .unwrap()
    }

    #[test]
    fn one_report_a_side_judges_by_the_threshold() {
        let o = Options::default();
        let c = compare(&[report(1, 100.0, 0.7)], &[report(1, 106.0, 0.7)], o);
        assert!(!c.tested);
        assert_eq!(c.regressed(), ["mean_wait_s"]);
        let c = compare(&[report(1, 100.0, 0.7)], &[report(1, 104.0, 0.6)], o);
        assert_eq!(verdict(&c, "mean_wait_s"), Verdict::WorseWithin);
        assert_eq!(c.regressed(), ["utilisation"]);
        let c = compare(&[report(1, 100.0, 0.7)], &[report(1, 50.0, 0.9)], o);
        assert!(c.regressed().is_empty(), "{}", c.table());
    }

    #[test]
    fn a_zero_base_regresses_only_past_the_tolerance() {
        let o = Options::default();
        let c = compare(&[report(1, 0.0, 0.7)], &[report(1, 0.5, 0.7)], o);
        assert!(c.regressed().is_empty());
        let c = compare(&[report(1, 0.0, 0.7)], &[report(1, 30.0, 0.7)], o);
        assert_eq!(c.regressed(), ["mean_wait_s"]);
    }

    #[test]
    fn rejected_requests_regress_and_their_missing_waits_do_not_improve() {
        let base = report(1, 100.0, 0.7);
        let mut new = report(1, 0.0, 0.0);
        new.report.rejected = new.report.requests;
        let c = compare(&[base], &[new], Options::default());
        assert_eq!(verdict(&c, "rejected"), Verdict::Regressed);
        assert_eq!(verdict(&c, "mean_wait_s"), Verdict::FewerServed);
        assert!(c.regressed().contains(&"rejected"), "{}", c.table());
        assert!(c.notes.iter().any(|n| n.contains("unserved")));
    }

    #[test]
    fn noise_across_seeds_is_not_a_regression() {
        let o = Options::default();
        let base = [
            report(1, 100.0, 0.7),
            report(2, 120.0, 0.7),
            report(3, 80.0, 0.7),
        ];
        let noisy = [
            report(1, 90.0, 0.7),
            report(2, 135.0, 0.7),
            report(3, 95.0, 0.7),
        ];
        let c = compare(&base, &noisy, o);
        assert!(c.tested);
        assert_eq!(verdict(&c, "mean_wait_s"), Verdict::NotSignificant);
        assert!(c.regressed().is_empty(), "{}", c.table());
        let worse = [
            report(1, 200.0, 0.7),
            report(2, 210.0, 0.7),
            report(3, 190.0, 0.7),
        ];
        let c = compare(&base, &worse, o);
        assert_eq!(c.regressed(), ["mean_wait_s"], "{}", c.table());
    }

    #[test]
    fn unlike_sides_are_named() {
        let base = [report(1, 1.0, 0.5)];
        let mut other = report(1, 1.0, 0.5);
        other.report.provenance.trace_sha256 = "a".repeat(64);
        other.report.provenance.horizon_ms = 5;
        let d = differences(&base, &[other]);
        assert!(d.iter().any(|m| m.starts_with("trace differs")), "{d:?}");
        assert!(d.iter().any(|m| m.starts_with("horizon differs")), "{d:?}");
        assert!(!d.iter().any(|m| m.starts_with("fleet")), "{d:?}");
        let twice = [report(1, 1.0, 0.5), report(1, 2.0, 0.5)];
        let d = differences(&twice, &base);
        assert!(d.iter().any(|m| m.contains("more than once")), "{d:?}");
        let mut old = report(1, 1.0, 0.5);
        old.report.provenance = crate::Provenance::default();
        let d = differences(&base, &[old]);
        assert!(d.iter().any(|m| m.contains("no trace, fleet")), "{d:?}");
        assert!(differences(&base, &base).is_empty());
        // The same trace under another file name is the same trace.
        let mut renamed = report(1, 1.0, 0.5);
        renamed.report.trace = "copy.jsonl.gz".into();
        assert!(differences(&base, &[renamed]).is_empty());
    }
}
