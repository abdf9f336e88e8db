//! berth's HTTP API contract: every request body, answer, event and error the daemon sends
//! or takes under `/v1`, the state names, the token roles and the host-class rule.
//!
//! The daemon serialises these types and nothing else; the console and the CLI deserialise
//! them strictly, so a missing field or an unknown state is an error that names the route
//! and the field, never a silent zero. The OpenAPI document (`GET /v1/openapi.json`,
//! `docs/openapi.json`) is generated from them.

pub mod answers;
pub mod bodies;
pub mod events;
pub mod forecast;
pub mod logs;
pub mod pulses;
mod states;

pub use answers::*;
pub use bodies::*;
pub use events::{DaemonEvent, Event, HostEvent, Lagged, RequestEvent, VmEvent};
pub use forecast::{ArrivalsForecast, DrainForecast, WaitStats};
pub use logs::{DaemonLog, LogLine};
pub use pulses::{ClassPulse, Pulse, PulseList, SlotPulse};
pub use states::{HostState, RequestState, Role, UnknownName, VmState};

/// The API's version: the `/v1` in every path, and the OpenAPI document's `info.version`.
pub const API_VERSION: &str = "1";

/// What every error answer carries: what went wrong and, when one field is to blame, which.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    /// The field (of the body, the path or the query) at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A VM id as the API takes it in paths: `12`, `vm12` or `berth-vm12` (its name on hosts).
pub fn vm_id(s: &str) -> Option<u64> {
    let digits = s
        .strip_prefix("berth-vm")
        .or_else(|| s.strip_prefix("vm"))
        .unwrap_or(s);
    digits.parse().ok()
}

/// The request a warm VM belongs to (`VmRow::request`): none, a warm pool's VMs are owned by
/// no request until one takes them (the scheduler's `RequestId::WARM_POOL`).
pub const WARM_POOL_REQUEST: u64 = u64::MAX;

/// How a VM's request is shown to people: `r7`, or `warm` for a warm pool's VM.
pub fn request_label(request: u64) -> String {
    if request == WARM_POOL_REQUEST {
        "warm".into()
    } else {
        format!("r{request}")
    }
}

/// A request id as the API takes it in paths: `7` or `r7`.
pub fn request_id(s: &str) -> Option<u64> {
    s.strip_prefix('r').unwrap_or(s).parse().ok()
}

/// The class a host belongs to, for grouping in the console, the metrics and reports: its
/// `class` (else `pool`) label if it has one, else its name without a trailing `-N` number
/// (`kvm-x86-0001` → `kvm-x86`), else its name.
pub fn host_class<'a>(
    name: &'a str,
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> &'a str {
    let mut pool = None;
    for (key, value) in labels {
        match key {
            "class" => return value,
            "pool" if pool.is_none() => pool = Some(value),
            _ => {}
        }
    }
    if let Some(p) = pool {
        return p;
    }
    match name.rsplit_once('-') {
        Some((stem, n))
            if !stem.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            stem
        }
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_in_every_spelling() {
        assert_eq!(vm_id("12"), Some(12));
        assert_eq!(vm_id("vm12"), Some(12));
        assert_eq!(vm_id("berth-vm12"), Some(12));
        assert_eq!(vm_id("berth-12"), None);
        assert_eq!(request_id("r7"), Some(7));
        assert_eq!(request_id("7"), Some(7));
        assert_eq!(request_id("x7"), None);
    }

    #[test]
    fn host_classes_come_from_labels_then_names() {
        assert_eq!(host_class("kvm-x86-0001", []), "kvm-x86");
        assert_eq!(host_class("sim-mac-3", []), "sim-mac");
        assert_eq!(host_class("builder", []), "builder");
        assert_eq!(host_class("builder-", []), "builder-");
        assert_eq!(host_class("kvm-x86-0001", [("pool", "gpu")]), "gpu");
        assert_eq!(
            host_class("kvm-x86-0001", [("pool", "gpu"), ("class", "big")]),
            "big"
        );
    }
}
