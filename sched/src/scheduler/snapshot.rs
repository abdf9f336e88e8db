//! Snapshots of the scheduler's state, so that a restart replays only the inputs since the last
//! one: `Scheduler::snapshot` writes the state as bytes, `Scheduler::restore` reads them back,
//! and `Scheduler::state_digest` hashes the same state.
//!
//! The invariant: restoring a snapshot taken after input `k` and handling inputs `k+1..n` gives
//! the same state digest, and hands out the same actions and events, as handling inputs `1..n`
//! on a fresh scheduler (`tests/sched/snapshot.rs` checks it on random inputs under every
//! policy).
//!
//! A snapshot is taken at a quiescent point: after the caller polled every action and event
//! (the daemon does so after each batch). Pending actions and events are outputs of inputs
//! already handled, not state; a snapshot with some left would lose them, so it is refused.
//!
//! The encoding is hand-written (sched has no serialisation dependency, see ARCHITECTURE.md):
//! a magic, a version, a fingerprint of the configuration, the body's length, the body and a
//! checksum of the body. Integers are LEB128 varints (signed ones zigzagged), sequences carry
//! their length, enums a one-byte tag. What a snapshot holds is every field of `Scheduler` that
//! decides the future; the caches (the capacity index, head room, the never-fits and
//! runs-on-class answers, scratch space) are rebuilt or start empty, as they are exact and only
//! save work. Each struct is written by destructuring all of its fields, so a field added later
//! fails to compile here until the snapshot says what to do with it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use super::images::{HostImages, ImageBook};
use super::policy::fair::{AccountUsage, Fair};
use super::policy::quota::{Bounds, Quotas};
use super::state::{
    AfterDestroy, EndEntry, Ending, HeadRoom, Pass, Request, Reservation, Scheduler, Timer, Vm,
};
use super::warm::{Pool, WarmBook, WarmVm};
use crate::config::Config;
use crate::fleet::{Amount, Fleet, Host, Interner, Need, SLOT_KINDS_MAX, StaticClass};
use crate::idmap::IdMap;
use crate::images::StoreTurns;
use crate::input::{Failure, FailureKind};
use crate::model::{
    DriverKind, GuestOs, Hold, HostId, HostSpec, HostState, Label, RequestId, RequestSpec,
    RequestState, Shape, Template, VmId, VmState,
};
use crate::output::{Cause, VmSpec};
use crate::queue::{Entry, Group, ImageHold, Kind, Queue, Wait};

/// The format's version: bumped whenever what a snapshot holds or how it is written changes.
/// A snapshot of another version is refused (a daemon then replays its whole journal).
pub const SNAPSHOT_VERSION: u32 = 1;

const MAGIC: &[u8; 8] = b"berthsnp";

/// Why a snapshot could not be taken or restored. A refused restore changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// Actions or events were still pending: poll them all before taking a snapshot.
    NotQuiescent { actions: usize, events: usize },
    /// The bytes do not begin as a snapshot does.
    NotASnapshot,
    /// Written by another version of the format.
    Version { found: u32, known: u32 },
    /// Taken under another configuration: its state would not be what a replay under this one
    /// gives (accounts, quotas, weights and templates all shape it).
    ConfigChanged { snapshot: u64, config: u64 },
    /// The body does not hash to the checksum written after it: the bytes were damaged.
    Checksum { found: u64, expected: u64 },
    /// The bytes end before `field` (at byte `at`) is complete.
    Truncated { at: usize, field: String },
    /// A value that cannot be: an unknown enum tag, a number out of range, or a state that
    /// contradicts itself (a VM on a host that does not exist).
    Invalid {
        at: usize,
        field: String,
        why: String,
    },
    /// Bytes left over after the snapshot.
    Trailing { at: usize, extra: usize },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::NotQuiescent { actions, events } => write!(
                f,
                "{actions} actions and {events} events are pending: poll them before a snapshot"
            ),
            SnapshotError::NotASnapshot => f.write_str("not a scheduler snapshot (bad magic)"),
            SnapshotError::Version { found, known } => write!(
                f,
                "snapshot format version {found}, this build reads version {known}"
            ),
            SnapshotError::ConfigChanged { snapshot, config } => write!(
                f,
                "snapshot taken under another scheduler configuration \
                 (fingerprint {snapshot:016x}, now {config:016x})"
            ),
            SnapshotError::Checksum { found, expected } => write!(
                f,
                "snapshot damaged: its body hashes to {found:016x}, the checksum says {expected:016x}"
            ),
            SnapshotError::Truncated { at, field } => {
                write!(f, "snapshot truncated at byte {at}, in {field}")
            }
            SnapshotError::Invalid { at, field, why } => {
                write!(f, "snapshot invalid at byte {at}, in {field}: {why}")
            }
            SnapshotError::Trailing { at, extra } => {
                write!(f, "snapshot has {extra} bytes left over after byte {at}")
            }
        }
    }
}

impl std::error::Error for SnapshotError {}

/// FNV-1a, 64 bits: stable across platforms and versions, for checksums and digests.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A fingerprint of a configuration as a scheduler holds it.
fn fingerprint(config: &Config) -> u64 {
    fnv(format!("{config:?}").as_bytes())
}

impl Scheduler {
    /// The scheduler's state as bytes, for `Scheduler::restore`. Take it at a quiescent point:
    /// after polling every action and event (`SnapshotError::NotQuiescent` otherwise).
    pub fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        if !self.actions.is_empty() || !self.events.is_empty() {
            return Err(SnapshotError::NotQuiescent {
                actions: self.actions.len(),
                events: self.events.len(),
            });
        }
        let mut body = Writer::default();
        self.put_state(&mut body);
        let mut w = Writer::default();
        w.bytes.extend_from_slice(MAGIC);
        w.bytes.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        w.bytes
            .extend_from_slice(&fingerprint(&self.config).to_le_bytes());
        w.bytes
            .extend_from_slice(&(body.bytes.len() as u64).to_le_bytes());
        w.bytes.extend_from_slice(&body.bytes);
        w.bytes.extend_from_slice(&fnv(&body.bytes).to_le_bytes());
        Ok(w.bytes)
    }

    /// A scheduler under `config` in the state `bytes` (from `Scheduler::snapshot`) holds.
    /// Refused, with what is wrong and where, when the bytes are not a whole, undamaged
    /// snapshot of this format taken under the same configuration.
    pub fn restore(config: Config, bytes: &[u8]) -> Result<Scheduler, SnapshotError> {
        let base = Scheduler::new(config);
        let mut r = Reader::new(bytes);
        let magic = r.take(MAGIC.len(), "magic")?;
        if magic != MAGIC {
            return Err(SnapshotError::NotASnapshot);
        }
        let found = u32::from_le_bytes(r.fixed("version")?);
        if found != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version {
                found,
                known: SNAPSHOT_VERSION,
            });
        }
        let snapshot = u64::from_le_bytes(r.fixed("fingerprint")?);
        let config = fingerprint(&base.config);
        if snapshot != config {
            return Err(SnapshotError::ConfigChanged { snapshot, config });
        }
        let len = u64::from_le_bytes(r.fixed("body length")?);
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= r.remaining())
            .ok_or_else(|| r.truncated("body"))?;
        let start = r.pos;
        let body = r.take(len, "body")?;
        let expected = u64::from_le_bytes(r.fixed("checksum")?);
        let found = fnv(body);
        if found != expected {
            return Err(SnapshotError::Checksum { found, expected });
        }
        if r.remaining() > 0 {
            return Err(SnapshotError::Trailing {
                at: r.pos,
                extra: r.remaining(),
            });
        }
        let mut r = Reader::new(bytes);
        r.pos = start;
        r.end = start + len;
        let s = base.get_state(&mut r)?;
        if r.remaining() > 0 {
            return Err(SnapshotError::Trailing {
                at: r.pos,
                extra: r.remaining(),
            });
        }
        Ok(s)
    }

    /// A digest of the state that decides what the scheduler does next (what a snapshot
    /// holds): two schedulers with equal digests under one configuration decide alike.
    pub fn state_digest(&self) -> u64 {
        let mut w = Writer::default();
        self.put_state(&mut w);
        fnv(&w.bytes)
    }

    fn put_state(&self, w: &mut Writer) {
        let Scheduler {
            // Given to `restore` (its fingerprint is in the header).
            config: _,
            // Follows from the configuration.
            reads: _,
            templates,
            fleet,
            host_ids,
            host_names,
            labels,
            images,
            slot_kinds,
            requests,
            vms,
            queue,
            ends,
            releasing,
            timers,
            // Empty at a quiescent point (`snapshot` checks).
            actions: _,
            events: _,
            next_vm,
            now_ms,
            pass,
            rotate_from,
            fleet_generation,
            // Caches and scratch: rebuilt or refilled as they are needed.
            never_fits_cache: _,
            scratch: _,
            // What the reservation in `pass` reads: kept with it.
            freed_at_shadow,
            freed_touched,
            head_room: _,
            walk_room: _,
            search_spare: _,
            fair,
            quotas,
            runs_on_class: _,
            runs_on_class_generation: _,
            reference_walk,
            image_book,
            warm,
        } = self;
        w.field(templates);
        w.field(fleet);
        w.field(host_ids);
        w.field(host_names);
        w.field(labels);
        w.field(images);
        w.field(slot_kinds);
        w.field(requests);
        w.field(vms);
        w.field(queue);
        w.field(&ends.to_map());
        w.field(releasing);
        w.field(timers);
        w.field(next_vm);
        w.field(now_ms);
        w.field(pass);
        w.field(rotate_from);
        w.field(fleet_generation);
        w.field(freed_at_shadow);
        w.field(freed_touched);
        w.field(fair);
        w.field(quotas);
        w.field(reference_walk);
        match image_book {
            None => w.u8(0),
            Some(book) => {
                w.u8(1);
                put_image_book(book, w);
            }
        }
        match warm {
            None => w.u8(0),
            Some(book) => {
                w.u8(1);
                put_warm_book(book, w);
            }
        }
    }

    /// `self` is a new scheduler under the configuration: what follows from it is kept.
    fn get_state(self, r: &mut Reader<'_>) -> Result<Scheduler, SnapshotError> {
        let templates = r.field("templates")?;
        let mut fleet: Fleet = r.field("fleet")?;
        let host_ids: BTreeMap<HostId, usize> = r.field("host_ids")?;
        let host_names: BTreeMap<String, usize> = r.field("host_names")?;
        let labels = r.field("labels")?;
        let images = r.field("images")?;
        let slot_kinds = r.field("slot_kinds")?;
        let requests: IdMap<RequestId, Request> = r.field("requests")?;
        let vms: IdMap<VmId, Vm> = r.field("vms")?;
        let queue = r.field("queue")?;
        let ends: BTreeMap<(u64, VmId), EndEntry> = r.field("ends")?;
        let releasing: Vec<Amount> = r.field("releasing")?;
        let timers = r.field("timers")?;
        let next_vm = r.field("next_vm")?;
        let now_ms = r.field("now_ms")?;
        let pass = r.field("pass")?;
        let rotate_from = r.field("rotate_from")?;
        let fleet_generation = r.field("fleet_generation")?;
        let freed_at_shadow: Vec<Option<Amount>> = r.field("freed_at_shadow")?;
        let freed_touched: Vec<usize> = r.field("freed_touched")?;
        let fair: Option<Fair> = r.field("fair")?;
        let quotas: Option<Quotas> = r.field("quotas")?;
        let reference_walk = r.field("reference_walk")?;
        let image_book = match r.u8("image_book")? {
            0 => None,
            1 => Some(get_image_book(self.image_book.as_ref(), r)?),
            t => return Err(r.invalid("image_book", format!("unknown tag {t}"))),
        };
        let warm = match r.u8("warm")? {
            0 => None,
            1 => Some(get_warm_book(self.warm.as_ref(), r)?),
            t => return Err(r.invalid("warm", format!("unknown tag {t}"))),
        };
        if fair.is_some() != self.fair.is_some()
            || quotas.is_some() != self.quotas.is_some()
            || image_book.is_some() != self.image_book.is_some()
            || warm.is_some() != self.warm.is_some()
        {
            return Err(r.invalid(
                "fair, quotas, image_book, warm",
                "present in the snapshot but not in the configuration, or the other way round"
                    .into(),
            ));
        }
        // The indices the rest of the state holds must name hosts: a search would panic on
        // one that does not.
        let n_hosts = fleet.hosts.len();
        let bad_host = host_ids
            .values()
            .chain(host_names.values())
            .any(|&i| i >= n_hosts)
            || vms.values().any(|v| v.host.is_some_and(|i| i >= n_hosts))
            || ends.values().any(|e| e.host as usize >= n_hosts)
            || releasing.len() > n_hosts
            || fleet.classes.values().flatten().any(|&i| i >= n_hosts)
            || fleet.changed.iter().any(|&i| i >= n_hosts)
            || freed_at_shadow.len() > n_hosts
            || freed_touched.iter().any(|&i| i >= n_hosts)
            || warm.as_ref().is_some_and(|b| {
                b.vms.values().any(|v| v.host >= n_hosts)
                    || b.pools.iter().flat_map(|p| &p.hosts).any(|&i| i >= n_hosts)
            });
        if bad_host {
            return Err(r.invalid("fleet", format!("a host index past the {n_hosts} hosts")));
        }
        let bad_vm = requests
            .values()
            .flat_map(|q| &q.queued)
            .any(|id| !vms.contains_key(id))
            || vms.values().any(|v| {
                let pooled = v.request == RequestId::WARM_POOL && warm.is_some();
                !(pooled || requests.contains_key(&v.request))
            })
            || warm.as_ref().is_some_and(|b| {
                b.pools
                    .iter()
                    .flat_map(|p| p.live.iter().chain(&p.idle))
                    .chain(b.vms.keys())
                    .any(|id| !vms.contains_key(id))
                    || b.vms.values().any(|v| v.pool >= b.pools.len())
            });
        if bad_vm {
            return Err(r.invalid(
                "requests, vms",
                "a VM of an unknown request, or a request queueing an unknown VM".into(),
            ));
        }
        fleet.index.rebuild(&fleet.hosts, fleet.provisioning_max);
        let Scheduler {
            config,
            reads,
            actions,
            events,
            never_fits_cache,
            scratch,
            head_room: _,
            walk_room,
            search_spare,
            runs_on_class,
            runs_on_class_generation,
            ..
        } = self;
        Ok(Scheduler {
            config,
            reads,
            templates,
            fleet,
            host_ids,
            host_names,
            labels,
            images,
            slot_kinds,
            requests,
            vms,
            queue,
            ends: super::ends::Ends::from_map(ends),
            releasing,
            timers,
            actions,
            events,
            next_vm,
            now_ms,
            pass,
            rotate_from,
            fleet_generation,
            never_fits_cache,
            scratch,
            freed_at_shadow,
            freed_touched,
            // Counts every host at the next reservation.
            head_room: HeadRoom::default(),
            walk_room,
            search_spare,
            fair,
            quotas,
            runs_on_class,
            runs_on_class_generation,
            reference_walk,
            image_book,
            warm,
        })
    }
}

fn put_image_book(book: &ImageBook, w: &mut Writer) {
    let ImageBook {
        // From the configuration.
        mode: _,
        config: _,
        store_names: _,
        sizes,
        hosts,
        stores,
        in_flight,
    } = book;
    w.field(sizes);
    w.field(hosts);
    w.field(stores);
    w.field(in_flight);
}

fn get_image_book(
    base: Option<&ImageBook>,
    r: &mut Reader<'_>,
) -> Result<ImageBook, SnapshotError> {
    let sizes = r.field("image_book.sizes")?;
    let hosts = r.field("image_book.hosts")?;
    let stores: Vec<StoreTurns> = r.field("image_book.stores")?;
    let in_flight = r.field("image_book.in_flight")?;
    let Some(base) = base else {
        return Err(r.invalid(
            "image_book",
            "the snapshot has images, the configuration none".into(),
        ));
    };
    if stores.len() != base.store_names.len() {
        return Err(r.invalid(
            "image_book.stores",
            format!(
                "{} stores, the configuration names {}",
                stores.len(),
                base.store_names.len()
            ),
        ));
    }
    Ok(ImageBook {
        mode: base.mode,
        config: base.config.clone(),
        store_names: base.store_names.clone(),
        sizes,
        hosts,
        stores,
        in_flight,
    })
}

fn put_warm_book(book: &WarmBook, w: &mut Writer) {
    let WarmBook {
        pools,
        vms,
        due,
        evicted,
    } = book;
    w.varint(pools.len() as u64);
    for pool in pools {
        let Pool {
            // From the configuration.
            config: _,
            need,
            live,
            idle,
            stuck_at,
            hosts,
            hosts_generation,
            handovers,
        } = pool;
        w.field(need);
        w.field(live);
        w.field(idle);
        w.field(stuck_at);
        w.field(hosts);
        w.field(hosts_generation);
        w.field(handovers);
    }
    w.field(vms);
    w.field(due);
    w.field(evicted);
}

fn get_warm_book(base: Option<&WarmBook>, r: &mut Reader<'_>) -> Result<WarmBook, SnapshotError> {
    let Some(base) = base else {
        return Err(r.invalid(
            "warm",
            "the snapshot has warm pools, the configuration none".into(),
        ));
    };
    let n = r.varint()?;
    if n != base.pools.len() as u64 {
        return Err(r.invalid(
            "warm.pools",
            format!("{n} pools, the configuration has {}", base.pools.len()),
        ));
    }
    let mut pools = Vec::with_capacity(base.pools.len());
    for configured in &base.pools {
        pools.push(Pool {
            config: configured.config.clone(),
            need: r.field("warm.pools.need")?,
            live: r.field("warm.pools.live")?,
            idle: r.field("warm.pools.idle")?,
            stuck_at: r.field("warm.pools.stuck_at")?,
            hosts: r.field("warm.pools.hosts")?,
            hosts_generation: r.field("warm.pools.hosts_generation")?,
            handovers: r.field("warm.pools.handovers")?,
        });
    }
    Ok(WarmBook {
        pools,
        vms: r.field("warm.vms")?,
        due: r.field("warm.due")?,
        evicted: r.field("warm.evicted")?,
    })
}

// ---- the encoding ----

#[derive(Default)]
struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    fn u8(&mut self, b: u8) {
        self.bytes.push(b);
    }

    fn varint(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.bytes.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.bytes.push(n as u8);
    }

    fn field<T: Codec>(&mut self, v: &T) {
        v.put(self);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
    /// The fields being read, outermost first, for errors.
    path: Vec<&'static str>,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader {
            bytes,
            pos: 0,
            end: bytes.len(),
            path: Vec::new(),
        }
    }

    fn remaining(&self) -> usize {
        self.end - self.pos
    }

    fn path_with(&self, last: &str) -> String {
        let mut p: Vec<&str> = self.path.clone();
        if !last.is_empty() {
            p.push(last);
        }
        p.join(".")
    }

    fn truncated(&self, what: &str) -> SnapshotError {
        SnapshotError::Truncated {
            at: self.pos,
            field: self.path_with(what),
        }
    }

    fn invalid(&self, what: &str, why: String) -> SnapshotError {
        SnapshotError::Invalid {
            at: self.pos,
            field: self.path_with(what),
            why,
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], SnapshotError> {
        if n > self.remaining() {
            return Err(self.truncated(what));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn fixed<const N: usize>(&mut self, what: &str) -> Result<[u8; N], SnapshotError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, SnapshotError> {
        Ok(self.take(1, what)?[0])
    }

    fn varint(&mut self) -> Result<u64, SnapshotError> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8("")?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(self.invalid("", "an integer past 64 bits".into()));
            }
            n |= part << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(self.invalid("", "an integer past 64 bits".into()))
    }

    /// A sequence's length: no more than the bytes left (each element takes at least one), so
    /// that a damaged length never asks for a huge allocation.
    fn len(&mut self) -> Result<usize, SnapshotError> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.remaining())
            .ok_or_else(|| self.invalid("", format!("a length of {n} past the bytes left")))
    }

    fn tag(&mut self, max: u8) -> Result<u8, SnapshotError> {
        let t = self.u8("")?;
        if t > max {
            return Err(self.invalid("", format!("unknown tag {t}")));
        }
        Ok(t)
    }

    fn field<T: Codec>(&mut self, name: &'static str) -> Result<T, SnapshotError> {
        self.path.push(name);
        let v = T::get(self)?;
        self.path.pop();
        Ok(v)
    }
}

/// How one type is written into and read from a snapshot.
trait Codec: Sized {
    fn put(&self, w: &mut Writer);
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError>;
}

impl Codec for u64 {
    fn put(&self, w: &mut Writer) {
        w.varint(*self);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        r.varint()
    }
}

macro_rules! narrow_unsigned {
    ($($t:ty),*) => {$(
        impl Codec for $t {
            fn put(&self, w: &mut Writer) {
                w.varint(*self as u64);
            }
            fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
                let n = r.varint()?;
                <$t>::try_from(n).map_err(|_| {
                    r.invalid("", format!("{n} is out of range for {}", stringify!($t)))
                })
            }
        }
    )*};
}
narrow_unsigned!(u8, u32, usize);

macro_rules! signed {
    ($($t:ty),*) => {$(
        impl Codec for $t {
            fn put(&self, w: &mut Writer) {
                let n = *self as i64;
                w.varint(((n << 1) ^ (n >> 63)) as u64);
            }
            fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
                let z = r.varint()?;
                let n = ((z >> 1) as i64) ^ -((z & 1) as i64);
                <$t>::try_from(n).map_err(|_| {
                    r.invalid("", format!("{n} is out of range for {}", stringify!($t)))
                })
            }
        }
    )*};
}
signed!(i32, i64);

impl Codec for bool {
    fn put(&self, w: &mut Writer) {
        w.u8(u8::from(*self));
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        Ok(r.tag(1)? == 1)
    }
}

impl Codec for f64 {
    fn put(&self, w: &mut Writer) {
        w.bytes.extend_from_slice(&self.to_bits().to_le_bytes());
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        Ok(f64::from_bits(u64::from_le_bytes(r.fixed("")?)))
    }
}

impl Codec for String {
    fn put(&self, w: &mut Writer) {
        w.varint(self.len() as u64);
        w.bytes.extend_from_slice(self.as_bytes());
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        let n = r.len()?;
        let b = r.take(n, "")?;
        String::from_utf8(b.to_vec()).map_err(|e| r.invalid("", format!("not UTF-8: {e}")))
    }
}

impl Codec for Arc<str> {
    fn put(&self, w: &mut Writer) {
        w.varint(self.len() as u64);
        w.bytes.extend_from_slice(self.as_bytes());
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        Ok(String::get(r)?.into())
    }
}

impl<T: Codec> Codec for Option<T> {
    fn put(&self, w: &mut Writer) {
        match self {
            None => w.u8(0),
            Some(v) => {
                w.u8(1);
                v.put(w);
            }
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        Ok(match r.tag(1)? {
            0 => None,
            _ => Some(T::get(r)?),
        })
    }
}

impl<T: Codec> Codec for Vec<T> {
    fn put(&self, w: &mut Writer) {
        w.varint(self.len() as u64);
        for v in self {
            v.put(w);
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        let n = r.len()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(T::get(r)?);
        }
        Ok(out)
    }
}

impl<T: Codec> Codec for VecDeque<T> {
    fn put(&self, w: &mut Writer) {
        w.varint(self.len() as u64);
        for v in self {
            v.put(w);
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        Ok(Vec::get(r)?.into())
    }
}

impl<T: Codec, const N: usize> Codec for [T; N] {
    fn put(&self, w: &mut Writer) {
        for v in self {
            v.put(w);
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        let mut out = Vec::with_capacity(N);
        for _ in 0..N {
            out.push(T::get(r)?);
        }
        out.try_into()
            .map_err(|_| r.invalid("", "an array of the wrong length".into()))
    }
}

impl<K: Codec + Ord, V: Codec> Codec for BTreeMap<K, V> {
    fn put(&self, w: &mut Writer) {
        w.varint(self.len() as u64);
        for (k, v) in self {
            k.put(w);
            v.put(w);
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        let n = r.len()?;
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let k = K::get(r)?;
            let v = V::get(r)?;
            if out.insert(k, v).is_some() {
                return Err(r.invalid("", "a key twice in a map".into()));
            }
        }
        Ok(out)
    }
}

impl<T: Codec + Ord> Codec for BTreeSet<T> {
    fn put(&self, w: &mut Writer) {
        w.varint(self.len() as u64);
        for v in self {
            v.put(w);
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        let n = r.len()?;
        let mut out = BTreeSet::new();
        for _ in 0..n {
            if !out.insert(T::get(r)?) {
                return Err(r.invalid("", "an element twice in a set".into()));
            }
        }
        Ok(out)
    }
}

/// Written in key order, whatever order the map iterates in, so that equal maps give equal
/// bytes (and digests).
impl<K: Codec + Ord + Hash + Copy, V: Codec> Codec for IdMap<K, V> {
    fn put(&self, w: &mut Writer) {
        let mut keys: Vec<&K> = self.keys().collect();
        keys.sort_unstable();
        w.varint(keys.len() as u64);
        for k in keys {
            k.put(w);
            self[k].put(w);
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        let n = r.len()?;
        let mut out = IdMap::default();
        out.reserve(n);
        for _ in 0..n {
            let k = K::get(r)?;
            let v = V::get(r)?;
            if out.insert(k, v).is_some() {
                return Err(r.invalid("", "a key twice in a map".into()));
            }
        }
        Ok(out)
    }
}

impl<T: Codec> Codec for Reverse<T> {
    fn put(&self, w: &mut Writer) {
        self.0.put(w);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        Ok(Reverse(T::get(r)?))
    }
}

macro_rules! tuple {
    ($($t:ident $i:tt),*) => {
        impl<$($t: Codec),*> Codec for ($($t,)*) {
            fn put(&self, w: &mut Writer) {
                $(self.$i.put(w);)*
            }
            fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
                Ok(($($t::get(r)?,)*))
            }
        }
    };
}
tuple!(A 0, B 1);
tuple!(A 0, B 1, C 2);

/// A struct written field by field. The destructuring names every field, so a field added to
/// the struct later fails to compile here until it is written too.
///
/// A field may name a check (`field: check`), a function that refuses a value the rest of the
/// scheduler would index out of range with.
macro_rules! record {
    ($ty:ident { $($f:ident $(: $check:ident)?),* $(,)? }) => {
        impl Codec for $ty {
            fn put(&self, w: &mut Writer) {
                let $ty { $($f),* } = self;
                $($f.put(w);)*
            }
            fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
                Ok($ty { $($f: {
                    let v = r.field(stringify!($f))?;
                    $($check(r, stringify!($f), &v)?;)?
                    v
                },)* })
            }
        }
    };
}

/// A slot kind must be one the fleet can count (`SLOT_KINDS_MAX`).
fn slot_kind<T: Copy>(r: &Reader<'_>, field: &str, slot: &Option<T>) -> Result<(), SnapshotError>
where
    u64: TryFrom<T>,
{
    match slot.map(|k| u64::try_from(k).unwrap_or(u64::MAX)) {
        Some(k) if k >= SLOT_KINDS_MAX as u64 => Err(r.invalid(
            field,
            format!("slot kind {k}, past the {SLOT_KINDS_MAX} a fleet counts"),
        )),
        _ => Ok(()),
    }
}

/// An id newtype over `u64`.
macro_rules! id {
    ($($ty:ident),*) => {$(
        impl Codec for $ty {
            fn put(&self, w: &mut Writer) {
                w.varint(self.0);
            }
            fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
                Ok($ty(r.varint()?))
            }
        }
    )*};
}
id!(HostId, RequestId, VmId);

/// An enum without data, written as its index in a fixed list (so reordering the enum's
/// variants does not change the format; a variant added must be added to the list).
macro_rules! unit_enum {
    ($ty:ident [$($v:ident),* $(,)?]) => {
        impl Codec for $ty {
            fn put(&self, w: &mut Writer) {
                const ALL: &[$ty] = &[$($ty::$v),*];
                // Exhaustive: a variant missing from the list fails to compile.
                match self { $($ty::$v => {}),* }
                let i = ALL.iter().position(|v| v == self).unwrap_or(0);
                w.u8(i as u8);
            }
            fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
                const ALL: &[$ty] = &[$($ty::$v),*];
                let t = r.tag((ALL.len() - 1) as u8)?;
                Ok(ALL[usize::from(t)])
            }
        }
    };
}
unit_enum!(DriverKind [Libvirt, Parallels, Sim]);
unit_enum!(GuestOs [Linux, Windows, Macos]);
unit_enum!(HostState [Unknown, Ready, Draining, Maintenance, Offline, Error]);
unit_enum!(VmState [Queued, Placed, Provisioning, Booting, Running, Held, Releasing, Done, Failed, Lost, Cancelled]);
unit_enum!(RequestState [Waiting, Active, Done, Failed, Rejected, Cancelled]);
unit_enum!(FailureKind [Transient, Host, Request]);
unit_enum!(ImageHold [StoreBusy, HolderSooner, NoDisk]);

record!(Shape { vcpus, memory_mib });
record!(Label { key, value });
record!(Template {
    name,
    base_image,
    guest_os,
    drivers,
    default_shape,
    slot,
    expected_provision_ms,
    expected_boot_ms,
    expected_run_ms,
});
record!(HostSpec {
    id,
    name,
    driver,
    vcpus,
    memory_mib,
    slots,
    cpu_overcommit_milli,
    memory_overcommit_milli,
    labels,
    images,
});
record!(Hold { owner, ttl_ms });
record!(RequestSpec {
    id,
    template,
    count,
    shape,
    labels,
    priority,
    gang,
    hold_on_failure,
    pending_deadline_ms,
    expected_run_ms,
    requester,
    account,
});
record!(Failure { kind, message });
record!(WarmVm {
    pool,
    host,
    need,
    releasing,
});
record!(VmSpec {
    template,
    base_image,
    guest_os,
    shape,
});
record!(Need {
    cpu_milli,
    memory_mib,
    slot: slot_kind,
    drivers,
    labels,
    label_bloom,
    image,
});
record!(Amount {
    cpu_milli,
    memory_mib,
    slots,
});
record!(Host {
    spec,
    state,
    removed,
    capacity,
    used,
    provisioning,
    vms,
    labels,
    label_bloom,
    images,
    image_bloom,
    probe_failures,
    provision_failures,
    probed_ok,
    last_probe_ms,
});
record!(StaticClass {
    driver,
    labels,
    capacity,
    probed,
});
record!(Interner { ids, names });
record!(Vm {
    request,
    state,
    host,
    provisioning,
    after_destroy,
    hold_until_ms,
    expected_end_ms,
    ending,
});
record!(Request {
    spec,
    vm_spec,
    need,
    state,
    submitted_ms,
    queue_key,
    account,
    quota_account,
    queued,
    live,
    gang_pending,
    retries_used,
    vms_failed,
    ending,
    ending_cause,
    expected_start_ms,
    expected_run_ms,
});
record!(EndEntry {
    host,
    slot: slot_kind,
    cpu_milli,
    memory_mib,
});
record!(Reservation {
    head,
    need,
    shadow_ms,
    extra,
    all_eligible,
});
record!(Entry {
    request,
    account,
    priority,
    seq,
    enqueued_ms,
    group,
});
record!(Kind {
    account,
    quota_account,
    priority,
    need,
    together,
    duration_ms,
});
record!(Group {
    kind,
    members,
    wait
});
record!(Queue {
    levels,
    ranks,
    age_limit_ms,
    groups,
    group_ids,
    next_seq,
    next_group,
    len,
});
record!(AccountUsage {
    weight,
    holding_milli,
    usage,
    since_ms,
});
record!(Fair {
    half_life_ms,
    default_weight,
    names,
    accounts,
    ranks,
    order,
});
record!(Bounds {
    guarantee,
    borrowing,
});
record!(Quotas {
    accounts,
    classes,
    every,
    own,
    used,
    host_class,
    class_hosts,
    reclaimed,
});
record!(HostImages {
    mbit_s,
    budget_mib,
    store,
    held,
    pulling,
});
record!(StoreTurns { free_at_ms });

/// The fleet without its capacity index, which `restore` rebuilds from the hosts.
impl Codec for Fleet {
    fn put(&self, w: &mut Writer) {
        let Fleet {
            hosts,
            index: _,
            provisioning_max,
            ready_free,
            classes,
            version,
            changed,
        } = self;
        hosts.put(w);
        provisioning_max.put(w);
        ready_free.put(w);
        classes.put(w);
        version.put(w);
        changed.put(w);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        let hosts = r.field("hosts")?;
        let provisioning_max = r.field("provisioning_max")?;
        let mut fleet = Fleet::new(provisioning_max);
        fleet.hosts = hosts;
        fleet.ready_free = r.field("ready_free")?;
        fleet.classes = r.field("classes")?;
        fleet.version = r.field("version")?;
        fleet.changed = r.field("changed")?;
        Ok(fleet)
    }
}

/// The pass's notes that carry over to the next pass; `failed` lives for one pass only.
impl Codec for Pass {
    fn put(&self, w: &mut Writer) {
        let Pass {
            capacity_changed,
            arrivals,
            blocked_head,
            reservation,
            checked_generation,
            failed: _,
            no_room,
        } = self;
        capacity_changed.put(w);
        arrivals.put(w);
        blocked_head.put(w);
        reservation.put(w);
        checked_generation.put(w);
        no_room.put(w);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        Ok(Pass {
            capacity_changed: r.field("capacity_changed")?,
            arrivals: r.field("arrivals")?,
            blocked_head: r.field("blocked_head")?,
            reservation: r.field("reservation")?,
            checked_generation: r.field("checked_generation")?,
            failed: Vec::new(),
            no_room: r.field("no_room")?,
        })
    }
}

impl Codec for Timer {
    fn put(&self, w: &mut Writer) {
        match self {
            Timer::Deadline(id) => {
                w.u8(0);
                id.put(w);
            }
            Timer::Hold(vm) => {
                w.u8(1);
                vm.put(w);
            }
            Timer::PullReady { host, image } => {
                w.u8(2);
                host.put(w);
                image.put(w);
            }
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        Ok(match r.tag(2)? {
            0 => Timer::Deadline(r.field("request")?),
            1 => Timer::Hold(r.field("vm")?),
            _ => Timer::PullReady {
                host: r.field("host")?,
                image: r.field("image")?,
            },
        })
    }
}

impl Codec for AfterDestroy {
    fn put(&self, w: &mut Writer) {
        match self {
            AfterDestroy::End(state) => {
                w.u8(0);
                state.put(w);
            }
            AfterDestroy::Requeue => w.u8(1),
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        Ok(match r.tag(1)? {
            0 => AfterDestroy::End(r.field("state")?),
            _ => AfterDestroy::Requeue,
        })
    }
}

impl Codec for Ending {
    fn put(&self, w: &mut Writer) {
        match self {
            Ending::Untracked => w.u8(0),
            Ending::Expected => w.u8(1),
            Ending::Releasing(e) => {
                w.u8(2);
                e.put(w);
            }
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        Ok(match r.tag(2)? {
            0 => Ending::Untracked,
            1 => Ending::Expected,
            _ => Ending::Releasing(r.field("entry")?),
        })
    }
}

impl Codec for Wait {
    fn put(&self, w: &mut Writer) {
        match self {
            Wait::NotConsidered => w.u8(0),
            Wait::NoFit => w.u8(1),
            Wait::GangShort { fit, need } => {
                w.u8(2);
                fit.put(w);
                need.put(w);
            }
            Wait::Reserved { head, start_ms } => {
                w.u8(3);
                head.put(w);
                start_ms.put(w);
            }
            Wait::Quota => w.u8(4),
            Wait::Image { image, hold } => {
                w.u8(5);
                image.put(w);
                hold.put(w);
            }
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        Ok(match r.tag(5)? {
            0 => Wait::NotConsidered,
            1 => Wait::NoFit,
            2 => Wait::GangShort {
                fit: r.field("fit")?,
                need: r.field("need")?,
            },
            3 => Wait::Reserved {
                head: r.field("head")?,
                start_ms: r.field("start_ms")?,
            },
            4 => Wait::Quota,
            _ => Wait::Image {
                image: r.field("image")?,
                hold: r.field("hold")?,
            },
        })
    }
}

impl Codec for Cause {
    fn put(&self, w: &mut Writer) {
        match self {
            Cause::Submitted => w.u8(0),
            Cause::Retry { of } => {
                w.u8(1);
                of.put(w);
            }
            Cause::Placed => w.u8(2),
            Cause::AllPlaced => w.u8(3),
            Cause::Requeued => w.u8(4),
            Cause::ProvisionStarted => w.u8(5),
            Cause::Provisioned => w.u8(6),
            Cause::Booted => w.u8(7),
            Cause::JobPassed => w.u8(8),
            Cause::JobFailed => w.u8(9),
            Cause::Released => w.u8(10),
            Cause::HoldExpired => w.u8(11),
            Cause::Destroyed => w.u8(12),
            Cause::ProvisionFailed(f) => {
                w.u8(13);
                f.put(w);
            }
            Cause::BootFailed(f) => {
                w.u8(14);
                f.put(w);
            }
            Cause::DestroyFailed(f) => {
                w.u8(15);
                f.put(w);
            }
            Cause::HostLost { host, name } => {
                w.u8(16);
                host.put(w);
                name.put(w);
            }
            Cause::Vanished => w.u8(17),
            Cause::Cancelled => w.u8(18),
            Cause::Deadline => w.u8(19),
            Cause::NeverFits(why) => {
                w.u8(20);
                why.put(w);
            }
            Cause::RetriesExhausted => w.u8(21),
            Cause::AllEnded => w.u8(22),
            Cause::HostAdded => w.u8(23),
            Cause::HostRemoved => w.u8(24),
            Cause::ProbeOk => w.u8(25),
            Cause::ProbeFailed(e) => {
                w.u8(26);
                e.put(w);
            }
            Cause::CircuitBreaker(n) => {
                w.u8(27);
                n.put(w);
            }
            Cause::OperatorDrain => w.u8(28),
            Cause::OperatorResume => w.u8(29),
            Cause::OperatorOffline => w.u8(30),
            Cause::Drained => w.u8(31),
            Cause::Handover { vm } => {
                w.u8(32);
                vm.put(w);
            }
            Cause::WarmEvicted => w.u8(33),
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        Ok(match r.tag(33)? {
            0 => Cause::Submitted,
            1 => Cause::Retry { of: r.field("of")? },
            2 => Cause::Placed,
            3 => Cause::AllPlaced,
            4 => Cause::Requeued,
            5 => Cause::ProvisionStarted,
            6 => Cause::Provisioned,
            7 => Cause::Booted,
            8 => Cause::JobPassed,
            9 => Cause::JobFailed,
            10 => Cause::Released,
            11 => Cause::HoldExpired,
            12 => Cause::Destroyed,
            13 => Cause::ProvisionFailed(r.field("failure")?),
            14 => Cause::BootFailed(r.field("failure")?),
            15 => Cause::DestroyFailed(r.field("failure")?),
            16 => Cause::HostLost {
                host: r.field("host")?,
                name: r.field("name")?,
            },
            17 => Cause::Vanished,
            18 => Cause::Cancelled,
            19 => Cause::Deadline,
            20 => Cause::NeverFits(r.field("why")?),
            21 => Cause::RetriesExhausted,
            22 => Cause::AllEnded,
            23 => Cause::HostAdded,
            24 => Cause::HostRemoved,
            25 => Cause::ProbeOk,
            26 => Cause::ProbeFailed(r.field("error")?),
            27 => Cause::CircuitBreaker(r.field("n")?),
            28 => Cause::OperatorDrain,
            29 => Cause::OperatorResume,
            30 => Cause::OperatorOffline,
            31 => Cause::Drained,
            32 => Cause::Handover { vm: r.field("vm")? },
            _ => Cause::WarmEvicted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_their_edges() {
        for n in [0u64, 1, 127, 128, 300, u64::MAX / 2, u64::MAX] {
            let mut w = Writer::default();
            n.put(&mut w);
            let mut r = Reader::new(&w.bytes);
            assert_eq!(u64::get(&mut r), Ok(n));
            assert_eq!(r.remaining(), 0);
        }
        for n in [0i64, -1, 1, i64::MIN, i64::MAX] {
            let mut w = Writer::default();
            n.put(&mut w);
            let mut r = Reader::new(&w.bytes);
            assert_eq!(i64::get(&mut r), Ok(n));
        }
    }

    #[test]
    fn a_slot_kind_past_what_a_fleet_counts_is_refused() {
        let need = Need {
            cpu_milli: 1000,
            memory_mib: 1024,
            slot: Some(SLOT_KINDS_MAX),
            drivers: 1,
            labels: vec![],
            label_bloom: 0,
            image: 0,
        };
        let mut w = Writer::default();
        need.put(&mut w);
        let mut r = Reader::new(&w.bytes);
        r.path.push("need");
        let e = Need::get(&mut r).unwrap_err();
        assert!(e.to_string().contains("in need.slot: slot kind 4"), "{e}");
    }

    #[test]
    fn an_eleven_byte_varint_is_refused() {
        let bytes = [0xffu8; 11];
        let mut r = Reader::new(&bytes);
        assert!(matches!(
            u64::get(&mut r),
            Err(SnapshotError::Invalid { .. })
        ));
    }
}
