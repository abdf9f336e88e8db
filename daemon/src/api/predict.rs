//! `POST /v1/predict/drain`: what draining some hosts would do to the queue. The control loop
//! hands out a copy of its scheduler; off the loop, the simulator runs two copies of it ahead
//! (as is, and with the hosts drained) with the same seed and no new arrivals, and the answer
//! compares the queue waits of the requests waiting now.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use berth_sched::{HostId, Input, Scheduler};
use berth_sim::{Forecast, Profile, SimConfig, SimError, Simulation};
use serde::Deserialize;
use serde_json::json;

use super::{ApiResult, AppState, auth, ok_json, parse, query};
use crate::control::{Answer, ApiError, Query};

/// How far ahead a forecast looks when the caller does not say: an hour.
const HORIZON_DEFAULT_S: u64 = 3600;
/// The furthest a forecast may look: a week (beyond that, new arrivals, which it leaves out,
/// matter more than the state it starts from).
const HORIZON_MAX_S: u64 = 7 * 24 * 3600;
/// The hosts one forecast may drain.
const HOSTS_MAX: usize = 10_000;
/// Both runs use this seed, so they differ only by the drain.
const FORECAST_SEED: u64 = 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    hosts: Vec<String>,
    horizon_s: Option<u64>,
}

pub(super) async fn drain(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    // A forecast changes nothing: read-only tokens may ask.
    auth(&state, &headers, false)?;
    let b: DrainBody = parse(&body)?;
    if b.hosts.is_empty() || b.hosts.len() > HOSTS_MAX {
        return Err(ApiError::field(
            400,
            "hosts",
            format!("name 1 to {HOSTS_MAX} hosts, got {}", b.hosts.len()),
        ));
    }
    let horizon_s = b.horizon_s.unwrap_or(HORIZON_DEFAULT_S);
    if horizon_s == 0 || horizon_s > HORIZON_MAX_S {
        return Err(ApiError::field(
            400,
            "horizon_s",
            format!("must be 1 to {HORIZON_MAX_S} seconds, got {horizon_s}"),
        ));
    }
    let Answer::Scheduler(s) = query(&state, Query::Scheduler).await? else {
        return Err(ApiError::new(
            500,
            "unexpected answer from the control loop",
        ));
    };
    let mut ids = Vec::with_capacity(b.hosts.len());
    for name in &b.hosts {
        let host = s
            .host_by_name(name)
            .ok_or_else(|| ApiError::field(404, "host", format!("no host named `{name}`")))?;
        ids.push(host.id);
    }
    let horizon_ms = horizon_s * 1000;
    let joined = tokio::task::spawn_blocking(move || forecast_drain(*s, &ids, horizon_ms)).await;
    let (without, with) = match joined {
        Ok(Ok(both)) => both,
        Ok(Err(e)) => return Err(ApiError::new(500, format!("forecast failed: {e}"))),
        Err(_) => return Err(ApiError::new(500, "forecast task failed")),
    };
    ok_json(
        StatusCode::OK,
        json!({
            "hosts": b.hosts,
            "horizon_ms": horizon_ms,
            "without": stats_json(&without),
            "with": stats_json(&with),
        }),
    )
}

fn stats_json(f: &Forecast) -> serde_json::Value {
    json!({
        "mean_wait_ms": f.mean_wait_ms,
        "p95_wait_ms": f.p95_wait_ms,
        "max_wait_ms": f.max_wait_ms,
        "still_waiting": f.still_waiting,
    })
}

/// Runs `s` ahead by `horizon_ms` twice, as is and with `hosts` drained, and returns both
/// forecasts (without, with). A host that is draining already, or out of service, stays so.
pub(crate) fn forecast_drain(
    s: Scheduler,
    hosts: &[HostId],
    horizon_ms: u64,
) -> Result<(Forecast, Forecast), SimError> {
    let config = SimConfig {
        latency: Profile::Default,
        seed: FORECAST_SEED,
        mtbf_ms: None,
        ..SimConfig::default()
    };
    let mut drained = Simulation::from_scheduler(s.clone(), config.clone());
    for &host in hosts {
        // Refused only for a host that is not taking VMs anyway: the same both ways.
        let _ = drained.handle(Input::Drain(host));
    }
    let without = Simulation::from_scheduler(s, config).forecast(horizon_ms)?;
    let with = drained.forecast(horizon_ms)?;
    Ok((without, with))
}
