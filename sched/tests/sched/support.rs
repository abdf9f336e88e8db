//! Shared helpers: a scheduler that is polled after every input and hands back what came out,
//! plus one-line renderings of events for assertions and snapshots.

use berth_sched::{
    Action, Config, DriverKind, Event, GuestOs, HostId, HostSpec, HostView, Input, InputError,
    ProbeReport, RequestSpec, Scheduler, Shape, Template, VmId, VmState,
};

pub const GIB: u64 = 1024;

/// Linux guests: 2 vCPUs, 4 GiB, on libvirt or simulated hosts.
pub fn linux() -> Template {
    let mut t = Template::new(
        "linux",
        Shape {
            vcpus: 2,
            memory_mib: 4 * GIB,
        },
    );
    t.base_image = "linux-base".into();
    t.drivers = vec![DriverKind::Libvirt, DriverKind::Sim];
    t.expected_run_ms = 600_000;
    t
}

/// macOS guests: 4 vCPUs, 8 GiB, one `macos` slot each, on Parallels or simulated hosts.
pub fn macos() -> Template {
    let mut t = Template::new(
        "macos",
        Shape {
            vcpus: 4,
            memory_mib: 8 * GIB,
        },
    );
    t.base_image = "macos-base".into();
    t.guest_os = GuestOs::Macos;
    t.drivers = vec![DriverKind::Parallels, DriverKind::Sim];
    t.slot = Some("macos".into());
    t
}

/// The default configuration with the `linux` and `macos` templates.
pub fn config() -> Config {
    Config {
        templates: vec![linux(), macos()],
        ..Config::default()
    }
}

/// A simulated host named `h{id}`.
pub fn host(id: u64, vcpus: u32, memory_gib: u64) -> HostSpec {
    HostSpec::new(
        id,
        &format!("h{id}"),
        DriverKind::Sim,
        vcpus,
        memory_gib * GIB,
    )
}

/// A successful probe that confirms what the spec says.
pub fn probe_ok(spec: &HostSpec) -> Input {
    Input::Probe {
        host: spec.id,
        result: Ok(ProbeReport {
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            images: spec.images.clone(),
        }),
    }
}

/// What one input (and the poll after it) produced.
#[derive(Debug, Default)]
pub struct Polled {
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
}

impl Polled {
    /// `(vm, host)` of every Provision action, in order.
    pub fn provisions(&self) -> Vec<(VmId, HostId)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Provision { vm, host, .. } => Some((*vm, *host)),
                _ => None,
            })
            .collect()
    }

    /// `(vm, host)` of every Destroy action, in order.
    pub fn destroys(&self) -> Vec<(VmId, HostId)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Destroy { vm, host } => Some((*vm, *host)),
                _ => None,
            })
            .collect()
    }

    /// The events, one line each.
    pub fn log(&self) -> String {
        log(&self.events)
    }
}

/// A scheduler driven the way the daemon drives it: every input is followed by a full poll.
pub struct World {
    pub s: Scheduler,
    pub now_ms: u64,
}

impl World {
    pub fn new(config: Config) -> World {
        World {
            s: Scheduler::new(config),
            now_ms: 0,
        }
    }

    /// Sets the clock for the following inputs.
    pub fn at(&mut self, now_ms: u64) -> &mut World {
        self.now_ms = now_ms;
        self
    }

    pub fn poll(&mut self) -> Polled {
        let mut out = Polled::default();
        while let Some(a) = self.s.poll_action() {
            out.actions.push(a);
        }
        while let Some(e) = self.s.poll_event() {
            out.events.push(e);
        }
        out
    }

    /// Applies an input and polls; a refused input is returned as its error.
    pub fn try_input(&mut self, input: Input) -> Result<Polled, InputError> {
        self.s.handle(self.now_ms, input)?;
        Ok(self.poll())
    }

    /// Applies an input that must be accepted, and polls.
    pub fn input(&mut self, input: Input) -> Polled {
        let shown = format!("{input:?}");
        match self.try_input(input) {
            Ok(p) => p,
            Err(e) => panic!("input {shown} refused: {e}"),
        }
    }

    /// Adds a host and probes it `Ready`.
    pub fn ready_host(&mut self, spec: HostSpec) -> Polled {
        let probe = probe_ok(&spec);
        let mut out = self.input(Input::AddHost(spec));
        let more = self.input(probe);
        out.actions.extend(more.actions);
        out.events.extend(more.events);
        out
    }

    pub fn submit(&mut self, spec: RequestSpec) -> Polled {
        self.input(Input::Submit(spec))
    }

    /// Provisions and boots a placed VM, ready to run its job.
    pub fn bring_up(&mut self, vm: VmId) -> Polled {
        let mut out = self.input(Input::ProvisionStarted(vm));
        for input in [
            Input::ProvisionDone { vm, result: Ok(()) },
            Input::BootDone { vm, result: Ok(()) },
        ] {
            let more = self.input(input);
            out.actions.extend(more.actions);
            out.events.extend(more.events);
        }
        out
    }

    pub fn destroyed(&mut self, vm: VmId) -> Polled {
        self.input(Input::DestroyDone { vm, result: Ok(()) })
    }

    /// Passes the VM's job and completes its destroy.
    pub fn finish(&mut self, vm: VmId) -> Polled {
        let mut out = self.input(Input::JobFinished { vm, passed: true });
        let more = self.destroyed(vm);
        out.actions.extend(more.actions);
        out.events.extend(more.events);
        out
    }

    /// Moves the clock to `t` and fires due timers.
    pub fn tick_at(&mut self, t: u64) -> Polled {
        self.at(t).input(Input::Tick)
    }

    pub fn vm_state(&self, vm: VmId) -> Option<VmState> {
        self.s.vm(vm).map(|v| v.state)
    }

    pub fn host(&self, id: u64) -> HostView<'_> {
        self.s
            .host(HostId(id))
            .unwrap_or_else(|| panic!("no host h{id}"))
    }
}

/// One line for an event, e.g. `vm1 r1@h1 placed -> provisioning (provisioning started)`.
pub fn show(e: &Event) -> String {
    match e {
        Event::Vm {
            vm,
            request,
            host,
            from,
            to,
            cause,
            ..
        } => {
            let at = host.map(|h| format!("@{h}")).unwrap_or_default();
            let from = from.map_or("new", |s| s.name());
            format!("{vm} {request}{at} {from} -> {to} ({cause})")
        }
        Event::Request {
            request,
            from,
            to,
            cause,
            ..
        } => {
            let from = from.map_or("new", |s| s.name());
            format!("{request} {from} -> {to} ({cause})")
        }
        Event::Host {
            host,
            from,
            to,
            cause,
            ..
        } => {
            let from = from.map_or("new", |s| s.name());
            let to = to.map_or("removed", |s| s.name());
            format!("{host} {from} -> {to} ({cause})")
        }
    }
}

pub fn log(events: &[Event]) -> String {
    let mut out = String::new();
    for e in events {
        out.push_str(&show(e));
        out.push('\n');
    }
    out
}

/// Builder-style tweaks for specs: `RequestSpec::new(1, "linux", 2).tap(|r| r.gang = true)`.
pub trait Tap: Sized {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

impl Tap for RequestSpec {}
impl Tap for HostSpec {}
impl Tap for Config {}
