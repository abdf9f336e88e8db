//! `easy`, EASY backfilling: heads of the queue start in order; the first that waits gets a
//! reservation from the expected ends of the VMs now running, and a later request starts now
//! only if it does not delay that reservation (it ends first, or uses capacity the head will
//! not need). A head that only its account's quota holds back gets no reservation (capacity
//! coming back would not let it start): the others are then served as they fit.

use super::QueuePolicy;
use crate::model::RequestId;
use crate::scheduler::state::{Reads, Scheduler};

pub(crate) const POLICY: QueuePolicy = QueuePolicy {
    serve,
    head_first: true,
    head_blocks: false,
    reads: Reads {
        expected_ends: true,
        durations: true,
    },
};

fn serve(s: &mut Scheduler, full: bool) {
    if let Some(head) = s.serve_heads(full) {
        if s.waits_for_quota(head) {
            s.pass.reservation = None;
            if full {
                s.walk_queue(Some(head), None);
            } else {
                s.serve_arrivals(Some(head), None);
            }
            return;
        }
        backfill(s, head, full);
    }
}

/// The blocked head keeps its reservation; the others start now if they do not delay it.
fn backfill(s: &mut Scheduler, head: RequestId, full: bool) {
    let stale = s.pass.reservation.as_ref().is_none_or(|r| r.head != head);
    if full || stale {
        s.pass.reservation = s.reserve(head);
    }
    let Some(mut reservation) = s.pass.reservation.take() else {
        return;
    };
    if full || stale {
        s.walk_queue(Some(head), Some(&mut reservation));
    } else {
        s.serve_arrivals(Some(head), Some(&mut reservation));
    }
    s.pass.reservation = Some(reservation);
}
