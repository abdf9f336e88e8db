//! The things the scheduler reasons about: hosts, templates, requests and VMs, and their states.

use std::fmt;
use std::sync::Arc;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id_type!(
    /// A host, chosen by the caller when it adds the host (the daemon uses its row id).
    HostId,
    "h"
);
id_type!(
    /// A request, chosen by the caller at submit (the daemon uses its row id, the simulator the trace's id).
    RequestId,
    "r"
);
id_type!(
    /// A VM, numbered by the scheduler in the order it creates them, so replays number them alike.
    VmId,
    "vm"
);

impl RequestId {
    /// The owner of warm VMs (`Config::warm`): a warm VM belongs to no request until one takes
    /// it over. No request may have this id.
    pub const WARM_POOL: RequestId = RequestId(u64::MAX);
}

/// Which kind of hypervisor a host runs; a template lists the kinds that can run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DriverKind {
    Libvirt,
    Parallels,
    Sim,
}

impl DriverKind {
    pub const ALL: [DriverKind; 3] = [DriverKind::Libvirt, DriverKind::Parallels, DriverKind::Sim];

    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Libvirt => "libvirt",
            DriverKind::Parallels => "parallels",
            DriverKind::Sim => "sim",
        }
    }

    pub fn parse(s: &str) -> Option<DriverKind> {
        DriverKind::ALL.into_iter().find(|d| d.name() == s)
    }

    /// One bit per kind, for the capacity index's pruning masks.
    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The guest operating system of a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GuestOs {
    Linux,
    Windows,
    Macos,
}

impl GuestOs {
    pub fn name(self) -> &'static str {
        match self {
            GuestOs::Linux => "linux",
            GuestOs::Windows => "windows",
            GuestOs::Macos => "macos",
        }
    }

    pub fn parse(s: &str) -> Option<GuestOs> {
        [GuestOs::Linux, GuestOs::Windows, GuestOs::Macos]
            .into_iter()
            .find(|g| g.name() == s)
    }
}

/// What one VM takes: virtual CPUs and memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shape {
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// A label as `key=value`, on hosts (what they are) and in requests (what they need).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    pub key: String,
    pub value: String,
}

impl Label {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Label {
        Label {
            key: key.into(),
            value: value.into(),
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// A VM image recipe: what base image it clones, which drivers run it, and what it usually costs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub name: Arc<str>,
    /// The base image that VMs are cloned from (a copy-on-write backing file, or a template VM).
    pub base_image: Arc<str>,
    pub guest_os: GuestOs,
    /// Driver kinds that can run this template; empty means any.
    pub drivers: Vec<DriverKind>,
    pub default_shape: Shape,
    /// A counted host slot that each VM of this template takes one of (e.g. `macos`: Apple's
    /// licence allows two macOS guests per Mac).
    pub slot: Option<String>,
    pub expected_provision_ms: u64,
    pub expected_boot_ms: u64,
    /// How long a job usually runs when the request gives no estimate (used by backfilling).
    pub expected_run_ms: u64,
}

impl Template {
    /// A template runnable by every driver, with no slot and zero expected latencies.
    pub fn new(name: &str, shape: Shape) -> Template {
        Template {
            name: name.into(),
            base_image: name.into(),
            guest_os: GuestOs::Linux,
            drivers: Vec::new(),
            default_shape: shape,
            slot: None,
            expected_provision_ms: 0,
            expected_boot_ms: 0,
            expected_run_ms: 3_600_000,
        }
    }
}

/// A host as it is added: its static description. Capacity may later be corrected by probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSpec {
    pub id: HostId,
    pub name: String,
    pub driver: DriverKind,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Counted slots, e.g. `("macos", 2)`.
    pub slots: Vec<(String, u32)>,
    /// vCPU overcommit as a ratio in thousandths (1000 = none, 4000 = four vCPUs per core).
    pub cpu_overcommit_milli: u32,
    /// Memory overcommit in thousandths (1000 = none).
    pub memory_overcommit_milli: u32,
    pub labels: Vec<Label>,
    /// Base images already cached on the host, as far as the caller knows before the first probe.
    pub images: Vec<String>,
}

impl HostSpec {
    /// A host with no overcommit, no slots, no labels and no images.
    pub fn new(id: u64, name: &str, driver: DriverKind, vcpus: u32, memory_mib: u64) -> HostSpec {
        HostSpec {
            id: HostId(id),
            name: name.to_owned(),
            driver,
            vcpus,
            memory_mib,
            slots: Vec::new(),
            cpu_overcommit_milli: 1000,
            memory_overcommit_milli: 1000,
            labels: Vec::new(),
            images: Vec::new(),
        }
    }
}

/// A breakpoint request: keep a VM whose job failed alive for its owner for a while.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub owner: String,
    pub ttl_ms: u64,
}

/// What a CI coordinator asks for: `count` VMs of one template and shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestSpec {
    pub id: RequestId,
    pub template: String,
    pub count: u32,
    /// The shape of every VM; `None` takes the template's default.
    pub shape: Option<Shape>,
    /// Host labels every VM's host must carry.
    pub labels: Vec<Label>,
    /// Higher goes first.
    pub priority: i32,
    /// All VMs placed at once or none (a gang), or each as soon as it fits.
    pub gang: bool,
    pub hold_on_failure: Option<Hold>,
    /// Fail the request if it is still waiting this long after submit.
    pub pending_deadline_ms: Option<u64>,
    /// The requester's estimate of how long each VM's job runs (for backfilling).
    pub expected_run_ms: Option<u64>,
    pub requester: String,
    /// The account (team or project) it is charged to for fair share; `None`: the requester.
    pub account: Option<String>,
}

impl RequestSpec {
    /// The account it is charged to: its own, or else its requester.
    pub fn account_name(&self) -> &str {
        self.account.as_deref().unwrap_or(&self.requester)
    }

    /// A plain request: default shape, no labels, priority 0, not a gang, no breakpoint.
    pub fn new(id: u64, template: &str, count: u32) -> RequestSpec {
        RequestSpec {
            id: RequestId(id),
            template: template.to_owned(),
            count,
            shape: None,
            labels: Vec::new(),
            priority: 0,
            gang: false,
            hold_on_failure: None,
            pending_deadline_ms: None,
            expected_run_ms: None,
            requester: String::new(),
            account: None,
        }
    }
}

/// A host's state, as operators see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostState {
    /// Added, not yet probed.
    Unknown,
    Ready,
    /// No new VMs; becomes `Maintenance` when its last VM ends.
    Draining,
    /// Out of service after an operator's drain (its last VM ended).
    Maintenance,
    /// Taken out of service at once by an operator (its VMs were lost); distinct from
    /// `Maintenance` so an operator can tell a drained host from a pulled one.
    Offline,
    /// Failed probes or provisioning too many times in a row; its VMs were lost.
    Error,
}

impl HostState {
    /// Every state, in order.
    pub const ALL: &'static [HostState] = &[
        HostState::Unknown,
        HostState::Ready,
        HostState::Draining,
        HostState::Maintenance,
        HostState::Offline,
        HostState::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HostState::Unknown => "unknown",
            HostState::Ready => "ready",
            HostState::Draining => "draining",
            HostState::Maintenance => "maintenance",
            HostState::Offline => "offline",
            HostState::Error => "error",
        }
    }
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A VM's lifecycle state (see the glossary in ARCHITECTURE.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VmState {
    Queued,
    Placed,
    Provisioning,
    Booting,
    Running,
    /// At a breakpoint: its job failed and its owner may look inside until released.
    Held,
    Releasing,
    Done,
    /// Provisioning or boot failed past the retry budget, or the request failed.
    Failed,
    /// Its host went to `Error` or offline, or it vanished from its host; the request may retry
    /// it.
    Lost,
    Cancelled,
}

impl VmState {
    /// Every state, in order.
    pub const ALL: &'static [VmState] = &[
        VmState::Queued,
        VmState::Placed,
        VmState::Provisioning,
        VmState::Booting,
        VmState::Running,
        VmState::Held,
        VmState::Releasing,
        VmState::Done,
        VmState::Failed,
        VmState::Lost,
        VmState::Cancelled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            VmState::Queued => "queued",
            VmState::Placed => "placed",
            VmState::Provisioning => "provisioning",
            VmState::Booting => "booting",
            VmState::Running => "running",
            VmState::Held => "held",
            VmState::Releasing => "releasing",
            VmState::Done => "done",
            VmState::Failed => "failed",
            VmState::Lost => "lost",
            VmState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            VmState::Done | VmState::Failed | VmState::Lost | VmState::Cancelled
        )
    }

    /// Whether a VM in this state holds capacity on a host.
    pub fn holds_capacity(self) -> bool {
        matches!(
            self,
            VmState::Placed
                | VmState::Provisioning
                | VmState::Booting
                | VmState::Running
                | VmState::Held
                | VmState::Releasing
        )
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A request's state: exactly one of these at any time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestState {
    /// At least one VM waits to be placed; `Queue::why` says why.
    Waiting,
    /// Every VM is placed (or already ended).
    Active,
    Done,
    Failed,
    /// No host of the fleet could ever fit it.
    Rejected,
    Cancelled,
}

impl RequestState {
    /// Every state, in order.
    pub const ALL: &'static [RequestState] = &[
        RequestState::Waiting,
        RequestState::Active,
        RequestState::Done,
        RequestState::Failed,
        RequestState::Rejected,
        RequestState::Cancelled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RequestState::Waiting => "waiting",
            RequestState::Active => "active",
            RequestState::Done => "done",
            RequestState::Failed => "failed",
            RequestState::Rejected => "rejected",
            RequestState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, RequestState::Waiting | RequestState::Active)
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
