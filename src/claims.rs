//! Jobs across replicas sharing a store (PostgreSQL): each job is claimed by one replica — its
//! `owner`, a `lease_epoch` and a `lease_until` from the database's clock. This loop renews the
//! claims of this replica's jobs every third of `[cluster] lease`, and takes over the jobs whose
//! claim lapsed (their replica died or stalled), which are then settled or followed to their end
//! as a restarted single process would (`Dispatch::resume`). Every job write is fenced on the
//! claim's epoch, so a stalled replica that wakes up cannot write a second result.

use std::future::Future;
use std::sync::Arc;

use crate::state::AppState;
use crate::store::Store;

/// Most jobs taken over in one round.
const CLAIM_BATCH: u32 = 32;

/// Renews and takes over claims until `stop` resolves; returns at once on SQLite.
pub async fn run(state: Arc<AppState>, stop: impl Future<Output = ()>) {
    let Store::Postgres(pg) = state.store().clone() else {
        return;
    };
    let every = state.config.cluster.lease / 3;
    tokio::pin!(stop);
    loop {
        if let Err(e) = pg.renew().await {
            tracing::warn!(error = %e, "could not renew this replica's job claims");
        }
        match pg.claim_lapsed(CLAIM_BATCH).await {
            Ok(jobs) => {
                for job in jobs {
                    tracing::info!(job_id = %job.id, state = job.state.as_str(), epoch = job.epoch, "taking over a job whose replica's claim lapsed");
                    state.metrics.job(crate::metrics::JobEvent::TakenOver);
                    state.jobs.resume(&state, job);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not look for lapsed job claims"),
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = &mut stop => return,
        }
    }
}
