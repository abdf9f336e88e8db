//! The `berth` command line: simulate traces, convert and synthesise them.

mod sim_cmd;
mod trace_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// berth: a fleet scheduler for CI virtual machines.
#[derive(Parser)]
#[command(name = "berth", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay traces through the real scheduler on simulated hosts, and compare runs.
    #[command(subcommand)]
    Sim(sim_cmd::SimCommand),
    /// Convert and synthesise traces.
    #[command(subcommand)]
    Trace(trace_cmd::TraceCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(c) => sim_cmd::run(c),
        Command::Trace(c) => trace_cmd::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: {e:#}");
            ExitCode::FAILURE
        }
    }
}
