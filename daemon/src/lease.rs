//! The leader lease: any number of daemons may share one PostgreSQL database, and one of them,
//! the holder of the `lease` row, runs the control loop and the drivers. The others follow:
//! they answer reads from the database and send everything else to the leader.
//!
//! The row holds the holder, its address, an epoch (one more at every change of holder) and an
//! expiry on the database's clock. A thread of its own renews it every `lease_renew_ms` and
//! sets it to expire `lease_ttl_ms` later; a follower takes it once it has expired. Expiry is
//! judged by the database's clock alone, so the daemons' clocks need not agree.
//!
//! Two guards keep a leader that was paused or cut off from doing harm:
//! - **Its own clock.** A renewal that started at `t` lets the daemon act until
//!   `t + ttl - margin` by its monotonic clock; the database set the expiry after `t`, so
//!   this ends before the lease can have expired, as long as the two clocks run at rates
//!   within `margin / ttl` of each other. Past it the [`Gate`] closes: no driver call starts,
//!   no hook runs, and the control loop stops (the process then starts again as a follower).
//! - **The fence.** Every journal commit reads the row's epoch in its own transaction (`FOR
//!   SHARE`, so a takeover waits for it to end) and is refused unless it is the epoch this
//!   daemon took: a commit either lands before the next leader replays the journal, or not at
//!   all.
//!
//! On SQLite the daemon is its database's only user (the data directory is locked): there is
//! no lease, and the gate is always open.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::DaemonError;
use crate::config::HaSection;
use crate::db::{Db, StoreAt, sql};

/// The database's clock in milliseconds since the epoch, as SQL.
const DB_NOW_MS: &str = "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)";

/// What this daemon is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The only daemon of its database (SQLite): it leads, always.
    Sole,
    /// The lease's holder.
    Leader,
    /// Another daemon holds the lease, or nobody holds it and this one has not taken it yet.
    Follower,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Sole => "sole",
            Role::Leader => "leader",
            Role::Follower => "follower",
        }
    }
}

/// The lease's holder as the last claim saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub holder: String,
    /// The base URL clients are sent to.
    pub address: String,
    pub epoch: u64,
    /// Whether the lease had expired then (nobody leads until a daemon takes it).
    pub expired: bool,
    /// How long it had left then, by the database's clock.
    pub expires_in_ms: u64,
}

/// Who this daemon is to the others.
#[derive(Clone, Debug)]
pub struct Me {
    /// Unique per process: a restarted daemon is a new holder.
    pub holder: String,
    pub address: String,
}

struct Shared {
    /// This daemon's holder name.
    me: String,
    origin: Instant,
    /// Microseconds after `origin` until which this daemon may act; 0 while it does not lead.
    until_us: AtomicU64,
    /// The epoch this daemon took; 0 while it does not lead.
    epoch: AtomicU64,
    /// Set once this daemon led and stopped leading: it never leads again in this process.
    lost: AtomicBool,
    view: Mutex<View>,
    /// Bumped at every change of role, for tasks that wait for one.
    changes: tokio::sync::watch::Sender<u64>,
    /// Tells the lease thread to give the lease up and end; dropped with the last gate, which
    /// ends it too.
    stop: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct View {
    holder: Option<Holder>,
    /// When this daemon last renewed (or took) the lease.
    renewed: Option<Instant>,
    takeovers: u64,
}

/// The daemon's right to act, shared by everything that acts: cheap to clone and to ask.
#[derive(Clone)]
pub struct Gate(Option<Arc<Shared>>);

/// The lease's figures for `/metrics` and `/v1/status`.
#[derive(Clone, Debug)]
pub struct LeaseFigures {
    pub role: Role,
    pub epoch: u64,
    /// Seconds since this daemon last renewed its lease (leaders only).
    pub age_s: Option<f64>,
    /// Times this daemon took the lease.
    pub takeovers: u64,
    pub holder: Option<Holder>,
}

impl Gate {
    /// The gate of a daemon that is its database's only user: always open.
    pub fn sole() -> Gate {
        Gate(None)
    }

    /// Whether this is the sole daemon's gate (no lease).
    pub fn is_sole(&self) -> bool {
        self.0.is_none()
    }

    /// Whether this daemon may act on hosts and write as the leader now.
    pub fn may_act(&self) -> bool {
        match &self.0 {
            None => true,
            Some(s) => {
                let until = s.until_us.load(Ordering::Acquire);
                until != 0 && (s.origin.elapsed().as_micros() as u64) < until
            }
        }
    }

    pub fn role(&self) -> Role {
        match &self.0 {
            None => Role::Sole,
            Some(_) if self.may_act() => Role::Leader,
            Some(_) => Role::Follower,
        }
    }

    /// The epoch this daemon leads under (0: none; the sole daemon has none either).
    pub fn epoch(&self) -> u64 {
        self.0
            .as_ref()
            .map_or(0, |s| s.epoch.load(Ordering::Acquire))
    }

    /// The lease's holder as last seen, when another daemon may lead.
    pub fn holder(&self) -> Option<Holder> {
        let s = self.0.as_ref()?;
        lock(&s.view).holder.clone()
    }

    /// Where to send a client that asked this daemon for what only the leader does: the
    /// leader's address, or `None` when nobody leads at the moment (this daemon's own lease
    /// lapsed, or expired with nobody taking it yet).
    pub fn leader_address(&self) -> Option<String> {
        let s = self.0.as_ref()?;
        self.holder()
            .filter(|h| !h.expired && h.holder != s.me)
            .map(|h| h.address)
    }

    pub fn figures(&self) -> LeaseFigures {
        let role = self.role();
        let Some(s) = &self.0 else {
            return LeaseFigures {
                role,
                epoch: 0,
                age_s: None,
                takeovers: 0,
                holder: None,
            };
        };
        let view = lock(&s.view);
        LeaseFigures {
            role,
            epoch: view.holder.as_ref().map_or(0, |h| h.epoch),
            age_s: view
                .renewed
                .filter(|_| role == Role::Leader)
                .map(|t| t.elapsed().as_secs_f64()),
            takeovers: view.takeovers,
            holder: view.holder.clone(),
        }
    }

    /// Resolves once this daemon leads (at once for the sole daemon).
    pub async fn won(&self) {
        let Some(s) = &self.0 else { return };
        let mut changes = s.changes.subscribe();
        while !self.may_act() {
            // Wakes at every change of role, and at least every 50 ms.
            let _ = tokio::time::timeout(Duration::from_millis(50), changes.changed()).await;
        }
    }

    /// Resolves once this daemon may not act any more: its own clock ran past the lease, or a
    /// claim found another holder. Never for the sole daemon.
    pub async fn closed(&self) {
        let Some(s) = &self.0 else {
            return std::future::pending().await;
        };
        let mut changes = s.changes.subscribe();
        while self.may_act() {
            let _ = tokio::time::timeout(Duration::from_millis(50), changes.changed()).await;
        }
    }

    /// After the gate closed: waits until this daemon renews the lease it still holds (the
    /// database answered again before anyone took it: `true`), or sees that another daemon
    /// took it (`false`; this daemon then never leads again in this process).
    pub async fn reopened(&self) -> bool {
        let Some(s) = &self.0 else { return true };
        let mut changes = s.changes.subscribe();
        loop {
            if self.may_act() {
                return true;
            }
            if s.epoch.load(Ordering::Acquire) == 0 {
                self.give_up();
                return false;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), changes.changed()).await;
        }
    }

    /// This daemon stops leading for good: its control loop is gone, so the lease thread
    /// neither renews nor takes the lease again in this process.
    pub fn give_up(&self) {
        if let Some(s) = &self.0 {
            s.lost.store(true, Ordering::Release);
            s.until_us.store(0, Ordering::Release);
        }
    }

    /// Stops renewing and gives the lease up (expires it now) if this daemon holds it, so a
    /// follower takes over at once; waits for the lease thread to end.
    pub fn release(&self) {
        let Some(s) = &self.0 else { return };
        s.until_us.store(0, Ordering::Release);
        if let Some(stop) = lock(&s.stop).take() {
            let _ = stop.send(());
        }
        if let Some(thread) = lock(&s.thread).take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gate({}, epoch {})", self.role().name(), self.epoch())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one claim found.
enum Claimed {
    /// This daemon holds the lease, under `epoch`; `taken` when it took it just now.
    Leading {
        epoch: u64,
        taken: bool,
    },
    Following(Holder),
}

/// The session settings of every connection that may hold the lease row's lock (the lease's
/// and the journal's): a daemon cut off in the middle of a transaction would hold it, and keep
/// every follower from taking over, until the server ends its session. Past `margin` idle in a
/// transaction the server does; a leader's own clock stops it `margin` before its lease
/// expires, so a lock it held is gone by then.
pub fn session_settings(db: &mut Db, ha: &HaSection) -> Result<(), DaemonError> {
    db.set_session(&format!(
        "SET idle_in_transaction_session_timeout = {}",
        ha.lease_margin_ms.max(1)
    ))
}

/// Starts the lease thread for the PostgreSQL store at `at` and waits for its first claim:
/// the gate says then whether this daemon leads.
pub fn start(at: &StoreAt, me: Me, ha: &HaSection) -> Result<Gate, DaemonError> {
    let mut db = Db::connect(at)?;
    session_settings(&mut db, ha)?;
    // A claim waits for the row's lock at most one renewal, then tries again.
    db.set_session(&format!("SET lock_timeout = {}", ha.lease_renew_ms.max(1)))?;
    let (changes, _) = tokio::sync::watch::channel(0);
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    let shared = Arc::new(Shared {
        me: me.holder.clone(),
        origin: Instant::now(),
        until_us: AtomicU64::new(0),
        epoch: AtomicU64::new(0),
        lost: AtomicBool::new(false),
        view: Mutex::new(View::default()),
        changes,
        stop: Mutex::new(Some(stop_tx)),
        thread: Mutex::new(None),
    });
    // The first claim here, so that the caller knows its role when this returns.
    crate::db::blocking(|| claim_once(&shared, &mut db, &me, ha))?;
    let (thread_shared, ha) = (Arc::downgrade(&shared), ha.clone());
    let held = shared.epoch.load(Ordering::Acquire);
    let thread = std::thread::Builder::new()
        .name("berth-lease".into())
        .spawn(move || run(&thread_shared, held, db, me, ha, stop_rx))
        .map_err(|source| DaemonError::Io {
            what: "starting the lease thread".into(),
            source,
        })?;
    *lock(&shared.thread) = Some(thread);
    Ok(Gate(Some(shared)))
}

/// The lease thread: claims (or renews) every `lease_renew_ms` while leading, and right when
/// the holder's lease will have expired while following; gives the lease up when told to stop,
/// or once every gate is gone (a daemon dropped, or a start that failed after the claim).
fn run(
    shared: &Weak<Shared>,
    mut held: u64,
    mut db: Db,
    me: Me,
    ha: HaSection,
    stop: std::sync::mpsc::Receiver<()>,
) {
    // `held`: the epoch held after the last claim, unless this daemon gave leading up for
    // good.
    let mut failures = 0u32;
    loop {
        let Some(shared) = shared.upgrade() else {
            break;
        };
        // A connection the server dropped (a restart, a network cut) is opened again first.
        if db.is_closed() {
            let _ = db.reconnect();
        }
        let claimed = claim_once(&shared, &mut db, &me, &ha);
        held = match shared.lost.load(Ordering::Acquire) {
            true => 0,
            false => shared.epoch.load(Ordering::Acquire),
        };
        drop(shared);
        let wait = match claimed {
            Ok(wait) => {
                if failures > 0 {
                    tracing::info!(failures, "the lease is claimed again");
                }
                failures = 0;
                wait
            }
            Err(e) => {
                failures += 1;
                // The first failure and then every tenth: a database away for long fills no log.
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(error = %e, failures, "claiming the lease failed");
                }
                Duration::from_millis(ha.lease_renew_ms)
            }
        };
        match stop.recv_timeout(wait) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => break,
        }
    }
    if let Some(shared) = shared.upgrade() {
        shared.epoch.store(0, Ordering::Release);
        shared.until_us.store(0, Ordering::Release);
    }
    let epoch = held;
    if epoch != 0 {
        if db.is_closed() {
            let _ = db.reconnect();
        }
        let released = db.execute(
            &format!(
                "UPDATE lease SET expires_ms = {DB_NOW_MS} WHERE id = 1 AND holder = ?1 AND epoch = ?2"
            ),
            crate::args![me.holder.as_str(), epoch],
        );
        match released {
            Ok(_) => tracing::info!(epoch, "lease released"),
            Err(e) => tracing::warn!(error = %e, "releasing the lease failed; it expires"),
        }
    }
}

/// One claim, with its outcome noted in `shared`; returns how long to wait before the next.
fn claim_once(
    shared: &Shared,
    db: &mut Db,
    me: &Me,
    ha: &HaSection,
) -> Result<Duration, DaemonError> {
    let started = Instant::now();
    // A daemon that stopped leading never leads again in this process: its control loop is
    // gone; it starts again as a follower.
    let mine = if shared.lost.load(Ordering::Acquire) {
        u64::MAX
    } else {
        shared.epoch.load(Ordering::Acquire)
    };
    let result = claim(db, me, ha.lease_ttl_ms, mine);
    let mut view = lock(&shared.view);
    let renew = Duration::from_millis(ha.lease_renew_ms);
    let claimed = match result {
        Ok(c) => c,
        Err(e) => {
            drop(view);
            // Leading lapses by the clock alone (see `may_act`).
            shared.changes.send_modify(|n| *n += 1);
            return Err(e);
        }
    };
    match claimed {
        Claimed::Leading { epoch, taken } => {
            let valid = Duration::from_millis(ha.lease_ttl_ms.saturating_sub(ha.lease_margin_ms));
            let until = (started + valid).duration_since(shared.origin).as_micros() as u64;
            shared.epoch.store(epoch, Ordering::Release);
            shared.until_us.store(until.max(1), Ordering::Release);
            view.renewed = Some(started);
            view.holder = Some(Holder {
                holder: me.holder.clone(),
                address: me.address.clone(),
                epoch,
                expired: false,
                expires_in_ms: ha.lease_ttl_ms,
            });
            if taken {
                view.takeovers += 1;
                tracing::info!(epoch, "this daemon leads: lease taken");
            }
            drop(view);
            shared.changes.send_modify(|n| *n += 1);
            Ok(renew)
        }
        Claimed::Following(holder) => {
            let was_leading = shared.epoch.swap(0, Ordering::AcqRel) != 0;
            shared.until_us.store(0, Ordering::Release);
            if was_leading {
                tracing::error!(holder = %holder.holder, epoch = holder.epoch, "the lease was taken by another daemon");
            }
            // Look again right when the holder's lease will have run out, if that is sooner:
            // a takeover waits for the lease only.
            let wait = renew.min(Duration::from_millis(holder.expires_in_ms + 5));
            view.holder = Some(holder);
            drop(view);
            shared.changes.send_modify(|n| *n += 1);
            Ok(wait)
        }
    }
}

/// The lease row as read: holder, address, epoch, expiry and the database's clock.
type LeaseRow = (String, String, u64, i64, i64);

fn read_row(db: &mut Db, lock: &str) -> Result<LeaseRow, DaemonError> {
    db.row(
        &format!(
            "SELECT holder, address, epoch, expires_ms, {DB_NOW_MS} FROM lease WHERE id = 1 {lock}"
        ),
        &[],
        |r| Ok((r.text(0)?, r.text(1)?, r.u64(2)?, r.i64(3)?, r.i64(4)?)),
    )
    .map_err(sql("reading the lease"))?
    .ok_or_else(|| DaemonError::Config {
        key: "store".into(),
        message: "the database has no lease row (was it made by another berth?)".into(),
    })
}

/// Renews, takes or leaves the lease. The locks are chosen so that the leader's own journal
/// commits (which hold `FOR KEY SHARE` on the row, see [`check_fence`]) never hold up its
/// renewal (an `UPDATE` of a non-key column), while a takeover (`FOR UPDATE`) waits for them;
/// a follower only reads, and takes the lock only once the lease has expired.
fn claim(db: &mut Db, me: &Me, ttl_ms: u64, mine: u64) -> Result<Claimed, DaemonError> {
    let (holder, address, epoch, expires_ms, now_ms) = read_row(db, "")?;
    if holder == me.holder && epoch == mine {
        let renewed = db
            .execute(
                &format!(
                    "UPDATE lease SET expires_ms = {DB_NOW_MS} + ?1, address = ?2
                     WHERE id = 1 AND holder = ?3 AND epoch = ?4"
                ),
                crate::args![ttl_ms, me.address.as_str(), me.holder.as_str(), mine],
            )
            .map_err(sql("renewing the lease"))?;
        if renewed == 1 {
            return Ok(Claimed::Leading {
                epoch,
                taken: false,
            });
        }
        // Taken between the read and the renewal: see by whom.
        return claim(db, me, ttl_ms, 0);
    }
    if expires_ms > now_ms || mine == u64::MAX {
        return Ok(Claimed::Following(Holder {
            holder,
            address,
            epoch,
            expired: expires_ms <= now_ms,
            expires_in_ms: expires_ms.saturating_sub(now_ms).max(0) as u64,
        }));
    }
    db.transaction("taking the lease", |db| {
        let (holder, address, epoch, expires_ms, now_ms) = read_row(db, "FOR UPDATE")?;
        if expires_ms > now_ms {
            // Another daemon was quicker.
            return Ok(Claimed::Following(Holder {
                holder,
                address,
                epoch,
                expired: false,
                expires_in_ms: (expires_ms - now_ms) as u64,
            }));
        }
        let epoch = epoch + 1;
        db.execute(
            "UPDATE lease SET holder = ?1, address = ?2, epoch = ?3, expires_ms = ?4,
             acquired_ms = ?5 WHERE id = 1",
            crate::args![
                me.holder.as_str(),
                me.address.as_str(),
                epoch,
                now_ms.saturating_add(ttl_ms as i64),
                now_ms
            ],
        )
        .map_err(sql("taking the lease"))?;
        Ok(Claimed::Leading { epoch, taken: true })
    })
}

/// Refuses a write unless the lease's epoch is `epoch`: the fence of every journal commit,
/// inside its transaction. `FOR KEY SHARE` makes a takeover (`FOR UPDATE`) wait for the
/// commit to end, and lets the leader's renewals (an `UPDATE` of non-key columns) pass.
pub(crate) fn check_fence(db: &mut Db, epoch: u64) -> Result<(), DaemonError> {
    let found = db
        .row(
            "SELECT epoch, holder FROM lease WHERE id = 1 FOR KEY SHARE",
            &[],
            |r| Ok((r.u64(0)?, r.text(1)?)),
        )
        .map_err(sql("checking the lease"))?;
    match found {
        Some((e, _)) if e == epoch => Ok(()),
        Some((e, holder)) => Err(DaemonError::Fenced {
            mine: epoch,
            found: e,
            holder,
        }),
        None => Err(DaemonError::Fenced {
            mine: epoch,
            found: 0,
            holder: String::new(),
        }),
    }
}

/// The fence as a deferred statement (see `Db::execute_later`), so that a commit stays one
/// round trip: it takes the same `FOR KEY SHARE` lock as [`check_fence`], and fails (which
/// rolls the commit back) unless the lease is at `epoch`. [`refusal`] then says why.
pub(crate) fn fence_later(db: &mut Db, epoch: u64) -> Result<(), DaemonError> {
    db.execute_later(
        // The failing branch reads the row, so that the planner cannot fold it into an error
        // before the condition is known.
        "SELECT CASE WHEN epoch = ?1 THEN 1 ELSE CAST('fenced by ' || holder AS BIGINT) END
         FROM lease WHERE id = 1 FOR KEY SHARE",
        crate::args![epoch],
    )
    .map_err(sql("checking the lease"))
}

/// After a commit under the fence failed: the fence's refusal when the lease has left
/// `epoch`, `None` when it has not (the commit failed for another reason) or cannot be read.
pub(crate) fn refusal(db: &mut Db, epoch: u64) -> Option<DaemonError> {
    if db.is_closed() {
        db.reconnect().ok()?;
    }
    check_fence(db, epoch)
        .err()
        .filter(|e| e.is_leadership_lost())
}

/// A holder name unique to this process: the host name, the process id and a random part.
pub fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let random = crate::random_token().unwrap_or_default();
    format!(
        "{host}:{}:{}",
        std::process::id(),
        random.get(..8).unwrap_or("0")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Commit, Store};
    use berth_testkit::postgres::{Database, fresh_database, psql};

    fn ha(ttl: u64, renew: u64, margin: u64) -> HaSection {
        HaSection {
            lease_ttl_ms: ttl,
            lease_renew_ms: renew,
            lease_margin_ms: margin,
            advertise: None,
        }
    }

    fn me(name: &str) -> Me {
        Me {
            holder: name.into(),
            address: format!("http://{name}"),
        }
    }

    /// A fresh database with berth's schema, or `None` (the skip is printed) without a server.
    fn database() -> Option<(Database, StoreAt)> {
        let db = fresh_database()?;
        let at = StoreAt::Postgres(db.url().to_owned());
        Store::open(&at).unwrap();
        Some((db, at))
    }

    /// A proxy to the database at `at` that a test can freeze, and the store through it.
    fn through_a_proxy(at: &StoreAt) -> (berth_testkit::proxy::Proxy, StoreAt) {
        let StoreAt::Postgres(url) = at else {
            unreachable!("PostgreSQL only")
        };
        let (head, rest) = url.rsplit_once('@').unwrap();
        let (hostport, dbname) = rest.split_once('/').unwrap();
        let proxy = berth_testkit::proxy::Proxy::start(hostport);
        let through = StoreAt::Postgres(format!("{head}@127.0.0.1:{}/{dbname}", proxy.port()));
        (proxy, through)
    }

    /// Waits until `f` holds, for at most `limit`; returns how long it took.
    fn within(what: &str, limit: Duration, f: impl Fn() -> bool) -> Duration {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        start.elapsed()
    }

    #[test]
    fn one_daemon_leads_another_takes_over_when_it_gives_up_or_its_lease_runs_out() {
        let Some((db, at)) = database() else { return };
        let settings = ha(600, 100, 200);
        let a = start(&at, me("a"), &settings).unwrap();
        assert!(a.may_act());
        assert_eq!((a.role(), a.epoch()), (Role::Leader, 1));
        let b = start(&at, me("b"), &settings).unwrap();
        assert_eq!(b.role(), Role::Follower);
        assert_eq!(b.leader_address().as_deref(), Some("http://a"));
        // A clean stop gives the lease up: the follower takes it at its next look.
        a.release();
        assert!(!a.may_act());
        within(
            "b takes over after a gave up",
            Duration::from_secs(2),
            || b.may_act(),
        );
        assert_eq!(b.epoch(), 2);
        // Another holder takes the row (as a daemon would whose claim found it expired): b
        // sees it at its next renewal and stops, then takes the lease back once that one's
        // expires unrenewed.
        psql(
            db.url(),
            "UPDATE lease SET holder = 'ghost', address = 'http://ghost', epoch = epoch + 1,
             expires_ms = CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT) + 400",
        );
        within("b stops leading", Duration::from_secs(2), || !b.may_act());
        assert_eq!(b.leader_address().as_deref(), Some("http://ghost"));
        within("b takes the expired lease", Duration::from_secs(3), || {
            b.may_act()
        });
        assert_eq!(b.epoch(), 4);
        b.release();
    }

    /// A leader cut off from the database stops acting by its own clock before its lease can
    /// have expired, and a follower that still reaches the database takes over after it.
    #[test]
    fn a_leader_cut_off_stops_acting_before_its_lease_expires() {
        let Some((_db, at)) = database() else { return };
        // The leader reaches the database through a proxy that can be frozen.
        let (proxy, through) = through_a_proxy(&at);
        let (ttl, renew, margin) = (1000, 100, 300);
        let settings = ha(ttl, renew, margin);
        let a = start(&through, me("a"), &settings).unwrap();
        assert!(a.may_act());
        let b = start(&at, me("b"), &settings).unwrap();
        assert!(!b.may_act());
        let cut = Instant::now();
        proxy.freeze();
        let stopped = within("a stops acting", Duration::from_secs(3), || !a.may_act());
        within("b takes over", Duration::from_secs(3), || b.may_act());
        let took = cut.elapsed();
        // a's last renewal started before the cut: it stops at most ttl - margin after it, so
        // before its lease can have expired (`ttl` after that renewal); the rest of the margin
        // is room for this thread to be late on a busy machine.
        assert!(
            stopped < Duration::from_millis(ttl),
            "a acted {stopped:?} after the cut"
        );
        // b takes over only once the lease ran out (a renewed at most `renew` before the
        // cut), after a stopped.
        assert!(
            took > stopped && took >= Duration::from_millis(ttl - renew),
            "b took over {took:?} after the cut, a stopped after {stopped:?}"
        );
        assert!(!a.may_act(), "a acts again while cut off");
        assert_eq!(b.epoch(), 2);
        b.release();
        proxy.thaw();
    }

    /// A lone daemon whose database went away for longer than its lease stops acting, and acts
    /// again under the same epoch once the database answers and nobody took the lease.
    #[test]
    fn a_lapsed_lease_nobody_took_is_renewed() {
        let Some((_db, at)) = database() else { return };
        let (proxy, through) = through_a_proxy(&at);
        let a = start(&through, me("a"), &ha(1000, 100, 300)).unwrap();
        assert!(a.may_act());
        proxy.freeze();
        within("a stops acting", Duration::from_secs(3), || !a.may_act());
        // Nobody leads meanwhile: a client is told so, not sent to this daemon itself.
        assert_eq!(a.leader_address(), None);
        std::thread::sleep(Duration::from_millis(600));
        proxy.thaw();
        within("a acts again", Duration::from_secs(5), || a.may_act());
        assert_eq!(a.epoch(), 1);
        a.release();
    }

    /// A daemon dropped without a clean stop (a start that failed after its claim) ends its
    /// lease thread, which gives the lease up: another daemon leads well before the TTL.
    #[test]
    fn the_last_gate_dropped_gives_the_lease_up() {
        let Some((_db, at)) = database() else { return };
        let settings = ha(5000, 100, 1000);
        let a = start(&at, me("a"), &settings).unwrap();
        assert!(a.may_act());
        drop(a);
        let b = start(&at, me("b"), &settings).unwrap();
        within("b leads", Duration::from_secs(2), || b.may_act());
        assert_eq!(b.epoch(), 2);
        b.release();
    }

    /// A commit under an epoch the lease has left is refused, and leaves nothing behind.
    #[test]
    fn the_fence_refuses_a_commit_of_an_old_epoch() {
        let Some((db, at)) = database() else { return };
        let a = start(&at, me("a"), &ha(600, 100, 200)).unwrap();
        let mut store = Store::open(&at).unwrap();
        store.fence(a.epoch());
        let commit = |batch: u64| Commit {
            batch,
            at_ms: 1,
            inputs: vec![crate::wire::WireInput::Tick],
            ..Commit::default()
        };
        store.commit(&commit(1)).unwrap();
        psql(db.url(), "UPDATE lease SET epoch = epoch + 1");
        let refused = store.commit(&commit(2)).unwrap_err();
        assert!(
            matches!(
                refused,
                DaemonError::Fenced {
                    mine: 1,
                    found: 2,
                    ..
                }
            ),
            "{refused}"
        );
        assert!(refused.is_leadership_lost());
        let rows = psql(db.url(), "SELECT count(*) FROM journal");
        assert_eq!(rows.trim(), "1", "the refused commit left rows behind");
        a.release();
    }
}
