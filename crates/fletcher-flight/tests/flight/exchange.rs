//! DoExchange and DoAction against an in-process service.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, AsArray, Int64Array, LargeStringArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float16Type, Schema};
use arrow_flight::error::FlightError;
use arrow_flight::{Action, FlightDescriptor};
use fletcher_engine::{EmbedOptions, EmbedRequest, Engine};
use fletcher_flight::{FORMAT_HEADER, MAX_SLICE_ROWS};
use futures::TryStreamExt;
use tonic::Code;

use crate::common::*;

async fn exchange(
    engine: &Engine,
    descriptor: Option<FlightDescriptor>,
    batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>, FlightError> {
    let served = serve(engine.clone(), None).await;
    let mut client = client(served.addr).await;
    client
        .do_exchange(flight_data(descriptor, batches))
        .await?
        .try_collect()
        .await
}

fn status(e: FlightError) -> tonic::Status {
    match e {
        FlightError::Tonic(status) => *status,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

async fn embed(engine: &Engine, texts: &[String], options: EmbedOptions) -> Vec<Vec<f32>> {
    let request = EmbedRequest {
        texts: texts.to_vec(),
        options,
        dataset: None,
    };
    engine.embed(request).await.unwrap().vectors
}

#[tokio::test]
async fn exchange_round_trip_carries_ids_in_order_across_batches() {
    let engine = engine();
    let reference = reference();
    let texts: Vec<String> = reference.iter().take(30).map(|(t, _)| t.clone()).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batches = vec![
        id_text_batch(100, &refs[..7]),
        id_text_batch(107, &refs[7..7]),
        id_text_batch(107, &refs[7..30]),
    ];
    let answer = exchange(&engine, None, batches).await.unwrap();
    assert_eq!(
        answer.iter().map(RecordBatch::num_rows).collect::<Vec<_>>(),
        [7, 0, 23]
    );
    let got_ids: Vec<i64> = answer.iter().flat_map(ids).collect();
    assert_eq!(got_ids, (100..130).collect::<Vec<_>>());
    let got_texts: Vec<String> = answer
        .iter()
        .flat_map(|b| {
            let col = b.column_by_name("text").unwrap().as_string::<i32>().clone();
            col.iter()
                .map(|t| t.unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(got_texts, texts);
    let got: Vec<Vec<f32>> = answer.iter().flat_map(vectors).collect();
    let expected = embed(&engine, &texts, EmbedOptions::default()).await;
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g.len(), 384);
        assert!(
            max_abs_diff(g, e) <= 1e-5,
            "row {i}: {}",
            max_abs_diff(g, e)
        );
        assert!(
            max_abs_diff(g, &reference[i].1) <= 1e-4,
            "row {i} against the reference"
        );
    }
}

#[tokio::test]
async fn large_text_and_f16_through_the_header() {
    let engine = engine();
    let texts = ["alpha beta", "gamma"];
    let batch = RecordBatch::try_from_iter(vec![(
        "text",
        Arc::new(LargeStringArray::from(texts.to_vec())) as ArrayRef,
    )])
    .unwrap();
    let served = serve(engine.clone(), None).await;
    let mut client = client(served.addr).await;
    client.add_header(FORMAT_HEADER, "f16").unwrap();
    let answer: Vec<RecordBatch> = client
        .do_exchange(flight_data(None, vec![batch]))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let list = answer[0]
        .column_by_name("embedding")
        .unwrap()
        .as_fixed_size_list();
    assert_eq!(list.value_type(), DataType::Float16);
    let halves = list.values().as_primitive::<Float16Type>();
    let owned: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
    let expected = embed(&engine, &owned, EmbedOptions::default()).await;
    for (i, e) in expected.concat().iter().enumerate() {
        assert!(
            (halves.value(i).to_f32() - e).abs() <= 1e-3,
            "component {i}"
        );
    }
}

#[tokio::test]
async fn cmd_options_set_format_dimensions_and_normalization() {
    let engine = engine();
    let descriptor =
        FlightDescriptor::new_cmd(r#"{"dimensions": 32, "normalize": false, "format": "f32"}"#);
    let answer = exchange(
        &engine,
        Some(descriptor),
        vec![id_text_batch(0, &["one", "two"])],
    )
    .await
    .unwrap();
    let got = vectors(&answer[0]);
    let options = EmbedOptions {
        dimensions: Some(32),
        normalize: Some(false),
        ..EmbedOptions::default()
    };
    let expected = embed(&engine, &["one".into(), "two".into()], options).await;
    assert_eq!(got[0].len(), 32);
    assert!(max_abs_diff(&got[1], &expected[1]) <= 1e-5);
    let norm: f32 = got[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(
        (norm - 1.0).abs() > 1e-3,
        "dimensions 32 without normalization has norm {norm}"
    );

    let f16 = FlightDescriptor::new_cmd(r#"{"format":"f16"}"#);
    let answer = exchange(&engine, Some(f16), vec![id_text_batch(0, &["one"])])
        .await
        .unwrap();
    let list = answer[0]
        .column_by_name("embedding")
        .unwrap()
        .as_fixed_size_list();
    assert_eq!(list.value_type(), DataType::Float16);
}

#[tokio::test]
async fn bad_streams_are_invalid_arguments_naming_the_problem() {
    let engine = engine();
    let no_text = RecordBatch::try_from_iter(vec![(
        "body",
        Arc::new(StringArray::from(vec!["x"])) as ArrayRef,
    )])
    .unwrap();
    let ints = RecordBatch::try_from_iter(vec![(
        "text",
        Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
    )])
    .unwrap();
    // One nullable `text` column for the whole stream, its first null in
    // the second batch.
    let nullable = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, true)]));
    let with_null = RecordBatch::try_new(
        nullable.clone(),
        vec![Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef],
    )
    .unwrap();
    let first = RecordBatch::try_new(
        nullable,
        vec![Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef],
    )
    .unwrap();
    let cases: Vec<(Option<FlightDescriptor>, Vec<RecordBatch>, &str)> = vec![
        (
            None,
            vec![no_text],
            "the stream has no `text` column (columns: body)",
        ),
        (None, vec![ints], "column `text` is Int64, expected Utf8"),
        (
            None,
            vec![first.clone(), with_null],
            "row 4 of column `text` is null",
        ),
        (
            Some(FlightDescriptor::new_cmd("{\"dims\": 3}")),
            vec![first.clone()],
            "unknown field `dims`",
        ),
        (
            Some(FlightDescriptor::new_cmd("{\"dimensions\": 4096}")),
            vec![first],
            "dimensions must be between 1 and 384, got 4096",
        ),
    ];
    for (descriptor, batches, message) in cases {
        let err = status(exchange(&engine, descriptor, batches).await.unwrap_err());
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(message),
            "{:?} lacks {message:?}",
            err.message()
        );
    }
    let metrics = engine.metrics().render();
    assert!(
        metrics.contains("fletcher_errors_total{error_type=\"Validation\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn batches_over_the_admission_limit_are_sliced_not_refused() {
    let engine = new_engine(8);
    let texts: Vec<String> = (0..20).map(|i| format!("sentence number {i}")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let answer = exchange(&engine, None, vec![id_text_batch(0, &refs)])
        .await
        .unwrap();
    assert_eq!(
        answer.iter().map(RecordBatch::num_rows).collect::<Vec<_>>(),
        [8, 8, 4]
    );
    assert_eq!(
        answer.iter().flat_map(ids).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    // The engine admits 8 texts at once, so the expected vectors are asked
    // for 8 at a time too.
    let mut expected = Vec::new();
    for chunk in texts.chunks(8) {
        expected.extend(embed(&engine, chunk, EmbedOptions::default()).await);
    }
    let got: Vec<Vec<f32>> = answer.iter().flat_map(vectors).collect();
    assert_eq!(got.len(), 20);
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!(
            max_abs_diff(g, e) <= 1e-5,
            "row {i}: {}",
            max_abs_diff(g, e)
        );
    }
    const { assert!(MAX_SLICE_ROWS >= 8) };
}

#[tokio::test]
async fn a_full_engine_answers_resource_exhausted() {
    let limit = 16;
    let engine = new_engine(limit);
    let long = "word ".repeat(400);
    let busy = {
        let engine = engine.clone();
        let request = EmbedRequest {
            texts: vec![long; limit],
            options: EmbedOptions::default(),
            dataset: None,
        };
        tokio::spawn(async move { engine.embed(request).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while engine.inputs_in_flight() < limit {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the long request never got in"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let err = status(
        exchange(&engine, None, vec![id_text_batch(0, &["one more"])])
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("overloaded"), "{}", err.message());
    busy.await.unwrap().unwrap();
    let answer = exchange(&engine, None, vec![id_text_batch(0, &["one more"])])
        .await
        .unwrap();
    assert_eq!(answer[0].num_rows(), 1);
}

async fn action(client: &mut arrow_flight::FlightClient, name: &str) -> serde_json::Value {
    let bodies: Vec<_> = client
        .do_action(Action::new(name, ""))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(bodies.len(), 1);
    serde_json::from_slice(&bodies[0]).unwrap()
}

#[tokio::test]
async fn actions_report_health_and_info_and_put_needs_a_sink() {
    let engine = engine();
    let served = serve(engine.clone(), None).await;
    let mut client = client(served.addr).await;
    let names: Vec<String> = client
        .list_actions()
        .await
        .unwrap()
        .map_ok(|a| a.r#type)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(names, ["health", "info"]);
    let info = action(&mut client, "info").await;
    assert_eq!(info["dimension"], 384);
    assert_eq!(info["max_seq_length"], 256);
    assert_eq!(info["model_id"], engine.embedder().model_id());
    let health = action(&mut client, "health").await;
    assert_eq!(health["status"], "ok");
    assert!(health["sink"].is_null());
    let Err(err) = client.do_action(Action::new("reindex", "")).await else {
        panic!("an unknown action was answered");
    };
    let err = status(err);
    assert_eq!(err.code(), Code::InvalidArgument);

    let put = client
        .do_put(flight_data(
            Some(FlightDescriptor::new_path(vec!["docs".into()])),
            vec![id_text_batch(0, &["a"])],
        ))
        .await;
    let err = match put {
        Err(e) => status(e),
        Ok(answers) => status(answers.try_collect::<Vec<_>>().await.unwrap_err()),
    };
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let metrics = engine.metrics().render();
    assert!(metrics.contains("fletcher_flight_requests_total{method=\"DoAction\"}"));
}
