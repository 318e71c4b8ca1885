//! `GET /v1/models` and `GET /v1/models/{id}`.

use imagegate::model::ModelId;

use crate::support::{start, start_with};

#[tokio::test]
async fn lists_and_retrieves_models() {
    let env = start().await;
    let a = env.get("/v1/models").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["object"], "list");
    let ids: Vec<&str> = a.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "gpt-image-2-lite",
            "gpt-image-2-all",
            "gpt-image-2-beta",
            "sparkpix",
            "auto",
            "gpt-image-2",
            "chatgpt-image-latest",
            "dall-e-2",
            "dall-e-3",
            "gpt-image-1",
            "gpt-image-1-mini",
            "gpt-image-1.5",
            "gpt-image-2-2026-04-21",
        ]
    );
    for m in a.body["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model");
        assert!(m["created"].as_u64().is_some() && m["owned_by"].is_string());
    }
    let a = env.get("/v1/models/sparkpix").await;
    assert_eq!((a.status, a.body["id"].as_str()), (200, Some("sparkpix")));
    let a = env.get("/v1/models/gpt-image-1").await;
    assert_eq!(
        (a.status, a.body["id"].as_str()),
        (200, Some("gpt-image-1"))
    );
    let a = env.get("/v1/models/gpt-9").await;
    assert_eq!((a.status, a.code()), (404, "model_not_found"));
}

#[tokio::test]
async fn disabled_models_are_hidden_and_refused() {
    let env = start_with(|c| {
        c.models.get_mut(ModelId::Beta).enabled = false;
        c.routing
            .groups
            .insert("beta-only".into(), vec![ModelId::Beta]);
    })
    .await;
    let a = env.get("/v1/models").await;
    let text = a.body.to_string();
    assert!(
        !text.contains("gpt-image-2-beta") && !text.contains("beta-only"),
        "{text}"
    );
    assert!(text.contains("\"gpt-image-2\""), "{text}");
    let a = env
        .generate(serde_json::json!({"model": "gpt-image-2-beta", "prompt": "p"}))
        .await;
    assert_eq!((a.status, a.code()), (404, "model_not_found"));
}
