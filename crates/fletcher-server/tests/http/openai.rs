//! `POST /v1/embeddings` in OpenAI's shapes.

use base64::prelude::{Engine as _, BASE64_STANDARD};
use serde_json::{json, Value};

use crate::common::*;

#[test]
fn float_and_base64_answers_agree_with_embed() {
    let texts = [
        "hello world",
        "The quick brown fox jumps over the lazy dog.",
    ];
    let native = send(post_json("/embed", &json!({ "inputs": texts }))).vectors();

    let reply = send(post_json(
        "/v1/embeddings",
        &json!({"input": texts, "model": "my-model"}),
    ));
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "my-model");
    assert_eq!(body["usage"]["prompt_tokens"], 4 + 12);
    assert_eq!(body["usage"]["total_tokens"], 4 + 12);
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        let v: Vec<f32> = serde_json::from_value(item["embedding"].clone()).unwrap();
        assert!(max_diff(&v, &native[i]) <= 1e-6);
    }

    let reply = send(post_json(
        "/v1/embeddings",
        &json!({"input": texts, "model": "m", "encoding_format": "base64"}),
    ));
    let body = reply.json();
    for (i, item) in body["data"].as_array().unwrap().iter().enumerate() {
        let bytes = BASE64_STANDARD
            .decode(item["embedding"].as_str().unwrap())
            .unwrap();
        let v: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(v, native[i]);
    }
}

#[test]
fn model_defaults_to_the_loaded_id_and_dimensions_apply() {
    let reply = send(post_json(
        "/v1/embeddings",
        &json!({"input": "hi", "dimensions": 64, "user": "someone"}),
    ));
    let body = reply.json();
    assert_eq!(reply.status, 200, "{body}");
    let model = body["model"].as_str().unwrap();
    assert!(model.ends_with("all-MiniLM-L6-v2"), "{model}");
    let v: Vec<f32> = serde_json::from_value(body["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(v.len(), 64);
}

fn assert_openai_error(body: &Value, kind: &str, param: Option<&str>, fact: &str) {
    let error = &body["error"];
    assert_eq!(error["type"], kind, "{body}");
    assert_eq!(error["param"].as_str(), param, "{body}");
    assert!(error["code"].is_string(), "{body}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains(fact), "{message:?} lacks {fact:?}");
}

#[test]
fn errors_take_openai_shape() {
    let reply = send(post_json(
        "/v1/embeddings",
        &json!({"input": [[101, 2088, 102]]}),
    ));
    assert_eq!(reply.status, 422);
    assert_openai_error(
        &reply.json(),
        "invalid_request_error",
        Some("input"),
        "token ids",
    );

    let reply = send(post_json("/v1/embeddings", &json!({"input": [1, 2, 3]})));
    assert_eq!(reply.status, 422);

    let reply = send(post_json(
        "/v1/embeddings",
        &json!({"input": "a", "encoding_format": "int8"}),
    ));
    assert_eq!(reply.status, 422);
    assert_openai_error(
        &reply.json(),
        "invalid_request_error",
        Some("encoding_format"),
        "int8",
    );

    let reply = send(post_raw("/v1/embeddings", "application/json", "{"));
    assert_eq!(reply.status, 400);
    assert_openai_error(
        &reply.json(),
        "invalid_request_error",
        None,
        "malformed JSON",
    );

    let reply = send(post_json("/v1/embeddings", &json!({"input": []})));
    assert_eq!(reply.status, 422);
    assert_openai_error(
        &reply.json(),
        "invalid_request_error",
        Some("input"),
        "empty",
    );

    let reply = send_with(
        fletcher_server::Settings {
            max_client_batch_size: 1000,
            ..Default::default()
        },
        post_json("/v1/embeddings", &json!({ "input": vec!["x"; 65] })),
    );
    assert_eq!(reply.status, 429);
    assert_openai_error(&reply.json(), "rate_limit_error", None, "overloaded");
}
