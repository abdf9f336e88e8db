//! Positions in the queue: the order the policy serves, fair share's account order included.

use berth_sched::{Account, Config, FairShare, Policy, RequestId, RequestSpec};

use crate::support::{World, config, host};

/// A 2-vCPU host kept busy by account `a`'s first request; then, a minute later, two more of
/// `a` (the second at priority 5) and two of `b`. The waiting requests' ids in order of position.
fn order(policy: Policy, fair: bool) -> (Vec<u64>, usize) {
    let mut w = World::new(Config {
        policy,
        fair_share: fair.then(|| FairShare {
            accounts: vec![Account {
                name: "a".into(),
                weight: 1,
            }],
            ..FairShare::default()
        }),
        ..config()
    });
    w.ready_host(host(1, 2, 8));
    let spec = |id: u64, account: &str, priority: i32| {
        let mut s = RequestSpec::new(id, "linux", 1);
        s.account = Some(account.into());
        s.priority = priority;
        s
    };
    w.submit(spec(1, "a", 0));
    w.at(60_000);
    for s in [
        spec(2, "a", 0),
        spec(3, "a", 5),
        spec(4, "b", 0),
        spec(5, "b", 0),
    ] {
        w.submit(s);
    }
    let positions = w.s.positions();
    let queue = w.s.queue();
    let mut by_position: Vec<(u32, u64)> = (1..=5)
        .filter_map(|id| positions.of(RequestId(id)).map(|p| (p, id)))
        .collect();
    by_position.sort_unstable();
    let ids: Vec<u64> = by_position.iter().map(|&(_, id)| id).collect();
    assert_eq!(
        ids,
        queue.iter().map(|r| r.0).collect::<Vec<_>>(),
        "positions follow the queue's order"
    );
    let numbers: Vec<u32> = by_position.iter().map(|&(p, _)| p).collect();
    assert_eq!(numbers, (1..=ids.len() as u32).collect::<Vec<_>>());
    (ids, positions.queue_len)
}

#[test]
fn positions_follow_priority_then_arrival() {
    for policy in [Policy::Fcfs, Policy::Easy, Policy::Greedy] {
        assert_eq!(order(policy, false), (vec![3, 2, 4, 5], 4), "{policy:?}");
    }
}

#[test]
fn under_fair_share_the_account_below_its_share_comes_first() {
    // `a` has held the host for a minute, `b` nothing: `b` is served first, then `a` by
    // priority and arrival.
    for policy in [Policy::Fcfs, Policy::Easy, Policy::Greedy] {
        assert_eq!(order(policy, true), (vec![4, 5, 3, 2], 4), "{policy:?}");
    }
}

#[test]
fn a_request_that_does_not_wait_has_no_position() {
    let mut w = World::new(config());
    w.ready_host(host(1, 2, 8));
    w.submit(RequestSpec::new(1, "linux", 1));
    w.submit(RequestSpec::new(2, "linux", 1));
    let p = w.s.positions();
    assert_eq!(p.of(RequestId(1)), None);
    assert_eq!(p.of(RequestId(2)), Some(1));
    assert_eq!(p.of(RequestId(99)), None);
    assert_eq!(p.queue_len, 1);
}
