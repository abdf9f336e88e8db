//! The answer of `POST /v1/predict/drain`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Waits in one forecast.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WaitStats {
    pub mean_wait_ms: u64,
    pub p95_wait_ms: u64,
    pub max_wait_ms: u64,
    /// Requests still waiting at the horizon.
    pub still_waiting: u64,
}

/// The replayed arrivals' waits, apart from the queue's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArrivalsForecast {
    /// `recent` or `none`.
    pub source: String,
    pub requests: u64,
    pub without: WaitStats,
    pub with: WaitStats,
}

/// Waits over the horizon without and with the hosts drained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DrainForecast {
    pub hosts: Vec<String>,
    pub horizon_ms: u64,
    /// The queue as it is.
    pub without: WaitStats,
    /// The queue with the hosts drained.
    pub with: WaitStats,
    pub arrivals: ArrivalsForecast,
}
