//! Exact routing and team series after known requests: a failover, a rate-limit refusal, a
//! budget refusal, cost by team/key/model from the price table, budget use, circuit state.

use serde_json::json;

use crate::metrics::{routed_and_limited_workload, with_team, Scrape};
use crate::support::start_with;

#[tokio::test]
async fn failover_refusal_cost_budget_and_circuit_series_are_exact() {
    let env = start_with(|c| {
        with_team(c);
        c.routing.circuit.enabled = true;
        c.routing.circuit.consecutive_failures = 1;
        c.routing.circuit.cooldown = std::time::Duration::from_secs(600);
    })
    .await;
    routed_and_limited_workload(&env).await;

    let s = Scrape::of(&env).await;
    let failover = [
        ("from", "gpt-image-2-all"),
        ("to", "gpt-image-2-beta"),
        ("reason", "server_error"),
    ];
    assert_eq!(s.value("imagegate_failovers_total", &failover), 1.0);
    let refused = [
        ("team", "design"),
        ("key_id", "bob"),
        ("reason", "request_rate"),
    ];
    assert_eq!(s.value("imagegate_refusals_total", &refused), 1.0);
    // Only the model that served bills: $0.03 on beta for the demo key, $0.01 for bob.
    let cost = |key: &str, model: &str| {
        s.value(
            "imagegate_cost_usd_total",
            &[("team", "design"), ("key_id", key), ("model", model)],
        )
    };
    assert_eq!(cost("demo", "gpt-image-2-beta"), 0.03);
    assert_eq!(cost("bob", "sparkpix"), 0.01);
    assert!(s
        .get(
            "imagegate_cost_usd_total",
            &[
                ("team", "design"),
                ("key_id", "demo"),
                ("model", "gpt-image-2-all")
            ]
        )
        .is_none());
    let used = s.value("imagegate_budget_used_ratio", &[("team", "design")]);
    assert!((used - 0.04).abs() < 1e-9, "{used}");
    // One failure opened gpt-image-2-all's circuit (threshold 1); the others stay closed.
    assert_eq!(
        s.value("imagegate_circuit_state", &[("model", "gpt-image-2-all")]),
        2.0
    );
    assert_eq!(
        s.value("imagegate_circuit_state", &[("model", "gpt-image-2-beta")]),
        0.0
    );

    // An exhausted budget is a budget refusal.
    let a = env
        .generate(
            json!({"model": "gpt-image-2-lite", "prompt": "p", "n": 10, "response_format": "url"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = env
        .generate(
            json!({"model": "gpt-image-2-lite", "prompt": "p", "n": 10, "response_format": "url"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = env
        .generate(
            json!({"model": "gpt-image-2-lite", "prompt": "p", "n": 10, "response_format": "url"}),
        )
        .await;
    assert_eq!(
        a.code(),
        "insufficient_quota",
        "$0.84 spent, $0.40 more does not fit $1"
    );
    let s = Scrape::of(&env).await;
    let budget = [("team", "design"), ("key_id", "demo"), ("reason", "budget")];
    assert_eq!(s.value("imagegate_refusals_total", &budget), 1.0);
    let used = s.value("imagegate_budget_used_ratio", &[("team", "design")]);
    assert!((used - 0.84).abs() < 1e-9, "{used}");
    let fault = [("fault", "policy_budget_exhausted")];
    assert_eq!(s.value("imagegate_errors_total", &fault), 1.0);
}
