//! The XML libvirt is given and gives back: domain definitions, overlay volumes and the image
//! directory's pool.
//!
//! Each is a serde type that quick-xml writes and reads, so escaping is quick-xml's business and
//! what berth writes is what it reads back. Reading is lenient: libvirt adds to a definition
//! (ids, addresses, aliases, defaults) and berth reads the same XML of domains it did not make
//! when it checks a name clash, so the types name only what berth writes, unknown elements and
//! attributes are skipped, and what another domain may lack is optional.

use berth_sched::{GuestOs, Shape};
use serde::{Deserialize, Serialize};

use super::config::Network;
use crate::DomainType;

/// What berth writes into the `<description>` of every domain it defines, so that a domain
/// with a berth name but another origin is recognised as a name clash rather than adopted.
pub(super) const DESCRIPTION_TAG: &str = "made by berth";

/// XML that could not be written.
pub(super) type WriteError = quick_xml::SeError;

/// XML that could not be read.
pub(super) type ReadError = quick_xml::DeError;

/// Everything a domain definition is made from.
pub(super) struct DomainSpec<'a> {
    pub(super) name: &'a str,
    pub(super) template: &'a str,
    pub(super) base_image: &'a str,
    pub(super) guest_os: GuestOs,
    pub(super) shape: Shape,
    pub(super) domain_type: DomainType,
    pub(super) overlay_path: &'a str,
    pub(super) serial_log_path: &'a str,
    pub(super) vnc_password: &'a str,
    pub(super) network: &'a Network,
}

/// A libvirt domain definition (`<domain>`), as far as berth writes and reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename = "domain")]
pub(super) struct Domain {
    /// The domain type: `kvm`, `qemu`, `test`, or another hypervisor's in a foreign domain.
    #[serde(rename = "@type")]
    pub(super) kind: String,
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: String,
    pub(super) memory: Memory,
    pub(super) vcpu: Vcpu,
    pub(super) os: Os,
    #[serde(default)]
    pub(super) features: Features,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) on_poweroff: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) on_reboot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) on_crash: Option<String>,
    #[serde(default)]
    pub(super) devices: Devices,
}

/// `<memory unit='MiB'>512</memory>`; libvirt gives it back in KiB.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Memory {
    /// libvirt's unit when none is given is KiB.
    #[serde(rename = "@unit", default, skip_serializing_if = "Option::is_none")]
    pub(super) unit: Option<String>,
    #[serde(rename = "$text")]
    pub(super) amount: u64,
}

/// `<vcpu>2</vcpu>`; libvirt adds `placement='static'`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Vcpu {
    #[serde(rename = "$text")]
    pub(super) count: u32,
}

/// `<os><type>hvm</type><boot dev='hd'/></os>`; libvirt adds the architecture and machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Os {
    #[serde(rename = "type")]
    pub(super) kind: OsType,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) boot: Vec<Boot>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct OsType {
    #[serde(rename = "$text")]
    pub(super) name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Boot {
    #[serde(rename = "@dev")]
    pub(super) dev: String,
}

/// `<features><acpi/><apic/></features>`: present or not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Features {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) acpi: Option<()>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) apic: Option<()>,
}

/// `<cpu mode='host-passthrough'/>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Cpu {
    #[serde(rename = "@mode", default, skip_serializing_if = "Option::is_none")]
    pub(super) mode: Option<String>,
}

/// The devices berth gives a VM; libvirt adds controllers, inputs and more, which berth skips.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Devices {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) disk: Vec<Disk>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) interface: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) serial: Vec<Serial>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) console: Vec<Console>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) graphics: Vec<Graphics>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) video: Vec<Video>,
}

/// `<disk type='file' device='disk'>` with its driver, source file and target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Disk {
    #[serde(rename = "@type")]
    pub(super) kind: String,
    #[serde(rename = "@device", default, skip_serializing_if = "Option::is_none")]
    pub(super) device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) driver: Option<DiskDriver>,
    /// A block device or an empty CD-ROM drive of a foreign domain has no source file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) source: Option<DiskSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) target: Option<DiskTarget>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DiskDriver {
    #[serde(rename = "@name")]
    pub(super) name: String,
    #[serde(rename = "@type", default, skip_serializing_if = "Option::is_none")]
    pub(super) format: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DiskSource {
    #[serde(rename = "@file", default, skip_serializing_if = "Option::is_none")]
    pub(super) file: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DiskTarget {
    #[serde(rename = "@dev")]
    pub(super) dev: String,
    #[serde(rename = "@bus", default, skip_serializing_if = "Option::is_none")]
    pub(super) bus: Option<String>,
}

/// `<interface type='user'>` or `<interface type='network'><source network='NAME'/>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Interface {
    #[serde(rename = "@type")]
    pub(super) kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) source: Option<InterfaceSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) model: Option<Model>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct InterfaceSource {
    #[serde(rename = "@network", default, skip_serializing_if = "Option::is_none")]
    pub(super) network: Option<String>,
}

/// `<model type='virtio'/>`, of a network card or a video card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Model {
    #[serde(rename = "@type")]
    pub(super) kind: String,
}

/// `<serial type='pty'>`, with the log virtlogd writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Serial {
    #[serde(rename = "@type")]
    pub(super) kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) log: Option<Log>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) target: Option<CharTarget>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Log {
    #[serde(rename = "@file")]
    pub(super) file: String,
    #[serde(rename = "@append", default, skip_serializing_if = "Option::is_none")]
    pub(super) append: Option<String>,
}

/// `<target type='serial' port='0'/>` of a serial port or console.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct CharTarget {
    #[serde(rename = "@type", default, skip_serializing_if = "Option::is_none")]
    pub(super) kind: Option<String>,
    #[serde(rename = "@port", default, skip_serializing_if = "Option::is_none")]
    pub(super) port: Option<u32>,
}

/// `<console type='pty'>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Console {
    #[serde(rename = "@type")]
    pub(super) kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) target: Option<CharTarget>,
}

/// `<graphics type='vnc' autoport='yes' listen='127.0.0.1' passwd='...'>`; libvirt adds the
/// port once the VM runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Graphics {
    #[serde(rename = "@type")]
    pub(super) kind: String,
    /// -1 until the VM runs (with autoport).
    #[serde(rename = "@port", default, skip_serializing_if = "Option::is_none")]
    pub(super) port: Option<i32>,
    #[serde(rename = "@autoport", default, skip_serializing_if = "Option::is_none")]
    pub(super) autoport: Option<String>,
    #[serde(rename = "@listen", default, skip_serializing_if = "Option::is_none")]
    pub(super) listen_address: Option<String>,
    /// Only in a definition read with the secure flag.
    #[serde(rename = "@passwd", default, skip_serializing_if = "Option::is_none")]
    pub(super) passwd: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) listen: Vec<Listen>,
}

/// `<listen type='address' address='127.0.0.1'/>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Listen {
    #[serde(rename = "@type")]
    pub(super) kind: String,
    #[serde(rename = "@address", default, skip_serializing_if = "Option::is_none")]
    pub(super) address: Option<String>,
}

/// `<video><model type='vga'/></video>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Video {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) model: Option<Model>,
}

/// The VNC console of a domain, as berth reads it back.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Vnc {
    /// -1 until the VM runs (with autoport).
    pub(super) port: Option<i32>,
    pub(super) password: Option<String>,
}

impl Domain {
    /// The definition of one berth VM.
    pub(super) fn new(spec: &DomainSpec<'_>) -> Domain {
        // Linux guests carry virtio drivers; Windows and macOS installers do not, so they get
        // devices they can drive out of the box.
        let (disk_bus, disk_dev, nic_model) = match spec.guest_os {
            GuestOs::Linux => ("virtio", "vda", "virtio"),
            GuestOs::Windows | GuestOs::Macos => ("sata", "sda", "e1000e"),
        };
        let cpu = match spec.domain_type {
            DomainType::Kvm => Some(Cpu {
                mode: Some("host-passthrough".into()),
            }),
            DomainType::Qemu | DomainType::Test => None,
        };
        let nic_model = Some(Model {
            kind: nic_model.into(),
        });
        let interface = match spec.network {
            Network::None => None,
            Network::User => Some(Interface {
                kind: "user".into(),
                source: None,
                model: nic_model,
            }),
            Network::Libvirt(net) => Some(Interface {
                kind: "network".into(),
                source: Some(InterfaceSource {
                    network: Some(net.clone()),
                }),
                model: nic_model,
            }),
        };
        let serial_target = |kind: Option<&str>| {
            Some(CharTarget {
                kind: kind.map(str::to_owned),
                port: Some(0),
            })
        };
        let loopback = "127.0.0.1";
        Domain {
            kind: spec.domain_type.to_string(),
            name: spec.name.to_owned(),
            description: format!(
                "{DESCRIPTION_TAG}: template {}, base image {}",
                spec.template, spec.base_image
            ),
            memory: Memory {
                unit: Some("MiB".into()),
                amount: spec.shape.memory_mib,
            },
            vcpu: Vcpu {
                count: spec.shape.vcpus,
            },
            os: Os {
                kind: OsType { name: "hvm".into() },
                boot: vec![Boot { dev: "hd".into() }],
            },
            features: Features {
                acpi: Some(()),
                apic: Some(()),
            },
            cpu,
            on_poweroff: Some("destroy".into()),
            on_reboot: Some("restart".into()),
            on_crash: Some("destroy".into()),
            devices: Devices {
                disk: vec![Disk {
                    kind: "file".into(),
                    device: Some("disk".into()),
                    driver: Some(DiskDriver {
                        name: "qemu".into(),
                        format: Some("qcow2".into()),
                    }),
                    source: Some(DiskSource {
                        file: Some(spec.overlay_path.to_owned()),
                    }),
                    target: Some(DiskTarget {
                        dev: disk_dev.into(),
                        bus: Some(disk_bus.into()),
                    }),
                }],
                interface: interface.into_iter().collect(),
                serial: vec![Serial {
                    kind: "pty".into(),
                    log: Some(Log {
                        file: spec.serial_log_path.to_owned(),
                        append: Some("off".into()),
                    }),
                    target: serial_target(None),
                }],
                console: vec![Console {
                    kind: "pty".into(),
                    target: serial_target(Some("serial")),
                }],
                graphics: vec![Graphics {
                    kind: "vnc".into(),
                    port: None,
                    autoport: Some("yes".into()),
                    listen_address: Some(loopback.into()),
                    passwd: Some(spec.vnc_password.to_owned()),
                    listen: vec![Listen {
                        kind: "address".into(),
                        address: Some(loopback.into()),
                    }],
                }],
                video: vec![Video {
                    model: Some(Model { kind: "vga".into() }),
                }],
            },
        }
    }

    /// The definition as libvirt reads it.
    pub(super) fn to_xml(&self) -> Result<String, WriteError> {
        write_indented(self)
    }

    /// A definition as libvirt gives it back (`virDomainGetXMLDesc`).
    pub(super) fn from_xml(xml: &str) -> Result<Domain, ReadError> {
        quick_xml::de::from_str(xml)
    }

    /// The files of its file-backed disks.
    pub(super) fn disk_files(&self) -> impl Iterator<Item = &str> {
        self.devices
            .disk
            .iter()
            .filter_map(|d| d.source.as_ref()?.file.as_deref())
    }

    /// Its VNC console, if it has one.
    pub(super) fn vnc(&self) -> Option<Vnc> {
        self.devices
            .graphics
            .iter()
            .find(|g| g.kind == "vnc")
            .map(|g| Vnc {
                port: g.port,
                password: g.passwd.clone(),
            })
    }
}

/// The libvirt domain XML of one VM.
pub(super) fn domain_xml(spec: &DomainSpec<'_>) -> Result<String, WriteError> {
    Domain::new(spec).to_xml()
}

/// A storage volume definition (`<volume>`): berth's overlays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename = "volume")]
pub(super) struct Volume {
    pub(super) name: String,
    pub(super) capacity: Bytes,
    pub(super) allocation: Bytes,
    pub(super) target: VolumeTarget,
    #[serde(
        rename = "backingStore",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub(super) backing_store: Option<BackingStore>,
}

/// `<capacity unit='bytes'>N</capacity>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Bytes {
    #[serde(rename = "@unit")]
    pub(super) unit: String,
    #[serde(rename = "$text")]
    pub(super) amount: u64,
}

impl Bytes {
    fn new(amount: u64) -> Bytes {
        Bytes {
            unit: "bytes".into(),
            amount,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct VolumeTarget {
    pub(super) format: Format,
}

/// `<format type='qcow2'/>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Format {
    #[serde(rename = "@type")]
    pub(super) kind: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct BackingStore {
    pub(super) path: String,
    pub(super) format: Format,
}

/// The storage volume XML of an overlay backed by the qcow2 at `base_path`.
pub(super) fn overlay_xml(
    file: &str,
    capacity_bytes: u64,
    base_path: &str,
) -> Result<String, WriteError> {
    let qcow2 = || Format {
        kind: "qcow2".into(),
    };
    write_indented(&Volume {
        name: file.to_owned(),
        capacity: Bytes::new(capacity_bytes),
        allocation: Bytes::new(0),
        target: VolumeTarget { format: qcow2() },
        backing_store: Some(BackingStore {
            path: base_path.to_owned(),
            format: qcow2(),
        }),
    })
}

/// The storage volume XML of a plain file of `capacity_bytes` that berth fills itself (a base
/// image being pulled, or the marker that says one is).
pub(super) fn file_volume_xml(file: &str, capacity_bytes: u64) -> Result<String, WriteError> {
    write_indented(&Volume {
        name: file.to_owned(),
        capacity: Bytes::new(capacity_bytes),
        allocation: Bytes::new(0),
        target: VolumeTarget {
            format: Format { kind: "raw".into() },
        },
        backing_store: None,
    })
}

/// What eviction reads from a volume's definition as libvirt gives it back
/// (`virStorageVolGetXMLDesc`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub(super) struct VolumeFacts {
    #[serde(default)]
    pub(super) capacity: Option<Bytes>,
    #[serde(default)]
    pub(super) allocation: Option<Bytes>,
    #[serde(default)]
    pub(super) target: Option<VolumeFactsTarget>,
    #[serde(rename = "backingStore", default)]
    pub(super) backing_store: Option<VolumeFactsBacking>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub(super) struct VolumeFactsTarget {
    #[serde(default)]
    pub(super) timestamps: Option<Timestamps>,
}

/// `<timestamps><mtime>1700000000.123456789</mtime>...`: files in `dir` pools have them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub(super) struct Timestamps {
    #[serde(default)]
    pub(super) mtime: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub(super) struct VolumeFactsBacking {
    #[serde(default)]
    pub(super) path: Option<String>,
}

impl VolumeFacts {
    pub(super) fn from_xml(xml: &str) -> Result<VolumeFacts, ReadError> {
        quick_xml::de::from_str(xml)
    }

    /// When the file was last written, in whole seconds since the Unix epoch, if libvirt says.
    pub(super) fn mtime_s(&self) -> Option<u64> {
        let mtime = self
            .target
            .as_ref()?
            .timestamps
            .as_ref()?
            .mtime
            .as_deref()?;
        mtime.split('.').next()?.trim().parse().ok()
    }

    /// The path of the image it is an overlay of, if it is one.
    pub(super) fn backing_path(&self) -> Option<&str> {
        self.backing_store.as_ref()?.path.as_deref()
    }

    /// Bytes it takes on disk: at least its capacity when `filling` (a raw image being
    /// uploaded takes all of it by the end).
    pub(super) fn disk_bytes(&self, filling: bool) -> u64 {
        let allocation = self.allocation.as_ref().map_or(0, |b| b.amount);
        let capacity = self.capacity.as_ref().map_or(0, |b| b.amount);
        if filling {
            allocation.max(capacity)
        } else {
            allocation
        }
    }
}

/// A storage pool definition (`<pool>`): the image directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename = "pool")]
pub(super) struct Pool {
    #[serde(rename = "@type")]
    pub(super) kind: String,
    pub(super) name: String,
    /// Pools that are not directories or devices (rbd, gluster) have no target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) target: Option<PoolTarget>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PoolTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) path: Option<String>,
}

/// The XML of a `dir` pool called `name` on directory `dir`.
pub(super) fn pool_xml(name: &str, dir: &str) -> Result<String, WriteError> {
    write_indented(&Pool {
        kind: "dir".into(),
        name: name.to_owned(),
        target: Some(PoolTarget {
            path: Some(dir.to_owned()),
        }),
    })
}

/// The target path of a pool, from its XML; `None` when it has none or the XML is unreadable.
pub(super) fn pool_target_path(xml: &str) -> Option<String> {
    let pool: Pool = quick_xml::de::from_str(xml).ok()?;
    pool.target?.path
}

/// `value` as XML, indented by two spaces, so that a definition reads well in libvirt's logs.
fn write_indented<T: Serialize>(value: &T) -> Result<String, WriteError> {
    let mut out = String::new();
    let mut ser = quick_xml::se::Serializer::new(&mut out);
    ser.indent(' ', 2);
    value.serialize(ser)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_facts_read_size_last_write_and_backing_file() {
        let xml = r#"<volume type='file'>
  <name>berth-vm1.qcow2</name>
  <key>/var/lib/berth/images/berth-vm1.qcow2</key>
  <capacity unit='bytes'>67108864</capacity>
  <allocation unit='bytes'>200704</allocation>
  <physical unit='bytes'>196616</physical>
  <target>
    <path>/var/lib/berth/images/berth-vm1.qcow2</path>
    <format type='qcow2'/>
    <permissions><mode>0600</mode><owner>0</owner><group>0</group></permissions>
    <timestamps>
      <atime>1733460000.123456789</atime>
      <mtime>1733460001.5</mtime>
      <ctime>1733460001.5</ctime>
    </timestamps>
    <compat>1.1</compat>
    <clusterSize unit='B'>65536</clusterSize>
    <features/>
  </target>
  <backingStore>
    <path>/var/lib/berth/images/linux.qcow2</path>
    <format type='qcow2'/>
  </backingStore>
</volume>"#;
        let facts = VolumeFacts::from_xml(xml).expect("a volume");
        assert_eq!(facts.mtime_s(), Some(1_733_460_001));
        assert_eq!(
            facts.backing_path(),
            Some("/var/lib/berth/images/linux.qcow2")
        );
        assert_eq!(facts.disk_bytes(false), 200_704);
        assert_eq!(facts.disk_bytes(true), 67_108_864);
        // What the test driver gives: no timestamps, no backing file.
        let bare = VolumeFacts::from_xml(
            "<volume><name>linux.qcow2</name><capacity unit='bytes'>10</capacity>\
             <allocation unit='bytes'>10</allocation><target><path>/x</path></target></volume>",
        )
        .expect("a volume");
        assert_eq!(bare.mtime_s(), None);
        assert_eq!(bare.backing_path(), None);
        assert_eq!(bare.disk_bytes(false), 10);
    }

    fn spec<'a>(network: &'a Network, os: GuestOs, domain_type: DomainType) -> DomainSpec<'a> {
        DomainSpec {
            name: "berth-vm7",
            template: "linux&co <x>",
            base_image: "tiny",
            guest_os: os,
            shape: Shape {
                vcpus: 2,
                memory_mib: 512,
            },
            domain_type,
            overlay_path: "/img/berth-vm7.qcow2",
            serial_log_path: "/img/berth-vm7.serial.log",
            vnc_password: "pa'ss\"<&",
            network,
        }
    }

    #[test]
    fn a_domain_written_then_read_gives_the_same_fields() {
        let networks = [
            Network::None,
            Network::User,
            Network::Libvirt("lab & co".into()),
        ];
        for network in &networks {
            for os in [GuestOs::Linux, GuestOs::Windows, GuestOs::Macos] {
                for domain_type in [DomainType::Kvm, DomainType::Qemu, DomainType::Test] {
                    let written = Domain::new(&spec(network, os, domain_type));
                    let xml = written.to_xml().expect("writes");
                    let read = Domain::from_xml(&xml).expect("reads what it wrote");
                    assert_eq!(read, written, "{xml}");
                }
            }
        }
    }

    #[test]
    fn domain_xml_carries_the_recipe_and_reads_back() {
        let xml =
            domain_xml(&spec(&Network::User, GuestOs::Linux, DomainType::Qemu)).expect("writes");
        let d = Domain::from_xml(&xml).expect("valid xml");
        assert_eq!(d.kind, "qemu");
        assert_eq!(d.name, "berth-vm7");
        assert_eq!(d.vcpu.count, 2);
        assert_eq!(
            (d.memory.unit.as_deref(), d.memory.amount),
            (Some("MiB"), 512)
        );
        assert!(d.description.starts_with(DESCRIPTION_TAG));
        assert!(d.description.contains("linux&co <x>"), "{xml}");
        assert_eq!(d.cpu, None);
        let disk = &d.devices.disk[0];
        assert_eq!(
            disk.target.as_ref().and_then(|t| t.bus.as_deref()),
            Some("virtio")
        );
        assert_eq!(d.disk_files().collect::<Vec<_>>(), ["/img/berth-vm7.qcow2"]);
        assert_eq!(
            d.devices.graphics[0].listen_address.as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            d.devices.serial[0].log.as_ref().map(|l| l.file.as_str()),
            Some("/img/berth-vm7.serial.log")
        );
        assert_eq!(
            d.vnc(),
            Some(Vnc {
                port: None,
                password: Some("pa'ss\"<&".into())
            })
        );
        // What quick-xml escaped, it escaped: the text reads back whole.
        assert!(!xml.contains("<x>"), "{xml}");
    }

    #[test]
    fn windows_guests_get_devices_they_can_drive_and_kvm_passes_the_cpu_through() {
        let net = Network::Libvirt("default".into());
        let d = Domain::new(&spec(&net, GuestOs::Windows, DomainType::Kvm));
        let bus = d.devices.disk[0]
            .target
            .as_ref()
            .and_then(|t| t.bus.clone());
        assert_eq!(bus.as_deref(), Some("sata"));
        let nic = &d.devices.interface[0];
        assert_eq!(nic.model.as_ref().map(|m| m.kind.as_str()), Some("e1000e"));
        assert_eq!(
            nic.source.as_ref().and_then(|s| s.network.as_deref()),
            Some("default")
        );
        assert_eq!(
            d.cpu.and_then(|c| c.mode).as_deref(),
            Some("host-passthrough")
        );
        let xml =
            domain_xml(&spec(&Network::None, GuestOs::Linux, DomainType::Kvm)).expect("writes");
        assert!(!xml.contains("<interface"), "{xml}");
        assert!(xml.contains("<acpi/>"), "{xml}");
    }

    /// What libvirt gives back for a running domain berth defined (QEMU 7.2, libvirt 9.0,
    /// `virsh dumpxml --security-info`, in the default image directory): the KiB, the port,
    /// the overlay's backing store, the controllers, inputs and aliases libvirt adds.
    const LIBVIRT_RUNNING: &str = include_str!("../../tests/fixtures/libvirt-running-domain.xml");

    #[test]
    fn a_running_domain_as_libvirt_gives_it_back_reads() {
        let d = Domain::from_xml(LIBVIRT_RUNNING).expect("reads libvirt's xml");
        assert_eq!(d.name, "berth-vm1");
        assert!(d.description.starts_with(DESCRIPTION_TAG));
        assert_eq!(d.vcpu.count, 1);
        assert_eq!(
            (d.memory.unit.as_deref(), d.memory.amount),
            (Some("KiB"), 262_144)
        );
        assert_eq!(
            d.disk_files().collect::<Vec<_>>(),
            ["/var/lib/berth/images/berth-vm1.qcow2"]
        );
        let vnc = d.vnc().expect("a vnc console");
        assert_eq!(vnc.port, Some(5900));
        assert_eq!(vnc.password.as_deref(), Some("k3Tq9xPz"));
    }

    #[test]
    fn unreadable_or_foreign_definitions() {
        assert!(Domain::from_xml("<domain type='kvm'><name>x</name>").is_err());
        assert!(Domain::from_xml("not xml").is_err());
        // A domain berth did not make: no description, a block device, spice, no vnc.
        let foreign = "<domain type='xen'><name>berth-vm3</name>\
            <memory>1024</memory><vcpu>1</vcpu><os><type>hvm</type></os>\
            <devices><disk type='block' device='disk'><source dev='/dev/sdb'/>\
            <target dev='xvda'/></disk><controller type='usb'/>\
            <disk type='file' device='cdrom'><target dev='hdc'/></disk>\
            <graphics type='spice' autoport='yes'/></devices></domain>";
        let d = Domain::from_xml(foreign).expect("reads");
        assert_eq!(d.description, "");
        assert_eq!(d.disk_files().count(), 0);
        assert_eq!(d.vnc(), None);
        // The test driver's own domain, as `virsh -c test:///default dumpxml test` gives it.
        let test = "<domain type='test' id='1'>\n  <name>test</name>\n  \
            <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>\n  \
            <memory unit='KiB'>8388608</memory>\n  <currentMemory unit='KiB'>2097152</currentMemory>\n  \
            <vcpu placement='static'>2</vcpu>\n  <os>\n    <type arch='i686'>hvm</type>\n    \
            <boot dev='hd'/>\n  </os>\n  <clock offset='utc'/>\n  \
            <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  \
            <on_crash>destroy</on_crash>\n  <devices>\n    <disk type='file' device='disk'>\n      \
            <source file='/guest/diskimage1'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n    \
            <interface type='network'>\n      <mac address='aa:bb:cc:dd:ee:ff'/>\n      \
            <source network='default'/>\n      <target dev='testnet0'/>\n    </interface>\n    \
            <memballoon model='virtio'/>\n  </devices>\n</domain>\n";
        let d = Domain::from_xml(test).expect("reads");
        assert_eq!((d.kind.as_str(), d.vcpu.count), ("test", 2));
        assert!(!d.description.contains(DESCRIPTION_TAG));
        assert_eq!(d.disk_files().collect::<Vec<_>>(), ["/guest/diskimage1"]);
    }

    #[test]
    fn overlay_xml_names_its_backing_file() {
        let xml = overlay_xml("berth-vm1.qcow2", 1 << 30, "/img/tiny&.qcow2").expect("writes");
        let v: Volume = quick_xml::de::from_str(&xml).expect("valid xml");
        assert_eq!(v.name, "berth-vm1.qcow2");
        assert_eq!(v.capacity, Bytes::new(1 << 30));
        assert_eq!(v.allocation, Bytes::new(0));
        assert_eq!(v.target.format.kind, "qcow2");
        assert_eq!(
            v.backing_store.map(|b| (b.path, b.format.kind)),
            Some(("/img/tiny&.qcow2".into(), "qcow2".into()))
        );
    }

    #[test]
    fn pool_xml_reads_back_its_path_and_libvirts_pools_read() {
        let xml = pool_xml("berth-img", "/img/a&b").expect("writes");
        assert_eq!(pool_target_path(&xml).as_deref(), Some("/img/a&b"));
        let libvirt = "<pool type='dir'>\n  <name>default-pool</name>\n  \
            <uuid>dfe224cb-28fb-8dd0-c4b2-64eb3f0f4566</uuid>\n  \
            <capacity unit='bytes'>107374182400</capacity>\n  \
            <allocation unit='bytes'>0</allocation>\n  <available unit='bytes'>107374182400</available>\n  \
            <source>\n  </source>\n  <target>\n    <path>/default-pool</path>\n    \
            <permissions><mode>0755</mode><owner>0</owner></permissions>\n  </target>\n</pool>\n";
        assert_eq!(pool_target_path(libvirt).as_deref(), Some("/default-pool"));
        assert_eq!(
            pool_target_path("<pool type='rbd'><name>ceph</name></pool>"),
            None
        );
        assert_eq!(pool_target_path("<pool"), None);
    }
}
