//! Crash points for the crash tests: with the `failpoints` feature, `IMAGEGATE_FAILPOINT=<name>`
//! makes the process abort (no destructors, no flush: as abrupt as a SIGKILL) the first time it
//! reaches the point of that name. Without the feature, [`hit`] is nothing.
//!
//! Points: `after_create_sent` (the upstream answered a create, nothing recorded of the answer),
//! `after_task_id` (the task id is committed), `after_settle` (the job's terminal state and ledger
//! row are committed, the answer not yet sent).

/// Aborts the process if `IMAGEGATE_FAILPOINT` names `point`.
#[cfg(feature = "failpoints")]
pub fn hit(point: &str) {
    if std::env::var("IMAGEGATE_FAILPOINT").is_ok_and(|p| p == point) {
        tracing::error!(point, "failpoint reached: aborting");
        std::process::abort();
    }
}

/// Nothing: crash points are compiled in only with the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_point: &str) {}
