//! Fair share between accounts: shares follow the weights under constant demand, no account
//! starves behind a heavier one, and the decisions are the same on every run.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;

use berth_sched::{
    Account, Action, Config, FairShare, Input, Policy, RequestSpec, Scheduler, Shape, VmId,
};

use crate::support::{GIB, config, host, probe_ok};

const MINUTE_MS: u64 = 60_000;

/// Accounts that each keep their `backlog` of one-vCPU requests waiting at all times, on `n_hosts`
/// hosts of 4 vCPUs, every job running `job_ms`: what each account ran, and how long each of
/// its requests waited (jobs run `job_ms` to 1.5 × `job_ms`), counted from `warmup_ms` to `horizon_ms`.
struct Run {
    /// Per account, vCPU-milliseconds run within the window.
    ran_ms: Vec<u64>,
    /// Per account, the longest wait of a request submitted after the warm-up.
    longest_wait_ms: Vec<u64>,
    log: String,
}

struct Setup<'a> {
    policy: Policy,
    weights: &'a [u32],
    backlog: &'a [usize],
    n_hosts: u64,
    job_ms: u64,
    half_life_ms: u64,
    /// Fair share's age limit (`FairShare::age_limit_ms`).
    age_limit_ms: Option<u64>,
    warmup_ms: u64,
    horizon_ms: u64,
}

fn run(setup: &Setup) -> Run {
    let &Setup {
        policy,
        weights,
        backlog,
        n_hosts,
        job_ms,
        half_life_ms,
        age_limit_ms,
        warmup_ms,
        horizon_ms,
    } = setup;
    let names: Vec<String> = (0..weights.len()).map(|i| format!("team-{i}")).collect();
    let config = Config {
        policy,
        fair_share: Some(FairShare {
            half_life_ms,
            age_limit_ms,
            default_weight: 1,
            accounts: names
                .iter()
                .zip(weights)
                .map(|(name, &weight)| Account {
                    name: name.clone(),
                    weight,
                })
                .collect(),
        }),
        ..config()
    };
    let mut s = Scheduler::new(config);
    let mut log = String::new();
    for id in 1..=n_hosts {
        let h = host(id, 4, 64);
        s.handle(0, Input::AddHost(h.clone())).ok();
        s.handle(0, probe_ok(&h)).ok();
    }
    let mut next_id = 1u64;
    // Request id -> (account, submitted at).
    let mut waiting: BTreeMap<u64, (usize, u64)> = BTreeMap::new();
    let submit = |s: &mut Scheduler, account: usize, now: u64, next_id: &mut u64| {
        let mut spec = RequestSpec::new(*next_id, "linux", 1);
        spec.shape = Some(Shape {
            vcpus: 1,
            memory_mib: GIB,
        });
        spec.expected_run_ms = Some(job_ms);
        spec.account = Some(names[account].clone());
        s.handle(now, Input::Submit(spec)).ok();
        *next_id += 1;
    };
    for (account, &n) in backlog.iter().enumerate() {
        for _ in 0..n {
            waiting.insert(next_id, (account, 0));
            submit(&mut s, account, 0, &mut next_id);
        }
    }
    let mut ran_ms = vec![0u64; weights.len()];
    let mut longest_wait_ms = vec![0u64; weights.len()];
    // Jobs running: (end, vm, account, start).
    let mut ends: BinaryHeap<Reverse<(u64, VmId, usize, u64)>> = BinaryHeap::new();
    let mut now = 0u64;
    loop {
        while let Some(action) = s.poll_action() {
            let _ = writeln!(log, "{now} {action:?}");
            if let Action::Destroy { vm, .. } = action {
                s.handle(now, Input::DestroyDone { vm, result: Ok(()) })
                    .ok();
            }
            if let Action::Provision { vm, request, .. } = action {
                let Some((account, submitted)) = waiting.remove(&request.0) else {
                    continue;
                };
                if submitted >= warmup_ms {
                    let w = &mut longest_wait_ms[account];
                    *w = (*w).max(now - submitted);
                }
                for input in [
                    Input::ProvisionStarted(vm),
                    Input::ProvisionDone { vm, result: Ok(()) },
                    Input::BootDone { vm, result: Ok(()) },
                ] {
                    s.handle(now, input).ok();
                }
                // Jobs run from one to one and a half times `job_ms`, so that they end one at a
                // time (the order is fixed per pass: a pass that frees the whole fleet at once
                // gives it to the accounts in that order).
                let run_ms = job_ms + vm.0.wrapping_mul(7_919) % (job_ms / 2);
                ends.push(Reverse((now + run_ms, vm, account, now)));
                // Constant demand: one more request for each one that started.
                waiting.insert(next_id, (account, now));
                submit(&mut s, account, now, &mut next_id);
            }
        }
        while s.poll_event().is_some() {}
        let Some(Reverse((end, vm, account, start))) = ends.pop() else {
            break;
        };
        if end > horizon_ms {
            break;
        }
        now = end;
        let (from, to) = (start.max(warmup_ms), end);
        if to > from {
            ran_ms[account] += to - from;
        }
        s.handle(now, Input::JobFinished { vm, passed: true }).ok();
    }
    Run {
        ran_ms,
        longest_wait_ms,
        log,
    }
}

#[test]
fn shares_converge_to_the_weights_under_constant_demand() {
    let weights = [1, 2, 3];
    for policy in [Policy::Easy, Policy::Greedy, Policy::Fcfs] {
        let r = run(&Setup {
            policy,
            weights: &weights,
            backlog: &[20, 20, 20],
            n_hosts: 6,
            job_ms: 10 * MINUTE_MS + 7,
            half_life_ms: 30 * MINUTE_MS,
            age_limit_ms: None,
            warmup_ms: 4 * 60 * MINUTE_MS,
            horizon_ms: 48 * 60 * MINUTE_MS,
        });
        let total: u64 = r.ran_ms.iter().sum();
        let weight_total: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let share = r.ran_ms[i] as f64 / total as f64;
            let expected = f64::from(w) / f64::from(weight_total);
            assert!(
                (share - expected).abs() <= 0.05 * expected,
                "{}: account {i} (weight {w}) ran {share:.4} of the fleet, expected {expected:.4}",
                policy.name()
            );
        }
    }
}

/// An account of weight 1 beside one of weight 100 that always wants the whole fleet: each of
/// the light account's requests starts within the time its usage takes to decay below the
/// heavy one's per unit of weight, after the job it still runs, plus the longest job for a VM
/// to end.
#[test]
fn no_account_starves_behind_a_heavier_one() {
    let (light, heavy) = (1u32, 100u32);
    let (n_hosts, job_ms, half_life_ms) = (6u64, 10 * MINUTE_MS, 10 * MINUTE_MS);
    let warmup_ms = 20 * half_life_ms;
    let r = run(&Setup {
        policy: Policy::Easy,
        weights: &[light, heavy],
        // The light account has one request waiting at a time; the heavy one more than the
        // fleet holds.
        backlog: &[1, 40],
        n_hosts,
        job_ms,
        half_life_ms,
        age_limit_ms: None,
        warmup_ms,
        horizon_ms: warmup_ms + 24 * 60 * MINUTE_MS,
    });
    // Usage of a steady holding of c vCPUs tends to c·h/ln 2. The light account holds at most
    // one vCPU; after the warm-up the heavy one holds at least the rest of the fleet, to within
    // 2^-20 of its limit. The light account comes first once its usage per unit of weight has
    // decayed below the heavy one's: at most log2 of the ratio of those bounds, in half-lives.
    let capacity = (n_hosts * 4) as f64;
    let light_max = 1.0 / f64::from(light);
    let heavy_min = (capacity - 1.0) * (1.0 - 2f64.powi(-20)) / f64::from(heavy);
    let half_lives = (light_max / heavy_min).log2().max(0.0);
    // A light request is submitted when the one before it starts, so it waits out that job
    // (the account's usage still grows), then the decay, then for a VM to end.
    let job_max_ms = job_ms * 3 / 2;
    let bound_ms = 2 * job_max_ms + (half_lives * half_life_ms as f64).ceil() as u64 + 1;
    assert!(r.ran_ms[0] > 0 && r.ran_ms[1] > 0, "{:?}", r.ran_ms);
    // The light account did wait: the test measures something.
    assert!(r.longest_wait_ms[0] > 0, "{:?}", r.longest_wait_ms);
    assert!(
        r.longest_wait_ms[0] <= bound_ms,
        "the light account waited {} ms, past the bound of {bound_ms} ms",
        r.longest_wait_ms[0]
    );
}

/// Fair share's age limit bounds how long the fair order may pass a request over: an account
/// of weight 1 beside one of weight 100 that always wants the whole fleet waits, without the
/// limit, until its usage has decayed (many half-lives here); with it, a request that has waited
/// the limit goes first once a VM ends, so within the limit plus the longest job. The heavy
/// account's own requests wait far less than the limit (its backlog is a quarter of the fleet
/// past what runs), so no older request passed the limit before the light one's.
#[test]
fn an_age_limit_bounds_the_wait_the_fair_order_imposes() {
    let (n_hosts, job_ms) = (6u64, 10 * MINUTE_MS);
    let age_limit_ms = 20 * MINUTE_MS;
    let setup = |age_limit_ms| Setup {
        policy: Policy::Easy,
        weights: &[1, 100],
        backlog: &[1, 30],
        n_hosts,
        job_ms,
        half_life_ms: 4 * 60 * MINUTE_MS,
        age_limit_ms,
        warmup_ms: 24 * 60 * MINUTE_MS,
        horizon_ms: 48 * 60 * MINUTE_MS,
    };
    let job_max_ms = job_ms * 3 / 2;
    let bound_ms = age_limit_ms + job_max_ms;
    let without = run(&setup(None));
    assert!(
        without.longest_wait_ms[0] > bound_ms,
        "without the limit the light account should wait past {bound_ms} ms: {:?}",
        without.longest_wait_ms
    );
    let with = run(&setup(Some(age_limit_ms)));
    assert!(
        with.ran_ms[0] > 0 && with.ran_ms[1] > 0,
        "{:?}",
        with.ran_ms
    );
    assert!(
        with.longest_wait_ms[1] < age_limit_ms,
        "the heavy account's requests should not reach the limit: {:?}",
        with.longest_wait_ms
    );
    assert!(
        with.longest_wait_ms[0] <= bound_ms,
        "the light account waited {} ms, past the bound of {bound_ms} ms",
        with.longest_wait_ms[0]
    );
}

#[test]
fn fair_share_decides_the_same_on_every_run() {
    let once = || {
        run(&Setup {
            policy: Policy::Easy,
            weights: &[1, 3],
            backlog: &[8, 8],
            n_hosts: 3,
            job_ms: 7 * MINUTE_MS,
            half_life_ms: 15 * MINUTE_MS,
            age_limit_ms: None,
            warmup_ms: 0,
            horizon_ms: 12 * 60 * MINUTE_MS,
        })
        .log
    };
    let (a, b) = (once(), once());
    assert!(!a.is_empty());
    assert!(a == b, "two runs of the same inputs decided otherwise");
}
