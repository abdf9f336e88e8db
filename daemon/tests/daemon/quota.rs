//! Quotas in the live daemon: `[[quotas]]` bound an account on a host class, and a request
//! that its account's quota holds back says so in why-waiting, through the API and
//! `berth request show`.

use std::process::Command;

use serde_json::json;

use crate::TestDaemon;

/// One host of class `sim` with room for two `linux` VMs (2 vCPUs each); `qt-base` is
/// guaranteed one VM's worth there and may not borrow.
const CONFIG: &str = r#"
[sim]
latency_scale = 0.001

[probe]
interval_ms = 100
timeout_ms = 1000
startup_grace_ms = 0

[[hosts]]
name = "sim-1"
driver = "sim"
vcpus = 4
memory_mib = 16384
images = ["linux"]

[[quotas]]
account = "qt-base"
class = "sim"
guarantee = { vcpus = 2 }
borrowing_limit = { vcpus = 0 }
"#;

fn submit(d: &TestDaemon, account: &str) -> u64 {
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1, "account": account})),
    );
    r["id"].as_u64().unwrap()
}

#[test]
fn a_request_over_its_accounts_quota_waits_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    d.wait_for("the host to be ready", |d| d.host_state("sim-1") == "ready");
    let first = submit(&d, "qt-base");
    d.wait_for("the first VM to run", |d| d.running_vms(first).len() == 1);
    let second = submit(&d, "qt-base");
    let text = "account qt-base at its sim quota 2/2 vCPUs, borrowing 0 of 0 allowed";
    d.wait_for("the second request to be held by the quota", |d| {
        let r = d.ok("GET", &format!("/v1/requests/{second}"), None);
        r["why"]["blocker"]["kind"] == "quota"
    });
    let r = d.ok("GET", &format!("/v1/requests/{second}"), None);
    let why = &r["why"];
    assert_eq!(why["blocker"]["account"], "qt-base", "{why}");
    assert!(
        why["summary"]
            .as_str()
            .unwrap()
            .starts_with(&format!("quota: {text}")),
        "{why}"
    );
    let reason = why["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == text)
        .unwrap_or_else(|| panic!("no quota reason in {why}"));
    assert_eq!(reason["hosts"], 1);
    assert_eq!(reason["named"], json!(["sim-1"]));
    let out = Command::new(crate::berth_binary())
        .args(["request", "show", &format!("r{second}")])
        .arg("--data-dir")
        .arg(dir.path())
        .env("BERTH_URL", &d.url)
        .env_remove("BERTH_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("waiting: quota: account qt-base at its sim quota"),
        "{stdout}"
    );
    // Another account is not bounded by qt-base's quota: it takes the room that is left.
    let other = submit(&d, "qt-dev");
    d.wait_for("the other account's VM to run", |d| {
        d.running_vms(other).len() == 1
    });

    d.stop();
}

#[test]
fn quotas_stay_with_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    submit(&d, "qt-base");
    d.stop();
    let stored = crate::stores::connect(dir.path())
        .row("SELECT value FROM meta WHERE key = 'quotas'", &[], |r| {
            r.text(0)
        })
        .unwrap()
        .expect("quotas in meta");
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored[0]["class"], "sim", "{stored}");
    assert_eq!(stored[0]["guarantee"]["vcpus"], 2, "{stored}");
}
