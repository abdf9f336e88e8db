//! The cost of the daemon's table of queue positions and estimated starts on a deep queue: a
//! loaded fleet (`LoadedQueue`: 40 hosts full of running VMs) with 1,000 and 10,000 requests
//! waiting. `eta/copy` is the copy of the scheduler the control loop hands out; `eta/refresh`
//! is what runs off the loop on that copy: the positions, and the simulator running it forward
//! with expected durations until every waiting request has started (or the daemon's bounds);
//! `eta/refresh_learned` the same with running jobs ending as learned from jobs that ended
//! (`berth_sim::runtimes`).

use berth_benches::LoadedQueue;
use berth_sim::runtimes::{RUN_TIMES_KEPT, RunModel, RunTimes};
use berth_sim::{EtaConfig, Profile, estimate_starts};
use criterion::{Criterion, criterion_group, criterion_main};

/// The daemon's bounds (`ETA_HORIZON_MS`, `ETA_STEPS_MAX`) and latency model.
const DAEMON: EtaConfig = EtaConfig {
    horizon_ms: 24 * 3_600_000,
    steps_max: 200_000,
    latency: Profile::Default,
};

fn eta(c: &mut Criterion) {
    let mut group = c.benchmark_group("eta");
    group.sample_size(10);
    // A daemon that has seen as many jobs end as it keeps, which ran from half to two and a
    // half times what was expected of them: every running job's end is picked among them.
    let mut run_times = RunTimes::default();
    for i in 0..RUN_TIMES_KEPT as u64 {
        run_times.ended(500 + i * 2000 / RUN_TIMES_KEPT as u64, 1000);
    }
    let learned = run_times.model();
    for n_waiting in [1_000u64, 10_000] {
        let q = LoadedQueue::new(n_waiting);
        let probe =
            estimate_starts(q.s.clone(), None, DAEMON, &RunModel::default()).expect("estimate");
        eprintln!(
            "eta/{n_waiting}: {} estimated, {} simulated instants, reached {} s",
            probe.len(),
            probe.steps,
            (probe.reached_ms - probe.from_ms) / 1000
        );
        group.bench_function(format!("copy/{n_waiting}"), |b| b.iter(|| q.s.clone()));
        group.bench_function(format!("refresh/{n_waiting}"), |b| {
            b.iter(|| {
                let s = q.s.clone();
                let positions = s.positions();
                (
                    positions,
                    estimate_starts(s, None, DAEMON, &RunModel::default()),
                )
            })
        });
        group.bench_function(format!("refresh_learned/{n_waiting}"), |b| {
            b.iter(|| {
                let s = q.s.clone();
                let positions = s.positions();
                (positions, estimate_starts(s, None, DAEMON, &learned))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, eta);
criterion_main!(benches);
