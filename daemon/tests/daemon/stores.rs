//! Where the tests' daemons keep their store, so that one suite runs against both engines:
//! SQLite, the data directory's `berth.db` (the default), or with `BERTH_TEST_STORE=postgres`
//! a fresh PostgreSQL database for each data directory, on the server `BERTH_TEST_POSTGRES`
//! names (`berth_testkit::postgres::fresh_database`).
//!
//! A data directory keeps its database for the whole test, across the daemons that stop and
//! start on it; the databases go when the thread that made them ends (the test's own thread:
//! the test harness runs each test on one, and joins it). Tests that are about the SQLite file
//! itself (deleting or truncating it, a full disk under it, its permissions) pin their data
//! directories to SQLite with [`pin_to_sqlite`], whatever the variable says.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_daemon::db::{Db, Engine, StoreAt};
use berth_testkit::postgres::{Database, fresh_database};

/// The variable choosing the suite's engine: `postgres`, or `sqlite` (the default).
pub const STORE_VAR: &str = "BERTH_TEST_STORE";

/// A data directory's store.
#[derive(Clone)]
enum Kept {
    Sqlite,
    /// A database of the shared test server, shared by the data directories that
    /// [`share_store`] gave it.
    Postgres(Arc<Database>),
    /// A database of a server the test runs itself (`berth_testkit::postgres::Cluster`).
    Url(String),
}

/// Every data directory's store, by the path the test gave.
static STORES: Mutex<BTreeMap<PathBuf, Kept>> = Mutex::new(BTreeMap::new());

/// The data directories this thread chose a store for; dropping it (when the thread ends)
/// forgets them and so drops their databases.
struct Chosen(RefCell<Vec<PathBuf>>);

impl Drop for Chosen {
    fn drop(&mut self) {
        let gone: Vec<Kept> = {
            let mut stores = STORES.lock().unwrap_or_else(|p| p.into_inner());
            self.0
                .borrow()
                .iter()
                .filter_map(|dir| stores.remove(dir))
                .collect()
        };
        // Outside the lock: each database is dropped with a round trip to the server.
        drop(gone);
    }
}

thread_local! {
    static CHOSEN: Chosen = const { Chosen(RefCell::new(Vec::new())) };
}

/// The engine the suite runs on, from [`STORE_VAR`]; another value fails the test.
pub fn suite_engine() -> Engine {
    match std::env::var(STORE_VAR).as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => Engine::Sqlite,
        Ok("postgres") => Engine::Postgres,
        Ok(other) => panic!("{STORE_VAR}={other}: use postgres or sqlite"),
    }
}

fn keep(stores: &mut BTreeMap<PathBuf, Kept>, dir: &Path, kept: Kept) {
    stores.insert(dir.to_owned(), kept);
    CHOSEN.with(|c| c.0.borrow_mut().push(dir.to_owned()));
}

fn new_store(engine: Engine) -> Kept {
    match engine {
        Engine::Sqlite => Kept::Sqlite,
        Engine::Postgres => {
            // Asked for by name: a suite that skipped every test for want of a server would
            // pass without testing anything.
            let db = fresh_database().unwrap_or_else(|| {
                panic!(
                    "{STORE_VAR}=postgres needs a PostgreSQL server in {}",
                    berth_testkit::postgres::SERVER_VAR
                )
            });
            Kept::Postgres(Arc::new(db))
        }
    }
}

fn store_at(dir: &Path, kept: &Kept) -> StoreAt {
    match kept {
        Kept::Sqlite => StoreAt::Sqlite(dir.join(berth_daemon::DB_FILE)),
        Kept::Postgres(db) => StoreAt::Postgres(db.url().to_owned()),
        Kept::Url(url) => StoreAt::Postgres(url.clone()),
    }
}

/// Where the daemons of data directory `dir` keep their store: chosen at the first call for
/// `dir` (a new database on PostgreSQL), the same at every later one.
pub fn store_of(dir: &Path) -> StoreAt {
    let mut stores = STORES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(kept) = stores.get(dir) {
        return store_at(dir, kept);
    }
    let kept = new_store(suite_engine());
    let at = store_at(dir, &kept);
    keep(&mut stores, dir, kept);
    at
}

/// Keeps the store of `dir` in SQLite whatever [`STORE_VAR`] says: for a test about the
/// SQLite file itself. Call it before the first daemon starts on `dir`.
pub fn pin_to_sqlite(dir: &Path) {
    let mut stores = STORES.lock().unwrap_or_else(|p| p.into_inner());
    match stores.get(dir) {
        None => keep(&mut stores, dir, Kept::Sqlite),
        Some(Kept::Sqlite) => {}
        Some(_) => panic!(
            "{} has a PostgreSQL store already: pin it before its first daemon",
            dir.display()
        ),
    }
}

/// Gives `dir` a fresh database of the shared test server whatever [`STORE_VAR`] says, for a
/// test about PostgreSQL; `false` (after the shared skip rule) when there is no server. Call
/// it before the first daemon starts on `dir`.
pub fn pin_to_postgres(dir: &Path) -> bool {
    let Some(db) = fresh_database() else {
        return false;
    };
    let mut stores = STORES.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        !stores.contains_key(dir),
        "{} has a store already",
        dir.display()
    );
    keep(&mut stores, dir, Kept::Postgres(Arc::new(db)));
    true
}

/// Gives `dir` the PostgreSQL database at `url`, on a server the test runs itself (which
/// outlives the data directory's use). Call it before the first daemon starts on `dir`.
pub fn pin_to_url(dir: &Path, url: &str) {
    let mut stores = STORES.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        !stores.contains_key(dir),
        "{} has a store already",
        dir.display()
    );
    keep(&mut stores, dir, Kept::Url(url.to_owned()));
}

/// Whether `dir`'s store is a SQLite file in it.
pub fn is_sqlite(dir: &Path) -> bool {
    matches!(store_of(dir), StoreAt::Sqlite(_))
}

/// Gives `to` the store of `from`, for a copy of the data directory `from` or a second data
/// directory pointed at its database: on SQLite each keeps its own `berth.db` (a copy of the
/// directory brings the file along); a PostgreSQL database is not in the directory, so `to`
/// uses the same one. Call it before a daemon starts on `to`.
pub fn share_store(from: &Path, to: &Path) {
    store_of(from);
    let mut stores = STORES.lock().unwrap_or_else(|p| p.into_inner());
    let kept = stores[from].clone();
    assert!(
        !stores.contains_key(to),
        "{} has a store already",
        to.display()
    );
    keep(&mut stores, to, kept);
}

/// A connection to `dir`'s store, to read or change what the daemon wrote, in SQL that both
/// engines take (`?1` placeholders).
pub fn connect(dir: &Path) -> Db {
    let at = store_of(dir);
    Db::connect(&at).unwrap_or_else(|e| panic!("connecting to {}: {e}", at.display()))
}

/// Empties `dir`'s store as an operator's mistake would: SQLite's file (and its WAL) deleted,
/// PostgreSQL's database left without a table.
pub fn remove_database(dir: &Path) {
    match store_of(dir) {
        StoreAt::Sqlite(path) => {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
        StoreAt::Postgres(url) => {
            berth_testkit::postgres::psql(&url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public");
        }
    }
}

/// The config of a `berth serve` on data directory `data` (`Serve::data_dir`): `config`, with
/// the store in front when it is not the data directory's SQLite file.
pub fn serve_config(data: &Path, config: &str) -> String {
    match store_of(data) {
        StoreAt::Sqlite(_) => config.to_owned(),
        // A top-level key: before the config's first section.
        StoreAt::Postgres(url) => format!("store = {url:?}\n{config}"),
    }
}
