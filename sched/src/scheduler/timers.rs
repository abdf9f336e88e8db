//! Timers: a waiting request's deadline and the end of a breakpoint's hold.

use super::state::{AfterDestroy, Scheduler, Timer};
use crate::model::{RequestState, VmState};
use crate::output::Cause;

impl Scheduler {
    /// Fires every timer due by now: a deadline fails a request still waiting, the end of a
    /// hold destroys a VM still held.
    pub(super) fn tick(&mut self) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > self.now_ms {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Deadline(id) => {
                    let waiting = self
                        .requests
                        .get(&id)
                        .is_some_and(|r| r.state == RequestState::Waiting && r.ending.is_none());
                    if waiting {
                        self.end_request(id, RequestState::Failed, Cause::Deadline);
                    }
                }
                Timer::PullReady { host, image } => self.pull_ready(host as usize, image, at),
                Timer::Hold(vm) => {
                    let expired = self
                        .vms
                        .get(&vm)
                        .is_some_and(|v| v.state == VmState::Held && v.hold_until_ms <= at);
                    if expired {
                        self.destroy_vm(vm, AfterDestroy::End(VmState::Done), Cause::HoldExpired);
                    }
                }
            }
        }
    }
}
