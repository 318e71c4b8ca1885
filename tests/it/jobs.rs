//! Jobs: ambiguous creates never fail over, deadlines do not throw paid work away, result
//! downloads are retried, `Idempotency-Key` and SDK retries join their job, and the async job API.

use std::time::Duration;

use imagegate::model::ModelId;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

/// The billed total the simulator reports, in micro-dollars.
async fn billed(env: &Env) -> u64 {
    env.upstream_stats().await["billed_micros"]
        .as_u64()
        .unwrap_or_default()
}

/// What the demo key has spent (the admin spend view), as a decimal string.
async fn spent(env: &Env) -> String {
    let a = env.admin(Method::GET, "/admin/spend", None).await;
    let keys = a.body["keys"].as_array().cloned().unwrap_or_default();
    keys.iter()
        .find(|k| k["id"] == "demo")
        .map(|k| {
            k["spend"]["total_spent_usd"]
                .as_str()
                .unwrap_or("?")
                .to_owned()
        })
        .unwrap_or_else(|| format!("no demo key in {}", a.body))
}

/// Polls the job until it is finished (by its own state, not a clock).
async fn finished_job(env: &Env, id: &str) -> Answer {
    for _ in 0..1500 {
        let a = env.get(&format!("/v1/images/jobs/{id}")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        if ["completed", "failed", "unknown"].contains(&a.body["status"].as_str().unwrap_or("")) {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {id} never finished");
}

#[tokio::test]
async fn an_ambiguous_create_is_never_failed_over_and_stays_booked() {
    for fault in ["reset", "truncate"] {
        let env = start_with(with_admin).await;
        // `gpt-image-2` at low quality tries gpt-image-2-all first, and could fail over to others.
        let a = env
            .generate(json!({"model": "gpt-image-2", "prompt": format!("x [sim:{fault}]"), "quality": "low", "size": "1024x1024"}))
            .await;
        assert_eq!(
            (a.status, a.code()),
            (502, "upstream_outcome_unknown"),
            "{fault}: {}",
            a.body
        );
        assert_eq!(a.headers["x-should-retry"], "false", "{fault}");
        let job = a.headers["x-imagegate-job-id"].to_str().unwrap().to_owned();
        assert!(a.body["error"]["message"].as_str().unwrap().contains(&job));
        // One paid create, no failover; the reservation is booked.
        assert_eq!(env.creates().await, 1, "{fault}");
        assert_eq!(a.headers["x-imagegate-attempts"], "1", "{fault}");
        assert_eq!(spent(&env).await, "0.005", "{fault}");
        let j = env
            .admin(Method::GET, &format!("/admin/jobs/{job}"), None)
            .await;
        assert_eq!(j.body["status"], "unknown", "{fault}: {}", j.body);
        // The operator learns it was billed after all: nothing changes but the state.
        let r = env
            .admin(
                Method::POST,
                &format!("/admin/jobs/{job}/resolve"),
                Some(json!({"outcome": "not_billed"})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], "failed");
        assert_eq!(spent(&env).await, "0", "{fault}: refunded");
        let again = env
            .admin(
                Method::POST,
                &format!("/admin/jobs/{job}/resolve"),
                Some(json!({"outcome": "billed"})),
            )
            .await;
        assert_eq!(again.status, 409, "{}", again.body);
    }
}

#[tokio::test]
async fn a_platform_error_envelope_still_fails_over() {
    let env = start_with(with_admin).await;
    let a = env
        .generate(json!({"model": "gpt-image-2", "prompt": "x [sim:500]", "quality": "low", "size": "1024x1024"}))
        .await;
    // `[sim:500]` is the platform's own JSON error: provably not accepted, so the next model
    // is tried (and answers the same fault: the directive is in the prompt).
    assert!(env.creates().await >= 2, "{}", a.body);
    assert_eq!(spent(&env).await, "0");
}

#[tokio::test]
async fn a_deadline_shorter_than_the_task_answers_504_and_the_job_completes() {
    let env = start_with(|c| {
        with_admin(c);
        c.models.get_mut(ModelId::Beta).deadline = Duration::from_secs(1);
    })
    .await;
    let a = env
        .generate(json!({"model": "gpt-image-2-beta", "prompt": "x [sim:slow=2]"}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (504, "upstream_timeout"),
        "{}",
        a.body
    );
    assert_eq!(a.headers["x-should-retry"], "false");
    let job = a.headers["x-imagegate-job-id"].to_str().unwrap().to_owned();
    let done = finished_job(&env, &job).await;
    assert_eq!(done.body["status"], "completed", "{}", done.body);
    let bytes = b64_image(&done.body["result"], 0);
    assert!(is_png(&bytes));
    assert_eq!(env.creates().await, 1);
    // Booked once, at the price of what was made.
    assert_eq!(spent(&env).await, "0.03");
    assert_eq!(billed(&env).await, 30_000);
}

#[tokio::test]
async fn a_missing_result_file_is_fetched_again_inside_the_gateway() {
    let env = start().await;
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "x [sim:nofile=2]"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(is_png(&b64_image(&a.body, 0)));
    assert_eq!(env.creates().await, 1);
    assert_eq!(env.upstream_stats().await["downloads"], 3);
}

#[tokio::test]
async fn one_idempotency_key_makes_one_upstream_create_for_twenty_concurrent_requests() {
    let env = start().await;
    let body = json!({"model": "gpt-image-2-beta", "prompt": "a fox [sim:slow=0.5]", "response_format": "url"});
    let sends = (0..20).map(|_| {
        env.post_raw("/v1/images/generations")
            .header("idempotency-key", "order-42")
            .json(&body)
            .send()
    });
    let answers = futures_util::future::join_all(sends).await;
    let mut bodies = Vec::new();
    let mut jobs = Vec::new();
    for res in answers {
        let a = Env::read(res.unwrap()).await;
        assert_eq!(a.status, 200, "{}", a.body);
        jobs.push(a.headers["x-imagegate-job-id"].to_str().unwrap().to_owned());
        bodies.push(a.body["data"].clone());
    }
    assert_eq!(env.creates().await, 1);
    assert!(jobs.iter().all(|j| *j == jobs[0]), "{jobs:?}");
    assert!(bodies.iter().all(|b| *b == bodies[0]));

    // The same key with another request: refused, nothing sent.
    let other = env
        .post_raw("/v1/images/generations")
        .header("idempotency-key", "order-42")
        .json(&json!({"model": "gpt-image-2-beta", "prompt": "a different fox"}))
        .send()
        .await
        .unwrap();
    let other = Env::read(other).await;
    assert_eq!(
        (other.status, other.code()),
        (422, "idempotency_key_reused"),
        "{}",
        other.body
    );
    assert_eq!(other.headers["x-should-retry"], "false");

    // After completion: the stored answer again, marked as a replay.
    let replay = env
        .post_raw("/v1/images/generations")
        .header("idempotency-key", "order-42")
        .json(&body)
        .send()
        .await
        .unwrap();
    let replay = Env::read(replay).await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.body["data"], bodies[0]);
    assert_eq!(env.creates().await, 1);
}

/// Requests racing on one Idempotency-Key across worker threads: whichever finds the key's
/// record, however soon after it was written, joins the running job (never a half-made replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_races_across_threads_all_join_the_running_job() {
    let env = start().await;
    let rounds = (0..8).map(|round| {
        let env = &env;
        async move {
            let key = format!("race-{round}");
            let body = json!({"model": "gpt-image-2-all", "prompt": format!("a kite {round} [sim:slow=0.3]")});
            let sends = (0..10).map(|_| {
                env.post_raw("/v1/images/generations")
                    .header("idempotency-key", &key)
                    .json(&body)
                    .send()
            });
            let mut jobs = Vec::new();
            for res in futures_util::future::join_all(sends).await {
                let a = Env::read(res.unwrap()).await;
                assert_eq!(a.status, 200, "{}", a.body);
                jobs.push(a.headers["x-imagegate-job-id"].to_str().unwrap().to_owned());
            }
            assert!(jobs.iter().all(|j| *j == jobs[0]), "{jobs:?}");
        }
    });
    futures_util::future::join_all(rounds).await;
    assert_eq!(env.creates().await, 8);
}

#[tokio::test]
async fn a_failed_unbilled_job_runs_again_under_its_idempotency_key() {
    let env = start().await;
    let send = |prompt: &str| {
        env.post_raw("/v1/images/generations")
            .header("idempotency-key", "k-transient")
            .json(&json!({"model": "gpt-image-2-lite", "prompt": prompt}))
            .send()
    };
    let first = Env::read(send("x [sim:fail]").await.unwrap()).await;
    assert_eq!(first.code(), "upstream_task_failed", "{}", first.body);
    // Same key, same request: the failure cost nothing, so it is not replayed but run again.
    let second = Env::read(send("x [sim:fail]").await.unwrap()).await;
    assert!(second.headers.get("idempotent-replayed").is_none());
    assert_eq!(env.creates().await, 2);
}

#[tokio::test]
async fn an_sdk_retry_joins_the_job_it_repeats() {
    let env = start().await;
    let body = json!({"model": "gpt-image-2-beta", "prompt": "a heron [sim:slow=0.6]"});
    let first = env.post_raw("/v1/images/generations").json(&body).send();
    let first = tokio::spawn(first);
    env.until_upstream_called().await;
    // The SDK's retry: same body, `x-stainless-retry-count: 1`.
    let retry = env
        .post_raw("/v1/images/generations")
        .header("x-stainless-retry-count", "1")
        .json(&body)
        .send()
        .await
        .unwrap();
    let retry = Env::read(retry).await;
    let first = Env::read(first.await.unwrap().unwrap()).await;
    assert_eq!((first.status, retry.status), (200, 200), "{}", retry.body);
    assert_eq!(
        first.headers["x-imagegate-job-id"],
        retry.headers["x-imagegate-job-id"]
    );
    assert_eq!(env.creates().await, 1);
    // A new request with the same body and no retry header is a new image.
    let fresh = env.generate(body).await;
    assert_eq!(fresh.status, 200);
    assert_eq!(env.creates().await, 2);
}

#[tokio::test]
async fn the_async_api_accepts_at_once_and_the_job_holds_the_answer() {
    let env = start_with(with_admin).await;
    let res = env
        .post_raw("/v1/images/generations")
        .header("prefer", "respond-async")
        .json(&json!({"model": "gpt-image-2-beta", "prompt": "a kite [sim:slow=0.3]"}))
        .send()
        .await
        .unwrap();
    let a = Env::read(res).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_owned();
    assert_eq!(a.body["object"], "image.job");
    assert_eq!(
        a.headers["location"],
        format!("/v1/images/jobs/{id}").as_str()
    );
    let done = finished_job(&env, &id).await;
    assert_eq!(done.body["status"], "completed");
    assert!(done.body["completed_at"].as_i64().is_some());
    assert!(is_png(&b64_image(&done.body["result"], 0)));
    // Another key does not see it; the admin key sees every job.
    let other = env
        .http
        .get(format!("{}/v1/images/jobs/{id}", env.gateway))
        .bearer_auth(imagegate::demo::DEMO_LIMITED_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    let listed = env.get("/v1/images/jobs?limit=5").await;
    assert_eq!(listed.body["data"][0]["id"], id.as_str(), "{}", listed.body);
    let admin = env.admin(Method::GET, "/admin/jobs", None).await;
    let ids: Vec<&Value> = admin.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| &j["id"])
        .collect();
    assert!(ids.contains(&&json!(id)));
}

#[tokio::test]
async fn every_answer_after_admission_names_its_job() {
    let env = start().await;
    let ok = env
        .generate(json!({"model": "sparkpix", "prompt": "ok"}))
        .await;
    let failed = env
        .generate(json!({"model": "sparkpix", "prompt": "x [sim:policy]"}))
        .await;
    for a in [&ok, &failed] {
        let job = a.headers["x-imagegate-job-id"].to_str().unwrap();
        assert!(job.starts_with("imgjob_"), "{job}");
    }
    // Refused before admission: no job.
    let refused = env
        .generate(json!({"model": "sparkpix", "prompt": "x", "size": "99x99"}))
        .await;
    assert_eq!(refused.status, 400);
    assert!(refused.headers.get("x-imagegate-job-id").is_none());
}

#[tokio::test]
async fn an_upstream_callback_makes_the_gateway_poll_at_once() {
    // Polls 30 s apart, a 10 s deadline: only the platform's callback can end this in time.
    let slow_polls = |c: &mut imagegate::Config| {
        let beta = c.models.get_mut(ModelId::Beta);
        beta.first_poll_delay = Duration::from_secs(30);
        beta.poll_interval = Duration::from_secs(30);
        beta.deadline = Duration::from_secs(10);
    };
    let env = start_with(|c| {
        slow_polls(c);
        c.server.public_url = Some(format!("http://{}", c.server.listen));
    })
    .await;
    let a = env
        .generate(json!({"model": "gpt-image-2-beta", "prompt": "a crane"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let stats = env.upstream_stats().await;
    // One poll, made when the callback came; the callback URL was the gateway's.
    assert_eq!(stats["polls"], 1, "{stats}");
    let reqs = env.upstream_requests().await;
    let create = &on_path(&reqs, "/api/v1/images/generations")[0];
    assert_eq!(
        create["json"]["callback_url"],
        format!("{}/upstream/callback", env.gateway).as_str()
    );
    // A forged callback for a task nobody polls changes nothing and is answered 200.
    let forged = env
        .http
        .post(format!("{}/upstream/callback", env.gateway))
        .json(&json!({"code": 200, "data": {"taskId": "forged", "state": "completed"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 200);

    // Without a public URL the same request waits for its slow poll: the deadline passes.
    let env = start_with(slow_polls).await;
    let a = env
        .generate(json!({"model": "gpt-image-2-beta", "prompt": "a crane"}))
        .await;
    assert_eq!(a.status, 504, "{}", a.body);
}

/// Polls are bounded over all waiting requests (`upstream.max_polls_in_flight`): with 2 slots,
/// 8 jobs whose polls each take 0.2 s never have more than 2 polls at the platform at once,
/// and every job still completes.
#[tokio::test]
async fn polls_in_flight_are_bounded_across_waiting_jobs() {
    let env = start_with(|c| c.upstream.max_polls_in_flight = 2).await;
    let sends = (0..8).map(|i| {
        env.post(
            "/v1/images/generations",
            json!({"model": "gpt-image-2-beta", "prompt": format!("a bee {i} [sim:slowpoll=0.2]"), "response_format": "url"}),
        )
    });
    for a in futures_util::future::join_all(sends).await {
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let stats = env.upstream_stats().await;
    assert_eq!(stats["polls_in_flight_max"], 2, "{stats}");
}
