//! The store: the journal of every input, and the state tables (hosts, templates, requests,
//! VMs, a per-VM history, the audit log) kept in the same transaction as the journal rows that
//! changed them, on SQLite or PostgreSQL ([`crate::db`]). Schema changes are numbered
//! migrations per engine (SQLite's `PRAGMA user_version`, PostgreSQL's `schema_version`
//! table); see `SCHEMA.md` for the tables.

use std::collections::{BTreeMap, HashMap};

pub use berth_api::{AuditRow, ChangeRow, HistoryRow, Hold, OrphanRow, RequestRow, VmRow};
use berth_sched::{Event, VmState};

use crate::DaemonError;
use crate::args;
pub use crate::db::{Db, DbError, Engine, Row, StoreAt, Value, sql};
use crate::wire::{WireHost, WireInput, WireRequest};

/// SQLite's migrations: each takes the schema from its index to the next version.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE journal (
        seq INTEGER PRIMARY KEY,
        batch INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        input TEXT NOT NULL
    );
    CREATE INDEX journal_batch ON journal(batch);
    CREATE TABLE hosts (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        driver TEXT NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        cause TEXT NOT NULL,
        added_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        removed_ms INTEGER
    );
    CREATE TABLE templates (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        template TEXT NOT NULL,
        count INTEGER NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        cause TEXT NOT NULL,
        submitted_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE INDEX requests_state ON requests(state);
    CREATE TABLE vms (
        id INTEGER PRIMARY KEY,
        request INTEGER NOT NULL,
        host INTEGER,
        state TEXT NOT NULL,
        cause TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE INDEX vms_request ON vms(request);
    CREATE INDEX vms_state ON vms(state);
    CREATE INDEX vms_host ON vms(host);
    CREATE TABLE vm_history (
        id INTEGER PRIMARY KEY,
        vm INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        host INTEGER,
        cause TEXT NOT NULL
    );
    CREATE INDEX vm_history_vm ON vm_history(vm);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        who TEXT NOT NULL,
        role TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    ",
    // 2: the hook run log, and accounting views over the VM history (docs/observability.md).
    "
    CREATE TABLE hook_runs (
        id INTEGER PRIMARY KEY,
        hook TEXT NOT NULL,
        event TEXT NOT NULL,
        vm INTEGER,
        host TEXT,
        request INTEGER,
        attempt INTEGER NOT NULL,
        started_ms INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        exit_code INTEGER,
        outcome TEXT NOT NULL,
        stderr_tail TEXT NOT NULL
    );
    CREATE INDEX hook_runs_hook ON hook_runs(hook);
    CREATE INDEX vm_history_to_state ON vm_history(to_state, vm);
    CREATE VIEW vm_usage AS
    SELECT v.id AS vm, v.request AS request, r.template AS template,
        coalesce(json_extract(r.spec, '$.requester'), '') AS requester,
        h.name AS host,
        coalesce(json_extract(r.spec, '$.vcpus'), json_extract(t.spec, '$.vcpus'), 0) AS vcpus,
        s.running_ms AS running_ms,
        coalesce(e.ended_ms, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)) AS ended_ms,
        e.ended_ms IS NULL AS live,
        (coalesce(e.ended_ms, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)) - s.running_ms)
            / 3600000.0 AS hours
    FROM vms v
    JOIN requests r ON r.id = v.request
    LEFT JOIN templates t ON t.name = r.template
    LEFT JOIN hosts h ON h.id = v.host
    JOIN (SELECT vm, min(at_ms) AS running_ms FROM vm_history WHERE to_state = 'running'
          GROUP BY vm) s ON s.vm = v.id
    LEFT JOIN (SELECT vm, min(at_ms) AS ended_ms FROM vm_history
               WHERE to_state IN ('releasing', 'done', 'failed', 'lost', 'cancelled')
               GROUP BY vm) e ON e.vm = v.id;
    CREATE VIEW vm_hours_by_template AS
    SELECT template, count(*) AS vms, sum(hours) AS vm_hours, sum(hours * vcpus) AS vcpu_hours
    FROM vm_usage GROUP BY template;
    CREATE VIEW vm_hours_by_requester AS
    SELECT requester, count(*) AS vms, sum(hours) AS vm_hours, sum(hours * vcpus) AS vcpu_hours
    FROM vm_usage GROUP BY requester;
    CREATE VIEW vm_hours_by_day AS
    SELECT date(running_ms / 1000, 'unixepoch') AS day,
        CAST(strftime('%s', date(running_ms / 1000, 'unixepoch')) AS INTEGER) AS day_s,
        template, count(*) AS vms, sum(hours) AS vm_hours, sum(hours * vcpus) AS vcpu_hours
    FROM vm_usage GROUP BY day, template;
    ",
    // 3: VMs found on hosts that berth kept rather than destroyed (see `Control::judge_orphans`).
    "
    CREATE TABLE orphans (
        vm INTEGER PRIMARY KEY,
        host TEXT NOT NULL,
        found_ms INTEGER NOT NULL,
        reason TEXT NOT NULL
    );
    ",
    // 4: what a request that is still active ends as once its VMs are released (a cancel
    // answers `active` with `ending = cancelled` until then).
    "ALTER TABLE requests ADD COLUMN ending TEXT;",
    // 5: pulses, a bounded time series sampled on a wall-clock period (see `pulses`); the
    // classes of a sample as JSON (`berth_api::ClassPulse`).
    "
    CREATE TABLE pulses (
        at_ms INTEGER PRIMARY KEY,
        waiting_requests INTEGER NOT NULL,
        waiting_vms INTEGER NOT NULL,
        running_vms INTEGER NOT NULL,
        classes TEXT NOT NULL
    );
    ",
    // 6: each request's staged change and account (the requester when it named none) as
    // columns, so that changes are listed and accounts counted without reading every spec.
    "
    ALTER TABLE requests ADD COLUMN change TEXT;
    ALTER TABLE requests ADD COLUMN account TEXT;
    UPDATE requests SET change = json_extract(spec, '$.change'),
        account = coalesce(json_extract(spec, '$.account'), json_extract(spec, '$.requester'));
    CREATE INDEX requests_change ON requests(change, id) WHERE change IS NOT NULL;
    ",
    // 7: snapshots of the scheduler's state, so that a start replays only the journal after
    // the newest (see `Control::recover`).
    "
    CREATE TABLE snapshots (
        batch INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        submits INTEGER NOT NULL,
        state BLOB NOT NULL,
        side TEXT NOT NULL
    );
    ",
    // 8: a VM's object on its host when its name there is not the VM's own: a request's VM
    // that took a warm VM's (a handover relabels in the books; the host keeps the object).
    // And a warm VM's template, which no request row gives.
    "
    ALTER TABLE vms ADD COLUMN host_object TEXT;
    ALTER TABLE vms ADD COLUMN template TEXT;
    ",
    // 9: the hook outbox, written in the batch that made its events (see `hooks`), and each
    // run's event id.
    "
    CREATE TABLE hook_outbox (
        id INTEGER PRIMARY KEY,
        hook TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event TEXT NOT NULL,
        payload TEXT NOT NULL,
        vm INTEGER,
        host TEXT,
        request INTEGER,
        claimed_by TEXT,
        claimed_ms INTEGER
    );
    CREATE UNIQUE INDEX hook_outbox_event ON hook_outbox(hook, event_id);
    ALTER TABLE hook_runs ADD COLUMN event_id TEXT;
    CREATE INDEX hook_runs_event ON hook_runs(event_id);
    ",
    // 10: every VM's row names its template, written with the row, so that a list of VMs
    // reads one table; the rows written before get their request's.
    VM_TEMPLATES_BACKFILL,
];

/// Fills `vms.template` from the VMs' requests where it is empty (SQLite's 10, PostgreSQL's 4).
const VM_TEMPLATES_BACKFILL: &str = "
    UPDATE vms SET template = (SELECT r.template FROM requests r WHERE r.id = vms.request)
    WHERE template IS NULL;
    ";

/// PostgreSQL's migrations: each takes the schema from its index to the next version. The
/// first is SQLite's eight at once (PostgreSQL came after them), with PostgreSQL's types and
/// the accounting views in its own SQL (JSON through `jsonb`, the clock through `now()`).
const POSTGRES_MIGRATIONS: &[&str] = &[
    // 1: the schema of SQLite's version 8.
    "
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE journal (
        seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        batch BIGINT NOT NULL,
        at_ms BIGINT NOT NULL,
        input TEXT NOT NULL
    );
    CREATE INDEX journal_batch ON journal(batch);
    CREATE TABLE hosts (
        id BIGINT PRIMARY KEY,
        name TEXT NOT NULL,
        driver TEXT NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        cause TEXT NOT NULL,
        added_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        removed_ms BIGINT
    );
    CREATE TABLE templates (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        updated_ms BIGINT NOT NULL
    );
    CREATE TABLE requests (
        id BIGINT PRIMARY KEY,
        template TEXT NOT NULL,
        count BIGINT NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        cause TEXT NOT NULL,
        submitted_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        ending TEXT,
        change TEXT,
        account TEXT
    );
    CREATE INDEX requests_state ON requests(state);
    CREATE INDEX requests_change ON requests(change, id) WHERE change IS NOT NULL;
    CREATE TABLE vms (
        id BIGINT PRIMARY KEY,
        request BIGINT NOT NULL,
        host BIGINT,
        state TEXT NOT NULL,
        cause TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        host_object TEXT,
        template TEXT
    );
    CREATE INDEX vms_request ON vms(request);
    CREATE INDEX vms_state ON vms(state);
    CREATE INDEX vms_host ON vms(host);
    CREATE TABLE vm_history (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        vm BIGINT NOT NULL,
        at_ms BIGINT NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        host BIGINT,
        cause TEXT NOT NULL
    );
    CREATE INDEX vm_history_vm ON vm_history(vm);
    CREATE INDEX vm_history_to_state ON vm_history(to_state, vm);
    CREATE TABLE audit (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        who TEXT NOT NULL,
        role TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    CREATE TABLE hook_runs (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        hook TEXT NOT NULL,
        event TEXT NOT NULL,
        vm BIGINT,
        host TEXT,
        request BIGINT,
        attempt BIGINT NOT NULL,
        started_ms BIGINT NOT NULL,
        duration_ms BIGINT NOT NULL,
        exit_code BIGINT,
        outcome TEXT NOT NULL,
        stderr_tail TEXT NOT NULL
    );
    CREATE INDEX hook_runs_hook ON hook_runs(hook);
    CREATE TABLE orphans (
        vm BIGINT PRIMARY KEY,
        host TEXT NOT NULL,
        found_ms BIGINT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE pulses (
        at_ms BIGINT PRIMARY KEY,
        waiting_requests BIGINT NOT NULL,
        waiting_vms BIGINT NOT NULL,
        running_vms BIGINT NOT NULL,
        classes TEXT NOT NULL
    );
    CREATE TABLE snapshots (
        batch BIGINT PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        submits BIGINT NOT NULL,
        state BYTEA NOT NULL,
        side TEXT NOT NULL
    );
    CREATE VIEW vm_usage AS
    SELECT v.id AS vm, v.request AS request, r.template AS template,
        coalesce(r.spec::jsonb ->> 'requester', '') AS requester,
        h.name AS host,
        coalesce((r.spec::jsonb ->> 'vcpus')::bigint, (t.spec::jsonb ->> 'vcpus')::bigint, 0)
            AS vcpus,
        s.running_ms AS running_ms,
        coalesce(e.ended_ms, (extract(epoch FROM now()) * 1000)::bigint) AS ended_ms,
        e.ended_ms IS NULL AS live,
        (coalesce(e.ended_ms, (extract(epoch FROM now()) * 1000)::bigint) - s.running_ms)
            / 3600000.0::double precision AS hours
    FROM vms v
    JOIN requests r ON r.id = v.request
    LEFT JOIN templates t ON t.name = r.template
    LEFT JOIN hosts h ON h.id = v.host
    JOIN (SELECT vm, min(at_ms) AS running_ms FROM vm_history WHERE to_state = 'running'
          GROUP BY vm) s ON s.vm = v.id
    LEFT JOIN (SELECT vm, min(at_ms) AS ended_ms FROM vm_history
               WHERE to_state IN ('releasing', 'done', 'failed', 'lost', 'cancelled')
               GROUP BY vm) e ON e.vm = v.id;
    CREATE VIEW vm_hours_by_template AS
    SELECT template, count(*) AS vms, sum(hours) AS vm_hours, sum(hours * vcpus) AS vcpu_hours
    FROM vm_usage GROUP BY template;
    CREATE VIEW vm_hours_by_requester AS
    SELECT requester, count(*) AS vms, sum(hours) AS vm_hours, sum(hours * vcpus) AS vcpu_hours
    FROM vm_usage GROUP BY requester;
    CREATE VIEW vm_hours_by_day AS
    SELECT to_char(to_timestamp(running_ms / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day,
        (running_ms / 86400000) * 86400 AS day_s,
        template, count(*) AS vms, sum(hours) AS vm_hours, sum(hours * vcpus) AS vcpu_hours
    FROM vm_usage GROUP BY 1, 2, template;
    ",
    // 2: the leader lease (see `lease`): one row, free until a daemon takes it.
    "
    CREATE TABLE lease (
        id BIGINT PRIMARY KEY CHECK (id = 1),
        holder TEXT NOT NULL,
        address TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        acquired_ms BIGINT NOT NULL
    );
    INSERT INTO lease (id, holder, address, epoch, expires_ms, acquired_ms)
    VALUES (1, '', '', 0, 0, 0);
    ",
    // 3: SQLite's 9, the hook outbox.
    "
    CREATE TABLE hook_outbox (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        hook TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event TEXT NOT NULL,
        payload TEXT NOT NULL,
        vm BIGINT,
        host TEXT,
        request BIGINT,
        claimed_by TEXT,
        claimed_ms BIGINT
    );
    CREATE UNIQUE INDEX hook_outbox_event ON hook_outbox(hook, event_id);
    ALTER TABLE hook_runs ADD COLUMN event_id TEXT;
    CREATE INDEX hook_runs_event ON hook_runs(event_id);
    ",
    // 4: SQLite's 10, every VM's template on its row.
    VM_TEMPLATES_BACKFILL,
];

/// The journal after a batch, in journal order (batch, then seq, as the batch index holds it).
const JOURNAL_AFTER: &str =
    "SELECT batch, at_ms, input, seq FROM journal WHERE batch > ?1 ORDER BY batch, seq";

/// A snapshot row: the scheduler's state after journal batch `batch` (see `Control::recover`).
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotRow {
    /// The last journal batch it covers.
    pub batch: u64,
    /// The time of that batch.
    pub at_ms: u64,
    /// Submits journaled up to that batch, for telling whether the `requests` table lost rows.
    pub submits: u64,
    /// `Scheduler::snapshot`'s bytes.
    pub state: Vec<u8>,
    /// What the control loop keeps beside the scheduler (JSON, `control::SnapshotSide`).
    pub side: String,
}

/// A `requests` row rebuilt from the journal (see `Store::repair_requests`).
#[derive(Debug)]
pub struct RepairedRequest {
    pub spec: WireRequest,
    pub state: berth_sched::RequestState,
    pub cause: String,
    pub submitted_ms: u64,
    pub updated_ms: u64,
}

/// The `meta` key holding the data directory's identity (see `datadir`).
pub const META_DATA_DIR_ID: &str = "data_dir_id";

/// What one pass of the control loop writes, in one transaction.
#[derive(Debug, Default)]
pub struct Commit {
    pub batch: u64,
    pub at_ms: u64,
    pub inputs: Vec<WireInput>,
    pub events: Vec<Event>,
    pub audits: Vec<AuditRow>,
    /// Orphans newly kept, and kept ones that are gone (destroyed, or no longer listed).
    pub orphans_kept: Vec<OrphanRow>,
    pub orphans_gone: Vec<u64>,
    /// VMs that took another VM's object on their host (a handover), with that object's name,
    /// and VMs whose object so taken was destroyed for them to be placed again (`None`); in
    /// order.
    pub host_objects: Vec<(u64, Option<String>)>,
    /// Warm VMs placed in this batch, with their pool's template.
    pub warm_templates: Vec<(u64, String)>,
    /// The template of each request that has new VMs in this batch, written on their rows.
    pub request_templates: BTreeMap<u64, String>,
    /// Hook runs the batch's events owe, run once it is written (see `hooks`).
    pub hook_jobs: Vec<HookJob>,
}

/// One event for one hook, as the hook outbox keeps it until the hook has run.
#[derive(Clone, Debug, PartialEq)]
pub struct HookJob {
    /// The hook's name.
    pub hook: String,
    /// The event's id: `BATCH.INDEX` for the scheduler's (the journal batch and the event's
    /// place among its events, the same on every replay), `image.N.MS` for pulls.
    pub event_id: String,
    /// The event's name (`vm.running`, ...).
    pub event: String,
    /// What the hook reads on its standard input.
    pub payload: String,
    pub vm: Option<u64>,
    pub host: Option<String>,
    pub request: Option<u64>,
}

/// The writer: owned by the control loop.
pub struct Store {
    db: Db,
    /// The lease epoch this daemon leads under, checked by every write that only the leader
    /// makes (see `lease`); `None` on SQLite, whose one daemon needs no fence.
    fence: Option<u64>,
}

/// The journal's rows read back: `(batch, at_ms, inputs)` per batch, in order.
pub type Batches = Vec<(u64, u64, Vec<WireInput>)>;

impl Store {
    /// Connects to the store and brings its schema up to date.
    pub fn open(at: &StoreAt) -> Result<Store, DaemonError> {
        let mut db = Db::connect(at)?;
        migrate(&mut db)?;
        Ok(Store { db, fence: None })
    }

    /// From now on every commit and snapshot is refused unless the lease is at `epoch`.
    pub fn fence(&mut self, epoch: u64) {
        self.fence = Some(epoch);
    }

    /// The fence check, inside a write's transaction.
    fn fenced(fence: Option<u64>, db: &mut Db) -> Result<(), DaemonError> {
        match fence {
            Some(epoch) => crate::lease::check_fence(db, epoch),
            None => Ok(()),
        }
    }

    /// The connection, for reads in tests and tools.
    pub fn db(&mut self) -> &mut Db {
        &mut self.db
    }

    pub fn meta(&mut self, key: &str) -> Result<Option<String>, DaemonError> {
        self.db
            .row("SELECT value FROM meta WHERE key = ?1", args![key], |r| {
                r.text(0)
            })
            .map_err(sql("reading meta"))
    }

    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<(), DaemonError> {
        self.db
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                args![key, value],
            )
            .map_err(sql("writing meta"))?;
        Ok(())
    }

    /// Whether the journal holds anything at all.
    pub fn has_journal(&mut self) -> Result<bool, DaemonError> {
        self.db
            .row("SELECT EXISTS (SELECT 1 FROM journal)", &[], |r| r.i64(0))
            .map(|v| v.unwrap_or(0) != 0)
            .map_err(sql("reading the journal"))
    }

    /// The orphans kept so far, by VM number.
    pub fn orphans(&mut self) -> Result<Vec<OrphanRow>, DaemonError> {
        list_orphans(&mut self.db)
    }

    /// Every journaled batch in order: `(batch, at_ms, inputs)`.
    pub fn journal(&mut self) -> Result<Batches, DaemonError> {
        self.read_journal(
            "SELECT batch, at_ms, input, seq FROM journal ORDER BY seq",
            &[],
        )
    }

    /// The journaled batches after batch `after`, in order: `(batch, at_ms, inputs)`. Batches
    /// are numbered in journal order, so this is the journal's tail, read through the batch
    /// index without passing over the rows before it.
    pub fn journal_after(&mut self, after: u64) -> Result<Batches, DaemonError> {
        self.read_journal(JOURNAL_AFTER, args![after])
    }

    fn read_journal(&mut self, query: &str, params: &[Value]) -> Result<Batches, DaemonError> {
        let mut batches: Batches = Vec::new();
        let failed = sql("reading the journal");
        self.db.each(query, params, |row| {
            let batch = row.u64(0).map_err(&failed)?;
            let at_ms = row.u64(1).map_err(&failed)?;
            let seq = row.u64(3).map_err(&failed)?;
            let text = row.str(2).map_err(&failed)?.unwrap_or_default();
            let input: WireInput =
                serde_json::from_str(text).map_err(|e| DaemonError::Journal {
                    seq,
                    message: e.to_string(),
                })?;
            match batches.last_mut() {
                Some((b, _, inputs)) if *b == batch => inputs.push(input),
                _ => batches.push((batch, at_ms, vec![input])),
            }
            Ok::<(), DaemonError>(())
        })?;
        Ok(batches)
    }

    /// The newest snapshot, if any.
    pub fn latest_snapshot(&mut self) -> Result<Option<SnapshotRow>, DaemonError> {
        self.db
            .row(
                "SELECT batch, at_ms, submits, state, side FROM snapshots
                 ORDER BY batch DESC LIMIT 1",
                &[],
                |r| {
                    Ok(SnapshotRow {
                        batch: r.u64(0)?,
                        at_ms: r.u64(1)?,
                        submits: r.u64(2)?,
                        state: r.bytes(3)?,
                        side: r.text(4)?,
                    })
                },
            )
            .map_err(sql("reading the newest snapshot"))
    }

    /// Writes a snapshot and deletes the older ones (the journal they cover stays: `berth
    /// trace export` reads all of it); all or nothing.
    pub fn write_snapshot(&mut self, row: &SnapshotRow) -> Result<(), DaemonError> {
        let failed = sql("writing a snapshot");
        let fence = self.fence;
        self.db.transaction("writing a snapshot", |db| {
            Store::fenced(fence, db)?;
            db.execute(
                "INSERT INTO snapshots (batch, at_ms, submits, state, side)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (batch) DO UPDATE SET at_ms = excluded.at_ms,
                 submits = excluded.submits, state = excluded.state, side = excluded.side",
                args![
                    row.batch,
                    row.at_ms,
                    row.submits,
                    row.state.as_slice(),
                    &row.side
                ],
            )
            .map_err(&failed)?;
            db.execute("DELETE FROM snapshots WHERE batch < ?1", args![row.batch])
                .map_err(&failed)?;
            Ok(())
        })
    }

    /// How many rows the `requests` table holds.
    pub fn n_requests(&mut self) -> Result<u64, DaemonError> {
        self.db
            .row("SELECT count(*) FROM requests", &[], |r| r.u64(0))
            .map(Option::unwrap_or_default)
            .map_err(sql("counting requests"))
    }

    /// The request numbers the `requests` table holds, in order.
    pub fn request_ids(&mut self) -> Result<Vec<u64>, DaemonError> {
        self.db
            .rows("SELECT id FROM requests ORDER BY id", &[], |r| r.u64(0))
            .map_err(sql("reading request ids"))
    }

    /// Writes `requests` rows again that the journal holds but the table lost, as the journal's
    /// replay left them; all or nothing.
    pub fn repair_requests(&mut self, rows: &[RepairedRequest]) -> Result<(), DaemonError> {
        let failed = sql("repairing requests");
        self.db.transaction("repairing requests", |db| {
            for r in rows {
                let spec = serde_json::to_string(&r.spec).unwrap_or_default();
                db.execute(
                    "INSERT INTO requests (id, template, count, spec, state, cause, submitted_ms,
                     updated_ms, change, account) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    args![
                        r.spec.id,
                        &r.spec.template,
                        r.spec.count,
                        spec,
                        r.state.name(),
                        &r.cause,
                        r.submitted_ms,
                        r.updated_ms,
                        r.spec.change.clone(),
                        r.spec.account_name()
                    ],
                )
                .map_err(&failed)?;
            }
            Ok(())
        })
    }

    /// The VMs not yet ended that took another VM's object on their host (a handover), with
    /// that object's name.
    pub fn host_objects(&mut self) -> Result<Vec<(u64, String)>, DaemonError> {
        self.db
            .rows(
                "SELECT id, host_object FROM vms WHERE host_object IS NOT NULL
                 AND state NOT IN ('done', 'failed', 'lost', 'cancelled') ORDER BY id",
                &[],
                |r| Ok((r.u64(0)?, r.text(1)?)),
            )
            .map_err(sql("reading host objects"))
    }

    /// The highest VM number the state tables hold (0 when none).
    pub fn last_vm(&mut self) -> Result<u64, DaemonError> {
        self.max("SELECT max(id) FROM vms")
    }

    fn max(&mut self, query: &str) -> Result<u64, DaemonError> {
        self.db
            .row(query, &[], |r| r.opt_i64(0))
            .map(|v| v.flatten().unwrap_or(0).max(0) as u64)
            .map_err(sql("reading ids"))
    }

    /// The highest batch, request and host numbers used so far.
    pub fn last_ids(&mut self) -> Result<(u64, u64, u64), DaemonError> {
        Ok((
            self.max("SELECT max(batch) FROM journal")?,
            self.max("SELECT max(id) FROM requests")?,
            self.max("SELECT max(id) FROM hosts")?,
        ))
    }

    /// Writes one batch: its inputs to the journal, its events to the state tables, its audit
    /// rows; all or nothing.
    pub fn commit(&mut self, c: &Commit) -> Result<(), DaemonError> {
        let fence = self.fence;
        let written = self.db.transaction("committing", |db| {
            // In the same round trip as the writes: a statement that fails, and so rolls the
            // transaction back, unless the lease is at this daemon's epoch.
            if let Some(epoch) = fence {
                crate::lease::fence_later(db, epoch)?;
            }
            write_commit(db, c)
        });
        match (written, fence) {
            // Refused by the fence, or failed for another reason: the lease says which.
            (Err(e), Some(epoch)) => Err(crate::lease::refusal(&mut self.db, epoch).unwrap_or(e)),
            (written, _) => written,
        }
    }
}

/// The statements of a commit, inside its transaction; none needs another's answer, so they
/// go to PostgreSQL together ([`Db::execute_later`]).
fn write_commit(db: &mut Db, c: &Commit) -> Result<(), DaemonError> {
    let mut new_requests: BTreeMap<u64, &WireRequest> = BTreeMap::new();
    let mut new_hosts: BTreeMap<u64, &WireHost> = BTreeMap::new();
    for input in &c.inputs {
        let text = serde_json::to_string(input).map_err(|e| DaemonError::Journal {
            seq: 0,
            message: e.to_string(),
        })?;
        db.execute_later(
            "INSERT INTO journal (batch, at_ms, input) VALUES (?1, ?2, ?3)",
            args![c.batch, c.at_ms, text],
        )
        .map_err(sql("journaling"))?;
        match input {
            WireInput::Submit { request } => {
                new_requests.insert(request.id, request);
            }
            WireInput::AddHost { host } => {
                new_hosts.insert(host.id, host);
            }
            WireInput::Cancel { request } => {
                db.execute_later(
                    "UPDATE requests SET ending = 'cancelled'
                     WHERE id = ?1 AND state IN ('waiting', 'active')",
                    args![*request],
                )
                .map_err(sql("writing a cancel"))?;
            }
            WireInput::SetTemplate { template } => {
                let spec = serde_json::to_string(template).unwrap_or_default();
                db.execute_later(
                    "INSERT INTO templates (name, spec, updated_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET spec = excluded.spec,
                     updated_ms = excluded.updated_ms",
                    args![&template.name, spec, c.at_ms],
                )
                .map_err(sql("writing a template"))?;
            }
            _ => {}
        }
    }
    // Each VM's and request's row is written once, with where the batch's last event leaves
    // it: as an insert when the batch made it, else as one update. A submit placed in its own
    // batch is so one row of a multi-row insert, not an insert and updates (thousands of
    // statements in a burst, each parsed and planned by PostgreSQL). The history keeps every
    // event.
    for event in &c.events {
        match event {
            Event::Vm {
                at_ms,
                vm,
                host,
                from,
                to,
                cause,
                ..
            } => {
                db.execute_later(
                    "INSERT INTO vm_history (vm, at_ms, from_state, to_state, host, cause)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    args![
                        vm.0,
                        *at_ms,
                        from.map(VmState::name),
                        to.name(),
                        host.map(|h| h.0),
                        cause.to_string()
                    ],
                )
                .map_err(sql("writing vm history"))?;
            }
            Event::Request { .. } => {}
            Event::Host {
                at_ms,
                host,
                from,
                to,
                cause,
            } => {
                let state = to.map_or("removed", |s| s.name());
                if from.is_none() {
                    let Some(spec) = new_hosts.get(&host.0) else {
                        continue;
                    };
                    let text = serde_json::to_string(spec).unwrap_or_default();
                    db.execute_later(
                        "INSERT INTO hosts (id, name, driver, spec, state, cause, added_ms,
                         updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                        args![
                            host.0,
                            &spec.name,
                            &spec.driver,
                            text,
                            state,
                            cause.to_string(),
                            *at_ms
                        ],
                    )
                    .map_err(sql("writing hosts"))?;
                } else {
                    db.execute_later(
                        "UPDATE hosts SET state = ?2, cause = ?3, updated_ms = ?4,
                         removed_ms = CASE WHEN ?2 = 'removed' THEN ?4 ELSE removed_ms END
                         WHERE id = ?1",
                        args![host.0, state, cause.to_string(), *at_ms],
                    )
                    .map_err(sql("writing hosts"))?;
                }
            }
        }
    }
    for (id, row) in vm_rows(&c.events) {
        let host = row.host.map(|h| h.0);
        if let Some(created_ms) = row.created_ms {
            let template = c.request_templates.get(&row.request);
            db.execute_later(
                "INSERT INTO vms (id, request, host, state, cause, created_ms, updated_ms,
                 template) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                args![
                    id,
                    row.request,
                    host,
                    row.state.name(),
                    row.cause,
                    created_ms,
                    row.updated_ms,
                    template
                ],
            )
            .map_err(sql("writing vms"))?;
        } else {
            // One row of a multi-row update on PostgreSQL (`Db::execute_later`); each VM is
            // named once a batch, as such an update must.
            db.execute_later(
                "UPDATE vms SET host = v.column2, state = v.column3, cause = v.column4,
                 updated_ms = v.column5
                 FROM (VALUES (?1, CAST(?2 AS BIGINT), ?3, ?4, ?5)) AS v
                 WHERE vms.id = v.column1",
                args![id, host, row.state.name(), row.cause, row.updated_ms],
            )
            .map_err(sql("writing vms"))?;
        }
    }
    for (id, row) in request_rows(&c.events) {
        if let Some(created_ms) = row.created_ms {
            let Some(spec) = new_requests.get(&id) else {
                continue;
            };
            let text = serde_json::to_string(spec).unwrap_or_default();
            db.execute_later(
                "INSERT INTO requests (id, template, count, spec, state, cause,
                 submitted_ms, updated_ms, change, account)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                args![
                    id,
                    &spec.template,
                    spec.count,
                    text,
                    row.state.name(),
                    row.cause,
                    created_ms,
                    row.updated_ms,
                    spec.change.clone(),
                    spec.account_name()
                ],
            )
            .map_err(sql("writing requests"))?;
        } else {
            // A cancel's `ending` (written above) stays while the request is live, and goes
            // when it ends. One row of a multi-row update, as for `vms`.
            db.execute_later(
                "UPDATE requests SET state = v.column2, cause = v.column3,
                 updated_ms = v.column4,
                 ending = CASE WHEN v.column5 = 1 THEN requests.ending END
                 FROM (VALUES (?1, ?2, ?3, ?4, ?5)) AS v
                 WHERE requests.id = v.column1",
                args![
                    id,
                    row.state.name(),
                    row.cause,
                    row.updated_ms,
                    i64::from(row.live_throughout)
                ],
            )
            .map_err(sql("writing requests"))?;
        }
    }
    for a in &c.audits {
        db.execute_later(
            "INSERT INTO audit (at_ms, who, role, action, target, outcome)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            args![a.at_ms, &a.who, &a.role, &a.action, &a.target, &a.outcome],
        )
        .map_err(sql("writing the audit log"))?;
    }
    for o in &c.orphans_kept {
        db.execute_later(
            "INSERT INTO orphans (vm, host, found_ms, reason) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (vm) DO UPDATE SET host = excluded.host,
             found_ms = excluded.found_ms, reason = excluded.reason",
            args![o.vm, &o.host, o.found_ms, &o.reason],
        )
        .map_err(sql("writing orphans"))?;
    }
    for vm in &c.orphans_gone {
        db.execute_later("DELETE FROM orphans WHERE vm = ?1", args![*vm])
            .map_err(sql("writing orphans"))?;
    }
    for (vm, template) in &c.warm_templates {
        db.execute_later(
            "UPDATE vms SET template = ?2 WHERE id = ?1",
            args![*vm, template],
        )
        .map_err(sql("writing warm vms"))?;
    }
    for (vm, object) in &c.host_objects {
        db.execute_later(
            "UPDATE vms SET host_object = ?2 WHERE id = ?1",
            args![*vm, object.clone()],
        )
        .map_err(sql("writing host objects"))?;
    }
    for job in &c.hook_jobs {
        insert_hook_job(db, job)?;
    }
    Ok(())
}

/// Puts one hook run owed into the outbox (deferred, like a commit's other writes).
pub(crate) fn insert_hook_job(db: &mut Db, job: &HookJob) -> Result<(), DaemonError> {
    db.execute_later(
        "INSERT INTO hook_outbox (hook, event_id, event, payload, vm, host, request)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        args![
            &job.hook,
            &job.event_id,
            &job.event,
            &job.payload,
            job.vm,
            job.host.clone(),
            job.request
        ],
    )
    .map_err(sql("writing the hook outbox"))
}

/// Brings the schema up to date with the engine's migrations, each in a transaction of its
/// own; refuses a schema newer than this berth knows.
fn migrate(db: &mut Db) -> Result<(), DaemonError> {
    let failed = sql("migrating");
    let (steps, version) = match db.engine() {
        Engine::Sqlite => {
            let v = db
                .row("PRAGMA user_version", &[], |r| r.i64(0))
                .map_err(sql("reading the schema version"))?;
            (MIGRATIONS, v.unwrap_or(0))
        }
        Engine::Postgres => {
            db.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
                .map_err(sql("reading the schema version"))?;
            (POSTGRES_MIGRATIONS, postgres_version(db)?)
        }
    };
    if version as usize > steps.len() {
        return Err(DaemonError::SchemaTooNew {
            found: version as u64,
            known: steps.len() as u64,
        });
    }
    for (i, step) in steps.iter().enumerate().skip(version.max(0) as usize) {
        let to = (i + 1) as i64;
        let done = db.transaction("migrating", |db| match db.engine() {
            Engine::Sqlite => {
                db.batch(step).map_err(&failed)?;
                db.batch(&format!("PRAGMA user_version = {to}"))
                    .map_err(&failed)?;
                Ok(true)
            }
            Engine::Postgres => {
                // Daemons starting together on one database migrate one at a time; the
                // others find the step done.
                db.batch("LOCK TABLE schema_version IN EXCLUSIVE MODE")
                    .map_err(&failed)?;
                if postgres_version(db)? >= to {
                    return Ok(false);
                }
                db.batch(step).map_err(&failed)?;
                db.execute("DELETE FROM schema_version", &[])
                    .map_err(&failed)?;
                db.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    args![to],
                )
                .map_err(&failed)?;
                Ok(true)
            }
        })?;
        if done {
            tracing::info!(version = to, "database schema migrated");
        }
    }
    Ok(())
}

fn postgres_version(db: &mut Db) -> Result<i64, DaemonError> {
    db.row("SELECT max(version) FROM schema_version", &[], |r| {
        r.opt_i64(0)
    })
    .map(|v| v.flatten().unwrap_or(0))
    .map_err(sql("reading the schema version"))
}

// ---- reads, on the API's own connections ----

/// Filters for listing VMs.
#[derive(Clone, Debug, Default)]
pub struct VmFilter {
    pub state: Option<String>,
    pub request: Option<u64>,
    pub host: Option<String>,
    /// Only VMs that have not ended.
    pub live: bool,
    /// Only VMs numbered above this one (a page's cursor).
    pub after: Option<u64>,
    /// Only VMs numbered up to this one (the first part of a page read in two, see
    /// [`nth_vm_id`]).
    pub through: Option<u64>,
    pub limit: Option<u64>,
}

const VM_COLUMNS: &str = "v.id, v.request, h.name, v.state, v.cause, v.created_ms, v.updated_ms,
     v.template, v.host_object FROM vms v LEFT JOIN hosts h ON h.id = v.host";

/// Column `i` as one of the API's named enums (a state): a name the API does not know is an
/// error naming it, not a row shown with a state no client can read.
fn named<T: std::str::FromStr<Err = berth_api::UnknownName>>(
    r: &Row<'_>,
    i: usize,
) -> Result<T, DbError> {
    parse_named(i, r.str(i)?.unwrap_or_default())
}

fn parse_named<T: std::str::FromStr<Err = berth_api::UnknownName>>(
    i: usize,
    text: &str,
) -> Result<T, DbError> {
    text.parse()
        .map_err(|e: berth_api::UnknownName| DbError::Column {
            index: i,
            message: e.to_string(),
        })
}

fn vm_row(r: Row<'_>) -> Result<VmRow, DbError> {
    let id = r.u64(0)?;
    Ok(VmRow {
        id,
        name: berth_drivers::vm_name(id),
        request: r.u64(1)?,
        host: r.opt_text(2)?,
        state: named(&r, 3)?,
        cause: r.text(4)?,
        created_ms: r.u64(5)?,
        updated_ms: r.u64(6)?,
        template: r.opt_text(7)?,
        host_object: r.opt_text(8)?,
        hold: None,
        detail: None,
    })
}

/// The query and arguments for a filtered VM listing, with `columns` selected.
fn vm_query(columns: &str, f: &VmFilter) -> (String, Vec<Value>) {
    let mut q = format!("SELECT {columns} WHERE 1=1");
    let mut args: Vec<Value> = Vec::new();
    if let Some(s) = &f.state {
        q.push_str(" AND v.state = ?");
        args.push(s.into());
    }
    if f.live {
        q.push_str(" AND v.state NOT IN ('done', 'failed', 'lost', 'cancelled')");
    }
    if let Some(r) = f.request {
        q.push_str(" AND v.request = ?");
        args.push(r.into());
    }
    if let Some(h) = &f.host {
        q.push_str(" AND v.host IN (SELECT id FROM hosts WHERE name = ?)");
        args.push(h.into());
    }
    if let Some(a) = f.after {
        q.push_str(" AND v.id > ?");
        args.push(Value::capped(a));
    }
    if let Some(t) = f.through {
        q.push_str(" AND v.id <= ?");
        args.push(Value::capped(t));
    }
    q.push_str(" ORDER BY v.id");
    if let Some(l) = f.limit {
        q.push_str(" LIMIT ?");
        args.push(Value::capped(l));
    }
    (q, args)
}

pub fn list_vms(db: &mut Db, f: &VmFilter) -> Result<Vec<VmRow>, DaemonError> {
    let (q, args) = vm_query(VM_COLUMNS, f);
    db.rows(&q, &args, vm_row).map_err(sql("listing vms"))
}

/// A `VmRow` borrowed from the database row it is read from, for long lists: it serialises
/// exactly as `VmRow` does (a test holds them together) without a string allocated per field.
#[derive(serde::Serialize)]
struct VmRowRef<'a> {
    id: u64,
    name: VmName,
    request: u64,
    template: Option<&'a str>,
    host: Option<&'a str>,
    state: berth_api::VmState,
    cause: &'a str,
    created_ms: u64,
    updated_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_object: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hold: Option<&'a Hold>,
}

/// A VM's name on its host, written where it is serialised.
struct VmName(u64);

impl serde::Serialize for VmName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}{}", berth_drivers::VM_NAME_PREFIX, self.0))
    }
}

/// The id of the `n`th VM (from 1) the filter selects, in order, if it selects that many: where
/// a long page is cut to be read in two parts at once.
pub fn nth_vm_id(db: &mut Db, f: &VmFilter, n: u64) -> Result<Option<u64>, DaemonError> {
    let f = VmFilter {
        limit: None,
        ..f.clone()
    };
    let (mut q, mut args) = vm_query("v.id FROM vms v", &f);
    q.push_str(" LIMIT 1 OFFSET ?");
    args.push(Value::capped(n.saturating_sub(1)));
    db.row(&q, &args, |r| r.u64(0))
        .map_err(sql("cutting a list of vms"))
}

/// Writes the filtered VMs as `VmRow` JSON objects, comma-separated (the caller writes the
/// array's brackets), straight from the rows into `out`, and returns how many, and the cursor
/// of the next page when `shown_max` cut it: host names come from one small lookup, templates
/// from the VMs' own rows, and no list of rows is kept. `holds` gives the breakpoints of held
/// VMs (by VM id), which the scheduler knows.
pub fn write_vms_json(
    db: &mut Db,
    f: &VmFilter,
    holds: &BTreeMap<u64, Hold>,
    out: &mut Vec<u8>,
    shown_max: usize,
) -> Result<(usize, Option<u64>), DaemonError> {
    let failed = sql("listing vms");
    let hosts: BTreeMap<u64, String> = db
        .rows("SELECT id, name FROM hosts", &[], |r| {
            Ok((r.u64(0)?, r.text(1)?))
        })
        .map_err(&failed)?
        .into_iter()
        .collect();
    let (q, args) = vm_query(
        "v.id, v.request, v.host, v.state, v.cause, v.created_ms, v.updated_ms, v.template,
         v.host_object FROM vms v",
        f,
    );
    let mut n = 0;
    let mut last = None;
    let mut cut = false;
    db.each(&q, &args, |r| {
        if cut {
            return Ok::<(), DaemonError>(());
        }
        if n == shown_max {
            // One row past the page: there is more, and the page's last row is the cursor.
            cut = true;
            return Ok(());
        }
        let id = r.u64(0).map_err(&failed)?;
        let host = r.opt_i64(2).map_err(&failed)?;
        let state = r.str(3).map_err(&failed)?.unwrap_or_default();
        let row = VmRowRef {
            id,
            name: VmName(id),
            request: r.u64(1).map_err(&failed)?,
            template: r.str(7).map_err(&failed)?,
            host: host
                .and_then(|h| hosts.get(&(h as u64)))
                .map(String::as_str),
            state: parse_named(3, state).map_err(&failed)?,
            cause: r.str(4).map_err(&failed)?.unwrap_or_default(),
            created_ms: r.u64(5).map_err(&failed)?,
            updated_ms: r.u64(6).map_err(&failed)?,
            host_object: r.str(8).map_err(&failed)?,
            hold: holds.get(&id),
        };
        if n > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, &row).map_err(|e| DaemonError::Io {
            what: "writing a vm list".into(),
            source: e.into(),
        })?;
        n += 1;
        last = Some(id);
        Ok(())
    })?;
    Ok((n, if cut { last } else { None }))
}

/// The name of VM `id`'s object on its host when that is not its own (it took a warm VM).
pub fn host_object(db: &mut Db, id: u64) -> Result<Option<String>, DaemonError> {
    db.row(
        "SELECT host_object FROM vms WHERE id = ?1",
        args![id],
        |r| r.opt_text(0),
    )
    .map(Option::flatten)
    .map_err(sql("reading a vm's host object"))
}

/// The ids of the VMs held at a breakpoint now (few: each one waits for a person).
pub fn held_vm_ids(db: &mut Db) -> Result<Vec<u64>, DaemonError> {
    db.rows(
        "SELECT id FROM vms WHERE state = 'held' ORDER BY id",
        &[],
        |r| r.u64(0),
    )
    .map_err(sql("listing held vms"))
}

pub fn get_vm(db: &mut Db, id: u64) -> Result<Option<VmRow>, DaemonError> {
    db.row(
        &format!("SELECT {VM_COLUMNS} WHERE v.id = ?1"),
        args![id],
        vm_row,
    )
    .map_err(sql("reading a vm"))
}

pub fn vm_history(db: &mut Db, id: u64) -> Result<Vec<HistoryRow>, DaemonError> {
    db.rows(
        "SELECT x.at_ms, x.from_state, x.to_state, h.name, x.cause FROM vm_history x
         LEFT JOIN hosts h ON h.id = x.host WHERE x.vm = ?1 ORDER BY x.id",
        args![id],
        |r| {
            Ok(HistoryRow {
                at_ms: r.u64(0)?,
                from: r.str(1)?.map(|f| parse_named(1, f)).transpose()?,
                to: named(&r, 2)?,
                host: r.opt_text(3)?,
                cause: r.text(4)?,
            })
        },
    )
    .map_err(sql("reading vm history"))
}

fn request_row(r: Row<'_>) -> Result<RequestRow, DbError> {
    let spec = r.str(7)?.unwrap_or_default();
    let count = r.u64(2)?;
    Ok(RequestRow {
        id: r.u64(0)?,
        template: r.text(1)?,
        count: u32::try_from(count).map_err(|e| DbError::Column {
            index: 2,
            message: e.to_string(),
        })?,
        state: named(&r, 3)?,
        cause: r.text(4)?,
        submitted_ms: r.u64(5)?,
        updated_ms: r.u64(6)?,
        spec: serde_json::from_str::<WireRequest>(spec)
            .map_err(|e| DbError::Column {
                index: 7,
                message: e.to_string(),
            })?
            .to_api(),
        ending: r.str(8)?.map(|text| parse_named(8, text)).transpose()?,
        position: None,
        queue_len: None,
        eta_ms: None,
        eta_after_ms: None,
    })
}

const REQUEST_COLUMNS: &str =
    "id, template, count, state, cause, submitted_ms, updated_ms, spec, ending FROM requests";

pub fn get_request(db: &mut Db, id: u64) -> Result<Option<RequestRow>, DaemonError> {
    db.row(
        &format!("SELECT {REQUEST_COLUMNS} WHERE id = ?1"),
        args![id],
        request_row,
    )
    .map_err(sql("reading a request"))
}

/// Where a batch's events leave one row of `vms`: the last event's state, host, cause and
/// time; `created_ms` when the batch made the VM.
struct VmRowEnd {
    request: u64,
    created_ms: Option<u64>,
    host: Option<berth_sched::HostId>,
    state: VmState,
    cause: String,
    updated_ms: u64,
}

/// The rows of `vms` a batch's events write, by VM number (see `write_commit`).
fn vm_rows(events: &[Event]) -> BTreeMap<u64, VmRowEnd> {
    let mut rows: BTreeMap<u64, VmRowEnd> = BTreeMap::new();
    for event in events {
        let Event::Vm {
            at_ms,
            vm,
            request,
            host,
            from,
            to,
            cause,
        } = event
        else {
            continue;
        };
        let row = rows.entry(vm.0).or_insert_with(|| VmRowEnd {
            request: request.0,
            created_ms: from.is_none().then_some(*at_ms),
            host: None,
            state: *to,
            cause: String::new(),
            updated_ms: *at_ms,
        });
        row.host = *host;
        row.state = *to;
        row.cause = cause.to_string();
        row.updated_ms = *at_ms;
    }
    rows
}

/// Where a batch's events leave one row of `requests`, as [`VmRowEnd`] does for `vms`.
struct RequestRowEnd {
    created_ms: Option<u64>,
    state: berth_sched::RequestState,
    cause: String,
    updated_ms: u64,
    /// Whether every event of the batch left it live (waiting or active): a cancel's
    /// `ending` stays only then.
    live_throughout: bool,
}

/// The rows of `requests` a batch's events write, by request number (see `write_commit`).
fn request_rows(events: &[Event]) -> BTreeMap<u64, RequestRowEnd> {
    let mut rows: BTreeMap<u64, RequestRowEnd> = BTreeMap::new();
    for event in events {
        let Event::Request {
            at_ms,
            request,
            from,
            to,
            cause,
        } = event
        else {
            continue;
        };
        let row = rows.entry(request.0).or_insert_with(|| RequestRowEnd {
            created_ms: from.is_none().then_some(*at_ms),
            state: *to,
            cause: String::new(),
            updated_ms: *at_ms,
            live_throughout: true,
        });
        row.live_throughout &= matches!(
            to,
            berth_sched::RequestState::Waiting | berth_sched::RequestState::Active
        );
        row.state = *to;
        row.cause = cause.to_string();
        row.updated_ms = *at_ms;
    }
    rows
}

/// The rows a commit leaves for the requests it submits, by request number: what
/// [`get_request`] reads right after it, so that a submit is answered without reading its row
/// back (a round trip to the server per request, in a burst of thousands). It is what
/// `write_commit` inserts; a cancel in the same batch is written before the row exists, so the
/// row has no `ending`.
pub fn submitted_rows(c: &Commit) -> HashMap<u64, RequestRow> {
    let specs: HashMap<u64, &WireRequest> = c
        .inputs
        .iter()
        .filter_map(|input| match input {
            WireInput::Submit { request } => Some((request.id, request)),
            _ => None,
        })
        .collect();
    request_rows(&c.events)
        .into_iter()
        .filter_map(|(id, row)| {
            let submitted_ms = row.created_ms?;
            let spec = specs.get(&id)?;
            Some((
                id,
                RequestRow {
                    id,
                    template: spec.template.clone(),
                    count: spec.count,
                    state: crate::answers::request_state(row.state),
                    cause: row.cause,
                    submitted_ms,
                    updated_ms: row.updated_ms,
                    spec: spec.to_api(),
                    ending: None,
                    position: None,
                    queue_len: None,
                    eta_ms: None,
                    eta_after_ms: None,
                },
            ))
        })
        .collect()
}

pub fn list_requests(
    db: &mut Db,
    state: Option<&str>,
    before: Option<u64>,
    limit: u64,
) -> Result<Vec<RequestRow>, DaemonError> {
    db.rows(
        &format!(
            "SELECT {REQUEST_COLUMNS} WHERE (CAST(?1 AS TEXT) IS NULL OR state = ?1) AND id < ?3
             ORDER BY id DESC LIMIT ?2"
        ),
        &[
            state.into(),
            Value::capped(limit),
            Value::capped(before.unwrap_or(u64::MAX)),
        ],
        request_row,
    )
    .map_err(sql("listing requests"))
}

/// The requests' totals per change, with the account of each change's first request.
const CHANGE_COLUMNS: &str = "
    SELECT g.change, r.account, g.n, g.first_id, g.wanted, g.first_ms, g.last_ms, g.live
    FROM (SELECT change, count(*) AS n, min(id) AS first_id, CAST(sum(count) AS BIGINT) AS wanted,
              min(submitted_ms) AS first_ms, max(updated_ms) AS last_ms,
              CAST(sum(CASE WHEN state IN ('waiting', 'active') THEN 1 ELSE 0 END) AS BIGINT)
                  AS live
          FROM requests WHERE change IS NOT NULL";

/// A change's totals as `CHANGE_COLUMNS` reads them, before its VMs are counted.
fn change_totals(r: Row<'_>, now_ms: u64) -> Result<ChangeRow, DbError> {
    let get =
        |i: usize| -> Result<u64, DbError> { Ok(r.opt_i64(i)?.unwrap_or_default().max(0) as u64) };
    let first_ms = get(5)?;
    let live = get(7)? > 0;
    let ended_ms = (!live).then_some(get(6)?);
    Ok(ChangeRow {
        account: r.opt_text(1)?.unwrap_or_default(),
        n_requests: get(2)?,
        first_request: get(3)?,
        vms_wanted: get(4)?,
        vms_waiting: 0,
        vms_starting: 0,
        vms_running: 0,
        vms_done: 0,
        vms_failed: 0,
        vms_cancelled: 0,
        first_arrival_ms: first_ms,
        ended_ms,
        turnaround_ms: ended_ms.unwrap_or(now_ms).saturating_sub(first_ms),
        change: r.text(0)?,
        eta_ms: None,
        eta_after_ms: None,
    })
}

/// Counts a change's VMs by state into its row.
fn count_change_vms(db: &mut Db, row: &mut ChangeRow) -> Result<(), DaemonError> {
    let counts = db
        .rows(
            "SELECT v.state, count(*) FROM vms v WHERE v.request IN
             (SELECT id FROM requests WHERE change = ?1) GROUP BY v.state",
            args![&row.change],
            |v| Ok((named::<berth_api::VmState>(&v, 0)?, v.u64(1)?)),
        )
        .map_err(sql("counting a change's vms"))?;
    for (state, n) in counts {
        use berth_api::VmState as S;
        let slot = match state {
            S::Queued => &mut row.vms_waiting,
            S::Placed | S::Provisioning | S::Booting => &mut row.vms_starting,
            S::Running | S::Held => &mut row.vms_running,
            S::Releasing | S::Done => &mut row.vms_done,
            S::Failed | S::Lost => &mut row.vms_failed,
            S::Cancelled => &mut row.vms_cancelled,
        };
        *slot += n;
    }
    Ok(())
}

/// Changes whose first request is older than `before` (all when `None`), newest first, at
/// most `limit`. Each costs one grouped read of its requests' VMs.
pub fn list_changes(
    db: &mut Db,
    before: Option<u64>,
    limit: u64,
    now_ms: u64,
) -> Result<Vec<ChangeRow>, DaemonError> {
    let mut rows = db
        .rows(
            &format!(
                "{CHANGE_COLUMNS} GROUP BY change HAVING min(id) < ?1) g
                 JOIN requests r ON r.id = g.first_id ORDER BY g.first_id DESC LIMIT ?2"
            ),
            &[
                Value::capped(before.unwrap_or(u64::MAX)),
                Value::capped(limit),
            ],
            |r| change_totals(r, now_ms),
        )
        .map_err(sql("listing changes"))?;
    for row in &mut rows {
        count_change_vms(db, row)?;
    }
    Ok(rows)
}

/// One change, `None` when no request named it.
pub fn get_change(
    db: &mut Db,
    change: &str,
    now_ms: u64,
) -> Result<Option<ChangeRow>, DaemonError> {
    let row = db
        .row(
            &format!(
                "{CHANGE_COLUMNS} AND change = ?1 GROUP BY change) g
                 JOIN requests r ON r.id = g.first_id"
            ),
            args![change],
            |r| change_totals(r, now_ms),
        )
        .map_err(sql("reading a change"))?;
    match row {
        Some(mut row) => {
            count_change_vms(db, &mut row)?;
            Ok(Some(row))
        }
        None => Ok(None),
    }
}

/// The requests of a change, oldest first, at most `limit`.
pub fn change_requests(
    db: &mut Db,
    change: &str,
    limit: u64,
) -> Result<Vec<RequestRow>, DaemonError> {
    db.rows(
        &format!("SELECT {REQUEST_COLUMNS} WHERE change = ?1 ORDER BY id LIMIT ?2"),
        &[change.into(), Value::capped(limit)],
        request_row,
    )
    .map_err(sql("reading a change's requests"))
}

/// The waiting requests that name a change, oldest first (no more than the queue holds).
pub fn waiting_change_requests(db: &mut Db) -> Result<Vec<RequestRow>, DaemonError> {
    db.rows(
        &format!(
            "SELECT {REQUEST_COLUMNS} WHERE state = 'waiting' AND change IS NOT NULL ORDER BY id"
        ),
        &[],
        request_row,
    )
    .map_err(sql("reading the waiting requests of changes"))
}

/// The orphans berth keeps on its hosts, by VM number.
pub fn list_orphans(db: &mut Db) -> Result<Vec<OrphanRow>, DaemonError> {
    db.rows(
        "SELECT vm, host, found_ms, reason FROM orphans ORDER BY vm",
        &[],
        |r| {
            let vm = r.u64(0)?;
            Ok(OrphanRow {
                vm,
                name: berth_drivers::vm_name(vm),
                host: r.text(1)?,
                found_ms: r.u64(2)?,
                reason: r.text(3)?,
            })
        },
    )
    .map_err(sql("reading orphans"))
}

/// Audit rows older than `before` (all when `None`), newest first, at most `limit`, with the
/// next page's cursor when there are more.
pub fn list_audit(
    db: &mut Db,
    before: Option<u64>,
    limit: u64,
) -> Result<(Vec<AuditRow>, Option<u64>), DaemonError> {
    // One more than the page, to know whether there is a next one.
    let rows = db
        .rows(
            "SELECT at_ms, who, role, action, target, outcome, id FROM audit WHERE id < ?2
             ORDER BY id DESC LIMIT ?1",
            &[
                Value::capped(limit.saturating_add(1)),
                Value::capped(before.unwrap_or(u64::MAX)),
            ],
            |r| {
                Ok((
                    AuditRow {
                        at_ms: r.u64(0)?,
                        who: r.text(1)?,
                        role: r.text(2)?,
                        action: r.text(3)?,
                        target: r.text(4)?,
                        outcome: r.text(5)?,
                    },
                    r.u64(6)?,
                ))
            },
        )
        .map_err(sql("reading the audit log"))?;
    let mut out = Vec::new();
    let mut last = None;
    for (a, id) in rows {
        if out.len() as u64 == limit {
            return Ok((out, last));
        }
        last = Some(id);
        out.push(a);
    }
    Ok((out, None))
}

/// VM counts by state.
pub fn vm_counts(db: &mut Db) -> Result<BTreeMap<String, u64>, DaemonError> {
    db.rows("SELECT state, count(*) FROM vms GROUP BY state", &[], |r| {
        Ok((r.text(0)?, r.u64(1)?))
    })
    .map(|rows| rows.into_iter().collect())
    .map_err(sql("counting vms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The borrowed list row and `VmRow` write the same JSON, every optional field both ways.
    #[test]
    fn list_rows_serialise_as_vm_rows() {
        let hold = Hold {
            owner: "ana".into(),
            expires_ms: 9,
        };
        for (template, host, held, object) in [
            (Some("linux"), Some("sim-small-1"), true, Some("berth-vm7")),
            (None, None, false, None),
        ] {
            let owned = VmRow {
                id: 12,
                name: berth_drivers::vm_name(12),
                request: 3,
                template: template.map(str::to_owned),
                host: host.map(str::to_owned),
                state: berth_api::VmState::Held,
                cause: "job \"failed\"".into(),
                created_ms: 1,
                updated_ms: 2,
                host_object: object.map(str::to_owned),
                hold: held.then(|| hold.clone()),
                detail: None,
            };
            let borrowed = VmRowRef {
                id: 12,
                name: VmName(12),
                request: 3,
                template,
                host,
                state: berth_api::VmState::Held,
                cause: "job \"failed\"",
                created_ms: 1,
                updated_ms: 2,
                host_object: object,
                hold: held.then_some(&hold),
            };
            assert_eq!(
                serde_json::to_string(&borrowed).unwrap(),
                serde_json::to_string(&owned).unwrap()
            );
        }
    }
    use crate::wire::WireInput;
    use berth_sched::{Cause, RequestId, RequestState};

    /// A store on each engine this machine has: SQLite always, PostgreSQL when the tests
    /// have a server (`BERTH_TEST_POSTGRES`; without it the PostgreSQL half says why it skips).
    fn stores() -> Vec<(
        tempfile::TempDir,
        Option<berth_testkit::postgres::Database>,
        StoreAt,
    )> {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = StoreAt::Sqlite(dir.path().join("berth.db"));
        let mut out = vec![(dir, None, sqlite)];
        if let Some(pg) = berth_testkit::postgres::fresh_database() {
            let at = StoreAt::Postgres(pg.url().to_owned());
            out.push((tempfile::tempdir().unwrap(), Some(pg), at));
        }
        out
    }

    /// The tail of the journal after a snapshot is found through the batch index, not by
    /// passing over the whole journal: a start after a snapshot costs what came after it.
    #[test]
    fn the_journal_tail_is_read_through_the_batch_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&StoreAt::Sqlite(dir.path().join("berth.db"))).unwrap();
        let plan = store
            .db()
            .rows(
                &format!("EXPLAIN QUERY PLAN {JOURNAL_AFTER}"),
                args![5],
                |r| r.text(3),
            )
            .unwrap();
        assert!(
            plan.iter().any(|p| p.contains("USING INDEX journal_batch")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
    }

    #[test]
    fn the_tail_and_the_newest_snapshot_are_what_a_start_reads() {
        for (_dir, _pg, at) in stores() {
            let mut store = Store::open(&at).unwrap();
            for batch in 1..=4u64 {
                store
                    .commit(&Commit {
                        batch,
                        at_ms: batch * 10,
                        inputs: vec![WireInput::Tick, WireInput::Cancel { request: batch }],
                        ..Commit::default()
                    })
                    .unwrap();
            }
            let tail = store.journal_after(2).unwrap();
            assert_eq!(
                tail.iter()
                    .map(|b| (b.0, b.1, b.2.len()))
                    .collect::<Vec<_>>(),
                vec![(3, 30, 2), (4, 40, 2)]
            );
            assert_eq!(store.journal_after(0).unwrap(), store.journal().unwrap());
            assert_eq!(store.latest_snapshot().unwrap(), None);
            let row = |batch: u64| SnapshotRow {
                batch,
                at_ms: batch * 10,
                submits: 0,
                state: vec![batch as u8; 3],
                side: "{}".into(),
            };
            store.write_snapshot(&row(2)).unwrap();
            store.write_snapshot(&row(3)).unwrap();
            assert_eq!(store.latest_snapshot().unwrap(), Some(row(3)));
            let n = store
                .db()
                .row("SELECT count(*) FROM snapshots", &[], |r| r.u64(0))
                .unwrap();
            assert_eq!(n, Some(1), "older snapshots are deleted ({at:?})");
            // The journal a snapshot covers stays (export reads all of it).
            assert_eq!(store.journal().unwrap().len(), 4);
        }
    }

    /// A submit is answered with the row its batch wrote, not read back: the two must agree,
    /// for a request that waits, one placed in the same batch, one cancelled in it, one with
    /// a change and an account, and not for a request the batch did not submit.
    #[test]
    fn a_submit_answers_the_row_a_read_gives() {
        let spec = |id: u64, count: u32, change: Option<&str>| WireRequest {
            id,
            template: "linux".into(),
            count,
            vcpus: Some(4),
            memory_mib: None,
            labels: BTreeMap::from([("arch".to_owned(), "x86_64".to_owned())]),
            priority: -3,
            gang: id == 2,
            hold: None,
            pending_deadline_ms: Some(60_000),
            expected_run_ms: None,
            requester: "ci".into(),
            change: change.map(str::to_owned),
            account: change.map(|_| "qt-base".to_owned()),
        };
        let request = |at_ms: u64, id: u64, from, to, cause| Event::Request {
            at_ms,
            request: RequestId(id),
            from,
            to,
            cause,
        };
        use berth_sched::{Cause, RequestId, RequestState as S};
        for (_dir, _pg, at) in stores() {
            let mut store = Store::open(&at).unwrap();
            let first = Commit {
                batch: 1,
                at_ms: 1000,
                inputs: vec![WireInput::Submit {
                    request: spec(9, 1, None),
                }],
                events: vec![request(1000, 9, None, S::Waiting, Cause::Submitted)],
                ..Commit::default()
            };
            store.commit(&first).unwrap();
            let second = Commit {
                batch: 2,
                at_ms: 2000,
                inputs: vec![
                    WireInput::Submit {
                        request: spec(10, 3, Some("I42")),
                    },
                    WireInput::Submit {
                        request: spec(11, 2, None),
                    },
                    WireInput::Cancel { request: 11 },
                    WireInput::Submit {
                        request: spec(12, 1, None),
                    },
                ],
                events: vec![
                    request(2000, 10, None, S::Waiting, Cause::Submitted),
                    request(2000, 11, None, S::Waiting, Cause::Submitted),
                    request(2000, 9, Some(S::Waiting), S::Active, Cause::Placed),
                    request(2001, 11, Some(S::Waiting), S::Active, Cause::AllPlaced),
                    request(2002, 10, Some(S::Waiting), S::Cancelled, Cause::Released),
                ],
                ..Commit::default()
            };
            store.commit(&second).unwrap();
            let rows = submitted_rows(&second);
            let mut ids: Vec<u64> = rows.keys().copied().collect();
            ids.sort_unstable();
            assert_eq!(ids, [10, 11], "{at:?}");
            for (id, row) in rows {
                let read = get_request(store.db(), id).unwrap();
                assert_eq!(Some(row), read, "request {id} ({at:?})");
            }
        }
    }

    /// The rows of `vms` and `requests` as the simple writer leaves them: an insert at each
    /// row's first event, an update at every later one, a cancel's `ending` first (the
    /// reference for `write_commit`, which writes each row once).
    fn write_rows_event_by_event(db: &mut Db, c: &Commit) {
        let mut specs = HashMap::new();
        for input in &c.inputs {
            match input {
                WireInput::Submit { request } => {
                    specs.insert(request.id, request);
                }
                WireInput::Cancel { request } => {
                    db.execute(
                        "UPDATE requests SET ending = 'cancelled'
                         WHERE id = ?1 AND state IN ('waiting', 'active')",
                        args![*request],
                    )
                    .unwrap();
                }
                _ => {}
            }
        }
        for event in &c.events {
            match event {
                Event::Vm {
                    at_ms,
                    vm,
                    request,
                    host,
                    from,
                    to,
                    cause,
                } => {
                    let host = host.map(|h| h.0);
                    if from.is_none() {
                        db.execute(
                            "INSERT INTO vms (id, request, host, state, cause, created_ms,
                             updated_ms, template) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
                            args![
                                vm.0,
                                request.0,
                                host,
                                to.name(),
                                cause.to_string(),
                                *at_ms,
                                c.request_templates.get(&request.0)
                            ],
                        )
                        .unwrap();
                    } else {
                        db.execute(
                            "UPDATE vms SET host = ?2, state = ?3, cause = ?4, updated_ms = ?5
                             WHERE id = ?1",
                            args![vm.0, host, to.name(), cause.to_string(), *at_ms],
                        )
                        .unwrap();
                    }
                }
                Event::Request {
                    at_ms,
                    request,
                    from,
                    to,
                    cause,
                } => {
                    if from.is_none() {
                        let Some(spec) = specs.get(&request.0) else {
                            continue;
                        };
                        db.execute(
                            "INSERT INTO requests (id, template, count, spec, state, cause,
                             submitted_ms, updated_ms, change, account)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9)",
                            args![
                                request.0,
                                &spec.template,
                                spec.count,
                                serde_json::to_string(spec).unwrap(),
                                to.name(),
                                cause.to_string(),
                                *at_ms,
                                spec.change.clone(),
                                spec.account_name()
                            ],
                        )
                        .unwrap();
                    } else {
                        db.execute(
                            "UPDATE requests SET state = ?2, cause = ?3, updated_ms = ?4,
                             ending = CASE WHEN ?2 IN ('waiting', 'active') THEN ending END
                             WHERE id = ?1",
                            args![request.0, to.name(), cause.to_string(), *at_ms],
                        )
                        .unwrap();
                    }
                }
                Event::Host { .. } => {}
            }
        }
    }

    /// Every column of `vms` and `requests` that a commit writes, in id order.
    fn dump_rows(db: &mut Db) -> Vec<String> {
        let mut out = db
            .rows(
                "SELECT id, request, host, state, cause, created_ms, updated_ms, template
                 FROM vms ORDER BY id",
                &[],
                |r| {
                    Ok(format!(
                        "vm {} {} {:?} {} {} {} {} {:?}",
                        r.u64(0)?,
                        r.u64(1)?,
                        r.opt_i64(2)?,
                        r.text(3)?,
                        r.text(4)?,
                        r.u64(5)?,
                        r.u64(6)?,
                        r.opt_text(7)?
                    ))
                },
            )
            .unwrap();
        out.extend(
            db.rows(
                "SELECT id, template, count, spec, state, cause, submitted_ms, updated_ms,
                 change, account, ending FROM requests ORDER BY id",
                &[],
                |r| {
                    Ok(format!(
                        "request {} {} {} {} {} {} {} {} {:?} {:?} {:?}",
                        r.u64(0)?,
                        r.text(1)?,
                        r.u64(2)?,
                        r.text(3)?,
                        r.text(4)?,
                        r.text(5)?,
                        r.u64(6)?,
                        r.u64(7)?,
                        r.opt_text(8)?,
                        r.opt_text(9)?,
                        r.opt_text(10)?
                    ))
                },
            )
            .unwrap(),
        );
        out
    }

    /// A commit writes each VM's and request's row once, where its last event in the batch
    /// leaves it; the rows must be what the simple writer (an insert, then an update per later
    /// event) leaves, over random batches of new rows, later events, cancels and rows made
    /// and moved in one batch.
    #[test]
    fn rows_written_once_a_batch_equal_rows_written_event_by_event() {
        use berth_sched::{Cause, HostId, RequestId, RequestState, VmId};
        for (_dir, _pg, at) in stores() {
            let mut store = Store::open(&at).unwrap();
            let reference_dir = tempfile::tempdir().unwrap();
            let reference_pg;
            let reference_at = match &at {
                StoreAt::Sqlite(_) => StoreAt::Sqlite(reference_dir.path().join("ref.db")),
                StoreAt::Postgres(_) => {
                    reference_pg = berth_testkit::postgres::fresh_database().unwrap();
                    StoreAt::Postgres(reference_pg.url().to_owned())
                }
            };
            let mut reference = Store::open(&reference_at).unwrap();
            // A fixed sequence of draws (xorshift), so a failure comes back the same.
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
            let mut draw = |n: u64| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed % n
            };
            let (mut requests, mut vms) = (0u64, 0u64);
            for batch in 1..=40u64 {
                let at_ms = batch * 1000;
                let mut c = Commit {
                    batch,
                    at_ms,
                    ..Commit::default()
                };
                for i in 0..draw(30) {
                    let at_ms = at_ms + i;
                    match draw(5) {
                        0 | 1 => {
                            requests += 1;
                            let change = (draw(2) == 0).then(|| format!("I{}", draw(4)));
                            let spec = WireRequest {
                                id: requests,
                                template: "linux".into(),
                                count: 1 + draw(3) as u32,
                                vcpus: None,
                                memory_mib: None,
                                labels: BTreeMap::new(),
                                priority: 0,
                                gang: false,
                                hold: None,
                                pending_deadline_ms: None,
                                expected_run_ms: None,
                                requester: "ci".into(),
                                account: change.as_ref().map(|_| "qt-base".to_owned()),
                                change,
                            };
                            c.inputs.push(WireInput::Submit { request: spec });
                            c.request_templates.insert(requests, "linux".into());
                            c.events.push(Event::Request {
                                at_ms,
                                request: RequestId(requests),
                                from: None,
                                to: RequestState::Waiting,
                                cause: Cause::Submitted,
                            });
                        }
                        2 if requests > 0 => {
                            vms += 1;
                            c.events.push(Event::Vm {
                                at_ms,
                                vm: VmId(vms),
                                request: RequestId(1 + draw(requests)),
                                host: None,
                                from: None,
                                to: VmState::Queued,
                                cause: Cause::Submitted,
                            });
                        }
                        3 if vms > 0 => {
                            let to = VmState::ALL[draw(VmState::ALL.len() as u64) as usize];
                            c.events.push(Event::Vm {
                                at_ms,
                                vm: VmId(1 + draw(vms)),
                                request: RequestId(0),
                                host: (draw(3) > 0).then(|| HostId(draw(4))),
                                from: Some(VmState::Queued),
                                to,
                                cause: Cause::Placed,
                            });
                        }
                        _ if requests > 0 => {
                            let request = 1 + draw(requests);
                            if draw(4) == 0 {
                                c.inputs.push(WireInput::Cancel { request });
                            }
                            let all = RequestState::ALL;
                            c.events.push(Event::Request {
                                at_ms,
                                request: RequestId(request),
                                from: Some(RequestState::Waiting),
                                to: all[draw(all.len() as u64) as usize],
                                cause: Cause::Released,
                            });
                        }
                        _ => {}
                    }
                }
                store.commit(&c).unwrap();
                reference
                    .db()
                    .transaction("writing the reference", |db| {
                        write_rows_event_by_event(db, &c);
                        Ok(())
                    })
                    .unwrap();
                assert_eq!(
                    dump_rows(store.db()),
                    dump_rows(reference.db()),
                    "after batch {batch} ({at:?})"
                );
            }
            assert!(vms > 50 && requests > 50, "{vms} vms, {requests} requests");
        }
    }

    #[test]
    fn batches_survive_reopening_and_migrations_run_once() {
        for (_dir, _pg, at) in stores() {
            {
                let mut store = Store::open(&at).unwrap();
                let request = WireRequest {
                    id: 1,
                    template: "linux".into(),
                    count: 2,
                    vcpus: None,
                    memory_mib: None,
                    labels: BTreeMap::new(),
                    priority: 0,
                    gang: false,
                    hold: None,
                    pending_deadline_ms: None,
                    expected_run_ms: None,
                    requester: "ci".into(),
                    change: Some("I42".into()),
                    account: None,
                };
                store
                    .commit(&Commit {
                        batch: 1,
                        at_ms: 1000,
                        inputs: vec![WireInput::Submit { request }, WireInput::Tick],
                        events: vec![Event::Request {
                            at_ms: 1000,
                            request: RequestId(1),
                            from: None,
                            to: RequestState::Waiting,
                            cause: Cause::Submitted,
                        }],
                        ..Commit::default()
                    })
                    .unwrap();
            }
            let mut store = Store::open(&at).unwrap();
            let version = match at {
                StoreAt::Sqlite(_) => store
                    .db()
                    .row("PRAGMA user_version", &[], |r| r.u64(0))
                    .unwrap(),
                StoreAt::Postgres(_) => store
                    .db()
                    .row("SELECT version FROM schema_version", &[], |r| r.u64(0))
                    .unwrap(),
            };
            let known = match at {
                StoreAt::Sqlite(_) => MIGRATIONS.len(),
                StoreAt::Postgres(_) => POSTGRES_MIGRATIONS.len(),
            };
            assert_eq!(version, Some(known as u64));
            let journal = store.journal().unwrap();
            assert_eq!(journal.len(), 1);
            assert_eq!(journal[0].0, 1);
            assert_eq!(journal[0].2.len(), 2);
            assert_eq!(store.last_ids().unwrap(), (1, 1, 0));
            let row = get_request(store.db(), 1).unwrap().unwrap();
            assert_eq!((row.state.name(), row.count), ("waiting", 2));
            // A request that named no account is charged to its requester.
            assert_eq!(row.spec.account, "ci");
            let columns = store
                .db()
                .row(
                    "SELECT change, account FROM requests WHERE id = 1",
                    &[],
                    |r| Ok((r.opt_text(0)?, r.text(1)?)),
                )
                .unwrap();
            assert_eq!(columns, Some((Some("I42".into()), "ci".into())));
            let changes = list_changes(store.db(), None, 10, 2000).unwrap();
            assert_eq!(changes.len(), 1);
            assert_eq!(
                (
                    changes[0].change.as_str(),
                    changes[0].vms_wanted,
                    changes[0].ended_ms
                ),
                ("I42", 2, None)
            );
        }
    }

    /// A SQLite database at `version`: the migrations up to it run, and none after.
    fn sqlite_at_version(at: &StoreAt, version: usize) -> Db {
        let mut db = Db::connect(at).unwrap();
        for step in &MIGRATIONS[..version] {
            db.batch(step).unwrap();
        }
        db.batch(&format!("PRAGMA user_version = {version}"))
            .unwrap();
        db
    }

    /// A database from before VMs named their template gets each VM's from its request;
    /// a warm VM keeps its pool's, and lists read it from the VM's row alone.
    #[test]
    fn migration_10_gives_every_vm_its_template() {
        let dir = tempfile::tempdir().unwrap();
        let at = StoreAt::Sqlite(dir.path().join("berth.db"));
        {
            let mut db = sqlite_at_version(&at, 9);
            db.execute(
                "INSERT INTO requests (id, template, count, spec, state, cause, submitted_ms,
                 updated_ms) VALUES (1, 'windows', 2, '{}', 'active', 'submitted', 1, 1)",
                &[],
            )
            .unwrap();
            for (vm, request, template) in
                [(1i64, 1i64, None), (2, 1, None), (3, -1, Some("linux"))]
            {
                db.execute(
                    "INSERT INTO vms (id, request, state, cause, created_ms, updated_ms, template)
                     VALUES (?1, ?2, 'queued', 'submitted', 1, 1, ?3)",
                    args![vm, request, template],
                )
                .unwrap();
            }
        }
        let mut store = Store::open(&at).unwrap();
        let templates: Vec<Option<String>> = list_vms(store.db(), &VmFilter::default())
            .unwrap()
            .into_iter()
            .map(|v| v.template)
            .collect();
        assert_eq!(
            templates,
            [
                Some("windows".into()),
                Some("windows".into()),
                Some("linux".into())
            ]
        );
    }

    /// A database from before accounts gets its requests' change and account columns from
    /// their specs: the account is the requester where the spec names none.
    #[test]
    fn migration_5_fills_change_and_account_from_old_specs() {
        let dir = tempfile::tempdir().unwrap();
        let at = StoreAt::Sqlite(dir.path().join("berth.db"));
        {
            let mut db = sqlite_at_version(&at, 4);
            let spec = |change: Option<&str>, account: Option<&str>| {
                let mut v = serde_json::json!({
                    "id": 1, "template": "linux", "count": 1, "vcpus": null, "memory_mib": null,
                    "labels": {}, "priority": 0, "gang": false, "hold": null,
                    "pending_deadline_ms": null, "expected_run_ms": null, "requester": "ana"
                });
                if let Some(c) = change {
                    v["change"] = c.into();
                }
                if let Some(a) = account {
                    v["account"] = a.into();
                }
                v.to_string()
            };
            for (id, text) in [
                (1u64, spec(Some("I1"), None)),
                (2, spec(None, Some("qt-base"))),
            ] {
                db.execute(
                    "INSERT INTO requests (id, template, count, spec, state, cause, submitted_ms,
                     updated_ms) VALUES (?1, 'linux', 1, ?2, 'waiting', 'submitted', 1, 1)",
                    args![id, text],
                )
                .unwrap();
            }
        }
        let mut store = Store::open(&at).unwrap();
        let rows = store
            .db()
            .rows(
                "SELECT change, account FROM requests ORDER BY id",
                &[],
                |r| Ok((r.opt_text(0)?, r.text(1)?)),
            )
            .unwrap();
        assert_eq!(
            rows,
            vec![(Some("I1".into()), "ana".into()), (None, "qt-base".into())]
        );
        assert_eq!(
            get_request(store.db(), 2).unwrap().unwrap().spec.account,
            "qt-base"
        );
    }
}
