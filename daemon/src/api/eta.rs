//! Queue positions and estimated starts of waiting requests, for the request, change and queue
//! answers. The control loop hands out a copy of its scheduler; off the loop, the positions are
//! read from the copy and the simulator runs it forward (`berth_sim::estimate_starts`), as the
//! drain forecast does, with running jobs ending as the jobs that finished say such jobs end
//! (`berth_sim::runtimes`). The result is kept as a table for `ETA_REFRESH_MS` and made again
//! only when someone asks after that, for a waiting request: at most one estimate runs at a
//! time, and readers that come meanwhile wait for it and share it. Every position and estimate
//! in an answer comes from the same table, so they agree with one another; a request that
//! arrived since the table was made has none until the next.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api as api;
use berth_sched::{Positions, RequestId};
use berth_sim::runtimes::RunModel;
use berth_sim::{Eta, EtaConfig, Profile, Starts, estimate_starts};

use super::{AppState, query};
use crate::control::{Answer, Query};
use crate::limits::{ETA_HORIZON_MS, ETA_REFRESH_MS, ETA_REQUESTS_MAX, ETA_STEPS_MAX};

/// Positions and estimated starts as of one copy of the scheduler.
#[derive(Debug, Default)]
pub(crate) struct EtaSnapshot {
    positions: Positions,
    starts: Starts,
}

impl EtaSnapshot {
    /// Positions and estimates from a copy of the scheduler (a run of up to `config`'s bounds,
    /// running jobs ending as `run_model` says such jobs do).
    pub(crate) fn of(
        s: berth_sched::Scheduler,
        run_model: &RunModel,
        config: EtaConfig,
    ) -> EtaSnapshot {
        let positions = s.positions();
        let starts = match estimate_starts(s, None, config, run_model) {
            Ok(starts) => starts,
            Err(error) => {
                tracing::warn!(%error, "estimating when waiting requests start");
                Starts::default()
            }
        };
        EtaSnapshot { positions, starts }
    }

    /// Fills in a waiting request's position and estimated start.
    pub(crate) fn fill(&self, row: &mut api::RequestRow) {
        if row.state != api::RequestState::Waiting {
            return;
        }
        let id = RequestId(row.id);
        let Some(position) = self.positions.of(id) else {
            return;
        };
        row.position = Some(u64::from(position));
        row.queue_len = Some(self.positions.queue_len as u64);
        match self.starts.of(id) {
            Some(Eta::At(at)) => row.eta_ms = Some(at),
            Some(Eta::After(after)) => row.eta_after_ms = Some(after),
            None => {}
        }
    }
}

/// The last table and when it was made.
#[derive(Default)]
pub(crate) struct EtaTable {
    last: tokio::sync::Mutex<Option<(Instant, Arc<EtaSnapshot>)>>,
}

impl EtaTable {
    /// The table, made again first if it is older than `ETA_REFRESH_MS`. `None` when the
    /// queue is too deep to copy or the daemon is shutting down.
    async fn current(&self, state: &AppState) -> Option<Arc<EtaSnapshot>> {
        let mut last = self.last.lock().await;
        if let Some((made, table)) = last.as_ref()
            && made.elapsed() < Duration::from_millis(ETA_REFRESH_MS)
        {
            return Some(table.clone());
        }
        let made = Instant::now();
        let table = match query(
            state,
            Query::Scheduler {
                waiting_max: ETA_REQUESTS_MAX,
            },
        )
        .await
        {
            Ok(Answer::Scheduler(s, run_model)) => {
                let config = EtaConfig {
                    horizon_ms: ETA_HORIZON_MS,
                    steps_max: ETA_STEPS_MAX,
                    latency: Profile::Default,
                };
                let joined =
                    tokio::task::spawn_blocking(move || EtaSnapshot::of(*s, &run_model, config))
                        .await;
                let table = joined.unwrap_or_default();
                tracing::debug!(
                    took_ms = made.elapsed().as_millis() as u64,
                    waiting = table.positions.queue_len,
                    steps = table.starts.steps,
                    "estimated the starts of waiting requests"
                );
                table
            }
            Ok(Answer::TooManyWaiting(waiting)) => {
                tracing::debug!(
                    waiting,
                    "too many waiting requests to estimate their starts"
                );
                EtaSnapshot::default()
            }
            _ => return None,
        };
        let table = Arc::new(table);
        *last = Some((made, table.clone()));
        Some(table)
    }

    /// Fills in the positions and estimated starts of the waiting requests among `rows`; makes
    /// the table again only if one waits and it is stale.
    pub(crate) async fn fill(&self, state: &AppState, rows: &mut [api::RequestRow]) {
        if !rows.iter().any(|r| r.state == api::RequestState::Waiting) {
            return;
        }
        if let Some(table) = self.current(state).await {
            for row in rows {
                table.fill(row);
            }
        }
    }

    /// A change's expected start: that of its waiting request that starts last (the latest
    /// estimate, or "later than" if one has none), from rows already filled in.
    pub(crate) fn change(change: &mut api::ChangeRow, rows: &[api::RequestRow]) {
        let waiting = rows
            .iter()
            .filter(|r| r.state == api::RequestState::Waiting && r.position.is_some());
        (change.eta_ms, change.eta_after_ms) =
            last_start(waiting.map(|r| (r.eta_ms, r.eta_after_ms)));
    }
}

/// The last of some requests' estimated starts `(eta_ms, eta_after_ms)`: the latest estimate,
/// or, past one request's "later than", the latest "later than" alone.
fn last_start(
    starts: impl Iterator<Item = (Option<u64>, Option<u64>)>,
) -> (Option<u64>, Option<u64>) {
    let (mut eta, mut after) = (None, None);
    for s in starts {
        match s {
            (_, Some(a)) => after = after.max(Some(a)),
            (Some(at), None) => eta = eta.max(Some(at)),
            (None, None) => {}
        }
    }
    if after.is_some() {
        eta = None;
    }
    (eta, after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_starts_when_its_last_waiting_request_does() {
        let starts = [(Some(5_000), None), (Some(9_000), None), (None, None)];
        assert_eq!(last_start(starts.into_iter()), (Some(9_000), None));
        // One past the estimate's bounds: the change starts later than that, whatever the rest.
        let starts = [
            (Some(5_000), None),
            (None, Some(7_000)),
            (Some(9_000), None),
        ];
        assert_eq!(last_start(starts.into_iter()), (None, Some(7_000)));
        assert_eq!(last_start(std::iter::empty()), (None, None));
    }
}
