//! Placement benchmarks: a 2,000-VM burst onto fresh fleets of 1,000 and 10,000 hosts, and
//! submit/finish churn with 100,000 VMs alive.

use berth_benches::{burst, churn_fleet, churn_step, config, drain, fleet};
use berth_sched::Input;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

fn placement(c: &mut Criterion) {
    let mut group = c.benchmark_group("placement/burst_2000");
    for n_hosts in [1_000u64, 10_000] {
        let base = fleet(n_hosts, config());
        let requests = burst(2_000, 1, 42);
        group.bench_function(format!("hosts_{n_hosts}"), |b| {
            b.iter_batched(
                || (base.clone(), requests.clone()),
                |(mut s, requests)| {
                    for r in requests {
                        if let Err(e) = s.handle(1, Input::Submit(r)) {
                            panic!("burst: {e}");
                        }
                    }
                    let placed = drain(&mut s);
                    assert_eq!(placed, 2_000);
                    s
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

fn churn(c: &mut Criterion) {
    let (mut s, mut running) = churn_fleet(2_000, 100_000);
    let mut next_id = 1_000_000;
    c.bench_function("churn/alive_100000", |b| {
        b.iter(|| {
            next_id += 1;
            churn_step(&mut s, &mut running, next_id);
        });
    });
    assert_eq!(s.n_vms(), 100_000);
}

criterion_group!(benches, placement, churn);
criterion_main!(benches);
