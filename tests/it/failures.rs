//! Every upstream failure class, mapped to an OpenAI error (driven by simulator fault injection).

use std::time::Duration;

use imagegate::model::ModelId;
use serde_json::json;

use crate::support::{start, start_with, UPSTREAM_KEY};

/// (model, prompt directive, expected status, expected code)
const CASES: &[(&str, &str, u16, &str)] = &[
    (
        "gpt-image-2-beta",
        "[sim:policy]",
        400,
        "moderation_blocked",
    ),
    (
        "gpt-image-2-lite",
        "[sim:policy]",
        400,
        "moderation_blocked",
    ),
    ("gpt-image-2-all", "[sim:policy]", 400, "moderation_blocked"),
    ("sparkpix", "[sim:policy]", 400, "moderation_blocked"),
    (
        "gpt-image-2-beta",
        "[sim:fail]",
        502,
        "upstream_task_failed",
    ),
    ("gpt-image-2-all", "[sim:401]", 502, "upstream_auth_failed"),
    ("sparkpix", "[sim:401]", 502, "upstream_auth_failed"),
    ("gpt-image-2-lite", "[sim:403]", 502, "upstream_auth_failed"),
    ("sparkpix", "[sim:429]", 503, "upstream_rate_limited"),
    (
        "gpt-image-2-lite",
        "[sim:402]",
        502,
        "upstream_insufficient_credits",
    ),
    (
        "gpt-image-2-beta",
        "[sim:code402]",
        502,
        "upstream_insufficient_credits",
    ),
    ("gpt-image-2-all", "[sim:500]", 502, "upstream_error"),
    ("sparkpix", "[sim:code500]", 502, "upstream_error"),
    (
        "gpt-image-2-lite",
        "[sim:malformed]",
        502,
        "upstream_outcome_unknown",
    ),
    (
        "gpt-image-2-all",
        "[sim:malformed]",
        502,
        "upstream_outcome_unknown",
    ),
    (
        "gpt-image-2-beta",
        "[sim:nofile]",
        502,
        "result_download_failed",
    ),
];

#[tokio::test]
async fn failure_classes_map_to_openai_errors() {
    // `[sim:nofile]` is tried again until `results.timeout`: keep it short here.
    let env = start_with(|c| c.results.timeout = Duration::from_secs(2)).await;
    for (model, directive, status, code) in CASES {
        let a = env
            .generate(json!({"model": model, "prompt": format!("a cat {directive}"), "size": "1024x1024"}))
            .await;
        assert_eq!(
            (a.status, a.code()),
            (*status, *code),
            "{model} {directive}: {}",
            a.body
        );
        let text = a.body.to_string();
        assert!(!text.contains(UPSTREAM_KEY), "{text}");
        if matches!(
            *code,
            "moderation_blocked" | "upstream_auth_failed" | "upstream_insufficient_credits"
        ) {
            assert_eq!(a.headers["x-should-retry"], "false", "{model} {directive}");
        }
    }
}

#[tokio::test]
async fn policy_message_is_kept_for_the_client() {
    let env = start().await;
    let a = env
        .generate(json!({"model": "gpt-image-2-beta", "prompt": "x [sim:policy]"}))
        .await;
    assert_eq!(a.body["error"]["type"], "image_generation_user_error");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Content policy violation"),
        "{}",
        a.body
    );
}

#[tokio::test]
async fn stuck_task_hits_the_deadline_and_the_answer_names_its_job() {
    let env = start_with(|c| {
        c.models.get_mut(ModelId::Beta).deadline = Duration::from_millis(1500);
        c.models.get_mut(ModelId::Beta).poll_interval = Duration::from_secs(1);
    })
    .await;
    let a = env
        .generate(json!({"model": "gpt-image-2-beta", "prompt": "x [sim:stuck]"}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (504, "upstream_timeout"),
        "{}",
        a.body
    );
    let reqs = env.upstream_requests().await;
    let stats = env.upstream_stats().await;
    let polls = stats["polls"].as_u64().unwrap();
    assert!(
        (1..=3).contains(&polls),
        "polls follow the interval: {stats}"
    );
    // The work goes on as a job, which the answer names: the client must not create it again.
    let job = a.headers["x-imagegate-job-id"].to_str().unwrap();
    assert!(job.starts_with("imgjob_"), "{job}");
    assert_eq!(a.headers["x-should-retry"], "false");
    assert!(
        a.body["error"]["message"].as_str().unwrap().contains(job),
        "{}",
        a.body
    );
    assert!(!reqs.is_empty());
}

#[tokio::test]
async fn stuck_sync_call_hits_the_deadline() {
    let env =
        start_with(|c| c.models.get_mut(ModelId::SparkPix).deadline = Duration::from_secs(1)).await;
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "x [sim:stuck]"}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (504, "upstream_timeout"),
        "{}",
        a.body
    );
}

#[tokio::test]
async fn transient_poll_failures_do_not_lose_the_task() {
    let env =
        start_with(|c| c.models.get_mut(ModelId::Beta).deadline = Duration::from_secs(20)).await;
    let a = env
        .generate(json!({"model": "gpt-image-2-beta", "prompt": "x [sim:pollfail=2]"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(env.upstream_stats().await["polls"].as_u64().unwrap() >= 3);
}

#[tokio::test]
async fn per_model_fault_rate() {
    let env = start().await;
    env.set_faults(json!({"sparkpix-image": {"rate": 1.0, "kind": "500"}}))
        .await;
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "p"}))
        .await;
    assert_eq!((a.status, a.code()), (502, "upstream_error"));
    let a = env
        .generate(json!({"model": "gpt-image-2-lite", "prompt": "p"}))
        .await;
    assert_eq!(a.status, 200, "other models unaffected: {}", a.body);
}

#[tokio::test]
async fn unreachable_upstream_and_disallowed_result_hosts() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let env = start_with(|c| c.upstream.base_url = format!("http://{dead_addr}")).await;
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "p"}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (502, "upstream_unavailable"),
        "{}",
        a.body
    );

    let env = start_with(|c| c.results.allowed_hosts = vec!["r2.apimodels.app".to_owned()]).await;
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "p"}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (502, "result_download_failed"),
        "{}",
        a.body
    );
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("allowed_hosts"));
    assert_eq!(
        env.upstream_stats().await["downloads"],
        0,
        "nothing fetched from a host off the list"
    );
}

#[tokio::test]
async fn result_download_is_capped() {
    let env = start_with(|c| {
        c.results.max_bytes = 1024;
        c.results.timeout = Duration::from_secs(2);
    })
    .await;
    let a = env
        .generate(json!({"model": "gpt-image-2-lite", "prompt": "p", "size": "1024x1024"}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (502, "result_download_failed"),
        "{}",
        a.body
    );
    // Too large is too large every time: fetched once, not again until `results.timeout`.
    assert_eq!(env.upstream_stats().await["downloads"], 1);
}
