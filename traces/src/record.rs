//! The records of a berth trace: requests, host events, cancels and releases, each stamped with a time in milliseconds.
//!
//! These types are the serializable edge of berth; `sched`'s own types stay free of serde and
//! the simulator converts records into scheduler inputs. FORMAT.md shows the JSON form.

use std::collections::BTreeMap;

use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

/// The first line of a berth trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a header object")]
pub struct TraceHeader {
    /// Format version, [`TraceHeader::VERSION`] for traces this crate writes.
    #[serde(rename = "berth_trace")]
    pub version: u32,
    /// True when the trace was generated rather than recorded; reports must say so.
    pub synthetic: bool,
    /// Free text: where the trace comes from, with attribution for published logs.
    pub source: String,
}

impl TraceHeader {
    /// The only format version this crate reads and writes.
    pub const VERSION: u32 = 1;

    pub fn new(synthetic: bool, source: impl Into<String>) -> Self {
        TraceHeader {
            version: Self::VERSION,
            synthetic,
            source: source.into(),
        }
    }
}

/// One line of a trace after the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// When the record takes effect; non-decreasing along a trace. For a request with `after`
    /// this is only its place in the stream (see [`RequestRecord::after`]).
    pub at_ms: u64,
    #[serde(flatten)]
    pub body: RecordBody,
}

/// What a record says, tagged by `"kind"` in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordBody {
    Request(RequestRecord),
    Host(HostRecord),
    /// The requester withdraws request `request` (an earlier request of the trace).
    Cancel {
        request: u64,
    },
    /// An operator releases the VMs of request `request` held at a breakpoint.
    Release {
        request: u64,
    },
}

/// A CI coordinator asks for `count` VMs of one shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestRecord {
    /// Unique within the trace.
    pub id: u64,
    /// How many VMs, at least 1.
    pub count: u32,
    /// vCPUs of each VM, at least 1.
    pub vcpus: u32,
    /// Memory of each VM; `None` means the template's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    pub template: String,
    /// Labels a host must carry to run these VMs, such as `arch = aarch64`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub priority: i32,
    /// All `count` VMs are placed together or not at all.
    #[serde(default, skip_serializing_if = "is_false")]
    pub gang: bool,
    /// How long each VM's job runs once the VM is running.
    pub duration_ms: u64,
    /// The requester's estimate of `duration_ms` (backfilling uses it); `None` means exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_ms: Option<u64>,
    /// How each VM's job ends.
    #[serde(default, skip_serializing_if = "Outcome::is_passed")]
    pub outcome: Outcome,
    /// Keep a failed job's VM at a breakpoint for its owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_on_failure: Option<Hold>,
    /// Who asked (a user, a developer, a CI project); for accounting only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    /// The staged change this request belongs to (a Gerrit change, a pull request), so that
    /// reports can give each change's turnaround; free text, like `requester`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    /// The account (team or project) charged for it under fair share; absent: the requester.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Earlier requests this one waits for. It arrives `think_ms` after the last of them has
    /// ended (all its VMs finished), but never before its own record has been read. Writers put
    /// such a record at or before its dependencies' latest submit time, so that a faster
    /// schedule brings it forward.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<u64>,
    /// Delay between the end of the `after` requests and this request's arrival.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub think_ms: u64,
}

impl RequestRecord {
    /// One VM of `template` that runs `duration_ms` and passes; every other field at its default.
    pub fn new(id: u64, template: impl Into<String>, vcpus: u32, duration_ms: u64) -> Self {
        RequestRecord {
            id,
            count: 1,
            vcpus,
            memory_mib: None,
            template: template.into(),
            labels: BTreeMap::new(),
            priority: 0,
            gang: false,
            duration_ms,
            expected_ms: None,
            outcome: Outcome::Passed,
            hold_on_failure: None,
            requester: None,
            change: None,
            account: None,
            after: Vec::new(),
            think_ms: 0,
        }
    }

    /// The duration a scheduler may plan with: the requester's estimate, else the real one.
    pub fn estimate_ms(&self) -> u64 {
        self.expected_ms.unwrap_or(self.duration_ms)
    }
}

/// How a job ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    #[default]
    Passed,
    Failed,
}

impl Outcome {
    pub fn is_passed(&self) -> bool {
        *self == Outcome::Passed
    }
}

/// A breakpoint: who may look at a failed VM, and how long it is kept for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    pub owner: String,
    pub ttl_ms: u64,
}

/// Something happened to a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    /// The host's name, unique in the fleet.
    pub host: String,
    pub event: HostEvent,
}

/// A host event. In JSON the name is the `"event"` field and an added host's spec sits beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// A new host joined the fleet (a provisioning system racked it).
    Added(HostSpec),
    /// The host stopped working (probes fail); its VMs are lost.
    Failed,
    /// A failed host works again.
    Repaired,
    /// An operator drains the host: no new VMs, the running ones finish.
    Drained,
    /// An operator puts a drained host back in service.
    Resumed,
    /// The host leaves the fleet.
    Removed,
}

impl HostEvent {
    /// The name used for the `"event"` field.
    pub fn name(&self) -> &'static str {
        match self {
            HostEvent::Added(_) => "added",
            HostEvent::Failed => "failed",
            HostEvent::Repaired => "repaired",
            HostEvent::Drained => "drained",
            HostEvent::Resumed => "resumed",
            HostEvent::Removed => "removed",
        }
    }
}

/// Capacity and identity of an added host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    pub driver: Driver,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Counted slots, such as `macos = 2` (Apple's licence allows two macOS guests per Mac).
    pub slots: BTreeMap<String, u32>,
    pub labels: BTreeMap<String, String>,
}

/// Which driver runs a host's VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Libvirt,
    Parallels,
    Sim,
}

/// A host record as it stands in JSON: the event's name and the added host's fields side by
/// side. The reader parses this and then checks which fields the event allows, so that errors
/// can name the field; [`HostRecord`] itself keeps the valid shapes only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HostWire {
    pub(crate) host: String,
    pub(crate) event: HostEventName,
    #[serde(default)]
    pub(crate) driver: Option<Driver>,
    #[serde(default)]
    pub(crate) vcpus: Option<u32>,
    #[serde(default)]
    pub(crate) memory_mib: Option<u64>,
    #[serde(default)]
    pub(crate) slots: Option<BTreeMap<String, u32>>,
    #[serde(default)]
    pub(crate) labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum HostEventName {
    Added,
    Failed,
    Repaired,
    Drained,
    Resumed,
    Removed,
}

impl Serialize for HostRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let n_fields = match &self.event {
            HostEvent::Added(_) => 7,
            _ => 2,
        };
        let mut s = serializer.serialize_struct("HostRecord", n_fields)?;
        s.serialize_field("host", &self.host)?;
        s.serialize_field("event", self.event.name())?;
        if let HostEvent::Added(spec) = &self.event {
            s.serialize_field("driver", &spec.driver)?;
            s.serialize_field("vcpus", &spec.vcpus)?;
            s.serialize_field("memory_mib", &spec.memory_mib)?;
            if spec.slots.is_empty() {
                s.skip_field("slots")?;
            } else {
                s.serialize_field("slots", &spec.slots)?;
            }
            if spec.labels.is_empty() {
                s.skip_field("labels")?;
            } else {
                s.serialize_field("labels", &spec.labels)?;
            }
        }
        s.end()
    }
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn serializes_compactly_with_defaults_left_out() {
        let mut request = RequestRecord::new(7, "linux", 4, 60_000);
        request.labels.insert("arch".into(), "x86_64".into());
        let record = Record {
            at_ms: 1000,
            body: RecordBody::Request(request),
        };
        let json = serde_json::to_string(&record).expect("serializes");
        expect![[r#"{"at_ms":1000,"kind":"request","id":7,"count":1,"vcpus":4,"template":"linux","labels":{"arch":"x86_64"},"duration_ms":60000}"#]]
            .assert_eq(&json);

        let host = Record {
            at_ms: 0,
            body: RecordBody::Host(HostRecord {
                host: "mac1".into(),
                event: HostEvent::Added(HostSpec {
                    driver: Driver::Parallels,
                    vcpus: 12,
                    memory_mib: 65_536,
                    slots: BTreeMap::from([("macos".into(), 2)]),
                    labels: BTreeMap::new(),
                }),
            }),
        };
        let json = serde_json::to_string(&host).expect("serializes");
        expect![[r#"{"at_ms":0,"kind":"host","host":"mac1","event":"added","driver":"parallels","vcpus":12,"memory_mib":65536,"slots":{"macos":2}}"#]]
            .assert_eq(&json);

        let cancel = Record {
            at_ms: 5,
            body: RecordBody::Cancel { request: 7 },
        };
        let json = serde_json::to_string(&cancel).expect("serializes");
        expect![[r#"{"at_ms":5,"kind":"cancel","request":7}"#]].assert_eq(&json);
    }

    #[test]
    fn estimate_falls_back_to_duration() {
        let mut r = RequestRecord::new(1, "linux", 1, 500);
        assert_eq!(r.estimate_ms(), 500);
        r.expected_ms = Some(900);
        assert_eq!(r.estimate_ms(), 900);
    }
}
