//! `berth sim plot`: draws one or more JSON reports into one SVG, overlaid with a legend.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use berth_sim::Report;
use berth_sim::plot::{Run, write_svg};
use clap::Args;

#[derive(Args)]
pub struct PlotArgs {
    /// JSON reports of `berth sim run --report`; each becomes one line, named by its file
    /// name without `.json`.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// The SVG file to write.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: PlotArgs) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::with_capacity(args.reports.len());
    for path in &args.reports {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let report: Report = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a berth sim report", path.display()))?;
        reports.push((label(path), report));
    }
    let runs: Vec<Run> = reports
        .iter()
        .map(|(label, report)| Run {
            label: label.clone(),
            report,
        })
        .collect();
    write_svg(&args.out, &runs)
        .map_err(|e| anyhow::anyhow!("drawing {}: {e}", args.out.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// A run's legend label: its report's file name without `.json`.
fn label(path: &std::path::Path) -> String {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    name.strip_suffix(".json")
        .map_or(name.clone(), str::to_owned)
}
