//! Estimated starts of waiting requests: a copy of the scheduler run forward with no new
//! arrivals, as the daemon's drain forecast does ([`Simulation::from_scheduler`]). Running VMs
//! end when the scheduler expects them to, VMs placed on the way run for their request's
//! expected run time, provisioning and boot take the latency model's times, and the unchanged
//! scheduler decides who starts when, under whatever policy and fair share it runs.
//!
//! The run is bounded: it stops at a horizon or after a number of simulated instants, whichever
//! comes first, and a request that has not started by then gets "later than" the time the run
//! reached instead of an estimate. Requests that arrive later are not foreseen: one that
//! arrives with a higher priority (or from an account further below its share) starts before a
//! request that waits now, and makes that request's start later than estimated.

use std::collections::{BTreeMap, BTreeSet};

use berth_sched::{RequestId, RequestState, Scheduler};

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
            ..SimConfig::default()
        },
    );
    let steps_before = sim.steps();
    let until_ms = from_ms.saturating_add(config.horizon_ms);
    let (placed, reached_ms) = sim.run_to_starts(watched.clone(), until_ms, config.steps_max)?;
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
            policy,
            templates: vec![t],
            ..Config::default()
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
        let starts = estimate_starts(s, None, ZERO).unwrap();
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
        let starts = estimate_starts(s, Some(&[RequestId(3), RequestId(2)]), ZERO).unwrap();
        assert_eq!(starts.of(RequestId(3)), Some(Eta::At(35 * MINUTE_MS)));
        assert_eq!(starts.of(RequestId(2)), None);
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
        let starts = estimate_starts(s.clone(), None, short).unwrap();
        assert_eq!(starts.of(RequestId(2)), Some(Eta::At(10 * MINUTE_MS)));
        assert_eq!(starts.of(RequestId(3)), Some(Eta::After(15 * MINUTE_MS)));
        assert_eq!(starts.of(RequestId(4)), Some(Eta::After(15 * MINUTE_MS)));
        // One instant only (r1's VM comes up at 0): the run stops before anyone starts.
        let one_step = EtaConfig {
            steps_max: 1,
            ..ZERO
        };
        let starts = estimate_starts(s, None, one_step).unwrap();
        assert!(starts.reached_ms < 10 * MINUTE_MS);
        assert_eq!(starts.of(RequestId(2)), Some(Eta::After(starts.reached_ms)));
        assert_eq!(starts.steps, 1);
    }
}
