//! The SQLite database: the journal of every input, and the state tables (hosts, templates,
//! requests, VMs, a per-VM history, the audit log) kept in the same transaction as the
//! journal rows that changed them. Schema changes are numbered migrations (`PRAGMA
//! user_version`); see `SCHEMA.md` for the tables.

use std::collections::BTreeMap;
use std::path::Path;

pub use berth_api::{AuditRow, ChangeRow, HistoryRow, Hold, OrphanRow, RequestRow, VmRow};
use berth_sched::{Event, VmState};
use rusqlite::{Connection, OptionalExtension, params};

use crate::DaemonError;
use crate::wire::{WireHost, WireInput, WireRequest};

/// Each migration takes the schema from its index to the next version.
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
}

fn sql(what: &'static str) -> impl Fn(rusqlite::Error) -> DaemonError {
    move |source| DaemonError::Sql { what, source }
}

/// Opens a connection with the settings every connection shares.
pub fn connect(path: &Path) -> Result<Connection, DaemonError> {
    let conn = Connection::open(path).map_err(sql("opening the database"))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(sql("setting the busy timeout"))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql("turning on WAL"))?;
    // FULL: a commit is on disk before the daemon acts on it, even across a power cut.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql("setting synchronous"))?;
    Ok(conn)
}

/// The writer: owned by the control loop.
pub struct Store {
    conn: Connection,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, DaemonError> {
        let mut conn = connect(path)?;
        migrate(&mut conn)?;
        Ok(Store { conn })
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, DaemonError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(sql("reading meta"))
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), DaemonError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(sql("writing meta"))?;
        Ok(())
    }

    /// Whether the journal holds anything at all.
    pub fn has_journal(&self) -> Result<bool, DaemonError> {
        self.conn
            .query_row("SELECT EXISTS (SELECT 1 FROM journal)", [], |r| r.get(0))
            .map_err(sql("reading the journal"))
    }

    /// The orphans kept so far, by VM number.
    pub fn orphans(&self) -> Result<Vec<OrphanRow>, DaemonError> {
        list_orphans(&self.conn)
    }

    /// Every journaled batch in order: `(batch, at_ms, inputs)`.
    pub fn journal(&self) -> Result<Vec<(u64, u64, Vec<WireInput>)>, DaemonError> {
        self.read_journal(
            "SELECT batch, at_ms, input, seq FROM journal ORDER BY seq",
            [],
        )
    }

    /// The journaled batches after batch `after`, in order: `(batch, at_ms, inputs)`. Batches
    /// are numbered in journal order, so this is the journal's tail, read through the batch
    /// index without passing over the rows before it.
    pub fn journal_after(
        &self,
        after: u64,
    ) -> Result<Vec<(u64, u64, Vec<WireInput>)>, DaemonError> {
        self.read_journal(JOURNAL_AFTER, [after as i64])
    }

    fn read_journal(
        &self,
        query: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<(u64, u64, Vec<WireInput>)>, DaemonError> {
        let mut stmt = self
            .conn
            .prepare(query)
            .map_err(sql("reading the journal"))?;
        let mut rows = stmt.query(params).map_err(sql("reading the journal"))?;
        let mut batches: Vec<(u64, u64, Vec<WireInput>)> = Vec::new();
        while let Some(row) = rows.next().map_err(sql("reading the journal"))? {
            let batch: i64 = row.get(0).map_err(sql("reading the journal"))?;
            let at_ms: i64 = row.get(1).map_err(sql("reading the journal"))?;
            let text: String = row.get(2).map_err(sql("reading the journal"))?;
            let seq: i64 = row.get(3).map_err(sql("reading the journal"))?;
            let input: WireInput =
                serde_json::from_str(&text).map_err(|e| DaemonError::Journal {
                    seq: seq as u64,
                    message: e.to_string(),
                })?;
            match batches.last_mut() {
                Some((b, _, inputs)) if *b == batch as u64 => inputs.push(input),
                _ => batches.push((batch as u64, at_ms as u64, vec![input])),
            }
        }
        Ok(batches)
    }

    /// The newest snapshot, if any.
    pub fn latest_snapshot(&self) -> Result<Option<SnapshotRow>, DaemonError> {
        self.conn
            .query_row(
                "SELECT batch, at_ms, submits, state, side FROM snapshots
                 ORDER BY batch DESC LIMIT 1",
                [],
                |r| {
                    Ok(SnapshotRow {
                        batch: r.get::<_, i64>(0)? as u64,
                        at_ms: r.get::<_, i64>(1)? as u64,
                        submits: r.get::<_, i64>(2)? as u64,
                        state: r.get(3)?,
                        side: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(sql("reading the newest snapshot"))
    }

    /// Writes a snapshot and deletes the older ones (the journal they cover stays: `berth
    /// trace export` reads all of it); all or nothing.
    pub fn write_snapshot(&mut self, row: &SnapshotRow) -> Result<(), DaemonError> {
        let tx = self.conn.transaction().map_err(sql("writing a snapshot"))?;
        tx.execute(
            "INSERT OR REPLACE INTO snapshots (batch, at_ms, submits, state, side)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                row.batch as i64,
                row.at_ms as i64,
                row.submits as i64,
                row.state,
                row.side
            ],
        )
        .map_err(sql("writing a snapshot"))?;
        tx.execute("DELETE FROM snapshots WHERE batch < ?1", [row.batch as i64])
            .map_err(sql("writing a snapshot"))?;
        tx.commit().map_err(sql("writing a snapshot"))
    }

    /// How many rows the `requests` table holds.
    pub fn n_requests(&self) -> Result<u64, DaemonError> {
        self.conn
            .query_row("SELECT count(*) FROM requests", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(sql("counting requests"))
    }

    /// The request numbers the `requests` table holds, in order.
    pub fn request_ids(&self) -> Result<Vec<u64>, DaemonError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM requests ORDER BY id")
            .map_err(sql("reading request ids"))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, i64>(0))
            .map_err(sql("reading request ids"))?;
        rows.map(|r| r.map(|id| id as u64))
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("reading request ids"))
    }

    /// Writes `requests` rows again that the journal holds but the table lost, as the journal's
    /// replay left them; all or nothing.
    pub fn repair_requests(&mut self, rows: &[RepairedRequest]) -> Result<(), DaemonError> {
        let tx = self.conn.transaction().map_err(sql("repairing requests"))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO requests (id, template, count, spec, state, cause, submitted_ms,
                     updated_ms, change, account) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(sql("repairing requests"))?;
            for r in rows {
                let spec = serde_json::to_string(&r.spec).unwrap_or_default();
                insert
                    .execute(params![
                        r.spec.id as i64,
                        r.spec.template,
                        r.spec.count,
                        spec,
                        r.state.name(),
                        r.cause,
                        r.submitted_ms as i64,
                        r.updated_ms as i64,
                        r.spec.change,
                        r.spec.account_name()
                    ])
                    .map_err(sql("repairing requests"))?;
            }
        }
        tx.commit().map_err(sql("repairing requests"))
    }

    /// The VMs not yet ended that took another VM's object on their host (a handover), with
    /// that object's name.
    pub fn host_objects(&self) -> Result<Vec<(u64, String)>, DaemonError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, host_object FROM vms WHERE host_object IS NOT NULL
                 AND state NOT IN ('done', 'failed', 'lost', 'cancelled') ORDER BY id",
            )
            .map_err(sql("reading host objects"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })
            .map_err(sql("reading host objects"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(sql("reading host objects"))
    }

    /// The highest VM number the state tables hold (0 when none).
    pub fn last_vm(&self) -> Result<u64, DaemonError> {
        let v: Option<i64> = self
            .conn
            .query_row("SELECT max(id) FROM vms", [], |r| r.get(0))
            .map_err(sql("reading ids"))?;
        Ok(v.unwrap_or(0) as u64)
    }

    /// The highest batch, request and host numbers used so far.
    pub fn last_ids(&self) -> Result<(u64, u64, u64), DaemonError> {
        let max = |q: &str| -> Result<u64, DaemonError> {
            let v: Option<i64> = self
                .conn
                .query_row(q, [], |r| r.get(0))
                .map_err(sql("reading ids"))?;
            Ok(v.unwrap_or(0) as u64)
        };
        Ok((
            max("SELECT max(batch) FROM journal")?,
            max("SELECT max(id) FROM requests")?,
            max("SELECT max(id) FROM hosts")?,
        ))
    }

    /// Writes one batch: its inputs to the journal, its events to the state tables, its audit
    /// rows; all or nothing.
    pub fn commit(&mut self, c: &Commit) -> Result<(), DaemonError> {
        let tx = self.conn.transaction().map_err(sql("starting a commit"))?;
        {
            let mut journal = tx
                .prepare_cached("INSERT INTO journal (batch, at_ms, input) VALUES (?1, ?2, ?3)")
                .map_err(sql("journaling"))?;
            let mut new_requests: BTreeMap<u64, &WireRequest> = BTreeMap::new();
            let mut new_hosts: BTreeMap<u64, &WireHost> = BTreeMap::new();
            for input in &c.inputs {
                let text = serde_json::to_string(input).map_err(|e| DaemonError::Journal {
                    seq: 0,
                    message: e.to_string(),
                })?;
                journal
                    .execute(params![c.batch as i64, c.at_ms as i64, text])
                    .map_err(sql("journaling"))?;
                match input {
                    WireInput::Submit { request } => {
                        new_requests.insert(request.id, request);
                    }
                    WireInput::AddHost { host } => {
                        new_hosts.insert(host.id, host);
                    }
                    WireInput::Cancel { request } => {
                        tx.prepare_cached(
                            "UPDATE requests SET ending = 'cancelled'
                             WHERE id = ?1 AND state IN ('waiting', 'active')",
                        )
                        .and_then(|mut s| s.execute([*request as i64]))
                        .map_err(sql("writing a cancel"))?;
                    }
                    WireInput::SetTemplate { template } => {
                        let spec = serde_json::to_string(template).unwrap_or_default();
                        tx.prepare_cached(
                            "INSERT INTO templates (name, spec, updated_ms) VALUES (?1, ?2, ?3)
                             ON CONFLICT (name) DO UPDATE SET spec = excluded.spec,
                             updated_ms = excluded.updated_ms",
                        )
                        .and_then(|mut s| s.execute(params![template.name, spec, c.at_ms as i64]))
                        .map_err(sql("writing a template"))?;
                    }
                    _ => {}
                }
            }
            let mut vm_insert = tx
                .prepare_cached(
                    "INSERT INTO vms (id, request, host, state, cause, created_ms, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                )
                .map_err(sql("writing vms"))?;
            let mut vm_update = tx
                .prepare_cached(
                    "UPDATE vms SET host = ?2, state = ?3, cause = ?4, updated_ms = ?5 WHERE id = ?1",
                )
                .map_err(sql("writing vms"))?;
            let mut history = tx
                .prepare_cached(
                    "INSERT INTO vm_history (vm, at_ms, from_state, to_state, host, cause)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(sql("writing vm history"))?;
            let mut req_insert = tx
                .prepare_cached(
                    "INSERT INTO requests (id, template, count, spec, state, cause, submitted_ms,
                     updated_ms, change, account) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9)",
                )
                .map_err(sql("writing requests"))?;
            let mut req_update = tx
                .prepare_cached(
                    "UPDATE requests SET state = ?2, cause = ?3, updated_ms = ?4,
                     ending = CASE WHEN ?2 IN ('waiting', 'active') THEN ending END
                     WHERE id = ?1",
                )
                .map_err(sql("writing requests"))?;
            let mut host_insert = tx
                .prepare_cached(
                    "INSERT INTO hosts (id, name, driver, spec, state, cause, added_ms, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                )
                .map_err(sql("writing hosts"))?;
            let mut host_update = tx
                .prepare_cached(
                    "UPDATE hosts SET state = ?2, cause = ?3, updated_ms = ?4,
                     removed_ms = CASE WHEN ?2 = 'removed' THEN ?4 ELSE removed_ms END
                     WHERE id = ?1",
                )
                .map_err(sql("writing hosts"))?;
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
                        let host = host.map(|h| h.0 as i64);
                        let cause = cause.to_string();
                        if from.is_none() {
                            vm_insert
                                .execute(params![
                                    vm.0 as i64,
                                    request.0 as i64,
                                    host,
                                    to.name(),
                                    cause,
                                    *at_ms as i64
                                ])
                                .map_err(sql("writing vms"))?;
                        } else {
                            vm_update
                                .execute(params![
                                    vm.0 as i64,
                                    host,
                                    to.name(),
                                    cause,
                                    *at_ms as i64
                                ])
                                .map_err(sql("writing vms"))?;
                        }
                        history
                            .execute(params![
                                vm.0 as i64,
                                *at_ms as i64,
                                from.map(VmState::name),
                                to.name(),
                                host,
                                cause
                            ])
                            .map_err(sql("writing vm history"))?;
                    }
                    Event::Request {
                        at_ms,
                        request,
                        from,
                        to,
                        cause,
                    } => {
                        if from.is_none() {
                            let Some(spec) = new_requests.get(&request.0) else {
                                continue;
                            };
                            let text = serde_json::to_string(spec).unwrap_or_default();
                            req_insert
                                .execute(params![
                                    request.0 as i64,
                                    spec.template,
                                    spec.count,
                                    text,
                                    to.name(),
                                    cause.to_string(),
                                    *at_ms as i64,
                                    spec.change,
                                    spec.account_name()
                                ])
                                .map_err(sql("writing requests"))?;
                        } else {
                            req_update
                                .execute(params![
                                    request.0 as i64,
                                    to.name(),
                                    cause.to_string(),
                                    *at_ms as i64
                                ])
                                .map_err(sql("writing requests"))?;
                        }
                    }
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
                            host_insert
                                .execute(params![
                                    host.0 as i64,
                                    spec.name,
                                    spec.driver,
                                    text,
                                    state,
                                    cause.to_string(),
                                    *at_ms as i64
                                ])
                                .map_err(sql("writing hosts"))?;
                        } else {
                            host_update
                                .execute(params![
                                    host.0 as i64,
                                    state,
                                    cause.to_string(),
                                    *at_ms as i64
                                ])
                                .map_err(sql("writing hosts"))?;
                        }
                    }
                }
            }
            let mut audit = tx
                .prepare_cached(
                    "INSERT INTO audit (at_ms, who, role, action, target, outcome)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(sql("writing the audit log"))?;
            for a in &c.audits {
                audit
                    .execute(params![
                        a.at_ms as i64,
                        a.who,
                        a.role,
                        a.action,
                        a.target,
                        a.outcome
                    ])
                    .map_err(sql("writing the audit log"))?;
            }
            for o in &c.orphans_kept {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO orphans (vm, host, found_ms, reason)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut st| {
                    st.execute(params![o.vm as i64, o.host, o.found_ms as i64, o.reason])
                })
                .map_err(sql("writing orphans"))?;
            }
            for vm in &c.orphans_gone {
                tx.prepare_cached("DELETE FROM orphans WHERE vm = ?1")
                    .and_then(|mut st| st.execute(params![*vm as i64]))
                    .map_err(sql("writing orphans"))?;
            }
            for (vm, template) in &c.warm_templates {
                tx.prepare_cached("UPDATE vms SET template = ?2 WHERE id = ?1")
                    .and_then(|mut st| st.execute(params![*vm as i64, template]))
                    .map_err(sql("writing warm vms"))?;
            }
            for (vm, object) in &c.host_objects {
                tx.prepare_cached("UPDATE vms SET host_object = ?2 WHERE id = ?1")
                    .and_then(|mut st| st.execute(params![*vm as i64, object]))
                    .map_err(sql("writing host objects"))?;
            }
        }
        tx.commit().map_err(sql("committing"))?;
        Ok(())
    }
}

fn migrate(conn: &mut Connection) -> Result<(), DaemonError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql("reading the schema version"))?;
    if version as usize > MIGRATIONS.len() {
        return Err(DaemonError::SchemaTooNew {
            found: version as u64,
            known: MIGRATIONS.len() as u64,
        });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(sql("migrating"))?;
        tx.execute_batch(step).map_err(sql("migrating"))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(sql("migrating"))?;
        tx.commit().map_err(sql("migrating"))?;
        tracing::info!(version = i + 1, "database schema migrated");
    }
    Ok(())
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
    pub limit: Option<u64>,
}

const VM_COLUMNS: &str = "v.id, v.request, h.name, v.state, v.cause, v.created_ms, v.updated_ms,
     coalesce(r.template, v.template), v.host_object
     FROM vms v LEFT JOIN hosts h ON h.id = v.host LEFT JOIN requests r ON r.id = v.request";

/// Column `i` as one of the API's named enums (a state): a name the API does not know is an
/// error naming it, not a row shown with a state no client can read.
fn named<T: std::str::FromStr<Err = berth_api::UnknownName>>(
    r: &rusqlite::Row<'_>,
    i: usize,
) -> rusqlite::Result<T> {
    parse_named(i, &r.get::<_, String>(i)?)
}

fn parse_named<T: std::str::FromStr<Err = berth_api::UnknownName>>(
    i: usize,
    text: &str,
) -> rusqlite::Result<T> {
    text.parse().map_err(|e: berth_api::UnknownName| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn vm_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VmRow> {
    let id: i64 = r.get(0)?;
    Ok(VmRow {
        id: id as u64,
        name: berth_drivers::vm_name(id as u64),
        request: r.get::<_, i64>(1)? as u64,
        host: r.get(2)?,
        state: named(r, 3)?,
        cause: r.get(4)?,
        created_ms: r.get::<_, i64>(5)? as u64,
        updated_ms: r.get::<_, i64>(6)? as u64,
        template: r.get(7)?,
        host_object: r.get(8)?,
        hold: None,
        detail: None,
    })
}

/// The query and arguments for a filtered VM listing, with `columns` selected.
fn vm_query(columns: &str, f: &VmFilter) -> (String, Vec<rusqlite::types::Value>) {
    let mut q = format!("SELECT {columns} WHERE 1=1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(s) = &f.state {
        q.push_str(" AND v.state = ?");
        args.push(s.clone().into());
    }
    if f.live {
        q.push_str(" AND v.state NOT IN ('done', 'failed', 'lost', 'cancelled')");
    }
    if let Some(r) = f.request {
        q.push_str(" AND v.request = ?");
        args.push((r as i64).into());
    }
    if let Some(h) = &f.host {
        q.push_str(" AND v.host IN (SELECT id FROM hosts WHERE name = ?)");
        args.push(h.clone().into());
    }
    if let Some(a) = f.after {
        q.push_str(" AND v.id > ?");
        args.push((a.min(i64::MAX as u64) as i64).into());
    }
    q.push_str(" ORDER BY v.id");
    if let Some(l) = f.limit {
        q.push_str(" LIMIT ?");
        args.push((l.min(i64::MAX as u64) as i64).into());
    }
    (q, args)
}

pub fn list_vms(conn: &Connection, f: &VmFilter) -> Result<Vec<VmRow>, DaemonError> {
    let (q, args) = vm_query(VM_COLUMNS, f);
    let mut stmt = conn.prepare_cached(&q).map_err(sql("listing vms"))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), vm_row)
        .map_err(sql("listing vms"))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(sql("listing vms"))
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

/// Writes the filtered VMs as a JSON array of `VmRow`s straight from the rows into `out`, and
/// returns how many, and the cursor of the next page when `shown_max` cut it: host names come
/// from one small lookup, templates by the request's primary key, and no list of rows is
/// kept. `holds` gives the breakpoints of held VMs (by VM id), which the scheduler knows.
pub fn write_vms_json(
    conn: &Connection,
    f: &VmFilter,
    holds: &BTreeMap<u64, Hold>,
    out: &mut Vec<u8>,
    shown_max: usize,
) -> Result<(usize, Option<u64>), DaemonError> {
    let mut hosts: BTreeMap<i64, String> = BTreeMap::new();
    {
        let mut stmt = conn
            .prepare_cached("SELECT id, name FROM hosts")
            .map_err(sql("listing vms"))?;
        let mut rows = stmt.query([]).map_err(sql("listing vms"))?;
        while let Some(r) = rows.next().map_err(sql("listing vms"))? {
            hosts.insert(
                r.get(0).map_err(sql("listing vms"))?,
                r.get(1).map_err(sql("listing vms"))?,
            );
        }
    }
    let (q, args) = vm_query(
        "v.id, v.request, v.host, v.state, v.cause, v.created_ms, v.updated_ms,
         coalesce(r.template, v.template), v.host_object
         FROM vms v LEFT JOIN requests r ON r.id = v.request",
        f,
    );
    let mut stmt = conn.prepare_cached(&q).map_err(sql("listing vms"))?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(args))
        .map_err(sql("listing vms"))?;
    let mut n = 0;
    let mut last = None;
    out.push(b'[');
    while let Some(r) = rows.next().map_err(sql("listing vms"))? {
        if n == shown_max {
            // One row past the page: there is more, and the page's last row is the cursor.
            out.push(b']');
            return Ok((n, last));
        }
        let id = r.get::<_, i64>(0).map_err(sql("listing vms"))? as u64;
        let host: Option<i64> = r.get(2).map_err(sql("listing vms"))?;
        let state = column_str(r, 3)?.unwrap_or_default();
        let row = VmRowRef {
            id,
            name: VmName(id),
            request: r.get::<_, i64>(1).map_err(sql("listing vms"))? as u64,
            template: column_str(r, 7)?,
            host: host.and_then(|h| hosts.get(&h)).map(String::as_str),
            state: parse_named(3, state).map_err(sql("listing vms"))?,
            cause: column_str(r, 4)?.unwrap_or_default(),
            created_ms: r.get::<_, i64>(5).map_err(sql("listing vms"))? as u64,
            updated_ms: r.get::<_, i64>(6).map_err(sql("listing vms"))? as u64,
            host_object: column_str(r, 8)?,
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
    }
    out.push(b']');
    Ok((n, None))
}

/// Column `i` as text borrowed from the row (`None` for NULL).
fn column_str<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> Result<Option<&'r str>, DaemonError> {
    r.get_ref(i)
        .and_then(|v| v.as_str_or_null().map_err(rusqlite::Error::from))
        .map_err(sql("listing vms"))
}

/// The ids of the VMs held at a breakpoint now (few: each one waits for a person).
/// The name of VM `id`'s object on its host when that is not its own (it took a warm VM).
pub fn host_object(conn: &Connection, id: u64) -> Result<Option<String>, DaemonError> {
    conn.query_row(
        "SELECT host_object FROM vms WHERE id = ?1",
        [id as i64],
        |r| r.get::<_, Option<String>>(0),
    )
    .optional()
    .map(Option::flatten)
    .map_err(sql("reading a vm's host object"))
}

pub fn held_vm_ids(conn: &Connection) -> Result<Vec<u64>, DaemonError> {
    let mut stmt = conn
        .prepare_cached("SELECT id FROM vms WHERE state = 'held' ORDER BY id")
        .map_err(sql("listing held vms"))?;
    let rows = stmt
        .query_map([], |r| Ok(r.get::<_, i64>(0)? as u64))
        .map_err(sql("listing held vms"))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(sql("listing held vms"))
}

pub fn get_vm(conn: &Connection, id: u64) -> Result<Option<VmRow>, DaemonError> {
    conn.query_row(
        &format!("SELECT {VM_COLUMNS} WHERE v.id = ?1"),
        [id as i64],
        vm_row,
    )
    .optional()
    .map_err(sql("reading a vm"))
}

pub fn vm_history(conn: &Connection, id: u64) -> Result<Vec<HistoryRow>, DaemonError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT x.at_ms, x.from_state, x.to_state, h.name, x.cause FROM vm_history x
             LEFT JOIN hosts h ON h.id = x.host WHERE x.vm = ?1 ORDER BY x.id",
        )
        .map_err(sql("reading vm history"))?;
    let rows = stmt
        .query_map([id as i64], |r| {
            Ok(HistoryRow {
                at_ms: r.get::<_, i64>(0)? as u64,
                from: r
                    .get::<_, Option<String>>(1)?
                    .map(|f| parse_named(1, &f))
                    .transpose()?,
                to: named(r, 2)?,
                host: r.get(3)?,
                cause: r.get(4)?,
            })
        })
        .map_err(sql("reading vm history"))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(sql("reading vm history"))
}

fn request_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RequestRow> {
    let spec: String = r.get(7)?;
    Ok(RequestRow {
        id: r.get::<_, i64>(0)? as u64,
        template: r.get(1)?,
        count: r.get(2)?,
        state: named(r, 3)?,
        cause: r.get(4)?,
        submitted_ms: r.get::<_, i64>(5)? as u64,
        updated_ms: r.get::<_, i64>(6)? as u64,
        spec: serde_json::from_str::<WireRequest>(&spec)
            .map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    7,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?
            .to_api(),
        ending: r
            .get::<_, Option<String>>(8)?
            .map(|text| parse_named(8, &text))
            .transpose()?,
        position: None,
        queue_len: None,
        eta_ms: None,
        eta_after_ms: None,
    })
}

const REQUEST_COLUMNS: &str =
    "id, template, count, state, cause, submitted_ms, updated_ms, spec, ending FROM requests";

pub fn get_request(conn: &Connection, id: u64) -> Result<Option<RequestRow>, DaemonError> {
    conn.query_row(
        &format!("SELECT {REQUEST_COLUMNS} WHERE id = ?1"),
        [id as i64],
        request_row,
    )
    .optional()
    .map_err(sql("reading a request"))
}

pub fn list_requests(
    conn: &Connection,
    state: Option<&str>,
    before: Option<u64>,
    limit: u64,
) -> Result<Vec<RequestRow>, DaemonError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {REQUEST_COLUMNS} WHERE (?1 IS NULL OR state = ?1) AND id < ?3
             ORDER BY id DESC LIMIT ?2"
        ))
        .map_err(sql("listing requests"))?;
    let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
    let rows = stmt
        .query_map(
            params![state, limit.min(i64::MAX as u64) as i64, before],
            request_row,
        )
        .map_err(sql("listing requests"))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(sql("listing requests"))
}

/// The requests' totals per change, with the account of each change's first request.
const CHANGE_COLUMNS: &str = "
    SELECT g.change, r.account, g.n, g.first_id, g.wanted, g.first_ms, g.last_ms, g.live
    FROM (SELECT change, count(*) AS n, min(id) AS first_id, sum(count) AS wanted,
              min(submitted_ms) AS first_ms, max(updated_ms) AS last_ms,
              sum(state IN ('waiting', 'active')) AS live
          FROM requests WHERE change IS NOT NULL";

/// A change's row from the totals of its requests (`CHANGE_COLUMNS`) and the counts of its
/// VMs by state; `now_ms` is what an open change's turnaround counts to.
fn change_row(
    conn: &Connection,
    r: &rusqlite::Row<'_>,
    now_ms: u64,
) -> Result<ChangeRow, DaemonError> {
    let get = |i: usize| -> Result<i64, DaemonError> {
        r.get::<_, Option<i64>>(i)
            .map(Option::unwrap_or_default)
            .map_err(sql("listing changes"))
    };
    let change: String = r.get(0).map_err(sql("listing changes"))?;
    let first_ms = get(5)? as u64;
    let live = get(7)? > 0;
    let ended_ms = (!live).then_some(get(6)? as u64);
    let mut row = ChangeRow {
        account: r
            .get::<_, Option<String>>(1)
            .map_err(sql("listing changes"))?
            .unwrap_or_default(),
        n_requests: get(2)? as u64,
        first_request: get(3)? as u64,
        vms_wanted: get(4)? as u64,
        vms_waiting: 0,
        vms_starting: 0,
        vms_running: 0,
        vms_done: 0,
        vms_failed: 0,
        vms_cancelled: 0,
        first_arrival_ms: first_ms,
        ended_ms,
        turnaround_ms: ended_ms.unwrap_or(now_ms).saturating_sub(first_ms),
        change,
        eta_ms: None,
        eta_after_ms: None,
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT v.state, count(*) FROM vms v WHERE v.request IN
             (SELECT id FROM requests WHERE change = ?1) GROUP BY v.state",
        )
        .map_err(sql("counting a change's vms"))?;
    let mut rows = stmt
        .query([&row.change])
        .map_err(sql("counting a change's vms"))?;
    while let Some(v) = rows.next().map_err(sql("counting a change's vms"))? {
        let state: berth_api::VmState = named(v, 0).map_err(sql("counting a change's vms"))?;
        let n = v.get::<_, i64>(1).map_err(sql("counting a change's vms"))? as u64;
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
    Ok(row)
}

/// Changes whose first request is older than `before` (all when `None`), newest first, at
/// most `limit`. Each costs one grouped read of its requests' VMs.
pub fn list_changes(
    conn: &Connection,
    before: Option<u64>,
    limit: u64,
    now_ms: u64,
) -> Result<Vec<ChangeRow>, DaemonError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "{CHANGE_COLUMNS} GROUP BY change HAVING min(id) < ?1) g
             JOIN requests r ON r.id = g.first_id ORDER BY g.first_id DESC LIMIT ?2"
        ))
        .map_err(sql("listing changes"))?;
    let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
    let mut rows = stmt
        .query(params![before, limit.min(i64::MAX as u64) as i64])
        .map_err(sql("listing changes"))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(sql("listing changes"))? {
        out.push(change_row(conn, r, now_ms)?);
    }
    Ok(out)
}

/// One change, `None` when no request named it.
pub fn get_change(
    conn: &Connection,
    change: &str,
    now_ms: u64,
) -> Result<Option<ChangeRow>, DaemonError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "{CHANGE_COLUMNS} AND change = ?1 GROUP BY change) g
             JOIN requests r ON r.id = g.first_id"
        ))
        .map_err(sql("reading a change"))?;
    let mut rows = stmt.query([change]).map_err(sql("reading a change"))?;
    match rows.next().map_err(sql("reading a change"))? {
        Some(r) => Ok(Some(change_row(conn, r, now_ms)?)),
        None => Ok(None),
    }
}

/// The requests of a change, oldest first, at most `limit`.
pub fn change_requests(
    conn: &Connection,
    change: &str,
    limit: u64,
) -> Result<Vec<RequestRow>, DaemonError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {REQUEST_COLUMNS} WHERE change = ?1 ORDER BY id LIMIT ?2"
        ))
        .map_err(sql("reading a change's requests"))?;
    let rows = stmt
        .query_map(
            params![change, limit.min(i64::MAX as u64) as i64],
            request_row,
        )
        .map_err(sql("reading a change's requests"))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(sql("reading a change's requests"))
}

/// The waiting requests that name a change, oldest first (no more than the queue holds).
pub fn waiting_change_requests(conn: &Connection) -> Result<Vec<RequestRow>, DaemonError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {REQUEST_COLUMNS} WHERE state = 'waiting' AND change IS NOT NULL ORDER BY id"
        ))
        .map_err(sql("reading the waiting requests of changes"))?;
    let rows = stmt
        .query_map([], request_row)
        .map_err(sql("reading the waiting requests of changes"))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(sql("reading the waiting requests of changes"))
}

/// The orphans berth keeps on its hosts, by VM number.
pub fn list_orphans(conn: &Connection) -> Result<Vec<OrphanRow>, DaemonError> {
    let mut stmt = conn
        .prepare("SELECT vm, host, found_ms, reason FROM orphans ORDER BY vm")
        .map_err(sql("reading orphans"))?;
    let rows = stmt
        .query_map([], |r| {
            let vm = r.get::<_, i64>(0)? as u64;
            Ok(OrphanRow {
                vm,
                name: berth_drivers::vm_name(vm),
                host: r.get(1)?,
                found_ms: r.get::<_, i64>(2)? as u64,
                reason: r.get(3)?,
            })
        })
        .map_err(sql("reading orphans"))?;
    rows.collect::<Result<_, _>>()
        .map_err(sql("reading orphans"))
}

/// Audit rows older than `before` (all when `None`), newest first, at most `limit`, with the
/// next page's cursor when there are more.
pub fn list_audit(
    conn: &Connection,
    before: Option<u64>,
    limit: u64,
) -> Result<(Vec<AuditRow>, Option<u64>), DaemonError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT at_ms, who, role, action, target, outcome, id FROM audit WHERE id < ?2
             ORDER BY id DESC LIMIT ?1",
        )
        .map_err(sql("reading the audit log"))?;
    let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
    let mut last = None;
    // One more than the page, to know whether there is a next one.
    let rows = stmt
        .query_map(
            params![limit.saturating_add(1).min(i64::MAX as u64) as i64, before],
            |r| {
                Ok((
                    AuditRow {
                        at_ms: r.get::<_, i64>(0)? as u64,
                        who: r.get(1)?,
                        role: r.get(2)?,
                        action: r.get(3)?,
                        target: r.get(4)?,
                        outcome: r.get(5)?,
                    },
                    r.get::<_, i64>(6)? as u64,
                ))
            },
        )
        .map_err(sql("reading the audit log"))?;
    let mut out = Vec::new();
    for row in rows {
        let (a, id) = row.map_err(sql("reading the audit log"))?;
        if out.len() as u64 == limit {
            return Ok((out, last));
        }
        last = Some(id);
        out.push(a);
    }
    Ok((out, None))
}

/// VM counts by state.
pub fn vm_counts(conn: &Connection) -> Result<BTreeMap<String, u64>, DaemonError> {
    let mut stmt = conn
        .prepare_cached("SELECT state, count(*) FROM vms GROUP BY state")
        .map_err(sql("counting vms"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .map_err(sql("counting vms"))?;
    rows.collect::<Result<BTreeMap<_, _>, _>>()
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

    /// The tail of the journal after a snapshot is found through the batch index, not by
    /// passing over the whole journal: a start after a snapshot costs what came after it.
    #[test]
    fn the_journal_tail_is_read_through_the_batch_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("berth.db")).unwrap();
        let mut stmt = store
            .conn()
            .prepare(&format!("EXPLAIN QUERY PLAN {JOURNAL_AFTER}"))
            .unwrap();
        let plan: Vec<String> = stmt
            .query_map([5], |r| r.get::<_, String>(3))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert!(
            plan.iter().any(|p| p.contains("USING INDEX journal_batch")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
    }

    #[test]
    fn the_tail_and_the_newest_snapshot_are_what_a_start_reads() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("berth.db")).unwrap();
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
        let n: i64 = store
            .conn()
            .query_row("SELECT count(*) FROM snapshots", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "older snapshots are deleted");
        // The journal a snapshot covers stays (export reads all of it).
        assert_eq!(store.journal().unwrap().len(), 4);
    }

    #[test]
    fn batches_survive_reopening_and_migrations_run_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.db");
        {
            let mut store = Store::open(&path).unwrap();
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
        let store = Store::open(&path).unwrap();
        let version: i64 = store
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
        let journal = store.journal().unwrap();
        assert_eq!(journal.len(), 1);
        assert_eq!(journal[0].0, 1);
        assert_eq!(journal[0].2.len(), 2);
        assert_eq!(store.last_ids().unwrap(), (1, 1, 0));
        let row = get_request(store.conn(), 1).unwrap().unwrap();
        assert_eq!((row.state.name(), row.count), ("waiting", 2));
        // A request that named no account is charged to its requester.
        assert_eq!(row.spec.account, "ci");
        let columns: (Option<String>, String) = store
            .conn()
            .query_row(
                "SELECT change, account FROM requests WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(columns, (Some("I42".into()), "ci".into()));
    }

    /// A database from before accounts gets its requests' change and account columns from
    /// their specs: the account is the requester where the spec names none.
    #[test]
    fn migration_5_fills_change_and_account_from_old_specs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.db");
        {
            let mut conn = connect(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for step in &MIGRATIONS[..4] {
                tx.execute_batch(step).unwrap();
            }
            tx.pragma_update(None, "user_version", 4).unwrap();
            tx.commit().unwrap();
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
                (1, spec(Some("I1"), None)),
                (2, spec(None, Some("qt-base"))),
            ] {
                conn.execute(
                    "INSERT INTO requests (id, template, count, spec, state, cause, submitted_ms,
                     updated_ms) VALUES (?1, 'linux', 1, ?2, 'waiting', 'submitted', 1, 1)",
                    params![id, text],
                )
                .unwrap();
            }
        }
        let store = Store::open(&path).unwrap();
        let mut stmt = store
            .conn()
            .prepare("SELECT change, account FROM requests ORDER BY id")
            .unwrap();
        let rows: Vec<(Option<String>, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![(Some("I1".into()), "ana".into()), (None, "qt-base".into())]
        );
        assert_eq!(
            get_request(store.conn(), 2).unwrap().unwrap().spec.account,
            "qt-base"
        );
    }
}
