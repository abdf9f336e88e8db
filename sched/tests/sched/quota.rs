//! Quotas that borrow: an account runs past its guarantee up to its borrowing limit while the
//! class is idle, borrows nothing more while another account waits under its guarantee there,
//! says so in why-waiting, and an account under its guarantee starts within a bound the test
//! computes from the borrowers' job lengths.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;

use berth_sched::{
    Action, Blocker, Config, DriverKind, HostSpec, Input, Policy, Quota, QuotaAmounts, RequestId,
    RequestSpec, Scheduler, Shape, VmId,
};
use proptest::prelude::*;

use crate::support::{GIB, config, probe_ok};

fn quota(account: &str, guarantee: u64, borrowing_limit: Option<u64>) -> Quota {
    Quota {
        account: account.into(),
        class: "kvm".into(),
        guarantee: QuotaAmounts {
            vcpus: Some(guarantee),
            ..QuotaAmounts::default()
        },
        borrowing_limit: QuotaAmounts {
            vcpus: borrowing_limit,
            ..QuotaAmounts::default()
        },
    }
}

/// A fleet of `n_hosts` hosts of class `kvm` with 8 vCPUs each, where VMs provision and boot at
/// once and each job runs for the time its request gives; time moves to the next job end.
struct Fleet {
    s: Scheduler,
    now: u64,
    next_id: u64,
    /// Per request: its account and job length.
    jobs: BTreeMap<RequestId, (String, u64)>,
    /// Running jobs: (end, vm).
    ends: BinaryHeap<Reverse<(u64, VmId)>>,
    /// When each request's first VM started.
    started: BTreeMap<RequestId, u64>,
    log: String,
}

impl Fleet {
    fn new(policy: Policy, quotas: Vec<Quota>, n_hosts: u64) -> Fleet {
        let mut s = Scheduler::new(Config {
            policy,
            quotas,
            ..config()
        });
        for id in 1..=n_hosts {
            let h = HostSpec::new(id, &format!("kvm-{id}"), DriverKind::Sim, 8, 64 * GIB);
            s.handle(0, Input::AddHost(h.clone())).unwrap();
            s.handle(0, probe_ok(&h)).unwrap();
        }
        let mut f = Fleet {
            s,
            now: 0,
            next_id: 1,
            jobs: BTreeMap::new(),
            ends: BinaryHeap::new(),
            started: BTreeMap::new(),
            log: String::new(),
        };
        f.poll();
        f
    }

    /// Submits one request of one 1-vCPU VM for `account`, its job running `run_ms`.
    fn submit(&mut self, account: &str, run_ms: u64) -> RequestId {
        let mut spec = RequestSpec::new(self.next_id, "linux", 1);
        self.next_id += 1;
        spec.shape = Some(Shape {
            vcpus: 1,
            memory_mib: GIB,
        });
        spec.expected_run_ms = Some(run_ms);
        spec.account = Some(account.into());
        let id = spec.id;
        self.jobs.insert(id, (account.to_owned(), run_ms));
        self.s.handle(self.now, Input::Submit(spec)).unwrap();
        id
    }

    fn poll(&mut self) {
        loop {
            let mut any = false;
            while let Some(action) = self.s.poll_action() {
                any = true;
                let _ = writeln!(self.log, "{} {action:?}", self.now);
                match action {
                    Action::Provision { vm, request, .. } => {
                        for input in [
                            Input::ProvisionStarted(vm),
                            Input::ProvisionDone { vm, result: Ok(()) },
                            Input::BootDone { vm, result: Ok(()) },
                        ] {
                            self.s.handle(self.now, input).unwrap();
                        }
                        let run_ms = self.jobs[&request].1;
                        self.ends.push(Reverse((self.now + run_ms, vm)));
                        self.started.entry(request).or_insert(self.now);
                    }
                    Action::Destroy { vm, .. } => {
                        self.s
                            .handle(self.now, Input::DestroyDone { vm, result: Ok(()) })
                            .unwrap();
                    }
                    Action::PullImage { .. }
                    | Action::EvictImage { .. }
                    | Action::Handover { .. } => {}
                }
            }
            while self.s.poll_event().is_some() {
                any = true;
            }
            if !any {
                return;
            }
        }
    }

    /// Ends the next job; false when none runs.
    fn end_next(&mut self) -> bool {
        let Some(Reverse((end, vm))) = self.ends.pop() else {
            return false;
        };
        self.now = end;
        self.s
            .handle(end, Input::JobFinished { vm, passed: true })
            .unwrap();
        self.poll();
        true
    }

    /// vCPUs `account` holds on class `kvm`.
    fn holds(&self, account: &str) -> f64 {
        self.s
            .quotas()
            .iter()
            .find(|q| q.account == account && q.class == "kvm")
            .map_or(0.0, |q| q.resources[0].used)
    }
}

#[test]
fn an_idle_class_is_borrowed_up_to_the_limit_and_why_waiting_names_the_quota() {
    let mut f = Fleet::new(
        Policy::Easy,
        vec![quota("qt-base", 4, Some(8)), quota("qt-dev", 8, Some(0))],
        2,
    );
    let ids: Vec<RequestId> = (0..14).map(|_| f.submit("qt-base", 600_000)).collect();
    f.poll();
    assert_eq!(f.holds("qt-base"), 12.0, "guarantee 4 plus borrowing 8");
    let why = f.s.why(ids[13]).expect("it waits");
    assert_eq!(why.blocker, Blocker::Quota, "{why}");
    assert_eq!(why.quota.len(), 1);
    assert_eq!(
        why.quota[0].text,
        "account qt-base at its kvm quota 12/4 vCPUs, borrowing 8 of 8 allowed"
    );
    // kvm-1 is full; kvm-2 has room the quota keeps qt-base from.
    assert_eq!(why.quota[0].hosts, 1);
    assert_eq!(why.quota[0].named, vec!["kvm-2"]);
    assert_eq!(why.hosts_fit, 0);
    assert_eq!(
        why.to_string(),
        "quota: account qt-base at its kvm quota 12/4 vCPUs, borrowing 8 of 8 allowed · 0/2 hosts fit: 1 lack vcpus, 1 over qt-base's kvm quota · 1 of 1 × 1 vcpus, 1024 MiB of `linux` wait"
    );
    assert!(
        why.to_string()
            .starts_with("quota: account qt-base at its kvm quota 12/4 vCPUs"),
        "{why}"
    );
    // Another account may still use the rest of its guarantee.
    let dev = f.submit("qt-dev", 600_000);
    f.poll();
    assert!(
        f.s.why(dev).is_none(),
        "qt-dev started within its guarantee"
    );
}

#[test]
fn borrowing_stops_while_another_account_waits_under_its_guarantee_and_resumes_after() {
    let mut f = Fleet::new(
        Policy::Greedy,
        vec![quota("a", 8, None), quota("b", 8, Some(0))],
        2,
    );
    let a: Vec<RequestId> = (0..20)
        .map(|i| f.submit("a", 600_000 + i * 1_000))
        .collect();
    f.poll();
    assert_eq!(f.holds("a"), 16.0, "a borrows the idle half");
    f.now += 1;
    let b: Vec<RequestId> = (0..4).map(|_| f.submit("b", 600_000)).collect();
    f.poll();
    assert_eq!(
        f.s.why(b[0]).map(|w| w.blocker),
        Some(Blocker::NoFit),
        "no room yet"
    );
    // a's waiting work comes first in the queue, but what frees goes to b, not to a's borrowing.
    for n in 1..=4 {
        assert!(f.end_next());
        assert_eq!(f.holds("a"), 16.0 - f64::from(n));
        assert_eq!(f.holds("b"), f64::from(n));
        let why = f.s.why(a[16]).expect("a's queued work still waits");
        // Once b waits no more, only the lack of room holds a back.
        let blocker = if n < 4 {
            Blocker::Quota
        } else {
            Blocker::NoFit
        };
        assert_eq!(why.blocker, blocker, "{why}");
        if n < 4 {
            // b took the room the quota kept from a: no host has room to name now.
            assert!(
                why.to_string()
                    .starts_with("no room (refused by its account's quota when there was)"),
                "{why}"
            );
        }
    }
    assert!(b.iter().all(|id| f.started.contains_key(id)), "b got all 4");
    // Nobody waits under a guarantee any more: the next free vCPU may be borrowed again.
    assert!(f.end_next());
    assert_eq!(f.holds("a"), 12.0, "a took back the vCPU that freed");
    assert!(f.started.contains_key(&a[16]));
}

#[test]
fn a_borrowing_limit_of_zero_caps_an_account_at_its_guarantee_on_an_idle_fleet() {
    let mut f = Fleet::new(Policy::Easy, vec![quota("qt-base", 8, Some(0))], 2);
    let ids: Vec<RequestId> = (0..10).map(|_| f.submit("qt-base", 600_000)).collect();
    f.poll();
    assert_eq!(f.holds("qt-base"), 8.0);
    let why = f.s.why(ids[9]).expect("it waits");
    assert_eq!(
        why.quota[0].text,
        "account qt-base at its kvm quota 8/8 vCPUs, borrowing 0 of 0 allowed"
    );
    // An account without a quota is not bounded.
    let other: Vec<RequestId> = (0..8).map(|_| f.submit("free", 600_000)).collect();
    f.poll();
    assert!(other.iter().all(|id| f.started.contains_key(id)));
}

/// Runs `a_jobs` (ms) for account `a` on 2 × 8 vCPUs (guarantees 8 and 8, `a` borrowing
/// without bound), then at `b_at_ms` `b_count` ≤ 8 one-vCPU requests of `b` with long jobs;
/// returns when each of b's requests started, the latest end of a job of `a` that ran or was
/// placed by then, and the decision log.
fn starve_case(
    policy: Policy,
    a_jobs: &[u64],
    b_at_ms: u64,
    b_count: u64,
) -> (Vec<Option<u64>>, u64, String) {
    let mut f = Fleet::new(policy, vec![quota("a", 8, None), quota("b", 8, Some(0))], 2);
    for &ms in a_jobs {
        f.submit("a", ms);
    }
    f.poll();
    while f
        .ends
        .peek()
        .is_some_and(|Reverse((end, _))| *end <= b_at_ms)
    {
        f.end_next();
    }
    f.now = f.now.max(b_at_ms);
    let b: Vec<RequestId> = (0..b_count).map(|_| f.submit("b", 3_600_000)).collect();
    f.poll();
    // Every job of a that holds capacity now ends by this time; a's jobs are no longer.
    let longest = a_jobs.iter().copied().max().unwrap_or(0);
    let bound = f.now + longest;
    while f.end_next() {}
    let started = b.iter().map(|id| f.started.get(id).copied()).collect();
    (started, bound, f.log)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// No starvation under a guarantee: with the guarantees within the class's capacity and
    /// one-vCPU VMs, a request of `b` that keeps `b` within its guarantee starts at the latest
    /// when every job of the borrowing account `a` that ran when it arrived has ended (no new
    /// borrowing is allowed meanwhile), however long `a`'s queue. The same inputs give the
    /// same decisions.
    #[test]
    fn an_account_under_its_guarantee_starts_once_the_borrowers_jobs_end(
        greedy in any::<bool>(),
        a_jobs in prop::collection::vec(60_000u64..3_600_000, 1..60),
        b_at_ms in 0u64..3_600_000,
        b_count in 1u64..=8,
    ) {
        let policy = if greedy { Policy::Greedy } else { Policy::Easy };
        let (started, bound, log) = starve_case(policy, &a_jobs, b_at_ms, b_count);
        for (i, s) in started.iter().enumerate() {
            let s = s.unwrap_or(u64::MAX);
            prop_assert!(s <= bound, "b's request {i} started at {s}, past {bound}");
        }
        let (again, _, log_again) = starve_case(policy, &a_jobs, b_at_ms, b_count);
        prop_assert_eq!(started, again);
        prop_assert!(log == log_again, "decisions differ between two runs");
    }
}
