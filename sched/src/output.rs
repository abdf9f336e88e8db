//! What comes out of the scheduler: actions for drivers to carry out, and events for everyone else.

use std::fmt;
use std::sync::Arc;

use crate::input::Failure;
use crate::model::{GuestOs, HostId, HostState, RequestId, RequestState, Shape, VmId, VmState};

/// Work for a driver. The scheduler decided; the driver only carries it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Provision {
        vm: VmId,
        request: RequestId,
        host: HostId,
        spec: VmSpec,
    },
    Destroy {
        vm: VmId,
        host: HostId,
    },
    /// Give the warm VM `warm` (idle and booted, `RequestId::WARM_POOL`'s) to `request` as its
    /// VM `vm`: the driver renames or relabels it and reports `Input::HandoverDone { vm }`. The
    /// capacity it holds on `host` passes to `vm`; `warm` is gone (its event says `Handover`).
    Handover {
        vm: VmId,
        warm: VmId,
        request: RequestId,
        host: HostId,
    },
    /// Bring a base image from its store to a host (only with `Config::images`). The scheduler
    /// has booked it on the store's turns: it runs from `start_ms` to `ready_ms` by the
    /// scheduler's model (size over the host class's bandwidth), and the VMs placed on the host
    /// for that image come out as `Provision` at once; a driver's create waits for the image.
    PullImage {
        host: HostId,
        image: Arc<str>,
        size_mib: u64,
        start_ms: u64,
        ready_ms: u64,
        /// Pulled ahead of queued demand, with no VM placed for it yet.
        ahead: bool,
    },
    /// Remove an unused base image from a host to make room under its disk budget (only with
    /// `Config::images`; never one that backs a VM or is being pulled).
    EvictImage {
        host: HostId,
        image: Arc<str>,
        size_mib: u64,
    },
}

/// Everything a driver needs to create one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    pub template: Arc<str>,
    pub base_image: Arc<str>,
    pub guest_os: GuestOs,
    pub shape: Shape,
}

/// A state transition, for the journal, hooks, metrics and the console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Vm {
        at_ms: u64,
        vm: VmId,
        request: RequestId,
        host: Option<HostId>,
        /// `None` when the VM was just created.
        from: Option<VmState>,
        to: VmState,
        cause: Cause,
    },
    Request {
        at_ms: u64,
        request: RequestId,
        from: Option<RequestState>,
        to: RequestState,
        cause: Cause,
    },
    Host {
        at_ms: u64,
        host: HostId,
        /// `None` when the host was just added; `to` is `None` when it was removed.
        from: Option<HostState>,
        to: Option<HostState>,
        cause: Cause,
    },
}

impl Event {
    pub fn at_ms(&self) -> u64 {
        match self {
            Event::Vm { at_ms, .. } | Event::Request { at_ms, .. } | Event::Host { at_ms, .. } => {
                *at_ms
            }
        }
    }
}

/// Why a transition happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    Submitted,
    /// Replaces an earlier VM of the same request that was lost or failed.
    Retry {
        of: VmId,
    },
    Placed,
    AllPlaced,
    /// A VM of an active request went back to the queue.
    Requeued,
    ProvisionStarted,
    Provisioned,
    Booted,
    /// A warm VM was handed over: on the warm VM's event, to the request's VM `vm`; on the
    /// request's VM, from the warm VM `vm`.
    Handover {
        vm: VmId,
    },
    /// A warm VM is destroyed to make room for a waiting request that no warm VM fits.
    WarmEvicted,
    JobPassed,
    JobFailed,
    /// Released by its owner or an operator.
    Released,
    HoldExpired,
    Destroyed,
    ProvisionFailed(Failure),
    BootFailed(Failure),
    DestroyFailed(Failure),
    /// Its host (named, for people) went to `Error` or was taken offline.
    HostLost {
        host: HostId,
        name: String,
    },
    /// It vanished from its host (`Input::VmLost`).
    Vanished,
    Cancelled,
    /// Still waiting at its pending deadline.
    Deadline,
    /// No host of the fleet could ever fit it: the reason names what is missing.
    NeverFits(String),
    RetriesExhausted,
    AllEnded,
    HostAdded,
    HostRemoved,
    ProbeOk,
    ProbeFailed(String),
    /// This many consecutive provisioning failures tripped the circuit breaker.
    CircuitBreaker(u32),
    OperatorDrain,
    OperatorResume,
    OperatorOffline,
    /// A draining host's last VM ended.
    Drained,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Submitted => f.write_str("submitted"),
            Cause::Retry { of } => write!(f, "retry of {of}"),
            Cause::Placed => f.write_str("placed"),
            Cause::AllPlaced => f.write_str("all vms placed"),
            Cause::Requeued => f.write_str("a vm went back to the queue"),
            Cause::ProvisionStarted => f.write_str("provisioning started"),
            Cause::Provisioned => f.write_str("provisioned"),
            Cause::Booted => f.write_str("booted"),
            Cause::Handover { vm } => write!(f, "warm vm handover ({vm})"),
            Cause::WarmEvicted => f.write_str("warm vm destroyed to make room"),
            Cause::JobPassed => f.write_str("job passed"),
            Cause::JobFailed => f.write_str("job failed"),
            Cause::Released => f.write_str("released"),
            Cause::HoldExpired => f.write_str("breakpoint expired"),
            Cause::Destroyed => f.write_str("destroyed"),
            Cause::ProvisionFailed(e) => write!(f, "provisioning failed: {e}"),
            Cause::BootFailed(e) => write!(f, "boot failed: {e}"),
            Cause::DestroyFailed(e) => write!(f, "destroy failed: {e}"),
            Cause::HostLost { name, .. } => write!(f, "host {name} lost"),
            Cause::Vanished => f.write_str("vanished from its host"),
            Cause::Cancelled => f.write_str("cancelled"),
            Cause::Deadline => f.write_str("pending deadline passed"),
            Cause::NeverFits(why) => write!(f, "no host could ever fit it: {why}"),
            Cause::RetriesExhausted => f.write_str("retry budget exhausted"),
            Cause::AllEnded => f.write_str("all vms ended"),
            Cause::HostAdded => f.write_str("host added"),
            Cause::HostRemoved => f.write_str("host removed"),
            Cause::ProbeOk => f.write_str("probe ok"),
            Cause::ProbeFailed(e) => write!(f, "probe failed: {e}"),
            Cause::CircuitBreaker(n) => write!(f, "{n} provisioning failures in a row"),
            Cause::OperatorDrain => f.write_str("drained by operator"),
            Cause::OperatorResume => f.write_str("resumed by operator"),
            Cause::OperatorOffline => f.write_str("taken offline by operator"),
            Cause::Drained => f.write_str("last vm ended while draining"),
        }
    }
}
