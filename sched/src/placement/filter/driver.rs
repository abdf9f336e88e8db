//! The host's driver must be one the template can run on.

use super::{Filter, Probe};
use crate::placement::Reason;

pub const NAME: &str = "driver";

pub(crate) const FILTER: Filter = Filter { name: NAME, check };

fn check(p: &Probe<'_>) -> Option<Reason> {
    (p.host.spec.driver.bit() & p.need.drivers == 0).then_some(Reason::Driver)
}
