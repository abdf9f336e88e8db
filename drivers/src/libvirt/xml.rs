//! The XML libvirt is given and gives back: domain definitions, overlay volumes and the image
//! directory's pool.

use berth_sched::{GuestOs, Shape};

use super::config::Network;
use crate::DomainType;

/// What berth writes into the `<description>` of every domain it defines, so that a domain
/// with a berth name but another origin is recognised as a name clash rather than adopted.
pub(super) const DESCRIPTION_TAG: &str = "made by berth";

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

/// The XML of a transient `dir` pool called `name` on directory `dir`.
pub(super) fn pool_xml(name: &str, dir: &str) -> String {
    format!(
        "<pool type='dir'><name>{}</name><target><path>{}</path></target></pool>",
        escape(name),
        escape(dir)
    )
}

/// The target path of a pool, from its XML; `None` when it has none or the XML is unreadable.
pub(super) fn pool_target_path(xml: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    doc.descendants()
        .find(|n| n.has_tag_name("target"))
        .and_then(|t| t.children().find(|n| n.has_tag_name("path")))
        .and_then(|p| p.text())
        .map(str::to_owned)
}

/// The storage volume XML of an overlay backed by the qcow2 at `base_path`.
pub(super) fn overlay_xml(file: &str, capacity_bytes: u64, base_path: &str) -> String {
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

/// The libvirt domain XML of one VM.
pub(super) fn domain_xml(spec: &DomainSpec<'_>) -> String {
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
pub(super) struct ParsedDomain {
    pub(super) description: String,
    pub(super) disks: Vec<String>,
    pub(super) vnc: Option<Vnc>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Vnc {
    /// -1 until the VM runs (with autoport).
    pub(super) port: Option<i32>,
    pub(super) password: Option<String>,
}

pub(super) fn parse_domain(xml: &str) -> Result<ParsedDomain, roxmltree::Error> {
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
}
