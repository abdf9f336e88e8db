//! Sizing a synthetic CI workload for a fleet: the arrival rate at which the fleet's busiest
//! pool runs at a given load over the trace (`berth trace synth --fleet F --load X`).
//!
//! A pool is the set of host classes a request can run on (its template's drivers and slot,
//! its labels, its shape); requests that can run on the same classes share a pool. A pool's
//! load is its requests' demand (VMs × run time × vCPUs, memory or slots) over its schedulable
//! capacity (overcommit included) times the trace's span, from time 0 to the last change's
//! arrival; the resource that binds (the highest share) is the pool's load. Pools that share
//! classes are counted apart, so overlapping pools understate load; the fleets this is for
//! (one pool per architecture and guest system) have none.
//!
//! The synthetic generator draws the changes and their arrivals from separate streams and
//! places arrivals by inverting the cumulative weekly rate, so a rate changes the times and
//! nothing else: one pass at the default rate measures the demand and the span, and the rate
//! for the target load follows in closed form.

use std::collections::BTreeMap;

use berth_sched::{HostSpec, Template};
use berth_traces::synth::peak_hours_until;
use berth_traces::{Generator, RecordBody, RequestRecord, SynthConfig};

use crate::SimError;
use crate::engine::UNSPECIFIED_MEMORY_MIB;
use crate::fleet::{Fleet, class_of};

/// What `size_for_load` found: the rate, and where and how it binds.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadSizing {
    /// The peak arrival rate that gives the load.
    pub peak_changes_per_hour: f64,
    /// The busiest pool: the classes its requests can run on, joined by `+`.
    pub pool: String,
    /// What binds there: `vcpus`, `memory` or `slots <kind>`.
    pub resource: String,
    /// The busiest pool's load at that rate over the trace's span.
    pub load: f64,
    /// The trace's span at that rate: time 0 to the last change's arrival.
    pub span_ms: u64,
    pub n_changes: u64,
    /// Requests no class of the fleet can run (the simulator will reject them).
    pub unfit_requests: u64,
}

/// One class of the fleet: its first host stands for all (a fleet file's classes are uniform).
struct Class {
    name: String,
    host: HostSpec,
    cpu_milli: u128,
    memory_mib: u128,
    slots: BTreeMap<String, u128>,
}

/// Demand of one pool, in resource-milliseconds (vCPUs in thousandths).
#[derive(Default)]
struct Pool {
    classes: Vec<usize>,
    cpu_milli_ms: u128,
    memory_mib_ms: u128,
    slot_ms: BTreeMap<String, u128>,
}

/// The arrival rate at which the busiest pool of `fleet` runs at `load` over a trace of
/// `config` (whose own rate is only the starting point).
pub fn size_for_load(
    fleet: &Fleet,
    config: &SynthConfig,
    load: f64,
) -> Result<LoadSizing, SimError> {
    let bad = |message: String| SimError::Fleet {
        source_name: "--load".into(),
        message,
    };
    if !(load.is_finite() && load > 0.0) {
        return Err(bad(format!("{load} is not a positive load")));
    }
    let classes = classes(fleet);
    let templates: BTreeMap<&str, &Template> =
        fleet.templates.iter().map(|t| (&*t.name, t)).collect();
    let mut generator = Generator::new(config.clone()).map_err(|e| bad(e.to_string()))?;
    let mut pools: Vec<Pool> = Vec::new();
    let mut pool_of: BTreeMap<Vec<usize>, usize> = BTreeMap::new();
    // Synthetic requests come in a few shapes: decide each shape's pool once.
    type Shape = (String, BTreeMap<String, String>, u32, u64);
    let mut shape_pool: BTreeMap<Shape, Option<usize>> = BTreeMap::new();
    let (mut last_arrival_ms, mut unfit_requests) = (0, 0);
    for record in &mut generator {
        let RecordBody::Request(r) = record.body else {
            continue;
        };
        last_arrival_ms = last_arrival_ms.max(record.at_ms);
        let template = templates.get(r.template.as_str()).copied();
        let memory_mib = r.memory_mib.unwrap_or_else(|| {
            template.map_or(UNSPECIFIED_MEMORY_MIB, |t| t.default_shape.memory_mib)
        });
        let shape = (r.template.clone(), r.labels.clone(), r.vcpus, memory_mib);
        let pool = *shape_pool.entry(shape).or_insert_with(|| {
            let fitting: Vec<usize> = (0..classes.len())
                .filter(|&i| fits(&classes[i].host, template, &r, memory_mib))
                .collect();
            (!fitting.is_empty()).then(|| {
                *pool_of.entry(fitting.clone()).or_insert_with(|| {
                    pools.push(Pool {
                        classes: fitting,
                        ..Pool::default()
                    });
                    pools.len() - 1
                })
            })
        });
        let Some(pool) = pool else {
            unfit_requests += 1;
            continue;
        };
        let vm_ms = u128::from(r.count) * u128::from(r.duration_ms);
        let p = &mut pools[pool];
        p.cpu_milli_ms += vm_ms * u128::from(r.vcpus) * 1000;
        p.memory_mib_ms += vm_ms * u128::from(memory_mib);
        if let Some(slot) = template.and_then(|t| t.slot.as_ref()) {
            *p.slot_ms.entry(slot.clone()).or_default() += vm_ms;
        }
    }
    // The busiest pool: the most busy time per unit of capacity.
    let mut busiest: Option<(f64, &Pool, String)> = None;
    for p in &pools {
        let sum = |f: &dyn Fn(&Class) -> u128| p.classes.iter().map(|&i| f(&classes[i])).sum();
        let mut needs: Vec<(f64, String)> = vec![
            (share(p.cpu_milli_ms, sum(&|c| c.cpu_milli)), "vcpus".into()),
            (
                share(p.memory_mib_ms, sum(&|c| c.memory_mib)),
                "memory".into(),
            ),
        ];
        for (kind, &ms) in &p.slot_ms {
            let slots = sum(&|c| c.slots.get(kind).copied().unwrap_or(0));
            needs.push((share(ms, slots), format!("slots {kind}")));
        }
        for (busy_ms, resource) in needs {
            if busiest.as_ref().is_none_or(|b| busy_ms > b.0) {
                busiest = Some((busy_ms, p, resource));
            }
        }
    }
    let Some((busy_ms, pool, resource)) = busiest.filter(|b| b.0 > 0.0) else {
        return Err(bad(format!(
            "no class of the fleet runs any of the workload's requests ({unfit_requests} unfit); \
             check its labels, drivers and slots"
        )));
    };
    let span_ms = (busy_ms / load).round().max(1.0) as u64;
    let peak_changes_per_hour = config.peak_changes_per_hour * peak_hours_until(last_arrival_ms)
        / peak_hours_until(span_ms);
    Ok(LoadSizing {
        peak_changes_per_hour,
        pool: pool
            .classes
            .iter()
            .map(|&i| classes[i].name.as_str())
            .collect::<Vec<_>>()
            .join("+"),
        resource,
        load: busy_ms / span_ms as f64,
        span_ms,
        n_changes: generator.n_changes(),
        unfit_requests,
    })
}

/// Busy time a demand of `demand` resource-milliseconds takes on `capacity` units.
fn share(demand: u128, capacity: u128) -> f64 {
    if capacity == 0 {
        0.0
    } else {
        demand as f64 / capacity as f64
    }
}

fn classes(fleet: &Fleet) -> Vec<Class> {
    let mut classes: Vec<Class> = Vec::new();
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for h in &fleet.hosts {
        let name = class_of(&h.name);
        let i = *index.entry(name).or_insert_with(|| {
            classes.push(Class {
                name: name.to_owned(),
                host: h.clone(),
                cpu_milli: 0,
                memory_mib: 0,
                slots: BTreeMap::new(),
            });
            classes.len() - 1
        });
        let c = &mut classes[i];
        c.cpu_milli += u128::from(h.vcpus) * u128::from(h.cpu_overcommit_milli);
        c.memory_mib += u128::from(h.memory_mib) * u128::from(h.memory_overcommit_milli) / 1000;
        for (kind, n) in &h.slots {
            *c.slots.entry(kind.clone()).or_default() += u128::from(*n);
        }
    }
    classes
}

/// Whether a VM of `r` could ever run on `host`: the template's drivers and slot, the labels,
/// and the shape within the host's schedulable capacity.
fn fits(host: &HostSpec, template: Option<&Template>, r: &RequestRecord, memory_mib: u64) -> bool {
    if let Some(t) = template {
        if !t.drivers.is_empty() && !t.drivers.contains(&host.driver) {
            return false;
        }
        if let Some(slot) = &t.slot
            && !host.slots.iter().any(|(kind, n)| kind == slot && *n > 0)
        {
            return false;
        }
    }
    let labelled = r
        .labels
        .iter()
        .all(|(k, v)| host.labels.iter().any(|l| &l.key == k && &l.value == v));
    labelled
        && u64::from(r.vcpus) * 1000 <= u64::from(host.vcpus) * u64::from(host.cpu_overcommit_milli)
        && u128::from(memory_mib) * 1000
            <= u128::from(host.memory_mib) * u128::from(host.memory_overcommit_milli)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET: &str = r#"
[[class]]
name = "kvm"
count = 4
vcpus = 32
memory_mib = 131072
labels = { arch = "x86_64" }

[[class]]
name = "arm"
count = 2
vcpus = 32
memory_mib = 131072
labels = { arch = "aarch64" }

[[class]]
name = "mac"
count = 3
vcpus = 24
memory_mib = 131072
slots = { macos = 2 }
labels = { arch = "aarch64" }

[[template]]
name = "macos"
guest_os = "macos"
drivers = ["sim"]
vcpus = 4
memory_mib = 16384
slot = "macos"
"#;

    /// The busiest pool's load over a generated trace, measured from its records.
    fn measured_load(fleet: &Fleet, config: SynthConfig, pool: &str) -> f64 {
        let classes = classes(fleet);
        let mut busy_ms = 0u128;
        let mut last_ms = 0;
        for record in Generator::new(config).expect("valid") {
            let RecordBody::Request(r) = record.body else {
                continue;
            };
            last_ms = last_ms.max(record.at_ms);
            if r.template == "macos" && r.labels["arch"] == "aarch64" {
                busy_ms += u128::from(r.count) * u128::from(r.duration_ms);
            }
        }
        assert_eq!(pool, "mac");
        let slots: u128 = classes
            .iter()
            .filter(|c| c.name == "mac")
            .map(|c| c.slots["macos"])
            .sum();
        busy_ms as f64 / slots as f64 / last_ms as f64
    }

    #[test]
    fn the_sized_rate_gives_the_load_on_the_busiest_pool() {
        let fleet = Fleet::parse(FLEET, "f.toml").expect("valid");
        let config = SynthConfig::new(20_000, 3);
        let sized = size_for_load(&fleet, &config, 0.85).expect("sizes");
        // Six macOS slots for about a third of the work: the Macs bind, by slots.
        assert_eq!(
            (sized.pool.as_str(), sized.resource.as_str()),
            ("mac", "slots macos")
        );
        assert!((sized.load - 0.85).abs() < 1e-6, "{sized:?}");
        // x86_64 macOS requests have no class here.
        assert!(sized.unfit_requests > 0);
        let at_rate = SynthConfig {
            peak_changes_per_hour: sized.peak_changes_per_hour,
            ..config
        };
        let load = measured_load(&fleet, at_rate, &sized.pool);
        assert!((load - 0.85).abs() < 0.001, "{load}");
    }

    #[test]
    fn bad_loads_and_fleets_that_run_nothing_are_errors() {
        let fleet = Fleet::parse(FLEET, "f.toml").expect("valid");
        let config = SynthConfig::new(100, 1);
        for load in [0.0, -1.0, f64::NAN] {
            let e = size_for_load(&fleet, &config, load).expect_err("bad load");
            assert!(e.to_string().contains("not a positive load"), "{e}");
        }
        let windows_only = Fleet::parse(
            "[[class]]\nname='w'\ncount=1\nvcpus=4\nmemory_mib=4096\nlabels={arch='sparc'}\n",
            "w.toml",
        )
        .expect("valid");
        let e = size_for_load(&windows_only, &config, 0.5).expect_err("nothing fits");
        assert!(e.to_string().contains("no class of the fleet"), "{e}");
    }
}
