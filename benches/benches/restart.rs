//! A daemon's start after a long journal, with and without a snapshot of the scheduler's state:
//! the journal of a daemon on the embedded simulated fleet is extended to `BERTH_RESTART_INPUTS`
//! inputs (10 million by default) and each start is timed whole (`berth_daemon::start`: open
//! the database, restore and replay, reconcile with every host, serve). Run with
//! `cargo bench -p berth-benches --bench restart`; `BERTH_RESTART_SAMPLES` starts of each kind
//! (3 by default) give the medians printed. `BERTH_RESTART_STORE=postgres` runs it on a fresh
//! database of the PostgreSQL server in `BERTH_TEST_POSTGRES` instead of SQLite.
//!
//! The fixture is written straight into the database in one transaction (a live daemon would
//! take hours to journal ten million inputs; PostgreSQL's through `COPY`): pairs of a one-VM
//! submit and its cancel in one batch, each with its `requests` row, as the daemon writes them. A start without a snapshot
//! replays every pair; a start with one restores it and replays what came after (nothing, or
//! the few inputs of the previous start).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use berth_daemon::Options;
use berth_daemon::db::{Db, StoreAt};
use berth_daemon::wire::{WireInput, WireRequest};

/// The store under test: the data directory's SQLite file, or a fresh PostgreSQL database.
struct Fixture {
    dir: tempfile::TempDir,
    database: Option<berth_testkit::postgres::Database>,
}

impl Fixture {
    fn new() -> Fixture {
        let database = match std::env::var("BERTH_RESTART_STORE").as_deref() {
            Ok("postgres") => Some(berth_testkit::postgres::fresh_database().unwrap_or_else(
                || panic!("BERTH_RESTART_STORE=postgres needs a server in BERTH_TEST_POSTGRES"),
            )),
            Ok("sqlite") | Err(_) => None,
            Ok(other) => panic!("BERTH_RESTART_STORE={other}: sqlite or postgres"),
        };
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            database,
        }
    }

    fn at(&self) -> StoreAt {
        match &self.database {
            Some(db) => StoreAt::Postgres(db.url().to_owned()),
            None => StoreAt::Sqlite(self.dir.path().join("berth.db")),
        }
    }

    /// The daemon's config, its store named for PostgreSQL.
    fn config(&self, n_inputs: u64) -> String {
        match &self.database {
            Some(db) => format!("store = \"{}\"\n{}", db.url(), config(n_inputs)),
            None => config(n_inputs),
        }
    }

    fn db(&self) -> Db {
        Db::connect(&self.at()).unwrap()
    }

    /// The first column of the first row of `sql`, an integer.
    fn number(&self, sql: &str) -> i64 {
        self.db().row(sql, &[], |r| r.i64(0)).unwrap().unwrap()
    }
}

/// Slow probes, so that nothing but the starts themselves journals inputs; snapshots at the
/// default interval (100,000 inputs), or more often for a journal shorter than two of those.
fn every(n_inputs: u64) -> u64 {
    (n_inputs / 2).clamp(1, 100_000)
}

fn config(n_inputs: u64) -> String {
    let every = every(n_inputs);
    format!(
        "[sim]\nlatency_scale = 1.0\n[probe]\ninterval_ms = 600000\n\
         [recovery]\nsnapshot_every_inputs = {every}\n"
    )
}

fn options(dir: &std::path::Path, config: &str) -> Options {
    let config = berth_daemon::config::parse(config).unwrap();
    Options::new(
        config,
        Some(dir.to_owned()),
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .unwrap()
}

/// Starts and stops a daemon on `dir`; how long the start took.
fn start(rt: &tokio::runtime::Runtime, dir: &std::path::Path, config: &str) -> Duration {
    let opts = options(dir, config);
    let t = Instant::now();
    let daemon = rt.block_on(berth_daemon::start(opts)).unwrap();
    let took = t.elapsed();
    rt.block_on(daemon.stop()).unwrap();
    took
}

/// The `i`th submit and cancel pair: its request's spec, the two inputs.
fn pair(i: i64) -> (String, String, String) {
    let spec = WireRequest {
        id: i as u64,
        template: "linux".into(),
        count: 1,
        vcpus: None,
        memory_mib: None,
        labels: Default::default(),
        priority: 0,
        gang: false,
        hold: None,
        pending_deadline_ms: None,
        expected_run_ms: None,
        requester: "bench".into(),
        change: None,
        account: None,
    };
    let spec_text = serde_json::to_string(&spec).unwrap();
    let submit = serde_json::to_string(&WireInput::Submit { request: spec }).unwrap();
    let cancel = serde_json::to_string(&WireInput::Cancel { request: i as u64 }).unwrap();
    (spec_text, submit, cancel)
}

/// Appends `n_inputs` inputs (submit and cancel pairs) to the journal, with their rows.
fn extend_journal(fixture: &Fixture, n_inputs: u64) {
    let batch = fixture.number("SELECT max(batch) FROM journal");
    let at_ms = fixture.number("SELECT max(at_ms) FROM journal");
    let first = fixture.number("SELECT coalesce(max(id), 0) FROM requests");
    match &fixture.database {
        None => extend_sqlite(fixture.dir.path(), n_inputs, batch, at_ms, first),
        Some(db) => extend_postgres(db.url(), n_inputs, batch, at_ms, first),
    }
}

/// The same rows through `COPY` (text format: JSON has no tab or newline unescaped, and its
/// backslashes are doubled).
fn extend_postgres(url: &str, n_inputs: u64, batch: i64, at_ms: i64, first: i64) {
    use std::io::Write;
    let copy_text = |s: &str| s.replace('\\', "\\\\");
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let mut tx = client.transaction().unwrap();
    {
        let mut journal = tx
            .copy_in("COPY journal (batch, at_ms, input) FROM STDIN")
            .unwrap();
        for k in 1..=(n_inputs / 2) as i64 {
            let (_, submit, cancel) = pair(first + k);
            let (b, t) = (batch + k, at_ms + k);
            writeln!(journal, "{b}\t{t}\t{}", copy_text(&submit)).unwrap();
            writeln!(journal, "{b}\t{t}\t{}", copy_text(&cancel)).unwrap();
        }
        journal.finish().unwrap();
    }
    {
        let mut requests = tx
            .copy_in(
                "COPY requests (id, template, count, spec, state, cause, submitted_ms, \
                 updated_ms, account) FROM STDIN",
            )
            .unwrap();
        for k in 1..=(n_inputs / 2) as i64 {
            let i = first + k;
            let (spec, _, _) = pair(i);
            let t = at_ms + k;
            writeln!(
                requests,
                "{i}\tlinux\t1\t{}\tcancelled\tcancelled\t{t}\t{t}\tbench",
                copy_text(&spec)
            )
            .unwrap();
        }
        requests.finish().unwrap();
    }
    tx.commit().unwrap();
    // As the server's autovacuum would have, over the days such a journal takes.
    client
        .batch_execute("ANALYZE journal; ANALYZE requests")
        .unwrap();
}

fn extend_sqlite(dir: &std::path::Path, n_inputs: u64, batch: i64, at_ms: i64, first: i64) {
    let mut conn = rusqlite::Connection::open(dir.join("berth.db")).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut journal = tx
            .prepare("INSERT INTO journal (batch, at_ms, input) VALUES (?1, ?2, ?3)")
            .unwrap();
        let mut request = tx
            .prepare(
                "INSERT INTO requests (id, template, count, spec, state, cause, submitted_ms,
                 updated_ms, account) VALUES (?1, 'linux', 1, ?2, 'cancelled', 'cancelled',
                 ?3, ?3, 'bench')",
            )
            .unwrap();
        for k in 1..=(n_inputs / 2) as i64 {
            let i = first + k;
            let (spec_text, submit, cancel) = pair(i);
            let (b, t) = (batch + k, at_ms + k);
            journal.execute(rusqlite::params![b, t, submit]).unwrap();
            journal.execute(rusqlite::params![b, t, cancel]).unwrap();
            request.execute(rusqlite::params![i, spec_text, t]).unwrap();
        }
    }
    tx.commit().unwrap();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let n_inputs: u64 = std::env::var("BERTH_RESTART_INPUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let samples: usize = std::env::var("BERTH_RESTART_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this with a small journal.
    let n_inputs = if std::env::args().any(|a| a == "--bench") {
        n_inputs
    } else {
        n_inputs.min(20_000)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let fixture = Fixture::new();
    let dir = fixture.dir.path();
    let config = fixture.config(n_inputs);
    start(&rt, dir, &config);
    let t = Instant::now();
    extend_journal(&fixture, n_inputs);
    let journaled = fixture.number("SELECT count(*) FROM journal");
    eprintln!(
        "fixture: {journaled} journaled inputs, written in {:.1?}",
        t.elapsed()
    );
    let mut without = Vec::new();
    let mut with = Vec::new();
    for _ in 0..samples {
        fixture.db().execute("DELETE FROM snapshots", &[]).unwrap();
        without.push(start(&rt, dir, &config));
        // That start replayed the whole journal and took a snapshot at its end.
        let snapshots = fixture.number("SELECT count(*) FROM snapshots");
        assert_eq!(snapshots, 1, "a start after a long replay takes a snapshot");
        with.push(start(&rt, dir, &config));
    }
    println!(
        "restart after {journaled} journaled inputs: without a snapshot {:.3?} (median of {}: {:.3?}), \
         with a snapshot {:.3?} (median of {}: {:.3?})",
        median(without.clone()),
        without.len(),
        without,
        median(with.clone()),
        with.len(),
        with,
    );
    // The most a start replays after a snapshot: nearly a whole interval (less what the
    // starts themselves journal, so that none of them takes a new snapshot).
    let tail = every(n_inputs).saturating_sub(1_000).max(2);
    extend_journal(&fixture, tail);
    let mut with_tail = Vec::new();
    for _ in 0..samples {
        with_tail.push(start(&rt, dir, &config));
    }
    println!(
        "restart with a snapshot and {tail} journaled inputs after it: {:.3?} (median of {}: {:.3?})",
        median(with_tail.clone()),
        with_tail.len(),
        with_tail,
    );
}
