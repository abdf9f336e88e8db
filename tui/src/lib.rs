//! berth's operations console: ratatui screens over the daemon's HTTP API, for on-call
//! operators in SSH sessions.
//!
//! The state ([`App`]) is pure and apart from drawing ([`ui::draw`]): input is a closed set of
//! [`Event`]s, and [`App::update`] answers each with [`Command`]s that the runtime carries out.
//! The keymap is one table ([`keymap::KEYMAP`]) from which keys, help and the command bar come.
//! Data comes from a [`Source`]: the daemon ([`HttpSource`]) or memory ([`MemorySource`]).

pub mod app;
pub mod event;
pub mod fixture;
pub mod http;
pub mod keymap;
pub mod model;
pub mod run;
pub mod source;
pub mod ui;
pub mod vnc;

pub use app::{App, Options};
/// The terminal crates, re-exported so benchmarks and embedders draw with the same versions.
pub use crossterm;
pub use event::{Command, Event};
pub use http::HttpSource;
pub use ratatui;
pub use ratatui_image;
pub use run::ConsoleError;
pub use source::{MemorySource, Source, SourceError};

/// How to start the console on a daemon.
#[derive(Clone, Debug)]
pub struct ConsoleOptions {
    /// The daemon's URL, e.g. `http://127.0.0.1:7878`.
    pub url: String,
    pub token: Option<String>,
    /// For an `https://` daemon: trust only the CA certificates in this PEM file.
    pub ca_file: Option<std::path::PathBuf>,
    /// Hide every action that changes things.
    pub read_only: bool,
    /// How often to fetch a snapshot (ms); big fleets are fetched less often by themselves.
    pub refresh_ms: u64,
}

/// The default time between snapshots.
pub const REFRESH_DEFAULT_MS: u64 = 2000;

/// True when `NO_COLOR` asks for no colours (set and not empty).
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Runs the console against a daemon until the operator quits.
pub fn run_console(opts: ConsoleOptions) -> Result<(), ConsoleError> {
    let mut client = berth_client::Client::new(&opts.url, opts.token.clone());
    if let Some(ca) = &opts.ca_file {
        client = client.trusting(ca)?;
    }
    let source = HttpSource::with_client(client);
    let app_opts = Options {
        read_only: opts.read_only,
        ssh: vnc::SshEnv::detect(),
        source_label: opts.url.clone(),
        color: !no_color(),
    };
    run::run(Box::new(source), app_opts, opts.refresh_ms)
}

/// Runs the console on any source (an embedded daemon's, or memory for demos).
pub fn run_on_source(
    source: Box<dyn Source>,
    label: &str,
    read_only: bool,
) -> Result<(), ConsoleError> {
    let app_opts = Options {
        read_only,
        ssh: vnc::SshEnv::detect(),
        source_label: label.to_owned(),
        color: !no_color(),
    };
    run::run(source, app_opts, REFRESH_DEFAULT_MS)
}
