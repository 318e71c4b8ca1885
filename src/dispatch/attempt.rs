//! One upstream attempt's money: its budget reservation, its slot under the upstream model's
//! caps, and the ledger row written if it is dropped mid-flight. An RAII guard — whatever path
//! leaves an attempt, its reservation ends exactly once: [`Attempt::settle`] books what the
//! upstream made, [`Attempt::release`] gives back a failure (failed generations are not billed),
//! and a drop without either (the client went away while the upstream worked) books it in full
//! with a 499 row, because the upstream may have billed it.

use tokio::time::Instant;

use crate::budget::Reservation;
use crate::ledger::Row;
use crate::limits::ModelPermit;
use crate::model::Usd;
use crate::store::Store;

pub struct Attempt {
    reservation: Option<Reservation>,
    _upstream: ModelPermit,
    /// The row written if the attempt is dropped mid-flight.
    orphan: Option<(Store, Row, Instant)>,
}

impl Attempt {
    pub(super) fn new(
        reservation: Reservation,
        upstream: ModelPermit,
        store: Store,
        orphan: Row,
    ) -> Self {
        Self {
            reservation: Some(reservation),
            _upstream: upstream,
            orphan: Some((store, orphan, Instant::now())),
        }
    }

    /// The attempt failed: nothing is billed.
    pub fn release(mut self) {
        self.orphan = None;
        drop(self.reservation.take());
    }

    /// The attempt served the request for `cost` (at most what was reserved): books it.
    pub fn settle(mut self, cost: Usd) {
        self.orphan = None;
        if let Some(r) = self.reservation.take() {
            let cost = cost.min(r.amount());
            r.settle(cost);
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let Some(r) = self.reservation.take() else {
            return;
        };
        let amount = r.amount();
        r.settle(amount);
        if let Some((store, mut row, started)) = self.orphan.take() {
            row.latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
            store.record(row);
        }
    }
}
