//! Accounts and changes in the live daemon: fair share from `[fair_share]` decides which
//! waiting request the scheduler serves first.

use serde_json::{Value, json};

use crate::TestDaemon;

/// One host that runs one `linux` VM (2 vCPUs) at a time, so the order of service shows.
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

const FAIR: &str = r#"
[fair_share]
half_life_minutes = 60
default_weight = 1

[[fair_share.accounts]]
name = "big"
weight = 1

[[fair_share.accounts]]
name = "small"
weight = 1
"#;

fn submit(d: &TestDaemon, account: &str) -> u64 {
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1, "account": account})),
    );
    r["id"].as_u64().unwrap()
}

fn vms(d: &TestDaemon, request: u64) -> Vec<Value> {
    d.ok("GET", &format!("/v1/requests/{request}"), None)["vms"]
        .as_array()
        .unwrap()
        .clone()
}

fn placed(d: &TestDaemon, request: u64) -> bool {
    vms(d, request).iter().any(|v| v["state"] != "queued")
}

/// Account `big` runs one VM and queues five more; then `small` asks for one. When `big`'s
/// VM ends, returns which waiting request was placed on the freed host: `small`'s or the
/// first of `big`'s queue.
fn who_goes_first(config: &str) -> &'static str {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), config);
    d.wait_for("the host to be ready", |d| d.host_state("sim-1") == "ready");
    let running = submit(&d, "big");
    d.wait_for("big's first VM to run", |d| {
        d.running_vms(running).len() == 1
    });
    let flood: Vec<u64> = (0..5).map(|_| submit(&d, "big")).collect();
    let small = submit(&d, "small");
    assert!(!placed(&d, small) && !placed(&d, flood[0]));
    let vm = d.running_vms(running)[0].0;
    d.ok(
        "POST",
        &format!("/v1/vms/{vm}/result"),
        Some(json!({"passed": true})),
    );
    d.wait_for("a waiting request to be placed", |d| {
        placed(d, small) || placed(d, flood[0])
    });
    let first = if placed(&d, small) { "small" } else { "big" };
    // One host, one VM: only one of them was placed.
    assert!(!(placed(&d, small) && placed(&d, flood[0])));
    d.stop();
    first
}

#[test]
fn with_fair_share_the_small_account_is_served_before_the_flood() {
    assert_eq!(who_goes_first(&format!("{ONE_SLOT}{FAIR}")), "small");
}

#[test]
fn without_fair_share_the_flood_is_served_in_arrival_order() {
    assert_eq!(who_goes_first(ONE_SLOT), "big");
}

/// The `[fair_share]` settings are fixed with the database, like `[scheduler]`: a restart with
/// other settings replays with the stored ones.
#[test]
fn fair_share_settings_stay_with_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), &format!("{ONE_SLOT}{FAIR}"));
    submit(&d, "big");
    d.stop();
    let conn = rusqlite::Connection::open(dir.path().join("berth.db")).unwrap();
    let stored: String = conn
        .query_row("SELECT value FROM meta WHERE key = 'fair_share'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["half_life_minutes"], 60, "{stored}");
    assert_eq!(stored["accounts"][1]["name"], "small", "{stored}");
    drop(conn);
    // Started again without the section, the database's settings still hold.
    let d = TestDaemon::start(dir.path(), ONE_SLOT);
    d.stop();
    let conn = rusqlite::Connection::open(dir.path().join("berth.db")).unwrap();
    let again: String = conn
        .query_row("SELECT value FROM meta WHERE key = 'fair_share'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&again).unwrap(), stored);
}
