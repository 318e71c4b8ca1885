//! Edges: the size rules at their limits, `n` against what is left of the images-per-minute
//! allowance, the SparkPix endpoint (and price) a generation with references reaches, and what
//! is billed when an upstream delivers fewer images than asked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::routing::post;
use axum::Json;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{on_path, start, start_with, with_admin, Answer};

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn gpt_image_2_sizes_at_their_limits() {
    let env = start().await;
    // `[sim:filebytes=1]`: the simulator makes a tiny one-colour picture of the size.
    let ask = |model: &str, size: &str| json!({"model": model, "prompt": "p [sim:filebytes=1]", "size": size, "response_format": "url"});
    // (size, accepted): each refused size breaks exactly one rule, by one step of 16 px.
    let cases = [
        ("3072x1024", true),  // exactly 3:1
        ("1024x3072", true),  // exactly 1:3
        ("3088x1024", false), // just over 3:1
        ("1024x3088", false), // just over 1:3
        ("1024x640", true),   // exactly 655,360 pixels
        ("1008x640", false),  // 645,120 pixels
        ("3840x2160", true),  // exactly 8,294,400 pixels, longest side 3840
        ("3840x2176", false), // 8,355,840 pixels
        ("3856x1296", false), // longest side 3856 (ratio and pixels within the rules)
        ("1040x1008", true),  // both sides multiples of 16
        ("1032x1008", false), // 1032 is not
    ];
    for model in ["gpt-image-2-all", "gpt-image-2-lite"] {
        for (size, accepted) in cases {
            let before = env.creates().await;
            let a = env.generate(ask(model, size)).await;
            if accepted {
                assert_eq!(a.status, 200, "{model} {size}: {}", a.body);
                assert_eq!(env.creates().await, before + 1, "{model} {size}");
            } else {
                assert_eq!(
                    (a.status, a.code(), a.param()),
                    (400, "invalid_value", "size"),
                    "{model} {size}: {}",
                    a.body
                );
                assert_eq!(
                    env.creates().await,
                    before,
                    "{model} {size}: refused before any upstream call"
                );
            }
        }
    }
}

#[tokio::test]
async fn n_up_to_the_images_left_this_minute() {
    let env = start_with(|c| c.keys[0].images_per_minute = Some(8)).await;
    let sparkpix =
        |n: u8| json!({"model": "sparkpix", "prompt": "x", "response_format": "url", "n": n});
    let a = env.generate(sparkpix(3)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(header(&a, "x-ratelimit-remaining-images"), "5");
    // One more than is left: refused whole, nothing taken from the allowance.
    let a = env.generate(sparkpix(6)).await;
    assert_eq!(
        (a.status, a.code()),
        (429, "rate_limit_exceeded"),
        "{}",
        a.body
    );
    assert_eq!(header(&a, "x-ratelimit-limit-images"), "8");
    assert_eq!(env.creates().await, 3);
    // Exactly what is left: admitted, and the allowance is empty.
    let a = env.generate(sparkpix(5)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["data"].as_array().unwrap().len(), 5);
    assert_eq!(header(&a, "x-ratelimit-remaining-images"), "0");
    let a = env.generate(sparkpix(1)).await;
    assert_eq!((a.status, a.code()), (429, "rate_limit_exceeded"));
    assert_eq!(env.creates().await, 8);
}

#[tokio::test]
async fn a_sparkpix_generation_with_references_is_an_edit_and_priced_as_one() {
    let env = start().await;
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "p", "response_format": "url"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(header(&a, "x-imagegate-cost-usd"), "0.01");

    let a = env
        .generate(
            json!({"model": "sparkpix", "prompt": "p", "response_format": "url",
                         "image_urls": ["https://example.com/a.png"]}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let reqs = env.upstream_requests().await;
    assert_eq!(on_path(&reqs, "/api/v1/images/generations-sync").len(), 1);
    let edits = on_path(&reqs, "/api/v1/images/edit");
    assert_eq!(edits.len(), 1, "{reqs:?}");
    assert_eq!(
        edits[0]["json"]["images"],
        json!(["https://example.com/a.png"])
    );
    assert_eq!(
        header(&a, "x-imagegate-cost-usd"),
        "0.013",
        "the edit endpoint's price"
    );
    assert_eq!(a.body["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_sparkpix_edit_with_two_references_bills_what_the_platform_charges() {
    let env = start().await;
    let a = env
        .generate(
            json!({"model": "sparkpix", "prompt": "p", "response_format": "url",
                         "image_urls": ["https://example.com/a.png", "https://example.com/b.png"]}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let delivered = a.body["data"].as_array().unwrap().len();
    // Either the caller gets the one image asked for and pays one edit, or the gateway books
    // what the platform billed for the images it made.
    let cost = header(&a, "x-imagegate-cost-usd");
    assert!(
        (delivered, cost) == (1, "0.013") || (delivered, cost) == (2, "0.026"),
        "{delivered} images for ${cost}"
    );
}

/// A stand-in upstream serving `app` on an ephemeral port; its base URL.
async fn scripted_upstream(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// The simulator draws its fault table's rate per call at random and applies a prompt directive
/// to every call of a request, so it cannot fail some calls of one fanned-out request for sure.
/// This upstream does: of the SparkPix generation calls it receives, every second one fails.
#[tokio::test]
async fn a_fanned_out_request_bills_only_the_calls_that_made_an_image() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let upstream = scripted_upstream(axum::Router::new().route(
        "/api/v1/images/generations-sync",
        post(move || {
            let i = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if i % 2 == 1 {
                    (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        Json(json!({"code": 500, "msg": "internal server error"})),
                    )
                } else {
                    (
                        axum::http::StatusCode::OK,
                        Json(json!({"code": 200, "msg": "success",
                                    "data": {"url": format!("https://files.example/{i}.jpeg")}})),
                    )
                }
            }
        }),
    ))
    .await;
    let env = start_with(|c| {
        with_admin(c);
        c.upstream.base_url = upstream;
        // The stand-in's result URLs are handed out as they are (`url` answers).
        c.results.allowed_hosts.push("files.example".to_owned());
        c.keys[0].total_budget_usd = Some(1.0);
    })
    .await;
    // Three calls: the first and third make an image, the second fails.
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "p", "n": 3, "response_format": "url"}))
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["data"].as_array().unwrap().len(), 2, "{}", a.body);
    assert_eq!(header(&a, "x-imagegate-cost-usd"), "0.02");
    let spend = env.admin(Method::GET, "/admin/spend", None).await;
    let key = &spend.body["keys"][0]["spend"];
    assert_eq!(key["month_spent_usd"], "0.02", "{}", spend.body);
    assert_eq!(key["reserved_usd"], "0", "the unbilled call is released");
    let usage = env
        .admin(Method::GET, "/admin/usage?group_by=key", None)
        .await;
    assert_eq!(usage.body["rows"][0]["cost_micros"], json!(20_000));
}

/// A gpt-image-2-lite stand-in that answers every task with one image, whatever `n` asked.
async fn lite_making_one_image() -> String {
    scripted_upstream(axum::Router::new().route(
        "/api/v1/images/generations",
        post(|Json(body): Json<Value>| async move {
            assert_eq!(body["model"], "gpt-image-2-lite");
            Json(json!({"code": 200, "msg": "success",
                        "data": {"taskId": "task-short", "state": "completed",
                                 "resultUrls": ["https://files.example/only.png"]}}))
        }),
    ))
    .await
}

/// The simulator always makes the `n` images asked for; this upstream makes fewer.
#[tokio::test]
async fn native_n_bills_the_images_made_when_fewer_than_asked() {
    let upstream = lite_making_one_image().await;
    let env = start_with(|c| {
        with_admin(c);
        c.upstream.base_url = upstream;
        c.results.allowed_hosts.push("files.example".to_owned());
    })
    .await;
    let a = env
        .generate(
            json!({"model": "gpt-image-2-lite", "prompt": "p", "n": 3, "response_format": "url"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["data"].as_array().unwrap().len(), 1, "{}", a.body);
    assert_eq!(header(&a, "x-imagegate-cost-usd"), "0.04");
    let spend = env.admin(Method::GET, "/admin/spend", None).await;
    let key = &spend.body["keys"][0]["spend"];
    assert_eq!(key["month_spent_usd"], "0.04", "{}", spend.body);
    assert_eq!(key["reserved_usd"], "0");
}
