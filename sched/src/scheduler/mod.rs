//! The scheduler: a sans-IO state machine. Inputs go in through `handle(now_ms, input)`;
//! actions, events and the next timeout are pulled with `poll_*`.
//!
//! `handle` only applies an input; the placement pass runs when `poll_action` or `poll_event`
//! finds nothing left to hand out, so a caller that feeds a batch of inputs (all arrivals and
//! completions of one instant, or a burst of API calls) gets one pass over them. Read the views
//! after polling both until `None`.
//!
//! A pass costs what changed, not the queue's length. After arrivals alone it tries only the
//! arrivals. After capacity came back it walks the queue by groups of one kind (`walk_queue`):
//! only each group's next member is tried, a group that found no room leaves the pass, and a
//! need no host had room for is not searched again until a host that changed has room
//! (`Pass::no_room`). `Scheduler::reference` keeps the one-by-one walk the tests compare with.

mod ends;
mod hosts;
mod images;
mod lifecycle;
mod pass;
mod place;
pub(crate) mod policy;
mod requests;
mod reservation;
mod snapshot;
mod state;
mod timers;
mod vms;
mod walk;
mod warm;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::config::Config;
use crate::fleet::{Fleet, Interner};
use crate::idmap::IdMap;
use crate::input::{Input, InputError};
use crate::model::VmId;
use crate::output::{Action, Event};
use crate::queue::Queue;

pub use images::{HostImagesView, PullView};
pub use policy::quota::host_class;
pub use requests::REQUEST_VMS_MAX;
pub(crate) use requests::describe_need;
pub use snapshot::{SNAPSHOT_VERSION, SnapshotError};
pub use state::Scheduler;
use state::{HeadRoom, Pass};
pub use warm::WarmPoolView;

/// An account's standing under fair share (`Scheduler::accounts`).
#[derive(Clone, Debug, PartialEq)]
pub struct AccountView {
    pub name: String,
    pub weight: u32,
    /// Decayed usage, in vCPU-seconds.
    pub usage_vcpu_s: f64,
    /// What its VMs hold now, in milli-vCPUs (a slot counts as 1,000).
    pub holding_milli: i64,
    /// Its requests waiting in the queue.
    pub waiting: usize,
    /// Where it stands in the order the queue serves accounts: 0 first.
    pub rank: u32,
}

/// An account's quota on a host class and what its VMs hold there (`Scheduler::quotas`).
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaView {
    pub account: String,
    pub class: String,
    /// Per resource (`vcpus`, `memory_mib`, `slots`): held now, the guarantee and the borrowing
    /// limit (`None`: not bounded), in vCPUs, MiB and slot VMs.
    pub resources: Vec<QuotaResourceView>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct QuotaResourceView {
    pub resource: &'static str,
    pub used: f64,
    pub guarantee: Option<f64>,
    pub borrowing_limit: Option<f64>,
}

impl Scheduler {
    pub fn new(config: Config) -> Scheduler {
        let templates = config
            .templates
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        let age_limit_ms = config.fair_share.as_ref().and_then(|f| f.age_limit_ms);
        let warm = warm::WarmBook::new(&config.warm);
        Scheduler {
            fleet: Fleet::new(config.provisioning_per_host_max),
            reads: policy::of(config.policy).reads,
            fair: config.fair_share.as_ref().map(policy::fair::Fair::new),
            quotas: policy::quota::Quotas::new(&config.quotas),
            runs_on_class: BTreeMap::new(),
            runs_on_class_generation: 0,
            config,
            templates,
            host_ids: BTreeMap::new(),
            host_names: BTreeMap::new(),
            labels: Interner::default(),
            images: Interner::default(),
            slot_kinds: Interner::default(),
            requests: IdMap::default(),
            vms: IdMap::default(),
            queue: Queue::with_age_limit(age_limit_ms),
            ends: Default::default(),
            releasing: Vec::new(),
            timers: BTreeSet::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            next_vm: 1,
            now_ms: 0,
            pass: Pass::default(),
            rotate_from: 0,
            fleet_generation: 1,
            never_fits_cache: BTreeMap::new(),
            scratch: Vec::new(),
            freed_at_shadow: Vec::new(),
            freed_touched: Vec::new(),
            head_room: HeadRoom::default(),
            walk_room: Vec::new(),
            search_spare: Default::default(),
            reference_walk: false,
            image_book: None,
            warm,
        }
        .with_images()
        .with_warm()
    }

    /// A scheduler whose passes walk every waiting request one by one, in service order, as
    /// berth did before waiting requests were grouped by kind. It decides exactly as
    /// `Scheduler::new` does, at a cost that grows with the queue's length: it is the reference
    /// the tests compare the grouped walk against (`tests/sched/equivalence.rs`), not for use.
    #[doc(hidden)]
    pub fn reference(config: Config) -> Scheduler {
        Scheduler {
            reference_walk: true,
            ..Scheduler::new(config)
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Under fair share, every account seen with its weight, decayed usage (vCPU-seconds, a
    /// slot counting as a vCPU) as of `now_ms` (the scheduler's clock if later: it moves only
    /// with inputs, so a caller passes the wall clock to see usage accrue while nothing
    /// happens) and rank in the order the queue serves them (0 first, as of the last pass);
    /// empty without fair share.
    pub fn accounts(&self, now_ms: u64) -> Vec<AccountView> {
        let now_ms = now_ms.max(self.now_ms);
        let Some(fair) = self.fair.as_ref() else {
            return Vec::new();
        };
        let waiting = self.queue.waiting_by_account();
        (0..fair.accounts.len() as u32)
            .map(|id| AccountView {
                waiting: waiting.get(&id).copied().unwrap_or(0),
                name: fair.name(id).to_owned(),
                weight: fair.accounts[id as usize].weight,
                usage_vcpu_s: fair.usage_at(id, now_ms),
                holding_milli: fair.accounts[id as usize].holding_milli,
                rank: fair.ranks[id as usize],
            })
            .collect()
    }

    /// Under quotas, every account and class with a quota (an account the quotas name, or any
    /// account seen where a quota holds for every account) with what its VMs hold there, by
    /// account then class in first-seen order; empty without quotas.
    pub fn quotas(&self) -> Vec<QuotaView> {
        use policy::quota::RESOURCES;
        let Some(q) = self.quotas.as_ref() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for account in 0..q.n_accounts() {
            for class in 0..q.n_classes() {
                let Some(b) = q.bounds(account, class) else {
                    continue;
                };
                let used = q.used(account, class);
                let natural = |i: usize, v: i64| {
                    if i == 0 { v as f64 / 1000.0 } else { v as f64 }
                };
                let resources = RESOURCES
                    .iter()
                    .enumerate()
                    .map(|(i, r)| QuotaResourceView {
                        resource: r.name(),
                        used: natural(i, used[i]),
                        guarantee: b.guarantee[i].map(|v| natural(i, v)),
                        borrowing_limit: b.borrowing[i].map(|v| natural(i, v)),
                    })
                    .collect();
                out.push(QuotaView {
                    account: q.account_name(account).to_owned(),
                    class: q.class_name(class).to_owned(),
                    resources,
                });
            }
        }
        out
    }

    /// The time of the latest input.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Applies one input at time `now_ms` (earlier times than a previous input count as that
    /// previous time). An `Err` means the input was refused and nothing changed.
    pub fn handle(&mut self, now_ms: u64, input: Input) -> Result<(), InputError> {
        let before_ms = self.now_ms;
        self.now_ms = self.now_ms.max(now_ms);
        let result = self.apply(input);
        if result.is_err() {
            // A refused input changes nothing, not even the clock.
            self.now_ms = before_ms;
        }
        result
    }

    fn apply(&mut self, input: Input) -> Result<(), InputError> {
        match input {
            Input::Submit(spec) => self.submit(spec),
            Input::Cancel(id) => self.cancel(id),
            Input::AddHost(spec) => self.add_host(spec),
            Input::RemoveHost(id) => self.remove_host(id),
            Input::Probe { host, result } => self.probe(host, result),
            Input::Drain(id) => self.drain(id),
            Input::Resume(id) => self.resume(id),
            Input::Offline(id) => self.offline(id),
            Input::ProvisionStarted(vm) => self.provision_started(vm),
            Input::ProvisionDone { vm, result } => self.provision_done(vm, result),
            Input::BootDone { vm, result } => self.boot_done(vm, result, false),
            Input::HandoverDone { vm, result } => self.boot_done(vm, result, true),
            Input::JobFinished { vm, passed } => self.job_finished(vm, passed),
            Input::Release(vm) => self.release(vm),
            Input::Extend { vm, by_ms } => self.extend(vm, by_ms),
            Input::DestroyDone { vm, result } => self.destroy_done(vm, result),
            Input::VmLost(vm) => self.vm_lost(vm),
            Input::ReserveVmIds(VmId(last)) => {
                let next = last.checked_add(1).ok_or(InputError::Invalid {
                    field: "vm",
                    reason: "no VM id is left past it".into(),
                })?;
                self.next_vm = self.next_vm.max(next);
                Ok(())
            }
            Input::SetTemplate(t) => self.set_template(t),
            Input::Tick => {
                self.tick();
                Ok(())
            }
        }
    }

    /// The next thing for a driver to do. Actions already decided come out first; only when
    /// none is left does the placement pass run over everything fed since the last one (so a
    /// caller that completes a destroy at once, as the zero-latency simulator does, has the
    /// capacity back before the pass).
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        if self.actions.is_empty() {
            self.schedule();
        }
        self.actions.pop_front()
    }

    /// The next state transition. Like `poll_action`, runs a pending pass once none is left.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.events.is_empty() {
            self.schedule();
        }
        self.events.pop_front()
    }

    /// When to call `handle(t, Input::Tick)` next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.first().map(|&(t, _)| t)
    }
}
