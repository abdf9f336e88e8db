//! Which object on its host each VM runs in. A VM's object is named after it (`berth-vm42`),
//! except for a request's VM that took a warm VM (a handover): a running domain cannot be
//! renamed, so the handover relabels in berth's books and the VM keeps running in the warm
//! VM's object. Every driver call for such a VM names that object, and a host's listing of it
//! counts as that VM's.

use std::collections::HashMap;

use berth_drivers::{parse_vm_name, vm_name};

/// The VMs not yet ended whose object on their host is another's (persisted in the `vms`
/// table's `host_object` column, written with the batch of the handover).
#[derive(Debug, Default)]
pub(crate) struct HostObjects {
    /// VM number → its object's name.
    by_vm: HashMap<u64, String>,
    /// The number in an object's name (`berth-vm7` → 7) → the VM running in it.
    by_object: HashMap<u64, u64>,
}

impl HostObjects {
    pub(crate) fn new(rows: impl IntoIterator<Item = (u64, String)>) -> HostObjects {
        let mut objects = HostObjects::default();
        for (vm, name) in rows {
            objects.insert(vm, name);
        }
        objects
    }

    /// The name of VM `vm`'s object on its host.
    pub(crate) fn name(&self, vm: u64) -> String {
        self.by_vm.get(&vm).cloned().unwrap_or_else(|| vm_name(vm))
    }

    /// VM `vm` runs in the object named `name` from now on.
    pub(crate) fn insert(&mut self, vm: u64, name: String) {
        if let Some(n) = parse_vm_name(&name) {
            self.by_object.insert(n, vm);
        }
        if let Some(old) = self.by_vm.insert(vm, name)
            && let Some(n) = parse_vm_name(&old)
        {
            self.by_object.remove(&n);
        }
    }

    /// VM `vm` ended: its object is nobody's any more (an orphan, if a host still lists it).
    pub(crate) fn remove(&mut self, vm: u64) {
        if let Some(name) = self.by_vm.remove(&vm)
            && let Some(n) = parse_vm_name(&name)
        {
            self.by_object.remove(&n);
        }
    }

    /// The VM a host's listing of `berth-vm<n>` stands for: the VM running in that object,
    /// else VM `n` itself.
    pub(crate) fn owner(&self, n: u64) -> u64 {
        self.by_object.get(&n).copied().unwrap_or(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handed_over_vm_is_named_and_listed_by_its_warm_vms_object() {
        let mut o = HostObjects::new([(12, vm_name(3))]);
        assert_eq!(o.name(12), "berth-vm3");
        assert_eq!(o.name(5), "berth-vm5", "others keep their own names");
        assert_eq!(o.owner(3), 12, "a listing of berth-vm3 is VM 12's object");
        assert_eq!(o.owner(5), 5);
        o.insert(13, vm_name(4));
        o.remove(12);
        assert_eq!(o.name(12), "berth-vm12");
        assert_eq!(o.owner(3), 3, "once VM 12 ended, berth-vm3 is nobody's");
        assert_eq!(o.owner(4), 13);
    }
}
