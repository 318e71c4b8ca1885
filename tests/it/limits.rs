//! Rate limits, exact at their edges, with OpenAI's 429 headers.

use std::time::{Duration, Instant};

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

/// A cap of one request at a time towards sparkpix, waiting up to `queue_timeout` for room.
fn one_at_a_time(queue_timeout: Duration) -> impl FnOnce(&mut imagegate::config::Config) {
    move |c| {
        c.limits.models.insert(
            "sparkpix".into(),
            imagegate::config::ModelLimits {
                requests_per_minute: None,
                max_concurrent: Some(1),
                queue_timeout,
            },
        );
    }
}

#[tokio::test]
async fn upstream_model_cap_queues_briefly_then_refuses() {
    // Refused: the request holding the only slot never ends (the upstream never answers), so
    // the queued one times out however slow the machine is.
    let env = start_with(one_at_a_time(Duration::from_millis(300))).await;
    let holder = env
        .post_raw("/v1/images/generations")
        .json(&json!({"model": "sparkpix", "prompt": "x [sim:stuck]", "response_format": "url"}));
    let holder = tokio::spawn(async move { holder.send().await });
    env.until_upstream_called().await;
    let asked = Instant::now();
    let second = env.generate(sparkpix(1)).await;
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "waited its queue_timeout first: {:?}",
        asked.elapsed()
    );
    assert_eq!(
        (second.status, second.code()),
        (429, "rate_limit_exceeded"),
        "{}",
        second.body
    );
    assert!(second.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("sparkpix"));
    assert_eq!(
        env.upstream_stats().await["creates"],
        json!(1),
        "the refused request never reached the upstream"
    );
    holder.abort();
    drop(env);

    // Queued: a wait far longer than the slot is held, so the second always gets room, and only
    // after the first is done: the two upstream calls (0.3 s each, unscaled) run one after the
    // other.
    let env = start_with(one_at_a_time(Duration::from_secs(30))).await;
    let body = json!({"model": "sparkpix", "prompt": "x [sim:slow=0.3]", "response_format": "url"});
    let started = Instant::now();
    let (a, b) = tokio::join!(env.generate(body.clone()), env.generate(body));
    assert_eq!((a.status, b.status), (200, 200), "{} {}", a.body, b.body);
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "the second call waited for the first: {:?}",
        started.elapsed()
    );
    assert_eq!(env.upstream_stats().await["creates"], json!(2));
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

/// A key over its limit is told so before it uploads: a large edit sent with
/// `Expect: 100-continue` gets its 429 straight away, never the `100 Continue` that would have
/// made the client send 8 MiB only to be refused.
#[tokio::test]
async fn a_large_upload_over_a_limit_is_refused_before_its_body_is_sent() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let env = start_with(|c| c.keys[0].requests_per_minute = Some(1)).await;
    assert_eq!(env.generate(sparkpix(1)).await.status, 200);
    // The minute's one request is used: the next is refused, and the window is known empty.
    assert_eq!(env.generate(sparkpix(1)).await.status, 429);

    let addr = env.gateway.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/images/edits HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\n\
         content-type: multipart/form-data; boundary=b\r\ncontent-length: {}\r\n\
         expect: 100-continue\r\n\r\n",
        crate::support::KEY,
        8 << 20
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    sock.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert!(answer.contains("rate_limit_exceeded"), "{answer}");
}
