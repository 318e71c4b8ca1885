//! The dispatcher with fake handles: a scripted upstream, real budgets, limits, health, an
//! in-memory store and a metrics registry. Expected values are literals from the README's rules
//! (failover on failures that cost nothing; a failed attempt is released; a served one is
//! settled at its own price; a content-policy refusal never fails over).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{json, Map, Value};

use super::*;
use crate::budget::Payer;
use crate::config::{CircuitConfig, KeySpec, LimitsConfig, RoutingConfig};
use crate::keys::KeyRecord;
use crate::model::ImageFormat;
use crate::request::{Head, Operation};
use crate::upstream::failure::FailureKind;
use crate::upstream::results::Encoded;
use crate::upstream::Image;

/// An upstream that answers each model from a script and records the models called.
#[derive(Default)]
struct Fake {
    script: Mutex<HashMap<ModelId, VecDeque<Result<Output, UpstreamError>>>>,
    calls: Mutex<Vec<ModelId>>,
}

impl Fake {
    fn answer(&self, model: ModelId, result: Result<Output, UpstreamError>) {
        let mut script = self.script.lock().unwrap();
        script.entry(model).or_default().push_back(result);
    }

    fn calls(&self) -> Vec<ModelId> {
        self.calls.lock().unwrap().clone()
    }
}

fn images(n: usize) -> Output {
    Output {
        images: (0..n)
            .map(|i| Image::url(format!("https://files.test/{i}.png")))
            .collect(),
        task_ids: vec!["task-1".to_owned()],
        unsettled: 0,
    }
}

fn failure(kind: FailureKind) -> Result<Output, UpstreamError> {
    Err(UpstreamError::new(kind, "scripted".to_owned()))
}

impl Upstreams for Fake {
    fn execute<'a>(
        &'a self,
        plan: Plan,
        _: &'a CallCtx,
    ) -> BoxFuture<'a, Result<Output, UpstreamError>> {
        let model = plan.model();
        self.calls.lock().unwrap().push(model);
        let next = self
            .script
            .lock()
            .unwrap()
            .get_mut(&model)
            .and_then(VecDeque::pop_front)
            .unwrap_or_else(|| failure(FailureKind::ServerError));
        Box::pin(async move { next })
    }

    fn fetch_b64<'a>(
        &'a self,
        urls: Vec<String>,
        _: ImageFormat,
        _: &'a CallCtx,
    ) -> BoxFuture<'a, Result<Vec<Encoded>, UpstreamError>> {
        Box::pin(async move {
            Ok(urls
                .iter()
                .map(|_| Encoded {
                    b64: crate::model::Text::new(bytes::Bytes::from_static(b"iVBORw0KGgo=")),
                    format: Some(ImageFormat::Png),
                    size: None,
                })
                .collect())
        })
    }

    fn check_result_url(&self, _: &str) -> Result<(), String> {
        Ok(())
    }
}

/// Everything a dispatcher borrows, owned by the test.
struct Handles {
    models: ModelsConfig,
    routing: Routing,
    health: Health,
    limits: RateLimits,
    budgets: Budgets,
    upstream: Fake,
    store: Store,
    metrics: Metrics,
}

impl Handles {
    fn new() -> Self {
        let circuit = CircuitConfig {
            enabled: true,
            consecutive_failures: 1,
            ..CircuitConfig::default()
        };
        Self {
            models: ModelsConfig::default(),
            routing: Routing::new(RoutingConfig {
                circuit: circuit.clone(),
                ..RoutingConfig::default()
            }),
            health: Health::new(circuit),
            limits: RateLimits::new(&LimitsConfig::default(), None),
            budgets: Budgets::default(),
            upstream: Fake::default(),
            store: Store::open(None).unwrap(),
            metrics: Metrics::new().unwrap(),
        }
    }

    fn dispatch(&self) -> Dispatch<'_> {
        Dispatch {
            models: &self.models,
            routing: &self.routing,
            health: &self.health,
            limits: &self.limits,
            budgets: &self.budgets,
            upstream: &self.upstream,
            store: &self.store,
            metrics: &self.metrics,
            results_timeout: Duration::from_secs(5),
            urls: crate::upstream::urls::UrlPolicy::default(),
        }
    }

    /// Runs one request for `name` through prepare and run.
    async fn run(&self, name: &str, fields: Value) -> Finished {
        let mut map: Map<String, Value> = fields.as_object().cloned().unwrap();
        map.insert("prompt".into(), json!("a lighthouse"));
        map.insert("model".into(), json!(name));
        let head = Head::from_fields(&map).unwrap();
        let route = self.routing.resolve(&self.models, name).unwrap();
        let req = ImageRequest::from_fields(Operation::Generate, head, &map, vec![], None).unwrap();
        let call = Call {
            caller: caller(),
            constraints: Constraints::default(),
            request_id: "req-1".to_owned(),
            wait: UpstreamWait::default(),
        };
        match self.dispatch().prepare(call, route, req).await {
            Ok(prepared) => run_job(&self.dispatch(), prepared).await,
            Err(refused) => *refused,
        }
    }

    fn spend(&self) -> (String, String) {
        let v = self.budgets.view(&Payer::Key("k1".to_owned()));
        (v.total_spent_usd, v.reserved_usd)
    }
}

fn caller() -> ClientKey {
    let spec = KeySpec {
        id: "k1".to_owned(),
        ..KeySpec::default()
    };
    ClientKey {
        id: Arc::from("k1"),
        record: Arc::new(KeyRecord::from_store(spec, [0; 32], 0)),
        team: None,
    }
}

// `gpt-image-2` at 1K low, no size: all $0.005, beta $0.03, lite $0.04 (README "Prices").
const LOW: &str = r#"{"quality": "low"}"#;

fn low() -> Value {
    serde_json::from_str(LOW).unwrap()
}

#[tokio::test]
async fn failover_goes_down_the_price_order_and_books_only_the_model_that_served() {
    let h = Handles::new();
    h.upstream
        .answer(ModelId::All, failure(FailureKind::ServerError));
    h.upstream
        .answer(ModelId::Beta, failure(FailureKind::Connect));
    h.upstream.answer(ModelId::Lite, Ok(images(1)));
    let done = h.run("gpt-image-2", low()).await;
    assert!(done.result.is_ok(), "{:?}", done.result);
    assert_eq!(
        h.upstream.calls(),
        [ModelId::All, ModelId::Beta, ModelId::Lite]
    );
    assert_eq!(done.served.model, Some(ModelId::Lite));
    assert_eq!(done.served.attempts, 3);
    assert_eq!(done.served.cost.to_string(), "0.04");
    // The two failed attempts were released; the served one settled at its own price.
    assert_eq!(h.spend(), ("0.04".to_owned(), "0".to_owned()));
}

#[tokio::test]
async fn a_served_attempt_is_settled_at_its_own_price_per_image_made() {
    let h = Handles::new();
    // SparkPix fans n=3 out: two calls succeeded, so two images are billed at $0.01.
    h.upstream.answer(ModelId::SparkPix, Ok(images(2)));
    let done = h.run("sparkpix", json!({"n": 3})).await;
    assert!(done.result.is_ok(), "{:?}", done.result);
    assert_eq!(done.served.cost.to_string(), "0.02");
    assert_eq!(h.spend(), ("0.02".to_owned(), "0".to_owned()));
}

#[tokio::test]
async fn a_fanned_out_call_of_unknown_outcome_stays_booked() {
    let h = Handles::new();
    // n=3: two images made, one call reset after it was sent (the platform may have billed it).
    let mut out = images(2);
    out.unsettled = 1;
    h.upstream.answer(ModelId::SparkPix, Ok(out));
    let done = h.run("sparkpix", json!({"n": 3})).await;
    assert!(done.result.is_ok(), "{:?}", done.result);
    assert_eq!(done.served.cost.to_string(), "0.03");
    assert_eq!(h.spend(), ("0.03".to_owned(), "0".to_owned()));
}

#[tokio::test]
async fn a_failed_attempt_releases_its_reservation() {
    let h = Handles::new();
    h.upstream
        .answer(ModelId::Lite, failure(FailureKind::ServerError));
    let done = h.run("gpt-image-2-lite", json!({})).await;
    let error = done.result.unwrap_err();
    assert_eq!(error.code, ErrorCode::UpstreamError);
    assert_eq!(done.served.cost, Usd::ZERO);
    assert_eq!(h.spend(), ("0".to_owned(), "0".to_owned()));
}

#[tokio::test]
async fn a_policy_refusal_does_not_fail_over() {
    let h = Handles::new();
    h.upstream
        .answer(ModelId::All, failure(FailureKind::PolicyRejected));
    h.upstream.answer(ModelId::Beta, Ok(images(1)));
    let done = h.run("gpt-image-2", low()).await;
    assert_eq!(done.result.unwrap_err().code, ErrorCode::ModerationBlocked);
    assert_eq!(h.upstream.calls(), [ModelId::All]);
    assert_eq!(h.spend(), ("0".to_owned(), "0".to_owned()));
}

/// Every failure kind: does it fail over, is anything booked, does it count against the model's
/// circuit (opened after one failure here)? Written from the README's rules, not the code's: only
/// a failure that proves the upstream did not take (or bill) the work fails over; one whose
/// outcome is unknown, or that came after the work was done, stays booked.
#[tokio::test]
async fn every_failure_kind_against_the_failover_rules() {
    use crate::routing::health::CircuitState::{Closed, Open};
    use FailureKind as K;
    // (kind, fails over, booked (what gpt-image-2-all's attempt costs), circuit after it)
    let table = [
        (K::Connect, true, false, Open),
        (K::ServerError, true, false, Open),
        (K::RateLimited, true, false, Open),
        (K::TaskFailed, true, false, Open),
        (K::OutOfCredits, true, false, Open),
        (K::Malformed, false, true, Open),
        (K::Unknown, false, true, Open),
        (K::Timeout, false, true, Open),
        (K::PolicyRejected, false, false, Closed),
        (K::Rejected, false, false, Closed),
        (K::Unauthorized, false, false, Closed),
        (K::Download, false, true, Closed),
    ];
    for (kind, fails_over, booked, circuit) in table {
        let h = Handles::new();
        h.upstream.answer(ModelId::All, failure(kind));
        h.upstream.answer(ModelId::Beta, Ok(images(1)));
        let done = h.run("gpt-image-2", low()).await;
        let calls = h.upstream.calls();
        if fails_over {
            assert!(done.result.is_ok(), "{kind:?}: {:?}", done.result);
            assert_eq!(calls, [ModelId::All, ModelId::Beta], "{kind:?}");
            // Only the model that served is booked: beta's $0.03.
            assert_eq!(h.spend(), ("0.03".to_owned(), "0".to_owned()), "{kind:?}");
        } else {
            let e = done.result.unwrap_err();
            assert_eq!(calls, [ModelId::All], "{kind:?}");
            if booked {
                // gpt-image-2-all at low quality, 1K: $0.005, booked; the answer names the job.
                assert_eq!(h.spend(), ("0.005".to_owned(), "0".to_owned()), "{kind:?}");
                assert!(!e.code.should_retry(), "{kind:?}: {:?}", e.code);
                assert!(e.message.contains("imgjob_"), "{kind:?}: {}", e.message);
            } else {
                assert_eq!(h.spend(), ("0".to_owned(), "0".to_owned()), "{kind:?}");
            }
        }
        assert_eq!(h.health.state(ModelId::All), circuit, "{kind:?}");
    }
}

#[tokio::test]
async fn max_attempts_and_the_request_deadline_bound_the_failover() {
    let mut h = Handles::new();
    h.routing = Routing::new(RoutingConfig {
        max_attempts: 2,
        circuit: CircuitConfig {
            enabled: false,
            ..CircuitConfig::default()
        },
        ..RoutingConfig::default()
    });
    h.health = Health::new(CircuitConfig {
        enabled: false,
        ..CircuitConfig::default()
    });
    h.upstream
        .answer(ModelId::All, failure(FailureKind::ServerError));
    h.upstream
        .answer(ModelId::Beta, failure(FailureKind::ServerError));
    h.upstream.answer(ModelId::Lite, Ok(images(1)));
    let done = h.run("gpt-image-2", low()).await;
    assert_eq!(done.result.unwrap_err().code, ErrorCode::UpstreamError);
    assert_eq!(h.upstream.calls(), [ModelId::All, ModelId::Beta]);
    assert_eq!(done.served.attempts, 2);

    // A deadline already spent: no attempt at all.
    h.routing = Routing::new(RoutingConfig {
        request_deadline: Duration::ZERO,
        ..RoutingConfig::default()
    });
    let done = h.run("gpt-image-2", low()).await;
    assert_eq!(done.result.unwrap_err().code, ErrorCode::NoHealthyUpstream);
    assert_eq!(done.served.attempts, 0);
    assert_eq!(h.upstream.calls().len(), 2, "no new call");
}

#[tokio::test]
async fn a_budget_refusal_is_closed_before_any_call() {
    let h = Handles::new();
    let spec = KeySpec {
        id: "k1".to_owned(),
        total_budget_usd: Some(0.01),
        ..KeySpec::default()
    };
    let poor = ClientKey {
        id: Arc::from("k1"),
        record: Arc::new(KeyRecord::from_store(spec, [0; 32], 0)),
        team: None,
    };
    let map: Map<String, Value> = json!({"prompt": "p"}).as_object().cloned().unwrap();
    let req = ImageRequest::from_fields(
        Operation::Generate,
        Head::from_fields(&map).unwrap(),
        &map,
        vec![],
        None,
    )
    .unwrap();
    let route = h.routing.resolve(&h.models, "gpt-image-2-lite").unwrap();
    let call = Call {
        caller: poor,
        constraints: Constraints::default(),
        request_id: "req-2".to_owned(),
        wait: UpstreamWait::default(),
    };
    let Ok(prepared) = h.dispatch().prepare(call, route, req).await else {
        panic!("prepare refused");
    };
    let done = run_job(&h.dispatch(), prepared).await;
    assert_eq!(done.result.unwrap_err().code, ErrorCode::InsufficientQuota);
    assert!(h.upstream.calls().is_empty());
    assert_eq!(done.served.attempts, 0);
}

/// Writes a prepared request's job, then runs it (as the jobs layer does).
async fn run_job(d: &Dispatch<'_>, p: super::Prepared) -> Finished {
    let id = format!("imgjob_{}", uuid::Uuid::new_v4().simple());
    let new = d.new_job(&p, &id, "digest", None, None);
    d.store.create_job(new).await.unwrap();
    d.run(p, super::JobCtx::new(&id), None).await
}

/// A restart finds a job never sent (queued: failed, nothing booked) and one whose create may
/// have gone out without an answer recorded (submitting: unknown, its reservation booked).
#[tokio::test]
async fn resumed_jobs_end_as_documented_when_nothing_or_no_answer_is_known() {
    use crate::store::{jobs as rows, Op};
    let h = Handles::new();
    for (id, sent) in [("imgjob_q", false), ("imgjob_s", true)] {
        let new = rows::NewJob {
            id: id.to_owned(),
            key_id: "k1".to_owned(),
            team: None,
            digest: "d".to_owned(),
            public_model: "gpt-image-2-beta".to_owned(),
            spec: serde_json::to_string(&JobSpec::of(
                &ImageRequest::from_fields(
                    Operation::Generate,
                    Head::from_fields(json!({"prompt": "p"}).as_object().unwrap()).unwrap(),
                    json!({"prompt": "p"}).as_object().unwrap(),
                    vec![],
                    None,
                )
                .unwrap(),
            ))
            .unwrap(),
            request_id: "r".to_owned(),
            idempotency: None,
            callback_url: None,
        };
        let mut ops = vec![Op::InsertJob(Arc::new(new))];
        if sent {
            ops.push(Op::Attempt {
                job: id.to_owned(),
                epoch: None,
                attempt: 1,
                model: "gpt-image-2-beta".to_owned(),
                price_micros: 30_000,
                per_call: true,
                reserved_micros: 30_000,
            });
            ops.push(Op::Submitting {
                job: id.to_owned(),
                epoch: None,
                seq: 0,
                attempt: 1,
                model: "gpt-image-2-beta".to_owned(),
            });
        }
        h.store.write(ops).await.unwrap();
    }
    let unfinished = h.store.unfinished_jobs().await.unwrap();
    assert_eq!(unfinished.len(), 2);
    for job in unfinished {
        let id = job.id.clone();
        let state = h.dispatch().resume(job).await;
        let (want, booked) = if id == "imgjob_q" {
            (JobState::Failed, 0)
        } else {
            (JobState::Unknown, 30_000)
        };
        assert_eq!(state, want, "{id}");
        let crate::store::Store::Sqlite(lite) = &h.store else {
            unreachable!("the tests' store is SQLite")
        };
        let cost: i64 = lite
            .call(move |c| {
                Ok(c.query_row(
                    "SELECT SUM(cost_micros) FROM ledger WHERE job_id = ?1",
                    [&id],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(cost, booked);
    }
    // Nothing was sent by the restart, and the unknown job's price stays booked.
    assert!(h.upstream.calls().is_empty());
    assert_eq!(h.spend().0, "0.03");
}
