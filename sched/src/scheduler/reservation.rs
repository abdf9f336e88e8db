//! The blocked head's reservation under backfilling: when it is expected to fit, from the
//! expected ends of the VMs now running, and what placing a VM elsewhere would take from it.

use super::state::{HeadRoom, Reservation, Scheduler};
use crate::fleet::{Amount, Fleet, Need};
use crate::model::RequestId;
use crate::placement::filter::{STATIC, passes_empty};
use crate::queue::Wait;

impl Scheduler {
    /// The head's reservation: walk the expected ends of running VMs until enough of the head's
    /// shape is free on `Ready` hosts that could run it.
    pub(super) fn reserve(&mut self, head: RequestId) -> Option<Reservation> {
        let r = self.requests.get(&head)?;
        let need = r.need.clone();
        let wanted = if r.gang_pending {
            r.queued.len() as i64
        } else {
            (r.queued.len() as i64).min(1)
        };
        self.refresh_head_room(&need);
        // Capacity each host gets back from expected ends by the shadow time, kept densely by
        // host index until the next reservation (the backfill checks read it); only the hosts
        // touched last time are reset.
        let mut freed = std::mem::take(&mut self.freed_at_shadow);
        let mut touched = std::mem::take(&mut self.freed_touched);
        for &i in &touched {
            if let Some(slot) = freed.get_mut(i) {
                *slot = None;
            }
        }
        touched.clear();
        freed.resize(self.fleet.hosts.len(), None);
        let base = &self.head_room;
        // Per host the walk touched: what it has free at this point of the walk, and how many
        // of the head's shape that fits.
        let mut walked = std::mem::take(&mut self.walk_room);
        walked.resize(self.fleet.hosts.len(), (Amount::default(), 0));
        let mut room = base.room;
        let mut shadow_ms = (room >= wanted).then_some(self.now_ms);
        for (end_ms, _, entry) in self.ends.iter() {
            if let Some(s) = shadow_ms
                && end_ms > s
            {
                break;
            }
            let idx = entry.host as usize;
            if base.fits[idx] < 0 {
                continue;
            }
            let before = freed[idx].get_or_insert_with(|| {
                touched.push(idx);
                walked[idx] = (self.back_now(idx), base.fits[idx]);
                Amount::default()
            });
            entry.add_to(before);
            let (avail, fits) = &mut walked[idx];
            entry.add_to(avail);
            let has = avail.fit_count(&need);
            room += has - *fits;
            *fits = has;
            if shadow_ms.is_none() && room >= wanted {
                shadow_ms = Some(end_ms.max(self.now_ms));
            }
        }
        let all_eligible = base.unable == 0;
        self.freed_at_shadow = freed;
        self.freed_touched = touched;
        self.walk_room = walked;
        let shadow_ms = shadow_ms.unwrap_or(u64::MAX);
        // A head that would start now but for its base image keeps saying so.
        let held_for_image = shadow_ms <= self.now_ms
            && self
                .requests
                .get(&head)
                .and_then(|r| r.queue_key)
                .is_some_and(|(level, seq)| {
                    matches!(self.queue.wait(level, seq), Wait::Image { .. })
                });
        if !held_for_image {
            self.set_wait(
                head,
                Wait::Reserved {
                    head,
                    start_ms: shadow_ms,
                },
            );
        }
        Some(Reservation {
            head,
            need,
            shadow_ms,
            extra: (room - wanted).max(0),
            all_eligible,
        })
    }

    /// What host `idx` has free once the VMs being destroyed on it are gone.
    pub(super) fn back_now(&self, idx: usize) -> Amount {
        let free = self.fleet.hosts[idx].free();
        match self.releasing.get(idx) {
            Some(back) => free.plus(back),
            None => free,
        }
    }

    /// Brings `head_room` up to date for `need`: recounted over every host when the need, the
    /// fleet's generation or its size changed (and always in the reference scheduler), else
    /// only on the hosts changed since the last reservation.
    fn refresh_head_room(&mut self, need: &Need) {
        // Hosts changed in this pass are still on the fleet's list (`recheck_no_room` takes it
        // at the start of the next pass and notes them then, which is harmless twice).
        for i in 0..self.fleet.changed.len() {
            let idx = self.fleet.changed[i];
            self.head_room.touch(idx);
        }
        let mut dirty = std::mem::take(&mut self.head_room.dirty);
        let n = self.fleet.hosts.len();
        let fresh = self.reference_walk
            || self.head_room.need.as_ref() != Some(need)
            || self.head_room.generation != self.fleet_generation
            || self.head_room.fits.len() != n;
        if fresh {
            let room = &mut self.head_room;
            room.need = Some(need.clone());
            room.generation = self.fleet_generation;
            room.fits.clear();
            room.fits.resize(n, HeadRoom::NO_NEW_VMS);
            room.room = 0;
            room.unable = 0;
            for idx in 0..n {
                let fits = self.head_fits(idx, need);
                self.head_room.count(idx, fits);
            }
        } else {
            for &idx in &dirty {
                let fits = self.head_fits(idx, need);
                self.head_room.count(idx, fits);
            }
        }
        for &idx in &dirty {
            if let Some(mark) = self.head_room.marked.get_mut(idx) {
                *mark = false;
            }
        }
        dirty.clear();
        self.head_room.dirty = dirty;
    }

    /// How many of the head's shape host `idx` fits now, once what is being destroyed on it is
    /// gone; or why it counts for none.
    fn head_fits(&self, idx: usize, need: &Need) -> i64 {
        let host = &self.fleet.hosts[idx];
        if !host.takes_new_vms() {
            return HeadRoom::NO_NEW_VMS;
        }
        // Driver and labels are static: a host that fails them never runs the head.
        if !passes_empty(&STATIC[..2], host, need, self.fleet.provisioning_max) {
            return HeadRoom::UNABLE;
        }
        self.back_now(idx).fit_count(need)
    }
}

/// How many VMs of the head's shape placing one VM of `need` on `host_idx` takes away at the
/// shadow time.
pub(super) fn reservation_cost(
    fleet: &Fleet,
    res: &Reservation,
    back_now: Amount,
    freed: &[Option<Amount>],
    host_idx: usize,
    need: &Need,
) -> i64 {
    let host = &fleet.hosts[host_idx];
    if !passes_empty(&STATIC[..2], host, &res.need, fleet.provisioning_max) {
        return 0;
    }
    let at_shadow = back_now.plus(&freed.get(host_idx).copied().flatten().unwrap_or_default());
    let mut after = at_shadow;
    after.sub(need);
    at_shadow.fit_count(&res.need) - after.fit_count(&res.need)
}

/// Whether one VM of `a` takes at least what one VM of `b` needs, in every dimension `b` uses.
pub(super) fn covers(a: &Need, b: &Need) -> bool {
    a.cpu_milli >= b.cpu_milli
        && a.memory_mib >= b.memory_mib
        && (b.slot.is_none() || a.slot == b.slot)
}
