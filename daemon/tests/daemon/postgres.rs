//! What only a PostgreSQL store does, whatever the suite's store: a database that outlives
//! its data directory (emptied under a directory that knew it, or found by a new one), and a
//! server that stops and starts again under a running daemon. They skip (by the shared rule)
//! without a PostgreSQL server, or without PostgreSQL's programs for a cluster of their own.

use std::time::Duration;

use berth_daemon::{DaemonError, OrphanStart};
use berth_testkit::postgres::{Cluster, psql};
use serde_json::{Value, json};

use crate::orphans::{fleet_with_running_vms, on_hosts};
use crate::stores;
use crate::{CONFIG, TestDaemon};

/// The tables of the database at `url` (its `public` schema).
fn n_tables(url: &str) -> u64 {
    psql(
        url,
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
    )
    .parse()
    .unwrap()
}

fn url_of(dir: &std::path::Path) -> String {
    match stores::store_of(dir) {
        berth_daemon::db::StoreAt::Postgres(url) => url,
        other => panic!("{} is not on PostgreSQL: {other:?}", dir.display()),
    }
}

fn submit(d: &TestDaemon, count: u64) -> u64 {
    d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": count})),
    )["id"]
        .as_u64()
        .unwrap()
}

/// A database emptied by hand under a data directory that knew it is a lost journal, as a
/// deleted SQLite file is: refused, naming the flags, and the VMs on the hosts are left alone.
#[test]
fn an_emptied_database_under_a_data_directory_that_knew_it_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    if !stores::pin_to_postgres(dir) {
        return;
    }
    let url = url_of(dir);
    let vms = fleet_with_running_vms(dir, 3);
    assert!(n_tables(&url) > 0);

    psql(&url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public");
    let err = TestDaemon::try_start(dir, CONFIG, OrphanStart::Refuse)
        .err()
        .unwrap();
    assert!(matches!(err, DaemonError::DatabaseLost { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("--adopt-orphans") && text.contains("--destroy-orphans"),
        "{text}"
    );
    assert!(text.contains(&url), "the error names the database: {text}");
    assert_eq!(on_hosts(dir, &vms), 3);
    // The refused start may have made the schema, but not the journal's identity: refused
    // again, and still nothing on the hosts is touched.
    let err = TestDaemon::try_start(dir, CONFIG, OrphanStart::Refuse)
        .err()
        .unwrap();
    assert!(matches!(err, DaemonError::DatabaseLost { .. }), "{err}");
    assert_eq!(on_hosts(dir, &vms), 3);

    // Tables dropped one by one are the same loss.
    let d = TestDaemon::try_start(dir, CONFIG, OrphanStart::Adopt).unwrap();
    assert_eq!(d.ok("GET", "/v1/status", None)["orphans_kept"], 3);
    d.stop();
    let tables = psql(
        &url,
        "SELECT string_agg(format('%I', tablename), ', ') FROM pg_tables \
         WHERE schemaname = 'public'",
    );
    psql(&url, &format!("DROP TABLE {tables} CASCADE"));
    assert_eq!(n_tables(&url), 0);
    let err = TestDaemon::try_start(dir, CONFIG, OrphanStart::Refuse)
        .err()
        .unwrap();
    assert!(matches!(err, DaemonError::DatabaseLost { .. }), "{err}");
    assert_eq!(on_hosts(dir, &vms), 3);
}

/// A new data directory pointed at a database that a daemon wrote takes the database's
/// identity and carries on from its journal.
#[test]
fn a_new_data_directory_on_a_berth_database_adopts_its_identity_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    if !stores::pin_to_postgres(&first) {
        return;
    }
    let d = TestDaemon::start(&first, CONFIG);
    let done = submit(&d, 2);
    d.wait_for("both running", |d| d.running_vms(done).len() == 2);
    for (vm, _) in d.running_vms(done) {
        d.ok(
            "POST",
            &format!("/v1/vms/{vm}/result"),
            Some(json!({"passed": true})),
        );
    }
    d.wait_for("request done", |d| {
        d.ok("GET", &format!("/v1/requests/{done}"), None)["state"] == "done"
    });
    d.ok("POST", "/v1/hosts/sim-small-1/drain", None);
    let drained = d.host_state("sim-small-1");
    let requests = d.ok("GET", "/v1/requests", None)["requests"].clone();
    d.stop();
    let id = std::fs::read_to_string(first.join(berth_daemon::datadir::MARKER_FILE)).unwrap();

    let second = tmp.path().join("second");
    stores::share_store(&first, &second);
    let d = TestDaemon::start(&second, CONFIG);
    assert_eq!(
        std::fs::read_to_string(second.join(berth_daemon::datadir::MARKER_FILE)).unwrap(),
        id,
        "the new data directory took the database's identity"
    );
    assert_eq!(d.ok("GET", "/v1/requests", None)["requests"], requests);
    assert_eq!(
        d.ok("GET", &format!("/v1/requests/{done}"), None)["state"],
        "done"
    );
    assert_eq!(d.host_state("sim-small-1"), drained);
    let audit = d.ok("GET", "/v1/audit", None);
    assert!(
        audit["audit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "drain"),
        "{audit}"
    );
    // It goes on from the journal: new requests are numbered past the old ones, and run.
    let next = submit(&d, 1);
    assert!(next > done, "r{next} after r{done}");
    d.wait_for("the new request running", |d| {
        d.running_vms(next).len() == 1
    });
    d.stop();
}

/// The stop's answer to a submit: accepted (`Some(id)`), or refused with a status that says
/// why (`None`); anything else fails the test.
fn accepted_or_refused(status: u16, body: &Value) -> Option<u64> {
    match status {
        201 => Some(body["id"].as_u64().unwrap()),
        503 | 507 => {
            let why = body["error"].as_str().unwrap_or_default();
            assert!(!why.is_empty(), "{status} without a reason: {body}");
            None
        }
        other => panic!("a submit while PostgreSQL is down answered {other}: {body}"),
    }
}

/// A daemon on a database of a PostgreSQL cluster of the test's own, in a data directory
/// that `TempDir` holds, with its first request's VM running (the request's id); `None` after
/// the shared skip rule when there are no PostgreSQL programs to make a cluster with.
fn daemon_on_a_cluster_of_its_own() -> Option<(Cluster, tempfile::TempDir, TestDaemon, u64)> {
    let cluster = Cluster::start()?;
    let url = cluster.create_database("berth");
    let tmp = tempfile::tempdir().unwrap();
    stores::pin_to_url(tmp.path(), &url);
    let d = TestDaemon::start(tmp.path(), CONFIG);
    let first = submit(&d, 1);
    d.wait_for("the first request running", |d| {
        d.running_vms(first).len() == 1
    });
    Some((cluster, tmp, d, first))
}

/// PostgreSQL stops and starts again under a running daemon: what was acknowledged before
/// stays; a submit meanwhile is refused with a reason or accepted and kept; afterwards the
/// daemon connects again by itself and takes requests, without a restart of its own.
#[test]
fn a_postgres_restart_under_a_running_daemon_loses_nothing_and_is_reconnected() {
    let Some((mut cluster, tmp, d, first)) = daemon_on_a_cluster_of_its_own() else {
        return;
    };
    let dir = tmp.path();
    let mut acknowledged: Vec<u64> = vec![first, submit(&d, 1), submit(&d, 1)];

    cluster.stop();
    // Submits during the outage: each is answered one way or the other, not left hanging
    // (the client gives up after `CALL_TIMEOUT`, and the server comes back before that).
    let (api_url, token) = (d.url.clone(), d.token.clone());
    let during = std::thread::spawn(move || {
        let api = berth_testkit::Api::new(&api_url, Some(&token));
        (0..3)
            .map(|_| {
                api.call(
                    "POST",
                    "/v1/requests",
                    Some(json!({"template": "linux", "count": 1})),
                )
            })
            .collect::<Vec<_>>()
    });
    // Long enough for the daemon to meet the dead server (probes every 100 ms journal nothing
    // new, so a submit is what meets it).
    std::thread::sleep(Duration::from_secs(2));
    cluster.start_again();
    let answers = during.join().unwrap();
    let n_refused = answers
        .iter()
        .filter(|(status, body)| {
            let accepted = accepted_or_refused(*status, body);
            acknowledged.extend(accepted);
            accepted.is_none()
        })
        .count();
    println!(
        "while PostgreSQL was down: {} submits accepted, {n_refused} refused",
        answers.len() - n_refused
    );

    // Connected again, by itself: reads and writes answer.
    d.wait_for("writes taken again", |d| {
        let (status, body) = d.call(
            "POST",
            "/v1/requests",
            Some(json!({"template": "linux", "count": 1})),
        );
        match accepted_or_refused(status, &body) {
            Some(id) => {
                acknowledged.push(id);
                true
            }
            None => false,
        }
    });
    let last = *acknowledged.last().unwrap();
    d.wait_for("a request after the restart running", |d| {
        d.running_vms(last).len() == 1
    });
    for id in &acknowledged {
        assert_eq!(
            d.call("GET", &format!("/v1/requests/{id}"), None).0,
            200,
            "r{id}"
        );
    }
    assert_eq!(d.ok("GET", "/v1/status", None)["writable"], true);
    d.stop();

    // Durable: a daemon started again on the same database finds every acknowledged request.
    let d = TestDaemon::start(dir, CONFIG);
    for id in &acknowledged {
        assert_eq!(
            d.call("GET", &format!("/v1/requests/{id}"), None).0,
            200,
            "r{id}"
        );
    }
    d.stop();
}
