//! Where the time goes: figures per host class, per template, per requester and per change,
//! and bounded slowdown, collected during a run in bounded memory.
//!
//! Memory follows the fleet's classes, at most [`GROUPS_MAX`] templates and requesters, and the
//! changes still open: a change's state is dropped when its last request ends.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::hist::{histogram, record};

/// Bounded slowdown's threshold τ: a job shorter than this counts as this long, so that a short
/// wait for a one-second job does not dominate the mean (Feitelson, Rudolph, Schwiegelshohn,
/// Sevcik and Wong, "Theory and practice in parallel job scheduling", 1997; τ = 10 s is usual).
pub const SLOWDOWN_TAU_MS: u64 = 10_000;

/// A host class counts as full while its VMs hold at least this share of its schedulable
/// vCPUs, of its memory or of its slots: placement leaves a few percent in fragments that no VM
/// fits, so a class that takes nothing more is rarely at exactly 100%.
pub const FULL_SHARE: f64 = 0.95;

/// Templates and requesters that get a row of their own, each; later ones share the row
/// [`OTHER`], so that memory stays bounded whatever the trace holds.
pub const GROUPS_MAX: usize = 256;

/// Host classes that get a row of their own; hosts of later classes share the class
/// [`OTHER`], so that a fleet named host by host (one class each) stays a few rows and a plot
/// of a few panels.
pub const CLASSES_MAX: usize = 16;

/// The row shared by templates or requesters past [`GROUPS_MAX`], and by host classes past
/// [`CLASSES_MAX`].
pub const OTHER: &str = "(other)";

/// The requester row of requests that name none.
pub const NO_REQUESTER: &str = "(none)";

/// Change sizes, in VMs, at which the report's size classes start: under 10 VMs (a change to
/// one configuration or a few), 10–199 (a module's whole platform), 200 and over (top-level
/// changes that move many modules).
pub const CHANGE_SIZES_MIN_VMS: [u64; 3] = [0, 10, 200];

/// The names of the size classes of [`CHANGE_SIZES_MIN_VMS`], as the report gives them.
pub const CHANGE_SIZE_NAMES: [&str; 3] = ["<10", "10-199", ">=200"];

/// One host class's figures. `utilisation` counts vCPUs of running VMs over the class's vCPUs
/// (above 1 with overcommit, like the fleet-wide figure); `slot_utilisation` counts the slots
/// of running VMs; "full" counts what VMs hold from placement to the end of their destroy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassReport {
    pub name: String,
    pub hosts: u64,
    pub vcpus: u64,
    /// Counted slots of every kind.
    pub slots: u64,
    pub utilisation: f64,
    /// `None` when the class has no slots.
    pub slot_utilisation: Option<f64>,
    /// VMs that started running on the class, per hour of the makespan.
    pub vms_per_hour: f64,
    /// Time the class was full (see [`FULL_SHARE`]), and its share of the makespan.
    pub full_s: f64,
    pub full_share: f64,
}

/// The requests of one template or one requester: submit to all placed per request, submit
/// to running per VM. Percentiles come from HDR histograms with two significant digits (within
/// 1%), so that hundreds of rows stay small.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    pub name: String,
    pub requests: u64,
    pub p50_wait_s: f64,
    pub p90_wait_s: f64,
    pub p99_wait_s: f64,
    pub max_wait_s: f64,
    pub p50_ttr_s: f64,
    pub p90_ttr_s: f64,
}

/// Change turnaround: from the arrival of a change's first request to the end of its last VM.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeReport {
    /// Changes that completed.
    pub changes: u64,
    /// Changes with requests still open when the run ended (none when every request ends).
    pub incomplete: u64,
    pub p50_turnaround_s: f64,
    pub p90_turnaround_s: f64,
    pub p99_turnaround_s: f64,
    /// By the change's size in VMs ([`CHANGE_SIZE_NAMES`]).
    pub by_size: Vec<ChangeSizeReport>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeSizeReport {
    /// `<10`, `10-199` or `>=200` VMs.
    pub vms: String,
    pub changes: u64,
    pub p50_turnaround_s: f64,
    pub p90_turnaround_s: f64,
    pub p99_turnaround_s: f64,
}

/// What a VM holds of its host class, from placement to the end of its destroy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Holding {
    /// Its host's class; `None` for a host the breakdown does not know.
    pub class: Option<usize>,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Whether it takes one counted slot.
    pub slot: bool,
}

#[derive(Clone, Debug, Default)]
struct ClassStats {
    name: String,
    hosts: u64,
    vcpus: u64,
    slots: u64,
    /// Schedulable capacity (overcommit included): vCPUs in thousandths, memory in MiB.
    cpu_milli: u64,
    memory_mib: u64,
    held_cpu_milli: u64,
    held_memory_mib: u64,
    held_slots: u64,
    full_since_ms: Option<u64>,
    full_ms: u64,
    /// Σ running time × vCPUs and × slots, in milliseconds.
    running_area: u128,
    slot_area: u128,
    vms_started: u64,
}

impl ClassStats {
    fn is_full(&self) -> bool {
        let at_least =
            |held: u64, capacity: u64| capacity > 0 && held as f64 >= FULL_SHARE * capacity as f64;
        at_least(self.held_cpu_milli, self.cpu_milli)
            || at_least(self.held_memory_mib, self.memory_mib)
            || at_least(self.held_slots, self.slots)
    }

    /// Opens or closes the current full stretch after a change at `now_ms`.
    fn update_full(&mut self, now_ms: u64) {
        match (self.full_since_ms, self.is_full()) {
            (None, true) => self.full_since_ms = Some(now_ms),
            (Some(since), false) => {
                self.full_ms += now_ms.saturating_sub(since);
                self.full_since_ms = None;
            }
            _ => {}
        }
    }
}

struct Group {
    name: String,
    requests: u64,
    waits: Histogram<u32>,
    ttr: Histogram<u32>,
}

/// Rows keyed by name, at most [`GROUPS_MAX`] of them plus [`OTHER`].
#[derive(Default)]
struct Groups {
    rows: Vec<Group>,
    index: BTreeMap<String, usize>,
}

impl Groups {
    fn index(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let name = if self.rows.len() < GROUPS_MAX {
            name
        } else {
            OTHER
        };
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.rows.push(Group {
            name: name.to_owned(),
            requests: 0,
            waits: coarse_histogram(),
            ttr: coarse_histogram(),
        });
        self.index.insert(name.to_owned(), self.rows.len() - 1);
        self.rows.len() - 1
    }

    /// The rows, most requests first (then by name).
    fn report(&self) -> Vec<GroupReport> {
        let mut rows: Vec<GroupReport> = self
            .rows
            .iter()
            .map(|g| GroupReport {
                name: g.name.clone(),
                requests: g.requests,
                p50_wait_s: secs_at(&g.waits, 0.5),
                p90_wait_s: secs_at(&g.waits, 0.9),
                p99_wait_s: secs_at(&g.waits, 0.99),
                max_wait_s: secs_at(&g.waits, 1.0),
                p50_ttr_s: secs_at(&g.ttr, 0.5),
                p90_ttr_s: secs_at(&g.ttr, 0.9),
            })
            .collect();
        rows.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.name.cmp(&b.name)));
        rows
    }
}

#[derive(Clone, Copy, Debug)]
struct OpenChange {
    first_ms: u64,
    vms: u64,
    /// Requests read and not yet ended.
    open: u64,
}

/// Which template and requester rows a request counts in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RequestRows {
    template: usize,
    requester: usize,
}

/// The collector; the engine calls it as hosts join, requests arrive and VMs move.
pub(crate) struct Breakdown {
    classes: Vec<ClassStats>,
    class_index: BTreeMap<String, usize>,
    templates: Groups,
    requesters: Groups,
    open_changes: BTreeMap<String, OpenChange>,
    /// Turnarounds of all changes, then by size class.
    turnaround: Histogram<u64>,
    turnaround_by_size: [Histogram<u64>; 3],
    /// Bounded slowdown in thousandths.
    slowdown: Histogram<u64>,
    slowdown_sum: f64,
}

impl Default for Breakdown {
    fn default() -> Breakdown {
        Breakdown::new()
    }
}

impl Breakdown {
    pub fn new() -> Breakdown {
        Breakdown {
            classes: Vec::new(),
            class_index: BTreeMap::new(),
            templates: Groups::default(),
            requesters: Groups::default(),
            open_changes: BTreeMap::new(),
            turnaround: histogram(),
            turnaround_by_size: [histogram(), histogram(), histogram()],
            slowdown: histogram(),
            slowdown_sum: 0.0,
        }
    }

    /// A host of class `class` joined; returns the class's index for [`Holding::class`].
    /// `cpu_milli` and `memory_mib` are its schedulable capacity (overcommit included).
    pub fn host_added(
        &mut self,
        class: &str,
        vcpus: u32,
        cpu_milli: u64,
        memory_mib: u64,
        slots: u64,
    ) -> usize {
        let class = if self.class_index.contains_key(class) || self.classes.len() < CLASSES_MAX {
            class
        } else {
            OTHER
        };
        let idx = match self.class_index.get(class) {
            Some(&i) => i,
            None => {
                self.classes.push(ClassStats {
                    name: class.to_owned(),
                    ..ClassStats::default()
                });
                self.class_index
                    .insert(class.to_owned(), self.classes.len() - 1);
                self.classes.len() - 1
            }
        };
        let c = &mut self.classes[idx];
        c.hosts += 1;
        c.vcpus += u64::from(vcpus);
        c.cpu_milli = c.cpu_milli.saturating_add(cpu_milli);
        c.memory_mib = c.memory_mib.saturating_add(memory_mib);
        c.slots += slots;
        idx
    }

    /// A request was submitted: the rows it counts in.
    pub fn submitted(&mut self, template: &str, requester: Option<&str>) -> RequestRows {
        let rows = RequestRows {
            template: self.templates.index(template),
            requester: self.requesters.index(requester.unwrap_or(NO_REQUESTER)),
        };
        self.templates.rows[rows.template].requests += 1;
        self.requesters.rows[rows.requester].requests += 1;
        rows
    }

    /// A request was placed whole after `wait_ms`; its jobs run `run_ms`.
    pub fn waited(&mut self, rows: RequestRows, wait_ms: u64, run_ms: u64) {
        record(&mut self.templates.rows[rows.template].waits, wait_ms);
        record(&mut self.requesters.rows[rows.requester].waits, wait_ms);
        let slowdown = bounded_slowdown(wait_ms, run_ms);
        self.slowdown_sum += slowdown;
        record(&mut self.slowdown, (slowdown * 1000.0).round() as u64);
    }

    /// One of the request's VMs reached running `ttr_ms` after submit.
    pub fn reached_running(&mut self, rows: RequestRows, ttr_ms: u64) {
        record(&mut self.templates.rows[rows.template].ttr, ttr_ms);
        record(&mut self.requesters.rows[rows.requester].ttr, ttr_ms);
    }

    /// A VM was placed: it holds its share of its class until [`Self::release`].
    pub fn hold(&mut self, now_ms: u64, hold: Holding) {
        let Some(c) = hold.class.and_then(|i| self.classes.get_mut(i)) else {
            return;
        };
        c.held_cpu_milli += u64::from(hold.vcpus) * 1000;
        c.held_memory_mib = c.held_memory_mib.saturating_add(hold.memory_mib);
        c.held_slots += u64::from(hold.slot);
        c.update_full(now_ms);
    }

    pub fn release(&mut self, now_ms: u64, hold: Holding) {
        let Some(c) = hold.class.and_then(|i| self.classes.get_mut(i)) else {
            return;
        };
        c.held_cpu_milli = c
            .held_cpu_milli
            .saturating_sub(u64::from(hold.vcpus) * 1000);
        c.held_memory_mib = c.held_memory_mib.saturating_sub(hold.memory_mib);
        c.held_slots = c.held_slots.saturating_sub(u64::from(hold.slot));
        c.update_full(now_ms);
    }

    pub fn started_running(&mut self, class: Option<usize>) {
        if let Some(c) = class.and_then(|i| self.classes.get_mut(i)) {
            c.vms_started += 1;
        }
    }

    /// A VM of `hold` ran for `ms`.
    pub fn ran(&mut self, hold: Holding, ms: u64) {
        if let Some(c) = hold.class.and_then(|i| self.classes.get_mut(i)) {
            c.running_area += u128::from(ms) * u128::from(hold.vcpus);
            if hold.slot {
                c.slot_area += u128::from(ms);
            }
        }
    }

    /// A request of `change` (of `count` VMs) was read from the trace at `now_ms`.
    pub fn change_read(&mut self, change: &str, now_ms: u64, count: u32) {
        let open = match self.open_changes.get_mut(change) {
            Some(open) => open,
            None => self
                .open_changes
                .entry(change.to_owned())
                .or_insert(OpenChange {
                    first_ms: now_ms,
                    vms: 0,
                    open: 0,
                }),
        };
        open.vms = open.vms.saturating_add(u64::from(count));
        open.open += 1;
    }

    /// A request of `change` ended at `now_ms`; the change completes with its last request.
    pub fn change_request_ended(&mut self, change: &str, now_ms: u64) {
        let Some(open) = self.open_changes.get_mut(change) else {
            return;
        };
        open.open = open.open.saturating_sub(1);
        if open.open > 0 {
            return;
        }
        let OpenChange { first_ms, vms, .. } = *open;
        self.open_changes.remove(change);
        let turnaround_ms = now_ms.saturating_sub(first_ms);
        record(&mut self.turnaround, turnaround_ms);
        let size = CHANGE_SIZES_MIN_VMS
            .iter()
            .rposition(|&min| vms >= min)
            .unwrap_or(0);
        record(&mut self.turnaround_by_size[size], turnaround_ms);
    }

    /// Changes still open (their state is all the memory changes take).
    #[cfg(test)]
    pub fn open_changes(&self) -> usize {
        self.open_changes.len()
    }

    /// The breakdowns over the makespan from `first_ms` to `last_ms`.
    pub fn report(&self, first_ms: u64, last_ms: u64) -> Breakdowns {
        let makespan_ms = last_ms.saturating_sub(first_ms);
        let share = |area: u128, capacity: u64| {
            let whole = u128::from(capacity) * u128::from(makespan_ms);
            if whole == 0 {
                0.0
            } else {
                area as f64 / whole as f64
            }
        };
        let classes = self
            .classes
            .iter()
            .map(|c| {
                let full_ms = c.full_ms
                    + c.full_since_ms
                        .map_or(0, |since| last_ms.saturating_sub(since));
                ClassReport {
                    name: c.name.clone(),
                    hosts: c.hosts,
                    vcpus: c.vcpus,
                    slots: c.slots,
                    utilisation: share(c.running_area, c.vcpus),
                    slot_utilisation: (c.slots > 0).then(|| share(c.slot_area, c.slots)),
                    vms_per_hour: if makespan_ms == 0 {
                        0.0
                    } else {
                        c.vms_started as f64 / (makespan_ms as f64 / 3_600_000.0)
                    },
                    full_s: full_ms as f64 / 1000.0,
                    full_share: if makespan_ms == 0 {
                        0.0
                    } else {
                        full_ms as f64 / makespan_ms as f64
                    },
                }
            })
            .collect();
        let n_slowdown = self.slowdown.len();
        Breakdowns {
            bounded_slowdown_mean: if n_slowdown == 0 {
                0.0
            } else {
                self.slowdown_sum / n_slowdown as f64
            },
            bounded_slowdown_p90: if n_slowdown == 0 {
                0.0
            } else {
                self.slowdown.value_at_quantile(0.9) as f64 / 1000.0
            },
            classes,
            templates: self.templates.report(),
            requesters: self.requesters.report(),
            changes: ChangeReport {
                changes: self.turnaround.len(),
                incomplete: self.open_changes.len() as u64,
                p50_turnaround_s: secs_at(&self.turnaround, 0.5),
                p90_turnaround_s: secs_at(&self.turnaround, 0.9),
                p99_turnaround_s: secs_at(&self.turnaround, 0.99),
                by_size: CHANGE_SIZE_NAMES
                    .iter()
                    .zip(&self.turnaround_by_size)
                    .map(|(name, h)| ChangeSizeReport {
                        vms: (*name).to_owned(),
                        changes: h.len(),
                        p50_turnaround_s: secs_at(h, 0.5),
                        p90_turnaround_s: secs_at(h, 0.9),
                        p99_turnaround_s: secs_at(h, 0.99),
                    })
                    .collect(),
            },
        }
    }
}

/// The breakdown part of a [`crate::Report`].
#[derive(Default)]
pub(crate) struct Breakdowns {
    pub bounded_slowdown_mean: f64,
    pub bounded_slowdown_p90: f64,
    pub classes: Vec<ClassReport>,
    pub templates: Vec<GroupReport>,
    pub requesters: Vec<GroupReport>,
    pub changes: ChangeReport,
}

/// `max(1, (wait + run) / max(run, τ))`: how much longer than its run a request took, with
/// short runs counted as τ.
pub fn bounded_slowdown(wait_ms: u64, run_ms: u64) -> f64 {
    let response = wait_ms.saturating_add(run_ms) as f64;
    (response / run_ms.max(SLOWDOWN_TAU_MS) as f64).max(1.0)
}

/// Two significant digits and 32-bit counts, growing as needed: about 8 KB for a row of a
/// breakdown whose waits reach days.
fn coarse_histogram() -> Histogram<u32> {
    match Histogram::new(2) {
        Ok(mut h) => {
            h.auto(true);
            h
        }
        // new(2) only fails for more than five significant digits.
        Err(e) => unreachable!("histogram with 2 significant digits: {e}"),
    }
}

/// The value at quantile `q` in seconds; 0 for an empty histogram. `q` = 1 is the maximum.
fn secs_at<T: hdrhistogram::Counter>(h: &Histogram<T>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else if q >= 1.0 {
        h.max() as f64 / 1000.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_slowdown_counts_short_runs_as_tau() {
        assert_eq!(bounded_slowdown(0, 60_000), 1.0);
        assert_eq!(bounded_slowdown(60_000, 60_000), 2.0);
        // 1 s run, 9 s wait: (9 + 1) / 10 = 1.
        assert_eq!(bounded_slowdown(9_000, 1_000), 1.0);
        assert_eq!(bounded_slowdown(29_000, 1_000), 3.0);
        assert_eq!(bounded_slowdown(5_000, 0), 1.0);
    }

    #[test]
    fn groups_past_the_cap_share_one_row() {
        let mut b = Breakdown::new();
        for i in 0..GROUPS_MAX + 5 {
            b.submitted("t", Some(&format!("dev-{i}")));
        }
        let r = b.report(0, 1);
        assert_eq!(r.requesters.len(), GROUPS_MAX + 1);
        let other = r.requesters.iter().find(|g| g.name == OTHER);
        assert_eq!(other.map(|g| g.requests), Some(5));
        assert_eq!(r.templates.len(), 1);
        assert_eq!(r.templates[0].requests, GROUPS_MAX as u64 + 5);
    }

    #[test]
    fn classes_past_the_cap_share_one_row() {
        let mut b = Breakdown::new();
        for i in 0..CLASSES_MAX + 3 {
            b.host_added(&format!("h{i}"), 4, 4_000, 8_192, 0);
        }
        b.host_added("h0", 4, 4_000, 8_192, 0);
        let r = b.report(0, 1);
        assert_eq!(r.classes.len(), CLASSES_MAX + 1);
        let other = r.classes.iter().find(|c| c.name == OTHER).map(|c| c.hosts);
        assert_eq!(other, Some(3));
        assert_eq!(r.classes[0].hosts, 2);
    }

    #[test]
    fn a_change_completes_with_its_last_request_and_is_forgotten() {
        let mut b = Breakdown::new();
        b.change_read("c1", 1_000, 4);
        b.change_read("c1", 1_000, 8);
        b.change_read("c2", 2_000, 300);
        b.change_request_ended("c1", 5_000);
        assert_eq!(b.open_changes(), 2);
        b.change_request_ended("c1", 11_000);
        b.change_request_ended("c2", 102_000);
        assert_eq!(b.open_changes(), 0);
        let c = b.report(0, 1).changes;
        assert_eq!((c.changes, c.incomplete), (2, 0));
        let sizes: Vec<(&str, u64, f64)> = c
            .by_size
            .iter()
            .map(|s| (s.vms.as_str(), s.changes, s.p50_turnaround_s.round()))
            .collect();
        assert_eq!(
            sizes,
            vec![("<10", 0, 0.0), ("10-199", 1, 10.0), (">=200", 1, 100.0)]
        );
    }

    #[test]
    fn a_class_is_full_from_the_share_on() {
        let mut b = Breakdown::new();
        let class = b.host_added("mac", 24, 24_000, 131_072, 2);
        let vm = Holding {
            class: Some(class),
            vcpus: 4,
            memory_mib: 16_384,
            slot: true,
        };
        b.hold(1_000, vm);
        b.hold(2_000, vm);
        b.release(5_000, vm);
        b.hold(6_000, vm);
        let r = b.report(0, 10_000);
        // Full (both slots) from 2 s to 5 s and from 6 s to the end.
        assert_eq!(r.classes[0].slots, 2);
        assert_eq!(r.classes[0].full_s, 7.0);
        assert!((r.classes[0].full_share - 0.7).abs() < 1e-9);
    }
}
