//! Warm pools: a pool fills from spare capacity, a request that fits a warm VM takes it at once
//! and the pool refills, warm VMs give way to a request nothing else fits and to a drain, and
//! over random inputs no host is over capacity, no pool exceeds its size, and replays agree.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use berth_sched::{
    Action, Cause, Config, Event, HostId, HostSpec, Input, Label, RequestId, RequestSpec,
    Scheduler, Shape, Template, VmId, VmState, Warm,
};
use proptest::prelude::*;

use crate::support::{GIB, Polled, Tap, World, host, linux};

/// A 4-vCPU template that no pool keeps.
fn big() -> Template {
    let mut t = Template::new(
        "big",
        Shape {
            vcpus: 4,
            memory_mib: 8 * GIB,
        },
    );
    t.base_image = "big-base".into();
    t
}

fn warm_config(count: u32) -> Config {
    Config {
        templates: vec![linux(), big()],
        warm: vec![Warm {
            template: "linux".into(),
            class: "kvm".into(),
            count,
            shape: None,
        }],
        ..Config::default()
    }
}

/// A simulated host of class `kvm`.
fn kvm(id: u64, vcpus: u32) -> HostSpec {
    host(id, vcpus, 64).tap(|h| h.labels = vec![Label::new("class", "kvm")])
}

/// Warm VMs the output asked to provision.
fn warm_provisions(out: &Polled) -> Vec<VmId> {
    out.actions
        .iter()
        .filter_map(|a| match a {
            Action::Provision { vm, request, .. } if *request == RequestId::WARM_POOL => Some(*vm),
            _ => None,
        })
        .collect()
}

fn handovers(out: &Polled) -> Vec<(VmId, VmId, RequestId)> {
    out.actions
        .iter()
        .filter_map(|a| match a {
            Action::Handover {
                vm, warm, request, ..
            } => Some((*vm, *warm, *request)),
            _ => None,
        })
        .collect()
}

/// A world with one `kvm` host of `vcpus` whose pool of `count` is booted and idle.
fn warm_world(vcpus: u32, count: u32) -> (World, Vec<VmId>) {
    let mut w = World::new(warm_config(count));
    let out = w.ready_host(kvm(1, vcpus));
    let warm = warm_provisions(&out);
    assert_eq!(warm.len(), count as usize, "the pool fills at once");
    for &vm in &warm {
        w.bring_up(vm);
    }
    assert_eq!(w.s.warm_pools()[0].idle, count);
    (w, warm)
}

#[test]
fn a_request_that_fits_takes_a_warm_vm_at_once_and_the_pool_refills() {
    let (mut w, warm) = warm_world(16, 2);
    let out = w.at(1_000).submit(RequestSpec::new(7, "linux", 1));
    let handed = handovers(&out);
    assert_eq!(handed.len(), 1, "{:?}", out.actions);
    let (vm, from, request) = handed[0];
    assert_eq!(
        (from, request),
        (warm[0], RequestId(7)),
        "the oldest idle VM goes"
    );
    assert!(
        !out.actions
            .iter()
            .any(|a| matches!(a, Action::Provision { request, .. } if *request == RequestId(7))),
        "nothing is provisioned for the request"
    );
    assert_eq!(w.vm_state(vm), Some(VmState::Booting));
    assert_eq!(
        w.vm_state(from),
        None,
        "the warm VM is gone: the request's VM took its place"
    );
    // The pool refills at once from the room left.
    let refill = warm_provisions(&out);
    assert_eq!(refill.len(), 1);
    let out = w
        .at(2_000)
        .input(Input::HandoverDone { vm, result: Ok(()) });
    assert!(out.events.iter().any(|e| matches!(
        e,
        Event::Vm { vm: v, to: VmState::Running, .. } if *v == vm
    )));
    // Three VMs of 2 vCPUs on the host: the handed one and two warm.
    assert_eq!(w.host(1).cpu_used_milli, 6_000);
    let pool = &w.s.warm_pools()[0];
    assert_eq!((pool.live, pool.idle, pool.handovers), (2, 1, 1));
    // A handover is confirmed once: a second report is refused, as is one for a warm VM.
    assert!(
        w.try_input(Input::HandoverDone { vm, result: Ok(()) })
            .is_err()
    );
    assert!(
        w.try_input(Input::HandoverDone {
            vm: warm[1],
            result: Ok(())
        })
        .is_err()
    );
}

#[test]
fn a_request_another_warm_vm_does_not_fit_is_placed_as_usual() {
    let (mut w, _) = warm_world(16, 2);
    let other_shape = RequestSpec::new(1, "linux", 1).tap(|r| {
        r.shape = Some(Shape {
            vcpus: 4,
            memory_mib: 4 * GIB,
        })
    });
    let out = w.submit(other_shape);
    assert!(handovers(&out).is_empty());
    assert_eq!(out.provisions().len(), 1);
    let labelled =
        RequestSpec::new(2, "linux", 1).tap(|r| r.labels = vec![Label::new("gpu", "yes")]);
    let out = w.submit(labelled);
    assert!(
        handovers(&out).is_empty(),
        "the warm VM's host lacks the label"
    );
    assert_eq!(w.s.warm_pools()[0].idle, 2);
}

#[test]
fn a_request_waits_for_a_warm_vm_that_boots_and_takes_it_then() {
    let mut w = World::new(warm_config(1));
    let out = w.ready_host(kvm(1, 2));
    let warm = warm_provisions(&out);
    assert_eq!(warm.len(), 1);
    // The host is full with the warm VM provisioning: the request waits, and is not given a
    // VM that is not up yet.
    let out = w.at(10).submit(RequestSpec::new(1, "linux", 1));
    assert!(handovers(&out).is_empty() && out.provisions().is_empty());
    let out = w.at(20).bring_up(warm[0]);
    assert_eq!(handovers(&out).len(), 1, "{:?}", out.actions);
}

#[test]
fn a_handover_passes_a_blocked_head_even_under_fcfs() {
    let mut w = World::new(warm_config(1).tap(|c| c.policy = berth_sched::Policy::Fcfs));
    // h1 (class kvm, 2 vCPUs) holds the warm VM; h2 (4 vCPUs) runs a big job.
    let warm = warm_provisions(&w.ready_host(kvm(1, 2)));
    w.bring_up(warm[0]);
    w.ready_host(host(2, 4, 64));
    let (job, _) = w.submit(RequestSpec::new(1, "big", 1)).provisions()[0];
    w.bring_up(job);
    // The head waits for h2; the warm VM cannot make room for it (h1 is too small).
    let out = w.at(10).submit(RequestSpec::new(2, "big", 1));
    assert!(out.provisions().is_empty() && out.destroys().is_empty());
    // Strict FCFS starts nothing behind the head, but a handover takes no capacity from it.
    let out = w.at(20).submit(RequestSpec::new(3, "linux", 1));
    assert_eq!(handovers(&out).len(), 1, "{:?}", out.actions);
}

#[test]
fn warm_vms_make_room_for_a_waiting_request_that_nothing_else_fits() {
    // Four warm VMs of 2 vCPUs fill the 8-vCPU host.
    let (mut w, warm) = warm_world(8, 4);
    let out = w.at(100).submit(RequestSpec::new(1, "big", 1));
    assert!(out.provisions().is_empty());
    let destroyed: Vec<VmId> = out.destroys().into_iter().map(|(vm, _)| vm).collect();
    assert_eq!(
        destroyed,
        warm[..2],
        "the two oldest make room for 4 vCPUs, no more"
    );
    assert!(out.events.iter().any(|e| matches!(
        e,
        Event::Vm {
            cause: Cause::WarmEvicted,
            ..
        }
    )));
    // Nothing more is destroyed while that room is on its way.
    let out = w.at(200).tick_at(200);
    assert!(out.destroys().is_empty());
    w.destroyed(warm[0]);
    let out = w.at(300).destroyed(warm[1]);
    assert_eq!(out.provisions().len(), 1, "the request takes the room");
    assert!(
        warm_provisions(&out).is_empty(),
        "no room is left to refill the pool"
    );
    assert_eq!(w.host(1).cpu_used_milli, 8_000);
    assert_eq!(w.s.warm_pools()[0].live, 2);
}

#[test]
fn a_drain_destroys_idle_warm_vms_first() {
    let (mut w, warm) = warm_world(16, 2);
    let out = w.submit(RequestSpec::new(1, "big", 1));
    let (job, _) = out.provisions()[0];
    w.bring_up(job);
    let out = w.at(50).input(Input::Drain(HostId(1)));
    let destroyed: BTreeSet<VmId> = out.destroys().into_iter().map(|(vm, _)| vm).collect();
    assert_eq!(destroyed, warm.iter().copied().collect());
    assert_eq!(w.vm_state(job), Some(VmState::Running), "the job runs on");
    assert!(
        warm_provisions(&out).is_empty(),
        "a draining host gets no new warm VMs"
    );
}

#[test]
fn without_a_pool_nothing_is_kept_warm() {
    let mut w = World::new(warm_config(0).tap(|c| c.warm.clear()));
    let out = w.ready_host(kvm(1, 16));
    assert!(out.actions.is_empty());
    assert!(w.s.warm_pools().is_empty());
}

#[test]
fn a_request_may_not_take_the_pools_id() {
    let mut w = World::new(warm_config(1));
    let refused = w.try_input(Input::Submit(RequestSpec::new(u64::MAX, "linux", 1)));
    assert!(refused.is_err(), "{refused:?}");
}

#[derive(Clone, Debug)]
enum Op {
    AddHost { vcpus: u32, kvm: bool },
    Submit { big: bool, count: u32 },
    Step { pick: usize },
    Drain { host: usize },
    Resume { host: usize },
    Offline { host: usize },
    Advance { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (prop_oneof![Just(2u32), Just(4), Just(8), Just(16)], any::<bool>())
            .prop_map(|(vcpus, kvm)| Op::AddHost { vcpus, kvm }),
        4 => (any::<bool>(), 1u32..=3).prop_map(|(big, count)| Op::Submit { big, count }),
        8 => any::<usize>().prop_map(|pick| Op::Step { pick }),
        1 => any::<usize>().prop_map(|host| Op::Drain { host }),
        1 => any::<usize>().prop_map(|host| Op::Resume { host }),
        1 => any::<usize>().prop_map(|host| Op::Offline { host }),
        1 => (1u64..=60_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// Runs the ops on a scheduler with a pool of `count`, checking the invariants after every
/// input; returns the log of everything that came out.
fn run(ops: &[Op], count: u32, policy: u8) -> String {
    run_restoring(ops, count, policy, None)
}

/// `run`, with the scheduler replaced after op `restore_at` by one restored from its snapshot.
fn run_restoring(ops: &[Op], count: u32, policy: u8, restore_at: Option<usize>) -> String {
    let mut config = warm_config(count);
    config.policy = [
        berth_sched::Policy::Fcfs,
        berth_sched::Policy::Easy,
        berth_sched::Policy::Greedy,
    ][usize::from(policy % 3)];
    let mut s = Scheduler::new(config);
    let (mut now, mut n_hosts, mut n_requests) = (0u64, 0u64, 0u64);
    let mut handing: BTreeSet<VmId> = BTreeSet::new();
    let mut log = String::new();
    for (i, op) in ops.iter().enumerate() {
        if restore_at == Some(i) {
            let bytes = s.snapshot().expect("a quiescent scheduler");
            let restored = Scheduler::restore(s.config().clone(), &bytes).expect("restored");
            assert_eq!(restored.state_digest(), s.state_digest());
            s = restored;
        }
        let input = match *op {
            Op::AddHost { vcpus, kvm: k } => {
                n_hosts += 1;
                let spec = if k {
                    kvm(n_hosts, vcpus)
                } else {
                    host(n_hosts, vcpus, 64)
                };
                let probe = crate::support::probe_ok(&spec);
                let _ = s.handle(now, Input::AddHost(spec));
                probe
            }
            Op::Submit { big, count } => {
                n_requests += 1;
                let t = if big { "big" } else { "linux" };
                Input::Submit(RequestSpec::new(n_requests, t, count))
            }
            Op::Step { pick } => {
                let vms: Vec<_> = s.vms().into_iter().filter(|v| v.host.is_some()).collect();
                if vms.is_empty() {
                    continue;
                }
                let v = &vms[pick % vms.len()];
                let vm = v.id;
                match v.state {
                    VmState::Placed | VmState::Provisioning => {
                        Input::ProvisionDone { vm, result: Ok(()) }
                    }
                    VmState::Booting if handing.remove(&vm) => {
                        Input::HandoverDone { vm, result: Ok(()) }
                    }
                    VmState::Booting => Input::BootDone { vm, result: Ok(()) },
                    VmState::Running if v.request != RequestId::WARM_POOL => {
                        Input::JobFinished { vm, passed: true }
                    }
                    VmState::Releasing => Input::DestroyDone { vm, result: Ok(()) },
                    _ => continue,
                }
            }
            Op::Drain { host } => Input::Drain(HostId(1 + host as u64 % n_hosts.max(1))),
            Op::Resume { host } => Input::Resume(HostId(1 + host as u64 % n_hosts.max(1))),
            Op::Offline { host } => Input::Offline(HostId(1 + host as u64 % n_hosts.max(1))),
            Op::Advance { ms } => {
                now += ms;
                Input::Tick
            }
        };
        let shown = format!("{input:?}");
        let result = s.handle(now, input);
        let _ = writeln!(log, "@{now} {shown} = {result:?}");
        while let Some(a) = s.poll_action() {
            if let Action::Handover { vm, .. } = a {
                handing.insert(vm);
            }
            let _ = writeln!(log, "{a:?}");
        }
        while let Some(e) = s.poll_event() {
            let _ = writeln!(log, "{e:?}");
        }
        check(&s, count);
    }
    log
}

/// No host holds more than its capacity, and what it holds is its VMs' shapes (a warm VM's is
/// its template's default); no pool has more VMs than its size.
fn check(s: &Scheduler, count: u32) {
    let mut used: BTreeMap<HostId, i64> = BTreeMap::new();
    let mut warm_live = 0;
    for v in s.vms() {
        let Some(h) = v.host else { continue };
        let vcpus = if v.request == RequestId::WARM_POOL {
            if v.state != VmState::Releasing {
                warm_live += 1;
            }
            2
        } else {
            s.request(v.request)
                .expect("a live vm's request is live")
                .shape
                .vcpus
        };
        *used.entry(h).or_default() += i64::from(vcpus) * 1000;
    }
    for h in s.hosts() {
        let u = used.get(&h.id).copied().unwrap_or(0);
        assert_eq!(h.cpu_used_milli, u, "{}: used is its vms' sum", h.name);
        assert!(u <= h.cpu_milli, "{}: {u} of {}", h.name, h.cpu_milli);
    }
    let pools = s.warm_pools();
    assert!(pools[0].live <= count, "{pools:?}");
    assert_eq!(pools[0].live, warm_live, "the pool counts its own vms");
    assert!(pools[0].idle <= pools[0].live);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn warm_pools_never_overfill_a_host_or_themselves_and_replay_alike(
        ops in prop::collection::vec(op(), 1..120),
        count in 1u32..=4,
        policy in 0u8..3,
    ) {
        let first = run(&ops, count, policy);
        let second = run(&ops, count, policy);
        prop_assert_eq!(first, second);
    }

    /// A scheduler restored from a snapshot between two inputs goes on with its pools as the
    /// one that was never interrupted.
    #[test]
    fn warm_pools_survive_a_snapshot_and_restore(
        ops in prop::collection::vec(op(), 1..120),
        count in 1u32..=4,
        policy in 0u8..3,
        at in any::<usize>(),
    ) {
        let straight = run(&ops, count, policy);
        let restored = run_restoring(&ops, count, policy, Some(at % ops.len()));
        prop_assert_eq!(straight, restored);
    }
}

/// The random inputs above do reach what they are meant to test: handovers, refills after
/// them, and warm VMs destroyed for room and by drains.
#[test]
fn the_random_inputs_reach_handovers_and_evictions() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = (prop::collection::vec(op(), 60..120), 1u32..=4, 0u8..3);
    let (mut handed, mut evicted, mut drained) = (0, 0, 0);
    for _ in 0..64 {
        let (ops, count, policy) = strategy.new_tree(&mut runner).expect("a case").current();
        let log = run(&ops, count, policy);
        handed += log.matches("Handover {").count();
        evicted += log.matches("WarmEvicted").count();
        drained += log.matches("OperatorDrain").count();
    }
    assert!(
        handed > 0 && evicted > 0 && drained > 0,
        "handovers {handed}, evictions {evicted}, drains {drained}"
    );
}
