//! Typed configuration: the TOML file, `${ENV}` interpolation, environment overrides, validation.
//!
//! Load order: built-in defaults → the file → `IMAGEGATE_LISTEN`, `IMAGEGATE_UPSTREAM_BASE_URL`,
//! `IMAGEGATE_UPSTREAM_API_KEY`. Unknown keys and invalid values are rejected at startup with a
//! message that names the key (`models.gpt-image-2-all.poll_interval: …`).
//! `config/imagegate.example.toml` documents every key; a test parses it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::model::ModelId;

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub results: ResultsConfig,
    pub logging: LoggingConfig,
    /// Client keys allowed to call the gateway.
    pub keys: Vec<ClientKeyConfig>,
    pub models: ModelsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How long in-flight requests may run after a shutdown signal.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Largest accepted request body (multipart edits carry up to 16 images).
    pub max_body_bytes: usize,
    /// Public model used when a request names none.
    pub default_model: ModelId,
    /// Interval of `: keepalive` comments on streamed (`stream: true`) responses.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            drain_timeout: Duration::from_secs(150),
            max_body_bytes: 64 * 1024 * 1024,
            default_model: ModelId::All,
            keepalive_interval: Duration::from_secs(15),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The platform's base URL, e.g. `https://apimodels.app`.
    pub base_url: String,
    /// The platform key, injected into every upstream call. Never logged or returned.
    pub api_key: String,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
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
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            filter: "info".to_owned(),
        }
    }
}

/// A client key: the secret itself or its SHA-256 (hex). Only the hash is kept in memory.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientKeyConfig {
    pub id: String,
    pub key: Option<String>,
    pub key_sha256: Option<String>,
}

impl std::fmt::Debug for ClientKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKeyConfig")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Per-model settings, one table per public model id.
#[derive(Debug, Clone)]
pub struct ModelsConfig {
    pub lite: ModelConfig,
    pub all: ModelConfig,
    pub beta: ModelConfig,
    pub sparkpix: ModelConfig,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            lite: ModelConfig::defaults(ModelId::Lite),
            all: ModelConfig::defaults(ModelId::All),
            beta: ModelConfig::defaults(ModelId::Beta),
            sparkpix: ModelConfig::defaults(ModelId::SparkPix),
        }
    }
}

impl ModelsConfig {
    pub fn get(&self, id: ModelId) -> &ModelConfig {
        match id {
            ModelId::Lite => &self.lite,
            ModelId::All => &self.all,
            ModelId::Beta => &self.beta,
            ModelId::SparkPix => &self.sparkpix,
        }
    }
}

/// One model's switches, timings and prices. Missing keys take the model's own defaults.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub enabled: bool,
    /// Whole budget for one request on this model: create, polls and the sync call itself.
    pub deadline: Duration,
    /// Wait before the first poll of an async task.
    pub first_poll_delay: Duration,
    /// Wait between polls (at least 1 s: the platform asks for 2–3 s).
    pub poll_interval: Duration,
    /// USD per image (gpt-image-2-lite, gpt-image-2-beta, SparkPix generate).
    pub price_usd: Option<f64>,
    /// USD per edited image (SparkPix Image Edit).
    pub edit_price_usd: Option<f64>,
    /// USD per image by tier and quality (gpt-image-2-all): `{"1K" = {low, medium, high}, …}`.
    pub price_matrix_usd: Option<BTreeMap<String, QualityPrices>>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QualityPrices {
    pub low: f64,
    pub medium: f64,
    pub high: f64,
}

impl ModelConfig {
    /// Defaults from the platform's documented latencies and prices.
    pub fn defaults(id: ModelId) -> Self {
        let secs = Duration::from_secs;
        let base = Self {
            enabled: true,
            deadline: secs(240),
            first_poll_delay: secs(5),
            poll_interval: secs(3),
            price_usd: None,
            edit_price_usd: None,
            price_matrix_usd: None,
        };
        match id {
            // Synchronous task envelope: the create call already carries the result.
            ModelId::Lite => Self {
                deadline: secs(180),
                price_usd: Some(0.04),
                ..base
            },
            // low ≈ 40 s, medium 60–90 s, high ≈ 2 min.
            ModelId::All => Self {
                deadline: secs(240),
                first_poll_delay: secs(10),
                poll_interval: secs(3),
                price_matrix_usd: Some(default_all_matrix()),
                ..base
            },
            // Typical 15–40 s; price is not documented: set it in config.
            ModelId::Beta => Self {
                deadline: secs(120),
                first_poll_delay: secs(5),
                poll_interval: secs(2),
                price_usd: Some(0.03),
                ..base
            },
            // Sub-second sync endpoints.
            ModelId::SparkPix => Self {
                deadline: secs(30),
                price_usd: Some(0.010),
                edit_price_usd: Some(0.013),
                ..base
            },
        }
    }
}

fn default_all_matrix() -> BTreeMap<String, QualityPrices> {
    let row = |low, medium, high| QualityPrices { low, medium, high };
    BTreeMap::from([
        ("1K".to_owned(), row(0.005, 0.025, 0.07)),
        ("2K".to_owned(), row(0.01, 0.04, 0.10)),
        ("4K".to_owned(), row(0.015, 0.06, 0.23)),
    ])
}

/// Model tables are partial in files: unknown keys are rejected, missing keys take the model's
/// defaults. This wrapper merges a file table over the defaults before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelConfig {
    enabled: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    deadline: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    first_poll_delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    poll_interval: Option<Duration>,
    price_usd: Option<f64>,
    edit_price_usd: Option<f64>,
    price_matrix_usd: Option<BTreeMap<String, QualityPrices>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModels {
    #[serde(rename = "gpt-image-2-lite", default)]
    lite: RawModelConfig,
    #[serde(rename = "gpt-image-2-all", default)]
    all: RawModelConfig,
    #[serde(rename = "gpt-image-2-beta", default)]
    beta: RawModelConfig,
    #[serde(default)]
    sparkpix: RawModelConfig,
}

impl RawModelConfig {
    fn over(self, d: ModelConfig) -> ModelConfig {
        ModelConfig {
            enabled: self.enabled.unwrap_or(d.enabled),
            deadline: self.deadline.unwrap_or(d.deadline),
            first_poll_delay: self.first_poll_delay.unwrap_or(d.first_poll_delay),
            poll_interval: self.poll_interval.unwrap_or(d.poll_interval),
            price_usd: self.price_usd.or(d.price_usd),
            edit_price_usd: self.edit_price_usd.or(d.edit_price_usd),
            price_matrix_usd: self.price_matrix_usd.or(d.price_matrix_usd),
        }
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
    logging: LoggingConfig,
    #[serde(default)]
    keys: Vec<ClientKeyConfig>,
    #[serde(default)]
    models: RawModels,
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
        let RawModels {
            lite,
            all,
            beta,
            sparkpix,
        } = raw.models;
        let mut config = Config {
            server: raw.server,
            upstream: raw.upstream,
            results: raw.results,
            logging: raw.logging,
            keys: raw.keys,
            models: ModelsConfig {
                lite: lite.over(ModelConfig::defaults(ModelId::Lite)),
                all: all.over(ModelConfig::defaults(ModelId::All)),
                beta: beta.over(ModelConfig::defaults(ModelId::Beta)),
                sparkpix: sparkpix.over(ModelConfig::defaults(ModelId::SparkPix)),
            },
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
        if self.upstream.api_key.trim().is_empty() {
            problems.push("upstream.api_key: must not be empty".to_owned());
        }
        if self.server.max_body_bytes < 1024 {
            problems.push("server.max_body_bytes: must be at least 1024".to_owned());
        }
        if self.keys.is_empty() {
            problems.push("keys: at least one client key is required".to_owned());
        }
        let mut ids = std::collections::HashSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            if k.id.trim().is_empty() {
                problems.push(format!("keys[{i}].id: must not be empty"));
            }
            if !ids.insert(k.id.as_str()) {
                problems.push(format!("keys[{i}].id: duplicate id `{}`", k.id));
            }
            match (&k.key, &k.key_sha256) {
                (Some(key), None) if key.len() >= 8 => {}
                (Some(_), None) => problems.push(format!("keys[{i}].key: at least 8 characters")),
                (None, Some(h)) if h.len() == 64 && hex::decode(h).is_ok() => {}
                (None, Some(_)) => {
                    problems.push(format!("keys[{i}].key_sha256: must be 64 hex characters"));
                }
                _ => problems.push(format!(
                    "keys[{i}]: set exactly one of `key` or `key_sha256`"
                )),
            }
        }
        for id in ModelId::ALL {
            let m = self.models.get(id);
            let at = format!("models.{}", id.as_str());
            if m.poll_interval < Duration::from_secs(1) {
                problems.push(format!("{at}.poll_interval: must be at least 1s"));
            }
            if m.deadline < Duration::from_secs(1) {
                problems.push(format!("{at}.deadline: must be at least 1s"));
            }
            for (name, p) in [
                ("price_usd", m.price_usd),
                ("edit_price_usd", m.edit_price_usd),
            ] {
                if p.is_some_and(|p| !(p.is_finite() && p >= 0.0)) {
                    problems.push(format!("{at}.{name}: must be a non-negative number"));
                }
            }
            if let Some(matrix) = &m.price_matrix_usd {
                for tier in matrix.keys() {
                    if !matches!(tier.as_str(), "1K" | "2K" | "4K") {
                        problems.push(format!(
                            "{at}.price_matrix_usd.{tier}: tiers are 1K, 2K, 4K"
                        ));
                    }
                }
            }
        }
        if !self.models.get(self.server.default_model).enabled {
            problems.push(format!(
                "server.default_model: `{}` is disabled",
                self.server.default_model.as_str()
            ));
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
mod tests {
    use super::*;

    const MIN: &str = r#"
        [upstream]
        base_url = "http://127.0.0.1:9"
        api_key = "${UP_KEY}"
        [[keys]]
        id = "alice"
        key = "sk-alice-123"
    "#;

    fn env(name: &str) -> Option<String> {
        (name == "UP_KEY").then(|| "up-secret".to_owned())
    }

    #[test]
    fn interpolates_and_fills_model_defaults() {
        let c = Config::from_toml(MIN, &env).unwrap();
        assert_eq!(c.upstream.api_key, "up-secret");
        assert_eq!(c.models.all.poll_interval, Duration::from_secs(3));
        assert_eq!(c.models.lite.price_usd, Some(0.04));
    }

    #[test]
    fn partial_model_table_keeps_other_defaults() {
        let text = format!("{MIN}\n[models.gpt-image-2-beta]\nprice_usd = 0.05\n");
        let c = Config::from_toml(&text, &env).unwrap();
        assert_eq!(c.models.beta.price_usd, Some(0.05));
        assert_eq!(c.models.beta.deadline, Duration::from_secs(120));
    }

    #[test]
    fn unknown_key_is_named() {
        let text = format!("{MIN}\n[models.gpt-image-2-all]\npoll_intervall = \"2s\"\n");
        let e = Config::from_toml(&text, &env).unwrap_err().to_string();
        assert!(
            e.contains("models.gpt-image-2-all") && e.contains("poll_intervall"),
            "{e}"
        );
    }

    #[test]
    fn invalid_value_is_named() {
        let text = format!("{MIN}\n[models.gpt-image-2-all]\npoll_interval = \"200ms\"\n");
        let e = Config::from_toml(&text, &env).unwrap_err().to_string();
        assert!(e.contains("models.gpt-image-2-all.poll_interval"), "{e}");
    }

    #[test]
    fn missing_env_var_is_named() {
        let e = Config::from_toml(MIN, &|_| None).unwrap_err().to_string();
        assert!(
            e.contains("upstream.api_key") && e.contains("UP_KEY"),
            "{e}"
        );
    }

    #[test]
    fn env_overrides_win() {
        let env = |name: &str| match name {
            "UP_KEY" => Some("a".to_owned()),
            "IMAGEGATE_LISTEN" => Some("127.0.0.1:9999".to_owned()),
            "IMAGEGATE_UPSTREAM_BASE_URL" => Some("http://upstream.test".to_owned()),
            "IMAGEGATE_UPSTREAM_API_KEY" => Some("override".to_owned()),
            _ => None,
        };
        let c = Config::from_toml(MIN, &env).unwrap();
        assert_eq!(c.server.listen.port(), 9999);
        assert_eq!(c.upstream.base_url, "http://upstream.test");
        assert_eq!(c.upstream.api_key, "override");
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../config/imagegate.example.toml");
        let env = |name: &str| match name {
            "IMAGEGATE_UPSTREAM_KEY" => Some("k".to_owned()),
            "IMAGEGATE_CI_KEY" => Some("sk-ci-0123456789".to_owned()),
            _ => None,
        };
        Config::from_toml(text, &env).unwrap();
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = Config::from_toml(MIN, &env).unwrap();
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("up-secret") && !dbg.contains("sk-alice-123"),
            "{dbg}"
        );
    }
}
