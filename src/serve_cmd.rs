//! `berth serve`: runs the live daemon until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct ServeArgs {
    /// The TOML config file (listen address, data directory, tokens, templates, hosts, probe
    /// settings, policy). Without one: a simulated fleet of 16 hosts on 127.0.0.1:7878.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the database, the operator token and the simulated inventory live
    /// (default: $XDG_DATA_HOME/berth or ~/.local/share/berth).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The store, instead of SQLite in the data directory: a PostgreSQL URL
    /// (`postgres://USER:PASSWORD@HOST:PORT/DATABASE`, TLS by `?sslmode=`; the config's `store`
    /// otherwise).
    #[arg(long)]
    store: Option<String>,
    /// The address to listen on (default 127.0.0.1:7878).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Start even though the journal cannot account for the VMs on the hosts (a lost or new
    /// database on a running fleet), keeping every such VM as a kept orphan (`berth orphan`).
    #[arg(long, conflicts_with = "destroy_orphans")]
    adopt_orphans: bool,
    /// Start even though the journal cannot account for the VMs on the hosts, destroying them.
    #[arg(long)]
    destroy_orphans: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Standard error, and the ring of recent lines operators read with `GET /v1/logs`.
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(berth_daemon::logs::layer())
        .init();
    let mut config = match &args.config {
        Some(path) => berth_daemon::config::load(path)
            .with_context(|| format!("reading config {}", path.display()))?,
        None => berth_daemon::FileConfig::default(),
    };
    if args.store.is_some() {
        config.store = args.store;
    }
    let mut opts = berth_daemon::Options::new(config, args.data_dir, args.listen)
        .context("resolving the daemon's options")?;
    opts.orphans = match (args.adopt_orphans, args.destroy_orphans) {
        (true, _) => berth_daemon::OrphanStart::Adopt,
        (_, true) => berth_daemon::OrphanStart::Destroy,
        _ => berth_daemon::OrphanStart::Refuse,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut daemon = berth_daemon::start(opts)
            .await
            .context("starting the daemon")?;
        eprintln!("berth: listening on {}", daemon.url());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = daemon.wait() => {
                r.context("the control loop stopped")?;
                return Ok(ExitCode::FAILURE);
            }
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        daemon.stop().await.context("shutting down")?;
        Ok(ExitCode::SUCCESS)
    })
}
