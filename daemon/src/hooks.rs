//! Hooks: commands the daemon runs when the scheduler reports an event (`vm.held`,
//! `host.error`, `request.rejected`, or a pattern such as `vm.*`). Each runs as argv without a
//! shell, the event as JSON on stdin and `BERTH_EVENT`, `BERTH_VM_ID`, `BERTH_HOST` in its
//! environment, in its own process group (killed whole at its timeout), retried with doubling
//! backoff, at most `workers.hooks_at_once_max` at once. Every attempt is a row of
//! `hook_runs`.
//!
//! The control loop only enqueues (`try_send` on a bounded queue): a slow, hanging or failing
//! hook never delays scheduling; when the queue is full the event is dropped for hooks and
//! counted (`berth_hook_events_dropped_total`).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_sched::{Event, Scheduler};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};

use crate::DaemonError;
use crate::cgroup::HookCgroups;
pub use crate::config::{EVENT_NAMES, HookConfig};
use crate::metrics::Metrics;

/// Events waiting for a hook before new ones are dropped.
pub const HOOK_QUEUE_MAX: usize = 10_000;
/// The end of a hook's standard error kept in its run row.
pub const STDERR_TAIL_MAX_BYTES: usize = 4096;
/// How long to wait for a killed hook's pipes to close.
const PIPE_GRACE_MS: u64 = 1000;
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

/// One event for one hook.
#[derive(Debug)]
struct Job {
    hook: usize,
    event: String,
    payload: Vec<u8>,
    vm: Option<u64>,
    host: Option<String>,
    request: Option<u64>,
}

/// What a hook reads on its standard input: the event as the event stream sends it, and the
/// name it was matched by (`vm.running`, `host.error`, ...).
#[derive(Serialize)]
struct HookPayload<'a> {
    #[serde(flatten)]
    event: berth_api::Event,
    #[serde(rename = "event")]
    name: &'a str,
}

/// One attempt, as stored in `hook_runs` and shown by `GET /v1/hooks/runs`.
pub use berth_api::HookRun;

/// What the control loop tells of every committed event.
impl crate::control::Observer for Hooks {
    fn event(&self, s: &Scheduler, event: &Event) {
        self.enqueue(s, event);
    }
}

/// The hook runner's handle, owned by the control loop; a clone hears the drivers' pulls.
#[derive(Clone)]
pub(crate) struct Hooks {
    hooks: Arc<Vec<Hook>>,
    tx: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
}

impl Hooks {
    /// Starts the runner: a dispatcher task and at most `at_once_max` hook processes at once,
    /// writing runs on their own database connection.
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
        let (tx, mut rx) = mpsc::channel::<Job>(HOOK_QUEUE_MAX);
        if !hooks.is_empty() {
            let conn = Arc::new(Mutex::new(crate::db::Db::connect(store)?));
            let permits = Arc::new(Semaphore::new(at_once_max.max(1)));
            let hooks = hooks.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                while let Some(job) = rx.recv().await {
                    // A leader whose lease ran out runs no hook: the next leader may be
                    // acting already.
                    if !gate.may_act() {
                        tracing::warn!(event = %job.event, "hook not run: this daemon no longer leads");
                        continue;
                    }
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        break;
                    };
                    let (hooks, conn, metrics) = (hooks.clone(), conn.clone(), metrics.clone());
                    let cgroups = cgroups.clone();
                    tokio::spawn(async move {
                        run_job(&hooks[job.hook], &job, cgroups.as_deref(), &conn, &metrics).await;
                        drop(permit);
                    });
                }
            });
        }
        Ok(Hooks { hooks, tx, metrics })
    }

    /// Hands `event` to every hook whose pattern matches it. Never waits.
    pub(crate) fn enqueue(&self, s: &Scheduler, event: &Event) {
        if self.hooks.is_empty() {
            return;
        }
        let name = event_name(event);
        let mut body: Option<Vec<u8>> = None;
        for (i, h) in self.hooks.iter().enumerate() {
            if !matches(&h.config.on, &name) {
                continue;
            }
            let payload = body
                .get_or_insert_with(|| {
                    let payload = HookPayload {
                        event: crate::answers::event(s, event),
                        name: &name,
                    };
                    serde_json::to_vec(&payload).unwrap_or_default()
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
                Event::Host { host, .. } => (None, s.host(*host).map(|h| h.name.to_owned()), None),
            };
            let job = Job {
                hook: i,
                event: name.clone(),
                payload,
                vm,
                host,
                request,
            };
            if self.tx.try_send(job).is_err() {
                self.metrics.hooks_dropped.inc();
                tracing::warn!(hook = %h.name, event = %name, "hook queue full: event dropped");
            }
        }
    }
}

/// What a hook reads on its standard input for `image.pulled` and `image.pull_failed`.
#[derive(Serialize)]
struct PullPayload<'a> {
    event: &'a str,
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
    /// every hook whose pattern matches it. Never waits: drivers call it from their threads.
    pub(crate) fn enqueue_pull(&self, pull: &berth_drivers::images::PullOutcome) {
        let name = pull_event_name(pull);
        let payload = PullPayload {
            event: name,
            kind: "image",
            at_ms: wall_ms(),
            host: &pull.host,
            image: &pull.image,
            bytes: pull.bytes,
            seconds: pull.seconds,
            error: pull.error.as_deref(),
        };
        let body = serde_json::to_vec(&payload).unwrap_or_default();
        for (i, h) in self.hooks.iter().enumerate() {
            if !matches(&h.config.on, name) {
                continue;
            }
            let job = Job {
                hook: i,
                event: name.to_owned(),
                payload: body.clone(),
                vm: None,
                host: Some(pull.host.clone()),
                request: None,
            };
            if self.tx.try_send(job).is_err() {
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

/// Runs one job with its retries, recording every attempt.
async fn run_job(
    hook: &Hook,
    job: &Job,
    cgroups: Option<&HookCgroups>,
    conn: &Arc<Mutex<crate::db::Db>>,
    metrics: &Metrics,
) {
    let c = &hook.config;
    // A VM that took a warm VM runs in the warm VM's object on its host; its batch is
    // committed by now, so the `vms` row says which.
    let object = match job.vm {
        Some(vm) => {
            let conn = conn.clone();
            tokio::task::spawn_blocking(move || {
                let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                crate::store::host_object(&mut conn, vm)
            })
            .await
            .ok()
            .and_then(|found| {
                found
                    .map_err(|error| tracing::warn!(vm, %error, "cannot read a vm's host object"))
                    .ok()
            })
            .flatten()
        }
        None => None,
    };
    for attempt in 0..=c.retries_max {
        if attempt > 0 {
            let factor = 1u64 << (attempt - 1).min(20);
            tokio::time::sleep(Duration::from_millis(c.backoff_ms.saturating_mul(factor))).await;
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
        let conn = conn.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            insert_run(&mut conn, &run)
        })
        .await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(hook = %hook.name, %error, "cannot record a hook run")
            }
            Err(_) => tracing::error!(hook = %hook.name, "hook run recorder failed"),
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
    job: &Job,
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
        let payload = job.payload.clone();
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
         exit_code, outcome, stderr_tail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
            &r.stderr_tail
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
    /// Only runs that ended so: `ok`, `failed`, `timeout` or `error`.
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
         exit_code, outcome, stderr_tail FROM hook_runs
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
