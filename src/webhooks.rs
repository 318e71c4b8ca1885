//! Signed webhooks to clients: when a job ends, its object (status, cost, model, the job's URL —
//! never image bytes) is POSTed to the request's `callback_url` or the key's `webhook_url`,
//! signed per the Standard Webhooks spec (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256>`) with the key's `whsec_…` secret.
//!
//! Delivery is an outbox in the store, written in the same transaction as the job's end, so a
//! crash never loses one: it is **at least once** — a receiver may see a `webhook-id` twice and
//! should deduplicate by it. Every attempt is signed afresh with the key's current secret; a
//! failed one is tried again with backoff (`[jobs] webhook_retry_base`, doubling, at most an
//! hour apart) until `[jobs] webhook_give_up` after the job's end. Targets pass the URL policy
//! (`[urls]`), checked on the resolved address at each attempt.
//!
//! The same loop forgets jobs finished more than `[jobs] result_ttl` ago.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::error::ApiError;
use crate::jobs::job_object;
use crate::metrics::WebhookResult;
use crate::state::AppState;
use crate::store::jobs::{now_ms, Webhook};
use crate::store::Op;

/// Most deliveries attempted at once.
const BATCH: u32 = 32;
/// How often the outbox is read when nothing wakes the deliverer.
const TICK: Duration = Duration::from_millis(250);
/// How often finished jobs past `[jobs] result_ttl` are forgotten.
const PURGE_EVERY: Duration = Duration::from_secs(600);
/// One attempt's limit.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// A new `whsec_…` secret: 24 random bytes, base64.
pub fn new_secret() -> Result<String, ApiError> {
    let mut bytes = [0u8; 24];
    getrandom::getrandom(&mut bytes)
        .map_err(|_| ApiError::internal("The gateway could not generate a secret."))?;
    Ok(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, the key being the base64 after
/// `whsec_`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    Some(format!("v1,{sig}"))
}

/// A `callback_url` or `webhook_url` a client gave: an absolute URL the URL policy allows.
pub fn check_target(state: &AppState, param: &str, url: &str) -> Result<(), ApiError> {
    let refused = match reqwest::Url::parse(url) {
        Ok(u) => state.upstream.urls.check(&u).err(),
        Err(_) => Some("not a URL".to_owned()),
    };
    match refused {
        Some(why) => Err(ApiError::invalid(
            param,
            format!("The webhook URL `{url}` is refused: {why}."),
        )),
        None => Ok(()),
    }
}

/// Delivers due webhooks until `stop` resolves.
pub async fn deliver(state: Arc<AppState>, stop: impl std::future::Future<Output = ()>) {
    let http = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(state.upstream.urls.resolver())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks: no HTTP client; deliveries wait for a restart");
            return;
        }
    };
    tokio::pin!(stop);
    let mut purged = tokio::time::Instant::now() - PURGE_EVERY;
    loop {
        if purged.elapsed() >= PURGE_EVERY {
            purged = tokio::time::Instant::now();
            purge(&state).await;
        }
        let due = state
            .store()
            .due_webhooks(now_ms(), BATCH)
            .await
            .unwrap_or_default();
        let busy = !due.is_empty();
        let attempts = due.into_iter().map(|w| attempt(&state, &http, w));
        let all = futures_util::future::join_all(attempts);
        tokio::select! {
            _ = all => {}
            () = &mut stop => return,
        }
        if !busy {
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = &mut stop => return,
            }
        }
    }
}

/// Forgets jobs finished more than `[jobs] result_ttl` ago.
async fn purge(state: &AppState) {
    let ttl = i64::try_from(state.config.jobs.result_ttl.as_millis()).unwrap_or(i64::MAX);
    let before = now_ms().saturating_sub(ttl);
    match state.store().purge(before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(jobs = n, "forgot jobs past [jobs] result_ttl"),
        Err(e) => tracing::warn!(error = %e, "could not purge old jobs"),
    }
}

/// One attempt: sign, POST, record.
async fn attempt(state: &AppState, http: &reqwest::Client, w: Webhook) {
    let (delivered, status, error) = match send(state, http, &w).await {
        Ok(status) if (200..300).contains(&status) => (true, Some(status), None),
        Ok(status) => (false, Some(status), Some(format!("HTTP {status}"))),
        Err(e) => (false, None, Some(e)),
    };
    if delivered {
        crate::failpoint::hit("after_webhook_delivered");
    }
    let config = &state.config.jobs;
    let next = (!delivered)
        .then(|| {
            let pause = config
                .webhook_retry_base
                .saturating_mul(1u32 << w.attempts.min(20))
                .min(Duration::from_secs(3600));
            now_ms() + i64::try_from(pause.as_millis()).unwrap_or(i64::MAX)
        })
        .filter(|at| {
            *at - w.created_ms
                <= i64::try_from(config.webhook_give_up.as_millis()).unwrap_or(i64::MAX)
        });
    let result = if delivered {
        WebhookResult::Delivered
    } else if next.is_some() {
        WebhookResult::Retrying
    } else {
        WebhookResult::GaveUp
    };
    state.metrics.webhook(result);
    if !delivered {
        tracing::warn!(webhook_id = %w.id, job_id = %w.job_id, attempts = w.attempts + 1, error = error.as_deref().unwrap_or(""), result = result.as_str(), "webhook delivery failed");
    }
    let write = state.store().write(vec![Op::WebhookAttempted {
        id: w.id.clone(),
        status,
        error,
        delivered,
        next_ms: next,
    }]);
    if let Err(e) = write.await {
        tracing::error!(webhook_id = %w.id, error = %e, "could not record a webhook attempt");
    }
}

async fn send(state: &AppState, http: &reqwest::Client, w: &Webhook) -> Result<u16, String> {
    let job = state
        .store()
        .job(w.job_id.clone())
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the job is gone")?;
    let secret = state
        .keys
        .webhook_secret(&w.key_id)
        .await
        .ok_or("the key has no webhook secret")?;
    let mut data = job_object(&job, None);
    data["url"] = json!(format!("/v1/images/jobs/{}", job.id));
    let kind = match job.state.as_str() {
        "completed" => "image.job.completed",
        _ => "image.job.failed",
    };
    let timestamp = now_ms() / 1000;
    let body = json!({ "type": kind, "timestamp": timestamp, "data": data }).to_string();
    let signature = sign(&secret, &w.id, timestamp, &body)
        .ok_or("the key's webhook secret is not valid base64")?;
    let res = http
        .post(&w.url)
        .header("content-type", "application/json")
        .header("webhook-id", &w.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| {
            let mut s = e.to_string();
            if let Some(u) = e.url() {
                s = s.replace(u.as_str(), "<callback>");
            }
            s
        })?;
    Ok(res.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks spec's own example.
    #[test]
    fn signs_as_the_standard_webhooks_example() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        let sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn new_secrets_are_whsec_and_sign() {
        let s = new_secret().unwrap();
        assert!(s.starts_with("whsec_"));
        assert!(sign(&s, "msg_1", 1, "{}").is_some());
    }
}
