//! `greedy`: every waiting request that fits starts, in service order (effective priority, then
//! arrival). Nothing is held for the head, so later, smaller requests may pass it.

use super::QueuePolicy;
use crate::scheduler::state::{Reads, Scheduler};

pub(crate) const POLICY: QueuePolicy = QueuePolicy {
    serve,
    head_first: false,
    head_blocks: false,
    reads: Reads {
        expected_ends: false,
        durations: false,
    },
};

/// After arrivals alone only they are tried; otherwise the whole queue is walked.
fn serve(s: &mut Scheduler, full: bool) {
    if full {
        s.walk_queue(None, None);
    } else {
        s.serve_arrivals(None, None);
    }
}
