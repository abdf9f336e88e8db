//! Differential tests of the placement pass: a scheduler whose passes try one request per group
//! (`Scheduler::new`) against the reference that walks every waiting request one by one
//! (`Scheduler::reference`). On random fleets and input sequences with deep queues of
//! look-alike requests, priorities with aging, gangs, slots, labels, breakpoints, deadlines,
//! drains, host loss and cancels, both must hand out the same actions and events in the same
//! order, under every policy.

use std::fmt::Write as _;

use berth_sched::{Config, Input, Policy, RequestSpec, Scheduler, Shape};
use proptest::prelude::*;

use crate::properties::{
    Knobs, Op, Run, Sub, add_host, config_of, digest, first_difference, knobs, op, proptest_config,
};
use crate::support::{GIB, config, host, probe_ok};

/// Requests drawn from few kinds (three templates, three shapes, three durations), so that a
/// queue fills up with requests that need the same thing.
fn lookalike() -> impl Strategy<Value = Op> {
    (
        0u8..3,
        1u32..=3,
        prop::bool::weighted(0.15),
        -1i32..=1,
        prop::sample::select(vec![None, Some(2u32), Some(8)]),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        prop::option::weighted(0.1, 1u64..=600),
        prop::sample::select(vec![None, Some(600u64), Some(1_800)]),
    )
        .prop_map(
            |(template, count, gang, priority, vcpus, arm, hold, deadline_s, run_s)| {
                Op::Submit(Sub {
                    template,
                    count,
                    gang,
                    priority,
                    vcpus,
                    memory_gib: None,
                    arm,
                    hold,
                    deadline_s,
                    run_s,
                })
            },
        )
}

/// Mostly arrivals, so that the queue grows deep on a small fleet.
pub(crate) fn deep_queue_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => lookalike(),
        10 => op(),
    ]
}

/// Every policy, accasim-easy included.
fn any_policy() -> impl Strategy<Value = Knobs> {
    (knobs(), 0u8..4).prop_map(|(k, policy)| Knobs { policy, ..k })
}

/// Feeds the same inputs to both schedulers and compares every action and event.
fn same_decisions(knobs: &Knobs, ops: &[Op]) {
    let config = config_of(knobs);
    let mut grouped = Run::new(config.clone(), true);
    let mut reference = Run::reference(config, false);
    for op in ops {
        grouped.apply(op);
        reference.apply(op);
    }
    assert!(
        grouped.log == reference.log,
        "the grouped pass decides otherwise than the reference: {:016x} vs {:016x}, {}",
        digest(&grouped.log),
        digest(&reference.log),
        first_difference(&grouped.log, &reference.log)
    );
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn grouped_pass_decides_as_the_reference(
        knobs in any_policy(),
        hosts in prop::collection::vec(add_host(), 1..5),
        ops in prop::collection::vec(deep_queue_op(), 20..200),
    ) {
        let all: Vec<Op> = hosts.into_iter().chain(ops).collect();
        same_decisions(&knobs, &all);
    }

    /// The general mix of the invariant tests: hosts come and go more often.
    #[test]
    fn grouped_pass_decides_as_the_reference_on_any_input(
        knobs in any_policy(),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        same_decisions(&knobs, &ops);
    }
}

/// Feeds batches of inputs (all at time 0, polling after each batch) to a scheduler and logs
/// every result, action and event.
fn log_of(mut s: Scheduler, batches: &[&[Input]]) -> String {
    let mut log = String::new();
    for batch in batches {
        for input in *batch {
            let _ = writeln!(log, "{input:?} = {:?}", s.handle(0, input.clone()));
        }
        while let Some(a) = s.poll_action() {
            let _ = writeln!(log, "{a:?}");
        }
        while let Some(e) = s.poll_event() {
            let _ = writeln!(log, "{e:?}");
        }
    }
    log
}

/// Under EASY a long request can be refused by the reservation's accounting and a later one
/// of the same kind accepted once a short request took room on the same host: the head's
/// room at the shadow time is counted from what is free now, so the short request makes the
/// host count as already too full for the head. A group refused by the reservation alone must
/// therefore be tried again after the next placement, not dropped for the rest of the walk.
#[test]
fn a_group_refused_by_the_reservation_is_tried_again_after_a_placement() {
    let shaped = |id, vcpus, run_ms| {
        let mut spec = RequestSpec::new(id, "linux", 1);
        spec.shape = Some(Shape {
            vcpus,
            memory_mib: GIB,
        });
        spec.expected_run_ms = Some(run_ms);
        Input::Submit(spec)
    };
    let h1 = host(1, 8, 64);
    let inputs: [&[Input]; 3] = [
        &[Input::AddHost(h1.clone()), probe_ok(&h1)],
        // Runs on half the host for an hour.
        &[shaped(1, 4, 3_600_000)],
        // One pass over the rest. The head needs the whole host: it is reserved for when request 1 ends.
        &[
            shaped(2, 8, 3_600_000),
            // Outlives the reservation and would take a vCPU the head needs: refused.
            shaped(3, 1, 36_000_000),
            // Ends before the reservation: starts now.
            shaped(4, 1, 60_000),
            // The same kind as request 3, now counted as free to start.
            shaped(5, 1, 36_000_000),
        ],
    ];
    let config = Config {
        policy: Policy::Easy,
        ..config()
    };
    let grouped = log_of(Scheduler::new(config.clone()), &inputs);
    let reference = log_of(Scheduler::reference(config), &inputs);
    assert!(
        grouped == reference,
        "{}",
        first_difference(&grouped, &reference)
    );
    let provisioned = |id: u64| {
        let request = format!("request: RequestId({id}),");
        grouped
            .lines()
            .any(|l| l.starts_with("Provision") && l.contains(&request))
    };
    assert_eq!(
        [1, 2, 3, 4, 5].map(provisioned),
        [true, false, false, true, true],
        "{grouped}"
    );
}
