//! The simulated driver: in-memory hosts that provision, boot and destroy VMs with modelled
//! latency (`berth_latency`'s models, which the simulator uses too, scaled), keep an inventory
//! of the VMs they run, and fail when told to.
//!
//! Simulated hosts live inside the process that drives them, so a crashed daemon would take
//! their inventory with it and recovery would have nothing to reconcile against. A [`SimWorld`]
//! opened with a path therefore keeps its inventory in an append-only file (one line per VM
//! created, booted or destroyed); reopening the file after `kill -9` gives back exactly the VMs
//! the hosts ran, as a real hypervisor would.
//!
//! A [`SimWorld`] made with [`SimWorld::shared`] keeps its inventory in a directory that several
//! processes share (daemons on one database, in turn or at once), so that each sees what the
//! others did and tests can prove from the hosts' side that no VM was made twice or lost. Only
//! the inventory is shared: injected failures, hosts taken down, hung boots, images and the
//! latency model stay with each process. The directory holds:
//!
//! - `HOST/VM`: one directory per host, one file per VM, named as the VM. Its content is one
//!   line, `booted=BOOL created_ms=MS` (`true` or `false`; milliseconds since the Unix epoch,
//!   wall clock). Provisioning creates it exclusively, so of two processes provisioning one name
//!   one creates it and the other adopts it, as the driver contract asks; booting replaces it
//!   whole, destroying removes it. Files and directories whose names start with `.` are the
//!   hosts' lock files and files being written: readers skip them.
//! - `actions`: one line per driver call that changed a host or found its VM already made,
//!   `AT_MS<TAB>PID<TAB>OP<TAB>HOST<TAB>VM` with `OP` one of `provision` (made the VM), `adopt`
//!   (a provision that found it there), `boot` (started it) and `destroy` (removed it); `AT_MS`
//!   is the wall clock in milliseconds, `PID` the process's id. A call that found nothing to do
//!   (booting a running VM, destroying a missing one) writes nothing, and neither do
//!   [`SimWorld::plant`] and [`SimWorld::vanish`], which act behind berth's back. Each line is
//!   one `write` on a file opened with `O_APPEND`, so lines of several processes never mix.
//!
//! `berth_testkit::sim` reads both for tests; keep the two in step.
//!
//! A simulated host keeps a simulated image store: pulling an image ahead of demand adds its
//! name to the host's images at once, and evicting removes it unless a VM made from it is there.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use berth_latency::{Latency, Op, Profile};
use berth_sched::{DriverKind, GuestOs};

use crate::{ConsoleAddress, Driver, DriverError, HostFacts, VmListing, VmRecipe, parse_vm_name};

mod shared;

use shared::{Booted, Created, SharedInventory};

/// A 1×1 grey PNG: the simulated screen.
const SCREEN_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x3a, 0x7e, 0x9b,
    0x55, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x68, 0x00, 0x00, 0x00,
    0x82, 0x00, 0x81, 0x77, 0xcd, 0x72, 0xb6, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

/// What simulated hosts name as their image store.
pub const SIM_IMAGE_STORE: &str = "simulated";

/// The first VNC port of simulated consoles.
const VNC_PORT_BASE: u16 = 5900;

/// Which driver call an injected failure hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimOp {
    Probe,
    Provision,
    Boot,
    Destroy,
}

/// What an injected failure looks like to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimFault {
    Transient,
    Host,
    Request,
}

/// Why a simulated world could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SimWorldError {
    #[error("reading simulated inventory {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing simulated inventory {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("simulated inventory {path}, line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// A VM of an inventory kept in this process. In a shared world the VM files hold what every
/// process knows (whether it is booted); these entries keep only the guest and image of the VMs
/// this process made.
#[derive(Clone, Debug, Default)]
struct SimVm {
    booted: bool,
    /// Its guest, for the boot-time model; unknown for VMs read back from the inventory file.
    os: Option<GuestOs>,
    /// The base image it was made from; unknown for VMs read back from the inventory file.
    image: Option<String>,
}

#[derive(Debug, Default)]
struct HostInventory {
    vms: BTreeMap<String, SimVm>,
    /// Unreachable: every call fails as transient.
    down: bool,
    /// Injected failures still to come, per call.
    faults: BTreeMap<SimOp, Vec<SimFault>>,
    /// Boots still to come that never return.
    hung_boots: usize,
    /// The base images it holds, once a driver for it was made (its configured images then).
    images: Option<std::collections::BTreeSet<String>>,
}

#[derive(Debug)]
struct WorldState {
    hosts: BTreeMap<String, HostInventory>,
    log: Option<(PathBuf, File)>,
    latency: Latency,
}

/// The state every simulated host of one daemon shares: inventories, injected failures, the
/// latency model and the optional inventory file or shared inventory directory.
#[derive(Debug)]
pub struct SimWorld {
    state: Mutex<WorldState>,
    /// The inventory several processes share, for a world made with [`SimWorld::shared`].
    shared: Option<SharedInventory>,
    /// Multiplies every modelled latency: 1.0 is realistic (Linux boots in ~20 s), 0.0 instant.
    latency_scale: f64,
}

impl SimWorld {
    /// A world that keeps its inventory in memory only.
    pub fn in_memory(latency_scale: f64, seed: u64) -> Arc<SimWorld> {
        Arc::new(SimWorld {
            state: Mutex::new(WorldState {
                hosts: BTreeMap::new(),
                log: None,
                latency: Latency::new(Profile::Default, seed),
            }),
            shared: None,
            latency_scale: latency_scale.max(0.0),
        })
    }

    /// A world whose inventory survives the process in `path` (created if missing).
    pub fn open(
        path: &Path,
        latency_scale: f64,
        seed: u64,
    ) -> Result<Arc<SimWorld>, SimWorldError> {
        let mut hosts: BTreeMap<String, HostInventory> = BTreeMap::new();
        match File::open(path) {
            Ok(file) => {
                for (i, line) in BufReader::new(file).lines().enumerate() {
                    let line = line.map_err(|source| SimWorldError::Read {
                        path: path.to_owned(),
                        source,
                    })?;
                    apply_log_line(&mut hosts, &line).map_err(|message| SimWorldError::Parse {
                        path: path.to_owned(),
                        line: i + 1,
                        message,
                    })?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SimWorldError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        // Compact: rewrite the file with only what exists now, then append from there.
        let write_err = |source| SimWorldError::Write {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension("tmp");
        {
            let mut out = io::BufWriter::new(File::create(&tmp).map_err(write_err)?);
            for (host, inv) in &hosts {
                for (name, vm) in &inv.vms {
                    writeln!(out, "+\t{host}\t{name}").map_err(write_err)?;
                    if vm.booted {
                        writeln!(out, "b\t{host}\t{name}").map_err(write_err)?;
                    }
                }
            }
            out.flush().map_err(write_err)?;
        }
        fs::rename(&tmp, path).map_err(write_err)?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(write_err)?;
        Ok(Arc::new(SimWorld {
            state: Mutex::new(WorldState {
                hosts,
                log: Some((path.to_owned(), file)),
                latency: Latency::new(Profile::Default, seed),
            }),
            shared: None,
            latency_scale: latency_scale.max(0.0),
        }))
    }

    /// A world whose inventory lives in the directory `dir` (created if missing), which other
    /// processes may share; see the module's documentation for its layout.
    pub fn shared(
        dir: &Path,
        latency_scale: f64,
        seed: u64,
    ) -> Result<Arc<SimWorld>, SimWorldError> {
        Ok(Arc::new(SimWorld {
            state: Mutex::new(WorldState {
                hosts: BTreeMap::new(),
                log: None,
                latency: Latency::new(Profile::Default, seed),
            }),
            shared: Some(SharedInventory::open(dir)?),
            latency_scale: latency_scale.max(0.0),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, WorldState> {
        // A panic while holding the lock leaves plain data behind, still consistent per line.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A driver for the simulated host `name` with the given capacity.
    pub fn host(
        self: &Arc<SimWorld>,
        name: &str,
        vcpus: u32,
        memory_mib: u64,
        images: Vec<String>,
    ) -> SimHost {
        let mut st = self.lock();
        let inv = st.hosts.entry(name.to_owned()).or_default();
        if inv.images.is_none() {
            inv.images = Some(images.iter().cloned().collect());
        }
        drop(st);
        SimHost {
            world: self.clone(),
            name: name.to_owned(),
            facts: HostFacts {
                vcpus,
                memory_mib,
                images,
            },
        }
    }

    /// Makes the next `times` calls of `op` on `host` fail with `fault`.
    pub fn inject(&self, host: &str, op: SimOp, fault: SimFault, times: usize) {
        let mut st = self.lock();
        let faults = st
            .hosts
            .entry(host.to_owned())
            .or_default()
            .faults
            .entry(op)
            .or_default();
        faults.extend(std::iter::repeat_n(fault, times));
    }

    /// Makes the next `times` boots on `host` never return, as if the daemon died in the
    /// middle of them (tests stop the daemon then, and start it again).
    pub fn hang_boots(&self, host: &str, times: usize) {
        self.lock()
            .hosts
            .entry(host.to_owned())
            .or_default()
            .hung_boots += times;
    }

    /// Takes a host off the network (every call fails as transient) or brings it back.
    pub fn set_down(&self, host: &str, down: bool) {
        self.lock().hosts.entry(host.to_owned()).or_default().down = down;
    }

    /// The names of the VMs a host runs now. In a shared world, a directory that cannot be read
    /// is logged and reads as empty.
    pub fn inventory(&self, host: &str) -> Vec<String> {
        if let Some(shared) = &self.shared {
            return match shared.list(host) {
                Ok(vms) => vms.into_iter().map(|(name, _)| name).collect(),
                Err(error) => {
                    tracing::error!(host, %error, "cannot read the shared simulated inventory");
                    Vec::new()
                }
            };
        }
        self.lock()
            .hosts
            .get(host)
            .map(|h| h.vms.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every host's VMs: `(host, vm name)`. In a shared world, every host's that has a
    /// directory; one that cannot be read is logged and left out.
    pub fn all_vms(&self) -> Vec<(String, String)> {
        if let Some(shared) = &self.shared {
            let hosts = shared.hosts().unwrap_or_else(|error| {
                tracing::error!(%error, "cannot read the shared simulated inventory");
                Vec::new()
            });
            return hosts
                .into_iter()
                .flat_map(|host| {
                    self.inventory(&host)
                        .into_iter()
                        .map(move |vm| (host.clone(), vm))
                })
                .collect();
        }
        self.lock()
            .hosts
            .iter()
            .flat_map(|(h, inv)| inv.vms.keys().map(move |v| (h.clone(), v.clone())))
            .collect()
    }

    /// Puts a VM on a host behind berth's back (tests use it to make orphans).
    pub fn plant(&self, host: &str, name: &str) {
        if let Some(shared) = &self.shared {
            if let Err(error) = shared.plant(host, name) {
                tracing::error!(host, vm = name, %error, "cannot plant a simulated vm");
            }
            return;
        }
        let mut st = self.lock();
        st.hosts.entry(host.to_owned()).or_default().vms.insert(
            name.to_owned(),
            SimVm {
                booted: true,
                os: None,
                image: None,
            },
        );
        log(&mut st, '+', host, name);
        log(&mut st, 'b', host, name);
    }

    /// Removes a VM behind berth's back (tests use it to make VMs go missing).
    pub fn vanish(&self, host: &str, name: &str) {
        if let Some(shared) = &self.shared {
            if let Err(error) = shared.vanish(host, name) {
                tracing::error!(host, vm = name, %error, "cannot remove a simulated vm");
            }
            self.forget(host, name);
            return;
        }
        let mut st = self.lock();
        if let Some(inv) = st.hosts.get_mut(host) {
            inv.vms.remove(name);
        }
        log(&mut st, '-', host, name);
    }

    /// Drops what this process knew of a VM of a shared world (its guest and image).
    fn forget(&self, host: &str, name: &str) {
        if let Some(inv) = self.lock().hosts.get_mut(host) {
            inv.vms.remove(name);
        }
    }

    fn delay(&self, op: Op, os: GuestOs) -> Duration {
        if self.latency_scale == 0.0 {
            return Duration::ZERO;
        }
        let ms = self.lock().latency.sample(op, DriverKind::Sim, os);
        Duration::from_secs_f64(ms as f64 * self.latency_scale / 1000.0)
    }

    /// Fails the call if the host is down or a failure was injected for it.
    fn check(&self, host: &str, op: SimOp) -> Result<(), DriverError> {
        let mut st = self.lock();
        let inv = st.hosts.entry(host.to_owned()).or_default();
        let err = |fault: SimFault, message: &str| {
            let (host, message) = (host.to_owned(), message.to_owned());
            match fault {
                SimFault::Transient => DriverError::Transient { host, message },
                SimFault::Host => DriverError::Host { host, message },
                SimFault::Request => DriverError::Request { host, message },
            }
        };
        if inv.down {
            return Err(err(SimFault::Transient, "host unreachable (simulated)"));
        }
        if let Some(faults) = inv.faults.get_mut(&op)
            && !faults.is_empty()
        {
            let fault = faults.remove(0);
            return Err(err(fault, "injected failure (simulated)"));
        }
        Ok(())
    }
}

/// Applies one inventory line (`+`, `b` or `-`, tab, host, tab, VM name).
fn apply_log_line(hosts: &mut BTreeMap<String, HostInventory>, line: &str) -> Result<(), String> {
    if line.is_empty() {
        return Ok(());
    }
    let mut parts = line.split('\t');
    let (Some(op), Some(host), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("expected `op<TAB>host<TAB>vm`, got {line:?}"));
    };
    let inv = hosts.entry(host.to_owned()).or_default();
    match op {
        "+" => {
            inv.vms.entry(name.to_owned()).or_default();
        }
        "b" => {
            if let Some(vm) = inv.vms.get_mut(name) {
                vm.booted = true;
            }
        }
        "-" => {
            inv.vms.remove(name);
        }
        other => return Err(format!("unknown op {other:?}")),
    }
    Ok(())
}

fn log(st: &mut WorldState, op: char, host: &str, name: &str) {
    if let Some((path, file)) = &mut st.log {
        // One write per line with O_APPEND: a line is whole or absent after a kill.
        let line = format!("{op}\t{host}\t{name}\n");
        if let Err(error) = file.write_all(line.as_bytes()) {
            tracing::error!(path = %path.display(), %error, "cannot write simulated inventory");
        }
    }
}

/// One simulated host.
#[derive(Debug, Clone)]
pub struct SimHost {
    world: Arc<SimWorld>,
    name: String,
    facts: HostFacts,
}

impl SimHost {
    pub fn world(&self) -> &Arc<SimWorld> {
        &self.world
    }
}

#[async_trait]
impl Driver for SimHost {
    fn kind(&self) -> DriverKind {
        DriverKind::Sim
    }

    fn host(&self) -> &str {
        &self.name
    }

    async fn probe(&self) -> Result<HostFacts, DriverError> {
        self.world.check(&self.name, SimOp::Probe)?;
        let mut facts = self.facts.clone();
        if let Some(images) = self
            .world
            .lock()
            .hosts
            .get(&self.name)
            .and_then(|inv| inv.images.as_ref())
        {
            facts.images = images.iter().cloned().collect();
        }
        Ok(facts)
    }

    async fn provision(&self, vm: &VmRecipe) -> Result<(), DriverError> {
        self.world.check(&self.name, SimOp::Provision)?;
        if let Some(shared) = &self.world.shared {
            // Made by an earlier attempt, of this daemon or another: adopt it, as a real host
            // would let any berth adopt a VM berth made.
            if shared.create(&self.name, &vm.name)? == Created::Existed {
                return Ok(());
            }
            let mut st = self.world.lock();
            let inv = st.hosts.entry(self.name.clone()).or_default();
            inv.vms.insert(
                vm.name.clone(),
                SimVm {
                    booted: false,
                    os: Some(vm.guest_os),
                    image: Some(vm.base_image.clone()),
                },
            );
        } else {
            let mut st = self.world.lock();
            let inv = st.hosts.entry(self.name.clone()).or_default();
            if inv.vms.contains_key(&vm.name) {
                // Made by an earlier attempt that the daemon did not see finish: adopt it.
                return Ok(());
            }
            // The disk exists from the first moment, so a crash mid-provision leaves a VM behind.
            inv.vms.insert(
                vm.name.clone(),
                SimVm {
                    booted: false,
                    os: Some(vm.guest_os),
                    image: Some(vm.base_image.clone()),
                },
            );
            log(&mut st, '+', &self.name, &vm.name);
        }
        tokio::time::sleep(self.world.delay(Op::Provision, vm.guest_os)).await;
        Ok(())
    }

    async fn boot(&self, name: &str) -> Result<(), DriverError> {
        self.world.check(&self.name, SimOp::Boot)?;
        let hang = {
            let mut st = self.world.lock();
            let inv = st.hosts.entry(self.name.clone()).or_default();
            let hang = inv.hung_boots > 0;
            inv.hung_boots = inv.hung_boots.saturating_sub(1);
            hang
        };
        if hang {
            std::future::pending::<()>().await;
        }
        let found = match &self.world.shared {
            Some(shared) => shared.get(&self.name, name)?.map(|vm| {
                let st = self.world.lock();
                let os = st
                    .hosts
                    .get(&self.name)
                    .and_then(|inv| inv.vms.get(name))
                    .and_then(|vm| vm.os);
                (vm.booted, os.unwrap_or(GuestOs::Linux))
            }),
            None => {
                let st = self.world.lock();
                st.hosts
                    .get(&self.name)
                    .and_then(|inv| inv.vms.get(name))
                    .map(|vm| (vm.booted, vm.os.unwrap_or(GuestOs::Linux)))
            }
        };
        let os = match found {
            None => {
                return Err(DriverError::Host {
                    host: self.name.clone(),
                    message: format!("vm {name} is gone"),
                });
            }
            Some((true, _)) => return Ok(()),
            Some((false, os)) => os,
        };
        tokio::time::sleep(self.world.delay(Op::Boot, os)).await;
        if let Some(shared) = &self.world.shared {
            return match shared.boot(&self.name, name)? {
                Booted::Now | Booted::Already => Ok(()),
                Booted::Gone => Err(DriverError::Host {
                    host: self.name.clone(),
                    message: format!("vm {name} vanished while booting"),
                }),
            };
        }
        let mut st = self.world.lock();
        let vm = st
            .hosts
            .get_mut(&self.name)
            .and_then(|inv| inv.vms.get_mut(name));
        match vm {
            Some(vm) => {
                vm.booted = true;
                log(&mut st, 'b', &self.name, name);
                Ok(())
            }
            None => Err(DriverError::Host {
                host: self.name.clone(),
                message: format!("vm {name} vanished while booting"),
            }),
        }
    }

    async fn destroy(&self, name: &str) -> Result<(), DriverError> {
        self.world.check(&self.name, SimOp::Destroy)?;
        tokio::time::sleep(self.world.delay(Op::Destroy, GuestOs::Linux)).await;
        if let Some(shared) = &self.world.shared {
            shared.remove(&self.name, name)?;
            self.world.forget(&self.name, name);
            return Ok(());
        }
        let mut st = self.world.lock();
        let existed = st
            .hosts
            .get_mut(&self.name)
            .is_some_and(|inv| inv.vms.remove(name).is_some());
        if existed {
            log(&mut st, '-', &self.name, name);
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<VmListing>, DriverError> {
        self.world.check(&self.name, SimOp::Probe)?;
        if let Some(shared) = &self.world.shared {
            return Ok(shared
                .list(&self.name)?
                .into_iter()
                .map(|(name, vm)| VmListing {
                    name,
                    running: vm.booted,
                })
                .collect());
        }
        let st = self.world.lock();
        Ok(st
            .hosts
            .get(&self.name)
            .map(|inv| {
                inv.vms
                    .iter()
                    .map(|(name, vm)| VmListing {
                        name: name.clone(),
                        running: vm.booted,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn console(&self, name: &str) -> Result<ConsoleAddress, DriverError> {
        let exists = match &self.world.shared {
            Some(shared) => shared.get(&self.name, name)?.is_some(),
            None => self
                .world
                .lock()
                .hosts
                .get(&self.name)
                .is_some_and(|inv| inv.vms.contains_key(name)),
        };
        if !exists {
            return Err(DriverError::NoSuchVm {
                host: self.name.clone(),
                name: name.to_owned(),
            });
        }
        let n = parse_vm_name(name).unwrap_or(0);
        Ok(ConsoleAddress {
            host: self.name.clone(),
            port: VNC_PORT_BASE + (n % 1000) as u16,
            password: None,
        })
    }

    async fn screenshot(&self, name: &str) -> Result<Vec<u8>, DriverError> {
        self.console(name).await?;
        Ok(SCREEN_PNG.to_vec())
    }

    fn image_store(&self) -> Option<String> {
        Some(SIM_IMAGE_STORE.to_owned())
    }

    async fn pull_image(&self, image: &str) -> Result<(), DriverError> {
        self.world.check(&self.name, SimOp::Probe)?;
        let mut st = self.world.lock();
        let inv = st.hosts.entry(self.name.clone()).or_default();
        inv.images
            .get_or_insert_with(Default::default)
            .insert(image.to_owned());
        Ok(())
    }

    async fn evict_image(&self, image: &str) -> Result<(), DriverError> {
        self.world.check(&self.name, SimOp::Probe)?;
        // In a shared world, the VMs the host has now; of those, this process knows the images
        // of the ones it made.
        let on_host = match &self.world.shared {
            Some(shared) => Some(
                shared
                    .list(&self.name)?
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect::<std::collections::BTreeSet<_>>(),
            ),
            None => None,
        };
        let mut st = self.world.lock();
        let inv = st.hosts.entry(self.name.clone()).or_default();
        let users: Vec<String> = inv
            .vms
            .iter()
            .filter(|(name, _)| on_host.as_ref().is_none_or(|on| on.contains(*name)))
            .filter(|(_, vm)| vm.image.as_deref() == Some(image))
            .map(|(name, _)| format!("vm {name}"))
            .collect();
        let images = inv.images.get_or_insert_with(Default::default);
        if !images.contains(image) {
            return Err(DriverError::NoSuchImage {
                host: self.name.clone(),
                image: image.to_owned(),
            });
        }
        if !users.is_empty() {
            return Err(DriverError::ImageInUse {
                host: self.name.clone(),
                image: image.to_owned(),
                users,
            });
        }
        images.remove(image);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_sched::Shape;

    fn recipe(n: u64) -> VmRecipe {
        VmRecipe {
            name: crate::vm_name(n),
            template: "linux".into(),
            base_image: "linux".into(),
            guest_os: GuestOs::Linux,
            shape: Shape {
                vcpus: 2,
                memory_mib: 4096,
            },
            domain_type: None,
        }
    }

    #[tokio::test]
    async fn provision_boot_destroy_keep_the_inventory() {
        let world = SimWorld::in_memory(0.0, 1);
        let host = world.host("h1", 8, 32768, vec![]);
        host.provision(&recipe(1)).await.unwrap();
        assert_eq!(
            host.list().await.unwrap(),
            vec![VmListing {
                name: "berth-vm1".into(),
                running: false
            }]
        );
        host.boot("berth-vm1").await.unwrap();
        assert!(host.list().await.unwrap()[0].running);
        // Idempotent: provisioning again adopts, booting again returns at once.
        host.provision(&recipe(1)).await.unwrap();
        host.boot("berth-vm1").await.unwrap();
        host.destroy("berth-vm1").await.unwrap();
        host.destroy("berth-vm1").await.unwrap();
        assert!(host.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn injected_failures_say_whose_fault() {
        let world = SimWorld::in_memory(0.0, 1);
        let host = world.host("h1", 8, 32768, vec![]);
        world.inject("h1", SimOp::Provision, SimFault::Host, 1);
        let err = host.provision(&recipe(1)).await.unwrap_err();
        assert_eq!(err.kind(), berth_sched::FailureKind::Host);
        host.provision(&recipe(1)).await.unwrap();
        world.set_down("h1", true);
        assert!(host.probe().await.unwrap_err().is_transient());
        world.set_down("h1", false);
        assert_eq!(host.probe().await.unwrap().vcpus, 8);
    }

    #[tokio::test]
    async fn images_are_pulled_and_evicted_unless_a_vm_uses_them() {
        let world = SimWorld::in_memory(0.0, 1);
        let host = world.host("h1", 8, 32768, vec!["linux".into()]);
        assert_eq!(host.image_store().as_deref(), Some(SIM_IMAGE_STORE));
        host.pull_image("win11").await.unwrap();
        assert_eq!(host.probe().await.unwrap().images, vec!["linux", "win11"]);
        host.provision(&recipe(1)).await.unwrap();
        let e = host.evict_image("linux").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "base image linux on host h1 is in use by vm berth-vm1"
        );
        host.evict_image("win11").await.unwrap();
        assert_eq!(
            host.evict_image("win11").await.unwrap_err(),
            DriverError::NoSuchImage {
                host: "h1".into(),
                image: "win11".into()
            }
        );
        host.destroy("berth-vm1").await.unwrap();
        host.evict_image("linux").await.unwrap();
        assert!(host.probe().await.unwrap().images.is_empty());
        // A new driver for the same host keeps what the host holds.
        let again = world.host("h1", 8, 32768, vec!["linux".into()]);
        assert!(again.probe().await.unwrap().images.is_empty());
    }

    #[tokio::test]
    async fn latency_is_modelled_and_scaled() {
        let world = SimWorld::in_memory(0.001, 1);
        let host = world.host("h1", 8, 32768, vec![]);
        let start = std::time::Instant::now();
        host.provision(&recipe(1)).await.unwrap();
        host.boot("berth-vm1").await.unwrap();
        // About 3 s + 20 s modelled, scaled by 1/1000.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(5), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn inventory_file_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sim-inventory");
        {
            let world = SimWorld::open(&path, 0.0, 1).unwrap();
            let host = world.host("h1", 8, 32768, vec![]);
            host.provision(&recipe(1)).await.unwrap();
            host.provision(&recipe(2)).await.unwrap();
            host.boot("berth-vm2").await.unwrap();
            host.destroy("berth-vm1").await.unwrap();
        }
        let world = SimWorld::open(&path, 0.0, 1).unwrap();
        let host = world.host("h1", 8, 32768, vec![]);
        assert_eq!(
            host.list().await.unwrap(),
            vec![VmListing {
                name: "berth-vm2".into(),
                running: true
            }]
        );
        assert_eq!(world.all_vms(), vec![("h1".into(), "berth-vm2".into())]);
    }

    /// The actions of the log as `(op, host, vm)`, checking that each names this process.
    fn actions(dir: &Path) -> Vec<(SimActionOp, String, String)> {
        berth_testkit::sim_actions(dir)
            .into_iter()
            .map(|a| {
                assert_eq!(a.pid, std::process::id());
                (a.op, a.host, a.vm)
            })
            .collect()
    }

    fn act(op: SimActionOp, host: &str, vm: &str) -> (SimActionOp, String, String) {
        (op, host.into(), vm.into())
    }

    use berth_testkit::{SimActionOp, SimVmState};

    #[tokio::test]
    async fn shared_worlds_see_each_others_vms() {
        // Two worlds on one directory, as two daemons would have.
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            SimWorld::shared(dir.path(), 0.0, 1).unwrap(),
            SimWorld::shared(dir.path(), 0.0, 2).unwrap(),
        );
        let (host_a, host_b) = (
            a.host("h1", 8, 32768, vec![]),
            b.host("h1", 8, 32768, vec![]),
        );
        let started_ms = shared::now_ms();
        host_a.provision(&recipe(1)).await.unwrap();
        let not_running = vec![VmListing {
            name: "berth-vm1".into(),
            running: false,
        }];
        assert_eq!(host_b.list().await.unwrap(), not_running);

        // Provisioning the name again makes nothing: the VM is adopted, its file untouched.
        let before = berth_testkit::sim_inventory(dir.path());
        let created_ms = before["h1"]["berth-vm1"].created_ms;
        assert!(created_ms >= started_ms, "{created_ms} < {started_ms}");
        host_b.provision(&recipe(1)).await.unwrap();
        host_a.provision(&recipe(1)).await.unwrap();
        assert_eq!(berth_testkit::sim_inventory(dir.path()), before);

        host_b.boot("berth-vm1").await.unwrap();
        assert!(host_a.list().await.unwrap()[0].running);
        assert_eq!(
            berth_testkit::sim_inventory(dir.path())["h1"]["berth-vm1"],
            SimVmState {
                booted: true,
                created_ms
            }
        );
        host_a.boot("berth-vm1").await.unwrap();
        assert_eq!(host_a.console("berth-vm1").await.unwrap().port, 5901);

        host_a.destroy("berth-vm1").await.unwrap();
        assert!(host_b.list().await.unwrap().is_empty());
        assert!(b.inventory("h1").is_empty());
        // Gone on the other world too: booting it is an error, destroying it again is not.
        let err = host_b.boot("berth-vm1").await.unwrap_err();
        assert_eq!(err.to_string(), "host h1 failed: vm berth-vm1 is gone");
        host_b.destroy("berth-vm1").await.unwrap();
        assert_eq!(
            host_b.console("berth-vm1").await.unwrap_err(),
            DriverError::NoSuchVm {
                host: "h1".into(),
                name: "berth-vm1".into()
            }
        );

        // Behind berth's back: seen by both, and not driver actions.
        a.plant("h2", "berth-vm9");
        assert_eq!(b.all_vms(), vec![("h2".into(), "berth-vm9".into())]);
        b.vanish("h2", "berth-vm9");
        assert!(a.all_vms().is_empty());

        assert_eq!(
            actions(dir.path()),
            vec![
                act(SimActionOp::Provision, "h1", "berth-vm1"),
                act(SimActionOp::Adopt, "h1", "berth-vm1"),
                act(SimActionOp::Adopt, "h1", "berth-vm1"),
                act(SimActionOp::Boot, "h1", "berth-vm1"),
                act(SimActionOp::Destroy, "h1", "berth-vm1"),
            ]
        );
        let times: Vec<u64> = berth_testkit::sim_actions(dir.path())
            .iter()
            .map(|a| a.at_ms)
            .collect();
        assert!(times.is_sorted(), "{times:?}");
        assert!(times[0] >= started_ms, "{times:?}");
    }

    #[tokio::test]
    async fn faults_and_images_stay_with_each_world() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            SimWorld::shared(dir.path(), 0.0, 1).unwrap(),
            SimWorld::shared(dir.path(), 0.0, 1).unwrap(),
        );
        let (host_a, host_b) = (
            a.host("h1", 8, 32768, vec!["linux".into()]),
            b.host("h1", 8, 32768, vec!["linux".into()]),
        );
        a.set_down("h1", true);
        assert!(
            host_a
                .provision(&recipe(1))
                .await
                .unwrap_err()
                .is_transient()
        );
        host_b.provision(&recipe(1)).await.unwrap();
        a.set_down("h1", false);
        // b made the VM, so b knows its image; a does not, as a daemon after a takeover.
        assert!(matches!(
            host_b.evict_image("linux").await.unwrap_err(),
            DriverError::ImageInUse { .. }
        ));
        host_a.evict_image("linux").await.unwrap();
        assert_eq!(host_b.probe().await.unwrap().images, vec!["linux"]);
        // Once a destroyed it, b's image is free.
        host_a.destroy("berth-vm1").await.unwrap();
        host_b.evict_image("linux").await.unwrap();
    }

    #[tokio::test]
    async fn a_name_that_cannot_be_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let world = SimWorld::shared(dir.path(), 0.0, 1).unwrap();
        let err = world
            .host("..", 8, 32768, vec![])
            .provision(&recipe(1))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "host .. failed: simulated inventory: a shared simulated inventory cannot hold host \"..\": \
             the name starts with `.`"
        );
        let mut bad = recipe(1);
        bad.name = "a/b".into();
        let err = world.host("h1", 8, 32768, vec![]).provision(&bad).await;
        assert_eq!(err.unwrap_err().kind(), berth_sched::FailureKind::Request);
        assert!(berth_testkit::sim_actions(dir.path()).is_empty());
    }

    /// Worlds on threads, each with its own files as processes would have, provisioning,
    /// booting and destroying the same VMs at once: each VM is made once and destroyed once,
    /// and every line of the actions log is whole.
    #[test]
    fn concurrent_worlds_make_each_vm_once_and_write_whole_lines() {
        const N_WORLDS: usize = 6;
        const N_VMS: u64 = 40;
        let dir = tempfile::tempdir().unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(N_WORLDS));
        let threads: Vec<_> = (0..N_WORLDS)
            .map(|w| {
                let (dir, barrier) = (dir.path().to_owned(), barrier.clone());
                std::thread::spawn(move || {
                    let world = SimWorld::shared(&dir, 0.0, w as u64).unwrap();
                    let host = world.host("h1", 8, 32768, vec![]);
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .unwrap();
                    barrier.wait();
                    rt.block_on(async {
                        for n in 1..=N_VMS {
                            host.provision(&recipe(n)).await.unwrap();
                            host.boot(&crate::vm_name(n)).await.unwrap();
                        }
                        for n in 1..=N_VMS {
                            host.destroy(&crate::vm_name(n)).await.unwrap();
                        }
                    });
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let log = berth_testkit::sim_actions(dir.path());
        let mut count: BTreeMap<(SimActionOp, String), usize> = BTreeMap::new();
        for a in &log {
            assert_eq!(a.host, "h1");
            *count.entry((a.op, a.vm.clone())).or_default() += 1;
        }
        for n in 1..=N_VMS {
            let vm = crate::vm_name(n);
            let of = |op| count.get(&(op, vm.clone())).copied().unwrap_or(0);
            assert_eq!(of(SimActionOp::Provision), 1, "{vm}");
            assert_eq!(of(SimActionOp::Destroy), 1, "{vm}");
            assert_eq!(
                of(SimActionOp::Provision) + of(SimActionOp::Adopt),
                N_WORLDS,
                "{vm}"
            );
            // Booted once, or not at all if destroyed before its boot came.
            assert!(of(SimActionOp::Boot) <= 1, "{vm}");
        }
        assert_eq!(
            berth_testkit::sim_inventory(dir.path()),
            BTreeMap::from([("h1".to_owned(), BTreeMap::new())])
        );
    }
}
