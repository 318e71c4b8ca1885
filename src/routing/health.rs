//! Passive health per upstream model, from real traffic: a circuit breaker, the rolling error
//! ratio, the last error, and latency (EWMA and percentiles) per quality.
//!
//! Circuit: `closed` → (`consecutive_failures` in a row, or `error_ratio` over `window` once
//! `min_requests` were seen) → `open` for `cooldown` → `half_open`: one live request (the probe)
//! goes through; its success closes the circuit, its failure opens it again. An "out of credits"
//! answer (402) opens it at once for `out_of_credits_cooldown`.
//!
//! NOTE: the breaker is a few lines of state here rather than a crate: the crates at hand
//! (`failsafe`, `tower`'s retry budget) have no single-probe half-open state, no reason-dependent
//! cooldown and no snapshot for the admin API, which are the parts that matter here.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::time::Instant;

use crate::config::CircuitConfig;
use crate::model::{ModelId, Quality};
use crate::upstream::failure::FailureKind;

/// Latency samples kept per model and quality for the percentiles.
const SAMPLES: usize = 200;
/// Weight of the newest sample in the latency EWMA.
const EWMA_ALPHA: f64 = 0.2;
/// Outcomes kept for the error ratio (older ones also leave with the window).
const MAX_WINDOW: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

impl From<CircuitState> for crate::metrics::CircuitGauge {
    fn from(s: CircuitState) -> Self {
        match s {
            CircuitState::Closed => Self::Closed,
            CircuitState::HalfOpen => Self::HalfOpen,
            CircuitState::Open => Self::Open,
        }
    }
}

/// What one attempt on a model tells about the model's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// The model failed (it counts against it).
    Failure(FailureKind),
    /// The upstream account is out of credits: bench the model for longer.
    OutOfCredits,
    /// The model answered, but the answer says nothing about its health (a content-policy
    /// refusal, a request it rejected, our key refused, a result file that could not be fetched).
    Neutral(FailureKind),
}

impl Verdict {
    /// How a failure of `kind` counts.
    pub fn of(kind: FailureKind) -> Self {
        use FailureKind as K;
        match kind {
            K::Connect
            | K::Timeout
            | K::ServerError
            | K::RateLimited
            | K::Malformed
            | K::Unknown => Self::Failure(kind),
            K::TaskFailed => Self::Failure(kind),
            K::OutOfCredits => Self::OutOfCredits,
            K::PolicyRejected | K::Rejected | K::Unauthorized | K::Download | K::Unrecorded => {
                Self::Neutral(kind)
            }
        }
    }
}

#[derive(Debug)]
enum Circuit {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug, Default)]
struct Latency {
    ewma: Option<f64>,
    samples: VecDeque<f64>,
}

impl Latency {
    fn push(&mut self, secs: f64) {
        self.ewma = Some(match self.ewma {
            None => secs,
            Some(e) => e + EWMA_ALPHA * (secs - e),
        });
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(secs);
    }

    fn percentile(&self, p: f64) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = self.samples.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v.get(rank - 1).copied()
    }
}

#[derive(Debug)]
struct ModelHealth {
    circuit: Circuit,
    consecutive_failures: u32,
    window: VecDeque<(Instant, bool)>,
    /// How many outcomes in `window` failed (kept as outcomes come and go: the error ratio is
    /// read on every request).
    failed: usize,
    last_error: Option<(FailureKind, SystemTime)>,
    /// By quality: low, medium (and auto), high.
    latency: [Latency; 3],
    times_opened: u64,
}

impl ModelHealth {
    fn new() -> Self {
        Self {
            circuit: Circuit::Closed,
            consecutive_failures: 0,
            window: VecDeque::new(),
            failed: 0,
            last_error: None,
            latency: Default::default(),
            times_opened: 0,
        }
    }

    fn prune(&mut self, now: Instant, window: Duration) {
        while self
            .window
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > window || self.window.len() > MAX_WINDOW)
        {
            if let Some((_, false)) = self.window.pop_front() {
                self.failed = self.failed.saturating_sub(1);
            }
        }
    }

    fn push(&mut self, now: Instant, ok: bool) {
        self.window.push_back((now, ok));
        if !ok {
            self.failed += 1;
        }
    }

    fn error_ratio(&self) -> Option<f64> {
        if self.window.is_empty() {
            return None;
        }
        Some(self.failed as f64 / self.window.len() as f64)
    }

    fn state(&self, now: Instant) -> CircuitState {
        match self.circuit {
            Circuit::Closed => CircuitState::Closed,
            Circuit::Open { until } if now >= until => CircuitState::HalfOpen,
            Circuit::Open { .. } => CircuitState::Open,
            Circuit::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

fn quality_index(q: Quality) -> usize {
    match q {
        Quality::Low => 0,
        Quality::Medium | Quality::Auto => 1,
        Quality::High => 2,
    }
}

/// Whether a model may be sent a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Available,
    /// Open (or half-open with its probe in flight); `retry_after` until it may be tried.
    Unavailable {
        retry_after: Duration,
    },
}

/// Whether a model whose breaker is on can be tried at `now` (without taking the probe).
fn availability_of(h: &ModelHealth, now: Instant) -> Availability {
    match h.circuit {
        Circuit::Closed | Circuit::HalfOpen { probing: false } => Availability::Available,
        Circuit::Open { until } if now >= until => Availability::Available,
        Circuit::Open { until } => Availability::Unavailable {
            retry_after: until - now,
        },
        Circuit::HalfOpen { probing: true } => Availability::Unavailable {
            retry_after: Duration::from_secs(1),
        },
    }
}

/// One model's health as routing sees it (see [`Health::view`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelView {
    pub availability: Availability,
    /// Observed p90 latency for the request's quality; `None` until enough was seen.
    pub p90: Option<Duration>,
    /// Success ratio over the window (1 with no traffic).
    pub ok: f64,
    /// Latency EWMA in seconds for the request's quality.
    pub ewma_s: Option<f64>,
}

/// Every model's [`ModelView`] at one instant.
#[derive(Debug, Clone)]
pub struct HealthView([ModelView; ModelId::COUNT]);

impl HealthView {
    /// Every model available, nothing observed: the view of a fresh gateway.
    pub fn fresh() -> Self {
        Self(
            [ModelView {
                availability: Availability::Available,
                p90: None,
                ok: 1.0,
                ewma_s: None,
            }; ModelId::COUNT],
        )
    }

    pub fn get(&self, m: ModelId) -> &ModelView {
        &self.0[index(m)]
    }

    pub fn get_mut(&mut self, m: ModelId) -> &mut ModelView {
        &mut self.0[index(m)]
    }
}

/// Health of every upstream model.
pub struct Health {
    config: CircuitConfig,
    models: [Mutex<ModelHealth>; ModelId::COUNT],
    /// Where this process's circuit openings are told (replicas share them), if anywhere.
    openings: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Opening>>>,
}

/// A circuit this process opened: the model and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opening {
    pub model: ModelId,
    pub cooldown: Duration,
}

fn index(m: ModelId) -> usize {
    m.index()
}

impl Health {
    pub fn new(config: CircuitConfig) -> Self {
        Self {
            config,
            models: std::array::from_fn(|_| Mutex::new(ModelHealth::new())),
            openings: Mutex::new(None),
        }
    }

    /// From now on, each circuit this process opens is also sent here.
    pub fn tell_openings(&self) -> tokio::sync::mpsc::UnboundedReceiver<Opening> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        if let Ok(mut slot) = self.openings.lock() {
            *slot = Some(tx);
        }
        rx
    }

    fn opened(&self, model: ModelId, cooldown: Duration) {
        if let Ok(slot) = self.openings.lock() {
            if let Some(tx) = slot.as_ref() {
                let _ = tx.send(Opening { model, cooldown });
            }
        }
    }

    /// Opens `m`'s circuit for `cooldown` because another replica opened it (the platform
    /// failed it there): no request here pays to find out again. A circuit already open stays
    /// as it is.
    pub fn open_elsewhere(&self, m: ModelId, cooldown: Duration) {
        if !self.config.enabled {
            return;
        }
        let mut h = self.lock(m);
        if matches!(
            h.circuit,
            Circuit::Closed | Circuit::HalfOpen { probing: false }
        ) {
            h.circuit = Circuit::Open {
                until: Instant::now() + cooldown,
            };
            tracing::warn!(model = %m, cooldown_s = cooldown.as_secs(), "circuit open: opened by another replica");
        }
    }

    fn lock(&self, m: ModelId) -> MutexGuard<'_, ModelHealth> {
        self.models[index(m)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `m` can be tried now (without taking the half-open probe).
    pub fn availability(&self, m: ModelId) -> Availability {
        if !self.config.enabled {
            return Availability::Available;
        }
        let h = self.lock(m);
        availability_of(&h, Instant::now())
    }

    /// Takes the right to send one request to `m`: always granted while closed; once after the
    /// cooldown (the half-open probe). `None`: the circuit is open.
    pub fn admit(&self, m: ModelId) -> Option<Ticket<'_>> {
        let mut h = self.lock(m);
        let now = Instant::now();
        let probe = match h.circuit {
            _ if !self.config.enabled => false,
            Circuit::Closed => false,
            Circuit::Open { until } if now >= until => true,
            Circuit::HalfOpen { probing: false } => true,
            Circuit::Open { .. } | Circuit::HalfOpen { probing: true } => return None,
        };
        if probe {
            h.circuit = Circuit::HalfOpen { probing: true };
            tracing::info!(model = %m, "circuit half-open: sending one probe request");
        }
        Some(Ticket {
            health: self,
            model: m,
            probe,
            done: false,
        })
    }

    fn record(&self, m: ModelId, quality: Quality, outcome: Verdict, elapsed: Duration) {
        let c = &self.config;
        let mut h = self.lock(m);
        let now = Instant::now();
        h.prune(now, c.window);
        match outcome {
            Verdict::Success => {
                h.consecutive_failures = 0;
                h.push(now, true);
                h.latency[quality_index(quality)].push(elapsed.as_secs_f64());
                if !matches!(h.circuit, Circuit::Closed) {
                    tracing::info!(model = %m, "circuit closed: the probe succeeded");
                }
                h.circuit = Circuit::Closed;
            }
            Verdict::Neutral(kind) => {
                h.last_error = Some((kind, SystemTime::now()));
                if matches!(h.circuit, Circuit::HalfOpen { .. }) {
                    h.circuit = Circuit::Closed;
                }
            }
            Verdict::OutOfCredits if !c.enabled => {
                h.last_error = Some((FailureKind::OutOfCredits, SystemTime::now()));
            }
            Verdict::OutOfCredits => {
                h.last_error = Some((FailureKind::OutOfCredits, SystemTime::now()));
                h.times_opened += 1;
                h.circuit = Circuit::Open {
                    until: now + c.out_of_credits_cooldown,
                };
                tracing::warn!(model = %m, cooldown_s = c.out_of_credits_cooldown.as_secs(), "circuit open: upstream out of credits");
                drop(h);
                self.opened(m, c.out_of_credits_cooldown);
            }
            Verdict::Failure(kind) => {
                h.consecutive_failures += 1;
                h.push(now, false);
                h.last_error = Some((kind, SystemTime::now()));
                let ratio = h.error_ratio().unwrap_or_default();
                let trip = match h.circuit {
                    _ if !c.enabled => false,
                    Circuit::HalfOpen { .. } => true,
                    Circuit::Open { .. } => false,
                    Circuit::Closed => {
                        h.consecutive_failures >= c.consecutive_failures
                            || (h.window.len() >= c.min_requests as usize && ratio >= c.error_ratio)
                    }
                };
                if trip {
                    h.times_opened += 1;
                    h.circuit = Circuit::Open {
                        until: now + c.cooldown,
                    };
                    tracing::warn!(model = %m, consecutive = h.consecutive_failures, error_ratio = ratio, kind = ?kind, "circuit open");
                    drop(h);
                    self.opened(m, c.cooldown);
                }
            }
        }
    }

    /// Success ratio over the window (1 with no traffic) and latency EWMA for `quality`.
    pub fn score(&self, m: ModelId, quality: Quality) -> (f64, Option<f64>) {
        let mut h = self.lock(m);
        h.prune(Instant::now(), self.config.window);
        let ok = 1.0 - h.error_ratio().unwrap_or_default();
        (ok, h.latency[quality_index(quality)].ewma)
    }

    /// Observed p90 latency for `quality`, once `min_samples` were seen.
    pub fn p90(&self, m: ModelId, quality: Quality, min_samples: usize) -> Option<Duration> {
        let h = self.lock(m);
        let l = &h.latency[quality_index(quality)];
        if l.samples.len() < min_samples.max(1) {
            return None;
        }
        l.percentile(0.9).map(Duration::from_secs_f64)
    }

    /// What routing needs to know about `members` for one request of `quality`, read once with
    /// one lock per model: availability, success ratio, latency EWMA and — only when the caller
    /// set a latency budget (`p90_after`: the samples needed) — the observed p90. Routing
    /// decides from this value alone.
    pub fn view(
        &self,
        members: &[ModelId],
        quality: Quality,
        p90_after: Option<usize>,
    ) -> HealthView {
        let mut view = HealthView::fresh();
        let now = Instant::now();
        for &m in members {
            let mut h = self.lock(m);
            h.prune(now, self.config.window);
            let availability = if self.config.enabled {
                availability_of(&h, now)
            } else {
                Availability::Available
            };
            let ok = 1.0 - h.error_ratio().unwrap_or_default();
            let l = &h.latency[quality_index(quality)];
            let p90 = p90_after
                .filter(|min| l.samples.len() >= (*min).max(1))
                .and_then(|_| l.percentile(0.9))
                .map(Duration::from_secs_f64);
            *view.get_mut(m) = ModelView {
                availability,
                p90,
                ok,
                ewma_s: l.ewma,
            };
        }
        view
    }

    pub fn state(&self, m: ModelId) -> CircuitState {
        self.lock(m).state(Instant::now())
    }

    /// Everything known about `m`, for `GET /admin/upstreams`.
    pub fn snapshot(&self, m: ModelId) -> Snapshot {
        let mut h = self.lock(m);
        let now = Instant::now();
        h.prune(now, self.config.window);
        let latency = [Quality::Low, Quality::Medium, Quality::High].map(|q| {
            let l = &h.latency[quality_index(q)];
            LatencySnapshot {
                quality: q.as_str(),
                samples: l.samples.len(),
                ewma_s: l.ewma,
                p50_s: l.percentile(0.5),
                p90_s: l.percentile(0.9),
                p99_s: l.percentile(0.99),
            }
        });
        Snapshot {
            circuit: h.state(now),
            open_for_s: match h.circuit {
                Circuit::Open { until } if until > now => Some((until - now).as_secs_f64()),
                _ => None,
            },
            consecutive_failures: h.consecutive_failures,
            requests_in_window: h.window.len(),
            error_ratio: h.error_ratio(),
            times_opened: h.times_opened,
            last_error: h.last_error.map(|(kind, at)| LastError {
                kind: kind.as_str(),
                at_unix_s: at
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default(),
            }),
            latency,
        }
    }
}

/// The right to send one request to a model; reports the outcome to the health table. Dropped
/// without an outcome (the caller went away), a half-open probe is given back.
pub struct Ticket<'a> {
    health: &'a Health,
    model: ModelId,
    probe: bool,
    done: bool,
}

impl Ticket<'_> {
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    pub fn finish(mut self, quality: Quality, outcome: Verdict, elapsed: Duration) {
        self.done = true;
        self.health.record(self.model, quality, outcome, elapsed);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe && !self.done {
            let mut h = self.health.lock(self.model);
            if matches!(h.circuit, Circuit::HalfOpen { probing: true }) {
                h.circuit = Circuit::HalfOpen { probing: false };
            }
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub circuit: CircuitState,
    /// Seconds until an open circuit lets a probe through.
    pub open_for_s: Option<f64>,
    pub consecutive_failures: u32,
    pub requests_in_window: usize,
    pub error_ratio: Option<f64>,
    pub times_opened: u64,
    pub last_error: Option<LastError>,
    pub latency: [LatencySnapshot; 3],
}

#[derive(Debug, Serialize)]
pub struct LastError {
    pub kind: &'static str,
    pub at_unix_s: u64,
}

#[derive(Debug, Serialize)]
pub struct LatencySnapshot {
    pub quality: &'static str,
    pub samples: usize,
    pub ewma_s: Option<f64>,
    pub p50_s: Option<f64>,
    pub p90_s: Option<f64>,
    pub p99_s: Option<f64>,
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
