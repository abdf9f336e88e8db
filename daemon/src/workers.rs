//! Driver workers and the host monitor: they carry out the scheduler's actions on each host's
//! driver with bounded concurrency, probe hosts periodically, and report every outcome to the
//! control loop as an input. A slow host only holds up its own workers.
//!
//! Each VM on a host has one task that runs its driver calls in order (provision, boot,
//! destroy), so a destroy never overtakes the provisioning it undoes, which would leave an
//! orphan behind.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_drivers::sim::SimWorld;
use berth_drivers::{Driver, DriverError, VmRecipe};
use berth_sched::{HostId, VmId};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::ProbeSection;
use crate::fleet::DriverDefaults;
use crate::wire::{WireFailure, WireHost, WireInput, WireProbe};

/// One driver call for one VM, with the name of the VM's object on the host it is made for:
/// a VM that took a warm VM's object and is placed again later has another.
type Call = (VmOp, String);

/// One driver call for one VM.
#[derive(Debug)]
pub(crate) enum VmOp {
    Provision(VmRecipe),
    /// Wait for the boot of a VM provisioned before a restart.
    Boot,
    /// Confirm that the VM's object on the host, a warm VM's that it took over, is there and
    /// booted (`boot` of a running VM returns at once, and fails for one that is gone).
    Handover,
    Destroy,
    /// Destroy a VM berth has no record of (found at reconciliation): no input to report.
    DestroyOrphan,
}

struct HostWorker {
    driver: Arc<dyn Driver>,
    permits: Arc<Semaphore>,
    probe: JoinHandle<()>,
    /// Wakes the probe loop for a probe now, reported even if nothing changed.
    kick: Arc<Notify>,
}

/// What workers tell the control loop, in their own words (the loop makes each an input).
#[derive(Debug)]
pub(crate) enum Report {
    /// A driver call ended, or a probe found a change: an input for the scheduler.
    Input(WireInput),
    /// What a host runs (its berth VMs' ids), listed from `started_ms` on.
    Listed {
        host: HostId,
        vms: Vec<u64>,
        started_ms: u64,
    },
    /// A worker finished destroying an orphan (or gave up).
    OrphanDestroyDone { vm: u64 },
    /// A host answered its probe with what it said last time.
    ProbeAnswered { host: HostId },
}

pub(crate) struct Workers {
    tx: mpsc::Sender<Report>,
    hosts: HashMap<HostId, HostWorker>,
    vms: HashMap<(VmId, HostId), mpsc::UnboundedSender<Call>>,
    probe: ProbeSection,
    grace_until: Instant,
    calls_per_host_max: usize,
    sim: Arc<SimWorld>,
    defaults: DriverDefaults,
    dispatched: u64,
}

impl Workers {
    pub(crate) fn new(
        tx: mpsc::Sender<Report>,
        probe: ProbeSection,
        calls_per_host_max: usize,
        sim: Arc<SimWorld>,
        defaults: DriverDefaults,
    ) -> Workers {
        let grace_until = Instant::now() + Duration::from_millis(probe.startup_grace_ms);
        Workers {
            tx,
            hosts: HashMap::new(),
            vms: HashMap::new(),
            probe,
            grace_until,
            calls_per_host_max,
            sim,
            defaults,
            dispatched: 0,
        }
    }

    /// Workers with this one's settings that drive nothing: no host is ever added to them,
    /// and their reports go nowhere. A follower's replica holds them (see `Control::replica`).
    pub(crate) fn inert(&self) -> Workers {
        Workers::new(
            mpsc::channel(1).0,
            self.probe.clone(),
            self.calls_per_host_max,
            self.sim.clone(),
            self.defaults.clone(),
        )
    }

    /// Builds the host's driver and starts probing it.
    pub(crate) fn add_host(&mut self, host: &WireHost) {
        let id = HostId(host.id);
        let driver = match crate::fleet::build_driver(host, &self.sim, &self.defaults) {
            Ok(d) => d,
            Err(e) => {
                // Hosts are checked when added, so this is a host journaled by a daemon that
                // had a driver this one lacks: it stays without workers.
                tracing::error!(host = %host.name, error = %e.message, "cannot build the host's driver");
                return;
            }
        };
        let kick = Arc::new(Notify::new());
        let probe = tokio::spawn(probe_loop(
            id,
            driver.clone(),
            self.tx.clone(),
            self.probe.clone(),
            self.grace_until,
            kick.clone(),
        ));
        if let Some(old) = self.hosts.insert(
            id,
            HostWorker {
                driver,
                permits: Arc::new(Semaphore::new(self.calls_per_host_max)),
                probe,
                kick,
            },
        ) {
            old.probe.abort();
        }
    }

    pub(crate) fn remove_host(&mut self, id: HostId) {
        if let Some(w) = self.hosts.remove(&id) {
            w.probe.abort();
        }
    }

    /// Asks for a probe of the host now (after a resume, which needs a fresh probe).
    pub(crate) fn kick(&self, id: HostId) {
        if let Some(w) = self.hosts.get(&id) {
            w.kick.notify_one();
        }
    }

    /// Lists the host's VMs in the background and reports them (`Report::Listed`).
    pub(crate) fn list_later(&self, id: HostId) {
        let Some(w) = self.hosts.get(&id) else {
            return;
        };
        let (driver, tx) = (w.driver.clone(), self.tx.clone());
        let timeout = Duration::from_millis(self.probe.timeout_ms.max(1));
        tokio::spawn(async move {
            if let Some(listed) = list_host(id, driver.as_ref(), timeout).await {
                let _ = tx.send(listed).await;
            }
        });
    }

    pub(crate) fn driver(&self, id: HostId) -> Option<Arc<dyn Driver>> {
        self.hosts.get(&id).map(|w| w.driver.clone())
    }

    /// Ends the task of a VM that no call will be made for again (a warm VM handed over: its
    /// object is the request's VM's now, and that VM's task makes its calls).
    pub(crate) fn forget(&mut self, vm: VmId, host: HostId) {
        self.vms.remove(&(vm, host));
    }

    /// Queues a driver call for VM `vm`, whose object on the host is named `name` (its own
    /// name, unless it took a warm VM's object), behind the calls already queued for it.
    pub(crate) fn send(&mut self, vm: VmId, name: String, host: HostId, op: VmOp) {
        self.dispatched += 1;
        // Now and then, forget the channels of tasks that have finished.
        if self.dispatched.is_multiple_of(4096) {
            self.vms.retain(|_, tx| !tx.is_closed());
        }
        let call = match self.vms.get(&(vm, host)) {
            Some(tx) => match tx.send((op, name)) {
                Ok(()) => return,
                Err(mpsc::error::SendError(call)) => call,
            },
            None => (op, name),
        };
        let Some(w) = self.hosts.get(&host) else {
            tracing::warn!(vm = %vm, host = %host, "action for a host without a driver");
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        // The receiver is alive until the task below ends; this send cannot fail.
        let _ = tx.send(call);
        self.vms.insert((vm, host), tx);
        tokio::spawn(vm_task(
            vm,
            w.driver.clone(),
            w.permits.clone(),
            rx,
            self.tx.clone(),
        ));
    }
}

fn failure(e: &DriverError) -> WireFailure {
    WireFailure::from(&e.to_failure())
}

async fn report(tx: &mpsc::Sender<Report>, input: WireInput) -> bool {
    tx.send(Report::Input(input)).await.is_ok()
}

/// Runs one VM's driver calls in order; ends after its destroy, or after a failed
/// provisioning (which leaves nothing on the host), once the calls queued by then are done.
/// Closing the channel first means no call can be queued to a task that is about to end:
/// the sender sees it closed and starts a new task.
async fn vm_task(
    vm: VmId,
    driver: Arc<dyn Driver>,
    permits: Arc<Semaphore>,
    mut rx: mpsc::UnboundedReceiver<Call>,
    tx: mpsc::Sender<Report>,
) {
    let mut next: Option<Call> = None;
    loop {
        let (op, name) = match next.take() {
            Some(call) => call,
            None => match rx.recv().await {
                Some(call) => call,
                None => return,
            },
        };
        match op {
            VmOp::Provision(recipe) => {
                report(&tx, WireInput::ProvisionStarted { vm: vm.0 }).await;
                let result = {
                    let _permit = permits.acquire().await;
                    driver.provision(&recipe).await
                };
                if let Err(e) = &result {
                    tracing::warn!(vm = %vm, host = driver.host(), error = %e, "provisioning failed");
                }
                let ok = result.is_ok();
                report(
                    &tx,
                    WireInput::ProvisionDone {
                        vm: vm.0,
                        result: result.map_err(|e| failure(&e)),
                    },
                )
                .await;
                if ok {
                    next = Some((VmOp::Boot, name));
                } else {
                    // Done with this VM here; ops already queued (a destroy after a cancel)
                    // still run, later ones go to a new task.
                    rx.close();
                }
            }
            VmOp::Boot => {
                // A destroy that arrives while the guest boots cuts the boot short.
                tokio::select! {
                    result = driver.boot(&name) => {
                        report(&tx, WireInput::BootDone {
                            vm: vm.0,
                            result: result.map_err(|e| failure(&e)),
                        }).await;
                    }
                    call = rx.recv() => match call {
                        Some(call) => next = Some(call),
                        None => return,
                    },
                }
            }
            VmOp::Handover => {
                // A destroy that arrives meanwhile goes first: the handover is moot then.
                tokio::select! {
                    result = driver.boot(&name) => {
                        let result = result.map_err(handover_failure);
                        if let Err(e) = &result {
                            tracing::warn!(vm = %vm, object = %name, host = driver.host(), error = %e, "handover failed");
                        }
                        report(&tx, WireInput::HandoverDone {
                            vm: vm.0,
                            result: result.map_err(|e| failure(&e)),
                        }).await;
                    }
                    call = rx.recv() => match call {
                        Some(call) => next = Some(call),
                        None => return,
                    },
                }
            }
            VmOp::Destroy | VmOp::DestroyOrphan => {
                let orphan = matches!(op, VmOp::DestroyOrphan);
                let result = {
                    let _permit = permits.acquire().await;
                    driver.destroy(&name).await
                };
                let ok = result.is_ok();
                if orphan {
                    match &result {
                        Ok(()) => {
                            tracing::info!(vm = %vm, host = driver.host(), "orphan destroyed")
                        }
                        Err(e) => {
                            tracing::warn!(vm = %vm, host = driver.host(), error = %e, "cannot destroy orphan")
                        }
                    }
                    let _ = tx.send(Report::OrphanDestroyDone { vm: vm.0 }).await;
                } else {
                    report(
                        &tx,
                        WireInput::DestroyDone {
                            vm: vm.0,
                            result: result.map_err(|e| failure(&e)),
                        },
                    )
                    .await;
                }
                // A failed destroy stays open: the scheduler sends the destroy again.
                if ok || orphan {
                    rx.close();
                }
            }
        }
    }
}

/// A handover's failure as the scheduler should take it: a warm VM that is gone (libvirt
/// says `NoSuchVm`, which would fail the whole request) is not the request's fault, and its VM
/// is placed again within the request's budget.
fn handover_failure(e: DriverError) -> DriverError {
    match e {
        DriverError::NoSuchVm { host, name } => DriverError::Transient {
            host,
            message: format!("warm vm {name} is gone"),
        },
        e => e,
    }
}

/// Lists a host's berth VMs (`Report::Listed`), or logs why it could not.
async fn list_host(host: HostId, driver: &dyn Driver, timeout: Duration) -> Option<Report> {
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    match tokio::time::timeout(timeout, driver.list()).await {
        Ok(Ok(listing)) => Some(Report::Listed {
            host,
            vms: listing
                .iter()
                .filter_map(|l| berth_drivers::parse_vm_name(&l.name))
                .collect(),
            started_ms,
        }),
        Ok(Err(e)) => {
            tracing::warn!(host = %host, error = %e, "cannot list vms");
            None
        }
        Err(_) => {
            tracing::warn!(host = %host, timeout_ms = timeout.as_millis() as u64, "listing vms timed out");
            None
        }
    }
}

/// Probes one host every interval and reports the result; during the start-up grace period
/// failures are not reported, so the daemon's own downtime does not count against hosts.
/// A host that answers is also listed every `list_interval_ms`.
async fn probe_loop(
    host: HostId,
    driver: Arc<dyn Driver>,
    tx: mpsc::Sender<Report>,
    probe: ProbeSection,
    grace_until: Instant,
    kick: Arc<Notify>,
) {
    let interval = Duration::from_millis(probe.interval_ms.max(1));
    let timeout = Duration::from_millis(probe.timeout_ms.max(1));
    let mut last_ok: Option<WireProbe> = None;
    let mut first = true;
    // Recovery lists every host at start.
    let mut listed_at = Instant::now();
    loop {
        let mut forced = first;
        if !first {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = kick.notified() => forced = true,
            }
        }
        first = false;
        let result = match tokio::time::timeout(timeout, driver.probe()).await {
            Ok(Ok(facts)) => Ok(WireProbe {
                vcpus: facts.vcpus,
                memory_mib: facts.memory_mib,
                images: facts.images,
            }),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("probe timed out after {} ms", probe.timeout_ms)),
        };
        let list_due = probe.list_interval_ms > 0
            && listed_at.elapsed() >= Duration::from_millis(probe.list_interval_ms);
        if result.is_ok() && list_due {
            listed_at = Instant::now();
            if let Some(listed) = list_host(host, driver.as_ref(), timeout).await
                && tx.send(listed).await.is_err()
            {
                return;
            }
        }
        match &result {
            Err(message) if Instant::now() < grace_until => {
                tracing::info!(host = %host, error = %message, "probe failed within the start-up grace period");
                continue;
            }
            Err(message) => tracing::warn!(host = %host, error = %message, "probe failed"),
            // An unchanged successful probe is not news: the journal need not grow with it,
            // but the operator's view of when the host last answered should.
            Ok(p) if !forced && last_ok.as_ref() == Some(p) => {
                if tx.send(Report::ProbeAnswered { host }).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(_) => {}
        }
        last_ok = result.as_ref().ok().cloned();
        if !report(
            &tx,
            WireInput::Probe {
                host: host.0,
                result,
            },
        )
        .await
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warm_vm_gone_at_its_handover_is_not_the_requests_fault() {
        let gone = handover_failure(DriverError::NoSuchVm {
            host: "kvm-1".into(),
            name: "berth-vm7".into(),
        });
        assert!(gone.is_transient(), "{gone:?}");
        assert_eq!(
            gone.to_string(),
            "transient failure on host kvm-1: warm vm berth-vm7 is gone"
        );
        let host = DriverError::Host {
            host: "kvm-1".into(),
            message: "hypervisor down".into(),
        };
        assert_eq!(handover_failure(host.clone()), host);
    }
}
