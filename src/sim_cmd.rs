//! `berth sim run`; `berth sim compare`, `berth sim sweep` and `berth sim plot` are in their
//! own modules.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use berth_sched::Policy;
use berth_sim::provenance::{self, Tap};
use berth_sim::{Fleet, Profile, Provenance, RunInfo, SimConfig, Simulation};
use berth_traces::{Format, SwfMode};
use clap::{Args, Subcommand, ValueEnum};

#[derive(Subcommand)]
pub enum SimCommand {
    /// Replay a trace and report waits, time to running, utilisation and queue length.
    Run(RunArgs),
    /// Compare reports of two configurations (one or several a side, one per seed); exits
    /// with status 1 on a regression and 2 when the comparison is invalid.
    #[command(after_help = crate::compare_cmd::AFTER_HELP)]
    Compare(crate::compare_cmd::CompareArgs),
    /// Run the cross product of traces, fleets, policies, settings and seeds in a sweep spec,
    /// on every core or one shard at a time; `merge` combines shards into one table.
    Sweep(crate::sweep_cmd::SweepArgs),
    /// Draw JSON reports into one SVG: wait and time-to-running CDFs (log axes), the queue
    /// and each host class's utilisation over time, one line per report.
    Plot(crate::plot_cmd::PlotArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TraceFormat {
    Berth,
    Swf,
    Azure,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SwfModeArg {
    /// A job of N processors becomes a gang of N one-vCPU VMs.
    Gang,
    /// A job of N processors becomes one VM of N vCPUs.
    Vm,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PolicyArg {
    Fcfs,
    Easy,
    Greedy,
    /// AccaSim 1.1.3's EASYBackfilling as its code behaves (for cross-checking only).
    AccasimEasy,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LatencyArg {
    Zero,
    Default,
}

#[derive(Args)]
pub struct RunArgs {
    /// The trace file (`.gz` is read transparently).
    #[arg(long)]
    trace: PathBuf,
    #[arg(long, value_enum, default_value = "berth")]
    format: TraceFormat,
    #[arg(long, value_enum, default_value = "gang")]
    swf_mode: SwfModeArg,
    /// A fleet file (TOML host classes and templates).
    #[arg(long, conflicts_with = "hosts", required_unless_present = "hosts")]
    fleet: Option<PathBuf>,
    /// One class of identical hosts: COUNTxCPUS[:MEMORY_MIB].
    #[arg(long)]
    hosts: Option<String>,
    #[arg(long, value_enum, default_value = "easy")]
    policy: PolicyArg,
    #[arg(long, value_enum, default_value = "default")]
    latency: LatencyArg,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Mean hours between failures of each host (off when absent).
    #[arg(long)]
    mtbf_hours: Option<f64>,
    /// Mean hours to repair a failed host.
    #[arg(long, default_value_t = 4.0)]
    mttr_hours: f64,
    /// Mean minutes before a developer releases a held VM.
    #[arg(long, default_value_t = 30.0)]
    dev_delay_minutes: f64,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Draw the wait and time-to-running CDFs, the queue and each host class's utilisation
    /// over time as SVG into this file (`berth sim plot` overlays several runs).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write every placement (time, VM, request, host) as JSON lines into this file, to
    /// compare a replay with the live run it recorded.
    #[arg(long)]
    placements: Option<PathBuf>,
    /// Measure the estimated start of at most this many submits (spread over the run) against
    /// their actual start, for the report's `eta` line; 0: none.
    #[arg(long, default_value_t = berth_sim::ETA_SAMPLES_DEFAULT)]
    eta_samples: usize,
}

fn hours_ms(h: f64, what: &str) -> anyhow::Result<u64> {
    if !(h.is_finite() && h > 0.0) {
        bail!("{what} must be a positive number of hours, got {h}");
    }
    Ok((h * 3_600_000.0).round() as u64)
}

pub fn run(command: SimCommand) -> anyhow::Result<ExitCode> {
    match command {
        SimCommand::Run(args) => run_sim(args),
        SimCommand::Compare(args) => crate::compare_cmd::run(args),
        SimCommand::Sweep(args) => crate::sweep_cmd::run(args),
        SimCommand::Plot(args) => crate::plot_cmd::run(args),
    }
}

fn run_sim(args: RunArgs) -> anyhow::Result<ExitCode> {
    let fleet = match (&args.fleet, &args.hosts) {
        (Some(path), _) => Fleet::load(path)?,
        (None, Some(spec)) => Fleet::uniform(spec)?,
        (None, None) => bail!("give --fleet FILE or --hosts COUNTxCPUS[:MEMORY_MIB]"),
    };
    let format = match args.format {
        TraceFormat::Berth => Format::Berth,
        TraceFormat::Azure => Format::Azure,
        TraceFormat::Swf => Format::Swf {
            mode: match args.swf_mode {
                SwfModeArg::Gang => SwfMode::Gang,
                SwfModeArg::Vm => SwfMode::Vm,
            },
        },
    };
    let config = SimConfig {
        policy: match args.policy {
            PolicyArg::Fcfs => Policy::Fcfs,
            PolicyArg::Easy => Policy::Easy,
            PolicyArg::Greedy => Policy::Greedy,
            PolicyArg::AccasimEasy => Policy::AccasimEasy,
        },
        latency: match args.latency {
            LatencyArg::Zero => Profile::Zero,
            LatencyArg::Default => Profile::Default,
        },
        seed: args.seed,
        mtbf_ms: args
            .mtbf_hours
            .map(|h| hours_ms(h, "--mtbf-hours"))
            .transpose()?,
        mttr_ms: hours_ms(args.mttr_hours, "--mttr-hours")?,
        dev_delay_ms: hours_ms(args.dev_delay_minutes / 60.0, "--dev-delay-minutes")?,
        eta_samples_max: args.eta_samples,
        ..SimConfig::default()
    };
    let settings_sha256 = provenance::settings_sha256(&config);
    let (mut reader, trace_hash) = provenance::open_hashed(&args.trace, format)?;
    let info = RunInfo {
        trace: args.trace.file_name().map_or_else(
            || args.trace.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        synthetic: reader.header().synthetic,
        ..RunInfo::default()
    };
    let mut sim = Simulation::new(&fleet, config)?;
    if args.placements.is_some() {
        sim.log_placements();
    }
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message("replaying");
        bar
    });
    let mut progress = |records: u64, now_ms: u64| {
        if let Some(bar) = &bar {
            bar.set_message(format!(
                "{records} records, simulated day {:.1}",
                now_ms as f64 / 86_400_000.0
            ));
            bar.tick();
        }
    };
    let ((mut report, timeline), horizon_ms) = berth_traces::read_ahead(&mut reader, |records| {
        let mut tap = Tap::new(records);
        let run = sim.run(&mut tap, info, &mut progress)?;
        anyhow::Ok((run, tap.horizon_ms()))
    })?;
    report.provenance = Provenance {
        horizon_ms,
        trace_sha256: trace_hash.finish(),
        fleet_sha256: match (&args.fleet, &args.hosts) {
            (Some(path), _) => provenance::fleet_file_sha256(path)?,
            (None, spec) => provenance::uniform_fleet_sha256(spec.as_deref().unwrap_or_default()),
        },
        settings_sha256,
        ..crate::build_provenance()
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    report.skipped = reader.skipped();
    if report.skipped > 0 {
        eprintln!(
            "berth: warning: {}: skipped {} records without a processor count",
            args.trace.display(),
            report.skipped
        );
    }
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let (Some(path), Some(log)) = (&args.placements, &timeline.placements) {
        let mut text = String::new();
        for p in log {
            text.push_str(&serde_json::to_string(p)?);
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let run = berth_sim::plot::Run {
            label: format!("{} ({})", report.trace, report.policy),
            report: &report,
        };
        berth_sim::plot::write_svg(path, &[run])
            .map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}
