//! Pack: prefer the fullest host, keeping whole hosts free for large VMs and gangs.

use super::{SCORE_MAX, Scorer, fullness_after};
use crate::config::Weights;
use crate::fleet::{Host, Need};

pub const NAME: &str = "pack";

pub(crate) const SCORER: Scorer = Scorer {
    name: NAME,
    score,
    weight,
};

fn score(host: &Host, need: &Need) -> u64 {
    fullness_after(host, need).min(SCORE_MAX)
}

fn weight(w: &Weights) -> u32 {
    w.pack
}
