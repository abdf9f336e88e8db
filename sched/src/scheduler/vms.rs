//! VMs: creating one, moving it from state to state with its event, asking for its destroy,
//! and forgetting it once it ended.

use super::state::{AfterDestroy, EndEntry, Ending, Scheduler, Vm};
use crate::fleet::Amount;
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
                ending: Ending::Untracked,
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

    /// Puts VM `vm` on host `h` (whose capacity it already holds), due to end at
    /// `expected_end`; `provisioning`: it still counts against the host's provisioning turns.
    /// Only backfilling reads expected ends: under the other policies `ends` is not kept.
    pub(super) fn seat_vm(
        &mut self,
        vm: VmId,
        h: usize,
        provisioning: bool,
        expected_end: u64,
        used: EndEntry,
    ) {
        let keep_ends = self.reads.expected_ends;
        if let Some(v) = self.vms.get_mut(&vm) {
            v.host = Some(h);
            v.provisioning = provisioning;
            v.expected_end_ms = expected_end;
            if keep_ends {
                v.ending = Ending::Expected;
            }
        }
        if keep_ends {
            self.ends.insert(
                expected_end,
                vm,
                EndEntry {
                    host: h as u32,
                    ..used
                },
            );
        }
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
        self.drop_end(vm);
        self.warm_forget(vm);
        if let Some(v) = self.vms.remove(&vm)
            && let Some(r) = self.requests.get_mut(&v.request)
        {
            r.live = r.live.saturating_sub(1);
            if v.state == VmState::Failed || v.state == VmState::Lost {
                r.vms_failed += 1;
            }
        }
    }

    /// A VM that starts its destroy is due now: its expected end becomes the present, and what
    /// it holds moves from `ends` to its host's `releasing` sum until it is gone.
    fn start_releasing(&mut self, vm: VmId) {
        let now = self.now_ms;
        let Some(v) = self.vms.get_mut(&vm) else {
            return;
        };
        let end_ms = v.expected_end_ms;
        v.expected_end_ms = now;
        if v.ending != Ending::Expected {
            return;
        }
        let Some(entry) = self.ends.remove(end_ms, vm) else {
            v.ending = Ending::Untracked;
            return;
        };
        v.ending = Ending::Releasing(entry);
        let host_idx = entry.host as usize;
        self.head_room.touch(host_idx);
        if self.releasing.len() <= host_idx {
            self.releasing.resize(host_idx + 1, Amount::default());
        }
        self.releasing[host_idx] = self.releasing[host_idx].plus(&entry.amount());
    }

    /// Takes a VM that gives its capacity back out of the expected ends (idempotent).
    pub(super) fn drop_end(&mut self, vm: VmId) {
        let Some(v) = self.vms.get_mut(&vm) else {
            return;
        };
        match std::mem::replace(&mut v.ending, Ending::Untracked) {
            Ending::Untracked => {}
            Ending::Expected => {
                self.ends.remove(v.expected_end_ms, vm);
            }
            Ending::Releasing(entry) => {
                let host_idx = entry.host as usize;
                if let Some(sum) = self.releasing.get_mut(host_idx) {
                    *sum = sum.minus(&entry.amount());
                }
                self.head_room.touch(host_idx);
            }
        }
    }

    pub(super) fn set_expected_end(&mut self, vm: VmId, end_ms: u64) {
        let Some(v) = self.vms.get_mut(&vm) else {
            return;
        };
        let from = std::mem::replace(&mut v.expected_end_ms, end_ms);
        if from == end_ms || v.ending != Ending::Expected {
            return;
        }
        if let Some(entry) = self.ends.remove(from, vm) {
            self.ends.insert(end_ms, vm, entry);
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
        self.start_releasing(vm);
        self.actions.push_back(Action::Destroy {
            vm,
            host: self.fleet.hosts[host_idx].spec.id,
        });
    }
}
