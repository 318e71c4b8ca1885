//! Per-model settings: switches, timings and prices, one table per public model id. Missing keys
//! take the model's own defaults (the platform's documented latencies and prices).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::model::registry::PriceRule;
use crate::model::ModelId;

/// Per-model settings, one table per public model id (`[models.<id>]`).
#[derive(Debug, Clone)]
pub struct ModelsConfig([ModelConfig; ModelId::COUNT]);

impl Default for ModelsConfig {
    fn default() -> Self {
        Self(ModelId::ALL.map(ModelConfig::defaults))
    }
}

impl ModelsConfig {
    /// Adds every problem with the model tables to `problems`.
    pub(super) fn check(&self, problems: &mut Vec<String>) {
        for id in ModelId::ALL {
            let m = self.get(id);
            let at = format!("models.{}", id.as_str());
            if m.poll_interval < Duration::from_secs(1) {
                problems.push(format!("{at}.poll_interval: must be at least 1s"));
            }
            if m.deadline < Duration::from_secs(1) {
                problems.push(format!("{at}.deadline: must be at least 1s"));
            }
            let prices = [
                ("price_usd", m.price_usd),
                ("edit_price_usd", m.edit_price_usd),
            ];
            for (name, p) in prices {
                if p.is_some_and(|p| !(p.is_finite() && (0.0..=1000.0).contains(&p))) {
                    problems.push(format!("{at}.{name}: must be a number from 0 to 1000"));
                }
            }
            // Every request must have an exact price: the model's own price keys must be set.
            let needed: &[(&str, bool)] = match id.def().price {
                PriceRule::Matrix { .. } => &[("price_matrix_usd", m.price_matrix_usd.is_some())],
                PriceRule::GenerateEdit { .. } => &[
                    ("price_usd", m.price_usd.is_some()),
                    ("edit_price_usd", m.edit_price_usd.is_some()),
                ],
                PriceRule::Flat { .. } => &[("price_usd", m.price_usd.is_some())],
            };
            for (name, set) in needed {
                if !set {
                    problems.push(format!("{at}.{name}: must be set"));
                }
            }
            if let Some(matrix) = &m.price_matrix_usd {
                for tier in matrix.keys() {
                    if !TIERS.contains(&tier.as_str()) {
                        problems.push(format!(
                            "{at}.price_matrix_usd.{tier}: tiers are 1K, 2K, 4K"
                        ));
                    }
                }
                for tier in TIERS {
                    match matrix.get(tier) {
                        None => problems.push(format!("{at}.price_matrix_usd.{tier}: missing")),
                        Some(q)
                            if ![q.low, q.medium, q.high]
                                .iter()
                                .all(|p| p.is_finite() && (0.0..=1000.0).contains(p)) =>
                        {
                            problems.push(format!(
                                "{at}.price_matrix_usd.{tier}: prices must be numbers from 0 to 1000"
                            ));
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }

    pub fn get(&self, id: ModelId) -> &ModelConfig {
        &self.0[id.index()]
    }

    pub fn get_mut(&mut self, id: ModelId) -> &mut ModelConfig {
        &mut self.0[id.index()]
    }
}

/// The price tiers of `price_matrix_usd`, by the longest side of the image.
pub const TIERS: [&str; 3] = ["1K", "2K", "4K"];

/// One model's switches, timings and prices. Missing keys take the model's own defaults.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub enabled: bool,
    /// How long a caller waits on this model (a sync call, or create and polls) before a 504
    /// naming the job; the paid work itself goes on (see `give_up_after`).
    pub deadline: Duration,
    /// How long a job's task is followed after its create before its outcome is declared
    /// unknown (booked, reported).
    pub give_up_after: Duration,
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
    /// Defaults from the registry: the platform's documented latencies and prices.
    pub fn defaults(id: ModelId) -> Self {
        let def = id.def();
        let t = def.timings;
        let (price_usd, edit_price_usd, price_matrix_usd) = match def.price {
            PriceRule::Flat { usd } => (Some(usd), None, None),
            PriceRule::GenerateEdit {
                generate_usd,
                edit_usd,
            } => (Some(generate_usd), Some(edit_usd), None),
            PriceRule::Matrix { usd } => {
                let rows = usd.iter().map(|(tier, [low, medium, high])| {
                    let row = QualityPrices {
                        low: *low,
                        medium: *medium,
                        high: *high,
                    };
                    ((*tier).to_owned(), row)
                });
                (None, None, Some(rows.collect()))
            }
        };
        Self {
            enabled: true,
            deadline: Duration::from_secs(t.deadline_s),
            give_up_after: Duration::from_secs(30 * 60),
            first_poll_delay: Duration::from_secs(t.first_poll_delay_s),
            poll_interval: Duration::from_secs(t.poll_interval_s),
            price_usd,
            edit_price_usd,
            price_matrix_usd,
        }
    }
}

/// Model tables are partial in files: unknown keys are rejected, missing keys take the model's
/// defaults. This wrapper merges a file table over the defaults before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModelConfig {
    enabled: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    deadline: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    give_up_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    first_poll_delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    poll_interval: Option<Duration>,
    price_usd: Option<f64>,
    edit_price_usd: Option<f64>,
    price_matrix_usd: Option<BTreeMap<String, QualityPrices>>,
}

/// `[models.<id>]` tables as written: keyed by a model id (an unknown id is refused by name).
pub(super) type RawModels = BTreeMap<ModelId, RawModelConfig>;

/// The file's tables merged over every model's defaults.
pub(super) fn merged(mut raw: RawModels) -> ModelsConfig {
    ModelsConfig(ModelId::ALL.map(|id| {
        raw.remove(&id)
            .unwrap_or_default()
            .over(ModelConfig::defaults(id))
    }))
}

impl RawModelConfig {
    pub(super) fn over(self, d: ModelConfig) -> ModelConfig {
        ModelConfig {
            enabled: self.enabled.unwrap_or(d.enabled),
            deadline: self.deadline.unwrap_or(d.deadline),
            give_up_after: self.give_up_after.unwrap_or(d.give_up_after),
            first_poll_delay: self.first_poll_delay.unwrap_or(d.first_poll_delay),
            poll_interval: self.poll_interval.unwrap_or(d.poll_interval),
            price_usd: self.price_usd.or(d.price_usd),
            edit_price_usd: self.edit_price_usd.or(d.edit_price_usd),
            price_matrix_usd: self.price_matrix_usd.or(d.price_matrix_usd),
        }
    }
}
