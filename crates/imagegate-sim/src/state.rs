//! Shared simulator state: configuration, clocks and time scaling, identifiers, and the handles
//! (cancellation, task tracker, HTTP client) that background work needs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::control::Introspection;
use super::faults::FaultTable;
use super::files::FileStore;
use super::jobs::TaskStore;
use super::render::RenderCache;
use super::SimConfig;

/// Everything the handlers share; one per running simulator.
pub(crate) struct Shared {
    pub config: SimConfig,
    /// Prefix of result file links, without a trailing slash.
    pub base_url: String,
    /// Fires when the simulator shuts down; every wait in background work selects on it.
    pub cancel: CancellationToken,
    /// Every spawned task (jobs, callbacks), so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Client used for callback deliveries.
    pub http: reqwest::Client,
    pub tasks: Mutex<TaskStore>,
    pub files: Mutex<FileStore>,
    pub renders: RenderCache,
    pub intro: Mutex<Introspection>,
    pub faults: Mutex<FaultTable>,
    /// More accepted keys (`POST /_sim/accounts`): `true` if the account has credits, `false`
    /// if every call with that key answers 402.
    pub accounts: Mutex<std::collections::HashMap<String, bool>>,
    /// Round-robin counter choosing how a failed task reports its (missing) result URLs.
    failed_shape: AtomicU64,
    /// Polls being answered now (see `Stats::polls_in_flight_max`).
    polls_in_flight: AtomicU64,
}

pub(crate) type AppState = Arc<Shared>;

impl Shared {
    pub fn new(config: SimConfig, base_url: String) -> Self {
        let http = reqwest::Client::builder()
            .user_agent("apimodels-callback/1.0")
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            config,
            base_url: base_url.trim_end_matches('/').to_string(),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            http,
            tasks: Mutex::new(TaskStore::default()),
            files: Mutex::new(FileStore::default()),
            renders: RenderCache::default(),
            intro: Mutex::new(Introspection::default()),
            faults: Mutex::new(FaultTable::default()),
            accounts: Mutex::default(),
            failed_shape: AtomicU64::new(0),
            polls_in_flight: AtomicU64::new(0),
        }
    }

    /// Counts a poll in flight until the guard is dropped, and keeps the peak in the stats.
    pub fn poll_started(&self) -> PollInFlight<'_> {
        let now = self.polls_in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        let mut intro = lock(&self.intro);
        intro.stats.polls_in_flight_max = intro.stats.polls_in_flight_max.max(now);
        PollInFlight(&self.polls_in_flight)
    }

    /// `secs` of simulated time, multiplied by the configured time scale.
    pub fn scaled(&self, secs: f64) -> Duration {
        duration_secs(secs * self.config.time_scale)
    }

    /// A uniformly random simulated duration between `lo` and `hi` seconds, scaled.
    pub fn scaled_between(&self, lo: f64, hi: f64) -> Duration {
        self.scaled(lo + (hi - lo) * fastrand::f64())
    }

    /// The next value of a 0, 1, 2, 0, … cycle (used to vary how failures look).
    pub fn next_failed_shape(&self) -> u64 {
        self.failed_shape.fetch_add(1, Ordering::Relaxed) % 3
    }

    /// Sleeps for `d`; `false` when the simulator shut down first. A zero `d` does not wait for
    /// the next timer tick (time scale 0 answers at once).
    pub async fn sleep(&self, d: Duration) -> bool {
        if d.is_zero() {
            return !self.cancel.is_cancelled();
        }
        tokio::select! {
            () = self.cancel.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }
}

/// A poll being answered (see [`Shared::poll_started`]).
pub(crate) struct PollInFlight<'a>(&'a AtomicU64);

impl Drop for PollInFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the simulator's state
/// stays usable: every critical section leaves it consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A duration from (possibly absurd) seconds: negative and NaN become zero, huge values a day.
pub(crate) fn duration_secs(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs.min(86_400.0)).unwrap_or(Duration::ZERO)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A task id in the platform's style (`cl` + 23 lowercase alphanumerics, like a cuid).
pub(crate) fn new_task_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("cl{}", &hex[..23])
}
