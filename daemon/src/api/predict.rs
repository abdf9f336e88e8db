//! `POST /v1/predict/drain`: what draining some hosts would do to the queue. The control loop
//! hands out a copy of its scheduler; off the loop, the simulator runs two copies of it ahead
//! (as is, and with the hosts drained) with the same seed, and the answer compares the queue
//! waits of the requests waiting now, and of the arrivals the run assumes: by default the
//! requests of the last `horizon_s`, submitted again one horizon later (the next hour looks
//! like the last one), with the shapes they asked for and the time their jobs ran.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::db::sql;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use berth_api as api;
use berth_sched::{HostId, Input, Scheduler};
use berth_sim::runtimes::RunModel;
use berth_sim::{Budget, Forecast, Profile, SimConfig, SimError, Simulation, WaitForecast};
use berth_traces::Record;

use super::ApiError;
use super::{ApiResult, AppState, Reader, ok_json, parse, query};
use crate::DaemonError;
use crate::control::{Answer, Query};
use crate::export::request_record;
use crate::limits::{
    FORECAST_EVENTS_MAX, FORECAST_HORIZON_DEFAULT_S, FORECAST_HORIZON_MAX_S, FORECAST_HOSTS_MAX,
    FORECAST_REQUESTS_MAX, FORECASTS_AT_ONCE_MAX,
};
use crate::wire::{WireRequest, WireTemplate};

/// Both runs use this seed, so they differ only by the drain.
const FORECAST_SEED: u64 = 1;
/// Replayed arrivals get ids from here on, apart from every request the scheduler holds.
const ARRIVAL_ID_BASE: u64 = 1 << 62;
/// How long a job is taken to run when neither its request nor its template says.
const RUN_DEFAULT_MS: u64 = 3_600_000;

/// What draining some hosts would do to waits over the next `horizon_s`. It changes
/// nothing, so read-only tokens may ask (one forecast at a time each).
#[utoipa::path(post, path = "/v1/predict/drain", tag = "hosts", request_body = api::DrainQuestion,
    responses((status = 200, body = api::DrainForecast)))]
pub(super) async fn drain(
    Reader(actor): Reader,
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult {
    let b: api::DrainQuestion = parse(&body)?;
    if b.hosts.is_empty() || b.hosts.len() > FORECAST_HOSTS_MAX {
        return Err(ApiError::field(
            400,
            "hosts",
            format!(
                "name 1 to {FORECAST_HOSTS_MAX} hosts, got {}",
                b.hosts.len()
            ),
        ));
    }
    let horizon_s = b.horizon_s.unwrap_or(FORECAST_HORIZON_DEFAULT_S);
    if horizon_s == 0 || horizon_s > FORECAST_HORIZON_MAX_S {
        return Err(ApiError::field(
            400,
            "horizon_s",
            format!("must be 1 to {FORECAST_HORIZON_MAX_S} seconds, got {horizon_s}"),
        ));
    }
    // Taken before the scheduler is copied: the copy is the expensive part of a deep queue.
    let slot = ForecastSlot::take(&state.forecasts, &actor.who)?;
    let waiting_max = FORECAST_REQUESTS_MAX;
    let (s, run_model) = match query(&state, Query::Scheduler { waiting_max }).await? {
        Answer::Scheduler(s, run_model) => (s, run_model),
        Answer::TooManyWaiting(waiting) => return Err(too_many(waiting, 0)),
        _ => {
            return Err(ApiError::new(
                500,
                "unexpected answer from the control loop",
            ));
        }
    };
    let mut ids = Vec::with_capacity(b.hosts.len());
    for name in &b.hosts {
        let host = s
            .host_by_name(name)
            .ok_or_else(|| ApiError::field(404, "host", format!("no host named `{name}`")))?;
        ids.push(host.id);
    }
    let horizon_ms = horizon_s * 1000;
    let source = b.arrivals.as_deref().unwrap_or("recent");
    let arrivals = match source {
        "recent" => {
            let now_ms = s.now_ms();
            state
                .reads
                .read(move |c| recent_arrivals(c, now_ms, horizon_ms))
                .await?
        }
        "none" => Vec::new(),
        other => {
            return Err(ApiError::field(
                400,
                "arrivals",
                format!("expected recent or none, got `{other}`"),
            ));
        }
    };
    let n_arrivals = arrivals.len();
    forecast_size(s.queue_len(), n_arrivals)?;
    let budget = Budget {
        steps_max: Some(FORECAST_EVENTS_MAX),
        cancel: Some(slot.cancel.clone()),
    };
    let joined = tokio::task::spawn_blocking(move || {
        forecast_drain(*s, run_model, &ids, horizon_ms, arrivals, budget)
    })
    .await;
    drop(slot);
    let (without, with) = match joined {
        Ok(Ok(both)) => both,
        Ok(Err(SimError::OverBudget { steps })) => {
            return Err(ApiError::field(
                422,
                "horizon_s",
                format!(
                    "the forecast stopped after {steps} simulated steps, its budget: \
                     the queue is too deep to look {horizon_s} s ahead; ask for a shorter horizon_s"
                ),
            ));
        }
        Ok(Err(e)) => return Err(ApiError::new(500, format!("forecast failed: {e}"))),
        Err(_) => return Err(ApiError::new(500, "forecast task failed")),
    };
    let body = api::DrainForecast {
        hosts: b.hosts,
        horizon_ms,
        without: waits(&without.waiting),
        with: waits(&with.waiting),
        arrivals: api::ArrivalsForecast {
            source: source.to_owned(),
            requests: n_arrivals as u64,
            without: waits(&without.arrivals),
            with: waits(&with.arrivals),
        },
    };
    ok_json(StatusCode::OK, &body)
}

/// Refuses a forecast that would replay more than `FORECAST_REQUESTS_MAX` requests: its memory
/// follows them.
fn forecast_size(waiting: usize, arrivals: usize) -> Result<(), ApiError> {
    if waiting + arrivals <= FORECAST_REQUESTS_MAX {
        return Ok(());
    }
    Err(too_many(waiting, arrivals))
}

/// The refusal of a forecast that would replay `waiting` + `arrivals` requests, too many.
fn too_many(waiting: usize, arrivals: usize) -> ApiError {
    ApiError::field(
        422,
        "horizon_s",
        format!(
            "a forecast replays at most {FORECAST_REQUESTS_MAX} requests and this one would \
             replay {} ({waiting} waiting, {arrivals} arriving again from the last horizon_s): \
             ask for a shorter horizon_s, or arrivals \"none\"",
            waiting + arrivals
        ),
    )
}

fn waits(w: &WaitForecast) -> api::WaitStats {
    api::WaitStats {
        mean_wait_ms: w.mean_wait_ms,
        p95_wait_ms: w.p95_wait_ms,
        max_wait_ms: w.max_wait_ms,
        still_waiting: w.still_waiting,
    }
}

/// The requests submitted from `horizon_ms` before `now_ms` up to `now_ms` (except those
/// rejected or cancelled), as arrivals one horizon later. Each runs as long as its longest-running VM did
/// (at least its estimate while one still runs), or its estimate if none ran yet.
fn recent_arrivals(
    c: &mut crate::db::Db,
    now_ms: u64,
    horizon_ms: u64,
) -> Result<Vec<Record>, DaemonError> {
    let from_ms = now_ms.saturating_sub(horizon_ms);
    let templates: BTreeMap<String, WireTemplate> = c
        .rows("SELECT spec FROM templates", &[], |r| {
            Ok(serde_json::from_str::<WireTemplate>(r.str(0)?.unwrap_or_default()).ok())
        })
        .map_err(sql("reading templates for a forecast"))?
        .into_iter()
        .flatten()
        .map(|t| (t.name.clone(), t))
        .collect();
    // Ids grow with submit times: walk back from the newest until the window is left.
    let mut window: Vec<(u64, WireRequest, u64)> = Vec::new();
    let failed = sql("reading requests for a forecast");
    c.each_while(
        "SELECT id, spec, submitted_ms, state FROM requests ORDER BY id DESC",
        &[],
        |row| {
            let submitted_ms = row.u64(2).map_err(&failed)?;
            if submitted_ms < from_ms {
                return Ok(false);
            }
            let state = row.str(3).map_err(&failed)?.unwrap_or_default();
            if submitted_ms > now_ms || state == "rejected" || state == "cancelled" {
                return Ok(true);
            }
            let spec = row.str(1).map_err(&failed)?.unwrap_or_default();
            if let Ok(w) = serde_json::from_str::<WireRequest>(spec) {
                window.push((row.u64(0).map_err(&failed)?, w, submitted_ms));
            }
            Ok::<bool, DaemonError>(true)
        },
    )?;
    let Some(first) = window.iter().map(|(id, _, _)| *id).min() else {
        return Ok(Vec::new());
    };
    // How long each request's VMs ran: from `running` to the job's end, or until now.
    let mut ran: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
    let mut since: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let failed = sql("reading vm history for a forecast");
    c.each(
        "SELECT v.request, h.vm, h.at_ms, h.to_state FROM vms v
         JOIN vm_history h ON h.vm = v.id WHERE v.request >= ?1 ORDER BY h.id",
        crate::args![first],
        |row| {
            let (request, vm, at_ms) = (
                row.u64(0).map_err(&failed)?,
                row.u64(1).map_err(&failed)?,
                row.u64(2).map_err(&failed)?,
            );
            match row.str(3).map_err(&failed)?.unwrap_or_default() {
                "running" => {
                    since.entry(vm).or_insert((request, at_ms));
                }
                "releasing" | "held" | "done" | "failed" | "lost" | "cancelled" => {
                    if let Some((request, start)) = since.remove(&vm) {
                        let e = ran.entry(request).or_insert((0, false));
                        e.0 = e.0.max(at_ms.saturating_sub(start));
                    }
                }
                _ => {}
            }
            Ok::<(), DaemonError>(())
        },
    )?;
    for (request, start) in since.into_values() {
        let e = ran.entry(request).or_insert((0, false));
        e.0 = e.0.max(now_ms.saturating_sub(start));
        e.1 = true;
    }
    let mut arrivals = Vec::with_capacity(window.len());
    for (id, w, submitted_ms) in window.into_iter().rev() {
        let template = templates.get(&w.template);
        let expected = w
            .expected_run_ms
            .or(template.map(|t| t.expected_run_ms))
            .unwrap_or(RUN_DEFAULT_MS);
        let duration_ms = match ran.get(&id) {
            Some(&(ms, false)) => ms,
            Some(&(ms, true)) => ms.max(expected),
            None => expected,
        };
        arrivals.push(Record {
            at_ms: submitted_ms + horizon_ms,
            body: berth_traces::RecordBody::Request(request_record(
                ARRIVAL_ID_BASE + id,
                &w,
                template,
                duration_ms,
            )),
        });
    }
    Ok(arrivals)
}

/// A running forecast's place: one per token, `FORECASTS_AT_ONCE_MAX` in all. Dropping it
/// (the answer is written, or the client left and axum dropped the handler) frees the place
/// and cancels the runs, which stop at their next step.
struct ForecastSlot {
    running: Arc<Mutex<BTreeSet<String>>>,
    token: String,
    cancel: Arc<AtomicBool>,
}

impl ForecastSlot {
    fn take(
        forecasts: &Arc<Mutex<BTreeSet<String>>>,
        token: &str,
    ) -> Result<ForecastSlot, ApiError> {
        let mut running = forecasts.lock().unwrap_or_else(|e| e.into_inner());
        if running.contains(token) {
            return Err(ApiError::new(
                429,
                format!("token {token} has a forecast running already: wait for its answer"),
            ));
        }
        if running.len() >= FORECASTS_AT_ONCE_MAX {
            return Err(ApiError::new(
                429,
                format!(
                    "the daemon runs {FORECASTS_AT_ONCE_MAX} forecast(s) at once and one is running: try again shortly"
                ),
            ));
        }
        running.insert(token.to_owned());
        Ok(ForecastSlot {
            running: forecasts.clone(),
            token: token.to_owned(),
            cancel: Arc::default(),
        })
    }
}

impl Drop for ForecastSlot {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.remove(&self.token);
    }
}

/// Runs `s` ahead by `horizon_ms` twice, as is and with `hosts` drained, with the same
/// `arrivals` and running jobs ending as `run_model` says, and returns both forecasts
/// (without, with). A host that is draining already,
/// or out of service, stays so. The two runs go one after the other, so a forecast holds one
/// simulation at a time: on a deep queue each takes hundreds of MiB.
pub(crate) fn forecast_drain(
    s: Scheduler,
    run_model: RunModel,
    hosts: &[HostId],
    horizon_ms: u64,
    arrivals: Vec<Record>,
    budget: Budget,
) -> Result<(Forecast, Forecast), SimError> {
    let config = SimConfig {
        latency: Profile::Default,
        seed: FORECAST_SEED,
        mtbf_ms: None,
        run_model,
        ..SimConfig::default()
    };
    let mut as_is = Simulation::from_scheduler(s.clone(), config.clone());
    as_is.set_budget(budget.clone());
    let without = as_is.forecast_with_arrivals(horizon_ms, arrivals.clone())?;
    let mut drained = Simulation::from_scheduler(s, config);
    drained.set_budget(budget);
    for &host in hosts {
        // Refused only for a host that is not taking VMs anyway: the same both ways.
        let _ = drained.handle(Input::Drain(host));
    }
    let with = drained.forecast_with_arrivals(horizon_ms, arrivals)?;
    Ok((without, with))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forecast_of_too_many_requests_is_refused_naming_them() {
        assert!(forecast_size(FORECAST_REQUESTS_MAX, 0).is_ok());
        assert!(forecast_size(FORECAST_REQUESTS_MAX - 10, 10).is_ok());
        let e = forecast_size(FORECAST_REQUESTS_MAX, 1).unwrap_err();
        assert_eq!((e.status, e.field.as_deref()), (422, Some("horizon_s")));
        assert!(e.error.contains("50000 waiting, 1 arriving"), "{}", e.error);
    }

    #[test]
    fn one_forecast_per_token_and_at_most_the_limit_in_all() {
        let running = Arc::default();
        let a = ForecastSlot::take(&running, "a").unwrap();
        let again = ForecastSlot::take(&running, "a").err().unwrap();
        assert_eq!(again.status, 429);
        assert!(again.error.contains("token a"), "{}", again.error);
        assert_eq!(FORECASTS_AT_ONCE_MAX, 1);
        let full = ForecastSlot::take(&running, "c").err().unwrap();
        assert_eq!(full.status, 429);
        // Dropping a slot (the client left) cancels its runs and frees the place.
        let cancel = a.cancel.clone();
        drop(a);
        assert!(cancel.load(Ordering::Relaxed));
        let c = ForecastSlot::take(&running, "c").unwrap();
        drop(c);
        assert!(running.lock().unwrap().is_empty());
    }
}
