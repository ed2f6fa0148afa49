//! Every class of bad request, answered with its status and a JSON body.

use fletcher_server::Settings;
use serde_json::json;

use crate::common::*;

#[test]
fn malformed_json_is_400() {
    let reply = send(post_raw("/embed", "application/json", r#"{"inputs": "#));
    reply.assert_error(400, "Validation", &["malformed JSON", "EOF"]);
    let reply = send(post_raw("/embed", "application/json", "not json"));
    reply.assert_error(400, "Validation", &["line 1"]);
}

#[test]
fn invalid_utf8_is_400() {
    let body: Vec<u8> = [&b"{\"inputs\": \""[..], &[0xff, 0xfe], b"\"}"].concat();
    let reply = send(post_raw("/embed", "application/json", body));
    reply.assert_error(400, "Validation", &["unicode"]);
}

#[test]
fn wrong_field_types_are_422() {
    let reply = send(post_json("/embed", &json!({"inputs": 5})));
    reply.assert_error(422, "Validation", &["inputs", "a number"]);
    let reply = send(post_json(
        "/embed",
        &json!({"inputs": "a", "normalize": "yes"}),
    ));
    reply.assert_error(422, "Validation", &["invalid type"]);
    let reply = send(post_json("/embed", &json!({"text": "a"})));
    reply.assert_error(422, "Validation", &["missing field `inputs`"]);
    let reply = send(post_json("/embed", &json!({"inputs": ["a", 7]})));
    reply.assert_error(422, "Validation", &["item 1"]);
    let reply = send(post_json(
        "/embed",
        &json!({"inputs": "a", "dimensions": -3}),
    ));
    reply.assert_error(422, "Validation", &["`dimensions`", "-3"]);
}

#[test]
fn empty_inputs_are_422() {
    let reply = send(post_json("/embed", &json!({"inputs": []})));
    reply.assert_error(422, "Validation", &["`inputs` cannot be empty"]);
    let reply = send(post_json("/embed", &json!({"inputs": ""})));
    reply.assert_error(422, "Validation", &["text 0", "empty"]);
    let reply = send(post_json("/embed", &json!({"inputs": ["x", "y", ""]})));
    reply.assert_error(422, "Validation", &["text 2"]);
}

#[test]
fn too_many_texts_are_422_naming_count_and_limit() {
    let settings = Settings {
        max_client_batch_size: 4,
        ..Settings::default()
    };
    let reply = send_with(
        settings,
        post_json("/embed", &json!({"inputs": ["a", "b", "c", "d", "e"]})),
    );
    reply.assert_error(422, "Validation", &["batch size 5", "of 4"]);
}

#[test]
fn over_long_text_without_truncation_is_422() {
    let long = "word ".repeat(600);
    let reply = send(post_json(
        "/embed",
        &json!({"inputs": ["fine", long], "truncate": false}),
    ));
    reply.assert_error(
        422,
        "Validation",
        &["text 1 has ", "tokens, more than the limit of 256"],
    );
    assert!(reported_tokens(&reply) > 256);
    let settings = Settings {
        auto_truncate: false,
        ..Settings::default()
    };
    let reply = send_with(
        settings.clone(),
        post_json("/embed", &json!({"inputs": long})),
    );
    reply.assert_error(422, "Validation", &["text 0 has ", "limit of 256"]);
    let reply = send_with(
        settings,
        post_json("/embed", &json!({"inputs": long, "truncate": true})),
    );
    assert_eq!(reply.vectors().len(), 1);
}

/// The token count a `TooLong` message reports.
fn reported_tokens(reply: &Reply) -> usize {
    let body = reply.json();
    let message = body["error"].as_str().unwrap_or_default();
    let words: Vec<&str> = message.split_whitespace().collect();
    let at = words.iter().position(|&w| w == "tokens,").unwrap_or(0);
    words
        .get(at.wrapping_sub(1))
        .and_then(|w| w.parse().ok())
        .unwrap_or(0)
}

#[test]
fn oversized_payload_is_413_json() {
    let settings = Settings {
        payload_limit: 1000,
        ..Settings::default()
    };
    let body = json!({"inputs": "x".repeat(2000)});
    let reply = send_with(settings.clone(), post_json("/embed", &body));
    reply.assert_error(413, "PayloadTooLarge", &["1000 bytes"]);
    let reply = send_with(
        settings,
        post_json("/v1/embeddings", &json!({"input": "x".repeat(2000)})),
    );
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"]["code"], "payload_too_large");
}

#[test]
fn unknown_prompt_and_bad_options_are_422() {
    let reply = send(post_json(
        "/embed",
        &json!({"inputs": "a", "prompt_name": "query"}),
    ));
    reply.assert_error(422, "Validation", &["prompt_name `query`"]);
    let reply = send(post_json(
        "/embed",
        &json!({"inputs": "a", "dimensions": 1000}),
    ));
    reply.assert_error(422, "Validation", &["between 1 and 384", "1000"]);
    let reply = send(post_json(
        "/embed",
        &json!({"inputs": "a", "truncation_direction": "middle"}),
    ));
    reply.assert_error(422, "Validation", &["truncation_direction", "middle"]);
}

#[test]
fn overload_is_429_at_once() {
    let settings = Settings {
        max_client_batch_size: 1000,
        ..Settings::default()
    };
    let texts = vec!["some text"; MAX_CONCURRENT_INPUTS + 1];
    let started = std::time::Instant::now();
    let reply = send_with(settings, post_json("/embed", &json!({ "inputs": texts })));
    reply.assert_error(429, "Overloaded", &["limit of 64"]);
    assert_eq!(reply.headers["retry-after"], "1");
    assert!(
        started.elapsed().as_millis() < 500,
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn unknown_paths_and_methods_answer_json() {
    send(get("/nope")).assert_error(404, "NotFound", &["/nope"]);
    send(get("/embed")).assert_error(405, "MethodNotAllowed", &["GET"]);
}

#[test]
fn bad_query_string_is_400() {
    let reply = send(post_json("/embed?dimensions=abc", &json!({"inputs": "a"})));
    reply.assert_error(400, "Validation", &["query"]);
}

#[test]
fn errors_are_counted_by_type() {
    let before = count_errors("PayloadTooLarge");
    let settings = Settings {
        payload_limit: 10,
        ..Settings::default()
    };
    send_with(
        settings,
        post_json("/embed", &json!({"inputs": "a long enough body"})),
    );
    assert!(count_errors("PayloadTooLarge") > before);
}

fn count_errors(error_type: &str) -> u64 {
    engine()
        .metrics()
        .errors_total
        .with_label_values(&[error_type])
        .get()
}
