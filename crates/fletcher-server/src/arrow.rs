//! Arrow IPC streams on `/embed`: texts in, texts and vectors out.
//!
//! The request is a stream whose schema has a `text` column (Utf8,
//! LargeUtf8 or Utf8View, no nulls); other columns are ignored. The answer
//! is a stream with one record batch per request batch, holding the same
//! `text` column and an `embedding` column of fixed-size lists of Float32,
//! or Float16 when asked. The whole request is decoded before the engine
//! sees it, so its size is bounded by the payload limit.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float16Array, Float32Array, RecordBatch,
};
use arrow::datatypes::{DataType, Field, FieldRef, Schema};
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use half::f16;

use crate::error::ApiError;

/// The element type of the `embedding` lists in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VectorFormat {
    F32,
    F16,
}

/// The texts of a request stream, with the columns they came from.
#[derive(Debug)]
pub(crate) struct ArrowTexts {
    /// The `text` field of the request schema.
    pub field: FieldRef,
    /// The `text` column of each request batch, in order.
    pub columns: Vec<ArrayRef>,
    /// Every text, in order.
    pub texts: Vec<String>,
}

/// Reads the `text` column of every batch of an Arrow IPC stream.
pub(crate) fn read_texts(body: &[u8]) -> Result<ArrowTexts, ApiError> {
    // The IPC reader validates what it decodes; the guard turns any panic
    // it might still meet on hostile input into a 400 instead of a dropped
    // connection.
    catch_unwind(AssertUnwindSafe(|| decode(body))).unwrap_or_else(|_| {
        Err(ApiError::ArrowStream(
            "the stream could not be decoded".to_owned(),
        ))
    })
}

fn decode(body: &[u8]) -> Result<ArrowTexts, ApiError> {
    let stream_error = |e: ArrowError| ApiError::ArrowStream(e.to_string());
    let reader = StreamReader::try_new(Cursor::new(body), None).map_err(stream_error)?;
    let schema = reader.schema();
    let Ok(index) = schema.index_of("text") else {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(ApiError::ArrowInput(format!(
            "the stream has no `text` column (columns: {})",
            names.join(", ")
        )));
    };
    let field = schema.fields()[index].clone();
    if !matches!(
        field.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return Err(ApiError::ArrowInput(format!(
            "column `text` is {}, expected Utf8, LargeUtf8 or Utf8View",
            field.data_type()
        )));
    }
    let mut columns = Vec::new();
    let mut texts = Vec::new();
    for batch in reader {
        let column = batch.map_err(stream_error)?.column(index).clone();
        if let Some(row) = (0..column.len()).find(|&i| column.is_null(i)) {
            return Err(ApiError::ArrowInput(format!(
                "row {} of column `text` is null",
                texts.len() + row
            )));
        }
        match column.data_type() {
            DataType::Utf8 => texts.extend(
                column
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::to_owned),
            ),
            DataType::LargeUtf8 => texts.extend(
                column
                    .as_string::<i64>()
                    .iter()
                    .flatten()
                    .map(str::to_owned),
            ),
            _ => texts.extend(column.as_string_view().iter().flatten().map(str::to_owned)),
        }
        columns.push(column);
    }
    Ok(ArrowTexts {
        field,
        columns,
        texts,
    })
}

/// Writes the answer stream: for each request batch, its `text` column and
/// the matching `embedding` lists of `dimension` components.
pub(crate) fn write_embeddings(
    input: &ArrowTexts,
    vectors: &[Vec<f32>],
    dimension: usize,
    format: VectorFormat,
) -> Result<Vec<u8>, ApiError> {
    encode(input, vectors, dimension, format).map_err(|e| ApiError::Encode(e.to_string()))
}

fn encode(
    input: &ArrowTexts,
    vectors: &[Vec<f32>],
    dimension: usize,
    format: VectorFormat,
) -> Result<Vec<u8>, ArrowError> {
    let element = match format {
        VectorFormat::F32 => DataType::Float32,
        VectorFormat::F16 => DataType::Float16,
    };
    let item = Arc::new(Field::new("item", element, false));
    let size = i32::try_from(dimension).map_err(|_| {
        ArrowError::InvalidArgumentError(format!("dimension {dimension} is too large"))
    })?;
    let schema = Arc::new(Schema::new(vec![
        input.field.clone(),
        Arc::new(Field::new(
            "embedding",
            DataType::FixedSizeList(item.clone(), size),
            false,
        )),
    ]));
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, &schema)?;
    let mut start = 0;
    for column in &input.columns {
        let rows = vectors.get(start..start + column.len()).ok_or_else(|| {
            ArrowError::InvalidArgumentError(format!(
                "{} vectors for more than {start} texts",
                vectors.len()
            ))
        })?;
        start += column.len();
        let values = rows.iter().flatten().copied();
        let values: ArrayRef = match format {
            VectorFormat::F32 => Arc::new(Float32Array::from_iter_values(values)),
            VectorFormat::F16 => {
                Arc::new(Float16Array::from_iter_values(values.map(f16::from_f32)))
            }
        };
        let embedding = FixedSizeListArray::try_new(item.clone(), size, values, None)?;
        let batch =
            RecordBatch::try_new(schema.clone(), vec![column.clone(), Arc::new(embedding)])?;
        writer.write(&batch)?;
    }
    writer.finish()?;
    drop(writer);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int32Array, LargeStringArray, StringArray};

    use super::*;

    fn stream(batches: &[RecordBatch]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = StreamWriter::try_new(&mut out, &batches[0].schema()).unwrap();
        for b in batches {
            w.write(b).unwrap();
        }
        w.finish().unwrap();
        drop(w);
        out
    }

    fn texts_batch(texts: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("text", DataType::LargeUtf8, true),
        ]));
        let ids = Int32Array::from_iter_values(0..texts.len() as i32);
        let texts = LargeStringArray::from_iter_values(texts.iter().copied());
        RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(texts)]).unwrap()
    }

    #[test]
    fn round_trip_keeps_batches_and_texts() {
        let body = stream(&[texts_batch(&["a", "b"]), texts_batch(&["c"])]);
        let input = read_texts(&body).unwrap();
        assert_eq!(input.texts, vec!["a", "b", "c"]);
        let vectors = vec![vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 6.5]];
        let out = write_embeddings(&input, &vectors, 2, VectorFormat::F16).unwrap();
        let batches: Vec<RecordBatch> = StreamReader::try_new(Cursor::new(out), None)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(batches.len(), 2);
        let last = batches[1].column(1).as_fixed_size_list();
        let values = last
            .values()
            .as_primitive::<arrow::datatypes::Float16Type>();
        assert_eq!(
            values.values().to_vec(),
            vec![f16::from_f32(5.0), f16::from_f32(6.5)]
        );
        assert_eq!(batches[1].column(0).as_string::<i64>().value(0), "c");
    }

    #[test]
    fn bad_streams_are_refused_with_reasons() {
        assert!(matches!(
            read_texts(b"not arrow"),
            Err(ApiError::ArrowStream(_))
        ));
        let schema = Arc::new(Schema::new(vec![Field::new("body", DataType::Utf8, false)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["x"]))]).unwrap();
        let e = read_texts(&stream(&[batch])).unwrap_err();
        assert!(e.to_string().contains("columns: body"), "{e}");
        let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, true)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec![Some("x"), None]))],
        )
        .unwrap();
        let e = read_texts(&stream(&[batch])).unwrap_err();
        assert!(e.to_string().contains("row 1"), "{e}");
    }
}
