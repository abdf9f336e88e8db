//! `berth sim compare`: reports of two configurations, one or several a side, judged so that
//! the comparison cannot mislead.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use berth_sim::Report;
use berth_sim::compare::{Labeled, Options, compare, differences};
use clap::Args;

/// Exit status of a comparison that is refused: unreadable or unlike reports.
const INVALID: u8 = 2;

#[derive(Args)]
pub struct CompareArgs {
    /// The base: a JSON report (`sim run --report`), or a directory of them, one per seed.
    base: PathBuf,
    /// The new configuration: a report or a directory of reports, as for the base.
    new: PathBuf,
    /// Largest tolerated regression, in percent of the base.
    #[arg(long, default_value_t = 5.0)]
    max_regression: f64,
    /// With two or more reports a side, a difference counts only when Welch's two-sided
    /// p-value is below this.
    #[arg(long, default_value_t = 0.05)]
    alpha: f64,
    /// Compare reports of different traces, fleets or horizons all the same.
    #[arg(long)]
    allow_different: bool,
}

pub const AFTER_HELP: &str = "\
Exit status: 0 no regression, 1 a regression, 2 an invalid comparison (an unreadable file, or \
reports of different traces, fleets or horizons without --allow-different).

Waits, times to running and utilisation regress past --max-regression percent; rejected, \
failed, cancelled and refused requests regress too (from zero, any one). With one report a \
side every change past the threshold counts; with several (one per seed) only significant \
ones do (Welch's t-test).";

pub fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    match judge(&args) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("berth: {e:#}");
            Ok(ExitCode::from(INVALID))
        }
    }
}

fn judge(args: &CompareArgs) -> anyhow::Result<ExitCode> {
    if !(args.max_regression.is_finite() && args.max_regression >= 0.0) {
        anyhow::bail!(
            "--max-regression must be a percentage of 0 or more, got {}",
            args.max_regression
        );
    }
    if !(args.alpha > 0.0 && args.alpha < 1.0) {
        anyhow::bail!("--alpha must be between 0 and 1, got {}", args.alpha);
    }
    let base = read_side(&args.base)?;
    let new = read_side(&args.new)?;
    let unlike = differences(&base, &new);
    if !unlike.is_empty() {
        if !args.allow_different {
            for d in &unlike {
                eprintln!("berth: {d}");
            }
            anyhow::bail!(
                "refusing to compare unlike runs (--allow-different compares them anyway)"
            );
        }
        for d in &unlike {
            eprintln!("berth: warning: {d}");
        }
    }
    let options = Options {
        max_regression_pct: args.max_regression,
        alpha: args.alpha,
    };
    let comparison = compare(&base, &new, options);
    println!("base: {}", names(&base));
    println!("new:  {}", names(&new));
    print!("{}", comparison.table());
    let regressed = comparison.regressed();
    if regressed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "berth: regressed past {}%: {}",
            args.max_regression,
            regressed.join(", ")
        );
        Ok(ExitCode::from(1))
    }
}

fn names(side: &[Labeled]) -> String {
    let seeds: Vec<String> = side.iter().map(|l| l.report.seed.to_string()).collect();
    format!(
        "{} report{} (seed {})",
        side.len(),
        if side.len() == 1 { "" } else { "s" },
        seeds.join(", ")
    )
}

/// A report file, or every `*.json` file of a directory (in name order).
fn read_side(path: &Path) -> anyhow::Result<Vec<Labeled>> {
    let files = if path.is_dir() {
        let mut files = Vec::new();
        for entry in
            std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?
        {
            let entry = entry.with_context(|| format!("reading {}", path.display()))?;
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "json") && p.is_file() {
                files.push(p);
            }
        }
        files.sort();
        if files.is_empty() {
            anyhow::bail!("{}: no *.json reports in this directory", path.display());
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    files
        .iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let report: Report = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a berth sim report", p.display()))?;
            Ok(Labeled {
                name: p.display().to_string(),
                report,
            })
        })
        .collect()
}
