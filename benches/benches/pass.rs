//! The cost of a pass against the queue's length: on a loaded fleet with `n` requests waiting,
//! one running VM ends and the pass places what now fits (`LoadedQueue`). Reported per placed
//! VM, which stays flat from 100 to 100,000 waiting. `pass/queue_depth_reference` runs the same
//! on the reference walk (every waiting request one by one), whose cost grows with the queue.

use std::time::{Duration, Instant};

use berth_benches::LoadedQueue;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Steps the workload until `n_placed` VMs were placed; returns the time it took.
fn place(q: &mut LoadedQueue, n_placed: u64) -> Duration {
    let start = Instant::now();
    let mut placed = 0;
    while placed < n_placed {
        placed += q.step() as u64;
    }
    start.elapsed()
}

fn queue_depth(c: &mut Criterion) {
    let mut group = c.benchmark_group("pass/queue_depth");
    group.throughput(Throughput::Elements(1));
    for n_waiting in [100u64, 1_000, 10_000, 100_000] {
        let mut q = LoadedQueue::new(n_waiting);
        group.bench_function(n_waiting.to_string(), |b| {
            b.iter_custom(|n_placed| place(&mut q, n_placed));
        });
    }
    group.finish();
    let mut group = c.benchmark_group("pass/queue_depth_reference");
    group.throughput(Throughput::Elements(1));
    for n_waiting in [100u64, 1_000, 10_000] {
        let mut q = LoadedQueue::reference(n_waiting);
        group.bench_function(n_waiting.to_string(), |b| {
            b.iter_custom(|n_placed| place(&mut q, n_placed));
        });
    }
    group.finish();
}

criterion_group!(benches, queue_depth);
criterion_main!(benches);
