//! Choosing an upstream model for a request.
//!
//! A public name ([`Route`]) is a pinned model id, a group (`gpt-image-2`, `auto`) or an alias
//! (OpenAI's own names). Routing is a pure choice: from the configuration, the catalog, a
//! [`HealthView`] read once and the prices, [`Routing::choose`] (no I/O, no budget, no state):
//!
//! 1. keeps the members that can do this exact request ([`catalog`]),
//! 2. drops those over the caller's cost ceiling (`x-imagegate-max-cost-usd`),
//! 3. drops those whose circuit is open ([`health`]),
//! 4. drops those whose p90 latency for this quality exceeds the caller's latency budget
//!    (`x-imagegate-max-latency-s`; observed from traffic, the catalog's typical latency until
//!    enough was seen),
//! 5. orders the rest by this request's exact price ([`crate::pricing`]), breaking near-ties
//!    (within `routing.tie_tolerance`) by health: success ratio, then latency EWMA.
//!
//! Each candidate carries its [`Price`], computed here once. The dispatcher then tries the
//! candidates in that order on failures that cost nothing.

pub mod health;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;

use crate::catalog;
pub use crate::catalog::SizePolicy;
use crate::config::{ModelsConfig, RoutingConfig};
use crate::error::ApiError;
use crate::model::{ModelId, Usd};
use crate::pricing::{self, Price};
use crate::request::ImageRequest;
use health::{Availability, HealthView};

/// Caller header: the most this request may cost, in USD.
pub const MAX_COST_HEADER: &str = "x-imagegate-max-cost-usd";
/// Caller header: skip models whose p90 latency for this quality exceeds this many seconds.
pub const MAX_LATENCY_HEADER: &str = "x-imagegate-max-latency-s";
/// Caller header: `exact` (default) or `nearest` — whether a group may serve an explicit `WxH`
/// size with a model that makes the nearest aspect ratio instead.
pub const SIZE_POLICY_HEADER: &str = "x-imagegate-size-policy";

pub use crate::model::Route;

/// The caller's optional limits for this request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Constraints {
    pub max_cost: Option<Usd>,
    pub max_latency: Option<Duration>,
    pub size_policy: SizePolicy,
}

impl Constraints {
    /// Reads the routing headers; a malformed value is a 400 naming the header.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let read = |name: &str| -> Result<Option<f64>, ApiError> {
            let Some(v) = headers.get(name) else {
                return Ok(None);
            };
            match v.to_str().ok().and_then(|s| s.trim().parse::<f64>().ok()) {
                Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
                _ => Err(ApiError::invalid(
                    name,
                    format!("Header {name} must be a non-negative number."),
                )),
            }
        };
        let size_policy = match headers.get(SIZE_POLICY_HEADER).map(|v| v.to_str()) {
            None => SizePolicy::Exact,
            Some(Ok(v)) if v.trim().eq_ignore_ascii_case("exact") => SizePolicy::Exact,
            Some(Ok(v)) if v.trim().eq_ignore_ascii_case("nearest") => SizePolicy::Nearest,
            Some(_) => {
                return Err(ApiError::invalid(
                    SIZE_POLICY_HEADER,
                    format!("Header {SIZE_POLICY_HEADER} must be `exact` or `nearest`."),
                ))
            }
        };
        Ok(Self {
            max_cost: read(MAX_COST_HEADER)?.map(Usd::from_dollars),
            // Past what a Duration holds is no limit at all.
            max_latency: read(MAX_LATENCY_HEADER)?
                .map(|s| Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)),
            size_policy,
        })
    }
}

/// A model that may serve the request, at this price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub model: ModelId,
    pub price: Price,
}

impl Candidate {
    /// All `n` images on this model.
    pub fn cost(&self) -> Usd {
        self.price.total()
    }
}

/// Why a member model was left out.
#[derive(Debug, Clone, PartialEq)]
enum Exclusion {
    Capability(String),
    Cost { cost: Usd, max: Usd },
    CircuitOpen { retry_after: Duration },
    Latency { p90: Duration, max: Duration },
}

impl Exclusion {
    /// Circuit and latency exclusions pass with time; the others are the request's own.
    fn is_transient(&self) -> bool {
        matches!(self, Self::CircuitOpen { .. } | Self::Latency { .. })
    }

    fn describe(&self) -> String {
        match self {
            Self::Capability(why) => why.clone(),
            Self::Cost { cost, max } => {
                format!("costs ${cost}, over {MAX_COST_HEADER} {max}")
            }
            Self::CircuitOpen { retry_after } => format!(
                "is failing and out of rotation for {}s",
                retry_after.as_secs().max(1)
            ),
            Self::Latency { p90, max } => format!(
                "p90 latency {:.1}s is over {MAX_LATENCY_HEADER} {}",
                p90.as_secs_f64(),
                max.as_secs_f64()
            ),
        }
    }
}

/// Public names and the routing rules.
pub struct Routing {
    config: RoutingConfig,
}

impl Routing {
    pub fn new(config: RoutingConfig) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    /// The route for a public name; unknown names, and names whose models are all disabled,
    /// are `model_not_found`.
    pub fn resolve(&self, models: &ModelsConfig, name: &str) -> Result<Route, ApiError> {
        let members: Vec<ModelId> = self
            .config
            .members(name)
            .unwrap_or_default()
            .into_iter()
            .filter(|m| models.get(*m).enabled)
            .collect();
        if members.is_empty() {
            return Err(ApiError::model_not_found(name));
        }
        Ok(Route {
            public: Arc::from(name),
            pinned: name.parse::<ModelId>().is_ok(),
            members,
        })
    }

    /// The models that may serve `req`, best first, each with its price; an error says which
    /// constraint excluded which model (400 when the request itself rules every model out, 503
    /// when health does). `health` is the view for the request's quality.
    pub fn choose(
        &self,
        models: &ModelsConfig,
        health: &HealthView,
        req: &ImageRequest,
        route: &Route,
        limits: Constraints,
    ) -> Result<Vec<Candidate>, ApiError> {
        let mut kept = Vec::new();
        let mut excluded = Vec::new();
        for &model in &route.members {
            match judge(models, health, req, route, limits, model) {
                Ok(c) => kept.push(c),
                Err(why) => excluded.push((model, why)),
            }
        }
        if kept.is_empty() {
            return Err(refusal(route, &excluded));
        }
        kept.sort_by_key(Candidate::cost);
        self.break_ties(&mut kept, health, req);
        Ok(kept)
    }

    /// Within runs of near-equal prices, healthier models go first.
    fn break_ties(&self, sorted: &mut [Candidate], health: &HealthView, req: &ImageRequest) {
        let tol = self.config.tie_tolerance;
        let mut start = 0;
        while start < sorted.len() {
            let base = sorted[start].cost().micros() as f64;
            let end = start
                + sorted[start..]
                    .iter()
                    .take_while(|c| c.cost().micros() as f64 <= base * (1.0 + tol))
                    .count();
            sorted[start..end].sort_by(|a, b| {
                let (ok_a, lat_a) = health_key(health, a.model, req);
                let (ok_b, lat_b) = health_key(health, b.model, req);
                ok_b.total_cmp(&ok_a)
                    .then(lat_a.total_cmp(&lat_b))
                    .then(a.cost().cmp(&b.cost()))
            });
            start = end;
        }
    }
}

fn judge(
    models: &ModelsConfig,
    health: &HealthView,
    req: &ImageRequest,
    route: &Route,
    limits: Constraints,
    model: ModelId,
) -> Result<Candidate, Exclusion> {
    // A pinned model's own checks run in its adapter's `plan`, with its own messages.
    if !route.pinned {
        let caps = catalog::capabilities(model);
        caps.check(req)
            .and_then(|()| caps.delivers(req, limits.size_policy))
            .map_err(Exclusion::Capability)?;
    }
    let price = pricing::price(models, model, req);
    if let Some(max) = limits.max_cost {
        if price.total() > max {
            return Err(Exclusion::Cost {
                cost: price.total(),
                max,
            });
        }
    }
    let view = health.get(model);
    if let Availability::Unavailable { retry_after } = view.availability {
        return Err(Exclusion::CircuitOpen { retry_after });
    }
    if let Some(max) = limits.max_latency {
        // Observed p90 for the request's quality, or the catalog's typical latency.
        let p90 = view
            .p90
            .unwrap_or_else(|| catalog::capabilities(model).typical_latency(req.quality));
        if p90 > max {
            return Err(Exclusion::Latency { p90, max });
        }
    }
    Ok(Candidate { model, price })
}

fn health_key(health: &HealthView, model: ModelId, req: &ImageRequest) -> (f64, f64) {
    let view = health.get(model);
    let latency = view.ewma_s.unwrap_or_else(|| {
        catalog::capabilities(model)
            .typical_latency(req.quality)
            .as_secs_f64()
    });
    // Success ratios within 5 points are equal: latency decides.
    ((view.ok * 20.0).round() / 20.0, latency)
}

fn refusal(route: &Route, excluded: &[(ModelId, Exclusion)]) -> ApiError {
    let mut detail = String::new();
    for (i, (m, why)) in excluded.iter().enumerate() {
        let sep = if i == 0 { "" } else { "; " };
        let _ = write!(detail, "{sep}{m} {}", why.describe());
    }
    let name = &route.public;
    if excluded.iter().any(|(_, why)| why.is_transient()) {
        // The soonest an open circuit lets a probe through (the SDKs wait at most 60 s).
        let soonest = excluded
            .iter()
            .filter_map(|(_, why)| match why {
                Exclusion::CircuitOpen { retry_after } => Some(retry_after.as_secs().clamp(1, 60)),
                _ => None,
            })
            .min();
        let err = ApiError::no_healthy_model(format!(
            "No model of `{name}` can take this request right now: {detail}."
        ));
        match soonest {
            Some(secs) => err.with_headers(vec![("retry-after", secs.to_string())]),
            None => err,
        }
    } else {
        let param = match excluded.first() {
            Some((_, Exclusion::Cost { .. })) => MAX_COST_HEADER,
            _ => "model",
        };
        ApiError::no_eligible_model(
            param,
            format!("No model of `{name}` can serve this request: {detail}."),
        )
    }
}

#[cfg(test)]
mod tests;
