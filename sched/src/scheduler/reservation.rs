//! The blocked head's reservation under backfilling: when it is expected to fit, from the
//! expected ends of the VMs now running, and what placing a VM elsewhere would take from it.

use super::state::{Reservation, Scheduler};
use crate::fleet::{Amount, Fleet, Need};
use crate::model::RequestId;
use crate::placement::filter::{Probe, STATIC, first_failure};
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
}

/// How many VMs of the head's shape placing one VM of `need` on `host_idx` takes away at the
/// shadow time.
pub(super) fn reservation_cost(
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
pub(super) fn covers(a: &Need, b: &Need) -> bool {
    a.cpu_milli >= b.cpu_milli
        && a.memory_mib >= b.memory_mib
        && (b.slot.is_none() || a.slot == b.slot)
}
