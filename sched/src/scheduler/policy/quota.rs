//! Quotas that borrow (Kueue's nominal quota and borrowing limit): per account and host class,
//! a guarantee and a borrowing limit in vCPUs, memory and slots, enforced when a VM is placed.
//!
//! The rule, for one more VM of account `a` on a host of class `c` where `a` has a quota:
//!
//! 1. **Within the guarantee** (what `a`'s VMs hold on `c`, plus this VM, stays within the
//!    guarantee in every bounded resource): it may be placed.
//! 2. **Past guarantee plus borrowing limit** in any resource: it may not.
//! 3. **Borrowing** (past the guarantee, within the limit): it may be placed unless `c` is
//!    *reclaimed*: some other account `b` with a quota on `c` has a request that still waits
//!    after the instant it came (it could not be placed then), could run on `c`, and one VM of
//!    which would keep `b` within its guarantee on `c`. Then `a` gets no new VMs past its guarantee on `c` until `b` no
//!    longer waits so; nothing running is stopped (CI jobs end within the hour), so `a` falls
//!    back under its guarantee as its VMs end and `b` takes the capacity they free.
//!
//! An account without a quota on a class is not bounded there, and a VM on a host of a class
//! no quota names is not counted. Which classes are reclaimed is decided once at the start of
//! a pass, from the queue as it stands (a request that arrives reclaims nothing in the instant
//! it arrives, when it may still start on free capacity), so every request of one pass meets
//! the same rule: both walks over the queue decide alike, and a quota refusal lasts for the rest
//! of the pass (an account's holding only grows within a pass).

use std::collections::BTreeMap;

use crate::config::{QUOTA_EVERY_ACCOUNT, Quota, QuotaAmounts};
use crate::fleet::{Interner, Need};
use crate::model::Label;

/// The resources a quota bounds, in the order a refusal names them.
pub(crate) const RESOURCES: [Resource; 3] = [Resource::Vcpus, Resource::Memory, Resource::Slots];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Resource {
    Vcpus,
    Memory,
    Slots,
}

impl Resource {
    fn idx(self) -> usize {
        self as usize
    }

    /// A stable name for machines (metrics labels).
    pub fn name(self) -> &'static str {
        match self {
            Resource::Vcpus => "vcpus",
            Resource::Memory => "memory_mib",
            Resource::Slots => "slots",
        }
    }

    /// An amount in this resource's internal unit, for people: `8 vCPUs`, `16384 MiB`.
    fn show(self, amount: i64) -> String {
        match self {
            Resource::Vcpus if amount % 1000 == 0 => format!("{}", amount / 1000),
            Resource::Vcpus => format!("{:.1}", amount as f64 / 1000.0),
            Resource::Memory | Resource::Slots => amount.to_string(),
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Resource::Vcpus => "vCPUs",
            Resource::Memory => "MiB",
            Resource::Slots => "slots",
        }
    }
}

/// Per resource, in internal units (milli-vCPUs, MiB, slot VMs).
pub(crate) type Amounts = [i64; 3];

/// One VM's amounts of `need`.
pub(crate) fn amounts_of(need: &Need) -> Amounts {
    [
        need.cpu_milli,
        need.memory_mib,
        i64::from(need.slot.is_some()),
    ]
}

/// A quota's bounds in internal units; `None`: not bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub guarantee: [Option<i64>; 3],
    pub borrowing: [Option<i64>; 3],
}

impl Bounds {
    fn of(q: &Quota) -> Bounds {
        let internal = |a: &QuotaAmounts| {
            [
                a.vcpus.map(|v| sat(v).saturating_mul(1000)),
                a.memory_mib.map(sat),
                a.slots.map(sat),
            ]
        };
        Bounds {
            guarantee: internal(&q.guarantee),
            borrowing: internal(&q.borrowing_limit),
        }
    }
}

fn sat(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Why one more VM may not go to a class: the account, the class, the resource that binds and
/// the figures, for why-waiting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaRefusal {
    pub account: String,
    pub class: String,
    resource: Resource,
    used: i64,
    guarantee: i64,
    borrowing_limit: Option<i64>,
    /// The account that reclaims the class, when borrowing stopped for it.
    reclaimed_by: Option<String>,
}

impl std::fmt::Display for QuotaRefusal {
    /// `account qt-base at its kvm quota 8/8 vCPUs, borrowing 0 of 0 allowed`, and when
    /// borrowing stopped: `…, borrowing 4 of 16 allowed, none more while qt-dev waits under
    /// its guarantee`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.resource;
        let borrowed = (self.used - self.guarantee).max(0);
        let limit = self
            .borrowing_limit
            .map_or_else(|| "unlimited".to_owned(), |b| r.show(b));
        write!(
            f,
            "account {} at its {} quota {}/{} {}, borrowing {} of {limit} allowed",
            self.account,
            self.class,
            r.show(self.used),
            r.show(self.guarantee),
            r.unit(),
            r.show(borrowed),
        )?;
        if let Some(b) = &self.reclaimed_by {
            write!(f, ", none more while {b} waits under its guarantee")?;
        }
        Ok(())
    }
}

/// Why a check refused, before it is put in words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Past guarantee plus borrowing limit in `resource`.
    Limit(Resource),
    /// Borrowing in `resource` while `by` reclaims the class.
    Reclaimed(Resource, u32),
}

/// The quotas, what each account holds per class, and which classes are reclaimed this pass.
#[derive(Clone, Debug)]
pub(crate) struct Quotas {
    pub(crate) accounts: Interner,
    pub(crate) classes: Interner,
    /// Per class, the quota of every account without its own (`QUOTA_EVERY_ACCOUNT`).
    pub(crate) every: Vec<Option<Bounds>>,
    pub(crate) own: BTreeMap<(u32, u32), Bounds>,
    /// Per account, per class, what its VMs hold.
    pub(crate) used: Vec<Vec<Amounts>>,
    /// Per host index, its class if a quota names it.
    pub(crate) host_class: Vec<Option<u32>>,
    /// Per class, its hosts by index.
    pub class_hosts: Vec<Vec<usize>>,
    /// Per class, the accounts that reclaim it this pass, ascending.
    pub reclaimed: Vec<Vec<u32>>,
}

impl Quotas {
    /// `None` without quotas.
    pub fn new(quotas: &[Quota]) -> Option<Quotas> {
        if quotas.is_empty() {
            return None;
        }
        let mut q = Quotas {
            accounts: Interner::default(),
            classes: Interner::default(),
            every: Vec::new(),
            own: BTreeMap::new(),
            used: Vec::new(),
            host_class: Vec::new(),
            class_hosts: Vec::new(),
            reclaimed: Vec::new(),
        };
        for quota in quotas {
            let class = q.classes.intern(&quota.class);
            let n = q.classes.len();
            q.every.resize(n, None);
            q.class_hosts.resize(n, Vec::new());
            q.reclaimed.resize(n, Vec::new());
            let bounds = Bounds::of(quota);
            if quota.account == QUOTA_EVERY_ACCOUNT {
                q.every[class as usize] = Some(bounds);
            } else {
                let account = q.account(&quota.account);
                q.own.insert((account, class), bounds);
            }
        }
        // Accounts named before the last class was: every one holds a row per class.
        let n = q.classes.len();
        for row in &mut q.used {
            row.resize(n, [0; 3]);
        }
        Some(q)
    }

    /// The id of account `name`, made on first sight.
    pub fn account(&mut self, name: &str) -> u32 {
        let id = self.accounts.intern(name);
        while self.used.len() <= id as usize {
            self.used.push(vec![[0; 3]; self.classes.len()]);
        }
        id
    }

    pub fn account_name(&self, id: u32) -> &str {
        self.accounts.name(id)
    }

    pub fn n_accounts(&self) -> u32 {
        self.accounts.len() as u32
    }

    pub fn n_classes(&self) -> u32 {
        self.classes.len() as u32
    }

    pub fn class_name(&self, class: u32) -> &str {
        self.classes.name(class)
    }

    /// Account `account`'s quota on class `class`, if it has one.
    pub fn bounds(&self, account: u32, class: u32) -> Option<Bounds> {
        self.own
            .get(&(account, class))
            .copied()
            .or_else(|| self.every.get(class as usize).copied().flatten())
    }

    pub fn used(&self, account: u32, class: u32) -> Amounts {
        self.used
            .get(account as usize)
            .and_then(|c| c.get(class as usize))
            .copied()
            .unwrap_or([0; 3])
    }

    /// Host `host_idx` joined the fleet, named `name` with `labels`.
    pub fn host_added(&mut self, host_idx: usize, name: &str, labels: &[Label]) {
        let class = self.classes.get(host_class(name, labels));
        if self.host_class.len() <= host_idx {
            self.host_class.resize(host_idx + 1, None);
        }
        self.host_class[host_idx] = class;
        if let Some(c) = class {
            self.class_hosts[c as usize].push(host_idx);
        }
    }

    /// The class of host `host_idx`, if a quota names it.
    pub fn class_of(&self, host_idx: usize) -> Option<u32> {
        self.host_class.get(host_idx).copied().flatten()
    }

    /// `n` VMs of `need` of account `account` start (`n` > 0) or stop (`n` < 0) holding
    /// capacity on host `host_idx`.
    pub fn charge(&mut self, account: u32, host_idx: usize, need: &Need, n: i64) {
        let Some(class) = self.class_of(host_idx) else {
            return;
        };
        let per_vm = amounts_of(need);
        if let Some(used) = self
            .used
            .get_mut(account as usize)
            .and_then(|c| c.get_mut(class as usize))
        {
            for (u, v) in used.iter_mut().zip(per_vm) {
                *u += v * n;
            }
        }
    }

    /// Whether account `account` may hold `extra` more VMs of `need` on class `class` (beyond
    /// `pending` VMs of the same need already chosen there in the same attempt).
    pub fn admits(
        &self,
        account: u32,
        class: u32,
        need: &Need,
        pending: i64,
    ) -> Result<(), Refused> {
        let Some(b) = self.bounds(account, class) else {
            return Ok(());
        };
        let used = self.used(account, class);
        let per_vm = amounts_of(need);
        let mut borrowing = None;
        for r in RESOURCES {
            let i = r.idx();
            let Some(g) = b.guarantee[i] else { continue };
            if per_vm[i] == 0 {
                continue;
            }
            let after = used[i] + per_vm[i] * (pending + 1);
            if after <= g {
                continue;
            }
            if b.borrowing[i].is_some_and(|limit| after > g.saturating_add(limit)) {
                return Err(Refused::Limit(r));
            }
            borrowing.get_or_insert(r);
        }
        match borrowing {
            Some(r) => match self.reclaimer(class, account) {
                Some(by) => Err(Refused::Reclaimed(r, by)),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// An account other than `account` that reclaims class `class` this pass.
    fn reclaimer(&self, class: u32, account: u32) -> Option<u32> {
        self.reclaimed
            .get(class as usize)?
            .iter()
            .copied()
            .find(|&b| b != account)
    }

    /// Whether one more VM of `need` keeps account `account` within its guarantee on class
    /// `class` (it has a quota there, and a guarantee in every resource the VM takes that the
    /// quota bounds).
    pub fn within_guarantee(&self, account: u32, class: u32, need: &Need) -> bool {
        let Some(b) = self.bounds(account, class) else {
            return false;
        };
        let used = self.used(account, class);
        let per_vm = amounts_of(need);
        RESOURCES.iter().all(|r| {
            let i = r.idx();
            b.guarantee[i].is_none_or(|g| used[i] + per_vm[i] <= g)
        })
    }

    /// Puts a refusal in words.
    pub fn explain(&self, account: u32, class: u32, why: Refused) -> QuotaRefusal {
        let (resource, reclaimed_by) = match why {
            Refused::Limit(r) => (r, None),
            Refused::Reclaimed(r, by) => (r, Some(self.account_name(by).to_owned())),
        };
        let i = resource.idx();
        let b = self.bounds(account, class);
        QuotaRefusal {
            account: self.account_name(account).to_owned(),
            class: self.class_name(class).to_owned(),
            resource,
            used: self.used(account, class)[i],
            guarantee: b.and_then(|b| b.guarantee[i]).unwrap_or(0),
            borrowing_limit: b.and_then(|b| b.borrowing[i]),
            reclaimed_by,
        }
    }

    /// Sets the classes reclaimed this pass, from `(account, class)` pairs; returns whether a
    /// class stopped being reclaimed by an account (borrowing there may start again).
    pub fn set_reclaimed(&mut self, mut pairs: Vec<(u32, u32)>) -> bool {
        pairs.sort_unstable();
        pairs.dedup();
        let mut next: Vec<Vec<u32>> = vec![Vec::new(); self.reclaimed.len()];
        for (class, account) in pairs {
            if let Some(v) = next.get_mut(class as usize) {
                v.push(account);
            }
        }
        let released = self
            .reclaimed
            .iter()
            .zip(&next)
            .any(|(before, now)| before.iter().any(|a| !now.contains(a)));
        self.reclaimed = next;
        released
    }
}

/// The class of a host: its `class` label, else its `pool` label, else its name without a
/// trailing `-N` number (`kvm-x86-0001` → `kvm-x86`), else its name. The same rule groups
/// hosts in the console, the metrics and the API.
pub fn host_class<'a>(name: &'a str, labels: &'a [Label]) -> &'a str {
    let mut pool = None;
    for l in labels {
        match l.key.as_str() {
            "class" => return &l.value,
            "pool" if pool.is_none() => pool = Some(l.value.as_str()),
            _ => {}
        }
    }
    if let Some(p) = pool {
        return p;
    }
    match name.rsplit_once('-') {
        Some((stem, n))
            if !stem.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            stem
        }
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(vcpus: i64) -> Need {
        Need {
            cpu_milli: vcpus * 1000,
            memory_mib: 1024,
            slot: None,
            drivers: 0xff,
            labels: Vec::new(),
            label_bloom: 0,
            image: 0,
        }
    }

    fn quota(account: &str, vcpus: u64, borrow: Option<u64>) -> Quota {
        Quota {
            account: account.into(),
            class: "kvm".into(),
            guarantee: QuotaAmounts {
                vcpus: Some(vcpus),
                ..QuotaAmounts::default()
            },
            borrowing_limit: QuotaAmounts {
                vcpus: borrow,
                ..QuotaAmounts::default()
            },
        }
    }

    #[test]
    fn a_quota_admits_its_guarantee_then_borrows_up_to_its_limit() {
        let mut q = Quotas::new(&[quota("a", 8, Some(4))]).expect("quotas");
        q.host_added(0, "kvm-1", &[]);
        let a = q.account("a");
        let n = need(4);
        assert_eq!(q.admits(a, 0, &n, 0), Ok(()));
        q.charge(a, 0, &n, 2);
        // 12 of 8 + 4: borrowing 4.
        assert_eq!(q.admits(a, 0, &n, 0), Ok(()));
        assert_eq!(q.admits(a, 0, &n, 1), Err(Refused::Limit(Resource::Vcpus)));
        q.charge(a, 0, &n, 1);
        let why = q.admits(a, 0, &n, 0).unwrap_err();
        assert_eq!(
            q.explain(a, 0, why).to_string(),
            "account a at its kvm quota 12/8 vCPUs, borrowing 4 of 4 allowed"
        );
    }

    #[test]
    fn borrowing_stops_while_another_account_reclaims_the_class() {
        let mut q =
            Quotas::new(&[quota("a", 8, None), quota(QUOTA_EVERY_ACCOUNT, 8, Some(0))]).unwrap();
        q.host_added(0, "kvm-1", &[]);
        let (a, b) = (q.account("a"), q.account("b"));
        let n = need(8);
        q.charge(a, 0, &n, 1);
        assert!(q.within_guarantee(b, 0, &n));
        assert_eq!(q.admits(a, 0, &n, 0), Ok(()));
        assert!(!q.set_reclaimed(vec![(0, b)]));
        assert_eq!(
            q.admits(a, 0, &n, 0),
            Err(Refused::Reclaimed(Resource::Vcpus, b))
        );
        // Within its own guarantee b is never refused, and the reclaim is not a's own.
        assert_eq!(q.admits(b, 0, &n, 0), Ok(()));
        assert_eq!(
            q.explain(a, 0, Refused::Reclaimed(Resource::Vcpus, b))
                .to_string(),
            "account a at its kvm quota 8/8 vCPUs, borrowing 0 of unlimited allowed, \
             none more while b waits under its guarantee"
        );
        assert!(q.set_reclaimed(Vec::new()));
        assert_eq!(q.admits(a, 0, &n, 0), Ok(()));
    }

    #[test]
    fn unnamed_classes_and_accounts_without_quota_are_not_bounded() {
        let mut q = Quotas::new(&[quota("a", 0, Some(0))]).unwrap();
        q.host_added(0, "mac-1", &[]);
        q.host_added(1, "kvm-1", &[]);
        let (a, b) = (q.account("a"), q.account("b"));
        assert_eq!(q.class_of(0), None);
        assert_eq!(q.class_of(1), Some(0));
        assert_eq!(
            q.admits(a, 0, &need(1), 0),
            Err(Refused::Limit(Resource::Vcpus))
        );
        assert_eq!(q.admits(b, 0, &need(64), 0), Ok(()));
        q.charge(a, 0, &need(4), 1);
        assert_eq!(q.used(a, 0), [0; 3]);
    }

    #[test]
    fn host_classes_come_from_labels_or_names() {
        let label = |k: &str, v: &str| Label {
            key: k.into(),
            value: v.into(),
        };
        assert_eq!(host_class("kvm-x86-0001", &[]), "kvm-x86");
        assert_eq!(host_class("builder", &[]), "builder");
        let pool = [label("pool", "gpu")];
        assert_eq!(host_class("kvm-x86-0001", &pool), "gpu");
        let both = [label("pool", "gpu"), label("class", "big")];
        assert_eq!(host_class("kvm-x86-0001", &both), "big");
    }
}
