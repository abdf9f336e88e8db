//! `berth console`: the operations console (crate `berth-tui`) on a running daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct ConsoleArgs {
    /// The daemon's URL (also BERTH_URL; default from the config file's `listen`, else
    /// http://127.0.0.1:7878).
    #[arg(long)]
    url: Option<String>,
    /// A bearer token (also BERTH_TOKEN; default: the token file in the data directory).
    #[arg(long)]
    token: Option<String>,
    /// For an https:// daemon: trust only the CA certificates in this PEM file (also
    /// BERTH_CA_FILE; default: the public roots).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// The daemon's config file, for its address and data directory.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The data directory whose token file to read.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// No actions: drain, resume, offline, cancel, release and extend are not offered.
    #[arg(long)]
    read_only: bool,
    /// Milliseconds between snapshots (big fleets are fetched less often by themselves).
    #[arg(long, default_value_t = berth_tui::REFRESH_DEFAULT_MS)]
    refresh_ms: u64,
}

pub fn run(args: ConsoleArgs) -> anyhow::Result<ExitCode> {
    let (url, token) = crate::client_cmd::endpoint(
        args.url.as_deref(),
        args.token.as_deref(),
        args.config.as_deref(),
        args.data_dir.as_deref(),
    )?;
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        anyhow::bail!("the console needs a terminal: run it in one (or use `berth status`)");
    }
    berth_tui::run_console(berth_tui::ConsoleOptions {
        url,
        token,
        ca_file: crate::client_cmd::ca_file(args.ca_file),
        read_only: args.read_only,
        refresh_ms: args.refresh_ms,
    })
    .context("running the console")?;
    Ok(ExitCode::SUCCESS)
}
