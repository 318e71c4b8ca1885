//! Shutdown drains in-flight requests; many async requests wait at once.

use std::time::Duration;

use imagegate::model::ModelId;
use serde_json::json;

use crate::support::{start, start_scaled, start_with};

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let env = start_with(|c| c.server.drain_timeout = Duration::from_secs(30)).await;
    let request = env.post_raw("/v1/images/generations");
    // A sync call the simulator holds for 1.5 s (unscaled).
    let in_flight = tokio::spawn(async move {
        request
            .json(&json!({"model": "gpt-image-2-all", "prompt": "p [sim:slow=1.5]", "size": "1024x1024"}))
            .send()
            .await
    });
    // Shut down once the upstream has the request (polling the simulator, no fixed sleep).
    env.until_upstream_called().await;
    let gateway = env.gateway.clone();
    env.shutdown().await.unwrap();
    let res = in_flight.await.unwrap().unwrap();
    let a = crate::support::Env::read(res).await;
    assert_eq!(a.status, 200, "completed during the drain: {}", a.body);
    assert!(
        reqwest::get(format!("{gateway}/healthz")).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn drain_timeout_bounds_shutdown() {
    let drain = Duration::from_millis(500);
    let env = start_with(|c| c.server.drain_timeout = drain).await;
    let request = env.post_raw("/v1/images/generations");
    // A sync call that never answers: the drain waits for it, up to its timeout.
    let stuck = tokio::spawn(async move {
        request
            .json(&json!({"model": "sparkpix", "prompt": "p [sim:stuck]"}))
            .send()
            .await
    });
    env.until_upstream_called().await;
    // Returns once the drain timeout is over, although the request would wait for the
    // model's deadline.
    let stopping = std::time::Instant::now();
    env.shutdown().await.unwrap();
    let took = stopping.elapsed();
    assert!(took >= drain, "waited the drain timeout first: {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "did not wait for the stuck request: {took:?}"
    );
    stuck.abort();
}

#[tokio::test]
async fn an_async_task_does_not_hold_the_drain_and_its_caller_is_told_at_once() {
    let drain = Duration::from_secs(30);
    let env = start_with(|c| c.server.drain_timeout = drain).await;
    let request = env.post_raw("/v1/images/generations");
    let waiting = tokio::spawn(async move {
        request
            .json(&json!({"model": "gpt-image-2-beta", "prompt": "p [sim:stuck]"}))
            .send()
            .await
    });
    // The task is with the platform once its first poll went out.
    for _ in 0..500 {
        if env.upstream_stats().await["polls"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopping = std::time::Instant::now();
    env.shutdown().await.unwrap();
    assert!(stopping.elapsed() < drain / 2, "{:?}", stopping.elapsed());
    let a = crate::support::Env::read(waiting.await.unwrap().unwrap()).await;
    assert_eq!((a.status, a.code()), (503, "shutting_down"), "{}", a.body);
    assert!(a.headers.get("x-imagegate-job-id").is_some());
}

#[tokio::test]
async fn hundreds_of_async_requests_wait_at_once() {
    // beta: 15–40 s scaled by 0.02 → 0.3–0.8 s per task; all 300 wait concurrently.
    let env = start_scaled(0.02, |c| {
        c.models.get_mut(ModelId::Beta).first_poll_delay = Duration::from_millis(500);
        c.models.get_mut(ModelId::Beta).poll_interval = Duration::from_secs(1);
    })
    .await;
    let calls = (0..300).map(|i| {
        env.generate(json!({"model": "gpt-image-2-beta", "prompt": format!("p{i}"), "response_format": "url"}))
    });
    let answers = futures_util::future::join_all(calls).await;
    assert!(
        answers.iter().all(|a| a.status == 200),
        "every request answered"
    );
    let stats = env.upstream_stats().await;
    assert_eq!(stats["creates"], 300, "{stats}");
    assert!(
        stats["polls"].as_u64().unwrap() <= 300 * 2,
        "polls bounded by the interval: {stats}"
    );
}

#[tokio::test]
async fn concurrent_b64_requests_all_answer() {
    let env = start().await;
    let calls = (0..40)
        .map(|_| env.generate(json!({"model": "sparkpix", "prompt": "p", "size": "512x512"})));
    let answers = futures_util::future::join_all(calls).await;
    assert!(answers.iter().all(|a| a.status == 200));
}
