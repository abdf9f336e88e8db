//! The largest capacities and shapes the scheduler takes, in one place. Within them, the sums
//! it keeps (thousandths of vCPUs, MiB, slots, over every host of a fleet) cannot overflow;
//! past them an input is refused with the field and the maximum. The daemon checks its API's
//! input against the same numbers, so a caller hears the same words.

use crate::input::InputError;
use crate::model::{HostSpec, Shape};

/// vCPUs of one host, or of one VM.
pub const VCPUS_MAX: u32 = 1 << 16;
/// Memory of one host, or of one VM: 4 PiB.
pub const MEMORY_MIB_MAX: u64 = 1 << 32;
/// An overcommit ratio in thousandths: at most a hundredfold.
pub const OVERCOMMIT_MILLI_MAX: u32 = 100_000;
/// Slots of one kind on one host.
pub const SLOTS_PER_HOST_MAX: u32 = 1 << 16;

/// Checks that `value` of `field` is 1 to `max`.
pub fn check_range(field: &'static str, value: u64, max: u64) -> Result<(), InputError> {
    if (1..=max).contains(&value) {
        Ok(())
    } else {
        Err(InputError::Invalid {
            field,
            reason: format!("must be 1 to {max}, got {value}"),
        })
    }
}

/// A host's capacity, overcommit ratios and slot counts.
pub fn check_host(spec: &HostSpec) -> Result<(), InputError> {
    check_range("vcpus", spec.vcpus.into(), VCPUS_MAX.into())?;
    check_range("memory_mib", spec.memory_mib, MEMORY_MIB_MAX)?;
    check_range(
        "cpu_overcommit_milli",
        spec.cpu_overcommit_milli.into(),
        OVERCOMMIT_MILLI_MAX.into(),
    )?;
    check_range(
        "memory_overcommit_milli",
        spec.memory_overcommit_milli.into(),
        OVERCOMMIT_MILLI_MAX.into(),
    )?;
    for (kind, n) in &spec.slots {
        if *n > SLOTS_PER_HOST_MAX {
            return Err(InputError::Invalid {
                field: "slots",
                reason: format!("{kind}: at most {SLOTS_PER_HOST_MAX} per host, got {n}"),
            });
        }
    }
    Ok(())
}

/// What a probe measured.
pub fn check_measured(vcpus: u32, memory_mib: u64) -> Result<(), InputError> {
    check_range("vcpus", vcpus.into(), VCPUS_MAX.into())?;
    check_range("memory_mib", memory_mib, MEMORY_MIB_MAX)
}

/// One VM's shape.
pub fn check_shape(shape: Shape) -> Result<(), InputError> {
    check_range("vcpus", shape.vcpus.into(), VCPUS_MAX.into())?;
    check_range("memory_mib", shape.memory_mib, MEMORY_MIB_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DriverKind;

    #[test]
    fn the_largest_host_fits_the_sums() {
        // A fleet of a million of the largest hosts, overcommitted the most, still fits i64.
        let per_host = i64::from(VCPUS_MAX) * i64::from(OVERCOMMIT_MILLI_MAX);
        assert!(per_host.checked_mul(1_000_000).is_some());
        let mut spec = HostSpec::new(1, "h", DriverKind::Sim, u32::MAX, 1024);
        assert_eq!(
            check_host(&spec),
            Err(InputError::Invalid {
                field: "vcpus",
                reason: format!("must be 1 to {VCPUS_MAX}, got {}", u32::MAX),
            })
        );
        spec.vcpus = 8;
        spec.cpu_overcommit_milli = u32::MAX;
        assert!(matches!(
            check_host(&spec),
            Err(InputError::Invalid {
                field: "cpu_overcommit_milli",
                ..
            })
        ));
        spec.cpu_overcommit_milli = 1000;
        spec.slots = vec![("macos".into(), u32::MAX)];
        assert!(matches!(
            check_host(&spec),
            Err(InputError::Invalid { field: "slots", .. })
        ));
        spec.slots = vec![("macos".into(), 2)];
        assert_eq!(check_host(&spec), Ok(()));
    }
}
