//! What replicas sharing a store (PostgreSQL) and Redis do to stay one gateway.
//!
//! **Job claims** ([`claims`]): each job is claimed by one replica — its
//! `owner`, a `lease_epoch` and a `lease_until` from the database's clock. This loop renews the
//! claims of this replica's jobs every third of `[cluster] lease`, and takes over the jobs whose
//! claim lapsed (their replica died or stalled), which are then settled or followed to their end
//! as a restarted single process would (`Dispatch::resume`). Every job write is fenced on the
//! claim's epoch, so a stalled replica that wakes up cannot write a second result.
//!
//! **Key changes** ([`follow_key_changes`]): a key or team changed through one replica's admin
//! API is announced in Redis ([`Cluster::announce_key_change`]); every replica forgets its cached
//! keys and reads its teams again when the version moves — told at once by the published
//! message, and reading the version every 250 ms since a message can be lost: a disabled key is
//! refused everywhere within a second.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::cluster::VERSION_EVERY;
use crate::model::ModelId;
use crate::state::AppState;
use crate::store::Store;

/// Most jobs taken over in one round.
const CLAIM_BATCH: u32 = 32;

/// Renews and takes over claims until `stop` resolves; returns at once on SQLite.
pub async fn claims(state: Arc<AppState>, stop: impl Future<Output = ()>) {
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

/// Follows key and team changes made through other replicas until `stop` resolves; returns at
/// once without Redis.
pub async fn follow_key_changes(state: Arc<AppState>, stop: impl Future<Output = ()>) {
    let Some(cluster) = state.cluster.clone() else {
        return;
    };
    let told = Notify::new();
    let channel = cluster.keys_channel();
    let listening = cluster.follow(&channel, |_| told.notify_one());
    tokio::pin!(stop, listening);
    let mut seen = cluster.keys_version().await.ok();
    loop {
        tokio::select! {
            () = told.notified() => {}
            () = tokio::time::sleep(VERSION_EVERY) => {}
            () = &mut listening => {}
            () = &mut stop => return,
        }
        let Ok(version) = cluster.keys_version().await else {
            continue;
        };
        if seen == Some(version) {
            continue;
        }
        seen = Some(version);
        state.keys.forget_dynamic();
        match state.store().teams().await {
            Ok(teams) => state.keys.replace_stored_teams(teams),
            Err(e) => tracing::warn!(error = %e, "could not read the teams again after a change"),
        }
        tracing::debug!(
            version,
            "keys and teams changed on another replica: cache cleared"
        );
    }
}

/// Shares circuit openings through Redis until `stop` resolves: this replica's are published,
/// the others' open the same circuit here for the same cooldown. Returns at once without Redis.
pub async fn share_circuits(state: Arc<AppState>, stop: impl Future<Output = ()>) {
    let Some(cluster) = state.cluster.clone() else {
        return;
    };
    let me = uuid::Uuid::new_v4().simple().to_string();
    let mut openings = state.health.tell_openings();
    let publish = async {
        while let Some(o) = openings.recv().await {
            cluster
                .publish_opening(&me, o.model.as_str(), o.cooldown)
                .await;
        }
    };
    let channel = cluster.circuits_channel();
    let follow = cluster.follow(&channel, |text| {
        let mut parts = text.split('|');
        let (Some(from), Some(model), Some(ms)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let (Ok(model), Ok(ms)) = (model.parse::<ModelId>(), ms.parse::<u64>()) else {
            return;
        };
        if from != me {
            state
                .health
                .open_elsewhere(model, std::time::Duration::from_millis(ms));
        }
    });
    tokio::select! {
        () = publish => {}
        () = follow => {}
        () = stop => {}
    }
}
