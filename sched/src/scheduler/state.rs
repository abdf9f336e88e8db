//! What the scheduler holds: its requests, VMs, timers and the notes one pass leaves the next.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::config::Config;
use crate::fleet::{Amount, Fleet, Interner, Need};
use crate::idmap::IdMap;
use crate::model::{HostId, RequestId, RequestSpec, RequestState, Template, VmId, VmState};
use crate::output::{Action, Cause, Event, VmSpec};
use crate::queue::{Entry, Level, Queue, Wait};
use crate::scheduler::policy::fair::Fair;
use crate::scheduler::policy::quota::Quotas;

/// Something due at a time: a waiting request's deadline, or the end of a breakpoint's hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    Deadline(RequestId),
    Hold(VmId),
    /// A pull of an image (interned id) to a host (index) is ready.
    PullReady {
        host: u32,
        image: u32,
    },
}

/// What a VM becomes once its destroy completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterDestroy {
    End(VmState),
    /// Boot failed within the retry budget: queue the same VM again.
    Requeue,
}

#[derive(Clone, Debug)]
pub(crate) struct Vm {
    pub(crate) request: RequestId,
    pub(crate) state: VmState,
    pub(crate) host: Option<usize>,
    /// Holds one of its host's provisioning turns (from placement until provisioned).
    pub(crate) provisioning: bool,
    pub(crate) after_destroy: AfterDestroy,
    pub(crate) hold_until_ms: u64,
    /// The key under which it sits in `Scheduler::ends` while it holds capacity.
    pub(crate) expected_end_ms: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct Request {
    pub(crate) spec: RequestSpec,
    pub(crate) vm_spec: VmSpec,
    pub(crate) need: Need,
    pub(crate) state: RequestState,
    pub(crate) submitted_ms: u64,
    /// `((account, priority), seq)` while in the queue.
    pub(crate) queue_key: Option<(Level, u64)>,
    /// Its account's id under fair share (0 without).
    pub(crate) account: u32,
    /// Its account's id under quotas (0 without).
    pub(crate) quota_account: u32,
    /// VMs in `Queued`, in order.
    pub(crate) queued: Vec<VmId>,
    /// VMs not yet ended.
    pub(crate) live: u32,
    /// Until its first placement a gang places all its VMs at once or none; replacements
    /// for lost VMs are placed one by one.
    pub(crate) gang_pending: bool,
    pub(crate) retries_used: u32,
    pub(crate) vms_failed: u32,
    pub(crate) ending: Option<RequestState>,
    /// Why it is ending early, for its final event.
    pub(crate) ending_cause: Option<Cause>,
    /// Expected provisioning plus boot time, and expected job duration.
    pub(crate) expected_start_ms: u64,
    pub(crate) expected_run_ms: u64,
}

/// What a VM gives back when it ends, kept small: the expected-ends map is updated several
/// times in each VM's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EndEntry {
    pub(super) host: u32,
    pub(super) slot: Option<u8>,
    pub(super) cpu_milli: i64,
    pub(super) memory_mib: i64,
}

impl EndEntry {
    pub(super) fn of(need: &Need) -> EndEntry {
        EndEntry {
            host: 0,
            slot: need.slot.map(|k| k as u8),
            cpu_milli: need.cpu_milli,
            memory_mib: need.memory_mib,
        }
    }

    pub(super) fn amount(&self) -> Amount {
        let mut a = Amount {
            cpu_milli: self.cpu_milli,
            memory_mib: self.memory_mib,
            ..Amount::default()
        };
        if let Some(k) = self.slot {
            a.slots[usize::from(k)] = 1;
        }
        a
    }
}

/// The head's reservation under EASY backfilling.
#[derive(Clone, Debug)]
pub(crate) struct Reservation {
    pub(super) head: RequestId,
    pub(super) need: Need,
    /// When the head is expected to fit, from the expected ends of the VMs now running.
    pub(super) shadow_ms: u64,
    /// VMs of the head's shape that will be free at the shadow time beyond what the head needs:
    /// a backfilled VM that outlives the shadow may only use these.
    pub(super) extra: i64,
    /// Every host that takes new VMs could also run the head.
    pub(super) all_eligible: bool,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Pass {
    /// Something freed capacity or changed the fleet since the last pass.
    pub(super) capacity_changed: bool,
    /// Requests that got new queued VMs since the last pass.
    pub(super) arrivals: Vec<RequestId>,
    pub(super) blocked_head: Option<RequestId>,
    pub(super) reservation: Option<Reservation>,
    /// The fleet generation at which waiting requests were last checked for "never fits".
    pub(super) checked_generation: u64,
    /// Placement attempts that failed in this pass: `(need, limited by a reservation, VMs
    /// needed at once, fleet version, why)`. An attempt with the same need, at least as many
    /// VMs and an unchanged fleet would fail the same way, so it is skipped (a deep queue of
    /// look-alike requests then costs one search per pass, not one per request).
    pub(super) failed: Vec<(Need, bool, i64, u64, Wait)>,
    /// Needs for which no host had room for one VM when an attempt last looked. That stays
    /// true until a host changes and fits one, so each poll checks only the hosts changed since
    /// the last (`recheck_no_room`), and an attempt for such a need is refused without a search.
    /// Across passes this is what keeps a pass after one VM ended from searching for every kind.
    pub(super) no_room: Vec<Need>,
}

/// What a queue policy reads beyond the queue. What the configured one does not read is not
/// kept up (the expected ends) or not told apart (requests that differ only in duration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reads {
    /// The expected end of every VM that holds capacity (`Scheduler::ends`), for reservations.
    pub expected_ends: bool,
    /// Requests' expected durations: requests that differ only in them are served differently,
    /// so they wait in different groups.
    pub durations: bool,
}

/// The scheduler core. `Clone` gives an independent copy (the console's drain prediction
/// simulates on one).
#[derive(Clone, Debug)]
pub struct Scheduler {
    pub(crate) config: Config,
    /// What the configured policy reads beyond the queue.
    pub(crate) reads: Reads,
    pub(crate) templates: BTreeMap<Arc<str>, Template>,
    pub(crate) fleet: Fleet,
    pub(crate) host_ids: BTreeMap<HostId, usize>,
    pub(crate) host_names: BTreeMap<String, usize>,
    pub(crate) labels: Interner,
    pub(crate) images: Interner,
    pub(crate) slot_kinds: Interner,
    pub(crate) requests: IdMap<RequestId, Request>,
    pub(crate) vms: IdMap<VmId, Vm>,
    pub(crate) queue: Queue,
    /// Expected end of every VM that holds capacity, for backfilling.
    /// Each entry carries the VM's host and what it takes there. Kept only when the policy
    /// reads it (`Reads::expected_ends`).
    pub(crate) ends: BTreeMap<(u64, VmId), EndEntry>,
    pub(crate) timers: BTreeSet<(u64, Timer)>,
    pub(crate) actions: VecDeque<Action>,
    pub(crate) events: VecDeque<Event>,
    pub(crate) next_vm: u64,
    pub(crate) now_ms: u64,
    pub(crate) pass: Pass,
    pub(crate) rotate_from: usize,
    pub(crate) fleet_generation: u64,
    pub(crate) never_fits_cache: BTreeMap<(Need, u32), Option<String>>,
    pub(crate) scratch: Vec<Entry>,
    /// Per host, the capacity it gets back by the current reservation's shadow time.
    pub(crate) freed_at_shadow: Vec<Option<Amount>>,
    /// The hosts with an entry in `freed_at_shadow`.
    pub(crate) freed_touched: Vec<usize>,
    /// Per host, whether it takes new VMs and could run the head (scratch for `reserve`).
    pub(crate) eligible_for_head: Vec<bool>,
    /// Accounts and their usage under fair share (`None` without).
    pub(crate) fair: Option<Fair>,
    /// Quotas per account and host class (`None` without).
    pub(crate) quotas: Option<Quotas>,
    /// Whether a queue group's need could run on a quota's class, per fleet generation
    /// (`reclaim_quotas`).
    pub(crate) runs_on_class: BTreeMap<(u64, u32), bool>,
    pub(crate) runs_on_class_generation: u64,
    /// Passes walk every waiting request one by one (see `Scheduler::reference`).
    pub(crate) reference_walk: bool,
    /// Base images per host, pulls and image stores (`None` without `Config::images`).
    pub(crate) image_book: Option<super::images::ImageBook>,
}
