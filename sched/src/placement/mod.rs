//! Placement: filter → score → select, in the style of kube-scheduler and Nomad.
//!
//! The capacity index finds feasible hosts in scan order; at most `candidates_max` of them are
//! scored (plus as many that hold the template's image when locality is weighted), and the best
//! score wins; ties go to the host met first in scan order. A verdict is data (`Reason`), never
//! an error.

pub mod filter;
pub mod score;

use std::fmt;

use crate::config::{Config, ScanOrder, Weights};
use crate::fleet::{Fleet, Need, bloom_bit};
use filter::{PIPELINE, Probe, first_failure};

/// Why a host cannot take a VM now (or, for the static filters, ever).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    HostRemoved,
    HostUnknown,
    HostDraining,
    HostMaintenance,
    HostOffline,
    HostError,
    Driver,
    Labels,
    Cpu,
    Memory,
    /// The host has no slot of the kind the template takes.
    NoSlotKind,
    /// The host's slots of that kind are all taken.
    Slots,
    ProvisioningBusy,
}

impl Reason {
    /// How a count of hosts with this reason reads: "4 draining", "31 lack memory".
    pub fn describe(self) -> &'static str {
        match self {
            Reason::HostRemoved => "removed",
            Reason::HostUnknown => "not probed yet",
            Reason::HostDraining => "draining",
            Reason::HostMaintenance => "in maintenance",
            Reason::HostOffline => "offline",
            Reason::HostError => "in error",
            Reason::Driver => "wrong driver",
            Reason::Labels => "lack labels",
            Reason::Cpu => "lack vcpus",
            Reason::Memory => "lack memory",
            Reason::NoSlotKind => "no slot of that kind",
            Reason::Slots => "slots full",
            Reason::ProvisioningBusy => "busy provisioning",
        }
    }

    /// A short stable name for machines (the API, metrics).
    pub fn name(self) -> &'static str {
        match self {
            Reason::HostRemoved => "removed",
            Reason::HostUnknown => "unknown",
            Reason::HostDraining => "draining",
            Reason::HostMaintenance => "maintenance",
            Reason::HostOffline => "offline",
            Reason::HostError => "error",
            Reason::Driver => "driver",
            Reason::Labels => "labels",
            Reason::Cpu => "cpu",
            Reason::Memory => "memory",
            Reason::NoSlotKind => "slot_kind",
            Reason::Slots => "slots",
            Reason::ProvisioningBusy => "provisioning",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The filters in pipeline order, by name.
pub fn filter_names() -> Vec<&'static str> {
    PIPELINE.iter().map(|f| f.name).collect()
}

/// The scorers, by name.
pub fn scorer_names() -> Vec<&'static str> {
    score::SCORERS.iter().map(|s| s.name).collect()
}

/// Whether `host_idx` can take one more VM of `need` now, by the full pipeline.
pub(crate) fn fits(fleet: &Fleet, host_idx: usize, need: &Need) -> bool {
    let host = &fleet.hosts[host_idx];
    first_failure(
        &PIPELINE,
        &Probe {
            host,
            avail: host.free(),
            need,
            provisioning_max: fleet.provisioning_max,
        },
    )
    .is_none()
}

/// One ordered stream of feasible hosts: from `origin` to the end, then from 0 to `origin`.
/// Each candidate carries its score, computed when it joins and again only when a VM lands on it.
#[derive(Clone, Debug, Default)]
struct Stream {
    image_bloom: u64,
    hosts: Vec<(usize, u64)>,
    /// Scratch for the hosts one `collect` finds, kept to spare an allocation per refill.
    found: Vec<usize>,
    next: usize,
    wrapped: bool,
    done: bool,
}

impl Stream {
    fn reset(&mut self, origin: usize, image_bloom: u64) {
        self.image_bloom = image_bloom;
        self.hosts.clear();
        self.next = origin;
        self.wrapped = false;
        self.done = false;
    }

    fn fill(&mut self, fleet: &Fleet, need: &Need, search: &SearchParams<'_>, excluded: &[u64]) {
        let n = fleet.hosts.len();
        let image_bloom = self.image_bloom;
        let mut found = std::mem::take(&mut self.found);
        while self.hosts.len() < search.k && !self.done {
            let to = if self.wrapped { search.origin } else { n };
            let mut exact = |i: usize| {
                fits(fleet, i, need)
                    && (image_bloom == 0 || fleet.hosts[i].has_image(need.image))
                    && excluded
                        .get(i / 64)
                        .is_none_or(|w| w & (1 << (i % 64)) == 0)
            };
            let want = search.k - self.hosts.len();
            found.clear();
            fleet.index.collect(
                self.next,
                to,
                need,
                image_bloom,
                want,
                &mut exact,
                &mut found,
            );
            for &i in &found {
                let score = score::total(&fleet.hosts[i], need, search.weights);
                self.hosts.push((i, score));
                self.next = i + 1;
            }
            if found.len() < want {
                // Nothing more fits in this part of the ring.
                if !self.wrapped && search.origin > 0 {
                    self.wrapped = true;
                    self.next = 0;
                } else {
                    self.done = true;
                }
            }
        }
        self.found = found;
    }
}

struct SearchParams<'a> {
    origin: usize,
    k: usize,
    weights: &'a Weights,
}

/// The candidate hosts for the VMs of one request, kept across its VMs: after each placement
/// only the chosen host is checked and scored again, so placing k VMs costs about k index
/// updates and k comparisons over the candidates, not k full searches.
#[derive(Clone, Debug, Default)]
pub(crate) struct Search {
    origin: usize,
    k: usize,
    streams: Vec<Stream>,
    /// Hosts left out, as a bit set (allocated on the first exclusion).
    excluded: Vec<u64>,
}

impl Search {
    pub fn new(config: &Config, fleet: &Fleet, need: &Need, rotate_from: usize) -> Search {
        Search::default().renew(config, fleet, need, rotate_from)
    }

    /// A new search, in the buffers of this finished one: a pass starts one per request it
    /// tries, and the allocations add up.
    pub fn renew(
        mut self,
        config: &Config,
        fleet: &Fleet,
        need: &Need,
        rotate_from: usize,
    ) -> Search {
        let origin = match config.scan {
            ScanOrder::Lowest => 0,
            ScanOrder::Rotate if fleet.hosts.is_empty() => 0,
            ScanOrder::Rotate => rotate_from % fleet.hosts.len(),
        };
        // Every host, and with locality also the hosts that hold the image.
        let locality = (config.weights.locality > 0).then(|| bloom_bit(need.image));
        self.streams.truncate(1 + usize::from(locality.is_some()));
        for (i, bloom) in std::iter::once(0).chain(locality).enumerate() {
            if self.streams.len() == i {
                self.streams.push(Stream::default());
            }
            self.streams[i].reset(origin, bloom);
        }
        self.origin = origin;
        self.k = config.candidates_max.max(1) as usize;
        self.excluded.clear();
        self
    }

    /// The best candidate for one more VM, or `None` when no host fits.
    pub fn best(&mut self, fleet: &Fleet, need: &Need, config: &Config) -> Option<usize> {
        let params = SearchParams {
            origin: self.origin,
            k: self.k,
            weights: &config.weights,
        };
        // Ties go to the host met first in scan order: the lowest index when scanning from the
        // lowest, the next one round the ring when rotating.
        // `origin` is below the fleet's size (or 0), and so is every candidate.
        let (origin, n) = (self.origin, fleet.hosts.len());
        let scan_pos = |i: usize| {
            if i >= origin {
                i - origin
            } else {
                i + n - origin
            }
        };
        let mut best: Option<(u64, usize, usize)> = None;
        for s in &mut self.streams {
            s.fill(fleet, need, &params, &self.excluded);
            for &(i, score) in &s.hosts {
                let pos = scan_pos(i);
                let better = match best {
                    None => true,
                    Some((bs, bpos, _)) => score > bs || (score == bs && pos < bpos),
                };
                if better {
                    best = Some((score, pos, i));
                }
            }
        }
        best.map(|(_, _, i)| i)
    }

    /// Leaves a host out of this search (backfilling found it would delay the reservation).
    pub fn exclude(&mut self, host_idx: usize) {
        for s in &mut self.streams {
            s.hosts.retain(|&(i, _)| i != host_idx);
        }
        let word = host_idx / 64;
        if self.excluded.len() <= word {
            self.excluded.resize(word + 1, 0);
        }
        self.excluded[word] |= 1 << (host_idx % 64);
    }

    /// Called after a VM went to `host_idx`: drops the host from the candidates if it no longer
    /// fits, or scores it again.
    pub fn recheck(&mut self, fleet: &Fleet, need: &Need, host_idx: usize, config: &Config) {
        if !fits(fleet, host_idx, need) {
            for s in &mut self.streams {
                s.hosts.retain(|&(i, _)| i != host_idx);
            }
            return;
        }
        let score = score::total(&fleet.hosts[host_idx], need, &config.weights);
        for s in &mut self.streams {
            for (i, sc) in &mut s.hosts {
                if *i == host_idx {
                    *sc = score;
                }
            }
        }
    }
}
