//! Replicas of the real binary sharing a real Redis (`[cluster] redis_url`) besides PostgreSQL:
//! rate limits, concurrency slots, circuit openings and key changes are one gateway's, and Redis
//! stopped behaves as configured (see `cluster.rs` for the servers and helpers).

use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::{
    config_redis, hold_server, post, replicas, services, terminate, Servers, TWELVE, TWO,
};
use crate::crash::Proc;
use crate::support::{Env, ADMIN_KEY, KEY};

#[tokio::test]
async fn a_rate_limit_is_shared_by_three_replicas() {
    let _held = hold_server(false);
    let Servers { stop, sim, db } = Servers::new().await;
    let cfg = config_redis(&sim, &db, "open");
    let replicas = replicas::<3>(&cfg);
    let http = reqwest::Client::new();
    let body = json!({"model": "sparkpix", "prompt": "a fox"});
    let answers = futures_util::future::join_all(
        (0..36).map(|i| post(&http, &replicas[i % 3], TWELVE, body.clone(), &[])),
    )
    .await;
    let served = answers.iter().filter(|a| a.status == 200).count();
    let limited = answers
        .iter()
        .filter(|a| a.status == 429 && a.code() == "rate_limit_exceeded")
        .count();
    // GCRA refills one request every 5 s: a burst of 36 gets the minute's 12, not 36 (12 each).
    assert_eq!((served, limited), (12, 24));
    terminate(replicas);
    stop.cancel();
}

#[tokio::test]
async fn a_key_disabled_on_one_replica_is_refused_by_the_others_within_a_second() {
    let _held = hold_server(false);
    let Servers { stop, sim, db } = Servers::new().await;
    let cfg = config_redis(&sim, &db, "open");
    let [a, b, c] = replicas(&cfg);
    let http = reqwest::Client::new();
    let created = http
        .post(a.url("/admin/keys"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"id": "eve"}))
        .send()
        .await
        .unwrap();
    let created = Env::read(created).await;
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    let body = json!({"model": "sparkpix", "prompt": "a fox"});
    // B and C know (and cache) the key.
    for p in [&b, &c] {
        assert_eq!(post(&http, p, &secret, body.clone(), &[]).await.status, 200);
    }
    let disabled = http
        .patch(a.url("/admin/keys/eve"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), 200);
    let since = std::time::Instant::now();
    let mut refused = [false, false];
    while refused.contains(&false) {
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "still accepted after 1 s: {refused:?}"
        );
        for (i, p) in [&b, &c].into_iter().enumerate() {
            if !refused[i] {
                let me = http
                    .get(p.url("/v1/me"))
                    .bearer_auth(&secret)
                    .send()
                    .await
                    .unwrap();
                refused[i] = me.status() == 401;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for p in [a, b, c] {
        p.term();
    }
    stop.cancel();
}

#[tokio::test]
async fn redis_away_falls_back_to_each_replicas_limits_or_refuses_as_configured() {
    let _held = hold_server(true);
    let Servers { stop, sim, db } = Servers::new().await;
    let open = Proc::start(config_redis(&sim, &db, "open").path(), None);
    let closed = Proc::start(config_redis(&sim, &db, "closed").path(), None);
    let http = reqwest::Client::new();
    let body = json!({"model": "sparkpix", "prompt": "a fox"});
    for p in [&open, &closed] {
        assert_eq!(post(&http, p, TWELVE, body.clone(), &[]).await.status, 200);
    }
    services("redis-stop");
    let served = post(&http, &open, TWELVE, body.clone(), &[]).await;
    assert_eq!(served.status, 200, "{}", served.body);
    let refused = post(&http, &closed, TWELVE, body.clone(), &[]).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.code(), "shared_state_unavailable");
    // Keys without a rate limit need no Redis: served either way.
    assert_eq!(
        post(&http, &closed, KEY, body.clone(), &[]).await.status,
        200
    );
    let ready = |p: &Proc| http.get(p.url("/readyz")).send();
    let (r_open, r_closed) = (ready(&open).await.unwrap(), ready(&closed).await.unwrap());
    assert_eq!(
        (r_open.status().as_u16(), r_closed.status().as_u16()),
        (200, 503)
    );
    let v: Value = r_open.json().await.unwrap();
    assert_eq!(v["redis"]["up"], false, "{v}");
    let metrics = http
        .get(open.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("imagegate_redis_up 0"), "{metrics}");
    services("redis-start");
    let mut back = post(&http, &closed, TWELVE, body.clone(), &[]).await;
    for _ in 0..50 {
        if back.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        back = post(&http, &closed, TWELVE, body.clone(), &[]).await;
    }
    assert_eq!(back.status, 200, "{}", back.body);
    for p in [open, closed] {
        let logs = p.term();
        assert!(!logs.contains("panicked"), "{logs}");
    }
    stop.cancel();
}

#[tokio::test]
async fn concurrency_slots_are_shared_by_three_replicas() {
    let _held = hold_server(false);
    let Servers { stop, sim, db } = Servers::new().await;
    let cfg = config_redis(&sim, &db, "open");
    let replicas = replicas::<3>(&cfg);
    let http = reqwest::Client::new();
    // Each request holds its slot for 3 s of upstream work: all six arrive while the first two run.
    let body = json!({"model": "gpt-image-2-beta", "prompt": "a heron [sim:slow=3]"});
    let answers = futures_util::future::join_all(
        (0..6).map(|i| post(&http, &replicas[i % 3], TWO, body.clone(), &[])),
    )
    .await;
    let served = answers.iter().filter(|a| a.status == 200).count();
    let refused = answers
        .iter()
        .filter(|a| a.status == 429 && a.code() == "rate_limit_exceeded")
        .count();
    assert_eq!(
        (served, refused),
        (2, 4),
        "{:?}",
        answers.iter().map(|a| &a.body).collect::<Vec<_>>()
    );
    // The slots are given back: the next request is served.
    let mut again = post(&http, &replicas[0], TWO, body.clone(), &[]).await;
    for _ in 0..50 {
        if again.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        again = post(&http, &replicas[0], TWO, body.clone(), &[]).await;
    }
    assert_eq!(again.status, 200, "{}", again.body);
    terminate(replicas);
    stop.cancel();
}

#[tokio::test]
async fn a_circuit_opened_on_one_replica_is_open_on_the_others() {
    let _held = hold_server(false);
    let Servers { stop, sim, db } = Servers::new().await;
    let cfg = config_redis(&sim, &db, "open");
    let [a, b] = replicas(&cfg);
    let http = reqwest::Client::new();
    let ready_models = async |p: &Proc| -> Vec<String> {
        let v: Value = http
            .get(p.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_owned())
            .collect()
    };
    assert!(ready_models(&b).await.contains(&"sparkpix".to_owned()));
    // The platform fails SparkPix on replica A until its circuit opens (5 in a row).
    let failing = json!({"model": "sparkpix", "prompt": "a fox [sim:500]"});
    for _ in 0..5 {
        let e = post(&http, &a, KEY, failing.clone(), &[]).await;
        assert_eq!(e.status, 502, "{}", e.body);
    }
    assert!(!ready_models(&a).await.contains(&"sparkpix".to_owned()));
    // B never called it, and stops sending it requests too.
    let mut open_on_b = false;
    for _ in 0..100 {
        if !ready_models(&b).await.contains(&"sparkpix".to_owned()) {
            open_on_b = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(open_on_b);
    let refused = post(
        &http,
        &b,
        KEY,
        json!({"model": "sparkpix", "prompt": "a fox"}),
        &[],
    )
    .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    let logs = b.term();
    assert!(logs.contains("opened by another replica"), "{logs}");
    a.term();
    stop.cancel();
}
