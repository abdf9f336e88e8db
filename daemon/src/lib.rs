//! berth's live control plane: one control loop owning the scheduler, a journal (SQLite or
//! PostgreSQL) written before anything is acted on, recovery by replay and reconciliation with
//! the hosts, driver workers, a host monitor, and the HTTP API under `/v1`.
//!
//! Only this crate knows SQL, PostgreSQL and the tokio runtime. [`start`] brings a daemon up and returns
//! a handle; the `berth serve` command wraps it with signal handling.

mod answers;
pub mod api;
mod cgroup;
pub mod config;
mod control;
pub mod datadir;
pub mod db;
pub mod demo;
pub mod disk;
pub mod export;
mod feed;
mod fleet;
pub mod hooks;
mod host_objects;
pub mod lease;
pub mod limits;
pub mod logs;
pub mod metrics;
mod obs_api;
mod orphan_start;
pub mod pg_tls;
pub mod pulses;
mod routes;
mod serve;
pub mod store;
pub mod wire;
pub use routes::{openapi, openapi_json_text};
mod workers;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_drivers::sim::{SimWorld, SimWorldError};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use api::ApiError;
pub use config::{FileConfig, Role, TokenConfig};
pub use control::{Refusal, RefusalKind};
pub use datadir::OrphanStart;

/// The database file inside the data directory.
pub const DB_FILE: &str = "berth.db";
/// The operator token created at first start, mode 0600.
pub const TOKEN_FILE: &str = "token";
/// Where the simulated hosts keep their inventory (see `berth_drivers::sim`).
pub const SIM_INVENTORY_FILE: &str = "sim-inventory";

/// Messages waiting for the control loop before senders wait.
const CHANNEL_CAPACITY: usize = 65_536;

/// What can stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("database, {what}: {source}")]
    Sql {
        what: &'static str,
        source: db::DbError,
    },
    #[error("config key `{key}`: {message}")]
    Config { key: String, message: String },
    #[error("journal entry {seq}: {message}")]
    Journal { seq: u64, message: String },
    #[error(
        "the database has schema version {found}, this berth knows up to {known}: use a newer berth"
    )]
    SchemaTooNew { found: u64, known: u64 },
    #[error(transparent)]
    Sim(#[from] SimWorldError),
    #[error("the control loop stopped")]
    LoopGone,
    #[error(
        "the journal and the state tables disagree: the vms table holds berth-vm{table_vm}, \
         but replaying the journal numbers the next VM {next_vm} (journal rows were lost?); \
         restore the database from a backup"
    )]
    JournalBehindState { table_vm: u64, next_vm: u64 },
    #[error("taking a snapshot of the scheduler: {message}")]
    Snapshot { message: String },
    #[error("another daemon is using the data directory {0} (it is locked)")]
    DataDirBusy(PathBuf),
    #[error(
        "{} is missing or empty, but this data directory was initialised ({} is there): \
         starting on an empty journal would take every VM on the hosts for an orphan. \
         Restore the database from a backup, or start with --adopt-orphans (keep the VMs found \
         on the hosts) or --destroy-orphans (destroy them)",
        db, marker.display()
    )]
    DatabaseLost { db: String, marker: PathBuf },
    #[error(
        "{} belongs to data directory {db_id}, but {} says {marker_id}: was another database \
         copied in? Put this directory's own database back, or delete the marker to keep this one",
        db, marker.display()
    )]
    DatabaseMismatch {
        db: String,
        marker: PathBuf,
        marker_id: String,
        db_id: String,
    },
    #[error(
        "this journal has never created a VM, but the hosts run {count} berth VMs ({hosts}): \
         the database cannot account for them (a new or emptied database on a running fleet?). \
         Restore the database, or start with --adopt-orphans to keep them or --destroy-orphans \
         to destroy them"
    )]
    UnaccountedVms { count: usize, hosts: String },
    #[error(
        "refused by the fence: this daemon led under lease epoch {mine}, but the lease is at \
         epoch {found} (held by {holder}): another daemon leads now"
    )]
    Fenced {
        mine: u64,
        found: u64,
        holder: String,
    },
    #[error("this daemon's lease ran out: it stopped acting, and starts again as a follower")]
    LeadershipLost,
}

impl DaemonError {
    /// Whether the daemon ended because another daemon leads now (or may): it should start
    /// again as a follower rather than exit.
    pub fn is_leadership_lost(&self) -> bool {
        matches!(
            self,
            DaemonError::Fenced { .. } | DaemonError::LeadershipLost
        )
    }

    /// Whether a PostgreSQL store did not answer (down, restarting, cut off): worth waiting
    /// for rather than giving up.
    pub fn is_store_unreachable(&self) -> bool {
        matches!(self, DaemonError::Sql { source, .. } if source.is_unreachable())
    }
}

impl From<db::DbError> for DaemonError {
    fn from(source: db::DbError) -> DaemonError {
        DaemonError::Sql {
            what: "reading",
            source,
        }
    }
}

/// How to run a daemon: the parsed config plus the command line's overrides.
#[derive(Clone, Debug)]
pub struct Options {
    pub config: FileConfig,
    pub data_dir: PathBuf,
    /// The store: the config's `store` (a PostgreSQL URL), else the data directory's SQLite
    /// file. `berth serve --store` sets the config's.
    pub store: db::StoreAt,
    pub listen: SocketAddr,
    /// What to do with VMs on the hosts that the journal cannot account for.
    pub orphans: OrphanStart,
}

impl Options {
    /// Resolves the data directory, store and listen address: command line, then config file,
    /// then the defaults (`config::default_data_dir()`, its `berth.db`, `127.0.0.1:7878`).
    pub fn new(
        config: FileConfig,
        data_dir: Option<PathBuf>,
        listen: Option<SocketAddr>,
    ) -> Result<Options, DaemonError> {
        let data_dir = data_dir
            .or_else(|| config.data_dir.clone())
            .unwrap_or_else(config::default_data_dir);
        let listen = match listen {
            Some(l) => l,
            None => config
                .listen
                .as_deref()
                .unwrap_or(config::DEFAULT_LISTEN)
                .parse()
                .map_err(|e| DaemonError::Config {
                    key: "listen".into(),
                    message: format!("{e}"),
                })?,
        };
        let store = db::StoreAt::parse(config.store.as_deref(), &data_dir.join(DB_FILE))?;
        Ok(Options {
            config,
            data_dir,
            store,
            listen,
            orphans: OrphanStart::default(),
        })
    }
}

/// A running daemon.
pub struct Daemon {
    addr: SocketAddr,
    /// `https` with `[server] tls_cert`, else `http`.
    scheme: &'static str,
    /// Locked for as long as the daemon lives (the OS releases it if the process dies).
    _data_dir: datadir::DataDir,
    sim: Arc<SimWorld>,
    /// The drivers' board of pulls and image holdings.
    pulls: berth_drivers::images::Pulls,
    /// The control loop's inbox and event stream, for in-process feeders (the demo).
    tx: mpsc::Sender<control::Msg>,
    events: Arc<feed::Feed>,
    shutdown: watch::Sender<bool>,
    control: JoinHandle<Result<(), DaemonError>>,
    http: JoinHandle<()>,
    pulses: JoinHandle<()>,
    /// The leader lease (the sole daemon's gate on SQLite).
    gate: lease::Gate,
    /// The hook runner, which a stop lets finish its runs in flight.
    hooks: hooks::HookStop,
}

impl Daemon {
    /// The address the API listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API's base URL: `https://ADDR` with TLS, else `http://ADDR`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The simulated hosts' shared state: tests and demos inject failures through it.
    pub fn sim(&self) -> &Arc<SimWorld> {
        &self.sim
    }

    /// The drivers' board of pulls of base images: tests hold a turn on it to stand for a pull
    /// in flight.
    pub fn pulls(&self) -> &berth_drivers::images::Pulls {
        &self.pulls
    }

    /// Stops taking requests, lets the control loop finish its batch, and waits for both; then
    /// lets the hook runs in flight end and be recorded (bounded, see `hooks::HookStop`). A
    /// leader gives its lease up once all that is done, so a follower takes over at once.
    pub async fn stop(self) -> Result<(), DaemonError> {
        let _ = self.shutdown.send(true);
        let _ = self.http.await;
        let _ = self.pulses.await;
        let result = match self.control.await {
            Ok(r) => r,
            Err(_) => Err(DaemonError::LoopGone),
        };
        self.hooks.finish().await;
        let gate = self.gate.clone();
        let _ = tokio::task::spawn_blocking(move || gate.release()).await;
        result
    }

    /// Waits until the control loop ends (it ends only on a fatal error or `stop`).
    pub async fn wait(&mut self) -> Result<(), DaemonError> {
        match (&mut self.control).await {
            Ok(r) => r,
            Err(_) => Err(DaemonError::LoopGone),
        }
    }
}

/// Reads the operator token of a data directory, creating it (mode 0600) if it is missing.
pub fn ensure_token(data_dir: &Path) -> Result<String, DaemonError> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(m) = std::fs::metadata(&path)
                    && m.permissions().mode() & 0o077 != 0
                {
                    tracing::warn!(
                        path = %path.display(),
                        mode = format!("{:o}", m.permissions().mode() & 0o777),
                        "the operator token can be read by other users; chmod 600 it"
                    );
                }
            }
            return Ok(t.trim().to_owned());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(DaemonError::Io {
                what: format!("reading {}", path.display()),
                source,
            });
        }
    }
    let token = random_token().map_err(|source| DaemonError::Io {
        what: "reading /dev/urandom".into(),
        source,
    })?;
    let io = |source| DaemonError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    let mut f = datadir::private_file(&path).map_err(io)?;
    writeln!(f, "{token}").map_err(io)?;
    tracing::info!(path = %path.display(), "operator token created");
    Ok(token)
}

pub(crate) fn random_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The `meta` key holding the `[fair_share]` settings the database was made with (JSON; `null`
/// when fair share is off).
pub const META_FAIR_SHARE: &str = "fair_share";

/// The `meta` key holding the `[[quotas]]` the database was made with (JSON; `[]` for none).
pub const META_QUOTAS: &str = "quotas";

/// The `meta` key holding the `[images]` settings the database was made with (JSON; `null`
/// when the scheduler does not model images).
pub const META_IMAGES: &str = "images";

/// The `meta` key holding the `[[warm]]` pools the database was made with (JSON; `[]` for
/// none).
pub const META_WARM: &str = "warm";

/// A section of settings replay must use: the one stored with the database under `key`, as for
/// `[scheduler]` (other settings would make other decisions than the ones the journal's results
/// answer). A database without it predates the section, and its journal was made without it
/// (`absent`); a new one stores `wanted`.
fn pinned<T: serde::Serialize + serde::de::DeserializeOwned>(
    store: &mut store::Store,
    key: &str,
    section: &str,
    wanted: &T,
    absent: &T,
) -> Result<T, DaemonError> {
    let wanted_text = serde_json::to_string(wanted).unwrap_or_default();
    let stored = match store.meta(key)? {
        Some(text) => text,
        None => {
            let text = if store.has_journal()? {
                serde_json::to_string(absent).unwrap_or_default()
            } else {
                wanted_text.clone()
            };
            store.set_meta(key, &text)?;
            text
        }
    };
    if stored != wanted_text {
        tracing::warn!(
            "the {section} settings differ from the ones this database was created with; using the database's"
        );
    }
    stored_section(key, &stored)
}

/// A section of settings as `meta` stores it under `key`.
pub fn stored_section<T: serde::de::DeserializeOwned>(
    key: &str,
    text: &str,
) -> Result<T, DaemonError> {
    serde_json::from_str(text).map_err(|e| DaemonError::Config {
        key: key.into(),
        message: format!("stored settings unreadable: {e}"),
    })
}

/// Brings a daemon up: opens (or creates) the data directory, replays the journal, starts the
/// drivers, reconciles with the hosts, and listens. On PostgreSQL it first claims the leader
/// lease: a daemon that does not get it listens as a follower, and takes over (replay,
/// drivers, reconciliation) once the lease is its.
pub async fn start(opts: Options) -> Result<Daemon, DaemonError> {
    // A bad certificate or key is a config error, found before anything else is touched.
    let tls = serve::tls(&opts.config.server)?;
    let data_dir = &opts.data_dir;
    let (dir, store) = datadir::open(data_dir, &opts.store, opts.orphans)?;
    let local_token = ensure_token(data_dir)?;
    let mut tokens = vec![api::Token {
        name: "local".into(),
        secret: local_token,
        role: Role::Operator,
    }];
    tokens.extend(opts.config.tokens.iter().map(|t| api::Token {
        name: t.name.clone(),
        secret: t.token.clone(),
        role: t.role,
    }));
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| DaemonError::Io {
            what: format!("listening on {}", opts.listen),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| DaemonError::Io {
        what: "reading the listen address".into(),
        source,
    })?;
    let gate = match &opts.store {
        db::StoreAt::Sqlite(_) => lease::Gate::sole(),
        db::StoreAt::Postgres(_) => {
            let address = match &opts.config.ha.advertise {
                Some(a) => a.clone(),
                None => {
                    if addr.ip().is_unspecified() {
                        tracing::warn!(
                            %addr,
                            "listening on every address without [ha] advertise: followers send clients to {scheme}://{addr}, which reaches no other machine"
                        );
                    }
                    format!("{scheme}://{addr}")
                }
            };
            let me = lease::Me {
                holder: lease::holder_name(),
                address,
            };
            lease::start(&opts.store, me, &opts.config.ha)?
        }
    };

    let sim = match &opts.config.sim.shared_inventory {
        Some(dir) => SimWorld::shared(dir, opts.config.sim.latency_scale, opts.config.sim.seed)?,
        None => SimWorld::open(
            &data_dir.join(SIM_INVENTORY_FILE),
            opts.config.sim.latency_scale,
            opts.config.sim.seed,
        )?,
    };
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (reports_tx, reports) = mpsc::channel(CHANNEL_CAPACITY);
    let events_tx = feed::Feed::new(control::wall_ms());
    let mut driver_defaults = fleet::DriverDefaults::new(data_dir, &opts.config.drivers);
    driver_defaults.gate = gate.clone();
    let pulls = driver_defaults.pulls.clone();
    let workers = workers::Workers::new(
        reports_tx,
        opts.config.probe.clone(),
        opts.config.workers.driver_calls_per_host_max,
        sim.clone(),
        driver_defaults,
    );
    let disk = disk::DiskWatch::new(data_dir, opts.config.disk.free_min_mib);
    let health = disk.health.clone();
    let templates = opts
        .config
        .templates
        .clone()
        .unwrap_or_else(config::default_templates);
    let hosts = opts
        .config
        .hosts
        .clone()
        .unwrap_or_else(config::default_hosts);
    let metrics = Arc::new(metrics::Metrics::new());
    let cgroups = match &opts.config.workers.hooks_cgroup {
        Some(dir) => Some(Arc::new(cgroup::HookCgroups::open(dir)?)),
        None => None,
    };
    let hooks = hooks::Hooks::start(
        &opts.config.hooks,
        opts.config.workers.hooks_at_once_max,
        cgroups,
        &opts.store,
        metrics.clone(),
        gate.clone(),
    )?;
    let hook_stop = hooks.stop.clone();
    let (pull_metrics, pull_hooks) = (metrics.clone(), hooks.clone());
    pulls.observe(Arc::new(move |pull| {
        pull_metrics.image_pull(pull);
        pull_hooks.enqueue_pull(pull);
    }));
    let lead = Lead {
        opts: opts.clone(),
        store,
        workers,
        feed: events_tx.clone(),
        disk,
        observers: vec![Box::new(metrics.clone()), Box::new(hooks)],
        templates: templates.clone(),
        hosts,
        database_lost: dir.database_lost,
        gate: gate.clone(),
    };
    // A leader is ready before it listens; a follower listens at once.
    let leading = if gate.may_act() {
        Ok(lead.take(None).await?)
    } else {
        tracing::info!(leader = ?gate.holder().map(|h| h.address), "following: another daemon holds the lease");
        Err(lead)
    };

    let reads = api::ReadPool::open(&opts.store, 4)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (loop_tx, loop_events) = (tx.clone(), events_tx.clone());
    let state = api::AppState {
        tx,
        reads: Arc::new(reads),
        events: events_tx,
        tokens: Arc::new(tokens),
        shutdown: shutdown_rx.clone(),
        forecasts: Arc::default(),
        health,
        templates: Arc::new(templates),
        pulses: opts.config.pulses.clone(),
        pulls: pulls.clone(),
        // Checked when the configuration was read.
        image_store: opts.config.drivers.store().ok().flatten(),
        eta: Arc::default(),
        lease: gate.clone(),
    };
    let pulses = tokio::spawn(pulses::run(
        state.clone(),
        opts.store.clone(),
        opts.config.pulses.clone(),
        shutdown_rx.clone(),
    ));
    let app = routes::app(state, metrics);
    let http = tokio::spawn(serve::serve(
        listener,
        app,
        opts.config.server.clone(),
        tls,
        shutdown_rx.clone(),
    ));
    let control = match leading {
        Ok(control) => tokio::spawn(control.run(rx, reports, shutdown_rx)),
        Err(lead) => tokio::spawn(follow(lead, rx, reports, shutdown_rx)),
    };
    tracing::info!(%addr, data_dir = %data_dir.display(), store = %opts.store.display(), role = gate.role().name(), "berth daemon listening");
    Ok(Daemon {
        addr,
        scheme,
        _data_dir: dir,
        sim,
        pulls,
        tx: loop_tx,
        events: loop_events,
        shutdown,
        control,
        http,
        pulses,
        gate,
        hooks: hook_stop,
    })
}

/// What taking the lead needs: the store and what the control loop is built from.
struct Lead {
    opts: Options,
    store: store::Store,
    workers: workers::Workers,
    feed: Arc<feed::Feed>,
    disk: disk::DiskWatch,
    observers: Vec<Box<dyn control::Observer>>,
    templates: Vec<wire::WireTemplate>,
    hosts: Vec<wire::WireHost>,
    database_lost: bool,
    gate: lease::Gate,
}

impl Lead {
    /// Brings the scheduler to the journal's end, starts the drivers and reconciles with the
    /// hosts: the control loop, ready to run. A follower's replica (kept with the same
    /// settings) only reads the journal's last batches; otherwise the journal is replayed from
    /// the newest snapshot. Every write from here on is fenced by the lease's epoch (none on
    /// SQLite).
    async fn take(
        mut self,
        replica: Option<control::Control>,
    ) -> Result<control::Control, DaemonError> {
        if !self.gate.is_sole() {
            lease::session_settings(self.store.db(), &self.opts.config.ha)?;
            self.store.fence(self.gate.epoch());
        }
        let sched_config = pinned_settings(&mut self.store, &self.opts.config)?;
        let replica = match replica {
            Some(mut r) if r.s.config() == &sched_config => {
                if db::blocking(|| r.can_lead())? {
                    Some(r)
                } else {
                    db::blocking(|| drop(r));
                    None
                }
            }
            Some(r) => {
                db::blocking(|| drop(r));
                None
            }
            None => None,
        };
        let mut control = match replica {
            Some(r) => db::blocking(|| r.lead(self.store, self.workers))?,
            None => control::Control::recover(self.store, sched_config, self.workers, self.feed)?,
        };
        control.orphan_start = self.opts.orphans;
        control.orphans_destroy_max = self.opts.config.recovery.orphans_destroy_max;
        control.snapshot_every_inputs = self.opts.config.recovery.snapshot_every_inputs;
        control.gate = self.gate;
        control.snapshot_if_due();
        control.database_lost = self.database_lost;
        control.disk = self.disk;
        control.observers = self.observers;
        control.start_fleet(&self.templates, &self.hosts)?;
        // Hosts join through the API too, so a quota on a class no host has yet is not an
        // error; but it is most likely a typo, so say so.
        for q in &control.s.config().quotas {
            let known = control
                .s
                .hosts()
                .any(|h| berth_sched::host_class(h.name, h.labels) == q.class);
            if !known {
                tracing::warn!(
                    account = %q.account,
                    class = %q.class,
                    "a quota names a host class no host belongs to; it bounds nothing until one joins"
                );
            }
        }
        control.reconcile().await?;
        Ok(control)
    }
}

/// A follower's control task: waits for the lease, then takes the lead and runs the loop.
async fn follow(
    lead: Lead,
    mut rx: mpsc::Receiver<control::Msg>,
    reports: mpsc::Receiver<workers::Report>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    let gate = lead.gate.clone();
    // Until it leads, a follower answers reads from a replica of the leader's state, read
    // from the database: built once the leader has pinned its settings, brought up to date
    // with the journal before each answer and every `REPLICA_CATCH_UP_MS`, so that a
    // takeover starts from it with little left to read.
    let mut replica: Option<control::Control> = None;
    let mut retry = tokio::time::interval(std::time::Duration::from_millis(REPLICA_RETRY_MS));
    let mut catch_up = tokio::time::interval(std::time::Duration::from_millis(REPLICA_CATCH_UP_MS));
    loop {
        tokio::select! {
            // First: once this daemon leads, what comes in is the leader's to take (a write
            // taken here would be dropped).
            biased;
            () = gate.won() => break,
            _ = shutdown.changed() => return Ok(()),
            _ = retry.tick(), if replica.is_none() => {
                // Replaying runs off the runtime's threads, as a start's does.
                replica = db::blocking(|| build_replica(&lead))
                    .map_err(|error| tracing::warn!(%error, "cannot build the replica to answer reads from"))
                    .ok()
                    .flatten();
            }
            _ = catch_up.tick(), if replica.is_some() => {
                if let Some(r) = replica.as_mut()
                    && let Err(error) = db::blocking(|| r.catch_up())
                {
                    tracing::warn!(%error, "the replica cannot catch up");
                }
            }
            msg = rx.recv() => {
                let Some(first) = msg else { return Ok(()) };
                let mut msgs = vec![first];
                while let Ok(more) = rx.try_recv() {
                    msgs.push(more);
                }
                db::blocking(|| answer_from_replica(replica.as_mut(), msgs));
            }
        }
    }
    tracing::info!(
        epoch = gate.epoch(),
        replica = replica.is_some(),
        "taking over: bringing the state to the journal's end and reconciling with the hosts"
    );
    let control = lead.take(replica).await?;
    tracing::info!(epoch = gate.epoch(), "took over: leading");
    control.run(rx, reports, shutdown).await
}

/// How often a follower tries again to build its replica (the leader has not pinned its
/// settings yet, or the database did not answer).
const REPLICA_RETRY_MS: u64 = 1000;
/// How often a follower's replica reads the journal's new batches when nobody asks.
const REPLICA_CATCH_UP_MS: u64 = 500;

/// A follower's replica (see `Control::replica`), or `None` while the database holds no
/// pinned settings yet (the leader is still starting).
fn build_replica(lead: &Lead) -> Result<Option<control::Control>, DaemonError> {
    let mut store = store::Store::open(&lead.opts.store)?;
    let Some(config) = stored_settings(&mut store)? else {
        return Ok(None);
    };
    let started = std::time::Instant::now();
    let replica =
        control::Control::replica(store, config, lead.workers.inert(), lead.feed.clone())?;
    tracing::info!(
        took_ms = started.elapsed().as_millis() as u64,
        "replica built: this follower answers reads"
    );
    Ok(Some(replica))
}

/// Answers a follower's queries from its replica, after one catch-up with the journal; sends
/// to the leader what it cannot answer, and when there is no replica (or the database did not
/// answer the catch-up). Writes never come here: the API refuses them on a follower.
fn answer_from_replica(replica: Option<&mut control::Control>, msgs: Vec<control::Msg>) {
    let replica = replica.and_then(|r| match r.catch_up() {
        Ok(()) => Some(r),
        Err(error) => {
            tracing::warn!(%error, "the replica cannot catch up: reads go to the leader");
            None
        }
    });
    for msg in msgs {
        if let control::Msg::Query { query, reply } = msg {
            let answer = match &replica {
                Some(r) if query.replica_answers() => r.answer(query),
                _ => control::Answer::AskTheLeader,
            };
            let _ = reply.send(answer);
        }
    }
}

/// The scheduler's settings as the database pins them, read without writing (a follower's):
/// `None` while a database with an empty journal lacks any of them (its leader is pinning
/// them now). A section missing beside a journal is one older than it: absent, as
/// [`pinned`] takes it.
fn stored_settings(store: &mut store::Store) -> Result<Option<berth_sched::Config>, DaemonError> {
    fn read<T: serde::de::DeserializeOwned>(
        store: &mut store::Store,
        key: &str,
    ) -> Result<Option<T>, DaemonError> {
        store
            .meta(key)?
            .map(|text| stored_section(key, &text))
            .transpose()
    }
    let has_journal = store.has_journal()?;
    let Some(sched_section) = read(store, "scheduler")? else {
        return Ok(None);
    };
    let fair_share: Option<Option<config::FairShareSection>> = read(store, META_FAIR_SHARE)?;
    let quotas: Option<Vec<config::QuotaConfig>> = read(store, META_QUOTAS)?;
    let images: Option<Option<config::ImagesSection>> = read(store, META_IMAGES)?;
    let warm: Option<Vec<config::WarmConfig>> = read(store, META_WARM)?;
    let all = fair_share.is_some() && quotas.is_some() && images.is_some() && warm.is_some();
    if !all && !has_journal {
        return Ok(None);
    }
    config::pinned_scheduler_config(
        &sched_section,
        fair_share.flatten().as_ref(),
        &quotas.unwrap_or_default(),
        images.flatten().as_ref(),
        &warm.unwrap_or_default(),
    )
    .map(Some)
}

/// The scheduler's settings replay must use: the ones stored with the database (see
/// [`pinned`]), stored now for a new one.
fn pinned_settings(
    store: &mut store::Store,
    config: &FileConfig,
) -> Result<berth_sched::Config, DaemonError> {
    let wanted = serde_json::to_string(&config.scheduler).unwrap_or_default();
    let sched_section = match store.meta("scheduler")? {
        None => {
            store.set_meta("scheduler", &wanted)?;
            config.scheduler.clone()
        }
        Some(stored) => {
            if stored != wanted {
                // Replaying with other settings would make other decisions than the ones the
                // journal's results answer; the journal's settings win.
                tracing::warn!(
                    "the [scheduler] settings differ from the ones this database was created with; using the database's"
                );
            }
            serde_json::from_str(&stored).map_err(|e| DaemonError::Config {
                key: "scheduler".into(),
                message: format!("stored settings unreadable: {e}"),
            })?
        }
    };
    let fair_share: Option<config::FairShareSection> = pinned(
        store,
        META_FAIR_SHARE,
        "[fair_share]",
        &config.fair_share,
        &None,
    )?;
    let quotas: Vec<config::QuotaConfig> = pinned(
        store,
        META_QUOTAS,
        "[[quotas]]",
        &config.quotas,
        &Vec::new(),
    )?;
    let images: Option<config::ImagesSection> =
        pinned(store, META_IMAGES, "[images]", &config.images, &None)?;
    let warm: Vec<config::WarmConfig> =
        pinned(store, META_WARM, "[[warm]]", &config.warm, &Vec::new())?;
    config::pinned_scheduler_config(
        &sched_section,
        fair_share.as_ref(),
        &quotas,
        images.as_ref(),
        &warm,
    )
}
