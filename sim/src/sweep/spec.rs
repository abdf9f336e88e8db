//! The sweep spec: a TOML file naming traces, fleets, policies, scheduler settings and seeds,
//! whose cross product is the sweep's runs. Every error names the spec file, the line and the
//! key; fleets and synthetic-trace settings are checked before anything runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use berth_sched::{
    Account, FairShare, ImageMode, Images, Policy, Quota, QuotaAmounts, ScanOrder, Warm, Weights,
};
use berth_traces::{Format, Generator, SynthConfig};
use serde::Deserialize;
use toml::Spanned;

use super::SweepError;
use crate::{Fleet, Profile, SimConfig, provenance};

/// A parsed and checked spec.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The spec file as given, for messages.
    pub name: String,
    /// SHA-256 of the spec file's bytes: shards of one sweep carry it, so that merge can
    /// refuse shards of another.
    pub sha256: String,
    pub seeds: Vec<u64>,
    pub policies: Vec<Policy>,
    pub traces: Vec<TraceSpec>,
    pub fleets: Vec<FleetSpec>,
    pub settings: Vec<SettingsSpec>,
}

#[derive(Clone, Debug)]
pub struct TraceSpec {
    pub name: String,
    pub source: TraceSource,
}

#[derive(Clone, Debug)]
pub enum TraceSource {
    File {
        path: PathBuf,
        format: Format,
        sha256: String,
    },
    /// A synthetic CI workload; its seed is the run's unless the spec fixes one. With a
    /// `load`, its arrival rate is sized for each run's fleet and seed, as `trace synth --load`
    /// sizes it.
    Synth {
        config: SynthConfig,
        fixed_seed: Option<u64>,
        load: Option<f64>,
    },
}

#[derive(Clone, Debug)]
pub struct FleetSpec {
    pub name: String,
    pub fleet: Fleet,
    pub sha256: String,
}

#[derive(Clone, Debug)]
pub struct SettingsSpec {
    pub name: String,
    /// Everything but the policy and the seed, which each run sets.
    pub config: SimConfig,
}

/// One run of the sweep: indices into the spec's lists, the policy and the seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunKey {
    /// Position in the cross product, from 0.
    pub index: usize,
    pub trace: usize,
    pub fleet: usize,
    pub policy: Policy,
    pub settings: usize,
    pub seed: u64,
}

impl Spec {
    /// The cross product in a fixed order: traces, then fleets, policies, settings and seeds
    /// (innermost), each in the spec's order, so that a configuration's seeds are neighbours.
    pub fn runs(&self) -> Vec<RunKey> {
        let mut runs = Vec::new();
        for trace in 0..self.traces.len() {
            for fleet in 0..self.fleets.len() {
                for &policy in &self.policies {
                    for settings in 0..self.settings.len() {
                        for &seed in &self.seeds {
                            runs.push(RunKey {
                                index: runs.len(),
                                trace,
                                fleet,
                                policy,
                                settings,
                                seed,
                            });
                        }
                    }
                }
            }
        }
        runs
    }

    /// `trace/fleet/policy/settings/seed N`, for messages.
    pub fn label(&self, key: &RunKey) -> String {
        format!(
            "{}/{}/{}/{}/seed {}",
            self.traces[key.trace].name,
            self.fleets[key.fleet].name,
            key.policy.name(),
            self.settings[key.settings].name,
            key.seed
        )
    }

    pub fn load(path: &Path) -> Result<Spec, SweepError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SweepError::Io {
            path: name.clone(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Spec::parse(&text, &name, base)
    }

    /// Parses `text` (called `name` in errors); relative paths are relative to `base`.
    pub fn parse(text: &str, name: &str, base: &Path) -> Result<Spec, SweepError> {
        let at = |span: std::ops::Range<usize>, message: String| SweepError::Spec {
            spec: name.to_owned(),
            line: Some(line_of(text, span.start)),
            message,
        };
        let file: SpecFile = toml::from_str(text).map_err(|e| SweepError::Spec {
            spec: name.to_owned(),
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.message().trim_end().to_owned(),
        })?;
        let no_line = |message: String| SweepError::Spec {
            spec: name.to_owned(),
            line: None,
            message,
        };

        let seeds = file.seeds.get_ref().clone();
        if seeds.is_empty() {
            return Err(at(
                file.seeds.span(),
                "`seeds` is empty; give at least one".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        for s in &seeds {
            if !seen.insert(s) {
                return Err(at(file.seeds.span(), format!("`seeds` has {s} twice")));
            }
        }

        let policies = match &file.policies {
            None => vec![Policy::Easy],
            Some(list) => {
                if list.get_ref().is_empty() {
                    return Err(at(list.span(), "`policies` is empty".into()));
                }
                let mut policies = Vec::new();
                for p in list.get_ref() {
                    let policy = Policy::parse(p.get_ref()).ok_or_else(|| {
                        at(
                            p.span(),
                            format!(
                                "`policies`: unknown policy `{}`; expected fcfs, easy, greedy or accasim-easy",
                                p.get_ref()
                            ),
                        )
                    })?;
                    if policies.contains(&policy) {
                        return Err(at(
                            p.span(),
                            format!("`policies` has `{}` twice", p.get_ref()),
                        ));
                    }
                    policies.push(policy);
                }
                policies
            }
        };

        if file.trace.is_empty() {
            return Err(no_line("no `[[trace]]`; give at least one".into()));
        }
        if file.fleet.is_empty() {
            return Err(no_line("no `[[fleet]]`; give at least one".into()));
        }

        let mut names = Names::default();
        let mut traces = Vec::new();
        for entry in &file.trace {
            let e = entry.get_ref();
            names.check("trace", &e.name, &at)?;
            let source = match (&e.path, &e.synth) {
                (Some(p), None) => {
                    let format = match &e.format {
                        None => Format::Berth,
                        Some(f) => f.get_ref().parse().map_err(|m: String| {
                            at(
                                f.span(),
                                format!("trace `{}`: `format`: {m}", e.name.get_ref()),
                            )
                        })?,
                    };
                    let path = base.join(p.get_ref());
                    let sha256 = provenance::trace_file_sha256(&path).map_err(|err| {
                        at(
                            p.span(),
                            format!("trace `{}`: `path`: {err}", e.name.get_ref()),
                        )
                    })?;
                    TraceSource::File {
                        path,
                        format,
                        sha256,
                    }
                }
                (None, Some(s)) => {
                    if let Some(f) = &e.format {
                        return Err(at(
                            f.span(),
                            format!(
                                "trace `{}`: `format` is for trace files, not `synth`",
                                e.name.get_ref()
                            ),
                        ));
                    }
                    let synth = s.get_ref();
                    if let Some(load) = &synth.load {
                        let name = e.name.get_ref();
                        if synth.peak_changes_per_hour.is_some() {
                            return Err(at(
                                load.span(),
                                format!(
                                    "trace `{name}`: give either `synth.load` or `synth.peak_changes_per_hour`, not both"
                                ),
                            ));
                        }
                        let value = *load.get_ref();
                        if !(value.is_finite() && value > 0.0 && value <= 1.0) {
                            return Err(at(
                                load.span(),
                                format!(
                                    "trace `{name}`: `synth.load` must be above 0 and at most 1, got {value}"
                                ),
                            ));
                        }
                    }
                    let defaults = SynthConfig::default();
                    let config = SynthConfig {
                        vms: synth.vms,
                        seed: synth.seed.unwrap_or(0),
                        peak_changes_per_hour: synth
                            .peak_changes_per_hour
                            .unwrap_or(defaults.peak_changes_per_hour),
                        failure_rate: synth.failure_rate.unwrap_or(defaults.failure_rate),
                        hold_share: synth.hold_share.unwrap_or(defaults.hold_share),
                        top_level_share: synth.top_level_share.unwrap_or(defaults.top_level_share),
                        big_changes: synth.big_changes.unwrap_or(0),
                    };
                    Generator::new(config.clone()).map_err(|err| {
                        at(
                            s.span(),
                            format!("trace `{}`: `synth`: {err}", e.name.get_ref()),
                        )
                    })?;
                    TraceSource::Synth {
                        config,
                        fixed_seed: synth.seed,
                        load: synth.load.as_ref().map(|l| *l.get_ref()),
                    }
                }
                _ => {
                    return Err(at(
                        entry.span(),
                        format!(
                            "trace `{}`: give either `path` (a trace file) or `synth` (a synthetic CI workload)",
                            e.name.get_ref()
                        ),
                    ));
                }
            };
            traces.push(TraceSpec {
                name: e.name.get_ref().clone(),
                source,
            });
        }

        let mut fleets = Vec::new();
        for entry in &file.fleet {
            let e = entry.get_ref();
            names.check("fleet", &e.name, &at)?;
            let (fleet, sha256) = match (&e.path, &e.hosts) {
                (Some(p), None) => {
                    let path = base.join(p.get_ref());
                    let fleet = Fleet::load(&path).map_err(|err| {
                        at(p.span(), format!("fleet `{}`: {err}", e.name.get_ref()))
                    })?;
                    let sha256 = provenance::fleet_file_sha256(&path).map_err(|err| {
                        at(p.span(), format!("fleet `{}`: {err}", e.name.get_ref()))
                    })?;
                    (fleet, sha256)
                }
                (None, Some(h)) => {
                    let fleet = Fleet::uniform(h.get_ref()).map_err(|err| {
                        at(
                            h.span(),
                            format!("fleet `{}`: `hosts`: {err}", e.name.get_ref()),
                        )
                    })?;
                    (fleet, provenance::uniform_fleet_sha256(h.get_ref()))
                }
                _ => {
                    return Err(at(
                        entry.span(),
                        format!(
                            "fleet `{}`: give either `path` (a fleet file) or `hosts` (COUNTxCPUS[:MEMORY_MIB])",
                            e.name.get_ref()
                        ),
                    ));
                }
            };
            fleets.push(FleetSpec {
                name: e.name.get_ref().clone(),
                fleet,
                sha256,
            });
        }

        let mut settings = Vec::new();
        if file.settings.is_empty() {
            settings.push(SettingsSpec {
                name: "default".into(),
                config: SimConfig::default(),
            });
        }
        for entry in &file.settings {
            names.check("settings", &entry.name, &at)?;
            // A quota on a class no fleet has bounds nothing: most likely a typo.
            for (i, q) in entry.quotas.iter().enumerate() {
                let class = q.class.get_ref();
                let known = fleets.iter().any(|f| {
                    f.fleet
                        .hosts
                        .iter()
                        .any(|h| berth_sched::host_class(&h.name, &h.labels) == class)
                });
                if !known {
                    return Err(at(
                        q.class.span(),
                        format!(
                            "settings `{}`: `quotas[{i}].class`: no fleet of this spec has a host of class `{class}`",
                            entry.name.get_ref()
                        ),
                    ));
                }
            }
            settings.push(SettingsSpec {
                name: entry.name.get_ref().clone(),
                config: entry.config(&at)?,
            });
        }

        Ok(Spec {
            name: name.to_owned(),
            sha256: provenance::sha256_hex(text.as_bytes()),
            seeds,
            policies,
            traces,
            fleets,
            settings,
        })
    }
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |before| before.matches('\n').count())
        + 1
}

/// Names seen per axis: each unique, and plain enough for file names, CSV and Markdown.
#[derive(Default)]
struct Names(BTreeSet<(&'static str, String)>);

impl Names {
    fn check(
        &mut self,
        axis: &'static str,
        name: &Spanned<String>,
        at: &dyn Fn(std::ops::Range<usize>, String) -> SweepError,
    ) -> Result<(), SweepError> {
        let n = name.get_ref();
        let plain = !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !plain {
            return Err(at(
                name.span(),
                format!("{axis} name `{n}`: use letters, digits, `.`, `_` and `-` only"),
            ));
        }
        if !self.0.insert((axis, n.clone())) {
            return Err(at(name.span(), format!("{axis} `{n}` is defined twice")));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    seeds: Spanned<Vec<u64>>,
    policies: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    trace: Vec<Spanned<TraceEntry>>,
    #[serde(default)]
    fleet: Vec<Spanned<FleetEntry>>,
    #[serde(default)]
    settings: Vec<SettingsEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceEntry {
    name: Spanned<String>,
    path: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    synth: Option<Spanned<SynthEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SynthEntry {
    vms: u64,
    seed: Option<u64>,
    peak_changes_per_hour: Option<f64>,
    failure_rate: Option<f64>,
    hold_share: Option<f64>,
    top_level_share: Option<f64>,
    big_changes: Option<u32>,
    /// The load of the run's fleet's busiest pool, as `trace synth --load`.
    load: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetEntry {
    name: Spanned<String>,
    path: Option<Spanned<String>>,
    hosts: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsEntry {
    name: Spanned<String>,
    latency: Option<Spanned<String>>,
    mtbf_hours: Option<Spanned<f64>>,
    mttr_hours: Option<Spanned<f64>>,
    dev_delay_minutes: Option<Spanned<f64>>,
    scan: Option<Spanned<String>>,
    weights: Option<WeightsEntry>,
    candidates_max: Option<Spanned<u32>>,
    provisioning_per_host_max: Option<Spanned<u32>>,
    probe_failures_max: Option<Spanned<u32>>,
    provision_failures_max: Option<Spanned<u32>>,
    vm_retries_max: Option<u32>,
    aging_step_ms: Option<u64>,
    fair_share: Option<FairShareEntry>,
    #[serde(default)]
    quotas: Vec<QuotaEntry>,
    /// How placement treats base images: `ignore` or `aware` (the fleet file says what they
    /// weigh; without this a fleet that describes images is placed `aware`).
    images: Option<Spanned<String>>,
    /// The size of every warm pool the fleet file names (0: none); absent: the file's sizes.
    warm: Option<u32>,
    /// The measured estimates of starts foresee arrivals: those of the last this many minutes,
    /// replayed (`SimConfig::eta_replay_window_ms`); 0: none.
    eta_replay_window_minutes: Option<Spanned<f64>>,
}

/// A quota, the shape of the daemon's `[[quotas]]`: `quotas = [{ account = "*", class =
/// "kvm-x86", guarantee = { vcpus = 98 }, borrowing_limit = { vcpus = 0 } }]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaEntry {
    account: Spanned<String>,
    class: Spanned<String>,
    #[serde(default)]
    guarantee: QuotaAmountsEntry,
    #[serde(default)]
    borrowing_limit: QuotaAmountsEntry,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaAmountsEntry {
    vcpus: Option<u64>,
    memory_mib: Option<u64>,
    slots: Option<u64>,
}

impl From<&QuotaAmountsEntry> for QuotaAmounts {
    fn from(a: &QuotaAmountsEntry) -> QuotaAmounts {
        QuotaAmounts {
            vcpus: a.vcpus,
            memory_mib: a.memory_mib,
            slots: a.slots,
        }
    }
}

/// Fair share between accounts: `fair_share = { half_life_minutes = 60, age_limit_minutes =
/// 60, accounts = [...] }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FairShareEntry {
    half_life_minutes: Option<Spanned<f64>>,
    age_limit_minutes: Option<Spanned<f64>>,
    default_weight: Option<Spanned<u32>>,
    #[serde(default)]
    accounts: Vec<AccountEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountEntry {
    name: String,
    weight: Spanned<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightsEntry {
    pack: Option<u32>,
    spread: Option<u32>,
    locality: Option<u32>,
}

impl SettingsEntry {
    fn config(
        &self,
        at: &dyn Fn(std::ops::Range<usize>, String) -> SweepError,
    ) -> Result<SimConfig, SweepError> {
        let name = self.name.get_ref();
        let mut config = SimConfig::default();
        if let Some(l) = &self.latency {
            config.latency = match l.get_ref().as_str() {
                "zero" => Profile::Zero,
                "default" => Profile::Default,
                other => {
                    return Err(at(
                        l.span(),
                        format!(
                            "settings `{name}`: `latency`: unknown `{other}`; expected zero or default"
                        ),
                    ));
                }
            };
        }
        let hours_ms = |v: &Spanned<f64>, key: &str, per_hour: f64| {
            let h = *v.get_ref();
            if h.is_finite() && h > 0.0 {
                Ok((h / per_hour * 3_600_000.0).round() as u64)
            } else {
                Err(at(
                    v.span(),
                    format!("settings `{name}`: `{key}` must be a positive number, got {h}"),
                ))
            }
        };
        if let Some(v) = &self.mtbf_hours {
            config.mtbf_ms = Some(hours_ms(v, "mtbf_hours", 1.0)?);
        }
        if let Some(v) = &self.mttr_hours {
            config.mttr_ms = hours_ms(v, "mttr_hours", 1.0)?;
        }
        if let Some(v) = &self.dev_delay_minutes {
            config.dev_delay_ms = hours_ms(v, "dev_delay_minutes", 60.0)?;
        }
        if let Some(v) = &self.eta_replay_window_minutes {
            config.eta_replay_window_ms = if *v.get_ref() == 0.0 {
                None
            } else {
                Some(hours_ms(v, "eta_replay_window_minutes", 60.0)?)
            };
        }
        let sched = &mut config.sched;
        if let Some(s) = &self.scan {
            sched.scan = match s.get_ref().as_str() {
                "lowest" => ScanOrder::Lowest,
                "rotate" => ScanOrder::Rotate,
                other => {
                    return Err(at(
                        s.span(),
                        format!(
                            "settings `{name}`: `scan`: unknown `{other}`; expected lowest or rotate"
                        ),
                    ));
                }
            };
        }
        if let Some(w) = &self.weights {
            let Weights {
                pack,
                spread,
                locality,
            } = sched.weights;
            sched.weights = Weights {
                pack: w.pack.unwrap_or(pack),
                spread: w.spread.unwrap_or(spread),
                locality: w.locality.unwrap_or(locality),
            };
        }
        let at_least_one = |v: &Spanned<u32>, key: &str| {
            if *v.get_ref() >= 1 {
                Ok(*v.get_ref())
            } else {
                Err(at(
                    v.span(),
                    format!("settings `{name}`: `{key}` must be at least 1"),
                ))
            }
        };
        if let Some(v) = &self.candidates_max {
            sched.candidates_max = at_least_one(v, "candidates_max")?;
        }
        if let Some(v) = &self.provisioning_per_host_max {
            sched.provisioning_per_host_max = at_least_one(v, "provisioning_per_host_max")?;
        }
        if let Some(v) = &self.probe_failures_max {
            sched.probe_failures_max = at_least_one(v, "probe_failures_max")?;
        }
        if let Some(v) = &self.provision_failures_max {
            sched.provision_failures_max = at_least_one(v, "provision_failures_max")?;
        }
        if let Some(v) = self.vm_retries_max {
            sched.vm_retries_max = v;
        }
        if let Some(v) = self.aging_step_ms {
            sched.aging_step_ms = v;
        }
        if let Some(f) = &self.fair_share {
            let mut fair = FairShare::default();
            if let Some(h) = &f.half_life_minutes {
                let minutes = *h.get_ref();
                if !(minutes.is_finite() && minutes > 0.0) {
                    return Err(at(
                        h.span(),
                        format!(
                            "settings `{name}`: `fair_share.half_life_minutes` must be a positive number, got {minutes}"
                        ),
                    ));
                }
                fair.half_life_ms = (minutes * 60_000.0).round() as u64;
            }
            if let Some(a) = &f.age_limit_minutes {
                let minutes = *a.get_ref();
                if !(minutes.is_finite() && minutes > 0.0) {
                    return Err(at(
                        a.span(),
                        format!(
                            "settings `{name}`: `fair_share.age_limit_minutes` must be a positive number, got {minutes}"
                        ),
                    ));
                }
                fair.age_limit_ms = Some((minutes * 60_000.0).round() as u64);
            }
            if let Some(w) = &f.default_weight {
                fair.default_weight = at_least_one(w, "fair_share.default_weight")?;
            }
            for a in &f.accounts {
                fair.accounts.push(Account {
                    name: a.name.clone(),
                    weight: at_least_one(&a.weight, "fair_share.accounts.weight")?,
                });
            }
            sched.fair_share = Some(fair);
        }
        if let Some(m) = &self.images {
            let mode = ImageMode::parse(m.get_ref()).ok_or_else(|| {
                at(
                    m.span(),
                    format!(
                        "settings `{name}`: `images`: unknown `{}`; expected ignore or aware",
                        m.get_ref()
                    ),
                )
            })?;
            sched.images = Some(Images::new(mode));
        }
        if let Some(n) = self.warm {
            sched.warm = vec![Warm {
                template: crate::engine::WARM_EVERY_POOL.to_owned(),
                class: crate::engine::WARM_EVERY_POOL.to_owned(),
                count: n,
                shape: None,
            }];
        }
        let mut seen = BTreeSet::new();
        for (i, q) in self.quotas.iter().enumerate() {
            let (account, class) = (q.account.get_ref(), q.class.get_ref());
            if account.is_empty() {
                return Err(at(
                    q.account.span(),
                    format!("settings `{name}`: `quotas[{i}].account` must not be empty"),
                ));
            }
            if !seen.insert((account.clone(), class.clone())) {
                return Err(at(
                    q.class.span(),
                    format!(
                        "settings `{name}`: `quotas[{i}]`: account `{account}` has a second quota on class `{class}`"
                    ),
                ));
            }
            sched.quotas.push(Quota {
                account: account.clone(),
                class: class.clone(),
                guarantee: (&q.guarantee).into(),
                borrowing_limit: (&q.borrowing_limit).into(),
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Spec, SweepError> {
        Spec::parse(text, "spec.toml", Path::new("."))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const MINIMAL: &str = "seeds = [1, 2]\n[[trace]]\nname = \"ci\"\nsynth = { vms = 50 }\n[[fleet]]\nname = \"small\"\nhosts = \"4x16\"\n";

    #[test]
    fn the_cross_product_has_seeds_innermost() {
        let text = format!(
            "policies = [\"fcfs\", \"easy\"]\n{MINIMAL}[[settings]]\nname = \"a\"\n[[settings]]\nname = \"b\"\nscan = \"rotate\"\n"
        );
        let spec = parse(&text).unwrap();
        let runs = spec.runs();
        assert_eq!(runs.len(), 2 * 2 * 2);
        assert_eq!(spec.label(&runs[0]), "ci/small/fcfs/a/seed 1");
        assert_eq!(spec.label(&runs[1]), "ci/small/fcfs/a/seed 2");
        assert_eq!(spec.label(&runs[2]), "ci/small/fcfs/b/seed 1");
        assert_eq!(spec.label(&runs[7]), "ci/small/easy/b/seed 2");
        assert_eq!(spec.settings[1].config.sched.scan, ScanOrder::Rotate);
    }

    #[test]
    fn the_example_spec_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sweep-ci.toml");
        let spec = Spec::load(&path).unwrap();
        assert_eq!(spec.runs().len(), 30);
        assert_eq!(spec.fleets[0].fleet.hosts.len(), 65);
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let e = err(&MINIMAL.replace("vms = 50", "vms = 50, colour = 1"));
        assert!(e.starts_with("spec.toml:4:") && e.contains("colour"), "{e}");
        let e = err(&format!("policies = [\"easy\", \"fifo\"]\n{MINIMAL}"));
        assert!(e.starts_with("spec.toml:1:") && e.contains("`fifo`"), "{e}");
        let e = err(&MINIMAL.replace("4x16", "4by16"));
        assert!(
            e.starts_with("spec.toml:7:") && e.contains("COUNTxCPUS"),
            "{e}"
        );
        let e = err(&MINIMAL.replace("vms = 50", "vms = 0"));
        assert!(e.starts_with("spec.toml:4:") && e.contains("`vms`"), "{e}");
        let e = err(&MINIMAL.replace("synth = { vms = 50 }", "path = \"/nonexistent.jsonl\""));
        assert!(
            e.starts_with("spec.toml:4:") && e.contains("/nonexistent.jsonl"),
            "{e}"
        );
        let e = err(&MINIMAL.replace("seeds = [1, 2]", "seeds = [1, 1]"));
        assert!(e.starts_with("spec.toml:1:") && e.contains("twice"), "{e}");
        let e = err(&format!(
            "{MINIMAL}[[fleet]]\nname = \"small\"\nhosts = \"1x1\"\n"
        ));
        assert!(
            e.starts_with("spec.toml:9:") && e.contains("fleet `small` is defined twice"),
            "{e}"
        );
        let e = err(&format!(
            "{MINIMAL}[[settings]]\nname = \"s\"\nmtbf_hours = -1.0\n"
        ));
        assert!(
            e.starts_with("spec.toml:10:") && e.contains("mtbf_hours"),
            "{e}"
        );
        let e = err("seeds = [1]\n[[fleet]]\nname = \"f\"\nhosts = \"1x1\"\n");
        assert!(e.contains("no `[[trace]]`"), "{e}");
        let e = err(&MINIMAL.replace("synth = { vms = 50 }", ""));
        assert!(
            e.starts_with("spec.toml:2:") && e.contains("either `path`"),
            "{e}"
        );
        let e = err(&MINIMAL.replace("vms = 50", "vms = 50, load = 1.5"));
        assert!(
            e.starts_with("spec.toml:4:") && e.contains("`synth.load`") && e.contains("1.5"),
            "{e}"
        );
        let e = err(&MINIMAL.replace(
            "vms = 50",
            "vms = 50, load = 0.5, peak_changes_per_hour = 3.0",
        ));
        assert!(
            e.starts_with("spec.toml:4:") && e.contains("not both"),
            "{e}"
        );
    }

    #[test]
    fn the_eta_replay_window_is_a_setting() {
        let spec = parse(&format!(
            "{MINIMAL}[[settings]]\nname = \"a\"\neta_replay_window_minutes = 60\n\
             [[settings]]\nname = \"b\"\neta_replay_window_minutes = 0\n\
             [[settings]]\nname = \"c\"\n"
        ))
        .unwrap();
        let windows: Vec<_> = spec
            .settings
            .iter()
            .map(|s| s.config.eta_replay_window_ms)
            .collect();
        assert_eq!(windows, [Some(3_600_000), None, None]);
        let e = err(&format!(
            "{MINIMAL}[[settings]]\nname = \"s\"\neta_replay_window_minutes = -5.0\n"
        ));
        assert!(
            e.starts_with("spec.toml:10:") && e.contains("eta_replay_window_minutes"),
            "{e}"
        );
    }

    #[test]
    fn the_quota_example_spec_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sweep-quota.toml");
        let spec = Spec::load(&path).unwrap();
        assert_eq!(spec.runs().len(), 5 * 4);
        let quotas = &spec.settings[2].config.sched.quotas;
        assert_eq!(quotas.len(), 4);
        assert_eq!(quotas[0].account, berth_sched::QUOTA_EVERY_ACCOUNT);
        assert_eq!(quotas[0].guarantee.vcpus, Some(98));
        assert_eq!(quotas[0].borrowing_limit, QuotaAmounts::default());
        assert!(spec.settings[1].config.sched.quotas.is_empty());
        // Quotas are part of what a run's settings digest covers.
        assert_ne!(
            provenance::settings_sha256(&spec.settings[1].config),
            provenance::settings_sha256(&spec.settings[2].config)
        );
    }

    #[test]
    fn the_age_limit_example_spec_parses_and_a_bad_limit_is_named() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sweep-age.toml");
        let spec = Spec::load(&path).unwrap();
        assert_eq!(spec.runs().len(), 5 * 8);
        let fair = |i: usize| spec.settings[i].config.sched.fair_share.clone();
        assert!(fair(0).is_none());
        assert_eq!(fair(1).unwrap().age_limit_ms, Some(30 * 60_000));
        assert_eq!(fair(7).unwrap().age_limit_ms, Some(720 * 60_000));
        // The limit is part of what a run's settings digest covers.
        assert_ne!(
            provenance::settings_sha256(&spec.settings[4].config),
            provenance::settings_sha256(&spec.settings[5].config)
        );
        let e = err(&format!(
            "{MINIMAL}[[settings]]\nname = \"a\"\nfair_share = {{ age_limit_minutes = 0 }}\n"
        ));
        assert!(
            e.contains("fair_share.age_limit_minutes") && e.contains("got 0"),
            "{e}"
        );
    }

    #[test]
    fn the_warm_example_spec_sets_every_pool_and_each_size_has_its_digest() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sweep-warm.toml");
        let spec = Spec::load(&path).unwrap();
        assert_eq!(spec.runs().len(), 5 * 6);
        let fleet = &spec.fleets[0].fleet;
        assert_eq!(fleet.warm.len(), 5, "a pool per Linux shape and KVM class");
        let warm = |i: usize| spec.settings[i].config.sched.warm.clone();
        assert_eq!(warm(0)[0].count, 0);
        assert_eq!(warm(5)[0].count, 64);
        assert_eq!(warm(5)[0].template, crate::engine::WARM_EVERY_POOL);
        assert_ne!(
            provenance::settings_sha256(&spec.settings[1].config),
            provenance::settings_sha256(&spec.settings[2].config)
        );
        let e = err(&format!("{MINIMAL}[[settings]]\nname = \"a\"\nwarm = -1\n"));
        assert!(e.contains("-1") && e.contains("expected u32"), "{e}");
    }

    #[test]
    fn the_images_example_spec_parses_and_a_bad_mode_is_named() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sweep-images.toml");
        let spec = Spec::load(&path).unwrap();
        assert_eq!(spec.runs().len(), 2 * 5 * 2);
        let fleet = &spec.fleets[0].fleet;
        assert_eq!(fleet.hosts.len(), 65);
        // Not every host starts with every image.
        assert!(fleet.hosts.iter().any(|h| h.images.is_empty()));
        assert!(
            fleet
                .images
                .as_ref()
                .is_some_and(|i| i.store_pulls_max == 4)
        );
        let mode = |i: usize| {
            spec.settings[i]
                .config
                .sched
                .images
                .as_ref()
                .map(|m| m.mode)
        };
        assert_eq!(mode(0), Some(ImageMode::Ignore));
        assert_eq!(mode(1), Some(ImageMode::Aware));
        assert_ne!(
            provenance::settings_sha256(&spec.settings[0].config),
            provenance::settings_sha256(&spec.settings[1].config)
        );
        let e = err(&format!(
            "{MINIMAL}[[settings]]\nname = \"a\"\nimages = \"smart\"\n"
        ));
        assert!(
            e.contains("`images`: unknown `smart`; expected ignore or aware"),
            "{e}"
        );
    }

    #[test]
    fn bad_quotas_are_named_with_their_line() {
        let e = err(&format!(
            "{MINIMAL}[[settings]]\nname = \"q\"\nquotas = [{{ account = \"*\", class = \"kvm\" }}]\n"
        ));
        assert!(
            e.starts_with("spec.toml:10:")
                && e.contains("`quotas[0].class`")
                && e.contains("`kvm`"),
            "{e}"
        );
        let twice = "quotas = [{ account = \"a\", class = \"host\" }, { account = \"a\", class = \"host\" }]";
        let e = err(&format!("{MINIMAL}[[settings]]\nname = \"q\"\n{twice}\n"));
        assert!(e.contains("second quota on class `host`"), "{e}");
        let e = err(&format!(
            "{MINIMAL}[[settings]]\nname = \"q\"\nquotas = [{{ account = \"a\", class = \"host\", guarantee = {{ vcpus = -2 }} }}]\n"
        ));
        assert!(e.contains("spec.toml:10"), "{e}");
        let ok = parse(&format!(
            "{MINIMAL}[[settings]]\nname = \"q\"\nquotas = [{{ account = \"a\", class = \"host\", guarantee = {{ vcpus = 2 }} }}]\n"
        ))
        .unwrap();
        assert_eq!(ok.settings[0].config.sched.quotas[0].class, "host");
    }

    #[test]
    fn every_example_spec_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut found = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("sweep-") && name.ends_with(".toml") {
                found += 1;
                // A spec replaying a published trace needs the shared traces beside the
                // repository; where they are not, it cannot be loaded here.
                let text = std::fs::read_to_string(&path).unwrap();
                let missing = text
                    .lines()
                    .filter_map(|l| l.trim().strip_prefix("path = \""))
                    .filter_map(|l| l.strip_suffix('"'))
                    .filter(|p| p.contains("shared/traces"))
                    .map(|p| dir.join(p))
                    .find(|p| !p.is_file());
                if let Some(trace) = missing {
                    berth_testkit::skip_or_fail(format_args!(
                        "{name}: {} not found (the shared traces sit beside the repository)",
                        trace.display()
                    ));
                    continue;
                }
                let spec = Spec::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(!spec.runs().is_empty(), "{name}");
            }
        }
        assert!(
            found >= 7,
            "only {found} example specs found in {}",
            dir.display()
        );
    }

    #[test]
    fn the_weighted_example_gives_the_integration_account_its_share() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sweep-weighted.toml");
        let spec = Spec::load(&path).unwrap();
        assert_eq!(spec.runs().len(), 5 * 3);
        let fair = spec.settings[1].config.sched.fair_share.as_ref().unwrap();
        assert_eq!(fair.accounts.len(), 1);
        assert_eq!(spec.settings[2].config.sched.quotas.len(), 8);
    }

    #[test]
    fn the_fair_share_example_spec_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sweep-fair.toml");
        let spec = Spec::load(&path).unwrap();
        assert_eq!(spec.runs().len(), 5 * 3);
        assert!(matches!(
            spec.traces[0].source,
            TraceSource::Synth { load: Some(_), .. }
        ));
    }
}
