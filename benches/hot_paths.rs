//! Micro-benchmarks of the gateway's hot pure code: request translation (normalising the
//! OpenAI fields and planning the upstream call), the routing choice (capabilities, exact
//! prices, health order) and the base64 path of result downloads.
//!
//!     cargo bench --bench hot_paths

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark that cannot set itself up should stop loudly"
)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use imagegate::config::{ModelsConfig, RoutingConfig};
use imagegate::model::{ImageFormat, ModelId};
use imagegate::request::{Head, ImageRef, ImageRequest, Operation};
use imagegate::routing::health::{Health, HealthView};
use imagegate::routing::{Constraints, Routing};
use imagegate::upstream::{self, results};
use serde_json::{json, Map, Value};
use std::hint::black_box;

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

/// Parses as a handler does: the head, the model name resolved (a pinned id here), the rest.
fn parse(op: Operation, f: &Map<String, Value>, images: Vec<ImageRef>) -> (ModelId, ImageRequest) {
    let head = Head::from_fields(f).unwrap();
    let model = head
        .model
        .as_deref()
        .unwrap_or("gpt-image-2-all")
        .parse::<ModelId>()
        .unwrap();
    (
        model,
        ImageRequest::from_fields(op, head, f, images, None).unwrap(),
    )
}

/// A PNG of `len` bytes (valid header; the rest is filler the gateway never decodes).
fn png(len: usize) -> Bytes {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, 64, 64);
    enc.set_color(png::ColorType::Rgb);
    let mut w = enc.write_header().unwrap();
    w.write_image_data(&[7u8; 64 * 64 * 3]).unwrap();
    drop(w);
    out.resize(len.max(out.len()), 0x5a);
    Bytes::from(out)
}

fn translation(c: &mut Criterion) {
    let mut g = c.benchmark_group("translate");
    let cases = [
        (
            "generate/gpt-image-2-all sync",
            json!({"model":"gpt-image-2-all","prompt":"a lighthouse at dusk","size":"1024x1024","quality":"high","n":2}),
        ),
        (
            "generate/gpt-image-2-all async",
            json!({"model":"gpt-image-2-all","prompt":"a lighthouse","aspect_ratio":"16:9","resolution":"2K"}),
        ),
        (
            "generate/gpt-image-2-beta",
            json!({"model":"gpt-image-2-beta","prompt":"a lighthouse","size":"1536x1024","image_urls":["https://x.test/a.png","https://x.test/b.png"]}),
        ),
        (
            "generate/sparkpix",
            json!({"model":"sparkpix","prompt":"a cat","size":"1024x768","seed":7,"response_format":"url"}),
        ),
    ];
    for (name, body) in cases {
        let f = fields(body);
        g.bench_function(name, |b| {
            b.iter(|| {
                let (model, req) = parse(Operation::Generate, black_box(&f), Vec::new());
                upstream::plan(model, &req).unwrap()
            });
        });
    }
    // An edit with 16 uploads of 2 MiB: planning must share the bytes, not copy them.
    let uploads: Vec<ImageRef> = (0..16)
        .map(|_| ImageRef::Bytes {
            data: png(2 << 20),
            format: ImageFormat::Png,
        })
        .collect();
    let f =
        fields(json!({"model":"gpt-image-2-all","prompt":"both on one shelf","size":"1024x1024"}));
    g.bench_function("edit/gpt-image-2-all 16 x 2 MiB uploads", |b| {
        b.iter(|| {
            let (model, req) = parse(Operation::Edit, &f, uploads.clone());
            upstream::plan(model, &req).unwrap()
        });
    });
    g.finish();
}

fn routing_choice(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    let routing = Routing::new(RoutingConfig::default());
    let health = Health::new(RoutingConfig::default().circuit);
    let models = ModelsConfig::default();
    let cases = [
        (
            "auto, 1K medium",
            "auto",
            json!({"prompt":"a lighthouse","size":"1024x1024","quality":"medium"}),
        ),
        (
            "gpt-image-2, 2K high, n=4",
            "gpt-image-2",
            json!({"prompt":"a lighthouse","size":"2048x2048","quality":"high","n":4}),
        ),
        (
            "dall-e-3 alias, 2 reference URLs",
            "dall-e-3",
            json!({"prompt":"a lighthouse","image_urls":["https://x.test/a.png","https://x.test/b.png"]}),
        ),
    ];
    for (name, group, body) in cases {
        let route = routing.resolve(&models, group).unwrap();
        let f = fields(body);
        let head = Head::from_fields(&f).unwrap();
        let req =
            ImageRequest::from_fields(Operation::Generate, head, &f, Vec::new(), None).unwrap();
        // The health view is read once per request, then routing decides from it alone.
        g.bench_function(name, |b| {
            b.iter(|| {
                let view: HealthView = health.view(&route.members, req.quality, None);
                routing
                    .choose(
                        &models,
                        &view,
                        black_box(&req),
                        &route,
                        Constraints::default(),
                    )
                    .unwrap()
            });
        });
    }
    g.finish();
}

fn base64_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("result_b64");
    g.sample_size(20);
    for (name, len) in [
        ("2 MiB answer", 1_572_864usize),
        ("12 MiB answer", 9_437_184),
    ] {
        let file = png(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("png as png, {name}"), |b| {
            b.iter_batched(
                || file.clone(),
                |f| results::encode(f, ImageFormat::Png),
                BatchSize::SmallInput,
            );
        });
    }
    // A JPEG result for a PNG request: decode, re-encode, then base64.
    let mut jpeg = Vec::new();
    let pixels: Vec<u8> = (0..1024 * 1024 * 3).map(|i| (i % 251) as u8).collect();
    jpeg_encoder::Encoder::new(&mut jpeg, 85)
        .encode(&pixels, 1024, 1024, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    let jpeg = Bytes::from(jpeg);
    g.throughput(Throughput::Bytes(jpeg.len() as u64));
    g.bench_function("jpeg 1024x1024 to png", |b| {
        b.iter_batched(
            || jpeg.clone(),
            |f| results::encode(f, ImageFormat::Png),
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

criterion_group!(benches, translation, routing_choice, base64_path);
criterion_main!(benches);
