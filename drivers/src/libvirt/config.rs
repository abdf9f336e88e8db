//! A libvirt host's configuration: its URI, image directory, domain types, network and limits,
//! read from the host's driver options.

use std::collections::BTreeMap;

use crate::images::{ImageStore, store_from_options};
use crate::{DomainType, UnknownDomainType};

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
    /// Where base images the host lacks are pulled from; without one, a missing base image is
    /// the host's error.
    pub image_store: Option<ImageStore>,
    /// The longest one pull of a base image may take.
    pub pull_timeout_ms: u64,
    /// The most the base images in the image directory may take on disk. Before a pull that
    /// would go past it, the least recently used base images that back no overlay or VM are
    /// removed; without one, nothing is ever removed.
    pub image_budget_mib: Option<u64>,
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
            image_store: None,
            pull_timeout_ms: 3_600_000,
            image_budget_mib: None,
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
    /// | `image_store` | where missing base images are pulled from: a directory, `http://` or `https://` URL |
    /// | `image_store_ca` | for an `https://` store: a PEM file of CA certificates trusted beside the system's roots |
    /// | `image_budget_mib` | the most base images may take; unused ones are evicted to stay under it |
    /// | `boot_timeout_ms`, `min_free_disk_mib`, `call_timeout_ms`, `pull_timeout_ms` | numbers |
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
                "pull_timeout_ms" => config.pull_timeout_ms = number(key, value)?,
                "image_budget_mib" => config.image_budget_mib = Some(number(key, value)?),
                // Read together, below: the CA goes with the store.
                "image_store" | "image_store_ca" => {}
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
        config.image_store = store_from_options(options)
            .map_err(|(key, message)| OptionError::new(key, &message))?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
            ("image_budget_mib", "20480"),
        ]))
        .expect("valid options");
        assert_eq!(c.uri, "qemu+ssh://ci@kvm7/system");
        assert_eq!(c.image_dir, DEFAULT_IMAGE_DIR);
        assert_eq!(c.domain_type_for("linux", None), DomainType::Qemu);
        assert_eq!(c.domain_type_for("win11", None), DomainType::Kvm);
        assert_eq!(c.network, Network::Libvirt("default".into()));
        assert_eq!(c.boot_marker.as_deref(), Some("READY"));
        assert_eq!(c.min_free_disk_mib, 2048);
        assert_eq!(c.image_budget_mib, Some(20480));
        assert_eq!(c.image_store, None);
        let c = LibvirtConfig::from_options(&opts(&[
            ("uri", "qemu:///system"),
            ("image_store", "http://mirror:8080/images"),
        ]))
        .expect("valid options");
        assert_eq!(
            c.image_store,
            Some(ImageStore::Http("http://mirror:8080/images".into()))
        );

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
            err(&[("uri", "qemu:///system"), ("image_store", "images")]).map_err(|e| e.key),
            Err("image_store".into())
        );
        assert_eq!(
            err(&[("uri", "qemu:///system"), ("boot_timeout_ms", "soon")]).map_err(|e| e.key),
            Err("boot_timeout_ms".into())
        );
        assert_eq!(
            err(&[("uri", "qemu:///system"), ("image_budget_mib", "-1")]).map_err(|e| e.key),
            Err("image_budget_mib".into())
        );
    }
}
