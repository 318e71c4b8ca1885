//! Table-driven tests: the catalog against the adapters' own checks, candidate order for a grid
//! of requests, constraints, and the circuit breaker.

use std::time::Duration;

use axum::http::HeaderMap;
use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::health::{Health, HealthView, Verdict};
use super::*;
use crate::config::{CircuitConfig, ModelsConfig, RoutingConfig};
use crate::model::{ImageFormat, ModelId, Quality};
use crate::request::{Head, ImageRef, ImageRequest, Operation};
use crate::upstream::{self, FailureKind};

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n0000";

fn upload() -> ImageRef {
    ImageRef::Bytes {
        data: Bytes::from_static(PNG),
        format: ImageFormat::Png,
    }
}

fn url(i: usize) -> ImageRef {
    ImageRef::Url(format!("https://example.com/{i}.png"))
}

/// A request for `route`, built the way the handlers build it.
fn build(
    route: &Route,
    fields: Value,
    images: Vec<ImageRef>,
    mask: Option<ImageRef>,
) -> ImageRequest {
    let mut map: Map<String, Value> = fields.as_object().cloned().unwrap_or_default();
    map.entry("prompt").or_insert(json!("a lighthouse"));
    let op = if images.is_empty() {
        Operation::Generate
    } else {
        Operation::Edit
    };
    let _ = route;
    let head = Head::from_fields(&map).unwrap();
    ImageRequest::from_fields(op, head, &map, images, mask).unwrap()
}

/// A gateway with no traffic yet: every model available, nothing observed.
fn fresh() -> HealthView {
    HealthView::fresh()
}

fn routing() -> Routing {
    Routing::new(RoutingConfig::default())
}

fn group(r: &Routing, name: &str) -> Route {
    r.resolve(&ModelsConfig::default(), name).unwrap()
}

#[test]
fn catalog_agrees_with_every_adapter() {
    let sizes = [
        json!(null),
        json!("1024x1024"),
        json!("1536x1024"),
        json!("2048x2048"),
        json!("3840x2160"),
        json!("512x512"),
        json!("1440x1440"),
        json!("1000x1000"),
    ];
    type Refs = fn() -> (Vec<ImageRef>, Option<ImageRef>);
    let refs: [(&str, Refs); 9] = [
        ("none", || (vec![], None)),
        ("1 url", || (vec![url(0)], None)),
        ("3 urls", || (vec![url(0), url(1), url(2)], None)),
        ("1 upload", || (vec![upload()], None)),
        ("2 uploads", || (vec![upload(), upload()], None)),
        ("upload+url", || (vec![upload(), url(0)], None)),
        ("upload+mask", || (vec![upload()], Some(upload()))),
        ("url+mask url", || (vec![url(0)], Some(url(9)))),
        ("upload+mask url", || (vec![upload()], Some(url(9)))),
    ];
    let extras = [
        json!({}),
        json!({"background": "transparent"}),
        json!({"resolution": "2K"}),
        json!({"n": 3, "quality": "high"}),
    ];
    let mut checked = 0;
    for model in ModelId::ALL {
        let route = Route::pinned(model);
        let caps = catalog::capabilities(model);
        for size in &sizes {
            for (refs_name, make) in &refs {
                for extra in &extras {
                    let mut fields = extra.clone();
                    fields["size"] = size.clone();
                    let (images, mask) = make();
                    let req = build(&route, fields.clone(), images, mask);
                    let by_catalog = caps.check(&req);
                    let by_plan = upstream::plan(model, &req)
                        .map(|_| ())
                        .map_err(|e| e.message);
                    assert_eq!(
                        by_catalog.is_ok(),
                        by_plan.is_ok(),
                        "{model} {refs_name} {fields}: catalog {by_catalog:?}, plan {by_plan:?}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, ModelId::COUNT * 8 * 9 * 4);
}

struct Case {
    name: &'static str,
    group: &'static str,
    fields: Value,
    refs: fn() -> (Vec<ImageRef>, Option<ImageRef>),
    want: &'static [(ModelId, &'static str)],
}

#[test]
fn candidate_order_for_a_grid_of_requests() {
    use ModelId::{All, Beta, Lite, SparkPix};
    let none = || (vec![], None);
    let cases = [
        Case {
            name: "auto 1K low: all's low tier is cheapest",
            group: "auto",
            fields: json!({"size": "1024x1024", "quality": "low"}),
            refs: none,
            want: &[
                (All, "0.005"),
                (SparkPix, "0.01"),
                (Beta, "0.03"),
                (Lite, "0.04"),
            ],
        },
        Case {
            name: "auto 1K medium",
            group: "auto",
            fields: json!({"size": "1024x1024", "quality": "medium"}),
            refs: none,
            want: &[
                (SparkPix, "0.01"),
                (All, "0.025"),
                (Beta, "0.03"),
                (Lite, "0.04"),
            ],
        },
        Case {
            name: "auto with no size or quality prices all at 1K medium",
            group: "auto",
            fields: json!({}),
            refs: none,
            want: &[
                (SparkPix, "0.01"),
                (All, "0.025"),
                (Beta, "0.03"),
                (Lite, "0.04"),
            ],
        },
        Case {
            name: "auto 1K high",
            group: "auto",
            fields: json!({"size": "1024x1024", "quality": "high"}),
            refs: none,
            want: &[
                (SparkPix, "0.01"),
                (Beta, "0.03"),
                (Lite, "0.04"),
                (All, "0.07"),
            ],
        },
        Case {
            name: "auto 2K high: SparkPix cannot make 2048 px",
            group: "auto",
            fields: json!({"size": "2048x2048", "quality": "high"}),
            refs: none,
            want: &[(Beta, "0.03"), (Lite, "0.04"), (All, "0.1")],
        },
        Case {
            name: "auto 4K low",
            group: "auto",
            fields: json!({"size": "3840x2160", "quality": "low"}),
            refs: none,
            want: &[(All, "0.015"), (Beta, "0.03"), (Lite, "0.04")],
        },
        Case {
            name: "auto n=4 multiplies every price",
            group: "auto",
            fields: json!({"size": "1024x1024", "quality": "low", "n": 4}),
            refs: none,
            want: &[
                (All, "0.02"),
                (SparkPix, "0.04"),
                (Beta, "0.12"),
                (Lite, "0.16"),
            ],
        },
        Case {
            name: "auto transparent background: only all",
            group: "auto",
            fields: json!({"background": "transparent"}),
            refs: none,
            want: &[(All, "0.025")],
        },
        Case {
            name: "auto edit with one URL: SparkPix's edit price",
            group: "auto",
            fields: json!({"quality": "medium"}),
            refs: || (vec![url(0)], None),
            want: &[
                (SparkPix, "0.013"),
                (All, "0.025"),
                (Beta, "0.03"),
                (Lite, "0.04"),
            ],
        },
        Case {
            // The SparkPix edit model may make (and bill) one image per reference; within the
            // tie tolerance of gpt-image-2-all's price, the faster model comes first.
            name: "auto edit with two URLs: SparkPix's edit price per reference",
            group: "auto",
            fields: json!({"quality": "medium"}),
            refs: || (vec![url(0), url(1)], None),
            want: &[
                (SparkPix, "0.026"),
                (All, "0.025"),
                (Beta, "0.03"),
                (Lite, "0.04"),
            ],
        },
        Case {
            name: "gpt-image-2 1K medium",
            group: "gpt-image-2",
            fields: json!({"size": "1024x1024"}),
            refs: none,
            want: &[(All, "0.025"), (Beta, "0.03"), (Lite, "0.04")],
        },
        Case {
            name: "gpt-image-2 edit with one upload: beta takes URLs only",
            group: "gpt-image-2",
            fields: json!({}),
            refs: || (vec![upload()], None),
            want: &[(All, "0.025"), (Lite, "0.04")],
        },
        Case {
            name: "gpt-image-2 edit with two uploads: lite takes one",
            group: "gpt-image-2",
            fields: json!({"quality": "high", "size": "1536x1024"}),
            refs: || (vec![upload(), upload()], None),
            want: &[(All, "0.07")],
        },
        Case {
            name: "gpt-image-2 upload with a mask",
            group: "gpt-image-2",
            fields: json!({"quality": "low"}),
            refs: || (vec![upload()], Some(upload())),
            want: &[(All, "0.005"), (Lite, "0.04")],
        },
        Case {
            name: "gpt-image-2 upload plus URL: all cannot mix them",
            group: "gpt-image-2",
            fields: json!({}),
            refs: || (vec![upload(), url(0)], None),
            want: &[(Lite, "0.04")],
        },
        Case {
            name: "OpenAI alias dall-e-2 means auto",
            group: "dall-e-2",
            fields: json!({"size": "1024x1024", "quality": "low"}),
            refs: none,
            want: &[
                (All, "0.005"),
                (SparkPix, "0.01"),
                (Beta, "0.03"),
                (Lite, "0.04"),
            ],
        },
    ];
    // Price order over every model that can take the request: the nearest-ratio policy keeps
    // beta (and SparkPix edits) in; `exact_sizes_drop_nearest_ratio_models` covers the default.
    let nearest = Constraints {
        size_policy: SizePolicy::Nearest,
        ..Constraints::default()
    };
    let r = routing();
    let models = ModelsConfig::default();
    for case in cases {
        let route = group(&r, case.group);
        let (images, mask) = (case.refs)();
        let req = build(&route, case.fields.clone(), images, mask);
        let got: Vec<(ModelId, String)> = r
            .choose(&models, &fresh(), &req, &route, nearest)
            .unwrap()
            .into_iter()
            .map(|c| (c.model, c.cost().to_string()))
            .collect();
        let want: Vec<(ModelId, String)> = case
            .want
            .iter()
            .map(|(m, c)| (*m, (*c).to_owned()))
            .collect();
        assert_eq!(got, want, "{}", case.name);
    }
}

#[test]
fn exact_sizes_drop_nearest_ratio_models() {
    use ModelId::{All, Beta, Lite, SparkPix};
    let r = routing();
    let models = ModelsConfig::default();
    let exact = Constraints::default();
    let order = |name: &str, fields: Value, images: Vec<ImageRef>| -> Vec<ModelId> {
        let route = group(&r, name);
        let req = build(&route, fields, images, None);
        match r.choose(&models, &fresh(), &req, &route, exact) {
            Ok(c) => c.iter().map(|c| c.model).collect(),
            Err(e) => panic!("{}", e.message),
        }
    };
    let low = json!({"size": "1024x1024", "quality": "low"});
    assert_eq!(order("auto", low.clone(), vec![]), [All, SparkPix, Lite]);
    assert_eq!(
        order(
            "gpt-image-2",
            json!({"size": "3840x2160", "quality": "high"}),
            vec![]
        ),
        [Lite, All]
    );
    // No size, or `auto`: nothing to get wrong, beta stays.
    for size in [json!(null), json!("auto")] {
        let fields = json!({"size": size, "quality": "high"});
        assert_eq!(order("gpt-image-2", fields, vec![]), [Beta, Lite, All]);
    }
    // SparkPix edits (and generations with references) make the nearest ratio too.
    let urls = || vec![url(0), url(1)];
    assert_eq!(order("auto", low, urls()), [All, Lite]);
    assert_eq!(
        order("auto", json!({"quality": "low"}), urls()),
        [All, SparkPix, Beta, Lite]
    );
    // The refusal says why and how to opt in.
    let route = group(&r, "gpt-image-2");
    let req = build(
        &route,
        json!({"size": "1536x1024"}),
        vec![url(0), url(1), url(2)],
        None,
    );
    let route_beta_only = Route {
        members: vec![Beta],
        ..route
    };
    let e = r
        .choose(&models, &fresh(), &req, &route_beta_only, exact)
        .unwrap_err();
    assert_eq!(
        (e.status().as_u16(), e.code.as_str()),
        (400, "no_eligible_model")
    );
    assert!(
        e.message.contains("x-imagegate-size-policy"),
        "{}",
        e.message
    );
}

#[test]
fn url_answers_go_only_to_models_that_make_the_format() {
    use ModelId::{All, Beta, Lite, SparkPix};
    let r = routing();
    let models = ModelsConfig::default();
    let route = group(&r, "auto");
    let order = |fields: Value| -> Vec<ModelId> {
        let req = build(&route, fields, vec![], None);
        r.choose(&models, &fresh(), &req, &route, Constraints::default())
            .unwrap()
            .iter()
            .map(|c| c.model)
            .collect()
    };
    let base = |format: &str, response: &str| json!({"quality": "low", "output_format": format, "response_format": response});
    assert_eq!(order(base("webp", "url")), [All, Lite]);
    assert_eq!(order(base("jpeg", "url")), [All, SparkPix, Lite]);
    assert_eq!(order(base("png", "url")), [All, Beta, Lite]);
    // b64_json: the gateway converts, every model serves.
    assert_eq!(order(base("webp", "b64_json")), [All, SparkPix, Beta, Lite]);
}

#[test]
fn near_ties_go_to_the_healthier_or_faster_model() {
    let mut models = ModelsConfig::default();
    models.get_mut(ModelId::Beta).price_usd = Some(0.026);
    let r = routing();
    let route = group(&r, "gpt-image-2");
    let req = build(&route, json!({"size": "1024x1024"}), vec![], None);
    let nearest = Constraints {
        size_policy: SizePolicy::Nearest,
        ..Constraints::default()
    };
    let health = Health::new(CircuitConfig::default());
    let order = |h: &Health| -> Vec<ModelId> {
        r.choose(
            &models,
            &h.view(&route.members, req.quality, None),
            &req,
            &route,
            nearest,
        )
        .unwrap()
        .iter()
        .map(|c| c.model)
        .collect()
    };
    // all $0.025 vs beta $0.026: a tie; beta's typical latency (40 s) beats all's (90 s).
    assert_eq!(order(&health), [ModelId::Beta, ModelId::All, ModelId::Lite]);
    // Failures make beta the less healthy of the two.
    for _ in 0..3 {
        let a = health.admit(ModelId::Beta).unwrap();
        a.finish(
            Quality::Auto,
            Verdict::Failure(FailureKind::ServerError),
            Duration::ZERO,
        );
    }
    let a = health.admit(ModelId::All).unwrap();
    a.finish(Quality::Auto, Verdict::Success, Duration::from_secs(50));
    assert_eq!(order(&health), [ModelId::All, ModelId::Beta, ModelId::Lite]);
}

/// The success ratio is over the kept outcomes only: failures that left the window (here,
/// pushed out by newer outcomes) no longer count.
#[test]
fn the_success_ratio_forgets_outcomes_that_left_the_window() {
    let health = Health::new(CircuitConfig {
        enabled: false,
        ..CircuitConfig::default()
    });
    let record = |verdict: Verdict| {
        let a = health.admit(ModelId::All).unwrap();
        a.finish(Quality::Auto, verdict, Duration::from_millis(10));
    };
    for _ in 0..3 {
        record(Verdict::Failure(FailureKind::ServerError));
    }
    for _ in 0..7 {
        record(Verdict::Success);
    }
    let (ok, _) = health.score(ModelId::All, Quality::Auto);
    assert!((ok - 0.7).abs() < 1e-9, "{ok}");
    for _ in 0..2_000 {
        record(Verdict::Success);
    }
    assert_eq!(health.score(ModelId::All, Quality::Auto).0, 1.0);
    record(Verdict::Failure(FailureKind::Timeout));
    let (ok, _) = health.score(ModelId::All, Quality::Auto);
    assert!(ok < 1.0 && ok > 0.99, "{ok}");
}

#[test]
fn constraints_exclude_and_explain() {
    let r = routing();
    let models = ModelsConfig::default();
    let route = group(&r, "gpt-image-2");
    let req = build(&route, json!({"size": "1024x1024"}), vec![], None);

    // The nearest-ratio policy keeps beta in the running: this test is about the ceilings.
    let limits = Constraints {
        max_cost: Some(Usd::from_dollars(0.03)),
        max_latency: None,
        size_policy: SizePolicy::Nearest,
    };
    let got: Vec<ModelId> = r
        .choose(&models, &fresh(), &req, &route, limits)
        .unwrap()
        .iter()
        .map(|c| c.model)
        .collect();
    assert_eq!(got, [ModelId::All, ModelId::Beta]);

    let limits = Constraints {
        max_cost: Some(Usd::from_dollars(0.02)),
        max_latency: None,
        size_policy: SizePolicy::Nearest,
    };
    let e = r
        .choose(&models, &fresh(), &req, &route, limits)
        .unwrap_err();
    assert_eq!(
        (e.status().as_u16(), e.code.as_str()),
        (400, "no_eligible_model")
    );
    assert_eq!(e.param.as_deref(), Some(MAX_COST_HEADER));
    for m in [
        "gpt-image-2-all costs $0.025",
        "gpt-image-2-beta costs $0.03",
        "gpt-image-2-lite costs $0.04",
    ] {
        assert!(e.message.contains(m), "{}", e.message);
    }

    // Latency budget with no traffic yet: the catalog's typical latencies decide.
    let limits = Constraints {
        max_cost: None,
        max_latency: Some(Duration::from_secs(30)),
        size_policy: SizePolicy::Nearest,
    };
    let got = r.choose(&models, &fresh(), &req, &route, limits).unwrap();
    assert_eq!(
        got.iter().map(|c| c.model).collect::<Vec<_>>(),
        [ModelId::Lite]
    );
    let limits = Constraints {
        max_cost: None,
        max_latency: Some(Duration::from_secs(5)),
        size_policy: SizePolicy::Nearest,
    };
    let e = r
        .choose(&models, &fresh(), &req, &route, limits)
        .unwrap_err();
    assert_eq!(
        (e.status().as_u16(), e.code.as_str()),
        (503, "no_healthy_upstream")
    );
    assert!(e.message.contains("p90 latency"), "{}", e.message);
}

#[test]
fn capability_refusal_names_each_model() {
    let r = routing();
    let route = group(&r, "gpt-image-2");
    let refs = vec![upload(), url(0)];
    let req = build(&route, json!({"background": "transparent"}), refs, None);
    let e = r
        .choose(
            &ModelsConfig::default(),
            &fresh(),
            &req,
            &route,
            Constraints::default(),
        )
        .unwrap_err();
    assert_eq!(
        (e.status().as_u16(), e.code.as_str()),
        (400, "no_eligible_model")
    );
    assert!(
        e.message
            .contains("gpt-image-2-all cannot mix uploaded images with image URLs")
            && e.message
                .contains("gpt-image-2-lite cannot make transparent backgrounds")
            && e.message
                .contains("gpt-image-2-beta takes reference images as URLs only"),
        "{}",
        e.message
    );
}

#[test]
fn names_resolve_and_disabled_models_drop_out() {
    let r = routing();
    let mut models = ModelsConfig::default();
    assert_eq!(
        group(&r, "gpt-image-1").members,
        [ModelId::All, ModelId::Lite, ModelId::Beta]
    );
    assert!(group(&r, "gpt-image-2-lite").pinned);
    assert!(!group(&r, "auto").pinned);
    models.get_mut(ModelId::All).enabled = false;
    let route = r.resolve(&models, "gpt-image-2").unwrap();
    assert_eq!(route.members, [ModelId::Lite, ModelId::Beta]);
    let e = r.resolve(&models, "gpt-image-2-all").unwrap_err();
    assert_eq!(e.code.as_str(), "model_not_found");
    assert_eq!(
        r.resolve(&models, "dall-e-9").unwrap_err().code.as_str(),
        "model_not_found"
    );
}

#[test]
fn headers_parse_or_are_refused() {
    let mut h = HeaderMap::new();
    h.insert(MAX_COST_HEADER, "0.05".parse().unwrap());
    h.insert(MAX_LATENCY_HEADER, "12.5".parse().unwrap());
    let c = Constraints::from_headers(&h).unwrap();
    assert_eq!(c.max_cost, Some(Usd(50_000)));
    assert_eq!(c.max_latency, Some(Duration::from_millis(12_500)));
    h.insert(MAX_COST_HEADER, "cheap".parse().unwrap());
    let e = Constraints::from_headers(&h).unwrap_err();
    assert_eq!(e.param.as_deref(), Some(MAX_COST_HEADER));
}
