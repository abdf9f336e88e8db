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
    let stored_settings = || -> Value {
        let text = crate::stores::connect(dir.path())
            .row(
                "SELECT value FROM meta WHERE key = 'fair_share'",
                &[],
                |r| r.text(0),
            )
            .unwrap()
            .expect("fair_share in meta");
        serde_json::from_str(&text).unwrap()
    };
    let stored = stored_settings();
    assert_eq!(stored["half_life_minutes"], 60, "{stored}");
    assert_eq!(stored["accounts"][1]["name"], "small", "{stored}");
    // Started again without the section, the database's settings still hold.
    let d = TestDaemon::start(dir.path(), ONE_SLOT);
    d.stop();
    assert_eq!(stored_settings(), stored);
}

/// A change's VMs by where they stand, its account and turnaround; the list pages newest
/// first with a cursor; a change id with a `/` works percent-encoded; an unknown one is a 404
/// naming `change`.
#[test]
fn changes_count_their_vms_and_page_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), ONE_SLOT);
    d.wait_for("the host to be ready", |d| d.host_state("sim-1") == "ready");
    let submit = |change: &str, account: &str, count: u32| -> u64 {
        d.ok(
            "POST",
            "/v1/requests",
            Some(
                json!({"template": "linux", "count": count, "change": change,
                "account": account}),
            ),
        )["id"]
            .as_u64()
            .unwrap()
    };
    let first = submit("I1/2", "qt-base", 1);
    d.wait_for("I1/2's VM to run", |d| d.running_vms(first).len() == 1);
    submit("I1/2", "someone-else", 2);
    submit("I2", "qt-declarative", 1);
    // A request without a change is in no change.
    d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1})),
    );
    let c = d.ok("GET", "/v1/changes/I1%2F2", None);
    assert_eq!(c["change"], "I1/2", "{c}");
    assert_eq!(c["account"], "qt-base", "the first request's account: {c}");
    assert_eq!(c["n_requests"], 2, "{c}");
    assert_eq!(c["first_request"], first, "{c}");
    assert_eq!(c["vms_wanted"], 3, "{c}");
    assert_eq!(c["vms_running"], 1, "{c}");
    assert_eq!(c["vms_waiting"], 2, "{c}");
    assert_eq!(c["vms_done"], 0, "{c}");
    assert_eq!(c["ended_ms"], Value::Null, "{c}");
    assert_eq!(c["requests"].as_array().unwrap().len(), 2, "{c}");
    let first_ms = c["first_arrival_ms"].as_u64().unwrap();
    assert!(c["turnaround_ms"].as_u64().unwrap() > 0, "{c}");

    // Newest first, one a page, then the cursor leads to the next and the end.
    let p1 = d.ok("GET", "/v1/changes?limit=1", None);
    assert_eq!(p1["changes"][0]["change"], "I2", "{p1}");
    let before = p1["next_before"].as_u64().unwrap();
    let p2 = d.ok("GET", &format!("/v1/changes?limit=1&before={before}"), None);
    assert_eq!(p2["changes"][0]["change"], "I1/2", "{p2}");
    assert_eq!(p2["next_before"], Value::Null, "{p2}");
    let (status, err) = d.call("GET", "/v1/changes?limit=0", None);
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("limit")),
        "{err}"
    );
    let (status, err) = d.call("GET", "/v1/changes/nope", None);
    assert_eq!(
        (status, err["field"].as_str()),
        (404, Some("change")),
        "{err}"
    );

    // Cancelled, every request of I2 ends: its turnaround stops at the end.
    let i2 = d.ok("GET", "/v1/changes/I2", None)["first_request"]
        .as_u64()
        .unwrap();
    d.ok("DELETE", &format!("/v1/requests/{i2}"), None);
    d.wait_for("I2 to end", |d| {
        d.ok("GET", "/v1/changes/I2", None)["ended_ms"].is_u64()
    });
    let c2 = d.ok("GET", "/v1/changes/I2", None);
    assert_eq!(c2["vms_cancelled"], 1, "{c2}");
    let ended = c2["ended_ms"].as_u64().unwrap();
    assert_eq!(
        c2["turnaround_ms"].as_u64().unwrap(),
        ended - c2["first_arrival_ms"].as_u64().unwrap()
    );
    assert!(first_ms <= c2["first_arrival_ms"].as_u64().unwrap());
    d.stop();
}

/// `/metrics` and `GET /v1/accounts` give each configured account its usage and weight, and
/// fold accounts that clients invent past the cap into `account="other"`.
#[test]
fn metrics_and_the_api_show_configured_accounts_and_fold_invented_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), &format!("{ONE_SLOT}{FAIR}"));
    d.wait_for("the host to be ready", |d| d.host_state("sim-1") == "ready");
    let running = submit(&d, "big");
    d.wait_for("big's VM to run", |d| d.running_vms(running).len() == 1);
    let invented = berth_daemon::metrics::ACCOUNT_SERIES_OTHERS_MAX + 5;
    for i in 0..invented {
        submit(&d, &format!("made-up-{i:02}"));
    }
    let text = ureq::get(&format!("{}/metrics", d.url))
        .set("Authorization", &format!("Bearer {}", d.token))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("berth_account_usage_vcpu_seconds{"))
        .collect();
    // big and small (configured), the capped others, and `other`.
    assert_eq!(
        series.len(),
        2 + berth_daemon::metrics::ACCOUNT_SERIES_OTHERS_MAX + 1,
        "{text}"
    );
    assert!(
        text.contains("berth_account_weight{account=\"small\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("berth_account_weight{account=\"other\"} 5"),
        "five folded accounts of weight 1: {text}"
    );
    let big: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("berth_account_usage_vcpu_seconds{account=\"big\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(big > 0.0, "big's running VM counts: {text}");

    // `GET /v1/accounts` names the same accounts, in the order the queue serves them.
    let list = d.ok("GET", "/v1/accounts", None);
    assert_eq!(list["fair_share"], true);
    assert_eq!(list["folded"], 5, "{list}");
    let rows = list["accounts"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        2 + berth_daemon::metrics::ACCOUNT_SERIES_OTHERS_MAX + 1
    );
    let row = |name: &str| rows.iter().find(|r| r["account"] == name).unwrap().clone();
    let (big, small, other) = (row("big"), row("small"), row("other"));
    assert_eq!(big["holding_vcpus_milli"], 2000, "{big}");
    assert_eq!(big["usage_share"], 1.0, "only big has run anything: {big}");
    // Active: big (it holds a VM) and the 25 invented accounts (each waits); small is idle.
    let share = big["share"].as_f64().unwrap();
    assert!((share - 1.0 / 26.0).abs() < 1e-9, "{big}");
    assert_eq!(
        (small["share"].as_f64(), small["waiting_requests"].as_u64()),
        (Some(0.0), Some(0))
    );
    assert_eq!(other["rank"], serde_json::Value::Null);
    assert_eq!(
        (other["weight"].as_u64(), other["waiting_requests"].as_u64()),
        (Some(5), Some(5))
    );
    // Served first: the accounts that have used nothing; big, which has, comes after them.
    let ranks: Vec<&str> = rows
        .iter()
        .map(|r| r["account"].as_str().unwrap())
        .collect();
    assert!(
        ranks.iter().position(|a| *a == "big") > ranks.iter().position(|a| *a == "made-up-00"),
        "{ranks:?}"
    );
    d.stop();
}
