//! The queue of waiting requests: one FIFO per priority level, merged by effective priority.
//!
//! Aging adds one level per `aging_step_ms` waited. Within a level the oldest request has aged
//! the most, so each level is already in effective-priority order and the whole queue is a
//! k-way merge of the level heads (k = distinct priorities, usually one or two).

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::model::RequestId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub request: RequestId,
    pub priority: i32,
    pub seq: u64,
    pub enqueued_ms: u64,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Queue {
    levels: BTreeMap<Reverse<i32>, BTreeMap<u64, Entry>>,
    next_seq: u64,
    len: usize,
}

impl Queue {
    pub fn push(&mut self, request: RequestId, priority: i32, enqueued_ms: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.levels.entry(Reverse(priority)).or_default().insert(
            seq,
            Entry {
                request,
                priority,
                seq,
                enqueued_ms,
            },
        );
        self.len += 1;
        seq
    }

    pub fn remove(&mut self, priority: i32, seq: u64) {
        if let Some(level) = self.levels.get_mut(&Reverse(priority))
            && level.remove(&seq).is_some()
        {
            self.len -= 1;
            if level.is_empty() {
                self.levels.remove(&Reverse(priority));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn effective(e: &Entry, now_ms: u64, aging_step_ms: u64) -> i64 {
        let age = now_ms
            .saturating_sub(e.enqueued_ms)
            .checked_div(aging_step_ms)
            .map_or(0, |levels| levels.min(i32::MAX as u64) as i64);
        i64::from(e.priority) + age
    }

    /// The request served first now.
    pub fn head(&self, now_ms: u64, aging_step_ms: u64) -> Option<Entry> {
        self.levels
            .values()
            .filter_map(|l| l.values().next())
            .max_by_key(|e| (Self::effective(e, now_ms, aging_step_ms), Reverse(e.seq)))
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
            let mut best: Option<(usize, (i64, Reverse<u64>))> = None;
            for (i, it) in iters.iter_mut().enumerate() {
                if let Some(e) = it.peek() {
                    let key = (Self::effective(e, now_ms, aging_step_ms), Reverse(e.seq));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(q: &Queue, now: u64, step: u64) -> Vec<u64> {
        let mut out = Vec::new();
        q.ordered(now, step, &mut out);
        out.iter().map(|e| e.request.0).collect()
    }

    #[test]
    fn higher_priority_first_then_arrival() {
        let mut q = Queue::default();
        q.push(RequestId(1), 0, 0);
        q.push(RequestId(2), 5, 10);
        q.push(RequestId(3), 0, 20);
        assert_eq!(ids(&q, 30, 0), vec![2, 1, 3]);
        assert_eq!(q.head(30, 0).map(|e| e.request.0), Some(2));
    }

    #[test]
    fn aging_lets_an_old_low_priority_request_pass() {
        let mut q = Queue::default();
        q.push(RequestId(1), 0, 0);
        q.push(RequestId(2), 2, 1_000);
        // At 1.5 s request 1 has aged one level (step 1 s) and still trails.
        assert_eq!(ids(&q, 1_500, 1_000), vec![2, 1]);
        // Both age at the same rate, so request 1 stays behind request 2; but at 3 s it has aged
        // three levels and passes a priority-2 request that only just arrived (3 > 2).
        q.push(RequestId(3), 2, 3_000);
        assert_eq!(ids(&q, 3_000, 1_000), vec![2, 1, 3]);
    }

    #[test]
    fn remove_keeps_the_count() {
        let mut q = Queue::default();
        let a = q.push(RequestId(1), 0, 0);
        q.push(RequestId(2), 1, 0);
        q.remove(0, a);
        q.remove(0, a);
        assert_eq!(q.len(), 1);
        assert_eq!(ids(&q, 0, 0), vec![2]);
    }
}
