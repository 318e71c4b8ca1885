//! Routing through the real gateway: groups and aliases, exact cost headers, failover, the
//! circuit breaker, caller constraints and `GET /admin/upstreams` (simulator fault injection).

use std::time::Duration;

use imagegate::model::ModelId;
use serde_json::{json, Value};

use reqwest::Method;

use crate::support::{start, start_with, with_admin, Env, ADMIN_KEY, KEY};

/// POST creates the simulator received for `model` (polls are GETs).
async fn creates(env: &Env, model: &str) -> usize {
    env.upstream_requests()
        .await
        .iter()
        .filter(|r| r["method"] == "POST" && r["model"] == json!(model))
        .count()
}

fn header<'a>(a: &'a crate::support::Answer, name: &str) -> &'a str {
    a.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn admin_upstreams(env: &Env) -> Value {
    let res = env
        .http
        .get(format!("{}/admin/upstreams", env.gateway))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

async fn circuit(env: &Env, model: &str) -> String {
    let v = admin_upstreams(env).await;
    let entry = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["model"] == json!(model))
        .cloned()
        .unwrap();
    entry["circuit"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn cost_header_equals_the_price_table() {
    let env = start().await;
    let cases = [
        (
            json!({"model": "gpt-image-2-lite"}),
            "gpt-image-2-lite",
            "0.04",
        ),
        (
            json!({"model": "gpt-image-2-all", "size": "2048x2048", "quality": "high"}),
            "gpt-image-2-all",
            "0.1",
        ),
        (
            json!({"model": "gpt-image-2-all", "size": "1536x1024", "quality": "low", "n": 2}),
            "gpt-image-2-all",
            "0.01",
        ),
        (
            json!({"model": "gpt-image-2-beta", "n": 2}),
            "gpt-image-2-beta",
            "0.06",
        ),
        (json!({"model": "sparkpix", "n": 3}), "sparkpix", "0.03"),
        // Groups: the cheapest model that can do it.
        (
            json!({"model": "auto", "size": "1024x1024", "quality": "low"}),
            "gpt-image-2-all",
            "0.005",
        ),
        // No size: beta ($0.03) is cheapest; an explicit size only goes to models that make it
        // exactly, so lite ($0.04), not beta (nearest aspect ratio).
        (
            json!({"model": "gpt-image-1", "quality": "high"}),
            "gpt-image-2-beta",
            "0.03",
        ),
        (
            json!({"model": "gpt-image-1", "size": "1024x1024", "quality": "high"}),
            "gpt-image-2-lite",
            "0.04",
        ),
        (
            json!({"model": "dall-e-2", "size": "512x512"}),
            "sparkpix",
            "0.01",
        ),
    ];
    for (mut body, upstream, cost) in cases {
        body["prompt"] = json!("a lighthouse");
        body["response_format"] = json!("url");
        let a = env.generate(body.clone()).await;
        assert_eq!(a.status, 200, "{body}: {}", a.body);
        assert_eq!(header(&a, "x-imagegate-upstream"), upstream, "{body}");
        assert_eq!(header(&a, "x-imagegate-cost-usd"), cost, "{body}");
        assert_eq!(header(&a, "x-imagegate-attempts"), "1", "{body}");
    }
}

#[tokio::test]
async fn failover_to_the_next_model_without_paying_twice() {
    let env = start().await;
    env.set_faults(json!({"gpt-image-2-all": {"rate": 1.0, "kind": "500"}}))
        .await;
    let a = env
        .generate(json!({"model": "gpt-image-2", "prompt": "a kite", "quality": "low"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body["data"][0]["b64_json"].is_string());
    assert_eq!(header(&a, "x-imagegate-upstream"), "gpt-image-2-beta");
    assert_eq!(header(&a, "x-imagegate-attempts"), "2");
    assert_eq!(
        header(&a, "x-imagegate-cost-usd"),
        "0.03",
        "only the model that served bills"
    );
    assert_eq!(creates(&env, "gpt-image-2-all").await, 1);
    assert_eq!(creates(&env, "gpt-image-2-beta").await, 1);
    assert_eq!(creates(&env, "gpt-image-2-lite").await, 0);

    // A failed task (not a policy refusal) on beta fails over too.
    env.set_faults(json!({"gpt-image-2-all": {"rate": 1.0, "kind": "402"},
                          "gpt-image-2-beta": {"rate": 1.0, "kind": "fail"}}))
        .await;
    let a = env
        .generate(json!({"model": "gpt-image-2", "prompt": "a boat", "quality": "low"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(header(&a, "x-imagegate-upstream"), "gpt-image-2-lite");
    assert_eq!(header(&a, "x-imagegate-attempts"), "3");
}

#[tokio::test]
async fn no_failover_on_a_content_policy_rejection() {
    let env = start().await;
    let a = env
        .generate(json!({"model": "gpt-image-2", "prompt": "a cat [sim:policy]", "quality": "low"}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (400, "moderation_blocked"),
        "{}",
        a.body
    );
    assert_eq!(header(&a, "x-imagegate-attempts"), "1");
    assert_eq!(header(&a, "x-imagegate-upstream"), "gpt-image-2-all");
    let posts = env
        .upstream_requests()
        .await
        .iter()
        .filter(|r| r["method"] == "POST")
        .count();
    assert_eq!(posts, 1, "the prompt, not the model: no second model tried");
}

/// Polls `GET /admin/upstreams` (observable state, not a clock) until `model`'s circuit is
/// `state`; fails after 20 s.
async fn until_circuit(env: &Env, model: &str, state: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while circuit(env, model).await != state {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{model}'s circuit never became {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn circuit_opens_stops_sending_half_opens_and_recovers() {
    let breaker = |cooldown: Duration| {
        move |c: &mut imagegate::config::Config| {
            c.admin.key = Some(ADMIN_KEY.to_owned());
            c.routing.circuit.enabled = true;
            c.routing.circuit.consecutive_failures = 2;
            c.routing.circuit.cooldown = cooldown;
        }
    };
    let pinned = json!({"model": "gpt-image-2-all", "prompt": "a fox", "response_format": "url"});

    // Open: a cooldown no test run outlasts, so every check below sees the circuit open.
    let env = start_with(breaker(Duration::from_secs(600))).await;
    env.set_faults(json!({"gpt-image-2-all": {"rate": 1.0, "kind": "500"}}))
        .await;
    for _ in 0..2 {
        let a = env.generate(pinned.clone()).await;
        assert_eq!((a.status, a.code()), (502, "upstream_error"));
    }
    assert_eq!(circuit(&env, "gpt-image-2-all").await, "open");
    let a = env.generate(pinned.clone()).await;
    assert_eq!(
        (a.status, a.code()),
        (503, "no_healthy_upstream"),
        "{}",
        a.body
    );
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("gpt-image-2-all"));
    assert_eq!(
        header(&a, "retry-after"),
        "60",
        "the cooldown's time left, capped at 60 s"
    );
    // A group skips the open model without calling it.
    let a = env
        .generate(json!({"model": "gpt-image-2", "prompt": "a fox", "response_format": "url"}))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(header(&a, "x-imagegate-upstream"), "gpt-image-2-beta");
    assert_eq!(header(&a, "x-imagegate-attempts"), "1");
    assert_eq!(
        creates(&env, "gpt-image-2-all").await,
        2,
        "nothing sent while open"
    );
    assert_eq!(circuit(&env, "gpt-image-2-all").await, "open");
    drop(env);

    // Recovery: a short cooldown; the test waits on the circuit state, not on a clock.
    let env = start_with(breaker(Duration::from_millis(300))).await;
    env.set_faults(json!({"gpt-image-2-all": {"rate": 1.0, "kind": "500"}}))
        .await;
    for _ in 0..2 {
        let a = env.generate(pinned.clone()).await;
        assert_eq!((a.status, a.code()), (502, "upstream_error"));
    }
    assert_ne!(circuit(&env, "gpt-image-2-all").await, "closed");
    // The model recovers; after the cooldown one probe closes the circuit.
    env.set_faults(json!({})).await;
    until_circuit(&env, "gpt-image-2-all", "half_open").await;
    assert_eq!(creates(&env, "gpt-image-2-all").await, 2);
    let a = env.generate(pinned.clone()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(circuit(&env, "gpt-image-2-all").await, "closed");
    assert_eq!(creates(&env, "gpt-image-2-all").await, 3);

    let v = admin_upstreams(&env).await;
    let all = &v["data"][1];
    assert_eq!(all["model"], "gpt-image-2-all");
    assert_eq!(all["times_opened"], 1);
    assert_eq!(all["last_error"]["kind"], "server_error");
    assert!(all["error_ratio"].as_f64().unwrap() > 0.0);
    assert_eq!(all["capabilities"]["max_uploads"], 16);
}

#[tokio::test]
async fn latency_budget_excludes_the_slow_model() {
    let env = start_with(|c| {
        c.routing.latency_min_samples = 1;
        c.routing
            .groups
            .insert("pair".into(), vec![ModelId::All, ModelId::Lite]);
    })
    .await;
    // Observed traffic: gpt-image-2-all slow (1 s), gpt-image-2-lite fast.
    let body = |model: &str, prompt: &str| json!({"model": model, "prompt": prompt, "quality": "low", "response_format": "url"});
    let a = env
        .generate(body("gpt-image-2-all", "a [sim:slow=1]"))
        .await;
    assert_eq!(a.status, 200);
    let a = env.generate(body("gpt-image-2-lite", "a")).await;
    assert_eq!(a.status, 200);

    // No budget: the cheaper model.
    let a = env.generate(body("pair", "b")).await;
    assert_eq!(header(&a, "x-imagegate-upstream"), "gpt-image-2-all");
    // A 0.5 s budget: gpt-image-2-all's observed p90 (≥ 1 s) is over it.
    let res = env
        .post_raw("/v1/images/generations")
        .header("x-imagegate-max-latency-s", "0.5")
        .json(&body("pair", "c"))
        .send()
        .await
        .unwrap();
    let a = Env::read(res).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(header(&a, "x-imagegate-upstream"), "gpt-image-2-lite");
    assert_eq!(header(&a, "x-imagegate-cost-usd"), "0.04");
}

#[tokio::test]
async fn cost_ceiling_refuses_before_any_upstream_call() {
    let env = start().await;
    let res = env
        .post_raw("/v1/images/generations")
        .header("x-imagegate-max-cost-usd", "0.02")
        .json(&json!({"model": "gpt-image-2", "prompt": "p", "size": "2048x2048"}))
        .send()
        .await
        .unwrap();
    let a = Env::read(res).await;
    assert_eq!(
        (a.status, a.code()),
        (400, "no_eligible_model"),
        "{}",
        a.body
    );
    assert_eq!(a.param(), "x-imagegate-max-cost-usd");
    let msg = a.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("gpt-image-2-all costs $0.04"), "{msg}");
    assert!(env.upstream_requests().await.is_empty());
    // Within the ceiling, the request goes through.
    let res = env
        .post_raw("/v1/images/generations")
        .header("x-imagegate-max-cost-usd", "0.02")
        .json(
            &json!({"model": "auto", "prompt": "p", "size": "1024x1024", "response_format": "url"}),
        )
        .send()
        .await
        .unwrap();
    let a = Env::read(res).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(header(&a, "x-imagegate-upstream"), "sparkpix");
}

#[tokio::test]
async fn admin_upstreams_needs_the_admin_key() {
    let env = start_with(|c| c.admin.key = Some(ADMIN_KEY.to_owned())).await;
    for auth in [None, Some(KEY), Some("wrong-admin-key-000000")] {
        let mut rb = env.http.get(format!("{}/admin/upstreams", env.gateway));
        if let Some(k) = auth {
            rb = rb.bearer_auth(k);
        }
        let a = Env::read(rb.send().await.unwrap()).await;
        assert_eq!((a.status, a.code()), (401, "invalid_api_key"), "{auth:?}");
    }
    let v = admin_upstreams(&env).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 4);
    assert_eq!(v["data"][0]["circuit"], "closed");
    // The admin key does not open the image API.
    let res = env
        .http
        .post(format!("{}/v1/images/generations", env.gateway))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"prompt": "p"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn failover_books_only_the_model_that_served_and_keys_may_name_groups() {
    let env = start_with(|c| {
        with_admin(c);
        c.keys[0].models = Some(vec!["gpt-image-2".into()]);
    })
    .await;
    env.set_faults(json!({"gpt-image-2-all": {"rate": 1.0, "kind": "500"}}))
        .await;
    let a = env
        .generate(json!({"model": "gpt-image-2", "prompt": "p", "quality": "low", "response_format": "url"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(header(&a, "x-imagegate-upstream"), "gpt-image-2-beta");
    let spend = env.admin(Method::GET, "/admin/spend", None).await;
    let key = &spend.body["keys"][0];
    assert_eq!(key["spend"]["month_spent_usd"], "0.03", "{}", spend.body);
    assert_eq!(key["spend"]["reserved_usd"], "0");
    let usage = env
        .admin(
            Method::GET,
            "/admin/usage?group_by=model,served_model",
            None,
        )
        .await;
    let text = usage.body.to_string();
    assert!(
        text.contains("gpt-image-2-beta") && !text.contains("gpt-image-2-all"),
        "{text}"
    );

    // The key names the group only: a pinned model outside its list is refused.
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "p", "response_format": "url"}))
        .await;
    assert_eq!((a.status, a.code()), (403, "model_not_allowed"));
}
