//! A placed VM's lifecycle as its driver reports it: provisioned, booted, job finished, held at
//! a breakpoint, destroyed or lost; failures retried within the request's budget.

use super::state::{AfterDestroy, Scheduler, Timer};
use crate::input::{Failure, FailureKind, InputError};
use crate::model::{RequestId, RequestState, VmId, VmState};
use crate::output::{Action, Cause, Event};

impl Scheduler {
    pub(super) fn provision_started(&mut self, vm: VmId) -> Result<(), InputError> {
        self.vm_in(vm, &[VmState::Placed], "start provisioning")?;
        self.vm_to(vm, VmState::Provisioning, Cause::ProvisionStarted);
        Ok(())
    }

    pub(super) fn provision_done(
        &mut self,
        vm: VmId,
        result: Result<(), Failure>,
    ) -> Result<(), InputError> {
        let host_idx = self.vm_in(
            vm,
            &[VmState::Placed, VmState::Provisioning],
            "finish provisioning",
        )?;
        match result {
            Ok(()) => {
                if let Some(v) = self.vms.get_mut(&vm) {
                    v.provisioning = false;
                }
                let max = self.fleet.provisioning_max;
                let was_busy = self.fleet.update(host_idx, |h| {
                    let was_busy = h.provisioning >= max;
                    h.provisioning = h.provisioning.saturating_sub(1);
                    h.provision_failures = 0;
                    was_busy
                });
                // A returned provisioning turn changes a verdict only where the host had none.
                if was_busy {
                    self.pass.capacity_changed = true;
                }
                self.vm_to(vm, VmState::Booting, Cause::Provisioned);
            }
            Err(failure) => {
                self.free_capacity(vm);
                if let Some(v) = self.vms.get_mut(&vm) {
                    v.host = None;
                }
                let blame_host = failure.kind != FailureKind::Request;
                self.retry_or_fail(vm, Cause::ProvisionFailed(failure.clone()), failure.kind);
                if blame_host {
                    self.count_host_failure(host_idx);
                }
            }
        }
        Ok(())
    }

    /// After a failure that left the VM off any host: queue it again within the budget, or fail it.
    fn retry_or_fail(&mut self, vm: VmId, cause: Cause, kind: FailureKind) {
        let Some(request) = self.vms.get(&vm).map(|v| v.request) else {
            return;
        };
        if kind == FailureKind::Request {
            self.vm_to(vm, VmState::Failed, cause.clone());
            self.forget_vm(vm);
            self.end_request(request, RequestState::Failed, cause);
            return;
        }
        let budget_left = self
            .requests
            .get(&request)
            .is_some_and(|r| r.retries_used < self.config.vm_retries_max && r.ending.is_none());
        if budget_left {
            if let Some(r) = self.requests.get_mut(&request) {
                r.retries_used += 1;
            }
            self.vm_to(vm, VmState::Queued, cause);
            self.enqueue_vm(request, vm);
        } else {
            self.vm_to(vm, VmState::Failed, cause);
            self.forget_vm(vm);
            self.maybe_finish(request);
        }
    }

    /// A VM finished booting, or (`handover`) a warm VM finished becoming this request's VM:
    /// either way it runs now, or failed as a boot fails.
    pub(super) fn boot_done(
        &mut self,
        vm: VmId,
        result: Result<(), Failure>,
        handover: bool,
    ) -> Result<(), InputError> {
        let input = if handover {
            "finish a handover"
        } else {
            "finish booting"
        };
        let host_idx = self.vm_in(vm, &[VmState::Booting], input)?;
        // Without pools no VM is warm: no lookup for it.
        let warm = self.warm.is_some()
            && self
                .vms
                .get(&vm)
                .is_some_and(|v| v.request == RequestId::WARM_POOL);
        if handover && warm {
            return Err(InputError::WrongState {
                what: vm.to_string(),
                state: "warm",
                input,
            });
        }
        match result {
            Ok(()) if warm => {
                self.vm_to(vm, VmState::Running, Cause::Booted);
                self.warm_booted(vm);
            }
            Ok(()) => {
                self.vm_to(vm, VmState::Running, Cause::Booted);
                let run = self
                    .vms
                    .get(&vm)
                    .and_then(|v| self.requests.get(&v.request));
                let end = self
                    .now_ms
                    .saturating_add(run.map_or(0, |r| r.expected_run_ms));
                self.set_expected_end(vm, end);
            }
            Err(failure) => {
                let request = self.vms.get(&vm).map(|v| v.request);
                let retry = failure.kind != FailureKind::Request
                    && request
                        .and_then(|r| self.requests.get(&r))
                        .is_some_and(|r| r.retries_used < self.config.vm_retries_max);
                let after = if retry {
                    if let Some(r) = request.and_then(|r| self.requests.get_mut(&r)) {
                        r.retries_used += 1;
                    }
                    AfterDestroy::Requeue
                } else {
                    AfterDestroy::End(VmState::Failed)
                };
                let kind = failure.kind;
                self.destroy_vm(vm, after, Cause::BootFailed(failure.clone()));
                if kind == FailureKind::Request {
                    if let Some(r) = request {
                        self.end_request(r, RequestState::Failed, Cause::BootFailed(failure));
                    }
                } else {
                    self.count_host_failure(host_idx);
                }
            }
        }
        Ok(())
    }

    pub(super) fn job_finished(&mut self, vm: VmId, passed: bool) -> Result<(), InputError> {
        self.vm_in(vm, &[VmState::Running], "finish a job")?;
        let hold = self
            .vms
            .get(&vm)
            .and_then(|v| self.requests.get(&v.request))
            .and_then(|r| r.spec.hold_on_failure.clone());
        match hold {
            Some(hold) if !passed => {
                let until = self.now_ms.saturating_add(hold.ttl_ms);
                if let Some(v) = self.vms.get_mut(&vm) {
                    v.hold_until_ms = until;
                }
                self.vm_to(vm, VmState::Held, Cause::JobFailed);
                self.set_expected_end(vm, until);
                self.timers.insert((until, Timer::Hold(vm)));
            }
            _ => {
                let cause = if passed {
                    Cause::JobPassed
                } else {
                    Cause::JobFailed
                };
                self.destroy_vm(vm, AfterDestroy::End(VmState::Done), cause);
            }
        }
        Ok(())
    }

    pub(super) fn release(&mut self, vm: VmId) -> Result<(), InputError> {
        self.vm_in(vm, &[VmState::Held], "release a breakpoint")?;
        self.destroy_vm(vm, AfterDestroy::End(VmState::Done), Cause::Released);
        Ok(())
    }

    pub(super) fn extend(&mut self, vm: VmId, by_ms: u64) -> Result<(), InputError> {
        self.vm_in(vm, &[VmState::Held], "extend a breakpoint")?;
        let until = match self.vms.get_mut(&vm) {
            Some(v) => {
                v.hold_until_ms = v.hold_until_ms.saturating_add(by_ms);
                v.hold_until_ms
            }
            None => return Err(InputError::UnknownVm(vm)),
        };
        self.set_expected_end(vm, until);
        self.timers.insert((until, Timer::Hold(vm)));
        Ok(())
    }

    pub(super) fn destroy_done(
        &mut self,
        vm: VmId,
        result: Result<(), Failure>,
    ) -> Result<(), InputError> {
        let host_idx = self.vm_in(vm, &[VmState::Releasing], "finish destroying")?;
        match result {
            Ok(()) => {
                let after = self.vms.get(&vm).map(|v| v.after_destroy);
                self.free_capacity(vm);
                if let Some(v) = self.vms.get_mut(&vm) {
                    v.host = None;
                }
                match after {
                    Some(AfterDestroy::Requeue) => {
                        let request = self.vms.get(&vm).map(|v| v.request);
                        self.vm_to(vm, VmState::Queued, Cause::Destroyed);
                        if let Some(r) = request {
                            self.enqueue_vm(r, vm);
                        }
                    }
                    Some(AfterDestroy::End(to)) => {
                        let request = self.vms.get(&vm).map(|v| v.request);
                        self.vm_to(vm, to, Cause::Destroyed);
                        self.forget_vm(vm);
                        if let Some(r) = request {
                            self.maybe_finish(r);
                        }
                    }
                    None => {}
                }
            }
            Err(failure) => {
                self.events.push_back(Event::Vm {
                    at_ms: self.now_ms,
                    vm,
                    request: self.vms.get(&vm).map_or(RequestId(0), |v| v.request),
                    host: Some(self.fleet.hosts[host_idx].spec.id),
                    from: Some(VmState::Releasing),
                    to: VmState::Releasing,
                    cause: Cause::DestroyFailed(failure.clone()),
                });
                if failure.kind != FailureKind::Request {
                    self.count_host_failure(host_idx);
                }
                // Unless the failure put the host in error (which ended the VM), try again.
                if self
                    .vms
                    .get(&vm)
                    .is_some_and(|v| v.state == VmState::Releasing)
                {
                    self.actions.push_back(Action::Destroy {
                        vm,
                        host: self.fleet.hosts[host_idx].spec.id,
                    });
                }
            }
        }
        Ok(())
    }

    pub(super) fn vm_lost(&mut self, vm: VmId) -> Result<(), InputError> {
        self.vm_in(
            vm,
            &[
                VmState::Booting,
                VmState::Running,
                VmState::Held,
                VmState::Releasing,
            ],
            "lose a vm",
        )?;
        self.lose_vm(vm, Cause::Vanished);
        Ok(())
    }
}
