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
    let config = match &args.config {
        Some(p) => Some(
            berth_daemon::config::load(p)
                .with_context(|| format!("reading config {}", p.display()))?,
        ),
        None => None,
    };
    let url = args
        .url
        .clone()
        .or_else(|| std::env::var("BERTH_URL").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            config
                .as_ref()
                .and_then(|c| c.listen.as_ref())
                .map(|l| format!("http://{l}"))
        })
        .unwrap_or_else(|| format!("http://{}", berth_daemon::config::DEFAULT_LISTEN));
    let token = match args
        .token
        .clone()
        .or_else(|| std::env::var("BERTH_TOKEN").ok().filter(|s| !s.is_empty()))
    {
        Some(t) => Some(t),
        None => {
            let dir = args
                .data_dir
                .clone()
                .or_else(|| config.as_ref().and_then(|c| c.data_dir.clone()))
                .unwrap_or_else(berth_daemon::config::default_data_dir);
            std::fs::read_to_string(dir.join(berth_daemon::TOKEN_FILE))
                .ok()
                .map(|t| t.trim().to_owned())
        }
    };
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        anyhow::bail!("the console needs a terminal: run it in one (or use `berth status`)");
    }
    berth_tui::run_console(berth_tui::ConsoleOptions {
        url: url.trim_end_matches('/').to_owned(),
        token,
        read_only: args.read_only,
        refresh_ms: args.refresh_ms,
    })
    .context("running the console")?;
    Ok(ExitCode::SUCCESS)
}
