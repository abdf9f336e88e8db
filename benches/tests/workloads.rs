//! Checks that the benchmark workloads do what the benchmarks claim.
#![allow(clippy::unwrap_used)]

use berth_benches::{burst, churn_fleet, churn_step, config, fleet};
use berth_sched::Input;

fn burst_places_fully(n_hosts: u64) {
    let mut s = fleet(n_hosts, config());
    let requests = burst(2_000, 1, 42);
    assert_eq!(requests.iter().map(|r| r.count).sum::<u32>(), 2_000);
    for r in requests {
        s.handle(1, Input::Submit(r)).unwrap();
    }
    let mut placed = 0;
    while let Some(a) = s.poll_action() {
        if matches!(a, berth_sched::Action::Provision { .. }) {
            placed += 1;
        }
    }
    let mut odd = Vec::new();
    while let Some(e) = s.poll_event() {
        if let berth_sched::Event::Request { to, .. } = &e
            && to.is_terminal()
        {
            odd.push(format!("{e:?}"));
        }
    }
    assert!(odd.is_empty(), "{odd:#?}");
    let waiting: Vec<String> = s
        .queue()
        .into_iter()
        .filter_map(|r| s.why(r))
        .map(|w| w.to_string())
        .collect();
    assert_eq!(placed, 2_000, "waiting: {waiting:#?}");
}

#[test]
fn the_burst_places_all_2000_vms_on_1000_hosts() {
    burst_places_fully(1_000);
}

#[test]
fn the_burst_places_all_2000_vms_on_10000_hosts() {
    burst_places_fully(10_000);
}

#[test]
fn churn_keeps_the_number_of_vms_alive() {
    let (mut s, mut running) = churn_fleet(20, 1_000);
    assert_eq!(s.n_vms(), 1_000);
    for i in 0..100 {
        churn_step(&mut s, &mut running, 10_000 + i);
    }
    assert_eq!(s.n_vms(), 1_000);
}

/// The loaded queue keeps its depth, places VMs as running ones end, and leaves a queue of
/// every kind waiting.
#[test]
fn the_loaded_queue_keeps_its_depth_and_places_as_vms_end() {
    for n_waiting in [100, 1_000] {
        let mut q = berth_benches::LoadedQueue::new(n_waiting);
        assert_eq!(q.s.queue_len() as u64, n_waiting);
        assert!(
            q.s.hosts().all(|h| h.cpu_milli - h.cpu_used_milli == 2_000),
            "every host has 2 vCPUs left"
        );
        let placed: usize = (0..500).map(|_| q.step()).sum();
        assert!(
            placed >= 250,
            "{n_waiting} waiting: {placed} placed in 500 steps"
        );
        assert_eq!(q.s.queue_len() as u64, n_waiting);
    }
}

/// The loaded queue places the same VMs step by step on the reference walk.
#[test]
fn the_loaded_queue_places_alike_on_the_reference_walk() {
    let mut grouped = berth_benches::LoadedQueue::new(300);
    let mut reference = berth_benches::LoadedQueue::reference(300);
    let a: Vec<usize> = (0..300).map(|_| grouped.step()).collect();
    let b: Vec<usize> = (0..300).map(|_| reference.step()).collect();
    assert_eq!(a, b);
    assert_eq!(grouped.s.queue(), reference.s.queue());
}
