//! The upstream key pool: several platform keys, each with a weight. A call picks a key at
//! random by weight among those not benched; a key answered with 401 is benched for
//! `upstream.bench_unauthorized`, one answered with 402 (out of credits) for
//! `upstream.bench_out_of_credits`, and the same call is sent again with another key.
//!
//! A key is known by its configured id everywhere (admin API, logs); its secret only ever goes
//! into the `Authorization` header of an upstream call.

use std::sync::Mutex;
use std::time::Duration;

use axum::http::HeaderValue;
use serde::Serialize;
use tokio::time::Instant;

use super::FailureKind;
use crate::config::UpstreamConfig;

struct PoolKey {
    id: String,
    auth: HeaderValue,
    weight: u32,
    state: Mutex<KeyState>,
}

#[derive(Default)]
struct KeyState {
    benched_until: Option<Instant>,
    reason: Option<&'static str>,
    calls: u64,
    refusals: u64,
}

/// One key's state, for `GET /admin/upstream-keys`.
#[derive(Debug, Clone, Serialize)]
pub struct PoolKeyView {
    pub id: String,
    pub weight: u32,
    /// `active` or `benched`.
    pub state: &'static str,
    /// Why it was last benched: `unauthorized` (401) or `out_of_credits` (402).
    pub reason: Option<&'static str>,
    pub benched_for_secs: Option<u64>,
    pub calls: u64,
    pub refusals: u64,
}

pub struct KeyPool {
    keys: Vec<PoolKey>,
    bench_unauthorized: Duration,
    bench_out_of_credits: Duration,
}

impl KeyPool {
    pub fn new(config: &UpstreamConfig) -> anyhow::Result<Self> {
        let keys = config
            .pool()
            .into_iter()
            .map(|k| {
                let mut auth =
                    HeaderValue::from_str(&format!("Bearer {}", k.key)).map_err(|_| {
                        anyhow::anyhow!("upstream key `{}` is not a valid header", k.id)
                    })?;
                auth.set_sensitive(true);
                Ok(PoolKey {
                    id: k.id,
                    auth,
                    weight: k.weight.max(1),
                    state: Mutex::new(KeyState::default()),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            keys,
            bench_unauthorized: config.bench_unauthorized,
            bench_out_of_credits: config.bench_out_of_credits,
        })
    }

    fn state(&self, i: usize) -> std::sync::MutexGuard<'_, KeyState> {
        self.keys[i]
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A key not in `tried`: by weight among the keys not benched, else the one whose bench
    /// ends first (it may have been fixed). `None` when every key was tried.
    pub fn pick(&self, tried: &[usize]) -> Option<(usize, HeaderValue)> {
        let now = Instant::now();
        let untried: Vec<usize> = (0..self.keys.len())
            .filter(|i| !tried.contains(i))
            .collect();
        let benched_until = |i: usize| self.state(i).benched_until.filter(|t| *t > now);
        let active: Vec<usize> = untried
            .iter()
            .copied()
            .filter(|&i| benched_until(i).is_none())
            .collect();
        let chosen = if active.is_empty() {
            untried.into_iter().min_by_key(|&i| benched_until(i))?
        } else {
            let total: u32 = active.iter().map(|&i| self.keys[i].weight).sum();
            let mut ticket = fastrand::u32(0..total);
            let mut chosen = active[0];
            for &i in &active {
                if ticket < self.keys[i].weight {
                    chosen = i;
                    break;
                }
                ticket -= self.keys[i].weight;
            }
            chosen
        };
        self.state(chosen).calls += 1;
        Some((chosen, self.keys[chosen].auth.clone()))
    }

    /// Whether a key not in `tried` remains.
    pub fn pick_possible(&self, tried: &[usize]) -> bool {
        (0..self.keys.len()).any(|i| !tried.contains(&i))
    }

    /// Benches key `i` after the platform refused it; true when the caller should try another.
    pub fn refused(&self, i: usize, kind: FailureKind) -> bool {
        let (reason, bench) = match kind {
            FailureKind::Unauthorized => ("unauthorized", self.bench_unauthorized),
            FailureKind::OutOfCredits => ("out_of_credits", self.bench_out_of_credits),
            _ => return false,
        };
        let mut st = self.state(i);
        st.benched_until = Some(Instant::now() + bench);
        st.reason = Some(reason);
        st.refusals += 1;
        tracing::warn!(
            upstream_key = %self.keys[i].id,
            reason,
            bench_secs = bench.as_secs(),
            "upstream key benched"
        );
        true
    }

    /// Marks key `i` healthy again after a successful call.
    pub fn succeeded(&self, i: usize) {
        self.state(i).benched_until = None;
    }

    pub fn id(&self, i: usize) -> &str {
        self.keys.get(i).map_or("", |k| k.id.as_str())
    }

    /// Key `i`'s `Authorization` value (a task is polled with the key that created it).
    pub fn auth(&self, i: usize) -> Option<HeaderValue> {
        self.keys.get(i).map(|k| k.auth.clone())
    }

    /// The index of the key configured as `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.keys.iter().position(|k| k.id == id)
    }

    pub fn view(&self) -> Vec<PoolKeyView> {
        let now = Instant::now();
        (0..self.keys.len())
            .map(|i| {
                let st = self.state(i);
                let left = st.benched_until.filter(|t| *t > now).map(|t| t - now);
                PoolKeyView {
                    id: self.keys[i].id.clone(),
                    weight: self.keys[i].weight,
                    state: if left.is_some() { "benched" } else { "active" },
                    reason: st.reason,
                    benched_for_secs: left.map(|d| d.as_secs()),
                    calls: st.calls,
                    refusals: st.refusals,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamKeyConfig;

    fn pool() -> KeyPool {
        let config = UpstreamConfig {
            base_url: "http://x".into(),
            api_key: String::new(),
            keys: ["a", "b"]
                .map(|id| UpstreamKeyConfig {
                    id: id.into(),
                    key: format!("sk-{id}"),
                    weight: 1,
                })
                .to_vec(),
            bench_unauthorized: Duration::from_secs(60),
            bench_out_of_credits: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(1),
            max_response_bytes: 1024,
            max_polls_in_flight: 1,
        };
        KeyPool::new(&config).unwrap()
    }

    #[tokio::test]
    async fn benched_keys_are_skipped_then_tried_last() {
        let p = pool();
        assert!(p.refused(0, FailureKind::OutOfCredits));
        for _ in 0..20 {
            assert_eq!(p.pick(&[]).unwrap().0, 1);
        }
        assert!(p.refused(1, FailureKind::Unauthorized));
        // Both benched: the one whose bench ends first (b, 60 s) is tried.
        assert_eq!(p.pick(&[]).unwrap().0, 1);
        assert_eq!(p.pick(&[1]).unwrap().0, 0);
        assert!(p.pick(&[0, 1]).is_none());
        let v = p.view();
        assert_eq!(
            (v[0].state, v[0].reason),
            ("benched", Some("out_of_credits"))
        );
        assert!(!p.refused(0, FailureKind::ServerError));
    }
}
