//! Every limit a client of the API meets, in one place, each with its unit last. A limit with
//! a default also has a maximum: no client, read-only or anonymous, can make one answer cost
//! more than these allow.

/// Rows one list answer carries at most (`limit` on every list route); page on with the
/// answer's cursor (`next_before` or `next_after`).
pub const LIST_ROWS_MAX: u64 = 100_000;
/// Requests (newest first) listed when no `limit` is given.
pub const REQUEST_LIST_DEFAULT: u64 = 1000;
/// Changes (newest first) listed when no `limit` is given.
pub const CHANGE_LIST_DEFAULT: u64 = 100;
/// The most changes one `GET /v1/changes` lists: each costs a grouped read of its VMs.
pub const CHANGE_LIST_MAX: u64 = 10_000;
/// The most requests `GET /v1/changes/{id}` shows of one change (the oldest first).
pub const CHANGE_REQUESTS_MAX: u64 = 10_000;
/// Audit rows (newest first) listed when no `limit` is given.
pub const AUDIT_LIST_DEFAULT: u64 = 1000;
/// Hook runs listed when no `limit` is given.
pub const HOOK_RUNS_LIST_DEFAULT: u64 = 100;
/// VMs listed when no `limit` is given: the most, so that the console sees a whole fleet.
pub const VM_LIST_DEFAULT: u64 = LIST_ROWS_MAX;
/// Waiting requests `GET /v1/queue` shows when no limit is given: each costs a why-waiting
/// evaluation over every host inside the control loop.
pub const QUEUE_LIST_DEFAULT: usize = 100;
/// The most waiting requests one `GET /v1/queue` shows.
pub const QUEUE_LIST_MAX: usize = 1000;
/// How far ahead a forecast looks when the caller does not say: an hour.
pub const FORECAST_HORIZON_DEFAULT_S: u64 = 3600;
/// The furthest a forecast may look: a day (beyond that, arrivals it can only guess matter
/// more than the state it starts from).
pub const FORECAST_HORIZON_MAX_S: u64 = 24 * 3600;
/// Simulated events one forecast run may take (it makes two); a deeper queue or a longer
/// horizon is refused with a 422 rather than left to run for minutes.
pub const FORECAST_EVENTS_MAX: u64 = 2_000_000;
/// Forecasts running at once, across all clients: each takes a core while it runs, and on a
/// deep queue hundreds of MiB (two copies of the scheduler, the replayed arrivals).
pub const FORECASTS_AT_ONCE_MAX: usize = 1;
/// Requests one forecast replays: those waiting plus those arriving again. Memory follows
/// them (a copy of the scheduler holding them, for each of the two runs): a few KiB each.
pub const FORECAST_REQUESTS_MAX: usize = 50_000;
/// How long the table of queue positions and estimated starts is kept before a reader that
/// needs it has it made again: at most one estimate per this period, whoever asks.
pub const ETA_REFRESH_MS: u64 = 5_000;
/// How far ahead an estimate of starts looks: a request not started by then is "later than"
/// that.
pub const ETA_HORIZON_MS: u64 = 24 * 3_600_000;
/// Simulated instants one estimate of starts may take; requests still waiting when it stops
/// are "later than" where it got.
pub const ETA_STEPS_MAX: u64 = 200_000;
/// Waiting requests past which no estimate is made (positions and starts are left out): the
/// copy of the scheduler costs a few KiB per request.
pub const ETA_REQUESTS_MAX: usize = FORECAST_REQUESTS_MAX;
/// Long lists (requests, VMs, audit) built at once, across all clients; others wait their turn.
pub const LIST_ANSWERS_AT_ONCE_MAX: usize = 2;
/// The largest request body the API reads; a larger one is refused with a 413 before it is
/// parsed. The largest real body (a host with its options and labels) is a few KiB.
pub const BODY_BYTES_MAX: usize = 1 << 20;
/// Pulses one `GET /v1/pulses` answer carries at most (a day at a 20 s period; an hour at
/// the shortest period); page on with the answer's `next_since_ms`.
pub const PULSE_ROWS_MAX: u64 = 4320;
/// The hosts one forecast may drain.
pub const FORECAST_HOSTS_MAX: usize = 10_000;
/// Events the daemon keeps for event-stream readers that reconnect with `Last-Event-ID` (once
/// anyone has read the stream).
pub const EVENTS_KEPT_MAX: usize = 10_000;
/// Events a live event-stream reader may fall behind before it is told it lagged.
pub const EVENTS_BUFFERED_MAX: usize = 16_384;

use crate::wire::FieldError;

/// Checks a `limit` query parameter: `default` when absent, else 1 to `max`.
pub fn list_limit(limit: Option<u64>, default: u64, max: u64) -> Result<u64, FieldError> {
    match limit {
        None => Ok(default),
        Some(l) if (1..=max).contains(&l) => Ok(l),
        Some(l) => Err(FieldError::new(
            "limit",
            format!("must be 1 to {max}, got {l}"),
        )),
    }
}
