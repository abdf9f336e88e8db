//! Base images as numbers: how long a pull takes, when an image store can start one, and which
//! unused images to evict so that a pull fits a host's disk budget. Pure functions the
//! scheduler's image book (`scheduler/images.rs`) builds on, kept apart to be tested alone.

/// How long a pull of `size_mib` MiB takes over a link of `mbit_s` Mbit/s (10^6 bits per
/// second), in milliseconds rounded up. An image of unknown size (0) or a link of unknown
/// bandwidth (0) takes no time: the scheduler then has nothing to price.
pub fn pull_ms(size_mib: u64, mbit_s: u64) -> u64 {
    if size_mib == 0 || mbit_s == 0 {
        return 0;
    }
    // bits × 1000 / (bits per ms × 1000): size_mib × 2^20 × 8 bits, mbit_s × 10^3 bits per ms.
    let bits = u128::from(size_mib) * 8 * 1_048_576;
    let per_ms = u128::from(mbit_s) * 1000;
    bits.div_ceil(per_ms).min(u128::from(u64::MAX)) as u64
}

/// An image store's turns: when each of its at most `pulls_max` concurrent pulls is next free.
/// A pull booked on a turn runs from the turn's free time (or now, if later) for its duration,
/// so pulls on one turn never overlap and the store never serves more than `pulls_max` at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreTurns {
    /// Per turn, when it is next free; empty: the store has no limit.
    pub(crate) free_at_ms: Vec<u64>,
}

impl StoreTurns {
    /// A store serving `pulls_max` pulls at once (0: no limit).
    pub fn new(pulls_max: u32) -> StoreTurns {
        StoreTurns {
            free_at_ms: vec![0; pulls_max as usize],
        }
    }

    /// Whether the store has a limit at all.
    pub fn limited(&self) -> bool {
        !self.free_at_ms.is_empty()
    }

    /// How many turns are free at `now_ms` (`usize::MAX` for a store without a limit).
    pub fn free_now(&self, now_ms: u64) -> usize {
        if !self.limited() {
            return usize::MAX;
        }
        self.free_at_ms.iter().filter(|&&t| t <= now_ms).count()
    }

    /// When a pull asked for at `now_ms` could start: now, or when the earliest turn frees.
    pub fn next_start(&self, now_ms: u64) -> u64 {
        self.free_at_ms
            .iter()
            .min()
            .map_or(now_ms, |&t| t.max(now_ms))
    }

    /// Books a pull of `duration_ms` asked for at `now_ms` on the turn that frees first (the
    /// lowest turn on a tie) and returns its start.
    pub fn book(&mut self, now_ms: u64, duration_ms: u64) -> u64 {
        let Some((turn, &free_at)) = self
            .free_at_ms
            .iter()
            .enumerate()
            .min_by_key(|&(i, &t)| (t, i))
        else {
            return now_ms;
        };
        let start = free_at.max(now_ms);
        self.free_at_ms[turn] = start.saturating_add(duration_ms);
        start
    }
}

/// One base image on a host, as eviction sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub image: u32,
    pub size_mib: u64,
    pub last_use_ms: u64,
    /// It backs a VM on the host, or is being pulled there: never evicted.
    pub in_use: bool,
}

/// The images to evict, least recently used first (ties: the lower image id first), so that
/// `incoming_mib` more fits within `budget_mib` on a host whose images (held and being pulled)
/// take `used_mib`. Images in use are never chosen. `None` when even evicting every unused
/// image would leave too little room: then nothing should be evicted.
pub fn evictions(
    held: &[Held],
    used_mib: u64,
    incoming_mib: u64,
    budget_mib: u64,
) -> Option<Vec<u32>> {
    let mut used = used_mib;
    let fits = |used: u64| used.saturating_add(incoming_mib) <= budget_mib;
    if fits(used) {
        return Some(Vec::new());
    }
    let mut unused: Vec<&Held> = held.iter().filter(|h| !h.in_use).collect();
    unused.sort_by_key(|h| (h.last_use_ms, h.image));
    let mut out = Vec::new();
    for h in unused {
        out.push(h.image);
        used = used.saturating_sub(h.size_mib);
        if fits(used) {
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_takes_size_over_bandwidth_rounded_up() {
        // 1 GiB over 1 Gbit/s: 8,589,934,592 bits / 10^6 bits per ms.
        assert_eq!(pull_ms(1024, 1000), 8_590);
        // 10 Gbit/s is ten times faster (rounded up).
        assert_eq!(pull_ms(1024, 10_000), 859);
        assert_eq!(pull_ms(1, 1_000_000), 1);
        assert_eq!(pull_ms(0, 1000), 0);
        assert_eq!(pull_ms(1024, 0), 0);
        assert!(pull_ms(u64::MAX, 1) > 0);
    }

    #[test]
    fn a_store_serves_at_most_its_limit_at_once() {
        let mut s = StoreTurns::new(2);
        assert_eq!(s.free_now(0), 2);
        assert_eq!(s.book(0, 100), 0);
        assert_eq!(s.book(10, 100), 10);
        assert_eq!(s.free_now(50), 0);
        // The third waits for the first turn to free.
        assert_eq!(s.next_start(50), 100);
        assert_eq!(s.book(50, 100), 100);
        assert_eq!(s.free_now(110), 1);
        assert_eq!(s.book(500, 1), 500);
    }

    #[test]
    fn a_store_without_a_limit_starts_every_pull_now() {
        let mut s = StoreTurns::new(0);
        assert!(!s.limited());
        assert_eq!(s.free_now(7), usize::MAX);
        for _ in 0..100 {
            assert_eq!(s.book(7, 1000), 7);
        }
    }

    fn held(image: u32, size_mib: u64, last_use_ms: u64, in_use: bool) -> Held {
        Held {
            image,
            size_mib,
            last_use_ms,
            in_use,
        }
    }

    #[test]
    fn eviction_takes_least_recently_used_first_and_only_what_it_must() {
        let h = [
            held(0, 10, 300, false),
            held(1, 10, 100, false),
            held(2, 10, 200, false),
        ];
        assert_eq!(evictions(&h, 30, 10, 40), Some(vec![]));
        assert_eq!(evictions(&h, 30, 10, 30), Some(vec![1]));
        assert_eq!(evictions(&h, 30, 20, 30), Some(vec![1, 2]));
        assert_eq!(evictions(&h, 30, 30, 30), Some(vec![1, 2, 0]));
    }

    #[test]
    fn eviction_never_takes_an_image_in_use_and_refuses_rather_than_half_evict() {
        let h = [held(0, 10, 0, true), held(1, 10, 100, false)];
        assert_eq!(evictions(&h, 20, 10, 20), Some(vec![1]));
        // Room for 20 more would need the image in use too: nothing is evicted.
        assert_eq!(evictions(&h, 20, 20, 20), None);
    }

    #[test]
    fn eviction_ties_go_to_the_lower_image_id() {
        let h = [held(5, 10, 100, false), held(3, 10, 100, false)];
        assert_eq!(evictions(&h, 20, 10, 20), Some(vec![3]));
    }
}
