//! What the console needs from the daemon: drain forecasts, VM rows with their template and
//! breakpoint, and the embedded demo.

use std::time::{Duration, Instant};

use berth_daemon::demo::{DemoOptions, demo};
use serde_json::{Value, json};

use super::{TestDaemon, call, vm_ids};

/// Two hosts of 4 vCPUs and one-vCPU jobs that run for 10 minutes.
const SMALL_FLEET: &str = r#"
[sim]
latency_scale = 0.001

[probe]
interval_ms = 100
timeout_ms = 1000
startup_grace_ms = 0

[[tokens]]
name = "viewer"
token = "viewer-token-0123456789"
role = "read-only"

[[templates]]
name = "job"
guest_os = "linux"
vcpus = 1
memory_mib = 1024
expected_provision_ms = 1000
expected_boot_ms = 5000
expected_run_ms = 600000

[[hosts]]
name = "h1"
driver = "sim"
vcpus = 4
memory_mib = 16384
images = ["job"]

[[hosts]]
name = "h2"
driver = "sim"
vcpus = 4
memory_mib = 16384
images = ["job"]
"#;

fn live_states(d: &TestDaemon) -> Vec<String> {
    d.ok("GET", "/v1/vms?live=true", None)["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["state"].as_str().unwrap().to_owned())
        .collect()
}

fn stat(v: &Value, side: &str, key: &str) -> u64 {
    v[side][key]
        .as_u64()
        .unwrap_or_else(|| panic!("{side}.{key} in {v}"))
}

#[test]
fn a_drain_that_removes_capacity_forecasts_longer_waits() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), SMALL_FLEET);
    d.wait_for("hosts ready", |d| {
        d.host_state("h1") == "ready" && d.host_state("h2") == "ready"
    });
    // 8 jobs fill both hosts; 8 more wait.
    for _ in 0..16 {
        d.ok(
            "POST",
            "/v1/requests",
            Some(json!({"template": "job", "count": 1})),
        );
    }
    d.wait_for("8 running, 8 queued", |d| {
        let s = live_states(d);
        s.iter().filter(|s| *s == "running").count() == 8
            && s.iter().filter(|s| *s == "queued").count() == 8
    });

    // Read-only tokens may ask: a forecast changes nothing.
    let (status, p) = call(
        &d.url,
        Some("viewer-token-0123456789"),
        "POST",
        "/v1/predict/drain",
        Some(json!({"hosts": ["h2"]})),
    );
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["hosts"], json!(["h2"]));
    assert_eq!(p["horizon_ms"], 3_600_000);
    // Without the drain the waiting jobs start as the first 8 end (about 10 minutes); with
    // only h1 they need two rounds on it.
    assert_eq!(stat(&p, "without", "still_waiting"), 0, "{p}");
    assert!(stat(&p, "without", "max_wait_ms") >= 500_000, "{p}");
    assert!(
        stat(&p, "with", "mean_wait_ms") > stat(&p, "without", "mean_wait_ms"),
        "{p}"
    );
    assert!(
        stat(&p, "with", "max_wait_ms") > stat(&p, "without", "max_wait_ms") + 400_000,
        "{p}"
    );
    assert!(stat(&p, "with", "p95_wait_ms") >= stat(&p, "without", "p95_wait_ms"));
    // By default the next hour brings what the last one did: the 16 requests again, one
    // horizon later. They wait behind the queue, longer still with h2 drained.
    let arrivals = &p["arrivals"];
    assert_eq!(arrivals["source"], "recent", "{p}");
    assert_eq!(arrivals["requests"], 16, "{p}");
    assert!(
        stat(arrivals, "with", "mean_wait_ms") > stat(arrivals, "without", "mean_wait_ms"),
        "{p}"
    );
    // Without arrivals, the requests waiting now are forecast alone.
    let alone = d.ok(
        "POST",
        "/v1/predict/drain",
        Some(json!({"hosts": ["h2"], "arrivals": "none"})),
    );
    assert_eq!(alone["arrivals"]["requests"], 0, "{alone}");
    assert_eq!(stat(&alone["arrivals"], "with", "mean_wait_ms"), 0);
    assert_eq!(
        stat(&alone, "without", "still_waiting"),
        stat(&p, "without", "still_waiting")
    );
    // The same state and seed give the same forecast; nothing was drained for real.
    let again = d.ok(
        "POST",
        "/v1/predict/drain",
        Some(json!({"hosts": ["h2"], "horizon_s": 3600})),
    );
    assert_eq!(again["with"], p["with"]);
    assert_eq!(d.host_state("h2"), "ready");

    // A short horizon leaves the stranded jobs waiting.
    let short = d.ok(
        "POST",
        "/v1/predict/drain",
        Some(json!({"hosts": ["h1", "h2"], "horizon_s": 60})),
    );
    assert_eq!(stat(&short, "with", "still_waiting"), 8, "{short}");

    let (status, e) = d.call(
        "POST",
        "/v1/predict/drain",
        Some(json!({"hosts": ["h1", "nope"]})),
    );
    assert_eq!((status, e["field"].as_str()), (404, Some("host")), "{e}");
    let (status, e) = d.call(
        "POST",
        "/v1/predict/drain",
        Some(json!({"hosts": ["h1"], "arrivals": "tomorrow"})),
    );
    assert_eq!(
        (status, e["field"].as_str()),
        (400, Some("arrivals")),
        "{e}"
    );
    let (status, e) = d.call("POST", "/v1/predict/drain", Some(json!({"hosts": []})));
    assert_eq!((status, e["field"].as_str()), (400, Some("hosts")), "{e}");
    let (status, e) = d.call(
        "POST",
        "/v1/predict/drain",
        Some(json!({"hosts": ["h1"], "horizon_s": 0})),
    );
    assert_eq!(
        (status, e["field"].as_str()),
        (400, Some("horizon_s")),
        "{e}"
    );
    let (status, _) = call(
        &d.url,
        None,
        "POST",
        "/v1/predict/drain",
        Some(json!({"hosts": ["h1"]})),
    );
    assert_eq!(status, 401);
}

#[test]
fn vm_rows_carry_their_template_and_breakpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), super::CONFIG);
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(
            json!({"template": "linux", "count": 1, "hold_on_failure": true,
                    "hold_owner": "alice", "hold_ttl_s": 600}),
        ),
    );
    let id = r["id"].as_u64().unwrap();
    d.wait_for("vm running", |d| {
        d.ok("GET", &format!("/v1/requests/{id}"), None)["vms"][0]["state"] == "running"
    });
    let vm = vm_ids(&d.ok("GET", &format!("/v1/requests/{id}"), None))[0];
    let row = d.ok("GET", &format!("/v1/vms/{vm}"), None);
    assert_eq!(row["template"], "linux");
    assert!(row.get("hold").is_none(), "{row}");

    let held = d.ok(
        "POST",
        &format!("/v1/vms/{vm}/result"),
        Some(json!({"passed": false})),
    );
    assert_eq!(held["state"], "held");
    assert_eq!(held["hold"]["owner"], "alice", "{held}");
    let expires = held["hold"]["expires_ms"].as_u64().unwrap();
    assert!(
        expires >= held["updated_ms"].as_u64().unwrap() + 600_000,
        "{held}"
    );

    let extended = d.ok(
        "POST",
        &format!("/v1/vms/{vm}/extend"),
        Some(json!({"seconds": 60})),
    );
    assert_eq!(extended["hold"]["expires_ms"], expires + 60_000);
    let list = d.ok("GET", "/v1/vms?live=true", None);
    let listed = list["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == vm)
        .unwrap();
    assert_eq!(listed["template"], "linux");
    assert_eq!(
        listed["hold"],
        json!({"owner": "alice", "expires_ms": expires + 60_000})
    );
    let shown = d.ok("GET", &format!("/v1/vms/berth-vm{vm}"), None);
    assert_eq!(shown["hold"], listed["hold"]);
    // Filtered by another state, no breakpoint is looked up (and none is shown).
    let running = d.ok("GET", "/v1/vms?state=running", None);
    assert!(
        running["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v.get("hold").is_none())
    );

    d.ok("POST", &format!("/v1/vms/{vm}/release"), None);
    d.wait_for("vm done", |d| d.vm_state(vm) == "done");
    let done = d.ok("GET", &format!("/v1/vms/{vm}"), None);
    assert!(done.get("hold").is_none(), "{done}");
    assert_eq!(done["template"], "linux");
}

#[test]
fn the_demo_daemon_starts_and_its_workload_flows() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let opts = DemoOptions {
        requests_per_s: 20.0,
        time_scale: 600,
        latency_scale: 0.001,
        ..DemoOptions::default()
    };
    let demo = rt.block_on(demo(opts)).unwrap();
    let (url, token) = (demo.url(), demo.token().to_owned());
    let data_dir = demo.data_dir().to_owned();
    // The demo keeps its store in SQLite whatever the suite's store: `berth demo` is an
    // embedded fleet with no store setting.
    assert!(data_dir.join("berth.db").exists());
    let deadline = Instant::now() + Duration::from_secs(60);
    let finished = |d: &berth_daemon::demo::Demo| {
        d.stats()
            .jobs_finished
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    while finished(&demo) < 20 {
        assert!(Instant::now() < deadline, "no jobs finished in 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let submitted = demo
        .stats()
        .submitted
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(submitted >= 20, "{submitted}");
    assert_eq!(
        demo.stats()
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // The API is there, with the demo fleet and the workload's templates.
    let (status, hosts) = call(&url, Some(&token), "GET", "/v1/hosts", None);
    assert_eq!(status, 200);
    let names: Vec<&str> = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"sim-mac-1") && names.contains(&"sim-arm-1"),
        "{names:?}"
    );
    let (_, vms) = call(&url, Some(&token), "GET", "/v1/vms?limit=50", None);
    let templates: Vec<&str> = vms["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["template"].as_str().unwrap())
        .collect();
    assert!(!templates.is_empty());
    assert!(
        templates
            .iter()
            .all(|t| ["linux", "macos", "windows"].contains(t))
    );
    let (_, requests) = call(&url, Some(&token), "GET", "/v1/requests?state=done", None);
    assert!(
        !requests["requests"].as_array().unwrap().is_empty(),
        "{requests}"
    );
    rt.block_on(demo.stop()).unwrap();
    assert!(!data_dir.exists());
}

/// A draining host says what it waits for: a held VM with its owner and expiry, and an ETA no
/// earlier than that expiry; once the hold is released the host reaches maintenance and the
/// drain status is gone.
#[test]
fn a_draining_host_names_the_breakpoint_that_holds_it_and_when_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), super::CONFIG);
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(
            json!({"template": "linux", "count": 1, "hold_on_failure": true,
                    "hold_owner": "alice", "hold_ttl_s": 600}),
        ),
    );
    let id = r["id"].as_u64().unwrap();
    d.wait_for("vm running", |d| {
        d.ok("GET", &format!("/v1/requests/{id}"), None)["vms"][0]["state"] == "running"
    });
    let vm = vm_ids(&d.ok("GET", &format!("/v1/requests/{id}"), None))[0];
    let host = d.ok("GET", &format!("/v1/vms/{vm}"), None)["host"]
        .as_str()
        .unwrap()
        .to_owned();
    let held = d.ok(
        "POST",
        &format!("/v1/vms/{vm}/result"),
        Some(json!({"passed": false})),
    );
    let expires = held["hold"]["expires_ms"].as_u64().unwrap();
    let drained = d.ok("POST", &format!("/v1/hosts/{host}/drain"), None);
    assert_eq!(drained["state"], "draining", "{drained}");
    let drain = &drained["drain"];
    assert_eq!(drain["eta_ms"], expires, "{drained}");
    let blocker = &drain["blockers"][0];
    assert_eq!(blocker["vm"], vm, "{drained}");
    assert_eq!(blocker["state"], "held", "{drained}");
    assert_eq!(blocker["held_by"], "alice", "{drained}");
    assert_eq!(blocker["held_until_ms"], expires, "{drained}");
    // Another host, not draining, has no drain status.
    let hosts = d.ok("GET", "/v1/hosts", None);
    let other = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] != host.as_str())
        .unwrap();
    assert!(other["drain"].is_null(), "{other}");

    d.ok("POST", &format!("/v1/vms/{vm}/release"), None);
    d.wait_for("host in maintenance", |d| {
        d.ok("GET", "/v1/hosts", None)["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| {
                h["name"] == host.as_str() && h["state"] == "maintenance" && h["drain"].is_null()
            })
    });
}
