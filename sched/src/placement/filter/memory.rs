//! Enough memory, after the host's overcommit ratio.

use super::{Filter, Probe};
use crate::placement::Reason;

pub const NAME: &str = "memory";

pub(crate) const FILTER: Filter = Filter { name: NAME, check };

fn check(p: &Probe<'_>) -> Option<Reason> {
    (p.avail.memory_mib < p.need.memory_mib).then_some(Reason::Memory)
}
