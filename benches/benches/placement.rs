//! Placement benchmarks: a 2,000-VM burst onto fresh fleets of 1,000 and 10,000 hosts, and
//! submit/finish churn with 100,000 VMs alive.

use berth_benches::{burst, churn_fleet, churn_step, config, drain, fleet};
use berth_sched::{Config, FairShare, Input, RequestSpec};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

fn placement(c: &mut Criterion) {
    burst_onto(c, "placement/burst_2000", config(), burst(2_000, 1, 42));
    // The same burst from 8 accounts with fair share on: the queue's account order must not
    // make placement noticeably slower.
    let fair = Config {
        fair_share: Some(FairShare::default()),
        ..config()
    };
    let requests: Vec<RequestSpec> = burst(2_000, 1, 42)
        .into_iter()
        .map(|mut r| {
            r.account = Some(format!("team-{}", r.id.0 % 8));
            r
        })
        .collect();
    burst_onto(c, "placement/burst_2000_fair_share", fair, requests);
}

/// Places `requests` (2,000 VMs) onto fresh fleets of 1,000 and 10,000 hosts.
fn burst_onto(c: &mut Criterion, name: &str, config: Config, requests: Vec<RequestSpec>) {
    let mut group = c.benchmark_group(name);
    for n_hosts in [1_000u64, 10_000] {
        let base = fleet(n_hosts, config.clone());
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
