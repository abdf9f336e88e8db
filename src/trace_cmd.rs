//! `berth trace convert`, `berth trace synth` and `berth trace export`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use berth_traces::{Format, Generator, SwfMode, SynthConfig, TraceReader, TraceWriter};
use clap::Subcommand;

use crate::sim_cmd::{SwfModeArg, TraceFormat};

#[derive(Subcommand)]
pub enum TraceCommand {
    /// Write a trace of any supported format in berth's own format.
    Convert {
        input: PathBuf,
        #[arg(long, value_enum)]
        from: TraceFormat,
        #[arg(long, value_enum, default_value = "gang")]
        swf_mode: SwfModeArg,
        /// Output file (`.gz` compresses); standard output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Generate a synthetic CI workload (labelled synthetic in its header).
    Synth {
        #[arg(long)]
        vms: u64,
        /// Seeds what the changes ask for and when they arrive.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Size the arrival rate for this fleet file (with --load).
        #[arg(long, requires = "load")]
        fleet: Option<PathBuf>,
        /// The load of the fleet's busiest pool over the trace (by vCPUs, memory or slots,
        /// whichever binds), e.g. 0.85; the header records it.
        #[arg(long, requires = "fleet")]
        load: Option<f64>,
        /// Top-level changes of about 2,000 VMs each (1,980 when no build fails) that land
        /// together at a weekday peak, after half of the trace's VMs.
        #[arg(long, default_value_t = 0)]
        big_changes: u32,
        /// Output file (`.gz` compresses); standard output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a daemon's journal as a trace (and its fleet), for `berth sim run`.
    Export {
        /// The daemon's SQLite database (`DATA_DIR/berth.db`).
        #[arg(long, required_unless_present = "store", conflicts_with = "store")]
        db: Option<PathBuf>,
        /// The daemon's PostgreSQL store instead: its `postgres://` URL, as `berth serve
        /// --store` took it.
        #[arg(long)]
        store: Option<String>,
        /// Start here: milliseconds since the Unix epoch, a UTC time
        /// (`2026-03-01T08:00:00Z`), or a duration before now (`90m`, `6h`, `2d`).
        #[arg(long)]
        since: Option<String>,
        /// Output file (`.gz` compresses); standard output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write the fleet at the start (hosts with overcommit and images, templates) as
        /// a fleet file for `berth sim run --fleet`.
        #[arg(long)]
        fleet_out: Option<PathBuf>,
    },
}

pub fn run(command: TraceCommand) -> anyhow::Result<ExitCode> {
    match command {
        TraceCommand::Convert {
            input,
            from,
            swf_mode,
            out,
        } => {
            let format = match from {
                TraceFormat::Berth => Format::Berth,
                TraceFormat::Azure => Format::Azure,
                TraceFormat::Swf => Format::Swf {
                    mode: match swf_mode {
                        SwfModeArg::Gang => SwfMode::Gang,
                        SwfModeArg::Vm => SwfMode::Vm,
                    },
                },
            };
            let mut reader = TraceReader::open(&input, format)?;
            let header = reader.header().clone();
            let n = write_all(out.as_ref(), &header, &mut reader)?;
            if reader.skipped() > 0 {
                eprintln!(
                    "berth: warning: {}: skipped {} records without a processor count",
                    input.display(),
                    reader.skipped()
                );
            }
            eprintln!("berth: wrote {n} records");
            Ok(ExitCode::SUCCESS)
        }
        TraceCommand::Export {
            db,
            store,
            since,
            out,
            fleet_out,
        } => {
            let at = match (&db, &store) {
                (Some(db), _) => {
                    if !db.exists() {
                        anyhow::bail!("{}: no such database", db.display());
                    }
                    berth_daemon::db::StoreAt::Sqlite(db.clone())
                }
                (None, url) => berth_daemon::db::StoreAt::parse(url.as_deref(), Path::new(""))?,
            };
            let since_ms = since.as_deref().map(parse_since).transpose()?;
            let export = berth_daemon::export::export(&at, since_ms)
                .with_context(|| format!("exporting the journal of {}", at.display()))?;
            if let Some(path) = &fleet_out {
                std::fs::write(path, &export.fleet_toml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let mut records = export.records.into_iter().map(Ok);
            let n = write_all(out.as_ref(), &export.header, &mut records)?;
            eprintln!("berth: wrote {n} records");
            Ok(ExitCode::SUCCESS)
        }
        TraceCommand::Synth {
            vms,
            seed,
            fleet,
            load,
            big_changes,
            out,
        } => {
            let mut config = SynthConfig {
                big_changes,
                ..SynthConfig::new(vms, seed)
            };
            let mut note = None;
            if let (Some(path), Some(load)) = (&fleet, load) {
                let (sized, text) = size_for_load(path, &config, load)?;
                config.peak_changes_per_hour = sized;
                note = Some(text);
            }
            let generator = Generator::new(config)?;
            let mut header = generator.header().clone();
            if let Some(note) = note {
                header.source.push_str("; ");
                header.source.push_str(&note);
            }
            let mut records = generator.map(Ok);
            let n = write_all(out.as_ref(), &header, &mut records)?;
            eprintln!("berth: wrote {n} records ({vms} vms, synthetic)");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The peak rate at which the busiest pool of the fleet at `path` runs at `load`, and a note
/// for the header saying so.
fn size_for_load(
    path: &std::path::Path,
    config: &SynthConfig,
    load: f64,
) -> anyhow::Result<(f64, String)> {
    let fleet = berth_sim::Fleet::load(path)?;
    let sized = berth_sim::size_for_load(&fleet, config, load)
        .with_context(|| format!("sizing the workload for {}", path.display()))?;
    if sized.unfit_requests > 0 {
        eprintln!(
            "berth: warning: {}: no class runs {} of the workload's requests; the simulator will reject them",
            path.display(),
            sized.unfit_requests
        );
    }
    let fleet_name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let note = format!(
        "sized for load {:.3} on {fleet_name}: busiest pool {} by {}, {} changes over {:.1} days",
        sized.load,
        sized.pool,
        sized.resource,
        sized.n_changes,
        sized.span_ms as f64 / 86_400_000.0
    );
    eprintln!(
        "berth: {note}; peak {:.2} changes/h",
        sized.peak_changes_per_hour
    );
    Ok((sized.peak_changes_per_hour, note))
}

fn write_all(
    out: Option<&PathBuf>,
    header: &berth_traces::TraceHeader,
    records: &mut dyn Iterator<Item = Result<berth_traces::Record, berth_traces::TraceError>>,
) -> anyhow::Result<u64> {
    let mut n = 0;
    match out {
        Some(path) => {
            let mut w = TraceWriter::create(path, header)?;
            for r in records {
                w.write(&r?)?;
                n += 1;
            }
            w.finish()?;
        }
        None => {
            let stdout = std::io::stdout().lock();
            let mut w = TraceWriter::new(std::io::BufWriter::new(stdout), header)?;
            for r in records {
                w.write(&r?)?;
                n += 1;
            }
            w.finish()?.flush().context("writing standard output")?;
        }
    }
    Ok(n)
}

/// `--since`: milliseconds since the Unix epoch, `YYYY-MM-DDTHH:MM:SSZ` (UTC), or a duration
/// before now (`90s`, `30m`, `6h`, `2d`).
fn parse_since(text: &str) -> anyhow::Result<u64> {
    let bad = || {
        anyhow::anyhow!(
            "--since `{text}`: expected milliseconds since the Unix epoch, a UTC time such as 2026-03-01T08:00:00Z, or a duration such as 6h"
        )
    };
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let unit_ms = match text.chars().last() {
        Some('s') => Some(1_000),
        Some('m') => Some(60_000),
        Some('h') => Some(3_600_000),
        Some('d') => Some(86_400_000),
        _ => None,
    };
    if let Some(unit) = unit_ms
        && let Ok(n) = text[..text.len() - 1].parse::<u64>()
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        return Ok(now.saturating_sub(n.saturating_mul(unit)));
    }
    // YYYY-MM-DDTHH:MM:SSZ
    let t = text.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = t.split_once('T').ok_or_else(bad)?;
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let c: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || c.len() != 3 {
        return Err(bad());
    }
    let (y, m, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let (hh, mm, ss) = (num(c[0])?, num(c[1])?, num(c[2])?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs * 1000).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::parse_since;

    #[test]
    fn since_takes_epoch_ms_utc_times_and_durations() {
        assert_eq!(parse_since("1700000000000").ok(), Some(1_700_000_000_000));
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z").ok(),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_since("1970-01-01T00:00:00Z").ok(), Some(0));
        assert!(parse_since("6h").is_ok());
        assert!(parse_since("yesterday").is_err());
    }
}
