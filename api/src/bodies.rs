//! What the daemon takes: request bodies, each refusing fields it does not know.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/requests`: VMs of one template.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub template: String,
    /// VMs wanted: 1 to `REQUEST_VMS_MAX`.
    pub count: u32,
    /// vCPUs per VM, instead of the template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Labels every host of the request must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub priority: i32,
    /// All VMs start together or none does.
    #[serde(default)]
    pub gang: bool,
    /// A VM whose job fails is held for debugging (a breakpoint).
    #[serde(default)]
    pub hold_on_failure: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_owner: Option<String>,
    /// The staged change this request belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    /// The account (team or project) charged for it under fair share; the requester when
    /// left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_ttl_s: Option<u64>,
    /// Rejected if not placed by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_deadline_s: Option<u64>,
    /// How long each job is expected to run (backfilling uses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_run_s: Option<u64>,
    /// On whose behalf; the token's name when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
}

/// `POST /v1/vms/{id}/result`: how the VM's job ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    pub passed: bool,
}

/// `POST /v1/vms/{id}/extend`: more time for a breakpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Extend {
    pub seconds: u64,
}

/// The body of routes that take none (`{}` or nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `POST /v1/hosts`: a host to add.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewHost {
    pub name: String,
    /// `libvirt`, `parallels` or `sim`.
    pub driver: String,
    /// 0 or left out: from the host's probe (libvirt and Parallels hosts only).
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

/// `POST /v1/predict/drain`: what draining these hosts would do to waits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainQuestion {
    pub hosts: Vec<String>,
    /// How far ahead to look; an hour when left out, a day at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon_s: Option<u64>,
    /// `recent` (the default): the last horizon's requests arrive again; `none`: no arrivals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrivals: Option<String>,
}

/// `POST /v1/images/{name}/push`: pull a base image ahead of demand, onto the named hosts or
/// onto every ready host of a driver whose hosts take pulls on request (`Driver::image_store`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagePush {
    /// The hosts, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Instead of `hosts`: every ready host of this driver (`libvirt`) that takes pulls on
    /// request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// `POST /v1/images/{name}/evict`: remove a base image from a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageEvict {
    /// The host, by name.
    pub host: String,
}
