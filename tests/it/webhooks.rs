//! Signed webhooks to clients: delivered at least once, retried with the same `webhook-id`, each
//! attempt signed per the Standard Webhooks spec; targets pass the URL policy.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use imagegate::demo::DEMO_WEBHOOK_SECRET;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::net::TcpListener;

use crate::support::*;

/// One POST the receiver got: its headers and body.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
}

/// A webhook receiver on an ephemeral port that answers 500 to its first `fail` deliveries.
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Received>>>,
}

pub async fn receiver(fail: usize) -> Receiver {
    receiver_slow(fail, Duration::ZERO).await
}

/// [`receiver`] answering each delivery only after `pause` (a slow endpoint).
pub async fn receiver_slow(fail: usize, pause: Duration) -> Receiver {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: String| {
            let sink = sink.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let n = {
                    let mut got = sink.lock().unwrap();
                    got.push(Received {
                        id: h("webhook-id"),
                        timestamp: h("webhook-timestamp"),
                        signature: h("webhook-signature"),
                        body,
                    });
                    got.len()
                };
                tokio::time::sleep(pause).await;
                if n <= fail {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver {
        url: format!("http://{addr}/hook"),
        got,
    }
}

impl Receiver {
    /// Waits (on what arrived) until `n` deliveries came.
    pub async fn until(&self, n: usize) -> Vec<Received> {
        for _ in 0..1500 {
            let got = self.got.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{n} webhook deliveries never came: {:?}",
            self.got.lock().unwrap()
        );
    }
}

/// Verifies a delivery as the spec says, written from the spec rather than the gateway's code:
/// HMAC-SHA256 over `{id}.{timestamp}.{body}` keyed by the base64 after `whsec_`.
pub fn verify(secret: &str, r: &Received) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{}", r.id, r.timestamp, r.body).as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    r.signature
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

#[tokio::test]
async fn a_job_end_is_posted_signed_and_retried_with_the_same_id() {
    let hook = receiver(2).await;
    let env = start_with(|c| {
        with_admin(c);
        c.jobs.webhook_retry_base = Duration::from_millis(50);
    })
    .await;
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "a gull", "callback_url": hook.url}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let job = a.headers["x-imagegate-job-id"].to_str().unwrap().to_owned();
    let got = hook.until(3).await;
    // Three attempts (two refused), one webhook: the same id, each signed.
    assert!(got
        .iter()
        .all(|r| r.id == got[0].id && r.id.starts_with("msg_")));
    assert!(
        got.iter().all(|r| verify(DEMO_WEBHOOK_SECRET, r)),
        "{got:?}"
    );
    assert!(!verify(
        "whsec_d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==",
        &got[0]
    ));
    let body: Value = serde_json::from_str(&got[2].body).unwrap();
    assert_eq!(body["type"], "image.job.completed");
    assert_eq!(body["data"]["id"], job.as_str());
    assert_eq!(body["data"]["status"], "completed");
    assert_eq!(
        body["data"]["url"],
        format!("/v1/images/jobs/{job}").as_str()
    );
    assert!(!got[2].body.contains("b64_json"), "never image bytes");
    // The delivery is visible on the job.
    for _ in 0..500 {
        let j = env
            .admin(Method::GET, &format!("/admin/jobs/{job}"), None)
            .await;
        if j.body["webhooks"][0]["state"] == "delivered" {
            assert_eq!(j.body["webhooks"][0]["attempts"], 3, "{}", j.body);
            // The callback URL never went upstream.
            let reqs = env.upstream_requests().await;
            assert!(!serde_json::to_string(&reqs)
                .unwrap()
                .contains("callback_url"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the delivery was never recorded as delivered");
}

#[tokio::test]
async fn a_failed_job_is_posted_too_and_bad_targets_are_refused() {
    let hook = receiver(0).await;
    let env = start().await;
    let a = env
        .generate(
            json!({"model": "sparkpix", "prompt": "x [sim:policy]", "callback_url": hook.url}),
        )
        .await;
    assert_eq!(a.code(), "moderation_blocked");
    let got = hook.until(1).await;
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["type"], "image.job.failed");
    assert_eq!(body["data"]["status"], "failed");
    // A link-local target (cloud metadata) is refused before anything is spent.
    let creates = env.creates().await;
    for url in [
        "http://169.254.169.254/latest",
        "not a url",
        "ftp://example.com/x",
    ] {
        let r = env
            .generate(json!({"model": "sparkpix", "prompt": "p", "callback_url": url}))
            .await;
        assert_eq!(
            (r.status, r.param()),
            (400, "callback_url"),
            "{url}: {}",
            r.body
        );
    }
    assert_eq!(env.creates().await, creates);
}
