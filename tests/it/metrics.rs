//! `/metrics`, `/readyz` and request ids: exact series after known requests, and the dashboard and
//! alert rules checked against what a real gateway emits.

use imagegate::model::ModelId;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::support::{on_path, start, start_with, Env, KEY, UPSTREAM_KEY};

const GENERATIONS: &str = "/v1/images/generations";

/// One scraped sample: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

pub(crate) struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    pub(crate) async fn of(env: &Env) -> Self {
        // No key: `/metrics` is public.
        let res = env
            .http
            .get(format!("{}/metrics", env.gateway))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let text = res.text().await.unwrap();
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(parse_sample)
            .collect();
        Self { text, samples }
    }

    /// The value of the one sample with exactly these labels.
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{}", self.text))
    }

    /// The sum over every sample of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    fn names(&self) -> BTreeSet<&str> {
        self.samples.iter().map(|s| s.name.as_str()).collect()
    }
}

fn parse_sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').unwrap();
    let value = value.parse().unwrap();
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.trim_end_matches('}');
            let labels = body
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once("=\"").unwrap();
                    (k.to_owned(), v.trim_end_matches('"').to_owned())
                })
                .collect();
            (name, labels)
        }
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

#[tokio::test]
async fn exact_series_after_known_requests() {
    let env = start().await;
    for _ in 0..2 {
        let a = env
            .generate(json!({"model": "gpt-image-2-lite", "prompt": "a cat"}))
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let a = env
        .generate(json!({"model": "gpt-image-2-lite", "prompt": "x [sim:500]"}))
        .await;
    assert_eq!(a.status, 502);
    let a = env
        .generate(json!({"model": "gpt-image-2-lite", "prompt": "x", "size": "1000x1000"}))
        .await;
    assert_eq!(a.status, 400);
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "x [sim:policy]"}))
        .await;
    assert_eq!(a.code(), "moderation_blocked");
    let a = env
        .generate(json!({"model": "gpt-image-2-beta", "prompt": "p", "response_format": "url"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let res = env
        .http
        .post(format!("{}{GENERATIONS}", env.gateway))
        .json(&json!({"prompt": "no key"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    env.get("/v1/models/sparkpix").await;
    env.get("/nope").await;

    let s = Scrape::of(&env).await;
    let lite = "gpt-image-2-lite";
    let http = |status| {
        s.value(
            "imagegate_http_requests_total",
            &[
                ("route", GENERATIONS),
                ("method", "POST"),
                ("status", status),
            ],
        )
    };
    assert_eq!(http("200"), 3.0);
    assert_eq!(http("400"), 2.0, "a bad size and a policy refusal");
    assert_eq!(http("401"), 1.0);
    assert_eq!(http("502"), 1.0);
    assert_eq!(
        s.value(
            "imagegate_http_requests_total",
            &[
                ("route", "/v1/models/{id}"),
                ("method", "GET"),
                ("status", "200")
            ]
        ),
        1.0,
        "route templates, not paths"
    );
    assert_eq!(
        s.value(
            "imagegate_http_requests_total",
            &[("route", "unmatched"), ("method", "GET"), ("status", "404")]
        ),
        1.0
    );

    assert_eq!(
        s.value("imagegate_images_produced_total", &[("model", lite)]),
        2.0
    );
    assert_eq!(
        s.value(
            "imagegate_cost_usd_total",
            &[("team", "none"), ("key_id", "demo"), ("model", lite)]
        ),
        0.08,
        "two lite images at $0.04"
    );
    let calls = |phase, outcome| {
        s.value(
            "imagegate_upstream_requests_total",
            &[("model", lite), ("phase", phase), ("outcome", outcome)],
        )
    };
    assert_eq!(calls("create", "ok"), 2.0);
    assert_eq!(calls("create", "server_error"), 1.0);
    assert_eq!(calls("download", "ok"), 2.0, "b64_json answers download");
    assert!(
        s.value(
            "imagegate_upstream_downloaded_bytes_total",
            &[("model", lite)]
        ) > 0.0
    );

    let fault = |f| s.value("imagegate_errors_total", &[("fault", f)]);
    assert_eq!(fault("upstream_server_error"), 1.0);
    assert_eq!(fault("caller_invalid_request"), 1.0);
    assert_eq!(fault("caller_unauthenticated"), 1.0);
    assert_eq!(fault("policy_moderation"), 1.0);
    assert_eq!(fault("caller_not_found"), 1.0);
    assert_eq!(
        s.sum("imagegate_errors_total", &[]),
        5.0,
        "nothing else: {}",
        s.text
    );

    let tasks = |model, outcome| {
        s.value(
            "imagegate_task_duration_seconds_count",
            &[("model", model), ("quality", "auto"), ("outcome", outcome)],
        )
    };
    assert_eq!(tasks(lite, "ok"), 2.0);
    assert_eq!(tasks(lite, "server_error"), 1.0);
    assert_eq!(tasks("sparkpix", "policy_rejected"), 1.0);
    assert_eq!(
        s.get(
            "imagegate_task_duration_seconds_count",
            &[("model", lite), ("quality", "auto"), ("outcome", "ok")]
        ),
        Some(2.0)
    );
    assert_eq!(
        s.sum("imagegate_task_duration_seconds_count", &[("model", lite)]),
        3.0,
        "the refused bad size never reached a model"
    );

    let beta = "gpt-image-2-beta";
    assert_eq!(
        s.value("imagegate_upstream_task_polls_count", &[("model", beta)]),
        1.0
    );
    assert!(s.value("imagegate_upstream_task_polls_sum", &[("model", beta)]) >= 1.0);
    assert_eq!(
        s.value("imagegate_upstream_tasks_in_flight", &[("model", beta)]),
        0.0
    );
    assert!(
        s.value(
            "imagegate_upstream_requests_total",
            &[("model", beta), ("phase", "poll"), ("outcome", "ok")]
        ) >= 1.0
    );
    assert_eq!(
        s.value(
            "imagegate_http_requests_in_flight",
            &[("route", GENERATIONS)]
        ),
        0.0
    );
    assert_eq!(
        s.value(
            "imagegate_gateway_overhead_seconds_count",
            &[("route", GENERATIONS)]
        ),
        7.0,
        "every request on the route"
    );
    assert!(
        s.value(
            "imagegate_http_response_bytes_total",
            &[("route", GENERATIONS)]
        ) > 1000.0
    );
    for m in ["gpt-image-2-lite", "gpt-image-2-all", beta, "sparkpix"] {
        assert_eq!(s.value("imagegate_circuit_state", &[("model", m)]), 0.0);
    }
}

#[tokio::test]
async fn overhead_excludes_the_upstream_wait() {
    let env = start().await;
    // The simulator holds this sync call for 0.5 s (not scaled).
    let a = env
        .generate(
            json!({"model": "gpt-image-2-all", "prompt": "p [sim:slow=0.5]", "size": "1024x1024"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let s = Scrape::of(&env).await;
    let route = [("route", GENERATIONS)];
    let total = s.value(
        "imagegate_http_request_duration_seconds_sum",
        &[("route", GENERATIONS), ("status", "200")],
    );
    let overhead = s.value("imagegate_gateway_overhead_seconds_sum", &route);
    assert!(total >= 0.5, "total {total}");
    assert!(
        total - overhead >= 0.5,
        "the upstream's 0.5 s is not overhead: total {total}, overhead {overhead}"
    );
    assert!(overhead >= 0.0 && overhead < total - 0.5 + 0.2);
}

#[tokio::test]
async fn request_ids_are_kept_or_made_returned_and_sent_upstream() {
    let env = start().await;
    let res = env
        .post_raw(GENERATIONS)
        .header("x-request-id", "trace-7d1e")
        .json(&json!({"model": "gpt-image-2-beta", "prompt": "p", "response_format": "url"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-7d1e");
    let a = Env::read(res).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "p", "response_format": "url"}))
        .await;
    let made = a.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made.len(), 36, "a UUID: {made}");

    let reqs = env.upstream_requests().await;
    let beta: Vec<&Value> = reqs
        .iter()
        .filter(|r| r["model"] == json!("gpt-image-2-beta"))
        .collect();
    assert!(beta.len() >= 2, "a create and a poll: {reqs:?}");
    assert!(
        beta.iter().all(|r| r["request_id"] == json!("trace-7d1e")),
        "{beta:?}"
    );
    let spark = on_path(&reqs, "/api/v1/images/generations-sync");
    assert_eq!(spark.len(), 1);
    assert_eq!(spark[0]["request_id"], json!(made));

    // Errors carry it too, before any handler ran.
    let res = env
        .http
        .get(format!("{}/v1/models", env.gateway))
        .header("x-request-id", "trace-401")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["x-request-id"], "trace-401");
}

#[tokio::test]
async fn probes_need_no_key_and_readyz_lists_ready_models() {
    let env = start_with(|c| c.models.get_mut(ModelId::Beta).enabled = false).await;
    let get = |path: &'static str| {
        let url = format!("{}{path}", env.gateway);
        let http = env.http.clone();
        async move { Env::read(http.get(url).send().await.unwrap()).await }
    };
    assert_eq!(get("/healthz").await.status, 200);
    let ready = get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["status"], "ready");
    assert_eq!(
        ready.body["models"],
        json!(["gpt-image-2-lite", "gpt-image-2-all", "sparkpix"])
    );
    assert_eq!(ready.body["upstream"]["reachable"], true, "{}", ready.body);
    assert_eq!(get("/metrics").await.status, 200);
    assert_eq!(
        get("/v1/readyz").await.status,
        401,
        "only the exact paths are public"
    );
}

/// Every `imagegate_*` name in a text (PromQL expressions, a dashboard, a rules file).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("imagegate_") {
        let preceded = rest[..i]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The PromQL of a Grafana dashboard: every `expr` and variable `query`.
fn dashboard_exprs(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", Value::String(s)) => {
                        out.push_str(s);
                        out.push('\n');
                    }
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| dashboard_exprs(i, out)),
        _ => {}
    }
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_emitted_series() {
    let env = start_with(with_team).await;
    let secret_prompt = "PROMPT-a7f3-do-not-export";
    let ok = |model: &str, extra: Value| {
        let mut body = json!({"model": model, "prompt": secret_prompt});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let workload = [
        ok("gpt-image-2-lite", json!({})),
        ok(
            "gpt-image-2-all",
            json!({"size": "1024x1024", "quality": "high"}),
        ),
        ok(
            "gpt-image-2-all",
            json!({"aspect_ratio": "16:9", "response_format": "url"}),
        ),
        ok("gpt-image-2-beta", json!({"n": 2})),
        ok("sparkpix", json!({"size": "512x512"})),
        ok("sparkpix", json!({"stream": true})),
        json!({"model": "gpt-image-2-all", "prompt": "x [sim:policy]", "size": "1024x1024"}),
        json!({"model": "gpt-image-2-lite", "prompt": "x [sim:500]"}),
        json!({"model": "gpt-image-2-lite", "prompt": "x", "n": 99}),
        // An upstream connection reset after the create was sent: a job of unknown outcome.
        json!({"model": "gpt-image-2-lite", "prompt": "x [sim:reset]"}),
    ];
    for body in workload {
        let res = env.post_raw(GENERATIONS).json(&body).send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        assert!(
            !text.contains(UPSTREAM_KEY) && !text.contains(KEY),
            "{text}"
        );
        assert!(
            body["prompt"] != json!(secret_prompt) || status == 200,
            "{body} → {status} {text}"
        );
    }
    routed_and_limited_workload(&env).await;
    let res = env
        .http
        .post(format!("{}{GENERATIONS}", env.gateway))
        .bearer_auth("sk-wrong-key-123")
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let scrape = Scrape::of(&env).await;
    for secret in [UPSTREAM_KEY, KEY, "sk-wrong-key-123", secret_prompt] {
        assert!(!scrape.text.contains(secret), "{secret} in /metrics");
    }
    let emitted = scrape.names();

    let dashboard: Value =
        serde_json::from_str(include_str!("../../dashboards/imagegate.json")).unwrap();
    let mut exprs = String::new();
    dashboard_exprs(&dashboard, &mut exprs);
    let alerts = include_str!("../../deploy/prometheus/alerts.yml");
    let used_in_dashboard = metric_names(&exprs);
    let used_in_alerts = metric_names(alerts);
    assert!(used_in_dashboard.len() >= 15, "{used_in_dashboard:?}");
    assert!(used_in_alerts.len() >= 5, "{used_in_alerts:?}");

    let declared = include_str!("../../src/metrics/mod.rs");
    for name in used_in_dashboard.union(&used_in_alerts) {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|base| declared.contains(&format!("\"{base}\"")))
            .unwrap_or(name);
        assert!(
            declared.contains(&format!("\"{family}\"")),
            "{name} is not declared in src/metrics/mod.rs"
        );
        assert!(
            emitted.contains(name.as_str()),
            "{name} (dashboard or alerts) is not in the scrape:\n{}",
            scrape.text
        );
    }
}

/// The team `design` (monthly budget $1) with the demo key and `bob` (1 request/min).
pub(crate) fn with_team(c: &mut imagegate::config::Config) {
    c.teams.push(imagegate::config::TeamSpec {
        id: "design".into(),
        monthly_budget_usd: Some(1.0),
        ..Default::default()
    });
    c.keys[0].team = Some("design".into());
    c.keys.push(imagegate::config::KeySpec {
        id: "bob".into(),
        key: Some(BOB.into()),
        team: Some("design".into()),
        requests_per_minute: Some(1),
        ..Default::default()
    });
}

pub(crate) const BOB: &str = "sk-bob-12345678";

/// A failover (gpt-image-2-all fails, gpt-image-2-beta serves), then bob's second request in a
/// minute (429).
pub(crate) async fn routed_and_limited_workload(env: &Env) {
    env.set_faults(json!({"gpt-image-2-all": {"rate": 1.0, "kind": "500"}}))
        .await;
    let body =
        json!({"model": "gpt-image-2", "prompt": "p", "quality": "low", "response_format": "url"});
    let a = env.generate(body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.headers["x-imagegate-upstream"], "gpt-image-2-beta");
    env.set_faults(json!({})).await;
    let body = json!({"model": "sparkpix", "prompt": "p", "response_format": "url"});
    assert_eq!(env.generate_as(BOB, body.clone()).await.status, 200);
    assert_eq!(env.generate_as(BOB, body).await.status, 429);
}
