//! The libvirt driver: VMs on QEMU/KVM (or any hypervisor libvirt drives) at one libvirt URI,
//! booted from qcow2 overlays whose backing file is the template's base image.
//!
//! One [`LibvirtHost`] stands for one host, reached at a libvirt URI: `qemu:///system` for the
//! machine berth runs on, `qemu+ssh://user@host/system` for a remote one, `test:///default` in
//! tests. Everything goes through libvirt's API, disks included: the host's image directory is
//! a libvirt `dir` storage pool (found by its path, or started as a transient pool), and an
//! overlay is a pool volume with a `<backingStore>`, which libvirt creates with
//! `qemu-img create -f qcow2 -b BASE -F qcow2` on the host itself. That way a remote host needs
//! nothing but libvirtd, and no base image is ever copied.
//!
//! Files in the image directory:
//! - `NAME.qcow2`: the base image `NAME` (what [`Driver::probe`] reports and templates name);
//! - `berth-vmN.qcow2`: the overlay of VM `berth-vmN`;
//! - `berth-vmN.serial.log`: its serial console, as virtlogd writes it.
//!
//! libvirt's C calls block, so every call runs under `tokio::task::spawn_blocking`, bounded by
//! [`LibvirtConfig::call_timeout_ms`]. The driver keeps one connection open for its lifetime and
//! reopens it when libvirt reports it dead.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_sched::{DriverKind, GuestOs, Shape};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::{Error as VirtError, ErrorDomain, ErrorNumber};
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use crate::{ConsoleAddress, Driver, DriverError, HostFacts, VmListing, VmRecipe, parse_vm_name};
pub use crate::{DomainType, UnknownDomainType};

/// The file name extension of base images and overlays in the image directory.
pub const IMAGE_EXT: &str = ".qcow2";

/// The file name extension of serial console logs in the image directory.
pub const SERIAL_LOG_EXT: &str = ".serial.log";

/// What berth writes into the `<description>` of every domain it defines, so that a domain
/// with a berth name but another origin is recognised as a name clash rather than adopted.
const DESCRIPTION_TAG: &str = "made by berth";

/// VNC authentication uses at most eight characters of a password.
const VNC_PASSWORD_LEN: usize = 8;

/// How often `boot` looks at the domain and its serial log.
const BOOT_POLL_MS: u64 = 250;

/// How a VM's network card is connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network {
    /// No network card.
    None,
    /// QEMU's user-mode networking: outbound only, needs no bridge or dnsmasq on the host.
    User,
    /// A libvirt network by name (`default` on most installations).
    Libvirt(String),
}

/// How to reach one libvirt host and what its VMs look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibvirtConfig {
    /// The libvirt URI (`qemu:///system`, `qemu+ssh://user@host/system`, `test:///default`).
    pub uri: String,
    /// The directory on the host that holds base images (`NAME.qcow2`), overlays and serial
    /// logs. A libvirt storage pool with this target path is used if one exists; otherwise the
    /// driver starts a transient `dir` pool on it.
    pub image_dir: String,
    /// The domain type of VMs whose template asks for none (see [`Self::domain_type_for`]).
    pub domain_type: DomainType,
    /// This host's domain type for some templates, over what they ask for (a host whose KVM
    /// does not work emulates them).
    pub template_domain_types: BTreeMap<String, DomainType>,
    /// The host name a console viewer connects to (through `ssh -L`); defaults to the host of
    /// the URI, or `localhost` for a local URI.
    pub console_host: Option<String>,
    pub network: Network,
    /// A line the guest prints on its serial console once booted. When set, `boot` waits for
    /// it in the serial log (read as a file for a local URI, through libvirt for a remote
    /// one); otherwise `boot` waits for the domain to run, which says the guest was started,
    /// not that it booted.
    pub boot_marker: Option<String>,
    pub boot_timeout_ms: u64,
    /// Provisioning fails with "disk full" when less than this is free in the image directory.
    pub min_free_disk_mib: u64,
    /// The longest one libvirt call may take before it counts as a transient failure.
    pub call_timeout_ms: u64,
}

impl LibvirtConfig {
    /// A configuration with defaults: QEMU/KVM domains, user-mode networking, 5 minutes to
    /// boot, 1 GiB kept free, 2 minutes per libvirt call.
    pub fn new(uri: impl Into<String>, image_dir: impl Into<String>) -> LibvirtConfig {
        LibvirtConfig {
            uri: uri.into(),
            image_dir: image_dir.into(),
            domain_type: DomainType::Kvm,
            template_domain_types: BTreeMap::new(),
            console_host: None,
            network: Network::User,
            boot_marker: None,
            boot_timeout_ms: 300_000,
            min_free_disk_mib: 1024,
            call_timeout_ms: 120_000,
        }
    }

    /// A configuration from a host's driver options (the `options` table of a `[[hosts]]`
    /// entry, or `--option key=value`). Keys, all but `uri` optional:
    ///
    /// | key | value |
    /// |---|---|
    /// | `uri` | the libvirt URI |
    /// | `image_dir` | the image directory on the host (default [`DEFAULT_IMAGE_DIR`]) |
    /// | `domain_type` | `kvm` or `qemu` for templates that ask for neither (default `kvm`) |
    /// | `domain_type.TEMPLATE` | `kvm` or `qemu` for one template, over what it asks for |
    /// | `network` | `user`, `none` or `network:NAME` (default `user`) |
    /// | `console_host` | the host name console viewers connect to |
    /// | `boot_marker` | the line a booted guest prints on its serial console |
    /// | `boot_timeout_ms`, `min_free_disk_mib`, `call_timeout_ms` | numbers |
    pub fn from_options(options: &BTreeMap<String, String>) -> Result<LibvirtConfig, OptionError> {
        let uri = options
            .get("uri")
            .ok_or_else(|| OptionError::new("uri", "is required (for example qemu:///system)"))?;
        let image_dir = options
            .get("image_dir")
            .map_or(DEFAULT_IMAGE_DIR, String::as_str);
        if !image_dir.starts_with('/') {
            return Err(OptionError::new("image_dir", "must be an absolute path"));
        }
        let mut config = LibvirtConfig::new(uri.as_str(), image_dir);
        let number = |key: &str, value: &str| {
            value
                .parse::<u64>()
                .map_err(|_| OptionError::new(key, "must be a whole number"))
        };
        for (key, value) in options {
            match key.as_str() {
                "uri" | "image_dir" => {}
                "domain_type" => {
                    config.domain_type = value
                        .parse()
                        .map_err(|e: UnknownDomainType| OptionError::new(key, &e.to_string()))?;
                }
                "network" => {
                    config.network = match value.as_str() {
                        "user" => Network::User,
                        "none" => Network::None,
                        v => match v.strip_prefix("network:") {
                            Some(name) if !name.is_empty() => Network::Libvirt(name.to_owned()),
                            _ => {
                                return Err(OptionError::new(
                                    key,
                                    "expected user, none or network:NAME",
                                ));
                            }
                        },
                    };
                }
                "console_host" => config.console_host = Some(value.clone()),
                "boot_marker" => config.boot_marker = Some(value.clone()).filter(|m| !m.is_empty()),
                "boot_timeout_ms" => config.boot_timeout_ms = number(key, value)?,
                "min_free_disk_mib" => config.min_free_disk_mib = number(key, value)?,
                "call_timeout_ms" => config.call_timeout_ms = number(key, value)?,
                other => match other.strip_prefix("domain_type.") {
                    Some(template) if !template.is_empty() => {
                        let t = value.parse().map_err(|e: UnknownDomainType| {
                            OptionError::new(key, &e.to_string())
                        })?;
                        config.template_domain_types.insert(template.to_owned(), t);
                    }
                    _ => return Err(OptionError::new(key, "is not a libvirt driver option")),
                },
            }
        }
        Ok(config)
    }

    /// The domain type for VMs of `template` that asks for `asked`: this host's own choice
    /// for the template (`domain_type.TEMPLATE`) when it has one, so that a host whose KVM
    /// does not work can emulate a template that asks for KVM; else what the template asks
    /// for; else the host's `domain_type`.
    pub fn domain_type_for(&self, template: &str, asked: Option<DomainType>) -> DomainType {
        self.template_domain_types
            .get(template)
            .copied()
            .or(asked)
            .unwrap_or(self.domain_type)
    }
}

/// Where base images live on a libvirt host unless its options say otherwise.
pub const DEFAULT_IMAGE_DIR: &str = "/var/lib/berth/images";

/// A libvirt driver option that is missing, unknown or malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("libvirt driver option {key}: {message}")]
pub struct OptionError {
    pub key: String,
    pub message: String,
}

impl OptionError {
    fn new(key: &str, message: &str) -> OptionError {
        OptionError {
            key: key.to_owned(),
            message: message.to_owned(),
        }
    }
}

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
    /// The open connection; `None` before the first call and after libvirt reported it dead.
    conn: Mutex<Option<Arc<Connect>>>,
    /// Held while finding or starting the image pool, so that concurrent first calls do not
    /// all try to start it.
    pool_setup: Mutex<()>,
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
        // libvirt prints every error to stderr unless told otherwise; the driver returns them
        // as values instead, so silence the printing once for the process.
        static QUIET: std::sync::Once = std::sync::Once::new();
        QUIET.call_once(virt::error::clear_error_callback);
        LibvirtHost {
            inner: Arc::new(Inner {
                host: name.into(),
                config,
                conn: Mutex::new(None),
                pool_setup: Mutex::new(()),
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
            let conn = inner.connection()?;
            let result = f(&inner, &conn);
            if let Err(DriverError::Transient { .. }) = &result {
                // A dead connection stays dead: open a new one on the next call.
                if !conn.is_alive().unwrap_or(false) {
                    inner.forget_connection();
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
        let vm = vm.clone();
        self.run("provision", move |inner, conn| inner.provision(conn, &vm))
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
}

impl LibvirtHost {
    fn request_error(&self, message: String) -> DriverError {
        DriverError::Request {
            host: self.inner.host.clone(),
            message,
        }
    }
}

impl Inner {
    fn connection(&self) -> Result<Arc<Connect>, DriverError> {
        // A panic while holding the lock leaves at worst a stale connection, which is_alive
        // catches below.
        let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(conn) = slot.as_ref()
            && conn.is_alive().unwrap_or(false)
        {
            return Ok(conn.clone());
        }
        let uri = connect_uri(&self.config.uri);
        let conn = Connect::open(Some(&uri)).map_err(|e| {
            let uri = &self.config.uri;
            // ssh's warnings come as a banner of lines: one line reads better in a log.
            let why = e
                .message()
                .lines()
                .map(|l| l.trim_matches(|c: char| c == '@' || c.is_whitespace()))
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let message = if why.to_ascii_lowercase().contains("host key") {
                format!(
                    "libvirt at {uri}: the SSH host key of {} was not accepted: {why} (berth \
                     never accepts an unknown or changed key: check it, then put it in the \
                     known_hosts file this connection uses)",
                    uri_host(uri).unwrap_or("the host")
                )
            } else {
                format!(
                    "libvirt unreachable at {uri}: {why} (is libvirtd running there, and for \
                     qemu+ssh can this user log in to the host?)"
                )
            };
            DriverError::Host {
                host: self.host.clone(),
                message,
            }
        })?;
        let conn = Arc::new(conn);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    fn forget_connection(&self) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

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
                let xml = format!(
                    "<pool type='dir'><name>{}</name><target><path>{}</path></target></pool>",
                    escape(&pool_name(dir)),
                    escape(dir)
                );
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
            let path = roxmltree::Document::parse(&xml).ok().and_then(|doc| {
                doc.descendants()
                    .find(|n| n.has_tag_name("target"))
                    .and_then(|t| t.children().find(|n| n.has_tag_name("path")))
                    .and_then(|p| p.text())
                    .map(|p| p.trim_end_matches('/').to_owned())
            });
            if path.as_deref() == Some(dir) {
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
        let mut images: Vec<String> = volumes
            .iter()
            .filter_map(|file| base_image_name(file))
            .map(str::to_owned)
            .collect();
        images.sort();
        let free = pool
            .info()
            .map_err(|e| self.classify("reading free space in the image directory", e))?
            .available;
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
        let vol = StorageVol::create_xml(&pool, &overlay_xml(&overlay, base_bytes, &base_path), 0)
            .map_err(|e| self.classify(&format!("creating the overlay {overlay}"), e))?;
        let overlay_path = vol.path().unwrap_or(overlay_path);

        let domain_type = self.config.domain_type_for(&vm.template, vm.domain_type);
        let password = vnc_password()
            .map_err(|e| self.host_error(format!("drawing a vnc password from the OS: {e}")))?;
        let xml = domain_xml(&DomainSpec {
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
        let ours = parse_domain(&xml).is_ok_and(|d| {
            d.description.contains(DESCRIPTION_TAG)
                && d.disks
                    .iter()
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
        let parsed = parse_domain(&xml).map_err(|e| {
            self.host_error(format!(
                "libvirt gave an unreadable definition of {name}: {e}"
            ))
        })?;
        let vnc = parsed
            .vnc
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

/// The name of the base image stored in `file`, or `None` for overlays, logs and other files.
fn base_image_name(file: &str) -> Option<&str> {
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

/// The host part of a libvirt URI (`qemu+ssh://user@host:22/system` gives `host`), or `None`
/// for a local URI.
pub fn uri_host(uri: &str) -> Option<&str> {
    let rest = uri.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    (!host.is_empty()).then_some(host)
}

/// The URI to open: `uri`, with `no_tty=1` added to one that runs the `ssh` command and does
/// not say, so that ssh runs in batch mode and a daemon never waits at a password, passphrase
/// or host-key prompt. The libssh and libssh2 transports never prompt without a callback.
fn connect_uri(uri: &str) -> std::borrow::Cow<'_, str> {
    let scheme = uri.split_once("://").map_or("", |(scheme, _)| scheme);
    let query = uri.split_once('?').map(|(_, q)| q);
    let says = query.is_some_and(|q| q.split('&').any(|p| p.starts_with("no_tty=")));
    if !scheme.ends_with("+ssh") || says {
        return uri.into();
    }
    let sep = if query.is_some() { '&' } else { '?' };
    format!("{uri}{sep}no_tty=1").into()
}

/// Whether files on the host are files here (no host in the URI).
fn uri_is_local(uri: &str) -> bool {
    uri_host(uri).is_none()
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

/// Escapes text for an XML attribute or element.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// The storage volume XML of an overlay backed by the qcow2 at `base_path`.
fn overlay_xml(file: &str, capacity_bytes: u64, base_path: &str) -> String {
    format!(
        "<volume>\
           <name>{}</name>\
           <capacity unit='bytes'>{capacity_bytes}</capacity>\
           <allocation unit='bytes'>0</allocation>\
           <target><format type='qcow2'/></target>\
           <backingStore><path>{}</path><format type='qcow2'/></backingStore>\
         </volume>",
        escape(file),
        escape(base_path)
    )
}

/// Everything a domain definition is made from.
struct DomainSpec<'a> {
    name: &'a str,
    template: &'a str,
    base_image: &'a str,
    guest_os: GuestOs,
    shape: Shape,
    domain_type: DomainType,
    overlay_path: &'a str,
    serial_log_path: &'a str,
    vnc_password: &'a str,
    network: &'a Network,
}

/// The libvirt domain XML of one VM.
fn domain_xml(spec: &DomainSpec<'_>) -> String {
    // Linux guests carry virtio drivers; Windows and macOS installers do not, so they get
    // devices they can drive out of the box.
    let (disk_bus, disk_dev, nic_model) = match spec.guest_os {
        GuestOs::Linux => ("virtio", "vda", "virtio"),
        GuestOs::Windows | GuestOs::Macos => ("sata", "sda", "e1000e"),
    };
    let cpu = match spec.domain_type {
        DomainType::Kvm => "<cpu mode='host-passthrough'/>",
        DomainType::Qemu | DomainType::Test => "",
    };
    let interface = match spec.network {
        Network::None => String::new(),
        Network::User => format!("<interface type='user'><model type='{nic_model}'/></interface>"),
        Network::Libvirt(net) => format!(
            "<interface type='network'><source network='{}'/><model type='{nic_model}'/></interface>",
            escape(net)
        ),
    };
    format!(
        "<domain type='{domain_type}'>
  <name>{name}</name>
  <description>{tag}: template {template}, base image {base}</description>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>{vcpus}</vcpu>
  <os><type>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  {cpu}
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{overlay}'/>
      <target dev='{disk_dev}' bus='{disk_bus}'/>
    </disk>
    {interface}
    <serial type='pty'><log file='{serial_log}' append='off'/><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1' passwd='{password}'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <video><model type='vga'/></video>
  </devices>
</domain>
",
        domain_type = spec.domain_type,
        name = escape(spec.name),
        tag = DESCRIPTION_TAG,
        template = escape(spec.template),
        base = escape(spec.base_image),
        memory = spec.shape.memory_mib,
        vcpus = spec.shape.vcpus,
        overlay = escape(spec.overlay_path),
        serial_log = escape(spec.serial_log_path),
        password = escape(spec.vnc_password),
    )
}

/// What berth reads back from a domain definition.
#[derive(Debug, Default, PartialEq, Eq)]
struct ParsedDomain {
    description: String,
    disks: Vec<String>,
    vnc: Option<Vnc>,
}

#[derive(Debug, PartialEq, Eq)]
struct Vnc {
    /// -1 until the VM runs (with autoport).
    port: Option<i32>,
    password: Option<String>,
}

fn parse_domain(xml: &str) -> Result<ParsedDomain, roxmltree::Error> {
    let doc = roxmltree::Document::parse(xml)?;
    let mut out = ParsedDomain::default();
    for node in doc.root_element().children().filter(|n| n.is_element()) {
        match node.tag_name().name() {
            "description" => out.description = node.text().unwrap_or("").to_owned(),
            "devices" => {
                for dev in node.children().filter(|n| n.is_element()) {
                    match dev.tag_name().name() {
                        "disk" => {
                            let source = dev
                                .children()
                                .find(|n| n.has_tag_name("source"))
                                .and_then(|s| s.attribute("file"));
                            if let Some(path) = source {
                                out.disks.push(path.to_owned());
                            }
                        }
                        "graphics" if dev.attribute("type") == Some("vnc") => {
                            out.vnc = Some(Vnc {
                                port: dev.attribute("port").and_then(|p| p.parse().ok()),
                                password: dev.attribute("passwd").map(str::to_owned),
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Why a PPM screenshot could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum PpmError {
    #[error("not a binary ppm (P6) image")]
    NotPpm,
    #[error("bad ppm header: {0}")]
    Header(&'static str),
    #[error("ppm pixel data is {got} bytes, expected {expected}")]
    Truncated { got: usize, expected: usize },
    #[error("encoding png: {0}")]
    Png(#[from] png::EncodingError),
}

/// Converts a binary PPM (`P6`, what QEMU's screendump writes) into a PNG.
pub fn ppm_to_png(ppm: &[u8]) -> Result<Vec<u8>, PpmError> {
    let rest = ppm.strip_prefix(b"P6").ok_or(PpmError::NotPpm)?;
    let mut pos = 0;
    let mut fields = [0usize; 3];
    for field in &mut fields {
        // Whitespace and `#` comments may separate the header fields.
        loop {
            match rest.get(pos) {
                Some(b) if b.is_ascii_whitespace() => pos += 1,
                Some(b'#') => {
                    while rest.get(pos).is_some_and(|b| *b != b'\n') {
                        pos += 1;
                    }
                }
                _ => break,
            }
        }
        let start = pos;
        while rest.get(pos).is_some_and(u8::is_ascii_digit) {
            pos += 1;
        }
        let digits =
            std::str::from_utf8(&rest[start..pos]).map_err(|_| PpmError::Header("not ascii"))?;
        *field = digits
            .parse()
            .map_err(|_| PpmError::Header("missing number"))?;
    }
    let [width, height, maxval] = fields;
    if !rest.get(pos).is_some_and(u8::is_ascii_whitespace) {
        return Err(PpmError::Header("no whitespace after maxval"));
    }
    pos += 1;
    if width == 0 || height == 0 || maxval == 0 || maxval > 65535 {
        return Err(PpmError::Header("zero size or bad maxval"));
    }
    let bytes_per_sample = if maxval > 255 { 2 } else { 1 };
    let expected = width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(3 * bytes_per_sample))
        .ok_or(PpmError::Header("image too large"))?;
    let data = &rest[pos..];
    if data.len() < expected {
        return Err(PpmError::Truncated {
            got: data.len(),
            expected,
        });
    }
    let scale = |v: usize| -> u8 { u8::try_from(v * 255 / maxval).unwrap_or(u8::MAX) };
    let rgb: Vec<u8> = if bytes_per_sample == 1 {
        data[..expected]
            .iter()
            .map(|v| scale(usize::from(*v)))
            .collect()
    } else {
        data[..expected]
            .chunks_exact(2)
            .map(|v| scale(usize::from(u16::from_be_bytes([v[0], v[1]]))))
            .collect()
    };
    let w = u32::try_from(width).map_err(|_| PpmError::Header("image too wide"))?;
    let h = u32::try_from(height).map_err(|_| PpmError::Header("image too tall"))?;
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(network: &'a Network, os: GuestOs, domain_type: DomainType) -> DomainSpec<'a> {
        DomainSpec {
            name: "berth-vm7",
            template: "linux&co",
            base_image: "tiny",
            guest_os: os,
            shape: Shape {
                vcpus: 2,
                memory_mib: 512,
            },
            domain_type,
            overlay_path: "/img/berth-vm7.qcow2",
            serial_log_path: "/img/berth-vm7.serial.log",
            vnc_password: "pa'ss",
            network,
        }
    }

    #[test]
    fn domain_xml_carries_the_recipe_and_reads_back() {
        let xml = domain_xml(&spec(&Network::User, GuestOs::Linux, DomainType::Qemu));
        assert!(xml.contains("<domain type='qemu'>"), "{xml}");
        assert!(xml.contains("<vcpu>2</vcpu>"));
        assert!(xml.contains("<memory unit='MiB'>512</memory>"));
        assert!(xml.contains("bus='virtio'"));
        assert!(xml.contains("listen='127.0.0.1'"));
        assert!(!xml.contains("host-passthrough"));
        let parsed = parse_domain(&xml).expect("valid xml");
        assert!(parsed.description.contains(DESCRIPTION_TAG));
        assert!(parsed.description.contains("linux&co"));
        assert_eq!(parsed.disks, vec!["/img/berth-vm7.qcow2".to_owned()]);
        assert_eq!(
            parsed.vnc,
            Some(Vnc {
                port: None,
                password: Some("pa'ss".into())
            })
        );
    }

    #[test]
    fn windows_guests_get_devices_they_can_drive_and_kvm_passes_the_cpu_through() {
        let net = Network::Libvirt("default".into());
        let xml = domain_xml(&spec(&net, GuestOs::Windows, DomainType::Kvm));
        assert!(xml.contains("bus='sata'"));
        assert!(xml.contains("e1000e"));
        assert!(xml.contains("<source network='default'/>"));
        assert!(xml.contains("host-passthrough"));
        let xml = domain_xml(&spec(&Network::None, GuestOs::Linux, DomainType::Kvm));
        assert!(!xml.contains("<interface"));
    }

    #[test]
    fn overlay_xml_names_its_backing_file() {
        let xml = overlay_xml("berth-vm1.qcow2", 1 << 30, "/img/tiny.qcow2");
        let doc = roxmltree::Document::parse(&xml).expect("valid xml");
        let backing = doc
            .descendants()
            .find(|n| n.has_tag_name("backingStore"))
            .and_then(|n| n.children().find(|c| c.has_tag_name("path")))
            .and_then(|n| n.text());
        assert_eq!(backing, Some("/img/tiny.qcow2"));
    }

    #[test]
    fn base_images_are_qcow2_files_that_are_not_overlays() {
        assert_eq!(base_image_name("tiny.qcow2"), Some("tiny"));
        assert_eq!(base_image_name("berth-vm3.qcow2"), None);
        assert_eq!(base_image_name("berth-vm3.serial.log"), None);
        assert_eq!(base_image_name("notes.txt"), None);
        assert_eq!(base_image_name(".qcow2"), None);
    }

    #[test]
    fn uri_hosts() {
        assert_eq!(uri_host("qemu:///system"), None);
        assert_eq!(uri_host("test:///default"), None);
        assert_eq!(
            uri_host("qemu+ssh://ci@kvm7.example/system"),
            Some("kvm7.example")
        );
        assert_eq!(uri_host("qemu+tcp://kvm7:16509/system"), Some("kvm7"));
        assert_eq!(
            uri_host("qemu+ssh://[2001:db8::1]/system"),
            Some("2001:db8::1")
        );
        assert_eq!(uri_host("qemu+unix:///system?socket=/x"), None);
    }

    #[test]
    fn ssh_uris_never_prompt() {
        assert_eq!(
            connect_uri("qemu+ssh://ci@kvm7/system"),
            "qemu+ssh://ci@kvm7/system?no_tty=1"
        );
        assert_eq!(
            connect_uri("qemu+ssh://ci@kvm7:2222/system?keyfile=/k"),
            "qemu+ssh://ci@kvm7:2222/system?keyfile=/k&no_tty=1"
        );
        // What the operator wrote stands.
        assert_eq!(
            connect_uri("qemu+ssh://kvm7/system?no_tty=0"),
            "qemu+ssh://kvm7/system?no_tty=0"
        );
        for uri in [
            "qemu:///system",
            "qemu+libssh2://kvm7/system?known_hosts=/k",
            "test:///default",
        ] {
            assert_eq!(connect_uri(uri), uri);
        }
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
    fn domain_types_parse() {
        assert_eq!("qemu".parse(), Ok(DomainType::Qemu));
        assert_eq!("kvm".parse(), Ok(DomainType::Kvm));
        assert_eq!(
            "xen".parse::<DomainType>(),
            Err(UnknownDomainType("xen".into()))
        );
        let mut config = LibvirtConfig::new("qemu:///system", "/img");
        config
            .template_domain_types
            .insert("slow".into(), DomainType::Qemu);
        // The host's choice for a template wins over the template's; the template's over
        // the host's default.
        assert_eq!(config.domain_type_for("slow", None), DomainType::Qemu);
        assert_eq!(
            config.domain_type_for("slow", Some(DomainType::Kvm)),
            DomainType::Qemu
        );
        assert_eq!(config.domain_type_for("fast", None), DomainType::Kvm);
        assert_eq!(
            config.domain_type_for("fast", Some(DomainType::Qemu)),
            DomainType::Qemu
        );
        config.domain_type = DomainType::Qemu;
        assert_eq!(
            config.domain_type_for("fast", Some(DomainType::Kvm)),
            DomainType::Kvm
        );
    }

    #[test]
    fn options_build_a_config_and_name_what_is_wrong() {
        let opts = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let c = LibvirtConfig::from_options(&opts(&[
            ("uri", "qemu+ssh://ci@kvm7/system"),
            ("domain_type", "qemu"),
            ("domain_type.win11", "kvm"),
            ("network", "network:default"),
            ("boot_marker", "READY"),
            ("min_free_disk_mib", "2048"),
        ]))
        .expect("valid options");
        assert_eq!(c.uri, "qemu+ssh://ci@kvm7/system");
        assert_eq!(c.image_dir, DEFAULT_IMAGE_DIR);
        assert_eq!(c.domain_type_for("linux", None), DomainType::Qemu);
        assert_eq!(c.domain_type_for("win11", None), DomainType::Kvm);
        assert_eq!(c.network, Network::Libvirt("default".into()));
        assert_eq!(c.boot_marker.as_deref(), Some("READY"));
        assert_eq!(c.min_free_disk_mib, 2048);

        let err = |pairs: &[(&str, &str)]| LibvirtConfig::from_options(&opts(pairs)).map(|_| ());
        assert_eq!(err(&[]).map_err(|e| e.key), Err("uri".into()));
        assert_eq!(
            err(&[("uri", "qemu:///system"), ("colour", "red")]).map_err(|e| e.key),
            Err("colour".into())
        );
        assert_eq!(
            err(&[("uri", "qemu:///system"), ("domain_type", "xen")]).map_err(|e| e.key),
            Err("domain_type".into())
        );
        assert_eq!(
            err(&[("uri", "qemu:///system"), ("image_dir", "images")]).map_err(|e| e.key),
            Err("image_dir".into())
        );
        assert_eq!(
            err(&[("uri", "qemu:///system"), ("boot_timeout_ms", "soon")]).map_err(|e| e.key),
            Err("boot_timeout_ms".into())
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

    #[test]
    fn ppm_converts_to_png() {
        let mut ppm = b"P6\n# made by hand\n2 1\n255\n".to_vec();
        ppm.extend_from_slice(&[255, 0, 0, 0, 0, 255]);
        let png_bytes = ppm_to_png(&ppm).expect("converts");
        assert!(png_bytes.starts_with(PNG_SIGNATURE));
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().expect("png header");
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).expect("png frame");
        assert_eq!((info.width, info.height), (2, 1));
        assert_eq!(&buf[..6], &[255, 0, 0, 0, 0, 255]);
    }

    #[test]
    fn bad_ppm_is_an_error_value() {
        assert!(matches!(ppm_to_png(b"GIF89a"), Err(PpmError::NotPpm)));
        assert!(matches!(
            ppm_to_png(b"P6 2 2 255\n\x00\x00"),
            Err(PpmError::Truncated {
                got: 2,
                expected: 12
            })
        ));
        assert!(matches!(ppm_to_png(b"P6 x"), Err(PpmError::Header(_))));
    }
}
