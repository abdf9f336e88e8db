//! Record to replay, end to end: a real `berth serve` on simulated hosts, traffic through the
//! API, `berth trace export`, `berth sim run` with the live policy and seed (placements and
//! waits compared with the live run), then another policy and `berth sim compare`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use berth_testkit::{Api, Serve, wait_for};
use serde_json::{Value, json};

use super::{berth, text};

/// How far a replayed wait may be from the live one. The live daemon's driver calls, batches
/// and HTTP round trips take a few milliseconds that a zero-latency replay does not model; a
/// busy CI machine stretches them (docs/observability.md says why); a wrong order shows in
/// the placements.
const WAIT_TOLERANCE_MS: i64 = 500;

const CONFIG: &str = r#"
[scheduler]
policy = "easy"

[sim]
latency_scale = 0.0
seed = 1

[probe]
interval_ms = 200
startup_grace_ms = 0

[[templates]]
name = "linux"
guest_os = "linux"
vcpus = 2
memory_mib = 4096
expected_run_ms = 2000

[[hosts]]
name = "kvm-1"
driver = "sim"
vcpus = 4
memory_mib = 16384
images = ["linux"]

[[hosts]]
name = "kvm-2"
driver = "sim"
vcpus = 8
memory_mib = 16384
cpu_overcommit_milli = 500
images = ["linux"]

[[hosts]]
name = "kvm-3"
driver = "sim"
vcpus = 8
memory_mib = 32768
"#;

fn api(url: &str, token: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    Api::new(url, Some(token)).ok(method, path, body)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    wait_for(what, Duration::from_secs(30), || f().then_some(()));
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_live_run_exported_and_replayed_places_and_waits_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let serve = Serve::start(Path::new(env!("CARGO_BIN_EXE_berth")), d, CONFIG);
    let (url, token) = (serve.url.clone(), serve.token.clone());
    wait_until("three ready hosts", || {
        api(&url, &token, "GET", "/v1/hosts", None)["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["state"] == "ready")
            .count()
            == 3
    });

    let running =
        |vm: u64| api(&url, &token, "GET", &format!("/v1/vms/{vm}"), None)["state"] == "running";
    // kvm-1 (4 vCPUs), kvm-2 (8 at overcommit 0.5: 4) and kvm-3 (8) hold eight two-vCPU VMs;
    // then a gang of two and three single VMs wait for jobs to end. Each of the eight runs
    // before the next is sent: placed in one pass, several would share an expected end, while
    // the replay places each at its own arrival, and EASY's room beside the gang's
    // reservation (so the backfill of the last requests) would differ.
    let mut requests = Vec::new();
    for i in 0..8 {
        let requester = if i % 2 == 0 { "ci-east" } else { "dev-17" };
        let r = api(
            &url,
            &token,
            "POST",
            "/v1/requests",
            Some(json!({"template": "linux", "count": 1, "requester": requester})),
        );
        requests.push(r["id"].as_u64().unwrap());
        wait_until("the vm to run", || running(i + 1));
    }
    let gang = api(
        &url,
        &token,
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 2, "gang": true, "requester": "ci-east"})),
    );
    requests.push(gang["id"].as_u64().unwrap());
    for _ in 0..3 {
        let r = api(
            &url,
            &token,
            "POST",
            "/v1/requests",
            Some(json!({"template": "linux", "count": 1, "requester": "ci-west"})),
        );
        requests.push(r["id"].as_u64().unwrap());
    }
    // Jobs end one by one, 300 ms apart; the first fails.
    for vm in 1..=8u64 {
        wait_until("the vm to run", || running(vm));
        std::thread::sleep(Duration::from_millis(300));
        api(
            &url,
            &token,
            "POST",
            &format!("/v1/vms/{vm}/result"),
            Some(json!({"passed": vm != 1})),
        );
    }
    for vm in 9..=13u64 {
        wait_until("the waiting vms to run", || running(vm));
    }
    std::thread::sleep(Duration::from_millis(200));
    for vm in 9..=13u64 {
        api(
            &url,
            &token,
            "POST",
            &format!("/v1/vms/{vm}/result"),
            Some(json!({"passed": true})),
        );
    }
    // The live run: each request's waits and hosts.
    let mut live: BTreeMap<u64, (u64, Vec<String>)> = BTreeMap::new();
    for &id in &requests {
        let r = api(&url, &token, "GET", &format!("/v1/requests/{id}"), None);
        let submitted = r["submitted_ms"].as_u64().unwrap();
        let mut placed_max = 0;
        let mut hosts = Vec::new();
        for v in r["vms"].as_array().unwrap() {
            let vm = api(&url, &token, "GET", &format!("/v1/vms/{}", v["id"]), None);
            let history = vm["history"].as_array().unwrap();
            let placed = history.iter().find(|h| h["to"] == "placed").unwrap();
            placed_max = placed_max.max(placed["at_ms"].as_u64().unwrap());
            hosts.push(placed["host"].as_str().unwrap().to_owned());
        }
        hosts.sort();
        live.insert(id, (placed_max - submitted, hosts));
    }
    assert!(
        live.values().filter(|(w, _)| *w >= 300).count() >= 4,
        "the traffic should make requests wait: {live:?}"
    );
    // An operator drains a host at the end: a host record of the trace.
    api(
        &url,
        &token,
        "POST",
        "/v1/hosts/kvm-3/drain",
        Some(json!({})),
    );
    drop(serve);

    // Export, then replay with the live policy and seed.
    let trace = d.join("live.jsonl");
    let fleet = d.join("fleet.toml");
    let out = berth(&[
        "trace",
        "export",
        "--db",
        d.join("data/berth.db").to_str().unwrap(),
        "--out",
        trace.to_str().unwrap(),
        "--fleet-out",
        fleet.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let records = read_lines(&trace);
    let arrivals: BTreeMap<u64, u64> = records
        .iter()
        .filter(|r| r["kind"] == "request")
        .map(|r| (r["id"].as_u64().unwrap(), r["at_ms"].as_u64().unwrap()))
        .collect();
    assert_eq!(arrivals.len(), requests.len());
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "host" && r["host"] == "kvm-3-0001" && r["event"] == "drained"),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["id"] == requests[0] && r["outcome"] == "failed"),
        "{records:?}"
    );

    let run = |policy: &str, report: &Path, placements: &Path| {
        let out = berth(&[
            "sim",
            "run",
            "--trace",
            trace.to_str().unwrap(),
            "--fleet",
            fleet.to_str().unwrap(),
            "--policy",
            policy,
            "--latency",
            "zero",
            "--seed",
            "1",
            "--report",
            report.to_str().unwrap(),
            "--placements",
            placements.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    let (easy_report, easy_placements) = (d.join("easy.json"), d.join("easy-placements.jsonl"));
    run("easy", &easy_report, &easy_placements);
    let mut replay: BTreeMap<u64, (u64, Vec<String>)> = BTreeMap::new();
    for p in read_lines(&easy_placements) {
        let request = p["request"].as_u64().unwrap();
        let at = p["at_ms"].as_u64().unwrap();
        // A fleet-file class of one host is named CLASS-0001.
        let host = p["host"]
            .as_str()
            .unwrap()
            .trim_end_matches("-0001")
            .to_owned();
        let e = replay.entry(request).or_default();
        e.0 = e.0.max(at - arrivals[&request]);
        e.1.push(host);
    }
    for e in replay.values_mut() {
        e.1.sort();
    }
    assert_eq!(
        live.keys().collect::<Vec<_>>(),
        replay.keys().collect::<Vec<_>>()
    );
    for (id, (live_wait, live_hosts)) in &live {
        let (replay_wait, replay_hosts) = &replay[id];
        assert_eq!(
            live_hosts, replay_hosts,
            "request {id}: live {live:?}\nreplay {replay:?}"
        );
        let diff = *live_wait as i64 - *replay_wait as i64;
        assert!(
            diff.abs() <= WAIT_TOLERANCE_MS,
            "request {id} waited {live_wait} ms live and {replay_wait} ms in the replay"
        );
    }

    // Another policy, and the comparison of the two.
    let (fcfs_report, fcfs_placements) = (d.join("fcfs.json"), d.join("fcfs-placements.jsonl"));
    run("fcfs", &fcfs_report, &fcfs_placements);
    let out = berth(&[
        "sim",
        "compare",
        easy_report.to_str().unwrap(),
        fcfs_report.to_str().unwrap(),
    ]);
    let table = text(&out.stdout);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{table}{}",
        text(&out.stderr)
    );
    assert!(table.contains("wait"), "{table}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&fcfs_report).unwrap()).unwrap();
    assert_eq!(report["policy"], "fcfs");
    assert_eq!(report["requests"], requests.len());
}
