//! Estimated starts of waiting requests: a copy of the scheduler run forward with no new
//! arrivals, as the daemon's drain forecast does ([`Simulation::from_scheduler`]). Running VMs
//! end as the jobs that finished say such jobs end, VMs placed on the way run for their
//! request's expected run time so adjusted (`crate::runtimes`; with nothing learned, both as
//! the scheduler expects), provisioning and boot take the latency model's times, and the
//! unchanged scheduler decides who starts when, under whatever policy and fair share it runs.
//!
//! The run is bounded: it stops at a horizon or after a number of simulated instants, whichever
//! comes first, and a request that has not started by then gets "later than" the time the run
//! reached instead of an estimate. Requests that arrive later are not foreseen by
//! [`estimate_starts`]: one that arrives with a higher priority (or from an account further
//! below its share) starts before a request that waits now, and makes that request's start
//! later than estimated. [`estimate_starts_with_arrivals`] foresees them from the recent past
//! (see [`Replay`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use berth_sched::{RequestId, RequestState, Scheduler};
use berth_traces::{Outcome, Record, RecordBody, RequestRecord};
use serde::{Deserialize, Serialize};

use crate::runtimes::{RunModel, RunTimes, job_run};
use crate::{Profile, SimConfig, SimError, Simulation};

/// The seed of the latency draws of every estimate, so that two estimates from the same state
/// agree.
pub const ETA_SEED: u64 = 1;

/// What an estimate may cost, and the latency model it assumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EtaConfig {
    /// How far past the scheduler's time the run looks.
    pub horizon_ms: u64,
    /// At most this many simulated instants (each a batch of completions and a pass).
    pub steps_max: u64,
    pub latency: Profile,
}

/// When a waiting request is expected to start (all its VMs placed: it leaves the queue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eta {
    /// At this time (the scheduler's clock, ms).
    At(u64),
    /// Not before this time: the run stopped there (its horizon or its budget) with the request
    /// still waiting, or nothing left would let it start.
    After(u64),
}

/// The estimated starts of the requests that waited when the estimate was made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Starts {
    /// The scheduler's time the estimate starts from.
    pub from_ms: u64,
    /// How far the run got.
    pub reached_ms: u64,
    /// Simulated instants it took.
    pub steps: u64,
    /// Per watched request, when it started in the run, if it did.
    starts: BTreeMap<u64, Option<u64>>,
}

impl Starts {
    /// Request `id`'s estimated start; `None` if it did not wait when the estimate was made.
    pub fn of(&self, id: RequestId) -> Option<Eta> {
        let start = self.starts.get(&id.0)?;
        Some(match *start {
            Some(at) => Eta::At(at),
            None => Eta::After(self.reached_ms),
        })
    }

    /// Requests estimated (started within the run or not).
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }
}

/// Runs a copy of `sched` forward and says when each of the requests in `watch` (every waiting
/// request if `None`) starts. A watched request that does not wait gets no estimate.
pub fn estimate_starts(
    sched: Scheduler,
    watch: Option<&[RequestId]>,
    config: EtaConfig,
    run_model: &RunModel,
) -> Result<Starts, SimError> {
    estimate_starts_with_arrivals(sched, watch, config, &Replay::default(), run_model)
}

/// Like [`estimate_starts`], with the arrivals `replay` foresees submitted on the way.
pub fn estimate_starts_with_arrivals(
    sched: Scheduler,
    watch: Option<&[RequestId]>,
    config: EtaConfig,
    replay: &Replay,
    run_model: &RunModel,
) -> Result<Starts, SimError> {
    let from_ms = sched.now_ms();
    let watched: BTreeSet<u64> = match watch {
        Some(ids) => ids
            .iter()
            .filter(|&&id| {
                sched
                    .request(id)
                    .is_some_and(|r| r.state == RequestState::Waiting)
            })
            .map(|id| id.0)
            .collect(),
        None => sched.queue().into_iter().map(|id| id.0).collect(),
    };
    let mut sim = Simulation::from_scheduler(
        sched,
        SimConfig {
            latency: config.latency,
            seed: ETA_SEED,
            mtbf_ms: None,
            run_model: run_model.clone(),
            ..SimConfig::default()
        },
    );
    let steps_before = sim.steps();
    let until_ms = from_ms.saturating_add(config.horizon_ms);
    let mut arrivals = replay.arrivals(from_ms, until_ms);
    let (placed, reached_ms) =
        sim.run_to_starts(watched.clone(), &mut arrivals, until_ms, config.steps_max)?;
    let starts = watched
        .into_iter()
        .map(|id| (id, placed.get(&id).copied()))
        .collect();
    Ok(Starts {
        from_ms,
        reached_ms,
        steps: (sim.steps() - steps_before).min(config.steps_max),
        starts,
    })
}

/// The arrivals an estimate foresees: the requests that arrived in the last `window_ms`
/// submitted again, `window_ms` later, then again `2 × window_ms` later, and so on up to the
/// estimate's horizon: the same accounts, shapes, priorities and expected run times, so that
/// under fair share the accounts that keep arriving keep overtaking the request estimated. A
/// replayed request runs for its expected run time (what the scheduler knows of it), passes, and
/// waits for nothing.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    window_ms: u64,
    /// The requests that arrived in the window, with their time, oldest first.
    recent: VecDeque<(u64, RequestRecord)>,
}

/// Replayed requests are numbered from here, far above any trace's or daemon's ids.
const REPLAY_ID_BASE: u64 = 1 << 62;

impl Replay {
    /// An empty replay of the arrivals of the last `window_ms` (0: none are kept).
    pub fn new(window_ms: u64) -> Replay {
        Replay {
            window_ms,
            recent: VecDeque::new(),
        }
    }

    /// `request` arrived at `at_ms` (non-decreasing from one call to the next).
    pub fn arrived(&mut self, at_ms: u64, request: &RequestRecord) {
        if self.window_ms == 0 {
            return;
        }
        let mut r = request.clone();
        r.duration_ms = request.estimate_ms();
        r.expected_ms = None;
        r.outcome = Outcome::Passed;
        r.hold_on_failure = None;
        r.change = None;
        r.after = Vec::new();
        r.think_ms = 0;
        self.recent.push_back((at_ms, r));
        self.forget_before(at_ms);
    }

    /// Drops the arrivals older than the window that ends at `now_ms`.
    fn forget_before(&mut self, now_ms: u64) {
        while let Some(&(at, _)) = self.recent.front()
            && at.saturating_add(self.window_ms) <= now_ms
        {
            self.recent.pop_front();
        }
    }

    /// The arrivals foreseen after `from_ms` up to `until_ms`, in time order, made only as the
    /// run reaches them.
    fn arrivals(
        &self,
        from_ms: u64,
        until_ms: u64,
    ) -> impl Iterator<Item = Result<Record, berth_traces::TraceError>> + '_ {
        let recent: Vec<&(u64, RequestRecord)> = self
            .recent
            .iter()
            .filter(|(at, _)| at.saturating_add(self.window_ms) > from_ms)
            .collect();
        let window_ms = self.window_ms;
        let rounds = if recent.is_empty() || window_ms == 0 {
            0
        } else {
            until_ms.saturating_sub(from_ms) / window_ms + 1
        };
        (1..=rounds)
            .flat_map(move |k| recent.clone().into_iter().map(move |r| (k, r)))
            .enumerate()
            .map(move |(n, (k, (at, r)))| (at + k * window_ms, n as u64, r))
            .take_while(move |&(at, _, _)| at <= until_ms)
            .map(|(at_ms, n, r)| {
                let mut r = r.clone();
                r.id = REPLAY_ID_BASE + n;
                Ok(Record {
                    at_ms,
                    body: RecordBody::Request(r),
                })
            })
    }
}

/// How good the estimate is, measured in a simulation: at each submit whose request then
/// waits (or at a sample of them), the estimator runs on a copy of the simulation's scheduler,
/// and its prediction is held against when the request actually started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EtaReport {
    /// Submits whose request waited (was not placed in the instant it arrived).
    pub waiting_submits: u64,
    /// One in this many of them was estimated: 1 at first, doubled (and every other sample
    /// dropped) each time the samples outgrow the cap, so they spread over the whole run.
    pub sample_every: u64,
    /// Estimated requests that then started: the figures below are over these.
    pub samples: u64,
    /// Of those, requests whose estimate stopped (at its horizon or budget) before they started:
    /// "later than", left out of the errors.
    pub past_bounds: u64,
    /// |predicted − actual start|, median and p90, in seconds.
    pub median_abs_error_s: f64,
    pub p90_abs_error_s: f64,
    /// predicted − actual start, median, in seconds: positive when estimates come late.
    pub median_signed_error_s: f64,
    /// |predicted − actual start| / actual wait, median and p90, over the samples that waited
    /// at least a second.
    pub median_rel_error: f64,
    pub p90_rel_error: f64,
    /// Actual wait of the samples, median, in seconds (the scale of the errors above).
    pub median_wait_s: f64,
    /// Wall-clock time the estimates took, in seconds.
    pub wall_s: f64,
}

/// One line of the report's table: `eta        error median 3m12s (14% of the wait), p90 ...`.
impl std::fmt::Display for EtaReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.samples == 0 {
            return write!(
                f,
                "eta        no estimate measured ({} waiting submits)",
                self.waiting_submits
            );
        }
        write!(
            f,
            "eta        error at submit: median {:.0} s ({:.1}% of the wait; median wait {:.0} s), \
             p90 {:.0} s ({:.1}%); bias {:+.0} s; {} samples, 1 in {} of {} waiting submits, \
             {} past the bounds; {:.1} s",
            self.median_abs_error_s,
            self.median_rel_error * 100.0,
            self.median_wait_s,
            self.p90_abs_error_s,
            self.p90_rel_error * 100.0,
            self.median_signed_error_s,
            self.samples,
            self.sample_every,
            self.waiting_submits,
            self.past_bounds,
            self.wall_s
        )
    }
}

/// One estimated submit.
#[derive(Clone, Copy, Debug)]
struct Sample {
    submitted_ms: u64,
    predicted: Eta,
    started_ms: Option<u64>,
}

/// Runs the estimator at the submits of a simulation and keeps at most `samples_max` of them.
#[derive(Debug)]
pub(crate) struct EtaSampler {
    config: EtaConfig,
    samples_max: usize,
    every: u64,
    /// Waiting submits seen, each numbered in turn.
    seen: u64,
    /// By the waiting submit's number.
    samples: BTreeMap<u64, Sample>,
    /// Requests not yet started, by id, with their number.
    pending: BTreeMap<u64, u64>,
    wall: std::time::Duration,
    /// The arrivals the estimates foresee (none with a window of 0).
    replay: Replay,
    /// How long the jobs that ended so far ran against what was expected of them.
    run_times: RunTimes,
}

impl EtaSampler {
    pub(crate) fn new(
        samples_max: usize,
        latency: Profile,
        replay_window_ms: Option<u64>,
    ) -> EtaSampler {
        EtaSampler {
            config: EtaConfig {
                horizon_ms: SAMPLE_HORIZON_MS,
                steps_max: SAMPLE_STEPS_MAX,
                latency,
            },
            samples_max: samples_max.max(1),
            every: 1,
            seen: 0,
            samples: BTreeMap::new(),
            pending: BTreeMap::new(),
            wall: std::time::Duration::ZERO,
            replay: Replay::new(replay_window_ms.unwrap_or(0)),
            run_times: RunTimes::default(),
        }
    }

    /// VM `vm`'s job finishes at `now_ms`, and `sched` has not been told yet: how long it
    /// ran teaches the estimates (see [`job_run`]).
    pub(crate) fn job_finished(&mut self, sched: &Scheduler, vm: berth_sched::VmId, now_ms: u64) {
        if let Some((ran_ms, expected_ms)) = job_run(sched, vm, now_ms) {
            self.run_times.ended(ran_ms, expected_ms);
        }
    }

    /// A request arrived at `at_ms` (whether it then waits or not).
    pub(crate) fn arrived(&mut self, at_ms: u64, request: &RequestRecord) {
        self.replay.arrived(at_ms, request);
    }

    /// Request `id`, submitted at `submitted_ms`, still waits after its instant's pass:
    /// estimated from `sched` if its number is sampled.
    pub(crate) fn waiting_submit(&mut self, id: u64, submitted_ms: u64, sched: &Scheduler) {
        let number = self.seen;
        self.seen += 1;
        if !number.is_multiple_of(self.every) {
            return;
        }
        let started = std::time::Instant::now();
        let estimate = estimate_starts_with_arrivals(
            sched.clone(),
            Some(&[RequestId(id)]),
            self.config,
            &self.replay,
            &self.run_times.model(),
        );
        self.wall += started.elapsed();
        let Some(predicted) = estimate.ok().and_then(|s| s.of(RequestId(id))) else {
            return;
        };
        self.samples.insert(
            number,
            Sample {
                submitted_ms,
                predicted,
                started_ms: None,
            },
        );
        self.pending.insert(id, number);
        if self.samples.len() > self.samples_max {
            self.every *= 2;
            let every = self.every;
            self.samples.retain(|n, _| n.is_multiple_of(every));
            self.pending.retain(|_, n| n.is_multiple_of(every));
        }
    }

    /// Request `id` started (all its VMs placed) at `at_ms`.
    pub(crate) fn started(&mut self, id: u64, at_ms: u64) {
        if let Some(n) = self.pending.remove(&id)
            && let Some(s) = self.samples.get_mut(&n)
        {
            s.started_ms = Some(at_ms);
        }
    }

    /// Request `id` ended; one that never started leaves the samples.
    pub(crate) fn ended(&mut self, id: u64) {
        if let Some(n) = self.pending.remove(&id) {
            self.samples.remove(&n);
        }
    }

    /// Wall-clock time the estimates took so far, in seconds.
    pub(crate) fn wall_s(&self) -> f64 {
        self.wall.as_secs_f64()
    }

    pub(crate) fn report(&self) -> EtaReport {
        let mut abs = Vec::new();
        let mut signed = Vec::new();
        let mut rel = Vec::new();
        let mut waits = Vec::new();
        let mut past_bounds = 0;
        for s in self.samples.values() {
            let Some(actual) = s.started_ms else { continue };
            let predicted = match s.predicted {
                Eta::At(at) => at,
                Eta::After(_) => {
                    past_bounds += 1;
                    continue;
                }
            };
            let error = predicted as i64 - actual as i64;
            let wait = actual.saturating_sub(s.submitted_ms);
            abs.push(error.unsigned_abs() as f64 / 1000.0);
            signed.push(error as f64 / 1000.0);
            waits.push(wait as f64 / 1000.0);
            if wait >= 1000 {
                rel.push(error.unsigned_abs() as f64 / wait as f64);
            }
        }
        let samples = abs.len() as u64 + past_bounds;
        EtaReport {
            waiting_submits: self.seen,
            sample_every: self.every,
            samples,
            past_bounds,
            median_abs_error_s: quantile(&mut abs, 0.5),
            p90_abs_error_s: quantile(&mut abs, 0.9),
            median_signed_error_s: quantile(&mut signed, 0.5),
            median_rel_error: quantile(&mut rel, 0.5),
            p90_rel_error: quantile(&mut rel, 0.9),
            median_wait_s: quantile(&mut waits, 0.5),
            wall_s: self.wall.as_secs_f64(),
        }
    }
}

/// How far ahead an estimate made in a simulation looks, and the instants it may take: the
/// daemon's bounds.
const SAMPLE_HORIZON_MS: u64 = 24 * 3_600_000;
const SAMPLE_STEPS_MAX: u64 = 200_000;

/// The `q` quantile of `xs` by nearest rank (0 when empty).
fn quantile(xs: &mut [f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_sched::{
        Config, DriverKind, HostSpec, Input, Policy, ProbeReport, RequestSpec, Shape, Template,
    };

    const MINUTE_MS: u64 = 60_000;

    /// One host of `vcpus` one-vCPU slots, and a template whose jobs are expected to run ten
    /// minutes, with no provisioning or boot time.
    fn scheduler(policy: Policy, vcpus: u32) -> Scheduler {
        scheduler_with(
            Config {
                policy,
                ..Config::default()
            },
            vcpus,
        )
    }

    /// [`scheduler`] under `config` (its templates replaced).
    fn scheduler_with(config: Config, vcpus: u32) -> Scheduler {
        let mut t = Template::new(
            "linux",
            Shape {
                vcpus: 1,
                memory_mib: 1024,
            },
        );
        t.drivers = vec![DriverKind::Sim];
        t.expected_run_ms = 10 * MINUTE_MS;
        let mut s = Scheduler::new(Config {
            templates: vec![t],
            ..config
        });
        let h = HostSpec::new(1, "h1", DriverKind::Sim, vcpus, 64 * 1024);
        s.handle(0, Input::AddHost(h.clone())).unwrap();
        s.handle(
            0,
            Input::Probe {
                host: h.id,
                result: Ok(ProbeReport {
                    vcpus,
                    memory_mib: h.memory_mib,
                    images: Vec::new(),
                }),
            },
        )
        .unwrap();
        s
    }

    fn submit(s: &mut Scheduler, at_ms: u64, id: u64, vcpus: u32, run_ms: u64) {
        let mut spec = RequestSpec::new(id, "linux", 1);
        spec.shape = Some(Shape {
            vcpus,
            memory_mib: 1024,
        });
        spec.expected_run_ms = Some(run_ms);
        s.handle(at_ms, Input::Submit(spec)).unwrap();
    }

    /// One one-vCPU VM of `run_ms` for `account`, submitted at `at_ms`; its record too.
    fn submit_for(
        s: &mut Scheduler,
        at_ms: u64,
        id: u64,
        account: &str,
        run_ms: u64,
    ) -> RequestRecord {
        let mut spec = RequestSpec::new(id, "linux", 1);
        spec.expected_run_ms = Some(run_ms);
        spec.account = Some(account.to_owned());
        s.handle(at_ms, Input::Submit(spec)).unwrap();
        poll(s);
        let mut r = RequestRecord::new(id, "linux", 1, run_ms);
        r.account = Some(account.to_owned());
        r
    }

    fn poll(s: &mut Scheduler) {
        while s.poll_action().is_some() || s.poll_event().is_some() {}
    }

    /// Provisions and boots VM `vm` at `at_ms`: it runs from then on.
    fn bring_up(s: &mut Scheduler, at_ms: u64, vm: u64) {
        let vm = berth_sched::VmId(vm);
        for input in [
            Input::ProvisionStarted(vm),
            Input::ProvisionDone { vm, result: Ok(()) },
            Input::BootDone { vm, result: Ok(()) },
        ] {
            s.handle(at_ms, input).unwrap();
        }
        poll(s);
    }

    const ZERO: EtaConfig = EtaConfig {
        horizon_ms: 24 * 60 * MINUTE_MS,
        steps_max: 10_000,
        latency: Profile::Zero,
    };

    #[test]
    fn known_durations_give_exact_starts() {
        // Two vCPUs; four one-vCPU requests of 10, 20, 5 and 5 minutes, submitted at once.
        // r1 and r2 start now; r3 when r1 ends (10 min); r4 when r3 ends (15 min), before r2.
        let mut s = scheduler(Policy::Fcfs, 2);
        for (id, minutes) in [(1, 10), (2, 20), (3, 5), (4, 5)] {
            submit(&mut s, 0, id, 1, minutes * MINUTE_MS);
        }
        poll(&mut s);
        let starts = estimate_starts(s, None, ZERO, &RunModel::default()).unwrap();
        assert_eq!(starts.len(), 2);
        assert_eq!(starts.of(RequestId(1)), None, "r1 runs, it does not wait");
        assert_eq!(starts.of(RequestId(3)), Some(Eta::At(10 * MINUTE_MS)));
        assert_eq!(starts.of(RequestId(4)), Some(Eta::At(15 * MINUTE_MS)));
    }

    #[test]
    fn running_vms_end_when_the_scheduler_expects_them_to() {
        // A 2-vCPU request waits behind two one-vCPU jobs placed at different times.
        let mut s = scheduler(Policy::Easy, 2);
        submit(&mut s, 0, 1, 1, 30 * MINUTE_MS);
        poll(&mut s);
        bring_up(&mut s, 0, 1);
        submit(&mut s, 5 * MINUTE_MS, 2, 1, 30 * MINUTE_MS);
        poll(&mut s);
        bring_up(&mut s, 5 * MINUTE_MS, 2);
        submit(&mut s, 6 * MINUTE_MS, 3, 2, MINUTE_MS);
        poll(&mut s);
        let starts = estimate_starts(
            s,
            Some(&[RequestId(3), RequestId(2)]),
            ZERO,
            &RunModel::default(),
        )
        .unwrap();
        assert_eq!(starts.of(RequestId(3)), Some(Eta::At(35 * MINUTE_MS)));
        assert_eq!(starts.of(RequestId(2)), None);
    }

    #[test]
    fn overdue_jobs_end_as_the_past_jobs_that_ran_longer_did() {
        // One vCPU: a job expected to run 10 minutes has run 15 when a request comes to wait
        // for it.
        let at = |model: &RunModel| {
            let mut s = scheduler(Policy::Fcfs, 1);
            submit(&mut s, 0, 1, 1, 10 * MINUTE_MS);
            poll(&mut s);
            bring_up(&mut s, 0, 1);
            submit(&mut s, 15 * MINUTE_MS, 2, 1, 10 * MINUTE_MS);
            poll(&mut s);
            let starts = estimate_starts(s, None, ZERO, model).unwrap();
            starts.of(RequestId(2))
        };
        // Knowing nothing of run times, an overdue job ends now.
        assert_eq!(at(&RunModel::default()), Some(Eta::At(15 * MINUTE_MS)));
        // Past jobs ran twice what was expected of them: so does this one.
        let mut twice = RunTimes::default();
        for _ in 0..10 {
            twice.ended(2 * MINUTE_MS, MINUTE_MS);
        }
        assert_eq!(at(&twice.model()), Some(Eta::At(20 * MINUTE_MS)));
        // They ran less than it already has: it ends now.
        let mut short = RunTimes::default();
        short.ended(MINUTE_MS, MINUTE_MS);
        assert_eq!(at(&short.model()), Some(Eta::At(15 * MINUTE_MS)));
    }

    #[test]
    fn a_job_run_is_measured_against_what_the_scheduler_expected_at_submit() {
        // A request with no estimate takes its template's 10 minutes; the template says 30
        // by the time its job finishes, 15 minutes after it began running at 5.
        let mut s = scheduler(Policy::Fcfs, 1);
        s.handle(0, Input::Submit(RequestSpec::new(1, "linux", 1)))
            .unwrap();
        poll(&mut s);
        bring_up(&mut s, 5 * MINUTE_MS, 1);
        let mut t = s.template("linux").unwrap().clone();
        t.expected_run_ms = 30 * MINUTE_MS;
        s.handle(6 * MINUTE_MS, Input::SetTemplate(t)).unwrap();
        let vm = berth_sched::VmId(1);
        assert_eq!(
            job_run(&s, vm, 20 * MINUTE_MS),
            Some((15 * MINUTE_MS, 10 * MINUTE_MS))
        );
        // A VM that does not run has no run to learn from.
        s.handle(20 * MINUTE_MS, Input::JobFinished { vm, passed: true })
            .unwrap();
        assert_eq!(job_run(&s, vm, 20 * MINUTE_MS), None);
    }

    #[test]
    fn the_sampler_keeps_at_most_its_cap_spread_over_the_run_and_scores_them() {
        // One vCPU, every request 10 minutes: the n-th waiting submit (all at 0) starts at
        // n × 10 min, as estimated.
        let mut s = scheduler(Policy::Fcfs, 1);
        submit(&mut s, 0, 1, 1, 10 * MINUTE_MS);
        poll(&mut s);
        let mut sampler = EtaSampler::new(4, Profile::Zero, None);
        for id in 2..=11 {
            submit(&mut s, 0, id, 1, 10 * MINUTE_MS);
            poll(&mut s);
            sampler.waiting_submit(id, 0, &s);
        }
        // Ten waiting submits, a cap of four: one in four kept (numbers 0, 4, 8).
        assert_eq!(sampler.every, 4);
        assert_eq!(
            sampler.samples.keys().copied().collect::<Vec<_>>(),
            [0, 4, 8]
        );
        // They start 5 minutes late each (a slower world than expected), and one is cancelled.
        for id in [2, 6] {
            let estimated = (id - 1) * 10 * MINUTE_MS;
            sampler.started(id, estimated + 5 * MINUTE_MS);
        }
        sampler.ended(10);
        let r = sampler.report();
        assert_eq!((r.waiting_submits, r.sample_every, r.samples), (10, 4, 2));
        assert_eq!(r.median_abs_error_s, 300.0);
        assert_eq!(r.median_signed_error_s, -300.0);
        // Waits of 15 and 55 minutes: errors of a third and of 1/11.
        assert!((r.median_rel_error - 5.0 / 55.0).abs() < 1e-9, "{r:?}");
        assert!((r.p90_rel_error - 5.0 / 15.0).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn replayed_arrivals_of_an_account_below_its_share_start_first() {
        // One vCPU under fair share (usage kept a day long). `heavy` runs r1 from 0 to 30 min
        // and waits with r2; `light` submits r3 at 20 min, which goes before r2 at 30 min.
        // Without arrivals r2 is estimated to start when r3 ends, at 40 min. With the last 15
        // minutes replayed, `light` submits again at 35, 50 and 65 min. At 40 and 50 min it
        // has used 10 and 20 minutes of the vCPU against heavy's 30 (usage barely decays in a
        // day's half-life): its requests go first, and r2 starts at 60 min, when none waits.
        let config = Config {
            policy: Policy::Fcfs,
            fair_share: Some(berth_sched::FairShare {
                half_life_ms: 24 * 60 * MINUTE_MS,
                ..berth_sched::FairShare::default()
            }),
            ..Config::default()
        };
        let mut s = scheduler_with(config, 1);
        let mut replay = Replay::new(15 * MINUTE_MS);
        let r1 = submit_for(&mut s, 0, 1, "heavy", 30 * MINUTE_MS);
        bring_up(&mut s, 0, 1);
        let r2 = submit_for(&mut s, 0, 2, "heavy", 10 * MINUTE_MS);
        replay.arrived(0, &r1);
        replay.arrived(0, &r2);
        s.handle(20 * MINUTE_MS, Input::Tick).unwrap();
        let r3 = submit_for(&mut s, 20 * MINUTE_MS, 3, "light", 10 * MINUTE_MS);
        replay.arrived(20 * MINUTE_MS, &r3);
        let watch = [RequestId(2), RequestId(3)];

        let blind = estimate_starts(s.clone(), Some(&watch), ZERO, &RunModel::default()).unwrap();
        assert_eq!(blind.of(RequestId(3)), Some(Eta::At(30 * MINUTE_MS)));
        assert_eq!(blind.of(RequestId(2)), Some(Eta::At(40 * MINUTE_MS)));

        let foreseen = estimate_starts_with_arrivals(
            s.clone(),
            Some(&watch),
            ZERO,
            &replay,
            &RunModel::default(),
        )
        .unwrap();
        assert_eq!(foreseen.of(RequestId(3)), Some(Eta::At(30 * MINUTE_MS)));
        assert_eq!(foreseen.of(RequestId(2)), Some(Eta::At(60 * MINUTE_MS)));
        // The same state and arrivals, the same estimate.
        let again =
            estimate_starts_with_arrivals(s, Some(&watch), ZERO, &replay, &RunModel::default())
                .unwrap();
        assert_eq!(again, foreseen);
    }

    #[test]
    fn a_replay_keeps_only_its_window_and_repeats_it_to_the_horizon() {
        let mut replay = Replay::new(10 * MINUTE_MS);
        for (at, id) in [(0, 1), (5, 2), (12, 3)] {
            replay.arrived(
                at * MINUTE_MS,
                &RequestRecord::new(id, "linux", 1, MINUTE_MS),
            );
        }
        // At 12 min the window is (2, 12]: r2 and r3, replayed at 15 and 22, 25 and 32, ...
        let at: Vec<u64> = replay
            .arrivals(12 * MINUTE_MS, 40 * MINUTE_MS)
            .map(|r| r.unwrap().at_ms / MINUTE_MS)
            .collect();
        assert_eq!(at, [15, 22, 25, 32, 35]);
        let ids: BTreeSet<u64> = replay
            .arrivals(12 * MINUTE_MS, 40 * MINUTE_MS)
            .map(|r| match r.unwrap().body {
                RecordBody::Request(q) => q.id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids.len(), 5, "fresh ids");
        assert!(ids.iter().all(|&id| id >= REPLAY_ID_BASE));
        assert_eq!(Replay::new(0).arrivals(0, 40 * MINUTE_MS).count(), 0);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut xs = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&mut xs, 0.5), 3.0);
        assert_eq!(quantile(&mut xs, 0.9), 5.0);
        assert_eq!(quantile(&mut [], 0.5), 0.0);
    }

    #[test]
    fn past_the_horizon_or_the_budget_a_start_is_only_later_than() {
        let mut s = scheduler(Policy::Fcfs, 1);
        for id in 1..=4 {
            submit(&mut s, 0, id, 1, 10 * MINUTE_MS);
        }
        poll(&mut s);
        let short = EtaConfig {
            horizon_ms: 15 * MINUTE_MS,
            ..ZERO
        };
        let starts = estimate_starts(s.clone(), None, short, &RunModel::default()).unwrap();
        assert_eq!(starts.of(RequestId(2)), Some(Eta::At(10 * MINUTE_MS)));
        assert_eq!(starts.of(RequestId(3)), Some(Eta::After(15 * MINUTE_MS)));
        assert_eq!(starts.of(RequestId(4)), Some(Eta::After(15 * MINUTE_MS)));
        // One instant only (r1's VM comes up at 0): the run stops before anyone starts.
        let one_step = EtaConfig {
            steps_max: 1,
            ..ZERO
        };
        let starts = estimate_starts(s, None, one_step, &RunModel::default()).unwrap();
        assert!(starts.reached_ms < 10 * MINUTE_MS);
        assert_eq!(starts.of(RequestId(2)), Some(Eta::After(starts.reached_ms)));
        assert_eq!(starts.steps, 1);
    }
}
