//! A daemon's start after a long journal, with and without a snapshot of the scheduler's state:
//! the journal of a daemon on the embedded simulated fleet is extended to `BERTH_RESTART_INPUTS`
//! inputs (10 million by default) and each start is timed whole (`berth_daemon::start`: open
//! the database, restore and replay, reconcile with every host, serve). Run with
//! `cargo bench -p berth-benches --bench restart`; `BERTH_RESTART_SAMPLES` starts of each kind
//! (3 by default) give the medians printed.
//!
//! The fixture is written straight into the SQLite file in one transaction (a live daemon would
//! take hours to journal ten million inputs): pairs of a one-VM submit and its cancel in one
//! batch, each with its `requests` row, as the daemon writes them. A start without a snapshot
//! replays every pair; a start with one restores it and replays what came after (nothing, or
//! the few inputs of the previous start).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use berth_daemon::Options;
use berth_daemon::wire::{WireInput, WireRequest};

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

fn db(dir: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("berth.db")).unwrap()
}

/// Appends `n_inputs` inputs (submit and cancel pairs) to the journal, with their rows.
fn extend_journal(dir: &std::path::Path, n_inputs: u64) {
    let mut conn = db(dir);
    let (batch, at_ms): (i64, i64) = conn
        .query_row("SELECT max(batch), max(at_ms) FROM journal", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let first: i64 = conn
        .query_row("SELECT coalesce(max(id), 0) FROM requests", [], |r| {
            r.get(0)
        })
        .unwrap();
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
    let config = config(n_inputs);
    let dir = tempfile::tempdir().unwrap();
    start(&rt, dir.path(), &config);
    let t = Instant::now();
    extend_journal(dir.path(), n_inputs);
    let journaled: i64 = db(dir.path())
        .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
        .unwrap();
    eprintln!(
        "fixture: {journaled} journaled inputs, written in {:.1?}",
        t.elapsed()
    );
    let mut without = Vec::new();
    let mut with = Vec::new();
    for _ in 0..samples {
        db(dir.path()).execute("DELETE FROM snapshots", []).unwrap();
        without.push(start(&rt, dir.path(), &config));
        // That start replayed the whole journal and took a snapshot at its end.
        let snapshots: i64 = db(dir.path())
            .query_row("SELECT count(*) FROM snapshots", [], |r| r.get(0))
            .unwrap();
        assert_eq!(snapshots, 1, "a start after a long replay takes a snapshot");
        with.push(start(&rt, dir.path(), &config));
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
    extend_journal(dir.path(), tail);
    let mut with_tail = Vec::new();
    for _ in 0..samples {
        with_tail.push(start(&rt, dir.path(), &config));
    }
    println!(
        "restart with a snapshot and {tail} journaled inputs after it: {:.3?} (median of {}: {:.3?})",
        median(with_tail.clone()),
        with_tail.len(),
        with_tail,
    );
}
