//! `berth demo`: an embedded daemon on a temporary data directory and a fleet of simulated
//! hosts, fed by the synthetic CI workload (`berth_traces::Generator`) at a steady rate with
//! its time compressed, so that a console opened on it has something to show at once.
//!
//! The feeder plays the CI coordinator: it submits the workload's requests in order, one every
//! `1 / requests_per_s` seconds, submits a test when the build it waits for has ended (the
//! workload's `after`), and reports each job's result when its VM has run for the job's
//! duration. Durations, think times and breakpoint lifetimes are divided by `time_scale`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use berth_traces::{Generator, Outcome, RecordBody, RequestRecord, SynthConfig};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{FileConfig, SimSection, default_templates};
use crate::control::Msg;
use crate::feed::Stamped;
use crate::wire::{WireHold, WireHost, WireInput, WireRequest};
use crate::{Daemon, DaemonError, Options};

/// How a demo runs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Requests submitted per second of wall time.
    pub requests_per_s: f64,
    /// Workload time runs this many times faster: a 30-minute build runs 30 min / `time_scale`.
    pub time_scale: u32,
    /// The simulated hosts' provisioning and boot times, as a share of the modelled ones.
    pub latency_scale: f64,
    /// The workload's seed (and the simulated hosts').
    pub seed: u64,
    /// Where the API listens; port 0 picks a free one.
    pub listen: SocketAddr,
}

impl Default for DemoOptions {
    fn default() -> DemoOptions {
        DemoOptions {
            requests_per_s: DEMO_REQUESTS_PER_S,
            time_scale: DEMO_TIME_SCALE,
            latency_scale: DEMO_LATENCY_SCALE,
            seed: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// Requests a second by default: enough to keep the demo fleet busy, with a queue at times.
pub const DEMO_REQUESTS_PER_S: f64 = 2.0;
/// Workload time compression by default: a 30-minute build runs a minute.
pub const DEMO_TIME_SCALE: u32 = 30;
/// Simulated latency by default: a Linux guest boots in about a second.
pub const DEMO_LATENCY_SCALE: f64 = 0.05;
/// Share of the workload's changes that move the whole top-level repository (thousands of VMs
/// each): lower than the workload's default, so that the demo fleet is not swamped for long.
const DEMO_TOP_LEVEL_SHARE: f64 = 0.002;

/// What the feeder has done so far.
#[derive(Debug, Default)]
pub struct DemoStats {
    /// Requests the daemon took.
    pub submitted: AtomicU64,
    /// Requests the daemon refused (none, with the demo fleet).
    pub refused: AtomicU64,
    /// Job results reported.
    pub jobs_finished: AtomicU64,
}

/// A running demo: the daemon, its temporary data directory, and the feeder.
pub struct Demo {
    daemon: Option<Daemon>,
    dir: tempfile::TempDir,
    token: String,
    feeder: JoinHandle<()>,
    stats: Arc<DemoStats>,
}

impl Demo {
    /// The API's URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        match &self.daemon {
            Some(d) => format!("http://{}", d.addr()),
            None => String::new(),
        }
    }

    /// The operator token of the demo daemon.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The temporary data directory (removed by `stop`).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn stats(&self) -> &DemoStats {
        &self.stats
    }

    /// Stops the feeder and the daemon, and removes the data directory.
    pub async fn stop(mut self) -> Result<(), DaemonError> {
        self.feeder.abort();
        let _ = (&mut self.feeder).await;
        let stopped = match self.daemon.take() {
            Some(d) => d.stop().await,
            None => Ok(()),
        };
        let path = self.dir.path().display().to_string();
        self.dir.close().map_err(|source| DaemonError::Io {
            what: format!("removing {path}"),
            source,
        })?;
        stopped
    }
}

/// The demo fleet: the embedded x86_64 servers, aarch64 servers, and Macs (Apple silicon and
/// Intel) for the workload's macOS jobs, one in three of them: 31 hosts.
pub fn demo_hosts() -> Vec<WireHost> {
    let mut hosts: Vec<WireHost> = crate::config::default_hosts()
        .into_iter()
        .filter(|h| {
            !h.name.starts_with("sim-mac-") && h.name != "sim-small-5" && h.name != "sim-small-6"
        })
        .collect();
    let Some(template) = hosts.first().cloned() else {
        return hosts;
    };
    let arch = |a: &str| BTreeMap::from([("arch".to_owned(), a.to_owned())]);
    for i in 1..=4 {
        let mut h = template.clone();
        h.name = format!("sim-arm-{i}");
        h.vcpus = 64;
        h.memory_mib = 262_144;
        h.cpu_overcommit_milli = 2000;
        h.labels = arch("aarch64");
        hosts.push(h);
    }
    for (prefix, n, a) in [("sim-mac", 14, "aarch64"), ("sim-macx", 3, "x86_64")] {
        for i in 1..=n {
            let mut h = template.clone();
            h.name = format!("{prefix}-{i}");
            h.vcpus = 24;
            h.memory_mib = 65_536;
            h.cpu_overcommit_milli = 1000;
            h.labels = arch(a);
            h.slots = BTreeMap::from([("macos".to_owned(), 2)]);
            h.images = vec!["macos".into()];
            hosts.push(h);
        }
    }
    hosts
}

/// Starts a demo: a daemon on a new temporary data directory with the demo fleet, and the
/// feeder that plays the workload into it.
pub async fn demo(opts: DemoOptions) -> Result<Demo, DaemonError> {
    let dir = tempfile::Builder::new()
        .prefix("berth-demo-")
        .tempdir()
        .map_err(|source| DaemonError::Io {
            what: "creating a temporary data directory".into(),
            source,
        })?;
    let config = FileConfig {
        sim: SimSection {
            latency_scale: opts.latency_scale,
            seed: opts.seed,
            shared_inventory: None,
        },
        templates: Some(default_templates()),
        hosts: Some(demo_hosts()),
        ..FileConfig::default()
    };
    let options = Options::new(config, Some(dir.path().to_owned()), Some(opts.listen))?;
    let daemon = crate::start(options).await?;
    let token = crate::ensure_token(dir.path())?;
    let stats = Arc::new(DemoStats::default());
    let feeder = Feeder::new(&opts, daemon.tx.clone(), stats.clone())?;
    let events = daemon.events.follow();
    let feeder = tokio::spawn(feeder.run(events, opts.requests_per_s));
    Ok(Demo {
        daemon: Some(daemon),
        dir,
        token,
        feeder,
        stats,
    })
}

/// Something the feeder does at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// A VM's job ends.
    JobDone { vm: u64, passed: bool },
    /// A dependent request (by workload id) arrives.
    Arrive(u64),
}

/// What the workload says about a submitted request's jobs.
struct Job {
    duration: Duration,
    passed: bool,
    /// Workload requests that wait for this one to end.
    dependents: Vec<u64>,
}

/// A workload request that waits for others to end.
struct Pending {
    record: RequestRecord,
    remaining: usize,
}

struct Feeder {
    tx: mpsc::Sender<Msg>,
    stats: Arc<DemoStats>,
    workload: Generator,
    time_scale: u32,
    /// Submitted requests not yet ended, by the daemon's id.
    jobs: BTreeMap<u64, Job>,
    /// The daemon's id of each live workload request.
    live: BTreeMap<u64, u64>,
    pending: BTreeMap<u64, Pending>,
    timers: BinaryHeap<Reverse<(Instant, Due)>>,
}

impl Feeder {
    fn new(
        opts: &DemoOptions,
        tx: mpsc::Sender<Msg>,
        stats: Arc<DemoStats>,
    ) -> Result<Feeder, DaemonError> {
        let workload = Generator::new(SynthConfig {
            vms: u64::MAX,
            seed: opts.seed,
            top_level_share: DEMO_TOP_LEVEL_SHARE,
            ..SynthConfig::default()
        })
        .map_err(|e| DaemonError::Config {
            key: "demo".into(),
            message: e.to_string(),
        })?;
        Ok(Feeder {
            tx,
            stats,
            workload,
            time_scale: opts.time_scale.max(1),
            jobs: BTreeMap::new(),
            live: BTreeMap::new(),
            pending: BTreeMap::new(),
            timers: BinaryHeap::new(),
        })
    }

    fn scaled(&self, ms: u64) -> Duration {
        Duration::from_millis(ms / u64::from(self.time_scale))
    }

    async fn run(mut self, mut events: broadcast::Receiver<Stamped>, requests_per_s: f64) {
        let period = Duration::from_secs_f64(1.0 / requests_per_s.clamp(0.01, 1000.0));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_timer = self.timers.peek().map(|Reverse((t, _))| *t);
            tokio::select! {
                _ = tick.tick() => {
                    if !self.next_record().await {
                        return;
                    }
                }
                event = events.recv() => match event {
                    Ok(event) => self.observe(&event.text),
                    // Missed events leave some jobs running until the demo stops: harmless.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "demo feeder fell behind the event stream");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = async {
                    match next_timer {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if !self.fire_due().await {
                        return;
                    }
                }
            }
        }
    }

    /// Takes the workload's next request: submitted now, or once what it waits for has ended.
    /// False once the daemon is gone.
    async fn next_record(&mut self) -> bool {
        let Some(record) = self.workload.by_ref().find_map(|r| match r.body {
            RecordBody::Request(r) => Some(r),
            _ => None,
        }) else {
            return true;
        };
        let waits_for: Vec<u64> = record
            .after
            .iter()
            .filter_map(|dep| self.live.get(dep).copied())
            .collect();
        if waits_for.is_empty() {
            return self.submit(record).await;
        }
        for daemon_id in &waits_for {
            if let Some(job) = self.jobs.get_mut(daemon_id) {
                job.dependents.push(record.id);
            }
        }
        self.pending.insert(
            record.id,
            Pending {
                remaining: waits_for.len(),
                record,
            },
        );
        true
    }

    async fn submit(&mut self, r: RequestRecord) -> bool {
        let request = WireRequest {
            id: 0,
            template: r.template.clone(),
            count: r.count,
            vcpus: Some(r.vcpus),
            memory_mib: r.memory_mib,
            labels: r.labels.clone(),
            priority: r.priority,
            gang: r.gang,
            hold: r.hold_on_failure.as_ref().map(|h| WireHold {
                owner: h.owner.clone(),
                ttl_ms: (h.ttl_ms / u64::from(self.time_scale)).max(1000),
            }),
            pending_deadline_ms: None,
            expected_run_ms: Some((r.estimate_ms() / u64::from(self.time_scale)).max(1)),
            requester: r.requester.clone().unwrap_or_else(|| "demo".into()),
            change: r.change.clone(),
            account: r.account.clone(),
        };
        let (reply, answer) = oneshot::channel();
        let msg = Msg::Apply {
            input: WireInput::Submit { request },
            actor: None,
            reply: Some(reply),
        };
        if self.tx.send(msg).await.is_err() {
            return false;
        }
        match answer.await {
            Ok(Ok(applied)) => {
                let daemon_id = applied.id;
                self.stats.submitted.fetch_add(1, Ordering::Relaxed);
                self.live.insert(r.id, daemon_id);
                self.jobs.insert(
                    daemon_id,
                    Job {
                        duration: self.scaled(r.duration_ms),
                        passed: r.outcome == Outcome::Passed,
                        dependents: Vec::new(),
                    },
                );
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e.message, template = %r.template, "demo request refused");
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// Follows the daemon's events: a VM that runs gets its job's end scheduled; a request
    /// that ended releases the requests waiting for it.
    fn observe(&mut self, text: &str) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            return;
        };
        let (Some(kind), Some(to)) = (v["kind"].as_str(), v["to"].as_str()) else {
            return;
        };
        match kind {
            "vm" if to == "running" => {
                let (Some(vm), Some(request)) = (v["vm"].as_u64(), v["request"].as_u64()) else {
                    return;
                };
                if let Some(job) = self.jobs.get(&request) {
                    let due = Due::JobDone {
                        vm,
                        passed: job.passed,
                    };
                    self.timers
                        .push(Reverse((Instant::now() + job.duration, due)));
                }
            }
            "request" if matches!(to, "done" | "failed" | "rejected" | "cancelled") => {
                let Some(request) = v["request"].as_u64() else {
                    return;
                };
                let Some(job) = self.jobs.remove(&request) else {
                    return;
                };
                self.live.retain(|_, d| *d != request);
                for dependent in job.dependents {
                    // CI does not run the tests of a build that failed.
                    if to != "done" {
                        self.pending.remove(&dependent);
                        continue;
                    }
                    let ready = match self.pending.get_mut(&dependent) {
                        Some(p) => {
                            p.remaining = p.remaining.saturating_sub(1);
                            (p.remaining == 0).then_some(p.record.think_ms)
                        }
                        None => None,
                    };
                    if let Some(think_ms) = ready {
                        let at = Instant::now() + self.scaled(think_ms);
                        self.timers.push(Reverse((at, Due::Arrive(dependent))));
                    }
                }
            }
            _ => {}
        }
    }

    /// Carries out what is due. False once the daemon is gone.
    async fn fire_due(&mut self) -> bool {
        let now = Instant::now();
        while let Some(Reverse((at, due))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match due {
                Due::JobDone { vm, passed } => {
                    let input = WireInput::JobFinished { vm, passed };
                    if self.tx.send(Msg::internal(input)).await.is_err() {
                        return false;
                    }
                    self.stats.jobs_finished.fetch_add(1, Ordering::Relaxed);
                }
                Due::Arrive(id) => {
                    if let Some(p) = self.pending.remove(&id)
                        && !self.submit(p.record).await
                    {
                        return false;
                    }
                }
            }
        }
        true
    }
}
