//! The upstream key pool: a key answered with 402 is benched and the call goes to another key.

use reqwest::Method;
use serde_json::json;

use crate::support::{start_with, with_admin, UPSTREAM_KEY};

#[tokio::test]
async fn a_key_out_of_credits_is_benched_and_the_request_fails_over() {
    let env = start_with(|c| {
        with_admin(c);
        c.upstream.api_key = String::new();
        c.upstream.keys = vec![
            imagegate::config::UpstreamKeyConfig {
                id: "empty".into(),
                key: "sk-upstream-empty-account".into(),
                weight: 1000,
            },
            imagegate::config::UpstreamKeyConfig {
                id: "main".into(),
                key: UPSTREAM_KEY.into(),
                weight: 1,
            },
        ];
    })
    .await;
    let res = env
        .http
        .post(format!("{}/_sim/accounts", env.sim))
        .json(&json!({"sk-upstream-empty-account": false}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());

    // Whichever key it drew first, the request is served.
    for _ in 0..3 {
        let a = env
            .generate(json!({"model": "gpt-image-2-beta", "prompt": "x", "response_format": "url"}))
            .await;
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    let pool = env.admin(Method::GET, "/admin/upstream-keys", None).await;
    let keys = pool.body["keys"].as_array().unwrap();
    let empty = keys.iter().find(|k| k["id"] == "empty").unwrap();
    assert_eq!(empty["state"], "benched");
    assert_eq!(empty["reason"], "out_of_credits");
    assert_eq!(
        empty["refusals"],
        1,
        "benched after one refusal: {pool:?}",
        pool = pool.body
    );
    let main = keys.iter().find(|k| k["id"] == "main").unwrap();
    assert_eq!(main["state"], "active");
    // No secret in the admin output.
    let text = pool.body.to_string();
    assert!(
        !text.contains(UPSTREAM_KEY) && !text.contains("sk-upstream-empty"),
        "{text}"
    );
}
