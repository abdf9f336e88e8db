//! The queue of waiting requests: one FIFO per priority level, merged by effective priority,
//! and the same requests again in groups of one kind each.
//!
//! Aging adds one level per `aging_step_ms` waited. Within a level the oldest request has aged
//! the most, so each level is already in effective-priority order and the whole queue is a
//! k-way merge of the level heads (k = distinct priorities, usually one or two).
//!
//! A group holds the waiting requests of one [`Kind`] (priority, what one VM needs, how many
//! VMs must start together, expected duration) in arrival order. Its members are a sub-sequence
//! of one level, so they too are in service order, and merging the group heads by service key
//! gives the whole queue again. Members of one kind fare alike in a pass: a pass tries a group
//! instead of walking each request (see `Scheduler::walk_queue`). A deep queue of CI requests
//! holds a few dozen kinds, whatever its length.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::fleet::Need;
use crate::model::RequestId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Entry {
    pub request: RequestId,
    /// Its account under fair share (0 for every request without).
    pub account: u32,
    pub priority: i32,
    pub seq: u64,
    pub enqueued_ms: u64,
    /// The id of its group.
    pub group: u64,
}

/// Where an entry stands in the service order: a larger key is served first. Whether it has
/// waited past fair share's age limit (those first), its account's fair-share rank (lower
/// first; no rank once past the limit), then its effective priority, then arrival.
pub(crate) type ServiceKey = (bool, Reverse<u32>, i64, Reverse<u64>);

/// A level of the queue: requests of one account and one priority, in arrival order.
pub(crate) type Level = (u32, i32);

/// Everything a pass looks at to decide whether a waiting request can start now, apart from
/// the request's identity. Fixed while the request waits: priority, need and duration never
/// change, and a pending gang's size cannot (none of its VMs runs, so none comes back; its
/// first placement takes them all and it leaves the queue). A request that leaves the queue
/// and comes back is queued again under its kind of then.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Kind {
    /// Its account under fair share (0 for every request without): members of one group must
    /// share their rank in the service order.
    pub account: u32,
    /// Its account under quotas (0 for every request without): members of one group must
    /// meet the same quotas.
    pub quota_account: u32,
    pub priority: i32,
    pub need: Need,
    /// VMs that must be placed at once: a pending gang's size, otherwise 1.
    pub together: u32,
    /// Under EASY, expected provisioning, boot and run time: whether its VMs would outlive the
    /// reservation. Zero under the other policies, which do not look at it.
    pub duration_ms: u64,
}

/// Why a waiting request is still waiting, as the last pass that tried one of its group found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    NotConsidered,
    NoFit,
    GangShort {
        fit: u32,
        need: u32,
    },
    Reserved {
        head: RequestId,
        start_ms: u64,
    },
    /// Hosts had room, but its account's quota on their class let it have none.
    Quota,
    /// Hosts had room, but not its base image (interned id), and a pull there was not started
    /// for the reason given.
    Image {
        image: u32,
        hold: ImageHold,
    },
}

/// Why a VM waits for its base image rather than pulling it to a host with room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageHold {
    /// The image store serves as many pulls as it may at once.
    StoreBusy,
    /// A host holding the image is expected to have room before a pull would be done.
    HolderSooner,
    /// The hosts with room cannot fit it on their image disk beside the images in use.
    NoDisk,
}

/// The waiting requests of one kind, by sequence number (arrival order).
#[derive(Clone, Debug)]
pub(crate) struct Group {
    pub kind: Kind,
    pub members: BTreeMap<u64, Entry>,
    /// What the last attempt for one of its members found; every member shares it.
    pub wait: Wait,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Queue {
    pub(crate) levels: BTreeMap<(u32, Reverse<i32>), BTreeMap<u64, Entry>>,
    /// Per account, its fair-share rank for this pass (empty without fair share).
    pub(crate) ranks: Vec<u32>,
    /// Fair share's age limit: a request that has waited this long is served before the fair
    /// order, by priority with aging and arrival (None: never).
    pub(crate) age_limit_ms: Option<u64>,
    pub(crate) groups: BTreeMap<u64, Group>,
    pub(crate) group_ids: BTreeMap<Kind, u64>,
    pub(crate) next_seq: u64,
    pub(crate) next_group: u64,
    pub(crate) len: usize,
}

impl Queue {
    /// An empty queue under fair share's age limit (see `age_limit_ms`).
    pub fn with_age_limit(age_limit_ms: Option<u64>) -> Queue {
        Queue {
            age_limit_ms,
            ..Queue::default()
        }
    }

    pub fn push(&mut self, request: RequestId, kind: Kind, enqueued_ms: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let (account, priority) = (kind.account, kind.priority);
        let group = match self.group_ids.get(&kind) {
            Some(&id) => id,
            None => {
                let id = self.next_group;
                self.next_group += 1;
                self.group_ids.insert(kind.clone(), id);
                self.groups.insert(
                    id,
                    Group {
                        kind,
                        members: BTreeMap::new(),
                        wait: Wait::NotConsidered,
                    },
                );
                id
            }
        };
        let entry = Entry {
            request,
            account,
            priority,
            seq,
            enqueued_ms,
            group,
        };
        self.levels
            .entry((account, Reverse(priority)))
            .or_default()
            .insert(seq, entry);
        if let Some(g) = self.groups.get_mut(&group) {
            g.members.insert(seq, entry);
        }
        self.len += 1;
        seq
    }

    /// Per account (fair share's id), how many requests wait: a walk over the levels, not
    /// over the requests.
    pub fn waiting_by_account(&self) -> BTreeMap<u32, usize> {
        let mut out = BTreeMap::new();
        for ((account, _), level) in &self.levels {
            *out.entry(*account).or_default() += level.len();
        }
        out
    }

    pub fn remove(&mut self, (account, priority): Level, seq: u64) {
        let Some(level) = self.levels.get_mut(&(account, Reverse(priority))) else {
            return;
        };
        let Some(entry) = level.remove(&seq) else {
            return;
        };
        self.len -= 1;
        if level.is_empty() {
            self.levels.remove(&(account, Reverse(priority)));
        }
        if let Some(g) = self.groups.get_mut(&entry.group) {
            g.members.remove(&seq);
            if g.members.is_empty() {
                self.group_ids.remove(&g.kind);
                self.groups.remove(&entry.group);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, (account, priority): Level, seq: u64) -> Option<&Entry> {
        self.levels.get(&(account, Reverse(priority)))?.get(&seq)
    }

    /// Sets the accounts' fair-share ranks the service order reads from now on.
    pub fn set_ranks(&mut self, ranks: &[u32]) {
        self.ranks.clear();
        self.ranks.extend_from_slice(ranks);
    }

    /// The verdict shared by the waiting request queued as `(priority, seq)`.
    pub fn wait(&self, level: Level, seq: u64) -> Wait {
        self.get(level, seq)
            .and_then(|e| self.groups.get(&e.group))
            .map_or(Wait::NotConsidered, |g| g.wait)
    }

    pub fn set_wait(&mut self, level: Level, seq: u64, wait: Wait) {
        let group = self.get(level, seq).map(|e| e.group);
        if let Some(g) = group.and_then(|id| self.groups.get_mut(&id)) {
            g.wait = wait;
        }
    }

    fn effective(e: &Entry, now_ms: u64, aging_step_ms: u64) -> i64 {
        let age = now_ms
            .saturating_sub(e.enqueued_ms)
            .checked_div(aging_step_ms)
            .map_or(0, |levels| levels.min(i32::MAX as u64) as i64);
        i64::from(e.priority) + age
    }

    /// Where `e` stands in the service order now. Within one level (account and priority) the
    /// keys fall as sequence numbers rise, past the age limit or not: the older an entry, the
    /// sooner it passes the limit.
    pub fn key(&self, e: &Entry, now_ms: u64, aging_step_ms: u64) -> ServiceKey {
        let aged = self
            .age_limit_ms
            .is_some_and(|limit| now_ms.saturating_sub(e.enqueued_ms) >= limit);
        let rank = if aged {
            0
        } else {
            self.ranks.get(e.account as usize).copied().unwrap_or(0)
        };
        (
            aged,
            Reverse(rank),
            Self::effective(e, now_ms, aging_step_ms),
            Reverse(e.seq),
        )
    }

    /// The request served first now.
    pub fn head(&self, now_ms: u64, aging_step_ms: u64) -> Option<Entry> {
        self.levels
            .values()
            .filter_map(|l| l.values().next())
            .max_by_key(|e| self.key(e, now_ms, aging_step_ms))
            .copied()
    }

    /// Every waiting request in the order it is served now.
    pub fn ordered(&self, now_ms: u64, aging_step_ms: u64, out: &mut Vec<Entry>) {
        out.clear();
        out.reserve(self.len);
        if self.levels.len() == 1 {
            out.extend(self.levels.values().flat_map(|l| l.values().copied()));
            return;
        }
        let mut iters: Vec<_> = self
            .levels
            .values()
            .map(|l| l.values().peekable())
            .collect();
        loop {
            let mut best: Option<(usize, ServiceKey)> = None;
            for (i, it) in iters.iter_mut().enumerate() {
                if let Some(e) = it.peek() {
                    let key = self.key(e, now_ms, aging_step_ms);
                    if best.is_none_or(|(_, k)| key > k) {
                        best = Some((i, key));
                    }
                }
            }
            let Some((i, _)) = best else { break };
            if let Some(e) = iters[i].next() {
                out.push(*e);
            }
        }
    }

    /// The groups with their ids, in the order they were first made.
    pub fn groups(&self) -> impl Iterator<Item = (u64, &Group)> {
        self.groups.iter().map(|(&id, g)| (id, g))
    }

    pub fn group(&self, id: u64) -> Option<&Group> {
        self.groups.get(&id)
    }

    pub fn groups_mut(&mut self) -> impl Iterator<Item = &mut Group> {
        self.groups.values_mut()
    }

    /// The members of group `group`, in arrival order.
    pub fn members(&self, group: u64) -> impl Iterator<Item = Entry> + '_ {
        self.groups
            .get(&group)
            .into_iter()
            .flat_map(|g| g.members.values().copied())
    }

    /// The member of `e`'s group served next after `e`.
    pub fn next_in_group(&self, e: &Entry) -> Option<Entry> {
        let g = self.groups.get(&e.group)?;
        g.members.range(e.seq + 1..).next().map(|(_, m)| *m)
    }

    /// The first member of group `group`, from sequence number `from` on, that is served after
    /// `at`. Within one level (account and priority) that is the first member with a larger sequence number.
    /// Across levels, a group's service keys fall as its sequence numbers rise (one level,
    /// oldest first), so the members served after `at` are a suffix of the group: gallop from
    /// `from` to a member past `at`, then bisect back to where the suffix starts.
    pub fn first_after(
        &self,
        group: u64,
        from: u64,
        at: &Entry,
        now_ms: u64,
        aging_step_ms: u64,
    ) -> Option<Entry> {
        let g = self.groups.get(&group)?;
        if g.kind.priority == at.priority && g.kind.account == at.account {
            let from = from.max(at.seq.saturating_add(1));
            return g.members.range(from..).next().map(|(_, m)| *m);
        }
        let key = self.key(at, now_ms, aging_step_ms);
        let members = &g.members;
        // The first member at or after sequence number `seq`, if it is served after `key`.
        let after_from = |seq: u64| {
            members
                .range(seq..)
                .next()
                .map(|(_, m)| *m)
                .filter(|m| self.key(m, now_ms, aging_step_ms) < key)
        };
        if let Some(m) = after_from(from) {
            return Some(m);
        }
        let (&last, _) = members.last_key_value()?;
        if last < from {
            return None;
        }
        after_from(last)?;
        // From `lo` the first member is served before `key`; from `hi` it is served after.
        let (mut lo, mut hi) = (from, last);
        let mut step = 1u64;
        while let Some(probe) = lo.checked_add(step).filter(|&p| p < hi) {
            if after_from(probe).is_some() {
                hi = probe;
                break;
            }
            lo = probe;
            step = step.saturating_mul(2);
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if after_from(mid).is_some() {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        after_from(hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(priority: i32, cpus: i64) -> Kind {
        Kind {
            account: 0,
            quota_account: 0,
            priority,
            need: Need {
                cpu_milli: cpus * 1000,
                memory_mib: 1,
                slot: None,
                drivers: 0xff,
                labels: Vec::new(),
                label_bloom: 0,
                image: 0,
            },
            together: 1,
            duration_ms: 0,
        }
    }

    /// Queues request `id` at `priority`, of the one-vCPU kind.
    fn push(q: &mut Queue, id: u64, priority: i32, at_ms: u64) -> u64 {
        q.push(RequestId(id), kind(priority, 1), at_ms)
    }

    fn ids(q: &Queue, now: u64, step: u64) -> Vec<u64> {
        let mut out = Vec::new();
        q.ordered(now, step, &mut out);
        out.iter().map(|e| e.request.0).collect()
    }

    #[test]
    fn higher_priority_first_then_arrival() {
        let mut q = Queue::default();
        push(&mut q, 1, 0, 0);
        push(&mut q, 2, 5, 10);
        push(&mut q, 3, 0, 20);
        assert_eq!(ids(&q, 30, 0), vec![2, 1, 3]);
        assert_eq!(q.head(30, 0).map(|e| e.request.0), Some(2));
    }

    #[test]
    fn aging_lets_an_old_low_priority_request_pass() {
        let mut q = Queue::default();
        push(&mut q, 1, 0, 0);
        push(&mut q, 2, 2, 1_000);
        // At 1.5 s request 1 has aged one level (step 1 s) and still trails.
        assert_eq!(ids(&q, 1_500, 1_000), vec![2, 1]);
        // Both age at the same rate, so request 1 stays behind request 2; but at 3 s it has aged
        // three levels and passes a priority-2 request that only just arrived (3 > 2).
        push(&mut q, 3, 2, 3_000);
        assert_eq!(ids(&q, 3_000, 1_000), vec![2, 1, 3]);
    }

    #[test]
    fn remove_keeps_the_count_and_drops_empty_groups() {
        let mut q = Queue::default();
        let a = push(&mut q, 1, 0, 0);
        push(&mut q, 2, 1, 0);
        q.remove((0, 0), a);
        q.remove((0, 0), a);
        assert_eq!(q.len(), 1);
        assert_eq!(ids(&q, 0, 0), vec![2]);
        assert_eq!(q.groups().count(), 1);
    }

    /// A queue of three priorities and three shapes, arriving over time.
    fn mixed() -> Queue {
        let mut q = Queue::default();
        for i in 0..60u64 {
            let priority = [0, 2, -1][(i % 3) as usize];
            let cpus = [1, 2, 4][((i / 3) % 3) as usize];
            let account = ((i / 9) % 2) as u32;
            q.push(
                RequestId(i),
                Kind {
                    account,
                    ..kind(priority, cpus)
                },
                i * 250,
            );
        }
        // The second account is served first, as fair share would have it.
        q.set_ranks(&[1, 0]);
        q
    }

    #[test]
    fn past_the_age_limit_a_request_goes_before_the_fair_order_oldest_first() {
        let mut q = mixed();
        // At 15 s, requests 0 to 40 arrived at least 5 s ago: served first, whatever their
        // account's rank, by priority then arrival; then the fair order of the rest.
        q.age_limit_ms = Some(5_000);
        let mut order = Vec::new();
        q.ordered(15_000, 0, &mut order);
        let aged: Vec<u64> = order[..41].iter().map(|e| e.request.0).collect();
        let mut expected: Vec<u64> = (0..=40).collect();
        expected.sort_by_key(|&i| (Reverse([0, 2, -1][(i % 3) as usize]), i));
        assert_eq!(aged, expected);
        assert!(order[41..].iter().all(|e| e.request.0 > 40));
        // The rest in the fair order: the second account's first.
        let first_rest = order[41].request.0;
        assert_eq!((first_rest / 9) % 2, 1, "{first_rest}");
    }

    #[test]
    fn merging_the_group_heads_gives_the_service_order() {
        let mut q = mixed();
        for (now, step, age) in [
            (15_000, 0, None),
            (15_000, 1_000, None),
            (40_000, 700, None),
            (40_000, 5_000, None),
            (15_000, 0, Some(5_000)),
            (40_000, 700, Some(12_345)),
        ] {
            q.age_limit_ms = age;
            let mut order = Vec::new();
            q.ordered(now, step, &mut order);
            let mut merged = Vec::new();
            let mut heads: Vec<Option<Entry>> = q
                .groups()
                .map(|(_, g)| g.members.values().next().copied())
                .collect();
            while let Some(i) = (0..heads.len())
                .filter(|&i| heads[i].is_some())
                .max_by_key(|&i| heads[i].map(|e| q.key(&e, now, step)))
            {
                let Some(e) = heads[i] else { break };
                merged.push(e);
                heads[i] = q.next_in_group(&e);
            }
            assert_eq!(merged, order, "now {now}, step {step}, age limit {age:?}");
        }
    }

    #[test]
    fn first_after_finds_the_first_member_served_later() {
        let mut q = mixed();
        // Holes in the sequence numbers, as placements leave them.
        for seq in [4, 5, 13, 31, 32, 33] {
            let p = q
                .levels
                .values()
                .find_map(|l| l.get(&seq))
                .map(|e| (e.account, e.priority));
            if let Some(p) = p {
                q.remove(p, seq);
            }
        }
        for (now, step, age) in [
            (15_000, 0, None),
            (40_000, 700, None),
            (40_000, 5_000, None),
            (15_000, 0, Some(5_000)),
            (40_000, 700, Some(12_345)),
        ] {
            q.age_limit_ms = age;
            let mut order = Vec::new();
            q.ordered(now, step, &mut order);
            let groups: Vec<u64> = q.groups().map(|(id, _)| id).collect();
            for (pos, at) in order.iter().enumerate() {
                for &g in &groups {
                    for from in [0, at.seq / 2, at.seq, at.seq + 7, 1_000] {
                        let expected = order[pos + 1..]
                            .iter()
                            .find(|e| e.group == g && e.seq >= from)
                            .copied();
                        let found = q.first_after(g, from, at, now, step);
                        assert_eq!(found, expected, "after {at:?} from {from}");
                    }
                }
            }
        }
    }
}
