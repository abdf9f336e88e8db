//! What a snapshot of the scheduler costs, written and restored, on the loaded fleet of
//! `pass/queue_depth` (40 full hosts, EASY) with 1,000 and 100,000 requests waiting: the daemon
//! writes one every `recovery.snapshot_every_inputs` inputs in its control loop, and a start
//! restores one. The snapshot's size is printed beside the group.

use berth_benches::LoadedQueue;
use berth_sched::{Config, Policy, Scheduler};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// `LoadedQueue`'s configuration.
fn config() -> Config {
    let mut config = berth_benches::config();
    config.policy = Policy::Easy;
    config
}

fn snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot");
    for n_waiting in [1_000u64, 100_000] {
        let q = LoadedQueue::new(n_waiting);
        let bytes = q.s.snapshot().expect("the loaded queue is polled empty");
        eprintln!(
            "snapshot of {n_waiting} waiting requests: {} bytes",
            bytes.len()
        );
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(format!("write/waiting_{n_waiting}"), |b| {
            b.iter(|| q.s.snapshot());
        });
        group.bench_function(format!("restore/waiting_{n_waiting}"), |b| {
            b.iter(|| Scheduler::restore(config(), &bytes));
        });
        // The restored scheduler is the one that was written.
        let restored = Scheduler::restore(config(), &bytes).expect("a snapshot just written");
        assert_eq!(restored.state_digest(), q.s.state_digest());
    }
    group.finish();
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
