//! Only `Ready` hosts take new VMs.

use super::{Filter, Probe};
use crate::model::HostState;
use crate::placement::Reason;

pub const NAME: &str = "state";

pub(crate) const FILTER: Filter = Filter { name: NAME, check };

fn check(p: &Probe<'_>) -> Option<Reason> {
    if p.host.removed {
        return Some(Reason::HostRemoved);
    }
    match p.host.state {
        HostState::Ready => None,
        HostState::Unknown => Some(Reason::HostUnknown),
        HostState::Draining => Some(Reason::HostDraining),
        HostState::Maintenance => Some(Reason::HostMaintenance),
        HostState::Offline => Some(Reason::HostOffline),
        HostState::Error => Some(Reason::HostError),
    }
}
