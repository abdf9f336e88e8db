//! Reading a trace on a thread of its own while the caller consumes it.
//!
//! Parsing a trace (decompressing, splitting lines, reading numbers) costs about as much per
//! record as simulating it on a small fleet. [`read_ahead`] moves the parsing to a second thread
//! that stays at most a few batches ahead, so a replay takes the longer of the two instead of
//! their sum, in bounded memory. The records arrive in the same order, errors included.

use std::sync::mpsc::{Receiver, sync_channel};

/// Records in one hand-over between the threads.
const BATCH: usize = 1024;
/// Batches the reader may hold ready before it waits for the consumer.
const BATCHES_AHEAD: usize = 4;

/// Runs `body` with an iterator that yields what `source` yields, in order, while a scoped
/// thread reads `source` ahead. When `body` returns, the reader stops at its next batch, so
/// `source` is left part-read if `body` stopped early.
pub fn read_ahead<I, R>(
    source: &mut I,
    body: impl FnOnce(&mut dyn Iterator<Item = I::Item>) -> R,
) -> R
where
    I: Iterator + Send,
    I::Item: Send,
{
    std::thread::scope(|scope| {
        let (batches, received) = sync_channel::<Vec<I::Item>>(BATCHES_AHEAD);
        scope.spawn(move || {
            loop {
                let batch: Vec<I::Item> = source.by_ref().take(BATCH).collect();
                // The consumer is gone (it returned early) or the source ended.
                if batch.is_empty() || batches.send(batch).is_err() {
                    break;
                }
            }
        });
        let mut ahead = Ahead {
            received,
            batch: Vec::new().into_iter(),
        };
        // `ahead` drops here, before the scope joins the reader, so a reader blocked on a full
        // channel wakes with an error instead of waiting for ever.
        body(&mut ahead)
    })
}

struct Ahead<T> {
    received: Receiver<Vec<T>>,
    batch: std::vec::IntoIter<T>,
}

impl<T> Iterator for Ahead<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        loop {
            if let Some(item) = self.batch.next() {
                return Some(item);
            }
            // The reader hung up: the source has ended.
            self.batch = self.received.recv().ok()?.into_iter();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_everything_in_order() {
        let mut source = 0..(3 * BATCH as u64 + 17);
        let seen: Vec<u64> = read_ahead(&mut source, |it| it.collect());
        assert_eq!(seen, (0..(3 * BATCH as u64 + 17)).collect::<Vec<_>>());
    }

    #[test]
    fn an_early_stop_does_not_hang_and_reads_boundedly() {
        let mut source = 0..u64::MAX;
        let first = read_ahead(&mut source, |it| it.next());
        assert_eq!(first, Some(0));
        // The reader stopped within the batches it may hold ahead (plus the one it was filling).
        let next = source.next().expect("the source is endless");
        assert!(
            next <= ((BATCHES_AHEAD + 2) * BATCH) as u64,
            "read {next} ahead"
        );
    }

    #[test]
    fn an_empty_source_ends_at_once() {
        let mut source = std::iter::empty::<u8>();
        assert_eq!(read_ahead(&mut source, |it| it.count()), 0);
    }
}
