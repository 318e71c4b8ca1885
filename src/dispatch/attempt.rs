//! One upstream attempt's money: its budget reservation and its slot under the upstream model's
//! caps. An RAII guard — whatever path leaves an attempt, its reservation ends exactly once:
//! [`Attempt::settle`] books what the upstream made (or, when the outcome is unknown, what was
//! reserved), [`Attempt::release`] gives back a failure the upstream provably did not bill, and
//! a drop without either (the process is stopping mid-call) books it in full: the job's record
//! in the store is what the next process settles.

use crate::budget::Reservation;
use crate::limits::ModelPermit;
use crate::model::Usd;

pub struct Attempt {
    reservation: Option<Reservation>,
    _upstream: ModelPermit,
}

impl Attempt {
    pub(super) fn new(reservation: Reservation, upstream: ModelPermit) -> Self {
        Self {
            reservation: Some(reservation),
            _upstream: upstream,
        }
    }

    /// The attempt failed and the upstream provably did not bill it.
    pub fn release(mut self) {
        drop(self.reservation.take());
    }

    /// The attempt is booked at `cost` (at most what was reserved).
    pub fn settle(mut self, cost: Usd) {
        if let Some(r) = self.reservation.take() {
            let cost = cost.min(r.amount());
            r.settle(cost);
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            let amount = r.amount();
            r.settle(amount);
        }
    }
}
