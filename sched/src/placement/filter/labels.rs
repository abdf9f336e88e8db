//! The host must carry every label the request asks for.

use super::{Filter, Probe};
use crate::placement::Reason;

pub const NAME: &str = "labels";

pub(crate) const FILTER: Filter = Filter { name: NAME, check };

fn check(p: &Probe<'_>) -> Option<Reason> {
    let missing = p.host.label_bloom & p.need.label_bloom != p.need.label_bloom
        || !p.need.labels.iter().all(|&l| p.host.has_label(l));
    missing.then_some(Reason::Labels)
}
