//! Hosts: adding, removing, probing, draining and resuming them, a VM's share of its host, and
//! host health (a host in error loses its VMs).

use std::collections::BTreeSet;

use super::requests::invalid;
use super::state::{AfterDestroy, Scheduler};
use crate::fleet::{self, SLOT_KINDS_MAX, capacity_of, new_host};
use crate::input::{InputError, ProbeReport};
use crate::model::{HostId, HostSpec, HostState, VmId, VmState};
use crate::output::{Action, Cause, Event};

impl Scheduler {
    fn host_idx(&self, id: HostId) -> Result<usize, InputError> {
        fleet::host_index(&self.host_ids, id).ok_or(InputError::UnknownHost(id))
    }

    fn host_to(&mut self, host_idx: usize, to: HostState, cause: Cause) {
        let from = self
            .fleet
            .update(host_idx, |h| std::mem::replace(&mut h.state, to));
        if from != to {
            self.pass.capacity_changed = true;
            self.events.push_back(Event::Host {
                at_ms: self.now_ms,
                host: self.fleet.hosts[host_idx].spec.id,
                from: Some(from),
                to: Some(to),
                cause,
            });
        }
    }

    fn fleet_changed(&mut self) {
        self.fleet_generation += 1;
        self.never_fits_cache.clear();
        self.pass.capacity_changed = true;
    }

    pub(super) fn add_host(&mut self, spec: HostSpec) -> Result<(), InputError> {
        if self.host_ids.contains_key(&spec.id) {
            return Err(InputError::DuplicateHost(spec.id));
        }
        if self.host_names.contains_key(&spec.name) {
            return Err(InputError::DuplicateHostName(spec.name));
        }
        if spec.name.is_empty() {
            return Err(invalid("name", "must not be empty".into()));
        }
        crate::limits::check_host(&spec)?;
        let new_kinds: BTreeSet<&str> = spec
            .slots
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| self.slot_kinds.get(k).is_none())
            .collect();
        if self.slot_kinds.len() + new_kinds.len() > SLOT_KINDS_MAX {
            return Err(invalid(
                "slots",
                format!("a fleet counts at most {SLOT_KINDS_MAX} slot kinds"),
            ));
        }
        let id = spec.id;
        let name = spec.name.clone();
        let host = new_host(
            spec,
            &mut self.labels,
            &mut self.images,
            &mut self.slot_kinds,
        );
        let idx = self.fleet.push(host);
        if let Some(q) = self.quotas.as_mut() {
            let host = &self.fleet.hosts[idx].spec;
            q.host_added(idx, &host.name, &host.labels);
        }
        self.host_ids.insert(id, idx);
        self.host_names.insert(name, idx);
        self.images_host_added(idx);
        self.fleet_changed();
        self.events.push_back(Event::Host {
            at_ms: self.now_ms,
            host: id,
            from: None,
            to: Some(HostState::Unknown),
            cause: Cause::HostAdded,
        });
        Ok(())
    }

    pub(super) fn remove_host(&mut self, id: HostId) -> Result<(), InputError> {
        let idx = self.host_idx(id)?;
        let host = &self.fleet.hosts[idx];
        if !host.vms.is_empty() {
            return Err(InputError::WrongState {
                what: format!("host {}", host.spec.name),
                state: "holding vms",
                input: "remove it (drain or offline it first)",
            });
        }
        let from = host.state;
        let name = host.spec.name.clone();
        self.fleet.update_static(idx, |h| h.removed = true);
        self.host_ids.remove(&id);
        self.host_names.remove(&name);
        self.fleet_changed();
        self.events.push_back(Event::Host {
            at_ms: self.now_ms,
            host: id,
            from: Some(from),
            to: None,
            cause: Cause::HostRemoved,
        });
        Ok(())
    }

    pub(super) fn probe(
        &mut self,
        id: HostId,
        result: Result<ProbeReport, String>,
    ) -> Result<(), InputError> {
        let idx = self.host_idx(id)?;
        let now = self.now_ms;
        match result {
            Ok(report) => {
                crate::limits::check_measured(report.vcpus, report.memory_mib).map_err(|e| {
                    invalid(
                        "probe",
                        format!("host {id} reported a capacity out of range: {e}"),
                    )
                })?;
                let capacity = capacity_of(
                    report.vcpus,
                    report.memory_mib,
                    &self.fleet.hosts[idx].spec,
                    &mut self.slot_kinds,
                );
                let images = &mut self.images;
                let changed = self.fleet.update_static(idx, |h| {
                    h.last_probe_ms = Some(now);
                    h.probe_failures = 0;
                    let first = !std::mem::replace(&mut h.probed_ok, true);
                    fleet::set_images(h, &report.images, images);
                    std::mem::replace(&mut h.capacity, capacity) != capacity || first
                });
                self.images_probed(idx);
                if changed {
                    self.fleet_changed();
                }
                self.pass.capacity_changed = true;
                match self.fleet.hosts[idx].state {
                    HostState::Unknown => self.host_to(idx, HostState::Ready, Cause::ProbeOk),
                    HostState::Error => {
                        self.fleet.update(idx, |h| h.provision_failures = 0);
                        self.host_to(idx, HostState::Ready, Cause::ProbeOk);
                    }
                    _ => {}
                }
            }
            Err(message) => {
                let n = self.fleet.update(idx, |h| {
                    h.last_probe_ms = Some(now);
                    h.probe_failures += 1;
                    h.probe_failures
                });
                let state = self.fleet.hosts[idx].state;
                if n >= self.config.probe_failures_max
                    && matches!(
                        state,
                        HostState::Unknown | HostState::Ready | HostState::Draining
                    )
                {
                    self.host_to_error(idx, Cause::ProbeFailed(message));
                }
            }
        }
        Ok(())
    }

    pub(super) fn drain(&mut self, id: HostId) -> Result<(), InputError> {
        let idx = self.host_idx(id)?;
        match self.fleet.hosts[idx].state {
            HostState::Ready | HostState::Unknown => {
                self.host_to(idx, HostState::Draining, Cause::OperatorDrain);
                self.warm_drain(idx);
                if self.fleet.hosts[idx].vms.is_empty() {
                    self.host_to(idx, HostState::Maintenance, Cause::Drained);
                }
            }
            HostState::Error => self.host_to(idx, HostState::Maintenance, Cause::OperatorDrain),
            HostState::Draining | HostState::Maintenance | HostState::Offline => {}
        }
        Ok(())
    }

    pub(super) fn resume(&mut self, id: HostId) -> Result<(), InputError> {
        let idx = self.host_idx(id)?;
        let host = &self.fleet.hosts[idx];
        let to = match host.state {
            HostState::Ready | HostState::Unknown => return Ok(()),
            HostState::Error => HostState::Unknown,
            HostState::Draining | HostState::Maintenance | HostState::Offline if host.probed_ok => {
                HostState::Ready
            }
            HostState::Draining | HostState::Maintenance | HostState::Offline => HostState::Unknown,
        };
        self.fleet.update(idx, |h| {
            h.probe_failures = 0;
            h.provision_failures = 0;
        });
        self.host_to(idx, to, Cause::OperatorResume);
        Ok(())
    }

    pub(super) fn offline(&mut self, id: HostId) -> Result<(), InputError> {
        let idx = self.host_idx(id)?;
        self.host_to(idx, HostState::Offline, Cause::OperatorOffline);
        self.lose_vms(idx);
        Ok(())
    }

    /// Frees a VM's share of its host (idempotent) and notes that capacity came back.
    pub(super) fn free_capacity(&mut self, vm: VmId) {
        let Some(v) = self.vms.get_mut(&vm) else {
            return;
        };
        let Some(host_idx) = v.host else { return };
        let provisioning = std::mem::replace(&mut v.provisioning, false);
        let request = v.request;
        if let Some(r) = self.requests.get(&request) {
            let released = self.fleet.release(host_idx, &r.need, vm, provisioning);
            if released && let Some(fair) = self.fair.as_mut() {
                fair.charge(r.account, &r.need, -1, self.now_ms);
            }
            if released && let Some(q) = self.quotas.as_mut() {
                q.charge(r.quota_account, host_idx, &r.need, -1);
            }
        } else if let Some(need) = self.warm_need(vm) {
            self.fleet.release(host_idx, &need, vm, provisioning);
        }
        self.drop_end(vm);
        self.pass.capacity_changed = true;
        let host = &self.fleet.hosts[host_idx];
        if host.state == HostState::Draining && host.vms.is_empty() {
            self.host_to(host_idx, HostState::Maintenance, Cause::Drained);
        }
    }

    pub(super) fn count_host_failure(&mut self, host_idx: usize) {
        let n = self.fleet.update(host_idx, |h| {
            h.provision_failures += 1;
            h.provision_failures
        });
        let state = self.fleet.hosts[host_idx].state;
        if n >= self.config.provision_failures_max
            && matches!(
                state,
                HostState::Ready | HostState::Draining | HostState::Unknown
            )
        {
            self.host_to_error(host_idx, Cause::CircuitBreaker(n));
        }
    }

    fn host_to_error(&mut self, idx: usize, cause: Cause) {
        self.host_to(idx, HostState::Error, cause);
        self.lose_vms(idx);
    }

    /// Every VM on the host is lost; requests get replacements within their retry budget.
    fn lose_vms(&mut self, idx: usize) {
        let host = &self.fleet.hosts[idx];
        let (host_id, name) = (host.spec.id, host.spec.name.clone());
        let mut vms = host.vms.clone();
        vms.sort_unstable();
        for vm in vms {
            self.lose_vm(
                vm,
                Cause::HostLost {
                    host: host_id,
                    name: name.clone(),
                },
            );
        }
    }

    /// A VM is gone from its host: destroyed there to be sure (gone is fine), ended as lost
    /// and replaced within its request's retry budget; one being released just ends.
    pub(super) fn lose_vm(&mut self, vm: VmId, cause: Cause) {
        let Some(v) = self.vms.get(&vm) else { return };
        let Some(host_idx) = v.host else { return };
        let host_id = self.fleet.hosts[host_idx].spec.id;
        let request = v.request;
        let (state, after) = (v.state, v.after_destroy);
        self.free_capacity(vm);
        self.actions
            .push_back(Action::Destroy { vm, host: host_id });
        let ended_anyway = match (state, after) {
            (VmState::Releasing, AfterDestroy::End(to)) => Some(to),
            _ => None,
        };
        match ended_anyway {
            Some(to) => {
                self.vm_to(vm, to, cause);
                self.forget_vm(vm);
                self.maybe_finish(request);
            }
            None => {
                self.vm_to(vm, VmState::Lost, cause);
                self.forget_vm(vm);
                let retry = self.requests.get(&request).is_some_and(|r| {
                    r.retries_used < self.config.vm_retries_max && r.ending.is_none()
                });
                if retry {
                    if let Some(r) = self.requests.get_mut(&request) {
                        r.retries_used += 1;
                        // The lost VM counted as failed in forget_vm; its replacement
                        // stands in for it.
                        r.vms_failed = r.vms_failed.saturating_sub(1);
                        r.live += 1;
                    }
                    let new = self.new_vm(request, Cause::Retry { of: vm });
                    self.enqueue_vm(request, new);
                } else {
                    self.maybe_finish(request);
                }
            }
        }
    }
}
