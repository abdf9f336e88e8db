//! How long jobs run against what was expected of them, learned from the jobs that ended, so
//! that a run from a copied state ([`crate::Simulation::from_scheduler`]: the estimated starts
//! and the drain forecast) ends running jobs as such jobs end, not at the scheduler's expected
//! end.
//!
//! A job's expected run time is what its request (or template) says; real jobs run around it,
//! about half of them past it when it is their median. A copy that ended every job at its
//! expected end ended each job already past it (overdue) at once and gave its room to a
//! waiting request straight away, so the estimates came early, by most of a short wait.
//!
//! Here each job's end is one of the past jobs' run times, in proportion to what was expected
//! of each (`r` = actual / expected): a job that has run `age` of an expected `e` ends at
//! `start + e × r` for an `r` picked among the past ones greater than `age / e`, by a key of
//! its own (its VM's number; a request's for VMs not yet placed). A pick, not the median of
//! those: a request that waits for room waits for the first of many jobs to end, and the first
//! of many comes sooner than any one job's median end; picks spread over the past run times
//! as the jobs themselves did. The keys make it deterministic: the same state, the same
//! estimate. A job older than any past one ends now, as before; every job runs as expected
//! while none has ended.

use std::collections::VecDeque;

use berth_sched::{Scheduler, VmId, VmState};

/// Ended jobs whose run times are kept: the most recent ones, enough for the upper tail's
/// median to rest on tens of jobs, and bounded whatever the run's length.
pub const RUN_TIMES_KEPT: usize = 2000;

/// The ratios (actual / expected run time) of the last [`RUN_TIMES_KEPT`] jobs that ended,
/// oldest first.
#[derive(Clone, Debug, Default)]
pub struct RunTimes {
    ratios: VecDeque<f64>,
}

impl RunTimes {
    /// A job expected to run `expected_ms` ended after running `ran_ms`. A job with no
    /// expected run time says nothing and is not kept.
    pub fn ended(&mut self, ran_ms: u64, expected_ms: u64) {
        if expected_ms == 0 {
            return;
        }
        if self.ratios.len() == RUN_TIMES_KEPT {
            self.ratios.pop_front();
        }
        self.ratios.push_back(ran_ms as f64 / expected_ms as f64);
    }

    /// The model the kept jobs give, to answer many questions at once.
    pub fn model(&self) -> RunModel {
        let mut sorted: Vec<f64> = self.ratios.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        RunModel { sorted }
    }
}

/// Sorted ratios of actual to expected run time; empty: every job runs as expected.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunModel {
    sorted: Vec<f64>,
}

impl RunModel {
    /// When a job that started at `start_ms`, expected to run `expected_ms`, and still runs
    /// at `now_ms` ends (never before `now_ms`): one of the past jobs that ran longer, picked
    /// by `key` (the same key, the same pick), so that jobs with different keys spread over
    /// the past jobs' run times as those did.
    pub fn end_ms(&self, start_ms: u64, expected_ms: u64, now_ms: u64, key: u64) -> u64 {
        if self.sorted.is_empty() || expected_ms == 0 {
            return start_ms.saturating_add(expected_ms).max(now_ms);
        }
        let ran = now_ms.saturating_sub(start_ms) as f64 / expected_ms as f64;
        let longer = self.sorted.partition_point(|&r| r <= ran);
        let n = (self.sorted.len() - longer) as u64;
        if n == 0 {
            return now_ms;
        }
        let ratio = self.sorted[longer + (spread(key) % n) as usize];
        let end = start_ms.saturating_add((expected_ms as f64 * ratio).round() as u64);
        end.max(now_ms)
    }

    /// How long a job expected to run `expected_ms` that has not started runs, picked by `key`
    /// as in [`RunModel::end_ms`].
    pub fn run_ms(&self, expected_ms: u64, key: u64) -> u64 {
        self.end_ms(0, expected_ms, 0, key)
    }
}

/// How long VM `vm`'s job has run until `now_ms` and how long it was expected to, from the
/// scheduler's own expected end (when it started running plus its request's expected run
/// time): what to learn if it finishes then. `None` for a VM that is not running.
pub fn job_run(sched: &Scheduler, vm: VmId, now_ms: u64) -> Option<(u64, u64)> {
    let v = sched.vm(vm).filter(|v| v.state == VmState::Running)?;
    let expected_ms = sched.request(v.request)?.expected_run_ms;
    let started_ms = v.expected_end_ms.saturating_sub(expected_ms);
    Some((now_ms.saturating_sub(started_ms), expected_ms))
}

/// A key's pick among past jobs: splitmix64's finaliser, so that neighbouring ids (VMs and
/// requests are numbered in turn) pick far apart.
fn spread(key: u64) -> u64 {
    let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn model(ratios: &[f64]) -> RunModel {
        let mut t = RunTimes::default();
        for &r in ratios {
            t.ended((r * 1000.0) as u64, 1000);
        }
        t.model()
    }

    #[test]
    fn with_no_past_job_a_job_ends_when_expected_or_now_if_overdue() {
        let m = RunModel::default();
        for key in 0..10 {
            assert_eq!(m.end_ms(100, 1000, 500, key), 1100);
            assert_eq!(m.end_ms(100, 1000, 5000, key), 5000);
            assert_eq!(m.run_ms(1000, key), 1000);
        }
    }

    #[test]
    fn a_running_job_ends_as_one_of_the_past_jobs_that_ran_longer() {
        let m = model(&[0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0]);
        let picks = |start, now| -> BTreeSet<u64> {
            (0..200)
                .map(|key| m.end_ms(start, 1000, now, key))
                .collect()
        };
        // Not started: any of the past jobs' run times, each picked by some key.
        let all: BTreeSet<u64> = (0..200).map(|key| m.run_ms(1000, key)).collect();
        assert_eq!(
            all,
            BTreeSet::from([500, 800, 1000, 1200, 1500, 2000, 3000])
        );
        // Running for 1.1 × its expected run time since 100: only the longer ones.
        assert_eq!(picks(100, 1200), BTreeSet::from([1300, 1600, 2100, 3100]));
        // Overdue by more than any past job: it ends now.
        assert_eq!(picks(0, 4000), BTreeSet::from([4000]));
        // The same key, the same pick.
        assert_eq!(m.end_ms(0, 1000, 1100, 7), m.end_ms(0, 1000, 1100, 7));
    }

    #[test]
    fn only_the_most_recent_jobs_are_kept() {
        let mut t = RunTimes::default();
        for _ in 0..RUN_TIMES_KEPT {
            t.ended(5000, 1000);
        }
        for _ in 0..RUN_TIMES_KEPT {
            t.ended(1000, 1000);
        }
        // A job with no expected run time teaches nothing.
        t.ended(1000, 0);
        assert!((0..100).all(|key| t.model().run_ms(1000, key) == 1000));
    }
}
