//! The daemon's own recent log, as `GET /v1/logs` serves it to operators.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /v1/logs`: the daemon's most recent log lines, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DaemonLog {
    pub lines: Vec<LogLine>,
    /// How many lines the daemon keeps in memory; older ones are gone (the daemon's
    /// standard error has them all).
    pub kept_max: u64,
}

/// One log line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    /// When it was logged (ms since the Unix epoch, the daemon's clock).
    pub at_ms: u64,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
    /// The module that logged it (`berth_daemon::control`).
    pub target: String,
    /// The message, then its fields as `key=value`.
    pub message: String,
}
