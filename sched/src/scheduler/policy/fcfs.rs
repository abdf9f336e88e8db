//! `fcfs`, first come, first served: heads of the queue start in order until one waits;
//! nothing passes a waiting head.

use super::QueuePolicy;
use crate::scheduler::state::{Reads, Scheduler};

pub(crate) const POLICY: QueuePolicy = QueuePolicy {
    serve,
    head_first: true,
    head_blocks: true,
    reads: Reads {
        expected_ends: false,
        durations: false,
    },
};

fn serve(s: &mut Scheduler, full: bool) {
    s.serve_heads(full);
}
