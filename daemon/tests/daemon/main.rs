//! The daemon end to end: a real daemon on loopback with its store in a temporary directory
//! (a real SQLite file) or, with `BERTH_TEST_STORE=postgres`, in a fresh database on a real
//! PostgreSQL server (`stores`), driven over HTTP. The crash test runs `berth serve` as a child process and kills
//! it with SIGKILL in the middle of a burst. `parallels` drives Mac hosts through a real `sshd`
//! with the `prlctl` stand-in (`berth_testkit::sshd`).

// Helpers outside `#[test]` functions panic on failure by design: they are the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_daemon::{Daemon, FileConfig, Options};
use berth_testkit::{Api, Serve};
use serde_json::{Value, json};

mod console_api;
mod contract;
mod disk;
mod eta;
mod fair;
mod images;
mod limits;
mod observe;
mod orphans;
mod parallels;
mod postgres;
mod postgres_tls;
mod prometheus;
mod pulses;
mod quota;
mod shared_inventory;
mod snapshots;
mod stores;
mod warm;

const CONFIG: &str = r#"
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
"#;

struct TestDaemon {
    rt: tokio::runtime::Runtime,
    daemon: Option<Daemon>,
    dir: PathBuf,
    url: String,
    token: String,
}

impl TestDaemon {
    fn start(dir: &Path, config: &str) -> TestDaemon {
        TestDaemon::try_start(dir, config, berth_daemon::OrphanStart::Refuse).unwrap()
    }

    /// Starts a daemon whose start may fail (a refused data directory).
    fn try_start(
        dir: &Path,
        config: &str,
        orphans: berth_daemon::OrphanStart,
    ) -> Result<TestDaemon, berth_daemon::DaemonError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let config: FileConfig = berth_daemon::config::parse(config).unwrap();
        let mut opts = Options::new(
            config,
            Some(dir.to_owned()),
            Some("127.0.0.1:0".parse().unwrap()),
        )
        .unwrap();
        opts.orphans = orphans;
        opts.store = stores::store_of(dir);
        let daemon = rt.block_on(berth_daemon::start(opts))?;
        let url = format!("http://{}", daemon.addr());
        let token = std::fs::read_to_string(dir.join("token"))
            .unwrap()
            .trim()
            .to_owned();
        Ok(TestDaemon {
            rt,
            daemon: Some(daemon),
            dir: dir.to_owned(),
            url,
            token,
        })
    }

    fn stop(mut self) {
        if let Some(d) = self.daemon.take() {
            self.rt.block_on(d.stop()).unwrap();
        }
    }

    /// A connection to the daemon's store, beside the daemon (see `stores::connect`).
    fn db(&self) -> berth_daemon::db::Db {
        stores::connect(&self.dir)
    }

    /// The text of `GET /metrics`.
    fn metrics_text(&self) -> String {
        ureq::get(&format!("{}/metrics", self.url))
            .set("Authorization", &format!("Bearer {}", self.token))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    }

    /// A client with the operator token.
    fn api(&self) -> Api {
        Api::new(&self.url, Some(&self.token))
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api().call(method, path, body)
    }

    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.api().ok(method, path, body)
    }

    /// Polls until `f` holds, or fails after 30 s (generous: CI machines are busy).
    fn wait_for(&self, what: &str, mut f: impl FnMut(&TestDaemon) -> bool) {
        berth_testkit::wait_for(what, Duration::from_secs(30), || f(self).then_some(()));
    }

    fn pulls(&self) -> &berth_drivers::images::Pulls {
        self.daemon.as_ref().unwrap().pulls()
    }

    fn sim(&self) -> &Arc<berth_drivers::sim::SimWorld> {
        self.daemon.as_ref().unwrap().sim()
    }

    /// The running VMs of `request`, as `(id, host)`.
    fn running_vms(&self, request: u64) -> Vec<(u64, String)> {
        self.ok("GET", &format!("/v1/requests/{request}"), None)["vms"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["state"] == "running")
            .map(|v| {
                (
                    v["id"].as_u64().unwrap(),
                    v["host"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    fn vm_state(&self, vm: u64) -> String {
        self.ok("GET", &format!("/v1/vms/{vm}"), None)["state"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn host_state(&self, name: &str) -> String {
        let hosts = self.ok("GET", "/v1/hosts", None);
        hosts["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == name)
            .map(|h| h["state"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            let _ = self.rt.block_on(d.stop());
        }
    }
}

fn call(
    url: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    Api::new(url, token).call(method, path, body)
}

fn call_raw(url: &str, token: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let req = ureq::request(method, &format!("{url}{path}"))
        .set("Authorization", &format!("Bearer {token}"))
        .set("Content-Type", "application/json");
    match req.send_string(body) {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

fn vm_ids(request: &Value) -> Vec<u64> {
    request["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn requests_run_end_and_explain_why_they_wait() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 2})),
    );
    let id = r["id"].as_u64().unwrap();
    assert_eq!(r["count"], 2);
    d.wait_for("both vms running", |d| {
        let r = d.ok("GET", &format!("/v1/requests/{id}"), None);
        r["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "running")
    });
    let r = d.ok("GET", &format!("/v1/requests/r{id}"), None);
    let vms = vm_ids(&r);
    assert_eq!(vms.len(), 2);
    for vm in &vms {
        d.ok(
            "POST",
            &format!("/v1/vms/{vm}/result"),
            Some(json!({"passed": true})),
        );
    }
    d.wait_for("request done", |d| {
        d.ok("GET", &format!("/v1/requests/{id}"), None)["state"] == "done"
    });
    let vm = d.ok("GET", &format!("/v1/vms/berth-vm{}", vms[0]), None);
    let steps: Vec<&str> = vm["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "queued",
            "placed",
            "provisioning",
            "booting",
            "running",
            "releasing",
            "done"
        ]
    );

    // A request too big for the free capacity waits, and says why.
    let big = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 10, "cpus": 16, "gang": true})),
    );
    let big_id = big["id"].as_u64().unwrap();
    let filler = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1000, "cpus": 16})),
    );
    let filler_id = filler["id"].as_u64().unwrap();
    let r = d.ok("GET", &format!("/v1/requests/{filler_id}"), None);
    assert_eq!(r["state"], "waiting", "{r}");
    let q = d.ok("GET", "/v1/queue", None);
    let q = q["queue"].as_array().unwrap();
    let waiting = q.iter().find(|r| r["id"] == filler_id).unwrap();
    assert!(waiting["why"]["summary"].is_string(), "{waiting}");
    assert!(q.iter().all(|r| r["state"] == "waiting"), "{q:?}");
    assert!(
        r["why"]["summary"].as_str().unwrap().contains("wait"),
        "{r}"
    );
    assert!(r["why"]["hosts_total"].as_u64().unwrap() >= 16);
    // Cancel both: nothing of them stays.
    for id in [big_id, filler_id] {
        let r = d.ok("DELETE", &format!("/v1/requests/{id}"), None);
        // Either ended at once (nothing was placed), or still active while its VMs are
        // released: then it says what it ends as.
        match r["state"].as_str() {
            Some("cancelled") => assert!(r["ending"].is_null(), "{r}"),
            Some("active") => assert_eq!(r["ending"], "cancelled", "{r}"),
            _ => panic!("a cancel answered {r}"),
        }
        if id == filler_id {
            assert_eq!(r["state"], "active", "the filler has VMs to release: {r}");
        }
    }
    d.wait_for("both cancelled", |d| {
        [big_id, filler_id]
            .iter()
            .all(|id| d.ok("GET", &format!("/v1/requests/{id}"), None)["state"] == "cancelled")
    });
    let live = d.ok("GET", "/v1/vms?live=true", None);
    d.wait_for("no live vms", |d| {
        d.ok("GET", "/v1/vms?live=true", None)["count"] == 0
    });
    let _ = live;
    // Cancelling again is done already: the answer says how the request ended.
    let again = d.ok("DELETE", &format!("/v1/requests/{big_id}"), None);
    assert_eq!(again["state"], "cancelled", "{again}");
    assert!(again["ending"].is_null(), "{again}");
    let listed = d.ok("GET", &format!("/v1/vms?request={id}&state=done"), None);
    assert_eq!(listed["count"], 2);
}

#[test]
fn breakpoints_hold_extend_release_and_show_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(
            json!({"template": "windows", "count": 1, "hold_on_failure": true, "hold_ttl_s": 600}),
        ),
    );
    let id = r["id"].as_u64().unwrap();
    d.wait_for("vm running", |d| {
        let r = d.ok("GET", &format!("/v1/requests/{id}"), None);
        r["vms"][0]["state"] == "running"
    });
    let vm = vm_ids(&d.ok("GET", &format!("/v1/requests/{id}"), None))[0];
    let v = d.ok(
        "POST",
        &format!("/v1/vms/{vm}/result"),
        Some(json!({"passed": false})),
    );
    assert_eq!(v["state"], "held");
    let v = d.ok(
        "POST",
        &format!("/v1/vms/{vm}/extend"),
        Some(json!({"seconds": 60})),
    );
    assert_eq!(v["state"], "held");
    let c = d.ok("GET", &format!("/v1/vms/{vm}/console"), None);
    assert!(c["address"].as_str().unwrap().starts_with("vnc://"), "{c}");
    assert!(c["ssh"].as_str().unwrap().starts_with("ssh -L "), "{c}");
    let png = ureq::get(&format!("{}/v1/vms/{vm}/screenshot", d.url))
        .set("Authorization", &format!("Bearer {}", d.token))
        .call()
        .unwrap();
    assert_eq!(png.header("content-type"), Some("image/png"));
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut png.into_reader(), &mut bytes).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"));
    // Simulated guests have no serial console: the answer says the driver cannot.
    let (status, body) = d.call("GET", &format!("/v1/vms/{vm}/serial"), None);
    assert_eq!(status, 501, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("serial log"),
        "{body}"
    );
    d.ok("POST", &format!("/v1/vms/{vm}/release"), None);
    d.wait_for("vm done", |d| d.vm_state(vm) == "done");
    // Released twice: the second is refused, and changes nothing.
    let (status, _) = d.call("POST", &format!("/v1/vms/{vm}/release"), None);
    assert_eq!(status, 404);
}

#[test]
fn hosts_are_added_drained_resumed_taken_offline_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    let h = d.ok(
        "POST",
        "/v1/hosts",
        Some(
            json!({"name": "rack-9", "driver": "sim", "vcpus": 8, "memory_mib": 16384,
                    "labels": {"pool": "new"}}),
        ),
    );
    assert_eq!(h["name"], "rack-9");
    d.wait_for("new host ready", |d| d.host_state("rack-9") == "ready");
    // A request that only the new host can take runs there.
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1, "labels": {"pool": "new"}})),
    );
    let id = r["id"].as_u64().unwrap();
    d.wait_for("vm running on rack-9", |d| {
        let r = d.ok("GET", &format!("/v1/requests/{id}"), None);
        r["vms"][0]["state"] == "running" && r["vms"][0]["host"] == "rack-9"
    });
    assert_eq!(
        d.ok("POST", "/v1/hosts/rack-9/drain", None)["state"],
        "draining"
    );
    let (status, err) = d.call("DELETE", "/v1/hosts/rack-9", None);
    assert_eq!(status, 409, "{err}");
    assert_eq!(
        d.ok("POST", "/v1/hosts/rack-9/resume", None)["state"],
        "ready"
    );
    assert_eq!(
        d.ok("POST", "/v1/hosts/rack-9/offline", None)["state"],
        "offline"
    );
    d.wait_for("host empty", |d| {
        d.ok("GET", "/v1/hosts", None)["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "rack-9" && h["vms"] == 0)
    });
    d.ok("DELETE", "/v1/hosts/rack-9", None);
    let (status, err) = d.call("POST", "/v1/hosts/rack-9/drain", None);
    assert_eq!((status, err["field"].as_str()), (404, Some("host")));
}

#[test]
fn a_host_shows_when_it_last_answered_even_when_nothing_changed() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    d.wait_for("host ready", |d| d.host_state("sim-small-1") == "ready");
    let last_probe = |d: &TestDaemon| {
        d.ok("GET", "/v1/hosts", None)["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == "sim-small-1")
            .and_then(|h| h["last_probe_ms"].as_u64())
            .expect("probed")
    };
    let probes_journaled = || -> i64 {
        d.db()
            .row(
                "SELECT count(*) FROM journal WHERE input LIKE '%\"probe\"%'",
                &[],
                |r| r.i64(0),
            )
            .unwrap()
            .unwrap()
    };
    let (first, journaled) = (last_probe(&d), probes_journaled());
    assert!(journaled > 0, "the first probes are journaled");
    // Probes every 100 ms answer the same: the time moves on, the journal does not grow.
    d.wait_for("a later probe shown", |d| last_probe(d) >= first + 300);
    assert_eq!(probes_journaled(), journaled);
}

#[test]
fn auth_needs_a_token_read_only_cannot_change_and_operators_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    // The token file is private to its owner.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // One data directory, one daemon.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut opts = Options::new(
        berth_daemon::config::parse(CONFIG).unwrap(),
        Some(dir.path().to_owned()),
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .unwrap();
    opts.store = stores::store_of(dir.path());
    let second = rt.block_on(berth_daemon::start(opts));
    assert!(
        matches!(second, Err(berth_daemon::DaemonError::DataDirBusy(_))),
        "a second daemon started on the same data directory"
    );
    let (status, body) = call(&d.url, None, "GET", "/v1/hosts", None);
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].is_string());
    let (status, _) = call(&d.url, Some("not-a-token"), "GET", "/v1/hosts", None);
    assert_eq!(status, 401);
    let viewer = Some("viewer-token-0123456789");
    let (status, _) = call(&d.url, viewer, "GET", "/v1/hosts", None);
    assert_eq!(status, 200);
    let (_, me) = call(&d.url, viewer, "GET", "/v1/whoami", None);
    assert_eq!(
        (me["name"].as_str(), me["role"].as_str()),
        (Some("viewer"), Some("read-only"))
    );
    assert_eq!(d.ok("GET", "/v1/whoami", None)["role"], "operator");
    let (status, _) = call(&d.url, viewer, "POST", "/v1/hosts/sim-small-1/drain", None);
    assert_eq!(status, 403);
    let (status, _) = call(
        &d.url,
        viewer,
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1})),
    );
    assert_eq!(status, 403);
    assert_eq!(d.host_state("sim-small-1"), "ready");
    // healthz needs no token.
    let r = ureq::get(&format!("{}/healthz", d.url)).call().unwrap();
    assert_eq!(r.status(), 200);

    d.ok("POST", "/v1/hosts/sim-small-1/drain", None);
    let (status, _) = d.call("POST", "/v1/hosts/sim-small-2/offline", None);
    assert_eq!(status, 200);
    let (status, _) = d.call("POST", "/v1/vms/999999/release", None);
    assert_eq!(status, 404);
    let audit = d.ok("GET", "/v1/audit", None);
    let rows = audit["audit"].as_array().unwrap();
    let drain = rows.iter().find(|r| r["action"] == "drain").unwrap();
    assert_eq!(drain["who"], "local");
    assert_eq!(drain["role"], "operator");
    assert_eq!(drain["outcome"], "ok");
    assert!(drain["at_ms"].as_u64().unwrap() > 0);
    let refused = rows.iter().find(|r| r["action"] == "release").unwrap();
    assert!(
        refused["outcome"].as_str().unwrap().starts_with("refused"),
        "{refused}"
    );
    // The read-only token reads no audit log.
    let (status, _) = call(&d.url, viewer, "GET", "/v1/audit", None);
    assert_eq!(status, 403);
    // Rows are in the store itself.
    let n = d
        .db()
        .row("SELECT count(*) FROM audit WHERE who = 'local'", &[], |r| {
            r.i64(0)
        })
        .unwrap()
        .unwrap();
    assert!(n >= 3);
}

#[test]
fn bad_input_gets_a_4xx_naming_the_field_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    let cases: &[(&str, &str, &str, u16, Option<&str>)] = &[
        (
            "POST",
            "/v1/requests",
            r#"{"count": 1}"#,
            400,
            Some("template"),
        ),
        (
            "POST",
            "/v1/requests",
            r#"{"template": "linux"}"#,
            400,
            Some("count"),
        ),
        (
            "POST",
            "/v1/requests",
            r#"{"template": "linux", "count": 0}"#,
            400,
            Some("count"),
        ),
        (
            "POST",
            "/v1/requests",
            r#"{"template": "linux", "count": "two"}"#,
            400,
            Some("count"),
        ),
        (
            "POST",
            "/v1/requests",
            r#"{"template": "beos", "count": 1}"#,
            400,
            Some("template"),
        ),
        (
            "POST",
            "/v1/requests",
            r#"{"template": "linux", "count": 1, "account": ""}"#,
            400,
            Some("account"),
        ),
        (
            "POST",
            "/v1/requests",
            r#"{"template": "linux", "count": 1, "account": "qt\u001b[2Jbase"}"#,
            400,
            Some("account"),
        ),
        (
            "POST",
            "/v1/requests",
            r#"{"template": "linux", "count": 1, "change": "\u202eI42"}"#,
            400,
            Some("change"),
        ),
        (
            "POST",
            "/v1/requests",
            r#"{"template": "linux", "count": 1, "cpus": 0}"#,
            400,
            Some("cpus"),
        ),
        (
            "POST",
            "/v1/requests",
            r#"{"template": "linux", "count": 1, "colour": "red"}"#,
            400,
            Some("colour"),
        ),
        (
            "POST",
            "/v1/requests",
            r#"{"template": "linux", "count": 1, "hold_ttl_s": 5}"#,
            400,
            Some("hold_on_failure"),
        ),
        (
            "POST",
            "/v1/requests",
            r#"{"template": "linux", "#,
            400,
            None,
        ),
        ("GET", "/v1/requests/xyz", "", 400, Some("request")),
        ("GET", "/v1/requests/424242", "", 404, Some("request")),
        ("DELETE", "/v1/requests/424242", "", 404, Some("request")),
        ("POST", "/v1/requests", "123", 400, None),
        ("GET", "/v1/requests?limit=many", "", 400, Some("query")),
        ("GET", "/v1/vms?state=sleeping", "", 400, Some("state")),
        ("GET", "/v1/vms?request=abc", "", 400, Some("request")),
        ("GET", "/v1/vms?bogus=1", "", 400, Some("query")),
        ("GET", "/v1/vms/notavm", "", 400, Some("vm")),
        ("GET", "/v1/vms/424242", "", 404, Some("vm")),
        ("POST", "/v1/vms/1/result", r#"{}"#, 400, Some("passed")),
        (
            "POST",
            "/v1/vms/1/result",
            r#"{"passed": "yes"}"#,
            400,
            Some("passed"),
        ),
        (
            "POST",
            "/v1/vms/424242/result",
            r#"{"passed": true}"#,
            404,
            Some("vm"),
        ),
        ("POST", "/v1/vms/424242/release", "", 404, Some("vm")),
        (
            "POST",
            "/v1/vms/1/release",
            r#"{"now": true}"#,
            400,
            Some("now"),
        ),
        (
            "POST",
            "/v1/vms/1/extend",
            r#"{"seconds": 0}"#,
            400,
            Some("seconds"),
        ),
        ("POST", "/v1/vms/1/extend", r#"{}"#, 400, Some("seconds")),
        ("GET", "/v1/vms/424242/console", "", 404, Some("vm")),
        ("GET", "/v1/vms/424242/screenshot", "", 404, Some("vm")),
        ("GET", "/v1/vms/424242/serial", "", 404, Some("vm")),
        (
            "GET",
            "/v1/vms/1/serial?tail_bytes=0",
            "",
            400,
            Some("tail_bytes"),
        ),
        ("GET", "/v1/vms/1/serial?lines=3", "", 400, Some("query")),
        ("GET", "/v1/queue?limit=-1", "", 400, Some("query")),
        ("GET", "/v1/audit?limit=x", "", 400, Some("query")),
        (
            "POST",
            "/v1/hosts",
            r#"{"name": "x", "driver": "vmware", "vcpus": 1, "memory_mib": 1}"#,
            400,
            Some("driver"),
        ),
        (
            "POST",
            "/v1/hosts",
            r#"{"name": "bad name", "driver": "sim", "vcpus": 1, "memory_mib": 1}"#,
            400,
            Some("name"),
        ),
        (
            "POST",
            "/v1/hosts",
            r#"{"name": "x", "driver": "sim", "vcpus": 0, "memory_mib": 1}"#,
            400,
            Some("vcpus"),
        ),
        (
            "POST",
            "/v1/hosts",
            r#"{"name": "x", "driver": "sim", "memory_mib": 1}"#,
            400,
            Some("vcpus"),
        ),
        (
            "POST",
            "/v1/hosts",
            r#"{"name": "sim-small-1", "driver": "sim", "vcpus": 1, "memory_mib": 1}"#,
            409,
            Some("name"),
        ),
        (
            "POST",
            "/v1/hosts",
            r#"{"name": "x", "driver": "sim", "vcpus": 1, "memory_mib": 1, "options": {"uri": "a"}}"#,
            400,
            Some("options"),
        ),
        ("POST", "/v1/hosts/nohost/drain", "", 404, Some("host")),
        // Each host operation is a route of its own: another is no route at all.
        ("POST", "/v1/hosts/sim-small-1/explode", "", 404, None),
        (
            "POST",
            "/v1/hosts/sim-small-1/drain",
            r#"{"force": true}"#,
            400,
            Some("force"),
        ),
        ("DELETE", "/v1/hosts/nohost", "", 404, Some("host")),
        ("GET", "/v1/nothing", "", 404, None),
    ];
    for (method, path, body, status, field) in cases {
        let (got, v) = call_raw(&d.url, &d.token, method, path, body);
        assert_eq!(got, *status, "{method} {path} {body}: {v}");
        assert!(v["error"].is_string(), "{method} {path} {body}: {v}");
        assert_eq!(v["field"].as_str(), *field, "{method} {path} {body}: {v}");
    }
    // Nothing was half-applied: no request, no new host, every host still ready.
    assert_eq!(d.ok("GET", "/v1/requests", None)["requests"], json!([]));
    let hosts = d.ok("GET", "/v1/hosts", None);
    let hosts = hosts["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 16);
    assert!(hosts.iter().all(|h| h["state"] == "ready"));
    let n = d
        .db()
        .row("SELECT count(*) FROM requests", &[], |r| r.i64(0))
        .unwrap();
    assert_eq!(n, Some(0));
}

#[test]
fn the_event_stream_sends_state_changes() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    // Opening the stream checks that it is `text/event-stream`.
    let stream = d.api().events();
    let reader = std::thread::spawn(move || {
        let mut events = Vec::new();
        for e in stream {
            let running = e["to"] == "running";
            events.push(e);
            if running {
                break;
            }
        }
        events
    });
    d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1})),
    );
    d.wait_for("a running event", |_| reader.is_finished());
    let events = reader.join().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "request" && e["to"] == "waiting")
    );
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "vm" && e["to"] == "placed" && e["host"].is_string())
    );
}

/// Brings the embedded fleet into a state a restart must restore whole: `linux` Linux VMs
/// and `macos` macOS VMs (held on failure) running, 500 Windows VMs waiting, a host draining,
/// and one macOS VM held after a failed job; returns that VM's id.
fn a_busy_fleet(d: &TestDaemon, linux: u64, macos: u64) -> u64 {
    d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": linux})),
    );
    d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "macos", "count": macos, "hold_on_failure": true})),
    );
    d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "windows", "count": 500, "cpus": 8})),
    );
    d.wait_for("linux and macos running", |d| {
        [1, 2].iter().all(|id| {
            d.ok("GET", &format!("/v1/requests/{id}"), None)["vms"]
                .as_array()
                .unwrap()
                .iter()
                .all(|v| v["state"] == "running")
        })
    });
    d.ok("POST", "/v1/hosts/sim-large-1/drain", None);
    let held = vm_ids(&d.ok("GET", "/v1/requests/2", None))[0];
    d.ok(
        "POST",
        &format!("/v1/vms/{held}/result"),
        Some(json!({"passed": false})),
    );
    held
}

#[test]
fn a_restart_replays_the_journal_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    let held = a_busy_fleet(&d, 5, 3);
    std::thread::sleep(Duration::from_millis(200));
    let before_hosts = d.ok("GET", "/v1/hosts", None);
    let before_vms = d.ok("GET", "/v1/vms?live=true", None);
    d.stop();
    let d = TestDaemon::start(dir.path(), CONFIG);
    let after_vms = d.ok("GET", "/v1/vms?live=true", None);
    assert_eq!(before_vms["count"], after_vms["count"]);
    let states = |v: &Value| -> BTreeMap<u64, (String, String)> {
        v["vms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["id"].as_u64().unwrap(),
                    (v["state"].to_string(), v["host"].to_string()),
                )
            })
            .collect()
    };
    assert_eq!(states(&before_vms), states(&after_vms));
    let caps = |v: &Value| -> Vec<(String, String, i64)> {
        v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["name"].as_str().unwrap().to_owned(),
                    h["state"].as_str().unwrap().to_owned(),
                    h["vcpus_used_milli"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(caps(&before_hosts), caps(&d.ok("GET", "/v1/hosts", None)));
    assert_eq!(d.vm_state(held), "held");
}

#[test]
fn reconciliation_destroys_orphans_and_replaces_missing_vms() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 2})),
    );
    let id = r["id"].as_u64().unwrap();
    d.wait_for("running", |d| {
        d.ok("GET", &format!("/v1/requests/{id}"), None)["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "running")
    });
    let r = d.ok("GET", &format!("/v1/requests/{id}"), None);
    let host = r["vms"][0]["host"].as_str().unwrap().to_owned();
    let gone = r["vms"][0]["id"].as_u64().unwrap();
    let kept = r["vms"][1]["id"].as_u64().unwrap();
    let other = if host == "sim-small-1" {
        "sim-small-2"
    } else {
        "sim-small-1"
    }
    .to_owned();
    d.stop();
    {
        // Behind the daemon's back: one VM vanishes, an unknown one appears, and a VM that is
        // not berth's must be left alone.
        let world =
            berth_drivers::sim::SimWorld::open(&dir.path().join("sim-inventory"), 0.0, 1).unwrap();
        world.vanish(&host, &format!("berth-vm{gone}"));
        world.plant(&host, "berth-vm99999");
        world.plant(&host, "someone-elses-vm");
        // A VM of this journal on a host it was never recorded on: a destroy that failed.
        world.plant(&other, &format!("berth-vm{gone}"));
    }
    let d = TestDaemon::start(dir.path(), CONFIG);
    // The missing VM is lost, not failed: the host is not blamed and a replacement runs.
    d.wait_for("missing vm lost", |d| d.vm_state(gone) == "lost");
    let v = d.ok("GET", &format!("/v1/vms/{gone}"), None);
    assert_eq!(v["cause"], "vanished from its host", "{v}");
    d.wait_for("a replacement running", |d| d.running_vms(id).len() == 2);
    assert_eq!(d.vm_state(kept), "running");
    d.wait_for("the stray destroyed", |d| {
        !d.sim()
            .inventory(&other)
            .contains(&format!("berth-vm{gone}"))
    });
    let orphans = d.ok("GET", "/v1/orphans", None);
    assert_eq!(orphans["orphans"][0]["name"], "berth-vm99999", "{orphans}");
    assert_eq!(
        orphans["orphans"][0]["reason"],
        "not created by this journal"
    );
    d.stop();
    let world =
        berth_drivers::sim::SimWorld::open(&dir.path().join("sim-inventory"), 0.0, 1).unwrap();
    let inv = world.inventory(&host);
    // berth-vm99999 was never created by this journal: kept and reported, not destroyed.
    assert!(inv.contains(&"berth-vm99999".to_owned()), "{inv:?}");
    assert!(inv.contains(&"someone-elses-vm".to_owned()), "{inv:?}");
    assert!(inv.contains(&format!("berth-vm{kept}")), "{inv:?}");
    let stray = world.inventory(&other);
    assert!(!stray.contains(&format!("berth-vm{gone}")), "{stray:?}");
}

#[test]
fn a_vm_deleted_behind_the_daemons_back_is_noticed_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = CONFIG.replace(
        "startup_grace_ms = 0",
        "startup_grace_ms = 0\nlist_interval_ms = 200",
    );
    let d = TestDaemon::start(dir.path(), &config);
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 2, "hold_on_failure": true})),
    );
    let id = r["id"].as_u64().unwrap();
    d.wait_for("two running", |d| d.running_vms(id).len() == 2);
    let vms = d.running_vms(id);
    let ((gone, host), (kept, _)) = (vms[0].clone(), vms[1].clone());
    // Someone deletes a running VM on its host and leaves a stray with berth's prefix.
    d.sim().vanish(&host, &format!("berth-vm{gone}"));
    d.sim().plant(&host, "berth-vm77777");
    d.wait_for("the deleted vm lost", |d| d.vm_state(gone) == "lost");
    assert_eq!(
        d.ok("GET", &format!("/v1/vms/{gone}"), None)["cause"],
        "vanished from its host"
    );
    d.wait_for("a replacement running", |d| d.running_vms(id).len() == 2);
    // The stray was never created by this journal: kept and reported, and new VMs are
    // numbered past it so that none takes its name.
    d.wait_for("the stray kept", |d| {
        d.ok("GET", "/v1/orphans", None)["orphans"][0]["name"] == "berth-vm77777"
    });
    assert!(
        d.sim()
            .inventory(&host)
            .contains(&"berth-vm77777".to_owned())
    );
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1})),
    );
    let next = r["id"].as_u64().unwrap();
    d.wait_for("the next vm running", |d| d.running_vms(next).len() == 1);
    assert!(d.running_vms(next)[0].0 > 77777);
    assert_eq!(d.vm_state(kept), "running");
    // Not a host failure: the host stays ready.
    assert_eq!(d.host_state(&host), "ready");
}

#[test]
fn a_host_that_stops_answering_goes_to_error_and_its_vms_are_retried_elsewhere() {
    use berth_drivers::sim::{SimFault, SimOp};
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1})),
    );
    let id = r["id"].as_u64().unwrap();
    d.wait_for("running", |d| {
        d.ok("GET", &format!("/v1/requests/{id}"), None)["vms"][0]["state"] == "running"
    });
    let r = d.ok("GET", &format!("/v1/requests/{id}"), None);
    let host = r["vms"][0]["host"].as_str().unwrap().to_owned();
    let first = r["vms"][0]["id"].as_u64().unwrap();
    // Three failed probes (the default threshold) 100 ms apart put the host in error.
    d.sim().set_down(&host, true);
    d.wait_for("host in error", |d| d.host_state(&host) == "error");
    d.wait_for("replacement running elsewhere", |d| {
        let r = d.ok("GET", &format!("/v1/requests/{id}"), None);
        r["vms"].as_array().unwrap().iter().any(|v| {
            v["id"].as_u64() != Some(first) && v["state"] == "running" && v["host"] != host.as_str()
        })
    });
    assert_eq!(d.vm_state(first), "lost");
    // Back on the network: the next probe makes it ready again.
    d.sim().set_down(&host, false);
    d.wait_for("host ready", |d| d.host_state(&host) == "ready");
    // The lost VM could not be destroyed while the host was away; now it is.
    let lost = format!("berth-vm{first}");
    d.wait_for("lost vm destroyed", |d| {
        !d.sim().inventory(&host).contains(&lost)
    });

    // A provisioning failure on one host is retried on the same or another host.
    for h in 1..=6 {
        d.sim().inject(
            &format!("sim-small-{h}"),
            SimOp::Provision,
            SimFault::Transient,
            1,
        );
    }
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1})),
    );
    let id = r["id"].as_u64().unwrap();
    d.wait_for("running after a failed provisioning", |d| {
        d.ok("GET", &format!("/v1/requests/{id}"), None)["vms"][0]["state"] == "running"
    });
    let vm = d.ok("GET", &format!("/v1/requests/{id}"), None)["vms"][0]["id"]
        .as_u64()
        .unwrap();
    let history = d.ok("GET", &format!("/v1/vms/{vm}"), None)["history"].clone();
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["cause"].as_str().unwrap().contains("provisioning failed")),
        "{history}"
    );
}

#[test]
fn the_start_up_grace_period_keeps_unreachable_hosts_out_of_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = CONFIG.replace("startup_grace_ms = 0", "startup_grace_ms = 60000");
    let d = TestDaemon::start(dir.path(), &config);
    d.wait_for("all ready", |d| {
        d.ok("GET", "/v1/status", None)["hosts"]["ready"] == 16
    });
    d.sim().set_down("sim-small-3", true);
    // Ten probe intervals: without the grace period the host would be in error by now.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(d.host_state("sim-small-3"), "ready");
}

#[test]
fn the_cli_finds_the_token_and_drives_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    let berth = |args: &[&str]| -> (bool, String, String) {
        let out = Command::new(berth_binary())
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .env("BERTH_URL", &d.url)
            .env_remove("BERTH_TOKEN")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = berth(&["request", "--template", "linux", "--count", "2", "--json"]);
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let id = r["id"].as_u64().unwrap();
    d.wait_for("running", |d| {
        d.ok("GET", &format!("/v1/requests/{id}"), None)["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "running")
    });
    let (ok, out, err) = berth(&["vm", "list", "--live"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("NAME "), "{out}");
    assert_eq!(out.matches("running").count(), 2, "{out}");
    let vm = vm_ids(&d.ok("GET", &format!("/v1/requests/{id}"), None))[0];
    let (ok, out, err) = berth(&["vm", "result", &format!("berth-vm{vm}"), "passed"]);
    assert!(ok, "{err}");
    assert!(out.contains("releasing") || out.contains("done"), "{out}");
    let (ok, out, _) = berth(&["host", "drain", "sim-mac-4"]);
    assert!(ok);
    assert_eq!(out.trim(), "sim-mac-4 maintenance");
    let (ok, out, _) = berth(&["status"]);
    assert!(ok);
    assert!(out.contains("maintenance 1"), "{out}");
    // Errors name the field and exit non-zero.
    let (ok, _, err) = berth(&["request", "--template", "linux", "--count", "0"]);
    assert!(!ok);
    assert!(err.contains("field `count`"), "{err}");
    let (ok, _, err) = berth(&["vm", "show", "123456", "--token", "wrong"]);
    assert!(!ok);
    assert!(err.contains("401"), "{err}");
}

// ---- the crash test, on a real `berth serve` process ----

/// The `berth` binary, built if needed (it belongs to the workspace's root package; a
/// workspace test run builds it before this runs).
fn berth_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target_dir = exe.parent().unwrap().parent().unwrap();
    let bin = target_dir.join("berth");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "berth", "--bin", "berth"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    bin
}

/// `berth serve` as a child process in `dir` (`Serve`), its store the suite's: on
/// PostgreSQL, the database of its data directory, named in its config.
fn serve(dir: &Path, config: &str) -> Serve {
    // Serve's data directory, known before it starts: the store is chosen for it.
    let data = dir.join("data");
    let serve = Serve::start(&berth_binary(), dir, &stores::serve_config(&data, config));
    assert_eq!(serve.data_dir(), data);
    serve
}

/// SIGKILLs one crash test makes: `BERTH_SOAK_KILLS` if set (`ci/soak-crash.sh` sets 20),
/// else 3.
fn soak_kills() -> usize {
    std::env::var("BERTH_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

const SOAK_CONFIG: &str =
    "[sim]\nlatency_scale = 0.01\n[probe]\ninterval_ms = 200\nstartup_grace_ms = 5000\n";

#[test]
fn sigkill_in_the_middle_of_a_burst_loses_and_duplicates_nothing() {
    sigkill_soak(SOAK_CONFIG);
}

/// The same with a snapshot every 50 inputs: kills land between a commit and its snapshot, and
/// every restart starts from a snapshot.
#[test]
fn sigkill_in_the_middle_of_a_burst_loses_and_duplicates_nothing_with_snapshots() {
    sigkill_soak(&format!(
        "{SOAK_CONFIG}[recovery]\nsnapshot_every_inputs = 50\n"
    ));
}

fn sigkill_soak(config: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = serve(dir.path(), config);
    let (url, token) = (serve.url.clone(), serve.token.clone());
    let kills = soak_kills();
    let accepted = Arc::new(Mutex::new(Vec::<u64>::new()));
    let started = Instant::now();
    for round in 0..kills {
        // 8 clients of mixed load: one-VM and three-VM submits, cancels of what they
        // submitted, and reads; the daemon is killed at a moment that moves each round.
        let before = accepted.lock().unwrap().len();
        let kill_at = before + 150 + 97 * (round % 5);
        let mut clients = Vec::new();
        for c in 0..8 {
            let (url, token, accepted) = (url.clone(), token.clone(), accepted.clone());
            clients.push(std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(5))
                    .build();
                let auth = format!("Bearer {token}");
                let mut mine = Vec::new();
                for i in 0..400usize {
                    let r = match i % 10 {
                        7 if !mine.is_empty() => {
                            let id = mine[(i * 31 + c) % mine.len()];
                            agent
                                .delete(&format!("{url}/v1/requests/{id}"))
                                .set("Authorization", &auth)
                                .call()
                                .map(|_| None)
                        }
                        9 => agent
                            .get(&format!("{url}/v1/queue?limit=5"))
                            .set("Authorization", &auth)
                            .call()
                            .map(|_| None),
                        _ => {
                            let template = ["linux", "windows", "macos"][(c + i) % 3];
                            let count = if i % 4 == 0 { 3 } else { 1 };
                            agent
                                .post(&format!("{url}/v1/requests"))
                                .set("Authorization", &auth)
                                .send_json(json!({"template": template, "count": count}))
                                .map(|r| {
                                    let v: Value = r.into_json().unwrap();
                                    Some(v["id"].as_u64().unwrap())
                                })
                        }
                    };
                    match r {
                        Ok(Some(id)) => {
                            mine.push(id);
                            accepted.lock().unwrap().push(id);
                        }
                        Ok(None) => {}
                        // The daemon died under us: stop sending.
                        Err(_) => return,
                    }
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while accepted.lock().unwrap().len() < kill_at && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        serve.kill();
        for c in clients {
            c.join().unwrap();
        }
        serve.restart();
        serve.wait_leading();
        check_accepted(&url, &token, &accepted.lock().unwrap());
    }
    let accepted = accepted.lock().unwrap().len();
    // Let recovery settle, then stop cleanly and compare the hosts with the records.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(serve.terminate(), "the daemon did not stop on SIGTERM");
    assert_no_orphans(&serve.data_dir());
    println!(
        "crash soak: {kills} SIGKILLs, {accepted} acknowledged requests, 0 lost, 0 duplicated, \
         0 orphans, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Every acknowledged request exists exactly once after a restart, with its VMs (at most the
/// retry budget's replacements more).
fn check_accepted(url: &str, token: &str, accepted: &[u64]) {
    let mut ids = Vec::new();
    let mut path = "/v1/requests?limit=100000".to_owned();
    loop {
        let (status, list) = call(url, Some(token), "GET", &path, None);
        assert_eq!(status, 200);
        ids.extend(
            list["requests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_u64().unwrap()),
        );
        match list["next_before"].as_u64() {
            Some(next) => path = format!("/v1/requests?limit=100000&before={next}"),
            None => break,
        }
    }
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a request listed twice");
    for id in accepted {
        assert!(unique.contains(id), "accepted request r{id} is missing");
    }
    let (_, vms) = call(url, Some(token), "GET", "/v1/vms", None);
    let mut per_request: BTreeMap<u64, u32> = BTreeMap::new();
    for v in vms["vms"].as_array().unwrap() {
        *per_request
            .entry(v["request"].as_u64().unwrap())
            .or_default() += 1;
    }
    let (_, list) = call(url, Some(token), "GET", "/v1/requests?limit=100000", None);
    for r in list["requests"].as_array().unwrap() {
        let id = r["id"].as_u64().unwrap();
        let count = r["count"].as_u64().unwrap() as u32;
        let n = per_request.get(&id).copied().unwrap_or(0);
        // A cancelled request may have had none placed yet; otherwise its VMs, plus at most
        // the retry budget's replacements.
        assert!(n <= count + 2, "request r{id} of {count} has {n} vms");
        if r["state"] != "cancelled" {
            assert!(n >= count, "request r{id} of {count} has {n} vms");
        }
    }
}

/// Every VM on a simulated host is one berth records on that host and has not ended; no VM
/// is on two hosts.
fn assert_no_orphans(data: &Path) {
    let world = berth_drivers::sim::SimWorld::open(&data.join("sim-inventory"), 0.0, 1).unwrap();
    let mut db = stores::connect(data);
    let mut seen = BTreeSet::new();
    for (host, name) in world.all_vms() {
        let n = berth_drivers::parse_vm_name(&name).unwrap_or_else(|| panic!("foreign vm {name}"));
        assert!(seen.insert(n), "{name} is on two hosts");
        let (state, on) = db
            .row(
                "SELECT v.state, h.name FROM vms v LEFT JOIN hosts h ON h.id = v.host WHERE v.id = ?1",
                berth_daemon::args![n],
                |r| Ok((r.text(0)?, r.opt_text(1)?)),
            )
            .unwrap_or_else(|e| panic!("{name} on {host}: {e}"))
            .unwrap_or_else(|| panic!("{name} on {host} has no record"));
        assert_eq!(
            on.as_deref(),
            Some(host.as_str()),
            "{name} is on {host}, recorded on {on:?}"
        );
        assert!(
            [
                "placed",
                "provisioning",
                "booting",
                "running",
                "held",
                "releasing"
            ]
            .contains(&state.as_str()),
            "{name} on {host} is recorded {state}"
        );
    }
}
