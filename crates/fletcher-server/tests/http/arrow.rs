//! Arrow IPC streams on `/embed`.

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float16Type, Float32Type, Schema};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use serde_json::json;

use crate::common::*;

const ARROW: &str = "application/vnd.apache.arrow.stream";

fn request_stream(batches: &[&[&str]]) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, &schema).unwrap();
    for texts in batches {
        let ids = Int64Array::from_iter_values(0..texts.len() as i64);
        let texts = StringArray::from_iter_values(texts.iter().copied());
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(texts)]).unwrap();
        writer.write(&batch).unwrap();
    }
    writer.finish().unwrap();
    drop(writer);
    out
}

fn answer_batches(reply: &Reply) -> Vec<RecordBatch> {
    assert_eq!(
        reply.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.headers["content-type"], ARROW);
    StreamReader::try_new(Cursor::new(reply.body.to_vec()), None)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn arrow_f32_and_f16_match_json() {
    let texts = ["first text", "second one", "third"];
    let json_vectors = send(post_json("/embed", &json!({ "inputs": texts }))).vectors();
    let body = request_stream(&[&texts[..2], &texts[2..]]);

    let batches = answer_batches(&send(post_raw("/embed", ARROW, body.clone())));
    assert_eq!(batches.len(), 2);
    let mut row = 0;
    for batch in &batches {
        assert_eq!(batch.schema().field(1).name(), "embedding");
        let texts_out = batch.column(0).as_string::<i32>();
        let lists = batch.column(1).as_fixed_size_list();
        assert_eq!(lists.value_length(), 384);
        for i in 0..batch.num_rows() {
            assert_eq!(texts_out.value(i), texts[row]);
            let v = lists.value(i);
            let v = v.as_primitive::<Float32Type>().values();
            assert!(max_diff(v, &json_vectors[row]) <= 1e-6);
            row += 1;
        }
    }
    assert_eq!(row, 3);

    let reply = send(post_raw("/embed?format=f16&normalize=true", ARROW, body));
    let batches = answer_batches(&reply);
    let lists = batches[0].column(1).as_fixed_size_list();
    assert_eq!(lists.value_type(), DataType::Float16);
    let v = lists.value(1);
    let halves: Vec<f32> = v
        .as_primitive::<Float16Type>()
        .values()
        .iter()
        .map(|h| h.to_f32())
        .collect();
    for (h, f) in halves.iter().zip(&json_vectors[1]) {
        assert!((h - f).abs() <= f.abs() * 1e-3 + 1e-7, "{h} vs {f}");
    }
}

#[test]
fn arrow_query_options_apply() {
    let body = request_stream(&[&["hello world"]]);
    let reply = send(post_raw(
        "/embed?dimensions=32&normalize=false",
        ARROW,
        body,
    ));
    let batches = answer_batches(&reply);
    let lists = batches[0].column(1).as_fixed_size_list();
    assert_eq!(lists.value_length(), 32);
    let v = lists.value(0);
    let v = v.as_primitive::<Float32Type>().values();
    assert!((norm(v) - 1.0).abs() > 1e-3);
}

#[test]
fn bad_arrow_input_is_refused_with_json() {
    send(post_raw("/embed", ARROW, "definitely not arrow")).assert_error(
        400,
        "Validation",
        &["Arrow"],
    );
    let schema = Arc::new(Schema::new(vec![Field::new("body", DataType::Utf8, false)]));
    let batch =
        RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(vec!["x"]))]).unwrap();
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, &schema).unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    drop(writer);
    send(post_raw("/embed", ARROW, out)).assert_error(422, "Validation", &["no `text` column"]);
    let body = request_stream(&[&["a"]]);
    send(post_raw("/embed?format=int4", ARROW, body)).assert_error(422, "Validation", &["int4"]);
    let empty = request_stream(&[&[]]);
    send(post_raw("/embed", ARROW, empty)).assert_error(422, "Validation", &["cannot be empty"]);
    assert!(Array::is_empty(&StringArray::from(Vec::<&str>::new())));
}
