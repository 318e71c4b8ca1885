//! Rate limits, exact at their edges, with OpenAI's 429 headers.

use serde_json::json;

use crate::support::start_with;

fn sparkpix(n: u8) -> serde_json::Value {
    json!({"model": "sparkpix", "prompt": "x", "response_format": "url", "n": n})
}

#[tokio::test]
async fn ratelimit_headers_appear_only_for_the_kinds_of_limit_a_key_has() {
    let env = start_with(|c| c.keys[0].images_per_minute = Some(10)).await;
    let a = env.generate(sparkpix(1)).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.headers["x-ratelimit-limit-images"], "10");
    assert!(a.headers.get("x-ratelimit-limit-requests").is_none());

    let unlimited = start_with(|_| {}).await;
    let a = unlimited.generate(sparkpix(1)).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let names: Vec<&str> = a.headers.keys().map(|k| k.as_str()).collect();
    assert!(
        !names.iter().any(|n| n.starts_with("x-ratelimit-")),
        "{names:?}"
    );
}

#[tokio::test]
async fn requests_per_minute_edge() {
    let env = start_with(|c| c.keys[0].requests_per_minute = Some(3)).await;
    for remaining in ["2", "1", "0"] {
        let a = env.generate(sparkpix(1)).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert_eq!(a.headers["x-ratelimit-limit-requests"], "3");
        assert_eq!(a.headers["x-ratelimit-remaining-requests"], remaining);
    }
    let a = env.generate(sparkpix(1)).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.code(), "rate_limit_exceeded");
    assert_eq!(a.headers["x-ratelimit-limit-requests"], "3");
    assert_eq!(a.headers["x-ratelimit-remaining-requests"], "0");
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    let ms: u64 = a.headers["retry-after-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms <= 20_000, "{ms}");
    assert!(a.headers.get("x-should-retry").is_none());
    // Only the three admitted requests reached the upstream.
    assert_eq!(env.upstream_stats().await["creates"], json!(3));
}

#[tokio::test]
async fn images_per_minute_counts_n() {
    let env = start_with(|c| c.keys[0].images_per_minute = Some(4)).await;
    let a = env.generate(sparkpix(3)).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.headers["x-ratelimit-remaining-images"], "1");
    let a = env.generate(sparkpix(2)).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.headers["x-ratelimit-limit-images"], "4");
    let a = env.generate(sparkpix(1)).await;
    assert_eq!(a.status, 200);
    let a = env.generate(sparkpix(5)).await;
    assert_eq!((a.status, a.param()), (400, "n"));
}

#[tokio::test]
async fn concurrency_limit_refuses_the_extra_request() {
    let env = start_with(|c| c.keys[0].max_concurrent = Some(1)).await;
    let slow = json!({"model": "sparkpix", "prompt": "x [sim:slow=1]", "response_format": "url"});
    let first = env.generate(slow);
    let second = async {
        env.until_upstream_called().await;
        env.generate(sparkpix(1)).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.status, 200);
    assert_eq!((second.status, second.code()), (429, "rate_limit_exceeded"));
    assert_eq!(env.generate(sparkpix(1)).await.status, 200);
}

#[tokio::test]
async fn upstream_model_cap_queues_briefly_then_refuses() {
    let env = start_with(|c| {
        c.limits.models.insert(
            "sparkpix".into(),
            imagegate::config::ModelLimits {
                requests_per_minute: None,
                max_concurrent: Some(1),
                queue_timeout: std::time::Duration::from_millis(200),
            },
        );
    })
    .await;
    let slow = json!({"model": "sparkpix", "prompt": "x [sim:slow=1]", "response_format": "url"});
    let first = env.generate(slow);
    let second = async {
        env.until_upstream_called().await;
        env.generate(sparkpix(1)).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.status, 200);
    assert_eq!(second.status, 429);
    assert!(second.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("sparkpix"));
    // A queued request that gets room in time goes through.
    let fast =
        json!({"model": "sparkpix", "prompt": "x [sim:slow=0.05]", "response_format": "url"});
    let (a, b) = tokio::join!(env.generate(fast.clone()), env.generate(fast));
    assert_eq!((a.status, b.status), (200, 200));
}

#[tokio::test]
async fn team_limit_is_shared_by_its_keys() {
    let env = start_with(|c| {
        c.teams.push(imagegate::config::TeamSpec {
            id: "design".into(),
            requests_per_minute: Some(2),
            ..Default::default()
        });
        c.keys[0].team = Some("design".into());
        c.keys.push(imagegate::config::KeySpec {
            id: "bob".into(),
            key: Some("sk-bob-12345678".into()),
            team: Some("design".into()),
            ..Default::default()
        });
    })
    .await;
    assert_eq!(env.generate(sparkpix(1)).await.status, 200);
    assert_eq!(
        env.generate_as("sk-bob-12345678", sparkpix(1)).await.status,
        200
    );
    let third = env.generate_as("sk-bob-12345678", sparkpix(1)).await;
    assert_eq!((third.status, third.code()), (429, "rate_limit_exceeded"));
    assert!(third.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("team `design`"));
    assert_eq!(third.headers["x-ratelimit-limit-requests"], "2");
}
