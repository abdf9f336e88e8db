//! `berth trace convert` and `berth trace synth`.

use std::io::Write;
use std::path::PathBuf;
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
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file (`.gz` compresses); standard output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
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
        TraceCommand::Synth { vms, seed, out } => {
            let generator = Generator::new(SynthConfig::new(vms, seed))?;
            let header = generator.header().clone();
            let mut records = generator.map(Ok);
            let n = write_all(out.as_ref(), &header, &mut records)?;
            eprintln!("berth: wrote {n} records ({vms} vms, synthetic)");
            Ok(ExitCode::SUCCESS)
        }
    }
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
