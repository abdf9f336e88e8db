//! Merging shard files into one sweep, refusing what does not make one (shards of another spec
//! or build, a run twice, a run missing), and the sweep's tables: Markdown, CSV and JSON with
//! the mean and 95% confidence interval over seeds of every metric of every configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{RunLine, SHARD_FORMAT_VERSION, ShardHeader, SweepError};
use crate::Report;
use crate::stats::summarize;

/// The runs of a whole sweep, in index order, and what they share.
#[derive(Clone, Debug, PartialEq)]
pub struct Merged {
    pub spec_sha256: String,
    pub berth_version: String,
    pub commit: String,
    pub runs: Vec<RunLine>,
}

/// How many runs a message lists before it says "and N more".
const LISTED_MAX: usize = 10;

/// Reads every `shard-I-of-N.jsonl` under `dir` (subdirectories too: a batch system's
/// artifacts often come one directory per task) and checks that they make one sweep.
pub fn merge(dir: &Path) -> Result<Merged, SweepError> {
    let mut files = Vec::new();
    find_shards(dir, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(SweepError::Merge(format!(
            "{}: no shard-I-of-N.jsonl files here; run `berth sim sweep SPEC --out {}` first",
            dir.display(),
            dir.display()
        )));
    }
    merge_files(&files)
}

/// Merges the given shard files, with the checks of [`merge`]. A whole sweep's tables come
/// from its one shard file read back, so that they are made exactly as a merge makes them.
pub fn merge_files(files: &[PathBuf]) -> Result<Merged, SweepError> {
    let mut shards: Vec<(PathBuf, ShardHeader, Vec<RunLine>)> = Vec::new();
    for path in files {
        let (header, runs) = read_shard(path)?;
        shards.push((path.clone(), header, runs));
    }

    // One spec, one build.
    let first = &shards[0].1;
    let by = |key: fn(&ShardHeader) -> String| {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (path, h, _) in &shards {
            groups
                .entry(key(h))
                .or_default()
                .push(path.display().to_string());
        }
        groups
    };
    for (what, key) in [
        (
            "specs",
            (|h: &ShardHeader| format!("spec sha256 {}", h.spec_sha256))
                as fn(&ShardHeader) -> String,
        ),
        ("builds", |h| {
            format!("berth {} commit {}", h.berth_version, h.commit)
        }),
        ("sweep sizes", |h| format!("{} runs", h.runs_total)),
    ] {
        let groups = by(key);
        if groups.len() > 1 {
            let listing: Vec<String> = groups
                .iter()
                .map(|(k, files)| format!("{k}: {}", listed(files)))
                .collect();
            return Err(SweepError::Merge(format!(
                "the shards come from different {what}: {}; merge the shards of one sweep only (move the others away, or give each sweep its own --out)",
                listing.join("; ")
            )));
        }
    }

    // Every run once.
    let total = first.runs_total;
    let mut seen: BTreeMap<usize, Vec<(String, &RunLine)>> = BTreeMap::new();
    for (path, _, runs) in &shards {
        for r in runs {
            seen.entry(r.run)
                .or_default()
                .push((path.display().to_string(), r));
        }
    }
    let duplicates: Vec<String> = seen
        .iter()
        .filter(|(_, places)| places.len() > 1)
        .map(|(run, places)| {
            let files: Vec<&str> = places.iter().map(|(f, _)| f.as_str()).collect();
            format!(
                "run {run} ({}) in {}",
                places[0].1.label(),
                files.join(" and ")
            )
        })
        .collect();
    if !duplicates.is_empty() {
        return Err(SweepError::Merge(format!(
            "{} runs appear more than once: {}",
            duplicates.len(),
            listed(&duplicates)
        )));
    }
    let missing: Vec<usize> = (0..total).filter(|r| !seen.contains_key(r)).collect();
    if !missing.is_empty() {
        let present: BTreeSet<(usize, usize)> = shards
            .iter()
            .map(|(_, h, _)| (h.shard_index, h.shard_count))
            .collect();
        let counts: BTreeSet<usize> = present.iter().map(|&(_, n)| n).collect();
        let absent: BTreeSet<String> = missing
            .iter()
            .flat_map(|r| counts.iter().map(move |&n| (r % n, n)))
            .filter(|s| !present.contains(s))
            .map(|(i, n)| format!("{i}/{n}"))
            .collect();
        let runs: Vec<String> = missing.iter().map(ToString::to_string).collect();
        let hint = if absent.is_empty() {
            String::new()
        } else {
            format!(
                "; no file holds shard {}",
                absent.into_iter().collect::<Vec<_>>().join(", ")
            )
        };
        return Err(SweepError::Merge(format!(
            "{} of {total} runs are missing: {}{hint}",
            missing.len(),
            listed(&runs)
        )));
    }
    if let Some(&extra) = seen.keys().find(|&&r| r >= total) {
        return Err(SweepError::Merge(format!(
            "run {extra} is past the sweep's {total} runs"
        )));
    }

    let spec_sha256 = first.spec_sha256.clone();
    let berth_version = first.berth_version.clone();
    let commit = first.commit.clone();
    let mut runs: Vec<RunLine> = shards.into_iter().flat_map(|(_, _, runs)| runs).collect();
    runs.sort_by_key(|r| r.run);
    Ok(Merged {
        spec_sha256,
        berth_version,
        commit,
        runs,
    })
}

fn listed(items: &[String]) -> String {
    let mut out = items
        .iter()
        .take(LISTED_MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > LISTED_MAX {
        let _ = write!(out, " and {} more", items.len() - LISTED_MAX);
    }
    out
}

fn find_shards(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), SweepError> {
    let io = |e: std::io::Error| SweepError::Io {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        // Symbolic links to directories are not followed: they could loop.
        if entry.file_type().map_err(io)?.is_dir() {
            find_shards(&path, out)?;
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_shard_name)
        {
            out.push(path);
        }
    }
    Ok(())
}

/// `shard-I-of-N.jsonl` with I and N whole numbers.
fn is_shard_name(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("shard-")
        .and_then(|r| r.strip_suffix(".jsonl"))
    else {
        return false;
    };
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    rest.split_once("-of-")
        .is_some_and(|(i, n)| number(i) && number(n))
}

fn read_shard(path: &Path) -> Result<(ShardHeader, Vec<RunLine>), SweepError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SweepError::Io {
        path: name.clone(),
        message: e.to_string(),
    })?;
    let bad = |line: usize, what: String| SweepError::Merge(format!("{name}:{line}: {what}"));
    let mut lines = text.lines();
    let header: ShardHeader = serde_json::from_str(lines.next().unwrap_or_default())
        .map_err(|e| bad(1, format!("not a sweep shard header: {e}")))?;
    if header.berth_sweep != SHARD_FORMAT_VERSION {
        return Err(bad(
            1,
            format!(
                "shard format {} (this berth reads {SHARD_FORMAT_VERSION})",
                header.berth_sweep
            ),
        ));
    }
    let mut runs = Vec::new();
    for (i, line) in lines.enumerate() {
        let run: RunLine =
            serde_json::from_str(line).map_err(|e| bad(i + 2, format!("not a sweep run: {e}")))?;
        if header.shard_count == 0 || run.run % header.shard_count != header.shard_index {
            return Err(bad(
                i + 2,
                format!(
                    "run {} does not belong to shard {}/{}",
                    run.run, header.shard_index, header.shard_count
                ),
            ));
        }
        runs.push(run);
    }
    Ok((header, runs))
}

/// A metric of the tables: its name, its heading in Markdown (if shown there), its decimals
/// there, and how to read it. `wall_s` is left out: it is the one figure a rerun changes.
struct Column {
    name: &'static str,
    heading: Option<&'static str>,
    decimals: usize,
    get: fn(&Report) -> f64,
}

const fn column(
    name: &'static str,
    heading: Option<&'static str>,
    decimals: usize,
    get: fn(&Report) -> f64,
) -> Column {
    Column {
        name,
        heading,
        decimals,
        get,
    }
}

const COLUMNS: [Column; 41] = [
    column("requests", None, 0, |r| r.requests as f64),
    column("vms", None, 0, |r| r.vms as f64),
    column("rejected", Some("rejected"), 1, |r| r.rejected as f64),
    column("cancelled", None, 1, |r| r.cancelled as f64),
    column("failed", Some("failed"), 1, |r| r.failed as f64),
    column("refused", None, 1, |r| r.refused as f64),
    column("mean_wait_s", Some("mean wait (s)"), 1, |r| r.mean_wait_s),
    column("p50_wait_s", None, 1, |r| r.p50_wait_s),
    column("p90_wait_s", Some("p90 wait (s)"), 1, |r| r.p90_wait_s),
    column("p99_wait_s", Some("p99 wait (s)"), 1, |r| r.p99_wait_s),
    column("max_wait_s", None, 1, |r| r.max_wait_s),
    column("mean_ttr_s", Some("mean to running (s)"), 1, |r| {
        r.mean_ttr_s
    }),
    column("p50_ttr_s", None, 1, |r| r.p50_ttr_s),
    column("p90_ttr_s", None, 1, |r| r.p90_ttr_s),
    column("p99_ttr_s", Some("p99 to running (s)"), 1, |r| r.p99_ttr_s),
    column("makespan_s", None, 0, |r| r.makespan_s),
    column("utilisation", Some("utilisation"), 4, |r| r.utilisation),
    column("queue_peak", None, 1, |r| r.queue_peak as f64),
    column("queue_mean", Some("queue mean"), 1, |r| r.queue_mean),
    column("vms_per_hour", None, 1, |r| r.vms_per_hour),
    column("held_vcpu_hours", None, 1, |r| r.held_vcpu_hours),
    column("warm_vcpu_hours", None, 1, |r| r.warm_vcpu_hours),
    column("handovers", None, 0, |r| r.handovers as f64),
    column("events", None, 0, |r| r.events as f64),
    // Change turnaround, all changes and by size class (`<10`, `10-199`, `>=200` VMs); 0 when
    // the trace names no changes or a class has none.
    column("changes", None, 0, |r| r.changes.changes as f64),
    column("p50_turnaround_s", None, 0, |r| r.changes.p50_turnaround_s),
    column("p90_turnaround_s", None, 0, |r| r.changes.p90_turnaround_s),
    column("p90_turnaround_lt10_s", None, 0, |r| change_p90(r, 0)),
    column("p50_turnaround_10_199_s", None, 0, |r| change_p50(r, 1)),
    column(
        "p90_turnaround_10_199_s",
        Some("p90 turnaround 10-199 VMs (s)"),
        0,
        |r| change_p90(r, 1),
    ),
    column("p50_turnaround_ge200_s", None, 0, |r| change_p50(r, 2)),
    column(
        "p90_turnaround_ge200_s",
        Some("p90 turnaround >=200 VMs (s)"),
        0,
        |r| change_p90(r, 2),
    ),
    column("changes_incomplete", None, 0, |r| {
        r.changes.incomplete as f64
    }),
    // How far the estimated starts were from the actual ones (`Report::eta`); 0 when the run
    // measured none.
    column("eta_median_abs_error_s", None, 0, |r| {
        r.eta.as_ref().map_or(0.0, |e| e.median_abs_error_s)
    }),
    column("eta_p90_abs_error_s", None, 0, |r| {
        r.eta.as_ref().map_or(0.0, |e| e.p90_abs_error_s)
    }),
    column("eta_median_rel_error", None, 4, |r| {
        r.eta.as_ref().map_or(0.0, |e| e.median_rel_error)
    }),
    // Base images moved (`Report::images`); 0 when the run models no images.
    column("pulls", None, 1, |r| {
        r.images.as_ref().map_or(0.0, |i| i.pulls as f64)
    }),
    column("pulls_ahead", None, 1, |r| {
        r.images.as_ref().map_or(0.0, |i| i.pulls_ahead as f64)
    }),
    column("pulled_gib", None, 1, |r| {
        r.images.as_ref().map_or(0.0, |i| i.pulled_gib)
    }),
    column("pull_s", None, 1, |r| {
        r.images.as_ref().map_or(0.0, |i| i.pull_s)
    }),
    column("evictions", None, 1, |r| {
        r.images.as_ref().map_or(0.0, |i| i.evictions as f64)
    }),
];

/// The p90 change turnaround of size class `i` (of `CHANGE_SIZE_NAMES`).
fn change_p90(r: &Report, i: usize) -> f64 {
    r.changes.by_size.get(i).map_or(0.0, |s| s.p90_turnaround_s)
}

/// The p50 change turnaround of size class `i` (of `CHANGE_SIZE_NAMES`).
fn change_p50(r: &Report, i: usize) -> f64 {
    r.changes.by_size.get(i).map_or(0.0, |s| s.p50_turnaround_s)
}

/// One configuration over its seeds.
#[derive(Serialize)]
struct Group<'a> {
    trace: &'a str,
    fleet: &'a str,
    policy: &'a str,
    settings: &'a str,
    seeds: Vec<u64>,
    /// Per seed: a synthetic trace differs by seed.
    trace_sha256: Vec<&'a str>,
    fleet_sha256: &'a str,
    settings_sha256: &'a str,
    metrics: Vec<MetricSummary>,
}

#[derive(Serialize)]
struct MetricSummary {
    metric: &'static str,
    n: usize,
    mean: f64,
    stddev: Option<f64>,
    ci95_low: Option<f64>,
    ci95_high: Option<f64>,
    /// Per seed, in the order of `seeds`.
    values: Vec<f64>,
}

#[derive(Serialize)]
struct SweepJson<'a> {
    spec_sha256: &'a str,
    berth_version: &'a str,
    commit: &'a str,
    runs: usize,
    groups: Vec<Group<'a>>,
}

impl Merged {
    /// Configurations in the order of their first run, each with its runs' reports.
    fn groups(&self) -> Vec<Group<'_>> {
        let mut order: Vec<(&str, &str, &str, &str)> = Vec::new();
        let mut members: BTreeMap<(&str, &str, &str, &str), Vec<&RunLine>> = BTreeMap::new();
        for r in &self.runs {
            let key = r.group();
            if !members.contains_key(&key) {
                order.push(key);
            }
            members.entry(key).or_default().push(r);
        }
        order
            .into_iter()
            .map(|key| {
                let runs = members.remove(&key).unwrap_or_default();
                let metrics = COLUMNS
                    .iter()
                    .map(|c| {
                        let values: Vec<f64> = runs.iter().map(|r| (c.get)(&r.report)).collect();
                        let s = summarize(&values);
                        MetricSummary {
                            metric: c.name,
                            n: s.n,
                            mean: s.mean,
                            stddev: s.stddev,
                            ci95_low: s.ci95_half_width.map(|hw| s.mean - hw),
                            ci95_high: s.ci95_half_width.map(|hw| s.mean + hw),
                            values,
                        }
                    })
                    .collect();
                Group {
                    trace: key.0,
                    fleet: key.1,
                    policy: key.2,
                    settings: key.3,
                    seeds: runs.iter().map(|r| r.seed).collect(),
                    trace_sha256: runs
                        .iter()
                        .map(|r| r.report.provenance.trace_sha256.as_str())
                        .collect(),
                    fleet_sha256: runs
                        .first()
                        .map_or("", |r| r.report.provenance.fleet_sha256.as_str()),
                    settings_sha256: runs
                        .first()
                        .map_or("", |r| r.report.provenance.settings_sha256.as_str()),
                    metrics,
                }
            })
            .collect()
    }

    /// The table for people: one row per configuration, the main metrics as mean ± the 95%
    /// confidence interval's half-width.
    pub fn markdown(&self) -> String {
        let groups = self.groups();
        let mut out = String::new();
        let _ = writeln!(out, "# berth sim sweep\n");
        let _ = writeln!(
            out,
            "berth {} (commit {}), spec sha256 {}: {} runs, {} configurations.",
            self.berth_version,
            self.commit,
            self.spec_sha256,
            self.runs.len(),
            groups.len()
        );
        let _ = writeln!(
            out,
            "Each figure is the mean over seeds ± the half-width of its 95% confidence interval (Student t); one seed shows its value alone.\n"
        );
        let shown: Vec<(usize, &Column)> = COLUMNS
            .iter()
            .enumerate()
            .filter(|(_, c)| c.heading.is_some())
            .collect();
        out.push_str("| trace | fleet | policy | settings | seeds |");
        for (_, c) in &shown {
            let _ = write!(out, " {} |", c.heading.unwrap_or(c.name));
        }
        out.push_str("\n|---|---|---|---|---|");
        for _ in &shown {
            out.push_str("---:|");
        }
        out.push('\n');
        for g in &groups {
            let seeds: Vec<String> = g.seeds.iter().map(ToString::to_string).collect();
            let _ = write!(
                out,
                "| {} | {} | {} | {} | {} |",
                g.trace,
                g.fleet,
                g.policy,
                g.settings,
                seeds.join(", ")
            );
            for &(i, c) in &shown {
                let m = &g.metrics[i];
                let d = c.decimals;
                match (m.ci95_low, m.ci95_high) {
                    (Some(lo), Some(hi)) => {
                        let _ = write!(out, " {:.d$} ± {:.d$} |", m.mean, (hi - lo) / 2.0);
                    }
                    _ => {
                        let _ = write!(out, " {:.d$} |", m.mean);
                    }
                }
            }
            out.push('\n');
        }
        out
    }

    /// Every metric of every configuration, one per line, for spreadsheets and data frames.
    pub fn csv(&self) -> String {
        let mut out =
            String::from("trace,fleet,policy,settings,metric,n,mean,stddev,ci95_low,ci95_high\n");
        let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        for g in self.groups() {
            for m in &g.metrics {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{}",
                    g.trace,
                    g.fleet,
                    g.policy,
                    g.settings,
                    m.metric,
                    m.n,
                    m.mean,
                    opt(m.stddev),
                    opt(m.ci95_low),
                    opt(m.ci95_high)
                );
            }
        }
        out
    }

    /// Everything, with the per-seed values and digests, for programs.
    pub fn json(&self) -> String {
        let doc = SweepJson {
            spec_sha256: &self.spec_sha256,
            berth_version: &self.berth_version,
            commit: &self.commit,
            runs: self.runs.len(),
            groups: self.groups(),
        };
        // Plain data (strings, numbers, options, vectors) always serialises.
        serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
    }
}

/// Writes `sweep.md`, `sweep.csv` and `sweep.json` into `dir` and returns their paths.
pub fn write_tables(dir: &Path, merged: &Merged) -> Result<Vec<PathBuf>, SweepError> {
    let mut written = Vec::new();
    for (name, text) in [
        ("sweep.md", merged.markdown()),
        ("sweep.csv", merged.csv()),
        ("sweep.json", merged.json()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| SweepError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_back_bit_for_bit() {
        // serde_json without `float_roundtrip` parsed this as 13923.31529905914: a merged sweep
        // then differed from the whole one in the last digit.
        let mut report = crate::report::Metrics::new().report(
            crate::RunInfo::default(),
            crate::breakdown::Breakdowns::default(),
        );
        report.mean_wait_s = 13_923.315_299_059_139;
        report.utilisation = 0.072_667_266_316_560_91;
        let text = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back.mean_wait_s.to_bits(), report.mean_wait_s.to_bits());
        assert_eq!(back.utilisation.to_bits(), report.utilisation.to_bits());
    }

    #[test]
    fn shard_names() {
        assert!(is_shard_name("shard-0-of-3.jsonl"));
        assert!(is_shard_name("shard-12-of-100.jsonl"));
        assert!(!is_shard_name(".shard-0-of-3.jsonl.partial"));
        assert!(!is_shard_name("shard-a-of-3.jsonl"));
        assert!(!is_shard_name("sweep.json"));
    }
}
