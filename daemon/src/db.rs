//! The database engine under the store: SQLite (a file in the data directory, embedded, the
//! default) or PostgreSQL (a `postgres://` URL), behind one small interface of statements,
//! arguments and rows, so that the store's SQL is written once.
//!
//! Statements use SQLite's numbered placeholders (`?1`, `?2`, or `?` counted in order); for
//! PostgreSQL they are rewritten to `$1`, `$2` once per statement and the prepared statement
//! is kept. The SQL they share is the common subset (`ON CONFLICT ... DO UPDATE`, `CAST(... AS
//! BIGINT)`, `CASE`); what differs (the schema, the accounting views) is written per engine
//! where it is used, chosen with [`Db::engine`].
//!
//! PostgreSQL's client is blocking (`postgres`, over `tokio-postgres` on a runtime of its own),
//! so a call on a thread of the daemon's runtime gives that thread away first (see
//! [`blocking`]). TLS to the server follows the URL's `sslmode` as libpq reads it
//! ([`crate::pg_tls`]).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::DaemonError;
use crate::pg_tls::{ConnectError, PgTarget};

/// Where the store is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreAt {
    /// A SQLite file (the data directory's `berth.db`).
    Sqlite(PathBuf),
    /// A PostgreSQL database, by its connection URL.
    Postgres(String),
}

impl StoreAt {
    /// The store named by `--store` or the config's `store` (a `postgres://` or
    /// `postgresql://` URL), else the SQLite file `default`.
    pub fn parse(named: Option<&str>, default: &Path) -> Result<StoreAt, DaemonError> {
        match named {
            None => Ok(StoreAt::Sqlite(default.to_owned())),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                // Read now, so that a wrong sslmode stops the start before anything else.
                PgTarget::parse(url).map_err(|why| DaemonError::Config {
                    key: "store".into(),
                    message: format!("{}: {why}", redact(url)),
                })?;
                Ok(StoreAt::Postgres(url.to_owned()))
            }
            Some(other) => Err(DaemonError::Config {
                key: "store".into(),
                message: format!(
                    "`{}` is not a postgres:// URL (SQLite, the default, is the data \
                     directory's berth.db and needs no setting)",
                    redact(other)
                ),
            }),
        }
    }

    /// The store as logs and errors may show it: a URL without its password.
    pub fn display(&self) -> String {
        match self {
            StoreAt::Sqlite(p) => p.display().to_string(),
            StoreAt::Postgres(url) => redact(url),
        }
    }
}

/// A URL with the password in its user part replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (auth, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match auth.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Which engine a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// What went wrong in the database.
#[derive(Debug)]
pub enum DbError {
    Sqlite(rusqlite::Error),
    Postgres(postgres::Error),
    /// Connecting to PostgreSQL failed: the server's URL (without its password), why, and what
    /// a refused certificate was checked against.
    Connect {
        at: String,
        source: ConnectError,
        checked_against: Option<String>,
    },
    /// A column held what its reader did not expect.
    Column {
        index: usize,
        message: String,
    },
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Sqlite(e) => e.fmt(f),
            DbError::Postgres(e) => pg_message(e, f),
            DbError::Connect {
                at,
                source,
                checked_against,
            } => {
                write!(f, "{at}: ")?;
                match source {
                    ConnectError::Tls(why) => f.write_str(why),
                    ConnectError::Postgres(e) => {
                        pg_message(e, f)?;
                        match checked_against {
                            Some(checked) if refused_certificate(e) => write!(f, " ({checked})"),
                            _ => Ok(()),
                        }
                    }
                }
            }
            DbError::Column { index, message } => write!(f, "column {index}: {message}"),
        }
    }
}

impl std::error::Error for DbError {}

/// The server's own message (with its code) rather than only "db error".
fn pg_message(e: &postgres::Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match e.as_db_error() {
        Some(db) => write!(f, "{} ({})", db.message(), db.code().code()),
        None => f.write_str(&crate::pg_tls::with_causes(e)),
    }
}

/// Whether a connection failed on the server's certificate.
fn refused_certificate(e: &postgres::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(cause) = next {
        let tls = cause
            .downcast_ref::<tokio_rustls::rustls::Error>()
            .or_else(|| {
                // An I/O error hides the error it wraps from `source`.
                cause
                    .downcast_ref::<std::io::Error>()
                    .and_then(std::io::Error::get_ref)
                    .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
            });
        if let Some(tls) = tls {
            return matches!(
                tls,
                tokio_rustls::rustls::Error::InvalidCertificate(_)
                    | tokio_rustls::rustls::Error::NoCertificatesPresented
            );
        }
        next = cause.source();
    }
    false
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> DbError {
        DbError::Sqlite(e)
    }
}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> DbError {
        DbError::Postgres(e)
    }
}

impl DbError {
    /// Whether the database could not be reached (connection lost, server shutting down or
    /// starting, out of connections): worth retrying after reconnecting, unlike a statement
    /// that failed on its own.
    pub fn is_unreachable(&self) -> bool {
        match self {
            // A server not up yet or gone, a handshake cut short: worth another try. Settings
            // that cannot work (an unreadable sslrootcert) are not.
            DbError::Connect {
                source: ConnectError::Postgres(e),
                ..
            }
            | DbError::Postgres(e) => {
                e.is_closed()
                    || e.as_db_error().is_none_or(|db| {
                        let code = db.code().code();
                        // 08: connection exceptions; 57P: operator intervention (shutdown,
                        // cannot connect now); 53300: too many connections.
                        code.starts_with("08") || code.starts_with("57P") || code == "53300"
                    })
            }
            _ => false,
        }
    }
}

/// Maps a database error to the daemon's, saying what was being done.
pub fn sql<E: Into<DbError>>(what: &'static str) -> impl Fn(E) -> DaemonError {
    move |source| DaemonError::Sql {
        what,
        source: source.into(),
    }
}

/// An argument of a statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<u64> for Value {
    /// The same 64 bits as a signed integer (what both engines store), so that every id
    /// comes back as it went in, `u64::MAX` (the warm pools' request) too; a bound that must
    /// compare as a large number is [`Value::capped`].
    fn from(v: u64) -> Value {
        Value::Int(v as i64)
    }
}

impl Value {
    /// A bound (a limit, a cursor): saturating at `i64::MAX`, so that "no bound" compares
    /// above every row.
    pub fn capped(v: u64) -> Value {
        Value::Int(v.min(i64::MAX as u64) as i64)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(v.into())
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::Int(v.into())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Real(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Value::Blob(v)
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::Blob(v.to_vec())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// The arguments of a statement: `args![a, b]`.
#[macro_export]
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        &[$($crate::db::Value::from($v)),*][..]
    };
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Real(v) => ValueRef::Real(*v),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::Blob(v) => ValueRef::Blob(v),
        }))
    }
}

impl postgres::types::ToSql for Value {
    /// Converted to the type the server inferred for the placeholder.
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::{IsNull, Type};
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                _ => v.to_string().as_str().to_sql(ty, out),
            },
            Value::Real(v) => match *ty {
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            // PostgreSQL's text holds no NUL character (SQLite's does): a text from outside
            // (a hook's standard error, a host's answer) with one is written with U+FFFD in
            // its place rather than refused.
            Value::Text(v) if v.contains('\0') => {
                v.replace('\0', "\u{FFFD}").as_str().to_sql(ty, out)
            }
            Value::Text(v) => v.as_str().to_sql(ty, out),
            Value::Blob(v) => v.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// A row being read: columns by index, borrowed from the engine's row.
pub enum Row<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Postgres(&'r postgres::Row),
}

fn column_error(index: usize, message: impl fmt::Display) -> DbError {
    DbError::Column {
        index,
        message: message.to_string(),
    }
}

impl Row<'_> {
    /// An integer column that may be NULL (PostgreSQL's smaller integers and booleans
    /// widen).
    pub fn opt_i64(&self, i: usize) -> Result<Option<i64>, DbError> {
        match self {
            Row::Sqlite(r) => Ok(r.get::<_, Option<i64>>(i)?),
            Row::Postgres(r) => {
                use postgres::types::Type;
                let ty = r
                    .columns()
                    .get(i)
                    .map(|c| c.type_().clone())
                    .ok_or_else(|| column_error(i, "no such column"))?;
                Ok(match ty {
                    Type::INT8 => r.try_get::<_, Option<i64>>(i)?,
                    Type::INT4 => r.try_get::<_, Option<i32>>(i)?.map(i64::from),
                    Type::INT2 => r.try_get::<_, Option<i16>>(i)?.map(i64::from),
                    Type::BOOL => r.try_get::<_, Option<bool>>(i)?.map(i64::from),
                    other => return Err(column_error(i, format!("{other} is not an integer"))),
                })
            }
        }
    }

    /// An integer column, NULL being an error.
    pub fn i64(&self, i: usize) -> Result<i64, DbError> {
        self.opt_i64(i)?
            .ok_or_else(|| column_error(i, "NULL where a number belongs"))
    }

    /// A count, time or id: an integer column read back as the unsigned number it was
    /// written from (the same 64 bits).
    pub fn u64(&self, i: usize) -> Result<u64, DbError> {
        Ok(self.i64(i)? as u64)
    }

    /// A text column borrowed from the row (`None` for NULL).
    pub fn str(&self, i: usize) -> Result<Option<&str>, DbError> {
        match self {
            Row::Sqlite(r) => Ok(r
                .get_ref(i)?
                .as_str_or_null()
                .map_err(rusqlite::Error::from)?),
            Row::Postgres(r) => Ok(r.try_get::<_, Option<&str>>(i)?),
        }
    }

    /// A text column that may be NULL.
    pub fn opt_text(&self, i: usize) -> Result<Option<String>, DbError> {
        Ok(self.str(i)?.map(str::to_owned))
    }

    /// A text column, NULL being an error.
    pub fn text(&self, i: usize) -> Result<String, DbError> {
        self.opt_text(i)?
            .ok_or_else(|| column_error(i, "NULL where text belongs"))
    }

    /// A blob (`bytea`) column.
    pub fn bytes(&self, i: usize) -> Result<Vec<u8>, DbError> {
        match self {
            Row::Sqlite(r) => Ok(r.get::<_, Vec<u8>>(i)?),
            Row::Postgres(r) => Ok(r.try_get::<_, Vec<u8>>(i)?),
        }
    }

    /// A real column that may be NULL (integers widen).
    pub fn opt_f64(&self, i: usize) -> Result<Option<f64>, DbError> {
        match self {
            Row::Sqlite(r) => Ok(r.get::<_, Option<f64>>(i)?),
            Row::Postgres(r) => {
                use postgres::types::Type;
                match r.columns().get(i).map(|c| c.type_().clone()) {
                    Some(Type::FLOAT8) => Ok(r.try_get::<_, Option<f64>>(i)?),
                    Some(Type::FLOAT4) => Ok(r.try_get::<_, Option<f32>>(i)?.map(f64::from)),
                    _ => Ok(self.opt_i64(i)?.map(|v| v as f64)),
                }
            }
        }
    }
}

/// A connection to the store.
pub enum Db {
    Sqlite(rusqlite::Connection),
    Postgres(Box<Pg>),
}

/// A PostgreSQL connection with its prepared statements.
pub struct Pg {
    client: Client,
    /// Settings made again on every reconnection (`set_session`).
    session: Vec<String>,
    target: PgTarget,
    /// The URL without its password, for errors.
    shown: String,
    /// Statements of [`Db::execute_later`] not sent yet, their arguments written in as
    /// literals, `;`-separated: sent together in one round trip.
    pending: String,
    n_pending: usize,
    /// Rows of deferred one-row statements (`INSERT ... VALUES (...)`, `UPDATE ... FROM
    /// (VALUES (...))`, see [`Shape::Rows`]) not yet in `pending`, one multi-row statement
    /// per statement text, so that a batch's thousands of rows cost the server a few
    /// statements rather than thousands.
    joined: Vec<JoinedRows>,
    statements: HashMap<String, postgres::Statement>,
}

/// PostgreSQL's client, closed on a thread of its own when dropped inside a tokio runtime:
/// `postgres::Client` closes its connection by blocking on a runtime of its own, which panics
/// on a thread that runs one (a daemon's task dropping its store as it ends, or a connection
/// given up for a new one).
struct Client(Option<postgres::Client>);

impl std::ops::Deref for Client {
    type Target = postgres::Client;
    fn deref(&self) -> &postgres::Client {
        // Only `drop` takes it out.
        self.0.as_ref().expect("a client until dropped")
    }
}

impl std::ops::DerefMut for Client {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        self.0.as_mut().expect("a client until dropped")
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let Some(client) = self.0.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // Not joined: closing waits for the server's goodbye, which never comes from a
            // server the daemon is cut off from, and a daemon that lost its lease that way
            // must not hang on its way out.
            let _ = std::thread::Builder::new()
                .name("berth-pg-close".into())
                .spawn(move || drop(client));
        } else {
            drop(client);
        }
    }
}

/// Statements [`Db::execute_later`] holds at most before it sends them (a 2,000-VM batch
/// writes about 8,000).
const PG_PENDING_MAX: usize = 4096;

/// Statements a connection keeps prepared at most (the store's are a few dozen; filters
/// make a few more).
const PG_STATEMENTS_MAX: usize = 512;

impl Db {
    /// Opens a connection with the settings every connection shares.
    pub fn connect(at: &StoreAt) -> Result<Db, DaemonError> {
        match at {
            StoreAt::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).map_err(sql("opening the database"))?;
                conn.busy_timeout(std::time::Duration::from_secs(10))
                    .map_err(sql("setting the busy timeout"))?;
                conn.pragma_update(None, "journal_mode", "WAL")
                    .map_err(sql("turning on WAL"))?;
                // FULL: a commit is on disk before the daemon acts on it, even across a power
                // cut.
                conn.pragma_update(None, "synchronous", "FULL")
                    .map_err(sql("setting synchronous"))?;
                Ok(Db::Sqlite(conn))
            }
            StoreAt::Postgres(url) => {
                if tokio::runtime::Handle::try_current().is_ok() && !on_multi_thread_runtime() {
                    return Err(DaemonError::Config {
                        key: "store".into(),
                        message: "PostgreSQL needs the daemon's multi-threaded runtime".into(),
                    });
                }
                let shown = at.display();
                let target = PgTarget::parse(url).map_err(|why| DaemonError::Config {
                    key: "store".into(),
                    message: format!("{shown}: {why}"),
                })?;
                let client = blocking(|| pg_connect(&target, &shown))
                    .map_err(sql("connecting to PostgreSQL"))?;
                Ok(Db::Postgres(Box::new(Pg {
                    client: Client(Some(client)),
                    session: Vec::new(),
                    target,
                    shown,
                    pending: String::new(),
                    n_pending: 0,
                    joined: Vec::new(),
                    statements: HashMap::new(),
                })))
            }
        }
    }

    pub fn engine(&self) -> Engine {
        match self {
            Db::Sqlite(_) => Engine::Sqlite,
            Db::Postgres(_) => Engine::Postgres,
        }
    }

    /// Runs `sql` (no arguments; several statements allowed).
    pub fn batch(&mut self, sql_text: &str) -> Result<(), DbError> {
        self.flush()?;
        match self {
            Db::Sqlite(c) => Ok(c.execute_batch(sql_text)?),
            Db::Postgres(pg) => Ok(blocking(|| pg.client.batch_execute(sql_text))?),
        }
    }

    /// Runs one statement whose count of rows is not needed, at the latest before the next
    /// statement that is not deferred, or the commit: SQLite runs it now (a call costs no
    /// round trip); PostgreSQL sends the statements deferred so together, in one round trip
    /// (the simple query protocol, the arguments written in as literals), rather than one
    /// round trip each. An error shows when they are sent.
    pub fn execute_later(&mut self, sql_text: &str, args: &[Value]) -> Result<(), DbError> {
        match self {
            Db::Sqlite(_) => self.execute(sql_text, args).map(|_| ()),
            Db::Postgres(pg) => {
                pg.defer(sql_text, args);
                if pg.n_pending >= PG_PENDING_MAX {
                    self.flush()?;
                }
                Ok(())
            }
        }
    }

    /// Sends the statements of [`Db::execute_later`] not sent yet.
    pub fn flush(&mut self) -> Result<(), DbError> {
        if let Db::Postgres(pg) = self {
            pg.close_rows(None);
            if pg.pending.is_empty() {
                return Ok(());
            }
            let text = std::mem::take(&mut pg.pending);
            pg.n_pending = 0;
            blocking(|| pg.client.batch_execute(&text))?;
        }
        Ok(())
    }

    /// Drops the statements of [`Db::execute_later`] not sent yet (a transaction rolled back).
    fn forget_pending(&mut self) {
        if let Db::Postgres(pg) = self {
            pg.pending.clear();
            pg.joined.clear();
            pg.n_pending = 0;
        }
    }

    /// Runs one statement; returns the rows it changed.
    pub fn execute(&mut self, sql_text: &str, args: &[Value]) -> Result<u64, DbError> {
        self.flush()?;
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql_text)?;
                Ok(stmt.execute(rusqlite::params_from_iter(args))? as u64)
            }
            Db::Postgres(pg) => blocking(|| {
                let stmt = pg.statement(sql_text)?;
                Ok(pg.client.execute(&stmt, &pg_args(args))?)
            }),
        }
    }

    /// Runs a query and hands each row to `f`, in order, without keeping them; `f`'s errors
    /// come back as they are.
    pub fn each<E: From<DbError>>(
        &mut self,
        sql_text: &str,
        args: &[Value],
        mut f: impl FnMut(Row<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.each_while(sql_text, args, |r| f(r).map(|()| true))
    }

    /// As [`each`](Self::each), until `f` says `false` (the rows after are not read).
    pub fn each_while<E: From<DbError>>(
        &mut self,
        sql_text: &str,
        args: &[Value],
        mut f: impl FnMut(Row<'_>) -> Result<bool, E>,
    ) -> Result<(), E> {
        self.flush()?;
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql_text).map_err(DbError::from)?;
                let mut rows = stmt
                    .query(rusqlite::params_from_iter(args))
                    .map_err(DbError::from)?;
                while let Some(r) = rows.next().map_err(DbError::from)? {
                    if !f(Row::Sqlite(r))? {
                        break;
                    }
                }
                Ok(())
            }
            Db::Postgres(pg) => blocking(|| {
                use postgres::fallible_iterator::FallibleIterator;
                let stmt = pg.statement(sql_text)?;
                let mut rows = pg
                    .client
                    .query_raw(&stmt, args.iter())
                    .map_err(DbError::from)?;
                while let Some(r) = rows.next().map_err(DbError::from)? {
                    if !f(Row::Postgres(&r))? {
                        break;
                    }
                }
                Ok(())
            }),
        }
    }

    /// Runs a query and reads every row with `f`.
    pub fn rows<T>(
        &mut self,
        sql_text: &str,
        args: &[Value],
        mut f: impl FnMut(Row<'_>) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        let mut out = Vec::new();
        self.each(sql_text, args, |row| {
            out.push(f(row)?);
            Ok::<(), DbError>(())
        })?;
        Ok(out)
    }

    /// The first row of a query read with `f`, if there is one.
    pub fn row<T>(
        &mut self,
        sql_text: &str,
        args: &[Value],
        f: impl FnMut(Row<'_>) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        Ok(self.rows(sql_text, args, f)?.into_iter().next())
    }

    /// Runs `f` in a transaction: committed when it returns `Ok`, rolled back otherwise.
    /// SQLite's takes the write lock at once (`BEGIN IMMEDIATE`), so two writers wait
    /// rather than fail at their first write.
    pub fn transaction<T>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut Db) -> Result<T, DaemonError>,
    ) -> Result<T, DaemonError> {
        // A connection the server dropped (a restart, a network cut) is opened again here,
        // between transactions, never in the middle of one.
        if self.is_closed() {
            self.reconnect()?;
        }
        self.flush().map_err(sql(what))?;
        match self {
            Db::Sqlite(_) => self.batch("BEGIN IMMEDIATE").map_err(sql(what))?,
            // Sent with the transaction's first statement that is not deferred, or with its
            // deferred ones and the commit: a transaction of deferred writes is one round trip.
            Db::Postgres(pg) => pg.pending.push_str("BEGIN;\n"),
        }
        // A deferred statement that fails fails the commit (the server skips the rest of the
        // round trip, the COMMIT too), and the transaction is rolled back.
        match f(self).and_then(|v| self.commit().map(|()| v).map_err(sql(what))) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.forget_pending();
                if let Err(rollback) = self.batch("ROLLBACK") {
                    tracing::warn!(error = %rollback, "rolling back a failed transaction");
                }
                Err(e)
            }
        }
    }

    /// Commits the transaction [`Db::transaction`] began, with the statements deferred.
    fn commit(&mut self) -> Result<(), DbError> {
        match self {
            Db::Sqlite(_) => self.batch("COMMIT"),
            Db::Postgres(pg) => {
                pg.close_rows(None);
                pg.pending.push_str("COMMIT;\n");
                self.flush()
            }
        }
    }

    /// Whether the connection is known to be dead (PostgreSQL; a SQLite file never is).
    pub fn is_closed(&self) -> bool {
        match self {
            Db::Sqlite(_) => false,
            Db::Postgres(pg) => pg.client.is_closed(),
        }
    }

    /// Connects again in place (after the server restarted or the network dropped).
    pub fn reconnect(&mut self) -> Result<(), DaemonError> {
        self.forget_pending();
        if let Db::Postgres(pg) = self {
            let client = blocking(|| pg_connect(&pg.target, &pg.shown))
                .map_err(sql("reconnecting to PostgreSQL"))?;
            pg.client = Client(Some(client));
            pg.statements.clear();
            for setting in pg.session.clone() {
                blocking(|| pg.client.batch_execute(&setting))
                    .map_err(sql("setting up the connection again"))?;
            }
        }
        Ok(())
    }

    /// Runs `setting` (a `SET` of PostgreSQL) now and again on every reconnection; nothing on
    /// SQLite.
    pub fn set_session(&mut self, setting: &str) -> Result<(), DaemonError> {
        if let Db::Postgres(pg) = self {
            blocking(|| pg.client.batch_execute(setting))
                .map_err(sql("setting up the connection"))?;
            pg.session.push(setting.to_owned());
        }
        Ok(())
    }
}

/// The rows of deferred statements of one text: `head` (`INSERT INTO t (...) VALUES`, or an
/// update's text up to its `(VALUES`), the rows so far, `(...), (...)`, and what follows them
/// (an update's `) AS v WHERE ...`; nothing for an insert).
struct JoinedRows {
    table: String,
    head: String,
    rows: String,
    tail: String,
}

/// What a deferred statement is, for the order it must keep.
#[derive(Debug, PartialEq, Eq)]
enum Shape<'s> {
    /// A statement of one row that joins the others of its text: `INSERT INTO table (...)
    /// VALUES (...)` with nothing after the row, or `UPDATE table SET ... FROM (VALUES (...))
    /// AS v WHERE ...`, which updates the rows the values name. Rows of one update joined in a
    /// transaction must name different rows (PostgreSQL applies one of several that match).
    Rows {
        table: &'s str,
        head: &'s str,
        row: &'s str,
        tail: &'s str,
    },
    /// Another statement on one table (`UPDATE t`, `DELETE FROM t`, an insert with `ON
    /// CONFLICT`).
    Touches(&'s str),
    /// Anything else.
    Other,
}

fn shape(sql_text: &str) -> Shape<'_> {
    let text = sql_text.trim();
    let mut words = text.split_whitespace();
    let table = match (words.next(), words.next(), words.next()) {
        (Some("INSERT"), Some("INTO"), Some(t)) | (Some("DELETE"), Some("FROM"), Some(t)) => t,
        (Some("UPDATE"), Some(t), _) => t,
        _ => return Shape::Other,
    };
    // `vms (id, ...` names the table `vms`.
    let table = table.split('(').next().unwrap_or(table);
    if text.starts_with("INSERT")
        && let Some(i) = text.find(" VALUES")
    {
        let (head, row) = text.split_at(i + " VALUES".len());
        let row = row.trim();
        // One parenthesised row and nothing after it (no ON CONFLICT, no RETURNING).
        if one_row_at_start(row) == Some(row.len()) {
            return Shape::Rows {
                table,
                head,
                row,
                tail: "",
            };
        }
    }
    if text.starts_with("UPDATE")
        && let Some(i) = text.find(" FROM (VALUES ")
    {
        let (head, rest) = text.split_at(i + " FROM (VALUES".len());
        let rest = rest.trim_start();
        // One parenthesised row, then the parenthesis that closes the values; no placeholder
        // outside the row.
        if let Some(end) = one_row_at_start(rest) {
            let (row, tail) = rest.split_at(end);
            if tail.starts_with(')') && !head.contains('?') && !tail.contains('?') {
                return Shape::Rows {
                    table,
                    head,
                    row,
                    tail,
                };
            }
        }
    }
    Shape::Touches(table)
}

/// Where the parenthesised row that `text` starts with ends (the byte after its `)`), if it
/// starts with one that holds no quote.
fn one_row_at_start(text: &str) -> Option<usize> {
    if !text.starts_with('(') {
        return None;
    }
    let mut depth = 0i32;
    for (i, c) in text.char_indices() {
        match c {
            '\'' => return None,
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

impl Pg {
    /// Keeps a statement for the next [`Db::flush`]: a one-row insert or update joins the other
    /// rows of its statement; any other statement goes after the rows kept so far for its table
    /// (all tables when it names none), so that every statement still sees what was written
    /// before it. Inserts into different tables may reach the server in another order than
    /// they were made: the store's tables have no foreign keys or triggers between them.
    fn defer(&mut self, sql_text: &str, args: &[Value]) {
        self.n_pending += 1;
        match shape(sql_text) {
            Shape::Rows {
                table,
                head,
                row,
                tail,
            } => {
                if let Some(rows) = self
                    .joined
                    .iter_mut()
                    .find(|r| r.head == head && r.tail == tail)
                {
                    rows.rows.push_str(", ");
                    inline(row, args, &mut rows.rows);
                    return;
                }
                self.close_rows(Some(table));
                let mut rows = JoinedRows {
                    table: table.to_owned(),
                    head: head.to_owned(),
                    rows: String::new(),
                    tail: tail.to_owned(),
                };
                inline(row, args, &mut rows.rows);
                self.joined.push(rows);
            }
            Shape::Touches(table) => {
                self.close_rows(Some(table));
                inline(sql_text, args, &mut self.pending);
                self.pending.push_str(";\n");
            }
            Shape::Other => {
                self.close_rows(None);
                inline(sql_text, args, &mut self.pending);
                self.pending.push_str(";\n");
            }
        }
    }

    /// Moves the rows kept for `table` (every table's for `None`) into `pending`, as one
    /// multi-row statement per statement text, in the order the statements came.
    fn close_rows(&mut self, table: Option<&str>) {
        let mut kept = Vec::new();
        for rows in std::mem::take(&mut self.joined) {
            if table.is_none_or(|t| t == rows.table) {
                self.pending.push_str(&rows.head);
                self.pending.push(' ');
                self.pending.push_str(&rows.rows);
                self.pending.push_str(&rows.tail);
                self.pending.push_str(";\n");
            } else {
                kept.push(rows);
            }
        }
        self.joined = kept;
    }

    /// The prepared statement for `sql_text`, prepared once.
    fn statement(&mut self, sql_text: &str) -> Result<postgres::Statement, DbError> {
        if let Some(s) = self.statements.get(sql_text) {
            return Ok(s.clone());
        }
        let stmt = self.client.prepare(&placeholders(sql_text))?;
        if self.statements.len() >= PG_STATEMENTS_MAX {
            self.statements.clear();
        }
        self.statements.insert(sql_text.to_owned(), stmt.clone());
        Ok(stmt)
    }
}

fn pg_args(args: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    args.iter()
        .map(|a| a as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

fn pg_connect(target: &PgTarget, shown: &str) -> Result<postgres::Client, DbError> {
    target.connect().map_err(|source| DbError::Connect {
        at: shown.to_owned(),
        source,
        checked_against: target.checked_against(),
    })
}

/// SQLite's placeholders as PostgreSQL's: `?N` becomes `$N`, and a bare `?` the next number;
/// nothing inside a quoted string or identifier changes.
pub fn placeholders(sql_text: &str) -> String {
    let mut out = String::with_capacity(sql_text.len() + 8);
    rewrite_placeholders(sql_text, &mut out, |n, out| {
        out.push('$');
        out.push_str(&n.to_string());
    });
    out
}

/// `sql_text` with each placeholder replaced by its argument written as a PostgreSQL literal,
/// appended to `out`: integers and reals as numbers, text as an escape string (`E'...'`, which
/// reads the same whatever `standard_conforming_strings` says), blobs through `decode`. A
/// placeholder without its argument becomes `NULL` (as an unbound parameter would be).
fn inline(sql_text: &str, args: &[Value], out: &mut String) {
    use std::fmt::Write;
    rewrite_placeholders(sql_text, out, |n, out| {
        let value = (n as usize).checked_sub(1).and_then(|i| args.get(i));
        // Writing to a String cannot fail.
        let _ = match value {
            None | Some(Value::Null) => write!(out, "NULL"),
            Some(Value::Int(v)) => write!(out, "({v}::BIGINT)"),
            Some(Value::Real(v)) if v.is_finite() => write!(out, "({v:?}::DOUBLE PRECISION)"),
            Some(Value::Real(v)) => write!(out, "'{v}'::DOUBLE PRECISION"),
            Some(Value::Text(v)) => {
                out.push_str("E'");
                for c in v.chars() {
                    match c {
                        '\'' => out.push_str("''"),
                        '\\' => out.push_str("\\\\"),
                        // As `to_sql` writes it: PostgreSQL's text holds no NUL.
                        '\0' => out.push('\u{FFFD}'),
                        c => out.push(c),
                    }
                }
                write!(out, "'")
            }
            Some(Value::Blob(v)) => {
                out.push_str("decode('");
                for b in v {
                    let _ = write!(out, "{b:02x}");
                }
                write!(out, "', 'hex')")
            }
        };
    });
}

/// Copies `sql_text` to `out`, with `put(n, out)` in place of each placeholder (`?N`, or a bare
/// `?` counted in order); nothing inside a quoted string or identifier changes.
fn rewrite_placeholders(sql_text: &str, out: &mut String, mut put: impl FnMut(u32, &mut String)) {
    let mut next = 0u32;
    let mut quote: Option<char> = None;
    let mut chars = sql_text.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                let n = if digits.is_empty() {
                    next += 1;
                    next
                } else {
                    digits.parse().unwrap_or(u32::MAX)
                };
                put(n, out);
            }
            None => out.push(c),
        }
    }
}

/// Runs `f`, which blocks (a PostgreSQL round trip), from wherever the caller is: on a thread
/// of a multi-threaded tokio runtime it first hands the thread's other tasks to another worker
/// (PostgreSQL's client would refuse to block a runtime's thread); elsewhere it just runs. A
/// current-thread runtime cannot give its thread away: [`Db::connect`] refuses PostgreSQL there.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    if on_multi_thread_runtime() {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_outside_quotes() {
        assert_eq!(
            placeholders("SELECT a FROM t WHERE b = ?1 AND c IN (?2, ?1) AND d = '?'"),
            "SELECT a FROM t WHERE b = $1 AND c IN ($2, $1) AND d = '?'"
        );
        assert_eq!(
            placeholders("SELECT 1 WHERE x = ? AND y > ? LIMIT ?"),
            "SELECT 1 WHERE x = $1 AND y > $2 LIMIT $3"
        );
        assert_eq!(
            placeholders("SELECT \"a?b\" FROM t"),
            "SELECT \"a?b\" FROM t"
        );
    }

    #[test]
    fn deferred_statements_are_told_apart() {
        assert_eq!(
            shape("INSERT INTO vms (id, request) VALUES (?1, ?2)"),
            Shape::Rows {
                table: "vms",
                head: "INSERT INTO vms (id, request) VALUES",
                row: "(?1, ?2)",
                tail: ""
            }
        );
        assert_eq!(
            shape("\n  INSERT INTO t(a) VALUES (?1, coalesce(?2, 0))\n"),
            Shape::Rows {
                table: "t",
                head: "INSERT INTO t(a) VALUES",
                row: "(?1, coalesce(?2, 0))",
                tail: ""
            }
        );
        assert_eq!(
            shape(
                "UPDATE t SET a = v.column2 FROM (VALUES (?1, CAST(?2 AS BIGINT))) AS v WHERE t.id = v.column1"
            ),
            Shape::Rows {
                table: "t",
                head: "UPDATE t SET a = v.column2 FROM (VALUES",
                row: "(?1, CAST(?2 AS BIGINT))",
                tail: ") AS v WHERE t.id = v.column1"
            }
        );
        for touches in [
            "INSERT INTO t (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
            "INSERT INTO t (a) VALUES (?1), (?2)",
            "INSERT INTO t (a) VALUES (')')",
            "UPDATE t SET a = ?2 WHERE id = ?1",
            "DELETE FROM t WHERE id = ?1",
            "UPDATE t SET a = v.column2 FROM (VALUES (?1, ?2), (?3, ?4)) AS v WHERE t.id = v.column1",
            "UPDATE t SET a = ?2 FROM (VALUES (?1)) AS v WHERE t.id = v.column1",
            "UPDATE t SET a = v.column2 FROM (VALUES (?1, 'x')) AS v WHERE t.id = v.column1",
        ] {
            assert_eq!(shape(touches), Shape::Touches("t"), "{touches}");
        }
        assert_eq!(shape("UPDATE vms SET a = 1"), Shape::Touches("vms"));
        assert_eq!(shape("SELECT 1"), Shape::Other);
    }

    #[test]
    fn deferred_arguments_are_written_in_as_literals() {
        let mut out = String::new();
        inline(
            "UPDATE t SET a = ?2, b = ?1, c = '?3' WHERE d = ?3 AND e = ?",
            args![-5i64, "it's a \\ ?1", vec![0u8, 255], 1.5f64],
            &mut out,
        );
        assert_eq!(
            out,
            "UPDATE t SET a = E'it''s a \\\\ ?1', b = (-5::BIGINT), c = '?3' \
             WHERE d = decode('00ff', 'hex') AND e = (-5::BIGINT)"
        );
    }

    /// What `execute_later` writes reads back the same on either engine, and a transaction
    /// that fails after it leaves nothing.
    #[test]
    fn deferred_statements_write_what_they_say_on_either_engine() {
        let dir = tempfile::tempdir().unwrap();
        let mut ats = vec![StoreAt::Sqlite(dir.path().join("t.db"))];
        let pg = berth_testkit::postgres::fresh_database();
        if let Some(pg) = &pg {
            ats.push(StoreAt::Postgres(pg.url().to_owned()));
        }
        let rt = tokio::runtime::Builder::new_multi_thread().build().unwrap();
        let _in_runtime = rt.enter();
        let texts = [
            "it's",
            "back\\slash",
            "a ? mark",
            "ünïcode \u{1f680}",
            "",
            "E'x'",
        ];
        for at in ats {
            let mut db = Db::connect(&at).unwrap();
            let blob = match db.engine() {
                Engine::Sqlite => "BLOB",
                Engine::Postgres => "BYTEA",
            };
            db.batch(&format!(
                "CREATE TABLE t (n BIGINT, a TEXT, b {blob}, r DOUBLE PRECISION)"
            ))
            .unwrap();
            db.transaction("filling", |db| {
                for (i, text) in texts.iter().enumerate() {
                    db.execute_later(
                        "INSERT INTO t (n, a, b, r) VALUES (?1, ?2, ?3, ?4)",
                        args![i as i64 * 10 - 20, *text, vec![i as u8, 0, 255], 0.25f64],
                    )
                    .map_err(sql("inserting"))?;
                }
                db.execute_later(
                    "INSERT INTO t (n, a, b, r) VALUES (?1, ?2, ?3, ?4)",
                    args![u64::MAX, None::<String>, vec![], None::<f64>],
                )
                .map_err(sql("inserting"))?;
                db.execute_later("UPDATE t SET a = a || ?2 WHERE n = ?1", args![0i64, "!"])
                    .map_err(sql("updating"))?;
                // An insert after the update, and an update of that row: still in order.
                db.execute_later(
                    "INSERT INTO t (n, a, b, r) VALUES (?1, ?2, ?3, ?4)",
                    args![1000i64, "late", vec![], None::<f64>],
                )
                .map_err(sql("inserting"))?;
                db.execute_later("UPDATE t SET a = a || ?2 WHERE n = ?1", args![1000i64, "!"])
                    .map_err(sql("updating"))?;
                Ok(())
            })
            .unwrap();
            let rows = db
                .rows("SELECT n, a, b, r FROM t ORDER BY n", &[], |r| {
                    Ok((r.i64(0)?, r.opt_text(1)?, r.bytes(2)?, r.opt_f64(3)?))
                })
                .unwrap();
            let mut want = vec![(-1i64, None, vec![], None)];
            for (i, text) in texts.iter().enumerate() {
                let text = if i == 2 {
                    format!("{text}!")
                } else {
                    text.to_string()
                };
                want.push((
                    i as i64 * 10 - 20,
                    Some(text),
                    vec![i as u8, 0, 255],
                    Some(0.25),
                ));
            }
            want.push((1000, Some("late!".into()), vec![], None));
            want.sort_by_key(|w| w.0);
            assert_eq!(rows, want, "{at:?}");
            // A deferred statement that fails fails the transaction, and nothing of it stays.
            let r = db.transaction("failing", |db| {
                db.execute_later("INSERT INTO t (n) VALUES (?1)", args![100i64])
                    .map_err(sql("inserting"))?;
                db.execute_later("INSERT INTO nowhere (n) VALUES (?1)", args![1i64])
                    .map_err(sql("inserting"))?;
                Ok(())
            });
            assert!(r.unwrap_err().to_string().contains("nowhere"), "{at:?}");
            let n = db.row("SELECT count(*) FROM t", &[], |r| r.i64(0)).unwrap();
            assert_eq!(n, Some(texts.len() as i64 + 2), "{at:?}");
        }
    }

    #[test]
    fn store_names_are_a_postgres_url_or_nothing() {
        let default = Path::new("/data/berth.db");
        assert_eq!(
            StoreAt::parse(None, default).unwrap(),
            StoreAt::Sqlite(default.to_owned())
        );
        assert_eq!(
            StoreAt::parse(Some("postgresql://u@h/db"), default).unwrap(),
            StoreAt::Postgres("postgresql://u@h/db".into())
        );
        let e = StoreAt::parse(Some("mysql://root:hunter2@h/db"), default)
            .unwrap_err()
            .to_string();
        assert!(e.contains("store") && e.contains("postgres://"), "{e}");
        assert!(
            !e.contains("hunter2"),
            "a password leaked into an error: {e}"
        );
    }

    #[test]
    fn passwords_are_not_shown() {
        let at = StoreAt::Postgres("postgres://berth:s3cret@db.example:5432/berth".into());
        assert_eq!(at.display(), "postgres://berth:***@db.example:5432/berth");
        let at = StoreAt::Postgres("postgres://berth@db.example/berth".into());
        assert_eq!(at.display(), "postgres://berth@db.example/berth");
    }

    /// A text with a NUL character is written on PostgreSQL (which refuses it in `text`).
    #[test]
    fn postgres_takes_a_text_with_a_nul() {
        let Some(pg) = berth_testkit::postgres::fresh_database() else {
            return;
        };
        let mut db = Db::connect(&StoreAt::Postgres(pg.url().to_owned())).unwrap();
        db.batch("CREATE TABLE t (b TEXT NOT NULL)").unwrap();
        db.execute("INSERT INTO t VALUES (?1)", args!["a\0b"])
            .unwrap();
        let b = db.row("SELECT b FROM t", &[], |r| r.text(0)).unwrap();
        assert_eq!(b.as_deref(), Some("a\u{FFFD}b"));
    }

    /// A connection dropped on a thread of a tokio runtime (a daemon's task ending) closes
    /// without a panic, as it does outside one.
    #[test]
    fn a_postgres_connection_drops_inside_a_runtime() {
        let Some(pg) = berth_testkit::postgres::fresh_database() else {
            return;
        };
        let at = StoreAt::Postgres(pg.url().to_owned());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let db = Db::connect(&at).unwrap();
            tokio::spawn(async move { drop(db) }).await.unwrap();
            let mut db = Db::connect(&at).unwrap();
            db.reconnect().unwrap();
            assert_eq!(db.row("SELECT 1", &[], |r| r.i64(0)).unwrap(), Some(1));
        });
    }

    #[test]
    fn sqlite_rows_read_through_the_shared_interface() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::connect(&StoreAt::Sqlite(dir.path().join("t.db"))).unwrap();
        db.batch("CREATE TABLE t (a INTEGER, b TEXT, c BLOB)")
            .unwrap();
        db.transaction("filling", |db| {
            db.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3)",
                args![7u64, "x", vec![1u8, 2]],
            )
            .map_err(sql("inserting"))?;
            db.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3)",
                args![None::<i64>, None::<String>, vec![]],
            )
            .map_err(sql("inserting"))?;
            Ok(())
        })
        .unwrap();
        let rows = db
            .rows("SELECT a, b, c FROM t ORDER BY a IS NULL", &[], |r| {
                Ok((r.opt_i64(0)?, r.opt_text(1)?, r.bytes(2)?))
            })
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (Some(7), Some("x".into()), vec![1, 2]),
                (None, None, vec![])
            ]
        );
        // A failed transaction leaves nothing behind.
        let r: Result<(), _> = db.transaction("failing", |db| {
            db.execute("INSERT INTO t VALUES (8, 'y', x'')", &[])
                .map_err(sql("inserting"))?;
            Err(DaemonError::LoopGone)
        });
        assert!(r.is_err());
        let n = db.row("SELECT count(*) FROM t", &[], |r| r.i64(0)).unwrap();
        assert_eq!(n, Some(2));
        let e = db.row("SELECT b FROM t WHERE a IS NULL", &[], |r| r.text(0));
        assert!(e.unwrap_err().to_string().contains("NULL"));
    }
}
