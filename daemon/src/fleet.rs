//! Building a host's driver from its description: the one place that knows which driver kinds
//! this daemon can run and which options each takes. A new driver is added here (see the
//! drivers crate's `GUIDE.md`).
//!
//! Daemon-wide defaults fill the options a host leaves out when its driver is built, and are
//! never journaled: a changed `[drivers]` section applies to every host at the next start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use berth_drivers::parallels::{ParallelsConfig, ParallelsHost};
use berth_drivers::sim::SimWorld;
use berth_drivers::{ConsoleAddress, Driver, DriverError, HostFacts, VmListing, VmRecipe};
use berth_sched::DriverKind;

use crate::config::DriversSection;
#[cfg(feature = "libvirt")]
use crate::wire::libvirt_config;
#[cfg(not(feature = "libvirt"))]
use crate::wire::no_libvirt;
use crate::wire::{FieldError, WireHost, parallels_error};

/// The known_hosts file in the data directory that Parallels hosts check host keys against
/// unless their options or the `[drivers]` section name another.
pub const KNOWN_HOSTS_FILE: &str = "known_hosts";
/// The directory in the data directory that holds the SSH control sockets of Parallels hosts.
pub const SSH_CONTROL_DIR: &str = "ssh";

/// What hosts get for the driver options they leave out.
#[derive(Clone, Debug)]
pub(crate) struct DriverDefaults {
    /// Parallels: the known_hosts file (checked strictly).
    pub known_hosts: PathBuf,
    /// Parallels: where SSH control sockets live.
    pub control_dir: PathBuf,
    /// libvirt: the image directory on each host, if the `[drivers]` section names one (the
    /// driver's own default otherwise).
    pub image_dir: Option<String>,
    /// libvirt and Parallels: the image store hosts pull missing base images (templates, on
    /// Parallels) from.
    pub image_store: Option<String>,
    /// The CA file of an `https://` `image_store`, for the hosts that take that store.
    pub image_store_ca: Option<PathBuf>,
    /// libvirt and Parallels: the disk budget of each host's base images (pulled templates, on
    /// Parallels), unless the host gives its own.
    pub image_budget_mib: Option<u64>,
    /// The board every driver reports its pulls of base images on, which the API reads.
    pub pulls: berth_drivers::images::Pulls,
    /// The daemon's right to act: every driver call that changes a host waits for it to be
    /// open (see `lease`).
    pub gate: crate::lease::Gate,
}

impl DriverDefaults {
    pub(crate) fn new(data_dir: &Path, section: &DriversSection) -> DriverDefaults {
        DriverDefaults {
            known_hosts: section
                .known_hosts
                .clone()
                .unwrap_or_else(|| data_dir.join(KNOWN_HOSTS_FILE)),
            control_dir: data_dir.join(SSH_CONTROL_DIR),
            image_dir: section.image_dir.clone(),
            image_store: section.image_store.clone(),
            image_store_ca: section.image_store_ca.clone(),
            image_budget_mib: section.image_budget_mib,
            pulls: berth_drivers::images::Pulls::default(),
            gate: crate::lease::Gate::sole(),
        }
    }

    /// The host's options with the defaults of its driver kind filled in.
    fn options(&self, kind: DriverKind, host: &WireHost) -> BTreeMap<String, String> {
        let mut options = host.options.clone();
        // The section's CA goes with the section's store only: a host that names its own store
        // names its own CA.
        let own_store = host.options.contains_key("image_store");
        let mut default = |key: &str, value: String| {
            options.entry(key.to_owned()).or_insert(value);
        };
        let default_store = |default: &mut dyn FnMut(&str, String)| {
            if let (Some(store), false) = (&self.image_store, own_store) {
                default("image_store", store.clone());
                if let Some(ca) = &self.image_store_ca {
                    default("image_store_ca", ca.display().to_string());
                }
            }
        };
        match kind {
            DriverKind::Sim => {}
            DriverKind::Libvirt => {
                if let Some(dir) = &self.image_dir {
                    default("image_dir", dir.clone());
                }
                default_store(&mut default);
                if let Some(budget) = self.image_budget_mib {
                    default("image_budget_mib", budget.to_string());
                }
            }
            DriverKind::Parallels => {
                default("known_hosts", self.known_hosts.display().to_string());
                default("control_dir", self.control_dir.display().to_string());
                default_store(&mut default);
                if let Some(budget) = self.image_budget_mib {
                    default("image_budget_mib", budget.to_string());
                }
            }
        }
        options
    }
}

/// The driver for one host; the host was checked with `check_driver` when it was added.
pub(crate) fn build_driver(
    host: &WireHost,
    sim: &Arc<SimWorld>,
    defaults: &DriverDefaults,
) -> Result<Arc<dyn Driver>, FieldError> {
    let kind = host.validate()?;
    let options = defaults.options(kind, host);
    let driver: Arc<dyn Driver> = match kind {
        DriverKind::Sim => {
            Arc::new(sim.host(&host.name, host.vcpus, host.memory_mib, host.images.clone()))
        }
        #[cfg(feature = "libvirt")]
        DriverKind::Libvirt => Arc::new(berth_drivers::libvirt::LibvirtHost::with_pulls(
            host.name.as_str(),
            libvirt_config(&options)?,
            defaults.pulls.clone(),
        )),
        #[cfg(not(feature = "libvirt"))]
        DriverKind::Libvirt => return Err(no_libvirt()),
        DriverKind::Parallels => {
            let config = ParallelsConfig::from_options(&options).map_err(parallels_error)?;
            if let Some(dir) = &config.control_dir {
                create_private_dir(dir).map_err(|e| {
                    FieldError::new(
                        "options.control_dir",
                        format!("cannot create {}: {e}", dir.display()),
                    )
                })?;
            }
            Arc::new(ParallelsHost::with_pulls(
                &host.name,
                config,
                defaults.pulls.clone(),
            ))
        }
    };
    // A simulated host is made with its capacity; others report theirs and are capped.
    let capped = kind != DriverKind::Sim && (host.vcpus > 0 || host.memory_mib > 0);
    if !capped && defaults.gate.is_sole() {
        return Ok(driver);
    }
    Ok(Arc::new(Guarded {
        inner: driver,
        vcpus: (capped && host.vcpus > 0).then_some(host.vcpus),
        memory_mib: (capped && host.memory_mib > 0).then_some(host.memory_mib),
        gate: defaults.gate.clone(),
    }))
}

/// Makes a directory only its owner may enter (it holds SSH control sockets).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// A driver whose probe reports at most the configured vCPUs and memory (a host shared with
/// other work gives berth only part of itself), and whose calls that change the host start
/// only while the daemon may act (a leader whose lease ran out touches no host).
struct Guarded {
    inner: Arc<dyn Driver>,
    vcpus: Option<u32>,
    memory_mib: Option<u64>,
    gate: crate::lease::Gate,
}

impl Guarded {
    fn may_act(&self) -> Result<(), DriverError> {
        if self.gate.may_act() {
            return Ok(());
        }
        Err(DriverError::Transient {
            host: self.inner.host().to_owned(),
            message: "this daemon no longer leads: no driver call".into(),
        })
    }
}

#[async_trait]
impl Driver for Guarded {
    fn kind(&self) -> DriverKind {
        self.inner.kind()
    }

    fn host(&self) -> &str {
        self.inner.host()
    }

    async fn probe(&self) -> Result<HostFacts, DriverError> {
        let mut facts = self.inner.probe().await?;
        if let Some(v) = self.vcpus {
            facts.vcpus = facts.vcpus.min(v);
        }
        if let Some(m) = self.memory_mib {
            facts.memory_mib = facts.memory_mib.min(m);
        }
        Ok(facts)
    }

    async fn provision(&self, vm: &VmRecipe) -> Result<(), DriverError> {
        self.may_act()?;
        self.inner.provision(vm).await
    }

    async fn boot(&self, name: &str) -> Result<(), DriverError> {
        self.may_act()?;
        self.inner.boot(name).await
    }

    async fn destroy(&self, name: &str) -> Result<(), DriverError> {
        self.may_act()?;
        self.inner.destroy(name).await
    }

    async fn list(&self) -> Result<Vec<VmListing>, DriverError> {
        self.inner.list().await
    }

    async fn console(&self, name: &str) -> Result<ConsoleAddress, DriverError> {
        self.inner.console(name).await
    }

    async fn screenshot(&self, name: &str) -> Result<Vec<u8>, DriverError> {
        self.inner.screenshot(name).await
    }

    async fn serial_log(&self, name: &str) -> Result<Vec<u8>, DriverError> {
        self.inner.serial_log(name).await
    }

    fn image_store(&self) -> Option<String> {
        self.inner.image_store()
    }

    async fn pull_image(&self, image: &str) -> Result<(), DriverError> {
        self.may_act()?;
        self.inner.pull_image(image).await
    }

    async fn evict_image(&self, image: &str) -> Result<(), DriverError> {
        self.may_act()?;
        self.inner.evict_image(image).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{check_driver, default_slots};

    fn host(driver: &str, options: &[(&str, &str)]) -> WireHost {
        WireHost {
            id: 1,
            name: "h1".into(),
            driver: driver.into(),
            vcpus: 0,
            memory_mib: 0,
            slots: BTreeMap::new(),
            cpu_overcommit_milli: 1000,
            memory_overcommit_milli: 1000,
            labels: BTreeMap::new(),
            images: Vec::new(),
            options: options
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn parallels_options_are_checked_and_name_the_option() {
        let h = host("parallels", &[("ssh", "ci@mac1:22")]);
        assert_eq!(check_driver(DriverKind::Parallels, &h), Ok(()));
        let e = check_driver(DriverKind::Parallels, &host("parallels", &[])).unwrap_err();
        assert_eq!(e.field, "options.ssh");
        let h = host("parallels", &[("ssh", "ci@mac1"), ("colour", "red")]);
        let e = check_driver(DriverKind::Parallels, &h).unwrap_err();
        assert_eq!(e.field, "options.colour");
        assert!(e.message.contains("colour"), "{}", e.message);
    }

    #[test]
    fn parallels_hosts_get_the_data_directory_defaults() {
        let defaults = DriverDefaults::new(Path::new("/data"), &DriversSection::default());
        let o = defaults.options(
            DriverKind::Parallels,
            &host("parallels", &[("ssh", "ci@mac1")]),
        );
        assert_eq!(o["known_hosts"], "/data/known_hosts");
        assert_eq!(o["control_dir"], "/data/ssh");
        let o = defaults.options(
            DriverKind::Parallels,
            &host("parallels", &[("ssh", "ci@mac1"), ("known_hosts", "/k")]),
        );
        assert_eq!(o["known_hosts"], "/k");
        assert_eq!(default_slots(DriverKind::Parallels)["macos"], 2);
    }

    #[test]
    fn parallels_hosts_take_the_drivers_section_image_store_unless_they_give_their_own() {
        let section = DriversSection {
            image_store: Some("http://mirror:8080/images".into()),
            image_budget_mib: Some(20_480),
            ..DriversSection::default()
        };
        let defaults = DriverDefaults::new(Path::new("/data"), &section);
        let o = defaults.options(
            DriverKind::Parallels,
            &host("parallels", &[("ssh", "ci@mac1")]),
        );
        assert_eq!(o["image_store"], "http://mirror:8080/images");
        // Parallels hosts keep their pulled templates within the same budget.
        assert_eq!(o["image_budget_mib"], "20480");
        ParallelsConfig::from_options(&o).expect("options a parallels host takes");
        let o = defaults.options(
            DriverKind::Parallels,
            &host(
                "parallels",
                &[("ssh", "ci@mac1"), ("image_store", "/srv/t")],
            ),
        );
        assert_eq!(o["image_store"], "/srv/t");
        ParallelsConfig::from_options(&o).expect("options a parallels host takes");
    }

    #[test]
    fn the_drivers_sections_ca_goes_with_its_store_only() {
        let section = DriversSection {
            image_store: Some("https://mirror/images".into()),
            image_store_ca: Some(PathBuf::from("/etc/berth/store-ca.pem")),
            ..DriversSection::default()
        };
        let defaults = DriverDefaults::new(Path::new("/data"), &section);
        for (kind, driver, first) in [
            (DriverKind::Parallels, "parallels", ("ssh", "ci@mac1")),
            (DriverKind::Libvirt, "libvirt", ("uri", "qemu:///system")),
        ] {
            let o = defaults.options(kind, &host(driver, &[first]));
            assert_eq!(o["image_store"], "https://mirror/images");
            assert_eq!(o["image_store_ca"], "/etc/berth/store-ca.pem");
            let o = defaults.options(kind, &host(driver, &[first, ("image_store", "/srv/t")]));
            assert_eq!(o["image_store"], "/srv/t");
            assert!(!o.contains_key("image_store_ca"), "{o:?}");
        }
    }

    #[test]
    fn libvirt_hosts_take_the_drivers_section_defaults_unless_they_give_their_own() {
        let section = DriversSection {
            image_store: Some("http://mirror:8080/images".into()),
            image_budget_mib: Some(20_480),
            ..DriversSection::default()
        };
        let defaults = DriverDefaults::new(Path::new("/data"), &section);
        let o = defaults.options(
            DriverKind::Libvirt,
            &host("libvirt", &[("uri", "qemu:///system")]),
        );
        assert_eq!(o["image_store"], "http://mirror:8080/images");
        assert_eq!(o["image_budget_mib"], "20480");
        let o = defaults.options(
            DriverKind::Libvirt,
            &host(
                "libvirt",
                &[("uri", "qemu:///system"), ("image_budget_mib", "512")],
            ),
        );
        assert_eq!(o["image_budget_mib"], "512");
    }

    #[cfg(not(feature = "libvirt"))]
    #[test]
    fn libvirt_without_the_feature_says_how_to_rebuild() {
        let h = host("libvirt", &[("uri", "qemu:///system")]);
        let e = check_driver(DriverKind::Libvirt, &h).unwrap_err();
        assert_eq!(e.field, "driver");
        assert!(
            e.message
                .contains("cargo build --release --features libvirt"),
            "{}",
            e.message
        );
    }

    #[cfg(feature = "libvirt")]
    #[test]
    fn libvirt_options_are_checked_and_name_the_option() {
        let h = host(
            "libvirt",
            &[("uri", "qemu:///system"), ("domain_type", "qemu")],
        );
        assert_eq!(check_driver(DriverKind::Libvirt, &h), Ok(()));
        let e = check_driver(DriverKind::Libvirt, &host("libvirt", &[])).unwrap_err();
        assert_eq!(e.field, "options.uri");
        let h = host(
            "libvirt",
            &[("uri", "qemu:///system"), ("domain_type", "xen")],
        );
        assert_eq!(
            check_driver(DriverKind::Libvirt, &h).unwrap_err().field,
            "options.domain_type"
        );
    }
}
