//! Property tests over random input sequences: hosts of random sizes come and go, requests
//! arrive, VMs progress, fail and are lost, operators drain and cancel, time passes. After every
//! poll no host is over capacity, every request is waiting with a reason, active, or ended with
//! one terminal event; once everything ended no host holds anything; and the same inputs give
//! the same decisions, byte for byte, from scratch or from a clone taken halfway.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use berth_sched::{
    Account, Action, Blocker, Cause, Config, DriverKind, Event, Failure, FailureKind, FairShare,
    Hold, HostId, HostSpec, Input, Label, Policy, ProbeReport, QUOTA_EVERY_ACCOUNT, Quota,
    QuotaAmounts, RequestId, RequestSpec, RequestState, ScanOrder, Scheduler, Shape, SnapshotError,
    Template, VmState, VmView, Weights,
};
use proptest::prelude::*;

use crate::support::{GIB, linux, macos};

/// The configuration knobs a case varies.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// fcfs, easy, greedy, accasim-easy (`knobs()` draws the first three).
    pub(crate) policy: u8,
    pub(crate) rotate: bool,
    pub(crate) weights: (u32, u32, u32),
    pub(crate) provisioning_per_host_max: u32,
    pub(crate) vm_retries_max: u32,
    pub(crate) probe_failures_max: u32,
    pub(crate) provision_failures_max: u32,
    pub(crate) candidates_max: u32,
    pub(crate) aging_step_ms: u64,
    /// Fair share between three accounts (weights 1, 2, 3) with this half-life and age limit;
    /// `None`: off.
    pub(crate) fair_half_life_ms: Option<(u64, Option<u64>)>,
    /// Quotas on the classes of hosts h1 to h12 (one class each): every account is guaranteed
    /// this many vCPUs and may borrow this many more, `team-1` twice the guarantee with no
    /// bound on borrowing; `None`: off.
    pub(crate) quota_vcpus: Option<(u64, u64)>,
}

#[derive(Clone, Debug)]
pub enum Op {
    AddHost {
        driver: u8,
        vcpus: u32,
        memory_gib: u64,
        cpu_overcommit_milli: u32,
        memory_overcommit_milli: u32,
        macos_slots: u32,
        arm: bool,
        images: u8,
    },
    Submit(Sub),
    /// Moves the `pick`-th VM that is on a host one step on; `outcome` picks success or which failure.
    Step {
        pick: usize,
        outcome: u8,
    },
    /// The `pick`-th VM that is on a host vanishes from it (refused unless it has booted).
    Vanish {
        pick: usize,
    },
    ProbeFail {
        host: usize,
    },
    ProbeOk {
        host: usize,
        images: u8,
    },
    Drain {
        host: usize,
    },
    Resume {
        host: usize,
    },
    Offline {
        host: usize,
    },
    Remove {
        host: usize,
    },
    Cancel {
        request: usize,
    },
    Advance {
        ms: u64,
    },
}

/// A request as an op makes it.
#[derive(Clone, Copy, Debug)]
pub struct Sub {
    pub(crate) template: u8,
    pub(crate) count: u32,
    pub(crate) gang: bool,
    pub(crate) priority: i32,
    pub(crate) vcpus: Option<u32>,
    pub(crate) memory_gib: Option<u64>,
    pub(crate) arm: bool,
    pub(crate) hold: bool,
    pub(crate) deadline_s: Option<u64>,
    pub(crate) run_s: Option<u64>,
}

impl Sub {
    /// `count` default Linux VMs, nothing else asked for.
    fn plain(count: u32) -> Sub {
        Sub {
            template: 0,
            count,
            gang: false,
            priority: 0,
            vcpus: None,
            memory_gib: None,
            arm: false,
            hold: false,
            deadline_s: None,
            run_s: None,
        }
    }
}

pub(crate) fn knobs() -> impl Strategy<Value = Knobs> {
    (
        0u8..3,
        any::<bool>(),
        (0u32..3, 0u32..3, 0u32..3),
        1u32..=4,
        0u32..=3,
        1u32..=3,
        1u32..=4,
        1u32..=8,
        prop_oneof![Just(0u64), Just(60_000), Just(600_000)],
        prop::option::of((
            prop_oneof![Just(1u64), Just(60_000), Just(3_600_000)],
            prop::option::of(prop_oneof![Just(1u64), Just(30_000), Just(600_000)]),
        )),
        prop::option::of((0u64..=8, 0u64..=8)),
    )
        .prop_map(
            |(
                policy,
                rotate,
                weights,
                prov,
                retries,
                probes,
                breaker,
                candidates,
                aging,
                fair,
                quota_vcpus,
            )| {
                Knobs {
                    policy,
                    rotate,
                    weights,
                    provisioning_per_host_max: prov,
                    vm_retries_max: retries,
                    probe_failures_max: probes,
                    provision_failures_max: breaker,
                    candidates_max: candidates,
                    aging_step_ms: aging,
                    fair_half_life_ms: fair,
                    quota_vcpus,
                }
            },
        )
}

pub(crate) fn add_host() -> impl Strategy<Value = Op> {
    (
        0u8..3,
        1u32..=16,
        1u64..=64,
        prop_oneof![Just(1000u32), Just(1500), Just(2000), Just(4000)],
        prop_oneof![Just(1000u32), Just(1250), Just(1500)],
        0u32..=2,
        prop::bool::weighted(0.3),
        0u8..8,
    )
        .prop_map(
            |(driver, vcpus, memory_gib, cpu_oc, mem_oc, macos_slots, arm, images)| Op::AddHost {
                driver,
                vcpus,
                memory_gib,
                cpu_overcommit_milli: cpu_oc,
                memory_overcommit_milli: mem_oc,
                macos_slots,
                arm,
                images,
            },
        )
}

pub(crate) fn op() -> impl Strategy<Value = Op> {
    let submit = (
        0u8..3,
        1u32..=6,
        prop::bool::weighted(0.25),
        -1i32..=2,
        prop::option::weighted(0.4, 1u32..=16),
        prop::option::weighted(0.4, 1u64..=48),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.3),
        prop::option::weighted(0.25, 1u64..=600),
        prop::option::weighted(0.5, 10u64..=3_600),
    )
        .prop_map(
            |(template, count, gang, priority, vcpus, memory_gib, arm, hold, deadline_s, run_s)| {
                Op::Submit(Sub {
                    template,
                    count,
                    gang,
                    priority,
                    vcpus,
                    memory_gib,
                    arm,
                    hold,
                    deadline_s,
                    run_s,
                })
            },
        );
    prop_oneof![
        3 => add_host(),
        6 => submit,
        14 => (any::<usize>(), any::<u8>()).prop_map(|(pick, outcome)| Op::Step { pick, outcome }),
        1 => any::<usize>().prop_map(|pick| Op::Vanish { pick }),
        1 => any::<usize>().prop_map(|host| Op::ProbeFail { host }),
        1 => (any::<usize>(), 0u8..8).prop_map(|(host, images)| Op::ProbeOk { host, images }),
        1 => any::<usize>().prop_map(|host| Op::Drain { host }),
        1 => any::<usize>().prop_map(|host| Op::Resume { host }),
        1 => any::<usize>().prop_map(|host| Op::Offline { host }),
        1 => any::<usize>().prop_map(|host| Op::Remove { host }),
        1 => any::<usize>().prop_map(|request| Op::Cancel { request }),
        3 => (0u64..=900_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

fn windows() -> Template {
    let mut t = Template::new(
        "windows",
        Shape {
            vcpus: 4,
            memory_mib: 8 * GIB,
        },
    );
    t.drivers = vec![DriverKind::Libvirt];
    t.base_image = "windows-base".into();
    t.expected_provision_ms = 30_000;
    t.expected_boot_ms = 60_000;
    t
}

const TEMPLATES: [&str; 3] = ["linux", "macos", "windows"];
const IMAGES: [&str; 3] = ["linux-base", "macos-base", "windows-base"];

pub(crate) fn config_of(k: &Knobs) -> Config {
    Config {
        policy: [
            Policy::Fcfs,
            Policy::Easy,
            Policy::Greedy,
            Policy::AccasimEasy,
        ][usize::from(k.policy % 4)],
        weights: Weights {
            pack: k.weights.0,
            spread: k.weights.1,
            locality: k.weights.2,
        },
        scan: if k.rotate {
            ScanOrder::Rotate
        } else {
            ScanOrder::Lowest
        },
        candidates_max: k.candidates_max,
        provisioning_per_host_max: k.provisioning_per_host_max,
        probe_failures_max: k.probe_failures_max,
        provision_failures_max: k.provision_failures_max,
        vm_retries_max: k.vm_retries_max,
        aging_step_ms: k.aging_step_ms,
        fair_share: k
            .fair_half_life_ms
            .map(|(half_life_ms, age_limit_ms)| FairShare {
                half_life_ms,
                age_limit_ms,
                default_weight: 1,
                accounts: (1..=3)
                    .map(|w| Account {
                        name: format!("team-{w}"),
                        weight: w,
                    })
                    .collect(),
            }),
        quotas: k
            .quota_vcpus
            .map(|(guarantee, borrow)| {
                (1..=12)
                    .flat_map(|h| {
                        let class = format!("h{h}");
                        let every = Quota {
                            account: QUOTA_EVERY_ACCOUNT.into(),
                            class: class.clone(),
                            guarantee: QuotaAmounts {
                                vcpus: Some(guarantee),
                                ..QuotaAmounts::default()
                            },
                            borrowing_limit: QuotaAmounts {
                                vcpus: Some(borrow),
                                ..QuotaAmounts::default()
                            },
                        };
                        let team = Quota {
                            account: "team-1".into(),
                            class,
                            guarantee: QuotaAmounts {
                                vcpus: Some(2 * guarantee),
                                ..QuotaAmounts::default()
                            },
                            borrowing_limit: QuotaAmounts::default(),
                        };
                        [every, team]
                    })
                    .collect()
            })
            .unwrap_or_default(),
        images: None,
        warm: Vec::new(),
        templates: vec![linux(), macos(), windows()],
    }
}

fn images(mask: u8) -> Vec<String> {
    IMAGES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, s)| (*s).to_owned())
        .collect()
}

fn failure(outcome: u8) -> Failure {
    let kind = match (outcome / 8) % 3 {
        0 => FailureKind::Transient,
        1 => FailureKind::Host,
        _ => FailureKind::Request,
    };
    Failure::new(kind, "injected")
}

/// One run of a case: the scheduler, what was fed to it, and the decision log.
#[derive(Clone)]
pub(crate) struct Run {
    s: Scheduler,
    checks: bool,
    now_ms: u64,
    hosts: Vec<HostSpec>,
    requests: Vec<RequestId>,
    next_host: u64,
    next_request: u64,
    /// Every input with its result, then every action and event it led to, as Debug text.
    pub(crate) log: String,
    /// The last state each request's events put it in.
    states: BTreeMap<RequestId, RequestState>,
    /// The terminal events each request got (there must be exactly one by the end).
    ends: BTreeMap<RequestId, Vec<(RequestState, Cause)>>,
    /// Gang requests (with their size) none of whose VMs has been placed yet.
    gangs_pending: BTreeMap<RequestId, u32>,
    /// Every image pull started: its host, start and ready time (with `Config::images`).
    pulls: Vec<(HostId, u64, u64)>,
}

impl Run {
    pub(crate) fn new(config: Config, checks: bool) -> Run {
        Run::on(Scheduler::new(config), checks)
    }

    /// This run with its scheduler restored from a snapshot of this one's (taken between two
    /// inputs, once everything was polled), under `config`, the configuration it was made with.
    pub(crate) fn restored(&self, config: Config) -> Result<Run, SnapshotError> {
        let bytes = self.s.snapshot()?;
        let s = Scheduler::restore(config, &bytes)?;
        Ok(Run { s, ..self.clone() })
    }

    pub(crate) fn scheduler(&self) -> &Scheduler {
        &self.s
    }

    /// A run on the reference scheduler (every pass walks the whole queue one by one).
    pub(crate) fn reference(config: Config, checks: bool) -> Run {
        Run::on(Scheduler::reference(config), checks)
    }

    fn on(s: Scheduler, checks: bool) -> Run {
        Run {
            s,
            checks,
            now_ms: 0,
            hosts: Vec::new(),
            requests: Vec::new(),
            next_host: 1,
            next_request: 1,
            log: String::new(),
            states: BTreeMap::new(),
            ends: BTreeMap::new(),
            gangs_pending: BTreeMap::new(),
            pulls: Vec::new(),
        }
    }

    fn host_at(&self, i: usize) -> Option<&HostSpec> {
        (!self.hosts.is_empty()).then(|| &self.hosts[i % self.hosts.len()])
    }

    /// The `pick`-th VM that is on a host (placed or further), if any.
    fn vm_on_host(&self, pick: usize) -> Option<VmView> {
        let on_hosts: Vec<_> = self
            .s
            .vms()
            .into_iter()
            .filter(|v| v.state != VmState::Queued)
            .collect();
        (!on_hosts.is_empty()).then(|| on_hosts[pick % on_hosts.len()])
    }

    /// The input an op stands for in the current state (`None`: nothing to do).
    fn input_for(&mut self, op: &Op) -> Option<Input> {
        Some(match *op {
            Op::AddHost {
                driver,
                vcpus,
                memory_gib,
                cpu_overcommit_milli,
                memory_overcommit_milli,
                macos_slots,
                arm,
                images: mask,
            } => {
                let id = self.next_host;
                self.next_host += 1;
                let mut spec = HostSpec::new(
                    id,
                    &format!("h{id}"),
                    DriverKind::ALL[usize::from(driver % 3)],
                    vcpus,
                    memory_gib * GIB,
                );
                spec.cpu_overcommit_milli = cpu_overcommit_milli;
                spec.memory_overcommit_milli = memory_overcommit_milli;
                if macos_slots > 0 {
                    spec.slots.push(("macos".into(), macos_slots));
                }
                let arch = if arm { "aarch64" } else { "x86_64" };
                spec.labels.push(Label::new("arch", arch));
                spec.images = images(mask);
                Input::AddHost(spec)
            }
            Op::Submit(Sub {
                template,
                count,
                gang,
                priority,
                vcpus,
                memory_gib,
                arm,
                hold,
                deadline_s,
                run_s,
            }) => {
                let id = self.next_request;
                self.next_request += 1;
                let name = TEMPLATES[usize::from(template % 3)];
                let mut spec = RequestSpec::new(id, name, count);
                spec.gang = gang;
                spec.priority = priority;
                if vcpus.is_some() || memory_gib.is_some() {
                    spec.shape = Some(Shape {
                        vcpus: vcpus.unwrap_or(2),
                        memory_mib: memory_gib.unwrap_or(4) * GIB,
                    });
                }
                if arm {
                    spec.labels.push(Label::new("arch", "aarch64"));
                }
                if hold {
                    spec.hold_on_failure = Some(Hold {
                        owner: "dev".into(),
                        ttl_ms: 1_800_000,
                    });
                }
                spec.pending_deadline_ms = deadline_s.map(|s| s * 1_000);
                spec.expected_run_ms = run_s.map(|s| s * 1_000);
                // Three accounts of different weights, and a fourth unnamed one (the
                // requester's, at the default weight).
                spec.requester = "ci".into();
                spec.account = (!id.is_multiple_of(4)).then(|| format!("team-{}", id % 4));
                Input::Submit(spec)
            }
            Op::Step { pick, outcome } => {
                let v = self.vm_on_host(pick)?;
                let vm = v.id;
                let o = outcome % 8;
                match v.state {
                    VmState::Placed if o == 0 => Input::ProvisionStarted(vm),
                    VmState::Placed | VmState::Provisioning => Input::ProvisionDone {
                        vm,
                        result: if o < 6 { Ok(()) } else { Err(failure(outcome)) },
                    },
                    VmState::Booting => Input::BootDone {
                        vm,
                        result: if o < 6 { Ok(()) } else { Err(failure(outcome)) },
                    },
                    VmState::Running => Input::JobFinished { vm, passed: o < 5 },
                    VmState::Held if o < 6 => Input::Release(vm),
                    VmState::Held => Input::Extend {
                        vm,
                        by_ms: u64::from(outcome) * 1_000,
                    },
                    VmState::Releasing => Input::DestroyDone {
                        vm,
                        result: if o < 7 {
                            Ok(())
                        } else {
                            Err(Failure::new(FailureKind::Transient, "busy"))
                        },
                    },
                    // Not on a host, or ended: report on it anyway, which must be refused.
                    _ => Input::BootDone { vm, result: Ok(()) },
                }
            }
            Op::Vanish { pick } => Input::VmLost(self.vm_on_host(pick)?.id),
            Op::ProbeFail { host } => Input::Probe {
                host: self.host_at(host)?.id,
                result: Err("unreachable".into()),
            },
            Op::ProbeOk { host, images: mask } => {
                let spec = self.host_at(host)?;
                Input::Probe {
                    host: spec.id,
                    result: Ok(ProbeReport {
                        vcpus: spec.vcpus,
                        memory_mib: spec.memory_mib,
                        images: images(mask),
                    }),
                }
            }
            Op::Drain { host } => Input::Drain(self.host_at(host)?.id),
            Op::Resume { host } => Input::Resume(self.host_at(host)?.id),
            Op::Offline { host } => Input::Offline(self.host_at(host)?.id),
            Op::Remove { host } => Input::RemoveHost(self.host_at(host)?.id),
            Op::Cancel { request } => {
                if self.requests.is_empty() {
                    return None;
                }
                Input::Cancel(self.requests[request % self.requests.len()])
            }
            Op::Advance { ms } => {
                self.now_ms += ms;
                Input::Tick
            }
        })
    }

    pub(crate) fn apply(&mut self, op: &Op) {
        let Some(input) = self.input_for(op) else {
            return;
        };
        self.feed(input);
    }

    /// Hands one input to the scheduler, polls everything, logs it and checks the invariants.
    fn feed(&mut self, input: Input) {
        let _ = writeln!(self.log, "@{} {input:?}", self.now_ms);
        let added = match &input {
            Input::AddHost(spec) => Some(spec.clone()),
            _ => None,
        };
        let submitted = match &input {
            Input::Submit(spec) => Some((spec.id, spec.gang.then_some(spec.count))),
            _ => None,
        };
        let result = self.s.handle(self.now_ms, input);
        let _ = writeln!(self.log, "= {result:?}");
        if result.is_ok() {
            if let Some(spec) = added {
                // Hosts are probed as they arrive, as the daemon does.
                let probe = Input::Probe {
                    host: spec.id,
                    result: Ok(ProbeReport {
                        vcpus: spec.vcpus,
                        memory_mib: spec.memory_mib,
                        images: spec.images.clone(),
                    }),
                };
                self.hosts.push(spec);
                let r = self.s.handle(self.now_ms, probe);
                assert_eq!(r, Ok(()));
            }
            if let Some((id, gang)) = submitted {
                self.requests.push(id);
                if let Some(n) = gang {
                    self.gangs_pending.insert(id, n);
                }
            }
        }
        let mut n_out = 0;
        while let Some(a) = self.s.poll_action() {
            let _ = writeln!(self.log, "{a:?}");
            n_out += 1;
            if let Action::PullImage {
                host,
                start_ms,
                ready_ms,
                ..
            } = a
            {
                self.pulls.push((host, start_ms, ready_ms));
            }
        }
        let mut placed: BTreeMap<RequestId, u32> = BTreeMap::new();
        while let Some(e) = self.s.poll_event() {
            let _ = writeln!(self.log, "{e:?}");
            n_out += 1;
            if let Event::Vm {
                request,
                to: VmState::Placed,
                ..
            } = e
            {
                *placed.entry(request).or_default() += 1;
            }
            self.note(&e);
        }
        // A gang's first placement takes all its VMs at once.
        for (id, n) in placed {
            if let Some(size) = self.gangs_pending.remove(&id) {
                assert!(
                    !self.checks || n == size,
                    "gang {id} of {size} placed {n} vms at first"
                );
            }
        }
        if self.checks {
            if result.is_err() {
                assert_eq!(n_out, 0, "a refused input ({result:?}) must change nothing");
            }
            self.check();
        }
    }

    fn note(&mut self, e: &Event) {
        if let Event::Request {
            request, to, cause, ..
        } = e
        {
            if self.checks {
                assert!(
                    !self.ends.contains_key(request),
                    "{request} has an event after it ended: {e:?}"
                );
            }
            self.states.insert(*request, *to);
            if to.is_terminal() {
                self.ends
                    .entry(*request)
                    .or_default()
                    .push((*to, cause.clone()));
            }
        }
    }

    /// (a) no host is over capacity, and its usage is the sum of its VMs; (b) every request is
    /// waiting with a reason, active, or ended with exactly one terminal event.
    fn check(&self) {
        let s = &self.s;
        let vms = s.vms();
        let provisioning_max = s.config().provisioning_per_host_max;
        let hosts: Vec<_> = s.hosts().collect();
        for h in &hosts {
            assert!(
                (0..=h.cpu_milli).contains(&h.cpu_used_milli),
                "{}: vcpus {} of {}",
                h.name,
                h.cpu_used_milli,
                h.cpu_milli
            );
            assert!(
                (0..=h.memory_mib).contains(&h.memory_used_mib),
                "{}: memory {} of {}",
                h.name,
                h.memory_used_mib,
                h.memory_mib
            );
            for &(kind, cap, used) in &h.slots {
                assert!(
                    (0..=cap).contains(&used),
                    "{}: {kind} slots {used} of {cap}",
                    h.name
                );
            }
            assert!(
                h.provisioning <= provisioning_max,
                "{}: provisioning",
                h.name
            );
            let (mut cpu, mut mem, mut macs, mut n) = (0i64, 0i64, 0i64, 0usize);
            for v in vms.iter().filter(|v| v.host == Some(h.id)) {
                let r = s.request(v.request).expect("a live vm's request is live");
                cpu += i64::from(r.shape.vcpus) * 1000;
                mem += r.shape.memory_mib as i64;
                macs += i64::from(r.spec.template == "macos");
                n += 1;
            }
            assert_eq!(
                (cpu, mem, n),
                (h.cpu_used_milli, h.memory_used_mib, h.n_vms),
                "{}: usage is not the sum of its vms",
                h.name
            );
            let used_macs = h.slots.iter().map(|s| s.2).sum::<i64>();
            assert_eq!(macs, used_macs, "{}: macos slots", h.name);
        }
        // (c) no account holds more of a class than its guarantee plus borrowing limit, and
        // what it holds is the sum of its VMs there (hosts here are each a class of their own).
        for q in s.quotas() {
            let host = hosts.iter().find(|h| h.name == q.class);
            let held: i64 = vms
                .iter()
                .filter(|v| v.host.is_some() && v.host == host.map(|h| h.id))
                .filter_map(|v| s.request(v.request))
                .filter(|r| r.spec.account_name() == q.account)
                .map(|r| i64::from(r.shape.vcpus))
                .sum();
            let vcpus = &q.resources[0];
            assert_eq!(vcpus.resource, "vcpus");
            assert_eq!(
                vcpus.used, held as f64,
                "{} on {}: held",
                q.account, q.class
            );
            if let (Some(g), Some(b)) = (vcpus.guarantee, vcpus.borrowing_limit) {
                assert!(
                    vcpus.used <= g + b,
                    "{} on {}: {} vcpus past {g} + {b}",
                    q.account,
                    q.class,
                    vcpus.used
                );
            }
        }
        for v in &vms {
            assert_eq!(
                v.host.is_some(),
                v.state.holds_capacity(),
                "{}: {} with host {:?}",
                v.id,
                v.state,
                v.host
            );
            assert!(!v.state.is_terminal(), "{} ended but is still listed", v.id);
            assert_eq!(v.hold_until_ms.is_some(), v.state == VmState::Held);
        }

        let queue = s.queue();
        let mut n_waiting = 0;
        for &id in &self.requests {
            let ends = self.ends.get(&id).map_or(&[][..], Vec::as_slice);
            match s.request(id) {
                Some(view) => {
                    assert!(ends.is_empty(), "{id} is live but ended: {ends:?}");
                    assert_eq!(self.states.get(&id), Some(&view.state), "{id}: state");
                    let in_queue = queue.iter().filter(|&&q| q == id).count();
                    match view.state {
                        RequestState::Waiting => {
                            n_waiting += 1;
                            assert_eq!(in_queue, 1, "{id} waits but is not queued once");
                            let why = s.why(id).expect("a waiting request says why");
                            assert_ne!(why.blocker, Blocker::NotYetConsidered, "{id}: {why}");
                            assert_eq!(why.n_waiting_vms, view.n_queued);
                            assert!(view.n_queued > 0, "{id} waits for nothing");
                            assert_eq!(why.hosts_total as usize, hosts.len());
                            for (reason, n) in &why.reasons {
                                let named = why.named.get(reason).map_or(0, Vec::len);
                                assert_eq!(
                                    named,
                                    (*n as usize).min(berth_sched::WHY_HOSTS_NAMED),
                                    "{id}: {reason:?} counts {n} hosts but names {named}"
                                );
                            }
                        }
                        RequestState::Active => {
                            assert_eq!(in_queue, 0, "{id} is active but queued");
                            assert!(s.why(id).is_none());
                        }
                        other => panic!("{id} is listed as {other}"),
                    }
                }
                None => {
                    assert_eq!(ends.len(), 1, "{id} is gone with ends {ends:?}");
                    let (state, cause) = &ends[0];
                    if *state == RequestState::Rejected {
                        assert!(
                            matches!(cause, Cause::NeverFits(why) if !why.is_empty()),
                            "{id} rejected for {cause:?}"
                        );
                    }
                    assert!(!queue.contains(&id));
                }
            }
        }
        assert_eq!(
            queue.len(),
            n_waiting,
            "the queue holds only waiting requests"
        );
        assert_eq!(s.queue_len(), n_waiting);
        if s.config().images.is_some() {
            self.check_images();
        }
    }

    /// With `Config::images`: (e) the image of every VM on a host is held or being pulled
    /// there (so no image in use was evicted); (f) a host's images fit its budget but for one
    /// image being pulled, unless every image it holds is in use (a probe may report more than
    /// fits); (g) no store ever serves more pulls at once than its limit.
    fn check_images(&self) {
        let s = &self.s;
        let Some(config) = s.config().images.as_ref() else {
            return;
        };
        let images = s.host_images();
        for v in s.vms() {
            let Some(host) = v.host else { continue };
            let image = s
                .request(v.request)
                .and_then(|r| s.template(&r.spec.template))
                .map(|t| t.base_image.to_string())
                .unwrap_or_default();
            let on = images.iter().find(|h| h.host == host);
            let there = on.is_some_and(|h| {
                h.held.iter().any(|x| x.0 == image) || h.pulling.iter().any(|x| x.0 == image)
            });
            assert!(
                there,
                "{} on {host} runs from {image}, which is gone: {on:?}",
                v.id
            );
        }
        for h in &images {
            let Some(budget) = h.budget_mib else { continue };
            let held: u64 = h.held.iter().map(|x| x.1).sum();
            let pulling: u64 = h.pulling.iter().map(|x| x.1).sum();
            let largest_pull = h.pulling.iter().map(|x| x.1).max().unwrap_or(0);
            let unused = h.held.iter().any(|x| !x.3 && x.1 > 0);
            assert!(
                held + pulling <= budget + largest_pull || !unused,
                "{}: {held} MiB held and {pulling} pulling over a budget of {budget}: {h:?}",
                h.host
            );
        }
        if config.store_pulls_max == 0 {
            return;
        }
        let store_of = |host: HostId| {
            let spec = self.hosts.iter().find(|h| h.id == host)?;
            let class = berth_sched::host_class(&spec.name, &spec.labels);
            config
                .classes
                .iter()
                .find(|c| c.class == class)
                .map(|c| c.store.clone())
        };
        let mut by_store: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        for &(host, start, ready) in &self.pulls {
            if let Some(store) = store_of(host)
                && ready > start
            {
                by_store.entry(store).or_default().push((start, ready));
            }
        }
        for (store, pulls) in by_store {
            for &(t, _) in &pulls {
                let at_once = pulls.iter().filter(|&&(a, b)| a <= t && t < b).count();
                assert!(
                    at_once <= config.store_pulls_max as usize,
                    "store {store} serves {at_once} pulls at {t} ms, over its limit of {}",
                    config.store_pulls_max
                );
            }
        }
    }

    /// (c) Drives everything to its end: VMs run to completion, what cannot be placed is
    /// cancelled; then no host holds anything.
    fn drain(&mut self) {
        for _ in 0..50 {
            let vms = self.s.vms();
            let moving: Vec<_> = vms.iter().filter(|v| v.state != VmState::Queued).collect();
            if moving.is_empty() {
                break;
            }
            for v in moving {
                let vm = v.id;
                // A VM may have ended as a side effect of an earlier input in this round.
                let Some(now) = self.s.vm(vm) else { continue };
                let input = match now.state {
                    VmState::Placed | VmState::Provisioning => {
                        Input::ProvisionDone { vm, result: Ok(()) }
                    }
                    VmState::Booting => Input::BootDone { vm, result: Ok(()) },
                    VmState::Running => Input::JobFinished { vm, passed: true },
                    VmState::Held => Input::Release(vm),
                    VmState::Releasing => Input::DestroyDone { vm, result: Ok(()) },
                    _ => continue,
                };
                self.feed(input);
            }
        }
        let live: Vec<RequestId> = self.s.requests().iter().map(|r| r.spec.id).collect();
        for id in live {
            self.feed(Input::Cancel(id));
        }
        for v in self.s.vms() {
            assert_eq!(v.state, VmState::Releasing, "{} after cancel", v.id);
            self.feed(Input::DestroyDone {
                vm: v.id,
                result: Ok(()),
            });
        }
        assert_eq!(self.s.n_vms(), 0);
        assert_eq!(self.s.n_requests(), 0);
        assert_eq!(self.s.queue_len(), 0);
        for h in self.s.hosts() {
            assert_eq!(
                (h.cpu_used_milli, h.memory_used_mib, h.n_vms, h.provisioning),
                (0, 0, 0, 0),
                "{} still holds something",
                h.name
            );
            assert!(h.slots.iter().all(|s| s.2 == 0), "{}: slots", h.name);
        }
        for id in &self.requests {
            assert_eq!(self.ends.get(id).map(Vec::len), Some(1), "{id}: ends");
        }
    }
}

/// FNV-1a, for a short name of a long log in failure messages.
pub(crate) fn digest(log: &str) -> u64 {
    log.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(crate) fn first_difference(a: &str, b: &str) -> String {
    match a
        .lines()
        .zip(b.lines())
        .enumerate()
        .find(|(_, (x, y))| x != y)
    {
        Some((i, (x, y))) => format!("line {}: `{x}` vs `{y}`", i + 1),
        None => format!(
            "one log is a prefix of the other ({} vs {} lines)",
            a.lines().count(),
            b.lines().count()
        ),
    }
}

/// Runs a case: every invariant after every input, then (d) the same log from a replay and from
/// a clone taken halfway, then (c) the drain.
fn run_case(knobs: &Knobs, ops: &[Op]) {
    run_case_with(config_of(knobs), ops);
}

/// `run_case` on a configuration of its own.
pub(crate) fn run_case_with(config: Config, ops: &[Op]) {
    let half = ops.len() / 2;
    let mut a = Run::new(config.clone(), true);
    for op in &ops[..half] {
        a.apply(op);
    }
    let mut b = a.clone();
    b.checks = false;
    for op in &ops[half..] {
        a.apply(op);
        b.apply(op);
    }
    let mut c = Run::new(config, false);
    for op in ops {
        c.apply(op);
    }
    assert!(
        a.log == c.log,
        "replay differs: {:016x} vs {:016x}, {}",
        digest(&a.log),
        digest(&c.log),
        first_difference(&a.log, &c.log)
    );
    assert!(
        a.log == b.log,
        "clone differs: {:016x} vs {:016x}, {}",
        digest(&a.log),
        digest(&b.log),
        first_difference(&a.log, &b.log)
    );
    a.drain();
}

fn proptest_config_long() -> ProptestConfig {
    let mut config = proptest_config();
    config.cases = (config.cases / 8).max(1);
    config
}

pub(crate) fn proptest_config() -> ProptestConfig {
    let mut config = ProptestConfig {
        // Failures are pinned below as named tests, not in a file next to the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 256;
    }
    config
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn invariants_hold_for_random_input_sequences(
        knobs in knobs(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run_case(&knobs, &ops);
    }

    /// A dense fleet from the start, so that most of the ops move VMs rather than set up hosts.
    #[test]
    fn invariants_hold_on_a_busy_fleet(
        knobs in knobs(),
        hosts in prop::collection::vec(add_host(), 2..6),
        ops in prop::collection::vec(op(), 20..100),
    ) {
        let all: Vec<Op> = hosts.into_iter().chain(ops).collect();
        run_case(&knobs, &all);
    }
}

proptest! {
    #![proptest_config(proptest_config_long())]

    /// Long runs reach deep states: hosts failing and coming back, retries spent, holds expiring.
    #[test]
    fn invariants_hold_over_long_runs(
        knobs in knobs(),
        hosts in prop::collection::vec(add_host(), 1..8),
        ops in prop::collection::vec(op(), 100..400),
    ) {
        let all: Vec<Op> = hosts.into_iter().chain(ops).collect();
        run_case(&knobs, &all);
    }
}

// ---- pinned regressions ----

fn knobs_default() -> Knobs {
    Knobs {
        policy: 1,
        rotate: false,
        weights: (1, 0, 1),
        provisioning_per_host_max: 4,
        vm_retries_max: 2,
        probe_failures_max: 3,
        provision_failures_max: 3,
        candidates_max: 8,
        aging_step_ms: 600_000,
        fair_half_life_ms: None,
        quota_vcpus: None,
    }
}

fn small_host(vcpus: u32) -> Op {
    Op::AddHost {
        driver: 2,
        vcpus,
        memory_gib: 32,
        cpu_overcommit_milli: 1000,
        memory_overcommit_milli: 1000,
        macos_slots: 0,
        arm: false,
        images: 0,
    }
}

/// Under greedy and EASY a pass stops once no ready host has a vCPU free; the requests after
/// that point used to say "(not yet considered)" for ever.
#[test]
fn regression_a_full_fleet_does_not_leave_requests_unconsidered() {
    for policy in 0..3 {
        let knobs = Knobs {
            policy,
            ..knobs_default()
        };
        run_case(
            &knobs,
            &[
                small_host(2),
                Op::Submit(Sub::plain(1)),
                Op::Submit(Sub::plain(1)),
                Op::Submit(Sub::plain(2)),
            ],
        );
    }
}

/// A request rejected when the fleet shrank used to end with cause "all vms ended" instead of
/// the reason no host could ever fit it.
#[test]
fn regression_a_request_rejected_when_its_host_is_removed_says_why() {
    run_case(
        &knobs_default(),
        &[
            small_host(2),
            small_host(16),
            Op::Drain { host: 1 },
            Op::Submit(Sub {
                vcpus: Some(16),
                ..Sub::plain(1)
            }),
            Op::Remove { host: 1 },
        ],
    );
}

/// Found by `invariants_hold_for_random_input_sequences`: under strict FCFS, cancelling the
/// head (here while draining the case) left the next request, which fits, waiting unconsidered
/// until something else changed, because a shrinking queue did not start a pass.
#[test]
fn regression_cancelling_the_head_serves_the_next_request() {
    let knobs = Knobs {
        policy: 0,
        weights: (0, 0, 0),
        provisioning_per_host_max: 1,
        vm_retries_max: 0,
        probe_failures_max: 1,
        provision_failures_max: 1,
        candidates_max: 1,
        aging_step_ms: 60_000,
        ..knobs_default()
    };
    let host = |driver, vcpus, memory_gib, cpu_oc, mem_oc, macos_slots| Op::AddHost {
        driver,
        vcpus,
        memory_gib,
        cpu_overcommit_milli: cpu_oc,
        memory_overcommit_milli: mem_oc,
        macos_slots,
        arm: false,
        images: 0,
    };
    run_case(
        &knobs,
        &[
            host(0, 1, 1, 1000, 1000, 0),
            host(0, 2, 7, 2000, 1250, 0),
            host(1, 11, 30, 1000, 1500, 1),
            Op::Offline {
                host: 2_281_181_134_057_589_846,
            },
            Op::Submit(Sub {
                template: 1,
                ..Sub::plain(1)
            }),
            Op::Advance { ms: 120_000 },
            Op::Submit(Sub::plain(1)),
        ],
    );
}

/// Found by `invariants_hold_on_a_busy_fleet`: under strict FCFS with aging, time alone made
/// r4 (which fits on h5) the head at 1 842 148 ms, but the tick started no pass, so it waited
/// unconsidered until an unrelated input came.
#[test]
fn regression_aging_that_moves_a_fitting_request_to_the_head_starts_it() {
    let knobs = Knobs {
        policy: 0,
        weights: (0, 0, 0),
        provisioning_per_host_max: 2,
        vm_retries_max: 0,
        probe_failures_max: 1,
        provision_failures_max: 1,
        candidates_max: 1,
        aging_step_ms: 600_000,
        ..knobs_default()
    };
    let host = |driver, vcpus, memory_gib, cpu_oc, mem_oc, macos_slots| Op::AddHost {
        driver,
        vcpus,
        memory_gib,
        cpu_overcommit_milli: cpu_oc,
        memory_overcommit_milli: mem_oc,
        macos_slots,
        arm: false,
        images: 0,
    };
    run_case(
        &knobs,
        &[
            host(1, 3, 8, 1500, 1000, 1),
            host(0, 2, 18, 1000, 1250, 0),
            Op::Submit(Sub {
                memory_gib: Some(22),
                ..Sub::plain(4)
            }),
            Op::Advance { ms: 0 },
            Op::Submit(Sub {
                gang: true,
                ..Sub::plain(2)
            }),
            Op::Submit(Sub::plain(1)),
            Op::Advance { ms: 42_148 },
            Op::Submit(Sub::plain(1)),
            Op::Advance { ms: 772_439 },
            host(2, 1, 22, 2000, 1000, 0),
            host(0, 2, 27, 1000, 1250, 0),
            Op::Submit(Sub {
                template: 2,
                priority: 2,
                memory_gib: Some(1),
                ..Sub::plain(1)
            }),
            Op::Step {
                pick: 7_267_390_686_908_827_171,
                outcome: 9,
            },
            Op::Step {
                pick: 6_215_642_169_963_373_867,
                outcome: 0,
            },
            Op::Advance { ms: 168_139 },
            Op::Step {
                pick: 11_722_879_149_922_627_135,
                outcome: 0,
            },
            host(2, 1, 8, 4000, 1000, 0),
            Op::Advance { ms: 217_274 },
            Op::Step {
                pick: 2_769_977_288_677_137_361,
                outcome: 0,
            },
            Op::Advance { ms: 642_148 },
            host(0, 1, 1, 1000, 1000, 0),
            host(0, 1, 1, 1000, 1000, 0),
        ],
    );
}
