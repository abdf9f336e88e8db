//! The scheduler: a sans-IO state machine. Inputs go in through `handle(now_ms, input)`;
//! actions, events and the next timeout are pulled with `poll_*`.
//!
//! `handle` only applies an input; the placement pass runs when `poll_action` or `poll_event`
//! finds nothing left to hand out, so a caller that feeds a batch of inputs (all arrivals and
//! completions of one instant, or a burst of API calls) gets one pass over them. Read the views
//! after polling both until `None`.
//!
//! A pass costs what changed, not the queue's length. After arrivals alone it tries only the
//! arrivals. After capacity came back it walks the queue by groups of one kind (`walk_queue`):
//! only each group's next member is tried, a group that found no room leaves the pass, and a
//! need no host had room for is not searched again until a host that changed has room
//! (`Pass::no_room`). `Scheduler::reference` keeps the one-by-one walk the tests compare with.

mod hosts;
mod lifecycle;
mod requests;
mod state;
mod timers;
mod vms;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use crate::config::{Config, Policy};
use crate::fleet::{Amount, Fleet, Interner, Need};
use crate::idmap::IdMap;
use crate::input::{Input, InputError};
use crate::model::{RequestId, RequestState, VmId, VmState};
use crate::output::{Action, Cause, Event};
use crate::placement::filter::{Probe, STATIC, first_failure};
use crate::placement::{Search, fits};
use crate::queue::{Entry, Queue, ServiceKey, Wait};

pub use requests::REQUEST_VMS_MAX;
pub(crate) use requests::describe_need;
pub use state::Scheduler;
use state::{EndEntry, Pass, Reservation};

/// What one `place_request` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attempt {
    /// At least one VM was placed: the fleet changed.
    Placed,
    /// Nothing was placed. `lasting`: no request of its group can start for the rest of this
    /// walk either (capacity only shrinks within a walk).
    Failed { lasting: bool },
}

impl Scheduler {
    pub fn new(config: Config) -> Scheduler {
        let templates = config
            .templates
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        Scheduler {
            fleet: Fleet::new(config.provisioning_per_host_max),
            config,
            templates,
            host_ids: BTreeMap::new(),
            host_names: BTreeMap::new(),
            labels: Interner::default(),
            images: Interner::default(),
            slot_kinds: Interner::default(),
            requests: IdMap::default(),
            vms: IdMap::default(),
            queue: Queue::default(),
            ends: BTreeMap::new(),
            timers: BTreeSet::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            next_vm: 1,
            now_ms: 0,
            pass: Pass::default(),
            rotate_from: 0,
            fleet_generation: 1,
            never_fits_cache: BTreeMap::new(),
            scratch: Vec::new(),
            freed_at_shadow: Vec::new(),
            freed_touched: Vec::new(),
            eligible_for_head: Vec::new(),
            reference_walk: false,
        }
    }

    /// A scheduler whose passes walk every waiting request one by one, in service order, as
    /// berth did before waiting requests were grouped by kind. It decides exactly as
    /// `Scheduler::new` does, at a cost that grows with the queue's length: it is the reference
    /// the tests compare the grouped walk against (`tests/sched/equivalence.rs`), not for use.
    #[doc(hidden)]
    pub fn reference(config: Config) -> Scheduler {
        Scheduler {
            reference_walk: true,
            ..Scheduler::new(config)
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The time of the latest input.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Applies one input at time `now_ms` (earlier times than a previous input count as that
    /// previous time). An `Err` means the input was refused and nothing changed.
    pub fn handle(&mut self, now_ms: u64, input: Input) -> Result<(), InputError> {
        let before_ms = self.now_ms;
        self.now_ms = self.now_ms.max(now_ms);
        let result = self.apply(input);
        if result.is_err() {
            // A refused input changes nothing, not even the clock.
            self.now_ms = before_ms;
        }
        result
    }

    fn apply(&mut self, input: Input) -> Result<(), InputError> {
        match input {
            Input::Submit(spec) => self.submit(spec),
            Input::Cancel(id) => self.cancel(id),
            Input::AddHost(spec) => self.add_host(spec),
            Input::RemoveHost(id) => self.remove_host(id),
            Input::Probe { host, result } => self.probe(host, result),
            Input::Drain(id) => self.drain(id),
            Input::Resume(id) => self.resume(id),
            Input::Offline(id) => self.offline(id),
            Input::ProvisionStarted(vm) => self.provision_started(vm),
            Input::ProvisionDone { vm, result } => self.provision_done(vm, result),
            Input::BootDone { vm, result } => self.boot_done(vm, result),
            Input::JobFinished { vm, passed } => self.job_finished(vm, passed),
            Input::Release(vm) => self.release(vm),
            Input::Extend { vm, by_ms } => self.extend(vm, by_ms),
            Input::DestroyDone { vm, result } => self.destroy_done(vm, result),
            Input::VmLost(vm) => self.vm_lost(vm),
            Input::ReserveVmIds(VmId(last)) => {
                let next = last.checked_add(1).ok_or(InputError::Invalid {
                    field: "vm",
                    reason: "no VM id is left past it".into(),
                })?;
                self.next_vm = self.next_vm.max(next);
                Ok(())
            }
            Input::SetTemplate(t) => self.set_template(t),
            Input::Tick => {
                self.tick();
                Ok(())
            }
        }
    }

    /// The next thing for a driver to do. Actions already decided come out first; only when
    /// none is left does the placement pass run over everything fed since the last one (so a
    /// caller that completes a destroy at once, as the zero-latency simulator does, has the
    /// capacity back before the pass).
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        if self.actions.is_empty() {
            self.schedule();
        }
        self.actions.pop_front()
    }

    /// The next state transition. Like `poll_action`, runs a pending pass once none is left.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.events.is_empty() {
            self.schedule();
        }
        self.events.pop_front()
    }

    /// When to call `handle(t, Input::Tick)` next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.first().map(|&(t, _)| t)
    }

    // ---- the placement pass ----

    fn schedule(&mut self) {
        self.recheck_no_room();
        if !self.pass.capacity_changed && self.pass.arrivals.is_empty() && !self.head_moved() {
            return;
        }
        let full = self.pass.capacity_changed;
        self.pass.failed.clear();
        if self.pass.checked_generation != self.fleet_generation {
            self.pass.checked_generation = self.fleet_generation;
            self.reject_unfittable();
        }
        match self.config.policy {
            Policy::Fcfs => {
                self.serve_heads(full);
            }
            Policy::Easy => {
                if let Some(head) = self.serve_heads(full) {
                    self.backfill(head, full);
                }
            }
            Policy::Greedy => self.serve_all(full),
            Policy::AccasimEasy => self.serve_accasim_easy(),
        }
        self.pass.capacity_changed = false;
        self.pass.arrivals.clear();
    }

    /// Drops from `no_room` every need that a host changed since the last check now has room for.
    fn recheck_no_room(&mut self) {
        let mut changed = std::mem::take(&mut self.fleet.changed);
        if !self.pass.no_room.is_empty() && !changed.is_empty() {
            changed.sort_unstable();
            changed.dedup();
            let fleet = &self.fleet;
            self.pass
                .no_room
                .retain(|need| !changed.iter().any(|&h| fits(fleet, h, need)));
        }
        changed.clear();
        self.fleet.changed = changed;
    }

    /// Notes that no host has room for one VM of `need` now (see `Pass::no_room`).
    fn note_no_room(&mut self, need: &Need) {
        if !self.pass.no_room.contains(need) {
            self.pass.no_room.push(need.clone());
        }
    }

    /// Under FCFS and EASY, whether the head of the queue is another than the one the last pass
    /// left waiting: the head was cancelled or failed, or aging moved a request ahead of it.
    /// Either may let the new head start with no change to capacity.
    fn head_moved(&self) -> bool {
        self.config.policy != Policy::Greedy
            && self
                .queue
                .head(self.now_ms, self.config.aging_step_ms)
                .is_some_and(|e| Some(e.request) != self.pass.blocked_head)
    }

    /// After the fleet shrank: a waiting request none of whose VMs runs yet and that no host
    /// could ever fit any more is rejected, not left waiting forever. Whether a request could
    /// ever fit depends only on its kind, so only the members of groups that cannot are looked
    /// at (the reference looks at every waiting request).
    fn reject_unfittable(&mut self) {
        let (now, step) = (self.now_ms, self.config.aging_step_ms);
        let mut order = std::mem::take(&mut self.scratch);
        if self.reference_walk {
            self.queue.ordered(now, step, &mut order);
        } else {
            order.clear();
            let kinds: Vec<(u64, Need, u32)> = self
                .queue
                .groups()
                .map(|(id, g)| (id, g.kind.need.clone(), g.kind.together))
                .collect();
            for (group, need, together) in kinds {
                if self.never_fits(&need, together).is_some() {
                    order.extend(self.queue.members(group));
                }
            }
            order.sort_by_key(|e| Reverse(Queue::key(e, now, step)));
        }
        for e in &order {
            let Some(r) = self.requests.get(&e.request) else {
                continue;
            };
            if r.live as usize != r.queued.len() || r.retries_used > 0 {
                continue;
            }
            let together = if r.gang_pending {
                r.queued.len() as u32
            } else {
                1
            };
            let (need, spec, shape) = (r.need.clone(), r.spec.clone(), r.vm_spec.shape);
            if let Some(why) = self.never_fits(&need, together) {
                let why = format!("{}: {why}", describe_need(&spec, shape));
                self.end_request(e.request, RequestState::Rejected, Cause::NeverFits(why));
            }
        }
        self.scratch = order;
    }

    /// AccaSim 1.1.3's EASYBackfilling as that code behaves, for cross-checking the simulator
    /// against it (see docs/simulation.md): the blocked head gets a reservation once and is
    /// tried again only when that time has come, and meanwhile every other request that fits
    /// starts, whether or not it delays the head. Not EASY; not for production.
    fn serve_accasim_easy(&mut self) {
        let head = self
            .queue
            .head(self.now_ms, self.config.aging_step_ms)
            .map(|e| e.request);
        let reserved = self
            .pass
            .reservation
            .as_ref()
            .filter(|r| Some(r.head) == head)
            .map(|r| r.shadow_ms);
        match (head, reserved) {
            (Some(_), Some(at)) if self.now_ms < at => {}
            (Some(h), Some(_)) => {
                self.place_request(h, None);
                let placed = self.requests.get(&h).is_none_or(|r| r.queue_key.is_none());
                if placed {
                    let blocked = self.serve_heads(true);
                    self.pass.reservation = blocked.and_then(|b| self.reserve(b));
                }
            }
            _ => {
                let blocked = self.serve_heads(true);
                self.pass.reservation = blocked.and_then(|b| self.reserve(b));
            }
        }
        let blocked = self.pass.reservation.as_ref().map(|r| r.head);
        self.walk_queue(blocked, None);
    }

    /// Places heads of the queue in order until one does not fit; returns that head.
    fn serve_heads(&mut self, full: bool) -> Option<RequestId> {
        loop {
            let head = self
                .queue
                .head(self.now_ms, self.config.aging_step_ms)?
                .request;
            let unchanged = !full
                && self.pass.blocked_head == Some(head)
                && !self.pass.arrivals.contains(&head);
            if unchanged {
                return Some(head);
            }
            self.place_request(head, None);
            let still_waiting = self
                .requests
                .get(&head)
                .is_some_and(|r| r.queue_key.is_some());
            if still_waiting {
                self.pass.blocked_head = Some(head);
                return Some(head);
            }
        }
    }

    /// Serves every waiting request but `skip`, in service order, until no ready host has a
    /// vCPU free: what calling `place_request` on each in turn does (and what the reference
    /// walk does), at a cost that follows the groups and the placements, not the queue's length.
    ///
    /// Between two placements the fleet stands still, so the members of one group fare alike;
    /// and within a walk capacity only shrinks. The walk therefore merges the groups by the
    /// service key of each one's next member and tries only that member. A group whose member
    /// failed for good (`lasting`) leaves the walk. One that only the reservation's accounting
    /// refused is parked: after the next placement it goes on from its first member served after
    /// that placement (the members in between would have met the same fleet and failed alike).
    fn walk_queue(&mut self, skip: Option<RequestId>, mut reservation: Option<&mut Reservation>) {
        let (now, step) = (self.now_ms, self.config.aging_step_ms);
        if self.reference_walk {
            let mut order = std::mem::take(&mut self.scratch);
            self.queue.ordered(now, step, &mut order);
            for e in &order {
                if Some(e.request) == skip {
                    continue;
                }
                if self.fleet.ready_free.cpu_milli <= 0 {
                    break;
                }
                self.place_request(e.request, reservation.as_deref_mut());
            }
            self.scratch = order;
            return;
        }
        // A group that the free capacity of all ready hosts together cannot hold, or whose need
        // no host has room for, stays out of the walk: capacity only shrinks within it. Its
        // verdict is what `place_request` would say (the head's group keeps the reservation's).
        let free = self.fleet.ready_free;
        let mut next: BinaryHeap<(ServiceKey, Entry)> = BinaryHeap::new();
        for g in self.queue.groups_mut() {
            let Some(&first) = g.members.values().next() else {
                continue;
            };
            let fit = free.fit_count(&g.kind.need);
            let together = i64::from(g.kind.together);
            let no_room = self.pass.no_room.contains(&g.kind.need);
            if fit >= together && !no_room {
                next.push((Queue::key(&first, now, step), first));
            } else if Some(first.request) != skip {
                g.wait = if together > 1 && fit > 0 && !no_room {
                    Wait::GangShort {
                        fit: fit as u32,
                        need: g.kind.together,
                    }
                } else {
                    Wait::NoFit
                };
            }
        }
        // Parked groups, each with the sequence number after the member that failed.
        let mut parked: Vec<(u64, u64)> = Vec::new();
        while let Some((_, e)) = next.pop() {
            if Some(e.request) == skip {
                if let Some(m) = self.queue.next_in_group(&e) {
                    next.push((Queue::key(&m, now, step), m));
                }
                continue;
            }
            if self.fleet.ready_free.cpu_milli <= 0 {
                break;
            }
            match self.place_request(e.request, reservation.as_deref_mut()) {
                Attempt::Placed => {
                    if let Some(m) = self.queue.next_in_group(&e) {
                        next.push((Queue::key(&m, now, step), m));
                    }
                    for (group, from) in parked.drain(..) {
                        if let Some(m) = self.queue.first_after(group, from, &e, now, step) {
                            next.push((Queue::key(&m, now, step), m));
                        }
                    }
                }
                Attempt::Failed { lasting: true } => {}
                Attempt::Failed { lasting: false } => parked.push((e.group, e.seq + 1)),
            }
        }
    }

    /// The requests that got new queued VMs since the last pass, oldest first, but `skip`:
    /// a pass after arrivals alone tries only them.
    fn serve_arrivals(
        &mut self,
        skip: Option<RequestId>,
        mut reservation: Option<&mut Reservation>,
    ) {
        let mut order = std::mem::take(&mut self.scratch);
        order.clear();
        for &id in &self.pass.arrivals {
            let queued = self.requests.get(&id).and_then(|r| r.queue_key);
            if let Some(&e) = queued.and_then(|(p, s)| self.queue.get(p, s)) {
                order.push(e);
            }
        }
        order.sort_by_key(|e| e.seq);
        order.dedup_by_key(|e| e.seq);
        for e in &order {
            if Some(e.request) == skip {
                continue;
            }
            if self.fleet.ready_free.cpu_milli <= 0 {
                break;
            }
            self.place_request(e.request, reservation.as_deref_mut());
        }
        self.scratch = order;
    }

    /// Greedy: every waiting request that fits starts, in service order.
    fn serve_all(&mut self, full: bool) {
        if full {
            self.walk_queue(None, None);
        } else {
            self.serve_arrivals(None, None);
        }
    }

    /// EASY: the blocked head keeps its reservation; the others start now if they do not
    /// delay it.
    fn backfill(&mut self, head: RequestId, full: bool) {
        let stale = self
            .pass
            .reservation
            .as_ref()
            .is_none_or(|r| r.head != head);
        if full || stale {
            self.pass.reservation = self.reserve(head);
        }
        let Some(mut reservation) = self.pass.reservation.take() else {
            return;
        };
        if full || stale {
            self.walk_queue(Some(head), Some(&mut reservation));
        } else {
            self.serve_arrivals(Some(head), Some(&mut reservation));
        }
        self.pass.reservation = Some(reservation);
    }

    /// The head's reservation: walk the expected ends of running VMs until enough of the head's
    /// shape is free on `Ready` hosts that could run it.
    fn reserve(&mut self, head: RequestId) -> Option<Reservation> {
        let r = self.requests.get(&head)?;
        let need = r.need.clone();
        let wanted = if r.gang_pending {
            r.queued.len() as i64
        } else {
            (r.queued.len() as i64).min(1)
        };
        let eligible_static = |fleet: &Fleet, idx: usize| {
            let host = &fleet.hosts[idx];
            first_failure(
                &STATIC[..2],
                &Probe {
                    host,
                    avail: host.capacity,
                    need: &need,
                    provisioning_max: fleet.provisioning_max,
                },
            )
            .is_none()
        };
        // Driver and labels are static: check them once per class of hosts, and note per host
        // whether it takes new VMs and could run the head, for the walk over expected ends.
        let mut eligible = std::mem::take(&mut self.eligible_for_head);
        eligible.clear();
        eligible.resize(self.fleet.hosts.len(), false);
        let mut room: i64 = 0;
        let mut all_eligible = true;
        for members in self.fleet.classes.values() {
            let could_run = members
                .first()
                .is_some_and(|&i| eligible_static(&self.fleet, i));
            for &i in members {
                let host = &self.fleet.hosts[i];
                if !host.takes_new_vms() {
                    continue;
                }
                if could_run {
                    eligible[i] = true;
                    room += host.free().fit_count(&need);
                } else {
                    all_eligible = false;
                }
            }
        }
        // Capacity each host gets back by the shadow time, kept densely by host index until the
        // next reservation (the backfill checks read it); only the hosts touched last time are
        // reset.
        let mut freed = std::mem::take(&mut self.freed_at_shadow);
        let mut touched = std::mem::take(&mut self.freed_touched);
        for &i in &touched {
            if let Some(slot) = freed.get_mut(i) {
                *slot = None;
            }
        }
        touched.clear();
        freed.resize(self.fleet.hosts.len(), None);
        let mut shadow_ms = (room >= wanted).then_some(self.now_ms);
        for (&(end_ms, _), entry) in &self.ends {
            let (idx, used) = (entry.host as usize, entry.amount());
            if let Some(s) = shadow_ms
                && end_ms > s
            {
                break;
            }
            if !eligible[idx] {
                continue;
            }
            let free = self.fleet.hosts[idx].free();
            let before = freed[idx].get_or_insert_with(|| {
                touched.push(idx);
                Amount::default()
            });
            let had = free.plus(before).fit_count(&need);
            *before = before.plus(&used);
            let has = free.plus(before).fit_count(&need);
            room += has - had;
            if shadow_ms.is_none() && room >= wanted {
                shadow_ms = Some(end_ms.max(self.now_ms));
            }
        }
        self.freed_at_shadow = freed;
        self.freed_touched = touched;
        self.eligible_for_head = eligible;
        let shadow_ms = shadow_ms.unwrap_or(u64::MAX);
        self.set_wait(
            head,
            Wait::Reserved {
                head,
                start_ms: shadow_ms,
            },
        );
        Some(Reservation {
            head,
            need,
            shadow_ms,
            extra: (room - wanted).max(0),
            all_eligible,
        })
    }

    /// Places as many queued VMs of the request as policy and capacity allow (a pending gang:
    /// all or none). Under a reservation, a VM that would outlive the shadow time may only take
    /// capacity the head will not need.
    fn place_request(
        &mut self,
        id: RequestId,
        mut reservation: Option<&mut Reservation>,
    ) -> Attempt {
        let Some(r) = self.requests.get(&id) else {
            return Attempt::Failed { lasting: false };
        };
        if r.queued.is_empty() || r.ending.is_some() {
            return Attempt::Failed { lasting: false };
        }
        // Decide cheaply whether to try at all before copying anything: most attempts in a
        // deep queue end here.
        let want = r.queued.len();
        let gang = r.gang_pending;
        let ends_by = self
            .now_ms
            .saturating_add(r.expected_start_ms)
            .saturating_add(r.expected_run_ms);
        let at_least = if gang { want as i64 } else { 1 };
        let free_fit = self.fleet.ready_free.fit_count(&r.need);
        let limited = reservation
            .as_ref()
            .is_some_and(|res| ends_by > res.shadow_ms);
        // Within one walk capacity only shrinks, so a request that does not fit now fits no
        // better later in the walk; only the reservation's accounting can change its mind (a
        // host that fills up may stop counting against the head).
        let lasting = !limited;
        let version = self.fleet.version;
        let known = self
            .pass
            .failed
            .iter()
            .find(|(n, l, count, v, _)| {
                *v == version && *l == limited && *count <= at_least && *n == r.need
            })
            .map(|&(_, _, _, _, wait)| wait);
        // A VM at least as large as the head's takes at least one of the head's VMs away at the
        // shadow time on any host that could run the head; when every host could, a request
        // that needs more VMs than the reservation spares cannot start now.
        // No host has room for one VM: the ready hosts' total says so, or the index's root
        // summary (a bound on every host), or it was so when last looked at and no host that
        // changed since has room (the reference walk does not keep that note).
        let no_room = free_fit == 0
            || !self.fleet.index.may_fit_somewhere(&r.need)
            || (!self.reference_walk && self.pass.no_room.contains(&r.need));
        let spares_too_few = limited
            && reservation.as_ref().is_some_and(|res| {
                res.all_eligible && at_least > res.extra && covers(&r.need, &res.need)
            });
        let refuse = if spares_too_few {
            reservation.as_ref().map(|res| Wait::Reserved {
                head: res.head,
                start_ms: res.shadow_ms,
            })
        } else if free_fit < at_least {
            Some(if gang && free_fit > 0 {
                Wait::GangShort {
                    fit: free_fit as u32,
                    need: want as u32,
                }
            } else {
                Wait::NoFit
            })
        } else if no_room {
            Some(Wait::NoFit)
        } else {
            known
        };
        if let Some(wait) = refuse {
            if no_room {
                let need = r.need.clone();
                self.note_no_room(&need);
            }
            self.set_wait(id, wait);
            return Attempt::Failed { lasting };
        }
        let vms = r.queued.clone();
        let need = r.need.clone();
        let held_for = reservation.as_ref().map(|res| (res.head, res.shadow_ms));
        let extra_before = reservation.as_ref().map_or(0, |res| res.extra);

        let mut search = Search::new(&self.config, &self.fleet, &need, self.rotate_from);
        let mut chosen: Vec<usize> = Vec::with_capacity(want);
        let mut refused_by_reservation = false;
        while chosen.len() < want {
            let Some(h) = search.best(&self.fleet, &need, &self.config) else {
                break;
            };
            if limited && let Some(res) = reservation.as_deref_mut() {
                let cost = reservation_cost(&self.fleet, res, &self.freed_at_shadow, h, &need);
                if cost > res.extra {
                    search.exclude(h);
                    refused_by_reservation = true;
                    continue;
                }
                res.extra -= cost;
            }
            self.fleet.allocate(h, &need, vms[chosen.len()]);
            chosen.push(h);
            search.recheck(&self.fleet, &need, h, &self.config);
        }

        let placed_all = chosen.len() == want;
        if chosen.is_empty() && !refused_by_reservation {
            self.note_no_room(&need);
        }
        if chosen.is_empty() || (gang && !placed_all) {
            for (&h, &vm) in chosen.iter().zip(&vms) {
                self.fleet.release(h, &need, vm, true);
            }
            if let Some(res) = reservation {
                res.extra = extra_before;
            }
            let wait = match held_for {
                Some((head, start_ms)) if refused_by_reservation => {
                    Wait::Reserved { head, start_ms }
                }
                _ if gang && !chosen.is_empty() => Wait::GangShort {
                    fit: chosen.len() as u32,
                    need: want as u32,
                },
                _ => Wait::NoFit,
            };
            self.pass
                .failed
                .push((need, limited, at_least, self.fleet.version, wait));
            self.set_wait(id, wait);
            return Attempt::Failed { lasting };
        }

        let now = self.now_ms;
        let Some(r) = self.requests.get_mut(&id) else {
            return Attempt::Placed;
        };
        r.queued.drain(..chosen.len());
        r.gang_pending = false;
        let vm_spec = r.vm_spec.clone();
        // Only backfilling reads expected ends; the other policies skip their upkeep.
        let keep_ends = matches!(self.config.policy, Policy::Easy | Policy::AccasimEasy);
        let used = EndEntry::of(&r.need);
        let expected_end = now
            .saturating_add(r.expected_start_ms)
            .saturating_add(r.expected_run_ms);
        for (&vm, &h) in vms.iter().zip(&chosen) {
            if let Some(v) = self.vms.get_mut(&vm) {
                v.host = Some(h);
                v.provisioning = true;
                v.expected_end_ms = expected_end;
            }
            if keep_ends {
                self.ends.insert(
                    (expected_end, vm),
                    EndEntry {
                        host: h as u32,
                        ..used
                    },
                );
            }
            self.vm_to(vm, VmState::Placed, Cause::Placed);
            self.actions.push_back(Action::Provision {
                vm,
                request: id,
                host: self.fleet.hosts[h].spec.id,
                spec: vm_spec.clone(),
            });
        }
        if let Some(&last) = chosen.last() {
            self.rotate_from = last + 1;
        }
        if let Some(r) = self.requests.get_mut(&id) {
            if r.queued.is_empty() {
                if let Some((p, s)) = r.queue_key.take() {
                    self.queue.remove(p, s);
                }
            } else if let Some((p, s)) = r.queue_key {
                self.queue.set_wait(p, s, Wait::NoFit);
            }
        }
        self.maybe_finish(id);
        Attempt::Placed
    }
}

/// How many VMs of the head's shape placing one VM of `need` on `host_idx` takes away at the
/// shadow time.
fn reservation_cost(
    fleet: &Fleet,
    res: &Reservation,
    freed: &[Option<Amount>],
    host_idx: usize,
    need: &Need,
) -> i64 {
    let host = &fleet.hosts[host_idx];
    let eligible = first_failure(
        &STATIC[..2],
        &Probe {
            host,
            avail: host.capacity,
            need: &res.need,
            provisioning_max: fleet.provisioning_max,
        },
    )
    .is_none();
    if !eligible {
        return 0;
    }
    let at_shadow = host
        .free()
        .plus(&freed.get(host_idx).copied().flatten().unwrap_or_default());
    let mut after = at_shadow;
    after.sub(need);
    at_shadow.fit_count(&res.need) - after.fit_count(&res.need)
}

/// Whether one VM of `a` takes at least what one VM of `b` needs, in every dimension `b` uses.
fn covers(a: &Need, b: &Need) -> bool {
    a.cpu_milli >= b.cpu_milli
        && a.memory_mib >= b.memory_mib
        && (b.slot.is_none() || a.slot == b.slot)
}
