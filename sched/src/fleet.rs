//! The hosts, their allocations, and the capacity index that finds a fitting host in log time.

use std::collections::BTreeMap;

use crate::model::{DriverKind, HostId, HostSpec, HostState, Label, VmId};

/// How many distinct slot kinds (such as `macos`) a fleet may count.
pub const SLOT_KINDS_MAX: usize = 4;

/// Interns strings (labels, images, slot kinds) to small ids, in first-seen order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Interner {
    pub(crate) ids: BTreeMap<String, u32>,
    pub(crate) names: Vec<String>,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(s.to_owned(), id);
        self.names.push(s.to_owned());
        id
    }

    pub fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// The string of id `id` (empty for an id never handed out).
    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", String::as_str)
    }
}

/// One bit of a 64-bit summary mask for an interned id. Masks only prune the index's search
/// (two ids may share a bit); every leaf is then checked exactly.
pub(crate) fn bloom_bit(id: u32) -> u64 {
    1u64 << (id % 64)
}

/// What one VM needs from a host, resolved to interned ids so that checks are integer compares.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Need {
    pub cpu_milli: i64,
    pub memory_mib: i64,
    pub slot: Option<usize>,
    /// Driver kinds that can run the template (bit mask).
    pub drivers: u8,
    /// Label ids the host must carry, sorted.
    pub labels: Vec<u32>,
    pub label_bloom: u64,
    /// The template's base image, for image locality.
    pub image: u32,
}

/// The amounts a host has, or has free, in the units the scheduler counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Amount {
    pub cpu_milli: i64,
    pub memory_mib: i64,
    pub slots: [i64; SLOT_KINDS_MAX],
}

impl Amount {
    pub fn add(&mut self, need: &Need) {
        self.cpu_milli += need.cpu_milli;
        self.memory_mib += need.memory_mib;
        if let Some(k) = need.slot {
            self.slots[k] += 1;
        }
    }

    pub fn sub(&mut self, need: &Need) {
        self.cpu_milli -= need.cpu_milli;
        self.memory_mib -= need.memory_mib;
        if let Some(k) = need.slot {
            self.slots[k] -= 1;
        }
    }

    pub fn plus(mut self, other: &Amount) -> Amount {
        self.cpu_milli += other.cpu_milli;
        self.memory_mib += other.memory_mib;
        for (a, b) in self.slots.iter_mut().zip(other.slots) {
            *a += b;
        }
        self
    }

    pub fn minus(mut self, other: &Amount) -> Amount {
        self.cpu_milli -= other.cpu_milli;
        self.memory_mib -= other.memory_mib;
        for (a, b) in self.slots.iter_mut().zip(other.slots) {
            *a -= b;
        }
        self
    }

    /// How many VMs of `need` fit into this amount.
    pub fn fit_count(&self, need: &Need) -> i64 {
        // Most hosts a search passes over have no room at all: answer those without dividing.
        if self.cpu_milli < need.cpu_milli
            || self.memory_mib < need.memory_mib
            || need.slot.is_some_and(|k| self.slots[k] < 1)
        {
            return 0;
        }
        let mut n = i64::MAX;
        if need.cpu_milli > 0 {
            n = n.min(self.cpu_milli.max(0) / need.cpu_milli);
        }
        if need.memory_mib > 0 {
            n = n.min(self.memory_mib.max(0) / need.memory_mib);
        }
        if let Some(k) = need.slot {
            n = n.min(self.slots[k].max(0));
        }
        n
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Host {
    pub spec: HostSpec,
    pub state: HostState,
    pub removed: bool,
    /// Capacity after overcommit.
    pub capacity: Amount,
    pub used: Amount,
    /// VMs placed or provisioning now (bounded by `provisioning_per_host_max`).
    pub provisioning: u32,
    pub vms: Vec<VmId>,
    pub labels: Vec<u32>,
    pub label_bloom: u64,
    pub images: Vec<u32>,
    pub image_bloom: u64,
    pub probe_failures: u32,
    pub provision_failures: u32,
    pub probed_ok: bool,
    pub last_probe_ms: Option<u64>,
}

impl Host {
    pub fn free(&self) -> Amount {
        self.capacity.minus(&self.used)
    }

    /// Free capacity counted at zero where the host is over: a probe may shrink a host below
    /// what it already holds, and that must not hide the room on other hosts in a total.
    pub fn room(&self) -> Amount {
        let mut free = self.free();
        free.cpu_milli = free.cpu_milli.max(0);
        free.memory_mib = free.memory_mib.max(0);
        for s in &mut free.slots {
            *s = (*s).max(0);
        }
        free
    }

    pub fn has_label(&self, id: u32) -> bool {
        self.labels.binary_search(&id).is_ok()
    }

    pub fn has_image(&self, id: u32) -> bool {
        self.images.binary_search(&id).is_ok()
    }

    pub fn takes_new_vms(&self) -> bool {
        self.state == HostState::Ready && !self.removed
    }
}

/// Capacity after overcommit: vCPUs in thousandths, memory in MiB, and slots.
pub(crate) fn capacity_of(
    vcpus: u32,
    memory_mib: u64,
    spec: &HostSpec,
    slot_kinds: &mut Interner,
) -> Amount {
    let mut slots = [0i64; SLOT_KINDS_MAX];
    for (kind, n) in &spec.slots {
        let k = slot_kinds.intern(kind) as usize;
        if k < SLOT_KINDS_MAX {
            slots[k] = slots[k].saturating_add(i64::from(*n));
        }
    }
    Amount {
        // Within `crate::limits` this cannot overflow; saturating keeps it so past them too.
        cpu_milli: i64::from(vcpus).saturating_mul(i64::from(spec.cpu_overcommit_milli)),
        memory_mib: (u128::from(memory_mib) * u128::from(spec.memory_overcommit_milli) / 1000)
            .min(i64::MAX as u128) as i64,
        slots,
    }
}

/// A summary of a subtree of hosts: the most any one host has free, and which drivers, labels
/// and images occur. A search skips a subtree whose summary shows no host could fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Node {
    cpu_milli: i64,
    memory_mib: i64,
    slots: [i64; SLOT_KINDS_MAX],
    provisioning_free: i64,
    drivers: u8,
    labels: u64,
    images: u64,
}

impl Node {
    const NONE: Node = Node {
        cpu_milli: -1,
        memory_mib: -1,
        slots: [-1; SLOT_KINDS_MAX],
        provisioning_free: -1,
        drivers: 0,
        labels: 0,
        images: 0,
    };

    fn join(a: &Node, b: &Node) -> Node {
        let mut slots = a.slots;
        for (s, t) in slots.iter_mut().zip(b.slots) {
            *s = (*s).max(t);
        }
        Node {
            cpu_milli: a.cpu_milli.max(b.cpu_milli),
            memory_mib: a.memory_mib.max(b.memory_mib),
            slots,
            provisioning_free: a.provisioning_free.max(b.provisioning_free),
            drivers: a.drivers | b.drivers,
            labels: a.labels | b.labels,
            images: a.images | b.images,
        }
    }

    fn may_fit(&self, need: &Need, image_bloom: u64) -> bool {
        self.cpu_milli >= need.cpu_milli
            && self.memory_mib >= need.memory_mib
            && need.slot.is_none_or(|k| self.slots[k] >= 1)
            && self.provisioning_free >= 1
            && self.drivers & need.drivers != 0
            && self.labels & need.label_bloom == need.label_bloom
            && self.images & image_bloom == image_bloom
    }
}

/// A segment tree over host indices (a max-tree of free capacity, an or-tree of masks).
/// Finding the first fitting host from a position costs O(log n) when summaries prune well;
/// an update after an allocation costs O(log n).
#[derive(Clone, Debug)]
pub(crate) struct CapacityIndex {
    size: usize,
    nodes: Vec<Node>,
}

impl CapacityIndex {
    pub fn new() -> CapacityIndex {
        CapacityIndex {
            size: 1,
            nodes: vec![Node::NONE; 2],
        }
    }

    fn leaf(host: &Host, provisioning_max: u32) -> Node {
        if !host.takes_new_vms() {
            return Node::NONE;
        }
        let free = host.free();
        Node {
            cpu_milli: free.cpu_milli,
            memory_mib: free.memory_mib,
            slots: free.slots,
            provisioning_free: i64::from(provisioning_max) - i64::from(host.provisioning),
            drivers: host.spec.driver.bit(),
            labels: host.label_bloom,
            images: host.image_bloom,
        }
    }

    /// Recomputes host `idx`'s leaf and its ancestors.
    pub fn update(&mut self, idx: usize, host: &Host, provisioning_max: u32) {
        if idx >= self.size {
            // Grow to the next power of two; the caller rebuilds all leaves.
            return;
        }
        let mut i = self.size + idx;
        let leaf = Self::leaf(host, provisioning_max);
        if self.nodes[i] == leaf {
            return;
        }
        self.nodes[i] = leaf;
        while i > 1 {
            i /= 2;
            let joined = Node::join(&self.nodes[2 * i], &self.nodes[2 * i + 1]);
            // Summaries above an unchanged one are unchanged too.
            if self.nodes[i] == joined {
                break;
            }
            self.nodes[i] = joined;
        }
    }

    /// Rebuilds the whole tree, growing it to hold every host.
    pub fn rebuild(&mut self, hosts: &[Host], provisioning_max: u32) {
        let size = hosts.len().next_power_of_two().max(1);
        self.size = size;
        self.nodes = vec![Node::NONE; 2 * size];
        for (i, h) in hosts.iter().enumerate() {
            self.nodes[size + i] = Self::leaf(h, provisioning_max);
        }
        for i in (1..size).rev() {
            self.nodes[i] = Node::join(&self.nodes[2 * i], &self.nodes[2 * i + 1]);
        }
    }

    /// Whether some host may take one VM of `need` by the root's summary: when not, no host
    /// can (the summary is a bound); when so, one may.
    pub fn may_fit_somewhere(&self, need: &Need) -> bool {
        self.nodes[1].may_fit(need, 0)
    }

    pub fn holds(&self, n_hosts: usize) -> bool {
        n_hosts <= self.size
    }

    /// Up to `want` host indices in `[from, to)`, in order, whose summaries may fit and for
    /// which `exact` holds, appended to `out`. A leaf that may fit has ancestors that may fit
    /// too (a summary bounds its subtree), so this is every such leaf in order: one walk to
    /// the right along the tree finds them, O(log n) per host found when the summaries prune
    /// well, without visiting the subtrees left of `from`.
    #[allow(clippy::too_many_arguments)]
    pub fn collect(
        &self,
        from: usize,
        to: usize,
        need: &Need,
        image_bloom: u64,
        want: usize,
        exact: &mut dyn FnMut(usize) -> bool,
        out: &mut Vec<usize>,
    ) {
        let stop = out.len() + want;
        let to = to.min(self.size);
        let mut pos = from;
        while out.len() < stop && pos < to {
            let Some(leaf) = self.next_may_fit(pos, need, image_bloom) else {
                return;
            };
            if leaf >= to {
                return;
            }
            if exact(leaf) {
                out.push(leaf);
            }
            pos = leaf + 1;
        }
    }

    /// The first host at or after `pos` whose leaf may fit: from `pos`'s leaf, step to the
    /// next subtree to the right until one may fit, then go down to its leftmost leaf that
    /// may fit (when neither child of a node does, step right from there).
    fn next_may_fit(&self, pos: usize, need: &Need, image_bloom: u64) -> Option<usize> {
        let mut i = self.size + pos;
        loop {
            if self.nodes[i].may_fit(need, image_bloom) {
                if i >= self.size {
                    return Some(i - self.size);
                }
                i *= 2;
                continue;
            }
            // Climb while `i` is a right child; its parent's right sibling comes next. The
            // root (1) is a right child of nothing: past it, no host is left.
            while i & 1 == 1 {
                i >>= 1;
            }
            if i == 0 {
                return None;
            }
            i += 1;
        }
    }

    /// The first search's shape, kept as the reference `collect` is checked against: a
    /// recursive descent that prunes subtrees out of range or whose summary cannot fit.
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    fn collect_reference(
        &self,
        from: usize,
        to: usize,
        need: &Need,
        image_bloom: u64,
        want: usize,
        exact: &mut dyn FnMut(usize) -> bool,
        out: &mut Vec<usize>,
    ) {
        let stop = out.len() + want;
        let mut walk = Walk {
            from,
            to,
            need,
            image_bloom,
            stop,
            exact,
            out,
        };
        self.descend(1, 0, self.size, &mut walk);
    }

    #[cfg(test)]
    fn descend(&self, node: usize, lo: usize, hi: usize, walk: &mut Walk<'_, '_>) {
        if walk.out.len() >= walk.stop
            || hi <= walk.from
            || lo >= walk.to
            || !self.nodes[node].may_fit(walk.need, walk.image_bloom)
        {
            return;
        }
        if hi - lo == 1 {
            if (walk.exact)(lo) {
                walk.out.push(lo);
            }
            return;
        }
        let mid = (lo + hi) / 2;
        self.descend(2 * node, lo, mid, walk);
        self.descend(2 * node + 1, mid, hi, walk);
    }
}

/// The state of one reference traversal.
#[cfg(test)]
struct Walk<'a, 'e> {
    from: usize,
    to: usize,
    need: &'a Need,
    image_bloom: u64,
    stop: usize,
    exact: &'e mut dyn FnMut(usize) -> bool,
    out: &'a mut Vec<usize>,
}

/// Builds the internal host from its spec.
pub(crate) fn new_host(
    spec: HostSpec,
    labels: &mut Interner,
    images: &mut Interner,
    slot_kinds: &mut Interner,
) -> Host {
    let capacity = capacity_of(spec.vcpus, spec.memory_mib, &spec, slot_kinds);
    let mut label_ids: Vec<u32> = spec
        .labels
        .iter()
        .map(|l| labels.intern(&label_key(l)))
        .collect();
    label_ids.sort_unstable();
    label_ids.dedup();
    let label_bloom = label_ids.iter().fold(0, |m, &id| m | bloom_bit(id));
    let mut host = Host {
        spec,
        state: HostState::Unknown,
        removed: false,
        capacity,
        used: Amount::default(),
        provisioning: 0,
        vms: Vec::new(),
        labels: label_ids,
        label_bloom,
        images: Vec::new(),
        image_bloom: 0,
        probe_failures: 0,
        provision_failures: 0,
        probed_ok: false,
        last_probe_ms: None,
    };
    let names = host.spec.images.clone();
    set_images(&mut host, &names, images);
    host
}

pub(crate) fn set_images(host: &mut Host, names: &[String], images: &mut Interner) {
    let mut ids: Vec<u32> = names.iter().map(|n| images.intern(n)).collect();
    ids.sort_unstable();
    ids.dedup();
    host.image_bloom = ids.iter().fold(0, |m, &id| m | bloom_bit(id));
    host.images = ids;
}

pub(crate) fn label_key(l: &Label) -> String {
    format!("{}={}", l.key, l.value)
}

/// The driver mask a template allows (empty list: every driver).
pub(crate) fn driver_mask(drivers: &[DriverKind]) -> u8 {
    if drivers.is_empty() {
        DriverKind::ALL.iter().fold(0, |m, d| m | d.bit())
    } else {
        drivers.iter().fold(0, |m, d| m | d.bit())
    }
}

/// Looks a host up by id among all hosts ever added.
pub(crate) fn host_index(map: &BTreeMap<HostId, usize>, id: HostId) -> Option<usize> {
    map.get(&id).copied()
}

/// The hosts with their index and the free capacity of all `Ready` hosts together (a quick
/// "cannot fit anywhere" answer before any search). Every change to a host goes through
/// `Fleet::update`, so the index and the totals never drift from the hosts.
#[derive(Clone, Debug)]
pub(crate) struct Fleet {
    pub hosts: Vec<Host>,
    pub index: CapacityIndex,
    pub provisioning_max: u32,
    pub ready_free: Amount,
    /// Hosts grouped by what never changes with load (driver, labels, capacity): "could this
    /// request ever fit" is then answered per class, not per host.
    pub classes: BTreeMap<StaticClass, Vec<usize>>,
    /// Counts every change to any host: equal versions mean an identical fleet.
    pub version: u64,
    /// The hosts changed since the scheduler last took this list (with repeats).
    pub changed: Vec<usize>,
}

/// The static side of a host: two hosts of one class take the same VMs when empty. A host
/// never probed has no known capacity yet, so it is a class of its own kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StaticClass {
    pub(crate) driver: DriverKind,
    pub(crate) labels: Vec<u32>,
    pub(crate) capacity: Amount,
    pub probed: bool,
}

impl StaticClass {
    fn of(host: &Host) -> StaticClass {
        StaticClass {
            driver: host.spec.driver,
            labels: host.labels.clone(),
            capacity: host.capacity,
            probed: host.probed_ok,
        }
    }
}

impl Fleet {
    pub fn new(provisioning_max: u32) -> Fleet {
        Fleet {
            hosts: Vec::new(),
            index: CapacityIndex::new(),
            provisioning_max,
            ready_free: Amount::default(),
            classes: BTreeMap::new(),
            version: 0,
            changed: Vec::new(),
        }
    }

    fn unclass(&mut self, idx: usize) {
        let key = StaticClass::of(&self.hosts[idx]);
        if let Some(members) = self.classes.get_mut(&key) {
            members.retain(|&i| i != idx);
            if members.is_empty() {
                self.classes.remove(&key);
            }
        }
    }

    fn class(&mut self, idx: usize) {
        if !self.hosts[idx].removed {
            let key = StaticClass::of(&self.hosts[idx]);
            self.classes.entry(key).or_default().push(idx);
        }
    }

    /// Changes what never changes with load (capacity after a probe, removal), keeping the
    /// classes in step.
    pub fn update_static<T>(&mut self, idx: usize, f: impl FnOnce(&mut Host) -> T) -> T {
        self.unclass(idx);
        let out = self.update(idx, f);
        self.class(idx);
        out
    }

    pub fn push(&mut self, host: Host) -> usize {
        let idx = self.hosts.len();
        if host.takes_new_vms() {
            self.ready_free = self.ready_free.plus(&host.room());
        }
        self.hosts.push(host);
        self.changed.push(idx);
        self.class(idx);
        if self.index.holds(self.hosts.len()) {
            self.index
                .update(idx, &self.hosts[idx], self.provisioning_max);
        } else {
            self.index.rebuild(&self.hosts, self.provisioning_max);
        }
        idx
    }

    /// Changes one host, keeping the index and the totals in step.
    pub fn update<T>(&mut self, idx: usize, f: impl FnOnce(&mut Host) -> T) -> T {
        self.version += 1;
        self.changed.push(idx);
        let host = &mut self.hosts[idx];
        if host.takes_new_vms() {
            self.ready_free = self.ready_free.minus(&host.room());
        }
        let out = f(host);
        if host.takes_new_vms() {
            self.ready_free = self.ready_free.plus(&host.room());
        }
        self.index
            .update(idx, &self.hosts[idx], self.provisioning_max);
        out
    }

    /// Takes one VM's share on a host; the VM counts as provisioning until `provisioned`.
    pub fn allocate(&mut self, idx: usize, need: &Need, vm: VmId) {
        self.update(idx, |h| {
            h.used.add(need);
            h.provisioning += 1;
            h.vms.push(vm);
        });
    }

    /// Gives one VM's share back. Idempotent per VM: a VM not on the host changes nothing.
    pub fn release(&mut self, idx: usize, need: &Need, vm: VmId, provisioning: bool) -> bool {
        self.update(idx, |h| {
            let Some(pos) = h.vms.iter().position(|&v| v == vm) else {
                return false;
            };
            h.vms.swap_remove(pos);
            h.used.sub(need);
            if provisioning {
                h.provisioning = h.provisioning.saturating_sub(1);
            }
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(cpu: i64) -> Need {
        Need {
            cpu_milli: cpu * 1000,
            memory_mib: 1,
            slot: None,
            drivers: 0xff,
            labels: Vec::new(),
            label_bloom: 0,
            image: 0,
        }
    }

    #[test]
    fn fit_count_takes_the_tightest_dimension() {
        let a = Amount {
            cpu_milli: 8000,
            memory_mib: 3,
            slots: [2, 0, 0, 0],
        };
        let mut n = need(2);
        assert_eq!(a.fit_count(&n), 3);
        n.memory_mib = 0;
        assert_eq!(a.fit_count(&n), 4);
        n.slot = Some(0);
        assert_eq!(a.fit_count(&n), 2);
    }

    #[test]
    fn collect_skips_full_hosts_and_respects_the_range() {
        let mut labels = Interner::default();
        let mut images = Interner::default();
        let mut slots = Interner::default();
        let mut hosts: Vec<Host> = (0..5)
            .map(|i| {
                let mut h = new_host(
                    HostSpec::new(i, &format!("h{i}"), DriverKind::Sim, 4, 1024),
                    &mut labels,
                    &mut images,
                    &mut slots,
                );
                h.state = HostState::Ready;
                h
            })
            .collect();
        hosts[0].used.cpu_milli = 4000;
        hosts[2].used.cpu_milli = 3000;
        let mut index = CapacityIndex::new();
        index.rebuild(&hosts, 4);
        let n = need(2);
        let first = |from, to, exact: &mut dyn FnMut(usize) -> bool| {
            let mut out = Vec::new();
            index.collect(from, to, &n, 0, 1, exact, &mut out);
            out.first().copied()
        };
        assert_eq!(first(0, 5, &mut |_| true), Some(1));
        assert_eq!(first(2, 5, &mut |_| true), Some(3));
        assert_eq!(first(0, 1, &mut |_| true), None);
        assert_eq!(first(2, 5, &mut |i| i != 3), Some(4));
        let mut all = Vec::new();
        index.collect(0, 5, &n, 0, 3, &mut |_| true, &mut all);
        assert_eq!(all, vec![1, 3, 4], "h2 has one vcpu free, the need is two");
    }

    proptest::proptest! {
        /// The walk to the right finds what the recursive descent finds, in the same order,
        /// for any fleet, range, need, count and exact check.
        #[test]
        fn collect_finds_what_the_reference_descent_finds(
            free in proptest::collection::vec((0i64..5, 0i64..3, proptest::bool::ANY), 1..70),
            from in 0usize..80,
            len in 0usize..80,
            cpu in 1i64..4,
            want in 1usize..10,
            reject in 0usize..7,
        ) {
            let mut labels = Interner::default();
            let mut images = Interner::default();
            let mut slots = Interner::default();
            let hosts: Vec<Host> = free
                .iter()
                .enumerate()
                .map(|(i, &(cpus, mem, ready))| {
                    let mut h = new_host(
                        HostSpec::new(i as u64, &format!("h{i}"), DriverKind::Sim, 4, 2),
                        &mut labels,
                        &mut images,
                        &mut slots,
                    );
                    h.state = if ready { HostState::Ready } else { HostState::Draining };
                    h.used.cpu_milli = (4 - cpus) * 1000;
                    h.used.memory_mib = 2 - mem;
                    h
                })
                .collect();
            let mut index = CapacityIndex::new();
            index.rebuild(&hosts, 4);
            let mut n = need(cpu);
            n.memory_mib = 1;
            let to = from + len;
            // Every `reject`-th host fails the exact check (0: none does).
            let mut fast = vec![99];
            index.collect(from, to, &n, 0, want, &mut |i| reject == 0 || i % reject != 0, &mut fast);
            let mut slow = vec![99];
            index.collect_reference(from, to, &n, 0, want, &mut |i| reject == 0 || i % reject != 0, &mut slow);
            proptest::prop_assert_eq!(fast, slow);
        }
    }
}
