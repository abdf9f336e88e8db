//! Record to replay: the daemon's journal as a trace in berth's format, plus a fleet file,
//! so that `berth sim run` can replay a live day with any policy.
//!
//! The journal is replayed into a fresh scheduler exactly as recovery does (same settings,
//! same polls), so every event comes out with the time the live daemon saw it. From those:
//! a request record per submit (its arrival time, shape, and as duration the longest time one
//! of its VMs ran before its job result came in; failed when one of its jobs failed), cancel
//! and release records, and host records for hosts added, drained, resumed, failed, repaired
//! or removed after the first request. Hosts there at the first request, and the templates,
//! go to the fleet file with their overcommit and cached images (the trace's host records
//! cannot carry those: a host added later is written with its capacity after overcommit); the
//! simulator names such a host `NAME-0001`, and the trace's host records use that name.

use std::collections::BTreeMap;

use berth_sched::{Event, HostState, Scheduler, VmState};
use berth_sim::runtimes::RunTimes;
use berth_traces::{
    Driver, HostEvent, HostRecord, HostSpec, Outcome, Record, RecordBody, RequestRecord,
    TraceHeader,
};
use serde::Serialize;

use crate::DaemonError;
use crate::config::SchedSection;
use crate::control::{apply_journaled, drain};
use crate::store::Store;
use crate::wire::{WireHost, WireInput, WireRequest, WireTemplate};

/// A journal turned into a trace and a fleet.
#[derive(Debug)]
pub struct Export {
    pub header: TraceHeader,
    /// In non-decreasing `at_ms` order, times relative to the start.
    pub records: Vec<Record>,
    /// A fleet file (TOML) with the hosts present at the start and the templates.
    pub fleet_toml: String,
    /// The start (ms since the Unix epoch): trace time 0.
    pub start_ms: u64,
}

#[derive(Default)]
struct ReqAcc {
    wire: Option<WireRequest>,
    submitted_ms: u64,
    running: BTreeMap<u64, u64>,
    ran_ms: u64,
    failed: bool,
}

#[derive(Serialize)]
struct FleetOut {
    class: Vec<ClassOut>,
    template: Vec<TemplateOut>,
}

#[derive(Serialize)]
struct ClassOut {
    name: String,
    count: u32,
    driver: String,
    vcpus: u32,
    memory_mib: u64,
    cpu_overcommit: f64,
    memory_overcommit: f64,
    slots: BTreeMap<String, u32>,
    labels: BTreeMap<String, String>,
    images: Vec<String>,
}

#[derive(Serialize)]
struct TemplateOut {
    name: String,
    base_image: Option<String>,
    guest_os: String,
    drivers: Vec<String>,
    vcpus: u32,
    memory_mib: u64,
    slot: Option<String>,
    expected_provision_s: u64,
    expected_boot_s: u64,
    expected_run_s: u64,
}

/// A request as a trace record under `id`: its shape (the template's where it gives none),
/// labels, priority, gang and estimate, running `duration_ms`; it passes and holds nothing.
pub(crate) fn request_record(
    id: u64,
    w: &WireRequest,
    template: Option<&WireTemplate>,
    duration_ms: u64,
) -> RequestRecord {
    let mut r = RequestRecord::new(
        id,
        w.template.clone(),
        w.vcpus.or(template.map(|t| t.vcpus)).unwrap_or(1).max(1),
        duration_ms,
    );
    r.count = w.count;
    r.memory_mib = w.memory_mib.or(template.map(|t| t.memory_mib));
    r.labels = w.labels.clone();
    r.priority = w.priority;
    r.gang = w.gang;
    r.expected_ms = w
        .expected_run_ms
        .or(template.map(|t| t.expected_run_ms))
        .filter(|&e| e != r.duration_ms);
    r.requester = Some(w.requester.clone()).filter(|q| !q.is_empty());
    r.change = w.change.clone();
    r.account = w.account.clone();
    r
}

fn driver(name: &str) -> Driver {
    match name {
        "libvirt" => Driver::Libvirt,
        "parallels" => Driver::Parallels,
        _ => Driver::Sim,
    }
}

/// The name the simulator gives the one host of the fleet class written for host `name`.
pub fn fleet_host_name(name: &str) -> String {
    format!("{name}-0001")
}

fn class_of(h: &WireHost) -> ClassOut {
    ClassOut {
        name: h.name.clone(),
        count: 1,
        driver: h.driver.clone(),
        vcpus: h.vcpus,
        memory_mib: h.memory_mib,
        cpu_overcommit: f64::from(h.cpu_overcommit_milli) / 1000.0,
        memory_overcommit: f64::from(h.memory_overcommit_milli) / 1000.0,
        slots: h.slots.clone(),
        labels: h.labels.clone(),
        images: h.images.clone(),
    }
}

/// Reads the journal of the store at `db` and writes what happened from `since_ms` on
/// (everything when `None`) as a trace.
pub fn export(db: &crate::db::StoreAt, since_ms: Option<u64>) -> Result<Export, DaemonError> {
    let mut store = Store::open(db)?;
    let section: SchedSection = match store.meta("scheduler")? {
        Some(text) => serde_json::from_str(&text).map_err(|e| DaemonError::Config {
            key: "scheduler".into(),
            message: format!("stored settings unreadable: {e}"),
        })?,
        None => SchedSection::default(),
    };
    let fair_share: Option<crate::config::FairShareSection> =
        match store.meta(crate::META_FAIR_SHARE)? {
            Some(text) => crate::stored_section(crate::META_FAIR_SHARE, &text)?,
            None => None,
        };
    let quotas: Vec<crate::config::QuotaConfig> = match store.meta(crate::META_QUOTAS)? {
        Some(text) => crate::stored_section(crate::META_QUOTAS, &text)?,
        None => Vec::new(),
    };
    let images: Option<crate::config::ImagesSection> = match store.meta(crate::META_IMAGES)? {
        Some(text) => crate::stored_section(crate::META_IMAGES, &text)?,
        None => None,
    };
    let warm: Vec<crate::config::WarmConfig> = match store.meta(crate::META_WARM)? {
        Some(text) => crate::stored_section(crate::META_WARM, &text)?,
        None => Vec::new(),
    };
    let config = crate::config::pinned_scheduler_config(
        &section,
        fair_share.as_ref(),
        &quotas,
        images.as_ref(),
        &warm,
    )?;
    let mut s = Scheduler::new(config);
    let mut templates_sched = BTreeMap::new();
    let mut hosts_by_id: BTreeMap<u64, WireHost> = BTreeMap::new();
    // What the jobs' run times teach is for estimates, which an export does not make.
    let mut run_times = RunTimes::default();
    let mut templates: BTreeMap<String, WireTemplate> = BTreeMap::new();
    let batches = store.journal()?;
    let first_ms = batches.first().map_or(0, |b| b.1);
    let start_ms = since_ms.unwrap_or(first_ms).max(first_ms);
    let mut fleet: Option<Vec<WireHost>> = None;
    let mut records: Vec<Record> = Vec::new();
    let mut requests: BTreeMap<u64, ReqAcc> = BTreeMap::new();
    let mut vm_request: BTreeMap<u64, u64> = BTreeMap::new();
    let mut host_names: BTreeMap<u64, String> = BTreeMap::new();
    let mut last_ms = start_ms;
    let rel = |t: u64| t.saturating_sub(start_ms);
    for (_, at_ms, inputs) in batches {
        last_ms = last_ms.max(at_ms);
        let live = at_ms >= start_ms;
        for input in &inputs {
            // The fleet file holds the hosts there when the first request of the trace comes;
            // hosts added later are host records.
            if live && fleet.is_none() && matches!(input, WireInput::Submit { .. }) {
                fleet = Some(hosts_by_id.values().cloned().collect());
                // The simulator names a fleet class's hosts CLASS-0001, …: the trace's host
                // records must use those names.
                for h in hosts_by_id.values() {
                    host_names.insert(h.id, fleet_host_name(&h.name));
                }
            }
            if apply_journaled(
                &mut s,
                at_ms,
                input,
                &mut templates_sched,
                &mut hosts_by_id,
                &mut run_times,
            )
            .is_err()
            {
                continue;
            }
            match input {
                WireInput::SetTemplate { template } => {
                    templates.insert(template.name.clone(), template.clone());
                }
                WireInput::AddHost { host } => {
                    host_names.insert(host.id, host.name.clone());
                    if live && fleet.is_some() {
                        records.push(Record {
                            at_ms: rel(at_ms),
                            body: RecordBody::Host(HostRecord {
                                host: host.name.clone(),
                                event: HostEvent::Added(HostSpec {
                                    driver: driver(&host.driver),
                                    vcpus: ((u64::from(host.vcpus)
                                        * u64::from(host.cpu_overcommit_milli))
                                        / 1000)
                                        .max(1) as u32,
                                    memory_mib: (host.memory_mib
                                        * u64::from(host.memory_overcommit_milli)
                                        / 1000)
                                        .max(1),
                                    slots: host.slots.clone(),
                                    labels: host.labels.clone(),
                                }),
                            }),
                        });
                    }
                }
                WireInput::Submit { request } if live => {
                    requests.insert(
                        request.id,
                        ReqAcc {
                            wire: Some(request.clone()),
                            submitted_ms: at_ms,
                            ..ReqAcc::default()
                        },
                    );
                }
                WireInput::Cancel { request } if requests.contains_key(request) => {
                    records.push(Record {
                        at_ms: rel(at_ms),
                        body: RecordBody::Cancel { request: *request },
                    });
                }
                WireInput::Release { vm } => {
                    if let Some(r) = vm_request.get(vm).filter(|r| requests.contains_key(r)) {
                        let rec = Record {
                            at_ms: rel(at_ms),
                            body: RecordBody::Release { request: *r },
                        };
                        if records.last() != Some(&rec) {
                            records.push(rec);
                        }
                    }
                }
                WireInput::VmLost { vm } => {
                    // Its replacement's job stands for it.
                    if let Some(acc) = vm_request.get(vm).and_then(|r| requests.get_mut(r)) {
                        acc.running.remove(vm);
                    }
                }
                WireInput::JobFinished { vm, passed } => {
                    if let Some(acc) = vm_request.get(vm).and_then(|r| requests.get_mut(r))
                        && let Some(since) = acc.running.remove(vm)
                    {
                        acc.ran_ms = acc.ran_ms.max(at_ms.saturating_sub(since));
                        acc.failed |= !passed;
                    }
                }
                WireInput::Drain { host } | WireInput::Resume { host }
                    if live && fleet.is_some() =>
                {
                    if let Some(name) = host_names.get(host) {
                        records.push(Record {
                            at_ms: rel(at_ms),
                            body: RecordBody::Host(HostRecord {
                                host: name.clone(),
                                event: if matches!(input, WireInput::Drain { .. }) {
                                    HostEvent::Drained
                                } else {
                                    HostEvent::Resumed
                                },
                            }),
                        });
                    }
                }
                _ => {}
            }
        }
        let (_, events) = drain(&mut s);
        for e in events {
            match e {
                Event::Vm {
                    at_ms,
                    vm,
                    request,
                    to,
                    ..
                } => {
                    vm_request.insert(vm.0, request.0);
                    if to == VmState::Running
                        && let Some(acc) = requests.get_mut(&request.0)
                    {
                        acc.running.insert(vm.0, at_ms);
                    }
                }
                Event::Host {
                    at_ms,
                    host,
                    from,
                    to,
                    ..
                } if at_ms >= start_ms && fleet.is_some() => {
                    let event = match (from, to) {
                        (_, Some(HostState::Error)) => HostEvent::Failed,
                        (Some(HostState::Error), Some(HostState::Ready)) => HostEvent::Repaired,
                        (Some(_), None) => HostEvent::Removed,
                        _ => continue,
                    };
                    if let Some(name) = host_names.get(&host.0) {
                        records.push(Record {
                            at_ms: rel(at_ms),
                            body: RecordBody::Host(HostRecord {
                                host: name.clone(),
                                event,
                            }),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    let fleet = fleet.unwrap_or_else(|| hosts_by_id.values().cloned().collect());
    // Requests: their durations are known only now.
    for (id, acc) in requests {
        let Some(w) = acc.wire else { continue };
        // A VM still running at the end of the journal has run at least this long.
        let still = acc
            .running
            .values()
            .map(|&since| last_ms.saturating_sub(since))
            .max()
            .unwrap_or(0);
        let mut r = request_record(id, &w, templates.get(&w.template), acc.ran_ms.max(still));
        r.outcome = if acc.failed {
            Outcome::Failed
        } else {
            Outcome::Passed
        };
        r.hold_on_failure = w.hold.as_ref().map(|h| berth_traces::Hold {
            owner: h.owner.clone(),
            ttl_ms: h.ttl_ms,
        });
        r.requester = Some(w.requester.clone()).filter(|s| !s.is_empty());
        records.push(Record {
            at_ms: rel(acc.submitted_ms),
            body: RecordBody::Request(r),
        });
    }
    // Within one instant: host events, then requests by id, then cancels and releases (which
    // name requests earlier in the stream). The sort is stable.
    records.sort_by_key(|r| {
        (
            r.at_ms,
            match &r.body {
                RecordBody::Host(_) => 0,
                RecordBody::Request(q) => 1 + q.id,
                _ => u64::MAX,
            },
        )
    });
    let out = FleetOut {
        class: fleet.iter().map(class_of).collect(),
        template: templates
            .values()
            .map(|t| TemplateOut {
                name: t.name.clone(),
                base_image: t.base_image.clone(),
                guest_os: t.guest_os.clone(),
                drivers: t.drivers.clone(),
                vcpus: t.vcpus,
                memory_mib: t.memory_mib,
                slot: t.slot.clone(),
                expected_provision_s: t.expected_provision_ms / 1000,
                expected_boot_s: t.expected_boot_ms / 1000,
                expected_run_s: t.expected_run_ms / 1000,
            })
            .collect(),
    };
    let fleet_toml = toml::to_string(&out).map_err(|e| DaemonError::Config {
        key: "fleet".into(),
        message: format!("writing the fleet file: {e}"),
    })?;
    let header = TraceHeader::new(
        false,
        format!(
            "recorded by berth from {} (journal from {start_ms} ms since the Unix epoch, scheduler policy {})",
            db.display(),
            section.policy
        ),
    );
    Ok(Export {
        header,
        records,
        fleet_toml,
        start_ms,
    })
}
