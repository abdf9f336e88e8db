//! The placement pass: run when something changed since the last, it rejects what can no
//! longer fit and lets the queue policy serve the queue.

use std::cmp::Reverse;

use super::policy;
use super::requests::describe_need;
use super::state::Scheduler;
use crate::fleet::Need;
use crate::model::RequestState;
use crate::output::Cause;
use crate::placement::filter::{STATIC, passes_empty};
use crate::placement::fits;

impl Scheduler {
    /// Runs a pass if anything changed since the last: capacity came back or the fleet changed
    /// (the whole queue is walked), requests arrived (only they are tried), or the head moved.
    pub(super) fn schedule(&mut self) {
        self.recheck_no_room();
        self.rank_accounts();
        if !self.pass.capacity_changed
            && self.pass.arrivals.is_empty()
            && !self.head_moved()
            && !self.warm_due()
        {
            return;
        }
        // A warm VM handed over takes no new capacity: it comes before the policy's walk.
        self.hand_over_warm();
        self.reclaim_quotas();
        let full = self.pass.capacity_changed;
        self.pass.failed.clear();
        if self.pass.checked_generation != self.fleet_generation {
            self.pass.checked_generation = self.fleet_generation;
            self.reject_unfittable();
        }
        let version = self.fleet.version;
        (policy::of(self.config.policy).serve)(self, full);
        self.pass.capacity_changed = false;
        self.pass.arrivals.clear();
        self.pull_ahead();
        self.tend_warm();
        // A claimant that started in this pass may leave its class to borrowers: when one did,
        // the next poll walks the queue again. (A pass that placed nothing changed no claim.)
        if self.fleet.version != version {
            self.reclaim_quotas();
        }
    }

    /// Under fair share, orders the accounts as of now for this pass.
    fn rank_accounts(&mut self) {
        if let Some(fair) = self.fair.as_mut() {
            fair.rank(self.now_ms);
            self.queue.set_ranks(&fair.ranks);
        }
    }

    /// Under quotas, decides which classes are reclaimed for this pass: those on which an
    /// account waits within its guarantee with a request that was not placed when it came (see
    /// `policy::quota`). When a class stops being reclaimed, borrowers may start again, so the
    /// whole queue is walked.
    fn reclaim_quotas(&mut self) {
        let Some(q) = self.quotas.as_ref() else {
            return;
        };
        if self.runs_on_class_generation != self.fleet_generation {
            self.runs_on_class_generation = self.fleet_generation;
            self.runs_on_class.clear();
        }
        let mut wanted: Vec<(u32, u32, u64)> = Vec::new();
        for (group, g) in self.queue.groups() {
            // Its oldest member has waited since before now. Only the queue's contents decide
            // (not the verdicts, which a walk that stops early leaves unset), so both walks
            // reclaim alike.
            let waited = g
                .members
                .values()
                .next()
                .is_some_and(|e| e.enqueued_ms < self.now_ms);
            if !waited {
                continue;
            }
            let account = g.kind.quota_account;
            for class in 0..q.n_classes() {
                if q.within_guarantee(account, class, &g.kind.need) {
                    wanted.push((class, account, group));
                }
            }
        }
        let mut pairs = Vec::with_capacity(wanted.len());
        for (class, account, group) in wanted {
            if self.runs_on_class(group, class) {
                pairs.push((class, account));
            }
        }
        if let Some(q) = self.quotas.as_mut()
            && q.set_reclaimed(pairs)
        {
            self.pass.capacity_changed = true;
        }
    }

    /// Whether some host of quota class `class` could ever run a VM of the queue's group
    /// `group` (static filters on empty hosts), learnt once per group and fleet change (a
    /// group's id is never given to another kind).
    fn runs_on_class(&mut self, group: u64, class: u32) -> bool {
        let key = (group, class);
        if let Some(&runs) = self.runs_on_class.get(&key) {
            return runs;
        }
        let Some(need) = self.queue.group(group).map(|g| g.kind.need.clone()) else {
            return false;
        };
        let fleet = &self.fleet;
        let runs = self.quotas.as_ref().is_some_and(|q| {
            q.class_hosts[class as usize].iter().any(|&i| {
                let host = &fleet.hosts[i];
                !host.removed && passes_empty(&STATIC, host, &need, fleet.provisioning_max)
            })
        });
        self.runs_on_class.insert(key, runs);
        runs
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
        for &idx in &changed {
            self.head_room.touch(idx);
        }
        changed.clear();
        self.fleet.changed = changed;
    }

    /// Under a policy that serves the head first, whether the head of the queue is another than
    /// the one the last pass left waiting: the head was cancelled or failed, or aging moved a
    /// request ahead of it. Either may let the new head start with no change to capacity.
    fn head_moved(&self) -> bool {
        policy::of(self.config.policy).head_first
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
            let queue = &self.queue;
            order.sort_by_key(|e| Reverse(queue.key(e, now, step)));
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
}
