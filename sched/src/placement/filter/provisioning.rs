//! A bounded number of VMs provisioning at once per host, so a burst cannot swamp one host.

use super::{Filter, Probe};
use crate::placement::Reason;

pub const NAME: &str = "provisioning";

pub(crate) const FILTER: Filter = Filter { name: NAME, check };

fn check(p: &Probe<'_>) -> Option<Reason> {
    (p.host.provisioning >= p.provisioning_max).then_some(Reason::ProvisioningBusy)
}
