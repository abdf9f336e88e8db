//! Whole-daemon timings on loopback, with the journal on (SQLite, WAL, synchronous=FULL): a
//! 2,000-VM burst accepted durably, 100,000 VMs listed through the API, the control loop's rate
//! of state changes, drain forecasts and a restart with 10,000 running VMs. Run with
//! `cargo bench -p berth-benches --bench daemon`.
//!
//! With a PostgreSQL server in `BERTH_TEST_POSTGRES` (a URL ending in `/postgres`, as for the
//! tests), the burst, list and control-loop benchmarks run again on it (`daemon/pg/…`), each daemon on a fresh
//! database of its own, dropped after it.
//!
//! Each timed run of the burst, control-loop and restart benchmarks has a fresh daemon and
//! database, made and torn down outside the time measured; the list and forecast benchmarks ask
//! one loaded daemon again and again. The control loop's rate is counted from the daemon's event
//! stream (`GET /v1/events`), as a console or a CI coordinator would watch it: nothing polls the
//! loop being measured.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_daemon::{Daemon, Options};
use berth_testkit::Api;
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use serde_json::json;

/// Where a benchmark's daemon keeps its store.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    /// SQLite always; PostgreSQL too when `BERTH_TEST_POSTGRES` names a server.
    fn available() -> Vec<Engine> {
        let pg = std::env::var(berth_testkit::postgres::SERVER_VAR).is_ok_and(|v| !v.is_empty());
        if !pg {
            eprintln!(
                "{} is not set: the daemon/pg/... benchmarks do not run",
                berth_testkit::postgres::SERVER_VAR
            );
        }
        let mut out = vec![Engine::Sqlite];
        if pg {
            out.push(Engine::Postgres);
        }
        out
    }

    /// The benchmark group's prefix: `daemon/` or `daemon/pg/`.
    fn group(self, name: &str) -> String {
        match self {
            Engine::Sqlite => format!("daemon/{name}"),
            Engine::Postgres => format!("daemon/pg/{name}"),
        }
    }
}

/// A daemon in this process, on a loopback port, with its data in a temporary directory and its
/// store there (SQLite) or in a fresh PostgreSQL database.
struct Bench {
    rt: tokio::runtime::Runtime,
    daemon: Option<Daemon>,
    api: Api,
    config: String,
    dir: tempfile::TempDir,
    /// Dropped after the daemon has stopped (fields drop after `Drop::drop`).
    _database: Option<berth_testkit::postgres::Database>,
}

impl Bench {
    fn start_on(engine: Engine, config: &str) -> Bench {
        let (database, config) = match engine {
            Engine::Sqlite => (None, config.to_owned()),
            Engine::Postgres => {
                let db = berth_testkit::postgres::fresh_database().unwrap();
                let config = format!("store = \"{}\"\n{config}", db.url());
                (Some(db), config)
            }
        };
        let config = config.as_str();
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let daemon = rt
            .block_on(berth_daemon::start(options(config, &dir)))
            .unwrap();
        let token = std::fs::read_to_string(dir.path().join("token")).unwrap();
        let api = Api::new(&format!("http://{}", daemon.addr()), Some(token.trim()));
        Bench {
            rt,
            daemon: Some(daemon),
            api,
            config: config.to_owned(),
            dir,
            _database: database,
        }
    }

    /// Stops the daemon and starts it again on the same directory; returns how long the start
    /// took (journal replay and reconciliation with every host) and how many journaled inputs
    /// it replayed.
    fn restart(&mut self) -> (Duration, i64) {
        let d = self.daemon.take().unwrap();
        self.rt.block_on(d.stop()).unwrap();
        let inputs = rusqlite::Connection::open(self.dir.path().join("berth.db"))
            .unwrap()
            .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
            .unwrap();
        let opts = options(&self.config, &self.dir);
        let start = Instant::now();
        let daemon = self.rt.block_on(berth_daemon::start(opts)).unwrap();
        let took = start.elapsed();
        self.api = Api::new(
            &format!("http://{}", daemon.addr()),
            self.api.token.as_deref(),
        );
        self.daemon = Some(daemon);
        (took, inputs)
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            let _ = self.rt.block_on(d.stop());
        }
    }
}

fn options(config: &str, dir: &tempfile::TempDir) -> Options {
    let config = berth_daemon::config::parse(config).unwrap();
    Options::new(
        config,
        Some(dir.path().to_owned()),
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .unwrap()
}

/// Ten samples of about one run each: each run of these costs seconds of setup outside the time
/// measured, which criterion's warm-up and sample sizing cannot see. `run` is about what one
/// timed run takes; when a run takes longer, criterion warns that it cannot complete the
/// samples in the time asked, and still takes one run per sample.
fn one_run_per_sample(group: &mut BenchmarkGroup<'_, WallTime>, run: Duration) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(run * 10);
}

/// Slow simulated hosts, so that the burst measures acceptance, not the hosts.
const QUIET: &str = "[sim]\nlatency_scale = 1.0\n[probe]\ninterval_ms = 60000\n";

/// 2,000 one-VM requests from `n_clients` concurrent clients; the time until the last is
/// answered (each answer comes after its batch is committed).
fn burst_of_requests(engine: Engine, n_clients: usize) -> Duration {
    let b = Bench::start_on(engine, QUIET);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let clients: Vec<_> = (0..n_clients)
        .map(|_| {
            // A connection of its own, as separate CI coordinators would have.
            let api = Api::new(&b.api.url, b.api.token.as_deref());
            let next = next.clone();
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < 2000 {
                    let (status, r) = api.call(
                        "POST",
                        "/v1/requests",
                        Some(json!({"template": "linux", "count": 1})),
                    );
                    assert_eq!(status, 201, "{r}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    start.elapsed()
}

/// One request of 2,000 VMs.
fn burst_in_one_request(engine: Engine) -> Duration {
    let b = Bench::start_on(engine, QUIET);
    let start = Instant::now();
    let r = b.api.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 2000})),
    );
    let took = start.elapsed();
    assert_eq!(r["count"], 2000);
    took
}

fn bursts(c: &mut Criterion) {
    for engine in Engine::available() {
        let mut group = c.benchmark_group(engine.group("burst"));
        one_run_per_sample(&mut group, Duration::from_millis(200));
        group.throughput(Throughput::Elements(2000));
        for n_clients in [16, 32] {
            group.bench_function(format!("requests_2000_one_vm_{n_clients}_clients"), |b| {
                b.iter_custom(|runs| {
                    (0..runs)
                        .map(|_| burst_of_requests(engine, n_clients))
                        .sum()
                });
            });
        }
        group.throughput(Throughput::Elements(1));
        one_run_per_sample(&mut group, Duration::from_millis(10));
        group.bench_function("one_request_2000_vms", |b| {
            b.iter_custom(|runs| (0..runs).map(|_| burst_in_one_request(engine)).sum());
        });
        group.finish();
    }
}

fn list(c: &mut Criterion) {
    for engine in Engine::available() {
        list_on(c, engine);
    }
}

/// `GET /v1/vms` returning 100,000 VMs (50 requests of 2,000, mostly queued), read to the end.
/// The daemon is loaded when the benchmark first runs: not at all when criterion's filter
/// leaves it out.
fn list_on(c: &mut Criterion, engine: Engine) {
    let mut loaded: Option<Bench> = None;
    let agent = ureq::AgentBuilder::new().build();
    let mut group = c.benchmark_group(engine.group("list"));
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(2));
    group.bench_function("vms_100000", |bench| {
        let b = loaded.get_or_insert_with(|| {
            let b = Bench::start_on(engine, QUIET);
            for _ in 0..50 {
                b.api.ok(
                    "POST",
                    "/v1/requests",
                    Some(json!({"template": "linux", "count": 2000})),
                );
            }
            b
        });
        let token = b.api.token.clone().unwrap();
        bench.iter(|| {
            let r = agent
                .get(&format!("{}/v1/vms", b.api.url))
                .set("Authorization", &format!("Bearer {token}"))
                .call()
                .unwrap();
            let mut body = Vec::new();
            std::io::copy(&mut r.into_reader(), &mut body).unwrap();
            assert!(
                body.ends_with(b",\"count\":100000,\"next_after\":null}"),
                "listed {:?}",
                String::from_utf8_lossy(&body[body.len().saturating_sub(40)..])
            );
            body.len()
        });
    });
    group.finish();
}

const N_HOSTS: usize = 200;
const N_VMS: usize = 10_000;
/// Queued, placed, provisioning, booting, running.
const CHANGES_PER_VM: usize = 5;

fn fleet_config() -> String {
    let mut config = String::from(
        "[sim]\nlatency_scale = 0.0\n[probe]\ninterval_ms = 60000\n[scheduler]\nprovisioning_per_host_max = 16\n",
    );
    for i in 0..N_HOSTS {
        config.push_str(&format!(
            "[[hosts]]\nname = \"h{i}\"\ndriver = \"sim\"\nvcpus = 128\nmemory_mib = 262144\n"
        ));
    }
    config
}

/// A fleet of 200 instant simulated hosts, every one ready.
fn ready_fleet(engine: Engine) -> Bench {
    let b = Bench::start_on(engine, &fleet_config());
    berth_testkit::wait_for("every host ready", Duration::from_secs(30), || {
        (b.api.ok("GET", "/v1/status", None)["hosts"]["ready"] == N_HOSTS).then_some(())
    });
    b
}

/// 10,000 VMs submitted at once (five requests of 2,000) go from queued to running as fast as
/// the control loop and its journal allow. Returns the daemon and the time from the first
/// submit to the last VM's `running` event, as the event stream delivered it.
fn run_fleet(engine: Engine) -> (Bench, Duration) {
    let b = ready_fleet(engine);
    let events = b.api.events();
    let reader = std::thread::spawn(move || {
        let (mut changes, mut running) = (0, 0);
        for e in events {
            if e["kind"] != "vm" {
                continue;
            }
            changes += 1;
            if e["to"] == "running" {
                running += 1;
                if running == N_VMS {
                    return (Instant::now(), changes);
                }
            }
        }
        panic!("the event stream ended after {running} running events");
    });
    let start = Instant::now();
    for _ in 0..N_VMS / 2000 {
        b.api.ok(
            "POST",
            "/v1/requests",
            Some(json!({"template": "linux", "count": 2000})),
        );
    }
    let (end, changes) = reader.join().unwrap();
    assert_eq!(
        changes,
        N_VMS * CHANGES_PER_VM,
        "VM state changes up to the last running one"
    );
    (b, end - start)
}

fn control_loop(c: &mut Criterion) {
    for engine in Engine::available() {
        let mut group = c.benchmark_group(engine.group("control_loop"));
        one_run_per_sample(&mut group, Duration::from_millis(400));
        group.throughput(Throughput::Elements((N_VMS * CHANGES_PER_VM) as u64));
        group.bench_function("vm_state_changes_10000_vms_200_hosts", |b| {
            b.iter_custom(|runs| (0..runs).map(|_| run_fleet(engine).1).sum());
        });
        group.finish();
    }
}

/// `POST /v1/predict/drain` of 20 of the 200 hosts, an hour ahead, on a daemon that holds
/// 10,000 running VMs: with the last hour's requests (its five 2,000-VM requests) replayed as
/// arrivals, and without arrivals. The daemon is loaded when the first of them runs.
fn forecasts(c: &mut Criterion) {
    let mut loaded: Option<Bench> = None;
    let hosts: Vec<String> = (0..20).map(|i| format!("h{i}")).collect();
    let mut group = c.benchmark_group("daemon/forecast");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(2));
    for (arrivals, requests) in [("recent", 5), ("none", 0)] {
        group.bench_function(
            format!("drain_20_of_200_hosts_arrivals_{arrivals}"),
            |bench| {
                let b = loaded.get_or_insert_with(|| run_fleet(Engine::Sqlite).0);
                bench.iter(|| {
                    let p = b.api.ok(
                        "POST",
                        "/v1/predict/drain",
                        Some(json!({"hosts": hosts, "arrivals": arrivals})),
                    );
                    assert_eq!(p["arrivals"]["requests"], requests, "{p}");
                });
            },
        );
    }
    group.finish();
}

/// Stops a daemon holding 10,000 running VMs and starts it again on the same directory:
/// journal replay plus reconciliation with 200 hosts.
fn restart(c: &mut Criterion) {
    let mut group = c.benchmark_group("daemon/restart");
    one_run_per_sample(&mut group, Duration::from_millis(50));
    let mut inputs = None;
    group.bench_function("running_vms_10000_hosts_200", |b| {
        b.iter_custom(|runs| {
            (0..runs)
                .map(|_| {
                    let (mut bench, _) = run_fleet(Engine::Sqlite);
                    let (took, n) = bench.restart();
                    inputs = Some(n);
                    took
                })
                .sum()
        });
    });
    group.finish();
    if let Some(n) = inputs {
        println!("daemon/restart replayed {n} journaled inputs");
    }
}

criterion_group!(benches, bursts, list, control_loop, forecasts, restart);
criterion_main!(benches);
