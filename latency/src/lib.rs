//! Latency models for simulated hosts: how long provisioning, boot and destroy take, by driver
//! and guest OS, drawn from seeded distributions; and the zero profile for batch-trace checks.
//!
//! The simulator and the simulated driver both draw from these models, so a simulated host in a
//! live daemon takes the times a replay assumes. The crate stays small for the drivers' sake:
//! it needs the scheduler's driver and guest OS kinds and a seeded generator, nothing more.

use berth_sched::{DriverKind, GuestOs};
use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64;

/// Which latency model simulated hosts follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Every operation completes in the instant it starts: placements turn straight into
    /// running jobs, as in batch-scheduler simulators (AccaSim, the SWF's own model).
    Zero,
    /// Medians from the reference deployment's shape: copy-on-write clones in seconds, guests
    /// that boot in tens of seconds (see `median_ms`), with log-normal spread.
    Default,
}

impl Profile {
    pub fn parse(s: &str) -> Option<Profile> {
        match s {
            "zero" => Some(Profile::Zero),
            "default" => Some(Profile::Default),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Zero => "zero",
            Profile::Default => "default",
        }
    }
}

/// One simulated operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Provision,
    Boot,
    Destroy,
    /// A warm VM handed over to a request: renamed (`virsh domrename`, `prlctl set --name`) and
    /// its guest given the job over a connection it already holds. No clone, no boot.
    Handover,
}

/// The median of each operation, in ms, under the default profile. These are modelling
/// assumptions, not measurements: a qcow2 overlay or a Parallels linked clone is created in
/// seconds; Linux guests boot in ~20 s, Windows ~60 s, macOS ~45 s. A handover is a rename
/// and a message to a guest that is already up: about a second (two for Parallels, whose
/// `prlctl` calls take about that long each), far below any boot.
pub fn median_ms(op: Op, driver: DriverKind, os: GuestOs) -> u64 {
    match (op, driver, os) {
        (Op::Provision, DriverKind::Parallels, _) => 12_000,
        (Op::Provision, _, GuestOs::Windows) => 4_000,
        (Op::Provision, _, _) => 3_000,
        (Op::Boot, _, GuestOs::Linux) => 20_000,
        (Op::Boot, _, GuestOs::Windows) => 60_000,
        (Op::Boot, _, GuestOs::Macos) => 45_000,
        (Op::Destroy, DriverKind::Parallels, _) => 5_000,
        (Op::Destroy, _, _) => 2_000,
        (Op::Handover, DriverKind::Parallels, _) => 2_000,
        (Op::Handover, _, _) => 1_000,
    }
}

/// Spread of the log-normal (σ of the underlying normal): most draws within ×0.6–×1.7 of the median.
const SIGMA: f64 = 0.3;

/// Draws latencies from a seeded generator, so a run is reproducible.
#[derive(Clone, Debug)]
pub struct Latency {
    profile: Profile,
    rng: Pcg64,
}

impl Latency {
    pub fn new(profile: Profile, seed: u64) -> Latency {
        Latency {
            profile,
            rng: Pcg64::seed_from_u64(seed),
        }
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    pub fn sample(&mut self, op: Op, driver: DriverKind, os: GuestOs) -> u64 {
        match self.profile {
            Profile::Zero => 0,
            Profile::Default => {
                let z = self.normal();
                ((median_ms(op, driver, os) as f64) * (SIGMA * z).exp()).round() as u64
            }
        }
    }

    /// An exponential draw with the given mean (for failures, repairs and developer delays).
    pub fn exponential_ms(&mut self, mean_ms: u64) -> u64 {
        let u = self.uniform().max(f64::MIN_POSITIVE);
        (-(u.ln()) * mean_ms as f64).round() as u64
    }

    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal draw (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_profile_is_zero() {
        let mut l = Latency::new(Profile::Zero, 1);
        assert_eq!(l.sample(Op::Boot, DriverKind::Sim, GuestOs::Windows), 0);
    }

    #[test]
    fn default_profile_is_seeded_and_near_its_median() {
        let draw = |seed| {
            let mut l = Latency::new(Profile::Default, seed);
            (0..1001)
                .map(|_| l.sample(Op::Boot, DriverKind::Libvirt, GuestOs::Linux))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        let mut v = draw(7);
        v.sort_unstable();
        let median = v[500];
        assert!((17_000..23_000).contains(&median), "median {median}");
    }
}
