//! Read-only views: what is where, and why a request is still waiting. They show the state as
//! of the last `poll_*` call.

use std::collections::BTreeMap;
use std::fmt;

use crate::fleet::Host;
use crate::idmap::IdMap;
use crate::model::{
    DriverKind, HostId, HostState, Label, RequestId, RequestSpec, RequestState, Shape, Template,
    VmId, VmState,
};
use crate::placement::Reason;
use crate::placement::filter::{PIPELINE, Probe, first_failure};
use crate::queue::{ImageHold, Wait};
use crate::scheduler::{Scheduler, describe_need, policy};

/// A host as operators see it. Capacities are after overcommit; vCPUs in thousandths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostView<'a> {
    pub id: HostId,
    pub name: &'a str,
    pub driver: DriverKind,
    pub state: HostState,
    pub cpu_milli: i64,
    pub cpu_used_milli: i64,
    pub memory_mib: i64,
    pub memory_used_mib: i64,
    /// `(kind, capacity, used)` per counted slot kind the host has.
    pub slots: Vec<(&'a str, i64, i64)>,
    pub provisioning: u32,
    pub n_vms: usize,
    /// Its VMs (placed or further, not yet ended), in no particular order.
    pub vms: &'a [VmId],
    pub labels: &'a [Label],
    /// The base images it holds, as its last probe (or its spec, before one) said, by name.
    pub images: Vec<&'a str>,
    pub last_probe_ms: Option<u64>,
    pub probe_failures: u32,
    pub provision_failures: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmView {
    pub id: VmId,
    pub request: RequestId,
    pub state: VmState,
    pub host: Option<HostId>,
    /// When a held VM's breakpoint expires.
    pub hold_until_ms: Option<u64>,
    /// When the scheduler expects it to end: placement (or boot, once running) plus the
    /// expected provisioning, boot and run times; 0 while it is queued.
    pub expected_end_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestView<'a> {
    pub spec: &'a RequestSpec,
    pub shape: Shape,
    pub state: RequestState,
    pub submitted_ms: u64,
    /// How long each of its VMs' jobs is expected to run: the request's estimate, else its
    /// template's when it was submitted (what the VMs' expected ends are made of).
    pub expected_run_ms: u64,
    /// VMs waiting to be placed.
    pub n_queued: usize,
    /// VMs not yet ended.
    pub n_live: u32,
}

/// What stands between a waiting request and a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// Submitted since the last pass.
    NotYetConsidered,
    /// Not enough free capacity on hosts that could run it (see the host counts).
    NoFit,
    /// A gang: only `fit` of its `need` VMs fit at once now.
    GangShort { fit: u32, need: u32 },
    /// Strict FCFS: it waits behind the head of the queue.
    BehindHead(RequestId),
    /// EASY: the head `head` is expected to start at `start_ms`; starting this request now
    /// would delay it (for the head itself: its own expected start).
    Reserved { head: RequestId, start_ms: u64 },
    /// Hosts had room, but its account's quota on their class lets it have none of it (see
    /// `Why::quota`).
    Quota,
    /// Hosts had room, but not its base image (`Why::image`), and no pull of it was started
    /// there.
    Image(ImageHold),
}

impl ImageHold {
    /// Why no pull was started, in words.
    pub fn describe(self) -> &'static str {
        match self {
            ImageHold::StoreBusy => "the image store serves all the pulls it may at once",
            ImageHold::HolderSooner => "a host holding it should have room before a pull is done",
            ImageHold::NoDisk => "hosts with room have no image disk left for it",
        }
    }

    /// A short stable name for machines (the API).
    pub fn name(self) -> &'static str {
        match self {
            ImageHold::StoreBusy => "store_busy",
            ImageHold::HolderSooner => "holder_sooner",
            ImageHold::NoDisk => "no_disk",
        }
    }
}

/// Hosts that could take one of a waiting request's VMs but for its account's quota on their
/// class: one per class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaWait {
    pub account: String,
    pub class: String,
    /// What binds, in words: `account qt-base at its kvm quota 8/8 vCPUs, borrowing 0 of 0
    /// allowed`.
    pub text: String,
    pub hosts: u32,
    /// The first `WHY_HOSTS_NAMED` of those hosts (in fleet order), by name.
    pub named: Vec<String>,
}

/// Where the waiting requests stand in the order they are served (`Scheduler::positions`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Positions {
    /// Requests waiting.
    pub queue_len: usize,
    by_request: IdMap<RequestId, u32>,
}

impl Positions {
    /// Request `id`'s place in the order of service, 1 first; `None` if it is not waiting.
    pub fn of(&self, id: RequestId) -> Option<u32> {
        self.by_request.get(&id).copied()
    }
}

/// Hosts a why-waiting names per reason (the rest are counted).
pub const WHY_HOSTS_NAMED: usize = 3;

/// Why a request is still waiting: the blocker, and how many hosts fail which filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Why {
    pub request: RequestId,
    pub need: String,
    pub n_waiting_vms: usize,
    pub blocker: Blocker,
    /// Hosts by the first filter each one fails now, most common first.
    pub reasons: Vec<(Reason, u32)>,
    /// Per reason, the first `WHY_HOSTS_NAMED` hosts (in fleet order) that give it, by name.
    pub named: BTreeMap<Reason, Vec<String>>,
    /// Hosts with room that its account's quota keeps it from, per class (not counted in
    /// `reasons` nor `hosts_fit`).
    pub quota: Vec<QuotaWait>,
    /// The base image it waits for, when that is the blocker (`Blocker::Image`).
    pub image: Option<String>,
    /// Hosts that could take one of its VMs now.
    pub hosts_fit: u32,
    pub hosts_total: u32,
    /// The scheduler's clock when it was asked, for the times the summary gives.
    pub now_ms: u64,
}

/// A duration for people: `45s`, `3m12s`, `2h05m`, `3d04h`.
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// When something is expected, for people: `in 3m12s (14:05:09 UTC)`; the clock time is the
/// time of day of `at_ms` as milliseconds since the Unix epoch.
fn expected_at(at_ms: u64, now_ms: u64) -> String {
    let t = at_ms / 1000 % 86_400;
    let clock = format!("{:02}:{:02}:{:02} UTC", t / 3600, t % 3600 / 60, t % 60);
    if at_ms <= now_ms {
        format!("now ({clock})")
    } else {
        format!("in {} ({clock})", human_duration(at_ms - now_ms))
    }
}

/// The reason leads, so that a narrow column still shows it: why, then how many hosts fit
/// and what the others lack, then what waits.
impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.blocker {
            Blocker::NotYetConsidered => write!(f, "not yet considered")?,
            Blocker::NoFit => write!(f, "no room")?,
            Blocker::Quota => match self.quota.first() {
                Some(q) => write!(f, "quota: {}", q.text)?,
                // Room it was refused by quota has gone to others since.
                None => write!(f, "no room (refused by its account's quota when there was)")?,
            },
            Blocker::GangShort { fit, need } => {
                write!(f, "a gang of {need}: only {fit} fit at once")?
            }
            Blocker::Image(hold) => write!(
                f,
                "waits for base image {}: {}",
                self.image.as_deref().unwrap_or("?"),
                hold.describe()
            )?,
            Blocker::BehindHead(head) => write!(f, "behind {head} (strict fcfs)")?,
            // The reservation found no time at which ready hosts would have room.
            Blocker::Reserved { head, start_ms }
                if head == self.request && start_ms == u64::MAX =>
            {
                write!(
                    f,
                    "first in line, but no room even once every running vm ends"
                )?
            }
            Blocker::Reserved { head, start_ms } if head == self.request => write!(
                f,
                "first in line, to start {}",
                expected_at(start_ms, self.now_ms)
            )?,
            Blocker::Reserved { head, start_ms } => write!(
                f,
                "would delay {head}, due to start {}",
                expected_at(start_ms, self.now_ms)
            )?,
        }
        write!(f, " · {}/{} hosts fit", self.hosts_fit, self.hosts_total)?;
        for (i, (reason, n)) in self.reasons.iter().enumerate() {
            let sep = if i == 0 { ": " } else { ", " };
            write!(f, "{sep}{n} {}", reason.describe())?;
        }
        for (i, q) in self.quota.iter().enumerate() {
            let sep = if i == 0 && self.reasons.is_empty() {
                ": "
            } else {
                ", "
            };
            write!(f, "{sep}{} over {}'s {} quota", q.hosts, q.account, q.class)?;
        }
        write!(f, " · {} of {} wait", self.n_waiting_vms, self.need)
    }
}

fn host_view<'a>(s: &'a Scheduler, h: &'a Host) -> HostView<'a> {
    let slots = h
        .spec
        .slots
        .iter()
        .filter_map(|(kind, _)| {
            let k = s.slot_kinds.get(kind)? as usize;
            Some((
                kind.as_str(),
                *h.capacity.slots.get(k)?,
                *h.used.slots.get(k)?,
            ))
        })
        .collect();
    HostView {
        id: h.spec.id,
        name: &h.spec.name,
        driver: h.spec.driver,
        state: h.state,
        cpu_milli: h.capacity.cpu_milli,
        cpu_used_milli: h.used.cpu_milli,
        memory_mib: h.capacity.memory_mib,
        memory_used_mib: h.used.memory_mib,
        slots,
        provisioning: h.provisioning,
        n_vms: h.vms.len(),
        vms: &h.vms,
        labels: &h.spec.labels,
        images: {
            let mut names: Vec<&str> = h.images.iter().map(|&id| s.images.name(id)).collect();
            names.sort_unstable();
            names
        },
        last_probe_ms: h.last_probe_ms,
        probe_failures: h.probe_failures,
        provision_failures: h.provision_failures,
    }
}

impl Scheduler {
    /// Every host, in the order they were added.
    pub fn hosts(&self) -> impl Iterator<Item = HostView<'_>> {
        self.fleet
            .hosts
            .iter()
            .filter(|h| !h.removed)
            .map(|h| host_view(self, h))
    }

    pub fn host(&self, id: HostId) -> Option<HostView<'_>> {
        let idx = *self.host_ids.get(&id)?;
        Some(host_view(self, &self.fleet.hosts[idx]))
    }

    pub fn host_by_name(&self, name: &str) -> Option<HostView<'_>> {
        let idx = *self.host_names.get(name)?;
        Some(host_view(self, &self.fleet.hosts[idx]))
    }

    pub fn vm(&self, id: VmId) -> Option<VmView> {
        let v = self.vms.get(&id)?;
        Some(VmView {
            id,
            request: v.request,
            state: v.state,
            host: v.host.map(|i| self.fleet.hosts[i].spec.id),
            hold_until_ms: (v.state == VmState::Held).then_some(v.hold_until_ms),
            expected_end_ms: v.expected_end_ms,
        })
    }

    /// Every VM that has not ended, by id.
    pub fn vms(&self) -> Vec<VmView> {
        let mut ids: Vec<VmId> = self.vms.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| self.vm(id)).collect()
    }

    /// A template by name, as last set.
    pub fn template(&self, name: &str) -> Option<&Template> {
        self.templates.get(name)
    }

    /// The id the next VM will get: every VM this scheduler ever created has a lower one.
    pub fn next_vm_id(&self) -> VmId {
        VmId(self.next_vm)
    }

    pub fn n_vms(&self) -> usize {
        self.vms.len()
    }

    pub fn request(&self, id: RequestId) -> Option<RequestView<'_>> {
        let r = self.requests.get(&id)?;
        Some(RequestView {
            spec: &r.spec,
            shape: r.vm_spec.shape,
            state: r.state,
            submitted_ms: r.submitted_ms,
            expected_run_ms: r.expected_run_ms,
            n_queued: r.queued.len(),
            n_live: r.live,
        })
    }

    /// Every request that has not ended, by id.
    pub fn requests(&self) -> Vec<RequestView<'_>> {
        let mut ids: Vec<RequestId> = self.requests.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| self.request(id)).collect()
    }

    pub fn n_requests(&self) -> usize {
        self.requests.len()
    }

    /// Waiting requests in the order they are served now.
    pub fn queue(&self) -> Vec<RequestId> {
        let mut order = Vec::new();
        self.queue
            .ordered(self.now_ms, self.config.aging_step_ms, &mut order);
        order.into_iter().map(|e| e.request).collect()
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Where each waiting request stands in the order the queue is served now (fair share's
    /// account order first when configured, then effective priority, then arrival), as of the
    /// last pass. Costs a merge of the queue, O(n log levels): build it once for many lookups.
    pub fn positions(&self) -> Positions {
        let order = self.queue();
        let by_request = order
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i as u32 + 1))
            .collect();
        Positions {
            queue_len: order.len(),
            by_request,
        }
    }

    /// Why a request is still waiting; `None` if it is not waiting. Runs every filter over
    /// every host (O(hosts)): a view for people, not for the hot path.
    pub fn why(&self, id: RequestId) -> Option<Why> {
        let r = self.requests.get(&id)?;
        if r.state != RequestState::Waiting {
            return None;
        }
        let mut counts: BTreeMap<Reason, u32> = BTreeMap::new();
        let mut named: BTreeMap<Reason, Vec<String>> = BTreeMap::new();
        let mut hosts_fit = 0;
        let mut hosts_total = 0;
        let mut quota: BTreeMap<u32, QuotaWait> = BTreeMap::new();
        for (host_idx, host) in self.fleet.hosts.iter().enumerate() {
            if host.removed {
                continue;
            }
            hosts_total += 1;
            let probe = Probe {
                host,
                avail: host.free(),
                need: &r.need,
                provisioning_max: self.fleet.provisioning_max,
            };
            match first_failure(&PIPELINE, &probe) {
                Some(reason) => {
                    *counts.entry(reason).or_default() += 1;
                    let names = named.entry(reason).or_default();
                    if names.len() < WHY_HOSTS_NAMED {
                        names.push(host.spec.name.clone());
                    }
                }
                None => {
                    let refused = self.quotas.as_ref().and_then(|q| {
                        let class = q.class_of(host_idx)?;
                        let why = q.admits(r.quota_account, class, &r.need, 0).err()?;
                        Some((class, q.explain(r.quota_account, class, why)))
                    });
                    match refused {
                        Some((class, refusal)) => {
                            let w = quota.entry(class).or_insert_with(|| QuotaWait {
                                text: refusal.to_string(),
                                account: refusal.account,
                                class: refusal.class,
                                hosts: 0,
                                named: Vec::new(),
                            });
                            w.hosts += 1;
                            if w.named.len() < WHY_HOSTS_NAMED {
                                w.named.push(host.spec.name.clone());
                            }
                        }
                        None => hosts_fit += 1,
                    }
                }
            }
        }
        let mut reasons: Vec<(Reason, u32)> = counts.into_iter().collect();
        reasons.sort_by_key(|&(reason, n)| (std::cmp::Reverse(n), reason));
        let head = self
            .queue
            .head(self.now_ms, self.config.aging_step_ms)
            .map(|e| e.request);
        let wait = r
            .queue_key
            .map_or(Wait::NotConsidered, |(p, s)| self.queue.wait(p, s));
        let blocker = match wait {
            _ if policy::of(self.config.policy).head_blocks && head.is_some_and(|h| h != id) => {
                Blocker::BehindHead(head.unwrap_or(id))
            }
            // A pass stops early once no ready host has a vCPU free, so the requests after
            // that point were never looked at; no host fits them now, and that is the blocker.
            Wait::NotConsidered if hosts_fit == 0 => Blocker::NoFit,
            Wait::NotConsidered => Blocker::NotYetConsidered,
            Wait::NoFit => Blocker::NoFit,
            Wait::GangShort { fit, need } => Blocker::GangShort { fit, need },
            Wait::Reserved { head, start_ms } => Blocker::Reserved { head, start_ms },
            Wait::Quota => Blocker::Quota,
            Wait::Image { hold, .. } => Blocker::Image(hold),
        };
        let image = match wait {
            Wait::Image { image, .. } => Some(self.images.name(image).to_owned()),
            _ => None,
        };
        Some(Why {
            request: id,
            need: describe_need(&r.spec, r.vm_spec.shape),
            n_waiting_vms: r.queued.len(),
            blocker,
            reasons,
            named,
            quota: quota.into_values().collect(),
            image,
            hosts_fit,
            hosts_total,
            now_ms: self.now_ms,
        })
    }
}
