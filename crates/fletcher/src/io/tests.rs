use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, LargeStringArray, RecordBatch, StringArray,
    StringViewArray,
};
use arrow::datatypes::{DataType, Field, Float32Type, Schema};
use arrow::ipc::reader::{FileReader, StreamReader};
use arrow::ipc::writer::{FileWriter, StreamWriter};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

use super::input::*;
use super::output::*;

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fletcher-io-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, contents).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// ---------- plain text ----------

#[test]
fn text_lines_keep_empty_lines_and_strip_crlf() {
    let dir = TempDir::new();
    let path = dir.file("in.txt", b"first\r\nsecond\n\n  spaced  \nlast");
    assert_eq!(
        read_texts(&path).unwrap(),
        strings(&["first", "second", "", "  spaced  ", "last"])
    );
}

#[test]
fn text_final_newline_does_not_add_a_text_and_bom_is_dropped() {
    let dir = TempDir::new();
    let path = dir.file("in.txt", "\u{feff}héllo\nwörld\n".as_bytes());
    assert_eq!(read_texts(&path).unwrap(), strings(&["héllo", "wörld"]));
    let empty = dir.file("empty.txt", b"");
    assert!(read_texts(&empty).unwrap().is_empty());
    let lone_cr = dir.file("cr.txt", b"a\rb\n");
    assert_eq!(read_texts(&lone_cr).unwrap(), strings(&["a\rb"]));
}

#[test]
fn unknown_extension_is_read_as_lines() {
    let dir = TempDir::new();
    let path = dir.file("in.csv", b"x,y\nz\n");
    assert_eq!(read_texts(&path).unwrap(), strings(&["x,y", "z"]));
}

#[test]
fn text_invalid_utf8_names_the_line_and_byte() {
    let dir = TempDir::new();
    let path = dir.file("bad.txt", b"ok\nfine\nab\xffcd\nnever\n");
    let err = read_texts(&path).unwrap_err();
    match &err {
        InputError::InvalidUtf8 {
            path: p,
            line,
            byte,
        } => {
            assert_eq!(p, &path);
            assert_eq!(*line, 3);
            assert_eq!(*byte, 2);
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("bad.txt:3:"), "{err}");
}

#[test]
fn missing_file_is_an_io_error_with_the_path() {
    let dir = TempDir::new();
    let path = dir.path("absent.jsonl");
    let err = read_texts(&path).unwrap_err();
    assert!(matches!(&err, InputError::Io { path: p, .. } if p == &path));
    assert!(err.to_string().contains("absent.jsonl"));
}

// ---------- JSON Lines ----------

#[test]
fn jsonl_reads_text_fields_and_skips_blank_lines() {
    let dir = TempDir::new();
    let contents = concat!(
        "{\"id\": 1, \"text\": \"alpha\"}\n",
        "\n",
        "   \r\n",
        "{\"text\": \"line\\nbreak \\u00e9\", \"meta\": {\"x\": [1, 2]}}\r\n",
        "{\"text\": \"\"}\n",
    );
    let path = dir.file("in.JSONL", contents.as_bytes());
    assert_eq!(
        read_texts(&path).unwrap(),
        strings(&["alpha", "line\nbreak é", ""])
    );
    let ndjson = dir.file("in.ndjson", b"{\"text\":\"z\"}");
    assert_eq!(read_texts(&ndjson).unwrap(), strings(&["z"]));
}

fn jsonl_error(contents: &str) -> InputError {
    let dir = TempDir::new();
    let path = dir.file("bad.jsonl", contents.as_bytes());
    read_texts(&path).unwrap_err()
}

#[test]
fn jsonl_not_json_names_the_line() {
    let err = jsonl_error("{\"text\": \"a\"}\n\n{\"text\": \"b\"\n");
    assert!(
        matches!(err, InputError::NotJson { line: 3, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("bad.jsonl:3: not valid JSON"),
        "{err}"
    );
}

#[test]
fn jsonl_missing_text_field_names_the_line() {
    let err = jsonl_error("{\"text\": \"a\"}\n{\"body\": \"b\"}\n");
    assert!(
        matches!(err, InputError::MissingTextField { line: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("no \"text\" field"), "{err}");
}

#[test]
fn jsonl_non_string_text_says_what_was_found() {
    let err = jsonl_error("{\"text\": 42}\n");
    assert!(
        matches!(
            err,
            InputError::TextNotString {
                line: 1,
                found: "a number",
                ..
            }
        ),
        "{err:?}"
    );
    let err = jsonl_error("{\"text\": \"ok\"}\n{\"text\": null}\n");
    assert!(
        matches!(
            err,
            InputError::TextNotString {
                line: 2,
                found: "null",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn jsonl_non_object_line_says_what_was_found() {
    let err = jsonl_error("[\"text\"]\n");
    assert!(
        matches!(
            err,
            InputError::NotAnObject {
                line: 1,
                found: "an array",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn jsonl_duplicate_text_field_is_rejected() {
    let err = jsonl_error("{\"text\": \"a\", \"text\": \"b\"}\n");
    assert!(
        matches!(&err, InputError::NotJson { line: 1, message, .. } if message.contains("duplicate")),
        "{err:?}"
    );
}

#[test]
fn jsonl_invalid_utf8_names_the_line() {
    let dir = TempDir::new();
    let path = dir.file(
        "bad.jsonl",
        b"{\"text\": \"a\"}\n{\"text\": \"\xc3\x28\"}\n",
    );
    let err = read_texts(&path).unwrap_err();
    assert!(
        matches!(
            err,
            InputError::InvalidUtf8 {
                line: 2,
                byte: 10,
                ..
            }
        ),
        "{err:?}"
    );
}

// ---------- Parquet and Arrow inputs ----------

fn id_text_batch(text: ArrayRef) -> RecordBatch {
    let n = text.len() as i32;
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("text", text.data_type().clone(), true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(Int32Array::from_iter_values(0..n)), text],
    )
    .unwrap()
}

fn write_parquet(path: &Path, batches: &[RecordBatch]) {
    let file = fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batches[0].schema(), None).unwrap();
    for batch in batches {
        writer.write(batch).unwrap();
    }
    writer.close().unwrap();
}

fn write_ipc_file(path: &Path, batches: &[RecordBatch]) {
    let file = fs::File::create(path).unwrap();
    let mut writer = FileWriter::try_new(file, &batches[0].schema()).unwrap();
    for batch in batches {
        writer.write(batch).unwrap();
    }
    writer.finish().unwrap();
}

fn write_ipc_stream(path: &Path, batches: &[RecordBatch]) {
    let file = fs::File::create(path).unwrap();
    let mut writer = StreamWriter::try_new(file, &batches[0].schema()).unwrap();
    for batch in batches {
        writer.write(batch).unwrap();
    }
    writer.finish().unwrap();
}

#[test]
fn parquet_text_column_utf8_and_large_utf8() {
    let dir = TempDir::new();
    let path = dir.path("in.parquet");
    let first = id_text_batch(Arc::new(StringArray::from(vec!["a", "β", ""])));
    let second = id_text_batch(Arc::new(StringArray::from(vec!["d"])));
    write_parquet(&path, &[first, second]);
    assert_eq!(read_texts(&path).unwrap(), strings(&["a", "β", "", "d"]));

    let large = dir.path("large.parquet");
    write_parquet(
        &large,
        &[id_text_batch(Arc::new(LargeStringArray::from(vec![
            "x", "yy",
        ])))],
    );
    assert_eq!(read_texts(&large).unwrap(), strings(&["x", "yy"]));
}

#[test]
fn parquet_null_names_the_row_across_batches() {
    let dir = TempDir::new();
    let path = dir.path("nulls.parquet");
    let mut values: Vec<Option<String>> = (0..3000).map(|i| Some(format!("t{i}"))).collect();
    values[2500] = None;
    let batch = id_text_batch(Arc::new(StringArray::from(values)));
    write_parquet(&path, &[batch]);
    let err = read_texts(&path).unwrap_err();
    assert!(
        matches!(err, InputError::NullText { row: 2501, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("row 2501"), "{err}");
}

#[test]
fn parquet_missing_or_mistyped_text_column() {
    let dir = TempDir::new();
    let path = dir.path("notext.parquet");
    let schema = Schema::new(vec![Field::new("body", DataType::Utf8, false)]);
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(StringArray::from(vec!["a"]))],
    )
    .unwrap();
    write_parquet(&path, &[batch]);
    let err = read_texts(&path).unwrap_err();
    assert!(
        matches!(&err, InputError::MissingColumn { columns, .. } if columns == "\"body\""),
        "{err:?}"
    );

    let typed = dir.path("typed.parquet");
    let schema = Schema::new(vec![Field::new("text", DataType::Int32, false)]);
    let batch =
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(Int32Array::from(vec![1]))]).unwrap();
    write_parquet(&typed, &[batch]);
    let err = read_texts(&typed).unwrap_err();
    assert!(
        matches!(&err, InputError::ColumnType { found, .. } if found == "Int32"),
        "{err:?}"
    );
}

#[test]
fn corrupt_parquet_is_a_parquet_error() {
    let dir = TempDir::new();
    let path = dir.file("junk.parquet", b"this is not parquet at all");
    assert!(matches!(
        read_texts(&path).unwrap_err(),
        InputError::Parquet { .. }
    ));
}

#[test]
fn arrow_file_and_stream_detected_by_magic() {
    let dir = TempDir::new();
    let batches = [
        id_text_batch(Arc::new(StringArray::from(vec!["one", "two"]))),
        id_text_batch(Arc::new(StringArray::from(vec!["three"]))),
    ];
    let expected = strings(&["one", "two", "three"]);
    for name in ["f.arrow", "f.ipc", "f.arrows"] {
        let path = dir.path(name);
        write_ipc_file(&path, &batches);
        assert_eq!(
            read_texts(&path).unwrap(),
            expected,
            "file format as {name}"
        );
    }
    for name in ["s.arrow", "s.ipc", "s.arrows"] {
        let path = dir.path(name);
        write_ipc_stream(&path, &batches);
        assert_eq!(
            read_texts(&path).unwrap(),
            expected,
            "stream format as {name}"
        );
    }
}

#[test]
fn arrow_utf8_view_and_nulls() {
    let dir = TempDir::new();
    let path = dir.path("view.arrows");
    let view = StringViewArray::from(vec!["short", "a string longer than twelve bytes"]);
    write_ipc_stream(&path, &[id_text_batch(Arc::new(view))]);
    assert_eq!(
        read_texts(&path).unwrap(),
        strings(&["short", "a string longer than twelve bytes"])
    );

    let nulls = dir.path("nulls.arrow");
    let first = id_text_batch(Arc::new(StringArray::from(vec!["a", "b"])));
    let second = id_text_batch(Arc::new(StringArray::from(vec![Some("c"), None])));
    write_ipc_file(&nulls, &[first, second]);
    let err = read_texts(&nulls).unwrap_err();
    assert!(
        matches!(err, InputError::NullText { row: 4, .. }),
        "{err:?}"
    );
}

#[test]
fn arrow_without_text_column_lists_columns_even_when_empty() {
    let dir = TempDir::new();
    let path = dir.path("empty.arrow");
    let schema = Schema::new(vec![
        Field::new("a", DataType::Utf8, false),
        Field::new("b", DataType::Int32, false),
    ]);
    let file = fs::File::create(&path).unwrap();
    let mut writer = FileWriter::try_new(file, &schema).unwrap();
    writer.finish().unwrap();
    let err = read_texts(&path).unwrap_err();
    assert!(
        matches!(&err, InputError::MissingColumn { columns, .. } if columns == "\"a\", \"b\""),
        "{err:?}"
    );
}

#[test]
fn corrupt_arrow_is_an_arrow_error() {
    let dir = TempDir::new();
    let path = dir.file("junk.arrow", b"ARROW1 and then nonsense");
    assert!(matches!(
        read_texts(&path).unwrap_err(),
        InputError::Arrow { format: "file", .. }
    ));
    let path = dir.file("junk2.arrow", b"xx");
    assert!(matches!(
        read_texts(&path).unwrap_err(),
        InputError::Arrow {
            format: "stream",
            ..
        }
    ));
}

// ---------- sinks ----------

/// Values chosen to catch lossy float formatting: subnormals, extremes, negative zero,
/// and values with long shortest representations.
fn tricky_vectors(rows: usize, dimension: usize) -> Vec<Vec<f32>> {
    let specials = [
        0.1f32,
        -0.0,
        1.0 / 3.0,
        f32::MIN_POSITIVE,
        1e-45,
        f32::MAX,
        f32::MIN,
        16777217.0,
        -2.5e-8,
        0.999_999_94,
    ];
    (0..rows)
        .map(|r| {
            (0..dimension)
                .map(|c| {
                    let k = r * dimension + c;
                    if k < specials.len() {
                        specials[k]
                    } else {
                        ((k as f32) * 0.618_034).sin() / (1.0 + r as f32)
                    }
                })
                .collect()
        })
        .collect()
}

fn texts_for(rows: usize) -> Vec<String> {
    (0..rows).map(|i| format!("text number {i} ✓")).collect()
}

/// Writes `vectors` in batches of `batch` rows and finishes the sink.
fn write_all(path: &Path, texts: &[String], vectors: &[Vec<f32>], batch: usize) {
    let dimension = vectors.first().map_or(0, Vec::len);
    let mut sink = create_sink(path, dimension, vectors.len()).unwrap();
    for (t, v) in texts.chunks(batch).zip(vectors.chunks(batch)) {
        sink.write_batch(t, v).unwrap();
    }
    sink.finish().unwrap();
}

fn assert_bits_equal(actual: &[Vec<f32>], expected: &[Vec<f32>]) {
    assert_eq!(actual.len(), expected.len(), "row count");
    for (row, (a, e)) in actual.iter().zip(expected).enumerate() {
        let a_bits: Vec<u32> = a.iter().map(|v| v.to_bits()).collect();
        let e_bits: Vec<u32> = e.iter().map(|v| v.to_bits()).collect();
        assert_eq!(a_bits, e_bits, "row {row}");
    }
}

fn parse_jsonl_vectors(path: &Path) -> Vec<Vec<f32>> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let body = line
                .strip_prefix("{\"embedding\":[")
                .and_then(|rest| rest.strip_suffix("]}"))
                .unwrap_or_else(|| panic!("unexpected line {line}"));
            if body.is_empty() {
                return Vec::new();
            }
            body.split(',').map(|v| v.parse::<f32>().unwrap()).collect()
        })
        .collect()
}

#[test]
fn jsonl_sink_round_trips_f32_exactly() {
    let dir = TempDir::new();
    let vectors = tricky_vectors(5, 3);
    let texts = texts_for(5);
    for name in ["out.jsonl", "out.NDJSON"] {
        let path = dir.path(name);
        write_all(&path, &texts, &vectors, 2);
        assert_bits_equal(&parse_jsonl_vectors(&path), &vectors);
        let first: serde_json::Value =
            serde_json::from_str(fs::read_to_string(&path).unwrap().lines().next().unwrap())
                .unwrap();
        assert_eq!(first["embedding"].as_array().unwrap().len(), 3);
    }
}

#[test]
fn jsonl_sink_rejects_non_finite_values_with_position() {
    let dir = TempDir::new();
    let path = dir.path("nan.jsonl");
    let mut sink = create_sink(&path, 2, 3).unwrap();
    sink.write_batch(&texts_for(1), &[vec![1.0, 2.0]]).unwrap();
    let err = sink
        .write_batch(&texts_for(2), &[vec![0.0, 0.0], vec![3.0, f32::NAN]])
        .unwrap_err();
    assert!(
        matches!(
            err,
            OutputError::NonFinite {
                row: 3,
                index: 1,
                ..
            }
        ),
        "{err:?}"
    );
}

fn parse_npy(bytes: &[u8]) -> (String, Vec<f32>) {
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    assert_eq!(&bytes[6..8], &[1, 0]);
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let data_start = 10 + header_len;
    assert_eq!(data_start % 64, 0, "data must start 64-byte aligned");
    assert_eq!(bytes[data_start - 1], b'\n');
    let header = std::str::from_utf8(&bytes[10..data_start])
        .unwrap()
        .trim_end();
    let data = bytes[data_start..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (header.to_owned(), data)
}

#[test]
fn npy_sink_writes_header_and_little_endian_data() {
    let dir = TempDir::new();
    let path = dir.path("out.npy");
    let vectors = tricky_vectors(7, 4);
    write_all(&path, &texts_for(7), &vectors, 3);
    let bytes = fs::read(&path).unwrap();
    let (header, data) = parse_npy(&bytes);
    assert_eq!(
        header,
        "{'descr': '<f4', 'fortran_order': False, 'shape': (7, 4), }"
    );
    let expected: Vec<f32> = vectors.concat();
    assert_bits_equal(&[data], &[expected]);
}

#[test]
fn npy_sink_checks_the_row_count() {
    let dir = TempDir::new();
    let path = dir.path("short.npy");
    let mut sink = create_sink(&path, 2, 3).unwrap();
    sink.write_batch(&texts_for(2), &[vec![1.0, 2.0], vec![3.0, 4.0]])
        .unwrap();
    let err = sink.finish().unwrap_err();
    assert!(
        matches!(
            err,
            OutputError::RowCountMismatch {
                expected: 3,
                written: 2,
                ..
            }
        ),
        "{err:?}"
    );

    let path = dir.path("long.npy");
    let mut sink = create_sink(&path, 1, 2).unwrap();
    sink.write_batch(&texts_for(1), &[vec![1.0]]).unwrap();
    let err = sink
        .write_batch(&texts_for(2), &[vec![2.0], vec![3.0]])
        .unwrap_err();
    assert!(
        matches!(
            err,
            OutputError::TooManyRows {
                expected: 2,
                row: 3,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn npy_header_is_aligned_for_many_shapes() {
    for (rows, dimension) in [(0, 0), (1, 1), (123_456_789, 4096), (10, 384)] {
        let header = super::output::npy_header(rows, dimension);
        assert_eq!(header.len() % 64, 0, "{rows}x{dimension}");
        let text = std::str::from_utf8(&header[10..]).unwrap();
        assert!(text.contains(&format!("'shape': ({rows}, {dimension})")));
    }
}

fn read_ipc_file(path: &Path) -> Vec<RecordBatch> {
    FileReader::try_new(fs::File::open(path).unwrap(), None)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn read_ipc_stream(path: &Path) -> Vec<RecordBatch> {
    StreamReader::try_new(fs::File::open(path).unwrap(), None)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn read_parquet_batches(path: &Path) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(fs::File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Checks the schema of `batches` and returns their texts and vectors.
fn unpack(batches: &[RecordBatch], dimension: usize) -> (Vec<String>, Vec<Vec<f32>>) {
    let mut texts = Vec::new();
    let mut vectors = Vec::new();
    for batch in batches {
        assert_eq!(batch.schema(), output_schema(dimension));
        assert_eq!(
            batch.schema().field(1).data_type(),
            &DataType::FixedSizeList(
                Arc::new(Field::new_list_field(DataType::Float32, true)),
                dimension as i32
            )
        );
        let text = batch.column(0).as_string::<i32>();
        texts.extend(text.iter().map(|t| t.unwrap().to_owned()));
        let list = batch.column(1).as_fixed_size_list();
        assert_eq!(list.null_count(), 0);
        for row in 0..list.len() {
            let value = list.value(row);
            vectors.push(value.as_primitive::<Float32Type>().values().to_vec());
        }
    }
    (texts, vectors)
}

#[test]
fn arrow_file_sink_round_trips() {
    let dir = TempDir::new();
    let vectors = tricky_vectors(9, 5);
    let texts = texts_for(9);
    for name in ["out.arrow", "out.ipc"] {
        let path = dir.path(name);
        write_all(&path, &texts, &vectors, 4);
        assert_eq!(&fs::read(&path).unwrap()[..6], b"ARROW1");
        let batches = read_ipc_file(&path);
        assert_eq!(batches.len(), 3);
        let (t, v) = unpack(&batches, 5);
        assert_eq!(t, texts);
        assert_bits_equal(&v, &vectors);
        assert_eq!(read_texts(&path).unwrap(), texts);
    }
}

#[test]
fn arrow_stream_sink_round_trips() {
    let dir = TempDir::new();
    let path = dir.path("out.arrows");
    let vectors = tricky_vectors(6, 2);
    let texts = texts_for(6);
    write_all(&path, &texts, &vectors, 6);
    let (t, v) = unpack(&read_ipc_stream(&path), 2);
    assert_eq!(t, texts);
    assert_bits_equal(&v, &vectors);
    assert_eq!(read_texts(&path).unwrap(), texts);
}

#[test]
fn parquet_sink_round_trips() {
    let dir = TempDir::new();
    let path = dir.path("out.parquet");
    let vectors = tricky_vectors(2500, 8);
    let texts = texts_for(2500);
    write_all(&path, &texts, &vectors, 1000);
    let (t, v) = unpack(&read_parquet_batches(&path), 8);
    assert_eq!(t, texts);
    assert_bits_equal(&v, &vectors);
    assert_eq!(read_texts(&path).unwrap(), texts);
}

#[test]
fn sinks_accept_zero_rows() {
    let dir = TempDir::new();
    for name in ["z.jsonl", "z.npy", "z.arrow", "z.arrows", "z.parquet"] {
        let path = dir.path(name);
        let mut sink = create_sink(&path, 4, 0).unwrap();
        sink.write_batch(&[], &[]).unwrap();
        sink.finish().unwrap();
        let size = fs::metadata(&path).unwrap().len();
        if name.ends_with(".jsonl") {
            assert_eq!(size, 0);
        } else {
            assert!(size > 0, "{name} must hold at least a header");
        }
    }
    assert!(read_ipc_file(&dir.path("z.arrow")).is_empty());
    assert!(read_parquet_batches(&dir.path("z.parquet"))
        .iter()
        .all(|b| b.num_rows() == 0));
}

#[test]
fn sinks_check_dimension_and_batch_lengths() {
    let dir = TempDir::new();
    for name in ["d.jsonl", "d.npy", "d.arrow", "d.parquet"] {
        let path = dir.path(name);
        let mut sink = create_sink(&path, 3, 10).unwrap();
        sink.write_batch(&texts_for(2), &[vec![0.0; 3], vec![1.0; 3]])
            .unwrap();
        let err = sink
            .write_batch(&texts_for(2), &[vec![0.0; 3], vec![1.0; 4]])
            .unwrap_err();
        assert!(
            matches!(
                err,
                OutputError::Dimension {
                    row: 4,
                    expected: 3,
                    found: 4,
                    ..
                }
            ),
            "{name}: {err:?}"
        );
        let err = sink
            .write_batch(&texts_for(1), &[vec![0.0; 3], vec![1.0; 3]])
            .unwrap_err();
        assert!(
            matches!(
                err,
                OutputError::BatchLengthMismatch {
                    texts: 1,
                    vectors: 2,
                    ..
                }
            ),
            "{name}: {err:?}"
        );
    }
}

#[test]
fn unsupported_output_extension_lists_the_supported_ones() {
    let dir = TempDir::new();
    let path = dir.path("out.csv");
    let err = create_sink(&path, 3, 1).err().unwrap();
    assert!(
        matches!(&err, OutputError::UnsupportedExtension { extension: Some(e), .. } if e == "csv"),
        "{err:?}"
    );
    let message = err.to_string();
    for ext in [".jsonl", ".ndjson", ".npy", ".arrow", ".ipc", ".parquet"] {
        assert!(message.contains(ext), "{message}");
    }
    assert!(
        !path.exists(),
        "no file is created for an unsupported format"
    );
    let err = create_sink(&dir.path("noext"), 3, 1).err().unwrap();
    assert!(err.to_string().contains("(no extension)"), "{err}");
}

#[test]
fn unwritable_output_is_an_io_error() {
    let dir = TempDir::new();
    let path = dir.path("missing-dir/out.npy");
    let err = create_sink(&path, 3, 1).err().unwrap();
    assert!(
        matches!(&err, OutputError::Io { path: p, .. } if p == &path),
        "{err:?}"
    );
}
