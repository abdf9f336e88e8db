//! Hooks: commands the daemon runs when the scheduler reports an event (`vm.held`,
//! `host.error`, `request.rejected`, or a pattern such as `vm.*`). Each runs as argv without a
//! shell, the event as JSON on stdin and `BERTH_EVENT`, `BERTH_EVENT_ID`, `BERTH_VM_ID`,
//! `BERTH_HOST` in its environment, in its own process group (killed whole at its timeout),
//! retried with doubling backoff, at most `workers.hooks_at_once_max` at once. Every attempt
//! is a row of `hook_runs`.
//!
//! Delivery goes through the `hook_outbox` table. The control loop writes the jobs a batch's
//! events owe in the batch's own transaction, each keyed by hook and event id (`BATCH.INDEX`):
//! an event written is an event its hooks will hear of, whichever daemon leads next. The
//! dispatcher claims jobs in order (under the lease's fence), runs them, and takes them out.
//! A job claimed by a daemon that died or lost the lead before its end is recorded as
//! `abandoned` by the next leader and not run again: a hook runs at most once per event.
//!
//! The control loop never waits for a hook: a slow, hanging or failing hook never delays
//! scheduling. Past `HOOK_QUEUE_MAX` jobs owed, an event is dropped for hooks and counted
//! (`berth_hook_events_dropped_total`), so the outbox stays bounded.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_sched::{Event, Scheduler};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::DaemonError;
use crate::cgroup::HookCgroups;
pub use crate::config::{EVENT_NAMES, HookConfig};
use crate::metrics::Metrics;
pub(crate) use crate::store::HookJob;

/// Hook jobs owed (the outbox's rows) before new events are dropped for hooks.
pub const HOOK_QUEUE_MAX: usize = 10_000;
/// Pulls' ends waiting to go into the outbox before more are dropped for hooks.
const PULLS_QUEUED_MAX: usize = 1024;
/// How often a daemon that does not lead looks whether it does now.
const FOLLOWER_POLL_MS: u64 = 200;
/// How often an idle dispatcher looks at the outbox without being woken.
const IDLE_POLL_MS: u64 = 1000;
/// The end of a hook's standard error kept in its run row.
pub const STDERR_TAIL_MAX_BYTES: usize = 4096;
/// How long to wait for a killed hook's pipes to close.
const PIPE_GRACE_MS: u64 = 1000;
/// The longest a stopping daemon waits for its hook runs in flight to end, whatever their
/// timeouts: past it they are left to the next leader, which records them `abandoned`.
const STOP_WAIT_MAX_MS: u64 = 20_000;
/// The most of a hook's standard error read at all: past it the pipe is closed, so a hook
/// (or what it left running) that floods it costs no more CPU.
pub const STDERR_READ_MAX_BYTES: usize = 1 << 20;

/// The name of an event, one of [`EVENT_NAMES`].
pub fn event_name(e: &Event) -> String {
    match e {
        Event::Vm { to, .. } => format!("vm.{}", to.name()),
        Event::Request { to, .. } => format!("request.{}", to.name()),
        Event::Host { to, .. } => format!("host.{}", to.map_or("removed", |s| s.name())),
    }
}

/// Whether `pattern` (an event name, `KIND.*` or `*`) matches the event `name`.
pub fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// A hook as the runner keeps it.
#[derive(Debug)]
struct Hook {
    name: String,
    config: HookConfig,
}

/// What a hook reads on its standard input: the event as the event stream sends it, the name
/// it was matched by (`vm.running`, `host.error`, ...) and its id.
#[derive(Serialize)]
struct HookPayload<'a> {
    #[serde(flatten)]
    event: berth_api::Event,
    #[serde(rename = "event")]
    name: &'a str,
    event_id: &'a str,
}

/// One attempt, as stored in `hook_runs` and shown by `GET /v1/hooks/runs`.
pub use berth_api::HookRun;

/// What the control loop tells of every committed batch: the hook runs its events owe, to be
/// written with it, and, once it is written, that there is work.
impl crate::control::Observer for Hooks {
    fn hook_jobs(&self, s: &Scheduler, batch: u64, events: &[Event], out: &mut Vec<HookJob>) {
        self.owed(s, batch, events, out);
    }

    fn event(&self, _s: &Scheduler, _event: &Event) {
        self.wake.notify_one();
    }
}

/// The hook runner's handle, owned by the control loop; a clone hears the drivers' pulls.
#[derive(Clone)]
pub(crate) struct Hooks {
    hooks: Arc<Vec<Hook>>,
    /// Wakes the dispatcher: a batch was written.
    wake: Arc<Notify>,
    /// Pulls' ends, on their way into the outbox.
    pulls: mpsc::Sender<HookJob>,
    /// Runs owed and not ended, about: the outbox's rows (see `HOOK_QUEUE_MAX`).
    backlog: Arc<AtomicUsize>,
    /// This process, in the ids of pull events and in the outbox's claims.
    me: Arc<str>,
    pulls_seen: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    /// What a stop asks of the runner.
    pub(crate) stop: HookStop,
}

/// A stop of the hook runner: it claims no more jobs, makes no more retries, gives back the
/// jobs it claimed and did not start, and the stop waits for the runs in flight to end and be
/// recorded (each ends within its hook's timeout), at most `STOP_WAIT_MAX_MS`.
#[derive(Clone)]
pub(crate) struct HookStop {
    stopping: Arc<watch::Sender<bool>>,
    permits: Arc<Semaphore>,
    at_once_max: usize,
    wait: Duration,
    /// The dispatcher task, awaited by the stop.
    dispatcher: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl HookStop {
    /// Stops the runner; returns whether every run in flight ended within the wait.
    pub(crate) async fn finish(&self) -> bool {
        let deadline = tokio::time::Instant::now() + self.wait;
        self.stopping.send_replace(true);
        let dispatcher = self.dispatcher.lock().ok().and_then(|mut d| d.take());
        if let Some(task) = dispatcher {
            // It returns at once, once it has given back what it claimed and did not start.
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        let all = u32::try_from(self.at_once_max).unwrap_or(u32::MAX);
        let ended = tokio::time::timeout_at(deadline, self.permits.acquire_many(all)).await;
        let ended = matches!(ended, Ok(Ok(_)));
        if !ended {
            tracing::warn!(
                wait_ms = self.wait.as_millis() as u64,
                "hook runs still in flight at the stop: the next leader records them abandoned"
            );
        }
        ended
    }
}

/// What the dispatcher works with.
struct Dispatch {
    hooks: Arc<Vec<Hook>>,
    conn: Arc<Mutex<crate::db::Db>>,
    permits: Arc<Semaphore>,
    at_once_max: usize,
    cgroups: Option<Arc<HookCgroups>>,
    metrics: Arc<Metrics>,
    gate: crate::lease::Gate,
    wake: Arc<Notify>,
    backlog: Arc<AtomicUsize>,
    me: Arc<str>,
    /// Turns true when the daemon stops.
    stopping: watch::Receiver<bool>,
}

impl Hooks {
    /// Starts the runner: a dispatcher task that, once this daemon leads, runs what the outbox
    /// holds, at most `at_once_max` hook processes at once, on its own database connection.
    pub(crate) fn start(
        configs: &[HookConfig],
        at_once_max: usize,
        cgroups: Option<Arc<HookCgroups>>,
        store: &crate::db::StoreAt,
        metrics: Arc<Metrics>,
        gate: crate::lease::Gate,
    ) -> Result<Hooks, DaemonError> {
        let hooks: Arc<Vec<Hook>> = Arc::new(
            configs
                .iter()
                .enumerate()
                .map(|(i, c)| Hook {
                    name: c.name.clone().unwrap_or_else(|| format!("hooks[{i}]")),
                    config: c.clone(),
                })
                .collect(),
        );
        let (pulls, pulls_rx) = mpsc::channel::<HookJob>(PULLS_QUEUED_MAX);
        let wake = Arc::new(Notify::new());
        let at_once_max = at_once_max.max(1);
        let longest = configs.iter().map(|c| c.timeout_ms).max().unwrap_or(0);
        let (stopping, stopping_rx) = watch::channel(false);
        let stop = HookStop {
            stopping: Arc::new(stopping),
            dispatcher: Arc::default(),
            permits: Arc::new(Semaphore::new(at_once_max)),
            at_once_max,
            // A run in flight ends within its timeout, then its pipes' grace, then its row.
            wait: Duration::from_millis(
                longest
                    .saturating_add(2 * PIPE_GRACE_MS)
                    .min(STOP_WAIT_MAX_MS),
            ),
        };
        let handle = Hooks {
            hooks: hooks.clone(),
            wake: wake.clone(),
            pulls,
            backlog: Arc::new(AtomicUsize::new(0)),
            me: crate::lease::holder_name().into(),
            pulls_seen: Arc::new(AtomicU64::new(0)),
            metrics: metrics.clone(),
            stop: stop.clone(),
        };
        let d = Dispatch {
            hooks,
            conn: Arc::new(Mutex::new(crate::db::Db::connect(store)?)),
            permits: stop.permits.clone(),
            at_once_max,
            cgroups,
            metrics,
            gate,
            wake,
            backlog: handle.backlog.clone(),
            me: handle.me.clone(),
            stopping: stopping_rx,
        };
        let task = tokio::spawn(d.run(pulls_rx));
        if let Ok(mut slot) = stop.dispatcher.lock() {
            *slot = Some(task);
        }
        Ok(handle)
    }

    /// The jobs a written batch's events owe to the hooks whose patterns match them, each
    /// with its event's id; past `HOOK_QUEUE_MAX` owed, an event is dropped for hooks and
    /// counted.
    fn owed(&self, s: &Scheduler, batch: u64, events: &[Event], out: &mut Vec<HookJob>) {
        if self.hooks.is_empty() {
            return;
        }
        for (index, event) in events.iter().enumerate() {
            let name = event_name(event);
            // Made for the first hook that matches: most events match none.
            let mut event_id: Option<String> = None;
            let mut payload: Option<String> = None;
            for h in self.hooks.iter() {
                if !matches(&h.config.on, &name) {
                    continue;
                }
                if self.backlog.load(Ordering::Relaxed) >= HOOK_QUEUE_MAX {
                    self.metrics.hooks_dropped.inc();
                    tracing::warn!(hook = %h.name, event = %name, "hook outbox full: event dropped");
                    continue;
                }
                let event_id = event_id
                    .get_or_insert_with(|| format!("{batch}.{index}"))
                    .clone();
                let payload = payload
                    .get_or_insert_with(|| {
                        let body = HookPayload {
                            event: crate::answers::event(s, event),
                            name: &name,
                            event_id: &event_id,
                        };
                        serde_json::to_string(&body).unwrap_or_default()
                    })
                    .clone();
                let (vm, host, request) = match event {
                    Event::Vm {
                        vm, host, request, ..
                    } => (
                        Some(vm.0),
                        host.and_then(|h| s.host(h)).map(|h| h.name.to_owned()),
                        Some(request.0),
                    ),
                    Event::Request { request, .. } => (None, None, Some(request.0)),
                    Event::Host { host, .. } => {
                        (None, s.host(*host).map(|h| h.name.to_owned()), None)
                    }
                };
                self.backlog.fetch_add(1, Ordering::Relaxed);
                out.push(HookJob {
                    hook: h.name.clone(),
                    event_id,
                    event: name.clone(),
                    payload,
                    vm,
                    host,
                    request,
                });
            }
        }
    }
}

/// What a hook reads on its standard input for `image.pulled` and `image.pull_failed`.
#[derive(Serialize)]
struct PullPayload<'a> {
    event: &'a str,
    event_id: &'a str,
    kind: &'static str,
    at_ms: u64,
    host: &'a str,
    image: &'a str,
    bytes: u64,
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

impl Hooks {
    /// Hands the end of a pull of a base image (`image.pulled` or `image.pull_failed`) to
    /// every hook whose pattern matches it, through the outbox. Never waits: drivers call it
    /// from their threads.
    pub(crate) fn enqueue_pull(&self, pull: &berth_drivers::images::PullOutcome) {
        let name = pull_event_name(pull);
        let event_id = format!(
            "image.{}.{}",
            self.me,
            self.pulls_seen.fetch_add(1, Ordering::Relaxed)
        );
        let payload = PullPayload {
            event: name,
            event_id: &event_id,
            kind: "image",
            at_ms: wall_ms(),
            host: &pull.host,
            image: &pull.image,
            bytes: pull.bytes,
            seconds: pull.seconds,
            error: pull.error.as_deref(),
        };
        let body = serde_json::to_string(&payload).unwrap_or_default();
        for h in self.hooks.iter() {
            if !matches(&h.config.on, name) {
                continue;
            }
            let job = HookJob {
                hook: h.name.clone(),
                event_id: event_id.clone(),
                event: name.to_owned(),
                payload: body.clone(),
                vm: None,
                host: Some(pull.host.clone()),
                request: None,
            };
            if self.pulls.try_send(job).is_err() {
                self.metrics.hooks_dropped.inc();
                tracing::warn!(hook = %h.name, event = %name, "hook queue full: event dropped");
            }
        }
    }
}

/// `image.pulled` or `image.pull_failed`, one of [`EVENT_NAMES`].
pub fn pull_event_name(pull: &berth_drivers::images::PullOutcome) -> &'static str {
    if pull.error.is_none() {
        "image.pulled"
    } else {
        "image.pull_failed"
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs `f` on the runner's connection, off the runtime's threads.
async fn on_db<T: Send + 'static>(
    conn: &Arc<Mutex<crate::db::Db>>,
    f: impl FnOnce(&mut crate::db::Db) -> Result<T, DaemonError> + Send + 'static,
) -> Result<T, DaemonError> {
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut conn)
    })
    .await
    .unwrap_or_else(|e| {
        Err(DaemonError::Io {
            what: "the hook runner's database task".into(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}

impl Dispatch {
    /// Waits until this daemon leads, settles what an earlier leader left (`settle`), then
    /// claims and runs the outbox's jobs in order as permits free up. Ends when the daemon
    /// drops its handles or stops (see [`HookStop`]).
    async fn run(self, mut pulls: mpsc::Receiver<HookJob>) {
        let d = Arc::new(self);
        let mut stopping = d.stopping.clone();
        while !d.gate.may_act() {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(FOLLOWER_POLL_MS)) => {}
                () = d.wake.notified() => {}
                () = stopped(&mut stopping) => return,
            }
        }
        let names: Vec<String> = d.hooks.iter().map(|h| h.name.clone()).collect();
        let (me, gate) = (d.me.clone(), d.gate.clone());
        match on_db(&d.conn, move |db| settle(db, &names, &me, &gate)).await {
            Ok(left) => d.backlog.store(left, Ordering::Relaxed),
            Err(error) => tracing::error!(%error, "cannot settle the hook outbox"),
        }
        if d.hooks.is_empty() {
            return;
        }
        loop {
            while let Ok(job) = pulls.try_recv() {
                d.put(job).await;
            }
            if *stopping.borrow() {
                return;
            }
            let free = d.permits.available_permits();
            if free == 0 {
                // Wait for a run to end.
                tokio::select! {
                    permit = d.permits.acquire() => match permit {
                        Ok(permit) => drop(permit),
                        Err(_) => return,
                    },
                    () = stopped(&mut stopping) => return,
                }
                continue;
            }
            let claimed = if d.gate.may_act() {
                let (me, gate) = (d.me.clone(), d.gate.clone());
                on_db(&d.conn, move |db| claim(db, free, &me, &gate)).await
            } else {
                // A leader whose lease ran out claims nothing: the next leader may be acting
                // already, and runs what is left.
                Ok(Vec::new())
            };
            match claimed {
                Ok(jobs) if jobs.is_empty() => {
                    let running = d.at_once_max - d.permits.available_permits();
                    d.backlog.store(running, Ordering::Relaxed);
                    tokio::select! {
                        () = d.wake.notified() => {}
                        () = tokio::time::sleep(Duration::from_millis(IDLE_POLL_MS)) => {}
                        () = stopped(&mut stopping) => return,
                        job = pulls.recv() => match job {
                            Some(job) => d.put(job).await,
                            None => return,
                        },
                    }
                }
                Ok(jobs) => {
                    let mut jobs = jobs.into_iter();
                    while let Some((id, job)) = jobs.next() {
                        let permit = tokio::select! {
                            permit = d.permits.clone().acquire_owned() => permit.ok(),
                            () = stopped(&mut stopping) => None,
                        };
                        let Some(permit) = permit.filter(|_| !*stopping.borrow()) else {
                            // Not started: the next daemon to lead runs them.
                            let ids: Vec<u64> =
                                std::iter::once(id).chain(jobs.map(|(id, _)| id)).collect();
                            let me = d.me.clone();
                            if let Err(error) =
                                on_db(&d.conn, move |db| unclaim(db, &ids, &me)).await
                            {
                                tracing::error!(%error, "cannot give back claimed hook jobs");
                            }
                            return;
                        };
                        let d = d.clone();
                        tokio::spawn(async move {
                            d.run_claimed(id, job).await;
                            drop(permit);
                        });
                    }
                }
                Err(error) => {
                    if !error.is_leadership_lost() {
                        tracing::error!(%error, "cannot claim hook jobs");
                    }
                    tokio::time::sleep(Duration::from_millis(IDLE_POLL_MS)).await;
                }
            }
        }
    }

    /// Puts a pull's job into the outbox.
    async fn put(&self, job: HookJob) {
        if self.backlog.load(Ordering::Relaxed) >= HOOK_QUEUE_MAX {
            self.metrics.hooks_dropped.inc();
            tracing::warn!(hook = %job.hook, event = %job.event, "hook outbox full: event dropped");
            return;
        }
        self.backlog.fetch_add(1, Ordering::Relaxed);
        let put = on_db(&self.conn, move |db| {
            crate::store::insert_hook_job(db, &job)?;
            db.flush()
                .map_err(crate::db::sql("writing the hook outbox"))
        })
        .await;
        if let Err(error) = put {
            tracing::error!(%error, "cannot put a pull's hook job in the outbox");
        }
    }

    /// Runs one claimed job with its retries, then takes it out of the outbox.
    async fn run_claimed(&self, id: u64, job: HookJob) {
        match self.hooks.iter().find(|h| h.name == job.hook) {
            Some(hook) => {
                run_job(
                    hook,
                    &job,
                    self.cgroups.as_deref(),
                    &self.conn,
                    &self.metrics,
                    &self.gate,
                    &self.stopping,
                )
                .await
            }
            // `settle` dropped the jobs of hooks no longer configured before any claim.
            None => tracing::warn!(hook = %job.hook, "a claimed job's hook is not configured"),
        }
        let done = on_db(&self.conn, move |db| {
            db.execute("DELETE FROM hook_outbox WHERE id = ?1", crate::args![id])
                .map_err(crate::db::sql("taking a job out of the hook outbox"))
        })
        .await;
        if let Err(error) = done {
            tracing::error!(%error, "cannot take a hook job out of the outbox");
        }
        let _ = self
            .backlog
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// Returns once the daemon stops (at once if it has).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // An error means the daemon dropped its handle: stopped too.
    let _ = stopping.wait_for(|s| *s).await;
}

/// The fence of a write only the leader makes (none for the sole daemon), in its transaction.
fn fence(db: &mut crate::db::Db, gate: &crate::lease::Gate) -> Result<(), DaemonError> {
    if gate.is_sole() {
        Ok(())
    } else {
        crate::lease::fence_later(db, gate.epoch())
    }
}

/// What a new leader does with the outbox before it claims: a job claimed by an earlier daemon
/// (this one has claimed nothing yet) that never came back is recorded as an `abandoned` run
/// and not run again, since it may have run; the jobs of hooks no longer configured are
/// dropped. Returns the jobs left.
fn settle(
    db: &mut crate::db::Db,
    names: &[String],
    me: &str,
    gate: &crate::lease::Gate,
) -> Result<usize, DaemonError> {
    let failed = crate::db::sql("settling the hook outbox");
    db.transaction("settling the hook outbox", |db| {
        fence(db, gate)?;
        let claimed = db
            .rows(
                "SELECT hook, event_id, event, vm, host, request, claimed_by, claimed_ms
                 FROM hook_outbox WHERE claimed_by IS NOT NULL AND claimed_by <> ?1 ORDER BY id",
                crate::args![me],
                |r| {
                    Ok(HookRun {
                        id: 0,
                        hook: r.text(0)?,
                        event_id: Some(r.text(1)?),
                        event: r.text(2)?,
                        vm: r.opt_i64(3)?.map(|v| v as u64),
                        host: r.opt_text(4)?,
                        request: r.opt_i64(5)?.map(|v| v as u64),
                        attempt: 0,
                        started_ms: r.opt_i64(7)?.unwrap_or(0).max(0) as u64,
                        duration_ms: 0,
                        exit_code: None,
                        outcome: "abandoned".into(),
                        stderr_tail: format!(
                            "claimed by {}, which ended or stopped leading before recording an \
                             end; it may have run, so it is not run again",
                            r.text(6)?
                        ),
                    })
                },
            )
            .map_err(&failed)?;
        for run in &claimed {
            tracing::warn!(hook = %run.hook, event_id = ?run.event_id, "a hook run an earlier leader claimed is recorded as abandoned");
            insert_run(db, run)?;
        }
        db.execute_later(
            "DELETE FROM hook_outbox WHERE claimed_by IS NOT NULL AND claimed_by <> ?1",
            crate::args![me],
        )
        .map_err(&failed)?;
        let held = db
            .rows(
                "SELECT hook, count(*) FROM hook_outbox GROUP BY hook",
                &[],
                |r| Ok((r.text(0)?, r.u64(1)?)),
            )
            .map_err(&failed)?;
        let mut left = 0;
        for (hook, n) in held {
            if names.contains(&hook) {
                left += n as usize;
            } else {
                tracing::warn!(%hook, jobs = n, "the hook outbox holds jobs of a hook no longer configured: dropped");
                db.execute_later(
                    "DELETE FROM hook_outbox WHERE hook = ?1",
                    crate::args![&hook],
                )
                .map_err(&failed)?;
            }
        }
        Ok(left)
    })
}

/// Claims the outbox's oldest `n` unclaimed jobs for this daemon, under the fence.
fn claim(
    db: &mut crate::db::Db,
    n: usize,
    me: &str,
    gate: &crate::lease::Gate,
) -> Result<Vec<(u64, HookJob)>, DaemonError> {
    let failed = crate::db::sql("claiming hook jobs");
    db.transaction("claiming hook jobs", |db| {
        fence(db, gate)?;
        let jobs = db
            .rows(
                "SELECT id, hook, event_id, event, payload, vm, host, request FROM hook_outbox
                 WHERE claimed_by IS NULL ORDER BY id LIMIT ?1",
                crate::args![n as u64],
                |r| {
                    Ok((
                        r.u64(0)?,
                        HookJob {
                            hook: r.text(1)?,
                            event_id: r.text(2)?,
                            event: r.text(3)?,
                            payload: r.text(4)?,
                            vm: r.opt_i64(5)?.map(|v| v as u64),
                            host: r.opt_text(6)?,
                            request: r.opt_i64(7)?.map(|v| v as u64),
                        },
                    ))
                },
            )
            .map_err(&failed)?;
        for (id, _) in &jobs {
            db.execute_later(
                "UPDATE hook_outbox SET claimed_by = ?2, claimed_ms = ?3 WHERE id = ?1",
                crate::args![*id, me, wall_ms()],
            )
            .map_err(&failed)?;
        }
        Ok(jobs)
    })
}

/// Gives back jobs this daemon claimed and did not start (it is stopping), so that the next
/// daemon to lead runs them rather than recording them abandoned.
fn unclaim(db: &mut crate::db::Db, ids: &[u64], me: &str) -> Result<(), DaemonError> {
    db.transaction("giving back hook jobs", |db| {
        for id in ids {
            db.execute_later(
                "UPDATE hook_outbox SET claimed_by = NULL, claimed_ms = NULL
                 WHERE id = ?1 AND claimed_by = ?2",
                crate::args![*id, me],
            )
            .map_err(crate::db::sql("giving back hook jobs"))?;
        }
        Ok(())
    })
}

/// Runs one job with its retries, recording every attempt; a retry waits while this daemon
/// does not lead, and is not made once another leads or the daemon stops.
async fn run_job(
    hook: &Hook,
    job: &HookJob,
    cgroups: Option<&HookCgroups>,
    conn: &Arc<Mutex<crate::db::Db>>,
    metrics: &Metrics,
    gate: &crate::lease::Gate,
    stopping: &watch::Receiver<bool>,
) {
    let c = &hook.config;
    // A VM that took a warm VM runs in the warm VM's object on its host; its batch is
    // committed by now, so the `vms` row says which.
    let object = match job.vm {
        Some(vm) => on_db(conn, move |db| crate::store::host_object(db, vm))
            .await
            .map_err(|error| tracing::warn!(vm, %error, "cannot read a vm's host object"))
            .ok()
            .flatten(),
        None => None,
    };
    for attempt in 0..=c.retries_max {
        if attempt > 0 {
            let factor = 1u64 << (attempt - 1).min(20);
            tokio::time::sleep(Duration::from_millis(c.backoff_ms.saturating_mul(factor))).await;
            if !gate.may_act() {
                tracing::warn!(hook = %hook.name, event_id = %job.event_id, "hook not retried: this daemon no longer leads");
                return;
            }
            if *stopping.borrow() {
                tracing::warn!(hook = %hook.name, event_id = %job.event_id, "hook not retried: the daemon is stopping");
                return;
            }
        }
        let run = run_once(hook, job, object.as_deref(), cgroups, attempt).await;
        let ok = run.outcome == "ok";
        metrics
            .hook_runs
            .get_or_create(&vec![
                ("hook".to_owned(), hook.name.clone()),
                ("outcome".to_owned(), run.outcome.clone()),
            ])
            .inc();
        if !ok {
            metrics
                .hook_failures
                .get_or_create(&vec![("hook".to_owned(), hook.name.clone())])
                .inc();
            tracing::warn!(hook = %hook.name, event = %job.event, attempt, outcome = %run.outcome, exit_code = ?run.exit_code, "hook run failed");
        }
        if let Err(error) = on_db(conn, move |db| insert_run(db, &run)).await {
            tracing::error!(hook = %hook.name, %error, "cannot record a hook run");
        }
        if ok {
            return;
        }
    }
}

/// One attempt: spawn, feed stdin, wait up to the timeout, kill the process group (and the
/// attempt's cgroup, with `hooks_cgroup`) past it.
async fn run_once(
    hook: &Hook,
    job: &HookJob,
    object: Option<&str>,
    cgroups: Option<&HookCgroups>,
    attempt: u32,
) -> HookRun {
    let c = &hook.config;
    let started_ms = wall_ms();
    let started = Instant::now();
    let mut run = HookRun {
        id: 0,
        hook: hook.name.clone(),
        event: job.event.clone(),
        event_id: Some(job.event_id.clone()),
        vm: job.vm,
        host: job.host.clone(),
        request: job.request,
        attempt,
        started_ms,
        duration_ms: 0,
        exit_code: None,
        outcome: "error".into(),
        stderr_tail: String::new(),
    };
    let group = match cgroups.map(HookCgroups::group).transpose() {
        Ok(group) => group,
        Err(e) => {
            run.stderr_tail = format!("cannot make a cgroup for the hook: {e}");
            return run;
        }
    };
    let argv = match &group {
        Some(g) => g.wrap(&c.command),
        None => c.command.clone(),
    };
    // `HookConfig::check` (at config load) made sure the command has a program.
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("BERTH_EVENT", &job.event)
        .env("BERTH_EVENT_ID", &job.event_id)
        .process_group(0)
        .kill_on_drop(true);
    if let Some(vm) = job.vm {
        let name = berth_drivers::vm_name(vm);
        cmd.env("BERTH_VM_ID", vm.to_string())
            .env("BERTH_VM_OBJECT", object.unwrap_or(&name))
            .env("BERTH_VM_NAME", name);
    }
    if let Some(host) = &job.host {
        cmd.env("BERTH_HOST", host);
    }
    if let Some(r) = job.request {
        cmd.env("BERTH_REQUEST_ID", r.to_string());
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            run.stderr_tail = format!("cannot start `{}`: {e}", c.command[0]);
            if let Some(g) = group {
                let _ = g.kill_all().await;
            }
            return run;
        }
    };
    let pid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        let payload = job.payload.clone().into_bytes();
        // A hook that does not read its stdin must not block us: write from a task.
        tokio::spawn(async move {
            let _ = stdin.write_all(&payload).await;
            let _ = stdin.write_all(b"\n").await;
        });
    }
    let stderr = child.stderr.take().map(|mut err| {
        tokio::spawn(async move {
            let mut tail: Vec<u8> = Vec::new();
            let mut buf = [0u8; 4096];
            let mut read = 0usize;
            while let Ok(n) = err.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > STDERR_TAIL_MAX_BYTES {
                    tail.drain(..tail.len() - STDERR_TAIL_MAX_BYTES);
                }
                read += n;
                if read >= STDERR_READ_MAX_BYTES {
                    tail.extend_from_slice(b"\n(standard error cut after 1 MiB)");
                    break;
                }
            }
            tail
        })
    });
    let waited = tokio::time::timeout(Duration::from_millis(c.timeout_ms), child.wait()).await;
    match waited {
        Ok(Ok(status)) => {
            run.exit_code = status.code();
            run.outcome = if status.success() { "ok" } else { "failed" }.into();
        }
        Ok(Err(e)) => run.stderr_tail = format!("waiting for the hook: {e}"),
        Err(_) => {
            let _ = child.kill().await;
            run.outcome = "timeout".into();
        }
    }
    // The hook leads its own process group: whatever it started and left running goes with
    // it, whether it ended or was killed. A child that made a session of its own escapes
    // that; the attempt's cgroup, when there is one, holds it too.
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if let Some(g) = group
        && let Err(e) = g.kill_all().await
    {
        tracing::warn!(hook = %hook.name, error = %e, "a hook's cgroup would not empty");
    }
    run.duration_ms = started.elapsed().as_millis() as u64;
    if let Some(mut task) = stderr {
        let tail = match tokio::time::timeout(Duration::from_millis(PIPE_GRACE_MS), &mut task).await
        {
            Ok(Ok(tail)) => Some(tail),
            _ => {
                // Someone outside the group still holds the pipe: stop reading it.
                task.abort();
                None
            }
        };
        if let Some(tail) = tail {
            let text = tail_text(&tail);
            if run.stderr_tail.is_empty() {
                run.stderr_tail = text;
            } else {
                run.stderr_tail.push('\n');
                run.stderr_tail.push_str(&text);
            }
        }
    }
    if run.outcome == "timeout" {
        run.stderr_tail
            .push_str(&format!("\n(killed after {} ms)", c.timeout_ms));
    }
    run
}

/// A hook's standard error as its run keeps it: invalid UTF-8 and NUL characters (which
/// PostgreSQL's text cannot hold) as U+FFFD, then its last `STDERR_TAIL_MAX_BYTES` bytes on a
/// character boundary, so that the bound holds for any bytes and on either engine.
fn tail_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes).replace('\0', "\u{FFFD}");
    let mut start = text.len().saturating_sub(STDERR_TAIL_MAX_BYTES);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

fn insert_run(db: &mut crate::db::Db, r: &HookRun) -> Result<(), DaemonError> {
    db.execute(
        "INSERT INTO hook_runs (hook, event, vm, host, request, attempt, started_ms, duration_ms,
         exit_code, outcome, stderr_tail, event_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        crate::args![
            &r.hook,
            &r.event,
            r.vm,
            r.host.clone(),
            r.request,
            r.attempt,
            r.started_ms,
            r.duration_ms,
            r.exit_code,
            &r.outcome,
            &r.stderr_tail,
            r.event_id.clone()
        ],
    )
    .map_err(crate::db::sql("recording a hook run"))?;
    Ok(())
}

/// Filters for listing hook runs.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunFilter {
    /// Only runs of this hook.
    pub hook: Option<String>,
    /// Only runs that ended so: `ok`, `failed`, `timeout`, `error` or `abandoned`.
    pub outcome: Option<String>,
    /// Only runs for this event (`vm.running`, ...).
    pub event: Option<String>,
    /// Rows on the page.
    pub limit: Option<u64>,
}

/// Hook runs, newest first.
pub fn list_runs(db: &mut crate::db::Db, f: &RunFilter) -> Result<Vec<HookRun>, DaemonError> {
    db.rows(
        "SELECT id, hook, event, vm, host, request, attempt, started_ms, duration_ms,
         exit_code, outcome, stderr_tail, event_id FROM hook_runs
         WHERE (CAST(?1 AS TEXT) IS NULL OR hook = ?1)
         AND (CAST(?2 AS TEXT) IS NULL OR outcome = ?2)
         AND (CAST(?3 AS TEXT) IS NULL OR event = ?3) ORDER BY id DESC LIMIT ?4",
        crate::args![
            f.hook.clone(),
            f.outcome.clone(),
            f.event.clone(),
            crate::db::Value::capped(f.limit.unwrap_or(100))
        ],
        |r| {
            let small = |i: usize| -> Result<Option<i32>, crate::db::DbError> {
                r.opt_i64(i)?
                    .map(|v| {
                        i32::try_from(v).map_err(|e| crate::db::DbError::Column {
                            index: i,
                            message: e.to_string(),
                        })
                    })
                    .transpose()
            };
            Ok(HookRun {
                id: r.u64(0)?,
                hook: r.text(1)?,
                event: r.text(2)?,
                vm: r.opt_i64(3)?.map(|v| v as u64),
                host: r.opt_text(4)?,
                request: r.opt_i64(5)?.map(|v| v as u64),
                attempt: small(6)?.unwrap_or_default().max(0) as u32,
                started_ms: r.u64(7)?,
                duration_ms: r.u64(8)?,
                exit_code: small(9)?,
                outcome: r.text(10)?,
                stderr_tail: r.text(11)?,
                event_id: r.opt_text(12)?,
            })
        },
    )
    .map_err(crate::db::sql("listing hook runs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stderr_tail_is_text_within_its_bound_whatever_the_bytes() {
        let zeros = vec![0u8; STDERR_TAIL_MAX_BYTES];
        let t = tail_text(&zeros);
        assert!(!t.contains('\0'));
        assert!(t.len() <= STDERR_TAIL_MAX_BYTES, "{}", t.len());
        assert!(t.chars().all(|c| c == '\u{FFFD}'));
        let mut mixed = vec![0xffu8; STDERR_TAIL_MAX_BYTES];
        mixed.extend_from_slice(b"the end");
        let t = tail_text(&mixed);
        assert!(
            t.ends_with("the end") && t.len() <= STDERR_TAIL_MAX_BYTES,
            "{t}"
        );
        assert_eq!(tail_text(b"plain"), "plain");
    }

    #[test]
    fn patterns_match_names_and_kinds() {
        assert!(matches("vm.held", "vm.held"));
        assert!(!matches("vm.held", "vm.done"));
        assert!(matches("vm.*", "vm.done"));
        assert!(!matches("vm.*", "host.error"));
        assert!(matches("*", "request.rejected"));
        let mut c = HookConfig {
            name: None,
            on: "vm.hold".into(),
            command: vec!["true".into()],
            timeout_ms: 1,
            retries_max: 0,
            backoff_ms: 0,
        };
        assert_eq!(c.check().map_err(|e| e.0), Err("on"));
        c.on = "host.*".into();
        assert_eq!(c.check(), Ok(()));
        c.command.clear();
        assert_eq!(c.check().map_err(|e| e.0), Err("command"));
    }

    /// The outbox hands each job out once, oldest first; a new leader records what a gone
    /// daemon claimed as abandoned and drops the jobs of hooks no longer configured.
    #[test]
    fn the_outbox_hands_a_job_out_once_and_settles_what_a_gone_daemon_left() {
        let dir = tempfile::tempdir().expect("temp dir");
        let at = crate::db::StoreAt::Sqlite(dir.path().join("berth.db"));
        let mut store = crate::store::Store::open(&at).expect("database");
        let db = store.db();
        let job = |hook: &str, event_id: &str| HookJob {
            hook: hook.into(),
            event_id: event_id.into(),
            event: "vm.running".into(),
            payload: "{}".into(),
            vm: Some(7),
            host: None,
            request: Some(3),
        };
        for j in [
            job("a", "1.0"),
            job("a", "1.1"),
            job("gone", "1.0"),
            job("a", "2.0"),
        ] {
            crate::store::insert_hook_job(db, &j).expect("insert");
        }
        let gate = crate::lease::Gate::sole();
        let ids = |jobs: &[(u64, HookJob)]| -> Vec<String> {
            jobs.iter()
                .map(|(_, j)| format!("{} {}", j.hook, j.event_id))
                .collect()
        };
        let first = claim(db, 2, "old", &gate).expect("claim");
        assert_eq!(ids(&first), ["a 1.0", "a 1.1"]);
        let second = claim(db, 1, "old", &gate).expect("claim");
        assert_eq!(ids(&second), ["gone 1.0"]);
        // The old daemon dies with three claimed; a new one settles.
        let names = ["a".to_owned()];
        let left = settle(db, &names, "new", &gate).expect("settle");
        assert_eq!(left, 1, "the unclaimed job of hook a is left");
        let runs = list_runs(db, &RunFilter::default()).expect("runs");
        let abandoned: Vec<String> = runs
            .iter()
            .filter(|r| r.outcome == "abandoned")
            .map(|r| format!("{} {}", r.hook, r.event_id.clone().unwrap_or_default()))
            .collect();
        assert_eq!(abandoned, ["gone 1.0", "a 1.1", "a 1.0"], "newest first");
        assert!(runs[0].stderr_tail.contains("claimed by old"), "{runs:?}");
        let last = claim(db, 10, "new", &gate).expect("claim");
        assert_eq!(ids(&last), ["a 2.0"]);
        assert!(claim(db, 10, "new", &gate).expect("claim").is_empty());
        // Its own claims are not the new daemon's to abandon.
        assert_eq!(settle(db, &names, "new", &gate).expect("settle"), 1);
    }

    #[tokio::test]
    async fn pulls_reach_image_hooks_as_pulled_or_pull_failed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = crate::db::StoreAt::Sqlite(dir.path().join("berth.db"));
        crate::store::Store::open(&db).expect("database");
        let out = dir.path().join("image.jsonl");
        let not = dir.path().join("vm.jsonl");
        let hook = |on: &str, file: &std::path::Path| HookConfig {
            name: Some(on.into()),
            on: on.into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                format!("cat >> '{}'; echo >> '{}'", file.display(), file.display()),
            ],
            timeout_ms: 10_000,
            retries_max: 0,
            backoff_ms: 0,
        };
        let hooks = Hooks::start(
            &[hook("image.*", &out), hook("vm.*", &not)],
            1,
            None,
            &db,
            Arc::new(Metrics::new()),
            crate::lease::Gate::sole(),
        )
        .expect("hooks");
        let pull = |error: Option<&str>| berth_drivers::images::PullOutcome {
            host: "kvm-07".into(),
            image: "linux".into(),
            bytes: 4096,
            seconds: 1.5,
            error: error.map(str::to_owned),
        };
        hooks.enqueue_pull(&pull(None));
        hooks.enqueue_pull(&pull(Some("digest mismatch")));
        let deadline = Instant::now() + Duration::from_secs(20);
        let lines = loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_str(l).expect("json"))
                .collect();
            if lines.len() == 2 || Instant::now() > deadline {
                break lines;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let events: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
        assert_eq!(events, ["image.pulled", "image.pull_failed"], "{lines:?}");
        assert_eq!(lines[0]["host"], "kvm-07");
        assert_eq!(lines[0]["image"], "linux");
        assert_eq!(lines[0]["bytes"], 4096);
        assert!(lines[0].get("error").is_none());
        assert_eq!(lines[1]["error"], "digest mismatch");
        assert!(!not.exists(), "a vm.* hook ran for a pull");
    }
}
