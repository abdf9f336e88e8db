//! Requests: submitting one (rejected at once if no host could ever fit it), cancelling it,
//! how it ends, and the templates it names.

use std::collections::BTreeMap;

use super::state::{AfterDestroy, Reads, Request, Scheduler, Timer};
use crate::fleet::{Need, SLOT_KINDS_MAX, bloom_bit, driver_mask, label_key};
use crate::input::InputError;
use crate::model::{RequestId, RequestSpec, RequestState, Shape, Template, VmId, VmState};
use crate::output::{Cause, Event, VmSpec};
use crate::placement::Reason;
use crate::placement::filter::{KNOWN_UNPROBED, Probe, STATIC, first_failure};
use crate::queue::{Kind, Wait};

/// The most VMs one request may ask for.
pub const REQUEST_VMS_MAX: u32 = 100_000;

impl Scheduler {
    pub(super) fn submit(&mut self, spec: RequestSpec) -> Result<(), InputError> {
        if self.requests.contains_key(&spec.id) {
            return Err(InputError::DuplicateRequest(spec.id));
        }
        if spec.id == RequestId::WARM_POOL {
            return Err(invalid("id", format!("{} is the warm pools' own", spec.id)));
        }
        if spec.count == 0 || spec.count > REQUEST_VMS_MAX {
            return Err(invalid(
                "count",
                format!("must be 1 to {REQUEST_VMS_MAX}, got {}", spec.count),
            ));
        }
        let template = self
            .templates
            .get(spec.template.as_str())
            .ok_or_else(|| InputError::UnknownTemplate(spec.template.clone()))?;
        let shape = spec.shape.unwrap_or(template.default_shape);
        crate::limits::check_shape(shape)?;
        if let Some(k) = &template.slot
            && self.slot_kinds.get(k).is_none()
            && self.slot_kinds.len() >= SLOT_KINDS_MAX
        {
            return Err(invalid(
                "template",
                format!("slot kind `{k}` would exceed {SLOT_KINDS_MAX} kinds"),
            ));
        }
        let vm_spec = VmSpec {
            template: template.name.clone(),
            base_image: template.base_image.clone(),
            guest_os: template.guest_os,
            shape,
        };
        let expected_start_ms = template
            .expected_provision_ms
            .saturating_add(template.expected_boot_ms);
        let expected_run_ms = spec.expected_run_ms.unwrap_or(template.expected_run_ms);
        let drivers = driver_mask(&template.drivers);
        let slot = template
            .slot
            .clone()
            .map(|k| self.slot_kinds.intern(&k) as usize);
        let image = self.images.intern(&template.base_image);
        let mut labels: Vec<u32> = spec
            .labels
            .iter()
            .map(|l| self.labels.intern(&label_key(l)))
            .collect();
        labels.sort_unstable();
        labels.dedup();
        let need = Need {
            cpu_milli: i64::from(shape.vcpus) * 1000,
            memory_mib: shape.memory_mib as i64,
            slot,
            drivers,
            label_bloom: labels.iter().fold(0, |m, &l| m | bloom_bit(l)),
            labels,
            image,
        };

        let id = spec.id;
        let now = self.now_ms;
        let together = if spec.gang { spec.count } else { 1 };
        if let Some(why) = self.never_fits(&need, together) {
            let why = format!("{}: {why}", describe_need(&spec, shape));
            self.events.push_back(Event::Request {
                at_ms: now,
                request: id,
                from: None,
                to: RequestState::Rejected,
                cause: Cause::NeverFits(why),
            });
            return Ok(());
        }
        self.events.push_back(Event::Request {
            at_ms: now,
            request: id,
            from: None,
            to: RequestState::Waiting,
            cause: Cause::Submitted,
        });
        if let Some(d) = spec.pending_deadline_ms {
            self.timers
                .insert((now.saturating_add(d), Timer::Deadline(id)));
        }
        let mut queued = Vec::with_capacity(spec.count as usize);
        for _ in 0..spec.count {
            let vm = self.new_vm(id, Cause::Submitted);
            queued.push(vm);
        }
        let account = self
            .fair
            .as_mut()
            .map_or(0, |f| f.account(spec.account_name()));
        let quota_account = self
            .quotas
            .as_mut()
            .map_or(0, |q| q.account(spec.account_name()));
        let kind = Kind {
            account,
            quota_account,
            priority: spec.priority,
            need: need.clone(),
            together,
            duration_ms: kind_duration(self.reads, expected_start_ms, expected_run_ms),
        };
        let seq = self.queue.push(id, kind, now);
        self.requests.insert(
            id,
            Request {
                queue_key: Some(((account, spec.priority), seq)),
                account,
                quota_account,
                gang_pending: spec.gang,
                live: spec.count,
                spec,
                vm_spec,
                need,
                state: RequestState::Waiting,
                submitted_ms: now,
                queued,
                retries_used: 0,
                vms_failed: 0,
                ending: None,
                ending_cause: None,
                expected_start_ms,
                expected_run_ms,
            },
        );
        self.pass.arrivals.push(id);
        Ok(())
    }

    /// Why no host of the fleet (in any state) could ever hold `together` VMs of `need` at
    /// once, or `None` if some could. Cached per fleet generation.
    pub(super) fn never_fits(&mut self, need: &Need, together: u32) -> Option<String> {
        let key = (need.clone(), together);
        if let Some(answer) = self.never_fits_cache.get(&key) {
            return answer.clone();
        }
        let mut room: i64 = 0;
        let mut reasons: BTreeMap<Reason, u32> = BTreeMap::new();
        let mut n_hosts = 0u32;
        for (class, members) in &self.fleet.classes {
            let Some(&first) = members.first() else {
                continue;
            };
            let n = members.len() as u32;
            n_hosts += n;
            let host = &self.fleet.hosts[first];
            let probe = Probe {
                host,
                avail: host.capacity,
                need,
                provisioning_max: self.fleet.provisioning_max,
            };
            // A host not yet probed has no known capacity: if its driver and labels suit, it
            // may take any number, and its first probe decides (the fleet changes then).
            if !class.probed {
                match first_failure(&KNOWN_UNPROBED, &probe) {
                    Some(r) => *reasons.entry(r).or_default() += n,
                    None => room = i64::MAX,
                }
                continue;
            }
            match first_failure(&STATIC, &probe) {
                Some(r) => *reasons.entry(r).or_default() += n,
                None => {
                    room = room
                        .saturating_add(host.capacity.fit_count(need).saturating_mul(i64::from(n)))
                }
            }
        }
        let answer = if room >= i64::from(together) {
            None
        } else if n_hosts == 0 {
            Some("the fleet has no hosts".to_owned())
        } else {
            let mut parts: Vec<String> = reasons
                .iter()
                .map(|(r, n)| static_reason_text(*r, *n))
                .collect();
            if room > 0 {
                parts.push(format!(
                    "the hosts that could take it hold only {room} at once"
                ));
            }
            Some(parts.join(", "))
        };
        self.never_fits_cache.insert(key, answer.clone());
        answer
    }

    pub(super) fn cancel(&mut self, id: RequestId) -> Result<(), InputError> {
        if !self.requests.contains_key(&id) {
            return Err(InputError::UnknownRequest(id));
        }
        self.end_request(id, RequestState::Cancelled, Cause::Cancelled);
        Ok(())
    }

    /// Ends a request early (cancelled or failed): queued VMs end now, placed ones are destroyed
    /// and end when their destroy completes.
    pub(super) fn end_request(&mut self, id: RequestId, as_state: RequestState, cause: Cause) {
        let vm_end = match as_state {
            RequestState::Cancelled => VmState::Cancelled,
            _ => VmState::Failed,
        };
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        if r.ending.is_some() {
            return;
        }
        r.ending = Some(as_state);
        r.ending_cause = Some(cause.clone());
        let queued = std::mem::take(&mut r.queued);
        if let Some((p, s)) = r.queue_key.take() {
            self.queue.remove(p, s);
        }
        for vm in queued {
            self.vm_to(vm, vm_end, cause.clone());
            self.forget_vm(vm);
        }
        let mut active: Vec<VmId> = self
            .vms
            .iter()
            .filter(|(_, v)| v.request == id)
            .map(|(&vm, _)| vm)
            .collect();
        active.sort_unstable();
        for vm in active {
            self.destroy_vm(vm, AfterDestroy::End(vm_end), cause.clone());
        }
        self.maybe_finish(id);
    }

    /// Ends the request if nothing of it is left; otherwise refreshes Waiting/Active.
    pub(super) fn maybe_finish(&mut self, id: RequestId) {
        let Some(r) = self.requests.get(&id) else {
            return;
        };
        let now = self.now_ms;
        if r.live == 0 && r.queued.is_empty() {
            let to = r.ending.unwrap_or(if r.vms_failed > 0 {
                RequestState::Failed
            } else {
                RequestState::Done
            });
            let from = r.state;
            let cause = match (&r.ending_cause, to) {
                (Some(cause), _) => cause.clone(),
                (None, RequestState::Failed) => Cause::RetriesExhausted,
                _ => Cause::AllEnded,
            };
            if let Some((p, s)) = r.queue_key {
                self.queue.remove(p, s);
            }
            self.requests.remove(&id);
            self.events.push_back(Event::Request {
                at_ms: now,
                request: id,
                from: Some(from),
                to,
                cause,
            });
            return;
        }
        let waiting = !r.queued.is_empty() && r.ending.is_none();
        let to = if waiting {
            RequestState::Waiting
        } else {
            RequestState::Active
        };
        if to != r.state {
            let from = r.state;
            // A request that is ending leaves the queue because of why it ends, not because
            // its VMs were placed.
            let cause = match &r.ending_cause {
                _ if waiting => Cause::Requeued,
                Some(cause) => cause.clone(),
                None => Cause::AllPlaced,
            };
            if let Some(r) = self.requests.get_mut(&id) {
                r.state = to;
            }
            self.events.push_back(Event::Request {
                at_ms: now,
                request: id,
                from: Some(from),
                to,
                cause,
            });
        }
    }

    /// Puts a VM (new or back from a failure) in its request's queue.
    pub(super) fn enqueue_vm(&mut self, id: RequestId, vm: VmId) {
        let now = self.now_ms;
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        r.queued.push(vm);
        if r.queue_key.is_none() {
            let seq = self.queue.push(id, kind_of(r, self.reads), now);
            r.queue_key = Some(((r.account, r.spec.priority), seq));
        }
        self.pass.arrivals.push(id);
        self.maybe_finish(id);
    }

    /// Whether a waiting request's last attempt was refused by its account's quota.
    pub(crate) fn waits_for_quota(&self, id: RequestId) -> bool {
        self.requests
            .get(&id)
            .and_then(|r| r.queue_key)
            .is_some_and(|(level, seq)| matches!(self.queue.wait(level, seq), Wait::Quota))
    }

    /// Records why a waiting request (and so every request of its group) still waits.
    pub(super) fn set_wait(&mut self, id: RequestId, wait: Wait) {
        if let Some((level, seq)) = self.requests.get(&id).and_then(|r| r.queue_key) {
            self.queue.set_wait(level, seq, wait);
        }
    }

    pub(super) fn set_template(&mut self, t: Template) -> Result<(), InputError> {
        crate::limits::check_shape(t.default_shape)?;
        if t.name.is_empty() {
            return Err(invalid("name", "must not be empty".into()));
        }
        let name = t.name.clone();
        self.templates.insert(name.clone(), t);
        self.warm_template_set(&name);
        Ok(())
    }
}

/// The kind a waiting request is grouped under in the queue.
fn kind_of(r: &Request, reads: Reads) -> Kind {
    Kind {
        account: r.account,
        quota_account: r.quota_account,
        priority: r.spec.priority,
        need: r.need.clone(),
        together: if r.gang_pending {
            r.queued.len() as u32
        } else {
            1
        },
        duration_ms: kind_duration(reads, r.expected_start_ms, r.expected_run_ms),
    }
}

/// The expected duration a kind carries: only a policy that reads durations (EASY's
/// backfilling) looks at it, so under the others requests that differ only in it share a group.
fn kind_duration(reads: Reads, expected_start_ms: u64, expected_run_ms: u64) -> u64 {
    if reads.durations {
        expected_start_ms.saturating_add(expected_run_ms)
    } else {
        0
    }
}

pub(super) fn invalid(field: &'static str, reason: String) -> InputError {
    InputError::Invalid { field, reason }
}

/// "3 hosts lack the labels", "1 host has the wrong driver".
fn static_reason_text(r: Reason, n: u32) -> String {
    let (one, many) = match r {
        Reason::Driver => ("host has the wrong driver", "hosts have the wrong driver"),
        Reason::Labels => ("host lacks the labels", "hosts lack the labels"),
        Reason::Cpu => ("host has too few vcpus", "hosts have too few vcpus"),
        Reason::Memory => ("host has too little memory", "hosts have too little memory"),
        Reason::NoSlotKind | Reason::Slots => ("host has no such slot", "hosts have no such slot"),
        other => (other.describe(), other.describe()),
    };
    format!("{n} {}", if n == 1 { one } else { many })
}

/// "3 × 4 vcpus, 8192 MiB (gang), labels arch=aarch64"
pub(crate) fn describe_need(spec: &RequestSpec, shape: Shape) -> String {
    let mut s = format!(
        "{} × {} vcpus, {} MiB of `{}`",
        spec.count, shape.vcpus, shape.memory_mib, spec.template
    );
    if spec.gang && spec.count > 1 {
        s.push_str(" as a gang");
    }
    if !spec.labels.is_empty() {
        let labels: Vec<String> = spec.labels.iter().map(ToString::to_string).collect();
        s.push_str(&format!(", labels {}", labels.join(",")));
    }
    s
}
