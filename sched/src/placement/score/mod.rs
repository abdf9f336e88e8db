//! Scorers: each rates a feasible host for one more VM, as an integer from 0 to `SCORE_MAX`.

pub mod locality;
pub mod pack;
pub mod spread;

use crate::config::Weights;
use crate::fleet::{Host, Need};

pub const SCORE_MAX: u64 = 1000;

pub(crate) struct Scorer {
    pub name: &'static str,
    pub score: fn(&Host, &Need) -> u64,
    pub weight: fn(&Weights) -> u32,
}

pub(crate) const SCORERS: [Scorer; 3] = [pack::SCORER, spread::SCORER, locality::SCORER];

/// The weighted sum of every scorer whose weight is not zero.
pub(crate) fn total(host: &Host, need: &Need, weights: &Weights) -> u64 {
    SCORERS
        .iter()
        .map(|s| match (s.weight)(weights) {
            0 => 0,
            w => u64::from(w) * (s.score)(host, need),
        })
        .sum()
}

/// How full the host would be after one more VM, averaged over vCPUs and memory.
pub(crate) fn fullness_after(host: &Host, need: &Need) -> u64 {
    let part = |used: i64, cap: i64| -> u64 {
        if cap <= 0 {
            return SCORE_MAX;
        }
        ((used.max(0) as u64).saturating_mul(SCORE_MAX) / cap as u64).min(SCORE_MAX)
    };
    let cpu = part(
        host.used.cpu_milli + need.cpu_milli,
        host.capacity.cpu_milli,
    );
    let mem = part(
        host.used.memory_mib + need.memory_mib,
        host.capacity.memory_mib,
    );
    (cpu + mem) / 2
}
