//! The libvirt driver: VMs on QEMU/KVM (or any hypervisor libvirt drives) at one libvirt URI,
//! booted from qcow2 overlays whose backing file is the template's base image.
//!
//! One [`LibvirtHost`] stands for one host, reached at a libvirt URI: `qemu:///system` for the
//! machine berth runs on, `qemu+ssh://user@host/system` for a remote one, `test:///default` in
//! tests. Everything goes through libvirt's API, disks included: the host's image directory is
//! a libvirt `dir` storage pool (found by its path, or started as a transient pool), and an
//! overlay is a pool volume with a `<backingStore>`, which libvirt creates with
//! `qemu-img create -f qcow2 -b BASE -F qcow2` on the host itself. That way a remote host needs
//! nothing but libvirtd. A base image the host lacks is pulled from the host's image store
//! (see [`crate::images`]) through libvirt's volume upload, so a `qemu+ssh://` host gets it the
//! same way; its digest is checked as it goes, and a pull cut short is never used.
//!
//! Files in the image directory:
//! - `NAME.qcow2`: the base image `NAME` (what [`Driver::probe`] reports and templates name);
//! - `NAME.qcow2.pulling`: present while `NAME.qcow2` is being pulled; a base image beside it is
//!   partial, so it is neither reported nor used, and the next pull starts it again;
//! - `NAME.qcow2.used`: an empty file made anew each time a VM is provisioned from `NAME.qcow2`,
//!   so its modification time says when the image was last used (what eviction under
//!   [`LibvirtConfig::image_budget_mib`] orders by);
//! - `berth-vmN.qcow2`: the overlay of VM `berth-vmN`;
//! - `berth-vmN.serial.log`: its serial console, as virtlogd writes it.
//!
//! libvirt's C calls block, so every call runs under `tokio::task::spawn_blocking`, bounded by
//! [`LibvirtConfig::call_timeout_ms`]. The driver keeps one connection open for its lifetime and
//! reopens it when libvirt reports it dead.
//!
//! This module holds the driver and its calls; `config` reads a host's options, `connection`
//! opens and keeps the connection, `xml` makes and reads the XML libvirt speaks, and
//! `screenshot` turns the screen libvirt hands over into a PNG.

mod config;
mod connection;
mod screenshot;
mod xml;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_sched::DriverKind;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::{Error as VirtError, ErrorDomain, ErrorNumber};
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

pub use config::{DEFAULT_IMAGE_DIR, LibvirtConfig, Network, OptionError};
pub use connection::uri_host;
use connection::{Connection, uri_is_local};
use screenshot::PNG_SIGNATURE;
pub use screenshot::{PpmError, ppm_to_png};
use xml::{
    DESCRIPTION_TAG, DomainSpec, VolumeFacts, domain_xml, file_volume_xml, overlay_xml,
    pool_target_path, pool_xml,
};

use crate::images::{
    HeldImage, HeldTurn, Holdings, ImageSource, ImageStore, PullOutcome, Pulls, evictions,
};
use crate::{ConsoleAddress, Driver, DriverError, HostFacts, VmListing, VmRecipe, parse_vm_name};
pub use crate::{DomainType, UnknownDomainType};

/// The file name extension of base images and overlays in the image directory.
pub const IMAGE_EXT: &str = ".qcow2";

/// The suffix of the marker beside a base image being pulled.
pub const PULLING_EXT: &str = ".pulling";

/// The suffix of the file beside a base image whose modification time says when a VM was
/// last provisioned from it.
pub const USED_EXT: &str = ".used";

/// How much of an image one upload call sends.
const PULL_CHUNK: usize = 1 << 20;

/// The file name extension of serial console logs in the image directory.
pub const SERIAL_LOG_EXT: &str = ".serial.log";

/// VNC authentication uses at most eight characters of a password.
const VNC_PASSWORD_LEN: usize = 8;

/// How often `boot` looks at the domain and its serial log.
const BOOT_POLL_MS: u64 = 250;

/// What a probe of a libvirt host found, beyond the [`HostFacts`] the scheduler uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibvirtFacts {
    pub facts: HostFacts,
    /// libvirt's version on the host (`9.0.0`).
    pub libvirt_version: String,
    /// The hypervisor's name as libvirt reports it (`QEMU`, `Test`).
    pub hypervisor: String,
    /// The hypervisor's version (`7.2.22`).
    pub hypervisor_version: String,
    /// Free space in the image directory.
    pub free_disk_mib: u64,
}

/// The host-side state shared by every call of one [`LibvirtHost`].
struct Inner {
    host: String,
    config: LibvirtConfig,
    connection: Connection,
    /// Held while finding or starting the image pool, so that concurrent first calls do not
    /// all try to start it.
    pool_setup: Mutex<()>,
    /// The pulls of base images, shared with the other hosts' drivers of the daemon.
    pulls: Pulls,
    /// Base images that provisionings in flight have been promised (by a pull that found or
    /// brought them) and not yet made an overlay of, with how many. Eviction holds this lock
    /// from looking at the image directory to creating the pulled image's volume, and never
    /// removes an image named here, so an image a provisioning is about to use stays.
    promised: Mutex<BTreeMap<String, usize>>,
}

/// The driver of one libvirt host.
#[derive(Clone)]
pub struct LibvirtHost {
    inner: Arc<Inner>,
}

impl fmt::Debug for LibvirtHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LibvirtHost")
            .field("host", &self.inner.host)
            .field("uri", &self.inner.config.uri)
            .finish()
    }
}

impl LibvirtHost {
    /// A driver for host `name` at `config.uri`. It connects on the first call.
    pub fn new(name: impl Into<String>, config: LibvirtConfig) -> LibvirtHost {
        LibvirtHost::with_pulls(name, config, Pulls::default())
    }

    /// A driver that reports its pulls of base images on `pulls`, the board the daemon reads
    /// to show a provisioning VM's progress.
    pub fn with_pulls(name: impl Into<String>, config: LibvirtConfig, pulls: Pulls) -> LibvirtHost {
        // libvirt prints every error to stderr unless told otherwise; the driver returns them
        // as values instead, so silence the printing once for the process.
        static QUIET: std::sync::Once = std::sync::Once::new();
        QUIET.call_once(virt::error::clear_error_callback);
        let host = name.into();
        LibvirtHost {
            inner: Arc::new(Inner {
                connection: Connection::new(&host, &config.uri),
                host,
                config,
                pool_setup: Mutex::new(()),
                pulls,
                promised: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    pub fn config(&self) -> &LibvirtConfig {
        &self.inner.config
    }

    /// The path of VM `name`'s overlay on the host.
    pub fn overlay_path(&self, name: &str) -> String {
        join(&self.inner.config.image_dir, &overlay_file(name))
    }

    /// The path of VM `name`'s serial console log on the host.
    pub fn serial_log_path(&self, name: &str) -> String {
        join(&self.inner.config.image_dir, &serial_log_file(name))
    }

    /// Measures the host, with the versions and free disk space that [`HostFacts`] leaves out.
    pub async fn probe_details(&self) -> Result<LibvirtFacts, DriverError> {
        self.run("probe", |inner, conn| inner.probe(conn)).await
    }

    /// Runs `f` with the connection on a blocking thread, bounded by the call timeout.
    async fn run<T, F>(&self, what: &'static str, f: F) -> Result<T, DriverError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &Connect) -> Result<T, DriverError> + Send + 'static,
    {
        let inner = self.inner.clone();
        let task = tokio::task::spawn_blocking(move || {
            let conn = inner.connection.get()?;
            let result = f(&inner, &conn);
            if let Err(DriverError::Transient { .. }) = &result {
                // A dead connection stays dead: open a new one on the next call.
                if !conn.is_alive().unwrap_or(false) {
                    inner.connection.forget();
                }
            }
            result
        });
        let limit = Duration::from_millis(self.inner.config.call_timeout_ms);
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(DriverError::Host {
                host: self.inner.host.clone(),
                message: format!("libvirt call {what} failed unexpectedly: {join}"),
            }),
            Err(_) => Err(DriverError::Transient {
                host: self.inner.host.clone(),
                message: format!(
                    "libvirt call {what} did not answer within {} ms",
                    self.inner.config.call_timeout_ms
                ),
            }),
        }
    }
}

#[async_trait]
impl Driver for LibvirtHost {
    fn kind(&self) -> DriverKind {
        DriverKind::Libvirt
    }

    fn host(&self) -> &str {
        &self.inner.host
    }

    async fn probe(&self) -> Result<HostFacts, DriverError> {
        let details = self.probe_details().await?;
        tracing::debug!(
            host = %self.inner.host,
            libvirt = %details.libvirt_version,
            hypervisor = %details.hypervisor,
            hypervisor_version = %details.hypervisor_version,
            free_disk_mib = details.free_disk_mib,
            "probed libvirt host"
        );
        Ok(details.facts)
    }

    async fn provision(&self, vm: &VmRecipe) -> Result<(), DriverError> {
        let promise = if self.inner.config.image_store.is_some() {
            Some(self.pull_promised(&vm.base_image).await?)
        } else {
            None
        };
        let vm = vm.clone();
        self.run("provision", move |inner, conn| {
            let done = inner.provision(conn, &vm);
            // The overlay exists now (or never will): it protects the image from here on.
            drop(promise);
            done
        })
        .await
    }

    async fn boot(&self, name: &str) -> Result<(), DriverError> {
        let start = Instant::now();
        let timeout = Duration::from_millis(self.inner.config.boot_timeout_ms);
        let marker = self.inner.config.boot_marker.clone();
        let local = uri_is_local(&self.inner.config.uri);
        let log_path = self.serial_log_path(name);
        loop {
            let owned = name.to_owned();
            let active = self
                .run("boot", move |inner, conn| {
                    let dom = inner.domain(conn, &owned)?;
                    dom.is_active()
                        .map_err(|e| inner.classify(&format!("reading the state of {owned}"), e))
                })
                .await?;
            if !active {
                return Err(self.request_error(format!(
                    "vm {name} stopped while booting (see its serial log {log_path})"
                )));
            }
            let booted = match &marker {
                None => true,
                // A local log is a file here; a remote one comes over libvirt (dearer).
                Some(marker) if local => serial_log_contains(&log_path, marker).await,
                Some(marker) => contains(&self.serial_log(name).await?, marker),
            };
            if booted {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(self.request_error(format!(
                    "vm {name} did not print {:?} on its serial console within {} ms \
                     (see {log_path})",
                    marker.unwrap_or_default(),
                    self.inner.config.boot_timeout_ms
                )));
            }
            tokio::time::sleep(Duration::from_millis(BOOT_POLL_MS)).await;
        }
    }

    async fn destroy(&self, name: &str) -> Result<(), DriverError> {
        let name = name.to_owned();
        self.run("destroy", move |inner, conn| inner.destroy(conn, &name))
            .await
    }

    async fn list(&self) -> Result<Vec<VmListing>, DriverError> {
        self.run("list", |inner, conn| inner.list(conn)).await
    }

    async fn console(&self, name: &str) -> Result<ConsoleAddress, DriverError> {
        let name = name.to_owned();
        self.run("console", move |inner, conn| inner.console(conn, &name))
            .await
    }

    async fn screenshot(&self, name: &str) -> Result<Vec<u8>, DriverError> {
        let name = name.to_owned();
        self.run("screenshot", move |inner, conn| {
            inner.screenshot(conn, &name)
        })
        .await
    }

    /// Read through libvirt, so that it works for remote hosts too; empty before the guest
    /// has written anything.
    async fn serial_log(&self, name: &str) -> Result<Vec<u8>, DriverError> {
        let name = name.to_owned();
        self.run("serial log", move |inner, conn| {
            inner.serial_log(conn, &name)
        })
        .await
    }

    fn image_store(&self) -> Option<String> {
        self.inner
            .config
            .image_store
            .as_ref()
            .map(ToString::to_string)
    }

    async fn pull_image(&self, image: &str) -> Result<(), DriverError> {
        self.check_store()?;
        self.pull(image).await
    }

    async fn evict_image(&self, image: &str) -> Result<(), DriverError> {
        self.check_store()?;
        let image = image.to_owned();
        self.run("evict", move |inner, conn| inner.evict(conn, &image))
            .await
    }
}

impl LibvirtHost {
    /// Brings base image `base` to the host from its image store unless it is there: one pull
    /// per image and host at a time (a provisioning that finds one running waits for it, then
    /// uses its image), bounded by the pull timeout rather than the call timeout.
    pub async fn pull(&self, base: &str) -> Result<(), DriverError> {
        self.pull_promised(base).await.map(drop)
    }

    /// [`Self::pull`], and the image promised to the caller: eviction leaves it alone until
    /// the answer is dropped.
    async fn pull_promised(&self, base: &str) -> Result<Promise, DriverError> {
        let inner = self.inner.clone();
        let base = base.to_owned();
        let task = tokio::task::spawn_blocking(move || {
            let conn = inner.connection.get()?;
            inner.pull(&conn, &base)?;
            // If the caller gave up waiting, dropping this answer ends the promise.
            Ok(Promise { inner, image: base })
        });
        let limit = Duration::from_millis(self.inner.config.pull_timeout_ms);
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(DriverError::Host {
                host: self.inner.host.clone(),
                message: format!("pulling a base image failed unexpectedly: {join}"),
            }),
            Err(_) => Err(DriverError::Transient {
                host: self.inner.host.clone(),
                message: format!(
                    "pulling a base image took longer than {} ms (pull_timeout_ms)",
                    self.inner.config.pull_timeout_ms
                ),
            }),
        }
    }

    /// Images travel only to and from hosts with an image store: without one, an evicted
    /// image could not come back.
    fn check_store(&self) -> Result<(), DriverError> {
        if self.inner.config.image_store.is_some() {
            return Ok(());
        }
        Err(DriverError::NoImageStore {
            host: self.inner.host.clone(),
            why: "it keeps no image store (set image_store in its options or in the [drivers] \
                  section)"
                .to_owned(),
        })
    }

    fn request_error(&self, message: String) -> DriverError {
        DriverError::Request {
            host: self.inner.host.clone(),
            message,
        }
    }
}

impl Inner {
    fn host_error(&self, message: String) -> DriverError {
        DriverError::Host {
            host: self.host.clone(),
            message,
        }
    }

    /// Maps a libvirt error onto whose fault it is, with what berth was doing.
    fn classify(&self, doing: &str, e: VirtError) -> DriverError {
        let message = e.message();
        let host = self.host.clone();
        if is_disk_full(message) {
            return DriverError::Host {
                host,
                message: format!(
                    "disk full in {} while {doing}: {message}",
                    self.config.image_dir
                ),
            };
        }
        let transient = e.code().is_any(vec![
            ErrorNumber::NoConnect,
            ErrorNumber::OperationTimeout,
            ErrorNumber::AgentUnresponsive,
        ]) || e.domain().is_any(vec![ErrorDomain::Rpc]);
        if transient {
            DriverError::Transient {
                host,
                message: format!("{doing}: {message}"),
            }
        } else {
            DriverError::Host {
                host,
                message: format!("{doing}: {message}"),
            }
        }
    }

    fn pool(&self, conn: &Connect) -> Result<StoragePool, DriverError> {
        let dir = &self.config.image_dir;
        // Nothing the lock guards can be left half-done by a panic.
        let _setup = self.pool_setup.lock().unwrap_or_else(|e| e.into_inner());
        let found = match conn.lookup_storage_pool_by_target_path(dir) {
            Ok(pool) => Some(pool),
            Err(e) if e.code().is(ErrorNumber::NoStoragePool) => None,
            // Some drivers (the test driver) cannot look pools up by path: search them all.
            Err(e) if e.code().is(ErrorNumber::NoSupport) => self.pool_by_scan(conn)?,
            Err(e) => return Err(self.classify(&format!("finding the pool of {dir}"), e)),
        };
        let pool = match found {
            Some(pool) => pool,
            None => {
                let xml = pool_xml(&pool_name(dir), dir).map_err(|e| {
                    self.host_error(format!("writing the definition of a pool on {dir}: {e}"))
                })?;
                match conn.create_storage_pool_xml(&xml, 0) {
                    Ok(pool) => pool,
                    // Another process on the host (a second driver, a test) started it first.
                    Err(e) => conn
                        .lookup_storage_pool_by_name(&pool_name(dir))
                        .map_err(|_| {
                            self.host_error(format!(
                                "cannot use image directory {dir} as a libvirt storage pool: \
                                 {} (does the directory exist on the host?)",
                                e.message()
                            ))
                        })?,
                }
            }
        };
        if !pool.is_active().unwrap_or(false) {
            pool.create(0)
                .map_err(|e| self.classify(&format!("starting the pool of {dir}"), e))?;
        }
        Ok(pool)
    }

    /// The pool whose target path is the image directory, found by reading every pool's
    /// definition.
    fn pool_by_scan(&self, conn: &Connect) -> Result<Option<StoragePool>, DriverError> {
        let dir = self.config.image_dir.trim_end_matches('/');
        let pools = conn
            .list_all_storage_pools(0)
            .map_err(|e| self.classify("listing storage pools", e))?;
        for pool in pools {
            let xml = pool
                .xml_desc(0)
                .map_err(|e| self.classify("reading a storage pool", e))?;
            let path = pool_target_path(&xml);
            if path.as_deref().map(|p| p.trim_end_matches('/')) == Some(dir) {
                return Ok(Some(pool));
            }
        }
        Ok(None)
    }

    /// The volume `file` in `pool`. With `rescan`, a file libvirt does not know yet (put
    /// there by hand, or by virtlogd) is looked for again after a refresh of the pool.
    fn volume(
        &self,
        pool: &StoragePool,
        file: &str,
        rescan: bool,
    ) -> Result<Option<StorageVol>, DriverError> {
        let doing = || format!("looking up {file} in {}", self.config.image_dir);
        match pool.lookup_storage_vol_by_name(file) {
            Ok(vol) => return Ok(Some(vol)),
            Err(e) if e.code().is(ErrorNumber::NoStorageVolume) => {}
            Err(e) => return Err(self.classify(&doing(), e)),
        }
        if !rescan {
            return Ok(None);
        }
        // libvirt refuses to refresh a pool while another volume is being created in it
        // (concurrent provisioning): then the lookup below answers from what it knows.
        if let Err(e) = pool.refresh(0) {
            tracing::debug!(host = %self.host, file, error = %e, "pool refresh failed");
        }
        match pool.lookup_storage_vol_by_name(file) {
            Ok(vol) => Ok(Some(vol)),
            Err(e) if e.code().is(ErrorNumber::NoStorageVolume) => Ok(None),
            Err(e) => Err(self.classify(&doing(), e)),
        }
    }

    fn domain(&self, conn: &Connect, name: &str) -> Result<Domain, DriverError> {
        self.find_domain(conn, name)?
            .ok_or_else(|| DriverError::NoSuchVm {
                host: self.host.clone(),
                name: name.to_owned(),
            })
    }

    fn find_domain(&self, conn: &Connect, name: &str) -> Result<Option<Domain>, DriverError> {
        match conn.lookup_domain_by_name(name) {
            Ok(dom) => Ok(Some(dom)),
            Err(e) if e.code().is(ErrorNumber::NoDomain) => Ok(None),
            Err(e) => Err(self.classify(&format!("looking up vm {name}"), e)),
        }
    }

    fn probe(&self, conn: &Connect) -> Result<LibvirtFacts, DriverError> {
        let node = conn
            .node_info()
            .map_err(|e| self.classify("reading node info", e))?;
        let libvirt_version = conn
            .lib_version()
            .map_err(|e| self.classify("reading libvirt's version", e))?;
        let hypervisor = conn
            .driver_type()
            .map_err(|e| self.classify("reading the hypervisor type", e))?;
        let hypervisor_version = conn
            .hyp_version()
            .map_err(|e| self.classify("reading the hypervisor version", e))?;
        let pool = self.pool(conn)?;
        // A rescan finds images copied in by hand. libvirt refuses it while a volume is being
        // created (a provisioning in flight); the next probe will see them then.
        if let Err(e) = pool.refresh(0) {
            tracing::debug!(host = %self.host, error = %e, "pool refresh failed");
        }
        let volumes = pool
            .list_volumes()
            .map_err(|e| self.classify("listing the image directory", e))?;
        // A base image beside its pull marker is partial: not there yet.
        let mut images: Vec<String> = volumes
            .iter()
            .filter(|file| !volumes.contains(&format!("{file}{PULLING_EXT}")))
            .filter_map(|file| base_image_name(file))
            .map(str::to_owned)
            .collect();
        images.sort();
        let free = pool
            .info()
            .map_err(|e| self.classify("reading free space in the image directory", e))?
            .available;
        // What the images weigh and what uses them is for operators to see; a failure to
        // tell leaves the last count shown rather than failing the probe.
        match self.holdings(conn, &pool) {
            Ok(holdings) => self.pulls.record_held(&self.host, holdings),
            Err(error) => {
                tracing::debug!(host = %self.host, %error, "counting the host's images failed")
            }
        }
        Ok(LibvirtFacts {
            facts: HostFacts {
                vcpus: node.cpus,
                memory_mib: node.memory / 1024,
                images,
            },
            libvirt_version: version_string(libvirt_version),
            hypervisor,
            hypervisor_version: version_string(hypervisor_version),
            free_disk_mib: free / (1024 * 1024),
        })
    }

    /// See [`LibvirtHost::pull`]; runs on a blocking thread.
    fn pull(&self, conn: &Connect, base: &str) -> Result<(), DriverError> {
        let file = format!("{base}{IMAGE_EXT}");
        let marker_file = format!("{file}{PULLING_EXT}");
        let pool = self.pool(conn)?;
        let turn = self.pulls.turn(&self.host, base);
        let held = turn.hold();
        match self.volume(&pool, &marker_file, true)? {
            // A pull cut short (the daemon stopped, the host lost power): its image is partial.
            Some(marker) => {
                if let Some(partial) = self.volume(&pool, &file, false)? {
                    partial.delete(0).map_err(|e| {
                        self.classify(&format!("removing the partial image {file}"), e)
                    })?;
                }
                marker
                    .delete(0)
                    .map_err(|e| self.classify(&format!("removing {marker_file}"), e))?;
            }
            None => {
                // Under the promise lock, so that no eviction removes it in between.
                let mut promised = self.lock_promised();
                if self.volume(&pool, &file, false)?.is_some() {
                    *promised.entry(base.to_owned()).or_default() += 1;
                    return Ok(());
                }
            }
        }
        let Some(store) = &self.config.image_store else {
            return Ok(());
        };
        let started = Instant::now();
        let sent = std::cell::Cell::new(0);
        let pulled = self.transfer(conn, &pool, base, store, &held, &sent);
        self.pulls.finished(&PullOutcome {
            host: self.host.clone(),
            image: base.to_owned(),
            bytes: sent.get(),
            seconds: started.elapsed().as_secs_f64(),
            error: pulled.as_ref().err().map(ToString::to_string),
        });
        pulled?;
        *self.lock_promised().entry(base.to_owned()).or_default() += 1;
        Ok(())
    }

    /// The part of [`Self::pull`] that brings the image from `store`, counting the bytes sent
    /// in `sent`.
    fn transfer(
        &self,
        conn: &Connect,
        pool: &StoragePool,
        base: &str,
        store: &ImageStore,
        held: &HeldTurn<'_>,
        sent: &std::cell::Cell<u64>,
    ) -> Result<(), DriverError> {
        let file = format!("{base}{IMAGE_EXT}");
        let marker_file = format!("{file}{PULLING_EXT}");
        let source = store.open(&file).map_err(|e| DriverError::Request {
            host: self.host.clone(),
            message: format!("pulling base image {base}: {e}"),
        })?;
        let free = pool
            .info()
            .map_err(|e| self.classify("reading free space in the image directory", e))?
            .available;
        let needed = source.size + self.config.min_free_disk_mib * 1024 * 1024;
        if free < needed {
            return Err(self.host_error(format!(
                "disk full: pulling {file} ({} MiB) would leave less than {} MiB free in {} \
                 ({} MiB free)",
                source.size / (1024 * 1024),
                self.config.min_free_disk_mib,
                self.config.image_dir,
                free / (1024 * 1024)
            )));
        }
        let create = |name: &str, bytes: u64| {
            let xml = file_volume_xml(name, bytes).map_err(|e| {
                self.host_error(format!("writing the definition of volume {name}: {e}"))
            })?;
            StorageVol::create_xml(pool, &xml, 0)
                .map_err(|e| self.classify(&format!("creating {name}"), e))
        };
        // Room is made and the image's volume created under the promise lock: a second
        // eviction then sees this image (full size, beside its marker) as in use.
        let promised = self.lock_promised();
        if let Some(budget_mib) = self.config.image_budget_mib {
            self.make_room(conn, pool, base, source.size, budget_mib, &promised)?;
        }
        let marker = create(&marker_file, 0)?;
        let image = match create(&file, source.size) {
            Ok(image) => image,
            Err(e) => {
                let _ = marker.delete(0);
                return Err(e);
            }
        };
        drop(promised);
        let started = Instant::now();
        tracing::info!(
            host = %self.host,
            image = %file,
            bytes = source.size,
            store = %store,
            "pulling a base image"
        );
        let uploaded = self.upload(conn, &image, source, |done, total| {
            sent.set(done);
            held.report(&file, done, total)
        });
        if let Err(e) = uploaded {
            // Never leave a partial image that could be used.
            let _ = image.delete(0);
            let _ = marker.delete(0);
            return Err(e);
        }
        marker
            .delete(0)
            .map_err(|e| self.classify(&format!("removing {marker_file}"), e))?;
        if let Err(e) = pool.refresh(0) {
            tracing::debug!(host = %self.host, error = %e, "pool refresh failed");
        }
        tracing::info!(
            host = %self.host,
            image = %file,
            ms = started.elapsed().as_millis() as u64,
            "pulled a base image, digest verified"
        );
        Ok(())
    }

    fn lock_promised(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, usize>> {
        // The map is whole after every statement that changes it, so a panic elsewhere
        // cannot leave it half-changed.
        self.promised.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every base image in the image directory (but `skip`, the one being pulled) with its
    /// size, last use and what uses it, and every volume there by file name. An image is in use
    /// when an overlay in the pool or a disk of any domain on the host names its file, when it
    /// is being pulled (its marker is there), or when it is `promised` to a provisioning in
    /// flight.
    fn census(
        &self,
        conn: &Connect,
        pool: &StoragePool,
        skip: Option<&str>,
        promised: &BTreeMap<String, usize>,
    ) -> Result<Census, DriverError> {
        let dir = &self.config.image_dir;
        let volumes = pool
            .list_all_volumes(0)
            .map_err(|e| self.classify(&format!("listing {dir}"), e))?;
        let mut facts = BTreeMap::new();
        for vol in volumes {
            let name = vol
                .name()
                .map_err(|e| self.classify(&format!("reading a volume name in {dir}"), e))?;
            let xml = match vol.xml_desc(0) {
                Ok(xml) => xml,
                // Deleted since the listing (a VM destroyed meanwhile): it names nothing now.
                Err(e) if e.code().is(ErrorNumber::NoStorageVolume) => continue,
                Err(e) => {
                    return Err(self.classify(&format!("reading the definition of {name}"), e));
                }
            };
            let read = VolumeFacts::from_xml(&xml).map_err(|e| {
                self.host_error(format!("reading the definition of {name} in {dir}: {e}"))
            })?;
            facts.insert(name, (vol, read));
        }
        // What names each file, by file name: a path spelt another way (a symlinked
        // directory) still protects the image.
        let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (file, (_, f)) in &facts {
            if let Some(path) = f.backing_path() {
                users
                    .entry(file_name(path).to_owned())
                    .or_default()
                    .push(format!("overlay {file}"));
            }
        }
        let domains = conn
            .list_all_domains(0)
            .map_err(|e| self.classify("listing the host's vms", e))?;
        for dom in &domains {
            let xml = match dom.xml_desc(0) {
                Ok(xml) => xml,
                // Undefined since the listing: it uses no image now.
                Err(e) if e.code().is(ErrorNumber::NoDomain) => continue,
                Err(e) => return Err(self.classify("reading the definition of a vm", e)),
            };
            let name = dom.name().unwrap_or_default();
            let parsed = xml::Domain::from_xml(&xml).map_err(|e| {
                self.host_error(format!(
                    "cannot tell whether vm {name} uses a base image, so none is evicted: \
                     reading its definition: {e}"
                ))
            })?;
            for path in parsed.disk_files() {
                users
                    .entry(file_name(path).to_owned())
                    .or_default()
                    .push(format!("vm {name}"));
            }
        }
        let mut images = Vec::new();
        for (file, (_, f)) in &facts {
            let Some(name) = base_image_name(file) else {
                continue;
            };
            if Some(name) == skip {
                continue;
            }
            let pulling = facts.contains_key(&format!("{file}{PULLING_EXT}"));
            let mut used_by = users.remove(file).unwrap_or_default();
            if pulling {
                used_by.push("a pull".to_owned());
            }
            if let Some(n) = promised.get(name) {
                used_by.push(format!("{n} provisioning(s) about to use it"));
            }
            let last_used_s = facts
                .get(&format!("{file}{USED_EXT}"))
                .and_then(|(_, used)| used.mtime_s())
                .or_else(|| f.mtime_s())
                .unwrap_or(0);
            images.push((
                HeldImage {
                    name: name.to_owned(),
                    bytes: f.disk_bytes(pulling),
                    last_used_s,
                    in_use: !used_by.is_empty(),
                },
                used_by,
            ));
        }
        Ok(Census { facts, images })
    }

    /// Removes base image `name`'s file and its last-use mark.
    fn remove_image(&self, census: &Census, name: &str, why: &str) -> Result<(), DriverError> {
        let file = format!("{name}{IMAGE_EXT}");
        let used = format!("{file}{USED_EXT}");
        if let Some((vol, f)) = census.facts.get(&file) {
            vol.delete(0)
                .map_err(|e| self.classify(&format!("evicting the base image {file}"), e))?;
            tracing::info!(
                host = %self.host,
                image = %file,
                bytes = f.disk_bytes(false),
                why,
                "evicted an unused base image"
            );
        }
        if let Some((vol, _)) = census.facts.get(&used) {
            let _ = vol.delete(0);
        }
        Ok(())
    }

    /// Removes the least recently used base images that nothing uses until `base`
    /// (`bytes`) fits within `budget_mib` beside the rest (see [`evictions`] and
    /// [`Self::census`] for what counts as used); fails, removing nothing, when it cannot fit.
    fn make_room(
        &self,
        conn: &Connect,
        pool: &StoragePool,
        base: &str,
        bytes: u64,
        budget_mib: u64,
        promised: &BTreeMap<String, usize>,
    ) -> Result<(), DriverError> {
        let census = self.census(conn, pool, Some(base), promised)?;
        let held: Vec<HeldImage> = census.images.iter().map(|(h, _)| h.clone()).collect();
        let evict = evictions(&held, base, bytes, budget_mib * 1024 * 1024).map_err(|e| {
            self.host_error(format!(
                "pulling base image {base} into {}: {e}",
                self.config.image_dir
            ))
        })?;
        let why = format!("making room for {base}{IMAGE_EXT} within {budget_mib} MiB");
        for name in evict {
            self.remove_image(&census, &name, &why)?;
        }
        Ok(())
    }

    /// See [`Driver::evict_image`]; runs on a blocking thread. Under the promise lock, so that
    /// no pull finds the image and promises it meanwhile.
    fn evict(&self, conn: &Connect, base: &str) -> Result<(), DriverError> {
        let pool = self.pool(conn)?;
        let promised = self.lock_promised();
        if self.pulls.progress(&self.host, base).is_some() {
            return Err(DriverError::ImageInUse {
                host: self.host.clone(),
                image: base.to_owned(),
                users: vec!["a pull".to_owned()],
            });
        }
        let census = self.census(conn, &pool, None, &promised)?;
        let Some((_, users)) = census.images.iter().find(|(h, _)| h.name == base) else {
            return Err(DriverError::NoSuchImage {
                host: self.host.clone(),
                image: base.to_owned(),
            });
        };
        if !users.is_empty() {
            return Err(DriverError::ImageInUse {
                host: self.host.clone(),
                image: base.to_owned(),
                users: users.clone(),
            });
        }
        self.remove_image(&census, base, "an operator evicted it")?;
        drop(promised);
        Ok(())
    }

    /// What [`Self::census`] finds, as the board keeps it for the daemon to show.
    fn holdings(&self, conn: &Connect, pool: &StoragePool) -> Result<Holdings, DriverError> {
        let promised = self.lock_promised().clone();
        let census = self.census(conn, pool, None, &promised)?;
        Ok(Holdings {
            images: census.images.into_iter().map(|(h, _)| h).collect(),
            budget_bytes: self.config.image_budget_mib.map(|m| m * 1024 * 1024),
        })
    }

    /// Makes `FILE.used` anew, so that its modification time is now: the image was used.
    /// Only eviction's order depends on it, so a failure is logged, not returned.
    fn mark_used(&self, pool: &StoragePool, base_file: &str) {
        let used = format!("{base_file}{USED_EXT}");
        let remade = || -> Result<(), String> {
            if let Some(old) = self.volume(pool, &used, false).map_err(|e| e.to_string())? {
                old.delete(0).map_err(|e| e.to_string())?;
            }
            let xml = file_volume_xml(&used, 0).map_err(|e| e.to_string())?;
            StorageVol::create_xml(pool, &xml, 0).map_err(|e| e.to_string())?;
            Ok(())
        };
        if let Err(error) = remade() {
            tracing::debug!(host = %self.host, file = %used, %error, "marking an image used failed");
        }
    }

    /// Sends `source` into volume `image` through a libvirt stream, checking its digest before
    /// the stream is finished: a mismatch aborts it.
    fn upload(
        &self,
        conn: &Connect,
        image: &StorageVol,
        mut source: ImageSource,
        progress: impl Fn(u64, u64),
    ) -> Result<(), DriverError> {
        use std::io::Read;
        let file = source.file.clone();
        let total = source.size;
        let stream = Stream::new(conn, 0)
            .map_err(|e| self.classify(&format!("opening a stream for {file}"), e))?;
        image
            .upload(&stream, 0, total, 0)
            .map_err(|e| self.classify(&format!("starting the upload of {file}"), e))?;
        let mut buf = vec![0u8; PULL_CHUNK];
        let mut done = 0u64;
        progress(0, total);
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = stream.abort();
                    return Err(DriverError::Transient {
                        host: self.host.clone(),
                        message: format!("reading {file} from the image store: {e}"),
                    });
                }
            };
            let mut chunk = &buf[..n];
            while !chunk.is_empty() {
                match stream.send(chunk) {
                    Ok(sent) if sent > 0 => chunk = &chunk[sent as usize..],
                    Ok(_) => {
                        let _ = stream.abort();
                        return Err(self.host_error(format!(
                            "the upload of {file} stopped taking data at {done} bytes"
                        )));
                    }
                    Err(e) => {
                        let _ = stream.abort();
                        return Err(self.classify(&format!("uploading {file}"), e));
                    }
                }
            }
            done += n as u64;
            progress(done, total);
        }
        if let Err(e) = source.verify() {
            let _ = stream.abort();
            return Err(DriverError::Request {
                host: self.host.clone(),
                message: format!("pulling base image {file}: {e}"),
            });
        }
        stream
            .finish()
            .map_err(|e| self.classify(&format!("finishing the upload of {file}"), e))
    }

    fn provision(&self, conn: &Connect, vm: &VmRecipe) -> Result<(), DriverError> {
        let name = vm.name.as_str();
        if parse_vm_name(name).is_none() {
            return Err(DriverError::Request {
                host: self.host.clone(),
                message: format!("{name:?} is not a berth vm name"),
            });
        }
        let pool = self.pool(conn)?;
        let overlay = overlay_file(name);
        let overlay_path = join(&self.config.image_dir, &overlay);

        if let Some(dom) = self.find_domain(conn, name)? {
            return self.adopt(&dom, name, &overlay_path);
        }

        let info = pool
            .info()
            .map_err(|e| self.classify("reading free space in the image directory", e))?;
        let free_mib = info.available / (1024 * 1024);
        if free_mib < self.config.min_free_disk_mib {
            return Err(self.host_error(format!(
                "disk full: {free_mib} MiB free in {} (berth keeps {} MiB free); remove unused \
                 images or overlays, or lower min_free_disk_mib",
                self.config.image_dir, self.config.min_free_disk_mib
            )));
        }

        let base_file = format!("{}{IMAGE_EXT}", vm.base_image);
        let base = self.volume(&pool, &base_file, true)?.ok_or_else(|| {
            self.host_error(format!(
                "base image {} is missing: no {} on the host; copy it there or take the \
                 image off this host's list",
                vm.base_image,
                join(&self.config.image_dir, &base_file)
            ))
        })?;
        let base_path = base
            .path()
            .map_err(|e| self.classify(&format!("reading the path of {base_file}"), e))?;
        let base_bytes = base
            .info()
            .map_err(|e| self.classify(&format!("reading the size of {base_file}"), e))?
            .capacity;

        // An overlay without a domain is what a provisioning cut short left behind: its VM
        // never ran, so nothing in it is worth keeping. libvirt made it, so it knows it
        // without a rescan.
        if let Some(stale) = self.volume(&pool, &overlay, false)? {
            stale
                .delete(0)
                .map_err(|e| self.classify(&format!("removing the stale overlay {overlay}"), e))?;
        }
        let vol_xml = overlay_xml(&overlay, base_bytes, &base_path).map_err(|e| {
            self.host_error(format!(
                "writing the definition of the overlay {overlay}: {e}"
            ))
        })?;
        let vol = StorageVol::create_xml(&pool, &vol_xml, 0)
            .map_err(|e| self.classify(&format!("creating the overlay {overlay}"), e))?;
        if self.config.image_budget_mib.is_some() {
            self.mark_used(&pool, &base_file);
        }
        let overlay_path = vol.path().unwrap_or(overlay_path);

        let domain_type = self.config.domain_type_for(&vm.template, vm.domain_type);
        let password = vnc_password()
            .map_err(|e| self.host_error(format!("drawing a vnc password from the OS: {e}")))?;
        let written = domain_xml(&DomainSpec {
            name,
            template: &vm.template,
            base_image: &vm.base_image,
            guest_os: vm.guest_os,
            shape: vm.shape,
            domain_type,
            overlay_path: &overlay_path,
            serial_log_path: &join(&self.config.image_dir, &serial_log_file(name)),
            vnc_password: &password,
            network: &self.config.network,
        });
        let xml = match written {
            Ok(xml) => xml,
            Err(e) => {
                let _ = vol.delete(0);
                return Err(self.host_error(format!("writing the definition of vm {name}: {e}")));
            }
        };
        let dom = match conn.define_domain_xml(&xml) {
            Ok(dom) => dom,
            Err(e) => {
                // No half-made VMs: the overlay goes with the failed definition.
                let _ = vol.delete(0);
                if e.code().is(ErrorNumber::DomExist) {
                    return Err(self.name_clash(name));
                }
                return Err(self.classify(&format!("defining vm {name}"), e));
            }
        };
        if let Err(e) = dom.create() {
            let _ = dom.undefine();
            let _ = vol.delete(0);
            return Err(self.classify(&format!("starting vm {name}"), e));
        }
        Ok(())
    }

    /// Provisioning a VM that exists: start it if berth made it, refuse if it did not.
    fn adopt(&self, dom: &Domain, name: &str, overlay_path: &str) -> Result<(), DriverError> {
        let xml = dom
            .xml_desc(0)
            .map_err(|e| self.classify(&format!("reading the definition of {name}"), e))?;
        // Compare file names too: libvirt may have canonicalised the directory (symlinks).
        let overlay_name = format!("/{}", overlay_file(name));
        let ours = xml::Domain::from_xml(&xml).is_ok_and(|d| {
            d.description.contains(DESCRIPTION_TAG)
                && d.disk_files()
                    .any(|p| p == overlay_path || p.ends_with(&overlay_name))
        });
        if !ours {
            return Err(self.name_clash(name));
        }
        if !dom.is_active().unwrap_or(false) {
            dom.create()
                .map_err(|e| self.classify(&format!("starting vm {name}"), e))?;
        }
        Ok(())
    }

    fn name_clash(&self, name: &str) -> DriverError {
        self.host_error(format!(
            "name clash: a domain named {name} exists on the host but berth did not make it \
             for this vm; rename or remove it (virsh -c {} undefine {name})",
            self.config.uri
        ))
    }

    fn destroy(&self, conn: &Connect, name: &str) -> Result<(), DriverError> {
        if let Some(dom) = self.find_domain(conn, name)? {
            // Stop it whatever state it reports: undefining a running domain would leave it
            // running, as a transient one. "Not running" is what we wanted anyway.
            match dom.destroy() {
                Ok(()) => {}
                Err(e)
                    if e.code()
                        .is_any(vec![ErrorNumber::OperationInvalid, ErrorNumber::NoDomain]) => {}
                Err(e) => return Err(self.classify(&format!("stopping vm {name}"), e)),
            }
            let flags =
                virt::sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM;
            // Drivers that know neither flag (the test driver) refuse them as invalid.
            let undefined = match dom.undefine_flags(flags) {
                Err(e)
                    if e.code()
                        .is_any(vec![ErrorNumber::InvalidArg, ErrorNumber::NoSupport]) =>
                {
                    dom.undefine()
                }
                other => other,
            };
            match undefined {
                Ok(()) => {}
                Err(e) if e.code().is(ErrorNumber::NoDomain) => {}
                Err(e) => return Err(self.classify(&format!("undefining vm {name}"), e)),
            }
        }
        let pool = self.pool(conn)?;
        let log = serial_log_file(name);
        let log_path = join(&self.config.image_dir, &log);
        // virtlogd writes the log behind libvirt's storage driver: a local one goes as a
        // file, a remote one through the pool after a rescan.
        let local_log = uri_is_local(&self.config.uri);
        if local_log {
            match std::fs::remove_file(&log_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.host_error(format!("removing {log_path}: {e}"))),
            }
        }
        for (file, rescan) in [(overlay_file(name), false), (log, !local_log)] {
            if let Some(vol) = self.volume(&pool, &file, rescan)? {
                match vol.delete(0) {
                    Ok(()) => {}
                    Err(e) if e.code().is(ErrorNumber::NoStorageVolume) => {}
                    // The pool may still list the log removed above as a file.
                    Err(_) if file.ends_with(SERIAL_LOG_EXT) && local_log => {}
                    Err(e) => return Err(self.classify(&format!("removing {file}"), e)),
                }
            }
        }
        Ok(())
    }

    fn serial_log(&self, conn: &Connect, name: &str) -> Result<Vec<u8>, DriverError> {
        let pool = self.pool(conn)?;
        let file = serial_log_file(name);
        let Some(vol) = self.volume(&pool, &file, true)? else {
            return Ok(Vec::new());
        };
        let doing = format!("reading {file}");
        let stream = Stream::new(conn, 0).map_err(|e| self.classify(&doing, e))?;
        // Length 0: to the end of the file as it is now.
        vol.download(&stream, 0, 0, 0)
            .map_err(|e| self.classify(&doing, e))?;
        match read_stream(&stream) {
            Ok(log) => {
                stream.finish().map_err(|e| self.classify(&doing, e))?;
                Ok(log)
            }
            Err(e) => {
                let _ = stream.abort();
                Err(self.classify(&doing, e))
            }
        }
    }

    fn list(&self, conn: &Connect) -> Result<Vec<VmListing>, DriverError> {
        let domains = conn
            .list_all_domains(0)
            .map_err(|e| self.classify("listing domains", e))?;
        let mut out = Vec::with_capacity(domains.len());
        for dom in domains {
            let name = dom
                .name()
                .map_err(|e| self.classify("reading a domain's name", e))?;
            let running = match dom.is_active() {
                Ok(running) => running,
                // Destroyed since the listing (a concurrent destroy): it is not on the host.
                Err(e) if e.code().is(ErrorNumber::NoDomain) => continue,
                Err(e) => return Err(self.classify(&format!("reading the state of {name}"), e)),
            };
            out.push(VmListing { name, running });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn console(&self, conn: &Connect, name: &str) -> Result<ConsoleAddress, DriverError> {
        let dom = self.domain(conn, name)?;
        // The password is only in the definition read with the secure flag.
        let xml = dom
            .xml_desc(virt::sys::VIR_DOMAIN_XML_SECURE)
            .map_err(|e| self.classify(&format!("reading the definition of {name}"), e))?;
        let parsed = xml::Domain::from_xml(&xml).map_err(|e| {
            self.host_error(format!(
                "libvirt gave an unreadable definition of {name}: {e}"
            ))
        })?;
        let vnc = parsed
            .vnc()
            .ok_or_else(|| self.host_error(format!("vm {name} has no vnc console")))?;
        let port = vnc
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| DriverError::Transient {
                host: self.host.clone(),
                message: format!("vm {name} has no vnc port yet (it gets one when it runs)"),
            })?;
        let host = self
            .config
            .console_host
            .clone()
            .unwrap_or_else(|| uri_host(&self.config.uri).unwrap_or("localhost").to_owned());
        Ok(ConsoleAddress {
            host,
            port,
            password: vnc.password,
        })
    }

    fn screenshot(&self, conn: &Connect, name: &str) -> Result<Vec<u8>, DriverError> {
        let dom = self.domain(conn, name)?;
        let doing = format!("taking a screenshot of {name}");
        let stream = Stream::new(conn, 0).map_err(|e| self.classify(&doing, e))?;
        let mime = dom
            .screenshot(&stream, 0, 0)
            .map_err(|e| self.classify(&doing, e))?;
        let image = match read_stream(&stream) {
            Ok(image) => {
                stream.finish().map_err(|e| self.classify(&doing, e))?;
                image
            }
            Err(e) => {
                // libvirt wants a stream that failed midway aborted, not just freed.
                let _ = stream.abort();
                return Err(self.classify(&doing, e));
            }
        };
        if image.starts_with(PNG_SIGNATURE) {
            return Ok(image);
        }
        ppm_to_png(&image).map_err(|e| {
            self.host_error(format!(
                "screenshot of {name} came as {mime}, which berth cannot convert to png: {e}"
            ))
        })
    }
}

/// Everything a stream sends until its end.
fn read_stream(stream: &Stream) -> Result<Vec<u8>, VirtError> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.recv(&mut buf)?;
        match usize::try_from(n) {
            Ok(0) | Err(_) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n.min(buf.len())]),
        }
    }
}

/// An image a pull found or brought, promised to a provisioning until this is dropped.
/// The image directory as eviction sees it (see [`Inner::census`]).
struct Census {
    /// Every volume, by file name, with what its definition says.
    facts: BTreeMap<String, (StorageVol, VolumeFacts)>,
    /// Every base image, by name, with what uses it (empty: nothing).
    images: Vec<(HeldImage, Vec<String>)>,
}

struct Promise {
    inner: Arc<Inner>,
    image: String,
}

impl Drop for Promise {
    fn drop(&mut self) {
        let mut promised = self.inner.lock_promised();
        if let Some(n) = promised.get_mut(&self.image) {
            *n -= 1;
            if *n == 0 {
                promised.remove(&self.image);
            }
        }
    }
}

/// The last component of a path on the host.
fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The name of the base image stored in `file`, or `None` for overlays, logs and other files.
fn base_image_name(file: &str) -> Option<&str> {
    // `NAME.qcow2.pulling` does not end in the image extension: never an image.
    let stem = file.strip_suffix(IMAGE_EXT)?;
    if stem.is_empty() || parse_vm_name(stem).is_some() {
        return None;
    }
    Some(stem)
}

fn overlay_file(name: &str) -> String {
    format!("{name}{IMAGE_EXT}")
}

fn serial_log_file(name: &str) -> String {
    format!("{name}{SERIAL_LOG_EXT}")
}

/// Joins a directory and a file name on the host (whose paths are always `/`-separated).
fn join(dir: &str, file: &str) -> String {
    format!("{}/{file}", dir.trim_end_matches('/'))
}

/// A pool name for a directory: a name clash with a pool on another path would make libvirt
/// refuse to start it, so the name carries the whole path.
fn pool_name(dir: &str) -> String {
    let path: String = dir
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("berth-{path}")
}

/// libvirt's `major * 1_000_000 + minor * 1000 + release` as `major.minor.release`.
fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

fn is_disk_full(message: &str) -> bool {
    message.contains("No space left on device") || message.contains("Not enough free space")
}

async fn serial_log_contains(path: &str, marker: &str) -> bool {
    match tokio::task::spawn_blocking({
        let path = path.to_owned();
        move || std::fs::read(path)
    })
    .await
    {
        Ok(Ok(log)) => contains(&log, marker),
        // Not there yet: virtlogd creates it when the guest starts writing.
        _ => false,
    }
}

fn contains(log: &[u8], marker: &str) -> bool {
    !marker.is_empty() && log.windows(marker.len()).any(|w| w == marker.as_bytes())
}

/// A fresh VNC password: eight letters and digits from the OS's random source.
fn vnc_password() -> Result<String, getrandom::Error> {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; VNC_PASSWORD_LEN];
    getrandom::fill(&mut bytes)?;
    // The modulo bias (256 is not a multiple of the alphabet) costs well under a bit of
    // entropy per character, which does not matter for a loopback-only console password.
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_images_are_qcow2_files_that_are_not_overlays() {
        assert_eq!(base_image_name("tiny.qcow2"), Some("tiny"));
        assert_eq!(base_image_name("berth-vm3.qcow2"), None);
        assert_eq!(base_image_name("berth-vm3.serial.log"), None);
        assert_eq!(base_image_name("notes.txt"), None);
        assert_eq!(base_image_name(".qcow2"), None);
    }

    #[test]
    fn versions_and_pool_names() {
        assert_eq!(version_string(9_000_000), "9.0.0");
        assert_eq!(version_string(7_002_022), "7.2.22");
        assert_eq!(
            pool_name("/var/lib/berth/images/"),
            "berth-var-lib-berth-images"
        );
    }

    #[test]
    fn vnc_passwords_are_eight_unambiguous_characters() {
        let a = vnc_password().expect("os randomness");
        let b = vnc_password().expect("os randomness");
        assert_eq!(a.len(), VNC_PASSWORD_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
