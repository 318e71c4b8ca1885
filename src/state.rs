//! The shared state behind one `Arc`: every handle a handler needs, built once at startup from
//! the configuration. [`RequestLog`] is what a handler tells the access log.

use std::sync::Arc;

use crate::auth::{AdminKey, AuthFailures};
use crate::budget::Budgets;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::dispatch::{Dispatch, ServedBy};
use crate::error::ApiError;
use crate::jobs::Jobs;
use crate::keys::Registry;
use crate::limits::RateLimits;
use crate::metrics::{CircuitGauge, Metrics};
use crate::model::{ModelId, Route, Usd};
use crate::request::ImageRequest;
use crate::routing::health::{CircuitState, Health};
use crate::routing::Routing;
use crate::store::Store;
use crate::upstream::text::TextUpstream;
use crate::upstream::Upstream;

/// Everything a handler needs, shared behind one `Arc`.
pub struct AppState {
    /// The validated configuration the process started with.
    pub config: Config,
    /// The platform client; holds the upstream keys, which nothing else sees.
    pub upstream: Upstream,
    /// Public names and the choice of model.
    pub routing: Routing,
    /// Passive health per upstream model: circuits, error ratios, latencies.
    pub health: Health,
    /// Client keys (static and dynamic) and teams; owns the database handle.
    pub keys: Registry,
    /// The admin key's digest.
    pub admin: AdminKey,
    /// Spend and reservations per key and team (the ledger is the durable truth).
    pub budgets: Budgets,
    /// Rate and concurrency limiters.
    pub limits: RateLimits,
    /// Redis, the hot state replicas share (`[cluster] redis_url`).
    pub cluster: Option<Arc<Cluster>>,
    /// Failed authentications per client address.
    pub auth_failures: AuthFailures,
    /// `server.trusted_proxies`, parsed.
    pub proxies: Vec<ipnet::IpNet>,
    /// Slots for requests in flight (`server.max_in_flight`); see `shed`.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// This gateway's metrics registry (`GET /metrics`); see [`crate::metrics`].
    pub metrics: Arc<Metrics>,
    /// The jobs running in this process.
    pub jobs: Jobs,
    /// The text upstream of `/v1/responses` and `/v1/chat/completions` (`[passthrough]`).
    pub text: Option<TextUpstream>,
}

impl AppState {
    /// Opens (creating and migrating) the database and loads keys, teams and spend.
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        let store = Store::connect(&config.data, config.cluster.lease).await?;
        // One process keeps the money in memory (loaded from the ledger); replicas keep it in
        // the shared database.
        let budgets = match &store {
            Store::Postgres(pg) => Budgets::shared(pg.clone()),
            Store::Sqlite(_) => {
                let month = crate::ledger::utc_month(std::time::SystemTime::now());
                let (by_key, by_team) = store.spent(&month).await?;
                Budgets::load(by_key, by_team)
            }
        };
        let teams = store.teams().await?;
        let metrics = Arc::new(Metrics::new()?);
        for m in ModelId::ALL {
            if config.models.get(m).enabled {
                metrics.circuit_state(m, CircuitGauge::Closed);
            }
        }
        let cluster = config
            .cluster
            .redis_url
            .as_deref()
            .map(|url| {
                let c = &config.cluster;
                Cluster::new(url, c.rate_limits_when_redis_down, &c.namespace, c.lease)
                    .map(Arc::new)
            })
            .transpose()?;
        Ok(Self {
            upstream: Upstream::new(&config, metrics.clone())?,
            routing: Routing::new(config.routing.clone()),
            health: Health::new(config.routing.circuit.clone()),
            keys: Registry::new(&config, store, teams),
            admin: AdminKey::new(&config.admin),
            budgets,
            limits: RateLimits::new(&config.limits, cluster.clone()),
            cluster,
            auth_failures: AuthFailures::new(config.server.auth_failures_per_minute),
            proxies: config.server.proxies(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.server.max_in_flight)),
            metrics,
            jobs: Jobs::default(),
            text: config
                .passthrough
                .as_ref()
                .map(|p| TextUpstream::new(p, config.upstream.connect_timeout))
                .transpose()?,
            config,
        })
    }

    /// The longest a caller may be asked to wait on any enabled model.
    pub fn longest_deadline(&self) -> std::time::Duration {
        ModelId::ALL
            .into_iter()
            .filter(|m| self.config.models.get(*m).enabled)
            .map(|m| self.config.models.get(m).deadline)
            .max()
            .unwrap_or(std::time::Duration::from_secs(60))
            .min(self.config.routing.request_deadline)
    }

    pub fn store(&self) -> &Store {
        &self.keys.store
    }

    /// The upstream models that can take a request now (enabled, circuit not open):
    /// `GET /readyz` fails when there is none.
    pub fn ready_models(&self) -> Vec<ModelId> {
        ModelId::ALL
            .into_iter()
            .filter(|m| self.config.models.get(*m).enabled)
            .filter(|m| self.health.state(*m) != CircuitState::Open)
            .collect()
    }

    /// The request dispatcher over this gateway's handles.
    pub fn dispatch(&self) -> Dispatch<'_> {
        Dispatch {
            models: &self.config.models,
            routing: &self.routing,
            health: &self.health,
            limits: &self.limits,
            budgets: &self.budgets,
            upstream: &self.upstream,
            store: self.store(),
            metrics: &self.metrics,
            results_timeout: self.config.results.timeout,
            urls: self.upstream.urls,
        }
    }

    /// The public model a request asked for (or the default): a model id, group or alias with
    /// at least one enabled model.
    pub fn resolve_model(&self, requested: Option<&str>) -> Result<Route, ApiError> {
        let name = requested.unwrap_or(&self.config.server.default_model);
        self.routing.resolve(&self.config.models, name)
    }
}

impl RequestLog {
    /// What is known before the request runs.
    pub fn new(route: &Route, req: &ImageRequest, log_prompts: bool) -> Self {
        Self {
            public_model: Some(route.public.clone()),
            n: req.n,
            prompt: log_prompts.then(|| req.prompt.clone()),
            ..Self::default()
        }
    }

    /// Completed with what served it.
    pub fn served(mut self, by: &ServedBy) -> Self {
        self.upstream_model = by.model;
        // A request that joined a job paid nothing itself: the job's own line holds its cost.
        self.cost = (!self.joined).then_some(by.cost);
        self.attempts = by.attempts;
        self.task_ids = by.task_ids.join(",");
        self
    }
}

/// What a handler tells the access log about the request it served.
#[derive(Debug, Clone, Default)]
pub struct RequestLog {
    /// The name the caller asked for: a model id, group or alias.
    pub public_model: Option<Arc<str>>,
    /// The upstream model that served the request (or the last one tried).
    pub upstream_model: Option<ModelId>,
    /// Upstream models tried (more than 1 after a failover).
    pub attempts: u32,
    pub n: u8,
    pub task_ids: String,
    /// What the upstream charges for the images returned.
    pub cost: Option<Usd>,
    /// The prompt, only when `logging.log_prompts` is on.
    pub prompt: Option<String>,
    /// The request joined an existing job (a retry, an `Idempotency-Key`, a Codex turn).
    pub joined: bool,
}
