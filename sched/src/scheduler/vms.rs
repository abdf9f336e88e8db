//! VMs: creating one, moving it from state to state with its event, asking for its destroy,
//! and forgetting it once it ended.

use super::state::{AfterDestroy, Scheduler, Vm};
use crate::input::InputError;
use crate::model::{RequestId, VmId, VmState};
use crate::output::{Action, Cause, Event};

impl Scheduler {
    pub(super) fn new_vm(&mut self, request: RequestId, cause: Cause) -> VmId {
        let id = VmId(self.next_vm);
        self.next_vm += 1;
        self.vms.insert(
            id,
            Vm {
                request,
                state: VmState::Queued,
                host: None,
                provisioning: false,
                after_destroy: AfterDestroy::End(VmState::Done),
                hold_until_ms: 0,
                expected_end_ms: 0,
            },
        );
        self.events.push_back(Event::Vm {
            at_ms: self.now_ms,
            vm: id,
            request,
            host: None,
            from: None,
            to: VmState::Queued,
            cause,
        });
        id
    }

    pub(super) fn vm_to(&mut self, vm: VmId, to: VmState, cause: Cause) {
        let Some(v) = self.vms.get_mut(&vm) else {
            return;
        };
        let from = v.state;
        v.state = to;
        let host = v.host.map(|i| self.fleet.hosts[i].spec.id);
        self.events.push_back(Event::Vm {
            at_ms: self.now_ms,
            vm,
            request: v.request,
            host,
            from: Some(from),
            to,
            cause,
        });
    }

    /// Drops an ended VM from the state (its request's live count goes down).
    pub(super) fn forget_vm(&mut self, vm: VmId) {
        if let Some(v) = self.vms.remove(&vm) {
            self.ends.remove(&(v.expected_end_ms, vm));
            if let Some(r) = self.requests.get_mut(&v.request) {
                r.live = r.live.saturating_sub(1);
                if v.state == VmState::Failed || v.state == VmState::Lost {
                    r.vms_failed += 1;
                }
            }
        }
    }

    pub(super) fn set_expected_end(&mut self, vm: VmId, end_ms: u64) {
        let Some(v) = self.vms.get_mut(&vm) else {
            return;
        };
        if v.expected_end_ms == end_ms {
            return;
        }
        let entry = self.ends.remove(&(v.expected_end_ms, vm));
        v.expected_end_ms = end_ms;
        if let Some(entry) = entry {
            self.ends.insert((end_ms, vm), entry);
        }
    }

    pub(super) fn vm_in(
        &self,
        vm: VmId,
        states: &[VmState],
        input: &'static str,
    ) -> Result<usize, InputError> {
        let v = self.vms.get(&vm).ok_or(InputError::UnknownVm(vm))?;
        match v.host {
            Some(h) if states.contains(&v.state) => Ok(h),
            _ => Err(InputError::WrongState {
                what: vm.to_string(),
                state: v.state.name(),
                input,
            }),
        }
    }

    /// Moves a VM that holds capacity to `Releasing` and asks its driver to destroy it.
    pub(super) fn destroy_vm(&mut self, vm: VmId, after: AfterDestroy, cause: Cause) {
        let Some(v) = self.vms.get_mut(&vm) else {
            return;
        };
        v.after_destroy = after;
        if v.state == VmState::Releasing {
            return;
        }
        let Some(host_idx) = v.host else { return };
        self.vm_to(vm, VmState::Releasing, cause);
        self.set_expected_end(vm, self.now_ms);
        self.actions.push_back(Action::Destroy {
            vm,
            host: self.fleet.hosts[host_idx].spec.id,
        });
    }
}
