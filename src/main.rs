//! The `berth` binary, the one command of berth, a fleet scheduler for CI virtual machines:
//! - `sim run|compare|sweep|plot`: replay traces through the scheduler on simulated hosts, and
//!   compare, sweep and plot the reports;
//! - `trace convert|synth|export`: convert published traces, synthesise CI workloads, export
//!   the daemon's journal as a trace;
//! - `serve`: the live daemon (control loop, SQLite journal, HTTP API);
//! - `request`, `change`, `vm`, `host`, `template`, `events`, `hook`, `orphan`, `status`: clients of
//!   the daemon's API, with the exit codes of [`exit`];
//! - `console`: the operations console on a running daemon;
//! - `demo`: an embedded daemon on simulated hosts, fed a synthetic CI workload, with the
//!   console on it.

/// mimalloc rather than the system allocator: glibc keeps what each thread freed in that
/// thread's arena, so after a flood of large answers (lists of 100,000 rows, forecasts) on the
/// daemon's many threads its resident memory stayed near the peak for good; mimalloc returns
/// freed pages to the system. It is built without asking for transparent huge pages: on a
/// system that grants them on request, a KTH replay's 8 MiB of heap held 31 MiB resident in
/// 2 MiB pages, and zeroing them took 5–16% of the run (kernel samples of `perf record`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod client_cmd;
mod compare_cmd;
mod console_cmd;
mod demo_cmd;
mod exit;
mod human;
mod output;
mod plot_cmd;
mod serve_cmd;
mod sim_cmd;
mod sweep_cmd;
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
    /// Run the live daemon: control loop, journal, HTTP API (default: a simulated fleet).
    Serve(serve_cmd::ServeArgs),
    /// Ask the daemon for VMs (or show, list and cancel requests).
    Request(client_cmd::RequestArgs),
    /// Staged changes: their VMs by where they stand, and their turnaround.
    Change(client_cmd::ChangeArgs),
    /// Accounts under fair share: weight and share against recent usage, what each holds.
    Account(client_cmd::AccountArgs),
    /// List and show VMs, report job results, release and extend breakpoints.
    Vm(client_cmd::VmArgs),
    /// List, show, add, drain, resume, take offline and remove hosts.
    Host(client_cmd::HostArgs),
    /// Base images: where they are, pulls ahead of demand, evictions.
    Image(client_cmd::ImageArgs),
    /// The templates VMs are made from, and which host classes can run them.
    Template(client_cmd::TemplateArgs),
    /// The daemon's state changes as they happen: VMs, requests, hosts.
    Events(client_cmd::EventsArgs),
    /// The hook run log.
    Hook(client_cmd::HookArgs),
    /// VMs found on the hosts that berth keeps rather than destroys: list, destroy.
    Orphan(client_cmd::OrphanArgs),
    /// The daemon's hosts, VMs and queue at a glance.
    Status(client_cmd::StatusArgs),
    /// The operations console: hosts, queue, VMs and breakpoints, with drain, VNC and release keys.
    Console(console_cmd::ConsoleArgs),
    /// An embedded daemon on simulated hosts fed by a synthetic CI workload, with the console on it.
    Demo(demo_cmd::DemoArgs),
}

/// The provenance every simulation report starts from: this binary's version and commit
/// (`build.rs`), digests still empty.
pub(crate) fn build_provenance() -> berth_sim::Provenance {
    berth_sim::Provenance {
        berth_version: env!("CARGO_PKG_VERSION").to_owned(),
        commit: env!("BERTH_COMMIT").to_owned(),
        ..berth_sim::Provenance::default()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(c) => sim_cmd::run(c),
        Command::Trace(c) => trace_cmd::run(c),
        Command::Serve(c) => serve_cmd::run(c),
        Command::Request(c) => client_cmd::request(c),
        Command::Change(c) => client_cmd::change(c),
        Command::Account(c) => client_cmd::account(c),
        Command::Vm(c) => client_cmd::vm(c),
        Command::Host(c) => client_cmd::host(c),
        Command::Image(c) => client_cmd::image(c),
        Command::Status(c) => client_cmd::status(c),
        Command::Template(c) => client_cmd::template(c),
        Command::Events(c) => client_cmd::events(c),
        Command::Hook(c) => client_cmd::hook(c),
        Command::Orphan(c) => client_cmd::orphan(c),
        Command::Console(c) => console_cmd::run(c),
        Command::Demo(c) => demo_cmd::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => exit::report(&e),
    }
}
