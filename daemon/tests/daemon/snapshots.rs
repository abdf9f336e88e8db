//! Snapshots of the scheduler's state: a start from the newest snapshot plus the journal after
//! it reaches the same state as a start that replays the whole journal; a snapshot that cannot
//! be restored is passed over for the whole journal; and a start from a snapshot does not read
//! the journal it covers.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_daemon::args;
use berth_daemon::db::Db;
use serde_json::{Value, json};

use crate::{CONFIG, TestDaemon, a_busy_fleet};

/// What the API says the fleet is: every live VM's state and host, every host's state and
/// use, and every request's state.
fn state(d: &TestDaemon) -> (BTreeMap<u64, String>, Vec<String>, BTreeMap<u64, String>) {
    let vms = d.ok("GET", "/v1/vms?live=true", None)["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["id"].as_u64().unwrap(),
                format!("{} {}", v["state"], v["host"]),
            )
        })
        .collect();
    let hosts = d.ok("GET", "/v1/hosts", None)["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| format!("{} {} {}", h["name"], h["state"], h["vcpus_used_milli"]))
        .collect();
    let requests = d.ok("GET", "/v1/requests", None)["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_u64().unwrap(), r["state"].to_string()))
        .collect();
    (vms, hosts, requests)
}

fn db(dir: &std::path::Path) -> Db {
    crate::stores::connect(dir)
}

/// The newest snapshot's batch and state bytes.
fn newest(dir: &std::path::Path) -> Option<(i64, Vec<u8>)> {
    db(dir)
        .row(
            "SELECT batch, state FROM snapshots ORDER BY batch DESC LIMIT 1",
            &[],
            |r| Ok((r.i64(0)?, r.bytes(1)?)),
        )
        .unwrap()
}

#[test]
fn a_start_from_a_snapshot_reaches_the_state_of_a_whole_replay() {
    let config = format!("{CONFIG}\n[recovery]\nsnapshot_every_inputs = 5\n");
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), &config);
    let held = a_busy_fleet(&d, 4, 2);
    d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1})),
    );
    std::thread::sleep(Duration::from_millis(300));
    let before = state(&d);
    d.stop();
    let (batch, bytes) = newest(dir.path()).expect("snapshots were written");
    assert!(batch > 0);

    // From the snapshot and the journal after it.
    let d = TestDaemon::start(dir.path(), &config);
    assert_eq!(state(&d), before);
    assert_eq!(d.vm_state(held), "held");
    d.stop();

    // A damaged snapshot is passed over (and logged): the whole journal is replayed.
    let (batch, _) = newest(dir.path()).unwrap();
    let mut damaged = bytes.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x10;
    db(dir.path())
        .execute(
            "UPDATE snapshots SET state = ?1 WHERE batch = ?2",
            args![damaged.clone(), batch],
        )
        .unwrap();
    let d = TestDaemon::start(dir.path(), &config);
    assert_eq!(state(&d), before);
    d.stop();

    // A start from a good snapshot does not read the journal it covers: with those rows gone
    // the state is still whole.
    let (batch, state_bytes) = newest(dir.path()).unwrap();
    if state_bytes == damaged {
        db(dir.path())
            .execute(
                "UPDATE snapshots SET state = ?1 WHERE batch = ?2",
                args![bytes, batch],
            )
            .unwrap();
    }
    let gone = db(dir.path())
        .execute("DELETE FROM journal WHERE batch <= ?1", args![batch])
        .unwrap();
    assert!(gone > 0);
    let d = TestDaemon::start(dir.path(), &config);
    assert_eq!(state(&d), before);
    d.stop();
}

/// Without snapshots configured none is written, and a start replays the whole journal.
#[test]
fn snapshots_can_be_turned_off() {
    let config = format!("{CONFIG}\n[recovery]\nsnapshot_every_inputs = 0\n");
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), &config);
    d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 3})),
    );
    std::thread::sleep(Duration::from_millis(200));
    let before: Value = d.ok("GET", "/v1/requests/1", None);
    d.stop();
    assert_eq!(newest(dir.path()), None);
    let d = TestDaemon::start(dir.path(), &config);
    assert_eq!(
        d.ok("GET", "/v1/requests/1", None)["count"],
        before["count"]
    );
    d.stop();
}
