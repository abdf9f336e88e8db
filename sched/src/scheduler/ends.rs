//! The expected ends of the VMs that hold capacity, in order of (end, VM), for backfilling.
//!
//! The VMs of one request placed together share their expected end, so the map is keyed by
//! the end and holds, per end, its VMs sorted by id: one tree operation per request rather
//! than per VM, and a VM's insert or removal is a binary search in its end's few neighbours
//! (a request's VMs come and go in id order, at the back and the front). The order it gives
//! is exactly that of a map keyed by (end, VM), which the reference tests use.

use std::collections::BTreeMap;

use super::state::EndEntry;
use crate::model::VmId;

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Ends {
    by_end: BTreeMap<u64, Vec<(VmId, EndEntry)>>,
}

impl Ends {
    pub fn insert(&mut self, end_ms: u64, vm: VmId, entry: EndEntry) {
        let at = self.by_end.entry(end_ms).or_default();
        // Usually the largest id yet at this end: a push.
        match at.last() {
            Some(&(last, _)) if last >= vm => match at.binary_search_by_key(&vm, |&(v, _)| v) {
                Ok(i) => at[i].1 = entry,
                Err(i) => at.insert(i, (vm, entry)),
            },
            _ => at.push((vm, entry)),
        }
    }

    pub fn remove(&mut self, end_ms: u64, vm: VmId) -> Option<EndEntry> {
        let at = self.by_end.get_mut(&end_ms)?;
        // Usually the smallest id left at this end.
        let i = match at.first() {
            Some(&(first, _)) if first == vm => 0,
            _ => at.binary_search_by_key(&vm, |&(v, _)| v).ok()?,
        };
        let (_, entry) = at.remove(i);
        if at.is_empty() {
            self.by_end.remove(&end_ms);
        }
        Some(entry)
    }

    /// Every entry, by end and then VM.
    pub fn iter(&self) -> impl Iterator<Item = (u64, VmId, &EndEntry)> {
        self.entries(self.by_end.iter())
    }

    /// The entries ending at `from_ms` or later, by end and then VM.
    pub fn ending_from(&self, from_ms: u64) -> impl Iterator<Item = (u64, VmId, &EndEntry)> {
        self.entries(self.by_end.range(from_ms..))
    }

    fn entries<'a>(
        &'a self,
        ends: impl Iterator<Item = (&'a u64, &'a Vec<(VmId, EndEntry)>)>,
    ) -> impl Iterator<Item = (u64, VmId, &'a EndEntry)> {
        ends.flat_map(|(&end, vms)| vms.iter().map(move |(vm, e)| (end, *vm, e)))
    }

    /// As a map keyed by (end, VM) (the snapshot's form).
    pub fn to_map(&self) -> BTreeMap<(u64, VmId), EndEntry> {
        self.iter().map(|(end, vm, e)| ((end, vm), *e)).collect()
    }

    pub fn from_map(map: BTreeMap<(u64, VmId), EndEntry>) -> Ends {
        let mut ends = Ends::default();
        for ((end, vm), e) in map {
            ends.insert(end, vm, e);
        }
        ends
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(host: u32) -> EndEntry {
        EndEntry {
            host,
            slot: None,
            cpu_milli: 1000,
            memory_mib: 1024,
        }
    }

    proptest! {
        /// Any sequence of inserts and removals leaves the same entries, in the same order,
        /// as a map keyed by (end, VM).
        #[test]
        fn ends_keep_the_order_of_a_map_by_end_and_vm(
            ops in prop::collection::vec((any::<bool>(), 0u64..6, 0u64..40, 0u32..8), 0..300)
        ) {
            let mut ends = Ends::default();
            let mut reference: BTreeMap<(u64, VmId), EndEntry> = BTreeMap::new();
            for (insert, end, vm, host) in ops {
                let vm = VmId(vm);
                if insert {
                    ends.insert(end, vm, entry(host));
                    reference.insert((end, vm), entry(host));
                } else {
                    prop_assert_eq!(ends.remove(end, vm), reference.remove(&(end, vm)));
                }
                prop_assert_eq!(ends.iter().count(), reference.len());
            }
            prop_assert_eq!(ends.to_map(), reference.clone());
            let from: Vec<_> = ends.ending_from(3).map(|(e, v, x)| ((e, v), *x)).collect();
            let want: Vec<_> = reference.range((3, VmId(0))..).map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(from, want);
        }
    }
}
