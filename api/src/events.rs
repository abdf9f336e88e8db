//! The event stream (`GET /v1/events`, server-sent events): one `data:` line of JSON per
//! state change, an [`Event`]; a reader that fell behind gets an event named `lagged`
//! carrying a [`Lagged`].

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{HostState, RequestState, VmState};

/// One state change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Vm(VmEvent),
    Request(RequestEvent),
    Host(HostEvent),
    /// The daemon itself: whether it takes writes.
    Daemon(DaemonEvent),
}

impl Event {
    pub fn at_ms(&self) -> u64 {
        match self {
            Event::Vm(e) => e.at_ms,
            Event::Request(e) => e.at_ms,
            Event::Host(e) => e.at_ms,
            Event::Daemon(e) => e.at_ms,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmEvent {
    pub at_ms: u64,
    pub vm: u64,
    pub name: String,
    pub request: u64,
    /// The host's name, once placed.
    pub host: Option<String>,
    /// `null` when the VM was just created.
    pub from: Option<VmState>,
    pub to: VmState,
    pub cause: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestEvent {
    pub at_ms: u64,
    pub request: u64,
    /// `null` when the request was just submitted.
    pub from: Option<RequestState>,
    pub to: RequestState,
    pub cause: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostEvent {
    pub at_ms: u64,
    pub host: u64,
    pub name: Option<String>,
    /// `null` when the host was just added.
    pub from: Option<HostState>,
    /// `null` when the host was removed.
    pub to: Option<HostState>,
    pub cause: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DaemonEvent {
    pub at_ms: u64,
    pub writable: bool,
    /// Why writes are refused, when they are.
    pub why: Option<String>,
}

/// The `lagged` event: how many events a reader missed (too slow, or reconnected with a
/// `Last-Event-ID` older than the events the daemon keeps). After it, read the state afresh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Lagged {
    pub missed: u64,
    /// The reader's `Last-Event-ID` is from an earlier run of the daemon: how many it missed is
    /// unknown (`missed` is 0).
    #[serde(default)]
    pub daemon_restarted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_their_kind() {
        let e = Event::Request(RequestEvent {
            at_ms: 5,
            request: 7,
            from: None,
            to: RequestState::Waiting,
            cause: "submitted".into(),
        });
        let json = serde_json::to_value(&e).expect("serialises");
        assert_eq!(json["kind"], "request");
        assert_eq!(json["to"], "waiting");
        let back: Event = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, e);
        let unknown = serde_json::json!({"kind": "vm", "at_ms": 1, "vm": 1, "name": "x",
            "request": 1, "host": null, "from": null, "to": "sleeping", "cause": ""});
        assert!(serde_json::from_value::<Event>(unknown).is_err());
    }
}
