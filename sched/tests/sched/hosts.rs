//! Every host state change: probes, the circuit breaker, drain, resume, offline and removal,
//! with the events they emit, what happens to the VMs on the host, and the inputs refused.

use berth_sched::{
    Action, Cause, Event, Failure, FailureKind, HostId, HostState, Input, InputError, ProbeReport,
    Reason, RequestId, RequestSpec, RequestState, VmId, VmState,
};
use expect_test::expect;

use crate::support::{Tap, World, config, host, probe_ok};

fn probe_fail(id: u64) -> Input {
    Input::Probe {
        host: HostId(id),
        result: Err("ssh: connection timed out".into()),
    }
}

fn fail(kind: FailureKind) -> Result<(), Failure> {
    Err(Failure::new(kind, "disk full"))
}

/// Two ready hosts of 8 vCPUs and r1's two VMs (2 vCPUs each) running on h1.
fn two_hosts_running_r1() -> World {
    let mut w = World::new(config());
    w.ready_host(host(1, 8, 32));
    w.ready_host(host(2, 8, 32));
    let out = w.submit(RequestSpec::new(1, "linux", 2));
    assert_eq!(
        out.provisions(),
        vec![(VmId(1), HostId(1)), (VmId(2), HostId(1))]
    );
    w.bring_up(VmId(1));
    w.bring_up(VmId(2));
    w
}

#[test]
fn an_added_host_is_unknown_until_a_probe_says_ready() {
    let mut w = World::new(config());
    let spec = host(1, 8, 32);
    let out = w.input(Input::AddHost(spec.clone()));
    assert_eq!(
        out.events,
        vec![Event::Host {
            at_ms: 0,
            host: HostId(1),
            from: None,
            to: Some(HostState::Unknown),
            cause: Cause::HostAdded,
        }]
    );
    assert_eq!(w.host(1).state, HostState::Unknown);

    // An unprobed host counts for "could it ever fit", so the request waits rather than failing.
    let out = w.submit(RequestSpec::new(1, "linux", 1));
    assert!(out.provisions().is_empty());
    let why = w.s.why(RequestId(1)).unwrap();
    assert_eq!(why.reasons, vec![(Reason::HostUnknown, 1)]);
    assert_eq!(why.hosts_fit, 0);

    let out = w.at(10).input(probe_ok(&spec));
    assert!(out.events.contains(&Event::Host {
        at_ms: 10,
        host: HostId(1),
        from: Some(HostState::Unknown),
        to: Some(HostState::Ready),
        cause: Cause::ProbeOk,
    }));
    assert_eq!(out.provisions(), vec![(VmId(1), HostId(1))]);
    let h = w.host(1);
    assert_eq!(
        (h.state, h.last_probe_ms, h.probe_failures),
        (HostState::Ready, Some(10), 0)
    );
}

/// A daemon adds its configured hosts with a placeholder capacity (1 vCPU, 1 MiB: the probe
/// measures the real one): a request that arrives before the first probe waits for it, and
/// only the measured capacity decides whether it could ever fit.
#[test]
fn a_request_before_the_first_probe_waits_for_the_capacity_the_probe_measures() {
    let mut w = World::new(config());
    let mut spec = host(1, 1, 0);
    spec.memory_mib = 1;
    w.input(Input::AddHost(spec.clone()));
    let out = w.submit(RequestSpec::new(1, "linux", 1));
    assert_eq!(
        w.s.request(RequestId(1)).unwrap().state,
        RequestState::Waiting
    );
    assert!(out.provisions().is_empty());
    // A request no probe can help (a slot the host is not configured with) is refused at once.
    let out = w.submit(RequestSpec::new(2, "macos", 1));
    assert!(
        crate::support::log(&out.events).contains("r2 new -> rejected"),
        "{}",
        crate::support::log(&out.events)
    );

    let mut measured = spec.clone();
    (measured.vcpus, measured.memory_mib) = (8, 1024);
    let out = w.at(10).input(probe_ok(&measured));
    assert!(out.provisions().is_empty(), "{out:?}");
    let log = crate::support::log(&out.events);
    assert!(
        log.contains("r1 waiting -> rejected (no host could ever fit it"),
        "1 GiB cannot take 4 GiB: {log}"
    );
}

#[test]
fn failed_probes_put_the_host_in_error_and_its_vms_are_lost_and_replaced() {
    let mut w = two_hosts_running_r1();
    // probe_failures_max is 3: two failures in a row change nothing but the count.
    for t in [100, 200] {
        let out = w.at(t).input(probe_fail(1));
        assert!(out.events.is_empty() && out.actions.is_empty(), "{out:?}");
    }
    assert_eq!(w.host(1).probe_failures, 2);
    assert_eq!(w.host(1).state, HostState::Ready);

    let out = w.at(300).input(probe_fail(1));
    expect![[r#"
        h1 ready -> error (probe failed: ssh: connection timed out)
        vm1 r1@h1 running -> lost (host h1 lost)
        vm3 r1 new -> queued (retry of vm1)
        r1 active -> waiting (a vm went back to the queue)
        vm2 r1@h1 running -> lost (host h1 lost)
        vm4 r1 new -> queued (retry of vm2)
        vm3 r1@h2 queued -> placed (placed)
        vm4 r1@h2 queued -> placed (placed)
        r1 waiting -> active (all vms placed)
    "#]]
    .assert_eq(&out.log());
    // The lost VMs are destroyed on the sick host, best effort; the replacements go to h2.
    assert_eq!(
        out.destroys(),
        vec![(VmId(1), HostId(1)), (VmId(2), HostId(1))]
    );
    assert_eq!(
        out.provisions(),
        vec![(VmId(3), HostId(2)), (VmId(4), HostId(2))]
    );
    let h1 = w.host(1);
    assert_eq!((h1.cpu_used_milli, h1.memory_used_mib, h1.n_vms), (0, 0, 0));
    assert_eq!(w.vm_state(VmId(1)), None);

    // A late report about a lost VM is refused as unknown.
    assert_eq!(
        w.try_input(Input::JobFinished {
            vm: VmId(1),
            passed: true,
        })
        .unwrap_err(),
        InputError::UnknownVm(VmId(1))
    );

    // A successful probe brings the host back.
    let out = w.at(400).input(probe_ok(&host(1, 8, 32)));
    assert!(out.events.contains(&Event::Host {
        at_ms: 400,
        host: HostId(1),
        from: Some(HostState::Error),
        to: Some(HostState::Ready),
        cause: Cause::ProbeOk,
    }));
}

#[test]
fn a_successful_probe_resets_the_failure_count() {
    let mut w = two_hosts_running_r1();
    w.input(probe_fail(1));
    w.input(probe_fail(1));
    w.input(probe_ok(&host(1, 8, 32)));
    assert_eq!(w.host(1).probe_failures, 0);
    let out = w.input(probe_fail(1));
    assert!(out.events.is_empty());
    assert_eq!(w.host(1).state, HostState::Ready);
}

#[test]
fn lost_vms_beyond_the_retry_budget_fail_the_request() {
    let mut c = config();
    c.vm_retries_max = 1;
    let mut w = World::new(c);
    w.ready_host(host(1, 8, 32));
    w.ready_host(host(2, 8, 32));
    w.submit(RequestSpec::new(1, "linux", 2));
    w.bring_up(VmId(1));
    w.bring_up(VmId(2));

    let out = w.at(5).input(Input::Offline(HostId(1)));
    expect![[r#"
        h1 ready -> offline (taken offline by operator)
        vm1 r1@h1 running -> lost (host h1 lost)
        vm3 r1 new -> queued (retry of vm1)
        r1 active -> waiting (a vm went back to the queue)
        vm2 r1@h1 running -> lost (host h1 lost)
        vm3 r1@h2 queued -> placed (placed)
        r1 waiting -> active (all vms placed)
    "#]]
    .assert_eq(&out.log());

    // The replacement runs to the end; the request then fails, its budget spent.
    w.bring_up(VmId(3));
    let out = w.finish(VmId(3));
    assert_eq!(
        out.events.last(),
        Some(&Event::Request {
            at_ms: 5,
            request: RequestId(1),
            from: Some(RequestState::Active),
            to: RequestState::Failed,
            cause: Cause::RetriesExhausted,
        })
    );
}

#[test]
fn consecutive_provisioning_failures_trip_the_circuit_breaker() {
    let mut c = config();
    c.vm_retries_max = 10;
    let mut w = World::new(c);
    w.ready_host(host(1, 8, 32));
    w.submit(RequestSpec::new(1, "linux", 1));
    for n in 1..=2 {
        let out = w.input(Input::ProvisionDone {
            vm: VmId(1),
            result: fail(FailureKind::Transient),
        });
        // Retried on the same host (the only one), the failure counted against it.
        assert_eq!(out.provisions(), vec![(VmId(1), HostId(1))]);
        assert_eq!(w.host(1).provision_failures, n);
    }
    let out = w.input(Input::ProvisionDone {
        vm: VmId(1),
        result: fail(FailureKind::Host),
    });
    expect![[r#"
        vm1 r1 placed -> queued (provisioning failed: host failure: disk full)
        r1 active -> waiting (a vm went back to the queue)
        h1 ready -> error (3 provisioning failures in a row)
    "#]]
    .assert_eq(&out.log());
    assert!(out.provisions().is_empty());
    let why = w.s.why(RequestId(1)).unwrap();
    assert_eq!(why.reasons, vec![(Reason::HostError, 1)]);
    assert_eq!(
        why.named[&Reason::HostError],
        vec![w.host(1).name.to_owned()]
    );
}

#[test]
fn a_successful_provisioning_resets_the_circuit_breaker() {
    let mut w = World::new(config());
    w.ready_host(host(1, 8, 32));
    w.submit(RequestSpec::new(1, "linux", 1));
    w.submit(RequestSpec::new(2, "linux", 1));
    for _ in 0..2 {
        w.input(Input::ProvisionDone {
            vm: VmId(1),
            result: fail(FailureKind::Transient),
        });
    }
    assert_eq!(w.host(1).provision_failures, 2);
    w.input(Input::ProvisionDone {
        vm: VmId(2),
        result: Ok(()),
    });
    assert_eq!(w.host(1).provision_failures, 0);
    w.input(Input::ProvisionDone {
        vm: VmId(1),
        result: fail(FailureKind::Transient),
    });
    assert_eq!(w.host(1).state, HostState::Ready);
}

#[test]
fn a_request_failure_fails_the_request_not_the_host() {
    let mut w = World::new(config());
    w.ready_host(host(1, 8, 32));
    w.submit(RequestSpec::new(1, "linux", 2));
    let failure = Failure::new(FailureKind::Request, "template cannot boot");
    let out = w.input(Input::ProvisionDone {
        vm: VmId(1),
        result: Err(failure.clone()),
    });
    expect![[r#"
        vm1 r1 placed -> failed (provisioning failed: request failure: template cannot boot)
        vm2 r1@h1 placed -> releasing (provisioning failed: request failure: template cannot boot)
    "#]]
    .assert_eq(&out.log());
    assert_eq!(out.destroys(), vec![(VmId(2), HostId(1))]);
    let out = w.destroyed(VmId(2));
    assert_eq!(
        out.events.last(),
        Some(&Event::Request {
            at_ms: 0,
            request: RequestId(1),
            from: Some(RequestState::Active),
            to: RequestState::Failed,
            cause: Cause::ProvisionFailed(failure),
        })
    );
    let h = w.host(1);
    assert_eq!(
        (
            h.state,
            h.provision_failures,
            h.cpu_used_milli,
            h.provisioning
        ),
        (HostState::Ready, 0, 0, 0)
    );
}

#[test]
fn drain_takes_no_new_vms_and_becomes_maintenance_when_empty() {
    let mut w = two_hosts_running_r1();
    let out = w.at(10).input(Input::Drain(HostId(1)));
    assert_eq!(
        out.events,
        vec![Event::Host {
            at_ms: 10,
            host: HostId(1),
            from: Some(HostState::Ready),
            to: Some(HostState::Draining),
            cause: Cause::OperatorDrain,
        }]
    );
    // New work goes elsewhere even though pack would prefer the fuller h1.
    let out = w.submit(RequestSpec::new(2, "linux", 1));
    assert_eq!(out.provisions(), vec![(VmId(3), HostId(2))]);

    let out = w.finish(VmId(1));
    assert!(out.events.iter().all(|e| !matches!(e, Event::Host { .. })));
    let out = w.at(20).finish(VmId(2));
    assert!(out.events.contains(&Event::Host {
        at_ms: 20,
        host: HostId(1),
        from: Some(HostState::Draining),
        to: Some(HostState::Maintenance),
        cause: Cause::Drained,
    }));
    // Draining again is a no-op.
    let out = w.input(Input::Drain(HostId(1)));
    assert!(out.events.is_empty());
}

#[test]
fn draining_an_empty_host_goes_straight_to_maintenance() {
    let mut w = World::new(config());
    w.ready_host(host(1, 8, 32));
    let out = w.input(Input::Drain(HostId(1)));
    expect![[r#"
        h1 ready -> draining (drained by operator)
        h1 draining -> maintenance (last vm ended while draining)
    "#]]
    .assert_eq(&out.log());
}

#[test]
fn resume_puts_a_host_back_in_service() {
    let mut w = two_hosts_running_r1();
    // Draining → Ready.
    w.input(Input::Drain(HostId(1)));
    let out = w.input(Input::Resume(HostId(1)));
    expect![[r#"
        h1 draining -> ready (resumed by operator)
    "#]]
    .assert_eq(&out.log());
    // Maintenance → Ready, and the waiting work is placed on it.
    w.input(Input::Drain(HostId(2)));
    w.submit(RequestSpec::new(2, "linux", 2).tap(|r| {
        r.shape = Some(berth_sched::Shape {
            vcpus: 8,
            memory_mib: 1024,
        })
    }));
    assert_eq!(w.s.queue(), vec![RequestId(2)]);
    let out = w.input(Input::Resume(HostId(2)));
    expect![[r#"
        h2 maintenance -> ready (resumed by operator)
        vm3 r2@h2 queued -> placed (placed)
    "#]]
    .assert_eq(&out.log());
    // Resuming a ready host changes nothing.
    assert!(w.input(Input::Resume(HostId(2))).events.is_empty());
}

#[test]
fn resume_after_error_waits_for_a_probe() {
    let mut w = World::new(config());
    let spec = host(1, 8, 32);
    w.ready_host(spec.clone());
    for _ in 0..3 {
        w.input(probe_fail(1));
    }
    assert_eq!(w.host(1).state, HostState::Error);
    let out = w.input(Input::Resume(HostId(1)));
    expect![[r#"
        h1 error -> unknown (resumed by operator)
    "#]]
    .assert_eq(&out.log());
    assert_eq!(w.host(1).probe_failures, 0);
    w.input(probe_ok(&spec));
    assert_eq!(w.host(1).state, HostState::Ready);
}

#[test]
fn draining_a_host_in_error_puts_it_in_maintenance() {
    let mut w = World::new(config());
    w.ready_host(host(1, 8, 32));
    for _ in 0..3 {
        w.input(probe_fail(1));
    }
    let out = w.input(Input::Drain(HostId(1)));
    expect![[r#"
        h1 error -> maintenance (drained by operator)
    "#]]
    .assert_eq(&out.log());
    // Probes keep failing in maintenance without moving it.
    assert!(w.input(probe_fail(1)).events.is_empty());
}

/// r1's first VM, running on h1, lost at t=50.
fn r1_vm1_lost(cause: Cause) -> Event {
    Event::Vm {
        at_ms: 50,
        vm: VmId(1),
        request: RequestId(1),
        host: Some(HostId(1)),
        from: Some(VmState::Running),
        to: VmState::Lost,
        cause,
    }
}

#[test]
fn offline_loses_the_vms_at_once() {
    let mut w = two_hosts_running_r1();
    let out = w.at(50).input(Input::Offline(HostId(1)));
    assert_eq!(
        out.events[0],
        Event::Host {
            at_ms: 50,
            host: HostId(1),
            from: Some(HostState::Ready),
            to: Some(HostState::Offline),
            cause: Cause::OperatorOffline,
        }
    );
    let lost = Cause::HostLost {
        host: HostId(1),
        name: "h1".into(),
    };
    assert_eq!(out.events[1], r1_vm1_lost(lost));
    assert_eq!(
        out.destroys(),
        vec![(VmId(1), HostId(1)), (VmId(2), HostId(1))]
    );
    assert_eq!(
        out.provisions(),
        vec![(VmId(3), HostId(2)), (VmId(4), HostId(2))]
    );
    assert_eq!(w.host(1).n_vms, 0);
    // A drain leaves an offline host offline; a resume brings it back (it answered probes).
    w.at(60).input(Input::Drain(HostId(1)));
    assert_eq!(w.host(1).state, HostState::Offline);
    w.at(70).input(Input::Resume(HostId(1)));
    assert_eq!(w.host(1).state, HostState::Ready);
}

#[test]
fn a_vm_that_vanished_is_lost_and_replaced_without_blaming_its_host() {
    let mut w = two_hosts_running_r1();
    let out = w.at(50).input(Input::VmLost(VmId(1)));
    assert_eq!(out.events[0], r1_vm1_lost(Cause::Vanished));
    // Destroyed to be sure (gone is fine for a driver), replaced, and on the same host: it is
    // not to blame.
    assert_eq!(out.destroys(), vec![(VmId(1), HostId(1))]);
    assert_eq!(out.provisions(), vec![(VmId(3), HostId(1))]);
    assert_eq!(w.host(1).state, HostState::Ready);
    assert_eq!(w.host(1).provision_failures, 0);
    assert_eq!(w.vm_state(VmId(2)), Some(VmState::Running));
    // Once lost, it is unknown: a late completion or a second loss is refused.
    assert_eq!(
        w.try_input(Input::VmLost(VmId(1))).err(),
        Some(InputError::UnknownVm(VmId(1)))
    );
    // A VM not yet on a host cannot vanish from one.
    let out = w.submit(RequestSpec::new(2, "linux", 1));
    let (queued, _) = out.provisions()[0];
    assert!(matches!(
        w.try_input(Input::VmLost(queued)),
        Err(InputError::WrongState { .. })
    ));
}

#[test]
fn vanished_vms_beyond_the_retry_budget_fail_their_request() {
    let mut w = two_hosts_running_r1();
    // vm_retries_max is 2: two replacements, then the request fails.
    let mut vm = VmId(1);
    for replacement in [3, 4] {
        let out = w.input(Input::VmLost(vm));
        assert_eq!(out.provisions()[0].0, VmId(replacement));
        vm = VmId(replacement);
        w.bring_up(vm);
    }
    let out = w.input(Input::VmLost(vm));
    assert!(out.provisions().is_empty(), "no third replacement");
    let out = w.finish(VmId(2));
    expect![[r#"
        vm2 r1@h1 running -> releasing (job passed)
        vm2 r1 releasing -> done (destroyed)
        r1 active -> failed (retry budget exhausted)
    "#]]
    .assert_eq(&out.log());
}

#[test]
fn a_host_is_removed_only_when_it_holds_no_vms() {
    let mut w = two_hosts_running_r1();
    assert_eq!(
        w.try_input(Input::RemoveHost(HostId(1))).unwrap_err(),
        InputError::WrongState {
            what: "host h1".into(),
            state: "holding vms",
            input: "remove it (drain or offline it first)",
        }
    );
    assert!(w.s.host(HostId(1)).is_some());

    w.input(Input::Drain(HostId(1)));
    w.finish(VmId(1));
    w.finish(VmId(2));
    let out = w.at(70).input(Input::RemoveHost(HostId(1)));
    assert_eq!(
        out.events,
        vec![Event::Host {
            at_ms: 70,
            host: HostId(1),
            from: Some(HostState::Maintenance),
            to: None,
            cause: Cause::HostRemoved,
        }]
    );
    assert!(w.s.host(HostId(1)).is_none());
    assert_eq!(
        w.s.hosts().map(|h| h.id).collect::<Vec<_>>(),
        vec![HostId(2)]
    );
    assert_eq!(
        w.try_input(Input::Drain(HostId(1))).unwrap_err(),
        InputError::UnknownHost(HostId(1))
    );
    // The id and the name are free again.
    w.ready_host(host(1, 4, 8));
    assert_eq!(w.host(1).cpu_milli, 4000);
}

#[test]
fn removing_the_last_host_that_could_fit_rejects_what_waits_for_it() {
    let mut w = World::new(config());
    w.ready_host(host(1, 16, 64));
    w.ready_host(host(2, 4, 64));
    w.input(Input::Drain(HostId(1)));
    let big = RequestSpec::new(1, "linux", 1).tap(|r| {
        r.shape = Some(berth_sched::Shape {
            vcpus: 16,
            memory_mib: 1024,
        })
    });
    w.submit(big);
    assert_eq!(w.s.queue(), vec![RequestId(1)]);
    let out = w.input(Input::RemoveHost(HostId(1)));
    expect![[r#"
        h1 maintenance -> removed (host removed)
        vm1 r1 queued -> failed (no host could ever fit it: 1 × 16 vcpus, 1024 MiB of `linux`: 1 host has too few vcpus)
        r1 waiting -> rejected (no host could ever fit it: 1 × 16 vcpus, 1024 MiB of `linux`: 1 host has too few vcpus)
    "#]]
    .assert_eq(&out.log());
}

#[test]
fn a_probe_that_shrinks_a_busy_host_does_not_hide_the_room_on_other_hosts() {
    let mut c = config();
    c.policy = berth_sched::Policy::Greedy;
    let mut w = World::new(c);
    w.ready_host(host(1, 8, 32));
    w.ready_host(host(2, 4, 32));
    w.input(Input::Drain(HostId(2)));
    let out = w.submit(RequestSpec::new(1, "linux", 4));
    assert_eq!(out.provisions().len(), 4);
    assert!(out.provisions().iter().all(|&(_, h)| h == HostId(1)));
    w.input(Input::Resume(HostId(2)));
    // h1 turns out to have only 2 vCPUs: it is 6 over, and must not count as -6 against h2.
    w.input(Input::Probe {
        host: HostId(1),
        result: Ok(ProbeReport {
            vcpus: 2,
            memory_mib: 32 * 1024,
            images: Vec::new(),
        }),
    });
    let out = w.submit(RequestSpec::new(2, "linux", 1));
    assert_eq!(out.provisions(), vec![(VmId(5), HostId(2))]);
}

#[test]
fn refused_host_inputs_name_what_was_wrong() {
    let mut w = World::new(config());
    w.ready_host(host(1, 8, 32));
    let mut same_name = host(2, 8, 32);
    same_name.name = "h1".into();
    let mut no_cpu = host(3, 8, 32);
    no_cpu.vcpus = 0;
    let mut no_overcommit = host(4, 8, 32);
    no_overcommit.cpu_overcommit_milli = 0;
    let mut overflowing = host(6, 8, 32);
    overflowing.vcpus = u32::MAX;
    overflowing.cpu_overcommit_milli = u32::MAX;
    let mut too_many_slot_kinds = host(5, 8, 32);
    too_many_slot_kinds.slots = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|k| ((*k).to_owned(), 1))
        .collect();
    let cases = [
        (
            Input::AddHost(host(1, 4, 4)),
            InputError::DuplicateHost(HostId(1)),
        ),
        (
            Input::AddHost(same_name),
            InputError::DuplicateHostName("h1".into()),
        ),
        (
            Input::AddHost(no_cpu),
            InputError::Invalid {
                field: "vcpus",
                reason: "must be 1 to 65536, got 0".into(),
            },
        ),
        (
            Input::AddHost(no_overcommit),
            InputError::Invalid {
                field: "cpu_overcommit_milli",
                reason: "must be 1 to 100000, got 0".into(),
            },
        ),
        (
            Input::AddHost(overflowing),
            InputError::Invalid {
                field: "vcpus",
                reason: format!("must be 1 to 65536, got {}", u32::MAX),
            },
        ),
        (
            Input::AddHost(too_many_slot_kinds),
            InputError::Invalid {
                field: "slots",
                reason: "a fleet counts at most 4 slot kinds".into(),
            },
        ),
        (probe_fail(9), InputError::UnknownHost(HostId(9))),
        (
            Input::Probe {
                host: HostId(1),
                result: Ok(ProbeReport {
                    vcpus: 0,
                    memory_mib: 1,
                    images: Vec::new(),
                }),
            },
            InputError::Invalid {
                field: "probe",
                reason: "host h1 reported a capacity out of range: field `vcpus`: must be 1 to 65536, got 0".into(),
            },
        ),
        (Input::Drain(HostId(9)), InputError::UnknownHost(HostId(9))),
        (Input::Resume(HostId(9)), InputError::UnknownHost(HostId(9))),
        (
            Input::Offline(HostId(9)),
            InputError::UnknownHost(HostId(9)),
        ),
        (
            Input::RemoveHost(HostId(9)),
            InputError::UnknownHost(HostId(9)),
        ),
    ];
    for (input, expected) in cases {
        let shown = format!("{input:?}");
        assert_eq!(w.try_input(input).unwrap_err(), expected, "{shown}");
        // A refused input changes nothing: nothing to hand out, the fleet as it was.
        let out = w.poll();
        assert!(out.events.is_empty() && out.actions.is_empty(), "{shown}");
        assert_eq!(w.s.hosts().count(), 1);
        assert_eq!(w.host(1).state, HostState::Ready);
    }
    assert_eq!(
        InputError::DuplicateHostName("h1".into()).to_string(),
        "a host named `h1` exists already"
    );
}

#[test]
fn every_vm_on_an_error_host_ends_even_one_being_destroyed() {
    let mut w = two_hosts_running_r1();
    w.input(Input::JobFinished {
        vm: VmId(1),
        passed: true,
    });
    assert_eq!(w.vm_state(VmId(1)), Some(VmState::Releasing));
    let out = w.input(Input::Offline(HostId(1)));
    // vm1 had finished its job: it ends done, no replacement; vm2 is lost and replaced.
    let ends: Vec<String> = out
        .events
        .iter()
        .filter(|e| matches!(e, Event::Vm { to, .. } if to.is_terminal()))
        .map(crate::support::show)
        .collect();
    assert_eq!(
        ends,
        vec![
            "vm1 r1@h1 releasing -> done (host h1 lost)",
            "vm2 r1@h1 running -> lost (host h1 lost)",
        ]
    );
    assert!(
        out.actions
            .iter()
            .any(|a| matches!(a, Action::Provision { vm: VmId(3), .. }))
    );
}
