//! Serializable forms of the scheduler's inputs, owned by the daemon (`sched` types are not
//! `Serialize`): what the journal stores, what the API and the config file accept, and the
//! conversions to and from `berth_sched` types.

use std::collections::BTreeMap;

use berth_drivers::DomainType;
use berth_drivers::parallels::{ConfigError, ParallelsConfig};
use berth_sched::{
    DriverKind, Failure, FailureKind, GuestOs, Hold, HostId, HostSpec, Input, Label, ProbeReport,
    RequestId, RequestSpec, Shape, Template, VmId,
};
use serde::{Deserialize, Serialize};

/// A field that failed validation, for a 4xx answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// A host as added (config file, API, journal).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WireHost {
    /// Chosen by the daemon; ignored in the config file and the API.
    #[serde(default)]
    pub id: u64,
    pub name: String,
    pub driver: String,
    /// 0 or left out: from the host's probe (libvirt and Parallels hosts only); otherwise
    /// for those drivers a cap on what the probe reports.
    #[serde(default)]
    pub vcpus: u32,
    #[serde(default)]
    pub memory_mib: u64,
    /// Left out for a Parallels host: `macos = 2`.
    #[serde(default)]
    pub slots: BTreeMap<String, u32>,
    #[serde(default = "milli_one")]
    pub cpu_overcommit_milli: u32,
    #[serde(default = "milli_one")]
    pub memory_overcommit_milli: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub images: Vec<String>,
    /// Driver-specific settings (connection URI, SSH destination, ...).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn milli_one() -> u32 {
    1000
}

impl From<berth_api::NewHost> for WireHost {
    /// A host added through the API; the daemon numbers it.
    fn from(h: berth_api::NewHost) -> WireHost {
        WireHost {
            id: 0,
            name: h.name,
            driver: h.driver,
            vcpus: h.vcpus,
            memory_mib: h.memory_mib,
            slots: h.slots,
            cpu_overcommit_milli: h.cpu_overcommit_milli,
            memory_overcommit_milli: h.memory_overcommit_milli,
            labels: h.labels,
            images: h.images,
            options: h.options,
        }
    }
}

/// The longest host or template name.
pub const NAME_LEN_MAX: usize = 128;

/// Checks a name used in inventories and URLs: letters, digits, `-`, `_` and `.`.
/// The longest free text (a requester, a breakpoint's owner, a label's key or value), in
/// characters.
pub const TEXT_CHARS_MAX: usize = 256;

/// Checks free text people will read in tables and logs: 1 to [`TEXT_CHARS_MAX`] characters,
/// none of them a control character (which could rewrite an operator's terminal) or a
/// bidirectional override (which could make text read as something else).
pub fn check_text(field: &str, text: &str) -> Result<(), FieldError> {
    let n = text.chars().count();
    if n == 0 || n > TEXT_CHARS_MAX {
        return Err(FieldError::new(
            field,
            format!("must be 1 to {TEXT_CHARS_MAX} characters, got {n}"),
        ));
    }
    let bidi = |c: char| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    if let Some(c) = text.chars().find(|&c| c.is_control() || bidi(c)) {
        return Err(FieldError::new(
            field,
            format!(
                "may not hold control or bidirectional-override characters (found U+{:04X})",
                u32::from(c)
            ),
        ));
    }
    Ok(())
}

/// Checks every key and value of a label map (`field` names the map).
pub fn check_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
    for (k, v) in labels {
        check_text(&format!("{field} key"), k)?;
        check_text(&format!("{field}.{k}"), v)?;
    }
    Ok(())
}

pub fn check_name(field: &str, name: &str) -> Result<(), FieldError> {
    if name.is_empty() || name.len() > NAME_LEN_MAX {
        return Err(FieldError::new(
            field,
            format!("must be 1 to {NAME_LEN_MAX} characters"),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(FieldError::new(
            field,
            "may hold only letters, digits, `-`, `_` and `.`",
        ));
    }
    Ok(())
}

impl WireHost {
    pub fn validate(&self) -> Result<DriverKind, FieldError> {
        check_name("name", &self.name)?;
        let driver = DriverKind::parse(&self.driver).ok_or_else(|| {
            FieldError::new("driver", format!("unknown driver `{}`", self.driver))
        })?;
        check_driver(driver, self)?;
        use berth_sched::limits::{
            MEMORY_MIB_MAX, OVERCOMMIT_MILLI_MAX, SLOTS_PER_HOST_MAX, VCPUS_MAX,
        };
        // Hosts whose probe measures them may leave their capacity out (0).
        let measured = capacity_from_probe(driver);
        if !(measured && self.vcpus == 0) {
            in_range("vcpus", self.vcpus.into(), VCPUS_MAX.into())?;
        }
        if !(measured && self.memory_mib == 0) {
            in_range("memory_mib", self.memory_mib, MEMORY_MIB_MAX)?;
        }
        in_range(
            "cpu_overcommit_milli",
            self.cpu_overcommit_milli.into(),
            OVERCOMMIT_MILLI_MAX.into(),
        )?;
        in_range(
            "memory_overcommit_milli",
            self.memory_overcommit_milli.into(),
            OVERCOMMIT_MILLI_MAX.into(),
        )?;
        for (kind, n) in &self.slots {
            if *n > SLOTS_PER_HOST_MAX {
                return Err(FieldError::new(
                    &format!("slots.{kind}"),
                    format!("at most {SLOTS_PER_HOST_MAX} per host, got {n}"),
                ));
            }
        }
        Ok(driver)
    }

    /// [`Self::validate`], plus the rules for text that a new host (from the API or the
    /// config) must keep; the journal's hosts passed them when they were added.
    pub fn validate_new(&self) -> Result<DriverKind, FieldError> {
        let driver = self.validate()?;
        check_labels("labels", &self.labels)?;
        for kind in self.slots.keys() {
            check_name("slots", kind)?;
        }
        Ok(driver)
    }

    pub fn to_spec(&self) -> Result<HostSpec, FieldError> {
        let driver = self.validate()?;
        let slots = if self.slots.is_empty() {
            default_slots(driver)
        } else {
            self.slots.clone()
        };
        Ok(HostSpec {
            id: HostId(self.id),
            name: self.name.clone(),
            driver,
            // A host whose capacity comes from its probe stays unknown, and gets no VMs,
            // until the probe replaces these placeholders.
            vcpus: self.vcpus.max(1),
            memory_mib: self.memory_mib.max(1),
            slots: slots.into_iter().collect(),
            cpu_overcommit_milli: self.cpu_overcommit_milli,
            memory_overcommit_milli: self.memory_overcommit_milli,
            labels: self
                .labels
                .iter()
                .map(|(k, v)| Label::new(k.clone(), v.clone()))
                .collect(),
            images: self.images.clone(),
        })
    }
}

/// Checks that `value` of `field` is 1 to `max` (the scheduler's limits, named in
/// `berth_sched::limits`).
pub fn in_range(field: &str, value: u64, max: u64) -> Result<(), FieldError> {
    berth_sched::limits::check_range("value", value, max).map_err(|e| match e {
        berth_sched::InputError::Invalid { reason, .. } => FieldError::new(field, reason),
        other => FieldError::new(field, other.to_string()),
    })
}

/// A template (config file, journal).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WireTemplate {
    pub name: String,
    /// Defaults to the template's name.
    #[serde(default)]
    pub base_image: Option<String>,
    pub guest_os: String,
    #[serde(default)]
    pub drivers: Vec<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    #[serde(default)]
    pub slot: Option<String>,
    #[serde(default)]
    pub expected_provision_ms: u64,
    #[serde(default)]
    pub expected_boot_ms: u64,
    #[serde(default = "hour_ms")]
    pub expected_run_ms: u64,
    /// The libvirt domain type its VMs ask for (`kvm` or `qemu`); unset, each libvirt
    /// host's `domain_type` option decides. Other drivers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_type: Option<String>,
}

fn hour_ms() -> u64 {
    3_600_000
}

impl WireTemplate {
    /// The domain type the template asks for, checked.
    pub fn domain_type(&self) -> Result<Option<DomainType>, FieldError> {
        self.domain_type
            .as_deref()
            .map(|d| {
                d.parse().map_err(|e: berth_drivers::UnknownDomainType| {
                    FieldError::new("domain_type", e.to_string())
                })
            })
            .transpose()
    }

    pub fn to_template(&self) -> Result<Template, FieldError> {
        check_name("name", &self.name)?;
        self.domain_type()?;
        let guest_os = GuestOs::parse(&self.guest_os).ok_or_else(|| {
            FieldError::new(
                "guest_os",
                format!("expected linux, windows or macos, got `{}`", self.guest_os),
            )
        })?;
        let drivers = self
            .drivers
            .iter()
            .map(|d| {
                DriverKind::parse(d)
                    .ok_or_else(|| FieldError::new("drivers", format!("unknown driver `{d}`")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.vcpus == 0 || self.memory_mib == 0 {
            return Err(FieldError::new(
                "vcpus",
                "vcpus and memory_mib must be at least 1",
            ));
        }
        Ok(Template {
            name: self.name.as_str().into(),
            base_image: self.base_image.as_deref().unwrap_or(&self.name).into(),
            guest_os,
            drivers,
            default_shape: Shape {
                vcpus: self.vcpus,
                memory_mib: self.memory_mib,
            },
            slot: self.slot.clone(),
            expected_provision_ms: self.expected_provision_ms,
            expected_boot_ms: self.expected_boot_ms,
            expected_run_ms: self.expected_run_ms,
        })
    }
}

/// A breakpoint request.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WireHold {
    pub owner: String,
    pub ttl_ms: u64,
}

/// A request as journaled: every field resolved (the shape against its template).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct WireRequest {
    pub id: u64,
    pub template: String,
    pub count: u32,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub labels: BTreeMap<String, String>,
    pub priority: i32,
    pub gang: bool,
    pub hold: Option<WireHold>,
    pub pending_deadline_ms: Option<u64>,
    pub expected_run_ms: Option<u64>,
    pub requester: String,
    /// The staged change the request belongs to (a Gerrit change, a pull request), if the
    /// caller said: reports and traces group requests by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    /// The account (team or project) charged for it under fair share, if the caller said;
    /// the requester otherwise (journals written before accounts have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

impl WireRequest {
    /// The account it is charged to: its own, else its requester (as the scheduler reads it).
    pub fn account_name(&self) -> &str {
        self.account.as_deref().unwrap_or(&self.requester)
    }

    /// The API's form of the request as submitted, its account resolved.
    pub fn to_api(&self) -> berth_api::RequestSpec {
        berth_api::RequestSpec {
            id: self.id,
            template: self.template.clone(),
            count: self.count,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            labels: self.labels.clone(),
            priority: self.priority,
            gang: self.gang,
            hold: self.hold.as_ref().map(|h| berth_api::HoldSpec {
                owner: h.owner.clone(),
                ttl_ms: h.ttl_ms,
            }),
            pending_deadline_ms: self.pending_deadline_ms,
            expected_run_ms: self.expected_run_ms,
            requester: self.requester.clone(),
            change: self.change.clone(),
            account: self.account_name().to_owned(),
        }
    }

    pub fn to_spec(&self) -> RequestSpec {
        RequestSpec {
            id: RequestId(self.id),
            template: self.template.clone(),
            count: self.count,
            shape: match (self.vcpus, self.memory_mib) {
                (Some(vcpus), Some(memory_mib)) => Some(Shape { vcpus, memory_mib }),
                _ => None,
            },
            labels: self
                .labels
                .iter()
                .map(|(k, v)| Label::new(k.clone(), v.clone()))
                .collect(),
            priority: self.priority,
            gang: self.gang,
            hold_on_failure: self.hold.as_ref().map(|h| Hold {
                owner: h.owner.clone(),
                ttl_ms: h.ttl_ms,
            }),
            pending_deadline_ms: self.pending_deadline_ms,
            expected_run_ms: self.expected_run_ms,
            requester: self.requester.clone(),
            account: self.account.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WireFailureKind {
    Transient,
    Host,
    Request,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct WireFailure {
    pub kind: WireFailureKind,
    pub message: String,
}

impl From<&Failure> for WireFailure {
    fn from(f: &Failure) -> WireFailure {
        WireFailure {
            kind: match f.kind {
                FailureKind::Transient => WireFailureKind::Transient,
                FailureKind::Host => WireFailureKind::Host,
                FailureKind::Request => WireFailureKind::Request,
            },
            message: f.message.clone(),
        }
    }
}

impl WireFailure {
    fn to_failure(&self) -> Failure {
        Failure::new(
            match self.kind {
                WireFailureKind::Transient => FailureKind::Transient,
                WireFailureKind::Host => FailureKind::Host,
                WireFailureKind::Request => FailureKind::Request,
            },
            self.message.clone(),
        )
    }
}

fn result_of(r: &Result<(), WireFailure>) -> Result<(), Failure> {
    r.as_ref().map(|_| ()).map_err(WireFailure::to_failure)
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct WireProbe {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub images: Vec<String>,
}

/// One input as journaled. Hosts carry their driver options, so a restart can rebuild drivers.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum WireInput {
    Submit {
        request: WireRequest,
    },
    Cancel {
        request: u64,
    },
    AddHost {
        host: WireHost,
    },
    RemoveHost {
        host: u64,
    },
    Probe {
        host: u64,
        result: Result<WireProbe, String>,
    },
    Drain {
        host: u64,
    },
    Resume {
        host: u64,
    },
    Offline {
        host: u64,
    },
    ProvisionStarted {
        vm: u64,
    },
    ProvisionDone {
        vm: u64,
        result: Result<(), WireFailure>,
    },
    BootDone {
        vm: u64,
        result: Result<(), WireFailure>,
    },
    /// A warm VM's object on its host was handed to request VM `vm` (`Action::Handover`).
    HandoverDone {
        vm: u64,
        result: Result<(), WireFailure>,
    },
    JobFinished {
        vm: u64,
        passed: bool,
    },
    Release {
        vm: u64,
    },
    Extend {
        vm: u64,
        by_ms: u64,
    },
    DestroyDone {
        vm: u64,
        result: Result<(), WireFailure>,
    },
    /// A booted VM was missing from its host.
    VmLost {
        vm: u64,
    },
    /// New VMs are numbered past `vm`: orphans up to it were kept (see `Input::ReserveVmIds`).
    ReserveVmIds {
        vm: u64,
    },
    SetTemplate {
        template: WireTemplate,
    },
    Tick,
}

impl WireInput {
    /// The scheduler's input. Fails only for hosts and templates that do not validate.
    pub fn to_input(&self) -> Result<Input, FieldError> {
        Ok(match self {
            WireInput::Submit { request } => Input::Submit(request.to_spec()),
            WireInput::Cancel { request } => Input::Cancel(RequestId(*request)),
            WireInput::AddHost { host } => Input::AddHost(host.to_spec()?),
            WireInput::RemoveHost { host } => Input::RemoveHost(HostId(*host)),
            WireInput::Probe { host, result } => Input::Probe {
                host: HostId(*host),
                result: result.as_ref().map_err(Clone::clone).map(|p| ProbeReport {
                    vcpus: p.vcpus,
                    memory_mib: p.memory_mib,
                    images: p.images.clone(),
                }),
            },
            WireInput::Drain { host } => Input::Drain(HostId(*host)),
            WireInput::Resume { host } => Input::Resume(HostId(*host)),
            WireInput::Offline { host } => Input::Offline(HostId(*host)),
            WireInput::ProvisionStarted { vm } => Input::ProvisionStarted(VmId(*vm)),
            WireInput::ProvisionDone { vm, result } => Input::ProvisionDone {
                vm: VmId(*vm),
                result: result_of(result),
            },
            WireInput::BootDone { vm, result } => Input::BootDone {
                vm: VmId(*vm),
                result: result_of(result),
            },
            WireInput::HandoverDone { vm, result } => Input::HandoverDone {
                vm: VmId(*vm),
                result: result_of(result),
            },
            WireInput::JobFinished { vm, passed } => Input::JobFinished {
                vm: VmId(*vm),
                passed: *passed,
            },
            WireInput::Release { vm } => Input::Release(VmId(*vm)),
            WireInput::Extend { vm, by_ms } => Input::Extend {
                vm: VmId(*vm),
                by_ms: *by_ms,
            },
            WireInput::DestroyDone { vm, result } => Input::DestroyDone {
                vm: VmId(*vm),
                result: result_of(result),
            },
            WireInput::VmLost { vm } => Input::VmLost(VmId(*vm)),
            WireInput::ReserveVmIds { vm } => Input::ReserveVmIds(VmId(*vm)),
            WireInput::SetTemplate { template } => Input::SetTemplate(template.to_template()?),
            WireInput::Tick => Input::Tick,
        })
    }

    /// A short name for logs and the audit table.
    pub fn name(&self) -> &'static str {
        match self {
            WireInput::Submit { .. } => "submit",
            WireInput::Cancel { .. } => "cancel",
            WireInput::AddHost { .. } => "add_host",
            WireInput::RemoveHost { .. } => "remove_host",
            WireInput::Probe { .. } => "probe",
            WireInput::Drain { .. } => "drain",
            WireInput::Resume { .. } => "resume",
            WireInput::Offline { .. } => "offline",
            WireInput::ProvisionStarted { .. } => "provision_started",
            WireInput::ProvisionDone { .. } => "provision_done",
            WireInput::BootDone { .. } => "boot_done",
            WireInput::HandoverDone { .. } => "handover_done",
            WireInput::JobFinished { .. } => "job_finished",
            WireInput::Release { .. } => "release",
            WireInput::Extend { .. } => "extend",
            WireInput::DestroyDone { .. } => "destroy_done",
            WireInput::VmLost { .. } => "vm_lost",
            WireInput::ReserveVmIds { .. } => "reserve_vm_ids",
            WireInput::SetTemplate { .. } => "set_template",
            WireInput::Tick => "tick",
        }
    }
}

// ---- what each driver kind asks of a host ----

/// Whether hosts of `kind` take their vCPUs and memory from their first probe when the host
/// leaves them out (configured values then cap what the probe reports).
pub(crate) fn capacity_from_probe(kind: DriverKind) -> bool {
    matches!(kind, DriverKind::Libvirt | DriverKind::Parallels)
}

/// The counted slots a host of `kind` gets when it names none: two `macos` slots for every
/// Parallels host (Apple's licence allows two macOS guests per Mac).
pub(crate) fn default_slots(kind: DriverKind) -> BTreeMap<String, u32> {
    match kind {
        DriverKind::Parallels => berth_drivers::parallels::host_slots(),
        DriverKind::Sim | DriverKind::Libvirt => BTreeMap::new(),
    }
}

pub(crate) fn parallels_error(e: ConfigError) -> FieldError {
    let field = match &e {
        ConfigError::UnknownOption { option, .. } | ConfigError::BadValue { option, .. } => {
            format!("options.{option}")
        }
        ConfigError::MissingOption { option } => format!("options.{option}"),
    };
    FieldError::new(&field, e.to_string())
}

#[cfg(feature = "libvirt")]
pub(crate) fn libvirt_config(
    options: &BTreeMap<String, String>,
) -> Result<berth_drivers::libvirt::LibvirtConfig, FieldError> {
    berth_drivers::libvirt::LibvirtConfig::from_options(options)
        .map_err(|e| FieldError::new(&format!("options.{}", e.key), e.to_string()))
}

#[cfg(not(feature = "libvirt"))]
pub(crate) fn no_libvirt() -> FieldError {
    FieldError::new(
        "driver",
        "this berth was built without the libvirt driver: rebuild it with \
         `cargo build --release --features libvirt` (needs libvirt-dev and pkg-config)",
    )
}

/// Checks that this daemon can drive hosts of `kind` with these options. Building a driver
/// connects nothing, so an unreachable host is a failed probe later, not an error here.
pub(crate) fn check_driver(kind: DriverKind, host: &WireHost) -> Result<(), FieldError> {
    match kind {
        DriverKind::Sim => match host.options.keys().next() {
            Some(k) => Err(FieldError::new(
                "options",
                format!("the sim driver takes no options, got `{k}`"),
            )),
            None => Ok(()),
        },
        #[cfg(feature = "libvirt")]
        DriverKind::Libvirt => libvirt_config(&host.options).map(|_| ()),
        #[cfg(not(feature = "libvirt"))]
        DriverKind::Libvirt => Err(no_libvirt()),
        DriverKind::Parallels => ParallelsConfig::from_options(&host.options)
            .map(|_| ())
            .map_err(parallels_error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probed_hosts_may_leave_capacity_out_and_parallels_hosts_get_macos_slots() {
        let host: WireHost = serde_json::from_value(serde_json::json!({
            "name": "mac1", "driver": "parallels", "options": {"ssh": "ci@mac1"}
        }))
        .unwrap();
        let spec = host.to_spec().unwrap();
        assert_eq!((spec.vcpus, spec.memory_mib), (1, 1));
        assert_eq!(spec.slots, vec![("macos".to_owned(), 2)]);
        let sim: WireHost =
            serde_json::from_value(serde_json::json!({"name": "s1", "driver": "sim"})).unwrap();
        assert_eq!(sim.validate().unwrap_err().field, "vcpus");
    }

    #[test]
    fn inputs_round_trip_through_json() {
        let inputs = vec![
            WireInput::Submit {
                request: WireRequest {
                    id: 3,
                    template: "linux".into(),
                    count: 2,
                    vcpus: Some(4),
                    memory_mib: Some(8192),
                    labels: BTreeMap::from([("arch".into(), "x86_64".into())]),
                    priority: 5,
                    gang: true,
                    hold: Some(WireHold {
                        owner: "dev".into(),
                        ttl_ms: 60_000,
                    }),
                    pending_deadline_ms: None,
                    expected_run_ms: Some(1000),
                    requester: "ci".into(),
                    change: Some("I8473b959".into()),
                    account: Some("qt-base".into()),
                },
            },
            WireInput::ProvisionDone {
                vm: 7,
                result: Err(WireFailure {
                    kind: WireFailureKind::Host,
                    message: "disk full".into(),
                }),
            },
            WireInput::Probe {
                host: 1,
                result: Ok(WireProbe {
                    vcpus: 8,
                    memory_mib: 1024,
                    images: vec!["linux".into()],
                }),
            },
            WireInput::Tick,
        ];
        for input in inputs {
            let json = serde_json::to_string(&input).unwrap();
            let back: WireInput = serde_json::from_str(&json).unwrap();
            assert_eq!(back, input, "{json}");
            let sched = back.to_input().unwrap();
            if let (WireInput::Submit { request }, Input::Submit(spec)) = (&back, &sched) {
                assert_eq!(spec.account_name(), request.account_name());
                assert_eq!(spec.account.as_deref(), Some("qt-base"));
            }
        }
    }
}
