//! `accasim-easy`, AccaSim 1.1.3's EASYBackfilling as that code behaves, for cross-checking the
//! simulator against it (see docs/simulation.md): the blocked head gets a reservation once and
//! is tried again only when that time has come, and meanwhile every other request that fits
//! starts, whether or not it delays the head. Not EASY; not for production.

use super::QueuePolicy;
use crate::scheduler::state::{Reads, Scheduler};

pub(crate) const POLICY: QueuePolicy = QueuePolicy {
    serve,
    head_first: true,
    head_blocks: false,
    reads: Reads {
        expected_ends: true,
        durations: false,
    },
};

/// Walks the whole queue on every pass, whatever changed, as AccaSim does.
fn serve(s: &mut Scheduler, _full: bool) {
    let head = s
        .queue
        .head(s.now_ms, s.config.aging_step_ms)
        .map(|e| e.request);
    let reserved = s
        .pass
        .reservation
        .as_ref()
        .filter(|r| Some(r.head) == head)
        .map(|r| r.shadow_ms);
    match (head, reserved) {
        (Some(_), Some(at)) if s.now_ms < at => {}
        (Some(h), Some(_)) => {
            s.place_request(h, None);
            let placed = s.requests.get(&h).is_none_or(|r| r.queue_key.is_none());
            if placed {
                let blocked = s.serve_heads(true);
                s.pass.reservation = blocked.and_then(|b| s.reserve(b));
            }
        }
        _ => {
            let blocked = s.serve_heads(true);
            s.pass.reservation = blocked.and_then(|b| s.reserve(b));
        }
    }
    let blocked = s.pass.reservation.as_ref().map(|r| r.head);
    s.walk_queue(blocked, None);
}
