//! Typed configuration: the TOML file, `${ENV}` interpolation, environment overrides, validation.
//!
//! Load order: built-in defaults → the file → `IMAGEGATE_LISTEN`, `IMAGEGATE_UPSTREAM_BASE_URL`,
//! `IMAGEGATE_UPSTREAM_API_KEY`. Unknown keys and invalid values are rejected at startup with a
//! message that names the key (`models.gpt-image-2-all.poll_interval: …`).
//! `config/imagegate.example.toml` documents every key; a test parses it.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::model::ModelId;

mod keys;
mod models;
mod passthrough;
mod routing;

pub use keys::{
    Budget, ClusterConfig, DataConfig, FailMode, JobsConfig, KeySpec, Limits, LimitsConfig,
    ModelLimits, PoolConfig, TeamSpec, UpstreamKeyConfig, DEFAULT_QUEUE_TIMEOUT,
    MIN_CLIENT_KEY_LEN,
};
use models::RawModels;
pub use models::{ModelConfig, ModelsConfig, QualityPrices, TIERS};
pub use passthrough::{PassthroughConfig, TextPrice};
use routing::RawRouting;
pub use routing::{CircuitConfig, RoutingConfig};

/// The pool id of the single `upstream.api_key`, when it is set.
pub const DEFAULT_UPSTREAM_KEY_ID: &str = "default";

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub results: ResultsConfig,
    pub urls: UrlsConfig,
    pub logging: LoggingConfig,
    /// Static client keys (more can be created through the admin API when `data.dir` is set).
    pub keys: Vec<KeySpec>,
    /// Static teams: limits and budgets shared by their keys.
    pub teams: Vec<TeamSpec>,
    /// The operator's key for `/admin/*`; without one the admin API refuses every call.
    pub admin: AdminConfig,
    pub data: DataConfig,
    pub cluster: ClusterConfig,
    pub jobs: JobsConfig,
    pub limits: LimitsConfig,
    pub models: ModelsConfig,
    pub routing: RoutingConfig,
    /// The text upstream of `/v1/responses` and `/v1/chat/completions`, when set.
    pub passthrough: Option<PassthroughConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How long in-flight synchronous calls may run after a shutdown signal (async tasks are
    /// persisted and resumed by the next process). The default covers the longest sync deadline
    /// (gpt-image-2-all, 240 s) plus the result download timeout (60 s).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Largest accepted request body (multipart edits carry up to 16 images).
    pub max_body_bytes: usize,
    /// Public model (a model id, group or alias) used when a request names none.
    pub default_model: String,
    /// Interval of `: keepalive` comments on streamed (`stream: true`) responses.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Requests served at once; past it, 503 `server_overloaded` before any parse.
    pub max_in_flight: usize,
    /// Failed authentications per minute from one client address; past it, a failed attempt
    /// is answered 429 with `retry-after` instead of 401.
    pub auth_failures_per_minute: NonZeroU32,
    /// Proxies in front of the gateway (addresses or CIDR ranges). When the TCP peer is one, the
    /// client address is read from `X-Forwarded-For` / `Forwarded` (the nearest address that is
    /// not a trusted proxy); otherwise those headers are ignored.
    pub trusted_proxies: Vec<String>,
    /// Longest time a client may take to send a request's line and headers, counted from the
    /// connection's start or, on a kept-alive connection, from the end of the previous answer:
    /// it is also the idle timeout of kept-alive connections.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest wait for the next piece of a request body once the handler asks for it.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Longest time a whole request body may take, counted from the end of its headers.
    #[serde(with = "humantime_serde")]
    pub body_total_timeout: Duration,
    /// Most client connections open at once; beyond it the gateway accepts no more until one
    /// closes (new ones wait in the listen backlog).
    pub max_connections: usize,
    /// Most connections open at once from one client IP address (the TCP peer's); beyond it a
    /// new connection is closed without an answer.
    pub max_connections_per_ip: usize,
    /// The gateway's own public base URL (e.g. `https://images.example.com`). When set, async
    /// tasks are created with a `callback_url` pointing at `{public_url}/upstream/callback`; a
    /// callback (unsigned) only makes the gateway poll that task at once. Absent: polling only.
    pub public_url: Option<String>,
}

/// A `trusted_proxies` entry as a network: `10.0.0.0/8`, or one address.
pub fn proxy_net(entry: &str) -> Option<ipnet::IpNet> {
    let entry = entry.trim();
    entry.parse::<ipnet::IpNet>().ok().or_else(|| {
        entry
            .parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

impl ServerConfig {
    /// The parsed `trusted_proxies` (entries were checked at startup).
    pub fn proxies(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|p| proxy_net(p))
            .collect()
    }

    /// Where the platform posts task callbacks, when `public_url` is set.
    pub fn upstream_callback_url(&self) -> Option<String> {
        self.public_url
            .as_deref()
            .map(|u| format!("{}/upstream/callback", u.trim_end_matches('/')))
    }

    /// The client-connection limits: none may be zero (zero would refuse every client).
    fn check(&self, problems: &mut Vec<String>) {
        if let Some(u) = &self.public_url {
            if !matches!(url::Url::parse(u), Ok(p) if matches!(p.scheme(), "http" | "https")) {
                problems.push(format!("server.public_url: `{u}` is not an http(s) URL"));
            }
        }
        let durations = [
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("body_total_timeout", self.body_total_timeout),
        ];
        for (key, value) in durations {
            if value.is_zero() {
                problems.push(format!("server.{key}: must be more than 0"));
            }
        }
        let counts = [
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
        ];
        for (key, value) in counts {
            if value == 0 {
                problems.push(format!("server.{key}: must be at least 1"));
            }
        }
        for (i, p) in self.trusted_proxies.iter().enumerate() {
            if proxy_net(p).is_none() {
                problems.push(format!(
                    "server.trusted_proxies[{i}]: `{p}` is not an address or a CIDR range"
                ));
            }
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            drain_timeout: Duration::from_secs(300),
            max_body_bytes: 64 * 1024 * 1024,
            default_model: ModelId::All.as_str().to_owned(),
            keepalive_interval: Duration::from_secs(15),
            max_in_flight: 20_000,
            auth_failures_per_minute: NonZeroU32::new(60).unwrap_or(NonZeroU32::MIN),
            trusted_proxies: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            body_total_timeout: Duration::from_secs(600),
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            public_url: None,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The platform's base URL, e.g. `https://apimodels.app`.
    pub base_url: String,
    /// A platform key, injected into upstream calls (pool id `default`). Never logged or returned.
    #[serde(default)]
    pub api_key: String,
    /// More platform keys: the pool spreads calls by weight and benches refused keys.
    #[serde(default)]
    pub keys: Vec<UpstreamKeyConfig>,
    /// How long a key answered with 401 stays out of the pool.
    #[serde(default = "default_bench_unauthorized", with = "humantime_serde")]
    pub bench_unauthorized: Duration,
    /// How long a key answered with 402 (out of credits) stays out of the pool.
    #[serde(default = "default_bench_out_of_credits", with = "humantime_serde")]
    pub bench_out_of_credits: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Largest answer read from a platform API call (a sync answer carries up to 10 images as
    /// base64); a longer one is a malformed answer, not a memory spike.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Most task polls in flight at once, over all waiting requests: a poll past it waits for a
    /// slot. Thousands of tasks polled every 2 s would otherwise open a connection each in bursts
    /// (memory and the platform's rate limits); with this many, each poll reuses a pooled one.
    #[serde(default = "default_max_polls_in_flight")]
    pub max_polls_in_flight: usize,
}

fn default_max_polls_in_flight() -> usize {
    256
}

fn default_max_response_bytes() -> usize {
    512 * 1024 * 1024
}

impl UpstreamConfig {
    /// The key pool: `api_key` (as `default`, when set) then `[[upstream.keys]]`.
    pub fn pool(&self) -> Vec<UpstreamKeyConfig> {
        let single = (!self.api_key.trim().is_empty()).then(|| UpstreamKeyConfig {
            id: DEFAULT_UPSTREAM_KEY_ID.to_owned(),
            key: self.api_key.clone(),
            weight: 1,
        });
        single
            .into_iter()
            .chain(self.keys.iter().cloned())
            .collect()
    }
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("keys", &self.keys)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_polls_in_flight", &self.max_polls_in_flight)
            .finish()
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_bench_unauthorized() -> Duration {
    Duration::from_secs(60)
}

fn default_bench_out_of_credits() -> Duration {
    Duration::from_secs(600)
}

/// How result images are fetched when the client wants `b64_json` and the upstream gave URLs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResultsConfig {
    /// Hosts result URLs may point at (`host` or `host:port`). Anything else is refused.
    pub allowed_hosts: Vec<String>,
    /// Largest result file accepted.
    pub max_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: vec!["r2.apimodels.app".to_owned()],
            max_bytes: 50 * 1024 * 1024,
            timeout: Duration::from_secs(60),
        }
    }
}

/// `[urls]`: what the URLs the gateway fetches or passes on may point at (result files, `url`
/// answers, client reference images). Strict by default: `https` only, no loopback, private or
/// link-local addresses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlsConfig {
    /// Plain `http` URLs too.
    #[serde(default)]
    pub allow_http: bool,
    /// Loopback addresses (`127.0.0.0/8`, `::1`, `localhost`): a simulator on this machine.
    #[serde(default)]
    pub allow_loopback: bool,
    /// Private addresses (RFC 1918, `100.64.0.0/10`, `fc00::/7`).
    #[serde(default)]
    pub allow_private: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// `tracing` env-filter directives; `RUST_LOG` wins when set.
    pub filter: String,
    /// Put each request's prompt in its access-log line. Off by default: prompts are the
    /// callers' data.
    pub log_prompts: bool,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            filter: "info".to_owned(),
            log_prompts: false,
        }
    }
}

/// The admin key: the secret itself or its SHA-256 (hex), as for client keys. It opens `/admin/*`
/// and nothing else; client keys never open `/admin/*`.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub key: Option<String>,
    pub key_sha256: Option<String>,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field(
                "configured",
                &(self.key.is_some() || self.key_sha256.is_some()),
            )
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: ServerConfig,
    upstream: UpstreamConfig,
    #[serde(default)]
    results: ResultsConfig,
    #[serde(default)]
    urls: UrlsConfig,
    #[serde(default)]
    logging: LoggingConfig,
    #[serde(default)]
    keys: Vec<KeySpec>,
    #[serde(default)]
    teams: Vec<TeamSpec>,
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    data: DataConfig,
    #[serde(default)]
    cluster: ClusterConfig,
    #[serde(default)]
    jobs: JobsConfig,
    #[serde(default)]
    limits: LimitsConfig,
    #[serde(default)]
    models: RawModels,
    #[serde(default)]
    routing: RawRouting,
    #[serde(default)]
    passthrough: Option<PassthroughConfig>,
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// Reads, interpolates, overrides from the process environment and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text, &|name| std::env::var(name).ok())
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    /// Parses `text`, resolving `${NAME}` and the `IMAGEGATE_*` overrides through `env`.
    pub fn from_toml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut value: toml::Value =
            toml::from_str(text).map_err(|e| ConfigError(format!("invalid TOML: {e}")))?;
        interpolate(&mut value, "", env)?;
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ConfigError(format!("{path}: {}", e.into_inner()))
        })?;
        let mut config = Config {
            server: raw.server,
            upstream: raw.upstream,
            results: raw.results,
            urls: raw.urls,
            logging: raw.logging,
            keys: raw.keys,
            teams: raw.teams,
            admin: raw.admin,
            routing: raw.routing.merged(),
            data: raw.data,
            cluster: raw.cluster,
            jobs: raw.jobs,
            limits: raw.limits,
            models: models::merged(raw.models),
            passthrough: raw.passthrough,
        };
        if let Some(listen) = env("IMAGEGATE_LISTEN") {
            config.server.listen = listen
                .parse()
                .map_err(|e| ConfigError(format!("IMAGEGATE_LISTEN: {e}")))?;
        }
        if let Some(url) = env("IMAGEGATE_UPSTREAM_BASE_URL") {
            config.upstream.base_url = url;
        }
        if let Some(key) = env("IMAGEGATE_UPSTREAM_API_KEY") {
            config.upstream.api_key = key;
        }
        config.validate()?;
        Ok(config)
    }

    /// Whether a key's `models` allow-list may name `name`: an image model id, group or alias, or,
    /// with a `[passthrough]`, any text model (the text upstream knows its own names).
    pub fn knows_model(&self, name: &str) -> bool {
        self.routing.members(name).is_some()
            || (self.passthrough.is_some()
                && !name.is_empty()
                && name.len() <= 128
                && !name.chars().any(|c| c.is_whitespace() || c.is_control()))
    }

    /// Checks every rule and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        match reqwest::Url::parse(&self.upstream.base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => problems.push(format!(
                "upstream.base_url: `{}` is not an http(s) URL",
                self.upstream.base_url
            )),
        }
        if self.upstream.pool().is_empty() {
            problems
                .push("upstream: set `api_key` or at least one [[upstream.keys]] entry".to_owned());
        }
        if self.server.max_body_bytes < 1024 {
            problems.push("server.max_body_bytes: must be at least 1024".to_owned());
        }
        if !(1..=Semaphore::MAX_PERMITS).contains(&self.server.max_in_flight) {
            problems.push("server.max_in_flight: must be at least 1".to_owned());
        }
        if !(1..=Semaphore::MAX_PERMITS).contains(&self.upstream.max_polls_in_flight) {
            problems.push("upstream.max_polls_in_flight: must be at least 1".to_owned());
        }
        self.server.check(&mut problems);
        if let Some(url) = &self.data.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                problems.push("data.url: must be a postgres:// (or postgresql://) URL".to_owned());
            }
        }
        if self.cluster.lease < Duration::from_secs(1) {
            problems.push("cluster.lease: must be at least 1s".to_owned());
        }
        if let Some(url) = &self.cluster.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                problems
                    .push("cluster.redis_url: must be a redis:// (or rediss://) URL".to_owned());
            }
            if self.data.url.is_none() {
                problems.push("cluster.redis_url: replicas share Redis only with a shared database: set data.url too".to_owned());
            }
        }
        if self.keys.is_empty() && self.data.dir.is_none() && self.data.url.is_none() {
            problems.push(
                "keys: at least one client key is required (or set data.dir and create keys through the admin API)"
                    .to_owned(),
            );
        }
        let known = |name: &str| self.knows_model(name);
        keys::check(
            &self.keys,
            &self.teams,
            &self.upstream.keys,
            &known,
            &mut problems,
        );
        self.limits.check(&mut problems);
        match (&self.admin.key, &self.admin.key_sha256) {
            (None, None) => {}
            (Some(key), None) if key.len() >= 16 => {}
            (Some(_), None) => problems.push("admin.key: at least 16 characters".to_owned()),
            (None, Some(h)) if h.len() == 64 && hex::decode(h).is_ok() => {}
            (None, Some(_)) => {
                problems.push("admin.key_sha256: must be 64 hex characters".to_owned());
            }
            _ => problems.push("admin: set exactly one of `key` or `key_sha256`".to_owned()),
        }
        self.models.check(&mut problems);
        self.routing.check(&mut problems);
        if let Some(p) = &self.passthrough {
            p.check(&mut problems);
        }
        match self.routing.members(&self.server.default_model) {
            None => problems.push(format!(
                "server.default_model: `{}` is not a model id, group or alias",
                self.server.default_model
            )),
            Some(members) if !members.iter().any(|m| self.models.get(*m).enabled) => {
                problems.push(format!(
                    "server.default_model: every model of `{}` is disabled",
                    self.server.default_model
                ));
            }
            Some(_) => {}
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems.join("; ")))
        }
    }
}

/// Replaces `${NAME}` in every string value. A missing variable is an error naming the key.
fn interpolate(
    value: &mut toml::Value,
    at: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) => *s = expand(s, at, env)?,
        toml::Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                interpolate(v, &format!("{at}[{i}]"), env)?;
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                let key = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                interpolate(v, &key, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand(s: &str, at: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| ConfigError(format!("{at}: unterminated `${{` in value")))?;
        let name = &after[..end];
        let val = env(name).ok_or_else(|| {
            ConfigError(format!("{at}: environment variable `{name}` is not set"))
        })?;
        out.push_str(&val);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests;
