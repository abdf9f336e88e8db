//! What goes into the scheduler: `Input` for `Scheduler::handle`, and the errors it can refuse with.

use std::fmt;

use crate::model::{HostId, HostSpec, RequestId, RequestSpec, Template, VmId};

/// One thing that happened, fed to `Scheduler::handle` with the time it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Submit(RequestSpec),
    Cancel(RequestId),
    AddHost(HostSpec),
    /// Remove a host that holds no VMs (drain or offline it first).
    RemoveHost(HostId),
    Probe {
        host: HostId,
        result: Result<ProbeReport, String>,
    },
    Drain(HostId),
    Resume(HostId),
    /// Take a host out of service now: its VMs are lost.
    Offline(HostId),
    /// A driver worker began provisioning a placed VM.
    ProvisionStarted(VmId),
    ProvisionDone {
        vm: VmId,
        result: Result<(), Failure>,
    },
    BootDone {
        vm: VmId,
        result: Result<(), Failure>,
    },
    /// A driver finished handing a warm VM over to the request's VM (`Action::Handover`).
    HandoverDone {
        vm: VmId,
        result: Result<(), Failure>,
    },
    JobFinished {
        vm: VmId,
        passed: bool,
    },
    /// Release a held VM (a breakpoint) now.
    Release(VmId),
    /// Give a held VM more time.
    Extend {
        vm: VmId,
        by_ms: u64,
    },
    DestroyDone {
        vm: VmId,
        result: Result<(), Failure>,
    },
    /// A booted VM vanished from its host (missing when the daemon looked, or deleted behind
    /// berth's back): it is lost and replaced within its request's retry budget, like the VMs
    /// of a failed host, without blaming the host. A VM that was being released just ends.
    VmLost(VmId),
    /// VM ids up to and including this one belong to VMs the scheduler has no record of (kept
    /// orphans, found on hosts after a journal was lost): new VMs are numbered past it, so no
    /// new VM takes an orphan's name. Ids already past it are left as they are.
    ReserveVmIds(VmId),
    /// Add or replace a template.
    SetTemplate(Template),
    /// Time passed: fire due timers (request deadlines, breakpoint expiry, aging).
    Tick,
}

/// What a successful probe measured on a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeReport {
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Base images cached on the host.
    pub images: Vec<String>,
}

/// Whose fault a failure was, which decides what the scheduler does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Worth trying again (a timeout, a busy host): retried, and counted against the host.
    Transient,
    /// The host cannot do it (image missing, disk full): retried elsewhere, counted against the host.
    Host,
    /// The request itself is at fault (a template that cannot boot): the request fails, the host is blameless.
    Request,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            FailureKind::Transient => "transient",
            FailureKind::Host => "host",
            FailureKind::Request => "request",
        };
        write!(f, "{kind} failure: {}", self.message)
    }
}

/// Why `handle` refused an input. A refused input changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputError {
    UnknownHost(HostId),
    UnknownRequest(RequestId),
    /// The VM is unknown or already ended (a late completion after it was lost is one such case).
    UnknownVm(VmId),
    UnknownTemplate(String),
    DuplicateHost(HostId),
    DuplicateHostName(String),
    DuplicateRequest(RequestId),
    /// A field of a request or host is out of range.
    Invalid {
        field: &'static str,
        reason: String,
    },
    /// The input does not apply to the thing's current state.
    WrongState {
        what: String,
        state: &'static str,
        input: &'static str,
    },
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputError::UnknownHost(h) => write!(f, "unknown host {h}"),
            InputError::UnknownRequest(r) => write!(f, "unknown request {r}"),
            InputError::UnknownVm(v) => write!(f, "unknown or ended vm {v}"),
            InputError::UnknownTemplate(t) => write!(f, "unknown template `{t}`"),
            InputError::DuplicateHost(h) => write!(f, "host {h} exists already"),
            InputError::DuplicateHostName(n) => write!(f, "a host named `{n}` exists already"),
            InputError::DuplicateRequest(r) => write!(f, "request {r} exists already"),
            InputError::Invalid { field, reason } => write!(f, "field `{field}`: {reason}"),
            InputError::WrongState { what, state, input } => {
                write!(f, "{what} is {state}: cannot {input}")
            }
        }
    }
}

impl std::error::Error for InputError {}
