//! `berth sim sweep`: run a sweep spec's runs (all, or one shard) on every core, and
//! `berth sim sweep merge`: combine shards into the sweep's tables.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::bail;
use berth_sim::sweep::{self, Merged, Shard, Spec};
use clap::{Args, Subcommand};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SweepArgs {
    #[command(subcommand)]
    command: Option<SweepCommand>,
    /// The sweep spec: traces, fleets, policies, settings and seeds (TOML; see
    /// docs/simulation.md, "Sweeps").
    #[arg(required = true)]
    spec: Option<PathBuf>,
    /// Runs at once, one thread each (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Run only shard I of N (0 <= I < N): the runs whose index modulo N is I. Give each task
    /// of a job array, an Indexed Job or a CI matrix its own I, then merge.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// Where to write `shard-I-of-N.jsonl`, each run's report under `runs/` (one directory per
    /// configuration, as `sim compare` takes a side) and, for a whole sweep, `sweep.md`,
    /// `sweep.csv` and `sweep.json`.
    #[arg(long, required = true)]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum SweepCommand {
    /// Combine every shard-I-of-N.jsonl under DIR into DIR/sweep.md, sweep.csv and sweep.json,
    /// refusing shards of another spec or build, runs present twice and runs missing.
    Merge { dir: PathBuf },
}

pub fn run(args: SweepArgs) -> anyhow::Result<ExitCode> {
    match (args.command, args.spec, args.out) {
        (Some(SweepCommand::Merge { dir }), _, _) => merge(&dir),
        (None, Some(spec), Some(out)) => run_sweep(&spec, args.jobs, args.shard.as_deref(), &out),
        _ => bail!("give a sweep spec and --out DIR, or `merge DIR`"),
    }
}

fn run_sweep(
    spec_path: &Path,
    jobs: Option<usize>,
    shard: Option<&str>,
    out: &Path,
) -> anyhow::Result<ExitCode> {
    let spec = Spec::load(spec_path)?;
    let shard = shard
        .map(Shard::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?
        .unwrap_or(Shard::ALL);
    let jobs = match jobs {
        Some(0) => bail!("--jobs must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let total = spec.runs().len();
    let mine = (0..total).filter(|&r| shard.holds(r)).count();
    eprintln!(
        "berth: {}: {total} runs ({} traces × {} fleets × {} policies × {} settings × {} seeds); shard {}/{} runs {mine} on {} threads",
        spec.name,
        spec.traces.len(),
        spec.fleets.len(),
        spec.policies.len(),
        spec.settings.len(),
        spec.seeds.len(),
        shard.index,
        shard.count,
        jobs.min(mine.max(1)),
    );
    let build = crate::build_provenance();
    let finished = AtomicUsize::new(0);
    let started = Instant::now();
    let runs = sweep::run(&spec, shard, jobs, &build, &|line, took| {
        let k = finished.fetch_add(1, Ordering::Relaxed) + 1;
        eprintln!(
            "berth: [{k}/{mine}] run {} {}: {:.2} s",
            line.run,
            line.label(),
            took.as_secs_f64()
        );
    })?;
    let path = sweep::write_shard(out, &spec, shard, &build, &runs)?;
    sweep::write_reports(out, &runs)?;
    eprintln!(
        "berth: {mine} runs in {:.2} s; wrote {}",
        started.elapsed().as_secs_f64(),
        path.display()
    );
    if shard.count > 1 {
        eprintln!(
            "berth: when every shard is done, gather the shard files under one directory and run `berth sim sweep merge DIR`"
        );
        return Ok(ExitCode::SUCCESS);
    }
    // The tables come from the shard file read back, exactly as `merge` makes them.
    let merged = sweep::merge_files(&[path])?;
    write_tables(out, &merged)
}

fn merge(dir: &Path) -> anyhow::Result<ExitCode> {
    let merged = sweep::merge(dir)?;
    write_tables(dir, &merged)
}

fn write_tables(dir: &Path, merged: &Merged) -> anyhow::Result<ExitCode> {
    let written = sweep::write_tables(dir, merged)?;
    print!("{}", merged.markdown());
    let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    eprintln!("berth: wrote {}", names.join(", "));
    Ok(ExitCode::SUCCESS)
}
