//! Sweeps: the cross product of traces, fleets, policies, scheduler settings and seeds, run on
//! every core of one machine, or split into shards that any batch system (a Slurm job array,
//! a Kubernetes Indexed Job, a CI matrix) runs one each, then merged into one table with the
//! mean and 95% confidence interval over seeds.
//!
//! A shard is a deterministic share of the runs (run index modulo the shard count), written to
//! `shard-I-of-N.jsonl`: a header line, then one line per run with its full report. Merging
//! checks that the shards come from one spec and one build, and that every run is there once.

mod merge;
mod spec;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_traces::{Generator, TraceReader};
use serde::{Deserialize, Serialize};

pub use merge::{Merged, merge, merge_files, write_tables};
pub use spec::{FleetSpec, RunKey, SettingsSpec, Spec, TraceSource, TraceSpec};

use crate::provenance::{self, Tap};
use crate::{Provenance, Report, RunInfo, Simulation};

/// What can go wrong in a sweep; every variant names the file (and line) or the run at fault.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("{spec}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Spec {
        spec: String,
        line: Option<usize>,
        message: String,
    },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("run {index} ({label}): {message}")]
    Run {
        index: usize,
        label: String,
        message: String,
    },
    /// Shards that do not make one sweep: another spec or build, a run twice, a run missing.
    #[error("{0}")]
    Merge(String),
}

/// Which share of the runs to do: those whose index modulo `count` is `index` (from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// `I/N` with 0 ≤ I < N, as a job array's task index and count give it.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let bad =
            |why: &str| format!("--shard `{text}`: {why}; expected I/N with 0 <= I < N, e.g. 0/4");
        let (i, n) = text.split_once('/').ok_or_else(|| bad("no `/`"))?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| bad("I is not a whole number"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| bad("N is not a whole number"))?;
        if count == 0 || index >= count {
            return Err(bad("I must be below N"));
        }
        Ok(Shard { index, count })
    }

    pub fn holds(&self, run: usize) -> bool {
        run % self.count == self.index
    }

    pub fn file_name(&self) -> String {
        format!("shard-{}-of-{}.jsonl", self.index, self.count)
    }
}

/// The first line of a shard file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardHeader {
    /// The shard file format's version.
    pub berth_sweep: u32,
    pub spec_sha256: String,
    pub runs_total: usize,
    pub shard_index: usize,
    pub shard_count: usize,
    pub berth_version: String,
    pub commit: String,
}

/// One run of a shard file: where it sits in the sweep, and its report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunLine {
    pub run: usize,
    pub trace: String,
    pub fleet: String,
    pub policy: String,
    pub settings: String,
    pub seed: u64,
    pub report: Report,
}

impl RunLine {
    /// The configuration this run is one seed of.
    pub fn group(&self) -> (&str, &str, &str, &str) {
        (&self.trace, &self.fleet, &self.policy, &self.settings)
    }

    pub fn label(&self) -> String {
        format!(
            "{}/{}/{}/{}/seed {}",
            self.trace, self.fleet, self.policy, self.settings, self.seed
        )
    }
}

const SHARD_FORMAT_VERSION: u32 = 1;

/// Runs `shard`'s share of the sweep on `jobs` threads (a thread per run, at most `jobs` at
/// once) and returns the runs in index order. Each run depends only on its inputs, so the
/// reports are those of a sequential run (`wall_s` aside). `build` gives the version and
/// commit for the reports' provenance; `done` hears of each run as it ends. The first failed
/// run (in index order) is the error; no new run starts after a failure.
pub fn run(
    spec: &Spec,
    shard: Shard,
    jobs: usize,
    build: &Provenance,
    done: &(dyn Fn(&RunLine, Duration) + Sync),
) -> Result<Vec<RunLine>, SweepError> {
    let keys: Vec<RunKey> = spec
        .runs()
        .into_iter()
        .filter(|k| shard.holds(k.index))
        .collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let worker = || {
        let mut out = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(key) = keys.get(i) else { break };
            let started = Instant::now();
            let result = run_one(spec, key, build);
            match &result {
                Ok(line) => done(line, started.elapsed()),
                Err(_) => failed.store(true, Ordering::Relaxed),
            }
            out.push((i, result));
        }
        out
    };
    let n_threads = jobs.clamp(1, keys.len().max(1));
    let mut results = Vec::with_capacity(keys.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n_threads).map(|_| scope.spawn(worker)).collect();
        for h in handles {
            match h.join() {
                Ok(out) => results.extend(out),
                // A panic is a bug, not bad input: let it surface as one.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

fn run_one(spec: &Spec, key: &RunKey, build: &Provenance) -> Result<RunLine, SweepError> {
    let label = spec.label(key);
    let fail = |message: String| SweepError::Run {
        index: key.index,
        label: label.clone(),
        message,
    };
    let trace = &spec.traces[key.trace];
    let fleet = &spec.fleets[key.fleet];
    let settings = &spec.settings[key.settings];
    let mut config = settings.config.clone();
    config.policy = key.policy;
    config.seed = key.seed;
    let settings_sha256 = provenance::settings_sha256(&config);
    let sim = Simulation::new(&fleet.fleet, config).map_err(|e| fail(e.to_string()))?;
    let mut info = RunInfo {
        trace: trace.name.clone(),
        ..RunInfo::default()
    };
    let (mut report, horizon_ms, trace_sha256) = match &trace.source {
        TraceSource::File {
            path,
            format,
            sha256,
        } => {
            let mut reader = TraceReader::open(path, *format).map_err(|e| fail(e.to_string()))?;
            info.synthetic = reader.header().synthetic;
            info.trace = file_name(path);
            let mut tap = Tap::new(&mut reader);
            let (report, _) = sim
                .run(&mut tap, info, &mut |_, _| {})
                .map_err(|e| fail(e.to_string()))?;
            let horizon_ms = tap.horizon_ms();
            let mut report = report;
            report.skipped = reader.skipped();
            (report, horizon_ms, sha256.clone())
        }
        TraceSource::Synth {
            config,
            fixed_seed,
            load,
        } => {
            let mut config = config.clone();
            config.seed = fixed_seed.unwrap_or(key.seed);
            if let Some(load) = load {
                let sized = crate::size_for_load(&fleet.fleet, &config, *load)
                    .map_err(|e| fail(e.to_string()))?;
                config.peak_changes_per_hour = sized.peak_changes_per_hour;
            }
            let generator = Generator::new(config).map_err(|e| fail(e.to_string()))?;
            let header = generator.header().clone();
            info.synthetic = header.synthetic;
            let mut records = generator.map(Ok);
            let mut tap = Tap::hashing(&mut records, &header).map_err(|e| fail(e.to_string()))?;
            let (report, _) = sim
                .run(&mut tap, info, &mut |_, _| {})
                .map_err(|e| fail(e.to_string()))?;
            let horizon_ms = tap.horizon_ms();
            let sha256 = tap
                .finish()
                .map_err(|e| fail(e.to_string()))?
                .unwrap_or_default();
            (report, horizon_ms, sha256)
        }
    };
    report.provenance = Provenance {
        trace_sha256,
        fleet_sha256: fleet.sha256.clone(),
        settings_sha256,
        horizon_ms,
        ..build.clone()
    };
    Ok(RunLine {
        run: key.index,
        trace: trace.name.clone(),
        fleet: fleet.name.clone(),
        policy: key.policy.name().to_owned(),
        settings: settings.name.clone(),
        seed: key.seed,
        report,
    })
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Writes a shard's runs to `dir/shard-I-of-N.jsonl` (through a temporary file and a rename,
/// so that a shard file that exists is complete) and returns its path.
pub fn write_shard(
    dir: &Path,
    spec: &Spec,
    shard: Shard,
    build: &Provenance,
    runs: &[RunLine],
) -> Result<PathBuf, SweepError> {
    let io = |path: &Path, e: std::io::Error| SweepError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let header = ShardHeader {
        berth_sweep: SHARD_FORMAT_VERSION,
        spec_sha256: spec.sha256.clone(),
        runs_total: spec.runs().len(),
        shard_index: shard.index,
        shard_count: shard.count,
        berth_version: build.berth_version.clone(),
        commit: build.commit.clone(),
    };
    let mut text = json_line(&header)?;
    for r in runs {
        text.push_str(&json_line(r)?);
    }
    let path = dir.join(shard.file_name());
    let temp = dir.join(format!(".{}.partial", shard.file_name()));
    std::fs::write(&temp, text).map_err(|e| io(&temp, e))?;
    std::fs::rename(&temp, &path).map_err(|e| io(&path, e))?;
    Ok(path)
}

/// Writes each run's report as `dir/runs/TRACE/FLEET/POLICY/SETTINGS/seed-N.json`, so that one
/// configuration's seeds are one directory, as `berth sim compare` takes a side.
pub fn write_reports(dir: &Path, runs: &[RunLine]) -> Result<(), SweepError> {
    for r in runs {
        let run_dir = dir
            .join("runs")
            .join(&r.trace)
            .join(&r.fleet)
            .join(&r.policy)
            .join(&r.settings);
        std::fs::create_dir_all(&run_dir).map_err(|e| SweepError::Io {
            path: run_dir.display().to_string(),
            message: e.to_string(),
        })?;
        let path = run_dir.join(format!("seed-{}.json", r.seed));
        let text = serde_json::to_string_pretty(&r.report)
            .map_err(|e| SweepError::Merge(format!("serialising run {}: {e}", r.run)))?;
        std::fs::write(&path, text + "\n").map_err(|e| SweepError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    }
    Ok(())
}

fn json_line<T: Serialize>(value: &T) -> Result<String, SweepError> {
    let mut line = serde_json::to_string(value)
        .map_err(|e| SweepError::Merge(format!("serialising a shard line: {e}")))?;
    line.push('\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_split_the_runs() {
        assert_eq!(Shard::parse("1/3"), Ok(Shard { index: 1, count: 3 }));
        assert!(Shard::parse("3/3").unwrap_err().contains("below N"));
        assert!(Shard::parse("1of3").is_err());
        assert!(Shard::parse("0/0").is_err());
        let s = Shard::parse("2/3").unwrap();
        let mine: Vec<usize> = (0..10).filter(|&r| s.holds(r)).collect();
        assert_eq!(mine, [2, 5, 8]);
    }
}
