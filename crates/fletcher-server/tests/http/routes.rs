//! `/tokenize`, `/info`, `/health`, `/metrics` and the API key.

use axum::body::Body;
use axum::http::Request;
use fletcher_server::{ApiKey, Settings};
use serde_json::json;

use crate::common::*;

#[test]
fn tokenize_answers_tei_tokens() {
    let reply = send(post_json("/tokenize", &json!({"inputs": "hello world"})));
    let body = reply.json();
    assert_eq!(reply.status, 200, "{body}");
    assert_eq!(
        body,
        json!([[
            {"id": 101, "text": "[CLS]", "special": true, "start": null, "stop": null},
            {"id": 7592, "text": "hello", "special": false, "start": 0, "stop": 5},
            {"id": 2088, "text": "world", "special": false, "start": 6, "stop": 11},
            {"id": 102, "text": "[SEP]", "special": true, "start": null, "stop": null},
        ]])
    );
    let reply = send(post_json(
        "/tokenize",
        &json!({"inputs": ["hello world", "hi"], "add_special_tokens": false}),
    ));
    let body = reply.json();
    assert_eq!(body[0].as_array().unwrap().len(), 2);
    assert_eq!(body[1][0]["id"], 7632);
    send(post_json("/tokenize", &json!({"inputs": []}))).assert_error(
        422,
        "Validation",
        &["empty"],
    );
}

#[test]
fn info_reports_model_and_limits() {
    let settings = Settings {
        max_client_batch_size: 77,
        payload_limit: 12345,
        ..Settings::default()
    };
    let body = send_with(settings, get("/info")).json();
    assert!(body["model_id"]
        .as_str()
        .unwrap()
        .ends_with("all-MiniLM-L6-v2"));
    assert_eq!(body["dimension"], 384);
    assert_eq!(body["max_input_length"], 256);
    assert_eq!(body["pooling"], "mean");
    assert_eq!(body["max_concurrent_inputs"], MAX_CONCURRENT_INPUTS);
    assert_eq!(body["max_batch_tokens"], 16_384);
    assert_eq!(body["max_client_batch_size"], 77);
    assert_eq!(body["payload_limit"], 12345);
    assert_eq!(body["devices"], json!(["cpu:0"]));
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn health_and_metrics_are_open() {
    let reply = send(get("/health"));
    assert_eq!(reply.status, 200);
    send(post_json("/embed", &json!({"inputs": "count me"})));
    let reply = send(get("/metrics"));
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    assert!(text.contains("fletcher_request_duration_seconds_count{route=\"/embed\"}"));
    assert!(text.contains("fletcher_gpu_batch_count_total{device=\"cpu:0\"}"));
}

fn keyed() -> Settings {
    Settings {
        api_key: Some(ApiKey::from("s3cret".to_owned())),
        ..Settings::default()
    }
}

fn with_auth(path: &str, auth: Option<&str>) -> Request<Body> {
    let mut builder = Request::post(path).header("content-type", "application/json");
    if let Some(value) = auth {
        builder = builder.header("authorization", value);
    }
    builder
        .body(Body::from(r#"{"inputs":"hi","input":"hi"}"#))
        .unwrap()
}

#[test]
fn api_key_guards_inference_routes_only() {
    for path in ["/embed", "/", "/tokenize"] {
        send_with(keyed(), with_auth(path, None)).assert_error(401, "Unauthorized", &["API key"]);
        send_with(keyed(), with_auth(path, Some("Bearer wrong"))).assert_error(
            401,
            "Unauthorized",
            &[],
        );
        let ok = send_with(keyed(), with_auth(path, Some("Bearer s3cret")));
        assert_eq!(ok.status, 200, "{path}: {:?}", ok.body);
    }
    send_with(keyed(), get("/info")).assert_error(401, "Unauthorized", &[]);

    let reply = send_with(keyed(), with_auth("/v1/embeddings", Some("Bearer nope")));
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["code"], "invalid_api_key");
    let reply = send_with(keyed(), with_auth("/v1/embeddings", Some("Bearer s3cret")));
    assert_eq!(reply.status, 200);

    assert_eq!(send_with(keyed(), get("/health")).status, 200);
    assert_eq!(send_with(keyed(), get("/metrics")).status, 200);
}
