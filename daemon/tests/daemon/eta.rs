//! Queue positions and estimated starts on the request, change and queue answers.

use serde_json::{Value, json};

use crate::TestDaemon;

/// One host that runs one `linux` VM (2 vCPUs) at a time, so that requests queue behind it.
const ONE_SLOT: &str = r#"
[sim]
latency_scale = 0.001

[probe]
interval_ms = 100
timeout_ms = 1000
startup_grace_ms = 0

[[hosts]]
name = "sim-1"
driver = "sim"
vcpus = 2
memory_mib = 8192
images = ["linux"]
"#;

fn submit(d: &TestDaemon, change: &str) -> u64 {
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1, "expected_run_s": 600, "change": change})),
    );
    r["id"].as_u64().unwrap()
}

fn request(d: &TestDaemon, id: u64) -> Value {
    d.ok("GET", &format!("/v1/requests/{id}"), None)
}

#[test]
fn waiting_requests_show_their_position_and_expected_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), ONE_SLOT);
    d.wait_for("the host to be ready", |d| d.host_state("sim-1") == "ready");
    let running = submit(&d, "c1");
    d.wait_for("the first VM to run", |d| d.running_vms(running).len() == 1);
    let waiting: Vec<u64> = ["c1", "c2", "c2"].iter().map(|c| submit(&d, c)).collect();

    let first = request(&d, running);
    assert_eq!(first["position"], Value::Null, "{first}");
    assert_eq!(first["eta_ms"], Value::Null, "{first}");

    let rows: Vec<Value> = waiting.iter().map(|&id| request(&d, id)).collect();
    let now_ms = d.ok("GET", "/v1/status", None)["now_ms"].as_u64().unwrap();
    let mut etas = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["position"], i as u64 + 1, "{row}");
        assert_eq!(row["queue_len"], 3, "{row}");
        assert_eq!(row["eta_after_ms"], Value::Null, "{row}");
        etas.push(
            row["eta_ms"]
                .as_u64()
                .unwrap_or_else(|| panic!("no eta: {row}")),
        );
    }
    // Each starts when the one before it is expected to end: ten minutes apart, and the
    // modelled destroy, provisioning and boot times of the VM before it; the first in about
    // ten minutes (when the running VM's job is expected to end).
    assert!(
        etas[0] > now_ms + 9 * 60_000 && etas[0] < now_ms + 12 * 60_000,
        "{etas:?}"
    );
    for pair in etas.windows(2) {
        let gap = pair[1] - pair[0];
        assert!((600_000..720_000).contains(&gap), "{etas:?}");
    }

    // The list and the queue show the same table.
    let list = d.ok("GET", "/v1/requests?state=waiting", None);
    for row in list["requests"].as_array().unwrap() {
        let i = waiting.iter().position(|&id| id == row["id"]).unwrap();
        assert_eq!(row["eta_ms"], etas[i], "{row}");
    }
    let queue = d.ok("GET", "/v1/queue", None);
    let positions: Vec<&Value> = queue["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["position"])
        .collect();
    assert_eq!(positions, [1, 2, 3]);

    // A change is expected to start when its last waiting request does.
    let c2 = d.ok("GET", "/v1/changes/c2", None);
    assert_eq!(c2["eta_ms"], etas[2], "{c2}");
    assert_eq!(c2["requests"][1]["position"], 3, "{c2}");
    let changes = d.ok("GET", "/v1/changes", None);
    let c1 = changes["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["change"] == "c1")
        .unwrap();
    assert_eq!(c1["eta_ms"], etas[0], "{c1}");
    d.stop();
}

#[test]
fn estimates_learn_how_long_jobs_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), ONE_SLOT);
    d.wait_for("the host to be ready", |d| d.host_state("sim-1") == "ready");
    // Submits a one-VM request expected to run a second; returns its request and VM. (Its
    // VM is watched through the VM route: a request's answer would make the table of
    // estimates while it waits, and a later request would have none until the next.)
    let submit = |d: &TestDaemon| {
        let body = json!({"template": "linux", "count": 1, "expected_run_s": 1});
        let id = d.ok("POST", "/v1/requests", Some(body))["id"].clone();
        let vms = d.ok("GET", "/v1/vms", None);
        let vm = vms["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["request"] == id);
        (id.as_u64().unwrap(), vm.unwrap()["id"].as_u64().unwrap())
    };
    // A job expected to run a second reports its result after eight: jobs here run about
    // eight times what is expected of them.
    let (_, first) = submit(&d);
    d.wait_for("the first VM to run", |d| d.vm_state(first) == "running");
    std::thread::sleep(std::time::Duration::from_secs(8));
    d.ok(
        "POST",
        &format!("/v1/vms/{first}/result"),
        Some(json!({"passed": true})),
    );
    // The next such job is expected to run about as long, so the request behind it is
    // expected to start about eight seconds after it began, not one (when its expected run
    // time is up), and the modelled destroy time after that (the estimate's latencies are
    // the real drivers', a few seconds).
    let (_, second) = submit(&d);
    d.wait_for("the second VM to run", |d| d.vm_state(second) == "running");
    let now_ms = d.ok("GET", "/v1/status", None)["now_ms"].as_u64().unwrap();
    let (third, _) = submit(&d);
    let row = request(&d, third);
    let eta = row["eta_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no eta: {row}"));
    assert!(eta >= now_ms + 7_000, "eta {eta}, now {now_ms}: {row}");
    assert!(eta <= now_ms + 15_000, "eta {eta}, now {now_ms}: {row}");
    d.stop();
}
