//! Placing one request: as many of its queued VMs as capacity and a reservation allow (a gang
//! all or none), refused without a search when the pass already knows it cannot fit.

use super::images::Verdict;
use super::reservation::{covers, reservation_cost};
use super::state::{EndEntry, Reservation, Scheduler};
use crate::fleet::Need;
use crate::model::{RequestId, VmState};
use crate::output::{Action, Cause};
use crate::queue::{ImageHold, Wait};

/// What one `place_request` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Attempt {
    /// At least one VM was placed: the fleet changed.
    Placed,
    /// Nothing was placed. `lasting`: no request of its group can start for the rest of this
    /// walk either (capacity only shrinks within a walk).
    Failed { lasting: bool },
}

impl Scheduler {
    /// Places as many queued VMs of the request as policy and capacity allow (a pending gang:
    /// all or none). Under a reservation, a VM that would outlive the shadow time may only take
    /// capacity the head will not need.
    pub(super) fn place_request(
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
        let quota_account = r.quota_account;
        let held_for = reservation.as_ref().map(|res| (res.head, res.shadow_ms));
        let extra_before = reservation.as_ref().map_or(0, |res| res.extra);

        let mut search = std::mem::take(&mut self.search_spare).renew(
            &self.config,
            &self.fleet,
            &need,
            self.rotate_from,
        );
        let mut chosen: Vec<usize> = Vec::with_capacity(want);
        let mut refused_by_reservation = false;
        // Classes whose quota let the account have none more in this attempt, and the VMs
        // chosen so far per class (a gang's VMs count before any of them is charged).
        let mut refused_by_quota = false;
        let mut on_class: Vec<(u32, i64)> = Vec::new();
        // With images: hosts this attempt starts a pull on, and hosts left out because their
        // budget cannot make room (bounded, so a search never walks a whole fleet that way).
        let mut pulls: Vec<usize> = Vec::new();
        let mut image_hold: Option<ImageHold> = None;
        let mut image_exclusions = 0;
        while chosen.len() < want {
            let Some(h) = search.best(&self.fleet, &need, &self.config) else {
                break;
            };
            let verdict = self.image_verdict(h, &need, &pulls);
            match verdict {
                Verdict::Ready | Verdict::Pull => {}
                Verdict::Exclude if image_exclusions < self.config.candidates_max => {
                    image_exclusions += 1;
                    search.exclude(h);
                    continue;
                }
                Verdict::Exclude => {
                    image_hold = Some(ImageHold::NoDisk);
                    break;
                }
                Verdict::Wait(hold) => {
                    image_hold = Some(hold);
                    break;
                }
            }
            if let Some(q) = self.quotas.as_ref()
                && let Some(class) = q.class_of(h)
            {
                let pending = on_class
                    .iter()
                    .find(|&&(c, _)| c == class)
                    .map_or(0, |&(_, n)| n);
                if q.admits(quota_account, class, &need, pending).is_err() {
                    // Holdings only grow within an attempt: no host of the class will do.
                    for &i in &q.class_hosts[class as usize] {
                        search.exclude(i);
                    }
                    refused_by_quota = true;
                    continue;
                }
                match on_class.iter_mut().find(|(c, _)| *c == class) {
                    Some((_, n)) => *n += 1,
                    None => on_class.push((class, 1)),
                }
            }
            if limited && let Some(res) = reservation.as_deref_mut() {
                let cost = reservation_cost(
                    &self.fleet,
                    res,
                    self.back_now(h),
                    &self.freed_at_shadow,
                    h,
                    &need,
                );
                if cost > res.extra {
                    search.exclude(h);
                    refused_by_reservation = true;
                    continue;
                }
                res.extra -= cost;
            }
            if verdict == Verdict::Pull {
                pulls.push(h);
            }
            self.fleet.allocate(h, &need, vms[chosen.len()]);
            chosen.push(h);
            search.recheck(&self.fleet, &need, h, &self.config);
        }
        self.search_spare = search;

        let placed_all = chosen.len() == want;
        // A host passed over for its image budget had room: what failed is not a lack of room,
        // and a pull ending there (no change to capacity) may make the difference.
        if image_exclusions > 0 && image_hold.is_none() {
            image_hold = Some(ImageHold::NoDisk);
        }
        let refused_by_image = image_hold.is_some();
        if chosen.is_empty() && !refused_by_reservation && !refused_by_quota && !refused_by_image {
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
                _ if refused_by_quota => Wait::Quota,
                _ if chosen.is_empty()
                    && let Some(hold) = image_hold =>
                {
                    Wait::Image {
                        image: need.image,
                        hold,
                    }
                }
                _ if gang && !chosen.is_empty() => Wait::GangShort {
                    fit: chosen.len() as u32,
                    need: want as u32,
                },
                _ => Wait::NoFit,
            };
            // What the quota refused is the account's, not the need's: another account's
            // request of the same need may well start.
            if !refused_by_quota && !refused_by_image {
                self.pass
                    .failed
                    .push((need, limited, at_least, self.fleet.version, wait));
            }
            self.set_wait(id, wait);
            // A placement later in the walk may start a pull that a request of this kind
            // could join: one held back by images is tried again after the next placement.
            return Attempt::Failed {
                lasting: lasting && !refused_by_image,
            };
        }

        // The pulls come out before the VMs that wait for them.
        for &h in &pulls {
            self.start_pull(h, need.image, false, &[]);
        }
        if self.image_book.is_some() {
            for &h in &chosen {
                self.touch_image(h, need.image);
            }
        }
        let now = self.now_ms;
        let Some(r) = self.requests.get_mut(&id) else {
            return Attempt::Placed;
        };
        r.queued.drain(..chosen.len());
        r.gang_pending = false;
        let vm_spec = r.vm_spec.clone();
        let account = r.account;
        let used = EndEntry::of(&r.need);
        let expected_end = now
            .saturating_add(r.expected_start_ms)
            .saturating_add(r.expected_run_ms);
        for (&vm, &h) in vms.iter().zip(&chosen) {
            self.seat_vm(vm, h, true, expected_end, used);
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
        if let Some(fair) = self.fair.as_mut() {
            fair.charge(account, &need, chosen.len() as i64, now);
        }
        if let Some(q) = self.quotas.as_mut() {
            for &h in &chosen {
                q.charge(quota_account, h, &need, 1);
            }
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

    /// Notes that no host has room for one VM of `need` now (see `Pass::no_room`).
    fn note_no_room(&mut self, need: &Need) {
        if !self.pass.no_room.contains(need) {
            self.pass.no_room.push(need.clone());
        }
    }
}
