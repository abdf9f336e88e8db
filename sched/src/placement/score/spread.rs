//! Spread: prefer the emptiest host, so that noisy VMs share hosts less.

use super::{SCORE_MAX, Scorer, fullness_after};
use crate::config::Weights;
use crate::fleet::{Host, Need};

pub const NAME: &str = "spread";

pub(crate) const SCORER: Scorer = Scorer {
    name: NAME,
    score,
    weight,
};

fn score(host: &Host, need: &Need) -> u64 {
    SCORE_MAX - fullness_after(host, need).min(SCORE_MAX)
}

fn weight(w: &Weights) -> u32 {
    w.spread
}
