//! Workloads for berth's benchmarks, shared with the integration tests in `tests/` that check
//! they do what the benchmarks claim: a fleet of probed hosts, a burst of mixed requests, and a
//! fleet full of running VMs for churn.

use berth_sched::{
    Action, Config, DriverKind, GuestOs, HostId, HostSpec, Input, Label, ProbeReport, RequestSpec,
    Scheduler, Shape, Template,
};

/// A deterministic generator for workload shapes (splitmix64); benchmarks need no more.
pub struct Mix(u64);

impl Mix {
    pub fn new(seed: u64) -> Mix {
        Mix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The three templates of the benchmarks: Linux and Windows on libvirt, macOS on Parallels
/// (one `macos` slot each).
pub fn templates() -> Vec<Template> {
    let mut linux = Template::new(
        "linux",
        Shape {
            vcpus: 4,
            memory_mib: 8192,
        },
    );
    linux.drivers = vec![DriverKind::Libvirt, DriverKind::Sim];
    linux.expected_run_ms = 1_800_000;
    let mut windows = Template::new(
        "windows",
        Shape {
            vcpus: 8,
            memory_mib: 16384,
        },
    );
    windows.guest_os = GuestOs::Windows;
    windows.drivers = vec![DriverKind::Libvirt, DriverKind::Sim];
    windows.expected_run_ms = 2_400_000;
    let mut macos = Template::new(
        "macos",
        Shape {
            vcpus: 4,
            memory_mib: 16384,
        },
    );
    macos.guest_os = GuestOs::Macos;
    macos.drivers = vec![DriverKind::Parallels, DriverKind::Sim];
    macos.slot = Some("macos".into());
    macos.expected_run_ms = 2_400_000;
    vec![linux, windows, macos]
}

pub fn config() -> Config {
    Config {
        templates: templates(),
        ..Config::default()
    }
}

/// Host `i` of a mixed fleet: 70% Linux servers (64 vCPUs ×2 overcommit, 256 GiB), 30% Macs
/// (12 vCPUs, 64 GiB, two macOS slots); both x86_64 and aarch64.
pub fn host_spec(i: u64) -> HostSpec {
    // Linux servers 0-1 of every ten are aarch64; Macs 7-8 are Apple silicon, 9 is Intel.
    let arch = if matches!(i % 10, 0 | 1 | 7 | 8) {
        "aarch64"
    } else {
        "x86_64"
    };
    let mut spec = if i % 10 < 7 {
        let mut s = HostSpec::new(i, &format!("kvm-{i:05}"), DriverKind::Libvirt, 64, 262_144);
        s.cpu_overcommit_milli = 2000;
        s.images = vec!["linux".into(), "windows".into()];
        s
    } else {
        let mut s = HostSpec::new(i, &format!("mac-{i:05}"), DriverKind::Parallels, 12, 65_536);
        s.slots = vec![("macos".into(), 2)];
        s.images = vec!["macos".into()];
        s
    };
    spec.labels = vec![Label::new("arch", arch)];
    spec
}

/// A scheduler with `n_hosts` hosts, all probed and ready, and its events drained.
pub fn fleet(n_hosts: u64, config: Config) -> Scheduler {
    let mut s = Scheduler::new(config);
    for i in 0..n_hosts {
        let spec = host_spec(i);
        let report = ProbeReport {
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            images: spec.images.clone(),
        };
        let id = spec.id;
        // The specs above are valid by construction; a refusal would be a bug in this file.
        if let Err(e) = s.handle(0, Input::AddHost(spec)) {
            panic!("bench fleet: {e}");
        }
        if let Err(e) = s.handle(
            0,
            Input::Probe {
                host: id,
                result: Ok(report),
            },
        ) {
            panic!("bench fleet: {e}");
        }
    }
    drain(&mut s);
    s
}

/// Pulls every action and event; returns the number of provisions.
pub fn drain(s: &mut Scheduler) -> usize {
    let mut provisions = 0;
    while let Some(a) = s.poll_action() {
        if matches!(a, Action::Provision { .. }) {
            provisions += 1;
        }
    }
    while s.poll_event().is_some() {}
    provisions
}

/// A burst of requests totalling `n_vms` VMs: 50% Linux, 25% macOS, 25% Windows, in requests of
/// 1 to 40 VMs with shapes of 2 to 8 vCPUs; a quarter are gangs, a fifth pin an architecture.
pub fn burst(n_vms: u32, first_id: u64, seed: u64) -> Vec<RequestSpec> {
    let mut mix = Mix::new(seed);
    let mut out = Vec::new();
    let mut left = n_vms;
    let mut id = first_id;
    while left > 0 {
        let template = match mix.below(4) {
            0 | 1 => "linux",
            2 => "macos",
            _ => "windows",
        };
        let count = (1 + mix.below(40) as u32).min(left);
        let vcpus = [2, 4, 8][mix.below(3) as usize];
        let mut spec = RequestSpec::new(id, template, count);
        spec.shape = Some(Shape {
            vcpus,
            memory_mib: u64::from(vcpus) * 2048,
        });
        spec.gang = mix.below(4) == 0;
        if mix.below(5) == 0 {
            let arch = if mix.below(2) == 0 {
                "x86_64"
            } else {
                "aarch64"
            };
            spec.labels = vec![Label::new("arch", arch)];
        }
        out.push(spec);
        left -= count;
        id += 1;
    }
    out
}

/// A fleet of `n_hosts` Linux hosts with `n_alive` single-VM requests running (2 vCPUs each).
/// Returns the scheduler and the ids of the running VMs in placement order.
pub fn churn_fleet(
    n_hosts: u64,
    n_alive: u64,
) -> (Scheduler, std::collections::VecDeque<berth_sched::VmId>) {
    let mut s = Scheduler::new(config());
    for i in 0..n_hosts {
        let mut spec = HostSpec::new(i, &format!("kvm-{i:05}"), DriverKind::Libvirt, 64, 262_144);
        spec.cpu_overcommit_milli = 2000;
        let report = ProbeReport {
            vcpus: 64,
            memory_mib: 262_144,
            images: vec!["linux".into()],
        };
        if let Err(e) = s.handle(0, Input::AddHost(spec)) {
            panic!("churn fleet: {e}");
        }
        if let Err(e) = s.handle(
            0,
            Input::Probe {
                host: HostId(i),
                result: Ok(report),
            },
        ) {
            panic!("churn fleet: {e}");
        }
    }
    let mut running = std::collections::VecDeque::new();
    for id in 0..n_alive {
        running.push_back(start_one(&mut s, id));
    }
    while s.poll_event().is_some() {}
    (s, running)
}

/// Submits a one-VM Linux request and carries it to `Running`; returns its VM.
pub fn start_one(s: &mut Scheduler, id: u64) -> berth_sched::VmId {
    let mut spec = RequestSpec::new(id, "linux", 1);
    spec.shape = Some(Shape {
        vcpus: 2,
        memory_mib: 4096,
    });
    if let Err(e) = s.handle(0, Input::Submit(spec)) {
        panic!("churn submit: {e}");
    }
    let mut vm = None;
    while let Some(a) = s.poll_action() {
        if let Action::Provision { vm: v, .. } = a {
            vm = Some(v);
        }
    }
    let Some(vm) = vm else {
        panic!("churn: request {id} was not placed; the fleet is too small");
    };
    for input in [
        Input::ProvisionDone { vm, result: Ok(()) },
        Input::BootDone { vm, result: Ok(()) },
    ] {
        if let Err(e) = s.handle(0, input) {
            panic!("churn: {e}");
        }
    }
    vm
}

/// One churn step: the oldest VM's job passes, it is destroyed, and a new one starts.
pub fn churn_step(
    s: &mut Scheduler,
    running: &mut std::collections::VecDeque<berth_sched::VmId>,
    next_id: u64,
) {
    if let Some(vm) = running.pop_front() {
        for input in [
            Input::JobFinished { vm, passed: true },
            Input::DestroyDone { vm, result: Ok(()) },
        ] {
            if let Err(e) = s.handle(0, input) {
                panic!("churn: {e}");
            }
        }
    }
    running.push_back(start_one(s, next_id));
    while s.poll_event().is_some() {}
}

/// A loaded fleet with a queue of constant depth, for the cost of a pass against the queue's
/// length: 40 hosts (30 x86_64, 10 aarch64; 64 vCPUs ×2, 256 GiB) full of 6-vCPU VMs with
/// 2 vCPUs left over on each, and `n_waiting` requests behind them of four kinds in turn:
/// 6-vCPU Linux for either architecture, 8-vCPU Windows and 16-vCPU Linux. Each step one running
/// VM (the oldest) ends, the pass places what fits (EASY), the placed VMs run, and every placed
/// request is submitted again, so the queue keeps its depth and its mix.
pub struct LoadedQueue {
    pub s: Scheduler,
    running: std::collections::VecDeque<berth_sched::VmId>,
    /// The kind of each request id, to submit a placed request's kind again.
    kinds: std::collections::BTreeMap<berth_sched::RequestId, usize>,
    next_id: u64,
    now_ms: u64,
    /// Submit a placed request's kind again (not while filling the fleet).
    refill: bool,
}

impl LoadedQueue {
    const N_HOSTS: u64 = 40;

    pub fn new(n_waiting: u64) -> LoadedQueue {
        LoadedQueue::on(Scheduler::new, n_waiting)
    }

    /// The same on the reference scheduler, whose passes walk the whole queue one by one.
    pub fn reference(n_waiting: u64) -> LoadedQueue {
        LoadedQueue::on(Scheduler::reference, n_waiting)
    }

    fn on(scheduler: fn(Config) -> Scheduler, n_waiting: u64) -> LoadedQueue {
        let mut config = config();
        config.policy = berth_sched::Policy::Easy;
        let mut s = scheduler(config);
        for i in 0..Self::N_HOSTS {
            let arch = if i % 4 == 3 { "aarch64" } else { "x86_64" };
            let mut spec =
                HostSpec::new(i, &format!("kvm-{i:05}"), DriverKind::Libvirt, 64, 262_144);
            spec.cpu_overcommit_milli = 2000;
            spec.labels = vec![Label::new("arch", arch)];
            let report = ProbeReport {
                vcpus: 64,
                memory_mib: 262_144,
                images: vec!["linux".into(), "windows".into()],
            };
            for input in [
                Input::AddHost(spec),
                Input::Probe {
                    host: HostId(i),
                    result: Ok(report),
                },
            ] {
                if let Err(e) = s.handle(0, input) {
                    panic!("loaded fleet: {e}");
                }
            }
        }
        let mut q = LoadedQueue {
            s,
            running: std::collections::VecDeque::new(),
            kinds: std::collections::BTreeMap::new(),
            next_id: 1,
            now_ms: 0,
            refill: false,
        };
        // 21 VMs of 6 vCPUs and 12 GiB fill a host's 128 vCPUs to 2 and its memory to 4 GiB.
        for host in 0..Self::N_HOSTS {
            let arch = if host % 4 == 3 { 1 } else { 0 };
            for _ in 0..21 {
                q.submit(arch);
            }
            q.place_and_run();
        }
        for i in 0..n_waiting {
            q.submit((i % 4) as usize);
        }
        q.refill = true;
        q.place_and_run();
        q
    }

    /// Submits one request of kind `kind` (0, 1: 6-vCPU Linux on x86_64, aarch64; 2: 8-vCPU
    /// Windows; 3: 16-vCPU Linux).
    fn submit(&mut self, kind: usize) {
        let (template, vcpus, arch) = [
            ("linux", 6, Some("x86_64")),
            ("linux", 6, Some("aarch64")),
            ("windows", 8, None),
            ("linux", 16, None),
        ][kind % 4];
        let id = self.next_id;
        self.next_id += 1;
        let mut spec = RequestSpec::new(id, template, 1);
        spec.shape = Some(Shape {
            vcpus,
            memory_mib: u64::from(vcpus) * 2048,
        });
        if let Some(arch) = arch {
            spec.labels = vec![Label::new("arch", arch)];
        }
        self.kinds.insert(spec.id, kind);
        if let Err(e) = self.s.handle(self.now_ms, Input::Submit(spec)) {
            panic!("loaded queue: {e}");
        }
    }

    /// Polls the scheduler, carries every placed VM to running and submits each placed
    /// request's kind again; returns the VMs placed.
    fn place_and_run(&mut self) -> usize {
        let mut total = 0;
        // Provisioning turns are few per host: a VM that provisions frees one for the next pass.
        loop {
            let n = self.place_and_run_once();
            if n == 0 {
                return total;
            }
            total += n;
        }
    }

    fn place_and_run_once(&mut self) -> usize {
        let mut placed = Vec::new();
        while let Some(a) = self.s.poll_action() {
            if let Action::Provision { vm, request, .. } = a {
                placed.push((vm, request));
            }
        }
        while self.s.poll_event().is_some() {}
        for &(vm, request) in &placed {
            for input in [
                Input::ProvisionDone { vm, result: Ok(()) },
                Input::BootDone { vm, result: Ok(()) },
            ] {
                if let Err(e) = self.s.handle(self.now_ms, input) {
                    panic!("loaded queue: {e}");
                }
            }
            self.running.push_back(vm);
            if let Some(kind) = self.kinds.remove(&request)
                && self.refill
            {
                self.submit(kind);
            }
        }
        placed.len()
    }

    /// One second later the oldest running VM ends; returns the VMs the pass placed.
    pub fn step(&mut self) -> usize {
        self.now_ms += 1_000;
        if let Some(vm) = self.running.pop_front() {
            for input in [
                Input::JobFinished { vm, passed: true },
                Input::DestroyDone { vm, result: Ok(()) },
            ] {
                if let Err(e) = self.s.handle(self.now_ms, input) {
                    panic!("loaded queue: {e}");
                }
            }
        }
        self.place_and_run()
    }
}
