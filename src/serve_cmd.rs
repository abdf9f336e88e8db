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
    let outcome = runtime.block_on(async move {
        let mut daemon = start(opts).await?;
        eprintln!("berth: listening on {}", daemon.url());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = daemon.wait() => {
                match r {
                    Err(e) if e.is_leadership_lost() => {
                        tracing::error!(error = %e, "no longer leading: starting again as a follower");
                        return Ok(Outcome::Rejoin);
                    }
                    r => r.context("the control loop stopped")?,
                }
                return Ok(Outcome::Exit(ExitCode::FAILURE));
            }
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        daemon.stop().await.context("shutting down")?;
        Ok::<_, anyhow::Error>(Outcome::Exit(ExitCode::SUCCESS))
    })?;
    match outcome {
        Outcome::Exit(code) => Ok(code),
        Outcome::Rejoin => rejoin(),
    }
}

/// How a run of the daemon ended.
enum Outcome {
    Exit(ExitCode),
    /// It led and lost the lease: it starts again, as a follower.
    Rejoin,
}

/// Starts the daemon; on PostgreSQL, waits for a database that does not answer yet (a daemon
/// started with, or before, its database; or one that starts again after losing the lease
/// while cut off from it).
async fn start(opts: berth_daemon::Options) -> anyhow::Result<berth_daemon::Daemon> {
    let mut waited = 0u32;
    loop {
        match berth_daemon::start(opts.clone()).await {
            Err(e) if e.is_store_unreachable() => {
                if waited == 0 || waited.is_multiple_of(30) {
                    tracing::warn!(error = %e, "the database does not answer: waiting for it");
                }
                waited += 1;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            r => return r.context("starting the daemon"),
        }
    }
}

/// Replaces this process with a new run of the same command: every task and driver call of
/// the old leader ends at once, and nothing of its state is kept (the new run follows, and
/// reads everything from the database). The process id stays.
fn rejoin() -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding this program to start it again")?;
    let error = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .exec();
    Err(anyhow::Error::new(error).context(format!("starting {} again", exe.display())))
}
