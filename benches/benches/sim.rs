//! Simulator engine benchmarks: a synthetic CI workload replayed through the real scheduler on a
//! 200-host fleet, under each queue discipline, with modelled latencies.

use berth_sched::Policy;
use berth_sim::{Fleet, Profile, RunInfo, SimConfig, Simulation};
use berth_traces::{Generator, Record, SynthConfig};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

fn fleet() -> Fleet {
    let text = include_str!("../../examples/fleet-ci.toml");
    let mut fleet = match Fleet::parse(text, "fleet-ci.toml") {
        Ok(f) => f,
        Err(e) => panic!("examples/fleet-ci.toml: {e}"),
    };
    // A tenth of each class: 200 hosts, so the workload queues now and then.
    let mut kept = Vec::new();
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for h in fleet.hosts.drain(..) {
        let class = h
            .name
            .rsplit_once('-')
            .map_or(h.name.clone(), |(c, _)| c.to_owned());
        let n = seen.entry(class).or_default();
        *n += 1;
        if n.is_multiple_of(10) {
            kept.push(h);
        }
    }
    fleet.hosts = kept;
    fleet
}

fn engine(c: &mut Criterion) {
    let records: Vec<Record> = match Generator::new(SynthConfig::new(20_000, 1)) {
        Ok(g) => g.collect(),
        Err(e) => panic!("synth: {e}"),
    };
    let fleet = fleet();
    let mut group = c.benchmark_group("sim/synth_20000/hosts_200");
    group.sample_size(20);
    for policy in [Policy::Fcfs, Policy::Easy, Policy::Greedy] {
        group.bench_function(policy.name(), |b| {
            b.iter_batched(
                || records.clone(),
                |records| {
                    let config = SimConfig {
                        policy,
                        latency: Profile::Default,
                        // The replay alone: no estimates of starts.
                        eta_samples_max: 0,
                        ..SimConfig::default()
                    };
                    let sim = match Simulation::new(&fleet, config) {
                        Ok(s) => s,
                        Err(e) => panic!("sim: {e}"),
                    };
                    let mut trace = records.into_iter().map(Ok);
                    match sim.run(&mut trace, RunInfo::default(), &mut |_, _| {}) {
                        Ok((report, _)) => {
                            assert_eq!(report.vms, 20_000);
                            report
                        }
                        Err(e) => panic!("sim: {e}"),
                    }
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
