//! Synthetic CI workload: staged changes arriving on a weekly rhythm, each fanning out into builds and the tests that wait for them.
//!
//! The shape follows DESIGN.md's "What a real CI workload looks like" (facts from the Qt
//! project's public CI configuration). Every number below that is not from there is a modelling
//! assumption, named and commented where it is defined; change them there, not in the code.
//!
//! - Changes arrive as a non-homogeneous Poisson process whose rate follows an hourly weekday
//!   profile, lower at weekends; time 0 is a Monday 00:00. Arrivals come from their own random
//!   stream by inverting the cumulative rate ([`peak_hours_until`]), so the rate stretches or
//!   compresses time and nothing else: the same seed gives the same changes at any rate, which
//!   is what lets `berth trace synth --load` size the rate for a fleet.
//! - Each change asks at once for its whole platform configuration: 24 host builds, 11 cross
//!   builds waiting for a host build, and 20 test-only jobs waiting for a build: two levels
//!   mostly, three for tests of cross builds. All of a change's records carry the change's
//!   arrival time, so the stream stays in time order; `after` delays the dependents in replay.
//! - A failed build's dependents are never requested (CI stops there), so they are left out.
//! - Now and then a change to the top-level repository moves dozens of modules at once: each
//!   configuration is then one request for as many VMs as modules moved (thousands in all).
//!
//! The same seed and config give the same records byte for byte on a given platform. Sampling
//! uses `ln`, `exp`, `sqrt` and `cos` from the platform's maths library, which may differ in the
//! last bit between platforms; rounding to whole milliseconds hides nearly all of that.

use std::collections::{BTreeMap, VecDeque};
use std::f64::consts::PI;

use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64;

use crate::{Hold, Outcome, Record, RecordBody, RequestRecord, TraceHeader};
use Role::{CrossBuild, HostBuild, Test};

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;
const WEEK_HOURS: usize = 7 * 24;
const WEEK_MS: u64 = 7 * DAY_MS;

/// Mixed into the seed of the arrival stream, so that it differs from the content stream.
const ARRIVAL_SEED_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

/// Arrival rate by hour of a weekday, as a share of the peak rate (hour 0 is midnight).
/// Assumption: one main time zone's working day with a lunch dip, evening work tapering off,
/// and a floor at night from contributors elsewhere.
const WEEKDAY_PROFILE: [f64; 24] = [
    0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.3, // 00–07
    0.7, 1.0, 1.0, 1.0, 0.7, 0.9, 1.0, 1.0, // 08–15
    0.9, 0.7, 0.5, 0.35, 0.3, 0.25, 0.2, 0.15, // 16–23
];

/// Saturday and Sunday run at this share of the weekday profile (assumption).
const WEEKEND_FACTOR: f64 = 0.2;

/// Peak arrival rate by default. Assumption, calibrated so that a simulated year holds about
/// 4 million VMs, the reference deployment's yearly count (DESIGN.md).
const DEFAULT_PEAK_CHANGES_PER_HOUR: f64 = 14.0;

/// Share of requests whose job fails, by default (assumption).
const DEFAULT_FAILURE_RATE: f64 = 0.05;

/// Share of ordinary changes whose author asks for breakpoints, by default (assumption).
const DEFAULT_HOLD_SHARE: f64 = 0.1;

/// Share of changes that go to the top-level repository, by default (DESIGN.md's "now and
/// then", taken as 2%).
const DEFAULT_TOP_LEVEL_SHARE: f64 = 0.02;

/// How many modules a top-level change moves, inclusive: 20–45 modules × 55 configurations
/// gives 1,100–2,475 VMs, around the "over 2,000 VMs for one change" of DESIGN.md.
const TOP_LEVEL_MODULES: (u64, u64) = (20, 45);

/// Distinct developers who author changes (assumption); they are requesters and hold owners.
const N_DEVELOPERS: u64 = 300;

/// The requester of top-level changes: an integration bot, which never asks for breakpoints.
/// It is also their account.
const INTEGRATION_REQUESTER: &str = "integration";

/// Teams the developers belong to, for fair share (assumption): developer `dev-N` works in
/// team `team-K`, K = (N - 1) mod N_TEAMS + 1, so each team holds 25 developers.
const N_TEAMS: u64 = 12;

/// Modules a big change (`SynthConfig::big_changes`) moves: 36 modules × 55 configurations
/// = 1,980 VMs when no build fails, the "2,000-VM change" of DESIGN.md.
const BIG_CHANGE_MODULES: u64 = 36;

/// How long a breakpoint is kept for its owner (assumption: an afternoon's look).
const HOLD_TTL_MS: u64 = 2 * HOUR_MS;

/// A dependent request arrives this long after its dependency ends, inclusive range
/// (assumption: the CI coordinator's reaction time).
const THINK_MS: (u64, u64) = (2_000, 20_000);

/// A failing job stops somewhere between this share of its normal duration and the end
/// (assumption).
const FAILED_RUN_SHARE_MIN: f64 = 0.1;

/// Spread (σ of the log) of build and test durations around their medians: builds are steady
/// (most within ±40%), tests vary more (assumption).
const BUILD_DURATION_SIGMA: f64 = 0.35;
const TEST_DURATION_SIGMA: f64 = 0.5;

/// VM shapes: vCPUs and MiB (assumption; DESIGN.md says only that a few jobs ask for larger VMs).
const BUILD_SHAPE: (u32, u64) = (8, 16 * 1024);
const LARGE_BUILD_SHAPE: (u32, u64) = (16, 64 * 1024);
const TEST_SHAPE: (u32, u64) = (4, 8 * 1024);

/// Knobs of the synthetic workload; [`SynthConfig::new`] fills the rest with the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Stop after this many VMs in all; the last change is cut short to hit it exactly.
    pub vms: u64,
    pub seed: u64,
    /// Changes per hour at the busiest hours of a weekday.
    pub peak_changes_per_hour: f64,
    /// Share of requests whose job fails, 0 to 1.
    pub failure_rate: f64,
    /// Share of ordinary changes whose requests hold failed VMs for their author, 0 to 1.
    pub hold_share: f64,
    /// Share of changes to the top-level repository (thousands of VMs each), 0 to 1.
    pub top_level_share: f64,
    /// Top-level changes of about 2,000 VMs each that land together at a weekday peak: at the
    /// first change arriving in a peak hour after half of the trace's VMs, and the next ones.
    pub big_changes: u32,
}

impl SynthConfig {
    pub fn new(vms: u64, seed: u64) -> Self {
        SynthConfig {
            vms,
            seed,
            ..SynthConfig::default()
        }
    }
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            vms: 10_000,
            seed: 0,
            peak_changes_per_hour: DEFAULT_PEAK_CHANGES_PER_HOUR,
            failure_rate: DEFAULT_FAILURE_RATE,
            hold_share: DEFAULT_HOLD_SHARE,
            top_level_share: DEFAULT_TOP_LEVEL_SHARE,
            big_changes: 0,
        }
    }
}

/// A config value out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("synthetic workload: `{field}` is {value}; expected {expected}")]
pub struct SynthError {
    pub field: &'static str,
    pub value: f64,
    pub expected: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    /// Built natively; starts as soon as the change arrives.
    HostBuild,
    /// Cross-compiled on top of a host build (Android, iOS, embedded targets).
    CrossBuild,
    /// Tests of a build's output, often on another image of the same OS.
    Test,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Size {
    Standard,
    Large,
}

/// Rows of the platform configuration: `n` configurations of a role, template and
/// architecture, waiting for a configuration of `on` (chosen round-robin among the matching
/// earlier ones). Counts give DESIGN.md's shares: 55 configurations, 35 builds (24 host, 11
/// cross) and 20 tests; 29 Linux (53%), 17 macOS (31%), 9 Windows (16%); 22 aarch64 (40%),
/// 13 of them macOS. Two builds ask for larger VMs.
struct Row {
    role: Role,
    template: &'static str,
    arch: &'static str,
    size: Size,
    n: usize,
    on: Option<(Role, &'static str, &'static str)>,
}

const fn row(role: Role, template: &'static str, arch: &'static str, n: usize) -> Row {
    Row {
        role,
        template,
        arch,
        size: Size::Standard,
        n,
        on: None,
    }
}

const fn on(mut r: Row, role: Role, template: &'static str, arch: &'static str) -> Row {
    r.on = Some((role, template, arch));
    r
}

const fn large(mut r: Row) -> Row {
    r.size = Size::Large;
    r
}

const X86: &str = "x86_64";
const ARM: &str = "aarch64";

/// In dependency order: a row only waits for rows above it.
const PLATFORM: [Row; 21] = [
    row(HostBuild, "linux", X86, 8),
    large(row(HostBuild, "linux", X86, 2)),
    row(HostBuild, "linux", ARM, 3),
    row(HostBuild, "windows", X86, 3),
    row(HostBuild, "windows", ARM, 1),
    row(HostBuild, "macos", ARM, 5),
    row(HostBuild, "macos", X86, 2),
    on(row(CrossBuild, "linux", X86, 5), HostBuild, "linux", X86),
    on(row(CrossBuild, "linux", ARM, 1), HostBuild, "linux", ARM),
    on(row(CrossBuild, "macos", ARM, 3), HostBuild, "macos", ARM),
    on(
        row(CrossBuild, "windows", X86, 2),
        HostBuild,
        "windows",
        X86,
    ),
    on(row(Test, "linux", X86, 6), HostBuild, "linux", X86),
    on(row(Test, "linux", X86, 1), CrossBuild, "linux", X86),
    on(row(Test, "linux", ARM, 2), HostBuild, "linux", ARM),
    on(row(Test, "linux", ARM, 1), CrossBuild, "linux", ARM),
    on(row(Test, "macos", ARM, 4), HostBuild, "macos", ARM),
    on(row(Test, "macos", ARM, 1), CrossBuild, "macos", ARM),
    on(row(Test, "macos", X86, 2), HostBuild, "macos", X86),
    on(row(Test, "windows", X86, 1), HostBuild, "windows", X86),
    on(row(Test, "windows", X86, 1), CrossBuild, "windows", X86),
    on(row(Test, "windows", ARM, 1), HostBuild, "windows", ARM),
];

/// Median duration of a configuration's job (assumption: builds of 20–40 minutes, Windows
/// slowest; tests shorter).
fn median_ms(role: Role, template: &str) -> u64 {
    let minutes = match (role, template) {
        (HostBuild, "windows") => 40,
        (HostBuild, "macos") => 30,
        (HostBuild, _) => 25,
        (CrossBuild, _) => 20,
        (Test, "windows") => 20,
        (Test, "macos") => 15,
        (Test, _) => 12,
    };
    minutes * MINUTE_MS
}

/// One configuration of the platform, with its dependency resolved to an index.
#[derive(Debug, Clone, Copy)]
struct Config {
    role: Role,
    template: &'static str,
    arch: &'static str,
    vcpus: u32,
    memory_mib: u64,
    median_ms: u64,
    sigma: f64,
    after: Option<usize>,
}

fn platform() -> Vec<Config> {
    let mut configs: Vec<Config> = Vec::with_capacity(PLATFORM.iter().map(|r| r.n).sum());
    // How many dependents each (role, template, arch) has been given so far, for round-robin.
    let mut handed_out: BTreeMap<(Role, &str, &str), usize> = BTreeMap::new();
    for r in &PLATFORM {
        let (vcpus, memory_mib) = match (r.role, r.size) {
            (_, Size::Large) => LARGE_BUILD_SHAPE,
            (Test, Size::Standard) => TEST_SHAPE,
            (_, Size::Standard) => BUILD_SHAPE,
        };
        for _ in 0..r.n {
            let after = r.on.and_then(|(role, template, arch)| {
                let candidates: Vec<usize> = (0..configs.len())
                    .filter(|&i| {
                        let c = &configs[i];
                        c.role == role && c.template == template && c.arch == arch
                    })
                    .collect();
                let turn = handed_out.entry((role, template, arch)).or_insert(0);
                let pick = candidates.get(*turn % candidates.len().max(1)).copied();
                *turn += 1;
                pick
            });
            configs.push(Config {
                role: r.role,
                template: r.template,
                arch: r.arch,
                vcpus,
                memory_mib,
                median_ms: median_ms(r.role, r.template),
                sigma: if r.role == Test {
                    TEST_DURATION_SIGMA
                } else {
                    BUILD_DURATION_SIGMA
                },
                after,
            });
        }
    }
    configs
}

/// What became of a configuration in the current change.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Requested {
        id: u64,
        failed: bool,
    },
    /// Not requested: what it waits for failed or was not requested.
    Skipped,
}

/// Generates the synthetic workload, one change at a time, as time-ordered records.
///
/// Memory is one change's records (55 at most) whatever `vms` is.
pub struct Generator {
    config: SynthConfig,
    header: TraceHeader,
    platform: Vec<Config>,
    /// Draws what each change asks for.
    rng: Pcg64,
    /// Draws when changes arrive, apart from `rng` so that the rate changes only the times.
    arrival_rng: Pcg64,
    /// The last arrival on the cumulative-rate scale ([`peak_hours_until`]).
    arrival_peak_hours: f64,
    clock_ms: u64,
    next_id: u64,
    /// The number of the next change, for the requests' `change` id (`c1`, `c2`, …).
    next_change: u64,
    big_changes_left: u32,
    vms_left: u64,
    queue: VecDeque<Record>,
    fates: Vec<Fate>,
}

impl Generator {
    pub fn new(config: SynthConfig) -> Result<Self, SynthError> {
        if config.vms == 0 {
            return Err(SynthError {
                field: "vms",
                value: 0.0,
                expected: "at least 1",
            });
        }
        let rate_ok =
            config.peak_changes_per_hour.is_finite() && config.peak_changes_per_hour > 0.0;
        if !rate_ok {
            return Err(SynthError {
                field: "peak_changes_per_hour",
                value: config.peak_changes_per_hour,
                expected: "a positive number",
            });
        }
        for (field, value) in [
            ("failure_rate", config.failure_rate),
            ("hold_share", config.hold_share),
            ("top_level_share", config.top_level_share),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(SynthError {
                    field,
                    value,
                    expected: "a share from 0 to 1",
                });
            }
        }
        let header = TraceHeader::new(
            true,
            format!(
                "berth synthetic CI workload v1: seed {}, {} VMs, peak {} changes/h, failure rate {}, hold share {}, top-level share {}",
                config.seed,
                config.vms,
                config.peak_changes_per_hour,
                config.failure_rate,
                config.hold_share,
                config.top_level_share
            ) + &if config.big_changes > 0 {
                format!(", big changes {}", config.big_changes)
            } else {
                String::new()
            },
        );
        let platform = platform();
        let big_changes_left = config.big_changes;
        Ok(Generator {
            rng: Pcg64::seed_from_u64(config.seed),
            arrival_rng: Pcg64::seed_from_u64(config.seed ^ ARRIVAL_SEED_SALT),
            arrival_peak_hours: 0.0,
            vms_left: config.vms,
            header,
            fates: Vec::with_capacity(platform.len()),
            platform,
            config,
            clock_ms: 0,
            next_id: 1,
            next_change: 1,
            big_changes_left,
            queue: VecDeque::new(),
        })
    }

    /// The header for a trace of this workload: marked synthetic, the config as its source.
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// Advances the clock to the next change's arrival: unit-rate exponential gaps on the
    /// cumulative-rate scale, mapped back to time.
    fn next_arrival(&mut self) -> u64 {
        self.arrival_peak_hours +=
            exponential(&mut self.arrival_rng) / self.config.peak_changes_per_hour;
        self.clock_ms = self
            .clock_ms
            .max(time_at_peak_hours(self.arrival_peak_hours));
        self.clock_ms
    }

    /// Changes generated so far.
    pub fn n_changes(&self) -> u64 {
        self.next_change - 1
    }

    /// Queues the records of one change.
    fn generate_change(&mut self) {
        let at_ms = self.next_arrival();
        let top_level = chance(&mut self.rng, self.config.top_level_share);
        // A big change replaces the change drawn here; the draws stay the same, so the rest
        // of the trace does not move.
        let at_peak = hour_share((at_ms / HOUR_MS) as usize % WEEK_HOURS) >= 1.0;
        let big = self.big_changes_left > 0
            && self.vms_left <= self.config.vms / 2
            && (at_peak || self.big_changes_left < self.config.big_changes);
        let (modules, requester, account, hold) = if top_level {
            let modules = uniform_between(&mut self.rng, TOP_LEVEL_MODULES);
            let bot = INTEGRATION_REQUESTER.to_owned();
            (modules, bot.clone(), bot, None)
        } else {
            let n = uniform_between(&mut self.rng, (1, N_DEVELOPERS));
            let author = format!("dev-{n}");
            let team = format!("team-{}", (n - 1) % N_TEAMS + 1);
            let hold = chance(&mut self.rng, self.config.hold_share).then(|| Hold {
                owner: author.clone(),
                ttl_ms: HOLD_TTL_MS,
            });
            (1, author, team, hold)
        };
        let (modules, requester, account, hold) = if big {
            self.big_changes_left -= 1;
            let bot = INTEGRATION_REQUESTER.to_owned();
            (BIG_CHANGE_MODULES, bot.clone(), bot, None)
        } else {
            (modules, requester, account, hold)
        };

        let change = format!("c{}", self.next_change);
        self.next_change += 1;
        self.fates.clear();
        for idx in 0..self.platform.len() {
            if self.vms_left == 0 {
                break;
            }
            let config = self.platform[idx];
            let after = match config.after.map(|dep| self.fates.get(dep)) {
                None => None,
                Some(Some(Fate::Requested { id, failed: false })) => Some(*id),
                Some(_) => {
                    self.fates.push(Fate::Skipped);
                    continue;
                }
            };
            let count = modules.min(self.vms_left);
            let failed = chance(&mut self.rng, self.config.failure_rate);
            let mut duration_ms = lognormal(&mut self.rng, config.median_ms as f64, config.sigma);
            if failed {
                let share =
                    FAILED_RUN_SHARE_MIN + (1.0 - FAILED_RUN_SHARE_MIN) * uniform(&mut self.rng);
                duration_ms *= share;
            }
            let id = self.next_id;
            self.next_id += 1;
            let mut request = RequestRecord::new(
                id,
                config.template,
                config.vcpus,
                duration_ms.round() as u64,
            );
            // `count` is at most TOP_LEVEL_MODULES.1, far below u32::MAX.
            request.count = u32::try_from(count).unwrap_or(u32::MAX);
            request.memory_mib = Some(config.memory_mib);
            request.labels = BTreeMap::from([("arch".to_owned(), config.arch.to_owned())]);
            request.expected_ms = Some(config.median_ms);
            request.outcome = if failed {
                Outcome::Failed
            } else {
                Outcome::Passed
            };
            request.hold_on_failure = hold.clone();
            request.requester = Some(requester.clone());
            request.account = Some(account.clone());
            request.change = Some(change.clone());
            if let Some(dep) = after {
                request.after = vec![dep];
                request.think_ms = uniform_between(&mut self.rng, THINK_MS);
            }
            self.queue.push_back(Record {
                at_ms,
                body: RecordBody::Request(request),
            });
            self.fates.push(Fate::Requested { id, failed });
            self.vms_left -= count;
        }
    }
}

impl Iterator for Generator {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self.queue.is_empty() && self.vms_left > 0 {
            self.generate_change();
        }
        self.queue.pop_front()
    }
}

/// The arrival rate in hour `hour` of the week (0 is Monday 00:00) as a share of the peak.
fn hour_share(hour_of_week: usize) -> f64 {
    let weekday = WEEKDAY_PROFILE[hour_of_week % 24];
    // Days 5 and 6 of each week are Saturday and Sunday.
    if hour_of_week / 24 % 7 >= 5 {
        weekday * WEEKEND_FACTOR
    } else {
        weekday
    }
}

/// The cumulative rate of one week, in peak hours.
fn week_peak_hours() -> f64 {
    (0..WEEK_HOURS).map(hour_share).sum()
}

/// How many hours at the peak rate the weekly profile amounts to from time 0 to `t_ms`: at a
/// peak rate of r changes an hour, r × this many changes arrive by `t_ms` on average.
pub fn peak_hours_until(t_ms: u64) -> f64 {
    let weeks = t_ms / WEEK_MS;
    let rest_ms = t_ms % WEEK_MS;
    let hours = (rest_ms / HOUR_MS) as usize;
    let within = (rest_ms % HOUR_MS) as f64 / HOUR_MS as f64;
    weeks as f64 * week_peak_hours()
        + (0..hours).map(hour_share).sum::<f64>()
        + hour_share(hours) * within
}

/// The time by which the cumulative rate reaches `peak_hours`: the inverse of
/// [`peak_hours_until`], to the millisecond.
fn time_at_peak_hours(peak_hours: f64) -> u64 {
    let week = week_peak_hours();
    let weeks = (peak_hours / week).floor().max(0.0);
    let mut left = (peak_hours - weeks * week).max(0.0);
    let mut t_ms = (weeks as u64).saturating_mul(WEEK_MS);
    for hour in 0..WEEK_HOURS {
        let share = hour_share(hour);
        if left < share {
            return t_ms.saturating_add((left / share * HOUR_MS as f64).round() as u64);
        }
        left -= share;
        t_ms = t_ms.saturating_add(HOUR_MS);
    }
    // Rounding left a sliver past the week's end.
    t_ms
}

/// Uniform in [0, 1), from the top 53 bits.
fn uniform(rng: &mut Pcg64) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn chance(rng: &mut Pcg64, probability: f64) -> bool {
    uniform(rng) < probability
}

/// Uniform integer in `lo..=hi` by multiply-shift; its bias (below 2^-50 for these ranges)
/// does not matter here.
fn uniform_between(rng: &mut Pcg64, (lo, hi): (u64, u64)) -> u64 {
    let span = u128::from(hi - lo) + 1;
    lo + ((u128::from(rng.next_u64()) * span) >> 64) as u64
}

/// Exponential with mean 1.
fn exponential(rng: &mut Pcg64) -> f64 {
    -(1.0 - uniform(rng)).ln()
}

/// Log-normal with the given median and σ of the log (Box–Muller for the normal).
fn lognormal(rng: &mut Pcg64, median: f64, sigma: f64) -> f64 {
    let radius = (-2.0 * (1.0 - uniform(rng)).ln()).sqrt();
    let normal = radius * (2.0 * PI * uniform(rng)).cos();
    median * (sigma * normal).exp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BerthReader, TraceWriter};
    use std::collections::HashMap;

    fn requests(config: SynthConfig) -> Vec<(u64, RequestRecord)> {
        Generator::new(config)
            .expect("valid config")
            .map(|r| match r.body {
                RecordBody::Request(req) => (r.at_ms, req),
                other => panic!("synth makes requests only: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn big_changes_land_together_at_a_peak_hour_and_leave_the_rest_alone() {
        let plain = requests(SynthConfig::new(20_000, 3));
        let big = requests(SynthConfig {
            big_changes: 2,
            ..SynthConfig::new(20_000, 3)
        });
        let changes = |rs: &[(u64, RequestRecord)]| {
            let mut vms: BTreeMap<String, (u64, u64, String)> = BTreeMap::new();
            for (at_ms, r) in rs {
                let e = vms.entry(r.change.clone().unwrap_or_default()).or_insert((
                    *at_ms,
                    0,
                    r.account.clone().unwrap_or_default(),
                ));
                e.1 += u64::from(r.count);
            }
            vms
        };
        let before = changes(&plain);
        // The big changes are the ones that differ from the plain trace's (the last change
        // differs too, cut short elsewhere).
        let mut bigs: Vec<(u64, u64, String)> = changes(&big)
            .into_iter()
            .filter(|(id, c)| c.1 >= 1_500 && before.get(id) != Some(c))
            .map(|(_, c)| c)
            .collect();
        bigs.sort();
        assert_eq!(bigs.len(), 2, "{bigs:?}");
        for (at_ms, n, account) in &bigs {
            assert!(*n <= 36 * 55, "{n}");
            assert_eq!(account, "integration");
            let hour = (*at_ms / HOUR_MS) as usize % WEEK_HOURS;
            assert!(hour_share(hour) >= 1.0, "{at_ms}");
        }
        // Arrival times come from their own stream: the same changes arrive at the same times.
        let times = |rs: &[(u64, RequestRecord)]| {
            let mut t: Vec<u64> = rs.iter().map(|(at, _)| *at).collect();
            t.dedup();
            t
        };
        let (a, b) = (times(&plain), times(&big));
        let n = a.len().min(b.len());
        assert_eq!(a[..n / 3], b[..n / 3]);
        // Every ordinary change has a team as its account.
        assert!(
            big.iter()
                .filter(|(_, r)| r.requester.as_deref() != Some("integration"))
                .all(|(_, r)| r.account.as_deref().is_some_and(|a| a.starts_with("team-")))
        );
    }

    fn write(config: SynthConfig) -> Vec<u8> {
        let generator = Generator::new(config).expect("valid config");
        let mut w = TraceWriter::new(Vec::new(), generator.header()).expect("in memory");
        for record in generator {
            w.write(&record).expect("in memory");
        }
        w.finish().expect("in memory")
    }

    #[test]
    fn platform_matches_the_published_shares() {
        let p = platform();
        assert_eq!(p.len(), 55);
        let count = |f: &dyn Fn(&Config) -> bool| p.iter().filter(|c| f(c)).count();
        assert_eq!(count(&|c| c.role != Test), 35);
        assert_eq!(count(&|c| c.role == HostBuild), 24);
        assert_eq!(count(&|c| c.template == "linux"), 29);
        assert_eq!(count(&|c| c.template == "macos"), 17);
        assert_eq!(count(&|c| c.template == "windows"), 9);
        assert_eq!(count(&|c| c.arch == ARM), 22);
        assert_eq!(count(&|c| c.arch == ARM && c.template == "macos"), 13);
        for (i, c) in p.iter().enumerate() {
            assert_eq!(c.after.is_some(), c.role != HostBuild, "config {i}");
            if let Some(dep) = c.after {
                assert!(dep < i, "config {i} waits for a later one");
                let d = &p[dep];
                assert!(d.role != Test && (d.template, d.arch) == (c.template, c.arch));
                // At most three levels: host build → cross build → test.
                assert!(p[dep].after.is_none_or(|dd| p[dd].after.is_none()));
            }
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = write(SynthConfig::new(5_000, 7));
        assert_eq!(a, write(SynthConfig::new(5_000, 7)));
        assert_ne!(a, write(SynthConfig::new(5_000, 8)));
    }

    #[test]
    fn output_is_a_valid_trace_with_exactly_the_asked_vms() {
        for vms in [1, 54, 55, 56, 20_000] {
            let bytes = write(SynthConfig::new(vms, 3));
            let reader = BerthReader::new(bytes.as_slice(), "synth").expect("header");
            assert!(reader.header().synthetic);
            let mut total = 0u64;
            for record in reader {
                let record = record.expect("valid record");
                let RecordBody::Request(r) = record.body else {
                    panic!("requests only");
                };
                total += u64::from(r.count);
            }
            assert_eq!(total, vms);
        }
    }

    #[test]
    fn workload_has_the_designed_shape() {
        let reqs = requests(SynthConfig::new(300_000, 11));
        let mut vms_by_template: HashMap<&str, u64> = HashMap::new();
        let (mut arm, mut total, mut failed, mut held, mut batches) = (0, 0, 0, 0, 0);
        let mut requests_by_at: BTreeMap<u64, u64> = BTreeMap::new();
        for (at_ms, r) in &reqs {
            let n = u64::from(r.count);
            total += n;
            *vms_by_template.entry(r.template.as_str()).or_default() += n;
            arm += if r.labels.get("arch").map(String::as_str) == Some(ARM) {
                n
            } else {
                0
            };
            failed += u64::from(r.outcome == Outcome::Failed);
            held += u64::from(r.hold_on_failure.is_some());
            batches += u64::from(r.count > 1);
            *requests_by_at.entry(*at_ms).or_default() += 1;
        }
        let share = |n: u64| n as f64 / total as f64;
        // Failed builds prune their tests, so shares drift a little from the platform's.
        assert!((share(vms_by_template["linux"]) - 0.53).abs() < 0.03);
        assert!((share(vms_by_template["macos"]) - 0.31).abs() < 0.03);
        assert!((share(vms_by_template["windows"]) - 0.16).abs() < 0.03);
        assert!((share(arm) - 0.40).abs() < 0.03);
        let failure_rate = failed as f64 / reqs.len() as f64;
        assert!((failure_rate - 0.05).abs() < 0.01, "{failure_rate}");
        assert!(held > 0 && batches > 0);
        // Changes are the distinct arrival times, about 55 requests each.
        let per_change = reqs.len() as f64 / requests_by_at.len() as f64;
        assert!((45.0..=55.0).contains(&per_change), "{per_change}");
    }

    #[test]
    fn weekdays_are_busier_than_weekends() {
        let reqs = requests(SynthConfig::new(500_000, 5));
        let (mut weekday, mut weekend) = (0u64, 0u64);
        let mut last_at = 0;
        for (at_ms, _) in &reqs {
            if *at_ms != last_at {
                if (at_ms / DAY_MS) % 7 >= 5 {
                    weekend += 1;
                } else {
                    weekday += 1;
                }
                last_at = *at_ms;
            }
        }
        // Per day, weekends run at WEEKEND_FACTOR of weekdays.
        let ratio = (weekend as f64 / 2.0) / (weekday as f64 / 5.0);
        assert!((ratio - WEEKEND_FACTOR).abs() < 0.06, "{ratio}");
    }

    #[test]
    fn cumulative_rate_and_its_inverse_agree() {
        assert_eq!(peak_hours_until(0), 0.0);
        // Monday 00:00–01:00 runs at 0.1 of the peak.
        assert!((peak_hours_until(HOUR_MS) - 0.1).abs() < 1e-12);
        let week = week_peak_hours();
        assert!((peak_hours_until(WEEK_MS) - week).abs() < 1e-9);
        for t_ms in [
            1,
            59_999,
            HOUR_MS + 7,
            5 * DAY_MS + 3 * HOUR_MS,
            9 * WEEK_MS + 12_345,
        ] {
            let back = time_at_peak_hours(peak_hours_until(t_ms));
            assert!(back.abs_diff(t_ms) <= 1, "{t_ms} came back as {back}");
        }
    }

    #[test]
    fn the_rate_moves_arrivals_and_nothing_else() {
        let slow = requests(SynthConfig::new(3_000, 4));
        let fast = requests(SynthConfig {
            peak_changes_per_hour: 2.0 * DEFAULT_PEAK_CHANGES_PER_HOUR,
            ..SynthConfig::new(3_000, 4)
        });
        assert_eq!(slow.len(), fast.len());
        for ((t_slow, a), (t_fast, b)) in slow.iter().zip(&fast) {
            assert_eq!(a, b);
            assert!(t_fast <= t_slow);
        }
        // Twice the rate reaches the same cumulative rate: half the peak hours.
        let (last_slow, last_fast) = (slow[slow.len() - 1].0, fast[fast.len() - 1].0);
        let ratio = peak_hours_until(last_fast) / peak_hours_until(last_slow);
        assert!((ratio - 0.5).abs() < 1e-6, "{ratio}");
    }

    /// Pins the generator's output: a change here means traces made with an older build no
    /// longer match (a model change or a changed RNG); accept it deliberately with
    /// `UPDATE_EXPECT=1`.
    #[test]
    fn output_is_pinned() {
        let bytes = write(SynthConfig::new(2, 1));
        expect_test::expect![[r#"
            {"berth_trace":1,"synthetic":true,"source":"berth synthetic CI workload v1: seed 1, 2 VMs, peak 14 changes/h, failure rate 0.05, hold share 0.1, top-level share 0.02"}
            {"at_ms":2678625,"kind":"request","id":1,"count":1,"vcpus":8,"memory_mib":16384,"template":"linux","labels":{"arch":"x86_64"},"duration_ms":726821,"expected_ms":1500000,"requester":"dev-6","change":"c1","account":"team-6"}
            {"at_ms":2678625,"kind":"request","id":2,"count":1,"vcpus":8,"memory_mib":16384,"template":"linux","labels":{"arch":"x86_64"},"duration_ms":1079264,"expected_ms":1500000,"requester":"dev-6","change":"c1","account":"team-6"}
        "#]]
        .assert_eq(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn rejects_out_of_range_config() {
        let e = Generator::new(SynthConfig::new(0, 1))
            .err()
            .expect("no vms");
        assert_eq!(
            e.to_string(),
            "synthetic workload: `vms` is 0; expected at least 1"
        );
        let bad = SynthConfig {
            failure_rate: 1.5,
            ..SynthConfig::default()
        };
        let e = Generator::new(bad).err().expect("out of range");
        assert_eq!(
            e.to_string(),
            "synthetic workload: `failure_rate` is 1.5; expected a share from 0 to 1"
        );
        let bad = SynthConfig {
            peak_changes_per_hour: f64::NAN,
            ..SynthConfig::default()
        };
        assert!(Generator::new(bad).is_err());
    }
}
