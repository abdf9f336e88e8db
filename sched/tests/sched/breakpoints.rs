//! Breakpoints (a failed job's VM held for its owner) and the timers: hold expiry, extension,
//! release, and a request's pending deadline.

use berth_sched::{
    Blocker, Cause, Event, Hold, HostId, Input, InputError, RequestId, RequestSpec, RequestState,
    Shape, VmId, VmState,
};
use expect_test::expect;

use crate::support::{Tap, World, config, host};

const HOUR_MS: u64 = 3_600_000;

fn held_request(id: u64) -> RequestSpec {
    RequestSpec::new(id, "linux", 1).tap(|r| {
        r.hold_on_failure = Some(Hold {
            owner: "alice".into(),
            ttl_ms: HOUR_MS,
        })
    })
}

/// One host, r1's VM running since t=0, its job fails at t=1000 and it is held.
fn held_vm() -> World {
    let mut w = World::new(config());
    w.ready_host(host(1, 8, 32));
    w.submit(held_request(1));
    w.bring_up(VmId(1));
    let out = w.at(1_000).input(Input::JobFinished {
        vm: VmId(1),
        passed: false,
    });
    assert_eq!(
        out.events,
        vec![Event::Vm {
            at_ms: 1_000,
            vm: VmId(1),
            request: RequestId(1),
            host: Some(HostId(1)),
            from: Some(VmState::Running),
            to: VmState::Held,
            cause: Cause::JobFailed,
        }]
    );
    assert!(out.actions.is_empty());
    w
}

#[test]
fn a_held_vm_that_vanished_is_lost_and_its_hold_ends_with_it() {
    let mut w = held_vm();
    let out = w.at(2_000).input(Input::VmLost(VmId(1)));
    expect![[r#"
        vm1 r1@h1 held -> lost (vanished from its host)
        vm2 r1 new -> queued (retry of vm1)
        r1 active -> waiting (a vm went back to the queue)
        vm2 r1@h1 queued -> placed (placed)
        r1 waiting -> active (all vms placed)
    "#]]
    .assert_eq(&out.log());
    // Like the held VMs of a failed host, it is replaced within the retry budget.
    assert_eq!(w.host(1).n_vms, 1);
    // Its hold timer firing later finds nothing to do.
    let out = w.tick_at(1_000 + HOUR_MS);
    assert!(
        out.events
            .iter()
            .all(|e| !matches!(e, Event::Vm { vm: VmId(1), .. }))
    );
}

#[test]
fn a_failed_job_is_held_until_released() {
    let mut w = held_vm();
    let v = w.s.vm(VmId(1)).unwrap();
    assert_eq!(v.state, VmState::Held);
    assert_eq!(v.hold_until_ms, Some(1_000 + HOUR_MS));
    assert_eq!(w.s.poll_timeout(), Some(1_000 + HOUR_MS));
    // A held VM keeps its capacity.
    assert_eq!(w.host(1).cpu_used_milli, 2000);

    let out = w.at(5_000).input(Input::Release(VmId(1)));
    expect![[r#"
        vm1 r1@h1 held -> releasing (released)
    "#]]
    .assert_eq(&out.log());
    assert_eq!(out.destroys(), vec![(VmId(1), HostId(1))]);
    let out = w.destroyed(VmId(1));
    expect![[r#"
        vm1 r1 releasing -> done (destroyed)
        r1 active -> done (all vms ended)
    "#]]
    .assert_eq(&out.log());
    assert_eq!(w.host(1).cpu_used_milli, 0);
    // The hold's timer fires later and finds nothing to do.
    let out = w.tick_at(1_000 + HOUR_MS);
    assert!(out.events.is_empty() && out.actions.is_empty());
}

#[test]
fn a_passed_job_is_never_held() {
    let mut w = World::new(config());
    w.ready_host(host(1, 8, 32));
    w.submit(held_request(1));
    w.bring_up(VmId(1));
    let out = w.input(Input::JobFinished {
        vm: VmId(1),
        passed: true,
    });
    expect![[r#"
        vm1 r1@h1 running -> releasing (job passed)
    "#]]
    .assert_eq(&out.log());
}

#[test]
fn a_hold_expires_at_its_timeout() {
    let mut w = held_vm();
    let t = w.s.poll_timeout().unwrap();
    // A tick just before changes nothing.
    assert!(w.tick_at(t - 1).events.is_empty());
    assert_eq!(w.vm_state(VmId(1)), Some(VmState::Held));
    let out = w.tick_at(t);
    expect![[r#"
        vm1 r1@h1 held -> releasing (breakpoint expired)
    "#]]
    .assert_eq(&out.log());
    assert_eq!(out.destroys(), vec![(VmId(1), HostId(1))]);
}

#[test]
fn extend_moves_the_expiry_later() {
    let mut w = held_vm();
    let first = 1_000 + HOUR_MS;
    let out = w.at(2_000).input(Input::Extend {
        vm: VmId(1),
        by_ms: 30 * 60_000,
    });
    assert!(out.events.is_empty());
    let later = first + 30 * 60_000;
    assert_eq!(w.s.vm(VmId(1)).unwrap().hold_until_ms, Some(later));
    // The old timer still comes due, and passes without effect.
    assert_eq!(w.s.poll_timeout(), Some(first));
    assert!(w.tick_at(first).events.is_empty());
    assert_eq!(w.vm_state(VmId(1)), Some(VmState::Held));
    assert_eq!(w.s.poll_timeout(), Some(later));
    let out = w.tick_at(later);
    assert_eq!(
        out.events,
        vec![Event::Vm {
            at_ms: later,
            vm: VmId(1),
            request: RequestId(1),
            host: Some(HostId(1)),
            from: Some(VmState::Held),
            to: VmState::Releasing,
            cause: Cause::HoldExpired,
        }]
    );
}

#[test]
fn release_and_extend_apply_only_to_held_vms() {
    let mut w = World::new(config());
    w.ready_host(host(1, 8, 32));
    w.submit(held_request(1));
    w.bring_up(VmId(1));
    assert_eq!(
        w.try_input(Input::Release(VmId(1))).unwrap_err(),
        InputError::WrongState {
            what: "vm1".into(),
            state: "running",
            input: "release a breakpoint",
        }
    );
    assert_eq!(
        w.try_input(Input::Extend {
            vm: VmId(1),
            by_ms: 1,
        })
        .unwrap_err(),
        InputError::WrongState {
            what: "vm1".into(),
            state: "running",
            input: "extend a breakpoint",
        }
    );
    assert_eq!(
        w.try_input(Input::Release(VmId(9))).unwrap_err(),
        InputError::UnknownVm(VmId(9))
    );
    assert_eq!(
        InputError::UnknownVm(VmId(9)).to_string(),
        "unknown or ended vm vm9"
    );
}

#[test]
fn a_held_vm_of_a_cancelled_request_is_destroyed() {
    let mut w = held_vm();
    let out = w.input(Input::Cancel(RequestId(1)));
    expect![[r#"
        vm1 r1@h1 held -> releasing (cancelled)
    "#]]
    .assert_eq(&out.log());
    let out = w.destroyed(VmId(1));
    expect![[r#"
        vm1 r1 releasing -> cancelled (destroyed)
        r1 active -> cancelled (cancelled)
    "#]]
    .assert_eq(&out.log());
}

#[test]
fn the_head_expects_to_start_when_a_held_vm_expires() {
    let mut w = World::new(config());
    w.ready_host(host(1, 2, 32));
    w.submit(held_request(1));
    w.bring_up(VmId(1));
    w.at(1_000).input(Input::JobFinished {
        vm: VmId(1),
        passed: false,
    });
    w.submit(RequestSpec::new(2, "linux", 1));
    let why = w.s.why(RequestId(2)).unwrap();
    assert_eq!(
        why.blocker,
        Blocker::Reserved {
            head: RequestId(2),
            start_ms: 1_000 + HOUR_MS,
        }
    );
    // Released early, the capacity goes to the head at once.
    w.input(Input::Release(VmId(1)));
    let out = w.destroyed(VmId(1));
    assert_eq!(out.provisions(), vec![(VmId(2), HostId(1))]);
}

#[test]
fn a_pending_deadline_fails_a_request_still_waiting() {
    let mut w = World::new(config());
    w.ready_host(host(1, 2, 32));
    w.submit(RequestSpec::new(1, "linux", 1));
    w.at(100)
        .submit(RequestSpec::new(2, "linux", 2).tap(|r| r.pending_deadline_ms = Some(30_000)));
    assert_eq!(w.s.poll_timeout(), Some(30_100));
    assert!(w.tick_at(30_099).events.is_empty());
    let out = w.tick_at(30_100);
    expect![[r#"
        vm2 r2 queued -> failed (pending deadline passed)
        vm3 r2 queued -> failed (pending deadline passed)
        r2 waiting -> failed (pending deadline passed)
    "#]]
    .assert_eq(&out.log());
    assert_eq!(
        out.events.last(),
        Some(&Event::Request {
            at_ms: 30_100,
            request: RequestId(2),
            from: Some(RequestState::Waiting),
            to: RequestState::Failed,
            cause: Cause::Deadline,
        })
    );
    assert!(w.s.queue().is_empty());
    assert_eq!(w.s.poll_timeout(), None);
}

#[test]
fn a_request_placed_before_its_deadline_is_not_failed_by_it() {
    let mut w = World::new(config());
    w.ready_host(host(1, 8, 32));
    w.submit(
        RequestSpec::new(1, "linux", 1)
            .tap(|r| r.pending_deadline_ms = Some(10_000))
            .tap(|r| {
                r.shape = Some(Shape {
                    vcpus: 8,
                    memory_mib: 1024,
                })
            }),
    );
    assert_eq!(w.vm_state(VmId(1)), Some(VmState::Placed));
    let out = w.tick_at(10_000);
    assert!(out.events.is_empty());
    assert_eq!(
        w.s.request(RequestId(1)).unwrap().state,
        RequestState::Active
    );
}
