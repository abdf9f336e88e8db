//! Prometheus metrics (`GET /metrics`, OpenMetrics text through `prometheus-client`): what the
//! control loop sees happen (transitions, waits, provisioning and boot latency), what the
//! scheduler holds when scraped (VMs and hosts by state, capacity, breakpoints), hook runs and
//! API requests. `docs/observability.md` lists every metric; `dashboards/berth.json` uses them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use berth_sched::{Event, HostState, RequestState, Scheduler, VmId, VmState};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Accounts the configuration does not list that get series of their own (the most using);
/// the rest are summed under `account="other"`, as `GET /v1/accounts` sums them.
pub use crate::answers::{ACCOUNT_OTHER, ACCOUNTS_OTHERS_MAX as ACCOUNT_SERIES_OTHERS_MAX};
type GaugeF = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Wait and time-to-running buckets: 1 s to about 9 hours, doubling.
fn wait_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

/// Provisioning and boot buckets: 0.25 s to about 34 minutes, doubling.
/// Buckets for pulls of base images: 10 ms (a small image on the same machine) to about
/// 90 minutes (100 GB over a slow link).
fn pull_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 20))
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.25, 2.0, 14))
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The class of a host for dashboards: its `class` label, else its `pool` label, else its name
/// without a trailing `-NUMBER` (`kvm-x86-0001` → `kvm-x86`, as the simulator names classes).
pub fn host_class(name: &str, host_labels: &[berth_sched::Label]) -> String {
    let labels = host_labels
        .iter()
        .map(|l| (l.key.as_str(), l.value.as_str()));
    berth_api::host_class(name, labels).to_owned()
}

impl crate::control::Observer for std::sync::Arc<Metrics> {
    fn event(&self, s: &Scheduler, event: &Event) {
        self.on_event(s, event);
    }

    fn writable(&self, writable: bool) {
        self.set_writable(writable);
    }

    fn sample(&self, s: &Scheduler, now_ms: u64) {
        Metrics::sample(self, s, now_ms);
    }
}

/// Every metric berth exports.
pub struct Metrics {
    registry: Registry,
    vms: Family<Labels, Gauge>,
    vm_transitions: Family<Labels, Counter>,
    request_transitions: Family<Labels, Counter>,
    queue_length: Gauge,
    queued_vms: Gauge,
    wait: Histogram,
    time_to_running: Histogram,
    provision: Family<Labels, Histogram>,
    boot: Family<Labels, Histogram>,
    host_vcpus: Family<Labels, GaugeF>,
    host_vcpus_allocated: Family<Labels, GaugeF>,
    host_memory: Family<Labels, Gauge>,
    host_memory_allocated: Family<Labels, Gauge>,
    host_slots: Family<Labels, Gauge>,
    host_slots_allocated: Family<Labels, Gauge>,
    hosts: Family<Labels, Gauge>,
    breakpoints: Gauge,
    writable: Gauge,
    leader: Gauge,
    lease_epoch: Gauge,
    lease_age: GaugeF,
    takeovers: Counter,
    breakpoint_age_max: GaugeF,
    breakpoint_age_sum: GaugeF,
    queue_oldest_wait: GaugeF,
    queue_wait_p50: GaugeF,
    queue_wait_p90: GaugeF,
    pub(crate) hook_runs: Family<Labels, Counter>,
    pub(crate) hook_failures: Family<Labels, Counter>,
    pub(crate) hooks_dropped: Counter,
    api_requests: Family<Labels, Counter>,
    image_pulls: Family<Labels, Counter>,
    image_pull_bytes: Family<Labels, Counter>,
    image_pull_seconds: Family<Labels, Histogram>,
    account_usage: Family<Labels, GaugeF>,
    account_weight: Family<Labels, Gauge>,
    account_holding: Family<Labels, GaugeF>,
    account_share: Family<Labels, GaugeF>,
    account_usage_share: Family<Labels, GaugeF>,
    quota_used: Family<Labels, GaugeF>,
    quota_guarantee: Family<Labels, GaugeF>,
    quota_borrowing_limit: Family<Labels, GaugeF>,
    warm_pool_size: Family<Labels, Gauge>,
    warm_pool_vms: Family<Labels, Gauge>,
    warm_handovers: Family<Labels, Counter>,
    /// When each live VM entered its current state, for provisioning and boot latency and
    /// breakpoint age. Lost at a restart: VMs in flight then are not timed.
    since: Mutex<BTreeMap<VmId, u64>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let m = Metrics {
            vms: Family::default(),
            vm_transitions: Family::default(),
            request_transitions: Family::default(),
            queue_length: Gauge::default(),
            queued_vms: Gauge::default(),
            wait: wait_histogram(),
            time_to_running: wait_histogram(),
            provision: Family::new_with_constructor(latency_histogram),
            boot: Family::new_with_constructor(latency_histogram),
            host_vcpus: Family::default(),
            host_vcpus_allocated: Family::default(),
            host_memory: Family::default(),
            host_memory_allocated: Family::default(),
            host_slots: Family::default(),
            host_slots_allocated: Family::default(),
            hosts: Family::default(),
            breakpoints: Gauge::default(),
            writable: Gauge::default(),
            leader: Gauge::default(),
            lease_epoch: Gauge::default(),
            lease_age: GaugeF::default(),
            takeovers: Counter::default(),
            breakpoint_age_max: GaugeF::default(),
            breakpoint_age_sum: GaugeF::default(),
            queue_oldest_wait: GaugeF::default(),
            queue_wait_p50: GaugeF::default(),
            queue_wait_p90: GaugeF::default(),
            hook_runs: Family::default(),
            hook_failures: Family::default(),
            hooks_dropped: Counter::default(),
            api_requests: Family::default(),
            image_pulls: Family::default(),
            image_pull_bytes: Family::default(),
            image_pull_seconds: Family::new_with_constructor(pull_histogram),
            account_usage: Family::default(),
            account_weight: Family::default(),
            account_holding: Family::default(),
            account_share: Family::default(),
            account_usage_share: Family::default(),
            quota_used: Family::default(),
            quota_guarantee: Family::default(),
            quota_borrowing_limit: Family::default(),
            warm_pool_size: Family::default(),
            warm_pool_vms: Family::default(),
            warm_handovers: Family::default(),
            since: Mutex::new(BTreeMap::new()),
            registry: Registry::default(),
        };
        r.register("berth_vms", "Live VMs by state", m.vms.clone());
        r.register(
            "berth_vm_transitions",
            "VM state changes by the state entered",
            m.vm_transitions.clone(),
        );
        r.register(
            "berth_request_transitions",
            "Request state changes by the state entered",
            m.request_transitions.clone(),
        );
        r.register(
            "berth_queue_length",
            "Requests waiting to be placed",
            m.queue_length.clone(),
        );
        r.register(
            "berth_queued_vms",
            "VMs waiting to be placed",
            m.queued_vms.clone(),
        );
        r.register(
            "berth_request_wait_seconds",
            "Time from a request's submission until all its VMs were placed",
            m.wait.clone(),
        );
        r.register(
            "berth_time_to_running_seconds",
            "Time from a request's submission until one of its VMs was running",
            m.time_to_running.clone(),
        );
        r.register(
            "berth_provision_seconds",
            "Provisioning latency by host and template",
            m.provision.clone(),
        );
        r.register(
            "berth_boot_seconds",
            "Boot latency by host and template",
            m.boot.clone(),
        );
        r.register(
            "berth_host_vcpus",
            "vCPUs a host offers, overcommit included",
            m.host_vcpus.clone(),
        );
        r.register(
            "berth_host_vcpus_allocated",
            "vCPUs allocated to VMs on a host",
            m.host_vcpus_allocated.clone(),
        );
        r.register(
            "berth_host_memory_bytes",
            "Memory a host offers, overcommit included",
            m.host_memory.clone(),
        );
        r.register(
            "berth_host_memory_allocated_bytes",
            "Memory allocated to VMs on a host",
            m.host_memory_allocated.clone(),
        );
        r.register(
            "berth_host_slots",
            "Counted slots a host offers (such as macos)",
            m.host_slots.clone(),
        );
        r.register(
            "berth_host_slots_allocated",
            "Counted slots in use on a host",
            m.host_slots_allocated.clone(),
        );
        r.register("berth_hosts", "Hosts by state", m.hosts.clone());
        r.register(
            "berth_breakpoints_held",
            "VMs held at a breakpoint",
            m.breakpoints.clone(),
        );
        r.register(
            "berth_breakpoint_age_max_seconds",
            "How long the oldest breakpoint has been held",
            m.breakpoint_age_max.clone(),
        );
        r.register(
            "berth_queue_oldest_wait_seconds",
            "How long the request waiting longest has waited so far (0 with an empty queue): \
             a stuck queue shows here before any request is placed",
            m.queue_oldest_wait.clone(),
        );
        r.register(
            "berth_queue_wait_p50_seconds",
            "The median wait so far of the requests still waiting",
            m.queue_wait_p50.clone(),
        );
        r.register(
            "berth_queue_wait_p90_seconds",
            "The 90th percentile of the waits so far of the requests still waiting",
            m.queue_wait_p90.clone(),
        );
        r.register(
            "berth_breakpoint_age_sum_seconds",
            "Summed age of the breakpoints held (divide by berth_breakpoints_held for the mean)",
            m.breakpoint_age_sum.clone(),
        );
        r.register(
            "berth_hook_runs",
            "Hook runs (each attempt) by hook and outcome",
            m.hook_runs.clone(),
        );
        r.register(
            "berth_hook_failures",
            "Hook runs that failed, timed out or could not start, by hook",
            m.hook_failures.clone(),
        );
        r.register(
            "berth_hook_events_dropped",
            "Events not handed to hooks because the hook outbox was full",
            m.hooks_dropped.clone(),
        );
        r.register(
            "berth_database_writable",
            "1 while the daemon takes writes; 0 while its database's disk is short of room or failing",
            m.writable.clone(),
        );
        m.writable.set(1);
        r.register(
            "berth_leader",
            "1 while this daemon leads (always on SQLite); 0 while it follows",
            m.leader.clone(),
        );
        r.register(
            "berth_lease_epoch",
            "The leader lease's epoch as this daemon last saw it (0 on SQLite)",
            m.lease_epoch.clone(),
        );
        r.register(
            "berth_lease_age_seconds",
            "Seconds since this daemon last renewed its lease (0 unless it leads on PostgreSQL)",
            m.lease_age.clone(),
        );
        r.register(
            "berth_lease_takeovers",
            "Times this daemon took the leader lease",
            m.takeovers.clone(),
        );
        r.register(
            "berth_api_requests",
            "HTTP API requests by route, method and status",
            m.api_requests.clone(),
        );
        r.register(
            "berth_account_usage_vcpu_seconds",
            "Under fair share, an account's decayed usage (vCPU-seconds, a slot counting as a \
             vCPU): the configured accounts, the most using others up to a cap, the rest summed \
             as account=\"other\"",
            m.account_usage.clone(),
        );
        r.register(
            "berth_account_weight",
            "Under fair share, an account's weight (account=\"other\": the sum of the weights \
             it folds in)",
            m.account_weight.clone(),
        );
        r.register(
            "berth_account_holding_vcpus",
            "Under fair share, the vCPUs an account's VMs hold now (a slot counting as a vCPU; \
             account=\"other\": the sum of those it folds in)",
            m.account_holding.clone(),
        );
        r.register(
            "berth_account_share",
            "Under fair share, the share an account is entitled to: its weight over the weights \
             of the accounts holding capacity, waiting or with recent usage (0 to 1)",
            m.account_share.clone(),
        );
        r.register(
            "berth_account_usage_share",
            "Under fair share, an account's decayed usage over everyone's (0 to 1): above its \
             berth_account_share, its requests come after those of accounts below theirs",
            m.account_usage_share.clone(),
        );
        r.register(
            "berth_quota_used",
            "Under quotas, what an account's VMs hold of a host class, per resource (vcpus, \
             memory_mib, slots): the accounts quotas name, the most holding others up to a cap, \
             the rest summed as account=\"other\"",
            m.quota_used.clone(),
        );
        r.register(
            "berth_quota_guarantee",
            "Under quotas, what an account is guaranteed of a host class, per bounded resource",
            m.quota_guarantee.clone(),
        );
        r.register(
            "berth_quota_borrowing_limit",
            "Under quotas, how far past its guarantee an account may borrow on a host class, per \
             resource whose borrowing is bounded",
            m.quota_borrowing_limit.clone(),
        );
        r.register(
            "berth_image_pulls",
            "Pulls of base images from the image store by host and outcome (ok, failed)",
            m.image_pulls.clone(),
        );
        r.register(
            "berth_image_pull_bytes",
            "Bytes of base images sent to hosts by pulls, failed ones included up to where they \
             stopped",
            m.image_pull_bytes.clone(),
        );
        r.register(
            "berth_image_pull_seconds",
            "How long pulls of base images took, by host and outcome",
            m.image_pull_seconds.clone(),
        );
        r.register(
            "berth_warm_pool_size",
            "A warm pool's configured size (its [[warm]] count), by template, host class and \
             shape",
            m.warm_pool_size.clone(),
        );
        r.register(
            "berth_warm_pool_vms",
            "A warm pool's VMs by template, host class, shape and state: live (placed, \
             provisioning, booting or idle) and, of those, idle (booted, for a request to take)",
            m.warm_pool_vms.clone(),
        );
        r.register(
            "berth_warm_handovers",
            "Requests' VMs that took a warm VM of the pool (pool hits), by template, host class \
             and shape",
            m.warm_handovers.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Counts one pull of a base image that ended, as a driver reported it.
    pub fn image_pull(&self, pull: &berth_drivers::images::PullOutcome) {
        let outcome = if pull.error.is_none() { "ok" } else { "failed" };
        let by = labels(&[("host", &pull.host), ("outcome", outcome)]);
        self.image_pulls.get_or_create(&by).inc();
        self.image_pull_seconds
            .get_or_create(&by)
            .observe(pull.seconds);
        self.image_pull_bytes
            .get_or_create(&labels(&[("host", &pull.host)]))
            .inc_by(pull.bytes);
    }

    /// Whether the daemon takes writes (see `disk`).
    pub fn set_writable(&self, writable: bool) {
        self.writable.set(i64::from(writable));
    }

    /// The leader lease's figures, set when `/metrics` is read.
    pub fn lease(&self, f: &crate::lease::LeaseFigures) {
        self.leader
            .set(i64::from(f.role != crate::lease::Role::Follower));
        self.lease_epoch.set(f.epoch as i64);
        self.lease_age.set(f.age_s.unwrap_or(0.0));
        let counted = self.takeovers.get();
        if f.takeovers > counted {
            self.takeovers.inc_by(f.takeovers - counted);
        }
    }

    /// Counts one answered API request.
    pub fn api_request(&self, route: &str, method: &str, status: u16) {
        self.api_requests
            .get_or_create(&labels(&[
                ("route", route),
                ("method", method),
                ("status", &status.to_string()),
            ]))
            .inc();
    }

    /// Takes in one of the scheduler's events, right after the batch holding it committed.
    pub(crate) fn on_event(&self, s: &Scheduler, event: &Event) {
        match event {
            Event::Vm {
                at_ms,
                vm,
                request,
                host,
                from,
                to,
                ..
            } => {
                self.vm_transitions
                    .get_or_create(&labels(&[("state", to.name())]))
                    .inc();
                let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
                let entered = since.remove(vm);
                let timed = |family: &Family<Labels, Histogram>| {
                    let (Some(t0), Some(h)) = (entered, host.and_then(|h| s.host(h))) else {
                        return;
                    };
                    let template = s
                        .request(*request)
                        .map_or_else(String::new, |r| r.spec.template.clone());
                    family
                        .get_or_create(&labels(&[("host", h.name), ("template", &template)]))
                        .observe(at_ms.saturating_sub(t0) as f64 / 1000.0);
                };
                match (from, to) {
                    (Some(VmState::Provisioning), VmState::Booting) => timed(&self.provision),
                    (Some(VmState::Booting), VmState::Running) => timed(&self.boot),
                    _ => {}
                }
                if *to == VmState::Running
                    && let Some(r) = s.request(*request)
                {
                    self.time_to_running
                        .observe(at_ms.saturating_sub(r.submitted_ms) as f64 / 1000.0);
                }
                if !to.is_terminal() {
                    since.insert(*vm, *at_ms);
                }
            }
            Event::Request {
                at_ms,
                request,
                from,
                to,
                ..
            } => {
                self.request_transitions
                    .get_or_create(&labels(&[("state", to.name())]))
                    .inc();
                if *to == RequestState::Active
                    && *from == Some(RequestState::Waiting)
                    && let Some(r) = s.request(*request)
                {
                    self.wait
                        .observe(at_ms.saturating_sub(r.submitted_ms) as f64 / 1000.0);
                }
            }
            Event::Host { .. } => {}
        }
    }

    /// The waits so far of the requests still waiting: the oldest, and quantiles.
    fn sample_queue_waits(&self, s: &Scheduler, now_ms: u64) {
        let mut waits: Vec<u64> = s
            .queue()
            .into_iter()
            .filter_map(|id| s.request(id))
            .map(|r| now_ms.saturating_sub(r.submitted_ms))
            .collect();
        waits.sort_unstable();
        let quantile = |q: f64| -> f64 {
            match waits.len() {
                0 => 0.0,
                n => {
                    let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
                    waits[i] as f64 / 1000.0
                }
            }
        };
        self.queue_oldest_wait.set(quantile(1.0));
        self.queue_wait_p50.set(quantile(0.5));
        self.queue_wait_p90.set(quantile(0.9));
    }

    /// Sets the gauges from the scheduler's state (called by the control loop at a scrape).
    pub(crate) fn sample(&self, s: &Scheduler, now_ms: u64) {
        let mut by_state: BTreeMap<&str, i64> = BTreeMap::new();
        let (mut held, mut age_max, mut age_sum) = (0i64, 0f64, 0f64);
        let since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        let mut queued = 0i64;
        for v in s.vms() {
            *by_state.entry(v.state.name()).or_default() += 1;
            if v.state == VmState::Queued {
                queued += 1;
            }
            if v.state == VmState::Held {
                held += 1;
                // After a restart the entry time is unknown: take it from the expiry and the
                // breakpoint's time-to-live (an extension makes it look younger).
                let entered = since.get(&v.id).copied().or_else(|| {
                    let ttl = s.request(v.request)?.spec.hold_on_failure.as_ref()?.ttl_ms;
                    Some(v.hold_until_ms?.saturating_sub(ttl))
                });
                let age = now_ms.saturating_sub(entered.unwrap_or(now_ms)) as f64 / 1000.0;
                age_max = age_max.max(age);
                age_sum += age;
            }
        }
        drop(since);
        self.vms.clear();
        for state in [
            VmState::Queued,
            VmState::Placed,
            VmState::Provisioning,
            VmState::Booting,
            VmState::Running,
            VmState::Held,
            VmState::Releasing,
        ] {
            let n = by_state.get(state.name()).copied().unwrap_or(0);
            self.vms
                .get_or_create(&labels(&[("state", state.name())]))
                .set(n);
        }
        self.queue_length.set(s.queue_len() as i64);
        self.queued_vms.set(queued);
        self.breakpoints.set(held);
        self.breakpoint_age_max.set(age_max);
        self.breakpoint_age_sum.set(age_sum);
        self.sample_queue_waits(s, now_ms);

        let mut hosts: BTreeMap<&str, i64> = HostState::ALL.iter().map(|h| (h.name(), 0)).collect();
        for family in [&self.host_memory, &self.host_memory_allocated] {
            family.clear();
        }
        self.host_vcpus.clear();
        self.host_vcpus_allocated.clear();
        self.host_slots.clear();
        self.host_slots_allocated.clear();
        for h in s.hosts() {
            *hosts.entry(h.state.name()).or_default() += 1;
            let class = host_class(h.name, h.labels);
            let l = labels(&[("host", h.name), ("class", &class)]);
            self.host_vcpus
                .get_or_create(&l)
                .set(h.cpu_milli as f64 / 1000.0);
            self.host_vcpus_allocated
                .get_or_create(&l)
                .set(h.cpu_used_milli as f64 / 1000.0);
            self.host_memory
                .get_or_create(&l)
                .set(h.memory_mib.saturating_mul(1 << 20));
            self.host_memory_allocated
                .get_or_create(&l)
                .set(h.memory_used_mib.saturating_mul(1 << 20));
            for &(kind, capacity, used) in &h.slots {
                let l = labels(&[("host", h.name), ("class", &class), ("kind", kind)]);
                self.host_slots.get_or_create(&l).set(capacity);
                self.host_slots_allocated.get_or_create(&l).set(used);
            }
        }
        self.hosts.clear();
        for (state, n) in hosts {
            self.hosts
                .get_or_create(&labels(&[("state", state)]))
                .set(n);
        }
        self.sample_accounts(s, now_ms);
        self.sample_quotas(s);
        self.sample_warm(s);
    }

    /// Per warm pool: its size, its live and idle VMs, and its handovers so far (the
    /// scheduler's count, which replay restores: the counter catches up with it).
    fn sample_warm(&self, s: &Scheduler) {
        let config = &s.config().warm;
        for (pool, view) in s.warm_pools().iter().enumerate() {
            let shape = config.get(pool).and_then(|w| w.shape).map_or_else(
                || "default".to_owned(),
                |sh| format!("{}x{}", sh.vcpus, sh.memory_mib),
            );
            let by = [
                ("template", view.template.as_str()),
                ("class", view.class.as_str()),
                ("shape", shape.as_str()),
            ];
            self.warm_pool_size
                .get_or_create(&labels(&by))
                .set(i64::from(view.count));
            for (state, n) in [("live", view.live), ("idle", view.idle)] {
                let mut l = by.to_vec();
                l.push(("state", state));
                self.warm_pool_vms
                    .get_or_create(&labels(&l))
                    .set(i64::from(n));
            }
            let hits = self.warm_handovers.get_or_create(&labels(&by));
            hits.inc_by(view.handovers.saturating_sub(hits.get()));
        }
    }

    /// Per account, class and resource, what the account holds, its guarantee and its
    /// borrowing limit (a bound left out has no series). The accounts the quotas name get their
    /// own series; of the others (covered by a quota for every account, and named by clients
    /// as they like) the [`ACCOUNT_SERIES_OTHERS_MAX`] holding most, the rest summed per class
    /// under `account="other"`.
    fn sample_quotas(&self, s: &Scheduler) {
        self.quota_used.clear();
        self.quota_guarantee.clear();
        self.quota_borrowing_limit.clear();
        let named: std::collections::BTreeSet<&str> = s
            .config()
            .quotas
            .iter()
            .map(|q| q.account.as_str())
            .collect();
        let quotas = s.quotas();
        let held = |q: &berth_sched::QuotaView| q.resources.iter().map(|r| r.used).sum::<f64>();
        let mut others: BTreeMap<&str, f64> = BTreeMap::new();
        for q in quotas
            .iter()
            .filter(|q| !named.contains(q.account.as_str()))
        {
            *others.entry(q.account.as_str()).or_default() += held(q);
        }
        let mut ranked: Vec<(&str, f64)> = others.into_iter().collect();
        // The most holding first, then by name: a fixed choice for a given state.
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let shown: std::collections::BTreeSet<&str> = ranked
            .iter()
            .take(ACCOUNT_SERIES_OTHERS_MAX)
            .map(|a| a.0)
            .collect();
        // (account, class, resource) -> (used, guarantee, borrowing limit); sums for `other`.
        type Sums = (f64, Option<f64>, Option<f64>);
        let mut series: BTreeMap<(&str, &str, &str), Sums> = BTreeMap::new();
        let add = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(x), Some(y)) => Some(x + y),
            _ => None,
        };
        for q in &quotas {
            let account =
                if named.contains(q.account.as_str()) || shown.contains(q.account.as_str()) {
                    q.account.as_str()
                } else {
                    ACCOUNT_OTHER
                };
            for r in &q.resources {
                match series.entry((account, q.class.as_str(), r.resource)) {
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert((r.used, r.guarantee, r.borrowing_limit));
                    }
                    std::collections::btree_map::Entry::Occupied(mut e) => {
                        let (u, g, b) = e.get_mut();
                        *u += r.used;
                        *g = add(*g, r.guarantee);
                        *b = add(*b, r.borrowing_limit);
                    }
                }
            }
        }
        for ((account, class, resource), (used, guarantee, limit)) in series {
            let l = labels(&[
                ("account", account),
                ("class", class),
                ("resource", resource),
            ]);
            self.quota_used.get_or_create(&l).set(used);
            if let Some(g) = guarantee {
                self.quota_guarantee.get_or_create(&l).set(g);
            }
            if let Some(b) = limit {
                self.quota_borrowing_limit.get_or_create(&l).set(b);
            }
        }
    }

    /// Per account, decayed usage, weight and holding: the accounts `GET /v1/accounts` names
    /// (see [`answers::accounts`]), so that no client can grow the number of series.
    fn sample_accounts(&self, s: &Scheduler, now_ms: u64) {
        self.account_usage.clear();
        self.account_weight.clear();
        self.account_holding.clear();
        self.account_share.clear();
        self.account_usage_share.clear();
        for a in crate::answers::accounts(s, now_ms).accounts {
            let l = labels(&[("account", &a.account)]);
            self.account_usage.get_or_create(&l).set(a.usage_vcpu_s);
            self.account_weight
                .get_or_create(&l)
                .set(i64::try_from(a.weight).unwrap_or(i64::MAX));
            self.account_holding
                .get_or_create(&l)
                .set(a.holding_vcpus_milli as f64 / 1000.0);
            self.account_share.get_or_create(&l).set(a.share);
            self.account_usage_share
                .get_or_create(&l)
                .set(a.usage_share);
        }
    }

    /// The registry as OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The registry in Prometheus' classic text format (0.0.4), for clients that do not ask
    /// for OpenMetrics (`curl`, `promtool check metrics`).
    pub fn encode_classic(&self) -> String {
        to_classic(&self.encode())
    }
}

/// Rewrites OpenMetrics text as Prometheus' classic text format: a counter's metadata names
/// the `_total` series its samples use, and `# UNIT` and `# EOF` go.
pub fn to_classic(open_metrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(&format!("{prefix}{name}_total {tail}\n"));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_classes_come_from_labels_or_names() {
        let pool = [berth_sched::Label::new("pool", "gpu")];
        assert_eq!(host_class("kvm-x86-0001", &[]), "kvm-x86");
        assert_eq!(host_class("sim-mac-3", &[]), "sim-mac");
        assert_eq!(host_class("builder", &[]), "builder");
        assert_eq!(host_class("kvm-x86-0001", &pool), "gpu");
    }

    /// Per account, class and resource: what it holds, its guarantee and its borrowing limit;
    /// accounts a quota for every account covers are capped like fair share's.
    #[test]
    fn quota_series_give_use_guarantee_and_borrowing_limit() {
        use berth_sched::{Config, Input, ProbeReport, QUOTA_EVERY_ACCOUNT, Quota, QuotaAmounts};
        let host = crate::config::default_hosts()
            .into_iter()
            .find(|h| h.name == "sim-large-1")
            .unwrap();
        let mut spec = host.to_spec().unwrap();
        spec.id = berth_sched::HostId(1);
        let class = host_class(&spec.name, &spec.labels);
        let template = crate::config::default_templates()[0].to_template().unwrap();
        let quota = |account: &str, vcpus: u64, borrow: Option<u64>| Quota {
            account: account.into(),
            class: class.clone(),
            guarantee: QuotaAmounts {
                vcpus: Some(vcpus),
                memory_mib: Some(65_536),
                slots: None,
            },
            borrowing_limit: QuotaAmounts {
                vcpus: borrow,
                ..QuotaAmounts::default()
            },
        };
        let mut s = Scheduler::new(Config {
            quotas: vec![
                quota("qt-base", 8, Some(4)),
                quota(QUOTA_EVERY_ACCOUNT, 2, Some(0)),
            ],
            provisioning_per_host_max: 100,
            ..Config::default()
        });
        s.handle(0, Input::SetTemplate(template)).unwrap();
        s.handle(0, Input::AddHost(spec)).unwrap();
        s.handle(
            0,
            Input::Probe {
                host: berth_sched::HostId(1),
                result: Ok(ProbeReport {
                    vcpus: 64,
                    memory_mib: 262_144,
                    images: vec!["linux".into()],
                }),
            },
        )
        .unwrap();
        let invented = ACCOUNT_SERIES_OTHERS_MAX + 5;
        let accounts: Vec<String> = ["qt-base", "qt-base"]
            .into_iter()
            .map(str::to_owned)
            .chain((0..invented).map(|i| format!("made-up-{i:02}")))
            .collect();
        for (i, account) in accounts.iter().enumerate() {
            let mut r = berth_sched::RequestSpec::new(i as u64 + 1, "linux", 1);
            r.account = Some(account.clone());
            s.handle(0, Input::Submit(r)).unwrap();
        }
        while s.poll_action().is_some() {}
        while s.poll_event().is_some() {}
        let m = Metrics::new();
        m.sample(&s, 0);
        let text = m.encode();
        let value = |name: &str, account: &str, resource: &str| -> Option<f64> {
            let prefix = format!(
                "{name}{{account=\"{account}\",class=\"{class}\",resource=\"{resource}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .map(|v| v.parse().unwrap())
        };
        // Two 2-vCPU VMs of qt-base, within its guarantee of 8 and a borrowing limit of 4.
        assert_eq!(
            value("berth_quota_used", "qt-base", "vcpus"),
            Some(4.0),
            "{text}"
        );
        assert_eq!(
            value("berth_quota_guarantee", "qt-base", "vcpus"),
            Some(8.0)
        );
        assert_eq!(
            value("berth_quota_guarantee", "qt-base", "memory_mib"),
            Some(65_536.0)
        );
        assert_eq!(
            value("berth_quota_borrowing_limit", "qt-base", "vcpus"),
            Some(4.0)
        );
        // No bound, no series.
        assert_eq!(value("berth_quota_guarantee", "qt-base", "slots"), None);
        assert_eq!(
            value("berth_quota_borrowing_limit", "qt-base", "memory_mib"),
            None
        );
        // The others: capped, the rest summed.
        assert_eq!(value("berth_quota_used", "made-up-00", "vcpus"), Some(2.0));
        assert!(!text.contains("made-up-24"), "{text}");
        assert_eq!(value("berth_quota_used", "other", "vcpus"), Some(10.0));
        assert_eq!(value("berth_quota_guarantee", "other", "vcpus"), Some(10.0));
        // Without quotas, no quota series at all.
        let plain = Metrics::new();
        plain.sample(&Scheduler::new(Config::default()), 0);
        assert!(!plain.encode().contains("berth_quota_used{"));
    }

    /// Clients that invent accounts cannot grow the series: the configured accounts and the
    /// most using others up to the cap get their own, the rest are summed as `other`.
    #[test]
    fn account_series_are_capped_and_the_rest_fold_into_other() {
        use berth_sched::{Account, Config, FairShare, Input, ProbeReport};
        let host = crate::config::default_hosts()
            .into_iter()
            .find(|h| h.name == "sim-large-1")
            .unwrap();
        let mut spec = host.to_spec().unwrap();
        spec.id = berth_sched::HostId(1);
        let template = crate::config::default_templates()[0].to_template().unwrap();
        let mut s = Scheduler::new(Config {
            fair_share: Some(FairShare {
                half_life_ms: 3_600_000,
                default_weight: 2,
                accounts: vec![
                    Account {
                        name: "qt-base".into(),
                        weight: 5,
                    },
                    Account {
                        name: "qt-idle".into(),
                        weight: 3,
                    },
                ],
                age_limit_ms: None,
            }),
            // Every VM starts at once, so every account holds the same.
            provisioning_per_host_max: 100,
            ..Config::default()
        });
        s.handle(0, Input::SetTemplate(template)).unwrap();
        s.handle(0, Input::AddHost(spec)).unwrap();
        s.handle(
            0,
            Input::Probe {
                host: berth_sched::HostId(1),
                result: Ok(ProbeReport {
                    vcpus: 64,
                    memory_mib: 262_144,
                    images: vec!["linux".into()],
                }),
            },
        )
        .unwrap();
        let invented = ACCOUNT_SERIES_OTHERS_MAX + 10;
        let accounts: Vec<String> = std::iter::once("qt-base".to_owned())
            .chain((0..invented).map(|i| format!("made-up-{i:02}")))
            .collect();
        for (i, account) in accounts.iter().enumerate() {
            let mut r = berth_sched::RequestSpec::new(i as u64 + 1, "linux", 1);
            r.account = Some(account.clone());
            s.handle(0, Input::Submit(r)).unwrap();
        }
        while s.poll_action().is_some() {}
        while s.poll_event().is_some() {}
        s.handle(60_000, Input::Tick).unwrap();
        let m = Metrics::new();
        m.sample(&s, 60_000);
        let text = m.encode();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("berth_account_weight{"))
            .collect();
        // The two configured, the capped others, and `other`.
        assert_eq!(series.len(), 2 + ACCOUNT_SERIES_OTHERS_MAX + 1, "{text}");
        assert!(
            text.contains("berth_account_weight{account=\"qt-base\"} 5"),
            "{text}"
        );
        // Configured but idle, it is shown all the same.
        assert!(
            text.contains("berth_account_weight{account=\"qt-idle\"} 3"),
            "{text}"
        );
        // The ten folded accounts' default weights add up.
        assert!(
            text.contains("berth_account_weight{account=\"other\"} 20"),
            "{text}"
        );
        let usage = |account: &str| -> f64 {
            let prefix = format!("berth_account_usage_vcpu_seconds{{account=\"{account}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no usage for {account}: {text}"))
                .parse()
                .unwrap()
        };
        // A running 2-vCPU VM for about a minute: about 120 vCPU-seconds, a little decayed.
        let base = usage("qt-base");
        assert!(base > 100.0 && base <= 120.0, "{base}");
        assert_eq!(usage("qt-idle"), 0.0);
        // Equal usage: the first by name get series, the last ten are summed.
        assert_eq!(usage("made-up-19"), base);
        assert!(!text.contains("made-up-20"), "{text}");
        assert!((usage("other") - 10.0 * base).abs() < 1e-6, "{text}");
        // Without fair share, no account series at all.
        let plain = Metrics::new();
        plain.sample(&Scheduler::new(Config::default()), 0);
        assert!(!plain.encode().contains("berth_account_weight{"));
    }

    #[test]
    fn pulls_count_by_host_and_outcome_with_bytes_and_seconds() {
        let m = Metrics::new();
        let pull = |host: &str, bytes: u64, seconds: f64, error: Option<&str>| {
            berth_drivers::images::PullOutcome {
                host: host.into(),
                image: "linux".into(),
                bytes,
                seconds,
                error: error.map(str::to_owned),
            }
        };
        m.image_pull(&pull("h1", 1000, 0.5, None));
        m.image_pull(&pull("h1", 500, 2.0, None));
        m.image_pull(&pull("h1", 100, 0.02, Some("digest mismatch")));
        m.image_pull(&pull("h2", 7, 30.0, None));
        let text = m.encode();
        for line in [
            "berth_image_pulls_total{host=\"h1\",outcome=\"ok\"} 2",
            "berth_image_pulls_total{host=\"h1\",outcome=\"failed\"} 1",
            "berth_image_pulls_total{host=\"h2\",outcome=\"ok\"} 1",
            "berth_image_pull_bytes_total{host=\"h1\"} 1600",
            "berth_image_pull_bytes_total{host=\"h2\"} 7",
            "berth_image_pull_seconds_sum{host=\"h1\",outcome=\"ok\"} 2.5",
            "berth_image_pull_seconds_count{host=\"h1\",outcome=\"ok\"} 2",
            "berth_image_pull_seconds_count{host=\"h1\",outcome=\"failed\"} 1",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
    }

    #[test]
    fn classic_text_names_counters_by_their_total_series() {
        let m = Metrics::new();
        m.api_request("/v1/vms/{id}", "GET", 404);
        let classic = m.encode_classic();
        assert!(
            classic.contains("# TYPE berth_api_requests_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP berth_api_requests_total "),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"), "{classic}");
        assert!(m.encode().ends_with("# EOF\n"));
    }
}
