//! Fair share between accounts: an order over accounts that every queue policy serves by
//! before priority and arrival. The account furthest below its share (the lowest decayed usage
//! per unit of weight, Slurm's fair-share factor) comes first; `easy` then reserves for the
//! head of that order, so fair share composes with backfilling without a policy of its own.
//!
//! Usage is what an account's VMs hold while they hold capacity: vCPU-seconds plus
//! slot-seconds (one slot counts as one vCPU), halving every `half_life_ms`. The order is
//! fixed for the length of one pass (both the grouped walk and the reference walk read the
//! same ranks), and computed again before the next.

use crate::config::FairShare;
use crate::fleet::{Interner, Need};

/// An account's standing in fair share.
#[derive(Clone, Debug)]
pub(crate) struct AccountUsage {
    pub weight: u32,
    /// What its VMs hold now, in milli-vCPUs (a slot counts as 1,000).
    pub holding_milli: i64,
    /// Decayed usage in milli-vCPU-milliseconds, as of `since_ms`.
    pub usage: f64,
    pub since_ms: u64,
}

/// The accounts, their usage, and the order the queue serves them in.
#[derive(Clone, Debug)]
pub(crate) struct Fair {
    pub(crate) half_life_ms: u64,
    pub(crate) default_weight: u32,
    pub(crate) names: Interner,
    pub accounts: Vec<AccountUsage>,
    /// Per account, where it stands: 0 is served first.
    pub ranks: Vec<u32>,
    pub(crate) order: Vec<u32>,
}

impl Fair {
    pub fn new(config: &FairShare) -> Fair {
        let mut fair = Fair {
            half_life_ms: config.half_life_ms.max(1),
            default_weight: config.default_weight.max(1),
            names: Interner::default(),
            accounts: Vec::new(),
            ranks: Vec::new(),
            order: Vec::new(),
        };
        for a in &config.accounts {
            let id = fair.account(&a.name);
            fair.accounts[id as usize].weight = a.weight.max(1);
        }
        fair
    }

    /// The id of account `name`, made on first sight with the default weight.
    pub fn account(&mut self, name: &str) -> u32 {
        let id = self.names.intern(name);
        while self.accounts.len() <= id as usize {
            self.accounts.push(AccountUsage {
                weight: self.default_weight,
                holding_milli: 0,
                usage: 0.0,
                since_ms: 0,
            });
            self.ranks.push(self.ranks.len() as u32);
        }
        id
    }

    /// The name of account `id`.
    pub fn name(&self, id: u32) -> &str {
        self.names.name(id)
    }

    /// Brings account `id`'s decayed usage forward to `now_ms`.
    fn advance(&mut self, id: u32, now_ms: u64) {
        let half_life = self.half_life_ms as f64;
        if let Some(a) = self.accounts.get_mut(id as usize) {
            let dt = now_ms.saturating_sub(a.since_ms) as f64;
            a.usage = decayed(a.usage, a.holding_milli as f64, dt, half_life);
            a.since_ms = a.since_ms.max(now_ms);
        }
    }

    /// `n` VMs of `need` of account `id` start (`n` > 0) or stop (`n` < 0) holding capacity.
    pub fn charge(&mut self, id: u32, need: &Need, n: i64, now_ms: u64) {
        self.advance(id, now_ms);
        if let Some(a) = self.accounts.get_mut(id as usize) {
            let per_vm = need.cpu_milli + if need.slot.is_some() { 1000 } else { 0 };
            a.holding_milli += per_vm * n;
        }
    }

    /// Account `id`'s decayed usage at `now_ms`, in vCPU-seconds.
    pub fn usage_at(&self, id: u32, now_ms: u64) -> f64 {
        self.accounts.get(id as usize).map_or(0.0, |a| {
            let dt = now_ms.saturating_sub(a.since_ms) as f64;
            decayed(
                a.usage,
                a.holding_milli as f64,
                dt,
                self.half_life_ms as f64,
            ) / 1e6
        })
    }

    /// Orders the accounts as of `now_ms`: usage per unit of weight, lowest first; ties by
    /// the account's id (first seen first). Returns whether any account changed rank.
    pub fn rank(&mut self, now_ms: u64) -> bool {
        for id in 0..self.accounts.len() as u32 {
            self.advance(id, now_ms);
        }
        let accounts = &self.accounts;
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        order.extend(0..accounts.len() as u32);
        order.sort_by(|&a, &b| {
            let (x, y) = (&accounts[a as usize], &accounts[b as usize]);
            let fx = x.usage / f64::from(x.weight);
            let fy = y.usage / f64::from(y.weight);
            fx.total_cmp(&fy).then(a.cmp(&b))
        });
        let mut moved = false;
        for (rank, &id) in order.iter().enumerate() {
            let slot = &mut self.ranks[id as usize];
            moved |= *slot != rank as u32;
            *slot = rank as u32;
        }
        self.order = order;
        moved
    }
}

/// Usage `u` after `dt` ms of holding `rate`, halving every `half_life` ms: the old usage
/// decays, and what was held meanwhile adds its integral under the same decay.
fn decayed(u: f64, rate: f64, dt: f64, half_life: f64) -> f64 {
    if dt <= 0.0 {
        return u;
    }
    let k = std::f64::consts::LN_2 / half_life;
    let keep = (-k * dt).exp();
    u * keep + rate * (1.0 - keep) / k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_halves_in_a_half_life_and_accrues_while_held() {
        assert!((decayed(8.0, 0.0, 10.0, 10.0) - 4.0).abs() < 1e-9);
        // Holding 1 for a very short time adds about that time.
        assert!((decayed(0.0, 1.0, 1.0, 1e9) - 1.0).abs() < 1e-6);
        assert_eq!(decayed(3.0, 5.0, 0.0, 10.0), 3.0);
    }

    #[test]
    fn heavier_weight_ranks_first_at_equal_usage() {
        let mut fair = Fair::new(&FairShare {
            accounts: vec![crate::config::Account {
                name: "big".into(),
                weight: 3,
            }],
            ..FairShare::default()
        });
        let small = fair.account("small");
        let big = fair.account("big");
        let need = Need {
            cpu_milli: 1000,
            memory_mib: 1,
            slot: None,
            drivers: 0xff,
            labels: Vec::new(),
            label_bloom: 0,
            image: 0,
        };
        fair.charge(small, &need, 1, 0);
        fair.charge(big, &need, 2, 0);
        fair.rank(60_000);
        // big used twice as much but weighs three times as much.
        assert_eq!(fair.ranks[big as usize], 0);
        assert_eq!(fair.ranks[small as usize], 1);
    }
}
