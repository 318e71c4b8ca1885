//! The circuit breaker and latency tracking, driven directly.

use std::time::Duration;

use super::*;
use crate::config::CircuitConfig;
use crate::model::{ModelId, Quality};
use crate::upstream::failure::FailureKind;

fn breaker() -> Health {
    Health::new(CircuitConfig {
        enabled: true,
        consecutive_failures: 3,
        error_ratio: 0.5,
        window: Duration::from_secs(60),
        min_requests: 6,
        cooldown: Duration::from_secs(30),
        out_of_credits_cooldown: Duration::from_secs(600),
    })
}

fn fail(h: &Health, m: ModelId, kind: FailureKind) {
    h.admit(m)
        .unwrap()
        .finish(Quality::Low, Verdict::of(kind), Duration::ZERO);
}

fn succeed(h: &Health, m: ModelId, secs: u64) {
    h.admit(m)
        .unwrap()
        .finish(Quality::Low, Verdict::Success, Duration::from_secs(secs));
}

#[tokio::test(start_paused = true)]
async fn circuit_opens_half_opens_and_closes() {
    let h = breaker();
    let m = ModelId::Beta;
    fail(&h, m, FailureKind::ServerError);
    fail(&h, m, FailureKind::Connect);
    assert_eq!(h.state(m), CircuitState::Closed);
    fail(&h, m, FailureKind::Malformed);
    assert_eq!(h.state(m), CircuitState::Open);
    assert!(h.admit(m).is_none(), "open: nothing goes through");
    assert!(matches!(
        h.availability(m),
        Availability::Unavailable { .. }
    ));

    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(h.availability(m), Availability::Available);
    let probe = h.admit(m).unwrap();
    assert!(probe.is_probe());
    assert!(h.admit(m).is_none(), "one probe at a time");
    // The probe fails: open again for another cooldown.
    probe.finish(
        Quality::Low,
        Verdict::Failure(FailureKind::ServerError),
        Duration::ZERO,
    );
    assert_eq!(h.state(m), CircuitState::Open);

    tokio::time::advance(Duration::from_secs(31)).await;
    // A probe whose caller went away is given back.
    drop(h.admit(m).unwrap());
    let probe = h.admit(m).unwrap();
    probe.finish(Quality::Low, Verdict::Success, Duration::from_secs(1));
    assert_eq!(h.state(m), CircuitState::Closed);
    assert!(!h.admit(m).unwrap().is_probe());
    assert_eq!(h.snapshot(m).times_opened, 2);
}

#[tokio::test(start_paused = true)]
async fn error_ratio_and_out_of_credits() {
    let h = breaker();
    let m = ModelId::All;
    for _ in 0..3 {
        succeed(&h, m, 1);
        fail(&h, m, FailureKind::TaskFailed);
    }
    assert_eq!(h.state(m), CircuitState::Open, "3 of 6 failed");

    let m = ModelId::Lite;
    // Neutral outcomes (the prompt's fault) never open a circuit.
    for _ in 0..10 {
        fail(&h, m, FailureKind::PolicyRejected);
    }
    assert_eq!(h.state(m), CircuitState::Closed);
    fail(&h, m, FailureKind::OutOfCredits);
    assert_eq!(h.state(m), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(300)).await;
    assert_eq!(h.state(m), CircuitState::Open, "402 benches for longer");
    tokio::time::advance(Duration::from_secs(301)).await;
    assert_eq!(h.state(m), CircuitState::HalfOpen);
    let snap = h.snapshot(m);
    assert_eq!(snap.last_error.map(|e| e.kind), Some("out_of_credits"));
}

#[test]
fn a_disabled_breaker_never_opens() {
    let h = Health::new(CircuitConfig {
        enabled: false,
        ..CircuitConfig::default()
    });
    for _ in 0..20 {
        fail(&h, ModelId::All, FailureKind::ServerError);
    }
    fail(&h, ModelId::All, FailureKind::OutOfCredits);
    assert_eq!(h.state(ModelId::All), CircuitState::Closed);
    assert!(!h.admit(ModelId::All).unwrap().is_probe());
    assert_eq!(h.snapshot(ModelId::All).error_ratio, Some(1.0));
}

#[tokio::test(start_paused = true)]
async fn latency_percentiles_per_quality() {
    let h = breaker();
    let m = ModelId::SparkPix;
    for s in 1..=10 {
        succeed(&h, m, s);
    }
    assert_eq!(h.p90(m, Quality::Low, 3), Some(Duration::from_secs(9)));
    assert_eq!(
        h.p90(m, Quality::High, 3),
        None,
        "no high-quality traffic yet"
    );
    assert_eq!(h.p90(m, Quality::Low, 11), None, "not enough samples");
    let snap = h.snapshot(m);
    assert_eq!(snap.latency[0].p50_s, Some(5.0));
    assert_eq!(snap.latency[0].p99_s, Some(10.0));
}
