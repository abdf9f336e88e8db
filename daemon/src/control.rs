//! The control loop: the one task that owns the `Scheduler`. API handlers, driver workers and
//! probes send it messages; it takes them in batches, applies each input, polls the scheduler
//! empty, writes the batch's inputs and the state they changed in one transaction, and only
//! then acts: actions go to the driver workers, events to the event stream, answers to callers.
//!
//! Recovery replays the journal batch by batch into a fresh scheduler (the scheduler is
//! deterministic and the placement pass runs at the same polls, so the state is the same),
//! then reconciles with what each host's driver reports (see `reconcile`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_drivers::{DomainType, Driver, VmRecipe, parse_vm_name, vm_name};
use berth_sched::{
    Action, Event, HostId, HostState, InputError, RequestId, Scheduler, Template, VmId, VmState,
};
use berth_sim::runtimes::{RunModel, RunTimes, job_run};
use tokio::sync::{mpsc, oneshot};

use crate::DaemonError;
use crate::answers;
use crate::config::Role;
use crate::disk::DiskWatch;
use crate::feed::Feed;
use crate::host_objects::HostObjects;
use crate::orphan_start::OrphanStart;
use crate::store::{AuditRow, Commit, OrphanRow, RepairedRequest, RequestRow, Store};
use crate::wire::{FieldError, WireHost, WireInput, WireTemplate};
use crate::workers::{Report, VmOp, Workers};

/// The most messages taken into one batch (one transaction).
pub(crate) const BATCH_MAX: usize = 4096;
/// How often a batch that could not be written is tried again.
const UNWRITTEN_RETRY_MS: u64 = 1000;

/// Who asked, for the audit table.
#[derive(Clone, Debug)]
pub(crate) struct Actor {
    pub who: String,
    pub role: Role,
}

/// What hears of the loop's committed work. Metrics and hooks implement it; the loop knows
/// nothing else of them.
pub(crate) trait Observer: Send {
    /// The hook runs a batch's events owe, to be written with the batch (`hooks`).
    fn hook_jobs(
        &self,
        _s: &Scheduler,
        _batch: u64,
        _events: &[Event],
        _out: &mut Vec<crate::store::HookJob>,
    ) {
    }
    /// A state change, once its batch is written.
    fn event(&self, s: &Scheduler, event: &Event);
    /// Whether changes are written now (the disk).
    fn writable(&self, _writable: bool) {}
    /// A scrape: gauges from the scheduler's state now.
    fn sample(&self, _s: &Scheduler, _now_ms: u64) {}
}

/// What kind of refusal: the domain's words, which the API maps to HTTP statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// The input is malformed or out of range.
    Invalid,
    /// It names something that does not exist.
    NotFound,
    /// It does not fit the state things are in (a duplicate, a wrong state).
    Conflict,
    /// Changes cannot be written now (the disk is full or failing).
    Unwritable,
}

/// Why the control loop refused an input (and changed nothing), naming the field at fault
/// when one is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
    pub field: Option<String>,
}

impl Refusal {
    fn new(kind: RefusalKind, field: Option<&str>, message: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            message: message.into(),
            field: field.map(str::to_owned),
        }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Invalid, Some(field), message)
    }

    pub fn not_found(field: &str, message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::NotFound, Some(field), message)
    }

    pub fn conflict(field: Option<&str>, message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Conflict, field, message)
    }

    pub fn unwritable(message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Unwritable, None, message)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} (field `{field}`)", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl From<FieldError> for Refusal {
    fn from(e: FieldError) -> Refusal {
        Refusal::invalid(&e.field, e.message)
    }
}

impl From<InputError> for Refusal {
    fn from(e: InputError) -> Refusal {
        let msg = e.to_string();
        match e {
            InputError::UnknownHost(_) => Refusal::not_found("host", msg),
            InputError::UnknownRequest(_) => Refusal::not_found("request", msg),
            InputError::UnknownVm(_) => Refusal::not_found("vm", msg),
            InputError::UnknownTemplate(_) => Refusal::invalid("template", msg),
            InputError::DuplicateHost(_) | InputError::DuplicateHostName(_) => {
                Refusal::conflict(Some("name"), msg)
            }
            InputError::DuplicateRequest(_) => Refusal::conflict(None, msg),
            InputError::Invalid { field, .. } => Refusal::invalid(field, msg),
            InputError::WrongState { .. } => Refusal::conflict(None, msg),
        }
    }
}

/// A read that needs the scheduler itself (the rest is read from SQLite).
#[derive(Debug)]
pub(crate) enum Query {
    Hosts,
    HostId(String),
    Why(u64),
    Status,
    /// The driver and host of a live VM, for its console.
    VmDriver(u64),
    /// The first waiting requests in the order they are served, with why each waits.
    Queue(usize),
    /// A copy of the scheduler, for forecasts run off the loop, unless more than this many
    /// requests wait (then only their number: the copy alone would cost too much).
    Scheduler {
        waiting_max: usize,
    },
    /// The breakpoints of these VMs (those still held): owner and expiry, extensions included.
    Holds(Vec<u64>),
    /// Sets the metrics' gauges from the scheduler's state (a scrape).
    SampleMetrics,
    /// Accounts under fair share, capped (see `answers::accounts`).
    Accounts,
    /// Every host with its driver, its base images and the live VMs made from each, for the
    /// image routes.
    ImageHosts,
    /// Probes the host numbered so now (its images changed).
    Kick(u64),
}

impl Query {
    /// Whether a follower's replica answers it: reads of the scheduler's state do; what needs
    /// the drivers or the leader's observers goes to the leader.
    pub(crate) fn replica_answers(&self) -> bool {
        match self {
            Query::Hosts
            | Query::HostId(_)
            | Query::Why(_)
            | Query::Status
            | Query::Queue(_)
            | Query::Scheduler { .. }
            | Query::Holds(_)
            | Query::Accounts => true,
            Query::VmDriver(_) | Query::SampleMetrics | Query::ImageHosts | Query::Kick(_) => false,
        }
    }
}

/// A host as the image routes see it.
pub(crate) struct ImageHost {
    pub(crate) id: u64,
    pub(crate) name: String,
    /// Its driver's kind (`libvirt`).
    pub(crate) kind: String,
    pub(crate) state: berth_api::HostState,
    pub(crate) driver: Option<Arc<dyn Driver>>,
    /// The base images it holds, as its last probe said, by name.
    pub(crate) images: Vec<String>,
    /// Its live VMs' names by the base image they are made from.
    pub(crate) vms_by_image: BTreeMap<String, Vec<String>>,
}

pub(crate) enum Answer {
    Hosts(Vec<berth_api::HostRow>),
    /// Waiting requests in order of service, each with why it waits.
    Queue(Vec<(u64, Option<berth_api::Why>)>),
    Why(Option<Box<berth_api::Why>>),
    Status(LiveStatus),
    HostId(Option<u64>),
    VmDriver(Option<(Arc<dyn Driver>, String)>),
    /// A copy of the scheduler, with how long its jobs run against what is expected of them.
    Scheduler(Box<Scheduler>, RunModel),
    /// More requests wait than a `Query::Scheduler` allowed: this many.
    TooManyWaiting(usize),
    Holds(BTreeMap<u64, (String, u64)>),
    Sampled,
    Accounts(berth_api::AccountList),
    ImageHosts(Vec<ImageHost>),
    /// A follower without a replica it can answer from (not built yet, or the database does
    /// not answer): the API sends the caller to the leader.
    AskTheLeader,
}

/// The scheduler's side of `GET /v1/status` (the API adds the database's counts and health).
#[derive(Debug, Default)]
pub(crate) struct LiveStatus {
    pub(crate) hosts: BTreeMap<berth_api::HostState, u64>,
    pub(crate) vms: BTreeMap<berth_api::VmState, u64>,
    pub(crate) live_requests: u64,
    pub(crate) queue_len: u64,
    pub(crate) journal_batches: u64,
    pub(crate) orphans_kept: u64,
    pub(crate) now_ms: u64,
}

pub(crate) enum Msg {
    Apply {
        input: WireInput,
        actor: Option<Actor>,
        reply: Option<oneshot::Sender<Result<Applied, Refusal>>>,
    },
    Query {
        query: Query,
        reply: oneshot::Sender<Answer>,
    },
    /// What a host runs (its berth VMs' ids), listed from `started_ms` on: those the scheduler
    /// does not have there are orphans (a destroy that failed while it was away), and booted
    /// VMs it has there that are missing were lost (see `Control::lose_missing`).
    Listed {
        host: HostId,
        vms: Vec<u64>,
        started_ms: u64,
    },
    /// An operator read worth recording (a console password handed out): written to the audit
    /// table with the next batch.
    Audit(AuditRow),
    /// VMs found on hosts at reconciliation that the scheduler does not have there, and kept
    /// orphans no longer listed, judged under the start's orphan policy.
    Orphans {
        found: Vec<(HostId, u64)>,
        gone: Vec<u64>,
        policy: OrphanStart,
    },
    /// A driver worker finished destroying an orphan (or gave up): a listing may judge it
    /// again.
    OrphanDestroyDone { vm: u64 },
    /// An operator destroys a kept orphan.
    DestroyOrphan {
        vm: u64,
        actor: Actor,
        reply: oneshot::Sender<Result<Applied, Refusal>>,
    },
    /// A host answered its probe with what it said last time. Nothing changed, so nothing is
    /// journaled; the time is kept so that operators see the host is still being probed.
    ProbeAnswered { host: HostId },
}

impl From<Report> for Msg {
    fn from(r: Report) -> Msg {
        match r {
            Report::Input(input) => Msg::internal(input),
            Report::Listed {
                host,
                vms,
                started_ms,
            } => Msg::Listed {
                host,
                vms,
                started_ms,
            },
            Report::OrphanDestroyDone { vm } => Msg::OrphanDestroyDone { vm },
            Report::ProbeAnswered { host } => Msg::ProbeAnswered { host },
        }
    }
}

impl Msg {
    /// An input from a worker or probe: nobody waits for an answer.
    pub(crate) fn internal(input: WireInput) -> Msg {
        Msg::Apply {
            input,
            actor: None,
            reply: None,
        }
    }
}

/// Milliseconds since the Unix epoch: the scheduler's clock in the daemon.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Polls the scheduler until it has nothing more to say. Live and replay call this same
/// function at the same points, so replay runs the same placement passes.
pub(crate) fn drain(s: &mut Scheduler) -> (Vec<Action>, Vec<Event>) {
    let mut actions = Vec::new();
    let mut events = Vec::new();
    loop {
        let a = s.poll_action();
        let e = s.poll_event();
        if a.is_none() && e.is_none() {
            break;
        }
        actions.extend(a);
        events.extend(e);
    }
    (actions, events)
}

pub(crate) struct Control {
    pub(crate) s: Scheduler,
    store: Store,
    batch: u64,
    next_request: u64,
    next_host: u64,
    last_ms: u64,
    pub(crate) workers: Workers,
    feed: Arc<Feed>,
    templates: BTreeMap<String, KnownTemplate>,
    /// Hosts by id with their specs, for rebuilding drivers.
    hosts: BTreeMap<u64, WireHost>,
    /// Metrics and hooks, told of every committed event (set by `start`).
    /// What hears of committed work (metrics, hooks).
    pub(crate) observers: Vec<Box<dyn Observer>>,
    /// When each host last answered a probe that changed nothing (see `Msg::ProbeAnswered`).
    probe_answered: HashMap<u64, u64>,
    /// When each live VM was started on its host (went to `booting`), for telling a VM that
    /// vanished from one that a listing started before it existed. VMs from before a restart
    /// have none: they were there before any listing since.
    started_ms: HashMap<u64, u64>,
    /// VMs found on hosts that berth keeps instead of destroying, by VM number (see
    /// `judge_orphans`); persisted in the `orphans` table.
    kept: BTreeMap<u64, OrphanRow>,
    /// Orphans whose destroy is under way: a listing taken meanwhile still shows them.
    orphans_destroying: BTreeSet<u64>,
    /// The VMs that run in another's object on their host (handed-over warm VMs).
    objects: HostObjects,
    /// What this start does with VMs the journal cannot account for (set by `start`).
    pub(crate) orphan_start: OrphanStart,
    /// `recovery.orphans_destroy_max` (set by `start`).
    pub(crate) orphans_destroy_max: usize,
    /// The database was lost and this start began a new journal (set by `start`): audited.
    pub(crate) database_lost: bool,
    /// The database's disk (set by `start`): writes refused while it is short of room.
    pub(crate) disk: DiskWatch,
    /// A batch applied in memory that could not be written yet, with what waits for it.
    unwritten: Option<Unwritten>,
    /// `recovery.snapshot_every_inputs` (set by `start`; 0: never).
    pub(crate) snapshot_every_inputs: u64,
    /// Inputs journaled since the newest snapshot.
    inputs_since_snapshot: u64,
    /// Submits journaled so far (the whole journal's), kept in each snapshot.
    submits: u64,
    /// This daemon's right to act (the leader lease; always open on SQLite; set by `start`).
    pub(crate) gate: crate::lease::Gate,
    /// How long the jobs that finished since the replay's start ran against their expected
    /// run time, for the estimated starts and the drain forecast (`berth_sim::runtimes`).
    run_times: RunTimes,
}

/// What the control loop keeps beside the scheduler that replay rebuilds from the journal,
/// written with each snapshot.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotSide {
    templates: Vec<WireTemplate>,
    hosts: Vec<WireHost>,
}

/// Where replay starts: a fresh scheduler, or the newest snapshot.
/// Whom a replay is for: a leader about to act, or a follower's replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replay {
    Leader,
    Replica,
}

struct ReplayStart {
    s: Scheduler,
    templates: BTreeMap<String, KnownTemplate>,
    hosts: BTreeMap<u64, WireHost>,
    /// The last batch the snapshot covers (0: none).
    after_batch: u64,
    last_ms: u64,
    submits: u64,
}

impl ReplayStart {
    fn fresh(config: berth_sched::Config) -> ReplayStart {
        ReplayStart {
            s: Scheduler::new(config),
            templates: BTreeMap::new(),
            hosts: BTreeMap::new(),
            after_batch: 0,
            last_ms: 0,
            submits: 0,
        }
    }

    /// The newest snapshot, restored; `None` when there is none, or when it cannot be restored
    /// (damaged, another format or configuration), which is logged: the whole journal is then
    /// replayed, which gives the same state at a higher cost.
    fn from_snapshot(
        store: &mut Store,
        config: &berth_sched::Config,
    ) -> Result<Option<ReplayStart>, DaemonError> {
        let Some(row) = store.latest_snapshot()? else {
            return Ok(None);
        };
        let restored = Scheduler::restore(config.clone(), &row.state)
            .map_err(|e| e.to_string())
            .and_then(|s| {
                let side: SnapshotSide =
                    serde_json::from_str(&row.side).map_err(|e| format!("side tables: {e}"))?;
                let mut templates = BTreeMap::new();
                for t in &side.templates {
                    let known = KnownTemplate::from_wire(t)
                        .map_err(|e| format!("template {}: {}", t.name, e.message))?;
                    templates.insert(t.name.clone(), known);
                }
                let hosts = side.hosts.into_iter().map(|h| (h.id, h)).collect();
                Ok((s, templates, hosts))
            });
        match restored {
            Ok((s, templates, hosts)) => Ok(Some(ReplayStart {
                s,
                templates,
                hosts,
                after_batch: row.batch,
                last_ms: row.at_ms,
                submits: row.submits,
            })),
            Err(error) => {
                tracing::error!(
                    batch = row.batch,
                    %error,
                    "the newest snapshot cannot be restored: replaying the whole journal"
                );
                Ok(None)
            }
        }
    }
}

/// How many submits one batch's inputs hold.
fn count_submits_of(inputs: &[WireInput]) -> u64 {
    inputs
        .iter()
        .filter(|i| matches!(i, WireInput::Submit { .. }))
        .count() as u64
}

/// How many submits the batches hold.
fn count_submits(batches: &[(u64, u64, Vec<WireInput>)]) -> u64 {
    batches
        .iter()
        .map(|(_, _, inputs)| count_submits_of(inputs))
        .sum()
}

/// What an input the scheduler took answers once its batch is written.
#[derive(Debug)]
pub(crate) struct Applied {
    /// The number it was given or names (a request's, a host's, a VM's).
    pub(crate) id: u64,
    /// A submit's request as the batch wrote it (`store::submitted_rows`), so that its caller
    /// need not read it back; `None` for every other input.
    pub(crate) request: Option<RequestRow>,
}

/// An API caller waiting for its input's outcome, and that outcome.
struct Reply {
    to: oneshot::Sender<Result<Applied, Refusal>>,
    result: Result<u64, Refusal>,
    /// The input was a submit: the answer carries the request's row.
    submit: bool,
}

/// What a batch does once it is on disk: nothing of it happens before.
struct Effects {
    commit: Commit,
    actions: Vec<Action>,
    replies: Vec<Reply>,
    queries: Vec<(Query, oneshot::Sender<Answer>)>,
    orphan_destroys: Vec<(HostId, u64)>,
}

/// A batch whose commit failed for the disk's sake: it is retried until it is written, and the
/// messages that arrive meanwhile wait behind it (API writes are refused with a 507 instead).
struct Unwritten {
    effects: Effects,
    held: Vec<Msg>,
}

/// A template as the daemon keeps it beside the scheduler: what placement needs, and what
/// only drivers need.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct KnownTemplate {
    pub(crate) template: Template,
    pub(crate) domain_type: Option<DomainType>,
    /// As journaled, for snapshots.
    pub(crate) wire: WireTemplate,
}

impl KnownTemplate {
    fn from_wire(t: &WireTemplate) -> Result<KnownTemplate, FieldError> {
        Ok(KnownTemplate {
            template: t.to_template()?,
            domain_type: t.domain_type()?,
            wire: t.clone(),
        })
    }
}

/// Applies one journaled input to the scheduler, keeping the daemon's side tables current
/// and learning from each finished job how long jobs run (`run_times`, for the estimates).
pub(crate) fn apply_journaled(
    s: &mut Scheduler,
    at_ms: u64,
    input: &WireInput,
    templates: &mut BTreeMap<String, KnownTemplate>,
    hosts: &mut BTreeMap<u64, WireHost>,
    run_times: &mut RunTimes,
) -> Result<(), Refusal> {
    let sched_input = input.to_input()?;
    let ran = match input {
        WireInput::JobFinished { vm, .. } => job_run(s, VmId(*vm), at_ms),
        _ => None,
    };
    s.handle(at_ms, sched_input)?;
    if let Some((ran_ms, expected_ms)) = ran {
        run_times.ended(ran_ms, expected_ms);
    }
    match input {
        WireInput::SetTemplate { template } => {
            if let Ok(t) = KnownTemplate::from_wire(template) {
                templates.insert(template.name.clone(), t);
            }
        }
        WireInput::AddHost { host } => {
            hosts.insert(host.id, host.clone());
        }
        WireInput::RemoveHost { host } => {
            hosts.remove(host);
        }
        _ => {}
    }
    Ok(())
}

/// Requests the journal submitted whose `requests` row is gone (deleted by hand, or a restore
/// of the wrong file), by number; replay fills in how each stands (`follow_lost_rows`). Empty
/// when the table has a row for every submit, which one count tells.
fn lost_request_rows(
    store: &mut Store,
    batches: &[(u64, u64, Vec<WireInput>)],
) -> Result<BTreeMap<u64, RepairedRequest>, DaemonError> {
    let submits = || {
        batches.iter().flat_map(|(_, at_ms, inputs)| {
            inputs.iter().filter_map(move |i| match i {
                WireInput::Submit { request } => Some((*at_ms, request)),
                _ => None,
            })
        })
    };
    let table = store.request_ids()?;
    if table.len() == submits().count() {
        return Ok(BTreeMap::new());
    }
    let table: BTreeSet<u64> = table.into_iter().collect();
    Ok(submits()
        .filter(|(_, r)| !table.contains(&r.id))
        .map(|(at_ms, r)| {
            let row = RepairedRequest {
                spec: r.clone(),
                state: berth_sched::RequestState::Waiting,
                cause: String::new(),
                submitted_ms: at_ms,
                updated_ms: at_ms,
            };
            (r.id, row)
        })
        .collect())
}

/// Brings the lost rows up to date with a replayed batch's request events.
fn follow_lost_rows(lost: &mut BTreeMap<u64, RepairedRequest>, events: &[Event]) {
    for event in events {
        if let Event::Request {
            at_ms,
            request,
            to,
            cause,
            ..
        } = event
            && let Some(row) = lost.get_mut(&request.0)
        {
            row.state = *to;
            row.cause = cause.to_string();
            row.updated_ms = *at_ms;
        }
    }
}

impl Control {
    /// Opens the store and brings the scheduler to the journal's end: from the newest
    /// snapshot, replaying only the batches after it, or from a fresh scheduler, replaying the
    /// whole journal (no snapshot, one that cannot be restored, or a `requests` table that lost
    /// rows, which only the whole journal can write again).
    pub(crate) fn recover(
        store: Store,
        config: berth_sched::Config,
        workers: Workers,
        feed: Arc<Feed>,
    ) -> Result<Control, DaemonError> {
        Control::replay(store, config, workers, feed, Replay::Leader)
    }

    /// A follower's replica of the leader's state: the newest snapshot and the journal after
    /// it, replayed as a start does, then kept up with [`catch_up`](Self::catch_up). It
    /// writes nothing and acts on nothing; it answers the reads of [`Query::replica_answers`].
    pub(crate) fn replica(
        store: Store,
        config: berth_sched::Config,
        workers: Workers,
        feed: Arc<Feed>,
    ) -> Result<Control, DaemonError> {
        Control::replay(store, config, workers, feed, Replay::Replica)
    }

    /// Applies the journal's batches written since the replica's last one.
    pub(crate) fn catch_up(&mut self) -> Result<(), DaemonError> {
        let batches = self.store.journal_after(self.batch)?;
        let Some((last, _, _)) = batches.last() else {
            return Ok(());
        };
        let last = *last;
        self.submits += count_submits(&batches);
        self.inputs_since_snapshot += batches.iter().map(|(_, _, i)| i.len() as u64).sum::<u64>();
        for (batch, at_ms, inputs) in batches {
            for input in &inputs {
                if let Err(e) = apply_journaled(
                    &mut self.s,
                    at_ms,
                    input,
                    &mut self.templates,
                    &mut self.hosts,
                    &mut self.run_times,
                ) {
                    tracing::warn!(batch, input = input.name(), error = %e.message, "journaled input refused by the replica");
                }
            }
            drain(&mut self.s);
            self.last_ms = self.last_ms.max(at_ms);
        }
        self.batch = last;
        // The kept orphans are counted in the status (a short table). The host objects are
        // not read again: only what a replica does not answer (a VM's console) needs them.
        self.kept = self
            .store
            .orphans()?
            .into_iter()
            .map(|o| (o.vm, o))
            .collect();
        Ok(())
    }

    /// Whether this replica can become the leader's loop (see [`lead`](Self::lead)): caught up
    /// with the journal, which is whole once this daemon holds the lease (the fence refuses the
    /// old leader's commits), and the `requests` table holds a row for every journaled submit.
    /// When it lost rows, only a whole replay writes them again.
    pub(crate) fn can_lead(&mut self) -> Result<bool, DaemonError> {
        self.catch_up()?;
        let rows = self.store.n_requests()?;
        if rows != self.submits {
            tracing::warn!(
                rows,
                submits = self.submits,
                "the requests table and the journal's submits differ: replaying the whole journal"
            );
            return Ok(false);
        }
        Ok(true)
    }

    /// The leader's loop from this replica (see [`can_lead`](Self::can_lead)): it takes the
    /// leader's store (fenced) and workers, and what a leader's replay reads besides the
    /// scheduler: the last ids, the host objects and the kept orphans.
    pub(crate) fn lead(mut self, store: Store, workers: Workers) -> Result<Control, DaemonError> {
        let replica_store = std::mem::replace(&mut self.store, store);
        crate::db::blocking(|| drop(replica_store));
        self.workers = workers;
        let table_vm = self.store.last_vm()?;
        let next_vm = self.s.next_vm_id().0;
        if table_vm >= next_vm {
            return Err(DaemonError::JournalBehindState { table_vm, next_vm });
        }
        let (batch, last_request, last_host) = self.store.last_ids()?;
        self.batch = self.batch.max(batch);
        self.next_request = last_request + 1;
        self.next_host = last_host + 1;
        self.kept = self
            .store
            .orphans()?
            .into_iter()
            .map(|o| (o.vm, o))
            .collect();
        self.objects = HostObjects::new(self.store.host_objects()?);
        Ok(self)
    }

    fn replay(
        mut store: Store,
        config: berth_sched::Config,
        workers: Workers,
        feed: Arc<Feed>,
        mode: Replay,
    ) -> Result<Control, DaemonError> {
        let mut start = ReplayStart::from_snapshot(&mut store, &config)?;
        let mut batches = store.journal_after(start.as_ref().map_or(0, |s| s.after_batch))?;
        if let Some(st) = &start {
            let submits = st.submits + count_submits(&batches);
            let rows = store.n_requests()?;
            if rows != submits {
                tracing::warn!(
                    rows,
                    submits,
                    "the requests table and the journal's submits differ: replaying the whole journal"
                );
                start = None;
                batches = store.journal()?;
            }
        }
        let from_snapshot = start.as_ref().map(|s| s.after_batch);
        // The replica goes on from the last batch it replayed (the leader may have written
        // more since it read the journal).
        let replayed_batch = batches
            .last()
            .map_or(from_snapshot.unwrap_or(0), |(b, _, _)| *b);
        let ReplayStart {
            mut s,
            mut templates,
            mut hosts,
            after_batch: _,
            mut last_ms,
            submits,
        } = start.unwrap_or_else(|| ReplayStart::fresh(config));
        let submits = submits + count_submits(&batches);
        // From a snapshot the counts agreed (checked above): no row is lost. A replica
        // repairs nothing: that is the leader's to do.
        let mut lost = if from_snapshot.is_some() || mode == Replay::Replica {
            BTreeMap::new()
        } else {
            lost_request_rows(&mut store, &batches)?
        };
        let mut diverged = 0u64;
        let mut run_times = RunTimes::default();
        let n_batches = batches.len();
        let n_inputs: u64 = batches.iter().map(|(_, _, i)| i.len() as u64).sum();
        for (batch, at_ms, inputs) in batches {
            for input in &inputs {
                if let Err(e) = apply_journaled(
                    &mut s,
                    at_ms,
                    input,
                    &mut templates,
                    &mut hosts,
                    &mut run_times,
                ) {
                    diverged += 1;
                    tracing::warn!(batch, input = input.name(), error = %e.message, "journaled input refused on replay");
                }
            }
            let (_, events) = drain(&mut s);
            if !lost.is_empty() {
                follow_lost_rows(&mut lost, &events);
            }
            last_ms = last_ms.max(at_ms);
        }
        if diverged > 0 {
            tracing::error!(diverged, "replay refused inputs the live run accepted");
        }
        // A VM the state tables hold but the journal never created means journal rows are
        // gone: new VMs would take numbers that are in use. Say so rather than fail later on
        // a duplicate key.
        let table_vm = store.last_vm()?;
        let next_vm = s.next_vm_id().0;
        if table_vm >= next_vm && mode == Replay::Leader {
            return Err(DaemonError::JournalBehindState { table_vm, next_vm });
        }
        if !lost.is_empty() {
            let rows: Vec<RepairedRequest> = lost.into_values().collect();
            let ids: Vec<String> = rows
                .iter()
                .take(10)
                .map(|r| format!("r{}", r.spec.id))
                .collect();
            tracing::warn!(
                rows = rows.len(),
                first = %ids.join(" "),
                "the requests table lost rows the journal holds: written again from the journal"
            );
            store.repair_requests(&rows)?;
        }
        let (batch, last_request, last_host) = store.last_ids()?;
        let batch = match mode {
            Replay::Leader => batch,
            Replay::Replica => replayed_batch,
        };
        let kept = store.orphans()?.into_iter().map(|o| (o.vm, o)).collect();
        let objects = HostObjects::new(store.host_objects()?);
        tracing::info!(
            snapshot_batch = from_snapshot,
            batches = n_batches,
            requests = s.n_requests(),
            vms = s.n_vms(),
            "journal replayed"
        );
        Ok(Control {
            s,
            store,
            batch,
            next_request: last_request + 1,
            next_host: last_host + 1,
            last_ms,
            workers,
            feed,
            templates,
            hosts,
            observers: Vec::new(),
            probe_answered: HashMap::new(),
            started_ms: HashMap::new(),
            kept,
            orphans_destroying: BTreeSet::new(),
            objects,
            orphan_start: OrphanStart::default(),
            orphans_destroy_max: crate::config::RecoverySection::default().orphans_destroy_max,
            database_lost: false,
            disk: DiskWatch::new(std::path::Path::new("."), 0),
            unwritten: None,
            snapshot_every_inputs: crate::config::RecoverySection::default().snapshot_every_inputs,
            // A start that replayed a long tail takes a snapshot at once (`snapshot_if_due`).
            inputs_since_snapshot: n_inputs,
            submits,
            gate: crate::lease::Gate::sole(),
            run_times,
        })
    }

    fn now(&mut self) -> u64 {
        // Never backwards: the scheduler takes the latest time it has seen anyway, and the
        // journal should say so too.
        self.last_ms = self.last_ms.max(wall_ms());
        self.last_ms
    }

    /// Starts the drivers of every known host, then applies the configured templates and
    /// hosts that the journal does not hold yet.
    pub(crate) fn start_fleet(
        &mut self,
        templates: &[WireTemplate],
        hosts: &[WireHost],
    ) -> Result<(), DaemonError> {
        let known: Vec<WireHost> = self.hosts.values().cloned().collect();
        for h in &known {
            self.workers.add_host(h);
        }
        let mut msgs = Vec::new();
        for t in templates {
            let changed = match (self.templates.get(&t.name), KnownTemplate::from_wire(t)) {
                (Some(old), Ok(new)) => {
                    old.template != new.template || old.domain_type != new.domain_type
                }
                (None, _) | (_, Err(_)) => true,
            };
            if changed {
                msgs.push(Msg::internal(WireInput::SetTemplate {
                    template: t.clone(),
                }));
            }
        }
        for h in hosts {
            if !self.hosts.values().any(|k| k.name == h.name) {
                msgs.push(Msg::internal(WireInput::AddHost { host: h.clone() }));
            }
        }
        if !msgs.is_empty() {
            self.process(msgs)?;
        }
        Ok(())
    }

    /// Compares the recovered state with what each host runs, and repairs the difference:
    ///
    /// - a VM in `placed` or `provisioning` is provisioned again (drivers adopt a VM that
    ///   exists already), one in `releasing` is destroyed again (gone is fine);
    /// - a `booting`, `running` or `held` VM that exists is adopted (a booting one is waited
    ///   for again); one that is missing is lost (`VmLost`): the scheduler ends it as `lost`
    ///   and replaces it within its request's retry budget, without blaming the host;
    /// - a `berth-vm*` VM that berth does not record on that host is an orphan, judged by
    ///   `judge_orphans`; on a journal that never created a VM, any orphan stops the start
    ///   unless the operator chose what to do with them (`OrphanStart`).
    ///
    /// A host whose `list` fails is taken to run what is recorded: its in-flight calls are
    /// made again, nothing is declared missing, and its probes decide its fate.
    pub(crate) async fn reconcile(&mut self) -> Result<(), DaemonError> {
        let mut live_by_host: BTreeMap<HostId, Vec<(VmId, VmState, RequestId)>> = BTreeMap::new();
        for v in self.s.vms() {
            if let Some(h) = v.host {
                live_by_host
                    .entry(h)
                    .or_default()
                    .push((v.id, v.state, v.request));
            }
        }
        let host_ids: Vec<HostId> = self.s.hosts().map(|h| h.id).collect();
        let mut inputs = Vec::new();
        let (mut found, mut gone) = (Vec::new(), Vec::new());
        let (mut adopted, mut missing, mut resumed) = (0u64, 0u64, 0u64);
        for host in host_ids {
            let Some(driver) = self.workers.driver(host) else {
                continue;
            };
            // A host that cannot be listed keeps its VMs as recorded (its probes decide its
            // fate), but the calls in flight at the crash are still made again.
            let present: Option<BTreeSet<u64>> = match driver.list().await {
                Ok(listing) => Some(
                    listing
                        .iter()
                        .filter_map(|l| parse_vm_name(&l.name))
                        .map(|n| self.objects.owner(n))
                        .collect(),
                ),
                Err(e) => {
                    tracing::warn!(host = %host, error = %e, "cannot list vms: left as recorded");
                    None
                }
            };
            let recorded = live_by_host.remove(&host).unwrap_or_default();
            let ours: BTreeSet<u64> = recorded
                .iter()
                .filter(|(_, state, _)| *state != VmState::Queued)
                .map(|(vm, _, _)| vm.0)
                .collect();
            if let Some(present) = &present {
                let (f, g) = self.orphans_in_listing(host, present, &ours);
                found.extend(f.into_iter().map(|n| (host, n)));
                gone.extend(g);
            }
            for (vm, state, request) in recorded {
                let here = present.as_ref().is_none_or(|p| p.contains(&vm.0));
                match state {
                    VmState::Placed | VmState::Provisioning => {
                        resumed += 1;
                        match self.recipe(vm, request) {
                            Some(recipe) => {
                                let name = recipe.name.clone();
                                self.workers.send(vm, name, host, VmOp::Provision(recipe));
                            }
                            None => {
                                tracing::error!(vm = %vm_name(vm.0), host = %host, "no template to provision the vm again");
                            }
                        }
                    }
                    VmState::Booting if here => {
                        resumed += 1;
                        // A VM that took a warm VM's object is booted already: its handover
                        // is confirmed again.
                        let op = if self.objects.name(vm.0) == vm_name(vm.0) {
                            VmOp::Boot
                        } else {
                            VmOp::Handover
                        };
                        let name = self.objects.name(vm.0);
                        self.workers.send(vm, name, host, op);
                    }
                    VmState::Running | VmState::Held if here => adopted += 1,
                    VmState::Booting | VmState::Running | VmState::Held => {
                        missing += 1;
                        tracing::warn!(vm = %vm_name(vm.0), host = %host, state = state.name(), "vm missing from its host: lost");
                        inputs.push(WireInput::VmLost { vm: vm.0 });
                    }
                    VmState::Releasing => {
                        resumed += 1;
                        let name = self.objects.name(vm.0);
                        self.workers.send(vm, name, host, VmOp::Destroy);
                    }
                    _ => {}
                }
            }
        }
        tracing::info!(
            adopted,
            orphans = found.len(),
            missing,
            resumed,
            "reconciled with the hosts"
        );
        if self.orphan_start == OrphanStart::Refuse
            && self.s.next_vm_id() == VmId(1)
            && !found.is_empty()
        {
            let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
            for (h, _) in &found {
                *per_host.entry(self.host_name(*h)).or_default() += 1;
            }
            let hosts: Vec<String> = per_host.iter().map(|(h, n)| format!("{h}: {n}")).collect();
            return Err(DaemonError::UnaccountedVms {
                count: found.len(),
                hosts: hosts.join(", "),
            });
        }
        let mut msgs: Vec<Msg> = inputs.into_iter().map(Msg::internal).collect();
        if self.database_lost {
            msgs.push(Msg::Audit(AuditRow {
                at_ms: self.now(),
                who: format!("berth serve {}", self.orphan_start.flag()),
                role: "daemon".into(),
                action: "database_recreated".into(),
                target: String::new(),
                outcome: "the database was missing or empty; a new journal began".into(),
            }));
        }
        msgs.push(Msg::Orphans {
            found,
            gone,
            policy: self.orphan_start,
        });
        self.process(msgs)?;
        Ok(())
    }

    fn host_name(&self, host: HostId) -> String {
        self.hosts
            .get(&host.0)
            .map_or_else(|| host.to_string(), |h| h.name.clone())
    }

    /// From one host's listing: the `berth-vm*` VMs there that are neither `ours` (recorded on
    /// that host) nor kept already, and the kept orphans of that host that are gone from it.
    fn orphans_in_listing(
        &self,
        host: HostId,
        listed: &BTreeSet<u64>,
        ours: &BTreeSet<u64>,
    ) -> (Vec<u64>, Vec<u64>) {
        let name = self.host_name(host);
        let found = listed
            .iter()
            .filter(|n| {
                !ours.contains(n)
                    && !self.kept.contains_key(n)
                    && !self.orphans_destroying.contains(n)
            })
            .copied()
            .collect();
        let gone = self
            .kept
            .values()
            .filter(|o| o.host == name && !listed.contains(&o.vm))
            .map(|o| o.vm)
            .collect();
        (found, gone)
    }

    /// Decides what becomes of orphans: VMs on hosts that the scheduler does not have there.
    /// Returns those to destroy once the batch is committed; the rest are kept, recorded and
    /// reported, never destroyed without an operator. Under `OrphanStart::Refuse` (the rule
    /// at every listing):
    ///
    /// - a VM this journal created (its number is below the next VM id) and ended is a destroy
    ///   that failed while its host was away: destroyed, as long as no more than
    ///   `orphans_destroy_max` turn up at once; past that, something else is wrong (a database
    ///   restored from an old backup?) and all of them are kept;
    /// - a VM this journal never created (another berth's, or from a lost database) is kept.
    ///
    /// Either way new VMs are numbered past every orphan, so none takes an orphan's name.
    fn judge_orphans(
        &mut self,
        now: u64,
        found: Vec<(HostId, u64)>,
        policy: OrphanStart,
        commit: &mut Commit,
    ) -> Vec<(HostId, u64)> {
        if found.is_empty() {
            return Vec::new();
        }
        let next = self.s.next_vm_id().0;
        let mut destroy: Vec<(HostId, u64)> = Vec::new();
        // With why each is kept.
        let mut keep: Vec<(HostId, u64, String)> = Vec::new();
        let who = match policy {
            OrphanStart::Refuse => "berth".to_owned(),
            p => format!("berth serve {}", p.flag()),
        };
        match policy {
            OrphanStart::Destroy => destroy = found.clone(),
            OrphanStart::Adopt => {
                keep = found
                    .iter()
                    .map(|&(h, n)| (h, n, "kept at start (--adopt-orphans)".to_owned()))
                    .collect();
            }
            OrphanStart::Refuse => {
                let (ours, foreign): (Vec<_>, Vec<_>) = found.iter().partition(|(_, n)| *n < next);
                keep.extend(
                    foreign
                        .into_iter()
                        .map(|(h, n)| (h, n, "not created by this journal".to_owned())),
                );
                if ours.len() <= self.orphans_destroy_max {
                    destroy = ours;
                } else {
                    let reason = format!(
                        "{} orphans found at once, more than recovery.orphans_destroy_max ({})",
                        ours.len(),
                        self.orphans_destroy_max
                    );
                    keep.extend(ours.into_iter().map(|(h, n)| (h, n, reason.clone())));
                }
            }
        }
        if let Some(&(_, last)) = found.iter().max_by_key(|(_, n)| *n)
            && last >= next
        {
            let _ = self.apply(now, WireInput::ReserveVmIds { vm: last }, commit);
        }
        for (host, n, reason) in keep {
            let row = OrphanRow {
                vm: n,
                name: vm_name(n),
                host: self.host_name(host),
                found_ms: now,
                reason,
            };
            tracing::warn!(vm = %row.name, host = %row.host, reason = %row.reason, "orphan kept");
            commit.audits.push(AuditRow {
                at_ms: now,
                who: who.clone(),
                role: "daemon".into(),
                action: "orphan_keep".into(),
                target: format!("{} on {}", row.name, row.host),
                outcome: row.reason.clone(),
            });
            commit.orphans_kept.push(row.clone());
            self.kept.insert(n, row);
        }
        for &(host, n) in &destroy {
            tracing::info!(vm = %vm_name(n), host = %host, "orphan destroyed");
            commit.audits.push(AuditRow {
                at_ms: now,
                who: who.clone(),
                role: "daemon".into(),
                action: "orphan_destroy".into(),
                target: format!("{} on {}", vm_name(n), self.host_name(host)),
                outcome: "ok".into(),
            });
        }
        destroy
    }

    /// Forgets kept orphans that are gone from their hosts.
    fn forget_orphans(&mut self, gone: Vec<u64>, commit: &mut Commit) {
        for vm in gone {
            if let Some(o) = self.kept.remove(&vm) {
                tracing::info!(vm = %o.name, host = %o.host, "kept orphan gone from its host");
                commit.orphans_gone.push(vm);
            }
        }
    }

    /// An operator's destroy of a kept orphan: forgotten with this batch, destroyed after it.
    fn destroy_kept(&mut self, vm: u64) -> Result<(HostId, u64), Refusal> {
        let o = self.kept.get(&vm).ok_or_else(|| {
            Refusal::not_found("vm", format!("{} is not a kept orphan", vm_name(vm)))
        })?;
        let host = self
            .hosts
            .values()
            .find(|h| h.name == o.host)
            .map(|h| HostId(h.id))
            .ok_or_else(|| {
                Refusal::conflict(
                    None,
                    format!(
                        "{} is on host {}, which is no longer in the fleet",
                        o.name, o.host
                    ),
                )
            })?;
        self.kept.remove(&vm);
        Ok((host, vm))
    }

    /// Loses the booted VMs the scheduler has on `host` that a listing started at `started_ms`
    /// did not show. Only VMs started on the host before the listing began count: one started
    /// since may simply not have been there yet. `booting` VMs are left to their boot call,
    /// `releasing` ones to their destroy.
    fn lose_missing(
        &mut self,
        now: u64,
        host: HostId,
        listed: &[u64],
        started_ms: u64,
        commit: &mut Commit,
    ) {
        let Some(h) = self.s.host(host) else { return };
        let listed: BTreeSet<u64> = listed.iter().copied().collect();
        let missing: Vec<VmId> = h
            .vms
            .iter()
            .copied()
            .filter(|vm| !listed.contains(&vm.0))
            .filter(|vm| self.started_ms.get(&vm.0).is_none_or(|&t| t < started_ms))
            .filter(|&vm| {
                self.s
                    .vm(vm)
                    .is_some_and(|v| matches!(v.state, VmState::Running | VmState::Held))
            })
            .collect();
        for vm in missing {
            tracing::warn!(vm = %vm_name(vm.0), host = %host, "vm missing from its host: lost");
            let _ = self.apply(now, WireInput::VmLost { vm: vm.0 }, commit);
        }
    }

    /// What a placed VM is made from, to provision it again after a restart: its request's
    /// template and shape, or its pool's for a warm VM.
    fn recipe(&self, vm: VmId, request: RequestId) -> Option<VmRecipe> {
        if request == RequestId::WARM_POOL {
            let (_, spec) = self.s.warm_vm(vm)?;
            return Some(self.recipe_of(vm, spec));
        }
        let r = self.s.request(request)?;
        let known = self.templates.get(&*r.spec.template)?;
        let t = &known.template;
        Some(VmRecipe {
            name: vm_name(vm.0),
            template: t.name.to_string(),
            base_image: t.base_image.to_string(),
            guest_os: t.guest_os,
            shape: r.shape,
            domain_type: known.domain_type,
        })
    }

    fn recipe_of(&self, vm: VmId, spec: &berth_sched::VmSpec) -> VmRecipe {
        VmRecipe {
            name: vm_name(vm.0),
            template: spec.template.to_string(),
            base_image: spec.base_image.to_string(),
            guest_os: spec.guest_os,
            shape: spec.shape,
            domain_type: self
                .templates
                .get(&*spec.template)
                .and_then(|t| t.domain_type),
        }
    }

    /// Hands one of the scheduler's actions to its host's workers.
    fn dispatch(&mut self, action: Action) {
        match action {
            Action::Provision { vm, host, spec, .. } => {
                let recipe = self.recipe_of(vm, &spec);
                let name = recipe.name.clone();
                self.workers.send(vm, name, host, VmOp::Provision(recipe));
            }
            Action::Destroy { vm, host } => {
                let name = self.objects.name(vm.0);
                self.workers.send(vm, name, host, VmOp::Destroy);
            }
            // Only a scheduler configured with images asks for these. A pull is the driver's
            // (one per host and image; a create that needs the image waits for it there), and
            // so is an eviction, which the driver refuses while anything uses the image: the
            // scheduler's own model decides nothing on their outcome, so they are only logged.
            Action::PullImage { host, image, .. } => {
                self.image_op(host, image, ImageOp::Pull);
            }
            Action::EvictImage { host, image, .. } => {
                self.image_op(host, image, ImageOp::Evict);
            }
            // The request's VM takes the warm VM's object on the host as it is (a running
            // domain cannot be renamed): the books say so from this batch on (its commit
            // wrote the object's name), and the worker confirms that the object is there.
            Action::Handover { vm, warm, host, .. } => {
                let object = self.objects.name(warm.0);
                self.objects.remove(warm.0);
                self.objects.insert(vm.0, object.clone());
                self.workers.forget(warm, host);
                tracing::info!(vm = %vm_name(vm.0), warm = %vm_name(warm.0), object = %object, host = %host, "warm vm handed over");
                self.workers.send(vm, object, host, VmOp::Handover);
            }
        }
    }

    /// Runs a pull or an eviction the scheduler asked for on its host's driver, in the
    /// background.
    fn image_op(&self, host: HostId, image: std::sync::Arc<str>, op: ImageOp) {
        let Some(driver) = self.workers.driver(host) else {
            tracing::warn!(host = %host, image = %image, "no driver for an image action");
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(host = %host, image = %image, "no runtime for an image action");
            return;
        };
        runtime.spawn(async move {
            let result = match op {
                ImageOp::Pull => driver.pull_image(&image).await,
                ImageOp::Evict => driver.evict_image(&image).await,
            };
            match result {
                Ok(()) => tracing::info!(host = %host, image = %image, op = op.name(), "image action done"),
                Err(error) => {
                    tracing::warn!(host = %host, image = %image, op = op.name(), %error, "image action failed")
                }
            }
        });
    }

    /// Runs until `shutdown` fires or every sender is gone.
    /// The loop: messages from the API (`rx`) and reports from the workers (`reports`), in
    /// batches, until shutdown or until the API side is gone.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut reports: mpsc::Receiver<Report>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), DaemonError> {
        let gate = self.gate.clone();
        // What came while the lease lapsed, other than reads: processed once it is renewed.
        let mut held: Vec<Msg> = Vec::new();
        loop {
            if !gate.may_act() {
                tracing::warn!("the lease lapsed: nothing is acted on until it is renewed");
                loop {
                    tokio::select! {
                        renewed = gate.reopened() => if renewed {
                            break;
                        } else {
                            return Err(DaemonError::LeadershipLost);
                        },
                        _ = shutdown.changed() => return Ok(()),
                        // Reads are answered from memory meanwhile, as a follower's replica
                        // answers them.
                        m = rx.recv() => match m {
                            Some(Msg::Query { query, reply }) if query.replica_answers() => {
                                let _ = reply.send(self.answer(query));
                            }
                            Some(other) => held.push(other),
                            None => return Ok(()),
                        },
                    }
                }
                tracing::info!("the lease is renewed: acting again");
            }
            let mut sleep = self.s.poll_timeout().map(|t| {
                let now = wall_ms();
                Duration::from_millis(t.saturating_sub(now))
            });
            if self.unwritten.is_some() {
                // Retry the unwritten batch at least this often.
                let retry = Duration::from_millis(UNWRITTEN_RETRY_MS);
                sleep = Some(sleep.map_or(retry, |d| d.min(retry)));
            }
            if !held.is_empty() {
                sleep = Some(Duration::ZERO);
            }
            let first = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => Some(m),
                    None => return Ok(()),
                },
                // The workers hold a sender as long as the loop does: this never ends first.
                Some(r) = reports.recv() => Some(Msg::from(r)),
                () = async {
                    match sleep {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                } => None,
                _ = shutdown.changed() => return Ok(()),
                // The lease ran out (by this daemon's clock) or another daemon took it: no
                // more acting until it is renewed, or ever if another daemon took it.
                () = gate.closed() => continue,
            };
            let mut msgs: Vec<Msg> = std::mem::take(&mut held);
            msgs.extend(first);
            while msgs.len() < BATCH_MAX {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => match reports.try_recv() {
                        Ok(r) => msgs.push(Msg::from(r)),
                        Err(_) => break,
                    },
                }
            }
            if let Err(e) = self.process(msgs) {
                if e.is_leadership_lost() {
                    gate.give_up();
                }
                return Err(e);
            }
        }
    }

    /// One batch: apply, poll, commit, then act. A commit that fails for the disk's sake
    /// (full, failing) is kept with its effects and retried (see `Unwritten`); any other
    /// failed commit is fatal: the scheduler has moved on in memory, and only a restart
    /// (which replays the journal) brings the two back together.
    pub(crate) fn process(&mut self, msgs: Vec<Msg>) -> Result<(), DaemonError> {
        if self.unwritten.is_some() {
            self.hold(msgs);
            return self.retry_unwritten();
        }
        let refused = self.refuse_writes_if_short();
        let now = self.now();
        let mut commit = Commit {
            batch: self.batch + 1,
            at_ms: now,
            ..Commit::default()
        };
        let mut replies = Vec::new();
        let mut queries = Vec::new();
        let mut orphan_destroys = Vec::new();
        if self.s.poll_timeout().is_some_and(|t| t <= now) {
            let _ = self.apply(now, WireInput::Tick, &mut commit);
        }
        for m in msgs {
            match m {
                // Short of room: an API write is refused before it is applied.
                Msg::Apply {
                    reply: Some(reply), ..
                }
                | Msg::DestroyOrphan { reply, .. }
                    if let Some(e) = &refused =>
                {
                    let _ = reply.send(Err(e.clone()));
                }
                Msg::Apply {
                    input,
                    actor,
                    reply,
                } => {
                    let action = input.name();
                    let target = target_of(&input);
                    let submit = matches!(input, WireInput::Submit { .. });
                    let internal = actor.is_none() && reply.is_none();
                    let result = self.apply(now, input, &mut commit);
                    if let Err(e) = &result
                        && internal
                    {
                        tracing::debug!(input = action, error = %e.message, "input refused");
                    }
                    if let Some(actor) = actor {
                        commit.audits.push(AuditRow {
                            at_ms: now,
                            who: actor.who,
                            role: actor.role.name().to_owned(),
                            action: action.to_owned(),
                            target: match &result {
                                Ok(id) if target.is_empty() => id.to_string(),
                                _ => target,
                            },
                            outcome: match &result {
                                Ok(_) => "ok".to_owned(),
                                Err(e) => format!("refused: {}", e.message),
                            },
                        });
                    }
                    if let Some(to) = reply {
                        replies.push(Reply { to, result, submit });
                    }
                }
                Msg::Query { query, reply } => queries.push((query, reply)),
                Msg::Listed {
                    host,
                    vms,
                    started_ms,
                } => {
                    let vms: Vec<u64> = vms.into_iter().map(|n| self.objects.owner(n)).collect();
                    self.lose_missing(now, host, &vms, started_ms, &mut commit);
                    let listed: BTreeSet<u64> = vms.iter().copied().collect();
                    let ours: BTreeSet<u64> = self
                        .s
                        .host(host)
                        .map(|h| h.vms.iter().map(|v| v.0).collect())
                        .unwrap_or_default();
                    let (found, gone) = self.orphans_in_listing(host, &listed, &ours);
                    self.forget_orphans(gone, &mut commit);
                    let found = found.into_iter().map(|n| (host, n)).collect();
                    orphan_destroys.extend(self.judge_orphans(
                        now,
                        found,
                        OrphanStart::Refuse,
                        &mut commit,
                    ));
                }
                Msg::Orphans {
                    found,
                    gone,
                    policy,
                } => {
                    self.forget_orphans(gone, &mut commit);
                    orphan_destroys.extend(self.judge_orphans(now, found, policy, &mut commit));
                }
                Msg::OrphanDestroyDone { vm } => {
                    self.orphans_destroying.remove(&vm);
                }
                Msg::DestroyOrphan { vm, actor, reply } => {
                    let result = self.destroy_kept(vm);
                    commit.audits.push(AuditRow {
                        at_ms: now,
                        who: actor.who,
                        role: actor.role.name().to_owned(),
                        action: "orphan_destroy".into(),
                        target: vm_name(vm),
                        outcome: match &result {
                            Ok(_) => "ok".to_owned(),
                            Err(e) => format!("refused: {}", e.message),
                        },
                    });
                    if let Ok(d) = &result {
                        commit.orphans_gone.push(vm);
                        orphan_destroys.push(*d);
                    }
                    replies.push(Reply {
                        to: reply,
                        result: result.map(|(_, vm)| vm),
                        submit: false,
                    });
                }
                Msg::Audit(row) => commit.audits.push(row),
                Msg::ProbeAnswered { host } => {
                    self.probe_answered.insert(host.0, now);
                }
            }
        }
        let (actions, events) = drain(&mut self.s);
        commit.events = events;
        for event in &commit.events {
            let Event::Vm {
                vm,
                request,
                from,
                to,
                ..
            } = event
            else {
                continue;
            };
            match from {
                // A new VM's row names its request's template (a warm VM's, its pool's: below).
                None if *request != RequestId::WARM_POOL
                    && !commit.request_templates.contains_key(&request.0) =>
                {
                    if let Some(r) = self.s.request(*request) {
                        commit
                            .request_templates
                            .insert(request.0, r.spec.template.to_string());
                    }
                }
                // The books of which object each VM runs in change with the batch (see `act`).
                Some(_) if *to == VmState::Queued && self.objects.name(vm.0) != vm_name(vm.0) => {
                    commit.host_objects.push((vm.0, None));
                }
                _ => {}
            }
        }
        for action in &actions {
            match action {
                Action::Handover { vm, warm, .. } => {
                    commit
                        .host_objects
                        .push((vm.0, Some(self.objects.name(warm.0))));
                }
                Action::Provision {
                    vm, request, spec, ..
                } if *request == RequestId::WARM_POOL => {
                    commit
                        .warm_templates
                        .push((vm.0, spec.template.to_string()));
                }
                _ => {}
            }
        }
        for o in &self.observers {
            o.hook_jobs(&self.s, commit.batch, &commit.events, &mut commit.hook_jobs);
        }
        let mut effects = Effects {
            commit,
            actions,
            replies,
            queries,
            orphan_destroys,
        };
        match self.write(&effects.commit) {
            // Written under this daemon's epoch, but its lease may have run out since: the next
            // leader replays the batch and reconciles with the hosts, as after a crash here.
            Ok(()) if !self.gate.may_act() => Err(DaemonError::LeadershipLost),
            Ok(()) => {
                self.act(effects);
                Ok(())
            }
            Err(e) if crate::disk::is_disk_trouble(&e) => {
                tracing::error!(error = %e, "the batch cannot be written: writes wait until it can be");
                self.disk.failing = Some(e.to_string());
                let queries = std::mem::take(&mut effects.queries);
                self.unwritten = Some(Unwritten {
                    effects,
                    held: Vec::new(),
                });
                self.note_health();
                // Reads are answered from memory while the batch waits, as `hold` answers
                // those that come later: a read that came in this batch must not wait for the
                // disk (its caller may be the one who would free it).
                for (query, reply) in queries {
                    let _ = reply.send(self.answer(query));
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Writes a batch's commit, if it holds anything.
    fn write(&mut self, commit: &Commit) -> Result<(), DaemonError> {
        if commit.inputs.is_empty()
            && commit.audits.is_empty()
            && commit.orphans_kept.is_empty()
            && commit.orphans_gone.is_empty()
        {
            return Ok(());
        }
        // The commit waits for the disk; on a multi-threaded runtime, let the other workers
        // take this thread's tasks meanwhile.
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi {
            tokio::task::block_in_place(|| self.store.commit(commit))?;
        } else {
            self.store.commit(commit)?;
        }
        self.batch = commit.batch;
        self.submits += count_submits_of(&commit.inputs);
        self.inputs_since_snapshot += commit.inputs.len() as u64;
        if multi {
            tokio::task::block_in_place(|| self.snapshot_if_due());
        } else {
            self.snapshot_if_due();
        }
        Ok(())
    }

    /// Writes a snapshot once `snapshot_every_inputs` inputs were journaled (or replayed at the
    /// start) since the last. Only between batches, with the scheduler polled empty.
    pub(crate) fn snapshot_if_due(&mut self) {
        if self.snapshot_every_inputs == 0
            || self.inputs_since_snapshot < self.snapshot_every_inputs
        {
            return;
        }
        self.inputs_since_snapshot = 0;
        if let Err(error) = self.write_snapshot(self.last_ms) {
            // The journal is the truth: without this snapshot a start replays more of it.
            tracing::error!(batch = self.batch, %error, "writing a snapshot failed");
        }
    }

    /// Writes a snapshot of the state after the batch just committed. The scheduler is polled
    /// empty then (`process` drains it before the commit), as a snapshot needs.
    fn write_snapshot(&mut self, at_ms: u64) -> Result<(), DaemonError> {
        let state = self.s.snapshot().map_err(|e| DaemonError::Snapshot {
            message: e.to_string(),
        })?;
        let side = SnapshotSide {
            templates: self.templates.values().map(|t| t.wire.clone()).collect(),
            hosts: self.hosts.values().cloned().collect(),
        };
        let side = serde_json::to_string(&side).map_err(|e| DaemonError::Snapshot {
            message: e.to_string(),
        })?;
        let row = crate::store::SnapshotRow {
            batch: self.batch,
            at_ms,
            submits: self.submits,
            state,
            side,
        };
        self.store.write_snapshot(&row)?;
        tracing::debug!(
            batch = row.batch,
            bytes = row.state.len(),
            "snapshot written"
        );
        Ok(())
    }

    /// While a batch is unwritten: reads are answered from memory, API writes are refused,
    /// and everything else waits behind the batch.
    fn hold(&mut self, msgs: Vec<Msg>) {
        let (refused, _) = self.disk.check();
        let refused = Refusal::unwritable(
            refused.unwrap_or_else(|| "the database cannot be written".to_owned()),
        );
        let mut held = Vec::new();
        for m in msgs {
            match m {
                Msg::Query { query, reply } => {
                    let _ = reply.send(self.answer(query));
                }
                Msg::Apply {
                    reply: Some(reply), ..
                }
                | Msg::DestroyOrphan { reply, .. } => {
                    let _ = reply.send(Err(refused.clone()));
                }
                other => held.push(other),
            }
        }
        if let Some(u) = &mut self.unwritten {
            u.held.extend(held);
        }
    }

    /// Tries the unwritten batch again; once it is written, its effects happen and the
    /// messages held behind it are processed.
    fn retry_unwritten(&mut self) -> Result<(), DaemonError> {
        let Some(u) = self.unwritten.take() else {
            return Ok(());
        };
        match self.write(&u.effects.commit) {
            Ok(()) if !self.gate.may_act() => Err(DaemonError::LeadershipLost),
            Ok(()) => {
                tracing::info!(
                    held = u.held.len(),
                    "the unwritten batch is written: writes resume"
                );
                self.disk.failing = None;
                self.disk.remeasure();
                self.note_health();
                self.act(u.effects);
                if u.held.is_empty() {
                    Ok(())
                } else {
                    self.process(u.held)
                }
            }
            Err(e) if crate::disk::is_disk_trouble(&e) => {
                self.disk.failing = Some(e.to_string());
                self.unwritten = Some(u);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether API writes are refused now (short of room), noting a change.
    fn refuse_writes_if_short(&mut self) -> Option<Refusal> {
        let (refused, changed) = self.disk.check();
        if changed {
            self.announce_health();
        }
        refused.map(Refusal::unwritable)
    }

    /// Re-reads the disk's state and announces a change.
    fn note_health(&mut self) {
        let (_, changed) = self.disk.check();
        if changed {
            self.announce_health();
        }
    }

    /// Logs the disk's state and tells event-stream readers and the metrics.
    fn announce_health(&self) {
        let degraded = self.disk.health.degraded();
        match &degraded {
            Some(why) => tracing::error!(why = %why, "writes refused"),
            None => tracing::info!("writes taken again"),
        }
        for o in &self.observers {
            o.writable(degraded.is_none());
        }
        if self.feed.watched() {
            let event = berth_api::Event::Daemon(berth_api::DaemonEvent {
                at_ms: wall_ms(),
                writable: degraded.is_none(),
                why: degraded,
            });
            let text = serde_json::to_string(&event).unwrap_or_default();
            self.feed.publish(text.into());
        }
    }

    /// A written batch's effects: drivers, events, observers, answers.
    fn act(&mut self, effects: Effects) {
        let Effects {
            commit,
            actions,
            replies,
            queries,
            orphan_destroys,
        } = effects;
        for input in &commit.inputs {
            match input {
                WireInput::AddHost { host } => self.workers.add_host(host),
                WireInput::RemoveHost { host } => {
                    self.workers.remove_host(HostId(*host));
                    self.probe_answered.remove(host);
                }
                _ => {}
            }
        }
        for event in &commit.events {
            match event {
                Event::Host {
                    host,
                    to: Some(HostState::Unknown),
                    from: Some(_),
                    ..
                } => self.workers.kick(*host),
                Event::Host {
                    host,
                    to: Some(HostState::Ready),
                    from: Some(HostState::Error | HostState::Unknown),
                    ..
                } => self.workers.list_later(*host),
                Event::Vm {
                    vm,
                    to: VmState::Booting,
                    at_ms,
                    ..
                } => {
                    self.started_ms.insert(vm.0, *at_ms);
                }
                Event::Vm { vm, to, .. } if to.is_terminal() => {
                    self.started_ms.remove(&vm.0);
                    self.objects.remove(vm.0);
                }
                // Destroyed to be placed again: a warm VM's object it took is gone.
                Event::Vm {
                    vm,
                    to: VmState::Queued,
                    from: Some(_),
                    ..
                } => self.objects.remove(vm.0),
                _ => {}
            }
            if self.feed.watched() {
                let text = serde_json::to_string(&answers::event(&self.s, event));
                self.feed.publish(text.unwrap_or_default().into());
            }
            for o in &self.observers {
                o.event(&self.s, event);
            }
        }
        for action in actions {
            self.dispatch(action);
        }
        let mut rows = if replies.iter().any(|r| r.submit && r.result.is_ok()) {
            crate::store::submitted_rows(&commit)
        } else {
            HashMap::new()
        };
        for Reply { to, result, submit } in replies {
            let _ = to.send(result.map(|id| Applied {
                id,
                request: if submit { rows.remove(&id) } else { None },
            }));
        }
        for (host, n) in orphan_destroys {
            self.orphans_destroying.insert(n);
            self.workers
                .send(VmId(n), vm_name(n), host, VmOp::DestroyOrphan);
        }
        for (query, reply) in queries {
            let _ = reply.send(self.answer(query));
        }
    }

    /// Assigns ids, applies the input, and journals it if the scheduler took it.
    fn apply(
        &mut self,
        now: u64,
        mut input: WireInput,
        commit: &mut Commit,
    ) -> Result<u64, Refusal> {
        let id = match &mut input {
            WireInput::Submit { request } => {
                let t = self
                    .templates
                    .get(&request.template)
                    .map(|k| &k.template)
                    .ok_or_else(|| {
                        Refusal::invalid(
                            "template",
                            format!("unknown template `{}`", request.template),
                        )
                    })?;
                // A request that gives only one of vcpus and memory takes the other from
                // its template, so that the journal holds the resolved shape.
                if request.vcpus.is_some() || request.memory_mib.is_some() {
                    request.vcpus.get_or_insert(t.default_shape.vcpus);
                    request.memory_mib.get_or_insert(t.default_shape.memory_mib);
                }
                request.id = self.next_request;
                request.id
            }
            WireInput::AddHost { host } => {
                host.id = self.next_host;
                host.id
            }
            WireInput::Cancel { request } => *request,
            WireInput::Release { vm }
            | WireInput::Extend { vm, .. }
            | WireInput::JobFinished { vm, .. } => *vm,
            WireInput::Drain { host }
            | WireInput::Resume { host }
            | WireInput::Offline { host }
            | WireInput::RemoveHost { host } => *host,
            _ => 0,
        };
        apply_journaled(
            &mut self.s,
            now,
            &input,
            &mut self.templates,
            &mut self.hosts,
            &mut self.run_times,
        )?;
        match &input {
            WireInput::Submit { .. } => self.next_request += 1,
            WireInput::AddHost { .. } => self.next_host += 1,
            _ => {}
        }
        commit.inputs.push(input);
        Ok(id)
    }

    /// See [`Query::ImageHosts`].
    fn image_hosts(&self) -> Vec<ImageHost> {
        self.s
            .hosts()
            .map(|h| {
                let mut vms_by_image: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for &vm in h.vms {
                    // A warm VM's image is its pool's: no request names it.
                    let image = self
                        .s
                        .vm(vm)
                        .and_then(|v| self.s.request(v.request))
                        .and_then(|r| self.templates.get(&*r.spec.template))
                        .map(|t| t.template.base_image.to_string())
                        .or_else(|| {
                            self.s
                                .warm_vm(vm)
                                .map(|(_, spec)| spec.base_image.to_string())
                        });
                    if let Some(image) = image {
                        vms_by_image
                            .entry(image)
                            .or_default()
                            .push(self.objects.name(vm.0));
                    }
                }
                ImageHost {
                    id: h.id.0,
                    name: h.name.to_owned(),
                    kind: h.driver.name().to_owned(),
                    state: answers::host_state(h.state),
                    driver: self.workers.driver(h.id),
                    images: h.images.iter().map(|&i| i.to_owned()).collect(),
                    vms_by_image,
                }
            })
            .collect()
    }

    pub(crate) fn answer(&self, query: Query) -> Answer {
        match query {
            Query::Hosts => Answer::Hosts(
                self.s
                    .hosts()
                    .map(|h| {
                        answers::host_row(&self.s, &h, self.probe_answered.get(&h.id.0).copied())
                    })
                    .collect(),
            ),
            Query::HostId(name) => Answer::HostId(self.s.host_by_name(&name).map(|h| h.id.0)),
            Query::Queue(n) => Answer::Queue(
                self.s
                    .queue()
                    .into_iter()
                    .take(n)
                    .map(|id| (id.0, answers::why(&self.s, id)))
                    .collect(),
            ),
            Query::Why(id) => Answer::Why(answers::why(&self.s, RequestId(id)).map(Box::new)),
            Query::Status => {
                let mut status = LiveStatus {
                    live_requests: self.s.n_requests() as u64,
                    queue_len: self.s.queue_len() as u64,
                    journal_batches: self.batch,
                    orphans_kept: self.kept.len() as u64,
                    now_ms: self.s.now_ms(),
                    ..LiveStatus::default()
                };
                for h in self.s.hosts() {
                    *status
                        .hosts
                        .entry(answers::host_state(h.state))
                        .or_default() += 1;
                }
                for v in self.s.vms() {
                    *status.vms.entry(answers::vm_state(v.state)).or_default() += 1;
                }
                Answer::Status(status)
            }
            Query::Scheduler { waiting_max } if self.s.queue_len() > waiting_max => {
                Answer::TooManyWaiting(self.s.queue_len())
            }
            Query::Scheduler { .. } => {
                Answer::Scheduler(Box::new(self.s.clone()), self.run_times.model())
            }
            Query::Accounts => Answer::Accounts(answers::accounts(&self.s, wall_ms())),
            Query::SampleMetrics => {
                for o in &self.observers {
                    o.sample(&self.s, wall_ms());
                }
                Answer::Sampled
            }
            Query::Holds(ids) => Answer::Holds(
                ids.into_iter()
                    .filter_map(|id| {
                        let v = self.s.vm(VmId(id))?;
                        let until = v.hold_until_ms?;
                        let owner = self.s.request(v.request)?.spec.hold_on_failure.as_ref()?;
                        Some((id, (owner.owner.clone(), until)))
                    })
                    .collect(),
            ),
            Query::ImageHosts => Answer::ImageHosts(self.image_hosts()),
            Query::Kick(id) => {
                self.workers.kick(HostId(id));
                Answer::Sampled
            }
            Query::VmDriver(id) => Answer::VmDriver(
                self.s
                    .vm(VmId(id))
                    .and_then(|v| v.host)
                    .and_then(|h| self.workers.driver(h).map(|d| (d, self.objects.name(id)))),
            ),
        }
    }
}

fn target_of(input: &WireInput) -> String {
    match input {
        WireInput::Submit { request } => format!("template {}", request.template),
        WireInput::AddHost { host } => format!("host {}", host.name),
        WireInput::Cancel { request } => format!("r{request}"),
        WireInput::Drain { host }
        | WireInput::Resume { host }
        | WireInput::Offline { host }
        | WireInput::RemoveHost { host } => format!("h{host}"),
        WireInput::Release { vm }
        | WireInput::Extend { vm, .. }
        | WireInput::JobFinished { vm, .. }
        | WireInput::VmLost { vm } => vm_name(*vm),
        _ => String::new(),
    }
}

/// What the scheduler asked a driver to do with a base image.
#[derive(Clone, Copy, Debug)]
enum ImageOp {
    Pull,
    Evict,
}

impl ImageOp {
    fn name(self) -> &'static str {
        match self {
            ImageOp::Pull => "pull",
            ImageOp::Evict => "evict",
        }
    }
}
