//! Never destroy what the journal cannot account for: a lost or emptied database, a database
//! pointed at a running fleet, orphans in bulk, and the data directory's lock.

use std::path::Path;

use berth_daemon::{DaemonError, OrphanStart, args};
use serde_json::json;

use crate::stores::{self, remove_database};
use crate::{CONFIG, TestDaemon};

/// A daemon that ran `count` VMs and left them running; returns the VMs' names by host.
pub(crate) fn fleet_with_running_vms(dir: &Path, count: u64) -> Vec<(String, String)> {
    let d = TestDaemon::start(dir, CONFIG);
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": count})),
    );
    let id = r["id"].as_u64().unwrap();
    d.wait_for("all running", |d| d.running_vms(id).len() == count as usize);
    let vms = d
        .running_vms(id)
        .into_iter()
        .map(|(vm, host)| (host, format!("berth-vm{vm}")))
        .collect();
    d.stop();
    vms
}

/// The berth VMs on the simulated hosts, read from their inventory while no daemon runs.
pub(crate) fn on_hosts(dir: &Path, vms: &[(String, String)]) -> usize {
    let world = berth_drivers::sim::SimWorld::open(&dir.join("sim-inventory"), 0.0, 1).unwrap();
    vms.iter()
        .filter(|(host, name)| world.inventory(host).contains(name))
        .count()
}

/// On SQLite whatever the suite's store: it truncates and deletes the database file (the
/// `postgres` module empties a PostgreSQL database under a data directory that knew it).
#[test]
fn an_emptied_or_deleted_database_destroys_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    stores::pin_to_sqlite(dir);
    let vms = fleet_with_running_vms(dir, 4);

    // Emptied in place: refused before anything is opened or listed.
    std::fs::write(dir.join("berth.db"), b"").unwrap();
    let _ = std::fs::remove_file(dir.join("berth.db-wal"));
    let err = TestDaemon::try_start(dir, CONFIG, OrphanStart::Refuse)
        .err()
        .unwrap();
    assert!(matches!(err, DaemonError::DatabaseLost { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("--adopt-orphans") && text.contains("--destroy-orphans"),
        "{text}"
    );
    assert_eq!(on_hosts(dir, &vms), 4);
    assert_eq!(std::fs::metadata(dir.join("berth.db")).unwrap().len(), 0);

    // Deleted: the same.
    remove_database(dir);
    let err = TestDaemon::try_start(dir, CONFIG, OrphanStart::Refuse)
        .err()
        .unwrap();
    assert!(matches!(err, DaemonError::DatabaseLost { .. }), "{err}");
    assert_eq!(on_hosts(dir, &vms), 4);

    // The whole directory's state gone but the hosts (the simulated inventory) kept: a journal
    // that never created a VM finds berth VMs on the hosts and refuses, naming the count.
    std::fs::remove_file(dir.join("berth.id")).unwrap();
    let err = TestDaemon::try_start(dir, CONFIG, OrphanStart::Refuse)
        .err()
        .unwrap();
    match &err {
        DaemonError::UnaccountedVms { count, .. } => assert_eq!(*count, 4),
        other => panic!("{other}"),
    }
    assert_eq!(on_hosts(dir, &vms), 4);
    // Still refused on the next try: the first refusal did not make the fleet acceptable.
    let err = TestDaemon::try_start(dir, CONFIG, OrphanStart::Refuse)
        .err()
        .unwrap();
    assert!(matches!(err, DaemonError::UnaccountedVms { .. }), "{err}");

    // The operator adopts them: kept, listed, audited, and new VMs are numbered past them.
    let d = TestDaemon::try_start(dir, CONFIG, OrphanStart::Adopt).unwrap();
    let kept = d.ok("GET", "/v1/orphans", None);
    let names: Vec<&str> = kept["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = vms.iter().map(|(_, n)| n.as_str()).collect();
    expected.sort_by_key(|n| n.trim_start_matches("berth-vm").parse::<u64>().unwrap());
    assert_eq!(names, expected);
    assert_eq!(d.ok("GET", "/v1/status", None)["orphans_kept"], 4);
    let audit = d.ok("GET", "/v1/audit", None);
    let actions: Vec<&str> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "orphan_keep").count(),
        4,
        "{audit}"
    );
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1})),
    );
    let id = r["id"].as_u64().unwrap();
    d.wait_for("the new vm running", |d| d.running_vms(id).len() == 1);
    let new_vm = d.running_vms(id)[0].0;
    let highest = expected.last().unwrap().trim_start_matches("berth-vm");
    assert!(new_vm > highest.parse().unwrap(), "{new_vm} vs {highest}");
    let (host, victim) = vms[0].clone();
    assert!(d.sim().inventory(&host).contains(&victim));

    // A read-only token cannot destroy one; the operator can, and it is forgotten.
    let (status, _) = crate::call(
        &d.url,
        Some("viewer-token-0123456789"),
        "POST",
        &format!("/v1/orphans/{victim}/destroy"),
        None,
    );
    assert_eq!(status, 403);
    d.ok("POST", &format!("/v1/orphans/{victim}/destroy"), None);
    d.wait_for("the orphan destroyed", |d| {
        !d.sim().inventory(&host).contains(&victim)
    });
    let (status, v) = d.call("POST", &format!("/v1/orphans/{victim}/destroy"), None);
    assert_eq!(status, 404, "{v}");
    d.stop();

    // A restart keeps the remaining kept orphans: they are recorded, not found again.
    let d = TestDaemon::start(dir, CONFIG);
    assert_eq!(
        d.ok("GET", "/v1/orphans", None)["orphans"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    d.stop();
    assert_eq!(on_hosts(dir, &vms), 3);
}

#[test]
fn destroy_orphans_clears_what_a_lost_database_left() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let vms = fleet_with_running_vms(dir, 3);
    remove_database(dir);
    let d = TestDaemon::try_start(dir, CONFIG, OrphanStart::Destroy).unwrap();
    d.wait_for("every orphan destroyed", |d| {
        vms.iter()
            .all(|(host, name)| !d.sim().inventory(host).contains(name))
    });
    let audit = d.ok("GET", "/v1/audit", None);
    let rows = audit["audit"].as_array().unwrap();
    assert_eq!(
        rows.iter()
            .filter(|a| a["action"] == "orphan_destroy")
            .count(),
        3,
        "{audit}"
    );
    assert!(
        rows.iter()
            .any(|a| a["action"] == "database_recreated"
                && a["who"] == "berth serve --destroy-orphans"),
        "{audit}"
    );
}

#[test]
fn orphans_in_bulk_are_kept_and_a_few_of_this_journals_are_destroyed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = TestDaemon::start(dir, CONFIG);
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 8})),
    );
    let id = r["id"].as_u64().unwrap();
    d.wait_for("all running", |d| d.running_vms(id).len() == 8);
    let ran = d.running_vms(id);
    for (vm, _) in &ran {
        d.ok(
            "POST",
            &format!("/v1/vms/{vm}/result"),
            Some(json!({"passed": true})),
        );
    }
    d.wait_for("request done", |d| {
        d.ok("GET", &format!("/v1/requests/{id}"), None)["state"] == "done"
    });
    d.wait_for("all destroyed", |d| {
        ran.iter()
            .all(|(vm, h)| !d.sim().inventory(h).contains(&format!("berth-vm{vm}")))
    });
    d.stop();

    // All eight come back, as if every destroy had failed: more than orphans_destroy_max (5)
    // at once, so something else is wrong and all of them are kept.
    {
        let world = berth_drivers::sim::SimWorld::open(&dir.join("sim-inventory"), 0.0, 1).unwrap();
        for (vm, h) in &ran {
            world.plant(h, &format!("berth-vm{vm}"));
        }
    }
    let d = TestDaemon::start(dir, CONFIG);
    let kept = d.ok("GET", "/v1/orphans", None);
    let kept = kept["orphans"].as_array().unwrap();
    assert_eq!(kept.len(), 8);
    assert!(
        kept[0]["reason"]
            .as_str()
            .unwrap()
            .contains("orphans_destroy_max"),
        "{kept:?}"
    );
    d.stop();
    assert_eq!(
        on_hosts(
            dir,
            &ran.iter()
                .map(|(vm, h)| (h.clone(), format!("berth-vm{vm}")))
                .collect::<Vec<_>>()
        ),
        8
    );

    // With a limit of 10 the same eight would be a few failed destroys: destroyed.
    let tmp2 = tempfile::tempdir().unwrap();
    let dir2 = tmp2.path();
    copy_dir(dir, dir2);
    let config = format!("{CONFIG}\n[recovery]\norphans_destroy_max = 10\n");
    stores::share_store(dir, dir2);
    // The kept ones stay kept whatever the limit; forget them to replay the judgement.
    stores::connect(dir2)
        .execute("DELETE FROM orphans", &[])
        .unwrap();
    let d = TestDaemon::start(dir2, &config);
    d.wait_for("the eight destroyed", |d| {
        ran.iter()
            .all(|(vm, h)| !d.sim().inventory(h).contains(&format!("berth-vm{vm}")))
    });
    assert!(
        d.ok("GET", "/v1/orphans", None)["orphans"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn one_daemon_per_data_directory_even_without_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = TestDaemon::start(dir, CONFIG);
    // Deleting every file does not release the lock: it is held on the directory itself.
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() && !p.ends_with("berth.db") {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let err = TestDaemon::try_start(dir, CONFIG, OrphanStart::Refuse)
        .err()
        .unwrap();
    assert!(matches!(err, DaemonError::DataDirBusy(_)), "{err}");
    d.stop();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let fresh = tmp.path().join("fresh");
        drop(TestDaemon::start(&fresh, CONFIG));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&fresh), 0o700);
        let db_file = fresh.join(berth_daemon::DB_FILE);
        if stores::is_sqlite(&fresh) {
            assert_eq!(mode(&db_file), 0o600);
        } else {
            assert!(!db_file.exists(), "a PostgreSQL store left {db_file:?}");
        }
        assert_eq!(mode(&fresh.join("berth.id")), 0o600);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn a_journal_missing_rows_is_named_not_met_with_a_duplicate_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fleet_with_running_vms(dir, 2);
    // Someone deletes the end of the journal: the VMs' rows remain in the state tables.
    let mut db = stores::connect(dir);
    let last = db
        .row(
            "SELECT min(seq) FROM journal WHERE input LIKE '%\"submit\"%'",
            &[],
            |r| r.i64(0),
        )
        .unwrap()
        .unwrap();
    db.execute("DELETE FROM journal WHERE seq >= ?1", args![last])
        .unwrap();
    drop(db);
    let err = TestDaemon::try_start(dir, CONFIG, OrphanStart::Refuse)
        .err()
        .unwrap();
    match &err {
        DaemonError::JournalBehindState { table_vm, next_vm } => {
            assert_eq!((*table_vm, *next_vm), (2, 1), "{err}");
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("restore the database"), "{err}");
}

#[test]
fn requests_rows_deleted_by_hand_are_written_again_from_the_journal() {
    rows_deleted_by_hand_are_written_again(CONFIG, false);
}

/// With a snapshot, a start that finds rows lost replays the whole journal to write them again
/// (the snapshot holds no ended request).
#[test]
fn requests_rows_deleted_by_hand_are_written_again_past_a_snapshot() {
    let config = format!("{CONFIG}\n[recovery]\nsnapshot_every_inputs = 2\n");
    rows_deleted_by_hand_are_written_again(&config, true);
}

fn rows_deleted_by_hand_are_written_again(config: &str, snapshots: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = TestDaemon::start(dir, config);
    let running = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 2})),
    )["id"]
        .as_u64()
        .unwrap();
    let cancelled = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1})),
    )["id"]
        .as_u64()
        .unwrap();
    d.wait_for("all running", |d| d.running_vms(running).len() == 2);
    d.ok("DELETE", &format!("/v1/requests/{cancelled}"), None);
    d.wait_for("cancelled", |d| {
        d.ok("GET", &format!("/v1/requests/{cancelled}"), None)["state"] == "cancelled"
    });
    let before: Vec<_> = [running, cancelled]
        .iter()
        .map(|id| d.ok("GET", &format!("/v1/requests/{id}"), None))
        .collect();
    d.stop();

    let mut db = stores::connect(dir);
    let n_snapshots = db
        .row("SELECT count(*) FROM snapshots", &[], |r| r.i64(0))
        .unwrap()
        .unwrap();
    assert_eq!(n_snapshots > 0, snapshots);
    assert_eq!(db.execute("DELETE FROM requests", &[]).unwrap(), 2);
    drop(db);
    let d = TestDaemon::start(dir, config);
    for (id, was) in [running, cancelled].iter().zip(&before) {
        let now = d.ok("GET", &format!("/v1/requests/{id}"), None);
        for field in [
            "state",
            "template",
            "count",
            "cause",
            "submitted_ms",
            "spec",
        ] {
            assert_eq!(now[field], was[field], "r{id} {field}: {now} against {was}");
        }
    }
    // New requests take numbers past the repaired ones.
    let next = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1})),
    )["id"]
        .as_u64()
        .unwrap();
    assert!(next > cancelled, "r{next} after r{cancelled}");
}
