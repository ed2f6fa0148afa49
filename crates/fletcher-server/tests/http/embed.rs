//! `/embed` and `/`: shapes, values, options and headers.

use serde_json::json;

use crate::common::*;

#[test]
fn embed_matches_reference_vectors() {
    let refs = references(4);
    let texts: Vec<&str> = refs.iter().map(|(t, _)| t.as_str()).collect();
    let reply = send(post_json("/embed", &json!({ "inputs": texts })));
    let vectors = reply.vectors();
    assert_eq!(vectors.len(), 4);
    for ((text, want), got) in refs.iter().zip(&vectors) {
        assert_eq!(got.len(), 384);
        let cos = cosine(got, want);
        assert!(cos >= 0.99999, "{text:?}: cosine {cos}");
    }
}

#[test]
fn single_string_and_root_route_answer_alike() {
    let one = send(post_json("/embed", &json!({"inputs": "hello world"}))).vectors();
    let root = send(post_json("/", &json!({"inputs": ["hello world"]}))).vectors();
    assert_eq!(one.len(), 1);
    assert!((norm(&one[0]) - 1.0).abs() < 1e-5);
    assert!(max_diff(&one[0], &root[0]) <= 1e-6);
}

#[test]
fn normalize_false_and_dimensions_are_honoured() {
    let raw = send(post_json(
        "/embed",
        &json!({"inputs": "hello world", "normalize": false}),
    ))
    .vectors();
    assert!((norm(&raw[0]) - 1.0).abs() > 1e-2, "norm {}", norm(&raw[0]));
    let short = send(post_json(
        "/embed",
        &json!({"inputs": "hello world", "dimensions": 128}),
    ))
    .vectors();
    assert_eq!(short[0].len(), 128);
    assert!((norm(&short[0]) - 1.0).abs() < 1e-5);
    let scale = norm(&raw[0][..128]) as f32;
    let expected: Vec<f32> = raw[0][..128].iter().map(|x| x / scale).collect();
    assert!(max_diff(&short[0], &expected) < 1e-5);
}

#[test]
fn truncation_direction_changes_long_texts_only() {
    let long = format!("start {} end of the text", "word ".repeat(600));
    let right = send(post_json("/embed", &json!({"inputs": long}))).vectors();
    for side in ["left", "Left"] {
        let left = send(post_json(
            "/embed",
            &json!({"inputs": long, "truncate": true, "truncation_direction": side}),
        ))
        .vectors();
        assert!(cosine(&left[0], &right[0]) < 0.999, "{side}: no change");
    }
    let short_left = send(post_json(
        "/embed",
        &json!({"inputs": "short", "truncation_direction": "Right"}),
    ))
    .vectors();
    assert_eq!(short_left.len(), 1);
}

#[test]
fn timing_and_request_id_headers_are_set() {
    let request = axum::http::Request::post("/embed")
        .header("content-type", "application/json")
        .header("x-request-id", "trace-me-42")
        .body(axum::body::Body::from(r#"{"inputs":"hi"}"#))
        .unwrap();
    let reply = send(request);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["x-request-id"], "trace-me-42");
    for name in [
        "x-tokenization-time",
        "x-queue-time",
        "x-inference-time",
        "x-total-time",
    ] {
        let value = reply.headers[name].to_str().unwrap();
        assert!(value.parse::<u64>().is_ok(), "{name}: {value:?}");
    }
    let generated = send(post_json("/embed", &json!({"inputs": "hi"})));
    let id = generated.headers["x-request-id"].to_str().unwrap();
    assert!(uuid_like(id), "{id}");
}

fn uuid_like(id: &str) -> bool {
    id.len() == 36 && id.chars().filter(|&c| c == '-').count() == 4
}

#[test]
fn dataset_parameter_reaches_the_metrics() {
    let reply = send(post_json(
        "/embed?dataset=unit-dataset",
        &json!({"inputs": ["a", "b", "c"]}),
    ));
    assert_eq!(reply.status, 200);
    let metrics = engine().metrics().render();
    assert!(
        metrics.contains("fletcher_dataset_inputs_total{dataset=\"unit-dataset\"} 3"),
        "{metrics}"
    );
}
