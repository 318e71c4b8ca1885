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
//! One process alone (SQLite): spend and reservations of every key and team live in memory under
//! one mutex, so the check and the reservation are one atomic step: fifty concurrent requests
//! against a budget that fits ten get exactly ten reservations. The spend is loaded from the
//! ledger at startup (the ledger is the durable truth); monthly budgets follow the calendar month
//! in UTC.
//!
//! Replicas sharing PostgreSQL: the database holds the money ([`crate::store::pg::money`]). A
//! reservation is a hold inserted in the transaction that checks it, with the payers' spend rows
//! locked; the ledger row that books the request ends its holds in its own transaction. The
//! in-memory accounts then only cache what the admin API shows ([`Budgets::refresh`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;

use crate::config::Budget;
use crate::error::ApiError;
use crate::keys::ClientKey;
use crate::ledger::utc_month;
use crate::model::Usd;
use crate::store::pg::{money, Pg};
use crate::store::{Op, Spent};

/// Whose money: a key or a team.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Payer {
    Key(String),
    Team(String),
}

impl Payer {
    /// Its row in the shared database's `spend` table.
    fn row(&self) -> String {
        match self {
            Payer::Key(id) => format!("key:{id}"),
            Payer::Team(id) => format!("team:{id}"),
        }
    }
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

/// A payer's spend and holds as the shared database has them.
impl From<money::Balance> for Account {
    fn from(b: money::Balance) -> Self {
        Self {
            month: b.month,
            month_spent: Usd(b.month_spent),
            total_spent: Usd(b.total_spent),
            reserved: Usd(b.held),
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
    /// The shared database holding the money, for replicas.
    shared: Option<Pg>,
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
    /// The hold in the shared database, when there is one.
    hold: Option<(Pg, String)>,
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
            shared: None,
        }
    }

    /// Budgets kept in the shared database `pg`.
    pub fn shared(pg: Pg) -> Self {
        Self {
            accounts: Accounts::default(),
            shared: Some(pg),
        }
    }

    /// Reserves `cost` for what `reference` names (a job id, a text call id) against the
    /// caller's key and team budgets, or refuses with 429 `insufficient_quota` naming the
    /// budget that would be exceeded.
    pub async fn reserve(
        &self,
        caller: &ClientKey,
        cost: Usd,
        reference: &str,
    ) -> Result<Reservation, ApiError> {
        let payers = Self::payers_of(caller);
        self.reserve_job(&payers, &caller.id, caller.team_id(), cost, reference)
            .await
    }

    fn payers_of(caller: &ClientKey) -> Vec<(Payer, Budget)> {
        let mut payers = vec![(Payer::Key(caller.id.to_string()), caller.record.budget)];
        if let Some(team) = caller.team_id() {
            let budget = caller.team.as_ref().map(|t| t.budget).unwrap_or_default();
            payers.push((Payer::Team(team.to_owned()), budget));
        }
        payers
    }

    /// [`reserve`](Self::reserve) for explicit payers (a job taken back after a restart or
    /// from another replica). Replicas: a hold in the shared database (see the module docs).
    pub async fn reserve_job(
        &self,
        payers: &[(Payer, Budget)],
        key_id: &str,
        team: Option<&str>,
        cost: Usd,
        reference: &str,
    ) -> Result<Reservation, ApiError> {
        let Some(pg) = &self.shared else {
            return self.reserve_for(payers, cost);
        };
        // No budget to check: nothing to hold (the ledger row still moves the spend).
        if payers.iter().all(|(_, b)| !b.is_limited()) {
            return Ok(self.held(cost, None));
        }
        let month = utc_month(SystemTime::now());
        let limits: Vec<money::Limit> = payers
            .iter()
            .map(|(p, b)| money::Limit {
                payer: p.row(),
                monthly: b.monthly.map(Usd::micros),
                total: b.total.map(Usd::micros),
            })
            .collect();
        // Boxed: sqlx's future would otherwise size every request's future, on one process too.
        let decided = Box::pin(money::reserve(
            pg.pool(),
            pg.claimant(),
            &month,
            key_id,
            team,
            &limits,
            cost.micros(),
            reference,
        ))
        .await
        .map_err(ApiError::from)?;
        match decided {
            Ok(hold) => Ok(self.held(cost, Some((pg.clone(), hold)))),
            Err(r) => {
                let (kind, id) = r.payer.split_once(':').unwrap_or(("key", &r.payer));
                Err(ApiError::insufficient_quota(format!(
                    "You exceeded the {} budget of {kind} `{id}` (${}): ${} spent, ${} in flight, this request costs ${cost}.",
                    r.which,
                    Usd(r.limit),
                    Usd(r.spent),
                    Usd(r.held)
                )))
            }
        }
    }

    /// A reservation of the shared database's, kept by `hold` (none when no budget applies).
    fn held(&self, amount: Usd, hold: Option<(Pg, String)>) -> Reservation {
        Reservation {
            accounts: self.accounts.clone(),
            payers: Vec::new(),
            amount,
            done: false,
            hold,
        }
    }

    /// Whether the money is in the shared database (replicas).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// [`refresh`](Self::refresh) for every payer the shared database knows (the admin API).
    pub async fn refresh_all(&self) {
        let Some(pg) = &self.shared else { return };
        let month = utc_month(SystemTime::now());
        match money::all_balances(pg.pool(), &month).await {
            Ok(balances) => {
                let mut accounts = lock(&self.accounts);
                for (row, b) in balances {
                    let payer = match row.split_once(':') {
                        Some(("team", id)) => Payer::Team(id.to_owned()),
                        Some((_, id)) => Payer::Key(id.to_owned()),
                        None => continue,
                    };
                    accounts.insert(payer, Account::from(b));
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read spend from the database"),
        }
    }

    /// Reads `payers`' spend and holds from the shared database into the accounts that
    /// [`view`](Self::view) and [`used_ratio`](Self::used_ratio) show; nothing for one process.
    pub async fn refresh(&self, payers: &[Payer]) {
        let Some(pg) = &self.shared else { return };
        let month = utc_month(SystemTime::now());
        let rows: Vec<String> = payers.iter().map(Payer::row).collect();
        match money::balances(pg.pool(), &month, &rows).await {
            Ok(balances) => {
                let mut accounts = lock(&self.accounts);
                for (payer, (_, b)) in payers.iter().zip(balances) {
                    accounts.insert(payer.clone(), Account::from(b));
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read spend from the database"),
        }
    }

    /// An in-memory reservation for explicit payers (one process).
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
            hold: None,
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
        if let Some((pg, hold)) = self.hold.take() {
            // Booked: the ledger row that books it ends the hold in its own transaction.
            // Released: the hold ends now.
            if spent.is_none() {
                pg.write_later(vec![Op::ReleaseHold(hold)]);
            }
            return;
        }
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
