//! Enough vCPUs, after the host's overcommit ratio.

use super::{Filter, Probe};
use crate::placement::Reason;

pub const NAME: &str = "cpu";

pub(crate) const FILTER: Filter = Filter { name: NAME, check };

fn check(p: &Probe<'_>) -> Option<Reason> {
    (p.avail.cpu_milli < p.need.cpu_milli).then_some(Reason::Cpu)
}
