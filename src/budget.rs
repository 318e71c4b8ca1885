//! Budgets: reserve a request's exact cost before the upstream call, settle it on success,
//! release it on failure.
//!
//! ```ignore
//! let r = state.budgets.reserve(&caller, cost)?;   // 429 insufficient_quota if it does not fit
//! // … the upstream call …
//! r.settle(served_cost);                           // success: spent += cost of what served it
//! drop(r);                                          // failure (or no settle): released
//! ```
//!
//! Spend and reservations of every key and team live in memory under one mutex, so the check
//! and the reservation are one atomic step: fifty concurrent requests against a budget that fits
//! ten get exactly ten reservations. The spend is loaded from the ledger at startup (the ledger
//! is the durable truth); monthly budgets follow the calendar month in UTC.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;

use crate::config::Budget;
use crate::error::ApiError;
use crate::keys::ClientKey;
use crate::ledger::utc_month;
use crate::model::Usd;
use crate::store::Spent;

/// Whose money: a key or a team.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Payer {
    Key(String),
    Team(String),
}

#[derive(Debug, Clone, Default)]
struct Account {
    /// `YYYY-MM` that `month_spent` belongs to.
    month: String,
    month_spent: Usd,
    total_spent: Usd,
    reserved: Usd,
}

impl Account {
    fn roll(&mut self, month: &str) {
        if self.month != month {
            self.month = month.to_owned();
            self.month_spent = Usd::ZERO;
        }
    }
}

/// Current spend of one payer, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct SpendView {
    pub month: String,
    pub month_spent_usd: String,
    pub total_spent_usd: String,
    pub reserved_usd: String,
}

type Accounts = Arc<Mutex<HashMap<Payer, Account>>>;

/// Spend and reservations of every key and team.
#[derive(Default)]
pub struct Budgets {
    accounts: Accounts,
}

/// Money set aside for one request. [`settle`](Self::settle) books the actual cost; dropping
/// it unsettled gives the reservation back.
#[must_use = "a reservation is released when dropped; settle it on success"]
#[derive(Debug)]
pub struct Reservation {
    accounts: Accounts,
    payers: Vec<Payer>,
    amount: Usd,
    done: bool,
}

fn lock(a: &Accounts) -> MutexGuard<'_, HashMap<Payer, Account>> {
    a.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Budgets {
    /// Starts from the ledger's sums (`by_key`, `by_team`) for the current month and all time.
    pub fn load(by_key: Vec<(String, Spent)>, by_team: Vec<(String, Spent)>) -> Self {
        let month = utc_month(SystemTime::now());
        let account = |s: Spent| Account {
            month: month.clone(),
            month_spent: Usd(s.month),
            total_spent: Usd(s.total),
            reserved: Usd::ZERO,
        };
        let mut map = HashMap::new();
        for (id, s) in by_key {
            map.insert(Payer::Key(id), account(s));
        }
        for (id, s) in by_team {
            map.insert(Payer::Team(id), account(s));
        }
        Self {
            accounts: Arc::new(Mutex::new(map)),
        }
    }

    /// Reserves `cost` against the caller's key and team budgets, or refuses with 429
    /// `insufficient_quota` naming the budget that would be exceeded.
    pub fn reserve(&self, caller: &ClientKey, cost: Usd) -> Result<Reservation, ApiError> {
        let mut payers = vec![(Payer::Key(caller.id.to_string()), caller.record.budget)];
        if let Some(team) = caller.team_id() {
            let budget = caller.team.as_ref().map(|t| t.budget).unwrap_or_default();
            payers.push((Payer::Team(team.to_owned()), budget));
        }
        self.reserve_for(&payers, cost)
    }

    /// [`reserve`](Self::reserve) for explicit payers.
    pub fn reserve_for(
        &self,
        payers: &[(Payer, Budget)],
        cost: Usd,
    ) -> Result<Reservation, ApiError> {
        let month = utc_month(SystemTime::now());
        let mut accounts = lock(&self.accounts);
        for (payer, budget) in payers {
            let a = accounts.entry(payer.clone()).or_default();
            a.roll(&month);
            let (kind, id) = match payer {
                Payer::Key(id) => ("key", id),
                Payer::Team(id) => ("team", id),
            };
            let checks = [
                ("monthly", budget.monthly, a.month_spent),
                ("total", budget.total, a.total_spent),
            ];
            for (which, limit, spent) in checks {
                let Some(limit) = limit else { continue };
                if spent + a.reserved + cost > limit {
                    return Err(ApiError::insufficient_quota(format!(
                        "You exceeded the {which} budget of {kind} `{id}` (${limit}): ${} spent, ${} in flight, this request costs ${cost}.",
                        spent, a.reserved
                    )));
                }
            }
        }
        for (payer, _) in payers {
            if let Some(a) = accounts.get_mut(payer) {
                a.reserved = a.reserved + cost;
            }
        }
        Ok(Reservation {
            accounts: self.accounts.clone(),
            payers: payers.iter().map(|(p, _)| p.clone()).collect(),
            amount: cost,
            done: false,
        })
    }

    /// Gives back `amount` booked for a job that an operator resolved as not billed.
    pub fn refund(&self, key_id: &str, team: Option<&str>, amount: Usd) {
        let month = utc_month(SystemTime::now());
        let mut accounts = lock(&self.accounts);
        let payers = std::iter::once(Payer::Key(key_id.to_owned()))
            .chain(team.map(|t| Payer::Team(t.to_owned())));
        for payer in payers {
            let a = accounts.entry(payer).or_default();
            a.roll(&month);
            a.month_spent = Usd(a.month_spent.micros().saturating_sub(amount.micros()));
            a.total_spent = Usd(a.total_spent.micros().saturating_sub(amount.micros()));
        }
    }

    /// The largest share of a budget `payer` has spent (monthly or total), if it has one.
    pub fn used_ratio(&self, payer: &Payer, budget: Budget) -> Option<f64> {
        let month = utc_month(SystemTime::now());
        let mut accounts = lock(&self.accounts);
        let a = accounts.entry(payer.clone()).or_default();
        a.roll(&month);
        [
            (budget.monthly, a.month_spent),
            (budget.total, a.total_spent),
        ]
        .into_iter()
        .filter_map(|(limit, spent)| {
            let limit = limit?;
            Some(if limit == Usd::ZERO {
                1.0
            } else {
                spent.as_dollars() / limit.as_dollars()
            })
        })
        .reduce(f64::max)
    }

    /// Current spend of `payer` (zero when it never spent).
    pub fn view(&self, payer: &Payer) -> SpendView {
        let month = utc_month(SystemTime::now());
        let mut accounts = lock(&self.accounts);
        let a = accounts.entry(payer.clone()).or_default();
        a.roll(&month);
        SpendView {
            month: a.month.clone(),
            month_spent_usd: a.month_spent.to_string(),
            total_spent_usd: a.total_spent.to_string(),
            reserved_usd: a.reserved.to_string(),
        }
    }
}

impl Reservation {
    /// Books `actual` (the cost of the model that served the request) and ends the reservation.
    pub fn settle(mut self, actual: Usd) {
        self.finish(Some(actual));
    }

    pub fn amount(&self) -> Usd {
        self.amount
    }

    fn finish(&mut self, spent: Option<Usd>) {
        if self.done {
            return;
        }
        self.done = true;
        let month = utc_month(SystemTime::now());
        let mut accounts = lock(&self.accounts);
        for payer in &self.payers {
            let a = accounts.entry(payer.clone()).or_default();
            a.roll(&month);
            a.reserved = Usd(a.reserved.micros().saturating_sub(self.amount.micros()));
            if let Some(s) = spent {
                a.month_spent = a.month_spent + s;
                a.total_spent = a.total_spent + s;
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.finish(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payers(monthly: u64) -> Vec<(Payer, Budget)> {
        vec![
            (
                Payer::Key("k".into()),
                Budget {
                    monthly: Some(Usd(monthly)),
                    total: None,
                },
            ),
            (Payer::Team("t".into()), Budget::default()),
        ]
    }

    #[test]
    fn reserve_settle_release() {
        let b = Budgets::default();
        let p = payers(100);
        let r1 = b.reserve_for(&p, Usd(60)).unwrap();
        assert_eq!(
            b.reserve_for(&p, Usd(50)).unwrap_err().code.as_str(),
            "insufficient_quota"
        );
        drop(r1);
        let r2 = b.reserve_for(&p, Usd(50)).unwrap();
        r2.settle(Usd(40));
        let v = b.view(&Payer::Key("k".into()));
        assert_eq!(
            (v.month_spent_usd.as_str(), v.reserved_usd.as_str()),
            ("0.00004", "0")
        );
        assert!(b.reserve_for(&p, Usd(60)).is_ok());
        assert!(b.reserve_for(&p, Usd(61)).is_err());
        assert_eq!(b.view(&Payer::Team("t".into())).total_spent_usd, "0.00004");
    }

    #[test]
    fn concurrent_reservations_never_exceed() {
        let b = Arc::new(Budgets::default());
        let p = payers(1000);
        let handles: Vec<_> = (0..50)
            .map(|_| {
                let (b, p) = (b.clone(), p.clone());
                std::thread::spawn(move || b.reserve_for(&p, Usd(100)).map(|r| r.settle(Usd(100))))
            })
            .collect();
        let ok = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(Result::is_ok)
            .count();
        assert_eq!(ok, 10);
        assert_eq!(b.view(&Payer::Key("k".into())).month_spent_usd, "0.001");
    }
}
