//! Pulses: what the daemon samples on a fixed period (queue length, running VMs, utilisation
//! per host class) and keeps for a day, as `GET /v1/pulses` serves them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /v1/pulses`: samples oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PulseList {
    pub pulses: Vec<Pulse>,
    /// How often the daemon samples (ms).
    pub period_ms: u64,
    /// How long samples are kept (ms); older ones are deleted.
    pub kept_ms: u64,
    /// Set when the answer was cut at its row limit: ask again with this as `since_ms` for
    /// the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_since_ms: Option<u64>,
}

/// One sample of the whole fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Pulse {
    /// When it was taken (ms since the Unix epoch, the daemon's clock).
    pub at_ms: u64,
    /// Requests waiting in the queue.
    pub waiting_requests: u64,
    /// VMs queued, waiting for a host.
    pub waiting_vms: u64,
    /// VMs in the `running` state.
    pub running_vms: u64,
    /// One entry per host class, by name.
    pub classes: Vec<ClassPulse>,
}

/// One host class in a sample. Capacity counts the hosts in service (`ready` or `draining`);
/// use counts what VMs hold on them (placed, booting, running, held, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassPulse {
    pub class: String,
    /// Hosts of the class, in any state.
    pub hosts: u64,
    /// Hosts of the class in service (`ready` or `draining`).
    pub hosts_in_service: u64,
    /// vCPUs in thousandths on the hosts in service, overcommit included.
    pub vcpus_milli: u64,
    /// vCPUs in thousandths held by VMs on those hosts.
    pub vcpus_used_milli: u64,
    /// Slots by kind on the hosts in service; empty when the class has none.
    pub slots: Vec<SlotPulse>,
}

/// Slots of one kind in a class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlotPulse {
    pub kind: String,
    pub capacity: u64,
    pub used: u64,
}

/// `used` over `capacity` as a fraction from 0 to 1; `None` without capacity.
pub fn fraction(used: u64, capacity: u64) -> Option<f64> {
    (capacity > 0).then(|| (used as f64 / capacity as f64).min(1.0))
}

impl ClassPulse {
    /// vCPU utilisation, 0 to 1; `None` when no host of the class is in service.
    pub fn vcpu_utilisation(&self) -> Option<f64> {
        fraction(self.vcpus_used_milli, self.vcpus_milli)
    }

    /// The fullest slot kind's utilisation, 0 to 1; `None` when the class has no slots.
    pub fn slot_utilisation(&self) -> Option<f64> {
        self.slots
            .iter()
            .filter_map(|s| fraction(s.used, s.capacity))
            .reduce(f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilisation_is_a_fraction_or_nothing() {
        let mut c = ClassPulse {
            class: "sim-mac".into(),
            hosts: 2,
            hosts_in_service: 2,
            vcpus_milli: 8000,
            vcpus_used_milli: 2000,
            slots: vec![
                SlotPulse {
                    kind: "macos".into(),
                    capacity: 4,
                    used: 3,
                },
                SlotPulse {
                    kind: "gpu".into(),
                    capacity: 0,
                    used: 0,
                },
            ],
        };
        assert_eq!(c.vcpu_utilisation(), Some(0.25));
        assert_eq!(c.slot_utilisation(), Some(0.75));
        c.vcpus_milli = 0;
        c.slots.clear();
        assert_eq!(c.vcpu_utilisation(), None);
        assert_eq!(c.slot_utilisation(), None);
    }
}
