//! Snapshots: a scheduler restored from a snapshot taken at any point between two inputs and
//! fed the rest of the inputs decides as the scheduler that was never interrupted (the same
//! actions and events, and the same state digest at the end), under every policy, with fair
//! share, quotas and images. Damaged, truncated and foreign snapshots are refused with an error
//! that says what is wrong.

use berth_sched::{Config, Input, Policy, Scheduler, SnapshotError};
use proptest::prelude::*;

use crate::equivalence::deep_queue_op;
use crate::images::image_knobs;
use crate::properties::{
    Knobs, Op, Run, add_host, config_of, digest, first_difference, knobs, op, proptest_config,
};
use crate::support::{config, host, probe_ok};

/// Runs `ops` once straight through and once with a snapshot and restore after `ops[..split]`,
/// and compares the decision logs and the state digests, at the split and at the end.
fn same_after_restore(config: Config, ops: &[Op], split: usize) {
    let split = split % (ops.len() + 1);
    let mut straight = Run::new(config.clone(), true);
    for op in &ops[..split] {
        straight.apply(op);
    }
    let mut restored = match straight.restored(config) {
        Ok(r) => r,
        Err(e) => panic!("the snapshot after {split} ops was not restored: {e}"),
    };
    assert_eq!(
        restored.scheduler().state_digest(),
        straight.scheduler().state_digest(),
        "the restored state differs from the snapshot's"
    );
    for op in &ops[split..] {
        straight.apply(op);
        restored.apply(op);
    }
    assert!(
        straight.log == restored.log,
        "a run restored after {split} of {} ops decides otherwise: {:016x} vs {:016x}, {}",
        ops.len(),
        digest(&straight.log),
        digest(&restored.log),
        first_difference(&straight.log, &restored.log)
    );
    assert_eq!(
        restored.scheduler().state_digest(),
        straight.scheduler().state_digest(),
        "the same decisions but another state digest at the end"
    );
}

/// Every policy, accasim-easy included.
fn any_policy() -> impl Strategy<Value = Knobs> {
    (knobs(), 0u8..4).prop_map(|(k, policy)| Knobs { policy, ..k })
}

proptest! {
    #![proptest_config(proptest_config())]

    /// Under every policy, with or without fair share and quotas (as `knobs` draws them).
    #[test]
    fn restore_and_replay_of_the_tail_decides_as_the_whole_run(
        knobs in any_policy(),
        hosts in prop::collection::vec(add_host(), 1..5),
        ops in prop::collection::vec(op(), 1..150),
        split in any::<usize>(),
    ) {
        let all: Vec<Op> = hosts.into_iter().chain(ops).collect();
        same_after_restore(config_of(&knobs), &all, split);
    }

    /// Deep queues of look-alike requests (the grouped walk's groups, EASY's reservation and
    /// its notes from one pass to the next are all in play at the split).
    #[test]
    fn restore_and_replay_of_the_tail_decides_as_the_whole_run_with_deep_queues(
        knobs in any_policy(),
        hosts in prop::collection::vec(add_host(), 1..5),
        ops in prop::collection::vec(deep_queue_op(), 20..200),
        split in any::<usize>(),
    ) {
        let all: Vec<Op> = hosts.into_iter().chain(ops).collect();
        same_after_restore(config_of(&knobs), &all, split);
    }

    /// With images: pulls in flight, store turns and held images survive a snapshot.
    #[test]
    fn restore_and_replay_of_the_tail_decides_as_the_whole_run_with_images(
        knobs in any_policy(),
        images in image_knobs(),
        hosts in prop::collection::vec(add_host(), 1..5),
        ops in prop::collection::vec(op(), 1..150),
        split in any::<usize>(),
    ) {
        let mut config = config_of(&knobs);
        config.images = Some(images);
        let all: Vec<Op> = hosts.into_iter().chain(ops).collect();
        same_after_restore(config, &all, split);
    }

    /// Any byte changed, or any tail cut off, and the snapshot is refused (the checksum covers
    /// the body; the header is checked field by field).
    #[test]
    fn damaged_or_truncated_snapshots_are_refused(
        knobs in any_policy(),
        hosts in prop::collection::vec(add_host(), 1..4),
        ops in prop::collection::vec(op(), 1..60),
        at in any::<usize>(),
        flip in 1u8..=255,
    ) {
        let config = config_of(&knobs);
        let mut run = Run::new(config.clone(), false);
        for op in hosts.iter().chain(&ops) {
            run.apply(op);
        }
        let bytes = run.scheduler().snapshot().unwrap();
        let i = at % bytes.len();
        let mut damaged = bytes.clone();
        damaged[i] ^= flip;
        prop_assert!(Scheduler::restore(config.clone(), &damaged).is_err());
        prop_assert!(Scheduler::restore(config.clone(), &bytes[..i]).is_err());
        prop_assert!(Scheduler::restore(config, &bytes).is_ok());
    }
}

/// A small scheduler with a host and a running request, polled empty.
fn busy() -> Scheduler {
    let mut s = Scheduler::new(config());
    let h = host(1, 8, 32);
    s.handle(0, Input::AddHost(h.clone())).unwrap();
    s.handle(0, probe_ok(&h)).unwrap();
    s.handle(
        0,
        Input::Submit(berth_sched::RequestSpec::new(1, "linux", 2)),
    )
    .unwrap();
    while s.poll_action().is_some() || s.poll_event().is_some() {}
    s
}

#[test]
fn a_snapshot_with_pending_output_is_refused() {
    let mut s = busy();
    s.handle(
        1,
        Input::Submit(berth_sched::RequestSpec::new(2, "linux", 1)),
    )
    .unwrap();
    // The pass runs at the first poll: one event out, more pending.
    let _ = s.poll_event();
    assert!(matches!(
        s.snapshot(),
        Err(SnapshotError::NotQuiescent { .. })
    ));
}

#[test]
fn errors_say_what_is_wrong() {
    let s = busy();
    let bytes = s.snapshot().unwrap();
    assert_eq!(
        Scheduler::restore(config(), b"not a snapshot at all").err(),
        Some(SnapshotError::NotASnapshot)
    );
    let mut other_version = bytes.clone();
    other_version[8] = 9;
    assert_eq!(
        Scheduler::restore(config(), &other_version).err(),
        Some(SnapshotError::Version {
            found: 9,
            known: berth_sched::SNAPSHOT_VERSION
        })
    );
    let mut other = config();
    other.policy = if other.policy == Policy::Fcfs {
        Policy::Greedy
    } else {
        Policy::Fcfs
    };
    assert!(matches!(
        Scheduler::restore(other, &bytes),
        Err(SnapshotError::ConfigChanged { .. })
    ));
    let short = Scheduler::restore(config(), &bytes[..30]).err().unwrap();
    assert!(
        short
            .to_string()
            .starts_with("snapshot truncated at byte 28"),
        "{short}"
    );
    let mut flipped = bytes.clone();
    let mid = bytes.len() / 2;
    flipped[mid] ^= 0x40;
    assert!(matches!(
        Scheduler::restore(config(), &flipped),
        Err(SnapshotError::Checksum { .. })
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        Scheduler::restore(config(), &longer),
        Err(SnapshotError::Trailing { extra: 1, .. })
    ));
}

#[test]
fn a_restored_scheduler_has_the_same_digest_and_views() {
    let s = busy();
    let r = Scheduler::restore(config(), &s.snapshot().unwrap()).unwrap();
    assert_eq!(r.state_digest(), s.state_digest());
    assert_eq!(format!("{:?}", r.vms()), format!("{:?}", s.vms()));
    assert_eq!(r.next_vm_id(), s.next_vm_id());
    // Another state, another digest.
    let mut t = s.clone();
    t.handle(5, Input::Tick).unwrap();
    assert_ne!(t.state_digest(), s.state_digest());
}
