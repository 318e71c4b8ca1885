//! `[routing]`: public names (groups and aliases), failover bounds and the circuit breaker.
//!
//! Groups and aliases given in the file are merged over the defaults by name, so a file can add
//! a group or repoint one alias without repeating the rest.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::model::{registry, ModelId};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Group name → member models. A request for a group is served by the cheapest healthy
    /// member that can do it.
    pub groups: BTreeMap<String, Vec<ModelId>>,
    /// Other public names (OpenAI's own model names) → a group or a pinned model id.
    pub aliases: BTreeMap<String, String>,
    /// Most upstream models one request may try (the first try included).
    pub max_attempts: u8,
    /// One deadline for the whole request, across every attempt (each attempt is also bounded
    /// by its model's own `deadline`).
    #[serde(with = "humantime_serde")]
    pub request_deadline: Duration,
    /// Candidates whose prices differ by at most this fraction count as a tie, which health
    /// breaks (success ratio, then latency).
    pub tie_tolerance: f64,
    /// Observations needed before a model's latency percentiles are trusted over the catalog's
    /// typical latency.
    pub latency_min_samples: usize,
    pub circuit: CircuitConfig,
}

/// When a model is taken out of rotation, and for how long.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitConfig {
    /// `false`: no model is ever taken out of rotation (health is still observed and shown).
    pub enabled: bool,
    /// Consecutive failures that open the circuit.
    pub consecutive_failures: u32,
    /// Error ratio over `window` that opens the circuit (once `min_requests` were seen).
    pub error_ratio: f64,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    pub min_requests: u32,
    /// How long an open circuit stays open before one probe request is let through.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// How long a model answered "out of credits" (402) is benched.
    #[serde(with = "humantime_serde")]
    pub out_of_credits_cooldown: Duration,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: 5,
            error_ratio: 0.5,
            window: Duration::from_secs(60),
            min_requests: 10,
            cooldown: Duration::from_secs(30),
            out_of_credits_cooldown: Duration::from_secs(600),
        }
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            groups: default_groups(),
            aliases: default_aliases(),
            max_attempts: 3,
            request_deadline: Duration::from_secs(300),
            tie_tolerance: 0.1,
            latency_min_samples: 3,
            circuit: CircuitConfig::default(),
        }
    }
}

/// `auto` (every model) and the registry's groups.
fn default_groups() -> BTreeMap<String, Vec<ModelId>> {
    let mut groups: BTreeMap<String, Vec<ModelId>> = registry::GROUPS
        .iter()
        .map(|(name, members)| ((*name).to_owned(), members.to_vec()))
        .collect();
    groups.insert("auto".to_owned(), ModelId::ALL.to_vec());
    groups
}

/// OpenAI's model names, so clients with a hard-coded name work. The gpt-image family maps to
/// the gpt-image-2 group; the small and legacy models to `auto` (cheapest first).
fn default_aliases() -> BTreeMap<String, String> {
    [
        ("gpt-image-1", "gpt-image-2"),
        ("gpt-image-1.5", "gpt-image-2"),
        ("gpt-image-2-2026-04-21", "gpt-image-2"),
        ("chatgpt-image-latest", "gpt-image-2"),
        ("gpt-image-1-mini", "auto"),
        ("dall-e-3", "gpt-image-2"),
        ("dall-e-2", "auto"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect()
}

/// The file's `[routing]`: like [`RoutingConfig`], but groups and aliases merge over the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouting {
    #[serde(default)]
    groups: BTreeMap<String, Vec<ModelId>>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    max_attempts: Option<u8>,
    #[serde(default, with = "humantime_serde")]
    request_deadline: Option<Duration>,
    tie_tolerance: Option<f64>,
    latency_min_samples: Option<usize>,
    #[serde(default)]
    circuit: CircuitConfig,
}

impl RawRouting {
    pub(super) fn merged(self) -> RoutingConfig {
        let d = RoutingConfig::default();
        let mut groups = d.groups;
        groups.extend(self.groups);
        let mut aliases = d.aliases;
        aliases.extend(self.aliases);
        RoutingConfig {
            groups,
            aliases,
            max_attempts: self.max_attempts.unwrap_or(d.max_attempts),
            request_deadline: self.request_deadline.unwrap_or(d.request_deadline),
            tie_tolerance: self.tie_tolerance.unwrap_or(d.tie_tolerance),
            latency_min_samples: self.latency_min_samples.unwrap_or(d.latency_min_samples),
            circuit: self.circuit,
        }
    }
}

impl RoutingConfig {
    /// The models a public name stands for: a pinned id, a group or an alias of either.
    pub fn members(&self, name: &str) -> Option<Vec<ModelId>> {
        if let Ok(m) = name.parse::<ModelId>() {
            return Some(vec![m]);
        }
        let target = self.aliases.get(name).map_or(name, String::as_str);
        if let Ok(m) = target.parse::<ModelId>() {
            return Some(vec![m]);
        }
        self.groups.get(target).cloned()
    }

    /// Adds every problem with `[routing]` to `problems`.
    pub(super) fn check(&self, problems: &mut Vec<String>) {
        let pinned = |name: &str| name.parse::<ModelId>().is_ok();
        for (name, members) in &self.groups {
            if pinned(name) {
                problems.push(format!(
                    "routing.groups.{name}: a group cannot take a pinned model's id"
                ));
            }
            if members.is_empty() {
                problems.push(format!("routing.groups.{name}: needs at least one model"));
            }
        }
        for (alias, target) in &self.aliases {
            if pinned(alias) || self.groups.contains_key(alias) {
                problems.push(format!(
                    "routing.aliases.{alias}: already a model or group name"
                ));
            }
            if !pinned(target) && !self.groups.contains_key(target) {
                problems.push(format!(
                    "routing.aliases.{alias}: `{target}` is neither a model id nor a group"
                ));
            }
        }
        if self.max_attempts == 0 {
            problems.push("routing.max_attempts: must be at least 1".to_owned());
        }
        if self.request_deadline < Duration::from_secs(1) {
            problems.push("routing.request_deadline: must be at least 1s".to_owned());
        }
        if !(0.0..=1.0).contains(&self.tie_tolerance) {
            problems.push("routing.tie_tolerance: must be from 0 to 1".to_owned());
        }
        let c = &self.circuit;
        if c.consecutive_failures == 0 {
            problems.push("routing.circuit.consecutive_failures: must be at least 1".to_owned());
        }
        if !(c.error_ratio > 0.0 && c.error_ratio <= 1.0) {
            problems.push("routing.circuit.error_ratio: must be in (0, 1]".to_owned());
        }
        if c.window.is_zero() {
            problems.push("routing.circuit.window: must be positive".to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<crate::config::Config, String> {
        let text = format!(
            "[upstream]\nbase_url = \"http://127.0.0.1:9\"\napi_key = \"k\"\n[[keys]]\nid = \"a\"\nkey = \"sk-a-12345678\"\n{extra}"
        );
        crate::config::Config::from_toml(&text, &|_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn file_groups_and_aliases_merge_over_the_defaults() {
        let c = parse(
            "[routing.groups]\ncheap = [\"sparkpix\", \"gpt-image-2-lite\"]\n[routing.aliases]\n\"dall-e-3\" = \"cheap\"\n[routing.circuit]\ncooldown = \"5s\"\n",
        )
        .unwrap();
        let r = &c.routing;
        assert_eq!(
            r.members("dall-e-3"),
            Some(vec![ModelId::SparkPix, ModelId::Lite])
        );
        assert_eq!(
            r.members("gpt-image-1").map(|m| m.len()),
            Some(3),
            "defaults kept"
        );
        assert_eq!(r.members("gpt-image-2-beta"), Some(vec![ModelId::Beta]));
        assert_eq!(r.members("nope"), None);
        assert_eq!(r.circuit.cooldown, Duration::from_secs(5));
        assert_eq!(
            r.circuit.consecutive_failures, 5,
            "the rest of the table defaults"
        );
    }

    #[test]
    fn bad_names_and_values_are_named() {
        let cases = [
            (
                "[routing.groups]\n\"gpt-image-2-all\" = [\"sparkpix\"]\n",
                "routing.groups.gpt-image-2-all",
            ),
            (
                "[routing.groups]\nempty = []\n",
                "routing.groups.empty: needs at least one model",
            ),
            ("[routing.groups]\nx = [\"gpt-9\"]\n", "routing.groups.x"),
            (
                "[routing.aliases]\nfoo = \"bar\"\n",
                "routing.aliases.foo: `bar` is neither",
            ),
            (
                "[routing.aliases]\nauto = \"sparkpix\"\n",
                "routing.aliases.auto: already",
            ),
            ("[routing]\nmax_attempts = 0\n", "routing.max_attempts"),
            ("[routing]\ntie_tolerance = 2.0\n", "routing.tie_tolerance"),
            (
                "[routing.circuit]\nerror_ratio = 0\n",
                "routing.circuit.error_ratio",
            ),
            ("[routing.circuit]\ncoldown = \"1s\"\n", "coldown"),
            (
                "[server]\ndefault_model = \"gpt-9\"\n",
                "server.default_model",
            ),
        ];
        for (extra, want) in cases {
            let e = parse(extra).unwrap_err();
            assert!(e.contains(want), "{extra}: {e}");
        }
        assert!(parse("[server]\ndefault_model = \"gpt-image-1\"\n").is_ok());
    }
}
