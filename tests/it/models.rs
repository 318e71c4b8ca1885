//! `GET /v1/models` and `GET /v1/models/{id}`.

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
            "sparkpix"
        ]
    );
    for m in a.body["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model");
        assert!(m["created"].as_u64().is_some() && m["owned_by"].is_string());
    }
    let a = env.get("/v1/models/sparkpix").await;
    assert_eq!((a.status, a.body["id"].as_str()), (200, Some("sparkpix")));
    let a = env.get("/v1/models/gpt-9").await;
    assert_eq!((a.status, a.code()), (404, "model_not_found"));
}

#[tokio::test]
async fn disabled_models_are_hidden_and_refused() {
    let env = start_with(|c| c.models.beta.enabled = false).await;
    let a = env.get("/v1/models").await;
    assert!(!a.body.to_string().contains("gpt-image-2-beta"));
    let a = env
        .generate(serde_json::json!({"model": "gpt-image-2-beta", "prompt": "p"}))
        .await;
    assert_eq!((a.status, a.code()), (404, "model_not_found"));
}
