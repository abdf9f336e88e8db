//! A compact text format for placement scenarios, and a runner that renders the decisions.
//!
//! ```text
//! # configuration (any order, before or after hosts)
//! template linux cpu=2 mem=4G drivers=libvirt,sim image=linux-base
//! template macos cpu=4 mem=8G drivers=parallels,sim slot=macos os=macos
//! policy easy | weights pack=1 spread=0 locality=1 | scan rotate | limit provisioning=4
//! # the scenario, in order; hosts are added and probed ready at the current time
//! host h1 cpu=8 mem=32G driver=sim labels=arch=x86_64 slots=macos:2 images=linux overcommit=2.0
//! request r1 template=linux count=3 cpu=4 mem=8G gang prio=5 labels=arch=x86_64 expect=600s
//! at 30s          # the clock moves on; due timers fire
//! start r1        # every placed VM of r1 provisions and boots
//! finish r1       # every running VM of r1 passes its job and is destroyed
//! drain h1 | resume h1 | offline h1 | cancel r1
//! why             # why each request waits now, in queue order
//! ```
//!
//! The runner polls after every line and prints one line per Provision action (`vm3 r1 -> h2`),
//! every request that ended (`r5 rejected: ...`), every host transition after setup, and at the
//! end, in queue order, why each request still waits.

use std::collections::BTreeMap;

use berth_sched::{
    Action, Config, DriverKind, Event, GuestOs, HostId, HostSpec, Input, Label, Policy,
    ProbeReport, RequestId, RequestSpec, RequestState, ScanOrder, Scheduler, Shape, Template,
    VmState,
};

/// Runs a fixture and renders its decisions.
pub fn run(text: &str) -> String {
    let (config, steps) = parse(text);
    let mut r = Runner {
        templates: config.templates.clone(),
        s: Scheduler::new(config),
        now_ms: 0,
        host_names: BTreeMap::new(),
        out: String::new(),
    };
    for (line_no, step) in steps {
        r.step(line_no, step);
    }
    r.finish()
}

#[derive(Debug)]
enum Step {
    Host(HostSpec),
    Request {
        spec: RequestSpec,
        cpu: Option<u32>,
        memory_mib: Option<u64>,
    },
    At(u64),
    Start(RequestId),
    Finish(RequestId),
    Drain(String),
    Resume(String),
    Offline(String),
    Cancel(RequestId),
    Why,
}

fn parse(text: &str) -> (Config, Vec<(usize, Step)>) {
    let mut config = Config::default();
    let mut steps = Vec::new();
    let mut n_hosts = 0;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fail = |what: &str| -> ! { panic!("fixture line {line_no} `{line}`: {what}") };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[0] {
            "template" => config
                .templates
                .push(template(&words[1..]).unwrap_or_else(|e| fail(&e))),
            "policy" | "weights" | "scan" | "limit" => {
                for segment in line.split('|') {
                    let words: Vec<&str> = segment.split_whitespace().collect();
                    settings(&mut config, &words).unwrap_or_else(|e| fail(&e));
                }
            }
            "host" => {
                n_hosts += 1;
                steps.push((
                    line_no,
                    Step::Host(host(n_hosts, &words[1..]).unwrap_or_else(|e| fail(&e))),
                ));
            }
            "request" => {
                let step = request(&config, &words[1..]).unwrap_or_else(|e| fail(&e));
                steps.push((line_no, step));
            }
            "why" => steps.push((line_no, Step::Why)),
            "at" | "start" | "finish" | "drain" | "resume" | "offline" | "cancel" => {
                let [_, arg] = words[..] else {
                    fail("expected one argument")
                };
                let step = match words[0] {
                    "at" => Step::At(duration_ms(arg).unwrap_or_else(|e| fail(&e))),
                    "start" => Step::Start(request_id(arg).unwrap_or_else(|e| fail(&e))),
                    "finish" => Step::Finish(request_id(arg).unwrap_or_else(|e| fail(&e))),
                    "cancel" => Step::Cancel(request_id(arg).unwrap_or_else(|e| fail(&e))),
                    "drain" => Step::Drain(arg.to_owned()),
                    "resume" => Step::Resume(arg.to_owned()),
                    _ => Step::Offline(arg.to_owned()),
                };
                steps.push((line_no, step));
            }
            other => fail(&format!("unknown keyword `{other}`")),
        }
    }
    (config, steps)
}

/// `key=value` pairs and bare flags of one line.
fn pairs<'a>(words: &[&'a str]) -> Vec<(&'a str, &'a str)> {
    words
        .iter()
        .map(|w| w.split_once('=').unwrap_or((w, "")))
        .collect()
}

fn template(words: &[&str]) -> Result<Template, String> {
    let (&name, rest) = words.split_first().ok_or("template needs a name")?;
    let mut t = Template::new(
        name,
        Shape {
            vcpus: 1,
            memory_mib: 1024,
        },
    );
    for (k, v) in pairs(rest) {
        match k {
            "cpu" => t.default_shape.vcpus = number(v)?,
            "mem" => t.default_shape.memory_mib = memory_mib(v)?,
            "drivers" => t.drivers = v.split(',').map(driver).collect::<Result<_, _>>()?,
            "image" => t.base_image = v.into(),
            "slot" => t.slot = Some(v.to_owned()),
            "os" => t.guest_os = GuestOs::parse(v).ok_or(format!("unknown os `{v}`"))?,
            "provision" => t.expected_provision_ms = duration_ms(v)?,
            "boot" => t.expected_boot_ms = duration_ms(v)?,
            "run" => t.expected_run_ms = duration_ms(v)?,
            _ => return Err(format!("unknown template field `{k}`")),
        }
    }
    Ok(t)
}

fn settings(config: &mut Config, words: &[&str]) -> Result<(), String> {
    let (&what, rest) = words.split_first().ok_or("empty setting")?;
    match what {
        "policy" => {
            let [p] = rest else {
                return Err("policy takes one name".into());
            };
            config.policy = Policy::parse(p).ok_or(format!("unknown policy `{p}`"))?;
        }
        "scan" => {
            config.scan = match rest {
                ["lowest"] => ScanOrder::Lowest,
                ["rotate"] => ScanOrder::Rotate,
                _ => return Err("scan is `lowest` or `rotate`".into()),
            }
        }
        "weights" => {
            for (k, v) in pairs(rest) {
                let w = number(v)?;
                match k {
                    "pack" => config.weights.pack = w,
                    "spread" => config.weights.spread = w,
                    "locality" => config.weights.locality = w,
                    _ => return Err(format!("unknown weight `{k}`")),
                }
            }
        }
        "limit" => {
            for (k, v) in pairs(rest) {
                match k {
                    "provisioning" => config.provisioning_per_host_max = number(v)?,
                    "candidates" => config.candidates_max = number(v)?,
                    "retries" => config.vm_retries_max = number(v)?,
                    "aging" => config.aging_step_ms = duration_ms(v)?,
                    _ => return Err(format!("unknown limit `{k}`")),
                }
            }
        }
        _ => return Err(format!("unknown setting `{what}`")),
    }
    Ok(())
}

fn host(id: u64, words: &[&str]) -> Result<HostSpec, String> {
    let (&name, rest) = words.split_first().ok_or("host needs a name")?;
    let mut spec = HostSpec::new(id, name, DriverKind::Sim, 1, 1024);
    for (k, v) in pairs(rest) {
        match k {
            "cpu" => spec.vcpus = number(v)?,
            "mem" => spec.memory_mib = memory_mib(v)?,
            "driver" => spec.driver = driver(v)?,
            "labels" => spec.labels = labels(v)?,
            "images" => spec.images = v.split(',').map(str::to_owned).collect(),
            "slots" => {
                for slot in v.split(',') {
                    let (kind, n) = slot.split_once(':').ok_or("slots are kind:count")?;
                    spec.slots.push((kind.to_owned(), number(n)?));
                }
            }
            "overcommit" => spec.cpu_overcommit_milli = milli(v)?,
            "mem-overcommit" => spec.memory_overcommit_milli = milli(v)?,
            _ => return Err(format!("unknown host field `{k}`")),
        }
    }
    Ok(spec)
}

fn request(config: &Config, words: &[&str]) -> Result<Step, String> {
    let (&id, rest) = words.split_first().ok_or("request needs an id")?;
    let default_template = config
        .templates
        .first()
        .map(|t| t.name.to_string())
        .ok_or("declare a template before the first request")?;
    let mut spec = RequestSpec::new(request_id(id)?.0, &default_template, 1);
    let (mut cpu, mut memory) = (None, None);
    for (k, v) in pairs(rest) {
        match k {
            "template" => spec.template = v.to_owned(),
            "count" => spec.count = number(v)?,
            "cpu" => cpu = Some(number(v)?),
            "mem" => memory = Some(memory_mib(v)?),
            "gang" => spec.gang = true,
            "prio" => spec.priority = v.parse().map_err(|_| format!("bad priority `{v}`"))?,
            "labels" => spec.labels = labels(v)?,
            "expect" => spec.expected_run_ms = Some(duration_ms(v)?),
            "deadline" => spec.pending_deadline_ms = Some(duration_ms(v)?),
            "hold" => {
                let (owner, ttl) = v.split_once(':').ok_or("hold is owner:ttl")?;
                spec.hold_on_failure = Some(berth_sched::Hold {
                    owner: owner.to_owned(),
                    ttl_ms: duration_ms(ttl)?,
                });
            }
            _ => return Err(format!("unknown request field `{k}`")),
        }
    }
    Ok(Step::Request {
        spec,
        cpu,
        memory_mib: memory,
    })
}

fn number<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("bad number `{v}`"))
}

/// `32G`, `512M`, or MiB as a plain number.
fn memory_mib(v: &str) -> Result<u64, String> {
    if let Some(g) = v.strip_suffix('G') {
        Ok(number::<u64>(g)? * 1024)
    } else if let Some(m) = v.strip_suffix('M') {
        number(m)
    } else {
        number(v)
    }
}

/// `250ms`, `30s`, `10m`, `2h`, or milliseconds as a plain number.
fn duration_ms(v: &str) -> Result<u64, String> {
    let (n, unit) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (v, 1)
    };
    Ok(number::<u64>(n)? * unit)
}

/// A ratio such as `2.0` or `1.5`, in thousandths.
fn milli(v: &str) -> Result<u32, String> {
    let (whole, frac) = v.split_once('.').unwrap_or((v, ""));
    let frac = format!("{frac:0<3}");
    if frac.len() > 3 {
        return Err(format!("ratio `{v}` has more than 3 decimals"));
    }
    Ok(number::<u32>(whole)? * 1000 + number::<u32>(&frac)?)
}

fn driver(v: &str) -> Result<DriverKind, String> {
    DriverKind::parse(v).ok_or(format!("unknown driver `{v}`"))
}

fn labels(v: &str) -> Result<Vec<Label>, String> {
    v.split(',')
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .ok_or(format!("label `{l}` is not key=value"))?;
            Ok(Label::new(k, v))
        })
        .collect()
}

fn request_id(v: &str) -> Result<RequestId, String> {
    let n = v
        .strip_prefix('r')
        .ok_or(format!("request ids look like r1, not `{v}`"))?;
    Ok(RequestId(number(n)?))
}

struct Runner {
    templates: Vec<Template>,
    s: Scheduler,
    now_ms: u64,
    host_names: BTreeMap<HostId, String>,
    out: String,
}

impl Runner {
    fn handle(&mut self, line_no: usize, input: Input) {
        let shown = format!("{input:?}");
        if let Err(e) = self.s.handle(self.now_ms, input) {
            panic!("fixture line {line_no}: input {shown} refused: {e}");
        }
    }

    fn host_id(&self, line_no: usize, name: &str) -> HostId {
        match self.host_names.iter().find(|(_, n)| *n == name) {
            Some((&id, _)) => id,
            None => panic!("fixture line {line_no}: no host `{name}`"),
        }
    }

    fn vms_of(&self, request: RequestId, state: VmState) -> Vec<berth_sched::VmId> {
        self.s
            .vms()
            .into_iter()
            .filter(|v| v.request == request && v.state == state)
            .map(|v| v.id)
            .collect()
    }

    fn step(&mut self, line_no: usize, step: Step) {
        match step {
            Step::Host(spec) => {
                let probe = Input::Probe {
                    host: spec.id,
                    result: Ok(ProbeReport {
                        vcpus: spec.vcpus,
                        memory_mib: spec.memory_mib,
                        images: spec.images.clone(),
                    }),
                };
                self.host_names.insert(spec.id, spec.name.clone());
                self.handle(line_no, Input::AddHost(spec));
                self.handle(line_no, probe);
                self.render(false);
            }
            Step::Request {
                mut spec,
                cpu,
                memory_mib,
            } => {
                if cpu.is_some() || memory_mib.is_some() {
                    let default = self
                        .templates
                        .iter()
                        .find(|t| *t.name == spec.template)
                        .map_or(
                            Shape {
                                vcpus: 1,
                                memory_mib: 1,
                            },
                            |t| t.default_shape,
                        );
                    spec.shape = Some(Shape {
                        vcpus: cpu.unwrap_or(default.vcpus),
                        memory_mib: memory_mib.unwrap_or(default.memory_mib),
                    });
                }
                self.handle(line_no, Input::Submit(spec));
                self.render(true);
            }
            Step::At(t) => {
                self.now_ms = t;
                self.out.push_str(&format!("> at {t} ms\n"));
                self.handle(line_no, Input::Tick);
                self.render(true);
            }
            Step::Start(r) => {
                self.out.push_str(&format!("> start {r}\n"));
                for vm in self.vms_of(r, VmState::Placed) {
                    self.handle(line_no, Input::ProvisionStarted(vm));
                    self.handle(line_no, Input::ProvisionDone { vm, result: Ok(()) });
                    self.handle(line_no, Input::BootDone { vm, result: Ok(()) });
                }
                self.render(true);
            }
            Step::Finish(r) => {
                self.out.push_str(&format!("> finish {r}\n"));
                let running = self.vms_of(r, VmState::Running);
                for &vm in &running {
                    self.handle(line_no, Input::JobFinished { vm, passed: true });
                }
                // The destroys this asked for complete at once.
                for vm in running {
                    self.handle(line_no, Input::DestroyDone { vm, result: Ok(()) });
                }
                self.render(true);
            }
            Step::Drain(h) => self.operator(line_no, "drain", &h, Input::Drain),
            Step::Resume(h) => self.operator(line_no, "resume", &h, Input::Resume),
            Step::Offline(h) => self.operator(line_no, "offline", &h, Input::Offline),
            Step::Why => {
                self.out.push_str("> why\n");
                self.whys();
            }
            Step::Cancel(r) => {
                self.out.push_str(&format!("> cancel {r}\n"));
                self.handle(line_no, Input::Cancel(r));
                self.render(true);
            }
        }
    }

    fn operator(&mut self, line_no: usize, word: &str, host: &str, input: fn(HostId) -> Input) {
        let id = self.host_id(line_no, host);
        self.out.push_str(&format!("> {word} {host}\n"));
        self.handle(line_no, input(id));
        self.render(true);
    }

    /// Drains actions and events into the output. Destroy actions are left to `finish`.
    fn render(&mut self, show_hosts: bool) {
        while let Some(action) = self.s.poll_action() {
            if let Action::Provision {
                vm, request, host, ..
            } = action
            {
                let name = &self.host_names[&host];
                self.out.push_str(&format!("{vm} {request} -> {name}\n"));
            }
        }
        while let Some(event) = self.s.poll_event() {
            match event {
                Event::Request {
                    request, to, cause, ..
                } if to.is_terminal() => {
                    let line = match to {
                        RequestState::Done => format!("{request} done\n"),
                        _ => format!("{request} {to}: {cause}\n"),
                    };
                    self.out.push_str(&line);
                }
                Event::Vm { vm, to, cause, .. }
                    if matches!(to, VmState::Lost | VmState::Failed) =>
                {
                    self.out.push_str(&format!("{vm} {to}: {cause}\n"));
                }
                Event::Host {
                    host,
                    from: Some(from),
                    to: Some(to),
                    cause,
                    ..
                } if show_hosts => {
                    let name = &self.host_names[&host];
                    self.out
                        .push_str(&format!("{name} {from} -> {to}: {cause}\n"));
                }
                _ => {}
            }
        }
    }

    fn whys(&mut self) {
        for id in self.s.queue() {
            if let Some(why) = self.s.why(id) {
                self.out.push_str(&format!("{id} waits: {why}\n"));
            }
        }
    }

    fn finish(mut self) -> String {
        self.render(true);
        self.whys();
        self.out
    }
}
