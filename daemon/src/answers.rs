//! The scheduler's views as the API's types (`berth_api`): hosts, why a request waits, events.
//! Everything the daemon says about its state goes through here or through `store`'s rows.

use berth_api as api;
use berth_drivers::vm_name;
use berth_sched::{Blocker, Event, HostView, Scheduler};

pub(crate) fn host_state(s: berth_sched::HostState) -> api::HostState {
    use berth_sched::HostState as S;
    match s {
        S::Unknown => api::HostState::Unknown,
        S::Ready => api::HostState::Ready,
        S::Draining => api::HostState::Draining,
        S::Maintenance => api::HostState::Maintenance,
        S::Offline => api::HostState::Offline,
        S::Error => api::HostState::Error,
    }
}

pub(crate) fn vm_state(s: berth_sched::VmState) -> api::VmState {
    use berth_sched::VmState as S;
    match s {
        S::Queued => api::VmState::Queued,
        S::Placed => api::VmState::Placed,
        S::Provisioning => api::VmState::Provisioning,
        S::Booting => api::VmState::Booting,
        S::Running => api::VmState::Running,
        S::Held => api::VmState::Held,
        S::Releasing => api::VmState::Releasing,
        S::Done => api::VmState::Done,
        S::Failed => api::VmState::Failed,
        S::Lost => api::VmState::Lost,
        S::Cancelled => api::VmState::Cancelled,
    }
}

pub(crate) fn request_state(s: berth_sched::RequestState) -> api::RequestState {
    use berth_sched::RequestState as S;
    match s {
        S::Waiting => api::RequestState::Waiting,
        S::Active => api::RequestState::Active,
        S::Done => api::RequestState::Done,
        S::Failed => api::RequestState::Failed,
        S::Rejected => api::RequestState::Rejected,
        S::Cancelled => api::RequestState::Cancelled,
    }
}

/// A count the scheduler keeps signed (it never goes below zero).
fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A host as the API shows it. `probe_answered` is when it last answered a probe that changed
/// nothing (the scheduler only hears of probes that change something).
pub(crate) fn host_row(
    s: &Scheduler,
    h: &HostView<'_>,
    probe_answered: Option<u64>,
) -> api::HostRow {
    api::HostRow {
        id: h.id.0,
        name: h.name.to_owned(),
        driver: h.driver.name().to_owned(),
        state: host_state(h.state),
        vcpus_milli: unsigned(h.cpu_milli),
        vcpus_used_milli: unsigned(h.cpu_used_milli),
        memory_mib: unsigned(h.memory_mib),
        memory_used_mib: unsigned(h.memory_used_mib),
        slots: h
            .slots
            .iter()
            .map(|&(kind, capacity, used)| api::SlotRow {
                kind: kind.to_owned(),
                capacity,
                used,
            })
            .collect(),
        provisioning: h.provisioning.into(),
        vms: h.n_vms as u64,
        labels: h.labels.iter().map(|l| l.to_string()).collect(),
        last_probe_ms: h.last_probe_ms.max(probe_answered),
        probe_failures: h.probe_failures.into(),
        provision_failures: h.provision_failures.into(),
        drain: (h.state == berth_sched::HostState::Draining).then(|| drain_status(s, h)),
        // Names only: the API adds what the driver counted (`api::images`).
        images: h
            .images
            .iter()
            .map(|&name| api::HostImage {
                name: name.to_owned(),
                bytes: None,
                last_used_ms: None,
                in_use: None,
            })
            .collect(),
        image_disk: None,
        pulls: Vec::new(),
    }
}

/// What a draining host waits for: each VM's hold (owner, expiry) or expected end, and the
/// latest of those as its ETA.
fn drain_status(s: &Scheduler, h: &HostView<'_>) -> api::DrainStatus {
    let mut blockers: Vec<api::DrainBlocker> = h
        .vms
        .iter()
        .filter_map(|&id| s.vm(id))
        .map(|v| {
            let held_by = v
                .hold_until_ms
                .and_then(|_| s.request(v.request))
                .and_then(|r| r.spec.hold_on_failure.as_ref().map(|h| h.owner.clone()));
            api::DrainBlocker {
                vm: v.id.0,
                name: vm_name(v.id.0),
                request: v.request.0,
                state: vm_state(v.state),
                held_by,
                held_until_ms: v.hold_until_ms,
                expected_end_ms: (v.expected_end_ms > 0).then_some(v.expected_end_ms),
            }
        })
        .collect();
    blockers.sort_by_key(|b| (b.held_until_ms.is_none(), b.expected_end_ms, b.vm));
    let eta_ms = blockers
        .iter()
        .map(|b| b.held_until_ms.or(b.expected_end_ms))
        .try_fold(0, |latest, end| end.map(|e| latest.max(e)))
        .filter(|_| !blockers.is_empty());
    api::DrainStatus { eta_ms, blockers }
}

/// Why a request waits (`None` when it does not).
pub(crate) fn why(s: &Scheduler, id: berth_sched::RequestId) -> Option<api::Why> {
    let w = s.why(id)?;
    let blocker = match w.blocker {
        Blocker::NotYetConsidered => api::Blocker::NotYetConsidered,
        Blocker::NoFit => api::Blocker::NoFit,
        Blocker::GangShort { fit, need } => api::Blocker::GangShort {
            fit: fit.into(),
            need: need.into(),
        },
        Blocker::BehindHead(r) => api::Blocker::BehindHead { head: r.0 },
        Blocker::Reserved { head, start_ms } => api::Blocker::Reserved {
            head: head.0,
            start_ms,
        },
        Blocker::Quota => api::Blocker::Quota {
            account: s
                .request(id)
                .map(|r| r.spec.account_name().to_owned())
                .unwrap_or_default(),
        },
        Blocker::Image(hold) => api::Blocker::Image {
            image: w.image.clone().unwrap_or_default(),
            reason: hold.name().to_owned(),
        },
    };
    Some(api::Why {
        summary: w.to_string(),
        need: w.need.clone(),
        waiting_vms: w.n_waiting_vms as u64,
        blocker,
        reasons: w
            .reasons
            .iter()
            .map(|(r, n)| api::ReasonCount {
                reason: r.describe().to_owned(),
                hosts: (*n).into(),
                named: w.named.get(r).cloned().unwrap_or_default(),
            })
            // Hosts with room that the account's quota keeps it from, one reason per class.
            .chain(w.quota.iter().map(|q| api::ReasonCount {
                reason: q.text.clone(),
                hosts: q.hosts.into(),
                named: q.named.clone(),
            }))
            .collect(),
        hosts_fit: w.hosts_fit.into(),
        hosts_total: w.hosts_total.into(),
    })
}

/// An event as the event stream (and hooks) send it.
pub(crate) fn event(s: &Scheduler, e: &Event) -> api::Event {
    let host_name = |h: berth_sched::HostId| s.host(h).map(|h| h.name.to_owned());
    match e {
        Event::Vm {
            at_ms,
            vm,
            request,
            host,
            from,
            to,
            cause,
        } => api::Event::Vm(api::VmEvent {
            at_ms: *at_ms,
            vm: vm.0,
            name: vm_name(vm.0),
            request: request.0,
            host: host.and_then(host_name),
            from: from.map(vm_state),
            to: vm_state(*to),
            cause: cause.to_string(),
        }),
        Event::Request {
            at_ms,
            request,
            from,
            to,
            cause,
        } => api::Event::Request(api::RequestEvent {
            at_ms: *at_ms,
            request: request.0,
            from: from.map(request_state),
            to: request_state(*to),
            cause: cause.to_string(),
        }),
        Event::Host {
            at_ms,
            host,
            from,
            to,
            cause,
        } => api::Event::Host(api::HostEvent {
            at_ms: *at_ms,
            host: host.0,
            name: host_name(*host),
            from: from.map(host_state),
            to: to.map(host_state),
            cause: cause.to_string(),
        }),
    }
}

/// The most accounts outside the configured ones that `GET /v1/accounts` and `/metrics` name
/// one by one (the most using); the rest are summed under [`ACCOUNT_OTHER`], so that clients,
/// which name accounts as they like, cannot grow either.
pub const ACCOUNTS_OTHERS_MAX: usize = 20;

/// The `account` of the accounts summed together.
pub const ACCOUNT_OTHER: &str = "other";

/// Accounts under fair share as the API shows them: every configured account, and of the
/// others the [`ACCOUNTS_OTHERS_MAX`] using most, the rest summed as [`ACCOUNT_OTHER`]; in the
/// order the queue serves them (`other` last); usage as of `now_ms` (the wall clock).
pub(crate) fn accounts(s: &Scheduler, now_ms: u64) -> api::AccountList {
    let configured: std::collections::BTreeSet<&str> = s
        .config()
        .fair_share
        .iter()
        .flat_map(|f| f.accounts.iter().map(|a| a.name.as_str()))
        .collect();
    let all = s.accounts(now_ms);
    let (mut shown, mut others): (Vec<_>, Vec<_>) = all
        .iter()
        .partition(|a| configured.contains(a.name.as_str()) && a.name != ACCOUNT_OTHER);
    let n_configured = shown.len();
    // The most using first, then by name: a fixed choice for a given state.
    others.sort_by(|a, b| {
        b.usage_vcpu_s
            .total_cmp(&a.usage_vcpu_s)
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut folded = Vec::new();
    for a in others {
        if a.name != ACCOUNT_OTHER && shown.len() - n_configured < ACCOUNTS_OTHERS_MAX {
            shown.push(a);
        } else {
            folded.push(a);
        }
    }
    shown.sort_by(|a, b| a.rank.cmp(&b.rank).then_with(|| a.name.cmp(&b.name)));
    // An account counts towards the shares while it holds capacity, waits, or has used any
    // lately (a vCPU-second or more, decayed).
    let active = |a: &berth_sched::AccountView| {
        a.holding_milli > 0 || a.waiting > 0 || a.usage_vcpu_s >= 1.0
    };
    let weights: f64 = all
        .iter()
        .filter(|a| active(a))
        .map(|a| f64::from(a.weight))
        .sum();
    let usage: f64 = all.iter().map(|a| a.usage_vcpu_s).sum();
    let fraction = |x: f64, of: f64| if of > 0.0 { x / of } else { 0.0 };
    let mut rows: Vec<api::AccountRow> = shown
        .iter()
        .map(|a| api::AccountRow {
            account: a.name.clone(),
            weight: u64::from(a.weight),
            share: if active(a) {
                fraction(f64::from(a.weight), weights)
            } else {
                0.0
            },
            usage_vcpu_s: a.usage_vcpu_s,
            usage_share: fraction(a.usage_vcpu_s, usage),
            holding_vcpus_milli: a.holding_milli,
            waiting_requests: a.waiting as u64,
            rank: Some(a.rank),
        })
        .collect();
    if !folded.is_empty() {
        let active_weight: f64 = folded
            .iter()
            .filter(|a| active(a))
            .map(|a| f64::from(a.weight))
            .sum();
        let used: f64 = folded.iter().map(|a| a.usage_vcpu_s).sum();
        rows.push(api::AccountRow {
            account: ACCOUNT_OTHER.to_owned(),
            weight: folded.iter().map(|a| u64::from(a.weight)).sum(),
            share: fraction(active_weight, weights),
            usage_vcpu_s: used,
            usage_share: fraction(used, usage),
            holding_vcpus_milli: folded.iter().map(|a| a.holding_milli).sum(),
            waiting_requests: folded.iter().map(|a| a.waiting as u64).sum(),
            rank: None,
        });
    }
    api::AccountList {
        fair_share: s.config().fair_share.is_some(),
        accounts: rows,
        folded: folded.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API reads back the names VMs have on hosts.
    #[test]
    fn vm_names_are_vm_ids_to_the_api() {
        assert_eq!(api::vm_id(&vm_name(12)), Some(12));
    }

    /// The scheduler's state names are the API's: a state added on one side only fails here.
    #[test]
    fn state_names_agree_with_the_scheduler() {
        for s in berth_sched::VmState::ALL {
            assert_eq!(vm_state(*s).name(), s.name());
        }
        for s in berth_sched::RequestState::ALL {
            assert_eq!(request_state(*s).name(), s.name());
        }
        for s in berth_sched::HostState::ALL {
            assert_eq!(host_state(*s).name(), s.name());
        }
        assert_eq!(berth_sched::VmState::ALL.len(), api::VmState::ALL.len());
        assert_eq!(
            berth_sched::RequestState::ALL.len(),
            api::RequestState::ALL.len()
        );
        assert_eq!(berth_sched::HostState::ALL.len(), api::HostState::ALL.len());
    }
}
