//! Fleet files (TOML host classes and templates) and the `--hosts COUNTxCPUS[:MEMORY_MIB]` form.

use std::collections::BTreeMap;
use std::path::Path;

use berth_sched::{
    DriverKind, GuestOs, HostId, HostSpec, ImageClass, ImageMode, Images, Label, Shape, Template,
    Warm,
};
use serde::Deserialize;

use crate::SimError;

/// Memory per vCPU when `--hosts` gives none.
pub const DEFAULT_MEMORY_PER_VCPU_MIB: u64 = 4096;

/// The hosts and templates a simulation starts with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fleet {
    pub hosts: Vec<HostSpec>,
    pub templates: Vec<Template>,
    /// Image sizes, classes' pull bandwidths and budgets, and the store's limit, when the
    /// fleet file describes any (its mode is `aware`; the run's settings may say otherwise).
    pub images: Option<Images>,
    /// Warm pools (`[[warm]]`), in file order.
    pub warm: Vec<Warm>,
}

impl Fleet {
    /// `COUNTxCPUS[:MEMORY_MIB]`: one class of identical `sim` hosts named `host-0001`, ….
    pub fn uniform(spec: &str) -> Result<Fleet, SimError> {
        let bad = |why: &str| SimError::Fleet {
            source_name: "--hosts".into(),
            message: format!(
                "`{spec}`: {why}; expected COUNTxCPUS[:MEMORY_MIB], e.g. 100x1 or 2000x64:262144"
            ),
        };
        let (count_cpus, memory) = match spec.split_once(':') {
            Some((a, m)) => (a, Some(m)),
            None => (spec, None),
        };
        let (count, cpus) = count_cpus
            .split_once(['x', 'X'])
            .ok_or_else(|| bad("no `x` between count and cpus"))?;
        let count: u64 = count
            .trim()
            .parse()
            .map_err(|_| bad("count is not a whole number"))?;
        let vcpus: u32 = cpus
            .trim()
            .parse()
            .map_err(|_| bad("cpus is not a whole number"))?;
        if count == 0 || vcpus == 0 {
            return Err(bad("count and cpus must be at least 1"));
        }
        let memory_mib = match memory {
            Some(m) => m
                .trim()
                .parse()
                .map_err(|_| bad("memory is not a whole number of MiB"))?,
            None => u64::from(vcpus) * DEFAULT_MEMORY_PER_VCPU_MIB,
        };
        let hosts = (0..count)
            .map(|i| {
                HostSpec::new(
                    i,
                    &format!("host-{:04}", i + 1),
                    DriverKind::Sim,
                    vcpus,
                    memory_mib,
                )
            })
            .collect();
        Ok(Fleet {
            hosts,
            templates: Vec::new(),
            images: None,
            warm: Vec::new(),
        })
    }

    pub fn load(path: &Path) -> Result<Fleet, SimError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SimError::Fleet {
            source_name: name.clone(),
            message: e.to_string(),
        })?;
        Fleet::parse(&text, &name)
    }

    pub fn parse(text: &str, source_name: &str) -> Result<Fleet, SimError> {
        let err = |message: String| SimError::Fleet {
            source_name: source_name.to_owned(),
            message,
        };
        let file: FleetFile =
            toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_owned()))?;
        let mut fleet = Fleet::default();
        let mut names = BTreeMap::new();
        for class in &file.class {
            let driver = DriverKind::parse(&class.driver).ok_or_else(|| {
                err(format!(
                    "class `{}`: unknown driver `{}`; expected libvirt, parallels or sim",
                    class.name, class.driver
                ))
            })?;
            if class.count == 0 || class.vcpus == 0 || class.memory_mib == 0 {
                return Err(err(format!(
                    "class `{}`: count, vcpus and memory_mib must be at least 1",
                    class.name
                )));
            }
            if names.insert(class.name.clone(), ()).is_some() {
                return Err(err(format!("class `{}` is defined twice", class.name)));
            }
            let cpu_milli = ratio_milli(class.cpu_overcommit).ok_or_else(|| {
                err(format!(
                    "class `{}`: cpu_overcommit must be above 0",
                    class.name
                ))
            })?;
            let memory_milli = ratio_milli(class.memory_overcommit).ok_or_else(|| {
                err(format!(
                    "class `{}`: memory_overcommit must be above 0",
                    class.name
                ))
            })?;
            for i in 0..class.count {
                let id = fleet.hosts.len() as u64;
                let mut spec = HostSpec::new(
                    id,
                    &format!("{}-{:04}", class.name, i + 1),
                    driver,
                    class.vcpus,
                    class.memory_mib,
                );
                spec.cpu_overcommit_milli = cpu_milli;
                spec.memory_overcommit_milli = memory_milli;
                spec.slots = class.slots.iter().map(|(k, v)| (k.clone(), *v)).collect();
                spec.labels = class.labels.iter().map(|(k, v)| Label::new(k, v)).collect();
                spec.images = class.images.clone();
                fleet.hosts.push(spec);
            }
        }
        for t in &file.template {
            fleet.templates.push(t.to_template().map_err(err)?);
        }
        fleet.images = file.images().map_err(err)?;
        for (i, w) in file.warm.iter().enumerate() {
            let Some(t) = fleet.templates.iter().find(|t| *t.name == *w.template) else {
                return Err(err(format!(
                    "warm[{i}]: template `{}` is not a [[template]] of this file",
                    w.template
                )));
            };
            if !file.class.iter().any(|c| c.name == w.class) {
                return Err(err(format!(
                    "warm[{i}]: class `{}` is not a [[class]] of this file",
                    w.class
                )));
            }
            let shape = Shape {
                vcpus: w.vcpus.unwrap_or(t.default_shape.vcpus),
                memory_mib: w.memory_mib.unwrap_or(t.default_shape.memory_mib),
            };
            if shape.vcpus == 0 || shape.memory_mib == 0 {
                return Err(err(format!(
                    "warm[{i}]: vcpus and memory_mib must be at least 1"
                )));
            }
            fleet.warm.push(Warm {
                template: w.template.clone(),
                class: w.class.clone(),
                count: w.count,
                shape: Some(shape),
            });
        }
        Ok(fleet)
    }

    pub fn total_vcpus(&self) -> u64 {
        self.hosts.iter().map(|h| u64::from(h.vcpus)).sum()
    }

    pub fn next_host_id(&self) -> HostId {
        HostId(self.hosts.len() as u64)
    }
}

/// The host class a host belongs to, from its name: the fleet file names a class's hosts
/// `<class>-0001`, `<class>-0002`, … and `--hosts` names them `host-0001`, …, so the class is
/// the name without its trailing `-<digits>` groups (all of them: a fleet exported from a live
/// daemon names its one-host classes after the hosts, as in `kvm-x86-0012-0001`). A name
/// without one is a class of its own (a host a trace adds by a bare name).
pub fn class_of(host_name: &str) -> &str {
    let mut class = host_name;
    while let Some((rest, n)) = class.rsplit_once('-') {
        if rest.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        class = rest;
    }
    class
}

fn ratio_milli(ratio: f64) -> Option<u32> {
    (ratio.is_finite() && ratio > 0.0 && ratio < 1000.0).then(|| (ratio * 1000.0).round() as u32)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    #[serde(default)]
    class: Vec<ClassFile>,
    #[serde(default)]
    template: Vec<TemplateFile>,
    images: Option<ImagesFile>,
    #[serde(default)]
    warm: Vec<WarmFile>,
}

/// `[images]`: what is shared by every class's image store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImagesFile {
    /// Pulls one image store serves at once (0 or absent: no limit).
    #[serde(default)]
    store_pulls_max: u32,
}

/// A size or bandwidth in the file's unit, to the scheduler's integer unit, if it is one.
fn to_unit(v: f64, per: f64) -> Option<u64> {
    (v.is_finite() && v > 0.0 && v * per < u64::MAX as f64).then(|| (v * per).round() as u64)
}

impl FleetFile {
    /// The images the file describes: `None` when no class gives a pull bandwidth or budget, no
    /// template an image size, and there is no `[images]` table.
    fn images(&self) -> Result<Option<Images>, String> {
        let mut images = Images::new(ImageMode::Aware);
        let mut any = false;
        if let Some(i) = &self.images {
            images.store_pulls_max = i.store_pulls_max;
            any = true;
        }
        for t in &self.template {
            let Some(gib) = t.image_size_gib else {
                continue;
            };
            let mib = to_unit(gib, 1024.0).ok_or_else(|| {
                format!(
                    "template `{}`: image_size_gib must be a positive number, got {gib}",
                    t.name
                )
            })?;
            let image = t.base_image.clone().unwrap_or_else(|| t.name.clone());
            match images.sizes.iter().find(|(n, _)| *n == image) {
                Some(&(_, known)) if known != mib => {
                    return Err(format!(
                        "template `{}`: base image `{image}` is given two sizes",
                        t.name
                    ));
                }
                Some(_) => {}
                None => images.sizes.push((image, mib)),
            }
            any = true;
        }
        for c in &self.class {
            if c.pull_gbit_s.is_none() && c.image_budget_gib.is_none() && c.image_store.is_none() {
                continue;
            }
            let pull_mbit_s = match c.pull_gbit_s {
                Some(g) => to_unit(g, 1000.0).ok_or_else(|| {
                    format!(
                        "class `{}`: pull_gbit_s must be a positive number, got {g}",
                        c.name
                    )
                })?,
                None => 0,
            };
            let budget_mib = match c.image_budget_gib {
                Some(g) => Some(to_unit(g, 1024.0).ok_or_else(|| {
                    format!(
                        "class `{}`: image_budget_gib must be a positive number, got {g}",
                        c.name
                    )
                })?),
                None => None,
            };
            images.classes.push(ImageClass {
                class: c.name.clone(),
                pull_mbit_s,
                budget_mib,
                store: c.image_store.clone().unwrap_or_else(|| "store".to_owned()),
            });
            any = true;
        }
        Ok(any.then_some(images))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassFile {
    name: String,
    count: u32,
    #[serde(default = "sim_driver")]
    driver: String,
    vcpus: u32,
    memory_mib: u64,
    #[serde(default = "one")]
    cpu_overcommit: f64,
    #[serde(default = "one")]
    memory_overcommit: f64,
    #[serde(default)]
    slots: BTreeMap<String, u32>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    images: Vec<String>,
    /// The bandwidth of a pull from its image store to one host, in Gbit/s.
    pull_gbit_s: Option<f64>,
    /// Disk for base images on each host, in GiB (absent: not bounded).
    image_budget_gib: Option<f64>,
    /// The image store its hosts pull from (default `store`).
    image_store: Option<String>,
}

/// `[[warm]]`: keep `count` VMs of `template` booted and idle on hosts of `class`, in the
/// template's default shape unless `vcpus` or `memory_mib` say otherwise.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmFile {
    template: String,
    class: String,
    count: u32,
    vcpus: Option<u32>,
    memory_mib: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    name: String,
    #[serde(default)]
    base_image: Option<String>,
    #[serde(default = "linux")]
    guest_os: String,
    #[serde(default)]
    drivers: Vec<String>,
    vcpus: u32,
    memory_mib: u64,
    #[serde(default)]
    slot: Option<String>,
    #[serde(default)]
    expected_provision_s: u64,
    #[serde(default)]
    expected_boot_s: u64,
    #[serde(default = "hour")]
    expected_run_s: u64,
    /// The size of its base image, in GiB.
    image_size_gib: Option<f64>,
}

impl TemplateFile {
    fn to_template(&self) -> Result<Template, String> {
        let guest_os = GuestOs::parse(&self.guest_os).ok_or_else(|| {
            format!(
                "template `{}`: unknown guest_os `{}`; expected linux, windows or macos",
                self.name, self.guest_os
            )
        })?;
        let drivers = self
            .drivers
            .iter()
            .map(|d| {
                DriverKind::parse(d)
                    .ok_or_else(|| format!("template `{}`: unknown driver `{d}`", self.name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.vcpus == 0 || self.memory_mib == 0 {
            return Err(format!(
                "template `{}`: vcpus and memory_mib must be at least 1",
                self.name
            ));
        }
        let mut t = Template::new(
            &self.name,
            Shape {
                vcpus: self.vcpus,
                memory_mib: self.memory_mib,
            },
        );
        t.base_image = self.base_image.as_deref().unwrap_or(&self.name).into();
        t.guest_os = guest_os;
        t.drivers = drivers;
        t.slot = self.slot.clone();
        t.expected_provision_ms = self.expected_provision_s * 1000;
        t.expected_boot_ms = self.expected_boot_s * 1000;
        t.expected_run_ms = self.expected_run_s * 1000;
        Ok(t)
    }
}

fn sim_driver() -> String {
    "sim".into()
}
fn one() -> f64 {
    1.0
}
fn linux() -> String {
    "linux".into()
}
fn hour() -> u64 {
    3600
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_class_is_its_name_without_the_number() {
        assert_eq!(class_of("kvm-x86-0012"), "kvm-x86");
        assert_eq!(class_of("host-0001"), "host");
        assert_eq!(class_of("mac-01"), "mac");
        assert_eq!(class_of("kvm-x86"), "kvm-x86");
        assert_eq!(class_of("builder"), "builder");
        assert_eq!(class_of("-7"), "-7");
        assert_eq!(class_of("a-"), "a-");
        assert_eq!(class_of("kvm-x86-0012-0001"), "kvm-x86");
        assert_eq!(class_of("7-0001"), "7");
    }

    #[test]
    fn uniform_hosts() {
        let f = Fleet::uniform("100x1").expect("valid");
        assert_eq!(f.hosts.len(), 100);
        assert_eq!(f.hosts[0].vcpus, 1);
        assert_eq!(f.hosts[0].memory_mib, DEFAULT_MEMORY_PER_VCPU_MIB);
        let f = Fleet::uniform("3x64:262144").expect("valid");
        assert_eq!(f.hosts[2].memory_mib, 262_144);
        assert_eq!(f.total_vcpus(), 192);
    }

    #[test]
    fn uniform_rejects_bad_forms_and_says_the_expected_one() {
        for bad in ["", "100", "x4", "0x4", "10x0", "10x4:lots", "ax4"] {
            let e = Fleet::uniform(bad).expect_err(bad).to_string();
            assert!(e.contains("COUNTxCPUS"), "{bad}: {e}");
        }
    }

    #[test]
    fn fleet_file_classes_and_templates() {
        let text = r#"
[[class]]
name = "kvm"
count = 2
driver = "libvirt"
vcpus = 64
memory_mib = 262144
cpu_overcommit = 2.0
labels = { arch = "x86_64" }

[[class]]
name = "mac"
count = 1
driver = "parallels"
vcpus = 12
memory_mib = 65536
slots = { macos = 2 }

[[template]]
name = "macos"
guest_os = "macos"
drivers = ["parallels"]
vcpus = 4
memory_mib = 16384
slot = "macos"
"#;
        let f = Fleet::parse(text, "fleet.toml").expect("valid");
        assert_eq!(f.hosts.len(), 3);
        assert_eq!(f.hosts[1].name, "kvm-0002");
        assert_eq!(f.hosts[0].cpu_overcommit_milli, 2000);
        assert_eq!(f.hosts[2].slots, vec![("macos".to_string(), 2)]);
        assert_eq!(f.templates[0].slot.as_deref(), Some("macos"));
    }

    #[test]
    fn fleet_file_warm_pools_take_their_template_and_class_and_bad_ones_are_named() {
        let base = r#"
[[class]]
name = "kvm"
count = 2
vcpus = 16
memory_mib = 65536

[[template]]
name = "linux"
vcpus = 4
memory_mib = 8192
"#;
        let text = format!(
            "{base}\n[[warm]]\ntemplate = \"linux\"\nclass = \"kvm\"\ncount = 3\n\n\
             [[warm]]\ntemplate = \"linux\"\nclass = \"kvm\"\ncount = 1\nvcpus = 8\n"
        );
        let fleet = Fleet::parse(&text, "f.toml").expect("valid");
        let shapes: Vec<(u32, u32, u64)> = fleet
            .warm
            .iter()
            .map(|w| {
                let s = w.shape.expect("a shape");
                (w.count, s.vcpus, s.memory_mib)
            })
            .collect();
        assert_eq!(shapes, vec![(3, 4, 8192), (1, 8, 8192)]);
        for (bad, says) in [
            (
                "template = \"windows\"\nclass = \"kvm\"\ncount = 1",
                "template `windows`",
            ),
            (
                "template = \"linux\"\nclass = \"mac\"\ncount = 1",
                "class `mac`",
            ),
            (
                "template = \"linux\"\nclass = \"kvm\"\ncount = 1\nvcpus = 0",
                "vcpus",
            ),
            ("template = \"linux\"\nclass = \"kvm\"", "count"),
        ] {
            let e = Fleet::parse(&format!("{base}\n[[warm]]\n{bad}\n"), "f.toml")
                .expect_err(bad)
                .to_string();
            assert!(e.contains("f.toml") && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn fleet_file_images_sizes_bandwidths_budgets_and_the_store_limit() {
        let text = r#"
[images]
store_pulls_max = 4

[[class]]
name = "kvm"
count = 2
vcpus = 64
memory_mib = 262144
pull_gbit_s = 10
image_budget_gib = 200

[[class]]
name = "plain"
count = 1
vcpus = 8
memory_mib = 16384

[[template]]
name = "linux"
vcpus = 4
memory_mib = 8192
image_size_gib = 8

[[template]]
name = "linux-big"
base_image = "linux"
vcpus = 8
memory_mib = 16384
image_size_gib = 8
"#;
        let images = Fleet::parse(text, "fleet.toml")
            .expect("valid")
            .images
            .expect("described");
        assert_eq!(images.mode, ImageMode::Aware);
        assert_eq!(images.store_pulls_max, 4);
        assert_eq!(images.sizes, vec![("linux".to_owned(), 8 * 1024)]);
        assert_eq!(
            images.classes,
            vec![ImageClass {
                class: "kvm".into(),
                pull_mbit_s: 10_000,
                budget_mib: Some(200 * 1024),
                store: "store".into(),
            }]
        );
        // Without any image key, no images are modelled.
        let plain = "[[class]]\nname='a'\ncount=1\nvcpus=1\nmemory_mib=1\n";
        assert_eq!(Fleet::parse(plain, "f.toml").expect("valid").images, None);
    }

    #[test]
    fn fleet_file_image_errors_name_the_class_or_template() {
        for (text, want) in [
            (
                "[[class]]\nname='a'\ncount=1\nvcpus=1\nmemory_mib=1\npull_gbit_s=0\n",
                "class `a`: pull_gbit_s must be a positive number",
            ),
            (
                "[[class]]\nname='a'\ncount=1\nvcpus=1\nmemory_mib=1\nimage_budget_gib=-1\n",
                "class `a`: image_budget_gib must be a positive number",
            ),
            (
                "[[template]]\nname='t'\nvcpus=1\nmemory_mib=1\nimage_size_gib=nan\n",
                "template `t`: image_size_gib must be a positive number",
            ),
            (
                "[[template]]\nname='t'\nvcpus=1\nmemory_mib=1\nimage_size_gib=1\n\
                 [[template]]\nname='u'\nbase_image='t'\nvcpus=1\nmemory_mib=1\n\
                 image_size_gib=2\n",
                "template `u`: base image `t` is given two sizes",
            ),
        ] {
            let e = Fleet::parse(text, "f.toml").expect_err(want).to_string();
            assert!(e.starts_with("f.toml: ") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn fleet_file_errors_name_the_file_and_the_key() {
        let e = Fleet::parse(
            "[[class]]\nname='a'\ncount=1\nvcpus=1\nmemory_mib=1\ncolour='red'\n",
            "f.toml",
        )
        .expect_err("unknown key")
        .to_string();
        assert!(e.starts_with("f.toml: "), "{e}");
        assert!(e.contains("colour"), "{e}");
        let e = Fleet::parse(
            "[[class]]\nname='a'\ncount=1\nvcpus=1\nmemory_mib=1\ndriver='xen'\n",
            "f.toml",
        )
        .expect_err("bad driver")
        .to_string();
        assert!(e.contains("unknown driver `xen`"), "{e}");
    }
}
