//! `POST /v1/images/quote` (where a request would go and what it would cost, nothing sent) and
//! `GET /v1/me` (the calling key's limits, budgets, spend and usage).

use reqwest::multipart::Form;
use serde_json::json;

use crate::support::{png_part, start_with, Answer, Env, KEY};

async fn quote(env: &Env, body: serde_json::Value) -> Answer {
    env.post("/v1/images/quote", body).await
}

#[tokio::test]
async fn a_quote_names_the_model_and_the_price_a_request_then_pays() {
    let env = start_with(|c| c.keys[0].requests_per_minute = Some(1)).await;
    let body = json!({"model": "auto", "prompt": "a red kite", "size": "1024x1024", "n": 2});
    // Quotes take no limit: the key's one request a minute is still there after three.
    for _ in 0..3 {
        let q = quote(&env, body.clone()).await;
        assert_eq!(q.status, 200, "{}", q.body);
    }
    let q = quote(&env, body.clone()).await;
    assert_eq!(q.body["object"], "image.quote");
    assert_eq!(
        (q.body["operation"].as_str(), q.body["n"].as_u64()),
        (Some("generate"), Some(2))
    );
    assert!(q.body["fallbacks"].is_array(), "{}", q.body);
    assert_eq!(env.creates().await, 0, "a quote sends nothing upstream");

    let a = env.generate(body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.headers["x-imagegate-upstream"],
        q.body["served_model"].as_str().unwrap()
    );
    assert_eq!(
        a.headers["x-imagegate-cost-usd"],
        q.body["cost_usd"].as_str().unwrap()
    );
}

#[tokio::test]
async fn a_quote_is_refused_like_the_request() {
    let env = start_with(|c| c.keys[0].models = Some(vec!["sparkpix".to_owned()])).await;
    let q = quote(&env, json!({"model": "gpt-image-2-lite", "prompt": "p"})).await;
    assert_eq!(
        (q.status, q.code()),
        (403, "model_not_allowed"),
        "{}",
        q.body
    );
    let q = quote(&env, json!({"model": "sparkpix", "prompt": "p", "n": 0})).await;
    assert_eq!((q.status, q.param()), (400, "n"), "{}", q.body);
    assert_eq!(env.creates().await, 0);
}

#[tokio::test]
async fn an_edit_is_quoted_from_its_multipart_body() {
    let env = start_with(|_| {}).await;
    let form = Form::new()
        .text("model", "gpt-image-2-all")
        .text("prompt", "put a hat on it")
        .part("image[]", png_part("a.png"))
        .part("image[]", png_part("b.png"));
    let res = env
        .post_raw("/v1/images/quote")
        .multipart(form)
        .send()
        .await
        .unwrap();
    let q = Env::read(res).await;
    assert_eq!(q.status, 200, "{}", q.body);
    assert_eq!(q.body["operation"], "edit");
    assert_eq!(q.body["served_model"], "gpt-image-2-all");
    assert_eq!(env.creates().await, 0);
}

#[tokio::test]
async fn me_shows_the_keys_limits_budget_spend_and_usage_and_no_secret() {
    let env = start_with(|c| {
        c.keys[0].requests_per_minute = Some(30);
        c.keys[0].monthly_budget_usd = Some(5.0);
        c.keys[0].webhook_secret = Some("whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=".to_owned());
    })
    .await;
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "p", "response_format": "url"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let cost = a.headers["x-imagegate-cost-usd"]
        .to_str()
        .unwrap()
        .to_owned();

    let me = env.get("/v1/me").await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.body["limits"]["requests_per_minute"], 30);
    assert_eq!(me.body["budget"]["monthly_usd"], 5.0);
    assert_eq!(
        me.body["spend"]["month_spent_usd"],
        cost.as_str(),
        "{}",
        me.body
    );
    let usage = me.body["usage"].to_string();
    assert!(usage.contains("sparkpix"), "{usage}");
    let text = me.body.to_string();
    for secret in [KEY, "whsec_", "key_sha256"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}
