//! Walks over the queue in service order: its heads until one waits, every waiting request
//! (by group, so a walk costs groups and placements, not the queue's length), or the arrivals.

use std::collections::BinaryHeap;

use super::place::Attempt;
use super::state::{Reservation, Scheduler};
use crate::model::RequestId;
use crate::queue::{Entry, ServiceKey, Wait};

impl Scheduler {
    /// Places heads of the queue in order until one does not fit; returns that head.
    pub(super) fn serve_heads(&mut self, full: bool) -> Option<RequestId> {
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
    pub(super) fn walk_queue(
        &mut self,
        skip: Option<RequestId>,
        mut reservation: Option<&mut Reservation>,
    ) {
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
        let mut heads = std::mem::take(&mut self.scratch);
        heads.clear();
        for g in self.queue.groups_mut() {
            let Some(&first) = g.members.values().next() else {
                continue;
            };
            let fit = free.fit_count(&g.kind.need);
            let together = i64::from(g.kind.together);
            let no_room = self.pass.no_room.contains(&g.kind.need);
            if fit >= together && !no_room {
                heads.push(first);
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
        let mut next: BinaryHeap<(ServiceKey, Entry)> = heads
            .iter()
            .map(|e| (self.queue.key(e, now, step), *e))
            .collect();
        self.scratch = heads;
        // Parked groups, each with the sequence number after the member that failed.
        let mut parked: Vec<(u64, u64)> = Vec::new();
        while let Some((_, e)) = next.pop() {
            if Some(e.request) == skip {
                if let Some(m) = self.queue.next_in_group(&e) {
                    next.push((self.queue.key(&m, now, step), m));
                }
                continue;
            }
            if self.fleet.ready_free.cpu_milli <= 0 {
                break;
            }
            match self.place_request(e.request, reservation.as_deref_mut()) {
                Attempt::Placed => {
                    if let Some(m) = self.queue.next_in_group(&e) {
                        next.push((self.queue.key(&m, now, step), m));
                    }
                    for (group, from) in parked.drain(..) {
                        if let Some(m) = self.queue.first_after(group, from, &e, now, step) {
                            next.push((self.queue.key(&m, now, step), m));
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
    pub(super) fn serve_arrivals(
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
}
