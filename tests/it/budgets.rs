//! Budgets: reservations are atomic across concurrent requests, and the ledger sums exactly.

use reqwest::Method;
use serde_json::json;

use crate::support::{start_with, with_admin, KEY};

#[tokio::test]
async fn fifty_concurrent_requests_against_a_budget_for_ten() {
    // SparkPix costs $0.010 a generation: $0.10 buys exactly ten.
    let env = start_with(|c| {
        with_admin(c);
        c.keys[0].monthly_budget_usd = Some(0.10);
    })
    .await;
    let body =
        json!({"model": "sparkpix", "prompt": "a cat [sim:slow=0.3]", "response_format": "url"});
    let answers = futures_util::future::join_all((0..50).map(|_| env.generate(body.clone()))).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let refused: Vec<_> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!((ok, refused.len()), (10, 40));
    for a in &refused {
        assert_eq!(a.code(), "insufficient_quota");
        assert_eq!(a.body["error"]["type"], "insufficient_quota");
        assert_eq!(a.headers["x-should-retry"], "false");
    }
    // Refused requests never reached the upstream.
    assert_eq!(env.upstream_stats().await["creates"], json!(10));

    let usage = env
        .admin(Method::GET, "/admin/usage?group_by=key", None)
        .await;
    assert_eq!(usage.status, 200, "{:?}", usage.body);
    let row = &usage.body["rows"][0];
    assert_eq!(row["key"], "demo");
    assert_eq!(
        (row["requests"].clone(), row["succeeded"].clone()),
        (json!(50), json!(10))
    );
    assert_eq!(row["cost_micros"], json!(100_000));
    assert_eq!(usage.body["total_cost_usd"], "0.1");

    let spend = env.admin(Method::GET, "/admin/spend", None).await;
    let key = &spend.body["keys"][0];
    assert_eq!(key["spend"]["month_spent_usd"], "0.1");
    assert_eq!(key["spend"]["reserved_usd"], "0");
    // The next one is refused too, and a failed generation is not billed.
    assert_eq!(env.generate(body).await.code(), "insufficient_quota");
    let _ = KEY;
}

#[tokio::test]
async fn failures_release_the_reservation_and_are_not_billed() {
    let env = start_with(|c| {
        with_admin(c);
        c.keys[0].total_budget_usd = Some(0.01);
    })
    .await;
    let failed = env
        .generate(json!({"model": "sparkpix", "prompt": "x [sim:500]", "response_format": "url"}))
        .await;
    assert_eq!(failed.status, 502);
    let ok = env
        .generate(json!({"model": "sparkpix", "prompt": "x", "response_format": "url"}))
        .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let again = env
        .generate(json!({"model": "sparkpix", "prompt": "x", "response_format": "url"}))
        .await;
    assert_eq!(again.code(), "insufficient_quota");

    let csv = env
        .http
        .get(format!(
            "{}/admin/usage?group_by=key,served_model&format=csv",
            env.gateway
        ))
        .bearer_auth(crate::support::ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        csv,
        "key,served_model,requests,succeeded,images,cost_usd,input_tokens,output_tokens\ndemo,,2,0,0,0,0,0\ndemo,sparkpix,1,1,1,0.01,0,0\n"
    );
}

#[tokio::test]
async fn team_budget_applies_across_its_keys() {
    let env = start_with(|c| {
        with_admin(c);
        c.teams.push(imagegate::config::TeamSpec {
            id: "design".into(),
            total_budget_usd: Some(0.01),
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
    let body = json!({"model": "sparkpix", "prompt": "x", "response_format": "url"});
    assert_eq!(env.generate(body.clone()).await.status, 200);
    let bob = env.generate_as("sk-bob-12345678", body).await;
    assert_eq!(bob.code(), "insufficient_quota");
    assert!(bob.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("team `design`"));
}

#[tokio::test]
async fn a_client_that_hangs_up_is_still_charged() {
    let env = start_with(|c| {
        with_admin(c);
        c.keys[0].total_budget_usd = Some(0.01);
    })
    .await;
    let impatient = env
        .post_raw("/v1/images/generations")
        .timeout(std::time::Duration::from_millis(300))
        .json(&json!({"model": "sparkpix", "prompt": "x [sim:slow=1]", "response_format": "url"}))
        .send()
        .await;
    assert!(impatient.is_err(), "the client gave up first");
    // The upstream may bill the generation: the budget counts it whether the gateway finished
    // the request (200) or dropped it with the connection (499).
    let mut rows = serde_json::Value::Null;
    for _ in 0..300 {
        let usage = env
            .admin(Method::GET, "/admin/usage?group_by=key", None)
            .await;
        if usage.body["rows"][0]["requests"] == json!(1) {
            rows = usage.body["rows"].clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(rows[0]["cost_micros"], json!(10_000), "{rows}");
    let next = env
        .generate(json!({"model": "sparkpix", "prompt": "x", "response_format": "url"}))
        .await;
    assert_eq!(next.code(), "insufficient_quota");
}
