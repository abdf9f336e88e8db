//! Warm pools (`Config::warm`): VMs of a template booted ahead of demand on a host class. A
//! waiting request whose VMs a warm VM fits takes one at once (a handover, no new capacity);
//! pools refill after the queue was served, from capacity left over; warm VMs are the first to
//! go when a waiting request that no warm VM fits needs their room, or when their host drains.
//!
//! Without pools none of this runs: `Scheduler::warm` is `None` and every hook returns at once.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use super::images::Verdict;
use super::state::{AfterDestroy, EndEntry, Scheduler};
use crate::config::Warm;
use crate::fleet::{Amount, Need};
use crate::model::{RequestId, Shape, VmId, VmState};
use crate::output::{Action, Cause, VmSpec};
use crate::placement::filter::{STATIC, passes_empty};
use crate::placement::fits;
use crate::queue::{Entry, Wait};

/// One pool's state.
#[derive(Clone, Debug)]
pub(crate) struct Pool {
    pub(super) config: Warm,
    /// What its VMs take and are, once its template is known.
    pub(super) need: Option<(Need, VmSpec)>,
    /// Its VMs not being destroyed, oldest first (placed, provisioning, booting or idle).
    pub(super) live: Vec<VmId>,
    /// Those of them booted and idle, oldest first: the ones a request can take.
    pub(super) idle: Vec<VmId>,
    /// The fleet version at which a refill last found no host with room: until the fleet
    /// changes, another refill would find none either.
    pub(super) stuck_at: Option<u64>,
    /// Its class's hosts, as of the fleet generation beside them.
    pub(super) hosts: Vec<usize>,
    pub(super) hosts_generation: u64,
    /// Requests that took one of its VMs.
    pub(super) handovers: u64,
}

/// A warm VM: its pool, its host and what it takes there.
#[derive(Clone, Debug)]
pub(crate) struct WarmVm {
    pub(super) pool: usize,
    pub(super) host: usize,
    pub(super) need: Need,
    /// Being destroyed (evicted, drained, or failed to boot).
    pub(super) releasing: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct WarmBook {
    pub(super) pools: Vec<Pool>,
    pub(super) vms: BTreeMap<VmId, WarmVm>,
    /// A warm VM became idle or left since the last pass: hand over and refill even if nothing
    /// else changed.
    pub(super) due: bool,
    /// Warm VMs destroyed to make room for a waiting request.
    pub(super) evicted: u64,
}

/// A pool as operators and the simulator see it (`Scheduler::warm_pools`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmPoolView {
    pub template: String,
    pub class: String,
    /// The configured size.
    pub count: u32,
    /// Warm VMs not being destroyed (placed, provisioning, booting or idle).
    pub live: u32,
    /// Of those, booted and idle.
    pub idle: u32,
    /// Requests' VMs that took a warm VM (pool hits).
    pub handovers: u64,
}

impl WarmBook {
    pub(super) fn new(warm: &[Warm]) -> Option<WarmBook> {
        (!warm.is_empty()).then(|| WarmBook {
            pools: warm
                .iter()
                .map(|w| Pool {
                    config: w.clone(),
                    need: None,
                    live: Vec::new(),
                    idle: Vec::new(),
                    stuck_at: None,
                    hosts: Vec::new(),
                    hosts_generation: 0,
                    handovers: 0,
                })
                .collect(),
            vms: BTreeMap::new(),
            due: true,
            evicted: 0,
        })
    }

    /// The pools whose VMs fit a request's `need` (same shape, slot, drivers and image; the
    /// labels are each VM's host's to satisfy).
    fn pools_for<'a>(&'a self, need: &'a Need) -> impl Iterator<Item = usize> + 'a {
        self.pools.iter().enumerate().filter_map(move |(i, p)| {
            p.need
                .as_ref()
                .is_some_and(|(n, _)| {
                    n.cpu_milli == need.cpu_milli
                        && n.memory_mib == need.memory_mib
                        && n.slot == need.slot
                        && n.drivers == need.drivers
                        && n.image == need.image
                })
                .then_some(i)
        })
    }

    /// Forgets a warm VM that is being destroyed or gone from its pool's lists.
    fn leave_pool(&mut self, vm: VmId) {
        if let Some(w) = self.vms.get(&vm) {
            let p = &mut self.pools[w.pool];
            p.live.retain(|&v| v != vm);
            p.idle.retain(|&v| v != vm);
            self.due = true;
        }
    }
}

impl Scheduler {
    /// Learns what each pool's VMs are from the configured templates.
    pub(super) fn with_warm(mut self) -> Scheduler {
        let Some(book) = self.warm.as_ref() else {
            return self;
        };
        let mut names: Vec<String> = book
            .pools
            .iter()
            .map(|p| p.config.template.clone())
            .collect();
        names.dedup();
        for name in names {
            self.warm_template_set(&name);
        }
        self
    }

    /// Whether a pass is due for the pools alone (a warm VM became idle or left).
    pub(super) fn warm_due(&self) -> bool {
        self.warm.as_ref().is_some_and(|w| w.due)
    }

    /// Every pool with its size and hits, in configuration order.
    pub fn warm_pools(&self) -> Vec<WarmPoolView> {
        let Some(book) = self.warm.as_ref() else {
            return Vec::new();
        };
        book.pools
            .iter()
            .map(|p| WarmPoolView {
                template: p.config.template.clone(),
                class: p.config.class.clone(),
                count: p.config.count,
                live: p.live.len() as u32,
                idle: p.idle.len() as u32,
                handovers: p.handovers,
            })
            .collect()
    }

    /// The pool of warm VM `vm` (its index in `warm_pools`) and what its VMs are, if it is a
    /// warm VM whose pool's template is known: what a daemon needs to provision it again after
    /// a restart and to show it.
    pub fn warm_vm(&self, vm: VmId) -> Option<(usize, &VmSpec)> {
        let book = self.warm.as_ref()?;
        let pool = book.vms.get(&vm)?.pool;
        let (_, spec) = book.pools[pool].need.as_ref()?;
        Some((pool, spec))
    }

    /// What warm VM `vm` takes on its host, if it is one.
    pub(super) fn warm_need(&self, vm: VmId) -> Option<Need> {
        self.warm.as_ref()?.vms.get(&vm).map(|w| w.need.clone())
    }

    /// Learns (again) what a pool's VMs are once its template is known or replaced. Warm VMs
    /// of an older shape no request can take are destroyed.
    pub(super) fn warm_template_set(&mut self, name: &str) {
        let Some(book) = self.warm.as_ref() else {
            return;
        };
        let pools: Vec<usize> = (0..book.pools.len())
            .filter(|&p| book.pools[p].config.template == name)
            .collect();
        let shapes: Vec<Option<Shape>> =
            pools.iter().map(|&p| book.pools[p].config.shape).collect();
        for (p, shape) in pools.into_iter().zip(shapes) {
            let resolved = self.template_need(name, shape);
            let Some(book) = self.warm.as_mut() else {
                return;
            };
            let pool = &mut book.pools[p];
            if pool.need.as_ref().map(|(n, _)| n) == resolved.as_ref().map(|(n, _)| n) {
                continue;
            }
            pool.need = resolved;
            pool.stuck_at = None;
            book.due = true;
            let stale = pool.idle.clone();
            for vm in stale {
                self.evict_warm(vm, Cause::Released);
            }
        }
    }

    /// A warm VM finished booting: it waits in its pool, unless its host takes no new VMs.
    pub(super) fn warm_booted(&mut self, vm: VmId) {
        let Some(book) = self.warm.as_mut() else {
            return;
        };
        let Some(w) = book.vms.get(&vm) else {
            return;
        };
        let host = w.host;
        if !self.fleet.hosts[host].takes_new_vms() {
            self.evict_warm(vm, Cause::OperatorDrain);
            return;
        }
        book.pools[w.pool].idle.push(vm);
        book.due = true;
    }

    /// A warm VM ended (destroyed or lost): it leaves the books.
    pub(super) fn warm_forget(&mut self, vm: VmId) {
        if let Some(book) = self.warm.as_mut() {
            book.leave_pool(vm);
            book.vms.remove(&vm);
        }
    }

    /// A host drains: its idle warm VMs go now, before anything else on it ends.
    pub(super) fn warm_drain(&mut self, host_idx: usize) {
        let Some(book) = self.warm.as_ref() else {
            return;
        };
        let idle: Vec<VmId> = self.fleet.hosts[host_idx]
            .vms
            .iter()
            .copied()
            .filter(|vm| {
                book.vms
                    .get(vm)
                    .is_some_and(|w| !w.releasing && book.pools[w.pool].idle.contains(vm))
            })
            .collect();
        let mut idle = idle;
        idle.sort_unstable();
        for vm in idle {
            self.evict_warm(vm, Cause::OperatorDrain);
        }
    }

    /// Destroys an idle warm VM.
    fn evict_warm(&mut self, vm: VmId, cause: Cause) {
        if let Some(book) = self.warm.as_mut() {
            book.leave_pool(vm);
            if let Some(w) = book.vms.get_mut(&vm) {
                w.releasing = true;
            }
        }
        self.destroy_vm(vm, AfterDestroy::End(VmState::Done), cause);
    }

    /// Hands idle warm VMs to waiting requests they fit: after arrivals alone, only the
    /// arrivals are looked at (a request that waited before found no idle VM then); after a
    /// warm VM became idle, every group of the queue.
    pub(super) fn hand_over_warm(&mut self) {
        let Some(book) = self.warm.as_ref() else {
            return;
        };
        if book.pools.iter().all(|p| p.idle.is_empty()) {
            return;
        }
        let (now, step) = (self.now_ms, self.config.aging_step_ms);
        let mut order: Vec<Entry> = Vec::new();
        if book.due {
            for (_, g) in self.queue.groups() {
                if g.kind.together != 1 {
                    continue;
                }
                let n: usize = book
                    .pools_for(&g.kind.need)
                    .map(|p| book.pools[p].idle.len())
                    .sum();
                order.extend(g.members.values().take(n).copied());
            }
        } else {
            for id in &self.pass.arrivals {
                let Some(r) = self.requests.get(id) else {
                    continue;
                };
                let entry = r
                    .queue_key
                    .and_then(|(level, seq)| self.queue.get(level, seq));
                if let Some(&e) = entry
                    && !r.gang_pending
                    && book.pools_for(&r.need).next().is_some()
                {
                    order.push(e);
                }
            }
        }
        if order.is_empty() {
            return;
        }
        let queue = &self.queue;
        order.sort_by_key(|e| Reverse(queue.key(e, now, step)));
        order.dedup_by_key(|e| e.seq);
        for e in order {
            self.hand_over_to(e.request);
        }
    }

    /// Gives a waiting request as many idle warm VMs as it has queued VMs and its pool has
    /// idle VMs on hosts with its labels (and its quota admits).
    fn hand_over_to(&mut self, id: RequestId) {
        loop {
            let Some(r) = self.requests.get(&id) else {
                return;
            };
            if r.queued.is_empty() || r.ending.is_some() || r.gang_pending {
                return;
            }
            let Some(book) = self.warm.as_ref() else {
                return;
            };
            let fleet = &self.fleet;
            let quotas = self.quotas.as_ref();
            let warm = book
                .pools_for(&r.need)
                .flat_map(|p| book.pools[p].idle.iter().copied())
                .find(|vm| {
                    let Some(w) = book.vms.get(vm) else {
                        return false;
                    };
                    let host = &fleet.hosts[w.host];
                    r.need.labels.iter().all(|&l| host.has_label(l))
                        && quotas.is_none_or(|q| {
                            q.class_of(w.host)
                                .is_none_or(|c| q.admits(r.quota_account, c, &r.need, 0).is_ok())
                        })
                });
            let Some(warm) = warm else {
                return;
            };
            self.hand_over(id, warm);
        }
    }

    /// Hands warm VM `warm` to request `id`'s first queued VM, which takes its place (and the
    /// capacity it holds) on its host.
    fn hand_over(&mut self, id: RequestId, warm: VmId) {
        let Some(book) = self.warm.as_mut() else {
            return;
        };
        let Some(w) = book.vms.remove(&warm) else {
            return;
        };
        let pool = &mut book.pools[w.pool];
        pool.live.retain(|&v| v != warm);
        pool.idle.retain(|&v| v != warm);
        pool.handovers += 1;
        book.due = true;
        let h = w.host;
        let now = self.now_ms;
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        let vm = r.queued.remove(0);
        r.gang_pending = false;
        let (account, quota_account, need) = (r.account, r.quota_account, r.need.clone());
        let expected_end = now.saturating_add(r.expected_run_ms);
        let used = EndEntry::of(&r.need);
        // The warm VM's share on the host becomes the request VM's: same amounts, another id.
        self.fleet.update(h, |host| {
            if let Some(slot) = host.vms.iter_mut().find(|v| **v == warm) {
                *slot = vm;
            }
        });
        self.vm_to(warm, VmState::Done, Cause::Handover { vm });
        self.vms.remove(&warm);
        self.seat_vm(vm, h, false, expected_end, used);
        self.vm_to(vm, VmState::Booting, Cause::Handover { vm: warm });
        self.actions.push_back(Action::Handover {
            vm,
            warm,
            request: id,
            host: self.fleet.hosts[h].spec.id,
        });
        if let Some(fair) = self.fair.as_mut() {
            fair.charge(account, &need, 1, now);
        }
        if let Some(q) = self.quotas.as_mut() {
            q.charge(quota_account, h, &need, 1);
        }
        if let Some(r) = self.requests.get_mut(&id)
            && r.queued.is_empty()
            && let Some((p, s)) = r.queue_key.take()
        {
            self.queue.remove(p, s);
        }
        self.maybe_finish(id);
    }

    /// After the queue was served: warm VMs make room for waiting requests no warm VM fits,
    /// then pools refill from what is left.
    pub(super) fn tend_warm(&mut self) {
        if self.warm.is_none() {
            return;
        }
        self.evict_for_waiting();
        self.refill_warm();
        if let Some(book) = self.warm.as_mut() {
            book.due = false;
        }
    }

    /// For a waiting request of one VM at a time that no warm VM fits and for which no host has
    /// room: if destroying idle warm VMs on one host gives it room (and no room is already
    /// coming back from warm VMs being destroyed), those are destroyed, oldest first and no
    /// more than it takes.
    fn evict_for_waiting(&mut self) {
        let Some(book) = self.warm.as_ref() else {
            return;
        };
        if book.pools.iter().all(|p| p.idle.is_empty()) {
            return;
        }
        // Per host: its idle warm VMs (oldest first) and what warm VMs being destroyed there
        // give back.
        let mut by_host: BTreeMap<usize, (Vec<VmId>, Amount)> = BTreeMap::new();
        for (&vm, w) in &book.vms {
            let entry = by_host.entry(w.host).or_default();
            if w.releasing {
                entry.1.add(&w.need);
            } else if book.pools[w.pool].idle.contains(&vm) {
                entry.0.push(vm);
            }
        }
        // The kinds warm VMs give way to: under a policy that serves the head first, the head's
        // alone (nothing else would take the room); under greedy, every kind that found no
        // room. Never a kind a warm VM fits (it takes one), nor a gang's first placement.
        let mut needs: Vec<Need> = Vec::new();
        let fleet = &self.fleet;
        let fitted = |need: &Need| {
            book.pools_for(need).any(|p| {
                book.pools[p].live.iter().any(|vm| {
                    book.vms.get(vm).is_some_and(|w| {
                        need.labels
                            .iter()
                            .all(|&l| fleet.hosts[w.host].has_label(l))
                    })
                })
            })
        };
        if super::policy::of(self.config.policy).head_first {
            let head = self
                .queue
                .head(self.now_ms, self.config.aging_step_ms)
                .and_then(|e| self.requests.get(&e.request));
            if let Some(r) = head
                && !r.gang_pending
                && !fitted(&r.need)
                && !self.any_fits(&r.need)
            {
                needs.push(r.need.clone());
            }
        } else {
            for (_, g) in self.queue.groups() {
                if g.kind.together != 1
                    || g.members.is_empty()
                    || !matches!(g.wait, Wait::NoFit | Wait::NotConsidered)
                    || fitted(&g.kind.need)
                    || self.any_fits(&g.kind.need)
                    || needs.contains(&g.kind.need)
                {
                    continue;
                }
                needs.push(g.kind.need.clone());
            }
        }
        let mut evict: Vec<VmId> = Vec::new();
        for need in needs {
            let mut chosen: Option<usize> = None;
            let mut coming = false;
            for (&h, (idle, releasing)) in &by_host {
                let host = &self.fleet.hosts[h];
                if !host.takes_new_vms()
                    || !passes_empty(&STATIC, host, &need, self.fleet.provisioning_max)
                {
                    continue;
                }
                let mut room = host.free().plus(releasing);
                if room.fit_count(&need) > 0 {
                    coming = true;
                    break;
                }
                if chosen.is_none() {
                    for &vm in idle {
                        if let Some(w) = self.warm.as_ref().and_then(|b| b.vms.get(&vm)) {
                            room.add(&w.need);
                        }
                    }
                    if room.fit_count(&need) > 0 {
                        chosen = Some(h);
                    }
                }
            }
            if coming {
                continue;
            }
            let Some(h) = chosen else {
                continue;
            };
            let Some((idle, releasing)) = by_host.get_mut(&h) else {
                continue;
            };
            let mut room = self.fleet.hosts[h].free().plus(releasing);
            while room.fit_count(&need) == 0 && !idle.is_empty() {
                let vm = idle.remove(0);
                if let Some(w) = self.warm.as_ref().and_then(|b| b.vms.get(&vm)) {
                    room.add(&w.need);
                    releasing.add(&w.need);
                }
                evict.push(vm);
            }
        }
        for vm in evict {
            if let Some(book) = self.warm.as_mut() {
                book.evicted += 1;
            }
            self.evict_warm(vm, Cause::WarmEvicted);
        }
    }

    /// Whether some ready host has room for one VM of `need` now.
    fn any_fits(&self, need: &Need) -> bool {
        if self.pass.no_room.contains(need) || !self.fleet.index.may_fit_somewhere(need) {
            return false;
        }
        let mut search = crate::placement::Search::new(&self.config, &self.fleet, need, 0);
        search.best(&self.fleet, need, &self.config).is_some()
    }

    /// Places new warm VMs until each pool has its count, on the first hosts of its class
    /// with room (in host order), from capacity the pass left over.
    fn refill_warm(&mut self) {
        let n_pools = self.warm.as_ref().map_or(0, |b| b.pools.len());
        for p in 0..n_pools {
            self.refill_pool(p);
        }
    }

    fn refill_pool(&mut self, p: usize) {
        let generation = self.fleet_generation;
        let version = self.fleet.version;
        let Some(book) = self.warm.as_mut() else {
            return;
        };
        let pool = &mut book.pools[p];
        let Some((need, spec)) = pool.need.clone() else {
            return;
        };
        if pool.live.len() >= pool.config.count as usize || pool.stuck_at == Some(version) {
            return;
        }
        if pool.hosts_generation != generation {
            pool.hosts_generation = generation;
            pool.hosts = (0..self.fleet.hosts.len())
                .filter(|&i| {
                    let h = &self.fleet.hosts[i];
                    crate::host_class(&h.spec.name, &h.spec.labels) == pool.config.class
                })
                .collect();
        }
        let hosts = std::mem::take(&mut pool.hosts);
        let mut short = pool.config.count as usize - pool.live.len();
        // Room that warm VMs being destroyed leave is for the request they make room for.
        let making_room: Vec<usize> = book
            .vms
            .values()
            .filter(|w| w.releasing)
            .map(|w| w.host)
            .collect();
        for &h in &hosts {
            if making_room.contains(&h) {
                continue;
            }
            while short > 0
                && self.fleet.hosts[h].takes_new_vms()
                && fits(&self.fleet, h, &need)
                && self.image_verdict(h, &need, &[]) == Verdict::Ready
            {
                self.place_warm(p, h, &need, &spec);
                short -= 1;
            }
            if short == 0 {
                break;
            }
        }
        let version = self.fleet.version;
        if let Some(book) = self.warm.as_mut() {
            let pool = &mut book.pools[p];
            pool.hosts = hosts;
            pool.stuck_at = (short > 0).then_some(version);
        }
    }

    fn place_warm(&mut self, p: usize, h: usize, need: &Need, spec: &VmSpec) {
        let vm = self.new_vm(RequestId::WARM_POOL, Cause::Submitted);
        self.fleet.allocate(h, need, vm);
        if let Some(v) = self.vms.get_mut(&vm) {
            v.host = Some(h);
            v.provisioning = true;
        }
        if let Some(book) = self.warm.as_mut() {
            book.pools[p].live.push(vm);
            book.vms.insert(
                vm,
                WarmVm {
                    pool: p,
                    host: h,
                    need: need.clone(),
                    releasing: false,
                },
            );
        }
        if self.image_book.is_some() {
            self.touch_image(h, need.image);
        }
        self.vm_to(vm, VmState::Placed, Cause::Placed);
        self.actions.push_back(Action::Provision {
            vm,
            request: RequestId::WARM_POOL,
            host: self.fleet.hosts[h].spec.id,
            spec: spec.clone(),
        });
    }

    /// What VMs of template `name` take (`shape`, else its default; no labels) and are.
    fn template_need(&mut self, name: &str, shape: Option<Shape>) -> Option<(Need, VmSpec)> {
        let t = self.templates.get(name)?.clone();
        let shape = shape.unwrap_or(t.default_shape);
        let spec = VmSpec {
            template: t.name.clone(),
            base_image: t.base_image.clone(),
            guest_os: t.guest_os,
            shape,
        };
        let need = Need {
            cpu_milli: i64::from(shape.vcpus) * 1000,
            memory_mib: shape.memory_mib as i64,
            slot: t
                .slot
                .as_ref()
                .map(|k| self.slot_kinds.intern(k) as usize)
                .filter(|&k| k < crate::fleet::SLOT_KINDS_MAX),
            drivers: crate::fleet::driver_mask(&t.drivers),
            labels: Vec::new(),
            label_bloom: 0,
            image: self.images.intern(&t.base_image),
        };
        Some((need, spec))
    }
}
