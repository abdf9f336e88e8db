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
}

impl Default for FairShare {
    fn default() -> FairShare {
        FairShare {
            half_life_ms: 3_600_000,
            default_weight: 1,
            accounts: Vec::new(),
        }
    }
}

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
    pub templates: Vec<Template>,
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
            templates: Vec::new(),
        }
    }
}
