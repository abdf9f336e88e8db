//! What the daemon answers, route by route.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{HostState, RequestState, Role, VmState};

/// `GET /v1/whoami`: who the token belongs to and what it may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub name: String,
    pub role: Role,
}

/// `GET /v1/status`: counts, and whether the daemon takes writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// The API's version (`berth_api::API_VERSION`).
    pub api_version: String,
    /// Hosts by state.
    pub hosts: BTreeMap<HostState, u64>,
    /// Live VMs (the scheduler's) by state.
    pub live_vms: BTreeMap<VmState, u64>,
    /// Every VM in the database by state, ended ones included.
    pub vms_by_state: BTreeMap<VmState, u64>,
    pub live_requests: u64,
    pub queue_len: u64,
    pub journal_batches: u64,
    /// VMs found on hosts that berth keeps rather than destroys (`GET /v1/orphans`).
    pub orphans_kept: u64,
    /// The scheduler's clock (ms since the epoch): the time of the last thing that happened,
    /// so it stands still while the daemon is idle.
    pub now_ms: u64,
    /// The daemon's wall clock when it answered (ms since the epoch): what durations shown to
    /// people (waited, held for) count up to.
    pub server_ms: u64,
    /// Whether changes are taken; `false` while the disk is full.
    pub writable: bool,
    /// Why changes are refused, when they are.
    pub degraded: Option<String>,
    /// Who leads, when several daemons share one PostgreSQL database; absent for a daemon that
    /// is its database's only user (SQLite). A follower answers from its replica of the
    /// leader's state, brought up to date with the journal when asked: `role` is the
    /// answering daemon's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leadership: Option<Leadership>,
}

/// The leader lease as the answering daemon holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Leadership {
    /// The answering daemon's: `leader` or `follower`.
    pub role: String,
    /// The leader's base URL, as it advertises it.
    pub leader: Option<String>,
    /// The lease's epoch: one more at every change of leader.
    pub epoch: u64,
    /// Times the answering daemon took the lease.
    pub takeovers: u64,
}

/// A breakpoint request: who owns a failed VM kept for debugging, and for how long.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldSpec {
    pub owner: String,
    pub ttl_ms: u64,
}

/// A request as submitted, every field resolved (the shape against its template).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestSpec {
    pub id: u64,
    pub template: String,
    pub count: u32,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub labels: BTreeMap<String, String>,
    pub priority: i32,
    pub gang: bool,
    pub hold: Option<HoldSpec>,
    pub pending_deadline_ms: Option<u64>,
    pub expected_run_ms: Option<u64>,
    pub requester: String,
    /// The staged change the request belongs to (a Gerrit change, a pull request), if the
    /// caller said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    /// The account (team or project) charged for it under fair share: the one the submit
    /// named, else the requester.
    pub account: String,
}

/// A request (`GET /v1/requests`, the answer to a submit or a cancel).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestRow {
    pub id: u64,
    pub template: String,
    pub count: u32,
    pub state: RequestState,
    pub cause: String,
    pub submitted_ms: u64,
    pub updated_ms: u64,
    pub spec: RequestSpec,
    /// What a request that is still `active` ends as once its VMs are released: a cancelled
    /// request answers `active` with `ending: cancelled` until its last VM is gone. `null`
    /// otherwise.
    pub ending: Option<RequestState>,
    /// A waiting request's place in the order the queue is served, 1 first, as of the last
    /// estimate (made at most a few seconds ago); `null` unless it waits, and until the first
    /// estimate made since it arrived.
    #[serde(default)]
    pub position: Option<u64>,
    /// Requests waiting, as of the same estimate as `position`.
    #[serde(default)]
    pub queue_len: Option<u64>,
    /// When it is expected to start (all its VMs placed; ms since the epoch): the scheduler's
    /// state run forward with expected durations and no new arrivals. `null` without an
    /// estimate, or when the estimate stopped before it started (see `eta_after_ms`).
    #[serde(default)]
    pub eta_ms: Option<u64>,
    /// The estimate stopped (at its horizon or its budget) with the request still waiting: it
    /// is expected to start later than this (ms since the epoch).
    #[serde(default)]
    pub eta_after_ms: Option<u64>,
}

/// `GET /v1/requests`: a page of requests, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestPage {
    pub requests: Vec<RequestRow>,
    /// Ask with `before=` this for the next page; `null` when nothing follows.
    pub next_before: Option<u64>,
}

/// `GET /v1/requests/{id}`: a request, its VMs and why it waits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestDetail {
    #[serde(flatten)]
    pub request: RequestRow,
    pub vms: Vec<VmRow>,
    /// `null` unless the request waits.
    pub why: Option<Why>,
}

/// What holds a waiting request back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Blocker {
    /// No pass has looked at it yet.
    NotYetConsidered,
    /// No host could take one of its VMs.
    NoFit,
    /// A gang: fewer VMs fit at once than must start together.
    GangShort { fit: u64, need: u64 },
    /// A request ahead of it is served first.
    BehindHead { head: u64 },
    /// EASY backfilling: the head's reservation starts at `start_ms`.
    Reserved { head: u64, start_ms: u64 },
    /// Hosts had room, but its account's quota on their class lets it have none of it: the
    /// quota's reasons (one per class) say which and how far.
    Quota { account: String },
    /// Hosts had room, but not its base image, and no pull of it was started there: `reason`
    /// is `store_busy` (the image store serves all the pulls it may at once), `holder_sooner`
    /// (a host holding it should have room before a pull is done) or `no_disk` (hosts with
    /// room have no image disk left for it).
    Image { image: String, reason: String },
}

/// How many hosts turned a request down for one reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReasonCount {
    pub reason: String,
    pub hosts: u64,
    /// The first few of those hosts (three at most), by name.
    #[serde(default)]
    pub named: Vec<String>,
}

impl ReasonCount {
    /// The reason with the hosts it names: `lack memory: sim-small-1, sim-small-2, …`.
    pub fn with_hosts(&self) -> String {
        if self.named.is_empty() {
            return self.reason.clone();
        }
        let more = if (self.named.len() as u64) < self.hosts {
            ", …"
        } else {
            ""
        };
        format!("{}: {}{more}", self.reason, self.named.join(", "))
    }
}

/// Why a request waits, as the scheduler explains it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Why {
    pub summary: String,
    /// What one VM needs, in words.
    pub need: String,
    pub waiting_vms: u64,
    pub blocker: Blocker,
    pub reasons: Vec<ReasonCount>,
    pub hosts_fit: u64,
    pub hosts_total: u64,
}

/// A waiting request in the order of service, with why it waits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueEntry {
    #[serde(flatten)]
    pub request: RequestRow,
    pub why: Option<Why>,
}

/// `GET /v1/queue`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Queue {
    pub queue: Vec<QueueEntry>,
}

/// A held VM's breakpoint: whose it is and when it expires (extensions included).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Hold {
    pub owner: String,
    pub expires_ms: u64,
}

/// A VM (`GET /v1/vms`, and the answers of the VM routes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmRow {
    pub id: u64,
    pub name: String,
    /// Its request; `WARM_POOL_REQUEST` for a warm VM (one of a warm pool's, owned by no
    /// request).
    pub request: u64,
    /// Its request's template (its pool's, for a warm VM).
    pub template: Option<String>,
    /// The host's name, once placed.
    pub host: Option<String>,
    pub state: VmState,
    pub cause: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The name of its object on its host when that is not `name`: a request's VM that took a
    /// warm VM runs in the warm VM's object (`berth-vm7`), which a host's own tools show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_object: Option<String>,
    /// The breakpoint of a held VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// What a provisioning VM waits for now, when the daemon knows (`pulling linux.qcow2
    /// 41%`); given by `GET /v1/vms/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `GET /v1/vms`: a page of VMs by number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmPage {
    pub vms: Vec<VmRow>,
    pub count: u64,
    /// Ask with `after=` this for the next page; `null` when nothing follows.
    pub next_after: Option<u64>,
}

/// One step of a VM's life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HistoryRow {
    pub at_ms: u64,
    pub from: Option<VmState>,
    pub to: VmState,
    pub host: Option<String>,
    pub cause: String,
}

/// `GET /v1/vms/{id}`: a VM and its history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmDetail {
    #[serde(flatten)]
    pub vm: VmRow,
    pub history: Vec<HistoryRow>,
}

/// `GET /v1/vms/{id}/console`: where a VM's graphical console listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConsoleAddress {
    pub vm: u64,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub password: Option<String>,
    /// `host:port`.
    pub address: String,
    /// An `ssh -L` command that brings the console to this machine.
    pub ssh: String,
}

/// One kind of slot on a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SlotRow {
    pub kind: String,
    pub capacity: i64,
    pub used: i64,
}

/// A host (`GET /v1/hosts`, and the answers of the host routes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostRow {
    pub id: u64,
    pub name: String,
    pub driver: String,
    pub state: HostState,
    /// vCPUs in thousandths, overcommit included.
    pub vcpus_milli: u64,
    pub vcpus_used_milli: u64,
    pub memory_mib: u64,
    pub memory_used_mib: u64,
    pub slots: Vec<SlotRow>,
    /// VMs being provisioned on it now.
    pub provisioning: u64,
    pub vms: u64,
    /// `key=value`.
    pub labels: Vec<String>,
    /// When it last answered a probe.
    pub last_probe_ms: Option<u64>,
    pub probe_failures: u64,
    pub provision_failures: u64,
    /// While it drains: what keeps it from maintenance, and when it should get there.
    pub drain: Option<DrainStatus>,
    /// The base images it holds, by name.
    #[serde(default)]
    pub images: Vec<HostImage>,
    /// What its base images take of its image budget, when one is set (`image_budget_mib`)
    /// and its driver counts them.
    #[serde(default)]
    pub image_disk: Option<ImageDisk>,
    /// Pulls of base images to it running now.
    #[serde(default)]
    pub pulls: Vec<ImagePull>,
}

/// A base image a host holds. What the driver does not know (a simulated or Parallels host
/// counts no bytes) is `null`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostImage {
    /// The image's name (`linux`, what templates name as `base_image`).
    pub name: String,
    /// Bytes it takes on the host's disk.
    pub bytes: Option<u64>,
    /// When a VM was last made from it, or else when it arrived (ms since the epoch).
    pub last_used_ms: Option<u64>,
    /// Whether it must stay: a VM's disk or an overlay is made from it, it is being pulled, or
    /// a provisioning is about to use it.
    pub in_use: Option<bool>,
}

/// What a host's base images take of its image budget.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageDisk {
    pub used_bytes: u64,
    pub budget_bytes: u64,
}

/// A pull of a base image to a host, running now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImagePull {
    pub host: String,
    /// The image's name (`linux`).
    pub image: String,
    /// The file being sent (`linux.qcow2`).
    pub file: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Whole percent done.
    pub percent: u64,
}

/// One host holding a base image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageHolder {
    pub host: String,
    /// Bytes it takes there, when the host's driver counts them.
    pub bytes: Option<u64>,
    /// When it was last used there (ms since the epoch), when the driver knows.
    pub last_used_ms: Option<u64>,
    /// Whether it must stay there, when the driver can tell.
    pub in_use: Option<bool>,
    /// The live VMs there made from it, by name.
    pub vms: Vec<String>,
}

/// A base image known to the image store, to a template or to a host
/// (`GET /v1/images`, `GET /v1/images/{name}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageRow {
    /// The image's name (`linux`).
    pub name: String,
    /// Its SHA-256 digest (hex) as the image store gives it; `null` without a store, or when
    /// the store does not hold it (`store_error` says why).
    pub digest: Option<String>,
    /// Its size in the store.
    pub bytes: Option<u64>,
    /// Why the store could not describe it.
    pub store_error: Option<String>,
    /// The templates whose VMs are made from it.
    pub templates: Vec<String>,
    /// The hosts holding it, by name.
    pub hosts: Vec<ImageHolder>,
    /// Its pulls running now.
    pub pulls: Vec<ImagePull>,
}

/// `GET /v1/images`: every known base image, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageList {
    /// The daemon's image store (`[drivers] image_store`), when one is set.
    pub store: Option<String>,
    pub images: Vec<ImageRow>,
}

/// `POST /v1/images/{name}/push`: the pulls started, and the hosts that needed none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PushStarted {
    pub image: String,
    /// Hosts a pull was started on; follow them in `GET /v1/images/{name}`.
    pub started: Vec<String>,
    /// Hosts that hold it already.
    pub held: Vec<String>,
    /// Hosts where a pull of it was running already.
    pub pulling: Vec<String>,
}

/// `POST /v1/images/{name}/evict`: the image is gone from the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageEvicted {
    pub image: String,
    pub host: String,
}

/// What a draining host waits for: its VMs, the held ones with who holds them and until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DrainStatus {
    /// When its last VM should be gone: the latest of its VMs' hold expiries and expected ends
    /// (a VM on it ends at its hold's expiry if held, else when expected). `null` when a VM has
    /// no expected end yet.
    pub eta_ms: Option<u64>,
    /// Its VMs, held ones first, then by expected end.
    pub blockers: Vec<DrainBlocker>,
}

/// One VM a draining host waits for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DrainBlocker {
    pub vm: u64,
    pub name: String,
    pub request: u64,
    pub state: VmState,
    /// Who holds it at a breakpoint, when held.
    pub held_by: Option<String>,
    /// When its breakpoint expires, when held.
    pub held_until_ms: Option<u64>,
    /// When the scheduler expects it to end (`null` before it has an estimate).
    pub expected_end_ms: Option<u64>,
}

impl HostRow {
    /// Its class (see [`crate::host_class`]).
    pub fn class(&self) -> &str {
        crate::host_class(
            &self.name,
            self.labels.iter().filter_map(|l| l.split_once('=')),
        )
    }
}

/// `GET /v1/hosts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostList {
    pub hosts: Vec<HostRow>,
}

/// `DELETE /v1/hosts/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostRemoved {
    pub id: u64,
    pub name: String,
    pub removed: bool,
}

/// One operator action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditRow {
    pub at_ms: u64,
    pub who: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
}

/// `GET /v1/audit`: a page of operator actions, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub audit: Vec<AuditRow>,
    /// Ask with `before=` this for the next page; `null` when nothing follows.
    pub next_before: Option<u64>,
}

/// A VM found on a host that berth keeps instead of destroying.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrphanRow {
    pub vm: u64,
    pub name: String,
    /// The host's name.
    pub host: String,
    pub found_ms: u64,
    pub reason: String,
}

/// `GET /v1/orphans`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrphanList {
    pub orphans: Vec<OrphanRow>,
}

/// `POST /v1/orphans/{vm}/destroy`: the destroy has begun.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrphanDestroying {
    pub vm: u64,
    pub name: String,
    /// Always `destroying`.
    pub state: String,
}

/// One attempt of a hook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HookRun {
    pub id: u64,
    pub hook: String,
    pub event: String,
    /// The event's id (`BATCH.INDEX` for the scheduler's events): a hook runs once per event
    /// id, so its attempts share it. `null` for runs recorded before berth kept ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub vm: Option<u64>,
    pub host: Option<String>,
    pub request: Option<u64>,
    pub attempt: u32,
    pub started_ms: u64,
    pub duration_ms: u64,
    /// `null` when it was killed by a signal, timed out or could not start.
    pub exit_code: Option<i32>,
    /// `ok`, `failed`, `timeout`, `error` (could not start) or `abandoned` (claimed by a daemon
    /// that ended before recording an end: it may or may not have run, and is not run again).
    pub outcome: String,
    pub stderr_tail: String,
}

/// `GET /v1/hooks/runs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HookRuns {
    pub runs: Vec<HookRun>,
}

/// A template VMs are made from, as the daemon runs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TemplateRow {
    pub name: String,
    /// The base image its VMs are cloned from.
    pub base_image: String,
    /// `linux`, `windows` or `macos`.
    pub guest_os: String,
    /// The drivers that can run it; empty: any.
    pub drivers: Vec<String>,
    /// The default shape of one VM.
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The counted host slot each VM takes one of (`macos`), if any.
    pub slot: Option<String>,
    pub expected_provision_ms: u64,
    pub expected_boot_ms: u64,
    pub expected_run_ms: u64,
    /// The host classes (see [`crate::host_class`]) with a host that could run a VM of the
    /// default shape: a driver it allows, a slot of its kind, vCPUs and memory enough when
    /// empty. Whatever their state now.
    pub host_classes: Vec<String>,
}

/// `GET /v1/templates`: every template, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateRow>,
}

/// An account (team or project) under fair share: its weight and the share it is entitled
/// to, against the share of recent usage it has had.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccountRow {
    /// The account; `other` sums the accounts past the list's cap.
    pub account: String,
    /// Its weight (for `other`, the sum of theirs).
    pub weight: u64,
    /// Its weight over the weights of the active accounts, those holding capacity, waiting or
    /// with recent usage (0 to 1): what fair share steers it towards.
    pub share: f64,
    /// Decayed usage (vCPU-seconds, a slot counting as a vCPU; halves every half-life).
    pub usage_vcpu_s: f64,
    /// Its decayed usage over everyone's (0 to 1). Above `share`: it has had more than its
    /// share lately, so its requests come after those of accounts below theirs.
    pub usage_share: f64,
    /// What its VMs hold now, in milli-vCPUs (a slot counts as 1,000).
    pub holding_vcpus_milli: i64,
    /// Its requests waiting in the queue.
    pub waiting_requests: u64,
    /// Where it stands in the order the queue serves accounts (0 first); `null` for `other`.
    pub rank: Option<u32>,
}

/// `GET /v1/accounts`: the configured accounts and the most using others, in the order the
/// queue serves them; the rest summed as `other`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccountList {
    /// Whether fair share is on (`[fair_share]`); without it the list is empty.
    pub fair_share: bool,
    pub accounts: Vec<AccountRow>,
    /// Accounts summed into `other`.
    pub folded: u64,
}

/// A staged change: every request that named it, and where their VMs stand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChangeRow {
    /// The change's id, as its requests named it.
    pub change: String,
    /// The account of its first request.
    pub account: String,
    /// Requests that named it.
    pub n_requests: u64,
    /// Its first request's id (the cursor of `GET /v1/changes`).
    pub first_request: u64,
    /// VMs its requests asked for.
    pub vms_wanted: u64,
    /// VMs queued for a host.
    pub vms_waiting: u64,
    /// VMs placed, provisioning or booting.
    pub vms_starting: u64,
    /// VMs running, or held at a breakpoint.
    pub vms_running: u64,
    /// VMs released or done.
    pub vms_done: u64,
    /// VMs failed or lost.
    pub vms_failed: u64,
    pub vms_cancelled: u64,
    /// When its first request arrived (ms since the epoch).
    pub first_arrival_ms: u64,
    /// When its last request ended; `null` while one is waiting or active.
    pub ended_ms: Option<u64>,
    /// From first arrival to the end, or to the daemon's clock when the answer was made while
    /// the change is still open.
    pub turnaround_ms: u64,
    /// When its waiting request that starts last is expected to start (ms since the epoch;
    /// see `RequestRow::eta_ms`); `null` when none waits or none has an estimate yet, or when
    /// one starts later than the estimate looked (`eta_after_ms`).
    #[serde(default)]
    pub eta_ms: Option<u64>,
    /// One of its waiting requests is expected to start later than this (ms since the epoch).
    #[serde(default)]
    pub eta_after_ms: Option<u64>,
}

/// `GET /v1/changes`: a page of changes, newest first (by first request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChangePage {
    pub changes: Vec<ChangeRow>,
    /// Ask with `before=` this for the next page; `null` when nothing follows.
    pub next_before: Option<u64>,
}

/// `GET /v1/changes/{id}`: a change and its requests, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChangeDetail {
    #[serde(flatten)]
    pub change: ChangeRow,
    pub requests: Vec<RequestRow>,
}
