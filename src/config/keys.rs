//! Team-gateway settings: client keys and teams (their limits and budgets), the data directory,
//! the upstream key pool and the per-upstream-model caps.
//!
//! [`KeySpec`] and [`TeamSpec`] are used twice: as `[[keys]]` / `[[teams]]` tables in the file
//! (static, for GitOps) and as the JSON bodies of the admin API (dynamic, kept in the database).
//! One [`KeySpec::check`] / [`TeamSpec::check`] validates both.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::model::ModelId;
use crate::model::Usd;

/// The shortest client key secret accepted (`key` in `[[keys]]`, `imagegate hash-key`).
pub const MIN_CLIENT_KEY_LEN: usize = 8;

/// A client key: who it is, what it may use, how fast and how much. Absent limits and budgets
/// mean "none" (the team's still apply).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub id: String,
    /// File only: the secret itself (at least [`MIN_CLIENT_KEY_LEN`] characters). The admin API generates secrets.
    #[serde(default, skip_serializing)]
    pub key: Option<String>,
    /// File only: the secret's SHA-256 in hex (`imagegate hash-key SECRET`).
    #[serde(default, skip_serializing)]
    pub key_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The team whose limits and budget also apply (in the file: a `[[teams]]` id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Public names (model ids, groups, aliases) this key may request; absent: every one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Images per minute: a request counts its `n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_minute: Option<u32>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// USD per calendar month (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_budget_usd: Option<f64>,
    /// USD over the key's lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_budget_usd: Option<f64>,
    /// RFC 3339 time after which the key is refused, e.g. `2026-12-31T23:59:59Z`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Where the end of each of the key's jobs is posted (signed), unless a request names its
    /// own `callback_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// File only: the `whsec_…` secret that signs the key's webhooks. The admin API generates
    /// one per key (shown once) and keeps it in the database.
    #[serde(default, skip_serializing)]
    pub webhook_secret: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl Default for KeySpec {
    /// An enabled key with no limits, no budget and no secret.
    fn default() -> Self {
        Self {
            id: String::new(),
            key: None,
            key_sha256: None,
            name: None,
            team: None,
            models: None,
            requests_per_minute: None,
            images_per_minute: None,
            max_concurrent: None,
            monthly_budget_usd: None,
            total_budget_usd: None,
            expires_at: None,
            webhook_url: None,
            webhook_secret: None,
            enabled: true,
        }
    }
}

impl std::fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySpec")
            .field("id", &self.id)
            .field("team", &self.team)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// A team: limits and budgets checked independently of its keys'.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TeamSpec {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_budget_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_budget_usd: Option<f64>,
}

/// Rate and concurrency limits of a key or a team.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Limits {
    pub requests_per_minute: Option<u32>,
    pub images_per_minute: Option<u32>,
    pub max_concurrent: Option<u32>,
}

/// Budgets of a key or a team, in exact micro-dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    pub monthly: Option<Usd>,
    pub total: Option<Usd>,
}

impl Budget {
    /// Whether either budget is set.
    pub fn is_limited(&self) -> bool {
        self.monthly.is_some() || self.total.is_some()
    }
}

impl KeySpec {
    pub fn limits(&self) -> Limits {
        Limits {
            requests_per_minute: self.requests_per_minute,
            images_per_minute: self.images_per_minute,
            max_concurrent: self.max_concurrent,
        }
    }

    pub fn budget(&self) -> Budget {
        Budget {
            monthly: self.monthly_budget_usd.map(Usd::from_dollars),
            total: self.total_budget_usd.map(Usd::from_dollars),
        }
    }

    /// The expiry as a time (validated by [`check`](Self::check)).
    pub fn expiry(&self) -> Option<SystemTime> {
        self.expires_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
    }

    /// Adds every problem with this key (at `at`, e.g. `keys[2]`) to `problems`. Secrets are
    /// checked by the caller: the file needs one, the admin API refuses them.
    /// `known` tells the public model names (model ids, groups, aliases).
    pub fn check(&self, at: &str, known: &dyn Fn(&str) -> bool, problems: &mut Vec<String>) {
        check_id(&self.id, &format!("{at}.id"), problems);
        if let Some(models) = &self.models {
            for m in models {
                if !known(m) {
                    problems.push(format!("{at}.models: unknown model, group or alias `{m}`"));
                }
            }
        }
        if let Some(team) = &self.team {
            check_id(team, &format!("{at}.team"), problems);
        }
        check_limits(&self.limits(), at, problems);
        check_budgets(self.monthly_budget_usd, self.total_budget_usd, at, problems);
        if let Some(t) = &self.expires_at {
            if humantime::parse_rfc3339_weak(t).is_err() {
                problems.push(format!(
                    "{at}.expires_at: `{t}` is not an RFC 3339 time like 2026-12-31T23:59:59Z"
                ));
            }
        }
        if let Some(secret) = &self.webhook_secret {
            use base64::Engine as _;
            let bytes = secret
                .strip_prefix("whsec_")
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
            if bytes.is_none_or(|b| b.len() < 16) {
                problems.push(format!(
                    "{at}.webhook_secret: must be `whsec_` and at least 16 bytes in base64"
                ));
            }
        }
        if let Some(url) = &self.webhook_url {
            if url::Url::parse(url).is_err() {
                problems.push(format!("{at}.webhook_url: `{url}` is not a URL"));
            }
        }
    }
}

impl TeamSpec {
    pub fn limits(&self) -> Limits {
        Limits {
            requests_per_minute: self.requests_per_minute,
            images_per_minute: self.images_per_minute,
            max_concurrent: self.max_concurrent,
        }
    }

    pub fn budget(&self) -> Budget {
        Budget {
            monthly: self.monthly_budget_usd.map(Usd::from_dollars),
            total: self.total_budget_usd.map(Usd::from_dollars),
        }
    }

    pub fn check(&self, at: &str, problems: &mut Vec<String>) {
        check_id(&self.id, &format!("{at}.id"), problems);
        check_limits(&self.limits(), at, problems);
        check_budgets(self.monthly_budget_usd, self.total_budget_usd, at, problems);
    }
}

/// Ids appear in URLs, CSV and the ledger: letters, digits, `-`, `_`, `.`, 1–64 characters.
fn check_id(id: &str, at: &str, problems: &mut Vec<String>) {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        problems.push(format!(
            "{at}: `{id}` must be 1–64 letters, digits, `-`, `_` or `.`"
        ));
    }
}

fn check_limits(l: &Limits, at: &str, problems: &mut Vec<String>) {
    let named = [
        ("requests_per_minute", l.requests_per_minute),
        ("images_per_minute", l.images_per_minute),
        ("max_concurrent", l.max_concurrent),
    ];
    for (name, v) in named {
        if v == Some(0) {
            problems.push(format!(
                "{at}.{name}: must be at least 1 (omit it for no limit)"
            ));
        }
    }
}

fn check_budgets(monthly: Option<f64>, total: Option<f64>, at: &str, problems: &mut Vec<String>) {
    for (name, v) in [("monthly_budget_usd", monthly), ("total_budget_usd", total)] {
        if v.is_some_and(|d| !(d.is_finite() && (0.0..=1e9).contains(&d))) {
            problems.push(format!("{at}.{name}: must be a number from 0 to 1e9"));
        }
    }
}

/// `[data]`: where the database (dynamic keys, teams, the spend ledger, jobs) lives.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Created if missing; holds `imagegate.sqlite3` and is locked by one process at a time.
    /// `imagegate serve` uses `./imagegate-data` when it is absent.
    pub dir: Option<PathBuf>,
    /// Keep everything in memory (nothing survives a restart, jobs included): only when asked.
    #[serde(default)]
    pub in_memory: bool,
    /// A PostgreSQL database shared by replicas (`postgres://…`); SQLite in `dir` without it.
    pub url: Option<String>,
    /// The connection pool to `url`.
    #[serde(default)]
    pub pool: PoolConfig,
}

/// `[cluster]`: replicas sharing `[data] url` (PostgreSQL) and, for their hot state, Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Redis for what replicas share between requests: rate limits, concurrency slots, circuit
    /// openings, key changes. Without it each replica keeps its own.
    pub redis_url: Option<String>,
    /// How long a replica's claim on a job lasts without being renewed (it renews every third
    /// of it). A replica that dies (or stalls) loses its jobs to another after this.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// When Redis cannot be reached: `open` admits requests on this replica's own limits,
    /// `closed` refuses them (503). Money never depends on Redis.
    pub rate_limits_when_redis_down: FailMode,
    /// The prefix of every Redis key and channel: gateways that are not one deployment may
    /// share a Redis under different names.
    pub namespace: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            lease: Duration::from_secs(30),
            rate_limits_when_redis_down: FailMode::Open,
            namespace: "imagegate".to_owned(),
        }
    }
}

/// What a shared limit does when its store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    Open,
    Closed,
}

/// `[data.pool]`: connections to PostgreSQL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Most connections this replica opens.
    pub max_connections: u32,
    /// Longest wait for a connection (from the pool, or a new one) before the request is refused
    /// with 503 `database_unavailable`.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Longest a statement may run.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(10),
        }
    }
}

/// `[jobs]`: how long jobs, their results and `Idempotency-Key`s are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// An `Idempotency-Key` names its job this long.
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// An SDK retry (`x-stainless-retry-count` ≥ 1) of the same request joins a job this recent.
    #[serde(with = "humantime_serde")]
    pub retry_window: Duration,
    /// Finished jobs (and their result URLs) are kept this long.
    #[serde(with = "humantime_serde")]
    pub result_ttl: Duration,
    /// The pause after a webhook's first failed attempt; doubled after each (at most an hour).
    #[serde(with = "humantime_serde")]
    pub webhook_retry_base: Duration,
    /// A webhook not delivered this long after its job ended is given up.
    #[serde(with = "humantime_serde")]
    pub webhook_give_up: Duration,
    /// A Codex image call repeated with the same `x-codex-image-turn-id` and body joins the
    /// first call's job while it runs and this long after it ended (Codex retries a 500/503
    /// within about 3 s); later, it is a new image.
    #[serde(with = "humantime_serde")]
    pub codex_retry_window: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            idempotency_ttl: Duration::from_secs(24 * 3600),
            retry_window: Duration::from_secs(15 * 60),
            result_ttl: Duration::from_secs(24 * 3600),
            webhook_retry_base: Duration::from_secs(5),
            webhook_give_up: Duration::from_secs(24 * 3600),
            codex_retry_window: Duration::from_secs(10),
        }
    }
}

/// One key of the upstream key pool. Identified everywhere by `id`, never by its secret.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamKeyConfig {
    pub id: String,
    pub key: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl std::fmt::Debug for UpstreamKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamKeyConfig")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .field("weight", &self.weight)
            .finish()
    }
}

/// `[limits]`: caps that protect the upstream account.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Per upstream model (public model id): `[limits.models.sparkpix]`.
    #[serde(default)]
    pub models: BTreeMap<String, ModelLimits>,
}

/// Request rate and concurrency towards one upstream model. A request over a cap waits up to
/// `queue_timeout` for room, then is refused with a 429.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimits {
    pub requests_per_minute: Option<u32>,
    pub max_concurrent: Option<u32>,
    #[serde(default = "default_queue_timeout", with = "humantime_serde")]
    pub queue_timeout: Duration,
}

/// How long a request over a model's cap waits for room by default.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);

fn default_queue_timeout() -> Duration {
    DEFAULT_QUEUE_TIMEOUT
}

impl LimitsConfig {
    pub fn get(&self, model: ModelId) -> Option<&ModelLimits> {
        self.models.get(model.as_str())
    }

    pub(super) fn check(&self, problems: &mut Vec<String>) {
        for (name, m) in &self.models {
            let at = format!("limits.models.{name}");
            if name.parse::<ModelId>().is_err() {
                problems.push(format!("{at}: unknown model `{name}`"));
            }
            if m.requests_per_minute == Some(0) || m.max_concurrent == Some(0) {
                problems.push(format!("{at}: limits must be at least 1 (omit for none)"));
            }
            if m.queue_timeout > Duration::from_secs(60) {
                problems.push(format!("{at}.queue_timeout: at most 60s"));
            }
        }
    }
}

/// Adds every problem with the key/team tables and the key pool to `problems`.
pub(super) fn check(
    keys: &[KeySpec],
    teams: &[TeamSpec],
    pool: &[UpstreamKeyConfig],
    known: &dyn Fn(&str) -> bool,
    problems: &mut Vec<String>,
) {
    let mut team_ids = std::collections::HashSet::new();
    for (i, t) in teams.iter().enumerate() {
        t.check(&format!("teams[{i}]"), problems);
        if !team_ids.insert(t.id.as_str()) {
            problems.push(format!("teams[{i}].id: duplicate id `{}`", t.id));
        }
    }
    let mut ids = std::collections::HashSet::new();
    for (i, k) in keys.iter().enumerate() {
        let at = format!("keys[{i}]");
        k.check(&at, known, problems);
        if !ids.insert(k.id.as_str()) {
            problems.push(format!("{at}.id: duplicate id `{}`", k.id));
        }
        if let Some(team) = k.team.as_deref().filter(|t| !team_ids.contains(t)) {
            problems.push(format!("{at}.team: no team with id `{team}` in [[teams]]"));
        }
        match (&k.key, &k.key_sha256) {
            (Some(key), None) if key.len() >= MIN_CLIENT_KEY_LEN => {}
            (Some(_), None) => problems.push(format!(
                "{at}.key: at least {MIN_CLIENT_KEY_LEN} characters"
            )),
            (None, Some(h)) if h.len() == 64 && hex::decode(h).is_ok() => {}
            (None, Some(_)) => problems.push(format!("{at}.key_sha256: must be 64 hex characters")),
            _ => problems.push(format!("{at}: set exactly one of `key` or `key_sha256`")),
        }
    }
    let mut pool_ids = std::collections::HashSet::new();
    for (i, k) in pool.iter().enumerate() {
        let at = format!("upstream.keys[{i}]");
        check_id(&k.id, &format!("{at}.id"), problems);
        if !pool_ids.insert(k.id.as_str()) || k.id == super::DEFAULT_UPSTREAM_KEY_ID {
            problems.push(format!("{at}.id: duplicate or reserved id `{}`", k.id));
        }
        if k.key.trim().is_empty() {
            problems.push(format!("{at}.key: must not be empty"));
        }
        if k.weight == 0 || k.weight > 1000 {
            problems.push(format!("{at}.weight: must be from 1 to 1000"));
        }
    }
}
