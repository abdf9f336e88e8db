//! Filters: each decides whether one host can take one more VM, and if not, names the reason.

pub mod cpu;
pub mod driver;
pub mod labels;
pub mod memory;
pub mod provisioning;
pub mod slots;
pub mod state;

use crate::fleet::{Amount, Host, Need};
use crate::placement::Reason;

/// What a filter looks at: the host, what is available on it, and what one VM needs.
pub(crate) struct Probe<'a> {
    pub host: &'a Host,
    /// Free capacity for placement now; total capacity for "could it ever fit".
    pub avail: Amount,
    pub need: &'a Need,
    pub provisioning_max: u32,
}

pub(crate) struct Filter {
    pub name: &'static str,
    pub check: fn(&Probe<'_>) -> Option<Reason>,
}

/// The placement pipeline, cheapest and most telling first; the first failing filter is the
/// reason a host is counted under in "why waiting".
pub(crate) const PIPELINE: [Filter; 7] = [
    state::FILTER,
    driver::FILTER,
    labels::FILTER,
    cpu::FILTER,
    memory::FILTER,
    slots::FILTER,
    provisioning::FILTER,
];

/// The filters that do not change with load: could the host ever take this VM?
pub(crate) const STATIC: [Filter; 5] = [
    driver::FILTER,
    labels::FILTER,
    cpu::FILTER,
    memory::FILTER,
    slots::FILTER,
];

/// The static filters that hold before a host's first probe: what it is configured as (its
/// driver, labels and slots), not what it measures.
pub(crate) const KNOWN_UNPROBED: [Filter; 3] = [driver::FILTER, labels::FILTER, slots::FILTER];

pub(crate) fn first_failure(filters: &[Filter], probe: &Probe<'_>) -> Option<Reason> {
    filters.iter().find_map(|f| (f.check)(probe))
}

/// Whether `host`, empty, passes `filters` for a VM of `need` (with `STATIC`: could it ever
/// take one).
pub(crate) fn passes_empty(
    filters: &[Filter],
    host: &Host,
    need: &Need,
    provisioning_max: u32,
) -> bool {
    first_failure(
        filters,
        &Probe {
            host,
            avail: host.capacity,
            need,
            provisioning_max,
        },
    )
    .is_none()
}
