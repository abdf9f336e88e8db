//! The discrete-event engine: a time-ordered queue (sequence numbers break ties) that feeds the
//! real `Scheduler` and carries out its actions on simulated hosts.
//!
//! At each instant the engine first applies the completions due (jobs ending, VMs provisioned),
//! then the trace records due (arrivals, host events), then fires scheduler timers, and only
//! then polls: destroys finish before the placement pass, so the pass sees all the capacity and
//! all the arrivals of that instant at once, as batch simulators do.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::Instant;

use berth_latency::{Latency, Op, Profile};
use berth_sched::{
    Action, Cause, Config, DriverKind, Event, GuestOs, Hold, HostId, HostSpec, IdHasher, Input,
    InputError, Label, Policy, ProbeReport, RequestId, RequestSpec, RequestState, Scheduler, Shape,
    Template, VmId, VmState, Warm,
};
use berth_traces::{HostEvent, Outcome, Record, RecordBody, RequestRecord, TraceError};

use crate::SimError;
use crate::breakdown::{Breakdown, Holding, RequestRows};
use crate::eta::EtaSampler;
use crate::fleet::{Fleet, class_of};
use crate::plot::Timeline;
use crate::report::{Metrics, Report, RunInfo};
use crate::runtimes::RunModel;

type Map<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A run's pool whose template is this stands for every pool the fleet file names, at its
/// count (`warm = N` in a sweep's settings).
pub const WARM_EVERY_POOL: &str = "*";

/// Memory each VM of an auto-created template gets when its trace gives none (SWF and batch
/// traces say nothing of memory): 1 MiB, so that memory never binds.
pub const UNSPECIFIED_MEMORY_MIB: u64 = 1;

/// How a simulation runs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub policy: Policy,
    pub latency: Profile,
    pub seed: u64,
    /// Mean time between failures of each host; `None`: hosts never fail.
    pub mtbf_ms: Option<u64>,
    /// Mean time to repair a failed host.
    pub mttr_ms: u64,
    /// Mean time a developer takes to look at a held VM and release it.
    pub dev_delay_ms: u64,
    /// The scheduler's configuration; the policy above replaces its own.
    pub sched: Config,
    /// At most this many submits have their estimated start measured against their actual
    /// start (`Report::eta`); 0: none. It changes nothing the run decides.
    pub eta_samples_max: usize,
    /// The estimates of those starts foresee arrivals: the requests that arrived in the last
    /// this long are replayed, shifted forward by it, again and again up to the estimate's
    /// horizon (see `crate::eta::Replay`); `None`: no arrival is foreseen.
    pub eta_replay_window_ms: Option<u64>,
    /// How long running jobs run against their expected run time, for a run from a copied
    /// state ([`Simulation::from_scheduler`]); empty: each runs as expected.
    pub run_model: RunModel,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            policy: Policy::Easy,
            latency: Profile::Default,
            seed: 1,
            mtbf_ms: None,
            mttr_ms: 4 * 3_600_000,
            dev_delay_ms: 30 * 60_000,
            sched: Config::default(),
            eta_samples_max: ETA_SAMPLES_DEFAULT,
            eta_replay_window_ms: None,
            run_model: RunModel::default(),
        }
    }
}

/// Submits whose estimated start a run measures unless told otherwise (`SimConfig`).
pub const ETA_SAMPLES_DEFAULT: usize = 500;

/// What a run from a copied state foresees (see [`Simulation::from_scheduler`]): queue waits,
/// submit to placement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forecast {
    /// How far ahead it looked.
    pub horizon_ms: u64,
    /// The requests that were waiting at the start.
    pub waiting: WaitForecast,
    /// The requests that arrived during the run (see [`Simulation::forecast_with_arrivals`]).
    pub arrivals: WaitForecast,
}

/// The queue waits of one group of requests in a forecast, submit to placement; one still
/// waiting at the horizon counts as having waited until then (so a drain that strands
/// requests shows as a longer wait).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitForecast {
    pub n: u64,
    pub mean_wait_ms: u64,
    pub p95_wait_ms: u64,
    pub max_wait_ms: u64,
    pub still_waiting: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A dependent request whose dependencies have ended arrives.
    Arrive(u64),
    Provisioned(VmId),
    Booted(VmId),
    JobDone(VmId),
    Destroyed(VmId),
    HandedOver(VmId),
    DevRelease(VmId),
    HostFail(HostId),
    HostRepair(HostId),
}

#[derive(Clone, Debug)]
struct ReqInfo {
    duration_ms: u64,
    outcome: Outcome,
    submitted_ms: u64,
    placed: bool,
    rows: RequestRows,
    change: Option<String>,
}

#[derive(Clone, Debug)]
struct VmInfo {
    request: u64,
    vcpus: u32,
    driver: DriverKind,
    os: GuestOs,
    running_since_ms: Option<u64>,
    held_since_ms: Option<u64>,
    /// A warm VM (no request yet): since when it holds capacity idle.
    warm_since_ms: Option<u64>,
    /// What it holds of its host class, from placement to the end of its destroy.
    holding: Holding,
}

/// A request read from the trace that waits for earlier requests to end.
#[derive(Clone, Debug)]
struct Pending {
    record: RequestRecord,
    remaining: u32,
}

/// One simulation: a scheduler, simulated hosts, and the clock.
pub struct Simulation {
    sched: Scheduler,
    config: SimConfig,
    latency: Latency,
    faults: Latency,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    now_ms: u64,
    requests: Map<u64, ReqInfo>,
    vms: Map<VmId, VmInfo>,
    pending: Map<u64, Pending>,
    dependents: Map<u64, Vec<u64>>,
    host_ids: BTreeMap<String, HostId>,
    host_drivers: Map<HostId, DriverKind>,
    next_host: u64,
    templates: BTreeMap<String, GuestOs>,
    fleet_vcpus: u64,
    n_hosts: u64,
    metrics: Metrics,
    breakdown: Breakdown,
    /// Each host's class, an index into the breakdown's classes.
    host_class: Map<HostId, usize>,
    timeline: Timeline,
    /// Completions for VMs the scheduler no longer knows (lost meanwhile): ignored, counted.
    stale: u64,
    /// During a forecast: each request's wait, by id, as it is placed.
    placed_waits: Option<BTreeMap<u64, u64>>,
    /// During a start estimate: the requests not yet placed among those watched, and when
    /// each watched one was placed (see [`Simulation::run_to_starts`]).
    watch: Option<(BTreeSet<u64>, BTreeMap<u64, u64>)>,
    /// Measures the estimated starts of a run's submits (not of a run from a copy).
    eta: Option<EtaSampler>,
    /// Requests submitted since the last poll, for `eta`.
    eta_arrivals: Vec<u64>,
    /// What a run may cost (see [`Budget`]), and the steps taken so far.
    budget: Budget,
    steps: u64,
    /// Per host and base image, when a pull the scheduler started is ready: a VM placed there
    /// for that image starts provisioning then.
    pulls: BTreeMap<(HostId, Arc<str>), u64>,
    /// What pulls and evictions cost in this run (`None` without images).
    images: Option<crate::report::ImagesReport>,
}

/// A bound on a run's cost, for runs made on someone's behalf (the daemon's forecasts): at most
/// `steps_max` instants processed, and a stop as soon as `cancel` is set (the client left).
/// A run over its budget ends with [`SimError::OverBudget`] or [`SimError::Cancelled`].
#[derive(Clone, Debug, Default)]
pub struct Budget {
    pub steps_max: Option<u64>,
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Simulation {
    pub fn new(fleet: &Fleet, config: SimConfig) -> Result<Simulation, SimError> {
        let mut sched_config = config.sched.clone();
        sched_config.policy = config.policy;
        // The fleet file says what images weigh and cost to move; the settings say how
        // placement treats them (aware unless they say otherwise).
        if let Some(fleet_images) = &fleet.images {
            let mode = sched_config
                .images
                .as_ref()
                .map_or(fleet_images.mode, |i| i.mode);
            sched_config.images = Some(berth_sched::Images {
                mode,
                ..fleet_images.clone()
            });
        }
        // The fleet file names the pools; a run's `warm` setting sets all their sizes at once.
        sched_config.warm = match sched_config.warm.as_slice() {
            [] => fleet.warm.clone(),
            [w] if w.template == WARM_EVERY_POOL => fleet
                .warm
                .iter()
                .filter(|_| w.count > 0)
                .map(|f| Warm {
                    count: w.count,
                    ..f.clone()
                })
                .collect(),
            own => own.to_vec(),
        };
        sched_config
            .templates
            .extend(fleet.templates.iter().cloned());
        let templates = sched_config
            .templates
            .iter()
            .map(|t| (t.name.to_string(), t.guest_os))
            .collect();
        let images = sim_images(&sched_config.images);
        let mut sim = Simulation {
            sched: Scheduler::new(sched_config),
            latency: Latency::new(config.latency, config.seed),
            faults: Latency::new(Profile::Default, config.seed.wrapping_add(0x5eed)),
            config,
            queue: BinaryHeap::new(),
            seq: 0,
            now_ms: 0,
            requests: Map::default(),
            vms: Map::default(),
            pending: Map::default(),
            dependents: Map::default(),
            host_ids: BTreeMap::new(),
            host_drivers: Map::default(),
            next_host: 0,
            templates,
            fleet_vcpus: 0,
            n_hosts: 0,
            metrics: Metrics::new(),
            breakdown: Breakdown::new(),
            host_class: Map::default(),
            timeline: Timeline::new(),
            stale: 0,
            placed_waits: None,
            watch: None,
            eta: None,
            eta_arrivals: Vec::new(),
            budget: Budget::default(),
            steps: 0,
            pulls: BTreeMap::new(),
            images,
        };
        if sim.config.eta_samples_max > 0 {
            sim.eta = Some(EtaSampler::new(
                sim.config.eta_samples_max,
                sim.config.latency,
                sim.config.eta_replay_window_ms,
            ));
        }
        for spec in &fleet.hosts {
            sim.add_host(spec.clone())?;
        }
        Ok(sim)
    }

    /// A simulation that starts from an existing scheduler's state (a copy of a live daemon's,
    /// say), at that scheduler's time, with no trace: waiting requests wait on, VMs in flight
    /// finish provisioning and booting with modelled latency, running VMs end as
    /// `config.run_model` says such jobs end (when the scheduler expects, with an empty
    /// model), held VMs are released after the developer delay, and VMs placed later run for
    /// their request's expected run time, scaled by the same model. Every job passes.
    /// `config.sched` and `config.policy` are ignored: the scheduler keeps its own.
    pub fn from_scheduler(sched: Scheduler, config: SimConfig) -> Simulation {
        let now_ms = sched.now_ms();
        let mut sim = Simulation {
            latency: Latency::new(config.latency, config.seed),
            faults: Latency::new(Profile::Default, config.seed.wrapping_add(0x5eed)),
            config,
            queue: BinaryHeap::new(),
            seq: 0,
            now_ms,
            requests: Map::default(),
            vms: Map::default(),
            pending: Map::default(),
            dependents: Map::default(),
            host_ids: BTreeMap::new(),
            host_drivers: Map::default(),
            next_host: 0,
            templates: BTreeMap::new(),
            fleet_vcpus: 0,
            n_hosts: 0,
            metrics: Metrics::new(),
            breakdown: Breakdown::new(),
            host_class: Map::default(),
            timeline: Timeline::new(),
            stale: 0,
            placed_waits: None,
            watch: None,
            eta: None,
            eta_arrivals: Vec::new(),
            budget: Budget::default(),
            steps: 0,
            pulls: BTreeMap::new(),
            images: sim_images(&sched.config().images),
            sched,
        };
        sim.config.policy = sim.sched.config().policy;
        for h in sim.sched.hosts() {
            sim.host_ids.insert(h.name.to_owned(), h.id);
            sim.host_drivers.insert(h.id, h.driver);
            sim.next_host = sim.next_host.max(h.id.0 + 1);
            sim.fleet_vcpus += (h.cpu_milli.max(0) / 1000) as u64;
            sim.n_hosts += 1;
            let class = sim.breakdown.host_added(
                class_of(h.name),
                (h.cpu_milli.max(0) / 1000) as u32,
                h.cpu_milli.max(0) as u64,
                h.memory_mib.max(0) as u64,
                h.slots.iter().map(|s| s.1.max(0) as u64).sum(),
            );
            sim.host_class.insert(h.id, class);
        }
        let mut guest_os: BTreeMap<u64, (GuestOs, u32)> = BTreeMap::new();
        for r in sim.sched.requests() {
            let template = sim.sched.template(&r.spec.template);
            if let Some(t) = template {
                sim.templates.insert(t.name.to_string(), t.guest_os);
            }
            let duration_ms = sim.config.run_model.run_ms(r.expected_run_ms, r.spec.id.0);
            let os = template.map_or(GuestOs::Linux, |t| t.guest_os);
            guest_os.insert(r.spec.id.0, (os, r.shape.vcpus));
            sim.metrics.submitted(r.submitted_ms, r.spec.count);
            let requester = Some(r.spec.requester.as_str()).filter(|s| !s.is_empty());
            let rows = sim.breakdown.submitted(&r.spec.template, requester);
            sim.requests.insert(
                r.spec.id.0,
                ReqInfo {
                    duration_ms,
                    outcome: Outcome::Passed,
                    submitted_ms: r.submitted_ms,
                    placed: r.state != RequestState::Waiting,
                    rows,
                    change: None,
                },
            );
        }
        for v in sim.sched.vms() {
            let Some(host) = v.host else { continue };
            let driver = sim
                .host_drivers
                .get(&host)
                .copied()
                .unwrap_or(DriverKind::Sim);
            let (os, vcpus) = guest_os
                .get(&v.request.0)
                .copied()
                .unwrap_or((GuestOs::Linux, 1));
            let warm = v.request == RequestId::WARM_POOL;
            let running = v.state == VmState::Running && !warm;
            let held = v.state == VmState::Held;
            let holding = sim.holding(host, v.request, vcpus);
            sim.breakdown.hold(now_ms, holding);
            sim.vms.insert(
                v.id,
                VmInfo {
                    request: v.request.0,
                    vcpus,
                    driver,
                    os,
                    running_since_ms: running.then_some(now_ms),
                    held_since_ms: held.then_some(now_ms),
                    warm_since_ms: warm.then_some(now_ms),
                    holding,
                },
            );
            if running {
                sim.timeline
                    .running(now_ms, holding.class, i64::from(vcpus));
            }
            let (at_ms, ev) = match v.state {
                VmState::Placed | VmState::Provisioning => (
                    now_ms + sim.latency.sample(Op::Provision, driver, os),
                    Ev::Provisioned(v.id),
                ),
                VmState::Booting => (
                    now_ms + sim.latency.sample(Op::Boot, driver, os),
                    Ev::Booted(v.id),
                ),
                // A warm VM idles until a request takes it. (A handover in flight completes as
                // a boot does: the scheduler takes either.)
                VmState::Running if warm => continue,
                VmState::Running => {
                    let expected_ms = sim
                        .sched
                        .request(v.request)
                        .map_or(0, |r| r.expected_run_ms);
                    let start_ms = v.expected_end_ms.saturating_sub(expected_ms);
                    let end_ms = sim
                        .config
                        .run_model
                        .end_ms(start_ms, expected_ms, now_ms, v.id.0);
                    (end_ms, Ev::JobDone(v.id))
                }
                VmState::Held => (
                    now_ms.saturating_add(sim.faults.exponential_ms(sim.config.dev_delay_ms)),
                    Ev::DevRelease(v.id),
                ),
                VmState::Releasing => (
                    now_ms + sim.latency.sample(Op::Destroy, driver, os),
                    Ev::Destroyed(v.id),
                ),
                _ => continue,
            };
            sim.push(at_ms, ev);
        }
        if let Some(mtbf) = sim.config.mtbf_ms {
            let mut hosts: Vec<HostId> = sim.host_drivers.keys().copied().collect();
            hosts.sort_unstable();
            for id in hosts {
                let t = now_ms.saturating_add(sim.faults.exponential_ms(mtbf));
                sim.push(t, Ev::HostFail(id));
            }
        }
        sim
    }

    /// Bounds what the rest of the run may cost.
    pub fn set_budget(&mut self, budget: Budget) {
        self.budget = budget;
    }

    /// What a VM of `request` with `vcpus` on `host` holds of its class (for VMs found placed
    /// in a copied scheduler).
    fn holding(&self, host: HostId, request: RequestId, vcpus: u32) -> Holding {
        let r = self.sched.request(request);
        let template = r
            .as_ref()
            .and_then(|r| self.sched.template(&r.spec.template));
        Holding {
            class: self.host_class.get(&host).copied(),
            vcpus,
            memory_mib: r.map_or(0, |r| r.shape.memory_mib),
            slot: template.is_some_and(|t| t.slot.is_some()),
        }
    }

    /// Feeds one input to the scheduler now (e.g. `Input::Drain` before a forecast).
    pub fn handle(&mut self, input: Input) -> Result<(), InputError> {
        self.input(input)
    }

    /// The simulated time.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Runs with no trace until `until_ms` (or until nothing is left to happen), and stops
    /// there; it can be called again with a later time.
    pub fn run_until(&mut self, until_ms: u64) -> Result<(), SimError> {
        self.advance(&mut std::iter::empty(), until_ms)
    }

    /// Runs until `until_ms`, feeding the records of `trace` as they fall due; records after
    /// `until_ms` are left unread.
    fn advance(
        &mut self,
        trace: &mut dyn Iterator<Item = Result<Record, TraceError>>,
        until_ms: u64,
    ) -> Result<(), SimError> {
        let mut next = trace.next().transpose()?;
        self.pump();
        loop {
            let t_record = next.as_ref().map(|r| r.at_ms);
            let t_event = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let t_timer = self.sched.poll_timeout();
            let Some(t) = [t_record, t_event, t_timer].into_iter().flatten().min() else {
                break;
            };
            if t > until_ms {
                break;
            }
            if self.watch.as_ref().is_some_and(|(left, _)| left.is_empty()) {
                break;
            }
            self.steps += 1;
            if self.budget.steps_max.is_some_and(|max| self.steps > max) {
                return Err(SimError::OverBudget {
                    steps: self.steps - 1,
                });
            }
            if self
                .budget
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            {
                return Err(SimError::Cancelled);
            }
            self.now_ms = self.now_ms.max(t);
            self.apply_due()?;
            while let Some(record) = next.take_if(|r| r.at_ms <= self.now_ms) {
                self.metrics.events += 1;
                self.record(record)?;
                next = trace.next().transpose()?;
            }
            if t_timer.is_some_and(|tt| tt <= self.now_ms) {
                self.metrics.events += 1;
                let _ = self.input(Input::Tick);
            }
            self.pump();
        }
        self.now_ms = self.now_ms.max(until_ms);
        Ok(())
    }

    /// Starts from the current state, runs `horizon_ms` ahead and reports the waits of the
    /// requests that were waiting at the start.
    pub fn forecast(self, horizon_ms: u64) -> Result<Forecast, SimError> {
        self.forecast_with_arrivals(horizon_ms, Vec::new())
    }

    /// Like [`Self::forecast`], with `arrivals` submitted at their times during the run (those
    /// outside it are ignored): their waits are reported apart, in [`Forecast::arrivals`].
    /// Their ids must not be those of requests the scheduler holds.
    pub fn forecast_with_arrivals(
        mut self,
        horizon_ms: u64,
        mut arrivals: Vec<Record>,
    ) -> Result<Forecast, SimError> {
        let start_ms = self.now_ms;
        let until_ms = start_ms.saturating_add(horizon_ms);
        let mut waiting_now: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| !r.placed)
            .map(|(&id, _)| id)
            .collect();
        waiting_now.sort_unstable();
        arrivals.retain(|r| (start_ms..=until_ms).contains(&r.at_ms));
        arrivals.sort_by_key(|r| r.at_ms);
        let mut arrived = Vec::new();
        for r in &arrivals {
            if let RecordBody::Request(q) = &r.body {
                if self.requests.contains_key(&q.id) {
                    return Err(SimError::Scheduler(format!(
                        "forecast arrival r{} has the id of a request the scheduler holds",
                        q.id
                    )));
                }
                arrived.push((q.id, r.at_ms));
            }
        }
        self.placed_waits = Some(BTreeMap::new());
        self.advance(&mut arrivals.into_iter().map(Ok), until_ms)?;
        Ok(Forecast {
            horizon_ms,
            waiting: self.waits_of(waiting_now.into_iter().map(|id| (id, 0)), until_ms),
            arrivals: self.waits_of(arrived.into_iter(), until_ms),
        })
    }

    /// Runs with `arrivals` (ids unlike those the scheduler holds) until every request of `watch` has started (all its VMs placed),
    /// `until_ms` has come, or `steps_max` more instants were processed, whichever is first.
    /// Returns when each watched request started and the time the run reached: a request
    /// missing from the answer starts later than that, if at all.
    pub(crate) fn run_to_starts(
        &mut self,
        watch: BTreeSet<u64>,
        arrivals: &mut dyn Iterator<Item = Result<Record, TraceError>>,
        until_ms: u64,
        steps_max: u64,
    ) -> Result<(BTreeMap<u64, u64>, u64), SimError> {
        self.watch = Some((watch, BTreeMap::new()));
        self.budget.steps_max = Some(self.steps.saturating_add(steps_max));
        let reached_ms = match self.advance(arrivals, until_ms) {
            Ok(()) => until_ms,
            Err(SimError::OverBudget { .. }) => self.now_ms,
            Err(e) => return Err(e),
        };
        let (_, placed) = self.watch.take().unwrap_or_default();
        Ok((placed, reached_ms))
    }

    /// Simulated instants processed so far.
    pub(crate) fn steps(&self) -> u64 {
        self.steps
    }

    /// The waits of the requests `(id, submitted at)` at the end of a forecast run to
    /// `until_ms` (a submit time of 0: the one the simulation knows).
    fn waits_of(&self, ids: impl Iterator<Item = (u64, u64)>, until_ms: u64) -> WaitForecast {
        let placed = self.placed_waits.as_ref();
        let mut waits = crate::hist::histogram();
        let (mut n, mut still_waiting) = (0, 0);
        for (id, at_ms) in ids {
            n += 1;
            if let Some(&w) = placed.and_then(|p| p.get(&id)) {
                crate::hist::record(&mut waits, w);
                continue;
            }
            let submitted_ms = match (self.requests.get(&id), self.pending.get(&id)) {
                (Some(r), _) if !r.placed => r.submitted_ms,
                (None, Some(_)) => at_ms,
                // Ended without being placed (rejected, cancelled): no wait to speak of.
                _ => continue,
            };
            still_waiting += 1;
            crate::hist::record(&mut waits, until_ms.saturating_sub(submitted_ms));
        }
        let some = !waits.is_empty();
        WaitForecast {
            n,
            mean_wait_ms: if some { waits.mean().round() as u64 } else { 0 },
            p95_wait_ms: if some {
                waits.value_at_quantile(0.95)
            } else {
                0
            },
            max_wait_ms: if some { waits.max() } else { 0 },
            still_waiting,
        }
    }

    /// Applies the simulated completions due by now.
    fn apply_due(&mut self) -> Result<(), SimError> {
        while let Some(Reverse((at, _, ev))) = self.queue.peek().copied() {
            if at > self.now_ms {
                break;
            }
            self.queue.pop();
            self.metrics.events += 1;
            self.apply(ev)?;
        }
        Ok(())
    }

    fn add_host(&mut self, mut spec: HostSpec) -> Result<(), SimError> {
        spec.id = HostId(self.next_host);
        self.next_host += 1;
        let (id, name, driver) = (spec.id, spec.name.clone(), spec.driver);
        let report = ProbeReport {
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            images: spec.images.clone(),
        };
        self.fleet_vcpus += u64::from(spec.vcpus);
        self.n_hosts += 1;
        let class = self.breakdown.host_added(
            class_of(&spec.name),
            spec.vcpus,
            u64::from(spec.vcpus) * u64::from(spec.cpu_overcommit_milli),
            spec.memory_mib
                .saturating_mul(u64::from(spec.memory_overcommit_milli))
                / 1000,
            spec.slots.iter().map(|s| u64::from(s.1)).sum(),
        );
        self.host_class.insert(id, class);
        let at = self.now_ms;
        self.input(Input::AddHost(spec))
            .map_err(|e| SimError::Scheduler(format!("adding host {name}: {e}")))?;
        self.input(Input::Probe {
            host: id,
            result: Ok(report),
        })
        .map_err(|e| SimError::Scheduler(format!("probing host {name}: {e}")))?;
        self.host_ids.insert(name, id);
        self.host_drivers.insert(id, driver);
        if let Some(mtbf) = self.config.mtbf_ms {
            let t = at.saturating_add(self.faults.exponential_ms(mtbf));
            self.push(t, Ev::HostFail(id));
        }
        Ok(())
    }

    fn push(&mut self, at_ms: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at_ms, self.seq, ev)));
    }

    fn input(&mut self, input: Input) -> Result<(), InputError> {
        self.sched.handle(self.now_ms, input)
    }

    /// A completion for a VM; one the scheduler no longer knows was lost meanwhile.
    fn complete(&mut self, input: Input) {
        if self.input(input).is_err() {
            self.stale += 1;
        }
    }

    /// Replays `trace` to the end and reports. `progress` is called now and then with the
    /// number of records read and the simulated time.
    pub fn run(
        mut self,
        trace: &mut dyn Iterator<Item = Result<Record, TraceError>>,
        mut info: RunInfo,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(Report, Timeline), SimError> {
        let started = Instant::now();
        let mut next = trace.next().transpose()?;
        let mut n_records = 0u64;
        self.pump();
        loop {
            let t_record = next.as_ref().map(|r| r.at_ms);
            let t_event = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let t_timer = self.sched.poll_timeout();
            let idle = next.is_none() && self.requests.is_empty() && self.pending.is_empty();
            let t = if idle {
                // Nothing left but host failures and timers of ended work: the run is over.
                None
            } else {
                [t_record, t_event, t_timer].into_iter().flatten().min()
            };
            let Some(t) = t else { break };
            self.now_ms = self.now_ms.max(t);
            self.apply_due()?;
            while let Some(record) = next.take_if(|r| r.at_ms <= self.now_ms) {
                n_records += 1;
                self.metrics.events += 1;
                self.record(record)?;
                next = trace.next().transpose()?;
                if n_records.is_multiple_of(65_536) {
                    progress(n_records, self.now_ms);
                }
            }
            if t_timer.is_some_and(|tt| tt <= self.now_ms) {
                self.metrics.events += 1;
                let _ = self.input(Input::Tick);
            }
            self.pump();
            self.estimate_arrivals();
        }
        progress(n_records, self.now_ms);
        info.policy = self.config.policy.name().to_owned();
        info.latency = self.config.latency.name().to_owned();
        info.seed = self.config.seed;
        info.hosts = self.n_hosts;
        info.fleet_vcpus = self.fleet_vcpus;
        // The replay's own time: the estimates of starts are timed apart (`Report::eta`).
        let estimating = self.eta.as_ref().map_or(0.0, |e| e.wall_s());
        info.wall_s = (started.elapsed().as_secs_f64() - estimating).max(0.0);
        let (first_ms, last_ms) = self.metrics.span_ms();
        // Warm VMs still idle at the end idled until then.
        for v in self.vms.values_mut() {
            if let Some(since) = v.warm_since_ms.take() {
                self.metrics.warm_area +=
                    u128::from(last_ms.saturating_sub(since)) * u128::from(v.vcpus);
            }
        }
        let mut report = self
            .metrics
            .report(info, self.breakdown.report(first_ms, last_ms));
        report.eta = self.eta.as_ref().map(EtaSampler::report);
        report.images = self.images.clone();
        let class_vcpus: Vec<u64> = report.classes.iter().map(|c| c.vcpus).collect();
        report.series = Some(self.timeline.series(
            report.fleet_vcpus,
            &class_vcpus,
            self.metrics.waits(),
            self.metrics.ttr(),
        ));
        Ok((report, self.timeline))
    }

    fn apply(&mut self, ev: Ev) -> Result<(), SimError> {
        match ev {
            Ev::Arrive(id) => {
                if let Some(p) = self.pending.remove(&id) {
                    self.submit(p.record)?;
                }
            }
            Ev::Provisioned(vm) => self.complete(Input::ProvisionDone { vm, result: Ok(()) }),
            Ev::Booted(vm) => self.complete(Input::BootDone { vm, result: Ok(()) }),
            Ev::JobDone(vm) => {
                if let Some(eta) = self.eta.as_mut() {
                    eta.job_finished(&self.sched, vm, self.now_ms);
                }
                let passed = self
                    .vms
                    .get(&vm)
                    .and_then(|v| self.requests.get(&v.request))
                    .is_none_or(|r| r.outcome == Outcome::Passed);
                self.complete(Input::JobFinished { vm, passed });
            }
            Ev::Destroyed(vm) => self.complete(Input::DestroyDone { vm, result: Ok(()) }),
            Ev::HandedOver(vm) => self.complete(Input::HandoverDone { vm, result: Ok(()) }),
            Ev::DevRelease(vm) => self.complete(Input::Release(vm)),
            Ev::HostFail(host) => {
                for _ in 0..self.sched.config().probe_failures_max.max(1) {
                    let _ = self.input(Input::Probe {
                        host,
                        result: Err("simulated host failure".into()),
                    });
                }
                let t = self
                    .now_ms
                    .saturating_add(self.faults.exponential_ms(self.config.mttr_ms));
                self.push(t, Ev::HostRepair(host));
            }
            Ev::HostRepair(host) => {
                self.repair(host);
                if let Some(mtbf) = self.config.mtbf_ms {
                    let t = self.now_ms.saturating_add(self.faults.exponential_ms(mtbf));
                    self.push(t, Ev::HostFail(host));
                }
            }
        }
        Ok(())
    }

    fn repair(&mut self, host: HostId) {
        let Some(view) = self.sched.host(host) else {
            return;
        };
        let report = ProbeReport {
            vcpus: (view.cpu_milli / 1000).max(1) as u32,
            memory_mib: view.memory_mib.max(1) as u64,
            images: Vec::new(),
        };
        let _ = self.input(Input::Probe {
            host,
            result: Ok(report),
        });
    }

    fn record(&mut self, record: Record) -> Result<(), SimError> {
        match record.body {
            RecordBody::Request(r) => self.arrive(r),
            RecordBody::Host(h) => {
                if let HostEvent::Added(spec) = h.event {
                    let mut s =
                        HostSpec::new(0, &h.host, driver(spec.driver), spec.vcpus, spec.memory_mib);
                    s.slots = spec.slots.into_iter().collect();
                    s.labels = spec
                        .labels
                        .into_iter()
                        .map(|(k, v)| Label::new(k, v))
                        .collect();
                    return self.add_host(s);
                }
                let Some(&id) = self.host_ids.get(&h.host) else {
                    return Err(SimError::Scheduler(format!(
                        "trace host event `{}` for unknown host `{}`",
                        h.event.name(),
                        h.host
                    )));
                };
                let _ = match h.event {
                    HostEvent::Added(_) => Ok(()),
                    HostEvent::Failed => {
                        for _ in 0..self.sched.config().probe_failures_max.max(1) {
                            let _ = self.input(Input::Probe {
                                host: id,
                                result: Err("host failed (trace)".into()),
                            });
                        }
                        Ok(())
                    }
                    HostEvent::Repaired => {
                        self.repair(id);
                        Ok(())
                    }
                    HostEvent::Drained => self.input(Input::Drain(id)),
                    HostEvent::Resumed => self.input(Input::Resume(id)),
                    HostEvent::Removed => {
                        let _ = self.input(Input::Offline(id));
                        self.input(Input::RemoveHost(id))
                    }
                };
                Ok(())
            }
            RecordBody::Cancel { request } => {
                if let Some(p) = self.pending.remove(&request)
                    && let Some(change) = &p.record.change
                {
                    self.breakdown.change_request_ended(change, self.now_ms);
                }
                let _ = self.input(Input::Cancel(RequestId(request)));
                Ok(())
            }
            RecordBody::Release { request } => {
                let held: Vec<VmId> = self
                    .sched
                    .vms()
                    .into_iter()
                    .filter(|v| v.request == RequestId(request) && v.state == VmState::Held)
                    .map(|v| v.id)
                    .collect();
                for vm in held {
                    self.complete(Input::Release(vm));
                }
                Ok(())
            }
        }
    }

    /// A request record: submitted now, or held until the requests it follows have ended.
    fn arrive(&mut self, record: RequestRecord) -> Result<(), SimError> {
        if let Some(eta) = &mut self.eta {
            eta.arrived(self.now_ms, &record);
        }
        if let Some(change) = &record.change {
            self.breakdown
                .change_read(change, self.now_ms, record.count);
        }
        let mut remaining = 0;
        for dep in &record.after {
            // A dependency neither live nor pending has ended already (the reader checks that
            // `after` names earlier requests).
            if self.requests.contains_key(dep) || self.pending.contains_key(dep) {
                self.dependents.entry(*dep).or_default().push(record.id);
                remaining += 1;
            }
        }
        if remaining == 0 {
            return self.submit(record);
        }
        self.pending
            .insert(record.id, Pending { record, remaining });
        Ok(())
    }

    fn submit(&mut self, r: RequestRecord) -> Result<(), SimError> {
        // A run from a copied scheduler knows the templates of the requests it holds; one that
        // the scheduler knows otherwise is kept as it is.
        if !self.templates.contains_key(&r.template) && self.sched.template(&r.template).is_none() {
            let mut t = Template::new(
                &r.template,
                Shape {
                    vcpus: r.vcpus.max(1),
                    memory_mib: UNSPECIFIED_MEMORY_MIB,
                },
            );
            if self.config.latency == Profile::Default {
                t.expected_provision_ms =
                    berth_latency::median_ms(Op::Provision, DriverKind::Sim, GuestOs::Linux);
                t.expected_boot_ms =
                    berth_latency::median_ms(Op::Boot, DriverKind::Sim, GuestOs::Linux);
            }
            self.input(Input::SetTemplate(t))
                .map_err(|e| SimError::Scheduler(format!("template `{}`: {e}", r.template)))?;
            self.templates.insert(r.template.clone(), GuestOs::Linux);
        }
        let memory_mib = match r.memory_mib {
            Some(m) => m,
            None => self
                .sched
                .config()
                .templates
                .iter()
                .find(|t| *t.name == *r.template)
                .map_or(UNSPECIFIED_MEMORY_MIB, |t| t.default_shape.memory_mib),
        };
        let spec = RequestSpec {
            id: RequestId(r.id),
            template: r.template.clone(),
            count: r.count,
            shape: Some(Shape {
                vcpus: r.vcpus,
                memory_mib,
            }),
            labels: r.labels.iter().map(|(k, v)| Label::new(k, v)).collect(),
            priority: r.priority,
            gang: r.gang,
            hold_on_failure: r.hold_on_failure.as_ref().map(|h| Hold {
                owner: h.owner.clone(),
                ttl_ms: h.ttl_ms,
            }),
            pending_deadline_ms: None,
            expected_run_ms: Some(r.estimate_ms()),
            requester: r.requester.clone().unwrap_or_default(),
            account: r.account.clone(),
        };
        self.metrics.submitted(self.now_ms, r.count);
        let rows = self
            .breakdown
            .submitted(&r.template, r.requester.as_deref());
        self.requests.insert(
            r.id,
            ReqInfo {
                duration_ms: r.duration_ms,
                outcome: r.outcome,
                submitted_ms: self.now_ms,
                placed: false,
                rows,
                change: r.change,
            },
        );
        if self.input(Input::Submit(spec)).is_err() {
            self.metrics.refused += 1;
            self.request_ended(r.id);
        } else if self.eta.is_some() {
            self.eta_arrivals.push(r.id);
        }
        Ok(())
    }

    /// Drains the scheduler: carries out actions (instant ones at once) and observes events,
    /// until it has nothing more to say.
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(action) = self.sched.poll_action() {
                progressed = true;
                self.act(action);
            }
            while let Some(event) = self.sched.poll_event() {
                progressed = true;
                self.observe(event);
            }
            if !progressed {
                break;
            }
        }
        let queue_len = self.sched.queue_len() as u64;
        self.metrics.queue(self.now_ms, queue_len);
        self.timeline.sample(self.now_ms, queue_len);
    }

    /// Runs the estimator for the requests submitted in this instant that still wait after
    /// its pass (see `EtaSampler`), from the scheduler as it stands now.
    fn estimate_arrivals(&mut self) {
        let Some(eta) = self.eta.as_mut() else {
            return;
        };
        for id in self.eta_arrivals.drain(..) {
            if let Some(r) = self.requests.get(&id)
                && !r.placed
            {
                eta.waiting_submit(id, r.submitted_ms, &self.sched);
            }
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Provision {
                vm,
                request,
                host,
                spec,
            } => {
                if let Some(log) = &mut self.timeline.placements {
                    log.push(crate::plot::Placement {
                        at_ms: self.now_ms,
                        vm: vm.0,
                        request: request.0,
                        host: self
                            .sched
                            .host(host)
                            .map_or_else(String::new, |h| h.name.to_owned()),
                    });
                }
                let driver = self
                    .host_drivers
                    .get(&host)
                    .copied()
                    .unwrap_or(DriverKind::Sim);
                let holding = Holding {
                    class: self.host_class.get(&host).copied(),
                    vcpus: spec.shape.vcpus,
                    memory_mib: spec.shape.memory_mib,
                    slot: self
                        .sched
                        .template(&spec.template)
                        .is_some_and(|t| t.slot.is_some()),
                };
                self.breakdown.hold(self.now_ms, holding);
                self.vms.insert(
                    vm,
                    VmInfo {
                        request: request.0,
                        vcpus: spec.shape.vcpus,
                        driver,
                        os: spec.guest_os,
                        running_since_ms: None,
                        held_since_ms: None,
                        warm_since_ms: (request == RequestId::WARM_POOL).then_some(self.now_ms),
                        holding,
                    },
                );
                let took = self.latency.sample(Op::Provision, driver, spec.guest_os);
                // A VM placed for an image its host is still pulling starts when it is there.
                let key = (host, spec.base_image);
                let ready_ms = match self.pulls.get(&key) {
                    Some(&ready) if ready > self.now_ms => ready,
                    Some(_) => {
                        self.pulls.remove(&key);
                        self.now_ms
                    }
                    None => self.now_ms,
                };
                if took == 0 && ready_ms == self.now_ms {
                    self.complete(Input::ProvisionDone { vm, result: Ok(()) });
                } else {
                    self.push(ready_ms + took, Ev::Provisioned(vm));
                }
            }
            Action::Handover {
                vm, warm, request, ..
            } => {
                // The request's VM takes the warm VM's place, and its idle time ends here.
                let Some(mut v) = self.vms.remove(&warm) else {
                    return;
                };
                if let Some(since) = v.warm_since_ms.take() {
                    self.metrics.warm_area += u128::from(self.now_ms - since) * u128::from(v.vcpus);
                }
                self.metrics.handovers += 1;
                v.request = request.0;
                let took = self.latency.sample(Op::Handover, v.driver, v.os);
                self.vms.insert(vm, v);
                if took == 0 {
                    self.complete(Input::HandoverDone { vm, result: Ok(()) });
                } else {
                    self.push(self.now_ms + took, Ev::HandedOver(vm));
                }
            }
            Action::PullImage {
                host,
                image,
                size_mib,
                start_ms,
                ready_ms,
                ahead,
            } => {
                if let Some(stats) = self.images.as_mut() {
                    stats.pulls += 1;
                    stats.pulls_ahead += u64::from(ahead);
                    stats.pulled_gib += size_mib as f64 / 1024.0;
                    stats.pull_s += ready_ms.saturating_sub(start_ms) as f64 / 1000.0;
                    stats.store_wait_s += start_ms.saturating_sub(self.now_ms) as f64 / 1000.0;
                }
                self.pulls.insert((host, image), ready_ms);
            }
            Action::EvictImage { size_mib, .. } => {
                if let Some(stats) = self.images.as_mut() {
                    stats.evictions += 1;
                    stats.evicted_gib += size_mib as f64 / 1024.0;
                }
            }
            Action::Destroy { vm, .. } => {
                let (driver, os) = self
                    .vms
                    .get(&vm)
                    .map_or((DriverKind::Sim, GuestOs::Linux), |v| (v.driver, v.os));
                let took = self.latency.sample(Op::Destroy, driver, os);
                if took == 0 {
                    self.complete(Input::DestroyDone { vm, result: Ok(()) });
                } else {
                    self.push(self.now_ms + took, Ev::Destroyed(vm));
                }
            }
        }
    }

    fn after_provisioned(&mut self, vm: VmId) {
        let Some(v) = self.vms.get(&vm) else { return };
        let took = self.latency.sample(Op::Boot, v.driver, v.os);
        if took == 0 {
            self.complete(Input::BootDone { vm, result: Ok(()) });
        } else {
            self.push(self.now_ms + took, Ev::Booted(vm));
        }
    }

    fn observe(&mut self, event: Event) {
        let now = event.at_ms();
        match event {
            Event::Vm {
                vm,
                from,
                to,
                cause,
                ..
            } => {
                // Only a run with pools has warm VMs (most runs look no VM up for this).
                if !self.sched.config().warm.is_empty()
                    && let Some(v) = self.vms.get_mut(&vm)
                    && let Some(since) = v.warm_since_ms
                {
                    // A warm VM idles until it is handed over (`act`) or ends.
                    if to.is_terminal() {
                        v.warm_since_ms = None;
                        self.metrics.warm_area += u128::from(now - since) * u128::from(v.vcpus);
                    } else if to == VmState::Booting {
                        self.after_provisioned(vm);
                        return;
                    } else {
                        return;
                    }
                }
                if to == VmState::Booting && matches!(cause, Cause::Handover { .. }) {
                    // Its handover completes it (`Action::Handover`), not a boot.
                    return;
                }
                if from == Some(VmState::Running)
                    && let Some(v) = self.vms.get_mut(&vm)
                    && let Some(since) = v.running_since_ms.take()
                {
                    let area = u128::from(now - since) * u128::from(v.vcpus);
                    self.metrics.running_area += area;
                    self.breakdown.ran(v.holding, now - since);
                    self.timeline
                        .running(now, v.holding.class, -i64::from(v.vcpus));
                }
                if from == Some(VmState::Held)
                    && let Some(v) = self.vms.get_mut(&vm)
                    && let Some(since) = v.held_since_ms.take()
                {
                    self.metrics.held_area += u128::from(now - since) * u128::from(v.vcpus);
                }
                match to {
                    VmState::Booting => self.after_provisioned(vm),
                    VmState::Running => {
                        let Some(v) = self.vms.get_mut(&vm) else {
                            return;
                        };
                        v.running_since_ms = Some(now);
                        let (request, vcpus, class) = (v.request, v.vcpus, v.holding.class);
                        self.breakdown.started_running(class);
                        self.timeline.running(now, class, i64::from(vcpus));
                        if let Some(r) = self.requests.get(&request) {
                            self.metrics.reached_running(now - r.submitted_ms);
                            self.breakdown.reached_running(r.rows, now - r.submitted_ms);
                            let done = now.saturating_add(r.duration_ms);
                            self.push(done, Ev::JobDone(vm));
                        }
                    }
                    VmState::Held => {
                        if let Some(v) = self.vms.get_mut(&vm) {
                            v.held_since_ms = Some(now);
                        }
                        let delay = self.faults.exponential_ms(self.config.dev_delay_ms);
                        self.push(now.saturating_add(delay), Ev::DevRelease(vm));
                    }
                    s if s.is_terminal() => {
                        if let Some(v) = self.vms.remove(&vm) {
                            self.breakdown.release(now, v.holding);
                        }
                        self.metrics.ended(now);
                    }
                    _ => {}
                }
            }
            Event::Request {
                request, to, cause, ..
            } => {
                let id = request.0;
                match to {
                    RequestState::Active => {
                        if let Some(r) = self.requests.get_mut(&id)
                            && !r.placed
                        {
                            r.placed = true;
                            let wait = now - r.submitted_ms;
                            self.metrics.waited(wait);
                            self.breakdown.waited(r.rows, wait, r.duration_ms);
                            if let Some(p) = &mut self.placed_waits {
                                p.insert(id, wait);
                            }
                            if let Some(eta) = &mut self.eta {
                                eta.started(id, now);
                            }
                            if let Some((left, placed)) = &mut self.watch
                                && left.remove(&id)
                            {
                                placed.insert(id, now);
                            }
                        }
                    }
                    RequestState::Waiting => {}
                    terminal => {
                        match terminal {
                            RequestState::Rejected => {
                                self.metrics.rejected += 1;
                                if self.metrics.first_rejection.is_none() {
                                    self.metrics.first_rejection =
                                        Some(format!("{request}: {cause}"));
                                }
                            }
                            RequestState::Cancelled => self.metrics.cancelled += 1,
                            RequestState::Failed => self.metrics.failed += 1,
                            _ => {}
                        }
                        self.metrics.ended(now);
                        self.request_ended(id);
                    }
                }
            }
            Event::Host { .. } => {}
        }
    }

    /// A request ended: release the requests that waited for it.
    fn request_ended(&mut self, id: u64) {
        if let Some(eta) = &mut self.eta {
            eta.ended(id);
        }
        if let Some(r) = self.requests.remove(&id)
            && let Some(change) = &r.change
        {
            self.breakdown.change_request_ended(change, self.now_ms);
        }
        let Some(waiting) = self.dependents.remove(&id) else {
            return;
        };
        for dependent in waiting {
            let release = match self.pending.get_mut(&dependent) {
                Some(p) => {
                    p.remaining = p.remaining.saturating_sub(1);
                    (p.remaining == 0).then_some(p.record.think_ms)
                }
                None => None,
            };
            if let Some(think_ms) = release {
                self.push(self.now_ms.saturating_add(think_ms), Ev::Arrive(dependent));
            }
        }
    }

    /// Records every placement in the timeline `run` returns (`Timeline::placements`).
    pub fn log_placements(&mut self) {
        self.timeline.placements = Some(Vec::new());
    }

    /// A copy of the live scheduler state (for predictions that start from it).
    pub fn scheduler(&self) -> &Scheduler {
        &self.sched
    }
}

fn driver(d: berth_traces::Driver) -> DriverKind {
    match d {
        berth_traces::Driver::Libvirt => DriverKind::Libvirt,
        berth_traces::Driver::Parallels => DriverKind::Parallels,
        berth_traces::Driver::Sim => DriverKind::Sim,
    }
}

/// The image figures a run keeps when its scheduler models images.
fn sim_images(images: &Option<berth_sched::Images>) -> Option<crate::report::ImagesReport> {
    images.as_ref().map(|i| crate::report::ImagesReport {
        mode: i.mode.name().to_owned(),
        ..crate::report::ImagesReport::default()
    })
}
