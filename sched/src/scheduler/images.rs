//! Base images on hosts (with `Config::images`): what each host holds and last used, the pulls
//! in flight, the image stores' turns, eviction under a host's disk budget, placement's verdict
//! on a host that lacks a VM's image, and pulls ahead of queued demand.
//!
//! A host's image set in the fleet (what the locality scorer and the capacity index see) is
//! what it holds plus what it is pulling: a VM placed on a host that is pulling its image joins
//! that pull. A pull is booked on its store's turns when it starts, so its ready time is known
//! at once; a `PullReady` timer moves it to the held images then.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::state::{Scheduler, Timer};
use crate::config::{ImageMode, Images};
use crate::fleet::{Amount, Need, bloom_bit};
use crate::images::{Held, StoreTurns, evictions, pull_ms};
use crate::output::Action;
use crate::placement::filter::{STATIC, passes_empty};
use crate::queue::ImageHold;

/// What one host has for images.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostImages {
    /// Its class's pull bandwidth (0: pulls take no time).
    pub mbit_s: u64,
    pub budget_mib: Option<u64>,
    /// The store it pulls from (`None`: its class is not described; no store turn is taken).
    pub store: Option<usize>,
    /// Images held, with when a VM last was placed for each (or it arrived).
    pub held: BTreeMap<u32, u64>,
    /// Images being pulled, with when each is ready.
    pub pulling: BTreeMap<u32, u64>,
}

/// A pull as the views show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullView {
    pub host: crate::model::HostId,
    pub image: String,
    pub start_ms: u64,
    pub ready_ms: u64,
    pub store: Option<String>,
}

/// Per host, the images it holds, with their sizes and whether each is in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostImagesView {
    pub host: crate::model::HostId,
    /// Held images: name, size in MiB, last use, and whether a VM on the host uses it.
    pub held: Vec<(String, u64, u64, bool)>,
    /// Images being pulled: name and size in MiB.
    pub pulling: Vec<(String, u64)>,
    pub budget_mib: Option<u64>,
}

#[derive(Clone, Debug)]
pub(crate) struct ImageBook {
    pub mode: ImageMode,
    /// Size in MiB by interned image id.
    pub sizes: BTreeMap<u32, u64>,
    pub config: Images,
    pub hosts: Vec<HostImages>,
    pub store_names: Vec<String>,
    pub stores: Vec<StoreTurns>,
    /// Pulls in flight with their start, for the views: (host, image) → (start, ready).
    pub in_flight: BTreeMap<(u32, u32), (u64, u64)>,
}

/// What a host that a search chose means for a VM's image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The host holds the image, is pulling it, or will by a pull this attempt starts.
    Ready,
    /// Place it and start a pull.
    Pull,
    /// The host cannot hold the image (its budget cannot make room): try another.
    Exclude,
    /// Cheaper to wait for a host holding the image, or the store has no free turn.
    Wait(ImageHold),
}

impl ImageBook {
    fn size(&self, image: u32) -> u64 {
        self.sizes.get(&image).copied().unwrap_or(0)
    }

    fn used_mib(&self, h: usize) -> u64 {
        let hi = &self.hosts[h];
        hi.held
            .keys()
            .chain(hi.pulling.keys())
            .map(|&i| self.size(i))
            .sum()
    }
}

impl Scheduler {
    /// Sets up the image book from `Config::images`, interning the sized images first.
    pub(super) fn with_images(mut self) -> Scheduler {
        let Some(config) = self.config.images.clone() else {
            return self;
        };
        let sizes = config
            .sizes
            .iter()
            .map(|(name, mib)| (self.images.intern(name), *mib))
            .collect();
        let mut store_names: Vec<String> = config.classes.iter().map(|c| c.store.clone()).collect();
        store_names.sort();
        store_names.dedup();
        let stores = store_names
            .iter()
            .map(|_| StoreTurns::new(config.store_pulls_max))
            .collect();
        if config.mode == ImageMode::Aware {
            // Pricing a pull against waiting reads the expected ends of running VMs, and a host
            // holding the image must always win over one without: locality outweighs the rest.
            self.reads.expected_ends = true;
            let w = &mut self.config.weights;
            w.locality = w
                .locality
                .max(w.pack.saturating_add(w.spread).saturating_add(1));
        }
        self.image_book = Some(ImageBook {
            mode: config.mode,
            sizes,
            config,
            hosts: Vec::new(),
            store_names,
            stores,
            in_flight: BTreeMap::new(),
        });
        self
    }

    /// A host joined: its class's bandwidth, budget and store, and its images as of now.
    pub(super) fn images_host_added(&mut self, h: usize) {
        let now = self.now_ms;
        let Some(book) = self.image_book.as_mut() else {
            return;
        };
        let host = &self.fleet.hosts[h];
        let class = super::host_class(&host.spec.name, &host.spec.labels);
        let mut hi = HostImages::default();
        if let Some(c) = book.config.classes.iter().find(|c| c.class == class) {
            hi.mbit_s = c.pull_mbit_s;
            hi.budget_mib = c.budget_mib;
            hi.store = book.store_names.iter().position(|s| *s == c.store);
        }
        hi.held = host.images.iter().map(|&i| (i, now)).collect();
        if book.hosts.len() <= h {
            book.hosts.resize(h + 1, HostImages::default());
        }
        book.hosts[h] = hi;
        self.enforce_budget(h);
    }

    /// A probe said what the host holds: that is the truth, pulls in flight aside, and but for
    /// an image a VM on the host is made from (its disk backs onto it, so it is there).
    pub(super) fn images_probed(&mut self, h: usize) {
        let now = self.now_ms;
        let Some(hi) = self.image_book.as_ref().and_then(|b| b.hosts.get(h)) else {
            return;
        };
        let mut reported: Vec<u32> = self.fleet.hosts[h]
            .images
            .iter()
            .copied()
            .filter(|i| !hi.pulling.contains_key(i))
            .collect();
        let before = hi.held.clone();
        for &i in before.keys() {
            if !reported.contains(&i) && self.image_in_use(h, i) {
                reported.push(i);
            }
        }
        if let Some(hi) = self.image_book.as_mut().and_then(|b| b.hosts.get_mut(h)) {
            hi.held = reported
                .into_iter()
                .map(|i| (i, before.get(&i).copied().unwrap_or(now)))
                .collect();
        }
        self.sync_fleet_images(h);
        self.enforce_budget(h);
    }

    /// Makes the fleet's image set of host `h` what it holds plus what it is pulling.
    fn sync_fleet_images(&mut self, h: usize) {
        let Some(hi) = self.image_book.as_ref().and_then(|b| b.hosts.get(h)) else {
            return;
        };
        let mut ids: Vec<u32> = hi.held.keys().chain(hi.pulling.keys()).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        if self.fleet.hosts[h].images == ids {
            return;
        }
        self.fleet.update(h, |host| {
            host.image_bloom = ids.iter().fold(0, |m, &id| m | bloom_bit(id));
            host.images = ids;
        });
    }

    /// Whether a VM on host `h` (placed, running or being destroyed) is made from `image`.
    fn image_in_use(&self, h: usize, image: u32) -> bool {
        self.fleet.hosts[h].vms.iter().any(|vm| {
            self.vms
                .get(vm)
                .and_then(|v| self.requests.get(&v.request))
                .is_some_and(|r| r.need.image == image)
        })
    }

    /// The images to evict on `h` so that `incoming_mib` more fits its budget (see
    /// `crate::images::evictions`), or `None` when it cannot. `keep`: images that must stay
    /// besides those in use (queued demand, for pulls ahead of it).
    fn plan_evictions(&self, h: usize, incoming_mib: u64, keep: &[u32]) -> Option<Vec<u32>> {
        let book = self.image_book.as_ref()?;
        let Some(budget) = book.hosts[h].budget_mib else {
            return Some(Vec::new());
        };
        evictions(
            &self.held_on(h, keep),
            book.used_mib(h),
            incoming_mib,
            budget,
        )
    }

    /// The images host `h` holds, each in use when a VM there uses it or it is in `keep`.
    fn held_on(&self, h: usize, keep: &[u32]) -> Vec<Held> {
        let Some(book) = self.image_book.as_ref() else {
            return Vec::new();
        };
        book.hosts[h]
            .held
            .iter()
            .map(|(&image, &last_use_ms)| Held {
                image,
                size_mib: book.size(image),
                last_use_ms,
                in_use: keep.contains(&image) || self.image_in_use(h, image),
            })
            .collect()
    }

    /// Evicts images in `images` from host `h`, each with its action.
    fn evict(&mut self, h: usize, images: &[u32]) {
        let Some(book) = self.image_book.as_mut() else {
            return;
        };
        let host = self.fleet.hosts[h].spec.id;
        for &image in images {
            if book.hosts[h].held.remove(&image).is_some() {
                self.actions.push_back(Action::EvictImage {
                    host,
                    image: Arc::from(self.images.name(image)),
                    size_mib: book.size(image),
                });
            }
        }
        self.sync_fleet_images(h);
    }

    /// A host over its budget (its spec or a probe said it holds more) evicts what it can.
    fn enforce_budget(&mut self, h: usize) {
        let Some(book) = self.image_book.as_ref() else {
            return;
        };
        let Some(budget) = book.hosts[h].budget_mib else {
            return;
        };
        if book.used_mib(h) <= budget {
            return;
        }
        let mut held = self.held_on(h, &[]);
        // Evict the unused ones least recently used first until within budget, or all of them.
        held.sort_by_key(|x| (x.last_use_ms, x.image));
        let mut used = book.used_mib(h);
        let mut out = Vec::new();
        for x in held.iter().filter(|x| !x.in_use) {
            if used <= budget {
                break;
            }
            out.push(x.image);
            used = used.saturating_sub(x.size_mib);
        }
        self.evict(h, &out);
    }

    /// Placement's verdict for one more VM of `need` on host `h`. `planned`: hosts this
    /// attempt already starts a pull of the image on (another VM there joins it).
    pub(super) fn image_verdict(&self, h: usize, need: &Need, planned: &[usize]) -> Verdict {
        let Some(book) = self.image_book.as_ref() else {
            return Verdict::Ready;
        };
        let image = need.image;
        let hi = &book.hosts[h];
        if hi.held.contains_key(&image) || hi.pulling.contains_key(&image) || planned.contains(&h) {
            return Verdict::Ready;
        }
        if self.plan_evictions(h, book.size(image), &[]).is_none() {
            return Verdict::Exclude;
        }
        if book.mode == ImageMode::Ignore {
            return Verdict::Pull;
        }
        // Aware: only while the store has a free turn now (after this attempt's own pulls).
        if let Some(store) = hi.store {
            let taken = planned
                .iter()
                .filter(|&&p| book.hosts[p].store == Some(store))
                .count();
            if book.stores[store].free_now(self.now_ms) <= taken {
                return Verdict::Wait(ImageHold::StoreBusy);
            }
        }
        let price_ms = pull_ms(book.size(image), hi.mbit_s);
        if price_ms == 0 {
            return Verdict::Pull;
        }
        match self.expected_image_wait_ms(need) {
            Some(wait_ms) if wait_ms <= price_ms => Verdict::Wait(ImageHold::HolderSooner),
            _ => Verdict::Pull,
        }
    }

    /// How long a VM of `need` can expect to wait for room on a host holding its image: until
    /// the k-th expected end, among VMs on such hosts whose end would leave room for it, where k
    /// is the number of requests waiting for the image (this one among them). `None`: not
    /// within the ends the scheduler knows. Simple on purpose: it assumes each freed share goes
    /// to one waiting request and ignores ends that are already overdue (their jobs ran past
    /// the estimate, so the estimate says nothing).
    fn expected_image_wait_ms(&self, need: &Need) -> Option<u64> {
        let now = self.now_ms;
        let k = self
            .queue
            .groups()
            .filter(|(_, g)| g.kind.need.image == need.image)
            .map(|(_, g)| g.members.len())
            .sum::<usize>()
            .max(1);
        let mut seen = 0;
        for (end_ms, _, entry) in self.ends.ending_from(now) {
            let host = &self.fleet.hosts[entry.host as usize];
            if !host.takes_new_vms() || !host.has_image(need.image) {
                continue;
            }
            let freed: Amount = host.room().plus(&entry.amount());
            if freed.fit_count(need) == 0 {
                continue;
            }
            seen += 1;
            if seen >= k {
                return Some(end_ms - now);
            }
        }
        None
    }

    /// Starts a pull of `image` to host `h` (evicting what its budget needs first) and books
    /// it on the store. Returns false when the budget cannot make room (nothing changed).
    pub(super) fn start_pull(&mut self, h: usize, image: u32, ahead: bool, keep: &[u32]) -> bool {
        let Some(book) = self.image_book.as_ref() else {
            return false;
        };
        let size = book.size(image);
        let Some(evicted) = self.plan_evictions(h, size, keep) else {
            return false;
        };
        self.evict(h, &evicted);
        let now = self.now_ms;
        let Some(book) = self.image_book.as_mut() else {
            return false;
        };
        let hi = &book.hosts[h];
        let duration = pull_ms(size, hi.mbit_s);
        let start = match hi.store {
            Some(s) => book.stores[s].book(now, duration),
            None => now,
        };
        let ready = start.saturating_add(duration);
        book.hosts[h].pulling.insert(image, ready);
        book.in_flight.insert((h as u32, image), (start, ready));
        self.timers.insert((
            ready,
            Timer::PullReady {
                host: h as u32,
                image,
            },
        ));
        self.actions.push_back(Action::PullImage {
            host: self.fleet.hosts[h].spec.id,
            image: Arc::from(self.images.name(image)),
            size_mib: size,
            start_ms: start,
            ready_ms: ready,
            ahead,
        });
        self.sync_fleet_images(h);
        true
    }

    /// A VM was placed on `h` for `image`: its last use is now.
    pub(super) fn touch_image(&mut self, h: usize, image: u32) {
        let now = self.now_ms;
        if let Some(t) = self
            .image_book
            .as_mut()
            .and_then(|b| b.hosts.get_mut(h))
            .and_then(|hi| hi.held.get_mut(&image))
        {
            *t = now;
        }
    }

    /// A pull is ready: the host holds the image; its store turn is free for the next.
    pub(super) fn pull_ready(&mut self, h: usize, image: u32, at_ms: u64) {
        let Some(book) = self.image_book.as_mut() else {
            return;
        };
        let Some(hi) = book.hosts.get_mut(h) else {
            return;
        };
        if hi.pulling.remove(&image).is_some() {
            hi.held.insert(image, at_ms);
            book.in_flight.remove(&(h as u32, image));
            // A store turn came free: VMs that waited for one may now pull.
            self.pass.capacity_changed = true;
        }
        self.sync_fleet_images(h);
    }

    /// After a pass, under `ImageMode::Aware`: for each image that queued requests wait for
    /// in greater number than hosts holding (or pulling) it have free room for, pull it ahead to
    /// hosts that lack it and could run such a VM (by driver, labels and slot kind), in host
    /// order, while a store turn is free now, until those hosts could take the demand (each
    /// counting the VMs it holds when empty). A pull ahead never evicts an image that queued
    /// requests wait for.
    pub(super) fn pull_ahead(&mut self) {
        let now = self.now_ms;
        let Some(book) = self.image_book.as_ref() else {
            return;
        };
        if book.mode != ImageMode::Aware
            || !book.stores.iter().any(|s| s.free_now(now) > 0)
            || self.queue.len() == 0
        {
            return;
        }
        // Demand per image: waiting requests, and one need that stands for them.
        let mut demand: BTreeMap<u32, (usize, Need)> = BTreeMap::new();
        for (_, g) in self.queue.groups() {
            let e = demand
                .entry(g.kind.need.image)
                .or_insert((0, g.kind.need.clone()));
            e.0 += g.members.len();
        }
        let wanted: Vec<u32> = demand.keys().copied().collect();
        for (image, (count, need)) in demand {
            let fleet = &self.fleet;
            let runs_it = |i: usize| {
                let host = &fleet.hosts[i];
                host.takes_new_vms() && passes_empty(&STATIC, host, &need, fleet.provisioning_max)
            };
            // Once the hosts seen holding the image have room for the demand, the scan stops:
            // nothing would be pulled.
            let mut room: i64 = 0;
            let mut lacking = Vec::new();
            for i in 0..fleet.hosts.len() {
                if room >= count as i64 {
                    break;
                }
                if !runs_it(i) {
                    continue;
                }
                if fleet.hosts[i].has_image(image) {
                    room += fleet.hosts[i].room().fit_count(&need);
                } else {
                    lacking.push(i);
                }
            }
            for i in lacking {
                if room >= count as i64 {
                    break;
                }
                let Some(book) = self.image_book.as_ref() else {
                    return;
                };
                let free = book.hosts[i]
                    .store
                    .is_none_or(|s| book.stores[s].free_now(now) > 0);
                if !free {
                    continue;
                }
                let whole = self.fleet.hosts[i].capacity;
                if self.start_pull(i, image, true, &wanted) {
                    room += whole.fit_count(&need);
                }
            }
            let Some(book) = self.image_book.as_ref() else {
                return;
            };
            if !book.stores.iter().any(|s| s.free_now(now) > 0) {
                return;
            }
        }
    }

    /// Pulls in flight, by host then image.
    pub fn image_pulls(&self) -> Vec<PullView> {
        let Some(book) = self.image_book.as_ref() else {
            return Vec::new();
        };
        book.in_flight
            .iter()
            .map(|(&(h, image), &(start_ms, ready_ms))| PullView {
                host: self.fleet.hosts[h as usize].spec.id,
                image: self.images.name(image).to_owned(),
                start_ms,
                ready_ms,
                store: book.hosts[h as usize]
                    .store
                    .map(|s| book.store_names[s].clone()),
            })
            .collect()
    }

    /// Per host (in the order added), the images it holds and pulls, for checking budgets.
    pub fn host_images(&self) -> Vec<HostImagesView> {
        let Some(book) = self.image_book.as_ref() else {
            return Vec::new();
        };
        book.hosts
            .iter()
            .enumerate()
            .filter(|(h, _)| !self.fleet.hosts[*h].removed)
            .map(|(h, hi)| HostImagesView {
                host: self.fleet.hosts[h].spec.id,
                held: hi
                    .held
                    .iter()
                    .map(|(&i, &t)| {
                        (
                            self.images.name(i).to_owned(),
                            book.size(i),
                            t,
                            self.image_in_use(h, i),
                        )
                    })
                    .collect(),
                pulling: hi
                    .pulling
                    .keys()
                    .map(|&i| (self.images.name(i).to_owned(), book.size(i)))
                    .collect(),
                budget_mib: hi.budget_mib,
            })
            .collect()
    }
}
