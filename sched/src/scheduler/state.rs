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
    /// When it is expected to give its capacity back (the present once its destroy started).
    pub(crate) expected_end_ms: u64,
    /// Where what it holds is counted for reservations.
    pub(crate) ending: Ending,
}

/// Where a VM's capacity is counted for reservations (only under a policy that reads expected
/// ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Nowhere: it holds nothing, or the policy keeps no expected ends.
    Untracked,
    /// In `Scheduler::ends`, under its `expected_end_ms`.
    Expected,
    /// Being destroyed: in its host's `Scheduler::releasing`, as this entry.
    Releasing(EndEntry),
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

    /// Adds what it gives back to `a`.
    pub(super) fn add_to(&self, a: &mut Amount) {
        a.cpu_milli += self.cpu_milli;
        a.memory_mib += self.memory_mib;
        if let Some(k) = self.slot {
            a.slots[usize::from(k)] += 1;
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

/// How many VMs of one shape (the blocked head's) each host fits now, and their sum: what a
/// reservation starts from before it walks the expected ends. A reservation happens after
/// every change to capacity, so this is kept up to date from the hosts changed since the last
/// one rather than recounted over the whole fleet each time.
#[derive(Clone, Debug, Default)]
pub(crate) struct HeadRoom {
    /// The shape counted; `None` before the first reservation.
    pub(super) need: Option<Need>,
    /// The fleet generation it was counted at (a host added or removed recounts it).
    pub(super) generation: u64,
    /// Per host: VMs of the shape it fits once what is being destroyed on it is gone, or
    /// `NO_NEW_VMS` or `UNABLE`.
    pub(super) fits: Vec<i64>,
    /// The sum of the counts that are not negative.
    pub(super) room: i64,
    /// Hosts that take new VMs but could never run the shape (driver or labels).
    pub(super) unable: usize,
    /// Hosts changed since the last reservation (each once, as marked in `marked`).
    pub(super) dirty: Vec<usize>,
    pub(super) marked: Vec<bool>,
}

impl HeadRoom {
    /// The host takes no new VMs (not `Ready`, or removed).
    pub(super) const NO_NEW_VMS: i64 = -1;
    /// The host takes new VMs but never of this shape.
    pub(super) const UNABLE: i64 = -2;

    /// Notes that host `idx` changed (its capacity, its state or what is being destroyed on
    /// it). Nothing is noted before the first reservation, which counts every host.
    pub(super) fn touch(&mut self, idx: usize) {
        if self.need.is_none() {
            return;
        }
        if self.marked.len() <= idx {
            self.marked.resize(idx + 1, false);
        }
        if !std::mem::replace(&mut self.marked[idx], true) {
            self.dirty.push(idx);
        }
    }

    /// Sets host `idx`'s count, keeping the sum and the count of unable hosts in step.
    pub(super) fn count(&mut self, idx: usize, fits: i64) {
        let old = std::mem::replace(&mut self.fits[idx], fits);
        self.room += fits.max(0) - old.max(0);
        self.unable += usize::from(fits == Self::UNABLE);
        self.unable -= usize::from(old == Self::UNABLE);
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
    pub(crate) ends: super::ends::Ends,
    /// Per host, what its VMs being destroyed give back once gone. They are due now, before
    /// any expected end, so they need no order: a destroy moves a VM out of `ends` into this
    /// sum rather than re-keying it at the present, which halves the upkeep of each VM's end.
    pub(crate) releasing: Vec<Amount>,
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
    /// Per host, how many of the head's shape fit now, kept from one reservation to the next.
    pub(crate) head_room: HeadRoom,
    /// Per host touched by a reservation's walk, what it has free at that point of the walk and
    /// how many of the head's shape that fits (scratch for `reserve`).
    pub(crate) walk_room: Vec<(Amount, i64)>,
    /// The buffers of the last placement's host search, for the next one (scratch).
    pub(crate) search_spare: crate::placement::Search,
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
    /// Warm pools and their VMs (`None` without `Config::warm`).
    pub(crate) warm: Option<super::warm::WarmBook>,
}
