//! Whole-daemon timings on loopback, with the journal on (SQLite, WAL, synchronous=FULL):
//! a 2,000-VM burst accepted durably, 100,000 VMs listed through the API, and the control
//! loop's rate of state changes. Each figure is the median of several runs, each on a fresh
//! daemon and database. Run with `cargo bench -p berth-benches --bench daemon`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_daemon::{Daemon, Options};
use serde_json::{Value, json};

struct Bench {
    rt: tokio::runtime::Runtime,
    daemon: Option<Daemon>,
    url: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl Bench {
    fn start(config: &str) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = berth_daemon::config::parse(config).unwrap();
        let opts = Options::new(
            config,
            Some(dir.path().to_owned()),
            Some("127.0.0.1:0".parse().unwrap()),
        )
        .unwrap();
        let daemon = rt.block_on(berth_daemon::start(opts)).unwrap();
        let url = format!("http://{}", daemon.addr());
        let token = read_token(dir.path());
        Bench {
            rt,
            daemon: Some(daemon),
            url,
            token,
            _dir: dir,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let req = ureq::request(method, &format!("{}{path}", self.url))
            .set("Authorization", &format!("Bearer {}", self.token));
        match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        }
        .unwrap()
        .into_json()
        .unwrap()
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            let _ = self.rt.block_on(d.stop());
        }
    }
}

fn read_token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("token"))
        .unwrap()
        .trim()
        .to_owned()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Slow simulated hosts, so that the burst measures acceptance, not the hosts.
const QUIET: &str = "[sim]\nlatency_scale = 1.0\n[probe]\ninterval_ms = 60000\n";

/// 2,000 one-VM requests from 16 concurrent clients; the time until the last is answered
/// (each answer comes after its batch is committed).
fn burst_of_requests() -> f64 {
    let b = Bench::start(QUIET);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (url, token, next) = (b.url.clone(), b.token.clone(), next.clone());
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().build();
                while next.fetch_add(1, Ordering::Relaxed) < 2000 {
                    let r = agent
                        .post(&format!("{url}/v1/requests"))
                        .set("Authorization", &format!("Bearer {token}"))
                        .send_json(json!({"template": "linux", "count": 1}))
                        .unwrap();
                    assert_eq!(r.status(), 201);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    start.elapsed().as_secs_f64()
}

/// One request of 2,000 VMs.
fn burst_in_one_request() -> f64 {
    let b = Bench::start(QUIET);
    let start = Instant::now();
    let r = b.call(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 2000})),
    );
    assert_eq!(r["count"], 2000);
    start.elapsed().as_secs_f64()
}

/// Lists 100,000 VMs (50 requests of 2,000, mostly queued) through `GET /v1/vms`.
fn list_100k() -> Vec<f64> {
    let b = Bench::start(QUIET);
    for _ in 0..50 {
        b.call(
            "POST",
            "/v1/requests",
            Some(json!({"template": "linux", "count": 2000})),
        );
    }
    let agent = ureq::AgentBuilder::new().build();
    let mut times = Vec::new();
    for _ in 0..9 {
        let start = Instant::now();
        let r = agent
            .get(&format!("{}/v1/vms", b.url))
            .set("Authorization", &format!("Bearer {}", b.token))
            .call()
            .unwrap();
        let mut body = Vec::new();
        std::io::copy(&mut r.into_reader(), &mut body).unwrap();
        times.push(start.elapsed().as_secs_f64());
        assert!(
            body.ends_with(b",\"count\":100000,\"next_after\":null}"),
            "listed {:?}",
            &body[body.len() - 30..]
        );
    }
    times
}

fn fleet_config() -> String {
    let mut config = String::from(
        "[sim]\nlatency_scale = 0.0\n[probe]\ninterval_ms = 60000\n[scheduler]\nprovisioning_per_host_max = 16\n",
    );
    for i in 0..200 {
        config.push_str(&format!(
            "[[hosts]]\nname = \"h{i}\"\ndriver = \"sim\"\nvcpus = 128\nmemory_mib = 262144\n"
        ));
    }
    config
}

/// Instant simulated hosts, a fleet of 200 hosts: 10,000 VMs submitted at once go from
/// queued to running (five state changes each) as fast as the control loop and its journal
/// allow. Returns state changes per second.
fn state_changes_per_second() -> (f64, Bench) {
    let b = Bench::start(&fleet_config());
    // Every host ready first.
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.call("GET", "/v1/status", None)["hosts"]["ready"] != 200 {
        assert!(Instant::now() < deadline, "hosts never became ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    let start = Instant::now();
    for _ in 0..5 {
        b.call(
            "POST",
            "/v1/requests",
            Some(json!({"template": "linux", "count": 2000})),
        );
    }
    loop {
        let s = b.call("GET", "/v1/status", None);
        if s["live_vms"]["running"] == 10_000 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "stuck: {s}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed().as_secs_f64();
    // queued, placed, provisioning, booting, running.
    (50_000.0 / elapsed, b)
}

/// `POST /v1/predict/drain` of 20 of the 200 hosts, an hour ahead, on the daemon that holds
/// 10,000 running VMs: with the last hour's requests (its five 2,000-VM requests) replayed, and
/// without arrivals, alternately. Returns the seconds of each (recent, none).
fn forecasts(b: &Bench) -> (Vec<f64>, Vec<f64>) {
    let hosts: Vec<String> = (0..20).map(|i| format!("h{i}")).collect();
    let (mut recent, mut none) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        for (arrivals, times) in [("recent", &mut recent), ("none", &mut none)] {
            let start = Instant::now();
            let p = b.call(
                "POST",
                "/v1/predict/drain",
                Some(json!({"hosts": hosts, "arrivals": arrivals})),
            );
            times.push(start.elapsed().as_secs_f64());
            let expected = if arrivals == "recent" { 5 } else { 0 };
            assert_eq!(p["arrivals"]["requests"], expected, "{p}");
        }
    }
    (recent, none)
}

/// Stops a daemon holding 10,000 running VMs and starts it again on the same directory:
/// journal replay plus reconciliation with 200 hosts. Returns (seconds, journaled inputs).
fn recovery(mut b: Bench) -> (f64, u64) {
    let d = b.daemon.take().unwrap();
    b.rt.block_on(d.stop()).unwrap();
    let dir = b._dir.path().to_owned();
    let conn_inputs: i64 = rusqlite::Connection::open(dir.join("berth.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
        .unwrap();
    let config = berth_daemon::config::parse(&fleet_config()).unwrap();
    let opts = Options::new(config, Some(dir), Some("127.0.0.1:0".parse().unwrap())).unwrap();
    let start = Instant::now();
    let daemon = b.rt.block_on(berth_daemon::start(opts)).unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    b.daemon = Some(daemon);
    (elapsed, conn_inputs as u64)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this with no such flag and
    // should not spend minutes here.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs = 5;
    let burst: Vec<f64> = (0..runs).map(|_| burst_of_requests()).collect();
    println!(
        "burst: 2,000 one-VM requests from 16 clients, accepted durably: median {:.3} s (runs {:?})",
        median(burst.clone()),
        burst.iter().map(|t| format!("{t:.3}")).collect::<Vec<_>>()
    );
    let one: Vec<f64> = (0..runs).map(|_| burst_in_one_request()).collect();
    println!(
        "burst: one request of 2,000 VMs, accepted durably: median {:.4} s",
        median(one)
    );
    let list = list_100k();
    println!(
        "list: GET /v1/vms returning 100,000 VMs: median {:.1} ms (runs {:?})",
        median(list.clone()) * 1000.0,
        list.iter()
            .map(|t| format!("{:.0}", t * 1000.0))
            .collect::<Vec<_>>()
    );
    let mut rates = Vec::new();
    let mut recoveries = Vec::new();
    let mut inputs = 0;
    let mut forecast_times = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let (rate, b) = state_changes_per_second();
        rates.push(rate);
        if forecast_times.0.is_empty() {
            forecast_times = forecasts(&b);
        }
        let (t, n) = recovery(b);
        recoveries.push(t);
        inputs = n;
    }
    println!(
        "control loop: VM state changes per second, journal on: median {:.0} (runs {:?})",
        median(rates.clone()),
        rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>()
    );
    println!(
        "forecast: drain 20 of 200 hosts an hour ahead, 10,000 VMs running: median {:.3} s \
         replaying the last hour's 10,000 VMs, {:.3} s without arrivals",
        median(forecast_times.0),
        median(forecast_times.1)
    );
    println!(
        "recovery: restart with 10,000 running VMs ({inputs} journaled inputs, 200 hosts listed): median {:.3} s",
        median(recoveries)
    );
}
