//! Image locality: prefer hosts that already hold the template's base image, so the VM boots
//! from a cached backing file instead of waiting for a copy.

use super::{SCORE_MAX, Scorer};
use crate::config::Weights;
use crate::fleet::{Host, Need};

pub const NAME: &str = "locality";

pub(crate) const SCORER: Scorer = Scorer {
    name: NAME,
    score,
    weight,
};

fn score(host: &Host, need: &Need) -> u64 {
    if host.has_image(need.image) {
        SCORE_MAX
    } else {
        0
    }
}

fn weight(w: &Weights) -> u32 {
    w.locality
}
