//! berth's scheduler core: a pure, sans-IO state machine that places CI VMs on hosts.
//!
//! It does no I/O, spawns nothing, reads no clock and no OS randomness. Time (integer
//! milliseconds) comes with every input; the same inputs give the same actions and events,
//! byte for byte. The simulator and the live daemon drive this same type.
//!
//! ```
//! use berth_sched::{Config, DriverKind, HostSpec, Input, RequestSpec, Scheduler, Shape, Template};
//!
//! let mut config = Config::default();
//! config.templates.push(Template::new("linux", Shape { vcpus: 2, memory_mib: 4096 }));
//! let mut s = Scheduler::new(config);
//! s.handle(0, Input::AddHost(HostSpec::new(1, "h1", DriverKind::Sim, 8, 32768))).unwrap();
//! s.handle(0, Input::Probe { host: berth_sched::HostId(1), result: Ok(berth_sched::ProbeReport {
//!     vcpus: 8, memory_mib: 32768, images: vec![] }) }).unwrap();
//! s.handle(5, Input::Submit(RequestSpec::new(1, "linux", 3))).unwrap();
//! let mut provisions = 0;
//! while let Some(action) = s.poll_action() {
//!     if matches!(action, berth_sched::Action::Provision { .. }) { provisions += 1; }
//! }
//! assert_eq!(provisions, 3);
//! ```

pub mod config;
mod fleet;
pub mod idmap;
pub mod images;
pub mod input;
pub mod limits;
pub mod model;
pub mod output;
pub mod placement;
mod queue;
mod scheduler;
mod views;

pub use config::{
    Account, Config, FairShare, ImageClass, ImageMode, Images, Policy, QUOTA_EVERY_ACCOUNT, Quota,
    QuotaAmounts, ScanOrder, Warm, Weights,
};
pub use fleet::SLOT_KINDS_MAX;
pub use idmap::{IdHasher, IdMap};
pub use input::{Failure, FailureKind, Input, InputError, ProbeReport};
pub use model::{
    DriverKind, GuestOs, Hold, HostId, HostSpec, HostState, Label, RequestId, RequestSpec,
    RequestState, Shape, Template, VmId, VmState,
};
pub use output::{Action, Cause, Event, VmSpec};
pub use placement::Reason;
pub use queue::ImageHold;
pub use scheduler::{
    AccountView, HostImagesView, PullView, QuotaResourceView, QuotaView, REQUEST_VMS_MAX,
    SNAPSHOT_VERSION, Scheduler, SnapshotError, WarmPoolView, host_class,
};
pub use views::{
    Blocker, HostView, Positions, QuotaWait, RequestView, VmView, WHY_HOSTS_NAMED, Why,
    human_duration,
};
