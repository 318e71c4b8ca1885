//! Rate and concurrency limits, checked before any upstream call and any spend.
//!
//! - Per key and per team (independently): requests per minute and images per minute (GCRA via
//!   `governor`; a request takes `n` image cells; the whole minute's allowance may be used at
//!   once), and requests in flight. Over a limit: 429 `rate_limit_exceeded` with `retry-after`
//!   (≤ 60 s, as the SDKs honour it), `retry-after-ms` and `x-ratelimit-{limit,remaining,reset}-
//!   {requests,images}`. Successful answers carry the same `x-ratelimit-*` headers.
//! - Per upstream model (`[limits.models.<id>]`): request rate and concurrency that protect the
//!   upstream account; every model has a concurrency cap by default (the registry's
//!   `max_concurrent`). A request over the cap waits up to `queue_timeout` for room, then is
//!   refused with a 429.
//!
//! Checks run key first, then team; a request refused by the team's limit has already used one
//! cell of the key's allowance (limits are protective, not billing).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cluster::{Cluster, Slot, Take};
use crate::config::{FailMode, Limits, LimitsConfig, DEFAULT_QUEUE_TIMEOUT};
use crate::error::{ApiError, ErrorCode, RateLimit};
use crate::keys::ClientKey;
use crate::model::ModelId;

/// A per-minute allowance on one clock (tests drive a `FakeRelativeClock`).
pub struct Window<C: Clock = DefaultClock> {
    limiter: RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>,
    clock: C,
    pub limit: u32,
}

/// What is left of a window after a successful take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    pub limit: u32,
    pub remaining: u32,
    /// Until the window is full again.
    pub reset: Duration,
}

impl<C: Clock + Clone> Window<C> {
    pub fn per_minute(limit: NonZeroU32, clock: C) -> Self {
        let limiter = RateLimiter::direct_with_clock(Quota::per_minute(limit), clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        Self {
            limiter,
            clock,
            limit: limit.get(),
        }
    }

    /// Takes `n` cells, or says how long until they would be there. `n` over the limit can never
    /// pass and is the caller's to refuse first.
    pub fn take(&self, n: u32) -> Result<Left, Duration> {
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        match self.limiter.check_n(n) {
            Ok(Ok(snapshot)) => {
                let remaining = snapshot.remaining_burst_capacity();
                let per_cell = Duration::from_secs(60) / self.limit;
                Ok(Left {
                    limit: self.limit,
                    remaining,
                    reset: per_cell * (self.limit - remaining.min(self.limit)),
                })
            }
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
            Err(_) => Err(Duration::from_secs(60)),
        }
    }
}

/// The limiters of one key or team, rebuilt when its limits change.
struct ScopeState {
    limits: Limits,
    requests: Option<Window>,
    images: Option<Window>,
    concurrent: Option<Arc<Semaphore>>,
    /// Until when the request window is known to be empty: set when a request is refused by it
    /// (cells only come back with time), read by [`RateLimits::precheck`].
    requests_empty_until: Mutex<Option<std::time::Instant>>,
}

impl ScopeState {
    fn new(limits: Limits) -> Self {
        let window = |l: Option<u32>| {
            l.and_then(NonZeroU32::new)
                .map(|l| Window::per_minute(l, DefaultClock::default()))
        };
        Self {
            requests: window(limits.requests_per_minute),
            images: window(limits.images_per_minute),
            concurrent: limits
                .max_concurrent
                .map(|c| Arc::new(Semaphore::new(c as usize))),
            limits,
            requests_empty_until: Mutex::new(None),
        }
    }

    fn empty_until(&self) -> std::sync::MutexGuard<'_, Option<std::time::Instant>> {
        self.requests_empty_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long the request window stays empty, if it was seen empty and still is.
    fn requests_empty_for(&self) -> Option<Duration> {
        let until = (*self.empty_until())?;
        let left = until.saturating_duration_since(std::time::Instant::now());
        (!left.is_zero()).then_some(left)
    }

    fn concurrency_refusal(&self, who: &str) -> ApiError {
        ApiError::rate_limited(
            RateLimit::Concurrency,
            format!(
                "Too many concurrent requests for {who}: the limit is {}.",
                self.limits.max_concurrent.unwrap_or_default()
            ),
            retry_headers(Duration::from_secs(1)),
        )
    }
}

/// Admission of one request: its concurrency slots (released on drop) and the `x-ratelimit-*`
/// headers for its answer.
#[derive(Default)]
pub struct Admission {
    _permits: Vec<OwnedSemaphorePermit>,
    /// Concurrency slots held in Redis (replicas).
    _slots: Vec<Slot>,
    requests: Option<Left>,
    images: Option<Left>,
}

impl Admission {
    /// `x-ratelimit-*` headers of the tightest window that applied.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        if let Some(l) = self.requests {
            h.push(("x-ratelimit-limit-requests", l.limit.to_string()));
            h.push(("x-ratelimit-remaining-requests", l.remaining.to_string()));
            h.push(("x-ratelimit-reset-requests", reset_text(l.reset)));
        }
        if let Some(l) = self.images {
            h.push(("x-ratelimit-limit-images", l.limit.to_string()));
            h.push(("x-ratelimit-remaining-images", l.remaining.to_string()));
            h.push(("x-ratelimit-reset-images", reset_text(l.reset)));
        }
        h
    }
}

/// A slot towards one upstream model, held for the upstream call.
pub struct ModelPermit {
    _slot: Option<OwnedSemaphorePermit>,
}

struct ModelCap {
    rate: Option<Window>,
    concurrent: Option<Arc<Semaphore>>,
    queue_timeout: Duration,
}

/// Every limiter of the gateway.
pub struct RateLimits {
    scopes: Mutex<HashMap<String, Arc<ScopeState>>>,
    models: HashMap<ModelId, ModelCap>,
    /// Replicas: the key and team rate windows live in Redis (see [`crate::cluster`]).
    shared: Option<Arc<Cluster>>,
}

impl RateLimits {
    pub fn new(config: &LimitsConfig, shared: Option<Arc<Cluster>>) -> Self {
        // Every model has a concurrency cap: the configured one, else the registry's default.
        let models = ModelId::ALL
            .into_iter()
            .map(|m| {
                let l = config.get(m);
                let concurrent = l
                    .and_then(|l| l.max_concurrent)
                    .unwrap_or(m.def().max_concurrent);
                let cap = ModelCap {
                    rate: l
                        .and_then(|l| l.requests_per_minute)
                        .and_then(NonZeroU32::new)
                        .map(|r| Window::per_minute(r, DefaultClock::default())),
                    concurrent: Some(Arc::new(Semaphore::new(concurrent as usize))),
                    queue_timeout: l.map_or(DEFAULT_QUEUE_TIMEOUT, |l| l.queue_timeout),
                };
                (m, cap)
            })
            .collect();
        Self {
            scopes: Mutex::new(HashMap::new()),
            models,
            shared,
        }
    }

    fn scope(&self, name: String, limits: Limits) -> Arc<ScopeState> {
        let Ok(mut scopes) = self.scopes.lock() else {
            return Arc::new(ScopeState::new(limits));
        };
        match scopes.get(&name) {
            Some(s) if s.limits == limits => s.clone(),
            _ => {
                let s = Arc::new(ScopeState::new(limits));
                scopes.insert(name, s.clone());
                s
            }
        }
    }

    /// The caller's limited scopes: its key, then its team — (name, who, limiters).
    fn scopes(&self, caller: &ClientKey) -> Vec<(String, String, Arc<ScopeState>)> {
        let mut scopes = vec![("key", caller.id.to_string(), caller.record.limits)];
        if let Some(team) = &caller.team {
            scopes.push(("team", team.spec.id.clone(), team.limits));
        }
        scopes
            .into_iter()
            .filter(|(_, _, limits)| *limits != Limits::default())
            .map(|(kind, id, limits)| {
                let name = format!("{kind}:{id}");
                let state = self.scope(name.clone(), limits);
                (name, format!("{kind} `{id}`"), state)
            })
            .collect()
    }

    /// A look before a large body is read, taking nothing: refuses a request that the caller's
    /// limits would refuse now for sure — every concurrency slot taken, or the request window
    /// seen empty — so its upload is not read for nothing.
    pub fn precheck(&self, caller: &ClientKey) -> Result<(), ApiError> {
        for (_, who, state) in self.scopes(caller) {
            if let (Some(w), Some(wait)) = (&state.requests, state.requests_empty_for()) {
                return Err(refuse(&who, RateLimit::Requests, w.limit, wait));
            }
            if let Some(sem) = &state.concurrent {
                if sem.available_permits() == 0 {
                    return Err(state.concurrency_refusal(&who));
                }
            }
        }
        Ok(())
    }

    /// Checks the caller's key and team limits for a request of `n` images.
    pub async fn admit(&self, caller: &ClientKey, n: u8) -> Result<Admission, ApiError> {
        let mut admission = Admission::default();
        for (name, who, state) in self.scopes(caller) {
            if let Some(w) = &state.requests {
                let taken = match self.take_shared(&name, "requests", w.limit, 1).await? {
                    Some(taken) => taken,
                    None => w.take(1),
                };
                let left = match taken {
                    Ok(left) => left,
                    Err(wait) => {
                        *state.empty_until() = Some(std::time::Instant::now() + wait);
                        return Err(refuse(&who, RateLimit::Requests, w.limit, wait));
                    }
                };
                tighter(&mut admission.requests, left);
            }
            if let Some(w) = &state.images {
                if u32::from(n) > w.limit {
                    return Err(ApiError::invalid(
                        "n",
                        format!(
                            "n={n} exceeds the images-per-minute limit of {who} ({}).",
                            w.limit
                        ),
                    ));
                }
                let taken = match self
                    .take_shared(&name, "images", w.limit, u32::from(n))
                    .await?
                {
                    Some(taken) => taken,
                    None => w.take(u32::from(n)),
                };
                let left = taken.map_err(|wait| refuse(&who, RateLimit::Images, w.limit, wait))?;
                tighter(&mut admission.images, left);
            }
            if let Some(sem) = &state.concurrent {
                match self.take_shared_slot(&name, &state).await? {
                    Some(Some(slot)) => admission._slots.push(slot),
                    Some(None) => return Err(state.concurrency_refusal(&who)),
                    None => {
                        let permit = sem
                            .clone()
                            .try_acquire_owned()
                            .map_err(|_| state.concurrency_refusal(&who))?;
                        admission._permits.push(permit);
                    }
                }
            }
        }
        Ok(admission)
    }

    /// A concurrency slot of scope `name` in Redis, for replicas: `None` without Redis (or with
    /// it away and failing open: the replica's own semaphore decides), `Some(None)` when every
    /// slot is held.
    async fn take_shared_slot(
        &self,
        name: &str,
        state: &ScopeState,
    ) -> Result<Option<Option<Slot>>, ApiError> {
        let (Some(cluster), Some(limit)) = (&self.shared, state.limits.max_concurrent) else {
            return Ok(None);
        };
        // Boxed (here and in `take_shared`): Redis's futures would otherwise size every
        // request's future, on one process too.
        match Box::pin(cluster.take_slot(name, limit)).await {
            Ok(slot) => Ok(Some(slot)),
            Err(_) if cluster.fail == FailMode::Open => Ok(None),
            Err(_) => Err(shared_down()),
        }
    }

    /// The window `name:what` in Redis, for replicas: `None` without Redis, or with Redis away
    /// and `rate_limits_when_redis_down = "open"` (the local window decides); 503 when closed.
    async fn take_shared(
        &self,
        name: &str,
        what: &str,
        limit: u32,
        n: u32,
    ) -> Result<Option<Result<Left, Duration>>, ApiError> {
        let Some(cluster) = &self.shared else {
            return Ok(None);
        };
        match Box::pin(cluster.take(&format!("{name}:{what}"), limit, n)).await {
            Ok(Take::Taken { remaining, reset }) => Ok(Some(Ok(Left {
                limit,
                remaining,
                reset,
            }))),
            Ok(Take::Wait(wait)) => Ok(Some(Err(wait))),
            Err(_) if cluster.fail == FailMode::Open => Ok(None),
            Err(_) => Err(shared_down()),
        }
    }

    /// Waits (up to the model's `queue_timeout`) for room under the upstream model's caps.
    pub async fn upstream_permit(&self, model: ModelId) -> Result<ModelPermit, ApiError> {
        let Some(cap) = self.models.get(&model) else {
            return Ok(ModelPermit { _slot: None });
        };
        let deadline = tokio::time::Instant::now() + cap.queue_timeout;
        let busy = |wait: Duration| {
            ApiError::rate_limited(
                RateLimit::ModelCap,
                format!("The gateway is at its request cap for {model}; try again shortly."),
                retry_headers(wait),
            )
        };
        if let Some(w) = &cap.rate {
            while let Err(wait) = w.take(1) {
                if tokio::time::Instant::now() + wait > deadline {
                    return Err(busy(wait));
                }
                tokio::time::sleep(wait).await;
            }
        }
        let Some(sem) = &cap.concurrent else {
            return Ok(ModelPermit { _slot: None });
        };
        match tokio::time::timeout_at(deadline, sem.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(ModelPermit {
                _slot: Some(permit),
            }),
            _ => Err(busy(Duration::from_secs(1))),
        }
    }
}

fn shared_down() -> ApiError {
    ApiError::new(
        ErrorCode::SharedStateUnavailable,
        "The gateway cannot check its shared rate limits (Redis is away); nothing was sent upstream. Try again shortly.",
    )
}

fn tighter(slot: &mut Option<Left>, left: Left) {
    if slot.is_none_or(|s| left.remaining < s.remaining) {
        *slot = Some(left);
    }
}

fn refuse(who: &str, kind: RateLimit, limit: u32, wait: Duration) -> ApiError {
    let mut headers = retry_headers(wait);
    let (what, l, r, t) = match kind {
        RateLimit::Requests => (
            "requests",
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        _ => (
            "images",
            "x-ratelimit-limit-images",
            "x-ratelimit-remaining-images",
            "x-ratelimit-reset-images",
        ),
    };
    headers.push((l, limit.to_string()));
    headers.push((r, "0".to_owned()));
    headers.push((t, reset_text(wait)));
    ApiError::rate_limited(
        kind,
        format!(
            "Rate limit reached for {who} on {what} per minute: limit {limit}. Please try again in {}.",
            reset_text(wait)
        ),
        headers,
    )
}

/// `retry-after` (whole seconds, 1–60) and `retry-after-ms` (≤ 60000): the SDKs honour both up
/// to 60 s.
fn retry_headers(wait: Duration) -> Vec<(&'static str, String)> {
    let ms = wait.as_millis().clamp(1, 60_000);
    vec![
        ("retry-after", ms.div_ceil(1000).to_string()),
        ("retry-after-ms", ms.to_string()),
    ]
}

/// OpenAI's reset format: `20s`, `1.5s`, `250ms`.
fn reset_text(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    /// Every model is capped: the configured `max_concurrent` where there is one, else the
    /// registry's default.
    #[test]
    fn every_model_has_a_concurrency_cap_by_default() {
        let mut config = LimitsConfig::default();
        config.models.insert(
            "sparkpix".to_owned(),
            crate::config::ModelLimits {
                requests_per_minute: None,
                max_concurrent: Some(3),
                queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            },
        );
        let limits = RateLimits::new(&config, None);
        for m in ModelId::ALL {
            let cap = limits.models[&m]
                .concurrent
                .as_ref()
                .map(|s| s.available_permits());
            let want = if m == ModelId::SparkPix {
                3
            } else {
                m.def().max_concurrent as usize
            };
            assert_eq!(cap, Some(want), "{m}");
        }
    }

    #[test]
    fn window_is_exact_at_its_edges() {
        let clock = FakeRelativeClock::default();
        let w = Window::per_minute(NonZeroU32::new(3).unwrap(), clock.clone());
        assert_eq!(w.take(1).unwrap().remaining, 2);
        assert_eq!(w.take(1).unwrap().remaining, 1);
        let last = w.take(1).unwrap();
        assert_eq!((last.remaining, last.reset), (0, Duration::from_secs(60)));
        assert_eq!(w.take(1).unwrap_err(), Duration::from_secs(20));
        clock.advance(Duration::from_millis(19_999));
        assert!(w.take(1).is_err());
        clock.advance(Duration::from_millis(1));
        assert_eq!(w.take(1).unwrap().remaining, 0);
    }

    #[test]
    fn images_take_n_cells() {
        let clock = FakeRelativeClock::default();
        let w = Window::per_minute(NonZeroU32::new(4).unwrap(), clock);
        assert_eq!(w.take(3).unwrap().remaining, 1);
        assert_eq!(w.take(2).unwrap_err(), Duration::from_secs(15));
        assert_eq!(w.take(1).unwrap().remaining, 0);
    }

    #[test]
    fn headers_are_capped_and_formatted() {
        let h = retry_headers(Duration::from_secs(600));
        assert_eq!(h[0], ("retry-after", "60".to_owned()));
        assert_eq!(h[1], ("retry-after-ms", "60000".to_owned()));
        assert_eq!(retry_headers(Duration::from_millis(1500))[0].1, "2");
        assert_eq!(reset_text(Duration::from_millis(1500)), "1.5s");
        assert_eq!(reset_text(Duration::from_secs(20)), "20s");
        assert_eq!(reset_text(Duration::from_millis(250)), "250ms");
    }
}
