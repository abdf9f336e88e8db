//! The daemon's TOML configuration, and the embedded default: a simulated fleet of 16 hosts
//! with the templates `linux`, `windows` and `macos`. Unknown keys are errors that name the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use berth_sched::{
    Account, Config as SchedulerConfig, FairShare, ImageClass, ImageMode, Images, Policy, Quota,
    QuotaAmounts, ScanOrder, Shape, Warm, Weights,
};
use serde::{Deserialize, Serialize};

use crate::DaemonError;
use crate::wire::{WireHost, WireTemplate};

/// Where the daemon listens when nothing says otherwise: loopback only, port 7878.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";

/// The data directory when nothing says otherwise: `$XDG_DATA_HOME/berth`, else
/// `$HOME/.local/share/berth`, else `./berth-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(x).join("berth");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(h).join(".local/share/berth");
    }
    PathBuf::from("berth-data")
}

/// The whole configuration file. Every section is optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// Where the journal and state tables live: a `postgres://` URL, or left out for SQLite in
    /// the data directory. TLS follows the URL's `sslmode` as libpq reads it: `disable`,
    /// `prefer` (the default), `require`, `verify-ca` or `verify-full`, checked against
    /// `sslrootcert=FILE` (or the system's roots); see `pg_tls`.
    pub store: Option<String>,
    #[serde(default)]
    pub scheduler: SchedSection,
    /// Fair share between accounts; off when the section is left out.
    pub fair_share: Option<FairShareSection>,
    /// Quotas per account and host class (`[[quotas]]`); none when left out.
    #[serde(default)]
    pub quotas: Vec<QuotaConfig>,
    /// Base images in the scheduler (sizes, bandwidths, budgets); left out, placement does not
    /// price pulls and drivers pull on create as they need.
    pub images: Option<ImagesSection>,
    /// Warm pools (`[[warm]]`): VMs kept booted and idle per template and host class; none
    /// when left out.
    #[serde(default)]
    pub warm: Vec<WarmConfig>,
    #[serde(default)]
    pub probe: ProbeSection,
    #[serde(default)]
    pub sim: SimSection,
    #[serde(default)]
    pub workers: WorkerSection,
    #[serde(default)]
    pub recovery: RecoverySection,
    #[serde(default)]
    pub ha: HaSection,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub disk: DiskSection,
    #[serde(default)]
    pub drivers: DriversSection,
    #[serde(default)]
    pub pulses: PulsesSection,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Commands run on events (see `hooks`).
    #[serde(default)]
    pub hooks: Vec<HookConfig>,
    /// `None`: the embedded templates.
    pub templates: Option<Vec<WireTemplate>>,
    /// `None`: the embedded simulated fleet.
    pub hosts: Option<Vec<WireHost>>,
}

/// Scheduling policy and limits (see `berth_sched::Config`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedSection {
    pub policy: String,
    pub scan: String,
    pub weight_pack: u32,
    pub weight_spread: u32,
    pub weight_locality: u32,
    pub candidates_max: u32,
    pub provisioning_per_host_max: u32,
    pub probe_failures_max: u32,
    pub provision_failures_max: u32,
    pub vm_retries_max: u32,
    pub aging_step_ms: u64,
}

impl Default for SchedSection {
    fn default() -> SchedSection {
        let c = SchedulerConfig::default();
        SchedSection {
            policy: c.policy.name().to_owned(),
            scan: match c.scan {
                ScanOrder::Lowest => "lowest",
                ScanOrder::Rotate => "rotate",
            }
            .to_owned(),
            weight_pack: c.weights.pack,
            weight_spread: c.weights.spread,
            weight_locality: c.weights.locality,
            candidates_max: c.candidates_max,
            provisioning_per_host_max: c.provisioning_per_host_max,
            probe_failures_max: c.probe_failures_max,
            provision_failures_max: c.provision_failures_max,
            vm_retries_max: c.vm_retries_max,
            aging_step_ms: c.aging_step_ms,
        }
    }
}

impl SchedSection {
    /// The scheduler's configuration, without templates (those are journaled inputs).
    pub fn to_config(&self) -> Result<SchedulerConfig, DaemonError> {
        let policy = Policy::parse(&self.policy).ok_or_else(|| DaemonError::Config {
            key: "scheduler.policy".into(),
            message: format!("expected fcfs, easy or greedy, got `{}`", self.policy),
        })?;
        let scan = match self.scan.as_str() {
            "lowest" => ScanOrder::Lowest,
            "rotate" => ScanOrder::Rotate,
            other => {
                return Err(DaemonError::Config {
                    key: "scheduler.scan".into(),
                    message: format!("expected lowest or rotate, got `{other}`"),
                });
            }
        };
        Ok(SchedulerConfig {
            policy,
            weights: Weights {
                pack: self.weight_pack,
                spread: self.weight_spread,
                locality: self.weight_locality,
            },
            scan,
            candidates_max: self.candidates_max,
            provisioning_per_host_max: self.provisioning_per_host_max,
            probe_failures_max: self.probe_failures_max,
            provision_failures_max: self.provision_failures_max,
            vm_retries_max: self.vm_retries_max,
            aging_step_ms: self.aging_step_ms,
            fair_share: None,
            quotas: Vec::new(),
            // `[images]`, when given, comes in `pinned_scheduler_config`.
            images: None,
            // `[[warm]]`, when given, comes in `pinned_scheduler_config`.
            warm: Vec::new(),
            templates: Vec::new(),
        })
    }
}

/// The longest half-life of usage under fair share: a year, in minutes.
pub const HALF_LIFE_MINUTES_MAX: u64 = 365 * 24 * 60;
/// The largest weight of an account under fair share.
pub const ACCOUNT_WEIGHT_MAX: u32 = 1_000_000;
/// The most accounts `[[fair_share.accounts]]` may list.
pub const ACCOUNTS_MAX: usize = 10_000;

/// `[fair_share]`: the queue serves the account furthest below its share first (the lowest
/// decayed usage per unit of weight), then priority with aging, then arrival. Fixed when the
/// database is created, like `[scheduler]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FairShareSection {
    /// Usage (vCPU-seconds, a slot counting as a vCPU) halves in this many minutes.
    #[serde(default = "hour_minutes")]
    pub half_life_minutes: u64,
    /// The weight of an account `accounts` does not list.
    #[serde(default = "one")]
    pub default_weight: u32,
    /// A request that has waited this many minutes is served before the fair order (by
    /// priority with aging, then arrival), whatever its account's usage: a bound on how long
    /// fair share may pass it over. Left out: the fair order only.
    #[serde(default)]
    pub age_limit_minutes: Option<u64>,
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
}

/// One `[[fair_share.accounts]]`: an account (team or project) and its weight.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    pub name: String,
    pub weight: u32,
}

fn hour_minutes() -> u64 {
    60
}

fn one() -> u32 {
    1
}

impl FairShareSection {
    /// The scheduler's fair-share settings; errors name the key.
    pub fn to_fair_share(&self) -> Result<FairShare, DaemonError> {
        let bad = |key: String, message: String| DaemonError::Config { key, message };
        if !(1..=HALF_LIFE_MINUTES_MAX).contains(&self.half_life_minutes) {
            return Err(bad(
                "fair_share.half_life_minutes".into(),
                format!(
                    "must be 1 to {HALF_LIFE_MINUTES_MAX} (a year), got {}",
                    self.half_life_minutes
                ),
            ));
        }
        if let Some(minutes) = self.age_limit_minutes
            && !(1..=HALF_LIFE_MINUTES_MAX).contains(&minutes)
        {
            return Err(bad(
                "fair_share.age_limit_minutes".into(),
                format!("must be 1 to {HALF_LIFE_MINUTES_MAX} (a year), got {minutes}"),
            ));
        }
        let weight_ok = |w: u32| (1..=ACCOUNT_WEIGHT_MAX).contains(&w);
        if !weight_ok(self.default_weight) {
            return Err(bad(
                "fair_share.default_weight".into(),
                format!(
                    "must be 1 to {ACCOUNT_WEIGHT_MAX}, got {}",
                    self.default_weight
                ),
            ));
        }
        if self.accounts.len() > ACCOUNTS_MAX {
            return Err(bad(
                "fair_share.accounts".into(),
                format!(
                    "at most {ACCOUNTS_MAX} accounts, got {}",
                    self.accounts.len()
                ),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            crate::wire::check_text("name", &a.name)
                .map_err(|e| bad(format!("fair_share.accounts[{i}].{}", e.field), e.message))?;
            if !names.insert(a.name.as_str()) {
                return Err(bad(
                    format!("fair_share.accounts[{i}].name"),
                    format!("an account named `{}` is listed twice", a.name),
                ));
            }
            if !weight_ok(a.weight) {
                return Err(bad(
                    format!("fair_share.accounts[{i}].weight"),
                    format!("must be 1 to {ACCOUNT_WEIGHT_MAX}, got {}", a.weight),
                ));
            }
        }
        Ok(FairShare {
            half_life_ms: self.half_life_minutes * 60_000,
            default_weight: self.default_weight,
            age_limit_ms: self.age_limit_minutes.map(|m| m * 60_000),
            accounts: self
                .accounts
                .iter()
                .map(|a| Account {
                    name: a.name.clone(),
                    weight: a.weight,
                })
                .collect(),
        })
    }
}

/// The most entries `[[quotas]]` may list.
pub const QUOTAS_MAX: usize = 10_000;

/// One `[[quotas]]` entry: what `account` is guaranteed of host class `class`, and how far past
/// that it may borrow while no other account waits under its own guarantee there. Fixed when
/// the database is created, like `[fair_share]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// The account, or `*` for each account without an entry of its own for the class.
    pub account: String,
    /// The host class: a host's `class` label, else its `pool` label, else its name without a
    /// trailing `-N` (the class the console and the metrics show).
    pub class: String,
    /// What the account may always hold there; a resource left out is not bounded.
    #[serde(default)]
    pub guarantee: QuotaAmountsConfig,
    /// How much more it may hold while nobody reclaims it; a resource left out may be
    /// borrowed without bound.
    #[serde(default)]
    pub borrowing_limit: QuotaAmountsConfig,
}

/// Amounts of a host class: vCPUs, memory and VMs that take a counted slot.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QuotaAmountsConfig {
    pub vcpus: Option<u64>,
    pub memory_mib: Option<u64>,
    pub slots: Option<u64>,
}

impl From<QuotaAmountsConfig> for QuotaAmounts {
    fn from(a: QuotaAmountsConfig) -> QuotaAmounts {
        QuotaAmounts {
            vcpus: a.vcpus,
            memory_mib: a.memory_mib,
            slots: a.slots,
        }
    }
}

/// The scheduler's quotas from `[[quotas]]`; errors name the entry and the key.
pub fn quotas_config(quotas: &[QuotaConfig]) -> Result<Vec<Quota>, DaemonError> {
    let bad = |key: String, message: String| DaemonError::Config { key, message };
    if quotas.len() > QUOTAS_MAX {
        return Err(bad(
            "quotas".into(),
            format!("at most {QUOTAS_MAX} entries, got {}", quotas.len()),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(quotas.len());
    for (i, q) in quotas.iter().enumerate() {
        crate::wire::check_text("account", &q.account)
            .and_then(|()| crate::wire::check_text("class", &q.class))
            .map_err(|e| bad(format!("quotas[{i}].{}", e.field), e.message))?;
        if !seen.insert((q.account.as_str(), q.class.as_str())) {
            return Err(bad(
                format!("quotas[{i}]"),
                format!(
                    "account `{}` has a second quota on class `{}`",
                    q.account, q.class
                ),
            ));
        }
        for (part, a) in [
            ("guarantee", &q.guarantee),
            ("borrowing_limit", &q.borrowing_limit),
        ] {
            for (key, v) in [
                ("vcpus", a.vcpus),
                ("memory_mib", a.memory_mib),
                ("slots", a.slots),
            ] {
                if v.is_some_and(|v| v > i64::MAX as u64 / 1000) {
                    return Err(bad(
                        format!("quotas[{i}].{part}.{key}"),
                        format!("{} is too large", v.unwrap_or_default()),
                    ));
                }
            }
        }
        out.push(Quota {
            account: q.account.clone(),
            class: q.class.clone(),
            guarantee: q.guarantee.into(),
            borrowing_limit: q.borrowing_limit.into(),
        });
    }
    Ok(out)
}

/// The scheduler's whole configuration (templates aside) from its two sections.
pub fn scheduler_config(
    scheduler: &SchedSection,
    fair_share: Option<&FairShareSection>,
) -> Result<SchedulerConfig, DaemonError> {
    let mut c = scheduler.to_config()?;
    c.fair_share = fair_share
        .map(FairShareSection::to_fair_share)
        .transpose()?;
    Ok(c)
}

/// The name the scheduler books pulls from the image store under (there is one store).
pub const IMAGE_STORE_NAME: &str = "store";

/// The most base images `[images] sizes_mib` may name, and classes `[[images.classes]]` list.
pub const IMAGES_MAX: usize = 10_000;

/// `[images]`: base images as the scheduler sees them (docs/scheduling.md, "Images"). Placement
/// prefers hosts that hold a VM's image, prices a pull against waiting for such a host, keeps
/// to the store's limit on concurrent pulls, evicts least recently used images past a class's
/// budget and pulls ahead of queued demand. Fixed when the database is created, like
/// `[fair_share]`: replay must decide as the live run did.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImagesSection {
    /// `aware` (the above) or `ignore` (VMs go where the scorers put them and wait there for
    /// the pulls they cause; no pulls ahead).
    #[serde(default = "aware")]
    pub mode: String,
    /// Pulls the image store (`[drivers] image_store`) serves at once; further pulls wait for
    /// a turn (0: no limit).
    #[serde(default)]
    pub store_pulls_max: u32,
    /// Base image name (as templates name it) and its size in MiB. An image left out costs
    /// nothing to pull and nothing against a budget.
    #[serde(default)]
    pub sizes_mib: BTreeMap<String, u64>,
    /// Per host class; hosts of a class left out pull in no time, unbounded.
    #[serde(default)]
    pub classes: Vec<ImageClassConfig>,
}

/// One `[[images.classes]]`: what the hosts of a class have for images.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageClassConfig {
    /// The host class: a host's `class` label, else its `pool` label, else its name without a
    /// trailing `-N` (as for `[[quotas]]`).
    pub class: String,
    /// The bandwidth of one host's pull from the store, in Mbit/s.
    pub pull_mbit_s: u64,
    /// Disk for base images on each host, in MiB; left out: not bounded.
    #[serde(default)]
    pub budget_mib: Option<u64>,
}

fn aware() -> String {
    ImageMode::Aware.name().to_owned()
}

impl ImagesSection {
    /// The scheduler's image settings, every class pulling from `store` (a name for the
    /// store's turns); errors name the key.
    pub fn to_images(&self, store: &str) -> Result<Images, DaemonError> {
        let bad = |key: String, message: String| DaemonError::Config { key, message };
        let mode = ImageMode::parse(&self.mode).ok_or_else(|| {
            bad(
                "images.mode".into(),
                format!("expected aware or ignore, got `{}`", self.mode),
            )
        })?;
        if self.sizes_mib.len() > IMAGES_MAX || self.classes.len() > IMAGES_MAX {
            return Err(bad(
                "images".into(),
                format!("at most {IMAGES_MAX} sizes and {IMAGES_MAX} classes"),
            ));
        }
        let mut images = Images::new(mode);
        images.store_pulls_max = self.store_pulls_max;
        for (name, &mib) in &self.sizes_mib {
            let key = format!("images.sizes_mib.{name}");
            crate::wire::check_text("image", name).map_err(|e| bad(key.clone(), e.message))?;
            if mib == 0 {
                return Err(bad(key, "must be at least 1 MiB".into()));
            }
            images.sizes.push((name.clone(), mib));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, c) in self.classes.iter().enumerate() {
            let key = |field: &str| format!("images.classes[{i}].{field}");
            crate::wire::check_text("class", &c.class).map_err(|e| bad(key("class"), e.message))?;
            if !seen.insert(c.class.as_str()) {
                return Err(bad(
                    key("class"),
                    format!("class `{}` is listed twice", c.class),
                ));
            }
            if c.pull_mbit_s == 0 {
                return Err(bad(key("pull_mbit_s"), "must be at least 1".into()));
            }
            if c.budget_mib == Some(0) {
                return Err(bad(key("budget_mib"), "must be at least 1 MiB".into()));
            }
            images.classes.push(ImageClass {
                class: c.class.clone(),
                pull_mbit_s: c.pull_mbit_s,
                budget_mib: c.budget_mib,
                store: store.to_owned(),
            });
        }
        Ok(images)
    }
}

/// The most entries `[[warm]]` may list.
pub const WARM_POOLS_MAX: usize = 1_000;
/// The most VMs one `[[warm]]` pool may keep.
pub const WARM_COUNT_MAX: u32 = 10_000;

/// One `[[warm]]` entry: keep `count` VMs of `template` booted and idle on hosts of `class`,
/// for requests of that template and shape to take at once (docs/scheduling.md, "Warm
/// pools"). Fixed when the database is created, like `[images]`: replay must decide as the
/// live run did.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WarmConfig {
    /// A template's name (one of `[[templates]]`, or of the embedded ones without them).
    pub template: String,
    /// The host class: a host's `class` label, else its `pool` label, else its name without a
    /// trailing `-N` (as for `[[quotas]]`).
    pub class: String,
    /// How many warm VMs the pool keeps (live, booting included), 1 to `WARM_COUNT_MAX`.
    pub count: u32,
    /// The shape of its VMs, both or neither; left out: the template's default shape. Only
    /// requests of the same shape take its VMs.
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
}

/// The scheduler's warm pools from `[[warm]]`; errors name the entry and the key. The
/// templates and classes they name are compared with the configured fleet by `warm_warnings`.
pub fn warm_config(warm: &[WarmConfig]) -> Result<Vec<Warm>, DaemonError> {
    let bad = |key: String, message: String| DaemonError::Config { key, message };
    if warm.len() > WARM_POOLS_MAX {
        return Err(bad(
            "warm".into(),
            format!("at most {WARM_POOLS_MAX} entries, got {}", warm.len()),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(warm.len());
    for (i, w) in warm.iter().enumerate() {
        let key = |field: &str| format!("warm[{i}].{field}");
        crate::wire::check_text("template", &w.template)
            .map_err(|e| bad(key("template"), e.message))?;
        crate::wire::check_text("class", &w.class).map_err(|e| bad(key("class"), e.message))?;
        if !(1..=WARM_COUNT_MAX).contains(&w.count) {
            return Err(bad(
                key("count"),
                format!("must be 1 to {WARM_COUNT_MAX}, got {}", w.count),
            ));
        }
        let shape = match (w.vcpus, w.memory_mib) {
            (None, None) => None,
            (Some(vcpus), Some(memory_mib)) if vcpus > 0 && memory_mib > 0 => {
                Some(Shape { vcpus, memory_mib })
            }
            (Some(_), Some(_)) => {
                return Err(bad(
                    key(if w.vcpus == Some(0) {
                        "vcpus"
                    } else {
                        "memory_mib"
                    }),
                    "must be at least 1".into(),
                ));
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(bad(
                    key(if w.vcpus.is_none() { "vcpus" } else { "memory_mib" }),
                    "vcpus and memory_mib go together: give both, or neither for the template's default shape"
                        .into(),
                ));
            }
        };
        if !seen.insert((w.template.as_str(), w.class.as_str(), shape)) {
            return Err(bad(
                format!("warm[{i}]"),
                format!(
                    "a second pool of template `{}` in that shape on class `{}`",
                    w.template, w.class
                ),
            ));
        }
        out.push(Warm {
            template: w.template.clone(),
            class: w.class.clone(),
            count: w.count,
            shape,
        });
    }
    Ok(out)
}

/// What is doubtful in the `[[warm]]` entries: a template or host class the configured fleet
/// (`[[templates]]` and `[[hosts]]`, or the embedded ones when those are left out) does not
/// have. Templates and hosts may also come later through the API, so these are warnings, not
/// errors: such a pool stays empty until its template and a host of its class exist.
pub fn warm_warnings(
    warm: &[WarmConfig],
    templates: &[WireTemplate],
    hosts: &[WireHost],
) -> Vec<String> {
    let classes: std::collections::BTreeSet<&str> = hosts
        .iter()
        .map(|h| {
            berth_api::host_class(
                &h.name,
                h.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )
        })
        .collect();
    let mut out = Vec::new();
    for (i, w) in warm.iter().enumerate() {
        if !templates.iter().any(|t| t.name == w.template) {
            let names: Vec<&str> = templates.iter().map(|t| t.name.as_str()).collect();
            out.push(format!(
                "warm[{i}].template: no configured template named `{}` (the templates are: \
                 {}); the pool stays empty until one is added",
                w.template,
                names.join(", ")
            ));
        }
        if !classes.contains(w.class.as_str()) {
            let names: Vec<&str> = classes.iter().copied().collect();
            out.push(format!(
                "warm[{i}].class: no configured host of class `{}` (the classes are: {}); \
                 the pool stays empty until one is added",
                w.class,
                names.join(", ")
            ));
        }
    }
    out
}

/// The scheduler's whole configuration from the sections a database pins (templates aside:
/// those are journaled inputs).
pub fn pinned_scheduler_config(
    scheduler: &SchedSection,
    fair_share: Option<&FairShareSection>,
    quotas: &[QuotaConfig],
    images: Option<&ImagesSection>,
    warm: &[WarmConfig],
) -> Result<SchedulerConfig, DaemonError> {
    let mut c = scheduler_config(scheduler, fair_share)?;
    c.quotas = quotas_config(quotas)?;
    c.images = images.map(|i| i.to_images(IMAGE_STORE_NAME)).transpose()?;
    c.warm = warm_config(warm)?;
    Ok(c)
}

/// The host monitor.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeSection {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// After start, failed probes are not reported for this long, so hosts are not declared
    /// dead for the daemon's own downtime.
    pub startup_grace_ms: u64,
    /// How often a host that answers its probes is also listed, so that VMs deleted behind
    /// berth's back are noticed (lost and replaced) and strays destroyed; 0: only at start
    /// and when a host comes back from error.
    pub list_interval_ms: u64,
}

impl Default for ProbeSection {
    fn default() -> ProbeSection {
        ProbeSection {
            interval_ms: 10_000,
            timeout_ms: 5_000,
            startup_grace_ms: 30_000,
            list_interval_ms: 60_000,
        }
    }
}

/// The simulated hosts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSection {
    /// Multiplies every modelled latency (1.0: a Linux guest boots in about 20 s).
    pub latency_scale: f64,
    pub seed: u64,
    /// A directory that keeps the simulated hosts' inventory for every daemon configured with
    /// it (one file per VM, and a log of the driver actions: `berth_drivers::sim`), so that
    /// daemons sharing one database also share their simulated hosts. Unset, each daemon keeps
    /// its own in `DATA_DIR/sim-inventory`.
    pub shared_inventory: Option<PathBuf>,
}

impl Default for SimSection {
    fn default() -> SimSection {
        SimSection {
            latency_scale: 1.0,
            seed: 1,
            shared_inventory: None,
        }
    }
}

/// Driver workers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSection {
    /// Driver calls (provision, destroy) running at once on one host.
    pub driver_calls_per_host_max: usize,
    /// Hook processes running at once; more wait their turn in the hook queue.
    pub hooks_at_once_max: usize,
    /// A cgroup directory (v2, or a v1 hierarchy such as `/sys/fs/cgroup/pids/berth`) where
    /// each hook attempt gets a group of its own, killed whole when the attempt ends: unlike a
    /// process group, it also holds what a hook started in a session of its own. Without it,
    /// hooks run in process groups.
    pub hooks_cgroup: Option<PathBuf>,
}

impl Default for WorkerSection {
    fn default() -> WorkerSection {
        WorkerSection {
            driver_calls_per_host_max: 8,
            hooks_at_once_max: 4,
            hooks_cgroup: None,
        }
    }
}

/// The HTTP server's connections: how many at once, and how long one may dawdle.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Connections open at once; past it a new connection is answered 503 and closed. Each
    /// takes a file descriptor: keep it below the process's limit (`ulimit -n`).
    pub connections_max: usize,
    /// How long a connection may take to send a request's headers, and how long it may sit
    /// idle between requests, before it is closed: slow or silent clients cannot hold
    /// connections for long.
    pub header_read_timeout_ms: u64,
    /// TLS: the certificate chain (PEM) the daemon presents; with `tls_key`, the API is served
    /// over https only. The TLS handshake is bounded by `header_read_timeout_ms` too.
    pub tls_cert: Option<PathBuf>,
    /// TLS: the certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
}

impl Default for ServerSection {
    fn default() -> ServerSection {
        ServerSection {
            connections_max: 4096,
            header_read_timeout_ms: 10_000,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// The database's disk.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskSection {
    /// Below this much free space on the database's disk, API writes are refused (507) before
    /// they are applied; the room left is for what the fleet reports meanwhile (VMs booting
    /// and ending), so the journal never stops for them. 0 turns the check off.
    pub free_min_mib: u64,
}

impl Default for DiskSection {
    fn default() -> DiskSection {
        DiskSection { free_min_mib: 64 }
    }
}

/// The shortest pulse period: each sample asks the control loop twice.
pub const PULSE_PERIOD_MS_MIN: u64 = 1000;
/// The longest time pulses may be kept (30 days: about 260,000 rows at the default period).
pub const PULSE_KEPT_HOURS_MAX: u64 = 30 * 24;

/// The time series of queue length, running VMs and utilisation (see `pulses`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PulsesSection {
    /// How often a sample is taken, in wall-clock milliseconds; at least
    /// [`PULSE_PERIOD_MS_MIN`].
    pub period_ms: u64,
    /// How long samples are kept; older ones are deleted as new ones are written. From 1 to
    /// [`PULSE_KEPT_HOURS_MAX`].
    pub kept_hours: u64,
}

impl Default for PulsesSection {
    fn default() -> PulsesSection {
        PulsesSection {
            period_ms: 10_000,
            kept_hours: 24,
        }
    }
}

/// What reconciliation may clean up on its own.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoverySection {
    /// Orphans of this journal (VMs it created and ended, still on a host: a destroy that
    /// failed while the host was away) destroyed at one reconciliation of one listing. When
    /// more turn up at once, something else is wrong, and all of them are kept and reported.
    pub orphans_destroy_max: usize,
    /// Journaled inputs between two snapshots of the scheduler's state (0: none). A start
    /// restores the newest snapshot and replays only the journal after it, so this bounds the
    /// replay (about a microsecond per input); each snapshot costs a write of the whole state.
    pub snapshot_every_inputs: u64,
}

impl Default for RecoverySection {
    fn default() -> RecoverySection {
        RecoverySection {
            orphans_destroy_max: 5,
            snapshot_every_inputs: 100_000,
        }
    }
}

/// Several daemons on one PostgreSQL database: the leader lease (see `lease`). Ignored on
/// SQLite, where a daemon is its database's only user.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaSection {
    /// How long a lease lasts past its last renewal, by the database's clock.
    pub lease_ttl_ms: u64,
    /// How often the leader renews it (and how often a follower looks at it).
    pub lease_renew_ms: u64,
    /// How much sooner than the lease's expiry the leader stops acting, by its own clock:
    /// room for the two clocks' rates to differ, and for a pause between a renewal's start and
    /// its answer.
    pub lease_margin_ms: u64,
    /// The base URL other daemons send clients to while this one leads (`https://berth1:7878`);
    /// default `http(s)://` and the listen address.
    pub advertise: Option<String>,
}

impl Default for HaSection {
    fn default() -> HaSection {
        HaSection {
            lease_ttl_ms: 5_000,
            lease_renew_ms: 1_000,
            lease_margin_ms: 1_000,
            advertise: None,
        }
    }
}

impl HaSection {
    fn check(&self) -> Result<(), DaemonError> {
        let bad = |key: &str, message: String| DaemonError::Config {
            key: format!("ha.{key}"),
            message,
        };
        if self.lease_renew_ms < 10 {
            return Err(bad(
                "lease_renew_ms",
                format!("must be at least 10, got {}", self.lease_renew_ms),
            ));
        }
        // A leader must renew at least once before its own clock stops it.
        if self.lease_margin_ms.saturating_add(self.lease_renew_ms) >= self.lease_ttl_ms {
            return Err(bad(
                "lease_ttl_ms",
                format!(
                    "must be more than lease_renew_ms + lease_margin_ms ({} + {}), got {}",
                    self.lease_renew_ms, self.lease_margin_ms, self.lease_ttl_ms
                ),
            ));
        }
        if let Some(a) = &self.advertise
            && !(a.starts_with("http://") || a.starts_with("https://"))
        {
            return Err(bad(
                "advertise",
                format!("`{a}` is not an http:// or https:// URL"),
            ));
        }
        Ok(())
    }
}

/// Defaults for the driver options hosts leave out (see `fleet::DriverDefaults`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriversSection {
    /// The known_hosts file Parallels hosts check host keys against (strictly); default
    /// `DATA_DIR/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    /// The image directory on libvirt hosts; default the driver's (`/var/lib/berth/images`).
    pub image_dir: Option<String>,
    /// Where libvirt and Parallels hosts pull base images they lack from: a directory (a
    /// network mount works) or an `http://` or `https://` URL holding `NAME.qcow2` and
    /// `NAME.qcow2.sha256` for libvirt, `NAME.pvm.tar` and `NAME.pvm.tar.sha256` (a template's
    /// bundle) for Parallels. A host's own `image_store` option overrides it; without either, a
    /// missing base image is the host's error.
    pub image_store: Option<String>,
    /// For an `https://` `image_store`: a PEM file of CA certificates trusted beside the
    /// system's roots (a private CA). It goes with this section's store: a host that names its
    /// own store names its own `image_store_ca` too.
    pub image_store_ca: Option<PathBuf>,
    /// The most the base images on each libvirt host, and the pulled templates on each
    /// Parallels host, may take (MiB): unused ones are evicted, least recently used first, to
    /// make room for a pull. A host's own `image_budget_mib` option overrides it; without
    /// either, images are evicted only by hand.
    pub image_budget_mib: Option<u64>,
}

impl DriversSection {
    /// The image store this section gives hosts (with its CA), if any; an error names the key.
    pub fn store(&self) -> Result<Option<berth_drivers::images::ImageStore>, DaemonError> {
        let mut options = std::collections::BTreeMap::new();
        if let Some(store) = &self.image_store {
            options.insert(
                berth_drivers::images::STORE_OPTION.to_owned(),
                store.clone(),
            );
        }
        if let Some(ca) = &self.image_store_ca {
            options.insert(
                berth_drivers::images::CA_FILE_OPTION.to_owned(),
                ca.display().to_string(),
            );
        }
        berth_drivers::images::store_from_options(&options).map_err(|(key, message)| {
            DaemonError::Config {
                key: format!("drivers.{key}"),
                message,
            }
        })
    }
}

/// What a token may do (the API's names: `read-only`, `operator`).
pub use berth_api::Role;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it, for the audit log.
    pub name: String,
    pub token: String,
    pub role: Role,
}

/// Reads and checks a configuration file.
pub fn load(path: &Path) -> Result<FileConfig, DaemonError> {
    let text = std::fs::read_to_string(path).map_err(|source| DaemonError::Io {
        what: format!("reading config {}", path.display()),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        DaemonError::Config { key, message } => DaemonError::Config {
            key,
            message: format!("{message} (in {})", path.display()),
        },
        other => other,
    })
}

/// Parses configuration text; errors name the key.
pub fn parse(text: &str) -> Result<FileConfig, DaemonError> {
    let de = toml::Deserializer::parse(text).map_err(|e| DaemonError::Config {
        key: String::new(),
        message: e.to_string(),
    })?;
    let config: FileConfig =
        serde_path_to_error::deserialize(de).map_err(|e| DaemonError::Config {
            key: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
    scheduler_config(&config.scheduler, config.fair_share.as_ref())?;
    quotas_config(&config.quotas)?;
    if let Some(images) = &config.images {
        images.to_images(IMAGE_STORE_NAME)?;
    }
    warm_config(&config.warm)?;
    if let Some(listen) = &config.listen {
        listen
            .parse::<SocketAddr>()
            .map_err(|e| DaemonError::Config {
                key: "listen".into(),
                message: format!("`{listen}`: {e}"),
            })?;
    }
    config.drivers.store()?;
    config.ha.check()?;
    if !(config.sim.latency_scale >= 0.0 && config.sim.latency_scale.is_finite()) {
        return Err(DaemonError::Config {
            key: "sim.latency_scale".into(),
            message: "must be a finite number at least 0".into(),
        });
    }
    if config
        .sim
        .shared_inventory
        .as_ref()
        .is_some_and(|dir| dir.as_os_str().is_empty())
    {
        return Err(DaemonError::Config {
            key: "sim.shared_inventory".into(),
            message: "must name a directory".into(),
        });
    }
    if let Some(hosts) = &config.hosts {
        let mut names = std::collections::BTreeSet::new();
        for (i, h) in hosts.iter().enumerate() {
            h.validate_new().map_err(|e| DaemonError::Config {
                key: format!("hosts[{i}].{}", e.field),
                message: e.message,
            })?;
            if !names.insert(h.name.as_str()) {
                return Err(DaemonError::Config {
                    key: format!("hosts[{i}].name"),
                    message: format!("a host named `{}` is listed twice", h.name),
                });
            }
        }
    }
    if let Some(templates) = &config.templates {
        let mut names = std::collections::BTreeSet::new();
        for (i, t) in templates.iter().enumerate() {
            t.to_template().map_err(|e| DaemonError::Config {
                key: format!("templates[{i}].{}", e.field),
                message: e.message,
            })?;
            if !names.insert(t.name.as_str()) {
                return Err(DaemonError::Config {
                    key: format!("templates[{i}].name"),
                    message: format!("a template named `{}` is listed twice", t.name),
                });
            }
        }
    }
    for (i, h) in config.hooks.iter().enumerate() {
        h.check().map_err(|(field, message)| DaemonError::Config {
            key: format!("hooks[{i}].{field}"),
            message,
        })?;
    }
    if config.pulses.period_ms < PULSE_PERIOD_MS_MIN {
        return Err(DaemonError::Config {
            key: "pulses.period_ms".into(),
            message: format!(
                "must be at least {}, got {}",
                PULSE_PERIOD_MS_MIN, config.pulses.period_ms
            ),
        });
    }
    if !(1..=PULSE_KEPT_HOURS_MAX).contains(&config.pulses.kept_hours) {
        return Err(DaemonError::Config {
            key: "pulses.kept_hours".into(),
            message: format!(
                "must be 1 to {}, got {}",
                PULSE_KEPT_HOURS_MAX, config.pulses.kept_hours
            ),
        });
    }
    if config.workers.hooks_at_once_max == 0 {
        return Err(DaemonError::Config {
            key: "workers.hooks_at_once_max".into(),
            message: "must be at least 1".into(),
        });
    }
    if config.workers.driver_calls_per_host_max == 0 {
        return Err(DaemonError::Config {
            key: "workers.driver_calls_per_host_max".into(),
            message: "must be at least 1".into(),
        });
    }
    if !config.warm.is_empty() {
        let templates = config.templates.clone().unwrap_or_else(default_templates);
        let hosts = config.hosts.clone().unwrap_or_else(default_hosts);
        for warning in warm_warnings(&config.warm, &templates, &hosts) {
            tracing::warn!("{warning}");
        }
    }
    Ok(config)
}

/// The embedded templates: `linux`, `windows` and `macos` (one VM per `macos` slot).
pub fn default_templates() -> Vec<WireTemplate> {
    let t = |name: &str, os: &str, vcpus, memory_mib, slot: Option<&str>, boot_ms| WireTemplate {
        name: name.to_owned(),
        base_image: None,
        guest_os: os.to_owned(),
        drivers: Vec::new(),
        vcpus,
        memory_mib,
        slot: slot.map(str::to_owned),
        expected_provision_ms: 3_000,
        expected_boot_ms: boot_ms,
        expected_run_ms: 1_800_000,
        domain_type: None,
    };
    vec![
        t("linux", "linux", 2, 4096, None, 20_000),
        t("windows", "windows", 4, 8192, None, 60_000),
        t("macos", "macos", 4, 8192, Some("macos"), 45_000),
    ]
}

/// The embedded fleet: 16 simulated hosts of mixed sizes (6 small and 6 large x86_64 Linux
/// servers, 4 Macs with two macOS slots each).
pub fn default_hosts() -> Vec<WireHost> {
    let mut hosts = Vec::new();
    let mut add = |name: String, vcpus, memory_mib, cpu_over, arch: &str, mac: bool| {
        let mut labels = BTreeMap::new();
        labels.insert("arch".to_owned(), arch.to_owned());
        let mut slots = BTreeMap::new();
        if mac {
            slots.insert("macos".to_owned(), 2);
        }
        hosts.push(WireHost {
            id: 0,
            name,
            driver: "sim".into(),
            vcpus,
            memory_mib,
            slots,
            cpu_overcommit_milli: cpu_over,
            memory_overcommit_milli: 1000,
            labels,
            images: if mac {
                vec!["macos".into()]
            } else {
                vec!["linux".into(), "windows".into()]
            },
            options: BTreeMap::new(),
        });
    };
    for i in 1..=6 {
        add(format!("sim-small-{i}"), 16, 65_536, 1000, "x86_64", false);
    }
    for i in 1..=6 {
        add(format!("sim-large-{i}"), 64, 262_144, 2000, "x86_64", false);
    }
    for i in 1..=4 {
        add(format!("sim-mac-{i}"), 12, 32_768, 1000, "aarch64", true);
    }
    hosts
}

/// Every event name, by kind: `vm.` + the state a VM entered, `request.` + the state a request
/// entered, `host.` + the state a host entered (`host.removed` when it left the fleet).
pub const EVENT_NAMES: &[&str] = &[
    "vm.queued",
    "vm.placed",
    "vm.provisioning",
    "vm.booting",
    "vm.running",
    "vm.held",
    "vm.releasing",
    "vm.done",
    "vm.failed",
    "vm.lost",
    "vm.cancelled",
    "request.waiting",
    "request.active",
    "request.done",
    "request.failed",
    "request.rejected",
    "request.cancelled",
    "host.unknown",
    "host.ready",
    "host.draining",
    "host.maintenance",
    "host.offline",
    "host.error",
    "host.removed",
    "image.pulled",
    "image.pull_failed",
];

/// One configured hook (`[[hooks]]` in the config file).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// For the run log and metrics; defaults to `hooks[INDEX]`.
    #[serde(default)]
    pub name: Option<String>,
    /// An event name, `KIND.*` (`vm.*`, `request.*`, `host.*`, `image.*`) or `*`.
    pub on: String,
    /// The program and its arguments; no shell.
    pub command: Vec<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts after the first when a run fails or times out.
    #[serde(default)]
    pub retries_max: u32,
    /// Wait before the first retry; doubles for each further one.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
}

fn default_timeout_ms() -> u64 {
    30_000
}

fn default_backoff_ms() -> u64 {
    1_000
}

impl HookConfig {
    /// Checks the pattern and command; the error names the field.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let known = self.on == "*"
            || ["vm.*", "request.*", "host.*", "image.*"].contains(&self.on.as_str())
            || EVENT_NAMES.contains(&self.on.as_str());
        if !known {
            return Err((
                "on",
                format!(
                    "unknown event `{}`: an event name ({}), `vm.*`, `request.*`, `host.*`, `image.*` or `*`",
                    self.on,
                    EVENT_NAMES.join(", ")
                ),
            ));
        }
        if self.command.first().is_none_or(|p| p.is_empty()) {
            return Err(("command", "needs at least the program to run".into()));
        }
        if self.timeout_ms == 0 {
            return Err(("timeout_ms", "must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("[probe]\ninterval_msec = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("probe"), "{err}");
        assert!(err.contains("interval_msec"), "{err}");
    }

    #[test]
    fn a_shared_simulated_inventory_names_a_directory() {
        let config = parse("[sim]\nshared_inventory = \"/srv/berth-sim\"\n").unwrap();
        assert_eq!(
            config.sim.shared_inventory.as_deref(),
            Some(Path::new("/srv/berth-sim"))
        );
        assert_eq!(parse("").unwrap().sim.shared_inventory, None);
        let err = parse("[sim]\nshared_inventory = \"\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config key `sim.shared_inventory`: must name a directory"
        );
    }

    #[test]
    fn wrong_values_are_named() {
        let err = parse("[scheduler]\npolicy = \"best\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("scheduler.policy"), "{err}");
        let err = parse("listen = \"nowhere\"\n").unwrap_err().to_string();
        assert!(err.contains("listen"), "{err}");
        let err = parse("[drivers]\nimage_store = \"images\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("drivers.image_store") && err.contains("absolute directory"),
            "{err}"
        );
        parse("[drivers]\nimage_store = \"http://mirror:8080/images\"\n").expect("a store");
        parse("[drivers]\nimage_store = \"https://mirror/images\"\n").expect("an https store");
        // The CA is read at once and belongs to an https:// store.
        for (text, says) in [
            (
                "[drivers]\nimage_store = \"https://mirror/images\"\nimage_store_ca = \"/no/ca.pem\"\n",
                "/no/ca.pem",
            ),
            (
                "[drivers]\nimage_store = \"http://mirror/images\"\nimage_store_ca = \"/no/ca.pem\"\n",
                "for an https:// store only",
            ),
            (
                "[drivers]\nimage_store_ca = \"/no/ca.pem\"\n",
                "no image_store is set",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.contains("drivers.image_store_ca") && err.contains(says),
                "{err}"
            );
        }
    }

    #[test]
    fn hosts_and_templates_are_checked_with_their_index() {
        let host = |name: &str, driver: &str| {
            format!(
                "[[hosts]]\nname = \"{name}\"\ndriver = \"{driver}\"\nvcpus = 4\nmemory_mib = 1024\n"
            )
        };
        let err = parse(&(host("a", "sim") + &host("b", "xen")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("hosts[1].driver"), "{err}");
        let err = parse(&(host("a", "sim") + &host("a", "sim")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("hosts[1].name"), "{err}");
        let err =
            parse("[[templates]]\nname = \"t\"\nguest_os = \"beos\"\nvcpus = 1\nmemory_mib = 1\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("templates[0].guest_os"), "{err}");
        let template = |domain_type: &str| {
            format!(
                "[[templates]]\nname = \"t\"\nguest_os = \"linux\"\nvcpus = 1\nmemory_mib = 1\n\
                 domain_type = \"{domain_type}\"\n"
            )
        };
        let err = parse(&template("xen")).unwrap_err().to_string();
        assert!(
            err.contains("templates[0].domain_type") && err.contains("xen"),
            "{err}"
        );
        let config = parse(&template("qemu")).expect("a template asking for qemu");
        let t = &config.templates.expect("templates")[0];
        assert_eq!(t.domain_type(), Ok(Some(berth_drivers::DomainType::Qemu)));
        let err = parse("[[hosts]]\nname = \"a\"\ndriver = \"sim\"\nvcpu = 4\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("hosts[0]") && err.contains("vcpu"), "{err}");
    }

    #[test]
    fn fair_share_maps_to_the_scheduler_and_bad_values_are_named() {
        let c = parse(
            "[fair_share]\nhalf_life_minutes = 30\ndefault_weight = 2\n\
             [[fair_share.accounts]]\nname = \"qt-base\"\nweight = 3\n",
        )
        .unwrap();
        let s = scheduler_config(&c.scheduler, c.fair_share.as_ref()).unwrap();
        let fair = s.fair_share.expect("fair share on");
        assert_eq!((fair.half_life_ms, fair.default_weight), (1_800_000, 2));
        assert_eq!(fair.age_limit_ms, None);
        let aged = parse("[fair_share]\nage_limit_minutes = 90\n").unwrap();
        let aged = aged.fair_share.unwrap().to_fair_share().unwrap();
        assert_eq!(aged.age_limit_ms, Some(5_400_000));
        assert_eq!(
            fair.accounts,
            vec![Account {
                name: "qt-base".into(),
                weight: 3
            }]
        );
        // Left out, it is off; an empty section takes the defaults.
        let off = parse("").unwrap();
        assert!(off.fair_share.is_none());
        let s = scheduler_config(&off.scheduler, None).unwrap();
        assert!(s.fair_share.is_none());
        let empty = parse("[fair_share]\n").unwrap();
        let fair = empty.fair_share.unwrap().to_fair_share().unwrap();
        assert_eq!((fair.half_life_ms, fair.default_weight), (3_600_000, 1));

        let account = |name: &str, weight: u32| {
            format!("[[fair_share.accounts]]\nname = \"{name}\"\nweight = {weight}\n")
        };
        for (text, key) in [
            (
                "[fair_share]\nhalf_life_minutes = 0\n".to_owned(),
                "fair_share.half_life_minutes",
            ),
            (
                "[fair_share]\ndefault_weight = 0\n".to_owned(),
                "fair_share.default_weight",
            ),
            (
                "[fair_share]\nage_limit_minutes = 0\n".to_owned(),
                "fair_share.age_limit_minutes",
            ),
            ("[fair_share]\nhalf_life = 3\n".to_owned(), "half_life"),
            (
                account("a", 1) + &account("a", 2),
                "fair_share.accounts[1].name",
            ),
            (
                account("a", 1) + &account("", 2),
                "fair_share.accounts[1].name",
            ),
            (account("a", 0), "fair_share.accounts[0].weight"),
            (
                "[[fair_share.accounts]]\nname = \"a\"\n".to_owned(),
                "fair_share.accounts[0]",
            ),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn a_warm_pool_of_a_template_or_class_the_fleet_lacks_is_taken_with_a_warning() {
        let c = parse(
            "[[warm]]\ntemplate = \"solaris\"\nclass = \"sim-small\"\ncount = 1\n\
             [[warm]]\ntemplate = \"linux\"\nclass = \"kvm-sparc\"\ncount = 1\n\
             [[warm]]\ntemplate = \"linux\"\nclass = \"sim-small\"\ncount = 1\n",
        )
        .unwrap();
        let warnings = warm_warnings(&c.warm, &default_templates(), &default_hosts());
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("warm[0].template: no configured template named `solaris`"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].starts_with("warm[1].class: no configured host of class `kvm-sparc`"),
            "{warnings:?}"
        );
        assert!(warnings[1].contains("sim-small"), "{warnings:?}");
    }

    #[test]
    fn warm_pools_map_to_the_scheduler_and_bad_entries_are_named() {
        let c = parse(
            "[[warm]]\ntemplate = \"linux\"\nclass = \"sim-small\"\ncount = 3\n\
             [[warm]]\ntemplate = \"linux\"\nclass = \"sim-small\"\ncount = 2\n\
             vcpus = 8\nmemory_mib = 16384\n",
        )
        .unwrap();
        let s = pinned_scheduler_config(&c.scheduler, None, &[], None, &c.warm).unwrap();
        assert_eq!(
            s.warm,
            [
                Warm {
                    template: "linux".into(),
                    class: "sim-small".into(),
                    count: 3,
                    shape: None,
                },
                Warm {
                    template: "linux".into(),
                    class: "sim-small".into(),
                    count: 2,
                    shape: Some(Shape {
                        vcpus: 8,
                        memory_mib: 16384
                    }),
                },
            ]
        );
        // Left out, no pools.
        assert!(parse("").unwrap().warm.is_empty());

        let warm = |rest: &str| format!("[[warm]]\n{rest}\n");
        let linux = "template = \"linux\"\nclass = \"sim-small\"";
        for (text, key, says) in [
            (
                warm(&format!("{linux}\ncount = 0")),
                "warm[0].count",
                "must be 1 to 10000, got 0",
            ),
            (
                warm(&format!("{linux}\ncount = 4000000000")),
                "warm[0].count",
                "must be 1 to 10000",
            ),
            (
                warm(&format!("{linux}\ncount = 1\nvcpus = 4")),
                "warm[0].memory_mib",
                "go together",
            ),
            (
                warm(&format!("{linux}\ncount = 1\nvcpus = 0\nmemory_mib = 1024")),
                "warm[0].vcpus",
                "at least 1",
            ),
            (
                warm(&format!("{linux}\ncount = 1")) + &warm(&format!("{linux}\ncount = 2")),
                "warm[1]",
                "a second pool",
            ),
            (
                warm("template = \"\"\nclass = \"sim-small\"\ncount = 1"),
                "warm[0].template",
                "",
            ),
            (
                warm(&format!("{linux}\ncount = 1\nsize = 3")),
                "warm[0]",
                "unknown field `size`",
            ),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(says), "{text}: {err}");
        }
        // A class or template of the configured fleet, not the embedded one.
        let fleet = "[[templates]]\nname = \"ci\"\nguest_os = \"linux\"\nvcpus = 2\nmemory_mib = 2048\n\
             [[hosts]]\nname = \"box-1\"\ndriver = \"sim\"\nvcpus = 8\nmemory_mib = 16384\n";
        let warnings = |warm: &str| {
            let c = parse(&format!("{fleet}[[warm]]\n{warm}\ncount = 2\n")).unwrap();
            let templates = c.templates.clone().unwrap();
            warm_warnings(&c.warm, &templates, &c.hosts.clone().unwrap())
        };
        assert!(warnings("template = \"ci\"\nclass = \"box\"").is_empty());
        let w = warnings("template = \"linux\"\nclass = \"box\"");
        assert!(
            w.len() == 1
                && w[0].contains("warm[0].template")
                && w[0].contains("the templates are: ci"),
            "{w:?}"
        );
    }

    #[test]
    fn images_map_to_the_scheduler_and_bad_entries_are_named() {
        let c = parse(
            "[images]\nstore_pulls_max = 4\nsizes_mib = { linux = 8192, macos = 61440 }\n\
             [[images.classes]]\nclass = \"kvm-x86\"\npull_mbit_s = 10000\nbudget_mib = 204800\n\
             [[images.classes]]\nclass = \"mac-arm\"\npull_mbit_s = 1000\n",
        )
        .unwrap();
        let s = pinned_scheduler_config(&c.scheduler, None, &[], c.images.as_ref(), &[]).unwrap();
        let images = s.images.unwrap();
        assert_eq!(images.mode, ImageMode::Aware, "aware unless told");
        assert_eq!(images.store_pulls_max, 4);
        assert_eq!(
            images.sizes,
            [("linux".to_owned(), 8192), ("macos".to_owned(), 61440)]
        );
        assert_eq!(
            images.classes,
            [
                ImageClass {
                    class: "kvm-x86".into(),
                    pull_mbit_s: 10000,
                    budget_mib: Some(204800),
                    store: IMAGE_STORE_NAME.into(),
                },
                ImageClass {
                    class: "mac-arm".into(),
                    pull_mbit_s: 1000,
                    budget_mib: None,
                    store: IMAGE_STORE_NAME.into(),
                },
            ]
        );
        // Left out, the scheduler does not model images.
        let off = parse("").unwrap();
        let s =
            pinned_scheduler_config(&off.scheduler, None, &[], off.images.as_ref(), &[]).unwrap();
        assert!(s.images.is_none());
        let ignore = parse("[images]\nmode = \"ignore\"\n").unwrap();
        let s = pinned_scheduler_config(&ignore.scheduler, None, &[], ignore.images.as_ref(), &[]);
        assert_eq!(s.unwrap().images.unwrap().mode, ImageMode::Ignore);

        let class = |name: &str, rest: &str| {
            format!("[[images.classes]]\nclass = \"{name}\"\npull_mbit_s = 1000\n{rest}")
        };
        for (text, key) in [
            ("[images]\nmode = \"eager\"\n".to_owned(), "images.mode"),
            (
                "[images]\nsizes_mib = { linux = 0 }\n".to_owned(),
                "images.sizes_mib.linux",
            ),
            (class("a", "") + &class("a", ""), "images.classes[1].class"),
            (class("", ""), "images.classes[0].class"),
            (
                class("a", "budget_mib = 0\n"),
                "images.classes[0].budget_mib",
            ),
            (
                "[[images.classes]]\nclass = \"a\"\npull_mbit_s = 0\n".to_owned(),
                "images.classes[0].pull_mbit_s",
            ),
            (
                "[[images.classes]]\nclass = \"a\"\n".to_owned(),
                "images.classes[0]",
            ),
            ("[images]\nbandwidth = 3\n".to_owned(), "bandwidth"),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn quotas_map_to_the_scheduler_and_bad_entries_are_named() {
        let c = parse(
            "[[quotas]]\naccount = \"qt-base\"\nclass = \"kvm-x86\"\n\
             guarantee = { vcpus = 64, memory_mib = 262144 }\nborrowing_limit = { vcpus = 32 }\n\
             [[quotas]]\naccount = \"*\"\nclass = \"mac-arm\"\nguarantee = { slots = 4 }\n",
        )
        .unwrap();
        let q = quotas_config(&c.quotas).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].account, "qt-base");
        assert_eq!(
            q[0].guarantee,
            QuotaAmounts {
                vcpus: Some(64),
                memory_mib: Some(262_144),
                slots: None
            }
        );
        assert_eq!(q[0].borrowing_limit.vcpus, Some(32));
        assert_eq!(q[1].account, berth_sched::QUOTA_EVERY_ACCOUNT);
        assert_eq!(q[1].borrowing_limit, QuotaAmounts::default());
        let entry = |account: &str, class: &str, rest: &str| {
            format!("[[quotas]]\naccount = \"{account}\"\nclass = \"{class}\"\n{rest}")
        };
        for (text, key) in [
            (
                entry("a", "kvm", "guarantee = { vcpus = -1 }\n"),
                "quotas[0].guarantee.vcpus",
            ),
            (entry("a", "kvm", "") + &entry("a", "kvm", ""), "quotas[1]"),
            (entry("a", "", ""), "quotas[0].class"),
            (entry("", "kvm", ""), "quotas[0].account"),
            (
                entry("a", "kvm", "guarantee = { cpus = 2 }\n"),
                "quotas[0].guarantee",
            ),
            (
                entry(
                    "a",
                    "kvm",
                    "borrowing_limit = { vcpus = 18446744073709551615 }\n",
                ),
                "quotas[0].borrowing_limit.vcpus",
            ),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn the_embedded_fleet_has_sixteen_hosts() {
        assert_eq!(default_hosts().len(), 16);
        assert_eq!(default_templates().len(), 3);
        let c = parse("").unwrap();
        assert!(c.hosts.is_none());
    }
}
