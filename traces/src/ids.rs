//! A set of request ids stored as runs of consecutive ids, so a trace with increasing ids costs a few bytes, not a few bytes per request.

use std::collections::BTreeMap;

/// Request ids seen so far. Readers need it to check that ids are unique and that `after` names
/// an earlier request. Traces usually number requests in order, giving one run for the whole
/// file (synthetic traces) or one per gap (SWF logs with removed jobs); random ids cost about
/// 40 bytes each, like a `BTreeSet<u64>`.
#[derive(Debug, Default)]
pub(crate) struct IdSet {
    /// Start of a run → its last id (inclusive). Runs never touch or overlap.
    runs: BTreeMap<u64, u64>,
}

impl IdSet {
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.runs
            .range(..=id)
            .next_back()
            .is_some_and(|(_, &last)| id <= last)
    }

    /// Adds `id`; false if it was already there.
    pub(crate) fn insert(&mut self, id: u64) -> bool {
        let prev = self.runs.range(..=id).next_back().map(|(&s, &l)| (s, l));
        if let Some((_, last)) = prev
            && id <= last
        {
            return false;
        }
        let last = match id.checked_add(1).and_then(|next| self.runs.remove(&next)) {
            Some(next_last) => next_last,
            None => id,
        };
        match prev {
            Some((start, prev_last)) if prev_last.checked_add(1) == Some(id) => {
                self.runs.insert(start, last);
            }
            _ => {
                self.runs.insert(id, last);
            }
        }
        true
    }

    #[cfg(test)]
    fn n_runs(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn consecutive_ids_make_one_run() {
        let mut set = IdSet::default();
        for id in (1..1000).rev().step_by(2).chain((2..1000).step_by(2)) {
            assert!(set.insert(id));
        }
        assert_eq!(set.n_runs(), 1);
        assert!(!set.insert(500));
        assert!(set.contains(999) && !set.contains(0) && !set.contains(1000));
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut set = IdSet::default();
        assert!(set.insert(u64::MAX));
        assert!(set.insert(0));
        assert!(set.insert(u64::MAX - 1));
        assert!(!set.insert(u64::MAX));
        assert!(set.contains(0) && set.contains(u64::MAX - 1) && !set.contains(1));
    }

    proptest! {
        #[test]
        fn behaves_like_a_hash_set(ids in proptest::collection::vec(0u64..64, 0..200)) {
            let mut set = IdSet::default();
            let mut model = HashSet::new();
            for id in ids {
                prop_assert_eq!(set.insert(id), model.insert(id));
            }
            for id in 0..70 {
                prop_assert_eq!(set.contains(id), model.contains(&id));
            }
        }
    }
}
