//! A free counted slot where the template takes one (two macOS guests per Mac).

use super::{Filter, Probe};
use crate::placement::Reason;

pub const NAME: &str = "slots";

pub(crate) const FILTER: Filter = Filter { name: NAME, check };

fn check(p: &Probe<'_>) -> Option<Reason> {
    match p.need.slot {
        Some(k) if p.avail.slots[k] < 1 => Some(Reason::Slots),
        _ => None,
    }
}
