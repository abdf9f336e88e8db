//! Queue policies: each decides, in one pass, which waiting requests are tried and in what
//! order. One per file, each a `QueuePolicy`; the rest of the crate asks `of(policy)` and
//! never names a policy.

mod accasim_easy;
mod easy;
pub(crate) mod fair;
mod fcfs;
mod greedy;
pub(crate) mod quota;

use crate::config::Policy;
use crate::scheduler::state::{Reads, Scheduler};

/// A queue policy: how it serves the queue in a pass, and what it asks of the rest.
pub(crate) struct QueuePolicy {
    /// Serves the queue in one pass. `full`: capacity came back or the fleet changed since the
    /// last pass; otherwise only requests arrived or the head moved.
    pub serve: fn(&mut Scheduler, full: bool),
    /// Serves the queue's head before the rest: a new head (the old one ended, or aging moved
    /// another ahead of it) may start with no change to capacity, so it calls for a pass.
    pub head_first: bool,
    /// Nothing starts while the head waits: every other waiting request waits behind it.
    pub head_blocks: bool,
    /// What the scheduler keeps up for it beyond the queue.
    pub reads: Reads,
}

/// The queue policy the config names.
pub(crate) fn of(policy: Policy) -> &'static QueuePolicy {
    match policy {
        Policy::Fcfs => &fcfs::POLICY,
        Policy::Easy => &easy::POLICY,
        Policy::Greedy => &greedy::POLICY,
        Policy::AccasimEasy => &accasim_easy::POLICY,
    }
}
