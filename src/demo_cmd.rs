//! `berth demo`: an embedded daemon on simulated hosts, fed by the synthetic CI workload, with
//! the operations console on it. Needs nothing but this binary: no hypervisor, no config.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_daemon::demo::{DEMO_LATENCY_SCALE, DEMO_REQUESTS_PER_S, DEMO_TIME_SCALE, DemoOptions};
use clap::Args;

#[derive(Args)]
pub struct DemoArgs {
    /// Requests the synthetic CI workload submits per second.
    #[arg(long, default_value_t = DEMO_REQUESTS_PER_S)]
    rate: f64,
    /// How many times faster than real time jobs run (30: a 30-minute build takes a minute).
    #[arg(long, default_value_t = DEMO_TIME_SCALE)]
    time_scale: u32,
    /// Simulated provisioning and boot times as a share of the modelled ones.
    #[arg(long, default_value_t = DEMO_LATENCY_SCALE)]
    latency_scale: f64,
    /// The workload's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The address the demo daemon listens on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// No console: print the daemon's URL and token, and run until Ctrl-C (or `--for`).
    #[arg(long)]
    no_console: bool,
    /// Stop after this many seconds (with `--no-console`), printing what flowed.
    #[arg(long = "for", value_name = "SECONDS")]
    for_s: Option<u64>,
    /// The console without actions.
    #[arg(long)]
    read_only: bool,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        anyhow::bail!("--rate must be a positive number of requests per second");
    }
    let console = !args.no_console && args.for_s.is_none();
    if console && !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "the console needs a terminal: run `berth demo` in one, or use `berth demo --no-console`"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let opts = DemoOptions {
        requests_per_s: args.rate,
        time_scale: args.time_scale.max(1),
        latency_scale: args.latency_scale.max(0.0),
        seed: args.seed,
        listen: args.listen,
    };
    let demo = runtime
        .block_on(berth_daemon::demo::demo(opts))
        .context("starting the demo daemon")?;
    let url = demo.url();
    let result = if console {
        // The console is synchronous; the daemon and the workload run on the runtime's
        // worker threads meanwhile.
        berth_tui::run_console(berth_tui::ConsoleOptions {
            url: url.clone(),
            token: Some(demo.token().to_owned()),
            ca_file: None,
            read_only: args.read_only,
            refresh_ms: berth_tui::REFRESH_DEFAULT_MS,
        })
        .context("running the console")
    } else {
        println!("berth demo: daemon on {url}");
        println!("  token: {}", demo.token());
        println!(
            "  console: berth console --url {url} --token {}",
            demo.token()
        );
        let started = Instant::now();
        runtime.block_on(async {
            match args.for_s {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        });
        let stats = demo.stats();
        println!(
            "berth demo: {} requests submitted, {} jobs finished in {:.0} s",
            stats.submitted.load(Ordering::Relaxed),
            stats.jobs_finished.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    };
    runtime
        .block_on(demo.stop())
        .context("stopping the demo daemon")?;
    result?;
    Ok(ExitCode::SUCCESS)
}
