//! Building a host's driver from its description: the one place that knows which driver kinds
//! this daemon can run and which options each takes. A new driver is added here (see the
//! drivers crate's `GUIDE.md`).

use std::sync::Arc;

use berth_drivers::Driver;
use berth_drivers::sim::SimWorld;
use berth_sched::DriverKind;

use crate::wire::{FieldError, WireHost};

/// Checks that this daemon can drive hosts of `kind` with these options.
pub(crate) fn check_driver(kind: DriverKind, host: &WireHost) -> Result<(), FieldError> {
    match kind {
        DriverKind::Sim => match host.options.keys().next() {
            Some(k) => Err(FieldError::new(
                "options",
                format!("the sim driver takes no options, got `{k}`"),
            )),
            None => Ok(()),
        },
        DriverKind::Libvirt | DriverKind::Parallels => Err(FieldError::new(
            "driver",
            format!("driver `{kind}` is not built into this daemon yet"),
        )),
    }
}

/// The driver for one host; the host was checked with `check_driver` when it was added.
pub(crate) fn build_driver(
    host: &WireHost,
    sim: &Arc<SimWorld>,
) -> Result<Arc<dyn Driver>, FieldError> {
    let kind = host.validate()?;
    match kind {
        DriverKind::Sim => Ok(Arc::new(sim.host(
            &host.name,
            host.vcpus,
            host.memory_mib,
            host.images.clone(),
        ))),
        DriverKind::Libvirt | DriverKind::Parallels => {
            check_driver(kind, host)?;
            Err(FieldError::new("driver", format!("no driver for `{kind}`")))
        }
    }
}
