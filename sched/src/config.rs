//! Scheduler configuration: the queue discipline, placement weights and every named limit.

use crate::model::Template;

/// How the queue is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Strict first come, first served: nothing passes a waiting head.
    Fcfs,
    /// EASY backfilling: the head gets a reservation from expected durations; a later request
    /// may start now only if it does not delay that reservation.
    Easy,
    /// Place anything that fits, by priority (with aging) then arrival.
    Greedy,
    /// AccaSim 1.1.3's "EASY backfilling" as that simulator's code behaves: the blocked head is
    /// retried only at its reservation time and backfilling ignores the reservation. For
    /// checking the simulator against AccaSim only; it can starve the head.
    AccasimEasy,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Fcfs => "fcfs",
            Policy::Easy => "easy",
            Policy::Greedy => "greedy",
            Policy::AccasimEasy => "accasim-easy",
        }
    }

    pub fn parse(s: &str) -> Option<Policy> {
        [
            Policy::Fcfs,
            Policy::Easy,
            Policy::Greedy,
            Policy::AccasimEasy,
        ]
        .into_iter()
        .find(|p| p.name() == s)
    }
}

/// Where the search for candidate hosts starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanOrder {
    /// From the lowest host index: the fleet fills from one end (first fit; best with `pack`).
    Lowest,
    /// From just after the host chosen last, round robin (as kube-scheduler does; best with `spread`).
    Rotate,
}

/// Weights of the scorers; a weight of zero turns a scorer off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weights {
    pub pack: u32,
    pub spread: u32,
    pub locality: u32,
}

/// An account (a team or project) with its weight in fair share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    /// Its share of the fleet relative to the other accounts' weights.
    pub weight: u32,
}

/// Fair share between accounts: the queue serves the account furthest below its share first
/// (the lowest decayed usage per unit of weight), then priority with aging, then arrival.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FairShare {
    /// Usage (vCPU-seconds and slot-seconds of VMs holding capacity) halves in this time.
    pub half_life_ms: u64,
    /// The weight of an account the list does not name.
    pub default_weight: u32,
    pub accounts: Vec<Account>,
    /// A request that has waited this long is served before the fair order, by priority with
    /// aging and arrival, whatever its account's usage (the part Slurm's age factor plays): a
    /// bound on how long fair share may pass a request over. None: fair order only.
    pub age_limit_ms: Option<u64>,
}

impl Default for FairShare {
    fn default() -> FairShare {
        FairShare {
            half_life_ms: 3_600_000,
            default_weight: 1,
            accounts: Vec::new(),
            age_limit_ms: None,
        }
    }
}

/// Amounts of one host class, each optional: a resource left out is not bounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaAmounts {
    pub vcpus: Option<u64>,
    pub memory_mib: Option<u64>,
    /// VMs that take a counted slot (such as a macOS licence), of any kind.
    pub slots: Option<u64>,
}

/// A quota that borrows (Kueue's nominal quota and borrowing limit): what an account is
/// guaranteed of a host class, and how far past that it may borrow while no other account
/// waits for capacity it is guaranteed there. See `scheduler::policy::quota` for the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    /// The account, or [`QUOTA_EVERY_ACCOUNT`] for each account without a quota of its own
    /// on the class.
    pub account: String,
    /// The host class: a host's `class` label, else its `pool` label, else its name without
    /// a trailing `-N` number (`kvm-x86-0001` is of class `kvm-x86`).
    pub class: String,
    /// What the account's VMs may always hold on the class. A resource left out is not
    /// bounded by this quota (so never borrowed).
    pub guarantee: QuotaAmounts,
    /// How much past its guarantee the account may hold while nobody reclaims it; a resource
    /// left out may be borrowed without bound.
    pub borrowing_limit: QuotaAmounts,
}

/// The account name a quota gives to stand for every account without a quota of its own on
/// its class (each such account gets the quota for itself, not a share of one).
pub const QUOTA_EVERY_ACCOUNT: &str = "*";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub policy: Policy,
    pub weights: Weights,
    pub scan: ScanOrder,
    /// How many feasible hosts are scored for each VM (Nomad and kube-scheduler bound this too):
    /// the cost of a placement then grows with the log of the fleet, not with the fleet.
    pub candidates_max: u32,
    /// VMs provisioning at once on one host; further VMs wait for another host or a free turn.
    pub provisioning_per_host_max: u32,
    /// Consecutive failed probes that put a host in `Error`.
    pub probe_failures_max: u32,
    /// Consecutive failed provisionings (or destroys) on one host that put it in `Error`.
    pub provision_failures_max: u32,
    /// Replacement VMs a request may get for VMs lost or failed on the host's account.
    pub vm_retries_max: u32,
    /// A waiting request gains one priority level per step waited, under every policy, so
    /// that nothing starves behind a stream of higher priorities (0: no aging). The order is
    /// re-evaluated at each pass; no timer fires for aging alone.
    pub aging_step_ms: u64,
    /// Fair share between accounts; `None` serves by priority with aging, then arrival.
    pub fair_share: Option<FairShare>,
    /// Quotas per account and host class; empty: none (nothing is bounded by account).
    pub quotas: Vec<Quota>,
    /// Base images as the scheduler sees them: sizes, pull bandwidths, disk budgets and image
    /// stores. `None`: images are where hosts say they are and cost nothing to bring (berth's
    /// behaviour before it modelled pulls).
    pub images: Option<Images>,
    /// Warm pools: VMs booted ahead of demand per template and host class (see
    /// `docs/scheduling.md`, "Warm pools"); empty: none, and nothing else changes.
    pub warm: Vec<Warm>,
    pub templates: Vec<Template>,
}

/// A warm pool: keep `count` VMs of `template` (no request yet) booted and idle on hosts of
/// `class` (see [`crate::host_class`]), for requests of that template and shape to take at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warm {
    pub template: String,
    pub class: String,
    pub count: u32,
    /// The shape of its VMs; `None`: the template's default. (A template asked for in two
    /// shapes has a pool per shape.)
    pub shape: Option<crate::model::Shape>,
}

/// Whether placement weighs what an image costs to bring to a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageMode {
    /// Placement does not look at images: a VM goes where the configured scorers put it and
    /// waits there for whatever pull that causes (queued at its store beyond the store's
    /// limit). No pre-pulls. The baseline that image-aware placement is measured against.
    Ignore,
    /// A host holding (or already pulling) the image always wins over one that lacks it; a
    /// pull starts only while its store has a free turn and when it is cheaper than waiting
    /// for a host that holds the image; images are pulled ahead of queued demand.
    Aware,
}

impl ImageMode {
    pub fn name(self) -> &'static str {
        match self {
            ImageMode::Ignore => "ignore",
            ImageMode::Aware => "aware",
        }
    }

    pub fn parse(s: &str) -> Option<ImageMode> {
        [ImageMode::Ignore, ImageMode::Aware]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

/// What hosts of one class (see [`crate::host_class`]) have for images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageClass {
    pub class: String,
    /// The bandwidth of a pull from its store to one such host, in Mbit/s (10^6 bits).
    pub pull_mbit_s: u64,
    /// Disk set aside for base images on each host; `None`: not bounded.
    pub budget_mib: Option<u64>,
    /// The image store its hosts pull from.
    pub store: String,
}

/// Base images in the scheduler: see `docs/scheduling.md` ("Images").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    pub mode: ImageMode,
    /// Base image name and its size in MiB. An image left out costs nothing to pull and
    /// nothing against a budget.
    pub sizes: Vec<(String, u64)>,
    /// Per host class; a host of a class left out pulls in no time, from no store, unbounded.
    pub classes: Vec<ImageClass>,
    /// Pulls one image store serves at once; further pulls wait for a turn (0: no limit).
    pub store_pulls_max: u32,
}

impl Images {
    /// Images in `mode` with nothing described yet.
    pub fn new(mode: ImageMode) -> Images {
        Images {
            mode,
            sizes: Vec::new(),
            classes: Vec::new(),
            store_pulls_max: 0,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            policy: Policy::Easy,
            weights: Weights {
                pack: 1,
                spread: 0,
                locality: 1,
            },
            scan: ScanOrder::Lowest,
            candidates_max: 8,
            provisioning_per_host_max: 4,
            probe_failures_max: 3,
            provision_failures_max: 3,
            vm_retries_max: 2,
            aging_step_ms: 600_000,
            fair_share: None,
            quotas: Vec::new(),
            images: None,
            warm: Vec::new(),
            templates: Vec::new(),
        }
    }
}
