//! Drivers carry out the scheduler's actions on hypervisor hosts: the async [`Driver`] trait
//! that every kind of host implements, its error type, and the simulated driver ([`sim`]).
//!
//! A driver never chooses a placement: the scheduler decides, the daemon calls the driver of
//! the host it chose. One [`Driver`] value stands for one host. See `GUIDE.md` for how to
//! write a new one.

pub mod images;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod parallels;
pub mod sim;

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use berth_sched::{DriverKind, Failure, FailureKind, GuestOs, Shape};

/// The prefix of every VM name berth creates. Reconciliation destroys VMs that carry it but
/// that berth has no record of, and leaves every other VM on a host alone.
pub const VM_NAME_PREFIX: &str = "berth-vm";

/// The name berth gives the VM with scheduler id `n` (`berth-vm42`).
pub fn vm_name(n: u64) -> String {
    format!("{VM_NAME_PREFIX}{n}")
}

/// The scheduler id of a VM named by berth, or `None` for any other name.
pub fn parse_vm_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(VM_NAME_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What a probe measured on a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Base images cached on the host.
    pub images: Vec<String>,
}

/// The libvirt domain type of a template's VMs: hardware virtualisation or emulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DomainType {
    /// KVM: hardware virtualisation (needs `/dev/kvm` that works).
    Kvm,
    /// QEMU's emulator (TCG): slow, but runs anywhere.
    Qemu,
    /// libvirt's test driver (`test:///default`), for berth's own tests.
    Test,
}

impl DomainType {
    pub fn name(self) -> &'static str {
        match self {
            DomainType::Kvm => "kvm",
            DomainType::Qemu => "qemu",
            DomainType::Test => "test",
        }
    }
}

impl fmt::Display for DomainType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A domain type name that is not `kvm`, `qemu` or `test`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown libvirt domain type {0:?}: expected kvm, qemu or test")]
pub struct UnknownDomainType(pub String);

impl FromStr for DomainType {
    type Err = UnknownDomainType;

    fn from_str(s: &str) -> Result<DomainType, UnknownDomainType> {
        match s {
            "kvm" => Ok(DomainType::Kvm),
            "qemu" => Ok(DomainType::Qemu),
            "test" => Ok(DomainType::Test),
            other => Err(UnknownDomainType(other.to_owned())),
        }
    }
}

/// Everything a driver needs to create one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmRecipe {
    /// The VM's name on the host (see [`vm_name`]).
    pub name: String,
    pub template: String,
    pub base_image: String,
    pub guest_os: GuestOs,
    pub shape: Shape,
    /// The libvirt domain type the template asks for; `None` leaves it to the host's
    /// configuration. Drivers of other hypervisors ignore it.
    pub domain_type: Option<DomainType>,
}

/// One VM a host runs, as its `list` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmListing {
    pub name: String,
    /// Whether the guest has finished booting.
    pub running: bool,
}

/// Where to reach a VM's graphical console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleAddress {
    /// The host to connect to (usually reached over `ssh -L`).
    pub host: String,
    /// The VNC port on that host's loopback.
    pub port: u16,
    pub password: Option<String>,
}

impl fmt::Display for ConsoleAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vnc://{}:{}", self.host, self.port)
    }
}

/// Why a driver call failed, and whose fault it was: the scheduler retries transient
/// failures, blames the host for host failures and fails the request for request failures.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// Worth trying again: a timeout, a busy host, a dropped connection.
    #[error("transient failure on host {host}: {message}")]
    Transient { host: String, message: String },
    /// The host cannot do it: image missing, disk full, hypervisor down.
    #[error("host {host} failed: {message}")]
    Host { host: String, message: String },
    /// The request itself is at fault (a template that cannot boot): retrying elsewhere won't help.
    #[error("request failed on host {host}: {message}")]
    Request { host: String, message: String },
    /// The VM named is not on the host (for console and screenshot).
    #[error("no vm named {name} on host {host}")]
    NoSuchVm { host: String, name: String },
    /// The driver cannot do this at all (a driver without screenshots, for example).
    #[error("driver {driver} cannot {what}")]
    Unsupported {
        driver: DriverKind,
        what: &'static str,
    },
    /// The host takes no pulls or evictions on request: no image store is configured for it,
    /// or its driver does not do them (it may still pull what a VM needs).
    #[error("host {host} cannot pull or evict base images on request: {why}")]
    NoImageStore { host: String, why: String },
    /// A base image that must stay: named by the VMs, overlays or pulls that use it.
    #[error("base image {image} on host {host} is in use by {}", users.join(", "))]
    ImageInUse {
        host: String,
        image: String,
        users: Vec<String>,
    },
    /// The host holds no base image of that name.
    #[error("host {host} holds no base image {image}")]
    NoSuchImage { host: String, image: String },
}

impl DriverError {
    /// Whose fault the failure was, in the scheduler's terms.
    pub fn kind(&self) -> FailureKind {
        match self {
            DriverError::Transient { .. } => FailureKind::Transient,
            DriverError::Host { .. } => FailureKind::Host,
            DriverError::Request { .. }
            | DriverError::NoSuchVm { .. }
            | DriverError::Unsupported { .. }
            | DriverError::NoImageStore { .. }
            | DriverError::ImageInUse { .. }
            | DriverError::NoSuchImage { .. } => FailureKind::Request,
        }
    }

    /// Whether trying the same call again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, DriverError::Transient { .. })
    }

    /// The failure to feed the scheduler (`ProvisionDone`, `BootDone`, `DestroyDone`).
    pub fn to_failure(&self) -> Failure {
        Failure::new(self.kind(), self.to_string())
    }
}

/// One host of some hypervisor kind. Every call may be made concurrently with others for
/// different VMs; the daemon never runs two calls for the same VM at once.
///
/// Calls must be idempotent where a crash can make the daemon repeat them: `provision` of a
/// VM that exists already succeeds (it adopts it), `boot` of a running VM returns at once, and
/// `destroy` of a VM that is gone succeeds. That is what makes releasing capacity idempotent
/// and recovery after `kill -9` safe.
#[async_trait]
pub trait Driver: Send + Sync {
    /// The kind of hypervisor this driver drives.
    fn kind(&self) -> DriverKind;

    /// The host's name (as the operator added it).
    fn host(&self) -> &str;

    /// Measures the host: capacity and cached base images. A failure counts towards the
    /// host's error threshold.
    async fn probe(&self) -> Result<HostFacts, DriverError>;

    /// Creates the VM (a copy-on-write disk from the base image, then the definition) and
    /// starts it; returns once it is started.
    async fn provision(&self, vm: &VmRecipe) -> Result<(), DriverError>;

    /// Waits until the started guest has booted.
    async fn boot(&self, name: &str) -> Result<(), DriverError>;

    /// Stops the VM and deletes it with its disk.
    async fn destroy(&self, name: &str) -> Result<(), DriverError>;

    /// Every VM on the host, berth's and others' (the daemon filters by [`VM_NAME_PREFIX`]).
    async fn list(&self) -> Result<Vec<VmListing>, DriverError>;

    /// Where to reach the VM's console.
    async fn console(&self, name: &str) -> Result<ConsoleAddress, DriverError>;

    /// A PNG of the VM's screen.
    async fn screenshot(&self, name: &str) -> Result<Vec<u8>, DriverError>;

    /// What the VM has written on its serial console so far. Drivers that keep no serial log
    /// say so with [`DriverError::Unsupported`].
    async fn serial_log(&self, name: &str) -> Result<Vec<u8>, DriverError> {
        let _ = name;
        Err(DriverError::Unsupported {
            driver: self.kind(),
            what: "keep a serial log",
        })
    }

    /// Where the host pulls base images from on request (its image store, as configured), or
    /// `None` when it takes no such pulls: then [`Driver::pull_image`] and
    /// [`Driver::evict_image`] answer [`DriverError::NoImageStore`].
    fn image_store(&self) -> Option<String> {
        None
    }

    /// Brings base image `image` (`linux`) to the host from its image store ahead of demand,
    /// unless it is there; returns once it is there, its digest checked. One pull per image
    /// and host at a time: a pull already running is waited for, not repeated.
    async fn pull_image(&self, image: &str) -> Result<(), DriverError> {
        let _ = image;
        Err(self.no_image_store())
    }

    /// Removes base image `image` from the host. Refused with [`DriverError::ImageInUse`],
    /// naming what uses it, while a VM's disk or an overlay is made from it, it is being
    /// pulled, or a provisioning is about to use it; [`DriverError::NoSuchImage`] when the
    /// host does not hold it.
    async fn evict_image(&self, image: &str) -> Result<(), DriverError> {
        let _ = image;
        Err(self.no_image_store())
    }

    /// The error of image calls on a host that takes none.
    fn no_image_store(&self) -> DriverError {
        DriverError::NoImageStore {
            host: self.host().to_owned(),
            why: format!(
                "the {} driver does not pull or evict on request",
                self.kind()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names_round_trip() {
        assert_eq!(vm_name(42), "berth-vm42");
        assert_eq!(parse_vm_name("berth-vm42"), Some(42));
        assert_eq!(parse_vm_name("berth-vm"), None);
        assert_eq!(parse_vm_name("berth-vm4x"), None);
        assert_eq!(parse_vm_name("other-vm4"), None);
    }

    #[test]
    fn errors_map_onto_failure_kinds() {
        let e = DriverError::Transient {
            host: "h1".into(),
            message: "timeout".into(),
        };
        assert_eq!(e.kind(), FailureKind::Transient);
        assert!(e.is_transient());
        let e = DriverError::Host {
            host: "h1".into(),
            message: "disk full".into(),
        };
        assert_eq!(e.to_failure().kind, FailureKind::Host);
        let e = DriverError::Request {
            host: "h1".into(),
            message: "no bootloader".into(),
        };
        assert_eq!(e.kind(), FailureKind::Request);
        let e = DriverError::ImageInUse {
            host: "h1".into(),
            image: "linux".into(),
            users: vec!["vm berth-vm3".into(), "a pull".into()],
        };
        assert_eq!(
            e.to_string(),
            "base image linux on host h1 is in use by vm berth-vm3, a pull"
        );
        assert_eq!(e.kind(), FailureKind::Request);
    }
}
