//! `[passthrough]`: the OpenAI-compatible text upstream behind `/v1/responses` and
//! `/v1/chat/completions` (what Codex and Cursor send for every model turn).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::model::Usd;

/// The text upstream and its prices.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughConfig {
    /// The upstream's base URL, `/v1` included (`https://api.openai.com/v1`): the gateway calls
    /// `{base_url}/responses`, `{base_url}/chat/completions` and `{base_url}/models`.
    pub base_url: String,
    /// Injected as `Authorization: Bearer …`. Never logged or returned.
    pub api_key: String,
    /// The whole upstream call, a streamed answer included.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A `: keepalive` comment is written between events while the upstream is silent this long.
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    pub keepalive: Duration,
    /// Output tokens reserved against a budget when the request names no
    /// `max_output_tokens` / `max_completion_tokens` / `max_tokens`.
    #[serde(default = "default_max_output_tokens")]
    pub max_output_tokens: u64,
    /// How long the upstream's model list is kept for `GET /v1/models`.
    #[serde(default = "default_models_ttl", with = "humantime_serde")]
    pub models_ttl: Duration,
    /// USD per million tokens, per text model. A key or team with a budget may use only these.
    #[serde(default)]
    pub prices: BTreeMap<String, TextPrice>,
}

/// A text model's price: USD per million input and output tokens.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextPrice {
    pub input_usd_per_1m: f64,
    pub output_usd_per_1m: f64,
}

impl TextPrice {
    /// The cost of `input` and `output` tokens, rounded up to the micro-dollar.
    pub fn cost(&self, input: u64, output: u64) -> Usd {
        // Micro-dollars per million tokens = dollars per token × 10^12 / 10^6.
        let micros = |tokens: u64, per_1m: f64| (tokens as f64 * per_1m).ceil().max(0.0) as u64;
        Usd(micros(input, self.input_usd_per_1m)
            .saturating_add(micros(output, self.output_usd_per_1m)))
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(600)
}

fn default_keepalive() -> Duration {
    Duration::from_secs(15)
}

fn default_max_output_tokens() -> u64 {
    32_768
}

fn default_models_ttl() -> Duration {
    Duration::from_secs(300)
}

impl PassthroughConfig {
    /// The URL of an upstream route (`responses`, `chat/completions`, `models`).
    pub fn url(&self, route: &str) -> String {
        format!("{}/{route}", self.base_url.trim_end_matches('/'))
    }

    pub(super) fn check(&self, problems: &mut Vec<String>) {
        match url::Url::parse(&self.base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => problems.push(format!(
                "passthrough.base_url: `{}` is not an http(s) URL",
                self.base_url
            )),
        }
        if self.api_key.trim().is_empty() {
            problems.push("passthrough.api_key: must not be empty".to_owned());
        }
        if self.timeout.is_zero() || self.keepalive.is_zero() {
            problems.push("passthrough.timeout, passthrough.keepalive: must be more than 0".into());
        }
        if self.max_output_tokens == 0 {
            problems.push("passthrough.max_output_tokens: must be at least 1".to_owned());
        }
        for (model, p) in &self.prices {
            for (what, v) in [
                ("input_usd_per_1m", p.input_usd_per_1m),
                ("output_usd_per_1m", p.output_usd_per_1m),
            ] {
                if !(0.0..=10_000.0).contains(&v) {
                    problems.push(format!(
                        "passthrough.prices.{model}.{what}: must be a number from 0 to 10000"
                    ));
                }
            }
        }
    }
}

impl std::fmt::Debug for PassthroughConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassthroughConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("keepalive", &self.keepalive)
            .field("max_output_tokens", &self.max_output_tokens)
            .field("prices", &self.prices)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_round_up_to_the_micro_dollar() {
        let p = TextPrice {
            input_usd_per_1m: 1.25,
            output_usd_per_1m: 10.0,
        };
        // 1,000 × 1.25 µ$ + 200 × 10 µ$.
        assert_eq!(p.cost(1_000, 200), Usd(3_250));
        assert_eq!(p.cost(1, 0), Usd(2));
        assert_eq!(p.cost(0, 0), Usd::ZERO);
    }
}
