//! The data directory: created private (0700) at a first start, locked for the daemon's
//! life, and marked with an identity that its database records too. A later start that finds
//! the mark but no database (deleted, emptied, or another one copied in) refuses: replaying
//! an empty journal would take every VM on the hosts for an orphan. With PostgreSQL the
//! database is shared: a new data directory takes the database's identity, and one marked
//! for a database that is now empty refuses the same way.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::DaemonError;
use crate::db::StoreAt;
pub use crate::orphan_start::OrphanStart;
use crate::store::{META_DATA_DIR_ID, Store};

/// The marker file: the data directory's identity, also kept in the database's `meta` table.
pub const MARKER_FILE: &str = "berth.id";

/// An open data directory: locked until this value is dropped.
pub(crate) struct DataDir {
    /// The directory itself, `flock`ed: unlike a lock file, it cannot be deleted away.
    _lock: File,
    /// The database was lost and started anew (allowed only with an `OrphanStart` flag).
    pub(crate) database_lost: bool,
}

/// Opens (or, at a first start, creates) the data directory and its database.
pub(crate) fn open(
    dir: &Path,
    at: &StoreAt,
    orphans: OrphanStart,
) -> Result<(DataDir, Store), DaemonError> {
    let io = |what: String| move |source| DaemonError::Io { what, source };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(io(format!("creating data directory {}", dir.display())))?;
    warn_if_loose(dir);
    let lock = File::open(dir).map_err(io(format!("opening {}", dir.display())))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(DaemonError::DataDirBusy(dir.to_owned()));
        }
        Err(std::fs::TryLockError::Error(source)) => {
            return Err(DaemonError::Io {
                what: format!("locking {}", dir.display()),
                source,
            });
        }
    }

    let db = at.display();
    let marker_path = dir.join(MARKER_FILE);
    let marker = read_marker(&marker_path)?;
    let db_has_bytes = match at {
        StoreAt::Sqlite(path) => match std::fs::metadata(path) {
            Ok(m) => m.len() > 0,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(source) => {
                return Err(DaemonError::Io {
                    what: format!("reading {}", path.display()),
                    source,
                });
            }
        },
        // A server's database is judged by its `meta` below.
        StoreAt::Postgres(_) => true,
    };
    let lost = |db: &str| DaemonError::DatabaseLost {
        db: db.to_owned(),
        marker: marker_path.clone(),
    };
    if marker.is_some() && !db_has_bytes && orphans == OrphanStart::Refuse {
        // Refused before opening, so that a refused start leaves nothing behind.
        return Err(lost(&db));
    }
    let mut store = Store::open(at)?;
    if let StoreAt::Sqlite(path) = at {
        restrict(path);
    }
    let recorded = store.meta(META_DATA_DIR_ID)?;
    let mut database_lost = false;
    match (marker, recorded) {
        (Some(m), Some(r)) if m == r => {}
        (Some(m), Some(r)) if m.is_empty() => {
            tracing::warn!(path = %marker_path.display(), "data directory marker empty: written again from the database");
            write_marker(&marker_path, &r)?;
        }
        (Some(m), Some(r)) => {
            return Err(DaemonError::DatabaseMismatch {
                db,
                marker: marker_path,
                marker_id: m,
                db_id: r,
            });
        }
        (None, Some(r)) => {
            tracing::warn!(path = %marker_path.display(), "data directory marker missing: written again from the database");
            write_marker(&marker_path, &r)?;
        }
        (Some(m), None) => {
            if orphans == OrphanStart::Refuse {
                return Err(lost(&db));
            }
            tracing::warn!(
                db = %db,
                flag = orphans.flag(),
                "the database was lost: starting a new journal in this data directory"
            );
            store.set_meta(META_DATA_DIR_ID, &m)?;
            database_lost = true;
        }
        (None, None) => {
            if store.has_journal()? {
                tracing::info!("marking a data directory from an earlier berth");
            } else {
                tracing::info!(data_dir = %dir.display(), "initialising a new data directory");
            }
            let id = crate::random_token().map_err(io("reading /dev/urandom".into()))?;
            // The database first: a crash between the two leaves a marker to write again,
            // never a marker without its database.
            store.set_meta(META_DATA_DIR_ID, &id)?;
            write_marker(&marker_path, &id)?;
        }
    }
    Ok((
        DataDir {
            _lock: lock,
            database_lost,
        },
        store,
    ))
}

fn read_marker(path: &Path) -> Result<Option<String>, DaemonError> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_owned())),
        // An empty marker still says that this directory was initialised.
        Ok(_) => Ok(Some(String::new())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DaemonError::Io {
            what: format!("reading {}", path.display()),
            source,
        }),
    }
}

fn write_marker(path: &Path, id: &str) -> Result<(), DaemonError> {
    let io = |source| DaemonError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut f = private_file(&tmp).map_err(io)?;
    writeln!(f, "{id}").map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Creates (or truncates) a file only its owner can read.
pub(crate) fn private_file(path: &Path) -> std::io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

/// Makes the database owner-only (it holds hosts' driver options); says so if that fails.
fn restrict(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(error) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(path = %path.display(), %error, "cannot make the database owner-only");
        }
    }
}

/// Warns when others can read or enter the data directory (it holds the operator token).
fn warn_if_loose(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(dir)
            && m.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %dir.display(),
                mode = format!("{:o}", m.permissions().mode() & 0o777),
                "the data directory is open to other users; chmod 700 it"
            );
        }
    }
}
