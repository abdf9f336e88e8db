//! The event stream's source: every event the control loop publishes gets an id
//! (`EPOCH-SEQ`, the daemon's start time and a counter), goes to the live readers, and is kept
//! in a bounded ring so a reader that reconnects with `Last-Event-ID` gets what it missed.
//!
//! The ring is kept only once someone has read the stream: a daemon nobody watches does not
//! serialise its events. A reader whose last id is older than the ring, or from an earlier run
//! of the daemon, is told so with a `lagged` event before the stream goes on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::limits::{EVENTS_BUFFERED_MAX as LIVE_BUFFER, EVENTS_KEPT_MAX as RING_MAX};

/// One published event: its sequence number and its JSON.
#[derive(Clone, Debug)]
pub(crate) struct Stamped {
    pub seq: u64,
    pub text: Arc<str>,
}

/// Where a reconnecting reader stands.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resume {
    /// A new reader, or one that missed nothing the ring does not hold.
    Whole,
    /// It missed this many events the ring no longer holds.
    Missed(u64),
    /// Its id is from an earlier run of the daemon (or not one of ours): what it missed is
    /// unknown, nothing is replayed, and it should read the state afresh.
    Restarted,
}

pub(crate) struct Feed {
    epoch: u64,
    watched: AtomicBool,
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Stamped>,
}

struct Ring {
    next: u64,
    recent: VecDeque<Stamped>,
}

impl Feed {
    /// A feed for a daemon started at `epoch` (wall-clock milliseconds).
    pub(crate) fn new(epoch: u64) -> Arc<Feed> {
        Arc::new(Feed {
            epoch,
            watched: AtomicBool::new(false),
            ring: Mutex::new(Ring {
                next: 1,
                recent: VecDeque::new(),
            }),
            tx: broadcast::channel(LIVE_BUFFER).0,
        })
    }

    /// Whether an event needs making at all: someone reads, or has read, the stream.
    pub(crate) fn watched(&self) -> bool {
        self.watched.load(Ordering::Relaxed)
    }

    /// Publishes one event's JSON.
    pub(crate) fn publish(&self, text: Arc<str>) {
        let mut ring = self.lock();
        let stamped = Stamped {
            seq: ring.next,
            text,
        };
        ring.next += 1;
        if ring.recent.len() == RING_MAX {
            ring.recent.pop_front();
        }
        ring.recent.push_back(stamped.clone());
        let _ = self.tx.send(stamped);
    }

    /// The SSE id of event `seq`.
    pub(crate) fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.epoch)
    }

    /// Subscribes a reader whose last event was `last_id` (`Last-Event-ID`): what it missed that
    /// the ring holds, in order, and the live receiver for what follows (its events after the
    /// replayed ones; skip any with a `seq` at or below the last replayed).
    pub(crate) fn subscribe(
        &self,
        last_id: Option<&str>,
    ) -> (Resume, Vec<Stamped>, broadcast::Receiver<Stamped>) {
        self.watched.store(true, Ordering::Relaxed);
        let ring = self.lock();
        // Subscribing under the lock: nothing is published between the replay and the live
        // receiver, so nothing is lost or doubled.
        let rx = self.tx.subscribe();
        let Some(last_id) = last_id else {
            return (Resume::Whole, Vec::new(), rx);
        };
        let last = last_id
            .split_once('-')
            .filter(|(epoch, _)| epoch.parse() == Ok(self.epoch))
            .and_then(|(_, seq)| seq.parse::<u64>().ok())
            .filter(|&seq| seq < ring.next);
        let Some(last) = last else {
            return (Resume::Restarted, Vec::new(), rx);
        };
        let first_kept = ring.recent.front().map_or(ring.next, |s| s.seq);
        let resume = if last + 1 < first_kept {
            Resume::Missed(first_kept - last - 1)
        } else {
            Resume::Whole
        };
        let replay = ring
            .recent
            .iter()
            .filter(|s| s.seq > last)
            .cloned()
            .collect();
        (resume, replay, rx)
    }

    /// A live receiver for in-process followers (the demo) that need no replay.
    pub(crate) fn follow(&self) -> broadcast::Receiver<Stamped> {
        self.watched.store(true, Ordering::Relaxed);
        self.tx.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding the lock leaves the ring whole (push and pop only).
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(v: &[Stamped]) -> Vec<String> {
        v.iter().map(|s| s.text.to_string()).collect()
    }

    #[test]
    fn a_reconnecting_reader_gets_what_it_missed_once_and_in_order() {
        let feed = Feed::new(7);
        let (_, _, mut rx) = feed.subscribe(None);
        for i in 1..=5 {
            feed.publish(format!("e{i}").into());
        }
        let third = rx.try_recv().and(rx.try_recv()).and(rx.try_recv()).unwrap();
        assert_eq!(feed.id(third.seq), "7-3");
        let (resume, replay, mut rx) = feed.subscribe(Some("7-3"));
        assert_eq!(resume, Resume::Whole);
        assert_eq!(texts(&replay), ["e4", "e5"]);
        feed.publish("e6".into());
        assert_eq!(&*rx.try_recv().unwrap().text, "e6");
    }

    #[test]
    fn ids_older_than_the_ring_or_from_another_run_are_told_so() {
        let feed = Feed::new(7);
        feed.subscribe(None);
        for i in 0..RING_MAX as u64 + 10 {
            feed.publish(format!("e{i}").into());
        }
        let (resume, replay, _) = feed.subscribe(Some("7-5"));
        assert_eq!(resume, Resume::Missed(5));
        assert_eq!(replay.len(), RING_MAX);
        assert_eq!(feed.subscribe(Some("6-5")).0, Resume::Restarted);
        assert_eq!(feed.subscribe(Some("7-99999999")).0, Resume::Restarted);
        assert_eq!(feed.subscribe(Some("garbage")).0, Resume::Restarted);
        let newest = feed.id(RING_MAX as u64 + 10);
        let (resume, replay, _) = feed.subscribe(Some(&newest));
        assert_eq!((resume, replay.len()), (Resume::Whole, 0));
    }
}
