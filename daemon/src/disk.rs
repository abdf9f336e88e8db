//! A full disk is a state, not a crash. `Health` is what the daemon says of its database's
//! disk: writable, short of room (API writes refused before they are applied, with a 507), or
//! failing (a batch that could not be written waits, with its effects, for a retry). Reads
//! answer in every state, and the daemon goes back to normal by itself when there is room.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::DaemonError;

/// How often the free space is measured at most.
const MEASURE_EVERY_MS: u64 = 1000;

/// The daemon's health as `/healthz`, `/v1/status` and `/metrics` report it, shared between
/// the control loop (which sets it) and the API (which reads it).
#[derive(Debug, Default)]
pub struct Health {
    refusing: AtomicBool,
    why: Mutex<String>,
}

impl Health {
    /// `None` when writes are taken; else why they are refused.
    pub fn degraded(&self) -> Option<String> {
        self.refusing
            .load(Ordering::Relaxed)
            .then(|| self.why.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Records whether writes are refused, and returns whether that changed.
    fn set(&self, why: Option<String>) -> bool {
        let refusing = why.is_some();
        *self.why.lock().unwrap_or_else(|e| e.into_inner()) = why.unwrap_or_default();
        self.refusing.swap(refusing, Ordering::Relaxed) != refusing
    }
}

/// Watches the free space of the disk that holds the database.
pub(crate) struct DiskWatch {
    dir: PathBuf,
    free_min_mib: u64,
    measured: Option<(Instant, u64)>,
    pub(crate) health: std::sync::Arc<Health>,
    /// Why the last batch could not be written, while it waits for a retry.
    pub(crate) failing: Option<String>,
}

impl DiskWatch {
    pub(crate) fn new(dir: &Path, free_min_mib: u64) -> DiskWatch {
        DiskWatch {
            dir: dir.to_owned(),
            free_min_mib,
            measured: None,
            health: Default::default(),
            failing: None,
        }
    }

    /// Free MiB on the database's disk, measured at most once a second (`None` if it cannot
    /// be measured: then it is not held against writes).
    fn free_mib(&mut self) -> Option<u64> {
        if let Some((at, free)) = self.measured
            && at.elapsed() < Duration::from_millis(MEASURE_EVERY_MS)
        {
            return Some(free);
        }
        let st = nix::sys::statvfs::statvfs(&self.dir).ok()?;
        let free = st.blocks_available().saturating_mul(st.fragment_size()) >> 20;
        self.measured = Some((Instant::now(), free));
        Some(free)
    }

    /// Why API writes are refused now, if they are (the text of their 507); updates the
    /// shared health, and says whether that changed (for a log line and an event).
    pub(crate) fn check(&mut self) -> (Option<String>, bool) {
        let why = if let Some(e) = &self.failing {
            Some(format!(
                "the database in {} cannot be written ({e}): writes are refused until it can; \
                 reads still answer",
                self.dir.display()
            ))
        } else {
            match self.free_mib() {
                Some(free) if free < self.free_min_mib => Some(format!(
                    "the disk holding {} has {free} MiB free, below disk.free_min_mib ({} MiB): \
                     writes are refused until there is room; reads still answer",
                    self.dir.display(),
                    self.free_min_mib
                )),
                _ => None,
            }
        };
        let changed = self.health.set(why.clone());
        (why, changed)
    }

    /// Forgets the last measurement, so that the next check measures again.
    pub(crate) fn remeasure(&mut self) {
        self.measured = None;
    }
}

/// Whether a failed commit is the disk's fault (full, read-only, failing) and worth retrying,
/// rather than a bug that a retry would only repeat.
pub(crate) fn is_disk_trouble(e: &DaemonError) -> bool {
    use rusqlite::ErrorCode::*;
    match e {
        DaemonError::Sql {
            source: crate::db::DbError::Sqlite(rusqlite::Error::SqliteFailure(f, _)),
            ..
        } => matches!(
            f.code,
            DiskFull | SystemIoFailure | ReadOnly | CannotOpen | DatabaseBusy | DatabaseLocked
        ),
        // A PostgreSQL server that restarts, or a network that drops, is the same kind of
        // trouble: the batch waits, and the store connects again before the next try.
        DaemonError::Sql { source, .. } => source.is_unreachable(),
        _ => false,
    }
}
