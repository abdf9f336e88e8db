//! A VM's life from the queue to its end: provisioning, boot, job, destroy, the failures and
//! retries on the way, cancellation, the lazy placement pass, and the inputs refused.

use berth_sched::{
    Action, Blocker, Cause, Event, Failure, FailureKind, HostId, Input, InputError, RequestId,
    RequestSpec, RequestState, Shape, VmId, VmState,
};
use expect_test::expect;

use crate::support::{Tap, World, config, host, show};

fn one_host() -> World {
    let mut w = World::new(config());
    w.ready_host(host(1, 8, 32));
    w
}

#[test]
fn a_vm_walks_from_the_queue_to_done() {
    let mut w = one_host();
    let mut trail = String::new();
    let mut step = |w: &mut World, t: u64, input: Input| {
        let out = w.at(t).input(input);
        trail.push_str(&out.log());
        out
    };
    let out = step(&mut w, 1, Input::Submit(RequestSpec::new(1, "linux", 1)));
    assert_eq!(
        out.actions,
        vec![Action::Provision {
            vm: VmId(1),
            request: RequestId(1),
            host: HostId(1),
            spec: berth_sched::VmSpec {
                template: "linux".into(),
                base_image: "linux-base".into(),
                guest_os: berth_sched::GuestOs::Linux,
                shape: Shape {
                    vcpus: 2,
                    memory_mib: 4096,
                },
            },
        }]
    );
    assert_eq!(w.host(1).cpu_used_milli, 2000);
    assert_eq!(w.host(1).provisioning, 1);
    step(&mut w, 2, Input::ProvisionStarted(VmId(1)));
    step(
        &mut w,
        3,
        Input::ProvisionDone {
            vm: VmId(1),
            result: Ok(()),
        },
    );
    // Provisioned: the host's provisioning turn is free again, the capacity still held.
    assert_eq!(w.host(1).provisioning, 0);
    step(
        &mut w,
        4,
        Input::BootDone {
            vm: VmId(1),
            result: Ok(()),
        },
    );
    let out = step(
        &mut w,
        5,
        Input::JobFinished {
            vm: VmId(1),
            passed: true,
        },
    );
    assert_eq!(
        out.actions,
        vec![Action::Destroy {
            vm: VmId(1),
            host: HostId(1),
        }]
    );
    assert_eq!(w.host(1).cpu_used_milli, 2000);
    let out = step(
        &mut w,
        6,
        Input::DestroyDone {
            vm: VmId(1),
            result: Ok(()),
        },
    );
    assert_eq!(
        out.events[0],
        Event::Vm {
            at_ms: 6,
            vm: VmId(1),
            request: RequestId(1),
            host: None,
            from: Some(VmState::Releasing),
            to: VmState::Done,
            cause: Cause::Destroyed,
        }
    );
    expect![[r#"
        r1 new -> waiting (submitted)
        vm1 r1 new -> queued (submitted)
        vm1 r1@h1 queued -> placed (placed)
        r1 waiting -> active (all vms placed)
        vm1 r1@h1 placed -> provisioning (provisioning started)
        vm1 r1@h1 provisioning -> booting (provisioned)
        vm1 r1@h1 booting -> running (booted)
        vm1 r1@h1 running -> releasing (job passed)
        vm1 r1 releasing -> done (destroyed)
        r1 active -> done (all vms ended)
    "#]]
    .assert_eq(&trail);
    let h = w.host(1);
    assert_eq!((h.cpu_used_milli, h.memory_used_mib, h.n_vms), (0, 0, 0));
    assert_eq!((w.s.n_vms(), w.s.n_requests()), (0, 0));
}

#[test]
fn provisioning_may_finish_without_a_start_report() {
    let mut w = one_host();
    w.submit(RequestSpec::new(1, "linux", 1));
    let out = w.input(Input::ProvisionDone {
        vm: VmId(1),
        result: Ok(()),
    });
    expect![[r#"
        vm1 r1@h1 placed -> booting (provisioned)
    "#]]
    .assert_eq(&out.log());
}

#[test]
fn a_failed_boot_destroys_the_vm_and_queues_it_again() {
    let mut w = one_host();
    w.submit(RequestSpec::new(1, "linux", 1));
    w.input(Input::ProvisionDone {
        vm: VmId(1),
        result: Ok(()),
    });
    let out = w.input(Input::BootDone {
        vm: VmId(1),
        result: Err(Failure::new(FailureKind::Transient, "no ip after 120 s")),
    });
    assert_eq!(out.destroys(), vec![(VmId(1), HostId(1))]);
    let out2 = w.destroyed(VmId(1));
    expect![[r#"
        vm1 r1@h1 booting -> releasing (boot failed: transient failure: no ip after 120 s)
        --
        vm1 r1 releasing -> queued (destroyed)
        r1 active -> waiting (a vm went back to the queue)
        vm1 r1@h1 queued -> placed (placed)
        r1 waiting -> active (all vms placed)
    "#]]
    .assert_eq(&format!("{}--\n{}", out.log(), out2.log()));
    // The same VM is provisioned again.
    assert_eq!(out2.provisions(), vec![(VmId(1), HostId(1))]);
    assert_eq!(w.host(1).provision_failures, 1);
}

#[test]
fn boot_failures_past_the_retry_budget_fail_the_vm_and_the_request() {
    let mut c = config();
    c.vm_retries_max = 1;
    c.provision_failures_max = 10;
    let mut w = World::new(c);
    w.ready_host(host(1, 8, 32));
    w.submit(RequestSpec::new(1, "linux", 1));
    let boot_fails = |w: &mut World| {
        w.input(Input::ProvisionDone {
            vm: VmId(1),
            result: Ok(()),
        });
        w.input(Input::BootDone {
            vm: VmId(1),
            result: Err(Failure::new(FailureKind::Host, "kernel panic")),
        });
        w.destroyed(VmId(1))
    };
    let first = boot_fails(&mut w);
    assert_eq!(first.provisions().len(), 1);
    let second = boot_fails(&mut w);
    expect![[r#"
        vm1 r1 releasing -> failed (destroyed)
        r1 active -> failed (retry budget exhausted)
    "#]]
    .assert_eq(&second.log());
    assert!(second.provisions().is_empty());
}

#[test]
fn a_request_boot_failure_fails_the_request_without_retry() {
    let mut w = one_host();
    w.submit(RequestSpec::new(1, "linux", 1));
    w.input(Input::ProvisionDone {
        vm: VmId(1),
        result: Ok(()),
    });
    let failure = Failure::new(FailureKind::Request, "bad kernel args");
    w.input(Input::BootDone {
        vm: VmId(1),
        result: Err(failure.clone()),
    });
    let out = w.destroyed(VmId(1));
    assert_eq!(
        out.events,
        vec![
            Event::Vm {
                at_ms: 0,
                vm: VmId(1),
                request: RequestId(1),
                host: None,
                from: Some(VmState::Releasing),
                to: VmState::Failed,
                cause: Cause::Destroyed,
            },
            Event::Request {
                at_ms: 0,
                request: RequestId(1),
                from: Some(RequestState::Active),
                to: RequestState::Failed,
                cause: Cause::BootFailed(failure),
            },
        ]
    );
    assert_eq!(w.host(1).provision_failures, 0);
}

#[test]
fn a_provisioning_failure_with_no_budget_fails_the_request() {
    let mut c = config();
    c.vm_retries_max = 0;
    let mut w = World::new(c);
    w.ready_host(host(1, 8, 32));
    w.submit(RequestSpec::new(1, "linux", 1));
    let out = w.input(Input::ProvisionDone {
        vm: VmId(1),
        result: Err(Failure::new(FailureKind::Transient, "timeout")),
    });
    expect![[r#"
        vm1 r1 placed -> failed (provisioning failed: transient failure: timeout)
        r1 active -> failed (retry budget exhausted)
    "#]]
    .assert_eq(&out.log());
    assert_eq!(w.host(1).cpu_used_milli, 0);
}

#[test]
fn a_failed_job_without_a_breakpoint_is_destroyed() {
    let mut w = one_host();
    w.submit(RequestSpec::new(1, "linux", 1));
    w.bring_up(VmId(1));
    let out = w.input(Input::JobFinished {
        vm: VmId(1),
        passed: false,
    });
    expect![[r#"
        vm1 r1@h1 running -> releasing (job failed)
    "#]]
    .assert_eq(&out.log());
    assert_eq!(out.destroys(), vec![(VmId(1), HostId(1))]);
}

#[test]
fn a_failed_destroy_is_retried_and_counted_against_the_host() {
    let mut w = one_host();
    w.submit(RequestSpec::new(1, "linux", 1));
    w.bring_up(VmId(1));
    w.input(Input::JobFinished {
        vm: VmId(1),
        passed: true,
    });
    let out = w.input(Input::DestroyDone {
        vm: VmId(1),
        result: Err(Failure::new(FailureKind::Transient, "domain busy")),
    });
    expect![[r#"
        vm1 r1@h1 releasing -> releasing (destroy failed: transient failure: domain busy)
    "#]]
    .assert_eq(&out.log());
    assert_eq!(out.destroys(), vec![(VmId(1), HostId(1))]);
    assert_eq!(w.host(1).provision_failures, 1);
    w.destroyed(VmId(1));
    assert_eq!(w.host(1).cpu_used_milli, 0);
}

#[test]
fn cancel_ends_queued_vms_now_and_placed_ones_after_their_destroy() {
    let mut w = World::new(config());
    w.ready_host(host(1, 4, 32));
    w.submit(RequestSpec::new(1, "linux", 3));
    w.bring_up(VmId(1));
    let out = w.at(9).input(Input::Cancel(RequestId(1)));
    expect![[r#"
        vm3 r1 queued -> cancelled (cancelled)
        vm1 r1@h1 running -> releasing (cancelled)
        vm2 r1@h1 placed -> releasing (cancelled)
        r1 waiting -> active (cancelled)
    "#]]
    .assert_eq(&out.log());
    assert_eq!(
        out.destroys(),
        vec![(VmId(1), HostId(1)), (VmId(2), HostId(1))]
    );
    // Until its VMs are gone the request is no longer waiting, but not yet ended.
    assert_eq!(
        w.s.request(RequestId(1)).unwrap().state,
        RequestState::Active
    );
    assert!(w.s.queue().is_empty());
    // Cancelling again changes nothing.
    assert!(w.input(Input::Cancel(RequestId(1))).events.is_empty());
    w.destroyed(VmId(1));
    let out = w.destroyed(VmId(2));
    expect![[r#"
        vm2 r1 releasing -> cancelled (destroyed)
        r1 active -> cancelled (cancelled)
    "#]]
    .assert_eq(&out.log());
    assert_eq!(
        w.try_input(Input::Cancel(RequestId(1))).unwrap_err(),
        InputError::UnknownRequest(RequestId(1))
    );
    assert_eq!(w.host(1).provisioning, 0);
}

#[test]
fn a_late_provisioning_report_after_cancel_is_refused() {
    let mut w = one_host();
    w.submit(RequestSpec::new(1, "linux", 1));
    w.input(Input::ProvisionStarted(VmId(1)));
    w.input(Input::Cancel(RequestId(1)));
    assert_eq!(
        w.try_input(Input::ProvisionDone {
            vm: VmId(1),
            result: Ok(()),
        })
        .unwrap_err(),
        InputError::WrongState {
            what: "vm1".into(),
            state: "releasing",
            input: "finish provisioning",
        }
    );
}

#[test]
fn the_pass_runs_at_the_next_poll_over_everything_fed_since() {
    let mut w = one_host();
    // Two submits without a poll: nothing is placed until the caller polls.
    w.s.handle(0, Input::Submit(RequestSpec::new(1, "linux", 1)))
        .unwrap();
    w.s.handle(0, Input::Submit(RequestSpec::new(2, "linux", 1)))
        .unwrap();
    assert_eq!(w.s.vm(VmId(1)).unwrap().state, VmState::Queued);
    assert_eq!(
        w.s.why(RequestId(1)).unwrap().blocker,
        Blocker::NotYetConsidered
    );
    assert_eq!(
        w.s.why(RequestId(1)).unwrap().to_string(),
        "not yet considered · 1/1 hosts fit · 1 of 1 × 2 vcpus, 4096 MiB of `linux` wait"
    );
    let out = w.poll();
    assert_eq!(
        out.provisions(),
        vec![(VmId(1), HostId(1)), (VmId(2), HostId(1))]
    );
    assert!(w.s.why(RequestId(1)).is_none());
    assert_eq!(w.s.vm(VmId(2)).unwrap().state, VmState::Placed);
}

#[test]
fn refused_request_and_vm_inputs_name_what_was_wrong() {
    let mut w = one_host();
    w.submit(RequestSpec::new(1, "linux", 1));
    let zero_cpu = RequestSpec::new(3, "linux", 1).tap(|r| {
        r.shape = Some(Shape {
            vcpus: 0,
            memory_mib: 1,
        })
    });
    let cases = [
        (
            Input::Submit(RequestSpec::new(1, "linux", 1)),
            InputError::DuplicateRequest(RequestId(1)),
        ),
        (
            Input::Submit(RequestSpec::new(2, "linux", 0)),
            InputError::Invalid {
                field: "count",
                reason: "must be 1 to 100000, got 0".into(),
            },
        ),
        (
            Input::Submit(RequestSpec::new(2, "solaris", 1)),
            InputError::UnknownTemplate("solaris".into()),
        ),
        (
            Input::Submit(zero_cpu),
            InputError::Invalid {
                field: "vcpus",
                reason: "must be 1 to 65536, got 0".into(),
            },
        ),
        (
            Input::Cancel(RequestId(7)),
            InputError::UnknownRequest(RequestId(7)),
        ),
        (
            Input::BootDone {
                vm: VmId(1),
                result: Ok(()),
            },
            InputError::WrongState {
                what: "vm1".into(),
                state: "placed",
                input: "finish booting",
            },
        ),
        (
            Input::JobFinished {
                vm: VmId(1),
                passed: true,
            },
            InputError::WrongState {
                what: "vm1".into(),
                state: "placed",
                input: "finish a job",
            },
        ),
        (
            Input::DestroyDone {
                vm: VmId(1),
                result: Ok(()),
            },
            InputError::WrongState {
                what: "vm1".into(),
                state: "placed",
                input: "finish destroying",
            },
        ),
        (
            Input::ProvisionStarted(VmId(42)),
            InputError::UnknownVm(VmId(42)),
        ),
        (
            Input::SetTemplate(berth_sched::Template::new(
                "tiny",
                Shape {
                    vcpus: 0,
                    memory_mib: 1,
                },
            )),
            InputError::Invalid {
                field: "vcpus",
                reason: "must be 1 to 65536, got 0".into(),
            },
        ),
    ];
    for (input, expected) in cases {
        let shown = format!("{input:?}");
        assert_eq!(w.try_input(input).unwrap_err(), expected, "{shown}");
        let out = w.poll();
        assert!(out.events.is_empty() && out.actions.is_empty(), "{shown}");
        assert_eq!(w.vm_state(VmId(1)), Some(VmState::Placed), "{shown}");
        assert_eq!(w.s.n_requests(), 1, "{shown}");
    }
    // A VM still waiting for a host cannot be reported on either.
    let mut full = World::new(config());
    full.ready_host(host(1, 2, 32));
    full.submit(RequestSpec::new(1, "linux", 2));
    assert_eq!(
        full.try_input(Input::ProvisionStarted(VmId(2)))
            .unwrap_err(),
        InputError::WrongState {
            what: "vm2".into(),
            state: "queued",
            input: "start provisioning",
        }
    );
}

#[test]
fn a_template_set_at_run_time_takes_requests() {
    let mut w = one_host();
    assert_eq!(
        w.try_input(Input::Submit(RequestSpec::new(1, "win", 1)))
            .unwrap_err(),
        InputError::UnknownTemplate("win".into())
    );
    w.input(Input::SetTemplate(berth_sched::Template::new(
        "win",
        Shape {
            vcpus: 4,
            memory_mib: 8192,
        },
    )));
    let out = w.submit(RequestSpec::new(1, "win", 1));
    assert_eq!(out.provisions(), vec![(VmId(1), HostId(1))]);
}

#[test]
fn events_carry_the_time_of_their_input() {
    let mut w = one_host();
    let out = w.at(1_234).submit(RequestSpec::new(1, "linux", 1));
    assert!(
        out.events.iter().all(|e| e.at_ms() == 1_234),
        "{:?}",
        out.events
    );
    // An input stamped earlier than the last one counts at the last one's time.
    let out = w.at(1_000).input(Input::ProvisionStarted(VmId(1)));
    assert_eq!(out.events.iter().map(show).count(), 1);
    assert_eq!(out.events[0].at_ms(), 1_234);
    assert_eq!(w.s.now_ms(), 1_234);
}

#[test]
fn a_refused_input_does_not_move_the_clock() {
    let mut s = berth_sched::Scheduler::new(berth_sched::Config::default());
    s.handle(10, berth_sched::Input::Tick).unwrap();
    let e = s
        .handle(500, berth_sched::Input::Cancel(berth_sched::RequestId(9)))
        .unwrap_err();
    assert_eq!(
        e,
        berth_sched::InputError::UnknownRequest(berth_sched::RequestId(9))
    );
    assert_eq!(s.now_ms(), 10);
}

#[test]
fn reserved_vm_ids_number_new_vms_past_them() {
    let mut w = one_host();
    assert_eq!(w.s.next_vm_id(), VmId(1));
    w.at(1).input(Input::ReserveVmIds(VmId(41)));
    assert_eq!(w.s.next_vm_id(), VmId(42));
    // A lower reservation changes nothing: ids never go back.
    w.at(2).input(Input::ReserveVmIds(VmId(7)));
    assert_eq!(w.s.next_vm_id(), VmId(42));
    let out = w
        .at(3)
        .input(Input::Submit(RequestSpec::new(1, "linux", 1)));
    assert!(
        matches!(out.actions[..], [Action::Provision { vm: VmId(42), .. }]),
        "{:?}",
        out.actions
    );
    assert_eq!(w.s.next_vm_id(), VmId(43));
    let refused = w.s.handle(4, Input::ReserveVmIds(VmId(u64::MAX)));
    assert!(
        matches!(refused, Err(InputError::Invalid { field: "vm", .. })),
        "{refused:?}"
    );
    assert_eq!(w.s.next_vm_id(), VmId(43));
}
