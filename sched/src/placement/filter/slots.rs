//! A free counted slot where the template takes one (two macOS guests per Mac).

use super::{Filter, Probe};
use crate::placement::Reason;

pub const NAME: &str = "slots";

pub(crate) const FILTER: Filter = Filter { name: NAME, check };

/// A host with no slot of the kind at all says so apart from one whose slots are taken: the
/// first will never run the VM, the second will when a slot frees.
fn check(p: &Probe<'_>) -> Option<Reason> {
    let k = p.need.slot?;
    if p.host.capacity.slots[k] < 1 {
        Some(Reason::NoSlotKind)
    } else if p.avail.slots[k] < 1 {
        Some(Reason::Slots)
    } else {
        None
    }
}
