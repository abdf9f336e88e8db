//! The daemon's own recent log lines, kept in a bounded ring in memory so operators can read
//! them from the console or `GET /v1/logs` without a shell on the daemon's machine.
//!
//! [`RingLayer`] is a `tracing` layer: `berth serve` puts it beside the layer that writes to
//! standard error, so the ring holds the same lines (the last [`LOG_LINES_MAX`] of them).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

use crate::api::{ApiError, Operator, Params, params};
use crate::limits::list_limit;

/// Log lines kept in memory; older ones are only on standard error.
pub const LOG_LINES_MAX: usize = 2000;
/// A longer message is cut to this many characters in the ring.
pub const LOG_LINE_CHARS_MAX: usize = 2000;

/// The ring: one per process, as the `tracing` subscriber it is fed from is.
static RING: Mutex<VecDeque<berth_api::LogLine>> = Mutex::new(VecDeque::new());

/// Keeps every event it sees in the ring.
#[derive(Clone, Copy, Debug, Default)]
pub struct RingLayer;

/// The layer to add to the daemon's `tracing` subscriber.
pub fn layer() -> RingLayer {
    RingLayer
}

impl<S: tracing::Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut message = fields.message;
        message.push_str(&fields.rest);
        push(berth_api::LogLine {
            at_ms: now_ms(),
            level: meta.level().as_str().to_lowercase(),
            target: meta.target().to_owned(),
            message,
        });
    }
}

/// An event's message and its other fields as ` key=value`.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Adds a line to the ring, dropping the oldest past [`LOG_LINES_MAX`].
pub fn push(mut line: berth_api::LogLine) {
    if let Some((cut, _)) = line.message.char_indices().nth(LOG_LINE_CHARS_MAX) {
        line.message.truncate(cut);
        line.message.push('…');
    }
    // A panic while holding the lock leaves whole lines behind: keep using them.
    let mut ring = RING.lock().unwrap_or_else(|e| e.into_inner());
    ring.push_back(line);
    while ring.len() > LOG_LINES_MAX {
        ring.pop_front();
    }
}

/// The last `n` lines, oldest first.
pub fn recent(n: usize) -> Vec<berth_api::LogLine> {
    let ring = RING.lock().unwrap_or_else(|e| e.into_inner());
    ring.iter()
        .skip(ring.len().saturating_sub(n))
        .cloned()
        .collect()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogQuery {
    /// The newest lines to return (default and most: all that are kept, 2000).
    limit: Option<u64>,
}

/// The daemon's own recent log, oldest line first: operators only, as it can name hosts,
/// paths and errors a read-only token is not shown.
#[utoipa::path(get, path = "/v1/logs", tag = "daemon", params(LogQuery),
    responses(
        (status = 200, body = berth_api::DaemonLog),
        (status = 403, description = "A read-only token", body = berth_api::ErrorBody),
    ))]
pub(crate) async fn daemon_log(
    Operator(_): Operator,
    q: Params<LogQuery>,
) -> Result<Response, ApiError> {
    let q = params(q)?;
    let max = LOG_LINES_MAX as u64;
    let limit = list_limit(q.limit, max, max)?;
    let body = berth_api::DaemonLog {
        lines: recent(usize::try_from(limit).unwrap_or(LOG_LINES_MAX)),
        kept_max: max,
    };
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn the_ring_keeps_the_newest_lines_with_their_fields_and_no_more() {
        let subscriber = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(host = "sim-small-1", vm = 7u64, "ring test: probe failed");
            for i in 0..LOG_LINES_MAX + 5 {
                tracing::info!(i, "ring test: filler");
            }
            tracing::error!(error = %"disk full", "ring test: last");
        });
        let lines = recent(LOG_LINES_MAX + 100);
        assert_eq!(lines.len(), LOG_LINES_MAX);
        let last = lines.last().unwrap();
        assert_eq!(last.level, "error");
        assert_eq!(last.message, "ring test: last error=disk full");
        assert!(last.target.ends_with("logs::tests"), "{}", last.target);
        assert!(
            !lines.iter().any(|l| l.message.contains("probe failed")),
            "the oldest went first"
        );
        assert_eq!(
            recent(2)[0].message,
            format!("ring test: filler i={}", LOG_LINES_MAX + 4)
        );
        push(berth_api::LogLine {
            at_ms: 1,
            level: "info".into(),
            target: "t".into(),
            message: "é".repeat(LOG_LINE_CHARS_MAX + 10),
        });
        let long = &recent(1)[0].message;
        assert_eq!(long.chars().count(), LOG_LINE_CHARS_MAX + 1);
        assert!(long.ends_with('…'));
    }
}
